//! Storage: see docs/storage.md.
