//! `airlock invocations`: invocations that went through approval, and how
//! a submitted invocation is reported.

use super::{ConfigAuth, escape};
use airlock::Error;
use airlock::gateway::Submitted;
use airlock::store::{InvocationRecord, InvocationStatus};
use clap::Subcommand;
use std::io::Write as _;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum InvocationsCommand {
    /// List invocations that went through approval, newest first.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ctx: ConfigAuth,
    },
    /// Show one invocation: its state and, once it ran, its outcome.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ctx: ConfigAuth,
    },
}

pub async fn invocations_cmd(cmd: InvocationsCommand) -> Result<ExitCode, Error> {
    match cmd {
        InvocationsCommand::List { json, ctx } => {
            let runtime = ctx.runtime(None)?;
            ctx.auth.caller(&runtime)?;
            runtime.sweep_approvals().await?;
            let list = runtime.store()?.invocations(None, 1000)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list).map_err(Error::internal)?);
            } else {
                println!(
                    "{:<32}  {:<17} {:<24} {:<24} {:<20}",
                    "ID", "STATE", "ACTION", "CALLER", "CREATED (UTC)"
                );
                for i in list {
                    println!(
                        "{:<32}  {:<17} {:<24} {:<24} {:<20}",
                        i.id,
                        i.state,
                        escape(&format!("{}#{}", i.action, i.function)),
                        escape(&i.caller.name),
                        airlock::time::display_secs(i.created_at / 1_000_000)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        InvocationsCommand::Show { id, json, ctx } => {
            let runtime = ctx.runtime(None)?;
            ctx.auth.caller(&runtime)?;
            runtime.sweep_approvals().await?;
            let record = runtime.invocation(&id)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&record).map_err(Error::internal)?);
                return Ok(ExitCode::SUCCESS);
            }
            print_record(&record)
        }
    }
}

/// Print a stored invocation the way `invoke` prints a fresh one: the
/// result on stdout, or the error and its exit code.
pub fn print_record(record: &InvocationRecord) -> Result<ExitCode, Error> {
    eprintln!(
        "invocation {} of {}#{} by {}: {}",
        record.id,
        record.action,
        escape(&record.function),
        escape(&record.caller.name),
        record.state
    );
    match (&record.outcome, record.state) {
        (Some(o), _) if o.exit_code == 0 => {
            let value = o.result.clone().unwrap_or(serde_json::Value::Null);
            println!("{}", serde_json::to_string_pretty(&value).map_err(Error::internal)?);
            Ok(ExitCode::SUCCESS)
        }
        (Some(o), _) => {
            eprintln!("error: {}", escape(o.error.as_deref().unwrap_or("failed")));
            Ok(ExitCode::from(u8::try_from(o.exit_code).unwrap_or(5)))
        }
        (None, InvocationStatus::AwaitingApproval | InvocationStatus::Approved | InvocationStatus::Running) => {
            Ok(ExitCode::from(7))
        }
        (None, _) => Ok(ExitCode::from(5)),
    }
}

/// Print what became of a submitted request; returns the exit code.
pub fn print_submitted(submitted: Submitted, quiet: bool) -> Result<ExitCode, Error> {
    match submitted {
        Submitted::Ran(report) => {
            if !quiet {
                super::echo_observations(&report);
            }
            let value = report.outcome?;
            let text = serde_json::to_string_pretty(&value).map_err(Error::internal)?;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            Ok(ExitCode::SUCCESS)
        }
        Submitted::Done(record) => print_record(&record),
        Submitted::Pending { invocation, approval } => {
            let line = serde_json::json!({
                "status": "pending-approval",
                "invocation": invocation,
                "approval": approval.id,
                "binding": approval.binding,
                "expires-at": airlock::time::rfc3339_micros(approval.expires_at),
            });
            println!("{line}");
            Err(Error::PendingApproval {
                approval: approval.id,
                invocation,
            })
        }
    }
}
