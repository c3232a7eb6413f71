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

/// Check a node id: 1-64 letters, digits, `.`, `_` or `-`, starting with
/// a letter or digit.
pub fn validate_node_id(id: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&id.len())
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a node id: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
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
        silent_for_micros: 0,
    }
}

/// Nodes whose last heartbeat is within [`PROCESS_STALE`].
pub fn live_nodes(store: &dyn Store) -> Result<Vec<NodeRecord>, crate::store::StoreError> {
    let stale = u64::try_from(PROCESS_STALE.as_micros()).unwrap_or(u64::MAX);
    Ok(store
        .nodes()?
        .into_iter()
        .filter(|n| n.silent_for_micros < stale)
        .collect())
}

/// A thread sending this node's heartbeat, for its processes, while it
/// lives; dropping it stops the thread and marks the processes ended
/// (what they held is then finished by others at once, without waiting
/// for them to go stale). One per store in a process: see
/// [`heartbeat_for`].
pub struct Heartbeat {
    store: Arc<dyn Store>,
    processes: Arc<Mutex<Vec<String>>>,
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    healthy: Arc<AtomicBool>,
    /// When a heartbeat last reached the store.
    last_ok: Arc<Mutex<std::time::Instant>>,
}

/// The heartbeat of each shared store this process uses, by the store's
/// address; held weakly, so it stops when its last holder lets go.
static HEARTBEATS: Mutex<Vec<(usize, std::sync::Weak<Heartbeat>)>> = Mutex::new(Vec::new());

/// This process's heartbeat through `store`, started on first use; `None`
/// on a store no other machine shares (pids and lease files tell there).
/// Hold it while the processes added to it hold work.
pub fn heartbeat_for(store: &Arc<dyn Store>) -> Option<Arc<Heartbeat>> {
    if !store.shared() {
        return None;
    }
    let key = Arc::as_ptr(store).cast::<()>() as usize;
    let mut all = HEARTBEATS.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|(_, w)| w.strong_count() > 0);
    if let Some(live) = all.iter().find(|(k, _)| *k == key).and_then(|(_, w)| w.upgrade()) {
        return Some(live);
    }
    let beat = Arc::new(Heartbeat::start(store.clone()));
    all.push((key, Arc::downgrade(&beat)));
    Some(beat)
}

impl Heartbeat {
    /// Send one heartbeat now (the node known before anything runs), then
    /// every [`HEARTBEAT_EVERY`] for every process added.
    fn start(store: Arc<dyn Store>) -> Heartbeat {
        let processes: Arc<Mutex<Vec<String>>> = Arc::default();
        let beat = {
            let store = store.clone();
            let processes = processes.clone();
            move || {
                let ids = processes.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                store.heartbeat(&node_record(), &ids)
            }
        };
        let healthy = Arc::new(AtomicBool::new(true));
        let last_ok = Arc::new(Mutex::new(std::time::Instant::now()));
        if let Err(e) = beat() {
            healthy.store(false, Ordering::Release);
            tracing::warn!("cannot send this node's heartbeat: {e}");
        }
        let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let thread = {
            let (stop, healthy, store, processes) = (stop.clone(), healthy.clone(), store.clone(), processes.clone());
            let last_ok = last_ok.clone();
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
                                *last_ok.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
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
                    let ids = processes.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                    if let Err(e) = store.leave(&ids) {
                        tracing::warn!("cannot mark this node's processes ended in the store: {e}");
                    }
                })
                .ok()
        };
        Heartbeat {
            store,
            processes,
            stop,
            thread: Mutex::new(thread),
            healthy,
            last_ok,
        }
    }

    /// Beat for process `id` too (at once, the first time: it is known
    /// alive before it holds anything).
    pub fn add(&self, id: &str) {
        {
            let mut processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
            if processes.iter().any(|p| p == id) {
                return;
            }
            processes.push(id.to_string());
        }
        if let Err(e) = self.store.heartbeat(&node_record(), &[id]) {
            self.healthy.store(false, Ordering::Release);
            tracing::warn!("cannot send this node's heartbeat: {e}");
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
    /// A node whose heartbeats have not reached the store for half of
    /// [`PROCESS_STALE`] may soon be taken for dead by the others: it
    /// reports not ready and claims no new work (a fence against running
    /// what another node is about to end).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
            && self.last_ok.lock().unwrap_or_else(|p| p.into_inner()).elapsed() < PROCESS_STALE / 2
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
        for bad in ["", "a b", "a/b", "-a", &"x".repeat(65), "né"] {
            assert!(validate_node_id(bad).is_err(), "{bad:?}");
        }
    }
}
