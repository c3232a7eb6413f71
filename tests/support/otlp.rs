//! A minimal OpenTelemetry collector on loopback: it takes OTLP/HTTP
//! trace exports (`POST /v1/traces`, protobuf), decodes them with the
//! collector's own message types, and keeps every span with the resource
//! it came from and the request's headers.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use std::io::{BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One exported span and where it came from.
#[derive(Debug, Clone)]
pub struct Received {
    pub span: Span,
    /// The resource's attributes (`service.name`, ...).
    pub resource: Vec<(String, String)>,
    /// The export request's headers, names lowercased.
    pub headers: Vec<(String, String)>,
    pub path: String,
}

impl Received {
    pub fn attr(&self, key: &str) -> Option<String> {
        text_of(&self.span.attributes, key)
    }

    pub fn resource_attr(&self, key: &str) -> Option<String> {
        self.resource.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text_of(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    Some(show(value))
}

fn show(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

pub struct Collector {
    pub port: u16,
    spans: Arc<Mutex<Vec<Received>>>,
    /// Every request's raw body, to look for what must never be sent.
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Collector {
    pub fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("local addr").port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (s, b) = (spans.clone(), bodies.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (s, b) = (s.clone(), b.clone());
                std::thread::spawn(move || serve(stream, &s, &b));
            }
        });
        Collector { port, spans, bodies }
    }

    /// `http://127.0.0.1:PORT`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().unwrap().clone()
    }

    /// Wait (up to `limit`) until `done` holds for the spans received.
    pub fn wait_for(&self, limit: Duration, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "the collector never got them; it has {spans:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One keep-alive connection: requests until the client closes it.
fn serve(stream: TcpStream, spans: &Mutex<Vec<Received>>, bodies: &Mutex<Vec<Vec<u8>>>) {
    let mut writer = stream.try_clone().expect("clone stream");
    let mut reader = BufReader::new(stream);
    loop {
        let Ok(Some(super::http::Incoming {
            target: path,
            headers,
            body,
            ..
        })) = super::http::read_request(&mut reader)
        else {
            return;
        };
        bodies.lock().unwrap().push(body.clone());
        let (status, answer) = match ExportTraceServiceRequest::decode(&body[..]) {
            Ok(request) => {
                let mut spans = spans.lock().unwrap();
                for rs in request.resource_spans {
                    let resource: Vec<(String, String)> = rs
                        .resource
                        .map(|r| {
                            r.attributes
                                .iter()
                                .map(|kv| (kv.key.clone(), kv.value.as_ref().map(show).unwrap_or_default()))
                                .collect()
                        })
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for span in ss.spans {
                            spans.push(Received {
                                span,
                                resource: resource.clone(),
                                headers: headers.clone(),
                                path: path.clone(),
                            });
                        }
                    }
                }
                ("200 OK", Vec::new())
            }
            Err(e) => ("400 Bad Request", e.to_string().into_bytes()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        );
        if writer
            .write_all(head.as_bytes())
            .and_then(|()| writer.write_all(&answer))
            .is_err()
        {
            return;
        }
    }
}
