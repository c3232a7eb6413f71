//! A loopback HTTP/1.1 proxy that sends every request on to `upstream`
//! with `Authorization: Bearer TOKEN`: for clients (the MCP conformance
//! suite) that cannot be told to send a token themselves. Responses,
//! event streams included, pass through byte for byte.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};

pub struct BearerProxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl BearerProxy {
    pub fn start(upstream: &str, token: &str) -> BearerProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (upstream, token) = (upstream.to_string(), token.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let (upstream, token) = (upstream.clone(), token.clone());
                std::thread::spawn(move || relay(client, &upstream, &token));
            }
        });
        BearerProxy { addr }
    }
}

/// Forward the requests of one client connection, each with the token.
fn relay(client: TcpStream, upstream: &str, token: &str) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(mut back), Ok(mut to_client)) = (server.try_clone(), client.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut back, &mut to_client);
        let _ = to_client.shutdown(std::net::Shutdown::Both);
    });
    let mut from_client = BufReader::new(client);
    let mut to_server = server;
    loop {
        // One request head, its Authorization replaced by ours.
        let mut head = String::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            match from_client.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = to_server.shutdown(std::net::Shutdown::Write);
                    return;
                }
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            let name = line.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
            assert_ne!(
                name, "transfer-encoding",
                "the bearer proxy forwards only Content-Length bodies"
            );
            if name == "content-length" {
                length = line.split(':').nth(1).unwrap().trim().parse().unwrap();
            }
            if name != "authorization" {
                head.push_str(&line);
            }
        }
        head.push_str(&format!("Authorization: Bearer {token}\r\n\r\n"));
        let mut body = vec![0u8; length];
        if from_client.read_exact(&mut body).is_err()
            || to_server.write_all(head.as_bytes()).is_err()
            || to_server.write_all(&body).is_err()
        {
            return;
        }
    }
}
