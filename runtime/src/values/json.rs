//! The JSON mapping between component values and JSON documents.
//!
//! | WIT | JSON |
//! |---|---|
//! | `bool` | `true` / `false` |
//! | `s8` … `u64` | integer, exact over the type's whole range, range-checked |
//! | `f32`, `f64` | number; NaN and infinities as `"NaN"`, `"inf"`, `"-inf"` |
//! | `char` | one-character string |
//! | `string` | string |
//! | `list<T>`, `tuple<…>` | array |
//! | `record` | object keyed by WIT field names; missing `option` fields are `none` |
//! | `option<T>` | `null` or the value; `{"some": v}` when `T` is itself an `option` |
//! | `result<T, E>` | `{"ok": v}` or `{"err": e}` (`null` payload when absent) |
//! | `variant` | `{"case": payload}`, or `"case"` when the case has no payload |
//! | `enum` | `"case"` |
//! | `flags` | array of the names of the set flags |
//!
//! Parsing is strict: unknown record fields, wrong types and out-of-range
//! integers are refused with the path of the offending value.

use super::types::ValueType;
use serde_json::{Map, Number, Value};
use std::fmt;
use wasmtime::component::Val;

/// A JSON value that does not fit the WIT type it was given for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct JsonMismatch {
    /// Where in the document the problem is, e.g. `args.who.tags[2]`.
    pub path: String,
    /// What was expected and what was found.
    pub message: String,
}

/// A location inside a JSON document, built up while descending.
#[derive(Debug, Clone)]
pub struct JsonPath(Vec<Segment>);

#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

impl JsonPath {
    /// A path rooted at `root` (for example `args` or `result`).
    pub fn root(root: &str) -> JsonPath {
        JsonPath(vec![Segment::Key(root.to_string())])
    }

    fn key(&self, key: &str) -> JsonPath {
        let mut p = self.clone();
        p.0.push(Segment::Key(key.to_string()));
        p
    }

    fn index(&self, i: usize) -> JsonPath {
        let mut p = self.clone();
        p.0.push(Segment::Index(i));
        p
    }

    fn mismatch(&self, message: impl Into<String>) -> JsonMismatch {
        JsonMismatch {
            path: self.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) if i == 0 => write!(f, "{k}")?,
                Segment::Key(k) if is_identifier(k) => write!(f, ".{k}")?,
                Segment::Key(k) => write!(f, "[{}]", Value::String(k.clone()))?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A number as a person wrote it, as far as the parsed value tells: an
/// integer too large for 64 bits is parsed as a float, and printed here as
/// its exact integer value (`18446744073709551616`), not as `1.8446744073709552e19`.
pub fn number_text(n: &serde_json::Number) -> String {
    match n.as_f64() {
        // Only past what i64/u64 hold (an integer literal there was parsed
        // as a float), and not for floats written in exponent form far
        // beyond any integer type.
        Some(f) if n.is_f64() && f.fract() == 0.0 && (9.2e18..1e30).contains(&f.abs()) => format!("{f:.0}"),
        _ => n.to_string(),
    }
}

/// Put back, in an error message about the JSON `text`, the integer
/// literals no 64-bit type holds exactly as they were written:
/// [`number_text`] can only print the float they were rounded to
/// (`18446744073709551617` was read as `18446744073709551616`).
pub fn restore_literals(message: &str, text: &str) -> String {
    let mut message = message.to_string();
    for literal in oversized_integer_literals(text) {
        let Ok(f) = literal.parse::<f64>() else { continue };
        let shown = format!("the number {f:.0}");
        // The whole number only: not the start of a longer one.
        let at = message.match_indices(&shown).map(|(i, _)| i).find(|&i| {
            !message[i + shown.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == '.')
        });
        if let Some(i) = at {
            message.replace_range(i..i + shown.len(), &format!("the number {literal}"));
        }
    }
    message
}

/// The integer literals outside strings in JSON `text` that neither `i64`
/// nor `u64` holds.
fn oversized_integer_literals(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len() && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    i += 1;
                }
                let token = &text[start..i];
                let integer = token.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit());
                if integer && token.parse::<i64>().is_err() && token.parse::<u64>().is_err() {
                    out.push(token);
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// A short description of a JSON value's kind, for error messages.
fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(n) => format!("the number {}", number_text(n)),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Parse `json` as a value of type `ty`.
pub fn from_json(ty: &ValueType, json: &Value, path: &JsonPath) -> Result<Val, JsonMismatch> {
    macro_rules! unsigned {
        ($variant:ident, $t:ty) => {{
            let n = json.as_u64().filter(|_| json.is_u64()).ok_or_else(|| {
                path.mismatch(format!(
                    "expected {} (an integer 0..={}), found {}",
                    ty.wit_name(),
                    <$t>::MAX,
                    kind(json)
                ))
            })?;
            let v = <$t>::try_from(n)
                .map_err(|_| path.mismatch(format!("{n} is out of range for {} (0..={})", ty.wit_name(), <$t>::MAX)))?;
            Val::$variant(v)
        }};
    }
    macro_rules! signed {
        ($variant:ident, $t:ty) => {{
            let out_of_range = || {
                path.mismatch(format!(
                    "{} is out of range for {} ({}..={})",
                    json,
                    ty.wit_name(),
                    <$t>::MIN,
                    <$t>::MAX
                ))
            };
            let n = if json.is_i64() {
                json.as_i64().ok_or_else(out_of_range)?
            } else if json.is_u64() {
                return Err(out_of_range());
            } else {
                return Err(path.mismatch(format!(
                    "expected {} (an integer {}..={}), found {}",
                    ty.wit_name(),
                    <$t>::MIN,
                    <$t>::MAX,
                    kind(json)
                )));
            };
            Val::$variant(<$t>::try_from(n).map_err(|_| out_of_range())?)
        }};
    }

    Ok(match ty {
        ValueType::Bool => Val::Bool(
            json.as_bool()
                .ok_or_else(|| path.mismatch(format!("expected a boolean, found {}", kind(json))))?,
        ),
        ValueType::U8 => unsigned!(U8, u8),
        ValueType::U16 => unsigned!(U16, u16),
        ValueType::U32 => unsigned!(U32, u32),
        ValueType::U64 => unsigned!(U64, u64),
        ValueType::S8 => signed!(S8, i8),
        ValueType::S16 => signed!(S16, i16),
        ValueType::S32 => signed!(S32, i32),
        ValueType::S64 => signed!(S64, i64),
        // f64 -> f32 rounds to nearest, which is exact for every value this
        // mapping itself printed from an f32.
        ValueType::F32 => Val::Float32(float_from_json(json, path, "f32")? as f32),
        ValueType::F64 => Val::Float64(float_from_json(json, path, "f64")?),
        ValueType::Char => {
            let s = json
                .as_str()
                .ok_or_else(|| path.mismatch(format!("expected a one-character string, found {}", kind(json))))?;
            let mut chars = s.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Val::Char(c),
                _ => {
                    return Err(path.mismatch(format!(
                        "expected exactly one character, found a string of {} characters",
                        s.chars().count()
                    )));
                }
            }
        }
        ValueType::String => Val::String(
            json.as_str()
                .ok_or_else(|| path.mismatch(format!("expected a string, found {}", kind(json))))?
                .to_string(),
        ),
        ValueType::List(elem) => {
            let items = json
                .as_array()
                .ok_or_else(|| path.mismatch(format!("expected an array ({}), found {}", ty.wit_name(), kind(json))))?;
            Val::List(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| from_json(elem, v, &path.index(i)))
                    .collect::<Result<_, _>>()?,
            )
        }
        ValueType::Tuple(types) => {
            let items = json.as_array().ok_or_else(|| {
                path.mismatch(format!(
                    "expected an array of {} items ({}), found {}",
                    types.len(),
                    ty.wit_name(),
                    kind(json)
                ))
            })?;
            if items.len() != types.len() {
                return Err(path.mismatch(format!(
                    "expected {} items ({}), found {}",
                    types.len(),
                    ty.wit_name(),
                    items.len()
                )));
            }
            Val::Tuple(
                types
                    .iter()
                    .zip(items)
                    .enumerate()
                    .map(|(i, (t, v))| from_json(t, v, &path.index(i)))
                    .collect::<Result<_, _>>()?,
            )
        }
        ValueType::Record(fields) => {
            let obj = json
                .as_object()
                .ok_or_else(|| path.mismatch(format!("expected an object, found {}", kind(json))))?;
            Val::Record(record_from_json(fields, obj, path)?)
        }
        ValueType::Variant(cases) => {
            let (name, payload) = single_case(json, path, cases.iter().map(|(n, _)| n.as_str()))?;
            let Some((case, payload_ty)) = cases.iter().find(|(n, _)| n == name) else {
                return Err(path.mismatch(format!(
                    "unknown case `{name}` (expected one of: {})",
                    join(cases.iter().map(|(n, _)| n.as_str()))
                )));
            };
            let payload = match (payload_ty, payload) {
                (Some(t), Some(v)) => Some(Box::new(from_json(t, v, &path.key(name))?)),
                (Some(_), None) => {
                    return Err(path.mismatch(format!("case `{name}` carries a value: write {{\"{name}\": ...}}")));
                }
                (None, None | Some(Value::Null)) => None,
                (None, Some(v)) => {
                    return Err(path
                        .key(name)
                        .mismatch(format!("case `{name}` carries no value, found {}", kind(v))));
                }
            };
            Val::Variant(case.clone(), payload)
        }
        ValueType::Enum(names) => {
            let s = json.as_str().ok_or_else(|| {
                path.mismatch(format!(
                    "expected one of the strings {}, found {}",
                    join_quoted(names),
                    kind(json)
                ))
            })?;
            if !names.iter().any(|n| n == s) {
                return Err(path.mismatch(format!(
                    "unknown case {:?} (expected one of: {})",
                    s,
                    join(names.iter().map(String::as_str))
                )));
            }
            Val::Enum(s.to_string())
        }
        ValueType::Option(inner) => match json {
            Value::Null => Val::Option(None),
            _ if inner.is_nullable() => {
                let obj = json
                    .as_object()
                    .filter(|o| o.len() == 1 && o.contains_key("some"))
                    .ok_or_else(|| {
                        path.mismatch(format!(
                            "expected null or {{\"some\": ...}} ({}), found {}",
                            ty.wit_name(),
                            kind(json)
                        ))
                    })?;
                Val::Option(Some(Box::new(from_json(inner, &obj["some"], &path.key("some"))?)))
            }
            _ => Val::Option(Some(Box::new(from_json(inner, json, path)?))),
        },
        ValueType::Result { ok, err } => {
            let (name, payload) = single_case(json, path, ["ok", "err"].into_iter())?;
            let payload_ty = match name {
                "ok" => ok,
                "err" => err,
                other => {
                    return Err(path.mismatch(format!(
                        "expected {{\"ok\": ...}} or {{\"err\": ...}}, found key `{other}`"
                    )));
                }
            };
            let payload = match (payload_ty, payload) {
                (Some(t), Some(v)) => Some(Box::new(from_json(t, v, &path.key(name))?)),
                (Some(_), None) => {
                    return Err(path.mismatch(format!("`{name}` carries a value: write {{\"{name}\": ...}}")));
                }
                (None, None | Some(Value::Null)) => None,
                (None, Some(v)) => {
                    return Err(path
                        .key(name)
                        .mismatch(format!("`{name}` carries no value here, found {}", kind(v))));
                }
            };
            Val::Result(if name == "ok" { Ok(payload) } else { Err(payload) })
        }
        ValueType::Flags(names) => {
            let items = json
                .as_array()
                .ok_or_else(|| path.mismatch(format!("expected an array of flag names, found {}", kind(json))))?;
            let mut set: Vec<String> = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let p = path.index(i);
                let s = item
                    .as_str()
                    .ok_or_else(|| p.mismatch(format!("expected a flag name, found {}", kind(item))))?;
                if !names.iter().any(|n| n == s) {
                    return Err(p.mismatch(format!(
                        "unknown flag {:?} (expected one of: {})",
                        s,
                        join(names.iter().map(String::as_str))
                    )));
                }
                if set.iter().any(|n| n == s) {
                    return Err(p.mismatch(format!("flag {s:?} is listed twice")));
                }
                set.push(s.to_string());
            }
            // Keep declaration order so equal flag sets compare equal.
            set.sort_by_key(|s| names.iter().position(|n| n == s));
            Val::Flags(set)
        }
        ValueType::Unsupported(what) => {
            return Err(path.mismatch(format!("values of type `{what}` cannot be passed as JSON")));
        }
    })
}

/// Parse the fields of a record (or a function's named parameters).
pub fn record_from_json(
    fields: &[(String, ValueType)],
    obj: &Map<String, Value>,
    path: &JsonPath,
) -> Result<Vec<(String, Val)>, JsonMismatch> {
    if let Some(unknown) = obj.keys().find(|k| !fields.iter().any(|(n, _)| n == *k)) {
        return Err(path.mismatch(format!(
            "unknown field `{unknown}` (expected {})",
            if fields.is_empty() {
                "no fields".to_string()
            } else {
                format!("one of: {}", join(fields.iter().map(|(n, _)| n.as_str())))
            }
        )));
    }
    fields
        .iter()
        .map(|(name, t)| {
            let val = match obj.get(name) {
                Some(v) => from_json(t, v, &path.key(name))?,
                None if t.is_nullable() => Val::Option(None),
                None => return Err(path.mismatch(format!("missing field `{name}` ({})", t.wit_name()))),
            };
            Ok((name.clone(), val))
        })
        .collect()
}

fn float_from_json(json: &Value, path: &JsonPath, name: &str) -> Result<f64, JsonMismatch> {
    match json {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| path.mismatch(format!("{n} is not representable as {name}"))),
        Value::String(s) if s == "NaN" => Ok(f64::NAN),
        Value::String(s) if s == "inf" => Ok(f64::INFINITY),
        Value::String(s) if s == "-inf" => Ok(f64::NEG_INFINITY),
        other => Err(path.mismatch(format!(
            "expected a number ({name}; or \"NaN\", \"inf\", \"-inf\"), found {}",
            kind(other)
        ))),
    }
}

/// Accept `"case"` or `{"case": payload}`.
fn single_case<'a, 'n>(
    json: &'a Value,
    path: &JsonPath,
    names: impl Iterator<Item = &'n str>,
) -> Result<(&'a str, Option<&'a Value>), JsonMismatch> {
    match json {
        Value::String(s) => Ok((s.as_str(), None)),
        Value::Object(o) if o.len() == 1 => {
            let (k, v) = o.iter().next().expect("object has exactly one entry");
            Ok((k.as_str(), Some(v)))
        }
        other => Err(path.mismatch(format!(
            "expected {{\"<case>\": ...}} or \"<case>\" with a case among: {}, found {}",
            join(names),
            kind(other)
        ))),
    }
}

fn join<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

fn join_quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

/// A value that does not match the type it is printed as. Values produced by
/// wasmtime for a type always match it, so this signals a host bug.
#[derive(Debug, Clone, thiserror::Error)]
#[error("internal error: a {found} value does not match WIT type {expected}")]
pub struct ValueMismatch {
    expected: String,
    found: &'static str,
}

/// Print `val` (of type `ty`) as JSON.
pub fn to_json(ty: &ValueType, val: &Val) -> Result<Value, ValueMismatch> {
    let mismatch = || ValueMismatch {
        expected: ty.wit_name(),
        found: val_kind(val),
    };
    Ok(match (ty, val) {
        (ValueType::Bool, Val::Bool(b)) => Value::Bool(*b),
        (ValueType::S8, Val::S8(n)) => Value::from(*n),
        (ValueType::U8, Val::U8(n)) => Value::from(*n),
        (ValueType::S16, Val::S16(n)) => Value::from(*n),
        (ValueType::U16, Val::U16(n)) => Value::from(*n),
        (ValueType::S32, Val::S32(n)) => Value::from(*n),
        (ValueType::U32, Val::U32(n)) => Value::from(*n),
        (ValueType::S64, Val::S64(n)) => Value::from(*n),
        (ValueType::U64, Val::U64(n)) => Value::from(*n),
        // Print an f32 by its own shortest form ("0.1", not
        // "0.10000000149011612"); parsing it back rounds to the same f32.
        (ValueType::F32, Val::Float32(x)) => float_to_json(x.to_string().parse::<f64>().unwrap_or(f64::from(*x))),
        (ValueType::F64, Val::Float64(x)) => float_to_json(*x),
        (ValueType::Char, Val::Char(c)) => Value::String(c.to_string()),
        (ValueType::String, Val::String(s)) => Value::String(s.clone()),
        (ValueType::List(t), Val::List(items)) => {
            Value::Array(items.iter().map(|v| to_json(t, v)).collect::<Result<_, _>>()?)
        }
        (ValueType::Tuple(ts), Val::Tuple(items)) if ts.len() == items.len() => Value::Array(
            ts.iter()
                .zip(items)
                .map(|(t, v)| to_json(t, v))
                .collect::<Result<_, _>>()?,
        ),
        (ValueType::Record(fields), Val::Record(vals)) if fields.len() == vals.len() => {
            let mut obj = Map::new();
            for ((name, t), (_, v)) in fields.iter().zip(vals) {
                obj.insert(name.clone(), to_json(t, v)?);
            }
            Value::Object(obj)
        }
        (ValueType::Variant(cases), Val::Variant(name, payload)) => {
            let (_, payload_ty) = cases.iter().find(|(n, _)| n == name).ok_or_else(mismatch)?;
            match (payload_ty, payload) {
                (Some(t), Some(v)) => single_key(name, to_json(t, v)?),
                (None, None) => Value::String(name.clone()),
                _ => return Err(mismatch()),
            }
        }
        (ValueType::Enum(_), Val::Enum(name)) => Value::String(name.clone()),
        (ValueType::Option(_), Val::Option(None)) => Value::Null,
        (ValueType::Option(inner), Val::Option(Some(v))) if inner.is_nullable() => {
            single_key("some", to_json(inner, v)?)
        }
        (ValueType::Option(inner), Val::Option(Some(v))) => to_json(inner, v)?,
        (ValueType::Result { ok, err }, Val::Result(r)) => {
            let (key, t, payload) = match r {
                Ok(p) => ("ok", ok, p),
                Err(p) => ("err", err, p),
            };
            let v = match (t, payload) {
                (Some(t), Some(v)) => to_json(t, v)?,
                (None, None) => Value::Null,
                _ => return Err(mismatch()),
            };
            single_key(key, v)
        }
        (ValueType::Flags(_), Val::Flags(set)) => Value::Array(set.iter().cloned().map(Value::String).collect()),
        _ => return Err(mismatch()),
    })
}

fn single_key(key: &str, v: Value) -> Value {
    let mut obj = Map::new();
    obj.insert(key.to_string(), v);
    Value::Object(obj)
}

fn float_to_json(x: f64) -> Value {
    match Number::from_f64(x) {
        Some(n) => Value::Number(n),
        None if x.is_nan() => Value::String("NaN".into()),
        None if x > 0.0 => Value::String("inf".into()),
        None => Value::String("-inf".into()),
    }
}

fn val_kind(v: &Val) -> &'static str {
    match v {
        Val::Bool(_) => "bool",
        Val::S8(_) => "s8",
        Val::U8(_) => "u8",
        Val::S16(_) => "s16",
        Val::U16(_) => "u16",
        Val::S32(_) => "s32",
        Val::U32(_) => "u32",
        Val::S64(_) => "s64",
        Val::U64(_) => "u64",
        Val::Float32(_) => "f32",
        Val::Float64(_) => "f64",
        Val::Char(_) => "char",
        Val::String(_) => "string",
        Val::List(_) => "list",
        Val::Map(_) => "map",
        Val::Record(_) => "record",
        Val::Tuple(_) => "tuple",
        Val::Variant(..) => "variant",
        Val::Enum(_) => "enum",
        Val::Option(_) => "option",
        Val::Result(_) => "result",
        Val::Flags(_) => "flags",
        Val::Resource(_) => "resource",
        Val::Future(_) => "future",
        Val::Stream(_) => "stream",
        Val::ErrorContext(_) => "error-context",
        Val::FixedLengthList(_) => "fixed-length list",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_integers_are_printed_as_written() {
        let n: Value = serde_json::from_str("18446744073709551616").unwrap();
        assert_eq!(kind(&n), "the number 18446744073709551616");
        let n: Value = serde_json::from_str("-1e300").unwrap();
        assert_eq!(kind(&n), "the number -1e+300");
        let n: Value = serde_json::from_str("1e15").unwrap();
        assert_eq!(kind(&n), "the number 1000000000000000.0");
        let n: Value = serde_json::from_str("1.5").unwrap();
        assert_eq!(kind(&n), "the number 1.5");
        // 2^64 + 1 rounds to 2^64: only the text says what was written.
        let text =
            r#"{"s": "18446744073709551617 in a string", "n": 18446744073709551617, "m": -99999999999999999999}"#;
        assert_eq!(
            oversized_integer_literals(text),
            vec!["18446744073709551617", "-99999999999999999999"]
        );
        let message = "expected u64 (an integer 0..=18446744073709551615), found the number 18446744073709551616";
        assert_eq!(
            restore_literals(message, text),
            "expected u64 (an integer 0..=18446744073709551615), found the number 18446744073709551617"
        );
        assert_eq!(restore_literals("no numbers", r#"{"a": "\\\"", "b": 1}"#), "no numbers");
    }
}
