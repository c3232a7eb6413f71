//! Where a command finds the data directory, the store and the audit
//! backend: `--config`, `--data-dir` or `AIRLOCK_DATA_DIR`.

use airlock::Error;
use airlock::policy::{Policy, RuntimeSettings};
use std::path::PathBuf;

/// Which data directory to use.
#[derive(clap::Args)]
pub struct DataPlace {
    /// Use the data-dir of this config.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// The data directory [default: the config's data-dir, else ./.airlock].
    #[arg(long, env = "AIRLOCK_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

impl DataPlace {
    pub(crate) fn dir(&self) -> Result<PathBuf, Error> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        match &self.config {
            Some(config) => Ok(Policy::load(config)?.runtime.data_dir),
            None => Ok(default_settings(None).data_dir),
        }
    }

    /// The audit backend the config names (`[audit]`); the data
    /// directory's log without a config.
    pub(crate) fn audit_backend(&self) -> Result<airlock::audit::settings::Backend, Error> {
        match &self.config {
            Some(config) => {
                let policy = Policy::load(config)?;
                airlock::audit::settings::Backend::from_settings(&policy.runtime.audit, &policy.runtime.store, None)
                    .map_err(Error::Config)
            }
            None => Ok(airlock::audit::settings::Backend::File),
        }
    }

    /// The store the config names (`[store]`), or SQLite in [`Self::dir`].
    pub(crate) fn store(&self) -> Result<std::sync::Arc<dyn airlock::store::Store>, Error> {
        airlock::store::open(&self.store_settings()?, &self.dir()?).map_err(Error::from)
    }

    fn store_settings(&self) -> Result<airlock::store::settings::StoreSettings, Error> {
        Ok(match &self.config {
            Some(config) => Policy::load(config)?.runtime.store,
            None => Default::default(),
        })
    }

    /// The shared vault, when the config's store is shared (PostgreSQL).
    pub(crate) fn shared_vault(
        &self,
    ) -> Result<Option<std::sync::Arc<dyn airlock::vault::shared::SharedVault>>, Error> {
        if self.store_settings()?.postgres.is_none() {
            return Ok(None);
        }
        Ok(self.store()?.shared_vault())
    }
}

/// The settings of a command run without a config.
pub fn default_settings(data_dir: Option<PathBuf>) -> RuntimeSettings {
    RuntimeSettings {
        data_dir: data_dir.unwrap_or_else(|| PathBuf::from(".airlock")),
        max_concurrent_instances: 4,
        store: Default::default(),
        audit: Default::default(),
    }
}
