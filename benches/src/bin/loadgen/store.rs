//! M8: the service on PostgreSQL, each figure beside its baseline from the
//! same run, in alternating rounds (A/B, then B/A, …) so that a burst of
//! someone else's load on a shared machine hits both sides alike.
//!
//! - `store`: `POST /v1/invocations` of `bench.noop` (the `api` workload)
//!   against two services started side by side, one on SQLite in its data
//!   directory (the baseline) and one on a throw-away PostgreSQL server
//!   ([`airlock_benches::pg`]) started by this program.
//! - `cluster`: the same workload on one database, through two `airlock
//!   serve` nodes (the clients spread over both) against one node (the
//!   baseline) with the same number of clients. Both nodes run throughout;
//!   in a one-node round the second is idle.
//! - `lookup`: `GET /v1/invocations/{id}` of invocations spread over
//!   `--rows` stored ones (default one million), SQLite against
//!   PostgreSQL: a query by invocation through the store.
//! - `calls`: the store calls one `POST /v1/invocations` makes (the token
//!   lookup, the `running` row, the final row), made in this process by
//!   caller threads, without HTTP: what each backend costs by itself.
//!
//! Each point also says where the machine's cores went (the service, the
//! database server's processes, the load generator, everyone else, from
//! `/proc`), and on PostgreSQL which statements the server ran per request
//! and how long they took (`pg_stat_statements`, reset before each round).

use super::{Client, InvokeClient, Options, Stats, World, bench_config, client_runtime, closed_loop};
use airlock_benches::http1::{self, Conn};
use airlock_benches::{cpu, pg};
use anyhow::{Context as _, Result, anyhow, bail};
use std::time::{Duration, Instant};

/// What a round's CPU time is split by.
pub(super) struct Probe {
    /// The `airlock serve` processes.
    pub(super) airlock: Vec<u32>,
    /// The PostgreSQL server, if one runs.
    pub(super) postmaster: Option<u32>,
}

#[derive(Clone, Copy)]
struct Mark {
    airlock: Duration,
    /// Context switches of airlock's threads.
    switches: u64,
    postgres: Duration,
    loadgen: Duration,
    machine: cpu::Machine,
    at: Instant,
}

impl Probe {
    fn mark(&self) -> Mark {
        Mark {
            airlock: self.airlock.iter().map(|&p| cpu::process(p)).sum(),
            switches: self.airlock.iter().map(|&p| cpu::context_switches(p)).sum(),
            postgres: self.postmaster.map_or(Duration::ZERO, cpu::process_tree),
            loadgen: cpu::process(std::process::id()),
            machine: cpu::machine(),
            at: Instant::now(),
        }
    }
}

/// Cores each part kept busy between two marks (CPU seconds per second).
#[derive(Clone, Copy, Default)]
struct Cores {
    airlock: f64,
    postgres: f64,
    loadgen: f64,
    /// Everything else busy on the machine meanwhile.
    others: f64,
    /// Context switches of airlock's threads per second.
    switches: f64,
}

impl Cores {
    fn between(a: &Mark, b: &Mark) -> Cores {
        let wall = (b.at - a.at).as_secs_f64().max(1e-9);
        let per = |x: Duration, y: Duration| y.saturating_sub(x).as_secs_f64() / wall;
        let airlock = per(a.airlock, b.airlock);
        let postgres = per(a.postgres, b.postgres);
        let loadgen = per(a.loadgen, b.loadgen);
        let busy = per(a.machine.busy, b.machine.busy);
        Cores {
            airlock,
            postgres,
            loadgen,
            others: (busy - airlock - postgres - loadgen).max(0.0),
            switches: b.switches.saturating_sub(a.switches) as f64 / wall,
        }
    }

    fn cell(&self) -> String {
        format!(
            "{:.2} / {:.2} / {:.2} / {:.2}",
            self.airlock, self.postgres, self.loadgen, self.others
        )
    }
}

/// One statement's share of a round (`pg_stat_statements`).
#[derive(Clone)]
pub(super) struct Statement {
    query: String,
    pub(super) calls: u64,
    pub(super) total_ms: f64,
}

/// The PostgreSQL side of the store scenarios: the server, one database,
/// and the role airlock connects as (whose statements are counted).
pub(super) struct Pg {
    pub(super) server: pg::PgServer,
    pub(super) db: pg::Database,
}

impl Pg {
    pub(super) fn start(name: &str) -> Result<Pg> {
        let server = pg::PgServer::start()?;
        let db = server.create_database(name)?;
        Ok(Pg { server, db })
    }

    pub(super) fn reset_statements(&self) -> Result<()> {
        self.server.psql(&self.db.name, "SELECT pg_stat_statements_reset();")?;
        Ok(())
    }

    /// Connections airlock's role has open now.
    fn connections(&self) -> Result<u64> {
        let out = self.server.psql(
            &self.db.name,
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = '{}';",
                self.db.name
            ),
        )?;
        out.trim().parse().context("pg_stat_activity count")
    }

    /// Statements airlock's role ran in its database since the reset.
    pub(super) fn statements(&self) -> Result<Vec<Statement>> {
        let out = self.server.psql(
            &self.db.name,
            &format!(
                "SELECT s.calls, s.total_exec_time, regexp_replace(s.query, '\\s+', ' ', 'g') \
                 FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid \
                 WHERE r.rolname = '{}' ORDER BY s.total_exec_time DESC;",
                self.db.name
            ),
        )?;
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let mut f = l.splitn(3, '|');
                let calls = f.next().unwrap_or("").parse().context("pg_stat_statements calls")?;
                let total_ms = f.next().unwrap_or("").parse().context("pg_stat_statements time")?;
                Ok(Statement {
                    calls,
                    total_ms,
                    query: f.next().unwrap_or("").to_string(),
                })
            })
            .collect()
    }
}

/// One load point on one side.
pub(super) struct Point {
    stats: Stats,
    /// Seconds from the first connection to the last answer (warm-up
    /// included).
    wall: f64,
    cores: Cores,
    load1: f64,
    /// PostgreSQL's statements in this round (none on SQLite).
    statements: Vec<Statement>,
    /// Connections airlock's role holds open after the round (its pools
    /// grow on demand up to `store.pool-size`, and keep what they opened).
    connections: Option<u64>,
}

impl Point {
    fn row(&self) -> String {
        format!(
            "{:.0} | {:.2} / {:.2} / {:.2} | {} | {}",
            self.stats.per_second(),
            self.stats.percentile(0.5),
            self.stats.percentile(0.9),
            self.stats.percentile(0.99),
            self.stats.errors,
            self.cores.cell(),
        )
    }
}

/// Run `load` once, measuring the cores and, with `pg`, the statements.
pub(super) fn point(probe: &Probe, pg: Option<&Pg>, load: impl FnOnce() -> Result<Stats>) -> Result<Point> {
    if let Some(pg) = pg {
        pg.reset_statements()?;
    }
    let load1 = cpu::load1();
    let before = probe.mark();
    let stats = load()?;
    let after = probe.mark();
    let (statements, connections) = match pg {
        Some(pg) => (pg.statements()?, Some(pg.connections()?)),
        None => (Vec::new(), None),
    };
    Ok(Point {
        stats,
        wall: (after.at - before.at).as_secs_f64(),
        cores: Cores::between(&before, &after),
        load1,
        statements,
        connections,
    })
}

/// A keep-alive client sending `POST /v1/invocations` of `bench.noop`.
async fn invoke_client(addr: String, token: String) -> Result<InvokeClient> {
    let auth = format!("Bearer {token}");
    let request = http1::request(
        "POST",
        "/v1/invocations",
        &addr,
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        br#"{"action":"bench","function":"noop","args":{}}"#,
    );
    Ok(InvokeClient {
        conn: Conn::connect(&addr).await?,
        request,
    })
}

/// The invoke workload at `clients`, spread round robin over `addrs`.
fn invoke_load(options: &Options, clients: usize, addrs: &[String], token: &str) -> Result<Stats> {
    let rt = client_runtime()?;
    let next = std::cell::Cell::new(0usize);
    rt.block_on(closed_loop(clients, options.warmup, options.seconds, || {
        let i = next.get();
        next.set(i + 1);
        invoke_client(addrs[i % addrs.len()].clone(), token.to_string())
    }))
}

fn median_f64(mut xs: Vec<f64>) -> f64 {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// The A/B rounds at one concurrency: `a` is the baseline. Odd rounds run
/// B first.
pub(super) struct Rounds {
    pub(super) a: Vec<Point>,
    pub(super) b: Vec<Point>,
}

impl Rounds {
    pub(super) fn run(
        rounds: usize,
        mut a: impl FnMut() -> Result<Point>,
        mut b: impl FnMut() -> Result<Point>,
        mut each: impl FnMut(usize, bool, &Point, &Point),
    ) -> Result<Rounds> {
        let mut out = Rounds {
            a: Vec::new(),
            b: Vec::new(),
        };
        for round in 0..rounds {
            let b_first = round % 2 == 1;
            let (pa, pb) = if b_first {
                let pb = b()?;
                (a()?, pb)
            } else {
                let pa = a()?;
                (pa, b()?)
            };
            each(round, b_first, &pa, &pb);
            out.a.push(pa);
            out.b.push(pb);
        }
        Ok(out)
    }

    fn rate(points: &[Point]) -> f64 {
        median_f64(points.iter().map(|p| p.stats.per_second()).collect())
    }

    fn pct(points: &[Point], p: f64) -> f64 {
        median_f64(points.iter().map(|p2| p2.stats.percentile(p)).collect())
    }

    /// The median of the per-round ratios B / A.
    fn ratio(&self) -> f64 {
        median_f64(
            self.a
                .iter()
                .zip(&self.b)
                .map(|(a, b)| b.stats.per_second() / a.stats.per_second())
                .collect(),
        )
    }

    fn cores(points: &[Point]) -> Cores {
        let n = points.len().max(1) as f64;
        let mut c = Cores::default();
        for p in points {
            c.airlock += p.cores.airlock / n;
            c.postgres += p.cores.postgres / n;
            c.loadgen += p.cores.loadgen / n;
            c.others += p.cores.others / n;
            c.switches += p.cores.switches / n;
        }
        c
    }

    fn errors(points: &[Point]) -> u64 {
        points.iter().map(|p| p.stats.errors).sum()
    }
}

/// CPU per request of the service and the database, in µs, and the
/// service's context switches per request.
fn cpu_per_request(points: &[Point]) -> (f64, f64, f64) {
    let c = Rounds::cores(points);
    let rate = Rounds::rate(points);
    (c.airlock / rate * 1e6, c.postgres / rate * 1e6, c.switches / rate)
}

/// What PostgreSQL ran per request over `points`: statements, server time,
/// and the statements that took most of it.
pub(super) fn print_statements(label: &str, points: &[Point]) {
    let requests: u64 = points.iter().map(|p| p.stats.all_requests).sum();
    if requests == 0 {
        return;
    }
    let mut by_query: Vec<Statement> = Vec::new();
    for s in points.iter().flat_map(|p| &p.statements) {
        match by_query.iter_mut().find(|q| q.query == s.query) {
            Some(q) => {
                q.calls += s.calls;
                q.total_ms += s.total_ms;
            }
            None => by_query.push(s.clone()),
        }
    }
    by_query.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    let calls: u64 = by_query.iter().map(|q| q.calls).sum();
    let total_ms: f64 = by_query.iter().map(|q| q.total_ms).sum();
    let wall: f64 = points.iter().map(|p| p.wall).sum::<f64>();
    let connections = points.iter().filter_map(|p| p.connections).max().unwrap_or(0);
    println!();
    println!(
        "{label}: {requests} requests (warm-up included), {:.2} statements and {:.0} µs of statement \
         execution per request (server-side, pg_stat_statements: {:.2} s of it per second of load); \
         airlock's connections open after the rounds: {connections}",
        calls as f64 / requests as f64,
        total_ms * 1000.0 / requests as f64,
        total_ms / 1000.0 / wall.max(1e-9),
    );
    println!();
    println!("| statement | calls per request | mean µs | µs per request |");
    println!("|---|---|---|---|");
    for q in by_query.iter().take(8) {
        let mut text = q.query.clone();
        if text.len() > 90 {
            let mut cut = 90;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        println!(
            "| `{}` | {:.3} | {:.1} | {:.1} |",
            text.replace('|', "\\|"),
            q.calls as f64 / requests as f64,
            q.total_ms * 1000.0 / q.calls.max(1) as f64,
            q.total_ms * 1000.0 / requests as f64,
        );
    }
}

pub(super) fn concurrency(options: &Options) -> Vec<usize> {
    if options.concurrency_given {
        options.concurrency.clone()
    } else {
        vec![1, 32]
    }
}

pub(super) fn print_round_header(a: &str, b: &str) {
    println!();
    println!(
        "| clients | round (first) | load 1 min | {a} req/s | {a} p50 / p90 / p99 ms | errors | {a} cores: airlock / postgres / loadgen / others | {b} req/s | {b} p50 / p90 / p99 ms | errors | {b} cores: airlock / postgres / loadgen / others | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
}

pub(super) fn print_round(c: usize, round: usize, b_first: bool, first: &str, second: &str, a: &Point, b: &Point) {
    println!(
        "| {c} | {} ({}) | {:.2} | {} | {} | {:.2} |",
        round + 1,
        if b_first { second } else { first },
        a.load1.min(b.load1),
        a.row(),
        b.row(),
        b.stats.per_second() / a.stats.per_second(),
    );
}

pub(super) fn print_summary_header(a: &str, b: &str) {
    println!();
    println!(
        "| clients | {a} req/s | {b} req/s | {b} / {a} (median of rounds) | {a} p50 / p99 ms | {b} p50 / p99 ms | CPU µs per request: {a} airlock + postgres | {b} airlock + postgres | airlock context switches per request: {a} / {b} | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
}

pub(super) fn print_summary(c: usize, r: &Rounds) {
    let (a_air, a_pg, a_sw) = cpu_per_request(&r.a);
    let (b_air, b_pg, b_sw) = cpu_per_request(&r.b);
    println!(
        "| {c} | {:.0} | {:.0} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} + {:.0} | {:.0} + {:.0} | {:.1} / {:.1} | {} |",
        Rounds::rate(&r.a),
        Rounds::rate(&r.b),
        r.ratio(),
        Rounds::pct(&r.a, 0.5),
        Rounds::pct(&r.a, 0.99),
        Rounds::pct(&r.b, 0.5),
        Rounds::pct(&r.b, 0.99),
        a_air,
        a_pg,
        b_air,
        b_pg,
        a_sw,
        b_sw,
        Rounds::errors(&r.a) + Rounds::errors(&r.b),
    );
}

/// `[store]` on `pg`, and `[audit]` there too with `--pg-audit`.
fn pg_section(options: &Options, pg: &Pg) -> String {
    let mut section = pg.db.store_section();
    if options.pg_audit {
        section.push_str("\n[audit]\nbackend = \"postgres\"\n");
    }
    section
}

pub(super) fn header(what: &str, options: &Options, pg: &Pg) -> Result<()> {
    println!();
    println!("## {what}");
    println!();
    println!(
        "PostgreSQL {} (throw-away server on 127.0.0.1, fsync and synchronous_commit on, pg_stat_statements \
         loaded), {} rounds of {} s measured after {} s warm-up, A/B order alternating; load average at \
         start {:.2}; `cores` = CPU seconds per second of the round: airlock (all its processes) / the \
         PostgreSQL server (postmaster and backends) / this load generator / everything else on the machine.{}",
        pg.server.version()?,
        options.rounds,
        options.seconds,
        options.warmup,
        cpu::load1(),
        match options.server_threads {
            Some(t) => format!(" `airlock serve` with TOKIO_WORKER_THREADS={t} (default: one per core)."),
            None => String::new(),
        } + if options.pg_audit {
            " The PostgreSQL side keeps its audit trail in PostgreSQL too (`[audit] backend = \"postgres\"`)."
        } else {
            " The audit trail is the file backend on both sides."
        },
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// `store`: the API on SQLite and on PostgreSQL.

pub fn store(options: &Options) -> Result<()> {
    let component = airlock_benches::component("bench_component");
    let pg = Pg::start("airlock_bench")?;
    let mut sqlite = World::new(options, &bench_config(&component))?;
    let sqlite_token = sqlite.token("loadgen", "agent", "agent")?;
    sqlite.start()?;
    let mut postgres = World::new(options, &(bench_config(&component) + &pg_section(options, &pg)))?;
    let pg_token = postgres.token("loadgen", "agent", "agent")?;
    postgres.start()?;
    let postmaster = pg.server.postmaster_pid()?;
    let sqlite_probe = Probe {
        airlock: vec![sqlite.pid().context("no server")?],
        postmaster: Some(postmaster),
    };
    let pg_probe = Probe {
        airlock: vec![postgres.pid().context("no server")?],
        postmaster: Some(postmaster),
    };
    header(
        "HTTP API POST /v1/invocations (bench.noop, sync, durable audit): PostgreSQL store vs SQLite (baseline)",
        options,
        &pg,
    )?;
    let mut results = Vec::new();
    print_round_header("SQLite", "PostgreSQL");
    for c in concurrency(options) {
        let sqlite_addr = [sqlite.addr.clone()];
        let pg_addr = [postgres.addr.clone()];
        let rounds = Rounds::run(
            options.rounds,
            || {
                point(&sqlite_probe, None, || {
                    invoke_load(options, c, &sqlite_addr, &sqlite_token)
                })
            },
            || point(&pg_probe, Some(&pg), || invoke_load(options, c, &pg_addr, &pg_token)),
            |round, b_first, a, b| print_round(c, round, b_first, "SQLite", "PostgreSQL", a, b),
        )?;
        results.push((c, rounds));
    }
    print_summary_header("SQLite", "PostgreSQL");
    for (c, r) in &results {
        print_summary(*c, r);
    }
    for (c, r) in &results {
        print_statements(&format!("PostgreSQL at {c} clients"), &r.b);
    }
    println!();
    println!("Goal: PostgreSQL ≥ 0.6 of SQLite's throughput, p99 < 25 ms at 32 clients.");
    for (c, r) in &results {
        println!(
            "- {c} clients: ratio {:.2} ({}), PostgreSQL p99 {:.2} ms ({})",
            r.ratio(),
            if r.ratio() >= 0.6 { "met" } else { "not met" },
            Rounds::pct(&r.b, 0.99),
            if Rounds::pct(&r.b, 0.99) < 25.0 {
                "< 25 ms"
            } else {
                "≥ 25 ms"
            },
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// `cluster`: two nodes on one database against one node.

pub fn cluster(options: &Options) -> Result<()> {
    let component = airlock_benches::component("bench_component");
    let pg = Pg::start("airlock_cluster")?;
    let config = bench_config(&component) + &pg_section(options, &pg);
    let mut a = World::new(options, &config)?;
    a.serve_args = vec!["--node-id".into(), "node-a".into()];
    let mut b = World::new(options, &config)?;
    b.serve_args = vec!["--node-id".into(), "node-b".into()];
    // One token, in the shared store: both nodes accept it.
    let token = a.token("loadgen", "agent", "agent")?;
    a.start()?;
    b.start()?;
    let nodes = cluster_nodes(&b.addr, &token)?;
    if nodes.len() != 2 {
        bail!("GET /v1/cluster on node-b lists {nodes:?}, not both nodes");
    }
    let probe = Probe {
        airlock: vec![a.pid().context("no node a")?, b.pid().context("no node b")?],
        postmaster: Some(pg.server.postmaster_pid()?),
    };
    header(
        "Two `airlock serve` nodes on one PostgreSQL database vs one node (baseline), same clients in total",
        options,
        &pg,
    )?;
    println!();
    println!(
        "GET /v1/cluster lists {}. In one-node rounds every client talks to node-a and node-b idles; in \
         two-node rounds the clients alternate between the nodes.",
        nodes.join(", ")
    );
    let one = [a.addr.clone()];
    let two = [a.addr.clone(), b.addr.clone()];
    let mut results = Vec::new();
    print_round_header("one node", "two nodes");
    for c in concurrency(options) {
        if c < 2 {
            continue;
        }
        let rounds = Rounds::run(
            options.rounds,
            || point(&probe, Some(&pg), || invoke_load(options, c, &one, &token)),
            || point(&probe, Some(&pg), || invoke_load(options, c, &two, &token)),
            |round, b_first, x, y| print_round(c, round, b_first, "one node", "two nodes", x, y),
        )?;
        results.push((c, rounds));
    }
    print_summary_header("one node", "two nodes");
    for (c, r) in &results {
        print_summary(*c, r);
    }
    for (c, r) in &results {
        print_statements(&format!("One node at {c} clients"), &r.a);
        print_statements(&format!("Two nodes at {c} clients"), &r.b);
    }
    Ok(())
}

/// The node ids `GET /v1/cluster` lists.
fn cluster_nodes(addr: &str, token: &str) -> Result<Vec<String>> {
    let rt = client_runtime()?;
    let auth = format!("Bearer {token}");
    let r = rt.block_on(async {
        Conn::connect(addr)
            .await?
            .send(&http1::request(
                "GET",
                "/v1/cluster",
                addr,
                &[("Authorization", &auth)],
                b"",
            ))
            .await
    })?;
    if r.status != 200 {
        bail!("GET /v1/cluster: {} {}", r.status, String::from_utf8_lossy(&r.body));
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body)?;
    Ok(v["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

// ---------------------------------------------------------------------------
// `lookup`: an invocation by id among many stored ones.

fn invocation_id(n: u64) -> String {
    format!(
        "{:032x}",
        (n as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    )
}

/// Store `rows` final status rows of `bench.noop` by `loadgen`, as the
/// service stores them, through the store's own API; returns how long it
/// took.
fn fill(store: &dyn airlock::store::Store, rows: u64) -> Result<Duration> {
    use airlock::store::{InvocationOutcome, InvocationRecord, InvocationStatus};
    let caller = airlock::identity::Caller {
        name: "loadgen".into(),
        kind: airlock::identity::IdentityKind::Agent,
        roles: vec!["agent".into()],
        token_id: Some("tok_loadgen".into()),
    };
    let started = Instant::now();
    let now = airlock::time::now_micros();
    for n in 0..rows {
        let at = now.saturating_sub(rows - n);
        store
            .record_run(&InvocationRecord {
                id: invocation_id(n),
                action: "bench".into(),
                function: "noop".into(),
                args: serde_json::json!({}),
                caller: caller.clone(),
                state: InvocationStatus::Succeeded,
                approval: None,
                created_at: at,
                updated_at: at,
                outcome: Some(InvocationOutcome {
                    exit_code: 0,
                    result: None,
                    error: None,
                    finished_at: at,
                }),
                runner: None,
                intent: None,
            })
            .map_err(|e| anyhow!("{e}"))?;
    }
    // A read writes out whatever is still queued first.
    let last = store.invocation(&invocation_id(rows - 1)).map_err(|e| anyhow!("{e}"))?;
    if last.is_none() {
        bail!("the last stored row is not there");
    }
    Ok(started.elapsed())
}

/// `GET /v1/invocations/{id}` over a list of ids, each client starting
/// elsewhere in it.
struct LookupClient {
    conn: Conn,
    requests: std::sync::Arc<Vec<Vec<u8>>>,
    next: usize,
}

impl Client for LookupClient {
    async fn one(&mut self) -> Result<()> {
        let request = &self.requests[self.next % self.requests.len()];
        self.next += 1;
        let r = self.conn.send(request).await?;
        if r.status != 200 {
            bail!("status {}: {}", r.status, String::from_utf8_lossy(&r.body));
        }
        Ok(())
    }
}

fn lookup_load(options: &Options, clients: usize, addr: &str, token: &str, ids: &[String]) -> Result<Stats> {
    let auth = format!("Bearer {token}");
    let requests: std::sync::Arc<Vec<Vec<u8>>> = std::sync::Arc::new(
        ids.iter()
            .map(|id| {
                http1::request(
                    "GET",
                    &format!("/v1/invocations/{id}"),
                    addr,
                    &[("Authorization", &auth)],
                    b"",
                )
            })
            .collect(),
    );
    let rt = client_runtime()?;
    let next = std::cell::Cell::new(0usize);
    rt.block_on(closed_loop(clients, options.warmup, options.seconds, || {
        let start = next.get() * 97;
        next.set(next.get() + 1);
        let requests = requests.clone();
        let addr = addr.to_string();
        async move {
            Ok(LookupClient {
                conn: Conn::connect(&addr).await?,
                requests,
                next: start,
            })
        }
    }))
}

pub fn lookup(options: &Options) -> Result<()> {
    let component = airlock_benches::component("bench_component");
    let pg = Pg::start("airlock_lookup")?;
    let mut sqlite = World::new(options, &bench_config(&component))?;
    let mut postgres = World::new(options, &(bench_config(&component) + &pg.db.store_section()))?;
    let rows = options.rows;
    let sqlite_fill = {
        let store =
            airlock::store::open(&Default::default(), &sqlite.dir.path().join("data")).map_err(|e| anyhow!("{e}"))?;
        fill(store.as_ref(), rows)?
    };
    let pg_fill = {
        let store =
            airlock::store::open(&pg.db.settings(), &postgres.dir.path().join("data")).map_err(|e| anyhow!("{e}"))?;
        fill(store.as_ref(), rows)?
    };
    pg.server.psql(&pg.db.name, "ANALYZE;")?;
    let sqlite_token = sqlite.token("loadgen", "agent", "agent")?;
    let pg_token = postgres.token("loadgen", "agent", "agent")?;
    sqlite.start()?;
    postgres.start()?;
    let postmaster = pg.server.postmaster_pid()?;
    let sqlite_probe = Probe {
        airlock: vec![sqlite.pid().context("no server")?],
        postmaster: Some(postmaster),
    };
    let pg_probe = Probe {
        airlock: vec![postgres.pid().context("no server")?],
        postmaster: Some(postmaster),
    };
    // 1,000 ids spread over the whole table.
    let step = rows / 1000;
    let ids: Vec<String> = (0..1000u64).map(|k| invocation_id(k * step + step / 2)).collect();
    header(
        &format!("GET /v1/invocations/{{id}} among {rows} stored invocations: PostgreSQL vs SQLite (baseline)"),
        options,
        &pg,
    )?;
    let size = pg.server.psql(
        &pg.db.name,
        "SELECT pg_size_pretty(pg_total_relation_size('invocations'));",
    )?;
    println!();
    println!(
        "Filled through the store's own `record_run` (rows as the service writes them): SQLite {:.1} s, \
         PostgreSQL {:.1} s ({} for the table and its indexes). Each client walks 1,000 ids spread over the table.",
        sqlite_fill.as_secs_f64(),
        pg_fill.as_secs_f64(),
        size.trim()
    );
    let mut results = Vec::new();
    print_round_header("SQLite", "PostgreSQL");
    for c in concurrency(options) {
        let rounds = Rounds::run(
            options.rounds,
            || {
                point(&sqlite_probe, None, || {
                    lookup_load(options, c, &sqlite.addr, &sqlite_token, &ids)
                })
            },
            || {
                point(&pg_probe, Some(&pg), || {
                    lookup_load(options, c, &postgres.addr, &pg_token, &ids)
                })
            },
            |round, b_first, a, b| print_round(c, round, b_first, "SQLite", "PostgreSQL", a, b),
        )?;
        results.push((c, rounds));
    }
    print_summary_header("SQLite", "PostgreSQL");
    for (c, r) in &results {
        print_summary(*c, r);
    }
    for (c, r) in &results {
        print_statements(&format!("PostgreSQL lookups at {c} clients"), &r.b);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// `calls`: the store calls of one request, in-process, without HTTP.

/// What `calls` measures in turn.
enum Side<'a> {
    /// A store, through airlock's `Store` API.
    Store(&'static str, &'a std::sync::Arc<dyn airlock::store::Store>),
    /// The same work as plain `tokio-postgres` calls, one connection per
    /// caller thread driven on that thread: what the statements cost
    /// without the store's pool, threads and write lock.
    Raw(&'static str, Shape),
}

impl Side<'_> {
    fn name(&self) -> &'static str {
        match self {
            Side::Store(name, _) | Side::Raw(name, _) => name,
        }
    }
}

/// How [`Side::Raw`] writes a request's rows.
#[derive(Clone, Copy)]
enum Shape {
    /// As the store's flush does for one request today: `BEGIN`, the
    /// `running` row and the final row each upserted by a statement
    /// prepared anew (a `&str` given to `tokio-postgres` is prepared on
    /// every call: one more round trip), `COMMIT`.
    Today,
    /// The final row alone (the `running` row it replaces is never read
    /// in between), one statement prepared once, committed by itself.
    OneStatement,
}

/// The store's token lookup and run upsert (`runtime/src/store/postgres.rs`).
const TOKEN_SQL: &str = "SELECT t.id, t.identity, i.kind, t.roles, t.created_at, t.revoked_at FROM tokens t \
                         JOIN identities i ON i.name = t.identity WHERE t.hash = $1";
const UPSERT_SQL: &str =
    "INSERT INTO invocations (id, state, action, caller, created_at, body) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, body = EXCLUDED.body
         WHERE invocations.state NOT IN ('succeeded', 'failed', 'denied', 'expired')";

/// [`calls_load`] as plain `tokio-postgres` calls in the given shape.
fn raw_load(
    db: &pg::Database,
    hash: [u8; 32],
    threads: usize,
    seconds: f64,
    shape: Shape,
    tag: &str,
) -> Result<(Vec<u64>, Vec<u64>, f64, u64)> {
    let password = std::fs::read_to_string(&db.password_file)?;
    let mut config: tokio_postgres::Config = db.url.parse().context("the database URL")?;
    config.password(password.trim_end());
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let config = config.clone();
            let tag = format!("{tag}{t:02x}");
            std::thread::spawn(move || -> Result<(Vec<u64>, Vec<u64>, u64)> {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let switches = cpu::thread_context_switches();
                let (lookups, writes) = rt.block_on(async {
                    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                    tokio::spawn(connection);
                    let token = client.prepare(TOKEN_SQL).await?;
                    let upsert = client.prepare(UPSERT_SQL).await?;
                    let (mut lookups, mut writes) = (Vec::new(), Vec::new());
                    let mut n = 0u64;
                    while Instant::now() < end {
                        let t0 = Instant::now();
                        if client.query_opt(&token, &[&&hash[..]]).await?.is_none() {
                            bail!("the token is not in the database");
                        }
                        let t1 = Instant::now();
                        let id = format!("{tag}{n:028x}");
                        let [running, done] = rows(&id)?;
                        let at = i64::try_from(airlock::time::now_micros()).unwrap_or(i64::MAX);
                        match shape {
                            Shape::Today => {
                                client.batch_execute("BEGIN").await?;
                                for (state, body) in [&running, &done] {
                                    client
                                        .execute(UPSERT_SQL, &[&id, state, &"bench", &"loadgen", &at, body])
                                        .await?;
                                }
                                client.batch_execute("COMMIT").await?;
                            }
                            Shape::OneStatement => {
                                let (state, body) = &done;
                                client
                                    .execute(&upsert, &[&id, state, &"bench", &"loadgen", &at, body])
                                    .await?;
                            }
                        }
                        lookups.push(t1.duration_since(t0).as_micros() as u64);
                        writes.push(t1.elapsed().as_micros() as u64);
                        n += 1;
                    }
                    Ok((lookups, writes))
                })?;
                Ok((lookups, writes, cpu::thread_context_switches() - switches))
            })
        })
        .collect();
    gather(handles, started)
}

/// The caller threads' lookup and write times (sorted), the wall time
/// since `started`, and their context switches, all together.
#[allow(clippy::type_complexity)]
fn gather(
    handles: Vec<std::thread::JoinHandle<Result<(Vec<u64>, Vec<u64>, u64)>>>,
    started: Instant,
) -> Result<(Vec<u64>, Vec<u64>, f64, u64)> {
    let (mut lookups, mut writes, mut switches) = (Vec::new(), Vec::new(), 0);
    for h in handles {
        let (l, w, s) = h.join().map_err(|_| anyhow!("a caller thread panicked"))??;
        lookups.extend(l);
        writes.extend(w);
        switches += s;
    }
    let wall = started.elapsed().as_secs_f64();
    lookups.sort_unstable();
    writes.sort_unstable();
    Ok((lookups, writes, wall, switches))
}

/// The `running` and final rows' (state, body) of invocation `id`, as the
/// store writes them.
fn rows(id: &str) -> Result<[(String, String); 2]> {
    use airlock::store::{InvocationOutcome, InvocationStatus};
    let now = airlock::time::now_micros();
    let mut record = airlock::store::InvocationRecord {
        id: id.to_string(),
        action: "bench".into(),
        function: "noop".into(),
        args: serde_json::json!({}),
        caller: airlock::identity::Caller {
            name: "loadgen".into(),
            kind: airlock::identity::IdentityKind::Agent,
            roles: vec!["agent".into()],
            token_id: Some("tok_loadgen".into()),
        },
        state: InvocationStatus::Running,
        approval: None,
        created_at: now,
        updated_at: now,
        outcome: None,
        runner: Some("1-000000000000".into()),
        intent: None,
    };
    let running = (record.state.as_str().to_string(), serde_json::to_string(&record)?);
    record.state = InvocationStatus::Succeeded;
    record.runner = None;
    record.outcome = Some(InvocationOutcome {
        exit_code: 0,
        result: None,
        error: None,
        finished_at: now,
    });
    Ok([
        running,
        (record.state.as_str().to_string(), serde_json::to_string(&record)?),
    ])
}

/// The store calls `POST /v1/invocations` makes: the token lookup, the
/// `running` row (queued) and the final row (stored before the answer).
fn request_calls(store: &dyn airlock::store::Store, hash: &[u8; 32], n: u64, tag: &str) -> Result<[Duration; 2]> {
    use airlock::store::{InvocationOutcome, InvocationStatus};
    let t0 = Instant::now();
    let token = store.token_by_hash(hash).map_err(|e| anyhow!("{e}"))?;
    if token.is_none() {
        bail!("the token is not in the store");
    }
    let t1 = Instant::now();
    let now = airlock::time::now_micros();
    let mut record = airlock::store::InvocationRecord {
        id: format!("{tag}{n:028x}"),
        action: "bench".into(),
        function: "noop".into(),
        args: serde_json::json!({}),
        caller: airlock::identity::Caller {
            name: "loadgen".into(),
            kind: airlock::identity::IdentityKind::Agent,
            roles: vec!["agent".into()],
            token_id: Some("tok_loadgen".into()),
        },
        state: InvocationStatus::Running,
        approval: None,
        created_at: now,
        updated_at: now,
        outcome: None,
        runner: Some("1-000000000000".into()),
        intent: None,
    };
    store.record_run(&record).map_err(|e| anyhow!("{e}"))?;
    record.state = InvocationStatus::Succeeded;
    record.runner = None;
    record.outcome = Some(InvocationOutcome {
        exit_code: 0,
        result: None,
        error: None,
        finished_at: now,
    });
    store.finish_run(&record).map_err(|e| anyhow!("{e}"))?;
    Ok([t1 - t0, t1.elapsed()])
}

/// `threads` callers, each making the request's store calls back to back
/// for `seconds`; latencies of the token lookup and of the two row writes.
fn calls_load(
    store: &std::sync::Arc<dyn airlock::store::Store>,
    hash: [u8; 32],
    threads: usize,
    seconds: f64,
    tag: &str,
) -> Result<(Vec<u64>, Vec<u64>, f64, u64)> {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            let tag = format!("{tag}{t:02x}");
            std::thread::spawn(move || -> Result<(Vec<u64>, Vec<u64>, u64)> {
                let switches = cpu::thread_context_switches();
                let (mut lookups, mut writes) = (Vec::new(), Vec::new());
                let mut n = 0u64;
                while Instant::now() < end {
                    let [l, w] = request_calls(store.as_ref(), &hash, n, &tag)?;
                    lookups.push(l.as_micros() as u64);
                    writes.push(w.as_micros() as u64);
                    n += 1;
                }
                Ok((lookups, writes, cpu::thread_context_switches() - switches))
            })
        })
        .collect();
    gather(handles, started)
}

fn pct_us(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64
}

pub fn calls(options: &Options) -> Result<()> {
    use airlock::identity::IdentityKind;
    use airlock::store::TokenRecord;
    let pg = Pg::start("airlock_calls")?;
    let dir = tempfile::tempdir()?;
    let sqlite = airlock::store::open(&Default::default(), dir.path()).map_err(|e| anyhow!("{e}"))?;
    let postgres = airlock::store::open(&pg.db.settings(), dir.path()).map_err(|e| anyhow!("{e}"))?;
    let hash = [7u8; 32];
    for store in [&sqlite, &postgres] {
        let token = TokenRecord {
            id: "tok_loadgen".into(),
            identity: "loadgen".into(),
            kind: IdentityKind::Agent,
            roles: vec!["agent".into()],
            created_at: airlock::time::now_micros(),
            revoked_at: None,
        };
        store
            .add_token("loadgen", IdentityKind::Agent, &token, &hash)
            .map_err(|e| anyhow!("{e}"))?;
    }
    let me = Probe {
        airlock: Vec::new(),
        postmaster: Some(pg.server.postmaster_pid()?),
    };
    header(
        "A request's store calls in-process (token lookup; running row queued + final row stored), no HTTP: \
         PostgreSQL vs SQLite (baseline)",
        options,
        &pg,
    )?;
    println!();
    println!(
        "Caller threads call the store directly, back to back (`cores`: the load generator holds the store \
         here, so its CPU is the service's share). The last two sides make the same database calls without \
         the store: plain `tokio-postgres`, one connection per caller thread, driven on that thread; first \
         with the store's statements (BEGIN, the running and the final row each upserted by a statement \
         prepared anew, COMMIT), then with the final row alone in one statement prepared once. Each round \
         starts with the next side."
    );
    println!();
    println!(
        "| callers | round (first) | load 1 min | backend | requests/s | token lookup p50 / p99 µs | row writes p50 / p99 µs | cores: postgres / loadgen / others | context switches per request |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let threads_list = if options.concurrency_given {
        options.concurrency.clone()
    } else {
        vec![1, 16]
    };
    let sides = [
        Side::Store("SQLite", &sqlite),
        Side::Store("PostgreSQL (the store)", &postgres),
        Side::Raw("PostgreSQL, the store's statements on a plain connection", Shape::Today),
        Side::Raw(
            "PostgreSQL, final row only, one prepared statement",
            Shape::OneStatement,
        ),
    ];
    let mut serial = 0u64;
    for threads in threads_list {
        for round in 0..options.rounds {
            // Each round starts with the next side.
            let order: Vec<&Side> = (0..sides.len()).map(|i| &sides[(round + i) % sides.len()]).collect();
            for side in &order {
                serial += 1;
                let tag = format!("{serial:02x}");
                let load1 = cpu::load1();
                let before = me.mark();
                let switches = cpu::context_switches(std::process::id());
                let (lookups, writes, wall, caller_switches) = match side {
                    Side::Store(_, store) => calls_load(store, hash, threads, options.seconds, &tag)?,
                    Side::Raw(_, shape) => raw_load(&pg.db, hash, threads, options.seconds, *shape, &tag)?,
                };
                let name = side.name();
                // The threads alive throughout (the store's own); the
                // callers count theirs before they end.
                let switches = cpu::context_switches(std::process::id()).saturating_sub(switches) + caller_switches;
                let after = me.mark();
                let cores = Cores::between(&before, &after);
                println!(
                    "| {threads} | {} ({}) | {load1:.2} | {name} | {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2} / {:.2} / {:.2} | {:.1} |",
                    round + 1,
                    order[0].name(),
                    lookups.len() as f64 / wall,
                    pct_us(&lookups, 0.5),
                    pct_us(&lookups, 0.99),
                    pct_us(&writes, 0.5),
                    pct_us(&writes, 0.99),
                    cores.postgres,
                    cores.loadgen,
                    cores.others,
                    switches as f64 / lookups.len().max(1) as f64,
                );
            }
        }
    }
    Ok(())
}
