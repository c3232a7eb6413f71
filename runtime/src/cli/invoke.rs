//! `airlock invoke`: run an action of a config, or a component ad hoc.

use super::{default_settings, escape};
use airlock::Error;
use airlock::capabilities::Grants;
use airlock::capabilities::files::{FilesGrant, Mode};
use airlock::capabilities::log::LogGrant;
use airlock::invocation::Report;
use airlock::policy::{ActionPolicy, LimitOverrides, Policy};
use airlock::runtime::Runtime;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct InvokeArgs {
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
    auth: super::Auth,
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

pub async fn invoke(a: InvokeArgs) -> Result<ExitCode, Error> {
    let text = a.args.clone();
    run(a).await.map_err(|e| match e {
        Error::Args(mut m) => {
            m.message = airlock::values::restore_literals(&m.message, &text);
            Error::Args(m)
        }
        other => other,
    })
}

async fn run(a: InvokeArgs) -> Result<ExitCode, Error> {
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
        return super::print_submitted(done, a.quiet);
    }
    if let Some(n) = a.repeat {
        for _ in 0..n {
            let report = match runtime
                .submit(&caller, &name, &a.function, &args, &intent, wait)
                .await?
            {
                airlock::gateway::Submitted::Ran(report) => report,
                other => return super::print_submitted(other, a.quiet),
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
    super::print_submitted(submitted, a.quiet)
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
pub fn echo_observations(report: &Report) {
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
