//! Prometheus metrics: what the service counts, and `/metrics` in the
//! OpenMetrics text format (the Prometheus project's `prometheus-client`).
//!
//! One registry per process, filled as work happens: the choke point counts
//! host calls, the invocation path times its phases, the audit writer its
//! groups and syncs, the store every operation, the service its requests
//! and refusals. A few values are read when scraped (pending approvals),
//! so every node reports what the shared store holds.
//!
//! Every name starts with `airlock_`; counters end in `_total`, times are
//! seconds. Label values come from the config (action names) or from fixed
//! lists (capabilities, outcomes, operations), never from what a caller
//! sends, so a caller cannot grow the label space. The names and labels
//! are listed in the README ("Metrics").

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::sync::LazyLock;
use std::time::Duration;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Label = Cow<'static, str>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InvocationLabels {
    pub action: Label,
    pub outcome: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostCallLabels {
    pub capability: Label,
    pub decision: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub verdict: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimiterLabels {
    pub limiter: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub surface: Label,
    pub status: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SurfaceLabels {
    pub surface: Label,
}

/// Buckets from 50 µs to about 100 s, doubling: invocations, syncs, store
/// operations and requests all fall in it.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 22))
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    pub invocations: Family<InvocationLabels, Counter>,
    pub invocation_queue_seconds: Family<ActionLabels, Histogram, fn() -> Histogram>,
    pub invocation_run_seconds: Family<ActionLabels, Histogram, fn() -> Histogram>,
    pub invocation_audit_wait_seconds: Family<ActionLabels, Histogram, fn() -> Histogram>,
    pub host_calls: Family<HostCallLabels, Counter>,
    pub approvals_requested: Counter,
    pub approval_votes: Family<VerdictLabels, Counter>,
    pub approvals_expired: Counter,
    pub approvals_pending: Gauge,
    pub audit_group_appends: Histogram,
    pub audit_sync_seconds: Histogram,
    pub audit_write_failures: Counter,
    pub audit_head_sequence: Gauge,
    pub store_seconds: Family<OperationLabels, Histogram, fn() -> Histogram>,
    pub rate_limited: Family<LimiterLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<SurfaceLabels, Histogram, fn() -> Histogram>,
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::with_prefix("airlock"),
            invocations: Family::default(),
            invocation_queue_seconds: Family::new_with_constructor(seconds),
            invocation_run_seconds: Family::new_with_constructor(seconds),
            invocation_audit_wait_seconds: Family::new_with_constructor(seconds),
            host_calls: Family::default(),
            approvals_requested: Counter::default(),
            approval_votes: Family::default(),
            approvals_expired: Counter::default(),
            approvals_pending: Gauge::default(),
            audit_group_appends: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            audit_sync_seconds: seconds(),
            audit_write_failures: Counter::default(),
            audit_head_sequence: Gauge::default(),
            store_seconds: Family::new_with_constructor(seconds),
            rate_limited: Family::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(seconds),
        };
        m.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "invocations",
            "Invocations ended, by action and outcome (ok, action-error, invalid, refused, limit, cancelled, unavailable, tampered)",
            self.invocations.clone(),
        );
        r.register(
            "invocation_queue_seconds",
            "Time from an invocation's admission to its instance starting (argument checks, the durable start record)",
            self.invocation_queue_seconds.clone(),
        );
        r.register(
            "invocation_run_seconds",
            "Time an invocation's instance ran, host calls and approval waits included",
            self.invocation_run_seconds.clone(),
        );
        r.register(
            "invocation_audit_wait_seconds",
            "Time from an instance's end to its closing audit records being durable",
            self.invocation_audit_wait_seconds.clone(),
        );
        r.register(
            "host_calls",
            "Host calls decided at the choke point, by capability interface and decision (allowed, denied)",
            self.host_calls.clone(),
        );
        r.register(
            "approvals_requested",
            "Approval requests opened by this process",
            self.approvals_requested.clone(),
        );
        r.register(
            "approval_votes",
            "Reviewers' decisions recorded by this process, by verdict (approve, deny)",
            self.approval_votes.clone(),
        );
        r.register(
            "approvals_expired",
            "Approval requests this process closed as expired",
            self.approvals_expired.clone(),
        );
        r.register(
            "approvals_pending",
            "Approval requests pending in the store (every node's), read at most every 5 s when scraped",
            self.approvals_pending.clone(),
        );
        r.register(
            "audit_group_appends",
            "Appends the audit writer committed together in one group (group commit)",
            self.audit_group_appends.clone(),
        );
        r.register(
            "audit_sync_seconds",
            "Time to write and sync one audit group (and, with PostgreSQL, to commit it there)",
            self.audit_sync_seconds.clone(),
        );
        r.register(
            "audit_write_failures",
            "Audit groups whose write or sync failed (the log refuses work until a write succeeds)",
            self.audit_write_failures.clone(),
        );
        r.register(
            "audit_head_sequence",
            "Sequence number of the last durable audit record written by this process",
            self.audit_head_sequence.clone(),
        );
        r.register(
            "store_operation_seconds",
            "Time of each store (SQLite or PostgreSQL) operation, by operation",
            self.store_seconds.clone(),
        );
        r.register(
            "rate_limited",
            "Requests refused by a rate limit (identity: per-token API and MCP limit; sign-in: console sign-in per address)",
            self.rate_limited.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests answered, by surface (api, mcp, console, metrics, other) and status code",
            self.requests.clone(),
        );
        r.register(
            "http_request_seconds",
            "Time to answer an HTTP request (to its response head), by surface",
            self.request_seconds.clone(),
        );
        self
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Every metric, in the OpenMetrics text format.
pub fn render() -> String {
    let mut out = String::with_capacity(16 << 10);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &metrics().registry);
    out
}

/// Count one ended invocation of `action`, by its [`outcome_label`].
pub fn invocation_ended(action: &str, outcome: &'static str) {
    metrics()
        .invocations
        .get_or_create(&InvocationLabels {
            action: Cow::Owned(action.to_string()),
            outcome: Cow::Borrowed(outcome),
        })
        .inc();
}

/// The `outcome` label of an invocation's result.
pub fn outcome_label(result: &Result<serde_json::Value, crate::Error>) -> &'static str {
    result.as_ref().map_or_else(error_label, |_| "ok")
}

/// The `outcome` label of an invocation that ended in `error`.
pub fn error_label(error: &crate::Error) -> &'static str {
    match error.exit_code() {
        1 => "action-error",
        2 => "invalid",
        3 => "refused",
        4 if matches!(error, crate::Error::Cancelled(_)) => "cancelled",
        4 => "limit",
        6 => "tampered",
        7 => "pending",
        _ => "unavailable",
    }
}

/// Observe one phase of an invocation of `action`.
pub fn observe_phase(family: &Family<ActionLabels, Histogram, fn() -> Histogram>, action: &str, took: Duration) {
    family
        .get_or_create(&ActionLabels {
            action: Cow::Owned(action.to_string()),
        })
        .observe(took.as_secs_f64());
}

/// Count one host call decided at the choke point.
pub fn host_call(interface: &'static str, allowed: bool) {
    metrics()
        .host_calls
        .get_or_create(&HostCallLabels {
            capability: Cow::Borrowed(interface),
            decision: Cow::Borrowed(if allowed { "allowed" } else { "denied" }),
        })
        .inc();
}

/// Time one store operation.
pub fn store_operation(operation: &'static str, took: Duration) {
    metrics()
        .store_seconds
        .get_or_create(&OperationLabels {
            operation: Cow::Borrowed(operation),
        })
        .observe(took.as_secs_f64());
}

/// Count one request refused by `limiter` (`identity` or `sign-in`).
pub fn rate_limited(limiter: &'static str) {
    metrics()
        .rate_limited
        .get_or_create(&LimiterLabels {
            limiter: Cow::Borrowed(limiter),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_text_names_every_family_with_its_prefix() {
        host_call("airlock:cap/files", true);
        store_operation("approval", Duration::from_millis(1));
        let text = render();
        assert!(text.contains("# TYPE airlock_host_calls counter"), "{text}");
        assert!(
            text.contains(r#"airlock_host_calls_total{capability="airlock:cap/files",decision="allowed"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"airlock_store_operation_seconds_count{operation="approval"}"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
