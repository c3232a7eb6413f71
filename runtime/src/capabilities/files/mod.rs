//! `airlock:cap/files` and `wasi:filesystem`: one directory granted by policy.
//!
//! Both interfaces see the same directory. `airlock:cap/files` is
//! implemented here on cap-std: paths are validated first (relative, no
//! `..`, no NUL), then resolved beneath a directory handle, so neither a
//! crafted path nor a symlink pointing outside can leave the directory.
//! `wasi:filesystem` is wasmtime-wasi's implementation (also cap-std) with
//! the directory preopened as `/` and the same read-only/read-write mode.

mod filesystem;

use super::bindings::airlock::cap::files as wit;
use super::catalog::{AIRLOCK_CAP_0_1, Interface, WASI_0_2};
use super::{Capability, Resolving};
use crate::call::Target;
use crate::host_call::{Decision, Denied, HostCall};
use crate::host_call::{InvocationState, StateBuilder};
use anyhow::Context as _;
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use wasmtime::component::{HasSelf, Linker};

/// Largest file one `read` call returns. Bounds host memory per call.
pub const MAX_READ_BYTES: u64 = 16 << 20;
/// Most entries one `list` call returns. Bounds host memory per call.
pub const MAX_LIST_ENTRIES: usize = 10_000;
/// Longest path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// Where the granted directory appears to `wasi:filesystem` users.
pub const WASI_MOUNT_POINT: &str = "/";

/// Access mode of a files grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    ReadOnly,
    ReadWrite,
}

/// `files = { dir = "...", mode = "read-only" | "read-write" }`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawFilesGrant {
    pub dir: PathBuf,
    #[serde(default)]
    pub mode: Mode,
}

/// A validated files grant: an existing directory and an access mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesGrant {
    pub dir: PathBuf,
    pub mode: Mode,
}

impl FilesGrant {
    pub fn resolve(raw: &RawFilesGrant, resolve: &dyn Fn(&Path) -> PathBuf) -> Result<FilesGrant, String> {
        FilesGrant::new(resolve(&raw.dir), raw.mode)
    }

    /// Check that `dir` is an existing directory.
    pub fn new(dir: PathBuf, mode: Mode) -> Result<FilesGrant, String> {
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(FilesGrant { dir, mode }),
            Ok(_) => Err(format!("grants.files.dir {} is not a directory", dir.display())),
            Err(e) => Err(format!("grants.files.dir {}: {e} (create it first)", dir.display())),
        }
    }
}

/// Per-invocation state: a handle on the granted directory.
pub struct FilesState {
    dir: Dir,
    mode: Mode,
}

/// The `files` capability.
pub struct FilesCapability;

impl Capability for FilesCapability {
    const INTERFACES: &'static [Interface] = &[
        Interface {
            family: &AIRLOCK_CAP_0_1,
            name: "airlock:cap/files",
            meaning: "read/list (and write/delete if read-write) inside the granted directory",
        },
        Interface {
            family: &WASI_0_2,
            name: "wasi:filesystem/types",
            meaning: "filesystem access, served only as the granted directory",
        },
        Interface {
            family: &WASI_0_2,
            name: "wasi:filesystem/preopens",
            meaning: "the granted directory, preopened as `/`",
        },
    ];
    type Raw = RawFilesGrant;
    type Grant = FilesGrant;
    const REACHES_OUTSIDE: bool = true;
    const EXAMPLE_GRANT: &'static str = r#"files = { dir = "PATH", mode = "read-only" }"#;
    const EXAMPLE_FLAG: &'static str = "--grant-dir PATH[:ro]";

    fn resolve(raw: &RawFilesGrant, cx: &Resolving<'_>) -> Result<Option<FilesGrant>, String> {
        FilesGrant::resolve(raw, cx.path).map(Some)
    }

    fn link(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<InvocationState, HasSelf<InvocationState>>(linker, |s| s)?;
        // wasi:filesystem, with every call through the host-call choke point.
        filesystem::link(linker)?;
        Ok(())
    }

    fn prepare(grant: &FilesGrant, state: &mut StateBuilder) -> anyhow::Result<()> {
        let dir = Dir::open_ambient_dir(&grant.dir, ambient_authority())
            .with_context(|| format!("cannot open granted directory {}", grant.dir.display()))?;
        let perms = match grant.mode {
            Mode::ReadOnly => wasmtime_wasi::FsPerms::ReadOnly,
            Mode::ReadWrite => wasmtime_wasi::FsPerms::ReadWrite,
        };
        state
            .wasi
            .preopened_dir(&grant.dir, WASI_MOUNT_POINT, perms)
            .map_err(|e| anyhow::anyhow!("cannot preopen granted directory {}: {e}", grant.dir.display()))?;
        state.slots.insert(FilesState { dir, mode: grant.mode });
        Ok(())
    }

    fn describe(grant: &FilesGrant) -> String {
        let mode = match grant.mode {
            Mode::ReadOnly => "read-only",
            Mode::ReadWrite => "read-write",
        };
        format!("{mode} directory {}", grant.dir.display())
    }
}

/// A guest-supplied path, checked to stay relative and inside the grant.
struct GuestPath(PathBuf);

impl GuestPath {
    fn parse(raw: &str, allow_root: bool) -> Result<GuestPath, wit::FileError> {
        let invalid = |why: &str| wit::FileError::InvalidPath(format!("{}: {why}", printable(raw)));
        if raw.len() > MAX_PATH_BYTES {
            return Err(invalid("longer than 4096 bytes"));
        }
        if raw.contains('\0') {
            return Err(invalid("contains a NUL byte"));
        }
        if raw.starts_with('/') || raw.starts_with('\\') {
            return Err(invalid(
                "absolute paths are not allowed; paths are relative to the granted directory",
            ));
        }
        let mut clean = PathBuf::new();
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(invalid("`..` is not allowed")),
                p => clean.push(p),
            }
        }
        if clean.as_os_str().is_empty() && !allow_root {
            return Err(invalid("names the granted directory itself, not a file"));
        }
        if clean.as_os_str().is_empty() {
            clean.push(".");
        }
        Ok(GuestPath(clean))
    }
}

/// Guest strings are echoed back in errors; keep them short and printable.
fn printable(s: &str) -> String {
    let mut out: String = s.chars().take(200).flat_map(char::escape_debug).collect();
    if s.chars().count() > 200 {
        out.push('…');
    }
    format!("\"{out}\"")
}

fn io_error(path: &str, e: io::Error) -> wit::FileError {
    let p = printable(path);
    match e.kind() {
        io::ErrorKind::NotFound => wit::FileError::NotFound(p),
        io::ErrorKind::PermissionDenied => {
            wit::FileError::InvalidPath(format!("{p}: not reachable inside the granted directory"))
        }
        io::ErrorKind::IsADirectory | io::ErrorKind::NotADirectory => wit::FileError::WrongKind(format!("{p}: {e}")),
        _ => wit::FileError::Io(format!("{p}: {e}")),
    }
}

const IFACE: &str = "airlock:cap/files";

/// The files grant is linked only when held, so a files call without state
/// is a host bug; fail the call rather than panic.
fn files_state(state: &InvocationState) -> Result<&FilesState, wit::FileError> {
    state
        .slots
        .get::<FilesState>()
        .ok_or_else(|| wit::FileError::Io("files capability is not prepared".into()))
}

/// A write under a read-only grant is `read-only`; anything else (an
/// approval gate, an unwritable audit log) is `denied` with the reason.
fn refused(denied: Denied) -> wit::FileError {
    if denied.rule.contains("read-only") {
        wit::FileError::ReadOnly
    } else {
        wit::FileError::Denied(format!("{} ({})", denied.reason, denied.rule))
    }
}

fn decide_read(_: &InvocationState) -> Decision {
    Decision::allow("grants.files")
}

fn decide_write(state: &InvocationState) -> Decision {
    match state.slots.get::<FilesState>().map(|f| f.mode) {
        Some(Mode::ReadWrite) => Decision::allow("grants.files (read-write)"),
        _ => Decision::deny("grants.files (read-only)", "the files grant is read-only"),
    }
}

impl wit::Host for InvocationState {
    async fn read(&mut self, path: String) -> wasmtime::Result<Result<Vec<u8>, wit::FileError>> {
        let call = HostCall::new(IFACE, "read")
            .arg("path", printable(&path))
            .target(Target::Files {
                write: false,
                path: Some(path.clone()),
            });
        let result = self
            .host_call_async(call, decide_read, async |state| {
                let p = GuestPath::parse(&path, false)?;
                let dir = &files_state(state)?.dir;
                let file = dir.open(&p.0).map_err(|e| io_error(&path, e))?;
                let meta = file.metadata().map_err(|e| io_error(&path, e))?;
                if meta.is_dir() {
                    return Err(wit::FileError::WrongKind(format!(
                        "{} is a directory",
                        printable(&path)
                    )));
                }
                if meta.len() > MAX_READ_BYTES {
                    return Err(wit::FileError::TooLarge(MAX_READ_BYTES));
                }
                // The file may grow after the size check: read at most one byte
                // past the cap to detect that without unbounded buffering.
                let mut buf = Vec::with_capacity(meta.len() as usize);
                file.take(MAX_READ_BYTES + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| io_error(&path, e))?;
                if buf.len() as u64 > MAX_READ_BYTES {
                    return Err(wit::FileError::TooLarge(MAX_READ_BYTES));
                }
                Ok(buf)
            })
            .await;
        Ok(result.unwrap_or_else(|denied| Err(refused(denied))))
    }

    async fn write(&mut self, path: String, contents: Vec<u8>) -> wasmtime::Result<Result<(), wit::FileError>> {
        let call = HostCall::new(IFACE, "write")
            .arg("path", printable(&path))
            .arg("bytes", contents.len())
            .arg("blake3", blake3::hash(&contents).to_hex())
            .target(Target::Files {
                write: true,
                path: Some(path.clone()),
            });
        let result = self
            .host_call_async(call, decide_write, async |state| {
                let p = GuestPath::parse(&path, false)?;
                let dir = &files_state(state)?.dir;
                if let Some(parent) = p.0.parent().filter(|p| !p.as_os_str().is_empty()) {
                    dir.create_dir_all(parent).map_err(|e| io_error(&path, e))?;
                }
                dir.write(&p.0, &contents).map_err(|e| io_error(&path, e))
            })
            .await;
        Ok(result.unwrap_or_else(|denied| Err(refused(denied))))
    }

    async fn list(&mut self, path: String) -> wasmtime::Result<Result<Vec<wit::Entry>, wit::FileError>> {
        let call = HostCall::new(IFACE, "list")
            .arg("path", printable(&path))
            .target(Target::Files {
                write: false,
                path: Some(path.clone()),
            });
        let result = self
            .host_call_async(call, decide_read, async |state| {
                let p = GuestPath::parse(&path, true)?;
                let dir = &files_state(state)?.dir;
                let mut entries = Vec::new();
                for entry in dir.read_dir(&p.0).map_err(|e| io_error(&path, e))? {
                    if entries.len() == MAX_LIST_ENTRIES {
                        return Err(wit::FileError::Io(format!(
                            "{} has more than {MAX_LIST_ENTRIES} entries",
                            printable(&path)
                        )));
                    }
                    let entry = entry.map_err(|e| io_error(&path, e))?;
                    let kind = entry.file_type().map_err(|e| io_error(&path, e))?;
                    let (kind, size) = if kind.is_symlink() {
                        (wit::EntryKind::Symlink, 0)
                    } else if kind.is_dir() {
                        (wit::EntryKind::Directory, 0)
                    } else if kind.is_file() {
                        (wit::EntryKind::File, entry.metadata().map(|m| m.len()).unwrap_or(0))
                    } else {
                        (wit::EntryKind::Other, 0)
                    };
                    entries.push(wit::Entry {
                        name: entry.file_name().to_string_lossy().into_owned(),
                        kind,
                        size,
                    });
                }
                entries.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(entries)
            })
            .await;
        Ok(result.unwrap_or_else(|denied| Err(refused(denied))))
    }

    async fn delete(&mut self, path: String) -> wasmtime::Result<Result<(), wit::FileError>> {
        let call = HostCall::new(IFACE, "delete")
            .arg("path", printable(&path))
            .target(Target::Files {
                write: true,
                path: Some(path.clone()),
            });
        let result = self
            .host_call_async(call, decide_write, async |state| {
                let p = GuestPath::parse(&path, false)?;
                let dir = &files_state(state)?.dir;
                dir.remove_file(&p.0).map_err(|e| io_error(&path, e))
            })
            .await;
        Ok(result.unwrap_or_else(|denied| Err(refused(denied))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_must_stay_relative_and_inside() {
        assert!(GuestPath::parse("a/b.txt", false).is_ok());
        assert!(GuestPath::parse("./a//b.txt", false).is_ok());
        for bad in ["/etc/passwd", "../x", "a/../../x", "a/..", "", ".", "a\0b", "\\x"] {
            assert!(GuestPath::parse(bad, false).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(GuestPath::parse(".", true).map(|p| p.0).ok(), Some(PathBuf::from(".")));
    }
}
