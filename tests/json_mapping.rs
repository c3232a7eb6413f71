//! The JSON mapping: every WIT type round-trips, over random types and
//! values (property tests) and through a real component that echoes them.

mod support;

use airlock::capabilities::Grants;
use airlock::policy::{ActionPolicy, Limits, RuntimeSettings};
use airlock::values::{JsonPath, ValueType, from_json, schema, to_json};
use airlock::{Error, Runtime};
use proptest::prelude::*;
use serde_json::{Value, json};
use wasmtime::component::Val;

const NAMES: &[&str] = &["a", "b-c", "d1", "long-name", "e", "f-g-h"];

fn names() -> impl Strategy<Value = Vec<String>> {
    proptest::sample::subsequence(NAMES, 1..=4).prop_map(|v| v.into_iter().map(String::from).collect())
}

fn arb_type() -> impl Strategy<Value = ValueType> {
    let leaf = prop_oneof![
        Just(ValueType::Bool),
        Just(ValueType::S8),
        Just(ValueType::U8),
        Just(ValueType::S16),
        Just(ValueType::U16),
        Just(ValueType::S32),
        Just(ValueType::U32),
        Just(ValueType::S64),
        Just(ValueType::U64),
        Just(ValueType::F32),
        Just(ValueType::F64),
        Just(ValueType::Char),
        Just(ValueType::String),
        names().prop_map(ValueType::Enum),
        names().prop_map(ValueType::Flags),
    ];
    leaf.prop_recursive(4, 48, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|t| ValueType::List(Box::new(t))),
            inner.clone().prop_map(|t| ValueType::Option(Box::new(t))),
            proptest::collection::vec(inner.clone(), 1..4).prop_map(ValueType::Tuple),
            (names(), proptest::collection::vec(inner.clone(), 4))
                .prop_map(|(n, ts)| ValueType::Record(n.into_iter().zip(ts).collect())),
            (
                names(),
                proptest::collection::vec(proptest::option::of(inner.clone()), 4)
            )
                .prop_map(|(n, ts)| ValueType::Variant(n.into_iter().zip(ts).collect())),
            (proptest::option::of(inner.clone()), proptest::option::of(inner)).prop_map(|(ok, err)| {
                ValueType::Result {
                    ok: ok.map(Box::new),
                    err: err.map(Box::new),
                }
            }),
        ]
    })
}

fn arb_f32() -> BoxedStrategy<f32> {
    prop_oneof![
        any::<f32>(),
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(-0.0f32),
        Just(0.1f32)
    ]
    .boxed()
}

fn arb_f64() -> BoxedStrategy<f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        Just(0.1)
    ]
    .boxed()
}

fn arb_val(ty: &ValueType) -> BoxedStrategy<Val> {
    match ty.clone() {
        ValueType::Bool => any::<bool>().prop_map(Val::Bool).boxed(),
        ValueType::S8 => any::<i8>().prop_map(Val::S8).boxed(),
        ValueType::U8 => any::<u8>().prop_map(Val::U8).boxed(),
        ValueType::S16 => any::<i16>().prop_map(Val::S16).boxed(),
        ValueType::U16 => any::<u16>().prop_map(Val::U16).boxed(),
        ValueType::S32 => any::<i32>().prop_map(Val::S32).boxed(),
        ValueType::U32 => any::<u32>().prop_map(Val::U32).boxed(),
        ValueType::S64 => prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX)]
            .prop_map(Val::S64)
            .boxed(),
        ValueType::U64 => prop_oneof![any::<u64>(), Just(u64::MAX)].prop_map(Val::U64).boxed(),
        ValueType::F32 => arb_f32().prop_map(Val::Float32).boxed(),
        ValueType::F64 => arb_f64().prop_map(Val::Float64).boxed(),
        ValueType::Char => any::<char>().prop_map(Val::Char).boxed(),
        ValueType::String => any::<String>().prop_map(Val::String).boxed(),
        ValueType::List(t) => proptest::collection::vec(arb_val(&t), 0..4).prop_map(Val::List).boxed(),
        ValueType::Option(t) => proptest::option::of(arb_val(&t))
            .prop_map(|v| Val::Option(v.map(Box::new)))
            .boxed(),
        ValueType::Tuple(ts) => ts.iter().map(arb_val).collect::<Vec<_>>().prop_map(Val::Tuple).boxed(),
        ValueType::Record(fields) => {
            let names: Vec<String> = fields.iter().map(|(n, _)| n.clone()).collect();
            fields
                .iter()
                .map(|(_, t)| arb_val(t))
                .collect::<Vec<_>>()
                .prop_map(move |vals| Val::Record(names.iter().cloned().zip(vals).collect()))
                .boxed()
        }
        ValueType::Variant(cases) => {
            let options: Vec<BoxedStrategy<Val>> = cases
                .into_iter()
                .map(|(name, payload)| match payload {
                    None => Just(Val::Variant(name, None)).boxed(),
                    Some(t) => arb_val(&t)
                        .prop_map(move |v| Val::Variant(name.clone(), Some(Box::new(v))))
                        .boxed(),
                })
                .collect();
            proptest::strategy::Union::new(options).boxed()
        }
        ValueType::Enum(names) => proptest::sample::select(names).prop_map(Val::Enum).boxed(),
        ValueType::Flags(names) => {
            let n = names.len();
            proptest::sample::subsequence(names, 0..=n).prop_map(Val::Flags).boxed()
        }
        ValueType::Result { ok, err } => {
            let side = |t: Option<Box<ValueType>>| match t {
                None => Just(None).boxed(),
                Some(t) => arb_val(&t).prop_map(|v| Some(Box::new(v))).boxed(),
            };
            prop_oneof![
                side(ok).prop_map(|v| Val::Result(Ok(v))),
                side(err).prop_map(|v| Val::Result(Err(v)))
            ]
            .boxed()
        }
        ValueType::Unsupported(_) => unreachable!("not generated"),
    }
}

fn typed_value() -> impl Strategy<Value = (ValueType, Val)> {
    arb_type().prop_flat_map(|t| {
        let v = arb_val(&t);
        (Just(t), v)
    })
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-z\\-]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z\\-]{1,5}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Val -> JSON text -> Val is the identity, for random types and values.
    #[test]
    fn every_value_round_trips_through_json_text((ty, val) in typed_value()) {
        let json = to_json(&ty, &val).unwrap();
        let text = serde_json::to_string(&json).unwrap();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        let back = from_json(&ty, &parsed, &JsonPath::root("v")).unwrap();
        prop_assert_eq!(&back, &val, "type {:?}, json {}", ty, text);
        prop_assert_eq!(to_json(&ty, &back).unwrap(), json);
    }

    /// Arbitrary JSON against an arbitrary type is accepted or refused with a
    /// path, never a panic.
    #[test]
    fn arbitrary_json_never_panics(ty in arb_type(), json in arb_json()) {
        match from_json(&ty, &json, &JsonPath::root("args")) {
            Ok(v) => { to_json(&ty, &v).unwrap(); }
            Err(e) => prop_assert!(e.path.starts_with("args"), "{}", e),
        }
        prop_assert!(schema(&ty).is_object());
    }
}

#[test]
fn integers_are_exact_and_range_checked() {
    let p = JsonPath::root("v");
    let max: Value = serde_json::from_str("18446744073709551615").unwrap();
    assert_eq!(from_json(&ValueType::U64, &max, &p).unwrap(), Val::U64(u64::MAX));
    assert_eq!(
        to_json(&ValueType::U64, &Val::U64(u64::MAX)).unwrap().to_string(),
        "18446744073709551615"
    );
    let min: Value = serde_json::from_str("-9223372036854775808").unwrap();
    assert_eq!(from_json(&ValueType::S64, &min, &p).unwrap(), Val::S64(i64::MIN));
    for (ty, text) in [
        (ValueType::U64, "18446744073709551616"),
        (ValueType::U8, "256"),
        (ValueType::U8, "-1"),
        (ValueType::S8, "128"),
        (ValueType::S64, "9223372036854775808"),
        (ValueType::U32, "1.5"),
        (ValueType::U32, "1e3"),
        (ValueType::U32, "\"7\""),
    ] {
        let json: Value = serde_json::from_str(text).unwrap();
        let err = from_json(&ty, &json, &p).unwrap_err();
        assert_eq!(err.path, "v", "{text}");
    }
}

#[test]
fn nested_options_stay_unambiguous() {
    let ty = ValueType::Option(Box::new(ValueType::Option(Box::new(ValueType::U8))));
    let p = JsonPath::root("v");
    assert_eq!(to_json(&ty, &Val::Option(None)).unwrap(), json!(null));
    assert_eq!(
        to_json(&ty, &Val::Option(Some(Box::new(Val::Option(None))))).unwrap(),
        json!({"some": null})
    );
    let some_some = Val::Option(Some(Box::new(Val::Option(Some(Box::new(Val::U8(3)))))));
    assert_eq!(to_json(&ty, &some_some).unwrap(), json!({"some": 3}));
    assert_eq!(from_json(&ty, &json!({"some": 3}), &p).unwrap(), some_some);
    assert!(
        from_json(&ty, &json!(3), &p).is_err(),
        "bare value is ambiguous for option<option<_>>"
    );
}

fn types_action() -> (std::sync::Arc<airlock::action::PreparedAction>, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let mut runtime = Runtime::new(&RuntimeSettings {
        data_dir: data.path().to_path_buf(),
        max_concurrent_instances: 4,
        store: Default::default(),
        audit: Default::default(),
    })
    .unwrap();
    let action = runtime
        .prepare(ActionPolicy::ad_hoc(
            "types",
            support::component("types"),
            Grants::default(),
            Limits::default(),
        ))
        .unwrap();
    (action, data)
}

const ECHO: &str = "airlock-tests:types/shapes@0.1.0#echo";

#[test]
fn a_real_component_echoes_every_type_through_json() {
    let (action, _data) = types_action();
    let everything = json!({
        "b": true, "v-s8": -128, "v-u8": 255, "v-s16": -32768, "v-u16": 65535,
        "v-s32": -2147483648i64, "v-u32": 4294967295u64,
        "v-s64": i64::MIN, "v-u64": u64::MAX,
        "v-f32": 0.1, "v-f64": "NaN", "c": "🦀", "s": "quote \" and \u{0} nul",
        "bytes": [0, 1, 255], "points": [{"x": 1, "y": -2, "label": null}, {"x": 0, "y": 0, "label": "origin"}],
        "tup": [7, "seven", false], "shape": {"rect": {"x": 3, "y": 4, "label": null}}, "color": "green",
        "perms": ["read", "exec"], "maybe": null, "nested": {"some": null},
        "res": {"err": "no"}, "unit-res": {"ok": null}
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let r = action.invoke(ECHO, &json!({"v": everything})).await;
        assert_eq!(r.outcome.unwrap(), everything);

        let r = action.invoke("echo-u64", &json!({"v": u64::MAX})).await;
        assert_eq!(r.outcome.unwrap().to_string(), "18446744073709551615");
        let r = action.invoke("echo-f32", &json!({"v": "-inf"})).await;
        assert_eq!(r.outcome.unwrap(), json!("-inf"));
        let r = action.invoke("echo-char", &json!({"v": "ab"})).await;
        assert!(
            matches!(r.outcome, Err(Error::Args(ref e)) if e.path == "args.v"),
            "{:?}",
            r.outcome
        );
        let r = action.invoke("echo-nested", &json!({"v": {"some": 4}})).await;
        assert_eq!(r.outcome.unwrap(), json!({"some": 4}));
        let r = action
            .invoke("airlock-tests:types/shapes@0.1.0#area", &json!({"s": "empty"}))
            .await;
        assert_eq!(r.outcome.unwrap(), json!(0.0));
        let r = action.invoke("nothing", &json!({})).await;
        assert_eq!(r.outcome.unwrap(), json!(null));
        // Top-level result: ok prints the value, err becomes the action's error.
        let r = action.invoke("checked-div", &json!({"a": 7, "b": 2})).await;
        assert_eq!(r.outcome.unwrap(), json!(3));
        let r = action.invoke("checked-div", &json!({"a": 7, "b": 0})).await;
        match r.outcome {
            Err(e @ Error::ActionError(_)) => {
                assert_eq!(e.exit_code(), 1);
                assert_eq!(e.to_string(), "action returned an error: cannot divide 7 by 0");
            }
            other => panic!("{other:?}"),
        }
        let r = action.invoke(ECHO, &json!({"v": {"b": "yes"}})).await;
        assert!(
            matches!(r.outcome, Err(Error::Args(ref e)) if e.path == "args.v.b"),
            "{:?}",
            r.outcome
        );
    });
}

#[test]
fn random_values_round_trip_through_a_real_component() {
    let (action, _data) = types_action();
    let sig = action.manifest.function(ECHO).unwrap();
    let ty = sig.params[0].1.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    runner
        .run(&arb_val(&ty), |val| {
            let json = to_json(&ty, &val).unwrap();
            let r = rt.block_on(action.invoke(ECHO, &json!({"v": json.clone()})));
            prop_assert_eq!(r.outcome.unwrap(), json);
            Ok(())
        })
        .unwrap();
}

#[test]
fn manifest_schemas_describe_the_exact_ranges() {
    let (action, _data) = types_action();
    let m = action.manifest.to_json();
    let echo = m["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == ECHO)
        .unwrap();
    let props = &echo["params"]["properties"]["v"]["properties"];
    assert_eq!(
        props["v-u64"],
        json!({"type": "integer", "minimum": 0, "maximum": u64::MAX})
    );
    assert_eq!(
        props["v-s64"],
        json!({"type": "integer", "minimum": i64::MIN, "maximum": i64::MAX})
    );
    assert_eq!(
        props["color"],
        json!({
            "type": "string",
            "enum": ["red", "green", "blue"],
            "title": "color",
            "description": "A color.\n\n`green`: The color of go.",
        })
    );
    assert_eq!(
        props["perms"]["description"],
        "What may be done.\n\n`write`: Change it."
    );
    assert_eq!(props["c"], json!({"type": "string", "minLength": 1, "maxLength": 1}));
    let div = m["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "checked-div")
        .unwrap();
    assert_eq!(
        div["result"],
        json!({"type": "integer", "minimum": i32::MIN, "maximum": i32::MAX})
    );
    assert_eq!(div["error"], json!({"type": "string"}));
}
