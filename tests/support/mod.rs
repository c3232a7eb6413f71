//! Shared helpers for the integration tests: real components built from
//! this repository, the real `airlock` binary, and temporary configs.
#![allow(dead_code)]

pub mod bearer_proxy;
pub mod carriers;
pub mod echo_server;
pub mod http;
pub mod otlp;
pub mod postgres;
pub mod webdriver;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// The Python of the test environment (`scripts/python-env.sh`: the MCP
/// Python client and `openapi-spec-validator`), or `AIRLOCK_TEST_PYTHON`.
pub fn python() -> PathBuf {
    let path = std::env::var_os("AIRLOCK_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/py-mcp/bin/python"));
    assert!(
        path.exists(),
        "these tests need the test environment's Python ({}): run `bash scripts/python-env.sh` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Build the example actions and test components (once per test binary)
/// and return the path of the named component.
pub fn component(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/build-components.sh"))
            .status()
            .expect("run scripts/build-components.sh");
        assert!(status.success(), "building the test components failed");
    });
    let path = target_dir().join("wasm32-wasip2/release").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Compile WAT text into a component file in `dir`.
pub fn wat_component(dir: &Path, name: &str, wat: &str) -> PathBuf {
    let bytes = wat::parse_str(wat).expect("valid WAT");
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, bytes).expect("write component");
    path
}

/// What one run of the `airlock` binary produced.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// The one `error:` line airlock printed.
    pub fn error_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(lines.len(), 1, "expected exactly one error line: {self:?}");
        lines[0]
    }

    pub fn assert_no_panic(&self) {
        assert!(
            !self.stderr.contains("panicked at") || self.stderr.contains("[stderr]"),
            "host panicked: {self:?}"
        );
        assert!(self.code >= 0 && self.code <= 5, "unexpected exit code: {self:?}");
    }
}

/// Run `airlock ARGS...` with a shared compile cache.
pub fn airlock(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(args)
        .env("AIRLOCK_DATA_DIR", target_dir().join("test-airlock-data"))
        .env_remove("AIRLOCK_LOG")
        .output()
        .expect("run airlock");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Write `text` as `airlock.toml` in `dir` and return its path.
pub fn config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("airlock.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// TOML string literal for a path.
pub fn toml_path(p: &Path) -> String {
    toml_string(&p.display().to_string())
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Run `airlock ARGS...` with `stdin` piped in and extra environment; the
/// data directory comes from the arguments or the config.
pub fn airlock_with(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Run {
    use std::io::Write as _;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_airlock"));
    cmd.args(args)
        .env_remove("AIRLOCK_DATA_DIR")
        .env_remove("AIRLOCK_LOG")
        .env_remove("AIRLOCK_MASTER_KEY")
        .env_remove("AIRLOCK_MASTER_KEY_FILE")
        .env_remove("AIRLOCK_TOKEN")
        .env_remove("AIRLOCK_TOKEN_FILE")
        // Nothing of the machine's OpenTelemetry settings or trace.
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_TRACES_EXPORTER")
        .env_remove("TRACEPARENT")
        .env_remove("TRACESTATE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run airlock");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin);
    }
    let out = child.wait_with_output().expect("wait for airlock");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `airlock token create` for an identity of `kind` with `roles`, under
/// `config`'s data directory; returns the token (printed once on stdout).
pub fn create_token(config: &Path, identity: &str, kind: &str, roles: &[&str]) -> String {
    let run = token_create(config, identity, kind, roles, None);
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout.trim().to_string()
}

/// Run `airlock token create`, writing the token to `out` if given.
pub fn token_create(config: &Path, identity: &str, kind: &str, roles: &[&str], out: Option<&Path>) -> Run {
    let config = config.to_str().expect("a UTF-8 config path");
    let mut args = vec![
        "token",
        "create",
        "--identity",
        identity,
        "--kind",
        kind,
        "--config",
        config,
    ];
    if let Some(out) = out {
        args.extend(["--out", out.to_str().expect("a UTF-8 token path")]);
    }
    for r in roles {
        args.extend(["--role", r]);
    }
    airlock_with(&args, b"", &[])
}
