//! A request's Cedar context: the arguments as typed values, the time,
//! and which of them a set of policies reads.
//!
//! Values follow [`super::schema::cedar_type`] exactly. Nothing is ever
//! rounded: a `u64` above `i64::MAX`, or a float that is not exactly a
//! Cedar `decimal` (at most 4 fraction digits, magnitude below about
//! 9.2e14), cannot be compared by a policy, so an invocation whose
//! policies read such an argument is refused. An argument no policy reads
//! is never converted at all.

use super::schema::attr_name;
use crate::values::ValueType;
use cedar_policy::RestrictedExpression;
use serde_json::Value;
use std::collections::BTreeSet;
use wasmtime::component::Val;

/// What a set of policies reads from the context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reads {
    /// Every argument (`context.args` used as a whole, or `context`).
    pub all_args: bool,
    /// Top-level arguments read, by Cedar attribute name.
    pub args: BTreeSet<String>,
    /// `context.now`; `now_datetime`: its `datetime` (the costly part).
    pub now: bool,
    pub now_datetime: bool,
    /// `context.usage`: the windows' use so far (a store read).
    pub usage: bool,
    /// Anything of the context at all (the reason and trace included):
    /// when false, a decision depends only on who asks for what.
    pub context: bool,
}

impl Reads {
    pub fn arg(&self, attr: &str) -> bool {
        self.all_args || self.args.contains(attr)
    }

    pub fn merge(&mut self, other: &Reads) {
        self.all_args |= other.all_args;
        self.args.extend(other.args.iter().cloned());
        self.now |= other.now;
        self.now_datetime |= other.now_datetime;
        self.usage |= other.usage;
        self.context |= other.context;
    }

    /// What `policy` reads, from its JSON form. Anything not understood
    /// counts as reading everything.
    pub fn of(policy: &cedar_policy::Policy) -> Reads {
        let mut reads = Reads::default();
        match policy.to_json() {
            Ok(json) => {
                scan(&json, &mut reads);
                reads.context = mentions_context(&json);
            }
            Err(_) => {
                reads.context = true;
                reads.all_args = true;
                reads.now = true;
                reads.now_datetime = true;
                reads.usage = true;
            }
        }
        reads
    }
}

fn is_var_context(v: &Value) -> bool {
    v.get("Var").and_then(Value::as_str) == Some("context")
}

/// Whether `context` appears anywhere in the policy's JSON form.
fn mentions_context(v: &Value) -> bool {
    match v {
        Value::Object(map) => is_var_context(v) || map.values().any(mentions_context),
        Value::Array(items) => items.iter().any(mentions_context),
        _ => false,
    }
}

/// `(attr of context)` when `v` is `context.ATTR` (written `.` or `[]`).
fn context_attr(v: &Value) -> Option<&str> {
    let access = v.get(".")?;
    is_var_context(access.get("left")?)
        .then(|| access.get("attr").and_then(Value::as_str))
        .flatten()
}

fn scan(v: &Value, reads: &mut Reads) {
    match v {
        Value::Object(map) => {
            for op in [".", "has"] {
                if let Some(access) = map.get(op)
                    && let (Some(left), Some(attr)) = (access.get("left"), access.get("attr").and_then(Value::as_str))
                {
                    if is_var_context(left) {
                        // `context.X` as a whole (or `context has X`).
                        match attr {
                            "args" => reads.all_args = true,
                            "now" => {
                                reads.now = true;
                                reads.now_datetime = true;
                            }
                            "usage" => reads.usage = true,
                            _ => {}
                        }
                        return;
                    }
                    match context_attr(left) {
                        Some("args") => {
                            reads.args.insert(attr.to_string());
                            return;
                        }
                        Some("now") => {
                            reads.now = true;
                            reads.now_datetime |= attr == "datetime";
                            return;
                        }
                        Some("usage") => {
                            reads.usage = true;
                            return;
                        }
                        _ => {}
                    }
                }
            }
            if is_var_context(v) {
                reads.all_args = true;
                reads.now = true;
                reads.now_datetime = true;
                reads.usage = true;
                return;
            }
            for child in map.values() {
                scan(child, reads);
            }
        }
        Value::Array(items) => {
            for child in items {
                scan(child, reads);
            }
        }
        _ => {}
    }
}

/// The `args` record of a request: the parameters `reads` names, from
/// their parsed values. An error names the argument and why policies
/// cannot compare it.
pub fn args_record(
    params: &[(String, ValueType)],
    values: &[Val],
    reads: &Reads,
) -> Result<RestrictedExpression, String> {
    let mut fields = Vec::new();
    for ((name, ty), val) in params.iter().zip(values) {
        let attr = attr_name(name);
        if !reads.arg(&attr) {
            continue;
        }
        if let Some(v) = attribute(ty, val, &format!("args.{name}"))? {
            fields.push((attr, v));
        }
    }
    RestrictedExpression::new_record(fields).map_err(|e| e.to_string())
}

/// A parameter or field: `None` for an absent `option` (the attribute is
/// left out) or a type without a Cedar form.
fn attribute(ty: &ValueType, val: &Val, path: &str) -> Result<Option<RestrictedExpression>, String> {
    match (ty, val) {
        (ValueType::Option(_), Val::Option(None)) => Ok(None),
        (ValueType::Option(inner), Val::Option(Some(v))) => value(inner, v, path),
        _ => value(ty, val, path),
    }
}

fn long(n: i64) -> RestrictedExpression {
    RestrictedExpression::new_long(n)
}

/// The Cedar value of `val`, of WIT type `ty`.
pub fn value(ty: &ValueType, val: &Val, path: &str) -> Result<Option<RestrictedExpression>, String> {
    let mismatch = || format!("{path}: the value does not match its type (a bug)");
    Ok(Some(match (ty, val) {
        (ValueType::Bool, Val::Bool(b)) => RestrictedExpression::new_bool(*b),
        (ValueType::S8, Val::S8(n)) => long(i64::from(*n)),
        (ValueType::U8, Val::U8(n)) => long(i64::from(*n)),
        (ValueType::S16, Val::S16(n)) => long(i64::from(*n)),
        (ValueType::U16, Val::U16(n)) => long(i64::from(*n)),
        (ValueType::S32, Val::S32(n)) => long(i64::from(*n)),
        (ValueType::U32, Val::U32(n)) => long(i64::from(*n)),
        (ValueType::S64, Val::S64(n)) => long(*n),
        (ValueType::U64, Val::U64(n)) => long(i64::try_from(*n).map_err(|_| {
            format!(
                "{path} = {n} exceeds {}, the largest integer policies can compare",
                i64::MAX
            )
        })?),
        (ValueType::F32, Val::Float32(f)) => decimal(f64::from(*f), &f.to_string(), path)?,
        (ValueType::F64, Val::Float64(f)) => decimal(
            *f,
            &serde_json::Number::from_f64(*f).map_or_else(|| f.to_string(), |n| n.to_string()),
            path,
        )?,
        (ValueType::Char, Val::Char(c)) => RestrictedExpression::new_string(c.to_string()),
        (ValueType::String, Val::String(s)) => RestrictedExpression::new_string(s.clone()),
        (ValueType::Enum(_), Val::Enum(s)) => RestrictedExpression::new_string(s.clone()),
        (ValueType::List(inner), Val::List(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match value(inner, item, &format!("{path}[{i}]"))? {
                    Some(v) => out.push(v),
                    None => return Ok(None),
                }
            }
            RestrictedExpression::new_set(out)
        }
        (ValueType::Flags(_), Val::Flags(set)) => {
            RestrictedExpression::new_set(set.iter().map(|s| RestrictedExpression::new_string(s.clone())))
        }
        (ValueType::Record(fields), Val::Record(vals)) => {
            let mut out = Vec::new();
            for ((name, t), (_, v)) in fields.iter().zip(vals) {
                if super::schema::cedar_type(t).is_none() {
                    return Ok(None);
                }
                if let Some(x) = attribute(t, v, &format!("{path}.{name}"))? {
                    out.push((attr_name(name), x));
                }
            }
            record(out)?
        }
        (ValueType::Tuple(types), Val::Tuple(vals)) => {
            let mut out = Vec::new();
            for (i, (t, v)) in types.iter().zip(vals).enumerate() {
                match value(t, v, &format!("{path}[{i}]"))? {
                    Some(x) => out.push((i.to_string(), x)),
                    None => return Ok(None),
                }
            }
            record(out)?
        }
        (ValueType::Variant(cases), Val::Variant(case, payload)) => {
            if super::schema::cedar_type(ty).is_none() {
                return Ok(None);
            }
            let mut out = vec![("tag".to_string(), RestrictedExpression::new_string(case.clone()))];
            let payload_ty = cases.iter().find(|(n, _)| n == case).and_then(|(_, t)| t.as_ref());
            if let (Some(t), Some(p)) = (payload_ty, payload) {
                match value(t, p, &format!("{path}.{case}"))? {
                    Some(x) => out.push((attr_name(case), x)),
                    None => return Ok(None),
                }
            }
            record(out)?
        }
        (ValueType::Option(inner), Val::Option(v)) => {
            let mut out = Vec::new();
            if let Some(v) = v {
                match value(inner, v, &format!("{path}.value"))? {
                    Some(x) => out.push(("value".to_string(), x)),
                    None => return Ok(None),
                }
            }
            record(out)?
        }
        (ValueType::Result { ok, err }, Val::Result(r)) => {
            let mut out = vec![("is_ok".to_string(), RestrictedExpression::new_bool(r.is_ok()))];
            let (name, t, v) = match r {
                Ok(v) => ("ok", ok, v),
                Err(v) => ("err", err, v),
            };
            if let (Some(t), Some(v)) = (t, v) {
                match value(t, v, &format!("{path}.{name}"))? {
                    Some(x) => out.push((name.to_string(), x)),
                    None => return Ok(None),
                }
            }
            record(out)?
        }
        (ValueType::Unsupported(_), _) => return Ok(None),
        _ => return Err(mismatch()),
    }))
}

fn record(fields: Vec<(String, RestrictedExpression)>) -> Result<RestrictedExpression, String> {
    RestrictedExpression::new_record(fields).map_err(|e| e.to_string())
}

/// A float as a Cedar `decimal`, only when that is exact.
fn decimal(f: f64, shortest: &str, path: &str) -> Result<RestrictedExpression, String> {
    let refuse = || {
        format!(
            "{path} = {shortest} has no exact Cedar decimal (at most 4 fraction digits, magnitude below 922337203685477), so policies cannot compare it"
        )
    };
    if !f.is_finite() || shortest.contains(['e', 'E']) {
        return Err(refuse());
    }
    let (int, frac) = shortest.split_once('.').unwrap_or((shortest, "0"));
    if frac.len() > 4 || int.trim_start_matches('-').len() > 15 || f.abs() >= 922_337_203_685_477.0 {
        return Err(refuse());
    }
    Ok(RestrictedExpression::new_decimal(format!("{int}.{frac}")))
}

/// A fixed UTC offset (`[policy] timezone`): `UTC`, `+01:00`, `-05:30`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offset {
    pub seconds: i64,
}

impl Offset {
    pub fn parse(s: &str) -> Result<Offset, String> {
        if s == "UTC" || s == "Z" {
            return Ok(Offset::default());
        }
        let bad = || format!("timezone {s:?}: write `UTC` or a fixed offset such as `+01:00` or `-05:30`");
        let (sign, rest) = match s.as_bytes().first() {
            Some(b'+') => (1, &s[1..]),
            Some(b'-') => (-1, &s[1..]),
            _ => return Err(bad()),
        };
        let (h, m) = rest.split_once(':').ok_or_else(bad)?;
        let digits = |t: &str| t.len() == 2 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(h) || !digits(m) {
            return Err(bad());
        }
        let h: i64 = h.parse().ok().filter(|h| (0..=14).contains(h)).ok_or_else(bad)?;
        let m: i64 = m.parse().ok().filter(|m| (0..60).contains(m)).ok_or_else(bad)?;
        Ok(Offset {
            seconds: sign * (h * 3600 + m * 60),
        })
    }
}

/// The clock as policies see it (`context.now`), in `offset`'s local time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Now {
    pub unix: i64,
    pub date: String,
    pub hour: i64,
    pub minute: i64,
    /// ISO: Monday 1 … Sunday 7.
    pub weekday: i64,
    /// RFC 3339 UTC, for Cedar's `datetime`.
    pub utc: String,
}

impl Now {
    pub fn at(micros: u64, offset: Offset) -> Now {
        let unix = i64::try_from(micros / 1_000_000).unwrap_or(i64::MAX / 2);
        let local = unix + offset.seconds;
        let days = local.div_euclid(86_400);
        let secs = local.rem_euclid(86_400);
        let (y, m, d) = crate::time::civil_from_days(days);
        // 1970-01-01 was a Thursday (ISO 4).
        let weekday = (days + 3).rem_euclid(7) + 1;
        let mut utc = crate::time::rfc3339_micros(micros);
        // Cedar's datetime takes milliseconds at most.
        utc.replace_range(23..26, "");
        Now {
            unix,
            date: format!("{y:04}-{m:02}-{d:02}"),
            hour: secs / 3600,
            minute: secs % 3600 / 60,
            weekday,
            utc,
        }
    }

    pub fn record(&self, datetime: bool) -> Result<RestrictedExpression, String> {
        let mut fields = vec![
            ("unix".to_string(), long(self.unix)),
            ("date".to_string(), RestrictedExpression::new_string(self.date.clone())),
            ("hour".to_string(), long(self.hour)),
            ("minute".to_string(), long(self.minute)),
            ("weekday".to_string(), long(self.weekday)),
        ];
        if datetime {
            fields.push(("datetime".to_string(), RestrictedExpression::new_datetime(&self.utc)));
        }
        record(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(text: &str) -> Reads {
        let p: cedar_policy::Policy = text.parse().unwrap();
        Reads::of(&p)
    }

    #[test]
    fn reads_are_found_in_the_policy() {
        let r = reads(
            r#"permit(principal, action, resource) when { context.args.amount > 5 && context.args has note && context.now.hour < 9 };"#,
        );
        assert_eq!(
            r.args.iter().map(String::as_str).collect::<Vec<_>>(),
            ["amount", "note"]
        );
        assert!(!r.all_args && r.now && !r.now_datetime);
        let r = reads(r#"permit(principal, action, resource) when { context.args["account_id"] == "x" };"#);
        assert!(r.arg("account_id") && !r.arg("amount"));
        assert!(reads(r#"permit(principal, action, resource) when { context.args == {} };"#).all_args);
        assert!(reads(r#"permit(principal, action, resource) when { context has args };"#).all_args);
        let r = reads(r#"permit(principal, action, resource) when { context.now.datetime > datetime("2026-01-01") };"#);
        assert!(r.now_datetime);
        assert_eq!(reads("permit(principal, action, resource);"), Reads::default());
    }

    #[test]
    fn any_use_of_the_context_is_seen() {
        for text in [
            r#"permit(principal, action, resource) when { context.reason like "*prod*" };"#,
            r#"permit(principal, action, resource) when { context has traceparent };"#,
            r#"forbid(principal, action, resource) unless { context == {} };"#,
            r#"permit(principal, action, resource) when { context.args.x == 1 };"#,
            r#"permit(principal, action, resource) when { { c: context }.c has reason };"#,
            r#"permit(principal, action, resource) when { [context].contains({}) };"#,
        ] {
            assert!(reads(text).context, "{text}");
        }
        for text in [
            "permit(principal, action, resource);",
            r#"permit(principal in Role::"agent", action, resource) when { principal.kind == "context" };"#,
        ] {
            assert!(!reads(text).context, "{text}");
        }
    }

    #[test]
    fn numbers_are_exact_or_refused() {
        let v = |ty: ValueType, val: Val| value(&ty, &val, "args.x");
        assert!(v(ValueType::U64, Val::U64(i64::MAX as u64)).unwrap().is_some());
        let e = v(ValueType::U64, Val::U64(u64::MAX)).unwrap_err();
        assert!(e.contains("18446744073709551615 exceeds 9223372036854775807"), "{e}");
        assert!(v(ValueType::F64, Val::Float64(12.5)).unwrap().is_some());
        assert!(v(ValueType::F64, Val::Float64(0.1)).unwrap().is_some());
        for bad in [1e-7, 0.123_45, f64::NAN, f64::INFINITY, 1e20] {
            assert!(v(ValueType::F64, Val::Float64(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_clock_in_local_time() {
        // 2026-12-04T10:30:00Z is a Friday.
        let at = crate::time::parse_utc("2026-12-04T10:30:00Z").unwrap();
        let n = Now::at(at, Offset::default());
        assert_eq!(
            (n.date.as_str(), n.hour, n.minute, n.weekday),
            ("2026-12-04", 10, 30, 5)
        );
        assert_eq!(n.utc, "2026-12-04T10:30:00.000Z");
        let n = Now::at(at, Offset::parse("+14:00").unwrap());
        assert_eq!((n.date.as_str(), n.hour, n.weekday), ("2026-12-05", 0, 6));
        let n = Now::at(at, Offset::parse("-11:00").unwrap());
        assert_eq!((n.date.as_str(), n.hour, n.weekday), ("2026-12-03", 23, 4));
        for bad in [
            "", "CET", "+1:00", "+15:00", "01:00", "+01:60", "++1:00", "+01:+5", "+é:00",
        ] {
            assert!(Offset::parse(bad).is_err(), "{bad}");
        }
    }
}
