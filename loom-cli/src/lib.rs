//! # loom-cli: the `loom` command (not built yet)
//!
//! This crate will hold the `loom` binary and the library behind it, so that users can build
//! their own `loom`-style binary with their workflow types registered: init, worker, start,
//! list, inspect, signal, cancel, stats, replay, demo and bench. See issue 6.
//!
//! What it must not touch: SQL (it opens backends by URL through their crates) and workflow
//! semantics. Today it prints that it is not built yet and exits with an error.
