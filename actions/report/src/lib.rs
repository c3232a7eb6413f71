//! `report`: writes a Markdown report into the granted directory.
//! Needs `log = true` and a read-write `files` grant.

use airlock_sdk::{files, log};

airlock_sdk::generate!({ path: "wit", world: "report" });

struct Report;

impl Guest for Report {
    fn write_report(name: String, findings: Vec<Finding>) -> Result<Written, String> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(format!("report name {name:?} must be letters, digits, `-` or `_`"));
        }
        let mut text = format!("# Report {name}\n\n");
        for f in &findings {
            let severity = match f.severity {
                Severity::Low => "low",
                Severity::Medium => "medium",
                Severity::High => "high",
            };
            text.push_str(&format!("- [{severity}] {}\n", f.title));
        }
        let path = format!("reports/{name}.md");
        files::write(&path, &text).map_err(|e| e.to_string())?;
        log::info(
            "report written",
            &[("path", &path), ("findings", &findings.len().to_string())],
        );
        Ok(Written {
            path,
            bytes: text.len() as u64,
        })
    }
}

export!(Report);
