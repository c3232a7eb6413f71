//! The MCP server for agents (rmcp): every action function the caller may
//! invoke is a tool; calls run as that caller through the whole request
//! path (identity → policy → approval → run → audit).
//!
//! - Transports: stdio (`airlock mcp --config FILE --token-file FILE`, for
//!   desktop agents) and streamable HTTP at `/mcp` on `airlock serve`,
//!   where each request carries its own bearer token. rmcp checks the
//!   `Host` header against loopback names, and `Origin` (when a browser
//!   sends one) against `service.allowed-origins`: DNS-rebinding pages
//!   cannot reach it.
//! - Tools the caller may not invoke are not listed, and calling one is
//!   refused like an unknown tool (and the refusal is audited).
//! - A call that needs approval (of the invocation, or of a host call its
//!   running instance is held at) sends progress notifications while it
//!   waits; if it has not finished within `service.mcp-wait-ms` it returns
//!   a structured pending result with the invocation id and the approval
//!   request it waits for. The invocation goes on in the background (over
//!   stdio, for as long as the `airlock mcp` process runs), and the
//!   `airlock_status` tool returns the outcome later.

// MCP logging (`logging/setLevel`, `notifications/message`) is deprecated in
// rmcp by SEP-2577, but it is what clients implement today.
#![allow(deprecated)]

use super::Service;
use crate::error::Error;
use crate::gateway::Submitted;
use crate::identity::Caller;
use crate::store::{ApprovalKind, ApprovalRecord, InvocationRecord};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, JsonObject, ListToolsResult,
    LoggingLevel, PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The tool that reports on an earlier call.
pub const STATUS_TOOL: &str = "airlock_status";

/// How progress is reported while a call waits.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Live events (log lines, denials) queued for a call's client at most;
/// past it they are left out of the live view.
const LIVE_QUEUE: usize = 1024;
/// How long a call whose token fired waits for the client's cancellation
/// to be handled (the token fires first), before taking it for the end of
/// the session.
const CANCEL_NOTICE: Duration = Duration::from_secs(1);
/// How long a cancelled call waits for its run to stop and be recorded.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// Who the MCP caller is.
#[derive(Clone)]
enum Identity {
    /// stdio: one token for the whole session, looked up on every call.
    Token(Arc<Zeroizing<String>>),
    /// HTTP: the bearer token of each request.
    PerRequest,
}

/// The MCP handler over one service.
#[derive(Clone)]
pub struct AirlockMcp {
    service: Arc<Service>,
    identity: Identity,
    /// The least severe log level this session's client asked for with
    /// `logging/setLevel`; until it asks, no log messages are sent.
    log_level: Arc<std::sync::Mutex<Option<LoggingLevel>>>,
    /// This session's calls still running, and which of them its client
    /// cancelled (`notifications/cancelled`).
    calls: Arc<Calls>,
    /// Which function each tool name stands for, worked out once.
    index: Arc<ToolIndex>,
}

/// Every tool a configured function would be offered as, built once (the
/// runtime's actions never change), so that `tools/list` and `tools/call`
/// apply one rule, and a call finds its function without building every
/// tool's schema and description.
///
/// The rule: a function is offered to a caller when it is supported, its
/// parameters' schema is an object, its action is the caller's to list,
/// and no other function the caller may list has the same tool name
/// (possible only when long names are cut to 128 characters): a call by
/// that name could mean either, so neither is offered, and calls by it are
/// refused.
#[derive(Debug, Default)]
struct ToolIndex {
    /// (tool name, action, function), in the order the list shows them.
    entries: Vec<(String, String, String)>,
    /// Where each tool name's functions are in `entries`.
    by_name: std::collections::HashMap<String, Vec<usize>>,
}

impl ToolIndex {
    fn of(runtime: &crate::runtime::Runtime) -> ToolIndex {
        let mut functions = Vec::new();
        for name in runtime.action_names() {
            let Some(action) = runtime.action(&name) else { continue };
            for f in &action.manifest.functions {
                if f.unsupported().is_none() && f.params_schema().is_object() {
                    functions.push((name.clone(), f.name.clone()));
                }
            }
        }
        ToolIndex::from_functions(functions)
    }

    /// The index of `functions` (action, function), each supported, with
    /// an object schema, in list order.
    fn from_functions(functions: impl IntoIterator<Item = (String, String)>) -> ToolIndex {
        let mut index = ToolIndex::default();
        for (action, function) in functions {
            let name = tool_name(&action, &function);
            index.by_name.entry(name.clone()).or_default().push(index.entries.len());
            index.entries.push((name, action, function));
        }
        index
    }

    /// The entry tool `name` stands for when exactly one of the functions
    /// behind it is in an action `listed` says the caller may list.
    fn unique(&self, name: &str, listed: &impl Fn(&str) -> bool) -> Option<usize> {
        let mut found = self.by_name.get(name)?.iter().filter(|&&i| listed(&self.entries[i].1));
        let first = *found.next()?;
        found.next().is_none().then_some(first)
    }

    /// What is offered to a caller who may list the actions `listed`
    /// accepts: (tool name, action, function), in list order.
    fn offered(&self, listed: impl Fn(&str) -> bool) -> Vec<&(String, String, String)> {
        let mut out = Vec::new();
        for (i, entry) in self.entries.iter().enumerate() {
            let (tool, action, function) = entry;
            if !listed(action) {
                continue;
            }
            if self.unique(tool, &listed) == Some(i) {
                out.push(entry);
            } else {
                tracing::warn!(%action, %function, %tool, "MCP tool name shared by several functions; not offered");
            }
        }
        out
    }

    /// The (action, function) tool `name` stands for, if `caller` is
    /// offered it.
    fn find(&self, runtime: &crate::runtime::Runtime, caller: &Caller, name: &str) -> Option<(String, String)> {
        let i = self.unique(name, &|action| may_list(runtime, caller, action))?;
        let (_, action, function) = &self.entries[i];
        Some((action.clone(), function.clone()))
    }
}

/// Whether `caller` may list `action`'s functions.
fn may_list(runtime: &crate::runtime::Runtime, caller: &Caller, action: &str) -> bool {
    runtime.action(action).is_some_and(|a| a.decisions.may_list(caller))
}

/// The calls of one session still running, by request id: whether the
/// client cancelled each.
#[derive(Debug, Default)]
struct Calls {
    cancelled: std::sync::Mutex<std::collections::HashMap<rmcp::model::RequestId, bool>>,
    changed: tokio::sync::Notify,
}

impl Calls {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<rmcp::model::RequestId, bool>> {
        self.cancelled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Track call `id` until the returned guard drops.
    fn track(self: &Arc<Self>, id: rmcp::model::RequestId) -> CallGuard {
        self.lock().insert(id.clone(), false);
        CallGuard(self.clone(), id)
    }

    /// Whether the client cancelled call `id`, waiting up to `within` for
    /// its notification to be handled.
    async fn was_cancelled(&self, id: &rmcp::model::RequestId, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.lock().get(id).copied().unwrap_or(false) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }
}

/// Stops tracking a call when it returns.
struct CallGuard(Arc<Calls>, rmcp::model::RequestId);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

impl AirlockMcp {
    /// For stdio: every call is made with `token`.
    pub fn with_token(service: Arc<Service>, token: Zeroizing<String>) -> AirlockMcp {
        AirlockMcp {
            index: Arc::new(ToolIndex::of(&service.runtime)),
            service,
            identity: Identity::Token(Arc::new(token)),
            log_level: Arc::default(),
            calls: Arc::default(),
        }
    }

    /// For streamable HTTP: each request's `Authorization: Bearer`.
    pub fn per_request(service: Arc<Service>) -> AirlockMcp {
        AirlockMcp {
            index: Arc::new(ToolIndex::of(&service.runtime)),
            service,
            identity: Identity::PerRequest,
            log_level: Arc::default(),
            calls: Arc::default(),
        }
    }

    /// The handler for a new session: the same service, its own log level.
    fn new_session(&self) -> AirlockMcp {
        AirlockMcp {
            log_level: Arc::default(),
            calls: Arc::default(),
            ..self.clone()
        }
    }

    /// Send what the run shows as it happens as `notifications/message`,
    /// if at or above the session's level: a log line (logger: the action;
    /// data: message, fields, invocation) at its own level, a denied host
    /// call (logger `airlock`; data: the denial) as a warning.
    async fn forward_live(
        &self,
        ctx: &RequestContext<RoleServer>,
        action: &str,
        invocation: &str,
        event: crate::host_call::Live,
    ) {
        let Some(floor) = *self.log_level.lock().unwrap_or_else(|p| p.into_inner()) else {
            return;
        };
        let (level, logger, data) = match event {
            crate::host_call::Live::Log(line) => {
                let fields: serde_json::Map<String, Value> =
                    line.fields.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
                let data = json!({"message": line.message, "fields": fields, "invocation": invocation});
                (mcp_level(line.level), action.to_string(), data)
            }
            crate::host_call::Live::Denied(d) => {
                let data = json!({
                    "message": format!("host call {}#{} denied", d.interface, d.function),
                    "denied": {"interface": d.interface, "function": d.function, "rule": d.rule, "reason": d.reason},
                    "action": action,
                    "invocation": invocation,
                });
                (LoggingLevel::Warning, "airlock".to_string(), data)
            }
        };
        if severity(level) < severity(floor) {
            return;
        }
        let message = rmcp::model::LoggingMessageNotificationParam::new(level, data).with_logger(logger);
        // A client that went away misses it; the run goes on regardless.
        let _ = ctx.peer.notify_logging_message(message).await;
    }

    async fn caller(&self, ctx: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
        let bearer: String = match &self.identity {
            Identity::Token(t) => t.as_str().to_string(),
            Identity::PerRequest => ctx
                .extensions
                .get::<axum::http::request::Parts>()
                .and_then(|p| p.headers.get(axum::http::header::AUTHORIZATION))
                .and_then(|h| h.to_str().ok())
                .and_then(super::auth::bearer_token)
                .map(str::to_string)
                .ok_or_else(|| ErrorData::invalid_request("send Authorization: Bearer TOKEN", None))?,
        };
        let bearer = Zeroizing::new(bearer);
        self.service
            .authenticate(&bearer)
            .await
            .map_err(|e| ErrorData::invalid_request(e.to_string(), None))
    }

    /// The tools `caller` is offered (see [`ToolIndex`] for which), each
    /// described for an agent.
    fn tools_for(&self, caller: &Caller) -> Vec<Tool> {
        let runtime = &self.service.runtime;
        let mut out = Vec::new();
        for (tool_name, name, function) in self.index.offered(|action| may_list(runtime, caller, action)) {
            let Some(action) = runtime.action(name) else { continue };
            let Some(f) = action.manifest.functions.iter().find(|f| &f.name == function) else {
                continue;
            };
            let Ok(schema) = serde_json::from_value::<JsonObject>(f.params_schema()) else {
                continue;
            };
            let policy = &action.policy;
            // The operator's description of the action first (the
            // component's author cannot override it), then the
            // function's own docs from its WIT.
            let mut description = policy
                .description
                .clone()
                .or_else(|| action.manifest.description())
                .unwrap_or_else(|| format!("Action {name}"));
            if let Some(doc) = f.doc() {
                description.push_str("\n\n");
                description.push_str(&doc);
            }
            description.push_str(&format!(" (action `{name}`, function `{}`", f.name));
            if policy.approval.invocation {
                description.push_str("; every call waits for a reviewer's approval");
            } else if action.decisions.may_hold(&f.name) {
                description.push_str("; a call may wait for a reviewer's approval");
            }
            description.push(')');
            let mut annotations = ToolAnnotations::new();
            if let Some(ro) = policy.mcp.read_only {
                annotations = annotations.read_only(ro);
            }
            if let Some(d) = policy.mcp.destructive {
                annotations = annotations.destructive(d);
            }
            let mut tool = Tool::new(tool_name.clone(), description, Arc::new(schema)).with_annotations(annotations);
            if let Ok(output) = serde_json::from_value::<JsonObject>(output_schema(f)) {
                tool = tool.with_raw_output_schema(Arc::new(output));
            }
            out.push(tool);
        }
        out
    }

    fn status_tool() -> Tool {
        let schema: JsonObject = serde_json::from_value(json!({
            "type": "object",
            "properties": {"invocation": {"type": "string", "description": "the id a pending call returned"}},
            "required": ["invocation"],
            "additionalProperties": false
        }))
        .unwrap_or_default();
        Tool::new(
            STATUS_TOOL,
            "The status and, once it ran, the result of an earlier call (for calls that were pending approval)",
            Arc::new(schema),
        )
        .with_annotations(ToolAnnotations::new().read_only(true).destructive(false))
    }

    async fn status(&self, caller: &Caller, args: &Value) -> CallToolResult {
        let Some(id) = args.get("invocation").and_then(Value::as_str) else {
            return CallToolResult::error(vec![ContentBlock::text("`invocation` (a string) is required")]);
        };
        let failed = |e: Error| CallToolResult::error(vec![ContentBlock::text(e.to_string())]);
        let store = match self.service.runtime.store() {
            Ok(s) => s,
            Err(e) => return failed(e),
        };
        let record = match store.invocation(id) {
            Ok(Some(r)) if r.caller.name == caller.name => r,
            Ok(_) => return CallToolResult::error(vec![ContentBlock::text(format!("no invocation {id}"))]),
            Err(e) => return failed(e.into()),
        };
        if record.state.is_final() {
            return record_result(&record);
        }
        match super::auth::awaited_approval(store.as_ref(), &record) {
            Ok(approval) => CallToolResult::structured(pending_body(id, Some(&record), approval.as_ref())),
            Err(e) => failed(e.into()),
        }
    }

    /// Invocation `id` as stored (`None` just after it started) and the
    /// approval request it waits for, if any.
    fn standing(&self, id: &str) -> Result<(Option<InvocationRecord>, Option<ApprovalRecord>), Error> {
        let store = self.service.runtime.store()?;
        let Some(record) = store.invocation(id)? else {
            return Ok((None, None));
        };
        let approval = if record.state.is_final() {
            None
        } else {
            super::auth::awaited_approval(store.as_ref(), &record)?
        };
        Ok((Some(record), approval))
    }
}

/// `action__function`, with characters MCP clients reject replaced.
pub fn tool_name(action: &str, function: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut name = format!("{}__{}", clean(action), clean(function));
    name.truncate(128);
    name
}

/// A function tool's `outputSchema`: the `structuredContent` every call
/// returns. Once the call succeeded, `result` is the function's result
/// (its error case, for a `result<T, E>` function, is `error`).
fn output_schema(f: &crate::manifest::FunctionSig) -> Value {
    let (result, _) = f.result_schemas();
    json!({
        "type": "object",
        "properties": {
            "invocation": {"type": "string", "description": "the invocation's id; pass it to airlock_status"},
            "status": {
                "type": "string",
                "description": "succeeded or failed once it ran; awaiting-approval, pending-approval or running while it waits"
            },
            "result": {"description": "the function's result, once the call succeeded"},
            "error": {"type": ["string", "null"], "description": "why it failed"},
            "approval": {"description": "the approval request it waits for or went through"},
            "next": {"type": "string"},
        },
        "required": ["invocation", "status"],
        "if": {"properties": {"status": {"const": "succeeded"}}, "required": ["status"]},
        "then": {"properties": {"result": result}, "required": ["result"]},
    })
}

fn record_result(r: &InvocationRecord) -> CallToolResult {
    let outcome = r.outcome.as_ref();
    let body = json!({
        "invocation": r.id,
        "status": r.state,
        "approval": r.approval,
        "result": outcome.and_then(|o| o.result.clone()),
        "error": outcome.and_then(|o| o.error.clone()),
    });
    if outcome.is_some_and(|o| o.exit_code != 0) {
        CallToolResult::structured_error(body)
    } else {
        CallToolResult::structured(body)
    }
}

fn ran_result(report: &crate::invocation::Report) -> CallToolResult {
    let outcome = crate::gateway::outcome_of(report);
    let body = json!({
        "invocation": report.invocation,
        "status": if report.outcome.is_ok() { "succeeded" } else { "failed" },
        "result": outcome.result,
        "error": outcome.error,
    });
    if report.outcome.is_ok() {
        CallToolResult::structured(body)
    } else {
        CallToolResult::structured_error(body)
    }
}

/// The result of a call that did not finish within the wait: the id to ask
/// `airlock_status` about, and what it waits for.
fn pending_body(invocation: &str, record: Option<&InvocationRecord>, approval: Option<&ApprovalRecord>) -> Value {
    let status = match (approval, record) {
        (Some(_), _) => "awaiting-approval",
        (None, Some(r)) => r.state.as_str(),
        (None, None) => "running",
    };
    let mut body = json!({
        "invocation": invocation,
        "status": status,
        "next": format!("call {STATUS_TOOL} with this invocation id for the outcome"),
    });
    if let Some(a) = approval {
        body["approval"] = json!(a.id);
        body["approval-kind"] = json!(a.kind);
        body["rule"] = json!(a.rule);
        body["binding"] = json!(a.binding);
        body["expires-at"] = json!(crate::time::rfc3339_micros(a.expires_at));
    }
    body
}

fn waiting_message(invocation: &str, approval: Option<&ApprovalRecord>) -> String {
    let Some(a) = approval else {
        return format!("invocation {invocation} is running");
    };
    let what = match a.kind {
        ApprovalKind::Invocation => "the invocation",
        ApprovalKind::HostCall => "a host call",
        ApprovalKind::Guest => "the action's own request",
    };
    format!(
        "waiting for approval {} of {what} (`airlock approvals show {}`)",
        a.id, a.id
    )
}

async fn progress(ctx: &RequestContext<RoleServer>, step: f64, message: String) {
    if let Some(token) = ctx.meta.get_progress_token() {
        let _ = ctx
            .peer
            .notify_progress(ProgressNotificationParam::new(token, step).with_message(message))
            .await;
    }
}

/// MCP's levels, least severe first (RFC 5424's order).
fn severity(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

/// An action's log level as MCP names it.
fn mcp_level(level: crate::capabilities::log::Level) -> LoggingLevel {
    use crate::capabilities::log::Level;
    match level {
        Level::Trace | Level::Debug => LoggingLevel::Debug,
        Level::Info => LoggingLevel::Info,
        Level::Warn => LoggingLevel::Warning,
        Level::Error => LoggingLevel::Error,
    }
}

impl ServerHandler for AirlockMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_logging().build())
            .with_server_info(Implementation::new("airlock", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Each tool runs one action function under airlock's governance. Calls may wait for a \
                 reviewer's approval; a pending call returns an invocation id: ask airlock_status for it later.",
            )
    }

    async fn on_cancelled(
        &self,
        notification: rmcp::model::CancelledNotificationParam,
        _ctx: rmcp::service::NotificationContext<RoleServer>,
    ) {
        // Only a call of this session still running is marked: ids the
        // client makes up are not kept.
        if let Some(id) = notification.request_id {
            if let Some(flag) = self.calls.lock().get_mut(&id) {
                *flag = true;
            }
            self.calls.changed.notify_waiters();
        }
    }

    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        *self.log_level.lock().unwrap_or_else(|p| p.into_inner()) = Some(request.level);
        Ok(())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let caller = self.caller(&ctx).await?;
        let mut tools = self.tools_for(&caller);
        tools.push(AirlockMcp::status_tool());
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        // Tracked before anything is awaited, so a cancellation that comes
        // at once is not missed.
        let _tracked = self.calls.track(ctx.id.clone());
        let caller = self.caller(&ctx).await?;
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        if request.name == STATUS_TOOL {
            return Ok(self.status(&caller, &args).await.into());
        }
        let Some((action, function)) = self.index.find(&self.service.runtime, &caller, &request.name) else {
            // Not listed for this caller: refused like an unknown tool. If
            // it names a real action, the refusal is on record.
            let runtime = &self.service.runtime;
            for name in runtime.action_names() {
                if let Some(a) = runtime.action(&name) {
                    for f in &a.manifest.functions {
                        if tool_name(&name, &f.name) == request.name {
                            let _ = runtime
                                .admit(&caller, &name, &f.name, &args, &crate::request::Intent::default())
                                .await;
                        }
                    }
                }
            }
            return Err(ErrorData::invalid_params(
                format!("no tool {} for {}", request.name, caller.name),
                None,
            ));
        };
        let (action, function) = (&action, &function);
        let runtime = &self.service.runtime;
        // The agent's stated reason and trace ride in the request's
        // `_meta`, leaving the tool's arguments as they are; over HTTP, a
        // trace in the request's headers is taken when `_meta` has none.
        let (traceparent, tracestate) = match ctx.meta.get_traceparent() {
            Some(tp) => (Some(tp.to_string()), ctx.meta.get_tracestate().map(str::to_string)),
            None => match ctx.extensions.get::<axum::http::request::Parts>() {
                Some(parts) => {
                    let (tp, ts) = super::trace_headers(&parts.headers);
                    (tp.map(str::to_string), ts)
                }
                None => (None, None),
            },
        };
        let intent =
            match crate::request::Intent::new(ctx.meta.get("reason").and_then(Value::as_str), traceparent.as_deref()) {
                Ok((intent, _)) => intent.with_tracestate(tracestate.as_deref()),
                Err(e) => return Ok(CallToolResult::error(vec![ContentBlock::text(e.to_string())]).into()),
            };
        let mut admitted = match runtime.admit(&caller, action, function, &args, &intent).await {
            Ok(a) => a,
            Err(e) => return Ok(CallToolResult::error(vec![ContentBlock::text(e.to_string())]).into()),
        };
        // `notifications/cancelled` for this call stops the run; it is
        // closed in the audit log as cancelled.
        let cancel = crate::invocation::Cancel::default();
        admitted.cancel = Some(cancel.clone());
        // Its log lines and denied calls, as they happen.
        let (live, mut watched) = tokio::sync::mpsc::channel(LIVE_QUEUE);
        admitted.live = Some(live);
        let invocation = crate::request::new_invocation_id();
        // Run here while this call only waits for it; a task of its own as
        // soon as the call waits on anything else (a notification to send,
        // a progress report due, a cancellation to confirm) or returns first
        // (a pending result), so the invocation never waits on the client,
        // and is stored and goes on (running, or held by a gate).
        let task = {
            let service = self.service.clone();
            let (invocation, caller, function, args) =
                (invocation.clone(), caller.clone(), function.clone(), args.clone());
            super::detached::Run::new(async move {
                service
                    .runtime
                    .run_stored(&invocation, &caller, &admitted, &function, &args)
                    .await
            })
        };
        let deadline = Instant::now() + self.service.settings.mcp_wait;
        let mut running = Some(task);
        let mut step = 0.0;
        // When the next progress report is due: fixed, so a stream of live
        // events does not put it off.
        let mut tick = tokio::time::Instant::from_std((Instant::now() + PROGRESS_EVERY).min(deadline));
        loop {
            let joined = match running.as_mut() {
                // Running, perhaps held inside a host call: wait for it
                // until the next report is due, passing on what it shows.
                // Cancellation first, the run's end next, then its events.
                Some(task) => tokio::select! {
                    biased;
                    () = ctx.ct.cancelled(), if !cancel.is_cancelled() => {
                        // Waiting on anything but the run: it goes on by itself.
                        task.detach_now();
                        // The token also fires when the session ends; only a
                        // `notifications/cancelled` for this call stops it.
                        if !self.calls.was_cancelled(&ctx.id, CANCEL_NOTICE).await {
                            return Ok(CallToolResult::error(vec![ContentBlock::text(
                                "the session ended before the call did; its invocation goes on".to_string(),
                            )])
                            .into());
                        }
                        cancel.cancel(&format!("the MCP client cancelled request {}", ctx.id));
                        // The run stops at once; wait for its closing record.
                        tokio::time::timeout(CANCEL_GRACE, &mut *task).await.ok()
                    }
                    joined = tokio::time::timeout_at(tick, &mut *task) => match joined {
                        Ok(joined) => Some(joined),
                        // A progress report is due (sent to the client, which
                        // may be slow to read): the run goes on by itself.
                        Err(_) => {
                            task.detach_now();
                            None
                        }
                    },
                    Some(event) = watched.recv() => {
                        // So is a live event the client will be sent.
                        if self.log_level.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                            task.detach_now();
                        }
                        self.forward_live(&ctx, action, &invocation, event).await;
                        continue;
                    }
                },
                // Nothing runs here until a decision; whoever runs it
                // afterwards records the outcome in the store.
                None => {
                    tokio::time::sleep_until(tick).await;
                    None
                }
            };
            if let Some(joined) = joined {
                running = None;
                // What the run showed last, before its result.
                while let Ok(event) = watched.try_recv() {
                    self.forward_live(&ctx, action, &invocation, event).await;
                }
                match joined {
                    Ok(Ok(Submitted::Ran(report))) => return Ok(ran_result(&report).into()),
                    Ok(Ok(Submitted::Done(record))) if record.state.is_final() => {
                        return Ok(record_result(&record).into());
                    }
                    // Held by an invocation-level gate (reported at once,
                    // below), or approved and claimed by another runtime.
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        return Ok(CallToolResult::error(vec![ContentBlock::text(e.to_string())]).into());
                    }
                    Err(e) => {
                        return Err(ErrorData::internal_error(
                            format!("the invocation task failed: {e}"),
                            None,
                        ));
                    }
                }
            }
            let (record, approval) = self
                .standing(&invocation)
                .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
            if let Some(r) = record.as_ref().filter(|r| r.state.is_final()) {
                return Ok(record_result(r).into());
            }
            if Instant::now() >= deadline || ctx.ct.is_cancelled() {
                let body = pending_body(&invocation, record.as_ref(), approval.as_ref());
                return Ok(CallToolResult::structured(body).into());
            }
            step += 1.0;
            progress(&ctx, step, waiting_message(&invocation, approval.as_ref())).await;
            tick = tokio::time::Instant::from_std((Instant::now() + PROGRESS_EVERY).min(deadline));
        }
    }
}

/// Serve MCP over stdio until the client disconnects.
pub async fn serve_stdio(service: Arc<Service>, token: Zeroizing<String>) -> Result<(), Error> {
    use rmcp::ServiceExt as _;
    // Verify the token before speaking the protocol, with a clear error.
    service.authenticate(&token).await?;
    let (reader, writer, _restore, mode) = super::stdio::open();
    tracing::debug!(?mode, "MCP over stdio");
    let running = AirlockMcp::with_token(service, token)
        .serve((reader, writer))
        .await
        .map_err(|e| Error::Internal(format!("MCP over stdio failed to start: {e}")))?;
    running
        .waiting()
        .await
        .map_err(|e| Error::Internal(format!("MCP over stdio failed: {e}")))?;
    Ok(())
}

/// A JSON-RPC 2.0 error response (HTTP `status`, JSON body): what `/mcp`
/// answers to a POST that is not a message it can read.
fn jsonrpc_error(status: axum::http::StatusCode, id: Value, code: i32, message: String) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

/// Why a POSTed body is not an MCP message, as the JSON-RPC error to
/// answer: a parse error (-32700) for anything that is not JSON (nesting
/// past serde_json's depth limit of 128 included, which is refused, not
/// recursed into), an invalid request (-32600) for JSON that is not a
/// JSON-RPC message a client sends.
fn unreadable(body: &[u8]) -> Option<axum::response::Response> {
    use serde::Deserialize as _;
    let bad = axum::http::StatusCode::BAD_REQUEST;
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Some(jsonrpc_error(
                bad,
                Value::Null,
                -32700,
                format!("parse error: the request body is not JSON ({e})"),
            ));
        }
    };
    if let Err(e) = rmcp::model::ClientJsonRpcMessage::deserialize(&value) {
        let id = value
            .get("id")
            .filter(|id| id.is_string() || id.is_number())
            .cloned()
            .unwrap_or(Value::Null);
        return Some(jsonrpc_error(
            bad,
            id,
            -32600,
            format!("invalid request: the body is JSON but not a JSON-RPC 2.0 request, notification or response ({e})"),
        ));
    }
    None
}

/// In front of the MCP transport, after the gate authenticated the request
/// and read its body:
///
/// - a POST whose body is not an MCP message is answered with a JSON-RPC
///   error and a JSON body (see [`unreadable`]); one that is not
///   `Content-Type: application/json` with 415 and a JSON-RPC error too
///   (rmcp answers all of these 415 in plain text);
/// - a session DELETE rmcp answers 202 is answered 204: clients read 202
///   as a failed termination (the spec's examples, and the Python SDK,
///   expect 200/204), and the session is closed by then;
/// - a session belongs to the identity that opened it: a request naming
///   another identity's session (or one this process does not know) is
///   answered 404, as for a session that never existed, so a leaked
///   `Mcp-Session-Id` gives no one else its stream or its log lines.
pub async fn guard(
    axum::extract::State(service): axum::extract::State<Arc<Service>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{Method, StatusCode, header};
    let method = request.method().clone();
    // The gate authenticated every request that gets here.
    let Some(owner) = request.extensions().get::<Caller>().map(|c| c.name.clone()) else {
        return jsonrpc_error(
            StatusCode::UNAUTHORIZED,
            Value::Null,
            -32600,
            "send Authorization: Bearer TOKEN".into(),
        );
    };
    let session = request
        .headers()
        .get(SESSION_HEADER)
        .map(|v| v.to_str().map(str::to_string).unwrap_or_default());
    if let Some(id) = &session
        && !service.mcp_sessions.owned_by(id, &owner)
    {
        return jsonrpc_error(
            StatusCode::NOT_FOUND,
            Value::Null,
            -32600,
            "no such session: initialize a new one (a session is only for the identity that opened it)".into(),
        );
    }
    let request = if method == Method::POST {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return jsonrpc_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Value::Null,
                -32600,
                "invalid request: MCP messages are POSTed as Content-Type: application/json".into(),
            );
        }
        let (parts, body) = request.into_parts();
        // Read in full by the gate already: this takes the buffer back.
        let bytes = match axum::body::to_bytes(body, usize::MAX).await {
            Ok(bytes) => bytes,
            Err(e) => {
                return jsonrpc_error(
                    StatusCode::BAD_REQUEST,
                    Value::Null,
                    -32700,
                    format!("parse error: the request body could not be read ({e})"),
                );
            }
        };
        if let Some(response) = unreadable(&bytes) {
            return response;
        }
        axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))
    } else {
        request
    };
    let mut response = next.run(request).await;
    match &session {
        None => {
            if let Some(id) = response.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()) {
                service.mcp_sessions.open(id, &owner);
            }
        }
        Some(id) if method == Method::DELETE && response.status().is_success() => service.mcp_sessions.close(id),
        Some(_) => {}
    }
    if method == Method::DELETE && response.status() == StatusCode::ACCEPTED {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    response
}

/// Where clients reach this service: `service.public-url` when set (a TLS
/// proxy in front), else `http://HOST` of the request when that is a host
/// `/mcp` answers to, else the listen address.
fn public_origin(service: &Service, headers: &axum::http::HeaderMap) -> String {
    if let Some(url) = &service.settings.public_url {
        return url.clone();
    }
    // Only a host `/mcp` answers to (as rmcp checks it): loopback, the
    // listen address, `service.allowed-hosts`, rebuilt from its parts.
    let allowed = |name: &str, authority: &str| {
        matches!(name, "localhost" | "127.0.0.1" | "::1")
            || name == service.settings.listen.ip().to_string()
            || service
                .settings
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name) || h.eq_ignore_ascii_case(authority))
    };
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| axum::http::uri::Authority::try_from(h).ok())
        .filter(|a| !a.as_str().contains('@'))
        .and_then(|a| {
            let name = a
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase();
            if !allowed(&name, a.as_str()) {
                return None;
            }
            let name = if name.contains(':') { format!("[{name}]") } else { name };
            Some(match a.port_u16() {
                Some(port) => format!("{name}:{port}"),
                None => name,
            })
        });
    match host {
        Some(host) => format!("http://{host}"),
        None => format!("http://{}", service.settings.listen),
    }
}

/// Add the protected resource metadata's address to a 401 from `/mcp`
/// (`WWW-Authenticate: Bearer resource_metadata="..."`, as the MCP
/// authorization spec and RFC 9728 describe), so a remote MCP client
/// learns that `/mcp` takes a bearer token and where to read about it.
pub fn advertise_metadata(service: &Service, headers: &axum::http::HeaderMap, response: &mut axum::response::Response) {
    let value = format!(
        "Bearer realm=\"airlock\", resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
        public_origin(service, headers)
    );
    if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
        response
            .headers_mut()
            .insert(axum::http::header::WWW_AUTHENTICATE, value);
    }
}

/// `GET /.well-known/oauth-protected-resource[/mcp]`: the RFC 9728
/// metadata of `/mcp`. Tokens are bearer tokens in the `Authorization`
/// header, made by an operator with `airlock token create`: no OAuth
/// authorization server issues them, so none is listed.
#[utoipa::path(get, path = "/.well-known/oauth-protected-resource", operation_id = "protectedResourceMetadata",
    summary = "RFC 9728 metadata of the MCP endpoint", security(()),
    responses((status = 200, description = "the metadata", body = super::model::ResourceMetadata)))]
pub async fn resource_metadata(
    axum::extract::State(service): axum::extract::State<Arc<Service>>,
    headers: axum::http::HeaderMap,
) -> impl axum::response::IntoResponse {
    let origin = public_origin(&service, &headers);
    (
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        axum::Json(super::model::ResourceMetadata {
            resource: format!("{origin}/mcp"),
            bearer_methods_supported: vec!["header".to_string()],
            resource_name: "airlock MCP".to_string(),
        }),
    )
}

/// The same, at the path a 401 from `/mcp` names.
#[utoipa::path(get, path = "/.well-known/oauth-protected-resource/mcp", operation_id = "mcpResourceMetadata",
    summary = "RFC 9728 metadata of the MCP endpoint (the path a 401 from /mcp names)", security(()),
    responses((status = 200, description = "the metadata", body = super::model::ResourceMetadata)))]
pub async fn mcp_resource_metadata(
    state: axum::extract::State<Arc<Service>>,
    headers: axum::http::HeaderMap,
) -> impl axum::response::IntoResponse {
    resource_metadata(state, headers).await
}

/// The header naming a streamable-HTTP session.
const SESSION_HEADER: &str = "mcp-session-id";

/// Sessions remembered at most; past it the oldest are forgotten (their
/// clients are answered 404 and initialize again: it fails closed).
const MAX_SESSIONS: usize = 100_000;
/// Sessions remembered per identity: one identity opening sessions in a
/// loop forgets its own oldest, never another's.
const MAX_SESSIONS_PER_IDENTITY: usize = 1_000;

/// Each session's owner, the sessions in the order they were opened, and
/// how many each identity has.
type Owners = (
    std::collections::HashMap<String, String>,
    std::collections::VecDeque<String>,
    std::collections::HashMap<String, usize>,
);

/// Which identity opened each streamable-HTTP session.
#[derive(Debug, Default)]
pub struct SessionOwners(std::sync::Mutex<Owners>);

impl SessionOwners {
    fn lock(&self) -> std::sync::MutexGuard<'_, Owners> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open(&self, id: &str, owner: &str) {
        let mut guard = self.lock();
        let (owners, order, counts) = &mut *guard;
        if owners.contains_key(id) {
            return;
        }
        if counts.get(owner).is_some_and(|n| *n >= MAX_SESSIONS_PER_IDENTITY)
            && let Some(at) = order.iter().position(|s| owners.get(s).is_some_and(|o| o == owner))
            && let Some(oldest) = order.remove(at)
        {
            owners.remove(&oldest);
            forget(counts, owner);
        }
        owners.insert(id.to_string(), owner.to_string());
        order.push_back(id.to_string());
        *counts.entry(owner.to_string()).or_default() += 1;
        while owners.len() > MAX_SESSIONS {
            let Some(oldest) = order.pop_front() else { break };
            if let Some(o) = owners.remove(&oldest) {
                forget(counts, &o);
            }
        }
    }

    /// Whether session `id` was opened by `owner`.
    fn owned_by(&self, id: &str, owner: &str) -> bool {
        self.lock().0.get(id).is_some_and(|o| o == owner)
    }

    fn close(&self, id: &str) {
        let mut guard = self.lock();
        let (owners, order, counts) = &mut *guard;
        if let Some(owner) = owners.remove(id) {
            order.retain(|o| o != id);
            forget(counts, &owner);
        }
    }
}

/// One session fewer for `owner`.
fn forget(counts: &mut std::collections::HashMap<String, usize>, owner: &str) {
    if let Some(n) = counts.get_mut(owner) {
        *n -= 1;
        if *n == 0 {
            counts.remove(owner);
        }
    }
}

/// The streamable HTTP MCP endpoint, to mount at `/mcp`.
pub fn http_service(
    service: Arc<Service>,
) -> rmcp::transport::streamable_http_server::StreamableHttpService<
    AirlockMcp,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
    let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    hosts.push(service.settings.listen.ip().to_string());
    hosts.extend(service.settings.allowed_hosts.iter().cloned());
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_allowed_origins(service.settings.allowed_origins.clone());
    let handler = AirlockMcp::per_request(service);
    StreamableHttpService::new(move || Ok(handler.new_session()), Arc::new(Default::default()), config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_identity_opening_sessions_forgets_only_its_own() {
        let owners = SessionOwners::default();
        owners.open("b-1", "b");
        for i in 0..=MAX_SESSIONS_PER_IDENTITY {
            owners.open(&format!("a-{i}"), "a");
        }
        assert!(owners.owned_by("b-1", "b"));
        assert!(!owners.owned_by("a-0", "a"), "the oldest of a's is forgotten");
        assert!(owners.owned_by(&format!("a-{MAX_SESSIONS_PER_IDENTITY}"), "a"));
        assert!(!owners.owned_by("b-1", "a"));
        owners.close("b-1");
        assert!(!owners.owned_by("b-1", "b"));
    }

    #[tokio::test]
    async fn unreadable_bodies_are_json_rpc_parse_or_invalid_request_errors() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep_object = format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200));
        for (body, code, id) in [
            (deep.as_str(), -32700, Value::Null),
            (deep_object.as_str(), -32700, Value::Null),
            ("{", -32700, Value::Null),
            ("", -32700, Value::Null),
            ("\u{0}", -32700, Value::Null),
            ("{}", -32600, Value::Null),
            ("[]", -32600, Value::Null),
            (r#"{"jsonrpc":"2.0","id":7,"method":5}"#, -32600, json!(7)),
        ] {
            let response = unreadable(body.as_bytes()).expect("refused");
            assert_eq!(response.status(), axum::http::StatusCode::BAD_REQUEST, "{body:.40}");
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
            let answer: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(answer["jsonrpc"], "2.0", "{answer}");
            assert_eq!(answer["id"], id, "{answer}");
            assert_eq!(answer["error"]["code"], code, "{body:.40}: {answer}");
            assert!(answer["error"]["message"].is_string(), "{answer}");
        }
        let ok = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        assert!(unreadable(ok.as_bytes()).is_none());
    }

    #[test]
    fn a_tool_name_two_listed_functions_share_is_offered_for_neither() {
        let long = "f".repeat(200);
        let (a, b) = (format!("{long}-a"), format!("{long}-b"));
        let shared = tool_name("deploy", &a);
        assert_eq!(
            shared,
            tool_name("deploy", &b),
            "cut to 128 characters, the names collide"
        );
        let index = ToolIndex::from_functions([
            ("deploy".to_string(), a.clone()),
            ("other".to_string(), "run".to_string()),
            ("deploy".to_string(), b),
        ]);
        let names = |listed: &dyn Fn(&str) -> bool| -> Vec<String> {
            index.offered(listed).into_iter().map(|(t, _, _)| t.clone()).collect()
        };
        assert_eq!(names(&|_| true), ["other__run"]);
        assert_eq!(
            index.unique(&shared, &|_| true),
            None,
            "a call by the shared name is refused"
        );
        assert_eq!(index.unique("other__run", &|_| true), Some(1));
        assert_eq!(index.unique("nothing__here", &|_| true), None);
        // Two actions whose names clean to one tool name, one of them
        // listed to this caller: its function is the only one it means.
        let index = ToolIndex::from_functions([
            ("ops.deploy".to_string(), "run".to_string()),
            ("ops_deploy".to_string(), "run".to_string()),
        ]);
        assert_eq!(index.entries[0].0, index.entries[1].0);
        let only_second = |action: &str| action == "ops_deploy";
        assert_eq!(index.unique("ops_deploy__run", &only_second), Some(1));
        let listed: Vec<_> = index.offered(only_second).into_iter().cloned().collect();
        assert_eq!(listed, [index.entries[1].clone()]);
        assert!(index.offered(|_| true).is_empty(), "both listed: neither offered");
        assert!(index.offered(|_| false).is_empty(), "nothing listed, nothing offered");
    }
}
