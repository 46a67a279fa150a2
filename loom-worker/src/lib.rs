//! # loom-worker: the runtime (not built yet)
//!
//! This crate will be the tokio shell around loom-core: it polls the durable task queue of a
//! `loom_storage::Storage`, holds and renews leases, replays workflows with
//! `loom_core::WorkflowMachine` (keeping hot ones in a sticky cache), runs activities with their
//! retry policies and timeouts, and offers the `Client` API. See issue 5.
//!
//! What it must not touch: SQL or any backend detail (only the `Storage` trait), and workflow
//! semantics (those are loom-core's). Today it holds no code: nothing here pretends to work.
