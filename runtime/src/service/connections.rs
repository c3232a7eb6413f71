//! The HTTP/1.1 accept loop under `airlock serve`, with the limits a
//! service facing hostile clients needs and `axum::serve` does not set:
//!
//! - **Header timeout**: a connection must deliver a complete request head
//!   within `header-timeout-ms` of opening, or of finishing its previous
//!   response (keep-alive idle time counts), or it is closed. Slow-loris
//!   clients cannot hold sockets open.
//! - **Body timeout**: a request body must arrive within `body-timeout-ms`
//!   (answered with 408 otherwise; see `api::read_body`).
//! - **Connection cap**: at most `max-connections` are served at once;
//!   further ones wait in the kernel's backlog until a slot frees, so a
//!   flood costs queueing, never file descriptors or memory without bound.
//! - **Graceful stop**: on shutdown no new connection is accepted, open ones
//!   finish their current request, and whatever is still open after
//!   [`DRAIN_DEADLINE`] is dropped.

use crate::error::Error;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// How long a stopping service waits for open connections to finish.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Connection-level limits (`[service]` settings).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Serve `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Reap finished connections so the set stays the size of what is open.
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot
                .map_err(|_| Error::Internal("the connection limiter closed".into()))?,
        };
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
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut stopping = stopping.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(true);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let outcome = tokio::select! {
                outcome = connection.as_mut() => outcome,
                // The guard `wait_for` returns is not Send: drop it at once.
                _ = async { stopping.wait_for(|stop| *stop).await.is_ok() } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = outcome {
                tracing::debug!(%peer, "connection ended: {e}");
            }
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
