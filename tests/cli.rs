//! The `airlock` command line against real components: inspect, check,
//! invoke, refusals and exit codes.

mod support;

use serde_json::json;
use support::{airlock, airlock_with, component, config, toml_path, wat_component};

/// A component whose imports are exactly these three, written in WAT.
const THREE_IMPORTS: &str = r#"(component
    (import "airlock:cap/log@0.1.0" (instance))
    (import "wasi:sockets/tcp@0.2.0" (instance))
    (import "evil:net/raw@1.0.0" (instance))
    (core module $m (func (export "f") (result i32) i32.const 7))
    (core instance $i (instantiate $m))
    (func (export "seven") (result u32) (canon lift (core func $i "f")))
)"#;

#[test]
fn inspect_lists_exactly_the_imports_with_their_class() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = wat_component(dir.path(), "three", THREE_IMPORTS);
    let run = airlock(&["inspect", wasm.to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let manifest = run.json();
    assert_eq!(manifest["format"], "airlock.manifest/v1");
    let imports: Vec<(String, String)> = manifest["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                i["class"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        imports,
        vec![
            ("airlock:cap/log@0.1.0".to_string(), "capability".to_string()),
            ("wasi:sockets/tcp@0.2.0".to_string(), "unknown".to_string()),
            ("evil:net/raw@1.0.0".to_string(), "unknown".to_string()),
        ]
    );
    assert_eq!(manifest["imports"][0]["capability"], "log");
    let digest = format!("blake3:{}", blake3::hash(&std::fs::read(&wasm).unwrap()).to_hex());
    assert_eq!(manifest["digest"], digest.as_str());
    assert_eq!(manifest["functions"][0]["name"], "seven");
    assert_eq!(
        manifest["functions"][0]["result"],
        json!({"type": "integer", "minimum": 0, "maximum": u32::MAX})
    );
}

#[test]
fn inspect_of_a_built_action_shows_capabilities_and_schemas() {
    let run = airlock(&["inspect", component("report").to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let m = run.json();
    let caps: Vec<&str> = m["imports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["class"] == "capability")
        .map(|i| i["capability"].as_str().unwrap())
        .collect();
    assert_eq!(caps, vec!["log", "files"]);
    assert!(m["imports"].as_array().unwrap().iter().all(|i| i["class"] != "unknown"));
    let f = &m["functions"][0];
    assert_eq!(f["name"], "write-report");
    assert_eq!(f["params"]["required"], json!(["name", "findings"]));
    assert_eq!(
        f["params"]["properties"]["findings"]["items"]["properties"]["severity"],
        json!({"type": "string", "enum": ["low", "medium", "high"], "title": "severity"})
    );
    assert_eq!(f["error"], json!({"type": "string"}));

    let hello = airlock(&["inspect", component("hello").to_str().unwrap()]);
    assert_eq!(hello.code, 0, "{hello:?}");
    assert!(
        !hello.stdout.contains("capability:"),
        "hello imports no capability: {}",
        hello.stdout
    );
}

#[test]
fn check_and_invoke_refuse_an_ungranted_import_naming_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[actions.hello]\ncomponent = {}\n\n[actions.cleanup]\ncomponent = {}\n",
            toml_path(&component("hello")),
            toml_path(&component("cleanup"))
        ),
    );
    let cfg_s = cfg.to_str().unwrap();
    let check = airlock(&["check", "--config", cfg_s]);
    assert_eq!(check.code, 3, "{check:?}");
    assert!(check.stdout.contains("ok      hello"), "{check:?}");
    let err = check.error_line();
    assert!(err.contains("action `cleanup` refused"), "{err}");
    assert!(err.contains("ungranted import airlock:cap/files@0.1.0"), "{err}");
    assert!(err.contains(r#"files = { dir = "PATH", mode = "read-only" }"#), "{err}");
    assert!(err.contains(&format!("[actions.cleanup.grants] ({cfg_s}:4)")), "{err}");

    let invoke = airlock(&[
        "invoke",
        "--config",
        cfg_s,
        "cleanup",
        "purge",
        "--args",
        r#"{"prefix":"a"}"#,
    ]);
    assert_eq!(invoke.code, 3, "{invoke:?}");
    assert!(
        invoke.error_line().contains("ungranted import airlock:cap/files@0.1.0"),
        "{invoke:?}"
    );
    assert_eq!(invoke.stdout, "", "nothing ran, nothing printed");

    // Ad hoc: the hint names the flag instead.
    let adhoc = airlock(&[
        "invoke",
        component("cleanup").to_str().unwrap(),
        "purge",
        "--args",
        r#"{"prefix":"a"}"#,
    ]);
    assert_eq!(adhoc.code, 3, "{adhoc:?}");
    assert!(
        adhoc.error_line().contains("grant it with --grant-dir PATH[:ro]"),
        "{adhoc:?}"
    );
}

#[test]
fn unknown_imports_are_refused_even_when_everything_is_granted() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = wat_component(dir.path(), "three", THREE_IMPORTS);
    let cfg = config(
        dir.path(),
        &format!(
            "[actions.three]\ncomponent = {}\n[actions.three.grants]\nlog = true\nfiles = {{ dir = {} }}\n",
            toml_path(&wasm),
            toml_path(dir.path())
        ),
    );
    let run = airlock(&["invoke", "--config", cfg.to_str().unwrap(), "three", "seven"]);
    assert_eq!(run.code, 3, "{run:?}");
    let err = run.error_line();
    assert!(err.contains("unknown import wasi:sockets/tcp@0.2.0"), "{err}");
    assert!(err.contains("unknown import evil:net/raw@1.0.0"), "{err}");
    assert!(err.contains("can never be granted"), "{err}");
    assert!(!err.contains("airlock:cap/log"), "log is granted: {err}");

    // There is no config key that grants an unknown interface.
    let cfg = config(
        dir.path(),
        &format!(
            "[actions.three]\ncomponent = {}\n[actions.three.grants]\nsockets = true\n",
            toml_path(&wasm)
        ),
    );
    let run = airlock(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.error_line().contains("unknown field `sockets`"), "{run:?}");
}

#[test]
fn invoke_runs_actions_under_the_example_config() {
    let cfg = support::repo_root().join("examples/airlock.toml");
    component("hello");
    let run = airlock(&[
        "invoke",
        "--config",
        cfg.to_str().unwrap(),
        "hello",
        "greet",
        "--args",
        r#"{"who":{"name":"Ada","title":null,"languages":["de"]}}"#,
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.json(),
        json!({"text": "Hallo, Ada!", "language": "de", "length": 11})
    );
}

#[test]
fn report_writes_through_the_files_capability_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[actions.report]\ncomponent = {}\n[actions.report.grants]\nlog = true\nfiles = {{ dir = \".\", mode = \"read-write\" }}\n",
            toml_path(&component("report"))
        ),
    );
    let args = r#"{"name":"r1","findings":[{"title":"a","severity":"low"}]}"#;
    let run = airlock(&[
        "invoke",
        "--config",
        cfg.to_str().unwrap(),
        "report",
        "write-report",
        "--args",
        args,
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json(), json!({"path": "reports/r1.md", "bytes": 23}));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("reports/r1.md")).unwrap(),
        "# Report r1\n\n- [low] a\n"
    );
    assert!(
        run.stderr
            .contains("[log Info] report written path=reports/r1.md findings=1"),
        "{run:?}"
    );

    // The action's own error case: exit 1, error on stderr, nothing on stdout.
    let bad = airlock(&[
        "invoke",
        "--config",
        cfg.to_str().unwrap(),
        "report",
        "write-report",
        "--args",
        r#"{"name":"../x","findings":[]}"#,
    ]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(
        bad.error_line()
            .starts_with("error: action returned an error: report name"),
        "{bad:?}"
    );
    assert_eq!(bad.stdout, "");
}

#[test]
fn digest_pin_mismatch_refuses_the_action() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[actions.hello]\ncomponent = {}\ndigest = \"blake3:{}\"\n",
            toml_path(&component("hello")),
            "0".repeat(64)
        ),
    );
    let run = airlock(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.error_line().contains("but the policy pins blake3:0000"), "{run:?}");

    let good = format!(
        "blake3:{}",
        blake3::hash(&std::fs::read(component("hello")).unwrap()).to_hex()
    );
    let cfg = config(
        dir.path(),
        &format!(
            "[actions.hello]\ncomponent = {}\ndigest = \"{good}\"\n",
            toml_path(&component("hello"))
        ),
    );
    assert_eq!(airlock(&["check", "--config", cfg.to_str().unwrap()]).code, 0);
}

#[test]
fn garbage_truncated_and_core_module_bytes_exit_2_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let hello = std::fs::read(component("hello")).unwrap();
    let core = wat::parse_str("(module (func (export \"f\")))").unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "too short"),
        ("garbage", b"this is not wasm at all".to_vec(), "bad magic"),
        ("core", core, "core WebAssembly module, not a component"),
        ("truncated", hello[..hello.len() / 2].to_vec(), "invalid component"),
    ];
    for (name, bytes, expect) in cases {
        let path = dir.path().join(format!("{name}.wasm"));
        std::fs::write(&path, &bytes).unwrap();
        let p = path.to_str().unwrap();
        for run in [airlock(&["inspect", p]), airlock(&["invoke", p, "f"])] {
            run.assert_no_panic();
            assert_eq!(run.code, 2, "{name}: {run:?}");
            assert!(run.error_line().contains(expect), "{name}: {run:?}");
        }
    }
    let missing = airlock(&["inspect", "/nonexistent/x.wasm"]);
    assert_eq!(missing.code, 2, "{missing:?}");
}

#[test]
fn bad_arguments_exit_2_with_the_path_of_the_offending_field() {
    let hello = component("hello");
    let h = hello.to_str().unwrap();
    let cases = [
        (
            r#"{"who":{"name":7,"languages":[]}}"#,
            "args.who.name: expected a string, found the number 7",
        ),
        (
            r#"{"who":{"name":"a","languages":["en",1]}}"#,
            "args.who.languages[1]: expected a string",
        ),
        (r#"{"who":{"name":"a"}}"#, "args.who: missing field `languages`"),
        (
            r#"{"who":{"name":"a","languages":[],"age":3}}"#,
            "args.who: unknown field `age`",
        ),
        (r#"{}"#, "args: missing field `who`"),
        (r#"[1]"#, "expected an object keyed by parameter names"),
        (r#"{"who": "#, "not a JSON object"),
    ];
    for (args, expect) in cases {
        let run = airlock(&["invoke", h, "greet", "--args", args]);
        assert_eq!(run.code, 2, "{args}: {run:?}");
        assert!(run.error_line().contains(expect), "{args}: {run:?}");
    }
    let run = airlock(&["invoke", h, "nope"]);
    assert_eq!(run.code, 2);
    assert!(
        run.error_line()
            .contains("unknown function `nope` (exported functions: greet)"),
        "{run:?}"
    );
}

#[test]
fn bad_configs_exit_2_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let hello = toml_path(&component("hello"));
    let cases = [
        ("[actions.x]\n", "missing field `component`"),
        (
            &*format!("[actions.x]\ncomponent = {hello}\n[actions.x.limits]\nmemory-mib = 100000\n"),
            "memory-mib",
        ),
        (
            &*format!("[actions.x]\ncomponent = {hello}\n[actions.x.grants]\nfiles = {{ dir = \"missing\" }}\n"),
            "create it first",
        ),
        (
            &*format!("[actions.\"Bad Name\"]\ncomponent = {hello}\n"),
            "action names are",
        ),
        (
            &*format!("[actions.x]\ncomponent = {hello}\ndigest = \"md5:abc\"\n"),
            "must start with `blake3:`",
        ),
        ("this is not toml", "invalid config"),
    ];
    for (text, expect) in cases {
        let cfg = config(dir.path(), text);
        let run = airlock(&["check", "--config", cfg.to_str().unwrap()]);
        assert_eq!(run.code, 2, "{text}: {run:?}");
        assert!(run.error_line().contains(expect), "{text}: {run:?}");
    }
}

#[test]
fn guest_limits_and_exits_map_to_exit_4() {
    let dir = tempfile::tempdir().unwrap();
    let probe = component("probe");
    let p = probe.to_str().unwrap();
    let grant = dir.path().to_str().unwrap();
    let base = ["invoke", p];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["spin", "--timeout-ms", "200"], "timed out after 200 ms"),
        (
            vec!["allocate-mib", "--args", r#"{"mib":100}"#, "--memory-mib", "16"],
            "memory limit of 16 MiB exceeded",
        ),
        (
            vec!["recurse", "--args", r#"{"depth":100000000}"#],
            "wasm stack overflow",
        ),
        (vec!["spin", "--fuel", "100000"], "fuel limit of 100000 exhausted"),
        (
            vec!["print", "--args", r#"{"bytes":5000}"#, "--max-output-bytes", "1000"],
            "stdout exceeded 1000 bytes",
        ),
        (
            vec![
                "big-result",
                "--args",
                r#"{"bytes":5000}"#,
                "--max-output-bytes",
                "1000",
            ],
            "exceeds 1000 bytes",
        ),
        (vec!["exit-with", "--args", r#"{"code":3}"#], "action exited with code"),
    ];
    for (args, expect) in cases {
        let mut full: Vec<&str> = base.to_vec();
        full.extend(&args);
        full.extend(["--grant-log", "--grant-dir", grant, "-q"]);
        let run = airlock(&full);
        assert_eq!(run.code, 4, "{args:?}: {run:?}");
        assert!(run.error_line().contains(expect), "{args:?}: {run:?}");
    }
    let panic = airlock(&[
        "invoke",
        p,
        "panic-with",
        "--args",
        r#"{"message":"boom"}"#,
        "--grant-log",
        "--grant-dir",
        grant,
        "-q",
    ]);
    assert_eq!(panic.code, 1, "{panic:?}");
    assert!(panic.error_line().contains("action panicked: boom"), "{panic:?}");
}

#[test]
fn guest_output_is_escaped_on_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let probe = component("probe");
    let msg = "evil\u{1b}[2J\u{7}";
    let args = serde_json::json!({"message": msg}).to_string();
    let run = airlock(&[
        "invoke",
        probe.to_str().unwrap(),
        "panic-with",
        "--args",
        &args,
        "--grant-log",
        "--grant-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(run.code, 1);
    assert!(
        !run.stderr.contains('\u{1b}'),
        "raw escape reached the terminal: {run:?}"
    );
}

/// `airlock policy schema`: the Cedar vocabulary generated from the
/// actions' WIT types, every function an action whose typed arguments
/// policies can name; a name that would clash with a root action refused.
#[test]
fn policy_schema_lists_every_function_with_its_typed_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("[actions.types]\ncomponent = {}\n", toml_path(&component("types"))),
    );
    let cfg_s = cfg.to_str().unwrap();
    let text = airlock(&["policy", "schema", "--config", cfg_s]);
    assert_eq!(text.code, 0, "{text:?}");
    for needle in [
        "action \"types\" in [Action::\"invoke\"]",
        "\"types/echo-u64\"",
        "\"types/checked-div\"",
        "\"types/airlock-tests:types/shapes@0.1.0#echo\"",
        "v_u64: __cedar::Long",
        "v_f64: __cedar::decimal",
        "label?: __cedar::String",
        "entity Identity in [Role, Operator]",
    ] {
        assert!(text.stdout.contains(needle), "{needle} missing:\n{}", text.stdout);
    }

    let json = airlock(&["policy", "schema", "--config", cfg_s, "--json"]);
    assert_eq!(json.code, 0, "{json:?}");
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let div = &value[""]["actions"]["types/checked-div"]["appliesTo"]["context"]["attributes"]["args"];
    assert_eq!(div["attributes"]["a"], serde_json::json!({"type": "Long"}), "{div}");

    let reserved = config(
        dir.path(),
        &format!("[actions.invoke]\ncomponent = {}\n", toml_path(&component("types"))),
    );
    let refused = airlock(&["policy", "schema", "--config", reserved.to_str().unwrap()]);
    refused.assert_no_panic();
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.error_line().contains("reserved"), "{refused:?}");
}

#[test]
fn hints_name_the_config_and_numbers_and_errors_print_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            r#"
[actions.tickets]
component = {}
[actions.tickets.config]
api = "https://tickets.example"
[actions.tickets.grants]
log = true
[actions.tickets.grants.credentials.tickets]
secret = "tickets-token"
destinations = ["${{config.api}}"]
inject = {{ header = "authorization", template = "Bearer {{}}" }}
[[actions.tickets.grants.http.allow]]
destination = "${{config.api}}"
"#,
            toml_path(&component("ticket_create"))
        ),
    );
    // The hint names the config, so following it fills the right vault.
    let key = "11".repeat(32);
    let master = [("AIRLOCK_MASTER_KEY", key.as_str())];
    let run = support::airlock_with(&["check", "--config", cfg.to_str().unwrap()], b"", &master);
    assert_eq!(run.code, 2, "{run:?}");
    let expected = format!("airlock secret set tickets-token --config {}", cfg.display());
    assert!(run.stderr.contains(&expected), "{run:?}");
    let set = support::airlock_with(
        &["secret", "set", "tickets-token", "--config", cfg.to_str().unwrap()],
        b"t0ken",
        &master,
    );
    assert_eq!(set.code, 0, "{set:?}");
    let run = support::airlock_with(&["check", "--config", cfg.to_str().unwrap()], b"", &master);
    assert_eq!(run.code, 0, "{run:?}");

    // An integer past u64 is printed as it was written, not as a float.
    let types = component("types");
    for written in ["18446744073709551616", "18446744073709551617", "-99999999999999999999"] {
        let run = airlock(&[
            "invoke",
            types.to_str().unwrap(),
            "echo-u64",
            "--args",
            &format!(r#"{{"v": {written}}}"#),
        ]);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains(&format!("found the number {written}")), "{run:?}");
    }
}

#[test]
fn inspect_shows_the_wit_names_and_doc_comments() {
    let types = component("types");
    let run = airlock(&["inspect", types.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    // Named types are named, and a parameter's type is spelled out.
    assert!(
        run.stdout.contains("  describe(n: u32, style: style) -> string\n"),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("    style: enum style { brief, detailed }\n      how much to say\n"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("#area(s: shape) -> f64\n    The area of a shape."),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("about\n  Echoes values of every WIT type.\n"),
        "{run:?}"
    );

    let m = airlock(&["inspect", types.to_str().unwrap(), "--json"]).json();
    assert_eq!(m["description"], "Echoes values of every WIT type.");
    let area = m["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "airlock-tests:types/shapes@0.1.0#area")
        .unwrap();
    assert!(
        area["description"]
            .as_str()
            .unwrap()
            .starts_with("The area of a shape.")
    );
    let shape = &area["params"]["properties"]["s"];
    assert_eq!(shape["title"], "shape");
    assert_eq!(shape["oneOf"][0]["description"], "A circle of this radius.");
    let point = &shape["oneOf"][1]["properties"]["rect"];
    assert_eq!(point["title"], "point");
    assert_eq!(point["description"], "A point on the grid.");
    assert_eq!(point["properties"]["x"]["description"], "Columns from the left.");
    assert_eq!(point["properties"]["y"].get("description"), None);
    // The docs never change what is accepted.
    assert_eq!(point["required"], json!(["x", "y"]));

    // A component built without the SDK's macro has names but no docs.
    let run = airlock(&["inspect", component("probe").to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["description"], serde_json::Value::Null);
}

/// `bytes` without their first section (the signature, when signed).
fn strip_first_section(bytes: &[u8]) -> Vec<u8> {
    let mut pos = 9; // header, then the section id
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = bytes[pos];
        pos += 1;
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    [&bytes[..8], &bytes[pos + len..]].concat()
}

#[test]
fn signed_components_load_and_unsigned_tampered_or_foreign_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    for who in ["ci", "other"] {
        let run = airlock(&["keygen", "--out", d(who).to_str().unwrap()]);
        assert_eq!(run.code, 0, "{run:?}");
    }
    // Never overwrites a key.
    assert_eq!(airlock(&["keygen", "--out", d("ci").to_str().unwrap()]).code, 2);
    std::fs::copy(component("hello"), d("hello.wasm")).unwrap();
    let sign = |key: &str, out: &str| {
        airlock(&[
            "sign",
            d("hello.wasm").to_str().unwrap(),
            "--key",
            d(key).to_str().unwrap(),
            "--out",
            d(out).to_str().unwrap(),
        ])
    };
    assert_eq!(sign("ci.key", "signed.wasm").code, 0);
    assert_eq!(sign("other.key", "foreign.wasm").code, 0);

    let verify = airlock(&[
        "verify",
        d("signed.wasm").to_str().unwrap(),
        "--key",
        d("ci.pub").to_str().unwrap(),
    ]);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert!(verify.stdout.contains("is signed by ci (ed25519:"), "{verify:?}");
    let inspect = airlock(&["inspect", d("signed.wasm").to_str().unwrap()]);
    assert!(inspect.stdout.contains("\nsigned  claims key id "), "{inspect:?}");
    let unsigned = airlock(&["inspect", d("hello.wasm").to_str().unwrap(), "--json"]);
    assert_eq!(unsigned.json()["signatures"], serde_json::Value::Null);

    let mut tampered = std::fs::read(d("signed.wasm")).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    std::fs::write(d("tampered.wasm"), &tampered).unwrap();
    std::fs::write(
        d("stripped.wasm"),
        strip_first_section(&std::fs::read(d("signed.wasm")).unwrap()),
    )
    .unwrap();

    let cfg = config(
        dir.path(),
        &format!(
            "[runtime]\ndata-dir = \"data\"\n[signers.ci]\npublic-key = \"ci.pub\"\n[signing]\ntrusted-signers = [\"ci\"]\n\
             [actions.hello]\ncomponent = {}\n[actions.unpinned]\ncomponent = {}\ntrusted-signers = []\n",
            toml_path(&d("signed.wasm")),
            toml_path(&d("hello.wasm")),
        ),
    );
    let args = r#"{"who": {"name": "Ada", "languages": ["fr"]}}"#;
    // The config's own data directory (not the shared test one).
    let airlock = |a: &[&str]| support::airlock_with(a, b"", &[]);
    let run = airlock(&[
        "invoke",
        "--config",
        cfg.to_str().unwrap(),
        "hello",
        "greet",
        "--args",
        args,
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["text"], "Bonjour, Ada!");
    let audit = std::fs::read_to_string(dir.path().join("data/audit/audit.log")).unwrap();
    let started: serde_json::Value = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["event"]["kind"] == "invocation-started")
        .unwrap();
    assert!(
        started["event"]["signer"].as_str().unwrap().starts_with("ci (ed25519:"),
        "{started}"
    );
    // An action that opts out of signatures runs unsigned code.
    let run = airlock(&[
        "invoke",
        "--config",
        cfg.to_str().unwrap(),
        "unpinned",
        "greet",
        "--args",
        args,
    ]);
    assert_eq!(run.code, 0, "{run:?}");

    for (file, why) in [
        ("hello.wasm", "it is not signed"),
        ("stripped.wasm", "it is not signed"),
        ("tampered.wasm", "no trusted signer's signature matches it"),
        ("foreign.wasm", "no trusted signer's signature matches it"),
    ] {
        std::fs::copy(d(file), d("signed.wasm")).unwrap();
        let run = airlock(&[
            "invoke",
            "--config",
            cfg.to_str().unwrap(),
            "hello",
            "greet",
            "--args",
            args,
        ]);
        assert_eq!(run.code, 3, "{file}: {run:?}");
        assert!(
            run.stderr.contains(why) && run.stderr.contains("trusted signer (ci)"),
            "{file}: {run:?}"
        );
        let check = airlock(&["check", "--config", cfg.to_str().unwrap()]);
        assert_ne!(check.code, 0, "{file}: {check:?}");
        let verify = airlock(&[
            "verify",
            d("signed.wasm").to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--action",
            "hello",
        ]);
        assert_eq!(verify.code, 3, "{file}: {verify:?}");
    }

    // A secret key others can read is refused, naming the fix.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d("ci.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = sign("ci.key", "again.wasm");
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("chmod 600"), "{run:?}");
    // An unknown signer name is a config error.
    let bad = config(dir.path(), "[signing]\ntrusted-signers = [\"nobody\"]\n");
    let run = airlock(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("no signer `nobody` under [signers]"), "{run:?}");
}

#[test]
fn diff_names_new_imports_and_changed_functions_and_pinned_upgrades_must_accept_them() {
    let (v1, v2) = (component("notes_v1"), component("notes_v2"));
    let run = airlock(&["diff", v1.to_str().unwrap(), v2.to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let d = run.json();
    assert_eq!(d["format"], "airlock.diff/v1");
    let added: Vec<&str> = d["imports"]["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(added, ["airlock:cap/credentials@0.1.0", "airlock:cap/http@0.1.0"]);
    assert_eq!(d["imports"]["added"][1]["capability"], "http");
    assert_eq!(d["imports"]["removed"], json!([]));
    assert_eq!(
        d["functions"]["added"],
        json!(["announce(name: string) -> result<u16, string>"])
    );
    assert_eq!(
        d["functions"]["changed"],
        json!([{
            "old": "save(name: string, text: string) -> result<u64, string>",
            "new": "save(name: string, text: string, tags: list<string>) -> result<u64, string>",
        }])
    );
    assert_eq!(d["grants"], serde_json::Value::Null);
    // The same component twice: nothing.
    let same = airlock(&["diff", v1.to_str().unwrap(), v1.to_str().unwrap()]);
    assert!(same.stdout.contains("same imports and functions"), "{same:?}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("notes")).unwrap();
    let digest = |p: &std::path::Path| format!("blake3:{}", blake3::hash(&std::fs::read(p).unwrap()).to_hex());
    let write_config = |pin: &str, extra: &str| {
        config(
            dir.path(),
            &format!(
                "[runtime]\ndata-dir = \"data\"\n[actions.notes]\ncomponent = \"notes.wasm\"\ndigest = \"{pin}\"\n{extra}\n\
                 [actions.notes.grants]\nlog = true\nfiles = {{ dir = \"notes\", mode = \"read-write\" }}\n\
                 [[actions.notes.grants.http.allow]]\ndestination = \"https://announce.example\"\n"
            ),
        )
    };
    // With the action's grants: what the new version would newly use.
    let cfg = write_config(&digest(&v1), "");
    let run = airlock(&[
        "diff",
        v1.to_str().unwrap(),
        v2.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--action",
        "notes",
        "--json",
    ]);
    assert_eq!(
        run.json()["grants"],
        json!({"newly-used": ["credentials", "http"], "ungranted": [], "unused": ["log"]})
    );

    let check = |cfg: &std::path::Path| support::airlock_with(&["check", "--config", cfg.to_str().unwrap()], b"", &[]);
    // Running it records the pin; `check` only compares.
    let run_it = |cfg: &std::path::Path| {
        support::airlock_with(
            &[
                "invoke",
                "--config",
                cfg.to_str().unwrap(),
                "notes",
                "names",
                "--args",
                "{}",
            ],
            b"",
            &[],
        )
    };
    std::fs::copy(&v1, dir.path().join("notes.wasm")).unwrap();
    assert_eq!(check(&cfg).code, 0);
    assert_eq!(run_it(&cfg).code, 0);
    // The pin moves to a version that reaches the network: refused until
    // the config acknowledges the new imports.
    std::fs::copy(&v2, dir.path().join("notes.wasm")).unwrap();
    let cfg = write_config(&digest(&v2), "");
    assert_eq!(run_it(&cfg).code, 3);
    let run = check(&cfg);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains(
            "imports airlock:cap/credentials@0.1.0, airlock:cap/http@0.1.0, which the component pinned before"
        ) && run
            .stderr
            .contains("accept-new-imports = [\"airlock:cap/credentials\", \"airlock:cap/http\"]")
            && run.stderr.contains("airlock diff "),
        "{run:?}"
    );
    // Accepting only part of it is not enough.
    let cfg = write_config(&digest(&v2), "accept-new-imports = [\"http\"]");
    assert_eq!(check(&cfg).code, 3);
    let cfg = write_config(&digest(&v2), "accept-new-imports = [\"http\", \"credentials\"]");
    let run = check(&cfg);
    assert_eq!(run.code, 0, "{run:?}");
    // A dry run records nothing: without the acknowledgement it is
    // still refused ...
    assert_eq!(check(&write_config(&digest(&v2), "")).code, 3);
    // ... until the acknowledged upgrade runs.
    let cfg = write_config(&digest(&v2), "accept-new-imports = [\"http\", \"credentials\"]");
    let run = run_it(&cfg);
    assert_eq!(run.code, 0, "{run:?}");
    // Once accepted it stays accepted here, and the old version was kept.
    let cfg = write_config(&digest(&v2), "");
    assert_eq!(check(&cfg).code, 0);
    let pins: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("data/components/pins.json")).unwrap()).unwrap();
    assert_eq!(pins["notes"]["current"], digest(&v2).as_str());
    assert_eq!(pins["notes"]["previous"], digest(&v1).as_str());
}

/// `cargo ARGS` in `dir`, sharing the workspace's target directory and
/// lock file (so nothing new is fetched or built twice).
fn cargo_in(dir: &std::path::Path, args: &[&str]) -> support::Run {
    let out = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", support::target_dir())
        .env("AIRLOCK", env!("CARGO_BIN_EXE_airlock"))
        .env_remove("CARGO_INCREMENTAL")
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo");
    support::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn scaffolded_actions_build_check_run_and_test_under_a_temporary_policy() {
    let dir = tempfile::tempdir().unwrap();
    let sdk = support::repo_root().join("sdk");
    let lock = std::fs::read(support::repo_root().join("Cargo.lock")).unwrap();
    let mut built = Vec::new();
    for (name, template) in [
        ("scaffold-pure", "pure"),
        ("scaffold-files", "files"),
        ("scaffold-http", "http"),
    ] {
        let crate_dir = dir.path().join(name);
        let run = airlock(&[
            "new",
            name,
            "--template",
            template,
            "--dir",
            crate_dir.to_str().unwrap(),
            "--sdk-path",
            sdk.to_str().unwrap(),
        ]);
        assert_eq!(run.code, 0, "{run:?}");
        for file in [
            "Cargo.toml",
            "wit/world.wit",
            "src/lib.rs",
            "tests/action.rs",
            "airlock.toml",
            "README.md",
        ] {
            assert!(crate_dir.join(file).is_file(), "{template}: no {file}");
        }
        std::fs::write(crate_dir.join("Cargo.lock"), &lock).unwrap();
        let build = cargo_in(
            &crate_dir,
            &["build", "--release", "--offline", "--target", "wasm32-wasip2"],
        );
        assert_eq!(build.code, 0, "{template}: {build:?}");
        let wasm = support::target_dir().join(format!("wasm32-wasip2/release/{}.wasm", name.replace('-', "_")));
        // Its own config, with the component where the shared target put it.
        let config = std::fs::read_to_string(crate_dir.join("airlock.toml"))
            .unwrap()
            .replace(
                &format!("\"target/wasm32-wasip2/release/{}.wasm\"", name.replace('-', "_")),
                &toml_path(&wasm),
            );
        std::fs::write(crate_dir.join("airlock.toml"), config).unwrap();
        let check = support::airlock_with(
            &["check", "--config", crate_dir.join("airlock.toml").to_str().unwrap()],
            b"",
            &[],
        );
        assert_eq!(check.code, 0, "{template}: {check:?}");
        built.push((name, crate_dir, wasm));
    }
    // The generated docs travel into the tool.
    let (_, pure_dir, pure_wasm) = &built[0];
    let m = airlock(&["inspect", pure_wasm.to_str().unwrap(), "--json"]).json();
    assert_eq!(
        m["functions"][0]["params"]["properties"]["who"]["description"],
        "the name to greet."
    );
    let cfg = pure_dir.join("airlock.toml");
    let run = support::airlock_with(
        &[
            "invoke",
            "--config",
            cfg.to_str().unwrap(),
            "scaffold-pure",
            "greet",
            "--args",
            r#"{"who": "Ada"}"#,
        ],
        b"",
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json(), json!("Hello, Ada!"));
    let (_, files_dir, _) = &built[1];
    let cfg = files_dir.join("airlock.toml");
    let run = support::airlock_with(
        &[
            "invoke",
            "--config",
            cfg.to_str().unwrap(),
            "scaffold-files",
            "save",
            "--args",
            r#"{"name": "n1", "text": "hello"}"#,
        ],
        b"",
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        std::fs::read_to_string(files_dir.join("notes-data/notes/n1.txt")).unwrap(),
        "hello"
    );

    // The generated tests run the functions under a temporary policy
    // through the airlock binary (the harness builds the component itself).
    for (name, crate_dir, _) in &built {
        let test = cargo_in(crate_dir, &["test", "--release", "--offline"]);
        assert_eq!(test.code, 0, "{name}: {test:?}");
        assert!(test.stdout.contains("test result: ok. 1 passed"), "{name}: {test:?}");
    }
    // Names that are not WIT, crate and action names at once are refused.
    let run = airlock(&["new", "Bad_Name", "--dir", dir.path().join("bad").to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("lowercase words"), "{run:?}");
}

#[test]
fn readme_snippets_are_quoted_from_code_that_ci_builds() {
    let root = support::repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut lines = readme.lines();
    let mut checked = 0;
    while let Some(line) = lines.next() {
        let Some(path) = line.strip_prefix("<!-- from: ").and_then(|l| l.strip_suffix(" -->")) else {
            continue;
        };
        assert!(
            lines.next().unwrap().starts_with("```"),
            "{path}: a fenced block must follow"
        );
        let block: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
        let source = std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(
            source.contains(&block.join("\n")),
            "README.md quotes {path}, but the file no longer contains:\n{}",
            block.join("\n")
        );
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} quoted snippets found");
}

#[test]
fn completions_man_pages_and_the_packaging_files() {
    for shell in ["bash", "zsh", "fish"] {
        let run = airlock(&["completions", shell]);
        assert_eq!(run.code, 0, "{shell}: {run:?}");
        for command in ["serve", "keygen", "diff", "approvals"] {
            assert!(run.stdout.contains(command), "{shell} completions lack {command}");
        }
    }
    let man = airlock(&["man"]);
    assert_eq!(man.code, 0, "{man:?}");
    assert!(
        man.stdout.starts_with(".ie \\n(.g .ds Aq") || man.stdout.contains(".TH airlock 1"),
        "{}",
        &man.stdout[..200.min(man.stdout.len())]
    );
    assert!(man.stdout.contains("serve"));
    let dir = tempfile::tempdir().unwrap();
    let run = airlock(&["man", "--out", dir.path().to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    for page in [
        "airlock.1",
        "airlock-serve.1",
        "airlock-audit-verify.1",
        "airlock-approvals-approve.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}");
        // The synopsis names the command as it is typed.
        let command = page.trim_end_matches(".1").replace('-', " ");
        assert!(text.contains(&format!("\\fB{command}\\fR")), "{page}: {text}");
    }

    // The systemd unit: valid, and hardened (systemd's own exposure score).
    let root = support::repo_root();
    let unit = std::fs::read_to_string(root.join("packaging/airlock.service")).unwrap();
    for key in [
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=airlock",
        "CapabilityBoundingSet=\n",
        "DynamicUser=yes",
    ] {
        assert!(unit.contains(key), "the unit lacks {key:?}");
    }
    let checked = dir.path().join("airlock.service");
    std::fs::write(
        &checked,
        unit.replace("/usr/local/bin/airlock", env!("CARGO_BIN_EXE_airlock")),
    )
    .unwrap();
    let analyze = |args: &[&str]| {
        let out = std::process::Command::new("systemd-analyze")
            .args(args)
            .arg(&checked)
            .output()
            .expect("systemd-analyze (Debian's systemd package; scripts/test.sh installs it)");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = analyze(&["verify", "--man=no"]);
    assert_eq!((code, stderr.trim()), (Some(0), ""), "systemd-analyze verify");
    // "Overall exposure level" at most 2.0 of 10.
    let (code, stderr) = analyze(&["security", "--offline=true", "--threshold=20", "--no-pager"]);
    assert_eq!(code, Some(0), "exposure above 2.0: {stderr}");

    // The image: built in one stage, run as a non-root user in another,
    // with its state in a volume (a read-only root filesystem works).
    let docker = std::fs::read_to_string(root.join("packaging/Dockerfile")).unwrap();
    let stages: Vec<&str> = docker.split("\nFROM ").skip(1).collect();
    assert_eq!(stages.len(), 2, "two stages");
    let last = stages[1];
    let user = last
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the run stage sets USER");
    assert!(!user.starts_with("root") && !user.starts_with("0"), "runs as {user}");
    assert!(last.contains("VOLUME [\"/var/lib/airlock\"]") && last.contains("--data-dir\", \"/var/lib/airlock\""));
    assert!(
        docker.contains("cargo build --release --locked"),
        "the image builds what Cargo.lock pins"
    );
    assert!(
        !docker.lines().any(|l| l.starts_with("ADD ")),
        "no ADD (remote fetches bypass the lock file)"
    );
    // `COPY . .` takes the repository: never build output or local state
    // (a data directory holds the vault and its key).
    let ignored = std::fs::read_to_string(root.join(".dockerignore")).expect("a .dockerignore");
    for pattern in ["target", ".git", ".airlock", "**/*.key"] {
        assert!(
            ignored.lines().any(|l| l.trim() == pattern),
            ".dockerignore lacks {pattern}"
        );
    }
}

/// An OpenTelemetry setting that cannot work stops a command that runs
/// actions at start, naming the variable, instead of exporting nothing
/// without a word; other commands never look at it.
#[test]
fn an_otel_setting_that_cannot_work_is_refused_at_start() {
    let hello = component("hello");
    let data = tempfile::tempdir().unwrap();
    let greet = [
        "invoke",
        "--data-dir",
        data.path().to_str().unwrap(),
        hello.to_str().unwrap(),
        "greet",
        "--args",
        r#"{"who":{"name":"a","languages":[]}}"#,
    ];
    for (vars, named) in [
        (
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            vec![
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "https://collector.invalid/v1/traces",
                ),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
            ],
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ),
    ] {
        let run = airlock_with(&greet, b"", &vars);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains(named), "{run:?}");
        assert_eq!(run.stdout, "", "nothing ran");
        let other = airlock_with(&["inspect", hello.to_str().unwrap()], b"", &vars);
        assert_eq!(other.code, 0, "{other:?}");
    }
    // Turned off, the same settings are not looked at.
    let broken = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
    ];
    let run = airlock_with(&greet, b"", &[broken[0], broken[1], ("OTEL_SDK_DISABLED", "true")]);
    assert_eq!(run.code, 0, "{run:?}");
    // A trace in the environment is taken when valid and ignored when not
    // (W3C); only a --traceparent typed by hand is refused.
    let run = airlock_with(&greet, b"", &[("TRACEPARENT", "garbage"), ("TRACESTATE", "a=b")]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = airlock_with(&[&greet[..], &["--traceparent", "garbage"]].concat(), b"", &[]);
    assert_eq!(run.code, 2, "{run:?}");
}
