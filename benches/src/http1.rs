//! A small keep-alive HTTP/1.1 client for the load generator: one request
//! at a time per connection, responses framed by `Content-Length` or
//! chunked encoding (the MCP endpoint answers with a chunked event stream).
//! Kept minimal so the client, which shares the machine with the server it
//! measures, costs as little as possible.

use std::io;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Largest response head or body accepted (the load generator's own guard).
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// One response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet consumed.
    buf: Vec<u8>,
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// A request's bytes: `method path`, the given headers, and `body` with its
/// length.
pub fn request(method: &str, path: &str, host: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        out.push_str(k);
        out.push_str(": ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

impl Conn {
    pub async fn connect(addr: &str) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(8192),
        })
    }

    /// Send `request` (from [`request`]) and read its response.
    pub async fn send(&mut self, request: &[u8]) -> io::Result<Response> {
        self.stream.write_all(request).await?;
        self.read_response().await
    }

    /// Read more bytes into the buffer; an error at end of stream.
    async fn fill(&mut self) -> io::Result<()> {
        if self.buf.len() > MAX_RESPONSE_BYTES {
            return Err(bad("response too large"));
        }
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Wait until the buffer holds `\r\n` at or after `from`; returns its
    /// position.
    async fn line_end(&mut self, from: usize) -> io::Result<usize> {
        loop {
            if let Some(i) = self
                .buf
                .get(from..)
                .and_then(|b| b.windows(2).position(|w| w == b"\r\n"))
            {
                return Ok(from + i);
            }
            self.fill().await?;
        }
    }

    async fn read_response(&mut self) -> io::Result<Response> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| bad("response head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| bad("bad status line"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        self.buf.drain(..head_end + 4);
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let end = self.line_end(0).await?;
                let size = std::str::from_utf8(&self.buf[..end])
                    .ok()
                    .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
                    .ok_or_else(|| bad("bad chunk size"))?;
                if size > MAX_RESPONSE_BYTES {
                    return Err(bad("chunk too large"));
                }
                let start = end + 2;
                while self.buf.len() < start + size + 2 {
                    self.fill().await?;
                }
                response.body.extend_from_slice(&self.buf[start..start + size]);
                self.buf.drain(..start + size + 2);
                if size == 0 {
                    break;
                }
            }
        } else {
            let len = match response.header("content-length") {
                Some(v) => v.parse::<usize>().map_err(|_| bad("bad content-length"))?,
                None if status == 204 || status == 304 || (100..200).contains(&status) => 0,
                None => return Err(bad("response without a length (the load generator needs keep-alive)")),
            };
            if len > MAX_RESPONSE_BYTES {
                return Err(bad("response too large"));
            }
            while self.buf.len() < len {
                self.fill().await?;
            }
            response.body = self.buf.drain(..len).collect();
        }
        Ok(response)
    }
}
