//! The OpenAPI 3.1 description of the HTTP API, served at
//! `/v1/openapi.json`. Every operation has an `operationId`; a test checks
//! that every route of the router is described and that the document
//! validates (`openapi-spec-validator`). Asked with a bearer token, the
//! document also carries the argument and result schemas (from the WIT)
//! of each function the caller may invoke, as `POST /v1/invocations`
//! bodies and `components.schemas` named `ACTION.FUNCTION.args` and
//! `ACTION.FUNCTION.result`.

use crate::action::PreparedAction;
use serde_json::{Value, json};
use std::sync::Arc;

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn ok(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// A component schema name made of what OpenAPI allows.
fn schema_name(action: &str, function: &str, part: &str) -> String {
    format!("{action}.{function}.{part}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The per-function schemas of `actions`, and one request body per
/// function (`action` and `function` fixed, `args` its schema).
fn action_schemas(actions: &[(String, Arc<PreparedAction>)]) -> (serde_json::Map<String, Value>, Vec<Value>) {
    let mut schemas = serde_json::Map::new();
    let mut bodies = Vec::new();
    for (name, action) in actions {
        for f in &action.manifest.functions {
            if f.unsupported().is_some() {
                continue;
            }
            let args = schema_name(name, &f.name, "args");
            let result = schema_name(name, &f.name, "result");
            let mut params = f.params_schema();
            if let (Some(doc), Some(obj)) = (f.doc(), params.as_object_mut()) {
                obj.insert("description".into(), json!(doc));
            }
            schemas.insert(args.clone(), params);
            schemas.insert(result.clone(), f.result_schemas().0);
            bodies.push(json!({
                "type": "object",
                "title": format!("{name}#{}", f.name),
                "required": ["action", "function"],
                "additionalProperties": false,
                "properties": {
                    "action": {"const": name},
                    "function": {"const": f.name},
                    "args": {"$ref": format!("#/components/schemas/{args}")},
                    "wait-ms": {"type": "integer", "minimum": 0},
                    "reason": {"type": "string"},
                },
            }));
        }
    }
    (schemas, bodies)
}

/// The document; with the schemas of `actions` (those the caller may
/// invoke) when it is asked with a token.
pub fn document(actions: &[(String, Arc<PreparedAction>)]) -> Value {
    let (action_schemas, bodies) = action_schemas(actions);
    let secured = json!([{"bearer": []}]);
    let errors = json!({
        "401": error_response("missing, unknown or revoked token"),
        "403": error_response("the identity may not do this"),
        "400": error_response("malformed request: body, query string or path (codes bad-json, bad-body, bad-query, bad-path, bad-request), or more than one Authorization header (ambiguous-credentials)"),
        "429": error_response("rate limited (per identity)"),
        "503": error_response("the database or the audit log cannot be reached now (database-unavailable, audit-unavailable)"),
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
    let decided = json!({"type": "object", "required": ["approval"], "properties": {"approval": {"$ref": "#/components/schemas/Approval"}}});
    // The generic body, and one per function the caller may invoke.
    let generic = json!({
        "type": "object", "required": ["action", "function"], "additionalProperties": false,
        "properties": {"action": {"type": "string"}, "function": {"type": "string"},
            "args": {"type": "object", "description": "keyed by the function's parameter names (see its JSON Schema)"},
            "wait-ms": {"type": "integer", "minimum": 0},
            "reason": {"type": "string", "description": "why the agent asks: recorded, shown to reviewers, readable by policies"}}});
    let invoke_body = if bodies.is_empty() {
        generic
    } else {
        json!({"oneOf": bodies})
    };
    let mut doc = json!({
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
                        "approval-kind": {"enum": ["invocation", "host-call", "guest"], "description": "what the pending request `approval` holds back"},
                        "action": {"type": "string"}, "function": {"type": "string"}, "caller": {"type": "string"},
                        "created-at": {"type": "string"}, "stated-reason": {"type": ["string", "null"]}, "traceparent": {"type": ["string", "null"]},
                        "binding": {"type": "string"}, "expires-at": {"type": "string"}
                    }
                },
                "Approval": {"type": "object", "description": "An approval request: what exactly would run (caller, action, function, args, component-digest, capabilities, rule, binding) and its decisions.",
                    "required": ["id", "state", "kind", "action", "function", "caller"],
                    "properties": {"id": {"type": "string"}, "state": {"enum": ["pending", "approved", "denied", "expired", "failed"]},
                        "kind": {"enum": ["invocation", "host-call", "guest"]}, "action": {"type": "string"}, "function": {"type": "string"},
                        "caller": {"type": "string"}, "args": {}, "binding": {"type": "string"}, "decisions": {"type": "array", "items": {"type": "object"}}}},
                "Action": {"type": "object", "required": ["name", "may-invoke", "may-approve", "manifest"],
                    "properties": {"name": {"type": "string"}, "description": {"type": ["string", "null"]}, "service-identity": {"type": "string"},
                        "may-invoke": {"type": "boolean"}, "may-approve": {"type": "boolean"}, "approval": {"type": "object"},
                        "capabilities": {"type": "array", "items": {"type": "string"}},
                        "manifest": {"type": "object", "description": "imports, functions with their JSON Schemas, docs, digest"},
                        "upgrade": {"type": ["object", "null"]}}},
                "Readiness": {"type": "object", "required": ["ready", "audit", "database", "node"],
                    "properties": {"ready": {"type": "boolean"}, "audit": {"enum": ["ok", "unavailable"]}, "database": {"enum": ["ok", "unavailable"]},
                        "node": {"type": "string"}, "actions": {"type": "array", "items": {"type": "string"}}}},
                "AuditRecord": {"type": "object", "required": ["seq", "ts", "prev", "hash", "event"],
                    "properties": {"seq": {"type": "integer"}, "ts": {"type": "string"}, "prev": {"type": "string"}, "hash": {"type": "string"},
                        "event": {"type": "object", "required": ["kind"], "properties": {"kind": {"type": "string"}}}, "node": {"type": "string"}}},
                "ResourceMetadata": {"type": "object", "required": ["resource", "bearer_methods_supported"],
                    "properties": {"resource": {"type": "string"}, "bearer_methods_supported": {"type": "array", "items": {"const": "header"}}, "resource_name": {"type": "string"}}}
            }
        },
        "paths": {
            "/v1/health": {"get": {"operationId": "health", "summary": "Liveness", "security": [{}],
                "responses": {"200": ok("alive", json!({"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}))}}},
            "/v1/ready": {"get": {"operationId": "ready", "summary": "Readiness: the audit log is writable. With a bearer token (optional), also `actions`: the loaded actions that identity may invoke or approve",
                "security": [{}, {"bearer": []}], "responses": {
                "200": ok("ready", json!({"$ref": "#/components/schemas/Readiness"})), "503": ok("not ready", json!({"$ref": "#/components/schemas/Readiness"})),
                "401": error_response("a token was sent and is unknown or revoked")}}},
            "/v1/openapi.json": {"get": {"operationId": "openapi", "summary": "This document; with a bearer token (optional), with the argument and result schemas of the functions that identity may invoke",
                "security": [{}, {"bearer": []}], "responses": {"200": ok("the OpenAPI document", json!({"type": "object"})),
                "401": error_response("a token was sent and is unknown or revoked")}}},
            "/v1/actions": {"get": {"operationId": "listActions", "summary": "Actions the identity may invoke or approve, with function schemas and capability manifests",
                "security": secured, "responses": with_errors(json!({"200": ok("actions", json!({"type": "object", "required": ["actions"], "properties": {"actions": {"type": "array", "items": {"$ref": "#/components/schemas/Action"}}}}))}))}},
            "/v1/invocations": {
                "post": {
                    "operationId": "invoke",
                    "summary": "Invoke an action. Waits up to wait-ms (default 30000, max 300000) for the result, a reviewer's decision on an invocation-level gate included; 0 submits and returns at once",
                    "security": secured,
                    "parameters": [{"name": "traceparent", "in": "header", "required": false, "schema": {"type": "string"}, "description": "W3C trace context the invocation continues"}],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": invoke_body}}},
                    "responses": with_errors(json!({
                        "200": ok("finished (status succeeded or failed)", json!({"$ref": "#/components/schemas/Invocation"})),
                        "202": ok("not finished within wait-ms: still running, or awaiting approval (approval, approval-kind, binding, expires-at name the request it waits for)", json!({"$ref": "#/components/schemas/Invocation"})),
                        "404": error_response("unknown action or function"),
                        "408": error_response("the body did not arrive within service.body-timeout-ms"),
                        "413": error_response("body too large (service.max-body-bytes)"),
                        "422": error_response("arguments do not fit the function")}))},
                "get": {
                    "operationId": "listInvocations",
                    "summary": "Invocations the identity may see (its own, and those of actions it may approve), newest first, a page at a time. One request reads at most 10000 rows: a page can be shorter than `limit` (even empty) while `next` says where to go on",
                    "security": secured,
                    "parameters": [
                        {"name": "state", "in": "query", "schema": {"enum": ["awaiting-approval", "approved", "running", "succeeded", "failed", "denied", "expired", "all"]}},
                        {"name": "action", "in": "query", "schema": {"type": "string"}},
                        {"name": "caller", "in": "query", "schema": {"type": "string"}, "description": "the identity that made them"},
                        {"name": "since", "in": "query", "schema": {"type": "string"}, "description": "created at or after (Unix seconds or YYYY-MM-DD[THH:MM[:SS]][Z], UTC)"},
                        {"name": "until", "in": "query", "schema": {"type": "string"}, "description": "created before"},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                        {"name": "after", "in": "query", "schema": {"type": "string"}, "description": "the `next` of the page before"}],
                    "responses": with_errors(json!({"200": ok("a page", json!({
                        "type": "object", "required": ["invocations", "next"],
                        "properties": {
                            "invocations": {"type": "array", "items": {"$ref": "#/components/schemas/Invocation"}},
                            "next": {"type": ["string", "null"], "description": "pass as `after` for the next page; null on the last"}}}))}))}},
            "/v1/invocations/{id}": {"get": {"operationId": "getInvocation", "summary": "An invocation's status and result (its caller, or an approver of its action)",
                "security": secured, "parameters": id_param,
                "responses": with_errors(json!({"200": ok("the invocation", json!({"$ref": "#/components/schemas/Invocation"})), "404": error_response("no such invocation")}))}},
            "/v1/approvals": {"get": {"operationId": "listApprovals", "summary": "Approval requests visible to the identity (pending unless ?state=...|all), newest `limit` (default 1000, max 10000)",
                "security": secured,
                "parameters": [
                    {"name": "state", "in": "query", "schema": {"enum": ["pending", "approved", "denied", "expired", "failed", "all"]}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}}],
                "responses": with_errors(json!({"200": ok("requests", json!({"type": "object", "required": ["approvals"], "properties": {"approvals": {"type": "array", "items": {"$ref": "#/components/schemas/Approval"}}}}))}))}},
            "/v1/approvals/{id}": {"get": {"operationId": "getApproval", "summary": "One request: exactly what would run", "security": secured, "parameters": id_param,
                "responses": with_errors(json!({"200": ok("the request", json!({"$ref": "#/components/schemas/Approval"})), "404": error_response("no such request")}))}},
            "/v1/approvals/{id}/approve": {"post": {"operationId": "approve", "summary": "Approve (optionally pinned to the binding reviewed)", "security": secured, "parameters": id_param,
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": false, "properties": {"reason": {"type": "string"}, "binding": {"type": "string"}}}}}},
                "responses": with_errors(json!({"200": ok("the request after the decision", decided.clone()), "409": error_response("not pending, expired, self-approval, already decided, or binding mismatch")}))}},
            "/v1/approvals/{id}/deny": {"post": {"operationId": "deny", "summary": "Deny; any deny ends the request", "security": secured, "parameters": id_param,
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["reason"], "additionalProperties": false, "properties": {"reason": {"type": "string"}, "binding": {"type": "string"}}}}}},
                "responses": with_errors(json!({"200": ok("the request after the decision", decided), "409": error_response("not pending or not allowed")}))}},
            "/v1/audit": {"get": {"operationId": "queryAudit", "summary": "Audit records (verified as read), filtered; newest `limit` (default 1000); for service.audit-readers", "security": secured,
                "parameters": [
                    {"name": "invocation", "in": "query", "schema": {"type": "string"}},
                    {"name": "action", "in": "query", "schema": {"type": "string"}},
                    {"name": "caller", "in": "query", "schema": {"type": "string"}},
                    {"name": "since", "in": "query", "schema": {"type": "string"}},
                    {"name": "until", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}}],
                "responses": with_errors(json!({"200": ok("records", json!({"type": "object", "required": ["records"], "properties": {"records": {"type": "array", "items": {"$ref": "#/components/schemas/AuditRecord"}}}}))}))}},
            "/v1/audit/verify": {"get": {"operationId": "verifyAudit", "summary": "Verify the whole hash chain and checkpoints; for service.audit-readers", "security": secured,
                "responses": with_errors(json!({"200": ok("how the verification went", json!({
                    "type": "object", "required": ["intact"],
                    "properties": {"intact": {"type": "boolean"}, "records": {"type": "integer"}, "error": {"type": "string"},
                        "head": {"type": ["object", "null"], "properties": {"seq": {"type": "integer"}, "hash": {"type": "string"}}},
                        "checkpoints": {"type": "integer"}, "signed-through": {"type": ["integer", "null"]}, "unsigned-records": {"type": "integer"},
                        "nodes": {"type": "array", "items": {"type": "object"}}, "index": {"type": "object"}}}))}))}},
            "/v1/cluster": {"get": {"operationId": "cluster", "summary": "The live nodes sharing this store, and their versions", "security": secured,
                "responses": with_errors(json!({"200": ok("the nodes", json!({
                    "type": "object", "required": ["this-node", "shared-store", "nodes"],
                    "properties": {"this-node": {"type": "string"}, "shared-store": {"type": "boolean"},
                        "nodes": {"type": "array", "items": {"type": "object", "properties": {
                            "id": {"type": "string"}, "version": {"type": "string"}, "address": {"type": ["string", "null"]}}}}}}))}))}},
            "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics in the OpenMetrics text format; for service.metrics-readers", "security": secured,
                "responses": with_errors(json!({"200": {"description": "the metrics", "content": {"application/openmetrics-text": {"schema": {"type": "string"}}}}}))}},
            "/.well-known/oauth-protected-resource": {"get": {"operationId": "protectedResourceMetadata", "summary": "RFC 9728 metadata of the MCP endpoint", "security": [{}],
                "responses": {"200": ok("the metadata", json!({"$ref": "#/components/schemas/ResourceMetadata"}))}}},
            "/.well-known/oauth-protected-resource/mcp": {"get": {"operationId": "mcpResourceMetadata", "summary": "RFC 9728 metadata of the MCP endpoint (the path a 401 from /mcp names)", "security": [{}],
                "responses": {"200": ok("the metadata", json!({"$ref": "#/components/schemas/ResourceMetadata"}))}}},
            "/mcp": {
                "post": {"operationId": "mcpMessage", "summary": "MCP over streamable HTTP: one JSON-RPC message (tools are ACTION__FUNCTION, see the MCP section of the README)", "security": secured,
                    "parameters": [{"name": "Mcp-Session-Id", "in": "header", "required": false, "schema": {"type": "string"}, "description": "the session (absent on initialize); only the identity that opened it may use it"}],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["jsonrpc"], "properties": {"jsonrpc": {"const": "2.0"}, "method": {"type": "string"}, "id": {"type": ["string", "integer"]}, "params": {"type": "object"}}}}}},
                    "responses": with_errors(json!({
                        "200": {"description": "the answer, as JSON or an event stream", "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {"type": "string"}}}},
                        "202": {"description": "a notification or response, accepted"},
                        "404": error_response("no such session (or another identity's)"),
                        "415": error_response("not Content-Type: application/json")}))},
                "get": {"operationId": "mcpStream", "summary": "The session's event stream: notifications not tied to a call (log lines, over HTTP)", "security": secured,
                    "parameters": [{"name": "Mcp-Session-Id", "in": "header", "required": true, "schema": {"type": "string"}}],
                    "responses": with_errors(json!({"200": {"description": "an event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}, "404": error_response("no such session")}))},
                "delete": {"operationId": "mcpEnd", "summary": "End the session", "security": secured,
                    "parameters": [{"name": "Mcp-Session-Id", "in": "header", "required": true, "schema": {"type": "string"}}],
                    "responses": with_errors(json!({"204": {"description": "ended"}, "404": error_response("no such session")}))}}
        }
    });
    if let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut) {
        schemas.extend(action_schemas);
    }
    doc
}
