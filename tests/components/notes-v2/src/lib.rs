//! Version 2 of a notes action: files, and now HTTP too.

use airlock_sdk::{files, http};

airlock_sdk::generate!({ path: "wit", world: "notes" });

struct Notes;

impl Guest for Notes {
    fn save(name: String, text: String, tags: Vec<String>) -> Result<u64, String> {
        let body = format!("{}\n{text}", tags.join(","));
        files::write(&format!("{name}.txt"), &body).map_err(|e| e.to_string())?;
        Ok(body.len() as u64)
    }

    fn names() -> Vec<String> {
        files::list(".")
            .map(|l| l.into_iter().map(|e| e.name).collect())
            .unwrap_or_default()
    }

    fn announce(name: String) -> Result<u16, String> {
        let response = http::Request::post("https://announce.example/notes")
            .body(name)
            .send()
            .map_err(|e| e.to_string())?;
        Ok(response.status)
    }
}

export!(Notes);
