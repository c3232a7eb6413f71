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
//! //   world greeter {
//! //       /// Greet someone by name.
//! //       export greet: func(name: string) -> string;
//! //   }
//! airlock_sdk::generate!({ path: "wit", world: "greeter" });
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
//! component is `target/wasm32-wasip2/release/<crate>.wasm`. `airlock new
//! NAME` scaffolds such a crate. Errors of every capability implement
//! `Display` as a sentence, so `.map_err(|e| e.to_string())` gives the
//! caller something readable. With the `testing` feature, [`testing`] runs
//! the action's functions under a temporary policy from `cargo test`.

/// Raw bindings generated from airlock's WIT (`wit/`, the `airlock:cap`
/// package).
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
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
///
/// Use one `generate!` per action crate: a second one would embed a second
/// `package-docs` section, and hosts read only one.
#[macro_export]
macro_rules! generate {
    () => {
        $crate::generate!({});
    };
    ($world:literal) => {
        $crate::generate!({ world: $world });
    };
    ({ $($body:tt)* }) => {
        $crate::wit_bindgen::generate!({
            runtime_path: "::airlock_sdk::wit_bindgen::rt",
            $($body)*
        });
        $crate::__embed_docs!({ $($body)* });
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
    pub use raw::{Entry, EntryKind};
    use std::fmt;

    /// Why a file operation failed. `Display` reads as a sentence.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Error {
        /// No such file or directory (the path).
        NotFound(String),
        /// Absolute, `..`, or otherwise not a path inside the grant.
        InvalidPath(String),
        /// The grant is read-only.
        ReadOnly,
        /// The policy refused it.
        Denied(String),
        /// The file is larger than this many bytes.
        TooLarge(u64),
        /// A directory where a file was expected, or the reverse.
        WrongKind(String),
        Io(String),
    }

    impl From<raw::FileError> for Error {
        fn from(e: raw::FileError) -> Error {
            match e {
                raw::FileError::NotFound(p) => Error::NotFound(p),
                raw::FileError::InvalidPath(m) => Error::InvalidPath(m),
                raw::FileError::ReadOnly => Error::ReadOnly,
                raw::FileError::Denied(m) => Error::Denied(m),
                raw::FileError::TooLarge(n) => Error::TooLarge(n),
                raw::FileError::WrongKind(m) => Error::WrongKind(m),
                raw::FileError::Io(m) => Error::Io(m),
            }
        }
    }

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Error::NotFound(p) => write!(f, "not found: {p}"),
                Error::InvalidPath(m) => write!(f, "invalid path {m}"),
                Error::ReadOnly => f.write_str("the files grant is read-only"),
                Error::Denied(m) => write!(f, "denied: {m}"),
                Error::TooLarge(n) => write!(f, "the file is larger than {n} bytes"),
                Error::WrongKind(m) => write!(f, "wrong kind: {m}"),
                Error::Io(m) => write!(f, "I/O error: {m}"),
            }
        }
    }

    impl std::error::Error for Error {}

    /// Read a whole file (at most 16 MiB).
    pub fn read(path: &str) -> Result<Vec<u8>, Error> {
        Ok(raw::read(path)?)
    }

    /// Read a whole file as UTF-8 text.
    pub fn read_to_string(path: &str) -> Result<String, Error> {
        String::from_utf8(read(path)?).map_err(|_| Error::Io(format!("{path} is not valid UTF-8")))
    }

    /// Create or replace a file, creating parent directories as needed.
    pub fn write(path: &str, contents: impl AsRef<[u8]>) -> Result<(), Error> {
        Ok(raw::write(path, contents.as_ref())?)
    }

    /// List a directory; `"."` is the granted directory itself.
    pub fn list(path: &str) -> Result<Vec<Entry>, Error> {
        Ok(raw::list(path)?)
    }

    /// Delete a file.
    pub fn delete(path: &str) -> Result<(), Error> {
        Ok(raw::delete(path)?)
    }
}

/// `airlock:cap/credentials`: opaque handles on credentials the policy
/// binds to the action (grant: `[actions.NAME.grants.credentials.CRED]`).
///
/// A [`Credential`] carries no secret: pass it to [`crate::http`] and the
/// host injects the secret on the wire, or [`sign`] data with it. No
/// function returns the secret itself.
pub mod credentials {
    use crate::bindings::airlock::cap::credentials as raw;
    pub use raw::Credential;
    use std::fmt;

    /// Why a credential could not be used. `Display` reads as a sentence.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Error {
        /// The policy binds no credential of this name to the action.
        NotBound(String),
        /// The policy does not allow this use of it.
        NotPermitted(String),
        /// The vault could not provide it.
        Unavailable(String),
    }

    impl From<raw::CredentialError> for Error {
        fn from(e: raw::CredentialError) -> Error {
            match e {
                raw::CredentialError::NotBound(m) => Error::NotBound(m),
                raw::CredentialError::NotPermitted(m) => Error::NotPermitted(m),
                raw::CredentialError::Unavailable(m) => Error::Unavailable(m),
            }
        }
    }

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Error::NotBound(m) => write!(f, "not bound: {m}"),
                Error::NotPermitted(m) => write!(f, "not permitted: {m}"),
                Error::Unavailable(m) => write!(f, "unavailable: {m}"),
            }
        }
    }

    impl std::error::Error for Error {}

    /// A handle on the credential `name`; fails with `NotBound` for any
    /// name the policy does not bind to this action.
    pub fn get(name: &str) -> Result<Credential, Error> {
        Ok(raw::get(name)?)
    }

    /// The HMAC of `data` keyed with the credential (algorithm from policy).
    pub fn sign(credential: &Credential, data: &[u8]) -> Result<Vec<u8>, Error> {
        Ok(raw::sign(credential, data)?)
    }
}

/// `airlock:cap/http`: outbound HTTP to the destinations the policy allows
/// (grant: `[[actions.NAME.grants.http.allow]]`).
///
/// ```text
/// let created: Created = http::Request::post(&format!("{api}/tickets"))
///     .json(&ticket)?
///     .send_with(&credentials::get("tickets")?)?
///     .error_for_status()?
///     .json()?;
/// ```
pub mod http {
    use crate::bindings::airlock::cap::http as raw;
    use crate::credentials::Credential;
    pub use raw::Response;
    use std::fmt;

    /// Why a request failed. `Display` reads as a sentence.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Error {
        /// Policy refused it: destination, method, path, address class,
        /// credential destination or redirect target.
        Denied(String),
        /// The request itself is malformed (bad URL, method or header).
        InvalidRequest(String),
        /// The credential could not be used.
        Credential(String),
        Dns(String),
        Connect(String),
        Tls(String),
        /// The connect or total timeout passed.
        Timeout(String),
        /// The request or response body exceeds its cap.
        TooLarge(String),
        Protocol(String),
        /// The server answered with an error status
        /// ([`Response::error_for_status`]): status, reason, and the start
        /// of the body.
        Status(u16, String),
        /// A JSON body could not be written or read.
        Json(String),
    }

    impl From<raw::HttpError> for Error {
        fn from(e: raw::HttpError) -> Error {
            match e {
                raw::HttpError::Denied(m) => Error::Denied(m),
                raw::HttpError::InvalidRequest(m) => Error::InvalidRequest(m),
                raw::HttpError::Credential(m) => Error::Credential(m),
                raw::HttpError::Dns(m) => Error::Dns(m),
                raw::HttpError::Connect(m) => Error::Connect(m),
                raw::HttpError::Tls(m) => Error::Tls(m),
                raw::HttpError::Timeout(m) => Error::Timeout(m),
                raw::HttpError::TooLarge(m) => Error::TooLarge(m),
                raw::HttpError::Protocol(m) => Error::Protocol(m),
            }
        }
    }

    impl From<crate::credentials::Error> for Error {
        fn from(e: crate::credentials::Error) -> Error {
            Error::Credential(e.to_string())
        }
    }

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Error::Denied(m) => write!(f, "denied: {m}"),
                Error::InvalidRequest(m) => write!(f, "invalid request: {m}"),
                Error::Credential(m) => write!(f, "credential: {m}"),
                Error::Dns(m) => write!(f, "DNS: {m}"),
                Error::Connect(m) => write!(f, "connect: {m}"),
                Error::Tls(m) => write!(f, "TLS: {m}"),
                Error::Timeout(m) => write!(f, "timeout: {m}"),
                Error::TooLarge(m) => write!(f, "too large: {m}"),
                Error::Protocol(m) => write!(f, "protocol: {m}"),
                Error::Status(status, text) => write!(f, "the server answered {status}: {text}"),
                Error::Json(m) => write!(f, "JSON: {m}"),
            }
        }
    }

    impl std::error::Error for Error {}

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

        pub fn put(url: &str) -> Request {
            Request::new("PUT", url)
        }

        pub fn delete(url: &str) -> Request {
            Request::new("DELETE", url)
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

        /// Serialize `value` as the JSON body and set its content type.
        #[cfg(feature = "json")]
        pub fn json(self, value: &impl serde::Serialize) -> Result<Request, Error> {
            let body = serde_json::to_vec(value).map_err(|e| Error::Json(e.to_string()))?;
            Ok(self.header("content-type", "application/json").body(body))
        }

        /// Set an already-encoded JSON body and its content type.
        pub fn json_text(self, json: &str) -> Request {
            self.header("content-type", "application/json").body(json.as_bytes())
        }

        /// Return 3xx responses instead of following them.
        pub fn no_redirects(mut self) -> Request {
            self.0.follow_redirects = false;
            self
        }

        /// Send without a credential.
        pub fn send(&self) -> Result<Response, Error> {
            Ok(raw::send(&self.0, None)?)
        }

        /// Send with `credential` injected by the host.
        pub fn send_with(&self, credential: &Credential) -> Result<Response, Error> {
            Ok(raw::send(&self.0, Some(credential))?)
        }
    }

    impl Response {
        /// The body as (lossy) UTF-8 text.
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }

        /// The body parsed as JSON into `T`.
        #[cfg(feature = "json")]
        pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
            serde_json::from_slice(&self.body).map_err(|e| Error::Json(format!("the response body: {e}")))
        }

        /// The response if its status is below 400, else [`Error::Status`]
        /// with the reason and the start of the body.
        pub fn error_for_status(self) -> Result<Response, Error> {
            if self.status < 400 {
                return Ok(self);
            }
            let mut text = self.text();
            if text.len() > 512 {
                let mut cut = 512;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push('…');
            }
            Err(Error::Status(
                self.status,
                format!("{} {text}", self.reason).trim().to_string(),
            ))
        }

        /// The first header named `name` (case-insensitive).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// The body of a response as (lossy) UTF-8 text.
    pub fn text(response: &Response) -> String {
        response.text()
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

    /// Why the request was not approved. `Display` reads as a sentence.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Error {
        /// A reviewer denied it (their reason).
        Denied(String),
        /// Nobody decided in time.
        Expired,
        /// The summary or detail was refused (too long, control characters).
        Invalid(String),
        /// Approvals cannot be asked for now.
        Unavailable(String),
    }

    impl From<raw::ApprovalError> for Error {
        fn from(e: raw::ApprovalError) -> Error {
            match e {
                raw::ApprovalError::Denied(m) => Error::Denied(m),
                raw::ApprovalError::Expired => Error::Expired,
                raw::ApprovalError::Invalid(m) => Error::Invalid(m),
                raw::ApprovalError::Unavailable(m) => Error::Unavailable(m),
            }
        }
    }

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Error::Denied(m) => write!(f, "denied: {m}"),
                Error::Expired => f.write_str("expired: nobody decided in time"),
                Error::Invalid(m) => write!(f, "invalid request: {m}"),
                Error::Unavailable(m) => write!(f, "unavailable: {m}"),
            }
        }
    }

    impl std::error::Error for Error {}

    /// Ask for approval of what `summary` (one line, at most 200 bytes)
    /// and `detail` (at most 8 KiB) describe; `Ok` once approved.
    pub fn request(summary: &str, detail: &str) -> Result<(), Error> {
        Ok(raw::request(summary, detail)?)
    }
}

/// Run an action's functions under a temporary airlock policy from a normal
/// `cargo test` (feature `testing`, on the host).
///
/// The harness builds the crate under test for `wasm32-wasip2`, writes a
/// config granting what the test says, and invokes through the real
/// `airlock` binary (`AIRLOCK` names it; else `airlock` on `PATH`), so the
/// action runs exactly as it will in production: same linker, same
/// refusals, same audit trail (in a temporary data directory).
///
/// ```text
/// // tests/action.rs, with airlock-sdk's `testing` feature as a dev-dependency
/// use airlock_sdk::testing::TestAction;
///
/// #[test]
/// fn greets() {
///     let action = TestAction::build().unwrap().grants("log = true");
///     let out = action.invoke("greet", serde_json::json!({"name": "Ada"})).unwrap();
///     assert_eq!(out, "Hello, Ada!");
/// }
/// ```
#[cfg(all(feature = "testing", not(target_family = "wasm")))]
pub mod testing {
    use std::fmt;
    use std::io::Write as _;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    /// What went wrong in a test invocation.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Error {
        /// The harness could not set up (build, temporary files, binary).
        Setup(String),
        /// airlock refused or the action failed: its exit code and error line.
        Invocation { code: i32, message: String },
    }

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Error::Setup(m) => write!(f, "the test harness could not set up: {m}"),
                Error::Invocation { code, message } => write!(f, "airlock exited {code}: {message}"),
            }
        }
    }

    impl std::error::Error for Error {}

    /// The action under test and its temporary policy (named `action`).
    pub struct TestAction {
        component: PathBuf,
        /// A fresh private directory (random name, mode 0700), removed on
        /// drop.
        dir: tempfile::TempDir,
        /// The throw-away vault's key, random per test.
        master_key: String,
        grants: Vec<String>,
        config: Vec<(String, String)>,
        extra: Vec<String>,
    }

    fn setup(e: impl fmt::Display) -> Error {
        Error::Setup(e.to_string())
    }

    impl TestAction {
        /// Build the crate under test (`cargo build --release --target
        /// wasm32-wasip2`) and test its component.
        pub fn build() -> Result<TestAction, Error> {
            let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")
                .map_err(|_| setup("CARGO_MANIFEST_DIR is not set: run under cargo"))?;
            let package =
                std::env::var("CARGO_PKG_NAME").map_err(|_| setup("CARGO_PKG_NAME is not set: run under cargo"))?;
            let target_dir = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(&manifest_dir).join("target"));
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let out = Command::new(cargo)
                .args([
                    "build",
                    "--release",
                    "--target",
                    "wasm32-wasip2",
                    "--message-format=json-render-diagnostics",
                    "--manifest-path",
                ])
                .arg(Path::new(&manifest_dir).join("Cargo.toml"))
                .env("CARGO_TARGET_DIR", &target_dir)
                // The host's flags (coverage, sanitizers) are not the
                // component's.
                .env_remove("CARGO_INCREMENTAL")
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| setup(format!("cannot run cargo: {e}")))?;
            if !out.status.success() {
                return Err(setup("building the component failed (cargo's messages are above)"));
            }
            // The cdylib cargo reports for this package, whatever its
            // `[lib] name` and wherever the target directory is.
            let wasm = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"].is_string())
                .filter(|m| {
                    m["package_id"]
                        .as_str()
                        .is_some_and(|id| id.contains(&format!("#{package}@")) || id.contains(&format!("/{package}#")))
                        || m["manifest_path"]
                            .as_str()
                            .is_some_and(|p| Path::new(p).parent() == Some(Path::new(&manifest_dir)))
                })
                .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
                .filter_map(|f| f.as_str().map(PathBuf::from))
                .find(|f| f.extension().is_some_and(|e| e == "wasm"))
                .ok_or_else(|| {
                    setup(format!(
                        "cargo built no .wasm for {package}: is it a cdylib (`crate-type = [\"cdylib\"]`)?"
                    ))
                })?;
            TestAction::component(wasm)
        }

        /// Test an already built component.
        pub fn component(path: impl Into<PathBuf>) -> Result<TestAction, Error> {
            let dir = tempfile::Builder::new()
                .prefix("airlock-sdk-test-")
                .tempdir()
                .map_err(setup)?;
            std::fs::create_dir(dir.path().join("files")).map_err(setup)?;
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(setup)?;
            Ok(TestAction {
                component: std::path::absolute(path.into()).map_err(setup)?,
                dir,
                master_key: key.iter().map(|b| format!("{b:02x}")).collect(),
                grants: Vec::new(),
                config: Vec::new(),
                extra: Vec::new(),
            })
        }

        /// A line under `[actions.action.grants]`, e.g. `log = true`.
        pub fn grants(mut self, line: &str) -> TestAction {
            self.grants.push(line.to_string());
            self
        }

        /// Grant the files capability on a fresh temporary directory
        /// ([`TestAction::files_dir`]).
        pub fn files(self, read_write: bool) -> TestAction {
            let mode = if read_write { "read-write" } else { "read-only" };
            self.grants(&format!("files = {{ dir = \"files\", mode = \"{mode}\" }}"))
        }

        /// The directory the files grant serves.
        pub fn files_dir(&self) -> PathBuf {
            self.dir.path().join("files")
        }

        /// A value under `[actions.action.config]`.
        pub fn config(mut self, key: &str, value: &str) -> TestAction {
            self.config.push((key.to_string(), value.to_string()));
            self
        }

        /// Any other TOML, appended to the config as written (tables such
        /// as `[[actions.action.grants.http.allow]]`).
        pub fn policy(mut self, toml: &str) -> TestAction {
            self.extra.push(toml.to_string());
            self
        }

        /// Store a secret in the test's vault (for credential grants).
        pub fn secret(self, name: &str, value: &str) -> Result<TestAction, Error> {
            let config = self.write_config()?;
            let mut child = self
                .airlock()
                .args(["secret", "set", name, "--config"])
                .arg(&config)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| setup(format!("cannot run airlock: {e} (set AIRLOCK to its path)")))?;
            if let Some(mut stdin) = child.stdin.take() {
                // If airlock exits early the pipe breaks; its own error
                // (below) says why.
                let _ = stdin.write_all(value.as_bytes());
            }
            let out = child.wait_with_output().map_err(setup)?;
            if !out.status.success() {
                return Err(setup(String::from_utf8_lossy(&out.stderr)));
            }
            Ok(self)
        }

        /// Invoke `function` with `args` (an object keyed by parameter
        /// name); the printed result, or the action's error.
        pub fn invoke(&self, function: &str, args: serde_json::Value) -> Result<serde_json::Value, Error> {
            let config = self.write_config()?;
            let out = self
                .airlock()
                .args(["invoke", "-q", "--config"])
                .arg(&config)
                .args(["action", function, "--args", &args.to_string()])
                .output()
                .map_err(|e| setup(format!("cannot run airlock: {e} (set AIRLOCK to its path)")))?;
            if out.status.success() {
                return serde_json::from_slice(&out.stdout)
                    .map_err(|e| setup(format!("airlock printed no JSON result: {e}")));
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            let message = stderr
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or(stderr.trim())
                .to_string();
            Err(Error::Invocation {
                code: out.status.code().unwrap_or(-1),
                message,
            })
        }

        fn airlock(&self) -> Command {
            let mut cmd = Command::new(std::env::var_os("AIRLOCK").unwrap_or_else(|| "airlock".into()));
            // A throw-away key for the throw-away vault.
            cmd.env("AIRLOCK_MASTER_KEY", &self.master_key)
                .env_remove("AIRLOCK_MASTER_KEY_FILE")
                .env_remove("AIRLOCK_DATA_DIR")
                .env_remove("AIRLOCK_TOKEN")
                .env_remove("AIRLOCK_TOKEN_FILE");
            cmd
        }

        fn write_config(&self) -> Result<PathBuf, Error> {
            // A TOML basic string: JSON's escapes are TOML's, and DEL,
            // which JSON leaves as it is, TOML wants escaped.
            let quote = |s: &str| {
                serde_json::to_string(s)
                    .unwrap_or_default()
                    .replace('\u{7f}', "\\u007F")
            };
            let component = self
                .component
                .to_str()
                .ok_or_else(|| setup(format!("the component path {} is not UTF-8", self.component.display())))?;
            let mut text = format!(
                "[runtime]\ndata-dir = \"data\"\n\n[actions.action]\ncomponent = {}\n\n[actions.action.grants]\n",
                quote(component)
            );
            for line in &self.grants {
                text.push_str(line);
                text.push('\n');
            }
            if !self.config.is_empty() {
                text.push_str("\n[actions.action.config]\n");
                for (k, v) in &self.config {
                    text.push_str(&format!("{} = {}\n", quote(k), quote(v)));
                }
            }
            for extra in &self.extra {
                text.push('\n');
                text.push_str(extra);
                text.push('\n');
            }
            let path = self.dir.path().join("airlock.toml");
            std::fs::write(&path, text).map_err(setup)?;
            Ok(path)
        }
    }
}
