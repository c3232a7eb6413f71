//! `airlock policy`: the vocabulary policies are written in, and how they
//! decide a request.

use airlock::Error;
use airlock::identity::{Caller, IdentityKind};
use airlock::policy::Policy;
use airlock::policy::engine::{Ask, Outcome};
use airlock::policy::schema::{self, ActionTypes};
use airlock::runtime::Runtime;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Print the Cedar schema of a config's actions, generated from their
    /// components' WIT types: the principals, actions, resources and typed
    /// arguments that policies can name.
    Schema {
        #[arg(long)]
        config: PathBuf,
        /// Cedar's JSON schema format instead of its schema syntax.
        #[arg(long)]
        json: bool,
        /// Print instead the Cedar policies the config's TOML access,
        /// approval and host-call keys stand for.
        #[arg(long, conflicts_with = "json")]
        shorthand: bool,
    },
    /// Show how the policies decide a request, and which policies decide
    /// it, without running anything or writing any record.
    Eval {
        #[arg(long)]
        config: PathBuf,
        /// The action.
        action: String,
        /// The function.
        function: String,
        /// The arguments, a JSON object keyed by parameter names.
        #[arg(long, default_value = "{}")]
        args: String,
        /// Decide for this identity: its kind and roles come from its live
        /// tokens in the store (the roles of all of them together: a real
        /// request carries one token's), unless --kind or --role say
        /// otherwise. Without it, the local operator.
        #[arg(long = "as", value_name = "IDENTITY")]
        identity: Option<String>,
        /// The identity's kind (`agent` or `human`), with --as.
        #[arg(long, requires = "identity")]
        kind: Option<String>,
        /// A role of the identity (repeatable), with --as.
        #[arg(long = "role", requires = "identity")]
        roles: Vec<String>,
        /// Decide as at this time (RFC 3339 UTC or Unix seconds) instead
        /// of now.
        #[arg(long)]
        at: Option<String>,
        /// The reason the agent would state (`context.reason`).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Print the decision as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn policy_cmd(cmd: PolicyCommand) -> Result<ExitCode, Error> {
    match cmd {
        PolicyCommand::Schema {
            config,
            json,
            shorthand,
        } => {
            let policy = Policy::load(&config)?;
            if shorthand {
                for action in policy.actions.values() {
                    println!("// [actions.{}]", action.name);
                    print!("{}", airlock::policy::shorthand::generate(action));
                    print!("{}", airlock::policy::shorthand::host_calls(action));
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut runtime = Runtime::new(&policy.runtime)?;
            let mut loaded = Vec::new();
            for (name, action) in runtime.load_all(&policy) {
                // The schema needs every action's types: one that does not
                // load (as `airlock check` would say) is an error here.
                let action = action.map_err(|e| Error::Config(format!("action {name} did not load: {e}")))?;
                loaded.push((name, action));
            }
            let actions: Vec<ActionTypes<'_>> = loaded
                .iter()
                .map(|(name, a)| ActionTypes::of(name, &a.manifest.functions).with_windows(&a.policy.windows))
                .collect();
            let text = if json {
                let value = schema::schema_json(&actions).map_err(Error::Config)?;
                serde_json::to_string_pretty(&value).map_err(|e| Error::Internal(e.to_string()))?
            } else {
                schema::schema_text(&actions).map_err(Error::Config)?
            };
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Eval {
            config,
            action,
            function,
            args,
            identity,
            kind,
            roles,
            at,
            reason,
            json,
        } => eval(
            &config,
            &action,
            &function,
            &args,
            identity,
            kind,
            roles,
            at.as_deref(),
            reason.as_deref(),
            json,
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn eval(
    config: &std::path::Path,
    action: &str,
    function: &str,
    args: &str,
    identity: Option<String>,
    kind: Option<String>,
    roles: Vec<String>,
    at: Option<&str>,
    reason: Option<&str>,
    json: bool,
) -> Result<ExitCode, Error> {
    let (intent, _) = airlock::invocation::Intent::new(reason, None)?;
    let args: serde_json::Value = serde_json::from_str(args).map_err(|e| Error::ArgsSyntax(e.to_string()))?;
    let policy = Policy::load(config)?;
    let mut runtime = Runtime::new(&policy.runtime)?;
    for (name, loaded) in runtime.load_all(&policy) {
        if let Err(e) = loaded
            && name == action
        {
            return Err(e);
        }
    }
    let prepared = runtime.action(action).cloned().ok_or_else(|| Error::UnknownAction {
        name: action.to_string(),
        available: runtime.action_names().join(", "),
    })?;
    prepared.check_request(function, &args)?;
    let caller = match identity {
        None => Caller::local(),
        Some(name) => caller_named(&runtime, name, kind, roles)?,
    };
    let now = match at {
        Some(t) => airlock::time::parse_utc(t).map_err(Error::Usage)?,
        None => airlock::time::now_micros(),
    };
    // The windows' use, when the policies read it (`context.usage`).
    let usage: Option<Vec<(String, i64)>> = if prepared.decisions.reads_usage(function, &caller) {
        let windows: Vec<_> = prepared.policy.windows.iter().filter(|w| w.applies(function)).collect();
        let slots: Vec<(String, i64)> = windows
            .iter()
            .map(|w| {
                let (key, start, _) = w.slot(action, &caller, now);
                (key, start)
            })
            .collect();
        let used = runtime.store()?.usage(&slots)?;
        Some(windows.iter().zip(used).map(|(w, u)| (w.name.clone(), u)).collect())
    } else {
        None
    };
    let verdict = prepared.decisions.decide(&Ask {
        caller: &caller,
        function,
        args: &args,
        intent: Some(&intent),
        usage: usage.as_deref(),
        now,
    });
    if json {
        let (decision, detail) = match &verdict.outcome {
            Outcome::Allow => ("allow", serde_json::Value::Null),
            Outcome::Deny { reason } => ("deny", serde_json::json!({ "reason": reason })),
            Outcome::Approve(r) => (
                "approval-required",
                serde_json::json!({
                    "group": r.group,
                    "approvers": r.approvers.approvers_text(),
                    "quorum": r.quorum,
                    "ttl-secs": r.ttl.as_secs(),
                    "why": r.why,
                    "policy": r.policy.id,
                }),
            ),
        };
        let out = serde_json::json!({
            "decision": decision,
            "caller": caller.name,
            "detail": detail,
            "policies": verdict.policies.iter().map(|p| serde_json::json!({"id": p.id, "at": p.at})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out).map_err(Error::internal)?);
        return Ok(ExitCode::SUCCESS);
    }
    let decision = match &verdict.outcome {
        Outcome::Allow => "allow".to_string(),
        Outcome::Deny { reason } => format!("deny: {reason}"),
        Outcome::Approve(r) => format!(
            "approval required: group {} ({}), quorum {}, open for {}",
            r.group,
            {
                let list = r.approvers.approvers_text();
                if list.is_empty() {
                    "nobody".to_string()
                } else {
                    list.join(", ")
                }
            },
            r.quorum,
            airlock::policy::engine::duration_text(r.ttl)
        ),
    };
    println!("decision: {decision}");
    if let Outcome::Approve(r) = &verdict.outcome
        && let Some(why) = &r.why
    {
        println!("why: {why}");
    }
    println!(
        "caller: {} ({}{})",
        caller.name,
        caller.kind,
        if caller.roles.is_empty() {
            String::new()
        } else {
            format!("; roles {}", caller.roles.join(", "))
        }
    );
    if verdict.policies.is_empty() {
        println!("policies: none (no policy permits it: deny by default)");
    } else {
        println!("policies:");
        for p in &verdict.policies {
            println!("  {p}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The caller `name` as its live tokens describe it (or as --kind and
/// --role say).
fn caller_named(runtime: &Runtime, name: String, kind: Option<String>, roles: Vec<String>) -> Result<Caller, Error> {
    airlock::identity::validate_name(&name, "identity").map_err(Error::Usage)?;
    let parse_kind = |k: &str| match k {
        "agent" => Ok(IdentityKind::Agent),
        "human" => Ok(IdentityKind::Human),
        other => Err(Error::Usage(format!("--kind {other:?}: use `agent` or `human`"))),
    };
    if kind.is_some() || !roles.is_empty() {
        for r in &roles {
            airlock::identity::validate_name(r, "role").map_err(Error::Usage)?;
        }
        return Ok(Caller {
            name,
            kind: parse_kind(kind.as_deref().unwrap_or("agent"))?,
            roles,
            token_id: Some("policy-eval".into()),
        });
    }
    let tokens: Vec<_> = runtime
        .store()?
        .tokens()?
        .into_iter()
        .filter(|t| t.identity == name && t.revoked_at.is_none())
        .collect();
    let first = tokens.first().ok_or_else(|| {
        Error::Usage(format!(
            "identity `{name}` has no live token in this config's store; say who it is with --kind and --role"
        ))
    })?;
    let mut all_roles: Vec<String> = tokens.iter().flat_map(|t| t.roles.iter().cloned()).collect();
    all_roles.sort();
    all_roles.dedup();
    Ok(Caller {
        name,
        kind: first.kind,
        roles: all_roles,
        token_id: Some(first.id.clone()),
    })
}
