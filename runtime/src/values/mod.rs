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
