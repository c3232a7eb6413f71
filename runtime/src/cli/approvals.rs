//! `airlock approvals`: list, show, approve and deny approval requests.

use super::{ConfigAuth, escape};
use airlock::Error;
use airlock::gateway::{Decided, Submitted};
use airlock::policy::Policy;
use airlock::store::{ApprovalRecord, ApprovalState, Verdict};
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ApprovalsCommand {
    /// List the approval requests your token may see: those you may
    /// approve and those you made (pending ones unless --all).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ctx: ConfigAuth,
    },
    /// Show exactly what a request would release (to its approvers and its
    /// requester).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ctx: ConfigAuth,
    },
    /// Approve a request (needs a token of an approver for its action).
    Approve {
        id: String,
        /// Refuse unless the request is bound to this digest (the `binding`
        /// that `show` prints): approve exactly what you reviewed.
        #[arg(long)]
        binding: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        ctx: ConfigAuth,
    },
    /// Deny a request; any deny ends it.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        ctx: ConfigAuth,
    },
}

pub async fn approvals_cmd(cmd: ApprovalsCommand) -> Result<ExitCode, Error> {
    match cmd {
        ApprovalsCommand::List { all, json, ctx } => {
            let runtime = ctx.runtime(None)?;
            let who = ctx.auth.token_caller(&runtime, "listing approval requests")?;
            runtime.sweep_approvals().await?;
            let store = runtime.store()?;
            let list: Vec<ApprovalRecord> = store
                .approvals((!all).then_some(ApprovalState::Pending), 1000)?
                .into_iter()
                .filter(|a| runtime.may_see_approval(&who, a))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&list).map_err(Error::internal)?);
            } else if list.is_empty() {
                eprintln!(
                    "no {}approval requests that {} may see",
                    if all { "" } else { "pending " },
                    escape(&who.name)
                );
            } else {
                println!(
                    "{:<12}  {:<10} {:<9} {:<20} {:<24} {:<20} {:>6}",
                    "ID", "KIND", "STATE", "ACTION", "CALLER", "EXPIRES (UTC)", "VOTES"
                );
                for a in list {
                    println!(
                        "{:<12}  {:<10} {:<9} {:<20} {:<24} {:<20} {:>6}",
                        a.id,
                        a.kind,
                        a.state,
                        escape(&format!("{}#{}", a.action, a.function)),
                        escape(&a.caller),
                        airlock::time::display_secs(a.expires_at / 1_000_000),
                        format!("{}/{}", a.approvals(), a.quorum)
                    );
                }
            }
        }
        ApprovalsCommand::Show { id, json, ctx } => {
            let runtime = ctx.runtime(None)?;
            let who = ctx.auth.token_caller(&runtime, "showing an approval request")?;
            runtime.sweep_approvals().await?;
            // Like the HTTP API, a request the token may not see is not
            // told apart from one that does not exist.
            let approval = runtime
                .store()?
                .approval(&id)?
                .filter(|a| runtime.may_see_approval(&who, a))
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "no approval request {} that {} may see (a request is shown to its requester and to those who may approve it); see `{}`",
                        escape(&id),
                        escape(&who.name),
                        airlock::hint::command_as_caller("approvals list")
                    ))
                })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&approval).map_err(Error::internal)?);
            } else {
                print_approval(&approval);
            }
        }
        ApprovalsCommand::Approve {
            id,
            binding,
            reason,
            ctx,
        } => {
            let action = approval_action(&ctx, &id)?;
            let runtime = ctx.runtime(Some(&action))?;
            let who = ctx.auth.token_caller(&runtime, "approving")?;
            let decided = runtime
                .decide(&id, &who, Verdict::Approve, reason.as_deref(), binding.as_deref())
                .await?;
            return report_decision(&decided);
        }
        ApprovalsCommand::Deny { id, reason, ctx } => {
            let action = approval_action(&ctx, &id)?;
            let runtime = ctx.runtime(Some(&action))?;
            let who = ctx.auth.token_caller(&runtime, "denying")?;
            let decided = runtime.decide(&id, &who, Verdict::Deny, Some(&reason), None).await?;
            return report_decision(&decided);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The action a request is for (read before loading the config's actions,
/// so deciding loads only that one).
fn approval_action(ctx: &ConfigAuth, id: &str) -> Result<String, Error> {
    let mut policy = Policy::load(&ctx.config)?;
    if let Some(dir) = &ctx.data_dir {
        policy.runtime.data_dir = dir.clone();
    }
    let store = airlock::store::open(&policy.runtime.store, &policy.runtime.data_dir).map_err(Error::from)?;
    store.approval(id)?.map(|a| a.action).ok_or_else(|| {
        Error::Usage(format!(
            "no approval request {id}; see `{}`",
            airlock::hint::command_as_caller("approvals list")
        ))
    })
}

fn report_decision(decided: &Decided) -> Result<ExitCode, Error> {
    let a = &decided.approval;
    eprintln!(
        "request {} is {} ({}/{} approvals){}",
        a.id,
        a.state,
        a.approvals(),
        a.quorum,
        a.reason
            .as_deref()
            .map(|r| format!(": {}", escape(r)))
            .unwrap_or_default()
    );
    match &decided.ran {
        None => Ok(ExitCode::SUCCESS),
        Some(Submitted::Ran(report)) => {
            eprintln!("invocation {} ran in this process", report.invocation);
            match &report.outcome {
                Ok(v) => println!("{}", serde_json::to_string_pretty(v).map_err(Error::internal)?),
                Err(e) => eprintln!("invocation {} failed: {e}", report.invocation),
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Submitted::Done(record)) => {
            eprintln!("invocation {} is {}", record.id, record.state);
            Ok(ExitCode::SUCCESS)
        }
        Some(Submitted::Pending { invocation, .. }) => {
            eprintln!("invocation {invocation} is being run by another process");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_approval(a: &ApprovalRecord) {
    let e = escape;
    println!("request      {} ({} approval)", a.id, a.kind);
    println!(
        "state        {}{}",
        a.state,
        a.reason.as_deref().map(|r| format!(": {}", e(r))).unwrap_or_default()
    );
    println!("caller       {} ({})", e(&a.caller), a.caller_kind);
    println!("action       {} (runs as {})", a.action, a.service_identity);
    println!("function     {}", e(&a.function));
    println!("arguments    {}", e(&a.args.to_string()));
    println!("component    {}", a.component_digest);
    if a.capabilities.is_empty() {
        println!("capabilities none (the inert baseline only)");
    } else {
        println!("capabilities");
        for c in &a.capabilities {
            println!("  - {}", e(c));
        }
    }
    println!("rule         {}", e(&a.rule));
    if let Some(reason) = a.intent.as_ref().and_then(|i| i.reason.as_ref()) {
        println!("stated       {}", e(reason));
    }
    if let Some(tp) = a.intent.as_ref().and_then(|i| i.traceparent.as_ref()) {
        println!("trace        {}", e(tp));
    }
    if let Some(why) = &a.why {
        println!("why          {}", e(why));
    }
    if !a.policies.is_empty() {
        println!("policies     {}", e(&a.policies.join(", ")));
    }
    if let Some(group) = &a.group {
        println!("group        {}", e(group));
    }
    if !a.subject.is_null() {
        println!("what         {}", e(&a.subject.to_string()));
    }
    println!("invocation   {}", a.invocation);
    println!("binding      {}", a.binding);
    println!("config       {}", a.config_version);
    println!(
        "quorum       {} of: {}",
        a.quorum,
        if a.approvers.is_empty() {
            "nobody".into()
        } else {
            a.approvers.join(", ")
        }
    );
    println!("created      {}", airlock::time::rfc3339_micros(a.created_at));
    println!("expires      {}", airlock::time::rfc3339_micros(a.expires_at));
    for d in &a.decisions {
        println!(
            "decision     {} by {} {} at {}{}",
            d.verdict,
            d.kind,
            d.identity,
            airlock::time::rfc3339_micros(d.at),
            d.reason.as_deref().map(|r| format!(": {}", e(r))).unwrap_or_default()
        );
    }
}
