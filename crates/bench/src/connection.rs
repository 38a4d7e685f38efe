//! An asynchronous, pipelined Kafka connection: requests are written as
//! soon as they are handed over, many may be in flight, and responses are
//! matched to requests in order (a Kafka broker answers the requests of one
//! connection in the order they came). A writer task and a reader task own
//! the two halves of the socket; the caller never waits on the network
//! unless it awaits a reply.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::BenchError;

/// Most bytes of one response accepted (Runnel's fetch responses are at
/// most 64 MiB; Kafka's `fetch.max.bytes` default is 50 MiB).
pub const RESPONSE_BYTES_MAX: usize = 80 << 20;
/// Requests queued for the writer of one connection: the in-flight limits
/// of producers and consumers keep far fewer there.
pub const WRITE_QUEUE_MAX: usize = 4_096;
/// Bytes queued for the writer of one connection: with acks=0 nothing else
/// holds a producer back, so this is where it waits for the socket.
pub const WRITE_QUEUE_BYTES_MAX: usize = 64 << 20;
/// The writer gathers queued frames into one write up to this many bytes,
/// so that small requests do not cost a system call each.
pub const WRITE_GATHER_BYTES_MAX: usize = 256 << 10;
/// How long connecting may take.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;

/// Where the reader sends a response (or why none came).
pub enum ReplyTo {
    Once(oneshot::Sender<Result<Bytes, String>>),
    /// A shared channel, with a tag the receiver chose, so that one task can
    /// wait for the replies of many requests at once.
    Channel(u64, mpsc::UnboundedSender<(u64, Result<Bytes, String>)>),
}

impl ReplyTo {
    fn send(self, result: Result<Bytes, String>) {
        match self {
            ReplyTo::Once(sender) => {
                let _ = sender.send(result);
            }
            ReplyTo::Channel(tag, sender) => {
                let _ = sender.send((tag, result));
            }
        }
    }
}

struct Outgoing {
    frame: Bytes,
    reply: Option<(i32, ReplyTo)>,
    /// The frame's share of WRITE_QUEUE_BYTES_MAX, given back once written.
    _budget: OwnedSemaphorePermit,
}

/// Requests written and not answered yet, oldest first. Shared by the
/// writer (which adds an entry before writing its frame) and the reader.
type Pending = Arc<Mutex<PendingState>>;

#[derive(Default)]
struct PendingState {
    queue: VecDeque<(i32, ReplyTo)>,
    /// Set once the connection broke: later requests fail at once.
    broken: Option<String>,
}

fn fail_all(pending: &Pending, reason: String) {
    let mut state = pending.lock().expect("pending lock");
    state.broken.get_or_insert(reason.clone());
    for (_, reply) in state.queue.drain(..) {
        reply.send(Err(reason.clone()));
    }
}

pub struct Connection {
    pub address: String,
    outgoing: mpsc::Sender<Outgoing>,
    budget: Arc<Semaphore>,
    pending: Pending,
    correlation_id: i32,
    client_id: StrBytes,
    /// The broker's supported versions, by API key.
    versions: BTreeMap<i16, (i16, i16)>,
}

impl Connection {
    /// Connects and asks the broker which versions it speaks.
    pub async fn open(address: &str) -> Result<Connection, BenchError> {
        let cannot =
            |error: String| BenchError::Connect(format!("cannot connect to {address}: {error}"));
        let stream = tokio::time::timeout(
            std::time::Duration::from_millis(CONNECT_TIMEOUT_MS),
            TcpStream::connect(address),
        )
        .await
        .map_err(|_| cannot("timed out".into()))?
        .map_err(|error| cannot(error.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (read_half, write_half) = stream.into_split();
        let (outgoing, receiver) = mpsc::channel(WRITE_QUEUE_MAX);
        let pending: Pending = Arc::default();
        tokio::spawn(write_loop(write_half, receiver, pending.clone()));
        tokio::spawn(read_loop(read_half, pending.clone()));
        let mut connection = Connection {
            address: address.to_string(),
            outgoing,
            budget: Arc::new(Semaphore::new(WRITE_QUEUE_BYTES_MAX)),
            pending,
            correlation_id: 0,
            client_id: StrBytes::from_static_str("runnel-bench"),
            versions: BTreeMap::new(),
        };
        // ApiVersions v0 is understood by every broker since Kafka 0.10.
        let response: ApiVersionsResponse = connection
            .request(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default())
            .await?;
        if response.error_code != 0 {
            return Err(BenchError::Kafka(format!(
                "{address} refused ApiVersions (error {})",
                response.error_code
            )));
        }
        connection.versions = response
            .api_keys
            .iter()
            .map(|key| (key.api_key, (key.min_version, key.max_version)))
            .collect();
        Ok(connection)
    }

    /// The highest version of `key` both sides speak, at most `wanted`, and
    /// at least `lowest` (older versions carry what the bench cannot use).
    pub fn version(&self, key: ApiKey, lowest: i16, wanted: i16) -> Result<i16, BenchError> {
        let (min, max) = self.versions.get(&(key as i16)).copied().ok_or_else(|| {
            BenchError::Other(format!("{} does not support {key:?}", self.address))
        })?;
        let ours = key.valid_versions();
        let version = max.min(wanted).min(ours.max);
        if version < min.max(ours.min).max(lowest) {
            return Err(BenchError::Other(format!(
                "{} supports {key:?} {min}..={max}, and the bench needs {lowest}..={wanted}",
                self.address
            )));
        }
        Ok(version)
    }

    /// Encodes a request with its header and length prefix.
    pub fn encode<Req: Encodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<(i32, Bytes), BenchError> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let mut frame = BytesMut::with_capacity(256);
        frame.put_i32(0);
        header
            .encode(&mut frame, key.request_header_version(version))
            .and_then(|()| request.encode(&mut frame, version))
            .map_err(|error| BenchError::Other(format!("cannot encode {key:?}: {error}")))?;
        let length = (frame.len() - 4) as i32;
        frame[0..4].copy_from_slice(&length.to_be_bytes());
        Ok((self.correlation_id, frame.freeze()))
    }

    /// Hands a frame to the writer. `reply` gets the response body (after
    /// its header) or the reason none will come; `None` for a request that
    /// gets no response (Produce with acks=0).
    pub async fn send(
        &self,
        frame: Bytes,
        reply: Option<(i32, ReplyTo)>,
    ) -> Result<(), BenchError> {
        if let Some(reason) = self.pending.lock().expect("pending lock").broken.clone() {
            return Err(BenchError::Connect(reason));
        }
        // A frame larger than the whole budget takes all of it.
        let share = frame.len().clamp(1, WRITE_QUEUE_BYTES_MAX) as u32;
        let budget = Arc::clone(&self.budget)
            .acquire_many_owned(share)
            .await
            .map_err(|_| {
                BenchError::Connect(format!("the connection to {} is closed", self.address))
            })?;
        self.outgoing
            .send(Outgoing {
                frame,
                reply,
                _budget: budget,
            })
            .await
            .map_err(|_| {
                BenchError::Connect(format!("the connection to {} is closed", self.address))
            })
    }

    /// Sends one request and waits for its response.
    pub async fn request<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp, BenchError> {
        let (correlation_id, frame) = self.encode(key, version, request)?;
        let (sender, receiver) = oneshot::channel();
        self.send(frame, Some((correlation_id, ReplyTo::Once(sender))))
            .await?;
        let body = receiver
            .await
            .map_err(|_| BenchError::Connect(format!("{} went away", self.address)))?
            .map_err(BenchError::Connect)?;
        decode_response(key, version, body)
    }
}

/// Decodes a response body: its header (whose correlation id the reader
/// already matched), then the message.
pub fn decode_response<Resp: Decodable>(
    key: ApiKey,
    version: i16,
    mut body: Bytes,
) -> Result<Resp, BenchError> {
    let header_version = if key == ApiKey::ApiVersions {
        0
    } else {
        key.response_header_version(version)
    };
    let malformed =
        |error: String| BenchError::Other(format!("malformed {key:?} response: {error}"));
    ResponseHeader::decode(&mut body, header_version).map_err(|e| malformed(e.to_string()))?;
    Resp::decode(&mut body, version).map_err(|e| malformed(e.to_string()))
}

async fn write_loop(
    mut socket: tokio::net::tcp::OwnedWriteHalf,
    mut receiver: mpsc::Receiver<Outgoing>,
    pending: Pending,
) {
    let mut gathered = BytesMut::new();
    while let Some(first) = receiver.recv().await {
        let mut next = Some(first);
        let mut frames: Vec<Bytes> = Vec::new();
        let mut bytes = 0usize;
        // Held until the frames are written.
        let mut budgets = Vec::new();
        {
            let mut state = pending.lock().expect("pending lock");
            while let Some(Outgoing {
                frame,
                reply,
                _budget: budget,
            }) = next.take()
            {
                budgets.push(budget);
                if let Some(reply) = reply {
                    if let Some(reason) = &state.broken {
                        reply.1.send(Err(reason.clone()));
                        continue;
                    }
                    // Registered before the frame is written, so that the
                    // reader always finds the entry of a response.
                    state.queue.push_back(reply);
                }
                bytes += frame.len();
                frames.push(frame);
                if bytes < WRITE_GATHER_BYTES_MAX {
                    next = receiver.try_recv().ok();
                }
            }
        }
        let result = if frames.len() == 1 {
            socket.write_all(&frames[0]).await
        } else {
            gathered.clear();
            for frame in &frames {
                gathered.extend_from_slice(frame);
            }
            socket.write_all(&gathered).await
        };
        drop(budgets);
        if let Err(error) = result {
            fail_all(&pending, format!("writing failed: {error}"));
            return;
        }
    }
    let _ = socket.shutdown().await;
}

async fn read_loop(mut socket: tokio::net::tcp::OwnedReadHalf, pending: Pending) {
    let mut buffer = BytesMut::with_capacity(1 << 20);
    let reason = loop {
        // Every whole frame in the buffer first.
        while buffer.len() >= 4 {
            let length = i32::from_be_bytes(buffer[0..4].try_into().expect("4"));
            if length < 4 || length as usize > RESPONSE_BYTES_MAX {
                fail_all(
                    &pending,
                    format!("the broker sent a response of {length} bytes"),
                );
                return;
            }
            let length = length as usize;
            if buffer.len() < 4 + length {
                buffer.reserve(4 + length - buffer.len());
                break;
            }
            buffer.advance(4);
            let body = buffer.split_to(length).freeze();
            let correlation_id = i32::from_be_bytes(body[0..4].try_into().expect("4"));
            let entry = pending.lock().expect("pending lock").queue.pop_front();
            match entry {
                Some((expected, reply)) if expected == correlation_id => reply.send(Ok(body)),
                Some((expected, reply)) => {
                    let reason = format!(
                        "response for correlation id {correlation_id}, expected {expected}"
                    );
                    reply.send(Err(reason.clone()));
                    fail_all(&pending, reason);
                    return;
                }
                None => {
                    fail_all(
                        &pending,
                        format!("an unasked-for response ({correlation_id})"),
                    );
                    return;
                }
            }
        }
        if buffer.capacity() - buffer.len() < 64 << 10 {
            buffer.reserve(1 << 20);
        }
        match socket.read_buf(&mut buffer).await {
            Ok(0) => break "the broker closed the connection".to_string(),
            Ok(_) => {}
            Err(error) => break format!("reading failed: {error}"),
        }
    };
    fail_all(&pending, reason);
}
