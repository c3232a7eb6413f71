//! Policy files: Cedar text read from the files `[policy] files` names,
//! each policy given a stable id and a place (`file:line`), its airlock
//! annotations checked.
//!
//! A policy's id is its `@id("…")` annotation, or `FILE:LINE` without one.
//! The annotations airlock reads (every other one is refused, so a typo
//! cannot silently drop a requirement):
//!
//! - `@reason("…")`: shown to the caller on a deny and to reviewers on a
//!   request;
//! - `@approval("GROUP")`: the policy gates rather than decides. On a
//!   `forbid`, the request waits for GROUP instead of being refused; on a
//!   `permit`, what it allows runs once GROUP approves. `GROUP` is one of
//!   `[approval-groups]`, or `action` for the action's own
//!   `access.approve` / `access.agent-approvers`;
//! - `@quorum("N")`: approvals needed from distinct identities (1 to 16;
//!   default 1);
//! - `@ttl("4h")`: how long the request stays open (`90s`, `30m`, `4h`,
//!   `2d`, `1h30m`; up to 30 days). Default: the action's
//!   `approval.ttl-secs` for invocations, `approval.wait-secs` for host
//!   calls;
//! - `@escalate_after("30m") @escalate_to("GROUP")`: a request nobody
//!   decided within that time goes to GROUP too (its reviewers may decide
//!   it from then on; votes already cast still count).

use crate::identity::AccessPolicy;
use crate::policy::approval::{MAX_QUORUM, MAX_TTL_SECS};
use cedar_policy::{Effect, PolicyId, PolicySet};
use miette::Diagnostic as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Largest policy file airlock reads.
pub const MAX_POLICY_FILE_BYTES: u64 = 4 << 20;

/// Annotations airlock reads.
const KNOWN: [&str; 7] = [
    "id",
    "reason",
    "approval",
    "quorum",
    "ttl",
    "escalate_after",
    "escalate_to",
];

/// The approval group that means "the action's own reviewers".
pub const ACTION_GROUP: &str = "action";

/// Where a policy is: its id and `file:line`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRef {
    pub id: String,
    pub at: String,
}

impl std::fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.id == self.at {
            f.write_str(&self.id)
        } else {
            write!(f, "{} ({})", self.id, self.at)
        }
    }
}

/// What an `@approval` policy asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateSpec {
    pub group: String,
    pub quorum: u32,
    /// `None`: the action's default for the kind of request.
    pub ttl: Option<Duration>,
    /// `@escalate_after("30m") @escalate_to("cfo")`: a request still
    /// undecided after this long may also be decided by that group.
    pub escalation: Option<(Duration, String)>,
}

/// One policy, ready for the engine.
#[derive(Debug, Clone)]
pub struct Rule {
    pub reference: PolicyRef,
    pub policy: cedar_policy::Policy,
    pub forbid: bool,
    pub gate: Option<GateSpec>,
    pub reason: Option<String>,
    /// For a policy generated from a TOML key: the key
    /// (`approval.invocation`).
    pub key: Option<String>,
}

impl Rule {
    pub fn id(&self) -> &PolicyId {
        self.policy.id()
    }
}

/// Named groups of reviewers (`[approval-groups.NAME]`).
pub type Groups = BTreeMap<String, AccessPolicy>;

/// The policies of a config's files, parsed and checked.
#[derive(Debug, Clone, Default)]
pub struct PolicyFiles {
    pub rules: Vec<Arc<Rule>>,
    pub groups: Arc<Groups>,
    /// Each file as read: its name as shown, and its text (kept for
    /// messages with lines).
    pub sources: Vec<(String, Arc<str>)>,
}

/// `offset` as `line:column` (both from 1) in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A duration written `90s`, `30m`, `4h`, `2d` or combined (`1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration: write e.g. `90s`, `30m`, `4h`, `2d` or `1h30m`");
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() || s.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// Parse one file's policies. `name` is how the file is shown in ids and
/// messages. Every problem is reported, each as `name:line:col: …`.
pub fn parse(name: &str, text: &str, groups: &Groups) -> Result<Vec<Rule>, Vec<String>> {
    let parsed: PolicySet = text.parse().map_err(|errs: cedar_policy::ParseErrors| {
        errs.iter()
            .map(|e| {
                let offset = e.labels().and_then(|mut l| l.next()).map_or(0, |l| l.offset());
                let (line, col) = line_col(text, offset);
                format!("{name}:{line}:{col}: {}", one_line(&e.to_string()))
            })
            .collect::<Vec<_>>()
    })?;
    let mut errors = Vec::new();
    if parsed.templates().next().is_some() {
        errors.push(format!(
            "{name}: policy templates (`?principal`, `?resource`) are not supported; write each policy out"
        ));
    }
    let mut rules = Vec::new();
    let mut cursor = 0;
    for policy in parsed.policies() {
        // Policies come in the order written; each one's own text is found
        // from where the previous one ended.
        let own = policy.to_cedar().unwrap_or_default();
        let offset = text
            .get(cursor..)
            .and_then(|rest| rest.find(own.as_str()))
            .map_or(cursor, |o| cursor + o);
        cursor = offset + own.len();
        let (line, col) = line_col(text, offset);
        let at = format!("{name}:{line}");
        let here = |msg: String| format!("{name}:{line}:{col}: {msg}");
        for (key, _) in policy.annotations() {
            if !KNOWN.contains(&key) {
                errors.push(here(format!(
                    "unknown annotation @{key}; airlock reads @id, @reason, @approval, @quorum and @ttl"
                )));
            }
        }
        let id = policy.annotation("id").map_or_else(|| at.clone(), str::to_string);
        if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
            errors.push(here("@id must be 1-128 characters without control characters".into()));
        }
        match rule(policy, PolicyRef { id: id.clone(), at }, groups) {
            Ok(r) => rules.push(r),
            Err(e) => errors.push(here(format!("policy {id}: {e}"))),
        }
    }
    if errors.is_empty() { Ok(rules) } else { Err(errors) }
}

fn rule(policy: &cedar_policy::Policy, reference: PolicyRef, groups: &Groups) -> Result<Rule, String> {
    let forbid = policy.effect() == Effect::Forbid;
    let gate = match policy.annotation("approval") {
        None => {
            if ["quorum", "ttl", "escalate_after", "escalate_to"]
                .iter()
                .any(|k| policy.annotation(k).is_some())
            {
                return Err("@quorum, @ttl and @escalate_* need @approval(\"GROUP\")".into());
            }
            None
        }
        Some(group) => {
            if group != ACTION_GROUP && !groups.contains_key(group) {
                let known: Vec<&str> = groups.keys().map(String::as_str).collect();
                return Err(format!(
                    "@approval names group {group:?}, which is not defined; define [approval-groups.{group}] or use \"action\" (the action's own access.approve){}",
                    if known.is_empty() {
                        String::new()
                    } else {
                        format!("; defined: {}", known.join(", "))
                    }
                ));
            }
            let quorum = match policy.annotation("quorum") {
                None => 1,
                Some(q) => q
                    .parse::<u32>()
                    .ok()
                    .filter(|q| (1..=MAX_QUORUM).contains(q))
                    .ok_or_else(|| format!("@quorum({q:?}) must be a number from 1 to {MAX_QUORUM}"))?,
            };
            let ttl = policy
                .annotation("ttl")
                .map(|t| {
                    let d = parse_duration(t).map_err(|e| format!("@ttl: {e}"))?;
                    if d.is_zero() || d.as_secs() > MAX_TTL_SECS {
                        return Err(format!("@ttl({t:?}) must be between 1s and 30d"));
                    }
                    Ok(d)
                })
                .transpose()?;
            let escalation = match (policy.annotation("escalate_after"), policy.annotation("escalate_to")) {
                (None, None) => None,
                (Some(after), Some(to)) => {
                    let after = parse_duration(after).map_err(|e| format!("@escalate_after: {e}"))?;
                    if after.is_zero() || ttl.is_some_and(|t| after >= t) {
                        return Err("@escalate_after must be above 0 and below the request's @ttl".into());
                    }
                    if to != ACTION_GROUP && !groups.contains_key(to) {
                        return Err(format!(
                            "@escalate_to names group {to:?}, which is not defined; define [approval-groups.{to}]"
                        ));
                    }
                    Some((after, to.to_string()))
                }
                _ => return Err("@escalate_after and @escalate_to go together".into()),
            };
            Some(GateSpec {
                group: group.to_string(),
                quorum,
                ttl,
                escalation,
            })
        }
    };
    let reason = policy.annotation("reason").map(str::to_string);
    if reason.as_ref().is_some_and(|r| r.len() > 1024) {
        return Err("@reason is longer than 1024 bytes".into());
    }
    Ok(Rule {
        policy: policy.new_id(PolicyId::new(reference.id.clone())),
        reference,
        forbid,
        gate,
        reason,
        key: None,
    })
}

/// Cedar's messages can span lines; airlock prints one line per problem.
pub fn one_line(msg: &str) -> String {
    msg.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl PolicyFiles {
    /// Read and parse `files` (shown as given in the config). Two policies
    /// with one id are refused.
    pub fn load(files: &[(String, std::path::PathBuf)], groups: Groups) -> Result<PolicyFiles, Vec<String>> {
        let mut errors = Vec::new();
        let mut rules: Vec<Arc<Rule>> = Vec::new();
        let mut sources = Vec::new();
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for (name, path) in files {
            let text = match read(path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(format!("{name}: {e}"));
                    continue;
                }
            };
            match parse(name, &text, &groups) {
                Ok(parsed) => {
                    for r in parsed {
                        if let Some(first) = seen.insert(r.reference.id.clone(), r.reference.at.clone()) {
                            errors.push(format!(
                                "{}: policy id {:?} is also used at {first}; ids must be unique",
                                r.reference.at, r.reference.id
                            ));
                        }
                        rules.push(Arc::new(r));
                    }
                }
                Err(e) => errors.extend(e),
            }
            sources.push((name.clone(), Arc::from(text)));
        }
        if errors.is_empty() {
            Ok(PolicyFiles {
                rules,
                groups: Arc::new(groups),
                sources,
            })
        } else {
            Err(errors)
        }
    }

    /// The text of file `name`, if it is one of these.
    pub fn source(&self, name: &str) -> Option<&str> {
        self.sources.iter().find(|(n, _)| n == name).map(|(_, t)| &**t)
    }
}

/// A policy file's text: a regular file of at most
/// [`MAX_POLICY_FILE_BYTES`]. A device, FIFO or directory is refused (a
/// path such as `/dev/zero` would otherwise be read forever), and a file
/// that grows while it is read is read no further than the limit.
fn read(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read as _;
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let not_file = || format!("{} is not a regular file; a policy file must be one", path.display());
    // Looked at before it is opened: opening a FIFO waits for a writer.
    if !std::fs::metadata(path).map_err(cannot)?.is_file() {
        return Err(not_file());
    }
    let file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(not_file());
    }
    let too_big = || {
        format!(
            "{} is over {MAX_POLICY_FILE_BYTES} bytes; policy files are at most that",
            path.display()
        )
    };
    if meta.len() > MAX_POLICY_FILE_BYTES {
        return Err(too_big());
    }
    let mut text = String::new();
    file.take(MAX_POLICY_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(cannot)?;
    if text.len() as u64 > MAX_POLICY_FILE_BYTES {
        return Err(too_big());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> Groups {
        let mut g = Groups::new();
        g.insert(
            "finance".into(),
            AccessPolicy {
                invoke: Vec::new(),
                approve: vec![crate::identity::AccessRule::Role("finance".into())],
                agent_approvers: Vec::new(),
            },
        );
        g
    }

    #[test]
    fn ids_come_from_annotations_or_the_line() {
        let text = "permit(principal, action, resource);\n\n@id(\"named\") @approval(\"finance\") @quorum(\"2\") @ttl(\"1h30m\")\nforbid(principal, action, resource);\n";
        let rules = parse("p.cedar", text, &groups()).unwrap();
        assert_eq!(rules[0].reference.id, "p.cedar:1");
        assert_eq!(rules[1].reference.id, "named");
        assert_eq!(rules[1].reference.at, "p.cedar:3");
        assert_eq!(rules[1].policy.id().to_string(), "named");
        assert_eq!(
            rules[1].gate,
            Some(GateSpec {
                group: "finance".into(),
                quorum: 2,
                ttl: Some(Duration::from_secs(5400)),
                escalation: None,
            })
        );
        assert!(rules[1].forbid && !rules[0].forbid);
    }

    /// A policy path naming a device, a FIFO or a directory is refused at
    /// once: `/dev/zero` was read until memory ran out, and a FIFO waited
    /// for a writer forever.
    #[test]
    fn only_regular_files_are_read_as_policies() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.cedar");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        for path in [std::path::PathBuf::from("/dev/zero"), fifo, dir.path().to_path_buf()] {
            let e = PolicyFiles::load(&[("p.cedar".into(), path.clone())], Groups::new())
                .err()
                .unwrap_or_default()
                .join("\n");
            assert!(e.contains("is not a regular file"), "{}: {e}", path.display());
        }
        let big = dir.path().join("big.cedar");
        std::fs::write(&big, vec![b' '; MAX_POLICY_FILE_BYTES as usize + 1]).unwrap();
        let e = PolicyFiles::load(&[("big.cedar".into(), big)], Groups::new())
            .err()
            .unwrap_or_default()
            .join("\n");
        assert!(e.contains("policy files are at most"), "{e}");
        let fine = dir.path().join("ok.cedar");
        std::fs::write(&fine, "permit(principal, action, resource);\n").unwrap();
        assert!(PolicyFiles::load(&[("ok.cedar".into(), fine)], Groups::new()).is_ok());
    }

    #[test]
    fn mistakes_are_refused_with_their_place() {
        let bad = |text: &str| parse("p.cedar", text, &groups()).unwrap_err().join("\n");
        assert!(bad("permit(principal, action, resource)").starts_with("p.cedar:1:"));
        let e = bad("\n@approval(\"cfo\") forbid(principal, action, resource);");
        assert!(e.starts_with("p.cedar:2:1:") && e.contains("group \"cfo\""), "{e}");
        assert!(bad("@quorum(\"2\") forbid(principal, action, resource);").contains("need @approval"));
        assert!(bad("@approval(\"action\") @quorum(\"17\") forbid(principal, action, resource);").contains("1 to 16"));
        assert!(bad("@approval(\"action\") @ttl(\"31d\") forbid(principal, action, resource);").contains("30d"));
        assert!(
            bad("@approvl(\"action\") forbid(principal, action, resource);").contains("unknown annotation @approvl")
        );
        assert!(bad("permit(principal == ?principal, action, resource);").contains("templates"));
        let e = bad("@approval(\"action\") @escalate_after(\"1h\") forbid(principal, action, resource);");
        assert!(e.contains("go together"), "{e}");
        let e = bad(
            "@approval(\"action\") @ttl(\"1h\") @escalate_after(\"2h\") @escalate_to(\"finance\") forbid(principal, action, resource);",
        );
        assert!(e.contains("below the request's @ttl"), "{e}");
        let e = bad(
            "@approval(\"action\") @escalate_after(\"1h\") @escalate_to(\"cfo\") forbid(principal, action, resource);",
        );
        assert!(e.contains("\"cfo\""), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "4", "h", "1x", "99999999999999999999d", "-1h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
