//! A real HTTP/1.1 server on loopback for the outbound tests.
//!
//! Routes:
//! - `/echo...`: 200, echoing the request back every way an API might:
//!   the authorization header in the reason phrase and in a header, and the
//!   whole request (line, headers, body) in the body raw, base64-encoded,
//!   percent-encoded and hex-encoded.
//! - `/redirect?to=URL`: 302 to `URL` (percent-decoded).
//! - `/reflect-redirect?port=N`: a malicious redirect to `127.0.0.1:N`
//!   carrying the request's authorization header in its query.
//! - `/tickets`: `POST` with `Authorization: Bearer <token>` → 201 with
//!   `{"id":N,"url":...}`; anything else → 401.
//! - `/gzip`: a response claiming `content-encoding: gzip`; `/gzip2`: the
//!   same behind a first `content-encoding: identity`.
//! - `/loop`: redirects to itself forever.
//! - `/chunked`: a 200-byte body in chunked encoding, no content-length.
//! - `/reflect`: 200 with the body the test's [`EchoServer::reflect_with`]
//!   function makes of the request (how a hostile or careless API would
//!   hand back what it received).
//!
//! Every request is recorded so tests can check what actually went out.

use std::io::{BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// What `/reflect` answers, made from the request.
pub type Reflector = Box<dyn Fn(&Seen) -> Vec<u8> + Send + Sync>;

pub struct EchoServer {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// The bearer token `/tickets` accepts.
    pub token: String,
    reflect: Arc<Mutex<Option<Reflector>>>,
}

impl EchoServer {
    pub fn start(token: &str) -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("local addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let token = token.to_string();
        let reflect: Arc<Mutex<Option<Reflector>>> = Arc::new(Mutex::new(None));
        let (seen2, token2, reflect2) = (seen.clone(), token.clone(), reflect.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (seen, token, reflect) = (seen2.clone(), token2.clone(), reflect2.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &seen, &token, &reflect);
                });
            }
        });
        EchoServer {
            port,
            seen,
            token,
            reflect,
        }
    }

    /// Make `/reflect` answer with `f(request)`.
    pub fn reflect_with(&self, f: impl Fn(&Seen) -> Vec<u8> + Send + Sync + 'static) {
        *self.reflect.lock().expect("reflect lock") = Some(Box::new(f));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }
}

fn serve(
    stream: TcpStream,
    seen: &Mutex<Vec<Seen>>,
    token: &str,
    reflect: &Mutex<Option<Reflector>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let Some(super::http::Incoming {
        method,
        target,
        headers,
        head,
        body,
    }) = super::http::read_request(&mut reader)?
    else {
        return Ok(());
    };
    let req = Seen {
        method,
        target: target.clone(),
        headers,
        body,
    };
    seen.lock().expect("seen lock").push(req.clone());

    let auth = req.header("authorization").unwrap_or("none").to_string();
    let path = target.split('?').next().unwrap_or_default();
    let (status, extra, body): (String, Vec<(String, String)>, Vec<u8>) = if path.starts_with("/echo") {
        let mut whole = head.into_bytes();
        whole.extend_from_slice(&req.body);
        let mut text = String::from_utf8_lossy(&whole).into_owned();
        text.push_str("\nbase64: ");
        text.push_str(&base64(&whole));
        text.push_str("\npercent: ");
        text.push_str(&percent(&whole));
        text.push_str("\nhex: ");
        text.push_str(&whole.iter().map(|b| format!("{b:02x}")).collect::<String>());
        (
            format!("200 OK {auth}"),
            vec![
                ("x-echo-auth".into(), auth.clone()),
                ("x-echo-target".into(), target.clone()),
            ],
            text.into_bytes(),
        )
    } else if path == "/reflect" {
        let body = match reflect.lock().expect("reflect lock").as_ref() {
            Some(f) => f(&req),
            None => b"no reflector set".to_vec(),
        };
        (
            "200 OK".into(),
            vec![("content-type".into(), "application/json".into())],
            body,
        )
    } else if path == "/redirect" {
        let to = target.split_once("to=").map(|(_, t)| unpercent(t)).unwrap_or_default();
        ("302 Found".into(), vec![("location".into(), to)], Vec::new())
    } else if path == "/reflect-redirect" {
        let port = target
            .split_once("port=")
            .map(|(_, p)| p.to_string())
            .unwrap_or_default();
        let to = format!("http://127.0.0.1:{port}/echo?stolen={}", percent(auth.as_bytes()));
        ("302 Found".into(), vec![("location".into(), to)], Vec::new())
    } else if path == "/tickets" {
        if req.method == "POST" && auth == format!("Bearer {token}") {
            let n = seen.lock().expect("seen lock").len();
            (
                "201 Created".into(),
                vec![("content-type".into(), "application/json".into())],
                format!("{{\"id\":{n},\"url\":\"http://tickets.local/t/{n}\"}}").into_bytes(),
            )
        } else {
            ("401 Unauthorized".into(), Vec::new(), b"bad or missing token".to_vec())
        }
    } else if path == "/loop" {
        (
            "302 Found".into(),
            vec![("location".into(), "/loop".into())],
            Vec::new(),
        )
    } else if path == "/chunked" {
        let mut out = stream;
        out.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")?;
        for _ in 0..4 {
            out.write_all(b"32\r\n")?;
            out.write_all(&[b'x'; 50])?;
            out.write_all(b"\r\n")?;
        }
        out.write_all(b"0\r\n\r\n")?;
        return out.flush();
    } else if path == "/gzip2" {
        (
            "200 OK".into(),
            vec![
                ("content-encoding".into(), "identity".into()),
                ("content-encoding".into(), "gzip".into()),
            ],
            format!("pretend-compressed {auth}").into_bytes(),
        )
    } else if path == "/gzip" {
        (
            "200 OK".into(),
            vec![("content-encoding".into(), "gzip".into())],
            format!("pretend-compressed {auth}").into_bytes(),
        )
    } else {
        ("404 Not Found".into(), Vec::new(), b"no such route".to_vec())
    };
    let mut out = stream;
    let mut response = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        response.push_str(&format!("{k}: {v}\r\n"));
    }
    response.push_str("\r\n");
    out.write_all(response.as_bytes())?;
    out.write_all(&body)?;
    out.flush()
}

pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn percent(data: &[u8]) -> String {
    data.iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn unpercent(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        if bytes[i] == b'%'
            && let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
