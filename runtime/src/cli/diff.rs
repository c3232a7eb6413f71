//! `airlock diff`: what an upgrade of a component changes.

use airlock::Error;
use airlock::manifest::diff::{ComponentDiff, GrantUse};
use airlock::policy::Policy;
use airlock::runtime::Runtime;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct DiffArgs {
    /// The version in use.
    pub old: PathBuf,
    /// The version to review.
    pub new: PathBuf,
    /// With --action: also say which of the action's grants the new
    /// version would newly use, and which it would leave unused.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub action: Option<String>,
    /// Print format `airlock.diff/v1`.
    #[arg(long)]
    pub json: bool,
}

pub fn diff(a: DiffArgs) -> Result<ExitCode, Error> {
    let runtime = Runtime::without_cache(&super::default_settings(None))?;
    let old = runtime.inspect(&a.old)?;
    let new = runtime.inspect(&a.new)?;
    let grants = match (&a.config, &a.action) {
        (Some(config), Some(action)) => {
            let policy = Policy::load(config)?;
            let p = policy
                .actions
                .get(action)
                .ok_or_else(|| Error::Usage(format!("no action `{action}` in {}", config.display())))?;
            Some(GrantUse::of(&old, &new, &p.grants))
        }
        (None, None) => None,
        _ => return Err(Error::Usage("--config and --action go together".into())),
    };
    let diff = ComponentDiff::between(&old, &new);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&diff.to_json(grants.as_ref())).map_err(Error::internal)?
        );
    } else {
        print!("{}", diff.render(grants.as_ref()));
    }
    Ok(ExitCode::SUCCESS)
}
