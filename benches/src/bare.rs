//! Bare wasmtime: a component pre-instantiated on the engine airlock
//! builds (pooling allocator, copy-on-write images, epoch interruption,
//! fuel), a fresh `Store` and instance per call, arguments as `Val`s, and an
//! `airlock:cap/log.write` that only counts. No policy, no audit, no JSON.

use airlock::policy::RuntimeSettings;
use wasmtime::component::{Component, ComponentExportIndex, HasSelf, InstancePre, Linker, ResourceTable, Val};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The unaudited log host function.
mod log {
    wasmtime::component::bindgen!({
        inline: "
            package airlock:cap@0.1.0;
            interface log {
                enum level { trace, debug, info, warn, error }
                record field { key: string, value: string }
                write: func(level: level, message: string, fields: list<field>);
            }
            world bare { import log; }
        ",
    });
}

/// Per-call state of the bare host.
pub struct Bare {
    wasi: WasiCtx,
    table: ResourceTable,
    lines: u64,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl log::airlock::cap::log::Host for Bare {
    fn write(
        &mut self,
        _level: log::airlock::cap::log::Level,
        _message: String,
        _fields: Vec<log::airlock::cap::log::Field>,
    ) {
        self.lines += 1;
    }
}

/// A component ready to instantiate on bare wasmtime.
#[derive(Clone)]
pub struct BareHost {
    engine: Engine,
    pre: InstancePre<Bare>,
    component: Component,
}

impl BareHost {
    /// Load `path` on an engine built by airlock's own `engine::build`.
    pub fn new(settings: &RuntimeSettings, path: &std::path::Path) -> wasmtime::Result<BareHost> {
        let engine = airlock::engine::build(settings)?;
        let component = Component::from_file(&engine, path)?;
        let mut linker = Linker::<Bare>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        log::airlock::cap::log::add_to_linker::<Bare, HasSelf<Bare>>(&mut linker, |s| s)?;
        let pre = linker.instantiate_pre(&component)?;
        Ok(BareHost { engine, pre, component })
    }

    /// The index of the exported function `name`.
    pub fn export(&self, name: &str) -> wasmtime::Result<ComponentExportIndex> {
        self.component
            .get_export_index(None, name)
            .ok_or_else(|| wasmtime::format_err!("the component exports no {name}"))
    }

    /// Call `export` in a fresh instance; `results` is how many it returns.
    pub async fn call(
        &self,
        export: ComponentExportIndex,
        params: &[Val],
        results: usize,
    ) -> wasmtime::Result<Vec<Val>> {
        let mut store = Store::new(
            &self.engine,
            Bare {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
                lines: 0,
            },
        );
        store.set_fuel(u64::MAX)?;
        store.set_epoch_deadline(1000);
        let instance = self.pre.instantiate_async(&mut store).await?;
        let func = instance
            .get_func(&mut store, export)
            .ok_or_else(|| wasmtime::format_err!("export is not a function"))?;
        let mut out = vec![Val::Bool(false); results];
        func.call_async(&mut store, params, &mut out).await?;
        Ok(out)
    }
}
