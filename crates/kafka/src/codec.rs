//! Decoding requests and encoding responses with the `kafka-protocol`
//! crate, for the versions of [`crate::versions::SUPPORTED`].

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::versions::{supported_range, SUPPORTED};

/// Kafka's UNSUPPORTED_VERSION error code.
pub const UNSUPPORTED_VERSION: i16 = 35;

/// A request, decoded.
#[derive(Debug)]
pub struct DecodedRequest {
    pub header: RequestHeader,
    pub api_key: ApiKey,
    pub api_version: i16,
    pub body: RequestKind,
}

/// Why a request frame could not be decoded. Each is answered by closing the
/// connection, as Kafka does, except an unsupported ApiVersions version,
/// which gets the KIP-511 fallback response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Too short to hold a request header.
    Truncated {
        bytes: usize,
    },
    UnknownApiKey {
        api_key: i16,
        correlation_id: i32,
    },
    UnsupportedVersion {
        api_key: ApiKey,
        api_version: i16,
        correlation_id: i32,
    },
    Malformed {
        api_key: ApiKey,
        api_version: i16,
        correlation_id: i32,
        reason: String,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { bytes } => {
                write!(f, "request of {bytes} bytes is too short for a header")
            }
            DecodeError::UnknownApiKey {
                api_key,
                correlation_id,
            } => write!(
                f,
                "unknown or unsupported API key {api_key} (correlation id {correlation_id})"
            ),
            DecodeError::UnsupportedVersion {
                api_key,
                api_version,
                correlation_id,
            } => write!(
                f,
                "{api_key:?} version {api_version} is not supported (correlation id {correlation_id})"
            ),
            DecodeError::Malformed {
                api_key,
                api_version,
                correlation_id,
                reason,
            } => write!(
                f,
                "malformed {api_key:?} v{api_version} request (correlation id {correlation_id}): {reason}"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one request frame (the bytes after the length prefix). Never
/// panics, and allocates at most in proportion to the frame.
pub fn decode_request(mut frame: Bytes) -> Result<DecodedRequest, DecodeError> {
    if frame.len() < 8 {
        return Err(DecodeError::Truncated { bytes: frame.len() });
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let api_version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Some((min, max)) = supported_range(raw_key) else {
        return Err(DecodeError::UnknownApiKey {
            api_key: raw_key,
            correlation_id,
        });
    };
    let api_key = ApiKey::try_from(raw_key).map_err(|_| DecodeError::UnknownApiKey {
        api_key: raw_key,
        correlation_id,
    })?;
    if api_version < min || api_version > max {
        return Err(DecodeError::UnsupportedVersion {
            api_key,
            api_version,
            correlation_id,
        });
    }
    let malformed = |reason: String| DecodeError::Malformed {
        api_key,
        api_version,
        correlation_id,
        reason,
    };
    let header_version = api_key.request_header_version(api_version);
    let header = RequestHeader::decode(&mut frame, header_version)
        .map_err(|error| malformed(format!("header: {}", one_line(error))))?;
    let body = RequestKind::decode(api_key, &mut frame, api_version)
        .map_err(|error| malformed(one_line(error)))?;
    Ok(DecodedRequest {
        header,
        api_key,
        api_version,
        body,
    })
}

/// `error` with its causes (`{:#}`) on one line. `kafka-protocol`'s
/// "Not enough bytes remaining in buffer!" ends in a newline, which would
/// split a log line in two.
fn one_line(error: impl fmt::Display) -> String {
    format!("{error:#}")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The response header version of `api_key` at `api_version`. ApiVersions
/// responses always use header v0 (KIP-511), so that a client can read the
/// response whatever version it asked for.
fn response_header_version(api_key: ApiKey, api_version: i16) -> i16 {
    if api_key == ApiKey::ApiVersions {
        0
    } else {
        api_key.response_header_version(api_version)
    }
}

/// Encodes a response, with its length prefix, ready to write.
pub fn encode_response(
    request: &RequestHeader,
    api_key: ApiKey,
    api_version: i16,
    body: &ResponseKind,
) -> Result<Bytes, String> {
    let header = ResponseHeader::default().with_correlation_id(request.correlation_id);
    let mut out = BytesMut::new();
    out.put_i32(0);
    header
        .encode(&mut out, response_header_version(api_key, api_version))
        .map_err(|error| format!("response header: {error}"))?;
    body.encode(&mut out, api_version)
        .map_err(|error| format!("{api_key:?} v{api_version} response: {error}"))?;
    let length = i32::try_from(out.len() - 4).map_err(|_| "response over 2 GiB".to_string())?;
    out[0..4].copy_from_slice(&length.to_be_bytes());
    Ok(out.freeze())
}

/// Our ApiVersions response at `version`: the [`SUPPORTED`] table, no
/// error, no throttle, and no features. The table is the same at every
/// version; the feature fields of v3 stay at their defaults (empty, epoch
/// -1), which encode to nothing.
pub fn api_versions_response(version: i16) -> ApiVersionsResponse {
    let _ = version;
    ApiVersionsResponse::default().with_api_keys(
        SUPPORTED
            .iter()
            .map(|(key, min, max)| {
                ApiVersion::default()
                    .with_api_key(*key as i16)
                    .with_min_version(*min)
                    .with_max_version(*max)
            })
            .collect(),
    )
}

/// The KIP-511 answer to an ApiVersions request of a version we do not
/// support: a v0 response with UNSUPPORTED_VERSION and our table, so that
/// the client retries with a version we have.
pub fn api_versions_unsupported_response(correlation_id: i32) -> Bytes {
    let body = api_versions_response(0).with_error_code(UNSUPPORTED_VERSION);
    let mut out = BytesMut::new();
    out.put_i32(0);
    out.put_i32(correlation_id);
    body.encode(&mut out, 0)
        .expect("an ApiVersions v0 response always encodes");
    let length = (out.len() - 4) as i32;
    out[0..4].copy_from_slice(&length.to_be_bytes());
    out.freeze()
}

/// Reads the correlation id of a response frame (after its length prefix),
/// for clients and tests.
pub fn response_correlation_id(frame: &[u8]) -> Option<i32> {
    let mut bytes = frame;
    (bytes.remaining() >= 4).then(|| bytes.get_i32())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::StrBytes;

    fn frame<T: Encodable>(api_key: ApiKey, version: i16, body: &T) -> Bytes {
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_static_str("test")));
        let mut out = BytesMut::new();
        header
            .encode(&mut out, api_key.request_header_version(version))
            .expect("header");
        body.encode(&mut out, version).expect("body");
        out.freeze()
    }

    #[test]
    fn requests_decode_at_every_supported_version() {
        for version in 0..=3 {
            let decoded = decode_request(frame(
                ApiKey::ApiVersions,
                version,
                &ApiVersionsRequest::default(),
            ))
            .expect("decodes");
            assert_eq!(decoded.header.correlation_id, 42);
            assert!(matches!(decoded.body, RequestKind::ApiVersions(_)));
        }
        for version in 0..=12 {
            let request = MetadataRequest::default().with_topics(Some(Vec::new()));
            let decoded = decode_request(frame(ApiKey::Metadata, version, &request))
                .unwrap_or_else(|error| panic!("v{version}: {error}"));
            assert_eq!(decoded.api_version, version);
        }
    }

    #[test]
    fn unknown_keys_and_versions_are_named() {
        let mut bytes = frame(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).to_vec();
        bytes[3] = 9;
        assert!(matches!(
            decode_request(Bytes::from(bytes.clone())),
            Err(DecodeError::UnsupportedVersion {
                correlation_id: 42,
                ..
            })
        ));
        bytes[0] = 0x7f;
        assert!(matches!(
            decode_request(Bytes::from(bytes)),
            Err(DecodeError::UnknownApiKey {
                correlation_id: 42,
                ..
            })
        ));
    }

    #[test]
    fn truncations_never_panic() {
        let bytes = frame(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(None),
        );
        for length in 0..bytes.len() {
            let _ = decode_request(bytes.slice(..length));
        }
    }

    #[test]
    fn a_hostile_array_length_does_not_allocate() {
        // Metadata v1: header, then a topics array claiming 2^31 - 1 names.
        let mut bytes = frame(
            ApiKey::Metadata,
            1,
            &MetadataRequest::default().with_topics(Some(Vec::new())),
        )
        .to_vec();
        let length = bytes.len();
        bytes[length - 4..].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            decode_request(Bytes::from(bytes)),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn api_versions_responses_use_header_v0() {
        let header = RequestHeader::default().with_correlation_id(7);
        let body = ResponseKind::ApiVersions(api_versions_response(3));
        let bytes = encode_response(&header, ApiKey::ApiVersions, 3, &body).expect("encodes");
        // Length, correlation id, then straight the error code: no tagged
        // fields byte in the header (librdkafka 2.0.2 depends on it).
        assert_eq!(&bytes[4..8], &7i32.to_be_bytes());
        assert_eq!(&bytes[8..10], &0i16.to_be_bytes());
        let fallback = api_versions_unsupported_response(9);
        assert_eq!(&fallback[4..8], &9i32.to_be_bytes());
        assert_eq!(&fallback[8..10], &UNSUPPORTED_VERSION.to_be_bytes());
    }
}
