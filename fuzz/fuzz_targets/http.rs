//! The service over real HTTP on loopback: the JSON API, the reviewer
//! console's pages and form posts, and MCP's streamable HTTP transport,
//! all behind the same listener, gate and connection limits as `airlock
//! serve`.
//!
//! Each input is one request as written on the wire (request line,
//! headers, a blank line, the body), where `{AGENT}`, `{REVIEWER}`,
//! `{SESSION}`, `{CSRF}`, `{APPROVAL}`, `{INVOCATION}` and `{MCP_SESSION}`
//! stand for real credentials and ids made when the target starts (a
//! signed-in console session, a pending approval, an open MCP session), so
//! inputs reach past the gate. The target adds `Connection: close`, and a
//! `Host` and a `Content-Length` unless the input has its own.
//!
//! Beyond "no panic" (a panic in a handler is a crash here):
//! - no answer carries a token or the session id, except back to a request
//!   that sent it as data, and, once any request has sent it as data, in the
//!   views of what the service records (see [`shows_records`]);
//! - no answer is a 500: hostile input gets a clear 4xx;
//! - the service still answers `/v1/health` after every request.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::LazyLock;
use std::time::Duration;

/// How long one request may take before the target stops reading (a
/// request may legitimately wait, e.g. for an approval, or hold an event
/// stream open). Short: such inputs are common once libFuzzer finds them,
/// and each costs this much; the service staying up is checked after every
/// request anyway (`/v1/health`).
const PATIENCE: Duration = Duration::from_secs(1);

struct World {
    addr: SocketAddr,
    /// `(placeholder, value)`.
    values: Vec<(&'static str, String)>,
    /// What no answer may contain.
    secrets: Vec<String>,
    /// Per secret: whether a request the service records has sent it as
    /// data (an argument, a reason, a function's name, a trace header),
    /// accepted or not: the audit trail records what an admitted request
    /// asked for as sent, refused invocations included, so from then on it is
    /// data the service keeps and shows in its views of what it recorded
    /// (never anywhere else; see [`records_data`] and [`shows_records`]).
    published: Vec<std::sync::atomic::AtomicBool>,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

/// One raw HTTP/1.1 exchange: the status and the whole answer (cut at
/// [`PATIENCE`]).
fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, Vec<u8>) {
    // libFuzzer's timer (SIGALRM, every second) interrupts system calls:
    // those are tried again.
    let mut stream = loop {
        match TcpStream::connect(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            connected => break connected.expect("the service accepts connections"),
        }
    };
    stream.set_nodelay(true).expect("set TCP_NODELAY");
    stream.set_read_timeout(Some(PATIENCE)).expect("set a read timeout");
    stream.set_write_timeout(Some(PATIENCE)).expect("set a write timeout");
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let started = std::time::Instant::now();
    while started.elapsed() < PATIENCE {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
        // An event stream stays open by design: its head and first events
        // are what there is to check.
        if is_event_stream(&answer) {
            stream
                .set_read_timeout(Some(Duration::from_millis(50)))
                .expect("set a read timeout");
        }
    }
    (final_status(&answer), answer)
}

/// The status of the final answer (`HTTP/1.0` or `HTTP/1.1`, interim
/// `1xx` answers skipped); 0 when none came in time.
fn final_status(answer: &[u8]) -> u16 {
    let mut rest = answer;
    loop {
        let status: u16 = [&b"HTTP/1.1 "[..], b"HTTP/1.0 "]
            .iter()
            .find_map(|version| rest.strip_prefix(*version))
            .and_then(|after| std::str::from_utf8(after.get(..3)?).ok())
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        if !(100..200).contains(&status) {
            return status;
        }
        match rest.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(at) => rest = &rest[at + 4..],
            None => return 0,
        }
    }
}

/// A request split where the HTTP parser ends its head: at the first empty
/// line, lines ended by `\n` or `\r\n`, after any empty lines before the
/// request line (which the parser skips). The head is returned without its
/// last line end.
fn split_head(request: &[u8]) -> (&[u8], &[u8]) {
    let start = request
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(request.len());
    let mut at = start;
    while let Some(offset) = request[at..].iter().position(|b| *b == b'\n') {
        let newline = at + offset;
        let blank = match request.get(newline + 1..) {
            Some([b'\n', ..]) => Some(newline + 2),
            Some([b'\r', b'\n', ..]) => Some(newline + 3),
            _ => None,
        };
        if let Some(body) = blank {
            let head = &request[..newline];
            return (head.strip_suffix(b"\r").unwrap_or(head), &request[body..]);
        }
        at = newline + 1;
    }
    (request, &[][..])
}

/// Whether `answer` has a complete head announcing `text/event-stream`.
fn is_event_stream(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    answer[..end].split(|b| *b == b'\n').any(|line| {
        line.to_ascii_lowercase()
            .starts_with(b"content-type: text/event-stream")
    })
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn body_of(answer: &[u8]) -> &[u8] {
    answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(&[][..], |at| &answer[at + 4..])
}

fn header_of<'a>(answer: &'a [u8], name: &str) -> Option<&'a str> {
    let head = std::str::from_utf8(&answer[..answer.len() - body_of(answer).len()]).ok()?;
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The value after `marker` up to the next `"`.
fn after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    let rest = &text[text.find(marker)? + marker.len()..];
    rest.get(..rest.find('"')?)
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let hello = common::hello_component();
    let (dir, service) = common::start(&format!(
        r#"
[runtime]
data-dir = "data"

[service]
max-body-bytes = 65536
rate-limit = {{ per-second = 1000000, burst = 1000000 }}
audit-readers = ["role:auditor"]

[actions.hello]
component = {hello}
[actions.hello.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]

[actions.deploy]
component = {hello}
[actions.deploy.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]
[actions.deploy.approval]
invocation = true
"#
    ));
    let token = |name: &str, kind, roles: &[&str]| common::token(&service, name, kind, roles);
    let agent = token("fuzz-agent", airlock::identity::IdentityKind::Agent, &["agent"]);
    let reviewer = token(
        "fuzz-reviewer",
        airlock::identity::IdentityKind::Human,
        &["reviewer", "auditor"],
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    runtime.spawn(airlock::service::serve(service, listener, std::future::pending()));

    // A reviewer signed in to the console.
    let (_, page) = exchange(addr, &request("GET", "/console/login", &[], b""));
    let nonce = header_of(&page, "set-cookie")
        .and_then(|c| c.split(';').next())
        .and_then(|kv| kv.strip_prefix("airlock_login="))
        .expect("the sign-in page sets its CSRF cookie")
        .to_string();
    let (status, signed_in) = exchange(
        addr,
        &request(
            "POST",
            "/console/login",
            &[
                ("Cookie", &format!("airlock_login={nonce}")),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            format!("token={reviewer}&csrf={nonce}").as_bytes(),
        ),
    );
    assert_eq!(status, 303, "{}", String::from_utf8_lossy(&signed_in));
    let session = header_of(&signed_in, "set-cookie")
        .and_then(|c| c.split(';').next())
        .and_then(|kv| kv.strip_prefix("airlock_session="))
        .expect("a session cookie")
        .to_string();
    let (_, home) = exchange(
        addr,
        &request(
            "GET",
            "/console",
            &[("Cookie", &format!("airlock_session={session}"))],
            b"",
        ),
    );
    let home = String::from_utf8_lossy(&home).into_owned();
    let csrf = after(&home, "name=\"csrf\" value=\"")
        .expect("the console's forms carry the session's CSRF token")
        .to_string();

    // An invocation waiting for a reviewer.
    let (status, submitted) = exchange(
        addr,
        &request(
            "POST",
            "/v1/invocations",
            &[
                ("Authorization", &format!("Bearer {agent}")),
                ("Content-Type", "application/json"),
            ],
            br#"{"action":"deploy","function":"greet","args":{"who":{"name":"a","title":null,"languages":[]}},"wait-ms":0}"#,
        ),
    );
    let submitted: serde_json::Value = serde_json::from_slice(body_of(&submitted)).expect("the API answers JSON");
    assert!(status == 202, "{submitted}");
    let invocation = submitted["invocation"].as_str().expect("an invocation id").to_string();
    let approval = submitted["approval"].as_str().expect("an approval id").to_string();

    // An open MCP session.
    let (_, opened) = exchange(
        addr,
        &request(
            "POST",
            "/mcp",
            &[
                ("Authorization", &format!("Bearer {agent}")),
                ("Content-Type", "application/json"),
                ("Accept", "application/json, text/event-stream"),
            ],
            br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"fuzz","version":"0"}}}"#,
        ),
    );
    let mcp_session = header_of(&opened, "mcp-session-id")
        .expect("initialize opens an MCP session")
        .to_string();

    World {
        addr,
        secrets: vec![agent.clone(), reviewer.clone(), session.clone()],
        published: (0..3).map(|_| std::sync::atomic::AtomicBool::new(false)).collect(),
        values: vec![
            ("{AGENT}", agent),
            ("{REVIEWER}", reviewer),
            ("{SESSION}", session),
            ("{CSRF}", csrf),
            ("{APPROVAL}", approval),
            ("{INVOCATION}", invocation),
            ("{MCP_SESSION}", mcp_session),
        ],
        _runtime: runtime,
        _dir: dir,
    }
});

fn fill(world: &World, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for (key, value) in &world.values {
        let mut next = Vec::with_capacity(out.len());
        let mut rest = &out[..];
        while let Some(at) = rest.windows(key.len()).position(|w| w == key.as_bytes()) {
            next.extend_from_slice(&rest[..at]);
            next.extend_from_slice(value.as_bytes());
            rest = &rest[at + key.len()..];
        }
        next.extend_from_slice(rest);
        out = next;
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The request without its credentials: its `Authorization` and `Cookie`
/// headers, and, for the console's sign-in form, its `token` field.
fn outside_credentials(raw: &[u8], route: &Route) -> Vec<u8> {
    let (head, body) = split_head(raw);
    let mut out = Vec::with_capacity(raw.len());
    for line in head.split_inclusive(|b| *b == b'\n') {
        let lower = line.to_ascii_lowercase();
        if !lower.starts_with(b"authorization:") && !lower.starts_with(b"cookie:") {
            out.extend_from_slice(line);
        }
    }
    if !route.is("POST", "/console/login") {
        out.extend_from_slice(body);
        return out;
    }
    for (name, value) in url::form_urlencoded::parse(body) {
        if name != "token" {
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
            out.extend_from_slice(value.as_bytes());
            out.push(b'&');
        }
    }
    out
}

/// A request's method, path (without its query) and body as the service
/// routes them: empty lines before the request line are skipped (as the
/// HTTP parser does) and an absolute-form target (`GET http://host/path`)
/// is reduced to its path.
struct Route<'a> {
    method: String,
    path: String,
    /// The head, from the request line on.
    head: &'a [u8],
    body: &'a [u8],
}

impl<'a> Route<'a> {
    fn of(raw: &'a [u8]) -> Route<'a> {
        let (head, body) = split_head(raw);
        let start = head
            .iter()
            .position(|b| *b != b'\r' && *b != b'\n')
            .unwrap_or(head.len());
        let head = &head[start..];
        let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut parts = line.trim_end_matches('\r').split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default();
        let target = target.split(['?', '#']).next().unwrap_or_default();
        // Absolute form: `scheme://authority/path`; the authority ends at
        // the first `/` (the query and fragment are already cut).
        let path = match target.split_once("://") {
            Some((_, rest)) if !target.starts_with('/') => rest.find('/').map_or("/", |slash| &rest[slash..]),
            _ => target,
        }
        .to_string();
        Route {
            method,
            path,
            head,
            body,
        }
    }

    fn is(&self, method: &str, path: &str) -> bool {
        self.method == method && self.path == path
    }

    /// MCP's endpoint: `/mcp` and everything under it (one service).
    fn is_mcp(&self) -> bool {
        self.path == "/mcp" || self.path.starts_with("/mcp/")
    }

    /// The JSON-RPC methods of an MCP body (one message or a batch); `None`
    /// when the body is not JSON as sent (e.g. chunked).
    fn mcp_methods(&self) -> Option<Vec<String>> {
        let value = serde_json::from_slice::<serde_json::Value>(self.body).ok()?;
        let messages = match value {
            serde_json::Value::Array(all) => all,
            one => vec![one],
        };
        Some(
            messages
                .iter()
                .filter_map(|m| m.get("method")?.as_str().map(str::to_string))
                .collect(),
        )
    }

    /// The values of header `name` (case-insensitively).
    fn header_values(&self, name: &str) -> Vec<&'a [u8]> {
        header_values(self.head, name)
    }
}

/// Whether the service may have recorded `secret` from this request as
/// data: the request got past the gate (or its answer did not come in
/// time), and the secret is in what the audit trail keeps of it: the body
/// of an invocation (API or MCP), of an approval decision (API or console
/// form), or an invocation's trace headers.
fn records_data(route: &Route, status: u16, answer: &[u8], secret: &[u8]) -> bool {
    // Refused at the gate or before the body was read (unauthenticated,
    // too slow, too large, a console form without a session): nothing of it
    // was recorded. (A decision the console took answers 303 too, to the
    // approval's page.)
    let to_sign_in = (300..400).contains(&status)
        && header_of(answer, "location").is_some_and(|to| to.starts_with("/console/login"));
    if matches!(status, 401 | 408 | 413) || to_sign_in {
        return false;
    }
    let path = route.path.as_str();
    let post = route.method == "POST";
    let mcp = post && route.is_mcp();
    let invokes = (post && path == "/v1/invocations") || mcp;
    let decides = post
        && ((path.starts_with("/v1/approvals/") && (path.ends_with("/approve") || path.ends_with("/deny")))
            || (path.starts_with("/console/approvals/") && path.ends_with("/decide")));
    // An MCP message records nothing but a `tools/call` (its arguments, its
    // reason); a body that does not parse may still be one (chunked).
    let mcp_records = !mcp
        || route
            .mcp_methods()
            .map_or(true, |methods| methods.iter().any(|m| m == "tools/call"));
    if (invokes || decides) && mcp_records && contains(route.body, secret) {
        return true;
    }
    invokes
        && mcp_records
        && ["traceparent", "tracestate"]
            .iter()
            .any(|name| route.header_values(name).iter().any(|v| contains(v, secret)))
}

/// Whether the request asks for a view of what the service recorded, where
/// data an earlier request sent is shown as recorded: an invocation, an
/// approval (and the answer to a decision on one), the audit trail, the
/// console's pages of them, an MCP session's stream, and MCP's
/// `airlock_status` (a `tools/call`). Everything else (health, actions, the
/// API contract, metrics, the sign-in page, every refusal) must never show
/// a token.
fn shows_records(route: &Route) -> bool {
    let path = route.path.as_str();
    match route.method.as_str() {
        "GET" => {
            route.is_mcp()
                || ["/v1/invocations", "/v1/approvals", "/v1/audit"]
                    .iter()
                    .any(|view| path == *view || path.starts_with(&format!("{view}/")))
                || ["/console", "/console/", "/console/invocations", "/console/audit"].contains(&path)
                || path.starts_with("/console/approvals/")
                || path.starts_with("/console/invocations/")
        }
        // `airlock_status`: a `tools/call`, however it is spelled or framed.
        "POST" if route.is_mcp() => {
            contains(route.body, b"tools")
                || route
                    .mcp_methods()
                    .is_some_and(|methods| methods.iter().any(|m| m == "tools/call"))
        }
        "POST" => path.starts_with("/v1/approvals/"),
        _ => false,
    }
}

/// The values of header `name` (case-insensitively) in `head`, the
/// request line skipped.
fn header_values<'a>(head: &'a [u8], name: &str) -> Vec<&'a [u8]> {
    head.split(|b| *b == b'\n')
        .skip(1)
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            line[..colon]
                .eq_ignore_ascii_case(name.as_bytes())
                .then(|| &line[colon + 1..])
        })
        .collect()
}

/// Whether the head names header `name` (case-insensitively).
fn has_header(head: &[u8], name: &str) -> bool {
    !header_values(head, name).is_empty()
}

// The setup runs before the first input, not inside it (where it would
// count against libFuzzer's -timeout).
fuzz_target!(init: { LazyLock::force(&WORLD); }, |data: &[u8]| {
    let world = &*WORLD;
    // The input is the request as written: a head, and a body after the
    // first blank line.
    let data = fill(world, data);
    let (head, body) = split_head(&data);
    let mut raw = head.to_vec();
    raw.extend_from_slice(b"\r\n");
    if !has_header(head, "host") {
        raw.extend_from_slice(b"Host: 127.0.0.1\r\n");
    }
    raw.extend_from_slice(b"Connection: close\r\n");
    if !has_header(head, "content-length") && !has_header(head, "transfer-encoding") {
        raw.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(body);

    let (status, answer) = exchange(world.addr, &raw);
    // A value the request sends where no credential goes (a path, another
    // header, a JSON field) may be echoed back in an error, to the one who
    // sent it. Sent as a credential (an `Authorization` or `Cookie` header,
    // or the console's `token` field), it must never come back.
    let route = Route::of(&raw);
    let elsewhere = outside_credentials(&raw, &route);
    for (secret, published) in world.secrets.iter().zip(&world.published) {
        if records_data(&route, status, &answer, secret.as_bytes()) {
            published.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if contains(&elsewhere, secret.as_bytes()) {
            continue;
        }
        if published.load(std::sync::atomic::Ordering::Relaxed) && shows_records(&route) {
            continue;
        }
        assert!(
            !contains(&answer, secret.as_bytes()),
            "an answer carries a secret:\n{}\n---\n{}",
            String::from_utf8_lossy(&raw),
            String::from_utf8_lossy(&answer)
        );
    }
    assert_ne!(
        status,
        500,
        "an internal error for:\n{}\n---\n{}",
        String::from_utf8_lossy(&raw),
        String::from_utf8_lossy(&answer)
    );
    let (health, answer) = exchange(world.addr, &request("GET", "/v1/health", &[], b""));
    assert_eq!(
        health,
        200,
        "the service stopped answering after:\n{}\n---\n{}",
        String::from_utf8_lossy(&raw),
        String::from_utf8_lossy(&answer)
    );
});
