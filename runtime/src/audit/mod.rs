//! The audit trail: every invocation and every host call, hash-chained,
//! durable before acknowledged, fail-closed.
//!
//! - [`event`]: what is recorded (names, digests and sizes; never secrets).
//! - [`chain`]: the line format and the blake3 hash chain.
//! - [`encode`]: the writer's encoder (the same bytes, fast for host calls).
//! - [`log`]: the writer thread with group commit, torn-tail recovery at
//!   open, and fail-closed health.
//! - [`checkpoint`]: ed25519-signed (sequence, head hash) statements.
//! - [`lease`]: which process runs which invocation, and whether it lives.
//! - [`recovery`]: what a process that ended mid-invocation left open is
//!   closed, in the log and in the status rows.
//! - [`read`]: full verification and the record stream for the CLI.
//! - [`query`]: filters by invocation, action, caller and time.
//! - [`index`]: the index that answers those filters without reading the
//!   whole log (derived, caught up by readers).
//! - [`trust`]: every answer of the index checked against the log before
//!   it is used (the index is never trusted for which records match).
//! - [`settings`]: `[audit]`: the file backend, or PostgreSQL too.
//! - [`pg`]: the trail in PostgreSQL: every node's chain and checkpoints,
//!   group-committed before acknowledgement, verified and queried across
//!   nodes.

pub mod chain;
pub mod checkpoint;
pub mod encode;
pub mod event;
pub mod index;
pub mod lease;
pub mod log;
pub mod pg;
pub mod query;
pub mod read;
pub mod recovery;
pub mod settings;
pub mod trust;

pub use checkpoint::Checkpoint;
pub use event::Event;
pub use log::{AuditError, AuditLog};

/// The audit directory inside a data directory.
pub fn dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("audit")
}
