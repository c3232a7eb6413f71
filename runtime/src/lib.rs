//! airlock runs AI agents' actions, governed.
//!
//! An action is a WebAssembly component. Its WIT imports are the only
//! capabilities it can use: airlock builds each action's linker from its
//! policy grants, so an import that is not granted is never linked and the
//! action is refused before it runs.
//!
//! The path of a request through the crate:
//!
//! 1. [`policy`]: the config, parsed once into typed, validated grants and
//!    limits (deny by default).
//! 2. [`action`]: load the component, pin its digest, classify its imports
//!    against the [`catalog`], refuse anything ungranted, and link exactly
//!    the granted [`capabilities`] into an `InstancePre`.
//! 3. [`invocation`]: arguments parsed through the JSON mapping in
//!    [`values`], a fresh store and instance, limits, the call itself, and
//!    the result and captured output in a [`invocation::Report`].
//! 4. [`host_call`]: the one choke point every capability call passes,
//!    where it is decided and recorded.
//! 5. [`outbound`]: the governed path of every HTTP request an action makes
//!    (`airlock:cap/http` or `wasi:http`): allow rules, address checks,
//!    credential injection from the [`vault`], and reflected-secret
//!    redaction before the response reaches the guest.
//!
//! 6. [`audit`]: every invocation and host call, hash-chained and synced
//!    before the result is acknowledged; nothing runs while it cannot be
//!    written.
//!
//! [`runtime::Runtime`] ties these together over one wasmtime engine
//! ([`engine`]) and an on-disk compile [`cache`].

pub mod action;
pub mod approval;
pub mod audit;
pub mod cache;
pub mod call;
pub mod capabilities;
pub mod catalog;
pub mod cluster;
pub mod data_dir;
pub mod engine;
pub mod error;
pub mod gateway;
pub mod hex;
pub mod hint;
pub mod host_call;
pub mod identity;
pub mod invocation;
pub mod limits;
pub mod manifest;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod pins;
pub mod policy;
pub mod request;
pub mod runtime;
pub mod service;
pub mod signing;
pub mod store;
pub mod telemetry;
pub mod time;
mod tls;
pub mod values;
pub mod vault;

pub use error::{Error, LimitExceeded};
pub use runtime::Runtime;
