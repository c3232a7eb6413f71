//! The component the benchmarks invoke: a no-op, and a loop of host calls.

use airlock_sdk::log;

wit_bindgen::generate!({ path: "wit", world: "bench" });

struct Bench;

impl Guest for Bench {
    fn noop() {}

    fn log_lines(n: u32) {
        for _ in 0..n {
            log::write(log::Level::Debug, "tick", &[]);
        }
    }
}

export!(Bench);
