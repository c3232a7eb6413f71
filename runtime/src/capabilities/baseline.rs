//! The inert baseline: WASI interfaces served to every action with no
//! authority.
//!
//! - `wasi:cli`: empty environment and arguments, empty stdin, stdout and
//!   stderr captured per invocation with a byte cap, no terminal; `exit`
//!   ends only the action.
//! - `wasi:io`: streams and polling over the handles the action was given.
//! - `wasi:clocks`, `wasi:random`: time and randomness.
//!
//! `wasi:filesystem` is *not* here: it is served by the `files` capability
//! only. `wasi:sockets` and everything else is never linked.

use crate::invocation::InvocationState;
use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime_wasi::cli::{WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
use wasmtime_wasi::p2::bindings::{cli, clocks, io, random};
use wasmtime_wasi::random::{WasiRandom, WasiRandomView};

/// `wasi:io` host traits are implemented directly on the resource table.
struct IoTable;

impl HasData for IoTable {
    type Data<'a> = &'a mut ResourceTable;
}

/// Baseline interfaces whose calls are counted per invocation (capability
/// calls, `wasi:filesystem` included, are each their own record instead).
pub const COUNTED: [&str; 18] = [
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:cli/exit",
    "wasi:cli/environment",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
];

/// Per-interface call counts of one invocation.
#[derive(Debug, Default, Clone)]
pub struct BaselineCounts([u64; COUNTED.len()]);

impl BaselineCounts {
    pub fn bump(&mut self, index: usize) {
        if let Some(n) = self.0.get_mut(index) {
            *n += 1;
        }
    }

    /// The non-zero counts by interface name.
    pub fn counts(&self) -> std::collections::BTreeMap<String, u64> {
        COUNTED
            .iter()
            .zip(self.0)
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| ((*name).to_string(), n))
            .collect()
    }
}

/// Link every baseline interface into `linker`. Each accessor counts the
/// call for the invocation's closing audit record (wasmtime calls the
/// accessor once per host call).
pub fn link(l: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
    type S = InvocationState;
    io::error::add_to_linker::<S, IoTable>(l, |s| s.counted(0).table())?;
    io::poll::add_to_linker::<S, IoTable>(l, |s| s.counted(1).table())?;
    io::streams::add_to_linker::<S, IoTable>(l, |s| s.counted(2).table())?;
    clocks::wall_clock::add_to_linker::<S, WasiClocks>(l, |s| s.counted(3).clocks())?;
    clocks::monotonic_clock::add_to_linker::<S, WasiClocks>(l, |s| s.counted(4).clocks())?;
    random::random::add_to_linker::<S, WasiRandom>(l, |s| s.counted(5).random())?;
    random::insecure::add_to_linker::<S, WasiRandom>(l, |s| s.counted(6).random())?;
    random::insecure_seed::add_to_linker::<S, WasiRandom>(l, |s| s.counted(7).random())?;
    cli::exit::add_to_linker::<S, WasiCli>(l, |s| s.counted(8).cli())?;
    cli::environment::add_to_linker::<S, WasiCli>(l, |s| s.counted(9).cli())?;
    cli::stdin::add_to_linker::<S, WasiCli>(l, |s| s.counted(10).cli())?;
    cli::stdout::add_to_linker::<S, WasiCli>(l, |s| s.counted(11).cli())?;
    cli::stderr::add_to_linker::<S, WasiCli>(l, |s| s.counted(12).cli())?;
    cli::terminal_input::add_to_linker::<S, WasiCli>(l, |s| s.counted(13).cli())?;
    cli::terminal_output::add_to_linker::<S, WasiCli>(l, |s| s.counted(14).cli())?;
    cli::terminal_stdin::add_to_linker::<S, WasiCli>(l, |s| s.counted(15).cli())?;
    cli::terminal_stdout::add_to_linker::<S, WasiCli>(l, |s| s.counted(16).cli())?;
    cli::terminal_stderr::add_to_linker::<S, WasiCli>(l, |s| s.counted(17).cli())?;
    Ok(())
}

impl InvocationState {
    /// Count one call into interface `COUNTED[index]`.
    pub(crate) fn counted(&mut self, index: usize) -> &mut InvocationState {
        self.baseline.bump(index);
        self
    }

    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}
