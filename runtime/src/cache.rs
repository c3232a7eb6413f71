//! On-disk cache of compiled components.
//!
//! Artifacts are keyed by the component's blake3 digest and the engine's
//! compatibility hash (wasmtime version and every setting that affects
//! code generation), so a second start skips compilation and a changed
//! setting never loads a stale artifact.
//!
//! Trust: loading an artifact runs its native code. The cache lives in the
//! data directory, which airlock creates with mode 0700; anyone who can
//! write there can already act as airlock.

use crate::manifest::Digest;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of compiled artifacts.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: Option<PathBuf>,
}

/// Feeds `Hash` output into blake3, for a key stable across runs.
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn finish(&self) -> u64 {
        let bytes = self.0.finalize();
        u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or_default())
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl ArtifactCache {
    /// A cache under `data_dir/cache`, or none if it cannot be created (the
    /// runtime still works, compiling every time).
    pub fn open(data_dir: &Path) -> ArtifactCache {
        let dir = data_dir.join("cache");
        match crate::data_dir::create_private_dir(&dir) {
            Ok(()) => ArtifactCache { dir: Some(dir) },
            Err(e) => {
                tracing::warn!("compile cache disabled: cannot create {}: {e}", dir.display());
                ArtifactCache { dir: None }
            }
        }
    }

    /// A cache that never stores anything.
    pub fn disabled() -> ArtifactCache {
        ArtifactCache { dir: None }
    }

    fn path_for(&self, engine: &Engine, digest: &Digest) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let mut h = Blake3Hasher(blake3::Hasher::new());
        engine.precompile_compatibility_hash().hash(&mut h);
        digest.0.hash(&mut h);
        Some(dir.join(format!("{}.cwasm", h.0.finalize().to_hex())))
    }

    /// Load the compiled form of `bytes`, compiling (and storing) it on a miss.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        digest: &Digest,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, bool)> {
        let path = self.path_for(engine, digest);
        if let Some(path) = path.as_ref().filter(|p| p.exists()) {
            // SAFETY: the artifact was written by `store` below into the
            // private data directory, under a key that includes the engine's
            // compatibility hash; see the module docs for the trust model.
            match unsafe { Component::deserialize_file(engine, path) } {
                Ok(c) => return Ok((c, true)),
                Err(e) => tracing::warn!("discarding unusable cached artifact {}: {e}", path.display()),
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Some(path) = path
            && let Err(e) = store(&component, &path)
        {
            tracing::warn!("cannot write compile cache {}: {e}", path.display());
        }
        Ok((component, false))
    }
}

/// Write atomically (temp file + rename) so a crash never leaves a torn
/// artifact under the final name.
fn store(component: &Component, path: &Path) -> anyhow::Result<()> {
    let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
