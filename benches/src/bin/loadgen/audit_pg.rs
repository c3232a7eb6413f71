//! `audit-pg`: queries of the audit trail by invocation, action and caller
//! at `--rows` records (default one million) with `[audit] backend =
//! "postgres"`, against the file backend (the log and its local index, the
//! baseline) holding the same records.
//!
//! Both trails are grown in this process through [`airlock::audit::AuditLog`]
//! (five records per synthetic invocation, see [`super::Synthetic`]; a
//! durable group every 5,000 records, so on PostgreSQL each group is one
//! transaction as the service's writer makes them). Then, each side beside
//! the other:
//!
//! - in-process queries (`audit::index::select` against
//!   `audit::pg::query::select`, each answer checked as the readers check
//!   it), medians of 9;
//! - `airlock audit show --invocation ID --config CONFIG`, the whole
//!   command (process start and, on PostgreSQL, connecting), medians of 5;
//! - `GET /v1/audit?invocation=ID` against `airlock serve` on each data
//!   directory, `--runs` requests one at a time, the sides alternating
//!   (an answer may take seconds).
//!
//! Each by the oldest and by the newest invocation of action `rare`: a
//! query's checks read every record between its first and last match,
//! and a query for the newest matches (the API's) up to the head.

use super::store::{Pg, header};
use super::{Options, Synthetic, World, bench_config, client_runtime, median, ms};
use super::{RARE_EVERY, timed};
use airlock::audit::query::Filter;
use airlock_benches::http1::{self, Conn};
use anyhow::{Context as _, Result, anyhow, bail};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The node id of the PostgreSQL side.
const NODE: &str = "bench-node";

/// Grow the log in `audit_dir` (opened with `backend`) to `records`
/// records; returns how long it took.
fn grow(audit_dir: &Path, backend: &airlock::audit::settings::Backend, records: u64) -> Result<Duration> {
    let started = Instant::now();
    let log = airlock::audit::AuditLog::open_backend(audit_dir, backend).map_err(|e| anyhow!("{e}"))?;
    let mut synthetic = Synthetic { next: 0 };
    let mut written = 0u64;
    while written < records {
        let mut events = Vec::with_capacity(5000);
        while events.len() < 5000 && written + (events.len() as u64) < records {
            events.extend(synthetic.events()?);
        }
        written += events.len() as u64;
        log.append_durable(events).map_err(|e| anyhow!("{e}"))?;
    }
    drop(log);
    Ok(started.elapsed())
}

/// One `GET /v1/audit?invocation=ID`, timed; its answer must hold five
/// records.
fn audit_once(addr: &str, token: &str, invocation: &str) -> Result<Duration> {
    let auth = format!("Bearer {token}");
    let request = http1::request(
        "GET",
        &format!("/v1/audit?invocation={invocation}"),
        addr,
        &[("Authorization", &auth)],
        b"",
    );
    let rt = client_runtime()?;
    let mut conn = rt.block_on(Conn::connect(addr))?;
    let t = Instant::now();
    let r = rt.block_on(conn.send(&request))?;
    let took = t.elapsed();
    let records = serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["records"].as_array().map(Vec::len));
    if r.status != 200 || records != Some(5) {
        bail!("status {}: {}", r.status, String::from_utf8_lossy(&r.body));
    }
    Ok(took)
}

/// Median wall time of `airlock audit show --invocation ID --config
/// CONFIG` over 5 runs, and the records it printed.
fn cli_show(world: &World, invocation: &str) -> Result<(Duration, usize)> {
    let mut times = Vec::new();
    let mut lines = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let out = world
            .airlock()
            .args(["audit", "show", "--json", "--invocation", invocation, "--config"])
            .arg(&world.config)
            .stdin(Stdio::null())
            .output()?;
        times.push(t.elapsed());
        if !out.status.success() {
            bail!(
                "airlock audit show failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        lines = out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
    }
    Ok((median(times), lines))
}

pub fn audit_pg(options: &Options) -> Result<()> {
    use airlock::audit::settings::Backend;
    let records = options.rows;
    let component = airlock_benches::component("bench_component");
    let pg = Pg::start("airlock_audit")?;
    let pg_settings = pg
        .db
        .settings()
        .postgres
        .context("the database's settings name PostgreSQL")?;
    let file_config = bench_config(&component);
    let pg_config = format!(
        "{}{}\n[audit]\nbackend = \"postgres\"\nnode-id = \"{NODE}\"\n",
        bench_config(&component),
        pg.db.store_section()
    );
    let mut file = World::new(options, &file_config)?;
    let mut postgres = World::new(options, &pg_config)?;
    // The schema (the audit tables are a migration of the store's).
    drop(airlock::store::open(&pg.db.settings(), postgres.dir.path()).map_err(|e| anyhow!("{e}"))?);
    let file_dir = airlock::audit::dir(&file.dir.path().join("data"));
    let pg_dir = airlock::audit::dir(&postgres.dir.path().join("data"));
    let file_fill = grow(&file_dir, &Backend::File, records)?;
    let pg_fill = grow(
        &pg_dir,
        &Backend::Postgres {
            pg: pg_settings.clone(),
            node: Some(NODE.into()),
        },
        records,
    )?;
    pg.server.psql(&pg.db.name, "ANALYZE;")?;
    // The local index caught up once (as `audit_growth` does), so queries
    // below measure queries, not the index's first build.
    let ((), catch_up) = timed(|| {
        let mut ix = airlock::audit::index::Index::open(&file_dir).map_err(|e| anyhow!("{e}"))?;
        ix.catch_up().map_err(|e| anyhow!("{e}"))?;
        Ok(())
    })?;
    let size = pg.server.psql(
        &pg.db.name,
        "SELECT pg_size_pretty(pg_total_relation_size('audit_records'));",
    )?;
    // The oldest invocation of action `rare` (near the log's start) and
    // the newest (near its end): a query's checks may read from its
    // oldest match to the head.
    let invocations = records / 5;
    if invocations <= RARE_EVERY {
        bail!(
            "--rows must be above {} for audit-pg (two invocations of action `rare`)",
            RARE_EVERY * 5
        );
    }
    let newest_rare = (invocations - RARE_EVERY / 2 - 1) / RARE_EVERY * RARE_EVERY + RARE_EVERY / 2;
    let ids = [
        ("the oldest `rare` invocation", Synthetic::invocation_id(RARE_EVERY / 2)),
        ("the newest `rare` invocation", Synthetic::invocation_id(newest_rare)),
    ];

    header(
        &format!(
            "Audit trail queries at {records} records: [audit] backend = \"postgres\" vs the file backend (baseline)"
        ),
        options,
        &pg,
    )?;
    println!();
    println!(
        "Both trails grown in-process through `AuditLog` (5 records per invocation, one durable group per 5,000 \
         records): file {:.1} s (+ {:.1} s for the local index's first catch-up), PostgreSQL {:.1} s \
         ({} for `audit_records` and its indexes).",
        file_fill.as_secs_f64(),
        catch_up.as_secs_f64(),
        pg_fill.as_secs_f64(),
        size.trim()
    );

    // In-process queries, each side in turn.
    let db = airlock::audit::pg::Db::connect(&pg_settings, 4).map_err(|e| anyhow!("{e}"))?;
    let by_invocation = |(what, id): &(&str, String)| {
        (
            format!("by invocation: {what}"),
            Filter {
                invocation: Some(id.clone()),
                ..Filter::default()
            },
        )
    };
    let filters = [
        by_invocation(&ids[0]),
        by_invocation(&ids[1]),
        (
            "by action `rare`".to_string(),
            Filter {
                action: Some("rare".into()),
                ..Filter::default()
            },
        ),
        (
            "by caller `rare-caller`".to_string(),
            Filter {
                caller: Some("rare-caller".into()),
                ..Filter::default()
            },
        ),
    ];
    println!();
    println!("In-process queries (medians of 9, every answer checked as the readers check it):");
    println!();
    println!("| query | file: index::select | PostgreSQL: audit::pg::query::select | PostgreSQL / file |");
    println!("|---|---|---|---|");
    for (name, filter) in &filters {
        let (mut file_times, mut pg_times) = (Vec::new(), Vec::new());
        let (mut file_n, mut pg_n) = (0, 0);
        for i in 0..9 {
            let mut file_query = || -> Result<()> {
                let t = Instant::now();
                file_n =
                    airlock::audit::index::select(&file_dir, filter, None, |_, _| true).map_err(|e| anyhow!("{e}"))?;
                file_times.push(t.elapsed());
                Ok(())
            };
            let mut pg_query = || -> Result<()> {
                let t = Instant::now();
                pg_n = airlock::audit::pg::query::select(&db, filter, None, |_| true).map_err(|e| anyhow!("{e}"))?;
                pg_times.push(t.elapsed());
                Ok(())
            };
            if i % 2 == 0 {
                file_query()?;
                pg_query()?;
            } else {
                pg_query()?;
                file_query()?;
            }
        }
        if file_n != pg_n {
            bail!("{name}: the file backend found {file_n} records, PostgreSQL {pg_n}");
        }
        let (f, p) = (median(file_times), median(pg_times));
        println!(
            "| {name} ({file_n} records) | {:.2} ms | {:.2} ms | {:.1} |",
            ms(f),
            ms(p),
            ms(p) / ms(f)
        );
    }
    drop(db);

    // The CLI, process and all.
    println!();
    println!("`airlock audit show --json --invocation ID --config CONFIG` (the whole command, medians of 5):");
    println!();
    println!("| invocation | file | PostgreSQL |");
    println!("|---|---|---|");
    for (what, id) in &ids {
        let (file_cli, file_lines) = cli_show(&file, id)?;
        let (pg_cli, pg_lines) = cli_show(&postgres, id)?;
        println!(
            "| {what} | {:.1} ms ({file_lines} records) | {:.1} ms ({pg_lines} records) |",
            ms(file_cli),
            ms(pg_cli)
        );
    }

    // The API.
    let file_token = file.token("auditor", "human", "auditor")?;
    let pg_token = postgres.token("auditor", "human", "auditor")?;
    file.start()?;
    postgres.serve_args = vec!["--node-id".into(), NODE.into()];
    postgres.start()?;
    // One request at a time, timed whole: an answer may take seconds
    // here, longer than a closed loop's window.
    println!();
    println!(
        "`GET /v1/audit?invocation=ID` (5 records each), one request at a time on a keep-alive connection, \
         {} requests per side and invocation, the sides alternating request by request (medians; max):",
        options.runs
    );
    println!();
    println!(
        "| invocation | file p50 / max ms | PostgreSQL p50 / max ms | PostgreSQL / file | PostgreSQL statements per request | server-side statement time per request |"
    );
    println!("|---|---|---|---|---|---|");
    for (what, id) in &ids {
        let (mut file_times, mut pg_times) = (Vec::new(), Vec::new());
        pg.reset_statements()?;
        for i in 0..options.runs {
            let (first, second) = if i % 2 == 0 { (true, false) } else { (false, true) };
            for on_file in [first, second] {
                let (world, token, times) = if on_file {
                    (&file, &file_token, &mut file_times)
                } else {
                    (&postgres, &pg_token, &mut pg_times)
                };
                times.push(audit_once(&world.addr, token, id)?);
            }
        }
        let statements = pg.statements()?;
        let calls: u64 = statements.iter().map(|s| s.calls).sum();
        let total_ms: f64 = statements.iter().map(|s| s.total_ms).sum();
        let n = options.runs as f64;
        let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
        let (fm, pm) = (median(file_times.clone()), median(pg_times.clone()));
        println!(
            "| {what} | {:.1} / {:.1} | {:.1} / {:.1} | {:.2} | {:.1} | {:.1} ms |",
            ms(fm),
            ms(max(&file_times)),
            ms(pm),
            ms(max(&pg_times)),
            ms(pm) / ms(fm),
            calls as f64 / n,
            total_ms / n,
        );
    }
    Ok(())
}
