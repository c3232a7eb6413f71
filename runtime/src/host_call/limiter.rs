//! Per-invocation memory and table limits.

use crate::error::LimitExceeded;
use wasmtime::ResourceLimiter;

/// Table elements one table may grow to. Bounds host memory (one pointer
/// per element) for guests that grow tables in a loop.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Enforces the action's memory limit and remembers the peak it reached.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: u64,
    /// Largest size any single linear memory reached, in bytes.
    pub peak: u64,
}

impl MemoryLimiter {
    pub fn new(limit: u64) -> MemoryLimiter {
        MemoryLimiter { limit, peak: 0 }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.limit {
            // An error (rather than `Ok(false)`) traps the guest, so hitting
            // the limit is reported as such instead of as a guest OOM panic.
            return Err(wasmtime::Error::new(LimitExceeded::Memory { limit: self.limit }));
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
