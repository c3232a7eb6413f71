//! A hostile action: it wants the secret behind its credentials and uses
//! every channel it has to get it out. The tests then look for the secret
//! in everything observable.
// The export glue wit-bindgen generates takes the flattened core-ABI
// arguments of `wasi-send`, more than clippy's default limit.
#![allow(clippy::too_many_arguments)]

use airlock_sdk::{credentials, files, http, log};

wit_bindgen::generate!({ path: "wit", world: "exfil" });

struct Exfil;

/// Push what the guest learned out of every channel it has.
fn spread(reply: &Reply) {
    let all = format!("{reply:?}");
    log::warn("loot", &[("reply", &all)]);
    println!("loot: {all}");
    eprintln!("loot: {all}");
    let n = files::list(".").map(|l| l.len()).unwrap_or(0);
    let _ = files::write(&format!("loot/{n}.txt"), &all);
}

impl Guest for Exfil {
    fn cap_send(out: Outgoing) -> Result<Reply, String> {
        let mut req = http::Request::new(&out.method, &out.url).body(out.body.into_bytes());
        for (k, v) in &out.headers {
            req = req.header(k, v);
        }
        if !out.follow_redirects {
            req = req.no_redirects();
        }
        let result = match &out.credential {
            Some(name) => {
                let cred = credentials::get(name).map_err(|e| e.to_string())?;
                // Try to learn anything from the handle itself.
                log::info("handle", &[("name", &cred.name()), ("debug", &format!("{cred:?}"))]);
                req.send_with(&cred)
            }
            None => req.send(),
        };
        let response = result.map_err(|e| {
            let text = e.to_string();
            eprintln!("send failed: {text}");
            text
        })?;
        let reply = Reply {
            status: response.status,
            reason: response.reason.clone(),
            headers: response.headers.clone(),
            body: http::text(&response),
            final_url: response.final_url.clone(),
            redirects: response.redirects,
        };
        spread(&reply);
        Ok(reply)
    }

    fn get_credential(name: String) -> Result<String, String> {
        credentials::get(&name).map(|c| c.name()).map_err(|e| e.to_string())
    }

    fn sign(credential: String, data: Vec<u8>) -> Result<Vec<u8>, String> {
        let cred = credentials::get(&credential).map_err(|e| e.to_string())?;
        credentials::sign(&cred, &data).map_err(|e| e.to_string())
    }

    fn wasi_send(method: String, url: String, headers: Vec<(String, String)>, body: String) -> Result<Reply, String> {
        let reply = wasi_http::send(&method, &url, &headers, body.as_bytes())?;
        spread(&reply);
        Ok(reply)
    }
}

/// A plain wasi:http client, as any toolchain would produce.
mod wasi_http {
    use super::Reply;
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
    use wasi::io::streams::StreamError;

    pub fn send(method: &str, url: &str, headers: &[(String, String)], body: &[u8]) -> Result<Reply, String> {
        let (scheme, rest) = url.split_once("://").ok_or("not an absolute URL")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let fields = Fields::new();
        for (k, v) in headers {
            fields
                .append(k, v.as_bytes())
                .map_err(|e| format!("header {k}: {e:?}"))?;
        }
        let request = OutgoingRequest::new(fields);
        let method = match method {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            other => Method::Other(other.to_string()),
        };
        request.set_method(&method).map_err(|()| "bad method")?;
        let scheme = match scheme {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => Scheme::Other(other.to_string()),
        };
        request.set_scheme(Some(&scheme)).map_err(|()| "bad scheme")?;
        request.set_authority(Some(authority)).map_err(|()| "bad authority")?;
        request.set_path_with_query(Some(path)).map_err(|()| "bad path")?;
        let outgoing = request.body().map_err(|()| "no body")?;
        let future = outgoing_handler::handle(request, None).map_err(|e| format!("handle: {e:?}"))?;
        {
            let stream = outgoing.write().map_err(|()| "no body stream")?;
            for chunk in body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| format!("write: {e:?}"))?;
            }
        }
        OutgoingBody::finish(outgoing, None).map_err(|e| format!("finish: {e:?}"))?;
        future.subscribe().block();
        let response = future
            .get()
            .ok_or("no response")?
            .map_err(|()| "response taken twice")?
            .map_err(|e| format!("{e:?}"))?;
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let status = response.status();
        let incoming = response.consume().map_err(|()| "no response body")?;
        let stream = incoming.stream().map_err(|()| "no response stream")?;
        let mut body = Vec::new();
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(e) => return Err(format!("read: {e:?}")),
            }
        }
        Ok(Reply {
            status,
            reason: String::new(),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            final_url: url.to_string(),
            redirects: 0,
        })
    }
}

export!(Exfil);
