//! `airlock policy`: the vocabulary policies are written in.

use airlock::Error;
use airlock::policy::Policy;
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
    },
}

pub fn policy_cmd(cmd: PolicyCommand) -> Result<ExitCode, Error> {
    match cmd {
        PolicyCommand::Schema { config, json } => {
            let policy = Policy::load(&config)?;
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
                .map(|(name, a)| ActionTypes::of(name, &a.manifest.functions))
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
    }
}
