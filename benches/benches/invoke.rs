//! One invocation of the pure `hello` action: airlock (policy, fresh
//! instance, limits, JSON in and out) against bare wasmtime on the same
//! engine settings (pooling allocator, `InstancePre`, fresh store per call).

use airlock::capabilities::Grants;
use airlock::policy::{ActionPolicy, Limits, RuntimeSettings};
use airlock::runtime::Runtime;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use wasmtime::Store;
use wasmtime::component::{Component, Linker, ResourceTable, Val};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

struct Bare {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn invoke(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let settings = RuntimeSettings {
        data_dir: data.path().to_path_buf(),
        max_concurrent_instances: 16,
    };
    let mut runtime = Runtime::new(&settings).unwrap();
    let hello = airlock_benches::component("hello");
    let action = runtime
        .prepare(ActionPolicy::ad_hoc(
            "hello",
            hello.clone(),
            Grants::default(),
            Limits::default(),
        ))
        .unwrap();
    let args = json!({"who": {"name": "Ada", "title": null, "languages": ["fr"]}});

    // Bare wasmtime on the same engine: same pool, epoch and fuel settings.
    let engine = airlock::engine::build(&settings).unwrap();
    let component = Component::from_file(&engine, &hello).unwrap();
    let mut linker = Linker::<Bare>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    let pre = linker.instantiate_pre(&component).unwrap();
    let greet = component.get_export_index(None, "greet").unwrap();
    let who = Val::Record(vec![
        ("name".into(), Val::String("Ada".into())),
        ("title".into(), Val::Option(None)),
        ("languages".into(), Val::List(vec![Val::String("fr".into())])),
    ]);

    let mut group = c.benchmark_group("invoke-hello");
    group.bench_function("bare-wasmtime", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut store = Store::new(
                    &engine,
                    Bare {
                        wasi: WasiCtx::builder().build(),
                        table: ResourceTable::new(),
                    },
                );
                store.set_fuel(u64::MAX).unwrap();
                store.set_epoch_deadline(1000);
                let instance = pre.instantiate_async(&mut store).await.unwrap();
                let func = instance.get_func(&mut store, greet).unwrap();
                let mut results = [Val::Bool(false)];
                func.call_async(&mut store, std::slice::from_ref(&who), &mut results)
                    .await
                    .unwrap();
                results
            })
        })
    });
    group.bench_function("airlock", |b| {
        b.iter(|| rt.block_on(action.invoke("greet", &args)).outcome.unwrap());
    });
    group.finish();
}

criterion_group!(benches, invoke);
criterion_main!(benches);
