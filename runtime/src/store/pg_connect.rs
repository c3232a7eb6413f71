//! Connecting to PostgreSQL, one way for every pool airlock keeps (the
//! store's and the audit trail's): the URL, the password from where
//! `[store]` says, TLS with `verify-full`, and errors as messages with
//! their causes and never a secret.

use super::settings::{PasswordSource, PgSettings, TlsMode};
use std::sync::Arc;
use std::time::Duration;

/// The database password, read now from where the settings say.
pub(crate) fn password(source: &PasswordSource) -> Result<Option<String>, String> {
    match source {
        PasswordSource::None => Ok(None),
        PasswordSource::Env(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Some(v)),
            _ => Err(format!(
                "store.password-env names ${var}, which is not set (or empty); export it before starting airlock"
            )),
        },
        PasswordSource::File(path) => {
            use std::os::unix::fs::MetadataExt as _;
            let meta = std::fs::metadata(path)
                .map_err(|e| format!("cannot read store.password-file {}: {e}", path.display()))?;
            if meta.mode() & 0o077 != 0 {
                return Err(format!(
                    "store.password-file {} is readable by others (mode {:o}); `chmod 600` it",
                    path.display(),
                    meta.mode() & 0o777
                ));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read store.password-file {}: {e}", path.display()))?;
            let pw = text.trim_end_matches(['\r', '\n']).to_string();
            if pw.is_empty() {
                return Err(format!("store.password-file {} is empty", path.display()));
            }
            Ok(Some(pw))
        }
    }
}

/// The TLS connector for `verify-full`: the server's certificate must
/// chain to `ca_file`'s roots (or the web roots) and name the host.
pub(crate) fn tls_connector(settings: &PgSettings) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let roots = crate::tls::roots(settings.ca_file.as_deref(), "store.ca-file")?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The driver's settings for `settings` (password read now), and the TLS
/// connector when `verify-full`. `application_name` shows in
/// `pg_stat_activity`.
pub(crate) fn config(
    settings: &PgSettings,
    application_name: &str,
) -> Result<(tokio_postgres::Config, Option<tokio_postgres_rustls::MakeRustlsConnect>), String> {
    let mut config: tokio_postgres::Config = settings
        .url
        .parse()
        .map_err(|e| format!("store.url is not a PostgreSQL URL: {e}"))?;
    if let Some(pw) = password(&settings.password)? {
        config.password(pw);
    }
    config.connect_timeout(settings.connect_timeout);
    config.application_name(application_name);
    // A peer gone without a word (a paused node, a cut network, a NAT that
    // forgot the connection) is noticed in seconds, not the hours of TCP's
    // defaults: by us, with keepalives and a limit on unacknowledged data,
    // and by the server, which ends a session idle inside a transaction
    // and gives up on a lock or statement that waits too long, so a frozen
    // node cannot hold rows other nodes need.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(10));
    config.keepalives_interval(Duration::from_secs(5));
    config.keepalives_retries(3);
    config.tcp_user_timeout(Duration::from_secs(30));
    config.options(SERVER_LIMITS);
    let tls = match settings.tls {
        TlsMode::Disable => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            None
        }
        TlsMode::VerifyFull => {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            Some(tls_connector(settings)?)
        }
    };
    Ok((config, tls))
}

/// Per-session limits airlock asks of the server (see [`config`]).
const SERVER_LIMITS: &str =
    "-c idle_in_transaction_session_timeout=60000 -c lock_timeout=15000 -c statement_timeout=120000";

/// A connection pool to the database `settings` name, with the runtime
/// that opens and drives its connections (`threads` threads named
/// `name`); `what` names the pool in errors. Connects lazily: an
/// unreachable database fails the first use, not this.
pub(crate) fn pool(
    settings: &PgSettings,
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    (what, name, threads): (&str, &str, usize),
    (size, wait): (usize, Duration),
) -> Result<(tokio::runtime::Runtime, deadpool_postgres::Pool), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the {what} I/O threads: {e}"))?;
    let built = deadpool_postgres::Pool::builder(manager(config, tls, rt.handle().clone()))
        .max_size(size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.connect_timeout))
        .build();
    match built {
        Ok(pool) => Ok((rt, pool)),
        Err(e) => {
            // Dropped as is inside the caller's runtime, it would panic.
            rt.shutdown_background();
            Err(format!("cannot make the {what} connection pool: {e}"))
        }
    }
}

/// What a pool's `get` that ran out of time means, in words that say what
/// to change: no connection came free in time (all in use, or still being
/// opened), or one took too long to open (`store.connect-timeout-secs`;
/// the database unreachable or overloaded). `size_setting` names the
/// setting that sizes this pool, if one does. (deadpool opens a new
/// connection when checking an idle one fails or times out, so the last
/// kind is not expected; it is worded all the same.)
pub(crate) fn pool_timeout_text(
    pool: &deadpool_postgres::Pool,
    kind: deadpool_postgres::TimeoutType,
    size_setting: Option<&str>,
) -> String {
    let timeouts = pool.timeouts();
    let secs = |t: Option<Duration>| t.map_or_else(|| "?".to_string(), |t| format!("{} s", t.as_secs_f32()));
    match kind {
        deadpool_postgres::TimeoutType::Wait => format!(
            "PostgreSQL: no connection came free within {} (all {} in use or being opened; {})",
            secs(timeouts.wait),
            pool.status().max_size,
            match size_setting {
                Some(setting) => format!("is {setting} too small for this load, or the database slow?"),
                None => "is the database slow?".to_string(),
            }
        ),
        deadpool_postgres::TimeoutType::Create => format!(
            "PostgreSQL: opening a connection took longer than {} (store.connect-timeout-secs; is the database reachable, and not overloaded?)",
            secs(timeouts.create)
        ),
        deadpool_postgres::TimeoutType::Recycle => format!(
            "PostgreSQL: checking an idle connection took longer than {} (store.connect-timeout-secs; is the database reachable, and not overloaded?)",
            secs(timeouts.recycle)
        ),
    }
}

/// A pool manager over `config` and `tls` (connections checked only by
/// their state when reused: a broken one is replaced on its next use).
/// Every connection is opened and driven on `io` (the pool's own runtime),
/// whichever runtime awaits the pool: a connection whose socket and task
/// lived on a caller's runtime would die with that runtime, and stall
/// while its threads block on the pool.
fn manager(
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    io: tokio::runtime::Handle,
) -> deadpool_postgres::Manager {
    let manager_config = deadpool_postgres::ManagerConfig {
        recycling_method: deadpool_postgres::RecyclingMethod::Fast,
    };
    match tls {
        None => deadpool_postgres::Manager::from_connect(
            config,
            OnRuntime {
                tls: tokio_postgres::NoTls,
                io,
            },
            manager_config,
        ),
        Some(tls) => deadpool_postgres::Manager::from_connect(config, OnRuntime { tls, io }, manager_config),
    }
}

/// A connection being opened: the client and its driving task.
type Opening<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
            > + Send
            + 'a,
    >,
>;

/// Opens connections on one runtime (see [`manager`]).
struct OnRuntime<T> {
    tls: T,
    io: tokio::runtime::Handle,
}

impl<T> deadpool_postgres::Connect for OnRuntime<T>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Clone + Sync + Send + 'static,
    T::Stream: Sync + Send,
    T::TlsConnect: Sync + Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Future: Send,
{
    fn connect(&self, config: &tokio_postgres::Config) -> Opening<'_> {
        let (config, tls, io) = (config.clone(), self.tls.clone(), self.io.clone());
        Box::pin(async move {
            let mut opened = AbortOnDrop(self.io.spawn(async move {
                let (client, connection) = config.connect(tls).await?;
                let driver = io.spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::warn!("a PostgreSQL connection ended: {}", error_text(&e));
                    }
                });
                Ok((client, driver))
            }));
            match (&mut opened.0).await {
                Ok(result) => result,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Cancelled: the pool's runtime is gone (the store is
                // closing), as if the server did not answer. (The driver
                // offers no other way to make this error.)
                Err(_) => Err(tokio_postgres::Error::__private_api_timeout()),
            }
        })
    }
}

/// A connection attempt that stops when the pool gives up on it (its
/// `create-timeout`), rather than lingering on the pool's runtime against
/// a server that accepted the socket and then stalled.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        // A no-op once the task finished.
        self.0.abort();
    }
}

/// Whether `e` says the database cannot be reached (rather than that a
/// statement failed): no server answer at all, or the server's own
/// "connection exception", shutting down, starting up, or full.
pub(crate) fn unreachable(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
        }
    }
}

/// A database error as a message: a server error's message and detail
/// (which name constraints and rows, never a secret of ours), else the
/// driver's with its causes ("error performing TLS handshake" alone does
/// not say the certificate was refused).
pub(crate) fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return match db.detail() {
            Some(detail) => format!("PostgreSQL: {}: {detail}", db.message()),
            None => format!("PostgreSQL: {}", db.message()),
        };
    }
    let mut text = format!("PostgreSQL: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that accepts the connection and never answers: the pool's
    /// error names the connect timeout, not the pool's size.
    #[test]
    fn a_server_that_never_answers_is_reported_as_a_slow_connect() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("its address").port();
        let settings = PgSettings {
            url: format!("postgres://airlock@127.0.0.1:{port}/airlock"),
            password: PasswordSource::None,
            tls: TlsMode::Disable,
            ca_file: None,
            pool_size: 1,
            connect_timeout: Duration::from_millis(300),
        };
        let (config, tls) = config(&settings, "airlock-test").expect("valid settings");
        let (rt, pool) = pool(
            &settings,
            config,
            tls,
            ("test", "airlock-test", 1),
            (1, Duration::from_secs(5)),
        )
        .expect("a pool");
        let got = rt.block_on(pool.get());
        let Err(deadpool_postgres::PoolError::Timeout(kind)) = got else {
            panic!("expected a timeout, got {:?}", got.map(|_| ()));
        };
        let text = pool_timeout_text(&pool, kind, Some("store.pool-size"));
        assert!(
            text.contains("opening a connection took longer than 0.3 s") && text.contains("store.connect-timeout-secs"),
            "{text}"
        );
        drop(listener);
    }
}
