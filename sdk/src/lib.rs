//! Write airlock actions in Rust.
//!
//! An action is a WebAssembly component built for `wasm32-wasip2`. It
//! exports the functions agents may call (declared in the action's own WIT
//! world) and uses airlock's capabilities through this crate. Each
//! capability works only if the action's policy grants it; a component that
//! imports an ungranted capability is refused before it runs, so use only
//! what the action needs: the functions you call decide the imports.
//!
//! ```text
//! // wit/world.wit:
//! //   package example:greeter;
//! //   world greeter { export greet: func(name: string) -> string; }
//! wit_bindgen::generate!({ path: "wit", world: "greeter" });
//!
//! struct Greeter;
//!
//! impl Guest for Greeter {
//!     fn greet(name: String) -> String {
//!         airlock_sdk::log::info("greeting", &[("name", &name)]);
//!         format!("Hello, {name}!")
//!     }
//! }
//!
//! export!(Greeter);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the
//! component is `target/wasm32-wasip2/release/<crate>.wasm`.

/// Raw bindings generated from airlock's WIT (`wit/` in the repository).
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "airlock:cap/capabilities",
        generate_all,
    });
}

pub use wit_bindgen;

#[doc(hidden)]
pub use airlock_sdk_macros::embed_docs as __embed_docs;

/// Generate the bindings of an action's own WIT world and embed its doc
/// comments in the component.
///
/// Takes the options of [`wit_bindgen::generate!`] (`path` defaults to
/// `"wit"`, relative to the crate); the bindings use this crate's copy of
/// `wit-bindgen`, so an action depends on `airlock-sdk` alone (keep the
/// dependency's name `airlock-sdk`: the expansion names `::airlock_sdk`).
///
/// The doc comments of the world, its functions, types, record fields and
/// enum/variant/flags cases travel in the component's `package-docs`
/// custom section. airlock shows them in `inspect`, the JSON Schemas'
/// `description`s, MCP tool descriptions and the console. WIT has no syntax
/// for parameter docs: describe a parameter on a line of the function's doc
/// comment that starts with its name in backticks and a colon:
///
/// ```text
/// /// Open a ticket.
/// ///
/// /// `ticket`: what to open; the title is one line.
/// export create: func(ticket: ticket) -> result<created, string>;
/// ```
#[macro_export]
macro_rules! generate {
    ({ $($key:ident $(: $value:tt)?),* $(,)? }) => {
        $crate::wit_bindgen::generate!({
            $($key $(: $value)?,)*
            runtime_path: "::airlock_sdk::wit_bindgen::rt",
        });
        $crate::__embed_docs!({ $($key $(: $value)?,)* });
    };
}

/// `airlock:cap/log`: structured log lines (grant: `log = true`).
pub mod log {
    use crate::bindings::airlock::cap::log as raw;
    pub use raw::Level;

    /// Write one line at `level` with key/value fields.
    pub fn write(level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<raw::Field> = fields
            .iter()
            .map(|(k, v)| raw::Field {
                key: (*k).to_string(),
                value: (*v).to_string(),
            })
            .collect();
        raw::write(level, message, &fields);
    }

    pub fn trace(message: &str, fields: &[(&str, &str)]) {
        write(Level::Trace, message, fields)
    }

    pub fn debug(message: &str, fields: &[(&str, &str)]) {
        write(Level::Debug, message, fields)
    }

    pub fn info(message: &str, fields: &[(&str, &str)]) {
        write(Level::Info, message, fields)
    }

    pub fn warn(message: &str, fields: &[(&str, &str)]) {
        write(Level::Warn, message, fields)
    }

    pub fn error(message: &str, fields: &[(&str, &str)]) {
        write(Level::Error, message, fields)
    }
}

/// `airlock:cap/config`: non-secret values from the action's
/// `[actions.NAME.config]` section (the section is the grant).
///
/// Use it for what differs between deployments but is not a secret: base
/// URLs, account ids, switches. The same values can stand in the action's
/// grants as `${config.KEY}`, so an origin is written once:
///
/// ```toml
/// [actions.tickets.config]
/// api = "https://tickets.example"
/// [[actions.tickets.grants.http.allow]]
/// destination = "${config.api}"
/// ```
///
/// Every read is audited (key, and whether it was set).
pub mod config {
    use crate::bindings::airlock::cap::config as raw;
    use std::fmt;
    use std::str::FromStr;

    /// The value of `key`, or `None` when the config does not set it.
    pub fn get(key: &str) -> Option<String> {
        raw::get(key)
    }

    /// The value of `key`; an error naming the key when it is not set.
    pub fn require(key: &str) -> Result<String, ConfigError> {
        get(key).ok_or_else(|| ConfigError::Missing { key: key.to_string() })
    }

    /// The value of `key` parsed as `T` (`u16`, `bool`, `f64`, ...), or
    /// `None` when it is not set.
    pub fn parse<T>(key: &str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match get(key) {
            None => Ok(None),
            Some(value) => value
                .trim()
                .parse()
                .map(Some)
                .map_err(|e: T::Err| ConfigError::Invalid {
                    key: key.to_string(),
                    value,
                    reason: e.to_string(),
                }),
        }
    }

    /// The value of `key` parsed as `T`, or `default` when it is not set.
    pub fn parse_or<T>(key: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        Ok(parse(key)?.unwrap_or(default))
    }

    /// Why a config value could not be used.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum ConfigError {
        /// The action's config section does not set the key.
        Missing { key: String },
        /// The value does not parse as the type asked for.
        Invalid { key: String, value: String, reason: String },
    }

    impl fmt::Display for ConfigError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                ConfigError::Missing { key } => write!(
                    f,
                    "the config value `{key}` is not set; add `{key} = ...` under the action's [config] section"
                ),
                ConfigError::Invalid { key, value, reason } => {
                    write!(f, "the config value `{key}` = {value:?} cannot be used: {reason}")
                }
            }
        }
    }

    impl std::error::Error for ConfigError {}
}

/// `airlock:cap/files`: the one directory the policy grants
/// (grant: `files = { dir = "...", mode = "read-only" | "read-write" }`).
///
/// Paths are relative to that directory; absolute paths and `..` are
/// refused, and nothing outside it is reachable.
pub mod files {
    use crate::bindings::airlock::cap::files as raw;
    pub use raw::{Entry, EntryKind, FileError};
    use std::fmt;

    /// Read a whole file (at most 16 MiB).
    pub fn read(path: &str) -> Result<Vec<u8>, FileError> {
        raw::read(path)
    }

    /// Read a whole file as UTF-8 text.
    pub fn read_to_string(path: &str) -> Result<String, FileError> {
        let bytes = raw::read(path)?;
        String::from_utf8(bytes).map_err(|_| FileError::Io(format!("{path}: not valid UTF-8")))
    }

    /// Create or replace a file, creating parent directories as needed.
    pub fn write(path: &str, contents: impl AsRef<[u8]>) -> Result<(), FileError> {
        raw::write(path, contents.as_ref())
    }

    /// List a directory; `"."` is the granted directory itself.
    pub fn list(path: &str) -> Result<Vec<Entry>, FileError> {
        raw::list(path)
    }

    /// Delete a file.
    pub fn delete(path: &str) -> Result<(), FileError> {
        raw::delete(path)
    }

    /// A readable description of a [`FileError`].
    pub struct Describe<'a>(pub &'a FileError);

    impl fmt::Display for Describe<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.0 {
                FileError::NotFound(p) => write!(f, "not found: {p}"),
                FileError::InvalidPath(m) => write!(f, "invalid path {m}"),
                FileError::ReadOnly => write!(f, "the files grant is read-only"),
                FileError::Denied(m) => write!(f, "denied: {m}"),
                FileError::TooLarge(n) => write!(f, "file is larger than {n} bytes"),
                FileError::WrongKind(m) => write!(f, "wrong kind: {m}"),
                FileError::Io(m) => write!(f, "I/O error: {m}"),
            }
        }
    }
}

/// `airlock:cap/credentials`: opaque handles on credentials the policy
/// binds to the action (grant: `[actions.NAME.grants.credentials.CRED]`).
///
/// A [`Credential`] carries no secret: pass it to [`crate::http::send`] and
/// the host injects the secret on the wire, or [`sign`] data with it. No
/// function returns the secret itself.
pub mod credentials {
    use crate::bindings::airlock::cap::credentials as raw;
    pub use raw::{Credential, CredentialError};
    use std::fmt;

    /// A handle on the credential `name`; fails with `not-bound` for any
    /// name the policy does not bind to this action.
    pub fn get(name: &str) -> Result<Credential, CredentialError> {
        raw::get(name)
    }

    /// The HMAC of `data` keyed with the credential (algorithm from policy).
    pub fn sign(credential: &Credential, data: &[u8]) -> Result<Vec<u8>, CredentialError> {
        raw::sign(credential, data)
    }

    /// A readable description of a [`CredentialError`].
    pub struct Describe<'a>(pub &'a CredentialError);

    impl fmt::Display for Describe<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.0 {
                CredentialError::NotBound(m) => write!(f, "not bound: {m}"),
                CredentialError::NotPermitted(m) => write!(f, "not permitted: {m}"),
                CredentialError::Unavailable(m) => write!(f, "unavailable: {m}"),
            }
        }
    }
}

/// `airlock:cap/http`: outbound HTTP to the destinations the policy allows
/// (grant: `[[actions.NAME.grants.http.allow]]`).
pub mod http {
    use crate::bindings::airlock::cap::http as raw;
    use crate::credentials::Credential;
    pub use raw::{HttpError, Response};
    use std::fmt;

    /// An outbound request; build it with [`Request::get`], [`Request::post`]
    /// or [`Request::new`].
    #[derive(Debug, Clone)]
    pub struct Request(raw::Request);

    impl Request {
        pub fn new(method: &str, url: &str) -> Request {
            Request(raw::Request {
                method: method.to_string(),
                url: url.to_string(),
                headers: Vec::new(),
                body: Vec::new(),
                follow_redirects: true,
            })
        }

        pub fn get(url: &str) -> Request {
            Request::new("GET", url)
        }

        pub fn post(url: &str) -> Request {
            Request::new("POST", url)
        }

        /// Add a header.
        pub fn header(mut self, name: &str, value: &str) -> Request {
            self.0.headers.push((name.to_string(), value.to_string()));
            self
        }

        /// Set the body.
        pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
            self.0.body = body.into();
            self
        }

        /// Set a JSON body and its content type.
        pub fn json(self, json: &str) -> Request {
            self.header("content-type", "application/json").body(json.as_bytes())
        }

        /// Return 3xx responses instead of following them.
        pub fn no_redirects(mut self) -> Request {
            self.0.follow_redirects = false;
            self
        }

        /// Send without a credential.
        pub fn send(&self) -> Result<Response, HttpError> {
            raw::send(&self.0, None)
        }

        /// Send with `credential` injected by the host.
        pub fn send_with(&self, credential: &Credential) -> Result<Response, HttpError> {
            raw::send(&self.0, Some(credential))
        }
    }

    /// The body of a response as (lossy) UTF-8 text.
    pub fn text(response: &Response) -> String {
        String::from_utf8_lossy(&response.body).into_owned()
    }

    /// A readable description of an [`HttpError`].
    pub struct Describe<'a>(pub &'a HttpError);

    impl fmt::Display for Describe<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.0 {
                HttpError::Denied(m) => write!(f, "denied: {m}"),
                HttpError::InvalidRequest(m) => write!(f, "invalid request: {m}"),
                HttpError::Credential(m) => write!(f, "credential: {m}"),
                HttpError::Dns(m) => write!(f, "DNS: {m}"),
                HttpError::Connect(m) => write!(f, "connect: {m}"),
                HttpError::Tls(m) => write!(f, "TLS: {m}"),
                HttpError::Timeout(m) => write!(f, "timeout: {m}"),
                HttpError::TooLarge(m) => write!(f, "too large: {m}"),
                HttpError::Protocol(m) => write!(f, "protocol: {m}"),
            }
        }
    }
}

/// `airlock:cap/approval`: ask the action's approvers for a decision in
/// the middle of a run (grant: `approval = true`, approvers in
/// `[actions.NAME.access]`).
///
/// The call waits until the request is decided or the action's
/// `approval.wait-secs` runs out; the wait does not count towards the
/// invocation's timeout. Do not put secrets in the summary or detail:
/// reviewers and the audit log see them.
pub mod approval {
    use crate::bindings::airlock::cap::approval as raw;
    use core::fmt;
    pub use raw::ApprovalError;

    /// Ask for approval of what `summary` (one line, at most 200 bytes)
    /// and `detail` (at most 8 KiB) describe; `Ok` once approved.
    pub fn request(summary: &str, detail: &str) -> Result<(), ApprovalError> {
        raw::request(summary, detail)
    }

    /// A readable description of an [`ApprovalError`].
    pub struct Describe<'a>(pub &'a ApprovalError);

    impl fmt::Display for Describe<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.0 {
                ApprovalError::Denied(m) => write!(f, "denied: {m}"),
                ApprovalError::Expired => f.write_str("expired: nobody decided in time"),
                ApprovalError::Invalid(m) => write!(f, "invalid request: {m}"),
                ApprovalError::Unavailable(m) => write!(f, "unavailable: {m}"),
            }
        }
    }
}
