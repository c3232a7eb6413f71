//! `airlock serve` under slow-client floods, on loopback: hundreds of
//! connections without credentials trickling request bodies or request
//! heads a byte at a time, while authenticated clients keep being served;
//! and requests without credentials answered on their head, their bodies
//! never waited for. Every flood is bounded in connections and in time.

mod support;

use serde_json::json;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::http::{Response, Server, request};
use support::{component, toml_path};

/// A config with one action, `echo`, that agents may invoke, and `extra`
/// `[service]` lines.
fn world(extra: &str) -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    let gated = toml_path(&component("gated"));
    let config = support::config(
        dir.path(),
        &format!(
            "[runtime]\ndata-dir = \"data\"\n[service]\nrate-limit = {{ per-second = 100000, burst = 100000 }}\n\
             {extra}\n[actions.echo]\ncomponent = {gated}\n[actions.echo.grants]\napproval = true\n\
             files = {{ dir = \"work\", mode = \"read-write\" }}\n[actions.echo.access]\ninvoke = [\"role:agent\"]\n\
             approve = [\"role:reviewer\"]\n"
        ),
    );
    let token = support::create_token(&config, "bot", "agent", &["agent"]);
    (dir, config, token)
}

/// What an attacker sends: a whole request head announcing a body that
/// then trickles, or a request head that never ends.
#[derive(Clone, Copy)]
enum Trickle {
    Body,
    Head,
}

/// What the attackers saw.
#[derive(Debug, Default)]
struct Seen {
    connections: usize,
    /// Status line and headers of each answer, and how long after the
    /// request head it came.
    answers: Vec<(String, Duration)>,
    /// Connections the server closed without an answer.
    closed: usize,
}

/// A running flood.
struct Flood {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Flood {
    /// `attackers` connections to `addr` from the loopback `sources`, each
    /// trickling a byte every 200 ms and opening the next connection 100 ms
    /// after the server answers or closes one, until stopped, or for
    /// [`FLOOD_LIMIT`] at most.
    fn start(addr: SocketAddr, trickle: Trickle, attackers: usize, sources: &[Ipv4Addr]) -> Flood {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let until = Instant::now() + FLOOD_LIMIT;
        let sources = sources.to_vec();
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    for i in 0..attackers {
                        let source = sources[i % sources.len()];
                        tokio::spawn(attacker(addr, source, trickle, seen.clone(), stop.clone()));
                    }
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                });
                // Dropping the runtime ends every attacker and closes its
                // connection, wherever it waits.
            })
        };
        Flood { seen, stop, thread }
    }

    /// Give the flood time to open its connections: until `n` are open, or
    /// for at most 5 s (a server that stops accepting holds the rest back,
    /// and the clients then find out what that costs them).
    fn wait_for_connections(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.seen.lock().unwrap().connections < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop, and what the attackers saw.
    fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// The longest a flood runs.
const FLOOD_LIMIT: Duration = Duration::from_secs(30);

async fn attacker(addr: SocketAddr, source: Ipv4Addr, trickle: Trickle, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let head: &[u8] = match trickle {
        Trickle::Body => b"POST /v1/invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 30000\r\n\r\n{",
        Trickle::Head => b"POST /v1/invocations HTTP/1.1\r\nHost: x\r\nX-Slow: ",
    };
    while !stop.load(Ordering::Relaxed) {
        let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
            return;
        };
        if socket.bind(SocketAddr::from((source, 0))).is_err() {
            return;
        }
        let Ok(mut stream) = socket.connect(addr).await else {
            return;
        };
        seen.lock().unwrap().connections += 1;
        let sent = Instant::now();
        if stream.write_all(head).await.is_err() {
            continue;
        }
        let mut answer = Vec::new();
        loop {
            let mut buf = [0u8; 1024];
            tokio::select! {
                read = stream.read(&mut buf) => {
                    match read {
                        Ok(n) if n > 0 => {
                            answer.extend_from_slice(&buf[..n]);
                            if !answer.windows(4).any(|w| w == b"\r\n\r\n") {
                                continue;
                            }
                            let head = String::from_utf8_lossy(&answer).split("\r\n\r\n").next().unwrap_or("").to_string();
                            seen.lock().unwrap().answers.push((head, sent.elapsed()));
                        }
                        _ if answer.is_empty() => seen.lock().unwrap().closed += 1,
                        _ => {
                            let head = String::from_utf8_lossy(&answer).into_owned();
                            seen.lock().unwrap().answers.push((head, sent.elapsed()));
                        }
                    }
                    break;
                }
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    // The server may have stopped reading: that is its
                    // answer to read next.
                    let _ = stream.write_all(b"x").await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `clients` threads, each sending `each` authenticated invocations, every
/// one on a fresh connection (the hard case: a new connection must get in
/// past the flood). Returns each answer with its latency.
fn clients(addr: &str, token: &str, clients: usize, each: usize) -> Vec<(Response, Duration)> {
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (addr, auth) = (addr.to_string(), format!("Bearer {token}"));
            std::thread::spawn(move || {
                (0..each)
                    .map(|i| {
                        let body = json!({"action": "echo", "function": "echo", "args": {"value": format!("{c}-{i}")}});
                        let started = Instant::now();
                        let r = request(
                            &addr,
                            "POST",
                            "/v1/invocations",
                            &[("Authorization", auth.as_str()), ("Content-Type", "application/json")],
                            body.to_string().as_bytes(),
                        );
                        (r, started.elapsed())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
}

/// Every answer a 200 with its own result, each within `bound` (a loose
/// bound: the floods below would hold a client for the body or header
/// timeout, 30 s or 10 s, without the limits under test).
fn assert_all_served(answers: &[(Response, Duration)], bound: Duration) {
    let slowest = answers.iter().map(|(_, d)| *d).max().unwrap_or_default();
    for (r, took) in answers {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["status"], "succeeded", "{r:?}");
        assert!(
            *took < bound,
            "an authenticated request took {took:?} (slowest {slowest:?})"
        );
    }
}

#[test]
fn a_slow_body_flood_does_not_stall_authenticated_clients() {
    // Fewer connection slots than attackers, and the default 30 s body
    // timeout: a server that read bodies before authenticating would hold
    // every slot for a trickled body, and every client would wait.
    let (_dir, config, token) = world("max-connections = 128");
    let server = Server::start(&config);
    let addr: SocketAddr = server.addr.parse().unwrap();
    // From the clients' own address: per-source limits cannot tell them
    // apart.
    let flood = Flood::start(addr, Trickle::Body, 300, &[Ipv4Addr::LOCALHOST]);
    flood.wait_for_connections(300);

    let answers = clients(&server.addr, &token, 4, 15);
    // The attackers go on a little after the clients are done.
    std::thread::sleep(Duration::from_millis(500));
    let seen = flood.finish();
    assert_eq!(answers.len(), 60);
    assert_all_served(&answers, Duration::from_secs(10));
    // Every trickled body was refused on its head, at once: 401, and the
    // connection closed, though not a byte more than one of the body came.
    assert!(seen.answers.len() >= 300, "{seen:?}");
    for (head, after) in &seen.answers {
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
        assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
        assert!(*after < Duration::from_secs(10), "answered after {after:?}: {head}");
    }
}

#[test]
fn a_slowloris_flood_of_request_heads_does_not_lock_out_authenticated_clients() {
    // 200 heads trickled from five addresses (the clients' own among
    // them) against 64 slots and the default 10 s header timeout.
    let (_dir, config, token) = world("max-connections = 64");
    let server = Server::start(&config);
    let addr: SocketAddr = server.addr.parse().unwrap();
    let sources: Vec<Ipv4Addr> = (1..=5).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    let flood = Flood::start(addr, Trickle::Head, 200, &sources);
    flood.wait_for_connections(200);

    let answers = clients(&server.addr, &token, 4, 15);
    std::thread::sleep(Duration::from_millis(500));
    let seen = flood.finish();
    assert_all_served(&answers, Duration::from_secs(5));
    // Heads that never end are never answered: their connections were
    // closed to make room, long before the header timeout.
    assert!(seen.answers.is_empty(), "{seen:?}");
    assert!(seen.closed >= 100, "{seen:?}");
}

/// Open a connection, send `head` (a request head announcing a body) and
/// one byte of the body, and read the answer without sending the rest.
fn head_only(addr: &str, head: &str) -> (Response, Duration) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let started = Instant::now();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(b"{").unwrap();
    let r = support::http::read(stream);
    (r, started.elapsed())
}

#[test]
fn requests_without_credentials_are_answered_on_their_head_and_never_wait_for_the_body() {
    // A 30 s body timeout: an answer well before it was given without
    // waiting for the body.
    let (_dir, config, token) = world("max-body-bytes = 65536\nbody-timeout-ms = 30000");
    let server = Server::start(&config);
    let bound = Duration::from_secs(10);
    let bogus = "Authorization: Bearer alk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n";
    for (path, auth, length, status) in [
        ("/v1/invocations", "", 1000, 401),
        ("/v1/invocations", bogus, 1000, 401),
        // Refused for who asks before its size is looked at.
        ("/v1/invocations", "", 10_000_000, 401),
        ("/v1/approvals/x/deny", "", 1000, 401),
        ("/mcp", "", 1000, 401),
        ("/mcp", bogus, 1000, 401),
        ("/v1/new-endpoint", "", 1000, 401),
        // Routes without credentials never read a body.
        ("/v1/health", "", 1000, 405),
        ("/nowhere", "", 1000, 404),
        // The console: signed out, sent to sign in.
        ("/console/approvals/x/decide", "", 1000, 303),
        ("/console/logout", "", 1000, 303),
        // A sign-in without the sign-in page's cookie.
        ("/console/login", "", 1000, 403),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n",
            server.addr
        );
        let (r, took) = head_only(&server.addr, &head);
        assert_eq!(r.status, status, "{path}: {r:?}");
        assert!(took < bound, "{path}: answered after {took:?}");
        assert_eq!(r.header("connection"), Some("close"), "{path}: {r:?}");
        if status == 401 {
            assert_eq!(r.json()["error"]["code"], "unauthenticated", "{path}: {r:?}");
        }
    }

    // The console sign-in is the one request whose credential is in its
    // body: it is read, but only a small one, and not for long.
    let page = server.get("/console/login", None);
    let nonce = page
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .and_then(|kv| kv.strip_prefix("airlock_login="))
        .expect("the sign-in page's cookie")
        .to_string();
    let head = |length: usize| {
        format!(
            "POST /console/login HTTP/1.1\r\nHost: {}\r\nCookie: airlock_login={nonce}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {length}\r\n\r\n",
            server.addr
        )
    };
    let (r, took) = head_only(&server.addr, &head(100_000));
    assert_eq!(r.status, 413, "{r:?}");
    assert!(took < bound, "answered after {took:?}");
    let (r, took) = head_only(&server.addr, &head(200));
    assert_eq!(r.status, 408, "{r:?}");
    assert!(took < bound, "a trickled sign-in was read for {took:?}");

    // A client that sends its whole (large) body before reading is told
    // 401, not reset: the server discards the unread body as it closes.
    for _ in 0..3 {
        let body = vec![b'x'; 60_000];
        let r = request(
            &server.addr,
            "POST",
            "/v1/invocations",
            &[("Content-Type", "application/json")],
            &body,
        );
        assert_eq!(r.status, 401, "{r:?}");
    }

    // The same requests with a token are read and answered as usual.
    let auth = format!("Bearer {token}");
    let r = request(
        &server.addr,
        "POST",
        "/v1/invocations",
        &[("Authorization", auth.as_str()), ("Content-Type", "application/json")],
        br#"{"action": "echo", "function": "echo", "args": {"value": "hi"}}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
}

/// Read one response with a `Content-Length` body from a keep-alive
/// connection; its status.
fn read_one(stream: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    head[9..12].parse().unwrap()
}

#[test]
fn idle_unauthenticated_connections_are_capped_per_source_and_in_all() {
    // 16 unauthenticated connections in all, 4 per source address, and a
    // header timeout far beyond the test.
    let (_dir, config, token) = world(
        "max-connections = 64\nmax-unauthenticated = 16\nmax-unauthenticated-per-source = 4\nheader-timeout-ms = 60000",
    );
    let server = Server::start(&config);
    let addr: SocketAddr = server.addr.parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let open_from = |source: Ipv4Addr, n: usize| -> Vec<tokio::net::TcpStream> {
        rt.block_on(async {
            let mut out = Vec::new();
            for _ in 0..n {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(SocketAddr::from((source, 0))).unwrap();
                out.push(socket.connect(addr).await.unwrap());
            }
            out
        })
    };
    // How many of `conns` the server has left open once it has applied the
    // caps (it does when a connection's short grace ends): waits up to 10 s
    // for `expected`.
    let still_open = |conns: Vec<tokio::net::TcpStream>, expected: usize| -> usize {
        use tokio::io::AsyncReadExt as _;
        rt.block_on(async {
            let mut conns = conns;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut open = 0;
                for s in conns.iter_mut() {
                    let mut byte = [0u8; 1];
                    // Open and idle: nothing to read; closed: end of file.
                    if tokio::time::timeout(Duration::from_millis(10), s.read(&mut byte))
                        .await
                        .is_err()
                    {
                        open += 1;
                    }
                }
                if open == expected || Instant::now() > deadline {
                    return open;
                }
            }
        })
    };

    // One address: only its 4 newest idle connections stay.
    let one = open_from(Ipv4Addr::new(127, 0, 0, 2), 20);
    assert_eq!(still_open(one, 4), 4);
    // Many addresses: 16 in all.
    let many: Vec<_> = (3..11)
        .flat_map(|i| open_from(Ipv4Addr::new(127, 0, 0, i), 4))
        .collect();
    assert_eq!(many.len(), 32);
    assert_eq!(still_open(many, 16), 16);

    // An authenticated connection is not counted, and not closed, however
    // many unauthenticated ones arrive after it.
    let mut kept = TcpStream::connect(&server.addr).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "GET /v1/actions HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
        server.addr
    );
    kept.write_all(head.as_bytes()).unwrap();
    assert_eq!(read_one(&mut kept), 200);
    let crowd = open_from(Ipv4Addr::LOCALHOST, 40);
    assert_eq!(still_open(crowd, 4), 4);
    kept.write_all(head.as_bytes()).unwrap();
    assert_eq!(read_one(&mut kept), 200, "the authenticated connection was closed");
}
