//! The replay machine: runs workflow code against its history, sans IO.
//!
//! A [`WorkflowMachine`] is built from a workflow type and its recorded history. Each
//! [`WorkflowMachine::activate`] call is one workflow task: the runtime passes the time, some
//! entropy and the messages that arrived (activity results, fired timers, signals, cancel
//! requests); the machine answers with a [`Decision`]: the new events to append, in order, and
//! the log lines written. The runtime commits the decision atomically and derives the work it
//! implies (activities to run, timers to arm) from the new events.
//!
//! The first activation replays the recorded history: the code runs again, every command it
//! issues is checked against the recorded event at the same position, recorded results are
//! handed back instead of re-running side effects. A command that disagrees with the record is
//! a [`NonDeterminism`] error; the machine is then poisoned and the decision is never made, so
//! nothing is appended and the workflow can continue once fixed code is deployed.
//!
//! Later activations of the same machine skip the replay (sticky execution): a runtime that
//! keeps the machine in memory pays O(new events) per task. A runtime whose commit failed must
//! drop the machine, since it has already applied the uncommitted events.
//!
//! ```
//! use loom_core::{
//!     Activation, Event, EventKind, Payload, Seq, Timestamp, Workflow,
//!     WorkflowContext, WorkflowError, WorkflowMachine, workflow_type,
//! };
//! use std::time::Duration;
//!
//! struct Nap;
//! impl Workflow for Nap {
//!     const NAME: &'static str = "Nap";
//!     type Input = u64;
//!     type State = ();
//!     type Output = String;
//!     async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
//!         ctx.sleep(Duration::from_millis(*ctx.input())).await?;
//!         Ok("rested".into())
//!     }
//! }
//!
//! let started = Event {
//!     seq: Seq::FIRST,
//!     at: Timestamp::from_millis(0),
//!     kind: EventKind::workflow_started("Nap", 1, Payload::encode(&500u64).unwrap()),
//! };
//! let mut history = vec![started];
//! let mut machine = WorkflowMachine::new(workflow_type::<Nap>(), "nap-1".into(), history.clone()).unwrap();
//!
//! // Task 1: the code starts a timer and blocks.
//! let d = machine.activate(Activation::new(Timestamp::from_millis(10), 7)).unwrap();
//! assert!(matches!(d.events[0].kind, EventKind::TimerScheduled { .. }));
//! history.extend(d.events);
//!
//! // Task 2, on a fresh machine (say, after a crash): replay, then deliver the timer.
//! let mut machine = WorkflowMachine::new(workflow_type::<Nap>(), "nap-1".into(), history.clone()).unwrap();
//! let fired = EventKind::TimerFired { timer_id: loom_core::TimerId(Seq::new(2)) };
//! let d = machine
//!     .activate(Activation::new(Timestamp::from_millis(510), 8).with_messages([fired]))
//!     .unwrap();
//! assert!(matches!(d.events.last().unwrap().kind, EventKind::WorkflowCompleted { .. }));
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use crate::event::{
    CarriedSignal, Event, EventKind, FORMAT_CANCELS_DROPPED_WORK, HISTORY_FORMAT, LogLevel,
    LogRecord, ParentRef, Role,
};
use crate::failure::{ActivityError, ChildError, Failure, WorkflowError};
use crate::options::ParentClosePolicy;
use crate::types::{ActivityId, ChildId, Payload, Seq, TimerId, Timestamp, WorkflowId};
use crate::workflow::{DynWorkflow, RunFuture};

/// The inputs of one workflow task.
#[derive(Clone, Debug)]
pub struct Activation {
    /// The time of this task: stamped on new events, returned by `ctx.now()`, and the base
    /// of new timers.
    pub now: Timestamp,
    /// Seed for the random values the code asks for in this task.
    pub entropy: u64,
    /// The messages that arrived since the last task, in arrival order. Each must be an input
    /// event kind other than `WorkflowStarted` (see [`EventKind::is_message`]).
    pub messages: Vec<EventKind>,
}

impl Activation {
    /// An activation with no messages.
    pub fn new(now: Timestamp, entropy: u64) -> Self {
        Activation {
            now,
            entropy,
            messages: Vec::new(),
        }
    }

    /// Adds messages to deliver.
    pub fn with_messages(mut self, messages: impl IntoIterator<Item = EventKind>) -> Self {
        self.messages.extend(messages);
        self
    }
}

/// The outputs of one workflow task: what to commit.
#[derive(Clone, Debug, Default, PartialEq)]
#[must_use = "a decision does nothing until it is committed"]
pub struct Decision {
    /// New events, with consecutive sequence numbers following the history's last.
    pub events: Vec<Event>,
    /// Lines the code logged in this task (none from replayed history).
    pub logs: Vec<LogRecord>,
    /// Messages that were not appended, with the reason: a second result for the same
    /// activity, a timer that already fired, anything after the workflow ended.
    pub dropped: Vec<(EventKind, String)>,
    /// The messages (by their position in the activation) left untouched because the run
    /// had ended before them and a next run follows (it continued as new, or failed and is
    /// retried): the runtime does not consume them, so that the store carries those from
    /// outside (a cancel request; signals after a retried failure) over to the next run.
    /// Signals after a continue-as-new are not left but carried in its event, after the ones
    /// the code had not taken, so that the next run receives them all in order.
    pub left_for_next_run: Vec<usize>,
}

/// How a workflow ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// It returned its output.
    Completed {
        /// The output.
        output: Payload,
    },
    /// It failed.
    Failed {
        /// Why.
        failure: Failure,
    },
    /// It was cancelled.
    Cancelled,
    /// It was ended from outside, without running its code.
    Terminated {
        /// Who ended it and why.
        reason: String,
    },
    /// A timeout set at start passed; its code was not run again.
    TimedOut {
        /// Which timeout.
        scope: crate::event::TimeoutScope,
    },
    /// The run ended and the workflow continues as a new run with this input.
    ContinuedAsNew {
        /// The next run's input.
        input: Payload,
    },
}

/// A mismatch between the recorded history and what the code does now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NonDeterminism {
    /// The position in the history where they disagree.
    pub seq: Seq,
    /// The recorded event at that position, or `None` when the history ends there.
    pub recorded: Option<String>,
    /// What the code did instead, or `None` when it issued nothing (it blocked or finished).
    pub attempted: Option<String>,
}

impl fmt::Display for NonDeterminism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let recorded = self.recorded.as_deref().unwrap_or("the end of the history");
        let attempted = self
            .attempted
            .as_deref()
            .unwrap_or("nothing (it blocked or finished)");
        write!(
            f,
            "at {}: the history has {recorded}, but the code now issued {attempted}",
            self.seq
        )
    }
}

/// Why a workflow task could not be decided. None of these is a failure of the workflow: the
/// runtime leaves it paused, with the error visible, until code that replays cleanly runs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The code does something other than what the history records.
    #[error("non-determinism {0}")]
    NonDeterminism(NonDeterminism),
    /// The history cannot have been written by Loom: out of order, or an event that refers to
    /// something that does not exist.
    #[error("corrupt history{}: {reason}", seq.map(|s| format!(" at {s}")).unwrap_or_default())]
    Corrupt {
        /// Where, if one event is to blame.
        seq: Option<Seq>,
        /// What is wrong.
        reason: String,
    },
    /// The history names another workflow type than the one asked to replay it.
    #[error("the history is of workflow {recorded:?}, not {code:?}")]
    WrongWorkflow {
        /// The name in the history.
        recorded: String,
        /// The name of the code.
        code: String,
    },
    /// The run was started with another version of the workflow type.
    #[error(
        "the run was started with version {recorded} of {name:?}, this code is version {code}: register version {recorded} beside it (a type with the same NAME and VERSION = {recorded}) to run it"
    )]
    VersionMismatch {
        /// The workflow type.
        name: String,
        /// The version in the history.
        recorded: u32,
        /// The version of the code.
        code: u32,
    },
    /// The history was written in a format newer than this build understands.
    #[error("the history has format {recorded}; this build reads formats up to {supported}")]
    UnsupportedFormat {
        /// The history's format.
        recorded: u32,
        /// The newest format this build reads.
        supported: u32,
    },
    /// The workflow code panicked.
    #[error("the workflow code panicked: {message}")]
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The workflow code is blocked on something that is not Loom's (a tokio timer, a
    /// channel, a spawned task): it has not finished, and no activity, timer, child workflow
    /// or signal wait of its is outstanding, so nothing Loom records could ever wake it.
    #[error(
        "the workflow code is stalled: it waits for something that is not Loom's (a tokio timer, a channel, a spawned task), \
         with no activity, timer, child workflow or signal wait outstanding, so nothing can wake it \
         (after {last_seq}); await only what WorkflowContext gives (ctx.sleep, ctx.activity, ctx.child, ctx.wait_signal)"
    )]
    Stalled {
        /// The history's last event when it stalled.
        last_seq: Seq,
    },
}

impl ReplayError {
    /// Whether this is a non-determinism error.
    pub fn is_nondeterminism(&self) -> bool {
        matches!(self, ReplayError::NonDeterminism(_))
    }

    /// The non-determinism details, if this is one.
    pub fn nondeterminism(&self) -> Option<&NonDeterminism> {
        match self {
            ReplayError::NonDeterminism(n) => Some(n),
            _ => None,
        }
    }
}

/// An activity that has been scheduled and has not ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingActivity {
    /// Its id.
    pub id: ActivityId,
    /// Its type's name.
    pub name: String,
    /// Attempts that have ended so far.
    pub attempts: u32,
}

/// A timer that has been started and has not fired.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingTimer {
    /// Its id.
    pub id: TimerId,
    /// When it fires.
    pub fire_at: Timestamp,
}

/// A child workflow that has been started and has not ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingChild {
    /// Its handle in this workflow's history.
    pub id: ChildId,
    /// Its workflow id.
    pub workflow_id: WorkflowId,
    /// Its workflow type.
    pub name: String,
    /// What happens to it if this workflow ends first.
    pub parent_close: ParentClosePolicy,
}

/// Where a workflow stands: for summaries and for people.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The innermost step the code is in.
    pub current_step: Option<String>,
    /// The recorded state.
    pub state: Payload,
    /// Activities scheduled and not yet ended.
    pub pending_activities: Vec<PendingActivity>,
    /// Timers started and not yet fired.
    pub pending_timers: Vec<PendingTimer>,
    /// Child workflows started and not yet ended. When the workflow ends, the store applies
    /// each one's parent-close policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_children: Vec<PendingChild>,
    /// The workflow that started this one, if one did. When this workflow ends, the store
    /// reports its end to that parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
    /// Which run of the workflow this is (1 for the first). The store starts children
    /// with it as their parent's run, and reports their ends to this run only.
    #[serde(default = "first_run", skip_serializing_if = "is_first_run")]
    pub run: u32,
    /// Signal names the code is waiting for.
    pub awaiting_signals: Vec<String>,
    /// Signals received that the code has not consumed yet, by name.
    pub buffered_signals: BTreeMap<String, usize>,
    /// How the workflow ended, if it has.
    pub outcome: Option<Outcome>,
}

impl Default for Progress {
    /// Nothing pending, in the first run.
    fn default() -> Self {
        Progress {
            current_step: None,
            state: Payload::default(),
            pending_activities: Vec::new(),
            pending_timers: Vec::new(),
            pending_children: Vec::new(),
            parent: None,
            run: 1,
            awaiting_signals: Vec::new(),
            buffered_signals: BTreeMap::new(),
            outcome: None,
        }
    }
}

fn first_run() -> u32 {
    1
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_first_run(run: &u32) -> bool {
    *run == 1
}

/// One workflow's replay machine. See the module docs for the contract.
pub struct WorkflowMachine {
    def: Arc<dyn DynWorkflow>,
    id: WorkflowId,
    shared: Shared,
    run: Option<RunFuture>,
    root_woken: Arc<RootWaker>,
    waker: Waker,
    replayed: bool,
    poisoned: Option<ReplayError>,
}

impl WorkflowMachine {
    /// A machine for workflow `id`, of type `def`, with its recorded `history`.
    ///
    /// Checks the history's shape (it starts with `WorkflowStarted` and is numbered 1, 2, 3...);
    /// the code first runs on the first [`activate`](Self::activate).
    pub fn new(
        def: Arc<dyn DynWorkflow>,
        id: WorkflowId,
        history: Vec<Event>,
    ) -> Result<Self, ReplayError> {
        let (run, attempt, traceparent) = match history.first().map(|e| &e.kind) {
            Some(EventKind::WorkflowStarted {
                run,
                attempt,
                traceparent,
                ..
            }) => (*run, *attempt, traceparent.clone()),
            Some(other) => {
                return Err(ReplayError::Corrupt {
                    seq: Some(history[0].seq),
                    reason: format!(
                        "the first event is {}, not WorkflowStarted",
                        other.type_name()
                    ),
                });
            }
            None => {
                return Err(ReplayError::Corrupt {
                    seq: None,
                    reason: "the history is empty".into(),
                });
            }
        };
        for (i, e) in history.iter().enumerate() {
            let expected = Seq::new(i as u64 + 1);
            if e.seq != expected {
                return Err(ReplayError::Corrupt {
                    seq: Some(e.seq),
                    reason: format!("expected event {expected} here, found {}", e.seq),
                });
            }
        }
        let root_woken = Arc::new(RootWaker(AtomicBool::new(false)));
        let shared = Shared::new(history);
        {
            let mut inner = shared.lock();
            inner.run = run;
            inner.attempt = attempt;
            inner.traceparent = traceparent;
        }
        Ok(WorkflowMachine {
            def,
            id,
            shared,
            run: None,
            waker: Waker::from(root_woken.clone()),
            root_woken,
            replayed: false,
            poisoned: None,
        })
    }

    /// Runs one workflow task. See the module docs.
    ///
    /// On error the machine is poisoned: every later call returns the same error.
    pub fn activate(&mut self, activation: Activation) -> Result<Decision, ReplayError> {
        if let Some(e) = &self.poisoned {
            return Err(e.clone());
        }
        let first_new = {
            let mut inner = self.shared.lock();
            inner.now = activation.now;
            inner.rng = Pcg64Mcg::seed_from_u64(activation.entropy);
            inner.history.len()
        };
        let result = self
            .activate_inner(activation.messages)
            .and_then(|taken| self.check_not_stalled().map(|()| taken));
        match result {
            Ok((dropped, left_for_next_run)) => {
                let mut inner = self.shared.lock();
                if inner.history.len() == 1 {
                    // The first task ran and added nothing: say so, or a replay of this
                    // history would take the start for new and log its lines again.
                    let event = Event {
                        seq: inner.next_seq(),
                        at: inner.now,
                        kind: EventKind::WorkflowTaskCompleted {},
                    };
                    inner.history.push(event);
                    inner.cursor += 1;
                }
                Ok(Decision {
                    events: inner.history[first_new..].to_vec(),
                    logs: std::mem::take(&mut inner.logs),
                    dropped,
                    left_for_next_run,
                })
            }
            Err(e) => {
                self.poisoned = Some(e.clone());
                Err(e)
            }
        }
    }

    /// The sequence number of the last event, recorded or new.
    pub fn last_seq(&self) -> Seq {
        Seq::new(self.shared.lock().history.len() as u64)
    }

    /// Replays `history` on `def` as a workflow task after a crash would, and decides
    /// nothing: answers how the recorded run ended (`None` while it is still going), or the
    /// replay's error (a mismatch with the code names where). `now` and `entropy` are what
    /// new commands would see; none is kept. The check behind `loom replay` and golden
    /// histories.
    pub fn replay_only(
        def: Arc<dyn DynWorkflow>,
        id: WorkflowId,
        history: Vec<Event>,
        now: Timestamp,
        entropy: u64,
    ) -> Result<Option<Outcome>, ReplayError> {
        let mut machine = WorkflowMachine::new(def, id, history)?;
        let _decided = machine.activate(Activation::new(now, entropy))?;
        Ok(machine.outcome())
    }

    /// How the workflow ended, if it has.
    pub fn outcome(&self) -> Option<Outcome> {
        self.shared.lock().finished.clone()
    }

    /// Where the workflow stands.
    pub fn progress(&self) -> Progress {
        let inner = self.shared.lock();
        Progress {
            current_step: inner.steps.last().cloned(),
            state: inner.state.clone(),
            pending_activities: inner
                .activities
                .iter()
                .filter(|(_, a)| a.outcome.is_none() && !a.cancelled)
                .map(|(id, a)| PendingActivity {
                    id: *id,
                    name: a.name.clone(),
                    attempts: a.attempts,
                })
                .collect(),
            pending_timers: inner
                .timers
                .iter()
                .filter(|(_, t)| !t.fired && !t.cancelled)
                .map(|(id, t)| PendingTimer {
                    id: *id,
                    fire_at: t.fire_at,
                })
                .collect(),
            pending_children: inner
                .children
                .iter()
                .filter(|(_, c)| c.outcome.is_none())
                .map(|(id, c)| PendingChild {
                    id: *id,
                    workflow_id: c.workflow_id.clone(),
                    name: c.name.clone(),
                    parent_close: c.parent_close,
                })
                .collect(),
            parent: inner.parent.clone(),
            run: inner.run,
            awaiting_signals: inner.awaiting_signals.iter().cloned().collect(),
            buffered_signals: inner
                .signals
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(k, q)| (k.clone(), q.len()))
                .collect(),
            outcome: inner.finished.clone(),
        }
    }

    /// The workflow's id.
    pub fn workflow_id(&self) -> &WorkflowId {
        &self.id
    }

    /// The workflow type's name.
    pub fn workflow_type(&self) -> &'static str {
        self.def.name()
    }

    /// The run's trace (a W3C `traceparent`), from its `WorkflowStarted`.
    pub fn traceparent(&self) -> Option<String> {
        self.shared.lock().traceparent.clone()
    }

    /// When the run started: its `WorkflowStarted` event's time.
    pub fn started_at(&self) -> Timestamp {
        self.shared
            .lock()
            .history
            .first()
            .map_or(Timestamp::from_millis(0), |e| e.at)
    }

    /// Which run of the workflow the history is.
    pub fn run(&self) -> u32 {
        self.shared.lock().run
    }

    /// When the run continued as new, or failed and is retried: the first event of the next
    /// run, its `WorkflowStarted` (the same workflow type and version, parent, timeouts and
    /// retry policy, the next run's number, at the time of the event that ended this run), with
    /// the input the code gave to `continue_as_new` and the same attempt, or this run's input
    /// and the next attempt.
    pub fn next_run(&self) -> Option<Event> {
        next_run_of(&self.shared.lock())
    }

    /// Whether the code can still be woken: it has finished, or something of Loom's that it
    /// waits for is outstanding. Otherwise it is [`ReplayError::Stalled`].
    fn check_not_stalled(&self) -> Result<(), ReplayError> {
        if self.run.is_none() {
            return Ok(());
        }
        let inner = self.shared.lock();
        // Newest first: what is still open is almost always recent, so a long history's
        // ended activities and timers are not walked at every task.
        let outstanding = inner.finished.is_some()
            || inner.signal_waits > 0
            || inner
                .activities
                .values()
                .rev()
                .any(|a| a.outcome.is_none() && !a.cancelled)
            || inner
                .timers
                .values()
                .rev()
                .any(|t| !t.fired && !t.cancelled)
            || inner.children.values().rev().any(|c| c.outcome.is_none());
        if outstanding {
            Ok(())
        } else {
            Err(ReplayError::Stalled {
                last_seq: Seq::new(inner.history.len() as u64),
            })
        }
    }

    /// Replays if needed, then delivers the messages: answers those dropped, and those left
    /// for the next run.
    fn activate_inner(&mut self, messages: Vec<EventKind>) -> Result<Delivered, ReplayError> {
        if !self.replayed {
            self.replay()?;
            self.replayed = true;
        }
        let mut dropped = Vec::new();
        let mut left = Vec::new();
        for (i, message) in messages.into_iter().enumerate() {
            let verdict = {
                let mut inner = self.shared.lock();
                if inner.finished.is_some() && next_run_of(&inner).is_some() {
                    let absorbed = match (&message, inner.history.last_mut()) {
                        (
                            EventKind::SignalReceived { name, payload },
                            Some(Event {
                                kind: EventKind::WorkflowContinuedAsNew { signals, .. },
                                ..
                            }),
                        ) => {
                            signals.push(CarriedSignal {
                                name: name.clone(),
                                payload: payload.clone(),
                            });
                            true
                        }
                        _ => false,
                    };
                    if !absorbed {
                        left.push(i);
                    }
                    continue;
                }
                let verdict = if !message.is_message() {
                    Err(format!("{} is not a message", message.type_name()))
                } else if inner.finished.is_some() {
                    Err("the workflow has ended".to_owned())
                } else if matches!(message, EventKind::CancelRequested { .. })
                    && inner.cancel_requested
                {
                    Err("cancel was already requested".to_owned())
                } else {
                    inner.check_input(&message)
                };
                if verdict.is_ok() {
                    let seq = inner.next_seq();
                    let at = inner.now;
                    inner.apply_input(seq, &message);
                    inner.history.push(Event {
                        seq,
                        at,
                        kind: message.clone(),
                    });
                    inner.cursor += 1;
                }
                verdict
            };
            match verdict {
                Ok(()) => self.poll_root()?,
                Err(reason) => dropped.push((message, reason)),
            }
        }
        Ok((dropped, left))
    }

    /// Replays the recorded history. A history of only `WorkflowStarted` has had no task yet,
    /// so the start is delivered live and the code's first commands are new.
    fn replay(&mut self) -> Result<(), ReplayError> {
        let recorded = {
            let mut inner = self.shared.lock();
            inner.replaying = inner.history.len() > 1;
            inner.history.len()
        };
        let mut index = 0;
        while index < recorded {
            let event = {
                let mut inner = self.shared.lock();
                if inner.cursor > index {
                    // Commands matched while polling; move to the next unmatched event.
                    index = inner.cursor;
                    continue;
                }
                let event = inner.history[index].clone();
                if event.kind.role() == Role::Command {
                    return Err(ReplayError::NonDeterminism(NonDeterminism {
                        seq: event.seq,
                        recorded: Some(event.kind.to_string()),
                        attempted: None,
                    }));
                }
                if inner.finished.is_some() {
                    return Err(ReplayError::Corrupt {
                        seq: Some(event.seq),
                        reason: format!("{} after the workflow ended", event.kind.type_name()),
                    });
                }
                if index > 0 {
                    inner
                        .check_input(&event.kind)
                        .map_err(|reason| ReplayError::Corrupt {
                            seq: Some(event.seq),
                            reason,
                        })?;
                    inner.apply_input(event.seq, &event.kind);
                }
                inner.cursor = index + 1;
                event
            };
            index += 1;
            if event.seq == Seq::FIRST {
                self.start(&event.kind)?;
            }
            if matches!(
                event.kind,
                EventKind::WorkflowTerminated { .. }
                    | EventKind::WorkflowTimedOut { .. }
                    | EventKind::WorkflowReset { .. }
            ) {
                // Ended from outside: the code is not run again. Its pending futures are
                // dropped with it; the run has finished, so they issue nothing.
                self.run = None;
                continue;
            }
            self.poll_root()?;
        }
        self.shared.lock().replaying = false;
        Ok(())
    }

    fn start(&mut self, started: &EventKind) -> Result<(), ReplayError> {
        let EventKind::WorkflowStarted {
            name,
            version,
            input,
            format,
            parent,
            run,
            ..
        } = started
        else {
            return Err(ReplayError::Corrupt {
                seq: Some(Seq::FIRST),
                reason: "the first event is not WorkflowStarted".into(),
            });
        };
        if *format > HISTORY_FORMAT {
            return Err(ReplayError::UnsupportedFormat {
                recorded: *format,
                supported: HISTORY_FORMAT,
            });
        }
        if name != self.def.name() {
            return Err(ReplayError::WrongWorkflow {
                recorded: name.clone(),
                code: self.def.name().to_owned(),
            });
        }
        if *version != self.def.version() {
            return Err(ReplayError::VersionMismatch {
                name: name.clone(),
                recorded: *version,
                code: self.def.version(),
            });
        }
        {
            let mut inner = self.shared.lock();
            inner.parent = parent.clone();
            inner.run = *run;
            inner.cancels_dropped_work = *format >= FORMAT_CANCELS_DROPPED_WORK;
        }
        match self.def.start(self.id.clone(), input, self.shared.clone()) {
            Ok(run) => self.run = Some(run),
            Err(e) => {
                let failure = Failure::non_retryable(
                    "bad_input",
                    format!("the input does not match {name}'s input type: {e}"),
                );
                self.finish(Err(WorkflowError::Failed(failure)));
            }
        }
        Ok(())
    }

    /// Polls the workflow code until it blocks, then reports any mismatch it hit.
    fn poll_root(&mut self) -> Result<(), ReplayError> {
        self.shared.lock().wake_all();
        while let Some(run) = self.run.as_mut() {
            self.root_woken.0.store(false, Ordering::SeqCst);
            self.shared.lock().awaiting_signals.clear();
            let mut cx = Context::from_waker(&self.waker);
            let polled = catch_unwind(AssertUnwindSafe(|| run.as_mut().poll(&mut cx)));
            match polled {
                Err(panic) => {
                    self.run = None;
                    return Err(ReplayError::Panicked {
                        message: panic_message(panic.as_ref()),
                    });
                }
                Ok(Poll::Ready(result)) => {
                    self.run = None;
                    self.finish(result);
                }
                Ok(Poll::Pending) => {
                    let again = self.root_woken.0.load(Ordering::SeqCst);
                    if !again || self.shared.lock().error.is_some() {
                        break;
                    }
                }
            }
        }
        match self.shared.lock().error.clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn finish(&mut self, result: Result<Payload, WorkflowError>) {
        let (kind, outcome) = match result {
            Ok(output) => (
                EventKind::WorkflowCompleted {
                    output: output.clone(),
                },
                Outcome::Completed { output },
            ),
            Err(WorkflowError::Cancelled) => (EventKind::WorkflowCancelled {}, Outcome::Cancelled),
            Err(WorkflowError::Failed(failure)) => (
                EventKind::WorkflowFailed {
                    failure: failure.clone(),
                },
                Outcome::Failed { failure },
            ),
            Err(WorkflowError::ContinueAsNew(next)) => {
                // The signals the code did not take go to the next run, in arrival order.
                let mut carried: Vec<(Seq, CarriedSignal)> = Vec::new();
                for (name, queue) in &self.shared.lock().signals {
                    carried.extend(queue.iter().map(|(seq, payload)| {
                        let signal = CarriedSignal {
                            name: name.clone(),
                            payload: payload.clone(),
                        };
                        (*seq, signal)
                    }));
                }
                carried.sort_by_key(|(seq, _)| *seq);
                (
                    EventKind::WorkflowContinuedAsNew {
                        input: next.input.clone(),
                        signals: carried.into_iter().map(|(_, s)| s).collect(),
                    },
                    Outcome::ContinuedAsNew { input: next.input },
                )
            }
        };
        let mut inner = self.shared.lock();
        if inner.command(kind).is_some() {
            inner.finished = Some(outcome);
        }
    }
}

impl fmt::Debug for WorkflowMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkflowMachine")
            .field("workflow", &self.def.name())
            .field("id", &self.id)
            .field("last_seq", &self.last_seq())
            .finish_non_exhaustive()
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// What one activation did with its messages: those dropped, with the reason, and the
/// positions of those left for the next run.
type Delivered = (Vec<(EventKind, String)>, Vec<usize>);

/// The first event of the next run, if the run ended by continuing as new or failed under a
/// retry policy that retries it (and no cancel was requested): see
/// [`WorkflowMachine::next_run`].
fn next_run_of(inner: &Inner) -> Option<Event> {
    let last = inner.history.last()?;
    let EventKind::WorkflowStarted {
        name,
        version,
        input: this_input,
        parent,
        timeouts,
        run,
        retry,
        attempt,
        tags,
        traceparent,
        ..
    } = &inner.history.first()?.kind
    else {
        return None;
    };
    let (input, attempt) = match &last.kind {
        EventKind::WorkflowContinuedAsNew { input, .. } => (input.clone(), *attempt),
        // A run asked to cancel is not retried: its failure is final.
        EventKind::WorkflowFailed { failure }
            if !inner.cancel_requested
                && retry
                    .as_ref()
                    .is_some_and(|p| p.allows_retry(*attempt, Some(failure))) =>
        {
            (this_input.clone(), attempt + 1)
        }
        _ => return None,
    };
    // The tags go on as the run left them.
    let mut tags = tags.clone();
    for e in &inner.history {
        if let EventKind::TagSet { key, value } = &e.kind {
            tags.insert(key.clone(), value.clone());
        }
    }
    Some(Event {
        seq: Seq::FIRST,
        at: last.at,
        kind: EventKind::WorkflowStarted {
            tags,
            reset: None,
            name: name.clone(),
            version: *version,
            input,
            format: HISTORY_FORMAT,
            parent: parent.clone(),
            timeouts: *timeouts,
            run: run + 1,
            retry: retry.clone(),
            attempt,
            traceparent: traceparent
                .as_deref()
                .and_then(|tp| next_traceparent(tp, run + 1)),
        },
    })
}

/// The trace of run `run`, derived from the trace of the run before it: each run has a trace
/// of its own, and every worker that computes the next run's start derives the same one.
/// `None` for a `traceparent` that is not W3C's version 00.
fn next_traceparent(traceparent: &str, run: u32) -> Option<String> {
    let mut parts = traceparent.split('-');
    let (Some("00"), Some(trace), Some(_), Some(flags), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let trace = u128::from_str_radix(trace, 16).ok()?;
    let seed = (trace as u64) ^ ((trace >> 64) as u64) ^ u64::from(run).rotate_left(32);
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let new_trace = (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())).max(1);
    let span = rng.next_u64().max(1);
    Some(format!("00-{new_trace:032x}-{span:016x}-{flags}"))
}

#[cfg(test)]
mod trace_tests {
    use super::next_traceparent;

    #[test]
    fn each_run_has_a_trace_of_its_own_derived_the_same_everywhere() {
        let first = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let second = next_traceparent(first, 2).expect("a trace");
        assert_eq!(next_traceparent(first, 2).as_deref(), Some(second.as_str()));
        assert_ne!(second, first);
        assert_eq!(second.len(), first.len());
        assert!(
            second.starts_with("00-") && second.ends_with("-01"),
            "{second}"
        );
        let third = next_traceparent(&second, 3).expect("a trace");
        assert_ne!(third, second);
        assert_eq!(next_traceparent("garbage", 2), None);
        assert_eq!(
            next_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", 2),
            None
        );
    }
}

struct RootWaker(AtomicBool);

impl Wake for RootWaker {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The machine's state as the workflow's context sees it. Opaque: only loom-core touches it.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<Inner>>);

impl Shared {
    fn new(history: Vec<Event>) -> Self {
        Shared(Arc::new(Mutex::new(Inner {
            history,
            cursor: 0,
            replaying: false,
            now: Timestamp::EPOCH,
            rng: Pcg64Mcg::seed_from_u64(0),
            error: None,
            activities: BTreeMap::new(),
            timers: BTreeMap::new(),
            children: BTreeMap::new(),
            parent: None,
            run: 1,
            attempt: 1,
            traceparent: None,
            cancels_dropped_work: false,
            signal_waits: 0,
            signals: BTreeMap::new(),
            awaiting_signals: BTreeSet::new(),
            wakers: Vec::new(),
            cancel_requested: false,
            cancel_epoch: 0,
            steps: Vec::new(),
            state: Payload::NULL,
            logs: Vec::new(),
            finished: None,
        })))
    }

    /// Locks the machine state. Workflow code never runs while this lock is held, so it is
    /// never contended; a poisoned lock only means one of our own methods panicked, and the
    /// machine reports that panic anyway.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Shared")
    }
}

pub(crate) struct ActivitySlot {
    pub(crate) name: String,
    pub(crate) attempts: u32,
    pub(crate) outcome: Option<Result<Payload, ActivityError>>,
    /// The code stopped waiting for it (`ActivityCancelled`).
    pub(crate) cancelled: bool,
}

pub(crate) struct TimerSlot {
    pub(crate) fire_at: Timestamp,
    pub(crate) fired: bool,
    /// The code stopped waiting for it (`TimerCancelled`).
    pub(crate) cancelled: bool,
}

pub(crate) struct ChildSlot {
    pub(crate) workflow_id: WorkflowId,
    pub(crate) name: String,
    pub(crate) parent_close: ParentClosePolicy,
    pub(crate) outcome: Option<Result<Payload, ChildError>>,
}

pub(crate) struct Inner {
    /// Recorded events followed by new ones.
    pub(crate) history: Vec<Event>,
    /// The next event to match or apply; equal to `history.len()` once live.
    pub(crate) cursor: usize,
    /// Set while the recorded history is replayed: commands past its end are mismatches and
    /// log lines are dropped.
    pub(crate) replaying: bool,
    pub(crate) now: Timestamp,
    pub(crate) rng: Pcg64Mcg,
    pub(crate) error: Option<ReplayError>,
    pub(crate) activities: BTreeMap<ActivityId, ActivitySlot>,
    pub(crate) timers: BTreeMap<TimerId, TimerSlot>,
    pub(crate) children: BTreeMap<ChildId, ChildSlot>,
    pub(crate) parent: Option<ParentRef>,
    /// Which run of the workflow this is.
    pub(crate) run: u32,
    /// Which attempt of a retried workflow this run is.
    pub(crate) attempt: u32,
    /// The run's trace, from its `WorkflowStarted`: its activities and children join it.
    pub(crate) traceparent: Option<String>,
    /// The run's history format cancels the timers and activities the code stops waiting for
    /// ([`FORMAT_CANCELS_DROPPED_WORK`]).
    pub(crate) cancels_dropped_work: bool,
    /// Signal waits polled and not yet resolved or dropped.
    pub(crate) signal_waits: usize,
    /// Signals received and not yet taken, by name, each with the position it arrived at.
    pub(crate) signals: BTreeMap<String, VecDeque<(Seq, Payload)>>,
    pub(crate) awaiting_signals: BTreeSet<String>,
    pub(crate) wakers: Vec<Waker>,
    pub(crate) cancel_requested: bool,
    /// Bumped by a cancel request: waits begun before it resolve as cancelled.
    pub(crate) cancel_epoch: u32,
    pub(crate) steps: Vec<String>,
    pub(crate) state: Payload,
    pub(crate) logs: Vec<LogRecord>,
    pub(crate) finished: Option<Outcome>,
}

impl Inner {
    pub(crate) fn next_seq(&self) -> Seq {
        Seq::new(self.history.len() as u64 + 1)
    }

    fn wake_all(&mut self) {
        for w in self.wakers.drain(..) {
            w.wake();
        }
    }

    /// Issues a command: matches it against the recorded event at the cursor, or appends it
    /// when live. Returns the index of the event, or `None` after a mismatch (recorded in
    /// `error`) or once the workflow has ended.
    pub(crate) fn command(&mut self, attempted: EventKind) -> Option<usize> {
        if self.error.is_some() || self.finished.is_some() {
            return None;
        }
        let index = self.cursor;
        if let Some(recorded) = self.history.get(index) {
            if recorded.kind.role() != Role::Command || !recorded.kind.same_command(&attempted) {
                self.error = Some(ReplayError::NonDeterminism(NonDeterminism {
                    seq: recorded.seq,
                    recorded: Some(recorded.kind.to_string()),
                    attempted: Some(attempted.to_string()),
                }));
                return None;
            }
        } else if self.replaying {
            self.error = Some(ReplayError::NonDeterminism(NonDeterminism {
                seq: self.next_seq(),
                recorded: None,
                attempted: Some(attempted.to_string()),
            }));
            return None;
        } else {
            let event = Event {
                seq: self.next_seq(),
                at: self.now,
                kind: attempted,
            };
            self.history.push(event);
        }
        self.cursor += 1;
        self.apply_command(index);
        Some(index)
    }

    /// Keeps the machine's view (open activities and timers, steps, state) in step with a
    /// command, recorded or new.
    fn apply_command(&mut self, index: usize) {
        let event = &self.history[index];
        let seq = event.seq;
        match &event.kind {
            EventKind::ActivityScheduled { name, .. } => {
                let slot = ActivitySlot {
                    name: name.clone(),
                    attempts: 0,
                    outcome: None,
                    cancelled: false,
                };
                self.activities.insert(ActivityId(seq), slot);
            }
            EventKind::TimerScheduled { fire_at, .. } => {
                let slot = TimerSlot {
                    fire_at: *fire_at,
                    fired: false,
                    cancelled: false,
                };
                self.timers.insert(TimerId(seq), slot);
            }
            EventKind::TimerCancelled { timer_id } => {
                if let Some(t) = self.timers.get_mut(timer_id) {
                    t.cancelled = true;
                }
            }
            EventKind::ActivityCancelled { activity_id } => {
                if let Some(a) = self.activities.get_mut(activity_id) {
                    a.cancelled = true;
                }
            }
            EventKind::ChildWorkflowScheduled {
                name,
                workflow_id,
                parent_close,
                ..
            } => {
                let slot = ChildSlot {
                    workflow_id: workflow_id.clone(),
                    name: name.clone(),
                    parent_close: *parent_close,
                    outcome: None,
                };
                self.children.insert(ChildId(seq), slot);
            }
            EventKind::StepStarted { name } => {
                let name = name.clone();
                self.steps.push(name);
            }
            EventKind::StepCompleted { name } => {
                if let Some(pos) = self.steps.iter().rposition(|s| s == name) {
                    self.steps.remove(pos);
                }
            }
            EventKind::StateSet { key, value } => {
                let (key, value) = (key.clone(), value.clone());
                set_state_field(&mut self.state, key, value);
            }
            EventKind::StateUpdated { values } => {
                for (key, value) in values.clone() {
                    set_state_field(&mut self.state, key, value);
                }
            }
            _ => {}
        }
    }

    /// Whether an input makes sense now: results only for open activities and timers.
    fn check_input(&self, kind: &EventKind) -> Result<(), String> {
        let open_activity = |id: &ActivityId| match self.activities.get(id) {
            Some(slot) if slot.cancelled => Err(format!("{id} was cancelled")),
            Some(slot) if slot.outcome.is_none() => Ok(()),
            Some(_) => Err(format!("{id} has already ended")),
            None => Err(format!("{id} was never scheduled")),
        };
        match kind {
            EventKind::ActivityCompleted { activity_id, .. }
            | EventKind::ActivityFailed { activity_id, .. }
            | EventKind::ActivityTimedOut { activity_id, .. } => open_activity(activity_id),
            EventKind::TimerFired { timer_id } => match self.timers.get(timer_id) {
                Some(t) if t.cancelled => Err(format!("{timer_id} was cancelled")),
                Some(t) if !t.fired => Ok(()),
                Some(_) => Err(format!("{timer_id} has already fired")),
                None => Err(format!("{timer_id} was never started")),
            },
            EventKind::ChildWorkflowCompleted { child, .. }
            | EventKind::ChildWorkflowFailed { child, .. }
            | EventKind::ChildWorkflowCancelled { child } => match self.children.get(child) {
                Some(c) if c.outcome.is_none() => Ok(()),
                Some(_) => Err(format!("{child} has already ended")),
                None => Err(format!("{child} was never started")),
            },
            EventKind::SignalReceived { .. } | EventKind::CancelRequested { .. } => Ok(()),
            EventKind::WorkflowTerminated { .. }
            | EventKind::WorkflowTimedOut { .. }
            | EventKind::WorkflowReset { .. }
                if self.replaying =>
            {
                Ok(())
            }
            EventKind::TerminateRequested { .. } | EventKind::TimeoutFired { .. } => {
                Err("a terminate request is carried out by the runtime, not the code".to_owned())
            }
            EventKind::WorkflowTaskCompleted {}
                if self
                    .history
                    .get(1)
                    .is_some_and(|e| matches!(e.kind, EventKind::WorkflowTaskCompleted {})) =>
            {
                Ok(())
            }
            other => Err(format!("{} is not an input here", other.type_name())),
        }
    }

    /// Applies a checked input: resolves what it resolves.
    fn apply_input(&mut self, seq: Seq, kind: &EventKind) {
        match kind {
            EventKind::ActivityCompleted {
                activity_id,
                attempt,
                result,
            } => {
                if let Some(slot) = self.activities.get_mut(activity_id) {
                    slot.attempts = *attempt;
                    slot.outcome = Some(Ok(result.clone()));
                }
            }
            EventKind::ActivityFailed {
                activity_id,
                attempt,
                failure,
                retry_at,
            } => {
                if let Some(slot) = self.activities.get_mut(activity_id) {
                    slot.attempts = *attempt;
                    if retry_at.is_none() {
                        slot.outcome = Some(Err(ActivityError::Failed {
                            activity: slot.name.clone(),
                            failure: failure.clone(),
                            attempts: *attempt,
                        }));
                    }
                }
            }
            EventKind::ActivityTimedOut {
                activity_id,
                attempt,
                retry_at,
            } => {
                if let Some(slot) = self.activities.get_mut(activity_id) {
                    slot.attempts = *attempt;
                    if retry_at.is_none() {
                        slot.outcome = Some(Err(ActivityError::TimedOut {
                            activity: slot.name.clone(),
                            attempts: *attempt,
                        }));
                    }
                }
            }
            EventKind::TimerFired { timer_id } => {
                if let Some(t) = self.timers.get_mut(timer_id) {
                    t.fired = true;
                }
            }
            EventKind::ChildWorkflowCompleted { child, output } => {
                if let Some(c) = self.children.get_mut(child) {
                    c.outcome = Some(Ok(output.clone()));
                }
            }
            EventKind::ChildWorkflowFailed { child, failure } => {
                if let Some(c) = self.children.get_mut(child) {
                    c.outcome = Some(Err(ChildError::Failed {
                        workflow_id: c.workflow_id.clone(),
                        failure: failure.clone(),
                    }));
                }
            }
            EventKind::ChildWorkflowCancelled { child } => {
                if let Some(c) = self.children.get_mut(child) {
                    c.outcome = Some(Err(ChildError::Cancelled {
                        workflow_id: c.workflow_id.clone(),
                    }));
                }
            }
            EventKind::SignalReceived { name, payload } => {
                self.signals
                    .entry(name.clone())
                    .or_default()
                    .push_back((seq, payload.clone()));
            }
            EventKind::WorkflowTerminated { reason } => {
                self.finished = Some(Outcome::Terminated {
                    reason: reason.clone(),
                });
            }
            EventKind::WorkflowTimedOut { scope } => {
                self.finished = Some(Outcome::TimedOut { scope: *scope });
            }
            EventKind::CancelRequested { .. } if !self.cancel_requested => {
                self.cancel_requested = true;
                self.cancel_epoch += 1;
            }
            _ => {}
        }
    }

    /// The code stopped waiting for activity `id`: cancels it if it is still open and the
    /// run's format cancels dropped work.
    pub(crate) fn cancel_activity(&mut self, id: ActivityId) {
        let open = self
            .activities
            .get(&id)
            .is_some_and(|a| a.outcome.is_none() && !a.cancelled);
        if open && self.cancels_dropped_work {
            self.command(EventKind::ActivityCancelled { activity_id: id });
        }
    }

    /// The code stopped waiting for timer `id`: cancels it if it has not fired and the run's
    /// format cancels dropped work.
    pub(crate) fn cancel_timer(&mut self, id: TimerId) {
        let open = self
            .timers
            .get(&id)
            .is_some_and(|t| !t.fired && !t.cancelled);
        if open && self.cancels_dropped_work {
            self.command(EventKind::TimerCancelled { timer_id: id });
        }
    }

    /// Records a log line, unless the code is replaying history (it was logged then).
    pub(crate) fn log(&mut self, level: LogLevel, message: String) {
        if self.replaying || self.error.is_some() {
            return;
        }
        let record = LogRecord {
            seq: Seq::new(self.history.len() as u64),
            at: self.now,
            level,
            message,
        };
        self.logs.push(record);
    }

    /// A fresh random number when the next command will be new; zero while replaying, so
    /// that replay never draws from the stream and a replayed machine continues it exactly
    /// where an uninterrupted one would.
    pub(crate) fn next_random(&mut self) -> u64 {
        let live = self.cursor >= self.history.len() && !self.replaying;
        if live { self.rng.next_u64() } else { 0 }
    }
}

/// Sets one top-level field of the state; the key `$` stands for the whole value.
fn set_state_field(state: &mut Payload, key: String, value: Payload) {
    if key == crate::context::WHOLE_STATE_KEY {
        *state = value;
        return;
    }
    let mut json = std::mem::take(state).into_json();
    if !json.is_object() {
        json = serde_json::Value::Object(serde_json::Map::new());
    }
    if let serde_json::Value::Object(map) = &mut json {
        map.insert(key, value.into_json());
    }
    *state = Payload::from_json(json);
}
