//! The crate's module layering, enforced.
//!
//! The `## Module map` section of the crate doc in `runtime/src/lib.rs` is
//! the one place the layering of the library's top-level modules is
//! written down: one line per layer, each module with the modules it may
//! use, read from the top as a request travels (the service first, the
//! leaves last), every module above (on an earlier line than) the modules
//! it uses. This test keeps the code and that map in step:
//!
//! 1. every top-level module lib.rs declares is on the map exactly once,
//!    and the map names no other module;
//! 2. the map is one-way: a line depends only on modules of later lines,
//!    so its order is a valid layering and it has no cycles;
//! 3. every reference from one top-level module to another in the library
//!    sources (`crate::x`, `use crate::{x, y}`, `super::` paths that leave
//!    the module, `$crate::x` in macros, items re-exported at the crate
//!    root such as `crate::Error`) is allowed by the map.
//!
//! The scanner is deliberately small and std-only: it blanks comments and
//! string and char literals, tokenizes what is left and resolves each
//! path that starts at `crate`, `$crate`, `self` or `super`. A string that
//! is nothing but such a path (`#[serde(with = "crate::time::codec")]`) is
//! kept, since it names code. Anything it cannot classify is reported as a
//! failure rather than skipped, and it must find a minimum number of
//! cross-module references, so it cannot silently pass by finding nothing.
//! What would let code reach another module out of its sight is refused
//! outright: another name for the crate root (`use crate as root;`,
//! `extern crate self as x;`), a path a macro finishes from its arguments
//! (`crate::$m::X`, or `crate` passed to a macro on its own), `#[path]`
//! (nested `cfg_attr` and raw identifiers included), `include!` (or a path
//! to it), `#[macro_use]` and a `macro_rules!` in lib.rs (see `untraceable`).
//!
//! The binary crate (`src/main.rs` and `src/cli/`) is not part of the
//! library and is not checked.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The scan must find at least this many cross-module references in the
/// library; fewer means the scanner is broken (there are hundreds today).
const MIN_REFERENCES: usize = 200;

/// ... and at least this many distinct `A → B` module edges.
const MIN_DISTINCT_EDGES: usize = 50;

/// Where to look at the map, for failure messages.
const MAP_LOCATION: &str = "the module map (`## Module map`) in runtime/src/lib.rs";

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

/// Check 1: the map and lib.rs name the same modules, each once.
#[test]
fn module_map_lists_every_module_once() {
    let krate = Crate::load();
    let map = krate.map_or_panic();
    let scan = krate.scan();

    let mut on_map: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for line in &map {
        for module in &line.modules {
            on_map.entry(module.as_str()).or_default().push(line.lib_line);
        }
    }

    let mut problems = Vec::new();
    for module in &krate.index.modules {
        match on_map.get(module.as_str()) {
            None => {
                let uses = scan.dependencies_of(module);
                let suggestion = if uses.is_empty() {
                    format!("add `{module}` to the leaves line (it uses no other module)")
                } else {
                    let uses = uses.into_iter().collect::<Vec<_>>().join(", ");
                    format!(
                        "add a line `{module} → {uses}` at the right layer (above the lines of the modules it uses)"
                    )
                };
                problems.push(format!(
                    "module `{module}` is declared in lib.rs but missing from the module map: {suggestion}"
                ));
            }
            Some(lines) if lines.len() > 1 => problems.push(format!(
                "module `{module}` is on the module map {} times (lib.rs line {}): keep it on exactly one line",
                lines.len(),
                join_numbers(lines)
            )),
            Some(_) => {}
        }
    }
    for (module, lines) in &on_map {
        if !krate.index.modules.contains(*module) {
            problems.push(format!(
                "the module map lists `{module}` (lib.rs line {}), which lib.rs does not declare: \
                 remove it from the map or fix its spelling",
                join_numbers(lines)
            ));
        }
    }
    for line in &map {
        for dep in &line.deps {
            if !krate.index.modules.contains(dep) {
                problems.push(format!(
                    "the module map line at lib.rs:{} names the dependency `{dep}`, which lib.rs does not declare: \
                     remove it or fix its spelling",
                    line.lib_line
                ));
            }
        }
    }

    fail_if_any(
        &problems,
        "The module map in runtime/src/lib.rs and the modules lib.rs declares disagree.",
        "Every `mod` declared in lib.rs needs exactly one line on the module map (`//! ## Module map` in the crate \
         doc), and the map may name nothing else.",
    );
}

/// Check 2: the map is layered: dependencies point only to later lines.
#[test]
fn module_map_is_one_way() {
    let krate = Crate::load();
    let map = krate.map_or_panic();
    let problems = layering_problems(&map);
    fail_if_any(
        &problems,
        "The module map in runtime/src/lib.rs is not one-way.",
        "Each line of the module map (`//! ## Module map` in the crate doc) may depend only on modules defined on \
         later lines (below it), so the map's order is the layering and it has no cycles. If two modules need each \
         other, \
         move the shared part into a module below both.",
    );
}

/// Check 3: every cross-module reference in the code is allowed by the map.
#[test]
fn code_follows_module_map() {
    let krate = Crate::load();
    let map = krate.map_or_panic();
    let scan = krate.scan();

    let distinct: BTreeSet<(&str, &str)> = scan
        .references
        .iter()
        .map(|r| (r.from.as_str(), r.to.as_str()))
        .collect();
    assert!(
        scan.references.len() >= MIN_REFERENCES && distinct.len() >= MIN_DISTINCT_EDGES,
        "the layering scanner found only {} cross-module references ({} distinct edges) under {}; expected at \
         least {MIN_REFERENCES} ({MIN_DISTINCT_EDGES} distinct). The scanner in runtime/tests/layering.rs is \
         probably broken (or the crate has changed shape): fix the scanner rather than lowering the minimum.",
        scan.references.len(),
        distinct.len(),
        krate.display(&krate.src_dir),
    );

    // Which modules each module may use, per the map.
    let mut allowed: BTreeMap<&str, (BTreeSet<&str>, usize, &str)> = BTreeMap::new();
    for line in &map {
        for module in &line.modules {
            let entry = allowed
                .entry(module.as_str())
                .or_insert_with(|| (BTreeSet::new(), line.lib_line, &line.text));
            entry.0.extend(line.deps.iter().map(String::as_str));
        }
    }

    let mut report = Vec::new();
    // Anything the scanner could not classify is a failure of its own.
    for problem in &scan.problems {
        report.push(format!("cannot check: {problem}"));
    }

    let mut violations: BTreeMap<(&str, &str), Vec<&Reference>> = BTreeMap::new();
    for reference in &scan.references {
        let permitted = allowed
            .get(reference.from.as_str())
            .is_some_and(|(deps, _, _)| deps.contains(reference.to.as_str()));
        if !permitted {
            violations
                .entry((reference.from.as_str(), reference.to.as_str()))
                .or_default()
                .push(reference);
        }
    }
    // A module with no map line at all: one entry, with what it uses.
    let mut unmapped: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for ((from, to), references) in &violations {
        let Some((_, lib_line, line_text)) = allowed.get(from) else {
            unmapped.entry(from).or_default().push(to);
            continue;
        };
        let mut text =
            format!("`{from} → {to}` is not allowed by the map (`{from}`'s line, lib.rs:{lib_line}: `{line_text}`):");
        for r in references {
            text.push_str(&format!(
                "\n      {}:{}: `{}`    {}",
                r.file, r.line, r.path, r.source_line
            ));
        }
        text.push_str(&format!(
            "\n    either import from a module below `{from}` (see the module map in runtime/src/lib.rs) or, if the \
             layering should change, change the map: add `{to}` to `{from}`'s line (`{to}`'s line must stay \
             below `{from}`'s)."
        ));
        report.push(text);
    }
    for (from, uses) in &unmapped {
        report.push(format!(
            "module `{from}` has no line on the map, so none of its references to other modules are allowed: add a \
             line `{from} → {}` at the right layer",
            uses.join(", ")
        ));
    }

    fail_if_any(
        &report,
        "The code does not follow the module map in runtime/src/lib.rs.",
        "The module map (`//! ## Module map` in the crate doc) is the layering of the crate: a module may use \
         only the modules its map line lists.",
    );
}

/// Not a check: prints every cross-module edge the scanner finds, one map
/// line per module, as a starting point when editing the map:
/// `cargo test -p airlock --test layering -- --ignored --nocapture`.
#[test]
#[ignore = "a tool, not a check; run with --ignored --nocapture"]
fn print_observed_edges() {
    let krate = Crate::load();
    let scan = krate.scan();
    let mut by_module: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for module in &krate.index.modules {
        by_module.entry(module.as_str()).or_default();
    }
    for r in &scan.references {
        *by_module
            .entry(r.from.as_str())
            .or_default()
            .entry(r.to.as_str())
            .or_default() += 1;
    }
    println!("observed module dependencies ({} references):", scan.references.len());
    for (module, deps) in &by_module {
        let deps: Vec<String> = deps.iter().map(|(d, n)| format!("{d} ({n})")).collect();
        println!("{module:<14} → {}", deps.join(", "));
    }
    for problem in &scan.problems {
        println!("unclassified: {problem}");
    }
}

/// The scanner itself: comments and literals are blanked, lifetimes are
/// not, and every kind of path that can leave a module is resolved.
#[test]
fn scanner_finds_exactly_the_real_references() {
    let snippet = r##"//! crate docs mention crate::fake_doc
use crate::{a::b, c};
use super::super::d; // crate::fake_line_comment
use super::sibling::Thing;
/* block /* nested crate::fake_nested */ still a comment: crate::fake_block */
fn f<'a>(x: &'a crate::e::T, y: &'static str) -> &'a str {
    let quote = '\''; let slash = '/'; let smile = '\u{1F600}'; let ch = 'x';
    let s = "a string with crate::fake_string \" and crate::fake_escaped";
    let r = r#"raw crate::fake_raw " still raw"#;
    let b = br"bytes crate::fake_byte_raw";
    crate::f::new::<'a>(quote, "crate::x::also_fake yes")
}
#[serde(with = "crate::g::codec")]
mod inner {
    use super::super::super::h::{self, More};
    use super::super::Own;
}
macro_rules! m { () => { $crate::i::run() }; }
fn z() { let t = crate::Thing::new(); crate::x::Own::touch(); crate::nothing::here(); }
use crate::{j::{k, l}, self::a::deep};
"##;
    let index = ModuleIndex {
        modules: ["a", "c", "d", "e", "f", "g", "h", "i", "j", "x"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        reexports: [("Thing".to_string(), "j".to_string())].into_iter().collect(),
        root_globs: Vec::new(),
    };
    // The snippet is the file x/y.rs, module `x::y`.
    let (references, problems) = scan_file(snippet, "x/y.rs", &index);
    let found: Vec<(usize, &str, &str)> = references
        .iter()
        .map(|r| (r.line, r.to.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            (2, "a", "crate::a::b"),
            (2, "c", "crate::c"),
            (3, "d", "crate::d"),
            (6, "e", "crate::e::T"),
            (11, "f", "crate::f::new"),
            (13, "g", "crate::g::codec"),
            (15, "h", "crate::h"),
            (15, "h", "crate::h::More"),
            (18, "i", "crate::i::run"),
            (19, "j", "crate::Thing::new"),
            (20, "j", "crate::j::k"),
            (20, "j", "crate::j::l"),
            (20, "a", "crate::a::deep"),
        ],
        "the scanner found the wrong references in the self-test snippet: {references:#?}"
    );
    assert!(
        references.iter().all(|r| r.from == "x"),
        "every reference is from module `x`: {references:#?}"
    );
    assert_eq!(
        problems.len(),
        1,
        "exactly one unclassifiable reference expected: {problems:#?}"
    );
    assert!(
        problems[0].contains("`crate::nothing`") && problems[0].contains(":19"),
        "the unknown `crate::nothing` must be reported with its line: {problems:#?}"
    );

    // A `super` that climbs above the crate root is reported, not ignored.
    let (references, problems) = scan_file("use super::super::a;", "x.rs", &index);
    assert!(
        references.is_empty() && problems.len() == 1,
        "{references:#?} {problems:#?}"
    );
    // `x/mod.rs` is module `x`: one `super` reaches the root.
    let (references, problems) = scan_file("use super::{c, x::y};", "x/mod.rs", &index);
    let found: Vec<&str> = references.iter().map(|r| r.to.as_str()).collect();
    assert_eq!(found, vec!["c"], "{references:#?} {problems:#?}");
    assert!(problems.is_empty(), "{problems:#?}");
}

/// What would hide a reference from the scanner is refused, each with its
/// line: another name for the crate root, a module moved by `#[path]`,
/// pasted code, macros in textual scope across modules.
#[test]
fn scanner_refuses_what_it_cannot_follow() {
    let index = ModuleIndex {
        modules: ["a", "x"].iter().map(|s| s.to_string()).collect(),
        reexports: BTreeMap::new(),
        root_globs: Vec::new(),
    };
    let snippet = r#"use crate as root;
use crate::{self as top, a};
#[path = "elsewhere.rs"]
mod moved;
#[cfg_attr(test, path = "t.rs")]
mod tested;
#[macro_use]
mod macros;
include!("more.rs");
extern crate self as airlock;
#[utoipa::path(get, path = "/v1/x")]
fn handler(v: Small) -> u8 { v.0 as u8 }
macro_rules! local { () => { self::inner() } }
impl Small { fn get(self) -> u8 { self as u8 } }
#[serde(with = "crate::a::codec")]
struct S;
"#;
    // Refused in this order: the constructs, then the aliases.
    expect_scan(
        snippet,
        &index,
        &[(2, "a"), (15, "a")],
        &[
            (3, "#[path"),
            (5, "#[path"),
            (7, "#[macro_use]"),
            (9, "`include`"),
            (10, "extern crate self"),
            (1, "`root`"),
            (2, "`top`"),
        ],
    );

    // Paths a macro builds from its arguments, nested `cfg_attr`, a renamed
    // `include!`, raw identifiers; and what stays allowed.
    let snippet = r#"macro_rules! m { ($x:ident) => { crate::$x::Item } }
macro_rules! n { ($r:tt) => { $r::a::X } }
n!(crate);
n!(super);
#[cfg_attr(all(), cfg_attr(all(), path = "x.rs"))]
mod nested;
use std::include as paste;
#[r#path = "raw.rs"]
mod raw;
pub(crate) fn f(x: u8) -> bool { x != 1 }
pub(in crate::a) fn g() {}
pub(super) fn h() {}
fn k() { super::super::a::run(); }
pub(in crate) fn l() {}
macro_rules! o { ($a:ident, $m:ident) => { #[$a = "x.rs"] mod p; $m!("y.rs"); } }
use std::{include as paste2};
fn q() { let v = crate::a::$x; }
"#;
    expect_scan(
        snippet,
        &index,
        &[(11, "a"), (13, "a"), (17, "a")],
        &[
            (3, "`crate` stands alone"),
            (4, "`super` stands alone"),
            (5, "#[path"),
            (7, "`include`"),
            (8, "#[path"),
            (15, "`#[$a = ...]`"),
            (15, "`$m!`"),
            (16, "`include`"),
            (1, "macro variable"),
        ],
    );

    // A top-level module's `super` is the crate root.
    let (_, problems) = scan_file("use super as up;\nuse super::{self as up2};", "x.rs", &index);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems[0].contains("`up`") && problems[1].contains("`up2`"),
        "{problems:#?}"
    );

    // In lib.rs a `macro_rules!` is in scope of every later module; in a
    // module it is not refused (above).
    let lib = tokenize(&strip_comments_and_literals(
        "macro_rules! everywhere { () => {} }\n#[macro_use]\nextern crate serde;\npub mod a;\n",
    ));
    let found: Vec<usize> = untraceable(&lib, true).into_iter().map(|(line, _)| line).collect();
    assert_eq!(found, vec![1, 2]);
}

/// Scans `snippet` as the file `x/y.rs`: it must find exactly `references`
/// (line, module) and refuse exactly `refused` (line, a word the message
/// holds), in that order.
fn expect_scan(snippet: &str, index: &ModuleIndex, references: &[(usize, &str)], refused: &[(usize, &str)]) {
    let (found, problems) = scan_file(snippet, "x/y.rs", index);
    let found: Vec<(usize, &str)> = found.iter().map(|r| (r.line, r.to.as_str())).collect();
    assert_eq!(found, references, "{problems:#?}");
    let lines: Vec<String> = problems
        .iter()
        .map(|p| p.split(':').nth(1).unwrap_or_default().to_string())
        .collect();
    let expected: Vec<String> = refused.iter().map(|(line, _)| line.to_string()).collect();
    assert_eq!(lines, expected, "{problems:#?}");
    for (problem, (_, word)) in problems.iter().zip(refused) {
        assert!(problem.contains(word), "{problem} should name {word}");
    }
}

/// The map parser accepts the documented format and rejects what it must.
#[test]
fn map_parser_reads_the_documented_format() {
    let lib = "//! Crate doc.
//!
//! ## Module map
//!
//! Prose about the map (it may mention ```code```).
//!
//! ```text
//! service → metrics, error
//! metrics -> error, hex
//!
//! error   → time     (the error type, (nested) comment)
//! time, hex          (leaves: no crate modules)
//! ```
//!
//! ```text
//! not → the, map
//! ```

pub mod error;
";
    let map = parse_module_map(lib).unwrap_or_else(|e| panic!("the sample map must parse: {e:#?}"));
    let lines: Vec<(Vec<&str>, Vec<&str>, usize)> = map
        .iter()
        .map(|l| {
            (
                l.modules.iter().map(String::as_str).collect(),
                l.deps.iter().map(String::as_str).collect(),
                l.lib_line,
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            (vec!["service"], vec!["metrics", "error"], 8),
            (vec!["metrics"], vec!["error", "hex"], 9),
            (vec!["error"], vec!["time"], 11),
            (vec!["time", "hex"], vec![], 12),
        ]
    );
    assert!(layering_problems(&map).is_empty(), "{:#?}", layering_problems(&map));

    let bad = "//! ## Module map\n//! ```text\n//! a → b\n//! b → a, b\n//! c d\n//! ```\n";
    let err = parse_module_map(bad).expect_err("`c d` is not a module name");
    assert!(err.iter().any(|e| e.contains("`c d`")), "{err:#?}");
    let map = parse_module_map("//! ## Module map\n//! ```text\n//! a → b\n//! b → a, b\n//! ```\n")
        .unwrap_or_else(|e| panic!("a cyclic map still parses: {e:#?}"));
    let problems = layering_problems(&map);
    assert_eq!(
        problems.len(),
        2,
        "`b → a` (earlier line) and `b → b` (same line): {problems:#?}"
    );
    assert!(parse_module_map("//! no map here\n").is_err());
}

// ---------------------------------------------------------------------------
// The crate: lib.rs, its map, its sources
// ---------------------------------------------------------------------------

struct Crate {
    /// `runtime/src`.
    src_dir: PathBuf,
    /// lib.rs, as written.
    lib_text: String,
    index: ModuleIndex,
}

/// What the crate root defines: its modules and re-exported items.
#[derive(Debug)]
struct ModuleIndex {
    /// Top-level modules declared in lib.rs (`mod x;`).
    modules: BTreeSet<String>,
    /// Items re-exported at the crate root (`pub use error::Error;`):
    /// item name → the module it comes from.
    reexports: BTreeMap<String, String>,
    /// `pub use x::*;` at the crate root: names it brings in cannot be
    /// traced, so each is reported.
    root_globs: Vec<String>,
}

impl Crate {
    fn load() -> Crate {
        let src_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let lib_path = src_dir.join("lib.rs");
        let lib_text =
            fs::read_to_string(&lib_path).unwrap_or_else(|e| panic!("cannot read {}: {e}", lib_path.display()));
        let index = module_index(&lib_text);
        assert!(
            !index.modules.is_empty(),
            "found no `mod x;` declarations in {}; the layering test expects top-level modules declared one per \
             line at column 0 (`pub mod x;`, `mod x;`, `pub(crate) mod x;`)",
            lib_path.display()
        );
        Crate {
            src_dir,
            lib_text,
            index,
        }
    }

    fn map_or_panic(&self) -> Vec<MapLine> {
        parse_module_map(&self.lib_text).unwrap_or_else(|errors| {
            panic!(
                "cannot read {MAP_LOCATION}:\n  - {}\n\nThe map is the first ```text block after a line \
                 `//! ## Module map` in the crate doc. Each line: module names separated by commas, optionally \
                 followed by `→` (or `->`) and the comma-separated modules they may use; `( ... )` is a comment.",
                errors.join("\n  - ")
            )
        })
    }

    /// A path as shown in messages: relative to the workspace, e.g.
    /// `runtime/src/host_call/mod.rs`.
    fn display(&self, path: &Path) -> String {
        let base = self.src_dir.parent().and_then(Path::parent).unwrap_or(Path::new(""));
        path.strip_prefix(base).unwrap_or(path).display().to_string()
    }

    /// Scans every library source file.
    fn scan(&self) -> Scan {
        let mut files = Vec::new();
        collect_rs_files(&self.src_dir, &mut files);
        files.sort();
        let src_shown = self.display(&self.src_dir);
        let mut scan = Scan::default();
        for glob in &self.index.root_globs {
            scan.problems.push(format!(
                "lib.rs re-exports `{glob}::*` at the crate root; the test cannot tell which module a `crate::Name` \
                 from it belongs to: re-export the items by name"
            ));
        }
        // lib.rs is not scanned for references (its `mod` and `use` items
        // are the index), but nothing in it may hide one.
        let lib_tokens = tokenize(&strip_comments_and_literals(&self.lib_text));
        for (line, what) in untraceable(&lib_tokens, true) {
            scan.problems.push(format!("{src_shown}/lib.rs:{line}: {what}"));
        }
        for (i, token) in lib_tokens.iter().enumerate() {
            let Tok::Word(w) = &token.tok else { continue };
            // `extern crate self as x` is `untraceable`'s to report.
            let after = |k: usize, what: &str| matches!(&lib_tokens[k].tok, Tok::Word(x) if x == what);
            if !is_path_root(w) || (i > 0 && (lib_tokens[i - 1].tok == Tok::PathSep || after(i - 1, "crate"))) {
                continue;
            }
            let mut paths = Vec::new();
            if parse_path(&lib_tokens, i, Vec::new(), &mut paths).is_ok() {
                for path in paths.iter().filter(|p| p.segs.is_empty()) {
                    if let Some(alias) = &path.alias {
                        scan.problems
                            .push(format!("{src_shown}/lib.rs:{}: {}", path.line, root_alias(alias)));
                    }
                }
            }
        }
        for path in files {
            let rel = path
                .strip_prefix(&self.src_dir)
                .expect("collected files are under src/");
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let rel = rel.join("/");
            // lib.rs is the crate root, main.rs and cli/ the binary crate.
            if rel == "lib.rs" || rel == "main.rs" || rel.starts_with("cli/") {
                continue;
            }
            let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let (mut references, problems) = scan_file(&text, &rel, &self.index);
            let shown = self.display(&path);
            for r in &mut references {
                r.file = shown.clone();
            }
            scan.references.extend(references);
            // `scan_file` names files by their path under src/.
            scan.problems
                .extend(problems.into_iter().map(|p| format!("{src_shown}/{p}")));
        }
        scan
    }
}

#[derive(Debug, Default)]
struct Scan {
    references: Vec<Reference>,
    problems: Vec<String>,
}

impl Scan {
    fn dependencies_of(&self, module: &str) -> BTreeSet<&str> {
        self.references
            .iter()
            .filter(|r| r.from == module)
            .map(|r| r.to.as_str())
            .collect()
    }
}

/// One reference from a top-level module to another.
#[derive(Debug)]
struct Reference {
    /// The referring file, for messages.
    file: String,
    line: usize,
    /// The referring top-level module.
    from: String,
    /// The referred-to top-level module.
    to: String,
    /// The path as resolved from the crate root, e.g. `crate::audit::AuditLog`.
    path: String,
    /// The source line, trimmed, for messages.
    source_line: String,
}

fn collect_rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            collect_rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

// ---------------------------------------------------------------------------
// lib.rs: declared modules, root re-exports, the module map
// ---------------------------------------------------------------------------

/// Reads the top-level `mod x;` declarations and root `use` items of lib.rs.
fn module_index(lib_text: &str) -> ModuleIndex {
    let code = strip_comments_and_literals(lib_text);
    let mut modules = BTreeSet::new();
    for line in code.lines() {
        // Column 0 only: a declaration of the crate root, not of an inline module.
        let mut rest = line.trim_end();
        while rest.starts_with("#[") {
            match rest.find(']') {
                Some(end) => rest = rest[end + 1..].trim_start(),
                None => break,
            }
        }
        for vis in ["pub(crate) ", "pub(super) ", "pub "] {
            if let Some(r) = rest.strip_prefix(vis) {
                rest = r.trim_start();
                break;
            }
        }
        if let Some(name) = rest.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
            let name = name.trim();
            if is_identifier(name) {
                modules.insert(name.to_string());
            }
        }
    }

    // `use` items at the crate root (brace depth 0) make `crate::Name` valid.
    let mut reexports = BTreeMap::new();
    let mut root_globs = Vec::new();
    let tokens = tokenize(&code);
    let mut depth = 0usize;
    for (i, token) in tokens.iter().enumerate() {
        match &token.tok {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => depth = depth.saturating_sub(1),
            Tok::Word(w) if w == "use" && depth == 0 => {
                let mut paths = Vec::new();
                if parse_path(&tokens, i + 1, Vec::new(), &mut paths).is_err() {
                    continue;
                }
                for path in paths {
                    let Some(module) = path.segs.first().filter(|m| modules.contains(*m)) else {
                        continue;
                    };
                    if path.glob {
                        root_globs.push(path.segs.join("::"));
                    } else if path.segs.len() >= 2 {
                        let name = path
                            .alias
                            .clone()
                            .unwrap_or_else(|| path.segs[path.segs.len() - 1].clone());
                        if name != "_" {
                            reexports.insert(name, module.clone());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    ModuleIndex {
        modules,
        reexports,
        root_globs,
    }
}

/// One line of the module map.
#[derive(Debug)]
struct MapLine {
    /// The modules this line defines.
    modules: Vec<String>,
    /// The modules they may use.
    deps: Vec<String>,
    /// 1-based line in lib.rs, for messages.
    lib_line: usize,
    /// The line as written, trimmed.
    text: String,
}

/// Parses the first ```text block after `//! ## Module map`.
fn parse_module_map(lib_text: &str) -> Result<Vec<MapLine>, Vec<String>> {
    /// The text of a `//!` line, without the marker and one space.
    fn doc(line: &str) -> Option<&str> {
        line.trim_start()
            .strip_prefix("//!")
            .map(|rest| rest.strip_prefix(' ').unwrap_or(rest))
    }
    let lines: Vec<&str> = lib_text.lines().collect();
    let heading = lines
        .iter()
        .position(|l| doc(l).is_some_and(|d| d.trim() == "## Module map"))
        .ok_or_else(|| vec!["there is no `//! ## Module map` heading in the crate doc".to_string()])?;
    let mut i = heading + 1;
    loop {
        match lines.get(i).and_then(|l| doc(l)) {
            Some(d) if d.trim().starts_with("```text") => break,
            Some(_) => i += 1,
            None => {
                return Err(vec![format!(
                    "no ```text block follows `## Module map` (lib.rs:{}) within the crate doc",
                    heading + 1
                )]);
            }
        }
    }
    let open = i;
    let mut map = Vec::new();
    let mut errors = Vec::new();
    i += 1;
    loop {
        let Some(content) = lines.get(i).and_then(|l| doc(l)) else {
            errors.push(format!(
                "the module map's ```text block (lib.rs:{}) is never closed with ```",
                open + 1
            ));
            break;
        };
        if content.trim() == "```" {
            break;
        }
        match parse_map_line(content) {
            Ok(Some((modules, deps))) => map.push(MapLine {
                modules,
                deps,
                lib_line: i + 1,
                text: content.trim().to_string(),
            }),
            Ok(None) => {}
            Err(e) => errors.push(format!("lib.rs:{}: `{}`: {e}", i + 1, content.trim())),
        }
        i += 1;
    }
    if map.is_empty() && errors.is_empty() {
        errors.push(format!("the module map's ```text block (lib.rs:{}) is empty", open + 1));
    }
    if errors.is_empty() { Ok(map) } else { Err(errors) }
}

/// A map line's modules and the modules they may use.
type LineNames = (Vec<String>, Vec<String>);

/// One map line: `a, b → c, d (comment)`. `None` for a blank line.
fn parse_map_line(line: &str) -> Result<Option<LineNames>, String> {
    // Drop `( ... )` comments, which may nest.
    let mut text = String::new();
    let mut depth = 0usize;
    for ch in line.chars() {
        match ch {
            '(' => depth += 1,
            ')' if depth == 0 => return Err("`)` without `(`".to_string()),
            ')' => depth -= 1,
            _ if depth == 0 => text.push(ch),
            _ => {}
        }
    }
    if depth != 0 {
        return Err("`(` without `)`".to_string());
    }
    let text = text.replace("->", "→");
    if text.trim().is_empty() {
        return Ok(None);
    }
    let mut sides = text.split('→');
    let left = sides.next().unwrap_or_default();
    let right = sides.next();
    if sides.next().is_some() {
        return Err("more than one arrow".to_string());
    }
    let names = |side: &str, what: &str| -> Result<Vec<String>, String> {
        let mut names = Vec::new();
        for name in side.split(',').map(str::trim) {
            if !is_identifier(name) {
                return Err(format!(
                    "`{name}` is not a module name ({what}: comma-separated module names)"
                ));
            }
            names.push(name.to_string());
        }
        Ok(names)
    };
    let modules = names(left, "before the arrow")?;
    let deps = match right {
        Some(right) if !right.trim().is_empty() => names(right, "after the arrow")?,
        _ => Vec::new(),
    };
    Ok(Some((modules, deps)))
}

/// Check 2's rules: every dependency is a module of a later line.
fn layering_problems(map: &[MapLine]) -> Vec<String> {
    let mut first_line: BTreeMap<&str, usize> = BTreeMap::new();
    for (n, line) in map.iter().enumerate() {
        for module in &line.modules {
            first_line.entry(module.as_str()).or_insert(n);
        }
    }
    let mut problems = Vec::new();
    for (n, line) in map.iter().enumerate() {
        for module in &line.modules {
            for dep in &line.deps {
                let text = format!("lib.rs:{}: `{module} → {dep}`", line.lib_line);
                match first_line.get(dep.as_str()) {
                    Some(&d) if d == n => problems.push(format!(
                        "{text}: `{dep}` is on the same line; modules of one line may not use each other: give \
                         `{dep}` a line of its own below this one"
                    )),
                    Some(&d) if d < n => problems.push(format!(
                        "{text}: `{dep}` is defined on an earlier line (lib.rs:{}); move `{dep}`'s line below \
                         `{module}`'s, or, if `{dep}` also uses `{module}` (a cycle), break the cycle",
                        map[d].lib_line
                    )),
                    Some(_) => {}
                    None => problems.push(format!(
                        "{text}: `{dep}` has no line of its own on the map; add one below `{module}`'s"
                    )),
                }
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------
// The scanner
// ---------------------------------------------------------------------------

/// Finds the cross-module references in one file; `rel` is its path under
/// `src/` with `/` separators. Returns the references and the references
/// it could not classify (as `rel:line: ...` messages).
fn scan_file(text: &str, rel: &str, index: &ModuleIndex) -> (Vec<Reference>, Vec<String>) {
    let mut references = Vec::new();
    let mut problems = Vec::new();
    let module_path = file_module_path(rel);
    let Some(own) = module_path.first().cloned() else {
        problems.push(format!("{rel}: not inside a module"));
        return (references, problems);
    };
    if !index.modules.contains(&own) {
        problems.push(format!(
            "{rel}: belongs to no module declared in lib.rs (`{own}`): declare the module or delete the file"
        ));
        return (references, problems);
    }
    let source_lines: Vec<&str> = text.lines().collect();
    let tokens = tokenize(&strip_comments_and_literals(text));
    problems.extend(
        untraceable(&tokens, false)
            .into_iter()
            .map(|(line, what)| format!("{rel}:{line}: {what}")),
    );

    // Inline modules (`mod tests { ... }`) change where `super` leads:
    // (name, brace depth outside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let prev_is_sep = i > 0 && tokens[i - 1].tok == Tok::PathSep;
        let next_is_sep = tokens.get(i + 1).is_some_and(|t| t.tok == Tok::PathSep);
        // `use crate as root;`, `use super as up;` (or a cast, `self as u8`).
        let next_is_as = tokens
            .get(i + 1)
            .is_some_and(|t| matches!(&t.tok, Tok::Word(w) if w == "as"));
        match &tokens[i].tok {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            Tok::Word(w) if w == "mod" => {
                if let (Some(Tok::Word(name)), Some(Tok::Punct('{'))) =
                    (tokens.get(i + 1).map(|t| &t.tok), tokens.get(i + 2).map(|t| &t.tok))
                {
                    inline.push((name.clone(), depth));
                }
            }
            Tok::Word(w) if is_path_root(w) && (next_is_sep || next_is_as) && !prev_is_sep => {
                let here: Vec<String> = module_path
                    .iter()
                    .cloned()
                    .chain(inline.iter().map(|(n, _)| n.clone()))
                    .collect();
                let mut paths = Vec::new();
                match parse_path(&tokens, i, here, &mut paths) {
                    Ok(next) => {
                        for path in paths {
                            classify(path, &own, index, rel, &source_lines, &mut references, &mut problems);
                        }
                        i = next;
                        continue;
                    }
                    Err(e) => problems.push(format!("{rel}:{}: cannot parse this path: {e}", tokens[i].line)),
                }
            }
            _ => {}
        }
        i += 1;
    }
    (references, problems)
}

/// What aliasing the crate root would hide, and what to do instead.
fn root_alias(alias: &str) -> String {
    format!(
        "`{alias}` is another name for the crate root, so the test cannot tell which module a `{alias}::x` path \
         uses: write `crate::x` instead"
    )
}

/// The constructs that would let code reach another module in a way this
/// scanner cannot follow, as `(line, what)`. Each is refused rather than
/// traced, since none is needed:
/// - `#[path = "..."]` (also under `cfg_attr`): a module whose file is not
///   where its name says, so the scanner would charge its code to the wrong
///   module;
/// - `include!(...)`: code pasted from another file;
/// - `#[macro_use]`: a module's macros in textual scope of later modules,
///   used with no path at all;
/// - `extern crate self as name`: a second name for the crate root;
/// - `crate`, `$crate` or `super` on its own (not starting a path, not a
///   visibility): a macro can take it as an argument and build a path;
/// - in lib.rs (`crate_root`), `macro_rules!`: a macro defined there is in
///   textual scope of every module declared after it.
fn untraceable(tokens: &[Token], crate_root: bool) -> Vec<(usize, String)> {
    let word = |i: usize| match tokens.get(i).map(|t| &t.tok) {
        Some(Tok::Word(w)) => Some(w.as_str()),
        _ => None,
    };
    let punct = |i: usize, p: char| tokens.get(i).is_some_and(|t| t.tok == Tok::Punct(p));
    let mut found = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let line = token.line;
        // An attribute: `#[...]` or `#![...]`.
        if punct(i, '#') {
            let open = if punct(i + 1, '!') { i + 2 } else { i + 1 };
            if !punct(open, '[') {
                continue;
            }
            // Its first word, and the first word of each attribute a
            // `cfg_attr(...)` would apply (nested ones too).
            let heads = attribute_heads(tokens, open + 1);
            for head in heads {
                if punct(head, '$') && word(head + 1).is_some() && punct(head + 2, '=') {
                    found.push((
                        line,
                        "an attribute named by a macro variable (`#[$a = ...]`) could be `path`: name the attribute"
                            .to_string(),
                    ));
                }
                let next_is_path_sep = tokens.get(head + 1).is_some_and(|t| t.tok == Tok::PathSep);
                match word(head) {
                    Some("path") if punct(head + 1, '=') => found.push((
                        line,
                        "`#[path = ...]` puts a module in a file its name does not lead to, so the test would \
                         charge its code to the wrong module: move the file to where the module's name says"
                            .to_string(),
                    )),
                    Some("macro_use") if !next_is_path_sep => found.push((
                        line,
                        "`#[macro_use]` lets later modules use these macros with no path the test can see: \
                         import them by path (`use crate::module::name;` after `pub(crate) use name;`)"
                            .to_string(),
                    )),
                    _ => {}
                }
            }
        } else if word(i) == Some("include") {
            found.push((
                line,
                "`include` (the macro, a path to it, a name it is renamed from or passed as) pastes another \
                 file's code out of the test's sight: make that file a module (and name nothing `include`)"
                    .to_string(),
            ));
        } else if word(i) == Some("extern") && word(i + 1) == Some("crate") && word(i + 2) == Some("self") {
            found.push((
                line,
                "`extern crate self` gives the crate root a second name, out of the test's sight: write \
                 `crate::x` paths"
                    .to_string(),
            ));
        } else if punct(i, '$') && word(i + 1).is_some() && punct(i + 2, '!') && !punct(i + 3, '=') {
            found.push((
                line,
                "a macro called by a macro variable (`$m!`) could be any macro, `include!` among them: call it by \
                 its name"
                    .to_string(),
            ));
        } else if matches!(word(i), Some("crate" | "$crate" | "super")) && !is_rooted_path_or_visibility(tokens, i) {
            found.push((
                line,
                format!(
                    "`{}` stands alone here (a macro argument, or a path the test cannot follow), so a macro could \
                     build a path from it out of the test's sight: write the whole path (`crate::x::Item`)",
                    word(i).unwrap_or_default()
                ),
            ));
        } else if crate_root && word(i) == Some("macro_rules") && punct(i + 1, '!') {
            found.push((
                line,
                "a `macro_rules!` in lib.rs is in scope of every module declared after it, which then use it \
                 with no path the test can see: define it in the module it belongs to and import it by path"
                    .to_string(),
            ));
        }
    }
    found
}

/// The first word of the attribute whose content starts at `start`, and,
/// when it is `cfg_attr(condition, attr, ...)`, the heads of each `attr`
/// (recursively: a `cfg_attr` may hold another).
fn attribute_heads(tokens: &[Token], start: usize) -> Vec<usize> {
    let mut heads = vec![start];
    let is_cfg_attr = tokens
        .get(start)
        .is_some_and(|t| t.tok == Tok::Word("cfg_attr".to_string()))
        && tokens.get(start + 1).is_some_and(|t| t.tok == Tok::Punct('('));
    if !is_cfg_attr {
        return heads;
    }
    let mut depth = 0usize;
    for (j, token) in tokens.iter().enumerate().skip(start + 1) {
        match &token.tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            // The first part is the condition; every later one an attribute.
            Tok::Punct(',') if depth == 1 => heads.extend(attribute_heads(tokens, j + 1)),
            _ => {}
        }
    }
    heads
}

/// Whether the `crate`, `$crate` or `super` at `tokens[i]` starts a path
/// the scanner follows (`crate::x`, `super as up`), continues one made only
/// of roots (`super::super`), or is a visibility (`pub(crate)`,
/// `pub(super)`) or `extern crate`.
fn is_rooted_path_or_visibility(tokens: &[Token], i: usize) -> bool {
    let tok = |k: usize| tokens.get(k).map(|t| &t.tok);
    let is_word = |k: usize, w: &str| matches!(tok(k), Some(Tok::Word(x)) if x == w);
    let after_sep = i > 0 && tok(i - 1) == Some(&Tok::PathSep);
    if after_sep {
        // Only after another root: `super::super`, `crate::super` is an error anyway.
        return i >= 2 && matches!(tok(i - 2), Some(Tok::Word(w)) if is_path_root(w));
    }
    let starts_path = tok(i + 1) == Some(&Tok::PathSep) || is_word(i + 1, "as");
    // `pub(crate)`, `pub(super)`, `pub(in crate)`, `pub(in super)`.
    let visibility = i >= 2
        && ((tok(i - 1) == Some(&Tok::Punct('(')) && is_word(i - 2, "pub"))
            || (is_word(i - 1, "in") && tok(i - 2) == Some(&Tok::Punct('('))))
        && tok(i + 1) == Some(&Tok::Punct(')'));
    let extern_crate = is_word(i, "crate") && i >= 1 && is_word(i - 1, "extern");
    starts_path || visibility || extern_crate
}

fn is_path_root(word: &str) -> bool {
    matches!(word, "crate" | "$crate" | "super" | "self")
}

/// Turns one resolved path into a reference, nothing (own module), or a
/// problem.
fn classify(
    path: ResolvedPath,
    own: &str,
    index: &ModuleIndex,
    rel: &str,
    source_lines: &[&str],
    references: &mut Vec<Reference>,
    problems: &mut Vec<String>,
) {
    let shown = if path.segs.is_empty() {
        "crate".to_string()
    } else {
        format!("crate::{}{}", path.segs.join("::"), if path.glob { "::*" } else { "" })
    };
    let Some(name) = path.segs.first() else {
        if path.glob {
            problems.push(format!(
                "{rel}:{}: `crate::*` imports everything at the crate root; name the items",
                path.line
            ));
        }
        if let Some(alias) = &path.alias {
            problems.push(format!("{rel}:{}: {}", path.line, root_alias(alias)));
        } else if !path.glob {
            problems.push(format!(
                "{rel}:{}: this path names the crate root itself, not an item in a module: name the item",
                path.line
            ));
        }
        return;
    };
    let target = if index.modules.contains(name) {
        name.clone()
    } else if let Some(module) = index.reexports.get(name) {
        module.clone()
    } else {
        problems.push(format!(
            "{rel}:{}: `crate::{name}` names no module (nor an item lib.rs re-exports): `{shown}`",
            path.line
        ));
        return;
    };
    if target != own {
        references.push(Reference {
            file: rel.to_string(),
            line: path.line,
            from: own.to_string(),
            to: target,
            path: shown,
            source_line: source_lines.get(path.line - 1).map_or("", |l| l.trim()).to_string(),
        });
    }
}

/// `host_call/state.rs` → `host_call::state`; `a/mod.rs` → `a`.
fn file_module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    if let Some(last) = parts.last_mut() {
        *last = last.trim_end_matches(".rs").to_string();
        if last == "mod" {
            parts.pop();
        }
    }
    parts
}

/// A path resolved to absolute segments from the crate root.
#[derive(Debug)]
struct ResolvedPath {
    /// From the crate root: `crate::a::b` → `["a", "b"]`.
    segs: Vec<String>,
    /// Ends in `::*`.
    glob: bool,
    /// `... as alias`.
    alias: Option<String>,
    line: usize,
}

/// Parses a path (or `use` tree) starting at `tokens[i]`, resolving
/// `crate`, `$crate`, `self` and `super` against `base` (the absolute path
/// of the module the path is written in, or the prefix of a `{ }` group).
/// Pushes every path it names to `out`; returns the index after it.
fn parse_path(tokens: &[Token], mut i: usize, base: Vec<String>, out: &mut Vec<ResolvedPath>) -> Result<usize, String> {
    let line = tokens.get(i).map_or(0, |t| t.line);
    let mut segs = base;
    loop {
        match tokens.get(i).map(|t| &t.tok) {
            Some(Tok::Word(w)) if w == "crate" || w == "$crate" => segs.clear(),
            Some(Tok::Word(w)) if w == "super" => {
                if segs.pop().is_none() {
                    return Err("`super` goes above the crate root".to_string());
                }
            }
            Some(Tok::Word(w)) if w == "self" => {}
            Some(Tok::Word(w)) => segs.push(w.clone()),
            Some(Tok::Punct('*')) => {
                out.push(ResolvedPath {
                    segs,
                    glob: true,
                    alias: None,
                    line,
                });
                return Ok(i + 1);
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                loop {
                    match tokens.get(i).map(|t| &t.tok) {
                        Some(Tok::Punct('}')) => return Ok(i + 1),
                        None => return Err("unclosed `{` group".to_string()),
                        _ => {}
                    }
                    i = parse_path(tokens, i, segs.clone(), out)?;
                    match tokens.get(i).map(|t| &t.tok) {
                        Some(Tok::Punct(',')) => i += 1,
                        Some(Tok::Punct('}')) => {}
                        other => return Err(format!("unexpected {other:?} in a `{{ }}` group")),
                    }
                }
            }
            other => return Err(format!("unexpected {other:?} in a path")),
        }
        i += 1;
        let only_roots = matches!(tokens.get(i - 1).map(|t| &t.tok), Some(Tok::Word(w)) if is_path_root(w));
        if only_roots
            && tokens.get(i).is_some_and(|t| t.tok == Tok::PathSep)
            && tokens.get(i + 1).is_some_and(|t| t.tok == Tok::Punct('$'))
        {
            return Err(
                "a macro variable continues this path, so which module it names is known only where the macro \
                 is used: write the whole path in the macro"
                    .to_string(),
            );
        }
        let continues = tokens.get(i).is_some_and(|t| t.tok == Tok::PathSep)
            && tokens
                .get(i + 1)
                .is_some_and(|t| matches!(&t.tok, Tok::Word(_) | Tok::Punct('{') | Tok::Punct('*')));
        if continues {
            i += 1;
            continue;
        }
        let mut alias = None;
        if tokens.get(i).is_some_and(|t| t.tok == Tok::Word("as".to_string()))
            && let Some(Tok::Word(a)) = tokens.get(i + 1).map(|t| &t.tok)
        {
            alias = Some(a.clone());
            i += 2;
        }
        out.push(ResolvedPath {
            segs,
            glob: false,
            alias,
            line,
        });
        return Ok(i);
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// An identifier, keyword or number; `$crate` is one word.
    Word(String),
    /// `::`
    PathSep,
    Punct(char),
}

#[derive(Debug)]
struct Token {
    tok: Tok,
    /// 1-based.
    line: usize,
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_') && chars.all(is_ident_char)
}

/// Splits code (already stripped of comments and literals) into tokens.
fn tokenize(code: &str) -> Vec<Token> {
    let c: Vec<char> = code.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if is_ident_char(ch) || (ch == '$' && c.get(i + 1).is_some_and(|&n| is_ident_char(n))) {
            let start = i;
            i += 1;
            while i < c.len() && is_ident_char(c[i]) {
                i += 1;
            }
            let mut word: String = c[start..i].iter().collect();
            // A raw identifier (`r#path`) is its name (raw strings are
            // blanked before this).
            if word == "r" && c.get(i) == Some(&'#') && c.get(i + 1).is_some_and(|&n| is_ident_char(n)) {
                let name = i + 1;
                i += 1;
                while i < c.len() && is_ident_char(c[i]) {
                    i += 1;
                }
                word = c[name..i].iter().collect();
            }
            if word.starts_with('$') && word != "$crate" {
                // A macro variable: `$` and the name, like any other punctuation.
                tokens.push(Token {
                    tok: Tok::Punct('$'),
                    line,
                });
                tokens.push(Token {
                    tok: Tok::Word(word[1..].to_string()),
                    line,
                });
            } else {
                tokens.push(Token {
                    tok: Tok::Word(word),
                    line,
                });
            }
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            tokens.push(Token {
                tok: Tok::PathSep,
                line,
            });
            i += 2;
        } else {
            tokens.push(Token {
                tok: Tok::Punct(ch),
                line,
            });
            i += 1;
        }
    }
    tokens
}

/// Blanks comments, string literals and char literals, keeping newlines
/// (so line numbers stay right) and lifetimes. A string literal that is
/// exactly a path from `crate`, `self` or `super` (serde's
/// `with = "crate::time::codec"`) is kept without its quotes: it names code.
fn strip_comments_and_literals(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, chars: &[char]| {
        out.extend(chars.iter().map(|&ch| if ch == '\n' { '\n' } else { ' ' }));
    };
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        // Each branch: where the piece starting at `i` ends, and whether it is code to keep.
        let (end, keep) = if ch == '/' && next == Some('/') {
            // Line comment, doc comments included.
            (c[i..].iter().position(|&x| x == '\n').map_or(c.len(), |p| i + p), false)
        } else if ch == '/' && next == Some('*') {
            // Block comment; they nest.
            let (mut j, mut depth) = (i + 2, 1);
            while j < c.len() && depth > 0 {
                if c[j] == '/' && c.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if c[j] == '*' && c.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            (j.min(c.len()), false)
        } else if let Some(end) = raw_string_end(&c, i) {
            (end, false)
        } else if ch == '"' {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            let content: String = c[i + 1..j.min(c.len())].iter().collect();
            if is_path_string(&content) {
                out.push(' ');
                out.push_str(&content);
                out.push(' ');
                i = (j + 1).min(c.len());
                continue;
            }
            ((j + 1).min(c.len()), false)
        } else if ch == '\'' {
            // A char literal is blanked; a lifetime or label keeps its quote.
            char_literal_end(&c, i).map_or((i + 1, true), |end| (end, false))
        } else {
            (i + 1, true)
        };
        if keep {
            out.extend(&c[i..end]);
        } else {
            blank(&mut out, &c[i..end]);
        }
        i = end;
    }
    out
}

/// If `c[i]` starts a raw string (`r"…"`, `r#"…"#`, `br"…"`, `cr#"…"#`),
/// the index after it.
fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
    if c[i] != 'r' {
        return None;
    }
    // `r` must start a token, or follow a `b`/`c` prefix that does.
    let starts_token = |k: usize| k == 0 || !is_ident_char(c[k - 1]);
    if !(starts_token(i) || (i >= 1 && matches!(c[i - 1], 'b' | 'c') && starts_token(i - 1))) {
        return None;
    }
    let mut j = i + 1;
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if c.get(j) != Some(&'"') {
        return None; // `r#ident` or a plain identifier
    }
    j += 1;
    while j < c.len() {
        if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(c.len())
}

/// If `c[i]` (a `'`) starts a char literal (`'a'`, `'\n'`, `'\''`,
/// `'\u{1F600}'`), the index after it; `None` for a lifetime or label.
fn char_literal_end(c: &[char], i: usize) -> Option<usize> {
    if c.get(i + 1) == Some(&'\\') {
        // Skip the backslash and the escaped character, then find the close.
        let from = i + 3;
        let close = c.get(from..)?.iter().take(12).position(|&x| x == '\'')?;
        Some(from + close + 1)
    } else if c.get(i + 2) == Some(&'\'') && c.get(i + 1).is_some_and(|&x| x != '\n') {
        Some(i + 3)
    } else {
        None
    }
}

/// `crate::time::codec`, `super::x`: a string that is only a path.
fn is_path_string(s: &str) -> bool {
    let parts: Vec<&str> = s.split("::").collect();
    parts.len() >= 2 && matches!(parts[0], "crate" | "self" | "super") && parts.iter().all(|p| is_identifier(p))
}

// ---------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------

/// `[3, 3, 7]` → `3, 7`.
fn join_numbers(numbers: &[usize]) -> String {
    let unique: BTreeSet<usize> = numbers.iter().copied().collect();
    unique.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
}

/// Fails with every problem at once, headed and footed by explanations.
fn fail_if_any(problems: &[String], headline: &str, explanation: &str) {
    if !problems.is_empty() {
        panic!("{headline}\n\n  - {}\n\n{explanation}\n", problems.join("\n  - "));
    }
}
