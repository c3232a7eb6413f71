//! The per-invocation store state: everything one instance can touch.
//!
//! A fresh `InvocationState` (and a fresh `Store`) is built for every
//! invocation, so nothing carries over between invocations.

use super::limiter::MemoryLimiter;
use super::output::CapturedOutput;
use crate::capabilities::credentials::CredentialStore;
use crate::capabilities::files::FilesState;
use crate::capabilities::http::{HttpState, WasiHttpGate};
use crate::capabilities::log::LogState;
use crate::host_call::HostCalls;
use crate::policy::Limits;
use crate::vault::LiveVault;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Store data of one invocation.
pub struct InvocationState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) log: LogState,
    pub(crate) config: Option<crate::capabilities::config::ConfigState>,
    pub(crate) files: Option<FilesState>,
    pub(crate) credentials: Arc<CredentialStore>,
    pub(crate) http: Option<HttpState>,
    pub(crate) wasi_http: WasiHttpGate,
    pub(crate) wasi_http_ctx: wasmtime_wasi_http::WasiHttpCtx,
    pub(crate) host_calls: HostCalls,
    pub(crate) baseline: crate::capabilities::baseline::BaselineCounts,
    pub(crate) fs_paths: crate::capabilities::filesystem::DescriptorPaths,
}

impl wasmtime_wasi_http::WasiHttpView for InvocationState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            hooks: &mut self.wasi_http,
            table: &mut self.table,
            ctx: &mut self.wasi_http_ctx,
        }
    }
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
    pub config: Option<crate::capabilities::config::ConfigState>,
    pub files: Option<FilesState>,
    /// The vault, when the action has credentials.
    pub vault: Option<Arc<LiveVault>>,
    pub credentials: Arc<CredentialStore>,
    pub http: Option<HttpState>,
    pub host_calls: HostCalls,
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
            config: None,
            files: None,
            vault: None,
            credentials: Arc::default(),
            http: None,
            host_calls: HostCalls::default(),
            limits,
        }
    }

    pub fn build(mut self) -> InvocationState {
        InvocationState {
            wasi: self.wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(self.limits.memory_bytes),
            log: self.log,
            config: self.config,
            files: self.files,
            wasi_http: WasiHttpGate::new(self.http.clone(), self.credentials.clone(), self.host_calls.clone()),
            wasi_http_ctx: wasmtime_wasi_http::WasiHttpCtx::new(),
            credentials: self.credentials,
            http: self.http,
            host_calls: self.host_calls,
            baseline: Default::default(),
            fs_paths: Default::default(),
        }
    }
}
