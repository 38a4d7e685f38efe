//! The harness the broker's deterministic tests share: one node on the
//! simulator's disk (whose crash loses what was not synced) and a manual
//! clock, Kafka requests encoded as a client would, responses decoded.
//! Each test file adds the requests it needs in its own `impl Harness`.

// Each test crate uses its own part of the harness.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use runnel_broker::{Broker, BrokerConfig, BrokerEnv, BrokerEvent, ConnectionId, Responses};
use runnel_core::Envelope;
use runnel_io::{Clock, Network, NodeId};
use runnel_sim::disk::SimDisk;

pub struct ManualClock {
    pub now_ms: u64,
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms
    }
    fn wall_clock_ms(&self) -> i64 {
        1_800_000_000_000 + self.now_ms as i64
    }
}

struct NoPeers;

impl Network<Envelope> for NoPeers {
    fn send(&mut self, _to: NodeId, _message: Envelope) {
        panic!("a single node has no peers");
    }
}

/// What the broker answered, by connection, and the connections it closed.
#[derive(Default)]
pub struct Collected {
    pub frames: BTreeMap<ConnectionId, Vec<Option<Bytes>>>,
    pub closed: BTreeSet<ConnectionId>,
}

impl Responses for Collected {
    fn respond(&mut self, connection: ConnectionId, frame: Option<Bytes>) {
        self.frames.entry(connection).or_default().push(frame);
    }
    fn close(&mut self, connection: ConnectionId, _reason: &str) {
        self.closed.insert(connection);
    }
}

pub struct Harness {
    pub broker: Broker,
    pub disk: SimDisk,
    pub clock: ManualClock,
    pub collected: Collected,
    correlation: i32,
}

/// A single node with short timeouts, so that it elects itself quickly.
pub fn single_node_config() -> BrokerConfig {
    let mut config = BrokerConfig::single_node("127.0.0.1", 9092);
    config.election_timeout_ms = 150;
    config.heartbeat_interval_ms = 50;
    config
}

impl Harness {
    /// A broker recovered from `disk` at `now_ms`, before any time passed.
    pub fn recover(mut disk: SimDisk, now_ms: u64, config: BrokerConfig) -> Harness {
        let broker = Broker::start(config, &mut disk).expect("starts");
        Harness {
            broker,
            disk,
            clock: ManualClock { now_ms },
            collected: Collected::default(),
            correlation: 0,
        }
    }

    pub fn event(&mut self, event: BrokerEvent) {
        self.disk.set_now(self.clock.now_ms);
        let mut network = NoPeers;
        let mut env = BrokerEnv {
            disk: &mut self.disk,
            network: &mut network,
            clock: &self.clock,
            responses: &mut self.collected,
        };
        self.broker.handle(event, &mut env);
    }

    /// Moves time on by `ms`, delivering disk completions and ticks.
    pub fn advance(&mut self, ms: u64) {
        let end = self.clock.now_ms + ms;
        while self.clock.now_ms < end {
            self.clock.now_ms += 1;
            while let Some(completion) = self.disk.pop_completion(self.clock.now_ms) {
                self.event(BrokerEvent::Disk(completion));
            }
            if self.clock.now_ms % 10 == 0 {
                self.event(BrokerEvent::Tick);
            }
        }
    }

    pub fn send<T: Encodable>(
        &mut self,
        connection: ConnectionId,
        key: ApiKey,
        version: i16,
        body: &T,
    ) {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("test")));
        let mut frame = BytesMut::new();
        header
            .encode(&mut frame, key.request_header_version(version))
            .expect("header");
        body.encode(&mut frame, version).expect("body");
        self.event(BrokerEvent::Request {
            connection,
            frame: frame.freeze(),
        });
    }

    /// Every frame `connection` got so far (`None` for a request answered
    /// with no response), taken.
    pub fn take(&mut self, connection: ConnectionId) -> Vec<Option<Bytes>> {
        self.collected
            .frames
            .remove(&connection)
            .unwrap_or_default()
    }

    /// How many answers `connection` has waiting.
    pub fn pending(&self, connection: ConnectionId) -> usize {
        self.collected.frames.get(&connection).map_or(0, Vec::len)
    }

    /// The one response `connection` got, decoded.
    pub fn response<T: Decodable>(
        &mut self,
        connection: ConnectionId,
        key: ApiKey,
        version: i16,
    ) -> T {
        let frames = self.take(connection);
        assert_eq!(frames.len(), 1, "one {key:?} response expected");
        decode(frames[0].clone().expect("a response frame"), key, version)
    }

    /// Sends and waits (at most `wait_ms`) for the answer.
    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        connection: ConnectionId,
        key: ApiKey,
        version: i16,
        body: &Req,
        wait_ms: u64,
    ) -> Resp {
        self.send(connection, key, version, body);
        let mut waited = 0;
        while self.pending(connection) == 0 && waited < wait_ms {
            self.advance(1);
            waited += 1;
        }
        self.response(connection, key, version)
    }
}

/// A response frame (length prefix included) decoded.
pub fn decode<T: Decodable>(frame: Bytes, key: ApiKey, version: i16) -> T {
    let mut body = frame.slice(4..);
    // ApiVersions answers with header v0 whatever its version, so that a
    // client that asked for a version it does not know can still read it.
    let header_version = if key == ApiKey::ApiVersions {
        0
    } else {
        key.response_header_version(version)
    };
    ResponseHeader::decode(&mut body, header_version).expect("response header");
    T::decode(&mut body, version).expect("response body")
}
