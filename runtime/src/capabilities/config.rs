//! `airlock:cap/config`: non-secret configuration values from the action's
//! `[actions.NAME.config]` section.
//!
//! The section is the grant: an action with one (even empty) may import the
//! interface, and reads only its own keys. Values are strings; TOML integers,
//! floats and booleans are kept as the text they stand for. Every read is a
//! host call, recorded with its key and whether the key is set (never the
//! value: it is not secret, but records stay small and uniform).
//!
//! The same values can be written into the action's grants as
//! `${config.KEY}` (in http allow and inject destinations and credential
//! destinations), so an origin the code reads is written once.

use super::bindings::airlock::cap::config as wit;
use super::catalog::{AIRLOCK_CAP_0_1, Interface};
use super::{Capability, Resolving};
use crate::host_call::{Decision, Denied, HostCall};
use crate::host_call::{InvocationState, StateBuilder};
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::{HasSelf, Linker};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;
/// Longest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// Most keys one action may have.
pub const MAX_KEYS: usize = 256;

/// The `config` grant: the action's values, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigGrant {
    pub values: Arc<BTreeMap<String, String>>,
}

impl ConfigGrant {
    /// Validate `[actions.NAME.config]`: keys of `A-Z a-z 0-9 . _ -`,
    /// scalar values only.
    pub fn resolve(raw: &toml::Table) -> Result<ConfigGrant, String> {
        if raw.len() > MAX_KEYS {
            return Err(format!("config: at most {MAX_KEYS} keys"));
        }
        let mut values = BTreeMap::new();
        for (key, value) in raw {
            if !valid_key(key) {
                return Err(format!(
                    "config: key {key:?} must be 1-{MAX_KEY_BYTES} characters of A-Z a-z 0-9 . _ -"
                ));
            }
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Datetime(d) => d.to_string(),
                toml::Value::Array(_) | toml::Value::Table(_) => {
                    return Err(format!(
                        "config.{key}: values are strings, numbers or booleans (write a list as one string and split it in the action)"
                    ));
                }
            };
            if text.len() > MAX_VALUE_BYTES {
                return Err(format!("config.{key}: values are at most {MAX_VALUE_BYTES} bytes"));
            }
            values.insert(key.clone(), text);
        }
        Ok(ConfigGrant {
            values: Arc::new(values),
        })
    }

    /// Replace every `${config.KEY}` in `text` with the value of `KEY`.
    /// A `$` not followed by `{config.` is left as it is.
    pub fn expand(&self, text: &str) -> Result<String, String> {
        const OPEN: &str = "${config.";
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find(OPEN) {
            out.push_str(&rest[..at]);
            let after = &rest[at + OPEN.len()..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("{text:?}: `${{config.` is not closed with `}}`"))?;
            let key = &after[..end];
            let value = self
                .values
                .get(key)
                .ok_or_else(|| format!("{text:?}: no key `{key}` under the action's [config] section"))?;
            out.push_str(value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Per-invocation state: the action's values.
#[derive(Debug, Clone, Default)]
pub struct ConfigState {
    pub values: Arc<BTreeMap<String, String>>,
}

/// The `config` capability.
pub struct ConfigCapability;

impl Capability for ConfigCapability {
    const INTERFACES: &'static [Interface] = &[Interface {
        family: &AIRLOCK_CAP_0_1,
        name: "airlock:cap/config",
        meaning: "non-secret values from the action's [config] section; no authority",
    }];
    type Raw = toml::Table;
    type Grant = ConfigGrant;
    const UNDER_GRANTS: bool = false;
    // It reads the operator's own values: no effect outside.
    const REACHES_OUTSIDE: bool = false;
    const EXAMPLE_GRANT: &'static str = "[actions.NAME.config] with the keys it reads, e.g. api = \"https://HOST\"";
    const EXAMPLE_FLAG: &'static str = "--config-value KEY=VALUE";

    fn resolve(raw: &toml::Table, _cx: &Resolving<'_>) -> Result<Option<ConfigGrant>, String> {
        ConfigGrant::resolve(raw).map(Some)
    }

    fn link(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<InvocationState, HasSelf<InvocationState>>(linker, |s| s)
    }

    fn prepare(grant: &ConfigGrant, state: &mut StateBuilder) -> anyhow::Result<()> {
        state.slots.insert(ConfigState {
            values: grant.values.clone(),
        });
        Ok(())
    }

    fn describe(grant: &ConfigGrant) -> String {
        if grant.values.is_empty() {
            return "non-secret config values: none set".into();
        }
        let keys: Vec<&str> = grant.values.keys().map(String::as_str).collect();
        format!("non-secret config values: {}", keys.join(", "))
    }
}

impl wit::Host for InvocationState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        let call = HostCall::new("airlock:cap/config", "get").arg("key", &key);
        self.host_call(
            call,
            |_| Decision::allow("grants.config"),
            |state| {
                let value = state
                    .slots
                    .get::<ConfigState>()
                    .and_then(|c| c.values.get(&key))
                    .cloned();
                let status = if value.is_some() { "ok" } else { "none: not set" };
                Found(value, status)
            },
        )
        .map(|found| found.0)
        .map_err(Denied::into_trap)
    }
}

/// A read's value and the status it is recorded with.
struct Found(Option<String>, &'static str);

impl crate::host_call::CallStatus for Found {
    fn status(&self) -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed(self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(text: &str) -> Result<ConfigGrant, String> {
        ConfigGrant::resolve(&toml::from_str(text).unwrap())
    }

    #[test]
    fn values_are_scalars_under_plain_keys() {
        let g = grant("api = \"https://tickets.example\"\nport = 8443\nbeta = true\nratio = 0.5").unwrap();
        assert_eq!(g.values["port"], "8443");
        assert_eq!(g.values["beta"], "true");
        assert_eq!(g.values["ratio"], "0.5");
        assert!(
            grant("list = [1, 2]")
                .unwrap_err()
                .contains("strings, numbers or booleans")
        );
        assert!(grant("t = { a = 1 }").is_err());
        assert!(grant("\"bad key\" = 1").unwrap_err().contains("must be 1-128"));
        assert!(grant(&format!("big = \"{}\"", "x".repeat(MAX_VALUE_BYTES + 1))).is_err());
    }

    #[test]
    fn references_expand_to_the_value_or_name_the_missing_key() {
        let g = grant("api = \"https://tickets.example\"").unwrap();
        assert_eq!(g.expand("${config.api}").unwrap(), "https://tickets.example");
        assert_eq!(g.expand("${config.api}/v2").unwrap(), "https://tickets.example/v2");
        assert_eq!(g.expand("$HOME ${x}").unwrap(), "$HOME ${x}");
        assert!(g.expand("${config.nope}").unwrap_err().contains("no key `nope`"));
        assert!(g.expand("${config.api").unwrap_err().contains("not closed"));
    }
}
