//! `airlock token`: create, list and revoke identity tokens.

use super::DataPlace;
use airlock::Error;
use airlock::identity::{self, IdentityKind};
use clap::Subcommand;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token for an identity (created on first use) and print it
    /// once; only its hash is stored.
    Create {
        #[arg(long)]
        identity: String,
        /// A role the token carries (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// `agent` (never approves unless the config names it in
        /// `access.agent-approvers`) or `human`.
        #[arg(long, default_value = "agent")]
        kind: String,
        /// Write the token to this file (created 0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        place: DataPlace,
    },
    /// List tokens (ids, identities, roles; never values).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        place: DataPlace,
    },
    /// Revoke a token by id; it stops working at once.
    Revoke {
        id: String,
        #[command(flatten)]
        place: DataPlace,
    },
}

fn store_at(place: &DataPlace) -> Result<std::sync::Arc<dyn airlock::store::Store>, Error> {
    place.store()
}

pub fn token_cmd(cmd: TokenCommand) -> Result<ExitCode, Error> {
    match cmd {
        TokenCommand::Create {
            identity,
            roles,
            kind,
            out,
            place,
        } => {
            let kind = IdentityKind::parse(&kind).map_err(Error::Usage)?;
            let store = store_at(&place)?;
            let (minted, record) = identity::create_token(store.as_ref(), &identity, kind, &roles)?;
            match out {
                Some(path) => write_private(&path, &minted.value)?,
                None => {
                    let mut stdout = std::io::stdout().lock();
                    let _ = writeln!(stdout, "{}", minted.value.as_str());
                }
            }
            eprintln!(
                "created token {} for {} {} (roles: {}); it is shown only once",
                record.id,
                kind,
                record.identity,
                if record.roles.is_empty() {
                    "none".into()
                } else {
                    record.roles.join(", ")
                }
            );
        }
        TokenCommand::List { json, place } => {
            let tokens = store_at(&place)?.tokens()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens).map_err(Error::internal)?);
            } else {
                println!(
                    "{:<16}  {:<24} {:<6} {:<24} {:<20} STATUS",
                    "ID", "IDENTITY", "KIND", "ROLES", "CREATED (UTC)"
                );
                for t in tokens {
                    println!(
                        "{:<16}  {:<24} {:<6} {:<24} {:<20} {}",
                        t.id,
                        t.identity,
                        t.kind,
                        t.roles.join(","),
                        airlock::time::display_secs(t.created_at / 1_000_000),
                        match t.revoked_at {
                            Some(at) => format!("revoked {}", airlock::time::display_secs(at / 1_000_000)),
                            None => "active".into(),
                        }
                    );
                }
            }
        }
        TokenCommand::Revoke { id, place } => {
            if !store_at(&place)?.revoke_token(&id, airlock::time::now_micros())? {
                return Err(Error::Usage(format!(
                    "no token {id}; see `{}`",
                    airlock::hint::command("token list")
                )));
            }
            eprintln!("revoked token {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Write `text` to a new file readable only by the current user.
fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Usage(format!("cannot create {}: {e} (it must not exist yet)", path.display())))?;
    writeln!(file, "{text}").map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))
}
