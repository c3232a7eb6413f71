//! `airlock audit verify` with PostgreSQL: every node's chain and every
//! checkpoint, from the rows themselves.
//!
//! Per node, in one consistent snapshot (a repeatable-read transaction, so
//! writers appending meanwhile are no finding):
//!
//! - every row, in sequence order from 0: no sequence number missing
//!   (deleted rows), its `prev_hash` the previous row's hash (reordered or
//!   replaced rows), its line hashing to its hash after that (an edited
//!   line), and every indexed column equal to what the line says (an
//!   edited column, or seq columns swapped between rows);
//! - the chain's end against the node's head in `audit_nodes` (the newest
//!   rows deleted: truncation);
//! - every checkpoint: its signature, its key the node's registered key
//!   (and, for this data directory's own node, the key in the data
//!   directory), and the record it names present with the hash it names.
//!
//! The first problem is reported with the node and sequence number it
//! concerns; nothing is repaired.

use super::row::{COLUMNS, Row};
use super::{Conn, Db, pg_err};
use crate::audit::chain::{self, GENESIS};
use crate::audit::checkpoint::{self, Checkpoint};
use std::collections::BTreeMap;

/// Rows read per round trip.
const PAGE: i64 = 5000;

/// What is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgVerifyError {
    #[error("node {node:?}, record {seq}: {reason}")]
    Record { node: String, seq: u64, reason: String },
    #[error("node {node:?}: {reason}")]
    Node { node: String, reason: String },
    #[error("{0}")]
    Db(String),
}

/// One node's verified chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeVerified {
    pub node: String,
    pub records: u64,
    pub head: Option<(u64, [u8; 32])>,
    pub checkpoints: usize,
    /// The last record a verified checkpoint signs.
    pub signed_through: Option<u64>,
}

impl NodeVerified {
    /// Records after the last signed checkpoint (all without one).
    pub fn unsigned(&self) -> u64 {
        match (self.head, self.signed_through) {
            (Some((head, _)), Some(signed)) => head.saturating_sub(signed),
            (Some(_), None) => self.records,
            (None, _) => 0,
        }
    }
}

/// What the verifier knows of the node of this data directory.
#[derive(Debug, Clone, Default)]
pub struct LocalNode {
    pub node: String,
    /// This data directory's checkpoint key (public, hex), if readable.
    pub public_key: Option<String>,
    /// The head of this data directory's log, verified: PostgreSQL's row
    /// of that record must be the same record.
    pub head: Option<(u64, [u8; 32])>,
}

impl LocalNode {
    /// The node of the data directory whose audit directory is
    /// `audit_dir`: the node id it was registered under (else
    /// `configured`, else the host name), its checkpoint key if it has
    /// one, and `head`, its log's verified head.
    pub fn of_data_dir(
        audit_dir: &std::path::Path,
        configured: Option<&str>,
        head: Option<(u64, [u8; 32])>,
    ) -> Result<LocalNode, String> {
        let node = super::mirror::resolve_node(audit_dir, configured)?;
        let public_key = std::fs::read_to_string(audit_dir.join(crate::audit::log::KEY_FILE))
            .ok()
            .map(zeroize::Zeroizing::new)
            .and_then(|k| chain::parse_hex(k.trim().as_bytes()).map(zeroize::Zeroizing::new))
            .map(|seed| chain::hex(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().as_bytes()));
        Ok(LocalNode { node, public_key, head })
    }
}

/// Verify every node's chain and checkpoints; `external` (a checkpoint
/// exported earlier) is checked against `local`'s node.
pub fn verify(
    db: &Db,
    local: Option<&LocalNode>,
    external: Option<(&Checkpoint, String)>,
) -> Result<Vec<NodeVerified>, PgVerifyError> {
    let nodes = db.block(nodes(db)).map_err(PgVerifyError::Db)?;
    if let Some(local) = local
        && !nodes.contains(&local.node)
        && (local.head.is_some() || external.is_some())
    {
        return Err(PgVerifyError::Node {
            node: local.node.clone(),
            reason: "this data directory's node has no chain in PostgreSQL (its rows and registration were deleted)"
                .into(),
        });
    }
    let mut out = Vec::new();
    for node in nodes {
        let mine = local.filter(|l| l.node == node);
        let ext = if mine.is_some() { external.clone() } else { None };
        out.push(verify_node(db, &node, mine, ext)?);
    }
    Ok(out)
}

/// Every node with a registration, a row or a checkpoint.
async fn nodes(db: &Db) -> Result<Vec<String>, String> {
    let conn = db.conn().await?;
    // Distinct nodes of the records table by skipping along its primary
    // key (one index probe per node, not a scan).
    let rows = conn
        .c()
        .query(
            "WITH RECURSIVE r AS ( \
                 SELECT min(node) AS node FROM audit_records \
                 UNION ALL \
                 SELECT (SELECT min(node) FROM audit_records WHERE node > r.node) FROM r WHERE r.node IS NOT NULL) \
             SELECT node FROM r WHERE node IS NOT NULL \
             UNION SELECT node FROM audit_nodes \
             UNION SELECT DISTINCT node FROM audit_checkpoints \
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(pg_err)?;
    conn.done();
    rows.iter()
        .map(|r| r.try_get::<_, String>(0).map_err(|e| e.to_string()))
        .collect()
}

fn verify_node(
    db: &Db,
    node: &str,
    local: Option<&LocalNode>,
    external: Option<(&Checkpoint, String)>,
) -> Result<NodeVerified, PgVerifyError> {
    let bad_node = |reason: String| PgVerifyError::Node {
        node: node.to_string(),
        reason,
    };
    let bad = |seq: u64, reason: String| PgVerifyError::Record {
        node: node.to_string(),
        seq,
        reason,
    };
    let conn: Conn = db
        .block(async {
            let conn = db.conn().await?;
            conn.c()
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(pg_err)?;
            Ok(conn)
        })
        .map_err(PgVerifyError::Db)?;
    let registered = db
        .block(async {
            conn.c()
                .query_opt(
                    "SELECT public_key, next_seq, head FROM audit_nodes WHERE node = $1",
                    &[&node],
                )
                .await
                .map_err(pg_err)
        })
        .map_err(PgVerifyError::Db)?
        .ok_or_else(|| bad_node("it has records or checkpoints but no registration in audit_nodes (deleted)".into()))?;
    let key: String = registered.try_get(0).map_err(|e| bad_node(e.to_string()))?;
    let next: i64 = registered.try_get(1).map_err(|e| bad_node(e.to_string()))?;
    let next =
        u64::try_from(next).map_err(|_| bad_node(format!("its next_seq in audit_nodes is negative ({next})")))?;
    let head: Vec<u8> = registered.try_get(2).map_err(|e| bad_node(e.to_string()))?;
    let head = <[u8; 32]>::try_from(head.as_slice())
        .map_err(|_| bad_node("its head in audit_nodes is not 32 bytes".into()))?;
    if let Some(local_key) = local.and_then(|l| l.public_key.as_ref())
        && *local_key != key
    {
        return Err(bad_node(
            "it is registered with a checkpoint key that is not this data directory's (the registration was changed)"
                .into(),
        ));
    }

    // Checkpoints: signed by the node's key; the records they name are
    // checked during the scan.
    let cps = db
        .block(async {
            conn.c()
                .query(
                    "SELECT seq, head, ts, public_key, signature FROM audit_checkpoints WHERE node = $1 ORDER BY seq",
                    &[&node],
                )
                .await
                .map_err(pg_err)
        })
        .map_err(PgVerifyError::Db)?;
    let mut wanted: BTreeMap<u64, Vec<(String, String)>> = BTreeMap::new();
    let mut signed_through = None;
    let mut count = 0;
    let mut all: Vec<(Checkpoint, String)> = Vec::new();
    for r in &cps {
        let seq: i64 = r.try_get(0).map_err(|e| bad_node(e.to_string()))?;
        let seq = u64::try_from(seq).map_err(|_| bad_node(format!("a checkpoint's seq is negative ({seq})")))?;
        let cp = Checkpoint {
            format: checkpoint::FORMAT.into(),
            seq,
            head: r.try_get(1).map_err(|e| bad_node(e.to_string()))?,
            ts: r.try_get(2).map_err(|e| bad_node(e.to_string()))?,
            public_key: r.try_get(3).map_err(|e| bad_node(e.to_string()))?,
            signature: r.try_get(4).map_err(|e| bad_node(e.to_string()))?,
        };
        all.push((cp, format!("audit_checkpoints ({node:?}, {seq})")));
    }
    if let Some((cp, source)) = external {
        all.push((cp.clone(), source));
    }
    for (cp, source) in all {
        let seq = cp.seq;
        let signer = cp
            .verify_signature()
            .map_err(|reason| bad(seq, format!("checkpoint {source}: {reason}")))?;
        if chain::hex(signer.as_bytes()) != key {
            return Err(bad(
                seq,
                format!("checkpoint {source} is signed by a key that is not the node's"),
            ));
        }
        wanted.entry(seq).or_default().push((cp.head.clone(), source));
        signed_through = signed_through.max(Some(seq));
        count += 1;
    }

    // The chain, page by page, up to the registered head.
    let mut expected = 0u64;
    let mut prev = GENESIS;
    loop {
        let page = db
            .block(async {
                conn.c()
                    .query(
                        &format!(
                            "SELECT {COLUMNS} FROM audit_records WHERE node = $1 AND seq >= $2 ORDER BY seq LIMIT {PAGE}"
                        ),
                        &[&node, &i64::try_from(expected).unwrap_or(i64::MAX)],
                    )
                    .await
                    .map_err(pg_err)
            })
            .map_err(PgVerifyError::Db)?;
        let n = page.len();
        for r in &page {
            let row = Row::from_pg(r).map_err(|e| bad(expected, format!("its row cannot be read: {e}")))?;
            if row.seq != expected {
                return Err(bad(
                    expected,
                    format!("it is missing: the next row is record {} (rows were deleted)", row.seq),
                ));
            }
            if row.prev != prev {
                return Err(bad(
                    row.seq,
                    "its prev_hash is not the hash of the record before it (rows were reordered or replaced)".into(),
                ));
            }
            let record = row.check().map_err(|e| bad(row.seq, e))?;
            if let Some(heads) = wanted.remove(&row.seq) {
                for (h, source) in heads {
                    if h != chain::hex(&record.hash) {
                        return Err(bad(
                            row.seq,
                            format!("it does not match checkpoint {source}: history was rewritten"),
                        ));
                    }
                }
            }
            if let Some(l) = local
                && let Some((seq, hash)) = l.head
                && seq == row.seq
                && hash != record.hash
            {
                return Err(bad(
                    row.seq,
                    "it differs from the same record in this data directory's log".into(),
                ));
            }
            prev = record.hash;
            expected += 1;
        }
        if n < usize::try_from(PAGE).unwrap_or(usize::MAX) {
            break;
        }
    }
    drop(conn);
    if expected < next {
        return Err(bad(
            expected,
            format!(
                "it is missing: the node's head in audit_nodes is record {}, but its rows end at record {} (the newest rows were deleted: truncated)",
                next - 1,
                expected.checked_sub(1).map_or("(none)".to_string(), |s| s.to_string())
            ),
        ));
    }
    if expected > next || (next > 0 && prev != head) {
        return Err(bad_node(format!(
            "its head in audit_nodes (record {}) is not the end of its rows (record {}): the registration was changed",
            next as i128 - 1,
            expected as i128 - 1
        )));
    }
    if let Some((seq, heads)) = wanted.into_iter().next() {
        return Err(bad(
            seq,
            format!(
                "checkpoint {} vouches for it, but the chain ends at record {}: the log was truncated",
                heads.into_iter().next().map(|(_, s)| s).unwrap_or_default(),
                expected as i128 - 1
            ),
        ));
    }
    Ok(NodeVerified {
        node: node.to_string(),
        records: expected,
        head: expected.checked_sub(1).map(|s| (s, prev)),
        checkpoints: count,
        signed_through,
    })
}
