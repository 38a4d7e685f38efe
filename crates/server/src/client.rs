//! A small blocking Kafka client for the command-line tools: one connection
//! per broker, version negotiation through ApiVersions, requests encoded and
//! responses decoded with `kafka-protocol`. It speaks to any Kafka broker,
//! not only to Runnel.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
pub use runnel_kafka::errors::error_name;

/// Most bytes of one response the tools accept.
pub const RESPONSE_BYTES_MAX: usize = 256 << 20;
/// How long a tool waits for a connection or a response.
pub const IO_TIMEOUT_MS: u64 = 30_000;

/// What went wrong, and the exit code it maps to.
#[derive(Debug)]
pub enum ClientError {
    /// The broker could not be reached or the connection broke (exit 3).
    Connect(String),
    /// The broker answered with a Kafka error (exit 1).
    Kafka { code: i16, context: String },
    /// Anything else the tool cannot go on from (exit 1).
    Other(String),
    /// The command line is wrong in a way clap cannot see (exit 2).
    Usage(String),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Connect(_) => 3,
            ClientError::Kafka { .. } | ClientError::Other(_) => 1,
            ClientError::Usage(_) => 2,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect(message)
            | ClientError::Other(message)
            | ClientError::Usage(message) => f.write_str(message),
            ClientError::Kafka { code, context } => {
                write!(f, "{context} ({})", error_name(*code))
            }
        }
    }
}

/// Whether a Kafka error goes away by itself (an election, a controller
/// moving), so that a tool retries rather than fails.
pub fn retriable(code: i16) -> bool {
    matches!(code, 5 | 6 | 7 | 14 | 15 | 16 | 41)
}

pub struct Connection {
    address: String,
    stream: TcpStream,
    correlation_id: i32,
    /// The broker's supported versions, by API key.
    versions: BTreeMap<i16, (i16, i16)>,
}

impl Connection {
    pub fn open(address: &str) -> Result<Connection, ClientError> {
        let cannot =
            |error: String| ClientError::Connect(format!("cannot connect to {address}: {error}"));
        let target = address
            .to_socket_addrs()
            .map_err(|error| cannot(error.to_string()))?
            .next()
            .ok_or_else(|| cannot("no address".into()))?;
        let stream = TcpStream::connect_timeout(&target, Duration::from_millis(IO_TIMEOUT_MS))
            .map_err(|error| cannot(error.to_string()))?;
        let timeout = Some(Duration::from_millis(IO_TIMEOUT_MS));
        stream
            .set_read_timeout(timeout)
            .map_err(|error| cannot(error.to_string()))?;
        stream
            .set_write_timeout(timeout)
            .map_err(|error| cannot(error.to_string()))?;
        let _ = stream.set_nodelay(true);
        let mut connection = Connection {
            address: address.to_string(),
            stream,
            correlation_id: 0,
            versions: BTreeMap::new(),
        };
        // ApiVersions v0 is understood by every broker since Kafka 0.10.
        let response: ApiVersionsResponse =
            connection.send(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default())?;
        if response.error_code != 0 {
            return Err(ClientError::Kafka {
                code: response.error_code,
                context: format!("{address} refused ApiVersions"),
            });
        }
        connection.versions = response
            .api_keys
            .iter()
            .map(|key| (key.api_key, (key.min_version, key.max_version)))
            .collect();
        Ok(connection)
    }

    /// The highest version of `key` that both sides speak, up to `wanted`.
    pub fn version(&self, key: ApiKey, wanted: i16) -> Result<i16, ClientError> {
        let (min, max) = self.versions.get(&(key as i16)).copied().ok_or_else(|| {
            ClientError::Other(format!("{} does not support {key:?}", self.address))
        })?;
        let ours = key.valid_versions();
        let version = max.min(wanted).min(ours.max);
        if version < min.max(ours.min) {
            return Err(ClientError::Other(format!(
                "{} supports {key:?} {min}..={max}, which this tool does not",
                self.address
            )));
        }
        Ok(version)
    }

    /// Sends one request at `version` and waits for its response.
    pub fn send<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp, ClientError> {
        self.write_request(key, version, request)?;
        self.read_response(key, version)
    }

    /// Sends a request that gets no response (Produce with acks=0).
    pub fn send_no_response<Req: Encodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<(), ClientError> {
        self.write_request(key, version, request)
    }

    fn write_request<Req: Encodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<(), ClientError> {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("runnel-cli")));
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&[0; 4]);
        header
            .encode(&mut frame, key.request_header_version(version))
            .and_then(|()| request.encode(&mut frame, version))
            .map_err(|error| ClientError::Other(format!("cannot encode {key:?}: {error}")))?;
        let length = (frame.len() - 4) as i32;
        frame[0..4].copy_from_slice(&length.to_be_bytes());
        let broken = |error: std::io::Error| {
            ClientError::Connect(format!("connection to {} broke: {error}", self.address))
        };
        self.stream.write_all(&frame).map_err(broken)
    }

    fn read_response<Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
    ) -> Result<Resp, ClientError> {
        let broken = |error: std::io::Error| {
            ClientError::Connect(format!("connection to {} broke: {error}", self.address))
        };
        let mut prefix = [0u8; 4];
        self.stream.read_exact(&mut prefix).map_err(broken)?;
        let length = i32::from_be_bytes(prefix);
        if length < 4 || length as usize > RESPONSE_BYTES_MAX {
            return Err(ClientError::Other(format!(
                "{} sent a response of {length} bytes",
                self.address
            )));
        }
        let mut body = vec![0u8; length as usize];
        self.stream.read_exact(&mut body).map_err(broken)?;
        let mut body = Bytes::from(body);
        let header_version = if key == ApiKey::ApiVersions {
            0
        } else {
            key.response_header_version(version)
        };
        let malformed =
            |error: String| ClientError::Other(format!("malformed {key:?} response: {error}"));
        let response_header = ResponseHeader::decode(&mut body, header_version)
            .map_err(|e| malformed(e.to_string()))?;
        if response_header.correlation_id != self.correlation_id {
            return Err(malformed("correlation id mismatch".into()));
        }
        Resp::decode(&mut body, version).map_err(|error| malformed(error.to_string()))
    }

    /// Metadata of `topics` (all topics when `None`).
    pub fn metadata(&mut self, topics: Option<&[&str]>) -> Result<MetadataResponse, ClientError> {
        let version = self.version(ApiKey::Metadata, 12)?;
        let request = MetadataRequest::default()
            .with_topics(topics.map(|names| {
                names
                    .iter()
                    .map(|name| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(false);
        self.send(ApiKey::Metadata, version, &request)
    }
}

/// Connections to the brokers of one cluster, opened as needed.
pub struct Cluster {
    /// Brokers to start from, tried in turn until one answers.
    bootstrap: Vec<String>,
    connections: BTreeMap<String, Connection>,
}

impl Cluster {
    /// `bootstrap` is one `host:port` or several, comma separated, as
    /// Kafka's `bootstrap.servers`.
    pub fn new(bootstrap: &str) -> Cluster {
        Cluster {
            bootstrap: bootstrap
                .split(',')
                .map(str::trim)
                .filter(|address| !address.is_empty())
                .map(str::to_string)
                .collect(),
            connections: BTreeMap::new(),
        }
    }

    /// A connection to the first bootstrap broker that can be reached (one
    /// already open is preferred), so that one node down does not stop the
    /// tools.
    pub fn bootstrap(&mut self) -> Result<&mut Connection, ClientError> {
        let open = self
            .bootstrap
            .iter()
            .find(|address| self.connections.contains_key(*address))
            .cloned();
        if let Some(address) = open {
            return self.to(&address);
        }
        let mut last_error = ClientError::Connect("no bootstrap broker given".into());
        for address in self.bootstrap.clone() {
            match Connection::open(&address) {
                Ok(connection) => {
                    self.connections.insert(address.clone(), connection);
                    return self.to(&address);
                }
                Err(error @ ClientError::Connect(_)) => last_error = error,
                Err(other) => return Err(other),
            }
        }
        Err(last_error)
    }

    pub fn to(&mut self, address: &str) -> Result<&mut Connection, ClientError> {
        if !self.connections.contains_key(address) {
            let connection = Connection::open(address)?;
            self.connections.insert(address.to_string(), connection);
        }
        Ok(self.connections.get_mut(address).expect("inserted"))
    }

    /// Drops every connection, for after one broke: a broken connection
    /// would fail again, and the next use opens a new one.
    pub fn forget_connections(&mut self) {
        self.connections.clear();
    }

    /// The address of broker `node_id` from a metadata response.
    pub fn address_of(metadata: &MetadataResponse, node_id: i32) -> Option<String> {
        metadata
            .brokers
            .iter()
            .find(|broker| broker.node_id.0 == node_id)
            .map(|broker| format!("{}:{}", broker.host.as_str(), broker.port))
    }
}
