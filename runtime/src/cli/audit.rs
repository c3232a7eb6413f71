//! `airlock audit`: verify, show, tail, export and checkpoint the audit
//! log (the file backend here, PostgreSQL in `audit_pg`).

use super::{DataPlace, escape};
use airlock::Error;
use clap::Subcommand;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the whole hash chain and every checkpoint; exit 6 naming the
    /// first bad record.
    Verify {
        /// Also check against a checkpoint exported earlier (`audit checkpoint`).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        #[command(flatten)]
        place: DataPlace,
    },
    /// Print records, optionally filtered.
    Show {
        #[command(flatten)]
        filter: AuditFilter,
        /// One JSON record per line (as stored).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        place: DataPlace,
    },
    /// Print the last records; with -f, keep printing new ones.
    Tail {
        /// How many records to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        place: DataPlace,
    },
    /// Export verified records for a SIEM.
    Export {
        /// Output format (only `jsonl`: one JSON record per line).
        #[arg(long, default_value = "jsonl")]
        format: String,
        #[command(flatten)]
        filter: AuditFilter,
        #[command(flatten)]
        place: DataPlace,
    },
    /// Write a fresh signed checkpoint of the log's head and print it; keep
    /// it elsewhere to detect truncation later.
    Checkpoint {
        /// Also write it to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        place: DataPlace,
    },
}

#[derive(clap::Args)]
pub struct AuditFilter {
    /// Only this invocation id (a prefix is enough).
    #[arg(long)]
    invocation: Option<String>,
    /// Only invocations of this action.
    #[arg(long)]
    action: Option<String>,
    /// Only invocations by this caller (e.g. `local:alice`).
    #[arg(long)]
    caller: Option<String>,
    /// Records at or after this time (Unix seconds or YYYY-MM-DD[THH:MM[:SS]], UTC).
    #[arg(long)]
    since: Option<String>,
    /// Records before this time.
    #[arg(long)]
    until: Option<String>,
}

pub async fn audit_cmd(cmd: AuditCommand) -> Result<ExitCode, Error> {
    use airlock::audit::{self, Checkpoint, read};
    match cmd {
        AuditCommand::Verify { checkpoint, place } => {
            let dir = audit::dir(&place.dir()?);
            let backend = place.audit_backend()?;
            let external = match &checkpoint {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| Error::Usage(format!("cannot read checkpoint {}: {e}", path.display())))?;
                    let cp: Checkpoint = serde_json::from_str(text.trim())
                        .map_err(|e| Error::Usage(format!("{} is not a checkpoint: {e}", path.display())))?;
                    Some((cp, path.display().to_string()))
                }
                None => None,
            };
            if let Some(pg) = super::PgPlace::of(&dir, &backend) {
                return super::audit_pg_verify(&pg, external);
            }
            let verified = read::verify(&dir, external.as_ref().map(|(c, s)| (c, s.clone())))
                .map_err(|e| Error::AuditTampered(format!("audit log {}: {e}", dir.display())))?;
            match verified.head {
                Some((seq, hash)) => println!(
                    "ok: {} records, chain intact up to record {seq} (blake3:{}), {} checkpoint(s) match{}",
                    verified.records,
                    audit::chain::hex(&hash),
                    verified.checkpoints,
                    if verified.in_progress {
                        "; a record being written was not checked"
                    } else {
                        ""
                    }
                ),
                None => println!("ok: the audit log is empty"),
            }
            match (verified.unsigned(), verified.signed_through) {
                (0, _) => {}
                (n, Some(signed)) => println!(
                    "note: {n} record(s) after record {signed}, the last one a checkpoint signs, are covered by the hash chain only, not yet by a signature (`{}` signs the head)",
                    airlock::hint::command("audit checkpoint")
                ),
                (n, None) => println!(
                    "note: no checkpoint signs this log: its {n} record(s) are covered by the hash chain only (`{}` signs the head)",
                    airlock::hint::command("audit checkpoint")
                ),
            }
            // The index is derived data: one that cannot be read or written
            // (a full disk) is no finding about the log; one that differs
            // from it was edited.
            let index = match audit::index::compare_with_log(&dir) {
                Ok(index) => index,
                Err(e) => {
                    println!("note: the index could not be compared with the log ({e}); queries scan the log instead");
                    return Ok(ExitCode::SUCCESS);
                }
            };
            if index.mismatches > 0 {
                return Err(Error::AuditTampered(format!(
                    "the audit log {} is intact, but its index did not match it: {} row(s) differed (first: {}); the index was {}",
                    dir.display(),
                    index.mismatches,
                    index.first.as_deref().unwrap_or("?"),
                    if index.rebuilt {
                        "rebuilt from the log"
                    } else {
                        "not rebuilt"
                    }
                )));
            }
            println!("ok: the index matches the log ({} records)", index.records);
        }
        AuditCommand::Show { filter, json, place } => {
            let dir = audit::dir(&place.dir()?);
            let filter = filter.filter()?;
            if let Some(pg) = super::PgPlace::of(&dir, &place.audit_backend()?) {
                return super::audit_pg_show(&pg, &filter, json);
            }
            let mut out = std::io::stdout().lock();
            audit::index::select(&dir, &filter, None, |record, line| {
                print_record(&mut out, record, line, json, None)
            })
            .map_err(|e| Error::AuditTampered(format!("audit log {}: {e}", dir.display())))?;
        }
        AuditCommand::Export { format, filter, place } => {
            if format != "jsonl" {
                return Err(Error::Usage(format!(
                    "unknown export format {format:?}: the only format is jsonl"
                )));
            }
            let dir = audit::dir(&place.dir()?);
            let filter = filter.filter()?;
            if let Some(pg) = super::PgPlace::of(&dir, &place.audit_backend()?) {
                return super::audit_pg_show(&pg, &filter, true);
            }
            let mut out = std::io::stdout().lock();
            audit::index::select(&dir, &filter, None, |record, line| {
                print_record(&mut out, record, line, true, None)
            })
            .map_err(|e| Error::AuditTampered(format!("audit log {}: {e}", dir.display())))?;
        }
        AuditCommand::Tail {
            lines,
            follow,
            json,
            place,
        } => {
            let dir = audit::dir(&place.dir()?);
            if let Some(pg) = super::PgPlace::of(&dir, &place.audit_backend()?) {
                return super::audit_pg_tail(&pg, lines, follow, json).await;
            }
            let mut last: std::collections::VecDeque<(airlock::audit::chain::Record, Vec<u8>)> =
                std::collections::VecDeque::new();
            let verified = read::scan(&dir, |record, line| {
                if last.len() == lines {
                    last.pop_front();
                }
                if lines > 0 {
                    last.push_back((record.clone(), line.to_vec()));
                }
                true
            })
            .map_err(|e| Error::AuditTampered(format!("audit log {}: {e}", dir.display())))?;
            let mut out = std::io::stdout().lock();
            for (record, line) in &last {
                print_record(&mut out, record, line, json, None);
            }
            let mut seen = verified.records;
            // `-f` runs until interrupted.
            while follow && out.flush().is_ok() {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                let mut n = 0u64;
                read::scan(&dir, |record, line| {
                    n += 1;
                    n <= seen || print_record(&mut out, record, line, json, None)
                })
                .map_err(|e| Error::AuditTampered(format!("audit log {}: {e}", dir.display())))?;
                seen = seen.max(n);
            }
        }
        AuditCommand::Checkpoint { out, place } => {
            let data_dir = place.dir()?;
            let log = airlock::audit::AuditLog::open_backend(&audit::dir(&data_dir), &place.audit_backend()?)
                .map_err(|e| Error::AuditUnavailable(e.to_string()))?;
            let cp = log
                .checkpoint()
                .map_err(|e| Error::AuditUnavailable(e.to_string()))?
                .ok_or_else(|| Error::Usage("the audit log is empty: nothing to checkpoint yet".into()))?;
            let text = serde_json::to_string(&cp).map_err(Error::internal)?;
            if let Some(path) = out {
                std::fs::write(&path, format!("{text}\n"))
                    .map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))?;
            }
            println!("{text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

impl AuditFilter {
    fn filter(&self) -> Result<airlock::audit::query::Filter, Error> {
        let time = |t: &Option<String>| {
            t.as_deref()
                .map(airlock::time::parse_utc)
                .transpose()
                .map_err(Error::Usage)
        };
        Ok(airlock::audit::query::Filter {
            invocation: self.invocation.clone(),
            action: self.action.clone(),
            caller: self.caller.clone(),
            since: time(&self.since)?,
            until: time(&self.until)?,
        })
    }
}

/// Print one record (of `node`'s chain, with PostgreSQL); false when
/// stdout is closed.
pub(crate) fn print_record(
    out: &mut impl std::io::Write,
    record: &airlock::audit::chain::Record,
    line: &[u8],
    json: bool,
    node: Option<&str>,
) -> bool {
    use airlock::audit::Event;
    if json {
        return out.write_all(line).and_then(|()| out.write_all(b"\n")).is_ok();
    }
    let e = &record.entry;
    let id = |i: &str| i.chars().take(12).collect::<String>();
    let summary = match &e.event {
        Event::InvocationStarted(s) => format!(
            "{} {}#{} by {} args {}",
            id(&s.invocation),
            s.action,
            s.function,
            s.caller,
            if s.args_truncated {
                format!("({})", s.args_digest)
            } else {
                s.args.to_string()
            }
        ),
        Event::HostCall(h) => format!(
            "{} call {} {}#{} {} ({}) {}",
            id(&h.invocation),
            h.call,
            h.interface,
            h.function,
            if h.allowed { "allowed" } else { "DENIED" },
            h.rule,
            h.status
        ),
        Event::InvocationFinished(f) => format!(
            "{} {} {} exit {} in {} us{}",
            id(&f.invocation),
            f.action,
            f.outcome,
            f.exit_code,
            f.duration_us,
            f.error.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
        ),
        Event::InvocationRefused(r) => format!(
            "{} {}#{} by {}: {}",
            id(&r.invocation),
            r.action,
            r.function,
            r.caller,
            r.error
        ),
        Event::InvocationCutOff(c) => format!(
            "{} {} cut off{}: {}",
            id(&c.invocation),
            c.action.as_deref().unwrap_or("?"),
            c.started_seq
                .map(|s| format!(" (started at record {s})"))
                .unwrap_or_default(),
            c.reason
        ),
        Event::Recovered(r) => format!(
            "cut {} torn bytes after record {:?}: {}",
            r.truncated_bytes, r.last_good_seq, r.reason
        ),
        Event::ApprovalRequested(a) => format!(
            "{} approval {} ({}) for {}#{} by {}: {} needs {} ({})",
            id(&a.invocation),
            a.approval,
            a.approval_kind,
            a.action,
            a.function,
            a.caller,
            a.rule,
            a.quorum,
            a.binding
        ),
        Event::ApprovalDecision(d) => format!(
            "{} approval {} {} by {} {} ({}/{}){}",
            id(&d.invocation),
            d.approval,
            d.verdict,
            d.identity_kind,
            d.identity,
            d.approvals,
            d.quorum,
            d.reason.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
        ),
        Event::ApprovalResolved(r) => format!(
            "{} approval {} {}{}",
            id(&r.invocation),
            r.approval,
            r.state,
            r.reason.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
        ),
        Event::ApprovalEscalated(e) => format!(
            "{} approval {} escalated from {} to {}: {}",
            id(&e.invocation),
            e.approval,
            e.from_group,
            e.to_group,
            e.approvers.join(", ")
        ),
        Event::Notification(n) => format!(
            "{} approval {} {} to webhook {} ({}): attempt {} {}{}{}",
            id(&n.invocation),
            n.approval,
            n.event,
            n.webhook,
            n.destination,
            n.attempt,
            n.outcome,
            n.http_status.map(|s| format!(" ({s})")).unwrap_or_default(),
            n.error.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
        ),
    };
    let kind = match &e.event {
        Event::InvocationStarted(_) => "started",
        Event::HostCall(_) => "host-call",
        Event::InvocationFinished(_) => "finished",
        Event::InvocationRefused(_) => "refused",
        Event::InvocationCutOff(_) => "cut-off",
        Event::Recovered(_) => "recovered",
        Event::ApprovalRequested(_) => "approval",
        Event::ApprovalDecision(_) => "decision",
        Event::ApprovalResolved(_) => "resolved",
        Event::Notification(_) => "notification",
        Event::ApprovalEscalated(_) => "escalated",
    };
    if let Some(node) = node
        && write!(out, "{node} ").is_err()
    {
        return false;
    }
    writeln!(out, "{:>7} {} {:<9} {}", e.seq, e.ts, kind, escape(&summary)).is_ok()
}
