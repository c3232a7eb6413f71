//! Capability manifests: what a component asks for and what it offers,
//! read from the component without running it.

use crate::catalog::{self, CapabilityKind, ImportClass};
use crate::policy::Digest;
use crate::values::{self, TypeTooDeep, ValueType};
use serde_json::{Value, json};
use wasmtime::Engine;
use wasmtime::component::types::{ComponentFunc, ComponentItem};
use wasmtime::component::{Component, ComponentExportIndex};

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
}

impl FunctionSig {
    /// Why this function cannot be called with JSON, if it cannot.
    pub fn unsupported(&self) -> Option<&'static str> {
        self.params
            .iter()
            .find_map(|(_, t)| t.unsupported())
            .or_else(|| self.result.as_ref()?.unsupported())
    }

    /// JSON Schema of the arguments object (keyed by parameter names).
    pub fn params_schema(&self) -> Value {
        values::object_schema(&self.params)
    }

    /// Schema of the printed result: a top-level `result<T, E>` prints `T`
    /// and turns `E` into an error, so the two are described separately.
    pub fn result_schemas(&self) -> (Value, Value) {
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
}

impl Manifest {
    /// Read the manifest of a compiled component.
    pub fn read(engine: &Engine, component: &Component, digest: Digest, size: u64) -> Result<Manifest, TypeTooDeep> {
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
        Ok(Manifest {
            digest,
            size,
            imports,
            functions,
        })
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
                    "params": values::object_schema(&f.params),
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
        let _ = writeln!(out, "imports ({})", self.imports.len());
        for i in &self.imports {
            let class = match i.class {
                ImportClass::Capability(k) => format!("capability:{k}"),
                other => other.name().to_string(),
            };
            let _ = writeln!(out, "  {:<40} {:<18} {}", i.name, class, i.meaning);
        }
        let _ = writeln!(out, "functions ({})", self.functions.len());
        for f in &self.functions {
            let params: Vec<String> = f.params.iter().map(|(n, t)| format!("{n}: {}", t.wit_name())).collect();
            let result = f
                .result
                .as_ref()
                .map(|t| format!(" -> {}", t.wit_name()))
                .unwrap_or_default();
            let _ = writeln!(out, "  {}({}){}", f.name, params.join(", "), result);
            let (result_schema, _) = f.result_schemas();
            let _ = writeln!(out, "    params schema: {}", values::object_schema(&f.params));
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
    })
}
