//! The `airlock` command line: the commands and their arguments, parsed
//! here and handed to `cli`, one module per command group. See the README
//! for exit codes.

mod cli;

// Every invocation and host call allocates small, short-lived records that
// the audit writer thread frees: glibc's allocator contends on that
// cross-thread traffic; mimalloc does not (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use airlock::Error;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use cli::{AuditCommand, InvokeArgs, SecretCommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "airlock",
    version,
    about = "Run AI agents' actions as governed WebAssembly components"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a component's capability manifest without running it.
    Inspect {
        component: PathBuf,
        /// Print the stable JSON form (format `airlock.manifest/v1`).
        #[arg(long)]
        json: bool,
    },
    /// Scaffold a new action crate (WIT, code, a test, a config to try it).
    New(cli::NewArgs),
    /// Print a shell completion script (`airlock completions bash >
    /// /etc/bash_completion.d/airlock`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or with --out DIR write airlock.1 and a
    /// page per command (airlock-serve.1, ...) there.
    Man {
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// What a new version of a component changes: imports, functions, and
    /// (with --config and --action) the grants it would use.
    Diff(cli::DiffArgs),
    /// Make an ed25519 key pair for signing components.
    Keygen(cli::KeygenArgs),
    /// Sign a component (the signature is embedded; see `verify`).
    Sign(cli::SignArgs),
    /// Check a component's signature against trusted public keys.
    Verify(cli::VerifyArgs),
    /// Validate a config and print each action's effective capability set.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Invoke an action (with --config) or a component file (ad hoc).
    Invoke(InvokeArgs),
    /// Manage the secrets in the vault (values are read from stdin, never
    /// from arguments).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Read, verify and export the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Create, list and revoke identity tokens.
    #[command(subcommand)]
    Token(cli::TokenCommand),
    /// Review approval requests: list, show, approve, deny.
    #[command(subcommand)]
    Approvals(cli::ApprovalsCommand),
    /// Invocations that went through approval: their state and outcome.
    #[command(subcommand)]
    Invocations(cli::InvocationsCommand),
    /// The shared PostgreSQL database's schema: `migrate`, `status`.
    #[command(subcommand)]
    Db(cli::DbCommand),
    /// Policies as code (Cedar): `schema` prints what they can name.
    #[command(subcommand)]
    Policy(cli::PolicyCommand),
    /// Serve MCP over stdio for one agent (its token from --token-file or
    /// AIRLOCK_TOKEN_FILE / AIRLOCK_TOKEN).
    Mcp {
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        auth: cli::Auth,
        #[arg(long, env = "AIRLOCK_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Run the service: the HTTP API on loopback (see `[service]`).
    Serve {
        #[arg(long)]
        config: PathBuf,
        /// Listen here instead of `service.listen` (IP:PORT; port 0 picks one).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        #[arg(long, env = "AIRLOCK_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// This node's name among the nodes sharing a PostgreSQL store
        /// [default: the host name]. Unique per node.
        #[arg(long, env = "AIRLOCK_NODE_ID")]
        node_id: Option<String>,
    },
}

fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return usage_error(e),
    };
    // Log lines on stderr (`AIRLOCK_LOG`, `AIRLOCK_LOG_FORMAT`), and for
    // the commands that run actions the OpenTelemetry export the `OTEL_*`
    // variables ask for; the guard sends the last spans when `main` returns.
    let runs_actions = matches!(matches.subcommand_name(), Some("serve" | "mcp" | "invoke"));
    let _telemetry = match airlock::telemetry::init(runs_actions) {
        Ok(guard) => guard,
        Err(e) => return fail(&Error::Usage(e)),
    };
    // A service's errors go to remote callers: no paths in its hints.
    if !matches!(matches.subcommand_name(), Some("serve" | "mcp")) {
        remember_place(&matches);
    }
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&Error::Internal(format!("cannot start async runtime: {e}"))),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Inspect { component, json } => cli::inspect(component, json),
            Command::Check { config } => cli::check(config),
            Command::Diff(a) => cli::diff(a),
            Command::New(a) => cli::new(a),
            Command::Completions { shell } => cli::completions(shell, Cli::command()),
            Command::Man { out } => cli::man_pages(Cli::command(), out.as_deref()),
            Command::Keygen(a) => cli::keygen(a),
            Command::Sign(a) => cli::sign(a),
            Command::Verify(a) => cli::verify(a),
            Command::Invoke(args) => cli::invoke(args).await,
            Command::Secret(cmd) => cli::secret(cmd),
            Command::Audit(cmd) => cli::audit_cmd(cmd).await,
            Command::Token(cmd) => cli::token_cmd(cmd),
            Command::Db(cmd) => cli::db_cmd(cmd),
            Command::Policy(cmd) => cli::policy_cmd(cmd),
            Command::Approvals(cmd) => cli::approvals_cmd(cmd).await,
            Command::Invocations(cmd) => cli::invocations_cmd(cmd).await,
            Command::Serve {
                config,
                listen,
                data_dir,
                node_id,
            } => cli::serve(config, listen, data_dir, node_id).await,
            Command::Mcp { config, auth, data_dir } => cli::mcp(config, auth, data_dir).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

/// Record the `--config`, `--data-dir` and `--token-file` this command was
/// given, so every hint it prints names the same place (see `hint`).
fn remember_place(matches: &clap::ArgMatches) {
    let mut config = None;
    let mut data_dir = None;
    let mut token_file = None;
    let mut m = matches;
    loop {
        let path = |id: &str| m.try_get_one::<PathBuf>(id).ok().flatten().cloned();
        config = config.or_else(|| path("config"));
        data_dir = data_dir.or_else(|| path("data_dir"));
        token_file = token_file.or_else(|| path("token_file"));
        match m.subcommand() {
            Some((_, sub)) => m = sub,
            None => break,
        }
    }
    airlock::hint::remember(config.as_deref(), data_dir.as_deref(), token_file.as_deref());
}

/// Print a usage error. For `airlock secret`, clap's message would quote
/// the offending argument, which may be a secret typed by mistake (`secret
/// set NAME VALUE`), so the arguments are not echoed.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let is_secret = std::env::args_os().nth(1).is_some_and(|a| a == "secret");
    if !is_secret
        || matches!(
            e.kind(),
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        )
    {
        e.exit();
    }
    eprintln!(
        "error: invalid `airlock secret` arguments (not repeated here in case one is a secret value)\n\
         usage: airlock secret set NAME [--config FILE | --data-dir DIR]   the value is read from stdin, never from arguments\n\
         \x20      airlock secret list [--json] [--config FILE | --data-dir DIR]\n\
         \x20      airlock secret rm NAME [--config FILE | --data-dir DIR]\n\
         example: printf %s \"$TOKEN\" | airlock secret set tickets-token --config airlock.toml"
    );
    ExitCode::from(2)
}

/// Print `e` and exit with its code (see the README's exit codes).
fn fail(e: &Error) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(e.exit_code() as u8)
}
