//! `[store]`: which database holds the shared state.
//!
//! Without a `[store]` section (or without its `url`), the state lives in
//! SQLite in the data directory, as it always has. With
//! `url = "postgres://USER@HOST:PORT/DB"` it lives in PostgreSQL, where
//! several `airlock serve` nodes can share it.
//!
//! The password never sits in the config or on a command line: a URL with
//! one is refused. It comes from an environment variable
//! (`password-env`) or from a file only its owner can read
//! (`password-file`, mode 0600 or stricter), read when the store connects.

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Connections a node keeps to PostgreSQL at most, by default.
pub const DEFAULT_POOL_SIZE: usize = 16;
/// How long connecting to PostgreSQL may take, by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `[store]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawStoreSettings {
    url: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    tls: Option<String>,
    ca_file: Option<PathBuf>,
    pool_size: Option<usize>,
    connect_timeout_secs: Option<u64>,
}

/// Where the shared state lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreSettings {
    /// `None`: SQLite in the data directory.
    pub postgres: Option<PgSettings>,
}

/// How to reach PostgreSQL.
#[derive(Clone, PartialEq, Eq)]
pub struct PgSettings {
    /// `postgres://USER@HOST:PORT/DB`, never with a password.
    pub url: String,
    pub password: PasswordSource,
    pub tls: TlsMode,
    /// Roots to verify the server against (PEM); the system's web roots
    /// otherwise.
    pub ca_file: Option<PathBuf>,
    pub pool_size: usize,
    pub connect_timeout: Duration,
}

impl fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Holds no secret (only where the password is), but say so plainly.
        f.debug_struct("PgSettings")
            .field("url", &self.url)
            .field("password", &self.password)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

/// Where the database password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// None (peer, trust or certificate authentication).
    None,
    /// The named environment variable.
    Env(String),
    /// A file readable by its owner only.
    File(PathBuf),
}

/// Whether and how the connection is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP: only for a database on loopback or a private link.
    Disable,
    /// TLS, the server's certificate checked against the roots and its
    /// name (the default: a credential store's traffic is encrypted).
    VerifyFull,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

impl StoreSettings {
    /// Validate `[store]`; relative paths are resolved with `resolve`.
    pub fn resolve(raw: &RawStoreSettings, resolve: &dyn Fn(&Path) -> PathBuf) -> Result<StoreSettings, String> {
        let Some(url) = &raw.url else {
            if raw.password_env.is_some()
                || raw.password_file.is_some()
                || raw.tls.is_some()
                || raw.ca_file.is_some()
                || raw.pool_size.is_some()
                || raw.connect_timeout_secs.is_some()
            {
                return Err("[store] sets connection options but no url; add url = \"postgres://USER@HOST/DB\", or remove the section to use SQLite in the data directory".into());
            }
            return Ok(StoreSettings::default());
        };
        let parsed = url::Url::parse(url).map_err(|e| format!("store.url is not a URL ({e})"))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(format!(
                "store.url must start with postgres:// (got {}://); without a url the store is SQLite in the data directory",
                parsed.scheme()
            ));
        }
        if parsed.query().is_some() {
            // The driver reads `?password=`, `?host=`, `?sslmode=` and more
            // from here, around every check below, and the URL is shown in
            // messages: options belong in [store]'s own keys.
            return Err("store.url has a query string (`?…`); remove it: the password goes in password-env or password-file, TLS in tls and ca-file".into());
        }
        if parsed.password().is_some() {
            // Do not echo the URL: it holds the password.
            return Err("store.url holds a password; remove it from the URL and set password-env or password-file (a file only its owner can read)".into());
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err("store.url names no host; e.g. postgres://airlock@db.internal:5432/airlock".into());
        }
        if parsed.username().is_empty() {
            return Err("store.url names no user; e.g. postgres://airlock@db.internal:5432/airlock".into());
        }
        let password = match (&raw.password_env, &raw.password_file) {
            (Some(_), Some(_)) => return Err("set one of store.password-env and store.password-file, not both".into()),
            (Some(var), None) => {
                if var.is_empty() || var.contains('=') || var.contains('\0') {
                    return Err(format!(
                        "store.password-env {var:?} is not an environment variable name"
                    ));
                }
                PasswordSource::Env(var.clone())
            }
            (None, Some(file)) => PasswordSource::File(resolve(file)),
            (None, None) => PasswordSource::None,
        };
        let tls = match raw.tls.as_deref() {
            None | Some("verify-full") => TlsMode::VerifyFull,
            Some("disable") => TlsMode::Disable,
            Some(other) => {
                return Err(format!(
                    "store.tls {other:?} is not one of \"verify-full\" (the default) or \"disable\""
                ));
            }
        };
        if tls == TlsMode::Disable && raw.ca_file.is_some() {
            return Err("store.ca-file is set but store.tls is \"disable\"; remove one".into());
        }
        let pool_size = raw.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
        if !(1..=1024).contains(&pool_size) {
            return Err("store.pool-size must be between 1 and 1024".into());
        }
        let connect_timeout = match raw.connect_timeout_secs {
            None => DEFAULT_CONNECT_TIMEOUT,
            Some(s @ 1..=300) => Duration::from_secs(s),
            Some(_) => return Err("store.connect-timeout-secs must be between 1 and 300".into()),
        };
        Ok(StoreSettings {
            postgres: Some(PgSettings {
                url: url.clone(),
                password,
                tls,
                ca_file: raw.ca_file.as_deref().map(resolve),
                pool_size,
                connect_timeout,
            }),
        })
    }

    /// What the store is, for messages: `sqlite` or the URL (no secret).
    pub fn describe(&self) -> String {
        match &self.postgres {
            None => "sqlite (the data directory)".into(),
            Some(pg) => pg.url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StoreSettings, String> {
        let raw: RawStoreSettings = toml::from_str(text).map_err(|e| e.to_string())?;
        StoreSettings::resolve(&raw, &|p| Path::new("/etc/airlock").join(p))
    }

    #[test]
    fn no_url_is_sqlite_and_a_url_is_postgres() {
        assert_eq!(parse(""), Ok(StoreSettings::default()));
        let s = parse("url = \"postgres://airlock@db:5432/airlock\"\npassword-file = \"pw\"").unwrap();
        let pg = s.postgres.unwrap();
        assert_eq!(pg.password, PasswordSource::File("/etc/airlock/pw".into()));
        assert_eq!(pg.tls, TlsMode::VerifyFull);
        assert_eq!(pg.pool_size, DEFAULT_POOL_SIZE);
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_echoing_it() {
        let e = parse("url = \"postgres://airlock:hunter2@db/airlock\"").unwrap_err();
        assert!(e.contains("password-env"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn bad_settings_say_what_to_do() {
        for (text, says) in [
            ("url = \"mysql://a@db/x\"", "postgres://"),
            ("url = \"postgres:///x\"", "no host"),
            ("url = \"postgres://db/x\"", "no user"),
            ("url = \"postgres://a@db/x\"\ntls = \"maybe\"", "verify-full"),
            ("url = \"postgres://a@db/x\"\npool-size = 0", "pool-size"),
            (
                "url = \"postgres://a@db/x\"\npassword-env = \"A\"\npassword-file = \"f\"",
                "not both",
            ),
            ("password-env = \"A\"", "no url"),
            (
                "url = \"postgres://a@db/x\"\ntls = \"disable\"\nca-file = \"ca.pem\"",
                "remove one",
            ),
            ("url = \"postgres://a@db/x?password=hunter2\"", "query string"),
            ("url = \"postgres://a@db/x?host=/tmp\"", "query string"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
