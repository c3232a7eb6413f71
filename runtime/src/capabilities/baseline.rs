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

/// Link every baseline interface into `linker`.
pub fn link(l: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
    type S = InvocationState;
    io::error::add_to_linker::<S, IoTable>(l, |s| &mut s.table)?;
    io::poll::add_to_linker::<S, IoTable>(l, |s| &mut s.table)?;
    io::streams::add_to_linker::<S, IoTable>(l, |s| &mut s.table)?;
    clocks::wall_clock::add_to_linker::<S, WasiClocks>(l, S::clocks)?;
    clocks::monotonic_clock::add_to_linker::<S, WasiClocks>(l, S::clocks)?;
    random::random::add_to_linker::<S, WasiRandom>(l, S::random)?;
    random::insecure::add_to_linker::<S, WasiRandom>(l, S::random)?;
    random::insecure_seed::add_to_linker::<S, WasiRandom>(l, S::random)?;
    cli::exit::add_to_linker::<S, WasiCli>(l, S::cli)?;
    cli::environment::add_to_linker::<S, WasiCli>(l, S::cli)?;
    cli::stdin::add_to_linker::<S, WasiCli>(l, S::cli)?;
    cli::stdout::add_to_linker::<S, WasiCli>(l, S::cli)?;
    cli::stderr::add_to_linker::<S, WasiCli>(l, S::cli)?;
    cli::terminal_input::add_to_linker::<S, WasiCli>(l, S::cli)?;
    cli::terminal_output::add_to_linker::<S, WasiCli>(l, S::cli)?;
    cli::terminal_stdin::add_to_linker::<S, WasiCli>(l, S::cli)?;
    cli::terminal_stdout::add_to_linker::<S, WasiCli>(l, S::cli)?;
    cli::terminal_stderr::add_to_linker::<S, WasiCli>(l, S::cli)?;
    Ok(())
}
