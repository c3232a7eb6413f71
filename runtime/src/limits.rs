//! Per-action resource limits and their safe defaults.

use serde::Deserialize;
use std::time::Duration;

/// Wall-clock time an invocation may take, including time blocked in host
/// calls. Protects the host from guests that spin or sleep forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest timeout a policy may set.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Linear memory an instance may grow to. Bounds host memory per invocation.
pub const DEFAULT_MEMORY_BYTES: u64 = 64 << 20;
/// The most memory a policy may grant one instance (the pooling allocator's
/// slot size is set to this).
pub const MAX_MEMORY_BYTES: u64 = 4 << 30;

/// Bytes of JSON a result may print to. Bounds what one invocation can push
/// back to the caller.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 1 << 20;
/// Bytes each of stdout and stderr may capture before the guest traps.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 1 << 20;
/// Bytes of log lines kept per invocation; further lines are dropped and
/// counted.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 1 << 20;

/// Resource limits for one action, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub timeout: Duration,
    pub memory_bytes: u64,
    /// Wasm fuel (roughly, instructions); `None` means unmetered.
    pub fuel: Option<u64>,
    pub max_result_bytes: u64,
    pub max_output_bytes: u64,
    pub max_log_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: DEFAULT_TIMEOUT,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            fuel: None,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
        }
    }
}

/// Limits as written in a config or on the command line; unset fields take
/// the defaults above.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitOverrides {
    pub timeout_ms: Option<u64>,
    pub memory_mib: Option<u64>,
    pub fuel: Option<u64>,
    pub max_result_bytes: Option<u64>,
    pub max_output_bytes: Option<u64>,
    pub max_log_bytes: Option<u64>,
}

impl LimitOverrides {
    /// Apply the overrides to the defaults, refusing values out of range.
    pub fn resolve(&self) -> Result<Limits, String> {
        let d = Limits::default();
        let timeout = match self.timeout_ms {
            None => d.timeout,
            Some(0) => return Err("timeout-ms must be at least 1".into()),
            Some(ms) if Duration::from_millis(ms) > MAX_TIMEOUT => {
                return Err(format!(
                    "timeout-ms = {ms} exceeds the maximum of {}",
                    MAX_TIMEOUT.as_millis()
                ));
            }
            Some(ms) => Duration::from_millis(ms),
        };
        let memory_bytes = match self.memory_mib {
            None => d.memory_bytes,
            Some(0) => return Err("memory-mib must be at least 1".into()),
            Some(mib) if mib > MAX_MEMORY_BYTES >> 20 => {
                return Err(format!(
                    "memory-mib = {mib} exceeds the maximum of {}",
                    MAX_MEMORY_BYTES >> 20
                ));
            }
            Some(mib) => mib << 20,
        };
        if self.fuel == Some(0) {
            return Err("fuel must be at least 1 (omit it for unmetered execution)".into());
        }
        Ok(Limits {
            timeout,
            memory_bytes,
            fuel: self.fuel,
            max_result_bytes: self.max_result_bytes.unwrap_or(d.max_result_bytes),
            max_output_bytes: self.max_output_bytes.unwrap_or(d.max_output_bytes),
            max_log_bytes: self.max_log_bytes.unwrap_or(d.max_log_bytes),
        })
    }
}
