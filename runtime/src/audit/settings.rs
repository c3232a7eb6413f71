//! `[audit]`: where the audit trail is kept.
//!
//! ```toml
//! [audit]
//! backend = "postgres"   # or "file", the default
//! node-id = "node-a"     # default: the host name
//! ```
//!
//! With `backend = "file"` the trail is the log in the data directory and
//! nothing else. With `backend = "postgres"` that log stays the engine
//! (same chain, same group commit, same torn-tail repair), and every
//! committed group is also inserted into the PostgreSQL database of
//! `[store]` before any append in it is acknowledged (see
//! [`super::pg`]). Each node keeps its own chain there, under its node id.

use crate::store::settings::{PgSettings, StoreSettings};
use serde::Deserialize;

/// `[audit]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAuditSettings {
    backend: Option<String>,
    node_id: Option<String>,
}

/// Which backend keeps the trail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// The log in the data directory only.
    #[default]
    File,
    /// The log in the data directory, mirrored group by group into
    /// PostgreSQL before acknowledgement.
    Postgres,
}

/// `[audit]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditSettings {
    pub backend: BackendKind,
    /// The node id this data directory's chain is kept under in
    /// PostgreSQL; `None`: the one the data directory already has, else
    /// the host name.
    pub node_id: Option<String>,
}

impl AuditSettings {
    /// Validate `[audit]` against `[store]` (the PostgreSQL backend uses
    /// the store's database).
    pub fn resolve(raw: &RawAuditSettings, store: &StoreSettings) -> Result<AuditSettings, String> {
        let backend = match raw.backend.as_deref() {
            None | Some("file") => BackendKind::File,
            Some("postgres") => BackendKind::Postgres,
            Some(other) => {
                return Err(format!(
                    "audit.backend {other:?} is not one of \"file\" (the default) or \"postgres\""
                ));
            }
        };
        if backend == BackendKind::Postgres && store.postgres.is_none() {
            return Err(
                "audit.backend = \"postgres\" keeps the trail in the [store] database, but [store] has no url; set [store] url = \"postgres://USER@HOST/DB\""
                    .into(),
            );
        }
        if let Some(id) = &raw.node_id {
            validate_node_id(id).map_err(|e| format!("audit.node-id: {e}"))?;
            if backend == BackendKind::File {
                return Err(
                    "audit.node-id only applies with audit.backend = \"postgres\"; remove it or set the backend".into(),
                );
            }
        }
        Ok(AuditSettings {
            backend,
            node_id: raw.node_id.clone(),
        })
    }
}

pub use crate::cluster::validate_node_id;

/// The host name, as a node id when none is configured.
pub fn host_node_id() -> Result<String, String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    validate_node_id(&name)
        .map_err(|_| format!("the host name {name:?} cannot serve as the audit node id; set [audit] node-id"))?;
    Ok(name)
}

/// serve's `--node-id`, which names this process's node everywhere.
static NODE_OVERRIDE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Make `id` this process's audit node id, over `[audit] node-id` (for
/// serve's `--node-id`; before any audit log is opened).
pub fn set_node_override(id: &str) -> Result<(), String> {
    validate_node_id(id)?;
    if NODE_OVERRIDE.get_or_init(|| id.to_string()) != id {
        return Err("the node id is already set".into());
    }
    Ok(())
}

/// Where an opened audit log keeps its records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Backend {
    /// The data directory's log only.
    #[default]
    File,
    /// Also PostgreSQL, under `node` (`None`: as [`AuditSettings::node_id`]
    /// says).
    Postgres { pg: PgSettings, node: Option<String> },
}

impl Backend {
    /// The backend `[audit]` and `[store]` name; `node_override` (or the
    /// process's, see [`set_node_override`]) takes precedence over
    /// `[audit] node-id`.
    pub fn from_settings(
        audit: &AuditSettings,
        store: &StoreSettings,
        node_override: Option<&str>,
    ) -> Result<Backend, String> {
        match (audit.backend, &store.postgres) {
            (BackendKind::File, _) => Ok(Backend::File),
            (BackendKind::Postgres, None) => Err("audit.backend = \"postgres\" needs [store] url".into()),
            (BackendKind::Postgres, Some(pg)) => {
                let node = node_override
                    .or(NODE_OVERRIDE.get().map(String::as_str))
                    .map(str::to_string)
                    .or_else(|| audit.node_id.clone());
                if let Some(n) = &node {
                    validate_node_id(n)?;
                }
                Ok(Backend::Postgres { pg: pg.clone(), node })
            }
        }
    }

    pub fn postgres(&self) -> Option<&PgSettings> {
        match self {
            Backend::File => None,
            Backend::Postgres { pg, .. } => Some(pg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(audit: &str, store: &str) -> Result<AuditSettings, String> {
        let raw: RawAuditSettings = toml::from_str(audit).map_err(|e| e.to_string())?;
        let raw_store: crate::store::settings::RawStoreSettings = toml::from_str(store).map_err(|e| e.to_string())?;
        let store = StoreSettings::resolve(&raw_store, &|p| p.to_path_buf())?;
        AuditSettings::resolve(&raw, &store)
    }

    #[test]
    fn the_file_is_the_default_and_postgres_needs_the_store() {
        assert_eq!(parse("", ""), Ok(AuditSettings::default()));
        let pg = "url = \"postgres://a@db/x\"";
        let s = parse("backend = \"postgres\"\nnode-id = \"n-1\"", pg).unwrap();
        assert_eq!((s.backend, s.node_id.as_deref()), (BackendKind::Postgres, Some("n-1")));
        for (audit, store, says) in [
            ("backend = \"postgres\"", "", "[store] has no url"),
            ("backend = \"sqlite\"", pg, "not one of"),
            ("backend = \"postgres\"\nnode-id = \"a b\"", pg, "not a node id"),
            ("backend = \"postgres\"\nnode-id = \"\"", pg, "not a node id"),
            ("backend = \"postgres\"\nnode-id = \"-x\"", pg, "not a node id"),
            ("node-id = \"n1\"", pg, "only applies"),
        ] {
            let e = parse(audit, store).unwrap_err();
            assert!(e.contains(says), "{audit}: {e}");
        }
        assert!(validate_node_id(&"a".repeat(64)).is_ok());
        assert!(validate_node_id(&"a".repeat(65)).is_err());
        assert!(validate_node_id("n'1").is_err());
    }
}
