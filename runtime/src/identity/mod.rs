//! Who is asking: agents and human reviewers, their roles, and the tokens
//! that prove them.
//!
//! - An [`Identity`] is a name, a kind ([`IdentityKind::Agent`] or
//!   [`IdentityKind::Human`]) and roles. Identities live in the data
//!   directory's database and are created with their first token
//!   (`airlock token create`).
//! - A token is shown once; only its blake3 hash is stored, so the database
//!   cannot be used to act as anyone. Every request looks its token up
//!   again, so a revoked token stops working at once.
//! - The local operator (no token, the user who owns the data directory) is
//!   [`Caller::local`]: a person who can already read every key airlock
//!   has, attributed as `local:USER`.

mod access;
pub mod token;

pub use access::{AccessPolicy, RawAccess};

use crate::error::Error;
use std::fmt;

/// Whether an identity is a program or a person. Agents never approve
/// unless the config names them in `agent-approvers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityKind {
    Agent,
    Human,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Agent => "agent",
            IdentityKind::Human => "human",
        }
    }

    pub fn parse(s: &str) -> Result<IdentityKind, String> {
        match s {
            "agent" => Ok(IdentityKind::Agent),
            "human" => Ok(IdentityKind::Human),
            _ => Err(format!("identity kind must be `agent` or `human`, not {s:?}")),
        }
    }
}

impl fmt::Display for IdentityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated requester.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Caller {
    /// `deploy-bot`, `alice`, or `local:USER` for the local operator.
    pub name: String,
    pub kind: IdentityKind,
    pub roles: Vec<String>,
    /// The token that authenticated this request (its id, not its value);
    /// `None` for the local operator.
    pub token_id: Option<String>,
}

impl Caller {
    /// The local operator: a person at the machine, no token, no roles.
    pub fn local() -> Caller {
        Caller {
            name: local_caller(),
            kind: IdentityKind::Human,
            roles: Vec::new(),
            token_id: None,
        }
    }

    pub fn is_local(&self) -> bool {
        self.token_id.is_none()
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether `rule` (`NAME`, `role:ROLE`, or `local`) names this caller.
    pub fn matches(&self, rule: &AccessRule) -> bool {
        match rule {
            AccessRule::Identity(name) => !self.is_local() && self.name == *name,
            AccessRule::Role(role) => !self.is_local() && self.has_role(role),
            AccessRule::Local => self.is_local(),
        }
    }
}

/// One entry of an access list in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessRule {
    /// `deploy-bot`: one identity by name.
    Identity(String),
    /// `role:reviewer`: every identity holding the role.
    Role(String),
    /// `local`: the local operator (no token).
    Local,
}

impl AccessRule {
    pub fn parse(s: &str) -> Result<AccessRule, String> {
        if s == "local" {
            return Ok(AccessRule::Local);
        }
        match s.strip_prefix("role:") {
            Some(role) => validate_name(role, "role").map(|()| AccessRule::Role(role.to_string())),
            None => validate_name(s, "identity").map(|()| AccessRule::Identity(s.to_string())),
        }
    }
}

impl fmt::Display for AccessRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessRule::Identity(name) => f.write_str(name),
            AccessRule::Role(role) => write!(f, "role:{role}"),
            AccessRule::Local => f.write_str("local"),
        }
    }
}

/// The caller of a local (command-line) invocation: `local:USER`.
pub fn local_caller() -> String {
    // The operator does not change while the process runs; looked up once
    // (it is on every local invocation's path).
    static LOCAL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LOCAL.get_or_init(lookup_local_caller).clone()
}

fn lookup_local_caller() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty() && u.len() <= 64 && u.chars().all(|c| c.is_ascii_graphic()))
        .or_else(|| {
            use std::os::unix::fs::MetadataExt as _;
            std::fs::metadata("/proc/self").ok().map(|m| format!("uid-{}", m.uid()))
        })
        .unwrap_or_else(|| "unknown".into());
    format!("local:{user}")
}

/// Identity and role names: 1-64 of `a-z 0-9 - _ .`, starting with a letter
/// or digit (they appear in audit records, URLs and command lines).
pub fn validate_name(name: &str, what: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} names are 1-64 characters of a-z, 0-9, `-`, `_` and `.`, starting with a letter or digit"
        ))
    }
}

/// One bearer token (never its value).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TokenRecord {
    pub id: String,
    pub identity: String,
    pub kind: IdentityKind,
    pub roles: Vec<String>,
    pub created_at: u64,
    pub revoked_at: Option<u64>,
}

/// Where tokens are kept: the store, seen only as far as tokens go, so
/// identity sits below it. Every [`crate::store::Store`] is one.
pub trait TokenStore {
    /// Create `identity` if it is new (an existing one must have the same
    /// kind) and keep `token` under `hash`; the error says why not.
    fn add_token(&self, identity: &str, kind: IdentityKind, token: &TokenRecord, hash: &[u8; 32])
    -> Result<(), String>;
    /// The live or revoked token with this hash.
    fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, Error>;
    /// [`TokenStore::token_by_hash`] without blocking an async worker.
    fn token_by_hash_async(
        &self,
        hash: &[u8; 32],
    ) -> impl std::future::Future<Output = Result<Option<TokenRecord>, Error>> + Send;
}

/// Mint a token for `identity` (created on first use with `kind`) holding
/// `roles`. The returned value is the only copy of the token.
pub fn create_token<S: TokenStore + ?Sized>(
    store: &S,
    identity: &str,
    kind: IdentityKind,
    roles: &[String],
) -> Result<(token::NewToken, TokenRecord), Error> {
    validate_name(identity, "identity").map_err(Error::Usage)?;
    for role in roles {
        validate_name(role, "role").map_err(Error::Usage)?;
    }
    let minted = token::mint().map_err(Error::internal)?;
    let mut roles = roles.to_vec();
    roles.sort();
    roles.dedup();
    let record = TokenRecord {
        id: minted.id.clone(),
        identity: identity.to_string(),
        kind,
        roles,
        created_at: crate::time::now_micros(),
        revoked_at: None,
    };
    store
        .add_token(identity, kind, &record, &token::hash(&minted.value))
        .map_err(Error::Usage)?;
    Ok((minted, record))
}

/// The caller a bearer token proves. Looked up on every request, so a
/// revoked token stops working at once. Messages never repeat the token.
pub fn authenticate<S: TokenStore + ?Sized>(store: &S, bearer: &str) -> Result<Caller, Error> {
    let id = token::id_of(bearer).map_err(|e| Error::Unauthenticated(e.to_string()))?;
    caller_of(id, store.token_by_hash(&token::hash(bearer))?)
}

/// [`authenticate`] on an async worker: the token is looked up without
/// blocking it (see [`TokenStore::token_by_hash_async`]).
pub async fn authenticate_async<S: TokenStore + ?Sized>(store: &S, bearer: &str) -> Result<Caller, Error> {
    let id = token::id_of(bearer).map_err(|e| Error::Unauthenticated(e.to_string()))?;
    let hash = token::hash(bearer);
    caller_of(id, store.token_by_hash_async(&hash).await?)
}

/// The caller a looked-up token stands for, if it is live.
fn caller_of(id: impl std::fmt::Display, record: Option<TokenRecord>) -> Result<Caller, Error> {
    let Some(record) = record else {
        return Err(Error::Unauthenticated(format!("unknown token {id}")));
    };
    if record.revoked_at.is_some() {
        return Err(Error::Unauthenticated(format!("token {} was revoked", record.id)));
    }
    Ok(Caller {
        name: record.identity,
        kind: record.kind,
        roles: record.roles,
        token_id: Some(record.id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, roles: &[&str]) -> Caller {
        Caller {
            name: name.into(),
            kind: IdentityKind::Agent,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            token_id: Some("t".into()),
        }
    }

    #[test]
    fn rules_match_names_roles_and_local() {
        let bot = agent("bot", &["deployer"]);
        assert!(bot.matches(&AccessRule::parse("bot").unwrap()));
        assert!(bot.matches(&AccessRule::parse("role:deployer").unwrap()));
        assert!(!bot.matches(&AccessRule::parse("role:reviewer").unwrap()));
        assert!(!bot.matches(&AccessRule::Local));
        let local = Caller::local();
        assert!(local.matches(&AccessRule::Local));
        assert!(!local.matches(&AccessRule::Identity(local.name.clone())));
    }

    #[test]
    fn names_are_checked() {
        assert!(AccessRule::parse("role:").is_err());
        assert!(AccessRule::parse("Bot").is_err());
        assert!(AccessRule::parse("a b").is_err());
        assert!(AccessRule::parse("local:root").is_err());
    }
}
