//! Storage tests against an in-memory disk that can crash (see `support`).
//!
//! `scenarios` walks through each part of the format and each kind of damage
//! on purpose; `model` runs random sequences of appends, truncations,
//! snapshots, vote saves and crashes against a model of what must survive;
//! `retained` covers the entries kept below the snapshot point (§8.1) and
//! `backfill` a follower taking them from the leader (§8.2);
//! `roll_by_age` covers rolling segments by age (`segment_ms`).

mod backfill;
mod model;
mod retained;
mod roll_by_age;
mod scenarios;
mod support;
