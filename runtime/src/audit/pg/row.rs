//! One row of `audit_records`: a line of a node's log, and the columns
//! derived from it for the indexes.
//!
//! The line is the record; the columns are only where to look. Every
//! reader rebuilds the columns from the line ([`Row::check`]) and treats a
//! row whose columns differ as tampered with, so an edited column can hide
//! a record from a query only until the next `airlock audit verify`, and
//! never changes what a returned record says.

use crate::audit::Event;
use crate::audit::chain::{self, Record};

/// The columns, in the order [`Row::from_pg`] reads them.
pub const COLUMNS: &str = "node, seq, prev_hash, hash, ts, kind, invocation, action, caller, line";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub node: String,
    pub seq: u64,
    pub prev: [u8; 32],
    pub hash: [u8; 32],
    /// Unix microseconds, from the line's `ts`.
    pub ts: i64,
    pub kind: String,
    pub invocation: Option<String>,
    /// Set on the records that open an invocation (started, refused,
    /// approval requested) only: the action and caller they name.
    pub action: Option<String>,
    pub caller: Option<String>,
    /// The line exactly as the node's log holds it, without its newline.
    pub line: String,
}

/// The `kind` of an event, as its line spells it.
pub fn kind_of(event: &Event) -> &'static str {
    match event {
        Event::InvocationStarted(_) => "invocation-started",
        Event::HostCall(_) => "host-call",
        Event::InvocationFinished(_) => "invocation-finished",
        Event::InvocationRefused(_) => "invocation-refused",
        Event::InvocationCutOff(_) => "invocation-cut-off",
        Event::Recovered(_) => "recovered",
        Event::ApprovalRequested(_) => "approval-requested",
        Event::ApprovalDecision(_) => "approval-decision",
        Event::ApprovalResolved(_) => "approval-resolved",
        Event::Notification(_) => "notification",
        Event::ApprovalEscalated(_) => "approval-escalated",
    }
}

fn micros(ts: &str) -> i64 {
    crate::time::parse_utc(ts)
        .ok()
        .and_then(|t| i64::try_from(t).ok())
        .unwrap_or(0)
}

impl Row {
    /// The row `line` (without its newline) makes in `node`'s chain after
    /// a record whose hash is `prev`; `Err` if the line is not a record
    /// chained there.
    pub fn of_line(node: &str, line: &[u8], prev: &[u8; 32]) -> Result<(Row, Record), String> {
        let text = std::str::from_utf8(line).map_err(|_| "the line is not UTF-8".to_string())?;
        let record = chain::decode(line, prev)?;
        if record.entry.prev != chain::hex(prev) {
            return Err("its `prev` does not name the previous record".into());
        }
        let row = Row::derive(node, &record, text);
        Ok((row, record))
    }

    fn derive(node: &str, record: &Record, line: &str) -> Row {
        let event = &record.entry.event;
        let opening = crate::audit::trust::opening(event);
        Row {
            node: node.to_string(),
            seq: record.entry.seq,
            prev: chain::parse_hex(record.entry.prev.as_bytes()).unwrap_or(chain::GENESIS),
            hash: record.hash,
            ts: micros(&record.entry.ts),
            kind: kind_of(event).to_string(),
            invocation: event.invocation().map(str::to_string),
            action: opening.map(|(_, a, _)| a.to_string()),
            caller: opening.map(|(_, _, c)| c.to_string()),
            line: line.to_string(),
        }
    }

    /// A row as read (columns in [`COLUMNS`] order).
    pub fn from_pg(r: &tokio_postgres::Row) -> Result<Row, String> {
        let hash = |i: usize, what: &str| -> Result<[u8; 32], String> {
            let bytes: Vec<u8> = r.try_get(i).map_err(|e| format!("{what}: {e}"))?;
            <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| format!("its {what} column is not 32 bytes"))
        };
        let seq: i64 = r.try_get(1).map_err(|e| e.to_string())?;
        Ok(Row {
            node: r.try_get(0).map_err(|e| e.to_string())?,
            seq: u64::try_from(seq).map_err(|_| format!("its seq column is negative ({seq})"))?,
            prev: hash(2, "prev_hash")?,
            hash: hash(3, "hash")?,
            ts: r.try_get(4).map_err(|e| e.to_string())?,
            kind: r.try_get(5).map_err(|e| e.to_string())?,
            invocation: r.try_get(6).map_err(|e| e.to_string())?,
            action: r.try_get(7).map_err(|e| e.to_string())?,
            caller: r.try_get(8).map_err(|e| e.to_string())?,
            line: r.try_get(9).map_err(|e| e.to_string())?,
        })
    }

    /// Check a stored row against its own line: the line's hash after the
    /// row's `prev_hash`, and every column against what the line says.
    /// Whether `prev_hash` is the previous record's hash is the caller's
    /// to check (it needs that record). Returns the line's record.
    pub fn check(&self) -> Result<Record, String> {
        let (derived, record) = Row::of_line(&self.node, self.line.as_bytes(), &self.prev)?;
        let differs = |what: &str, stored: &dyn std::fmt::Debug, line: &dyn std::fmt::Debug| {
            Err(format!("its {what} column says {stored:?} but its line says {line:?}"))
        };
        if derived.seq != self.seq {
            return differs("seq", &self.seq, &derived.seq);
        }
        if derived.hash != self.hash {
            return differs("hash", &chain::hex(&self.hash), &chain::hex(&derived.hash));
        }
        if derived.ts != self.ts {
            return differs("ts", &self.ts, &derived.ts);
        }
        if derived.kind != self.kind {
            return differs("kind", &self.kind, &derived.kind);
        }
        if derived.invocation != self.invocation {
            return differs("invocation", &self.invocation, &derived.invocation);
        }
        if derived.action != self.action {
            return differs("action", &self.action, &derived.action);
        }
        if derived.caller != self.caller {
            return differs("caller", &self.caller, &derived.caller);
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{Entry, GENESIS, encode};
    use crate::audit::event::Recovered;

    #[test]
    fn a_row_is_its_line_and_any_edited_column_is_named() -> Result<(), String> {
        let entry = Entry {
            seq: 0,
            ts: "2026-11-24T00:00:00.000001Z".into(),
            prev: chain::hex(&GENESIS),
            event: Event::Recovered(Recovered {
                truncated_bytes: 3,
                last_good_seq: None,
                reason: "test".into(),
            }),
        };
        let (line, hash) = encode(&entry, &GENESIS)?;
        let body = &line[..line.len() - 1];
        let (row, _) = Row::of_line("n1", body, &GENESIS)?;
        assert_eq!((row.seq, row.hash, row.kind.as_str()), (0, hash, "recovered"));
        // The kind is the one serde writes.
        assert!(row.line.contains("\"kind\":\"recovered\""));
        assert_eq!(row.ts, 1_795_478_400_000_001);
        row.check()?;
        let mut bad = row.clone();
        bad.seq = 1;
        assert!(bad.check().is_err_and(|e| e.contains("seq column")));
        let mut bad = row.clone();
        bad.invocation = Some("x".into());
        assert!(bad.check().is_err_and(|e| e.contains("invocation column")));
        let mut bad = row.clone();
        bad.prev = [1; 32];
        assert!(bad.check().is_err());
        let mut bad = row;
        bad.line = bad.line.replace("test", "tost");
        assert!(bad.check().is_err());
        Ok(())
    }
}
