//! Durable state: identities, tokens, approvals and invocations.
//!
//! [`Store`] is the whole contract between the logic (who may do what,
//! quorum, expiry: [`crate::approval`], [`crate::identity`]) and the
//! database. It is a handful of plain reads and writes plus one atomic
//! read-modify-write ([`Store::update_approval`]) and one compare-and-set
//! ([`Store::transition_invocation`]), so a PostgreSQL backend is a second
//! implementation of this trait, not a rewrite of the rules. The embedded
//! default is SQLite in the data directory ([`sqlite::SqliteStore`]).

pub mod records;
pub mod sqlite;

pub use records::*;

/// A database failure (not a policy refusal).
#[derive(Debug, thiserror::Error)]
#[error("database error: {0}")]
pub struct StoreError(pub String);

impl From<StoreError> for crate::error::Error {
    fn from(e: StoreError) -> Self {
        crate::error::Error::Internal(e.to_string())
    }
}

/// Why an atomic approval update did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("no approval request {0}")]
    NotFound(String),
    /// The update function refused: a policy reason, for the user.
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The storage backend.
pub trait Store: Send + Sync {
    /// Create `identity` if it is new (an existing one must have the same
    /// kind) and store a token for it: its id, roles and hash.
    fn add_token(
        &self,
        identity: &str,
        kind: IdentityKind,
        token: &TokenRecord,
        hash: &[u8; 32],
    ) -> Result<(), StoreError>;
    /// The live or revoked token with this hash.
    fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError>;
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Mark a token revoked; `false` when there is no such token.
    fn revoke_token(&self, id: &str, at_micros: u64) -> Result<bool, StoreError>;

    fn insert_approval(&self, approval: &ApprovalRecord) -> Result<(), StoreError>;
    fn approval(&self, id: &str) -> Result<Option<ApprovalRecord>, StoreError>;
    /// Approval requests, newest first, optionally only those in `state`.
    fn approvals(&self, state: Option<ApprovalState>, limit: usize) -> Result<Vec<ApprovalRecord>, StoreError>;
    /// Atomically load approval `id`, let `update` change it (add a
    /// decision, move its state), and write the change back. Concurrent
    /// updates of one request are serialized, so each decision is counted
    /// exactly once.
    fn update_approval(
        &self,
        id: &str,
        update: &mut dyn FnMut(&mut ApprovalRecord) -> Result<(), Refusal>,
    ) -> Result<ApprovalRecord, UpdateError>;

    fn insert_invocation(&self, invocation: &InvocationRecord) -> Result<(), StoreError>;
    fn invocation(&self, id: &str) -> Result<Option<InvocationRecord>, StoreError>;
    /// Invocations, newest first, optionally only those in `state`.
    fn invocations(&self, state: Option<InvocationStatus>, limit: usize) -> Result<Vec<InvocationRecord>, StoreError>;
    /// Move invocation `id` to `to` if it is in one of `from`, recording
    /// `outcome` when given; `false` when it was not in `from` (someone
    /// else claimed it first).
    fn transition_invocation(
        &self,
        id: &str,
        from: &[InvocationStatus],
        to: InvocationStatus,
        outcome: Option<&InvocationOutcome>,
    ) -> Result<bool, StoreError>;
}

use crate::identity::IdentityKind;
