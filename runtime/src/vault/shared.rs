//! Where the vault document lives when several nodes share it.
//!
//! On one machine the vault is a file in the data directory. Nodes that
//! share a PostgreSQL store share the vault through it: the same document
//! (names, timestamps, lengths, ciphertext and the key check; never a
//! value, never the master key), as one row with a version number. Each
//! node opens it with the master key it was given (`AIRLOCK_MASTER_KEY`
//! or `AIRLOCK_MASTER_KEY_FILE`); a node with another key fails with the
//! vault's key-check error, as with a file.
//!
//! Writers never lock: a change is made to the version read and stored
//! only if that version is still current (compare and swap), else read
//! again and redone, so two nodes rotating secrets at once both land.

/// The shared vault document, as the store keeps it.
pub trait SharedVault: Send + Sync {
    /// Where it is, for messages (no secret in it).
    fn describe(&self) -> String;
    /// The document and its version, if a vault was ever written.
    fn load(&self) -> Result<Option<(String, i64)>, String>;
    /// Just the version: whether the document changed since it was read.
    fn version(&self) -> Result<Option<i64>, String>;
    /// Store `document` if the current version is still `expected`
    /// (`None`: no document yet); `false` when another writer came first.
    fn replace(&self, expected: Option<i64>, document: &str) -> Result<bool, String>;
}
