//! The one place invocations are decided: Cedar policies (the config's
//! policy files and the TOML keys' shorthand) evaluated for a caller, an
//! action's function and its arguments.
//!
//! Decisions (see [`Outcome`]):
//!
//! - a satisfied `forbid` refuses, with its `@reason`;
//! - a satisfied `forbid` with `@approval` holds the request for that
//!   group, provided some `permit` allows it (else it is refused: nothing
//!   permits it);
//! - a satisfied `permit` allows; a satisfied `permit` with `@approval`
//!   allows once its group approves;
//! - nothing satisfied refuses (deny by default);
//! - a policy that cannot be evaluated (an overflow, a missing attribute)
//!   refuses: Cedar would skip it, and a skipped `forbid` must never turn
//!   into an allow.
//!
//! When several gating `forbid`s apply, every group they name must approve
//! (each to its quorum; one group named twice needs the higher quorum);
//! of several gating `permit`s one is enough, the strictest (the highest
//! quorum, then the longest time to decide, then the smallest policy id).
//! The request stays open for the longest time any of them gives.
//!
//! Cost: only the policies that can apply to a function reach Cedar (each
//! function has its own slice, built at load), and of those only the ones
//! whose principal scope can match the caller (filtered once per caller
//! and cached); an argument is converted only if a policy reads it.

use super::context::{self, Offset, Reads};
use super::schema::{self, ActionTypes, INVOKE};
use super::shorthand::{self, LOCAL_OPERATOR};
use super::source::{self, ACTION_GROUP, PolicyRef, Rule};
use super::{ActionPolicy, source::Groups};
use crate::identity::AccessPolicy;
use crate::identity::{Caller, IdentityKind};
use crate::manifest::FunctionSig;
use crate::values::{JsonPath, ValueType};
use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision, Entities, Entity, EntityUid, PolicySet, PrincipalConstraint,
    Request, ResourceConstraint, RestrictedExpression,
};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most callers whose filtered policies one function keeps.
const CALLER_CACHE: usize = 1024;

/// A decision and the policies that took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    /// The policies that decided, sorted by id. Empty only when nothing
    /// permits the request (deny by default).
    pub policies: Vec<PolicyRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny { reason: String },
    Approve(Box<Requirement>),
}

/// What an approval needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The gate whose requirement won.
    pub policy: PolicyRef,
    /// `action` (the action's own reviewers) or an `[approval-groups]` name.
    pub group: String,
    pub approvers: AccessPolicy,
    pub quorum: u32,
    pub ttl: Duration,
    /// The gate's `@reason`: why reviewers are asked.
    pub why: Option<String>,
    /// The rule as requests name it: the TOML key for shorthand
    /// (`approval.invocation`), else `policy ID`.
    pub rule: String,
    /// Every group that must approve, each to its own quorum (the first
    /// is `group`). Several gating `forbid`s with different groups all
    /// apply: finance and security both approve.
    pub groups: Vec<GroupNeed>,
    /// Who may decide too once the request waited this long (the winning
    /// gate's `@escalate_after` / `@escalate_to`).
    pub escalation: Option<(Duration, GroupNeed)>,
}

/// One group a request needs, and how many of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupNeed {
    pub group: String,
    pub approvers: AccessPolicy,
    pub quorum: u32,
}

impl Verdict {
    /// The deciding policies' ids.
    pub fn policy_ids(&self) -> Vec<String> {
        self.policies.iter().map(|p| p.id.clone()).collect()
    }

    /// One line for people: the outcome and the policies.
    pub fn describe(&self) -> String {
        let policies = if self.policies.is_empty() {
            "no policy permits it".to_string()
        } else {
            self.policies
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &self.outcome {
            Outcome::Allow => format!("allow (policies: {policies})"),
            Outcome::Deny { reason } => format!("deny: {reason} (policies: {policies})"),
            Outcome::Approve(r) => format!("approval required: {} (policies: {policies})", r.describe()),
        }
    }
}

impl Requirement {
    pub fn rule_text(&self) -> String {
        self.rule.clone()
    }

    pub fn describe(&self) -> String {
        let mut s = format!(
            "group {} ({}), quorum {}, open for {}",
            self.group,
            {
                let list = self.approvers.approvers_text();
                if list.is_empty() {
                    "nobody".to_string()
                } else {
                    list.join(", ")
                }
            },
            self.quorum,
            duration_text(self.ttl)
        );
        if let Some(why) = &self.why {
            s.push_str(&format!("; why: {why}"));
        }
        s
    }
}

/// The policies of one action, sliced per function.
pub struct ToolPolicy {
    name: String,
    tool: EntityUid,
    /// Action entities (with their hierarchy) and the tool.
    base: Entities,
    functions: HashMap<String, Slice>,
    groups: Arc<Groups>,
    /// The action's own reviewers (group `action`).
    access: AccessPolicy,
    /// Default time an invocation request stays open.
    ttl: Duration,
    /// Default time a held host call waits.
    wait: Duration,
    /// The action's usage windows (`context.usage`).
    windows: Vec<super::windows::Window>,
    offset: Offset,
    /// Host-call policies by kind (`http:send`, …); only kinds some
    /// policy can object to.
    host: HashMap<&'static str, HostSlice>,
}

impl std::fmt::Debug for ToolPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolPolicy")
            .field("name", &self.name)
            .field("functions", &self.functions.len())
            .finish()
    }
}

struct Slice {
    action: EntityUid,
    params: Vec<(String, ValueType)>,
    rules: Vec<Arc<Rule>>,
    cache: Mutex<HashMap<CallerKey, Arc<ForCaller>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CallerKey {
    name: String,
    kind: IdentityKind,
    local: bool,
    roles: Vec<String>,
}

impl CallerKey {
    fn of(caller: &Caller) -> CallerKey {
        let mut roles = caller.roles.clone();
        roles.sort();
        roles.dedup();
        CallerKey {
            name: caller.name.clone(),
            kind: caller.kind,
            local: caller.is_local(),
            roles,
        }
    }
}

/// A function's policies that can apply to one caller.
struct ForCaller {
    principal: EntityUid,
    all: PolicySet,
    permits: PolicySet,
    entities: Entities,
    rules: HashMap<cedar_policy::PolicyId, Arc<Rule>>,
    /// What these policies read (less than the whole function's may).
    reads: Reads,
    /// The decision, once taken, when these policies read nothing of the
    /// context: it then depends only on who asks for which function, which
    /// is what this value is for.
    decided: std::sync::OnceLock<Verdict>,
}

/// The entity `ty::"id"`. Built from its parts, not parsed: the id is
/// taken as it is (what parsing `quote(id)` gives back), and the entity
/// types airlock names are parsed once per process. Every request builds
/// a few of these (caller, roles, tool), and parsing each was a tenth of
/// the service's time outside the action and the audit log.
fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    static KNOWN: std::sync::LazyLock<Vec<(&'static str, cedar_policy::EntityTypeName)>> =
        std::sync::LazyLock::new(|| {
            ["Identity", "Role", "Tool", "Action", "HttpRequest", "File"]
                .into_iter()
                .filter_map(|t| t.parse().ok().map(|name| (t, name)))
                .collect()
        });
    let name = match KNOWN.iter().find(|(t, _)| *t == ty) {
        Some((_, name)) => name.clone(),
        None => ty.parse().map_err(|e| format!("entity type {ty}: {e}"))?,
    };
    Ok(EntityUid::from_type_name_and_id(name, cedar_policy::EntityId::new(id)))
}

/// A Cedar string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn principal_entity(caller: &Caller) -> Result<(EntityUid, Vec<Entity>), String> {
    let me = uid("Identity", &caller.name)?;
    let mut parents = HashSet::new();
    let mut others = Vec::new();
    if caller.is_local() {
        let op: EntityUid = LOCAL_OPERATOR.parse().map_err(|e| format!("{e}"))?;
        others.push(Entity::with_uid(op.clone()));
        parents.insert(op);
    }
    for role in &caller.roles {
        let r = uid("Role", role)?;
        others.push(Entity::with_uid(r.clone()));
        parents.insert(r);
    }
    let attrs = HashMap::from([
        (
            "kind".to_string(),
            RestrictedExpression::new_string(caller.kind.to_string()),
        ),
        ("local".to_string(), RestrictedExpression::new_bool(caller.is_local())),
    ]);
    let entity = Entity::new(me.clone(), attrs, parents).map_err(|e| e.to_string())?;
    others.push(entity);
    Ok((me, others))
}

/// Whether a principal scope can match `caller` (conditions aside).
fn principal_may_match(c: &PrincipalConstraint, me: &EntityUid, parents: &[EntityUid]) -> bool {
    let is_identity = |t: &cedar_policy::EntityTypeName| t.to_string() == "Identity";
    let within = |u: &EntityUid| u == me || parents.contains(u);
    match c {
        PrincipalConstraint::Any => true,
        PrincipalConstraint::Eq(u) => u == me,
        PrincipalConstraint::In(u) => within(u),
        PrincipalConstraint::Is(t) => is_identity(t),
        PrincipalConstraint::IsIn(t, u) => is_identity(t) && within(u),
    }
}

fn caller_parents(caller: &Caller) -> Result<Vec<EntityUid>, String> {
    let mut out = Vec::new();
    if caller.is_local() {
        out.push(LOCAL_OPERATOR.parse().map_err(|e| format!("{e}"))?);
    }
    for role in &caller.roles {
        out.push(uid("Role", role)?);
    }
    Ok(out)
}

/// Whether an action scope covers one of `actions`.
fn action_may_match(c: &ActionConstraint, actions: &[EntityUid]) -> bool {
    match c {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(u) => actions.first() == Some(u),
        ActionConstraint::In(list) => list.iter().any(|u| actions.contains(u)),
    }
}

fn resource_may_match(c: &ResourceConstraint, tool: &EntityUid) -> bool {
    let is_tool = |t: &cedar_policy::EntityTypeName| t.to_string() == "Tool";
    match c {
        ResourceConstraint::Any => true,
        ResourceConstraint::Eq(u) | ResourceConstraint::In(u) => u == tool,
        ResourceConstraint::Is(t) => is_tool(t),
        ResourceConstraint::IsIn(t, u) => is_tool(t) && u == tool,
    }
}

/// Everything a decision reads about a request.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub caller: &'a Caller,
    pub function: &'a str,
    pub args: &'a Value,
    /// The agent's stated reason and trace (`context.reason`,
    /// `context.traceparent`).
    pub intent: Option<&'a crate::request::Intent>,
    /// What each of the action's windows (by name) has used so far, when
    /// a policy reads `context.usage` ([`ToolPolicy::reads_usage`]).
    pub usage: Option<&'a [(String, i64)]>,
    /// Unix microseconds.
    pub now: u64,
}

impl ToolPolicy {
    /// The policies of action `policy` exporting `functions`: its
    /// shorthand and every file policy whose scope can reach it.
    pub fn build(policy: &ActionPolicy, functions: &[FunctionSig], digest: &str) -> Result<ToolPolicy, String> {
        let name = &policy.name;
        let files = &policy.policy_files;
        let shorthand_text = shorthand::generate(policy);
        let at = match &policy.origin {
            super::GrantOrigin::Config { path, line } => format!("{}:{line}", path.display()),
            super::GrantOrigin::Flags => "command line".to_string(),
        };
        let generated =
            source::parse(&format!("{name} (TOML shorthand)"), &shorthand_text, &files.groups).map_err(|e| {
                format!(
                    "the TOML access and approval keys did not translate to policies (a bug): {}",
                    e.join("; ")
                )
            })?;
        let mut rules: Vec<Arc<Rule>> = Vec::new();
        let mut ids: BTreeMap<String, String> = BTreeMap::new();
        for mut r in generated {
            // Generated policies are found at the action's TOML section.
            r.reference.at = at.clone();
            r.key = r.reference.id.strip_prefix(&format!("{name}.")).map(str::to_string);
            rules.push(Arc::new(r));
        }
        rules.extend(files.rules.iter().cloned());
        for r in &rules {
            if let Some(first) = ids.insert(r.reference.id.clone(), r.reference.at.clone()) {
                return Err(format!(
                    "policy id {:?} is used twice ({first} and {}); ids must be unique",
                    r.reference.id, r.reference.at
                ));
            }
        }
        let types = [ActionTypes::of(name, functions).with_windows(&policy.windows)];
        let schema = schema::schema(&types)?;
        let tool = uid("Tool", name)?;
        let tool_entity = Entity::new(
            tool.clone(),
            HashMap::from([
                ("name".to_string(), RestrictedExpression::new_string(name.clone())),
                (
                    "service_identity".to_string(),
                    RestrictedExpression::new_string(policy.service_identity.clone()),
                ),
                (
                    "digest".to_string(),
                    RestrictedExpression::new_string(digest.to_string()),
                ),
            ]),
            HashSet::new(),
        )
        .map_err(|e| e.to_string())?;
        let actions = schema.action_entities().map_err(|e| format!("policy entities: {e}"))?;
        let base = actions
            .add_entities([tool_entity], None)
            .map_err(|e| format!("policy entities: {e}"))?;
        let root = uid("Action", INVOKE)?;
        let action_uid = uid("Action", name)?;
        let mut slices = HashMap::new();
        for f in functions {
            let fn_uid = uid("Action", &schema::function_action(name, &f.name))?;
            let scope = [fn_uid.clone(), action_uid.clone(), root.clone()];
            let applicable: Vec<Arc<Rule>> = rules
                .iter()
                .filter(|r| {
                    action_may_match(&r.policy.action_constraint(), &scope)
                        && resource_may_match(&r.policy.resource_constraint(), &tool)
                })
                .cloned()
                .collect();
            slices.insert(
                f.name.clone(),
                Slice {
                    action: fn_uid,
                    params: f.params.clone(),
                    rules: applicable,
                    cache: Mutex::new(HashMap::new()),
                },
            );
        }
        let tool_policy = ToolPolicy {
            name: name.clone(),
            tool,
            base,
            functions: slices,
            groups: files.groups.clone(),
            access: policy.access.clone(),
            ttl: policy.approval.ttl,
            wait: policy.approval.wait,
            windows: policy.windows.clone(),
            offset: policy.timezone,
            host: Self::host_slices(&rules)?,
        };
        // Every gate must name reviewers who exist, and escalate before its
        // request expires.
        let host_rules = tool_policy.host.values().flat_map(|s| s.rules.values());
        for slice in tool_policy.functions.values() {
            for r in slice.rules.iter() {
                if let Some(g) = &r.gate
                    && let Some((after, _)) = &g.escalation
                    && *after >= g.ttl.unwrap_or(tool_policy.ttl)
                {
                    return Err(format!(
                        "policy {}: @escalate_after is not before the request expires (after {}; action `{name}`'s approval.ttl-secs or the policy's @ttl)",
                        r.reference,
                        duration_text(g.ttl.unwrap_or(tool_policy.ttl))
                    ));
                }
            }
            for r in slice.rules.iter().chain(host_rules.clone()) {
                if let Some(g) = &r.gate
                    && !tool_policy.approvers(&g.group).is_some_and(AccessPolicy::has_approvers)
                {
                    return Err(format!(
                        "policy {} asks group {:?} for approval of action `{name}`, but nobody may approve: {}",
                        r.reference,
                        g.group,
                        if g.group == ACTION_GROUP {
                            "set access.approve (or access.agent-approvers) for the action"
                        } else {
                            "the group has no approve or agent-approvers entries"
                        }
                    ));
                }
            }
        }
        Ok(tool_policy)
    }

    fn approvers(&self, group: &str) -> Option<&AccessPolicy> {
        if group == ACTION_GROUP {
            Some(&self.access)
        } else {
            self.groups.get(group)
        }
    }

    /// Whether `caller` could ever be allowed a function (principal scopes
    /// only, conditions not evaluated): what listings show.
    pub fn may_list(&self, caller: &Caller) -> bool {
        let (Ok(me), Ok(parents)) = (uid("Identity", &caller.name), caller_parents(caller)) else {
            return false;
        };
        self.functions.values().any(|s| {
            s.rules
                .iter()
                .any(|r| !r.forbid && principal_may_match(&r.policy.principal_constraint(), &me, &parents))
        })
    }

    /// Every policy of a function or a host call of this action.
    fn all_rules(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.functions
            .values()
            .flat_map(|s| s.rules.iter())
            .chain(self.host.values().flat_map(|s| s.rules.values()))
    }

    /// Every policy that can decide something of this action, as
    /// `ID (FILE:LINE)`, sorted.
    pub fn policy_refs(&self) -> Vec<String> {
        let mut out: Vec<String> = self.all_rules().map(|r| r.reference.to_string()).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether `caller` is among the reviewers some gate of these policies
    /// can ask.
    pub fn may_review(&self, caller: &Caller) -> bool {
        self.all_rules().any(|r| {
            r.gate
                .as_ref()
                .and_then(|g| self.approvers(&g.group))
                .is_some_and(|a| a.may_approve(caller))
        })
    }

    /// Whether deciding `function` for `caller` reads `context.usage`, and
    /// so needs the windows' use read from the store first.
    pub fn reads_usage(&self, function: &str, caller: &Caller) -> bool {
        self.functions
            .get(function)
            .and_then(|s| self.for_caller(s, caller).ok())
            .is_some_and(|f| f.reads.usage)
    }

    /// Whether an invocation of `function` could be held for approval.
    pub fn may_hold(&self, function: &str) -> bool {
        self.functions
            .get(function)
            .is_none_or(|s| s.rules.iter().any(|r| r.gate.is_some()))
    }

    fn for_caller(&self, slice: &Slice, caller: &Caller) -> Result<Arc<ForCaller>, String> {
        let key = CallerKey::of(caller);
        let mut cache = slice.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = cache.get(&key) {
            return Ok(hit.clone());
        }
        let (me, entities) = principal_entity(caller)?;
        let parents = caller_parents(caller)?;
        let mine: Vec<&Arc<Rule>> = slice
            .rules
            .iter()
            .filter(|r| principal_may_match(&r.policy.principal_constraint(), &me, &parents))
            .collect();
        let all = PolicySet::from_policies(mine.iter().map(|r| r.policy.clone())).map_err(|e| e.to_string())?;
        let permits = PolicySet::from_policies(mine.iter().filter(|r| !r.forbid).map(|r| r.policy.clone()))
            .map_err(|e| e.to_string())?;
        let entities = self
            .base
            .clone()
            .add_entities(entities, None)
            .map_err(|e| format!("policy entities: {e}"))?;
        let built = Arc::new(ForCaller {
            principal: me,
            all,
            permits,
            entities,
            rules: mine.iter().map(|r| (r.id().clone(), Arc::clone(r))).collect(),
            reads: {
                let mut reads = Reads::default();
                for r in &mine {
                    reads.merge(&Reads::of(&r.policy));
                }
                reads
            },
            decided: std::sync::OnceLock::new(),
        });
        if cache.len() >= CALLER_CACHE {
            cache.clear();
        }
        cache.insert(key, built.clone());
        Ok(built)
    }

    /// Decide an invocation. Never errs: whatever goes wrong refuses.
    pub fn decide(&self, ask: &Ask<'_>) -> Verdict {
        match self.try_decide(ask) {
            Ok(v) => v,
            Err(reason) => Verdict {
                outcome: Outcome::Deny { reason },
                policies: Vec::new(),
            },
        }
    }

    fn try_decide(&self, ask: &Ask<'_>) -> Result<Verdict, String> {
        let slice = self
            .functions
            .get(ask.function)
            .ok_or_else(|| format!("action `{}` has no function `{}`", self.name, ask.function))?;
        let for_caller = self.for_caller(slice, ask.caller)?;
        if for_caller.reads.context {
            return self.evaluate(slice, &for_caller, ask);
        }
        if let Some(verdict) = for_caller.decided.get() {
            return Ok(verdict.clone());
        }
        let verdict = self.evaluate(slice, &for_caller, ask)?;
        let _ = for_caller.decided.set(verdict.clone());
        Ok(verdict)
    }

    /// Ask Cedar.
    fn evaluate(&self, slice: &Slice, for_caller: &ForCaller, ask: &Ask<'_>) -> Result<Verdict, String> {
        let mut pairs: Vec<(String, RestrictedExpression)> = Vec::new();
        let reads = &for_caller.reads;
        if reads.all_args || !reads.args.is_empty() {
            let obj = ask
                .args
                .as_object()
                .ok_or_else(|| "the arguments are not a JSON object".to_string())?;
            let values = crate::values::record_from_json(&slice.params, obj, &JsonPath::root("args"))
                .map_err(|e| e.to_string())?;
            let values: Vec<_> = values.into_iter().map(|(_, v)| v).collect();
            pairs.push(("args".into(), context::args_record(&slice.params, &values, reads)?));
        }
        if reads.now {
            let now = context::Now::at(ask.now, self.offset);
            pairs.push(("now".into(), now.record(reads.now_datetime)?));
        }
        if reads.usage {
            let usage = ask
                .usage
                .ok_or_else(|| "the policies read context.usage, but it was not read (a bug)".to_string())?;
            let fields = usage
                .iter()
                .filter(|(name, _)| self.windows.iter().any(|w| w.name == *name && w.applies(ask.function)))
                .map(|(name, used)| (schema::attr_name(name), RestrictedExpression::new_long(*used)));
            pairs.push((
                "usage".into(),
                RestrictedExpression::new_record(fields).map_err(|e| e.to_string())?,
            ));
        }
        if let Some(intent) = ask.intent {
            if let Some(r) = &intent.reason {
                pairs.push(("reason".into(), RestrictedExpression::new_string(r.clone())));
            }
            if let Some(t) = &intent.traceparent {
                pairs.push(("traceparent".into(), RestrictedExpression::new_string(t.clone())));
            }
        }
        let context = Context::from_pairs(pairs).map_err(|e| e.to_string())?;
        let request = Request::new(
            for_caller.principal.clone(),
            slice.action.clone(),
            self.tool.clone(),
            context,
            None,
        )
        .map_err(|e| e.to_string())?;
        let authorizer = Authorizer::new();
        let first = authorizer.is_authorized(&request, &for_caller.all, &for_caller.entities);
        if let Some(e) = first.diagnostics().errors().next() {
            // Cedar skips a policy it cannot evaluate; a skipped forbid must
            // not become an allow.
            #[allow(unreachable_patterns)]
            let id = match e {
                cedar_policy::AuthorizationError::PolicyEvaluationError(p) => p.policy_id().to_string(),
                _ => "?".to_string(),
            };
            let rule = for_caller.rules.get(&cedar_policy::PolicyId::new(&id));
            let at = rule.map_or(id.clone(), |r| r.reference.to_string());
            return Ok(Verdict {
                outcome: Outcome::Deny {
                    reason: format!(
                        "policy {at} could not be evaluated: {}",
                        source::one_line(&e.to_string())
                    ),
                },
                policies: rule.map(|r| r.reference.clone()).into_iter().collect(),
            });
        }
        let rules_of = |r: &cedar_policy::Response| -> Vec<Arc<Rule>> {
            let mut v: Vec<Arc<Rule>> = r
                .diagnostics()
                .reason()
                .filter_map(|id| for_caller.rules.get(id).cloned())
                .collect();
            v.sort_by(|a, b| a.reference.id.cmp(&b.reference.id));
            v
        };
        let deciding = rules_of(&first);
        let refs = |rules: &[Arc<Rule>]| rules.iter().map(|r| r.reference.clone()).collect::<Vec<_>>();
        if first.decision() == Decision::Allow {
            let gates: Vec<&Arc<Rule>> = deciding.iter().filter(|r| r.gate.is_some()).collect();
            return Ok(Verdict {
                outcome: match self.requirement(std::iter::empty(), gates.into_iter(), self.ttl) {
                    None => Outcome::Allow,
                    Some(req) => Outcome::Approve(Box::new(req)),
                },
                policies: refs(&deciding),
            });
        }
        if deciding.is_empty() {
            return Ok(Verdict {
                outcome: Outcome::Deny {
                    reason: format!(
                        "no policy permits {} to invoke {}",
                        describe(ask.caller),
                        schema::function_action(&self.name, ask.function)
                    ),
                },
                policies: Vec::new(),
            });
        }
        let hard: Vec<&Arc<Rule>> = deciding.iter().filter(|r| r.gate.is_none()).collect();
        if let Some(first_hard) = hard.first() {
            return Ok(Verdict {
                outcome: Outcome::Deny {
                    reason: first_hard
                        .reason
                        .clone()
                        .unwrap_or_else(|| format!("forbidden by policy {}", first_hard.reference.id)),
                },
                policies: hard.iter().map(|r| r.reference.clone()).collect(),
            });
        }
        // Only gating forbids: held, if something permits it at all.
        let second = authorizer.is_authorized(&request, &for_caller.permits, &for_caller.entities);
        if second.diagnostics().errors().next().is_some() || second.decision() != Decision::Allow {
            return Ok(Verdict {
                outcome: Outcome::Deny {
                    reason: format!(
                        "no policy permits {} to invoke {}",
                        describe(ask.caller),
                        schema::function_action(&self.name, ask.function)
                    ),
                },
                policies: Vec::new(),
            });
        }
        let mut all = deciding.clone();
        all.extend(rules_of(&second));
        all.sort_by(|a, b| a.reference.id.cmp(&b.reference.id));
        let requirement = self
            .requirement(
                all.iter().filter(|r| r.gate.is_some() && r.forbid),
                all.iter().filter(|r| r.gate.is_some() && !r.forbid),
                self.ttl,
            )
            .ok_or_else(|| "a gate without a requirement (a bug)".to_string())?;
        Ok(Verdict {
            outcome: Outcome::Approve(Box::new(requirement)),
            policies: refs(&all),
        })
    }

    /// What `all` (every gate must be satisfied: satisfied `forbid`s
    /// with `@approval`) and the strictest of `any` (one gate is enough:
    /// satisfied `permit`s with `@approval`) ask together, with
    /// `default_ttl` for a gate without `@ttl`.
    fn requirement<'r>(
        &self,
        all: impl Iterator<Item = &'r Arc<Rule>>,
        any: impl Iterator<Item = &'r Arc<Rule>>,
        default_ttl: Duration,
    ) -> Option<Requirement> {
        let one = |r: &Arc<Rule>| -> Option<Requirement> {
            let g = r.gate.as_ref()?;
            let approvers = self.approvers(&g.group).cloned().unwrap_or(AccessPolicy {
                invoke: Vec::new(),
                approve: Vec::new(),
                agent_approvers: Vec::new(),
            });
            Some(Requirement {
                policy: r.reference.clone(),
                group: g.group.clone(),
                approvers: approvers.clone(),
                quorum: g.quorum,
                ttl: g.ttl.unwrap_or(default_ttl),
                why: r.reason.clone(),
                rule: r.key.clone().unwrap_or_else(|| format!("policy {}", r.reference)),
                groups: vec![GroupNeed {
                    group: g.group.clone(),
                    approvers,
                    quorum: g.quorum,
                }],
                escalation: g.escalation.as_ref().map(|(after, to)| {
                    (
                        *after,
                        GroupNeed {
                            group: to.clone(),
                            approvers: self.approvers(to).cloned().unwrap_or(AccessPolicy {
                                invoke: Vec::new(),
                                approve: Vec::new(),
                                agent_approvers: Vec::new(),
                            }),
                            quorum: g.quorum,
                        },
                    )
                }),
            })
        };
        let stricter = |a: &Requirement, b: &Requirement| {
            b.quorum
                .cmp(&a.quorum)
                .then(b.ttl.cmp(&a.ttl))
                .then(a.policy.id.cmp(&b.policy.id))
        };
        let mut chosen: Vec<Requirement> = all.filter_map(&one).collect();
        if let Some(alternative) = any.filter_map(one).min_by(stricter) {
            chosen.push(alternative);
        }
        chosen.sort_by(stricter);
        let mut merged = chosen.first()?.clone();
        merged.groups.clear();
        for r in &chosen {
            merged.ttl = merged.ttl.max(r.ttl);
            match merged.groups.iter_mut().find(|g| g.group == r.group) {
                Some(g) => g.quorum = g.quorum.max(r.quorum),
                None => merged.groups.push(r.groups[0].clone()),
            }
        }
        Some(merged)
    }
}

/// `4h`, `30m`, `1h30m`, `90s`.
pub fn duration_text(d: Duration) -> String {
    let s = d.as_secs();
    let (days, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    let mut out = String::new();
    for (n, unit) in [(days, "d"), (h, "h"), (m, "m"), (sec, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

fn describe(caller: &Caller) -> String {
    match (caller.is_local(), caller.kind) {
        (true, _) => format!("the local operator ({})", caller.name),
        (false, IdentityKind::Agent) => format!("agent `{}`", caller.name),
        (false, IdentityKind::Human) => format!("`{}`", caller.name),
    }
}

/// Check every policy of a config against the schema of its loaded
/// actions (Cedar's strict validation): a policy that names a missing
/// argument, compares a string with a number, or names an action or
/// function that does not exist is refused, each problem as
/// `file:line:col: …`.
pub fn validate(actions: &[(&ActionPolicy, &[FunctionSig])]) -> Result<(), Vec<String>> {
    let Some((first, _)) = actions.first() else {
        return Ok(());
    };
    let files = &first.policy_files;
    let types: Vec<ActionTypes<'_>> = actions
        .iter()
        .map(|(p, f)| ActionTypes::of(&p.name, f).with_windows(&p.windows))
        .collect();
    let schema = schema::schema(&types).map_err(|e| vec![e])?;
    let mut set = PolicySet::new();
    let mut errors = Vec::new();
    for r in &files.rules {
        if let Err(e) = set.add(r.policy.clone()) {
            errors.push(format!("{}: {e}", r.reference.at));
        }
    }
    let result = cedar_policy::Validator::new(schema).validate(&set, cedar_policy::ValidationMode::Strict);
    use miette::Diagnostic as _;
    for e in result.validation_errors() {
        let id = e.policy_id().to_string();
        let rule = files.rules.iter().find(|r| r.reference.id == id);
        let place = match rule {
            Some(r) => {
                let file = r
                    .reference
                    .at
                    .rsplit_once(':')
                    .map_or(r.reference.at.as_str(), |(f, _)| f);
                match (files.source(file), e.labels().and_then(|mut l| l.next())) {
                    (Some(text), Some(label)) => {
                        let (line, col) = source::line_col(text, label.offset());
                        format!("{file}:{line}:{col}")
                    }
                    _ => r.reference.at.clone(),
                }
            }
            None => id.clone(),
        };
        errors.push(format!("{place}: policy {id}: {}", source::one_line(&e.to_string())));
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// A host call, as host-call policies see it.
#[derive(Debug, Clone, Copy)]
pub enum HostTarget<'a> {
    Http {
        method: &'a str,
        url: &'a url::Url,
    },
    /// `path` relative to the granted directory, resolved through links;
    /// `None` when that cannot be told.
    File {
        write: bool,
        path: Option<&'a str>,
    },
}

impl HostTarget<'_> {
    fn kind(&self) -> &'static str {
        match self {
            HostTarget::Http { .. } => "http:send",
            HostTarget::File { write: true, .. } => "files:write",
            HostTarget::File { write: false, .. } => "files:read",
        }
    }
}

/// What host-call policies say about one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostVerdict {
    /// No policy objects: the grants decide.
    Pass,
    Deny {
        reason: String,
        policies: Vec<PolicyRef>,
    },
    Hold {
        requirement: Box<Requirement>,
        policies: Vec<PolicyRef>,
    },
}

/// The host-call policies of one kind (`http:send`, …): its `forbid`s,
/// plus a `permit` of everything (the grants already allowed the call;
/// policies can only narrow that).
struct HostSlice {
    action: EntityUid,
    set: PolicySet,
    rules: HashMap<String, Arc<Rule>>,
    reads: Reads,
}

/// Stack for one host-call decision (see [`HostPolicies::decide`]), and
/// how much must be left to decide on the current one.
const HOST_DECISION_STACK: usize = 1 << 20;
const HOST_DECISION_RED_ZONE: usize = 256 << 10;

/// The id of the permit standing for the grants in host-call slices.
const GRANTS: &str = "grants";

/// Host-call policies for one invocation's caller: the entities built once.
pub struct HostPolicies {
    tool: Arc<ToolPolicy>,
    principal: EntityUid,
    entities: Entities,
}

impl std::fmt::Debug for HostPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostPolicies").field("tool", &self.tool.name).finish()
    }
}

impl ToolPolicy {
    fn host_slices(rules: &[Arc<Rule>]) -> Result<HashMap<&'static str, HostSlice>, String> {
        let root = uid("Action", schema::HOST_CALL)?;
        let mut out = HashMap::new();
        for (kind, resource_type) in schema::HOST_CALL_KINDS {
            let action = uid("Action", kind)?;
            let scope = [action.clone(), root.clone()];
            let mut set = PolicySet::new();
            let mut by_id = HashMap::new();
            let mut reads = Reads::default();
            for r in rules {
                if !action_may_match(&r.policy.action_constraint(), &scope) {
                    continue;
                }
                let resource_ok = match r.policy.resource_constraint() {
                    ResourceConstraint::Any => true,
                    ResourceConstraint::Is(t) => t.to_string() == resource_type,
                    // Host-call resources are made per call: no policy can
                    // name one.
                    _ => false,
                };
                if !resource_ok {
                    continue;
                }
                if !r.forbid {
                    if r.gate.is_some() && !matches!(r.policy.action_constraint(), ActionConstraint::Any) {
                        return Err(format!(
                            "policy {}: @approval on a permit of a host call means nothing (host-call policies only narrow what grants allow); write a forbid with @approval",
                            r.reference
                        ));
                    }
                    continue;
                }
                set.add(r.policy.clone()).map_err(|e| e.to_string())?;
                reads.merge(&Reads::of(&r.policy));
                by_id.insert(r.reference.id.clone(), r.clone());
            }
            if by_id.is_empty() {
                continue;
            }
            let grants: cedar_policy::Policy = format!("@id(\"{GRANTS}\") permit(principal, action, resource);")
                .parse()
                .map_err(|e: cedar_policy::ParseErrors| e.to_string())?;
            set.add(grants.new_id(cedar_policy::PolicyId::new(GRANTS)))
                .map_err(|e| e.to_string())?;
            out.insert(
                kind,
                HostSlice {
                    action,
                    set,
                    rules: by_id,
                    reads,
                },
            );
        }
        Ok(out)
    }

    /// Whether any policy can object to a host call of this action.
    pub fn has_host_policies(&self) -> bool {
        !self.host.is_empty()
    }

    /// The host-call policies for `caller`'s invocation (`None` when there
    /// are none).
    pub fn host_for(self: &Arc<Self>, caller: &Caller) -> Option<Result<HostPolicies, String>> {
        if self.host.is_empty() {
            return None;
        }
        Some((|| {
            let (principal, entities) = principal_entity(caller)?;
            let entities = self
                .base
                .clone()
                .add_entities(entities, None)
                .map_err(|e| format!("policy entities: {e}"))?;
            Ok(HostPolicies {
                tool: self.clone(),
                principal,
                entities,
            })
        })())
    }
}

impl HostPolicies {
    /// Decide one host call. Never errs: whatever goes wrong denies it.
    ///
    /// Host calls run on wasmtime's fiber stacks, where Cedar's stack
    /// check (which reads the thread's stack bounds) cannot tell how much
    /// stack is left: each decision runs on a stack segment of its own.
    pub fn decide(&self, target: HostTarget<'_>, function: &str, now: u64) -> HostVerdict {
        match stacker::maybe_grow(HOST_DECISION_RED_ZONE, HOST_DECISION_STACK, || {
            self.try_decide(target, function, now)
        }) {
            Ok(v) => v,
            Err(reason) => HostVerdict::Deny {
                reason,
                policies: Vec::new(),
            },
        }
    }

    fn try_decide(&self, target: HostTarget<'_>, function: &str, now: u64) -> Result<HostVerdict, String> {
        let tool = &self.tool;
        let Some(slice) = tool.host.get(target.kind()) else {
            return Ok(HostVerdict::Pass);
        };
        let string = |s: &str| RestrictedExpression::new_string(s.to_string());
        let mut attrs = HashMap::from([(
            "tool".to_string(),
            RestrictedExpression::new_entity_uid(tool.tool.clone()),
        )]);
        let (ty, id) = match target {
            HostTarget::Http { method, url } => {
                let origin = crate::outbound::destination::Origin::of(url)?;
                attrs.insert("method".into(), string(&method.to_ascii_uppercase()));
                attrs.insert("scheme".into(), string(origin.scheme.as_str()));
                attrs.insert("host".into(), string(&origin.host));
                attrs.insert("port".into(), RestrictedExpression::new_long(i64::from(origin.port)));
                attrs.insert("origin".into(), string(&origin.to_string()));
                attrs.insert(
                    "path".into(),
                    string(&crate::policy::approval::normalized_http_path(url.path())),
                );
                attrs.insert(
                    "path_ambiguous".into(),
                    RestrictedExpression::new_bool(crate::outbound::policy::ambiguous_path(url.path()).is_some()),
                );
                ("HttpRequest", "call")
            }
            HostTarget::File { path, .. } => {
                // A path that cannot be told has no `path`: a policy that
                // reads it errs, and so denies (fail closed), unless it
                // tests `resource.known` first.
                if let Some(p) = path {
                    attrs.insert("path".into(), string(p));
                }
                attrs.insert("known".into(), RestrictedExpression::new_bool(path.is_some()));
                ("File", "call")
            }
        };
        let resource = uid(ty, id)?;
        let entity = Entity::new(resource.clone(), attrs, HashSet::new()).map_err(|e| e.to_string())?;
        let entities = self
            .entities
            .clone()
            .add_entities([entity], None)
            .map_err(|e| format!("policy entities: {e}"))?;
        let mut pairs = vec![("function".to_string(), string(function))];
        if slice.reads.now {
            let now = context::Now::at(now, tool.offset);
            pairs.push(("now".into(), now.record(slice.reads.now_datetime)?));
        }
        let context = Context::from_pairs(pairs).map_err(|e| e.to_string())?;
        let request = Request::new(self.principal.clone(), slice.action.clone(), resource, context, None)
            .map_err(|e| e.to_string())?;
        let response = Authorizer::new().is_authorized(&request, &slice.set, &entities);
        #[allow(unreachable_patterns)]
        if let Some(e) = response.diagnostics().errors().next() {
            let id = match e {
                cedar_policy::AuthorizationError::PolicyEvaluationError(p) => p.policy_id().to_string(),
                _ => "?".to_string(),
            };
            let rule = slice.rules.get(&id);
            return Ok(HostVerdict::Deny {
                reason: format!(
                    "policy {} could not be evaluated: {}",
                    rule.map_or(id.clone(), |r| r.reference.to_string()),
                    source::one_line(&e.to_string())
                ),
                policies: rule.map(|r| r.reference.clone()).into_iter().collect(),
            });
        }
        if response.decision() == Decision::Allow {
            return Ok(HostVerdict::Pass);
        }
        let mut deciding: Vec<Arc<Rule>> = response
            .diagnostics()
            .reason()
            .filter_map(|id| slice.rules.get(&id.to_string()).cloned())
            .collect();
        deciding.sort_by(|a, b| a.reference.id.cmp(&b.reference.id));
        let policies: Vec<PolicyRef> = deciding.iter().map(|r| r.reference.clone()).collect();
        if let Some(hard) = deciding.iter().find(|r| r.gate.is_none()) {
            return Ok(HostVerdict::Deny {
                reason: hard
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("forbidden by policy {}", hard.reference.id)),
                policies: deciding
                    .iter()
                    .filter(|r| r.gate.is_none())
                    .map(|r| r.reference.clone())
                    .collect(),
            });
        }
        let requirement = tool
            .requirement(deciding.iter(), std::iter::empty(), tool.wait)
            .ok_or_else(|| "a host-call gate without a requirement (a bug)".to_string())?;
        Ok(HostVerdict::Hold {
            requirement: Box::new(requirement),
            policies,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built from parts, an entity is the one its quoted text parses to.
    #[test]
    fn entities_built_from_parts_are_the_parsed_ones() {
        for ty in ["Identity", "Role", "Tool", "Action", "HttpRequest", "File"] {
            for id in [
                "bot",
                "",
                "a\"b",
                "back\\slash",
                "line\nbreak",
                "tab\t\0nul",
                "\u{1b}[31m",
                "ünï 🚀",
                "a::b",
            ] {
                let parsed: EntityUid = format!("{ty}::{}", quote(id)).parse().unwrap();
                assert_eq!(uid(ty, id).unwrap(), parsed, "{ty} {id:?}");
            }
        }
        assert!(uid("Not A Type", "x").is_err());
    }
}
