//! `airlock token`, `airlock approvals` and `airlock invocations`: the
//! identity and approval commands, and the gated path of `airlock invoke`.

use airlock::Error;
use airlock::gateway::{Decided, Submitted};
use airlock::identity::{self, Caller, IdentityKind, token};
use airlock::policy::Policy;
use airlock::runtime::Runtime;
use airlock::store::{ApprovalRecord, ApprovalState, InvocationRecord, InvocationStatus, Verdict};
use clap::Subcommand;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use zeroize::Zeroizing;

mod audit_pg;
mod db;
mod diff;
mod new;
pub use new::{NewArgs, new};
mod policy;
mod sign;
pub use audit_pg::{PgPlace, audit_pg_show, audit_pg_tail, audit_pg_verify};
pub use db::{DbCommand, db_cmd};
pub use diff::{DiffArgs, diff};
pub use policy::{PolicyCommand, policy_cmd};
pub use sign::{KeygenArgs, SignArgs, VerifyArgs, keygen, sign, verify};

/// Who is calling: `--token-file FILE`, else `AIRLOCK_TOKEN`, else the
/// local operator. Tokens never come from argv, where any user of the
/// machine can read them.
#[derive(clap::Args, Clone)]
pub struct Auth {
    /// A file holding your airlock token (also `AIRLOCK_TOKEN_FILE`; or put
    /// the token itself in `AIRLOCK_TOKEN`).
    #[arg(long, env = "AIRLOCK_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl Auth {
    fn bearer(&self) -> Result<Option<Zeroizing<String>>, Error> {
        if let Some(path) = &self.token_file {
            return token::read_file(path).map(Some).map_err(Error::Unauthenticated);
        }
        match std::env::var("AIRLOCK_TOKEN") {
            Ok(t) if !t.trim().is_empty() => Ok(Some(Zeroizing::new(t.trim().to_string()))),
            _ => Ok(None),
        }
    }

    /// The authenticated caller, or the local operator without a token.
    pub fn caller(&self, runtime: &Runtime) -> Result<Caller, Error> {
        match self.bearer()? {
            Some(bearer) => identity::authenticate(runtime.store()?.as_ref(), &bearer),
            None => Ok(Caller::local()),
        }
    }

    /// The token itself, for a long session (MCP over stdio).
    pub fn required_bearer(&self) -> Result<Zeroizing<String>, Error> {
        self.bearer()?.ok_or_else(|| {
            Error::Unauthenticated(
                "an agent token is required: pass --token-file FILE (or set AIRLOCK_TOKEN_FILE / AIRLOCK_TOKEN)".into(),
            )
        })
    }

    /// The authenticated caller; a token is required.
    fn token_caller(&self, runtime: &Runtime, what: &str) -> Result<Caller, Error> {
        match self.bearer()? {
            Some(bearer) => identity::authenticate(runtime.store()?.as_ref(), &bearer),
            None => Err(Error::Unauthenticated(format!(
                "{what} needs a reviewer token: pass --token-file FILE (or set AIRLOCK_TOKEN_FILE / AIRLOCK_TOKEN)"
            ))),
        }
    }
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token for an identity (created on first use) and print it
    /// once; only its hash is stored.
    Create {
        #[arg(long)]
        identity: String,
        /// A role the token carries (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// `agent` (never approves unless the config names it in
        /// `access.agent-approvers`) or `human`.
        #[arg(long, default_value = "agent")]
        kind: String,
        /// Write the token to this file (created 0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        place: super::DataPlace,
    },
    /// List tokens (ids, identities, roles; never values).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        place: super::DataPlace,
    },
    /// Revoke a token by id; it stops working at once.
    Revoke {
        id: String,
        #[command(flatten)]
        place: super::DataPlace,
    },
}

fn store_at(place: &super::DataPlace) -> Result<std::sync::Arc<dyn airlock::store::Store>, Error> {
    place.store()
}

pub fn token_cmd(cmd: TokenCommand) -> Result<ExitCode, Error> {
    match cmd {
        TokenCommand::Create {
            identity,
            roles,
            kind,
            out,
            place,
        } => {
            let kind = IdentityKind::parse(&kind).map_err(Error::Usage)?;
            let store = store_at(&place)?;
            let (minted, record) = identity::create_token(store.as_ref(), &identity, kind, &roles)?;
            match out {
                Some(path) => write_private(&path, &minted.value)?,
                None => {
                    let mut stdout = std::io::stdout().lock();
                    let _ = writeln!(stdout, "{}", minted.value.as_str());
                }
            }
            eprintln!(
                "created token {} for {} {} (roles: {}); it is shown only once",
                record.id,
                kind,
                record.identity,
                if record.roles.is_empty() {
                    "none".into()
                } else {
                    record.roles.join(", ")
                }
            );
        }
        TokenCommand::List { json, place } => {
            let tokens = store_at(&place)?.tokens()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens).map_err(Error::internal)?);
            } else {
                println!(
                    "{:<16}  {:<24} {:<6} {:<24} {:<20} STATUS",
                    "ID", "IDENTITY", "KIND", "ROLES", "CREATED (UTC)"
                );
                for t in tokens {
                    println!(
                        "{:<16}  {:<24} {:<6} {:<24} {:<20} {}",
                        t.id,
                        t.identity,
                        t.kind,
                        t.roles.join(","),
                        airlock::time::display_secs(t.created_at / 1_000_000),
                        match t.revoked_at {
                            Some(at) => format!("revoked {}", airlock::time::display_secs(at / 1_000_000)),
                            None => "active".into(),
                        }
                    );
                }
            }
        }
        TokenCommand::Revoke { id, place } => {
            if !store_at(&place)?.revoke_token(&id, airlock::time::now_micros())? {
                return Err(Error::Usage(format!(
                    "no token {id}; see `{}`",
                    airlock::hint::command("token list")
                )));
            }
            eprintln!("revoked token {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Write `text` to a new file readable only by the current user.
fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Usage(format!("cannot create {}: {e} (it must not exist yet)", path.display())))?;
    writeln!(file, "{text}").map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))
}

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

/// The config (for actions, access rules and the data directory) and the
/// caller's token.
#[derive(clap::Args)]
pub struct ConfigAuth {
    #[arg(long)]
    config: PathBuf,
    #[arg(long, env = "AIRLOCK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    auth: Auth,
}

impl ConfigAuth {
    /// A runtime over the config with its approval service open; loads
    /// only `action` when given (else every action that loads).
    fn runtime(&self, action: Option<&str>) -> Result<Runtime, Error> {
        let mut policy = Policy::load(&self.config)?;
        if let Some(dir) = &self.data_dir {
            policy.runtime.data_dir = dir.clone();
        }
        let mut runtime = Runtime::new(&policy.runtime)?;
        runtime.approvals()?;
        match action {
            Some(name) => {
                let a = policy.actions.get(name).cloned().ok_or_else(|| {
                    Error::Usage(format!(
                        "action `{name}` is not in {}; decide with the config that defines it",
                        self.config.display()
                    ))
                })?;
                runtime.prepare(a)?;
                runtime.check_policies_of(&policy)?;
            }
            None => {
                for (name, loaded) in runtime.load_all(&policy) {
                    if let Err(e) = loaded {
                        tracing::warn!("action {name} not loaded: {e}");
                    }
                }
            }
        }
        Ok(runtime)
    }
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
                    super::escape(&who.name)
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
                        super::escape(&format!("{}#{}", a.action, a.function)),
                        super::escape(&a.caller),
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
                        super::escape(&id),
                        super::escape(&who.name),
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
            .map(|r| format!(": {}", super::escape(r)))
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
    let e = super::escape;
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
                        super::escape(&format!("{}#{}", i.action, i.function)),
                        super::escape(&i.caller.name),
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
        super::escape(&record.function),
        super::escape(&record.caller.name),
        record.state
    );
    match (&record.outcome, record.state) {
        (Some(o), _) if o.exit_code == 0 => {
            let value = o.result.clone().unwrap_or(serde_json::Value::Null);
            println!("{}", serde_json::to_string_pretty(&value).map_err(Error::internal)?);
            Ok(ExitCode::SUCCESS)
        }
        (Some(o), _) => {
            eprintln!("error: {}", super::escape(o.error.as_deref().unwrap_or("failed")));
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

/// `airlock serve`: load every action, listen, and serve until Ctrl-C or
/// SIGTERM. Prints `listening on ADDR` on stdout once ready.
pub async fn serve(
    config: PathBuf,
    listen: Option<std::net::SocketAddr>,
    data_dir: Option<PathBuf>,
) -> Result<ExitCode, Error> {
    let mut policy = Policy::load(&config)?;
    if let Some(dir) = data_dir {
        policy.runtime.data_dir = dir;
    }
    if let Some(addr) = listen {
        policy.service.listen = addr;
    }
    let addr = policy.service.listen;
    let service = std::sync::Arc::new(airlock::service::Service::load(policy)?);
    service.runtime.sweep_approvals().await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Usage(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().map_err(Error::internal)?;
    airlock::cluster::set_address(&local.to_string());
    if !local.ip().is_loopback() {
        eprintln!("warning: listening on {local}, which is not loopback; put TLS in front of it");
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{local}");
        let _ = out.flush();
    }
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    };
    airlock::service::serve(service.clone(), listener, shutdown).await?;
    // Hand back what this node holds: its waiting requests fail with a
    // reason, and the other nodes take over its leftovers at once.
    if let Some(approvals) = service.runtime.approvals_opened() {
        match approvals.leave().await {
            Ok(failed) if !failed.is_empty() => {
                eprintln!(
                    "airlock serve: failed {} request(s) whose instances stop here",
                    failed.len()
                );
            }
            Ok(_) => {}
            Err(e) => eprintln!("airlock serve: could not hand back held work: {e}"),
        }
    }
    eprintln!("airlock serve: stopped");
    Ok(ExitCode::SUCCESS)
}

/// `airlock mcp`: MCP over stdio for one agent. Logs go to stderr; stdout
/// carries only the protocol.
pub async fn mcp(config: PathBuf, auth: Auth, data_dir: Option<PathBuf>) -> Result<ExitCode, Error> {
    let mut policy = Policy::load(&config)?;
    if let Some(dir) = data_dir {
        policy.runtime.data_dir = dir;
    }
    let token = auth.required_bearer()?;
    let service = std::sync::Arc::new(airlock::service::Service::load(policy)?);
    let sweeper = airlock::service::spawn_sweeper(service.clone());
    let served = airlock::service::mcp::serve_stdio(service, token).await;
    sweeper.abort();
    served?;
    Ok(ExitCode::SUCCESS)
}
