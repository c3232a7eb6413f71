//! The audit trail in PostgreSQL (`[audit] backend = "postgres"`).
//!
//! The data directory's log stays the engine: the same writer, chain,
//! group commit, torn-tail repair and checkpoints. What changes is when a
//! group counts as durable: after its `fdatasync`, its records are also
//! inserted into PostgreSQL, in one transaction per group (concurrent
//! invocations share it as they share the sync), and only once that
//! transaction committed are the appends waiting on the group released
//! ([`mirror`]). A failed commit is a failed write: the group is cut off
//! the file again, every append in it gets the error, the log reports
//! unhealthy, and the next append tries again, so the trail heals by
//! itself once the database is back.
//!
//! Every node keeps its own chain (`audit_records`, keyed by node id and
//! sequence number, each row holding the exact line of the node's log) and
//! its own signed checkpoints (`audit_checkpoints`); `audit_nodes` holds
//! each node's head, which its writer compare-and-sets in every
//! transaction, and its checkpoint key, which binds the node id to one
//! data directory. Readers ([`verify`], [`query`]) answer across all nodes
//! and check every line they return against its hash and its chain.

pub mod mirror;
pub mod query;
pub mod row;
pub mod verify;

use crate::store::settings::PgSettings;
use deadpool_postgres::Pool;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest time one database round of the audit trail may take (a group's
/// transaction, a page of a read) before it counts as failed: a database
/// that hangs fails appends, it does not hang them.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection pool to the audit tables, with the small runtime that
/// drives its I/O. Calls are synchronous (the writer thread and the CLI
/// call them): each drives its future on the calling thread.
pub struct Db {
    pool: Pool,
    rt: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    url: String,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("url", &self.url).finish()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let rt = self.rt.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(rt) = rt {
            // Safe inside another runtime, unlike dropping it.
            rt.shutdown_background();
        }
    }
}

/// A pooled connection that is closed, not returned to the pool, unless
/// [`Conn::done`] says its last request finished: one abandoned mid-way (a
/// timeout, an error inside a transaction) is in an unknown state.
pub(crate) struct Conn(Option<deadpool_postgres::Object>);

impl Conn {
    pub(crate) fn c(&self) -> &tokio_postgres::Client {
        // Only `done` and `drop` take it, both consuming the Conn.
        self.0.as_ref().expect("a live connection")
    }

    /// `sql` prepared once per connection (a statement passed as text is
    /// prepared anew on every call, a round trip of its own).
    pub(crate) async fn cached(&self, sql: &str) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
        self.0.as_ref().expect("a live connection").prepare_cached(sql).await
    }

    /// Back to the pool.
    pub(crate) fn done(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(obj) = self.0.take() {
            drop(deadpool_postgres::Object::take(obj));
        }
    }
}

/// A database error as a message: a server error's message and detail
/// (never a secret of ours), else the driver's.
pub(crate) fn pg_err(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) if db.code() == &tokio_postgres::error::SqlState::UNDEFINED_TABLE => format!(
            "PostgreSQL: {} (the audit tables are missing: run `{}`)",
            db.message(),
            crate::hint::command("db migrate")
        ),
        _ => crate::store::pg_connect::error_text(&e),
    }
}

impl Db {
    /// A pool of up to `size` connections to the database `settings`
    /// name. Connects lazily: an unreachable database fails the first
    /// call, not this one.
    pub fn connect(settings: &PgSettings, size: usize) -> Result<Db, String> {
        let (config, tls) = crate::store::pg_connect::config(settings, "airlock-audit")?;
        let (rt, pool) = crate::store::pg_connect::pool(
            settings,
            config,
            tls,
            ("audit database", "airlock-audit-pg", 1),
            (size, OP_TIMEOUT),
        )?;
        let handle = rt.handle().clone();
        Ok(Db {
            pool,
            rt: Mutex::new(Some(rt)),
            handle,
            url: settings.url.clone(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drive `future` to completion on this thread (its I/O on the pool's
    /// runtime), failing it after [`OP_TIMEOUT`].
    pub(crate) fn block<T>(&self, future: impl Future<Output = Result<T, String>>) -> Result<T, String> {
        // An append on a service worker waits for the database: other
        // requests on that worker go on meanwhile.
        crate::store::postgres::off_worker(|| {
            let _context = self.handle.enter();
            futures_executor::block_on(async {
                match tokio::time::timeout(OP_TIMEOUT, future).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("PostgreSQL did not answer within {} s", OP_TIMEOUT.as_secs())),
                }
            })
        })
    }

    pub(crate) async fn conn(&self) -> Result<Conn, String> {
        match self.pool.get().await {
            Ok(obj) => Ok(Conn(Some(obj))),
            Err(deadpool_postgres::PoolError::Backend(e)) => Err(pg_err(e)),
            Err(deadpool_postgres::PoolError::Timeout(kind)) => {
                Err(crate::store::pg_connect::pool_timeout_text(&self.pool, kind, None))
            }
            Err(e) => Err(format!("PostgreSQL connection pool: {e}")),
        }
    }
}

/// One shared reader pool per database URL in this process (the service's
/// audit endpoints), so a request does not pay for a connection.
pub fn reader(settings: &PgSettings) -> Result<Arc<Db>, String> {
    static READERS: std::sync::OnceLock<Mutex<std::collections::HashMap<String, Arc<Db>>>> = std::sync::OnceLock::new();
    let mut readers = READERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(db) = readers.get(&settings.url) {
        return Ok(db.clone());
    }
    let db = Arc::new(Db::connect(settings, 4)?);
    readers.insert(settings.url.clone(), db.clone());
    Ok(db)
}
