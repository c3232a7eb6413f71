//! `airlock:cap/credentials`: opaque handles on vault secrets.
//!
//! The policy binds each credential name to a vault secret, the
//! destinations where it may be sent, how it is injected, and whether it
//! may sign. The guest gets a [`CredentialHandle`] (a WIT resource holding
//! only the name); the secret is decrypted on the host when a request is
//! sent or data is signed, and every decrypted copy is wiped when the
//! invocation ends.

use super::bindings::airlock::cap::credentials as wit;
use super::catalog::{AIRLOCK_CAP_0_1, Interface};
use super::{Capability, Grants, Resolving};
use crate::host_call::{Decision, HostCall};
use crate::host_call::{InvocationState, StateBuilder};
use crate::outbound::{Destination, Origin, Redactor};
use crate::vault::{LiveVault, SecretValue};
use base64::Engine as _;
use hmac::Mac as _;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use wasmtime::component::{HasSelf, Linker, Resource};
use zeroize::Zeroizing;

/// One `[actions.NAME.grants.credentials.CRED]` table as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawCredential {
    /// Name of the vault secret.
    pub secret: String,
    #[serde(default)]
    pub destinations: Vec<String>,
    pub inject: Option<RawInjection>,
    pub sign: Option<SignAlgorithm>,
}

/// `inject = { header = "authorization", template = "Bearer {}" }`,
/// `inject = { basic-user = "api" }` or `inject = { query = "api_key" }`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawInjection {
    pub header: Option<String>,
    pub template: Option<String>,
    pub basic_user: Option<String>,
    pub query: Option<String>,
}

/// How a secret is put on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injection {
    /// `name: template` with `{}` replaced by the secret.
    Header { name: http::HeaderName, template: String },
    /// `Authorization: Basic base64(user:secret)`.
    Basic { user: String },
    /// `?param=secret` (any guest value for `param` is replaced).
    Query { param: String },
}

impl Injection {
    fn resolve(raw: &RawInjection) -> Result<Injection, String> {
        match (&raw.header, &raw.basic_user, &raw.query) {
            (Some(name), None, None) => {
                let lower = name.to_ascii_lowercase();
                let name = http::HeaderName::from_bytes(lower.as_bytes())
                    .map_err(|_| format!("inject.header {name:?} is not a valid header name"))?;
                if crate::outbound::headers::is_host_owned(&name) {
                    return Err(format!(
                        "inject.header {name} is set by the host and cannot carry a credential"
                    ));
                }
                let template = raw.template.clone().unwrap_or_else(|| "{}".into());
                if template.matches("{}").count() != 1 {
                    return Err(format!("inject.template {template:?} must contain `{{}}` exactly once"));
                }
                if http::HeaderValue::from_str(&template.replace("{}", "")).is_err() {
                    return Err(format!("inject.template {template:?} is not a valid header value"));
                }
                Ok(Injection::Header { name, template })
            }
            (None, Some(user), None) if raw.template.is_none() => {
                if user.contains(':') || user.chars().any(char::is_control) {
                    return Err("inject.basic-user may not contain `:` or control characters".into());
                }
                Ok(Injection::Basic { user: user.clone() })
            }
            (None, None, Some(param)) if raw.template.is_none() => {
                if param.is_empty() || param.chars().any(|c| c.is_control() || "&=#".contains(c)) {
                    return Err(format!("inject.query {param:?} is not a plain parameter name"));
                }
                Ok(Injection::Query { param: param.clone() })
            }
            _ => Err("inject takes exactly one of `header` (with optional `template`), `basic-user` or `query`".into()),
        }
    }

    /// The header this injection sets, if any.
    pub fn header_name(&self) -> Option<http::HeaderName> {
        match self {
            Injection::Header { name, .. } => Some(name.clone()),
            Injection::Basic { .. } => Some(http::header::AUTHORIZATION),
            Injection::Query { .. } => None,
        }
    }

    /// The values this injection puts on the wire, beyond the raw secret.
    pub fn wire_forms(&self, secret: &SecretValue) -> Vec<Zeroizing<Vec<u8>>> {
        let b64 = |bytes: &[u8]| Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(bytes).into_bytes());
        match self {
            // The raw secret sits verbatim in the header value, and the
            // alignment-independent base64 fragments find it inside any
            // encoding of the whole value.
            Injection::Header { .. } => Vec::new(),
            Injection::Basic { user } => {
                let mut pair = Zeroizing::new(format!("{user}:").into_bytes());
                pair.extend_from_slice(secret.expose());
                let encoded = b64(&pair);
                vec![pair, encoded]
            }
            Injection::Query { .. } => vec![Zeroizing::new(
                url::form_urlencoded::byte_serialize(secret.expose())
                    .collect::<String>()
                    .into_bytes(),
            )],
        }
    }

    /// Put `secret` on a request.
    pub fn apply(&self, secret: &SecretValue, url: &mut url::Url, headers: &mut http::HeaderMap) -> Result<(), String> {
        let header_value = |bytes: &[u8]| {
            let mut v = http::HeaderValue::from_bytes(bytes)
                .map_err(|_| "the secret contains bytes that cannot appear in a header (e.g. a newline)".to_string())?;
            v.set_sensitive(true);
            Ok::<_, String>(v)
        };
        match self {
            Injection::Header { name, template } => {
                let (before, after) = template.split_once("{}").unwrap_or((template.as_str(), ""));
                let mut wire = Zeroizing::new(Vec::with_capacity(template.len() + secret.len()));
                wire.extend_from_slice(before.as_bytes());
                wire.extend_from_slice(secret.expose());
                wire.extend_from_slice(after.as_bytes());
                headers.insert(name.clone(), header_value(&wire)?);
                Ok(())
            }
            Injection::Basic { user } => {
                let mut pair = Zeroizing::new(format!("{user}:").into_bytes());
                pair.extend_from_slice(secret.expose());
                let mut wire = Zeroizing::new(b"Basic ".to_vec());
                wire.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(pair.as_slice())
                        .as_bytes(),
                );
                headers.insert(http::header::AUTHORIZATION, header_value(&wire)?);
                Ok(())
            }
            Injection::Query { param } => {
                let value = std::str::from_utf8(secret.expose())
                    .map_err(|_| "the secret is not UTF-8 text and cannot go in a query parameter".to_string())?;
                let kept: Vec<(String, String)> = url
                    .query_pairs()
                    .filter(|(k, _)| k != param.as_str())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                {
                    let mut pairs = url.query_pairs_mut();
                    pairs.clear();
                    for (k, v) in &kept {
                        pairs.append_pair(k, v);
                    }
                    pairs.append_pair(param, value);
                }
                Ok(())
            }
        }
    }
}

/// HMAC algorithms offered by `sign`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignAlgorithm {
    HmacSha256,
    HmacSha512,
}

impl SignAlgorithm {
    fn name(self) -> &'static str {
        match self {
            SignAlgorithm::HmacSha256 => "hmac-sha256",
            SignAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }
}

/// One credential binding, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialBinding {
    /// The vault secret's name (never its value).
    pub secret: String,
    pub destinations: Vec<Destination>,
    pub inject: Option<Injection>,
    pub sign: Option<SignAlgorithm>,
}

impl CredentialBinding {
    /// The destinations, as written, for messages.
    pub fn destination_list(&self) -> String {
        self.destinations
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether this credential may be sent to `origin`.
    pub fn allows(&self, origin: &Origin) -> bool {
        self.destinations.iter().any(|d| d.matches(origin))
    }
}

/// The credentials grant: credential name → binding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialsGrant {
    pub bindings: BTreeMap<String, CredentialBinding>,
}

impl CredentialsGrant {
    pub fn resolve(raw: &BTreeMap<String, RawCredential>) -> Result<CredentialsGrant, String> {
        let mut bindings = BTreeMap::new();
        for (name, c) in raw {
            let at = |e: String| format!("grants.credentials.{name}: {e}");
            crate::vault::validate_name(name).map_err(|e| at(e.to_string()))?;
            crate::vault::validate_name(&c.secret).map_err(|e| at(format!("secret: {e}")))?;
            let destinations = c
                .destinations
                .iter()
                .map(|d| Destination::parse(d))
                .collect::<Result<Vec<_>, _>>()
                .map_err(at)?;
            let inject = c.inject.as_ref().map(Injection::resolve).transpose().map_err(at)?;
            if inject.is_some() && destinations.is_empty() {
                return Err(at(
                    "a credential that is injected needs `destinations` where it may be sent".into(),
                ));
            }
            if inject.is_none() && c.sign.is_none() {
                return Err(at("set `inject` (to send it) and/or `sign` (to sign with it)".into()));
            }
            bindings.insert(
                name.clone(),
                CredentialBinding {
                    secret: c.secret.clone(),
                    destinations,
                    inject,
                    sign: c.sign,
                },
            );
        }
        Ok(CredentialsGrant { bindings })
    }
}

/// The guest's handle: a name, nothing else.
#[derive(Debug)]
pub struct CredentialHandle {
    pub name: String,
}

/// Per-invocation credential access, shared with the `wasi:http` hooks.
#[derive(Debug, Default)]
pub struct CredentialStore {
    grant: CredentialsGrant,
    vault: Option<Arc<LiveVault>>,
    inner: Mutex<Opened>,
}

#[derive(Debug, Default)]
struct Opened {
    /// Decrypted secrets, wiped on drop at the end of the invocation.
    secrets: BTreeMap<String, SecretValue>,
    redactor: Option<Arc<Redactor>>,
}

impl CredentialStore {
    pub fn new(grant: CredentialsGrant, vault: Option<Arc<LiveVault>>) -> CredentialStore {
        CredentialStore {
            grant,
            vault,
            inner: Mutex::new(Opened::default()),
        }
    }

    pub fn binding(&self, name: &str) -> Option<&CredentialBinding> {
        self.grant.bindings.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.grant.bindings.is_empty()
    }

    fn opened(&self) -> std::sync::MutexGuard<'_, Opened> {
        // A poisoned lock only means another host call panicked mid-update;
        // the map itself is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The secret behind credential `name`, decrypted once per invocation.
    pub fn secret(&self, name: &str) -> Result<SecretValue, wit::CredentialError> {
        let binding = self
            .binding(name)
            .ok_or_else(|| wit::CredentialError::NotBound(not_bound(name)))?;
        if let Some(s) = self.opened().secrets.get(name) {
            return Ok(s.clone());
        }
        let vault = self
            .vault
            .as_ref()
            .ok_or_else(|| wit::CredentialError::Unavailable("the vault is not open".into()))?;
        let secret = vault.get(&binding.secret).map_err(|e| {
            tracing::warn!(credential = name, error = %e, "credential unavailable");
            wit::CredentialError::Unavailable(format!("credential `{name}` is unavailable on the host: {e}"))
        })?;
        self.opened().secrets.insert(name.to_string(), secret.clone());
        Ok(secret)
    }

    /// A redactor covering every secret bound to the action (empty when
    /// none is bound). Built on first use, then shared.
    pub fn redactor(&self) -> Result<Arc<Redactor>, String> {
        if let Some(r) = &self.opened().redactor {
            return Ok(r.clone());
        }
        let mut redactor = Redactor::default();
        for name in self.grant.bindings.keys() {
            let secret = self.secret(name).map_err(|e| match e {
                wit::CredentialError::NotBound(m)
                | wit::CredentialError::NotPermitted(m)
                | wit::CredentialError::Unavailable(m) => m,
            })?;
            redactor.add(secret.expose());
            // The secret as it goes on the wire (inside a Basic pair, form-
            // encoded in a query) is a value of its own that an echo can
            // re-encode; cover it and its encodings too.
            if let Some(inject) = self.grant.bindings.get(name).and_then(|b| b.inject.as_ref()) {
                for wire in inject.wire_forms(&secret) {
                    redactor.add(&wire);
                }
            }
        }
        let redactor = Arc::new(redactor);
        self.opened().redactor = Some(redactor.clone());
        Ok(redactor)
    }
}

fn not_bound(name: &str) -> String {
    let shown: String = name.chars().take(64).flat_map(char::escape_debug).collect();
    format!("no credential named \"{shown}\" is bound to this action")
}

/// The `credentials` capability.
pub struct CredentialsCapability;

impl Capability for CredentialsCapability {
    const INTERFACES: &'static [Interface] = &[Interface {
        family: &AIRLOCK_CAP_0_1,
        name: "airlock:cap/credentials",
        meaning: "opaque handles on the credentials the policy binds; secrets never enter the sandbox",
    }];
    type Raw = BTreeMap<String, RawCredential>;
    type Grant = CredentialsGrant;
    const REACHES_OUTSIDE: bool = true;
    const EXAMPLE_GRANT: &'static str = r#"credentials.NAME = { secret = "VAULT-SECRET", destinations = ["https://HOST"], inject = { header = "authorization", template = "Bearer {}" } }"#;
    const EXAMPLE_FLAG: &'static str = "a config file (credentials cannot be granted ad hoc)";

    fn resolve(raw: &Self::Raw, cx: &Resolving<'_>) -> Result<Option<CredentialsGrant>, String> {
        let mut raw = raw.clone();
        for (name, c) in raw.iter_mut() {
            for d in &mut c.destinations {
                *d = cx
                    .expand(d)
                    .map_err(|e| format!("grants.credentials.{name}.destinations: {e}"))?;
            }
        }
        CredentialsGrant::resolve(&raw).map(Some)
    }

    /// `airlock:cap/http` names the credential type, so an http grant links
    /// this interface too (with no credentials bound, `get` refuses every
    /// name).
    fn linked_by(grants: &Grants) -> bool {
        grants.http.is_some()
    }

    fn link(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<InvocationState, HasSelf<InvocationState>>(linker, |s| s)
    }

    fn prepare(grant: &CredentialsGrant, state: &mut StateBuilder) -> anyhow::Result<()> {
        state
            .slots
            .insert(Arc::new(CredentialStore::new(grant.clone(), state.vault.clone())));
        Ok(())
    }

    fn describe(grant: &CredentialsGrant) -> String {
        grant
            .bindings
            .iter()
            .map(|(name, b)| {
                let mut uses = Vec::new();
                if let Some(i) = &b.inject {
                    let how = match i {
                        Injection::Header { name, template } => format!("header {name}: {template}"),
                        Injection::Basic { user } => format!("basic auth as {user}"),
                        Injection::Query { param } => format!("query ?{param}="),
                    };
                    uses.push(format!("{how} to {}", b.destination_list()));
                }
                if let Some(s) = b.sign {
                    uses.push(format!("sign with {}", s.name()));
                }
                format!("{name} (secret {}): {}", b.secret, uses.join("; "))
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

const IFACE: &str = "airlock:cap/credentials";

/// The invocation's credentials, if the action holds a credentials grant.
pub(crate) fn bound_in(state: &InvocationState) -> Option<&CredentialStore> {
    state.slots.get::<Arc<CredentialStore>>().map(Arc::as_ref)
}

/// The invocation's credentials: none bound without a credentials grant.
pub(crate) fn credentials_of(state: &InvocationState) -> Arc<CredentialStore> {
    state.slots.get::<Arc<CredentialStore>>().cloned().unwrap_or_default()
}

impl wit::Host for InvocationState {
    fn get(&mut self, name: String) -> wasmtime::Result<Result<Resource<CredentialHandle>, wit::CredentialError>> {
        let call = HostCall::new(IFACE, "get").arg("name", name.chars().take(128).collect::<String>());
        let bound = bound_in(self).is_some_and(|c| c.binding(&name).is_some());
        let decided = self.host_call(
            call,
            |_| {
                if bound {
                    Decision::allow(format!("grants.credentials.{name}"))
                } else {
                    Decision::deny("grants.credentials", not_bound(&name))
                }
            },
            |s| {
                s.table
                    .push(CredentialHandle { name: name.clone() })
                    .map_err(|e| e.to_string())
            },
        );
        match decided {
            Ok(Ok(handle)) => Ok(Ok(handle)),
            Ok(Err(e)) => Err(wasmtime::format_err!("resource table: {e}")),
            Err(denied) => Ok(Err(wit::CredentialError::NotBound(denied.reason))),
        }
    }

    fn sign(
        &mut self,
        credential: Resource<CredentialHandle>,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, wit::CredentialError>> {
        let name = self.table.get(&credential)?.name.clone();
        let algorithm = bound_in(self).and_then(|c| c.binding(&name)).and_then(|b| b.sign);
        let call = HostCall::new(IFACE, "sign")
            .arg("credential", &name)
            .arg("bytes", data.len())
            .arg("data-blake3", blake3::hash(&data).to_hex());
        let decided = self.host_call(
            call,
            |_| match algorithm {
                Some(a) => Decision::allow(format!("grants.credentials.{name}.sign ({})", a.name())),
                None => Decision::deny(
                    format!("grants.credentials.{name}"),
                    format!("credential `{name}` has no `sign` algorithm in policy"),
                ),
            },
            |s| {
                let secret = credentials_of(s).secret(&name)?;
                Ok(match algorithm {
                    Some(SignAlgorithm::HmacSha512) => hmac::Hmac::<sha2::Sha512>::new_from_slice(secret.expose())
                        .map(|m| m.chain_update(&data).finalize().into_bytes().to_vec()),
                    _ => hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.expose())
                        .map(|m| m.chain_update(&data).finalize().into_bytes().to_vec()),
                }
                .unwrap_or_default())
            },
        );
        Ok(match decided {
            Ok(result) => result,
            Err(denied) => Err(wit::CredentialError::NotPermitted(denied.reason)),
        })
    }
}

impl wit::HostCredential for InvocationState {
    fn name(&mut self, credential: Resource<CredentialHandle>) -> wasmtime::Result<String> {
        let name = self.table.get(&credential)?.name.clone();
        // Only a handle the guest was already given can be asked, but the
        // call is still a capability call: recorded like every other.
        let call = HostCall::new(IFACE, "[method]credential.name").arg("name", &name);
        self.host_call(call, |_| Decision::allow("grants.credentials"), |_| "ok")
            .map_err(crate::host_call::Denied::into_trap)?;
        Ok(name)
    }

    fn drop(&mut self, credential: Resource<CredentialHandle>) -> wasmtime::Result<()> {
        self.table.delete(credential)?;
        Ok(())
    }
}
