//! Version 1 of a notes action: files only.

use airlock_sdk::files;

airlock_sdk::generate!({ path: "wit", world: "notes" });

struct Notes;

impl Guest for Notes {
    fn save(name: String, text: String) -> Result<u64, String> {
        files::write(&format!("{name}.txt"), &text).map_err(|e| e.to_string())?;
        Ok(text.len() as u64)
    }

    fn names() -> Vec<String> {
        files::list(".")
            .map(|l| l.into_iter().map(|e| e.name).collect())
            .unwrap_or_default()
    }
}

export!(Notes);
