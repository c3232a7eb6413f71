//! `airlock:cap/approval`: an action asks people for a decision mid-run.
//!
//! The request is bound to the invocation (see [`crate::approval::binding`])
//! and to the summary and detail the action gives; the call waits for the
//! decision through the invocation's approval gate ([`crate::call::CallGate`]), off
//! the invocation's clock, and the request expires when the action's
//! `approval.wait-secs` runs out.

use super::bindings::airlock::cap::approval as wit;
use super::catalog::{AIRLOCK_CAP_0_1, Interface};
use super::{Capability, Resolving};
use crate::call::{Decision, GuestAnswer, HostCall};
use crate::host_call::{InvocationState, StateBuilder};
use wasmtime::component::{HasSelf, Linker};

/// Longest summary, in bytes.
pub const MAX_SUMMARY_BYTES: usize = 200;
/// Longest detail, in bytes.
pub const MAX_DETAIL_BYTES: usize = 8 * 1024;

/// The `approval` grant: `approval = true`. Quorum, wait and approvers come
/// from the action's `[approval]` and `[access]` sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApprovalGrant;

pub struct ApprovalCapability;

impl Capability for ApprovalCapability {
    const INTERFACES: &'static [Interface] = &[Interface {
        family: &AIRLOCK_CAP_0_1,
        name: "airlock:cap/approval",
        meaning: "ask the action's approvers for a decision mid-run; the call waits for it",
    }];
    type Raw = bool;
    type Grant = ApprovalGrant;
    const REACHES_OUTSIDE: bool = true;
    const EXAMPLE_GRANT: &'static str = "approval = true (with access.approve naming the approvers)";
    const EXAMPLE_FLAG: &'static str = "a config file: approvals need approvers, which only a config names";

    fn resolve(raw: &bool, _cx: &Resolving<'_>) -> Result<Option<ApprovalGrant>, String> {
        Ok(raw.then_some(ApprovalGrant))
    }

    fn link(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<InvocationState, HasSelf<InvocationState>>(linker, |s| s)
    }

    fn prepare(_grant: &ApprovalGrant, _state: &mut StateBuilder) -> anyhow::Result<()> {
        Ok(())
    }

    fn describe(_grant: &ApprovalGrant) -> String {
        "may ask the action's approvers for a decision mid-run".into()
    }
}

/// Why a guest request was not approved, before it becomes the WIT error.
enum NotApproved {
    Invalid(String),
    Unavailable(String),
    Denied(String),
    Expired,
}

impl std::fmt::Display for NotApproved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotApproved::Invalid(m) => write!(f, "invalid: {m}"),
            NotApproved::Unavailable(m) => write!(f, "unavailable: {m}"),
            NotApproved::Denied(m) => write!(f, "denied: {m}"),
            NotApproved::Expired => f.write_str("expired"),
        }
    }
}

impl wit::Host for InvocationState {
    async fn request(&mut self, summary: String, detail: String) -> wasmtime::Result<Result<(), wit::ApprovalError>> {
        let call = HostCall::new("airlock:cap/approval", "request")
            .arg("summary", summary.escape_debug())
            .arg("detail-bytes", detail.len())
            .arg("detail-blake3", blake3::hash(detail.as_bytes()).to_hex());
        let gate = self.host_calls.gate();
        let calls = self.host_calls.clone();
        let outcome = self
            .host_call_async(
                call,
                |_| Decision::allow("grants.approval"),
                async move |_| -> Result<(), NotApproved> {
                    if summary.trim().is_empty() || summary.len() > MAX_SUMMARY_BYTES {
                        return Err(NotApproved::Invalid(format!(
                            "the summary must be 1-{MAX_SUMMARY_BYTES} bytes"
                        )));
                    }
                    if detail.len() > MAX_DETAIL_BYTES {
                        return Err(NotApproved::Invalid(format!(
                            "the detail must be at most {MAX_DETAIL_BYTES} bytes"
                        )));
                    }
                    let Some(gate) = gate else {
                        return Err(NotApproved::Unavailable(
                            "approvals are not set up for this invocation".into(),
                        ));
                    };
                    let subject = serde_json::json!({ "summary": summary, "detail": detail });
                    calls.flush_queued();
                    let answer = gate
                        .ask_for_guest(subject)
                        .await
                        .map_err(|e| NotApproved::Unavailable(e.to_string()))?;
                    match answer {
                        GuestAnswer::Approved => Ok(()),
                        GuestAnswer::Expired => Err(NotApproved::Expired),
                        GuestAnswer::Denied(reason) => Err(NotApproved::Denied(reason)),
                    }
                },
            )
            .await;
        Ok(match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(NotApproved::Invalid(m))) => Err(wit::ApprovalError::Invalid(m)),
            Ok(Err(NotApproved::Unavailable(m))) => Err(wit::ApprovalError::Unavailable(m)),
            Ok(Err(NotApproved::Denied(m))) => Err(wit::ApprovalError::Denied(m)),
            Ok(Err(NotApproved::Expired)) => Err(wit::ApprovalError::Expired),
            Err(denied) => Err(wit::ApprovalError::Unavailable(denied.to_string())),
        })
    }
}
