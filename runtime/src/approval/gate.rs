//! The per-invocation side of approvals: suspending a running instance's
//! call until people decide, and keeping that wait off the clock.

use super::{ApprovalPolicy, Approvals, CallRule, NewRequest, Target};
use crate::error::Error;
use crate::host_call::{Decision, HostCall};
use crate::store::{ApprovalKind, ApprovalRecord, ApprovalState};
use serde_json::{Value, json};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Approvals for one running invocation.
#[derive(Debug)]
pub struct Gate {
    approvals: Approvals,
    policy: ApprovalPolicy,
    /// Everything about the invocation a request is bound to; each request
    /// fills in its kind, rule and subject.
    template: NewRequest,
    /// The files grant's directory, for resolving gated paths.
    files_root: Option<std::path::PathBuf>,
    clock: Mutex<WaitClock>,
    guest_requests: std::sync::atomic::AtomicU32,
}

/// Time spent waiting for decisions, which the invocation's timeout does
/// not count. Overlapping waits (concurrent `wasi:http` requests) count
/// once.
#[derive(Debug, Default)]
struct WaitClock {
    active: usize,
    since: Option<Instant>,
    total: Duration,
}

/// Closes a request if its waiter goes away without an answer (the
/// invocation was cancelled or trapped mid-wait).
struct Abandon {
    approvals: Approvals,
    id: Option<String>,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(id) = self.id.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let approvals = self.approvals.clone();
            handle.spawn(async move {
                let reason = "the invocation waiting on it ended before a decision";
                if let Err(e) = approvals.close(&id, ApprovalState::Failed, reason).await {
                    tracing::warn!(approval = %id, "cannot close an abandoned approval request: {e}");
                }
            });
        }
    }
}

impl Gate {
    pub fn new(
        approvals: Approvals,
        policy: ApprovalPolicy,
        template: NewRequest,
        files_root: Option<std::path::PathBuf>,
    ) -> Gate {
        Gate {
            approvals,
            policy,
            template,
            files_root,
            clock: Mutex::new(WaitClock::default()),
            guest_requests: std::sync::atomic::AtomicU32::new(0),
        }
    }

    fn clock(&self) -> std::sync::MutexGuard<'_, WaitClock> {
        self.clock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The gate rule that holds back a call doing `target`, if any. File
    /// paths are resolved through symlinks inside the granted directory
    /// first, so a link cannot carry a write around a rule.
    pub fn rule_for(&self, target: &Target) -> Option<&CallRule> {
        match (target, &self.files_root) {
            (
                Target::Files {
                    write,
                    path: Some(path),
                },
                Some(root),
            ) => {
                let resolved = Target::Files {
                    write: *write,
                    path: super::policy::resolve_in(root, path),
                };
                self.policy.gate_for(&resolved)
            }
            _ => self.policy.gate_for(target),
        }
    }

    /// Where a files path really leads (see [`super::policy::resolve_in`]);
    /// the path itself when there is no files grant to resolve it in.
    pub fn resolve(&self, path: &str) -> Option<String> {
        match &self.files_root {
            Some(root) => super::policy::resolve_in(root, path),
            None => Some(path.to_string()),
        }
    }

    /// Time spent waiting for decisions so far, including a wait under way.
    pub fn waited(&self) -> Duration {
        let clock = self.clock();
        clock.total
            + clock
                .since
                .filter(|_| clock.active > 0)
                .map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Hold `call` if a rule matches what it does: `None` when no rule
    /// does, else the approval id that released it or the denial.
    pub async fn hold(&self, call: &HostCall) -> Option<Result<String, Decision>> {
        let rule = call.targets.iter().find_map(|t| self.rule_for(t))?;
        let args: serde_json::Map<String, Value> = call
            .args
            .iter()
            .map(|(k, v)| ((*k).to_string(), Value::String(v.clone())))
            .collect();
        let subject = json!({
            "interface": call.interface,
            "function": call.function,
            "args": args,
        });
        // A held wasi:http request does not stop the guest (it polls the
        // response future and may keep computing), so that wait stays on
        // the invocation's clock; held airlock:cap and wasi:filesystem
        // calls suspend the guest and do not.
        let suspends = call.interface != "wasi:http/outgoing-handler";
        Some(
            match self
                .ask_with(ApprovalKind::HostCall, rule.describe(), subject, suspends)
                .await
            {
                Ok(r) if r.state == ApprovalState::Approved => Ok(r.id),
                Ok(r) => Err(Decision::deny(
                    rule.name.clone(),
                    format!(
                        "approval {} {}: {}",
                        r.id,
                        r.state,
                        r.reason.as_deref().unwrap_or("no reason given")
                    ),
                )),
                Err(e) => Err(Decision::deny(
                    rule.name.clone(),
                    format!("approval could not be obtained: {e}"),
                )),
            },
        )
    }

    /// Open a request and wait for its decision, up to the action's
    /// `approval.wait-secs`; a request still pending then expires.
    pub async fn ask(&self, kind: ApprovalKind, rule: String, subject: Value) -> Result<ApprovalRecord, Error> {
        self.ask_with(kind, rule, subject, true).await
    }

    /// A guest's own request (`airlock:cap/approval`): at most
    /// [`MAX_GUEST_REQUESTS`] per invocation, so a guest cannot keep
    /// itself off the clock.
    pub async fn ask_for_guest(&self, subject: Value) -> Result<ApprovalRecord, Error> {
        let asked = self.guest_requests.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if asked >= MAX_GUEST_REQUESTS {
            return Err(Error::Refused(format!(
                "an invocation may ask for approval at most {MAX_GUEST_REQUESTS} times"
            )));
        }
        self.ask_with(
            ApprovalKind::Guest,
            "grants.approval (requested by the action)".into(),
            subject,
            true,
        )
        .await
    }

    async fn ask_with(
        &self,
        kind: ApprovalKind,
        rule: String,
        subject: Value,
        suspends: bool,
    ) -> Result<ApprovalRecord, Error> {
        let mut request = self.template.clone();
        request.kind = kind;
        request.rule = rule;
        request.subject = subject;
        request.ttl = self.policy.wait;
        // Off the clock while suspended; the guard ends that even if the
        // wait is cancelled.
        let _off_clock = suspends.then(|| OffClock::start(self));
        self.open_and_wait(request).await
    }

    async fn open_and_wait(&self, request: NewRequest) -> Result<ApprovalRecord, Error> {
        let record = self.approvals.open(request).await?;
        let mut guard = Abandon {
            approvals: self.approvals.clone(),
            id: Some(record.id.clone()),
        };
        let deadline = Instant::now() + self.policy.wait;
        let record = self.approvals.wait(&record.id, deadline).await?;
        let record = if record.state == ApprovalState::Pending {
            let reason = format!(
                "no decision within {} s (approval.wait-secs); the held call failed",
                self.policy.wait.as_secs()
            );
            self.approvals
                .close(&record.id, ApprovalState::Expired, &reason)
                .await?
        } else {
            record
        };
        guard.id = None;
        Ok(record)
    }

    fn start_waiting(&self) {
        let mut clock = self.clock();
        if clock.active == 0 {
            clock.since = Some(Instant::now());
        }
        clock.active += 1;
    }

    fn stop_waiting(&self) {
        let mut clock = self.clock();
        clock.active = clock.active.saturating_sub(1);
        if clock.active == 0
            && let Some(since) = clock.since.take()
        {
            clock.total += since.elapsed();
        }
    }
}

/// Most `airlock:cap/approval` requests one invocation may make.
pub const MAX_GUEST_REQUESTS: u32 = 16;

/// Time off the invocation's clock, for as long as it lives.
struct OffClock<'a>(&'a Gate);

impl<'a> OffClock<'a> {
    fn start(gate: &'a Gate) -> OffClock<'a> {
        gate.start_waiting();
        OffClock(gate)
    }
}

impl Drop for OffClock<'_> {
    fn drop(&mut self) {
        self.0.stop_waiting();
    }
}
