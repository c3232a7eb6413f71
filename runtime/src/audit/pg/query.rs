//! `airlock audit show/export/tail` and `GET /v1/audit` with PostgreSQL:
//! across every node, in time order, from indexed SQL, and checked before
//! anything is handed out.
//!
//! - An unfiltered read (or one bounded by time only) reads every node's
//!   chain in sequence order, checking it link by link as `verify` does,
//!   and merges the nodes by time.
//! - A filtered one (invocation, action, caller), or one for the newest
//!   records only, asks the indexes, then checks the answer: every row
//!   returned is its own line (hash, columns) and matches the query by its
//!   content (its invocation, its own time, the action and caller its
//!   invocation's opening record names); and on each node, every record
//!   between the first and the last returned (for the newest records: to
//!   the node's head) is read, chained, and must have been returned if it
//!   matches. A row edited to leave a query's answer is found there, or
//!   by the next `airlock audit verify`, which reads everything.
//!
//! Records are handed out as they are stored, with the node they belong
//! to.

use super::row::{COLUMNS, Row};
use super::verify::PgVerifyError;
use super::{Db, pg_err};
use crate::audit::chain::Record;
use crate::audit::query::Filter;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use tokio_postgres::types::ToSql;

const PAGE: i64 = 5000;

/// One record returned: the node whose chain holds it, the record, and its
/// line exactly as stored.
#[derive(Debug, Clone)]
pub struct Hit {
    pub node: String,
    pub record: Record,
    pub line: String,
    ts: i64,
}

impl Hit {
    /// The line with `"node":NODE` added first: what export and the API
    /// hand out (remove that member to get the line the hash covers).
    pub fn line_with_node(&self) -> String {
        let node = serde_json::to_string(&self.node).unwrap_or_default();
        match self.line.strip_prefix('{') {
            Some(rest) => format!("{{\"node\":{node},{rest}"),
            None => self.line.clone(),
        }
    }

    fn key(&self) -> (i64, &str, u64) {
        (self.ts, &self.node, self.record.entry.seq)
    }
}

fn bad(node: &str, seq: u64, reason: impl Into<String>) -> PgVerifyError {
    PgVerifyError::Record {
        node: node.to_string(),
        seq,
        reason: reason.into(),
    }
}

fn db(e: String) -> PgVerifyError {
    PgVerifyError::Db(e)
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Each registered node and its next sequence number.
pub fn heads(db: &Db) -> Result<BTreeMap<String, u64>, PgVerifyError> {
    let rows = db
        .block(async {
            let conn = db.conn().await?;
            let rows = conn
                .c()
                .query("SELECT node, next_seq FROM audit_nodes ORDER BY node", &[])
                .await
                .map_err(pg_err)?;
            conn.done();
            Ok(rows)
        })
        .map_err(self::db)?;
    let mut out = BTreeMap::new();
    for r in rows {
        let node: String = r.try_get(0).map_err(|e| self::db(e.to_string()))?;
        let next: i64 = r.try_get(1).map_err(|e| self::db(e.to_string()))?;
        out.insert(node, u64::try_from(next).unwrap_or(0));
    }
    Ok(out)
}

/// Rows `from..to` of `node`'s chain (at most [`PAGE`]), checked: each its
/// own line, each chained to the one before (to `prev` for the first, if
/// known), no sequence number missing.
fn chain_page(
    db: &Db,
    node: &str,
    from: u64,
    to: u64,
    prev: Option<[u8; 32]>,
) -> Result<Vec<(Row, Record)>, PgVerifyError> {
    let rows = db
        .block(async {
            let conn = db.conn().await?;
            let rows = conn
                .c()
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM audit_records WHERE node = $1 AND seq >= $2 AND seq < $3 ORDER BY seq LIMIT {PAGE}"
                    ),
                    &[&node, &signed(from), &signed(to)],
                )
                .await
                .map_err(pg_err)?;
            conn.done();
            Ok(rows)
        })
        .map_err(self::db)?;
    let mut out = Vec::with_capacity(rows.len());
    let mut prev = prev;
    for (expected, r) in (from..).zip(rows.iter()) {
        let row = Row::from_pg(r).map_err(|e| bad(node, expected, e))?;
        if row.seq != expected {
            return Err(bad(
                node,
                expected,
                format!(
                    "it is missing (the next row is record {}); run `{}`",
                    row.seq,
                    crate::hint::command("audit verify")
                ),
            ));
        }
        if prev.is_some_and(|p| p != row.prev) {
            return Err(bad(
                node,
                row.seq,
                format!(
                    "its prev_hash is not the hash of the record before it; run `{}`",
                    crate::hint::command("audit verify")
                ),
            ));
        }
        let record = row.check().map_err(|e| bad(node, row.seq, e))?;
        prev = Some(record.hash);
        out.push((row, record));
    }
    if out.is_empty() && from < to {
        return Err(bad(
            node,
            from,
            format!(
                "it is missing (the node's head says it exists); run `{}`",
                crate::hint::command("audit verify")
            ),
        ));
    }
    Ok(out)
}

/// Records matching `filter` across every node, in time order (the newest
/// `newest` only, if given), each checked (see the module). `visit`
/// returns false to stop. Returns how many were visited.
pub fn select(
    db: &Db,
    filter: &Filter,
    newest: Option<usize>,
    mut visit: impl FnMut(&Hit) -> bool,
) -> Result<u64, PgVerifyError> {
    let scoped = filter.invocation.is_some() || filter.action.is_some() || filter.caller.is_some();
    if !scoped && newest.is_none() {
        return merged_scan(db, filter, &mut visit);
    }
    // The heads before the query: every record up to them is committed
    // when the query runs, so the check below may expect it in the answer
    // (records appended meanwhile are past them).
    let heads = match newest {
        Some(_) => heads(db)?,
        None => BTreeMap::new(),
    };
    let mut hits = indexed(db, filter, newest)?;
    check(db, filter, newest.map(|_| &heads), &hits)?;
    hits.sort_by(|a, b| a.key().cmp(&b.key()));
    let mut n = 0;
    for hit in &hits {
        n += 1;
        if !visit(hit) {
            break;
        }
    }
    Ok(n)
}

/// Every node's chain read in order and merged by time; records outside
/// `filter`'s time window skipped.
fn merged_scan(db: &Db, filter: &Filter, visit: &mut dyn FnMut(&Hit) -> bool) -> Result<u64, PgVerifyError> {
    struct Cursor {
        node: String,
        next: u64,
        end: u64,
        prev: [u8; 32],
        buf: std::collections::VecDeque<Hit>,
    }
    impl Cursor {
        fn fill(&mut self, db: &Db) -> Result<(), PgVerifyError> {
            if self.buf.is_empty() && self.next < self.end {
                for (row, record) in chain_page(db, &self.node, self.next, self.end, Some(self.prev))? {
                    self.prev = record.hash;
                    self.next = row.seq + 1;
                    self.buf.push_back(Hit {
                        node: row.node,
                        line: row.line,
                        ts: row.ts,
                        record,
                    });
                }
            }
            Ok(())
        }
    }
    let mut cursors: Vec<Cursor> = heads(db)?
        .into_iter()
        .map(|(node, end)| Cursor {
            node,
            next: 0,
            end,
            prev: crate::audit::chain::GENESIS,
            buf: Default::default(),
        })
        .collect();
    let mut heap = BinaryHeap::new();
    for (i, c) in cursors.iter_mut().enumerate() {
        c.fill(db)?;
        if let Some(h) = c.buf.front() {
            heap.push(std::cmp::Reverse((h.ts, h.node.clone(), h.record.entry.seq, i)));
        }
    }
    let mut n = 0;
    while let Some(std::cmp::Reverse((_, _, _, i))) = heap.pop() {
        let c = &mut cursors[i];
        let Some(hit) = c.buf.pop_front() else { continue };
        let ts = u64::try_from(hit.ts).unwrap_or(0);
        let inside = !(filter.since.is_some_and(|s| ts < s) || filter.until.is_some_and(|u| ts >= u));
        if inside {
            n += 1;
            if !visit(&hit) {
                break;
            }
        }
        c.fill(db)?;
        if let Some(h) = c.buf.front() {
            heap.push(std::cmp::Reverse((h.ts, h.node.clone(), h.record.entry.seq, i)));
        }
    }
    Ok(n)
}

/// Escape `%`, `_` and `\` for a LIKE prefix.
fn like_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// The indexes' answer: rows matching `filter` by their columns, each
/// checked against its own line.
fn indexed(db: &Db, filter: &Filter, newest: Option<usize>) -> Result<Vec<Hit>, PgVerifyError> {
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut sql = format!("SELECT {COLUMNS} FROM audit_records WHERE TRUE");
    let param = |params: &mut Vec<Box<dyn ToSql + Sync + Send>>, v: Box<dyn ToSql + Sync + Send>| {
        params.push(v);
        format!("${}", params.len())
    };
    if let Some(prefix) = &filter.invocation {
        let p = param(&mut params, Box::new(like_prefix(prefix)));
        sql.push_str(&format!(" AND invocation LIKE {p} ESCAPE '\\'"));
    }
    if filter.action.is_some() || filter.caller.is_some() {
        let mut sub = String::from("SELECT invocation FROM audit_records WHERE action IS NOT NULL");
        if let Some(a) = &filter.action {
            let p = param(&mut params, Box::new(a.clone()));
            sub.push_str(&format!(" AND action = {p}"));
        }
        if let Some(c) = &filter.caller {
            let p = param(&mut params, Box::new(c.clone()));
            sub.push_str(&format!(" AND caller = {p}"));
        }
        sql.push_str(&format!(" AND invocation IN ({sub})"));
    }
    if let Some(s) = filter.since {
        let p = param(&mut params, Box::new(signed(s)));
        sql.push_str(&format!(" AND ts >= {p}"));
    }
    if let Some(u) = filter.until {
        let p = param(&mut params, Box::new(signed(u)));
        sql.push_str(&format!(" AND ts < {p}"));
    }
    match newest {
        Some(limit) => sql.push_str(&format!(" ORDER BY ts DESC, node DESC, seq DESC LIMIT {limit}")),
        None => sql.push_str(" ORDER BY ts, node, seq"),
    }
    let rows = db
        .block(async {
            let conn = db.conn().await?;
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
            let rows = conn.c().query(&sql, &refs).await.map_err(pg_err)?;
            conn.done();
            Ok(rows)
        })
        .map_err(self::db)?;
    let mut hits = Vec::with_capacity(rows.len());
    for r in &rows {
        let row = Row::from_pg(r).map_err(|e| self::db(format!("a returned row cannot be read: {e}")))?;
        let record = row.check().map_err(|e| bad(&row.node, row.seq, e))?;
        hits.push(Hit {
            node: row.node,
            line: row.line,
            ts: row.ts,
            record,
        });
    }
    Ok(hits)
}

/// Which invocations belong to an action/caller query, by their opening
/// records' content.
struct Members<'a> {
    filter: &'a Filter,
    ids: HashSet<String>,
}

impl Members<'_> {
    fn learn(&mut self, record: &Record) {
        if let Some((id, action, caller)) = crate::audit::trust::opening(&record.entry.event)
            && self.filter.action.as_ref().is_none_or(|a| a == action)
            && self.filter.caller.as_ref().is_none_or(|c| c == caller)
        {
            self.ids.insert(id.to_string());
        }
    }

    /// Whether `record` matches the query by its own content.
    fn matches(&self, record: &Record) -> bool {
        let f = self.filter;
        let invocation = record.entry.event.invocation();
        if let Some(prefix) = &f.invocation
            && !invocation.is_some_and(|i| i.starts_with(prefix.as_str()))
        {
            return false;
        }
        if (f.action.is_some() || f.caller.is_some()) && !invocation.is_some_and(|i| self.ids.contains(i)) {
            return false;
        }
        let ts = crate::time::parse_utc(&record.entry.ts).unwrap_or(0);
        !(f.since.is_some_and(|s| ts < s) || f.until.is_some_and(|u| ts >= u))
    }
}

/// Check the indexes' answer against the chains (see the module).
fn check(db: &Db, filter: &Filter, newest: Option<&BTreeMap<String, u64>>, hits: &[Hit]) -> Result<(), PgVerifyError> {
    let mut members = Members {
        filter,
        ids: HashSet::new(),
    };
    if filter.action.is_some() || filter.caller.is_some() {
        // The opening records of every invocation returned, wherever they
        // are, judged by their lines.
        let ids: Vec<String> = hits
            .iter()
            .filter_map(|h| h.record.entry.event.invocation().map(str::to_string))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let rows = db
            .block(async {
                let conn = db.conn().await?;
                let rows = conn
                    .c()
                    .query(
                        &format!(
                            "SELECT {COLUMNS} FROM audit_records WHERE invocation = ANY($1) AND action IS NOT NULL"
                        ),
                        &[&ids],
                    )
                    .await
                    .map_err(pg_err)?;
                conn.done();
                Ok(rows)
            })
            .map_err(self::db)?;
        for r in &rows {
            let row = Row::from_pg(r).map_err(|e| self::db(format!("a row cannot be read: {e}")))?;
            let record = row.check().map_err(|e| bad(&row.node, row.seq, e))?;
            members.learn(&record);
        }
    }
    for hit in hits {
        if !members.matches(&hit.record) {
            return Err(bad(
                &hit.node,
                hit.record.entry.seq,
                format!(
                    "the database returned it for a query it does not match (its indexed columns were changed); run `{}`",
                    crate::hint::command("audit verify")
                ),
            ));
        }
    }
    // Per node: every record from the first returned to the last (to the
    // head for the newest records) that matches must have been returned.
    let oldest = hits.iter().map(|h| h.key()).min();
    let mut per_node: HashMap<&str, HashSet<u64>> = HashMap::new();
    for hit in hits {
        per_node.entry(&hit.node).or_default().insert(hit.record.entry.seq);
    }
    for (node, seqs) in &per_node {
        let (Some(&lo), Some(&hi)) = (seqs.iter().min(), seqs.iter().max()) else {
            continue;
        };
        let end = match newest {
            Some(heads) => heads.get(*node).copied().unwrap_or(hi + 1).max(hi + 1),
            None => hi + 1,
        };
        let mut from = lo;
        let mut prev = None;
        while from < end {
            let page = chain_page(db, node, from, end, prev)?;
            for (row, record) in &page {
                members.learn(record);
                let cut_by_limit = oldest.is_some_and(|o| (row.ts, row.node.as_str(), row.seq) < o);
                if members.matches(record) && !seqs.contains(&row.seq) && !cut_by_limit {
                    return Err(bad(
                        node,
                        row.seq,
                        format!(
                            "it matches the query but the database did not return it (its indexed columns were changed); run `{}`",
                            crate::hint::command("audit verify")
                        ),
                    ));
                }
                prev = Some(record.hash);
                from = row.seq + 1;
            }
        }
    }
    Ok(())
}

/// For `tail -f`: the records appended to each node's chain after
/// `seen` (node → next sequence number, and the hash of the record before
/// it if known), in time order; `seen` moves past them. Nodes not in
/// `seen` start at their current head (only records appended from now on).
pub fn follow(
    db: &Db,
    seen: &mut BTreeMap<String, (u64, Option<[u8; 32]>)>,
    mut visit: impl FnMut(&Hit) -> bool,
) -> Result<(), PgVerifyError> {
    let mut new = Vec::new();
    for (node, end) in heads(db)? {
        let (from, prev) = *seen.entry(node.clone()).or_insert((end, None));
        let mut from = from;
        let mut prev = prev;
        while from < end {
            for (row, record) in chain_page(db, &node, from, end, prev)? {
                prev = Some(record.hash);
                from = row.seq + 1;
                new.push(Hit {
                    node: row.node,
                    line: row.line,
                    ts: row.ts,
                    record,
                });
            }
        }
        seen.insert(node, (from, prev));
    }
    new.sort_by(|a, b| a.key().cmp(&b.key()));
    for hit in &new {
        if !visit(hit) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_prefixes_match_only_literally() {
        assert_eq!(like_prefix("ab"), "ab%");
        assert_eq!(like_prefix("a%_\\"), "a\\%\\_\\\\%");
    }
}
