//! The per-invocation side of approvals: suspending a running instance's
//! call until people decide, and keeping that wait off the clock.

use super::{ApprovalPolicy, Approvals, CallRule, NewRequest, Target};
use crate::call::{BoxFuture, CallGate, Decision, GuestAnswer, HostCall};
use crate::error::Error;
use crate::policy::engine::{GroupNeed, HostPolicies, HostTarget, HostVerdict};
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
    /// The config's host-call policies for this invocation's caller (an
    /// error when they could not be prepared: every call is then denied).
    host: Option<Result<HostPolicies, String>>,
    /// The action's own reviewers (group `action`, the TOML gate rules').
    access: crate::identity::AccessPolicy,
}

/// What the gate says about one call: its TOML gate rules and the
/// host-call policies together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    Pass,
    Deny { rule: String, reason: String },
    Hold(Hold),
}

/// What a held call waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The rule as requests and denials name it.
    pub rule: String,
    pub quorum: u32,
    pub ttl: Duration,
    /// Every group that must approve, each to its quorum (the first is the
    /// strictest); the action's own reviewers are group `action`.
    pub groups: Vec<GroupNeed>,
    pub policies: Vec<String>,
    pub why: Option<String>,
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
            host: None,
            access: crate::identity::AccessPolicy {
                invoke: Vec::new(),
                approve: Vec::new(),
                agent_approvers: Vec::new(),
            },
        }
    }

    /// The action's own reviewers, whom its TOML gate rules ask.
    pub fn with_reviewers(mut self, access: crate::identity::AccessPolicy) -> Gate {
        self.access = access;
        self
    }

    fn own_group(&self) -> Vec<GroupNeed> {
        vec![GroupNeed {
            group: crate::policy::source::ACTION_GROUP.into(),
            approvers: self.access.clone(),
            quorum: self.policy.quorum,
        }]
    }

    /// Judge host calls by these policies too.
    pub fn with_host_policies(mut self, host: Option<Result<HostPolicies, String>>) -> Gate {
        self.host = host;
        self
    }

    /// Whether a call doing `targets` could need more than its grants:
    /// true when any gate rule or policy holds it back or denies it.
    pub fn holds_back(&self, targets: &[Target], function: &str) -> bool {
        self.judge(targets, function) != Judgement::Pass
    }

    /// What the gate rules and host-call policies say about a call doing
    /// `targets` (function `function`, as `interface.function`). A denial
    /// wins over a hold; of several holds the strictest (quorum, then
    /// time) wins.
    pub fn judge(&self, targets: &[Target], function: &str) -> Judgement {
        // Every hold applies: their groups add up (one group named twice
        // needs the higher quorum); the strictest one names the request.
        let mut held: Option<Hold> = None;
        let mut keep = |h: Hold| {
            held = Some(match held.take() {
                None => h,
                Some(old) => {
                    let (mut first, second) = if (h.quorum, h.ttl) > (old.quorum, old.ttl) {
                        (h, old)
                    } else {
                        (old, h)
                    };
                    first.ttl = first.ttl.max(second.ttl);
                    for g in second.groups {
                        match first.groups.iter_mut().find(|f| f.group == g.group) {
                            Some(f) => f.quorum = f.quorum.max(g.quorum),
                            None => first.groups.push(g),
                        }
                    }
                    for p in second.policies {
                        if !first.policies.contains(&p) {
                            first.policies.push(p);
                        }
                    }
                    first
                }
            });
        };
        for target in targets {
            let resolved = self.resolved(target);
            if let Some(rule) = self.policy.gate_for(&resolved) {
                keep(Hold {
                    rule: rule.describe(),
                    quorum: self.policy.quorum,
                    ttl: self.policy.wait,
                    groups: self.own_group(),
                    policies: Vec::new(),
                    why: None,
                });
            }
            let host = match &self.host {
                None => continue,
                Some(Err(e)) => {
                    return Judgement::Deny {
                        rule: "policies".into(),
                        reason: format!("the host-call policies could not be prepared: {e}"),
                    };
                }
                Some(Ok(h)) => h,
            };
            let target = match &resolved {
                Target::Http { method, url } => HostTarget::Http { method, url },
                Target::Files { write, path } => HostTarget::File {
                    write: *write,
                    path: path.as_deref(),
                },
            };
            match host.decide(target, function, crate::time::now_micros()) {
                HostVerdict::Pass => {}
                HostVerdict::Deny { reason, policies } => {
                    let ids: Vec<String> = policies.iter().map(|p| p.id.clone()).collect();
                    return Judgement::Deny {
                        rule: if ids.is_empty() {
                            "policies".into()
                        } else {
                            format!("policy {}", ids.join(", "))
                        },
                        reason,
                    };
                }
                HostVerdict::Hold { requirement, policies } => keep(Hold {
                    rule: requirement.rule.clone(),
                    quorum: requirement.quorum,
                    ttl: requirement.ttl,
                    groups: requirement.groups.clone(),
                    policies: policies.iter().map(|p| p.id.clone()).collect(),
                    why: requirement.why.clone(),
                }),
            }
        }
        held.map_or(Judgement::Pass, Judgement::Hold)
    }

    /// `target` with a files path resolved through links inside the
    /// granted directory.
    fn resolved(&self, target: &Target) -> Target {
        match (target, &self.files_root) {
            (
                Target::Files {
                    write,
                    path: Some(path),
                },
                Some(root),
            ) => Target::Files {
                write: *write,
                path: super::resolve::resolve_in(root, path),
            },
            _ => target.clone(),
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
                    path: super::resolve::resolve_in(root, path),
                };
                self.policy.gate_for(&resolved)
            }
            _ => self.policy.gate_for(target),
        }
    }

    /// Where a files path really leads (see [`super::resolve::resolve_in`]);
    /// the path itself when there is no files grant to resolve it in.
    pub fn resolve(&self, path: &str) -> Option<String> {
        match &self.files_root {
            Some(root) => super::resolve::resolve_in(root, path),
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
        let hold = match self.judge(&call.targets, &call.function_name()) {
            Judgement::Pass => return None,
            Judgement::Deny { rule, reason } => return Some(Err(Decision::deny(rule, reason))),
            Judgement::Hold(hold) => hold,
        };
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
            match self.ask_held(ApprovalKind::HostCall, &hold, subject, suspends).await {
                Ok(r) if r.state == ApprovalState::Approved => Ok(r.id),
                Ok(r) => Err(Decision::deny(
                    hold.rule.clone(),
                    format!(
                        "approval {} {}: {}",
                        r.id,
                        r.state,
                        r.reason.as_deref().unwrap_or("no reason given")
                    ),
                )),
                Err(e) => Err(Decision::deny(
                    hold.rule.clone(),
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
        let hold = Hold {
            rule,
            quorum: self.policy.quorum,
            ttl: self.policy.wait,
            groups: self.own_group(),
            policies: Vec::new(),
            why: None,
        };
        self.ask_held(kind, &hold, subject, suspends).await
    }

    async fn ask_held(
        &self,
        kind: ApprovalKind,
        hold: &Hold,
        subject: Value,
        suspends: bool,
    ) -> Result<ApprovalRecord, Error> {
        let mut request = self.template.clone();
        request.kind = kind;
        request.rule = hold.rule.clone();
        request.subject = subject;
        request.ttl = hold.ttl;
        request.quorum = hold.quorum;
        request.policies = hold.policies.clone();
        request.why = hold.why.clone();
        if let Some(first) = hold.groups.first() {
            request.group = Some(first.group.clone());
            request.quorum = first.quorum;
            request.approvers = first.approvers.approvers_text();
            request.rules = Some(crate::store::ApproverRules::of(&first.approvers));
            request.more_groups = super::more_groups(&hold.groups, &first.group);
            if !request.more_groups.is_empty() {
                request.approvers = hold
                    .groups
                    .iter()
                    .map(|g| {
                        format!(
                            "{} (quorum {}): {}",
                            g.group,
                            g.quorum,
                            g.approvers.approvers_text().join(", ")
                        )
                    })
                    .collect();
            }
        }
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
        let wait = request_ttl(&record);
        let deadline = Instant::now() + wait;
        let record = self.approvals.wait(&record.id, deadline).await?;
        let record = if record.state == ApprovalState::Pending {
            let reason = format!(
                "no decision within {} s (approval.wait-secs, or the policy's @ttl); the held call failed",
                wait.as_secs()
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

/// How long a request was opened for.
fn request_ttl(record: &ApprovalRecord) -> Duration {
    Duration::from_micros(record.expires_at.saturating_sub(record.created_at))
}

/// The choke point's view of the gate (see [`crate::call::CallGate`]).
impl CallGate for Gate {
    fn judge(&self, targets: &[Target], function: &str) -> crate::call::Judgement {
        match Gate::judge(self, targets, function) {
            Judgement::Pass => crate::call::Judgement::Pass,
            Judgement::Deny { rule, reason } => crate::call::Judgement::Deny { rule, reason },
            Judgement::Hold(hold) => crate::call::Judgement::Hold { rule: hold.rule },
        }
    }

    fn holds_back(&self, targets: &[Target], function: &str) -> bool {
        Gate::holds_back(self, targets, function)
    }

    fn hold<'a>(&'a self, call: &'a HostCall) -> BoxFuture<'a, Option<Result<String, Decision>>> {
        Box::pin(Gate::hold(self, call))
    }

    fn ask_for_guest(&self, subject: Value) -> BoxFuture<'_, Result<GuestAnswer, Error>> {
        Box::pin(async move {
            let record = Gate::ask_for_guest(self, subject).await?;
            Ok(match record.state {
                ApprovalState::Approved => GuestAnswer::Approved,
                ApprovalState::Expired => GuestAnswer::Expired,
                _ => GuestAnswer::Denied(
                    record
                        .reason
                        .unwrap_or_else(|| format!("request {} {}", record.id, record.state)),
                ),
            })
        })
    }

    fn resolve(&self, path: &str) -> Option<String> {
        Gate::resolve(self, path)
    }

    fn waited(&self) -> Duration {
        Gate::waited(self)
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
