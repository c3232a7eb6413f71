//! [`ValueType`]: the WIT types airlock can carry across its JSON boundary.
//!
//! Component types are read from wasmtime once, when a component is loaded,
//! and converted into this owned tree. Everything past that point (argument
//! parsing, result printing, JSON Schema) works on `ValueType` alone, so it
//! can be tested without a component.

use wasmtime::component::types::Type;

/// How deeply types may nest before airlock refuses the component.
///
/// Conversions between JSON and Wasm values recurse over the type; this
/// bound keeps a hostile component's type from exhausting the host stack.
pub const MAX_TYPE_DEPTH: usize = 64;

/// A WIT value type, as far as the JSON mapping is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueType {
    Bool,
    S8,
    U8,
    S16,
    U16,
    S32,
    U32,
    S64,
    U64,
    F32,
    F64,
    Char,
    String,
    List(Box<ValueType>),
    Record(Vec<(String, ValueType)>),
    Tuple(Vec<ValueType>),
    Variant(Vec<(String, Option<ValueType>)>),
    Enum(Vec<String>),
    Option(Box<ValueType>),
    Result {
        ok: Option<Box<ValueType>>,
        err: Option<Box<ValueType>>,
    },
    Flags(Vec<String>),
    /// A type with no JSON form (resources, futures, streams, ...). A
    /// function that uses one is listed by `inspect` but cannot be invoked.
    Unsupported(&'static str),
}

/// A component's type nests deeper than [`MAX_TYPE_DEPTH`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("a WIT type nests more than {MAX_TYPE_DEPTH} levels deep")]
pub struct TypeTooDeep;

impl ValueType {
    /// Convert a wasmtime component type into a `ValueType`.
    pub fn from_wasmtime(ty: &Type) -> Result<ValueType, TypeTooDeep> {
        Self::convert(ty, 0)
    }

    fn convert(ty: &Type, depth: usize) -> Result<ValueType, TypeTooDeep> {
        if depth > MAX_TYPE_DEPTH {
            return Err(TypeTooDeep);
        }
        let inner = |t: &Type| Self::convert(t, depth + 1);
        Ok(match ty {
            Type::Bool => ValueType::Bool,
            Type::S8 => ValueType::S8,
            Type::U8 => ValueType::U8,
            Type::S16 => ValueType::S16,
            Type::U16 => ValueType::U16,
            Type::S32 => ValueType::S32,
            Type::U32 => ValueType::U32,
            Type::S64 => ValueType::S64,
            Type::U64 => ValueType::U64,
            Type::Float32 => ValueType::F32,
            Type::Float64 => ValueType::F64,
            Type::Char => ValueType::Char,
            Type::String => ValueType::String,
            Type::List(l) => ValueType::List(Box::new(inner(&l.ty())?)),
            Type::Record(r) => ValueType::Record(
                r.fields()
                    .map(|f| Ok((f.name.to_string(), inner(&f.ty)?)))
                    .collect::<Result<_, _>>()?,
            ),
            Type::Tuple(t) => ValueType::Tuple(t.types().map(|t| inner(&t)).collect::<Result<_, _>>()?),
            Type::Variant(v) => ValueType::Variant(
                v.cases()
                    .map(|c| Ok((c.name.to_string(), c.ty.as_ref().map(inner).transpose()?)))
                    .collect::<Result<_, _>>()?,
            ),
            Type::Enum(e) => ValueType::Enum(e.names().map(str::to_string).collect()),
            Type::Option(o) => ValueType::Option(Box::new(inner(&o.ty())?)),
            Type::Result(r) => ValueType::Result {
                ok: r.ok().as_ref().map(inner).transpose()?.map(Box::new),
                err: r.err().as_ref().map(inner).transpose()?.map(Box::new),
            },
            Type::Flags(f) => ValueType::Flags(f.names().map(str::to_string).collect()),
            Type::Own(_) | Type::Borrow(_) => ValueType::Unsupported("resource"),
            Type::Future(_) => ValueType::Unsupported("future"),
            Type::Stream(_) => ValueType::Unsupported("stream"),
            Type::ErrorContext => ValueType::Unsupported("error-context"),
            Type::Map(_) => ValueType::Unsupported("map"),
            Type::FixedLengthList(_) => ValueType::Unsupported("fixed-length list"),
        })
    }

    /// The first type inside `self` that has no JSON form, if any.
    pub fn unsupported(&self) -> Option<&'static str> {
        match self {
            ValueType::Unsupported(what) => Some(what),
            ValueType::List(t) | ValueType::Option(t) => t.unsupported(),
            ValueType::Record(fields) => fields.iter().find_map(|(_, t)| t.unsupported()),
            ValueType::Tuple(ts) => ts.iter().find_map(ValueType::unsupported),
            ValueType::Variant(cases) => cases
                .iter()
                .find_map(|(_, t)| t.as_ref().and_then(ValueType::unsupported)),
            ValueType::Result { ok, err } => ok
                .as_deref()
                .and_then(ValueType::unsupported)
                .or_else(|| err.as_deref().and_then(ValueType::unsupported)),
            _ => None,
        }
    }

    /// Whether JSON `null` is a valid value of this type. An `option` whose
    /// payload is itself nullable needs the `{"some": v}` form to stay
    /// unambiguous.
    pub fn is_nullable(&self) -> bool {
        matches!(self, ValueType::Option(_))
    }

    /// The WIT spelling of this type, for error messages and docs.
    pub fn wit_name(&self) -> String {
        match self {
            ValueType::Bool => "bool".into(),
            ValueType::S8 => "s8".into(),
            ValueType::U8 => "u8".into(),
            ValueType::S16 => "s16".into(),
            ValueType::U16 => "u16".into(),
            ValueType::S32 => "s32".into(),
            ValueType::U32 => "u32".into(),
            ValueType::S64 => "s64".into(),
            ValueType::U64 => "u64".into(),
            ValueType::F32 => "f32".into(),
            ValueType::F64 => "f64".into(),
            ValueType::Char => "char".into(),
            ValueType::String => "string".into(),
            ValueType::List(t) => format!("list<{}>", t.wit_name()),
            ValueType::Record(_) => "record".into(),
            ValueType::Tuple(ts) => {
                let inner: Vec<_> = ts.iter().map(ValueType::wit_name).collect();
                format!("tuple<{}>", inner.join(", "))
            }
            ValueType::Variant(_) => "variant".into(),
            ValueType::Enum(_) => "enum".into(),
            ValueType::Option(t) => format!("option<{}>", t.wit_name()),
            ValueType::Result { ok, err } => {
                let part = |t: &Option<Box<ValueType>>| t.as_ref().map_or("_".to_string(), |t| t.wit_name());
                format!("result<{}, {}>", part(ok), part(err))
            }
            ValueType::Flags(_) => "flags".into(),
            ValueType::Unsupported(what) => (*what).into(),
        }
    }
}
