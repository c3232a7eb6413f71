//! The HTTP/1.1 accept loop under `airlock serve`, with the limits a
//! service facing hostile clients needs and `axum::serve` does not set:
//!
//! - **Header timeout**: a connection must deliver a complete request head
//!   within `header-timeout-ms` of opening, or of finishing its previous
//!   response (keep-alive idle time counts), or it is closed. Slow-loris
//!   clients cannot hold sockets open.
//! - **Authentication before bodies**: every request is authenticated on
//!   its head, before its body is read (see [`super::gate`]); a body then
//!   must arrive within `body-timeout-ms` (408 otherwise).
//! - **Unauthenticated connections**: until one of its requests
//!   authenticates, a connection is in the [`unauthenticated`] pool, capped
//!   per source address and in all; over a cap, the oldest unauthenticated
//!   connection the server is waiting for is closed to make room (see that
//!   module for why this keeps authenticated clients served under a
//!   flood).
//! - **Connection cap**: at most `max-connections` are served at once.
//!   When every slot is taken, the oldest unauthenticated connection the
//!   server waits for is closed for the next one; when all are
//!   authenticated, further connections wait in the kernel's backlog until
//!   a slot frees, so a flood costs queueing, never file descriptors or
//!   memory without bound.
//! - **Lingering close**: after its last response a connection sends FIN
//!   and discards what the client still sends (a body refused unread) for
//!   up to [`LINGER`], so the close does not reset the connection and
//!   destroy the response on its way.
//! - **Graceful stop**: on shutdown no new connection is accepted, open ones
//!   finish their current request, and whatever is still open after
//!   [`DRAIN_DEADLINE`] is dropped.
//!
//! [`unauthenticated`]: super::unauthenticated

use super::unauthenticated::{Caps, FIRST_BYTES_GRACE, Pool, Ticket};
use crate::error::Error;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// How long a stopping service waits for open connections to finish.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How long a closing connection reads and discards unread input.
pub const LINGER: Duration = Duration::from_secs(1);
/// How much unread input a closing connection discards at most.
const LINGER_BYTES: usize = 1 << 20;
/// How often a full server looks again for an unauthenticated connection
/// to close for a new one.
const RETRY_EVICTION: Duration = Duration::from_millis(5);

/// Connection-level limits (`[service]` settings).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub max_unauthenticated: usize,
    pub max_unauthenticated_per_source: usize,
}

/// Who is at the other end of a request's connection: in every request's
/// extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    ticket: Arc<Ticket>,
}

impl Peer {
    /// A request on this connection authenticated: the connection leaves
    /// the unauthenticated pool.
    pub fn authenticated(&self) {
        self.ticket.authenticated();
    }

    /// While the returned guard lives, the request being handled does not
    /// shield its connection from being closed for room: for reading a
    /// body before any credential is known (the console sign-in form).
    pub fn unshielded(&self) -> Unshielded {
        self.ticket.in_request(false);
        Unshielded(self.ticket.clone())
    }
}

/// See [`Peer::unshielded`].
pub struct Unshielded(Arc<Ticket>);

impl Drop for Unshielded {
    fn drop(&mut self) {
        self.0.in_request(true);
    }
}

/// Marks its connection as handling a request until dropped (when the
/// response is ready, or the request is abandoned).
struct InRequest(Arc<Ticket>);

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.in_request(false);
    }
}

/// The connection's socket, telling its ticket whether the server is
/// waiting for the client (a read found nothing) or has input to handle.
struct Watched {
    io: TokioIo<TcpStream>,
    ticket: Arc<Ticket>,
}

impl hyper::rt::Read for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        match &polled {
            std::task::Poll::Pending => self.ticket.read(true),
            std::task::Poll::Ready(Ok(())) => self.ticket.read(false),
            std::task::Poll::Ready(Err(_)) => {}
        }
        polled
    }
}

impl hyper::rt::Write for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// Serve `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let pool = Pool::new(Caps {
        total: limits.max_unauthenticated,
        per_source: limits.max_unauthenticated_per_source,
        grace: FIRST_BYTES_GRACE,
    });
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    'accepting: loop {
        // Reap finished connections so the set stays the size of what is open.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off rather than spin; the
                    // listener itself stays usable.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            // Every slot is taken: the oldest unauthenticated connection the
            // server waits for makes room. If there is none yet (those there
            // are being read, or all are authenticated), wait for a slot to
            // free, looking again every few milliseconds.
            Err(_) => loop {
                let evicted = pool.evict_oldest();
                if evicted {
                    tracing::debug!(%peer, "closed the oldest unauthenticated connection: every slot was taken");
                }
                tokio::select! {
                    () = &mut shutdown => break 'accepting,
                    slot = slots.clone().acquire_owned() => break slot
                        .map_err(|_| Error::Internal("the connection limiter closed".into()))?,
                    () = tokio::time::sleep(RETRY_EVICTION), if !evicted => {}
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let ticket = Arc::new(pool.admit(peer.ip()));
        let app = app.clone();
        let mut stopping = stopping.clone();
        connections.spawn(async move {
            let _slot = slot;
            serve_one(stream, peer, ticket, app, limits, &mut stopping).await;
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            "dropping {} connection(s) still open after {} s",
            connections.len(),
            DRAIN_DEADLINE.as_secs()
        );
        connections.abort_all();
    }
    Ok(())
}

/// Serve one connection until it ends, it is evicted from the
/// unauthenticated pool, or the service stops.
async fn serve_one(
    stream: TcpStream,
    peer: SocketAddr,
    ticket: Arc<Ticket>,
    app: axum::Router,
    limits: ConnectionLimits,
    stopping: &mut watch::Receiver<bool>,
) {
    let info = Peer {
        addr: peer,
        ticket: ticket.clone(),
    };
    let inner = TowerToHyperService::new(app);
    let requests = ticket.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(info.clone());
        requests.in_request(true);
        let handling = InRequest(requests.clone());
        let response = hyper::service::Service::call(&inner, request);
        Box::pin(async move {
            let response = response.await;
            drop(handling);
            response
        })
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let io = Watched {
        io: TokioIo::new(stream),
        ticket: ticket.clone(),
    };
    let mut connection = http.serve_connection(io, service);
    let served = tokio::select! {
        served = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => Some(served),
        () = ticket.evicted() => None,
        () = ticket.enforce_caps() => None,
        // The guard `wait_for` returns is not Send: drop it at once.
        _ = async { stopping.wait_for(|stop| *stop).await.is_ok() } => {
            std::pin::Pin::new(&mut connection).graceful_shutdown();
            tokio::select! {
                served = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => Some(served),
                () = ticket.evicted() => None,
            }
        }
    };
    match served {
        Some(Ok(())) => {
            // Lingering, the server only waits for the client: an
            // unauthenticated connection may be closed for room meanwhile.
            ticket.read(true);
            let stream = connection.into_parts().io.io.into_inner();
            tokio::select! {
                () = linger(stream) => {}
                () = ticket.evicted() => {}
            }
        }
        Some(Err(e)) => tracing::debug!(%peer, "connection ended: {e}"),
        None => tracing::debug!(%peer, "unauthenticated connection closed to make room for another"),
    }
}

/// Send FIN, then read and discard what the client still sends, for at
/// most [`LINGER`] and [`LINGER_BYTES`]: a connection closed with unread
/// input is reset, and a reset can destroy the response before the client
/// reads it (a 401 to a request whose body was never read, say).
async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        let mut buf = [0u8; 8192];
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
}
