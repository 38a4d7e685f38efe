//! The LRU-bounded cache of open file handles, owned by the disk thread.
//!
//! Opening a file for every write would cost a path lookup per operation, and
//! keeping every file open would exhaust file descriptors on a node with many
//! partitions, so at most `OPEN_FILES_MAX` handles stay open. Each handle
//! also remembers what was done to its file since its last `fdatasync`,
//! which group commit needs to decide whether coalescing is safe, and which
//! eviction needs so that it never closes a handle with unsynced data
//! silently (see `Worker::make_room`).

use std::collections::HashMap;
use std::fs::File;

/// An open file and what happened to it since its last `fdatasync`.
pub(crate) struct Handle {
    pub(crate) file: File,
    /// Logical time of the last use, for LRU eviction.
    last_use: u64,
    /// Written or truncated since the last `fdatasync`.
    pub(crate) dirty: bool,
    /// One past the highest byte written since the last `fdatasync`; 0 when
    /// nothing was.
    pub(crate) unsynced_end: u64,
    /// Truncated (or extended by a zero-length write) since the last
    /// `fdatasync`.
    pub(crate) resized: bool,
}

impl Handle {
    /// The file's data and size are durable (an `fdatasync` succeeded).
    pub(crate) fn mark_synced(&mut self) {
        self.dirty = false;
        self.unsynced_end = 0;
        self.resized = false;
    }
}

/// Handles keyed by the file's relative path. Paths are validated to have a
/// single spelling (see `paths`), so one file never has two handles.
#[derive(Default)]
pub(crate) struct Handles {
    map: HashMap<String, Handle>,
    clock: u64,
}

impl Handles {
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The handle of `name`, if open, marked as just used.
    pub(crate) fn get(&mut self, name: &str) -> Option<&mut Handle> {
        self.clock += 1;
        let clock = self.clock;
        let handle = self.map.get_mut(name)?;
        handle.last_use = clock;
        Some(handle)
    }

    /// Caches a newly opened, clean handle. The caller made room first.
    pub(crate) fn insert(&mut self, name: &str, file: File) -> &mut Handle {
        self.clock += 1;
        let handle = Handle {
            file,
            last_use: self.clock,
            dirty: false,
            unsynced_end: 0,
            resized: false,
        };
        assert!(
            self.map.insert(name.to_string(), handle).is_none(),
            "a file has one handle"
        );
        self.map.get_mut(name).expect("just inserted")
    }

    pub(crate) fn remove(&mut self, name: &str) -> Option<Handle> {
        self.map.remove(name)
    }

    /// After a rename: the handle of `from` now names `to`'s inode, and the
    /// handle of the replaced `to`, if any, refers to an unlinked file whose
    /// content no name reaches any more, so it is closed.
    pub(crate) fn rename(&mut self, from: &str, to: &str) {
        let moved = self.map.remove(from);
        self.map.remove(to);
        if let Some(handle) = moved {
            self.map.insert(to.to_string(), handle);
        }
    }

    /// The handle to evict: the least recently used clean one, or, if every
    /// handle is dirty, the least recently used of all. A linear scan, which
    /// runs only when a file is opened while the cache is full, over at most
    /// `OPEN_FILES_MAX` entries.
    pub(crate) fn victim(&self) -> Option<String> {
        let clean = self
            .map
            .iter()
            .filter(|(_, handle)| !handle.dirty)
            .min_by_key(|(_, handle)| handle.last_use);
        let any = || self.map.iter().min_by_key(|(_, handle)| handle.last_use);
        clean.or_else(any).map(|(name, _)| name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> File {
        tempfile::tempfile().expect("temp file")
    }

    #[test]
    fn evicts_least_recently_used_clean_handle_first() {
        let mut handles = Handles::default();
        handles.insert("a", scratch());
        handles.insert("b", scratch()).dirty = true;
        handles.insert("c", scratch());
        assert_eq!(handles.victim().as_deref(), Some("a"));
        handles.get("a");
        assert_eq!(handles.victim().as_deref(), Some("c"));
        handles.get("c").expect("open").dirty = true;
        handles.get("a").expect("open").dirty = true;
        // All dirty: the least recently used of all.
        assert_eq!(handles.victim().as_deref(), Some("b"));
    }

    #[test]
    fn rename_moves_the_handle_and_closes_the_replaced_one() {
        let mut handles = Handles::default();
        handles.insert("from", scratch()).dirty = true;
        handles.insert("to", scratch());
        handles.rename("from", "to");
        assert_eq!(handles.len(), 1);
        assert!(handles.get("to").expect("moved").dirty);
        assert!(handles.get("from").is_none());
    }
}
