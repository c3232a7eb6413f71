//! airlock's error type and its mapping to process exit codes.
//!
//! | exit | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the action returned an error, or panicked |
//! | 2 | bad input: arguments, function name, component bytes, config |
//! | 3 | denied: ungranted or unknown import, digest mismatch, denied host call, bad or revoked token, no permission, approval denied or expired |
//! | 4 | a limit or trap: timeout, memory, fuel, stack, output or result cap, guest exit |
//! | 5 | airlock itself failed (for example its data directory or audit log is not writable) |
//! | 6 | `airlock audit verify` (or show/export) found the log altered |
//! | 7 | the invocation waits for approval: nothing ran yet |

use crate::values::JsonMismatch;
use std::time::Duration;

/// A resource limit an invocation ran into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("timed out after {} ms (limit timeout-ms)", .0.as_millis())]
    Timeout(Duration),
    #[error("memory limit of {} MiB exceeded (limit memory-mib)", .limit >> 20)]
    Memory { limit: u64 },
    #[error("fuel limit of {limit} exhausted (limit fuel)")]
    Fuel { limit: u64 },
    #[error("wasm stack overflow")]
    StackOverflow,
    #[error("{stream} exceeded {cap} bytes (limit max-output-bytes)")]
    Output { stream: &'static str, cap: u64 },
    #[error("result of {size} bytes exceeds {cap} bytes (limit max-result-bytes)")]
    Result { size: u64, cap: u64 },
    #[error("too many concurrent invocations (runtime.max-concurrent-instances)")]
    Concurrency,
}

/// Everything that can go wrong between a request and its result.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line is wrong in a way clap cannot see (bad names, a
    /// missing secret).
    #[error("{0}")]
    Usage(String),
    /// The config file is unreadable or invalid.
    #[error("invalid config: {0}")]
    Config(String),
    /// The component file is unreadable or not a valid component.
    #[error("invalid component {path}: {reason}")]
    InvalidComponent { path: String, reason: String },
    /// No action of that name in the config. `available` names only what
    /// the caller may see: the actions it may invoke.
    #[error("unknown action `{name}` (actions available to you: {available})")]
    UnknownAction { name: String, available: String },
    /// The component exports no such function.
    #[error("unknown function `{function}` (exported functions: {available})")]
    UnknownFunction { function: String, available: String },
    /// A function whose types have no JSON form.
    #[error("function `{function}` cannot be invoked with JSON: it uses `{what}` values")]
    NotInvocable { function: String, what: &'static str },
    /// The arguments do not fit the function's parameters.
    #[error("bad arguments: {0}")]
    Args(#[from] JsonMismatch),
    /// The `--args` text is not JSON.
    #[error("bad arguments: not a JSON object: {0}")]
    ArgsSyntax(String),
    /// The policy refuses to run the action at all.
    #[error("{0}")]
    Refused(String),
    /// A host call was denied by policy and the interface had no error case
    /// to report it through.
    #[error("host call denied: {0}")]
    HostCallDenied(String),
    /// A resource limit was hit.
    #[error("{0}")]
    Limit(#[from] LimitExceeded),
    /// The guest called `exit` instead of returning.
    #[error("action exited with code {0} before returning a result")]
    Exited(i32),
    /// The guest trapped (other than by a limit or a panic).
    #[error("action trapped: {0}")]
    Trapped(String),
    /// The caller cancelled the invocation while it ran (MCP
    /// `notifications/cancelled`); the instance was stopped.
    #[error("cancelled by the caller while it ran: {0}")]
    Cancelled(String),
    /// The guest panicked (trapped on `unreachable`).
    #[error("action panicked{0}")]
    Panicked(String),
    /// The guest's function returned its error case.
    #[error("action returned an error: {}", action_error_text(.0))]
    ActionError(serde_json::Value),
    /// airlock itself failed.
    #[error("internal error: {0}")]
    Internal(String),
    /// The audit log cannot be written: nothing runs (or no result is
    /// acknowledged) until it can.
    #[error("{0}")]
    AuditUnavailable(String),
    /// The database cannot be reached (PostgreSQL down, the network cut):
    /// nothing that needs it happens until it is back.
    #[error("{0}")]
    StoreUnavailable(String),
    /// `airlock audit verify` found a bad record or checkpoint.
    #[error("{0}")]
    AuditTampered(String),
    /// No valid, unrevoked token.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The caller may not do this (invoke the action, approve the request).
    #[error("{0}")]
    Forbidden(String),
    /// The invocation waits for approval; nothing has run yet.
    #[error(
        "invocation {invocation} waits for approval {approval}: see `{}`",
        crate::hint::command_as_caller(&format!("approvals show {approval}"))
    )]
    PendingApproval { approval: String, invocation: String },
    /// The approval the invocation needed was denied, expired or failed.
    #[error("{0}")]
    ApprovalRefused(String),
    /// A rate or budget window of the action is used up until it resets.
    #[error("{message}")]
    LimitReached { message: String, retry_after_secs: u64 },
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::ActionError(_) | Error::Panicked(_) => 1,
            Error::Usage(_)
            | Error::Config(_)
            | Error::InvalidComponent { .. }
            | Error::UnknownAction { .. }
            | Error::UnknownFunction { .. }
            | Error::NotInvocable { .. }
            | Error::Args(_)
            | Error::ArgsSyntax(_) => 2,
            Error::Refused(_)
            | Error::HostCallDenied(_)
            | Error::Unauthenticated(_)
            | Error::Forbidden(_)
            | Error::LimitReached { .. }
            | Error::ApprovalRefused(_) => 3,
            Error::Limit(_) | Error::Exited(_) | Error::Trapped(_) | Error::Cancelled(_) => 4,
            Error::Internal(_) | Error::AuditUnavailable(_) | Error::StoreUnavailable(_) => 5,
            Error::AuditTampered(_) => 6,
            Error::PendingApproval { .. } => 7,
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Error {
        Error::Internal(e.to_string())
    }
}

/// An action's error case as prose: a string as its text (control
/// characters escaped, so a guest cannot forge terminal output), anything
/// else as JSON.
pub fn action_error_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s
            .chars()
            .map(|c| {
                // Control and bidirectional formatting characters could
                // rewrite a terminal or reorder what a reviewer reads.
                if c.is_control() || crate::values::is_bidi_format(c) {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
        other => other.to_string(),
    }
}
