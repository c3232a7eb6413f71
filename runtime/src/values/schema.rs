//! JSON Schema (draft 2020-12) for values under the JSON mapping.
//!
//! The schema describes exactly what [`super::json::from_json`] accepts, so
//! an agent can build arguments from it without trial and error.

use super::types::ValueType;
use serde_json::{Value, json};

/// The schema of one value of type `ty`.
pub fn schema(ty: &ValueType) -> Value {
    match ty {
        ValueType::Bool => json!({"type": "boolean"}),
        ValueType::S8 => int(i8::MIN.into(), i8::MAX.into()),
        ValueType::U8 => uint(u8::MAX.into()),
        ValueType::S16 => int(i16::MIN.into(), i16::MAX.into()),
        ValueType::U16 => uint(u16::MAX.into()),
        ValueType::S32 => int(i32::MIN.into(), i32::MAX.into()),
        ValueType::U32 => uint(u32::MAX.into()),
        ValueType::S64 => int(i64::MIN, i64::MAX),
        ValueType::U64 => uint(u64::MAX),
        ValueType::F32 | ValueType::F64 => json!({
            "anyOf": [{"type": "number"}, {"enum": ["NaN", "inf", "-inf"]}],
            "description": ty.wit_name(),
        }),
        ValueType::Char => json!({"type": "string", "minLength": 1, "maxLength": 1}),
        ValueType::String => json!({"type": "string"}),
        ValueType::List(t) => json!({"type": "array", "items": schema(t)}),
        ValueType::Tuple(ts) => json!({
            "type": "array",
            "prefixItems": ts.iter().map(schema).collect::<Vec<_>>(),
            "items": false,
            "minItems": ts.len(),
            "maxItems": ts.len(),
        }),
        ValueType::Record(fields) => object(fields),
        ValueType::Variant(cases) => json!({
            "oneOf": cases.iter().map(|(name, payload)| match payload {
                Some(t) => one_key(name, schema(t)),
                None => json!({"const": name}),
            }).collect::<Vec<_>>(),
        }),
        ValueType::Enum(names) => json!({"type": "string", "enum": names}),
        ValueType::Option(inner) if inner.is_nullable() => json!({
            "oneOf": [{"type": "null"}, one_key("some", schema(inner))],
        }),
        ValueType::Option(inner) => json!({"oneOf": [{"type": "null"}, schema(inner)]}),
        ValueType::Result { ok, err } => {
            let part = |t: &Option<Box<ValueType>>| t.as_deref().map_or(json!({"type": "null"}), schema);
            json!({"oneOf": [one_key("ok", part(ok)), one_key("err", part(err))]})
        }
        ValueType::Flags(names) => json!({
            "type": "array",
            "items": {"type": "string", "enum": names},
            "uniqueItems": true,
        }),
        ValueType::Unsupported(what) => json!({"not": {}, "description": format!("`{what}` values have no JSON form")}),
    }
}

/// The schema of an object with the given named members (record fields or
/// function parameters). Members of `option` type may be omitted.
pub fn object(fields: &[(String, ValueType)]) -> Value {
    let properties: serde_json::Map<String, Value> = fields.iter().map(|(name, t)| (name.clone(), schema(t))).collect();
    let required: Vec<&str> = fields
        .iter()
        .filter(|(_, t)| !t.is_nullable())
        .map(|(n, _)| n.as_str())
        .collect();
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

fn int(min: i64, max: i64) -> Value {
    json!({"type": "integer", "minimum": min, "maximum": max})
}

fn uint(max: u64) -> Value {
    json!({"type": "integer", "minimum": 0, "maximum": max})
}

fn one_key(key: &str, value_schema: Value) -> Value {
    json!({
        "type": "object",
        "properties": {key: value_schema},
        "required": [key],
        "additionalProperties": false,
    })
}
