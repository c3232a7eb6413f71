//! Captured stdout/stderr with a byte cap.
//!
//! A guest that writes past the cap traps with [`LimitExceeded::Output`];
//! the bytes before the cap are kept for the caller.

use crate::error::LimitExceeded;
use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Write permit advertised to the guest: guests write in chunks of at most
/// this, so a full buffer is detected on the next write, not by stalling.
const PERMIT_BYTES: usize = 64 * 1024;

/// One captured output stream.
#[derive(Clone)]
pub struct CapturedOutput {
    stream: &'static str,
    cap: u64,
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl CapturedOutput {
    pub fn new(stream: &'static str, cap: u64) -> CapturedOutput {
        CapturedOutput {
            stream,
            cap,
            buffer: Arc::default(),
        }
    }

    /// The bytes captured so far.
    pub fn contents(&self) -> Vec<u8> {
        self.buffer.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// Append what fits; `Err` once the cap is exceeded.
    fn append(&self, bytes: &[u8]) -> Result<(), LimitExceeded> {
        let mut buf = self.buffer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let room = usize::try_from(self.cap)
            .unwrap_or(usize::MAX)
            .saturating_sub(buf.len());
        if bytes.len() > room {
            buf.extend_from_slice(&bytes[..room]);
            return Err(LimitExceeded::Output {
                stream: self.stream,
                cap: self.cap,
            });
        }
        buf.extend_from_slice(bytes);
        Ok(())
    }
}

#[async_trait::async_trait]
impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes)
            .map_err(|e| StreamError::Trap(wasmtime::Error::new(e)))
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(PERMIT_BYTES)
    }
}

#[async_trait::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CapturedOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(match self.append(buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) => Err(std::io::Error::other(e)),
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}
