//! What a decision is bound to.
//!
//! A request's binding is blake3 over the canonical JSON of exactly what
//! will happen: the kind of request, the action and its component digest,
//! the function and its canonical arguments, the caller, the config
//! version, and for a host-call gate the call itself. A decision applies to
//! that digest alone: before anything approved runs, the binding is
//! computed again from what is about to run and must be equal, so an
//! approval cannot be replayed for other arguments, another caller, a
//! changed component or a changed config.

use serde_json::{Value, json};

/// The parts of a binding.
#[derive(Debug, Clone)]
pub struct Binding<'a> {
    pub kind: &'a str,
    pub action: &'a str,
    pub component_digest: &'a str,
    pub function: &'a str,
    /// Canonical (key-sorted) arguments.
    pub args: &'a Value,
    pub caller: &'a str,
    pub config_version: &'a str,
    /// The held-back call (host-call gates) or the guest's request.
    pub subject: &'a Value,
    /// The agent's stated reason, when it gave one: an approval of a
    /// request made for one reason does not cover it made for another.
    pub reason: Option<&'a str>,
}

impl Binding<'_> {
    /// `blake3:<hex>`.
    pub fn digest(&self) -> String {
        let mut doc = json!({
            "kind": self.kind,
            "action": self.action,
            "component": self.component_digest,
            "function": self.function,
            "args": self.args,
            "caller": self.caller,
            "config": self.config_version,
            "subject": self.subject,
        });
        // Only when given: bindings of requests without one are unchanged.
        if let (Some(reason), Some(map)) = (self.reason, doc.as_object_mut()) {
            map.insert("reason".into(), Value::String(reason.to_string()));
        }
        let doc = crate::values::canonical(&doc);
        let bytes = serde_json::to_vec(&doc).unwrap_or_default();
        format!("blake3:{}", blake3::hash(&bytes).to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_changes_the_digest() {
        let args = json!({"a": 1});
        let other_args = json!({"a": 2});
        let subject = Value::Null;
        let base = Binding {
            kind: "invocation",
            action: "deploy",
            component_digest: "blake3:00",
            function: "run",
            args: &args,
            caller: "bot",
            config_version: "blake3:11",
            subject: &subject,
            reason: None,
        };
        assert_ne!(
            base.digest(),
            Binding {
                reason: Some("why"),
                ..base.clone()
            }
            .digest()
        );
        let d = base.digest();
        assert_eq!(d, base.clone().digest());
        assert_ne!(
            d,
            Binding {
                args: &other_args,
                ..base.clone()
            }
            .digest()
        );
        assert_ne!(
            d,
            Binding {
                caller: "bot2",
                ..base.clone()
            }
            .digest()
        );
        assert_ne!(
            d,
            Binding {
                config_version: "blake3:12",
                ..base.clone()
            }
            .digest()
        );
        assert_ne!(
            d,
            Binding {
                component_digest: "blake3:01",
                ..base.clone()
            }
            .digest()
        );
        assert_ne!(
            d,
            Binding {
                function: "other",
                ..base.clone()
            }
            .digest()
        );
        // Key order does not matter: arguments are canonical.
        let reordered = json!({"b": 1, "a": 2});
        let ordered = json!({"a": 2, "b": 1});
        assert_eq!(
            Binding {
                args: &reordered,
                ..base.clone()
            }
            .digest(),
            Binding { args: &ordered, ..base }.digest()
        );
    }
}
