//! The per-invocation store state: everything one instance can touch.
//!
//! A fresh `InvocationState` (and a fresh `Store`) is built for every
//! invocation, so nothing carries over between invocations.

use super::limiter::MemoryLimiter;
use super::output::CapturedOutput;
use crate::capabilities::files::FilesState;
use crate::capabilities::log::LogState;
use crate::host_call::HostCallLog;
use crate::policy::Limits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Store data of one invocation.
pub struct InvocationState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) log: LogState,
    pub(crate) files: Option<FilesState>,
    pub(crate) host_calls: HostCallLog,
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Assembles an [`InvocationState`]; capabilities add their parts in
/// [`crate::capabilities::Capability::prepare`].
pub struct StateBuilder {
    pub wasi: WasiCtxBuilder,
    pub log: LogState,
    pub files: Option<FilesState>,
    pub limits: Limits,
}

impl StateBuilder {
    /// The inert baseline: no environment, no arguments, empty stdin, and
    /// stdout/stderr captured into `stdout`/`stderr`.
    pub fn new(limits: Limits, stdout: CapturedOutput, stderr: CapturedOutput) -> StateBuilder {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stdout).stderr(stderr);
        StateBuilder {
            wasi,
            log: LogState::default(),
            files: None,
            limits,
        }
    }

    pub fn build(mut self) -> InvocationState {
        InvocationState {
            wasi: self.wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(self.limits.memory_bytes),
            log: self.log,
            files: self.files,
            host_calls: HostCallLog::default(),
        }
    }
}
