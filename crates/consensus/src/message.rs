//! Messages between replicas of one group (docs/protocol.md §2.2).

use runnel_io::NodeId;

use crate::types::{Entry, Index, Snapshot, Term};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's current term, except for `PreVote`, which carries the
    /// term the sender would campaign in (§4.2).
    pub term: Term,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Body {
    /// §4.2: would you vote for me in `term`? Changes no state on receipt.
    PreVote {
        last_index: Index,
        last_term: Term,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// §4.3: vote for me in `term`. `transfer` is set when a leadership
    /// transfer asked for this election, which overrides leader stickiness (§9).
    Vote {
        last_index: Index,
        last_term: Term,
        transfer: bool,
    },
    VoteResponse {
        granted: bool,
    },
    /// §5.1: entries following (`prev_index`, `prev_term`); empty for a
    /// heartbeat.
    Append {
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
        /// The leader's last log index when it sent this: how far a replica
        /// that lost its vote record must catch up before it votes (§10.3).
        leader_last_index: Index,
        /// §6.3: the leader's read round when it sent this; the follower
        /// echoes it, confirming that it still followed this leader after
        /// every read registered in that round.
        read_round: u64,
    },
    /// §5.3: `success` with the highest index now known to match the
    /// leader's log (and durable), or a rejection with a hint where the
    /// leader should probe next.
    AppendResponse {
        success: bool,
        match_index: Index,
        reject_hint: Index,
        /// §6.3: the `read_round` of the Append this answers (0 when it
        /// answers none, such as a snapshot).
        read_round: u64,
        /// §8.3: the follower lacks part of the log its host serves (it
        /// still backfills): it is not in sync, so it is neither promoted
        /// from learner nor chosen to take over.
        lacks_log: bool,
    },
    /// §8: the leader's snapshot, for a follower that needs compacted entries.
    InstallSnapshot {
        snapshot: Snapshot,
    },
    /// §8.2: a follower that installed a snapshot asks the leader for the
    /// entries just below `below`, the first it retains below its snapshot,
    /// so that its log below the snapshot serves lagging followers too.
    BackfillRequest {
        below: Index,
    },
    /// §8.2: the answer: consecutive committed entries ending at
    /// `below - 1`, or none when the leader retains nothing below `below`.
    Backfill {
        below: Index,
        entries: Vec<Entry>,
    },
    /// §9: start an election now, skipping pre-vote.
    TimeoutNow,
    /// §10.3: a replica that lost its vote record asks a voter for its
    /// current term. The receiver changes no state and answers with
    /// `TermReport` carrying its term in `Message::term`.
    TermQuery,
    /// §10.3: the answer to `TermQuery`.
    TermReport,
    /// §7.4: the answer to a campaign from a node that the sender's
    /// committed membership, set by its entry at `config_index`, does not
    /// list: the receiver was removed by a change it never heard of.
    Removed {
        config_index: Index,
    },
}
