//! The store engine: every rule of the store, written once, pure.
//!
//! A storage operation (start a workflow, commit a workflow task, commit an activity attempt,
//! deliver a signal, release or renew a lease, claim tasks) is *decided* here and *applied* by
//! a backend. Deciding takes the request and nothing else, and returns a [`WriteSet`]: the
//! [`Check`]s that must hold when it is applied, and the [`Op`]s to apply if they do, in
//! order. Times in it are [`When`]s, resolved by the applier against the store's own clock at
//! the moment of the commit, so no worker's clock ever decides when work becomes visible.
//!
//! Backends decide nothing. A backend reads the rows a check names, under the same atomicity
//! as its writes (a single writer, a write transaction, row locks), and applies the
//! primitives. The embedded backends share one applier, [`apply`], over the [`Apply`]
//! trait (SQLite implements each primitive in SQL; `MemoryStorage` and redb share the row
//! implementation in [`rows`]); PostgreSQL's `loom_commit` function applies the same
//! vocabulary on the server, checking the same conditions under row locks.
//!
//! ```
//! use loom_core::{Event, EventKind, Payload, Seq, Timestamp, WorkflowId};
//! use loom_storage::engine::{self, Check, Op};
//!
//! let started = Event {
//!     seq: Seq::FIRST,
//!     at: Timestamp::from_millis(0),
//!     kind: EventKind::workflow_started("Greeting", 1, Payload::NULL),
//! };
//! let ws = engine::create(&WorkflowId::new("greet-1"), started).unwrap();
//! // Applied only if no workflow has the id: then the row, its first event, its task.
//! assert!(matches!(ws.checks[..], [Check::Absent { .. }]));
//! assert!(matches!(ws.ops[..], [Op::CreateWorkflow { .. }, Op::InsertTask { .. }]));
//! // An id a database cannot hold is refused before anything is written.
//! assert!(engine::create(&WorkflowId::new(""), Event { seq: Seq::FIRST, ..ws_event() }).is_err());
//! # fn ws_event() -> Event { Event { seq: Seq::FIRST, at: Timestamp::from_millis(0), kind: EventKind::WorkflowTaskCompleted {} } }
//! ```
//!
//! ## The order of application
//!
//! An applier evaluates the checks in order and stops at the first that fails: its error is
//! the answer (see [`Check::verdict`]) and nothing is written. Otherwise it applies the ops in
//! order. Within a write set no two ops touch the same row unless the later one reads the
//! former's effect by its definition ([`Op::Settle`] and the claims come after the writes they
//! see), so an applier may also group the writing ops of a run into one statement.

mod apply;
mod check;
mod op;
pub mod rows;
mod rules;
pub mod wire;

pub use apply::{Apply, NewWorkflow, ResetRun, apply};
pub use check::{Check, Found, TaskView, WorkflowView};
pub use op::{
    ActivitySpec, Applied, NewTask, Op, StatusChange, Sync, When, WorkflowChange, WriteSet,
};
pub use rules::{
    claim_activity_tasks, claim_workflow_tasks, complete_activity_task, complete_workflow_task,
    create, deliver, forget_affinity, pause, purge, release, renew, reset, resume, safe_log_text,
    terminate, write_schedule,
};
