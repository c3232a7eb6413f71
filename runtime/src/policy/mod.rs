//! Policy: which actions exist, what each may import, and its limits.
//!
//! Policy is deny-by-default: an action holds only the capabilities listed
//! under its `grants`, and an action whose component imports anything else
//! is refused before it is instantiated.

pub mod approval;
mod config;
pub mod context;
pub mod engine;

pub mod schema;
pub mod service;
pub mod shorthand;
pub mod source;
pub mod windows;

pub use crate::limits::*;
pub use config::{ActionPolicy, Digest, GrantOrigin, Policy, RuntimeSettings};
