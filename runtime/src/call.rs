//! The host-call contract: what a capability says about a call, and what
//! the approval gate answers.
//!
//! This module sits below everything that makes or judges calls. A
//! capability describes each call as a [`HostCall`] and decides it
//! ([`Decision`]); the choke point ([`crate::host_call`]) asks the
//! invocation's [`CallGate`], if it has one, whether the call may run now,
//! must wait for people, or is refused. The gate is a trait so that the
//! approval machinery ([`crate::approval`]) plugs in from above without the
//! choke point or any capability depending on it.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Longest argument summary kept in a record, in bytes.
pub const MAX_ARG_SUMMARY: usize = 512;

/// One capability call, described by what it touches (never by secret
/// values or whole payloads).
#[derive(Debug, Clone)]
pub struct HostCall {
    pub interface: &'static str,
    pub function: &'static str,
    /// Summary of the arguments: paths, sizes, digests. Keys are the
    /// host's own names; they become the record's without a copy.
    pub args: Vec<(Cow<'static, str>, String)>,
    /// What the call does, in the terms approval gates are written in
    /// (a rename touches two paths).
    pub targets: Vec<Target>,
    /// The approval that released this call, once the gate has passed it.
    pub approved: Option<String>,
}

impl HostCall {
    pub fn new(interface: &'static str, function: &'static str) -> HostCall {
        HostCall {
            interface,
            function,
            args: Vec::new(),
            targets: Vec::new(),
            approved: None,
        }
    }

    /// The function as host-call policies name it (`context.function`):
    /// `interface.function`.
    pub fn function_name(&self) -> String {
        format!("{}.{}", self.interface, self.function)
    }

    /// Describe what the call does for the approval gates.
    pub fn target(mut self, target: Target) -> HostCall {
        self.targets.push(target);
        self
    }

    /// Add one summarized argument. Values longer than
    /// [`MAX_ARG_SUMMARY`] are cut, with the whole value's digest appended,
    /// so a guest cannot make records (or host memory) arbitrarily large.
    pub fn arg(mut self, key: &'static str, value: impl fmt::Display) -> HostCall {
        let mut text = value.to_string();
        if text.len() > MAX_ARG_SUMMARY {
            let digest = blake3::hash(text.as_bytes()).to_hex();
            let mut cut = MAX_ARG_SUMMARY;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str(&format!("… (blake3:{digest})"));
        }
        self.args.push((Cow::Borrowed(key), text));
        self
    }
}

/// The policy decision for one call and the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// The policy rule, e.g. `grants.files (read-only)`.
    pub rule: Cow<'static, str>,
    /// Why the call was denied.
    pub reason: Option<Cow<'static, str>>,
}

impl Decision {
    pub fn allow(rule: impl Into<Cow<'static, str>>) -> Decision {
        Decision {
            allowed: true,
            rule: rule.into(),
            reason: None,
        }
    }

    pub fn deny(rule: impl Into<Cow<'static, str>>, reason: impl Into<Cow<'static, str>>) -> Decision {
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
    fn status(&self) -> Cow<'static, str>;
}

impl CallStatus for &'static str {
    fn status(&self) -> Cow<'static, str> {
        Cow::Borrowed(self)
    }
}

impl<T, E: fmt::Display> CallStatus for Result<T, E> {
    fn status(&self) -> Cow<'static, str> {
        match self {
            Ok(_) => Cow::Borrowed("ok"),
            Err(e) => Cow::Owned(format!("error: {e}")),
        }
    }
}

/// What a host call does, in the terms gate rules are written in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Http {
        method: String,
        url: url::Url,
    },
    /// `path` is relative to the granted directory; `None` when it cannot
    /// be told (it then matches every files rule: fail closed).
    Files {
        write: bool,
        path: Option<String>,
    },
}

/// What the gate says about one call, before anyone is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// No rule holds the call back.
    Pass,
    /// A policy refuses the call outright.
    Deny { rule: String, reason: String },
    /// The call may run only once people approve it (under `rule`).
    Hold { rule: String },
}

/// How people answered a request the action itself made
/// (`airlock:cap/approval`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestAnswer {
    Approved,
    Expired,
    /// Denied (or closed without approval), with the reason people gave.
    Denied(String),
}

/// A boxed future that may cross threads, as wasmtime's async host
/// functions need.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The approval gate of one running invocation, as the choke point and the
/// capabilities see it.
///
/// Guarantees an implementation must keep: [`CallGate::judge`] is pure (the
/// choke point calls it again on every call that did not pass
/// [`CallGate::hold`], so a gated call that skipped the wait is denied);
/// [`CallGate::hold`] returns only once the call is decided, and time spent
/// in it is reported by [`CallGate::waited`] so it is kept off the
/// invocation's clock.
pub trait CallGate: Send + Sync + fmt::Debug {
    /// The gate's verdict on a call touching `targets` through `function`
    /// (`interface.function`), without waiting.
    fn judge(&self, targets: &[Target], function: &str) -> Judgement;

    /// Whether [`CallGate::hold`] would wait or refuse: callers flush queued
    /// records first, so they precede the approval request.
    fn holds_back(&self, targets: &[Target], function: &str) -> bool {
        self.judge(targets, function) != Judgement::Pass
    }

    /// Wait until `call` may run: `None` when nothing holds it back,
    /// `Some(Ok(approval id))` once approved, `Some(Err(decision))` when it
    /// is refused (denied, expired, or the request could not be made).
    fn hold<'a>(&'a self, call: &'a HostCall) -> BoxFuture<'a, Option<Result<String, Decision>>>;

    /// Ask people about something the action itself names (`subject`), and
    /// wait for their answer.
    fn ask_for_guest(&self, subject: serde_json::Value) -> BoxFuture<'_, Result<GuestAnswer, crate::Error>>;

    /// Where a files path (relative to the files grant's directory) really
    /// leads once symlinks inside that directory are followed; `None` when
    /// it cannot be told. Without a files grant, the path itself.
    fn resolve(&self, path: &str) -> Option<String>;

    /// Total time spent waiting for decisions so far.
    fn waited(&self) -> Duration;
}
