//! Recovery: closing what an ended process left open, so the log and the
//! status rows always end every invocation that started.
//!
//! A process killed mid-invocation leaves a start record with no closing
//! record, and perhaps a status row that says `running`. Neither can ever
//! change again, since the only writer is gone. Recovery, run by the next
//! airlock process that opens the log (and every few seconds by the
//! service), finds such processes by their runner leases
//! ([`super::lease`]): a lease whose lock it can take belongs to a process
//! that has ended. For each one it reads the log from the lease's floor
//! and:
//!
//! - appends an `invocation-cut-off` record (an ordinary record, chained
//!   and checkpointed like any other) for every invocation that process
//!   started and never closed, and for every `running` row of it whose
//!   start never reached the log;
//! - brings in the final status rows it had journaled but not committed
//!   ([`crate::store::journal`]), then moves each of its rows still
//!   `running` to what the log says: the outcome of its
//!   `invocation-finished` record (succeeded or failed; the result itself
//!   is not in the log, only its digest), or failed with the cut-off
//!   reason;
//! - removes the lease, once all of that is written.
//!
//! Invocations of live processes are never touched: their leases are
//! locked. Recoveries are serialized by a lock file, so two processes never
//! close one invocation twice, and a recovery interrupted halfway is
//! finished by the next one (the lease stays until the end; closing
//! records already written are found in the log and not written again).

use super::chain::{self, Entry, Record};
use super::event::{CUT_OFF_REASON, Event, InvocationCutOff};
use super::lease::{self, RUNNERS_DIR};
use super::log::{AuditLog, LOG_FILE};
use crate::store::{InvocationOutcome, InvocationRecord, InvocationStatus, Store};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The lock that serializes recoveries, in the runners directory.
pub const LOCK_FILE: &str = "recovery.lock";
/// Longest wait for another process's recovery to finish.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// The exit code a cut-off invocation's row carries (an internal failure).
const CUT_OFF_EXIT_CODE: i32 = 5;

/// What one recovery did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Leases of ended processes taken over and removed.
    pub leases: Vec<String>,
    /// Invocations closed with an `invocation-cut-off` record.
    pub cut_off: Vec<String>,
    /// Status rows moved from `running` to what the log says.
    pub rows: Vec<(String, InvocationStatus)>,
}

impl Recovered {
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty() && self.cut_off.is_empty() && self.rows.is_empty()
    }
}

/// Why recovery could not finish; the next one tries again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("recovering what ended airlock processes left in {dir}: {reason}")]
pub struct RecoveryError {
    pub dir: String,
    pub reason: String,
}

/// Where the status rows are: `Ok(None)` when there are none (no database).
pub type OpenRows<'a> = &'a dyn Fn() -> Result<Option<Arc<dyn Store>>, String>;

/// How the log closed one invocation.
#[derive(Debug, Clone)]
enum Closing {
    Finished {
        ok: bool,
        exit_code: i32,
        error: Option<String>,
    },
    Refused {
        exit_code: i32,
        error: String,
    },
    CutOff {
        reason: String,
    },
}

impl Closing {
    fn of(event: &Event) -> Option<(&str, Closing)> {
        match event {
            Event::InvocationFinished(f) => Some((
                &f.invocation,
                Closing::Finished {
                    ok: f.outcome == "ok",
                    exit_code: f.exit_code,
                    error: f.error.clone(),
                },
            )),
            Event::InvocationRefused(r) => Some((
                &r.invocation,
                Closing::Refused {
                    exit_code: r.exit_code,
                    error: r.error.clone(),
                },
            )),
            Event::InvocationCutOff(c) => Some((
                &c.invocation,
                Closing::CutOff {
                    reason: c.reason.clone(),
                },
            )),
            _ => None,
        }
    }

    /// The status row that agrees with this closing.
    fn row(&self) -> (InvocationStatus, InvocationOutcome) {
        let finished_at = crate::time::now_micros();
        match self {
            Closing::Finished { ok: true, .. } => (
                InvocationStatus::Succeeded,
                InvocationOutcome {
                    exit_code: 0,
                    result: None,
                    error: None,
                    finished_at,
                },
            ),
            Closing::Finished { exit_code, error, .. } => (
                InvocationStatus::Failed,
                InvocationOutcome {
                    exit_code: *exit_code,
                    result: None,
                    error: error.clone(),
                    finished_at,
                },
            ),
            Closing::Refused { exit_code, error } => (
                InvocationStatus::Failed,
                InvocationOutcome {
                    exit_code: *exit_code,
                    result: None,
                    error: Some(error.clone()),
                    finished_at,
                },
            ),
            Closing::CutOff { reason } => (
                InvocationStatus::Failed,
                InvocationOutcome {
                    exit_code: CUT_OFF_EXIT_CODE,
                    result: None,
                    error: Some(format!("cut off: {reason}")),
                    finished_at,
                },
            ),
        }
    }
}

/// An invocation started by an ended process and not (yet) seen closed.
struct Open {
    action: String,
    seq: u64,
    runner: Option<String>,
}

/// Close what ended processes left open in `log`'s directory (see the
/// module doc). `open_rows` gives the status rows, asked for only when
/// needed: when a lease of an ended process is found, or always when
/// `check_rows` (then `running` rows whose runner is gone without a lease,
/// or written before leases existed, are caught too).
pub fn recover(log: &AuditLog, open_rows: OpenRows<'_>, check_rows: bool) -> Result<Recovered, RecoveryError> {
    let dir = log.dir();
    let fail = |reason: String| RecoveryError {
        dir: dir.display().to_string(),
        reason,
    };
    let _lock = lock(dir).map_err(&fail)?;
    let census = lease::census(dir, log.runner()).map_err(|e| fail(format!("cannot read the leases: {e}")))?;
    let dead: HashMap<&str, Option<u64>> = census.dead.iter().map(|d| (d.id.as_str(), d.floor)).collect();
    let others_alive = !census.alive.is_empty();
    let store = if dead.is_empty() && !check_rows {
        None
    } else {
        open_rows().map_err(|e| fail(format!("cannot open the status rows: {e}")))?
    };
    // Rows that say `running` for a process that is gone, and where in the
    // log that process's records start.
    let mut rows: Vec<InvocationRecord> = Vec::new();
    let mut done_foreign: Vec<String> = Vec::new();
    let mut floor: Option<u64> = dead.values().map(|f| f.unwrap_or(0)).min();
    if let Some(store) = &store {
        // Final rows an ended process stored but never committed first:
        // they are what its clients were told.
        store.adopt_orphaned_runs().map_err(|e| fail(e.to_string()))?;
        let running = store
            .invocations(Some(InvocationStatus::Running), usize::MAX)
            .map_err(|e| fail(e.to_string()))?;
        let shared = store.shared();
        for row in running {
            let row_floor = match row.runner.as_deref() {
                Some(r) if r == log.runner() => continue,
                Some(r) => match dead.get(r) {
                    Some(f) => f.unwrap_or(0),
                    // Checked now, after the row was read: a lease is in
                    // place before any row names it.
                    None if lease::may_run(dir, r) => continue,
                    // A store other machines share: a runner with no lease
                    // here may run on another node, whose heartbeats tell.
                    None if shared => match foreign_runner(store.as_ref(), r, &row)? {
                        Foreign::Alive => continue,
                        Foreign::Dead => {
                            // Its records are in its own node's log, not
                            // this one: end the row and owe its closing
                            // record in one transaction, so of several
                            // nodes recovering at once (or the node itself,
                            // if it was only slow) exactly one closes it.
                            if end_foreign(store.as_ref(), &row, r)? {
                                done_foreign.push(row.id.clone());
                            }
                            continue;
                        }
                        Foreign::Unknown => 0,
                    },
                    // No lease: its process settled everything it could
                    // and is gone, or its lease was lost.
                    None => 0,
                },
                // Written before leases: its process is gone if no other
                // airlock process runs.
                None if others_alive => continue,
                None => 0,
            };
            floor = Some(floor.map_or(row_floor, |f| f.min(row_floor)));
            rows.push(row);
        }
    }
    if !done_foreign.is_empty()
        && let Some(store) = &store
    {
        // The closing records owed above, into this node's log.
        store
            .drain_audit_outbox(&mut |records| {
                let events = super::event::decode_owed(&records).map_err(crate::store::Refusal::AuditUnavailable)?;
                log.append_durable(events)
                    .map(|_| ())
                    .map_err(|e| crate::store::Refusal::AuditUnavailable(e.to_string()))
            })
            .map_err(|e| fail(e.to_string()))?;
        tracing::warn!(
            target: "airlock::audit",
            count = done_foreign.len(),
            "ended invocations of a node that stopped sending heartbeats (invocation-cut-off)"
        );
    }
    let Some(floor) = floor else {
        let mut done = Recovered::default();
        for id in done_foreign {
            done.cut_off.push(id.clone());
            done.rows.push((id, InvocationStatus::Failed));
        }
        return Ok(done);
    };
    let row_ids: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let mut open: HashMap<String, Open> = HashMap::new();
    let mut closed: HashMap<String, Closing> = HashMap::new();
    scan(&dir.join(LOG_FILE), floor, |seq, event| match event {
        Event::InvocationStarted(s) => {
            let gone = match s.runner.as_deref() {
                Some(r) => dead.contains_key(r),
                None => !others_alive,
            };
            if gone || row_ids.contains(s.invocation.as_str()) {
                open.insert(
                    s.invocation.clone(),
                    Open {
                        action: s.action.clone(),
                        seq,
                        runner: s.runner.clone(),
                    },
                );
            }
        }
        other => {
            if let Some((id, closing)) = Closing::of(&other)
                && (open.remove(id).is_some() || row_ids.contains(id))
            {
                closed.insert(id.to_string(), closing);
            }
        }
    })
    .map_err(&fail)?;

    // Closing records for what never closed, in the order they started.
    let reason = CUT_OFF_REASON.to_string();
    let mut cut: BTreeMap<(u64, String), InvocationCutOff> = BTreeMap::new();
    for (id, o) in open {
        cut.insert(
            (o.seq, id.clone()),
            InvocationCutOff {
                invocation: id,
                action: Some(o.action),
                runner: o.runner,
                started_seq: Some(o.seq),
                outcome: "cut-off".into(),
                reason: reason.clone(),
            },
        );
    }
    for row in rows.iter().filter(|r| !closed.contains_key(&r.id)) {
        if cut.values().any(|c| c.invocation == row.id) {
            continue;
        }
        cut.insert(
            (u64::MAX, row.id.clone()),
            InvocationCutOff {
                invocation: row.id.clone(),
                action: Some(row.action.clone()),
                runner: row.runner.clone(),
                started_seq: None,
                outcome: "cut-off".into(),
                reason: reason.clone(),
            },
        );
    }
    let mut done = Recovered::default();
    if !cut.is_empty() {
        let events: Vec<Event> = cut.into_values().map(Event::InvocationCutOff).collect();
        for e in &events {
            if let Some(id) = e.invocation() {
                done.cut_off.push(id.to_string());
                closed.insert(id.to_string(), Closing::CutOff { reason: reason.clone() });
            }
        }
        log.append_durable(events)
            .map_err(|e| fail(format!("cannot write the closing records: {e}")))?;
        tracing::warn!(
            target: "airlock::audit",
            count = done.cut_off.len(),
            "closed invocations an ended process left open (invocation-cut-off)"
        );
    }
    if let Some(store) = &store {
        for row in &rows {
            let Some(closing) = closed.get(&row.id) else { continue };
            let (to, outcome) = closing.row();
            let moved = store
                .transition_invocation(&row.id, &[InvocationStatus::Running], to, Some(&outcome))
                .map_err(|e| fail(e.to_string()))?;
            if moved {
                done.rows.push((row.id.clone(), to));
            }
        }
    }
    for id in done_foreign {
        done.cut_off.push(id.clone());
        done.rows.push((id, InvocationStatus::Failed));
    }
    for d in census.dead {
        let id = d.id.clone();
        match d.remove() {
            Ok(()) => done.leases.push(id),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => done.leases.push(id),
            Err(e) => return Err(fail(format!("cannot remove lease {id}: {e}"))),
        }
    }
    Ok(done)
}

/// What the store's heartbeats say of a runner with no lease here.
enum Foreign {
    /// It sent one recently: another node runs it.
    Alive,
    /// Its node stopped sending them: its rows are ended from here.
    Dead,
    /// It never sent one: a process of this machine that ran before
    /// heartbeats, judged as before.
    Unknown,
}

fn foreign_runner(store: &dyn Store, runner: &str, row: &InvocationRecord) -> Result<Foreign, RecoveryError> {
    let fail = |e: crate::store::StoreError| RecoveryError {
        dir: "the store".into(),
        reason: e.to_string(),
    };
    match store.process(runner).map_err(fail)? {
        None if crate::time::now_micros().saturating_sub(row.updated_at)
            < u64::try_from(crate::store::PROCESS_STALE.as_micros()).unwrap_or(u64::MAX) =>
        {
            // A row claimed a moment ago by a process whose first
            // heartbeat is on its way.
            Ok(Foreign::Alive)
        }
        None => Ok(Foreign::Unknown),
        // Alive wherever it runs: another node, or another data directory
        // of this one (an `airlock invoke` beside the service).
        Some(_) if crate::store::process_alive(store, runner, row.updated_at).map_err(fail)? => Ok(Foreign::Alive),
        Some(p) if p.node == crate::cluster::node_id() => Ok(Foreign::Unknown),
        Some(_) => Ok(Foreign::Dead),
    }
}

/// End the `running` row of a dead node's runner as failed, its
/// `invocation-cut-off` record owed in the same transaction; `false` when
/// the row was no longer `running` (another node ended it, or the runner
/// finished it after all).
fn end_foreign(store: &dyn Store, row: &InvocationRecord, runner: &str) -> Result<bool, RecoveryError> {
    let fail = |reason: String| RecoveryError {
        dir: "the store".into(),
        reason,
    };
    let node = store
        .process(runner)
        .map_err(|e| fail(e.to_string()))?
        .map(|p| p.node)
        .unwrap_or_else(|| "?".into());
    let reason = format!("{CUT_OFF_REASON} (node {node} stopped sending heartbeats)");
    let event = Event::InvocationCutOff(InvocationCutOff {
        invocation: row.id.clone(),
        action: Some(row.action.clone()),
        runner: Some(runner.to_string()),
        started_seq: None,
        outcome: "cut-off".into(),
        reason: reason.clone(),
    });
    let audit = serde_json::to_string(&[event]).map_err(|e| fail(e.to_string()))?;
    let (_, outcome) = Closing::CutOff { reason }.row();
    store
        .end_invocation(&crate::store::InvocationEnding {
            invocation: &row.id,
            from: &[InvocationStatus::Running],
            to: InvocationStatus::Failed,
            outcome: &outcome,
            expire_approval: None,
            audit: &audit,
        })
        .map_err(|e| fail(e.to_string()))
}

/// Take the recovery lock, waiting up to [`LOCK_WAIT`] for another
/// process's recovery.
fn lock(audit_dir: &Path) -> Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = audit_dir.join(RUNNERS_DIR);
    crate::data_dir::create_private_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(format!(
                    "another airlock process has been recovering for {} s; it will finish the job",
                    LOCK_WAIT.as_secs()
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(format!("cannot lock {}: {e}", path.display())),
        }
    }
}

/// Visit every whole record of the log from byte `from` on (from the start
/// of the next record, if `from` falls inside one), checking each one's
/// hash and that each continues the one before. A last line still being
/// written by a live process is left alone.
fn scan(path: &Path, from: u64, mut visit: impl FnMut(u64, Event)) -> Result<(), String> {
    let io = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    // A floor past the end: the log was cut back since (a torn tail); read
    // all of it rather than guess.
    let from = if from > len { 0 } else { from };
    let mut at_line_start = from == 0;
    if !at_line_start {
        let mut before = [0u8; 1];
        file.read_exact_at(&mut before, from - 1).map_err(io)?;
        at_line_start = before[0] == b'\n';
    }
    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader.seek(SeekFrom::Start(from)).map_err(io)?;
    let mut line = Vec::new();
    if !at_line_start {
        reader.read_until(b'\n', &mut line).map_err(io)?;
    }
    let mut prev: Option<([u8; 32], u64)> = None;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(io)? == 0 || line.last() != Some(&b'\n') {
            return Ok(());
        }
        line.pop();
        let record = decode(&line, prev).map_err(|e| {
            let after = prev.map_or_else(|| format!("byte {from}"), |(_, seq)| format!("record {seq}"));
            format!(
                "the record after {after} does not check out ({e}); run `{}`",
                crate::hint::command("audit verify")
            )
        })?;
        prev = Some((record.hash, record.entry.seq));
        visit(record.entry.seq, record.entry.event);
    }
}

/// Decode one line that must follow `prev` (hash and sequence number), or,
/// for the first line read, the `prev` it names itself.
fn decode(line: &[u8], prev: Option<([u8; 32], u64)>) -> Result<Record, String> {
    let Some((prev_hash, prev_seq)) = prev else {
        let entry: Entry = serde_json::from_slice(line).map_err(|e| format!("not a record: {e}"))?;
        let named = chain::parse_hex(entry.prev.as_bytes()).ok_or("its `prev` is not a hash")?;
        return chain::decode(line, &named);
    };
    let record = chain::decode(line, &prev_hash)?;
    if Some(record.entry.seq) != prev_seq.checked_add(1) {
        return Err(format!(
            "it carries sequence number {}, expected {}",
            record.entry.seq,
            prev_seq.saturating_add(1)
        ));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{InvocationFinished, InvocationStarted};
    use crate::audit::lease::Lease;
    use crate::identity::{Caller, IdentityKind};
    use crate::store::sqlite::SqliteStore;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn started(id: &str, runner: Option<&str>) -> Event {
        Event::InvocationStarted(InvocationStarted {
            invocation: id.into(),
            caller: "bot".into(),
            caller_kind: Some("agent".into()),
            approval: None,
            action: "act".into(),
            service_identity: "action:act".into(),
            component_digest: "blake3:00".into(),
            function: "f".into(),
            args_digest: "blake3:00".into(),
            args: serde_json::json!({}),
            args_truncated: false,
            grants: vec![],
            runner: runner.map(str::to_string),
            policies: Vec::new(),
            reason: None,
            traceparent: None,
            signer: None,
        })
    }

    fn finished(id: &str, error: Option<&str>) -> Event {
        Event::InvocationFinished(InvocationFinished {
            invocation: id.into(),
            action: "act".into(),
            outcome: if error.is_some() { "action-error" } else { "ok" }.into(),
            exit_code: i32::from(error.is_some()),
            error: error.map(str::to_string),
            duration_us: 1,
            fuel_consumed: None,
            peak_memory_bytes: 0,
            result_blake3: None,
            stdout_bytes: 0,
            stdout_blake3: String::new(),
            stderr_bytes: 0,
            stderr_blake3: String::new(),
            log_lines: 0,
            host_calls: 0,
            host_calls_denied: 0,
            baseline_calls: Default::default(),
        })
    }

    fn running(id: &str, runner: Option<&str>) -> InvocationRecord {
        InvocationRecord {
            id: id.into(),
            action: "act".into(),
            function: "f".into(),
            args: serde_json::json!({}),
            caller: Caller {
                name: "bot".into(),
                kind: IdentityKind::Agent,
                roles: vec![],
                token_id: None,
            },
            state: InvocationStatus::Running,
            approval: None,
            created_at: 1,
            updated_at: 1,
            outcome: None,
            runner: runner.map(str::to_string),
            intent: None,
        }
    }

    /// A lease whose process "ends": taken, an invocation left unsettled,
    /// the handle gone (its lock with it), the file left behind.
    fn ended_lease(log: &AuditLog) -> Result<Arc<Lease>, Box<dyn std::error::Error>> {
        Ok(Lease::acquire(log.dir(), File::open(log.path())?)?)
    }

    fn end(lease: Arc<Lease>) {
        drop(lease.track());
        lease.release();
    }

    fn state(store: &dyn Store, id: &str) -> Option<InvocationRecord> {
        store.invocation(id).ok().flatten()
    }

    /// The cut-off records in the log, in order.
    fn cut_offs(log: &AuditLog) -> Vec<InvocationCutOff> {
        let mut out = Vec::new();
        let _ = crate::audit::read::scan(log.dir(), |r, _| {
            if let Event::InvocationCutOff(c) = &r.entry.event {
                out.push(c.clone());
            }
            true
        });
        out
    }

    #[test]
    fn an_ended_process_is_closed_in_the_log_and_its_rows_end_as_the_log_did() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let data = tmp.path();
        let log = AuditLog::open(&crate::audit::dir(data))?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(data)?);
        let rows = || -> Result<Option<Arc<dyn Store>>, String> { Ok(Some(store.clone())) };
        log.append_durable(vec![started("before", None), finished("before", None)])?;
        let dead = ended_lease(&log)?;
        let live = ended_lease(&log)?;
        let (d, l, own) = (dead.id().to_string(), live.id().to_string(), log.runner().to_string());
        log.append_durable(vec![
            started("a", Some(&d)),
            started("b", Some(&d)),
            started("c", Some(&d)),
            started("e", Some(&d)),
            started("f", Some(&l)),
            started("g", Some(&own)),
            finished("a", None),
            finished("b", Some("boom")),
        ])?;
        // a, b: finished in the log, the rows never updated; c: started,
        // never finished; d: a row whose start never reached the log; e: a
        // command-line run without a row; f, g: running in live processes.
        for (id, runner) in [("a", &d), ("b", &d), ("c", &d), ("d", &d), ("f", &l), ("g", &own)] {
            store.record_run(&running(id, Some(runner)))?;
        }
        end(dead);
        let done = recover(&log, &rows, true)?;
        assert_eq!(done.leases, std::slice::from_ref(&d));
        assert_eq!(
            done.cut_off,
            ["c", "e", "d"],
            "in the order they started, rows without a start last"
        );
        let cut = cut_offs(&log);
        assert_eq!(cut.len(), 3);
        assert_eq!(
            (cut[0].started_seq, cut[2].started_seq, cut[0].runner.as_deref()),
            (Some(4), None, Some(d.as_str()))
        );
        assert!(cut.iter().all(|c| c.reason == CUT_OFF_REASON && c.outcome == "cut-off"));
        let row = |id| state(store.as_ref(), id);
        assert_eq!(row("a").map(|r| r.state), Some(InvocationStatus::Succeeded));
        let b = row("b").ok_or("no row b")?;
        assert_eq!(b.state, InvocationStatus::Failed);
        assert_eq!(b.outcome.and_then(|o| o.error).as_deref(), Some("boom"));
        for id in ["c", "d"] {
            let r = row(id).ok_or("no row")?;
            assert_eq!(r.state, InvocationStatus::Failed, "{id}");
            assert!(
                r.outcome
                    .and_then(|o| o.error)
                    .is_some_and(|e| e.contains(CUT_OFF_REASON))
            );
        }
        // Live processes' invocations are untouched, in the log and rows.
        assert!(cut.iter().all(|c| c.invocation != "f" && c.invocation != "g"));
        assert_eq!(row("f").map(|r| r.state), Some(InvocationStatus::Running));
        assert_eq!(row("g").map(|r| r.state), Some(InvocationStatus::Running));
        assert!(!lease::path_of(log.dir(), &d).exists());
        // Nothing is done twice.
        assert!(recover(&log, &rows, true)?.is_empty());
        assert_eq!(cut_offs(&log).len(), 3);
        // Once the live process ends too, its invocation is closed.
        end(live);
        let done = recover(&log, &rows, true)?;
        assert_eq!(
            (done.cut_off, done.rows),
            (vec!["f".to_string()], vec![("f".to_string(), InvocationStatus::Failed)])
        );
        drop(log);
        // The closing records are ordinary records: the chain and the
        // checkpoints verify.
        crate::audit::read::verify(&crate::audit::dir(data), None)?;
        Ok(())
    }

    #[test]
    fn a_recovery_cut_short_is_finished_without_closing_anything_twice() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let data = tmp.path();
        let log = AuditLog::open(&crate::audit::dir(data))?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(data)?);
        let rows = || -> Result<Option<Arc<dyn Store>>, String> { Ok(Some(store.clone())) };
        let dead = ended_lease(&log)?;
        let d = dead.id().to_string();
        log.append_durable(vec![started("x", Some(&d))])?;
        store.record_run(&running("x", Some(&d)))?;
        end(dead);
        // An earlier recovery wrote the closing record, then died before
        // the row and the lease.
        log.append_durable(vec![Event::InvocationCutOff(InvocationCutOff {
            invocation: "x".into(),
            action: Some("act".into()),
            runner: Some(d.clone()),
            started_seq: Some(0),
            outcome: "cut-off".into(),
            reason: CUT_OFF_REASON.into(),
        })])?;
        let done = recover(&log, &rows, true)?;
        assert!(done.cut_off.is_empty(), "{done:?}");
        assert_eq!(done.rows, [("x".to_string(), InvocationStatus::Failed)]);
        assert_eq!(cut_offs(&log).len(), 1);
        Ok(())
    }

    #[test]
    fn rows_and_records_without_a_runner_are_closed_only_when_no_other_process_runs() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let data = tmp.path();
        let log = AuditLog::open(&crate::audit::dir(data))?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(data)?);
        let rows = || -> Result<Option<Arc<dyn Store>>, String> { Ok(Some(store.clone())) };
        // Written before leases existed: no runner anywhere; and a row
        // whose runner's lease file is gone.
        log.append_durable(vec![started("old", None), started("lost", Some("1-000000000000"))])?;
        store.record_run(&running("old", None))?;
        store.record_run(&running("lost", Some("1-000000000000")))?;
        let other = ended_lease(&log)?;
        let done = recover(&log, &rows, true)?;
        assert_eq!(done.rows, [("lost".to_string(), InvocationStatus::Failed)], "{done:?}");
        assert_eq!(done.cut_off, ["lost"]);
        assert_eq!(
            state(store.as_ref(), "old").map(|r| r.state),
            Some(InvocationStatus::Running),
            "another process runs: an invocation without a runner may be its"
        );
        end(other);
        let done = recover(&log, &rows, true)?;
        assert_eq!(done.cut_off, ["old"]);
        assert_eq!(done.rows, [("old".to_string(), InvocationStatus::Failed)]);
        Ok(())
    }

    #[test]
    fn the_scan_starts_mid_log_and_refuses_a_damaged_record() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let audit = tmp.path().join("audit");
        {
            let log = AuditLog::open(&audit)?;
            log.append_durable(vec![started("a", None), started("b", None), started("c", None)])?;
        }
        let path = audit.join(LOG_FILE);
        let text = std::fs::read(&path)?;
        let second = text.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1) as u64;
        let ids = |from: u64| -> Result<Vec<String>, String> {
            let mut out = Vec::new();
            scan(&path, from, |_, e| out.extend(e.invocation().map(str::to_string)))?;
            Ok(out)
        };
        assert_eq!(ids(0)?, ["a", "b", "c"]);
        assert_eq!(ids(second)?, ["b", "c"], "from a record's first byte");
        assert_eq!(ids(second - 5)?, ["b", "c"], "from inside a record: the next one");
        assert_eq!(ids(text.len() as u64 + 100)?, ["a", "b", "c"], "a floor past the end");
        // A changed byte in a record that is not the first one read.
        let mut bad = text.clone();
        let at = text.len() - 100;
        bad[at] ^= 1;
        std::fs::write(&path, &bad)?;
        assert!(ids(0).is_err_and(|e| e.contains("audit verify")));
        // A last line still being written is left alone.
        let mut partial = text.clone();
        partial.extend_from_slice(b"{\"seq\":3,\"ts\":");
        std::fs::write(&path, &partial)?;
        assert_eq!(ids(0)?, ["a", "b", "c"]);
        Ok(())
    }
}
