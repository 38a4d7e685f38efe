//! Any bytes as a request frame: decoding must return, never panic, and
//! never allocate out of proportion to the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = runnel_kafka::codec::decode_request(bytes::Bytes::copy_from_slice(data));
});
