//! The `airlock` command line: inspect components, check configs, invoke
//! actions. See the README for exit codes.

mod cli;

// Every invocation and host call allocates small, short-lived records that
// the audit writer thread frees: glibc's allocator contends on that
// cross-thread traffic; mimalloc does not (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use airlock::Error;
use airlock::capabilities::Grants;
use airlock::capabilities::files::{FilesGrant, Mode};
use airlock::capabilities::log::LogGrant;
use airlock::invocation::Report;
use airlock::policy::{ActionPolicy, LimitOverrides, Policy, RuntimeSettings};
use airlock::runtime::Runtime;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::Write as _;
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

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the whole hash chain and every checkpoint; exit 6 naming the
    /// first bad record.
    Verify {
        /// Also check against a checkpoint exported earlier (`audit checkpoint`).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        #[command(flatten)]
        place: DataPlace,
    },
    /// Print records, optionally filtered.
    Show {
        #[command(flatten)]
        filter: AuditFilter,
        /// One JSON record per line (as stored).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        place: DataPlace,
    },
    /// Print the last records; with -f, keep printing new ones.
    Tail {
        /// How many records to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        place: DataPlace,
    },
    /// Export verified records for a SIEM.
    Export {
        /// Output format (only `jsonl`: one JSON record per line).
        #[arg(long, default_value = "jsonl")]
        format: String,
        #[command(flatten)]
        filter: AuditFilter,
        #[command(flatten)]
        place: DataPlace,
    },
    /// Write a fresh signed checkpoint of the log's head and print it; keep
    /// it elsewhere to detect truncation later.
    Checkpoint {
        /// Also write it to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        place: DataPlace,
    },
}

#[derive(clap::Args)]
struct AuditFilter {
    /// Only this invocation id (a prefix is enough).
    #[arg(long)]
    invocation: Option<String>,
    /// Only invocations of this action.
    #[arg(long)]
    action: Option<String>,
    /// Only invocations by this caller (e.g. `local:alice`).
    #[arg(long)]
    caller: Option<String>,
    /// Records at or after this time (Unix seconds or YYYY-MM-DD[THH:MM[:SS]], UTC).
    #[arg(long)]
    since: Option<String>,
    /// Records before this time.
    #[arg(long)]
    until: Option<String>,
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Store a secret. The value is read from stdin (hidden when stdin is a
    /// terminal); one trailing newline is dropped.
    Set {
        name: String,
        #[command(flatten)]
        place: DataPlace,
    },
    /// List secret names and metadata (never values).
    List {
        #[command(flatten)]
        place: DataPlace,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a secret.
    Rm {
        name: String,
        #[command(flatten)]
        place: DataPlace,
    },
}

/// Which data directory to use.
#[derive(clap::Args)]
pub(crate) struct DataPlace {
    /// Use the data-dir of this config.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The data directory [default: the config's data-dir, else ./.airlock].
    #[arg(long, env = "AIRLOCK_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct InvokeArgs {
    /// Config file; TARGET is then an action name.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Action name (with --config) or path to a component.
    target: String,
    /// Exported function, as listed by `airlock inspect`.
    function: String,
    /// Arguments: a JSON object keyed by the function's parameter names.
    #[arg(long, default_value = "{}")]
    args: String,
    /// Ad hoc only: grant a directory (`PATH` read-write, `PATH:ro` read-only).
    #[arg(long, value_name = "PATH[:ro]")]
    grant_dir: Option<String>,
    /// Ad hoc only: grant the log capability.
    #[arg(long)]
    grant_log: bool,
    /// Ad hoc only: a non-secret value the action reads through
    /// airlock:cap/config (repeatable; grants that capability).
    #[arg(long = "config-value", value_name = "KEY=VALUE")]
    config_value: Vec<String>,
    /// Ad hoc only: wall-clock limit in milliseconds [default: 10000].
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Ad hoc only: linear memory limit in MiB [default: 64].
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Ad hoc only: fuel limit [default: unmetered].
    #[arg(long)]
    fuel: Option<u64>,
    /// Ad hoc only: cap on the result and on each of stdout/stderr, in bytes [default: 1048576].
    #[arg(long)]
    max_output_bytes: Option<u64>,
    /// Where airlock keeps its compile cache [default: the config's data-dir, else ./.airlock].
    #[arg(long, env = "AIRLOCK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Do not echo the action's log lines and captured stdout/stderr.
    #[arg(long, short)]
    quiet: bool,
    /// Invoke N times in this process (each in a fresh instance), printing
    /// one compact JSON line per invocation as soon as it is acknowledged:
    /// `{"invocation": ID, "result": ...}`. Stops at the first failure.
    #[arg(long, value_name = "N")]
    repeat: Option<u64>,
    #[command(flatten)]
    auth: cli::Auth,
    /// With --config, for actions that need approval: wait this long for
    /// the decision (and run at once if approved in time) before reporting
    /// the request pending (exit 7).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    wait_secs: u64,
    /// With --config: run the invocation approval ID released (the request
    /// must be exactly the approved one).
    #[arg(long, value_name = "ID")]
    approval: Option<String>,
    /// Why you ask, in your own words: recorded with the invocation, shown
    /// to reviewers, readable by policies (`context.reason`).
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// The W3C trace this invocation belongs to (`00-<trace>-<span>-<flags>`);
    /// its spans continue it when exported (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    /// Without it, a valid `TRACEPARENT` in the environment is taken (an
    /// invalid one is ignored, as W3C says).
    #[arg(long, value_name = "TRACEPARENT")]
    traceparent: Option<String>,
    /// The W3C `tracestate` that goes with the trace (default: the
    /// `TRACESTATE` variable).
    #[arg(long, value_name = "TRACESTATE")]
    tracestate: Option<String>,
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
            Command::Inspect { component, json } => inspect(component, json),
            Command::Check { config } => check(config),
            Command::Diff(a) => cli::diff(a),
            Command::New(a) => cli::new(a),
            Command::Completions { shell } => {
                // Rendered first: clap_complete panics on a failed write (a
                // closed pipe), which is reported here instead.
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "airlock", &mut script);
                std::io::stdout()
                    .write_all(&script)
                    .map_err(|e| Error::internal(format!("cannot write the completion script: {e}")))?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Man { out } => man_pages(out.as_deref()),
            Command::Keygen(a) => cli::keygen(a),
            Command::Sign(a) => cli::sign(a),
            Command::Verify(a) => cli::verify(a),
            Command::Invoke(args) => {
                let text = args.args.clone();
                invoke(args).await.map_err(|e| match e {
                    Error::Args(mut m) => {
                        m.message = airlock::values::restore_literals(&m.message, &text);
                        Error::Args(m)
                    }
                    other => other,
                })
            }
            Command::Secret(cmd) => secret(cmd),
            Command::Audit(cmd) => audit_cmd(cmd).await,
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
            } => {
                if let Some(id) = &node_id {
                    airlock::cluster::set_node_id(id).map_err(Error::Usage)?;
                    // The same name for this node's audit chain.
                    airlock::audit::settings::set_node_override(id).map_err(Error::Usage)?;
                }
                cli::serve(config, listen, data_dir).await
            }
            Command::Mcp { config, auth, data_dir } => cli::mcp(config, auth, data_dir).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

/// Print a usage error. For `airlock secret`, clap's message would quote
/// the offending argument, which may be a secret typed by mistake (`secret
/// set NAME VALUE`), so the arguments are not echoed.
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

/// `airlock man`: the page for `airlock`, and with a directory one per
/// command (`airlock-serve.1`, `airlock-audit-verify.1`, ...).
fn man_pages(out: Option<&std::path::Path>) -> Result<ExitCode, Error> {
    let render = |cmd: clap::Command| -> Result<Vec<u8>, Error> {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut page)
            .map_err(|e| Error::internal(format!("cannot render the man page: {e}")))?;
        Ok(page)
    };
    let root = Cli::command();
    let Some(dir) = out else {
        std::io::stdout()
            .write_all(&render(root)?)
            .map_err(|e| Error::internal(format!("cannot write the man page: {e}")))?;
        return Ok(ExitCode::SUCCESS);
    };
    // One page per command, `airlock-serve.1` for `airlock serve`, its
    // synopsis naming the whole command; hidden commands get none.
    std::fs::create_dir_all(dir)
        .and_then(|()| clap_mangen::generate_to(root, dir))
        .map_err(|e| Error::internal(format!("cannot write the man pages to {}: {e}", dir.display())))?;
    println!("wrote the man pages to {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

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

impl DataPlace {
    pub(crate) fn dir(&self) -> Result<PathBuf, Error> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        match &self.config {
            Some(config) => Ok(Policy::load(config)?.runtime.data_dir),
            None => Ok(default_settings(None).data_dir),
        }
    }

    /// The audit backend the config names (`[audit]`); the data
    /// directory's log without a config.
    pub(crate) fn audit_backend(&self) -> Result<airlock::audit::settings::Backend, Error> {
        match &self.config {
            Some(config) => {
                let policy = Policy::load(config)?;
                airlock::audit::settings::Backend::from_settings(&policy.runtime.audit, &policy.runtime.store, None)
                    .map_err(Error::Config)
            }
            None => Ok(airlock::audit::settings::Backend::File),
        }
    }

    /// The store the config names (`[store]`), or SQLite in [`Self::dir`].
    pub(crate) fn store(&self) -> Result<std::sync::Arc<dyn airlock::store::Store>, Error> {
        airlock::store::open(&self.store_settings()?, &self.dir()?).map_err(Error::from)
    }

    fn store_settings(&self) -> Result<airlock::store::settings::StoreSettings, Error> {
        Ok(match &self.config {
            Some(config) => Policy::load(config)?.runtime.store,
            None => Default::default(),
        })
    }

    /// The shared vault, when the config's store is shared (PostgreSQL).
    pub(crate) fn shared_vault(
        &self,
    ) -> Result<Option<std::sync::Arc<dyn airlock::vault::shared::SharedVault>>, Error> {
        if self.store_settings()?.postgres.is_none() {
            return Ok(None);
        }
        Ok(self.store()?.shared_vault())
    }
}

fn secret(cmd: SecretCommand) -> Result<ExitCode, Error> {
    use airlock::vault::{self, Vault};
    let data_dir = |place: &DataPlace| place.dir();
    let vault_err = |e: vault::VaultError| match e {
        vault::VaultError::InvalidName | vault::VaultError::NotFound(_) => Error::Usage(e.to_string()),
        vault::VaultError::Io { .. } => Error::Internal(e.to_string()),
        _ => Error::Refused(e.to_string()),
    };
    match cmd {
        SecretCommand::Set { name, place } => {
            vault::validate_name(&name).map_err(vault_err)?;
            if vault::looks_like_a_value(&name) {
                // The name itself is not repeated: it may be a token typed
                // where the name belongs.
                eprintln!(
                    "warning: this secret name looks like a token; names are stored and listed in plain text. \
                     If it is a value typed by mistake, press Ctrl-C (or remove it later with `{}`).",
                    airlock::hint::command("secret rm NAME")
                );
            }
            let dir = data_dir(&place)?;
            let mut vault = Vault::open_in(&dir, place.shared_vault()?, true).map_err(vault_err)?;
            let value = vault::secret::read_from_stdin(&name).map_err(Error::Usage)?;
            vault.set(&name, &value).map_err(vault_err)?;
            eprintln!(
                "stored secret {name} ({} bytes) in {}",
                value.len(),
                vault.path().display()
            );
        }
        SecretCommand::List { place, json } => {
            let vault = Vault::open_in(&data_dir(&place)?, place.shared_vault()?, false).map_err(vault_err)?;
            let list = vault.list();
            if json {
                println!("{}", serde_json::to_string_pretty(&list).map_err(Error::internal)?);
            } else if list.is_empty() {
                eprintln!("no secrets in {}", vault.path().display());
            } else {
                println!(
                    "{:<32} {:>7}  {:<20}  {:<20}",
                    "NAME", "BYTES", "CREATED (UTC)", "UPDATED (UTC)"
                );
                for s in list {
                    println!(
                        "{:<32} {:>7}  {:<20}  {:<20}",
                        s.name,
                        s.bytes,
                        airlock::time::display_secs(s.created),
                        airlock::time::display_secs(s.updated)
                    );
                }
            }
        }
        SecretCommand::Rm { name, place } => {
            vault::validate_name(&name).map_err(vault_err)?;
            let mut vault = Vault::open_in(&data_dir(&place)?, place.shared_vault()?, false).map_err(vault_err)?;
            vault.remove(&name).map_err(vault_err)?;
            eprintln!("removed secret {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn audit_cmd(cmd: AuditCommand) -> Result<ExitCode, Error> {
    use airlock::audit::{self, Checkpoint, read};
    match cmd {
        AuditCommand::Verify { checkpoint, place } => {
            let dir = audit::dir(&place.dir()?);
            let backend = place.audit_backend()?;
            let external = match &checkpoint {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| Error::Usage(format!("cannot read checkpoint {}: {e}", path.display())))?;
                    let cp: Checkpoint = serde_json::from_str(text.trim())
                        .map_err(|e| Error::Usage(format!("{} is not a checkpoint: {e}", path.display())))?;
                    Some((cp, path.display().to_string()))
                }
                None => None,
            };
            if let Some(pg) = cli::PgPlace::of(&dir, &backend) {
                return cli::audit_pg_verify(&pg, external);
            }
            let verified = read::verify(&dir, external.as_ref().map(|(c, s)| (c, s.clone())))
                .map_err(|e| Error::AuditTampered(format!("audit log {}: {e}", dir.display())))?;
            match verified.head {
                Some((seq, hash)) => println!(
                    "ok: {} records, chain intact up to record {seq} (blake3:{}), {} checkpoint(s) match{}",
                    verified.records,
                    audit::chain::hex(&hash),
                    verified.checkpoints,
                    if verified.in_progress {
                        "; a record being written was not checked"
                    } else {
                        ""
                    }
                ),
                None => println!("ok: the audit log is empty"),
            }
            match (verified.unsigned(), verified.signed_through) {
                (0, _) => {}
                (n, Some(signed)) => println!(
                    "note: {n} record(s) after record {signed}, the last one a checkpoint signs, are covered by the hash chain only, not yet by a signature (`{}` signs the head)",
                    airlock::hint::command("audit checkpoint")
                ),
                (n, None) => println!(
                    "note: no checkpoint signs this log: its {n} record(s) are covered by the hash chain only (`{}` signs the head)",
                    airlock::hint::command("audit checkpoint")
                ),
            }
            // The index is derived data: one that cannot be read or written
            // (a full disk) is no finding about the log; one that differs
            // from it was edited.
            let index = match audit::index::compare_with_log(&dir) {
                Ok(index) => index,
                Err(e) => {
                    println!("note: the index could not be compared with the log ({e}); queries scan the log instead");
                    return Ok(ExitCode::SUCCESS);
                }
            };
            if index.mismatches > 0 {
                return Err(Error::AuditTampered(format!(
                    "the audit log {} is intact, but its index did not match it: {} row(s) differed (first: {}); the index was {}",
                    dir.display(),
                    index.mismatches,
                    index.first.as_deref().unwrap_or("?"),
                    if index.rebuilt {
                        "rebuilt from the log"
                    } else {
                        "not rebuilt"
                    }
                )));
            }
            println!("ok: the index matches the log ({} records)", index.records);
        }
        AuditCommand::Show { filter, json, place } => {
            let dir = audit::dir(&place.dir()?);
            let filter = filter.filter()?;
            if let Some(pg) = cli::PgPlace::of(&dir, &place.audit_backend()?) {
                return cli::audit_pg_show(&pg, &filter, json);
            }
            let mut out = std::io::stdout().lock();
            audit::index::select(&dir, &filter, None, |record, line| {
                print_record(&mut out, record, line, json, None)
            })
            .map_err(|e| Error::AuditTampered(format!("audit log {}: {e}", dir.display())))?;
        }
        AuditCommand::Export { format, filter, place } => {
            if format != "jsonl" {
                return Err(Error::Usage(format!(
                    "unknown export format {format:?}: the only format is jsonl"
                )));
            }
            let dir = audit::dir(&place.dir()?);
            let filter = filter.filter()?;
            if let Some(pg) = cli::PgPlace::of(&dir, &place.audit_backend()?) {
                return cli::audit_pg_show(&pg, &filter, true);
            }
            let mut out = std::io::stdout().lock();
            audit::index::select(&dir, &filter, None, |record, line| {
                print_record(&mut out, record, line, true, None)
            })
            .map_err(|e| Error::AuditTampered(format!("audit log {}: {e}", dir.display())))?;
        }
        AuditCommand::Tail {
            lines,
            follow,
            json,
            place,
        } => {
            let dir = audit::dir(&place.dir()?);
            if let Some(pg) = cli::PgPlace::of(&dir, &place.audit_backend()?) {
                return cli::audit_pg_tail(&pg, lines, follow, json).await;
            }
            let mut last: std::collections::VecDeque<(airlock::audit::chain::Record, Vec<u8>)> =
                std::collections::VecDeque::new();
            let verified = read::scan(&dir, |record, line| {
                if last.len() == lines {
                    last.pop_front();
                }
                if lines > 0 {
                    last.push_back((record.clone(), line.to_vec()));
                }
                true
            })
            .map_err(|e| Error::AuditTampered(format!("audit log {}: {e}", dir.display())))?;
            let mut out = std::io::stdout().lock();
            for (record, line) in &last {
                print_record(&mut out, record, line, json, None);
            }
            let mut seen = verified.records;
            // `-f` runs until interrupted.
            while follow && out.flush().is_ok() {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                let mut n = 0u64;
                read::scan(&dir, |record, line| {
                    n += 1;
                    n <= seen || print_record(&mut out, record, line, json, None)
                })
                .map_err(|e| Error::AuditTampered(format!("audit log {}: {e}", dir.display())))?;
                seen = seen.max(n);
            }
        }
        AuditCommand::Checkpoint { out, place } => {
            let data_dir = place.dir()?;
            let log = airlock::audit::AuditLog::open_backend(&audit::dir(&data_dir), &place.audit_backend()?)
                .map_err(|e| Error::AuditUnavailable(e.to_string()))?;
            let cp = log
                .checkpoint()
                .map_err(|e| Error::AuditUnavailable(e.to_string()))?
                .ok_or_else(|| Error::Usage("the audit log is empty: nothing to checkpoint yet".into()))?;
            let text = serde_json::to_string(&cp).map_err(Error::internal)?;
            if let Some(path) = out {
                std::fs::write(&path, format!("{text}\n"))
                    .map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))?;
            }
            println!("{text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

impl AuditFilter {
    fn filter(&self) -> Result<airlock::audit::query::Filter, Error> {
        let time = |t: &Option<String>| {
            t.as_deref()
                .map(airlock::time::parse_utc)
                .transpose()
                .map_err(Error::Usage)
        };
        Ok(airlock::audit::query::Filter {
            invocation: self.invocation.clone(),
            action: self.action.clone(),
            caller: self.caller.clone(),
            since: time(&self.since)?,
            until: time(&self.until)?,
        })
    }
}

/// Print one record (of `node`'s chain, with PostgreSQL); false when
/// stdout is closed.
fn print_record(
    out: &mut impl std::io::Write,
    record: &airlock::audit::chain::Record,
    line: &[u8],
    json: bool,
    node: Option<&str>,
) -> bool {
    use airlock::audit::Event;
    if json {
        return out.write_all(line).and_then(|()| out.write_all(b"\n")).is_ok();
    }
    let e = &record.entry;
    let id = |i: &str| i.chars().take(12).collect::<String>();
    let summary = match &e.event {
        Event::InvocationStarted(s) => format!(
            "{} {}#{} by {} args {}",
            id(&s.invocation),
            s.action,
            s.function,
            s.caller,
            if s.args_truncated {
                format!("({})", s.args_digest)
            } else {
                s.args.to_string()
            }
        ),
        Event::HostCall(h) => format!(
            "{} call {} {}#{} {} ({}) {}",
            id(&h.invocation),
            h.call,
            h.interface,
            h.function,
            if h.allowed { "allowed" } else { "DENIED" },
            h.rule,
            h.status
        ),
        Event::InvocationFinished(f) => format!(
            "{} {} {} exit {} in {} us{}",
            id(&f.invocation),
            f.action,
            f.outcome,
            f.exit_code,
            f.duration_us,
            f.error.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
        ),
        Event::InvocationRefused(r) => format!(
            "{} {}#{} by {}: {}",
            id(&r.invocation),
            r.action,
            r.function,
            r.caller,
            r.error
        ),
        Event::InvocationCutOff(c) => format!(
            "{} {} cut off{}: {}",
            id(&c.invocation),
            c.action.as_deref().unwrap_or("?"),
            c.started_seq
                .map(|s| format!(" (started at record {s})"))
                .unwrap_or_default(),
            c.reason
        ),
        Event::Recovered(r) => format!(
            "cut {} torn bytes after record {:?}: {}",
            r.truncated_bytes, r.last_good_seq, r.reason
        ),
        Event::ApprovalRequested(a) => format!(
            "{} approval {} ({}) for {}#{} by {}: {} needs {} ({})",
            id(&a.invocation),
            a.approval,
            a.approval_kind,
            a.action,
            a.function,
            a.caller,
            a.rule,
            a.quorum,
            a.binding
        ),
        Event::ApprovalDecision(d) => format!(
            "{} approval {} {} by {} {} ({}/{}){}",
            id(&d.invocation),
            d.approval,
            d.verdict,
            d.identity_kind,
            d.identity,
            d.approvals,
            d.quorum,
            d.reason.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
        ),
        Event::ApprovalResolved(r) => format!(
            "{} approval {} {}{}",
            id(&r.invocation),
            r.approval,
            r.state,
            r.reason.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
        ),
        Event::ApprovalEscalated(e) => format!(
            "{} approval {} escalated from {} to {}: {}",
            id(&e.invocation),
            e.approval,
            e.from_group,
            e.to_group,
            e.approvers.join(", ")
        ),
        Event::Notification(n) => format!(
            "{} approval {} {} to webhook {} ({}): attempt {} {}{}{}",
            id(&n.invocation),
            n.approval,
            n.event,
            n.webhook,
            n.destination,
            n.attempt,
            n.outcome,
            n.http_status.map(|s| format!(" ({s})")).unwrap_or_default(),
            n.error.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
        ),
    };
    let kind = match &e.event {
        Event::InvocationStarted(_) => "started",
        Event::HostCall(_) => "host-call",
        Event::InvocationFinished(_) => "finished",
        Event::InvocationRefused(_) => "refused",
        Event::InvocationCutOff(_) => "cut-off",
        Event::Recovered(_) => "recovered",
        Event::ApprovalRequested(_) => "approval",
        Event::ApprovalDecision(_) => "decision",
        Event::ApprovalResolved(_) => "resolved",
        Event::Notification(_) => "notification",
        Event::ApprovalEscalated(_) => "escalated",
    };
    if let Some(node) = node
        && write!(out, "{node} ").is_err()
    {
        return false;
    }
    writeln!(out, "{:>7} {} {:<9} {}", e.seq, e.ts, kind, escape(&summary)).is_ok()
}

fn fail(e: &Error) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(e.exit_code() as u8)
}

fn default_settings(data_dir: Option<PathBuf>) -> RuntimeSettings {
    RuntimeSettings {
        data_dir: data_dir.unwrap_or_else(|| PathBuf::from(".airlock")),
        max_concurrent_instances: 4,
        store: Default::default(),
        audit: Default::default(),
    }
}

fn inspect(component: PathBuf, json: bool) -> Result<ExitCode, Error> {
    let runtime = Runtime::without_cache(&default_settings(None))?;
    let manifest = runtime.inspect(&component)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&manifest.to_json()).map_err(Error::internal)?
        );
    } else {
        print!("{}", manifest.render());
    }
    Ok(ExitCode::SUCCESS)
}

fn check(config: PathBuf) -> Result<ExitCode, Error> {
    let policy = Policy::load(&config)?;
    let mut runtime = Runtime::new(&policy.runtime)?;
    let mut worst: Option<Error> = None;
    println!("config {}: {} action(s)", config.display(), policy.actions.len());
    for (name, loaded) in runtime.load_each(&policy) {
        match loaded {
            Ok(action) => {
                println!("ok      {name}  {}", action.manifest.digest);
                if let Some(s) = &action.signer {
                    println!("          signed by: {} ({})", s.name, s.fingerprint);
                }
                let decided_by = action.decisions.policy_refs();
                if !decided_by.is_empty() {
                    println!("          policies: {}", decided_by.join(", "));
                }
                let grants = action.policy.grants.describe();
                if grants.is_empty() {
                    println!("          capabilities: none (inert baseline only)");
                }
                for (kind, what) in grants {
                    println!("          capability {kind}: {what}");
                }
                let l = &action.policy.limits;
                println!(
                    "          limits: timeout {} ms, memory {} MiB, fuel {}, result {} B, output {} B, log {} B",
                    l.timeout.as_millis(),
                    l.memory_bytes >> 20,
                    l.fuel.map_or("unmetered".to_string(), |f| f.to_string()),
                    l.max_result_bytes,
                    l.max_output_bytes,
                    l.max_log_bytes
                );
                println!("          functions: {}", action.manifest.function_names());
                let p = &action.policy;
                let list = |rules: &[airlock::identity::AccessRule]| {
                    if rules.is_empty() {
                        "nobody".to_string()
                    } else {
                        rules.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    }
                };
                println!("          runs as: {}", p.service_identity);
                println!("          invoke: {}", list(&p.access.invoke));
                if p.access.has_approvers() {
                    println!(
                        "          approve: {}; agents: {}",
                        list(&p.access.approve),
                        list(&p.access.agent_approvers)
                    );
                }
                let a = &p.approval;
                if a.invocation {
                    println!(
                        "          approval: every invocation, quorum {}, open for {} s",
                        a.quorum,
                        a.ttl.as_secs()
                    );
                }
                for rule in &a.host_calls {
                    println!(
                        "          approval: {} (quorum {}, waits {} s)",
                        rule.describe(),
                        a.quorum,
                        a.wait.as_secs()
                    );
                }
            }
            Err(e) => {
                println!("REFUSED {name}: {e}");
                if worst.as_ref().is_none_or(|w| e.exit_code() > w.exit_code()) {
                    worst = Some(e);
                }
            }
        }
    }
    if let Err(e) = runtime.validate_policies(&policy) {
        println!("REFUSED policy files: {e}");
        if worst.as_ref().is_none_or(|w| e.exit_code() > w.exit_code()) {
            worst = Some(e);
        }
    }
    match worst {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => Err(e),
    }
}

async fn invoke(a: InvokeArgs) -> Result<ExitCode, Error> {
    let args: serde_json::Value = serde_json::from_str(&a.args).map_err(|e| Error::ArgsSyntax(e.to_string()))?;
    let (mut runtime, policy) = match &a.config {
        Some(config) => {
            let adhoc_flags = a.grant_dir.is_some()
                || a.grant_log
                || !a.config_value.is_empty()
                || a.timeout_ms.is_some()
                || a.memory_mib.is_some()
                || a.fuel.is_some()
                || a.max_output_bytes.is_some();
            if adhoc_flags {
                return Err(Error::Config(
                    "grant and limit flags apply to ad hoc invocations only; with --config, grants and limits come from the config".into(),
                ));
            }
            let mut policy = Policy::load(config)?;
            if let Some(dir) = a.data_dir.clone() {
                policy.runtime.data_dir = dir;
            }
            let action = policy
                .actions
                .get(&a.target)
                .cloned()
                .ok_or_else(|| Error::UnknownAction {
                    name: a.target.clone(),
                    available: policy.actions.keys().cloned().collect::<Vec<_>>().join(", "),
                })?;
            let runtime = Runtime::new(&policy.runtime)?;
            // Policy files are checked against every action of the config
            // before anything of it runs.
            runtime.check_policies_of(&policy)?;
            (runtime, action)
        }
        None => {
            let path = PathBuf::from(&a.target);
            let files = a.grant_dir.as_deref().map(parse_grant_dir).transpose()?;
            let config = if a.config_value.is_empty() {
                None
            } else {
                let mut table = toml::Table::new();
                for pair in &a.config_value {
                    let (key, value) = pair
                        .split_once('=')
                        .ok_or_else(|| Error::Usage(format!("--config-value {pair:?}: write KEY=VALUE")))?;
                    table.insert(key.to_string(), toml::Value::String(value.to_string()));
                }
                Some(
                    airlock::capabilities::config::ConfigGrant::resolve(&table)
                        .map_err(|e| Error::Usage(format!("--config-value: {e}")))?,
                )
            };
            let limits = LimitOverrides {
                timeout_ms: a.timeout_ms,
                memory_mib: a.memory_mib,
                fuel: a.fuel,
                max_result_bytes: a.max_output_bytes,
                max_output_bytes: a.max_output_bytes,
                max_log_bytes: a.max_output_bytes,
            }
            .resolve()
            .map_err(Error::Config)?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "adhoc".into());
            let grants = Grants {
                log: a.grant_log.then_some(LogGrant),
                files,
                config,
                ..Grants::default()
            };
            let policy = ActionPolicy::ad_hoc(name, path, grants, limits);
            (Runtime::new(&default_settings(a.data_dir.clone()))?, policy)
        }
    };
    let in_config = a.config.is_some();
    if !in_config && (a.approval.is_some() || a.wait_secs > 0) {
        return Err(Error::Usage(
            "--approval and --wait-secs apply to configured actions (--config)".into(),
        ));
    }
    let action = runtime.prepare(policy)?;
    runtime.commit_pins()?;
    let caller = if in_config {
        a.auth.caller(&runtime)?
    } else {
        airlock::identity::Caller::local()
    };
    // Approved invocations whose approver could not run them run now.
    runtime.sweep_approvals().await?;
    runtime.run_released().await?;
    let wait = std::time::Duration::from_secs(a.wait_secs);
    let name = action.policy.name.clone();
    // The environment carries a trace the standard way (`TRACEPARENT`,
    // `TRACESTATE`); only a flag given by hand is an error when invalid.
    let from_env = a.traceparent.is_none();
    let traceparent = a.traceparent.clone().or_else(|| std::env::var("TRACEPARENT").ok());
    let (intent, ignored) = airlock::invocation::Intent::new(a.reason.as_deref(), traceparent.as_deref())?;
    if ignored && !from_env {
        return Err(Error::Usage(
            "--traceparent is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>, lower case)".into(),
        ));
    }
    let tracestate = a.tracestate.clone().or_else(|| std::env::var("TRACESTATE").ok());
    let intent = intent.with_tracestate(tracestate.as_deref());
    if let Some(id) = &a.approval {
        let done = runtime
            .invoke_approved(&caller, &name, &a.function, &args, &intent, id, wait)
            .await?;
        return cli::print_submitted(done, a.quiet);
    }
    if let Some(n) = a.repeat {
        for _ in 0..n {
            let report = match runtime
                .submit(&caller, &name, &a.function, &args, &intent, wait)
                .await?
            {
                airlock::gateway::Submitted::Ran(report) => report,
                other => return cli::print_submitted(other, a.quiet),
            };
            if !a.quiet {
                echo_observations(&report);
            }
            let value = report.outcome?;
            let line = serde_json::json!({"invocation": report.invocation, "result": value});
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                break; // the reader went away
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let submitted = runtime
        .submit(&caller, &name, &a.function, &args, &intent, wait)
        .await?;
    cli::print_submitted(submitted, a.quiet)
}

/// `PATH` (read-write) or `PATH:ro` (read-only).
fn parse_grant_dir(spec: &str) -> Result<FilesGrant, Error> {
    let (path, mode) = match spec.strip_suffix(":ro") {
        Some(p) => (p, Mode::ReadOnly),
        None => (spec.strip_suffix(":rw").unwrap_or(spec), Mode::ReadWrite),
    };
    FilesGrant::new(PathBuf::from(path), mode).map_err(|e| Error::Config(format!("--grant-dir: {e}")))
}

/// Echo the action's logs and captured output to stderr. Guest-controlled
/// text is escaped so it cannot drive the terminal.
pub(crate) fn echo_observations(report: &Report) {
    let mut err = std::io::stderr().lock();
    for line in &report.logs {
        let fields: String = line
            .fields
            .iter()
            .map(|(k, v)| format!(" {}={}", escape(k), escape(v)))
            .collect();
        let _ = writeln!(err, "[log {:?}] {}{}", line.level, escape(&line.message), fields);
    }
    if report.logs_dropped > 0 {
        let _ = writeln!(
            err,
            "[log] {} line(s) dropped: max-log-bytes reached",
            report.logs_dropped
        );
    }
    for (name, bytes) in [("stdout", &report.stdout), ("stderr", &report.stderr)] {
        for line in String::from_utf8_lossy(bytes).lines() {
            let _ = writeln!(err, "[{name}] {}", escape(line));
        }
    }
}

pub(crate) fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}
