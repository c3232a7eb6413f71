//! `airlock inspect` and `airlock check`: what a component asks for, and
//! what a config grants each action.

use super::default_settings;
use airlock::Error;
use airlock::policy::Policy;
use airlock::runtime::Runtime;
use std::path::PathBuf;
use std::process::ExitCode;

pub fn inspect(component: PathBuf, json: bool) -> Result<ExitCode, Error> {
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

pub fn check(config: PathBuf) -> Result<ExitCode, Error> {
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
