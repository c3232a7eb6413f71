//! [`Runtime`]: the engine, the compile cache, and the loaded actions.

use crate::action::{self, PreparedAction};
use crate::cache::ArtifactCache;
use crate::error::Error;
use crate::manifest::Manifest;
use crate::policy::{ActionPolicy, Policy, RuntimeSettings};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use wasmtime::Engine;

/// One engine shared by every action, plus the actions loaded on it.
pub struct Runtime {
    engine: Engine,
    cache: ArtifactCache,
    actions: BTreeMap<String, Arc<PreparedAction>>,
}

impl Runtime {
    /// Build the engine and open the compile cache in the data directory.
    pub fn new(settings: &RuntimeSettings) -> Result<Runtime, Error> {
        let engine =
            crate::engine::build(settings).map_err(|e| Error::internal(format!("cannot build engine: {e}")))?;
        let cache = ArtifactCache::open(&settings.data_dir);
        Ok(Runtime {
            engine,
            cache,
            actions: BTreeMap::new(),
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
        let prepared = Arc::new(action::prepare(&self.engine, &self.cache, policy)?);
        self.actions.insert(name, prepared.clone());
        Ok(prepared)
    }

    /// Load every action of `policy`; each refusal is returned beside the
    /// actions that loaded.
    pub fn load_all(&mut self, policy: &Policy) -> Vec<(String, Result<Arc<PreparedAction>, Error>)> {
        policy
            .actions
            .values()
            .map(|a| (a.name.clone(), self.prepare(a.clone())))
            .collect()
    }

    /// A loaded action by name.
    pub fn action(&self, name: &str) -> Option<&Arc<PreparedAction>> {
        self.actions.get(name)
    }
}
