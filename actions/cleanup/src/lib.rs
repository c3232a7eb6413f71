//! `cleanup`: deletes files by prefix. It imports the files capability; the
//! example config deliberately does not grant it, so airlock refuses it.

use airlock_sdk::files;

airlock_sdk::generate!({ path: "wit", world: "cleanup" });

struct Cleanup;

impl Guest for Cleanup {
    fn purge(prefix: String) -> Result<u32, String> {
        let describe = |e: files::Error| e.to_string();
        let mut deleted = 0;
        for entry in files::list(".").map_err(describe)? {
            if entry.kind == files::EntryKind::File && entry.name.starts_with(&prefix) {
                files::delete(&entry.name).map_err(describe)?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

export!(Cleanup);
