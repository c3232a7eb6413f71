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

use super::ActionPolicy;
use crate::identity::AccessRule;

/// The entity the local operator belongs to (no token holder can).
pub const LOCAL_OPERATOR: &str = r#"Operator::"local""#;

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
