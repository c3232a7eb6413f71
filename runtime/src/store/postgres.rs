//! The shared backend: PostgreSQL, for several `airlock serve` nodes on
//! one database.
//!
//! - Every guarantee of the [`Store`] contract holds across nodes, not
//!   only across the threads of one: each read-modify-write runs in one
//!   transaction that first locks the rows it changes (`SELECT … FOR
//!   UPDATE`), so two nodes deciding one request, or claiming one
//!   invocation, are serialized by the database and exactly one wins.
//! - A vote locks the live tokens it is counted against (`FOR SHARE`), so
//!   a revocation on any node commits either before the vote (and is
//!   seen) or after it, as on SQLite.
//! - Commits are synchronous (`synchronous_commit` as the server sets it,
//!   `on` by default), except for batches holding only status rows of runs
//!   in progress ([`Store::record_run`]), which are committed without
//!   waiting for the server's disk, as on SQLite: the audit log is the
//!   durable record of what ran. (Under load such rows mostly share the
//!   synced commit of other runs' final rows.)
//! - The driver is `tokio-postgres` with a `deadpool-postgres` pool. The
//!   [`Store`] trait is synchronous (the rules call it from everywhere),
//!   so each call drives its future to completion on the calling thread,
//!   while the connections' I/O runs on a small runtime of the store's
//!   own (never the caller's, which may be shutting down while the store
//!   still writes, or blocked on the store itself: connections are opened
//!   and driven there whoever asks for one). The hot paths of a request
//!   (its token, its final status row) have async forms which the service
//!   awaits without blocking a worker; final rows of concurrent runs share
//!   one statement and one commit.
//!   A connection whose transaction did not finish is closed, never
//!   returned to the pool.
//! - The schema is versioned ([`super::migrations`]); opening applies what
//!   is missing unless told not to.

use super::migrations::{self, MIGRATIONS, Migration};
use super::settings::PgSettings;
use super::{
    ApprovalRecord, ApprovalState, ApprovalUpdate, Charge, DecisionRecord, Exceeded, InvocationEnding,
    InvocationOutcome, InvocationRecord, InvocationStatus, NodeRecord, ProcessRecord, Refusal, SessionRecord, Store,
    StoreError, TokenRecord, UpdateError,
};
use crate::identity::IdentityKind;
use deadpool_postgres::Pool;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

/// A pooled connection, as the queries below use it: with its cache of
/// prepared statements ([`Cached`]).
type Conn = deadpool_postgres::ClientWrapper;

/// Statements prepared once per connection and reused: a `&str` passed to
/// the driver is prepared anew on every call, a round trip of its own
/// before the one that runs it.
/// A statement's parameters.
type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

trait Cached {
    async fn exec(&self, sql: &str, params: Params<'_>) -> Result<u64, tokio_postgres::Error>;
    async fn rows(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, tokio_postgres::Error>;
    async fn row_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, tokio_postgres::Error>;
    async fn row(&self, sql: &str, params: Params<'_>) -> Result<Row, tokio_postgres::Error>;
}

/// A node opening the store waits this long for another node's schema
/// migration (the session's 15 s `lock_timeout` is for the store's own
/// short transactions): a migration's commit can take that long on a slow
/// disk, and the nodes waiting behind it should start, not fail.
const MIGRATION_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '120s'";

impl Cached for Conn {
    async fn exec(&self, sql: &str, params: Params<'_>) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.execute(&statement, params).await
    }

    async fn rows(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query(&statement, params).await
    }

    async fn row_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query_opt(&statement, params).await
    }

    async fn row(&self, sql: &str, params: Params<'_>) -> Result<Row, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query_one(&statement, params).await
    }
}

/// How long queued status rows of runs in progress gather before they
/// are written together. A run that ends sooner replaces its `running`
/// row by its final one before anything is written, so a short run costs
/// one write, not two; a longer one shows `running` to other nodes this
/// much later.
const RUN_BATCH_WINDOW: Duration = Duration::from_millis(20);
/// Rows queued at most; past this, [`Store::record_run`] writes itself.
const MAX_PENDING_RUNS: usize = 4096;
/// Longest a heartbeat may take (see [`crate::cluster`]).
const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(3);
/// How long a call waits for a free connection before it fails.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// Whether opening the store applies missing migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrate {
    /// Apply what is missing (the default for every command).
    Apply,
    /// Refuse a database that lacks migrations.
    Check,
    /// Neither: `airlock db` reports and applies them itself.
    Skip,
}

/// One applied or pending migration, for `airlock db status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationStatus {
    pub version: i32,
    pub name: String,
    /// `None`: not applied yet.
    pub applied_at: Option<String>,
    pub applied_by: Option<String>,
    /// Applied by a newer airlock that this one does not know.
    pub unknown: bool,
}

/// PostgreSQL through a pool, with a batch writer for status rows.
pub struct PgStore {
    inner: Arc<Inner>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

struct Inner {
    pool: Pool,
    /// Woken on every change another node makes (see [`Store::watch`]).
    watchers: Mutex<Vec<std::sync::Weak<tokio::sync::Notify>>>,
    /// Drives the connections' I/O. Taken (and shut down in the
    /// background) on drop, which may happen inside another runtime.
    rt: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    url: String,
    runs: Runs,
}

/// Status rows of runs waiting to be written (see [`Store::record_run`]).
///
/// Rows are written in batches, numbered in the order they are taken from
/// the queue; a row queued while `taken` is `n` goes out in batch `n + 1`
/// or, if that one fails, in a later one. A caller that needs its row
/// committed ([`Store::finish_run`]) waits until `committed` reaches its
/// batch: whoever holds `writing` when it is free takes everything queued
/// so far, so the rows of concurrent runs share one statement and one
/// commit (a group commit), and the others find theirs written.
#[derive(Default)]
struct Runs {
    queue: Mutex<Queue>,
    /// The highest batch number committed.
    committed: std::sync::atomic::AtomicU64,
    /// Held while a batch is written, so batches commit in order.
    writing: tokio::sync::Mutex<()>,
    wake: Condvar,
    stop: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Queue {
    rows: Vec<InvocationRecord>,
    /// Batches taken so far.
    taken: u64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("url", &self.inner.url).finish()
    }
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    let text = super::pg_connect::error_text(&e);
    if super::pg_connect::unreachable(&e) {
        StoreError::unreachable(text)
    } else {
        StoreError(text)
    }
}

fn pool_err(pool: &Pool, e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        deadpool_postgres::PoolError::Timeout(kind) => StoreError::unreachable(super::pg_connect::pool_timeout_text(
            pool,
            kind,
            Some("store.pool-size"),
        )),
        other => StoreError(format!("PostgreSQL connection pool: {other}")),
    }
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError(format!("stored record is damaged: {e}"))
}

fn micros(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

fn unmicros(t: i64) -> u64 {
    u64::try_from(t).unwrap_or(0)
}

impl PgStore {
    /// Connect, check the schema, and apply missing migrations if
    /// `migrate` says so.
    pub fn open(settings: &PgSettings, migrate: Migrate) -> Result<PgStore, StoreError> {
        let (config, tls) = super::pg_connect::config(settings, "airlock").map_err(StoreError)?;
        let (rt, pool) = super::pg_connect::pool(
            settings,
            config.clone(),
            tls.clone(),
            ("database", "airlock-pg", 2),
            (settings.pool_size, POOL_WAIT),
        )
        .map_err(StoreError)?;
        let handle = rt.handle().clone();
        let inner = Arc::new(Inner {
            pool,
            watchers: Mutex::new(Vec::new()),
            rt: Mutex::new(Some(rt)),
            handle,
            url: settings.url.clone(),
            runs: Runs::default(),
        });
        let fail = |e: StoreError| StoreError(format!("{}: {}", settings.url, e.0));
        match migrate {
            Migrate::Apply => {
                inner.migrate(None).map_err(fail)?;
            }
            Migrate::Check => {
                let missing: Vec<i32> = inner
                    .migration_status()
                    .map_err(fail)?
                    .iter()
                    .filter(|m| m.applied_at.is_none())
                    .map(|m| m.version)
                    .collect();
                if !missing.is_empty() {
                    return Err(fail(StoreError(format!(
                        "the schema lacks migrations {missing:?}; run `{}`",
                        crate::hint::command("db migrate")
                    ))));
                }
            }
            Migrate::Skip => {}
        }
        inner.handle.spawn(listen(Arc::downgrade(&inner), config, tls));
        let flusher = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("airlock-pg-runs".into())
                .spawn(move || inner.run_flusher())
                .map_err(|e| StoreError(format!("cannot start the status writer thread: {e}")))?
        };
        Ok(PgStore {
            inner,
            flusher: Some(flusher),
        })
    }

    /// Apply migrations up to `target` (all when `None`); returns those
    /// applied now.
    pub fn migrate(&self, target: Option<i32>) -> Result<Vec<i32>, StoreError> {
        self.inner.migrate(target)
    }

    /// Every migration this airlock knows or the database has.
    pub fn migration_status(&self) -> Result<Vec<MigrationStatus>, StoreError> {
        self.inner.migration_status()
    }

    /// The server's version string.
    pub fn server_version(&self) -> Result<String, StoreError> {
        self.inner.block(async {
            let client = self.inner.client().await?;
            let row = client.row("SHOW server_version", &[]).await.map_err(pg_err)?;
            Ok(row.get::<_, String>(0))
        })
    }

    pub fn url(&self) -> &str {
        &self.inner.url
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.inner.runs.stop.store(true, std::sync::atomic::Ordering::Release);
        self.inner.runs.wake.notify_all();
        if let Some(f) = self.flusher.take() {
            let _ = f.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let rt = self.rt.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(rt) = rt {
            // Safe inside another runtime, unlike dropping it.
            rt.shutdown_background();
        }
    }
}

/// The database server's clock, in Unix microseconds: heartbeats are
/// stamped and judged by it, never by the nodes' own clocks, which may
/// disagree by more than a heartbeat's staleness.
const DB_NOW: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint";

/// The channel every change is announced on (`NOTIFY`), to wake the
/// waiters of every node (see [`Store::watch`]).
const CHANNEL: &str = "airlock_changes";

/// Announce a change when the caller's transaction commits.
async fn announce(c: &Conn) -> Result<(), StoreError> {
    c.exec("SELECT pg_notify($1, '')", &[&CHANNEL]).await.map_err(pg_err)?;
    Ok(())
}

/// Hold a connection that `LISTEN`s for changes and wake the watchers on
/// each, reconnecting after a failure (and waking them then, since
/// notifications sent meanwhile are lost), for as long as the store lives.
async fn listen(
    inner: std::sync::Weak<Inner>,
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
) {
    let mut failures = 0u32;
    loop {
        let result = match &tls {
            None => match config.connect(tokio_postgres::NoTls).await {
                Ok((client, connection)) => listen_on(&inner, &client, connection).await,
                Err(e) => Err(e),
            },
            Some(tls) => match config.connect(tls.clone()).await {
                Ok((client, connection)) => listen_on(&inner, &client, connection).await,
                Err(e) => Err(e),
            },
        };
        if inner.strong_count() == 0 {
            return;
        }
        if let Err(e) = result {
            if failures == 0 {
                tracing::warn!(
                    "lost the change notifications from PostgreSQL (polling meanwhile): {}",
                    pg_err(e).0
                );
            }
            failures = failures.saturating_add(1);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn listen_on<S, T>(
    inner: &std::sync::Weak<Inner>,
    client: &tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
) -> Result<(), tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let sql = format!("LISTEN {CHANNEL}");
    let subscribe = client.batch_execute(&sql);
    tokio::pin!(subscribe);
    loop {
        tokio::select! {
            done = &mut subscribe => { done?; break; }
            message = std::future::poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        }
    }
    // Whatever changed while not listening.
    wake(inner);
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => wake(inner),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        }
        if inner.strong_count() == 0 {
            return Ok(());
        }
    }
}

fn wake(inner: &std::sync::Weak<Inner>) {
    let Some(inner) = inner.upgrade() else { return };
    let mut watchers = inner.watchers.lock().unwrap_or_else(|p| p.into_inner());
    watchers.retain(|w| match w.upgrade() {
        Some(n) => {
            n.notify_waiters();
            true
        }
        None => false,
    });
}

type Client = deadpool_postgres::Object;

/// Run `wait` (which blocks on the database) so that, on a worker of a
/// multi-threaded runtime (the service), the other tasks queued on this
/// worker are not stalled meanwhile: tokio hands them to another thread.
pub(crate) fn off_worker<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(wait),
        _ => wait(),
    }
}

/// A transaction on a pooled connection. Dropped without [`Tx::commit`]
/// (an error, a refusal), its connection is closed rather than returned
/// to the pool, which rolls the transaction back on the server.
struct Tx {
    client: Option<Client>,
}

impl Tx {
    fn c(&self) -> &Conn {
        // Only `commit` takes it, consuming the Tx.
        self.client.as_ref().expect("a live transaction has its connection")
    }

    async fn commit(mut self) -> Result<(), StoreError> {
        let client = self.client.take().expect("a live transaction has its connection");
        match client.batch_execute("COMMIT").await {
            Ok(()) => Ok(()),
            Err(e) => {
                drop(deadpool_postgres::Object::take(client));
                Err(pg_err(e))
            }
        }
    }
}

impl Tx {
    /// End the transaction without a change (a lost claim, a refused
    /// vote): the connection goes back to the pool, so an expected outcome
    /// does not cost a new connection (and its TLS and password
    /// handshakes). An error closes it instead.
    async fn rollback(mut self) -> Result<(), StoreError> {
        let client = self.client.take().expect("a live transaction has its connection");
        match client.batch_execute("ROLLBACK").await {
            Ok(()) => Ok(()),
            Err(e) => {
                drop(deadpool_postgres::Object::take(client));
                Err(pg_err(e))
            }
        }
    }
}

impl Tx {
    /// The transaction ended on the server (committed in a pipeline):
    /// the connection goes back to the pool.
    fn done(mut self) {
        self.client.take();
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Detach and close: the server rolls back what was begun.
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

impl Inner {
    /// Drive `future` to completion on this thread, its I/O on the store's
    /// runtime. Works from any thread, inside another runtime or not.
    fn block<T>(&self, future: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        off_worker(|| self.block_here(future))
    }

    /// [`Inner::block`] for a caller already off the async workers.
    fn block_here<T>(&self, future: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let _context = self.handle.enter();
        futures_executor::block_on(future)
    }

    async fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {TOKEN_COLUMNS} WHERE t.hash = $1");
        let row = client.row_opt(&sql, &[&&hash[..]]).await.map_err(pg_err)?;
        row.as_ref().map(parse_token).transpose()
    }

    async fn client(&self) -> Result<Client, StoreError> {
        self.pool.get().await.map_err(|e| pool_err(&self.pool, e))
    }

    async fn begin(&self) -> Result<Tx, StoreError> {
        let client = self.client().await?;
        let tx = Tx { client: Some(client) };
        tx.c().batch_execute("BEGIN").await.map_err(pg_err)?;
        Ok(tx)
    }

    fn migrate(&self, target: Option<i32>) -> Result<Vec<i32>, StoreError> {
        // Fully migrated: no DDL at all (a role without rights to create
        // tables can then run the nodes; `airlock db migrate` under an
        // owner's role does the rest).
        if target.is_none() && self.migration_status()?.iter().all(|m| m.applied_at.is_some()) {
            return Ok(Vec::new());
        }
        self.block(async {
            let target = target.unwrap_or_else(migrations::latest);
            let mut applied_now = Vec::new();
            {
                // Under the lock too: two nodes creating it at once collide.
                let tx = self.begin().await?;
                tx.c().batch_execute(MIGRATION_LOCK_TIMEOUT).await.map_err(pg_err)?;
                tx.c()
                    .exec("SELECT pg_advisory_xact_lock($1)", &[&migrations::LOCK_KEY])
                    .await
                    .map_err(pg_err)?;
                tx.c().batch_execute(migrations::TABLE).await.map_err(pg_err)?;
                tx.commit().await?;
            }
            for m in MIGRATIONS.iter().filter(|m| m.version <= target) {
                let tx = Tx { client: Some(self.client().await?) };
                tx.c().batch_execute("BEGIN").await.map_err(pg_err)?;
                tx.c().batch_execute(MIGRATION_LOCK_TIMEOUT).await.map_err(pg_err)?;
                tx.c()
                    .exec("SELECT pg_advisory_xact_lock($1)", &[&migrations::LOCK_KEY])
                    .await
                    .map_err(pg_err)?;
                let existing = tx
                    .c()
                    .row_opt(
                        "SELECT checksum FROM airlock_migrations WHERE version = $1",
                        &[&m.version],
                    )
                    .await
                    .map_err(pg_err)?;
                match existing {
                    Some(row) => {
                        check_checksum(m, &row.get::<_, String>(0))?;
                        tx.rollback().await?;
                        continue;
                    }
                    None => {
                        tx.c().batch_execute(m.sql).await.map_err(|e| {
                            StoreError(format!("migration {} ({}) failed: {}", m.version, m.name, pg_err(e).0))
                        })?;
                        tx.c()
                            .exec(
                                "INSERT INTO airlock_migrations (version, name, checksum, applied_by) VALUES ($1, $2, $3, $4)",
                                &[&m.version, &m.name, &m.checksum(), &format!("airlock {}", env!("CARGO_PKG_VERSION"))],
                            )
                            .await
                            .map_err(pg_err)?;
                    }
                }
                tx.commit().await?;
                applied_now.push(m.version);
            }
            Ok(applied_now)
        })
    }

    fn migration_status(&self) -> Result<Vec<MigrationStatus>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let exists: bool = client
                .row("SELECT to_regclass('airlock_migrations') IS NOT NULL", &[])
                .await
                .map_err(pg_err)?
                .get(0);
            let rows = if exists {
                client
                    .rows(
                        "SELECT version, name, checksum, to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), applied_by FROM airlock_migrations ORDER BY version",
                        &[],
                    )
                    .await
                    .map_err(pg_err)?
            } else {
                Vec::new()
            };
            let mut out: Vec<MigrationStatus> = Vec::new();
            for m in MIGRATIONS {
                let row = rows.iter().find(|r| r.get::<_, i32>(0) == m.version);
                if let Some(row) = row {
                    check_checksum(m, &row.get::<_, String>(2))?;
                }
                out.push(MigrationStatus {
                    version: m.version,
                    name: m.name.to_string(),
                    applied_at: row.map(|r| r.get(3)),
                    applied_by: row.map(|r| r.get(4)),
                    unknown: false,
                });
            }
            for row in rows.iter().filter(|r| r.get::<_, i32>(0) > migrations::latest()) {
                out.push(MigrationStatus {
                    version: row.get(0),
                    name: row.get(1),
                    applied_at: Some(row.get(3)),
                    applied_by: Some(row.get(4)),
                    unknown: true,
                });
            }
            Ok(out)
        })
    }

    /// Write out everything queued so far; rows that fail stay queued, in
    /// front of newer ones.
    fn flush(&self) -> Result<(), StoreError> {
        let batch = self.runs.next_batch();
        // Waiting for another flush is waiting for the database too.
        off_worker(|| self.block_here(self.flush_until(batch)))
    }

    /// Return once batch `batch` is committed, writing what is queued if
    /// no one else is (see [`Runs`]).
    async fn flush_until(&self, batch: u64) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let _writing = self.runs.writing.lock().await;
        if self.runs.committed.load(Ordering::Acquire) >= batch {
            return Ok(());
        }
        let (taken, number) = {
            let mut queue = self.runs.queue();
            queue.taken += 1;
            let rows = std::mem::take(&mut queue.rows);
            (Taken { runs: &self.runs, rows }, queue.taken)
        };
        if !taken.rows.is_empty() {
            // On an error, or if this future is dropped before the write
            // finished, `taken` puts the rows back (see `Taken`).
            self.write_runs(&taken.rows).await?;
        }
        taken.written();
        self.runs.committed.fetch_max(number, Ordering::AcqRel);
        Ok(())
    }

    /// One statement for all of `rows` (at most one per invocation). With
    /// a final row among them it is committed and synced on its own; rows
    /// of runs still in progress only are committed without waiting for
    /// the disk, like SQLite's `synchronous=NORMAL` (see
    /// [`Store::record_run`]), in one round trip.
    async fn write_runs(&self, rows: &[InvocationRecord]) -> Result<(), StoreError> {
        let mut columns = RunColumns::default();
        for r in rows {
            columns.ids.push(r.id.as_str());
            columns.states.push(r.state.as_str());
            columns.actions.push(r.action.as_str());
            columns.callers.push(r.caller.name.as_str());
            columns.created.push(micros(r.created_at));
            columns.bodies.push(serde_json::to_string(r).map_err(json_err)?);
        }
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
            &columns.ids,
            &columns.states,
            &columns.actions,
            &columns.callers,
            &columns.created,
            &columns.bodies,
        ];
        let client = self.client().await?;
        if rows.iter().any(|r| r.state.is_final()) {
            client.exec(UPSERT_RUNS, &params).await.map_err(pg_err)?;
            return Ok(());
        }
        let tx = Tx { client: Some(client) };
        let statement = tx.c().prepare_cached(UPSERT_RUNS).await.map_err(pg_err)?;
        // Sent together, answered together: the driver pipelines
        // requests polled at once, in the order they were polled.
        let (begin, upsert, commit) = tokio::join!(
            biased;
            tx.c().batch_execute("BEGIN; SET LOCAL synchronous_commit TO OFF"),
            tx.c().execute(&statement, &params),
            tx.c().batch_execute("COMMIT"),
        );
        begin.map_err(pg_err)?;
        upsert.map_err(pg_err)?;
        commit.map_err(pg_err)?;
        tx.done();
        Ok(())
    }

    fn run_flusher(&self) {
        use std::sync::atomic::Ordering;
        while !self.runs.stop.load(Ordering::Acquire) {
            {
                let queue = self.runs.queue();
                if queue.rows.is_empty() {
                    drop(
                        self.runs
                            .wake
                            .wait_timeout(queue, Duration::from_millis(200))
                            .map(|(guard, _)| guard)
                            .unwrap_or_else(|p| p.into_inner().0),
                    );
                    continue;
                }
            }
            std::thread::sleep(RUN_BATCH_WINDOW);
            if let Err(e) = self.flush() {
                tracing::warn!("cannot store invocation status rows (will retry): {}", e.0);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if let Err(e) = self.flush() {
            tracing::warn!("status rows not stored at close: {}", e.0);
        }
    }
}

impl Runs {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `row`; returns the batch it goes out in and whether the
    /// queue is full.
    fn push(&self, row: &InvocationRecord) -> (u64, bool) {
        let mut queue = self.queue();
        queue_row(&mut queue.rows, row);
        (queue.taken + 1, queue.rows.len() >= MAX_PENDING_RUNS)
    }

    /// The batch that takes everything queued now.
    fn next_batch(&self) -> u64 {
        self.queue().taken + 1
    }
}

/// A batch taken from the queue. Unless [`Taken::written`] says it was
/// committed, dropping it (an error, or the writing future dropped
/// mid-way) puts its rows back in front of newer ones, before the writer
/// lock is released: writing them again is harmless (the upsert never
/// moves a row back), losing them is not.
struct Taken<'a> {
    runs: &'a Runs,
    rows: Vec<InvocationRecord>,
}

impl Taken<'_> {
    fn written(mut self) {
        self.rows.clear();
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.rows.is_empty() {
            return;
        }
        let mut queue = self.runs.queue();
        let newer = std::mem::replace(&mut queue.rows, std::mem::take(&mut self.rows));
        for row in &newer {
            queue_row(&mut queue.rows, row);
        }
    }
}

/// The columns of a batch of status rows, as arrays for [`UPSERT_RUNS`].
#[derive(Default)]
struct RunColumns<'a> {
    ids: Vec<&'a str>,
    states: Vec<&'a str>,
    actions: Vec<&'a str>,
    callers: Vec<&'a str>,
    created: Vec<i64>,
    bodies: Vec<String>,
}

/// Store runs' rows, new or over their earlier state, from one array per
/// column. A final row is never replaced by a later write of a state in
/// progress. The rows must be of distinct invocations (one statement
/// cannot change a row twice).
const UPSERT_RUNS: &str = "INSERT INTO invocations (id, state, action, caller, created_at, body)
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[])
     ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, body = EXCLUDED.body
     WHERE invocations.state NOT IN ('succeeded', 'failed', 'denied', 'expired')";

/// Queue `row`, replacing a queued row of the same invocation (the newer
/// state is what would be written last anyway: one write, not two) —
/// except a final row, which a later in-progress one never replaces (as
/// the upsert never does in the table).
fn queue_row(pending: &mut Vec<InvocationRecord>, row: &InvocationRecord) {
    if let Some(i) = pending.iter().position(|r| r.id == row.id) {
        if pending[i].state.is_final() && !row.state.is_final() {
            return;
        }
        pending.remove(i);
    }
    pending.push(row.clone());
}

fn check_checksum(m: &Migration, stored: &str) -> Result<(), StoreError> {
    if stored == m.checksum() {
        return Ok(());
    }
    Err(StoreError(format!(
        "migration {} ({}) in the database differs from this airlock's (checksum {stored}, expected {}); the schema was changed by hand or by another build: restore it, or use the airlock build that migrated it",
        m.version,
        m.name,
        m.checksum()
    )))
}

/// Insert an invocation's row; `on_conflict` says what an existing one gets.
async fn write_invocation(c: &Conn, r: &InvocationRecord, on_conflict: &str) -> Result<(), StoreError> {
    c.exec(
        &format!(
            "INSERT INTO invocations (id, state, action, caller, created_at, body) VALUES ($1, $2, $3, $4, $5, $6){on_conflict}"
        ),
        &[
            &r.id,
            &r.state.as_str(),
            &r.action,
            &r.caller.name,
            &micros(r.created_at),
            &serde_json::to_string(r).map_err(json_err)?,
        ],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

async fn load_approval(c: &Conn, id: &str, lock: bool) -> Result<Option<ApprovalRecord>, StoreError> {
    let sql = if lock {
        "SELECT body FROM approvals WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT body FROM approvals WHERE id = $1"
    };
    let Some(row) = c.row_opt(sql, &[&id]).await.map_err(pg_err)? else {
        return Ok(None);
    };
    let mut record: ApprovalRecord = serde_json::from_str(row.get(0)).map_err(json_err)?;
    let rows = c
        .rows("SELECT body FROM decisions WHERE approval = $1 ORDER BY seq", &[&id])
        .await
        .map_err(pg_err)?;
    record.decisions = rows
        .iter()
        .map(|r| serde_json::from_str::<DecisionRecord>(r.get(0)).map_err(json_err))
        .collect::<Result<_, _>>()?;
    Ok(Some(record))
}

/// The approval row's body: the record without its decisions.
fn approval_body(record: &ApprovalRecord) -> Result<String, StoreError> {
    let mut head = record.clone();
    head.decisions.clear();
    serde_json::to_string(&head).map_err(json_err)
}

const TOKEN_COLUMNS: &str = "t.id, t.identity, i.kind, t.roles, t.created_at, t.revoked_at FROM tokens t JOIN identities i ON i.name = t.identity";

fn parse_token(row: &Row) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: row.get(0),
        identity: row.get(1),
        kind: IdentityKind::parse(row.get(2)).map_err(StoreError)?,
        roles: serde_json::from_str(row.get(3)).map_err(json_err)?,
        created_at: unmicros(row.get(4)),
        revoked_at: row.get::<_, Option<i64>>(5).map(unmicros),
    })
}

async fn token_list(c: &Conn, tail: &str) -> Result<Vec<TokenRecord>, StoreError> {
    let rows = c
        .rows(&format!("SELECT {TOKEN_COLUMNS} {tail}"), &[])
        .await
        .map_err(pg_err)?;
    rows.iter().map(parse_token).collect()
}

async fn owe(c: &Conn, audit: &str) -> Result<(), StoreError> {
    c.exec("INSERT INTO audit_outbox (body) VALUES ($1)", &[&audit])
        .await
        .map_err(pg_err)?;
    Ok(())
}

/// Move invocation `id` to `to` if it is in one of `from`, inside the
/// caller's transaction (the row locked first); `false` when it is
/// elsewhere or unknown.
async fn move_invocation(
    c: &Conn,
    id: &str,
    from: &[InvocationStatus],
    to: InvocationStatus,
    outcome: Option<&InvocationOutcome>,
    runner: Option<&str>,
) -> Result<bool, StoreError> {
    let Some(row) = c
        .row_opt("SELECT body FROM invocations WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .map_err(pg_err)?
    else {
        return Ok(false);
    };
    let mut record: InvocationRecord = serde_json::from_str(row.get(0)).map_err(json_err)?;
    if !from.contains(&record.state) {
        return Ok(false);
    }
    record.state = to;
    record.runner = runner.map(str::to_string);
    record.updated_at = crate::time::now_micros();
    if let Some(outcome) = outcome {
        record.outcome = Some(outcome.clone());
    }
    c.exec(
        "UPDATE invocations SET state = $2, body = $3 WHERE id = $1",
        &[&id, &to.as_str(), &serde_json::to_string(&record).map_err(json_err)?],
    )
    .await
    .map_err(pg_err)?;
    Ok(true)
}

impl Store for PgStore {
    fn add_token(
        &self,
        identity: &str,
        kind: IdentityKind,
        token: &TokenRecord,
        hash: &[u8; 32],
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner.block(async {
            let tx = inner.begin().await?;
            // Two nodes adding the first token of one identity at once:
            // the second waits here and then sees the first's row.
            tx.c()
                .exec(
                    "INSERT INTO identities (name, kind, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
                    &[&identity, &kind.as_str(), &micros(token.created_at)],
                )
                .await
                .map_err(pg_err)?;
            let existing: String = tx
                .c()
                .row("SELECT kind FROM identities WHERE name = $1 FOR SHARE", &[&identity])
                .await
                .map_err(pg_err)?
                .get(0);
            if existing != kind.as_str() {
                return Err(StoreError(format!(
                    "identity `{identity}` exists as {existing}, not {kind}; use another name"
                )));
            }
            let roles = serde_json::to_string(&token.roles).map_err(json_err)?;
            tx.c()
                .exec(
                    "INSERT INTO tokens (id, identity, roles, hash, created_at) VALUES ($1, $2, $3, $4, $5)",
                    &[&token.id, &identity, &roles, &&hash[..], &micros(token.created_at)],
                )
                .await
                .map_err(pg_err)?;
            tx.commit().await
        })
    }

    fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        self.inner.block(self.inner.token_by_hash(hash))
    }

    fn token_by_hash_async<'a>(&'a self, hash: &'a [u8; 32]) -> super::StoreFuture<'a, Option<TokenRecord>> {
        // Polled by the caller; the connection's I/O stays on the store's
        // runtime (see `pg_connect::manager`).
        Box::pin(self.inner.token_by_hash(hash))
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let inner = &self.inner;
        inner.block(async { token_list(&*inner.client().await?, "ORDER BY t.created_at, t.id").await })
    }

    fn revoke_token(&self, id: &str, at_micros: u64) -> Result<bool, StoreError> {
        let inner = &self.inner;
        inner.block(async {
            let client = inner.client().await?;
            let exists = client
                .row_opt("SELECT 1 FROM tokens WHERE id = $1", &[&id])
                .await
                .map_err(pg_err)?
                .is_some();
            client
                .exec(
                    "UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                    &[&id, &micros(at_micros)],
                )
                .await
                .map_err(pg_err)?;
            Ok(exists)
        })
    }

    fn insert_approval(&self, approval: &ApprovalRecord) -> Result<(), StoreError> {
        let inner = &self.inner;
        let body = approval_body(approval)?;
        inner.block(async {
            inner
                .client()
                .await?
                .exec(
                    "INSERT INTO approvals (id, state, action, caller, invocation, created_at, body) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &approval.id,
                        &approval.state.as_str(),
                        &approval.action,
                        &approval.caller,
                        &approval.invocation,
                        &micros(approval.created_at),
                        &body,
                    ],
                )
                .await
                .map_err(pg_err)?;
            Ok(())
        })
    }

    fn approval(&self, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        let inner = &self.inner;
        inner.block(async { load_approval(&*inner.client().await?, id, false).await })
    }

    fn approvals(&self, state: Option<ApprovalState>, limit: usize) -> Result<Vec<ApprovalRecord>, StoreError> {
        let inner = &self.inner;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        inner.block(async {
            let client = inner.client().await?;
            // One snapshot for the list and each request's decisions.
            let rows = match state {
                Some(state) => client
                    .rows(
                        "SELECT a.body, COALESCE((SELECT json_agg(d.body::json ORDER BY d.seq)::text FROM decisions d WHERE d.approval = a.id), '[]')
                         FROM approvals a WHERE a.state = $1 ORDER BY a.created_at DESC, a.id LIMIT $2",
                        &[&state.as_str(), &limit],
                    )
                    .await,
                None => client
                    .rows(
                        "SELECT a.body, COALESCE((SELECT json_agg(d.body::json ORDER BY d.seq)::text FROM decisions d WHERE d.approval = a.id), '[]')
                         FROM approvals a ORDER BY a.created_at DESC, a.id LIMIT $1",
                        &[&limit],
                    )
                    .await,
            }
            .map_err(pg_err)?;
            rows.iter()
                .map(|row| {
                    let mut record: ApprovalRecord = serde_json::from_str(row.get(0)).map_err(json_err)?;
                    record.decisions = serde_json::from_str(row.get(1)).map_err(json_err)?;
                    Ok(record)
                })
                .collect()
        })
    }

    fn count_approvals(&self, state: ApprovalState) -> Result<u64, StoreError> {
        let inner = &self.inner;
        inner.block(async {
            let client = inner.client().await?;
            let row = client
                .row("SELECT COUNT(*) FROM approvals WHERE state = $1", &[&state.as_str()])
                .await
                .map_err(pg_err)?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
    }

    fn update_approval(&self, id: &str, update: &mut ApprovalUpdate<'_>) -> Result<ApprovalRecord, UpdateError> {
        let inner = &self.inner;
        let result: Result<Result<ApprovalRecord, UpdateError>, StoreError> = inner.block(async {
            let tx = inner.begin().await?;
            let Some(before) = load_approval(tx.c(), id, true).await? else {
                tx.rollback().await?;
                return Ok(Err(UpdateError::NotFound(id.to_string())));
            };
            // Locked for the rest of the transaction: a revocation waits
            // for this vote to commit, or this read waits for it.
            let live = token_list(
                tx.c(),
                "WHERE t.revoked_at IS NULL ORDER BY t.created_at, t.id FOR SHARE OF t",
            )
            .await?;
            let mut after = before.clone();
            let audit = match update(&mut after, &live) {
                Ok(audit) => audit,
                Err(refusal) => {
                    tx.rollback().await?;
                    return Ok(Err(UpdateError::Refused(refusal)));
                }
            };
            if after.decisions.len() < before.decisions.len()
                || after.decisions[..before.decisions.len()] != before.decisions[..]
            {
                return Ok(Err(StoreError("an update may only add decisions".into()).into()));
            }
            for (seq, decision) in after.decisions.iter().enumerate().skip(before.decisions.len()) {
                let body = serde_json::to_string(decision).map_err(json_err)?;
                let inserted = tx
                    .c()
                    .exec(
                        "INSERT INTO decisions (approval, identity, seq, body) VALUES ($1, $2, $3, $4)",
                        &[&id, &decision.identity, &i32::try_from(seq).unwrap_or(i32::MAX), &body],
                    )
                    .await;
                if let Err(e) = inserted {
                    // The primary key is the last line of defence against
                    // one identity being counted twice.
                    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                        return Ok(Err(UpdateError::Refused(Refusal::AlreadyDecided {
                            identity: decision.identity.clone(),
                            id: id.to_string(),
                        })));
                    }
                    return Err(pg_err(e));
                }
            }
            tx.c()
                .exec(
                    "UPDATE approvals SET state = $2, body = $3 WHERE id = $1",
                    &[&id, &after.state.as_str(), &approval_body(&after)?],
                )
                .await
                .map_err(pg_err)?;
            if let Some(audit) = &audit {
                owe(tx.c(), audit).await?;
            }
            announce(tx.c()).await?;
            tx.commit().await?;
            Ok(Ok(after))
        });
        result.map_err(UpdateError::Store)?
    }

    fn record_run(&self, invocation: &InvocationRecord) -> Result<(), StoreError> {
        let (_, full) = self.inner.runs.push(invocation);
        if full {
            return self.inner.flush();
        }
        self.inner.runs.wake.notify_one();
        Ok(())
    }

    fn finish_run(&self, invocation: &InvocationRecord) -> Result<(), StoreError> {
        // Committed (with whatever else is queued, in order) before this
        // returns: a final row outlives the process once acknowledged.
        let (batch, _) = self.inner.runs.push(invocation);
        let inner = &self.inner;
        off_worker(|| inner.block_here(inner.flush_until(batch)))
    }

    fn finish_run_async<'a>(&'a self, invocation: &'a InvocationRecord) -> super::StoreFuture<'a, ()> {
        let (batch, _) = self.inner.runs.push(invocation);
        // A caller that stops waiting leaves its row queued (see `Taken`).
        Box::pin(self.inner.flush_until(batch))
    }

    fn adopt_orphaned_runs(&self) -> Result<usize, StoreError> {
        // Final rows are committed before `finish_run` returns: an ended
        // node leaves none behind.
        Ok(0)
    }

    fn insert_invocation(&self, invocation: &InvocationRecord) -> Result<(), StoreError> {
        self.inner.flush()?;
        let inner = &self.inner;
        inner.block(async { write_invocation(&*inner.client().await?, invocation, "").await })
    }

    fn invocation(&self, id: &str) -> Result<Option<InvocationRecord>, StoreError> {
        self.inner.flush()?;
        let inner = &self.inner;
        inner.block(async {
            let row = inner
                .client()
                .await?
                .row_opt("SELECT body FROM invocations WHERE id = $1", &[&id])
                .await
                .map_err(pg_err)?;
            row.map(|r| serde_json::from_str(r.get(0)).map_err(json_err))
                .transpose()
        })
    }

    fn invocation_page(
        &self,
        query: &super::InvocationQuery,
        limit: usize,
    ) -> Result<Vec<InvocationRecord>, StoreError> {
        self.inner.flush()?;
        let inner = &self.inner;
        let (sql, values) = super::page_sql(query, limit, |n| format!("${n}"));
        inner.block(async {
            let client = inner.client().await?;
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
                .iter()
                .map(|v| match v {
                    super::PageValue::Text(t) => t as &(dyn tokio_postgres::types::ToSql + Sync),
                    super::PageValue::Int(i) => i as &(dyn tokio_postgres::types::ToSql + Sync),
                })
                .collect();
            let rows = client.rows(&sql, &params).await.map_err(pg_err)?;
            rows.iter()
                .map(|r| serde_json::from_str(r.get(0)).map_err(json_err))
                .collect()
        })
    }

    fn invocations(&self, state: Option<InvocationStatus>, limit: usize) -> Result<Vec<InvocationRecord>, StoreError> {
        self.inner.flush()?;
        let inner = &self.inner;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        inner.block(async {
            let client = inner.client().await?;
            let rows = match state {
                Some(state) => {
                    client
                        .rows(
                            "SELECT body FROM invocations WHERE state = $1 ORDER BY created_at DESC, id LIMIT $2",
                            &[&state.as_str(), &limit],
                        )
                        .await
                }
                None => {
                    client
                        .rows(
                            "SELECT body FROM invocations ORDER BY created_at DESC, id LIMIT $1",
                            &[&limit],
                        )
                        .await
                }
            }
            .map_err(pg_err)?;
            rows.iter()
                .map(|r| serde_json::from_str(r.get(0)).map_err(json_err))
                .collect()
        })
    }

    fn transition_invocation(
        &self,
        id: &str,
        from: &[InvocationStatus],
        to: InvocationStatus,
        outcome: Option<&InvocationOutcome>,
    ) -> Result<bool, StoreError> {
        self.inner.flush()?;
        let inner = &self.inner;
        inner.block(async {
            let tx = inner.begin().await?;
            if !move_invocation(tx.c(), id, from, to, outcome, None).await? {
                tx.rollback().await?;
                return Ok(false);
            }
            announce(tx.c()).await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn claim_invocation(&self, id: &str, from: &[InvocationStatus], runner: &str) -> Result<bool, StoreError> {
        self.inner.flush()?;
        let inner = &self.inner;
        inner.block(async {
            let tx = inner.begin().await?;
            if !move_invocation(tx.c(), id, from, InvocationStatus::Running, None, Some(runner)).await? {
                // Another node claimed it first: the expected outcome for
                // every node's sweeper but one.
                tx.rollback().await?;
                return Ok(false);
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    fn end_invocation(&self, ending: &InvocationEnding<'_>) -> Result<bool, StoreError> {
        self.inner.flush()?;
        let inner = &self.inner;
        inner.block(async {
            let tx = inner.begin().await?;
            if let Some((approval, reason)) = ending.expire_approval {
                let Some(mut record) = load_approval(tx.c(), approval, true).await? else {
                    tx.rollback().await?;
                    return Ok(false);
                };
                if record.state != ApprovalState::Approved {
                    tx.rollback().await?;
                    return Ok(false);
                }
                record.state = ApprovalState::Expired;
                record.reason = Some(reason.to_string());
                tx.c()
                    .exec(
                        "UPDATE approvals SET state = $2, body = $3 WHERE id = $1",
                        &[&approval, &record.state.as_str(), &approval_body(&record)?],
                    )
                    .await
                    .map_err(pg_err)?;
            }
            // Dropping the transaction without a commit also undoes the
            // request's expiry above.
            if !move_invocation(
                tx.c(),
                ending.invocation,
                ending.from,
                ending.to,
                Some(ending.outcome),
                None,
            )
            .await?
            {
                tx.rollback().await?;
                return Ok(false);
            }
            owe(tx.c(), ending.audit).await?;
            announce(tx.c()).await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn drain_audit_outbox(
        &self,
        append: &mut dyn FnMut(Vec<String>) -> Result<(), Refusal>,
    ) -> Result<usize, UpdateError> {
        let inner = &self.inner;
        // Nearly always nothing is owed: look without locking.
        let any = inner.block(async {
            let client = inner.client().await?;
            let row = client
                .row_opt("SELECT seq FROM audit_outbox LIMIT 1", &[])
                .await
                .map_err(pg_err)?;
            Ok(row.is_some())
        })?;
        if !any {
            return Ok(0);
        }
        // Locked until the commit: a concurrent drain (any node) waits,
        // then skips the rows this one removed.
        let (tx, rows) = inner.block(async {
            let tx = inner.begin().await?;
            let rows = tx
                .c()
                .rows("SELECT seq, body FROM audit_outbox ORDER BY seq FOR UPDATE", &[])
                .await
                .map_err(pg_err)?;
            Ok((tx, rows))
        })?;
        if rows.is_empty() {
            return Ok(0);
        }
        // Exactly the rows read: a sequence number is taken at insert, so a
        // lower one may commit after a higher one was read.
        let seqs: Vec<i64> = rows.iter().map(|r| r.get::<_, i64>(0)).collect();
        let count = rows.len();
        // Called outside any `block`: appending does I/O of its own (the
        // audit trail's database, which drives its own futures).
        append(rows.iter().map(|r| r.get::<_, String>(1)).collect())?;
        inner.block(async {
            tx.c()
                .exec("DELETE FROM audit_outbox WHERE seq = ANY($1)", &[&seqs])
                .await
                .map_err(pg_err)?;
            tx.commit().await
        })?;
        Ok(count)
    }

    fn shared(&self) -> bool {
        true
    }

    fn shared_vault(&self) -> Option<Arc<dyn crate::vault::shared::SharedVault>> {
        Some(Arc::new(PgVault(self.inner.clone())))
    }

    fn watch(&self, changed: std::sync::Weak<tokio::sync::Notify>) {
        self.inner
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(changed);
    }

    fn heartbeat(&self, node: &NodeRecord, processes: &[&str]) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner.block(async {
            // A heartbeat late by seconds is as bad as none: bounded, so a
            // stuck connection makes the node unhealthy instead of hanging.
            let beat = async {
                let tx = inner.begin().await?;
                tx.c()
                    .exec(
                        &format!(
                            "INSERT INTO nodes (id, version, address, started_at, last_seen) VALUES ($1, $2, $3, $4, {DB_NOW})
                             ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, address = EXCLUDED.address,
                               started_at = EXCLUDED.started_at, last_seen = EXCLUDED.last_seen"
                        ),
                        &[&node.id, &node.version, &node.address, &micros(node.started_at)],
                    )
                    .await
                    .map_err(pg_err)?;
                let ids: Vec<&str> = processes.to_vec();
                // Rows of processes gone for a day are of no more use.
                tx.c()
                    .exec(
                        &format!("DELETE FROM processes WHERE last_seen < {DB_NOW} - 86400000000"),
                        &[],
                    )
                    .await
                    .map_err(pg_err)?;
                tx.c()
                    .exec(
                        &format!(
                            "INSERT INTO processes (id, node, last_seen) SELECT p, $2, {DB_NOW} FROM unnest($1::text[]) AS p
                             ON CONFLICT (id) DO UPDATE SET node = EXCLUDED.node, last_seen = EXCLUDED.last_seen"
                        ),
                        &[&ids, &node.id],
                    )
                    .await
                    .map_err(pg_err)?;
                tx.commit().await
            };
            match tokio::time::timeout(HEARTBEAT_DEADLINE, beat).await {
                Ok(done) => done,
                Err(_) => Err(StoreError::unreachable(format!(
                    "PostgreSQL: the heartbeat took longer than {} s",
                    HEARTBEAT_DEADLINE.as_secs()
                ))),
            }
        })
    }

    fn leave(&self, processes: &[&str]) -> Result<(), StoreError> {
        let inner = &self.inner;
        let ids: Vec<&str> = processes.to_vec();
        inner.block(async {
            inner
                .client()
                .await?
                // An hour ago: dead to every node at once, and kept (not
                // deleted, which would read as "never seen") until the
                // daily clean-up.
                .exec(
                    &format!("UPDATE processes SET last_seen = {DB_NOW} - 3600000000 WHERE id = ANY($1)"),
                    &[&ids],
                )
                .await
                .map_err(pg_err)?;
            Ok(())
        })
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let inner = &self.inner;
        inner.block(async {
            let rows = inner
                .client()
                .await?
                .rows(
                    &format!(
                        "SELECT id, version, address, started_at, last_seen, GREATEST(0, {DB_NOW} - last_seen) FROM nodes ORDER BY id"
                    ),
                    &[],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows
                .iter()
                .map(|r| NodeRecord {
                    id: r.get(0),
                    version: r.get(1),
                    address: r.get(2),
                    started_at: unmicros(r.get(3)),
                    last_seen: unmicros(r.get(4)),
                    silent_for_micros: unmicros(r.get(5)),
                })
                .collect())
        })
    }

    fn process(&self, id: &str) -> Result<Option<ProcessRecord>, StoreError> {
        let inner = &self.inner;
        inner.block(async {
            let row = inner
                .client()
                .await?
                .row_opt(
                    &format!(
                        "SELECT id, node, last_seen, GREATEST(0, {DB_NOW} - last_seen) FROM processes WHERE id = $1"
                    ),
                    &[&id],
                )
                .await
                .map_err(pg_err)?;
            Ok(row.map(|r| ProcessRecord {
                id: r.get(0),
                node: r.get(1),
                last_seen: unmicros(r.get(2)),
                silent_for_micros: unmicros(r.get(3)),
            }))
        })
    }

    fn create_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner.block(async {
            inner
                .client()
                .await?
                .exec(
                    "INSERT INTO console_sessions (id_hash, token_hash, csrf, created_at, last_seen) VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &&s.id_hash[..],
                        &&s.token_hash[..],
                        &s.csrf,
                        &micros(s.created_at),
                        &micros(s.last_seen),
                    ],
                )
                .await
                .map_err(pg_err)?;
            Ok(())
        })
    }

    fn session(
        &self,
        id_hash: &[u8; 32],
        idle_since: u64,
        now: u64,
        touch_after: u64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let inner = &self.inner;
        inner.block(async {
            let client = inner.client().await?;
            let Some(row) = client
                .row_opt(
                    "SELECT token_hash, csrf, created_at, last_seen FROM console_sessions WHERE id_hash = $1",
                    &[&&id_hash[..]],
                )
                .await
                .map_err(pg_err)?
            else {
                return Ok(None);
            };
            let last_seen = unmicros(row.get(3));
            if last_seen < idle_since {
                client
                    .exec("DELETE FROM console_sessions WHERE id_hash = $1", &[&&id_hash[..]])
                    .await
                    .map_err(pg_err)?;
                return Ok(None);
            }
            let Ok(token_hash) = <[u8; 32]>::try_from(row.get::<_, &[u8]>(0)) else {
                return Err(StoreError("a console session row is damaged (token hash)".into()));
            };
            let mut session = SessionRecord {
                id_hash: *id_hash,
                token_hash,
                csrf: row.get(1),
                created_at: unmicros(row.get(2)),
                last_seen,
            };
            if now.saturating_sub(last_seen) >= touch_after {
                client
                    .exec(
                        "UPDATE console_sessions SET last_seen = GREATEST(last_seen, $2) WHERE id_hash = $1",
                        &[&&id_hash[..], &micros(now)],
                    )
                    .await
                    .map_err(pg_err)?;
                session.last_seen = now;
            }
            Ok(Some(session))
        })
    }

    fn remove_session(&self, id_hash: &[u8; 32]) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner.block(async {
            inner
                .client()
                .await?
                .exec("DELETE FROM console_sessions WHERE id_hash = $1", &[&&id_hash[..]])
                .await
                .map_err(pg_err)?;
            Ok(())
        })
    }

    fn charge(&self, charges: &[Charge]) -> Result<Result<(), Exceeded>, StoreError> {
        let inner = &self.inner;
        inner.block(async {
            // One window: one statement, autocommitted (one round trip).
            // Several: one transaction, windows locked in a fixed order.
            let ordered = super::sqlite::ordered(charges);
            if let [(index, c)] = ordered[..] {
                let client = inner.client().await?;
                let charged = client
                    .row_opt(CHARGE_PG, &[&c.key, &c.window_start, &c.window_end, &c.amount, &c.max])
                    .await
                    .map_err(pg_err)?;
                if charged.is_some() {
                    return Ok(Ok(()));
                }
                let used = used_of(&client, c).await?;
                return Ok(Err(Exceeded { index, used }));
            }
            let tx = inner.begin().await?;
            for (index, c) in ordered {
                let charged = tx
                    .c()
                    .row_opt(CHARGE_PG, &[&c.key, &c.window_start, &c.window_end, &c.amount, &c.max])
                    .await
                    .map_err(pg_err)?;
                if charged.is_none() {
                    let used = used_of(tx.c(), c).await?;
                    tx.rollback().await?;
                    return Ok(Err(Exceeded { index, used }));
                }
            }
            tx.commit().await?;
            Ok(Ok(()))
        })
    }

    fn usage(&self, windows: &[(String, i64)]) -> Result<Vec<i64>, StoreError> {
        let inner = &self.inner;
        inner.block(async {
            let client = inner.client().await?;
            let mut out = Vec::with_capacity(windows.len());
            for (key, start) in windows {
                let row = client
                    .row_opt(
                        "SELECT used FROM usage_windows WHERE key = $1 AND window_start = $2",
                        &[key, start],
                    )
                    .await
                    .map_err(pg_err)?;
                out.push(row.map_or(0, |r| r.get(0)));
            }
            Ok(out)
        })
    }

    fn prune_usage(&self, before: i64) -> Result<usize, StoreError> {
        let inner = &self.inner;
        inner.block(async {
            let n = inner
                .client()
                .await?
                .exec("DELETE FROM usage_windows WHERE window_end < $1", &[&before])
                .await
                .map_err(pg_err)?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn prune_sessions(&self, idle_since: u64) -> Result<usize, StoreError> {
        let inner = &self.inner;
        inner.block(async {
            let client = inner.client().await?;
            client
                .exec(
                    "DELETE FROM console_sessions WHERE last_seen < $1",
                    &[&micros(idle_since)],
                )
                .await
                .map_err(pg_err)?;
            let live: i64 = client
                .row("SELECT count(*) FROM console_sessions", &[])
                .await
                .map_err(pg_err)?
                .get(0);
            Ok(usize::try_from(live).unwrap_or(usize::MAX))
        })
    }
}

/// One window's charge (see the SQLite store's): PostgreSQL locks the
/// conflicting row and re-checks the guard on its newest version, so
/// concurrent charges queue up and none passes the limit.
const CHARGE_PG: &str = "INSERT INTO usage_windows (key, window_start, window_end, used) VALUES ($1, $2, $3, $4)
ON CONFLICT (key, window_start) DO UPDATE SET used = usage_windows.used + excluded.used
WHERE usage_windows.used <= $5 - excluded.used
RETURNING used";

/// What window `c` has used.
async fn used_of(conn: &Conn, c: &Charge) -> Result<i64, StoreError> {
    Ok(conn
        .row_opt(
            "SELECT used FROM usage_windows WHERE key = $1 AND window_start = $2",
            &[&c.key, &c.window_start],
        )
        .await
        .map_err(pg_err)?
        .map_or(0, |r| r.get(0)))
}

/// The vault document in the `vault` table (see [`crate::vault::shared`]).
struct PgVault(Arc<Inner>);

impl crate::vault::shared::SharedVault for PgVault {
    fn describe(&self) -> String {
        format!("{} (table vault)", self.0.url)
    }

    fn load(&self) -> Result<Option<(String, i64)>, String> {
        let inner = &self.0;
        inner
            .block(async {
                let row = inner
                    .client()
                    .await?
                    .row_opt("SELECT document, version FROM vault WHERE id = 1", &[])
                    .await
                    .map_err(pg_err)?;
                Ok(row.map(|r| (r.get(0), r.get(1))))
            })
            .map_err(|e| e.0)
    }

    fn version(&self) -> Result<Option<i64>, String> {
        let inner = &self.0;
        inner
            .block(async {
                let row = inner
                    .client()
                    .await?
                    .row_opt("SELECT version FROM vault WHERE id = 1", &[])
                    .await
                    .map_err(pg_err)?;
                Ok(row.map(|r| r.get(0)))
            })
            .map_err(|e| e.0)
    }

    fn replace(&self, expected: Option<i64>, document: &str) -> Result<bool, String> {
        let inner = &self.0;
        inner
            .block(async {
                let client = inner.client().await?;
                let changed = match expected {
                    None => client
                        .exec(
                            "INSERT INTO vault (id, document, version) VALUES (1, $1, 1) ON CONFLICT (id) DO NOTHING",
                            &[&document],
                        )
                        .await,
                    Some(v) => {
                        client
                            .exec(
                                "UPDATE vault SET document = $1, version = version + 1 WHERE id = 1 AND version = $2",
                                &[&document, &v],
                            )
                            .await
                    }
                }
                .map_err(pg_err)?;
                Ok(changed == 1)
            })
            .map_err(|e| e.0)
    }
}
