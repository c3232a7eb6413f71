//! Rate and budget windows (`[[actions.NAME.windows]]`): at most N
//! invocations per period, or a sum over an argument (total refund amount
//! per day), per caller or for everyone together.
//!
//! Windows are fixed and aligned to the Unix epoch (an hour window runs
//! 10:00 to 11:00 UTC). Each invocation the policies let through is
//! charged before anything runs, with one guarded upsert per window in the
//! store: on SQLite and on PostgreSQL alike, any number of concurrent
//! callers on any number of nodes never take a window past its `max`. A
//! held invocation counts from its request; a charge is not given back
//! when the invocation is denied, expires or fails.

use crate::identity::Caller;
use crate::store::Charge;
use crate::values::ValueType;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// Shortest and longest window period.
pub const MIN_PERIOD: Duration = Duration::from_secs(60);
pub const MAX_PERIOD: Duration = Duration::from_secs(31 * 86_400);
/// Most windows one action may have.
pub const MAX_WINDOWS: usize = 16;

/// One `[[actions.NAME.windows]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawWindow {
    pub name: String,
    /// `caller` (each caller its own window) or `action` (all together).
    pub per: String,
    /// Only this function; every function of the action when absent.
    pub function: Option<String>,
    /// `30m`, `1h`, `1d`, … (1 minute to 31 days).
    pub period: String,
    /// Most invocations per period, or with `sum` the most the sum of the
    /// argument may reach.
    pub max: i64,
    /// A top-level integer parameter whose values are summed.
    pub sum: Option<String>,
}

/// A window, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub name: String,
    pub per_caller: bool,
    pub function: Option<String>,
    pub period: Duration,
    pub max: i64,
    pub sum: Option<String>,
}

impl Window {
    pub fn resolve(raw: &RawWindow) -> Result<Window, String> {
        let name_ok = !raw.name.is_empty()
            && raw.name.len() <= 32
            && raw
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(format!(
                "windows: name {:?} must be 1-32 characters of a-z, 0-9 and `-`",
                raw.name
            ));
        }
        let at = |msg: String| format!("windows `{}`: {msg}", raw.name);
        let per_caller = match raw.per.as_str() {
            "caller" => true,
            "action" => false,
            other => return Err(at(format!("per = {other:?}: use \"caller\" or \"action\""))),
        };
        let period = super::source::parse_duration(&raw.period).map_err(|e| at(format!("period: {e}")))?;
        if !(MIN_PERIOD..=MAX_PERIOD).contains(&period) {
            return Err(at(format!("period {:?} must be between 1m and 31d", raw.period)));
        }
        if raw.max < 1 {
            return Err(at("max must be at least 1".into()));
        }
        Ok(Window {
            name: raw.name.clone(),
            per_caller,
            function: raw.function.clone(),
            period,
            max: raw.max,
            sum: raw.sum.clone(),
        })
    }

    /// Check the window against the action's functions: its function
    /// exists, and the summed parameter is an integer of each function it
    /// applies to.
    pub fn check(&self, functions: &[crate::manifest::FunctionSig]) -> Result<(), String> {
        let at = |msg: String| format!("windows `{}`: {msg}", self.name);
        if let Some(f) = &self.function
            && !functions.iter().any(|s| s.name == *f)
        {
            return Err(at(format!("the action has no function `{f}`")));
        }
        if let Some(param) = &self.sum {
            for f in functions.iter().filter(|f| self.applies(&f.name)) {
                let ty = f.params.iter().find(|(n, _)| n == param).map(|(_, t)| t);
                let integer = |t: &ValueType| {
                    matches!(
                        t,
                        ValueType::U8
                            | ValueType::U16
                            | ValueType::U32
                            | ValueType::U64
                            | ValueType::S8
                            | ValueType::S16
                            | ValueType::S32
                            | ValueType::S64
                    )
                };
                let ok = match ty {
                    Some(ValueType::Option(inner)) => integer(inner),
                    Some(t) => integer(t),
                    None => false,
                };
                if !ok {
                    return Err(at(format!(
                        "sum = {param:?}: function `{}` has no integer parameter `{param}` (set `function` to the one that has)",
                        f.name
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn applies(&self, function: &str) -> bool {
        self.function.as_deref().is_none_or(|f| f == function)
    }

    /// The window `caller`'s invocation of `action` at `now` falls in: its
    /// store key, start and end (Unix microseconds).
    pub fn slot(&self, action: &str, caller: &Caller, now: u64) -> (String, i64, i64) {
        let period = i64::try_from(self.period.as_micros()).unwrap_or(i64::MAX);
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let start = now - now.rem_euclid(period);
        let who = if self.per_caller { caller.name.as_str() } else { "*" };
        // The period is part of the key: a window whose period changes
        // starts afresh rather than reusing a row that ends elsewhere.
        (
            format!("{action}\u{1f}{}\u{1f}{period}\u{1f}{who}", self.name),
            start,
            start.saturating_add(period),
        )
    }

    /// What an invocation of `action` by `caller` with `args` at `now`
    /// (Unix microseconds) charges this window; `None` when it adds
    /// nothing (a summed argument of 0 or absent).
    pub fn charge(&self, action: &str, caller: &Caller, args: &Value, now: u64) -> Result<Option<Charge>, String> {
        let amount = match &self.sum {
            None => 1,
            Some(param) => match args.get(param) {
                None | Some(Value::Null) => 0,
                Some(v) => v.as_i64().filter(|n| *n >= 0).ok_or_else(|| {
                    format!(
                        "window `{}` sums `{param}`, and {v} is not an integer from 0 to {}",
                        self.name,
                        i64::MAX
                    )
                })?,
            },
        };
        if amount == 0 {
            return Ok(None);
        }
        let (key, window_start, window_end) = self.slot(action, caller, now);
        Ok(Some(Charge {
            key,
            window_start,
            window_end,
            amount,
            max: self.max,
        }))
    }

    /// Why `charge` was refused, for the caller and the record.
    pub fn refusal(&self, action: &str, caller: &Caller, charge: &Charge, used: i64) -> String {
        let resets = crate::time::rfc3339_micros(u64::try_from(charge.window_end).unwrap_or(0));
        let whose = if self.per_caller {
            format!("for {}", caller.name)
        } else {
            "for all callers together".into()
        };
        let period = super::engine::duration_text(self.period);
        match &self.sum {
            None => format!(
                "refused: window `{}` of action {action} allows {} invocations per {period} {whose}; {used} used; resets at {resets}",
                self.name, self.max
            ),
            Some(param) => format!(
                "refused: window `{}` of action {action} allows a total `{param}` of {} per {period} {whose}; {used} used, this call adds {}; resets at {resets}",
                self.name, self.max, charge.amount
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(text: &str) -> Result<Window, String> {
        let raw: RawWindow = toml::from_str(text).map_err(|e| e.to_string())?;
        Window::resolve(&raw)
    }

    #[test]
    fn windows_are_validated_and_aligned() {
        let w = window("name = \"per-agent-hour\"\nper = \"caller\"\nperiod = \"1h\"\nmax = 20").unwrap();
        let at = crate::time::parse_utc("2026-12-04T10:30:00Z").unwrap();
        let c = w
            .charge("refund", &Caller::local(), &serde_json::json!({}), at)
            .unwrap()
            .unwrap();
        assert_eq!(
            c.window_start,
            i64::try_from(crate::time::parse_utc("2026-12-04T10:00:00Z").unwrap()).unwrap()
        );
        assert_eq!(c.window_end - c.window_start, 3_600_000_000);
        assert_eq!((c.amount, c.max), (1, 20));
        let sum =
            window("name = \"daily\"\nper = \"action\"\nperiod = \"1d\"\nmax = 500000\nsum = \"amount\"").unwrap();
        let c = sum
            .charge("refund", &Caller::local(), &serde_json::json!({"amount": 700}), at)
            .unwrap()
            .unwrap();
        assert!(c.key.ends_with("\u{1f}*") && c.amount == 700);
        assert!(
            sum.charge("refund", &Caller::local(), &serde_json::json!({"amount": -5}), at)
                .is_err()
        );
        assert_eq!(
            sum.charge("refund", &Caller::local(), &serde_json::json!({}), at),
            Ok(None)
        );
        for bad in [
            "name = \"X\"\nper = \"caller\"\nperiod = \"1h\"\nmax = 1",
            "name = \"a\"\nper = \"everyone\"\nperiod = \"1h\"\nmax = 1",
            "name = \"a\"\nper = \"caller\"\nperiod = \"30s\"\nmax = 1",
            "name = \"a\"\nper = \"caller\"\nperiod = \"32d\"\nmax = 1",
            "name = \"a\"\nper = \"caller\"\nperiod = \"1h\"\nmax = 0",
            "name = \"a\"\nper = \"caller\"\nperiod = \"1h\"\nmax = 1\nlimit = 2",
        ] {
            assert!(window(bad).is_err(), "{bad}");
        }
    }
}
