//! Paired measurements: each round runs airlock and its baseline back to
//! back (in alternating order), so both see the same disk and the same
//! neighbours; the figures are medians over rounds and the median of the
//! per-round differences. This is how targets 1b and 2 of M6 are judged
//! on a shared machine whose `fdatasync` latency drifts by tens of
//! microseconds between criterion's sequential runs.
//!
//! - `noop`: one `noop()` by airlock (policy, fresh instance, durable
//!   audit) against bare wasmtime plus one 400-byte append and
//!   `fdatasync` in the audit log's directory. Target: at most +50 µs.
//! - `log call`: `log-lines(1000)` minus `log-lines(0)` per call, airlock
//!   against bare wasmtime whose `log.write` does nothing. Target: under
//!   1 µs. Three figures per call:
//!   - *while the action runs*: from `Report::duration`, the time until
//!     the guest returns, which is what the action itself waits per call
//!     (records are queued; the audit writer thread chains and writes them
//!     on the other core meanwhile);
//!   - *to the durable result*: wall time until `invoke` returns, after
//!     the writer has caught up and every record is synced;
//!   - *CPU*: the work of every thread of the process (user and system),
//!     the figure that matters when the cores are saturated.
//!
//! The data directory is a fresh temporary directory; `TMPDIR=/dev/shm`
//! puts the audit log on tmpfs, which separates the disk's share from the
//! CPU's (a diagnostic: tmpfs is not durable).
//!
//! `cargo bench -p airlock-benches --bench paired [-- ROUNDS]`

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use serde_json::json;
use std::time::{Duration, Instant};
use wasmtime::component::Val;

/// CPU time of every thread of this process so far.
fn process_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a
    // constant the kernel always supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q) as usize]
}

fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(2000);
    let airlock_benches::InProcess {
        rt,
        data,
        airlock,
        bare,
        ..
    } = airlock_benches::InProcess::new();
    let action = &airlock.action;
    let noop = bare.export("noop").unwrap();
    let log_lines = bare.export("log-lines").unwrap();
    let mut append_and_sync = airlock_benches::fsync_baseline(data.path());

    // Returns how long the action ran (`Report::duration`: up to the
    // guest's return, before its records are made durable).
    let airlock_call = |function: &str, args: &serde_json::Value| {
        let report = rt.block_on(action.invoke(function, args));
        assert!(report.outcome.is_ok(), "{function}: {:?}", report.outcome);
        report.duration
    };
    let mut baseline_noop = || {
        rt.block_on(bare.call(noop, &[], 0)).unwrap();
        append_and_sync();
    };
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        micros(start.elapsed())
    };

    // Warm-up: caches, the pooling allocator's slots, the log's first pages.
    for _ in 0..200 {
        baseline_noop();
        airlock_call("noop", &json!({}));
    }

    // 1b. One no-op invocation at a time.
    let (mut base, mut ours, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (b, a) = if round % 2 == 0 {
            let b = time(&mut baseline_noop);
            (
                b,
                time(&mut || {
                    airlock_call("noop", &json!({}));
                }),
            )
        } else {
            let a = time(&mut || {
                airlock_call("noop", &json!({}));
            });
            (time(&mut baseline_noop), a)
        };
        base.push(b);
        ours.push(a);
        diff.push(a - b);
    }
    println!("# paired benchmarks, {rounds} rounds, 2-core machine\n");
    println!("| figure | baseline median (p90) | airlock median (p90) | median of differences |");
    println!("|---|---|---|---|");
    println!(
        "| no-op invocation vs bare wasmtime + fdatasync | {:.1} µs ({:.1}) | {:.1} µs ({:.1}) | {:+.1} µs |",
        median(&mut base),
        quantile(&mut base, 0.9),
        median(&mut ours),
        quantile(&mut ours, 0.9),
        median(&mut diff)
    );

    // 2. One log call: (log-lines(1000) - log-lines(0)) / 1000, per round.
    let calls = 1000u32;
    let args_n = json!({"n": calls});
    let args_0 = json!({"n": 0});
    let rounds_log = (rounds / 4).max(50);
    let (mut bare_wall, mut ours_wall, mut ours_run) = (Vec::new(), Vec::new(), Vec::new());
    let (mut bare_cpu, mut ours_cpu) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds_log {
        let (cpu, t) = (process_cpu(), Instant::now());
        rt.block_on(bare.call(log_lines, &[Val::U32(calls)], 0)).unwrap();
        let bare_n = (t.elapsed(), process_cpu() - cpu);
        let (cpu, t) = (process_cpu(), Instant::now());
        rt.block_on(bare.call(log_lines, &[Val::U32(0)], 0)).unwrap();
        let bare_0 = (t.elapsed(), process_cpu() - cpu);
        let (cpu, t) = (process_cpu(), Instant::now());
        let run_n = airlock_call("log-lines", &args_n);
        let ours_n = (t.elapsed(), process_cpu() - cpu);
        let (cpu, t) = (process_cpu(), Instant::now());
        let run_0 = airlock_call("log-lines", &args_0);
        let ours_0 = (t.elapsed(), process_cpu() - cpu);
        ours_run.push(micros(run_n.saturating_sub(run_0)) / f64::from(calls));
        bare_wall.push(micros(bare_n.0.saturating_sub(bare_0.0)) / f64::from(calls));
        ours_wall.push(micros(ours_n.0.saturating_sub(ours_0.0)) / f64::from(calls));
        bare_cpu += bare_n.1.saturating_sub(bare_0.1);
        ours_cpu += ours_n.1.saturating_sub(ours_0.1);
    }
    let per_call = |total: Duration| micros(total) / f64::from(calls) / rounds_log as f64;
    println!(
        "| one `log` call, while the action runs ({rounds_log} rounds of 1000 calls) | {:.2} µs | {:.2} µs | {:+.2} µs |",
        median(&mut bare_wall),
        median(&mut ours_run),
        median(&mut ours_run) - median(&mut bare_wall)
    );
    println!(
        "| one `log` call, to the durable result | {:.2} µs | {:.2} µs | {:+.2} µs |",
        median(&mut bare_wall),
        median(&mut ours_wall),
        median(&mut ours_wall) - median(&mut bare_wall)
    );
    println!(
        "| one `log` call, CPU time of all threads | {:.2} µs | {:.2} µs | {:+.2} µs |",
        per_call(bare_cpu),
        per_call(ours_cpu),
        per_call(ours_cpu) - per_call(bare_cpu)
    );
    drop(airlock);
}
