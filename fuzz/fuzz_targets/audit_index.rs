//! The audit index database (`index.db`): a valid index of a real log,
//! then whatever the input says done to it — rows rewritten, deleted or
//! invented, its position (`meta`) set to anything, its schema version
//! changed, raw bytes of the file overwritten — and the log itself cut
//! short, as an attacker with write access to the index, or a crash, could
//! leave them.
//!
//! The index is derived data and must never be trusted: whatever was done
//! to it, a query answers exactly what scanning the log answers, and
//! `audit verify`'s comparison, which rebuilds an index that differs,
//! finds nothing the second time.
#![no_main]

use airlock::audit::index::{INDEX_FILE, Index, compare_with_log, select};
use airlock::audit::log::LOG_FILE;
use airlock::audit::query::Filter;
use airlock::audit::read::scan;
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use rusqlite::{Connection, params};
use std::path::Path;
use std::sync::LazyLock;

/// A log written by `airlock invoke` (the `audit_log` target's seed).
const LOG: &[u8] = include_bytes!("../corpus/audit_log/log-only");

/// The index of [`LOG`], as `Index::catch_up` writes it.
static PRISTINE: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join(LOG_FILE), LOG).expect("write the log");
    let mut index = Index::open(dir.path()).expect("a fresh index opens");
    index.catch_up().expect("the seed log indexes");
    drop(index);
    std::fs::read(dir.path().join(INDEX_FILE)).expect("read the index")
});

static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| tempfile::tempdir().expect("a temporary directory"));

/// The invocation ids, actions and callers of [`LOG`], for filters and rows
/// that name real ones.
static NAMES: LazyLock<Vec<String>> = LazyLock::new(|| {
    let text = String::from_utf8_lossy(LOG);
    let mut names = Vec::new();
    for key in ["\"invocation\":\"", "\"action\":\"", "\"caller\":\""] {
        for part in text.split(key).skip(1) {
            if let Some(end) = part.find('"') {
                names.push(part[..end].to_string());
            }
        }
    }
    names.sort();
    names.dedup();
    names
});

fn name(u: &mut Unstructured) -> arbitrary::Result<String> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => u.arbitrary()?,
        1 => {
            // A prefix of a real id.
            let n = u.choose(&NAMES)?;
            n[..u.int_in_range(0..=n.len())?].to_string()
        }
        _ => u.choose(&NAMES)?.clone(),
    })
}

#[derive(Debug)]
enum Damage {
    RecordOffset(i64, i64),
    RecordTs(i64, i64),
    RecordInv(i64, Option<i64>),
    RecordHash(i64, Vec<u8>),
    DeleteRecord(i64),
    InsertRecord(i64, i64, i64, Option<i64>, Vec<u8>),
    InvocationId(i64, String),
    InvocationAction(i64, Option<String>),
    InvocationCaller(i64, Option<String>),
    DeleteInvocation(i64),
    InsertInvocation(String, Option<String>, Option<String>),
    Meta(String, String),
    UserVersion(i64),
    /// Raw bytes over the file at an offset (modulo its length).
    Bytes(usize, Vec<u8>),
}

fn small(u: &mut Unstructured) -> arbitrary::Result<i64> {
    Ok(if u.ratio(1, 4)? {
        u.arbitrary()?
    } else {
        i64::from(u.int_in_range(-1..=40i8)?)
    })
}

impl<'a> Arbitrary<'a> for Damage {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0..=13u8)? {
            0 => Damage::RecordOffset(small(u)?, u.arbitrary()?),
            1 => Damage::RecordTs(small(u)?, u.arbitrary()?),
            2 => Damage::RecordInv(small(u)?, if u.arbitrary()? { Some(small(u)?) } else { None }),
            3 => Damage::RecordHash(small(u)?, u.arbitrary()?),
            4 => Damage::DeleteRecord(small(u)?),
            5 => Damage::InsertRecord(
                small(u)?,
                small(u)?,
                u.arbitrary()?,
                if u.arbitrary()? { Some(small(u)?) } else { None },
                u.arbitrary()?,
            ),
            6 => Damage::InvocationId(small(u)?, name(u)?),
            7 => Damage::InvocationAction(small(u)?, if u.arbitrary()? { Some(name(u)?) } else { None }),
            8 => Damage::InvocationCaller(small(u)?, if u.arbitrary()? { Some(name(u)?) } else { None }),
            9 => Damage::DeleteInvocation(small(u)?),
            10 => Damage::InsertInvocation(
                name(u)?,
                if u.arbitrary()? { Some(name(u)?) } else { None },
                if u.arbitrary()? { Some(name(u)?) } else { None },
            ),
            11 => Damage::Meta(
                u.choose(&["len", "next-seq", "head", "other"])?.to_string(),
                if u.arbitrary()? {
                    u.int_in_range(0..=10_000u32)?.to_string()
                } else {
                    u.arbitrary()?
                },
            ),
            12 => Damage::UserVersion(small(u)?),
            _ => Damage::Bytes(u.arbitrary()?, u.arbitrary()?),
        })
    }
}

#[derive(Debug)]
struct Input {
    damage: Vec<Damage>,
    /// Keep only this many of the log's lines (all when `None`).
    log_lines: Option<u8>,
    filter: Filter,
    newest: Option<u8>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let filter = Filter {
            invocation: if u.arbitrary()? { Some(name(u)?) } else { None },
            action: if u.arbitrary()? { Some(name(u)?) } else { None },
            caller: if u.arbitrary()? { Some(name(u)?) } else { None },
            since: u.arbitrary()?,
            until: u.arbitrary()?,
        };
        Ok(Input {
            log_lines: u.arbitrary()?,
            newest: u.arbitrary()?,
            filter,
            damage: u.arbitrary_iter()?.collect::<arbitrary::Result<_>>()?,
        })
    }
}

fn apply(conn: &Connection, d: &Damage) -> rusqlite::Result<usize> {
    match d {
        Damage::RecordOffset(seq, v) => conn.execute("UPDATE records SET offset = ?2 WHERE seq = ?1", params![seq, v]),
        Damage::RecordTs(seq, v) => conn.execute("UPDATE records SET ts = ?2 WHERE seq = ?1", params![seq, v]),
        Damage::RecordInv(seq, v) => conn.execute("UPDATE records SET inv = ?2 WHERE seq = ?1", params![seq, v]),
        Damage::RecordHash(seq, v) => conn.execute("UPDATE records SET hash = ?2 WHERE seq = ?1", params![seq, v]),
        Damage::DeleteRecord(seq) => conn.execute("DELETE FROM records WHERE seq = ?1", params![seq]),
        Damage::InsertRecord(seq, offset, ts, inv, hash) => conn.execute(
            "INSERT OR REPLACE INTO records (seq, offset, ts, inv, hash) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![seq, offset, ts, inv, hash],
        ),
        Damage::InvocationId(row, v) => conn.execute(
            "UPDATE OR REPLACE invocations SET id = ?2 WHERE rowid = ?1",
            params![row, v],
        ),
        Damage::InvocationAction(row, v) => {
            conn.execute("UPDATE invocations SET action = ?2 WHERE rowid = ?1", params![row, v])
        }
        Damage::InvocationCaller(row, v) => {
            conn.execute("UPDATE invocations SET caller = ?2 WHERE rowid = ?1", params![row, v])
        }
        Damage::DeleteInvocation(row) => conn.execute("DELETE FROM invocations WHERE rowid = ?1", params![row]),
        Damage::InsertInvocation(id, action, caller) => conn.execute(
            "INSERT OR REPLACE INTO invocations (id, action, caller) VALUES (?1, ?2, ?3)",
            params![id, action, caller],
        ),
        Damage::Meta(key, value) => conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            params![key, value],
        ),
        Damage::UserVersion(v) => conn.execute_batch(&format!("PRAGMA user_version = {v}")).map(|()| 0),
        Damage::Bytes(..) => Ok(0),
    }
}

/// The lines a query for `filter` returns, through [`select`].
fn selected(dir: &Path, filter: &Filter, newest: Option<usize>) -> Option<Vec<Vec<u8>>> {
    let mut lines = Vec::new();
    select(dir, filter, newest, |_, line| {
        lines.push(line.to_vec());
        true
    })
    .ok()?;
    Some(lines)
}

/// The same query answered from the log alone.
fn scanned(dir: &Path, filter: &Filter, newest: Option<usize>) -> Option<Vec<Vec<u8>>> {
    let mut matcher = filter.clone().matcher();
    let mut lines = Vec::new();
    scan(dir, |record, line| {
        if matcher.matches(record) {
            lines.push(line.to_vec());
        }
        true
    })
    .ok()?;
    if let Some(n) = newest {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    Some(lines)
}

// The setup runs before the first input, not inside it (where it would
// count against libFuzzer's -timeout).
fuzz_target!(init: { LazyLock::force(&PRISTINE); }, |data: &[u8]| {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let dir = DIR.path();
    let log: Vec<u8> = match input.log_lines {
        None => LOG.to_vec(),
        Some(n) => LOG
            .split_inclusive(|b| *b == b'\n')
            .take(usize::from(n))
            .flatten()
            .copied()
            .collect(),
    };
    std::fs::write(dir.join(LOG_FILE), &log).expect("write the log");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("{INDEX_FILE}{suffix}")));
    }
    let index_path = dir.join(INDEX_FILE);
    std::fs::write(&index_path, PRISTINE.as_slice()).expect("write the index");
    {
        let conn = Connection::open(&index_path).expect("the pristine index opens");
        for d in &input.damage {
            let _ = apply(&conn, d);
        }
    }
    for d in &input.damage {
        if let Damage::Bytes(at, bytes) = d {
            let mut file = std::fs::read(&index_path).expect("read the index");
            if !file.is_empty() {
                let start = at % file.len();
                for (i, b) in bytes.iter().enumerate() {
                    if let Some(slot) = file.get_mut(start + i) {
                        *slot = *b;
                    }
                }
                std::fs::write(&index_path, &file).expect("write the index");
            }
        }
    }

    let newest = input.newest.map(usize::from);
    let expected = scanned(dir, &input.filter, newest);
    let actual = selected(dir, &input.filter, newest);
    if let (Some(expected), Some(actual)) = (&expected, &actual) {
        if actual != expected {
            let seqs = |lines: &[Vec<u8>]| {
                lines
                    .iter()
                    .map(|l| String::from_utf8_lossy(&l[..l.len().min(16)]).into_owned())
                    .collect::<Vec<_>>()
            };
            panic!(
                "a query through the damaged index answered otherwise than the log\n{input:#?}\nindex: {:?}\nlog:   {:?}",
                seqs(actual),
                seqs(expected)
            );
        }
    }
    // `audit verify`'s comparison: what it finds it repairs.
    if let Ok(first) = compare_with_log(dir) {
        let again = compare_with_log(dir).expect("a rebuilt index compares again");
        assert_eq!(
            again.mismatches, 0,
            "the index still differs after a rebuild: {first:?} then {again:?}"
        );
    }
});
