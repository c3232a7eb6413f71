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
//! - each identity counts once; any deny ends the request.
//!
//! Every request, decision and resolution is appended to the audit log and
//! synced before it is acknowledged.

pub mod binding;
pub mod gate;
pub mod policy;

pub use binding::Binding;
pub use policy::{AccessPolicy, ApprovalPolicy, CallRule, Target};

use crate::audit::event::{ApprovalDecision, ApprovalRequested, ApprovalResolved};
use crate::audit::{AuditLog, Event};
use crate::error::Error;
use crate::identity::Caller;
use crate::store::{ApprovalKind, ApprovalRecord, ApprovalState, DecisionRecord, Refusal, Store, UpdateError, Verdict};
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
        }
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
        })])
        .await?;
        self.store.insert_approval(&record)?;
        tracing::info!(approval = %record.id, kind = %record.kind, action = %record.action, "approval requested");
        Ok(record)
    }

    pub fn get(&self, id: &str) -> Result<ApprovalRecord, Error> {
        self.store
            .approval(id)?
            .ok_or_else(|| Error::Usage(format!("no approval request {id}; see `airlock approvals list`")))
    }

    /// Record `who`'s verdict on request `id`. `access` is the action's
    /// access policy under config `config_version`, which must be the
    /// config the request was made under; `expect_binding`, when given,
    /// must equal the request's binding (the reviewer approves what they
    /// saw).
    ///
    /// The decision and its audit records are one step: the records are
    /// appended (and synced) inside the store transaction, which commits
    /// only if they were; a decision the log does not hold never counts.
    #[allow(clippy::too_many_arguments)]
    pub async fn decide(
        &self,
        id: &str,
        who: &Caller,
        verdict: Verdict,
        reason: Option<&str>,
        access: &AccessPolicy,
        config_version: &str,
        expect_binding: Option<&str>,
    ) -> Result<ApprovalRecord, Error> {
        // Expired requests are closed first, so a late decision is refused
        // as expired and the expiry is on record.
        self.expire_due().await?;
        let this = self.clone();
        let (id, who, access) = (id.to_string(), who.clone(), access.clone());
        let (config_version, expect_binding) = (config_version.to_string(), expect_binding.map(str::to_string));
        let reason = reason.map(cut);
        let record = tokio::task::spawn_blocking(move || {
            this.decide_blocking(
                &id,
                &who,
                verdict,
                reason,
                &access,
                &config_version,
                expect_binding.as_deref(),
            )
        })
        .await
        .map_err(|e| Error::internal(format!("the decision task failed: {e}")))??;
        self.changed.notify_waiters();
        Ok(record)
    }

    #[allow(clippy::too_many_arguments)]
    fn decide_blocking(
        &self,
        id: &str,
        who: &Caller,
        verdict: Verdict,
        reason: Option<String>,
        access: &AccessPolicy,
        config_version: &str,
        expect_binding: Option<&str>,
    ) -> Result<ApprovalRecord, Error> {
        let now = crate::time::now_micros();
        let mut update = |r: &mut ApprovalRecord| -> Result<(), Refusal> {
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
            if !access.may_approve(who) {
                let mut approvers = access.approvers_text().join(", ");
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
                Verdict::Approve if r.approvals() >= r.quorum as usize => {
                    r.state = ApprovalState::Approved;
                    r.decided_at = Some(now);
                }
                Verdict::Approve => {}
            }
            let mut events = vec![Event::ApprovalDecision(ApprovalDecision {
                approval: r.id.clone(),
                invocation: r.invocation.clone(),
                action: r.action.clone(),
                identity: who.name.clone(),
                identity_kind: who.kind.to_string(),
                verdict: verdict.to_string(),
                reason: reason.clone(),
                approvals: u32::try_from(r.approvals()).unwrap_or(u32::MAX),
                quorum: r.quorum,
            })];
            if r.state != ApprovalState::Pending {
                events.push(resolved_event(r));
            }
            self.audit
                .append_durable(events)
                .map(|_| ())
                .map_err(|e| Refusal::AuditUnavailable(e.to_string()))
        };
        let record = self.store.update_approval(id, &mut update).map_err(update_error)?;
        tracing::info!(approval = %record.id, identity = %who.name, %verdict, state = %record.state, "approval decision");
        Ok(record)
    }

    /// Close request `id` as `state` (expired or failed) if it is still
    /// pending; returns the record as it ends up. Audited in the same
    /// transaction, like a decision.
    pub async fn close(&self, id: &str, state: ApprovalState, reason: &str) -> Result<ApprovalRecord, Error> {
        let this = self.clone();
        let (id, reason) = (id.to_string(), cut(reason));
        let (record, changed) = tokio::task::spawn_blocking(move || {
            let now = crate::time::now_micros();
            let mut changed = false;
            let mut update = |r: &mut ApprovalRecord| -> Result<(), Refusal> {
                if r.state == ApprovalState::Pending {
                    r.state = state;
                    r.reason = Some(reason.clone());
                    r.decided_at = Some(now);
                    this.audit
                        .append_durable(vec![resolved_event(r)])
                        .map_err(|e| Refusal::AuditUnavailable(e.to_string()))?;
                    changed = true;
                }
                Ok(())
            };
            let record = this.store.update_approval(&id, &mut update).map_err(update_error)?;
            Ok::<_, Error>((record, changed))
        })
        .await
        .map_err(|e| Error::internal(format!("the close task failed: {e}")))??;
        if changed {
            self.changed.notify_waiters();
        }
        Ok(record)
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
            if *owner == self.owner || process_alive(owner) {
                continue;
            }
            let reason = format!(
                "the instance waiting on this {} request ended before a decision (its process {} is gone)",
                r.kind,
                owner.split(':').next().unwrap_or("?")
            );
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

fn update_error(e: UpdateError) -> Error {
    match e {
        UpdateError::NotFound(id) => Error::Usage(format!("no approval request {id}; see `airlock approvals list`")),
        UpdateError::Refused(Refusal::AuditUnavailable(m)) => Error::AuditUnavailable(format!(
            "the decision could not be recorded in the audit log ({m}); nothing was decided"
        )),
        UpdateError::Refused(r) => Error::Refused(r.to_string()),
        UpdateError::Store(e) => e.into(),
    }
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
