//! # loom-postgres: many workers on many machines (not built yet)
//!
//! This crate will implement `loom_storage::Storage` on PostgreSQL through sqlx: `FOR UPDATE
//! SKIP LOCKED` batched claims, leases and timers judged by the database clock, LISTEN/NOTIFY
//! wake-ups, migrations under an advisory lock. See issue 7.
//!
//! What it must not touch: workflow semantics, and no SQL leaves this crate. Today it holds no
//! code: nothing here pretends to work.
