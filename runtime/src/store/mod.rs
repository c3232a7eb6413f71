//! Durable state: identities, tokens, approvals and invocations.
//!
//! [`Store`] is the whole contract between the logic (who may do what,
//! quorum, expiry: [`crate::approval`], [`crate::identity`]) and the
//! database. It is a handful of plain reads and writes plus one atomic
//! read-modify-write ([`Store::update_approval`]), compare-and-sets
//! ([`Store::transition_invocation`], [`Store::end_invocation`]) and an
//! audit outbox ([`Store::drain_audit_outbox`]), so a PostgreSQL backend is
//! a second implementation of this trait, not a rewrite of the rules. The
//! embedded default is SQLite in the data directory ([`sqlite::SqliteStore`]);
//! several nodes share PostgreSQL ([`postgres::PgStore`]), chosen by
//! `[store]` ([`settings`]).
//!
//! The outbox is how a change and its audit record stay together: a change
//! that owes the log a record (a decision, a resolution, an invocation that
//! ended without running) stores that record in the same transaction, and
//! the record is appended to the audit log only after the commit. So the log
//! never shows a change that did not commit, and a committed change whose
//! record is not yet appended (the log was unwritable, or the process died
//! in between) is appended by the next drain, from any process.

pub mod journal;
pub mod metered;
pub mod migrations;
pub(crate) mod pg_connect;
pub mod postgres;
pub mod records;
pub mod settings;
pub mod sqlite;
mod token_cache;

pub use records::*;

use std::path::Path;
use std::sync::Arc;

/// Open the store `settings` name: PostgreSQL (missing migrations
/// applied), or SQLite in `data_dir`; each operation timed
/// ([`metered`]).
pub fn open(settings: &settings::StoreSettings, data_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    let backend: Arc<dyn Store> = match &settings.postgres {
        Some(pg) => Arc::new(postgres::PgStore::open(pg, postgres::Migrate::Apply)?),
        None => Arc::new(sqlite::SqliteStore::open(data_dir)?),
    };
    Ok(Arc::new(metered::Metered(backend)))
}

/// The answer of a store call awaited on an async worker (see
/// [`Store::token_by_hash_async`]).
pub type StoreFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What [`Store::invocation_page`] selects.
#[derive(Debug, Clone, Default)]
pub struct InvocationQuery {
    pub state: Option<InvocationStatus>,
    pub action: Option<String>,
    /// The identity that made them.
    pub caller: Option<String>,
    /// Created at or after (Unix microseconds).
    pub since: Option<u64>,
    /// Created before.
    pub until: Option<u64>,
    /// Only those after this one (its `created_at` and id) in the order.
    pub after: Option<(u64, String)>,
}

/// A database failure (not a policy refusal).
#[derive(Debug, thiserror::Error)]
#[error("database error: {0}")]
pub struct StoreError(pub String);

/// What an unreachable database's errors start with (see
/// [`StoreError::unreachable`]).
const UNREACHABLE: &str = "the database cannot be reached: ";

impl StoreError {
    /// The database could not be reached (down, the network cut, too many
    /// connections): a refusal to retry later, not a fault of airlock's.
    pub fn unreachable(detail: impl std::fmt::Display) -> StoreError {
        StoreError(format!("{UNREACHABLE}{detail}"))
    }

    pub fn is_unreachable(&self) -> bool {
        self.0.starts_with(UNREACHABLE)
    }
}

impl From<StoreError> for crate::error::Error {
    fn from(e: StoreError) -> Self {
        if e.is_unreachable() {
            crate::error::Error::StoreUnavailable(format!("{e}; nothing that needs it runs until it is back"))
        } else {
            crate::error::Error::Internal(e.to_string())
        }
    }
}

/// Why an atomic approval update did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("no approval request {0}")]
    NotFound(String),
    /// The update function refused: a policy reason, for the user.
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The storage backend.
/// A change to one approval request, given the live tokens as of the same
/// transaction (see [`Store::update_approval`]). It must be pure: it runs
/// inside the store's transaction (on PostgreSQL, inside the future that
/// drives it), so it must not call the store or the audit log.
pub type ApprovalUpdate<'a> = dyn FnMut(&mut ApprovalRecord, &[TokenRecord]) -> Result<Option<String>, Refusal> + 'a;

/// Tokens, as identity sees the store.
impl<S: Store + ?Sized> crate::identity::TokenStore for S {
    fn add_token(
        &self,
        identity: &str,
        kind: IdentityKind,
        token: &TokenRecord,
        hash: &[u8; 32],
    ) -> Result<(), String> {
        Store::add_token(self, identity, kind, token, hash).map_err(|e| e.0)
    }

    fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, crate::error::Error> {
        Ok(Store::token_by_hash(self, hash)?)
    }

    async fn token_by_hash_async(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, crate::error::Error> {
        Ok(Store::token_by_hash_async(self, hash).await?)
    }
}

pub trait Store: Send + Sync {
    /// Create `identity` if it is new (an existing one must have the same
    /// kind) and store a token for it: its id, roles and hash.
    fn add_token(
        &self,
        identity: &str,
        kind: IdentityKind,
        token: &TokenRecord,
        hash: &[u8; 32],
    ) -> Result<(), StoreError>;
    /// The live or revoked token with this hash.
    fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError>;
    /// [`Store::token_by_hash`] for a caller on an async worker (every
    /// authenticated request): a backend that waits for a server answers
    /// without blocking the worker meanwhile. The default asks the
    /// synchronous method, for backends that answer at once.
    fn token_by_hash_async<'a>(&'a self, hash: &'a [u8; 32]) -> StoreFuture<'a, Option<TokenRecord>> {
        Box::pin(std::future::ready(self.token_by_hash(hash)))
    }
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Mark a token revoked; `false` when there is no such token.
    fn revoke_token(&self, id: &str, at_micros: u64) -> Result<bool, StoreError>;

    fn insert_approval(&self, approval: &ApprovalRecord) -> Result<(), StoreError>;
    fn approval(&self, id: &str) -> Result<Option<ApprovalRecord>, StoreError>;
    /// Approval requests, newest first, optionally only those in `state`.
    fn approvals(&self, state: Option<ApprovalState>, limit: usize) -> Result<Vec<ApprovalRecord>, StoreError>;
    /// How many approval requests are in `state` (one count query).
    fn count_approvals(&self, state: ApprovalState) -> Result<u64, StoreError>;
    /// Atomically load approval `id`, let `update` change it (add a
    /// decision, move its state), and write the change back. Concurrent
    /// updates of one request are serialized, so each decision is counted
    /// exactly once. `update` also gets every live (unrevoked) token as of
    /// the same transaction, so whether a vote's identity still holds an
    /// approving token is decided atomically with the vote: a revocation
    /// commits either before the update (and is seen) or after it. `update`
    /// returns the audit record the change owes the log, if any, which is
    /// put in the outbox in the same transaction.
    fn update_approval(&self, id: &str, update: &mut ApprovalUpdate<'_>) -> Result<ApprovalRecord, UpdateError>;

    fn insert_invocation(&self, invocation: &InvocationRecord) -> Result<(), StoreError>;
    /// Store (or replace) the status row of an invocation that runs at
    /// once, without waiting for the disk: the audit log, synced before the
    /// result is returned, is the durable record of what ran, and this row
    /// is its status for the API. Queued and written in a batch within
    /// tens of milliseconds, unless the run's final row replaces it first
    /// (readers in this process see it at once): a crash of
    /// the process before then loses it, which for a `running` row is
    /// harmless (recovery ends it the way the log did). Final rows go
    /// through [`Store::finish_run`]. Never for invocations waiting on an
    /// approval, whose rows must survive anything.
    fn record_run(&self, invocation: &InvocationRecord) -> Result<(), StoreError>;
    /// [`Store::record_run`] for a run's final row, stored before its
    /// result is acknowledged: when this returns, a crash of the process
    /// can no longer lose the row (the SQLite store appends it to its
    /// journal, [`journal`], and commits it in a batch later). A row only
    /// queued in memory was lost by a SIGKILL within milliseconds of the
    /// answer, and the acknowledged invocation read `running` forever.
    fn finish_run(&self, invocation: &InvocationRecord) -> Result<(), StoreError>;
    /// [`Store::finish_run`] for a caller on an async worker, with the same
    /// guarantee when it resolves. On PostgreSQL the rows of concurrent
    /// runs share one statement and one commit; a future dropped before
    /// it resolves leaves its row queued for the next write. Poll it on a
    /// Tokio runtime (the pool's timers are the polling runtime's), and do
    /// not call the store's blocking methods from a task that holds it
    /// half-polled, or from another task of a single-threaded runtime
    /// meanwhile: it may hold the writer they wait for.
    fn finish_run_async<'a>(&'a self, invocation: &'a InvocationRecord) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(self.finish_run(invocation)))
    }
    /// Bring in the final rows of stores that ended before committing them
    /// (see [`Store::finish_run`]); returns how many there were. Opening a
    /// store does this too; recovery does it before it reads `running`
    /// rows.
    fn adopt_orphaned_runs(&self) -> Result<usize, StoreError>;
    fn invocation(&self, id: &str) -> Result<Option<InvocationRecord>, StoreError>;
    /// Invocations, newest first, optionally only those in `state`.
    fn invocations(&self, state: Option<InvocationStatus>, limit: usize) -> Result<Vec<InvocationRecord>, StoreError>;
    /// Up to `limit` invocations matching `query`, in the store's order
    /// (newest first, then by id), after `query.after`: a page read by
    /// the indexes, whatever the table's size.
    fn invocation_page(&self, query: &InvocationQuery, limit: usize) -> Result<Vec<InvocationRecord>, StoreError>;
    /// Move invocation `id` to `to` if it is in one of `from`, recording
    /// `outcome` when given; `false` when it was not in `from` (someone
    /// else claimed it first).
    fn transition_invocation(
        &self,
        id: &str,
        from: &[InvocationStatus],
        to: InvocationStatus,
        outcome: Option<&InvocationOutcome>,
    ) -> Result<bool, StoreError>;
    /// Claim invocation `id` for this process: move it from one of `from`
    /// to `running`, naming `runner` (the process's lease, see
    /// [`crate::audit::lease`]) in the row; `false` when it was not in
    /// `from` (someone else claimed it first).
    fn claim_invocation(&self, id: &str, from: &[InvocationStatus], runner: &str) -> Result<bool, StoreError>;
    /// End an invocation that waited for approval without running it (see
    /// [`InvocationEnding`]), its audit record put in the outbox in the same
    /// transaction; `false` when nothing changed (it was claimed or ended
    /// first, or the request it would expire is no longer approved).
    fn end_invocation(&self, ending: &InvocationEnding<'_>) -> Result<bool, StoreError>;

    /// Hand every audit record in the outbox, oldest first, to `append`, and
    /// remove them once it succeeded; returns how many there were. Runs
    /// under the database's write lock, so two processes never append the
    /// same records. If the removal does not commit after a successful
    /// append (a crash in between), the next drain appends them again: a
    /// record may repeat, but none is lost.
    fn drain_audit_outbox(
        &self,
        append: &mut dyn FnMut(Vec<String>) -> Result<(), Refusal>,
    ) -> Result<usize, UpdateError>;

    /// Whether processes on other machines share this store (PostgreSQL):
    /// then whether another process lives is read from its heartbeats
    /// ([`Store::process`]), since its pid and lease files are elsewhere.
    fn shared(&self) -> bool;
    /// Say that `node` and its `processes` live now (creates or refreshes
    /// their rows).
    fn heartbeat(&self, node: &NodeRecord, processes: &[&str]) -> Result<(), StoreError>;
    /// Mark `processes` ended (they are stopping and hold nothing more):
    /// others take them for dead at once.
    fn leave(&self, processes: &[&str]) -> Result<(), StoreError>;
    /// Every node that ever sent a heartbeat, by id.
    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// The last heartbeat of process `id`, if it ever sent one.
    fn process(&self, id: &str) -> Result<Option<ProcessRecord>, StoreError>;

    /// Wake `changed` whenever any process, on any node, changes an
    /// approval request or an invocation's state (PostgreSQL's
    /// `LISTEN/NOTIFY`), and after a lost notification channel is back.
    /// Waiters still poll: this only makes them quick. A no-op where no
    /// other machine writes.
    fn watch(&self, changed: std::sync::Weak<tokio::sync::Notify>);

    /// Where the vault document lives when other machines share this
    /// store (see [`crate::vault::shared`]); `None`: the vault is a file in
    /// each data directory.
    fn shared_vault(&self) -> Option<Arc<dyn crate::vault::shared::SharedVault>>;

    /// Store a new console session.
    fn create_session(&self, session: &SessionRecord) -> Result<(), StoreError>;
    /// The session with this id hash, if it was not idle since
    /// `idle_since` (Unix microseconds; an idle one is removed); its
    /// `last_seen` moves to `now` when older than `touch_after`
    /// microseconds.
    fn session(
        &self,
        id_hash: &[u8; 32],
        idle_since: u64,
        now: u64,
        touch_after: u64,
    ) -> Result<Option<SessionRecord>, StoreError>;
    fn remove_session(&self, id_hash: &[u8; 32]) -> Result<(), StoreError>;
    /// Remove sessions idle since `idle_since`; returns how many live on.
    fn prune_sessions(&self, idle_since: u64) -> Result<usize, StoreError>;

    /// Charge every one of `charges` (at most one per window), atomically:
    /// all of them, or (the first one that would take its window past its
    /// `max`) none. Exact under any number of concurrent callers, on any
    /// number of nodes: no window ever goes past its `max`.
    fn charge(&self, charges: &[Charge]) -> Result<Result<(), Exceeded>, StoreError>;

    /// What each window (`key`, `window_start`) has used so far (0 for one
    /// not charged yet). A plain read: what policies see in
    /// `context.usage`, which may be a charge or two behind under
    /// concurrency (the `max` of a window is exact regardless).
    fn usage(&self, windows: &[(String, i64)]) -> Result<Vec<i64>, StoreError>;

    /// Forget windows that ended before `before` (Unix microseconds).
    fn prune_usage(&self, before: i64) -> Result<usize, StoreError>;
}

/// How long a process may be silent before other nodes take it for dead.
/// Heartbeats come every [`HEARTBEAT_EVERY`].
pub const PROCESS_STALE: std::time::Duration = std::time::Duration::from_secs(10);
/// How often a live process sends its heartbeat.
pub const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether process `id` may still live, by its heartbeats: it sent one
/// within [`PROCESS_STALE`], or it never sent one and `born` (when the
/// work naming it was made, Unix microseconds) is that recent.
pub fn process_alive(store: &dyn Store, id: &str, born: u64) -> Result<bool, StoreError> {
    let stale = u64::try_from(PROCESS_STALE.as_micros()).unwrap_or(u64::MAX);
    let now = crate::time::now_micros();
    Ok(match store.process(id)? {
        Some(p) => p.silent_for_micros < stale,
        None => now.saturating_sub(born) < stale,
    })
}

/// An invocation that waited for approval ending without running, and the
/// audit record that ending owes the log.
#[derive(Debug, Clone, Copy)]
pub struct InvocationEnding<'a> {
    pub invocation: &'a str,
    /// It ends only from one of these states; from any other (someone
    /// claimed or ended it first) nothing changes.
    pub from: &'a [InvocationStatus],
    pub to: InvocationStatus,
    pub outcome: &'a InvocationOutcome,
    /// `(request id, reason)`: an approved request that expires with the
    /// invocation, because it was not started in time. It moves from
    /// `approved` to `expired` in the same transaction; if it is no longer
    /// `approved`, nothing changes.
    pub expire_approval: Option<(&'a str, &'a str)>,
    /// The audit record owed, opaque to the store.
    pub audit: &'a str,
}

use crate::identity::IdentityKind;

/// A parameter of [`page_sql`]'s statement.
#[derive(Debug)]
pub(crate) enum PageValue {
    Text(String),
    Int(i64),
}

/// The statement of [`Store::invocation_page`], with its parameters, for
/// a backend whose placeholders `placeholder(n)` writes (`?1`, `$1`). Ids
/// compare bytewise on both backends (`COLLATE "C"` on PostgreSQL is the
/// order SQLite's BINARY already is).
pub(crate) fn page_sql(
    query: &InvocationQuery,
    limit: usize,
    placeholder: impl Fn(usize) -> String,
) -> (String, Vec<PageValue>) {
    let micros = |t: u64| i64::try_from(t).unwrap_or(i64::MAX);
    let mut values = Vec::new();
    let next = |v: PageValue, values: &mut Vec<PageValue>| {
        values.push(v);
        placeholder(values.len())
    };
    let mut wheres = Vec::new();
    if let Some(state) = query.state {
        wheres.push(format!(
            "state = {}",
            next(PageValue::Text(state.as_str().into()), &mut values)
        ));
    }
    if let Some(action) = &query.action {
        wheres.push(format!(
            "action = {}",
            next(PageValue::Text(action.clone()), &mut values)
        ));
    }
    if let Some(caller) = &query.caller {
        wheres.push(format!(
            "caller = {}",
            next(PageValue::Text(caller.clone()), &mut values)
        ));
    }
    if let Some(since) = query.since {
        wheres.push(format!(
            "created_at >= {}",
            next(PageValue::Int(micros(since)), &mut values)
        ));
    }
    if let Some(until) = query.until {
        wheres.push(format!(
            "created_at < {}",
            next(PageValue::Int(micros(until)), &mut values)
        ));
    }
    let collate = if placeholder(1).starts_with('$') {
        " COLLATE \"C\""
    } else {
        ""
    };
    if let Some((at, id)) = &query.after {
        // The plain bound first, so the index on created_at starts at the
        // cursor instead of the newest row.
        let at0 = next(PageValue::Int(micros(*at)), &mut values);
        let at1 = next(PageValue::Int(micros(*at)), &mut values);
        let at2 = next(PageValue::Int(micros(*at)), &mut values);
        let id = next(PageValue::Text(id.clone()), &mut values);
        wheres.push(format!(
            "created_at <= {at0} AND (created_at < {at1} OR (created_at = {at2} AND id{collate} > {id}))"
        ));
    }
    let limit = next(PageValue::Int(i64::try_from(limit).unwrap_or(i64::MAX)), &mut values);
    let filter = if wheres.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", wheres.join(" AND "))
    };
    (
        format!("SELECT body FROM invocations{filter} ORDER BY created_at DESC, id{collate} LIMIT {limit}"),
        values,
    )
}
