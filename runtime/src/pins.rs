//! The components an action's digest pin has named on this data directory,
//! so a changed pin can be reviewed as a change.
//!
//! When an action with a `digest` pin loads, its component's bytes are kept
//! in `DATA-DIR/components/<hex>.wasm` and `components/pins.json` records
//! the pinned digest and the one before it. When the pin moves to a new
//! component, the load compares the two ([`crate::manifest::diff`]): an
//! upgrade that imports an interface the old version did not is refused
//! unless the config lists it in `accept-new-imports`, and the console
//! shows what changed. Only pinned actions are tracked: an unpinned action
//! already accepts whatever its file holds.
//!
//! The record is per data directory (per node); the first load a data
//! directory sees has nothing to compare with.

use crate::manifest::Digest;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Where an action's pin stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PinEntry {
    pub current: String,
    #[serde(default)]
    pub previous: Option<String>,
}

/// `DATA-DIR/components`.
#[derive(Debug, Clone)]
pub struct PinHistory {
    dir: PathBuf,
}

impl PinHistory {
    pub fn new(data_dir: &Path) -> PinHistory {
        PinHistory {
            dir: data_dir.join("components"),
        }
    }

    fn index(&self) -> PathBuf {
        self.dir.join("pins.json")
    }

    /// The record; an unreadable one is an error, never an empty record
    /// (that would make every upgrade look like a first load).
    fn read_index(&self) -> Result<BTreeMap<String, PinEntry>, String> {
        match std::fs::read(self.index()) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{} is damaged ({e}); move it aside to start the record afresh (the next load of each pinned action is then a first load)",
                    self.index().display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(format!("cannot read {}: {e}", self.index().display())),
        }
    }

    /// Where `action`'s pin stands, if it was ever loaded here.
    pub fn entry(&self, action: &str) -> Result<Option<PinEntry>, String> {
        Ok(self.read_index()?.remove(action))
    }

    /// Where the bytes of `digest` are kept.
    pub fn path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("blake3:").unwrap_or(digest);
        self.dir.join(format!("{hex}.wasm"))
    }

    /// The kept bytes of `digest`, when they are still there and intact.
    pub fn bytes(&self, digest: &str) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.path(digest)).ok()?;
        (Digest::of(&bytes).to_string() == digest).then_some(bytes)
    }

    /// Record that `action` runs the component at `source` (digest
    /// `digest`), provided its entry is still `seen`, what the load
    /// compared against. Processes on one data directory take turns (an
    /// exclusive lock on `components/pins.lock`), so none loses another's
    /// entry, and a record that moved meanwhile is not overwritten.
    pub fn commit(&self, action: &str, digest: &str, seen: &Option<PinEntry>, source: &Path) -> Result<(), String> {
        let io = |e: std::io::Error| format!("{}: {e}", self.dir.display());
        crate::data_dir::create_private_dir(&self.dir).map_err(io)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("pins.lock"))
            .map_err(io)?;
        lock.lock().map_err(io)?;
        let mut index = self.read_index()?;
        if index.get(action) != seen.as_ref() {
            return Err(format!(
                "the pin record of `{action}` changed while it loaded (another airlock on this data directory); load it again"
            ));
        }
        if self.bytes(digest).is_none() {
            // The pin guarantees these are the bytes that loaded.
            let bytes = std::fs::read(source).map_err(|e| format!("{}: {e}", source.display()))?;
            if Digest::of(&bytes).to_string() != digest {
                return Err(format!("{} changed while it loaded", source.display()));
            }
            write_atomically(&self.path(digest), &bytes).map_err(io)?;
        }
        let entry = match index.remove(action) {
            Some(e) if e.current == digest => e,
            Some(e) => PinEntry {
                current: digest.to_string(),
                previous: Some(e.current),
            },
            None => PinEntry {
                current: digest.to_string(),
                previous: None,
            },
        };
        index.insert(action.to_string(), entry);
        let text = serde_json::to_vec_pretty(&index).map_err(|e| e.to_string())?;
        write_atomically(&self.index(), &text).map_err(io)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
