//! # loom-redb: a pure-Rust embedded backend (not built yet)
//!
//! This crate will implement `loom_storage::Storage` on redb, a pure-Rust ACID key-value store,
//! for single-process embedders who want no C dependency. See issue 8.
//!
//! What it must not touch: workflow semantics. Today it holds no code: nothing here pretends to
//! work.
