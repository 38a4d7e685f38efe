//! The `runnel` binary's parts, as a library so that the tests in `tests/`
//! can reach the configuration directly rather than only through a process.

pub mod cli;
pub mod client;
pub mod config;
pub mod dev;
pub mod group_cli;
pub mod shell;
