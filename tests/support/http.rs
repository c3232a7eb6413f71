//! A small HTTP/1.1 client over std's TcpStream, and a running
//! `airlock serve` process, for the service tests.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A response: status and JSON body (`Null` when the body is not JSON).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Send one request (`Connection: close`) and read the whole response.
pub fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect to airlock serve");
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body.
    let _ = stream.write_all(body);
    read_response(stream)
}

/// Read one whole response from `stream`.
pub fn read(stream: TcpStream) -> Response {
    read_response(stream)
}

fn read_response(stream: TcpStream) -> Response {
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        // Exactly the body: some servers keep the connection open.
        body.resize(len, 0);
        reader.read_exact(&mut body).unwrap();
    } else {
        let _ = reader.read_to_end(&mut body);
    }
    Response { status, headers, body }
}

/// One request as the tests' own servers read it.
pub struct Incoming {
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    /// The head as received (request line, headers, blank line), for
    /// servers that echo it.
    pub head: String,
    /// `Content-Length` bytes (none without one).
    pub body: Vec<u8>,
}

/// Read one request; `Ok(None)` when the client closed the connection
/// before (or in the middle of) its head.
pub fn read_request(reader: &mut impl BufRead) -> std::io::Result<Option<Incoming>> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(None);
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut head = request_line.trim_end().to_string() + "\r\n";
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        head.push_str(&line);
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Some(Incoming {
        method,
        target,
        headers,
        head,
        body,
    }))
}

/// `airlock serve` on a free loopback port, stopped when dropped.
pub struct Server {
    pub child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Server {
    pub fn start(config: &Path) -> Server {
        Server::start_with(config, &[])
    }

    /// [`Server::start`] with more arguments (`--node-id`, `--data-dir`).
    pub fn start_with(config: &Path, extra: &[&str]) -> Server {
        Server::start_env(config, extra, &[])
    }

    /// [`Server::start_with`] with more environment variables.
    pub fn start_env(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args(["serve", "--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_TRACES_EXPORTER")
            .envs(env.iter().copied())
            .env_remove("AIRLOCK_DATA_DIR")
            .env_remove("AIRLOCK_TOKEN")
            .env_remove("AIRLOCK_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start airlock serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line from airlock serve: {line:?}"))
            .to_string();
        Server { child, addr }
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        request(&self.addr, "GET", path, &headers, b"")
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        headers.push(("Content-Type", "application/json"));
        request(&self.addr, "POST", path, &headers, body.to_string().as_bytes())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sign in over plain HTTP, the way the form does: fetch the sign-in page
/// for its CSRF cookie, post the token with it. Returns the session's
/// `Set-Cookie` header.
pub fn sign_in(server: &Server, token: &str) -> String {
    let page = server.get("/console/login", None);
    assert_eq!(page.status, 200, "{page:?}");
    let login_cookie = page
        .header("set-cookie")
        .expect("the sign-in page sets its CSRF cookie");
    let nonce = login_cookie
        .split(';')
        .next()
        .and_then(|kv| kv.trim().strip_prefix("airlock_login="))
        .expect("airlock_login=NONCE")
        .to_string();
    let cookie = format!("airlock_login={nonce}");
    let signed_in = request(
        &server.addr,
        "POST",
        "/console/login",
        &[
            ("Cookie", cookie.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        format!("token={token}&csrf={nonce}").as_bytes(),
    );
    assert_eq!(signed_in.status, 303, "{signed_in:?}");
    signed_in.header("set-cookie").expect("a session cookie").to_string()
}
