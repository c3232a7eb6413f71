//! The reviewer console in a real browser: headless Chromium, driven over
//! WebDriver, signs in, opens a pending approval, approves it, and sees the
//! invocation complete; forms without the CSRF token are refused.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::http::{Server, request};
use support::webdriver::Browser;
use support::{component, toml_path};

fn token(config: &std::path::Path, identity: &str, kind: &str, role: &str) -> String {
    support::create_token(config, identity, kind, &[role])
}

#[test]
fn a_reviewer_approves_in_the_browser_and_the_invocation_completes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    let config = dir.path().join("airlock.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[runtime]
data-dir = "data"
[service]
audit-readers = ["role:reviewer"]
[actions.deploy]
description = "Deploys <b>carefully</b>"
component = {}
[actions.deploy.grants]
approval = true
files = {{ dir = "work", mode = "read-write" }}
[actions.deploy.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]
[actions.deploy.approval]
invocation = true
"#,
            toml_path(&component("gated"))
        ),
    )
    .unwrap();
    let agent = token(&config, "deploy-bot", "agent", "agent");
    let reviewer = token(&config, "alice", "human", "reviewer");
    let server = Server::start(&config);
    let base = format!("http://{}", server.addr);

    // Two pending requests; the second one's argument tries to inject HTML.
    let first = server.post(
        "/v1/invocations",
        Some(&agent),
        &json!({"action": "deploy", "function": "echo", "args": {"value": "release 42"}}),
    );
    assert_eq!(first.status, 202, "{first:?}");
    let approval = first.json()["approval"].as_str().unwrap().to_string();
    let invocation = first.json()["invocation"].as_str().unwrap().to_string();
    let second = server.post(
        "/v1/invocations",
        Some(&agent),
        &json!({"action": "deploy", "function": "echo", "args": {"value": "<script>alert(1)</script>"}}),
    );
    assert_eq!(second.status, 202, "{second:?}");
    let other = second.json()["approval"].as_str().unwrap().to_string();

    let browser = Browser::start();
    // Signed out: sent to the sign-in page.
    browser.goto(&format!("{base}/console"));
    assert!(browser.url().ends_with("/console/login"), "{}", browser.url());
    // A wrong token is refused.
    browser.type_into(
        "#token",
        "alk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    );
    browser.click("#sign-in");
    assert!(browser.text("#error").contains("unknown token"));
    browser.goto(&format!("{base}/console/login"));
    browser.type_into("#token", &reviewer);
    browser.click("#sign-in");
    assert!(browser.text("#who").contains("alice"));

    // The pending requests, and exactly what would run.
    browser.click(&format!("a.approval[href$='{approval}']"));
    assert_eq!(browser.text("#state"), "pending");
    assert!(browser.text("#caller").contains("deploy-bot"));
    assert!(browser.text("#action").contains("deploy"));
    assert_eq!(browser.text("#function"), "echo");
    assert!(browser.text("#args").contains("release 42"));
    assert!(browser.text("#component").starts_with("blake3:"));
    assert!(browser.text("#capabilities").contains("files"));
    assert_eq!(browser.text("#rule"), "approval.invocation");

    // The injected markup is shown as text, not run.
    browser.goto(&format!("{base}/console/approvals/{other}"));
    assert!(browser.text("#args").contains("<script>alert(1)</script>"));

    // A form post without the CSRF token is refused (with a valid session).
    let session = browser.cookie("airlock_session").expect("session cookie");
    let cookie = format!("airlock_session={session}");
    let forged = request(
        &server.addr,
        "POST",
        &format!("/console/approvals/{other}/decide"),
        &[
            ("Cookie", &cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        b"verdict=approve&reason=forged",
    );
    assert_eq!(forged.status, 403, "{forged:?}");
    let wrong = request(
        &server.addr,
        "POST",
        &format!("/console/approvals/{other}/decide"),
        &[
            ("Cookie", &cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        b"verdict=approve&csrf=00ff&reason=forged",
    );
    assert_eq!(wrong.status, 403, "{wrong:?}");
    let login = request(
        &server.addr,
        "POST",
        "/console/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!("token={reviewer}").as_bytes(),
    );
    assert_eq!(login.status, 403, "sign-in without its CSRF cookie: {login:?}");
    let still = server.get(&format!("/v1/approvals/{other}"), Some(&reviewer)).json();
    assert_eq!(still["state"], "pending");
    assert_eq!(still["decisions"], json!([]));

    // Approve in the browser; the invocation runs and completes.
    browser.goto(&format!("{base}/console/approvals/{approval}"));
    browser.type_into("#approve-form input[name=reason]", "looks right");
    browser.click("#approve");
    assert_eq!(browser.text("#state"), "approved");
    browser.click("#invocation");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if browser.text("#state") == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "{}", browser.source());
        std::thread::sleep(Duration::from_millis(200));
        browser.goto(&format!("{base}/console/invocations/{invocation}"));
    }
    assert!(browser.text("#result").contains("release 42"));

    // History, audit browser with its verification status, and the catalog.
    browser.goto(&format!("{base}/console/invocations"));
    assert!(browser.text("#invocations").contains(&invocation));
    browser.goto(&format!("{base}/console/audit"));
    assert!(browser.text("#chain").contains("Chain intact"), "{}", browser.source());
    browser.goto(&format!("{base}/console/actions"));
    assert!(browser.source().contains("Deploys &lt;b&gt;carefully&lt;/b&gt;"));
}
