//! The wasmtime engine every action runs on, and its epoch ticker.
//!
//! Settings that matter for isolation and speed:
//! - the pooling instance allocator with copy-on-write memory images, so a
//!   fresh instance per invocation is cheap;
//! - epoch interruption for wall-clock timeouts, and fuel metering always
//!   compiled in (unmetered actions get unlimited fuel), so per-action
//!   limits need no recompilation;
//! - a fixed wasm stack limit, so deep recursion traps instead of
//!   exhausting the host stack.

use crate::policy::{MAX_MEMORY_BYTES, RuntimeSettings};
use std::time::Duration;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the engine's epoch advances. Timeouts are rounded up to this.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Wasm stack a guest may use before it traps with a stack overflow.
pub const MAX_WASM_STACK_BYTES: usize = 1 << 20;
/// Host stack for each invocation's fiber; must exceed the wasm stack.
pub const ASYNC_STACK_BYTES: usize = 4 << 20;
/// Core module instances one component may contain.
pub const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 50;
/// Linear memories one component may contain.
pub const MAX_MEMORIES_PER_COMPONENT: u32 = 4;
/// Tables one component may contain.
pub const MAX_TABLES_PER_COMPONENT: u32 = 16;

/// Build the engine for `settings`.
pub fn build(settings: &RuntimeSettings) -> wasmtime::Result<Engine> {
    let n = settings.max_concurrent_instances;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(MAX_CORE_INSTANCES_PER_COMPONENT))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .max_memory_size(MAX_MEMORY_BYTES as usize)
        .table_elements(crate::host_call::MAX_TABLE_ELEMENTS);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .memory_init_cow(true)
        .epoch_interruption(true)
        .consume_fuel(true)
        .max_wasm_stack(MAX_WASM_STACK_BYTES)
        .async_stack_size(ASYNC_STACK_BYTES);
    let engine = Engine::new(&config)?;
    start_epoch_ticker(&engine);
    Ok(engine)
}

/// Advance the epoch every [`EPOCH_TICK`] for as long as the engine lives.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("airlock-epoch".into()).spawn(move || {
        while let Some(engine) = weak.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(EPOCH_TICK);
        }
    });
    if let Err(e) = spawned {
        // Without the ticker only the async timeout bounds invocations.
        tracing::warn!("cannot start the epoch ticker thread: {e}");
    }
}

/// Epoch ticks that cover `timeout`.
pub fn ticks_for(timeout: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    u64::try_from(timeout.as_nanos().div_ceil(tick))
        .unwrap_or(u64::MAX)
        .max(1)
}
