//! The choke point every capability call passes through.
//!
//! A capability's host function describes the call ([`HostCall`]), states
//! the policy rule that decides it, and hands over the work; this module
//! makes the decision, runs the work only if allowed, and records the call.
//! Capabilities never record calls themselves, so none can forget to.
//! Later milestones hook approval gates and the audit trail in here.

use crate::invocation::InvocationState;
use std::fmt;
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
#[derive(Debug, Default)]
pub struct HostCallLog {
    pub records: Vec<HostCallRecord>,
    pub total: u64,
    pub denied: u64,
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
        let decision = decide(self);
        let (outcome, status) = if decision.allowed {
            let out = run(self);
            let status = out.status();
            (Ok(out), status)
        } else {
            let denied = Denied {
                interface: call.interface,
                function: call.function,
                rule: decision.rule.clone(),
                reason: decision.reason.clone().unwrap_or_default(),
            };
            (Err(denied), "denied".to_string())
        };
        let record = HostCallRecord {
            seq: self.host_calls.total,
            interface: call.interface,
            function: call.function,
            args: call.args,
            decision,
            status,
            duration: started.elapsed(),
        };
        tracing::debug!(
            target: "airlock::host_call",
            seq = record.seq,
            interface = record.interface,
            function = record.function,
            allowed = record.decision.allowed,
            rule = %record.decision.rule,
            status = %record.status,
            "host call"
        );
        let log = &mut self.host_calls;
        log.total += 1;
        if !record.decision.allowed {
            log.denied += 1;
        }
        if log.records.len() < MAX_HOST_CALL_RECORDS {
            log.records.push(record);
        }
        outcome
    }
}
