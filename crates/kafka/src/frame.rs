//! Request framing: every Kafka request and response is preceded by its
//! length as a big-endian i32.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// The largest request frame accepted: Kafka's `socket.request.max.bytes`
/// default (100 MiB). A longer one closes the connection before any of it is
/// read, so a hostile length prefix never allocates.
pub const FRAME_BYTES_MAX: usize = 100 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    TooLarge { length: i64 },
    Negative { length: i64 },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { length } => write!(
                f,
                "request frame of {length} bytes is over the {FRAME_BYTES_MAX} byte limit"
            ),
            FrameError::Negative { length } => {
                write!(f, "request frame length {length} is negative")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Checks a request's 4-byte length prefix and returns the frame length.
pub fn frame_length(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let length = i32::from_be_bytes(prefix);
    if length < 0 {
        return Err(FrameError::Negative {
            length: i64::from(length),
        });
    }
    let length = length as usize;
    if length > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            length: length as i64,
        });
    }
    Ok(length)
}

/// `body` with its length prefix, ready to write.
pub fn with_length_prefix(body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + body.len());
    out.put_i32(i32::try_from(body.len()).expect("frame under 2 GiB"));
    out.put_slice(body);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_bounded() {
        assert_eq!(frame_length(12i32.to_be_bytes()), Ok(12));
        assert_eq!(
            frame_length((FRAME_BYTES_MAX as i32).to_be_bytes()),
            Ok(FRAME_BYTES_MAX)
        );
        assert!(matches!(
            frame_length((FRAME_BYTES_MAX as i32 + 1).to_be_bytes()),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            frame_length((-1i32).to_be_bytes()),
            Err(FrameError::Negative { .. })
        ));
        assert_eq!(
            &with_length_prefix(b"abc")[..],
            &[0, 0, 0, 3, b'a', b'b', b'c']
        );
    }
}
