//! The request headers a guest may never set: only the host sets them, or
//! common frameworks honour them to override the method, path or host a
//! destination rule allowed. Both outbound capabilities
//! (`airlock:cap/http` and `wasi:http`) and credential injection rules
//! check headers against this one list.

use http::HeaderName;

/// Request headers only the host sets, and headers that common frameworks
/// honour to override the method, path or host a rule allowed. A guest that
/// sets one through `airlock:cap/http` gets `invalid-request`; through
/// `wasi:http` they are removed.
pub const HOST_OWNED_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-forwarded-host",
    "x-forwarded-prefix",
    "x-forwarded-proto",
    "x-forwarded-for",
    "x-host",
    "forwarded",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "proxy-authorization",
    "http2-settings",
];

/// Whether the host owns header `name` (see [`HOST_OWNED_HEADERS`]).
pub fn is_host_owned(name: &HeaderName) -> bool {
    HOST_OWNED_HEADERS.contains(&name.as_str()) || name.as_str().starts_with("proxy-")
}

/// Remove every header the host owns from `headers` (`proxy-*` included).
pub fn drop_host_owned(headers: &mut http::HeaderMap) {
    let owned: Vec<HeaderName> = headers.keys().filter(|name| is_host_owned(name)).cloned().collect();
    for name in owned {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_host_owned_header_is_dropped_and_nothing_else() {
        let mut headers = http::HeaderMap::new();
        for name in HOST_OWNED_HEADERS.iter().chain(&["proxy-anything", "x-kept", "accept"]) {
            headers.append(HeaderName::from_static(name), http::HeaderValue::from_static("v"));
        }
        headers.append("X-Forwarded-Host", http::HeaderValue::from_static("again"));
        drop_host_owned(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-kept"]);
    }
}
