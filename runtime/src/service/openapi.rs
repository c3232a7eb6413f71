//! The OpenAPI 3.1 description of the HTTP API, served at
//! `/v1/openapi.json`.
//!
//! It is generated (`utoipa`): each route's operation from its handler's
//! `#[utoipa::path]`, each body's schema from the type the handler
//! serializes (`super::model`), and the router is built from the same list
//! (`documented`), so a route cannot be served undescribed nor
//! a response drift from its schema. Added here: the errors every
//! authenticated operation can answer, `/mcp` (served by the MCP library,
//! not a handler of ours), and, asked with a bearer token, the argument
//! and result schemas (from the WIT) of each function the caller may
//! invoke, as `POST /v1/invocations` bodies and `components.schemas` named
//! `ACTION.FUNCTION.args` and `ACTION.FUNCTION.result`. A test validates
//! the document (`openapi-spec-validator`).

use super::Service;
use super::api;
use super::model::ErrorBody;
use crate::action::PreparedAction;
use crate::identity::Caller;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use std::sync::{Arc, LazyLock};

type Shared = Arc<Service>;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The generated part of the document: info, the bearer scheme; the
/// operations and schemas come from the router (`documented`).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "airlock",
        description = "Governed execution of WebAssembly actions for AI agents. Every request is attributed to the identity of its bearer token, checked on the request head before any body is read (a request without a valid token is answered 401 at once, its body unread, and its connection closed); errors are {\"error\": {\"code\", \"message\"}}."
    ),
    components(schemas(super::model::ErrorBody)),
    modifiers(&BearerScheme)
)]
pub struct ApiDoc;

/// `bearer`: the `Authorization: Bearer TOKEN` every identity sends.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
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

/// The errors any operation that needs a token can answer, added where
/// its handler's annotation does not name them.
fn common_errors() -> Value {
    json!({
        "401": error_response("missing, unknown or revoked token"),
        "403": error_response("the identity may not do this"),
        "400": error_response("malformed request: body, query string or path (codes bad-json, bad-body, bad-query, bad-path, bad-request), or more than one Authorization header (ambiguous-credentials)"),
        "429": error_response("rate limited (per identity)"),
        "503": error_response("the database or the audit log cannot be reached now (database-unavailable, audit-unavailable)"),
    })
}

/// `/mcp`: the MCP library's streamable-HTTP service, described by hand.
fn mcp_path() -> Value {
    json!({
        "post": {"operationId": "mcpMessage", "summary": "MCP over streamable HTTP: one JSON-RPC message (tools are ACTION__FUNCTION, see the MCP section of the README)", "security": [{"bearer": []}],
            "parameters": [{"name": "Mcp-Session-Id", "in": "header", "required": false, "schema": {"type": "string"}, "description": "the session (absent on initialize); only the identity that opened it may use it"}],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["jsonrpc"], "properties": {"jsonrpc": {"const": "2.0"}, "method": {"type": "string"}, "id": {"type": ["string", "integer"]}, "params": {"type": "object"}}}}}},
            "responses": {
                "200": {"description": "the answer, as JSON or an event stream", "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {"type": "string"}}}},
                "202": {"description": "a notification or response, accepted"},
                "404": error_response("no such session (or another identity's)"),
                "415": error_response("not Content-Type: application/json")}},
        "get": {"operationId": "mcpStream", "summary": "The session's event stream: notifications not tied to a call (log lines, over HTTP)", "security": [{"bearer": []}],
            "parameters": [{"name": "Mcp-Session-Id", "in": "header", "required": true, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "an event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}, "404": error_response("no such session")}},
        "delete": {"operationId": "mcpEnd", "summary": "End the session", "security": [{"bearer": []}],
            "parameters": [{"name": "Mcp-Session-Id", "in": "header", "required": true, "schema": {"type": "string"}}],
            "responses": {"204": {"description": "ended"}, "404": error_response("no such session")}}
    })
}

/// The document every caller gets: generated, with the common errors and
/// `/mcp` added. Built once.
pub(super) static BASE: LazyLock<Value> = LazyLock::new(|| {
    let (_, api) = documented().split_for_parts();
    let mut doc = match serde_json::to_value(&api) {
        Ok(doc) => doc,
        Err(e) => {
            tracing::error!("cannot render the OpenAPI document: {e}");
            return json!({"openapi": "3.1.0", "info": {"title": "airlock", "version": env!("CARGO_PKG_VERSION")}, "paths": {}});
        }
    };
    // Approving takes an optional body: absent, or a decision (never null).
    if let Some(body) = doc.pointer_mut("/paths/~1v1~1approvals~1{id}~1approve/post/requestBody") {
        *body = json!({"required": false, "description": "optional: a reason, and the binding reviewed",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DecisionBody"}}}});
    }
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        paths.insert("/mcp".into(), mcp_path());
        let errors = common_errors();
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for op in item.values_mut().filter_map(Value::as_object_mut) {
                let secured = op
                    .get("security")
                    .and_then(Value::as_array)
                    .is_some_and(|s| s.iter().all(|r| r.get("bearer").is_some()));
                if !secured {
                    continue;
                }
                if let (Some(responses), Some(errors)) = (
                    op.get_mut("responses").and_then(Value::as_object_mut),
                    errors.as_object(),
                ) {
                    for (status, response) in errors {
                        responses.entry(status.clone()).or_insert_with(|| response.clone());
                    }
                }
            }
        }
    }
    doc
});

/// The document; with the schemas of `actions` (those the caller may
/// invoke) when it is asked with a token.
pub fn document(actions: &[(String, Arc<PreparedAction>)]) -> Value {
    let mut doc = BASE.clone();
    let (action_schemas, bodies) = action_schemas(actions);
    if !bodies.is_empty()
        && let Some(schema) =
            doc.pointer_mut("/paths/~1v1~1invocations/post/requestBody/content/application~1json/schema")
    {
        *schema = json!({"oneOf": bodies});
    }
    if let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut) {
        schemas.extend(action_schemas);
    }
    doc
}

/// Every route of the API with its handler, each described by the
/// handler's own `#[utoipa::path]` and the types it takes and returns: the
/// router and the OpenAPI document are built from this one list, so no
/// route can go undescribed (`BASE` adds `/mcp`, which the MCP library serves,
/// and [`document`] what the caller may invoke).
pub(super) fn documented() -> utoipa_axum::router::OpenApiRouter<Shared> {
    use utoipa::OpenApi as _;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(api::health))
        .routes(routes!(api::ready))
        .routes(routes!(openapi))
        .routes(routes!(api::actions))
        .routes(routes!(api::invoke, api::list_invocations))
        .routes(routes!(api::invocation))
        .routes(routes!(api::approvals))
        .routes(routes!(api::approval))
        .routes(routes!(api::approve))
        .routes(routes!(api::deny))
        .routes(routes!(api::audit))
        .routes(routes!(api::audit_verify))
        .routes(routes!(api::cluster))
        .routes(routes!(super::observe::scrape))
        .routes(routes!(super::mcp::resource_metadata))
        .routes(routes!(super::mcp::mcp_resource_metadata))
}

/// This document
///
/// Asked with a bearer token (optional), with the argument and result
/// schemas of the functions that identity may invoke (never another's).
#[utoipa::path(get, path = "/v1/openapi.json", operation_id = "openapi", security((), ("bearer" = [])),
    responses(
        (status = 200, description = "the OpenAPI document", body = Object),
        (status = 401, description = "a token was sent and is unknown or revoked", body = ErrorBody)))]
pub(super) async fn openapi(State(service): State<Shared>, caller: Option<axum::Extension<Caller>>) -> Json<Value> {
    let actions: Vec<(String, Arc<crate::action::PreparedAction>)> = match caller {
        None => Vec::new(),
        Some(axum::Extension(caller)) => service
            .runtime
            .action_names()
            .into_iter()
            .filter_map(|name| {
                let action = service.runtime.action(&name)?.clone();
                action.decisions.may_list(&caller).then_some((name, action))
            })
            .collect(),
    };
    Json(document(&actions))
}
