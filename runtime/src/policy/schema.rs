//! The Cedar schema of a configuration's actions, generated from their
//! WIT types: what policies can name, and with which types.
//!
//! Policies are written in Cedar ([`cedar_policy`]). Their vocabulary is
//! fixed here, so a policy that names an argument a function does not
//! have, or compares a string with a number, is refused by Cedar's strict
//! validator before anything runs:
//!
//! - **principal**: `Identity::"NAME"` (attributes `kind`, `"agent"` or
//!   `"human"`, and `local`, true only for the local operator), a member of
//!   `Role::"ROLE"` for each role its token holds; the local operator is
//!   in `Operator::"local"`, which no token holder can be;
//! - **actions**: `Action::"invoke"` contains one action per configured
//!   airlock action (`Action::"refund"`), which contains one per function
//!   (`Action::"refund/issue"`; interface exports keep their name,
//!   `Action::"refund/api#issue"`). `Action::"host-call"` contains the
//!   host-call kinds `http:send`, `files:read` and `files:write`;
//! - **resources**: `Tool::"NAME"` (the action: `name`,
//!   `service_identity`, `digest`) for invocations; `HttpRequest` (`tool`,
//!   `method`, `scheme`, `host`, `port`, `origin`, `path`,
//!   `path_ambiguous`) and `File` (`tool`, `path`, `known`) for host calls;
//! - **context** of a function: `args`, the arguments as typed values
//!   (below), `now` (`unix`, `date`, `hour`, `minute`, `weekday` with
//!   Monday 1, `datetime`), and the optional `reason` and `traceparent`
//!   an agent may state. A host call's context has `now`, `function` and
//!   the same optional two.
//!
//! Arguments keep their WIT types, exactly (see [`cedar_type`]): integers
//! are `Long` (a `u64` above `i64::MAX` has no Cedar value, and an
//! invocation whose policies read one is refused, never rounded), floats
//! are `decimal`, `option` parameters and fields are optional attributes
//! (`context.args has note`), records are records, lists and flags are
//! sets, enums are strings, variants and results are records with a
//! `tag` / `is_ok`. WIT names are kebab-case and Cedar attributes are
//! best written as identifiers, so `account-id` is `account_id` (WIT names
//! have no `_`, so the mapping is one to one); a name Cedar reserves
//! (`in`, `has`, `like`, `if`, `true`, …) is read as `context.args["in"]`.

use crate::manifest::FunctionSig;
use crate::values::ValueType;
use serde_json::{Map, Value, json};

/// The action every invocation action belongs to.
pub const INVOKE: &str = "invoke";
/// The action every host-call kind belongs to.
pub const HOST_CALL: &str = "host-call";
/// Host-call kinds and the entity type of their resource.
pub const HOST_CALL_KINDS: [(&str, &str); 3] = [
    ("http:send", "HttpRequest"),
    ("files:read", "File"),
    ("files:write", "File"),
];

/// The Cedar action of function `function` of action `action`.
pub fn function_action(action: &str, function: &str) -> String {
    format!("{action}/{function}")
}

/// The Cedar attribute name of a WIT name (`account-id` → `account_id`).
pub fn attr_name(wit: &str) -> String {
    wit.replace('-', "_")
}

/// One configured action, as the schema sees it.
#[derive(Debug, Clone)]
pub struct ActionTypes<'a> {
    pub name: &'a str,
    pub functions: Vec<FunctionTypes<'a>>,
    /// The action's usage windows: `context.usage.<name>` of the functions
    /// each applies to.
    pub windows: &'a [super::windows::Window],
}

/// One function: its name and parameters.
#[derive(Debug, Clone, Copy)]
pub struct FunctionTypes<'a> {
    pub name: &'a str,
    pub params: &'a [(String, ValueType)],
}

impl<'a> ActionTypes<'a> {
    /// Action `name` exporting `functions`.
    pub fn of(name: &'a str, functions: &'a [FunctionSig]) -> ActionTypes<'a> {
        ActionTypes {
            name,
            functions: functions
                .iter()
                .map(|f| FunctionTypes {
                    name: &f.name,
                    params: &f.params,
                })
                .collect(),
            windows: &[],
        }
    }

    /// With the action's usage windows (`context.usage`).
    pub fn with_windows(mut self, windows: &'a [super::windows::Window]) -> ActionTypes<'a> {
        self.windows = windows;
        self
    }
}

/// The schema of `actions`, in Cedar's JSON schema format (the empty
/// namespace). Refuses an action whose name is one of the root actions.
pub fn schema_json(actions: &[ActionTypes<'_>]) -> Result<Value, String> {
    let mut action_map = Map::new();
    action_map.insert(INVOKE.into(), json!({}));
    action_map.insert(HOST_CALL.into(), json!({}));
    let intent = |m: &mut Map<String, Value>| {
        m.insert("now".into(), json!({"type": "Now"}));
        m.insert("reason".into(), json!({"type": "String", "required": false}));
        m.insert("traceparent".into(), json!({"type": "String", "required": false}));
    };
    for (kind, resource) in HOST_CALL_KINDS {
        let mut context = Map::new();
        intent(&mut context);
        context.insert("function".into(), json!({"type": "String"}));
        action_map.insert(
            kind.into(),
            json!({
                "memberOf": [{"id": HOST_CALL}],
                "appliesTo": {
                    "principalTypes": ["Identity"],
                    "resourceTypes": [resource],
                    "context": {"type": "Record", "attributes": context},
                }
            }),
        );
    }
    for action in actions {
        if action.name == INVOKE || action.name == HOST_CALL || action_map.contains_key(action.name) {
            return Err(format!(
                "action {:?}: the name is reserved in policies (Action::\"{}\" is the root of every {}); rename the action",
                action.name,
                action.name,
                if action.name == HOST_CALL {
                    "host call"
                } else {
                    "invocation"
                }
            ));
        }
        action_map.insert(action.name.into(), json!({"memberOf": [{"id": INVOKE}]}));
        for f in &action.functions {
            let mut args = Map::new();
            for (name, ty) in f.params {
                if let Some(attr) = attribute(ty) {
                    args.insert(attr_name(name), attr);
                }
            }
            let mut context = Map::new();
            intent(&mut context);
            context.insert("args".into(), json!({"type": "Record", "attributes": args}));
            let mut usage = Map::new();
            for w in action.windows.iter().filter(|w| w.applies(f.name)) {
                usage.insert(attr_name(&w.name), json!({"type": "Long"}));
            }
            if !usage.is_empty() {
                context.insert("usage".into(), json!({"type": "Record", "attributes": usage}));
            }
            let id = function_action(action.name, f.name);
            if action_map.contains_key(&id) {
                return Err(format!(
                    "action {:?}: two functions are both {id:?} in policies",
                    action.name
                ));
            }
            action_map.insert(
                id,
                json!({
                    "memberOf": [{"id": action.name}],
                    "appliesTo": {
                        "principalTypes": ["Identity"],
                        "resourceTypes": ["Tool"],
                        "context": {"type": "Record", "attributes": context},
                    }
                }),
            );
        }
    }
    let string = json!({"type": "String"});
    let long = json!({"type": "Long"});
    let boolean = json!({"type": "Boolean"});
    let tool = json!({"type": "Entity", "name": "Tool"});
    Ok(json!({"": {
        "commonTypes": {
            "Now": {"type": "Record", "attributes": {
                "unix": long, "date": string, "hour": long, "minute": long, "weekday": long,
                "datetime": {"type": "Extension", "name": "datetime"},
            }},
        },
        "entityTypes": {
            "Role": {},
            "Operator": {},
            "Identity": {"memberOfTypes": ["Role", "Operator"], "shape": {"type": "Record", "attributes": {
                "kind": string, "local": boolean,
            }}},
            "Tool": {"shape": {"type": "Record", "attributes": {
                "name": string, "service_identity": string, "digest": string,
            }}},
            "HttpRequest": {"shape": {"type": "Record", "attributes": {
                "tool": tool, "method": string, "scheme": string, "host": string, "port": long,
                "origin": string, "path": string, "path_ambiguous": boolean,
            }}},
            "File": {"shape": {"type": "Record", "attributes": {
                "tool": tool, "path": string, "known": boolean,
            }}},
        },
        "actions": action_map,
    }}))
}

/// The schema of `actions`, ready for Cedar's validator.
pub fn schema(actions: &[ActionTypes<'_>]) -> Result<cedar_policy::Schema, String> {
    let json = schema_json(actions)?;
    cedar_policy::Schema::from_json_value(json).map_err(|e| format!("the generated policy schema is invalid: {e}"))
}

/// The schema of `actions` in Cedar's own schema syntax, for people
/// writing policies (`airlock policy schema`).
pub fn schema_text(actions: &[ActionTypes<'_>]) -> Result<String, String> {
    let json = schema_json(actions)?;
    let fragment = cedar_policy::SchemaFragment::from_json_value(json)
        .map_err(|e| format!("the generated policy schema is invalid: {e}"))?;
    fragment
        .to_cedarschema()
        .map_err(|e| format!("cannot print the policy schema: {e}"))
}

/// A parameter or record field: an optional attribute for an `option`,
/// none for a type without a Cedar form.
fn attribute(ty: &ValueType) -> Option<Value> {
    match ty {
        ValueType::Option(inner) => {
            let mut t = cedar_type(inner)?;
            t.as_object_mut()?.insert("required".into(), Value::Bool(false));
            Some(t)
        }
        other => cedar_type(other),
    }
}

/// The Cedar type of a WIT value type; `None` for a type no argument can
/// carry (resources, streams, …), whose attribute is left out.
///
/// | WIT | Cedar |
/// |---|---|
/// | `bool` | `Bool` |
/// | integers | `Long` |
/// | `f32`, `f64` | `decimal` |
/// | `char`, `string`, `enum` | `String` |
/// | `list<T>` | `Set<T>` |
/// | `flags` | `Set<String>` |
/// | `record` | record, fields snake_cased; `option` fields optional |
/// | `tuple<A, B>` | `{ "0": A, "1": B }` |
/// | `variant` | `{ tag: String, <case>?: payload }` (none if a case with a payload is named `tag`) |
/// | `option<T>` inside a list, tuple or payload | `{ value?: T }` |
/// | `result<T, E>` | `{ is_ok: Bool, ok?: T, err?: E }` |
pub fn cedar_type(ty: &ValueType) -> Option<Value> {
    Some(match ty {
        ValueType::Bool => json!({"type": "Boolean"}),
        ValueType::S8
        | ValueType::U8
        | ValueType::S16
        | ValueType::U16
        | ValueType::S32
        | ValueType::U32
        | ValueType::S64
        | ValueType::U64 => json!({"type": "Long"}),
        ValueType::F32 | ValueType::F64 => json!({"type": "Extension", "name": "decimal"}),
        ValueType::Char | ValueType::String | ValueType::Enum(_) => json!({"type": "String"}),
        ValueType::List(inner) => json!({"type": "Set", "element": cedar_type(inner)?}),
        ValueType::Flags(_) => json!({"type": "Set", "element": {"type": "String"}}),
        ValueType::Record(fields) => {
            let mut attrs = Map::new();
            for (name, t) in fields {
                attrs.insert(attr_name(name), attribute(t)?);
            }
            json!({"type": "Record", "attributes": attrs})
        }
        ValueType::Tuple(items) => {
            let mut attrs = Map::new();
            for (i, t) in items.iter().enumerate() {
                attrs.insert(i.to_string(), cedar_type(t)?);
            }
            json!({"type": "Record", "attributes": attrs})
        }
        ValueType::Variant(cases) => {
            let mut attrs = Map::new();
            attrs.insert("tag".into(), json!({"type": "String"}));
            for (name, payload) in cases {
                if let Some(t) = payload {
                    if name == "tag" {
                        // Its payload would take the discriminant's
                        // place: policies cannot read this variant.
                        return None;
                    }
                    let mut t = cedar_type(t)?;
                    t.as_object_mut()?.insert("required".into(), Value::Bool(false));
                    attrs.insert(attr_name(name), t);
                }
            }
            json!({"type": "Record", "attributes": attrs})
        }
        ValueType::Option(inner) => {
            let mut t = cedar_type(inner)?;
            t.as_object_mut()?.insert("required".into(), Value::Bool(false));
            json!({"type": "Record", "attributes": {"value": t}})
        }
        ValueType::Result { ok, err } => {
            let mut attrs = Map::new();
            attrs.insert("is_ok".into(), json!({"type": "Boolean"}));
            for (name, payload) in [("ok", ok), ("err", err)] {
                if let Some(t) = payload {
                    let mut t = cedar_type(t)?;
                    t.as_object_mut()?.insert("required".into(), Value::Bool(false));
                    attrs.insert(name.into(), t);
                }
            }
            json!({"type": "Record", "attributes": attrs})
        }
        ValueType::Unsupported(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cedar_policy::{PolicySet, ValidationMode, Validator};
    use std::str::FromStr;

    type Params = Vec<(String, ValueType)>;

    /// `issue`'s parameters.
    fn refund() -> Params {
        let params = vec![
            ("amount", ValueType::U64),
            ("account-id", ValueType::String),
            ("note", ValueType::Option(Box::new(ValueType::String))),
            ("price", ValueType::F64),
            ("tags", ValueType::List(Box::new(ValueType::String))),
            ("speed", ValueType::Enum(vec!["slow".into(), "fast".into()])),
            (
                "target",
                ValueType::Record(vec![
                    ("bank".into(), ValueType::String),
                    ("branch-code".into(), ValueType::Option(Box::new(ValueType::U32))),
                ]),
            ),
            (
                "method",
                ValueType::Variant(vec![("card".into(), Some(ValueType::String)), ("cash".into(), None)]),
            ),
            ("pair", ValueType::Tuple(vec![ValueType::S8, ValueType::Bool])),
            ("handle", ValueType::Unsupported("resource")),
        ];
        params.into_iter().map(|(n, t)| (n.to_string(), t)).collect()
    }

    fn refund_action(params: &Params) -> ActionTypes<'_> {
        ActionTypes {
            name: "refund",
            functions: vec![FunctionTypes { name: "issue", params }],
            windows: &[],
        }
    }

    /// Validate `text` against the schema of one action `refund`: the
    /// messages of the errors, each with its policy's line.
    fn validate(text: &str) -> Vec<(usize, String)> {
        use miette::Diagnostic as _;
        let params = refund();
        let schema = schema(&[refund_action(&params)]).unwrap();
        let set = PolicySet::from_str(text).unwrap();
        let result = Validator::new(schema).validate(&set, ValidationMode::Strict);
        result
            .validation_errors()
            .map(|e| {
                let offset = e.labels().and_then(|mut l| l.next()).map_or(0, |l| l.offset());
                (text[..offset].matches('\n').count() + 1, e.to_string())
            })
            .collect()
    }

    #[test]
    fn policies_using_the_arguments_as_typed_validate() {
        let ok = r#"
permit(principal in Role::"support", action == Action::"refund/issue", resource == Tool::"refund")
when {
  context.args.amount <= 100 && context.args.account_id like "ACC-*" &&
  (context.args has note && context.args.note != "") &&
  context.args.price.lessThan(decimal("99.5")) && context.args.tags.contains("vip") &&
  context.args.speed == "fast" && context.args.target.bank == "x" &&
  (context.args.target has branch_code && context.args.target.branch_code > 3) &&
  context.args.method.tag == "card" && context.args.pair["0"] < 2 && context.args.pair["1"] &&
  context.now.hour >= 9 && context.now.weekday <= 5 && principal.kind == "agent" && !principal.local &&
  resource.service_identity == "svc" && (context has reason)
};
forbid(principal, action in Action::"invoke", resource) unless { context.now.hour < 18 };
forbid(principal, action == Action::"http:send", resource)
when { resource.method == "DELETE" && resource.tool == Tool::"refund" && resource.port == 443 };
forbid(principal, action == Action::"files:write", resource) when { resource.path like "gated/*" };
"#;
        assert_eq!(validate(ok), Vec::new());
    }

    #[test]
    fn a_missing_argument_or_a_string_compared_with_a_number_is_refused_with_its_line() {
        let bad = r#"permit(principal, action == Action::"refund/issue", resource);

permit(principal, action == Action::"refund/issue", resource)
when { context.args.amout > 5 };

forbid(principal, action == Action::"refund/issue", resource)
when { context.args.account_id > 100 };

forbid(principal, action == Action::"refund/issue", resource)
when { context.args.note == "x" };

forbid(principal, action == Action::"refund/issue", resource)
when { context.args.handle == 1 };
"#;
        let errors = validate(bad);
        let lines: Vec<usize> = errors.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [4, 7, 10, 13], "{errors:#?}");
        assert!(errors[0].1.contains("amout"), "{errors:?}");
        // An optional argument must be tested with `has` first; a
        // parameter of a type policies cannot read does not exist.
        assert!(errors[2].1.contains("note"), "{errors:?}");
        assert!(errors[3].1.contains("handle"), "{errors:?}");
    }

    #[test]
    fn payloads_of_variants_must_be_tested_with_has() {
        let errors = validate(
            r#"forbid(principal, action == Action::"refund/issue", resource)
when { context.args.method.card == "x" };
forbid(principal, action == Action::"refund/issue", resource)
when { context.args.method has card && context.args.method.card == "x" };"#,
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, 2, "{errors:?}");
    }

    #[test]
    fn a_variant_case_named_tag_leaves_the_variant_out() {
        let clash = ValueType::Variant(vec![("tag".into(), Some(ValueType::U32)), ("none".into(), None)]);
        assert_eq!(cedar_type(&clash), None);
        let fine = ValueType::Variant(vec![("tag".into(), None)]);
        assert_eq!(
            cedar_type(&fine),
            Some(json!({"type": "Record", "attributes": {"tag": {"type": "String"}}}))
        );
    }

    #[test]
    fn an_unknown_action_or_function_is_refused() {
        let errors = validate(r#"permit(principal, action == Action::"refund/isue", resource);"#);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].1.contains("refund/isue"), "{errors:?}");
    }

    #[test]
    fn root_action_names_are_reserved() {
        for name in [INVOKE, HOST_CALL, "http:send"] {
            let e = schema_json(&[ActionTypes {
                name,
                functions: Vec::new(),
                windows: &[],
            }])
            .unwrap_err();
            assert!(e.contains("reserved"), "{e}");
        }
    }

    #[test]
    fn the_text_form_names_every_action_and_argument() {
        let params = refund();
        let text = schema_text(&[refund_action(&params)]).unwrap();
        for needle in [
            "\"refund/issue\"",
            "account_id",
            "amount",
            "note?",
            "branch_code?",
            "decimal",
            "Identity in [Role, Operator]",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(!text.contains("handle"), "{text}");
    }

    #[test]
    fn every_wit_type_has_a_cedar_type_or_is_left_out() {
        let nested = ValueType::Result {
            ok: Some(Box::new(ValueType::List(Box::new(ValueType::Option(Box::new(
                ValueType::S64,
            )))))),
            err: None,
        };
        assert_eq!(
            cedar_type(&nested),
            Some(json!({"type": "Record", "attributes": {
                "is_ok": {"type": "Boolean"},
                "ok": {"type": "Set", "required": false, "element": {"type": "Record", "attributes": {
                    "value": {"type": "Long", "required": false}}}},
            }}))
        );
        assert_eq!(
            cedar_type(&ValueType::Flags(vec!["a".into()])),
            Some(json!({"type": "Set", "element": {"type": "String"}}))
        );
        assert_eq!(
            cedar_type(&ValueType::List(Box::new(ValueType::Unsupported("stream")))),
            None
        );
        assert_eq!(
            cedar_type(&ValueType::Record(vec![(
                "r".into(),
                ValueType::Unsupported("resource")
            )])),
            None
        );
    }
}
