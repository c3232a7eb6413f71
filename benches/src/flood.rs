//! Slow-client floods for `loadgen flood`: attacker connections from
//! loopback that try to hold the server's connections as cheaply as they
//! can, one byte a second.
//!
//! - [`Mode::Body`]: a complete `POST /v1/invocations` head without
//!   credentials, declaring a 64 KiB body, then the body one byte a second.
//! - [`Mode::Head`]: a request head that never ends, one header byte a
//!   second (slowloris).
//!
//! Each attacker holds one connection at a time. When the server answers
//! or closes it, the attacker waits one interval and opens the next, so
//! the flood offers at most `attackers` connections a second: pressure on
//! connection slots, not a connection-rate flood (that is a volumetric
//! attack no per-connection limit can absorb, and is not measured here).
//! Every attacker runs on a thread of its own runtime, so its wake-ups do
//! not delay the clients that measure latency.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What the attackers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Body,
    Head,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Body => "slow-body",
            Mode::Head => "slow-head",
        }
    }
}

/// Counters of a running flood.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections opened.
    pub connects: AtomicU64,
    /// Connections that could not be opened (refused, timed out).
    pub connect_failures: AtomicU64,
    /// Attacker connections open right now.
    pub open: AtomicI64,
    /// The most open at once.
    pub peak_open: AtomicI64,
    /// Answers by status class: 401, 408, other.
    pub answered_401: AtomicU64,
    pub answered_408: AtomicU64,
    pub answered_other: AtomicU64,
    /// Closed by the server without an answer.
    pub closed_silently: AtomicU64,
    /// Total milliseconds attacker connections were held open.
    pub held_ms: AtomicU64,
}

/// A running flood; stopped (and its thread joined) by [`Flood::stop`] or
/// when dropped.
pub struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub counters: Arc<Counters>,
}

/// The interval between an attacker's bytes, and between its connections.
pub const INTERVAL: Duration = Duration::from_secs(1);

impl Flood {
    /// Start `attackers` connections to `addr` (a loopback address), from
    /// `sources` loopback source addresses (127.0.0.1, .2, ...; 1 means
    /// every attacker shares the clients' own address).
    pub fn start(addr: SocketAddr, mode: Mode, attackers: usize, sources: u8) -> std::io::Result<Flood> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = {
            let (stop, counters) = (stop.clone(), counters.clone());
            std::thread::spawn(move || {
                runtime.block_on(async move {
                    for i in 0..attackers {
                        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(sources.max(1))) as u8);
                        tokio::spawn(attacker(addr, source, mode, stop.clone(), counters.clone()));
                    }
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                });
                // Dropping the runtime cancels every attacker, wherever it
                // waits (a connect stuck in a full backlog included), and
                // closes its socket.
                drop(runtime);
            })
        };
        Ok(Flood {
            stop,
            thread: Some(thread),
            counters,
        })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One attacker: a connection at a time, until stopped.
async fn attacker(addr: SocketAddr, source: Ipv4Addr, mode: Mode, stop: Arc<AtomicBool>, counters: Arc<Counters>) {
    let head: &[u8] = match mode {
        Mode::Body => b"POST /v1/invocations HTTP/1.1\r\nHost: attacker\r\nContent-Type: application/json\r\nContent-Length: 65536\r\n\r\n{",
        Mode::Head => b"POST /v1/invocations HTTP/1.1\r\nHost: attacker\r\nX-Slow: ",
    };
    while !stop.load(Ordering::Relaxed) {
        let socket = match tokio::net::TcpSocket::new_v4() {
            Ok(s) => s,
            Err(_) => {
                counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(INTERVAL).await;
                continue;
            }
        };
        let connected = async {
            socket.bind(SocketAddr::from((source, 0)))?;
            socket.connect(addr).await
        };
        let mut stream = match tokio::time::timeout(Duration::from_secs(30), connected).await {
            Ok(Ok(s)) => s,
            _ => {
                counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(INTERVAL).await;
                continue;
            }
        };
        counters.connects.fetch_add(1, Ordering::Relaxed);
        let open = counters.open.fetch_add(1, Ordering::Relaxed) + 1;
        counters.peak_open.fetch_max(open, Ordering::Relaxed);
        let opened = std::time::Instant::now();
        let mut answer = [0u8; 16];
        let mut ended = stream.write_all(head).await.is_err();
        while !ended && !stop.load(Ordering::Relaxed) {
            tokio::select! {
                read = stream.read(&mut answer) => {
                    match read {
                        Ok(n) if n >= 12 && answer.starts_with(b"HTTP/1.1 ") => {
                            let counter = match &answer[9..12] {
                                b"401" => &counters.answered_401,
                                b"408" => &counters.answered_408,
                                _ => &counters.answered_other,
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            counters.closed_silently.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    ended = true;
                }
                () = tokio::time::sleep(INTERVAL) => {
                    ended = stream.write_all(b"x").await.is_err();
                    if ended {
                        counters.closed_silently.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        counters
            .held_ms
            .fetch_add(opened.elapsed().as_millis() as u64, Ordering::Relaxed);
        counters.open.fetch_sub(1, Ordering::Relaxed);
        drop(stream);
        if !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(INTERVAL).await;
        }
    }
}
