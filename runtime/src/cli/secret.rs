//! `airlock secret`: the vault's secrets (values from stdin only).

use super::DataPlace;
use airlock::Error;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Store a secret. The value is read from stdin (hidden when stdin is a
    /// terminal); one trailing newline is dropped.
    Set {
        name: String,
        #[command(flatten)]
        place: DataPlace,
    },
    /// List secret names and metadata (never values).
    List {
        #[command(flatten)]
        place: DataPlace,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a secret.
    Rm {
        name: String,
        #[command(flatten)]
        place: DataPlace,
    },
}

pub fn secret(cmd: SecretCommand) -> Result<ExitCode, Error> {
    use airlock::vault::{self, Vault};
    let data_dir = |place: &DataPlace| place.dir();
    let vault_err = |e: vault::VaultError| match e {
        vault::VaultError::InvalidName | vault::VaultError::NotFound(_) => Error::Usage(e.to_string()),
        vault::VaultError::Io { .. } => Error::Internal(e.to_string()),
        _ => Error::Refused(e.to_string()),
    };
    match cmd {
        SecretCommand::Set { name, place } => {
            vault::validate_name(&name).map_err(vault_err)?;
            if vault::looks_like_a_value(&name) {
                // The name itself is not repeated: it may be a token typed
                // where the name belongs.
                eprintln!(
                    "warning: this secret name looks like a token; names are stored and listed in plain text. \
                     If it is a value typed by mistake, press Ctrl-C (or remove it later with `{}`).",
                    airlock::hint::command("secret rm NAME")
                );
            }
            let dir = data_dir(&place)?;
            let mut vault = Vault::open_in(&dir, place.shared_vault()?, true).map_err(vault_err)?;
            let value = vault::secret::read_from_stdin(&name).map_err(Error::Usage)?;
            vault.set(&name, &value).map_err(vault_err)?;
            eprintln!(
                "stored secret {name} ({} bytes) in {}",
                value.len(),
                vault.path().display()
            );
        }
        SecretCommand::List { place, json } => {
            let vault = Vault::open_in(&data_dir(&place)?, place.shared_vault()?, false).map_err(vault_err)?;
            let list = vault.list();
            if json {
                println!("{}", serde_json::to_string_pretty(&list).map_err(Error::internal)?);
            } else if list.is_empty() {
                eprintln!("no secrets in {}", vault.path().display());
            } else {
                println!(
                    "{:<32} {:>7}  {:<20}  {:<20}",
                    "NAME", "BYTES", "CREATED (UTC)", "UPDATED (UTC)"
                );
                for s in list {
                    println!(
                        "{:<32} {:>7}  {:<20}  {:<20}",
                        s.name,
                        s.bytes,
                        airlock::time::display_secs(s.created),
                        airlock::time::display_secs(s.updated)
                    );
                }
            }
        }
        SecretCommand::Rm { name, place } => {
            vault::validate_name(&name).map_err(vault_err)?;
            let mut vault = Vault::open_in(&data_dir(&place)?, place.shared_vault()?, false).map_err(vault_err)?;
            vault.remove(&name).map_err(vault_err)?;
            eprintln!("removed secret {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
