//! What changes between two versions of a component: the imports it adds,
//! drops or moves to another version, the functions it adds, drops or
//! changes, and, against an action's grants, which capabilities the new
//! version would newly use and which it leaves unused.
//!
//! The comparison reads only the two manifests; nothing runs.

use super::{FunctionSig, ImportEntry, Manifest};
use crate::capabilities::Grants;
use crate::capabilities::catalog::{CapabilityKind, ImportClass};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// The difference between an old and a new component.
#[derive(Debug, Clone)]
pub struct ComponentDiff {
    pub old_digest: String,
    pub new_digest: String,
    pub imports_added: Vec<ImportEntry>,
    pub imports_removed: Vec<ImportEntry>,
    /// The same interface at another version: (old, new).
    pub imports_reversioned: Vec<(ImportEntry, ImportEntry)>,
    /// Signatures as WIT writes them.
    pub functions_added: Vec<String>,
    pub functions_removed: Vec<String>,
    /// (old signature, new signature) of functions whose parameters or
    /// result changed.
    pub functions_changed: Vec<(String, String)>,
}

/// How a new version would use an action's grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantUse {
    /// Granted, not imported by the old version, imported by the new one.
    pub newly_used: Vec<CapabilityKind>,
    /// Imported by the new version but not granted: it would be refused.
    pub ungranted: Vec<CapabilityKind>,
    /// Granted but not imported by the new version.
    pub unused: Vec<CapabilityKind>,
}

fn base(name: &str) -> &str {
    name.split_once('@').map_or(name, |(b, _)| b)
}

fn capabilities(m: &Manifest) -> BTreeSet<CapabilityKind> {
    m.imports.iter().filter_map(ImportEntry::capability).collect()
}

impl ComponentDiff {
    pub fn between(old: &Manifest, new: &Manifest) -> ComponentDiff {
        let mut imports_added = Vec::new();
        let mut imports_reversioned = Vec::new();
        for n in &new.imports {
            if old.imports.iter().any(|o| o.name == n.name) {
                continue;
            }
            match old.imports.iter().find(|o| base(&o.name) == base(&n.name)) {
                Some(o) => imports_reversioned.push((o.clone(), n.clone())),
                None => imports_added.push(n.clone()),
            }
        }
        let imports_removed = old
            .imports
            .iter()
            .filter(|o| !new.imports.iter().any(|n| base(&n.name) == base(&o.name)))
            .cloned()
            .collect();
        let mut functions_added = Vec::new();
        let mut functions_changed = Vec::new();
        for n in &new.functions {
            match old.function(&n.name) {
                None => functions_added.push(n.signature_text()),
                Some(o) => {
                    let (os, ns) = (o.signature_text(), n.signature_text());
                    if os != ns || o.params != n.params || o.result != n.result {
                        functions_changed.push((os, ns));
                    }
                }
            }
        }
        let functions_removed = old
            .functions
            .iter()
            .filter(|o| new.function(&o.name).is_none())
            .map(FunctionSig::signature_text)
            .collect();
        ComponentDiff {
            old_digest: old.digest.to_string(),
            new_digest: new.digest.to_string(),
            imports_added,
            imports_removed,
            imports_reversioned,
            functions_added,
            functions_removed,
            functions_changed,
        }
    }

    /// Whether the two components differ in anything this reports.
    pub fn is_empty(&self) -> bool {
        self.imports_added.is_empty()
            && self.imports_removed.is_empty()
            && self.imports_reversioned.is_empty()
            && self.functions_added.is_empty()
            && self.functions_removed.is_empty()
            && self.functions_changed.is_empty()
    }

    /// The new imports a config must acknowledge before the new version
    /// loads: interfaces the old version did not import at any version,
    /// other than the inert baseline.
    pub fn grown_imports(&self) -> Vec<&ImportEntry> {
        self.imports_added
            .iter()
            .filter(|i| i.class != ImportClass::Baseline)
            .collect()
    }

    pub fn to_json(&self, grants: Option<&GrantUse>) -> Value {
        let import = |i: &ImportEntry| {
            json!({
                "name": i.name,
                "class": i.class.name(),
                "capability": i.capability().map(CapabilityKind::key),
            })
        };
        let kinds = |k: &[CapabilityKind]| k.iter().map(|k| k.key()).collect::<Vec<_>>();
        json!({
            "format": "airlock.diff/v1",
            "old": self.old_digest,
            "new": self.new_digest,
            "imports": {
                "added": self.imports_added.iter().map(import).collect::<Vec<_>>(),
                "removed": self.imports_removed.iter().map(import).collect::<Vec<_>>(),
                "reversioned": self.imports_reversioned.iter().map(|(o, n)| json!({
                    "old": o.name, "new": n.name, "class": n.class.name(),
                    "capability": n.capability().map(CapabilityKind::key),
                })).collect::<Vec<_>>(),
            },
            "functions": {
                "added": self.functions_added,
                "removed": self.functions_removed,
                "changed": self.functions_changed.iter().map(|(o, n)| json!({"old": o, "new": n})).collect::<Vec<_>>(),
            },
            "grants": grants.map(|g| json!({
                "newly-used": kinds(&g.newly_used),
                "ungranted": kinds(&g.ungranted),
                "unused": kinds(&g.unused),
            })),
        })
    }

    /// The text form `airlock diff` prints.
    pub fn render(&self, grants: Option<&GrantUse>) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "old  {}\nnew  {}", self.old_digest, self.new_digest);
        if self.is_empty() {
            let _ = writeln!(out, "same imports and functions");
        }
        let class = |i: &ImportEntry| match i.class {
            ImportClass::Capability(k) => format!("capability:{k}"),
            other => other.name().to_string(),
        };
        for i in &self.imports_added {
            let _ = writeln!(out, "+ import    {:<40} {}", i.name, class(i));
        }
        for i in &self.imports_removed {
            let _ = writeln!(out, "- import    {:<40} {}", i.name, class(i));
        }
        for (o, n) in &self.imports_reversioned {
            let _ = writeln!(out, "~ import    {} -> {}  {}", o.name, n.name, class(n));
        }
        for f in &self.functions_added {
            let _ = writeln!(out, "+ function  {f}");
        }
        for f in &self.functions_removed {
            let _ = writeln!(out, "- function  {f}");
        }
        for (o, n) in &self.functions_changed {
            let _ = writeln!(out, "~ function  {o}\n         -> {n}");
        }
        if let Some(g) = grants {
            let list = |k: &[CapabilityKind]| k.iter().map(|k| k.key()).collect::<Vec<_>>().join(", ");
            if !g.newly_used.is_empty() {
                let _ = writeln!(out, "grants newly used: {}", list(&g.newly_used));
            }
            if !g.ungranted.is_empty() {
                let _ = writeln!(out, "imports not granted (it would be refused): {}", list(&g.ungranted));
            }
            if !g.unused.is_empty() {
                let _ = writeln!(out, "grants it would not use: {}", list(&g.unused));
            }
        }
        out
    }
}

impl GrantUse {
    /// How `new` would use `grants`, compared with `old`.
    pub fn of(old: &Manifest, new: &Manifest, grants: &Grants) -> GrantUse {
        let (before, after) = (capabilities(old), capabilities(new));
        // What links (an http grant links credentials too) ...
        let linked = |k: &CapabilityKind| grants.holds(*k);
        // ... and what the config actually grants.
        let written: BTreeSet<CapabilityKind> = grants.describe().into_iter().map(|(k, _)| k).collect();
        GrantUse {
            newly_used: after
                .iter()
                .filter(|k| linked(k) && !before.contains(k))
                .copied()
                .collect(),
            ungranted: after.iter().filter(|k| !linked(k)).copied().collect(),
            unused: written.iter().filter(|k| !after.contains(k)).copied().collect(),
        }
    }
}

/// Whether `accepted` (an `accept-new-imports` list) covers `import`: its
/// full name, its name without the version, its capability's key, or `*`.
pub fn accepts(accepted: &[String], import: &ImportEntry) -> bool {
    accepted.iter().any(|a| {
        a == "*" || a == &import.name || a == base(&import.name) || import.capability().is_some_and(|k| a == k.key())
    })
}
