//! The governed path of every outbound HTTP request, shared by
//! `airlock:cap/http` and `wasi:http/outgoing-handler`:
//!
//! 1. [`policy`]: the destination allowlist (scheme, host, port, methods,
//!    path prefixes), timeouts and size caps;
//! 2. [`client`]: resolve, refuse non-public addresses ([`address`]) unless
//!    the matching rule allows them, connect to the checked address, TLS,
//!    send, and read a size-capped response;
//! 3. [`redact`]: scrub reflected secrets before the guest sees anything.
//!
//! [`headers`] lists the request headers only the host sets.

pub mod address;
pub mod client;
pub mod destination;
pub mod headers;
pub mod policy;
pub mod redact;

pub use client::{OutboundError, OutboundRequest, OutboundResponse};
pub use destination::{Destination, Origin, Scheme};
pub use policy::{AllowRule, HttpPolicy};
pub use redact::Redactor;
