//! Policy decisions per invocation: Cedar (the policy files and the TOML
//! shorthand, as the gateway evaluates them) beside the TOML gate it
//! replaced (an access-list match and a flag).
//!
//! The config has 50 policies: the 5 of the refund example (without its
//! clock rule, so the numbers do not depend on the hour), 40 for 10 other
//! actions and 5 over every action for roles the caller does not hold.
//! Only the refund function's own slice reaches Cedar, and of that only
//! what the caller's principal scope can match.

use airlock::identity::{Caller, IdentityKind};
use airlock::policy::Policy;
use airlock::policy::engine::{Ask, Outcome};
use airlock::runtime::Runtime;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use std::fmt::Write as _;
use std::hint::black_box;

fn world(dir: &std::path::Path, with_files: bool) -> Runtime {
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/refunds/policies.cedar"),
    )
    .expect("the refund example");
    let cut = example.find("@id(\"office-hours\")").expect("the example's clock rule");
    let mut policies = example[..cut].to_string();
    for a in 0..10 {
        for p in 0..4 {
            let _ = writeln!(
                policies,
                "@id(\"other-{a}-{p}\")\npermit(principal in Role::\"team-{a}\", action == Action::\"other-{a}/issue\", resource) when {{ context.args.amount < {} }};",
                100 * (p + 1)
            );
        }
    }
    for g in 0..5 {
        let _ = writeln!(
            policies,
            "@id(\"blocked-{g}\")\nforbid(principal in Role::\"blocked-{g}\", action in Action::\"invoke\", resource);"
        );
    }
    assert_eq!(policies.matches("@id(").count(), 49, "plus the TOML shorthand's 1");
    std::fs::write(dir.join("policies.cedar"), policies).expect("write policies");
    let component = airlock_benches::component("refund");
    let mut config = format!(
        "[runtime]\ndata-dir = \"{}\"\n\n[approval-groups.finance]\napprove = [\"role:finance\"]\n\n",
        dir.join("data").display()
    );
    if with_files {
        config.push_str("[policy]\nfiles = [\"policies.cedar\"]\n\n");
    }
    for name in std::iter::once("refund".to_string()).chain((0..10).map(|a| format!("other-{a}"))) {
        let _ = write!(
            config,
            "[actions.{name}]\ncomponent = \"{}\"\n[actions.{name}.access]\ninvoke = [\"role:support\"]\n\n",
            component.display()
        );
    }
    let path = dir.join("airlock.toml");
    std::fs::write(&path, config).expect("write config");
    let policy = Policy::load(&path).expect("config");
    let mut runtime = Runtime::new(&policy.runtime).expect("runtime");
    for (name, loaded) in runtime.load_all(&policy) {
        loaded.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    runtime
}

fn policy(c: &mut Criterion) {
    let support = Caller {
        name: "support-bot".into(),
        kind: IdentityKind::Agent,
        roles: vec!["support".into()],
        token_id: Some("t".into()),
    };
    let small = json!({"amount": 50, "account": "ACC-OPEN-7", "note": "called"});
    let medium = json!({"amount": 500, "account": "ACC-OPEN-7"});
    let now = airlock::time::now_micros();
    let files = tempfile::tempdir().expect("temp dir");
    let with_files = world(files.path(), true);
    let plain = tempfile::tempdir().expect("temp dir");
    let shorthand_only = world(plain.path(), false);

    let mut group = c.benchmark_group("policy/invoke");
    let action = shorthand_only.action("refund").expect("refund");
    group.bench_function("toml-gate", |b| {
        b.iter(|| {
            let p = &action.policy;
            black_box(p.access.may_invoke(black_box(&support)) && !p.approval.invocation)
        })
    });
    group.bench_function("cedar-shorthand-only", |b| {
        b.iter(|| {
            let v = action.decisions.decide(&Ask {
                caller: black_box(&support),
                function: "issue",
                args: &small,
                intent: None,
                usage: None,
                now,
            });
            assert_eq!(v.outcome, Outcome::Allow);
        })
    });
    let action = with_files.action("refund").expect("refund");
    group.bench_function("cedar-50-allow", |b| {
        b.iter(|| {
            let v = action.decisions.decide(&Ask {
                caller: black_box(&support),
                function: "issue",
                args: &small,
                intent: None,
                usage: None,
                now,
            });
            assert_eq!(v.outcome, Outcome::Allow);
        })
    });
    group.bench_function("cedar-50-approval", |b| {
        b.iter(|| {
            let v = action.decisions.decide(&Ask {
                caller: black_box(&support),
                function: "issue",
                args: &medium,
                intent: None,
                usage: None,
                now,
            });
            assert!(matches!(v.outcome, Outcome::Approve(_)));
        })
    });
    let stranger = Caller {
        name: "sales-bot".into(),
        kind: IdentityKind::Agent,
        roles: vec!["sales".into()],
        token_id: Some("t".into()),
    };
    // Another action of the same config: 50 policies configured, one
    // applies to this caller (its TOML shorthand).
    let other = with_files.action("other-0").expect("other-0");
    group.bench_function("cedar-50-one-applies", |b| {
        b.iter(|| {
            let v = other.decisions.decide(&Ask {
                caller: black_box(&support),
                function: "issue",
                args: &small,
                intent: None,
                usage: None,
                now,
            });
            assert_eq!(v.outcome, Outcome::Allow);
        })
    });
    group.bench_function("cedar-50-default-deny", |b| {
        b.iter(|| {
            let v = action.decisions.decide(&Ask {
                caller: black_box(&stranger),
                function: "issue",
                args: &small,
                intent: None,
                usage: None,
                now,
            });
            assert!(matches!(v.outcome, Outcome::Deny { .. }));
        })
    });
    group.finish();
}

/// One host call against a 3-rule `[[approval.host-calls]]` gate: today's
/// TOML matcher beside the same rules as Cedar policies (their shorthand
/// form, in the action's host-call slice), for a call no rule holds (the
/// common case) and one the last rule holds.
fn host_call(c: &mut Criterion) {
    use airlock::policy::approval::{ApprovalPolicy, RawApproval, RawCallRule, Target};
    use airlock::policy::engine::{HostTarget, HostVerdict, ToolPolicy};
    use std::sync::Arc;
    let rule = |methods: &[&str], destination: &str, prefix: &str| RawCallRule {
        capability: "http".into(),
        methods: Some(methods.iter().map(|m| m.to_string()).collect()),
        destination: Some(destination.into()),
        path_prefix: Some(prefix.into()),
        operations: None,
    };
    let approval = ApprovalPolicy::resolve(&RawApproval {
        host_calls: vec![
            rule(&["DELETE"], "https://api.example.com", "/v1/admin"),
            rule(&["POST", "PUT"], "https://*.payments.example.com", "/charges"),
            rule(&["DELETE", "PATCH"], "https://tickets.example.com", "/api"),
        ],
        ..Default::default()
    })
    .expect("rules");
    let mut action =
        airlock::policy::ActionPolicy::ad_hoc("act", "act.wasm".into(), Default::default(), Default::default());
    action.access.approve = vec![airlock::identity::AccessRule::Role("reviewer".into())];
    action.approval = approval;
    let text = airlock::policy::shorthand::host_calls(&action);
    let groups = airlock::policy::source::Groups::new();
    let rules = airlock::policy::source::parse("shorthand", &text, &groups).expect("the shorthand parses");
    let toml_only = action.clone();
    action.policy_files = Arc::new(airlock::policy::source::PolicyFiles {
        rules: rules.into_iter().map(Arc::new).collect(),
        groups: Arc::new(groups),
        sources: Vec::new(),
    });
    let tool = Arc::new(ToolPolicy::build(&action, &[], "blake3:00").expect("policies"));
    let host = tool
        .host_for(&Caller::local())
        .expect("host policies")
        .expect("entities");
    let calls = [
        ("passes", "GET", "https://tickets.example.com/api/tickets/7"),
        ("held", "DELETE", "https://tickets.example.com/api/tickets/7"),
    ];
    let mut group = c.benchmark_group("policy/host-call");
    for (name, method, url) in calls {
        let url = url::Url::parse(url).expect("url");
        let target = Target::Http {
            method: method.into(),
            url: url.clone(),
        };
        let want_held = name == "held";
        group.bench_function(format!("toml-gate/{name}"), |b| {
            b.iter(|| assert_eq!(toml_only.approval.gate_for(black_box(&target)).is_some(), want_held))
        });
        group.bench_function(format!("cedar/{name}"), |b| {
            b.iter(|| {
                let v = host.decide(
                    HostTarget::Http {
                        method,
                        url: black_box(&url),
                    },
                    "airlock:cap/http.send",
                    now_micros(),
                );
                assert_eq!(matches!(v, HostVerdict::Hold { .. }), want_held);
            })
        });
    }
    group.finish();
}

fn now_micros() -> u64 {
    airlock::time::now_micros()
}

criterion_group!(benches, policy, host_call);
criterion_main!(benches);
