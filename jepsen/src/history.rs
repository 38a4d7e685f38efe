//! The history recorder: every invocation and completion, numbered and timed
//! under one lock (so that index order is time order), kept in memory for the
//! checkers and streamed to `history.jsonl` as it happens, so that an
//! interrupted run still leaves its history behind.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use runnel_checkers::history::{Event, EventType, ProcessId, QueueOp};

/// At most this many events are recorded; past it the run is cut short and
/// judged invalid (a truncated history proves nothing).
pub const EVENTS_MAX: usize = 4_000_000;

struct Inner {
    events: Vec<Event<QueueOp>>,
    writer: BufWriter<File>,
    write_error: Option<String>,
    overflowed: bool,
}

/// A thread-safe history.
pub struct Recorder {
    start: Instant,
    inner: Mutex<Inner>,
}

impl Recorder {
    /// A recorder writing to `path`, its clock starting now.
    pub fn create(path: &Path) -> Result<Self, String> {
        let file = File::create(path).map_err(|error| format!("{}: {error}", path.display()))?;
        Ok(Recorder {
            start: Instant::now(),
            inner: Mutex::new(Inner {
                events: Vec::new(),
                writer: BufWriter::new(file),
                write_error: None,
                overflowed: false,
            }),
        })
    }

    /// Nanoseconds since the recorder started.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records one event. Returns false once the history is full.
    pub fn record(
        &self,
        process: ProcessId,
        event_type: EventType,
        op: QueueOp,
        error: Option<String>,
    ) -> bool {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if inner.events.len() >= EVENTS_MAX {
            inner.overflowed = true;
            return false;
        }
        let event = Event {
            index: inner.events.len() as u64,
            time_ns: self.now_ns(),
            process,
            event_type,
            op,
            error,
        };
        if inner.write_error.is_none() {
            let written = serde_json::to_writer(&mut inner.writer, &event)
                .map_err(|error| error.to_string())
                .and_then(|()| {
                    inner
                        .writer
                        .write_all(b"\n")
                        .map_err(|error| error.to_string())
                });
            if let Err(error) = written {
                inner.write_error = Some(error);
            }
        }
        inner.events.push(event);
        true
    }

    /// Flushes the file and returns the events, with any write error and
    /// whether the history overflowed.
    pub fn finish(&self) -> (Vec<Event<QueueOp>>, Option<String>, bool) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = inner.writer.flush() {
            inner.write_error.get_or_insert(error.to_string());
        }
        (
            inner.events.clone(),
            inner.write_error.clone(),
            inner.overflowed,
        )
    }
}
