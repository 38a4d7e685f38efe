//! Any bytes as a record batch: validation must return, never panic; what
//! it accepts must stay valid once stamped. Each input is tried as it is and
//! with its CRC made right, so that the fuzzer gets past the checksum into
//! the header and record checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn check(batch: &[u8]) {
    if runnel_kafka::batch::validate(batch).is_ok() {
        let mut stamped = batch.to_vec();
        runnel_kafka::batch::stamp(&mut stamped, 42, 7, Some(1_000));
        assert!(runnel_kafka::batch::validate(&stamped).is_ok());
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= runnel_kafka::batch::HEADER_BYTES {
        let mut fixed = data.to_vec();
        let crc = crc32c::crc32c(&fixed[21..]);
        fixed[17..21].copy_from_slice(&crc.to_be_bytes());
        check(&fixed);
    }
});
