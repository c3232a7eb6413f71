//! Cedar policies: the shipped refund example decides every combination
//! of amount, caller, time and account as its policies say; mistakes in
//! policies are refused at `airlock check` with their line; `airlock
//! policy eval` explains a decision without running anything; the TOML
//! shorthand decides exactly as the access rules it stands for.

mod support;

use airlock::identity::{AccessRule, Caller, IdentityKind};
use airlock::policy::Policy;
use airlock::policy::engine::{Ask, Outcome, Verdict};
use airlock::runtime::Runtime;
use proptest::prelude::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use support::{airlock_with, component, toml_path};

/// The refund example's config and policies, in a temp directory with the
/// freshly built component.
fn refund_world(dir: &Path) -> PathBuf {
    let policies = support::repo_root().join("examples/refunds/policies.cedar");
    std::fs::copy(&policies, dir.join("policies.cedar")).unwrap();
    let example = std::fs::read_to_string(support::repo_root().join("examples/refunds/airlock.toml")).unwrap();
    let text = example.replace(
        "component = \"../../target/wasm32-wasip2/release/refund.wasm\"",
        &format!("component = {}", toml_path(&component("refund"))),
    );
    assert_ne!(text, example, "the example's component line changed");
    let text = format!("[runtime]\ndata-dir = {}\n\n{text}", toml_path(&dir.join("data")));
    let path = dir.join("airlock.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn load(config: &Path) -> Runtime {
    let policy = Policy::load(config).unwrap();
    let mut runtime = Runtime::new(&policy.runtime).unwrap();
    for (name, loaded) in runtime.load_all(&policy) {
        if let Err(e) = loaded {
            panic!("action {name} does not load: {e}");
        }
    }
    runtime
}

fn agent(name: &str, roles: &[&str]) -> Caller {
    Caller {
        name: name.into(),
        kind: IdentityKind::Agent,
        roles: roles.iter().map(|r| r.to_string()).collect(),
        token_id: Some(format!("tok-{name}")),
    }
}

/// Local times of the example's `+01:00` zone, as UTC instants.
fn at(local: &str) -> u64 {
    airlock::time::parse_utc(local).unwrap() - 3_600_000_000
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Allow(&'static [&'static str]),
    Deny(&'static str, &'static [&'static str]),
    Approve {
        group: &'static str,
        quorum: u32,
        policy: &'static str,
        policies: &'static [&'static str],
    },
}

fn shape(v: &Verdict) -> Expect {
    let ids: Vec<String> = v.policy_ids();
    let leak = |ids: Vec<String>| -> &'static [&'static str] {
        Box::leak(
            ids.into_iter()
                .map(|s| &*Box::leak(s.into_boxed_str()))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        )
    };
    match &v.outcome {
        Outcome::Allow => Expect::Allow(leak(ids)),
        Outcome::Deny { reason } => Expect::Deny(Box::leak(reason.clone().into_boxed_str()), leak(ids)),
        Outcome::Approve(r) => Expect::Approve {
            group: Box::leak(r.group.clone().into_boxed_str()),
            quorum: r.quorum,
            policy: Box::leak(r.policy.id.clone().into_boxed_str()),
            policies: leak(ids),
        },
    }
}

/// What the refund policies say, written out case by case.
fn expected(amount: u64, caller: &str, office_hours: bool, closed: bool) -> Expect {
    if closed {
        return Expect::Deny("the account is closed", &["closed-accounts"]);
    }
    if caller != "support" {
        // No policy permits anyone but support (the TOML default access is
        // switched off in the example).
        return Expect::Deny("", &[]);
    }
    let permit = match amount {
        0..=100 => "refund-small",
        101..=10_000 => "refund-medium",
        _ => "refund-large",
    };
    let quorum = if amount > 10_000 { 2 } else { 1 };
    match (office_hours, permit) {
        (true, "refund-small") => Expect::Allow(&["refund-small"]),
        (true, p) => Expect::Approve {
            group: "finance",
            quorum,
            policy: p,
            policies: if p == "refund-medium" {
                &["refund-medium"]
            } else {
                &["refund-large"]
            },
        },
        // Outside office hours the office-hours gate holds everything; the
        // strictest gate wins: a quorum of 2 over 1, then the longer time
        // to decide (office-hours keeps the action's default of 24 h, the
        // amount gates say 4 h).
        (false, p) => Expect::Approve {
            group: "finance",
            quorum,
            policy: if quorum == 2 { "refund-large" } else { "office-hours" },
            policies: match p {
                "refund-small" => &["office-hours", "refund-small"],
                "refund-medium" => &["office-hours", "refund-medium"],
                _ => &["office-hours", "refund-large"],
            },
        },
    }
}

#[test]
fn the_refund_example_decides_every_amount_caller_time_and_account_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = load(&refund_world(dir.path()));
    let refund = runtime.action("refund").unwrap();
    let callers = [
        ("support", agent("support-bot", &["support"])),
        ("other", agent("sales-bot", &["sales"])),
        ("local", Caller::local()),
    ];
    // Tuesday 10:00 and 22:00, Saturday 10:00, in the config's zone.
    let times = [
        ("2026-12-01T10:00:00", true),
        ("2026-12-01T22:00:00", false),
        ("2026-12-05T10:00:00", false),
        ("2026-12-01T08:59:59", false),
        ("2026-12-01T17:59:00", true),
    ];
    let mut checked = 0;
    for amount in [1_u64, 100, 101, 10_000, 10_001, 9_223_372_036_854_775_807] {
        for (who, caller) in &callers {
            for (time, office) in times {
                for (account, closed) in [("ACC-OPEN-7", false), ("ACC-CLOSED-2", true)] {
                    let args = json!({"amount": amount, "account": account, "note": "customer called"});
                    let verdict = refund.decisions.decide(&Ask {
                        caller,
                        function: "issue",
                        args: &args,
                        intent: None,
                        usage: None,
                        now: at(time),
                    });
                    let want = expected(amount, who, office, closed);
                    let got = shape(&verdict);
                    let case = format!("{amount} by {who} at {time} to {account}: {verdict:?}");
                    match (&want, &got) {
                        // The default deny's reason names the caller.
                        (Expect::Deny("", []), Expect::Deny(reason, gp)) => {
                            assert!(gp.is_empty() && reason.starts_with("no policy permits"), "{case}")
                        }
                        _ => assert_eq!(got, want, "{case}"),
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 6 * 3 * 5 * 2);
}

#[test]
fn an_amount_policies_cannot_compare_is_refused_never_rounded() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = load(&refund_world(dir.path()));
    let refund = runtime.action("refund").unwrap();
    let args = json!({"amount": u64::MAX, "account": "ACC-OPEN-7"});
    let verdict = refund.decisions.decide(&Ask {
        caller: &agent("support-bot", &["support"]),
        function: "issue",
        args: &args,
        intent: None,
        usage: None,
        now: at("2026-12-01T10:00:00"),
    });
    let Outcome::Deny { reason } = &verdict.outcome else {
        panic!("{verdict:?}")
    };
    assert!(
        reason.contains("args.amount = 18446744073709551615 exceeds 9223372036854775807"),
        "{reason}"
    );
}

#[test]
fn a_policy_that_cannot_be_evaluated_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let config = refund_world(dir.path());
    // A forbid that overflows: Cedar skips it, airlock must not allow.
    let mut policies = std::fs::read_to_string(dir.path().join("policies.cedar")).unwrap();
    policies.push_str(
        "\n@id(\"overflowing\")\nforbid(principal, action == Action::\"refund/issue\", resource) when { context.args.amount * 1000000000000 > 5 };\n",
    );
    std::fs::write(dir.path().join("policies.cedar"), policies).unwrap();
    let runtime = load(&config);
    let refund = runtime.action("refund").unwrap();
    let big = json!({"amount": 50_000_000, "account": "ACC-OPEN-7"});
    let verdict = refund.decisions.decide(&Ask {
        caller: &agent("support-bot", &["support"]),
        function: "issue",
        args: &big,
        intent: None,
        usage: None,
        now: at("2026-12-01T10:00:00"),
    });
    let Outcome::Deny { reason } = &verdict.outcome else {
        panic!("{verdict:?}")
    };
    assert!(
        reason.contains("overflowing") && reason.contains("could not be evaluated"),
        "{reason}"
    );
    assert_eq!(verdict.policy_ids(), ["overflowing"]);
}

#[test]
fn policy_mistakes_are_refused_at_check_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = refund_world(dir.path());
    let good = airlock_with(&["check", "--config", config.to_str().unwrap()], b"", &[]);
    assert_eq!(good.code, 0, "{good:?}");
    assert!(good.stdout.contains("policies: closed-accounts"), "{good:?}");
    let bad = "\n@id(\"typo\")\npermit(principal, action == Action::\"refund/issue\", resource)\nwhen { context.args.amout > 5 };\n\n@id(\"string-vs-number\")\npermit(principal, action == Action::\"refund/issue\", resource)\nwhen { context.args.account > 5 };\n\n@id(\"no-such-action\")\npermit(principal, action == Action::\"refnd/issue\", resource);\n";
    std::fs::write(dir.path().join("bad.cedar"), bad).unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "files = [\"policies.cedar\"]",
        "files = [\"policies.cedar\", \"bad.cedar\"]",
    );
    std::fs::write(&config, text).unwrap();
    let run = airlock_with(&["check", "--config", config.to_str().unwrap()], b"", &[]);
    assert_ne!(run.code, 0, "{run:?}");
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(out.contains("bad.cedar:4:") && out.contains("amout"), "{out}");
    assert!(
        out.contains("bad.cedar:8:") && out.contains("string-vs-number"),
        "{out}"
    );
    assert!(out.contains("no-such-action") && out.contains("refnd/issue"), "{out}");
    // The service refuses to run anything under them.
    let policy = Policy::load(&config).unwrap();
    let mut runtime = Runtime::new(&policy.runtime).unwrap();
    assert!(runtime.load_all(&policy).iter().all(|(_, r)| r.is_err()));
    assert!(runtime.action("refund").is_none());

    // Syntax and annotation mistakes are refused when the config loads.
    for (policy_text, want) in [
        ("permit(principal, action, resource)", "bad.cedar:1:"),
        (
            "@approval(\"cfo\")\nforbid(principal, action, resource);",
            "group \"cfo\"",
        ),
        (
            "@approval(\"finance\") @quorum(\"0\") forbid(principal, action, resource);",
            "1 to 16",
        ),
        (
            "@reson(\"x\") forbid(principal, action, resource);",
            "unknown annotation @reson",
        ),
        (
            "@id(\"refund-small\") forbid(principal, action, resource);",
            "ids must be unique",
        ),
    ] {
        std::fs::write(dir.path().join("bad.cedar"), policy_text).unwrap();
        let run = airlock_with(&["check", "--config", config.to_str().unwrap()], b"", &[]);
        assert_ne!(run.code, 0, "{policy_text}: {run:?}");
        assert!(run.stderr.contains(want), "{policy_text}: {run:?}");
    }
}

#[test]
fn policy_eval_explains_a_decision_without_running_anything() {
    let dir = tempfile::tempdir().unwrap();
    let config = refund_world(dir.path());
    let c = config.to_str().unwrap();
    let eval = |args: &str, extra: &[&str]| {
        let mut argv = vec!["policy", "eval", "--config", c, "refund", "issue", "--args", args];
        argv.extend_from_slice(extra);
        airlock_with(&argv, b"", &[])
    };
    let run = eval(
        r#"{"amount": 50000, "account": "ACC-1"}"#,
        &[
            "--as",
            "support-bot",
            "--kind",
            "agent",
            "--role",
            "support",
            "--at",
            "2026-12-01T09:30:00Z",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("decision: approval required: group finance (role:finance), quorum 2, open for 4h"),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("why: refunds above 10,000 need two finance reviewers"),
        "{run:?}"
    );
    assert!(run.stdout.contains("refund-large (policies.cedar:"), "{run:?}");
    let run = eval(
        r#"{"amount": 5, "account": "ACC-CLOSED-1"}"#,
        &["--as", "support-bot", "--role", "support", "--json"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let v = run.json();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["detail"]["reason"], "the account is closed");
    assert_eq!(v["policies"][0]["id"], "closed-accounts");
    // The local operator: nothing permits it in this example.
    let run = eval(r#"{"amount": 5, "account": "ACC-1"}"#, &[]);
    assert!(
        run.stdout
            .contains("decision: deny: no policy permits the local operator"),
        "{run:?}"
    );
    // An identity without a token must say who it is.
    let run = eval(r#"{"amount": 5, "account": "ACC-1"}"#, &["--as", "ghost"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("no live token"), "{run:?}");
    // Nothing ran, nothing was recorded.
    let audit = dir.path().join("data/audit");
    let recorded = std::fs::read_dir(&audit)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect::<String>()
        })
        .unwrap_or_default();
    assert!(!recorded.contains("invocation-"), "{recorded}");
}

/// A throw-away action config with `invoke` as its access list.
fn shorthand_world(dir: &Path, invoke: &[String]) -> Runtime {
    let list = invoke.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", ");
    let text = format!(
        "[runtime]\ndata-dir = {}\n\n[actions.hello]\ncomponent = {}\n\n[actions.hello.access]\ninvoke = [{list}]\n",
        toml_path(&dir.join("data")),
        toml_path(&component("hello"))
    );
    std::fs::write(dir.join("airlock.toml"), text).unwrap();
    load(&dir.join("airlock.toml"))
}

fn rule_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("local".to_string()),
        "[a-c]{1,2}".prop_map(|s| s),
        "[a-c]{1,2}".prop_map(|s| format!("role:{s}")),
    ]
}

fn any_caller() -> impl Strategy<Value = Caller> {
    (
        "[a-c]{1,2}",
        prop::bool::ANY,
        prop::collection::vec("[a-c]{1,2}", 0..3),
        prop::bool::ANY,
    )
        .prop_map(|(name, agent, roles, local)| {
            if local {
                Caller::local()
            } else {
                Caller {
                    name,
                    kind: if agent {
                        IdentityKind::Agent
                    } else {
                        IdentityKind::Human
                    },
                    roles,
                    token_id: Some("t".into()),
                }
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    /// `access.invoke` and the Cedar policies it generates decide alike,
    /// for any list of rules and any caller.
    #[test]
    fn the_toml_access_shorthand_decides_as_the_access_rules(
        invoke in prop::collection::vec(rule_text(), 0..4),
        callers in prop::collection::vec(any_caller(), 1..8),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let runtime = shorthand_world(dir.path(), &invoke);
        let hello = runtime.action("hello").unwrap();
        let rules: Vec<AccessRule> = invoke.iter().map(|r| AccessRule::parse(r).unwrap()).collect();
        let args = json!({"who": {"name": "n", "languages": []}});
        for caller in &callers {
            let by_rules = rules.iter().any(|r| caller.matches(r));
            let verdict = hello.decisions.decide(&Ask { caller, function: "greet", args: &args, intent: None, usage: None, now: 0 });
            prop_assert_eq!(verdict.outcome == Outcome::Allow, by_rules, "{:?} {:?}", caller, verdict);
            prop_assert_eq!(hello.decisions.may_list(caller), by_rules, "{:?}", caller);
        }
    }
}

fn async_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A request a policy holds goes to the group the policy names, with the
/// policy's quorum and reason; the reviewers of that group (and nobody
/// else) decide it, and the records name the deciding policies.
#[test]
fn a_held_invocation_asks_the_policy_group_and_records_why() {
    use airlock::gateway::Submitted;
    use airlock::store::{ApprovalState, Verdict as Vote};
    let dir = tempfile::tempdir().unwrap();
    // The example without its office-hours rule, so the test does not
    // depend on the time it runs at.
    let example = std::fs::read_to_string(support::repo_root().join("examples/refunds/policies.cedar")).unwrap();
    let cut = example.find("@id(\"office-hours\")").unwrap();
    let config = refund_world(dir.path());
    std::fs::write(dir.path().join("policies.cedar"), &example[..cut]).unwrap();
    let bearer = |who: &str, kind: &str, roles: &[&str]| support::create_token(&config, who, kind, roles);
    let support_token = bearer("support-bot", "agent", &["support"]);
    let finance_token = bearer("fiona", "human", &["finance"]);
    let other_token = bearer("olaf", "human", &["ops"]);
    let runtime = load(&config);
    let who = |t: &str| airlock::identity::authenticate(runtime.store().unwrap().as_ref(), t).unwrap();
    let (requester, fiona, olaf) = (who(&support_token), who(&finance_token), who(&other_token));
    let rt = async_runtime();
    let args = json!({"amount": 500, "account": "ACC-OPEN-7"});
    let submitted = rt
        .block_on(runtime.submit(
            &requester,
            "refund",
            "issue",
            &args,
            &Default::default(),
            std::time::Duration::ZERO,
        ))
        .unwrap();
    let Submitted::Pending { invocation, approval } = submitted else {
        panic!("{submitted:?}")
    };
    assert_eq!(approval.group.as_deref(), Some("finance"));
    assert_eq!(approval.policies, ["refund-medium"]);
    assert_eq!(
        approval.why.as_deref(),
        Some("refunds above 100 need a finance reviewer")
    );
    assert_eq!(approval.approvers, ["role:finance"]);
    assert_eq!(approval.rule, "policy refund-medium (policies.cedar:12)");
    assert_eq!(approval.expires_at - approval.created_at, 4 * 3600 * 1_000_000);
    // Not a reviewer of this group: refused, nothing recorded.
    assert!(!runtime.may_review(&olaf, &approval));
    let refused = rt.block_on(runtime.record_decision(&approval.id, &olaf, Vote::Approve, None, None));
    assert!(refused.is_err(), "{refused:?}");
    assert!(runtime.may_review(&fiona, &approval));
    let decided = rt
        .block_on(runtime.decide(&approval.id, &fiona, Vote::Approve, None, None))
        .unwrap();
    assert_eq!(decided.approval.state, ApprovalState::Approved);
    let record = runtime.invocation(&invocation).unwrap();
    assert_eq!(record.state.to_string(), "succeeded", "{record:?}");
    // The audit names the policies: the request, and the run.
    let audit = support::airlock_with(
        &["audit", "show", "--config", config.to_str().unwrap(), "--json"],
        b"",
        &[],
    );
    assert_eq!(audit.code, 0, "{audit:?}");
    let events: Vec<serde_json::Value> = audit
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .collect();
    let of = |kind: &str| {
        events
            .iter()
            .find(|e| e["kind"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} in {events:?}"))
    };
    assert_eq!(of("approval-requested")["policies"], json!(["refund-medium"]));
    assert_eq!(of("approval-requested")["group"], "finance");
    assert_eq!(of("invocation-started")["policies"], json!(["refund-medium"]));
    // A small refund runs at once, recorded with the permit that allowed it.
    let small = json!({"amount": 50, "account": "ACC-OPEN-7"});
    let ran = rt
        .block_on(runtime.submit(
            &requester,
            "refund",
            "issue",
            &small,
            &Default::default(),
            std::time::Duration::ZERO,
        ))
        .unwrap();
    assert!(matches!(ran, Submitted::Ran(ref r) if r.outcome.is_ok()), "{ran:?}");
    // A closed account is refused, the refusal naming the policy.
    let closed = json!({"amount": 50, "account": "ACC-CLOSED-1"});
    let err = rt
        .block_on(runtime.submit(
            &requester,
            "refund",
            "issue",
            &closed,
            &Default::default(),
            std::time::Duration::ZERO,
        ))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the account is closed (policies: closed-accounts)"),
        "{err}"
    );
}

/// Host-call policies narrow what grants allow: a `forbid` denies the one
/// call (the rest of the run goes on), a `forbid` with `@approval` holds it
/// for the group, and the records name the policies.
#[test]
fn host_call_policies_deny_or_hold_single_calls() {
    use airlock::gateway::Submitted;
    use airlock::store::{ApprovalKind, ApprovalState, Verdict as Vote};
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    std::fs::write(
        dir.path().join("host.cedar"),
        r#"
@id("no-secrets")
@reason("nothing is written under secrets/")
forbid(principal, action == Action::"files:write", resource is File)
when { resource.path == "secrets" || resource.path like "secrets/*" };

@id("agents-wait-for-gated")
@approval("action")
@ttl("30s")
@reason("agents' writes under gated/ are reviewed")
forbid(principal, action == Action::"files:write", resource is File)
when { principal.kind == "agent" && resource.path like "gated/*" };
"#,
    )
    .unwrap();
    let config = dir.path().join("airlock.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[runtime]
data-dir = "data"

[policy]
files = ["host.cedar"]

[actions.writer]
component = {}
[actions.writer.grants]
approval = true
files = {{ dir = "work", mode = "read-write" }}
[actions.writer.access]
invoke = ["local", "role:agent"]
approve = ["role:reviewer"]
"#,
            toml_path(&component("gated"))
        ),
    )
    .unwrap();
    let agent_token = support::create_token(&config, "writer-bot", "agent", &["agent"]);
    let reviewer_token = support::create_token(&config, "rita", "human", &["reviewer"]);
    let runtime = load(&config);
    let who = |t: &str| airlock::identity::authenticate(runtime.store().unwrap().as_ref(), t).unwrap();
    let (agent, rita) = (who(&agent_token), who(&reviewer_token));
    let rt = async_runtime();
    let run = |caller: &Caller, path: &str| {
        let args = json!({"path": path, "data": "x"});
        match rt
            .block_on(runtime.submit(
                caller,
                "writer",
                "write",
                &args,
                &Default::default(),
                std::time::Duration::from_secs(60),
            ))
            .unwrap()
        {
            Submitted::Ran(report) => report,
            other => panic!("{other:?}"),
        }
    };
    // Denied: the write fails inside the action, nothing is written.
    let report = run(&Caller::local(), "secrets/key");
    let out = format!("{:?}", report.outcome);
    assert!(!dir.path().join("work/secrets/key").exists(), "{out}");
    assert_eq!(report.host_calls.denied, 1, "{out}");
    // Links do not carry a write around the policy.
    std::fs::create_dir(dir.path().join("work/secrets")).unwrap();
    std::os::unix::fs::symlink("secrets", dir.path().join("work/innocent")).unwrap();
    let report = run(&Caller::local(), "innocent/key");
    assert!(!dir.path().join("work/secrets/key").exists(), "{:?}", report.outcome);
    // The local operator is no agent: its write under gated/ passes.
    std::fs::create_dir(dir.path().join("work/gated")).unwrap();
    let report = run(&Caller::local(), "gated/by-local");
    assert!(report.outcome.is_ok(), "{:?}", report.outcome);
    assert!(dir.path().join("work/gated/by-local").exists());
    // The agent's write under gated/ waits for a reviewer.
    let (report, decided) = rt.block_on(async {
        let args = json!({"path": "gated/by-agent", "data": "x"});
        let no_intent = airlock::invocation::Intent::default();
        let submit = runtime.submit(
            &agent,
            "writer",
            "write",
            &args,
            &no_intent,
            std::time::Duration::from_secs(60),
        );
        let review = async {
            let store = runtime.store().unwrap();
            loop {
                let pending = store.approvals(Some(ApprovalState::Pending), 10).unwrap();
                if let Some(a) = pending.into_iter().find(|a| a.kind == ApprovalKind::HostCall) {
                    assert_eq!(a.policies, ["agents-wait-for-gated"]);
                    assert_eq!(a.why.as_deref(), Some("agents' writes under gated/ are reviewed"));
                    assert_eq!(a.group.as_deref(), Some("action"));
                    assert_eq!(a.expires_at - a.created_at, 30_000_000);
                    assert!(!dir.path().join("work/gated/by-agent").exists());
                    return runtime.decide(&a.id, &rita, Vote::Approve, None, None).await.unwrap();
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        };
        tokio::join!(submit, review)
    });
    assert_eq!(decided.approval.state, ApprovalState::Approved);
    match report.unwrap() {
        Submitted::Ran(r) => assert!(r.outcome.is_ok(), "{:?}", r.outcome),
        other => panic!("{other:?}"),
    }
    assert!(dir.path().join("work/gated/by-agent").exists());
    // The denial is on record with the policy that decided it.
    let audit = support::airlock_with(
        &["audit", "show", "--config", config.to_str().unwrap(), "--json"],
        b"",
        &[],
    );
    let denied: Vec<serde_json::Value> = audit
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .filter(|e| e["kind"] == "host-call" && e["allowed"] == false)
        .collect();
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert!(denied.iter().all(|e| e["rule"] == "policy no-secrets"), "{denied:?}");
    assert!(
        denied[0]["reason"]
            .as_str()
            .unwrap()
            .contains("nothing is written under secrets/"),
        "{denied:?}"
    );
}

/// `require-reason = true`: an invocation without a stated reason is
/// refused, naming the rule; with one it runs, and policies can read it.
#[test]
fn an_action_can_require_a_stated_reason() {
    use airlock::gateway::Submitted;
    use airlock::invocation::Intent;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("reason.cedar"),
        "@id(\"no-testing-in-prod\") @reason(\"not for tests\")\nforbid(principal, action == Action::\"hello/greet\", resource)\nwhen { context has reason && context.reason like \"*test*\" };\n",
    )
    .unwrap();
    let config = dir.path().join("airlock.toml");
    std::fs::write(
        &config,
        format!(
            "[runtime]\ndata-dir = \"data\"\n[policy]\nfiles = [\"reason.cedar\"]\n[actions.hello]\ncomponent = {}\nrequire-reason = true\n",
            toml_path(&component("hello"))
        ),
    )
    .unwrap();
    let runtime = load(&config);
    let rt = async_runtime();
    let args = json!({"who": {"name": "Ada", "languages": ["en"]}});
    let submit = |intent: &Intent| {
        rt.block_on(runtime.submit(
            &Caller::local(),
            "hello",
            "greet",
            &args,
            intent,
            std::time::Duration::ZERO,
        ))
    };
    let err = submit(&Intent::default()).unwrap_err();
    assert!(
        err.to_string().contains("needs a stated reason") && err.to_string().contains("hello.require-reason"),
        "{err}"
    );
    let (said, _) = Intent::new(Some("greeting a new colleague"), None).unwrap();
    assert!(matches!(submit(&said).unwrap(), Submitted::Ran(ref r) if r.outcome.is_ok()));
    let (testing, _) = Intent::new(Some("just testing"), None).unwrap();
    let err = submit(&testing).unwrap_err();
    assert!(err.to_string().contains("not for tests"), "{err}");
}

/// Two gates naming different groups both apply: the action's own
/// reviewers (its TOML `approval.invocation`) and finance (a policy). One
/// group's approval is not enough.
#[test]
fn every_group_a_gate_names_must_approve() {
    use airlock::gateway::Submitted;
    use airlock::store::{ApprovalState, Verdict as Vote};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("finance.cedar"),
        "@id(\"finance-too\") @approval(\"finance\") @reason(\"money moves\")\nforbid(principal, action == Action::\"hello/greet\", resource);\n",
    )
    .unwrap();
    let config = dir.path().join("airlock.toml");
    std::fs::write(
        &config,
        format!(
            "[runtime]\ndata-dir = \"data\"\n[policy]\nfiles = [\"finance.cedar\"]\n[approval-groups.finance]\napprove = [\"role:finance\"]\n[actions.hello]\ncomponent = {}\n[actions.hello.access]\ninvoke = [\"role:agent\"]\napprove = [\"role:security\"]\n[actions.hello.approval]\ninvocation = true\n",
            toml_path(&component("hello"))
        ),
    )
    .unwrap();
    let tokens = [
        support::create_token(&config, "bot", "agent", &["agent"]),
        support::create_token(&config, "fiona", "human", &["finance"]),
        support::create_token(&config, "sam", "human", &["security"]),
        support::create_token(&config, "dana", "human", &["finance", "security"]),
    ];
    let runtime = load(&config);
    let who = |t: &str| airlock::identity::authenticate(runtime.store().unwrap().as_ref(), t).unwrap();
    let (bot, fiona, sam, dana) = (who(&tokens[0]), who(&tokens[1]), who(&tokens[2]), who(&tokens[3]));
    let rt = async_runtime();
    let args = json!({"who": {"name": "Ada", "languages": ["en"]}});
    let no_intent = airlock::invocation::Intent::default();
    let submitted = rt
        .block_on(runtime.submit(&bot, "hello", "greet", &args, &no_intent, std::time::Duration::ZERO))
        .unwrap();
    let Submitted::Pending { invocation, approval } = submitted else {
        panic!("{submitted:?}")
    };
    let mut groups: Vec<(String, u32)> = approval.group_quorums();
    groups.sort();
    assert_eq!(
        groups,
        [("action".to_string(), 1), ("finance".to_string(), 1)],
        "{approval:?}"
    );
    assert!(runtime.may_review(&fiona, &approval) && runtime.may_review(&sam, &approval));
    let after_finance = rt
        .block_on(runtime.decide(&approval.id, &fiona, Vote::Approve, None, None))
        .unwrap();
    assert_eq!(
        after_finance.approval.state,
        ApprovalState::Pending,
        "one group is not enough"
    );
    assert_eq!(
        runtime.invocation(&invocation).unwrap().state.to_string(),
        "awaiting-approval"
    );
    let after_security = rt
        .block_on(runtime.decide(&approval.id, &sam, Vote::Approve, None, None))
        .unwrap();
    assert_eq!(after_security.approval.state, ApprovalState::Approved);
    assert_eq!(runtime.invocation(&invocation).unwrap().state.to_string(), "succeeded");

    // One reviewer in both groups approves for one of them only.
    let Submitted::Pending { approval, .. } = rt
        .block_on(runtime.submit(&bot, "hello", "greet", &args, &no_intent, std::time::Duration::ZERO))
        .unwrap()
    else {
        panic!("not held")
    };
    let after_dana = rt
        .block_on(runtime.decide(&approval.id, &dana, Vote::Approve, None, None))
        .unwrap();
    assert_eq!(
        after_dana.approval.state,
        ApprovalState::Pending,
        "one identity filled two groups"
    );
    let after_fiona = rt
        .block_on(runtime.decide(&approval.id, &fiona, Vote::Approve, None, None))
        .unwrap();
    assert_eq!(after_fiona.approval.state, ApprovalState::Approved);
}

/// `[[actions.NAME.windows]]`: the third call in the hour is refused,
/// naming the window and when it resets, and audited; a sum window counts
/// the argument.
#[test]
fn windows_refuse_calls_past_their_limit() {
    use airlock::gateway::Submitted;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("airlock.toml");
    std::fs::write(
        &config,
        format!(
            "[runtime]\ndata-dir = \"data\"\n[actions.refund]\ncomponent = {}\n[actions.refund.access]\ninvoke = [\"role:support\", \"local\"]\n\
             [[actions.refund.windows]]\nname = \"per-agent-hour\"\nper = \"caller\"\nperiod = \"1h\"\nmax = 2\n\
             [[actions.refund.windows]]\nname = \"daily-total\"\nper = \"action\"\nfunction = \"issue\"\nperiod = \"1d\"\nmax = 1000\nsum = \"amount\"\n",
            toml_path(&component("refund"))
        ),
    )
    .unwrap();
    let tokens = [
        support::create_token(&config, "bot-a", "agent", &["support"]),
        support::create_token(&config, "bot-b", "agent", &["support"]),
    ];
    let runtime = load(&config);
    let who = |t: &str| airlock::identity::authenticate(runtime.store().unwrap().as_ref(), t).unwrap();
    let (a, b) = (who(&tokens[0]), who(&tokens[1]));
    let rt = async_runtime();
    let no_intent = airlock::invocation::Intent::default();
    let issue = |caller: &Caller, amount: u64| {
        let args = json!({"amount": amount, "account": "ACC-1"});
        rt.block_on(runtime.submit(caller, "refund", "issue", &args, &no_intent, std::time::Duration::ZERO))
    };
    for _ in 0..2 {
        assert!(matches!(issue(&a, 100).unwrap(), Submitted::Ran(ref r) if r.outcome.is_ok()));
    }
    let err = issue(&a, 100).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(
            "window `per-agent-hour` of action refund allows 2 invocations per 1h for bot-a; 2 used; resets at"
        ),
        "{text}"
    );
    assert!(
        matches!(err, airlock::Error::LimitReached { retry_after_secs, .. } if (1..=3600).contains(&retry_after_secs))
    );
    assert_eq!(err.exit_code(), 3);
    // Another caller has its own hour, but the day's total is shared: 200
    // used, 700 more fit, 900 would not.
    assert!(issue(&b, 700).is_ok());
    let err = issue(&b, 200).unwrap_err().to_string();
    assert!(
        err.contains("window `daily-total`") && err.contains("900 used, this call adds 200"),
        "{err}"
    );
    // One call larger than the whole budget is refused outright.
    let err = issue(&Caller::local(), 5000).unwrap_err().to_string();
    assert!(err.contains("this call alone adds 5000"), "{err}");
    // The refusals are on record.
    let audit = support::airlock_with(
        &["audit", "show", "--config", config.to_str().unwrap(), "--json"],
        b"",
        &[],
    );
    let refused = audit
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .filter(|e| e["kind"] == "invocation-refused")
        .count();
    assert_eq!(refused, 3, "{}", audit.stdout);
    // Mistakes in windows are refused when the config loads.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("sum = \"amount\"", "sum = \"account\"");
    std::fs::write(&config, text).unwrap();
    let run = support::airlock_with(&["check", "--config", config.to_str().unwrap()], b"", &[]);
    assert_ne!(run.code, 0);
    assert!(run.stdout.contains("has no integer parameter `account`"), "{run:?}");
}

/// Over HTTP a used-up window is 429 with `Retry-After`.
#[test]
fn the_api_answers_a_used_up_window_with_429_and_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("airlock.toml");
    std::fs::write(
        &config,
        format!(
            "[runtime]\ndata-dir = \"data\"\n[actions.refund]\ncomponent = {}\n[actions.refund.access]\ninvoke = [\"role:support\"]\n\
             [[actions.refund.windows]]\nname = \"one-a-minute\"\nper = \"caller\"\nperiod = \"1m\"\nmax = 1\n",
            toml_path(&component("refund"))
        ),
    )
    .unwrap();
    let token = support::create_token(&config, "bot", "agent", &["support"]);
    let server = support::http::Server::start(&config);
    let body = json!({"action": "refund", "function": "issue", "args": {"amount": 5, "account": "ACC-1"}});
    let first = server.post("/v1/invocations", Some(&token), &body);
    assert_eq!(first.status, 200, "{first:?}");
    let second = server.post("/v1/invocations", Some(&token), &body);
    assert_eq!(second.status, 429, "{second:?}");
    assert_eq!(second.json()["error"]["code"], "limit-reached");
    let retry: u64 = second.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
}

/// A loopback webhook receiver: records each request (headers, body) and
/// answers with the next status of its script (the last one repeats); a
/// `None` status accepts and never answers.
struct Receiver {
    addr: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

/// One request a receiver saw: its headers (names lower case) and body.
type Received = (Vec<(String, String)>, Vec<u8>);

impl Receiver {
    fn start(script: Vec<Option<u16>>) -> Receiver {
        use std::io::{BufRead, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            let mut hung = Vec::new();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut reader = std::io::BufReader::new(stream);
                let mut headers = Vec::new();
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.trim_end().split_once(':') {
                        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                    }
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                log.lock().unwrap().push((headers, body));
                let status = script[n.min(script.len() - 1)];
                n += 1;
                let mut stream = reader.into_inner();
                match status {
                    Some(s) => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 {s} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                    }
                    None => hung.push(stream),
                }
            }
        });
        Receiver { addr, seen }
    }

    fn requests(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }
}

/// Requests are announced to webhooks through the governed outbound path:
/// the generic body is signed (HMAC-SHA256 over timestamp and body, key
/// from the vault) and retried after a 500; a receiver that never answers
/// holds up nothing; a loopback address without `allow-private` is
/// refused; every attempt is audited.
#[test]
fn webhooks_announce_requests_signed_retried_and_never_blocking() {
    use hmac::Mac as _;
    let good = Receiver::start(vec![Some(500), Some(200)]);
    let hanging = Receiver::start(vec![None]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("airlock.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[runtime]
data-dir = "data"

[[notifications.webhooks]]
name = "siem"
format = "generic"
url = "http://{good}/hook"
destination = "http://{good}"
allow-private = true
hmac-secret = "siem-key"
max-attempts = 3

[[notifications.webhooks]]
name = "slow"
format = "chat"
url = "http://{hanging}/hook"
destination = "http://{hanging}"
allow-private = true
timeout-ms = 500
max-attempts = 1

[[notifications.webhooks]]
name = "not-private"
format = "chat"
url = "http://{good}/other"
destination = "http://{good}"
max-attempts = 1

[actions.hello]
component = {component}
[actions.hello.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]
[actions.hello.approval]
invocation = true
"#,
            good = good.addr,
            hanging = hanging.addr,
            component = toml_path(&component("hello"))
        ),
    )
    .unwrap();
    let set = support::airlock_with(
        &["secret", "set", "siem-key", "--config", config.to_str().unwrap()],
        b"the-signing-key",
        &[],
    );
    assert_eq!(set.code, 0, "{set:?}");
    let agent = support::create_token(&config, "bot", "agent", &["agent"]);
    let server = support::http::Server::start(&config);
    let asked = std::time::Instant::now();
    let pending = server.post(
        "/v1/invocations",
        Some(&agent),
        &json!({"action": "hello", "function": "greet", "args": {"who": {"name": "Ada", "languages": []}},
                "wait-ms": 0, "reason": "onboarding"}),
    );
    assert_eq!(pending.status, 202, "{pending:?}");
    // The hanging receiver holds up nothing.
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    let approval = pending.json()["approval"].as_str().unwrap().to_string();
    // A 500, then (after a second) the delivery.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while good.requests().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "{:?}", good.requests());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let requests = good.requests();
    assert_eq!(
        requests.len(),
        2,
        "only the signed webhook reaches this receiver: {requests:?}"
    );
    for (headers, body) in &requests {
        let h = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).unwrap();
        let ts = h("x-airlock-timestamp");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"the-signing-key").unwrap();
        mac.update(format!("{ts}.").as_bytes());
        mac.update(body);
        let want: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(h("x-airlock-signature"), format!("v1={want}"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(ts.parse::<u64>().unwrap()) < 300);
        assert_eq!(h("x-airlock-event"), "approval.requested");
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["approval"]["id"], approval);
        assert_eq!(v["approval"]["reason"], "onboarding");
        assert_eq!(v["type"], "approval.requested");
    }
    assert_eq!(
        requests[0].0.iter().find(|(k, _)| k == "x-airlock-delivery"),
        requests[1].0.iter().find(|(k, _)| k == "x-airlock-delivery")
    );
    // Every attempt is on record.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let notes = loop {
        let audit = support::airlock_with(
            &["audit", "show", "--config", config.to_str().unwrap(), "--json"],
            b"",
            &[],
        );
        let notes: Vec<serde_json::Value> = audit
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
            .filter(|e| e["kind"] == "notification")
            .collect();
        if notes.len() >= 4 || std::time::Instant::now() > deadline {
            break notes;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let of = |hook: &str| {
        notes
            .iter()
            .filter(|n| n["webhook"] == hook)
            .cloned()
            .collect::<Vec<_>>()
    };
    let siem = of("siem");
    assert_eq!(siem.len(), 2, "{notes:?}");
    assert_eq!(
        (siem[0]["outcome"].as_str(), siem[0]["http-status"].as_u64()),
        (Some("failed"), Some(500))
    );
    assert_eq!(
        (siem[1]["outcome"].as_str(), siem[1]["attempt"].as_u64()),
        (Some("delivered"), Some(2))
    );
    let slow = of("slow");
    assert_eq!(slow.len(), 1, "{notes:?}");
    assert_eq!(slow[0]["outcome"], "gave-up");
    let private = of("not-private");
    assert_eq!(private.len(), 1, "{notes:?}");
    assert_eq!(private[0]["outcome"], "gave-up");
    let error = private[0]["error"].as_str().unwrap();
    assert!(error.contains("allow-private") || error.contains("private"), "{error}");
    // Records name origins, never URLs.
    assert!(notes.iter().all(|n| !n.to_string().contains("/hook")), "{notes:?}");
}

/// A request nobody decides within `@escalate_after` goes to the
/// `@escalate_to` group too: before, its members may not decide; after,
/// they may, and the escalation is on record.
#[test]
fn an_undecided_request_escalates_to_the_next_group() {
    use airlock::gateway::Submitted;
    use airlock::store::{ApprovalState, Verdict as Vote};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("escalate.cedar"),
        "@id(\"big\") @approval(\"finance\") @ttl(\"1h\") @escalate_after(\"2s\") @escalate_to(\"cfo\")\npermit(principal in Role::\"agent\", action == Action::\"hello/greet\", resource);\n",
    )
    .unwrap();
    let config = dir.path().join("airlock.toml");
    std::fs::write(
        &config,
        format!(
            "[runtime]\ndata-dir = \"data\"\n[policy]\nfiles = [\"escalate.cedar\"]\n[approval-groups.finance]\napprove = [\"role:finance\"]\n[approval-groups.cfo]\napprove = [\"role:cfo\"]\n[actions.hello]\ncomponent = {}\n[actions.hello.access]\ninvoke = []\n",
            toml_path(&component("hello"))
        ),
    )
    .unwrap();
    let tokens = [
        support::create_token(&config, "bot", "agent", &["agent"]),
        support::create_token(&config, "carol", "human", &["cfo"]),
    ];
    let runtime = load(&config);
    let who = |t: &str| airlock::identity::authenticate(runtime.store().unwrap().as_ref(), t).unwrap();
    let (bot, carol) = (who(&tokens[0]), who(&tokens[1]));
    let rt = async_runtime();
    let args = json!({"who": {"name": "Ada", "languages": []}});
    let no_intent = airlock::invocation::Intent::default();
    let Submitted::Pending { invocation, approval } = rt
        .block_on(runtime.submit(&bot, "hello", "greet", &args, &no_intent, std::time::Duration::ZERO))
        .unwrap()
    else {
        panic!("not held")
    };
    assert!(!runtime.may_review(&carol, &approval));
    assert!(
        rt.block_on(runtime.record_decision(&approval.id, &carol, Vote::Approve, None, None))
            .is_err()
    );
    rt.block_on(runtime.sweep_approvals()).unwrap();
    let still = runtime.store().unwrap().approval(&approval.id).unwrap().unwrap();
    assert!(!still.escalated, "escalated early");
    std::thread::sleep(std::time::Duration::from_millis(2200));
    rt.block_on(runtime.sweep_approvals()).unwrap();
    let escalated = runtime.store().unwrap().approval(&approval.id).unwrap().unwrap();
    assert!(escalated.escalated, "{escalated:?}");
    assert!(escalated.approvers.contains(&"role:cfo".to_string()), "{escalated:?}");
    assert!(runtime.may_review(&carol, &escalated));
    let decided = rt
        .block_on(runtime.decide(&approval.id, &carol, Vote::Approve, None, None))
        .unwrap();
    assert_eq!(decided.approval.state, ApprovalState::Approved);
    assert_eq!(runtime.invocation(&invocation).unwrap().state.to_string(), "succeeded");
    let audit = support::airlock_with(
        &["audit", "show", "--config", config.to_str().unwrap(), "--json"],
        b"",
        &[],
    );
    let escalations: Vec<serde_json::Value> = audit
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .filter(|e| e["kind"] == "approval-escalated")
        .collect();
    assert_eq!(escalations.len(), 1, "{}", audit.stdout);
    assert_eq!(escalations[0]["from-group"], "finance");
    assert_eq!(escalations[0]["to-group"], "cfo");
}

/// Policies read the windows' use so far (`context.usage`): more than one
/// refund an hour waits for finance. An approved invocation's own charge
/// does not count against it when it is decided again before it runs.
#[test]
fn policies_read_the_callers_recent_use() {
    use airlock::gateway::Submitted;
    use airlock::store::{ApprovalState, Verdict as Vote};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("usage.cedar"),
        "@id(\"support\") permit(principal in Role::\"support\", action == Action::\"refund/issue\", resource);\n\
         @id(\"busy\") @approval(\"finance\") @reason(\"more than one refund an hour needs a look\")\n\
         forbid(principal, action == Action::\"refund/issue\", resource) when { context.usage.per_agent_hour >= 1 };\n",
    )
    .unwrap();
    let config = dir.path().join("airlock.toml");
    std::fs::write(
        &config,
        format!(
            "[runtime]\ndata-dir = \"data\"\n[policy]\nfiles = [\"usage.cedar\"]\n[approval-groups.finance]\napprove = [\"role:finance\"]\n\
             [actions.refund]\ncomponent = {}\n[actions.refund.access]\ninvoke = []\n\
             [[actions.refund.windows]]\nname = \"per-agent-hour\"\nper = \"caller\"\nperiod = \"1h\"\nmax = 10\n",
            toml_path(&component("refund"))
        ),
    )
    .unwrap();
    let tokens = [
        support::create_token(&config, "bot", "agent", &["support"]),
        support::create_token(&config, "fiona", "human", &["finance"]),
    ];
    let runtime = load(&config);
    let who = |t: &str| airlock::identity::authenticate(runtime.store().unwrap().as_ref(), t).unwrap();
    let (bot, fiona) = (who(&tokens[0]), who(&tokens[1]));
    let rt = async_runtime();
    let no_intent = airlock::invocation::Intent::default();
    let args = json!({"amount": 10, "account": "ACC-1"});
    let issue = || {
        rt.block_on(runtime.submit(&bot, "refund", "issue", &args, &no_intent, std::time::Duration::ZERO))
            .unwrap()
    };
    assert!(matches!(issue(), Submitted::Ran(ref r) if r.outcome.is_ok()));
    let Submitted::Pending { invocation, approval } = issue() else {
        panic!("the second refund in the hour ran at once")
    };
    assert_eq!(approval.policies, ["busy", "support"]);
    let decided = rt
        .block_on(runtime.decide(&approval.id, &fiona, Vote::Approve, None, None))
        .unwrap();
    assert_eq!(decided.approval.state, ApprovalState::Approved);
    assert_eq!(runtime.invocation(&invocation).unwrap().state.to_string(), "succeeded");
    // A policy naming a window the function does not have is refused.
    std::fs::write(
        dir.path().join("usage.cedar"),
        "@id(\"typo\") forbid(principal, action == Action::\"refund/issue\", resource) when { context.usage.per_agent_hr >= 1 };\n",
    )
    .unwrap();
    let run = support::airlock_with(&["check", "--config", config.to_str().unwrap()], b"", &[]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("per_agent_hr"), "{run:?}");
}
