//! The status journal: a run's final status row, kept where a crash of the
//! process cannot lose it, before the run's result is acknowledged.
//!
//! Status rows reach the database in batches, a few milliseconds after
//! they are stored (one transaction for many rows). A row only queued in
//! memory when the process is killed is lost, and that is how an
//! acknowledged invocation was left reading `running` forever. So each
//! final row is first appended to this store's own journal file: one
//! `write` of one line, no sync (the kernel keeps it through a crash or
//! SIGKILL of the process; a power failure may lose it, and then recovery
//! rebuilds the row's status from the audit log). Once the batch holding a
//! row is committed, the row may stay (read again, it changes nothing: a
//! final row is never changed, and the store updates only rows that are
//! not final); the journal is emptied once it holds [`CLEAR_AT`] bytes.
//!
//! Each open store has its own journal, `DATA-DIR/status-journal/ID.rows`,
//! under an exclusive `flock` for as long as the store is open (created
//! under another name, locked, then renamed, so no live journal is ever
//! found unlocked). A store that opens, and recovery, adopt the journals of
//! stores that ended (their locks are free): their rows go into the
//! database, and the files go. A store closed cleanly writes its rows out
//! and removes its journal itself.

use super::InvocationRecord;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

/// The journals' directory in the data directory.
pub const DIR: &str = "status-journal";
const SUFFIX: &str = ".rows";
const NEW_SUFFIX: &str = ".new";

/// How much of rows already committed a journal keeps before it is
/// emptied (see [`Journal::clear`]).
pub const CLEAR_AT: u64 = 256 * 1024;

/// This store's journal.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    /// Its length: whole lines only.
    len: u64,
}

fn dir_of(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR)
}

impl Journal {
    /// A new, empty journal in `data_dir`, locked for this store.
    pub fn create(data_dir: &Path) -> std::io::Result<Journal> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = dir_of(data_dir);
        crate::data_dir::create_private_dir(&dir)?;
        let mut nonce = [0u8; 8];
        if getrandom::fill(&mut nonce).is_err() {
            nonce.copy_from_slice(&crate::time::now_micros().to_be_bytes());
        }
        let id = format!("{}-{}", std::process::id(), crate::hex::hex(&nonce));
        let new = dir.join(format!(".{id}{NEW_SUFFIX}"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&new)?;
        let path = dir.join(format!("{id}{SUFFIX}"));
        let made = file
            .try_lock()
            .map_err(|e| match e {
                std::fs::TryLockError::Error(e) => e,
                std::fs::TryLockError::WouldBlock => std::io::Error::other("a new journal is locked by someone else"),
            })
            .and_then(|()| std::fs::rename(&new, &path))
            // Its name must last as long as the rows in it.
            .and_then(|()| File::open(&dir)?.sync_all());
        if let Err(e) = made {
            let _ = std::fs::remove_file(&new);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Journal { file, path, len: 0 })
    }

    /// Append `row` as one line, in one `write`.
    pub fn append(&mut self, row: &InvocationRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(row).map_err(std::io::Error::other)?;
        line.push(b'\n');
        match self.file.write_all(&line) {
            Ok(()) => {
                self.len += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                // No part of a line is left for the next one to run into.
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }

    /// Every row in it is in the database now. The file is emptied once it
    /// holds [`CLEAR_AT`] bytes, not after every batch: a committed row
    /// read again by recovery is written again unchanged (final rows never
    /// change), while emptying it each time made its next line allocate a
    /// new block, which the audit log's next `fdatasync` had to write out
    /// with its own (ext4's ordered journal).
    pub fn clear(&mut self) -> std::io::Result<()> {
        if self.len >= CLEAR_AT {
            self.file.set_len(0)?;
            self.len = 0;
        }
        Ok(())
    }

    /// The store closed with every row in the database.
    pub fn remove(self) -> std::io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

/// The journal of a store that ended, locked by this process until it is
/// removed.
#[derive(Debug)]
pub struct Orphan {
    path: PathBuf,
    file: File,
}

impl Orphan {
    /// Its rows, in the order they were written (a last line cut short by
    /// a power failure is left out: that row's status comes back from the
    /// audit log).
    pub fn rows(&mut self) -> std::io::Result<Vec<InvocationRecord>> {
        let mut bytes = Vec::new();
        self.file.read_to_end(&mut bytes)?;
        Ok(bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect())
    }

    pub fn remove(self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// The journals in `data_dir` whose stores have ended (their locks can be
/// taken). Half-made journals of ended processes are removed on the way.
pub fn orphans(data_dir: &Path) -> std::io::Result<Vec<Orphan>> {
    let dir = dir_of(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let half_made = name.ends_with(NEW_SUFFIX);
        if !half_made && !name.ends_with(SUFFIX) {
            continue;
        }
        let path = entry.path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        if half_made {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        out.push(Orphan { path, file });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Caller, IdentityKind};
    use crate::store::InvocationStatus;

    fn row(id: &str) -> InvocationRecord {
        InvocationRecord {
            id: id.into(),
            action: "a".into(),
            function: "f".into(),
            args: serde_json::json!({}),
            caller: Caller {
                name: "bot".into(),
                kind: IdentityKind::Agent,
                roles: vec![],
                token_id: None,
            },
            state: InvocationStatus::Succeeded,
            approval: None,
            created_at: 1,
            updated_at: 1,
            outcome: None,
            runner: None,
            intent: None,
        }
    }

    #[test]
    fn only_the_journals_of_ended_stores_are_adopted_with_their_rows() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let data = tmp.path();
        let mut live = Journal::create(data)?;
        live.append(&row("live"))?;
        let mut ended = Journal::create(data)?;
        ended.append(&row("one"))?;
        ended.append(&row("two"))?;
        // Committed rows stay until the journal is worth emptying.
        let kept = {
            let mut j = Journal::create(data)?;
            j.append(&row("written"))?;
            j.clear()?;
            j
        };
        let cleared = {
            let mut j = Journal::create(data)?;
            while j.len < CLEAR_AT {
                j.append(&row("committed"))?;
            }
            j.clear()?;
            assert_eq!(std::fs::metadata(&j.path)?.len(), 0, "emptied at CLEAR_AT");
            j
        };
        // Their stores "end": the files stay, their locks go.
        drop(ended);
        drop(kept);
        drop(cleared);
        let mut orphans = orphans(data)?;
        assert_eq!(orphans.len(), 3, "{orphans:?}");
        let mut all: Vec<String> = Vec::new();
        for o in &mut orphans {
            all.extend(o.rows()?.into_iter().map(|r| r.id));
        }
        all.sort();
        assert_eq!(
            all,
            ["one", "two", "written"],
            "the live journal is not adopted; an emptied one holds nothing"
        );
        // Held while adopted: no one else adopts them meanwhile.
        assert!(super::orphans(data)?.is_empty());
        for o in orphans {
            o.remove()?;
        }
        assert_eq!(
            std::fs::read_dir(dir_of(data))?.count(),
            1,
            "only the live journal is left"
        );
        live.remove()?;
        Ok(())
    }

    #[test]
    fn a_torn_last_line_is_left_out() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let data = tmp.path();
        let mut j = Journal::create(data)?;
        j.append(&row("whole"))?;
        j.file.write_all(b"{\"id\":\"torn")?;
        drop(j);
        let mut orphans = orphans(data)?;
        let rows = orphans[0].rows()?;
        assert_eq!(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["whole"]);
        Ok(())
    }
}
