//! The streams `airlock mcp` speaks MCP over: its stdin and stdout, read
//! and written through the async runtime's reactor whenever they are pipes
//! or sockets, which is how an MCP client that starts the server connects
//! to it.
//!
//! tokio's own stdin and stdout block a thread of their own for every read
//! and every write, so each message crosses between threads twice. After
//! an invocation's audit sync (a disk wait long enough for idle threads to
//! sleep), waking those threads cost a `tools/call` about 100 µs on this
//! project's 2-core VM (BENCHMARKS.md, M11 point 7). Read and written in
//! non-blocking mode, a message is read by the task that waits for it and
//! an answer written by the task that sends it.
//!
//! - **Pipes** (what Python's and Rust's process spawning give a child)
//!   go through rmcp's [`stdio_pipes`](rmcp::transport::stdio_pipes): it
//!   reopens them through `/proc/self/fd`, so the non-blocking mode stays
//!   on descriptions of their own and never reaches the process's own
//!   streams or anyone sharing them.
//! - **Sockets** (what Node's `child_process` gives a child: a socket pair
//!   per stream) cannot be reopened. They are switched to non-blocking
//!   mode in place, and those that were blocking are switched back when
//!   the session ends (not when the process is killed: only a process that
//!   shares the socket's description, such as a wrapper that passed its own
//!   on, could notice). A socket that is also stderr is left alone: log
//!   lines written there must never fail with "would block".
//! - Anything else (a terminal, a file, a mix), and any stream the checks
//!   cannot read, falls back to tokio's blocking stdin and stdout: slower,
//!   never wrong.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::os::unix::net::UnixStream;
use tokio::io::{AsyncRead, AsyncWrite};

/// A session's stdin, for rmcp's transport.
pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// A session's stdout, for rmcp's transport.
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// How a session's streams are read and written, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Through the reactor, stdin and stdout being sockets.
    Sockets,
    /// Through the reactor if both are pipes (reopened), else blocking:
    /// rmcp's `stdio_pipes` decides, and logs which at debug level.
    PipesOrBlocking,
}

/// Switches the sockets a session made non-blocking (that were blocking)
/// back to blocking when dropped, once the session no longer uses them.
#[derive(Debug, Default)]
pub struct Restore(Vec<UnixStream>);

impl Drop for Restore {
    fn drop(&mut self) {
        for socket in &self.0 {
            if let Err(e) = socket.set_nonblocking(false) {
                tracing::debug!("cannot switch an MCP stdio socket back to blocking mode: {e}");
            }
        }
    }
}

/// Stdin and stdout for one MCP session over stdio, as fast as their
/// kinds allow. Must be called within the tokio runtime.
pub fn open() -> (Reader, Writer, Restore, Mode) {
    let (stdin, stdout, stderr) = (io::stdin(), io::stdout(), io::stderr());
    match sockets(stdin.as_fd(), stdout.as_fd(), stderr.as_fd()) {
        Ok(Some((reader, writer, restore))) => (reader, writer, restore, Mode::Sockets),
        Ok(None) => pipes_or_blocking(),
        Err(e) => {
            tracing::debug!("MCP stdio: cannot inspect stdin and stdout ({e}); using blocking reads and writes");
            pipes_or_blocking()
        }
    }
}

fn pipes_or_blocking() -> (Reader, Writer, Restore, Mode) {
    let (reader, writer) = rmcp::transport::stdio_pipes();
    (
        Box::new(reader),
        Box::new(writer),
        Restore::default(),
        Mode::PipesOrBlocking,
    )
}

/// A file's identity (device, inode) and whether it is a socket.
fn inspect(fd: BorrowedFd<'_>) -> io::Result<((u64, u64), bool)> {
    let file = std::fs::File::from(fd.try_clone_to_owned()?);
    let meta = file.metadata()?;
    Ok(((meta.dev(), meta.ino()), meta.file_type().is_socket()))
}

/// `input` and `output` as non-blocking sockets on the reactor, when both
/// are sockets and neither is the same socket as `errors`; `None` when
/// they are not.
fn sockets(
    input: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
    errors: BorrowedFd<'_>,
) -> io::Result<Option<(Reader, Writer, Restore)>> {
    let (input_id, input_is_socket) = inspect(input)?;
    let (output_id, output_is_socket) = inspect(output)?;
    if !input_is_socket || !output_is_socket {
        return Ok(None);
    }
    // stderr unreadable (closed): nothing of ours can share it.
    if let Ok((errors_id, _)) = inspect(errors)
        && (errors_id == input_id || errors_id == output_id)
    {
        return Ok(None);
    }
    let mut restore = Restore::default();
    let mut open = |fd: BorrowedFd<'_>| -> io::Result<tokio::net::UnixStream> {
        let socket = UnixStream::from(fd.try_clone_to_owned()?);
        // Only a socket that was blocking is switched back: one that was
        // already non-blocking stays as its other holders expect it.
        // Remembered before the switch, so a failure halfway still undoes it.
        if !rustix::fs::fcntl_getfl(&socket)?.contains(rustix::fs::OFlags::NONBLOCK) {
            restore.0.push(socket.try_clone()?);
        }
        socket.set_nonblocking(true)?;
        tokio::net::UnixStream::from_std(socket)
    };
    let reader = open(input)?;
    let writer = open(output)?;
    Ok(Some((Box::new(reader), Box::new(writer), restore)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

    /// Whether `socket` blocks on a read with nothing to read: a blocking
    /// socket waits out its 50 ms timeout, a non-blocking one answers at
    /// once.
    fn blocks(socket: &UnixStream) -> bool {
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let start = Instant::now();
        let got = (&*socket).read(&mut [0u8; 1]);
        assert!(got.is_err(), "nothing was written: {got:?}");
        start.elapsed() >= Duration::from_millis(40)
    }

    #[tokio::test]
    async fn socket_streams_round_trip_on_the_reactor_and_are_blocking_again_after() {
        let (stdin, mut client_in) = UnixStream::pair().unwrap();
        let (stdout, mut client_out) = UnixStream::pair().unwrap();
        let (stderr, _keep) = UnixStream::pair().unwrap();
        let (reader, mut writer, restore) = sockets(stdin.as_fd(), stdout.as_fd(), stderr.as_fd())
            .unwrap()
            .expect("two sockets, neither stderr");
        assert!(!blocks(&stdin), "switched to non-blocking for the session");

        client_in.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1}\n").unwrap();
        let mut line = String::new();
        tokio::io::BufReader::new(reader).read_line(&mut line).await.unwrap();
        assert_eq!(line, "{\"jsonrpc\":\"2.0\",\"id\":1}\n");
        writer.write_all(b"answer\n").await.unwrap();
        writer.flush().await.unwrap();
        let mut got = [0u8; 7];
        client_out.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"answer\n");

        drop(restore);
        assert!(blocks(&stdin), "stdin is blocking again once the session ends");
        assert!(blocks(&stdout), "so is stdout");

        // A socket that was non-blocking before is left non-blocking.
        stdin.set_nonblocking(true).unwrap();
        let (_, _, restore) = sockets(stdin.as_fd(), stdout.as_fd(), stderr.as_fd())
            .unwrap()
            .expect("two sockets");
        drop(restore);
        assert!(!blocks(&stdin), "stdin was non-blocking before, and still is");
        assert!(blocks(&stdout), "stdout was blocking before, and is again");
    }

    #[tokio::test]
    async fn a_socket_that_is_also_stderr_or_not_a_socket_is_left_alone() {
        let (stdin, _a) = UnixStream::pair().unwrap();
        let (stdout, _b) = UnixStream::pair().unwrap();
        // `2>&1`: stderr is stdout.
        let shared = sockets(stdin.as_fd(), stdout.as_fd(), stdout.as_fd()).unwrap();
        assert!(shared.is_none());
        assert!(blocks(&stdin) && blocks(&stdout), "nothing was switched");
        // A pipe or a file is not a socket: rmcp's pipes, or blocking.
        let file = tempfile::tempfile().unwrap();
        assert!(sockets(file.as_fd(), stdout.as_fd(), file.as_fd()).unwrap().is_none());
        let (pipe_read, _pipe_write) = std::io::pipe().unwrap();
        let errors = std::fs::File::open("/dev/null").unwrap();
        assert!(
            sockets(pipe_read.as_fd(), stdout.as_fd(), errors.as_fd())
                .unwrap()
                .is_none()
        );
        assert!(blocks(&stdout), "still blocking");
    }
}
