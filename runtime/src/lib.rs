//! airlock runs AI agents' actions, governed.
//!
//! An action is a WebAssembly component. Its WIT imports are the only
//! capabilities it can use: airlock builds each action's linker from its
//! policy grants, so an import that is not granted is never linked and the
//! action is refused before it runs.
//!
//! ## Module map
//!
//! Read from the top, the map follows a request: it arrives at the
//! [`service`] (HTTP API, MCP, console) or the command line, the
//! [`gateway`] admits it (identity, access, approval of the invocation),
//! the [`runtime`] holds the loaded actions, [`invocation`] runs one in a
//! fresh instance of its [`action`], every capability call passes the
//! approval gate ([`approval`], through [`call::CallGate`]) and the choke
//! point ([`host_call`]), and everything lands in the [`audit`] trail and
//! the [`store`]. Each module uses only the modules listed after its arrow,
//! all of them on lines below its own: dependencies point one way, down the
//! page. `tests/layering.rs` fails when the code imports against this map
//! or the map stops being one-way; change the map and the code together.
//!
//! ```text
//! service      → gateway, runtime, invocation, action, policy, manifest, capabilities, host_call, notify, audit, cluster, store, request, identity, metrics, hex, values, time, error   (HTTP API, MCP, console)
//! gateway      → runtime, invocation, action, approval, policy, host_call, cluster, store, identity, hint, time, error   (admission: who, may they, approved?)
//! runtime      → action, approval, engine, cache, pins, policy, manifest, capabilities, audit, cluster, store, vault, hint, error   (the loaded config and actions)
//! invocation   → action, engine, policy, manifest, capabilities, host_call, audit, request, identity, metrics, telemetry, values, error   (one run: instance, limits, result)
//! action       → approval, policy, cache, pins, manifest, capabilities, host_call, audit, store, request, identity, vault, signing, hint, error   (load, pin, link the granted)
//! engine       → policy, host_call   (the shared wasmtime engine)
//! approval     → policy, notify, audit, cluster, store, call, request, identity, metrics, values, hint, time, error   (requests, quorum, the per-invocation gate)
//! policy       → manifest, capabilities, notify, audit, store, call, request, identity, limits, outbound, signing, values, time, error   (the config, validated)
//! pins         → manifest, data_dir   (component digests pinned per action)
//! cache        → manifest, data_dir   (the compile cache)
//! manifest     → capabilities, signing, values   (what a component asks for and offers)
//! capabilities → host_call, call, outbound, vault   (the catalog of imports; one module per grantable capability)
//! notify       → audit, store, request, identity, outbound, vault, hex, hint, time, error   (webhooks to reviewers)
//! host_call    → audit, call, limits, vault, metrics, time, error   (the choke point, per-invocation state)
//! audit        → cluster, store, identity, metrics, data_dir, hex, hint, time   (the hash-chained trail)
//! cluster      → store, time   (node id, heartbeats)
//! store        → identity, request, vault, metrics, tls, data_dir, hex, hint, time, error   (SQLite or PostgreSQL)
//! request      → hex, time, error   (invocation ids, the agent's stated intent)
//! identity     → hex, time, error   (callers, tokens, access rules)
//! call         → error   (the host-call contract, the CallGate trait)
//! metrics      → error
//! vault        → data_dir
//! telemetry    → tls
//! error        → hint, values
//! outbound, limits, values, signing, hint, data_dir, tls, hex, time   (leaves)
//! ```

pub mod action;
pub mod approval;
pub mod audit;
pub mod cache;
pub mod call;
pub mod capabilities;
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
