//! Filtering records by invocation, action, caller and time, for `airlock
//! audit show`/`export` and the service's audit query.

use super::Event;
use super::chain::Record;
use std::collections::HashSet;

/// Which records to keep. Host-call, approval and closing records belong to
/// the invocation whose start (or request, or refusal) record matched.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// An invocation id, or a prefix of one.
    pub invocation: Option<String>,
    pub action: Option<String>,
    pub caller: Option<String>,
    /// Unix microseconds, inclusive.
    pub since: Option<u64>,
    /// Unix microseconds, exclusive.
    pub until: Option<u64>,
}

/// A [`Filter`] applied to a stream of records, in log order.
#[derive(Debug)]
pub struct Matcher {
    filter: Filter,
    matched: HashSet<String>,
}

impl Filter {
    /// Whether the filter keeps every record.
    pub fn is_empty(&self) -> bool {
        self.invocation.is_none()
            && self.action.is_none()
            && self.caller.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }

    pub fn matcher(self) -> Matcher {
        Matcher {
            filter: self,
            matched: HashSet::new(),
        }
    }
}

impl Matcher {
    pub fn matches(&mut self, record: &Record) -> bool {
        // Membership first, time last: an invocation that started before
        // `since` still owns its later records.
        let belongs = self.belongs(record);
        let f = &self.filter;
        if f.since.is_none() && f.until.is_none() {
            return belongs;
        }
        let ts = crate::time::parse_utc(&record.entry.ts).unwrap_or(0);
        belongs && !(f.since.is_some_and(|s| ts < s) || f.until.is_some_and(|u| ts >= u))
    }

    /// Whether `record` passes the invocation, action and caller filters.
    fn belongs(&mut self, record: &Record) -> bool {
        let f = &self.filter;
        let entry = &record.entry;
        let invocation = entry.event.invocation();
        if let Some(want) = &f.invocation
            && !invocation.is_some_and(|i| i.starts_with(want.as_str()))
        {
            return false;
        }
        if f.action.is_none() && f.caller.is_none() {
            return true;
        }
        let (action, caller) = match &entry.event {
            Event::InvocationStarted(e) => (Some(&e.action), Some(&e.caller)),
            Event::InvocationRefused(e) => (Some(&e.action), Some(&e.caller)),
            Event::ApprovalRequested(e) => (Some(&e.action), Some(&e.caller)),
            _ => (None, None),
        };
        if let (Some(action), Some(caller), Some(id)) = (action, caller, invocation) {
            let ok = f.action.as_ref().is_none_or(|a| a == action) && f.caller.as_ref().is_none_or(|c| c == caller);
            if ok {
                self.matched.insert(id.to_string());
            }
            return ok;
        }
        invocation.is_some_and(|i| self.matched.contains(i))
    }
}
