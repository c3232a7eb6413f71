//! The console's pages, as compile-time templates (`maud`): every value
//! spliced into a page is escaped by the template itself, so no view can
//! forget to; nothing here writes raw HTML from a string.
//!
//! Links are built only from fixed paths and ids percent-encoded as one
//! path segment, so a value never becomes a scheme (`javascript:`) or a
//! path of its own. The pages load no scripts and no inline styles: the
//! Content-Security-Policy (see `super::secure_headers`) allows only the
//! console's own stylesheet.

use crate::action::PreparedAction;
use crate::identity::Caller;
use crate::request::Intent;
use crate::store::{ApprovalRecord, InvocationRecord};
use maud::{DOCTYPE, Markup, html};

/// `/console/SECTION/ID`, with `id` percent-encoded as one path segment.
fn link(section: &str, id: &str) -> String {
    let id = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
    format!("/console/{section}/{id}")
}

/// A whole page: the header (with navigation and sign-out for a signed-in
/// caller), the title and `body`.
pub fn page(title: &str, who: Option<(&Caller, &str)>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · airlock" }
                link rel="stylesheet" href="/console/style.css";
            }
            body {
                header {
                    strong { "airlock" }
                    @if let Some((caller, csrf)) = who {
                        nav {
                            a href="/console" { "Pending approvals" } " "
                            a href="/console/invocations" { "Invocations" } " "
                            a href="/console/audit" { "Audit" } " "
                            a href="/console/actions" { "Actions" }
                        }
                        form.who method="post" action="/console/logout" {
                            span id="who" { (caller.name) " (" (caller.kind) ")" } " "
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

pub fn error(message: &str) -> Markup {
    html! { p.error id="error" { (message) } }
}

pub fn sign_in(nonce: &str) -> Markup {
    html! {
        form method="post" action="/console/login" {
            p {
                label {
                    "Token "
                    input type="password" name="token" id="token" autocomplete="off" required;
                }
            }
            input type="hidden" name="csrf" value=(nonce);
            button type="submit" id="sign-in" { "Sign in" }
        }
    }
}

/// The agent's stated reason and trace, as table rows.
fn intent_rows(intent: Option<&Intent>) -> Markup {
    html! {
        @if let Some(intent) = intent {
            @if let Some(reason) = &intent.reason {
                tr { th { "Stated reason" } td id="stated-reason" { (reason) } }
            }
            @if let Some(tp) = &intent.traceparent {
                tr { th { "Trace" } td id="traceparent" { (tp) } }
            }
        }
    }
}

fn json_block(v: &serde_json::Value) -> Markup {
    html! { pre { (serde_json::to_string_pretty(v).unwrap_or_default()) } }
}

pub fn pending(list: &[ApprovalRecord]) -> Markup {
    if list.is_empty() {
        return html! { p id="none" { "Nothing waits for you." } };
    }
    html! {
        table id="pending" {
            tr { th { "Request" } th { "Kind" } th { "Action" } th { "Caller" } th { "Votes" } th { "Expires (UTC)" } }
            @for a in list {
                tr {
                    td { a.approval href=(link("approvals", &a.id)) { (a.id) } }
                    td { (a.kind) }
                    td { (a.action) "#" (a.function) }
                    td { (a.caller) }
                    td { (a.approvals()) "/" (a.quorum) }
                    td { (crate::time::display_secs(a.expires_at / 1_000_000)) }
                }
            }
        }
    }
}

/// One approval request, exactly as it would run, with the decision forms
/// when `csrf` is given (the caller may decide it).
pub fn approval(a: &ApprovalRecord, csrf: Option<&str>) -> Markup {
    html! {
        table id="request" {
            tr { th { "State" } td id="state" { (a.state) } }
            tr { th { "Kind" } td { (a.kind) } }
            tr { th { "Caller" } td id="caller" { (a.caller) " (" (a.caller_kind) ")" } }
            tr { th { "Action" } td id="action" { (a.action) " (runs as " (a.service_identity) ")" } }
            tr { th { "Function" } td id="function" { (a.function) } }
            tr { th { "Arguments" } td id="args" { (json_block(&a.args)) } }
            tr { th { "Component" } td id="component" { (a.component_digest) } }
            tr {
                th { "Capabilities" }
                td id="capabilities" {
                    @if a.capabilities.is_empty() {
                        "none (the inert baseline only)"
                    }
                    @for (i, c) in a.capabilities.iter().enumerate() {
                        @if i > 0 { br; }
                        (c)
                    }
                }
            }
            tr { th { "Rule" } td id="rule" { (a.rule) } }
            (intent_rows(a.intent.as_ref()))
            // The policies' own words: why they ask, which policies, whose
            // approval, and what the call would touch.
            @if let Some(why) = &a.why {
                tr { th { "Why" } td id="why" { (why) } }
            }
            @if !a.policies.is_empty() {
                tr { th { "Policies" } td id="policies" { (a.policies.join(", ")) } }
            }
            @if let Some(group) = &a.group {
                tr { th { "Group" } td id="group" { (group) } }
            }
            @if !a.subject.is_null() {
                tr { th { "What" } td id="subject" { (json_block(&a.subject)) } }
            }
            tr { th { "Binding" } td id="binding" { (a.binding) } }
            tr { th { "Quorum" } td { (a.approvals()) " of " (a.quorum) " (" (a.approvers.join(", ")) ")" } }
            tr { th { "Expires (UTC)" } td { (crate::time::rfc3339_micros(a.expires_at)) } }
            tr { th { "Invocation" } td { a id="invocation" href=(link("invocations", &a.invocation)) { (a.invocation) } } }
            @if let Some(reason) = &a.reason {
                tr { th { "Reason" } td id="reason" { (reason) } }
            }
        }
        h2 { "Decisions" }
        ul id="decisions" {
            @for d in &a.decisions {
                li {
                    (d.verdict) " by " (d.kind) " " (d.identity)
                    @if let Some(r) = &d.reason { ": " (r) }
                }
            }
        }
        @if let Some(csrf) = csrf {
            form.inline method="post" action={ (link("approvals", &a.id)) "/decide" } id="approve-form" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="verdict" value="approve";
                input type="hidden" name="binding" value=(a.binding);
                label { "Reason " input name="reason"; }
                " "
                button type="submit" id="approve" { "Approve" }
            }
            form.inline method="post" action={ (link("approvals", &a.id)) "/decide" } id="deny-form" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="verdict" value="deny";
                label { "Reason " input name="reason" required; }
                " "
                button type="submit" id="deny" { "Deny" }
            }
        }
    }
}

pub fn invocations(list: &[InvocationRecord]) -> Markup {
    html! {
        table id="invocations" {
            tr { th { "Invocation" } th { "State" } th { "Action" } th { "Caller" } th { "Created (UTC)" } }
            @for i in list {
                tr {
                    td { a href=(link("invocations", &i.id)) { (i.id) } }
                    td { (i.state) }
                    td { (i.action) "#" (i.function) }
                    td { (i.caller.name) }
                    td { (crate::time::display_secs(i.created_at / 1_000_000)) }
                }
            }
        }
    }
}

pub fn invocation(record: &InvocationRecord) -> Markup {
    html! {
        table {
            tr { th { "State" } td id="state" { (record.state) } }
            tr { th { "Action" } td { (record.action) "#" (record.function) } }
            tr { th { "Caller" } td { (record.caller.name) } }
            tr { th { "Arguments" } td { (json_block(&record.args)) } }
            (intent_rows(record.intent.as_ref()))
            @if let Some(o) = &record.outcome {
                tr { th { "Exit code" } td id="exit-code" { (o.exit_code) } }
                @if let Some(r) = &o.result {
                    tr { th { "Result" } td id="result" { (json_block(r)) } }
                }
                @if let Some(e) = &o.error {
                    tr { th { "Error" } td id="error" { (e) } }
                }
            }
        }
    }
}

/// One audit record as the browser lists it.
pub struct AuditRow {
    /// The node that wrote it (PostgreSQL), if known.
    pub node: Option<String>,
    pub seq: u64,
    pub ts: String,
    pub kind: String,
    /// The record's line, cut to a readable length.
    pub line: String,
}

/// The audit browser: how verification went (`Ok`: what it checked), the
/// newest records, newest first, or why they cannot be listed.
pub fn audit(chain: Result<String, String>, rows: Result<&[AuditRow], String>, with_node: bool) -> Markup {
    html! {
        @match &chain {
            Ok(summary) => p.ok id="chain" { (summary) },
            Err(e) => p.error id="chain" { "Verification FAILED: " (e) },
        }
        @match rows {
            Ok(rows) => table id="records" {
                tr {
                    @if with_node { th { "Node" } }
                    th { "#" } th { "Time (UTC)" } th { "Kind" } th { "Record" }
                }
                @for r in rows.iter().rev() {
                    tr {
                        @if with_node { td { (r.node.as_deref().unwrap_or("")) } }
                        td { (r.seq) }
                        td { (r.ts) }
                        td { (r.kind) }
                        td { code { (r.line) } }
                    }
                }
            },
            Err(e) => p.error { "Cannot list records: " (e) },
        }
    }
}

/// The catalog: each action the caller may invoke or approve, with what it
/// may do and what it exports.
pub fn actions(actions: &[(&str, &PreparedAction)]) -> Markup {
    html! {
        @for (name, action) in actions {
            section.action {
                h2 { (name) }
                p { (action.policy.description.as_deref().unwrap_or("")) }
                p { "Runs as " (action.policy.service_identity) ". Component " (action.manifest.digest) "." }
                h3 { "Capabilities" }
                ul {
                    @for (kind, what) in action.policy.grants.describe() {
                        li { (kind) ": " (what) }
                    }
                }
                h3 { "Imports" }
                ul {
                    @for import in &action.manifest.imports {
                        li { (import.name) " (" (import.class.name()) "): " (import.meaning) }
                    }
                }
                @if let Some(u) = action.upgrade.as_ref().filter(|u| !u.diff.is_empty()) {
                    h3 { "Changed since the previous pin" }
                    pre.diff { (u.diff.render(Some(&u.grants))) }
                }
                @if let Some(about) = action.manifest.description() {
                    p.doc { (about) }
                }
                h3 { "Functions" }
                dl.functions {
                    @for f in &action.manifest.functions {
                        dt { code { (f.name) } }
                        dd {
                            @if let Some(doc) = f.doc() {
                                p.doc { (doc) }
                            }
                            @if !f.params.is_empty() {
                                ul.params {
                                    @for (param, ty) in &f.params {
                                        li {
                                            code {
                                                (param) ": "
                                                (f.wit
                                                    .as_ref()
                                                    .and_then(|w| Some(w.component().type_name(w.param_type(param)?)))
                                                    .unwrap_or_else(|| ty.wit_name()))
                                            }
                                            @if let Some(doc) = f.param_doc(param) {
                                                " " (doc)
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
