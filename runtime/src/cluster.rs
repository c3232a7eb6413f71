//! This node's place in a cluster: its id, and the heartbeat that tells
//! the other nodes which of its processes still live.
//!
//! Several `airlock serve` nodes share one PostgreSQL store. Work one node
//! holds (an instance waiting on an approval, an invocation it runs) must
//! not be touched by another while that node lives, and must be finished
//! by another once it is gone. On one machine, pids and lease files tell;
//! across machines they cannot, so every process holding such work sends a
//! heartbeat through the store every [`HEARTBEAT_EVERY`], and a process
//! silent for [`PROCESS_STALE`] is taken for dead
//! ([`crate::store::process_alive`]).

use crate::store::{HEARTBEAT_EVERY, NodeRecord, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub use crate::store::PROCESS_STALE;

static NODE_ID: OnceLock<String> = OnceLock::new();
static ADDRESS: Mutex<Option<String>> = Mutex::new(None);
static STARTED: OnceLock<u64> = OnceLock::new();

/// Check a node id: 1-64 characters of letters, digits, `.`, `-`, `_`.
pub fn validate_node_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "node id {id:?}: use 1-64 characters of letters, digits, `.`, `-` and `_`"
        ))
    }
}

/// Set this process's node id (`--node-id`); only before anything used it.
pub fn set_node_id(id: &str) -> Result<(), String> {
    validate_node_id(id)?;
    NODE_ID
        .set(id.to_string())
        .map_err(|_| "the node id is already set".to_string())?;
    Ok(())
}

/// This process's node id: `--node-id`, else the host name.
pub fn node_id() -> &'static str {
    NODE_ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        if validate_node_id(&host).is_ok() {
            host
        } else {
            "localhost".to_string()
        }
    })
}

/// Where this node's service listens (shown by `GET /v1/cluster`).
pub fn set_address(address: &str) {
    *ADDRESS.lock().unwrap_or_else(|p| p.into_inner()) = Some(address.to_string());
}

/// This node's record as of now.
pub fn node_record() -> NodeRecord {
    let now = crate::time::now_micros();
    NodeRecord {
        id: node_id().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        address: ADDRESS.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        started_at: *STARTED.get_or_init(|| now),
        last_seen: now,
    }
}

/// Nodes whose last heartbeat is within [`PROCESS_STALE`].
pub fn live_nodes(store: &dyn Store) -> Result<Vec<NodeRecord>, crate::store::StoreError> {
    let now = crate::time::now_micros();
    let stale = u64::try_from(PROCESS_STALE.as_micros()).unwrap_or(u64::MAX);
    Ok(store
        .nodes()?
        .into_iter()
        .filter(|n| now.saturating_sub(n.last_seen) < stale)
        .collect())
}

/// A thread sending this node's heartbeat, for `processes`, while it
/// lives; dropping it stops the thread and removes the processes' rows
/// (what they held is then finished by others at once, without waiting
/// for them to go stale).
pub struct Heartbeat {
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    healthy: Arc<AtomicBool>,
}

impl Heartbeat {
    /// Send one heartbeat now (so the processes are known before they
    /// hold anything), then every [`HEARTBEAT_EVERY`].
    pub fn start(store: Arc<dyn Store>, processes: Vec<String>) -> Heartbeat {
        let beat = {
            let store = store.clone();
            let processes = processes.clone();
            move || {
                let ids: Vec<&str> = processes.iter().map(String::as_str).collect();
                store.heartbeat(&node_record(), &ids)
            }
        };
        let healthy = Arc::new(AtomicBool::new(true));
        if let Err(e) = beat() {
            healthy.store(false, Ordering::Release);
            tracing::warn!("cannot send this node's heartbeat: {e}");
        }
        let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let thread = {
            let stop = stop.clone();
            let healthy = healthy.clone();
            std::thread::Builder::new()
                .name("airlock-heartbeat".into())
                .spawn(move || {
                    let (lock, wake) = &*stop;
                    let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                    loop {
                        stopped = wake
                            .wait_timeout(stopped, HEARTBEAT_EVERY)
                            .map(|(g, _)| g)
                            .unwrap_or_else(|p| p.into_inner().0);
                        if *stopped {
                            break;
                        }
                        drop(stopped);
                        match beat() {
                            Ok(()) => {
                                if !healthy.swap(true, Ordering::AcqRel) {
                                    tracing::info!("this node's heartbeat reaches the store again");
                                }
                            }
                            Err(e) => {
                                if healthy.swap(false, Ordering::AcqRel) {
                                    tracing::warn!("cannot send this node's heartbeat: {e}");
                                }
                            }
                        }
                        stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                    }
                    let ids: Vec<&str> = processes.iter().map(String::as_str).collect();
                    if let Err(e) = store.leave(&ids) {
                        tracing::warn!("cannot remove this node's processes from the store: {e}");
                    }
                })
                .ok()
        };
        Heartbeat {
            stop,
            thread: Mutex::new(thread),
            healthy,
        }
    }

    /// Stop sending heartbeats and mark the processes ended (waits for the
    /// thread to do so). Idempotent.
    pub fn stop(&self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    /// Whether the last heartbeat reached the store.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_checked() {
        assert!(validate_node_id("node-a.eu_1").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(65), "né"] {
            assert!(validate_node_id(bad).is_err(), "{bad:?}");
        }
    }
}
