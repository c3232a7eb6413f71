//! JSON arguments against arbitrary WIT types: the type is built from the
//! input (every kind `values::ValueType` has, nested up to its depth
//! limit), the JSON is the rest of the input.
//!
//! Beyond "no panic": a value accepted from JSON prints back to JSON, which
//! is accepted again as the same value (printing is a fixed point).
#![no_main]

use airlock::values::{JsonPath, MAX_TYPE_DEPTH, ValueType, from_json, schema, to_json};
use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 8] = ["a", "b", "id", "name", "amount-cents", "ok", "x-y", "value"];

fn names(u: &mut Unstructured, min: usize) -> Result<Vec<String>> {
    let n = u.int_in_range(min..=4)?;
    let mut out: Vec<String> = Vec::new();
    for _ in 0..n {
        let name = if u.ratio(1, 8)? {
            u.arbitrary::<String>()?
        } else {
            (*u.choose(&NAMES)?).to_string()
        };
        if !out.contains(&name) {
            out.push(name);
        }
    }
    if out.len() < min {
        out.push("fallback".into());
    }
    Ok(out)
}

fn value_type(u: &mut Unstructured, depth: usize) -> Result<ValueType> {
    let leaf = depth + 1 >= MAX_TYPE_DEPTH || u.is_empty();
    let kinds = if leaf { 13 } else { 22 };
    Ok(match u.choose_index(kinds)? {
        0 => ValueType::Bool,
        1 => ValueType::S8,
        2 => ValueType::U8,
        3 => ValueType::S16,
        4 => ValueType::U16,
        5 => ValueType::S32,
        6 => ValueType::U32,
        7 => ValueType::S64,
        8 => ValueType::U64,
        9 => ValueType::F32,
        10 => ValueType::F64,
        11 => ValueType::Char,
        12 => ValueType::String,
        13 => ValueType::List(Box::new(value_type(u, depth + 1)?)),
        14 => ValueType::Record(
            names(u, 1)?
                .into_iter()
                .map(|n| Ok((n, value_type(u, depth + 1)?)))
                .collect::<Result<_>>()?,
        ),
        15 => ValueType::Tuple(
            (0..u.int_in_range(1..=3)?)
                .map(|_| value_type(u, depth + 1))
                .collect::<Result<_>>()?,
        ),
        16 => ValueType::Variant(
            names(u, 1)?
                .into_iter()
                .map(|n| {
                    Ok((
                        n,
                        if u.arbitrary()? {
                            Some(value_type(u, depth + 1)?)
                        } else {
                            None
                        },
                    ))
                })
                .collect::<Result<_>>()?,
        ),
        17 => ValueType::Enum(names(u, 1)?),
        18 => ValueType::Option(Box::new(value_type(u, depth + 1)?)),
        19 => ValueType::Result {
            ok: if u.arbitrary()? {
                Some(Box::new(value_type(u, depth + 1)?))
            } else {
                None
            },
            err: if u.arbitrary()? {
                Some(Box::new(value_type(u, depth + 1)?))
            } else {
                None
            },
        },
        20 => ValueType::Flags(names(u, 0)?),
        _ => ValueType::Unsupported("resource"),
    })
}

fuzz_target!(|data: &[u8]| {
    // The first bytes (up to the first NUL) choose the type; the rest is JSON.
    let (head, json) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(ty) = value_type(&mut Unstructured::new(head), 0) else {
        return;
    };
    let _ = schema(&ty);
    let _ = ty.wit_name();
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    let path = JsonPath::root("args");
    let Ok(value) = from_json(&ty, &json, &path) else {
        return;
    };
    let printed =
        to_json(&ty, &value).unwrap_or_else(|e| panic!("an accepted {} does not print: {e:?}", ty.wit_name()));
    let again = from_json(&ty, &printed, &path)
        .unwrap_or_else(|e| panic!("printed {printed} is not accepted as {}: {e:?}", ty.wit_name()));
    let reprinted = to_json(&ty, &again).expect("prints");
    assert_eq!(printed, reprinted, "printing {} is not a fixed point", ty.wit_name());
});
