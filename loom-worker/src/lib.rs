//! # loom-worker: the tokio runtime around loom-core, and the client API
//!
//! This crate is the **room of time and concurrency**: it polls a [`loom_storage::Storage`]
//! for work, holds and renews leases, replays workflows with [`loom_core::WorkflowMachine`]
//! (keeping recently active ones in memory: sticky execution), runs activities under their
//! retry policies and timeouts, and offers the [`Client`] that starts and follows workflows.
//!
//! What it must not touch: SQL or any backend's details (only the `Storage` trait), and
//! workflow semantics (what a history means is loom-core's; what tasks it implies is
//! loom-storage's `TaskPlan`).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use loom_core::{Activity, ActivityContext, Failure, Registry, Workflow, WorkflowContext, WorkflowError};
//! use loom_storage::MemoryStorage;
//! use loom_worker::{StartOptions, Worker};
//!
//! struct Greet;
//! impl Activity for Greet {
//!     const NAME: &'static str = "greet";
//!     type Input = String;
//!     type Output = String;
//!     async fn run(&self, _: ActivityContext, name: String) -> Result<String, Failure> {
//!         Ok(format!("hello, {name}"))
//!     }
//! }
//!
//! struct Greeting;
//! impl Workflow for Greeting {
//!     const NAME: &'static str = "Greeting";
//!     type Input = String;
//!     type State = ();
//!     type Output = String;
//!     async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
//!         Ok(ctx.activity::<Greet>(ctx.input().clone()).await?)
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let mut registry = Registry::new();
//! registry.add_workflow::<Greeting>().unwrap().add_activity(Greet).unwrap();
//! let worker = Worker::new(Arc::new(MemoryStorage::new()), registry);
//! let client = worker.client();
//! let handle = client.start::<Greeting>(&"Ada".to_owned(), StartOptions::default()).await.unwrap();
//! let running = tokio::spawn({
//!     let worker = worker.clone();
//!     async move { worker.run_until_idle(Duration::ZERO).await }
//! });
//! assert_eq!(handle.result().await.unwrap(), "hello, Ada");
//! running.await.unwrap().unwrap();
//! # });
//! ```

mod client;
mod schedules;
mod tasks;
pub mod telemetry;
pub mod trace;
mod worker;

pub use client::{Client, ClientError, ResetDone, ResetTo, StartOptions, WorkflowHandle};
pub use schedules::{RecentAction, ScheduleDefinition, ScheduleDescription};
pub use tasks::TaskState;
pub use telemetry::Telemetry;
pub use worker::{
    Limits, MetricsSnapshot, Retention, Worker, WorkerConfig, WorkerError, WorkerMetrics,
    shutdown_signal,
};
