//! Scripted interaction scenarios (docs/protocol.md). Each test drives a
//! small cluster by hand: which node ticks, which message is delivered or
//! lost, when a write becomes durable, who crashes. The harness checks the
//! safety properties of §11 after every step.

mod harness;

use harness::{data_of, test_options, Cluster, ELECTION_TIMEOUT_MS, HEARTBEAT_MS};
use runnel_consensus::{
    Body, Config, Entry, HardState, Message, Payload, ProposeError, Role, REPAIR_INDEX_UNKNOWN,
};
use runnel_io::NodeId;

const ET: u64 = ELECTION_TIMEOUT_MS;

fn is_append(message: &Message) -> bool {
    matches!(message.body, Body::Append { .. })
}

fn config(voters: &[NodeId], learners: &[NodeId]) -> Config {
    Config {
        voters: voters.iter().copied().collect(),
        learners: learners.iter().copied().collect(),
    }
}

fn payload_at(cluster: &Cluster, node: NodeId, index: u64) -> Option<(u64, Payload)> {
    cluster
        .node(node)
        .log()
        .entry(index)
        .map(|entry| (entry.term, entry.payload.clone()))
}

fn data(bytes: &[u8]) -> Payload {
    Payload::Data(bytes.to_vec())
}

// ----- §4: elections -----

/// §4.2, §4.4: a node cut off from the leader keeps campaigning in pre-vote,
/// which changes nobody's term, its own included; a peer that still hears
/// from the leader refuses the pre-vote; on rejoining, the node follows the
/// leader without an election.
#[test]
fn pre_vote_keeps_an_isolated_node_from_disrupting_the_group() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let term = c.node(1).term();

    c.isolate(3);
    for i in 0..5u8 {
        c.propose(1, &[i]);
    }
    c.run_for(10 * ET);
    assert_eq!(
        c.node(3).term(),
        term,
        "pre-votes do not bump the pre-candidate's term"
    );
    assert_eq!(c.node(3).role(), Role::PreCandidate);
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(1).term(), term);
    assert_eq!(c.node(2).term(), term);

    // 3 reaches 2 but not the leader: 2 hears from the leader and refuses.
    c.heal();
    c.partition(&[1], &[3]);
    c.delivered.clear();
    c.run_for(10 * ET);
    let pre_votes_to_2 = c
        .delivered
        .iter()
        .filter(|m| m.from == 3 && m.to == 2 && matches!(m.body, Body::PreVote { .. }))
        .count();
    assert!(pre_votes_to_2 > 0, "3 kept asking 2");
    assert!(c.delivered.iter().all(|m| !(m.from == 2
        && m.to == 3
        && matches!(m.body, Body::PreVoteResponse { granted: true }))));
    assert_eq!(c.node(2).term(), term);
    assert_eq!(c.node(3).term(), term);
    assert_eq!(c.node(1).role(), Role::Leader);

    // Rejoining: 3 follows the same leader in the same term and catches up.
    c.heal();
    c.run_for(2 * HEARTBEAT_MS);
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(1).term(), term);
    assert_eq!(c.node(3).role(), Role::Follower);
    assert_eq!(c.node(3).leader(), Some(1));
    assert_eq!(c.node(3).commit_index(), c.node(1).commit_index());
    assert_eq!(data_of(&c.nodes[&3].applied).len(), 5);
}

/// §4.3: a node whose log is behind cannot win, not even the pre-vote,
/// once the others no longer hear from a leader.
#[test]
fn a_node_with_a_stale_log_is_not_elected() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    c.propose(1, b"x");
    c.stabilize();
    c.crash(1);
    c.heal();
    // 3 times out first and asks 2; 2 refuses (its log is longer).
    c.tick_only(&[2, 3], 2 * ET);
    c.drop_where(|m| m.from == 2);
    c.ready_all();
    c.drop_where(|m| m.from == 2 && matches!(m.body, Body::PreVote { .. }));
    c.stabilize();
    assert_ne!(c.node(3).role(), Role::Leader);
    assert!(c
        .delivered
        .iter()
        .any(|m| m.from == 2 && m.to == 3 && m.body == Body::PreVoteResponse { granted: false }));
    // 2 can win with 3's vote: its log is at least as up to date.
    c.campaign(2, &[2, 3]);
    c.settle();
    assert_eq!(c.node(3).leader(), Some(2));
    assert_eq!(data_of(&c.nodes[&3].applied), vec![b"x".to_vec()]);
}

/// §4.4, §5.1: an old leader cut off from the group keeps its term until it
/// hears a higher one; its appends are refused by any node of the new term,
/// and the refusal makes it step down; its uncommitted entry is truncated.
#[test]
fn a_stale_leader_is_refused_and_steps_down() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let old_term = c.node(1).term();

    c.partition(&[1], &[2, 3]);
    c.campaign(2, &[2, 3]);
    c.stabilize();
    let new_term = c.node(2).term();
    assert!(new_term > old_term);
    // 1 was not ticked, so check-quorum has not run: it still leads.
    assert_eq!(c.node(1).role(), Role::Leader);
    let (index, _) = c.propose(1, b"stale");
    c.ready(1);

    c.heal();
    c.delivered.clear();
    // 1's append reaches 3, which refuses it with the new term.
    assert!(c.deliver_where(|m| m.from == 1 && m.to == 3 && is_append(m)) > 0);
    assert_eq!(
        payload_at(&c, 3, index).map(|(term, _)| term),
        Some(new_term)
    );
    c.ready(3);
    let refusal = c
        .in_flight(|m| m.from == 3 && m.to == 1)
        .pop()
        .expect("3 answered");
    assert_eq!(refusal.term, new_term);
    assert!(matches!(
        refusal.body,
        Body::AppendResponse { success: false, .. }
    ));
    c.deliver_where(|m| m.from == 3 && m.to == 1);
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).term(), new_term);

    // The new leader's log replaces the stale entry.
    c.run_for(2 * HEARTBEAT_MS);
    assert_eq!(c.node(1).leader(), Some(2));
    assert_ne!(payload_at(&c, 1, index), Some((old_term, data(b"stale"))));
    assert_eq!(c.node(1).log().last_index(), c.node(2).log().last_index());
    assert!(c
        .committed
        .values()
        .all(|(e, _)| e.payload != data(b"stale")));
}

/// §4.4: a leader that has not heard from a majority for an election
/// timeout steps down on its own, without changing its term or anyone's.
#[test]
fn check_quorum_makes_an_isolated_leader_step_down_alone() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let term = c.node(1).term();
    c.isolate(1);
    let mut elapsed = 0;
    while c.node(1).role() == Role::Leader {
        c.tick_only(&[1], HEARTBEAT_MS);
        c.stabilize();
        elapsed += HEARTBEAT_MS;
        assert!(
            elapsed <= 2 * ET + HEARTBEAT_MS,
            "still leading after {elapsed} ms"
        );
    }
    assert!(elapsed >= ET - HEARTBEAT_MS, "stepped down too early");
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).leader(), None);
    assert_eq!(c.node(1).term(), term);
    assert_eq!(c.node(2).term(), term);
    assert_eq!(c.node(3).term(), term);
    assert!(matches!(
        c.node_mut(1).propose(b"x".to_vec()),
        Err(ProposeError::NotLeader { leader_hint: None })
    ));
}

// ----- §3.1: the vote record -----

/// §3.1: a grant leaves only after the vote record is durable, and so does
/// a candidate's request. A voter that crashes before its record is durable
/// has granted nothing.
#[test]
fn a_vote_grant_waits_for_the_durable_vote_record() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.set_auto_persist(1, false);
    c.set_auto_persist(2, false);
    c.set_auto_persist(3, false);
    c.tick_only(&[1], 2 * ET);
    assert_eq!(c.node(1).role(), Role::PreCandidate);
    c.ready(1);
    c.deliver_where(|m| matches!(m.body, Body::PreVote { .. }));
    // Pre-votes change no state: the answers need no write.
    c.ready(2);
    c.ready(3);
    assert!(c.nodes[&2].readys.last().unwrap().hard_state.is_none());
    c.deliver_where(|m| matches!(m.body, Body::PreVoteResponse { .. }));
    assert_eq!(c.node(1).role(), Role::Candidate);
    c.ready(1);
    let record = c.nodes[&1].readys.last().unwrap().clone();
    assert_eq!(
        record.hard_state,
        Some(HardState {
            term: 1,
            voted_for: Some(1),
            repair_index: 0
        })
    );
    assert!(record
        .persisted_messages
        .iter()
        .all(|m| matches!(m.body, Body::Vote { .. })));
    assert_eq!(record.persisted_messages.len(), 2);
    assert!(c
        .in_flight(|m| matches!(m.body, Body::Vote { .. }))
        .is_empty());
    c.persist_all(1);
    assert_eq!(
        c.in_flight(|m| matches!(m.body, Body::Vote { .. })).len(),
        2
    );

    c.deliver_where(|m| matches!(m.body, Body::Vote { .. }));
    c.ready(2);
    c.ready(3);
    for voter in [2, 3] {
        let record = c.nodes[&voter].readys.last().unwrap().clone();
        assert_eq!(record.hard_state.unwrap().voted_for, Some(1));
        assert_eq!(record.persisted_messages.len(), 1);
        assert!(record.messages.is_empty());
    }
    assert!(c
        .in_flight(|m| matches!(m.body, Body::VoteResponse { .. }))
        .is_empty());

    // 2 crashes before its record is durable: its grant never existed.
    c.crash(2);
    c.restart(2);
    assert_eq!(c.node(2).term(), 0);
    assert_eq!(c.node(2).voted_for(), None);
    assert_eq!(c.nodes[&2].disk.hard_state, HardState::default());

    // 3's record becomes durable, its grant leaves, and 1 wins with it.
    c.persist_all(3);
    assert_eq!(
        c.in_flight(|m| matches!(m.body, Body::VoteResponse { .. }))
            .len(),
        1
    );
    c.deliver_where(|m| matches!(m.body, Body::VoteResponse { .. }));
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.nodes[&3].disk.hard_state.voted_for, Some(1));
}

/// §10.1: entries and the vote record are written separately; a replica
/// restarted with entries of a term newer than its record adopts that term
/// without a vote, and rewrites the record.
#[test]
fn restart_adopts_the_term_of_durable_entries() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"a");
    c.stabilize();
    let term = c.node(2).term();
    c.crash(2);
    // Simulate a crash after the entries were synced but not the record.
    c.nodes.get_mut(&2).unwrap().disk.hard_state = HardState::default();
    c.restart(2);
    assert_eq!(c.node(2).term(), term);
    assert_eq!(c.node(2).voted_for(), None);
    c.ready(2);
    let record = c.nodes[&2].readys.last().unwrap();
    assert_eq!(record.hard_state.map(|h| h.term), Some(term));
    // §10.2: the commit point is re-learned from the leader.
    assert_eq!(c.node(2).commit_index(), 0);
    c.run_for(2 * HEARTBEAT_MS);
    assert_eq!(c.node(2).commit_index(), c.node(1).commit_index());
    assert_eq!(data_of(&c.nodes[&2].applied), vec![b"a".to_vec()]);
}

// ----- §5: replication and the commit rule -----

/// §5.4, the Raft paper's figure 8: an entry of an earlier term stored on a
/// majority is not committed by counting replicas; a leader that could be
/// elected without it may overwrite it.
#[test]
fn an_earlier_term_entry_on_a_majority_is_not_committed() {
    let mut c = Cluster::with_options(&[1, 2, 3, 4, 5], |id| {
        let mut options = test_options(id);
        options.append_entries_max = 1;
        options
    });
    // (a) 1 leads term 1 and stores X at index 2 on itself and 2 only.
    c.elect(1);
    assert_eq!(c.node(1).term(), 1);
    c.partition(&[1, 2], &[3, 4, 5]);
    let (x_index, x_term) = c.propose(1, b"X");
    assert_eq!((x_index, x_term), (2, 1));
    c.stabilize();
    assert_eq!(payload_at(&c, 2, 2), Some((1, data(b"X"))));
    assert_eq!(c.node(1).commit_index(), 1);
    c.crash(1);

    // (b) 5 leads term 2 with 3 and 4, stores its no-op at index 2 and
    // crashes before sending it.
    c.campaign(5, &[3, 4, 5]);
    assert_eq!(c.node(5).term(), 2);
    c.ready(5);
    c.drop_where(|m| m.from == 5);
    assert_eq!(payload_at(&c, 5, 2), Some((2, Payload::Noop)));
    c.crash(5);

    // (c) 1 restarts and leads term 3 (it learns term 2 from a refusal
    // first). It brings X to 3 and 4, so X is on four of five; every
    // append that would store its term-3 no-op anywhere is lost.
    c.heal();
    c.restart(1);
    c.campaign(1, &[1, 2, 3, 4]);
    assert_eq!(c.node(1).term(), 3);
    for _ in 0..20 {
        c.ready_all();
        let logs: Vec<(NodeId, runnel_consensus::log::Log)> = c
            .up_ids()
            .into_iter()
            .map(|id| (id, c.node(id).log().clone()))
            .collect();
        c.drop_where(|m| match &m.body {
            Body::Append {
                prev_index,
                prev_term,
                entries,
                ..
            } => {
                let receiver = logs.iter().find(|(id, _)| *id == m.to);
                entries.iter().any(|e| e.term == 3)
                    && receiver.is_some_and(|(_, log)| log.term_at(*prev_index) == Some(*prev_term))
            }
            _ => false,
        });
        if c.network.is_empty() {
            break;
        }
        for message in std::mem::take(&mut c.network) {
            c.deliver_message(message);
        }
    }
    for node in [2, 3, 4] {
        assert_eq!(payload_at(&c, node, 2), Some((1, data(b"X"))));
    }
    assert_eq!(c.node(1).match_index(3), Some(2));
    assert_eq!(c.node(1).match_index(4), Some(2));
    // (1 restarted: it knows nothing committed beyond its snapshot, §10.2.)
    assert!(
        c.node(1).commit_index() < x_index,
        "an entry of an earlier term is not committed by counting replicas"
    );
    assert!(!c.node(1).is_leader_ready());

    // (d) 1 crashes; 5 restarts and wins term 4 with 2, 3 and 4 (its last
    // term, 2, beats their 1), then overwrites X. Nothing committed is lost.
    c.crash(1);
    c.heal();
    c.restart(5);
    c.campaign(5, &[2, 3, 4, 5]);
    assert_eq!(c.node(5).term(), 4);
    c.stabilize();
    for node in [2, 3, 4, 5] {
        assert_eq!(payload_at(&c, node, 2), Some((2, Payload::Noop)));
    }
    assert!(c.applied.values().all(|e| e.payload != data(b"X")));
    assert_eq!(c.node(5).commit_index(), 3);
}

/// §5.4, the other branch of figure 8: once the leader stores an entry of
/// its own term on a majority, the earlier entry before it commits too, and
/// the node that could have overwritten it can no longer be elected.
#[test]
fn an_entry_of_the_current_term_commits_the_earlier_ones() {
    let mut c = Cluster::new(&[1, 2, 3, 4, 5]);
    c.elect(1);
    c.partition(&[1, 2], &[3, 4, 5]);
    c.propose(1, b"X");
    c.stabilize();
    c.crash(1);
    c.campaign(5, &[3, 4, 5]);
    c.ready(5);
    c.drop_where(|m| m.from == 5);
    c.crash(5);
    c.heal();
    c.restart(1);
    c.campaign(1, &[1, 2, 3, 4]);
    c.partition(&[1], &[4]);
    c.stabilize();
    assert_eq!(c.node(1).commit_index(), 3);
    assert!(c.node(1).is_leader_ready());
    assert_eq!(c.committed[&2].0.payload, data(b"X"));

    c.crash(1);
    c.heal();
    c.restart(5);
    // 5's log (last term 2) is behind 2's and 3's (last term 3): those
    // refuse it, so it cannot win, and a majority elects one of them.
    c.run_for(20 * ET);
    let leader = c.leader().expect("a leader");
    assert!([2, 3].contains(&leader), "leader {leader}");
    assert_eq!(c.node(5).log().entry(2).unwrap().payload, data(b"X"));
    assert_eq!(data_of(&c.nodes[&5].applied), vec![b"X".to_vec()]);
}

/// §5.3: an uncommitted suffix is truncated by a leader of a later term,
/// after rejections whose hints skip over the follower's missing entries
/// and then over its whole conflicting term.
#[test]
fn an_uncommitted_conflicting_suffix_is_truncated() {
    let mut c = Cluster::new(&[1, 2, 3, 4, 5]);
    c.elect(1);
    c.partition(&[1, 2], &[3, 4, 5]);
    c.propose(1, b"x");
    c.propose(1, b"y");
    c.stabilize();
    assert_eq!(c.node(2).log().last_index(), 3);
    assert_eq!(c.node(2).commit_index(), 1);

    c.campaign(3, &[3, 4, 5]);
    c.stabilize();
    c.propose(3, b"d");
    c.propose(3, b"e");
    c.settle();
    assert_eq!(c.node(4).commit_index(), 4);
    c.crash(3);

    // 4 leads term 3 with 5 and 1 (1 stepped down: check-quorum).
    c.heal();
    c.delivered.clear();
    c.campaign(4, &[1, 2, 4, 5]);
    assert_eq!(c.node(4).term(), 3);
    c.stabilize();

    let answers: Vec<Body> = c
        .delivered
        .iter()
        .filter(|m| m.from == 2 && m.to == 4 && m.term == 3)
        .filter(|m| matches!(m.body, Body::AppendResponse { .. }))
        .map(|m| m.body.clone())
        .collect();
    // 4 led from index 5: its first probe follows (4, 2). 2's log ends at
    // 3: hint 4, just past it.
    assert_eq!(
        answers[0],
        Body::AppendResponse {
            success: false,
            match_index: 4,
            reject_hint: 4,
            read_round: 0,
            lacks_log: false,
        }
    );
    // Then after (3, 2): 2 holds (3, 1); hint: the start of its term-1 run
    // above its commit point.
    assert_eq!(
        answers[1],
        Body::AppendResponse {
            success: false,
            match_index: 3,
            reject_hint: 2,
            read_round: 0,
            lacks_log: false,
        }
    );
    assert!(matches!(
        answers[2],
        Body::AppendResponse { success: true, .. }
    ));

    // 2 rewrote its log from index 2 in one write.
    assert!(c.nodes[&2]
        .readys
        .iter()
        .any(|r| r.entries.first().map(|e| (e.index, e.term)) == Some((2, 2))));
    for node in [1, 2, 4, 5] {
        assert_eq!(c.node(node).log().entries(), c.node(4).log().entries());
        assert_eq!(
            data_of(&c.nodes[&node].applied),
            vec![b"d".to_vec(), b"e".to_vec()]
        );
    }
}

/// §5.5: the leader streams at most `inflight_appends_max` appends of at
/// most `append_entries_max` entries, and recovers from lost appends by
/// probing.
#[test]
fn flow_control_bounds_appends_in_flight_and_recovers_from_loss() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let options = test_options(1);
    for i in 0..40u8 {
        c.propose(1, &[i]);
    }
    c.ready(1);
    let to_2: Vec<Message> = c.in_flight(|m| m.to == 2 && is_append(m));
    assert_eq!(to_2.len(), options.inflight_appends_max);
    for message in &to_2 {
        let Body::Append { entries, .. } = &message.body else {
            unreachable!()
        };
        assert!(entries.len() <= options.append_entries_max);
    }
    // Every append to 2 is lost; a heartbeat exposes the gap and the leader
    // probes back.
    c.drop_where(|m| m.to == 2);
    c.stabilize();
    assert!(c.node(2).log().last_index() < 41);
    c.run_for(5 * HEARTBEAT_MS);
    assert_eq!(c.node(2).log().last_index(), 41);
    assert_eq!(c.node(2).commit_index(), 41);
}

/// §5.4: a single voter commits on its own durable write.
#[test]
fn a_single_voter_commits_on_its_own() {
    let mut c = Cluster::new(&[1]);
    c.set_auto_persist(1, false);
    c.tick_all(2 * ET);
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(1).term(), 1);
    c.ready(1);
    assert_eq!(c.node(1).commit_index(), 0, "the no-op is not durable yet");
    c.persist_all(1);
    assert_eq!(c.node(1).commit_index(), 1);
    assert!(c.node(1).is_leader_ready());
    c.propose(1, b"a");
    c.propose(1, b"b");
    c.ready(1);
    assert_eq!(c.node(1).commit_index(), 1);
    c.persist_all(1);
    assert_eq!(c.node(1).commit_index(), 3);
    c.ready(1);
    assert_eq!(
        data_of(&c.nodes[&1].applied),
        vec![b"a".to_vec(), b"b".to_vec()]
    );
    // Restarting, it re-elects itself and re-learns its commit point.
    c.crash(1);
    c.restart(1);
    assert_eq!(c.node(1).commit_index(), 0);
    c.tick_all(2 * ET);
    c.ready(1);
    c.persist_all(1);
    c.ready(1);
    assert_eq!(c.node(1).term(), 2);
    assert_eq!(c.node(1).commit_index(), 4);
    assert_eq!(
        data_of(&c.nodes[&1].applied),
        vec![b"a".to_vec(), b"b".to_vec()]
    );
}

/// §3.1: a single voter elects itself without any peer's grant, so nothing
/// made its vote record durable before it leads. Its appends (to a learner)
/// must wait for that record: otherwise a crash loses the record, the node
/// leads the same term again with different entries, and the learner holds
/// two different entries under one (index, term).
#[test]
fn a_single_voter_sends_nothing_of_its_term_before_its_vote_is_durable() {
    let mut c = Cluster::with_config(config(&[1], &[2]), test_options, 7);
    c.set_auto_persist(1, false);
    c.tick_only(&[1], 2 * ET);
    assert_eq!(c.node(1).role(), Role::Leader);
    let term = c.node(1).term();
    c.ready(1);
    c.propose(1, b"x");
    c.ready(1);
    let leaked = c.in_flight(|m| m.term == term);
    // Even with everything delivered and answered, nothing reaches 2.
    c.stabilize();

    // The crash loses the record and the entries; the node leads the same
    // term again with a different entry at index 2.
    c.crash(1);
    c.restart(1);
    assert_eq!(c.node(1).term(), 0);
    c.tick_only(&[1], 2 * ET);
    assert_eq!(c.node(1).term(), term);
    c.propose(1, b"y");
    c.persist_all(1);
    c.ready(1);
    c.persist_all(1);
    c.set_auto_persist(1, true);
    c.stabilize();
    c.run_for(2 * HEARTBEAT_MS);
    assert_eq!(c.node(2).log().entries(), c.node(1).log().entries());
    assert_eq!(data_of(&c.nodes[&2].applied), vec![b"y".to_vec()]);
    // (Without the rule, the harness's log-matching check fails above, as 2
    // stored x at (2, 1) and 1 stores y there.)
    assert!(
        leaked.is_empty(),
        "messages of term {term} left before the vote record was durable: {leaked:?}"
    );
}

// ----- §6: proposals -----

/// §6: a leader refuses proposals beyond `uncommitted_entries_max`
/// uncommitted entries, and accepts again once they commit.
#[test]
fn proposals_are_refused_under_back_pressure() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let max = test_options(1).uncommitted_entries_max;
    c.partition(&[1], &[2, 3]);
    let mut accepted = 0;
    loop {
        match c.node_mut(1).propose(vec![1]) {
            Ok(_) => accepted += 1,
            Err(error) => {
                assert_eq!(error, ProposeError::Backpressure);
                break;
            }
        }
    }
    assert_eq!(accepted, max);
    c.heal();
    c.run_for(3 * HEARTBEAT_MS);
    assert_eq!(c.node(1).commit_index(), c.node(1).log().last_index());
    assert!(c.node_mut(1).propose(vec![2]).is_ok());
}

// ----- §7: membership -----

/// §7.2: learners first, single-server changes, one at a time, only once
/// the leader committed in its term; a lagging learner is not promoted.
#[test]
fn membership_change_rules() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.campaign(1, &[1, 2, 3]);
    // Not ready: its no-op is not committed yet.
    assert!(!c.node(1).is_leader_ready());
    assert!(matches!(
        c.node_mut(1).propose_config(config(&[1, 2, 3], &[4])),
        Err(ProposeError::InvalidConfig(_))
    ));
    c.stabilize();
    assert!(c.node(1).is_leader_ready());

    let invalid = [
        config(&[1, 2, 3, 4], &[]),  // a voter must join as a learner
        config(&[1, 2], &[4]),       // two members at once
        config(&[1], &[]),           // two voters at once
        config(&[1, 2, 3], &[]),     // unchanged
        config(&[], &[1, 2, 3]),     // no voter
        config(&[1, 2, 3], &[3, 4]), // voter and learner
    ];
    for proposal in invalid {
        assert!(
            matches!(
                c.node_mut(1).propose_config(proposal.clone()),
                Err(ProposeError::InvalidConfig(_))
            ),
            "{proposal:?} accepted"
        );
    }

    c.add_empty_node(4, test_options(4));
    c.isolate(4);
    c.node_mut(1)
        .propose_config(config(&[1, 2, 3], &[4]))
        .unwrap();
    // §7.1: in force at once, on the leader.
    assert_eq!(c.node(1).config(), &config(&[1, 2, 3], &[4]));
    // One change at a time.
    assert!(matches!(
        c.node_mut(1).propose_config(config(&[1, 2], &[4])),
        Err(ProposeError::InvalidConfig(_))
    ));
    c.stabilize();
    // The learner is cut off: it lags, so it is not promoted.
    for i in 0..10u8 {
        c.propose(1, &[i]);
    }
    c.stabilize();
    assert!(matches!(
        c.node_mut(1).propose_config(config(&[1, 2, 3, 4], &[])),
        Err(ProposeError::InvalidConfig(_))
    ));
    c.heal();
    c.run_for(3 * HEARTBEAT_MS);
    assert_eq!(c.node(4).config(), &config(&[1, 2, 3], &[4]));
    assert_eq!(c.node(4).commit_index(), c.node(1).commit_index());
    c.node_mut(1)
        .propose_config(config(&[1, 2, 3, 4], &[]))
        .unwrap();
    c.settle();
    assert_eq!(c.node(4).config(), &config(&[1, 2, 3, 4], &[]));
    // Demoting a voter to learner is one change too.
    c.node_mut(1)
        .propose_config(config(&[1, 2, 3], &[4]))
        .unwrap();
    c.settle();
    assert_eq!(c.node(4).config(), &config(&[1, 2, 3], &[4]));
}

/// §7.2: learners and nodes that know no membership never campaign.
#[test]
fn learners_and_empty_nodes_never_campaign() {
    let mut c = Cluster::with_config(config(&[1, 2, 3], &[4]), test_options, 7);
    c.add_empty_node(5, test_options(5));
    c.tick_only(&[4, 5], 10 * ET);
    c.ready_all();
    assert_eq!(c.node(4).role(), Role::Follower);
    assert_eq!(c.node(5).role(), Role::Follower);
    // The learner, hearing no leader, only asks the voters whether it was
    // removed (§7.4); the empty node, which knows no membership, is silent.
    assert!(!c.network.is_empty());
    assert!(c
        .network
        .iter()
        .all(|m| m.from == 4 && matches!(m.body, Body::TermQuery)));
}

/// §7.4: voter 4, cut off while the others removed it, campaigns when it
/// is back; the members answer `Removed`, and it campaigns no more. Without
/// the rule it would ask for votes forever (and keep its files forever).
#[test]
fn a_voter_removed_behind_its_back_is_told_and_stops_campaigning() {
    let mut c = Cluster::new(&[1, 2, 3, 4]);
    c.elect(1);
    c.isolate(4);
    c.node_mut(1)
        .propose_config(config(&[1, 2, 3], &[]))
        .unwrap();
    c.settle();
    assert_eq!(c.node(1).config(), &config(&[1, 2, 3], &[]));
    assert_eq!(c.node(4).config(), &config(&[1, 2, 3, 4], &[]));
    assert!(!c.node(4).removed());
    c.heal();
    c.tick_only(&[4], 2 * ET);
    c.stabilize();
    assert!(c.node(4).removed(), "the members' answer reached 4");
    assert_eq!(c.leader(), Some(1), "the cluster was not disturbed");
    c.tick_only(&[4], 10 * ET);
    c.ready(4);
    assert!(
        c.network.iter().all(|m| m.from != 4),
        "a removed replica campaigns no more: {:?}",
        c.network
    );
}

fn group_with_learner_4() -> Cluster {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.add_empty_node(4, test_options(4));
    c.node_mut(1)
        .propose_config(config(&[1, 2, 3], &[4]))
        .unwrap();
    c.stabilize();
    c.propose(1, b"a");
    c.settle();
    assert_eq!(c.node(4).config(), &config(&[1, 2, 3], &[4]));
    assert_eq!(data_of(&c.nodes[&4].applied), vec![b"a".to_vec()]);
    c
}

/// §7.1, §7.2: the leader crashes with the promotion of learner 4
/// uncommitted but stored on 2 and 4. The change is in force where it is
/// stored: 2 campaigns in the four-voter membership, wins with 3 and 4, and
/// commits it.
#[test]
fn membership_change_survives_a_leader_crash_when_a_new_leader_has_it() {
    let mut c = group_with_learner_4();
    let (index, _) = c
        .node_mut(1)
        .propose_config(config(&[1, 2, 3, 4], &[]))
        .unwrap();
    c.ready(1);
    c.drop_where(|m| m.from == 1 && m.to == 3);
    c.deliver_where(|m| m.from == 1 && (m.to == 2 || m.to == 4));
    c.ready(2);
    c.ready(4);
    c.drop_where(|m| m.to == 1);
    assert!(c.node(1).commit_index() < index);
    c.crash(1);

    assert_eq!(c.node(2).config(), &config(&[1, 2, 3, 4], &[]));
    assert_eq!(c.node(3).config(), &config(&[1, 2, 3], &[4]));
    c.campaign(2, &[2, 3, 4]);
    c.stabilize();
    assert!(c.node(2).commit_index() > index);
    for node in [2, 3, 4] {
        assert_eq!(c.node(node).config(), &config(&[1, 2, 3, 4], &[]));
    }
    // Four voters: 2 and one more are not a quorum.
    c.partition(&[2, 3], &[4]);
    c.propose(2, b"b");
    c.stabilize();
    assert_eq!(c.node(2).commit_index(), c.node(2).log().last_index() - 1);
}

/// §7.1: the same crash, but the promotion reached no one: 3 is elected in
/// the old membership, and 1's copy of the change is truncated when it
/// returns, reverting its membership.
#[test]
fn membership_change_is_lost_with_the_leader_when_no_one_has_it() {
    let mut c = group_with_learner_4();
    let (index, term) = c
        .node_mut(1)
        .propose_config(config(&[1, 2, 3, 4], &[]))
        .unwrap();
    c.ready(1);
    c.drop_where(|m| m.from == 1);
    c.crash(1);
    assert!(matches!(
        c.nodes[&1].disk.entries.last().map(|e| &e.payload),
        Some(Payload::Config(_))
    ));

    // In the old membership, 3 needs one vote besides its own; 4 (a learner
    // there) is not asked.
    c.delivered.clear();
    c.campaign(3, &[2, 3, 4]);
    assert!(!c
        .delivered
        .iter()
        .any(|m| m.to == 4 && matches!(m.body, Body::Vote { .. } | Body::PreVote { .. })));
    c.stabilize();
    c.restart(1);
    // 1 reads the change from its own log: in force there until truncated.
    assert_eq!(c.node(1).config(), &config(&[1, 2, 3, 4], &[]));
    c.run_for(3 * HEARTBEAT_MS);
    assert_eq!(c.node(1).leader(), Some(3));
    assert_ne!(payload_at(&c, 1, index).map(|(t, _)| t), Some(term));
    for node in [1, 2, 3, 4] {
        assert_eq!(c.node(node).config(), &config(&[1, 2, 3], &[4]));
    }
}

/// §7.3: a leader that removes itself keeps leading until the change is
/// committed, then steps down; the others elect a leader among themselves.
#[test]
fn a_removed_leader_steps_down_after_commit() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let (index, _) = c.node_mut(1).propose_config(config(&[2, 3], &[])).unwrap();
    assert_eq!(c.node(1).role(), Role::Leader);
    c.ready(1);
    assert_eq!(c.node(1).role(), Role::Leader);
    c.stabilize();
    assert_eq!(c.node(1).role(), Role::Follower);
    assert!(c.node(2).commit_index() >= index || c.node(1).commit_index() >= index);
    c.run_for(3 * ET);
    let leader = c.leader().expect("a leader");
    assert!([2, 3].contains(&leader));
    c.propose(leader, b"after");
    c.stabilize();
    // The removed node can no longer campaign.
    c.run_for(5 * ET);
    assert_ne!(c.node(1).role(), Role::PreCandidate);
}

/// §7.3: in a group of two voters, the leader removes itself and loses
/// contact before the change reaches the other voter. The other cannot win
/// without the removed node's vote (its log is behind), so the removed node
/// must still campaign, in the new membership, to commit the change.
#[test]
fn a_removed_leader_of_two_voters_still_commits_its_removal() {
    let mut c = Cluster::new(&[1, 2]);
    c.elect(1);
    c.isolate(1);
    let (index, _) = c.node_mut(1).propose_config(config(&[2], &[])).unwrap();
    c.stabilize();
    // Check-quorum: 1 steps down with the change uncommitted.
    c.run_for(2 * ET + HEARTBEAT_MS);
    assert_eq!(c.node(1).role(), Role::Follower);
    assert!(c.node(1).commit_index() < index);
    assert_eq!(c.node(2).config(), &config(&[1, 2], &[]));

    c.heal();
    c.run_for(10 * ET);
    assert_eq!(c.node(2).role(), Role::Leader);
    assert_eq!(c.node(2).config(), &config(&[2], &[]));
    assert!(c.node(2).commit_index() >= index);
    c.run_for(5 * ET);
    // 1 led its removal to commit, stepped down, and no longer campaigns;
    // the new membership no longer includes it, so it hears nothing more.
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).config(), &config(&[2], &[]));
    assert!(c.node(1).commit_index() >= index);
    assert_eq!(c.node(2).term(), c.leaders.keys().copied().max().unwrap());
}

// ----- §8: snapshots -----

/// §8: a follower that needs entries the leader compacted receives the
/// leader's snapshot, then the entries after it; after a restart it starts
/// from the snapshot (§10.2).
#[test]
fn a_lagging_follower_installs_the_leaders_snapshot() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    for i in 0..10u8 {
        c.propose(1, &[i]);
    }
    c.stabilize();
    c.take_snapshot(1);
    let snapshot_index = c.node(1).log().snapshot().index;
    assert_eq!(snapshot_index, 11);
    assert_eq!(c.node(1).log().first_index(), 12);
    c.propose(1, b"after");
    c.stabilize();

    c.heal();
    c.delivered.clear();
    c.run_for(3 * HEARTBEAT_MS);
    let snapshots: Vec<&Message> = c
        .delivered
        .iter()
        .filter(|m| m.to == 3 && matches!(m.body, Body::InstallSnapshot { .. }))
        .collect();
    assert_eq!(snapshots.len(), 1);
    assert!(c.nodes[&3]
        .readys
        .iter()
        .any(|r| r.snapshot.as_ref().map(|s| s.index) == Some(snapshot_index)));
    assert_eq!(c.node(3).log().snapshot().index, snapshot_index);
    assert_eq!(c.node(3).commit_index(), c.node(1).commit_index());
    assert_eq!(c.nodes[&3].applied, c.nodes[&1].applied);

    c.crash(3);
    c.restart(3);
    assert_eq!(c.node(3).commit_index(), snapshot_index);
    c.ready(3);
    assert_eq!(c.nodes[&3].applied.len() as u64, snapshot_index);
    c.run_for(2 * HEARTBEAT_MS);
    assert_eq!(c.nodes[&3].applied, c.nodes[&1].applied);
}

/// §8: an InstallSnapshot duplicated or delayed past the entries that
/// follow it changes nothing.
#[test]
fn a_duplicated_snapshot_is_harmless() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    for i in 0..6u8 {
        c.propose(1, &[i]);
    }
    c.stabilize();
    c.take_snapshot(1);
    c.heal();
    c.tick_all(HEARTBEAT_MS);
    c.ready_all();
    // The leader probes 3, which asks from index 2: the snapshot follows.
    c.stabilize();
    let snapshot = c
        .delivered
        .iter()
        .find(|m| m.to == 3 && matches!(m.body, Body::InstallSnapshot { .. }))
        .cloned()
        .expect("a snapshot was sent");
    c.propose(1, b"more");
    c.settle();
    let before: Vec<Entry> = c.node(3).log().entries().to_vec();
    let commit = c.node(3).commit_index();

    c.deliver_message(snapshot);
    c.settle();
    assert_eq!(c.node(3).log().entries(), &before[..]);
    assert_eq!(c.node(3).commit_index(), commit);
    assert_eq!(c.nodes[&3].applied, c.nodes[&1].applied);
}

// ----- §9: leadership transfer -----

/// §9: the leader brings the target up to date, then sends TimeoutNow; the
/// target campaigns at once with the transfer flag, which the other voter
/// honours although it hears from the leader.
#[test]
fn leadership_transfer_to_a_lagging_voter() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let term = c.node(1).term();
    c.cut_one_way(1, 2);
    c.propose(1, b"a");
    c.stabilize();
    c.heal();
    assert!(c.node(2).log().last_index() < c.node(1).log().last_index());

    c.node_mut(1).transfer_leader(2).unwrap();
    assert_eq!(c.node(1).transfer_target(), Some(2));
    assert_eq!(
        c.node_mut(1).propose(b"b".to_vec()),
        Err(ProposeError::Transferring)
    );
    c.delivered.clear();
    c.run_for(3 * HEARTBEAT_MS);
    assert_eq!(c.node(2).role(), Role::Leader);
    assert_eq!(c.node(2).term(), term + 1);
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).leader(), Some(2));
    let timeout_now = c
        .delivered
        .iter()
        .position(|m| m.from == 1 && m.to == 2 && m.body == Body::TimeoutNow)
        .expect("TimeoutNow sent");
    // It was sent only after 2 acknowledged the leader's last entry.
    assert!(c.delivered[..timeout_now]
        .iter()
        .any(|m| m.from == 2 && matches!(m.body, Body::AppendResponse { success: true, .. })));
    assert!(c
        .delivered
        .iter()
        .any(|m| m.from == 2 && m.to == 3 && matches!(m.body, Body::Vote { transfer: true, .. })));
    assert!(c
        .delivered
        .iter()
        .all(|m| !matches!(m.body, Body::PreVote { .. })));
    assert_eq!(data_of(&c.nodes[&2].applied), vec![b"a".to_vec()]);
}

/// §9: a transfer that cannot finish within an election timeout is
/// abandoned and the leader accepts proposals again.
#[test]
fn leadership_transfer_times_out() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    c.node_mut(1).transfer_leader(3).unwrap();
    assert_eq!(
        c.node_mut(1).propose(b"x".to_vec()),
        Err(ProposeError::Transferring)
    );
    c.tick_only(&[1, 2], ET);
    c.stabilize();
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(1).transfer_target(), None);
    assert!(c.node_mut(1).propose(b"x".to_vec()).is_ok());
    assert!(matches!(
        c.node_mut(1).transfer_leader(4),
        Err(ProposeError::InvalidConfig(_))
    ));
}

/// §4.4: without the transfer flag, a vote request from a node that timed
/// out is ignored by voters that hear from a leader.
#[test]
fn leader_stickiness_ignores_an_unsolicited_vote() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let term = c.node(1).term();
    let last_index = c.node(3).log().last_index();
    let last_term = c.node(3).log().last_term();
    c.deliver_message(Message {
        from: 3,
        to: 2,
        term: term + 1,
        body: Body::Vote {
            last_index,
            last_term,
            transfer: false,
        },
    });
    c.ready(2);
    assert_eq!(c.node(2).term(), term);
    assert!(c.in_flight(|m| m.from == 2).is_empty());
    c.deliver_message(Message {
        from: 3,
        to: 2,
        term: term + 1,
        body: Body::Vote {
            last_index,
            last_term,
            transfer: true,
        },
    });
    c.ready(2);
    assert_eq!(c.node(2).term(), term + 1);
    assert_eq!(c.node(2).voted_for(), Some(3));
}

// ----- §10.3: storage faults (protocol-aware recovery) -----

/// Proposes `count` entries on `leader` and lets every live node store them.
fn propose_and_settle(c: &mut Cluster, leader: NodeId, count: u8) {
    for i in 0..count {
        c.propose(leader, &[i]);
    }
    c.settle();
}

/// Lets time pass until some node leads; returns it.
fn wait_for_leader(c: &mut Cluster) -> NodeId {
    for _ in 0..(40 * ET / HEARTBEAT_MS) {
        if let Some(leader) = c.leader() {
            return leader;
        }
        c.run_for(HEARTBEAT_MS);
    }
    panic!("no leader elected");
}

fn took_part_in_election(message: &Message) -> bool {
    matches!(
        message.body,
        Body::PreVote { .. }
            | Body::Vote { .. }
            | Body::PreVoteResponse { granted: true }
            | Body::VoteResponse { granted: true }
    )
}

/// §10.3: a replica that lost entries it may have acknowledged refuses
/// pre-votes and votes, and does not campaign, however long the group goes
/// without a leader because of it. A leader elected without it repairs its
/// log; it then records that the repair is over and votes again.
#[test]
fn a_repairing_replica_neither_votes_nor_campaigns_until_repaired() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    propose_and_settle(&mut c, 1, 5);
    let last = c.node(1).log().last_index();
    assert_eq!(c.node(2).log().last_index(), last);

    // 2's disk loses everything after index 3 (the node core found a
    // corrupt entry at 4); the leader crashes before it could repair 2.
    c.crash(2);
    assert_eq!(c.lose_log_tail(2, 3), last);
    c.crash(1);
    c.restart(2);
    assert!(c.node(2).is_repairing());
    assert_eq!(c.node(2).repair_index(), last);
    assert_eq!(c.node(2).log().last_index(), 3);

    // 3's log is more up to date than 2's, so only the repair keeps 2 from
    // granting 3's pre-votes; 2's own log could not win anyway, but it does
    // not even try.
    let term = c.node(3).term();
    c.delivered.clear();
    c.run_for(20 * ET);
    assert_eq!(c.leader(), None);
    assert!(c
        .delivered
        .iter()
        .any(|m| m.from == 3 && m.to == 2 && matches!(m.body, Body::PreVote { .. })));
    assert!(c
        .delivered
        .iter()
        .any(|m| m.from == 2 && m.to == 3 && m.body == Body::PreVoteResponse { granted: false }));
    assert!(!c
        .delivered
        .iter()
        .any(|m| m.from == 2 && took_part_in_election(m)));
    assert_eq!(c.node(2).term(), term);
    assert_eq!(c.node(3).term(), term, "pre-vote kept every term");
    assert!(c.node(2).is_repairing());

    // 1 returns: 1 and 3 elect one of them; the leader repairs 2.
    c.restart(1);
    let leader = wait_for_leader(&mut c);
    assert_ne!(leader, 2);
    c.settle();
    assert_eq!(
        c.node(2).log().entries(),
        c.node(leader).log().entries(),
        "2 holds the leader's whole log"
    );
    assert!(!c.node(2).is_repairing());
    assert_eq!(c.node(2).repair_index(), 0);
    // The end of the repair was persisted.
    assert!(c.nodes[&2]
        .readys
        .iter()
        .any(|ready| ready.hard_state.is_some_and(|h| h.repair_index == 0)));
    assert_eq!(c.nodes[&2].disk.hard_state.repair_index, 0);
    assert_eq!(
        data_of(&c.nodes[&2].applied),
        (0..5u8).map(|i| vec![i]).collect::<Vec<_>>()
    );

    // 2 votes again: the other healthy node wins with 2's vote alone.
    let other = if leader == 1 { 3 } else { 1 };
    c.crash(leader);
    c.delivered.clear();
    c.campaign(other, &[2, other]);
    assert_eq!(c.node(other).role(), Role::Leader);
    assert!(c
        .delivered
        .iter()
        .any(|m| m.from == 2 && m.to == other && m.body == Body::VoteResponse { granted: true }));
}

/// §10.3: a follower that lost entries it had acknowledged refuses the
/// leader's next Append with a hint at or below the leader's match for it;
/// the leader lowers the match to just below the hint, probes from there
/// and re-replicates the lost entries.
#[test]
fn the_leader_lowers_its_match_for_a_follower_that_lost_entries() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    propose_and_settle(&mut c, 1, 5);
    let last = c.node(1).log().last_index();
    let commit = c.node(1).commit_index();
    assert_eq!(c.node(1).match_index(2), Some(last));

    c.crash(2);
    c.lose_log_tail(2, 2);
    c.restart(2);
    assert_eq!(c.node(2).log().last_index(), 2);

    // The next heartbeat finds 2's log shorter than 2 acknowledged.
    c.tick_only(&[1], HEARTBEAT_MS);
    c.ready(1);
    assert!(c.deliver_where(|m| m.from == 1 && m.to == 2 && is_append(m)) > 0);
    c.ready(2);
    let refusal = c
        .in_flight(|m| m.from == 2 && m.to == 1)
        .pop()
        .expect("2 answered");
    assert!(matches!(
        refusal.body,
        Body::AppendResponse {
            success: false,
            reject_hint: 3,
            ..
        }
    ));
    c.deliver_where(|m| m.from == 2 && m.to == 1);
    assert_eq!(c.node(1).match_index(2), Some(2));
    // Commit never moves back.
    assert_eq!(c.node(1).commit_index(), commit);
    // The leader probes from the hint at once.
    c.ready(1);
    assert!(c
        .in_flight(|m| m.from == 1 && m.to == 2)
        .iter()
        .any(|m| matches!(
            m.body,
            Body::Append { prev_index: 2, ref entries, .. } if !entries.is_empty()
        )));

    c.settle();
    assert_eq!(c.node(2).log().entries(), c.node(1).log().entries());
    assert_eq!(c.node(1).match_index(2), Some(last));
    assert!(!c.node(2).is_repairing());
    assert_eq!(data_of(&c.nodes[&2].applied).len(), 5);
}

/// §10.3: a replica whose group could not be read back restarts empty with
/// its repair target unknown. On first contact with a leader it records a
/// vote for that leader in the leader's term and learns its target (the
/// leader's commit). Once its log reaches the target it stops repairing, but
/// the recorded vote still keeps it from electing a second leader in that
/// term: here its lost vote had elected the leader, and a rival candidate of
/// the same term asks it again.
#[test]
fn a_wiped_replica_records_a_vote_for_the_first_leader_it_hears() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    propose_and_settle(&mut c, 1, 3);
    let shared = c.node(1).log().last_index();
    // 1 restarts, so that its commit index must be re-learned (§10.2).
    c.crash(1);
    c.restart(1);

    // 1 and 2 both campaign in the next term; 3 grants 1.
    c.tick_all(2 * ET);
    c.ready_all();
    c.drop_where(|m| m.from == 3);
    c.deliver_where(|m| matches!(m.body, Body::PreVote { .. }));
    c.ready_all();
    c.deliver_where(|m| matches!(m.body, Body::PreVoteResponse { .. }));
    c.ready_all();
    assert_eq!(c.node(1).role(), Role::Candidate);
    assert_eq!(c.node(2).role(), Role::Candidate);
    let term = c.node(1).term();
    assert_eq!(c.node(2).term(), term);
    c.partition(&[1], &[2]);
    let rival = c
        .in_flight(|m| m.from == 2 && m.to == 3 && matches!(m.body, Body::Vote { .. }))
        .pop()
        .expect("2 asked 3");
    c.drop_where(|m| m.from == 2 && m.to == 3);
    c.deliver_where(|m| m.from == 1 && m.to == 3 && matches!(m.body, Body::Vote { .. }));
    c.ready(3);
    c.deliver_where(|m| m.from == 3 && m.to == 1);
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(
        c.node(1).commit_index(),
        0,
        "the term-start entry is not committed"
    );

    // 3 loses its whole disk, vote included, and rejoins empty.
    c.crash(3);
    c.wipe_disk(3);
    c.restart(3);
    assert_eq!(c.node(3).repair_index(), REPAIR_INDEX_UNKNOWN);
    assert_eq!(c.node(3).term(), 0);
    assert_eq!(c.node(3).log().last_index(), 0);

    // First contact: 3 records a vote for the leader in the leader's term.
    c.drop_where(|_| true);
    c.tick_only(&[1], HEARTBEAT_MS);
    c.ready(1);
    assert!(c.deliver_where(|m| m.from == 1 && m.to == 3) > 0);
    c.ready(3);
    assert_eq!(
        c.nodes[&3].readys.last().unwrap().hard_state,
        Some(HardState {
            term,
            voted_for: Some(1),
            repair_index: REPAIR_INDEX_UNKNOWN,
        })
    );
    // The leader brings 3 up to its commit point... (one Append of at most
    // four entries: 3's log then ends where 2's does, before the new term).
    c.deliver_where(|m| m.from == 3 && m.to == 1);
    c.ready(1);
    c.deliver_where(|m| m.from == 1 && m.to == 3);
    c.ready(3);
    assert_eq!(c.node(3).log().last_index(), shared);
    // 3 has not heard 2's term yet, so it still repairs (§10.3).
    assert!(c.node(3).is_repairing());

    // ...and the rival's request of the same term, whose log is as up to
    // date as 3's, is refused: 3 already voted in that term. Hearing 2's
    // term ends the repair, written with the next Ready.
    c.deliver_message(rival);
    c.ready(3);
    let answer = c
        .in_flight(|m| m.from == 3 && m.to == 2 && matches!(m.body, Body::VoteResponse { .. }))
        .pop()
        .expect("3 answered 2");
    assert_eq!(answer.body, Body::VoteResponse { granted: false });
    // The target is the leader's last index at first contact (its
    // term-start entry included): once 3 holds it, the repair ends.
    for _ in 0..3 {
        c.deliver_where(|m| m.from == 3 && m.to == 1);
        c.ready(1);
        c.deliver_where(|m| m.from == 1 && m.to == 3);
        c.ready(3);
    }
    assert!(!c.node(3).is_repairing());
    c.ready(3);
    assert_eq!(c.nodes[&3].disk.hard_state.repair_index, 0);
    assert_eq!(c.nodes[&3].disk.hard_state.voted_for, Some(1));
    c.deliver_where(|m| m.from == 3 && m.to == 2);
    assert_ne!(c.node(2).role(), Role::Leader);

    c.heal();
    c.settle();
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.node(3).log().entries(), c.node(1).log().entries());
    assert_eq!(c.nodes[&3].disk.hard_state.term, term);
}

/// §10.3: a replica whose vote record is older than its log, but whose log
/// already reaches the leader's commit point, stops repairing on first
/// contact, recording its vote for that leader.
#[test]
fn a_lost_vote_record_is_repaired_at_once_when_the_log_is_intact() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    propose_and_settle(&mut c, 1, 3);
    let term = c.node(1).term();
    c.crash(3);
    c.lose_vote_record(3, HardState::default());
    c.restart(3);
    assert!(c.node(3).is_repairing());
    // §10.1: the log's last term is adopted, with no vote.
    assert_eq!(c.node(3).term(), term);
    assert_eq!(c.node(3).voted_for(), None);
    // 3 hears the leader, and asks 2 for its term (followers do not talk
    // to each other otherwise); then its repair ends.
    c.run_for(3 * HEARTBEAT_MS);
    assert!(!c.node(3).is_repairing());
    assert_eq!(c.node(3).voted_for(), Some(1));
    assert_eq!(
        c.nodes[&3].disk.hard_state,
        HardState {
            term,
            voted_for: Some(1),
            repair_index: 0,
        }
    );
}

/// §10.3, §11.3: the lost-committed-entry scenario that the no-vote rule
/// prevents. An entry is committed on {1, 2}; 3 never got it. 2's disk
/// loses it and 1 is down. 2 and 3 hold equal logs and could elect either,
/// which would lose the committed entry; because 2 abstains, no leader is
/// elected until 1 returns, and the entry survives.
#[test]
fn a_repairing_replica_cannot_help_elect_a_leader_missing_a_committed_entry() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    let (index, term) = c.propose(1, b"x");
    c.stabilize();
    assert_eq!(c.node(1).commit_index(), index, "committed on 1 and 2");
    assert_eq!(c.node(3).log().last_index(), index - 1);

    c.crash(1);
    c.crash(2);
    c.lose_log_tail(2, index - 1);
    c.heal();
    c.restart(2);
    assert_eq!(c.node(2).log().last_index(), c.node(3).log().last_index());
    c.run_for(20 * ET);
    assert_eq!(c.leader(), None);

    c.restart(1);
    let leader = wait_for_leader(&mut c);
    c.settle();
    for id in [1, 2, 3] {
        assert_eq!(
            payload_at(&c, id, index),
            Some((term, data(b"x"))),
            "node {id} (leader {leader})"
        );
        assert_eq!(data_of(&c.nodes[&id].applied), vec![b"x".to_vec()]);
    }
}

/// §9, §10.3: a leader whose match for a follower predates that follower's
/// loss may ask it to take over; a repairing replica ignores TimeoutNow,
/// since it could otherwise win with the vote of a node that also lacks a
/// committed entry (here 3, which the leader could not reach). Once
/// repaired, it takes over.
#[test]
fn a_repairing_replica_ignores_timeout_now() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let term = c.node(1).term();
    c.partition(&[1], &[3]);
    let (index, _) = c.propose(1, b"x");
    c.stabilize();
    assert_eq!(c.node(1).commit_index(), index, "committed on 1 and 2");

    c.crash(2);
    c.lose_log_tail(2, index - 1);
    c.restart(2);
    // The leader still believes 2 holds its whole log.
    assert_eq!(c.node(1).match_index(2), Some(index));
    c.node_mut(1).transfer_leader(2).unwrap();
    c.ready(1);
    assert!(c.deliver_where(|m| m.from == 1 && m.to == 2 && m.body == Body::TimeoutNow) > 0);
    // Were 2 to campaign, 3 (whose log equals 2's) would elect it.
    c.delivered.clear();
    c.stabilize();
    assert_eq!(c.node(2).role(), Role::Follower);
    assert_eq!(c.node(2).term(), term);
    assert!(!c.delivered.iter().any(took_part_in_election));

    // 2's refusal of the next Append lowers the leader's match (it answered
    // the TimeoutNow only with silence); once 2 holds the leader's log again
    // and has stopped repairing, the transfer completes, with the entry.
    c.run_for(3 * HEARTBEAT_MS);
    assert_eq!(c.node(2).role(), Role::Leader);
    assert_eq!(c.node(2).term(), term + 1);
    assert_eq!(payload_at(&c, 2, index), Some((term, data(b"x"))));
}

/// §10.3: the vote a replica lost may be in a term above that of the first
/// leader it hears. Here 3 votes for 2 in term 2 (a transfer 1 never learns
/// of), loses that record (the intact slot holds its term-1 vote for 1), and
/// hears first from 1, the still-unaware leader of term 1. Recording a vote
/// for 1 is not enough: 3 keeps repairing until it has heard the term of
/// every other voter, then adopts the highest (term 2) with a vote for
/// itself, so it can never cast a second vote in term 2. (Without that rule
/// 3 and 1 elected a second leader of term 2.)
#[test]
fn a_lost_vote_above_the_first_leaders_term_is_never_cast_twice() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"a");
    c.settle();
    let term = c.node(1).term();
    let older = c.nodes[&3].disk.hard_state;
    assert_eq!(older.voted_for, Some(1));

    // 1 hands over to 2; 3 grants 2's vote in term + 1, then crashes before
    // anything else of that term reaches it. 1 hears nothing of it.
    c.node_mut(1).transfer_leader(2).unwrap();
    c.ready(1);
    assert!(c.deliver_where(|m| m.body == Body::TimeoutNow) > 0);
    c.partition(&[1], &[2]);
    c.ready(2);
    c.deliver_where(|m| m.from == 2 && m.to == 3);
    c.ready(3);
    assert_eq!(c.nodes[&3].disk.hard_state.term, term + 1);
    c.crash(3);
    c.deliver_where(|m| m.from == 3 && m.to == 2);
    assert_eq!(c.node(2).role(), Role::Leader);
    assert_eq!(c.node(2).term(), term + 1);

    // 3's newer vote slot is damaged: it restarts from the older one.
    c.partition(&[2], &[3]);
    c.lose_vote_record(3, older);
    c.restart(3);
    c.tick_only(&[1], HEARTBEAT_MS);
    c.stabilize();
    assert!(
        c.node(3).is_repairing(),
        "3 has not heard 2's term: it may have voted in a later term"
    );
    assert_eq!(c.node(3).term(), term);

    // A transfer to 3 cannot make it campaign while it repairs.
    c.node_mut(1).transfer_leader(3).unwrap();
    c.stabilize();
    assert_ne!(c.node(3).role(), Role::Leader);

    // Once 3 hears 2 (term + 1), it adopts that term with a vote for
    // itself; the harness checks after every step that no term ever has
    // two leaders, through the elections that follow.
    c.heal();
    c.run_for(10 * ET);
    assert!(!c.node(3).is_repairing());
    assert!(c.node(3).term() > term);
    assert!(c.leader().is_some());
}

/// §10.3: an acknowledgment a wiped replica's lost disk sent earlier may
/// still be on its way to the leader, and count towards a commit above the
/// leader's commit point. The repair target is therefore the leader's last
/// index, not its commit: here 3 acknowledged entry 9 (which 2 never got),
/// lost its disk, and the stale acknowledgment committed 9 on {1, 3}; 3 keeps
/// repairing until it holds 9, so with 1 down no leader missing 9 can be
/// elected. (With the commit point as target, 2 and 3 elected one.)
#[test]
fn a_stale_acknowledgment_cannot_commit_above_a_wiped_replicas_target() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    propose_and_settle(&mut c, 1, 7);
    assert_eq!(c.node(1).commit_index(), 8);

    // Entry 9 reaches 3 only; 3's acknowledgment is delayed.
    c.cut_one_way(1, 2);
    let (index, _) = c.propose(1, b"e");
    assert_eq!(index, 9);
    c.ready(1);
    c.deliver_where(|m| m.from == 1 && m.to == 3);
    c.ready(3);
    let ack = c
        .in_flight(|m| m.from == 3 && m.to == 1)
        .pop()
        .expect("3 acknowledged");
    c.drop_where(|_| true);

    // 3 loses its disk and rejoins; the leader's next Append says commit 8.
    c.crash(3);
    c.wipe_disk(3);
    c.restart(3);
    c.tick_only(&[1], HEARTBEAT_MS);
    c.ready(1);
    c.deliver_where(|m| m.from == 1 && m.to == 3);
    c.ready(3);
    assert!(c.node(3).is_repairing());

    // The stale acknowledgment arrives first: 9 commits on {1, 3}.
    c.deliver_message(ack);
    assert_eq!(c.node(1).commit_index(), 9);

    // 3 is repaired up to 8 (and stops repairing); 9 has not reached it yet.
    for _ in 0..10 {
        c.ready_all();
        c.deliver_where(|m| {
            m.from != 1
                || matches!(&m.body, Body::Append { prev_index, entries, .. }
                    if *prev_index + entries.len() as u64 <= 8)
        });
    }
    assert_eq!(c.node(3).log().last_index(), 8);
    assert!(
        c.node(3).is_repairing(),
        "the target is 9, the leader's last"
    );

    // 1 crashes; 2 cannot be elected without 3's vote, which 3 withholds.
    c.crash(1);
    c.drop_where(|_| true);
    c.heal();
    c.run_for(20 * ET);
    assert_eq!(c.leader(), None);
    // 1 returns: the group recovers with 9.
    c.restart(1);
    wait_for_leader(&mut c);
    c.settle();
    assert_eq!(c.node(3).log().term_at(9), c.node(1).log().term_at(9));
}

/// §7.4: an empty replica (a node joining, perhaps one that deleted its
/// replica and its vote record when it was removed) knows no membership
/// and grants no vote, even to a candidate whose log is ahead of it; a
/// replica that knows a membership still does.
#[test]
fn a_replica_that_knows_no_membership_grants_no_vote() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"a");
    c.settle();
    c.add_empty_node(4, test_options(4));
    let term = c.node(1).term() + 1;
    let last_index = c.node(1).log().last_index();
    let last_term = c.node(1).log().last_term();
    let vote = |to| Message {
        from: 1,
        to,
        term,
        body: Body::Vote {
            last_index,
            last_term,
            transfer: true,
        },
    };
    c.network.clear();
    c.deliver_message(vote(4));
    c.deliver_message(vote(2));
    c.ready(4);
    c.ready(2);
    c.persist_all(2);
    c.ready(2);
    let granted = |from| {
        c.network
            .iter()
            .any(|m| m.from == from && matches!(m.body, Body::VoteResponse { granted: true }))
    };
    assert!(!granted(4), "the empty replica voted: {:?}", c.network);
    assert!(
        granted(2),
        "a member refused a good candidate: {:?}",
        c.network
    );
}

/// §7.2: on a short log every learner is within the promotion lag, so a
/// learner must also have acknowledged entries to this leader recently: a
/// learner that never answered (its node holds nothing, or is down) is not
/// made a voter, which could leave the group without a quorum.
#[test]
fn a_learner_that_never_acknowledged_is_not_promoted() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.add_empty_node(4, test_options(4));
    c.isolate(4);
    c.node_mut(1)
        .propose_config(config(&[1, 2, 3], &[4]))
        .unwrap();
    c.settle();
    let refused = c.node_mut(1).propose_config(config(&[1, 2, 3, 4], &[]));
    assert!(
        matches!(&refused, Err(ProposeError::InvalidConfig(reason)) if reason.contains("acknowledged")),
        "{refused:?}"
    );
    c.heal();
    c.run_for(4 * HEARTBEAT_MS);
    c.node_mut(1)
        .propose_config(config(&[1, 2, 3, 4], &[]))
        .expect("a learner that keeps up is promoted");
}

/// §7.2: a node removed and being added back as a learner is promoted only
/// once it acknowledged the membership that lists it. Its replica, whose
/// own log still shows it removed, is one its host deletes (§12.4): an
/// acknowledgment it sent just before that, of an index below the learner
/// config, must not make a voter of a node that then holds nothing. Found
/// by the simulator (seed 90492): such a voter, empty and never contacted
/// again, plus a replica repairing its log, left a four-voter group
/// without a quorum.
#[test]
fn a_learner_is_promoted_only_once_it_acknowledged_the_membership_listing_it() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"a");
    c.settle();
    c.node_mut(1).propose_config(config(&[1, 2], &[])).unwrap();
    c.settle();
    // 3's log, where it may or may not hold its removal.
    let removed_at = c.node(3).log().last_index();
    // 3 is added back as a learner while it is cut off.
    c.isolate(3);
    c.node_mut(1).propose_config(config(&[1, 2], &[3])).unwrap();
    c.settle();
    let learner_at = c.node(1).log().last_index();
    // An acknowledgment 3 sent from its old log arrives now.
    let term = c.node(1).term();
    c.heal();
    c.network.clear();
    c.deliver_message(Message {
        from: 3,
        to: 1,
        term,
        body: Body::AppendResponse {
            success: true,
            match_index: removed_at,
            reject_hint: 0,
            read_round: 0,
            lacks_log: false,
        },
    });
    assert_eq!(c.node(1).match_index(3), Some(removed_at));
    assert!(removed_at < learner_at);
    let refused = c.node_mut(1).propose_config(config(&[1, 2, 3], &[]));
    assert!(
        matches!(&refused, Err(ProposeError::InvalidConfig(reason)) if reason.contains("membership that lists it")),
        "{refused:?}"
    );
    // Once 3 holds the learner config, it is promoted.
    c.run_for(4 * HEARTBEAT_MS);
    assert!(c.node(1).match_index(3).unwrap() >= learner_at);
    c.node_mut(1)
        .propose_config(config(&[1, 2, 3], &[]))
        .expect("a learner holding its membership is promoted");
}

/// §6.2: a new leader whose own disk is slow is ready once followers alone
/// commit its term-start entry, but it has not applied that entry (it
/// applies only what it holds durably), so its state machine may lack
/// entries the old leader committed and served. It serves reads only once
/// it applied its term-start entry.
#[test]
fn a_leader_serves_reads_only_once_it_applied_its_term_start() {
    let mut c = Cluster::new(&[1, 2, 3, 4, 5]);
    c.elect(1);
    c.propose(1, b"A");
    c.settle();
    assert!(c.node(1).can_serve_reads());
    c.crash(1);
    c.campaign(2, &[2, 3, 4, 5]);
    c.set_auto_persist(2, false);
    c.stabilize();
    let leader = c.node(2);
    assert!(
        leader.is_leader_ready(),
        "followers alone committed the term-start entry"
    );
    assert!(
        !leader.can_serve_reads(),
        "its own copy of the term-start entry is not durable, so not applied"
    );
    c.set_auto_persist(2, true);
    c.persist_all(2);
    c.stabilize();
    assert!(c.node(2).can_serve_reads());
}

// ----- §6.3: linearizable reads -----

fn is_append_response(message: &Message) -> bool {
    matches!(message.body, Body::AppendResponse { .. })
}

/// §6.3: a read is servable once a quorum echoed its read round, and the
/// state machine holds everything committed before it was registered.
#[test]
fn a_read_waits_for_a_quorum_to_confirm_the_leader() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"A");
    c.settle();
    c.read(1, 7).expect("the leader takes reads");
    c.ready(1);
    assert_eq!(c.read_outcome(7), None, "no follower has answered yet");
    assert!(
        c.network.iter().any(|m| matches!(
            m.body,
            Body::Append { read_round, .. } if read_round > 0
        )),
        "the read's round goes out at once, not at the next heartbeat"
    );
    // One follower's echo plus the leader is a quorum of three.
    c.deliver_where(|m| m.to == 2);
    c.ready(2);
    c.deliver_where(|m| m.from == 2 && is_append_response(m));
    c.ready(1);
    assert_eq!(c.read_outcome(7), Some(true));
}

/// §6.3: an answer to an Append sent before the read was registered may
/// have left the follower before the read arrived: it confirms nothing.
#[test]
fn an_echo_of_an_earlier_round_does_not_confirm_a_read() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.settle();
    c.tick(1);
    c.tick_only(&[1], HEARTBEAT_MS);
    c.ready(1);
    assert!(c.network.iter().any(is_append), "a heartbeat is in flight");
    c.deliver_where(is_append);
    c.ready(2);
    c.ready(3);
    assert!(c.network.iter().any(is_append_response));
    // The read arrives while the answers to that heartbeat are on their way.
    c.read(1, 1).expect("the leader takes reads");
    c.deliver_where(is_append_response);
    c.ready(1);
    assert_eq!(c.read_outcome(1), None, "answers to an older round");
    c.stabilize();
    assert_eq!(c.read_outcome(1), Some(true));
}

/// §6.3: a leader cut off from the others cannot confirm a read, and once
/// it steps down the read fails; meanwhile the new leader's reads see the
/// writes it committed.
#[test]
fn a_deposed_leader_cannot_serve_a_read() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"A");
    c.settle();
    c.isolate(1);
    c.campaign(2, &[2, 3]);
    c.stabilize();
    // Only 2 and 3 see time pass: 1's check-quorum has not run yet.
    c.propose(2, b"B");
    c.stabilize();
    assert_eq!(c.node(1).role(), Role::Leader, "1 has not noticed yet");
    c.read(1, 1).expect("1 still thinks it leads");
    c.read(2, 2).expect("2 leads");
    c.stabilize();
    assert_eq!(c.read_outcome(2), Some(true));
    assert_eq!(c.read_outcome(1), None);
    // Check-quorum (§4.4) deposes 1 within two election timeouts.
    c.run_for(3 * ET);
    assert_ne!(c.node(1).role(), Role::Leader);
    assert_eq!(c.read_outcome(1), Some(false), "the read fails, not served");
    assert!(matches!(
        c.node_mut(1).read_index(3),
        Err(ProposeError::NotLeader { .. })
    ));
}

/// §6.3: a new leader's read waits for its term-start entry to commit and
/// apply: before that, its commit index may lag what the old leader
/// committed.
#[test]
fn a_new_leaders_read_waits_for_its_term_start_entry() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"A");
    c.settle();
    c.crash(1);
    c.campaign(2, &[2, 3]);
    c.set_auto_persist(2, false);
    c.read(2, 1).expect("2 leads");
    c.stabilize();
    assert_eq!(
        c.read_outcome(1),
        None,
        "confirmed, but the term-start entry is not applied here"
    );
    c.set_auto_persist(2, true);
    c.persist_all(2);
    c.stabilize();
    assert_eq!(c.read_outcome(1), Some(true));
}

/// §6.3: a single voter is its own quorum.
#[test]
fn a_single_voters_read_needs_no_messages() {
    let mut c = Cluster::new(&[1]);
    c.elect(1);
    c.propose(1, b"A");
    c.settle();
    c.read(1, 1).expect("the leader takes reads");
    c.ready(1);
    assert_eq!(c.read_outcome(1), Some(true));
}
