//! The per-invocation store state: everything one instance can touch.
//!
//! A fresh `InvocationState` (and a fresh `Store`) is built for every
//! invocation, so nothing carries over between invocations.
//!
//! The state has a fixed core every action gets (WASI context, resource
//! table, memory limiter, the choke point's [`HostCalls`]) and one typed
//! slot per capability that needs per-invocation state of its own
//! ([`Slots`]): a capability puts its state in when the invocation is
//! prepared and reads it by type in its host functions, so adding a
//! capability never touches this module.

use super::HostCalls;
use super::limiter::MemoryLimiter;
use super::output::CapturedOutput;
use crate::limits::Limits;
use crate::vault::LiveVault;
use std::any::{Any, TypeId};
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Store data of one invocation.
pub struct InvocationState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) host_calls: HostCalls,
    /// The capabilities' own state, one value per type.
    pub(crate) slots: Slots,
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Per-invocation values keyed by their type: at most one of each.
///
/// A handful of capabilities hold state, so this is a short vector scanned
/// by [`TypeId`], not a map. Since the type is the key, each capability
/// keeps its state in a type of its own (a struct or newtype it defines),
/// never a bare std type another capability could pick too.
#[derive(Default)]
pub struct Slots(Vec<(TypeId, Box<dyn Any + Send>)>);

impl Slots {
    /// Put `value` in its slot, replacing what was there.
    pub fn insert<T: Any + Send>(&mut self, value: T) {
        match self.position::<T>() {
            Some(at) => self.0[at].1 = Box::new(value),
            None => self.0.push((TypeId::of::<T>(), Box::new(value))),
        }
    }

    /// The value of type `T`, if one was put in.
    pub fn get<T: Any + Send>(&self) -> Option<&T> {
        let at = self.position::<T>()?;
        self.0[at].1.downcast_ref()
    }

    /// The value of type `T`, mutable, if one was put in.
    pub fn get_mut<T: Any + Send>(&mut self) -> Option<&mut T> {
        let at = self.position::<T>()?;
        self.0[at].1.downcast_mut()
    }

    /// The value of type `T`, put in as its default first if there was none.
    pub fn get_or_default<T: Any + Send + Default>(&mut self) -> &mut T {
        self.get_or_insert_with(T::default)
    }

    /// The value of type `T`, put in as `make()` first if there was none.
    pub fn get_or_insert_with<T: Any + Send>(&mut self, make: impl FnOnce() -> T) -> &mut T {
        let at = match self.position::<T>() {
            Some(at) => at,
            None => {
                self.0.push((TypeId::of::<T>(), Box::new(make())));
                self.0.len() - 1
            }
        };
        self.0[at]
            .1
            .downcast_mut()
            .expect("a slot holds a value of the type it is keyed by")
    }

    /// Take the value of type `T` out of its slot.
    pub fn take<T: Any + Send>(&mut self) -> Option<T> {
        let at = self.position::<T>()?;
        let (_, value) = self.0.swap_remove(at);
        value.downcast().ok().map(|b| *b)
    }

    fn position<T: Any>(&self) -> Option<usize> {
        let id = TypeId::of::<T>();
        self.0.iter().position(|(t, _)| *t == id)
    }
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slots({} values)", self.0.len())
    }
}

/// Assembles an [`InvocationState`]; capabilities add their parts in
/// `Capability::prepare` ([`crate::capabilities`]).
pub struct StateBuilder {
    pub wasi: WasiCtxBuilder,
    /// The vault, when the action has credentials.
    pub vault: Option<Arc<LiveVault>>,
    pub host_calls: HostCalls,
    pub limits: Limits,
    /// The capabilities' own state (see [`Slots`]).
    pub slots: Slots,
}

impl StateBuilder {
    /// The inert baseline: no environment, no arguments, empty stdin, and
    /// stdout/stderr captured into `stdout`/`stderr`.
    pub fn new(limits: Limits, stdout: CapturedOutput, stderr: CapturedOutput) -> StateBuilder {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stdout).stderr(stderr);
        StateBuilder {
            wasi,
            vault: None,
            host_calls: HostCalls::default(),
            limits,
            slots: Slots::default(),
        }
    }

    pub fn build(mut self) -> InvocationState {
        InvocationState {
            wasi: self.wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(self.limits.memory_bytes),
            host_calls: self.host_calls,
            slots: self.slots,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Slots;

    #[test]
    fn slots_hold_one_value_per_type() {
        let mut slots = Slots::default();
        assert!(slots.get::<u32>().is_none());
        slots.insert(7u32);
        slots.insert(String::from("a"));
        slots.insert(9u32);
        assert_eq!(slots.get::<u32>(), Some(&9));
        assert_eq!(slots.get::<String>().map(String::as_str), Some("a"));
        *slots.get_or_default::<u64>() += 2;
        *slots.get_or_default::<u64>() += 3;
        assert_eq!(slots.get::<u64>(), Some(&5));
        assert_eq!(slots.take::<u32>(), Some(9));
        assert!(slots.get::<u32>().is_none());
        assert_eq!(slots.get::<String>().map(String::as_str), Some("a"));
        assert_eq!(slots.get::<u64>(), Some(&5));
    }
}
