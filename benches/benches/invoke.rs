//! Invocation overhead and host-call cost, airlock against bare wasmtime on
//! the same engine settings (pooling allocator, copy-on-write images,
//! epoch interruption, fuel), side by side in one run.
//!
//! - `invoke-noop/latency`: one `noop()` at a time. Baselines: bare
//!   wasmtime (`InstancePre`, fresh `Store` and instance per call), and bare
//!   wasmtime plus one `fdatasync` of a small append in the same directory
//!   as airlock's audit log (the M6 target is at most that + 50 µs).
//! - `invoke-noop/concurrent-16`: 16 concurrent loops of `noop()` on a
//!   multi-threaded tokio runtime (always 16 in flight); throughput in
//!   invocations per second.
//! - `host-call/log-N`: `log-lines(n)` with n = 0 and 1000, against a bare
//!   host whose `airlock:cap/log.write` does nothing (no policy, no record);
//!   one call costs (t(1000) - t(0)) / 1000.
//! - `invoke-hello/latency`: the M1 figure, `hello.greet` with a record
//!   argument and result (JSON in and out for airlock).

// The allocator the `airlock` binary uses (baselines run under it too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use airlock::action::PreparedAction;
use airlock_benches::bare::BareHost;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::Val;

fn invoke_ok(action: &PreparedAction, rt: &tokio::runtime::Runtime, function: &str, args: &Value) {
    let report = rt.block_on(action.invoke(function, args));
    if let Err(e) = report.outcome {
        panic!("{function}: {e}");
    }
}

/// Time `workers` concurrent loops, each making `iters` calls of `one`
/// back to back (a closed loop: always `workers` invocations in flight).
fn concurrent<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, workers: usize, one: F) -> Duration
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                let one = one.clone();
                tokio::spawn(async move {
                    for _ in 0..iters {
                        one().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    start.elapsed()
}

fn benches(c: &mut Criterion) {
    let airlock_benches::InProcess {
        rt,
        data,
        settings,
        airlock: bench,
        bare,
    } = airlock_benches::InProcess::new();
    let noop = bare.export("noop").unwrap();
    let log_lines = bare.export("log-lines").unwrap();
    let no_args = json!({});

    // 1. One invocation at a time.
    let mut group = c.benchmark_group("invoke-noop/latency");
    group.bench_function("bare-wasmtime", |b| {
        b.iter(|| rt.block_on(bare.call(noop, &[], 0)).unwrap());
    });
    // The same, plus what durability costs at least: one small append and
    // fdatasync on the disk the audit log is on.
    let mut append_and_sync = airlock_benches::fsync_baseline(data.path());
    group.bench_function("bare-wasmtime+fdatasync", |b| {
        b.iter(|| {
            rt.block_on(bare.call(noop, &[], 0)).unwrap();
            append_and_sync();
        });
    });
    group.bench_function("airlock", |b| {
        b.iter(|| invoke_ok(&bench.action, &rt, "noop", &no_args));
    });
    group.finish();

    // 2. Sixteen at a time.
    let batch = 16;
    let mut group = c.benchmark_group("invoke-noop/concurrent-16");
    group.throughput(Throughput::Elements(batch as u64));
    let bare = Arc::new(bare);
    group.bench_function("bare-wasmtime", |b| {
        b.iter_custom(|iters| {
            let bare = bare.clone();
            concurrent(&rt, iters, batch, move || {
                let bare = bare.clone();
                async move {
                    bare.call(noop, &[], 0).await.unwrap();
                }
            })
        });
    });
    let action = bench.action.clone();
    group.bench_function("airlock", |b| {
        b.iter_custom(|iters| {
            let action = action.clone();
            concurrent(&rt, iters, batch, move || {
                let action = action.clone();
                async move {
                    let report = action.invoke("noop", &json!({})).await;
                    assert!(report.outcome.is_ok());
                }
            })
        });
    });
    group.finish();

    // 3. Host calls: a loop of `log` calls in one invocation.
    let mut group = c.benchmark_group("host-call");
    for n in [0u32, 1000] {
        let args = json!({"n": n});
        group.bench_with_input(BenchmarkId::new("bare-unaudited", format!("log-{n}")), &n, |b, &n| {
            b.iter(|| rt.block_on(bare.call(log_lines, &[Val::U32(n)], 0)).unwrap());
        });
        group.bench_with_input(BenchmarkId::new("airlock", format!("log-{n}")), &n, |b, _| {
            b.iter(|| invoke_ok(&bench.action, &rt, "log-lines", &args));
        });
    }
    group.finish();

    // 4. The M1 figure: a record in, a record out.
    let hello = airlock_benches::airlock_action(&settings, "hello", Default::default());
    let bare_hello = BareHost::new(&settings, &airlock_benches::component("hello")).unwrap();
    let greet = bare_hello.export("greet").unwrap();
    let who = Val::Record(vec![
        ("name".into(), Val::String("Ada".into())),
        ("title".into(), Val::Option(None)),
        ("languages".into(), Val::List(vec![Val::String("fr".into())])),
    ]);
    let args = json!({"who": {"name": "Ada", "title": null, "languages": ["fr"]}});
    let mut group = c.benchmark_group("invoke-hello/latency");
    group.bench_function("bare-wasmtime", |b| {
        b.iter(|| {
            rt.block_on(bare_hello.call(greet, std::slice::from_ref(&who), 1))
                .unwrap()
        });
    });
    group.bench_function("airlock", |b| {
        b.iter(|| invoke_ok(&hello.action, &rt, "greet", &args));
    });
    group.finish();
}

criterion_group!(invoke, benches);
criterion_main!(invoke);
