//! The `airlock` commands, one module per command group; `main.rs` only
//! parses the command line and calls them. What several share lives here:
//! how a command authenticates (`Auth`, `ConfigAuth`), where it finds its
//! data (`place`), and how text from outside is printed (`escape`).

mod approvals;
mod audit;
mod audit_pg;
mod check;
mod db;
mod diff;
mod docs;
mod invocations;
mod invoke;
mod new;
mod place;
mod policy;
mod secret;
mod serve;
mod sign;
mod token;

pub use approvals::{ApprovalsCommand, approvals_cmd};
pub use audit::{AuditCommand, audit_cmd};
pub use audit_pg::{PgPlace, audit_pg_show, audit_pg_tail, audit_pg_verify};
pub use check::{check, inspect};
pub use db::{DbCommand, db_cmd};
pub use diff::{DiffArgs, diff};
pub use docs::{completions, man_pages};
pub use invocations::{InvocationsCommand, invocations_cmd, print_submitted};
pub use invoke::{InvokeArgs, echo_observations, invoke};
pub use new::{NewArgs, new};
pub use place::{DataPlace, default_settings};
pub use policy::{PolicyCommand, policy_cmd};
pub use secret::{SecretCommand, secret};
pub use serve::{mcp, serve};
pub use sign::{KeygenArgs, SignArgs, VerifyArgs, keygen, sign, verify};
pub use token::{TokenCommand, token_cmd};

use airlock::Error;
use airlock::identity::{self, Caller};
use airlock::policy::Policy;
use airlock::runtime::Runtime;
use std::path::PathBuf;
use zeroize::Zeroizing;

/// Who is calling: `--token-file FILE`, else `AIRLOCK_TOKEN`, else the
/// local operator. Tokens never come from argv, where any user of the
/// machine can read them.
#[derive(clap::Args, Clone)]
pub struct Auth {
    /// A file holding your airlock token (also `AIRLOCK_TOKEN_FILE`; or put
    /// the token itself in `AIRLOCK_TOKEN`).
    #[arg(long, env = "AIRLOCK_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl Auth {
    fn bearer(&self) -> Result<Option<Zeroizing<String>>, Error> {
        if let Some(path) = &self.token_file {
            return identity::token::read_file(path)
                .map(Some)
                .map_err(Error::Unauthenticated);
        }
        match std::env::var("AIRLOCK_TOKEN") {
            Ok(t) if !t.trim().is_empty() => Ok(Some(Zeroizing::new(t.trim().to_string()))),
            _ => Ok(None),
        }
    }

    /// The authenticated caller, or the local operator without a token.
    pub fn caller(&self, runtime: &Runtime) -> Result<Caller, Error> {
        match self.bearer()? {
            Some(bearer) => identity::authenticate(runtime.store()?.as_ref(), &bearer),
            None => Ok(Caller::local()),
        }
    }

    /// The token itself, for a long session (MCP over stdio).
    pub fn required_bearer(&self) -> Result<Zeroizing<String>, Error> {
        self.bearer()?.ok_or_else(|| {
            Error::Unauthenticated(
                "an agent token is required: pass --token-file FILE (or set AIRLOCK_TOKEN_FILE / AIRLOCK_TOKEN)".into(),
            )
        })
    }

    /// The authenticated caller; a token is required.
    fn token_caller(&self, runtime: &Runtime, what: &str) -> Result<Caller, Error> {
        match self.bearer()? {
            Some(bearer) => identity::authenticate(runtime.store()?.as_ref(), &bearer),
            None => Err(Error::Unauthenticated(format!(
                "{what} needs a reviewer token: pass --token-file FILE (or set AIRLOCK_TOKEN_FILE / AIRLOCK_TOKEN)"
            ))),
        }
    }
}

/// The config (for actions, access rules and the data directory) and the
/// caller's token.
#[derive(clap::Args)]
pub struct ConfigAuth {
    #[arg(long)]
    config: PathBuf,
    #[arg(long, env = "AIRLOCK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    auth: Auth,
}

impl ConfigAuth {
    /// A runtime over the config with its approval service open; loads
    /// only `action` when given (else every action that loads).
    fn runtime(&self, action: Option<&str>) -> Result<Runtime, Error> {
        let mut policy = Policy::load(&self.config)?;
        if let Some(dir) = &self.data_dir {
            policy.runtime.data_dir = dir.clone();
        }
        let mut runtime = Runtime::new(&policy.runtime)?;
        runtime.approvals()?;
        match action {
            Some(name) => {
                let a = policy.actions.get(name).cloned().ok_or_else(|| {
                    Error::Usage(format!(
                        "action `{name}` is not in {}; decide with the config that defines it",
                        self.config.display()
                    ))
                })?;
                runtime.prepare(a)?;
                runtime.check_policies_of(&policy)?;
            }
            None => {
                for (name, loaded) in runtime.load_all(&policy) {
                    if let Err(e) = loaded {
                        tracing::warn!("action {name} not loaded: {e}");
                    }
                }
            }
        }
        Ok(runtime)
    }
}

pub(crate) fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}
