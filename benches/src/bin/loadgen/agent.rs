//! `loadgen agent`: what an agent's request costs on its way to an
//! invocation, over MCP stdio and the HTTP API, against the in-process
//! invocation it ends in, all one at a time and interleaved sample by
//! block in one run (so drift and the other core's load fall on all
//! alike).
//!
//! Each round takes a block of [`BLOCK`] requests of each, in turn:
//! - `in-process`: `bench.noop` through `PreparedAction::invoke` (policy,
//!   instance, durable audit record), in this process;
//! - `mcp ping`: a JSON-RPC `ping` over `airlock mcp`'s stdio, the
//!   transport's own round trip (nothing of airlock's behind it);
//! - `mcp tools/call`: `bench__noop` over the same stdio session;
//! - `mcp built-in tool`: a `tools/call` of airlock's own `airlock_status`
//!   tool naming no invocation, over the same session: a built-in tool's
//!   round trip (authentication, tool dispatch, an answer; no action, no
//!   store);
//! - `api health`: `GET /v1/health` on `airlock serve`, the HTTP round
//!   trip through the service's router and middleware;
//! - `api invoke`: `POST /v1/invocations` of `bench.noop` (sync), on the
//!   same keep-alive connection;
//! - `floor health` and `floor invoke`: the same two requests to a bare
//!   HTTP server in a process of its own ([`floor_server`]: hyper and
//!   nothing of airlock's service), whose `POST /invoke` runs the same
//!   in-process invocation as `in-process`.
//!
//! `floor invoke − floor health` less `in-process` is what running the
//! invocation behind any HTTP server in another process costs on this host
//! beyond the round trip itself (which `floor health` has too): the client
//! waits idle for longer, so its wake-up and the caches it finds are
//! colder, the invocation and its sync run on a server's worker thread,
//! and the body is parsed and the result serialized. What the service adds
//! above that floor is airlock's own, and that is what separates a host
//! where the target is out of reach from code that misses it.
//!
//! The figures that matter are the paired differences of the blocks'
//! medians, per round:
//! `tools/call − ping` and `invoke − health` are what airlock adds to a
//! round trip; each minus `in-process` is what the agent path costs above
//! the invocation itself (issue 19's target: at most 80 µs). Since the
//! issue measures MCP above "a built-in tool's round trip", `tools/call −
//! built-in tool` is shown too; `ping` is the stricter base, and the one
//! the target is judged by here.
//!
//! A second table pairs the same blocks by on-CPU time per request of the
//! process that serves them (this one for `in-process`, `airlock mcp`,
//! `airlock serve`, the floor server; from the process's CPU-time clock):
//! the work airlock adds, without what the machine adds to the latency
//! (the disk's sync, threads and processes waking). Work the service does
//! after answering (its status rows' writer) counts here and not in the
//! latency.

use super::{Options, World, bench_config, client_runtime};
use airlock_benches::cpu;
use airlock_benches::http1::{self, Conn};
use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

/// One JSON-RPC session over a child's stdio.
struct Stdio_ {
    to: ChildStdin,
    from: BufReader<ChildStdout>,
    line: String,
}

impl Stdio_ {
    /// Send `message` and read lines until the answer to `id`.
    fn call(&mut self, message: &Value, id: u64) -> Result<Value> {
        let mut text = message.to_string();
        text.push('\n');
        self.to.write_all(text.as_bytes())?;
        self.to.flush()?;
        loop {
            self.line.clear();
            if self.from.read_line(&mut self.line)? == 0 {
                bail!("airlock mcp ended");
            }
            let v: Value = serde_json::from_str(&self.line).context("a line from airlock mcp")?;
            if v["id"] == id {
                return Ok(v);
            }
        }
    }
}

/// Requests of one kind in a row: long enough for each path to be warm,
/// short enough that every kind sees the same minute of the machine.
const BLOCK: usize = 100;

/// The pairs both tables show: a name, the kind measured, and the kind
/// it is measured above (indexes into the kinds, `in-process` being 0).
const PAIRS: [(&str, usize, usize); 4] = [
    ("mcp tools/call − ping", 2, 1),
    ("api invoke − health", 4, 3),
    ("mcp tools/call − built-in tool", 2, 5),
    ("floor invoke − floor health", 7, 6),
];

/// The kinds of request, in the order each round takes their blocks.
const KINDS: usize = 8;

/// The bare server's pair (the last of [`PAIRS`]): the host's floor.
const FLOOR: (usize, usize) = (PAIRS[3].1, PAIRS[3].2);

/// The pairs shown above the floor: the two agent paths (the first two of
/// [`PAIRS`]).
const ABOVE_FLOOR: [(&str, usize, usize); 2] = [PAIRS[0], PAIRS[1]];

/// Per block, kind `a` less kind `b`, and that less `in-process`; each
/// sorted.
fn paired(per_block: &[Vec<i64>; KINDS], a: usize, b: usize) -> (Vec<i64>, Vec<i64>) {
    let d: Vec<i64> = per_block[a].iter().zip(&per_block[b]).map(|(x, y)| x - y).collect();
    let above = d.iter().zip(&per_block[0]).map(|(d, i)| d - i).collect();
    (sorted_us(d), sorted_us(above))
}

/// Per round, pair `a − b` less the floor's pair: what airlock's service
/// adds above a bare server doing the same invocation; sorted.
fn above_floor(per_block: &[Vec<i64>; KINDS], a: usize, b: usize) -> Vec<i64> {
    let (fa, fb) = FLOOR;
    let rounds = per_block.iter().map(Vec::len).min().unwrap_or(0);
    sorted_us(
        (0..rounds)
            .map(|r| (per_block[a][r] - per_block[b][r]) - (per_block[fa][r] - per_block[fb][r]))
            .collect(),
    )
}

fn sorted_us(mut xs: Vec<i64>) -> Vec<i64> {
    xs.sort_unstable();
    xs
}

fn pct(xs: &[i64], p: f64) -> i64 {
    if xs.is_empty() {
        return 0;
    }
    xs[(((xs.len() - 1) as f64) * p).round() as usize]
}

pub fn agent(options: &Options) -> Result<()> {
    let inproc = airlock_benches::InProcess::new();
    let component = airlock_benches::component("bench_component");
    let mut world = World::new(options, &bench_config(&component))?;
    let token = world.token("loadgen", "agent", "agent")?;
    world.start()?;
    let token_file = world.dir.path().join("loadgen.token");
    let (child, mut mcp) = start_mcp(&world, &token_file)?;
    // Killed if the run fails; on success its stdin is closed first and it
    // ends by itself.
    let mut child = Children(vec![child]);
    let tool = airlock::service::mcp::tool_name("bench", "noop");
    let (floor, floor_addr) = start_floor(&world, options.server_threads)?;
    let floor = Children(vec![floor]);

    let rt = client_runtime()?;
    let mut conn = rt.block_on(Conn::connect(&world.addr))?;
    let mut floor_conn = rt.block_on(Conn::connect(&floor_addr))?;
    let floor_health = http1::request("GET", "/health", &floor_addr, &[], b"");
    let floor_invoke = http1::request(
        "POST",
        "/invoke",
        &floor_addr,
        &[("Content-Type", "application/json")],
        br#"{"function":"noop","args":{}}"#,
    );
    let auth = format!("Bearer {token}");
    let health = http1::request("GET", "/v1/health", &world.addr, &[], b"");
    let invoke = http1::request(
        "POST",
        "/v1/invocations",
        &world.addr,
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        br#"{"action":"bench","function":"noop","args":{}}"#,
    );
    let args = json!({});

    let names: [&str; KINDS] = [
        "in-process",
        "mcp ping",
        "mcp tools/call",
        "api health",
        "api invoke",
        "mcp built-in tool",
        "floor health",
        "floor invoke",
    ];
    let mut samples: [Vec<i64>; KINDS] = Default::default();
    // Per block, each kind's median: the paired figures.
    let mut blocks: [Vec<i64>; KINDS] = Default::default();
    // Per block, the on-CPU time per request of the process that serves
    // it (ns): latency less what the machine adds (disk, wake-ups).
    let mut cpu: [Vec<i64>; KINDS] = Default::default();
    let serve_pid = world
        .server
        .as_ref()
        .map(|c| c.id())
        .context("airlock serve is running")?;
    let mcp_pid = child.0[0].id();
    let floor_pid = floor.0[0].id();
    let pids: [u32; KINDS] = [
        std::process::id(),
        mcp_pid,
        mcp_pid,
        serve_pid,
        serve_pid,
        mcp_pid,
        floor_pid,
        floor_pid,
    ];
    let mut id = 1u64;
    let mut machine = None;
    let start = Instant::now();
    let warm_until = start + Duration::from_secs_f64(options.warmup);
    let end = warm_until + Duration::from_secs_f64(options.seconds);
    while Instant::now() < end {
        let keep = Instant::now() >= warm_until;
        if keep && machine.is_none() {
            machine = Some(cpu::machine());
        }
        for kind in 0..names.len() {
            let mut took = Vec::with_capacity(BLOCK);
            let cpu_before = cpu::on_cpu(pids[kind]);
            for _ in 0..BLOCK {
                id += 1;
                let t = Instant::now();
                match kind {
                    0 => {
                        let report = inproc.rt.block_on(inproc.airlock.action.invoke("noop", &args));
                        if let Err(e) = report.outcome {
                            bail!("in-process noop: {e}");
                        }
                    }
                    1 => {
                        let pong = mcp.call(&json!({"jsonrpc": "2.0", "id": id, "method": "ping"}), id)?;
                        if pong["result"] != json!({}) {
                            bail!("ping: {pong}");
                        }
                    }
                    2 => {
                        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                                          "params": {"name": tool, "arguments": {}}});
                        let answer = mcp.call(&call, id)?;
                        if !answer["result"].is_object() || answer["result"]["isError"] == true {
                            bail!("tools/call: {answer}");
                        }
                    }
                    3 => {
                        let r = rt.block_on(conn.send(&health))?;
                        if r.status != 200 {
                            bail!("health: {}", r.status);
                        }
                    }
                    5 => {
                        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                                          "params": {"name": airlock::service::mcp::STATUS_TOOL, "arguments": {}}});
                        let answer = mcp.call(&call, id)?;
                        if answer["result"]["isError"] != true {
                            bail!("built-in tool: {answer}");
                        }
                    }
                    4 => {
                        let r = rt.block_on(conn.send(&invoke))?;
                        if r.status != 200 {
                            bail!("invoke: {}: {}", r.status, String::from_utf8_lossy(&r.body));
                        }
                    }
                    6 => {
                        let r = rt.block_on(floor_conn.send(&floor_health))?;
                        if r.status != 200 {
                            bail!("floor health: {}", r.status);
                        }
                    }
                    7 => {
                        let r = rt.block_on(floor_conn.send(&floor_invoke))?;
                        if r.status != 200 {
                            bail!("floor invoke: {}: {}", r.status, String::from_utf8_lossy(&r.body));
                        }
                    }
                    other => bail!("no request of kind {other}"),
                }
                took.push(t.elapsed().as_micros() as i64);
            }
            if keep {
                samples[kind].extend_from_slice(&took);
                blocks[kind].push(pct(&sorted_us(took), 0.5));
                if let (Some(a), Some(b)) = (cpu_before, cpu::on_cpu(pids[kind])) {
                    cpu[kind].push(b.saturating_sub(a).as_nanos() as i64 / BLOCK as i64);
                }
            }
        }
    }
    let machine = machine.map(|before| (before, cpu::machine()));
    drop(mcp);
    for c in &mut child.0 {
        let _ = c.wait();
    }
    drop(floor);

    let rounds = blocks[0].len();
    if rounds == 0 {
        bail!("no round finished after the warm-up: give it more --seconds");
    }
    println!();
    println!(
        "## The agent path, one request at a time ({rounds} rounds of {BLOCK} of each in {:.0} s)",
        options.seconds
    );
    println!();
    println!("| measured | p50 µs | p90 µs | p99 µs |");
    println!("|---|---|---|---|");
    for (name, xs) in names.iter().zip(&samples) {
        let xs = sorted_us(xs.clone());
        println!(
            "| {name} | {} | {} | {} |",
            pct(&xs, 0.5),
            pct(&xs, 0.9),
            pct(&xs, 0.99)
        );
    }
    println!();
    println!("| paired, per round (medians) | p50 µs | min / max µs | above in-process, p50 µs | target |");
    println!("|---|---|---|---|---|");
    for (name, a, b) in PAIRS {
        let (d, above) = paired(&blocks, a, b);
        let gap = pct(&above, 0.5);
        // The target is judged against `ping`; the built-in tool's line is
        // the issue's other reading, shown without a verdict, and the bare
        // server's is the host's floor.
        let verdict = match (b, gap <= 80) {
            (5, _) => "(another reading)",
            (6, _) => "(the host's floor: a bare server)",
            (_, true) => "met (≤ 80)",
            (_, false) => "not met (≤ 80)",
        };
        println!(
            "| {name} | {} | {} / {} | {gap} | {verdict} |",
            pct(&d, 0.5),
            d.first().copied().unwrap_or(0),
            d.last().copied().unwrap_or(0),
        );
    }
    println!();
    println!("| airlock's service above the bare server's floor, per round | p50 µs | min / max µs |");
    println!("|---|---|---|");
    for (name, a, b) in ABOVE_FLOOR {
        let d = above_floor(&blocks, a, b);
        println!(
            "| {name} − (floor invoke − floor health) | {} | {} / {} |",
            pct(&d, 0.5),
            d.first().copied().unwrap_or(0),
            d.last().copied().unwrap_or(0),
        );
    }
    print_cpu(&names, &cpu);
    if let Some((before, after)) = machine {
        print_steal(&before, &after);
    }
    Ok(())
}

/// How much of the machine's CPU time the hypervisor stole between
/// `before` and `after`, with a warning above 2 %.
fn print_steal(before: &cpu::Machine, after: &cpu::Machine) {
    let total = after.total.saturating_sub(before.total).as_secs_f64();
    let steal = after.steal.saturating_sub(before.steal).as_secs_f64();
    if total > 0.0 {
        println!();
        println!(
            "Stolen by the hypervisor while measuring: {:.1} % of the machine's CPU time{}",
            100.0 * steal / total,
            if steal / total > 0.02 {
                " (a busy host: these figures move with it; compare only runs taken side by side)"
            } else {
                ""
            }
        );
    }
}

/// Child processes, killed (and reaped) when dropped.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Start this program's [`floor_server`] as a child, its temporary data
/// directory inside `world`'s (removed with it, since the child is killed
/// and removes nothing), on `threads` tokio workers when given, as `airlock
/// serve` is started; returns it and the address it listens on.
fn start_floor(world: &World, threads: Option<usize>) -> Result<(std::process::Child, String)> {
    let mut cmd = std::process::Command::new(std::env::current_exe().context("loadgen's own path")?);
    cmd.arg("floor-server")
        .env("TMPDIR", world.dir.path())
        .env_remove("TOKIO_WORKER_THREADS")
        .stdin(Stdio::piped())
        // Its address only: nothing reads it after that line.
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(threads) = threads {
        cmd.env("TOKIO_WORKER_THREADS", threads.to_string());
    }
    let mut child = cmd.spawn().context("start the bare floor server")?;
    let mut line = String::new();
    let read = child
        .stdout
        .take()
        .context("the floor server's stdout")
        .and_then(|out| Ok(BufReader::new(out).read_line(&mut line)?));
    if let (Ok(_), Some(addr)) = (&read, line.trim().strip_prefix("listening on ")) {
        return Ok((child, addr.to_string()));
    }
    let _ = child.kill();
    let _ = child.wait();
    match read {
        Ok(0) => bail!("the floor server ended before printing its address"),
        Ok(_) => bail!("the floor server did not start: it said {line:?}"),
        Err(e) => bail!("the floor server did not start: {e:#}"),
    }
}

/// `loadgen floor-server`, started by [`agent`]: a bare hyper HTTP/1.1
/// server on loopback, on a multi-thread tokio runtime with a worker per
/// core (or `TOKIO_WORKER_THREADS`) as `airlock serve` has, with nothing of
/// airlock's service: `GET /health` answers `{}`, and `POST /invoke` parses
/// its JSON body (`function`, `args`) and runs it through
/// [`airlock_benches::InProcess`], the same in-process invocation (policy,
/// instance, durable audit record) that `agent` measures in its own
/// process; anything else is a 404, and a request it cannot run a 500
/// saying why (also on stderr). Prints `listening on ADDR`, and ends when
/// its standard input closes (when `agent` ends, however it ends).
pub fn floor_server() -> Result<()> {
    use http_body_util::{BodyExt as _, Full};
    use hyper::body::Bytes;
    use hyper::{Method, StatusCode};
    let inproc = std::sync::Arc::new(airlock_benches::InProcess::new());
    let listener = inproc.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;

    /// One request's answer: its status and JSON body.
    async fn answer(
        server: &airlock_benches::InProcess,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<(StatusCode, Value)> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/health") => Ok((StatusCode::OK, json!({}))),
            (&Method::POST, "/invoke") => {
                let body = req.into_body().collect().await.context("the body")?.to_bytes();
                let request: Value = serde_json::from_slice(&body).context("the body is not JSON")?;
                let function = request["function"].as_str().context("no function named")?;
                let report = server.airlock.action.invoke(function, &request["args"]).await;
                let result = report
                    .outcome
                    .map_err(|e| anyhow::anyhow!("the invocation failed: {e}"))?;
                Ok((
                    StatusCode::OK,
                    json!({"invocation": report.invocation, "status": "succeeded", "result": result}),
                ))
            }
            _ => Ok((StatusCode::NOT_FOUND, json!({"error": "GET /health or POST /invoke"}))),
        }
    }

    let server = inproc.clone();
    inproc.rt.spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    eprintln!("floor server: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let server = server.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let server = server.clone();
                    async move {
                        let (status, body) = answer(&server, req).await.unwrap_or_else(|e| {
                            eprintln!("floor server: {e:#}");
                            (StatusCode::INTERNAL_SERVER_ERROR, json!({"error": format!("{e:#}")}))
                        });
                        hyper::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body.to_string())))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                {
                    eprintln!("floor server: a connection failed: {e}");
                }
            });
        }
    });
    // Until `agent` closes this process's standard input.
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest);
    Ok(())
}

/// Start `airlock mcp` on `world`'s config with the token in `token_file`,
/// and open its session (`initialize`, then `notifications/initialized`).
fn start_mcp(world: &World, token_file: &std::path::Path) -> Result<(std::process::Child, Stdio_)> {
    let mut child = world
        .airlock()
        .arg("mcp")
        .arg("--config")
        .arg(&world.config)
        .arg("--token-file")
        .arg(token_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start airlock mcp")?;
    let opened = (|| -> Result<Stdio_> {
        let mut mcp = Stdio_ {
            to: child.stdin.take().context("stdin")?,
            from: BufReader::new(child.stdout.take().context("stdout")?),
            line: String::new(),
        };
        mcp.call(
            &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "airlock-loadgen", "version": "0.1.0"}}}),
            0,
        )?;
        writeln!(
            mcp.to,
            "{}",
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
        )?;
        Ok(mcp)
    })();
    match opened {
        Ok(mcp) => Ok((child, mcp)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// `loadgen agents`: several agents at once, each with its own `airlock
/// mcp` over stdio (as a stdio MCP client starts one per agent), all on
/// one data directory and so one audit log; each agent calls
/// `bench__noop` in a loop, one call at a time. For each number of agents
/// (`--concurrency`, default 1, 2 and 4): the calls per second of all of
/// them, of the slowest and the fastest agent (how evenly the processes
/// share the log), and the latency of one call. With more than one process appending
/// to the log, each append may first have to read what the others wrote
/// since its own last one.
pub fn agents(options: &Options) -> Result<()> {
    let component = airlock_benches::component("bench_component");
    let counts = if options.concurrency_given {
        options.concurrency.clone()
    } else {
        vec![1, 2, 4]
    };
    if counts.iter().any(|&n| n > 32) {
        bail!("--concurrency for agents: at most 32 processes");
    }
    println!();
    println!(
        "## Agents, each with its own `airlock mcp` on one data directory ({:.0} s each, after {:.1} s warm-up)",
        options.seconds, options.warmup
    );
    println!();
    println!("| agents | calls/s | one agent's, fewest / most | p50 µs | p90 µs | p99 µs |");
    println!("|---|---|---|---|---|---|");
    let machine = cpu::machine();
    for n in counts {
        let world = World::new(options, &bench_config(&component))?;
        world.token("loadgen", "agent", "agent")?;
        let token_file = world.dir.path().join("loadgen.token");
        // Killed if this run fails; ended by closing their stdin if not.
        let mut children = Children(Vec::with_capacity(n));
        let mut sessions = Vec::with_capacity(n);
        for _ in 0..n {
            let (child, session) = start_mcp(&world, &token_file)?;
            children.0.push(child);
            sessions.push(session);
        }
        let tool = airlock::service::mcp::tool_name("bench", "noop");
        let start = Instant::now() + Duration::from_secs_f64(options.warmup);
        let end = start + Duration::from_secs_f64(options.seconds);
        let results: Vec<Result<Vec<i64>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = sessions
                .iter_mut()
                .map(|mcp| {
                    let tool = &tool;
                    scope.spawn(move || -> Result<Vec<i64>> {
                        let mut took = Vec::new();
                        let mut id = 1u64;
                        loop {
                            let now = Instant::now();
                            if now >= end {
                                return Ok(took);
                            }
                            id += 1;
                            let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                                              "params": {"name": tool, "arguments": {}}});
                            let answer = mcp.call(&call, id)?;
                            if !answer["result"].is_object() || answer["result"]["isError"] == true {
                                bail!("tools/call: {answer}");
                            }
                            if now >= start {
                                took.push(now.elapsed().as_micros() as i64);
                            }
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("an agent's thread panicked")))
                })
                .collect()
        });
        let mut all = Vec::new();
        let (mut fewest, mut most) = (usize::MAX, 0);
        for r in results {
            let took = r?;
            (fewest, most) = (fewest.min(took.len()), most.max(took.len()));
            all.extend(took);
        }
        drop(sessions);
        for mut child in children.0.drain(..) {
            let _ = child.wait();
        }
        let all = sorted_us(all);
        println!(
            "| {n} | {:.0} | {:.0} / {:.0} | {} | {} | {} |",
            all.len() as f64 / options.seconds,
            fewest as f64 / options.seconds,
            most as f64 / options.seconds,
            pct(&all, 0.5),
            pct(&all, 0.9),
            pct(&all, 0.99)
        );
    }
    print_steal(&machine, &cpu::machine());
    Ok(())
}

/// The CPU table: per kind, the median over blocks of the on-CPU time per
/// request of the process that serves it (`in-process`: this process;
/// `mcp …`: `airlock mcp`; `api …`: `airlock serve`), and the same pairs
/// as the latency table. What the latency adds to these is the machine's
/// (the disk's sync, threads and processes waking), not airlock's work.
fn print_cpu(names: &[&str], cpu: &[Vec<i64>; KINDS]) {
    if cpu.iter().any(|c| c.len() != cpu[0].len() || c.is_empty()) {
        println!();
        println!("(no CPU figures: a process's CPU-time clock could not be read)");
        return;
    }
    let us = |ns: i64| format!("{:.1}", ns as f64 / 1000.0);
    println!();
    println!("| on-CPU per request, median of blocks | µs | min / max µs |");
    println!("|---|---|---|");
    for (name, xs) in names.iter().zip(cpu) {
        let xs = sorted_us(xs.clone());
        println!(
            "| {name} | {} | {} / {} |",
            us(pct(&xs, 0.5)),
            us(xs.first().copied().unwrap_or(0)),
            us(xs.last().copied().unwrap_or(0))
        );
    }
    println!();
    println!("| on-CPU, paired per block | µs | above in-process, µs |");
    println!("|---|---|---|");
    for (name, a, b) in PAIRS {
        let (d, above) = paired(cpu, a, b);
        println!("| {name} | {} | {} |", us(pct(&d, 0.5)), us(pct(&above, 0.5)));
    }
    for (name, a, b) in ABOVE_FLOOR {
        let d = above_floor(cpu, a, b);
        println!("| {name}, above the floor's | {} | |", us(pct(&d, 0.5)));
    }
}
