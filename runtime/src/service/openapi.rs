//! The OpenAPI 3.1 description of the HTTP API, served at
//! `/v1/openapi.json`.

use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn ok(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// The document.
pub fn document() -> Value {
    let secured = json!([{"bearer": []}]);
    let errors = json!({
        "401": error_response("missing, unknown or revoked token"),
        "403": error_response("the identity may not do this"),
        "400": error_response("malformed request: body, query string or path (codes bad-json, bad-body, bad-query, bad-path, bad-request), or more than one Authorization header (ambiguous-credentials)"),
        "429": error_response("rate limited (per identity)"),
    });
    let with_errors = |mut responses: Value| {
        if let (Some(r), Some(e)) = (responses.as_object_mut(), errors.as_object()) {
            for (k, v) in e {
                r.insert(k.clone(), v.clone());
            }
        }
        responses
    };
    let id_param = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "airlock",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Governed execution of WebAssembly actions for AI agents. Every request is attributed to the identity of its bearer token, checked on the request head before any body is read (a request without a valid token is answered 401 at once, its body unread, and its connection closed); errors are {\"error\": {\"code\", \"message\"}}."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                        "code": {"type": "string"}, "message": {"type": "string"}}}}
                },
                "Invocation": {
                    "type": "object",
                    "required": ["invocation", "status"],
                    "properties": {
                        "invocation": {"type": "string"},
                        "status": {"enum": ["running", "awaiting-approval", "approved", "succeeded", "failed", "denied", "expired"]},
                        "result": {},
                        "error": {"type": ["string", "null"]},
                        "exit-code": {"type": ["integer", "null"]},
                        "approval": {"type": ["string", "null"]},
                        "approval-kind": {"enum": ["invocation", "host-call", "guest"], "description": "what the pending request `approval` holds back"}
                    }
                },
                "Approval": {"type": "object", "description": "An approval request: what exactly would run (caller, action, function, args, component-digest, capabilities, rule, binding) and its decisions."}
            }
        },
        "paths": {
            "/v1/health": {"get": {"summary": "Liveness", "responses": {"200": ok("alive", json!({"type": "object"}))}}},
            "/v1/ready": {"get": {"summary": "Readiness: the audit log is writable. With a bearer token (optional), also `actions`: the loaded actions that identity may invoke or approve",
                "security": [{}, {"bearer": []}], "responses": {
                "200": ok("ready", json!({"type": "object"})), "503": ok("not ready", json!({"type": "object"})),
                "401": error_response("a token was sent and is unknown or revoked")}}},
            "/v1/actions": {"get": {"summary": "Actions the identity may invoke or approve, with function schemas and capability manifests",
                "security": secured, "responses": with_errors(json!({"200": ok("actions", json!({"type": "object"}))}))}},
            "/v1/invocations": {"post": {
                "summary": "Invoke an action. Waits up to wait-ms (default 30000, max 300000) for the result, a reviewer's decision on an invocation-level gate included; 0 submits and returns at once",
                "security": secured,
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["action", "function"], "additionalProperties": false,
                    "properties": {"action": {"type": "string"}, "function": {"type": "string"},
                        "args": {"type": "object", "description": "keyed by the function's parameter names (see its JSON Schema)"},
                        "wait-ms": {"type": "integer", "minimum": 0}}}}}},
                "responses": with_errors(json!({
                    "200": ok("finished (status succeeded or failed)", json!({"$ref": "#/components/schemas/Invocation"})),
                    "202": ok("not finished within wait-ms: still running, or awaiting approval (approval, approval-kind, binding, expires-at name the request it waits for)", json!({"$ref": "#/components/schemas/Invocation"})),
                    "404": error_response("unknown action or function"),
                    "408": error_response("the body did not arrive within service.body-timeout-ms"),
                    "413": error_response("body too large (service.max-body-bytes)"),
                    "422": error_response("arguments do not fit the function")}))}},
            "/v1/invocations/{id}": {"get": {"summary": "An invocation's status and result (its caller, or an approver of its action)",
                "security": secured, "parameters": id_param,
                "responses": with_errors(json!({"200": ok("the invocation", json!({"$ref": "#/components/schemas/Invocation"})), "404": error_response("no such invocation")}))}},
            "/v1/approvals": {"get": {"summary": "Approval requests visible to the identity (pending unless ?state=...|all), newest `limit` (default 1000, max 10000)",
                "security": secured,
                "parameters": [
                    {"name": "state", "in": "query", "schema": {"enum": ["pending", "approved", "denied", "expired", "failed", "all"]}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}}],
                "responses": with_errors(json!({"200": ok("requests", json!({"type": "object"}))}))}},
            "/v1/approvals/{id}": {"get": {"summary": "One request: exactly what would run", "security": secured, "parameters": id_param,
                "responses": with_errors(json!({"200": ok("the request", json!({"$ref": "#/components/schemas/Approval"})), "404": error_response("no such request")}))}},
            "/v1/approvals/{id}/approve": {"post": {"summary": "Approve (optionally pinned to the binding reviewed)", "security": secured, "parameters": id_param,
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "properties": {"reason": {"type": "string"}, "binding": {"type": "string"}}}}}},
                "responses": with_errors(json!({"200": ok("the request after the decision", json!({"type": "object"})), "409": error_response("not pending, expired, self-approval, already decided, or binding mismatch")}))}},
            "/v1/approvals/{id}/deny": {"post": {"summary": "Deny; any deny ends the request", "security": secured, "parameters": id_param,
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}}}}},
                "responses": with_errors(json!({"200": ok("the request after the decision", json!({"type": "object"})), "409": error_response("not pending or not allowed")}))}},
            "/v1/audit": {"get": {"summary": "Audit records (verified as read), filtered; newest `limit` (default 1000)", "security": secured,
                "parameters": [
                    {"name": "invocation", "in": "query", "schema": {"type": "string"}},
                    {"name": "action", "in": "query", "schema": {"type": "string"}},
                    {"name": "caller", "in": "query", "schema": {"type": "string"}},
                    {"name": "since", "in": "query", "schema": {"type": "string"}},
                    {"name": "until", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}}],
                "responses": with_errors(json!({"200": ok("records", json!({"type": "object"}))}))}},
            "/v1/audit/verify": {"get": {"summary": "Verify the whole hash chain and checkpoints", "security": secured,
                "responses": with_errors(json!({"200": ok("{intact, records, head} or {intact: false, error}", json!({"type": "object"}))}))}},
            "/v1/cluster": {"get": {"summary": "The live nodes sharing this store, and their versions", "security": secured,
                "responses": with_errors(json!({"200": ok("{this-node, shared-store, nodes: [{id, version, address, started-at, last-seen}]}", json!({"type": "object"}))}))}}
        }
    })
}
