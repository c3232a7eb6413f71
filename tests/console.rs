//! The reviewer console in a real browser: headless Chromium, driven over
//! WebDriver, signs in, opens a pending approval, approves it, and sees the
//! invocation complete; forms without the CSRF token are refused.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::http::{Server, request, sign_in};
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
    // The first carries the agent's stated reason (with markup in it) and
    // the W3C trace it belongs to.
    let bearer = format!("Bearer {agent}");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let first = request(
        &server.addr,
        "POST",
        "/v1/invocations",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
            ("traceparent", traceparent),
        ],
        json!({"action": "deploy", "function": "echo", "args": {"value": "release 42"}, "wait-ms": 0,
               "reason": "ship the <b>fix</b> for ticket 42"})
        .to_string()
        .as_bytes(),
    );
    assert_eq!(first.status, 202, "{first:?}");
    let approval = first.json()["approval"].as_str().unwrap().to_string();
    let invocation = first.json()["invocation"].as_str().unwrap().to_string();
    let second = server.post(
        "/v1/invocations",
        Some(&agent),
        &json!({"action": "deploy", "function": "echo", "args": {"value": "<script>alert(1)</script>"}, "wait-ms": 0}),
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
    // Why the agent asks, as text (its markup is not run), and its trace.
    assert_eq!(browser.text("#stated-reason"), "ship the <b>fix</b> for ticket 42");
    assert_eq!(browser.text("#traceparent"), traceparent);

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

    // A page of another site (another loopback port: the same site to the
    // browser, so even a SameSite=Strict cookie goes along) posts a form to
    // the console with the session's CSRF token, as if it had leaked: the
    // browser marks the post as not same-origin, and it is refused.
    browser.goto(&format!("{base}/console/approvals/{other}"));
    let csrf = browser
        .source()
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page's CSRF field")
        .to_string();
    let evil = serve_page(format!(
        "<!doctype html><form method=\"post\" action=\"{base}/console/approvals/{other}/decide\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"verdict\" value=\"approve\">\
         <input type=\"hidden\" name=\"reason\" value=\"forged\"><button id=\"go\">Win a prize</button></form>"
    ));
    browser.goto(&format!("http://{evil}/"));
    browser.click("#go");
    assert!(browser.text("#error").contains("another site"), "{}", browser.source());
    let still = server.get(&format!("/v1/approvals/{other}"), Some(&reviewer)).json();
    assert_eq!(still["state"], "pending", "{still}");
    assert_eq!(still["decisions"], json!([]), "{still}");

    // Approve in the browser; the invocation runs and completes.
    browser.goto(&format!("{base}/console/approvals/{approval}"));
    browser.type_into("#approve-form input[name=reason]", "looks right");
    browser.click("#approve");
    assert_eq!(browser.wait_for_text("#state", "approved"), "approved");
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
    assert_eq!(browser.text("#stated-reason"), "ship the <b>fix</b> for ticket 42");
    // The audit trail keeps both, on the request and on the run.
    let records = server
        .get(&format!("/v1/audit?invocation={invocation}"), Some(&reviewer))
        .json();
    let records = records["records"].as_array().unwrap().clone();
    for kind in ["approval-requested", "invocation-started"] {
        let event = records
            .iter()
            .map(|r| &r["event"])
            .find(|e| e["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}: {records:?}"));
        assert_eq!(event["reason"], "ship the <b>fix</b> for ticket 42", "{event}");
        assert_eq!(event["traceparent"], traceparent, "{event}");
    }

    // History, audit browser with its verification status, and the catalog.
    browser.goto(&format!("{base}/console/invocations"));
    assert!(browser.text("#invocations").contains(&invocation));
    browser.goto(&format!("{base}/console/audit"));
    assert!(browser.text("#chain").contains("Chain intact"), "{}", browser.source());
    browser.goto(&format!("{base}/console/actions"));
    assert!(browser.source().contains("Deploys &lt;b&gt;carefully&lt;/b&gt;"));
}

/// Serve `html` to every request on a loopback port of its own, for the
/// rest of the test; returns `127.0.0.1:PORT`.
fn serve_page(html: String) -> String {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                    html.len()
                )
                .as_bytes(),
            );
        }
    });
    addr
}

#[test]
fn the_session_cookie_is_http_only_and_the_catalog_lists_only_the_callers_actions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    let config = dir.path().join("airlock.toml");
    let gated = toml_path(&component("gated"));
    let action = |name: &str, invoke: &str, approve: &str| {
        format!(
            "[actions.{name}]\ncomponent = {gated}\n[actions.{name}.grants]\napproval = true\n\
             files = {{ dir = \"work\", mode = \"read-write\" }}\n[actions.{name}.access]\n\
             invoke = [{invoke}]\napprove = [{approve}]\n"
        )
    };
    std::fs::write(
        &config,
        format!(
            "[runtime]\ndata-dir = \"data\"\n{}{}{}",
            action("deploy", "\"role:agent\"", "\"role:reviewer\""),
            action("reports", "\"role:reviewer\"", "\"role:admin\""),
            action("payroll", "\"payroll-bot\"", "\"role:admin\""),
        ),
    )
    .unwrap();
    let reviewer = token(&config, "alice", "human", "reviewer");
    let server = Server::start(&config);

    // The session cookie is out of reach of scripts, and of other sites.
    let set_cookie = sign_in(&server, &reviewer);
    let attributes: Vec<&str> = set_cookie.split(';').map(str::trim).collect();
    assert!(attributes[0].starts_with("airlock_session="), "{set_cookie}");
    assert!(
        attributes.iter().any(|a| a.eq_ignore_ascii_case("HttpOnly")),
        "{set_cookie}"
    );
    assert!(
        attributes.iter().any(|a| a.eq_ignore_ascii_case("SameSite=Strict")),
        "{set_cookie}"
    );

    // The catalog shows what this reviewer may approve or invoke, nothing else.
    let cookie = attributes[0];
    let catalog = request(&server.addr, "GET", "/console/actions", &[("Cookie", cookie)], b"");
    assert_eq!(catalog.status, 200, "{catalog:?}");
    let html = String::from_utf8_lossy(&catalog.body);
    assert!(html.contains("<h2>deploy</h2>"), "{html}");
    assert!(html.contains("<h2>reports</h2>"), "{html}");
    assert!(!html.contains("payroll"), "{html}");
}

/// The CSRF token of the signed-in session, from a console page.
fn csrf_of(server: &Server, cookie: &str) -> String {
    let page = request(&server.addr, "GET", "/console", &[("Cookie", cookie)], b"");
    assert_eq!(page.status, 200, "{page:?}");
    let html = String::from_utf8_lossy(&page.body).into_owned();
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF field")
        .to_string()
}

#[test]
fn cross_site_posts_and_ambiguous_session_cookies_are_refused() {
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
console-origins = ["https://airlock.example"]
[actions.deploy]
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
    let pending = server.post(
        "/v1/invocations",
        Some(&agent),
        &json!({"action": "deploy", "function": "echo", "args": {"value": "v1"}, "wait-ms": 0}),
    );
    assert_eq!(pending.status, 202, "{pending:?}");
    let approval = pending.json()["approval"].as_str().unwrap().to_string();
    let set_cookie = sign_in(&server, &reviewer);
    let session = set_cookie.split(';').next().unwrap().to_string();
    let csrf = csrf_of(&server, &session);
    let own_origin = format!("http://{}", server.addr);
    let decide = |extra: &[(&str, &str)]| {
        let mut headers = vec![
            ("Cookie", session.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        headers.extend_from_slice(extra);
        request(
            &server.addr,
            "POST",
            &format!("/console/approvals/{approval}/decide"),
            &headers,
            format!("csrf={csrf}&verdict=approve&reason=looks+fine").as_bytes(),
        )
    };
    let still_pending = || {
        let a = server.get(&format!("/v1/approvals/{approval}"), Some(&reviewer)).json();
        assert_eq!(a["state"], "pending", "{a}");
        assert_eq!(a["decisions"], json!([]), "{a}");
    };

    // A post from another site, with a valid session and CSRF token (a
    // page that somehow learned it), is refused whatever else it carries.
    for extra in [
        vec![("Origin", "http://evil.example")],
        vec![("Origin", "null")],
        vec![("Origin", "http://localhost:1")],
        vec![("Origin", "https://airlock.example.evil")],
        vec![("Origin", own_origin.as_str()), ("Origin", "http://evil.example")],
        vec![("Sec-Fetch-Site", "cross-site")],
        vec![("Sec-Fetch-Site", "same-site")],
        vec![("Origin", own_origin.as_str()), ("Sec-Fetch-Site", "cross-site")],
    ] {
        let r = decide(&extra);
        assert_eq!(r.status, 403, "{extra:?}: {r:?}");
        let html = String::from_utf8_lossy(&r.body);
        assert!(html.contains("another site"), "{extra:?}: {html}");
        still_pending();
    }
    // Sign-in and sign-out from another site are refused too.
    let page = server.get("/console/login", None);
    let nonce = page
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .and_then(|kv| kv.strip_prefix("airlock_login="))
        .unwrap()
        .to_string();
    let login_cookie = format!("airlock_login={nonce}");
    let sign_in_from = |origin: &str| {
        request(
            &server.addr,
            "POST",
            "/console/login",
            &[
                ("Cookie", login_cookie.as_str()),
                ("Origin", origin),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            format!("token={reviewer}&csrf={nonce}").as_bytes(),
        )
    };
    let r = sign_in_from("http://evil.example");
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.header("set-cookie").is_none(), "{r:?}");
    // The console's public origin behind a proxy (service.console-origins).
    let r = sign_in_from("https://airlock.example");
    assert_eq!(r.status, 303, "{r:?}");
    let r = request(
        &server.addr,
        "POST",
        "/console/logout",
        &[
            ("Cookie", session.as_str()),
            ("Origin", "http://evil.example"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        format!("csrf={csrf}").as_bytes(),
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(
        csrf_of(&server, &session),
        csrf,
        "the session outlived the forged sign-out"
    );

    // Two session cookies, in one header or two, the same session twice
    // included: refused, never a guess at which is meant.
    let other = sign_in(&server, &reviewer);
    let other = other.split(';').next().unwrap();
    let both = format!("{session}; {other}");
    let twice = format!("{session}; {session}");
    for headers in [
        vec![("Cookie", both.as_str())],
        vec![("Cookie", twice.as_str())],
        vec![("Cookie", session.as_str()), ("Cookie", other)],
    ] {
        let r = request(&server.addr, "GET", "/console", &headers, b"");
        assert_eq!(r.status, 400, "{headers:?}: {r:?}");
        assert!(String::from_utf8_lossy(&r.body).contains("more than one airlock_session cookie"));
        let mut post = headers.clone();
        post.push(("Content-Type", "application/x-www-form-urlencoded"));
        let r = request(
            &server.addr,
            "POST",
            &format!("/console/approvals/{approval}/decide"),
            &post,
            format!("csrf={csrf}&verdict=approve").as_bytes(),
        );
        assert_eq!(r.status, 400, "{r:?}");
        still_pending();
    }

    // From the console's own page (the browser says so), or from a client
    // that is no browser (no Origin) with the CSRF token: decided.
    let r = decide(&[("Origin", own_origin.as_str()), ("Sec-Fetch-Site", "same-origin")]);
    assert_eq!(r.status, 303, "{r:?}");
    let a = server.get(&format!("/v1/approvals/{approval}"), Some(&reviewer)).json();
    assert_eq!(a["state"], "approved", "{a}");
}

/// Markup, attribute breakers, a `javascript:` link and a bidi override,
/// each of which would do something if a page put it in raw.
const HOSTILE: [&str; 4] = [
    "<script>document.title='pwned'</script>",
    "\"><img src=x onerror=\"document.title='pwned'\">",
    "javascript:document.title='pwned'",
    "'><svg onload=alert(1)><a href='javascript:alert(1)'>x</a>",
];

/// What the page in `browser` must not be: no script, image, SVG or
/// frame element, no event-handler attribute, no link or form leaving the
/// console, and a title of its own; and every one of `shown` is on it as
/// text. A bidi override shows as `\u{202e}`.
fn assert_inert(browser: &Browser, page: &str, shown: &[&str]) {
    let report = browser.execute(
        "const bad = [...document.querySelectorAll('script, img, svg, iframe, object, embed, frame, base, meta[http-equiv]')]\
           .map(e => e.outerHTML);\
         const handlers = [...document.querySelectorAll('*')]\
           .flatMap(e => [...e.attributes].filter(a => a.name.toLowerCase().startsWith('on')).map(a => e.tagName + ' ' + a.name));\
         const links = [...document.querySelectorAll('a[href], form[action], link[href]')]\
           .map(e => new URL(e.href || e.action, location.href))\
           .filter(u => u.origin !== location.origin || !u.pathname.startsWith('/console'))\
           .map(u => u.href);\
         return {bad, handlers, links, title: document.title, text: document.body.innerText,\
                 bidi: /[\\u202a-\\u202e\\u2066-\\u2069]/.test(document.body.innerText)};",
    );
    let none = json!([]);
    assert_eq!(report["bad"], none, "{page}: {}", browser.source());
    assert_eq!(report["handlers"], none, "{page}: {}", browser.source());
    assert_eq!(report["links"], none, "{page}: {}", browser.source());
    assert!(!report["title"].as_str().unwrap().contains("pwned"), "{page}: {report}");
    assert_eq!(report["bidi"], false, "{page}: {report}");
    let text = report["text"].as_str().unwrap();
    for s in shown {
        assert!(text.contains(s), "{page} does not show {s:?} as text: {text}");
    }
}

#[test]
fn hostile_text_in_every_field_a_caller_controls_is_shown_as_text() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    let config = dir.path().join("airlock.toml");
    let gated = toml_path(&component("gated"));
    let description = serde_json::to_string(HOSTILE[1]).unwrap();
    std::fs::write(
        &config,
        format!(
            r#"
[runtime]
data-dir = "data"
[service]
audit-readers = ["role:reviewer"]
[actions.deploy]
description = {description}
component = {gated}
[actions.deploy.grants]
approval = true
files = {{ dir = "work", mode = "read-write" }}
[actions.deploy.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]
[actions.deploy.approval]
invocation = true
[actions.plain]
component = {gated}
[actions.plain.grants]
approval = true
files = {{ dir = "work", mode = "read-write" }}
[actions.plain.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]
"#
        ),
    )
    .unwrap();
    let agent = token(&config, "deploy-bot", "agent", "agent");
    let reviewer = token(&config, "alice", "human", "reviewer");
    let server = Server::start(&config);
    let base = format!("http://{}", server.addr);
    let all = HOSTILE.concat();
    // Arguments are any JSON: a bidi override in them is shown escaped
    // (the API refuses one in a stated reason).
    let spoof = format!("{all}\u{202e}gnp.exe");
    // Arguments show as JSON: quotes escaped, the rest as it came.
    let all_json = serde_json::to_string(&all).unwrap();
    let all_json = all_json.trim_end_matches('"').to_string();

    // The agent's arguments and stated reason.
    let held = server.post(
        "/v1/invocations",
        Some(&agent),
        &json!({"action": "deploy", "function": "echo", "args": {"value": spoof}, "wait-ms": 0,
                "reason": HOSTILE[3]}),
    );
    assert_eq!(held.status, 202, "{held:?}");
    let held_approval = held.json()["approval"].as_str().unwrap().to_string();
    let held_invocation = held.json()["invocation"].as_str().unwrap().to_string();
    // The guest's own approval request: its summary and detail.
    let asked = server.post(
        "/v1/invocations",
        Some(&agent),
        &json!({"action": "plain", "function": "ask", "args": {"summary": HOSTILE[0], "detail": HOSTILE[2]},
                "wait-ms": 0}),
    );
    assert_eq!(asked.status, 202, "{asked:?}");
    let asked_invocation = asked.json()["invocation"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let asked_approval = loop {
        let r = server.get("/v1/approvals", Some(&reviewer));
        let found = r.json()["approvals"].as_array().and_then(|list| {
            list.iter()
                .find(|a| a["invocation"] == asked_invocation.as_str())
                .cloned()
        });
        if let Some(a) = found {
            break a["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "{r:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The guest's result, and its error text.
    let echoed = server.post(
        "/v1/invocations",
        Some(&agent),
        &json!({"action": "plain", "function": "echo", "args": {"value": HOSTILE[2]}}),
    );
    assert_eq!(echoed.status, 200, "{echoed:?}");
    let echoed = echoed.json()["invocation"].as_str().unwrap().to_string();
    let failed = server.post(
        "/v1/invocations",
        Some(&agent),
        &json!({"action": "plain", "function": "write", "args": {"path": format!("../{}", HOSTILE[1]), "data": "x"}}),
    );
    assert!(failed.status < 500, "{failed:?}");
    let failed = failed.json()["invocation"].as_str().unwrap().to_string();

    let browser = Browser::start();
    browser.goto(&format!("{base}/console/login"));
    assert_inert(&browser, "sign-in", &[]);
    browser.type_into("#token", &reviewer);
    browser.click("#sign-in");
    assert!(browser.text("#who").contains("alice"));
    assert_inert(&browser, "pending", &[]);

    browser.goto(&format!("{base}/console/approvals/{held_approval}"));
    assert_inert(&browser, "held request", &[&all_json, HOSTILE[3], "\\u{202e}gnp.exe"]);
    // A reviewer's reason, typed into the form, comes back as text too.
    browser.type_into("#deny-form input[name=reason]", HOSTILE[1]);
    browser.click("#deny");
    assert_eq!(browser.wait_for_text("#state", "denied"), "denied");
    assert_inert(&browser, "denied request", &[HOSTILE[1]]);

    browser.goto(&format!("{base}/console/approvals/{asked_approval}"));
    assert_inert(&browser, "guest request", &[HOSTILE[0], HOSTILE[2]]);
    for (page, shown) in [
        (format!("invocations/{held_invocation}"), vec![all_json.as_str()]),
        (format!("invocations/{echoed}"), vec![HOSTILE[2]]),
        (format!("invocations/{failed}"), vec![]),
        ("invocations".to_string(), vec![]),
        ("audit".to_string(), vec![]),
        ("actions".to_string(), vec![HOSTILE[1]]),
    ] {
        browser.goto(&format!("{base}/console/{page}"));
        assert_inert(&browser, &page, &shown);
    }
    // The error text names the path the guest tried, quoted.
    browser.goto(&format!("{base}/console/invocations/{failed}"));
    assert!(browser.text("#error").contains("img src=x"), "{}", browser.source());
    // The audit browser shows the records that carry them.
    browser.goto(&format!("{base}/console/audit"));
    assert!(browser.text("#records").contains("onerror"), "{}", browser.source());
    // An id in the path is echoed on the error page, as text.
    let id: String = percent(HOSTILE[1]);
    browser.goto(&format!("{base}/console/approvals/{id}"));
    assert_inert(&browser, "unknown request", &[HOSTILE[1]]);

    // No page may run inline script or style: the policy says so.
    let page = request(&server.addr, "GET", "/console/login", &[], b"");
    let csp = page.header("content-security-policy").unwrap().to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert!(!String::from_utf8_lossy(&page.body).contains("style="), "inline style");
}

/// `s` percent-encoded as one path segment.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
