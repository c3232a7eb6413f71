//! Approval gates: requests, decisions, quorum, expiry, and waiting.
//!
//! Three kinds of request ([`ApprovalKind`]) share one life cycle:
//! `pending` until a quorum of distinct approvers approves (`approved`),
//! anyone allowed denies (`denied`), its time runs out (`expired`), or the
//! instance waiting on it ends (`failed`). The rules, all enforced in
//! [`Approvals::decide`] inside one atomic store update:
//!
//! - only a pending, unexpired request can be decided;
//! - the requester never approves its own request;
//! - humans approve through `access.approve`, agents only through
//!   `access.agent-approvers`; the local operator never approves;
//! - each identity counts once; any deny ends the request;
//! - an approval counts only while its identity holds a live token that
//!   may approve: when a vote would complete the quorum, every earlier vote
//!   is re-checked against the tokens live at that moment (in the same
//!   transaction), and a vote whose identity's tokens were all revoked (or
//!   no longer carry the approving role) does not count, as a requester's
//!   revoked token stops its approved invocation from running.
//!
//! Every request, decision and resolution is appended to the audit log and
//! synced before it is acknowledged. A request is recorded before it is
//! stored (nobody can see one the log does not hold); a decision or
//! resolution is stored first, with its record in the store's audit outbox,
//! and appended after the commit (the log never shows one that did not
//! count). Nothing acts on a decision before the log holds it: whoever
//! would run what it released drains the outbox first ([`Approvals::wait`],
//! [`crate::gateway`]).

pub mod binding;
pub mod gate;
mod resolve;

pub use crate::call::Target;
pub use crate::identity::AccessPolicy;
pub use crate::policy::approval::{ApprovalPolicy, CallRule};
pub use binding::Binding;

use crate::audit::event::{ApprovalDecision, ApprovalRequested, ApprovalResolved, InvocationRefused};
use crate::audit::{AuditLog, Event};
use crate::error::Error;
use crate::identity::Caller;
use crate::store::{
    ApprovalKind, ApprovalRecord, ApprovalState, DecisionRecord, InvocationEnding, InvocationOutcome, InvocationRecord,
    InvocationStatus, Refusal, Store, TokenRecord, UpdateError, Verdict,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a waiter re-reads a request decided by another process.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Longest reason or summary text kept, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// The approval service of one runtime process.
#[derive(Clone)]
pub struct Approvals {
    store: Arc<dyn Store>,
    audit: AuditLog,
    /// `PID:NONCE` of this process, stamped on requests its instances wait
    /// on, so a later process can tell they were orphaned.
    owner: String,
    /// Woken on every decision made in this process, so in-process waiters
    /// do not wait for their next poll.
    changed: Arc<tokio::sync::Notify>,
    /// On a shared store: this process's heartbeat (see [`crate::cluster`]).
    heartbeat: Option<Arc<crate::cluster::Heartbeat>>,
    /// Where requests, decisions and expiries are announced (set by the
    /// service; every clone shares it).
    notifier: Arc<std::sync::OnceLock<crate::notify::Notifier>>,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// A new request, before it has an id.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub kind: ApprovalKind,
    pub invocation: String,
    pub action: String,
    pub function: String,
    pub caller: Caller,
    pub service_identity: String,
    pub component_digest: String,
    pub args: serde_json::Value,
    pub config_version: String,
    pub rule: String,
    pub subject: serde_json::Value,
    pub capabilities: Vec<String>,
    pub quorum: u32,
    pub approvers: Vec<String>,
    pub ttl: Duration,
    /// Set when a policy named the reviewers (see
    /// [`ApprovalRecord::rules`]).
    pub group: Option<String>,
    pub rules: Option<crate::store::ApproverRules>,
    pub more_groups: Vec<crate::store::GroupRules>,
    pub policies: Vec<String>,
    pub why: Option<String>,
    /// The agent's stated reason and trace, shown to reviewers.
    pub intent: Option<crate::request::Intent>,
    /// After this long undecided, this group may decide too.
    pub escalation: Option<(Duration, crate::store::GroupRules)>,
}

impl NewRequest {
    pub fn binding(&self) -> String {
        Binding {
            kind: self.kind.as_str(),
            action: &self.action,
            component_digest: &self.component_digest,
            function: &self.function,
            args: &self.args,
            caller: &self.caller.name,
            config_version: &self.config_version,
            subject: &self.subject,
            reason: self.intent.as_ref().and_then(|i| i.reason.as_deref()),
        }
        .digest()
    }
}

/// A short random id for requests: 12 hex digits, easy to type.
fn new_id() -> String {
    let mut bytes = [0u8; 6];
    if getrandom::fill(&mut bytes).is_err() {
        bytes.copy_from_slice(&crate::time::now_micros().to_be_bytes()[2..]);
    }
    crate::audit::chain::hex(&bytes)
}

fn cut(text: &str) -> String {
    let mut end = text.len().min(MAX_REASON_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

impl Approvals {
    pub fn new(store: Arc<dyn Store>, audit: AuditLog) -> Approvals {
        let mut nonce = [0u8; 4];
        let _ = getrandom::fill(&mut nonce);
        Approvals {
            store,
            audit,
            owner: format!("{}:{}", std::process::id(), crate::audit::chain::hex(&nonce)),
            changed: Arc::new(tokio::sync::Notify::new()),
            heartbeat: None,
            notifier: Arc::new(std::sync::OnceLock::new()),
        }
        .with_heartbeat()
    }

    /// On a store other machines share, tell them this process (its
    /// waiting instances, and the invocations its runner lease runs) lives.
    fn with_heartbeat(mut self) -> Approvals {
        self.store.watch(Arc::downgrade(&self.changed));
        if let Some(heartbeat) = crate::cluster::heartbeat_for(&self.store) {
            heartbeat.add(&self.owner);
            heartbeat.add(self.audit.runner());
            self.heartbeat = Some(heartbeat);
        }
        self
    }

    /// This process is stopping: fail the requests its own instances wait
    /// on (they cannot outlive it, and no reviewer should approve what will
    /// never run), and tell the other nodes it holds nothing more, so they
    /// finish what it leaves at once instead of after its heartbeats go
    /// stale. Returns the requests failed.
    pub async fn leave(&self) -> Result<Vec<ApprovalRecord>, Error> {
        let failed = self.fail_own_requests().await?;
        if let Some(heartbeat) = self.heartbeat.clone() {
            // Its thread marks the processes ended as it stops.
            tokio::task::spawn_blocking(move || heartbeat.stop())
                .await
                .map_err(|e| Error::internal(format!("the leave task failed: {e}")))?;
        }
        Ok(failed)
    }

    /// Fail the pending requests this process's own instances wait on,
    /// saying the node shuts down (the first step of [`Approvals::leave`]:
    /// those instances then end instead of waiting out `wait-secs`).
    pub async fn fail_own_requests(&self) -> Result<Vec<ApprovalRecord>, Error> {
        let mut failed = Vec::new();
        for r in self.store.approvals(Some(ApprovalState::Pending), usize::MAX)? {
            if r.owner.as_deref() != Some(self.owner.as_str()) {
                continue;
            }
            let reason = format!(
                "the instance waiting on this {} request stopped before a decision (node {} shut down); ask again",
                r.kind,
                crate::cluster::node_id()
            );
            failed.push(self.close(&r.id, ApprovalState::Failed, &reason).await?);
        }
        Ok(failed)
    }

    /// Whether this process's heartbeat reaches the store (always, on a
    /// store no other machine shares).
    pub fn heartbeat_healthy(&self) -> bool {
        self.heartbeat.as_ref().is_none_or(|h| h.is_healthy())
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    async fn record(&self, events: Vec<Event>) -> Result<(), Error> {
        self.audit
            .append_durable_async(events, None)
            .await
            .map(|_| ())
            .map_err(|e| Error::AuditUnavailable(e.to_string()))
    }

    /// Open a request: audited (and synced) first, then stored, so nobody
    /// can see, let alone decide, a request the log does not hold.
    pub async fn open(&self, request: NewRequest) -> Result<ApprovalRecord, Error> {
        let now = crate::time::now_micros();
        let ttl = u64::try_from(request.ttl.as_micros()).unwrap_or(u64::MAX);
        let binding = request.binding();
        let record = ApprovalRecord {
            id: new_id(),
            kind: request.kind,
            state: ApprovalState::Pending,
            action: request.action,
            function: request.function,
            caller: request.caller.name,
            caller_kind: request.caller.kind,
            service_identity: request.service_identity,
            component_digest: request.component_digest,
            args: request.args,
            binding,
            config_version: request.config_version,
            rule: request.rule,
            subject: request.subject,
            capabilities: request.capabilities,
            quorum: request.quorum,
            approvers: request.approvers,
            created_at: now,
            expires_at: now.saturating_add(ttl),
            decided_at: None,
            reason: None,
            invocation: request.invocation,
            owner: (request.kind != ApprovalKind::Invocation).then(|| self.owner.clone()),
            decisions: Vec::new(),
            uncounted: Vec::new(),
            group: request.group,
            rules: request.rules,
            more_groups: request.more_groups,
            policies: request.policies,
            why: request.why,
            intent: request.intent.filter(|i| !i.is_empty()),
            escalate_at: request
                .escalation
                .as_ref()
                .map(|(after, _)| now.saturating_add(u64::try_from(after.as_micros()).unwrap_or(u64::MAX))),
            escalation: request.escalation.map(|(_, g)| g),
            escalated: false,
        };
        self.record(vec![Event::ApprovalRequested(ApprovalRequested {
            approval: record.id.clone(),
            approval_kind: record.kind.to_string(),
            invocation: record.invocation.clone(),
            action: record.action.clone(),
            function: record.function.clone(),
            caller: record.caller.clone(),
            binding: record.binding.clone(),
            rule: record.rule.clone(),
            quorum: record.quorum,
            expires_at: crate::time::rfc3339_micros(record.expires_at),
            subject: record.subject.clone(),
            policies: record.policies.clone(),
            group: record.group.clone(),
            why: record.why.clone(),
            reason: record.intent.as_ref().and_then(|i| i.reason.clone()),
            traceparent: record.intent.as_ref().and_then(|i| i.traceparent.clone()),
        })])
        .await?;
        if let Err(e) = self.store.insert_approval(&record) {
            // The log holds the request: say that it never became one.
            let mut lost = record.clone();
            lost.state = ApprovalState::Failed;
            lost.reason = Some(cut(&format!("the request could not be stored: {e}")));
            let _ = self.record(vec![resolved_event(&lost)]).await;
            return Err(e.into());
        }
        tracing::info!(approval = %record.id, kind = %record.kind, action = %record.action, "approval requested");
        crate::metrics::metrics().approvals_requested.inc();
        self.announce(crate::notify::NoticeKind::Requested, &record);
        Ok(record)
    }

    pub fn get(&self, id: &str) -> Result<ApprovalRecord, Error> {
        self.store.approval(id)?.ok_or_else(|| {
            Error::Usage(format!(
                "no approval request {id}; see `{}`",
                crate::hint::command_as_caller("approvals list")
            ))
        })
    }

    /// Record `who`'s verdict on request `id`. `access` is the action's
    /// access policy under config `config_version`, which must be the
    /// config the request was made under; `expect_binding`, when given,
    /// must equal the request's binding (the reviewer approves what they
    /// saw).
    ///
    /// The decision is committed first, with its audit records in the
    /// store's outbox, and the records are appended (and synced) after the
    /// commit, so the log shows only decisions that counted. If they cannot
    /// be appended, the decision is stored but not acknowledged: the
    /// reviewer gets an error, and the records stay owed until a later
    /// drain (from any process) appends them. Appending before the commit
    /// would show a decision that never counted whenever the commit fails;
    /// withdrawing the decision after a failed append would race with
    /// processes that already read it. What a decision releases waits for
    /// its records instead: every path that acts on one ([`Approvals::wait`],
    /// the gateway before it runs an approved invocation) drains the outbox
    /// first and stops if it cannot, so nothing runs on a decision the log
    /// does not hold.
    #[allow(clippy::too_many_arguments)]
    pub async fn decide(
        &self,
        id: &str,
        who: &Caller,
        verdict: Verdict,
        reason: Option<&str>,
        groups: &[(AccessPolicy, u32)],
        config_version: &str,
        expect_binding: Option<&str>,
    ) -> Result<ApprovalRecord, Error> {
        // Expired requests are closed first, so a late decision is refused
        // as expired and the expiry is on record; due escalations happen
        // first, so the group they bring in may decide.
        self.expire_due().await?;
        self.escalate_due().await?;
        let this = self.clone();
        let voter = who.name.clone();
        let (id, who, groups) = (id.to_string(), who.clone(), groups.to_vec());
        let (config_version, expect_binding) = (config_version.to_string(), expect_binding.map(str::to_string));
        let reason = reason.map(cut);
        let record = tokio::task::spawn_blocking(move || {
            this.decide_blocking(
                &id,
                &who,
                verdict,
                reason,
                &groups,
                &config_version,
                expect_binding.as_deref(),
            )
        })
        .await
        .map_err(|e| Error::internal(format!("the decision task failed: {e}")))??;
        self.changed.notify_waiters();
        // The decision that ended it (approved or denied); a vote short of
        // the quorum is not announced.
        if record.state != ApprovalState::Pending && record.decisions.last().is_some_and(|d| d.identity == voter) {
            self.announce(crate::notify::NoticeKind::Decided, &record);
        }
        Ok(record)
    }

    #[allow(clippy::too_many_arguments)]
    fn decide_blocking(
        &self,
        id: &str,
        who: &Caller,
        verdict: Verdict,
        reason: Option<String>,
        groups: &[(AccessPolicy, u32)],
        config_version: &str,
        expect_binding: Option<&str>,
    ) -> Result<ApprovalRecord, Error> {
        let now = crate::time::now_micros();
        let mut update = |r: &mut ApprovalRecord, live: &[TokenRecord]| -> Result<Option<String>, Refusal> {
            if r.state != ApprovalState::Pending {
                return Err(Refusal::NotPending {
                    id: r.id.clone(),
                    state: r.state,
                });
            }
            if now >= r.expires_at {
                return Err(Refusal::Expired(r.id.clone()));
            }
            if r.config_version != config_version {
                return Err(Refusal::Other(format!(
                    "request {} was made under config {}, and this is {config_version}: decide it with the config it was made under",
                    r.id, r.config_version
                )));
            }
            if let Some(want) = expect_binding
                && want != r.binding
            {
                return Err(Refusal::Other(format!(
                    "request {} is bound to {}, not {want}; nothing was decided",
                    r.id, r.binding
                )));
            }
            if who.name == r.caller {
                return Err(Refusal::SelfApproval(who.name.clone()));
            }
            if !groups.iter().any(|(access, _)| access.may_approve(who)) {
                let mut approvers = groups
                    .iter()
                    .flat_map(|(access, _)| access.approvers_text())
                    .collect::<Vec<_>>()
                    .join(", ");
                if approvers.is_empty() {
                    approvers = "nobody is configured".into();
                }
                let identity = match who.kind {
                    crate::identity::IdentityKind::Agent => format!("agent {}", who.name),
                    crate::identity::IdentityKind::Human => who.name.clone(),
                };
                return Err(Refusal::NotAnApprover {
                    identity,
                    action: r.action.clone(),
                    approvers,
                });
            }
            if r.decisions.iter().any(|d| d.identity == who.name) {
                return Err(Refusal::AlreadyDecided {
                    identity: who.name.clone(),
                    id: r.id.clone(),
                });
            }
            // The voter's own token may have been revoked since it
            // authenticated this request.
            if let Some(token) = &who.token_id
                && !live.iter().any(|t| t.id == *token)
            {
                return Err(Refusal::Other(format!(
                    "token {token} was revoked; nothing was decided on request {}",
                    r.id
                )));
            }
            r.decisions.push(DecisionRecord {
                identity: who.name.clone(),
                kind: who.kind,
                verdict,
                reason: reason.clone(),
                at: now,
            });
            match verdict {
                Verdict::Deny => {
                    r.state = ApprovalState::Denied;
                    r.reason = Some(match &reason {
                        Some(why) => format!("denied by {}: {why}", who.name),
                        None => format!("denied by {}", who.name),
                    });
                    r.decided_at = Some(now);
                }
                Verdict::Approve => {}
            }
            let (counted, uncounted, complete) = counted_approvals(r, live, groups);
            r.uncounted = uncounted.clone();
            if verdict == Verdict::Approve && complete {
                r.state = ApprovalState::Approved;
                r.decided_at = Some(now);
            }
            let mut events = vec![Event::ApprovalDecision(ApprovalDecision {
                approval: r.id.clone(),
                invocation: r.invocation.clone(),
                action: r.action.clone(),
                identity: who.name.clone(),
                identity_kind: who.kind.to_string(),
                verdict: verdict.to_string(),
                reason: reason.clone(),
                approvals: u32::try_from(counted).unwrap_or(u32::MAX),
                quorum: r.quorum,
                uncounted,
            })];
            if r.state != ApprovalState::Pending {
                events.push(resolved_event(r));
            }
            owe(&events).map(Some)
        };
        let record = self.store.update_approval(id, &mut update).map_err(update_error)?;
        tracing::info!(approval = %record.id, identity = %who.name, %verdict, state = %record.state, "approval decision");
        crate::metrics::metrics()
            .approval_votes
            .get_or_create(&crate::metrics::VerdictLabels {
                verdict: verdict.as_str().into(),
            })
            .inc();
        if let Err(e) = self.drain_blocking() {
            self.changed.notify_waiters();
            return Err(match e {
                Error::AuditUnavailable(m) => Error::AuditUnavailable(format!(
                    "the decision of {} ({verdict}) on request {} is stored, but the audit log cannot be written ({m}); it is not confirmed, and nothing it releases runs until the log holds it",
                    who.name, record.id
                )),
                other => other,
            });
        }
        Ok(record)
    }

    /// Append the audit records that committed changes owe the log (see
    /// [`crate::store`]), from whichever process made them. On failure they
    /// stay owed and the next drain tries again.
    fn drain_blocking(&self) -> Result<(), Error> {
        let audit = self.audit.clone();
        let mut append = move |bodies: Vec<String>| -> Result<(), Refusal> {
            let events = crate::audit::event::decode_owed(&bodies).map_err(Refusal::AuditUnavailable)?;
            if events.is_empty() {
                return Ok(());
            }
            audit
                .append_durable(events)
                .map(|_| ())
                .map_err(|e| Refusal::AuditUnavailable(e.to_string()))
        };
        match self.store.drain_audit_outbox(&mut append) {
            Ok(_) => Ok(()),
            Err(UpdateError::Refused(Refusal::AuditUnavailable(m))) => Err(Error::AuditUnavailable(m)),
            Err(e) => Err(update_error(e)),
        }
    }

    /// [`Approvals::drain_blocking`] for async callers: call it before
    /// acting on a decision.
    pub async fn flush_audit(&self) -> Result<(), Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.drain_blocking())
            .await
            .map_err(|e| Error::internal(format!("the audit flush task failed: {e}")))?
    }

    /// End `record`, an invocation waiting on the invocation-level request
    /// `approval`, as `to` (denied, expired or failed) without running it,
    /// with the error `why`; the ending is audited like a refusal. With
    /// `expire_approval`, the approved request expires with it (reason
    /// given): it was not started in time. `false` when someone claimed or
    /// ended the invocation first, and nothing changed.
    pub async fn end_invocation(
        &self,
        record: &InvocationRecord,
        approval: &ApprovalRecord,
        to: InvocationStatus,
        why: &str,
        expire_approval: Option<&str>,
    ) -> Result<bool, Error> {
        let outcome = InvocationOutcome {
            exit_code: 3,
            result: None,
            error: Some(why.to_string()),
            finished_at: crate::time::now_micros(),
        };
        let mut events = Vec::new();
        if let Some(reason) = expire_approval {
            let mut expired = approval.clone();
            expired.state = ApprovalState::Expired;
            expired.reason = Some(reason.to_string());
            events.push(resolved_event(&expired));
        }
        events.push(Event::InvocationRefused(InvocationRefused {
            invocation: record.id.clone(),
            caller: record.caller.name.clone(),
            action: record.action.clone(),
            service_identity: Some(approval.service_identity.clone()),
            function: record.function.clone(),
            exit_code: outcome.exit_code,
            error: cut(why),
            approval: Some(approval.id.clone()),
            state: Some(to.to_string()),
            policies: Vec::new(),
            reason: record.intent.as_ref().and_then(|i| i.reason.clone()),
            traceparent: record.intent.as_ref().and_then(|i| i.traceparent.clone()),
        }));
        let audit = owe(&events).map_err(|r| Error::AuditUnavailable(r.to_string()))?;
        let ended = self.store.end_invocation(&InvocationEnding {
            invocation: &record.id,
            from: &[InvocationStatus::AwaitingApproval, InvocationStatus::Approved],
            to,
            outcome: &outcome,
            expire_approval: expire_approval.map(|reason| (approval.id.as_str(), reason)),
            audit: &audit,
        })?;
        if ended {
            crate::metrics::invocation_ended(&record.action, "refused");
            self.changed.notify_waiters();
            self.flush_audit().await?;
        }
        Ok(ended)
    }

    /// Close request `id` as `state` (expired or failed) if it is still
    /// pending; returns the record as it ends up. Audited like a decision:
    /// stored with its record owed, then appended.
    pub async fn close(&self, id: &str, state: ApprovalState, reason: &str) -> Result<ApprovalRecord, Error> {
        let this = self.clone();
        let (id, reason) = (id.to_string(), cut(reason));
        let (record, changed) = tokio::task::spawn_blocking(move || {
            let now = crate::time::now_micros();
            let mut changed = false;
            let mut update = |r: &mut ApprovalRecord, _: &[TokenRecord]| -> Result<Option<String>, Refusal> {
                if r.state != ApprovalState::Pending {
                    return Ok(None);
                }
                r.state = state;
                r.reason = Some(reason.clone());
                r.decided_at = Some(now);
                changed = true;
                owe(&[resolved_event(r)]).map(Some)
            };
            let record = this.store.update_approval(&id, &mut update).map_err(update_error)?;
            if changed {
                this.drain_blocking()?;
            }
            Ok::<_, Error>((record, changed))
        })
        .await
        .map_err(|e| Error::internal(format!("the close task failed: {e}")))??;
        if changed {
            self.changed.notify_waiters();
            if record.state == ApprovalState::Expired {
                crate::metrics::metrics().approvals_expired.inc();
                self.announce(crate::notify::NoticeKind::Expired, &record);
            }
        }
        Ok(record)
    }

    /// Announce `record` to the webhooks, if the service set them up.
    /// Queued, never awaited: delivery is off the request's path.
    fn announce(&self, kind: crate::notify::NoticeKind, record: &ApprovalRecord) {
        if let Some(n) = self.notifier.get() {
            n.notify(kind, record);
        }
    }

    /// Announce requests, decisions and expiries through `notifier` from now
    /// on (every clone of this service shares it). Set once.
    pub fn set_notifier(&self, notifier: crate::notify::Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// Escalate every pending request whose `escalate_at` has passed: its
    /// escalation group's reviewers join the first group's (votes already
    /// cast still count; quorum and expiry stay), recorded as
    /// `approval-escalated` and announced. A compare-and-set in the store:
    /// of several nodes sweeping at once, one escalates.
    pub async fn escalate_due(&self) -> Result<Vec<ApprovalRecord>, Error> {
        let now = crate::time::now_micros();
        let mut escalated = Vec::new();
        for r in self.store.approvals(Some(ApprovalState::Pending), usize::MAX)? {
            if r.escalated || r.escalate_at.is_none_or(|at| at > now) || r.escalation.is_none() {
                continue;
            }
            let this = self.clone();
            let id = r.id.clone();
            let (record, changed) = tokio::task::spawn_blocking(move || {
                let mut changed = false;
                let mut update = |r: &mut ApprovalRecord, _: &[TokenRecord]| -> Result<Option<String>, Refusal> {
                    let Some(to) = r.escalation.clone() else {
                        return Ok(None);
                    };
                    if r.state != ApprovalState::Pending || r.escalated || now >= r.expires_at {
                        return Ok(None);
                    }
                    // A group the request already needs separately does
                    // not become a stand-in for the first: its members
                    // would then fill both seats' worth of approval.
                    if r.more_groups.iter().any(|g| g.group == to.group) {
                        return Ok(None);
                    }
                    let mut rules = r.rules.clone().unwrap_or_default();
                    for a in &to.rules.approve {
                        if !rules.approve.contains(a) {
                            rules.approve.push(a.clone());
                        }
                    }
                    for a in &to.rules.agent_approvers {
                        if !rules.agent_approvers.contains(a) {
                            rules.agent_approvers.push(a.clone());
                        }
                    }
                    let first: Vec<String> = rules
                        .approve
                        .iter()
                        .cloned()
                        .chain(rules.agent_approvers.iter().map(|a| format!("{a} (agent)")))
                        .collect();
                    let approvers: Vec<String> = if r.more_groups.is_empty() {
                        first
                    } else {
                        std::iter::once(format!(
                            "{} (quorum {}): {}",
                            r.group.as_deref().unwrap_or("action"),
                            r.quorum,
                            first.join(", ")
                        ))
                        .chain(r.more_groups.iter().map(|g| {
                            let a = g.rules.access();
                            format!("{} (quorum {}): {}", g.group, g.quorum, a.approvers_text().join(", "))
                        }))
                        .collect()
                    };
                    r.rules = Some(rules);
                    r.approvers = approvers.clone();
                    r.escalated = true;
                    r.escalate_at = None;
                    changed = true;
                    owe(&[Event::ApprovalEscalated(crate::audit::event::ApprovalEscalated {
                        approval: r.id.clone(),
                        invocation: r.invocation.clone(),
                        action: r.action.clone(),
                        from_group: r.group.clone().unwrap_or_else(|| "action".into()),
                        to_group: to.group.clone(),
                        approvers,
                    })])
                    .map(Some)
                };
                let record = this.store.update_approval(&id, &mut update).map_err(update_error)?;
                if changed {
                    this.drain_blocking()?;
                }
                Ok::<_, Error>((record, changed))
            })
            .await
            .map_err(|e| Error::internal(format!("the escalation task failed: {e}")))??;
            if changed {
                tracing::info!(approval = %record.id, "approval escalated");
                self.changed.notify_waiters();
                self.announce(crate::notify::NoticeKind::Escalated, &record);
                escalated.push(record);
            }
        }
        Ok(escalated)
    }

    /// Expire every pending request whose time is up.
    pub async fn expire_due(&self) -> Result<Vec<ApprovalRecord>, Error> {
        let now = crate::time::now_micros();
        let mut closed = Vec::new();
        for r in self.store.approvals(Some(ApprovalState::Pending), usize::MAX)? {
            if now >= r.expires_at {
                let ttl = Duration::from_micros(r.expires_at.saturating_sub(r.created_at));
                let reason = format!("no decision within {} s", ttl.as_secs());
                closed.push(self.close(&r.id, ApprovalState::Expired, &reason).await?);
            }
        }
        Ok(closed)
    }

    /// Fail pending host-call and guest requests whose waiting instance is
    /// gone: its process has exited (or it was this process, restarted).
    pub async fn fail_orphans(&self) -> Result<Vec<ApprovalRecord>, Error> {
        let mut failed = Vec::new();
        for r in self.store.approvals(Some(ApprovalState::Pending), usize::MAX)? {
            let Some(owner) = &r.owner else { continue };
            if *owner == self.owner {
                continue;
            }
            let reason = if self.store.shared() {
                // Its process may be on another machine: its heartbeats tell.
                if crate::store::process_alive(self.store.as_ref(), owner, r.created_at)? {
                    continue;
                }
                let node = self.store.process(owner)?.map(|p| p.node);
                format!(
                    "the instance waiting on this {} request ended before a decision (its process {} on node {} stopped sending heartbeats)",
                    r.kind,
                    owner.split(':').next().unwrap_or("?"),
                    node.as_deref().unwrap_or("?")
                )
            } else {
                if process_alive(owner) {
                    continue;
                }
                format!(
                    "the instance waiting on this {} request ended before a decision (its process {} is gone)",
                    r.kind,
                    owner.split(':').next().unwrap_or("?")
                )
            };
            failed.push(self.close(&r.id, ApprovalState::Failed, &reason).await?);
        }
        Ok(failed)
    }

    /// Wait until request `id` is decided or `deadline` passes; returns the
    /// request as it stands then (still pending on timeout).
    pub async fn wait(&self, id: &str, deadline: Instant) -> Result<ApprovalRecord, Error> {
        loop {
            // Register before reading, so a decision between the read and
            // the wait still wakes us.
            let notified = self.changed.notified();
            let record = self.get(id)?;
            if record.state != ApprovalState::Pending {
                // What the decision releases waits until the log holds it.
                self.flush_audit().await?;
                return Ok(record);
            }
            if crate::time::now_micros() >= record.expires_at {
                self.expire_due().await?;
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(record);
            }
            let nap = POLL_INTERVAL.min(deadline - now);
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }
}

/// The approvals on `r` that count now, the identities whose approvals
/// no longer do, and whether every group has its quorum: a vote counts
/// for a group while its identity holds a live token (`live`, read in the
/// deciding transaction) with which it may approve for that group.
fn counted_approvals(
    r: &ApprovalRecord,
    live: &[TokenRecord],
    groups: &[(AccessPolicy, u32)],
) -> (usize, Vec<String>, bool) {
    let mut counted = 0;
    let mut uncounted = Vec::new();
    // For each counted voter, the groups it may approve for.
    let mut eligible: Vec<Vec<usize>> = Vec::new();
    for d in r.decisions.iter().filter(|d| d.verdict == Verdict::Approve) {
        let mine: Vec<usize> = groups
            .iter()
            .enumerate()
            .filter(|(_, (access, _))| {
                live.iter().any(|t| {
                    t.identity == d.identity
                        && access.may_approve(&Caller {
                            name: t.identity.clone(),
                            kind: t.kind,
                            roles: t.roles.clone(),
                            token_id: Some(t.id.clone()),
                        })
                })
            })
            .map(|(i, _)| i)
            .collect();
        if mine.is_empty() {
            uncounted.push(d.identity.clone());
        } else {
            counted += 1;
            eligible.push(mine);
        }
    }
    // Each approval fills one seat of one group: the request is approved
    // when distinct identities can fill every group's quorum (a reviewer
    // in two groups does not approve for both).
    let seats: Vec<usize> = groups
        .iter()
        .enumerate()
        .flat_map(|(i, (_, q))| std::iter::repeat_n(i, *q as usize))
        .collect();
    let complete = !groups.is_empty() && fill_seats(&seats, &eligible) == seats.len();
    (counted, uncounted, complete)
}

/// How many of `seats` (each a group) distinct voters can fill, each voter
/// one seat of a group it is `eligible` for (augmenting paths, Kuhn's
/// algorithm; a few dozen seats at most).
fn fill_seats(seats: &[usize], eligible: &[Vec<usize>]) -> usize {
    fn try_voter(
        v: usize,
        seats: &[usize],
        eligible: &[Vec<usize>],
        seen: &mut [bool],
        holder: &mut [Option<usize>],
    ) -> bool {
        for (s, group) in seats.iter().enumerate() {
            if seen[s] || !eligible[v].contains(group) {
                continue;
            }
            seen[s] = true;
            if holder[s].is_none_or(|other| try_voter(other, seats, eligible, seen, holder)) {
                holder[s] = Some(v);
                return true;
            }
        }
        false
    }
    let mut holder: Vec<Option<usize>> = vec![None; seats.len()];
    let mut filled = 0;
    for v in 0..eligible.len() {
        let mut seen = vec![false; seats.len()];
        if try_voter(v, seats, eligible, &mut seen, &mut holder) {
            filled += 1;
        }
    }
    filled
}

fn update_error(e: UpdateError) -> Error {
    match e {
        UpdateError::NotFound(id) => Error::Usage(format!(
            "no approval request {id}; see `{}`",
            crate::hint::command_as_caller("approvals list")
        )),
        UpdateError::Refused(Refusal::AuditUnavailable(m)) => Error::AuditUnavailable(format!(
            "the decision could not be recorded in the audit log ({m}); nothing was decided"
        )),
        UpdateError::Refused(r) => Error::Refused(r.to_string()),
        UpdateError::Store(e) => e.into(),
    }
}

/// Audit records in the form the store keeps them in its outbox.
fn owe(events: &[Event]) -> Result<String, Refusal> {
    serde_json::to_string(events)
        .map_err(|e| Refusal::AuditUnavailable(format!("cannot serialize an audit record: {e}")))
}

fn resolved_event(record: &ApprovalRecord) -> Event {
    Event::ApprovalResolved(ApprovalResolved {
        approval: record.id.clone(),
        invocation: record.invocation.clone(),
        action: record.action.clone(),
        state: record.state.to_string(),
        reason: record.reason.clone(),
    })
}

/// Whether the process of owner `PID:NONCE` still runs.
fn process_alive(owner: &str) -> bool {
    let Some(pid) = owner.split(':').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    if pid == std::process::id() {
        // Same pid, different nonce: an earlier life of this pid.
        return false;
    }
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The groups of `groups` besides `first`, as requests keep them.
pub(crate) fn more_groups(groups: &[crate::policy::engine::GroupNeed], first: &str) -> Vec<crate::store::GroupRules> {
    groups
        .iter()
        .filter(|g| g.group != first)
        .map(|g| crate::store::GroupRules {
            group: g.group.clone(),
            rules: crate::store::ApproverRules::of(&g.approvers),
            quorum: g.quorum,
        })
        .collect()
}
