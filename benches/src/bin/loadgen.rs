//! `loadgen`: the service measured end to end, each figure beside its
//! baseline measured in the same run.
//!
//! ```sh
//! bash scripts/build-components.sh
//! cargo build --release -p airlock
//! cargo run --release -p airlock-benches --bin loadgen -- all
//! ```
//!
//! Every scenario starts a real `airlock serve` (the release binary) on a
//! loopback port with a fresh data directory, real tokens and the durable
//! audit log, and drives it over keep-alive HTTP/1.1 connections:
//!
//! - `api`: `POST /v1/invocations` of `bench.noop` (sync, durable audit),
//!   closed loop at each concurrency. Baseline: a bare hyper server on the
//!   same port range that parses the same JSON body and calls the same
//!   component on bare wasmtime (no auth, no policy, no audit, no store).
//! - `mcp`: MCP `tools/call` of the same function over streamable HTTP, one
//!   session per connection, against the same baseline.
//! - `agent`: one request at a time, MCP `tools/call` over stdio and `POST
//!   /v1/invocations`, each paired with its transport's own round trip
//!   (`ping`, `GET /v1/health`), the in-process invocation, and the same
//!   invocation behind a bare HTTP server in another process, the host's
//!   floor (see [`agent`]).
//! - `agents`: several agents at once, each with its own `airlock mcp`
//!   over stdio on one data directory, each calling in a loop: how the
//!   processes share the one audit log (see [`agent::agents`]).
//! - `startup`: `airlock serve` with 20 actions until `/v1/ready` answers,
//!   cold (empty compile cache) and warm. Baselines: the process start
//!   (`airlock --version`), and bare wasmtime compiling the same 20
//!   components in this process.
//! - `memory`: the service's resident set while 1,000 invocations are
//!   suspended on host-call approvals, against the same process idle.
//! - `audit`: the audit log grown to `--records` (default 10 million)
//!   records in steps of ten: verification speed, the index catching up,
//!   and queries by invocation, action and caller through the index,
//!   against a full scan of the same log (the baseline).
//! - `flood`: authenticated `POST /v1/invocations` of `bench.noop` from
//!   `--clients` workers (default 8) while `--attackers` (default 1,100)
//!   unauthenticated loopback connections trickle a body (`slow-body`) or
//!   a request head (`slow-head`) one byte a second; each worker on a fresh
//!   connection per request, then on one keep-alive connection. Baseline:
//!   the same clients on the same server without a flood.
//! - `calls`, `store`, `cluster`, `lookup`, `audit-pg` (`pg`: all five):
//!   the service on a throw-away PostgreSQL server against its SQLite
//!   baseline, two nodes on one database against one node, lookups by
//!   invocation among `--rows` stored invocations, and audit queries at
//!   `--rows` records on PostgreSQL against the file backend, in
//!   alternating rounds (see [`store`], [`audit_pg`]).
//!
//! Request loops are bounded in time and count, and every address is on
//! loopback.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// `src/bin/loadgen/store.rs`: a binary's root module looks beside itself.
#[path = "loadgen/agent.rs"]
mod agent;
#[path = "loadgen/audit_pg.rs"]
mod audit_pg;
#[path = "loadgen/store.rs"]
mod store;

use airlock_benches::http1::{self, Conn};
use anyhow::{Context as _, Result, anyhow, bail};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Options {
    airlock: PathBuf,
    seconds: f64,
    warmup: f64,
    concurrency: Vec<usize>,
    actions: usize,
    runs: usize,
    suspended: usize,
    records: u64,
    attackers: usize,
    clients: usize,
    sources: u8,
    floods: Vec<airlock_benches::flood::Mode>,
    /// Whether `--concurrency` was given (the store scenarios default to
    /// 1 and 32 clients).
    concurrency_given: bool,
    rounds: usize,
    rows: u64,
    /// `TOKIO_WORKER_THREADS` for `airlock serve` (a diagnosis: its
    /// runtime has one worker per core otherwise).
    server_threads: Option<usize>,
    /// `store` and `cluster`: the PostgreSQL side's audit trail in
    /// PostgreSQL too (`[audit] backend = "postgres"`).
    pg_audit: bool,
}

const USAGE: &str = "usage: loadgen api|mcp|agent|agents|startup|memory|audit|flood|all|calls|store|cluster|lookup|audit-pg|pg [--seconds S] \
[--warmup S] [--concurrency 1,2,4,...] [--actions N] [--runs N] [--suspended N] [--records N] [--attackers N] \
[--clients N] [--sources N] [--flood body|head|both] [--rounds N] [--rows N] [--server-threads N] [--pg-audit] [--airlock PATH]";

fn parse_options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        airlock: airlock_benches::target_dir().join("release/airlock"),
        seconds: 3.0,
        warmup: 0.5,
        concurrency: vec![1, 2, 4, 8, 16, 32, 64],
        actions: 20,
        runs: 5,
        suspended: 1000,
        records: 10_000_000,
        attackers: 1100,
        clients: 8,
        sources: 1,
        floods: vec![airlock_benches::flood::Mode::Body, airlock_benches::flood::Mode::Head],
        concurrency_given: false,
        rounds: 4,
        rows: 1_000_000,
        server_threads: None,
        pg_audit: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--airlock" => o.airlock = PathBuf::from(value()?),
            "--seconds" => o.seconds = value()?.parse().context("--seconds")?,
            "--warmup" => o.warmup = value()?.parse().context("--warmup")?,
            "--concurrency" => {
                o.concurrency = value()?
                    .split(',')
                    .map(|n| n.trim().parse::<usize>().context("--concurrency"))
                    .collect::<Result<_>>()?;
                o.concurrency_given = true;
            }
            "--actions" => o.actions = value()?.parse().context("--actions")?,
            "--runs" => o.runs = value()?.parse().context("--runs")?,
            "--suspended" => o.suspended = value()?.parse().context("--suspended")?,
            "--records" => o.records = value()?.parse().context("--records")?,
            "--attackers" => o.attackers = value()?.parse().context("--attackers")?,
            "--clients" => o.clients = value()?.parse().context("--clients")?,
            "--sources" => o.sources = value()?.parse().context("--sources")?,
            "--rounds" => o.rounds = value()?.parse().context("--rounds")?,
            "--rows" => o.rows = value()?.parse().context("--rows")?,
            "--server-threads" => o.server_threads = Some(value()?.parse().context("--server-threads")?),
            "--pg-audit" => o.pg_audit = true,
            "--flood" => {
                use airlock_benches::flood::Mode;
                o.floods = match value()?.as_str() {
                    "body" => vec![Mode::Body],
                    "head" => vec![Mode::Head],
                    "both" => vec![Mode::Body, Mode::Head],
                    other => bail!("--flood {other}: use body, head or both"),
                }
            }
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    if !(0.1..=600.0).contains(&o.seconds) || !(0.0..=60.0).contains(&o.warmup) {
        bail!("--seconds must be 0.1..600 and --warmup 0..60");
    }
    if o.concurrency.iter().any(|&c| c == 0 || c > 512) {
        bail!("--concurrency values must be 1..512");
    }
    if !(1..=1000).contains(&o.actions) || !(1..=100).contains(&o.runs) || !(1..=5000).contains(&o.suspended) {
        bail!("--actions must be 1..1000, --runs 1..100, --suspended 1..5000");
    }
    if !(1000..=100_000_000).contains(&o.records) {
        bail!("--records must be 1000..100000000");
    }
    if !(1..=10_000).contains(&o.attackers) || !(1..=256).contains(&o.clients) || !(1..=250).contains(&o.sources) {
        bail!("--attackers must be 1..10000, --clients 1..256, --sources 1..250");
    }
    if !(1..=50).contains(&o.rounds) || !(1000..=100_000_000).contains(&o.rows) {
        bail!("--rounds must be 1..50, --rows 1000..100000000");
    }
    if o.server_threads.is_some_and(|t| !(1..=256).contains(&t)) {
        bail!("--server-threads must be 1..256");
    }
    if !o.airlock.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p airlock` first (or pass --airlock PATH)",
            o.airlock.display()
        );
    }
    Ok(o)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((scenario, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    if scenario == "floor-server" {
        // `loadgen agent`'s child, not a scenario: see `agent::floor_server`.
        return agent::floor_server();
    }
    let options = parse_options(rest)?;
    println!("# loadgen {scenario} on {} cores", cores());
    match scenario.as_str() {
        "api" => api(&options, "api")?,
        "mcp" => api(&options, "mcp")?,
        "agent" => agent::agent(&options)?,
        "agents" => agent::agents(&options)?,
        "startup" => startup(&options)?,
        "memory" => memory(&options)?,
        "audit" => audit_growth(&options)?,
        "flood" => flood(&options)?,
        "store" => store::store(&options)?,
        "cluster" => store::cluster(&options)?,
        "lookup" => store::lookup(&options)?,
        "calls" => store::calls(&options)?,
        "audit-pg" => audit_pg::audit_pg(&options)?,
        "pg" => {
            store::calls(&options)?;
            store::store(&options)?;
            store::cluster(&options)?;
            store::lookup(&options)?;
            audit_pg::audit_pg(&options)?;
        }
        "all" => {
            api(&options, "api")?;
            api(&options, "mcp")?;
            startup(&options)?;
            memory(&options)?;
            audit_growth(&options)?;
            flood(&options)?;
        }
        other => bail!("unknown scenario {other}\n{USAGE}"),
    }
    Ok(())
}

/// wasmtime's errors into this program's.
fn wt<T>(r: wasmtime::Result<T>) -> Result<T> {
    r.map_err(|e| anyhow!("{e:?}"))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// TOML string literal for a path.
fn toml_path(p: &Path) -> String {
    format!(
        "\"{}\"",
        p.display().to_string().replace('\\', "\\\\").replace('"', "\\\"")
    )
}

/// A data directory, a config, tokens, and (once started) a running
/// `airlock serve`, killed when dropped.
struct World {
    dir: tempfile::TempDir,
    config: PathBuf,
    airlock: PathBuf,
    server: Option<Child>,
    addr: String,
    /// More arguments for `airlock serve` (`--node-id`, …).
    serve_args: Vec<String>,
    server_threads: Option<usize>,
}

impl World {
    fn new(options: &Options, config: &str) -> Result<World> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("work"))?;
        let path = dir.path().join("airlock.toml");
        std::fs::write(&path, config)?;
        Ok(World {
            dir,
            config: path,
            airlock: options.airlock.clone(),
            server: None,
            addr: String::new(),
            serve_args: Vec::new(),
            server_threads: options.server_threads,
        })
    }

    fn airlock(&self) -> Command {
        let mut cmd = Command::new(&self.airlock);
        cmd.env_remove("AIRLOCK_DATA_DIR")
            .env_remove("AIRLOCK_TOKEN")
            .env_remove("AIRLOCK_TOKEN_FILE")
            .env_remove("AIRLOCK_LOG")
            .env_remove("TOKIO_WORKER_THREADS");
        cmd
    }

    /// Create a token (written to a 0600 file by airlock, never in argv).
    fn token(&self, identity: &str, kind: &str, role: &str) -> Result<String> {
        let out = self.dir.path().join(format!("{identity}.token"));
        let status = self
            .airlock()
            .args([
                "token",
                "create",
                "--identity",
                identity,
                "--kind",
                kind,
                "--role",
                role,
            ])
            .arg("--config")
            .arg(&self.config)
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("airlock token create failed ({status})");
        }
        Ok(std::fs::read_to_string(&out)?.trim().to_string())
    }

    /// Start `airlock serve` on a free loopback port; returns how long it
    /// took until `/v1/ready` answered 200.
    fn start(&mut self) -> Result<Duration> {
        self.stop();
        let started = Instant::now();
        let mut cmd = self.airlock();
        if let Some(threads) = self.server_threads {
            cmd.env("TOKIO_WORKER_THREADS", threads.to_string());
        }
        let mut child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .args(["--listen", "127.0.0.1:0"])
            .args(&self.serve_args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.dir.path().join("serve.stderr"))?)
            .spawn()
            .context("start airlock serve")?;
        let stdout = child.stdout.take().context("serve's stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        self.server = Some(child);
        self.addr = match line.trim().strip_prefix("listening on http://") {
            Some(addr) => addr.to_string(),
            None => {
                let stderr = std::fs::read_to_string(self.dir.path().join("serve.stderr")).unwrap_or_default();
                bail!("airlock serve did not start: {}", stderr.trim());
            }
        };
        let deadline = started + Duration::from_secs(120);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(&self.addr) {
                use std::io::{Read as _, Write as _};
                let req = http1::request("GET", "/v1/ready", &self.addr, &[("Connection", "close")], b"");
                if s.write_all(&req).is_ok() {
                    let mut out = Vec::new();
                    let _ = s.read_to_end(&mut out);
                    if out.starts_with(b"HTTP/1.1 200") {
                        return Ok(started.elapsed());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("airlock serve was not ready within 120 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// Closed-loop load and its statistics.

/// Latencies of one load point.
struct Stats {
    latencies_us: Vec<u64>,
    seconds: f64,
    errors: u64,
    /// Requests answered in the warm-up and the measured time together.
    all_requests: u64,
}

impl Stats {
    fn per_second(&self) -> f64 {
        self.latencies_us.len() as f64 / self.seconds
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i.min(self.latencies_us.len() - 1)] as f64 / 1000.0
    }
}

/// What one connection sends: built once per connection (an MCP session is
/// opened there), then one request after another.
trait Client: Send + 'static {
    /// Send one request and check its answer.
    fn one(&mut self) -> impl std::future::Future<Output = Result<()>> + Send;
}

/// `concurrency` connections, each sending back to back for `warmup` +
/// `seconds`; only requests started after the warm-up are counted.
async fn closed_loop<C, F, Fut>(concurrency: usize, warmup: f64, seconds: f64, connect: F) -> Result<Stats>
where
    C: Client,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<C>>,
{
    let mut clients = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        clients.push(connect().await?);
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut answered = 0u64;
                let mut first_error = None;
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let ok = client.one().await;
                    let t1 = Instant::now();
                    answered += u64::from(ok.is_ok());
                    match ok {
                        Ok(()) if t0 >= measure_from => latencies.push((t1 - t0).as_micros() as u64),
                        Ok(()) => {}
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                            // A broken connection would spin; stop this worker.
                            break;
                        }
                    }
                }
                (latencies, errors, answered, first_error)
            })
        })
        .collect();
    let mut stats = Stats {
        latencies_us: Vec::new(),
        seconds,
        errors: 0,
        all_requests: 0,
    };
    for t in tasks {
        let (latencies, errors, answered, first_error) = t.await?;
        stats.latencies_us.extend(latencies);
        stats.errors += errors;
        stats.all_requests += answered;
        if let Some(e) = first_error {
            eprintln!("  a connection failed: {e:#}");
        }
    }
    stats.latencies_us.sort_unstable();
    Ok(stats)
}

fn client_runtime() -> Result<tokio::runtime::Runtime> {
    // One thread: the client shares the machine with the server it measures.
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

// ---------------------------------------------------------------------------
// The API and MCP scenarios.

/// `POST /v1/invocations` (or the baseline's `POST /invoke`) of `noop`.
struct InvokeClient {
    conn: Conn,
    request: Vec<u8>,
}

impl Client for InvokeClient {
    async fn one(&mut self) -> Result<()> {
        let r = self.conn.send(&self.request).await?;
        if r.status != 200 {
            bail!("status {}: {}", r.status, String::from_utf8_lossy(&r.body));
        }
        Ok(())
    }
}

/// MCP `tools/call` over streamable HTTP in a session of its own.
struct McpClient {
    conn: Conn,
    addr: String,
    token: String,
    session: String,
    tool: String,
    next_id: u64,
}

impl McpClient {
    async fn open(addr: &str, token: &str, tool: &str) -> Result<McpClient> {
        let mut client = McpClient {
            conn: Conn::connect(addr).await?,
            addr: addr.to_string(),
            token: format!("Bearer {token}"),
            session: String::new(),
            tool: tool.to_string(),
            next_id: 1,
        };
        let init = serde_json::json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "airlock-loadgen", "version": "0.1.0"}}
        });
        let r = client.post(&init).await?;
        if r.status != 200 {
            bail!(
                "MCP initialize: status {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
        client.session = r
            .header("mcp-session-id")
            .context("MCP initialize: no Mcp-Session-Id")?
            .to_string();
        let note = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let r = client.post(&note).await?;
        if r.status != 202 {
            bail!("MCP initialized: status {}", r.status);
        }
        Ok(client)
    }

    async fn post(&mut self, message: &serde_json::Value) -> Result<http1::Response> {
        let body = message.to_string();
        let mut headers = vec![
            ("Authorization", self.token.as_str()),
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ];
        if !self.session.is_empty() {
            headers.push(("Mcp-Session-Id", self.session.as_str()));
            headers.push(("Mcp-Protocol-Version", "2025-06-18"));
        }
        let request = http1::request("POST", "/mcp", &self.addr, &headers, body.as_bytes());
        Ok(self.conn.send(&request).await?)
    }
}

impl Client for McpClient {
    async fn one(&mut self) -> Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        let call = serde_json::json!({
            "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": self.tool, "arguments": {}}
        });
        let r = self.post(&call).await?;
        let body = String::from_utf8_lossy(&r.body);
        // The answer is one SSE `data:` line holding the JSON-RPC response.
        let answered = body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d.trim()).ok())
            .any(|m| m["id"] == id && m["result"].is_object() && m["result"]["isError"] != true);
        if r.status != 200 || !answered {
            bail!("tools/call: status {}: {body}", r.status);
        }
        Ok(())
    }
}

fn bench_config(component: &Path) -> String {
    let component = toml_path(component);
    format!(
        r#"
[runtime]
data-dir = "data"

[service]
# The load generator is one identity at full speed.
rate-limit = {{ per-second = 1000000, burst = 1000000 }}
mcp-wait-ms = 5000

[actions.bench]
description = "Does nothing: the cost of a governed invocation"
component = {component}
[actions.bench.grants]
log = true
[actions.bench.access]
invoke = ["role:agent"]
"#
    )
}

fn print_header(what: &str) {
    println!();
    println!("## {what}");
    println!();
    println!(
        "| concurrency | baseline req/s | airlock req/s | ratio | baseline p50 / p99 ms | airlock p50 / p90 / p99 ms | errors |"
    );
    println!("|---|---|---|---|---|---|---|");
}

fn api(options: &Options, mode: &str) -> Result<()> {
    let component = airlock_benches::component("bench_component");
    let mut world = World::new(options, &bench_config(&component))?;
    let token = world.token("loadgen", "agent", "agent")?;
    world.start()?;
    let baseline = baseline::Server::start(&component)?;
    let rt = client_runtime()?;
    let what = if mode == "mcp" {
        "MCP tools/call over streamable HTTP (bench.noop), baseline: bare HTTP + bare wasmtime"
    } else {
        "HTTP API POST /v1/invocations (bench.noop, sync, durable audit), baseline: bare HTTP + bare wasmtime"
    };
    print_header(what);
    let tool = airlock::service::mcp::tool_name("bench", "noop");
    for &c in &options.concurrency {
        let base = rt.block_on(closed_loop(c, options.warmup, options.seconds, || {
            let addr = baseline.addr.clone();
            async move {
                let request = http1::request(
                    "POST",
                    "/invoke",
                    &addr,
                    &[("Content-Type", "application/json")],
                    br#"{"action":"bench","function":"noop","args":{}}"#,
                );
                Ok(InvokeClient {
                    conn: Conn::connect(&addr).await?,
                    request,
                })
            }
        }))?;
        let ours = if mode == "mcp" {
            rt.block_on(closed_loop(c, options.warmup, options.seconds, || {
                McpClient::open(&world.addr, &token, &tool)
            }))?
        } else {
            rt.block_on(closed_loop(c, options.warmup, options.seconds, || {
                let addr = world.addr.clone();
                let auth = format!("Bearer {token}");
                async move {
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
            }))?
        };
        println!(
            "| {c} | {:.0} | {:.0} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {} |",
            base.per_second(),
            ours.per_second(),
            ours.per_second() / base.per_second(),
            base.percentile(0.5),
            base.percentile(0.99),
            ours.percentile(0.5),
            ours.percentile(0.9),
            ours.percentile(0.99),
            base.errors + ours.errors,
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Start-up.

/// `component` with a custom section appended, so each copy has its own
/// digest (and its own compile-cache entry) while the code stays the same.
fn distinct_copy(component: &[u8], n: usize) -> Vec<u8> {
    let name = b"airlock-loadgen";
    let payload = format!("copy {n}");
    let mut content = Vec::new();
    leb128(&mut content, name.len() as u64);
    content.extend_from_slice(name);
    content.extend_from_slice(payload.as_bytes());
    let mut out = component.to_vec();
    out.push(0); // custom section
    leb128(&mut out, content.len() as u64);
    out.extend_from_slice(&content);
    out
}

fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort_unstable();
    xs.get(xs.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn startup(options: &Options) -> Result<()> {
    // Components of every shape the repository builds, round robin.
    // (ticket-create and exfil are left out: they need vault secrets.)
    let sources = [
        "bench_component",
        "hello",
        "report",
        "gated",
        "probe",
        "types",
        "cleanup",
    ];
    let dir = tempfile::tempdir()?;
    let mut config = String::from("[runtime]\ndata-dir = \"data\"\n");
    let mut copies = Vec::new();
    for i in 0..options.actions {
        let source = sources[i % sources.len()];
        let bytes = std::fs::read(airlock_benches::component(source))?;
        let path = dir.path().join(format!("action-{i}.wasm"));
        let copy = distinct_copy(&bytes, i);
        std::fs::write(&path, &copy)?;
        copies.push(copy);
        // Grants for every capability these components import.
        config.push_str(&format!(
            "\n[actions.a{i}]\ncomponent = {}\n[actions.a{i}.grants]\nlog = true\napproval = true\n\
             files = {{ dir = \"work\", mode = \"read-write\" }}\n[actions.a{i}.access]\ninvoke = [\"role:agent\"]\napprove = [\"role:reviewer\"]\n",
            toml_path(&path)
        ));
    }
    let mut world = World::new(options, &config)?;
    let cold: Vec<Duration> = (0..options.runs.min(3))
        .map(|_| {
            let _ = std::fs::remove_dir_all(world.dir.path().join("data"));
            world.start()
        })
        .collect::<Result<_>>()?;
    let warm: Vec<Duration> = (0..options.runs).map(|_| world.start()).collect::<Result<_>>()?;
    world.stop();
    let loaded = {
        let mut w = World::new(options, &config)?;
        // Readiness names the loaded actions to an identity only.
        let auth = format!("Bearer {}", w.token("loadgen", "agent", "agent")?);
        w.start()?;
        let mut s = std::net::TcpStream::connect(&w.addr)?;
        use std::io::{Read as _, Write as _};
        s.write_all(&http1::request(
            "GET",
            "/v1/ready",
            &w.addr,
            &[("Connection", "close"), ("Authorization", &auth)],
            b"",
        ))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
        serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["actions"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    // Baselines: the process itself, and bare wasmtime compiling the same
    // components (what a cold start cannot avoid).
    let process: Vec<Duration> = (0..options.runs)
        .map(|_| {
            let t = Instant::now();
            let status = world.airlock().arg("--version").stdout(Stdio::null()).status()?;
            if !status.success() {
                bail!("airlock --version failed");
            }
            Ok(t.elapsed())
        })
        .collect::<Result<_>>()?;
    let settings = airlock::policy::RuntimeSettings {
        data_dir: dir.path().join("bare"),
        max_concurrent_instances: 32,
        store: Default::default(),
        audit: Default::default(),
    };
    let engine = wt(airlock::engine::build(&settings))?;
    let t = Instant::now();
    for copy in &copies {
        wt(wasmtime::component::Component::new(&engine, copy))?;
    }
    let compile = t.elapsed();
    println!();
    println!(
        "## Start-up: `airlock serve` with {} actions until /v1/ready ({} loaded; medians)",
        options.actions, loaded
    );
    println!();
    println!("| figure | baseline | airlock | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| warm compile cache, {} runs | process start {:.1} ms | {:.1} ms | {:.1} |",
        warm.len(),
        ms(median(process.clone())),
        ms(median(warm.clone())),
        ms(median(warm)) / ms(median(process))
    );
    println!(
        "| cold (empty data directory), {} runs | bare wasmtime compiling the {} components {:.0} ms | {:.0} ms | {:.2} |",
        cold.len(),
        copies.len(),
        ms(compile),
        ms(median(cold.clone())),
        ms(median(cold)) / ms(compile)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Memory with invocations suspended on host-call approvals.

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

fn memory(options: &Options) -> Result<()> {
    let gated = toml_path(&airlock_benches::component("gated"));
    let n = options.suspended;
    let config = format!(
        r#"
[runtime]
data-dir = "data"
max-concurrent-instances = {instances}

[service]
rate-limit = {{ per-second = 1000000, burst = 1000000 }}

[actions.gated]
component = {gated}
[actions.gated.grants]
approval = true
files = {{ dir = "work", mode = "read-write" }}
[actions.gated.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]
[actions.gated.approval]
wait-secs = 600
[[actions.gated.approval.host-calls]]
capability = "files"
path-prefix = "gated"
"#,
        instances = n + 16
    );
    let mut world = World::new(options, &config)?;
    let agent = world.token("loadgen", "agent", "agent")?;
    let reviewer = world.token("reviewer", "human", "reviewer")?;
    world.start()?;
    let pid = world.pid().context("no server")?;
    let rt = client_runtime()?;
    let addr = world.addr.clone();
    let auth = format!("Bearer {agent}");
    // Warm the path once (an ungated write), then measure idle.
    rt.block_on(async {
        let mut conn = Conn::connect(&addr).await?;
        let body = br#"{"action":"gated","function":"write","args":{"path":"warm.txt","data":"x"}}"#;
        let r = conn
            .send(&http1::request(
                "POST",
                "/v1/invocations",
                &addr,
                &[("Authorization", &auth), ("Content-Type", "application/json")],
                body,
            ))
            .await?;
        if r.status != 200 {
            bail!("warm-up invocation: {} {}", r.status, String::from_utf8_lossy(&r.body));
        }
        Ok(())
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_kib(pid)?;
    // Submit every invocation without waiting; each suspends at its write.
    rt.block_on(async {
        let mut conn = Conn::connect(&addr).await?;
        for i in 0..n {
            let body = serde_json::json!({
                "action": "gated", "function": "write",
                "args": {"path": format!("gated/{i}.txt"), "data": "x"}, "wait-ms": 0
            })
            .to_string();
            let r = conn
                .send(&http1::request(
                    "POST",
                    "/v1/invocations",
                    &addr,
                    &[("Authorization", &auth), ("Content-Type", "application/json")],
                    body.as_bytes(),
                ))
                .await?;
            if r.status != 202 {
                bail!("submit {i}: {} {}", r.status, String::from_utf8_lossy(&r.body));
            }
        }
        Ok(())
    })?;
    // Wait until every one is suspended on its approval.
    let reviewer_auth = format!("Bearer {reviewer}");
    let deadline = Instant::now() + Duration::from_secs(300);
    let pending = loop {
        let pending = rt.block_on(async {
            let mut conn = Conn::connect(&addr).await?;
            let r = conn
                .send(&http1::request(
                    "GET",
                    "/v1/approvals?state=pending",
                    &addr,
                    &[("Authorization", &reviewer_auth)],
                    b"",
                ))
                .await?;
            let v: serde_json::Value = serde_json::from_slice(&r.body)?;
            let list = v["approvals"].as_array().or(v.as_array()).cloned().unwrap_or_default();
            Ok::<usize, anyhow::Error>(list.iter().filter(|a| a["state"] == "pending").count())
        })?;
        if pending >= n || Instant::now() > deadline {
            break pending;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_millis(500));
    let suspended = rss_kib(pid)?;
    println!();
    println!("## Memory: {n} invocations suspended on host-call approvals ({pending} pending seen)");
    println!();
    println!("| figure | baseline (same process, idle) | airlock | per suspended invocation |");
    println!("|---|---|---|---|");
    println!(
        "| resident set | {:.1} MiB | {:.1} MiB | {:.1} KiB |",
        idle as f64 / 1024.0,
        suspended as f64 / 1024.0,
        suspended.saturating_sub(idle) as f64 / pending.max(1) as f64
    );
    if pending < n {
        bail!("only {pending} of {n} invocations reached their approval within 300 s");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Audit growth: verification and indexed queries as the log grows.

/// Synthetic invocations: start, three host calls, close (five records),
/// shaped like the records airlock writes. One invocation in
/// [`RARE_EVERY`] is of action `rare` by caller `rare-caller`; the rest
/// spread over one bulk action and 100 callers.
struct Synthetic {
    next: u64,
}

const RARE_EVERY: u64 = 10_000;

impl Synthetic {
    fn invocation_id(n: u64) -> String {
        format!(
            "{:032x}",
            (n as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
        )
    }

    fn events(&mut self) -> Result<Vec<airlock::audit::Event>> {
        let n = self.next;
        self.next += 1;
        let id = Self::invocation_id(n);
        let rare = n % RARE_EVERY == RARE_EVERY / 2;
        let (action, caller) = if rare {
            ("rare".to_string(), "rare-caller".to_string())
        } else {
            ("bulk".to_string(), format!("agent-{}", n % 100))
        };
        let digest = "blake3:".to_string() + &"ab".repeat(32);
        let mut out = vec![serde_json::json!({
            "kind": "invocation-started", "invocation": id, "caller": caller, "caller-kind": "agent",
            "action": action, "service-identity": format!("action:{action}"), "component-digest": digest,
            "function": "run", "args-digest": digest, "args": {"ticket": n, "note": "synthetic"},
            "args-truncated": false, "grants": ["log", "files ./work (read-write)"]
        })];
        for call in 0..3u64 {
            out.push(serde_json::json!({
                "kind": "host-call", "invocation": id, "call": call, "at": "2026-12-01T00:00:00.000000Z",
                "interface": "airlock:cap/files", "function": "write",
                "args": [["path", format!("reports/{n}-{call}.md")], ["bytes", "1024"], ["blake3", digest]],
                "allowed": true, "rule": "grants.files (read-write)", "reason": null,
                "status": "ok", "duration-us": 41
            }));
        }
        out.push(serde_json::json!({
            "kind": "invocation-finished", "invocation": id, "action": action, "outcome": "ok",
            "exit-code": 0, "error": null, "duration-us": 312, "fuel-consumed": 91234,
            "peak-memory-bytes": 1_179_648, "result-blake3": digest, "stdout-bytes": 0,
            "stdout-blake3": digest, "stderr-bytes": 0, "stderr-blake3": digest, "log-lines": 0,
            "host-calls": 3, "host-calls-denied": 0,
            "baseline-calls": {"wasi:cli/environment.get-environment": 1}
        }));
        out.into_iter()
            .map(|v| serde_json::from_value(v).context("a synthetic record"))
            .collect()
    }
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    let t = Instant::now();
    let out = f()?;
    Ok((out, t.elapsed()))
}

fn audit_growth(options: &Options) -> Result<()> {
    use airlock::audit::index;
    use airlock::audit::query::Filter;
    let dir = tempfile::tempdir()?;
    let audit_dir = dir.path().join("audit");
    let log = airlock::audit::AuditLog::open(&audit_dir).map_err(|e| anyhow!("{e}"))?;
    let mut synthetic = Synthetic { next: 0 };
    let mut sizes = Vec::new();
    let mut size = 100_000u64;
    while size < options.records {
        sizes.push(size);
        size *= 10;
    }
    sizes.push(options.records);
    println!();
    println!("## Audit growth: verification and queries as the log grows (5 records per invocation)");
    println!();
    println!(
        "| records | log size | verify | index catch-up | by invocation | by action `rare` | by caller `rare-caller` | full scan (baseline) | scan / indexed query |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut written = 0u64;
    for &target in &sizes {
        // Grow the log: queued appends in batches, a durable one now and
        // then so the writer's queue stays short.
        let mut batches = 0u64;
        while written < target {
            let mut events = Vec::with_capacity(5000);
            while events.len() < 5000 && written + (events.len() as u64) < target {
                events.extend(synthetic.events()?);
            }
            written += events.len() as u64;
            batches += 1;
            if batches.is_multiple_of(20) {
                log.append_durable(events).map_err(|e| anyhow!("{e}"))?;
            } else {
                log.append_queued(events);
            }
        }
        log.append_durable(Vec::new()).map_err(|e| anyhow!("{e}"))?;
        let log_bytes = std::fs::metadata(audit_dir.join("audit.log"))?.len();
        let (verified, verify_time) =
            timed(|| airlock::audit::read::verify(&audit_dir, None).map_err(|e| anyhow!("{e}")))?;
        let (caught, catch_up_time) = timed(|| {
            let mut ix = index::Index::open(&audit_dir).map_err(|e| anyhow!("{e}"))?;
            ix.catch_up().map_err(|e| anyhow!("{e}"))
        })?;
        // Queries through `select`, as `airlock audit show` runs them (each
        // opens the index and catches up on nothing new).
        let query = |filter: &Filter| -> Result<(u64, Duration)> {
            let mut times = Vec::new();
            let mut n = 0;
            for _ in 0..9 {
                let t = Instant::now();
                n = index::select(&audit_dir, filter, None, |_, _| true).map_err(|e| anyhow!("{e}"))?;
                times.push(t.elapsed());
            }
            Ok((n, median(times)))
        };
        let rare_invocation = Synthetic::invocation_id(RARE_EVERY / 2);
        let (by_id_n, by_id) = query(&Filter {
            invocation: Some(rare_invocation),
            ..Filter::default()
        })?;
        let (by_action_n, by_action) = query(&Filter {
            action: Some("rare".into()),
            ..Filter::default()
        })?;
        let (by_caller_n, by_caller) = query(&Filter {
            caller: Some("rare-caller".into()),
            ..Filter::default()
        })?;
        // Baseline: the same action query by scanning every record.
        let ((), scan) = timed(|| {
            let mut matcher = Filter {
                action: Some("rare".into()),
                ..Filter::default()
            }
            .matcher();
            let mut n = 0u64;
            airlock::audit::read::scan(&audit_dir, |r, _| {
                n += u64::from(matcher.matches(r));
                true
            })
            .map_err(|e| anyhow!("{e}"))?;
            if n != by_action_n {
                bail!("the scan found {n} records of `rare`, the index {by_action_n}");
            }
            Ok(())
        })?;
        println!(
            "| {} | {:.0} MiB | {:.2} s ({:.0} k records/s) | {:.2} s for {} new{} | {:.2} ms ({by_id_n}) | {:.2} ms ({by_action_n}) | {:.2} ms ({by_caller_n}) | {:.2} s | {:.0} |",
            verified.records,
            log_bytes as f64 / (1 << 20) as f64,
            verify_time.as_secs_f64(),
            verified.records as f64 / verify_time.as_secs_f64() / 1000.0,
            catch_up_time.as_secs_f64(),
            caught.added,
            if caught.rebuilt { " (rebuilt)" } else { "" },
            ms(by_id),
            ms(by_action),
            ms(by_caller),
            scan.as_secs_f64(),
            scan.as_secs_f64() / by_action.as_secs_f64(),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Slow-client floods.

/// How long a client request may take before it counts as failed.
const FLOOD_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Latencies of authenticated `POST /v1/invocations` from `clients`
/// workers for `seconds`: on a fresh connection per request (`fresh`), or
/// on one keep-alive connection each, opened again after a failure. A
/// request unanswered after [`FLOOD_REQUEST_TIMEOUT`], refused, or answered
/// other than 200 counts as an error, and the worker goes on.
async fn flood_clients(addr: &str, token: &str, clients: usize, seconds: f64, fresh: bool) -> Stats {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    if fresh {
        headers.push(("Connection", "close"));
    }
    let request = http1::request(
        "POST",
        "/v1/invocations",
        addr,
        &headers,
        br#"{"action":"bench","function":"noop","args":{}}"#,
    );
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (addr, request) = (addr.to_string(), request.clone());
            tokio::spawn(async move {
                let (mut latencies, mut errors, mut first_error) = (Vec::new(), 0u64, None::<String>);
                let mut conn: Option<Conn> = None;
                while Instant::now() < end {
                    let t0 = Instant::now();
                    let one = tokio::time::timeout(FLOOD_REQUEST_TIMEOUT, async {
                        let mut c = match conn.take() {
                            Some(c) => c,
                            None => Conn::connect(&addr).await?,
                        };
                        let r = c.send(&request).await?;
                        if !fresh {
                            conn = Some(c);
                        }
                        anyhow::Ok(r.status)
                    })
                    .await;
                    let failed = match one {
                        Ok(Ok(200)) => {
                            latencies.push(t0.elapsed().as_micros() as u64);
                            continue;
                        }
                        Ok(Ok(status)) => format!("status {status}"),
                        Ok(Err(e)) => format!("{e:#}"),
                        Err(_) => format!("no answer within {} s", FLOOD_REQUEST_TIMEOUT.as_secs()),
                    };
                    errors += 1;
                    first_error.get_or_insert(failed);
                    conn = None;
                    // A refused connection would spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (latencies, errors, first_error)
            })
        })
        .collect();
    let mut stats = Stats {
        latencies_us: Vec::new(),
        seconds,
        errors: 0,
        all_requests: 0,
    };
    for w in workers {
        if let Ok((latencies, errors, first_error)) = w.await {
            stats.all_requests += latencies.len() as u64;
            stats.latencies_us.extend(latencies);
            stats.errors += errors;
            if let Some(e) = first_error {
                eprintln!("  a client request failed: {e}");
            }
        }
    }
    stats.latencies_us.sort_unstable();
    stats
}

fn flood(options: &Options) -> Result<()> {
    use airlock_benches::flood::Flood;
    use std::sync::atomic::Ordering;
    let component = airlock_benches::component("bench_component");
    // The clients are one identity at full speed (`bench_config`); every
    // connection limit is the default an operator gets.
    let mut world = World::new(options, &bench_config(&component))?;
    let token = world.token("loadgen", "agent", "agent")?;
    world.start()?;
    let addr: std::net::SocketAddr = world.addr.parse().context("the server's address")?;
    let rt = client_runtime()?;
    println!();
    println!(
        "## Authenticated POST /v1/invocations (bench.noop) under a slow-client flood: {} clients, {} attackers \
         from {} loopback source address(es), {} s per row",
        options.clients, options.attackers, options.sources, options.seconds
    );
    println!();
    println!(
        "| flood | client connections | requests | p50 / p90 / p99 / max ms | errors | attacker connections open (at end / peak) | attackers answered 401 / 408 / other, closed silently | attacker connections opened |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let row = |flood: &str, fresh: bool, stats: &Stats, attackers: &str| {
        let max = stats.latencies_us.last().map_or(f64::NAN, |&us| us as f64 / 1000.0);
        println!(
            "| {flood} | {} | {} | {:.2} / {:.2} / {:.2} / {:.1} | {} | {attackers} |",
            if fresh { "fresh per request" } else { "keep-alive" },
            stats.latencies_us.len(),
            stats.percentile(0.5),
            stats.percentile(0.9),
            stats.percentile(0.99),
            max,
            stats.errors,
        );
    };
    for fresh in [true, false] {
        let stats = rt.block_on(flood_clients(
            &world.addr,
            &token,
            options.clients,
            options.seconds,
            fresh,
        ));
        row("none (baseline)", fresh, &stats, "- | - | -");
    }
    for &mode in &options.floods {
        let mut flood = Flood::start(addr, mode, options.attackers, options.sources)?;
        // Let every attacker connect and start trickling.
        std::thread::sleep(Duration::from_secs(3));
        for fresh in [true, false] {
            let stats = rt.block_on(flood_clients(
                &world.addr,
                &token,
                options.clients,
                options.seconds,
                fresh,
            ));
            let c = &flood.counters;
            let attackers = format!(
                "{} / {} | {} / {} / {}, {} | {}",
                c.open.load(Ordering::Relaxed),
                c.peak_open.load(Ordering::Relaxed),
                c.answered_401.load(Ordering::Relaxed),
                c.answered_408.load(Ordering::Relaxed),
                c.answered_other.load(Ordering::Relaxed),
                c.closed_silently.load(Ordering::Relaxed),
                c.connects.load(Ordering::Relaxed),
            );
            row(mode.name(), fresh, &stats, &attackers);
        }
        flood.stop();
        // Let the server see the attackers' sockets close.
        std::thread::sleep(Duration::from_secs(2));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The baseline server.

mod baseline {
    use airlock_benches::bare::BareHost;
    use anyhow::{Context as _, Result};
    use http_body_util::{BodyExt as _, Full};
    use hyper::body::Bytes;

    /// A bare hyper HTTP/1.1 server on loopback that, per request, parses
    /// the JSON body and calls `noop` on bare wasmtime: the floor the
    /// service is compared with. It runs on its own two-worker runtime, as
    /// `airlock serve` does on this machine.
    pub struct Server {
        pub addr: String,
        _runtime: tokio::runtime::Runtime,
        _data: tempfile::TempDir,
    }

    impl Server {
        pub fn start(component: &std::path::Path) -> Result<Server> {
            let data = tempfile::tempdir()?;
            let settings = airlock::policy::RuntimeSettings {
                data_dir: data.path().to_path_buf(),
                max_concurrent_instances: 1024,
                store: Default::default(),
                audit: Default::default(),
            };
            let host = super::wt(BareHost::new(&settings, component))?;
            let noop = super::wt(host.export("noop"))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(super::cores())
                .enable_all()
                .build()?;
            let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
            let addr = listener.local_addr()?.to_string();
            runtime.spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let host = host.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let host = host.clone();
                            async move {
                                let body = req.into_body().collect().await.context("body")?.to_bytes();
                                let _: serde_json::Value = serde_json::from_slice(&body)?;
                                super::wt(host.call(noop, &[], 0).await)?;
                                let out = br#"{"status":"succeeded","result":null}"#;
                                Ok::<_, anyhow::Error>(
                                    hyper::Response::builder()
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from_static(out)))?,
                                )
                            }
                        });
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    });
                }
            });
            Ok(Server {
                addr,
                _runtime: runtime,
                _data: data,
            })
        }
    }
}
