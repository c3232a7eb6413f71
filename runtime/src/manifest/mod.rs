//! Capability manifests: what a component asks for and what it offers,
//! read from the component without running it.
//!
//! The value types come from wasmtime; names and doc comments from the
//! component's WIT ([`wit`]), when it can be decoded.

pub mod diff;
mod digest;
pub mod wit;

pub use digest::Digest;

use crate::capabilities::catalog::{self, CapabilityKind, ImportClass};
use crate::values::{self, TypeTooDeep, ValueType};
use serde_json::{Value, json};
use std::sync::Arc;
use wasmtime::Engine;
use wasmtime::component::types::{ComponentFunc, ComponentItem};
use wasmtime::component::{Component, ComponentExportIndex};
use wit::{ComponentWit, FunctionWit};

/// Version tag of the `--json` manifest format.
pub const MANIFEST_FORMAT: &str = "airlock.manifest/v1";

/// One import of a component.
#[derive(Debug, Clone)]
pub struct ImportEntry {
    pub name: String,
    pub class: ImportClass,
    pub meaning: &'static str,
}

impl ImportEntry {
    pub fn capability(&self) -> Option<CapabilityKind> {
        match self.class {
            ImportClass::Capability(kind) => Some(kind),
            _ => None,
        }
    }
}

/// One exported function and its JSON-facing signature.
#[derive(Debug, Clone)]
pub struct FunctionSig {
    /// Name to invoke it by: `greet`, or `iface#greet` for interface exports.
    pub name: String,
    pub params: Vec<(String, ValueType)>,
    pub result: Option<ValueType>,
    /// Where the function lives in the component.
    pub index: ComponentExportIndex,
    /// Its WIT declaration (type names, docs), when the component's WIT
    /// could be decoded.
    pub wit: Option<FunctionWit>,
}

impl FunctionSig {
    /// Why this function cannot be called with JSON, if it cannot.
    pub fn unsupported(&self) -> Option<&'static str> {
        self.params
            .iter()
            .find_map(|(_, t)| t.unsupported())
            .or_else(|| self.result.as_ref()?.unsupported())
    }

    /// JSON Schema of the arguments object (keyed by parameter names),
    /// with the WIT's type names (`title`) and docs (`description`).
    pub fn params_schema(&self) -> Value {
        let mut schema = values::object_schema(&self.params);
        if let Some(w) = &self.wit {
            w.annotate_params(&mut schema);
        }
        schema
    }

    /// The signature as WIT writes it: `greet(who: person) -> greeting`.
    pub fn signature_text(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(n, t)| format!("{n}: {}", self.param_type_name(n, t)))
            .collect();
        let result = match (&self.result, self.wit.as_ref().and_then(|w| w.result_type())) {
            (_, Some(t)) => format!(
                " -> {}",
                self.wit
                    .as_ref()
                    .map(|w| w.component().type_name(t))
                    .unwrap_or_default()
            ),
            (Some(t), None) => format!(" -> {}", t.wit_name()),
            (None, None) => String::new(),
        };
        format!("{}({}){}", self.name, params.join(", "), result)
    }

    /// The function's doc comment.
    pub fn doc(&self) -> Option<String> {
        self.wit.as_ref()?.doc()
    }

    /// The description of parameter `name` (see [`FunctionWit::param_doc`]).
    pub fn param_doc(&self, name: &str) -> Option<String> {
        self.wit.as_ref()?.param_doc(name)
    }

    /// A parameter's type as WIT names it (`person`), else its shape.
    fn param_type_name(&self, name: &str, ty: &ValueType) -> String {
        self.wit
            .as_ref()
            .and_then(|w| Some(w.component().type_name(w.param_type(name)?)))
            .unwrap_or_else(|| ty.wit_name())
    }

    /// Schema of the printed result: a top-level `result<T, E>` prints `T`
    /// and turns `E` into an error, so the two are described separately.
    pub fn result_schemas(&self) -> (Value, Value) {
        let (mut result, mut error) = self.plain_result_schemas();
        if let Some(w) = &self.wit {
            w.annotate_result(&mut result, &mut error);
        }
        (result, error)
    }

    fn plain_result_schemas(&self) -> (Value, Value) {
        match &self.result {
            None => (json!({"type": "null"}), Value::Null),
            Some(ValueType::Result { ok, err }) => {
                let part = |t: &Option<Box<ValueType>>| t.as_deref().map_or(json!({"type": "null"}), values::schema);
                (part(ok), part(err))
            }
            Some(t) => (values::schema(t), Value::Null),
        }
    }
}

/// What a component imports and exports.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub digest: Digest,
    pub size: u64,
    pub imports: Vec<ImportEntry>,
    pub functions: Vec<FunctionSig>,
    /// The component's decoded WIT, when it could be decoded.
    pub wit: Option<Arc<ComponentWit>>,
    /// The key ids (hex) of the signatures it carries; `None` if unsigned.
    pub signatures: Option<Vec<String>>,
}

impl Manifest {
    /// Read the manifest of a compiled component; `bytes` are the ones it
    /// was compiled from (for its WIT names and docs).
    pub fn read(engine: &Engine, component: &Component, bytes: &[u8]) -> Result<Manifest, TypeTooDeep> {
        let digest = Digest::of(bytes);
        let size = bytes.len() as u64;
        let wit = ComponentWit::read(bytes);
        let ty = component.component_type();
        let imports = ty
            .imports(engine)
            .map(|(name, ext)| {
                let c = catalog::classify(name, matches!(ext.ty, ComponentItem::ComponentInstance(_)));
                ImportEntry {
                    name: name.to_string(),
                    class: c.class,
                    meaning: c.meaning,
                }
            })
            .collect();
        let mut functions = Vec::new();
        for (name, ext) in ty.exports(engine) {
            match ext.ty {
                ComponentItem::ComponentFunc(f) => {
                    if let Some(index) = component.get_export_index(None, name) {
                        functions.push(signature(name.to_string(), &f, index)?);
                    }
                }
                ComponentItem::ComponentInstance(inst) => {
                    let Some(inst_index) = component.get_export_index(None, name) else {
                        continue;
                    };
                    for (fname, fext) in inst.exports(engine) {
                        if let ComponentItem::ComponentFunc(f) = fext.ty
                            && let Some(index) = component.get_export_index(Some(&inst_index), fname)
                        {
                            functions.push(signature(format!("{name}#{fname}"), &f, index)?);
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(w) = &wit {
            for f in &mut functions {
                f.wit = w.function(&f.name);
            }
        }
        Ok(Manifest {
            digest,
            size,
            imports,
            functions,
            wit,
            signatures: crate::signing::signature_key_ids(bytes),
        })
    }

    /// The component's description: its world's doc comment.
    pub fn description(&self) -> Option<String> {
        self.wit.as_ref()?.world_doc()
    }

    pub fn function(&self, name: &str) -> Option<&FunctionSig> {
        self.functions.iter().find(|f| f.name == name)
    }

    /// Names of every exported function, for error messages.
    pub fn function_names(&self) -> String {
        if self.functions.is_empty() {
            return "none".into();
        }
        self.functions
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The stable `--json` form (format [`MANIFEST_FORMAT`]).
    pub fn to_json(&self) -> Value {
        json!({
            "format": MANIFEST_FORMAT,
            "digest": self.digest.to_string(),
            "description": self.description(),
            // What the signature section claims; `airlock verify` checks it.
            "signatures": self.signatures.as_ref().map(|ids| ids.iter().map(|id| json!({"key-id": id, "verified": false})).collect::<Vec<_>>()),
            "size": self.size,
            "imports": self.imports.iter().map(|i| json!({
                "name": i.name,
                "class": i.class.name(),
                "capability": i.capability().map(CapabilityKind::key),
                "meaning": i.meaning,
            })).collect::<Vec<_>>(),
            "functions": self.functions.iter().map(|f| {
                let (result, error) = f.result_schemas();
                json!({
                    "name": f.name,
                    "description": f.doc(),
                    "params": f.params_schema(),
                    "result": result,
                    "error": error,
                    "invocable": f.unsupported().is_none(),
                })
            }).collect::<Vec<_>>(),
        })
    }

    /// The human-readable form printed by `airlock inspect`.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "digest  {}", self.digest);
        let _ = writeln!(out, "size    {} bytes", self.size);
        match &self.signatures {
            Some(ids) => {
                let _ = writeln!(
                    out,
                    "signed  claims key id {} (unverified: `airlock verify --key PUBLIC_KEY` checks it)",
                    ids.join(", ")
                );
            }
            None => {
                let _ = writeln!(out, "signed  no");
            }
        }
        let _ = writeln!(out, "imports ({})", self.imports.len());
        for i in &self.imports {
            let class = match i.class {
                ImportClass::Capability(k) => format!("capability:{k}"),
                other => other.name().to_string(),
            };
            let _ = writeln!(out, "  {:<40} {:<18} {}", i.name, class, i.meaning);
        }
        if let Some(doc) = self.description() {
            let _ = writeln!(out, "about");
            for line in doc.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        let _ = writeln!(out, "functions ({})", self.functions.len());
        for f in &self.functions {
            let _ = writeln!(out, "  {}", f.signature_text());
            if let Some(doc) = f.doc() {
                for line in doc.lines() {
                    let _ = writeln!(out, "    {line}");
                }
            }
            if let Some(w) = &f.wit {
                let wit = w.component();
                for (n, _) in &f.params {
                    let Some(ty) = w.param_type(n) else { continue };
                    match (wit.definition(ty), f.param_doc(n)) {
                        (None, None) => {}
                        (definition, Some(doc)) => {
                            let definition = definition.unwrap_or_else(|| wit.type_name(ty));
                            let _ = writeln!(out, "    {n}: {definition}\n      {}", doc.replace('\n', "\n      "));
                        }
                        (Some(definition), None) => {
                            let _ = writeln!(out, "    {n}: {definition}");
                        }
                    }
                }
                if let Some(definition) = w.result_type().and_then(|t| wit.definition(t)) {
                    let _ = writeln!(out, "    returns {definition}");
                }
            }
            let (result_schema, _) = f.result_schemas();
            let _ = writeln!(out, "    params schema: {}", f.params_schema());
            let _ = writeln!(out, "    result schema: {result_schema}");
            if let Some(what) = f.unsupported() {
                let _ = writeln!(out, "    not invocable with JSON: uses `{what}` values");
            }
        }
        out
    }
}

fn signature(name: String, f: &ComponentFunc, index: ComponentExportIndex) -> Result<FunctionSig, TypeTooDeep> {
    let params = f
        .params()
        .map(|(n, t)| Ok((n.to_string(), ValueType::from_wasmtime(&t)?)))
        .collect::<Result<_, TypeTooDeep>>()?;
    let result = f.results().next().map(|t| ValueType::from_wasmtime(&t)).transpose()?;
    Ok(FunctionSig {
        name,
        params,
        result,
        index,
        wit: None,
    })
}
