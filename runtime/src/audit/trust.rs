//! Checking what the index answered against the log itself.
//!
//! The index ([`super::index`]) is derived data that anyone able to write
//! `index.db` can edit: delete rows, point rows at other records or other
//! invocations, change an invocation's action or caller, move a record's
//! time. It is therefore only ever trusted to say *where to look*. Before a
//! query's records are handed out, [`check`] proves from the records
//! themselves that the answer is the log's:
//!
//! - **shape**: no row past the indexed position, no record of an
//!   invocation indexed as nobody's; for action, caller and id-prefix
//!   queries also one row per record and no row pointing at a missing
//!   invocation;
//! - **each record returned matches the query**, judged from its own
//!   content: its invocation id, its own time, and the action and caller
//!   named by its invocation's opening record (started, refused or
//!   approval-requested), never by the index's columns;
//! - **nothing that matches is missing**: the log is read sequentially
//!   (chain checked) from the first record returned to the last (to the end
//!   while a returned invocation has no closing record, or for the newest
//!   records), and every record there that matches must have been
//!   returned; each invocation's first record returned must be its opening
//!   one; with `since`, the records just before the first one returned
//!   must fall before it;
//! - for action and caller queries, **every invocation's action and caller**
//!   in the index are checked against its opening record, so no invocation
//!   can be hidden by relabelling it.
//!
//! A query whose answer fails any check is not answered from the index: the
//! index is rebuilt from the log and the log is scanned instead (see
//! [`super::index::select`]). `airlock audit verify` compares every row.

use super::Event;
use super::chain::{self, Record};
use super::index::{Hit, Index};
use super::query::Filter;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom};

/// The invocation a record opens, with the action and caller it names.
pub(crate) fn opening(event: &Event) -> Option<(&str, &str, &str)> {
    match event {
        Event::InvocationStarted(e) => Some((&e.invocation, &e.action, &e.caller)),
        Event::InvocationRefused(e) => Some((&e.invocation, &e.action, &e.caller)),
        Event::ApprovalRequested(e) => Some((&e.invocation, &e.action, &e.caller)),
        _ => None,
    }
}

/// Invocation ids are 32 hex digits.
const INVOCATION_ID_LEN: usize = 32;

/// Whether a record can be an invocation's first: an opening record, or
/// the cut-off record recovery writes for one whose start never reached
/// the log.
fn starts(event: &Event) -> bool {
    opening(event).is_some() || matches!(event, Event::InvocationCutOff(c) if c.started_seq.is_none())
}

/// Whether a record ends its invocation.
fn closes(event: &Event) -> bool {
    matches!(
        event,
        Event::InvocationFinished(_) | Event::InvocationRefused(_) | Event::InvocationCutOff(_)
    )
}

/// Check `hits`, the index's answer to `filter` (the newest `newest` of
/// the matches, if given), against the log. `Err` says what did not hold.
pub(crate) fn check(index: &Index, filter: &Filter, newest: Option<usize>, hits: &[Hit]) -> Result<(), String> {
    let mut reader = index.reader().map_err(|e| e.reason)?;
    let by_owner = filter.action.is_some() || filter.caller.is_some();
    // An invocation renamed in the index, or its row deleted (its records
    // then point at nothing), would hide from a prefix that matches others
    // too (a whole id that finds nothing is confirmed by a scan instead).
    let by_prefix = filter.invocation.as_ref().is_some_and(|p| p.len() < INVOCATION_ID_LEN);
    index.check_shape(&mut reader, by_owner || by_prefix)?;
    if by_owner || by_prefix {
        check_invocation_rows(index, &mut reader)?;
    }
    let indexed = index.indexed_records()?;
    let (Some(first), Some(last)) = (hits.first(), hits.last()) else {
        return Ok(());
    };
    let mut judge = Judge {
        filter,
        index,
        owners: HashMap::new(),
        indexed,
    };
    for hit in hits {
        judge.learn(&hit.record);
    }
    for hit in hits {
        if !judge.matches(&hit.record, &mut reader)? {
            return Err(format!(
                "it returned record {}, which does not match the query",
                hit.record.entry.seq
            ));
        }
    }
    let returned: HashSet<u64> = hits.iter().map(|h| h.record.entry.seq).collect();
    let scoped = filter.invocation.is_some() || by_owner;
    if scoped && newest.is_none() && filter.since.is_none() {
        // An invocation's records start with its opening record.
        let mut seen = HashSet::new();
        for hit in hits {
            let id = hit.record.entry.event.invocation().unwrap_or_default();
            if seen.insert(id.to_string()) && !starts(&hit.record.entry.event) {
                return Err(format!(
                    "invocation {id}'s first record returned ({}) is not its opening record",
                    hit.record.entry.seq
                ));
            }
        }
    }
    // Records before the first one returned: with `since`, those inside
    // the window; for a query bounded by time alone, all of them (the
    // first match is normally the log's first record).
    if filter.since.is_some() || (!scoped && newest.is_none()) {
        judge.check_before(first.record.entry.seq, &mut reader)?;
    }
    let closed: HashSet<&str> = hits
        .iter()
        .filter(|h| closes(&h.record.entry.event))
        .filter_map(|h| h.record.entry.event.invocation())
        .collect();
    let open = hits
        .iter()
        .filter_map(|h| h.record.entry.event.invocation())
        .any(|id| !closed.contains(id));
    let to_end = newest.is_some() || open || (!scoped && filter.until.is_none());
    let stop = if to_end {
        Stop::End
    } else if !scoped {
        Stop::Until(last.record.entry.seq)
    } else {
        Stop::After(last.record.entry.seq)
    };
    judge.check_range(first, stop, &returned, &mut reader)
}

/// Where the completeness scan stops.
#[derive(Clone, Copy)]
enum Stop {
    /// At the end of the log.
    End,
    /// After this record.
    After(u64),
    /// After this record, at the first record at or past `until`.
    Until(u64),
}

/// Whether records match a filter, judged from the records alone.
struct Judge<'a> {
    filter: &'a Filter,
    index: &'a Index,
    /// Invocation id → (action, caller), from opening records; `None` for
    /// one whose start never reached the log (nobody's: it matches no
    /// action or caller).
    owners: HashMap<String, Option<(String, String)>>,
    /// Records the index covers in this snapshot: the checks read no
    /// further (what was appended since is the next query's).
    indexed: u64,
}

impl Judge<'_> {
    fn learn(&mut self, record: &Record) {
        if let Some((id, action, caller)) = opening(&record.entry.event) {
            self.owners
                .entry(id.to_string())
                .or_insert_with(|| Some((action.to_string(), caller.to_string())));
        }
    }

    /// The action and caller of invocation `id`, from its opening record:
    /// one seen already, or the first of its indexed records that opens
    /// it (read back and checked; a record that names another invocation
    /// is no evidence).
    fn owner(&mut self, id: &str, reader: &mut BufReader<std::fs::File>) -> Result<Option<(String, String)>, String> {
        if let Some(owner) = self.owners.get(id) {
            return Ok(owner.clone());
        }
        for hit in self.index.first_of(reader, id, 8).map_err(|e| e.reason)? {
            let event = &hit.record.entry.event;
            let owner = match opening(event) {
                Some((named, action, caller)) if named == id => Some((action.to_string(), caller.to_string())),
                _ if starts(event) && event.invocation() == Some(id) => None,
                _ => continue,
            };
            self.owners.insert(id.to_string(), owner.clone());
            return Ok(owner);
        }
        Err(format!("no opening record of invocation {id} is indexed as its own"))
    }

    fn matches(&mut self, record: &Record, reader: &mut BufReader<std::fs::File>) -> Result<bool, String> {
        let f = self.filter;
        if f.since.is_some() || f.until.is_some() {
            let ts = crate::time::parse_utc(&record.entry.ts).unwrap_or(0);
            if f.since.is_some_and(|s| ts < s) || f.until.is_some_and(|u| ts >= u) {
                return Ok(false);
            }
        }
        let invocation = record.entry.event.invocation();
        if let Some(prefix) = &f.invocation
            && !invocation.is_some_and(|i| i.starts_with(prefix.as_str()))
        {
            return Ok(false);
        }
        if f.action.is_none() && f.caller.is_none() {
            return Ok(true);
        }
        let Some(id) = invocation else { return Ok(false) };
        let Some((action, caller)) = self.owner(id, reader)? else {
            return Ok(false);
        };
        Ok(f.action.as_ref().is_none_or(|a| *a == action) && f.caller.as_ref().is_none_or(|c| *c == caller))
    }

    /// The records before `first` must not match, or they were left out:
    /// walking back while they are inside the time window (with `since`),
    /// or to the start of the log.
    fn check_before(&mut self, first: u64, reader: &mut BufReader<std::fs::File>) -> Result<(), String> {
        let mut seq = first;
        while let Some(prev) = seq.checked_sub(1) {
            let hit = self
                .index
                .record_at(reader, prev)
                .map_err(|e| e.reason)?
                .ok_or_else(|| format!("record {prev} is not indexed"))?;
            if let Some(since) = self.filter.since
                && crate::time::parse_utc(&hit.record.entry.ts).unwrap_or(0) < since
            {
                return Ok(());
            }
            if self.matches(&hit.record, reader)? {
                return Err(format!("record {prev} matches the query but was not returned"));
            }
            seq = prev;
        }
        Ok(())
    }

    /// Read the log from `first` on, checking the chain, until `stop`:
    /// every record that matches must be in `returned`.
    fn check_range(
        &mut self,
        first: &Hit,
        stop: Stop,
        returned: &HashSet<u64>,
        reader: &mut BufReader<std::fs::File>,
    ) -> Result<(), String> {
        let mut log = BufReader::with_capacity(1 << 20, reader.get_ref().try_clone().map_err(|e| e.to_string())?);
        log.seek(SeekFrom::Start(first.offset + first.len))
            .map_err(|e| e.to_string())?;
        let mut prev = first.record.hash;
        let mut expected = first.record.entry.seq + 1;
        let mut line = Vec::new();
        loop {
            if let Stop::After(last) = stop
                && expected > last
            {
                return Ok(());
            }
            if expected >= self.indexed {
                // Appended after this snapshot was indexed.
                return match stop {
                    Stop::After(last) => Err(format!("the index ends before record {last}")),
                    _ => Ok(()),
                };
            }
            line.clear();
            let n = log.read_until(b'\n', &mut line).map_err(|e| e.to_string())?;
            if n == 0 || line.last() != Some(&b'\n') {
                // The end, or a record still being written.
                return match stop {
                    Stop::After(last) => Err(format!("the log ends before record {last}")),
                    _ => Ok(()),
                };
            }
            line.pop();
            let record = chain::decode(&line, &prev).map_err(|e| {
                format!(
                    "record {expected} does not check out ({e}); run `{}`",
                    crate::hint::command("audit verify")
                )
            })?;
            if record.entry.seq != expected {
                return Err(format!(
                    "the log holds record {} where {expected} belongs",
                    record.entry.seq
                ));
            }
            self.learn(&record);
            if let Stop::Until(last) = stop
                && expected > last
                && self
                    .filter
                    .until
                    .is_some_and(|u| crate::time::parse_utc(&record.entry.ts).unwrap_or(0) >= u)
            {
                return Ok(());
            }
            if !returned.contains(&expected) && self.matches(&record, reader)? {
                return Err(format!("record {expected} matches the query but was not returned"));
            }
            prev = record.hash;
            expected += 1;
        }
    }
}

/// Every invocation row's action and caller must be those its first
/// record (its opening one) names: relabelling an invocation would hide it
/// from an action or caller query.
fn check_invocation_rows(index: &Index, reader: &mut BufReader<std::fs::File>) -> Result<(), String> {
    for row in index.invocation_rows().map_err(|e| e.reason)? {
        let first = index
            .first_record(reader, &row)
            .map_err(|e| e.reason)?
            .ok_or_else(|| format!("invocation {} has no records", row.id))?;
        match opening(&first.record.entry.event) {
            Some((id, action, caller))
                if id == row.id && row.action.as_deref() == Some(action) && row.caller.as_deref() == Some(caller) => {}
            // Recovery closes an invocation whose start was never written
            // with a cut-off record alone: it names no caller, and the
            // index holds neither.
            None if matches!(&first.record.entry.event, Event::InvocationCutOff(c) if c.invocation == row.id)
                && row.action.is_none()
                && row.caller.is_none() => {}
            Some((id, action, caller)) if id == row.id => {
                return Err(format!(
                    "invocation {id} is indexed as action {:?} by {:?}, but its record {} says action {action} by {caller}",
                    row.action.as_deref().unwrap_or("(none)"),
                    row.caller.as_deref().unwrap_or("(none)"),
                    first.record.entry.seq
                ));
            }
            _ => {
                return Err(format!(
                    "invocation {}'s first indexed record ({}) does not open it",
                    row.id, first.record.entry.seq
                ));
            }
        }
    }
    Ok(())
}
