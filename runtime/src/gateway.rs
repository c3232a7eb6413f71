//! The path of one request through airlock:
//! identity → policy → approval → instantiate → host calls → result → audit.
//!
//! - identity: the caller arrives authenticated ([`crate::identity`]);
//! - policy: [`Runtime::admit`] asks the action's Cedar policies
//!   ([`crate::policy::engine`]; the TOML `access` and `approval` keys are
//!   shorthand for some of them) and refuses what they deny, before
//!   anything is instantiated, recording the refusal and the policies that
//!   decided it;
//! - approval: an invocation the policies hold for approval does not start
//!   until a quorum of the group they name approves. The request and the invocation are stored, so they
//!   survive a restart; whichever process sees the approval first claims
//!   the invocation (a compare-and-set in the store) and runs it, exactly
//!   once. Before it runs, the binding is computed again from what is about
//!   to run and must equal the approved one. An invocation that ends
//!   without running (denied, expired, or refused after approval) is
//!   audited as it ends, in the same store transaction;
//! - instantiate, host calls, result, audit: [`PreparedAction::invoke_as`].

use crate::action::PreparedAction;
use crate::approval::Approvals;
use crate::error::Error;
use crate::identity::{Caller, IdentityKind};
use crate::invocation::{Admission, Intent, Report, new_invocation_id};
use crate::policy::engine::{Ask, Outcome, Requirement, Verdict as PolicyVerdict};
use crate::runtime::Runtime;
use crate::store::{
    ApprovalKind, ApprovalRecord, ApprovalState, InvocationOutcome, InvocationRecord, InvocationStatus, Verdict,
};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What became of a submitted request.
#[derive(Debug)]
// Returned once per request and moved, never stored in bulk: boxing the
// records would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Submitted {
    /// It ran in this process.
    Ran(Report),
    /// It ran in another process (after an approval); its stored outcome.
    Done(InvocationRecord),
    /// It waits for approval: nothing has run.
    Pending {
        invocation: String,
        approval: ApprovalRecord,
    },
}

/// A request the policies let through: at once, or once approved.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub prepared: Arc<PreparedAction>,
    pub verdict: Arc<PolicyVerdict>,
    /// The agent's stated reason and trace.
    pub intent: Intent,
    /// Stops the run if its caller gives up on it (MCP cancellation).
    pub cancel: Option<crate::invocation::Cancel>,
    /// Shown the run's log lines and denied calls as they happen (MCP).
    pub live: Option<crate::host_call::LiveSink>,
}

impl Admitted {
    fn admission(&self) -> Admission<'_> {
        Admission {
            approval: None,
            verdict: Some(&self.verdict),
            intent: Some(&self.intent),
            cancel: self.cancel.as_ref(),
            live: self.live.as_ref(),
        }
    }
}

impl Requirement {
    /// Make `request` ask this requirement's reviewers, quorum and time.
    fn apply(&self, request: &mut crate::approval::NewRequest, verdict: &PolicyVerdict) {
        request.quorum = self.quorum;
        request.ttl = self.ttl;
        request.approvers = self.approvers.approvers_text();
        request.rule = self.rule_text();
        request.group = Some(self.group.clone());
        request.rules = Some(crate::store::ApproverRules::of(&self.approvers));
        request.more_groups = crate::approval::more_groups(&self.groups, &self.group);
        request.escalation = self.escalation.as_ref().map(|(after, g)| {
            (
                *after,
                crate::store::GroupRules {
                    group: g.group.clone(),
                    rules: crate::store::ApproverRules::of(&g.approvers),
                    quorum: g.quorum,
                },
            )
        });
        if !request.more_groups.is_empty() {
            request.approvers = self
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
        request.policies = verdict.policy_ids();
        request.why = self.why.clone();
    }
}

/// A decision and what it set off.
#[derive(Debug)]
pub struct Decided {
    pub approval: ApprovalRecord,
    /// For an invocation-level request that this decision approved: the
    /// invocation, run here (or already claimed elsewhere).
    pub ran: Option<Submitted>,
}

fn describe(caller: &Caller) -> String {
    match (caller.is_local(), caller.kind) {
        (true, _) => format!("the local operator ({})", caller.name),
        (false, IdentityKind::Agent) => format!("agent `{}`", caller.name),
        (false, IdentityKind::Human) => format!("`{}`", caller.name),
    }
}

/// Why an approved request is expired when its invocation did not start in
/// time.
const NOT_STARTED: &str = "approved, but the invocation did not start before the request expired";

/// The stored form of a report's outcome.
pub fn outcome_of(report: &Report) -> InvocationOutcome {
    let (exit_code, result, error) = match &report.outcome {
        Ok(v) => (0, Some(v.clone()), None),
        Err(e) => (e.exit_code(), None, Some(e.to_string())),
    };
    InvocationOutcome {
        exit_code,
        result,
        error,
        finished_at: crate::time::now_micros(),
    }
}

impl Runtime {
    /// The loaded action `action`, for `caller`. An unknown name is answered
    /// with the actions this caller may invoke, never with every action
    /// configured: the names of others' actions are not the caller's to see.
    fn loaded(&self, action: &str, caller: &Caller) -> Result<Arc<PreparedAction>, Error> {
        self.action(action).cloned().ok_or_else(|| {
            let mine: Vec<String> = self
                .action_names()
                .into_iter()
                .filter(|name| self.action(name).is_some_and(|a| a.decisions.may_list(caller)))
                .collect();
            Error::UnknownAction {
                name: action.to_string(),
                available: if mine.is_empty() {
                    "none".into()
                } else {
                    mine.join(", ")
                },
            }
        })
    }

    fn approvals_for(&self, action: &str) -> Result<&Approvals, Error> {
        self.approvals_opened()
            .ok_or_else(|| Error::internal(format!("action `{action}` needs approvals, but they are not set up")))
    }

    /// Run `function` of `action` for `caller`: refused unless the policy
    /// lets the caller invoke it; held for approval when the action needs
    /// one (waiting up to `wait` for the decision, and running it here if
    /// it comes in time).
    pub async fn submit(
        &self,
        caller: &Caller,
        action: &str,
        function: &str,
        args: &Value,
        intent: &Intent,
        wait: Duration,
    ) -> Result<Submitted, Error> {
        let admitted = self.admit(caller, action, function, args, intent).await?;
        let invocation = new_invocation_id();
        let requirement = match &admitted.verdict.outcome {
            Outcome::Approve(requirement) => requirement,
            _ => {
                let admission = admitted.admission();
                return Ok(Submitted::Ran(
                    admitted
                        .prepared
                        .invoke_with_id(&invocation, caller, function, args, admission)
                        .await,
                ));
            }
        };
        self.hold_for_approval(&admitted, requirement, &invocation, caller, function, args)
            .await?;
        self.await_invocation(&invocation, Instant::now() + wait).await
    }

    /// The policy step: the action's policies decide whether `caller` may
    /// run `function` with `args`, may not (refused and recorded, naming
    /// the deciding policies), or must wait for approval. An unknown
    /// function or arguments that do not fit are refused here too, so
    /// reviewers are never asked about a request that could not run.
    pub async fn admit(
        &self,
        caller: &Caller,
        action: &str,
        function: &str,
        args: &Value,
        intent: &Intent,
    ) -> Result<Admitted, Error> {
        let prepared = self.loaded(action, caller)?;
        // A caller no policy could ever permit learns nothing about the
        // action's functions or arguments.
        if !prepared.decisions.may_list(caller) {
            let refused = format!("{} may not invoke action `{action}`", describe(caller));
            // The record names the TOML rule for the operator; the
            // caller is told only that nothing permits it (the rule lists
            // identities and roles that are not a remote caller's business).
            let allowed: Vec<String> = prepared.policy.access.invoke.iter().map(ToString::to_string).collect();
            let recorded = Error::Forbidden(format!(
                "{refused}: no policy permits it (access.invoke: {})",
                if allowed.is_empty() {
                    "nobody".into()
                } else {
                    allowed.join(", ")
                }
            ));
            return Err(
                match prepared
                    .refuse_by(
                        &new_invocation_id(),
                        caller,
                        function,
                        recorded,
                        Vec::new(),
                        Some(intent),
                    )
                    .await
                {
                    Error::Forbidden(_) if !caller.is_local() => Error::Forbidden(refused),
                    other => other,
                },
            );
        }
        if let Err(error) = prepared.check_request(function, args) {
            return Err(prepared
                .refuse_by(&new_invocation_id(), caller, function, error, Vec::new(), Some(intent))
                .await);
        }
        let now = crate::time::now_micros();
        let usage = self.window_usage(&prepared, caller, function, args, now, false).await?;
        let verdict = prepared.decisions.decide(&Ask {
            caller,
            function,
            args,
            intent: Some(intent),
            usage: usage.as_deref(),
            now,
        });
        if let Outcome::Deny { reason } = &verdict.outcome {
            let policies = verdict.policy_ids();
            let named = if policies.is_empty() {
                String::new()
            } else {
                format!(" (policies: {})", policies.join(", "))
            };
            let error = Error::Forbidden(format!(
                "{} may not invoke action `{action}`: {reason}{named}",
                describe(caller)
            ));
            return Err(prepared
                .refuse_by(&new_invocation_id(), caller, function, error, policies, Some(intent))
                .await);
        }
        if let Err(error) = self.charge_windows(&prepared, caller, function, args, now).await {
            return Err(prepared
                .refuse_by(
                    &new_invocation_id(),
                    caller,
                    function,
                    error,
                    verdict.policy_ids(),
                    Some(intent),
                )
                .await);
        }
        Ok(Admitted {
            prepared,
            verdict: Arc::new(verdict),
            intent: intent.clone(),
            cancel: None,
            live: None,
        })
    }

    /// What each of the action's windows has used, when the policies that
    /// decide `function` for `caller` read `context.usage` (else `None`: no
    /// store read). `exclude_own` leaves out this call's own charge (an
    /// approved invocation, charged when it was requested).
    pub(crate) async fn window_usage(
        &self,
        prepared: &PreparedAction,
        caller: &Caller,
        function: &str,
        args: &Value,
        now: u64,
        exclude_own: bool,
    ) -> Result<Option<Vec<(String, i64)>>, Error> {
        if !prepared.decisions.reads_usage(function, caller) {
            return Ok(None);
        }
        let action = prepared.policy.name.as_str();
        let windows: Vec<&crate::policy::windows::Window> =
            prepared.policy.windows.iter().filter(|w| w.applies(function)).collect();
        let slots: Vec<(String, i64)> = windows
            .iter()
            .map(|w| {
                let (key, start, _) = w.slot(action, caller, now);
                (key, start)
            })
            .collect();
        let store = self.store()?;
        let used = tokio::task::spawn_blocking(move || store.usage(&slots))
            .await
            .map_err(|e| Error::internal(format!("the window read failed: {e}")))??;
        Ok(Some(
            windows
                .iter()
                .zip(used)
                .map(|(w, used)| {
                    let own = if exclude_own {
                        w.charge(action, caller, args, now)
                            .ok()
                            .flatten()
                            .map_or(0, |c| c.amount)
                    } else {
                        0
                    };
                    (w.name.clone(), used.saturating_sub(own).max(0))
                })
                .collect(),
        ))
    }

    /// Charge the action's rate and budget windows for one invocation
    /// ([`crate::policy::windows`]): all of them, or none and the refusal
    /// naming the window that is used up and when it resets.
    async fn charge_windows(
        &self,
        prepared: &PreparedAction,
        caller: &Caller,
        function: &str,
        args: &Value,
        now: u64,
    ) -> Result<(), Error> {
        let action = prepared.policy.name.as_str();
        let mut charges = Vec::new();
        let mut windows = Vec::new();
        for w in prepared.policy.windows.iter().filter(|w| w.applies(function)) {
            let Some(charge) = w.charge(action, caller, args, now).map_err(Error::Refused)? else {
                continue;
            };
            if charge.amount > charge.max {
                return Err(Error::Refused(format!(
                    "refused: window `{}` of action {action} allows a total of {} per {}, and this call alone adds {}",
                    w.name,
                    w.max,
                    crate::policy::engine::duration_text(w.period),
                    charge.amount
                )));
            }
            charges.push(charge);
            windows.push(w);
        }
        if charges.is_empty() {
            return Ok(());
        }
        // A transaction that may wait for another process's lock (SQLite)
        // or for the database: off the async workers.
        let store = self.store()?;
        let to_charge = charges.clone();
        let charged = tokio::task::spawn_blocking(move || store.charge(&to_charge))
            .await
            .map_err(|e| Error::internal(format!("the window charge task failed: {e}")))??;
        match charged {
            Ok(()) => Ok(()),
            Err(exceeded) => {
                let (w, charge) = (windows[exceeded.index], &charges[exceeded.index]);
                let now = i64::try_from(now).unwrap_or(i64::MAX);
                let left = u64::try_from(charge.window_end.saturating_sub(now)).unwrap_or(0);
                Err(Error::LimitReached {
                    message: w.refusal(action, caller, charge, exceeded.used),
                    retry_after_secs: left.div_ceil(1_000_000).max(1),
                })
            }
        }
    }

    /// Run an admitted request under `invocation`, stored so its status can
    /// be fetched while and after it runs: at once, or (for actions that
    /// need approval) once approved.
    pub async fn run_stored(
        &self,
        invocation: &str,
        caller: &Caller,
        admitted: &Admitted,
        function: &str,
        args: &Value,
    ) -> Result<Submitted, Error> {
        let prepared = &admitted.prepared;
        let action = prepared.policy.name.as_str();
        if let Outcome::Approve(requirement) = &admitted.verdict.outcome {
            self.hold_for_approval(admitted, requirement, invocation, caller, function, args)
                .await?;
            return self.await_invocation(invocation, Instant::now()).await;
        }
        let store = self.store()?;
        // On a shared store, other nodes learn that this runner lives from
        // its heartbeats (held while the run is).
        let _heartbeat = crate::cluster::heartbeat_for(&store).inspect(|h| h.add(prepared.audit.runner()));
        let now = crate::time::now_micros();
        // Unsettled until its final row is stored: if this process dies
        // first, recovery ends the row the way the log ended the run.
        let tracked = prepared.audit.track();
        let mut record = InvocationRecord {
            id: invocation.to_string(),
            action: action.to_string(),
            function: function.to_string(),
            args: args.clone(),
            caller: caller.clone(),
            state: InvocationStatus::Running,
            approval: None,
            created_at: now,
            updated_at: now,
            outcome: None,
            runner: Some(prepared.audit.runner().to_string()),
            intent: Some(admitted.intent.clone()).filter(|i| !i.is_empty()),
        };
        // Status rows, not the record of what ran (that is the audit log's,
        // synced before the result returns): no disk sync of their own.
        store.record_run(&record)?;
        let admission = admitted.admission();
        let report = prepared
            .invoke_with_id(invocation, caller, function, args, admission)
            .await;
        record.state = if report.outcome.is_ok() {
            InvocationStatus::Succeeded
        } else {
            InvocationStatus::Failed
        };
        record.updated_at = crate::time::now_micros();
        record.outcome = Some(outcome_of(&report));
        record.runner = None;
        // Safe from a crash of the process before the result is handed
        // back: a row only queued here was lost with the process if it was
        // killed within the next few milliseconds, and an acknowledged
        // invocation read `running` forever.
        store.finish_run_async(&record).await?;
        tracked.settle();
        Ok(Submitted::Ran(report))
    }

    /// Open the invocation-level request and store the waiting invocation.
    async fn hold_for_approval(
        &self,
        admitted: &Admitted,
        requirement: &Requirement,
        invocation: &str,
        caller: &Caller,
        function: &str,
        args: &Value,
    ) -> Result<(), Error> {
        let prepared = &admitted.prepared;
        let action = prepared.policy.name.as_str();
        let invocation = invocation.to_string();
        let approvals = self.approvals_for(action)?;
        let mut request = prepared.request_template(&invocation, caller, function, args, Some(&admitted.intent));
        requirement.apply(&mut request, &admitted.verdict);
        let approval = approvals.open(request).await?;
        let now = crate::time::now_micros();
        let record = InvocationRecord {
            id: invocation.clone(),
            action: action.to_string(),
            function: function.to_string(),
            args: args.clone(),
            caller: caller.clone(),
            state: InvocationStatus::AwaitingApproval,
            approval: Some(approval.id.clone()),
            created_at: now,
            updated_at: now,
            outcome: None,
            runner: None,
            intent: Some(admitted.intent.clone()).filter(|i| !i.is_empty()),
        };
        if let Err(e) = approvals.store().insert_invocation(&record) {
            let _ = approvals
                .close(
                    &approval.id,
                    ApprovalState::Failed,
                    "the invocation could not be stored",
                )
                .await;
            return Err(e.into());
        }
        Ok(())
    }

    /// Follow an invocation that needed approval until it ran (here, or in
    /// the process that claimed it) or `deadline` passes.
    pub async fn await_invocation(&self, id: &str, deadline: Instant) -> Result<Submitted, Error> {
        loop {
            let record = self.invocation(id)?;
            if record.state.is_final() {
                return Ok(Submitted::Done(record));
            }
            let approvals = self.approvals_for(&record.action)?;
            let approval_id = record
                .approval
                .clone()
                .ok_or_else(|| Error::internal(format!("invocation {id} has no approval request")))?;
            let approval = approvals.get(&approval_id)?;
            match approval.state {
                ApprovalState::Pending if Instant::now() >= deadline => {
                    return Ok(Submitted::Pending {
                        invocation: id.to_string(),
                        approval,
                    });
                }
                ApprovalState::Pending => {
                    approvals.wait(&approval.id, deadline).await?;
                }
                ApprovalState::Approved => match self.run_approved(id).await? {
                    Some(report) => return Ok(Submitted::Ran(report)),
                    // Another process runs it: wait for its outcome.
                    None if Instant::now() >= deadline => {
                        return Ok(Submitted::Done(self.invocation(id)?));
                    }
                    None => tokio::time::sleep(crate::approval::POLL_INTERVAL).await,
                },
                ApprovalState::Denied | ApprovalState::Expired | ApprovalState::Failed => {
                    let record = self.settle(&approval).await?.unwrap_or(record);
                    return Ok(Submitted::Done(record));
                }
            }
        }
    }

    /// An invocation by id.
    pub fn invocation(&self, id: &str) -> Result<InvocationRecord, Error> {
        self.store()?.invocation(id)?.ok_or_else(|| {
            Error::Usage(format!(
                "no invocation {id}; see `{}`",
                crate::hint::command("invocations list")
            ))
        })
    }

    /// Record that an invocation-level request ended without approval: its
    /// invocation ends denied, expired or failed, and that is audited.
    async fn settle(&self, approval: &ApprovalRecord) -> Result<Option<InvocationRecord>, Error> {
        let to = match approval.state {
            ApprovalState::Denied => InvocationStatus::Denied,
            ApprovalState::Expired => InvocationStatus::Expired,
            ApprovalState::Failed => InvocationStatus::Failed,
            ApprovalState::Pending | ApprovalState::Approved => return Ok(None),
        };
        let approvals = self.approvals_for(&approval.action)?;
        let store = approvals.store().clone();
        let Some(record) = store.invocation(&approval.invocation)? else {
            return Ok(None);
        };
        let why = format!(
            "approval {} {}: {}; nothing ran",
            approval.id,
            approval.state,
            approval.reason.as_deref().unwrap_or("no reason given")
        );
        approvals.end_invocation(&record, approval, to, &why, None).await?;
        Ok(store.invocation(&approval.invocation)?)
    }

    /// End an approved invocation that did not start before its request
    /// expired: the invocation and the request both end expired, audited;
    /// returns the refusal to report. Nothing changes if someone claimed
    /// the invocation first.
    async fn expire_unstarted(
        &self,
        approvals: &Approvals,
        record: &InvocationRecord,
        approval: &ApprovalRecord,
    ) -> Result<Error, Error> {
        let why = format!(
            "approval {} was given, but the invocation did not start before the request expired; nothing ran",
            approval.id
        );
        let ended = approvals
            .end_invocation(record, approval, InvocationStatus::Expired, &why, Some(NOT_STARTED))
            .await?;
        Ok(Error::ApprovalRefused(if ended {
            why
        } else {
            format!(
                "approval {} has expired; invocation {} was claimed or ended before it could expire with it",
                approval.id, record.id
            )
        }))
    }

    /// End an approved invocation that may not run after all (its
    /// requester lost the right to), audited; returns the refusal to
    /// report (the audit failure instead, if the ending cannot be recorded).
    async fn refuse_approved(
        &self,
        approvals: &Approvals,
        record: &InvocationRecord,
        approval: &ApprovalRecord,
        why: String,
    ) -> Error {
        match approvals
            .end_invocation(record, approval, InvocationStatus::Failed, &why, None)
            .await
        {
            Ok(_) => Error::ApprovalRefused(why),
            Err(e) => e,
        }
    }

    /// Run an approved invocation here, unless another process already
    /// claimed it (`None`). Refused if what would run now no longer matches
    /// the approved binding.
    pub async fn run_approved(&self, id: &str) -> Result<Option<Report>, Error> {
        let record = self.invocation(id)?;
        let approvals = self.approvals_for(&record.action)?;
        let approval_id = record
            .approval
            .clone()
            .ok_or_else(|| Error::internal(format!("invocation {id} has no approval request")))?;
        let approval = approvals.get(&approval_id)?;
        if approval.state != ApprovalState::Approved {
            return Err(Error::ApprovalRefused(format!(
                "approval {} is {}, not approved",
                approval.id, approval.state
            )));
        }
        let store = approvals.store().clone();
        let prepared = match self.loaded(&record.action, &record.caller) {
            Ok(p) => p,
            Err(e) => return Err(Error::ApprovalRefused(format!("approved, but not runnable here: {e}"))),
        };
        let binding = prepared
            .request_template(
                id,
                &record.caller,
                &record.function,
                &record.args,
                record.intent.as_ref(),
            )
            .binding();
        if binding != approval.binding {
            // Another config or component is loaded here; a process with
            // the approved one may still run it, until the request expires.
            return Err(Error::ApprovalRefused(format!(
                "approval {} is bound to {}, but what would run here is {binding}: the config, the component or the request differs; nothing ran",
                approval.id, approval.binding
            )));
        }
        if crate::time::now_micros() >= approval.expires_at {
            return Err(self.expire_unstarted(approvals, &record, &approval).await?);
        }
        // The requester must still be who it was, and still allowed.
        if let Some(token) = &record.caller.token_id {
            let live = store.tokens()?.iter().any(|t| t.id == *token && t.revoked_at.is_none());
            if !live {
                let why = format!("the requester's token {token} was revoked after the request; nothing ran");
                return Err(self.refuse_approved(approvals, &record, &approval, why).await);
            }
        }
        // The policies decide again (roles, time and policies may have
        // moved since the request); an approval covers a hold, never a
        // denial.
        let now = crate::time::now_micros();
        // Its own charge (made when it was requested) is not counted
        // against it: policies see the use before this call.
        let usage = self
            .window_usage(&prepared, &record.caller, &record.function, &record.args, now, true)
            .await?;
        let verdict = prepared.decisions.decide(&Ask {
            caller: &record.caller,
            function: &record.function,
            args: &record.args,
            intent: record.intent.as_ref(),
            usage: usage.as_deref(),
            now,
        });
        if let Outcome::Deny { reason } = &verdict.outcome {
            let why = format!(
                "{} may no longer invoke action `{}`: {reason}; nothing ran",
                describe(&record.caller),
                record.action
            );
            return Err(self.refuse_approved(approvals, &record, &approval, why).await);
        }
        // The approval covers what the policies ask now only if it came
        // from every group they name, each to its quorum (a gate that
        // applies since, say outside office hours, is not covered).
        if let Outcome::Approve(now_needs) = &verdict.outcome {
            let given = approval.group_quorums();
            let missing: Vec<String> = now_needs
                .groups
                .iter()
                .filter(|need| !given.iter().any(|(g, q)| *g == need.group && *q >= need.quorum))
                .map(|need| format!("{} (quorum {})", need.group, need.quorum))
                .collect();
            if !missing.is_empty() {
                let why = format!(
                    "the policies now ask approval from {} for this invocation, which approval {} did not come from; nothing ran",
                    missing.join(", "),
                    approval.id
                );
                return Err(self.refuse_approved(approvals, &record, &approval, why).await);
            }
        }
        if !approvals.heartbeat_healthy() {
            // Other nodes may be about to take this one for dead: leave the
            // run to them.
            return Ok(None);
        }
        // The decisions that released it are in the log before it starts.
        approvals.flush_audit().await?;
        // Unsettled from the claim until its final row is stored (see
        // `run_stored`).
        let tracked = prepared.audit.track();
        let claimed = store.claim_invocation(
            id,
            &[InvocationStatus::AwaitingApproval, InvocationStatus::Approved],
            prepared.audit.runner(),
        )?;
        if !claimed {
            tracked.settle();
            return Ok(None);
        }
        let admission = Admission {
            approval: Some(&approval.id),
            verdict: Some(&verdict),
            intent: record.intent.as_ref(),
            cancel: None,
            live: None,
        };
        let report = prepared
            .invoke_with_id(id, &record.caller, &record.function, &record.args, admission)
            .await;
        let outcome = outcome_of(&report);
        let to = if report.outcome.is_ok() {
            InvocationStatus::Succeeded
        } else {
            InvocationStatus::Failed
        };
        store.transition_invocation(id, &[InvocationStatus::Running], to, Some(&outcome))?;
        tracked.settle();
        Ok(Some(report))
    }

    /// Run an invocation-level approval's invocation for its requester,
    /// given the request again: it must bind to exactly what was approved
    /// (same action, function, arguments, caller, component, config).
    #[allow(clippy::too_many_arguments)]
    pub async fn invoke_approved(
        &self,
        caller: &Caller,
        action: &str,
        function: &str,
        args: &Value,
        intent: &Intent,
        approval_id: &str,
        wait: Duration,
    ) -> Result<Submitted, Error> {
        let prepared = self.loaded(action, caller)?;
        let approvals = self.approvals_for(action)?;
        let approval = approvals.get(approval_id)?;
        if approval.kind != ApprovalKind::Invocation {
            return Err(Error::Usage(format!(
                "approval {approval_id} is a {} request; only invocation requests can be redeemed",
                approval.kind
            )));
        }
        let binding = prepared
            .request_template(&approval.invocation, caller, function, args, Some(intent))
            .binding();
        if binding != approval.binding {
            return Err(Error::ApprovalRefused(format!(
                "approval {approval_id} does not cover this request: it is bound to {}, this request is {binding} (a decision applies to exactly what was approved: caller, action, function, arguments, component and config)",
                approval.binding
            )));
        }
        self.await_invocation(&approval.invocation, Instant::now() + wait).await
    }

    /// Record `who`'s decision on approval `id`, under the access policy
    /// of its action as configured now. An invocation-level request that
    /// this decision approves runs here at once (unless another process
    /// claims it first); one it denies is settled.
    pub async fn decide(
        &self,
        id: &str,
        who: &Caller,
        verdict: Verdict,
        reason: Option<&str>,
        expect_binding: Option<&str>,
    ) -> Result<Decided, Error> {
        let approval = self.record_decision(id, who, verdict, reason, expect_binding).await?;
        let ran = match (approval.kind, approval.state) {
            (ApprovalKind::Invocation, ApprovalState::Approved) => {
                Some(self.await_invocation(&approval.invocation, Instant::now()).await?)
            }
            (ApprovalKind::Invocation, ApprovalState::Denied) => self.settle(&approval).await?.map(Submitted::Done),
            _ => None,
        };
        Ok(Decided { approval, ran })
    }

    /// Record `who`'s decision on approval `id` under the access policy of
    /// its action as configured now, without running anything.
    pub async fn record_decision(
        &self,
        id: &str,
        who: &Caller,
        verdict: Verdict,
        reason: Option<&str>,
        expect_binding: Option<&str>,
    ) -> Result<ApprovalRecord, Error> {
        let approvals = self
            .approvals_opened()
            .ok_or_else(|| Error::Usage("no action in this config needs approvals".into()))?;
        let current = approvals.get(id)?;
        let prepared = self.action(&current.action).cloned().ok_or_else(|| {
            Error::Usage(format!(
                "request {id} is for action `{}`, which this config does not define; decide it with the config that does",
                current.action
            ))
        })?;
        // An approval this process could not apply must not be recorded:
        // the request would stay approved while its invocation could never
        // run here. A deny always applies. (Under another config the store
        // refuses the decision with that reason.)
        if verdict == Verdict::Approve
            && current.kind == ApprovalKind::Invocation
            && prepared.policy.config_version == current.config_version
        {
            // The request is stored a moment before its invocation: an
            // approval in between has nothing to apply to yet.
            let record = approvals.store().invocation(&current.invocation)?.ok_or_else(|| {
                Error::ApprovalRefused(format!(
                    "request {id} is for invocation {}, which is not stored (yet): nothing was decided; try again in a moment",
                    current.invocation
                ))
            })?;
            let binding = prepared
                .request_template(
                    &record.id,
                    &record.caller,
                    &record.function,
                    &record.args,
                    record.intent.as_ref(),
                )
                .binding();
            if binding != current.binding {
                return Err(Error::ApprovalRefused(format!(
                    "request {id} is bound to {}, but what would run here is {binding}: the config, the component or the request differs; nothing was decided (approve it where the approved component and config are loaded)",
                    current.binding
                )));
            }
        }
        let groups = current.review_groups(&prepared.policy.access);
        approvals
            .decide(
                id,
                who,
                verdict,
                reason,
                &groups,
                &prepared.policy.config_version,
                expect_binding,
            )
            .await
    }

    /// Housekeeping before listing: expire overdue requests, fail those
    /// whose waiting instance died with its process, and settle the
    /// invocations of requests that ended without approval (or were
    /// approved but not started before they expired). Runs nothing.
    pub async fn sweep_approvals(&self) -> Result<(), Error> {
        let Some(approvals) = self.approvals_opened() else {
            return Ok(());
        };
        approvals.expire_due().await?;
        approvals.escalate_due().await?;
        approvals.fail_orphans().await?;
        let store = approvals.store().clone();
        let now = crate::time::now_micros();
        for state in [InvocationStatus::AwaitingApproval, InvocationStatus::Approved] {
            for record in store.invocations(Some(state), usize::MAX)? {
                let Some(approval_id) = &record.approval else { continue };
                let Some(approval) = store.approval(approval_id)? else {
                    continue;
                };
                match approval.state {
                    ApprovalState::Pending => {}
                    ApprovalState::Approved if now < approval.expires_at => {}
                    ApprovalState::Approved => {
                        self.expire_unstarted(approvals, &record, &approval).await?;
                    }
                    _ => {
                        self.settle(&approval).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `caller` may see request `approval`: its requester, and
    /// whoever the access policy of its action (as configured now) lets
    /// approve it. `airlock approvals list | show` and the HTTP API show
    /// requests by this rule.
    pub fn may_see_approval(&self, caller: &Caller, approval: &ApprovalRecord) -> bool {
        approval.caller == caller.name || self.may_review(caller, approval)
    }

    /// Whether `caller` is one of the reviewers request `approval` asks
    /// (before self-approval is considered): the rules it was made with,
    /// or for an older request its action's `access` as configured now.
    pub fn may_review(&self, caller: &Caller, approval: &ApprovalRecord) -> bool {
        self.action(&approval.action).is_some_and(|a| {
            approval
                .review_groups(&a.policy.access)
                .iter()
                .any(|(access, _)| access.may_approve(caller))
        })
    }

    /// Whether `caller` may see invocation `record`: its requester, the
    /// action's own approvers, and the reviewers of the request it waited
    /// on (not every group some policy of the action can ask).
    pub fn may_see_invocation(&self, caller: &Caller, record: &InvocationRecord) -> bool {
        record.caller.name == caller.name
            || self
                .action(&record.action)
                .is_some_and(|a| a.policy.access.may_approve(caller))
            || record.approval.as_deref().is_some_and(|id| {
                self.store()
                    .ok()
                    .and_then(|s| s.approval(id).ok().flatten())
                    .is_some_and(|a| self.may_review(caller, &a))
            })
    }

    /// Whether `caller` reviews anything of action `action`: its own
    /// approvers, or a group one of its policies can ask.
    pub fn may_review_action(&self, caller: &Caller, action: &str) -> bool {
        self.action(action)
            .is_some_and(|a| a.policy.access.may_approve(caller) || a.decisions.may_review(caller))
    }

    /// Run approved invocations nobody has started (their approver's
    /// process may have died, or the approval came from another process):
    /// those this runtime can run exactly as approved.
    pub async fn run_released(&self) -> Result<Vec<Submitted>, Error> {
        let Some(approvals) = self.approvals_opened() else {
            return Ok(Vec::new());
        };
        let store = approvals.store().clone();
        let mut ran = Vec::new();
        for state in [InvocationStatus::AwaitingApproval, InvocationStatus::Approved] {
            for record in store.invocations(Some(state), usize::MAX)? {
                let Some(approval_id) = &record.approval else { continue };
                let Some(approval) = store.approval(approval_id)? else {
                    continue;
                };
                let runnable = approval.state == ApprovalState::Approved
                    && self
                        .action(&record.action)
                        .is_some_and(|a| a.policy.config_version == approval.config_version);
                if !runnable {
                    continue;
                }
                match self.run_approved(&record.id).await {
                    Ok(Some(report)) => ran.push(Submitted::Ran(report)),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(invocation = %record.id, "approved invocation not run: {e}"),
                }
            }
        }
        Ok(ran)
    }
}
