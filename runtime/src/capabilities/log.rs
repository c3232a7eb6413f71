//! `airlock:cap/log`: structured log lines, captured per invocation.
//!
//! Lines are kept up to the action's `max-log-bytes`; later lines are
//! dropped and counted rather than buffered without bound.

use super::bindings::airlock::cap::log as wit;
use super::catalog::{AIRLOCK_CAP_0_1, Interface};
use super::{Capability, Resolving};
use crate::host_call::{Decision, Denied, HostCall, Live};
use crate::host_call::{InvocationState, StateBuilder};
use wasmtime::component::{HasSelf, Linker};

/// The `log` grant. It carries no parameters: `log = true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogGrant;

pub use crate::host_call::live::{Level, LogLine};

/// Per-invocation log buffer.
#[derive(Debug, Default)]
pub struct LogState {
    pub lines: Vec<LogLine>,
    pub bytes: u64,
    pub cap: u64,
    /// Lines dropped because the cap was reached.
    pub dropped: u64,
}

/// The `log` capability.
pub struct LogCapability;

impl Capability for LogCapability {
    const INTERFACES: &'static [Interface] = &[Interface {
        family: &AIRLOCK_CAP_0_1,
        name: "airlock:cap/log",
        meaning: "structured log lines, captured per invocation",
    }];
    type Raw = bool;
    type Grant = LogGrant;
    const REACHES_OUTSIDE: bool = false;
    const EXAMPLE_GRANT: &'static str = "log = true";
    const EXAMPLE_FLAG: &'static str = "--grant-log";

    fn resolve(raw: &bool, _cx: &Resolving<'_>) -> Result<Option<LogGrant>, String> {
        Ok(raw.then_some(LogGrant))
    }

    fn link(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<InvocationState, HasSelf<InvocationState>>(linker, |s| s)
    }

    fn prepare(_grant: &LogGrant, state: &mut StateBuilder) -> anyhow::Result<()> {
        state.slots.insert(LogState {
            cap: state.limits.max_log_bytes,
            ..LogState::default()
        });
        Ok(())
    }

    fn describe(_grant: &LogGrant) -> String {
        "structured log lines, captured per invocation".into()
    }
}

impl wit::Host for InvocationState {
    fn write(&mut self, level: wit::Level, message: String, fields: Vec<wit::Field>) -> wasmtime::Result<()> {
        let line = LogLine {
            level: match level {
                wit::Level::Trace => Level::Trace,
                wit::Level::Debug => Level::Debug,
                wit::Level::Info => Level::Info,
                wit::Level::Warn => Level::Warn,
                wit::Level::Error => Level::Error,
            },
            message,
            fields: fields.into_iter().map(|f| (f.key, f.value)).collect(),
        };
        let call = HostCall::new("airlock:cap/log", "write").arg("bytes", line.size());
        self.host_call(
            call,
            |_| Decision::allow("grants.log"),
            |state| {
                let log = state.slots.get_or_default::<LogState>();
                if log.bytes.saturating_add(line.size()) > log.cap {
                    log.dropped += 1;
                    "dropped: log cap reached"
                } else {
                    log.bytes += line.size();
                    state.host_calls.live(|| Live::Log(line.clone()));
                    log.lines.push(line);
                    "ok"
                }
            },
        )
        .map(|_| ())
        .map_err(Denied::into_trap)
    }
}
