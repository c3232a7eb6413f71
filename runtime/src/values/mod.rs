//! Values crossing the JSON boundary: argument parsing, result printing and
//! the JSON Schema of both, all driven by [`ValueType`].

mod json;
mod schema;
mod types;

pub use json::{
    JsonMismatch, JsonPath, ValueMismatch, from_json, number_text, record_from_json, restore_literals, to_json,
};
pub use schema::{object as object_schema, schema};
pub use types::{MAX_TYPE_DEPTH, TypeTooDeep, ValueType};

/// Whether `c` is a bidirectional formatting character: text that holds
/// one can read in another order than it runs, so wherever guest or caller
/// text is shown to a person it is escaped (with the control characters).
pub fn is_bidi_format(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
}

/// `value` with object keys sorted at every level: one byte form per value.
pub fn canonical(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            serde_json::Value::Object(keys.into_iter().map(|k| (k.clone(), canonical(&map[k]))).collect())
        }
        serde_json::Value::Array(items) => serde_json::Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}
