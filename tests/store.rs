//! The `Store` contract, checked against both backends: every test here
//! runs once on SQLite (`sqlite::…`) and once on PostgreSQL
//! (`postgres::…`, a throw-away server, a fresh database per test; see
//! `support::postgres`).
//!
//! "Another node" is a second store opened on the same database: its own
//! connections, as another `airlock` process (or machine) has. Races are
//! real threads released together by a barrier, spread over two nodes.

mod support;

use airlock::identity::{Caller, IdentityKind};
use airlock::store::settings::StoreSettings;
use airlock::store::{
    ApprovalKind, ApprovalRecord, ApprovalState, Charge, DecisionRecord, Exceeded, InvocationEnding, InvocationOutcome,
    InvocationQuery, InvocationRecord, InvocationStatus, NodeRecord, Refusal, SessionRecord, Store, TokenRecord,
    UpdateError, Verdict,
};
use serde_json::json;
use std::sync::{Arc, Barrier, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
}

/// One test's database, on one backend.
struct Backend {
    kind: Kind,
    settings: StoreSettings,
    /// The data directory (SQLite's database; unused by PostgreSQL).
    data: tempfile::TempDir,
    _db: Option<support::postgres::TestDatabase>,
}

impl Backend {
    fn new(kind: Kind) -> Backend {
        let db = match kind {
            Kind::Sqlite => None,
            Kind::Postgres => Some(support::postgres::database()),
        };
        Backend {
            kind,
            settings: db.as_ref().map(|d| d.settings()).unwrap_or_default(),
            data: tempfile::tempdir().unwrap(),
            _db: db,
        }
    }

    /// A store on this database, as `airlock` opens it: each call is a
    /// separate node.
    fn open(&self) -> Arc<dyn Store> {
        airlock::store::open(&self.settings, self.data.path())
            .unwrap_or_else(|e| panic!("cannot open the {:?} store: {e}", self.kind))
    }
}

/// Every test, once per backend.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name(&super::Backend::new(super::Kind::Sqlite)); })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name(&super::Backend::new(super::Kind::Postgres)); })*
        }
    };
}

contract!(
    tokens_are_found_by_hash_and_a_kind_clash_or_duplicate_adds_nothing,
    revoking_keeps_the_first_time_and_an_unknown_token_is_not_revoked,
    approvals_are_listed_newest_first_by_state_and_limit,
    an_update_appends_decisions_and_owes_its_record_in_the_same_transaction,
    a_refused_or_rewriting_update_changes_nothing,
    an_identity_cannot_decide_twice_even_past_the_rules,
    concurrent_updates_from_many_threads_on_two_nodes_are_each_counted_once,
    an_update_sees_only_live_tokens_as_of_its_own_transaction,
    invocations_are_listed_newest_first_by_state_and_limit,
    invocation_pages_filter_in_the_database_and_follow_the_cursor,
    run_rows_are_seen_by_readers_at_once,
    a_final_row_is_never_moved_back_by_a_later_running_row,
    concurrent_async_finishes_all_land_before_they_resolve,
    transition_is_a_compare_and_set,
    of_many_racing_claims_exactly_one_wins,
    ending_an_invocation_owes_its_record_once,
    ending_with_an_expiry_moves_both_rows_or_neither,
    the_outbox_drains_oldest_first_and_keeps_what_could_not_be_appended,
    concurrent_drainers_never_append_a_record_twice,
    two_nodes_see_each_others_writes_at_once,
    nodes_opening_at_once_all_work,
    heartbeats_tell_which_processes_live_and_leaving_ends_one_at_once,
    console_sessions_end_when_idle_and_are_touched_sparingly,
    windows_never_go_past_their_limit_under_32_concurrent_callers,
    a_charge_of_several_windows_is_all_or_nothing,
);

// ---- records ----------------------------------------------------------

fn hash(n: u32) -> [u8; 32] {
    *blake3::hash(&n.to_be_bytes()).as_bytes()
}

fn token(id: &str, identity: &str, kind: IdentityKind, created_at: u64) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        identity: identity.into(),
        kind,
        roles: vec!["reviewer".into(), format!("role-of-{id}")],
        created_at,
        revoked_at: None,
    }
}

fn add(store: &dyn Store, t: &TokenRecord, h: u32) {
    store.add_token(&t.identity, t.kind, t, &hash(h)).unwrap();
}

fn approval(id: &str, state: ApprovalState, created_at: u64) -> ApprovalRecord {
    ApprovalRecord {
        id: id.into(),
        kind: ApprovalKind::Invocation,
        state,
        action: "deploy".into(),
        function: "run".into(),
        caller: "deploy-bot".into(),
        caller_kind: IdentityKind::Agent,
        service_identity: "svc".into(),
        component_digest: "blake3:00".into(),
        args: json!({"target": "prod", "n": 1, "nested": {"list": [1, 2, "ü"]}}),
        binding: format!("binding-of-{id}"),
        config_version: "blake3:11".into(),
        rule: "actions.deploy.approval".into(),
        subject: json!({"summary": "ship it"}),
        capabilities: vec!["files".into()],
        quorum: 2,
        approvers: vec!["role:reviewer".into()],
        created_at,
        expires_at: created_at + 1_000_000,
        decided_at: None,
        reason: None,
        invocation: format!("inv-of-{id}"),
        owner: None,
        decisions: vec![],
        uncounted: vec![],
        group: None,
        rules: None,
        more_groups: vec![],
        policies: vec![],
        why: None,
        intent: None,
        escalation: None,
        escalate_at: None,
        escalated: false,
    }
}

fn decision(identity: &str) -> DecisionRecord {
    DecisionRecord {
        identity: identity.into(),
        kind: IdentityKind::Human,
        verdict: Verdict::Approve,
        reason: Some(format!("{identity} looked")),
        at: 5,
    }
}

fn invocation(id: &str, state: InvocationStatus, created_at: u64) -> InvocationRecord {
    InvocationRecord {
        id: id.into(),
        action: "deploy".into(),
        function: "run".into(),
        args: json!({"value": id}),
        caller: Caller {
            name: "deploy-bot".into(),
            kind: IdentityKind::Agent,
            roles: vec!["agent".into()],
            token_id: Some("tok".into()),
        },
        state,
        approval: Some(format!("ap-of-{id}")),
        created_at,
        updated_at: created_at,
        outcome: None,
        runner: None,
        intent: None,
    }
}

fn outcome(code: i32) -> InvocationOutcome {
    InvocationOutcome {
        exit_code: code,
        result: Some(json!({"code": code})),
        error: (code != 0).then(|| format!("failed with {code}")),
        finished_at: 77,
    }
}

/// Everything in the outbox, drained.
fn drain(store: &dyn Store) -> Vec<String> {
    let mut got = Vec::new();
    let n = store
        .drain_audit_outbox(&mut |records| {
            got.extend(records);
            Ok(())
        })
        .unwrap();
    assert_eq!(n, got.len());
    got
}

/// Add `identity`'s approval to request `id`, owing `audit`.
fn vote(store: &dyn Store, id: &str, identity: &str, audit: Option<&str>) -> Result<ApprovalRecord, UpdateError> {
    store.update_approval(id, &mut |a, _live| {
        a.decisions.push(decision(identity));
        Ok(audit.map(str::to_string))
    })
}

fn ids<T>(rows: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    rows.iter().map(|r| id(r).to_string()).collect()
}

/// Run `f(i, node)` on `n` threads released together, alternating between
/// the two nodes; returns the results in thread order.
fn race<T: Send>(nodes: &[Arc<dyn Store>; 2], n: usize, f: impl Fn(usize, &dyn Store) -> T + Sync) -> Vec<T> {
    let barrier = Barrier::new(n);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, f, node) = (&barrier, &f, &nodes[i % 2]);
                s.spawn(move || {
                    barrier.wait();
                    f(i, node.as_ref())
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

// ---- tokens -----------------------------------------------------------

fn tokens_are_found_by_hash_and_a_kind_clash_or_duplicate_adds_nothing(b: &Backend) {
    let s = b.open();
    let t1 = token("t1", "alice", IdentityKind::Human, 10);
    let t2 = token("t2", "alice", IdentityKind::Human, 11);
    let t3 = token("t3", "bot", IdentityKind::Agent, 12);
    add(&*s, &t1, 1);
    add(&*s, &t2, 2);
    add(&*s, &t3, 3);
    assert_eq!(s.token_by_hash(&hash(1)).unwrap(), Some(t1.clone()));
    assert_eq!(s.token_by_hash(&hash(3)).unwrap(), Some(t3.clone()));
    assert_eq!(s.token_by_hash(&hash(99)).unwrap(), None);
    assert_eq!(s.tokens().unwrap(), [t1.clone(), t2.clone(), t3.clone()]);

    // An identity keeps its kind: a token of the other kind is refused,
    // and nothing of it is stored.
    let clash = token("t4", "alice", IdentityKind::Agent, 13);
    let e = s.add_token("alice", IdentityKind::Agent, &clash, &hash(4)).unwrap_err();
    assert!(e.to_string().contains("exists as human"), "{e}");
    assert_eq!(s.token_by_hash(&hash(4)).unwrap(), None);

    // A token whose hash or id is taken is refused, and the new identity
    // it would have created is not left behind (it can still be made, of
    // the other kind).
    let dup_hash = token("t5", "ghost", IdentityKind::Human, 14);
    assert!(s.add_token("ghost", IdentityKind::Human, &dup_hash, &hash(1)).is_err());
    let dup_id = token("t1", "ghost", IdentityKind::Human, 15);
    assert!(s.add_token("ghost", IdentityKind::Human, &dup_id, &hash(7)).is_err());
    assert_eq!(s.token_by_hash(&hash(7)).unwrap(), None);
    assert_eq!(s.token_by_hash(&hash(1)).unwrap(), Some(t1.clone()));
    let ghost = token("t6", "ghost", IdentityKind::Agent, 16);
    add(&*s, &ghost, 6);
    assert_eq!(
        s.token_by_hash(&hash(6)).unwrap().map(|t| t.kind),
        Some(IdentityKind::Agent)
    );
    assert_eq!(s.tokens().unwrap(), [t1, t2, t3, ghost]);
}

fn revoking_keeps_the_first_time_and_an_unknown_token_is_not_revoked(b: &Backend) {
    let s = b.open();
    add(&*s, &token("t1", "alice", IdentityKind::Human, 10), 1);
    add(&*s, &token("t2", "bob", IdentityKind::Human, 11), 2);
    assert!(!s.revoke_token("no-such-token", 100).unwrap());
    assert!(s.tokens().unwrap().iter().all(|t| t.revoked_at.is_none()));

    assert!(s.revoke_token("t1", 100).unwrap());
    assert_eq!(s.token_by_hash(&hash(1)).unwrap().unwrap().revoked_at, Some(100));
    // Revoking again says the token exists, and keeps the first time.
    assert!(s.revoke_token("t1", 200).unwrap());
    assert_eq!(s.token_by_hash(&hash(1)).unwrap().unwrap().revoked_at, Some(100));
    assert_eq!(s.token_by_hash(&hash(2)).unwrap().unwrap().revoked_at, None);
}

// ---- approvals --------------------------------------------------------

fn approvals_are_listed_newest_first_by_state_and_limit(b: &Backend) {
    let s = b.open();
    let states = [ApprovalState::Pending, ApprovalState::Denied, ApprovalState::Approved];
    let mut inserted = Vec::new();
    for i in 0..6u64 {
        let a = approval(&format!("ap-{i}"), states[(i % 3) as usize], 100 + i);
        s.insert_approval(&a).unwrap();
        inserted.push(a);
    }
    // Equal times: ordered by id among themselves.
    for id in ["tie-b", "tie-a"] {
        s.insert_approval(&approval(id, ApprovalState::Pending, 200)).unwrap();
    }
    // Stored whole: every field comes back as written.
    for a in &inserted {
        assert_eq!(s.approval(&a.id).unwrap().as_ref(), Some(a));
    }
    assert_eq!(s.approval("no-such-request").unwrap(), None);

    fn id(r: &ApprovalRecord) -> &str {
        &r.id
    }
    assert_eq!(
        ids(&s.approvals(None, 4).unwrap(), id),
        ["tie-a", "tie-b", "ap-5", "ap-4"]
    );
    assert_eq!(
        ids(&s.approvals(Some(ApprovalState::Pending), 10).unwrap(), id),
        ["tie-a", "tie-b", "ap-3", "ap-0"]
    );
    assert_eq!(
        ids(&s.approvals(Some(ApprovalState::Approved), 1).unwrap(), id),
        ["ap-5"]
    );
    assert!(s.approvals(Some(ApprovalState::Expired), 10).unwrap().is_empty());
    assert!(s.approvals(None, 0).unwrap().is_empty());
    assert_eq!(s.approvals(None, usize::MAX).unwrap().len(), 8);

    // An id is taken once; the first request stays as it was.
    let mut again = approval("ap-0", ApprovalState::Approved, 999);
    again.action = "other".into();
    assert!(s.insert_approval(&again).is_err());
    assert_eq!(s.approval("ap-0").unwrap().as_ref(), Some(&inserted[0]));
}

fn an_update_appends_decisions_and_owes_its_record_in_the_same_transaction(b: &Backend) {
    let (s, other) = (b.open(), b.open());
    s.insert_approval(&approval("ap", ApprovalState::Pending, 10)).unwrap();
    let after = vote(&*s, "ap", "alice", Some("rec-alice")).unwrap();
    assert_eq!(ids(&after.decisions, |d| &d.identity), ["alice"]);
    assert_eq!(after.decisions[0], decision("alice"));
    // Seen at once, on this node and on another.
    assert_eq!(s.approval("ap").unwrap().as_ref(), Some(&after));
    assert_eq!(other.approval("ap").unwrap().as_ref(), Some(&after));
    assert_eq!(drain(&*other), ["rec-alice"]);

    // A second decision moves the state; this one owes nothing.
    let decided = s
        .update_approval("ap", &mut |a, _| {
            a.decisions.push(decision("bob"));
            a.state = ApprovalState::Approved;
            a.decided_at = Some(20);
            a.reason = Some("quorum".into());
            Ok(None)
        })
        .unwrap();
    assert_eq!(decided.state, ApprovalState::Approved);
    let stored = other.approval("ap").unwrap().unwrap();
    assert_eq!(stored, decided);
    assert_eq!(ids(&stored.decisions, |d| &d.identity), ["alice", "bob"]);
    assert_eq!(s.approvals(Some(ApprovalState::Approved), 10).unwrap(), [decided]);
    assert!(s.approvals(Some(ApprovalState::Pending), 10).unwrap().is_empty());
    assert!(drain(&*s).is_empty());

    match vote(&*s, "no-such-request", "alice", Some("rec")) {
        Err(UpdateError::NotFound(id)) => assert_eq!(id, "no-such-request"),
        other => panic!("{other:?}"),
    }
    assert!(drain(&*s).is_empty());
}

fn a_refused_or_rewriting_update_changes_nothing(b: &Backend) {
    let s = b.open();
    s.insert_approval(&approval("ap", ApprovalState::Pending, 10)).unwrap();
    vote(&*s, "ap", "alice", Some("rec-alice")).unwrap();
    assert_eq!(drain(&*s), ["rec-alice"]);
    let before = s.approval("ap").unwrap().unwrap();

    // The closure changed everything, then refused: none of it is stored.
    let refused = s.update_approval("ap", &mut |a, _| {
        a.decisions.push(decision("bob"));
        a.state = ApprovalState::Denied;
        a.reason = Some("changed my mind".into());
        Err(Refusal::Other("no".into()))
    });
    assert!(
        matches!(refused, Err(UpdateError::Refused(Refusal::Other(ref m))) if m == "no"),
        "{refused:?}"
    );
    assert_eq!(s.approval("ap").unwrap().as_ref(), Some(&before));
    assert!(drain(&*s).is_empty());

    // Decisions are only ever added: removing or rewriting one is refused
    // whole, even with a new decision and a record owed alongside.
    type Rewrite = fn(&mut ApprovalRecord);
    let rewrites: [Rewrite; 3] = [
        |a| {
            a.decisions.clear();
        },
        |a| a.decisions[0].verdict = Verdict::Deny,
        |a| a.decisions.insert(0, decision("mallory")),
    ];
    for rewrite in rewrites {
        let result = s.update_approval("ap", &mut |a, _| {
            rewrite(a);
            a.decisions.push(decision("carol"));
            a.state = ApprovalState::Approved;
            Ok(Some("rec-rewrite".into()))
        });
        assert!(matches!(result, Err(UpdateError::Store(_))), "{result:?}");
        assert_eq!(s.approval("ap").unwrap().as_ref(), Some(&before));
        assert!(drain(&*s).is_empty());
    }
}

fn an_identity_cannot_decide_twice_even_past_the_rules(b: &Backend) {
    let (s, other) = (b.open(), b.open());
    s.insert_approval(&approval("ap", ApprovalState::Pending, 10)).unwrap();
    vote(&*s, "ap", "alice", Some("rec-1")).unwrap();
    let before = s.approval("ap").unwrap().unwrap();
    // The closure does not check (the rules would): the store still counts
    // alice once, from either node, and owes no record for the attempt.
    for node in [&s, &other] {
        match vote(&**node, "ap", "alice", Some("rec-2")) {
            Err(UpdateError::Refused(Refusal::AlreadyDecided { identity, id })) => {
                assert_eq!((identity.as_str(), id.as_str()), ("alice", "ap"));
            }
            other => panic!("alice counted twice: {other:?}"),
        }
        assert_eq!(node.approval("ap").unwrap().as_ref(), Some(&before));
    }
    // Two decisions by one identity in one update: refused whole.
    let both = s.update_approval("ap", &mut |a, _| {
        a.decisions.push(decision("bob"));
        a.decisions.push(decision("bob"));
        Ok(Some("rec-3".into()))
    });
    assert!(
        matches!(both, Err(UpdateError::Refused(Refusal::AlreadyDecided { .. }))),
        "{both:?}"
    );
    assert_eq!(s.approval("ap").unwrap().as_ref(), Some(&before));
    assert_eq!(drain(&*s), ["rec-1"]);
}

fn concurrent_updates_from_many_threads_on_two_nodes_are_each_counted_once(b: &Backend) {
    const VOTERS: usize = 24;
    let nodes = [b.open(), b.open()];
    nodes[0]
        .insert_approval(&approval("ap", ApprovalState::Pending, 10))
        .unwrap();
    // Each update also appends its identity to a list in the request's own
    // row: a lost update (two read-modify-writes from one snapshot) would
    // drop one there even where the decision rows survive. The last two
    // threads are one identity: exactly one of them counts.
    let results = race(&nodes, VOTERS + 2, |i, node| {
        let who = if i < VOTERS {
            format!("voter-{i}")
        } else {
            "twice".to_string()
        };
        node.update_approval("ap", &mut |a, _| {
            a.decisions.push(decision(&who));
            a.capabilities.push(who.clone());
            Ok(Some(format!("rec-{who}")))
        })
    });
    let twice: Vec<_> = results[VOTERS..].iter().collect();
    assert_eq!(twice.iter().filter(|r| r.is_ok()).count(), 1, "{twice:?}");
    assert!(
        twice
            .iter()
            .any(|r| matches!(r, Err(UpdateError::Refused(Refusal::AlreadyDecided { .. })))),
        "{twice:?}"
    );
    assert!(results[..VOTERS].iter().all(Result::is_ok), "{results:?}");

    let stored = nodes[1].approval("ap").unwrap().unwrap();
    let mut expected: Vec<String> = (0..VOTERS).map(|i| format!("voter-{i}")).collect();
    expected.push("twice".into());
    let deciders = ids(&stored.decisions, |d| &d.identity);
    let mut sorted = deciders.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "each decision exactly once");
    // One order for both: the updates were serialized, each on top of the
    // one before.
    assert_eq!(stored.capabilities[1..], deciders[..], "a lost or reordered update");
    let mut records = drain(&*nodes[0]);
    records.sort();
    let mut owed: Vec<String> = expected.iter().map(|w| format!("rec-{w}")).collect();
    owed.sort();
    assert_eq!(records, owed);
}

fn an_update_sees_only_live_tokens_as_of_its_own_transaction(b: &Backend) {
    let (s, other) = (b.open(), b.open());
    add(&*s, &token("t1", "alice", IdentityKind::Human, 10), 1);
    add(&*s, &token("t2", "bob", IdentityKind::Human, 11), 2);
    add(&*s, &token("t3", "carol", IdentityKind::Human, 12), 3);
    s.insert_approval(&approval("ap", ApprovalState::Pending, 10)).unwrap();
    let live_at = |node: &dyn Store| -> Vec<String> {
        let mut seen = Vec::new();
        node.update_approval("ap", &mut |_, live| {
            seen = ids(live, |t| &t.id);
            assert!(live.iter().all(|t| t.revoked_at.is_none()), "{live:?}");
            Ok(None)
        })
        .unwrap();
        seen
    };
    assert_eq!(live_at(&*s), ["t1", "t2", "t3"]);
    // Revoked on another node: the next update here no longer has it.
    assert!(other.revoke_token("t2", 50).unwrap());
    assert_eq!(live_at(&*s), ["t1", "t3"]);
    assert!(s.revoke_token("t1", 60).unwrap());
    assert_eq!(live_at(&*other), ["t3"]);
    add(&*other, &token("t4", "dave", IdentityKind::Agent, 13), 4);
    assert_eq!(live_at(&*s), ["t3", "t4"]);
}

// ---- invocations ------------------------------------------------------

fn invocations_are_listed_newest_first_by_state_and_limit(b: &Backend) {
    let s = b.open();
    let states = [InvocationStatus::AwaitingApproval, InvocationStatus::Approved];
    let mut inserted = Vec::new();
    for i in 0..6u64 {
        let r = invocation(&format!("inv-{i}"), states[(i % 2) as usize], 100 + i);
        s.insert_invocation(&r).unwrap();
        inserted.push(r);
    }
    for id in ["tie-b", "tie-a"] {
        s.insert_invocation(&invocation(id, InvocationStatus::Approved, 200))
            .unwrap();
    }
    for r in &inserted {
        assert_eq!(s.invocation(&r.id).unwrap().as_ref(), Some(r));
    }
    assert_eq!(s.invocation("no-such-invocation").unwrap(), None);
    fn id(r: &InvocationRecord) -> &str {
        &r.id
    }
    assert_eq!(ids(&s.invocations(None, 3).unwrap(), id), ["tie-a", "tie-b", "inv-5"]);
    assert_eq!(
        ids(
            &s.invocations(Some(InvocationStatus::AwaitingApproval), 10).unwrap(),
            id
        ),
        ["inv-4", "inv-2", "inv-0"]
    );
    assert!(s.invocations(Some(InvocationStatus::Running), 10).unwrap().is_empty());
    assert!(s.invocations(None, 0).unwrap().is_empty());

    // An id is taken once.
    let mut again = invocation("inv-0", InvocationStatus::Running, 999);
    again.action = "other".into();
    assert!(s.insert_invocation(&again).is_err());
    assert_eq!(s.invocation("inv-0").unwrap().as_ref(), Some(&inserted[0]));
}

fn invocation_pages_filter_in_the_database_and_follow_the_cursor(b: &Backend) {
    let s = b.open();
    for i in 0..10u64 {
        let mut r = invocation(&format!("inv-{i}"), InvocationStatus::Approved, 100 + i);
        if i % 3 == 0 {
            r.action = "report".into();
        }
        if i % 2 == 0 {
            r.caller.name = "other-bot".into();
            r.state = InvocationStatus::AwaitingApproval;
        }
        s.insert_invocation(&r).unwrap();
    }
    // Three at one time: the cursor orders ties by id.
    for id in ["tie-c", "tie-a", "tie-b"] {
        s.insert_invocation(&invocation(id, InvocationStatus::Approved, 300))
            .unwrap();
    }
    fn id(r: &InvocationRecord) -> &str {
        &r.id
    }
    let page = |q: &InvocationQuery, n: usize| ids(&s.invocation_page(q, n).unwrap(), id);
    let all = InvocationQuery::default();
    assert_eq!(page(&all, 4), ["tie-a", "tie-b", "tie-c", "inv-9"]);
    // Followed page by page from each last row: every row once, in order.
    let mut q = InvocationQuery::default();
    let mut walked = Vec::new();
    loop {
        let rows = s.invocation_page(&q, 2).unwrap();
        let Some(last) = rows.last() else { break };
        q.after = Some((last.created_at, last.id.clone()));
        walked.extend(ids(&rows, id));
    }
    assert_eq!(walked, page(&all, 100));
    assert_eq!(walked.len(), 13);
    // Each filter, and all of them at once.
    let by = |f: &dyn Fn(&mut InvocationQuery)| {
        let mut q = InvocationQuery::default();
        f(&mut q);
        page(&q, 100)
    };
    assert_eq!(
        by(&|q| q.action = Some("report".into())),
        ["inv-9", "inv-6", "inv-3", "inv-0"]
    );
    assert_eq!(
        by(&|q| q.caller = Some("other-bot".into())),
        ["inv-8", "inv-6", "inv-4", "inv-2", "inv-0"]
    );
    assert_eq!(
        by(&|q| q.state = Some(InvocationStatus::AwaitingApproval)),
        ["inv-8", "inv-6", "inv-4", "inv-2", "inv-0"]
    );
    assert_eq!(
        by(&|q| q.since = Some(107)),
        ["tie-a", "tie-b", "tie-c", "inv-9", "inv-8", "inv-7"]
    );
    assert_eq!(by(&|q| q.until = Some(102)), ["inv-1", "inv-0"]);
    assert_eq!(
        by(&|q| {
            q.action = Some("report".into());
            q.caller = Some("other-bot".into());
            q.since = Some(101);
            q.after = Some((106, "inv-6".into()));
        }),
        Vec::<String>::new()
    );
    assert_eq!(
        by(&|q| q.after = Some((300, "tie-a".into())))
            .first()
            .map(String::as_str),
        Some("tie-b")
    );
    // Text that looks like SQL is a value.
    assert!(by(&|q| q.caller = Some("' OR '1'='1".into())).is_empty());
}

fn run_rows_are_seen_by_readers_at_once(b: &Backend) {
    let s = b.open();
    let mut row = invocation("run", InvocationStatus::Running, 10);
    row.approval = None;
    row.runner = Some("123:abc".into());
    s.record_run(&row).unwrap();
    // Read straight after queueing: the read sees it.
    assert_eq!(s.invocation("run").unwrap().as_ref(), Some(&row));
    assert_eq!(
        ids(&s.invocations(Some(InvocationStatus::Running), 10).unwrap(), |r| &r.id),
        ["run"]
    );
    let mut done = row.clone();
    done.state = InvocationStatus::Succeeded;
    done.runner = None;
    done.outcome = Some(outcome(0));
    s.finish_run(&done).unwrap();
    assert_eq!(s.invocation("run").unwrap().as_ref(), Some(&done));
    assert!(s.invocations(Some(InvocationStatus::Running), 10).unwrap().is_empty());

    // A final row is stored before `finish_run` returns: where a crash of
    // this process could no longer lose it.
    match b.kind {
        // Committed in the shared database: another node reads it now.
        Kind::Postgres => assert_eq!(b.open().invocation("run").unwrap().as_ref(), Some(&done)),
        // In this store's journal until its batch commits (another store
        // on the same file does not read that journal while this one
        // lives; a store opened after a crash adopts it, see tests/crash.rs).
        Kind::Sqlite => {
            let dir = b.data.path().join(airlock::store::journal::DIR);
            let journaled = std::fs::read_dir(&dir)
                .unwrap()
                .any(|e| std::fs::read_to_string(e.unwrap().path()).is_ok_and(|t| t.contains("\"succeeded\"")));
            let conn = rusqlite::Connection::open(b.data.path().join("airlock.db")).unwrap();
            let committed: Option<String> = conn
                .query_row("SELECT state FROM invocations WHERE id = 'run'", [], |r| r.get(0))
                .ok();
            assert!(journaled || committed.as_deref() == Some("succeeded"), "{committed:?}");
        }
    }

    // Many at once: all there when read.
    for i in 0..200u64 {
        s.record_run(&invocation(&format!("bulk-{i}"), InvocationStatus::Succeeded, 20 + i))
            .unwrap();
    }
    assert_eq!(s.invocations(None, 1000).unwrap().len(), 201);
    assert_eq!(
        s.invocation("bulk-199").unwrap().map(|r| r.state),
        Some(InvocationStatus::Succeeded)
    );
}

fn a_final_row_is_never_moved_back_by_a_later_running_row(b: &Backend) {
    let s = b.open();
    let running = invocation("r1", InvocationStatus::Running, 10);
    let mut done = running.clone();
    done.state = InvocationStatus::Succeeded;
    done.outcome = Some(outcome(0));
    // A `running` row queued after the final one (same batch or later):
    // the final row stands.
    s.record_run(&running).unwrap();
    s.finish_run(&done).unwrap();
    s.record_run(&running).unwrap();
    assert_eq!(s.invocation("r1").unwrap().as_ref(), Some(&done));
    let running2 = invocation("r2", InvocationStatus::Running, 11);
    let mut done2 = running2.clone();
    done2.state = InvocationStatus::Failed;
    done2.outcome = Some(outcome(4));
    for row in [&running2, &done2, &running2] {
        s.record_run(row).unwrap();
    }
    assert_eq!(s.invocation("r2").unwrap().as_ref(), Some(&done2));

    // Ended by a compare-and-set (recovery, another node): a late status
    // row of the run does not bring it back either.
    s.insert_invocation(&invocation("r3", InvocationStatus::Running, 12))
        .unwrap();
    assert!(
        s.transition_invocation(
            "r3",
            &[InvocationStatus::Running],
            InvocationStatus::Failed,
            Some(&outcome(1))
        )
        .unwrap()
    );
    s.record_run(&invocation("r3", InvocationStatus::Running, 12)).unwrap();
    assert_eq!(
        s.invocation("r3").unwrap().map(|r| (r.state, r.outcome)),
        Some((InvocationStatus::Failed, Some(outcome(1))))
    );
}

/// The async forms the service awaits on its workers, from many tasks at
/// once on a multi-threaded runtime (where the store is opened, as `serve`
/// opens it): every final row is stored when its call resolves (another
/// node reads it), rows of concurrent runs share commits without one being
/// dropped or moved back, and token lookups answer as the blocking form.
fn concurrent_async_finishes_all_land_before_they_resolve(b: &Backend) {
    const RUNS: usize = 64;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async { b.open() });
    // Another node, reading each row as soon as its call resolved.
    let other = (b.kind == Kind::Postgres).then(|| b.open());
    add(&*s, &token("t1", "alice", IdentityKind::Human, 10), 1);
    let finished: Vec<InvocationRecord> = rt.block_on(async {
        let tasks: Vec<_> = (0..RUNS)
            .map(|i| {
                let (s, other) = (s.clone(), other.clone());
                tokio::spawn(async move {
                    let running = invocation(&format!("run-{i:02}"), InvocationStatus::Running, 100 + i as u64);
                    s.record_run(&running).unwrap();
                    // Each run authenticates as a request does.
                    let found = s.token_by_hash_async(&hash(1)).await.unwrap().map(|t| t.id);
                    assert_eq!(found.as_deref(), Some("t1"));
                    assert_eq!(s.token_by_hash_async(&hash(2)).await.unwrap(), None);
                    let mut done = running.clone();
                    done.state = if i % 3 == 0 {
                        InvocationStatus::Failed
                    } else {
                        InvocationStatus::Succeeded
                    };
                    done.outcome = Some(outcome(i32::from(i % 3 == 0)));
                    s.finish_run_async(&done).await.unwrap();
                    if let Some(other) = &other {
                        assert_eq!(other.invocation(&done.id).unwrap().as_ref(), Some(&done));
                    }
                    // A late `running` row of the same run: queued, never
                    // written over the final one.
                    s.record_run(&running).unwrap();
                    done
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    match b.kind {
        // Committed when each call resolved: another node reads them all.
        Kind::Postgres => {
            let other = b.open();
            for done in &finished {
                assert_eq!(other.invocation(&done.id).unwrap().as_ref(), Some(done));
            }
        }
        // Journaled (see `run_rows_are_seen_by_readers_at_once`); readers
        // of this store see them.
        Kind::Sqlite => {}
    }
    for done in &finished {
        assert_eq!(s.invocation(&done.id).unwrap().as_ref(), Some(done));
    }
    assert_eq!(
        s.invocations(Some(InvocationStatus::Running), 1000).unwrap(),
        Vec::new()
    );

    // A caller that stops waiting (a dropped request) does not lose its
    // row: it is written anyway, or stays queued for the next write.
    let mut dropped = invocation("dropped", InvocationStatus::Succeeded, 999);
    dropped.outcome = Some(outcome(0));
    rt.block_on(async {
        let waited = tokio::time::timeout(std::time::Duration::ZERO, s.finish_run_async(&dropped)).await;
        drop(waited);
    });
    let reader = other.clone().unwrap_or_else(|| s.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while reader.invocation("dropped").unwrap().as_ref() != Some(&dropped) {
        assert!(std::time::Instant::now() < deadline, "the dropped call's row was lost");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(s);
    drop(other);
    drop(rt);
}

fn transition_is_a_compare_and_set(b: &Backend) {
    let (s, other) = (b.open(), b.open());
    let row = invocation("inv", InvocationStatus::Approved, 10);
    s.insert_invocation(&row).unwrap();
    assert!(
        !s.transition_invocation(
            "no-such",
            &[InvocationStatus::Approved],
            InvocationStatus::Running,
            None
        )
        .unwrap()
    );
    // Not in `from`: nothing changes.
    assert!(
        !s.transition_invocation(
            "inv",
            &[InvocationStatus::AwaitingApproval, InvocationStatus::Running],
            InvocationStatus::Failed,
            Some(&outcome(1))
        )
        .unwrap()
    );
    assert_eq!(other.invocation("inv").unwrap().as_ref(), Some(&row));

    assert!(
        s.claim_invocation("inv", &[InvocationStatus::Approved], "111:aaa")
            .unwrap()
    );
    let claimed = other.invocation("inv").unwrap().unwrap();
    assert_eq!(claimed.state, InvocationStatus::Running);
    assert_eq!(claimed.runner.as_deref(), Some("111:aaa"));
    assert!(claimed.updated_at > row.updated_at);
    // Claimed once: a second claim from the state it left fails.
    assert!(
        !other
            .claim_invocation("inv", &[InvocationStatus::Approved], "222:bbb")
            .unwrap()
    );

    assert!(
        other
            .transition_invocation(
                "inv",
                &[InvocationStatus::Running],
                InvocationStatus::Succeeded,
                Some(&outcome(0))
            )
            .unwrap()
    );
    let ended = s.invocation("inv").unwrap().unwrap();
    assert_eq!(ended.state, InvocationStatus::Succeeded);
    assert_eq!(ended.outcome, Some(outcome(0)));
    assert_eq!(ended.runner, None, "a row that leaves running names no runner");
    assert_eq!((ended.args, ended.caller), (row.args, row.caller));
    assert!(
        !s.transition_invocation(
            "inv",
            &[InvocationStatus::Running],
            InvocationStatus::Failed,
            Some(&outcome(1))
        )
        .unwrap()
    );
    assert_eq!(s.invocation("inv").unwrap().unwrap().outcome, Some(outcome(0)));
}

fn of_many_racing_claims_exactly_one_wins(b: &Backend) {
    const RACERS: usize = 16;
    let nodes = [b.open(), b.open()];
    for round in 0..4 {
        let id = format!("inv-{round}");
        nodes[0]
            .insert_invocation(&invocation(&id, InvocationStatus::Approved, 10))
            .unwrap();
        let claims = race(&nodes, RACERS, |i, node| {
            node.claim_invocation(&id, &[InvocationStatus::Approved], &format!("runner-{i}"))
                .unwrap()
        });
        let winners: Vec<usize> = (0..RACERS).filter(|&i| claims[i]).collect();
        assert_eq!(winners.len(), 1, "round {round}: {claims:?}");
        let row = nodes[1].invocation(&id).unwrap().unwrap();
        assert_eq!(row.state, InvocationStatus::Running);
        assert_eq!(row.runner, Some(format!("runner-{}", winners[0])));

        // Ending it: again exactly one of many racing transitions wins, and
        // the outcome stored is the winner's.
        let ends = race(&nodes, RACERS, |i, node| {
            node.transition_invocation(
                &id,
                &[InvocationStatus::Running],
                InvocationStatus::Failed,
                Some(&outcome(i as i32 + 1)),
            )
            .unwrap()
        });
        let winners: Vec<usize> = (0..RACERS).filter(|&i| ends[i]).collect();
        assert_eq!(winners.len(), 1, "round {round}: {ends:?}");
        let row = nodes[0].invocation(&id).unwrap().unwrap();
        assert_eq!(row.state, InvocationStatus::Failed);
        assert_eq!(row.outcome, Some(outcome(winners[0] as i32 + 1)));
    }
}

fn ending_an_invocation_owes_its_record_once(b: &Backend) {
    let (s, other) = (b.open(), b.open());
    s.insert_invocation(&invocation("inv", InvocationStatus::AwaitingApproval, 10))
        .unwrap();
    let denied = outcome(3);
    let ending = InvocationEnding {
        invocation: "inv",
        from: &[InvocationStatus::AwaitingApproval, InvocationStatus::Approved],
        to: InvocationStatus::Denied,
        outcome: &denied,
        expire_approval: None,
        audit: "rec-denied",
    };
    // Racing endings on two nodes: one ends it, and only its record is
    // owed.
    let ended = race(&[s.clone(), other.clone()], 8, |_, node| {
        node.end_invocation(&ending).unwrap()
    });
    assert_eq!(ended.iter().filter(|e| **e).count(), 1, "{ended:?}");
    let row = other.invocation("inv").unwrap().unwrap();
    assert_eq!(
        (row.state, row.outcome),
        (InvocationStatus::Denied, Some(denied.clone()))
    );
    assert_eq!(drain(&*s), ["rec-denied"]);
    assert!(!s.end_invocation(&ending).unwrap());
    assert!(
        !s.end_invocation(&InvocationEnding {
            invocation: "no-such",
            ..ending
        })
        .unwrap()
    );
    assert!(drain(&*s).is_empty());
}

fn ending_with_an_expiry_moves_both_rows_or_neither(b: &Backend) {
    let (s, other) = (b.open(), b.open());
    let expired = outcome(6);
    let ending = |inv: &'static str, ap: &'static str, audit: &'static str| InvocationEnding {
        invocation: inv,
        from: &[InvocationStatus::Approved],
        to: InvocationStatus::Expired,
        outcome: &expired,
        expire_approval: Some((ap, "not started in time")),
        audit,
    };
    let setup = |n: &str, ap_state: ApprovalState, inv_state: InvocationStatus| {
        s.insert_approval(&approval(&format!("ap-{n}"), ap_state, 10)).unwrap();
        s.insert_invocation(&invocation(&format!("inv-{n}"), inv_state, 10))
            .unwrap();
    };

    // Both as expected: both move, and the record is owed.
    setup("ok", ApprovalState::Approved, InvocationStatus::Approved);
    assert!(other.end_invocation(&ending("inv-ok", "ap-ok", "rec-ok")).unwrap());
    let ap = s.approval("ap-ok").unwrap().unwrap();
    assert_eq!(ap.state, ApprovalState::Expired);
    assert_eq!(ap.reason.as_deref(), Some("not started in time"));
    let inv = s.invocation("inv-ok").unwrap().unwrap();
    assert_eq!(
        (inv.state, inv.outcome),
        (InvocationStatus::Expired, Some(expired.clone()))
    );
    assert_eq!(drain(&*s), ["rec-ok"]);

    // The request is no longer approved (denied, say): nothing moves.
    setup("denied", ApprovalState::Denied, InvocationStatus::Approved);
    assert!(!s.end_invocation(&ending("inv-denied", "ap-denied", "rec-x")).unwrap());
    assert_eq!(s.approval("ap-denied").unwrap().unwrap().state, ApprovalState::Denied);
    assert_eq!(
        s.invocation("inv-denied").unwrap().unwrap().state,
        InvocationStatus::Approved
    );
    // The invocation was claimed first: the request's expiry is undone
    // with it (one transaction).
    setup("claimed", ApprovalState::Approved, InvocationStatus::Approved);
    assert!(
        s.claim_invocation("inv-claimed", &[InvocationStatus::Approved], "1:a")
            .unwrap()
    );
    assert!(
        !other
            .end_invocation(&ending("inv-claimed", "ap-claimed", "rec-y"))
            .unwrap()
    );
    let ap = s.approval("ap-claimed").unwrap().unwrap();
    assert_eq!((ap.state, ap.reason), (ApprovalState::Approved, None));
    assert_eq!(
        s.invocation("inv-claimed").unwrap().unwrap().state,
        InvocationStatus::Running
    );
    // No such request: nothing moves.
    s.insert_invocation(&invocation("inv-lone", InvocationStatus::Approved, 10))
        .unwrap();
    assert!(!s.end_invocation(&ending("inv-lone", "ap-none", "rec-z")).unwrap());
    assert_eq!(
        s.invocation("inv-lone").unwrap().unwrap().state,
        InvocationStatus::Approved
    );
    assert!(drain(&*s).is_empty());
}

// ---- the audit outbox -------------------------------------------------

fn the_outbox_drains_oldest_first_and_keeps_what_could_not_be_appended(b: &Backend) {
    let (s, other) = (b.open(), b.open());
    let mut calls = 0;
    assert_eq!(
        s.drain_audit_outbox(&mut |_| {
            calls += 1;
            Ok(())
        })
        .unwrap(),
        0
    );
    assert_eq!(calls, 0, "an empty outbox appends nothing");

    // Owed by decisions and endings, on both nodes, in this order.
    s.insert_approval(&approval("ap", ApprovalState::Pending, 10)).unwrap();
    let mut owed = Vec::new();
    for i in 0..5 {
        let node = if i % 2 == 0 { &s } else { &other };
        let rec = format!("rec-{i}");
        vote(&**node, "ap", &format!("voter-{i}"), Some(&rec)).unwrap();
        owed.push(rec);
    }
    let no = outcome(3);
    s.insert_invocation(&invocation("inv", InvocationStatus::AwaitingApproval, 10))
        .unwrap();
    assert!(
        other
            .end_invocation(&InvocationEnding {
                invocation: "inv",
                from: &[InvocationStatus::AwaitingApproval],
                to: InvocationStatus::Denied,
                outcome: &no,
                expire_approval: None,
                audit: "rec-5",
            })
            .unwrap()
    );
    owed.push("rec-5".into());

    // The log cannot take them: all kept, for this node and the other.
    for node in [&s, &other] {
        let failed = node.drain_audit_outbox(&mut |records| {
            assert_eq!(records, owed, "oldest first");
            Err(Refusal::AuditUnavailable("disk full".into()))
        });
        assert!(
            matches!(failed, Err(UpdateError::Refused(Refusal::AuditUnavailable(_)))),
            "{failed:?}"
        );
    }
    // Appended once, then gone.
    assert_eq!(drain(&*other), owed);
    assert!(drain(&*s).is_empty());
    assert!(drain(&*other).is_empty());
}

fn concurrent_drainers_never_append_a_record_twice(b: &Backend) {
    const RECORDS: usize = 120;
    const DRAINERS: usize = 4;
    let nodes = [b.open(), b.open()];
    nodes[0]
        .insert_approval(&approval("ap", ApprovalState::Pending, 10))
        .unwrap();
    // One producer owes records in order while drainers on both nodes
    // append them; every third append fails (the record must stay owed).
    let appended = Mutex::new(Vec::<String>::new());
    let producing = std::sync::atomic::AtomicBool::new(true);
    let attempts = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            // Done producing however this ends: a failed vote must fail
            // the test, not leave the drainers waiting for more.
            struct Done<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.store(false, std::sync::atomic::Ordering::Release);
                }
            }
            let _done = Done(&producing);
            for i in 0..RECORDS {
                // As the drainers below: under the whole suite's load the
                // pool can fail to hand out a connection in time (nothing
                // was done then); the vote is made again, as a client would.
                let mut tries = 0;
                loop {
                    match vote(&*nodes[i % 2], "ap", &format!("v{i:04}"), Some(&format!("rec-{i:04}"))) {
                        Ok(_) => break,
                        Err(UpdateError::Store(e)) if e.is_unreachable() && tries < 20 => {
                            tries += 1;
                            std::thread::sleep(std::time::Duration::from_millis(100));
                        }
                        Err(e) => panic!("vote {i} failed: {e}"),
                    }
                }
            }
        });
        for d in 0..DRAINERS {
            let (appended, producing, attempts, node) = (&appended, &producing, &attempts, &nodes[d % 2]);
            scope.spawn(move || {
                loop {
                    let done = !producing.load(std::sync::atomic::Ordering::Acquire);
                    let result = node.drain_audit_outbox(&mut |records| {
                        if attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 3 == 2 {
                            return Err(Refusal::AuditUnavailable("flaky disk".into()));
                        }
                        // Slow, as a synced append is: other drainers try
                        // meanwhile.
                        std::thread::sleep(std::time::Duration::from_millis(3));
                        appended.lock().unwrap().extend(records);
                        Ok(())
                    });
                    match result {
                        Ok(0) if done => break,
                        Ok(_) | Err(UpdateError::Refused(Refusal::AuditUnavailable(_))) => {}
                        // Under the whole suite's load a new connection
                        // can take longer than the pool waits (each
                        // failed append closes one): refused, nothing
                        // taken, so drain again, as the service would.
                        Err(UpdateError::Store(e)) if e.is_unreachable() => {
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                        Err(e) => panic!("drain failed: {e}"),
                    }
                }
            });
        }
        producer.join().unwrap();
    });
    let appended = appended.into_inner().unwrap();
    let expected: Vec<String> = (0..RECORDS).map(|i| format!("rec-{i:04}")).collect();
    // Drains are serialized and each takes what is owed oldest first, so
    // the log gets the records exactly once, in the order they were owed.
    assert_eq!(appended, expected);
    assert!(drain(&*nodes[1]).is_empty());
}

// ---- nodes ------------------------------------------------------------

fn two_nodes_see_each_others_writes_at_once(b: &Backend) {
    let (a, n) = (b.open(), b.open());
    add(&*a, &token("t1", "alice", IdentityKind::Human, 10), 1);
    assert_eq!(n.token_by_hash(&hash(1)).unwrap().map(|t| t.id), Some("t1".into()));
    assert!(a.revoke_token("t1", 500).unwrap());
    assert_eq!(n.token_by_hash(&hash(1)).unwrap().unwrap().revoked_at, Some(500));
    assert_eq!(n.tokens().unwrap()[0].revoked_at, Some(500));

    n.insert_approval(&approval("ap", ApprovalState::Pending, 10)).unwrap();
    assert_eq!(a.approval("ap").unwrap().map(|r| r.state), Some(ApprovalState::Pending));
    vote(&*a, "ap", "bob", None).unwrap();
    assert_eq!(
        ids(&n.approval("ap").unwrap().unwrap().decisions, |d| &d.identity),
        ["bob"]
    );

    a.insert_invocation(&invocation("inv", InvocationStatus::Approved, 10))
        .unwrap();
    assert!(n.claim_invocation("inv", &[InvocationStatus::Approved], "9:z").unwrap());
    assert_eq!(a.invocation("inv").unwrap().unwrap().runner.as_deref(), Some("9:z"));
    assert!(!a.claim_invocation("inv", &[InvocationStatus::Approved], "8:y").unwrap());
    assert_eq!(
        ids(&a.invocations(Some(InvocationStatus::Running), 10).unwrap(), |r| &r.id),
        ["inv"]
    );
}

fn nodes_opening_at_once_all_work(b: &Backend) {
    // A fresh database and several nodes starting together (the schema is
    // made, or migrated, once, whoever comes first).
    const NODES: usize = 6;
    let barrier = Barrier::new(NODES);
    let stores: Vec<Arc<dyn Store>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..NODES)
            .map(|i| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let store = b.open();
                    add(
                        &*store,
                        &token(&format!("t{i}"), &format!("node-{i}"), IdentityKind::Agent, i as u64),
                        i as u32,
                    );
                    store
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for store in &stores {
        assert_eq!(store.tokens().unwrap().len(), NODES);
    }
}

fn heartbeats_tell_which_processes_live_and_leaving_ends_one_at_once(b: &Backend) {
    let (s, other) = (b.open(), b.open());
    // Only a store other machines share needs heartbeats to know whether
    // a process lives (on one machine, pids and lease files tell).
    assert_eq!(s.shared(), b.kind == Kind::Postgres);
    let now = airlock::time::now_micros();
    // A node whose own clock is far off: on PostgreSQL the database's
    // clock stamps and judges heartbeats, so this changes nothing there.
    let skewed = match b.kind {
        Kind::Postgres => now - 3_600_000_000,
        Kind::Sqlite => now,
    };
    let node = |id: &str, last_seen: u64| NodeRecord {
        id: id.into(),
        version: "0.1.0".into(),
        address: Some(format!("{id}.internal:8080")),
        started_at: now - 1_000,
        last_seen,
        silent_for_micros: 0,
    };
    // A heartbeat has a deadline (3 s on PostgreSQL), and one that misses
    // it is sent again at the next beat; so here, on a test server whose
    // disk can stall for seconds while the rest of the suite syncs, any
    // other failure, or five misses in a row, fails the test.
    let beat = |store: &dyn Store, node: &NodeRecord, processes: &[&str]| {
        for _ in 0..4 {
            match store.heartbeat(node, processes) {
                Err(e) if e.is_unreachable() => eprintln!("heartbeat missed its deadline, sent again: {}", e.0),
                other => return other.unwrap(),
            }
        }
        store.heartbeat(node, processes).unwrap()
    };
    beat(&*s, &node("n1", skewed), &["p1", "p2"]);
    beat(&*other, &node("n2", now), &["p3"]);
    let nodes = other.nodes().unwrap();
    let ids: Vec<(&str, &str, Option<&str>)> = nodes
        .iter()
        .map(|n| (n.id.as_str(), n.version.as_str(), n.address.as_deref()))
        .collect();
    assert_eq!(
        ids,
        [
            ("n1", "0.1.0", Some("n1.internal:8080")),
            ("n2", "0.1.0", Some("n2.internal:8080"))
        ]
    );
    let stale = u64::try_from(airlock::store::PROCESS_STALE.as_micros()).unwrap();
    assert!(nodes.iter().all(|n| n.silent_for_micros < stale), "{nodes:?}");
    let p1 = other.process("p1").unwrap().unwrap();
    assert_eq!(p1.node, "n1");
    assert!(p1.silent_for_micros < stale, "{p1:?}");
    assert_eq!(s.process("no-such-process").unwrap(), None);
    for id in ["p1", "p2", "p3"] {
        assert!(airlock::store::process_alive(&*other, id, 0).unwrap(), "{id}");
    }
    // Never seen: alive only while the work naming it is recent.
    assert!(airlock::store::process_alive(&*s, "p9", now).unwrap());
    assert!(!airlock::store::process_alive(&*s, "p9", 0).unwrap());

    // A process that leaves is taken for dead at once, on every node.
    s.leave(&["p1"]).unwrap();
    assert!(!airlock::store::process_alive(&*other, "p1", now).unwrap());
    assert!(airlock::store::process_alive(&*other, "p2", 0).unwrap());
    // Silent for longer than PROCESS_STALE: dead too.
    match &b._db {
        Some(db) => {
            db.psql(&format!(
                "UPDATE processes SET last_seen = last_seen - {} WHERE id = 'p3';",
                2 * stale
            ));
        }
        None => beat(&*other, &node("n2", now - 2 * stale), &["p3"]),
    }
    assert!(!airlock::store::process_alive(&*s, "p3", now).unwrap());
    // A later heartbeat brings it back.
    beat(&*other, &node("n2", airlock::time::now_micros()), &["p3"]);
    assert!(airlock::store::process_alive(&*s, "p3", 0).unwrap());
}

fn console_sessions_end_when_idle_and_are_touched_sparingly(b: &Backend) {
    let (s, other) = (b.open(), b.open());
    let session = |n: u32, last_seen: u64| SessionRecord {
        id_hash: hash(1000 + n),
        token_hash: hash(n),
        csrf: format!("csrf-{n}"),
        created_at: 100,
        last_seen,
    };
    s.create_session(&session(1, 100)).unwrap();
    s.create_session(&session(2, 100)).unwrap();
    assert!(s.create_session(&session(1, 500)).is_err(), "an id is taken once");
    assert_eq!(s.session(&hash(9999), 0, 150, 10).unwrap(), None);

    // Seen within `touch_after`: returned, not written.
    assert_eq!(other.session(&hash(1001), 50, 105, 10).unwrap(), Some(session(1, 100)));
    assert_eq!(s.session(&hash(1001), 0, 100, 1_000).unwrap(), Some(session(1, 100)));
    // Later: its `last_seen` moves, for every node.
    assert_eq!(other.session(&hash(1001), 50, 200, 10).unwrap(), Some(session(1, 200)));
    assert_eq!(s.session(&hash(1001), 0, 200, 1_000).unwrap(), Some(session(1, 200)));

    // Idle since before `idle_since`: gone, and removed.
    assert_eq!(s.session(&hash(1002), 150, 300, 10).unwrap(), None);
    assert_eq!(other.session(&hash(1002), 0, 300, 10).unwrap(), None);

    s.create_session(&session(3, 400)).unwrap();
    // Pruning removes the idle ones and counts those that live on.
    assert_eq!(other.prune_sessions(300).unwrap(), 1);
    assert_eq!(s.session(&hash(1001), 0, 400, 1_000).unwrap(), None);
    other.remove_session(&hash(1003)).unwrap();
    assert_eq!(s.session(&hash(1003), 0, 400, 1_000).unwrap(), None);
    assert_eq!(s.prune_sessions(0).unwrap(), 0);
}

// ---- usage windows ----------------------------------------------------

fn charge(key: &str, start: i64, amount: i64, max: i64) -> Charge {
    Charge {
        key: key.into(),
        window_start: start,
        window_end: start + 3_600_000_000,
        amount,
        max,
    }
}

/// 32 callers on two nodes, released together, each charging a count
/// window of 20 five times and a sum window of 1,000 with 7 each time:
/// exactly 20 count charges and 142 sum charges (994) succeed, never one
/// more, and every refusal reports a full window.
fn windows_never_go_past_their_limit_under_32_concurrent_callers(b: &Backend) {
    const CALLERS: usize = 32;
    let nodes = [b.open(), b.open()];
    let barrier = Barrier::new(CALLERS);
    let (counted, summed) = (Mutex::new(0_usize), Mutex::new(0_usize));
    std::thread::scope(|scope| {
        for i in 0..CALLERS {
            let (store, barrier, counted, summed) = (nodes[i % 2].clone(), &barrier, &counted, &summed);
            scope.spawn(move || {
                barrier.wait();
                for _ in 0..5 {
                    match store.charge(&[charge("act\u{1f}per-hour\u{1f}*", 0, 1, 20)]).unwrap() {
                        Ok(()) => *counted.lock().unwrap() += 1,
                        Err(Exceeded { index, used }) => assert_eq!((index, used), (0, 20)),
                    }
                    match store.charge(&[charge("act\u{1f}budget\u{1f}*", 0, 7, 1000)]).unwrap() {
                        Ok(()) => *summed.lock().unwrap() += 1,
                        Err(Exceeded { index, used }) => {
                            assert_eq!(index, 0);
                            assert!(used + 7 > 1000 && used <= 1000, "{used}");
                        }
                    }
                }
            });
        }
    });
    assert_eq!(*counted.lock().unwrap(), 20);
    assert_eq!(*summed.lock().unwrap(), 1000 / 7);
    // A full window refuses on either node; the next period starts empty.
    for node in &nodes {
        assert_eq!(
            node.charge(&[charge("act\u{1f}per-hour\u{1f}*", 0, 1, 20)]).unwrap(),
            Err(Exceeded { index: 0, used: 20 })
        );
    }
    assert_eq!(
        nodes[0]
            .charge(&[charge("act\u{1f}per-hour\u{1f}*", 3_600_000_000, 1, 20)])
            .unwrap(),
        Ok(())
    );
    // Ended windows are pruned.
    assert_eq!(nodes[1].prune_usage(3_600_000_001).unwrap(), 2);
}

/// A charge of two windows that fails on the second leaves the first as
/// it was.
fn a_charge_of_several_windows_is_all_or_nothing(b: &Backend) {
    let s = b.open();
    let caller_window = charge("act\u{1f}mine\u{1f}bot", 0, 1, 10);
    let everyone = charge("act\u{1f}all\u{1f}*", 0, 1, 1);
    assert_eq!(s.charge(&[caller_window.clone(), everyone.clone()]).unwrap(), Ok(()));
    assert_eq!(
        s.charge(&[caller_window.clone(), everyone.clone()]).unwrap(),
        Err(Exceeded { index: 1, used: 1 })
    );
    // The caller's window still has 9 left, not 8: fill it exactly.
    for _ in 0..9 {
        assert_eq!(s.charge(std::slice::from_ref(&caller_window)).unwrap(), Ok(()));
    }
    assert_eq!(
        s.charge(std::slice::from_ref(&caller_window)).unwrap(),
        Err(Exceeded { index: 0, used: 10 })
    );
}
