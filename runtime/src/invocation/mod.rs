//! Running one invocation: arguments in, fresh instance, call, result out.
//!
//! Every invocation gets a new `Store` and instance from the action's
//! `InstancePre`, its own captured stdout/stderr, and its own limits:
//! memory (resource limiter), fuel, and wall-clock time (epoch deadline for
//! running code plus an async timeout for time blocked in host calls).
//! Failures are classified into [`Error`] variants so callers can tell a
//! refused request from a misbehaving action.

mod audit;

pub use crate::identity::local_caller;
pub use crate::request::{Intent, new_invocation_id};
pub use crate::values::canonical;

use crate::action::{PreparedAction, one_line};
use crate::capabilities;
use crate::capabilities::baseline::BaselineCounts;
use crate::capabilities::log::{LogLine, LogState};
use crate::engine;
use crate::error::{Error, LimitExceeded};
use crate::host_call::{CapturedOutput, Denied, HostCallCounts, HostCalls, StateBuilder};
use crate::identity::Caller;
use crate::manifest::FunctionSig;
use crate::values::{self, JsonPath, ValueType};
use serde_json::Value;
use std::time::{Duration, Instant};
use wasmtime::component::Val;
use wasmtime::{Store, Trap};

/// Everything observable about one finished invocation.
#[derive(Debug)]
pub struct Report {
    /// The invocation id, as recorded in the audit log.
    pub invocation: String,
    /// The printed result, or why there is none.
    pub outcome: Result<Value, Error>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub logs: Vec<LogLine>,
    pub logs_dropped: u64,
    /// How many host calls were made and denied (each is in the audit log).
    pub host_calls: HostCallCounts,
    /// Fuel consumed, when the action is metered.
    pub fuel_consumed: Option<u64>,
    /// Largest linear memory size reached, in bytes.
    pub peak_memory_bytes: u64,
    pub duration: Duration,
    /// Calls into the inert baseline, per function (`interface.function`).
    pub baseline_calls: std::collections::BTreeMap<String, u64>,
}

impl Report {
    fn failed(invocation: &str, error: Error, started: Instant) -> Report {
        Report {
            invocation: invocation.to_string(),
            outcome: Err(error),
            stdout: Vec::new(),
            stderr: Vec::new(),
            logs: Vec::new(),
            logs_dropped: 0,
            host_calls: HostCallCounts::default(),
            fuel_consumed: None,
            peak_memory_bytes: 0,
            duration: started.elapsed(),
            baseline_calls: Default::default(),
        }
    }
}

/// How an invocation was let through: the approval that released it, and
/// the policy decision the gateway took (`None` for a direct call of a
/// loaded action, which only actions no policy can hold allow).
#[derive(Debug, Clone, Copy, Default)]
pub struct Admission<'a> {
    pub approval: Option<&'a str>,
    pub verdict: Option<&'a crate::policy::engine::Verdict>,
    /// The agent's stated reason and trace.
    pub intent: Option<&'a Intent>,
    /// Stops the run when cancelled (see [`Cancel`]).
    pub cancel: Option<&'a Cancel>,
    /// Shown the run's log lines and denied calls as they happen.
    pub live: Option<&'a crate::host_call::LiveSink>,
}

/// How long a guest computes at most before it yields its thread (and its
/// timeout and cancellation are looked at): one epoch tick.
const YIELD_EVERY: Duration = engine::EPOCH_TICK;

/// A handle that stops a running invocation from outside: its caller gave
/// up on it (MCP `notifications/cancelled`). The instance is stopped at
/// its next host call or within about two [`YIELD_EVERY`] of computing, the calls
/// still open are recorded as abandoned, and the invocation closes in the
/// audit log with [`Error::Cancelled`]. Cancelling one that has ended does
/// nothing.
#[derive(Debug, Clone, Default)]
pub struct Cancel(std::sync::Arc<CancelState>);

#[derive(Debug, Default)]
struct CancelState {
    cancelled: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
    why: std::sync::OnceLock<String>,
}

impl Cancel {
    /// Stop the run, saying why (kept for its closing record).
    pub fn cancel(&self, why: &str) {
        let _ = self.0.why.set(why.to_string());
        self.0.cancelled.store(true, std::sync::atomic::Ordering::Release);
        self.0.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once [`Cancel::cancel`] was called.
    pub async fn cancelled(&self) {
        let notified = self.0.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_cancelled() {
            return;
        }
        notified.await;
    }

    fn error(&self) -> Error {
        Error::Cancelled(self.0.why.get().cloned().unwrap_or_else(|| "cancelled".into()))
    }
}

/// Parse `args` (a JSON object keyed by parameter names) for `function`.
pub fn parse_args(function: &FunctionSig, args: &Value) -> Result<Vec<Val>, Error> {
    if let Some(what) = function.unsupported() {
        return Err(Error::NotInvocable {
            function: function.name.clone(),
            what,
        });
    }
    let obj = args
        .as_object()
        .ok_or_else(|| Error::ArgsSyntax(format!("expected an object keyed by parameter names, found {args}")))?;
    let fields = values::record_from_json(&function.params, obj, &JsonPath::root("args"))?;
    Ok(fields.into_iter().map(|(_, v)| v).collect())
}

impl PreparedAction {
    /// Invoke `function` with JSON `args` in a fresh instance, as the local
    /// operator.
    pub async fn invoke(&self, function: &str, args: &Value) -> Report {
        self.invoke_as(&Caller::local(), function, args, None).await
    }

    /// Check that `function` exists and `args` fit it, without running
    /// anything.
    pub fn check_request(&self, function: &str, args: &Value) -> Result<(), Error> {
        match self.manifest.function(function) {
            None => Err(Error::UnknownFunction {
                function: function.to_string(),
                available: self.manifest.function_names(),
            }),
            Some(sig) => parse_args(sig, args).map(|_| ()),
        }
    }

    /// Record a request refused before anything ran; returns the error to
    /// report (the audit failure instead, if the refusal cannot be
    /// recorded).
    pub async fn refuse(&self, invocation: &str, caller: &Caller, function: &str, error: Error) -> Error {
        self.refuse_by(invocation, caller, function, error, Vec::new(), None)
            .await
    }

    /// [`PreparedAction::refuse`], naming the policies that refused it.
    pub async fn refuse_by(
        &self,
        invocation: &str,
        caller: &Caller,
        function: &str,
        error: Error,
        policies: Vec<String>,
        intent: Option<&Intent>,
    ) -> Error {
        let event = self.refused_event(invocation, caller, function, &error, policies, intent);
        let error = match self.audit.append_durable_async(vec![event], None).await {
            Ok(_) => error,
            Err(e) => Error::AuditUnavailable(e.to_string()),
        };
        crate::metrics::invocation_ended(&self.policy.name, crate::metrics::error_label(&error));
        error
    }

    /// Invoke `function` with JSON `args` on behalf of `caller`, under the
    /// action's service identity. `approval` names the approval that
    /// released it, when the action needs one per invocation (the caller
    /// checks it; see [`crate::gateway`]).
    ///
    /// The audit log sees the request before anything runs and the outcome
    /// before it is returned: a refused request is recorded; for an action
    /// holding any capability that reaches outside its sandbox, the start is
    /// synced before the instance is created (if it cannot be, nothing
    /// runs); a pure action's start is written first and synced with its
    /// close; the host calls and closing record are synced before the
    /// report goes back (if they cannot be, the result is withheld).
    pub async fn invoke_as(&self, caller: &Caller, function: &str, args: &Value, approval: Option<&str>) -> Report {
        let admission = Admission {
            approval,
            ..Admission::default()
        };
        self.invoke_with_id(&new_invocation_id(), caller, function, args, admission)
            .await
    }

    /// [`PreparedAction::invoke_as`] under a given invocation id (one the
    /// store already knows, for invocations that waited for approval).
    pub async fn invoke_with_id(
        &self,
        invocation: &str,
        caller: &Caller,
        function: &str,
        args: &Value,
        admission: Admission<'_>,
    ) -> Report {
        let started = Instant::now();
        let invocation = invocation.to_string();
        // Not decided by the gateway: an action whose policies could hold
        // this call for approval runs only through it.
        if admission.verdict.is_none() && admission.approval.is_none() && self.decisions.may_hold(function) {
            let error = Error::Refused(format!(
                "action `{}` runs only once approved; submit it through the gateway (`airlock invoke --config`, the API or MCP)",
                self.policy.name
            ));
            let error = self.refuse(&invocation, caller, function, error).await;
            return Report::failed(&invocation, error, started);
        }
        let prepared = match self.manifest.function(function) {
            None => Err(Error::UnknownFunction {
                function: function.to_string(),
                available: self.manifest.function_names(),
            }),
            Some(sig) => parse_args(sig, args).map(|params| (sig, params)),
        };
        let (sig, params) = match prepared {
            Ok(p) => p,
            Err(error) => {
                let error = self.refuse(&invocation, caller, function, error).await;
                return Report::failed(&invocation, error, started);
            }
        };
        let start = self.started_event(&invocation, caller, function, args, admission);
        let deferred = !self.policy.grants.reach_outside() && self.audit.is_healthy();
        // Unsettled from before its start record until its closing record
        // is durable: if this process ends in between (a crash, SIGKILL, a
        // task dropped at shutdown), the next airlock process closes it in
        // the log with an `invocation-cut-off` record.
        let tracked = self.audit.track();
        let epoch = if !deferred {
            // Durable before the action can touch anything outside. (A log
            // known to be failing also takes this path: the write retries
            // it, refuses the run if it still fails, heals it if not.)
            if let Err(e) = self.audit.append_durable_async(vec![start], None).await {
                // Nothing of it is in the log: nothing to close.
                tracked.settle();
                let error = Error::AuditUnavailable(e.to_string());
                crate::metrics::invocation_ended(&self.policy.name, crate::metrics::error_label(&error));
                return Report::failed(&invocation, error, started);
            }
            self.audit.epoch()
        } else {
            // A pure action: nothing it does is visible until its result is
            // returned, and that waits for the closing append, which syncs
            // the start with it: one sync per invocation instead of two. The
            // epoch is read first, so a failure writing the start withholds
            // the result. The writer thread is not woken for it: a short
            // run's closing append takes it along, and a run still going
            // after LAZY_COMMIT has it written at its next await (a guest
            // that computes without host calls gets it written with its
            // first chunk of host-call records or its close).
            let epoch = self.audit.epoch();
            self.audit.append_deferred(vec![start]);
            epoch
        };
        // A root: whoever awaits the run (a request's handler, a task of its
        // own) is not its parent; the request's trace context is.
        let span = tracing::info_span!(
            parent: None,
            "invocation",
            invocation = %invocation,
            action = %self.policy.name,
            function = %function,
            caller = %caller.name,
            outcome = tracing::field::Empty,
            "otel.status_code" = tracing::field::Empty,
        );
        // The trace the request named continues through this span (and
        // its host calls) at the collector.
        if let Some(intent) = admission.intent {
            crate::telemetry::continue_trace(&span, intent.traceparent.as_deref(), intent.tracestate.as_deref());
        }
        let host_calls = HostCalls::audited(self.audit.clone(), &invocation, epoch);
        if let Some(gate) = self.gate_for(&invocation, caller, function, args, admission.intent) {
            host_calls.set_gate(gate);
        }
        if let Some(live) = admission.live {
            host_calls.set_live(live.clone());
        }
        let metrics = crate::metrics::metrics();
        crate::metrics::observe_phase(&metrics.invocation_queue_seconds, &self.policy.name, started.elapsed());
        let running = Instant::now();
        let run = tracing::Instrument::instrument(
            self.run(sig, params, started, &invocation, host_calls.clone(), admission.cancel),
            span.clone(),
        );
        let mut report = if deferred {
            let mut run = std::pin::pin!(run);
            tokio::select! {
                biased;
                report = &mut run => report,
                () = tokio::time::sleep(crate::audit::log::LAZY_COMMIT) => {
                    self.audit.write_queued();
                    run.await
                }
            }
        } else {
            run.await
        };
        let ran = Instant::now();
        crate::metrics::observe_phase(&metrics.invocation_run_seconds, &self.policy.name, ran - running);
        let (mut records, epoch) = host_calls.close_audit();
        records.events.push(self.finished_event(&report, args));
        let closed = self.audit.append_durable_async(records, epoch).await;
        crate::metrics::observe_phase(&metrics.invocation_audit_wait_seconds, &self.policy.name, ran.elapsed());
        match closed {
            Ok(_) => tracked.settle(),
            Err(e) => {
                report.outcome = Err(Error::AuditUnavailable(format!(
                    "the action ran, but its audit records could not be written ({e}); its result is withheld"
                )));
                // Nothing of a withheld invocation is handed back.
                report.stdout.clear();
                report.stderr.clear();
                report.logs.clear();
                // Its start may be in the log without a close: left
                // unsettled, so recovery closes it once this process ends.
                drop(tracked);
            }
        }
        let outcome = crate::metrics::outcome_label(&report.outcome);
        span.record("outcome", outcome);
        if report.outcome.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        crate::metrics::invocation_ended(&self.policy.name, outcome);
        report
    }

    async fn run(
        &self,
        sig: &FunctionSig,
        params: Vec<Val>,
        started: Instant,
        invocation: &str,
        host_calls: HostCalls,
        cancel: Option<&Cancel>,
    ) -> Report {
        let limits = &self.policy.limits;
        let stdout = CapturedOutput::new("stdout", limits.max_output_bytes);
        let stderr = CapturedOutput::new("stderr", limits.max_output_bytes);
        let mut builder = StateBuilder::new(limits.clone(), stdout.clone(), stderr.clone());
        builder.vault = self.vault.clone();
        builder.host_calls = host_calls;
        if let Err(e) = capabilities::prepare_granted(&self.policy.grants, &mut builder) {
            return Report::failed(invocation, Error::internal(format!("{e:#}")), started);
        }

        let mut store = Store::new(self.pre.engine(), builder.build());
        store.limiter(|s| &mut s.limiter);
        let fuel = limits.fuel.unwrap_or(u64::MAX);
        if let Err(e) = store.set_fuel(fuel) {
            return Report::failed(invocation, Error::internal(e), started);
        }
        // The timeout counts time the action spends, not time it waits for
        // people: the deadline moves by the time spent waiting for approvals.
        let gate = store.data().host_calls.gate();
        let deadline = {
            let gate = gate.clone();
            let timeout = limits.timeout;
            let clock_start = Instant::now();
            move || clock_start + timeout + gate.as_ref().map_or(Duration::ZERO, |g| g.waited())
        };
        // Every YIELD_EVERY, a guest that computes without host calls hands
        // its thread back to whoever polls it (the request that runs it in
        // place has timers of its own: a wait that runs out, a progress
        // report), and the timeout and cancellation are looked at.
        let slice = |left: Duration| left.min(YIELD_EVERY);
        store.set_epoch_deadline(engine::ticks_for(slice(limits.timeout)));
        {
            let deadline = deadline.clone();
            let cancel = cancel.cloned();
            store.epoch_deadline_callback(move |_| {
                let left = deadline().saturating_duration_since(Instant::now());
                if left.is_zero() || cancel.as_ref().is_some_and(Cancel::is_cancelled) {
                    Err(Trap::Interrupt.into())
                } else {
                    Ok(wasmtime::UpdateDeadline::YieldCustom(
                        engine::ticks_for(slice(left)),
                        // tokio's own yield: the worker sees to its timers
                        // and I/O before it polls this run again.
                        Box::pin(tokio::task::yield_now()),
                    ))
                }
            });
        }

        let call = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            let func = instance
                .get_func(&mut store, sig.index)
                .ok_or_else(|| wasmtime::format_err!("export `{}` is not a function", sig.name))?;
            let mut results = vec![Val::Bool(false); usize::from(sig.result.is_some())];
            func.call_async(&mut store, &params, &mut results).await?;
            wasmtime::Result::Ok(results.pop())
        };
        let finished: Option<wasmtime::Result<Option<Val>>> = {
            tokio::pin!(call);
            loop {
                let until = tokio::time::Instant::from_std(deadline());
                tokio::select! {
                    r = &mut call => break Some(r),
                    // Stopped at its next await (a host call, an approval
                    // wait): the instance is dropped with the future.
                    () = async { if let Some(c) = cancel { c.cancelled().await } }, if cancel.is_some() => break None,
                    () = tokio::time::sleep_until(until) => {
                        // Time spent waiting for approvals moves the deadline.
                        if deadline() <= Instant::now() {
                            break None;
                        }
                    }
                }
            }
        };
        // Cancelled only if the cancellation is what ended it: a run that
        // returned, or trapped on its own, keeps its outcome.
        let cancelled = cancel.filter(|c| c.is_cancelled());
        let outcome = match (finished, cancelled) {
            (None, Some(c)) => Err(c.error()),
            (Some(Err(e)), Some(c)) if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) => Err(c.error()),
            (None, None) => Err(Error::Limit(LimitExceeded::Timeout(limits.timeout))),
            (Some(Err(e)), _) => Err(classify(e, limits, &stderr)),
            (Some(Ok(result)), _) => print_result(sig.result.as_ref(), result.as_ref(), limits.max_result_bytes),
        };

        let fuel_consumed = limits.fuel.map(|f| f.saturating_sub(store.get_fuel().unwrap_or(0)));
        let mut state = store.into_data();
        let log = state.slots.take::<LogState>().unwrap_or_default();
        Report {
            invocation: invocation.to_string(),
            outcome,
            stdout: stdout.contents(),
            stderr: stderr.contents(),
            logs: log.lines,
            logs_dropped: log.dropped,
            host_calls: state.host_calls.counts(),
            fuel_consumed,
            peak_memory_bytes: state.limiter.peak,
            duration: started.elapsed(),
            baseline_calls: state
                .slots
                .get::<BaselineCounts>()
                .map(BaselineCounts::counts)
                .unwrap_or_default(),
        }
    }
}

/// Turn the function's return value into printed JSON. A top-level
/// `result<T, E>` prints `T`; its `E` becomes [`Error::ActionError`].
fn print_result(ty: Option<&ValueType>, val: Option<&Val>, cap: u64) -> Result<Value, Error> {
    let json = match (ty, val) {
        (None, _) => Value::Null,
        (Some(ValueType::Result { ok, err }), Some(Val::Result(r))) => match r {
            Ok(payload) => match (ok, payload) {
                (Some(t), Some(v)) => values::to_json(t, v).map_err(Error::internal)?,
                _ => Value::Null,
            },
            Err(payload) => {
                let e = match (err, payload) {
                    (Some(t), Some(v)) => values::to_json(t, v).map_err(Error::internal)?,
                    _ => Value::Null,
                };
                return Err(Error::ActionError(e));
            }
        },
        (Some(t), Some(v)) => values::to_json(t, v).map_err(Error::internal)?,
        (Some(_), None) => return Err(Error::internal("the function returned no value")),
    };
    let size = serde_json::to_vec(&json).map_or(u64::MAX, |v| v.len() as u64);
    if size > cap {
        return Err(Error::Limit(LimitExceeded::Result { size, cap }));
    }
    Ok(json)
}

/// Map a failed instantiation or call to the error that explains it.
fn classify(e: wasmtime::Error, limits: &crate::policy::Limits, stderr: &CapturedOutput) -> Error {
    if let Some(limit) = e.downcast_ref::<LimitExceeded>() {
        return Error::Limit(limit.clone());
    }
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Error::Exited(exit.0);
    }
    if let Some(denied) = e.downcast_ref::<Denied>() {
        return Error::HostCallDenied(denied.to_string());
    }
    if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
        return Error::Limit(LimitExceeded::Concurrency);
    }
    if let Some(trap) = e.downcast_ref::<Trap>() {
        return match trap {
            Trap::Interrupt => Error::Limit(LimitExceeded::Timeout(limits.timeout)),
            Trap::OutOfFuel => Error::Limit(LimitExceeded::Fuel {
                limit: limits.fuel.unwrap_or(u64::MAX),
            }),
            Trap::StackOverflow => Error::Limit(LimitExceeded::StackOverflow),
            Trap::UnreachableCodeReached => Error::Panicked(panic_message(stderr)),
            other => Error::Trapped(other.to_string()),
        };
    }
    Error::Trapped(one_line(&format!("{e:#}")))
}

/// Rust guests print their panic message to stderr before trapping; quote
/// it (escaped: it is guest-controlled) in the error.
fn panic_message(stderr: &CapturedOutput) -> String {
    let text = String::from_utf8_lossy(&stderr.contents()).into_owned();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    // Rust prints "thread '..' panicked at FILE:LINE:COL:" then the message,
    // then a "note: run with RUST_BACKTRACE" hint.
    let message: Vec<&str> = match lines.iter().rposition(|l| l.contains("panicked at")) {
        Some(at) => lines[at + 1..]
            .iter()
            .copied()
            .take_while(|l| !l.starts_with("note: "))
            .collect(),
        None => lines.last().copied().into_iter().collect(),
    };
    let message = message.join(" ");
    if message.is_empty() {
        String::new()
    } else {
        let escaped: String = message.chars().take(300).flat_map(char::escape_debug).collect();
        format!(": {escaped}")
    }
}
