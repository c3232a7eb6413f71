//! The writer's side: each synced group of the node's log, inserted into
//! PostgreSQL in one transaction before the group counts as durable.
//!
//! - **What is inserted** is read back from the log file itself, from the
//!   end of what PostgreSQL holds to the end of the group: the group's own
//!   records, and any written before it without a sync (queued records) or
//!   by another process on this data directory that has not inserted them
//!   yet. Each line is decoded and chained before it is sent, so only a
//!   chain that continues the one in PostgreSQL goes there.
//! - **Compare-and-set**: every transaction locks the node's row in
//!   `audit_nodes` and checks that PostgreSQL's head is where this writer
//!   left it (or where another process on this data directory left it,
//!   inside the range being inserted) before it inserts and moves the
//!   head. A second data directory using the same node id cannot
//!   interleave its records: its transactions fail, and so do its
//!   appends.
//! - **A failed transaction** may still have committed (the connection
//!   broke after `COMMIT` was sent). The writer cuts the group off its
//!   file, as after any failed write, and remembers where the head would
//!   be had it committed; the next transaction that finds PostgreSQL's
//!   head exactly there deletes those rows (never acknowledged, as the
//!   cut bytes of a file) before inserting its own. Any other head is
//!   refused, never overwritten.
//! - **At open** the node is registered with its checkpoint key (a node
//!   id belongs to one data directory, and a data directory to one node
//!   id), and the log is reconciled with PostgreSQL: records the log has
//!   and PostgreSQL lacks (synced, then the process died before its
//!   commit; or the backend was just switched on) are inserted, in
//!   chunks; a PostgreSQL chain that the log does not continue (a lost or
//!   foreign data directory) is refused with what to do.

use super::row::Row;
use super::{Conn, Db, pg_err};
use crate::audit::chain::{self, GENESIS};
use crate::audit::checkpoint::Checkpoint;
use crate::store::settings::PgSettings;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

/// The file in the audit directory naming the node id its log is kept
/// under in PostgreSQL.
pub const NODE_FILE: &str = "node-id";

/// Bytes of the log inserted per transaction when catching up at open.
const CATCH_UP_CHUNK: u64 = 4 << 20;

/// What PostgreSQL holds of this node's chain, and the way to add to it.
pub struct Mirror {
    db: Db,
    node: String,
    /// Where PostgreSQL's copy ends, as this writer last saw it: the log's
    /// length through its last row, the next sequence number, the head.
    len: u64,
    next_seq: u64,
    head: [u8; 32],
    /// Heads a failed transaction would have left had it committed.
    unsure: Vec<(u64, [u8; 32])>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("node", &self.node)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

/// The node id of the log in `dir`: the one it was registered under, else
/// `configured`, else the host name. A data directory keeps its node id.
pub fn resolve_node(dir: &Path, configured: Option<&str>) -> Result<String, String> {
    let path = dir.join(NODE_FILE);
    let stored = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    match (stored, configured) {
        (Some(stored), Some(configured)) if stored != configured => Err(format!(
            "this data directory's audit trail is node {stored:?} in PostgreSQL, but the configuration says node {configured:?}; \
             a data directory keeps its node id: use {stored:?}, or give node {configured:?} a data directory of its own"
        )),
        (Some(stored), _) => {
            crate::audit::settings::validate_node_id(&stored).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(stored)
        }
        (None, Some(configured)) => Ok(configured.to_string()),
        (None, None) => crate::audit::settings::host_node_id(),
    }
}

/// Record `node` as the node id of the log in `dir` (once registered).
fn remember_node(dir: &Path, node: &str) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(NODE_FILE);
    if path.exists() {
        return Ok(());
    }
    let tmp = dir.join(format!("{NODE_FILE}.tmp-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(format!("{node}\n").as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .and_then(|()| File::open(dir)?.sync_all());
    written.map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn unsigned(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn seq_of(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The rows `bytes` (whole lines) make, chained after `head`, starting at
/// `next_seq`.
fn rows_of(node: &str, bytes: &[u8], mut next_seq: u64, mut head: [u8; 32]) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for line in bytes.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let (row, _) = Row::of_line(node, line, &head)
            .map_err(|e| format!("record {next_seq} of the log cannot go to PostgreSQL: {e}"))?;
        if row.seq != next_seq {
            return Err(format!(
                "the log holds record {} where record {next_seq} should be; run `{}`",
                row.seq,
                crate::hint::command("audit verify")
            ));
        }
        head = row.hash;
        next_seq += 1;
        rows.push(row);
    }
    Ok(rows)
}

/// Read `len` bytes of `file` at `offset`.
fn read_at(file: &File, offset: u64, len: u64) -> Result<Vec<u8>, String> {
    let len = usize::try_from(len).map_err(|_| "too much to read at once".to_string())?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| format!("cannot read the log back: {e}"))?;
    Ok(buf)
}

/// The end (offset after its newline) and hash of record `seq`, found by
/// reading `file` backwards from `end` (the records PostgreSQL lacks are
/// normally the last few).
fn find_record(file: &File, end: u64, seq: u64) -> Result<Option<(u64, [u8; 32])>, String> {
    let mut window: u64 = 1 << 20;
    let mut end = end;
    while end > 0 {
        let start = end.saturating_sub(window);
        let buf = read_at(file, start, end - start)?;
        // Complete lines only: a window not starting at 0 may begin inside
        // one; one holding no whole line is widened.
        let first = if start == 0 {
            0
        } else {
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) if i + 1 < buf.len() => i + 1,
                _ => {
                    window = window.saturating_mul(4);
                    continue;
                }
            }
        };
        let mut lines = Vec::new();
        let mut from = first;
        while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
            lines.push((from, from + i));
            from += i + 1;
        }
        for &(from, to) in lines.iter().rev() {
            let line = &buf[from..to];
            let line_seq = line
                .strip_prefix(b"{\"seq\":")
                .map(|rest| rest.iter().take_while(|b| b.is_ascii_digit()).count())
                .and_then(|n| std::str::from_utf8(&line[7..7 + n]).ok()?.parse::<u64>().ok())
                .ok_or_else(|| format!("the log has an unreadable record at offset {}", start + from as u64))?;
            if line_seq == seq {
                let hash = line
                    .len()
                    .checked_sub(66)
                    .and_then(|at| chain::parse_hex(&line[at..at + 64]))
                    .ok_or_else(|| format!("record {seq} of the log has no readable hash"))?;
                return Ok(Some((start + to as u64 + 1, hash)));
            }
            if line_seq < seq {
                return Ok(None);
            }
        }
        if start == 0 {
            break;
        }
        end = start + first as u64;
    }
    Ok(None)
}

impl Mirror {
    /// Connect, make sure the schema is there, register `node` with the
    /// log's checkpoint key, and bring PostgreSQL up to the log's tail
    /// (`len` bytes, `next_seq`, `head`). Refuses a node id that belongs to
    /// another data directory, and a PostgreSQL chain the log does not
    /// continue.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        pg: &PgSettings,
        dir: &Path,
        node: &str,
        public_key: &str,
        file: &File,
        len: u64,
        next_seq: u64,
        head: [u8; 32],
    ) -> Result<Mirror, String> {
        let at = |e: String| format!("{}: {e}", pg.url);
        // The schema first (the store applies missing migrations when it
        // opens; this process may not open the store at all).
        drop(crate::store::postgres::PgStore::open(pg, crate::store::postgres::Migrate::Apply).map_err(|e| e.0)?);
        let db = Db::connect(pg, 2).map_err(at)?;
        let (pg_next, pg_head) = db.block(register(&db, node, public_key)).map_err(at)?;
        let mut mirror = Mirror {
            db,
            node: node.to_string(),
            len: 0,
            next_seq: 0,
            head: GENESIS,
            unsure: Vec::new(),
        };
        let theirs = pg_next.checked_sub(1);
        let ours = next_seq.checked_sub(1);
        match (theirs, ours) {
            (None, _) => {}
            (Some(t), Some(o)) if t == o && pg_head == head => {
                (mirror.len, mirror.next_seq, mirror.head) = (len, next_seq, head);
            }
            (Some(t), Some(o)) if t < o => match find_record(file, len, t)? {
                Some((end, hash)) if hash == pg_head => {
                    (mirror.len, mirror.next_seq, mirror.head) = (end, pg_next, pg_head);
                }
                _ => return Err(at(diverged(node, t, &pg_head))),
            },
            (Some(t), Some(o)) if t == o => return Err(at(diverged(node, t, &pg_head))),
            (Some(t), ours) => {
                return Err(at(format!(
                    "PostgreSQL holds node {node:?}'s chain up to record {t}, but this data directory's log {}: \
                     the log is not the one that wrote them (its data directory was lost or restored from an older copy). \
                     Nothing is appended until this is resolved: restore the data directory that wrote node {node:?}'s records, \
                     or start this one as a new node (set [audit] node-id to a new name and delete {})",
                    match ours {
                        Some(o) => format!("ends at record {o}"),
                        None => "is empty".into(),
                    },
                    dir.join(NODE_FILE).display()
                )));
            }
        }
        // Catch up, in chunks (a log switched to PostgreSQL may be long).
        while mirror.len < len {
            let chunk_end = mirror.chunk_end(file, len)?;
            let bytes = read_at(file, mirror.len, chunk_end - mirror.len)?;
            let rows = rows_of(node, &bytes, mirror.next_seq, mirror.head)?;
            let (Some(last_seq), Some(last_hash)) = (rows.last().map(|r| r.seq), rows.last().map(|r| r.hash)) else {
                break;
            };
            mirror.insert(&rows, chunk_end, last_seq + 1, last_hash).map_err(at)?;
        }
        remember_node(dir, node)?;
        Ok(mirror)
    }

    /// The end of the next chunk to catch up: at most [`CATCH_UP_CHUNK`]
    /// after [`Mirror::len`], at a line's end.
    fn chunk_end(&self, file: &File, len: u64) -> Result<u64, String> {
        if len - self.len <= CATCH_UP_CHUNK {
            return Ok(len);
        }
        let mut size = CATCH_UP_CHUNK;
        loop {
            let end = (self.len + size).min(len);
            let bytes = read_at(file, self.len, end - self.len)?;
            match bytes.iter().rposition(|&b| b == b'\n') {
                Some(i) => return Ok(self.len + i as u64 + 1),
                None if end == len => return Ok(len),
                None => size = size.saturating_mul(2),
            }
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Insert everything the log holds up to `len` (the end of record
    /// `next_seq - 1`, whose hash is `head`) that PostgreSQL lacks, in one
    /// transaction. `Ok` only once it committed.
    pub fn push(&mut self, file: &File, len: u64, next_seq: u64, head: [u8; 32]) -> Result<(), String> {
        if len <= self.len {
            return Ok(());
        }
        let fail = |e: String| format!("cannot store the records in PostgreSQL ({}): {e}", self.db.url());
        let bytes = read_at(file, self.len, len - self.len).map_err(fail)?;
        let rows = rows_of(&self.node, &bytes, self.next_seq, self.head).map_err(fail)?;
        if rows.last().map(|r| (r.seq + 1, r.hash)) != Some((next_seq, head)) {
            return Err(fail("the log read back does not end where it was written".into()));
        }
        let url = self.db.url().to_string();
        self.insert(&rows, len, next_seq, head)
            .map_err(|e| format!("cannot store the records in PostgreSQL ({url}): {e}"))
    }

    fn insert(&mut self, rows: &[Row], len: u64, next_seq: u64, head: [u8; 32]) -> Result<(), String> {
        let result = self.db.block(self.transact(rows, next_seq, head));
        match result {
            Ok(()) => {
                (self.len, self.next_seq, self.head) = (len, next_seq, head);
                self.unsure.clear();
                Ok(())
            }
            Err(e) => {
                self.unsure.push((next_seq, head));
                Err(e)
            }
        }
    }

    async fn transact(&self, rows: &[Row], next_seq: u64, head: [u8; 32]) -> Result<(), String> {
        let conn = self.db.conn().await?;
        if !rows.is_empty() && self.unsure.is_empty() {
            // The usual case, one statement: the chain in PostgreSQL ends
            // where this process last left it; move its head and insert
            // the rows at once. Nothing changes if it ends elsewhere: the
            // transaction below finds out why.
            let moved = append_rows(&conn, &self.node, (self.next_seq, self.head), (next_seq, head), rows).await?;
            if moved {
                conn.done();
                return Ok(());
            }
        }
        let c = conn.c();
        c.batch_execute("BEGIN").await.map_err(pg_err)?;
        let node_row = c
            .query_opt(
                "SELECT next_seq, head FROM audit_nodes WHERE node = $1 FOR UPDATE",
                &[&self.node],
            )
            .await
            .map_err(pg_err)?
            .ok_or_else(|| {
                format!(
                    "node {:?} is not registered in audit_nodes (its row was deleted); restart airlock to register it again",
                    self.node
                )
            })?;
        let pg_next = seq_of(node_row.try_get(0).map_err(|e| e.to_string())?);
        let pg_head: Vec<u8> = node_row.try_get(1).map_err(|e| e.to_string())?;
        let pg_head = <[u8; 32]>::try_from(pg_head.as_slice()).unwrap_or([0xff; 32]);
        let skip = if (pg_next, pg_head) == (self.next_seq, self.head) {
            0
        } else if let Some(i) = rows.iter().position(|r| r.seq + 1 == pg_next && r.hash == pg_head) {
            // Another process on this data directory inserted these.
            i + 1
        } else if self.unsure.contains(&(pg_next, pg_head)) {
            // A transaction reported failed had committed: its records
            // were never acknowledged and are no longer in the log.
            c.execute(
                "DELETE FROM audit_records WHERE node = $1 AND seq >= $2",
                &[&self.node, &unsigned(self.next_seq)],
            )
            .await
            .map_err(pg_err)?;
            0
        } else {
            return Err(diverged(&self.node, pg_next.saturating_sub(1), &pg_head));
        };
        let rows = &rows[skip.min(rows.len())..];
        if !rows.is_empty() {
            insert_rows(&conn, &self.node, rows).await?;
        }
        c.execute(
            "UPDATE audit_nodes SET next_seq = $2, head = $3, updated_at = $4 WHERE node = $1",
            &[
                &self.node,
                &unsigned(next_seq),
                &head.as_slice(),
                &unsigned(crate::time::now_micros()),
            ],
        )
        .await
        .map_err(pg_err)?;
        c.batch_execute("COMMIT").await.map_err(pg_err)?;
        conn.done();
        Ok(())
    }

    /// Store a signed checkpoint of this node's chain (one per sequence
    /// number; a second one of the same record is redundant).
    pub fn checkpoint(&self, cp: &Checkpoint) -> Result<(), String> {
        self.db
            .block(async {
                let conn = self.db.conn().await?;
                conn.c()
                    .execute(
                        "INSERT INTO audit_checkpoints (node, seq, head, ts, public_key, signature) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (node, seq) DO NOTHING",
                        &[
                            &self.node,
                            &unsigned(cp.seq),
                            &cp.head,
                            &cp.ts,
                            &cp.public_key,
                            &cp.signature,
                        ],
                    )
                    .await
                    .map_err(pg_err)?;
                conn.done();
                Ok(())
            })
            .map_err(|e| format!("cannot store the checkpoint in PostgreSQL ({}): {e}", self.db.url()))
    }
}

fn diverged(node: &str, seq: u64, head: &[u8; 32]) -> String {
    format!(
        "PostgreSQL's chain of node {node:?} ends at record {seq} (blake3:{}), which this data directory's log does not continue; \
         another data directory is using node id {node:?}, or the database was changed: give every data directory its own \
         [audit] node-id, and run `{}`",
        chain::hex(head),
        crate::hint::command("audit verify")
    )
}

/// Register `node` with `public_key` (or check it is registered with
/// it); returns PostgreSQL's (next sequence number, head) of its chain.
async fn register(db: &Db, node: &str, public_key: &str) -> Result<(u64, [u8; 32]), String> {
    let conn = db.conn().await?;
    let c = conn.c();
    c.batch_execute("BEGIN").await.map_err(pg_err)?;
    if let Some(other) = c
        .query_opt(
            "SELECT node FROM audit_nodes WHERE public_key = $1 AND node <> $2 LIMIT 1",
            &[&public_key, &node],
        )
        .await
        .map_err(pg_err)?
    {
        let other: String = other.try_get(0).map_err(|e| e.to_string())?;
        return Err(format!(
            "this data directory's log is already node {other:?}'s chain in PostgreSQL; it cannot also be node {node:?} \
             (set [audit] node-id = {other:?}, or remove node-id to keep the one it has)"
        ));
    }
    c.execute(
        "INSERT INTO audit_nodes (node, public_key, next_seq, head, updated_at) VALUES ($1, $2, 0, $3, $4) \
         ON CONFLICT (node) DO NOTHING",
        &[
            &node,
            &public_key,
            &GENESIS.as_slice(),
            &unsigned(crate::time::now_micros()),
        ],
    )
    .await
    .map_err(pg_err)?;
    let row = c
        .query_one(
            "SELECT public_key, next_seq, head FROM audit_nodes WHERE node = $1 FOR UPDATE",
            &[&node],
        )
        .await
        .map_err(pg_err)?;
    let key: String = row.try_get(0).map_err(|e| e.to_string())?;
    if key != public_key {
        return Err(format!(
            "node id {node:?} belongs to another data directory in PostgreSQL (its checkpoint key differs from this one's); \
             give this data directory a node id of its own ([audit] node-id)"
        ));
    }
    let next: i64 = row.try_get(1).map_err(|e| e.to_string())?;
    let head: Vec<u8> = row.try_get(2).map_err(|e| e.to_string())?;
    let head = <[u8; 32]>::try_from(head.as_slice())
        .map_err(|_| format!("node {node:?}'s head in audit_nodes is not 32 bytes"))?;
    c.batch_execute("COMMIT").await.map_err(pg_err)?;
    conn.done();
    Ok((seq_of(next), head))
}

/// Rows as one array per column, for `UNNEST`.
struct Columns<'a> {
    seqs: Vec<i64>,
    prevs: Vec<&'a [u8]>,
    hashes: Vec<&'a [u8]>,
    ts: Vec<i64>,
    kinds: Vec<&'a str>,
    invocations: Vec<Option<&'a str>>,
    actions: Vec<Option<&'a str>>,
    callers: Vec<Option<&'a str>>,
    lines: Vec<&'a str>,
}

/// A statement parameter.
type Param<'a> = dyn tokio_postgres::types::ToSql + Sync + 'a;

impl<'a> Columns<'a> {
    /// The arrays, in the order of `unnest_records!`.
    fn arrays(&self) -> [&Param<'a>; 9] {
        [
            &self.seqs,
            &self.prevs,
            &self.hashes,
            &self.ts,
            &self.kinds,
            &self.invocations,
            &self.actions,
            &self.callers,
            &self.lines,
        ]
    }

    fn of(rows: &'a [Row]) -> Columns<'a> {
        Columns {
            seqs: rows.iter().map(|r| unsigned(r.seq)).collect(),
            prevs: rows.iter().map(|r| r.prev.as_slice()).collect(),
            hashes: rows.iter().map(|r| r.hash.as_slice()).collect(),
            ts: rows.iter().map(|r| r.ts).collect(),
            kinds: rows.iter().map(|r| r.kind.as_str()).collect(),
            invocations: rows.iter().map(|r| r.invocation.as_deref()).collect(),
            actions: rows.iter().map(|r| r.action.as_deref()).collect(),
            callers: rows.iter().map(|r| r.caller.as_deref()).collect(),
            lines: rows.iter().map(|r| r.line.as_str()).collect(),
        }
    }
}

/// The records' columns, unnested server-side from parameters `$N` on
/// (`N` is the first array's number).
macro_rules! unnest_records {
    ($a:literal, $b:literal, $c:literal, $d:literal, $e:literal, $f:literal, $g:literal, $h:literal, $i:literal) => {
        concat!(
            "UNNEST($",
            $a,
            "::bigint[], $",
            $b,
            "::bytea[], $",
            $c,
            "::bytea[], $",
            $d,
            "::bigint[], $",
            $e,
            "::text[], $",
            $f,
            "::text[], $",
            $g,
            "::text[], $",
            $h,
            "::text[], $",
            $i,
            "::text[])"
        )
    };
}

/// Insert `rows` in one statement (arrays unnested server-side).
async fn insert_rows(conn: &Conn, node: &str, rows: &[Row]) -> Result<(), String> {
    let c = Columns::of(rows);
    let sql = concat!(
        "INSERT INTO audit_records (node, seq, prev_hash, hash, ts, kind, invocation, action, caller, line) \
         SELECT $1, * FROM ",
        unnest_records!(2, 3, 4, 5, 6, 7, 8, 9, 10)
    );
    let statement = conn.cached(sql).await.map_err(pg_err)?;
    let mut params: Vec<&Param<'_>> = vec![&node];
    params.extend(c.arrays());
    conn.c().execute(&statement, &params).await.map_err(pg_err)?;
    Ok(())
}

/// Move `node`'s head in `audit_nodes` from `from` to `to` (next sequence
/// number, head hash) and insert `rows`, in one statement: `false`, and
/// nothing changed, when the head was not at `from`.
async fn append_rows(
    conn: &Conn,
    node: &str,
    from: (u64, [u8; 32]),
    to: (u64, [u8; 32]),
    rows: &[Row],
) -> Result<bool, String> {
    let c = Columns::of(rows);
    let sql = concat!(
        "WITH moved AS (UPDATE audit_nodes SET next_seq = $4, head = $5, updated_at = $6 \
         WHERE node = $1 AND next_seq = $2 AND head = $3 RETURNING node) \
         INSERT INTO audit_records (node, seq, prev_hash, hash, ts, kind, invocation, action, caller, line) \
         SELECT moved.node, r.* FROM moved, ",
        unnest_records!(7, 8, 9, 10, 11, 12, 13, 14, 15),
        " AS r"
    );
    let statement = conn.cached(sql).await.map_err(pg_err)?;
    let (from_seq, to_seq, now) = (unsigned(from.0), unsigned(to.0), unsigned(crate::time::now_micros()));
    let (from_head, to_head) = (from.1.as_slice(), to.1.as_slice());
    let mut params: Vec<&Param<'_>> = vec![&node, &from_seq, &from_head, &to_seq, &to_head, &now];
    params.extend(c.arrays());
    let inserted = conn.c().execute(&statement, &params).await.map_err(pg_err)?;
    Ok(inserted == rows.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{Entry, encode};
    use crate::audit::event::{Event, Recovered};
    use std::io::Write as _;

    fn log(n: u64) -> (tempfile::NamedTempFile, Vec<[u8; 32]>, Vec<u64>) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut prev = GENESIS;
        let (mut hashes, mut ends) = (Vec::new(), Vec::new());
        let mut at = 0u64;
        for seq in 0..n {
            let entry = Entry {
                seq,
                ts: "2026-12-01T00:00:00.000000Z".into(),
                prev: chain::hex(&prev),
                event: Event::Recovered(Recovered {
                    truncated_bytes: seq,
                    last_good_seq: None,
                    // Long records, so the windows cut through lines.
                    reason: "x".repeat((seq as usize * 7919) % 5000),
                }),
            };
            let (line, hash) = encode(&entry, &prev).unwrap();
            f.write_all(&line).unwrap();
            at += line.len() as u64;
            prev = hash;
            hashes.push(hash);
            ends.push(at);
        }
        (f, hashes, ends)
    }

    #[test]
    fn records_are_found_from_the_end_of_the_log() {
        let (f, hashes, ends) = log(1500);
        let file = f.reopen().unwrap();
        let len = *ends.last().unwrap();
        for seq in [1499, 1498, 1000, 700, 1, 0] {
            assert_eq!(
                find_record(&file, len, seq).unwrap(),
                Some((ends[seq as usize], hashes[seq as usize])),
                "record {seq}"
            );
        }
        assert_eq!(find_record(&file, ends[10], 11).unwrap(), None);
        let bytes = read_at(&file, ends[99], ends[199] - ends[99]).unwrap();
        let rows = rows_of("n", &bytes, 100, hashes[99]).unwrap();
        assert_eq!(rows.len(), 100);
        assert!(
            rows_of("n", &bytes, 101, hashes[99]).is_err(),
            "a wrong start is refused"
        );
        assert!(
            rows_of("n", &bytes, 100, hashes[98]).is_err(),
            "a broken chain is refused"
        );
    }

    #[test]
    fn a_data_directory_keeps_its_node_id() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve_node(dir.path(), Some("n1")).unwrap(), "n1");
        remember_node(dir.path(), "n1").unwrap();
        assert_eq!(resolve_node(dir.path(), None).unwrap(), "n1");
        assert_eq!(resolve_node(dir.path(), Some("n1")).unwrap(), "n1");
        let e = resolve_node(dir.path(), Some("n2")).unwrap_err();
        assert!(e.contains("keeps its node id"), "{e}");
    }
}
