//! [`Runtime`]: the engine, the compile cache, and the loaded actions.

use crate::action::{self, PreparedAction};
use crate::approval::Approvals;
use crate::audit::AuditLog;
use crate::audit::recovery::Recovered;
use crate::cache::ArtifactCache;
use crate::error::Error;
use crate::manifest::Manifest;
use crate::policy::{ActionPolicy, Policy, RuntimeSettings};
use crate::store::Store;
use crate::store::settings::StoreSettings;
use crate::vault::LiveVault;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use wasmtime::Engine;

/// One engine shared by every action, plus the actions loaded on it.
pub struct Runtime {
    engine: Engine,
    cache: ArtifactCache,
    actions: BTreeMap<String, Arc<PreparedAction>>,
    data_dir: std::path::PathBuf,
    /// Opened on first use by an action with credentials.
    vault: Option<Arc<LiveVault>>,
    /// Opened on first use by [`Runtime::prepare`].
    audit: Option<AuditLog>,
    /// Opened on first use by [`Runtime::approvals`].
    approvals: Option<Approvals>,
    store_settings: StoreSettings,
    /// `[audit]`: where the audit log keeps its records.
    audit_settings: crate::audit::settings::AuditSettings,
    /// Opened on first use by [`Runtime::store`] (one pool per process).
    store: std::sync::OnceLock<Arc<dyn Store>>,
}

impl Runtime {
    /// Build the engine and open the compile cache in the data directory.
    pub fn new(settings: &RuntimeSettings) -> Result<Runtime, Error> {
        // `[audit] node-id` names the node in its heartbeats too, unless
        // `--node-id` named it first.
        if let Some(id) = &settings.audit.node_id {
            let _ = crate::cluster::set_node_id(id);
        }
        let engine =
            crate::engine::build(settings).map_err(|e| Error::internal(format!("cannot build engine: {e}")))?;
        let cache = ArtifactCache::open(&settings.data_dir);
        Ok(Runtime {
            engine,
            cache,
            actions: BTreeMap::new(),
            data_dir: settings.data_dir.clone(),
            vault: None,
            audit: None,
            approvals: None,
            store_settings: settings.store.clone(),
            audit_settings: settings.audit.clone(),
            store: std::sync::OnceLock::new(),
        })
    }

    /// Like [`Runtime::new`] but never touching the disk (for `inspect`).
    pub fn without_cache(settings: &RuntimeSettings) -> Result<Runtime, Error> {
        let engine =
            crate::engine::build(settings).map_err(|e| Error::internal(format!("cannot build engine: {e}")))?;
        Ok(Runtime {
            engine,
            cache: ArtifactCache::disabled(),
            actions: BTreeMap::new(),
            data_dir: settings.data_dir.clone(),
            vault: None,
            audit: None,
            approvals: None,
            store_settings: settings.store.clone(),
            audit_settings: settings.audit.clone(),
            store: std::sync::OnceLock::new(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Read a component's manifest without granting or running anything.
    pub fn inspect(&self, path: &Path) -> Result<Manifest, Error> {
        action::compile(&self.engine, &self.cache, path).map(|(_, _, manifest, _)| manifest)
    }

    /// Load one action, refusing it if its imports exceed its grants.
    pub fn prepare(&mut self, policy: ActionPolicy) -> Result<Arc<PreparedAction>, Error> {
        let name = policy.name.clone();
        let vault = match &policy.grants.credentials {
            Some(grant) if !grant.bindings.is_empty() => Some(self.vault_for(&policy.name, grant)?),
            _ => None,
        };
        let audit = self.audit()?;
        let approvals = if policy.may_need_approvals() {
            Some(self.approvals()?)
        } else {
            None
        };
        let prepared = Arc::new(action::prepare(
            &self.engine,
            &self.cache,
            policy,
            vault,
            audit,
            approvals,
            Some(&crate::pins::PinHistory::new(&self.data_dir)),
        )?);
        self.actions.insert(name, prepared.clone());
        Ok(prepared)
    }

    /// Record, for each loaded pinned action, the pin it runs under (see
    /// [`crate::pins`]): for the commands that run actions (`serve`,
    /// `invoke`), once loading is final. `check` and other dry runs only
    /// compare.
    pub fn commit_pins(&self) -> Result<(), Error> {
        let pins = crate::pins::PinHistory::new(&self.data_dir);
        for action in self.actions.values() {
            if let Some(seen) = &action.pin_seen {
                pins.commit(
                    &action.policy.name,
                    &action.manifest.digest.to_string(),
                    seen,
                    &action.policy.component,
                )
                .map_err(|e| Error::Refused(format!("action `{}`: {e}", action.policy.name)))?;
            }
        }
        Ok(())
    }

    /// Load every action of `policy`; each refusal is returned beside the
    /// actions that loaded.
    ///
    /// The config's policy files are then checked against the schema of
    /// every action that loaded (Cedar's strict validation): if any policy
    /// is refused, so is every action, since a policy that cannot be
    /// trusted to mean what it says must not decide anything.
    pub fn load_all(&mut self, policy: &Policy) -> Vec<(String, Result<Arc<PreparedAction>, Error>)> {
        let loaded = self.load_each(policy);
        match self.validate_policies(policy) {
            Ok(()) => loaded,
            Err(e) => {
                let message = e.to_string();
                loaded
                    .into_iter()
                    .map(|(name, _)| {
                        self.actions.remove(&name);
                        (name, Err(Error::Config(message.clone())))
                    })
                    .collect()
            }
        }
    }

    /// Check `policy`'s policy files against all its actions (loading
    /// each once, from the compile cache, to read its types), for commands
    /// that run one action of a config. Nothing to do without policy files.
    pub fn check_policies_of(&self, policy: &Policy) -> Result<(), Error> {
        if policy.policy_files.rules.is_empty() {
            return Ok(());
        }
        let mut manifests = Vec::new();
        for a in policy.actions.values() {
            let (_, _, manifest, _) = crate::action::compile_verified(&self.engine, &self.cache, a).map_err(|e| {
                Error::Config(format!(
                    "action {} did not load, so the policies cannot be checked: {e}",
                    a.name
                ))
            })?;
            manifests.push((a, manifest));
        }
        let actions: Vec<(&crate::policy::ActionPolicy, &[crate::manifest::FunctionSig])> =
            manifests.iter().map(|(a, m)| (*a, m.functions.as_slice())).collect();
        crate::policy::engine::validate(&actions)
            .map_err(|errors| Error::Config(format!("policies refused:\n  {}", errors.join("\n  "))))
    }

    /// Load every action of `policy` without checking the policy files
    /// against them ([`Runtime::load_all`] does; `airlock check` reports
    /// the two separately).
    pub fn load_each(&mut self, policy: &Policy) -> Vec<(String, Result<Arc<PreparedAction>, Error>)> {
        policy
            .actions
            .values()
            .map(|a| (a.name.clone(), self.prepare(a.clone())))
            .collect()
    }

    /// Check the config's policy files against the loaded actions' schema.
    pub fn validate_policies(&self, policy: &Policy) -> Result<(), Error> {
        if policy.policy_files.rules.is_empty() {
            return Ok(());
        }
        let actions: Vec<(&crate::policy::ActionPolicy, &[crate::manifest::FunctionSig])> = self
            .actions
            .values()
            .map(|a| (&a.policy, a.manifest.functions.as_slice()))
            .collect();
        if actions.is_empty() {
            return Ok(());
        }
        crate::policy::engine::validate(&actions)
            .map_err(|errors| Error::Config(format!("policies refused:\n  {}", errors.join("\n  "))))
    }

    /// The audit log of the data directory, opened (and locked against
    /// other processes) on first use. Before anything else is written to
    /// it, what ended processes left open is closed ([`Runtime::recover`]).
    pub fn audit(&mut self) -> Result<AuditLog, Error> {
        if let Some(log) = &self.audit {
            return Ok(log.clone());
        }
        let backend = crate::audit::settings::Backend::from_settings(&self.audit_settings, &self.store_settings, None)
            .map_err(Error::AuditUnavailable)?;
        let log = AuditLog::open_backend(&crate::audit::dir(&self.data_dir), &backend)
            .map_err(|e| Error::AuditUnavailable(e.to_string()))?;
        self.audit = Some(log.clone());
        self.recover_now();
        Ok(log)
    }

    /// The approval service over the data directory's database, opened on
    /// first use; `running` rows no live process runs are ended then.
    pub fn approvals(&mut self) -> Result<Approvals, Error> {
        if let Some(a) = &self.approvals {
            return Ok(a.clone());
        }
        let audit = self.audit()?;
        let store = self.store()?;
        let approvals = Approvals::new(store, audit);
        self.approvals = Some(approvals.clone());
        self.recover_now();
        Ok(approvals)
    }

    /// Close what airlock processes that ended mid-invocation left open:
    /// a closing `invocation-cut-off` record for each invocation they
    /// started and never closed, and each of their `running` status rows
    /// moved to what the log says (see [`crate::audit::recovery`]). Cheap
    /// when there is nothing to do (a look at the runner leases, and, once
    /// the database is open, at the `running` rows); the service calls it
    /// every few seconds. Also brings this process's own lease floor up to
    /// date.
    pub fn recover(&self) -> Result<Recovered, Error> {
        let Some(log) = &self.audit else {
            return Ok(Recovered::default());
        };
        log.lease().refresh(false);
        let open_rows = || -> Result<Option<Arc<dyn Store>>, String> {
            if let Some(a) = &self.approvals {
                return Ok(Some(a.store().clone()));
            }
            // No database, no rows (and none is created for this).
            if self.store_settings.postgres.is_none()
                && self.store.get().is_none()
                && !self.data_dir.join(crate::store::sqlite::FILE_NAME).exists()
            {
                return Ok(None);
            }
            Ok(Some(self.store().map_err(|e| e.to_string())?))
        };
        crate::audit::recovery::recover(log, &open_rows, self.approvals.is_some())
            .map_err(|e| Error::AuditUnavailable(e.to_string()))
    }

    /// [`Runtime::recover`] as part of opening: a failure is reported, not
    /// returned (the leases stay, so the next process or the service's
    /// next round tries again).
    fn recover_now(&self) {
        match self.recover() {
            Ok(done) if !done.is_empty() => tracing::warn!(
                leases = ?done.leases,
                cut_off = done.cut_off.len(),
                rows = done.rows.len(),
                "recovered what ended airlock processes left open"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }

    /// The audit log, if [`Runtime::audit`] has opened it.
    pub fn audit_opened(&self) -> Option<&AuditLog> {
        self.audit.as_ref()
    }

    /// The approval service, if [`Runtime::approvals`] has opened it.
    pub fn approvals_opened(&self) -> Option<&Approvals> {
        self.approvals.as_ref()
    }

    /// The database (identities, tokens, approvals, invocations): the one
    /// `[store]` names, or SQLite in the data directory. Opened once.
    pub fn store(&self) -> Result<Arc<dyn Store>, Error> {
        if let Some(a) = &self.approvals {
            return Ok(a.store().clone());
        }
        if let Some(store) = self.store.get() {
            return Ok(store.clone());
        }
        let store = crate::store::open(&self.store_settings, &self.data_dir).map_err(Error::from)?;
        // Two threads opening at once: the first one stored wins.
        Ok(self.store.get_or_init(|| store).clone())
    }

    /// Where the store is (`[store]`).
    pub fn store_settings(&self) -> &StoreSettings {
        &self.store_settings
    }

    /// The vault, opened once (it follows later changes to its file), after
    /// checking that every secret `grant` names is in it (so a missing
    /// secret fails at load, not mid-request).
    /// The vault (opened on first use), for secrets that are not an
    /// action's credentials (webhook URLs and signing keys).
    pub fn open_vault(&mut self) -> Result<Arc<LiveVault>, Error> {
        if let Some(v) = &self.vault {
            return Ok(v.clone());
        }
        let shared = match &self.store_settings.postgres {
            Some(_) => self.store()?.shared_vault(),
            None => None,
        };
        let v = Arc::new(
            LiveVault::open_in(&self.data_dir, shared)
                .map_err(|e| Error::Config(format!("the vault cannot be opened: {e}")))?,
        );
        self.vault = Some(v.clone());
        Ok(v)
    }

    fn vault_for(
        &mut self,
        action: &str,
        grant: &crate::capabilities::credentials::CredentialsGrant,
    ) -> Result<Arc<LiveVault>, Error> {
        let vault = match &self.vault {
            Some(v) => v.clone(),
            None => {
                // Nodes sharing a PostgreSQL store share its vault.
                let shared = match &self.store_settings.postgres {
                    Some(_) => self.store()?.shared_vault(),
                    None => None,
                };
                let v = Arc::new(LiveVault::open_in(&self.data_dir, shared).map_err(|e| {
                    Error::Config(format!(
                        "action `{action}` has credentials, but the vault cannot be opened: {e}"
                    ))
                })?);
                self.vault = Some(v.clone());
                v
            }
        };
        for (name, binding) in &grant.bindings {
            let present = vault.contains(&binding.secret).map_err(|e| {
                Error::Config(format!(
                    "action `{action}` has credentials, but the vault cannot be read: {e}"
                ))
            })?;
            if !present {
                return Err(Error::Config(format!(
                    "action `{action}`: credential `{name}` uses vault secret `{}`, which is not in {}; add it with `{}`",
                    binding.secret,
                    vault.path().display(),
                    crate::hint::command_in(
                        &format!("secret set {}", crate::hint::shell_quote(&binding.secret)),
                        vault.path().parent().unwrap_or(std::path::Path::new("."))
                    )
                )));
            }
        }
        Ok(vault)
    }

    /// The names of the loaded actions.
    pub fn action_names(&self) -> Vec<String> {
        self.actions.keys().cloned().collect()
    }

    /// A loaded action by name.
    pub fn action(&self, name: &str) -> Option<&Arc<PreparedAction>> {
        self.actions.get(name)
    }
}
