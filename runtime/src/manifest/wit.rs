//! What a component's WIT says beyond the shapes of its values: the names
//! of its types and the doc comments its author wrote.
//!
//! Names come from decoding the component's own type information
//! (`wit-parser`). Doc comments do not survive into a component's types; an
//! action built with `airlock_sdk::generate!` carries them in a
//! `package-docs` custom section (the encoding `wit-component` defines: a
//! version byte, then JSON), which is read here, in the component itself or
//! in one of its core modules.
//!
//! Everything here is descriptive: it never changes what an action may do
//! or how its arguments are checked, and a component without docs, or with
//! docs that cannot be read, simply has none. The text is the author's, so
//! it is treated as untrusted: each string is capped at [`MAX_DOC_BYTES`],
//! and control and bidirectional formatting characters are escaped, so docs
//! cannot rewrite a terminal or reorder text shown to a reviewer.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use wit_parser::{Resolve, Type, TypeDefKind, TypeId, TypeOwner, WorldId, WorldItem, WorldKey};

/// Largest `package-docs` section read; a larger one is ignored.
pub const MAX_SECTION_BYTES: usize = 1024 * 1024;
/// Longest doc string kept; longer ones are cut at a character boundary.
pub const MAX_DOC_BYTES: usize = 4096;
/// How deep schemas are annotated (types nest at most this deep anyway).
const MAX_DEPTH: usize = crate::values::MAX_TYPE_DEPTH;

/// The decoded WIT of one component and its docs.
#[derive(Debug)]
pub struct ComponentWit {
    resolve: Resolve,
    world: WorldId,
    docs: PackageDocs,
    /// The `package-docs` world whose functions match the component's.
    world_docs: Option<WorldDocs>,
}

/// One exported function as its WIT declares it.
#[derive(Debug, Clone)]
pub struct FunctionWit {
    wit: Arc<ComponentWit>,
    func: wit_parser::Function,
    /// The interface it is exported from, for its docs.
    interface: Option<String>,
}

impl ComponentWit {
    /// Decode `bytes`. `None` when the component's types cannot be decoded
    /// (then it is described by its value types alone).
    pub fn read(bytes: &[u8]) -> Option<Arc<ComponentWit>> {
        // wit-parser is fuzzed upstream; a panic on hostile bytes must still
        // not take the host down.
        let decoded = std::panic::catch_unwind(|| wit_parser::decoding::decode(bytes))
            .ok()?
            .ok()?;
        let wit_parser::decoding::DecodedWasm::Component(resolve, world) = decoded else {
            return None;
        };
        let docs = package_docs(bytes).unwrap_or_default();
        let mut wit = ComponentWit {
            resolve,
            world,
            docs,
            world_docs: None,
        };
        wit.world_docs = wit.matching_world_docs();
        Some(Arc::new(wit))
    }

    /// The docs of the component's world, if it has any.
    pub fn world_doc(&self) -> Option<String> {
        self.world_docs.as_ref().and_then(|w| clean(w.docs.as_deref()))
    }

    /// The function exported as `name` (`greet` or `iface#greet`, as the
    /// manifest names them).
    pub fn function(self: &Arc<Self>, name: &str) -> Option<FunctionWit> {
        let world = &self.resolve.worlds[self.world];
        let (func, interface) = match name.split_once('#') {
            None => match world.exports.get(&WorldKey::Name(name.to_string()))? {
                WorldItem::Function(f) => (f.clone(), None),
                _ => return None,
            },
            Some((iface, fname)) => world.exports.iter().find_map(|(key, item)| {
                let WorldItem::Interface { id, .. } = item else {
                    return None;
                };
                if self.resolve.name_world_key(key) != iface {
                    return None;
                }
                let i = &self.resolve.interfaces[*id];
                Some((i.functions.get(fname)?.clone(), i.name.clone()))
            })?,
        };
        Some(FunctionWit {
            wit: self.clone(),
            func,
            interface,
        })
    }

    /// Of the worlds in `package-docs`, the one that documents most of the
    /// component's exported functions and types.
    fn matching_world_docs(&self) -> Option<WorldDocs> {
        let world = &self.resolve.worlds[self.world];
        let names: Vec<String> = world
            .exports
            .keys()
            .chain(world.imports.keys())
            .filter_map(|k| match k {
                WorldKey::Name(n) => Some(n.clone()),
                WorldKey::Interface(_) => None,
            })
            .collect();
        let score = |w: &WorldDocs| {
            names
                .iter()
                .filter(|n| w.func_exports.contains_key(*n) || w.funcs.contains_key(*n) || w.types.contains_key(*n))
                .count()
        };
        let mut best: Option<(&WorldDocs, usize)> = None;
        for w in self.docs.worlds.values() {
            let s = score(w);
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((w, s));
            }
        }
        best.map(|(w, _)| w.clone())
    }

    fn interface_docs(&self, name: &str) -> Option<&InterfaceDocs> {
        self.docs.interfaces.get(name).or_else(|| {
            let w = self.world_docs.as_ref()?;
            w.interfaces.get(name).or_else(|| w.interface_exports.get(name))
        })
    }

    /// The docs of a named type and of its fields or cases.
    fn type_docs(&self, id: TypeId) -> Option<&TypeDocs> {
        let def = &self.resolve.types[id];
        let name = def.name.as_deref()?;
        match def.owner {
            TypeOwner::World(_) => self.world_docs.as_ref()?.types.get(name),
            TypeOwner::Interface(iface) => {
                let iface = self.resolve.interfaces[iface].name.as_deref()?;
                self.interface_docs(iface)?.types.get(name)
            }
            TypeOwner::None => None,
        }
    }

    /// A type as WIT writes it where it is used: `person`, `list<u8>`.
    pub fn type_name(&self, ty: &Type) -> String {
        self.type_name_at(ty, 0)
    }

    fn type_name_at(&self, ty: &Type, depth: usize) -> String {
        let id = match ty {
            Type::Id(id) => *id,
            other => return primitive(other).to_string(),
        };
        let def = &self.resolve.types[id];
        if let Some(name) = &def.name {
            return name.clone();
        }
        if depth > MAX_DEPTH {
            return "…".into();
        }
        let name = |t: &Type| self.type_name_at(t, depth + 1);
        let maybe = |t: &Option<Type>| t.as_ref().map_or_else(|| "_".to_string(), name);
        match &def.kind {
            TypeDefKind::List(t) => format!("list<{}>", name(t)),
            TypeDefKind::FixedLengthList(t, n) => format!("list<{}, {n}>", name(t)),
            TypeDefKind::Map(k, v) => format!("map<{}, {}>", name(k), name(v)),
            TypeDefKind::Option(t) => format!("option<{}>", name(t)),
            TypeDefKind::Result(r) => match (&r.ok, &r.err) {
                (None, None) => "result".into(),
                (ok, err) => format!("result<{}, {}>", maybe(ok), maybe(err)),
            },
            TypeDefKind::Tuple(t) => format!("tuple<{}>", t.types.iter().map(name).collect::<Vec<_>>().join(", ")),
            TypeDefKind::Future(t) => format!("future<{}>", maybe(t)),
            TypeDefKind::Stream(t) => format!("stream<{}>", maybe(t)),
            TypeDefKind::Handle(wit_parser::Handle::Own(r)) => format!("own<{}>", name(&Type::Id(*r))),
            TypeDefKind::Handle(wit_parser::Handle::Borrow(r)) => format!("borrow<{}>", name(&Type::Id(*r))),
            TypeDefKind::Type(t) => name(t),
            other => other.as_str().to_string(),
        }
    }

    /// A named type's definition on one line (`enum style { brief,
    /// detailed }`); `None` for unnamed and primitive types.
    pub fn definition(&self, ty: &Type) -> Option<String> {
        let Type::Id(id) = ty else { return None };
        let def = &self.resolve.types[*id];
        let name = def.name.as_deref()?;
        let n = |t: &Type| self.type_name(t);
        let body = match &def.kind {
            TypeDefKind::Record(r) => format!(
                "record {name} {{ {} }}",
                r.fields
                    .iter()
                    .map(|f| format!("{}: {}", f.name, n(&f.ty)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            TypeDefKind::Variant(v) => format!(
                "variant {name} {{ {} }}",
                v.cases
                    .iter()
                    .map(|c| match &c.ty {
                        Some(t) => format!("{}({})", c.name, n(t)),
                        None => c.name.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            TypeDefKind::Enum(e) => format!(
                "enum {name} {{ {} }}",
                e.cases.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
            TypeDefKind::Flags(f) => format!(
                "flags {name} {{ {} }}",
                f.flags.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
            TypeDefKind::Resource => format!("resource {name}"),
            _ => format!("type {name} = {}", self.type_name_at(&self.unaliased(ty), 1)),
        };
        Some(body)
    }

    fn unaliased(&self, ty: &Type) -> Type {
        let mut ty = *ty;
        for _ in 0..MAX_DEPTH {
            match ty {
                Type::Id(id) => match &self.resolve.types[id].kind {
                    TypeDefKind::Type(inner) if self.resolve.types[id].name.is_some() => ty = *inner,
                    _ => break,
                },
                _ => break,
            }
        }
        ty
    }

    /// Add `title` (the type's name) and `description` (its docs, its
    /// fields' and cases') to `schema`, which [`crate::values::schema`]
    /// made for `ty`.
    pub fn annotate(&self, schema: &mut Value, ty: &Type) {
        self.annotate_at(schema, ty, 0)
    }

    fn annotate_at(&self, schema: &mut Value, ty: &Type, depth: usize) {
        let Type::Id(id) = ty else { return };
        if depth > MAX_DEPTH || !schema.is_object() {
            return;
        }
        let def = &self.resolve.types[*id];
        let docs = self.type_docs(*id);
        let item = |name: &str| docs.and_then(|d| clean(d.items.get(name).map(String::as_str)));
        let mut cases_text = Vec::new();
        match &def.kind {
            TypeDefKind::Type(inner) => self.annotate_at(schema, inner, depth + 1),
            TypeDefKind::Record(r) => {
                for f in &r.fields {
                    if let Some(field) = schema.pointer_mut(&format!("/properties/{}", pointer_token(&f.name))) {
                        self.annotate_at(field, &f.ty, depth + 1);
                        if let Some(doc) = item(&f.name) {
                            describe_first(field, doc);
                        }
                    }
                }
            }
            TypeDefKind::Variant(v) => {
                for (i, c) in v.cases.iter().enumerate() {
                    let Some(case) = schema.pointer_mut(&format!("/oneOf/{i}")) else {
                        continue;
                    };
                    if let Some(t) = &c.ty
                        && let Some(payload) = case.pointer_mut(&format!("/properties/{}", pointer_token(&c.name)))
                    {
                        self.annotate_at(payload, t, depth + 1);
                    }
                    if let Some(doc) = item(&c.name) {
                        case["description"] = doc.into();
                    }
                }
            }
            TypeDefKind::Enum(e) => {
                cases_text = e
                    .cases
                    .iter()
                    .filter_map(|c| Some(format!("`{}`: {}", c.name, item(&c.name)?)))
                    .collect();
            }
            TypeDefKind::Flags(f) => {
                cases_text = f
                    .flags
                    .iter()
                    .filter_map(|c| Some(format!("`{}`: {}", c.name, item(&c.name)?)))
                    .collect();
            }
            TypeDefKind::List(t) | TypeDefKind::FixedLengthList(t, _) => {
                if let Some(items) = schema.get_mut("items") {
                    self.annotate_at(items, t, depth + 1);
                }
            }
            TypeDefKind::Tuple(t) => {
                for (i, t) in t.types.iter().enumerate() {
                    if let Some(s) = schema.pointer_mut(&format!("/prefixItems/{i}")) {
                        self.annotate_at(s, t, depth + 1);
                    }
                }
            }
            TypeDefKind::Option(t) => {
                // `{"oneOf": [null, T]}`, or `[null, {"some": T}]` when T is
                // itself nullable.
                let nested = match self.unaliased(t) {
                    Type::Id(inner) => matches!(self.resolve.types[inner].kind, TypeDefKind::Option(_)),
                    _ => false,
                };
                if let Some(s) = schema.pointer_mut("/oneOf/1") {
                    match s.pointer_mut("/properties/some").filter(|_| nested) {
                        Some(inner) => self.annotate_at(inner, t, depth + 1),
                        None => self.annotate_at(s, t, depth + 1),
                    }
                }
            }
            TypeDefKind::Result(r) => {
                for (i, key, t) in [(0, "ok", &r.ok), (1, "err", &r.err)] {
                    if let Some(t) = t
                        && let Some(s) = schema.pointer_mut(&format!("/oneOf/{i}/properties/{key}"))
                    {
                        self.annotate_at(s, t, depth + 1);
                    }
                }
            }
            _ => {}
        }
        if let Some(name) = &def.name {
            schema["title"] = name.clone().into();
        }
        let mut description: Vec<String> = docs.and_then(|d| clean(d.docs.as_deref())).into_iter().collect();
        if !cases_text.is_empty() {
            description.push(cases_text.join("\n"));
        }
        if !description.is_empty() {
            schema["description"] = description.join("\n\n").into();
        }
    }
}

impl FunctionWit {
    /// The function's doc comment.
    pub fn doc(&self) -> Option<String> {
        let docs = match &self.interface {
            None => {
                let w = self.wit.world_docs.as_ref()?;
                w.func_exports
                    .get(&self.func.name)
                    .or_else(|| w.funcs.get(&self.func.name))
            }
            Some(iface) => self.wit.interface_docs(iface)?.funcs.get(&self.func.name),
        };
        clean(docs?.text())
    }

    /// The description of parameter `name`: a line of the function's doc
    /// comment that starts with `` `name`: `` (or `` - `name`: ``), else
    /// the docs of its named type.
    pub fn param_doc(&self, name: &str) -> Option<String> {
        let doc = self.doc();
        let from_line = doc.as_deref().and_then(|d| param_line(d, name));
        from_line.or_else(|| {
            let param = self.func.params.iter().find(|p| p.name == name)?;
            let Type::Id(id) = param.ty else { return None };
            clean(self.wit.type_docs(id)?.docs.as_deref())
        })
    }

    /// The parameters' and result's types as WIT names them.
    pub fn param_type(&self, name: &str) -> Option<&Type> {
        self.func.params.iter().find(|p| p.name == name).map(|p| &p.ty)
    }

    pub fn result_type(&self) -> Option<&Type> {
        self.func.result.as_ref()
    }

    /// The component's decoded WIT.
    pub fn component(&self) -> &ComponentWit {
        &self.wit
    }

    /// `schema` (of the arguments object) with every parameter annotated.
    pub fn annotate_params(&self, schema: &mut Value) {
        for p in &self.func.params {
            if let Some(s) = schema.pointer_mut(&format!("/properties/{}", pointer_token(&p.name))) {
                self.wit.annotate(s, &p.ty);
                if let Some(doc) = self.doc().as_deref().and_then(|d| param_line(d, &p.name)) {
                    describe_first(s, doc);
                }
            }
        }
        if let Some(doc) = self.doc() {
            schema["description"] = doc.into();
        }
    }

    /// The printed result's schema and the error case's, annotated (a
    /// top-level `result<T, E>` prints `T` and turns `E` into the error).
    pub fn annotate_result(&self, result: &mut Value, error: &mut Value) {
        let Some(ty) = self.func.result else { return };
        let top_result = match ty {
            Type::Id(id) => match &self.wit.resolve.types[self.wit.unaliased_id(id)].kind {
                TypeDefKind::Result(r) => Some((r.ok, r.err)),
                _ => None,
            },
            _ => None,
        };
        match top_result {
            Some((ok, err)) => {
                if let Some(ok) = ok {
                    self.wit.annotate(result, &ok);
                }
                if let Some(err) = err {
                    self.wit.annotate(error, &err);
                }
            }
            None => self.wit.annotate(result, &ty),
        }
    }
}

impl ComponentWit {
    fn unaliased_id(&self, id: TypeId) -> TypeId {
        match self.unaliased(&Type::Id(id)) {
            Type::Id(id) => id,
            _ => id,
        }
    }
}

/// Put `doc` (of a field or parameter) before the description its type
/// already gave `schema`.
fn describe_first(schema: &mut Value, doc: String) {
    let text = match schema.get("description").and_then(Value::as_str) {
        Some(of_type) if schema.get("title").is_some() => format!("{doc}\n\n{of_type}"),
        _ => doc,
    };
    schema["description"] = text.into();
}

/// `name` in a JSON Pointer.
fn pointer_token(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// The text after `` `name`: `` on a line of `doc`.
fn param_line(doc: &str, name: &str) -> Option<String> {
    let tick = format!("`{name}`");
    doc.lines().find_map(|line| {
        let line = line.trim_start();
        let line = line
            .strip_prefix("- ")
            .or_else(|| line.strip_prefix("* "))
            .unwrap_or(line);
        let rest = line.strip_prefix(&tick)?.trim_start();
        let rest = rest
            .strip_prefix(':')
            .or_else(|| rest.strip_prefix('-'))
            .or_else(|| rest.strip_prefix('—'))?;
        let text = rest.trim();
        (!text.is_empty()).then(|| text.to_string())
    })
}

fn primitive(ty: &Type) -> &'static str {
    match ty {
        Type::Bool => "bool",
        Type::U8 => "u8",
        Type::U16 => "u16",
        Type::U32 => "u32",
        Type::U64 => "u64",
        Type::S8 => "s8",
        Type::S16 => "s16",
        Type::S32 => "s32",
        Type::S64 => "s64",
        Type::F32 => "f32",
        Type::F64 => "f64",
        Type::Char => "char",
        Type::String => "string",
        Type::ErrorContext => "error-context",
        Type::Id(_) => "type",
    }
}

/// A doc string safe to show anywhere: at most [`MAX_DOC_BYTES`], with
/// control characters (but newlines and tabs) and bidirectional formatting
/// characters escaped; `None` when empty.
pub fn clean(doc: Option<&str>) -> Option<String> {
    let doc = doc?.trim();
    if doc.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(doc.len().min(MAX_DOC_BYTES));
    for c in doc.chars() {
        if out.len() >= MAX_DOC_BYTES {
            out.push('…');
            break;
        }
        if (c.is_control() && c != '\n' && c != '\t') || crate::values::is_bidi_format(c) {
            let _ = write!(out, "{}", c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// The first `package-docs` custom section, in the component or one of its
/// core modules.
fn package_docs(bytes: &[u8]) -> Option<PackageDocs> {
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { return None };
        if let wasmparser::Payload::CustomSection(section) = payload
            && section.name() == "package-docs"
        {
            let data = section.data();
            if data.len() > MAX_SECTION_BYTES {
                return None;
            }
            // Version 0 and 1 share the JSON shape this reads.
            let (&version, json) = data.split_first()?;
            if version > 1 {
                return None;
            }
            return serde_json::from_slice(json).ok();
        }
    }
    None
}

/// The parts of `package-docs` this reads (unknown members are ignored).
#[derive(Debug, Default, Clone, Deserialize)]
struct PackageDocs {
    #[serde(default)]
    worlds: BTreeMap<String, WorldDocs>,
    #[serde(default)]
    interfaces: BTreeMap<String, InterfaceDocs>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct WorldDocs {
    #[serde(default)]
    docs: Option<String>,
    #[serde(default)]
    interfaces: BTreeMap<String, InterfaceDocs>,
    #[serde(default)]
    interface_exports: BTreeMap<String, InterfaceDocs>,
    #[serde(default)]
    types: BTreeMap<String, TypeDocs>,
    #[serde(default)]
    funcs: BTreeMap<String, FuncDocs>,
    #[serde(default)]
    func_exports: BTreeMap<String, FuncDocs>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct InterfaceDocs {
    #[serde(default)]
    funcs: BTreeMap<String, FuncDocs>,
    #[serde(default)]
    types: BTreeMap<String, TypeDocs>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct TypeDocs {
    #[serde(default)]
    docs: Option<String>,
    #[serde(default)]
    items: BTreeMap<String, String>,
}

/// A function's docs: a bare string (format 0) or `{"docs": ...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum FuncDocs {
    Text(Option<String>),
    Full {
        #[serde(default)]
        docs: Option<String>,
    },
}

impl FuncDocs {
    fn text(&self) -> Option<&str> {
        match self {
            FuncDocs::Text(t) | FuncDocs::Full { docs: t } => t.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_lines_are_found_in_the_function_docs() {
        let doc = "Open a ticket.\n\n`ticket`: what to open.\n- `api` - the base URL\n* `n` — how many";
        assert_eq!(param_line(doc, "ticket").as_deref(), Some("what to open."));
        assert_eq!(param_line(doc, "api").as_deref(), Some("the base URL"));
        assert_eq!(param_line(doc, "n").as_deref(), Some("how many"));
        assert_eq!(param_line(doc, "other"), None);
        assert_eq!(param_line("`ticket` is great", "ticket"), None);
    }

    #[test]
    fn docs_are_capped_and_cannot_rewrite_a_terminal() {
        assert_eq!(clean(Some("  \n ")), None);
        let shown = clean(Some("red\u{1b}[31m text\u{202e}evil\nnext")).unwrap();
        assert!(!shown.contains('\u{1b}') && !shown.contains('\u{202e}'), "{shown}");
        assert!(shown.contains("\\u{1b}") && shown.contains("\\u{202e}") && shown.contains('\n'));
        let long = clean(Some(&"é".repeat(MAX_DOC_BYTES))).unwrap();
        assert!(long.len() <= MAX_DOC_BYTES + 4 && long.ends_with('…'));
    }

    #[test]
    fn function_docs_read_both_section_formats() {
        let v0: FuncDocs = serde_json::from_str(r#""plain""#).unwrap();
        assert_eq!(v0.text(), Some("plain"));
        let v1: FuncDocs = serde_json::from_str(r#"{"docs": "full", "stability": {"stable": {}}}"#).unwrap();
        assert_eq!(v1.text(), Some("full"));
    }
}
