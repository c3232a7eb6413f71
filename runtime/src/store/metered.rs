//! A [`Store`] that times every operation of the backend it wraps, into
//! `airlock_store_operation_seconds{operation}` (see [`crate::metrics`]).
//! [`super::open`] wraps every backend in it, so the logic above sees one
//! store whatever the backend, and the times are the backend's own.

use super::*;
use crate::identity::IdentityKind;
use crate::metrics::store_operation;
use std::time::Instant;

/// The wrapped backend.
pub struct Metered(pub Arc<dyn Store>);

/// Run `$call`, observing its time as `$op`.
macro_rules! timed {
    ($op:literal, $call:expr) => {{
        let started = Instant::now();
        let result = $call;
        store_operation($op, started.elapsed());
        result
    }};
}

impl Store for Metered {
    fn add_token(
        &self,
        identity: &str,
        kind: IdentityKind,
        token: &TokenRecord,
        hash: &[u8; 32],
    ) -> Result<(), StoreError> {
        timed!("add-token", self.0.add_token(identity, kind, token, hash))
    }

    fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        timed!("token", self.0.token_by_hash(hash))
    }

    fn token_by_hash_async<'a>(&'a self, hash: &'a [u8; 32]) -> StoreFuture<'a, Option<TokenRecord>> {
        Box::pin(async move { timed!("token", self.0.token_by_hash_async(hash).await) })
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        timed!("tokens", self.0.tokens())
    }

    fn revoke_token(&self, id: &str, at_micros: u64) -> Result<bool, StoreError> {
        timed!("revoke-token", self.0.revoke_token(id, at_micros))
    }

    fn insert_approval(&self, approval: &ApprovalRecord) -> Result<(), StoreError> {
        timed!("insert-approval", self.0.insert_approval(approval))
    }

    fn approval(&self, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        timed!("approval", self.0.approval(id))
    }

    fn approvals(&self, state: Option<ApprovalState>, limit: usize) -> Result<Vec<ApprovalRecord>, StoreError> {
        timed!("approvals", self.0.approvals(state, limit))
    }

    fn count_approvals(&self, state: ApprovalState) -> Result<u64, StoreError> {
        timed!("count-approvals", self.0.count_approvals(state))
    }

    fn update_approval(&self, id: &str, update: &mut ApprovalUpdate<'_>) -> Result<ApprovalRecord, UpdateError> {
        timed!("update-approval", self.0.update_approval(id, update))
    }

    fn insert_invocation(&self, invocation: &InvocationRecord) -> Result<(), StoreError> {
        timed!("insert-invocation", self.0.insert_invocation(invocation))
    }

    fn record_run(&self, invocation: &InvocationRecord) -> Result<(), StoreError> {
        timed!("record-run", self.0.record_run(invocation))
    }

    fn finish_run(&self, invocation: &InvocationRecord) -> Result<(), StoreError> {
        timed!("finish-run", self.0.finish_run(invocation))
    }

    fn finish_run_async<'a>(&'a self, invocation: &'a InvocationRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move { timed!("finish-run", self.0.finish_run_async(invocation).await) })
    }

    fn adopt_orphaned_runs(&self) -> Result<usize, StoreError> {
        timed!("adopt-orphaned-runs", self.0.adopt_orphaned_runs())
    }

    fn invocation(&self, id: &str) -> Result<Option<InvocationRecord>, StoreError> {
        timed!("invocation", self.0.invocation(id))
    }

    fn invocations(&self, state: Option<InvocationStatus>, limit: usize) -> Result<Vec<InvocationRecord>, StoreError> {
        timed!("invocations", self.0.invocations(state, limit))
    }

    fn invocation_page(&self, query: &InvocationQuery, limit: usize) -> Result<Vec<InvocationRecord>, StoreError> {
        timed!("invocation-page", self.0.invocation_page(query, limit))
    }

    fn transition_invocation(
        &self,
        id: &str,
        from: &[InvocationStatus],
        to: InvocationStatus,
        outcome: Option<&InvocationOutcome>,
    ) -> Result<bool, StoreError> {
        timed!(
            "transition-invocation",
            self.0.transition_invocation(id, from, to, outcome)
        )
    }

    fn claim_invocation(&self, id: &str, from: &[InvocationStatus], runner: &str) -> Result<bool, StoreError> {
        timed!("claim-invocation", self.0.claim_invocation(id, from, runner))
    }

    fn end_invocation(&self, ending: &InvocationEnding<'_>) -> Result<bool, StoreError> {
        timed!("end-invocation", self.0.end_invocation(ending))
    }

    fn drain_audit_outbox(
        &self,
        append: &mut dyn FnMut(Vec<String>) -> Result<(), Refusal>,
    ) -> Result<usize, UpdateError> {
        timed!("drain-audit-outbox", self.0.drain_audit_outbox(append))
    }

    fn shared(&self) -> bool {
        self.0.shared()
    }

    fn heartbeat(&self, node: &NodeRecord, processes: &[&str]) -> Result<(), StoreError> {
        timed!("heartbeat", self.0.heartbeat(node, processes))
    }

    fn leave(&self, processes: &[&str]) -> Result<(), StoreError> {
        timed!("leave", self.0.leave(processes))
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        timed!("nodes", self.0.nodes())
    }

    fn process(&self, id: &str) -> Result<Option<ProcessRecord>, StoreError> {
        timed!("process", self.0.process(id))
    }

    fn watch(&self, changed: std::sync::Weak<tokio::sync::Notify>) {
        self.0.watch(changed)
    }

    fn shared_vault(&self) -> Option<Arc<dyn crate::vault::shared::SharedVault>> {
        self.0.shared_vault()
    }

    fn create_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        timed!("create-session", self.0.create_session(session))
    }

    fn session(
        &self,
        id_hash: &[u8; 32],
        idle_since: u64,
        now: u64,
        touch_after: u64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        timed!("session", self.0.session(id_hash, idle_since, now, touch_after))
    }

    fn remove_session(&self, id_hash: &[u8; 32]) -> Result<(), StoreError> {
        timed!("remove-session", self.0.remove_session(id_hash))
    }

    fn prune_sessions(&self, idle_since: u64) -> Result<usize, StoreError> {
        timed!("prune-sessions", self.0.prune_sessions(idle_since))
    }

    fn charge(&self, charges: &[Charge]) -> Result<Result<(), Exceeded>, StoreError> {
        timed!("charge", self.0.charge(charges))
    }

    fn usage(&self, windows: &[(String, i64)]) -> Result<Vec<i64>, StoreError> {
        timed!("usage", self.0.usage(windows))
    }

    fn prune_usage(&self, before: i64) -> Result<usize, StoreError> {
        timed!("prune-usage", self.0.prune_usage(before))
    }
}
