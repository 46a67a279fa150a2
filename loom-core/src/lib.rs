//! # loom-core: the pure, IO-free heart of Loom
//!
//! This crate is the **room of determinism**. It holds the history model ([`Event`]), the
//! authoring API ([`Workflow`], [`Activity`], [`WorkflowContext`]) and the replay state
//! machine ([`WorkflowMachine`]) that runs workflow code against its history, checks every
//! command against the record and decides what to append next.
//!
//! What it must not touch: no tokio or other runtime, no database or file, no clock, no OS
//! randomness, no environment. Time, entropy and messages come in through [`Activation`];
//! new events go out in a [`Decision`]. A test checks the dependency list, and `clippy.toml`
//! beside the manifest bans `Instant::now`, `SystemTime::now`, `thread::sleep` and hash maps
//! with random iteration order. Runtimes (loom-worker, or your own) own IO and scheduling.
//!
//! ## The driving loop
//!
//! A runtime does, for each workflow task:
//!
//! 1. load the history (or reuse the machine it kept from the last task: sticky execution);
//! 2. `machine.activate(Activation { now, entropy, messages })`;
//! 3. commit `decision.events` atomically with the tasks they imply: every
//!    `ActivityScheduled` is an activity to run, every `TimerScheduled` a timer to arm, a
//!    terminal event closes the workflow;
//! 4. on a [`ReplayError`], commit nothing and leave the workflow paused with the error.
//!
//! The example in [`machine`] runs this loop by hand.
//!
//! ## Concurrency inside a workflow
//!
//! Await several futures at once with [`future::join`], [`future::join_all`] and
//! [`future::select`]: they poll in a fixed order, so commands are issued, and results
//! consumed, in the same order on every replay. Never use `futures::select!`, which polls in
//! random order.

pub mod context;
pub mod event;
pub mod failure;
pub mod history;
pub mod machine;
pub mod options;
pub mod tags;
pub mod types;
pub mod workflow;

pub use context::{ActivityCall, ChildCall, Logger, SignalWait, Sleep, WorkflowContext};
pub use event::{
    CarriedSignal, Event, EventKind, FORMAT_CANCELS_DROPPED_WORK, HISTORY_FORMAT, LogLevel,
    LogRecord, ParentRef, RecordedValue, ResetOrigin, Role, TimeoutScope, Timeouts,
};
pub use failure::{ActivityError, ChildError, ContinueAsNew, Failure, SignalError, WorkflowError};
pub use machine::{
    Activation, Decision, NonDeterminism, Outcome, PendingActivity, PendingChild, PendingTimer,
    Progress, ReplayError, WorkflowMachine,
};
pub use options::{ActivityOptions, ChildOptions, ParentClosePolicy, RetryPolicy};
pub use tags::{TagValue, Tags};
pub use types::{ActivityId, ChildId, Payload, PayloadError, Seq, TimerId, Timestamp, WorkflowId};
pub use workflow::{
    Activity, ActivityContext, ActivityInfo, BoxFuture, CancelFlag, Cancelled, DynActivity,
    DynWorkflow, Registry, RegistryError, RunFuture, Signal, Signals, Workflow, activity_type,
    workflow_type,
};

/// Deterministic combinators for awaiting several workflow futures at once.
///
/// Each polls its futures in a fixed order. `select` favours its first future when both are
/// ready, which on replay is decided by the recorded order of results.
pub mod future {
    pub use futures::future::{
        Either, join, join_all, join3, join4, select, select_all, try_join, try_join_all,
    };
}
