//! A request that claims a huge array must not make the decoder allocate
//! for it: `kafka-protocol` 0.18 reserves capacity for the length a peer
//! claims, so without the patch in `vendor/kafka-protocol` a frame of a few
//! bytes claiming 2^31 topics asks for hundreds of gigabytes and the process
//! aborts. This test binary counts allocations to prove the bound holds; it
//! has one test so that no other test allocates while it measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use runnel_kafka::codec::{decode_request, DecodeError};

/// The system allocator, remembering the largest single request.
struct Largest;

static LARGEST_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST_BYTES.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST_BYTES.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

fn frame(api_key: ApiKey, version: i16, header_and_body: &[&[u8]]) -> Bytes {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&(api_key as i16).to_be_bytes());
    bytes.extend_from_slice(&version.to_be_bytes());
    bytes.extend_from_slice(&7i32.to_be_bytes());
    for part in header_and_body {
        bytes.extend_from_slice(part);
    }
    Bytes::from(bytes)
}

#[test]
fn claimed_lengths_do_not_allocate() {
    // The counter sees allocations at all.
    LARGEST_BYTES.store(0, Ordering::Relaxed);
    let probe = std::hint::black_box(vec![0u8; 1 << 20]);
    assert!(LARGEST_BYTES.load(Ordering::Relaxed) >= probe.len());
    drop(probe);

    let null_client_id = (-1i16).to_be_bytes();
    let cases = [
        // Metadata v1 (header v1: a nullable client id), 2^31 - 1 topics.
        frame(
            ApiKey::Metadata,
            1,
            &[&null_client_id, &i32::MAX.to_be_bytes()],
        ),
        // Metadata v12 (header v2: client id, no tagged fields), a compact
        // array of 2^32 - 2 topics.
        frame(
            ApiKey::Metadata,
            12,
            &[&null_client_id, &[0], &[0xff, 0xff, 0xff, 0xff, 0x0f]],
        ),
        // Fetch v13: replica id, max wait, min and max bytes, isolation
        // level, session id and epoch, then a compact topics array of
        // 2^32 - 2.
        frame(
            ApiKey::Fetch,
            13,
            &[
                &null_client_id,
                &[0],
                &(-1i32).to_be_bytes(),
                &500i32.to_be_bytes(),
                &1i32.to_be_bytes(),
                &1_048_576i32.to_be_bytes(),
                &[0],
                &0i32.to_be_bytes(),
                &(-1i32).to_be_bytes(),
                &[0xff, 0xff, 0xff, 0xff, 0x0f],
            ],
        ),
        // Produce v3: 2^31 - 1 topics.
        frame(
            ApiKey::Produce,
            3,
            &[
                &null_client_id,
                &(-1i16).to_be_bytes(),
                &1i16.to_be_bytes(),
                &1000i32.to_be_bytes(),
                &i32::MAX.to_be_bytes(),
            ],
        ),
    ];
    for case in cases {
        LARGEST_BYTES.store(0, Ordering::Relaxed);
        let result = decode_request(case.clone());
        let largest_bytes = LARGEST_BYTES.load(Ordering::Relaxed);
        assert!(
            matches!(result, Err(DecodeError::Malformed { .. })),
            "{case:?}: {result:?}"
        );
        // Every allocation stays small; the exact bound is loose because
        // the error message is formatted too.
        assert!(
            largest_bytes < 64 * 1024,
            "{case:?} allocated {largest_bytes} bytes at once"
        );
    }
}
