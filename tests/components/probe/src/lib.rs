//! A hostile test component: each export tries one way to escape the
//! sandbox or exhaust a limit.

use airlock_sdk::{files, log};
use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicU32, Ordering};

wit_bindgen::generate!({ path: "wit", world: "probe" });

static COUNTER: AtomicU32 = AtomicU32::new(0);

struct Probe;

fn describe(e: files::Error) -> String {
    e.to_string()
}

impl Guest for Probe {
    fn read_file(path: String) -> Result<String, String> {
        files::read_to_string(&path).map_err(describe)
    }

    fn write_file(path: String, data: String) -> Result<(), String> {
        files::write(&path, data).map_err(describe)
    }

    fn delete_file(path: String) -> Result<(), String> {
        files::delete(&path).map_err(describe)
    }

    fn list_dir(path: String) -> Result<Vec<String>, String> {
        Ok(files::list(&path)
            .map_err(describe)?
            .into_iter()
            .map(|e| e.name)
            .collect())
    }

    fn wasi_read(path: String) -> Result<String, String> {
        std::fs::read_to_string(&path).map_err(|e| e.to_string())
    }

    fn wasi_write(path: String, data: String) -> Result<(), String> {
        std::fs::write(&path, data).map_err(|e| e.to_string())
    }

    fn env_vars() -> Vec<(String, String)> {
        std::env::vars().collect()
    }

    fn cli_args() -> Vec<String> {
        std::env::args().collect()
    }

    fn read_stdin() -> String {
        let mut s = String::new();
        let _ = std::io::stdin().read_to_string(&mut s);
        s
    }

    fn print(bytes: u64) {
        let line = [b'x'; 1024];
        let mut out = std::io::stdout();
        let mut left = bytes as usize;
        while left > 0 {
            let n = left.min(line.len());
            out.write_all(&line[..n]).expect("stdout write failed");
            left -= n;
        }
        out.flush().expect("stdout flush failed");
    }

    fn exit_with(code: u8) {
        std::process::exit(i32::from(code));
    }

    fn log_lines(n: u32) {
        for i in 0..n {
            log::info("line", &[("i", &i.to_string())]);
        }
    }

    fn spin() {
        let mut x: u64 = 0;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    fn sleep_ms(ms: u64) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }

    fn allocate_mib(mib: u32) -> u32 {
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        for _ in 0..mib {
            blocks.push(vec![1u8; 1 << 20]);
        }
        std::hint::black_box(&blocks);
        blocks.len() as u32
    }

    fn recurse(depth: u64) -> u64 {
        if depth == 0 {
            0
        } else {
            std::hint::black_box(Self::recurse(depth - 1)) + 1
        }
    }

    fn panic_with(message: String) {
        panic!("{message}");
    }

    fn big_result(bytes: u64) -> String {
        "y".repeat(bytes as usize)
    }

    fn bump_counter() -> u32 {
        COUNTER.fetch_add(1, Ordering::SeqCst) + 1
    }
}

export!(Probe);
