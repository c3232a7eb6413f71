//! `airlock db`: the shared database's schema.

use airlock::Error;
use airlock::policy::Policy;
use airlock::store::postgres::{Migrate, MigrationStatus, PgStore};
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum DbCommand {
    /// Apply the schema migrations the database lacks (every node also
    /// does this when it opens the store). Safe to run while other nodes
    /// serve: migrations only add, one at a time, under a lock.
    Migrate {
        #[arg(long)]
        config: PathBuf,
        /// Stop after this migration version [default: the newest].
        #[arg(long)]
        to: Option<i32>,
    },
    /// List the migrations: applied (when, by which airlock) or pending.
    /// Exits 3 when some are pending.
    Status {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// Exit code of `db status` when migrations are pending.
const PENDING: u8 = 3;

pub fn db_cmd(cmd: DbCommand) -> Result<ExitCode, Error> {
    match cmd {
        DbCommand::Migrate { config, to } => {
            let policy = Policy::load(&config)?;
            let Some(pg) = &policy.runtime.store.postgres else {
                println!(
                    "the store is SQLite in {} (no [store] url); its schema is brought up to date whenever it is opened",
                    policy.runtime.data_dir.display()
                );
                return Ok(ExitCode::SUCCESS);
            };
            if let Some(to) = to
                && !(1..=airlock::store::migrations::latest()).contains(&to)
            {
                return Err(Error::Usage(format!(
                    "--to {to}: this airlock knows migrations 1 to {}",
                    airlock::store::migrations::latest()
                )));
            }
            // Opened without applying, so `--to` is honoured.
            let store = open_unchecked(pg)?;
            let applied = store.migrate(to).map_err(Error::from)?;
            if applied.is_empty() {
                println!("{}: the schema is up to date", pg.url);
            } else {
                for m in airlock::store::migrations::MIGRATIONS
                    .iter()
                    .filter(|m| applied.contains(&m.version))
                {
                    println!("applied {:>3}  {}", m.version, m.name);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DbCommand::Status { config, json } => {
            let policy = Policy::load(&config)?;
            let Some(pg) = &policy.runtime.store.postgres else {
                println!(
                    "the store is SQLite in {} (no [store] url); nothing to migrate by hand",
                    policy.runtime.data_dir.display()
                );
                return Ok(ExitCode::SUCCESS);
            };
            let store = open_unchecked(pg)?;
            let list = store.migration_status().map_err(Error::from)?;
            let pending = list.iter().any(|m| m.applied_at.is_none());
            if json {
                let server = store.server_version().map_err(Error::from)?;
                let doc = serde_json::json!({
                    "store": pg.url,
                    "server-version": server,
                    "latest-known": airlock::store::migrations::latest(),
                    "pending": pending,
                    "migrations": list,
                });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                print_status(&pg.url, &list);
            }
            Ok(if pending {
                ExitCode::from(PENDING)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// The store without applying or checking migrations (the commands here
/// report and apply them themselves).
fn open_unchecked(pg: &airlock::store::settings::PgSettings) -> Result<PgStore, Error> {
    PgStore::open(pg, Migrate::Skip).map_err(Error::from)
}

fn print_status(url: &str, list: &[MigrationStatus]) {
    println!("{url}");
    for m in list {
        let state = match (&m.applied_at, m.unknown) {
            (Some(at), false) => format!("applied {at} by {}", m.applied_by.as_deref().unwrap_or("?")),
            (Some(at), true) => format!(
                "applied {at} by {} (newer than this airlock)",
                m.applied_by.as_deref().unwrap_or("?")
            ),
            (None, _) => format!("PENDING: run `{}`", airlock::hint::command("db migrate")),
        };
        println!("{:>3}  {:<56} {state}", m.version, m.name);
    }
}
