//! `airlock audit verify/show/export/tail` with `[audit] backend =
//! "postgres"`: every node's chain, from the database (see
//! [`airlock::audit::pg`]).

use airlock::Error;
use airlock::audit::pg::verify::{LocalNode, PgVerifyError};
use airlock::audit::pg::{self, query};
use airlock::audit::query::Filter;
use airlock::audit::settings::Backend;
use airlock::audit::{Checkpoint, chain, read};
use airlock::store::settings::PgSettings;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where the PostgreSQL trail is, and this data directory's part in it.
pub struct PgPlace {
    /// The audit directory of this data directory.
    dir: PathBuf,
    pg: PgSettings,
    /// The configured node id, if any.
    node: Option<String>,
}

impl PgPlace {
    /// `Some` when `backend` is PostgreSQL.
    pub fn of(dir: &Path, backend: &Backend) -> Option<PgPlace> {
        match backend {
            Backend::File => None,
            Backend::Postgres { pg, node } => Some(PgPlace {
                dir: dir.to_path_buf(),
                pg: pg.clone(),
                node: node.clone(),
            }),
        }
    }

    fn db(&self) -> Result<pg::Db, Error> {
        pg::Db::connect(&self.pg, 2).map_err(|e| Error::AuditUnavailable(format!("{}: {e}", self.pg.url)))
    }
}

/// A reader's failure: the database's (exit 5), or tampering (exit 6).
fn failed(url: &str, e: PgVerifyError) -> Error {
    match e {
        PgVerifyError::Db(reason) => Error::AuditUnavailable(format!("audit trail in {url}: {reason}")),
        other => Error::AuditTampered(format!("audit trail in {url}: {other}")),
    }
}

/// `audit verify`: this data directory's log (if it has one), then every
/// node's chain and checkpoints in PostgreSQL.
pub fn audit_pg_verify(place: &PgPlace, external: Option<(Checkpoint, String)>) -> Result<ExitCode, Error> {
    let mut head = None;
    if place.dir.join(airlock::audit::log::LOG_FILE).exists() {
        let v = read::verify(&place.dir, external.as_ref().map(|(c, s)| (c, s.clone())))
            .map_err(|e| Error::AuditTampered(format!("audit log {}: {e}", place.dir.display())))?;
        println!(
            "ok: this data directory's log {}: {} records{}",
            place.dir.display(),
            v.records,
            v.head
                .map(|(seq, hash)| format!(", chain intact up to record {seq} (blake3:{})", chain::hex(&hash)))
                .unwrap_or_default()
        );
        head = v.head;
    }
    let local = LocalNode::of_data_dir(&place.dir, place.node.as_deref(), head).map_err(Error::Config)?;
    let db = place.db()?;
    let nodes = pg::verify::verify(&db, Some(&local), external.as_ref().map(|(c, s)| (c, s.clone())))
        .map_err(|e| failed(&place.pg.url, e))?;
    if nodes.is_empty() {
        println!("ok: {} holds no audit records yet", place.pg.url);
    }
    for n in &nodes {
        match n.head {
            Some((seq, hash)) => println!(
                "ok: node {}: {} records, chain intact up to record {seq} (blake3:{}), {} checkpoint(s) match",
                n.node,
                n.records,
                chain::hex(&hash),
                n.checkpoints
            ),
            None => println!("ok: node {}: no records", n.node),
        }
        match (n.unsigned(), n.signed_through) {
            (0, _) => {}
            (k, Some(signed)) => println!(
                "note: node {}: {k} record(s) after record {signed}, the last one a checkpoint signs, are covered by the hash chain only",
                n.node
            ),
            (k, None) => println!(
                "note: node {}: no checkpoint signs its {k} record(s) yet; they are covered by the hash chain only",
                n.node
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `audit show` / `audit export`: matching records of every node, in time
/// order; with `json`, each line as stored with `"node"` added first.
pub fn audit_pg_show(place: &PgPlace, filter: &Filter, json: bool) -> Result<ExitCode, Error> {
    let db = place.db()?;
    let mut out = std::io::stdout().lock();
    query::select(&db, filter, None, |hit| print(&mut out, hit, json)).map_err(|e| failed(&place.pg.url, e))?;
    Ok(ExitCode::SUCCESS)
}

fn print(out: &mut impl std::io::Write, hit: &query::Hit, json: bool) -> bool {
    if json {
        writeln!(out, "{}", hit.line_with_node()).is_ok()
    } else {
        super::audit::print_record(out, &hit.record, hit.line.as_bytes(), false, Some(&hit.node))
    }
}

/// `audit tail [-f]`: the newest `lines` records across nodes, then (with
/// `follow`) each node's new records as they are stored.
pub async fn audit_pg_tail(place: &PgPlace, lines: usize, follow: bool, json: bool) -> Result<ExitCode, Error> {
    let db = place.db()?;
    let url = &place.pg.url;
    // Where following starts: each node's head now, moved past what the
    // first answer printed.
    let mut seen: std::collections::BTreeMap<String, (u64, Option<[u8; 32]>)> = query::heads(&db)
        .map_err(|e| failed(url, e))?
        .into_iter()
        .map(|(node, next)| (node, (next, None)))
        .collect();
    let mut out = std::io::stdout().lock();
    if lines > 0 {
        query::select(&db, &Filter::default(), Some(lines), |hit| {
            let next = hit.record.entry.seq + 1;
            let at = seen.entry(hit.node.clone()).or_insert((next, None));
            if next >= at.0 {
                *at = (next, Some(hit.record.hash));
            }
            print(&mut out, hit, json)
        })
        .map_err(|e| failed(url, e))?;
    }
    // `-f` runs until interrupted.
    while follow && out.flush().is_ok() {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        query::follow(&db, &mut seen, |hit| print(&mut out, hit, json)).map_err(|e| failed(url, e))?;
    }
    Ok(ExitCode::SUCCESS)
}
