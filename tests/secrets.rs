//! Credentials never leave the host: the vault, the credentials and http
//! capabilities, and a hostile component that tries every way out.
//!
//! Every test that runs the hostile `exfil` component ends by scanning
//! everything observable (the CLI's stdout and stderr, which carry the
//! action's result, logs and captured output, and every file under the
//! test directory, which holds the data directory and the action's granted
//! directory) for the secret in raw, base64, percent-encoded and hex form.

mod support;

use airlock::outbound::Redactor;
use airlock::outbound::redact::MARKER;
use hmac::Mac as _;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use support::carriers::{CARRIERS, Carrier, Choices, encode_layers, reveals};
use support::echo_server::{EchoServer, base64, percent};
use support::{Run, airlock_with, component, toml_path};

/// Chosen to differ in every encoding: `/`, `+`, `=`, `:` and space change
/// under percent-encoding, `~` and `*` differ between percent- and
/// form-encoding, and its length is not a multiple of 3.
const SECRET: &str = "tok_LIVE_9f8e7d6c/5b4a+3=2:1-s3cr3t~x*y z";
const SIGNING_KEY: &str = "whsec_0123456789abcdefABCDEF";

/// Everything the host logs about requests, at the most verbose level
/// (compiler internals excluded: they say nothing about requests).
const HOST_TRACING: &str =
    "airlock=trace,hyper=trace,hyper_util=trace,rustls=trace,wasmtime_wasi_http=trace,wasmtime_wasi=trace";

/// Every form of `carrier` a leak could take.
fn leak_forms(carrier: &[u8]) -> Vec<String> {
    let mut forms = vec![
        String::from_utf8_lossy(carrier).into_owned(),
        base64(carrier),
        base64(carrier).trim_end_matches('=').to_string(),
        percent(carrier),
        percent(carrier).to_lowercase(),
        carrier.iter().map(|b| format!("{b:02x}")).collect(),
    ];
    // The carrier inside a longer base64 string, at each byte alignment.
    for offset in 0..3 {
        let mut data = vec![b'x'; offset];
        data.extend_from_slice(carrier);
        let encoded = base64(&data);
        let core = &encoded[(offset * 8).div_ceil(6)..((offset + carrier.len()) * 8) / 6];
        forms.push(core.to_string());
        forms.push(core.replace('+', "-").replace('/', "_"));
    }
    forms
}

/// Every value that carries a secret: the secrets themselves and the wire
/// values they are injected as (a Basic pair and its base64, a
/// form-encoded query value), so double encodings are caught too.
fn carriers() -> Vec<Vec<u8>> {
    let pair = format!("robot:{SECRET}");
    vec![
        SECRET.as_bytes().to_vec(),
        SIGNING_KEY.as_bytes().to_vec(),
        pair.clone().into_bytes(),
        base64(pair.as_bytes()).into_bytes(),
        url::form_urlencoded::byte_serialize(SECRET.as_bytes())
            .collect::<String>()
            .into_bytes(),
    ]
}

/// Fail if any form of any secret appears in the runs' output or in any file
/// under `dir`.
fn assert_no_leak(dir: &Path, runs: &[&Run]) {
    let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        haystacks.push((format!("run {i} stdout"), run.stdout.clone().into_bytes()));
        haystacks.push((format!("run {i} stderr"), run.stderr.clone().into_bytes()));
    }
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                haystacks.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    assert!(files >= 3, "expected the vault, key and config under {}", dir.display());
    for carrier in carriers() {
        for form in leak_forms(&carrier) {
            for (name, bytes) in &haystacks {
                assert!(
                    !bytes.windows(form.len()).any(|w| w == form.as_bytes()),
                    "secret leaked as {form:?} in {name}"
                );
            }
        }
    }
}

/// A test directory: a data directory with the secrets stored, a granted
/// directory, echo servers, and a config for the hostile component.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    /// The main API: the credential's only destination.
    api: EchoServer,
    /// Another allowed origin (a redirect target).
    other: EchoServer,
}

impl Setup {
    fn new() -> Setup {
        Setup::with(|_| String::new())
    }

    /// `extra` adds TOML (given the servers' ports) to the exfil action.
    fn with(extra: impl Fn(&Setup) -> String) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("granted")).unwrap();
        let mut setup = Setup {
            config: dir.path().join("airlock.toml"),
            dir,
            api: EchoServer::start(SECRET),
            other: EchoServer::start("unused"),
        };
        let (api, other) = (setup.api.port, setup.other.port);
        let text = format!(
            r#"
[runtime]
data-dir = {data}

[actions.exfil]
component = {component}
[actions.exfil.grants]
log = true
files = {{ dir = {granted}, mode = "read-write" }}

[actions.exfil.grants.credentials.api]
secret = "api-token"
destinations = ["http://127.0.0.1:{api}"]
inject = {{ header = "authorization", template = "Bearer {{}}" }}

[actions.exfil.grants.credentials.basic]
secret = "api-token"
destinations = ["http://127.0.0.1:{api}"]
inject = {{ basic-user = "robot" }}

[actions.exfil.grants.credentials.query]
secret = "api-token"
destinations = ["http://127.0.0.1:{api}"]
inject = {{ query = "api_key" }}

[actions.exfil.grants.credentials.webhook]
secret = "webhook-key"
sign = "hmac-sha256"

[actions.exfil.grants.http]
timeout-ms = 5000
[[actions.exfil.grants.http.allow]]
destination = "http://127.0.0.1:{api}"
methods = ["GET", "POST"]
path-prefixes = ["/echo", "/reflect", "/redirect", "/reflect-redirect", "/tickets", "/gzip", "/gzip2", "/loop", "/chunked"]
allow-private = true
[[actions.exfil.grants.http.allow]]
destination = "http://127.0.0.1:{other}"
allow-private = true
[[actions.exfil.grants.http.allow]]
destination = "http://localhost:{api}"
[[actions.exfil.grants.http.allow]]
destination = "http://169.254.169.254"
[[actions.exfil.grants.http.allow]]
destination = "http://[::ffff:a9fe:a9fe]"
[[actions.exfil.grants.http.allow]]
destination = "http://[::1]:{api}"
[[actions.exfil.grants.http.inject]]
destination = "http://127.0.0.1:{api}"
credential = "api"
"#,
            data = toml_path(&setup.dir.path().join("data")),
            component = toml_path(&component("exfil")),
            granted = toml_path(&setup.dir.path().join("granted")),
        ) + &extra(&setup);
        std::fs::write(&setup.config, text).unwrap();
        setup.store("api-token", SECRET);
        setup.store("webhook-key", SIGNING_KEY);
        setup.config = setup.dir.path().join("airlock.toml");
        setup
    }

    fn cfg(&self) -> &str {
        self.config.to_str().unwrap()
    }

    fn store(&self, name: &str, value: &str) {
        let run = airlock_with(&["secret", "set", name, "--config", self.cfg()], value.as_bytes(), &[]);
        assert_eq!(run.code, 0, "{run:?}");
    }

    /// Invoke the hostile component with the host's own tracing on, so the
    /// leak scan covers the host's log output as well.
    fn invoke(&self, function: &str, args: Value) -> Run {
        let args = args.to_string();
        let run = airlock_with(
            &["invoke", "--config", self.cfg(), "exfil", function, "--args", &args],
            b"",
            &[("AIRLOCK_LOG", HOST_TRACING)],
        );
        run.assert_no_panic();
        run
    }

    /// `cap-send` through `airlock:cap/http`.
    fn send(&self, method: &str, url: &str, credential: Option<&str>) -> Run {
        self.invoke(
            "cap-send",
            json!({"req": {"method": method, "url": url, "credential": credential, "headers": [], "body": "hello", "follow-redirects": true}}),
        )
    }

    fn assert_no_leak(&self, runs: &[&Run]) {
        assert_no_leak(self.dir.path(), runs);
    }
}

/// The action's error text, for exit 1.
fn action_error(run: &Run) -> String {
    assert_eq!(run.code, 1, "expected the action to fail: {run:?}");
    run.error_line().to_string()
}

#[test]
fn vault_holds_no_plaintext_and_list_shows_only_metadata() {
    let s = Setup::new();
    let data = s.dir.path().join("data");
    for file in ["vault.json", "master.key"] {
        let mode = std::fs::metadata(data.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    let list = airlock_with(&["secret", "list", "--config", s.cfg()], b"", &[]);
    assert_eq!(list.code, 0, "{list:?}");
    assert!(
        list.stdout.contains("api-token") && list.stdout.contains("webhook-key"),
        "{list:?}"
    );
    let json = airlock_with(&["secret", "list", "--json", "--config", s.cfg()], b"", &[]);
    let entries: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(entries[0]["name"], "api-token");
    assert_eq!(entries[0]["bytes"], SECRET.len());
    s.assert_no_leak(&[&list, &json]);

    // Replacing and removing work and leave no plaintext either.
    s.store("api-token", "second-value-of-the-token");
    let rm = airlock_with(&["secret", "rm", "webhook-key", "--config", s.cfg()], b"", &[]);
    assert_eq!(rm.code, 0, "{rm:?}");
    let list = airlock_with(&["secret", "list", "--json", "--config", s.cfg()], b"", &[]);
    let entries: Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(entries.as_array().unwrap().len(), 1);
    let vault = std::fs::read_to_string(data.join("vault.json")).unwrap();
    assert!(!vault.contains("second-value"));
    let again = airlock_with(&["secret", "rm", "webhook-key", "--config", s.cfg()], b"", &[]);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(again.stderr.contains("no secret named `webhook-key`"), "{again:?}");
}

#[test]
fn a_wrong_or_malformed_master_key_is_a_clear_error() {
    let s = Setup::new();
    let other_key = base64(&[7u8; 32]);
    let list = airlock_with(
        &["secret", "list", "--config", s.cfg()],
        b"",
        &[("AIRLOCK_MASTER_KEY", &other_key)],
    );
    assert_eq!(list.code, 3, "{list:?}");
    assert!(list.error_line().contains("does not open the vault"), "{list:?}");
    assert!(!list.stderr.contains(&other_key));

    // Invoking an action with credentials under the wrong key fails before
    // anything runs, with the same explanation.
    let run = airlock_with(
        &[
            "invoke",
            "--config",
            s.cfg(),
            "exfil",
            "get-credential",
            "--args",
            r#"{"name":"api"}"#,
        ],
        b"",
        &[("AIRLOCK_MASTER_KEY", &other_key)],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.error_line().contains("does not open the vault"), "{run:?}");

    let bad = airlock_with(
        &["secret", "list", "--config", s.cfg()],
        b"",
        &[("AIRLOCK_MASTER_KEY", "not-a-key-but-maybe-sensitive")],
    );
    assert_ne!(bad.code, 0);
    assert!(bad.error_line().contains("32 bytes"), "{bad:?}");
    assert!(!bad.stderr.contains("not-a-key-but-maybe-sensitive"), "{bad:?}");
    s.assert_no_leak(&[&list, &run, &bad]);
}

#[test]
fn a_key_file_readable_by_others_is_refused() {
    let s = Setup::new();
    let key = s.dir.path().join("data/master.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = airlock_with(&["secret", "list", "--config", s.cfg()], b"", &[]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.error_line().contains("chmod 600"), "{run:?}");
}

#[test]
fn a_secret_value_cannot_be_given_in_argv() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for args in [
        vec!["secret", "set", "tok", SECRET, "--data-dir", data],
        vec!["secret", "set", "tok", "--value", SECRET, "--data-dir", data],
        vec!["secret", "set", &format!("tok={SECRET}"), "--data-dir", data],
        vec!["secret", "set", SECRET, "--data-dir", data],
        // A token that happens to be a valid name: taken as the name, with
        // the value still required on stdin (empty here, so refused).
        vec!["secret", "set", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "--data-dir", data],
    ] {
        let run = airlock_with(&args, b"", &[]);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(
            !run.stderr.contains(SECRET) && !run.stdout.contains(SECRET),
            "echoed: {run:?}"
        );
    }
    // Nothing was stored by any of them.
    let list = airlock_with(&["secret", "list", "--json", "--data-dir", data], b"", &[]);
    assert_eq!(list.stdout.trim(), "[]", "{list:?}");
    // Empty stdin is refused rather than storing an empty secret.
    let empty = airlock_with(&["secret", "set", "tok", "--data-dir", data], b"", &[]);
    assert_eq!(empty.code, 2, "{empty:?}");
}

#[test]
fn an_echoing_api_cannot_hand_the_secret_back() {
    let s = Setup::new();
    let run = s.send("POST", &s.api.url("/echo?q=1"), Some("api"));
    assert_eq!(run.code, 0, "{run:?}");
    let reply = run.json();
    // The host did inject the real token...
    let seen = s.api.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(seen[0].header("accept-encoding"), Some("identity"));
    // ...and every echo of it came back redacted.
    assert_eq!(reply["reason"], "OK Bearer [REDACTED]");
    let body = reply["body"].as_str().unwrap();
    assert!(
        body.matches("[REDACTED]").count() >= 4,
        "raw, base64, percent and hex echoes: {body}"
    );
    let headers = reply["headers"].to_string();
    assert!(headers.contains("Bearer [REDACTED]"), "{headers}");
    // The guest spread what it got over every channel it has.
    assert!(run.stderr.contains("[log Warn] loot") && run.stderr.contains("[stdout] loot"));
    assert!(s.dir.path().join("granted/loot").exists());
    // The audit log (scanned with everything else) recorded the request by
    // destination and credential name.
    let audit = std::fs::read_to_string(s.dir.path().join("data/audit/audit.log")).unwrap();
    assert!(
        audit.contains("\"airlock:cap/http\"") && audit.contains("\"credential\",\"api\""),
        "{audit}"
    );
    // Its status names the response code and what the guest received.
    let send = audit
        .lines()
        .find(|l| l.contains("\"airlock:cap/http\"") && l.contains("\"function\":\"send\""))
        .unwrap();
    assert!(send.contains("\"status\":\"ok 200; received "), "{send}");
    s.assert_no_leak(&[&run]);
}

#[test]
fn basic_auth_and_query_credentials_are_redacted_too() {
    let s = Setup::new();
    let basic = s.send("GET", &s.api.url("/echo"), Some("basic"));
    let query = s.send("GET", &s.api.url("/echo?api_key=guest-chosen&x=1"), Some("query"));
    assert_eq!(basic.code, 0, "{basic:?}");
    assert_eq!(query.code, 0, "{query:?}");
    let seen = s.api.requests();
    let expected_basic = format!("Basic {}", base64(format!("robot:{SECRET}").as_bytes()));
    assert_eq!(seen[0].header("authorization"), Some(expected_basic.as_str()));
    // The guest's own api_key is replaced, not kept beside the real one.
    let form_encoded: String = url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect();
    assert!(
        seen[1].target.contains(&format!("api_key={form_encoded}")),
        "{:?}",
        seen[1]
    );
    assert!(!seen[1].target.contains("guest-chosen"), "{:?}", seen[1]);
    assert!(seen[1].header("authorization").is_none());
    // The final URL reported to the guest is the one it asked for.
    assert_eq!(query.json()["final-url"], s.api.url("/echo?api_key=guest-chosen&x=1"));
    s.assert_no_leak(&[&basic, &query]);
}

#[test]
fn the_guest_cannot_override_or_add_host_owned_headers() {
    let s = Setup::new();
    for (name, value) in [
        ("Authorization", "Bearer mine"),
        ("Host", "evil.example"),
        ("Content-Length", "0"),
    ] {
        let run = s.invoke(
            "cap-send",
            json!({"req": {"method": "GET", "url": s.api.url("/echo"), "credential": "api",
                   "headers": [[name, value]], "body": "", "follow-redirects": true}}),
        );
        let err = action_error(&run);
        assert!(err.contains("invalid request"), "{err}");
        s.assert_no_leak(&[&run]);
    }
    assert!(s.api.requests().is_empty());
}

#[test]
fn credential_names_not_bound_to_the_action_fail() {
    let s = Setup::new();
    let ok = s.invoke("get-credential", json!({"name": "api"}));
    assert_eq!(ok.json(), json!("api"));
    // Other names, the vault secret's own name, case variants, empty.
    for name in ["other", "api-token", "API", "", "api\u{0}"] {
        let run = s.invoke("get-credential", json!({ "name": name }));
        let err = action_error(&run);
        assert!(err.contains("not bound"), "{name:?}: {err}");
        s.assert_no_leak(&[&run]);
    }
    // A signing-only credential cannot be sent.
    let run = s.send("GET", &s.api.url("/echo"), Some("webhook"));
    assert!(action_error(&run).contains("can only sign"), "{run:?}");
    assert!(s.api.requests().is_empty());
    s.assert_no_leak(&[&ok, &run]);
}

#[test]
fn credentials_go_only_to_their_destinations() {
    let s = Setup::new();
    // `other` is an allowed destination, but not one of the credential's.
    let run = s.send("POST", &s.other.url("/echo"), Some("api"));
    let err = action_error(&run);
    assert!(err.contains("may not be sent to"), "{err}");
    assert!(s.other.requests().is_empty(), "nothing may reach the other origin");
    s.assert_no_leak(&[&run]);
}

#[test]
fn hosts_methods_and_paths_outside_the_allowlist_are_refused() {
    let s = Setup::new();
    let refused = [
        (
            format!("http://127.0.0.2:{}/echo", s.api.port),
            "not an allowed destination",
        ),
        ("https://example.com/".to_string(), "not an allowed destination"),
        (
            format!("https://127.0.0.1:{}/echo", s.api.port),
            "not an allowed destination",
        ),
        (s.api.url("/admin"), "is not under"),
        (s.api.url("/echo/../admin"), "is not under"),
        ("ftp://127.0.0.1/".to_string(), "scheme"),
        ("http://user:pw@127.0.0.1/".to_string(), "user info"),
    ];
    for (url, why) in &refused {
        let run = s.send("GET", url, Some("api"));
        let err = action_error(&run);
        assert!(err.contains(why), "{url}: {err}");
        s.assert_no_leak(&[&run]);
    }
    let run = s.send("DELETE", &s.api.url("/echo"), None);
    assert!(action_error(&run).contains("method DELETE"), "{run:?}");
    assert!(s.api.requests().is_empty());
}

#[test]
fn redirects_are_checked_and_drop_credentials_across_origins() {
    let s = Setup::new();
    // Same origin: followed, credential kept.
    let same = s.send("GET", &s.api.url("/redirect?to=/echo/again"), Some("api"));
    assert_eq!(same.code, 0, "{same:?}");
    assert_eq!(same.json()["redirects"], 1);
    let seen = s.api.requests();
    assert_eq!(seen[1].target, "/echo/again");
    assert!(seen[1].header("authorization").is_some());

    // Another allowed origin: followed, credential dropped.
    let target = s.other.url("/echo");
    let cross = s.send(
        "GET",
        &s.api.url(&format!("/redirect?to={}", percent(target.as_bytes()))),
        Some("api"),
    );
    assert_eq!(cross.code, 0, "{cross:?}");
    assert_eq!(cross.json()["final-url"], target);
    let other_seen = s.other.requests();
    assert_eq!(other_seen.len(), 1);
    assert_eq!(
        other_seen[0].header("authorization"),
        None,
        "credential crossed origins"
    );

    // A destination outside the allowlist: not followed.
    let outside = format!("http://127.0.0.3:{}/echo", s.other.port);
    let denied = s.send(
        "GET",
        &s.api.url(&format!("/redirect?to={}", percent(outside.as_bytes()))),
        Some("api"),
    );
    let err = action_error(&denied);
    assert!(err.contains("redirect from") && err.contains("refused"), "{err}");
    assert_eq!(s.other.requests().len(), 1);
    s.assert_no_leak(&[&same, &cross, &denied]);
}

#[test]
fn loopback_and_metadata_addresses_need_an_explicit_allowance() {
    let s = Setup::new();
    // Allowed by name, but resolves to loopback and the rule has no allow-private.
    let run = s.send("GET", &format!("http://localhost:{}/echo", s.api.port), None);
    let err = action_error(&run);
    assert!(err.contains("loopback") && err.contains("allow-private"), "{err}");
    // Allowed destination, but it is the cloud metadata address.
    let meta = s.send("GET", "http://169.254.169.254/latest/meta-data/", None);
    assert!(action_error(&meta).contains("cloud metadata"), "{meta:?}");
    // Allowed destinations that are internal addresses in other spellings
    // reach the address check and are refused there, for the right reason.
    for (url, why) in [
        ("http://2852039166/".to_string(), "cloud metadata"), // 169.254.169.254 as one number
        ("http://[::ffff:169.254.169.254]/".to_string(), "cloud metadata"),
        (format!("http://[::1]:{}/echo", s.api.port), "loopback"),
    ] {
        let run = s.send("GET", &url, None);
        let err = action_error(&run);
        assert!(err.contains(why) && err.contains("allow-private"), "{url}: {err}");
    }
    // Not allowed at all: refused by the allowlist before any lookup.
    for url in [
        "http://169.254.169.254:8080/",
        "http://127.0.0.1/",
        "http://[::ffff:7f00:1]/",
    ] {
        let run = s.send("GET", url, Some("api"));
        let err = action_error(&run);
        assert!(err.contains("not an allowed destination"), "{url}: {err}");
    }
    assert!(s.api.requests().is_empty());
    s.assert_no_leak(&[&run, &meta]);
}

#[test]
fn wasi_http_follows_the_same_rules() {
    let s = Setup::new();
    // The inject rule attaches the credential; the guest's own value is replaced.
    let run = s.invoke(
        "wasi-send",
        json!({"method": "POST", "url": s.api.url("/echo"), "headers": [["authorization", "Bearer guest"]], "body": "from wasi"}),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let seen = s.api.requests();
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(seen[0].body, b"from wasi");
    let body = run.json()["body"].as_str().unwrap().to_string();
    assert!(body.contains("[REDACTED]") && body.contains("from wasi"), "{body}");
    // The record names the injected credential and what was sent.
    let audit = std::fs::read_to_string(s.dir.path().join("data/audit/audit.log")).unwrap();
    let handle = audit
        .lines()
        .find(|l| l.contains("\"wasi:http/outgoing-handler\""))
        .unwrap();
    let digest = blake3::hash(b"from wasi").to_hex().to_string();
    assert!(handle.contains("[\"credential\",\"api\"]"), "{handle}");
    assert!(
        handle.contains(&format!("; sent 9 body bytes (blake3:{digest})")),
        "{handle}"
    );

    // No inject rule for the other origin: no credential there.
    let other = s.invoke(
        "wasi-send",
        json!({"method": "GET", "url": s.other.url("/echo"), "headers": [], "body": ""}),
    );
    assert_eq!(other.code, 0, "{other:?}");
    assert_eq!(s.other.requests()[0].header("authorization"), None);

    let denied = s.invoke(
        "wasi-send",
        json!({"method": "GET", "url": "http://127.0.0.2:9/", "headers": [], "body": ""}),
    );
    assert!(action_error(&denied).contains("HttpRequestDenied"), "{denied:?}");
    let private = s.invoke(
        "wasi-send",
        json!({"method": "GET", "url": format!("http://localhost:{}/echo", s.api.port), "headers": [], "body": ""}),
    );
    assert!(
        action_error(&private).contains("DestinationIpProhibited"),
        "{private:?}"
    );
    let meta = s.invoke(
        "wasi-send",
        json!({"method": "GET", "url": "http://169.254.169.254/", "headers": [], "body": ""}),
    );
    assert!(action_error(&meta).contains("DestinationIpProhibited"), "{meta:?}");
    // wasi:http does not follow redirects: the guest sees the 302.
    let redirect = s.invoke(
        "wasi-send",
        json!({"method": "GET", "url": s.api.url(&format!("/redirect?to={}", percent(s.other.url("/echo").as_bytes()))), "headers": [], "body": ""}),
    );
    assert_eq!(redirect.json()["status"], 302, "{redirect:?}");
    assert_eq!(s.api.requests().len(), 2);
    s.assert_no_leak(&[&run, &other, &denied, &private, &meta, &redirect]);
}

#[test]
fn signing_uses_the_secret_without_revealing_it() {
    let s = Setup::new();
    let data = b"payload to sign".to_vec();
    let run = s.invoke("sign", json!({"credential": "webhook", "data": data}));
    assert_eq!(run.code, 0, "{run:?}");
    let expected = hmac::Hmac::<sha2::Sha256>::new_from_slice(SIGNING_KEY.as_bytes())
        .unwrap()
        .chain_update(&data)
        .finalize()
        .into_bytes()
        .to_vec();
    assert_eq!(run.json(), json!(expected));
    // A credential without `sign` in policy cannot be used as an HMAC oracle.
    let denied = s.invoke("sign", json!({"credential": "api", "data": data}));
    assert!(action_error(&denied).contains("not permitted"), "{denied:?}");
    s.assert_no_leak(&[&run, &denied]);
}

#[test]
fn compressed_responses_are_refused_when_they_cannot_be_scanned() {
    let s = Setup::new();
    let run = s.send("GET", &s.api.url("/gzip"), Some("api"));
    assert!(action_error(&run).contains("content-encoded"), "{run:?}");
    s.assert_no_leak(&[&run]);
}

#[test]
fn response_caps_and_timeouts_hold() {
    // A server that accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let s = Setup::with(|_| {
        format!(
            r#"
[[actions.exfil.grants.http.allow]]
destination = "http://127.0.0.1:{silent_port}"
allow-private = true
"#
        )
    });
    // Rewrite the timeout and the response cap for this test.
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("timeout-ms = 5000", "timeout-ms = 700\nmax-response-bytes = 64");
    std::fs::write(&s.config, text).unwrap();
    let big = s.send("GET", &s.api.url("/echo"), Some("api"));
    assert!(action_error(&big).contains("too large"), "{big:?}");
    // Without a content-length the cap holds while reading the chunks.
    let chunked = s.send("GET", &s.api.url("/chunked"), None);
    assert!(action_error(&chunked).contains("too large"), "{chunked:?}");
    let started = std::time::Instant::now();
    let slow = s.send("GET", &format!("http://127.0.0.1:{silent_port}/"), None);
    assert!(
        action_error(&slow).contains("timeout: no complete response"),
        "{slow:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
    drop(silent);
    s.assert_no_leak(&[&big, &slow]);
}

#[test]
fn config_mistakes_are_refused_with_the_fix() {
    let s = Setup::new();
    let base = std::fs::read_to_string(&s.config).unwrap();
    let cases = [
        (
            base.replace("secret = \"webhook-key\"", "secret = \"missing-secret\""),
            "add it with `airlock secret set missing-secret --config",
        ),
        (
            base.replace("credential = \"api\"", "credential = \"nope\""),
            "no credential `nope`",
        ),
        (
            base.replace("template = \"Bearer {}\"", "template = \"Bearer\""),
            "exactly once",
        ),
        (
            base.replace("inject = { header = \"authorization\"", "inject = { header = \"host\""),
            "set by the host",
        ),
        (
            base.replace(
                "destination = \"http://169.254.169.254\"",
                "destination = \"http://*.com\"",
            ),
            "wildcard",
        ),
    ];
    for (text, fix) in cases {
        std::fs::write(&s.config, &text).unwrap();
        let run = airlock_with(&["check", "--config", s.cfg()], b"", &[]);
        assert_eq!(run.code, 2, "{fix}: {run:?}");
        assert!(run.stdout.contains(fix) || run.stderr.contains(fix), "{fix}: {run:?}");
    }
}

#[test]
fn the_ticket_create_example_works_without_showing_the_token() {
    let s = Setup::with(|setup| {
        format!(
            r#"
[actions.ticket-create]
component = {component}
[actions.ticket-create.config]
api = "http://127.0.0.1:{port}"
[actions.ticket-create.grants]
log = true
[actions.ticket-create.grants.credentials.tickets]
secret = "api-token"
destinations = ["${{config.api}}"]
inject = {{ header = "authorization", template = "Bearer {{}}" }}
[[actions.ticket-create.grants.http.allow]]
destination = "${{config.api}}"
methods = ["POST"]
path-prefixes = ["/tickets"]
allow-private = true
"#,
            component = toml_path(&component("ticket_create")),
            port = setup.api.port
        )
    });
    let args = json!({"ticket": {"title": "Disk full", "body": "on db-1", "priority": "high"}});
    let run = airlock_with(
        &[
            "invoke",
            "--config",
            s.cfg(),
            "ticket-create",
            "create",
            "--args",
            &args.to_string(),
        ],
        b"",
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["id"], 1);
    assert!(run.stderr.contains("ticket created"), "{run:?}");
    let seen = s.api.requests();
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert!(String::from_utf8_lossy(&seen[0].body).contains("\"priority\":\"high\""));
    s.assert_no_leak(&[&run]);
    // The origin came from the config, and reading it was a host call.
    let audit = std::fs::read_to_string(s.dir.path().join("data/audit/audit.log")).unwrap();
    let read = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["event"]["interface"] == "airlock:cap/config")
        .expect("a config host call");
    assert_eq!(read["event"]["function"], "get");
    assert_eq!(read["event"]["args"], json!([["key", "api"]]));
    assert_eq!(read["event"]["status"], "ok");
    assert_eq!(read["event"]["rule"], "grants.config");

    // Without the value, the action says which key to set.
    let text = std::fs::read_to_string(&s.config).unwrap();
    let bare = text
        .replace(
            "destinations = [\"${config.api}\"]",
            &format!("destinations = [\"{}\"]", s.api.url("")),
        )
        .replace(
            "destination = \"${config.api}\"",
            &format!("destination = \"{}\"", s.api.url("")),
        )
        .replace("api = \"http", "other = \"http");
    std::fs::write(&s.config, bare).unwrap();
    let run = airlock_with(
        &[
            "invoke",
            "--config",
            s.cfg(),
            "ticket-create",
            "create",
            "--args",
            &args.to_string(),
        ],
        b"",
        &[],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("the config value `api` is not set; add `api = ...` under the action's [config] section"),
        "{run:?}"
    );
    let audit = std::fs::read_to_string(s.dir.path().join("data/audit/audit.log")).unwrap();
    assert!(audit.contains("\"status\":\"none: not set\""), "{audit}");
}

#[test]
fn one_invocation_cannot_send_more_than_max_requests() {
    let s = Setup::new();
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("timeout-ms = 5000", "timeout-ms = 5000\nmax-requests = 1");
    std::fs::write(&s.config, text).unwrap();
    // A same-origin redirect needs two requests; the second is refused.
    let run = s.send("GET", &s.api.url("/redirect?to=/echo"), Some("api"));
    assert!(action_error(&run).contains("grants.http.max-requests"), "{run:?}");
    assert_eq!(s.api.requests().len(), 1);
    // The budget is per invocation: the next invocation may send again.
    let next = s.send("GET", &s.api.url("/echo"), Some("api"));
    assert_eq!(next.code, 0, "{next:?}");
    s.assert_no_leak(&[&run, &next]);
}

#[test]
fn a_redirect_that_reflects_the_secret_is_not_followed() {
    let s = Setup::new();
    let url = s.api.url(&format!("/reflect-redirect?port={}", s.other.port));
    let run = s.send("GET", &url, Some("api"));
    let err = action_error(&run);
    assert!(err.contains("carries a credential"), "{err}");
    assert!(
        s.other.requests().is_empty(),
        "the secret must not travel to the redirect target"
    );
    // Over wasi:http the guest sees the 302 itself, with the location scrubbed.
    let wasi = s.invoke(
        "wasi-send",
        json!({"method": "GET", "url": url, "headers": [], "body": ""}),
    );
    assert_eq!(wasi.code, 0, "{wasi:?}");
    let location = wasi.json()["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "location")
        .map(|h| h[1].as_str().unwrap().to_string())
        .unwrap();
    assert!(location.contains("[REDACTED]"), "{location}");
    assert!(s.other.requests().is_empty());
    s.assert_no_leak(&[&run, &wasi]);
}

#[test]
fn encoded_traversal_and_override_headers_cannot_escape_path_rules() {
    let s = Setup::new();
    for path in [
        "/echo/..%2fadmin",
        "/echo/..%2Fadmin",
        "/echo/..%5cadmin",
        "/echo/..;/admin",
        "/echo/%2e%2e;x/admin",
    ] {
        let run = s.send("GET", &s.api.url(path), Some("api"));
        let err = action_error(&run);
        assert!(err.contains("denied"), "{path}: {err}");
    }
    for (name, value) in [
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-Original-URL", "/admin"),
        ("X-Forwarded-Host", "evil.example"),
        ("Forwarded", "host=evil.example"),
    ] {
        let run = s.invoke(
            "cap-send",
            json!({"req": {"method": "GET", "url": s.api.url("/echo"), "credential": null,
                   "headers": [[name, value]], "body": "", "follow-redirects": true}}),
        );
        assert!(action_error(&run).contains("set by the host"), "{name}: {run:?}");
    }
    // wasi:http: the guest cannot even set them (`proxy-*` too).
    for (name, value) in [
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-Forwarded-Host", "evil.example"),
        ("Forwarded", "host=evil.example"),
        ("Proxy-Anything", "x"),
    ] {
        let run = s.invoke(
            "wasi-send",
            json!({"method": "GET", "url": s.api.url("/echo"), "body": "", "headers": [[name, value]]}),
        );
        assert!(action_error(&run).contains("Forbidden"), "{name}: {run:?}");
    }
    // wasi:http: CONNECT is refused even where a rule lists no methods.
    let connect = s.invoke(
        "wasi-send",
        json!({"method": "CONNECT", "url": s.other.url("/"), "headers": [], "body": ""}),
    );
    assert!(action_error(&connect).contains("HttpRequestDenied"), "{connect:?}");
    assert!(s.api.requests().is_empty() && s.other.requests().is_empty());
}

#[test]
fn hidden_compression_and_redirect_loops_are_refused() {
    let s = Setup::new();
    // A second content-encoding header behind an innocent first one.
    let run = s.send("GET", &s.api.url("/gzip2"), Some("api"));
    assert!(action_error(&run).contains("content-encoded"), "{run:?}");
    // A redirect loop ends at max-redirects (default 5): six requests.
    let looped = s.send("GET", &s.api.url("/loop"), None);
    assert!(action_error(&looped).contains("more than 5 redirects"), "{looped:?}");
    assert_eq!(s.api.requests().len(), 1 + 6);
    s.assert_no_leak(&[&run, &looped]);
}

#[test]
fn a_running_service_uses_a_rotated_secret_at_its_next_invocation() {
    let s = Setup::with(|_| "\n[actions.exfil.access]\ninvoke = [\"bot\"]\n".into());
    let token = support::create_token(&s.config, "bot", "agent", &["agent"]);
    let server = support::http::Server::start(&s.config);
    let data = b"payload to sign".to_vec();
    let hmac_of = |key: &str| {
        json!(
            hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes())
                .unwrap()
                .chain_update(&data)
                .finalize()
                .into_bytes()
                .to_vec()
        )
    };
    let sign = || {
        let body = json!({"action": "exfil", "function": "sign", "args": {"credential": "webhook", "data": data}});
        let r = server.post("/v1/invocations", Some(&token), &body);
        assert_eq!(r.status, 200, "{r:?}");
        r.json()["result"].clone()
    };
    assert_eq!(sign(), hmac_of(SIGNING_KEY));

    // Rotated from another process while the service runs.
    let rotated = "rotated-signing-key-0f3a9c";
    s.store("webhook-key", rotated);
    assert_eq!(sign(), hmac_of(rotated));

    // A vault the service can no longer read fails the call; it does not
    // fall back to the value it had.
    let vault = s.dir.path().join("data/vault.json");
    let saved = std::fs::read_to_string(&vault).unwrap();
    std::fs::write(&vault, "{ damaged").unwrap();
    let body = json!({"action": "exfil", "function": "sign", "args": {"credential": "webhook", "data": data}});
    let r = server.post("/v1/invocations", Some(&token), &body);
    assert_ne!(r.json()["result"], hmac_of(rotated), "{r:?}");
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains("is unavailable on the host") && text.contains("damaged"),
        "{text}"
    );
    std::fs::write(&vault, saved).unwrap();
    assert_eq!(sign(), hmac_of(rotated));
}

/// Secrets made of the characters every carrier treats differently: those
/// JSON, HTML, URLs and quoted-printable escape, non-ASCII, and characters
/// outside the BMP (JSON writes them as surrogate pairs).
fn random_secret(c: &mut Choices, header_safe: bool) -> String {
    let mut alphabet: Vec<char> = "aZ09_-.~/\\\"'&<>%+=:;#?*".chars().chain('a'..='z').collect();
    if !header_safe {
        alphabet.extend(" \té中😀🔑".chars());
    }
    let len = 6 + c.next(30) as usize;
    // Starts and ends with a letter: a header value's edges are trimmed.
    let inner: String = (0..len)
        .map(|_| alphabet[c.next(alphabet.len() as u64) as usize])
        .collect();
    format!("k{inner}z")
}

fn random_filler(c: &mut Choices) -> String {
    let alphabet: Vec<char> = "abc xyz 123 {}[]\":,&<>%+=/\\é😀\n".chars().collect();
    (0..c.next(40))
        .map(|_| alphabet[c.next(alphabet.len() as u64) as usize])
        .collect()
}

/// A secret's spelling: the carriers it went through, and the text.
type Spelling = (Vec<Carrier>, String);

/// One carrier or one inside another.
fn random_layers(c: &mut Choices) -> Vec<Carrier> {
    let mut layers = vec![CARRIERS[c.next(CARRIERS.len() as u64) as usize]];
    if c.next(2) == 0 {
        layers.push(CARRIERS[c.next(CARRIERS.len() as u64) as usize]);
    }
    layers
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

    /// Any subset of a secret's characters escaped, in any hex case, by one
    /// carrier or one inside another, anywhere in a body: the redactor
    /// leaves nothing a reference decoder could read the secret back from.
    #[test]
    fn a_secret_spelled_by_any_covered_carrier_is_redacted(seed in proptest::prelude::any::<u64>()) {
        let mut c = Choices::new(seed);
        let secret = random_secret(&mut c, false);
        let mut redactor = Redactor::default();
        redactor.add(secret.as_bytes());
        let layers = random_layers(&mut c);
        let text = format!("{}{secret}{}", random_filler(&mut c), random_filler(&mut c));
        let body = encode_layers(&text, &layers, &mut c);
        proptest::prop_assert!(reveals(&body, &layers, &secret));
        let out = String::from_utf8(redactor.redact(body.as_bytes()).into_owned()).unwrap();
        proptest::prop_assert!(out.contains(MARKER), "{secret:?} not found in {body:?} ({layers:?})");
        proptest::prop_assert!(!reveals(&out, &layers, &secret), "{secret:?} survives {layers:?} in {out:?}");
    }
}

/// The same, end to end: a real API echoes the credential it received,
/// spelled by random carriers at random places in its body, to the real
/// `airlock:cap/http` and `wasi:http` paths; the guest (which spreads what
/// it gets over every channel) never holds a spelling that decodes to the
/// secret.
#[test]
fn an_api_echoing_the_credential_in_any_covered_spelling_is_redacted_on_both_http_paths() {
    const SEPARATOR: &str = "\n~~~~\n";
    const PIECES: usize = 16;
    let mut c = Choices::new(0x5EC2E7_u64 ^ std::process::id() as u64);
    for round in 0..6 {
        let s = Setup::new();
        let secret = random_secret(&mut c, true);
        s.store("api-token", &secret);
        // The spellings the API sends back, per request.
        let sent: Arc<Mutex<Vec<Vec<Spelling>>>> = Arc::default();
        let (sent2, seed) = (sent.clone(), c.next(u64::MAX));
        // Every other round the body is large enough to be redacted off
        // the async workers.
        let padding = if round % 2 == 0 {
            "p".repeat(80 << 10)
        } else {
            String::new()
        };
        s.api.reflect_with(move |req| {
            let mut c = Choices::new(seed);
            let token = req
                .header("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .unwrap_or("none");
            let pieces: Vec<Spelling> = (0..PIECES)
                .map(|i| {
                    let layers = random_layers(&mut c);
                    let text = format!("{}{token}{}", random_filler(&mut c), random_filler(&mut c));
                    // Plain letters read the same through every carrier.
                    let pad = if i == 0 { padding.as_str() } else { "" };
                    let piece = format!("{pad}{}", encode_layers(&text, &layers, &mut c));
                    (layers, piece)
                })
                .collect();
            let body = pieces
                .iter()
                .map(|(_, p)| p.as_str())
                .collect::<Vec<_>>()
                .join(SEPARATOR);
            sent2.lock().unwrap().push(pieces);
            body.into_bytes()
        });
        let url = s.api.url("/reflect");
        let runs = [
            s.send("GET", &url, Some("api")),
            s.invoke(
                "wasi-send",
                json!({"method": "GET", "url": url, "headers": [], "body": ""}),
            ),
        ];
        let sent = sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 2, "round {round}: both paths reached the API");
        for (run, pieces) in runs.iter().zip(&sent) {
            assert_eq!(run.code, 0, "round {round}: {run:?}");
            let body = run.json()["body"].as_str().unwrap().to_string();
            let received: Vec<&str> = body.split(SEPARATOR).collect();
            assert_eq!(received.len(), PIECES, "round {round}: {body}");
            for ((layers, piece), got) in pieces.iter().zip(received) {
                assert!(reveals(piece, layers, &secret), "the API did echo the secret: {piece}");
                assert!(
                    !reveals(got, layers, &secret),
                    "round {round}: {secret:?} survives {layers:?}: sent {piece:?}, guest got {got:?}"
                );
                // Nothing the guest spread holds the spelling it was sent.
                for out in [&run.stdout, &run.stderr] {
                    assert!(!out.contains(piece.as_str()), "round {round}: {piece:?} leaked");
                }
            }
            for out in [&run.stdout, &run.stderr] {
                assert!(!out.contains(&secret), "round {round}: raw secret leaked");
            }
        }
    }
}
