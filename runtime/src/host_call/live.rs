//! What the watcher of a running invocation (an MCP client) is shown as it
//! happens: the action's log lines and the calls the choke point refused.

use crate::call::Denied;

/// One event of a running invocation.
#[derive(Debug, Clone)]
pub enum Live {
    /// A line the action logged.
    Log(LogLine),
    /// A call the choke point refused.
    Denied(Denied),
}

/// Where [`Live`] events go: bounded, so a run never waits for a watcher.
pub type LiveSink = tokio::sync::mpsc::Sender<Live>;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// One line an action logged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    pub level: Level,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

impl LogLine {
    /// The bytes the line holds, as counted against `max-log-bytes`.
    pub fn size(&self) -> u64 {
        let fields: usize = self.fields.iter().map(|(k, v)| k.len() + v.len()).sum();
        (self.message.len() + fields) as u64
    }
}
