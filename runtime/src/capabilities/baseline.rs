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
//!
//! These calls are too frequent and too harmless to be one audit record
//! each, so every baseline function is served through [`Counted`], which
//! counts the call per function before delegating to wasmtime-wasi; the
//! counts go into the invocation's closing record. There is no way to
//! reach a baseline function that skips the count: the linker only ever
//! sees the counting implementations below.

use super::catalog::{Interface, WASI_0_2};
use crate::host_call::InvocationState;
use wasmtime::Result;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::cli::WasiCliCtxView;
use wasmtime_wasi::clocks::WasiClocksCtxView;
use wasmtime_wasi::p2::bindings::{cli, clocks, io, random};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, IoError, StreamError, StreamResult};
use wasmtime_wasi::random::WasiRandomCtx;

/// The interfaces of the inert baseline: WASI plumbing served with no
/// authority, linked for every action.
pub const INTERFACES: &[Interface] = &[
    Interface {
        family: &WASI_0_2,
        name: "wasi:cli/environment",
        meaning: "environment variables and arguments: always empty",
    },
    Interface {
        family: &WASI_0_2,
        name: "wasi:cli/exit",
        meaning: "ends the action early; the host keeps running",
    },
    Interface {
        family: &WASI_0_2,
        name: "wasi:cli/stdin",
        meaning: "standard input: always empty",
    },
    Interface {
        family: &WASI_0_2,
        name: "wasi:cli/stdout",
        meaning: "standard output: captured per invocation, capped",
    },
    Interface {
        family: &WASI_0_2,
        name: "wasi:cli/stderr",
        meaning: "standard error: captured per invocation, capped",
    },
    Interface {
        family: &WASI_0_2,
        name: "wasi:cli/terminal-input",
        meaning: "terminal handles: there is never a terminal",
    },
    Interface {
        family: &WASI_0_2,
        name: "wasi:cli/terminal-output",
        meaning: "terminal handles: there is never a terminal",
    },
    Interface {
        family: &WASI_0_2,
        name: "wasi:cli/terminal-stdin",
        meaning: "terminal query: stdin is never a terminal",
    },
    Interface {
        family: &WASI_0_2,
        name: "wasi:cli/terminal-stdout",
        meaning: "terminal query: stdout is never a terminal",
    },
    Interface {
        family: &WASI_0_2,
        name: "wasi:cli/terminal-stderr",
        meaning: "terminal query: stderr is never a terminal",
    },
    Interface {
        family: &WASI_0_2,
        name: "wasi:io/error",
        meaning: "error values of stream operations",
    },
    Interface {
        family: &WASI_0_2,
        name: "wasi:io/poll",
        meaning: "waiting on the component's own streams and timers",
    },
    Interface {
        family: &WASI_0_2,
        name: "wasi:io/streams",
        meaning: "byte streams (only those the component was handed)",
    },
    Interface {
        family: &WASI_0_2,
        name: "wasi:clocks/wall-clock",
        meaning: "reads the current time",
    },
    Interface {
        family: &WASI_0_2,
        name: "wasi:clocks/monotonic-clock",
        meaning: "reads a monotonic clock; sleeps count against the timeout",
    },
    Interface {
        family: &WASI_0_2,
        name: "wasi:random/random",
        meaning: "cryptographically secure random bytes",
    },
    Interface {
        family: &WASI_0_2,
        name: "wasi:random/insecure",
        meaning: "fast non-cryptographic random bytes",
    },
    Interface {
        family: &WASI_0_2,
        name: "wasi:random/insecure-seed",
        meaning: "a per-instance random seed",
    },
];

macro_rules! baseline_functions {
    ($($id:ident = $name:literal,)*) => {
        /// One baseline function, an index into [`FUNCTIONS`].
        #[derive(Clone, Copy)]
        #[allow(non_camel_case_types)]
        enum Function { $($id,)* }

        /// Every baseline function by its component-model name
        /// (`interface.function`), in [`Function`] order.
        pub const FUNCTIONS: &[&str] = &[$($name,)*];
    };
}

baseline_functions! {
    error_drop = "wasi:io/error.[resource-drop]error",
    error_to_debug_string = "wasi:io/error.[method]error.to-debug-string",
    poll = "wasi:io/poll.poll",
    pollable_ready = "wasi:io/poll.[method]pollable.ready",
    pollable_block = "wasi:io/poll.[method]pollable.block",
    pollable_drop = "wasi:io/poll.[resource-drop]pollable",
    input_read = "wasi:io/streams.[method]input-stream.read",
    input_blocking_read = "wasi:io/streams.[method]input-stream.blocking-read",
    input_skip = "wasi:io/streams.[method]input-stream.skip",
    input_blocking_skip = "wasi:io/streams.[method]input-stream.blocking-skip",
    input_subscribe = "wasi:io/streams.[method]input-stream.subscribe",
    input_drop = "wasi:io/streams.[resource-drop]input-stream",
    output_check_write = "wasi:io/streams.[method]output-stream.check-write",
    output_write = "wasi:io/streams.[method]output-stream.write",
    output_blocking_write_and_flush = "wasi:io/streams.[method]output-stream.blocking-write-and-flush",
    output_flush = "wasi:io/streams.[method]output-stream.flush",
    output_blocking_flush = "wasi:io/streams.[method]output-stream.blocking-flush",
    output_subscribe = "wasi:io/streams.[method]output-stream.subscribe",
    output_write_zeroes = "wasi:io/streams.[method]output-stream.write-zeroes",
    output_blocking_write_zeroes_and_flush = "wasi:io/streams.[method]output-stream.blocking-write-zeroes-and-flush",
    output_splice = "wasi:io/streams.[method]output-stream.splice",
    output_blocking_splice = "wasi:io/streams.[method]output-stream.blocking-splice",
    output_drop = "wasi:io/streams.[resource-drop]output-stream",
    wall_now = "wasi:clocks/wall-clock.now",
    wall_resolution = "wasi:clocks/wall-clock.resolution",
    monotonic_now = "wasi:clocks/monotonic-clock.now",
    monotonic_resolution = "wasi:clocks/monotonic-clock.resolution",
    monotonic_subscribe_instant = "wasi:clocks/monotonic-clock.subscribe-instant",
    monotonic_subscribe_duration = "wasi:clocks/monotonic-clock.subscribe-duration",
    random_bytes = "wasi:random/random.get-random-bytes",
    random_u64 = "wasi:random/random.get-random-u64",
    insecure_bytes = "wasi:random/insecure.get-insecure-random-bytes",
    insecure_u64 = "wasi:random/insecure.get-insecure-random-u64",
    insecure_seed = "wasi:random/insecure-seed.insecure-seed",
    exit = "wasi:cli/exit.exit",
    exit_with_code = "wasi:cli/exit.exit-with-code",
    get_environment = "wasi:cli/environment.get-environment",
    get_arguments = "wasi:cli/environment.get-arguments",
    initial_cwd = "wasi:cli/environment.initial-cwd",
    get_stdin = "wasi:cli/stdin.get-stdin",
    get_stdout = "wasi:cli/stdout.get-stdout",
    get_stderr = "wasi:cli/stderr.get-stderr",
    terminal_input_drop = "wasi:cli/terminal-input.[resource-drop]terminal-input",
    terminal_output_drop = "wasi:cli/terminal-output.[resource-drop]terminal-output",
    get_terminal_stdin = "wasi:cli/terminal-stdin.get-terminal-stdin",
    get_terminal_stdout = "wasi:cli/terminal-stdout.get-terminal-stdout",
    get_terminal_stderr = "wasi:cli/terminal-stderr.get-terminal-stderr",
}

/// Per-function call counts of one invocation.
#[derive(Debug, Clone)]
pub struct BaselineCounts([u64; FUNCTIONS.len()]);

impl Default for BaselineCounts {
    fn default() -> Self {
        BaselineCounts([0; FUNCTIONS.len()])
    }
}

impl BaselineCounts {
    fn bump(&mut self, function: Function) {
        // The enum and the table come from one macro list; `get_mut`
        // keeps a mismatch from ever panicking on guest input.
        if let Some(n) = self.0.get_mut(function as usize) {
            *n = n.saturating_add(1);
        }
    }

    /// The non-zero counts by function name.
    pub fn counts(&self) -> std::collections::BTreeMap<String, u64> {
        FUNCTIONS
            .iter()
            .zip(self.0)
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| ((*name).to_string(), n))
            .collect()
    }
}

/// A wasmtime-wasi implementation `V` that counts every call it serves.
pub struct Counted<'a, V> {
    inner: V,
    counts: &'a mut BaselineCounts,
}

impl<V> Counted<'_, V> {
    /// Count one call to `function` and hand out the implementation.
    fn tick(&mut self, function: Function) -> &mut V {
        self.counts.bump(function);
        &mut self.inner
    }
}

/// `HasData` markers: which view each group of interfaces is served from.
struct Io;
struct Clocks;
struct Random;
struct Cli;

impl HasData for Io {
    type Data<'a> = Counted<'a, &'a mut ResourceTable>;
}
impl HasData for Clocks {
    type Data<'a> = Counted<'a, WasiClocksCtxView<'a>>;
}
impl HasData for Random {
    type Data<'a> = Counted<'a, &'a mut WasiRandomCtx>;
}
impl HasData for Cli {
    type Data<'a> = Counted<'a, WasiCliCtxView<'a>>;
}

fn io_view(s: &mut InvocationState) -> Counted<'_, &mut ResourceTable> {
    Counted {
        inner: &mut s.table,
        counts: s.slots.get_or_default(),
    }
}

fn clocks_view(s: &mut InvocationState) -> Counted<'_, WasiClocksCtxView<'_>> {
    Counted {
        inner: WasiClocksCtxView {
            ctx: s.wasi.clocks(),
            table: &mut s.table,
        },
        counts: s.slots.get_or_default(),
    }
}

fn random_view(s: &mut InvocationState) -> Counted<'_, &mut WasiRandomCtx> {
    Counted {
        inner: s.wasi.random(),
        counts: s.slots.get_or_default(),
    }
}

fn cli_view(s: &mut InvocationState) -> Counted<'_, WasiCliCtxView<'_>> {
    Counted {
        inner: WasiCliCtxView {
            ctx: s.wasi.cli(),
            table: &mut s.table,
        },
        counts: s.slots.get_or_default(),
    }
}

/// Link every baseline interface into `linker`, each call counted.
pub fn link(l: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
    type S = InvocationState;
    io::error::add_to_linker::<S, Io>(l, io_view)?;
    io::poll::add_to_linker::<S, Io>(l, io_view)?;
    io::streams::add_to_linker::<S, Io>(l, io_view)?;
    clocks::wall_clock::add_to_linker::<S, Clocks>(l, clocks_view)?;
    clocks::monotonic_clock::add_to_linker::<S, Clocks>(l, clocks_view)?;
    random::random::add_to_linker::<S, Random>(l, random_view)?;
    random::insecure::add_to_linker::<S, Random>(l, random_view)?;
    random::insecure_seed::add_to_linker::<S, Random>(l, random_view)?;
    cli::exit::add_to_linker::<S, Cli>(l, cli_view)?;
    cli::environment::add_to_linker::<S, Cli>(l, cli_view)?;
    cli::stdin::add_to_linker::<S, Cli>(l, cli_view)?;
    cli::stdout::add_to_linker::<S, Cli>(l, cli_view)?;
    cli::stderr::add_to_linker::<S, Cli>(l, cli_view)?;
    cli::terminal_input::add_to_linker::<S, Cli>(l, cli_view)?;
    cli::terminal_output::add_to_linker::<S, Cli>(l, cli_view)?;
    cli::terminal_stdin::add_to_linker::<S, Cli>(l, cli_view)?;
    cli::terminal_stdout::add_to_linker::<S, Cli>(l, cli_view)?;
    cli::terminal_stderr::add_to_linker::<S, Cli>(l, cli_view)?;
    Ok(())
}

// ---- wasi:io -------------------------------------------------------------

type Table<'a> = Counted<'a, &'a mut ResourceTable>;

impl io::error::Host for Table<'_> {}

impl io::error::HostError for Table<'_> {
    fn drop(&mut self, err: Resource<IoError>) -> Result<()> {
        io::error::HostError::drop(&mut **self.tick(Function::error_drop), err)
    }

    fn to_debug_string(&mut self, err: Resource<IoError>) -> Result<String> {
        io::error::HostError::to_debug_string(&mut **self.tick(Function::error_to_debug_string), err)
    }
}

impl io::poll::Host for Table<'_> {
    async fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> Result<Vec<u32>> {
        io::poll::Host::poll(&mut **self.tick(Function::poll), pollables).await
    }
}

impl io::poll::HostPollable for Table<'_> {
    async fn block(&mut self, pollable: Resource<DynPollable>) -> Result<()> {
        io::poll::HostPollable::block(&mut **self.tick(Function::pollable_block), pollable).await
    }

    async fn ready(&mut self, pollable: Resource<DynPollable>) -> Result<bool> {
        io::poll::HostPollable::ready(&mut **self.tick(Function::pollable_ready), pollable).await
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> Result<()> {
        io::poll::HostPollable::drop(&mut **self.tick(Function::pollable_drop), pollable)
    }
}

impl io::streams::Host for Table<'_> {
    // A conversion wasmtime calls on the way out of a stream function,
    // not a guest-callable function: not counted.
    fn convert_stream_error(&mut self, err: StreamError) -> Result<io::streams::StreamError> {
        io::streams::Host::convert_stream_error(&mut *self.inner, err)
    }
}

impl io::streams::HostInputStream for Table<'_> {
    async fn drop(&mut self, stream: Resource<DynInputStream>) -> Result<()> {
        io::streams::HostInputStream::drop(&mut **self.tick(Function::input_drop), stream).await
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        io::streams::HostInputStream::read(&mut **self.tick(Function::input_read), stream, len)
    }

    async fn blocking_read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        let table = &mut **self.tick(Function::input_blocking_read);
        io::streams::HostInputStream::blocking_read(table, stream, len).await
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        io::streams::HostInputStream::skip(&mut **self.tick(Function::input_skip), stream, len)
    }

    async fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        let table = &mut **self.tick(Function::input_blocking_skip);
        io::streams::HostInputStream::blocking_skip(table, stream, len).await
    }

    fn subscribe(&mut self, stream: Resource<DynInputStream>) -> Result<Resource<DynPollable>> {
        io::streams::HostInputStream::subscribe(&mut **self.tick(Function::input_subscribe), stream)
    }
}

impl io::streams::HostOutputStream for Table<'_> {
    async fn drop(&mut self, stream: Resource<DynOutputStream>) -> Result<()> {
        io::streams::HostOutputStream::drop(&mut **self.tick(Function::output_drop), stream).await
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        let table = &mut **self.tick(Function::output_check_write);
        io::streams::HostOutputStream::check_write(table, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        io::streams::HostOutputStream::write(&mut **self.tick(Function::output_write), stream, bytes)
    }

    async fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        let table = &mut **self.tick(Function::output_blocking_write_and_flush);
        io::streams::HostOutputStream::blocking_write_and_flush(table, stream, bytes).await
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        io::streams::HostOutputStream::flush(&mut **self.tick(Function::output_flush), stream)
    }

    async fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        let table = &mut **self.tick(Function::output_blocking_flush);
        io::streams::HostOutputStream::blocking_flush(table, stream).await
    }

    fn subscribe(&mut self, stream: Resource<DynOutputStream>) -> Result<Resource<DynPollable>> {
        let table = &mut **self.tick(Function::output_subscribe);
        io::streams::HostOutputStream::subscribe(table, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        let table = &mut **self.tick(Function::output_write_zeroes);
        io::streams::HostOutputStream::write_zeroes(table, stream, len)
    }

    async fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        let table = &mut **self.tick(Function::output_blocking_write_zeroes_and_flush);
        io::streams::HostOutputStream::blocking_write_zeroes_and_flush(table, stream, len).await
    }

    fn splice(
        &mut self,
        dest: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        let table = &mut **self.tick(Function::output_splice);
        io::streams::HostOutputStream::splice(table, dest, src, len)
    }

    async fn blocking_splice(
        &mut self,
        dest: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        let table = &mut **self.tick(Function::output_blocking_splice);
        io::streams::HostOutputStream::blocking_splice(table, dest, src, len).await
    }
}

// ---- wasi:clocks ---------------------------------------------------------

use clocks::monotonic_clock::{Duration as WasiDuration, Instant};
use clocks::wall_clock::Datetime;

impl clocks::wall_clock::Host for Counted<'_, WasiClocksCtxView<'_>> {
    fn now(&mut self) -> Result<Datetime> {
        clocks::wall_clock::Host::now(self.tick(Function::wall_now))
    }

    fn resolution(&mut self) -> Result<Datetime> {
        clocks::wall_clock::Host::resolution(self.tick(Function::wall_resolution))
    }
}

impl clocks::monotonic_clock::Host for Counted<'_, WasiClocksCtxView<'_>> {
    fn now(&mut self) -> Result<Instant> {
        clocks::monotonic_clock::Host::now(self.tick(Function::monotonic_now))
    }

    fn resolution(&mut self) -> Result<Instant> {
        clocks::monotonic_clock::Host::resolution(self.tick(Function::monotonic_resolution))
    }

    fn subscribe_instant(&mut self, when: Instant) -> Result<Resource<DynPollable>> {
        let clocks = self.tick(Function::monotonic_subscribe_instant);
        clocks::monotonic_clock::Host::subscribe_instant(clocks, when)
    }

    fn subscribe_duration(&mut self, duration: WasiDuration) -> Result<Resource<DynPollable>> {
        let clocks = self.tick(Function::monotonic_subscribe_duration);
        clocks::monotonic_clock::Host::subscribe_duration(clocks, duration)
    }
}

// ---- wasi:random ---------------------------------------------------------

impl random::random::Host for Counted<'_, &mut WasiRandomCtx> {
    fn get_random_bytes(&mut self, len: u64) -> Result<Vec<u8>> {
        random::random::Host::get_random_bytes(&mut **self.tick(Function::random_bytes), len)
    }

    fn get_random_u64(&mut self) -> Result<u64> {
        random::random::Host::get_random_u64(&mut **self.tick(Function::random_u64))
    }
}

impl random::insecure::Host for Counted<'_, &mut WasiRandomCtx> {
    fn get_insecure_random_bytes(&mut self, len: u64) -> Result<Vec<u8>> {
        let ctx = &mut **self.tick(Function::insecure_bytes);
        random::insecure::Host::get_insecure_random_bytes(ctx, len)
    }

    fn get_insecure_random_u64(&mut self) -> Result<u64> {
        random::insecure::Host::get_insecure_random_u64(&mut **self.tick(Function::insecure_u64))
    }
}

impl random::insecure_seed::Host for Counted<'_, &mut WasiRandomCtx> {
    fn insecure_seed(&mut self) -> Result<(u64, u64)> {
        random::insecure_seed::Host::insecure_seed(&mut **self.tick(Function::insecure_seed))
    }
}

// ---- wasi:cli ------------------------------------------------------------

type CliView<'a> = Counted<'a, WasiCliCtxView<'a>>;

impl cli::exit::Host for CliView<'_> {
    fn exit(&mut self, status: std::result::Result<(), ()>) -> Result<()> {
        cli::exit::Host::exit(self.tick(Function::exit), status)
    }

    fn exit_with_code(&mut self, status_code: u8) -> Result<()> {
        cli::exit::Host::exit_with_code(self.tick(Function::exit_with_code), status_code)
    }
}

impl cli::environment::Host for CliView<'_> {
    fn get_environment(&mut self) -> Result<Vec<(String, String)>> {
        cli::environment::Host::get_environment(self.tick(Function::get_environment))
    }

    fn get_arguments(&mut self) -> Result<Vec<String>> {
        cli::environment::Host::get_arguments(self.tick(Function::get_arguments))
    }

    fn initial_cwd(&mut self) -> Result<Option<String>> {
        cli::environment::Host::initial_cwd(self.tick(Function::initial_cwd))
    }
}

impl cli::stdin::Host for CliView<'_> {
    fn get_stdin(&mut self) -> Result<Resource<DynInputStream>> {
        cli::stdin::Host::get_stdin(self.tick(Function::get_stdin))
    }
}

impl cli::stdout::Host for CliView<'_> {
    fn get_stdout(&mut self) -> Result<Resource<DynOutputStream>> {
        cli::stdout::Host::get_stdout(self.tick(Function::get_stdout))
    }
}

impl cli::stderr::Host for CliView<'_> {
    fn get_stderr(&mut self) -> Result<Resource<DynOutputStream>> {
        cli::stderr::Host::get_stderr(self.tick(Function::get_stderr))
    }
}

use cli::terminal_input::TerminalInput;
use cli::terminal_output::TerminalOutput;

impl cli::terminal_input::Host for CliView<'_> {}

impl cli::terminal_input::HostTerminalInput for CliView<'_> {
    fn drop(&mut self, r: Resource<TerminalInput>) -> Result<()> {
        cli::terminal_input::HostTerminalInput::drop(self.tick(Function::terminal_input_drop), r)
    }
}

impl cli::terminal_output::Host for CliView<'_> {}

impl cli::terminal_output::HostTerminalOutput for CliView<'_> {
    fn drop(&mut self, r: Resource<TerminalOutput>) -> Result<()> {
        let cli = self.tick(Function::terminal_output_drop);
        cli::terminal_output::HostTerminalOutput::drop(cli, r)
    }
}

impl cli::terminal_stdin::Host for CliView<'_> {
    fn get_terminal_stdin(&mut self) -> Result<Option<Resource<TerminalInput>>> {
        cli::terminal_stdin::Host::get_terminal_stdin(self.tick(Function::get_terminal_stdin))
    }
}

impl cli::terminal_stdout::Host for CliView<'_> {
    fn get_terminal_stdout(&mut self) -> Result<Option<Resource<TerminalOutput>>> {
        cli::terminal_stdout::Host::get_terminal_stdout(self.tick(Function::get_terminal_stdout))
    }
}

impl cli::terminal_stderr::Host for CliView<'_> {
    fn get_terminal_stderr(&mut self) -> Result<Option<Resource<TerminalOutput>>> {
        cli::terminal_stderr::Host::get_terminal_stderr(self.tick(Function::get_terminal_stderr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_has_a_distinct_name() {
        let mut names: Vec<&str> = FUNCTIONS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FUNCTIONS.len());
    }

    #[test]
    fn counts_are_per_function() {
        let mut counts = BaselineCounts::default();
        counts.bump(Function::output_write);
        counts.bump(Function::output_write);
        counts.bump(Function::get_stdout);
        let counts = counts.counts();
        assert_eq!(counts.len(), 2);
        assert_eq!(counts["wasi:io/streams.[method]output-stream.write"], 2);
        assert_eq!(counts["wasi:cli/stdout.get-stdout"], 1);
    }
}
