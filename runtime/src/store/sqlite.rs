//! The embedded backend: one SQLite database file in the data directory.
//!
//! - WAL journal with `synchronous=FULL`: a committed decision survives a
//!   crash or power loss.
//! - Every read-modify-write runs in a `BEGIN IMMEDIATE` transaction, which
//!   takes the database's write lock first, so two processes (say two
//!   reviewers approving at the same instant) are serialized; a busy
//!   database is waited on for up to [`BUSY_TIMEOUT`].
//! - Records are stored as indexed columns for the fields queries filter
//!   on plus the whole record as JSON, so adding a field is not a schema
//!   migration.
//! - Audit records owed by committed changes wait in `audit_outbox` until
//!   they are appended to the log (see [`super`]).

use super::journal::{self, Journal};
use super::{
    ApprovalRecord, ApprovalState, ApprovalUpdate, Charge, DecisionRecord, Exceeded, InvocationEnding,
    InvocationOutcome, InvocationRecord, InvocationStatus, NodeRecord, ProcessRecord, Refusal, SessionRecord, Store,
    StoreError, TokenRecord, UpdateError,
};
use crate::identity::IdentityKind;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a write waits for another process holding the database.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The database file's name in the data directory.
pub const FILE_NAME: &str = "airlock.db";

/// 2 added `audit_outbox`: an older airlock would leave its records there
/// unappended, so it must not open a database that has one. 3 added
/// `nodes`, `processes` and `console_sessions` (an older airlock ignores
/// them: it keeps sessions in memory), and later `usage_windows` (ignored
/// by an older airlock too: it has no windows to enforce). 4 marks token
/// changes in `tokens.changes` (see `token_cache`): an older airlock would
/// revoke a token without marking it, and a newer process's cache would
/// go on accepting it.
const SCHEMA_VERSION: i64 = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS identities (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    identity TEXT NOT NULL REFERENCES identities(name),
    roles TEXT NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    action TEXT NOT NULL,
    caller TEXT NOT NULL,
    invocation TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS approvals_by_state ON approvals(state, created_at);
CREATE INDEX IF NOT EXISTS approvals_by_invocation ON approvals(invocation);
CREATE INDEX IF NOT EXISTS approvals_by_time ON approvals(created_at);
CREATE TABLE IF NOT EXISTS decisions (
    approval TEXT NOT NULL REFERENCES approvals(id),
    identity TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (approval, identity)
);
CREATE TABLE IF NOT EXISTS invocations (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    action TEXT NOT NULL,
    caller TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS invocations_by_state ON invocations(state, created_at);
CREATE INDEX IF NOT EXISTS invocations_by_caller ON invocations(caller, created_at);
CREATE INDEX IF NOT EXISTS invocations_by_action ON invocations(action, created_at);
CREATE INDEX IF NOT EXISTS invocations_by_time ON invocations(created_at);
CREATE TABLE IF NOT EXISTS audit_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    address TEXT,
    started_at INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS processes (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    last_seen INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS console_sessions (
    id_hash BLOB PRIMARY KEY,
    token_hash BLOB NOT NULL,
    csrf TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS console_sessions_by_last_seen ON console_sessions(last_seen);
CREATE TABLE IF NOT EXISTS usage_windows (
    key TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    window_end INTEGER NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (key, window_start)
);
CREATE INDEX IF NOT EXISTS usage_windows_by_end ON usage_windows(window_end);
";

/// One window's charge: inserted, or added to what it used, but only while
/// that stays within its `max` (no row back: over the limit).
const CHARGE_SQLITE: &str = "INSERT INTO usage_windows (key, window_start, window_end, used) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (key, window_start) DO UPDATE SET used = usage_windows.used + excluded.used
WHERE usage_windows.used <= ?5 - excluded.used
RETURNING used";

/// Charges in (key, window start) order, so two transactions charging the
/// same windows lock them in the same order; each with its place in the
/// caller's list. A charge larger than its window's `max` on its own is
/// refused by the caller before this (an insert has no guard).
pub(crate) fn ordered(charges: &[Charge]) -> Vec<(usize, &Charge)> {
    let mut v: Vec<(usize, &Charge)> = charges.iter().enumerate().collect();
    v.sort_by(|a, b| (&a.1.key, a.1.window_start).cmp(&(&b.1.key, b.1.window_start)));
    v
}

/// SQLite behind a mutex: one connection per process, serialized; and a
/// second one for the status rows of invocations that run at once
/// ([`Store::record_run`]), which commits without waiting for the disk.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Token lookups, ended by any process's revocation.
    tokens: super::token_cache::TokenCache,
    runs: Arc<RunWriter>,
    flusher: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

/// Status rows of runs waiting to be written, and the connection that
/// writes them: a background thread commits whatever has queued in one
/// transaction (while it commits, the next batch gathers), and every read
/// of the invocations table writes the queue out first, so readers never
/// see a stale row. Final rows ([`Store::finish_run`]) are in the journal
/// ([`super::journal`]) from before they are queued until they are
/// committed, so a crash of the process in between loses none.
struct RunWriter {
    pending: Mutex<Pending>,
    wake: std::sync::Condvar,
    conn: Mutex<Connection>,
    stop: std::sync::atomic::AtomicBool,
    data_dir: PathBuf,
}

/// Queued rows, in the order they were stored, and this store's journal.
#[derive(Default)]
struct Pending {
    rows: Vec<InvocationRecord>,
    /// Tickets count rows stored: the next row's.
    next: u64,
    /// Every row with a lower ticket is committed.
    written: u64,
    /// Created with the first final row (most stores never hold one);
    /// if it cannot be, final rows are committed before
    /// [`Store::finish_run`] returns instead (slower, as safe).
    journal: Option<Journal>,
    journal_failed: bool,
    /// The ticket after the last row journaled: once `written` reaches it,
    /// the journal holds nothing the database lacks.
    journaled: u64,
}

/// How long queued status rows gather before they are written together.
/// Nobody in this process waits for them (a reader here writes the queue
/// out first, and final rows are journaled), so the window bounds how late
/// another process (`airlock invocations`, another service on the same
/// data directory) sees a row, and which `running` rows a process killed
/// within it loses (the audit log still has those runs). Ten milliseconds
/// keeps one commit for tens of rows at one request at a time; at 2 ms the
/// commits' own cost, on the core the next request needs, was measurable.
const RUN_BATCH_WINDOW: Duration = Duration::from_millis(10);

/// Rows queued at most; past this, [`Store::record_run`] writes itself
/// (back pressure instead of unbounded memory).
const MAX_PENDING_RUNS: usize = 4096;

impl RunWriter {
    /// Write out everything queued; rows that fail stay queued for the
    /// next attempt.
    fn flush(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let (batch, upto) = {
            let mut pending = self.pending();
            (std::mem::take(&mut pending.rows), pending.next)
        };
        if batch.is_empty() {
            return Ok(());
        }
        let written = write_runs(&mut conn, &batch);
        let mut pending = self.pending();
        match &written {
            Ok(()) => {
                pending.written = upto;
                if pending.written >= pending.journaled
                    && let Some(journal) = &mut pending.journal
                    && let Err(e) = journal.clear()
                {
                    // Its rows are committed: replaying them is harmless.
                    tracing::warn!("cannot empty the status journal: {e}");
                }
            }
            Err(_) => {
                // Back in front of anything queued since, in order; the
                // writer retries them (woken, since rows queued after these
                // no longer wake it).
                let newer = std::mem::replace(&mut pending.rows, batch);
                pending.rows.extend(newer);
                drop(pending);
                self.wake.notify_one();
            }
        }
        written
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Rows are pushed whole; a poisoned lock still holds a valid queue.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `row` (journaled first if `journal`), and wake the writer if
    /// the queue was empty (the writer never waits while rows are queued,
    /// so later rows need no wake-up, which would cost a system call
    /// each); returns whether the row is safe from a crash of the process
    /// without a commit now, and whether the queue is full.
    fn push(&self, row: &InvocationRecord, journal: bool) -> (bool, bool) {
        let (journaled, full, first) = self.queue(row, journal);
        if first {
            self.wake.notify_one();
        }
        (journaled, full)
    }

    /// [`RunWriter::push`] under the lock: also whether the queue was
    /// empty.
    fn queue(&self, row: &InvocationRecord, journal: bool) -> (bool, bool, bool) {
        let mut pending = self.pending();
        if journal && pending.journal.is_none() && !pending.journal_failed {
            match Journal::create(&self.data_dir) {
                Ok(j) => pending.journal = Some(j),
                Err(e) => {
                    tracing::warn!("cannot create a status journal in {}: {e}", self.data_dir.display());
                    pending.journal_failed = true;
                }
            }
        }
        let journaled = journal
            && match pending.journal.as_mut().map(|j| j.append(row)) {
                Some(Ok(())) => true,
                Some(Err(e)) => {
                    tracing::warn!("cannot append to the status journal (committing instead): {e}");
                    false
                }
                None => false,
            };
        pending.next += 1;
        if journaled {
            pending.journaled = pending.next;
        }
        let first = pending.rows.is_empty();
        pending.rows.push(row.clone());
        (journaled, pending.rows.len() >= MAX_PENDING_RUNS, first)
    }

    fn run(&self) {
        while !self.stop.load(std::sync::atomic::Ordering::Acquire) {
            {
                let pending = self.pending();
                if pending.rows.is_empty() {
                    // Woken by the first queued row (or to stop).
                    drop(
                        self.wake
                            .wait_timeout(pending, Duration::from_millis(200))
                            .map(|(guard, _)| guard)
                            .unwrap_or_else(|p| p.into_inner().0),
                    );
                    continue;
                }
            }
            // Let a batch gather: nobody waits for these rows (a reader
            // writes the queue out itself), and one transaction for many
            // rows writes each page once.
            std::thread::sleep(RUN_BATCH_WINDOW);
            if let Err(e) = self.flush() {
                tracing::warn!("cannot store invocation status rows (will retry): {}", e.0);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.flush();
    }
}

/// Write the rows in the journals of stores that ended into the database,
/// then remove those journals; returns how many rows there were.
fn adopt_orphans(runs: &RunWriter, data_dir: &Path) -> Result<usize, StoreError> {
    let orphans =
        journal::orphans(data_dir).map_err(|e| StoreError(format!("cannot read the status journals: {e}")))?;
    let mut count = 0;
    for mut orphan in orphans {
        let rows = orphan
            .rows()
            .map_err(|e| StoreError(format!("cannot read a status journal: {e}")))?;
        if !rows.is_empty() {
            let mut conn = runs.conn.lock().unwrap_or_else(|p| p.into_inner());
            write_runs(&mut conn, &rows)?;
        }
        count += rows.len();
        orphan
            .remove()
            .map_err(|e| StoreError(format!("cannot remove a status journal: {e}")))?;
    }
    Ok(count)
}

fn write_runs(conn: &mut Connection, rows: &[InvocationRecord]) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    for r in settled_rows(rows) {
        upsert_run(&tx, r)?;
    }
    tx.commit().map_err(db_err)
}

/// Of several rows of one run in a batch, the one that writing them all in
/// order would leave ([`upsert_run`]): its first final row, else its last.
/// A short run's `running` and final rows usually share a batch: one write
/// instead of two.
fn settled_rows(rows: &[InvocationRecord]) -> Vec<&InvocationRecord> {
    let mut at: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
    let mut out: Vec<&InvocationRecord> = Vec::with_capacity(rows.len());
    for r in rows {
        match at.get(r.id.as_str()) {
            None => {
                at.insert(&r.id, out.len());
                out.push(r);
            }
            Some(&i) if !out[i].state.is_final() => out[i] = r,
            Some(_) => {}
        }
    }
    out
}

/// Store a run's row, new or over its earlier state: an existing row is
/// updated in place, so only its state index changes (a replace deletes
/// and inserts it, in the table and in all four indexes). A final row is
/// never replaced by a later write of a state in progress.
fn upsert_run(conn: &Connection, r: &InvocationRecord) -> Result<(), StoreError> {
    write_invocation(
        conn,
        r,
        " ON CONFLICT(id) DO UPDATE SET state = excluded.state, body = excluded.body
          WHERE invocations.state NOT IN ('succeeded', 'failed', 'denied', 'expired')",
    )
}

/// Store a new invocation's row.
fn put_invocation(conn: &Connection, r: &InvocationRecord) -> Result<(), StoreError> {
    write_invocation(conn, r, "")
}

/// Insert an invocation's row; `on_conflict` says what an existing one gets.
fn write_invocation(conn: &Connection, r: &InvocationRecord, on_conflict: &str) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT INTO invocations (id, state, action, caller, created_at, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6){on_conflict}"
    ))
    .map_err(db_err)?
    .execute(params![
        r.id,
        r.state.as_str(),
        r.action,
        r.caller.name,
        micros(r.created_at),
        serde_json::to_string(r).map_err(json_err)?
    ])
    .map_err(db_err)?;
    Ok(())
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.runs.stop.store(true, std::sync::atomic::Ordering::Release);
        self.runs.wake.notify_all();
        if let Some(t) = self.flusher.take() {
            let _ = t.join();
        }
        // Everything in the database: the journal goes. Otherwise it stays
        // (its lock goes with this handle) for the next store to adopt.
        if self.runs.flush().is_ok() {
            let mut pending = self.runs.pending();
            if pending.rows.is_empty()
                && let Some(journal) = pending.journal.take()
            {
                let _ = journal.remove();
            }
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError(format!("a stored record does not parse: {e}"))
}

impl SqliteStore {
    /// Open (creating if needed) `DATA-DIR/airlock.db`, readable only by
    /// the current user.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        crate::data_dir::create_private_dir(data_dir)
            .map_err(|e| StoreError(format!("cannot create data directory {}: {e}", data_dir.display())))?;
        let path = data_dir.join(FILE_NAME);
        let conn = Connection::open(&path).map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
        wal_mode(&conn)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(db_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db_err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db_err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError(format!(
                "{} was written by a newer airlock (schema {version}, this one knows {SCHEMA_VERSION}); upgrade airlock",
                path.display()
            )));
        }
        conn.execute_batch(SCHEMA)
            .map_err(|e| StoreError(format!("cannot create the schema in {}: {e}", path.display())))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(db_err)?;
        // `synchronous=NORMAL` in WAL mode: a commit is in the log file (so
        // it survives the process) but not yet synced (so a power failure
        // may lose the newest ones; the database stays consistent). Only
        // the status rows of runs go this way: what ran is in the audit
        // log, synced before any result is returned.
        let runs = Connection::open(&path).map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        runs.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
        runs.pragma_update(None, "synchronous", "NORMAL").map_err(db_err)?;
        let writer = Arc::new(RunWriter {
            pending: Mutex::new(Pending::default()),
            wake: std::sync::Condvar::new(),
            conn: Mutex::new(runs),
            stop: std::sync::atomic::AtomicBool::new(false),
            data_dir: data_dir.to_path_buf(),
        });
        // Rows of stores that ended before writing them out.
        adopt_orphans(&writer, data_dir)?;
        // Before the writer thread starts: nothing to stop if it fails.
        let tokens = super::token_cache::TokenCache::open(data_dir)?;
        let flusher = {
            let writer = writer.clone();
            std::thread::Builder::new()
                .name("airlock-runs".into())
                .spawn(move || writer.run())
                .map_err(|e| StoreError(format!("cannot start the status writer thread: {e}")))?
        };
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            tokens,
            runs: writer,
            flusher: Some(flusher),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic mid-statement leaves SQLite consistent (the transaction
        // rolls back when dropped), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Switch to WAL. The switch takes the database's lock and, unlike other
/// statements, does not wait on the busy handler: several processes
/// opening a new data directory at once saw "database is locked" here.
/// Retried until [`BUSY_TIMEOUT`].
fn wal_mode(conn: &Connection) -> Result<(), StoreError> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Ok(()) => return Ok(()),
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(db_err(e)),
        }
    }
}

/// The statements listing a table's newest rows, newest first: all of
/// them, or those in one state.
///
/// Two statements, not one with `?1 IS NULL OR state = ?1`: SQLite cannot
/// use an index for that condition, so every call scanned and sorted the
/// whole table, under the store's lock. The approval sweeper, twice a
/// second, lists invocations in two states twice over, so the service
/// stalled longer the more invocations it had run (p99 at 64 clients grew
/// from 25 ms to over 100 ms within 15 s). Each statement here reads its
/// rows through an index (`*_by_state`, `*_by_time`) in `created_at`
/// order and stops after `limit` rows (rows with equal `created_at` are
/// still sorted by `id` among themselves).
struct Newest {
    all: &'static str,
    in_state: &'static str,
}

impl Newest {
    fn sql(&self, by_state: bool) -> &'static str {
        if by_state { self.in_state } else { self.all }
    }
}

const NEWEST_APPROVALS: Newest = Newest {
    all: "SELECT id FROM approvals ORDER BY created_at DESC, id LIMIT ?1",
    in_state: "SELECT id FROM approvals WHERE state = ?1 ORDER BY created_at DESC, id LIMIT ?2",
};

const NEWEST_INVOCATIONS: Newest = Newest {
    all: "SELECT body FROM invocations ORDER BY created_at DESC, id LIMIT ?1",
    in_state: "SELECT body FROM invocations WHERE state = ?1 ORDER BY created_at DESC, id LIMIT ?2",
};

/// A row's first column, for `query_map`.
fn first_column<T: rusqlite::types::FromSql>(row: &rusqlite::Row<'_>) -> rusqlite::Result<T> {
    row.get(0)
}

fn load_approval(conn: &Connection, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
    let body: Option<String> = conn
        .query_row("SELECT body FROM approvals WHERE id = ?1", params![id], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    let Some(body) = body else { return Ok(None) };
    let mut record: ApprovalRecord = serde_json::from_str(&body).map_err(json_err)?;
    let mut stmt = conn
        .prepare_cached("SELECT body FROM decisions WHERE approval = ?1 ORDER BY seq")
        .map_err(db_err)?;
    let rows = stmt.query_map(params![id], |r| r.get::<_, String>(0)).map_err(db_err)?;
    record.decisions = Vec::new();
    for row in rows {
        record
            .decisions
            .push(serde_json::from_str::<DecisionRecord>(&row.map_err(db_err)?).map_err(json_err)?);
    }
    Ok(Some(record))
}

/// The approval row's body: the record without its decisions (those are
/// rows of their own, one per identity).
fn approval_body(record: &ApprovalRecord) -> Result<String, StoreError> {
    let mut head = record.clone();
    head.decisions.clear();
    serde_json::to_string(&head).map_err(json_err)
}

fn parse_token(
    id: String,
    identity: String,
    kind: String,
    roles: String,
    created_at: i64,
    revoked_at: Option<i64>,
) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id,
        identity,
        kind: IdentityKind::parse(&kind).map_err(StoreError)?,
        roles: serde_json::from_str(&roles).map_err(json_err)?,
        created_at: u64::try_from(created_at).unwrap_or(0),
        revoked_at: revoked_at.map(|t| u64::try_from(t).unwrap_or(0)),
    })
}

fn micros(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// Queue an audit record in the outbox, inside the caller's transaction.
fn owe(conn: &Connection, audit: &str) -> Result<(), StoreError> {
    conn.execute("INSERT INTO audit_outbox (body) VALUES (?1)", params![audit])
        .map_err(db_err)?;
    Ok(())
}

/// Move invocation `id` to `to` if it is in one of `from`, inside the
/// caller's transaction; `false` when it is elsewhere or unknown.
fn move_invocation(
    conn: &Connection,
    id: &str,
    from: &[InvocationStatus],
    to: InvocationStatus,
    outcome: Option<&InvocationOutcome>,
) -> Result<bool, StoreError> {
    move_invocation_by(conn, id, from, to, outcome, None)
}

/// [`move_invocation`], naming the `runner` that now runs it (a row that
/// leaves `running` names none).
fn move_invocation_by(
    conn: &Connection,
    id: &str,
    from: &[InvocationStatus],
    to: InvocationStatus,
    outcome: Option<&InvocationOutcome>,
    runner: Option<&str>,
) -> Result<bool, StoreError> {
    let body: Option<String> = conn
        .query_row("SELECT body FROM invocations WHERE id = ?1", params![id], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    let Some(body) = body else { return Ok(false) };
    let mut record: InvocationRecord = serde_json::from_str(&body).map_err(json_err)?;
    if !from.contains(&record.state) {
        return Ok(false);
    }
    record.state = to;
    record.runner = runner.map(str::to_string);
    record.updated_at = crate::time::now_micros();
    if let Some(outcome) = outcome {
        record.outcome = Some(outcome.clone());
    }
    conn.execute(
        "UPDATE invocations SET state = ?2, body = ?3 WHERE id = ?1",
        params![id, to.as_str(), serde_json::to_string(&record).map_err(json_err)?],
    )
    .map_err(db_err)?;
    Ok(true)
}

const TOKEN_COLUMNS: &str = "t.id, t.identity, i.kind, t.roles, t.created_at, t.revoked_at FROM tokens t JOIN identities i ON i.name = t.identity";

type TokenRow = (String, String, String, String, i64, Option<i64>);

/// Tokens selected by `tail` (a `WHERE`/`ORDER BY` clause).
fn token_list(conn: &Connection, tail: &str) -> Result<Vec<TokenRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} {tail}"))
        .map_err(db_err)?;
    let rows = stmt.query_map([], token_row).map_err(db_err)?;
    rows.map(|r| {
        let (a, b, c, d, e, f) = r.map_err(db_err)?;
        parse_token(a, b, c, d, e, f)
    })
    .collect()
}

/// Every token not revoked, read inside the caller's transaction.
fn live_tokens(conn: &Connection) -> Result<Vec<TokenRecord>, StoreError> {
    token_list(conn, "WHERE t.revoked_at IS NULL ORDER BY t.created_at, t.id")
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

impl Store for SqliteStore {
    fn add_token(
        &self,
        identity: &str,
        kind: IdentityKind,
        token: &TokenRecord,
        hash: &[u8; 32],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let existing: Option<String> = tx
            .query_row("SELECT kind FROM identities WHERE name = ?1", params![identity], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db_err)?;
        match existing {
            Some(k) if k != kind.as_str() => {
                return Err(StoreError(format!(
                    "identity `{identity}` exists as {k}, not {kind}; use another name"
                )));
            }
            Some(_) => {}
            None => {
                tx.execute(
                    "INSERT INTO identities (name, kind, created_at) VALUES (?1, ?2, ?3)",
                    params![identity, kind.as_str(), micros(token.created_at)],
                )
                .map_err(db_err)?;
            }
        }
        let roles = serde_json::to_string(&token.roles).map_err(json_err)?;
        tx.execute(
            "INSERT INTO tokens (id, identity, roles, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token.id, identity, roles, &hash[..], micros(token.created_at)],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        // On the path of every request: answered from memory while no
        // process has changed a token since (see `token_cache`).
        self.tokens.get(hash, || {
            let conn = self.conn();
            let row = conn
                .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} WHERE t.hash = ?1"))
                .and_then(|mut stmt| stmt.query_row(params![&hash[..]], token_row).optional())
                .map_err(db_err)?;
            row.map(|(a, b, c, d, e, f)| parse_token(a, b, c, d, e, f)).transpose()
        })
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        token_list(&self.conn(), "ORDER BY t.created_at, t.id")
    }

    fn revoke_token(&self, id: &str, at_micros: u64) -> Result<bool, StoreError> {
        self.tokens.changing(|| {
            let conn = self.conn();
            let exists: bool = conn
                .query_row("SELECT 1 FROM tokens WHERE id = ?1", params![id], |_| Ok(true))
                .optional()
                .map_err(db_err)?
                .is_some();
            conn.execute(
                "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, micros(at_micros)],
            )
            .map_err(db_err)?;
            Ok(exists)
        })
    }

    fn insert_approval(&self, approval: &ApprovalRecord) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO approvals (id, state, action, caller, invocation, created_at, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                approval.id,
                approval.state.as_str(),
                approval.action,
                approval.caller,
                approval.invocation,
                micros(approval.created_at),
                approval_body(approval)?
            ],
        )
        .map_err(db_err)?;
        Ok(())
    }

    fn approval(&self, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        load_approval(&self.conn(), id)
    }

    fn count_approvals(&self, state: ApprovalState) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM approvals WHERE state = ?1",
                params![state.as_str()],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn approvals(&self, state: Option<ApprovalState>, limit: usize) -> Result<Vec<ApprovalRecord>, StoreError> {
        let conn = self.conn();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let ids: Vec<String> = {
            let mut stmt = conn
                .prepare_cached(NEWEST_APPROVALS.sql(state.is_some()))
                .map_err(db_err)?;
            let rows = match state {
                Some(state) => stmt.query_map(params![state.as_str(), limit], first_column::<String>),
                None => stmt.query_map(params![limit], first_column::<String>),
            }
            .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)?
        };
        ids.iter()
            .filter_map(|id| load_approval(&conn, id).transpose())
            .collect()
    }

    fn update_approval(&self, id: &str, update: &mut ApprovalUpdate<'_>) -> Result<ApprovalRecord, UpdateError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let Some(before) = load_approval(&tx, id)? else {
            return Err(UpdateError::NotFound(id.to_string()));
        };
        let live = live_tokens(&tx)?;
        let mut after = before.clone();
        let audit = update(&mut after, &live)?;
        if after.decisions.len() < before.decisions.len()
            || after.decisions[..before.decisions.len()] != before.decisions[..]
        {
            return Err(StoreError("an update may only add decisions".into()).into());
        }
        for (seq, decision) in after.decisions.iter().enumerate().skip(before.decisions.len()) {
            let body = serde_json::to_string(decision).map_err(json_err)?;
            tx.execute(
                "INSERT INTO decisions (approval, identity, seq, body) VALUES (?1, ?2, ?3, ?4)",
                params![id, decision.identity, i64::try_from(seq).unwrap_or(i64::MAX), body],
            )
            .map_err(|e| match e.sqlite_error_code() {
                // The primary key is the last line of defence against one
                // identity being counted twice.
                Some(rusqlite::ErrorCode::ConstraintViolation) => UpdateError::Refused(Refusal::AlreadyDecided {
                    identity: decision.identity.clone(),
                    id: id.to_string(),
                }),
                _ => UpdateError::Store(db_err(e)),
            })?;
        }
        tx.execute(
            "UPDATE approvals SET state = ?2, body = ?3 WHERE id = ?1",
            params![id, after.state.as_str(), approval_body(&after)?],
        )
        .map_err(db_err)?;
        if let Some(audit) = &audit {
            owe(&tx, audit)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(after)
    }

    fn record_run(&self, invocation: &InvocationRecord) -> Result<(), StoreError> {
        let (_, full) = self.runs.push(invocation, false);
        if full {
            return self.runs.flush();
        }
        Ok(())
    }

    fn finish_run(&self, invocation: &InvocationRecord) -> Result<(), StoreError> {
        let (journaled, full) = self.runs.push(invocation, true);
        if full || !journaled {
            return self.runs.flush();
        }
        Ok(())
    }

    fn adopt_orphaned_runs(&self) -> Result<usize, StoreError> {
        adopt_orphans(&self.runs, &self.runs.data_dir)
    }

    fn claim_invocation(&self, id: &str, from: &[InvocationStatus], runner: &str) -> Result<bool, StoreError> {
        self.runs.flush()?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        if !move_invocation_by(&tx, id, from, InvocationStatus::Running, None, Some(runner))? {
            return Ok(false);
        }
        tx.commit().map_err(db_err)?;
        Ok(true)
    }

    fn insert_invocation(&self, invocation: &InvocationRecord) -> Result<(), StoreError> {
        self.runs.flush()?;
        put_invocation(&self.conn(), invocation)
    }

    fn invocation(&self, id: &str) -> Result<Option<InvocationRecord>, StoreError> {
        self.runs.flush()?;
        let conn = self.conn();
        let body: Option<String> = conn
            .query_row("SELECT body FROM invocations WHERE id = ?1", params![id], |r| r.get(0))
            .optional()
            .map_err(db_err)?;
        body.map(|b| serde_json::from_str(&b).map_err(json_err)).transpose()
    }

    fn invocations(&self, state: Option<InvocationStatus>, limit: usize) -> Result<Vec<InvocationRecord>, StoreError> {
        self.runs.flush()?;
        let conn = self.conn();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = conn
            .prepare_cached(NEWEST_INVOCATIONS.sql(state.is_some()))
            .map_err(db_err)?;
        let rows = match state {
            Some(state) => stmt.query_map(params![state.as_str(), limit], first_column::<String>),
            None => stmt.query_map(params![limit], first_column::<String>),
        }
        .map_err(db_err)?;
        rows.map(|r| serde_json::from_str(&r.map_err(db_err)?).map_err(json_err))
            .collect()
    }

    fn invocation_page(
        &self,
        query: &super::InvocationQuery,
        limit: usize,
    ) -> Result<Vec<InvocationRecord>, StoreError> {
        self.runs.flush()?;
        let (sql, values) = super::page_sql(query, limit, |n| format!("?{n}"));
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql).map_err(db_err)?;
        let params: Vec<&dyn rusqlite::ToSql> = values
            .iter()
            .map(|v| match v {
                super::PageValue::Text(t) => t as &dyn rusqlite::ToSql,
                super::PageValue::Int(i) => i as &dyn rusqlite::ToSql,
            })
            .collect();
        let rows = stmt
            .query_map(params.as_slice(), first_column::<String>)
            .map_err(db_err)?;
        rows.map(|r| serde_json::from_str(&r.map_err(db_err)?).map_err(json_err))
            .collect()
    }

    fn transition_invocation(
        &self,
        id: &str,
        from: &[InvocationStatus],
        to: InvocationStatus,
        outcome: Option<&InvocationOutcome>,
    ) -> Result<bool, StoreError> {
        self.runs.flush()?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        if !move_invocation(&tx, id, from, to, outcome)? {
            return Ok(false);
        }
        tx.commit().map_err(db_err)?;
        Ok(true)
    }

    fn end_invocation(&self, ending: &InvocationEnding<'_>) -> Result<bool, StoreError> {
        self.runs.flush()?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        if let Some((approval, reason)) = ending.expire_approval {
            let Some(mut record) = load_approval(&tx, approval)? else {
                return Ok(false);
            };
            if record.state != ApprovalState::Approved {
                return Ok(false);
            }
            record.state = ApprovalState::Expired;
            record.reason = Some(reason.to_string());
            tx.execute(
                "UPDATE approvals SET state = ?2, body = ?3 WHERE id = ?1",
                params![approval, record.state.as_str(), approval_body(&record)?],
            )
            .map_err(db_err)?;
        }
        // Dropping the transaction without a commit also undoes the
        // request's expiry above.
        if !move_invocation(&tx, ending.invocation, ending.from, ending.to, Some(ending.outcome))? {
            return Ok(false);
        }
        owe(&tx, ending.audit)?;
        tx.commit().map_err(db_err)?;
        Ok(true)
    }

    fn drain_audit_outbox(
        &self,
        append: &mut dyn FnMut(Vec<String>) -> Result<(), Refusal>,
    ) -> Result<usize, UpdateError> {
        let mut conn = self.conn();
        // Nearly always nothing is owed: look without taking the write lock.
        let any: Option<i64> = conn
            .query_row("SELECT seq FROM audit_outbox LIMIT 1", [], |r| r.get(0))
            .optional()
            .map_err(db_err)?;
        if any.is_none() {
            return Ok(0);
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let rows: Vec<(i64, String)> = {
            let mut stmt = tx
                .prepare_cached("SELECT seq, body FROM audit_outbox ORDER BY seq")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)?
        };
        let Some(last) = rows.last().map(|(seq, _)| *seq) else {
            return Ok(0);
        };
        let count = rows.len();
        append(rows.into_iter().map(|(_, body)| body).collect())?;
        tx.execute("DELETE FROM audit_outbox WHERE seq <= ?1", params![last])
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(count)
    }

    fn shared(&self) -> bool {
        // One machine: a process's pid and lease files tell whether it lives.
        false
    }

    fn shared_vault(&self) -> Option<Arc<dyn crate::vault::shared::SharedVault>> {
        None
    }

    fn watch(&self, _changed: std::sync::Weak<tokio::sync::Notify>) {
        // Other processes on this machine are seen by polling.
    }

    fn heartbeat(&self, node: &NodeRecord, processes: &[&str]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        tx.execute(
            "INSERT INTO nodes (id, version, address, started_at, last_seen) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(id) DO UPDATE SET version = excluded.version, address = excluded.address,
               started_at = excluded.started_at, last_seen = excluded.last_seen",
            params![
                node.id,
                node.version,
                node.address,
                micros(node.started_at),
                micros(node.last_seen)
            ],
        )
        .map_err(db_err)?;
        for p in processes {
            tx.execute(
                "INSERT INTO processes (id, node, last_seen) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET node = excluded.node, last_seen = excluded.last_seen",
                params![p, node.id, micros(node.last_seen)],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    fn leave(&self, processes: &[&str]) -> Result<(), StoreError> {
        let conn = self.conn();
        for p in processes {
            conn.execute("UPDATE processes SET last_seen = 0 WHERE id = ?1", params![p])
                .map_err(db_err)?;
        }
        Ok(())
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT id, version, address, started_at, last_seen FROM nodes ORDER BY id")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(NodeRecord {
                    id: r.get(0)?,
                    version: r.get(1)?,
                    address: r.get(2)?,
                    started_at: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                    last_seen: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                    silent_for_micros: 0,
                })
            })
            .map_err(db_err)?;
        let now = crate::time::now_micros();
        let mut nodes: Vec<NodeRecord> = rows.collect::<Result<_, _>>().map_err(db_err)?;
        // One machine, one clock.
        for n in &mut nodes {
            n.silent_for_micros = now.saturating_sub(n.last_seen);
        }
        Ok(nodes)
    }

    fn process(&self, id: &str) -> Result<Option<ProcessRecord>, StoreError> {
        self.conn()
            .query_row(
                "SELECT id, node, last_seen FROM processes WHERE id = ?1",
                params![id],
                |r| {
                    Ok(ProcessRecord {
                        id: r.get(0)?,
                        node: r.get(1)?,
                        last_seen: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                        silent_for_micros: 0,
                    })
                },
            )
            .optional()
            .map_err(db_err)
            .map(|p| {
                p.map(|mut p| {
                    p.silent_for_micros = crate::time::now_micros().saturating_sub(p.last_seen);
                    p
                })
            })
    }

    fn create_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO console_sessions (id_hash, token_hash, csrf, created_at, last_seen) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![&s.id_hash[..], &s.token_hash[..], s.csrf, micros(s.created_at), micros(s.last_seen)],
            )
            .map_err(db_err)?;
        Ok(())
    }

    fn session(
        &self,
        id_hash: &[u8; 32],
        idle_since: u64,
        now: u64,
        touch_after: u64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT token_hash, csrf, created_at, last_seen FROM console_sessions WHERE id_hash = ?1",
                params![&id_hash[..]],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(db_err)?;
        let Some((token_hash, csrf, created_at, last_seen)) = row else {
            return Ok(None);
        };
        let last_seen = u64::try_from(last_seen).unwrap_or(0);
        if last_seen < idle_since {
            conn.execute("DELETE FROM console_sessions WHERE id_hash = ?1", params![&id_hash[..]])
                .map_err(db_err)?;
            return Ok(None);
        }
        let Ok(token_hash) = <[u8; 32]>::try_from(token_hash.as_slice()) else {
            return Err(StoreError("a console session row is damaged (token hash)".into()));
        };
        let mut session = SessionRecord {
            id_hash: *id_hash,
            token_hash,
            csrf,
            created_at: u64::try_from(created_at).unwrap_or(0),
            last_seen,
        };
        if now.saturating_sub(last_seen) >= touch_after {
            conn.execute(
                "UPDATE console_sessions SET last_seen = ?2 WHERE id_hash = ?1",
                params![&id_hash[..], micros(now)],
            )
            .map_err(db_err)?;
            session.last_seen = now;
        }
        Ok(Some(session))
    }

    fn remove_session(&self, id_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM console_sessions WHERE id_hash = ?1", params![&id_hash[..]])
            .map_err(db_err)?;
        Ok(())
    }

    fn charge(&self, charges: &[Charge]) -> Result<Result<(), Exceeded>, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        for (index, c) in ordered(charges) {
            let charged: Option<i64> = tx
                .query_row(
                    CHARGE_SQLITE,
                    params![c.key, c.window_start, c.window_end, c.amount, c.max],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            if charged.is_none() {
                let used: i64 = tx
                    .query_row(
                        "SELECT used FROM usage_windows WHERE key = ?1 AND window_start = ?2",
                        params![c.key, c.window_start],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(db_err)?
                    .unwrap_or(0);
                // Dropped: rolled back, nothing charged.
                return Ok(Err(Exceeded { index, used }));
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(Ok(()))
    }

    fn usage(&self, windows: &[(String, i64)]) -> Result<Vec<i64>, StoreError> {
        let conn = self.conn();
        windows
            .iter()
            .map(|(key, start)| {
                conn.query_row(
                    "SELECT used FROM usage_windows WHERE key = ?1 AND window_start = ?2",
                    params![key, start],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .map(|u| u.unwrap_or(0))
                .map_err(db_err)
            })
            .collect()
    }

    fn prune_usage(&self, before: i64) -> Result<usize, StoreError> {
        self.conn()
            .execute("DELETE FROM usage_windows WHERE window_end < ?1", params![before])
            .map_err(db_err)
    }

    fn prune_sessions(&self, idle_since: u64) -> Result<usize, StoreError> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM console_sessions WHERE last_seen < ?1",
            params![micros(idle_since)],
        )
        .map_err(db_err)?;
        let live: i64 = conn
            .query_row("SELECT count(*) FROM console_sessions", [], |r| r.get(0))
            .map_err(db_err)?;
        Ok(usize::try_from(live).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, state: InvocationStatus) -> InvocationRecord {
        InvocationRecord {
            id: id.into(),
            action: "a".into(),
            function: "f".into(),
            args: serde_json::json!({}),
            caller: crate::identity::Caller {
                name: "bot".into(),
                kind: IdentityKind::Agent,
                roles: vec![],
                token_id: None,
            },
            state,
            approval: None,
            created_at: 1,
            updated_at: 1,
            outcome: None,
            runner: None,
            intent: None,
        }
    }

    /// The row as another process sees it: its own connection, which knows
    /// nothing of rows still queued in memory here.
    fn seen_elsewhere(dir: &Path, id: &str) -> Result<Option<InvocationStatus>, StoreError> {
        let conn = Connection::open(dir.join(FILE_NAME)).map_err(db_err)?;
        let state: Option<String> = conn
            .query_row("SELECT state FROM invocations WHERE id = ?1", params![id], |r| r.get(0))
            .optional()
            .map_err(db_err)?;
        Ok(state.and_then(|s| InvocationStatus::parse(&s)))
    }

    /// The rows in the journals on disk.
    fn journaled(dir: &Path) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir.join(journal::DIR)) else {
            return Ok(ids);
        };
        for e in entries {
            let text = std::fs::read_to_string(e.map_err(db_err)?.path()).map_err(db_err)?;
            for line in text.lines() {
                ids.push(serde_json::from_str::<InvocationRecord>(line).map_err(json_err)?.id);
            }
        }
        Ok(ids)
    }

    #[test]
    fn a_batch_writes_what_writing_its_rows_in_order_would() -> Result<(), StoreError> {
        use InvocationStatus::{AwaitingApproval, Failed, Running, Succeeded};
        let rows = [
            run("a", Running),
            run("b", Running),
            run("a", Succeeded),
            run("b", Failed),
            // Never over a final row.
            run("b", Running),
            run("c", Running),
            run("c", AwaitingApproval),
        ];
        let settled: Vec<(&str, InvocationStatus)> =
            settled_rows(&rows).iter().map(|r| (r.id.as_str(), r.state)).collect();
        assert_eq!(settled, [("a", Succeeded), ("b", Failed), ("c", AwaitingApproval)]);
        // The same end state as the rows one by one.
        let dir = tempfile::tempdir().map_err(db_err)?;
        let store = SqliteStore::open(dir.path())?;
        let mut conn = store.runs.conn.lock().unwrap_or_else(|p| p.into_inner());
        for r in &rows {
            write_runs(&mut conn, std::slice::from_ref(r))?;
        }
        drop(conn);
        let one_by_one: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|id| seen_elsewhere(dir.path(), id))
            .collect::<Result<_, _>>()?;
        let dir2 = tempfile::tempdir().map_err(db_err)?;
        let store2 = SqliteStore::open(dir2.path())?;
        write_runs(&mut store2.runs.conn.lock().unwrap_or_else(|p| p.into_inner()), &rows)?;
        let batched: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|id| seen_elsewhere(dir2.path(), id))
            .collect::<Result<_, _>>()?;
        assert_eq!(one_by_one, batched);
        assert_eq!(batched, [Some(Succeeded), Some(Failed), Some(AwaitingApproval)]);
        Ok(())
    }

    #[test]
    fn a_final_row_is_on_disk_when_stored_and_an_ended_stores_rows_are_adopted() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(db_err)?;
        let store = SqliteStore::open(dir.path())?;
        store.record_run(&run("r", InvocationStatus::Running))?;
        store.finish_run(&run("r", InvocationStatus::Succeeded))?;
        // In the journal at once (the database gets it in the next batch):
        // a kill of the process now cannot lose it.
        let on_disk = journaled(dir.path())?;
        assert!(
            on_disk == ["r"] || seen_elsewhere(dir.path(), "r")? == Some(InvocationStatus::Succeeded),
            "{on_disk:?}"
        );
        // Once committed, the row may stay in the journal (it is emptied at
        // journal::CLEAR_AT); read again it changes nothing. A clean close
        // removes the journal.
        assert_eq!(
            store.invocation("r")?.map(|r| r.state),
            Some(InvocationStatus::Succeeded)
        );
        assert!(journaled(dir.path())?.iter().all(|id| id == "r"));
        drop(store);
        let left = std::fs::read_dir(dir.path().join(journal::DIR))
            .map_err(db_err)?
            .count();
        assert_eq!(left, 0, "a store closed cleanly leaves no journal");

        // A store that ended (killed) with rows only in its journal: the
        // next store to open brings them in, then removes the journal.
        let mut dead = Journal::create(dir.path()).map_err(db_err)?;
        for id in ["d1", "d2"] {
            dead.append(&run(id, InvocationStatus::Failed)).map_err(db_err)?;
        }
        // A final row the database already has, read again (a journal
        // keeps committed rows until it is emptied): nothing changes.
        dead.append(&run("r", InvocationStatus::Failed)).map_err(db_err)?;
        drop(dead);
        let live = SqliteStore::open(dir.path())?;
        live.finish_run(&run("live", InvocationStatus::Succeeded))?;
        let store = SqliteStore::open(dir.path())?;
        for id in ["d1", "d2"] {
            assert_eq!(seen_elsewhere(dir.path(), id)?, Some(InvocationStatus::Failed), "{id}");
        }
        assert_eq!(seen_elsewhere(dir.path(), "r")?, Some(InvocationStatus::Succeeded));
        assert!(
            journaled(dir.path())?.iter().all(|id| id == "live"),
            "a live store's journal is not adopted"
        );
        assert_eq!(store.adopt_orphaned_runs()?, 0);
        drop(live);
        assert_eq!(
            store.invocation("live")?.map(|r| r.state),
            Some(InvocationStatus::Succeeded)
        );
        Ok(())
    }

    #[test]
    fn queued_status_rows_are_seen_by_readers_at_once_and_kept_on_close() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(db_err)?;
        {
            let store = SqliteStore::open(dir.path())?;
            store.record_run(&run("r1", InvocationStatus::Running))?;
            // Read straight after queueing: the read writes the queue first.
            let seen = store.invocation("r1")?.map(|r| r.state);
            assert_eq!(seen, Some(InvocationStatus::Running));
            store.record_run(&run("r1", InvocationStatus::Succeeded))?;
            for i in 0..100 {
                store.record_run(&run(&format!("bulk-{i}"), InvocationStatus::Succeeded))?;
            }
        }
        // Dropping the store writes what was still queued.
        let store = SqliteStore::open(dir.path())?;
        assert_eq!(
            store.invocation("r1")?.map(|r| r.state),
            Some(InvocationStatus::Succeeded)
        );
        assert_eq!(store.invocations(None, 1000)?.len(), 101);
        Ok(())
    }

    /// Rows in the database file as another connection sees it: what the
    /// writer committed, not what a read through the store would flush.
    fn committed_rows(dir: &Path) -> i64 {
        let conn = Connection::open(dir.join(FILE_NAME)).unwrap();
        conn.query_row("SELECT count(*) FROM invocations", [], |r| r.get(0))
            .unwrap()
    }

    /// Waits up to 5 s for `n` committed rows.
    fn wait_for_rows(dir: &Path, n: i64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while committed_rows(dir) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} rows stored",
                committed_rows(dir)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_writer_stores_queued_rows_by_itself_batch_after_batch() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(db_err)?;
        let store = SqliteStore::open(dir.path())?;
        // Rows queued while a batch gathers wake nobody: the first woke
        // the writer, and it takes them all.
        for i in 0..50 {
            store.record_run(&run(&format!("a-{i}"), InvocationStatus::Running))?;
        }
        store.finish_run(&run("a-0", InvocationStatus::Succeeded))?;
        wait_for_rows(dir.path(), 50);
        // After the writer went back to waiting, a new first row wakes it.
        std::thread::sleep(RUN_BATCH_WINDOW * 3);
        store.finish_run(&run("b-0", InvocationStatus::Succeeded))?;
        store.record_run(&run("b-1", InvocationStatus::Running))?;
        wait_for_rows(dir.path(), 52);
        assert_eq!(
            store.invocation("a-0")?.map(|r| r.state),
            Some(InvocationStatus::Succeeded)
        );
        Ok(())
    }

    fn approval(id: &str, state: ApprovalState, created_at: u64) -> ApprovalRecord {
        ApprovalRecord {
            id: id.into(),
            kind: crate::store::ApprovalKind::Invocation,
            state,
            action: "a".into(),
            function: "f".into(),
            caller: "bot".into(),
            caller_kind: IdentityKind::Agent,
            service_identity: "svc".into(),
            component_digest: "d".into(),
            args: serde_json::json!({}),
            binding: "b".into(),
            config_version: "v".into(),
            rule: "r".into(),
            subject: serde_json::json!({}),
            capabilities: vec![],
            quorum: 1,
            approvers: vec![],
            created_at,
            expires_at: created_at + 1,
            decided_at: None,
            reason: None,
            invocation: format!("inv-of-{id}"),
            owner: None,
            decisions: vec![],
            uncounted: vec![],
            group: None,
            rules: None,
            more_groups: vec![],
            policies: vec![],
            why: None,
            intent: None,
            escalation: None,
            escalate_at: None,
            escalated: false,
        }
    }

    /// The `detail` column of an `EXPLAIN QUERY PLAN` row.
    fn plan_detail(row: &rusqlite::Row<'_>) -> rusqlite::Result<String> {
        row.get(3)
    }

    #[test]
    fn listings_are_served_by_indexes_newest_first() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(db_err)?;
        let store = SqliteStore::open(dir.path())?;
        // No statement that lists rows may read or sort a whole table (the
        // sweeper runs them under the store's lock, twice a second): by
        // state, they search the state index; all rows, they walk the time
        // index in order and stop at the limit.
        for newest in [&NEWEST_APPROVALS, &NEWEST_INVOCATIONS] {
            let conn = store.conn();
            let plan = |sql: &str, by_state: bool| -> Result<Vec<String>, StoreError> {
                let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).map_err(db_err)?;
                let rows = if by_state {
                    stmt.query_map(params!["succeeded", 10], plan_detail)
                } else {
                    stmt.query_map(params![10], plan_detail)
                }
                .map_err(db_err)?;
                rows.collect::<Result<_, _>>().map_err(db_err)
            };
            let in_state = plan(newest.in_state, true)?;
            assert!(
                in_state
                    .iter()
                    .any(|s| s.starts_with("SEARCH ") && s.ends_with("(state=?)")),
                "{}: {in_state:?}",
                newest.in_state
            );
            let all = plan(newest.all, false)?;
            assert!(
                all.iter()
                    .any(|s| s.starts_with("SCAN ") && s.contains(" USING INDEX "))
                    && !all.iter().any(|s| s == "USE TEMP B-TREE FOR ORDER BY"),
                "{}: {all:?}",
                newest.all
            );
        }

        // What they return: newest first, the state filter, the limit.
        let states = [InvocationStatus::Succeeded, InvocationStatus::Failed];
        for i in 0..10u64 {
            let mut row = run(&format!("inv-{i}"), states[(i % 2) as usize]);
            row.created_at = 100 + i;
            store.record_run(&row)?;
        }
        let ids = |rows: Vec<InvocationRecord>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(store.invocations(None, 3)?), ["inv-9", "inv-8", "inv-7"]);
        assert_eq!(
            ids(store.invocations(Some(InvocationStatus::Succeeded), 10)?),
            ["inv-8", "inv-6", "inv-4", "inv-2", "inv-0"]
        );
        assert_eq!(
            ids(store.invocations(Some(InvocationStatus::Running), 10)?),
            Vec::<String>::new()
        );
        // Equal times: by id.
        for id in ["tie-b", "tie-a"] {
            let mut row = run(id, InvocationStatus::Succeeded);
            row.created_at = 200;
            store.record_run(&row)?;
        }
        assert_eq!(ids(store.invocations(None, 3)?), ["tie-a", "tie-b", "inv-9"]);

        for (i, state) in [ApprovalState::Pending, ApprovalState::Denied, ApprovalState::Pending]
            .into_iter()
            .enumerate()
        {
            store.insert_approval(&approval(&format!("ap-{i}"), state, 10 + i as u64))?;
        }
        let ids = |rows: Vec<ApprovalRecord>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(store.approvals(None, 2)?), ["ap-2", "ap-1"]);
        assert_eq!(
            ids(store.approvals(Some(ApprovalState::Pending), 10)?),
            ["ap-2", "ap-0"]
        );
        Ok(())
    }
}
