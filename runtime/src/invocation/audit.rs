//! The audit records of one invocation: what was asked, by whom, under
//! which grants, and how it ended.

use super::Admission;
use super::Report;
use crate::action::PreparedAction;
use crate::audit::Event;
use crate::audit::event::{InvocationFinished, InvocationRefused, InvocationStarted};
use crate::error::Error;
use crate::identity::Caller;
use crate::values::canonical;
use serde_json::Value;

/// Largest canonical JSON of arguments kept in a record; larger arguments
/// are recorded by digest only.
pub const MAX_AUDIT_ARGS_BYTES: usize = 4096;

fn digest(bytes: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(bytes).to_hex())
}

/// Replace the value at each dotted path (`ticket.body`) by its keyed
/// digest; a path step through a list applies to every element.
fn mask(value: &mut Value, path: &[&str], digest: &dyn Fn(&[u8]) -> String) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if let Value::Array(items) = value {
        for item in items {
            mask(item, path, digest);
        }
        return;
    }
    if let Some(v) = value.as_object_mut().and_then(|m| m.get_mut(*first)) {
        if rest.is_empty() {
            let bytes = serde_json::to_vec(&canonical(v)).unwrap_or_default();
            *v = serde_json::json!({ "sensitive": digest(&bytes) });
        } else {
            mask(v, rest, digest);
        }
    }
}

/// Every scalar at `path` in `value` (through lists, like [`mask`]), as
/// the text an error message could quote it in.
fn scalars_at(value: &Value, path: &[&str], out: &mut Vec<String>) {
    match (value, path.split_first()) {
        (Value::Array(items), Some(_)) => items.iter().for_each(|i| scalars_at(i, path, out)),
        (Value::Object(map), Some((first, rest))) => {
            if let Some(v) = map.get(*first) {
                scalars_at(v, rest, out);
            }
        }
        (v, None) => leaves(v, out),
        _ => {}
    }
}

fn leaves(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| leaves(i, out)),
        Value::Object(map) => map.values().for_each(|v| leaves(v, out)),
        Value::Null => {}
        other => out.push(other.to_string()),
    }
}

impl PreparedAction {
    /// `text` with every value of a `sensitive-args` field in `args`
    /// replaced by `[sensitive]`: an action's error may quote its input, and
    /// the closing record must not reveal what the opening one masked.
    pub fn without_sensitive(&self, args: &Value, text: &str) -> String {
        let mut values = Vec::new();
        for path in &self.policy.sensitive_args {
            scalars_at(args, &path.split('.').collect::<Vec<_>>(), &mut values);
        }
        // Longest first, so a value containing another is replaced whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        let mut out = text.to_string();
        for v in values.iter().filter(|v| v.len() >= 3) {
            out = out.replace(v.as_str(), "[sensitive]");
        }
        out
    }

    /// The arguments as records and reviewers see them: canonical, with
    /// each `sensitive-args` field replaced by its keyed digest (which
    /// still binds the value without revealing it).
    pub fn shown_args(&self, args: &Value) -> Value {
        let mut shown = canonical(args);
        for path in &self.policy.sensitive_args {
            mask(&mut shown, &path.split('.').collect::<Vec<_>>(), &|b| {
                self.audit.sensitive_digest(b)
            });
        }
        shown
    }

    /// The record written before the instance is created.
    pub(crate) fn started_event(
        &self,
        invocation: &str,
        caller: &Caller,
        function: &str,
        args: &Value,
        admission: Admission<'_>,
    ) -> Event {
        let bytes = serde_json::to_vec(&canonical(args)).unwrap_or_default();
        let shown = self.shown_args(args);
        let shown_len = serde_json::to_vec(&shown).map_or(usize::MAX, |v| v.len());
        let truncated = shown_len > MAX_AUDIT_ARGS_BYTES;
        Event::InvocationStarted(InvocationStarted {
            invocation: invocation.to_string(),
            caller: caller.name.clone(),
            caller_kind: Some(caller.kind.to_string()),
            approval: admission.approval.map(str::to_string),
            action: self.policy.name.clone(),
            service_identity: self.policy.service_identity.clone(),
            component_digest: self.manifest.digest.to_string(),
            function: function.to_string(),
            // With sensitive fields, a plain digest of all arguments would
            // let anyone test guesses of them; key it like the fields.
            args_digest: if self.policy.sensitive_args.is_empty() {
                digest(&bytes)
            } else {
                self.audit.sensitive_digest(&bytes)
            },
            args: if truncated { Value::Null } else { shown },
            args_truncated: truncated,
            grants: self
                .policy
                .grants
                .describe()
                .into_iter()
                .map(|(kind, what)| format!("{kind}: {what}"))
                .collect(),
            runner: Some(self.audit.runner().to_string()),
            policies: admission.verdict.map(|v| v.policy_ids()).unwrap_or_default(),
            reason: admission.intent.and_then(|i| i.reason.clone()),
            traceparent: admission.intent.and_then(|i| i.traceparent.clone()),
            signer: self.signer.as_ref().map(|s| format!("{} ({})", s.name, s.fingerprint)),
        })
    }

    pub(crate) fn refused_event(
        &self,
        invocation: &str,
        caller: &Caller,
        function: &str,
        error: &Error,
        policies: Vec<String>,
        intent: Option<&super::Intent>,
    ) -> Event {
        Event::InvocationRefused(InvocationRefused {
            invocation: invocation.to_string(),
            caller: caller.name.clone(),
            action: self.policy.name.clone(),
            function: function.chars().take(256).collect(),
            service_identity: Some(self.policy.service_identity.clone()),
            approval: None,
            state: None,
            exit_code: error.exit_code(),
            // Argument errors quote the offending value, which may be a
            // sensitive field: record only where the problem is.
            error: match error {
                Error::Args(m) => format!("bad arguments at {}", m.path),
                Error::ArgsSyntax(_) => "bad arguments: not a JSON object keyed by parameter names".into(),
                other => other.to_string().chars().take(1024).collect(),
            },
            policies,
            reason: intent.and_then(|i| i.reason.clone()),
            traceparent: intent.and_then(|i| i.traceparent.clone()),
        })
    }

    pub(crate) fn finished_event(&self, report: &Report, args: &Value) -> Event {
        let (outcome, exit_code, error, result_blake3) = match &report.outcome {
            Ok(v) => ("ok", 0, None, Some(digest(&serde_json::to_vec(v).unwrap_or_default()))),
            Err(e) => (
                outcome_class(e),
                e.exit_code(),
                Some(
                    self.without_sensitive(args, &e.to_string())
                        .chars()
                        .take(1024)
                        .collect(),
                ),
                None,
            ),
        };
        Event::InvocationFinished(InvocationFinished {
            invocation: report.invocation.clone(),
            action: self.policy.name.clone(),
            outcome: outcome.to_string(),
            exit_code,
            error,
            duration_us: u64::try_from(report.duration.as_micros()).unwrap_or(u64::MAX),
            fuel_consumed: report.fuel_consumed,
            peak_memory_bytes: report.peak_memory_bytes,
            result_blake3,
            stdout_bytes: report.stdout.len() as u64,
            stdout_blake3: digest(&report.stdout),
            stderr_bytes: report.stderr.len() as u64,
            stderr_blake3: digest(&report.stderr),
            log_lines: report.logs.len() as u64 + report.logs_dropped,
            host_calls: report.host_calls.total,
            host_calls_denied: report.host_calls.denied,
            baseline_calls: report.baseline_calls.clone(),
        })
    }
}

/// The class of a failed invocation, for the closing record.
pub fn outcome_class(e: &Error) -> &'static str {
    match e {
        Error::ActionError(_) => "action-error",
        Error::Panicked(_) => "panic",
        Error::Refused(_)
        | Error::HostCallDenied(_)
        | Error::Unauthenticated(_)
        | Error::Forbidden(_)
        | Error::ApprovalRefused(_) => "denied",
        Error::PendingApproval { .. } => "pending",
        Error::Limit(_) | Error::Exited(_) | Error::LimitReached { .. } => "limit",
        Error::Trapped(_) => "trap",
        Error::Cancelled(_) => "cancelled",
        Error::Internal(_) | Error::AuditUnavailable(_) | Error::StoreUnavailable(_) | Error::AuditTampered(_) => {
            "internal"
        }
        Error::Usage(_)
        | Error::Config(_)
        | Error::InvalidComponent { .. }
        | Error::UnknownAction { .. }
        | Error::UnknownFunction { .. }
        | Error::NotInvocable { .. }
        | Error::Args(_)
        | Error::ArgsSyntax(_) => "bad-request",
    }
}
