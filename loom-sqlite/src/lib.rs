//! # loom-sqlite: the embedded default backend (not built yet)
//!
//! This crate will implement `loom_storage::Storage` on SQLite through rusqlite: WAL mode,
//! versioned migrations, group commit of many workflows' transitions on one writer, reads on
//! separate connections, and every call off the tokio runtime threads. See issue 4.
//!
//! What it must not touch: workflow semantics. It stores what loom-core decided and runs the
//! shared conformance suite from loom-storage. Today it holds no code: nothing here pretends
//! to work.
