//! The choke point every capability call passes through.
//!
//! A capability's host function describes the call ([`HostCall`]), states
//! the policy rule that decides it, and hands over the work; this module
//! makes the decision, runs the work only if allowed, and records the call.
//! Capabilities never record calls themselves, so none can forget to.
//! Later milestones hook approval gates and the audit trail in here.

use crate::invocation::InvocationState;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Host-call records kept in memory per invocation; calls past this are
/// still decided and counted, but not itemized. Bounds host memory for a
/// guest that calls in a loop.
pub const MAX_HOST_CALL_RECORDS: usize = 10_000;

/// One capability call, described by what it touches (never by secret
/// values or whole payloads).
#[derive(Debug, Clone)]
pub struct HostCall {
    pub interface: &'static str,
    pub function: &'static str,
    /// Summary of the arguments: paths, sizes, digests.
    pub args: Vec<(&'static str, String)>,
}

impl HostCall {
    pub fn new(interface: &'static str, function: &'static str) -> HostCall {
        HostCall {
            interface,
            function,
            args: Vec::new(),
        }
    }

    /// Add one summarized argument.
    pub fn arg(mut self, key: &'static str, value: impl fmt::Display) -> HostCall {
        self.args.push((key, value.to_string()));
        self
    }
}

/// The policy decision for one call and the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// The policy rule, e.g. `grants.files (read-only)`.
    pub rule: String,
    /// Why the call was denied.
    pub reason: Option<String>,
}

impl Decision {
    pub fn allow(rule: impl Into<String>) -> Decision {
        Decision {
            allowed: true,
            rule: rule.into(),
            reason: None,
        }
    }

    pub fn deny(rule: impl Into<String>, reason: impl Into<String>) -> Decision {
        Decision {
            allowed: false,
            rule: rule.into(),
            reason: Some(reason.into()),
        }
    }
}

/// A call the policy refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{interface}#{function} denied by {rule}: {reason}")]
pub struct Denied {
    pub interface: &'static str,
    pub function: &'static str,
    pub rule: String,
    pub reason: String,
}

impl Denied {
    /// Turn the denial into a trap, for calls whose WIT has no error case.
    pub fn into_trap(self) -> wasmtime::Error {
        wasmtime::Error::new(self)
    }
}

/// How a call ended, in a few words for the record.
pub trait CallStatus {
    fn status(&self) -> String;
}

impl CallStatus for &'static str {
    fn status(&self) -> String {
        (*self).to_string()
    }
}

impl<T, E: fmt::Display> CallStatus for Result<T, E> {
    fn status(&self) -> String {
        match self {
            Ok(_) => "ok".into(),
            Err(e) => format!("error: {e}"),
        }
    }
}

/// The record of one host call.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostCallRecord {
    /// Position among this invocation's host calls, from 0.
    pub seq: u64,
    pub interface: &'static str,
    pub function: &'static str,
    pub args: Vec<(&'static str, String)>,
    pub decision: Decision,
    pub status: String,
    pub duration: Duration,
}

/// Every host call of one invocation.
#[derive(Debug, Default, Clone)]
pub struct HostCallLog {
    pub records: Vec<HostCallRecord>,
    pub total: u64,
    pub denied: u64,
}

/// The invocation's host-call log, shared between the store and host-side
/// tasks that finish calls after the guest moved on (`wasi:http` responses).
#[derive(Debug, Default, Clone)]
pub struct HostCalls(Arc<Mutex<HostCallLog>>);

impl HostCalls {
    fn lock(&self) -> std::sync::MutexGuard<'_, HostCallLog> {
        // Records are appended whole; a poisoned lock still holds a valid log.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decide one call and record the decision; returns its sequence number
    /// and the denial, if any. The status is filled in by [`HostCalls::finish`].
    pub fn begin(&self, call: HostCall, decision: Decision) -> (u64, Result<(), Denied>) {
        let outcome = if decision.allowed {
            Ok(())
        } else {
            Err(Denied {
                interface: call.interface,
                function: call.function,
                rule: decision.rule.clone(),
                reason: decision.reason.clone().unwrap_or_default(),
            })
        };
        let mut log = self.lock();
        let seq = log.total;
        tracing::debug!(
            target: "airlock::host_call",
            seq,
            interface = call.interface,
            function = call.function,
            allowed = decision.allowed,
            rule = %decision.rule,
            "host call"
        );
        log.total += 1;
        if !decision.allowed {
            log.denied += 1;
        }
        if log.records.len() < MAX_HOST_CALL_RECORDS {
            log.records.push(HostCallRecord {
                seq,
                interface: call.interface,
                function: call.function,
                args: call.args,
                status: if decision.allowed {
                    "pending".into()
                } else {
                    "denied".into()
                },
                decision,
                duration: Duration::ZERO,
            });
        }
        (seq, outcome)
    }

    /// Record how call `seq` ended and how long it took.
    pub fn finish(&self, seq: u64, status: String, duration: Duration) {
        tracing::debug!(target: "airlock::host_call", seq, status = %status, "host call finished");
        let mut log = self.lock();
        // Records are pushed in sequence order, so `seq` indexes them until
        // the itemization cap is reached.
        if let Some(rec) = usize::try_from(seq).ok().and_then(|i| log.records.get_mut(i)) {
            rec.status = status;
            rec.duration = duration;
        }
    }

    /// A copy of the log so far.
    pub fn snapshot(&self) -> HostCallLog {
        self.lock().clone()
    }
}

impl InvocationState {
    /// Decide, run and record one capability call.
    ///
    /// `decide` sees the invocation state (grants, paths) and returns the
    /// policy decision; `run` executes only if the call is allowed.
    pub fn host_call<T: CallStatus>(
        &mut self,
        call: HostCall,
        decide: impl FnOnce(&Self) -> Decision,
        run: impl FnOnce(&mut Self) -> T,
    ) -> Result<T, Denied> {
        let started = Instant::now();
        let (seq, allowed) = self.host_calls.begin(call, decide(self));
        allowed?;
        let out = run(self);
        self.host_calls.finish(seq, out.status(), started.elapsed());
        Ok(out)
    }

    /// [`InvocationState::host_call`] for work that awaits (network I/O).
    pub async fn host_call_async<T: CallStatus>(
        &mut self,
        call: HostCall,
        decide: impl FnOnce(&Self) -> Decision,
        run: impl AsyncFnOnce(&mut Self) -> T,
    ) -> Result<T, Denied> {
        let started = Instant::now();
        let (seq, allowed) = self.host_calls.begin(call, decide(self));
        allowed?;
        let out = run(self).await;
        self.host_calls.finish(seq, out.status(), started.elapsed());
        Ok(out)
    }
}
