//! An index of the audit log, so that queries by invocation, action, caller
//! or time read only the records they return, however long the log grows.
//!
//! The index is derived data: a SQLite file (`index.db`) beside the log,
//! mapping each record's sequence number to its byte offset, time and
//! invocation, and each invocation to its action and caller. It is brought
//! up to date by whoever queries (it reads only the bytes appended since
//! the last query), never by the writer, so it costs the invocation path
//! nothing. The log stays the only source of truth:
//!
//! - catching up checks the hash chain of every record it adds, starting
//!   from the head the index last saw; a log that no longer continues
//!   that head (truncated, rewritten) makes the index rebuild itself;
//! - every record a query returns is read back from the log and checked
//!   against its own hash and `prev` (the full chain is `verify`'s job);
//! - a missing, damaged or unwritable index is rebuilt or bypassed (the
//!   caller falls back to a full scan), never trusted.

use super::chain::{self, GENESIS, Record};
use super::event::Event;
use super::log::LOG_FILE;
use super::query::Filter;
use rusqlite::{Connection, TransactionBehavior, params};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom};
use std::path::Path;

/// The index file in the audit directory.
pub const INDEX_FILE: &str = "index.db";

/// Records indexed per transaction while catching up (bounds the memory a
/// long catch-up holds).
const BATCH: usize = 50_000;

/// Bumped when the schema changes: an index of another version is rebuilt.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS invocations (
    id TEXT NOT NULL UNIQUE,
    action TEXT,
    caller TEXT
);
CREATE INDEX IF NOT EXISTS invocations_by_action ON invocations(action);
CREATE INDEX IF NOT EXISTS invocations_by_caller ON invocations(caller);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    offset INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    inv INTEGER,
    hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_invocation ON records(inv, seq);
CREATE INDEX IF NOT EXISTS records_by_time ON records(ts);
";

/// Why the index could not answer (the caller scans the log instead).
#[derive(Debug, thiserror::Error)]
#[error("audit index {path}: {reason}")]
pub struct IndexError {
    pub path: String,
    pub reason: String,
}

/// What the index has seen of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Position {
    /// Bytes of the log indexed.
    len: u64,
    /// The next sequence number expected.
    next_seq: u64,
    /// Hash of the last indexed record.
    head: [u8; 32],
}

impl Position {
    const START: Position = Position {
        len: 0,
        next_seq: 0,
        head: GENESIS,
    };
}

/// An open index of one audit directory.
pub struct Index {
    conn: Connection,
    dir: std::path::PathBuf,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// What a catch-up did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaughtUp {
    /// Records added to the index.
    pub added: u64,
    /// Whether the index was rebuilt from the start of the log.
    pub rebuilt: bool,
    /// Records in the index afterwards.
    pub records: u64,
}

impl Index {
    /// Open (or create) the index of the log in `dir`.
    pub fn open(dir: &Path) -> Result<Index, IndexError> {
        let path = dir.join(INDEX_FILE);
        let err = |e: rusqlite::Error| IndexError {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        match Self::open_file(dir, &path) {
            Ok(index) => Ok(index),
            // Derived data: a damaged index is thrown away and rebuilt.
            Err(e) if is_damage(&e) => {
                tracing::warn!(target: "airlock::audit", path = %path.display(), "the audit index is damaged; rebuilding it");
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                Self::open_file(dir, &path).map_err(err)
            }
            Err(e) => Err(err(e)),
        }
    }

    fn open_file(dir: &Path, path: &Path) -> rusqlite::Result<Index> {
        let conn = Connection::open(path)?;
        restrict_mode(path);
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        // WAL with NORMAL: a crash loses at most the last batches (which
        // are read again), never the database's consistency.
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")?;
        let index = Index {
            conn,
            dir: dir.to_path_buf(),
        };
        let version: i64 = index.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version != SCHEMA_VERSION {
            index.reset()?;
        }
        // Reading the tables once finds a damaged file now, not mid-query.
        index
            .conn
            .query_row("SELECT count(*) FROM meta", [], |r| r.get::<_, i64>(0))?;
        Ok(index)
    }

    fn error(&self, reason: impl std::fmt::Display) -> IndexError {
        index_error(&self.dir, reason)
    }

    /// Drop everything and start again from the first record.
    fn reset(&self) -> rusqlite::Result<()> {
        // One transaction: a crash leaves the old index or the new one.
        self.conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; \
             DROP TABLE IF EXISTS meta; DROP TABLE IF EXISTS invocations; DROP TABLE IF EXISTS records; \
             {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))
    }

    fn position(conn: &Connection) -> rusqlite::Result<Position> {
        // One statement, so one snapshot: read key by key, another
        // process's catch-up could commit in between, and a position mixed
        // from two would not match the log and make this one rebuild.
        let (len, next_seq, head): (Option<String>, Option<String>, Option<String>) = conn.query_row(
            "SELECT (SELECT value FROM meta WHERE key = 'len'), \
                    (SELECT value FROM meta WHERE key = 'next-seq'), \
                    (SELECT value FROM meta WHERE key = 'head')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let (Some(len), Some(next_seq), Some(head)) = (len, next_seq, head) else {
            return Ok(Position::START);
        };
        Ok(
            match (len.parse(), next_seq.parse(), chain::parse_hex(head.as_bytes())) {
                (Ok(len), Ok(next_seq), Some(head)) => Position { len, next_seq, head },
                _ => Position::START,
            },
        )
    }

    fn set_position(conn: &Connection, p: &Position) -> rusqlite::Result<()> {
        let mut put = conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
        put.execute(params!["len", p.len.to_string()])?;
        put.execute(params!["next-seq", p.next_seq.to_string()])?;
        put.execute(params!["head", chain::hex(&p.head)])?;
        Ok(())
    }

    /// Index the records appended since the last catch-up (all of them the
    /// first time), checking their chain as they are read. Stops before a
    /// record that does not check out: queries then answer from the intact
    /// part, and `airlock audit verify` names the bad record.
    pub fn catch_up(&mut self) -> Result<CaughtUp, IndexError> {
        let dir = self.dir.clone();
        let path = dir.join(LOG_FILE);
        let file = match std::fs::File::open(&path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(index_error(&dir, format!("cannot read {}: {e}", path.display()))),
        };
        let log_len = match &file {
            Some(f) => f.metadata().map_err(|e| index_error(&dir, e))?.len(),
            None => 0,
        };
        let mut done = CaughtUp::default();
        let mut position = Self::position(&self.conn).map_err(|e| index_error(&dir, e))?;
        // No (or unreadable) position but rows: nothing says which log they
        // came from, so start over.
        if position == Position::START {
            let rows: i64 = self
                .conn
                .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
                .map_err(|e| index_error(&dir, e))?;
            if rows > 0 {
                self.reset().map_err(|e| index_error(&dir, e))?;
                done.rebuilt = true;
            }
        }
        // The log must still continue the head the index saw; anything
        // else (shorter log, other bytes at the seam) means rebuild.
        if position != Position::START
            && !file
                .as_ref()
                .is_some_and(|f| log_len >= position.len && continues(f, &position))
        {
            self.reset().map_err(|e| index_error(&dir, e))?;
            position = Position::START;
            done.rebuilt = true;
        }
        let Some(file) = file else {
            return Ok(done);
        };
        // Nothing appended since: no write transaction (most queries).
        if log_len == position.len {
            done.records = position.next_seq;
            return Ok(done);
        }
        let mut reader = BufReader::with_capacity(1 << 20, file);
        reader
            .seek(SeekFrom::Start(position.len))
            .map_err(|e| index_error(&dir, e))?;
        let mut line = Vec::new();
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| index_error(&dir, e))?;
            // Another reader may have caught up meanwhile.
            let current = Self::position(&tx).map_err(|e| index_error(&dir, e))?;
            if current != position {
                drop(tx);
                return self.catch_up().map(|again| CaughtUp {
                    rebuilt: again.rebuilt || done.rebuilt,
                    added: again.added + done.added,
                    records: again.records,
                });
            }
            let mut batch = Batch::new(&tx).map_err(|e| index_error(&dir, e))?;
            let mut added = 0usize;
            let mut stop = false;
            while added < BATCH {
                line.clear();
                let n = reader.read_until(b'\n', &mut line).map_err(|e| index_error(&dir, e))?;
                if n == 0 || line.last() != Some(&b'\n') {
                    // End of the log, or a record still being written.
                    stop = true;
                    break;
                }
                line.pop();
                let record = match chain::decode(&line, &position.head) {
                    Ok(r) if r.entry.seq == position.next_seq && r.entry.prev == chain::hex(&position.head) => r,
                    _ => {
                        tracing::warn!(
                            target: "airlock::audit",
                            seq = position.next_seq,
                            "the audit index stops before a record that does not check out; run `{}`",
                            crate::hint::command("audit verify")
                        );
                        stop = true;
                        break;
                    }
                };
                batch.add(&record, position.len).map_err(|e| index_error(&dir, e))?;
                position = Position {
                    len: position.len + n as u64,
                    next_seq: position.next_seq + 1,
                    head: record.hash,
                };
                added += 1;
            }
            drop(batch);
            if added == 0 {
                // Nothing to index (a record still being written, or one
                // that does not check out): nothing to commit.
                break;
            }
            Self::set_position(&tx, &position).map_err(|e| index_error(&dir, e))?;
            tx.commit().map_err(|e| index_error(&dir, e))?;
            done.added += added as u64;
            if stop {
                break;
            }
        }
        done.records = position.next_seq;
        Ok(done)
    }

    /// Every indexed record matching `filter` in log order (only the
    /// newest `newest` of them, if given), each read back from the log and
    /// checked against its own hash and the sequence number indexed for it.
    /// What the index claims matches is not trusted: [`super::trust`]
    /// checks the answer against the log before anyone sees it.
    pub fn select(&self, filter: &Filter, newest: Option<usize>) -> Result<Vec<Hit>, IndexError> {
        let mut sql = String::from("SELECT r.seq, r.offset, r.hash FROM records r");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut clauses: Vec<String> = Vec::new();
        if filter.invocation.is_some() || filter.action.is_some() || filter.caller.is_some() {
            sql.push_str(" JOIN invocations i ON i.rowid = r.inv");
        }
        let mut arg = |clause: &str, value: rusqlite::types::Value| {
            args.push(value);
            clauses.push(clause.replace('?', &format!("?{}", args.len())));
        };
        if let Some(prefix) = &filter.invocation {
            // A prefix as a range, so the unique index on ids serves it.
            arg("i.id >= ?", prefix.clone().into());
            arg("i.id < ?", format!("{prefix}\u{10FFFF}").into());
        }
        if let Some(action) = &filter.action {
            arg("i.action = ?", action.clone().into());
        }
        if let Some(caller) = &filter.caller {
            arg("i.caller = ?", caller.clone().into());
        }
        if let Some(since) = filter.since {
            arg("r.ts >= ?", i64::try_from(since).unwrap_or(i64::MAX).into());
        }
        if let Some(until) = filter.until {
            arg("r.ts < ?", i64::try_from(until).unwrap_or(i64::MAX).into());
        }
        if !clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&clauses.join(" AND "));
        }
        let rows = match newest {
            Some(n) => {
                sql.push_str(&format!(" ORDER BY r.seq DESC LIMIT {n}"));
                let mut v = self.rows(&sql, &args)?;
                v.reverse();
                v
            }
            None => {
                sql.push_str(" ORDER BY r.seq");
                self.rows(&sql, &args)?
            }
        };
        let mut reader = self.reader()?;
        rows.into_iter()
            .map(|(seq, offset, hash)| self.read_hit(&mut reader, seq, offset, &hash))
            .collect()
    }

    /// The log, for reading records at indexed offsets.
    pub(crate) fn reader(&self) -> Result<BufReader<std::fs::File>, IndexError> {
        let path = self.dir.join(LOG_FILE);
        let file =
            std::fs::File::open(&path).map_err(|e| self.error(format!("cannot read {}: {e}", path.display())))?;
        Ok(BufReader::with_capacity(64 << 10, file))
    }

    /// The record indexed as `seq` at `offset` with `hash`, read back and
    /// checked: it must be a whole line that checks against its own hash,
    /// carry that sequence number, and have that hash (a log rolled back
    /// after a failed sync reuses offsets).
    fn read_hit(
        &self,
        reader: &mut BufReader<std::fs::File>,
        seq: i64,
        offset: i64,
        hash: &[u8],
    ) -> Result<Hit, IndexError> {
        let offset = u64::try_from(offset).map_err(|_| self.error("a negative offset"))?;
        reader.seek(SeekFrom::Start(offset)).map_err(|e| self.error(e))?;
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).map_err(|e| self.error(e))?;
        let len = line.len() as u64;
        if line.pop() != Some(b'\n') {
            return Err(self.error(format!("the log has no complete record at byte {offset}: reindex")));
        }
        let record = self_checked(&line).map_err(|e| {
            self.error(format!(
                "the record at byte {offset} does not check out ({e}); run `{}`",
                crate::hint::command("audit verify")
            ))
        })?;
        if record.hash[..] != hash[..] || i64::try_from(record.entry.seq).ok() != Some(seq) {
            return Err(self.error(format!(
                "the log at byte {offset} is not the record indexed there (record {seq}): the index does not match the log"
            )));
        }
        Ok(Hit {
            offset,
            len,
            record,
            line,
        })
    }

    /// The indexed record `seq`, read back and checked, if indexed.
    pub(crate) fn record_at(&self, reader: &mut BufReader<std::fs::File>, seq: u64) -> Result<Option<Hit>, IndexError> {
        let row = self
            .rows(
                "SELECT seq, offset, hash FROM records WHERE seq = ?1",
                &[i64::try_from(seq).unwrap_or(i64::MAX).into()],
            )?
            .into_iter()
            .next();
        row.map(|(seq, offset, hash)| self.read_hit(reader, seq, offset, &hash))
            .transpose()
    }

    /// The first `limit` records indexed as invocation `id`'s, read back.
    pub(crate) fn first_of(
        &self,
        reader: &mut BufReader<std::fs::File>,
        id: &str,
        limit: usize,
    ) -> Result<Vec<Hit>, IndexError> {
        let rows = self.rows(
            &format!(
                "SELECT r.seq, r.offset, r.hash FROM records r JOIN invocations i ON i.rowid = r.inv \
                 WHERE i.id = ?1 ORDER BY r.seq LIMIT {limit}"
            ),
            &[id.to_string().into()],
        )?;
        rows.into_iter()
            .map(|(seq, offset, hash)| self.read_hit(reader, seq, offset, &hash))
            .collect()
    }

    /// Every invocation row: its id, the action and caller indexed for it,
    /// and its first record's row.
    pub(crate) fn invocation_rows(&self) -> Result<Vec<InvocationRow>, IndexError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT i.id, i.action, i.caller, r.seq, r.offset, r.hash FROM invocations i \
                 LEFT JOIN records r ON r.seq = (SELECT min(seq) FROM records WHERE inv = i.rowid)",
            )
            .map_err(|e| self.error(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(InvocationRow {
                    id: r.get(0)?,
                    action: r.get(1)?,
                    caller: r.get(2)?,
                    first: match (r.get::<_, Option<i64>>(3)?, r.get(4)?, r.get(5)?) {
                        (Some(seq), Some(offset), Some(hash)) => Some((seq, offset, hash)),
                        _ => None,
                    },
                })
            })
            .map_err(|e| self.error(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.error(e))
    }

    /// Read back the first record of an invocation row.
    pub(crate) fn first_record(
        &self,
        reader: &mut BufReader<std::fs::File>,
        row: &InvocationRow,
    ) -> Result<Option<Hit>, IndexError> {
        row.first
            .as_ref()
            .map(|(seq, offset, hash)| self.read_hit(reader, *seq, *offset, hash))
            .transpose()
    }

    /// The shape every honest index has: no row beyond the indexed
    /// position, and every record indexed without an invocation really
    /// has none (both cheap: the primary key and the invocation index
    /// answer them). With `thorough`, also one row for every record and no
    /// row pointing at an invocation that is not there, which reads every
    /// row (action, caller and id-prefix queries, which read every
    /// invocation anyway).
    pub(crate) fn check_shape(&self, reader: &mut BufReader<std::fs::File>, thorough: bool) -> Result<(), String> {
        let position = Self::position(&self.conn).map_err(|e| e.to_string())?;
        let want = i64::try_from(position.next_seq).unwrap_or(i64::MAX);
        let (min, max): (Option<i64>, Option<i64>) = self
            .conn
            .query_row("SELECT min(seq), max(seq) FROM records", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| e.to_string())?;
        if max.map_or(0, |m| m + 1) != want || min.is_some_and(|m| m != 0) {
            return Err(format!(
                "its rows run from record {} to {} for {want} records",
                min.map_or("(none)".into(), |m| m.to_string()),
                max.map_or("(none)".into(), |m| m.to_string())
            ));
        }
        if thorough {
            let count: i64 = self
                .conn
                .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
                .map_err(|e| e.to_string())?;
            if count != want {
                return Err(format!("it holds {count} rows for {want} records"));
            }
            let dangling: i64 = self
                .conn
                .query_row(
                    "SELECT count(*) FROM records WHERE inv IS NOT NULL AND inv NOT IN (SELECT rowid FROM invocations)",
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| e.to_string())?;
            if dangling > 0 {
                return Err(format!("{dangling} rows point at invocations it does not hold"));
            }
        }
        let unowned = self
            .rows("SELECT seq, offset, hash FROM records WHERE inv IS NULL", &[])
            .map_err(|e| e.reason)?;
        for (seq, offset, hash) in unowned {
            let hit = self.read_hit(reader, seq, offset, &hash).map_err(|e| e.reason)?;
            if let Some(id) = hit.record.entry.event.invocation() {
                return Err(format!("record {seq} of invocation {id} is indexed as no invocation's"));
            }
        }
        Ok(())
    }

    /// How many records the index covers (as of the current transaction).
    pub(crate) fn indexed_records(&self) -> Result<u64, String> {
        Self::position(&self.conn)
            .map(|p| p.next_seq)
            .map_err(|e| e.to_string())
    }

    /// Drop the index and read it again from the whole log.
    pub fn rebuild(&mut self) -> Result<CaughtUp, IndexError> {
        self.reset().map_err(|e| self.error(e))?;
        let mut done = self.catch_up()?;
        done.rebuilt = true;
        Ok(done)
    }

    fn rows(&self, sql: &str, args: &[rusqlite::types::Value]) -> Result<Vec<(i64, i64, Vec<u8>)>, IndexError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.error(e))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?))
            })
            .map_err(|e| self.error(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.error(e))
    }
}

/// One record a query returned, read back from the log.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Where its line starts in the log, and its length with the newline.
    pub offset: u64,
    pub len: u64,
    pub record: Record,
    /// The line without its newline.
    pub line: Vec<u8>,
}

/// An invocation as the index holds it (see [`Index::invocation_rows`]).
pub(crate) struct InvocationRow {
    pub id: String,
    pub action: Option<String>,
    pub caller: Option<String>,
    /// `(seq, offset, hash)` of its first record's row.
    pub first: Option<(i64, i64, Vec<u8>)>,
}

/// Whether `e` says the index file itself is damaged (so rebuilding it is
/// the cure).
fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

fn index_error(dir: &Path, reason: impl std::fmt::Display) -> IndexError {
    IndexError {
        path: dir.join(INDEX_FILE).display().to_string(),
        reason: reason.to_string(),
    }
}

/// Whether the log still holds, just before `p.len`, the record the index
/// last saw (its hash is `p.head`).
fn continues(file: &std::fs::File, p: &Position) -> bool {
    if p.len == 0 {
        return true;
    }
    // The last indexed line ends at p.len; read back far enough to find
    // its start.
    let mut window = 64 << 10;
    loop {
        let start = p.len.saturating_sub(window);
        let mut buf = vec![0u8; (p.len - start) as usize];
        let mut f = file;
        if f.seek(SeekFrom::Start(start)).is_err() || f.read_exact(&mut buf).is_err() {
            return false;
        }
        if buf.last() != Some(&b'\n') {
            return false;
        }
        let body = &buf[..buf.len() - 1];
        match body.iter().rposition(|&b| b == b'\n') {
            Some(i) => return self_checked(&body[i + 1..]).is_ok_and(|r| r.hash == p.head),
            None if start == 0 => return self_checked(body).is_ok_and(|r| r.hash == p.head),
            None if window >= 16 << 20 => return false,
            None => window *= 4,
        }
    }
}

/// Decode a line against the `prev` it names itself.
fn self_checked(line: &[u8]) -> Result<Record, String> {
    #[derive(serde::Deserialize)]
    struct Prev {
        prev: String,
    }
    // `prev` is the third field of every line the writer produces; parse
    // the line's prefix up to it rather than the whole record twice.
    let end = line.windows(8).position(|w| w == b",\"event\"").ok_or("not a record")?;
    let mut head = line[..end].to_vec();
    head.push(b'}');
    let p: Prev = serde_json::from_slice(&head).map_err(|e| e.to_string())?;
    let prev = chain::parse_hex(p.prev.as_bytes()).ok_or("bad prev")?;
    chain::decode(line, &prev)
}

/// The `(action, caller)` an invocation's opening record names.
fn subject(event: &Event) -> Option<(&str, &str)> {
    super::trust::opening(event).map(|(_, action, caller)| (action, caller))
}

/// Inserts of one catch-up transaction.
struct Batch<'c> {
    record: rusqlite::CachedStatement<'c>,
    invocation: rusqlite::CachedStatement<'c>,
    subject: rusqlite::CachedStatement<'c>,
    lookup: rusqlite::CachedStatement<'c>,
    /// Invocation ids to rowids, for this batch.
    ids: HashMap<String, i64>,
}

impl<'c> Batch<'c> {
    fn new(conn: &'c Connection) -> rusqlite::Result<Batch<'c>> {
        Ok(Batch {
            record: conn.prepare_cached(
                "INSERT OR REPLACE INTO records (seq, offset, ts, inv, hash) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?,
            invocation: conn.prepare_cached("INSERT OR IGNORE INTO invocations (id) VALUES (?1)")?,
            subject: conn.prepare_cached(
                "UPDATE invocations SET action = coalesce(action, ?2), caller = coalesce(caller, ?3) WHERE rowid = ?1",
            )?,
            lookup: conn.prepare_cached("SELECT rowid FROM invocations WHERE id = ?1")?,
            ids: HashMap::new(),
        })
    }

    fn add(&mut self, record: &Record, offset: u64) -> rusqlite::Result<()> {
        let entry = &record.entry;
        let inv = match entry.event.invocation() {
            Some(id) => Some(match self.ids.get(id) {
                Some(&rowid) => rowid,
                None => {
                    self.invocation.execute([id])?;
                    let rowid: i64 = self.lookup.query_row([id], |r| r.get(0))?;
                    self.ids.insert(id.to_string(), rowid);
                    rowid
                }
            }),
            None => None,
        };
        if let (Some(rowid), Some((action, caller))) = (inv, subject(&entry.event)) {
            self.subject.execute(params![rowid, action, caller])?;
        }
        let ts = crate::time::parse_utc(&entry.ts).unwrap_or(0);
        self.record.execute(params![
            i64::try_from(entry.seq).unwrap_or(i64::MAX),
            i64::try_from(offset).unwrap_or(i64::MAX),
            i64::try_from(ts).unwrap_or(i64::MAX),
            inv,
            &record.hash[..]
        ])?;
        Ok(())
    }
}

/// The index's answer to a query, once it has checked out against the log;
/// `None` when it found nothing (the caller scans to be sure). An answer
/// that does not check out rebuilds the index and is an error.
fn indexed(dir: &Path, filter: &Filter, newest: Option<usize>) -> Result<Option<Vec<Hit>>, IndexError> {
    let mut index = Index::open(dir)?;
    index.catch_up()?;
    // One read transaction: the answer and every check see one snapshot,
    // so another reader's catch-up in between cannot look like a record
    // left out.
    index.conn.execute_batch("BEGIN").map_err(|e| index.error(e))?;
    let answer = index
        .select(filter, newest)
        .map_err(|e| e.reason)
        .and_then(|hits| super::trust::check(&index, filter, newest, &hits).map(|()| hits));
    let _ = index.conn.execute_batch("COMMIT");
    match answer {
        Ok(hits) if hits.is_empty() => Ok(None),
        // Fewer than asked for: every match in the log, which only a scan
        // of the whole log can confirm.
        Ok(hits) if newest.is_some_and(|n| hits.len() < n) => Ok(None),
        Ok(hits) => Ok(Some(hits)),
        Err(reason) => {
            tracing::warn!(
                target: "airlock::audit",
                "the audit index does not match the log ({reason}); rebuilding it from the log"
            );
            let rebuilt = index.rebuild();
            Err(index.error(format!(
                "it did not match the log ({reason}); {}",
                match rebuilt {
                    Ok(_) => "it was rebuilt from the log".to_string(),
                    Err(e) => format!("rebuilding it failed: {}", e.reason),
                }
            )))
        }
    }
}

/// How the index compared with the log (`airlock audit verify`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct IndexCheck {
    /// Records compared.
    pub records: u64,
    /// Rows (records or invocations) that differ from what the log says.
    pub mismatches: u64,
    /// The first difference, described.
    pub first: Option<String>,
    /// Whether the index was rebuilt from the log because of them.
    pub rebuilt: bool,
}

/// Compare every row of the index with the log it claims to index: each
/// record's offset, time, invocation and hash, and each invocation's action
/// and caller. An index that differs is rebuilt from the log; the report
/// says how it differed.
pub fn compare_with_log(dir: &Path) -> Result<IndexCheck, IndexError> {
    let mut index = Index::open(dir)?;
    index.catch_up()?;
    let mut check = IndexCheck::default();
    let differ = |check: &mut IndexCheck, what: String| {
        check.mismatches += 1;
        if check.first.is_none() {
            check.first = Some(what);
        }
    };
    // What the log says, record by record, and who each invocation is.
    type Expected = (u64, u64, i64, Option<String>, [u8; 32]);
    let mut expected: Vec<Expected> = Vec::new();
    let mut owners: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
    let mut offset = 0u64;
    super::read::scan(dir, |record, line| {
        let entry = &record.entry;
        let ts = i64::try_from(crate::time::parse_utc(&entry.ts).unwrap_or(0)).unwrap_or(i64::MAX);
        let inv = entry.event.invocation().map(str::to_string);
        if let Some(id) = &inv {
            let owner = owners.entry(id.clone()).or_default();
            if let Some((action, caller)) = subject(&entry.event) {
                owner.0.get_or_insert_with(|| action.to_string());
                owner.1.get_or_insert_with(|| caller.to_string());
            }
        }
        expected.push((entry.seq, offset, ts, inv, record.hash));
        offset += line.len() as u64 + 1;
        true
    })
    .map_err(|e| index.error(format!("the log cannot be read to compare: {e}")))?;
    // One snapshot of the index; rows another reader adds meanwhile (past
    // this position) are not compared.
    index.conn.execute_batch("BEGIN").map_err(|e| index.error(e))?;
    let position = Index::position(&index.conn).map_err(|e| index.error(e))?;
    type Row = (i64, i64, i64, Option<String>, Vec<u8>);
    let rows: Vec<Row> = {
        let mut stmt = index
            .conn
            .prepare(
                "SELECT r.seq, r.offset, r.ts, i.id, r.hash FROM records r \
                 LEFT JOIN invocations i ON i.rowid = r.inv ORDER BY r.seq",
            )
            .map_err(|e| index.error(e))?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| index.error(e))?
    };
    let indexed = usize::try_from(position.next_seq)
        .unwrap_or(usize::MAX)
        .min(expected.len());
    let mut by_seq: HashMap<i64, &Row> = HashMap::with_capacity(rows.len());
    for row in &rows {
        if by_seq.insert(row.0, row).is_some() {
            differ(&mut check, format!("record {} has two rows", row.0));
        }
    }
    for (seq, offset, ts, inv, hash) in &expected[..indexed] {
        check.records += 1;
        let Some((_, r_offset, r_ts, r_inv, r_hash)) = i64::try_from(*seq).ok().and_then(|s| by_seq.remove(&s)) else {
            differ(&mut check, format!("record {seq} has no row"));
            continue;
        };
        let what = if i64::try_from(*offset).ok() != Some(*r_offset) {
            "its offset"
        } else if ts != r_ts {
            "its time"
        } else if inv != r_inv {
            "its invocation"
        } else if r_hash[..] != hash[..] {
            "its hash"
        } else {
            continue;
        };
        differ(&mut check, format!("record {seq}'s row differs from the log in {what}"));
    }
    // Rows for records the log gained after it was scanned (another
    // reader's catch-up) are not judged; every other one must have matched.
    let (known, next) = (
        i64::try_from(indexed).unwrap_or(i64::MAX),
        i64::try_from(position.next_seq).unwrap_or(i64::MAX),
    );
    for seq in by_seq.keys().filter(|&&s| s < known || s >= next) {
        differ(
            &mut check,
            format!("a row for record {seq}, which the log does not hold there"),
        );
    }
    let mut indexed_owners: HashMap<String, (Option<String>, Option<String>)> = {
        let mut stmt = index
            .conn
            .prepare("SELECT id, action, caller FROM invocations")
            .map_err(|e| index.error(e))?;
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?))))
            .and_then(|rows| rows.collect())
            .map_err(|e| index.error(e))?
    };
    let _ = index.conn.execute_batch("COMMIT");
    let live: HashSet<&str> = expected[..indexed].iter().filter_map(|e| e.3.as_deref()).collect();
    // Invocations that appear only past what was compared are not judged.
    let later: HashSet<&str> = expected[indexed..].iter().filter_map(|e| e.3.as_deref()).collect();
    indexed_owners.retain(|id, _| live.contains(id.as_str()) || !later.contains(id.as_str()));
    for (id, owner) in &owners {
        if !live.contains(id.as_str()) {
            continue;
        }
        match indexed_owners.remove(id) {
            None => differ(&mut check, format!("invocation {id} has no row")),
            Some(row) if row != *owner => differ(
                &mut check,
                format!("invocation {id}'s action or caller differs from its records"),
            ),
            Some(_) => {}
        }
    }
    for id in indexed_owners.keys() {
        differ(
            &mut check,
            format!("a row for invocation {id}, which the log does not hold"),
        );
    }
    if check.mismatches > 0 {
        tracing::warn!(
            target: "airlock::audit",
            "the audit index differs from the log in {} rows; rebuilding it",
            check.mismatches
        );
        index.rebuild()?;
        check.rebuilt = true;
    }
    Ok(check)
}

/// Owner-only, like the rest of the audit directory.
fn restrict_mode(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

/// Every record matching `filter`, in log order (the newest `newest` only,
/// if given), through the index when its answer checks out against the log
/// ([`super::trust`]), else by scanning (and verifying) the whole log; an
/// index whose answer did not check out is rebuilt from the log first.
/// `visit` returns false to stop.
pub fn select(
    dir: &Path,
    filter: &Filter,
    newest: Option<usize>,
    mut visit: impl FnMut(&Record, &[u8]) -> bool,
) -> Result<u64, super::read::VerifyError> {
    // An unfiltered query reads the log itself (verifying it on the way),
    // unless only its newest records are wanted.
    if !filter.is_empty() || newest.is_some() {
        match indexed(dir, filter, newest) {
            Ok(Some(hits)) => {
                let mut n = 0;
                for hit in &hits {
                    n += 1;
                    if !visit(&hit.record, &hit.line) {
                        break;
                    }
                }
                return Ok(n);
            }
            // Nothing matched: only the whole log can say that for sure.
            Ok(None) => {}
            Err(e) => tracing::warn!(target: "airlock::audit", "{e}; scanning the whole log instead"),
        }
    }
    let mut matcher = filter.clone().matcher();
    match newest {
        None => {
            let mut n = 0;
            super::read::scan(dir, |record, line| {
                if matcher.matches(record) {
                    n += 1;
                    visit(record, line)
                } else {
                    true
                }
            })?;
            Ok(n)
        }
        Some(limit) => {
            let mut last: std::collections::VecDeque<(Record, Vec<u8>)> = std::collections::VecDeque::new();
            super::read::scan(dir, |record, line| {
                if matcher.matches(record) {
                    if last.len() == limit {
                        last.pop_front();
                    }
                    if limit > 0 {
                        last.push_back((record.clone(), line.to_vec()));
                    }
                }
                true
            })?;
            let mut n = 0;
            for (record, line) in &last {
                n += 1;
                if !visit(record, line) {
                    break;
                }
            }
            Ok(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{Entry, encode};
    use crate::audit::event::Recovered;
    use std::io::Write as _;

    /// `count` chained lines after `prev`, starting at `seq`.
    fn lines(seq: u64, count: u64, prev: &mut [u8; 32]) -> Vec<u8> {
        let mut out = Vec::new();
        for seq in seq..seq + count {
            let entry = Entry {
                seq,
                ts: "2026-12-01T00:00:00.000000Z".into(),
                prev: chain::hex(prev),
                event: Event::Recovered(Recovered {
                    truncated_bytes: seq,
                    last_good_seq: None,
                    reason: "test".into(),
                }),
            };
            let (line, hash) = encode(&entry, prev).unwrap();
            out.extend_from_slice(&line);
            *prev = hash;
        }
        out
    }

    #[test]
    fn a_catch_up_with_nothing_new_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut prev = GENESIS;
        let mut log = std::fs::File::create(dir.path().join(LOG_FILE)).unwrap();
        log.write_all(&lines(0, 3, &mut prev)).unwrap();
        let mut index = Index::open(dir.path()).unwrap();
        assert_eq!(index.catch_up().unwrap().added, 3);

        // Every query catches up first: with nothing appended, that must
        // not cost a write transaction.
        let changes = index.conn.total_changes();
        for _ in 0..3 {
            let done = index.catch_up().unwrap();
            assert_eq!((done.added, done.records, done.rebuilt), (0, 3, false));
        }
        assert_eq!(index.conn.total_changes(), changes);

        // Half a record (still being written): nothing indexed, nothing
        // written; once whole, it is indexed.
        let next = lines(3, 1, &mut prev);
        let (head, tail) = next.split_at(next.len() / 2);
        log.write_all(head).unwrap();
        let done = index.catch_up().unwrap();
        assert_eq!((done.added, done.records), (0, 3));
        assert_eq!(index.conn.total_changes(), changes);
        log.write_all(tail).unwrap();
        let done = index.catch_up().unwrap();
        assert_eq!((done.added, done.records), (1, 4));
        assert!(index.conn.total_changes() > changes);
    }
}
