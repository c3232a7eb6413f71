//! The choke point every capability call passes through.
//!
//! A capability's host function describes the call ([`HostCall`]), states
//! the policy rule that decides it, and hands over the work; this module
//! makes the decision, runs the work only if allowed, and records the call.
//! Capabilities never record calls themselves, so none can forget to.
//!
//! The steps, in order: the capability's policy decision; the approval
//! gate ([`HostCalls::admit`]: a call matching an
//! `[[approval.host-calls]]` rule is suspended until decided); the audit
//! health check (fail closed); the call itself; its record. A gated call
//! that reaches [`HostCalls::begin`] without passing the gate is denied,
//! so a host function that forgets to await the gate fails closed.

mod limiter;
pub mod live;
mod output;
mod state;

pub use crate::call::{CallStatus, Decision, Denied, HostCall, MAX_ARG_SUMMARY, Target};
pub use limiter::{MAX_TABLE_ELEMENTS, MemoryLimiter};
pub use live::{Live, LiveSink};
pub use output::CapturedOutput;
pub use state::{InvocationState, Slots, StateBuilder};

use crate::audit::AuditLog;
use crate::audit::encode::EncodedCalls;
use crate::audit::event::HostCallEvent;
use crate::audit::log::Records;
use crate::call::{CallGate, Judgement};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many host calls an invocation made, and how many were denied.
/// The calls themselves are in the audit log, one record each.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HostCallCounts {
    pub total: u64,
    pub denied: u64,
}

/// Host-call audit records are handed to the audit writer in chunks of
/// this many, so an invocation making millions of calls holds few in memory.
pub const AUDIT_CHUNK: usize = 256;

/// The invocation's host calls, shared between the store and host-side
/// tasks that finish calls after the guest moved on (`wasi:http` responses).
/// With an audit tap, every call becomes its own audit record.
#[derive(Debug, Default, Clone)]
pub struct HostCalls(Arc<Mutex<Inner>>);

#[derive(Debug, Default)]
struct Inner {
    counts: HostCallCounts,
    tap: Option<AuditTap>,
    gate: Option<Arc<dyn CallGate>>,
    /// Who watches the run as it happens (see [`Live`]).
    live: Option<LiveSink>,
    /// The tracing span of each asynchronous call still running (only
    /// while a subscriber wants `host_call` spans), closed by
    /// [`HostCalls::finish`].
    spans: BTreeMap<u64, tracing::Span>,
}

/// Streams host-call records to the audit log.
#[derive(Debug)]
struct AuditTap {
    log: AuditLog,
    /// Shared by every record of the invocation (no copy per call).
    invocation: Arc<str>,
    /// Finished calls not yet handed to the writer, in completion order,
    /// already encoded (the call's own strings are freed on its thread).
    pending: EncodedCalls,
    /// Allowed calls begun with [`HostCalls::begin`] and still running, by
    /// call number; whatever is left when the invocation ends is recorded
    /// as abandoned.
    in_flight: BTreeMap<u64, HostCallEvent>,
    /// The log's failure epoch when the invocation started: if it moves,
    /// queued records may have been cut off and the result is withheld.
    epoch: u64,
}

/// A decided call, allowed, not yet finished.
struct Opened {
    seq: u64,
    /// The record to complete (none without an audit tap).
    event: Option<HostCallEvent>,
    span: tracing::Span,
}

impl HostCalls {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Records are appended whole; a poisoned lock still holds a valid log.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A log whose calls are also audited as invocation `invocation`, whose
    /// records are good as long as the log's failure epoch stays `epoch`.
    pub fn audited(log: AuditLog, invocation: &str, epoch: u64) -> HostCalls {
        HostCalls(Arc::new(Mutex::new(Inner {
            counts: HostCallCounts::default(),
            tap: Some(AuditTap {
                invocation: Arc::from(invocation),
                pending: EncodedCalls::default(),
                in_flight: BTreeMap::new(),
                epoch,
                log,
            }),
            gate: None,
            live: None,
            spans: BTreeMap::new(),
        })))
    }

    /// Show `sink` what happens in the run from now on: log lines and
    /// denied calls.
    pub fn set_live(&self, sink: LiveSink) {
        self.lock().live = Some(sink);
    }

    /// Show the run's watcher `event`, if there is one. Never waits: an
    /// event the watcher has no room for is dropped from the live view
    /// (log lines stay in the report, denials in the audit log).
    pub fn live(&self, event: impl FnOnce() -> Live) {
        if let Some(sink) = &self.lock().live {
            let _ = sink.try_send(event());
        }
    }

    /// Hold calls matching the action's approval rules (and serve guest
    /// approval requests) through `gate`.
    pub fn set_gate(&self, gate: Arc<dyn CallGate>) {
        self.lock().gate = Some(gate);
    }

    pub fn gate(&self) -> Option<Arc<dyn CallGate>> {
        self.lock().gate.clone()
    }

    /// The approval gate: a call the policy allows and a gate rule matches
    /// waits here for its decision; the returned decision says whether it
    /// may proceed. Every host function that can be gated awaits this
    /// before [`HostCalls::begin`].
    pub async fn admit(&self, mut call: HostCall, decision: Decision) -> (HostCall, Decision) {
        if !decision.allowed {
            return (call, decision);
        }
        let Some(gate) = self.gate() else {
            return (call, decision);
        };
        if gate.holds_back(&call.targets, &call.function_name()) {
            self.flush_queued();
        }
        match gate.hold(&call).await {
            None => (call, decision),
            Some(Ok(approval)) => {
                let decision = Decision::allow(format!("{}; released by approval {approval}", decision.rule));
                call.approved = Some(approval);
                (call, decision)
            }
            Some(Err(denied)) => (call, denied),
        }
    }

    /// Decide one call and record the decision; returns its sequence number
    /// and the denial, if any. The status is filled in by
    /// [`HostCalls::finish`]; a call still unfinished when the invocation
    /// ends is recorded as abandoned.
    ///
    /// Fail closed: while the audit log cannot be written, every call is
    /// denied, whatever the policy says.
    pub fn begin(&self, call: HostCall, decision: Decision) -> (u64, Result<(), Denied>) {
        let mut inner = self.lock();
        match inner.open(call, decision) {
            Ok(opened) => {
                if !opened.span.is_disabled() {
                    inner.spans.insert(opened.seq, opened.span);
                }
                if let (Some(tap), Some(event)) = (&mut inner.tap, opened.event) {
                    tap.in_flight.insert(opened.seq, event);
                }
                (opened.seq, Ok(()))
            }
            Err((seq, denied)) => (seq, Err(denied)),
        }
    }

    /// Record how call `seq` (begun with [`HostCalls::begin`]) ended and
    /// how long it took.
    pub fn finish(&self, seq: u64, status: impl Into<Cow<'static, str>>, duration: Duration) {
        let status = status.into();
        let mut inner = self.lock();
        if let Some(span) = inner.spans.remove(&seq) {
            span.record("status", &*status);
        }
        if let Some(tap) = &mut inner.tap
            && let Some(mut event) = tap.in_flight.remove(&seq)
        {
            event.status = status;
            event.duration_us = micros(duration);
            tap.push(&event);
        }
    }

    /// The tracing span of call `seq` while it runs (disabled when no
    /// subscriber wants it), for the host function's own work to run in.
    pub fn span(&self, seq: u64) -> tracing::Span {
        self.lock().spans.get(&seq).cloned().unwrap_or_else(tracing::Span::none)
    }

    /// Hand the records of finished calls to the audit writer now, so they
    /// precede what is appended next (an approval request).
    pub fn flush_queued(&self) {
        let mut inner = self.lock();
        if let Some(tap) = &mut inner.tap
            && !tap.pending.is_empty()
        {
            tap.log.append_queued_since(tap.pending.take(), tap.epoch);
        }
    }

    /// End the audit tap: the records not yet queued (calls still running
    /// are marked abandoned) and the epoch the closing append must match.
    pub fn close_audit(&self) -> (Records, Option<u64>) {
        let mut inner = self.lock();
        let Some(mut tap) = inner.tap.take() else {
            return (Records::default(), None);
        };
        for (_, span) in std::mem::take(&mut inner.spans) {
            span.record("status", "abandoned");
        }
        for (_, mut event) in std::mem::take(&mut tap.in_flight) {
            event.status = "abandoned: still running (or a stream still open) when the invocation ended".into();
            tap.pending.push(&event);
        }
        (tap.pending.into(), Some(tap.epoch))
    }

    /// The counts so far.
    pub fn counts(&self) -> HostCallCounts {
        self.lock().counts
    }
}

impl Inner {
    /// The choke point's decision for one call: the policy's, overruled by
    /// a gate the call did not pass and by an audit log that cannot be
    /// written. Counts the call, opens its span, and records a denial at
    /// once; an allowed call's record is returned for its caller to finish.
    fn open(&mut self, call: HostCall, mut decision: Decision) -> Result<Opened, (u64, Denied)> {
        if decision.allowed
            && call.approved.is_none()
            && let Some(gate) = &self.gate
        {
            match gate.judge(&call.targets, &call.function_name()) {
                Judgement::Pass => {}
                Judgement::Deny { rule, reason } => decision = Decision::deny(rule, reason),
                Judgement::Hold { rule } => {
                    decision = Decision::deny(
                        rule,
                        "this call needs approval, and it was not passed through the approval gate",
                    );
                }
            }
        }
        if let Some(tap) = &self.tap
            && (tap.log.epoch() != tap.epoch || !tap.log.is_healthy())
        {
            decision = Decision::deny(
                "audit",
                "the audit log cannot be written; host calls are refused until it can",
            );
        }
        let seq = self.counts.total;
        self.counts.total += 1;
        crate::metrics::host_call(call.interface, decision.allowed);
        // One span per call, opened here and closed when the call finishes,
        // whichever capability made it: the choke point is also where
        // tracing (and an OpenTelemetry collector behind it) sees calls.
        let span = tracing::info_span!(
            target: "airlock::host_call",
            "host_call",
            call = seq,
            interface = call.interface,
            function = call.function,
            allowed = decision.allowed,
            rule = %decision.rule,
            status = tracing::field::Empty,
        );
        let denied = (!decision.allowed).then(|| Denied {
            interface: call.interface,
            function: call.function,
            rule: decision.rule.to_string(),
            reason: decision.reason.as_deref().unwrap_or_default().to_string(),
        });
        let event = self.tap.as_ref().map(|tap| HostCallEvent {
            invocation: tap.invocation.clone(),
            call: seq,
            at: crate::time::now_micros(),
            interface: Cow::Borrowed(call.interface),
            function: Cow::Borrowed(call.function),
            args: call.args,
            allowed: decision.allowed,
            rule: decision.rule,
            reason: decision.reason,
            status: Cow::Borrowed(if denied.is_some() { "denied" } else { "pending" }),
            duration_us: 0,
        });
        match denied {
            None => Ok(Opened { seq, event, span }),
            Some(denied) => {
                if let Some(sink) = &self.live {
                    let _ = sink.try_send(Live::Denied(denied.clone()));
                }
                span.record("status", "denied");
                self.counts.denied += 1;
                if let (Some(tap), Some(event)) = (&mut self.tap, event) {
                    tap.push(&event);
                }
                Err((seq, denied))
            }
        }
    }
}

impl AuditTap {
    /// Queue a finished record; hand a full chunk to the writer without
    /// waiting (the invocation's closing record syncs them all, and fails
    /// if any were lost).
    fn push(&mut self, event: &HostCallEvent) {
        self.pending.push(event);
        if self.pending.len() >= AUDIT_CHUNK {
            self.log.append_queued_since(self.pending.take(), self.epoch);
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl InvocationState {
    /// Decide, run and record one capability call.
    ///
    /// `decide` sees the invocation state (grants, paths) and returns the
    /// policy decision; `run` executes only if the call is allowed. The
    /// call's record stays on this stack frame until it is finished (a
    /// synchronous call cannot outlive the frame), so this path touches the
    /// shared log twice: once to decide, once to queue the record.
    pub fn host_call<T: CallStatus>(
        &mut self,
        call: HostCall,
        decide: impl FnOnce(&Self) -> Decision,
        run: impl FnOnce(&mut Self) -> T,
    ) -> Result<T, Denied> {
        let started = Instant::now();
        let decision = decide(self);
        let opened = self
            .host_calls
            .lock()
            .open(call, decision)
            .map_err(|(_, denied)| denied)?;
        let out = opened.span.in_scope(|| run(self));
        let status = out.status();
        if !opened.span.is_disabled() {
            opened.span.record("status", &*status);
        }
        if let Some(mut event) = opened.event {
            event.status = status;
            event.duration_us = micros(started.elapsed());
            let mut inner = self.host_calls.lock();
            if let Some(tap) = &mut inner.tap {
                tap.push(&event);
            }
        }
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
        let (call, decision) = self.host_calls.admit(call, decide(self)).await;
        let (seq, allowed) = self.host_calls.begin(call, decision);
        allowed?;
        let span = self.host_calls.span(seq);
        let out = tracing::Instrument::instrument(run(self), span).await;
        self.host_calls.finish(seq, out.status(), started.elapsed());
        Ok(out)
    }
}
