//! The TOML access and approval keys as the Cedar policies they are
//! shorthand for. Every decision goes through the Cedar engine; these keys
//! are one way of writing its policies.
//!
//! | TOML (action `A`) | Cedar |
//! |---|---|
//! | `access.invoke = ["role:R"]` | `permit(principal in Role::"R", action in Action::"A", resource == Tool::"A");` |
//! | `access.invoke = ["NAME"]` | `permit(principal == Identity::"NAME", action in Action::"A", resource == Tool::"A");` |
//! | `access.invoke = ["local"]` (the default) | `permit(principal in Operator::"local", action in Action::"A", resource == Tool::"A");` |
//! | `approval.invocation = true` (with `quorum`, `ttl-secs`) | `@approval("action") @quorum("Q") @ttl("Ts") forbid(principal, action in Action::"A", resource == Tool::"A");` |
//! | `require-reason = true` | `@reason("…") forbid(principal, action in Action::"A", resource == Tool::"A") unless { context has reason };` |
//!
//! Each generated policy's id names the key it came from
//! (`A.access.invoke[0]`, `A.approval.invocation`).
//!
//! `[[approval.host-calls]]` rules are matched by airlock directly
//! ([`crate::policy::approval::CallRule::matches`]); [`host_calls`] writes
//! each as the Cedar `forbid … @approval` it is equivalent to (for people,
//! and for the property test that holds the two equal).

use super::ActionPolicy;
use crate::identity::AccessRule;

/// The entity the local operator belongs to (no token holder can).
pub const LOCAL_OPERATOR: &str = r#"Operator::"local""#;

/// A Cedar string literal for a `like` pattern matching `s` literally.
fn like_literal(s: &str) -> String {
    let quoted = super::engine::quote(s);
    quoted.replace('*', "\\*")
}

/// The `[[approval.host-calls]]` rules of `policy` as the Cedar policies
/// they decide as.
pub fn host_calls(policy: &ActionPolicy) -> String {
    use crate::outbound::destination::HostPattern;
    use crate::policy::approval::GatedCapability;
    let a = &policy.name;
    let approval = &policy.approval;
    let head = |i: usize, suffix: &str| {
        format!(
            "@id(\"{a}.approval.host-calls[{i}]{suffix}\") @approval(\"action\") @quorum(\"{}\") @ttl(\"{}s\")\n",
            approval.quorum,
            approval.wait.as_secs()
        )
    };
    let mut out = String::new();
    for (i, rule) in approval.host_calls.iter().enumerate() {
        let mut terms = vec![format!("resource.tool == Tool::\"{a}\"")];
        match rule.capability {
            GatedCapability::Http => {
                if let Some(ms) = &rule.methods {
                    let list: Vec<String> = ms.iter().map(|m| super::engine::quote(m)).collect();
                    terms.push(format!("[{}].contains(resource.method)", list.join(", ")));
                }
                if let Some(d) = &rule.destination {
                    terms.push(format!("resource.scheme == \"{}\"", d.scheme.as_str()));
                    terms.push(format!("resource.port == {}", d.port));
                    match &d.host {
                        HostPattern::Exact(h) => terms.push(format!("resource.host == {}", super::engine::quote(h))),
                        HostPattern::Subdomains(suffix) => {
                            let pattern = like_literal(suffix);
                            terms.push(format!(
                                "resource.host like {}{} && resource.host != {}",
                                &pattern[..1],
                                format_args!("*{}", &pattern[1..]),
                                super::engine::quote(suffix)
                            ));
                        }
                    }
                }
                if let Some(p) = rule.path_prefix.as_deref().filter(|p| !p.is_empty() && *p != "/") {
                    let within = if p.ends_with('/') {
                        let pat = like_literal(p);
                        format!("resource.path like {}*\"", &pat[..pat.len() - 1])
                    } else {
                        let pat = like_literal(&format!("{p}/"));
                        format!(
                            "resource.path == {} || resource.path like {}*\"",
                            super::engine::quote(p),
                            &pat[..pat.len() - 1]
                        )
                    };
                    terms.push(format!("(resource.path_ambiguous || {within})"));
                }
                out.push_str(&head(i, ""));
                out.push_str(&format!(
                    "forbid(principal, action == Action::\"http:send\", resource)\nwhen {{ {} }};\n",
                    terms.join(" && ")
                ));
            }
            GatedCapability::Files => {
                let prefix = rule
                    .path_prefix
                    .as_deref()
                    .map(|p| crate::policy::approval::segments(p).join("/"))
                    .filter(|p| !p.is_empty());
                let within = prefix.as_ref().map(|p| {
                    let pat = like_literal(&format!("{p}/"));
                    format!(
                        "resource.path == {} || resource.path like {}*\"",
                        super::engine::quote(p),
                        &pat[..pat.len() - 1]
                    )
                });
                for (op, wanted, suffix) in [("files:write", rule.writes, ""), ("files:read", rule.reads, ".read")] {
                    if !wanted {
                        continue;
                    }
                    let mut t = terms.clone();
                    if let (Some(p), Some(within)) = (&prefix, &within) {
                        // Writes to a parent of the prefix (renames,
                        // removals) move what the rule protects.
                        let ancestors: Vec<String> = if op == "files:write" {
                            let segs: Vec<&str> = p.split('/').collect();
                            (1..segs.len())
                                .map(|n| super::engine::quote(&segs[..n].join("/")))
                                .collect()
                        } else {
                            Vec::new()
                        };
                        let mut any = format!("!resource.known || {within}");
                        if !ancestors.is_empty() {
                            any.push_str(&format!(" || [{}].contains(resource.path)", ancestors.join(", ")));
                        }
                        t.push(format!("({any})"));
                    }
                    out.push_str(&head(i, suffix));
                    out.push_str(&format!(
                        "forbid(principal, action == Action::\"{op}\", resource)\nwhen {{ {} }};\n",
                        t.join(" && ")
                    ));
                }
            }
        }
    }
    out
}

/// The Cedar policies `policy`'s TOML keys stand for.
pub fn generate(policy: &ActionPolicy) -> String {
    let a = &policy.name;
    let scope = format!(r#"action in Action::"{a}", resource == Tool::"{a}""#);
    let mut out = String::new();
    for (i, rule) in policy.access.invoke.iter().enumerate() {
        let principal = match rule {
            AccessRule::Identity(name) => format!(r#"principal == Identity::"{name}""#),
            AccessRule::Role(role) => format!(r#"principal in Role::"{role}""#),
            AccessRule::Local => format!("principal in {LOCAL_OPERATOR}"),
        };
        out.push_str(&format!(
            "@id(\"{a}.access.invoke[{i}]\")\npermit({principal}, {scope});\n"
        ));
    }
    let approval = &policy.approval;
    if approval.invocation {
        out.push_str(&format!(
            "@id(\"{a}.approval.invocation\") @approval(\"action\") @quorum(\"{}\") @ttl(\"{}s\")\nforbid(principal, {scope});\n",
            approval.quorum,
            approval.ttl.as_secs()
        ));
    }
    if policy.require_reason {
        out.push_str(&format!(
            "@id(\"{a}.require-reason\") @reason(\"action {a} needs a stated reason: send `reason` (API), `_meta.reason` (MCP) or --reason (CLI)\")\nforbid(principal, {scope}) unless {{ context has reason }};\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Caller;
    use crate::policy::approval::{ApprovalPolicy, RawCallRule, Target};
    use crate::policy::engine::{HostTarget, HostVerdict, ToolPolicy};
    use proptest::prelude::*;
    use std::sync::Arc;

    /// An action with `rule` as its only host-call rule, whose policies are
    /// that rule's Cedar form (and nothing else).
    fn tool_of(rule: RawCallRule) -> Option<(crate::policy::approval::CallRule, Arc<ToolPolicy>)> {
        let approval = ApprovalPolicy::resolve(&crate::policy::approval::RawApproval {
            host_calls: vec![rule],
            ..Default::default()
        })
        .ok()?;
        let mut policy = ActionPolicy::ad_hoc(
            "act",
            "act.wasm".into(),
            crate::capabilities::Grants::default(),
            crate::policy::Limits::default(),
        );
        policy.access.approve = vec![crate::identity::AccessRule::Role("reviewer".into())];
        policy.access.invoke = Vec::new();
        policy.approval = approval;
        let text = host_calls(&policy);
        let groups = super::super::source::Groups::new();
        let rules = super::super::source::parse("shorthand", &text, &groups)
            .unwrap_or_else(|e| panic!("the generated policies do not parse: {e:?}\n{text}"));
        policy.policy_files = Arc::new(super::super::source::PolicyFiles {
            rules: rules.into_iter().map(Arc::new).collect(),
            groups: Arc::new(groups),
            sources: vec![("shorthand".into(), Arc::from(text.as_str()))],
        });
        let tool = ToolPolicy::build(&policy, &[], "blake3:00").unwrap_or_else(|e| panic!("{e}\n{text}"));
        Some((policy.approval.host_calls[0].clone(), Arc::new(tool)))
    }

    fn held(tool: &Arc<ToolPolicy>, target: &Target) -> bool {
        let host = tool
            .host_for(&Caller::local())
            .expect("host policies")
            .expect("entities");
        let t = match target {
            Target::Http { method, url } => HostTarget::Http { method, url },
            Target::Files { write, path } => HostTarget::File {
                write: *write,
                path: path.as_deref(),
            },
        };
        match host.decide(t, "f", 0) {
            HostVerdict::Pass => false,
            HostVerdict::Hold { .. } => true,
            HostVerdict::Deny { reason, .. } => panic!("denied: {reason}"),
        }
    }

    fn http_rule() -> impl Strategy<Value = RawCallRule> {
        (
            prop::option::of(prop::sample::subsequence(vec!["GET", "POST", "DELETE", "PATCH"], 1..3)),
            prop::option::of(prop::sample::select(vec![
                "https://api.example.com",
                "https://*.example.com",
                "http://api.example.com:8080",
            ])),
            prop::option::of(prop::sample::select(vec![
                "/", "/v1", "/v1/", "/v1*x", "/a\"b", "/v1;x", "/a\\b",
            ])),
        )
            .prop_map(|(methods, destination, prefix)| RawCallRule {
                capability: "http".into(),
                methods: methods.map(|m| m.into_iter().map(str::to_string).collect()),
                destination: destination.map(str::to_string),
                path_prefix: prefix.map(str::to_string),
                operations: None,
            })
    }

    fn http_target() -> impl Strategy<Value = Target> {
        (
            prop::sample::select(vec!["GET", "post", "DELETE", "PATCH"]),
            prop::sample::select(vec![
                "https://api.example.com/v1/x",
                "https://api.example.com/v1",
                "https://api.example.com//v1/x",
                "https://api.example.com/%76%31/x",
                "https://api.example.com/v1;a=b/x",
                "https://api.example.com/v1%2fx",
                "https://api.example.com/./v1/x",
                "https://api.example.com/v1x",
                "https://api.example.com/v1*x/y",
                "https://api.example.com/v1zzx",
                "https://api.example.com/a%22b/c",
                "https://api.example.com/a%5Cb",
                "https://a.b.example.com/v1",
                "https://example.com/v1",
                "https://evil-example.com/v1",
                "http://api.example.com:8080/v1",
                "http://api.example.com/v1",
                "https://api.example.com/v2",
            ]),
        )
            .prop_map(|(m, u)| Target::Http {
                method: m.to_string(),
                url: url::Url::parse(u).unwrap(),
            })
    }

    fn files_rule() -> impl Strategy<Value = RawCallRule> {
        (
            prop::option::of(prop::sample::select(vec![
                "gated",
                "gated/sub",
                "./gated//sub/",
                "g*d",
                "a\"b",
                ".",
            ])),
            prop::sample::select(vec![vec!["write"], vec!["read"], vec!["read", "write"]]),
        )
            .prop_map(|(prefix, ops)| RawCallRule {
                capability: "files".into(),
                methods: None,
                destination: None,
                path_prefix: prefix.map(str::to_string),
                operations: Some(ops.into_iter().map(str::to_string).collect()),
            })
    }

    fn files_target() -> impl Strategy<Value = Target> {
        (
            prop::bool::ANY,
            prop::option::of(prop::sample::select(vec![
                "gated/a",
                "gated",
                "",
                "gatedx/a",
                "gated/sub",
                "gated/sub/x",
                "gated/subx",
                "g*d/x",
                "gxd/x",
                "a\"b/c",
                "other",
            ])),
        )
            .prop_map(|(write, path)| Target::Files {
                write,
                path: path.map(str::to_string),
            })
    }

    #[test]
    fn the_cedar_form_holds_and_passes_as_written() {
        let (_, tool) = tool_of(RawCallRule {
            capability: "http".into(),
            methods: Some(vec!["DELETE".into()]),
            destination: Some("https://*.example.com".into()),
            path_prefix: Some("/v1".into()),
            operations: None,
        })
        .unwrap();
        let t = |m: &str, u: &str| Target::Http {
            method: m.into(),
            url: url::Url::parse(u).unwrap(),
        };
        assert!(held(&tool, &t("DELETE", "https://api.example.com/v1/x")));
        assert!(held(&tool, &t("delete", "https://api.example.com/%76%31")));
        assert!(!held(&tool, &t("GET", "https://api.example.com/v1/x")));
        assert!(!held(&tool, &t("DELETE", "https://example.com/v1/x")));
        assert!(!held(&tool, &t("DELETE", "https://api.example.com/v2")));
        let (_, files) = tool_of(RawCallRule {
            capability: "files".into(),
            methods: None,
            destination: None,
            path_prefix: Some("gated/sub".into()),
            operations: None,
        })
        .unwrap();
        let w = |p: Option<&str>| Target::Files {
            write: true,
            path: p.map(str::to_string),
        };
        assert!(held(&files, &w(Some("gated/sub/x"))));
        assert!(held(&files, &w(Some("gated"))));
        assert!(held(&files, &w(None)));
        assert!(!held(&files, &w(Some("gated/subx"))));
        assert!(!held(
            &files,
            &Target::Files {
                write: false,
                path: Some("gated/sub/x".into())
            }
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
        /// Every `[[approval.host-calls]]` http rule holds exactly the
        /// calls its Cedar form holds.
        #[test]
        fn http_rules_and_their_cedar_form_hold_the_same_calls(rule in http_rule(), targets in prop::collection::vec(http_target(), 1..8)) {
            if let Some((rule, tool)) = tool_of(rule) {
                for t in &targets {
                    prop_assert_eq!(rule.matches(t), held(&tool, t), "{:?} on {:?}", rule, t);
                }
            }
        }

        /// Likewise for files rules (paths as the gate resolves them; an
        /// unknown path is held).
        #[test]
        fn files_rules_and_their_cedar_form_hold_the_same_calls(rule in files_rule(), targets in prop::collection::vec(files_target(), 1..8)) {
            if let Some((rule, tool)) = tool_of(rule) {
                for t in &targets {
                    prop_assert_eq!(rule.matches(t), held(&tool, t), "{:?} on {:?}", rule, t);
                }
            }
        }
    }
}
