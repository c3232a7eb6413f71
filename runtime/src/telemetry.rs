//! Diagnostics: log lines on stderr and, when asked for, the `invocation`
//! and `host_call` spans exported to an OpenTelemetry collector over OTLP.
//!
//! Export is configured the standard way, by the `OTEL_*` environment
//! variables, so it works the same under systemd (`Environment=`), Docker
//! (`-e`) and Kubernetes; only the commands that run actions (`serve`,
//! `mcp`, `invoke`) read them. It is on when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (or `OTEL_TRACES_EXPORTER` is
//! `otlp`, sending to `http://localhost:4318`), and off when
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
//!
//! What holds:
//! - Only the two spans airlock defines leave the process, with their own
//!   fields: `invocation` (invocation id, action, function, caller,
//!   outcome) and each of its `host_call`s (call, interface, function,
//!   allowed, rule, status: the text the log and audit record carry, byte
//!   counts and body digests included). No argument or result value, log
//!   line, credential, source location or thread is an attribute.
//! - An invocation continues the trace its request named: the W3C
//!   `traceparent` and `tracestate` headers of `POST /v1/invocations` and
//!   of `/mcp`, an MCP request's `_meta.traceparent` / `_meta.tracestate`,
//!   or `airlock invoke --traceparent`. An invocation that waited for
//!   approval continues the trace of the request that asked for it.
//! - Sampling follows `OTEL_TRACES_SAMPLER` (default: the parent's
//!   decision, else always), so a caller's unsampled trace stays unsampled
//!   (and an agent decides; `always_on` takes that from it).
//! - Spans are batched on a thread of their own (`OTEL_BSP_*`) and sent by
//!   a client on a runtime of its own: a slow or absent collector never
//!   delays an invocation; when the queue is full spans are dropped, not
//!   awaited. What is queued is sent when the process ends.
//! - A setting that cannot work (the `grpc` protocol, an unreadable CA
//!   file, a client certificate) stops the process at start with an error
//!   naming the variable; nothing is exported silently wrong.
//! - Header values (`OTEL_EXPORTER_OTLP_HEADERS`, often an API key) are
//!   sent to the collector and appear in no log line or error.

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Whether spans are exported: continuing a caller's trace costs nothing
/// when they are not.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The default collector address for OTLP over HTTP.
const DEFAULT_ENDPOINT: &str = "http://localhost:4318";

/// How long the last spans may take to reach the collector when the
/// process ends.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(5);

/// Keeps the exporter alive; dropping it sends what is queued (waiting at
/// most [`FLUSH_AT_EXIT`]).
#[must_use = "spans are exported only while the guard lives"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else { return };
        EXPORTING.store(false, Ordering::Relaxed);
        // `shutdown` blocks until the batch thread has sent its queue; it
        // runs on a thread of its own so a process inside an async
        // runtime can end, and a collector that hangs cannot hold it.
        let (done, wait) = std::sync::mpsc::channel();
        let flushing = std::thread::Builder::new()
            .name("airlock-otlp-flush".into())
            .spawn(move || {
                let result = provider.shutdown_with_timeout(FLUSH_AT_EXIT);
                let _ = done.send(result);
            });
        if flushing.is_ok() {
            match wait.recv_timeout(FLUSH_AT_EXIT + Duration::from_secs(1)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("OpenTelemetry: the last spans were not all sent: {e}"),
                Err(_) => tracing::warn!("OpenTelemetry: the collector did not take the last spans in time"),
            }
        }
    }
}

/// Install the process's diagnostics: log lines on stderr filtered by
/// `AIRLOCK_LOG` (`AIRLOCK_LOG_FORMAT=json` for one JSON object per line,
/// with a line for every closed span), and, when `export` (the commands
/// that run actions), the OTLP exporter the environment asks for (see the
/// module docs). Other commands never look at the `OTEL_*` variables.
pub fn init(export: bool) -> Result<Guard, String> {
    use tracing_subscriber::fmt::format::FmtSpan;
    let filter = tracing_subscriber::EnvFilter::from_env("AIRLOCK_LOG");
    let json = std::env::var("AIRLOCK_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let lines = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_span_list(true)
            .with_current_span(true)
            .with_span_events(FmtSpan::CLOSE)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed()
    };
    let settings = if export {
        Settings::from_env(&|name| std::env::var(name).ok())?
    } else {
        None
    };
    let provider = match &settings {
        Some(settings) => Some(settings.provider()?),
        None => None,
    };
    let spans = provider.as_ref().map(|provider| {
        let tracer = provider.tracer("airlock");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            // The span's own fields only: no source locations or threads.
            .with_location(false)
            .with_threads(false)
            // Decided per call site once (by name and target) and never
            // below INFO, so the log filter's level hint still holds.
            .with_filter(
                tracing_subscriber::filter::filter_fn(exported)
                    .with_max_level_hint(tracing_subscriber::filter::LevelFilter::INFO),
            )
    });
    tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(spans)
        .try_init()
        .map_err(|e| format!("cannot install diagnostics: {e}"))?;
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    if let Some(s) = &settings
        && !s.tls
        && let Some((name, _)) = &s.ca_file
    {
        tracing::warn!("{name} is set, but the endpoint is http://: it is not used");
    }
    Ok(Guard { provider })
}

/// The spans that are exported: airlock's own `invocation` and `host_call`
/// spans, nothing of the libraries it uses, and no log events.
fn exported(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && meta.target().starts_with("airlock") && matches!(meta.name(), "invocation" | "host_call")
}

/// Make `span` continue the W3C trace `traceparent` (and its `tracestate`)
/// names. Call it before the span is first entered. Does nothing when spans
/// are not exported or `traceparent` is not valid W3C.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let Some(traceparent) = traceparent else { return };
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    if let Some(state) = tracestate {
        carrier.insert("tracestate".to_string(), state.to_string());
    }
    let parent = TraceContextPropagator::new().extract(&carrier);
    // Refused only when the span is not exported or already started.
    let _ = span.set_parent(parent);
}

/// The OTLP encodings this build sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    HttpProtobuf,
    HttpJson,
}

/// What the `OTEL_*` variables ask for (only what airlock itself must
/// read; the OpenTelemetry SDK reads the rest: `OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, and the
/// exporter's endpoint, headers and compression).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    protocol: Protocol,
    /// Whether `https://` is used (then the CA below applies).
    tls: bool,
    /// `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE` (the variable that named
    /// it, and the file): the collector's CA, PEM.
    ca_file: Option<(String, std::path::PathBuf)>,
    /// `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`, default 10 s.
    timeout: Duration,
    /// Whether to name the service `airlock` (neither `OTEL_SERVICE_NAME`
    /// nor `service.name` in `OTEL_RESOURCE_ATTRIBUTES` names it).
    default_name: bool,
}

impl Settings {
    /// `None` when export is off. `var` reads one environment variable.
    fn from_env(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<Settings>, String> {
        // The trace-specific variable first, then the general one.
        let either = |specific: &str, general: &str| {
            var(specific)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (specific.to_string(), v))
                .or_else(|| {
                    var(general)
                        .filter(|v| !v.trim().is_empty())
                        .map(|v| (general.to_string(), v))
                })
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let exporter = var("OTEL_TRACES_EXPORTER").map(|v| v.trim().to_ascii_lowercase());
        let endpoint = either("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT");
        match exporter.as_deref() {
            None | Some("") => {
                if endpoint.is_none() {
                    return Ok(None);
                }
            }
            Some("none") => return Ok(None),
            Some("otlp") => {}
            Some(other) => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={other:?}: airlock exports traces over OTLP only; set it to `otlp` or `none`"
                ));
            }
        }
        let protocol = match either("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") {
            None => Protocol::HttpProtobuf,
            Some((_, v)) if v.trim() == "http/protobuf" => Protocol::HttpProtobuf,
            Some((_, v)) if v.trim() == "http/json" => Protocol::HttpJson,
            Some((name, v)) => {
                return Err(format!(
                    "{name}={v:?}: airlock sends OTLP over HTTP only, as `http/protobuf` (the default) or `http/json`; point it at the collector's HTTP port (4318)"
                ));
            }
        };
        let tls = match &endpoint {
            None => false,
            Some((name, url)) => match url.trim().split_once("://") {
                Some((scheme, _)) if scheme.eq_ignore_ascii_case("http") => false,
                Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => true,
                _ => {
                    return Err(format!(
                        "{name} is not an http:// or https:// URL (for example {DEFAULT_ENDPOINT})"
                    ));
                }
            },
        };
        for name in [
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
        ] {
            if var(name).is_some_and(|v| !v.trim().is_empty()) {
                return Err(format!(
                    "{name} is set, but airlock does not present client certificates to a collector; authenticate with OTEL_EXPORTER_OTLP_HEADERS or a local collector"
                ));
            }
        }
        let ca_file = either(
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        )
        .map(|(name, v)| (name, std::path::PathBuf::from(v.trim())));
        if let Some((name, v)) = either(
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ) && !matches!(v.trim(), "gzip" | "none")
        {
            return Err(format!(
                "{name}={v:?}: airlock compresses OTLP with `gzip`, or not at all (`none`)"
            ));
        }
        if let Some(v) = var("OTEL_TRACES_SAMPLER").filter(|v| !v.trim().is_empty()) {
            let sampler = v.trim();
            if !matches!(
                sampler,
                "always_on"
                    | "always_off"
                    | "traceidratio"
                    | "parentbased_always_on"
                    | "parentbased_always_off"
                    | "parentbased_traceidratio"
            ) {
                return Err(format!(
                    "OTEL_TRACES_SAMPLER={v:?}: use always_on, always_off, traceidratio, parentbased_always_on (the default), parentbased_always_off or parentbased_traceidratio"
                ));
            }
            if sampler.ends_with("traceidratio")
                && let Some(arg) = var("OTEL_TRACES_SAMPLER_ARG").filter(|a| !a.trim().is_empty())
                && !arg.trim().parse::<f64>().is_ok_and(|r| (0.0..=1.0).contains(&r))
            {
                return Err(format!("OTEL_TRACES_SAMPLER_ARG={arg:?} is not a ratio from 0 to 1"));
            }
        }
        let timeout = match either("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT") {
            None => Duration::from_secs(10),
            Some((name, v)) => match v.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => return Err(format!("{name}={v:?} is not a positive number of milliseconds")),
            },
        };
        let default_name = var("OTEL_SERVICE_NAME").is_none_or(|v| v.trim().is_empty())
            && !var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|v| {
                v.split(',')
                    .any(|kv| kv.split_once('=').is_some_and(|(k, _)| k.trim() == "service.name"))
            });
        Ok(Some(Settings {
            protocol,
            tls,
            ca_file,
            timeout,
            default_name,
        }))
    }

    /// The tracer provider: OTLP over HTTP from a batch thread.
    fn provider(&self) -> Result<SdkTracerProvider, String> {
        use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
        let client = client::Client::new(self)?;
        let protocol = match self.protocol {
            Protocol::HttpProtobuf => opentelemetry_otlp::Protocol::HttpBinary,
            Protocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
        };
        // The endpoint, headers and compression come from the environment
        // (the exporter reads them; its default is `DEFAULT_ENDPOINT`).
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_timeout(self.timeout)
            .with_http_client(client)
            .build()
            .map_err(|e| format!("cannot set up the OTLP exporter: {e}"))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if self.default_name {
            resource = resource.with_service_name("airlock");
        }
        let resource = resource
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build())
    }
}

/// The exporter's HTTP client: hyper with rustls, on a runtime of its own.
///
/// The SDK's batch thread drives the export with a plain executor, and
/// hyper needs tokio's; each request is handed to a one-thread runtime that
/// lives as long as the exporter, so it works the same from `airlock
/// invoke`, `serve` and `mcp`, and never takes a thread from the service.
mod client {
    use super::Settings;
    use bytes::Bytes;
    use http::{Request, Response};
    use opentelemetry_http::{HttpClient, HttpError};
    use std::sync::Arc;

    type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

    #[derive(Clone)]
    pub(super) struct Client {
        inner: opentelemetry_http::hyper::HyperClient<Connector>,
        runtime: Arc<OwnRuntime>,
    }

    /// Shown without its settings (headers may hold an API key).
    impl std::fmt::Debug for Client {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("airlock OTLP client")
        }
    }

    struct OwnRuntime(Option<tokio::runtime::Runtime>);

    impl Drop for OwnRuntime {
        fn drop(&mut self) {
            // Dropped on whichever thread lets the exporter go, perhaps
            // inside another runtime: let its thread finish on its own.
            if let Some(rt) = self.0.take() {
                rt.shutdown_background();
            }
        }
    }

    impl Client {
        pub(super) fn new(settings: &Settings) -> Result<Client, String> {
            let tls = tls_config(settings)?;
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .build();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("airlock-otlp")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the OTLP exporter's runtime: {e}"))?;
            Ok(Client {
                inner: opentelemetry_http::hyper::HyperClient::new(connector, settings.timeout, None),
                runtime: Arc::new(OwnRuntime(Some(runtime))),
            })
        }
    }

    #[async_trait::async_trait]
    impl HttpClient for Client {
        async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
            let Some(runtime) = &self.runtime.0 else {
                return Err("the OTLP exporter has stopped".into());
            };
            let inner = self.inner.clone();
            runtime
                .spawn(async move { inner.send_bytes(request).await })
                .await
                .map_err(|e| -> HttpError { format!("the OTLP request did not finish: {e}").into() })?
        }
    }

    /// Web roots, or the CA file the settings name.
    fn tls_config(settings: &Settings) -> Result<rustls::ClientConfig, String> {
        let roots = match &settings.ca_file {
            Some((name, path)) => crate::tls::roots(Some(path), name)?,
            None => crate::tls::roots(None, "")?,
        };
        Ok(
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<Settings>, String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_env(&|name| vars.get(name).cloned())
    }

    #[test]
    fn export_is_off_unless_asked_for() {
        assert_eq!(settings(&[]), Ok(None));
        assert_eq!(settings(&[("OTEL_SERVICE_NAME", "x")]), Ok(None));
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")];
        assert!(settings(&on).unwrap().is_some());
        assert_eq!(settings(&[on[0], ("OTEL_SDK_DISABLED", "true")]), Ok(None));
        assert_eq!(settings(&[on[0], ("OTEL_TRACES_EXPORTER", "none")]), Ok(None));
        let default = settings(&[("OTEL_TRACES_EXPORTER", "otlp")]).unwrap().unwrap();
        assert_eq!(default.protocol, Protocol::HttpProtobuf);
        assert!(!default.tls && default.default_name);
        assert_eq!(default.timeout, Duration::from_secs(10));
    }

    #[test]
    fn the_trace_specific_variables_win() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://b/v1/traces"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "nonsense"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "250"),
            ("OTEL_RESOURCE_ATTRIBUTES", "team=x, service.name = agents"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.protocol, Protocol::HttpJson);
        assert!(s.tls && !s.default_name);
        assert_eq!(s.timeout, Duration::from_millis(250));
    }

    #[test]
    fn settings_that_cannot_work_are_refused_by_name() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        for (vars, named) in [
            (
                vec![on, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4318")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (vec![on, ("OTEL_TRACES_EXPORTER", "zipkin")], "OTEL_TRACES_EXPORTER"),
            (
                vec![on, ("OTEL_EXPORTER_OTLP_TIMEOUT", "-1")],
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ),
            (
                vec![on, ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")],
                "OTEL_EXPORTER_OTLP_COMPRESSION",
            ),
            (
                vec![on, ("OTEL_TRACES_SAMPLER", "parentbased_alwayson")],
                "OTEL_TRACES_SAMPLER",
            ),
            (
                vec![
                    on,
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                vec![on, ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/k.pem")],
                "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            ),
        ] {
            let e = settings(&vars).unwrap_err();
            assert!(e.contains(named), "{e}");
        }
    }

    #[test]
    fn a_missing_ca_file_is_refused_at_start() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/nonexistent/ca.pem"),
        ])
        .unwrap()
        .unwrap();
        let e = s.provider().unwrap_err();
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
    }
}
