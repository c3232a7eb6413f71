//! `airlock new`: scaffold an action crate that builds, runs and tests as
//! it is, to be edited from there.

use airlock::Error;
use std::path::PathBuf;
use std::process::ExitCode;

/// What the new action starts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Template {
    /// A pure function: no capability, no grant.
    Pure,
    /// Notes in the one directory the policy grants.
    Files,
    /// A call to an HTTP API whose origin is a config value.
    Http,
}

#[derive(clap::Args)]
pub struct NewArgs {
    /// The action's name: lowercase words of letters and digits joined by
    /// `-` (also the crate's and the WIT world's name).
    pub name: String,
    #[arg(long, value_enum, default_value = "pure")]
    pub template: Template,
    /// Where to create it (default: ./NAME); must not exist.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Depend on the SDK at this path (default: the `sdk/` of the checkout
    /// this airlock was built from, if it is still there; else the
    /// published `airlock-sdk`).
    #[arg(long, value_name = "DIR", conflicts_with = "sdk_git")]
    pub sdk_path: Option<PathBuf>,
    /// Depend on the SDK in this git repository.
    #[arg(long, value_name = "URL")]
    pub sdk_git: Option<String>,
}

/// The `sdk/` of the checkout this binary was built from.
const BUILT_FROM_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk");

/// WIT's keywords: none can name a package or a world.
const WIT_KEYWORDS: &[&str] = &[
    "as",
    "async",
    "bool",
    "borrow",
    "char",
    "constructor",
    "enum",
    "error-context",
    "export",
    "f32",
    "f64",
    "flags",
    "float32",
    "float64",
    "from",
    "func",
    "future",
    "import",
    "include",
    "interface",
    "list",
    "map",
    "option",
    "own",
    "package",
    "record",
    "resource",
    "result",
    "s16",
    "s32",
    "s64",
    "s8",
    "static",
    "stream",
    "string",
    "tuple",
    "type",
    "u16",
    "u32",
    "u64",
    "u8",
    "use",
    "variant",
    "with",
    "world",
];

/// Rust's keywords and the crate names Cargo keeps for itself.
const RUST_RESERVED: &[&str] = &[
    "abstract",
    "alloc",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "core",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "proc-macro",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
];

pub fn new(a: NewArgs) -> Result<ExitCode, Error> {
    validate(&a.name)?;
    let dir = a.dir.clone().unwrap_or_else(|| PathBuf::from(&a.name));
    if dir.exists() {
        return Err(Error::Usage(format!(
            "{} exists; give a new directory with --dir",
            dir.display()
        )));
    }
    let sdk_dir = |p: &std::path::Path| -> Result<String, Error> {
        let p = std::path::absolute(p).map_err(|e| Error::Usage(format!("--sdk-path: {e}")))?;
        if !p.join("Cargo.toml").is_file() {
            return Err(Error::Usage(format!("--sdk-path {}: no Cargo.toml there", p.display())));
        }
        let p = p.canonicalize().unwrap_or(p);
        Ok(format!("path = {}", toml_string(&p.display().to_string())))
    };
    let sdk = match (&a.sdk_path, &a.sdk_git) {
        (Some(p), _) => sdk_dir(p)?,
        (None, Some(url)) => format!("git = {}", toml_string(url)),
        (None, None) if std::path::Path::new(BUILT_FROM_SDK).join("Cargo.toml").is_file() => {
            sdk_dir(std::path::Path::new(BUILT_FROM_SDK))?
        }
        (None, None) => {
            eprintln!(
                "note: depending on the published airlock-sdk {}; until it is on crates.io, pass --sdk-path DIR (a checkout's sdk/) or --sdk-git URL",
                env!("CARGO_PKG_VERSION")
            );
            format!("version = {}", toml_string(env!("CARGO_PKG_VERSION")))
        }
    };
    let files = scaffold(&a.name, a.template, &sdk);
    // Written beside the destination, then moved there at once: a failure
    // halfway leaves nothing in the way of the next try.
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let staging = parent.join(format!(".{}.new-{}", a.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let written = files.iter().try_for_each(|(path, text)| {
        let path = staging.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::Usage(format!("cannot create {}: {e}", parent.display())))?;
        }
        std::fs::write(&path, text).map_err(|e| Error::Usage(format!("cannot write {}: {e}", path.display())))
    });
    let moved = written.and_then(|()| {
        std::fs::rename(&staging, &dir).map_err(|e| Error::Usage(format!("cannot create {}: {e}", dir.display())))
    });
    if let Err(e) = moved {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    let wasm = a.name.replace('-', "_");
    println!("created {} ({} files)", dir.display(), files.len());
    println!("  cd {}", dir.display());
    println!("  cargo build --release --target wasm32-wasip2   # -> target/wasm32-wasip2/release/{wasm}.wasm");
    println!("  airlock check --config airlock.toml");
    println!("  AIRLOCK=$(command -v airlock) cargo test          # the functions under a temporary policy");
    Ok(ExitCode::SUCCESS)
}

/// Lowercase words of letters and digits, each starting with a letter,
/// joined by `-`: a valid WIT name, crate name and action name at once.
fn validate(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.split('-').all(|w| {
            w.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && w.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        });
    if ok && (WIT_KEYWORDS.contains(&name) || RUST_RESERVED.contains(&name)) {
        return Err(Error::Usage(format!(
            "action name {name:?} is a WIT or Rust keyword; choose another (e.g. `{name}-action`)"
        )));
    }
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "action name {name:?}: use lowercase words of letters and digits, each starting with a letter, joined by `-` (e.g. `ticket-create`)"
        )))
    }
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The crate's files, by path relative to its directory.
fn scaffold(name: &str, template: Template, sdk: &str) -> Vec<(&'static str, String)> {
    let wasm = name.replace('-', "_");
    let extra_deps = match template {
        Template::Http => "serde = { version = \"1\", features = [\"derive\"] }\n",
        _ => "",
    };
    let cargo = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]
# The exports are for the component; on the host their names (`read`,
# `write`, ...) would shadow the C library's, so no unit-test binary.
test = false
doctest = false

[dependencies]
airlock-sdk = {{ {sdk} }}
{extra_deps}
[dev-dependencies]
airlock-sdk = {{ {sdk}, features = ["testing"] }}
serde_json = "1"

# Its own workspace, wherever it is created.
[workspace]
"#
    );
    let (wit, lib, test, policy) = match template {
        Template::Pure => pure(name),
        Template::Files => files(name),
        Template::Http => http(name),
    };
    let config = format!(
        r#"# A config for trying the action: `airlock check --config airlock.toml`,
# `airlock invoke --config airlock.toml {name} FUNCTION --args '{{...}}'`.
# Copy the [actions.{name}] tables into your deployment's config.
[runtime]
data-dir = ".airlock"

[actions.{name}]
description = "{name}"
component = "target/wasm32-wasip2/release/{wasm}.wasm"
{policy}"#
    );
    let readme = format!(
        "# {name}\n\nAn airlock action. Build it with `cargo build --release --target wasm32-wasip2`; the component is\n\
         `target/wasm32-wasip2/release/{wasm}.wasm`. `airlock.toml` grants what it needs; `cargo test` runs its\n\
         functions under a temporary policy through the `airlock` binary (`AIRLOCK=/path/to/airlock` if it is not on\n\
         `PATH`). Its WIT doc comments (`wit/world.wit`) become the tool and parameter descriptions agents see.\n"
    );
    let mut out = vec![
        ("Cargo.toml", cargo),
        ("wit/world.wit", wit),
        ("src/lib.rs", lib),
        ("tests/action.rs", test),
        ("airlock.toml", config),
        ("README.md", readme),
        (".gitignore", "/target\n/.airlock\n".into()),
    ];
    if template == Template::Files {
        // The directory airlock.toml grants.
        out.push(("notes-data/.gitkeep", String::new()));
    }
    out
}

fn pure(name: &str) -> (String, String, String, String) {
    let wit = format!(
        r#"package local:{name};

/// What {name} does, in one sentence: agents read this.
world {name} {{
    /// Greet someone.
    ///
    /// `who`: the name to greet.
    export greet: func(who: string) -> string;
}}
"#
    );
    let lib = format!(
        r#"//! `{name}`: a pure action. It imports no capability, so it needs no grant.

airlock_sdk::generate!({{ path: "wit", world: "{name}" }});

struct Action;

impl Guest for Action {{
    fn greet(who: String) -> String {{
        format!("Hello, {{who}}!")
    }}
}}

export!(Action);
"#
    );
    let test = r#"use airlock_sdk::testing::TestAction;
use serde_json::json;

#[test]
fn greets() {
    let action = TestAction::build().unwrap();
    assert_eq!(action.invoke("greet", json!({"who": "Ada"})).unwrap(), "Hello, Ada!");
}
"#
    .to_string();
    (wit, lib, test, String::new())
}

fn files(name: &str) -> (String, String, String, String) {
    let wit = format!(
        r#"package local:{name};

/// Keeps notes in the directory the policy grants.
world {name} {{
    /// Save a note; returns its size in bytes.
    ///
    /// `name`: the note's name: letters, digits, `-`.
    /// `text`: what to write.
    export save: func(name: string, text: string) -> result<u64, string>;

    /// Read a note back.
    ///
    /// `name`: the note's name.
    export read: func(name: string) -> result<string, string>;
}}
"#
    );
    let lib = format!(
        r#"//! `{name}`: notes in the granted directory (grant: `files`).

use airlock_sdk::files;

airlock_sdk::generate!({{ path: "wit", world: "{name}" }});

fn path(name: &str) -> Result<String, String> {{
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {{
        return Err(format!("note name {{name:?}} must be letters, digits or `-`"));
    }}
    Ok(format!("notes/{{name}}.txt"))
}}

struct Action;

impl Guest for Action {{
    fn save(name: String, text: String) -> Result<u64, String> {{
        files::write(&path(&name)?, &text).map_err(|e| e.to_string())?;
        Ok(text.len() as u64)
    }}

    fn read(name: String) -> Result<String, String> {{
        files::read_to_string(&path(&name)?).map_err(|e| e.to_string())
    }}
}}

export!(Action);
"#
    );
    let test = r#"use airlock_sdk::testing::TestAction;
use serde_json::json;

#[test]
fn saves_and_reads_back_inside_the_grant() {
    let action = TestAction::build().unwrap().files(true);
    assert_eq!(action.invoke("save", json!({"name": "a", "text": "hi"})).unwrap(), 2);
    assert_eq!(action.invoke("read", json!({"name": "a"})).unwrap(), "hi");
    assert!(action.files_dir().join("notes/a.txt").is_file());
    let missing = action.invoke("read", json!({"name": "b"})).unwrap_err();
    assert!(missing.to_string().contains("not found"), "{missing}");
}
"#
    .to_string();
    let policy =
        "\n[actions.NAME.grants]\nfiles = { dir = \"notes-data\", mode = \"read-write\" }\n".replace("NAME", name);
    (wit, lib, test, policy)
}

fn http(name: &str) -> (String, String, String, String) {
    let wit = format!(
        r#"package local:{name};

/// Reads a service's status over HTTP.
world {name} {{
    /// What the service says about itself.
    record status {{
        /// `ok`, `degraded`, ...
        state: string,
        /// Free text from the service.
        message: string,
    }}

    /// Ask the service (the config value `api`) for its status.
    export status: func() -> result<status, string>;
}}
"#
    );
    let lib = format!(
        r#"//! `{name}`: GET `{{api}}/status`, where `api` is a config value (grants:
//! `[actions.{name}.config] api`, an `http` allow rule for it).

use airlock_sdk::{{config, http}};

airlock_sdk::generate!({{ path: "wit", world: "{name}" }});

#[derive(serde::Deserialize)]
struct Answer {{
    state: String,
    #[serde(default)]
    message: String,
}}

struct Action;

impl Guest for Action {{
    fn status() -> Result<Status, String> {{
        let api = config::require("api").map_err(|e| e.to_string())?;
        let answer: Answer = http::Request::get(&format!("{{}}/status", api.trim_end_matches('/')))
            .send()
            .and_then(http::Response::error_for_status)
            .and_then(|r| r.json())
            .map_err(|e| e.to_string())?;
        Ok(Status {{
            state: answer.state,
            message: answer.message,
        }})
    }}
}}

export!(Action);
"#
    );
    let test = r#"use airlock_sdk::testing::TestAction;
use serde_json::json;

#[test]
fn only_the_configured_origin_is_reachable() {
    // The grant allows https://status.example; the config points elsewhere,
    // so the host refuses the request before anything leaves.
    let action = TestAction::build()
        .unwrap()
        .config("api", "https://elsewhere.example")
        .policy("[[actions.action.grants.http.allow]]\ndestination = \"https://status.example\"");
    let refused = action.invoke("status", json!({})).unwrap_err();
    assert!(refused.to_string().contains("denied"), "{refused}");
}
"#
    .to_string();
    let policy = format!(
        "\n# The origin, written once: the code reads it, the grant refers to it.\n[actions.{name}.config]\napi = \"https://status.example\"\n\n[[actions.{name}.grants.http.allow]]\ndestination = \"${{config.api}}\"\nmethods = [\"GET\"]\npath-prefixes = [\"/status\"]\n"
    );
    (wit, lib, test, policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_wit_and_crate_names() {
        assert!(validate("ticket-create").is_ok());
        assert!(validate("a2").is_ok());
        assert!(validate("list-notes").is_ok());
        for bad in [
            "",
            "Ticket",
            "2fa",
            "a--b",
            "a_b",
            "-a",
            "a-",
            "a-2b",
            "a b",
            "list",
            "type",
            "self",
            "std",
            "fn",
            "error-context",
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }
}
