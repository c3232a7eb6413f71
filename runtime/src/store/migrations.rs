//! The PostgreSQL schema, as an ordered list of migrations.
//!
//! - Each migration runs in its own transaction (PostgreSQL's DDL is
//!   transactional), together with its row in `airlock_migrations`, so a
//!   migration is applied whole or not at all.
//! - Migrations are serialized across nodes by a transaction-level
//!   advisory lock: nodes starting at once apply each migration once.
//! - A migration's text is fingerprinted (blake3); a database whose applied
//!   migration differs from this airlock's is refused, never "fixed".
//! - Migrations only add (tables, columns, indexes), so a node of the
//!   previous version keeps working on a migrated database while the
//!   nodes are upgraded one by one. A database that has migrations this
//!   airlock does not know (a newer airlock migrated it) is used as it is.

use std::fmt;

/// One schema change.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// `blake3:<hex>` of the migration's text.
    pub fn checksum(&self) -> String {
        format!("blake3:{}", blake3::hash(self.sql.as_bytes()).to_hex())
    }
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.version, self.name)
    }
}

/// The key of the advisory lock that serializes migrations ("airlock" in
/// ASCII, so it is recognizable in `pg_locks`).
pub const LOCK_KEY: i64 = 0x0061_6972_6c6f_636b;

/// The table that records applied migrations.
pub const TABLE: &str = "
CREATE TABLE IF NOT EXISTS airlock_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_by TEXT NOT NULL
)";

/// Every migration, oldest first. Never edit one that has shipped: add a
/// new one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "identities, tokens, approvals, invocations, audit outbox",
        sql: "
CREATE TABLE identities (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    identity TEXT NOT NULL REFERENCES identities(name),
    roles TEXT NOT NULL,
    hash BYTEA NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    action TEXT NOT NULL,
    caller TEXT NOT NULL,
    invocation TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX approvals_by_state ON approvals(state, created_at DESC, id);
CREATE INDEX approvals_by_invocation ON approvals(invocation);
CREATE INDEX approvals_by_time ON approvals(created_at DESC, id);
CREATE TABLE decisions (
    approval TEXT NOT NULL REFERENCES approvals(id),
    identity TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (approval, identity)
);
CREATE TABLE invocations (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    action TEXT NOT NULL,
    caller TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX invocations_by_state ON invocations(state, created_at DESC, id);
CREATE INDEX invocations_by_caller ON invocations(caller, created_at);
CREATE INDEX invocations_by_action ON invocations(action, created_at);
CREATE INDEX invocations_by_time ON invocations(created_at DESC, id);
CREATE TABLE audit_outbox (
    seq BIGSERIAL PRIMARY KEY,
    body TEXT NOT NULL
);
",
    },
    Migration {
        version: 2,
        name: "nodes and their processes, console sessions",
        sql: "
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    address TEXT,
    started_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);
CREATE TABLE processes (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    last_seen BIGINT NOT NULL
);
CREATE INDEX processes_by_node ON processes(node);
CREATE TABLE console_sessions (
    id_hash BYTEA PRIMARY KEY,
    token_hash BYTEA NOT NULL,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);
CREATE INDEX console_sessions_by_last_seen ON console_sessions(last_seen);
",
    },
    Migration {
        version: 3,
        name: "the shared vault document (ciphertext only)",
        sql: "
CREATE TABLE vault (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    document TEXT NOT NULL,
    version BIGINT NOT NULL
);
",
    },
    Migration {
        version: 4,
        name: "the audit trail: every node's chain and checkpoints",
        // Owned by `crate::audit::pg`: one row per record of each node's
        // chain, the line exactly as the node's log holds it (the other
        // columns are derived from it, for the indexes, and checked
        // against it by every reader); each node's head, the point its
        // writer compare-and-sets; each node's signed checkpoints.
        sql: "
CREATE TABLE audit_nodes (
    node TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    next_seq BIGINT NOT NULL,
    head BYTEA NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE audit_records (
    node TEXT NOT NULL,
    seq BIGINT NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash BYTEA NOT NULL,
    ts BIGINT NOT NULL,
    kind TEXT NOT NULL,
    invocation TEXT,
    action TEXT,
    caller TEXT,
    line TEXT NOT NULL,
    PRIMARY KEY (node, seq)
);
CREATE INDEX audit_records_by_invocation ON audit_records(invocation text_pattern_ops);
CREATE INDEX audit_records_by_action ON audit_records(action, ts) WHERE action IS NOT NULL;
CREATE INDEX audit_records_by_caller ON audit_records(caller, ts) WHERE caller IS NOT NULL;
CREATE INDEX audit_records_by_time ON audit_records(ts);
CREATE TABLE audit_checkpoints (
    node TEXT NOT NULL,
    seq BIGINT NOT NULL,
    head TEXT NOT NULL,
    ts TEXT NOT NULL,
    public_key TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (node, seq)
);
",
    },
    Migration {
        version: 5,
        name: "usage windows (rate and budget limits)",
        // One row per window and period: what it has used. Charged with
        // an upsert whose update is guarded by the limit, so concurrent
        // charges on any node never take it past its max.
        sql: "
CREATE TABLE usage_windows (
    key TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    window_end BIGINT NOT NULL,
    used BIGINT NOT NULL,
    PRIMARY KEY (key, window_start)
);
CREATE INDEX usage_windows_by_end ON usage_windows(window_end);
",
    },
];

/// The newest migration this airlock knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_one_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(usize::try_from(m.version).ok(), Some(i + 1), "{m:?}");
        }
    }
}
