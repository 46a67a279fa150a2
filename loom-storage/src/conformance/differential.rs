//! The differential test: generated sequences of store operations, run against a backend and
//! against [`MemoryStorage`](crate::MemoryStorage), both on one manual clock, must give the
//! same answers and leave the same state.
//!
//! A sequence creates a few workflows and then claims, commits (with generated events, child
//! workflows started, reported to their parents and cancelled by their parents' close, timers
//! and activities cancelled, runs continued as new or retried, runs terminated, runs started with timeouts, eager
//! claims and decisions made ahead), renews, releases, signals, cancels, pauses and resumes,
//! resets runs to any event (boundaries or not), purges closed workflows,
//! lets time pass,
//! lets leases lapse and races two claimers, in any order, including the wrong ones: stale
//! leases, spent leases, commits to ended workflows. Every answer is written to a transcript
//! with ids and fencing tokens renamed in order of first appearance (backends number them
//! their own way); times need no renaming, since every backend reads the same clock. After
//! the last operation, each workflow's summary, history, logs and pending work, and the
//! store's stats, are added. The transcripts must be equal.
//!
//! A backend's tests run it with [`check`], giving a factory of stores on a given clock;
//! `LOOM_DIFFERENTIAL_CASES` sets the number of sequences (a bounded default keeps CI quick).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use loom_core::{
    ActivityOptions, ChildId, Event, EventKind, Failure, HISTORY_FORMAT, LogLevel, LogRecord,
    ParentClosePolicy, Payload, PendingChild, Progress, Seq, Timestamp, WorkflowId,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::clock::{Clock, ManualClock};
use crate::{
    ActivityCommitted, ActivityTask, ActivityTaskCompletion, Affinity, AfterActivity, ClaimRequest,
    DecidedTask, Lease, ListQuery, MemoryStorage, Release, Storage, StorageError, WorkflowTask,
    WorkflowTaskCompletion,
};

/// The environment variable that sets how many sequences [`check`] runs.
pub const CASES_VAR: &str = "LOOM_DIFFERENTIAL_CASES";

/// Sequences run when [`CASES_VAR`] is not set.
pub const DEFAULT_CASES: u32 = 40;

/// Workflows a sequence may name.
const WORKFLOWS: u8 = 3;

/// How long a lease, a delay or a timer lasts: a third of the sequences' time steps, so that
/// letting time pass makes some of them lapse or come due and not others.
#[derive(Clone, Copy, Debug)]
pub enum Span {
    /// Nothing: lapsed or due at once.
    Zero,
    /// 300 ms.
    Short,
    /// An hour: beyond every sequence.
    Long,
}

impl Span {
    fn duration(self) -> Duration {
        match self {
            Span::Zero => Duration::ZERO,
            Span::Short => Duration::from_millis(300),
            Span::Long => Duration::from_secs(3_600),
        }
    }
}

/// An event a workflow task's commit may carry.
#[derive(Clone, Debug)]
pub enum NewEvent {
    /// `StepStarted`.
    Step,
    /// `ActivityScheduled`.
    Schedule,
    /// `TimerScheduled` for a duration.
    Sleep(Span),
    /// `TimerScheduled` at an instant, relative to the clock's start.
    SleepUntil(u16),
    /// `WorkflowCompleted`.
    Complete,
    /// `WorkflowFailed`.
    Fail,
    /// `WorkflowCancelled`.
    Cancel,
    /// `ChildWorkflowScheduled` of workflow `n` (which may exist already), abandoned (with a
    /// 300 ms run timeout) or not when the parent ends.
    StartChild(u8, bool),
    /// `TimerCancelled` of the timer numbered so (if it is one).
    CancelTimer(u8),
    /// `ActivityCancelled` of the activity numbered so (if it is one).
    CancelActivity(u8),
    /// `WorkflowContinuedAsNew`, carrying a signal or not, with the next run's first event
    /// (a commit with more events after it is refused).
    ContinueAsNew(bool),
    /// `WorkflowFailed`, retried under a policy as the next attempt, 300 ms later.
    FailRetried,
    /// `TagSet` of key `k{n % 3}` to the number `n` (text for odd `n`).
    Tag(u8),
}

/// What an activity attempt reports.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// `ActivityCompleted`.
    Completed,
    /// `ActivityFailed`, retried after the span or final.
    Failed(Option<Span>),
    /// `ActivityTimedOut`, retried after the span or final.
    TimedOut(Option<Span>),
}

/// What an activity's commit does besides recording the result.
#[derive(Clone, Debug)]
pub enum Then {
    /// Nothing.
    Nothing,
    /// Claim the woken workflow task, as worker `w`.
    Claim(u8),
    /// Commit a decision made ahead: the result, then these events, as worker `w`, with an
    /// affinity (its owner and window) or none.
    Decide(Vec<NewEvent>, u8, Option<(u8, Span)>),
}

/// One operation of a sequence. Held tasks are named by their position among those the
/// sequence holds (modulo their number; nothing happens when it holds none).
#[derive(Clone, Debug)]
pub enum Op {
    /// Start workflow `n`.
    Create(u8),
    /// Start workflow `n` with a run timeout of the span.
    CreateWithTimeout(u8, Span),
    /// Claim up to `max` workflow tasks under a lease of `lease`, as worker `w`.
    ClaimWorkflows(u8, Span, u8),
    /// Claim up to `max` activity tasks under a lease of `lease`.
    ClaimActivities(u8, Span),
    /// Two claimers at once, workers 0 and 1, one task each.
    Race,
    /// Commit a held workflow task with these events, consuming its messages (or not),
    /// claiming up to `eager` of the activities it schedules, with an affinity (its owner
    /// and window) or none.
    CompleteWorkflow(u8, Vec<NewEvent>, bool, u8, Option<(u8, Span)>),
    /// Commit a held workflow task naming a stale last event.
    CompleteStale(u8),
    /// Commit a held activity attempt.
    CompleteActivity(u8, Outcome, Then),
    /// Renew a held lease.
    Renew(u8, Span),
    /// Worker `w` gives up its affinities.
    Forget(u8),
    /// Release a held task, pausing its workflow or not.
    Release(u8, Span, bool),
    /// Signal workflow `n`.
    Signal(u8),
    /// Ask workflow `n` to cancel.
    RequestCancel(u8),
    /// Terminate workflow `n`, as read now (or as read one event ago: a stale read).
    Terminate(u8, bool),
    /// Pause workflow `n` (an operator's pause).
    Pause(u8),
    /// Resume workflow `n`.
    Resume(u8),
    /// Reset workflow `n`'s current run to the `k`th of its events (any of them, and one
    /// past the end: boundaries are accepted, the rest refused), delivering the later signals
    /// again or not.
    Reset(u8, u8, bool),
    /// Purge up to two workflows that ended at least the span ago (only completed ones, or
    /// any).
    Purge(Span, bool),
    /// Create schedule `n` (every second, its overlap policy chosen by `n`, a catch-up window
    /// of two seconds).
    CreateSchedule(u8),
    /// Tick the schedules that are due, as a worker does: read, decide, write at the version
    /// read.
    TickSchedules,
    /// Trigger schedule `n`, or pause and unpause it.
    TouchSchedule(u8, bool),
    /// Delete schedule `n` at the version read.
    DeleteSchedule(u8),
    /// Let this much time pass.
    Advance(u16),
}

fn span() -> impl Strategy<Value = Span> {
    prop_oneof![Just(Span::Zero), Just(Span::Short), Just(Span::Long)]
}

fn new_event() -> impl Strategy<Value = NewEvent> {
    prop_oneof![
        3 => Just(NewEvent::Step),
        6 => Just(NewEvent::Schedule),
        2 => span().prop_map(NewEvent::Sleep),
        1 => (0u16..2_000).prop_map(NewEvent::SleepUntil),
        1 => Just(NewEvent::Complete),
        1 => Just(NewEvent::Fail),
        1 => Just(NewEvent::Cancel),
        2 => (0..WORKFLOWS, any::<bool>()).prop_map(|(n, a)| NewEvent::StartChild(n, a)),
        1 => (2u8..10).prop_map(NewEvent::CancelTimer),
        1 => (2u8..10).prop_map(NewEvent::CancelActivity),
        1 => any::<bool>().prop_map(NewEvent::ContinueAsNew),
        1 => Just(NewEvent::FailRetried),
        1 => any::<u8>().prop_map(NewEvent::Tag),
    ]
}

fn events() -> impl Strategy<Value = Vec<NewEvent>> {
    prop::collection::vec(new_event(), 0..4)
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => Just(Outcome::Completed),
        1 => prop::option::of(span()).prop_map(Outcome::Failed),
        1 => prop::option::of(span()).prop_map(Outcome::TimedOut),
    ]
}

/// The workers that claim and commit.
const WORKERS: std::ops::Range<u8> = 0..2;

fn affinity() -> impl Strategy<Value = Option<(u8, Span)>> {
    prop::option::of((WORKERS, span()))
}

fn then() -> impl Strategy<Value = Then> {
    prop_oneof![
        2 => Just(Then::Nothing),
        1 => WORKERS.prop_map(Then::Claim),
        2 => (events(), WORKERS, affinity()).prop_map(|(e, w, a)| Then::Decide(e, w, a)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let wf = 0..WORKFLOWS;
    let held = 0u8..4;
    prop_oneof![
        3 => wf.clone().prop_map(Op::Create),
        1 => (wf.clone(), span()).prop_map(|(n, s)| Op::CreateWithTimeout(n, s)),
        4 => (1u8..4, span(), WORKERS).prop_map(|(n, s, w)| Op::ClaimWorkflows(n, s, w)),
        4 => (1u8..4, span()).prop_map(|(n, s)| Op::ClaimActivities(n, s)),
        1 => Just(Op::Race),
        6 => (held.clone(), events(), any::<bool>(), 0u8..3, affinity())
            .prop_map(|(t, e, c, n, a)| Op::CompleteWorkflow(t, e, c, n, a)),
        1 => held.clone().prop_map(Op::CompleteStale),
        5 => (held.clone(), outcome(), then()).prop_map(|(t, o, th)| Op::CompleteActivity(t, o, th)),
        1 => (held.clone(), span()).prop_map(|(t, s)| Op::Renew(t, s)),
        1 => (held, span(), any::<bool>()).prop_map(|(t, s, p)| Op::Release(t, s, p)),
        1 => WORKERS.prop_map(Op::Forget),
        2 => wf.clone().prop_map(Op::Signal),
        1 => wf.clone().prop_map(Op::RequestCancel),
        1 => (wf.clone(), any::<bool>()).prop_map(|(n, stale)| Op::Terminate(n, stale)),
        1 => wf.clone().prop_map(Op::Pause),
        1 => wf.clone().prop_map(Op::Resume),
        1 => (wf, any::<u8>(), any::<bool>()).prop_map(|(n, k, s)| Op::Reset(n, k, s)),
        1 => (span(), any::<bool>()).prop_map(|(s, c)| Op::Purge(s, c)),
        1 => (0u8..3).prop_map(Op::CreateSchedule),
        2 => Just(Op::TickSchedules),
        1 => (0u8..3, any::<bool>()).prop_map(|(n, t)| Op::TouchSchedule(n, t)),
        1 => (0u8..3).prop_map(Op::DeleteSchedule),
        2 => (1u16..700).prop_map(Op::Advance),
    ]
}

/// A sequence of operations.
pub fn sequence() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..40)
}

/// The clock every run starts at.
const START: Timestamp = Timestamp::from_millis(1_700_000_000_000);

fn worker_name(w: u8) -> String {
    format!("w{w}")
}

fn affinity_of(a: &Option<(u8, Span)>) -> Option<Affinity> {
    a.map(|(w, span)| Affinity::new(worker_name(w), span.duration()))
}

fn wid(n: u8) -> WorkflowId {
    WorkflowId::new(format!("wf-{n}"))
}

/// Canonical names for what backends number their own way.
#[derive(Default)]
struct Names {
    tasks: BTreeMap<u64, usize>,
    messages: BTreeMap<u64, usize>,
    tokens: BTreeMap<(u64, u64), usize>,
}

impl Names {
    fn task(&mut self, id: u64) -> String {
        let n = self.tasks.len();
        format!("T{}", self.tasks.entry(id).or_insert(n))
    }

    fn message(&mut self, id: u64) -> String {
        let n = self.messages.len();
        format!("M{}", self.messages.entry(id).or_insert(n))
    }

    fn lease(&mut self, lease: &Lease) -> String {
        let n = self.tokens.len();
        let token = *self.tokens.entry((lease.task.0, lease.token)).or_insert(n);
        format!(
            "{}/k{token}/{}",
            self.task(lease.task.0),
            lease.expires_at.as_millis() - START.as_millis()
        )
    }

    /// Task and message ids in an error's text, renamed.
    fn error(&mut self, e: &StorageError) -> String {
        match e {
            StorageError::LeaseLost(t) => format!("LeaseLost({})", self.task(t.0)),
            StorageError::Conflict {
                expected, actual, ..
            } => format!("Conflict({expected}, {actual})"),
            StorageError::Closed { status, .. } => format!("Closed({status})"),
            StorageError::AlreadyExists { status, .. } => format!("AlreadyExists({status})"),
            StorageError::NotFound(id) => format!("NotFound({id})"),
            StorageError::InvalidArgument(_) => "InvalidArgument".to_owned(),
            StorageError::ScheduleNotFound(id) => format!("ScheduleNotFound({id})"),
            StorageError::ScheduleExists(id) => format!("ScheduleExists({id})"),
            StorageError::ScheduleConflict {
                expected, actual, ..
            } => format!("ScheduleConflict({expected}, {actual})"),
            other => format!("unexpected error: {other}"),
        }
    }

    fn workflow_task(&mut self, t: &WorkflowTask) -> String {
        let messages: Vec<String> = t
            .messages
            .iter()
            .map(|m| {
                format!(
                    "{}@{}:{:?}",
                    self.message(m.id.0),
                    m.visible_at.as_millis() - START.as_millis(),
                    m.kind
                )
            })
            .collect();
        format!(
            "wft {} {} {} last={} d={} at={} [{}]",
            self.lease(&t.lease),
            t.workflow_id,
            t.workflow_name,
            t.last_seq,
            t.deliveries,
            t.claimed_at.as_millis() - START.as_millis(),
            messages.join(", ")
        )
    }

    fn activity_task(&mut self, t: &ActivityTask) -> String {
        format!(
            "act {} {} {} {} #{} d={} at={}",
            self.lease(&t.lease),
            t.workflow_id,
            t.activity_id,
            t.name,
            t.attempt,
            t.deliveries,
            t.claimed_at.as_millis() - START.as_millis()
        )
    }
}

/// A run of one sequence on one store.
struct Run {
    store: Arc<dyn Storage>,
    clock: ManualClock,
    names: Names,
    out: String,
    workflows: Vec<WorkflowTask>,
    activities: Vec<ActivityTask>,
}

fn at(clock: &ManualClock) -> Timestamp {
    clock.now()
}

impl Run {
    fn line(&mut self, line: impl AsRef<str>) {
        self.out.push_str(line.as_ref());
        self.out.push('\n');
    }

    fn took_workflows(&mut self, tasks: Vec<WorkflowTask>) {
        for t in tasks {
            let line = self.names.workflow_task(&t);
            self.line(format!("  {line}"));
            self.workflows.push(t);
        }
    }

    fn took_activities(&mut self, tasks: Vec<ActivityTask>) {
        for t in tasks {
            let line = self.names.activity_task(&t);
            self.line(format!("  {line}"));
            self.activities.push(t);
        }
    }

    fn result<T>(&mut self, r: crate::Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                let text = self.names.error(&e);
                self.line(format!("  error {text}"));
                None
            }
        }
    }

    fn events(&self, last: Seq, new: &[NewEvent]) -> Vec<Event> {
        let now = at(&self.clock);
        let mut seq = last;
        new.iter()
            .map(|e| {
                seq = seq.next();
                let kind = match e {
                    NewEvent::Step => EventKind::StepStarted {
                        name: format!("s{seq}"),
                    },
                    NewEvent::Schedule => EventKind::ActivityScheduled {
                        name: "work".into(),
                        input: Payload::encode(&seq.get()).unwrap_or(Payload::NULL),
                        options: ActivityOptions::default(),
                    },
                    NewEvent::Sleep(s) => EventKind::TimerScheduled {
                        fire_at: now.saturating_add(s.duration()),
                        duration_ms: Some(u64::try_from(s.duration().as_millis()).unwrap_or(0)),
                    },
                    NewEvent::SleepUntil(ms) => EventKind::TimerScheduled {
                        fire_at: START.saturating_add(Duration::from_millis(u64::from(*ms))),
                        duration_ms: None,
                    },
                    NewEvent::Complete => EventKind::WorkflowCompleted {
                        output: Payload::encode(&"done").unwrap_or(Payload::NULL),
                    },
                    NewEvent::Fail | NewEvent::FailRetried => EventKind::WorkflowFailed {
                        failure: Failure::new("boom", "it failed"),
                    },
                    NewEvent::Cancel => EventKind::WorkflowCancelled {},
                    NewEvent::Tag(n) => EventKind::TagSet {
                        key: format!("k{}", n % 3),
                        value: if n % 2 == 1 {
                            loom_core::TagValue::Text(n.to_string())
                        } else {
                            loom_core::TagValue::Int(i64::from(*n))
                        },
                    },
                    NewEvent::CancelTimer(n) => EventKind::TimerCancelled {
                        timer_id: loom_core::TimerId(Seq::new(u64::from(*n))),
                    },
                    NewEvent::CancelActivity(n) => EventKind::ActivityCancelled {
                        activity_id: loom_core::ActivityId(Seq::new(u64::from(*n))),
                    },
                    NewEvent::ContinueAsNew(carry) => EventKind::WorkflowContinuedAsNew {
                        input: Payload::encode(&seq.get()).unwrap_or(Payload::NULL),
                        signals: carry
                            .then(|| loom_core::CarriedSignal {
                                name: "poke".into(),
                                payload: Payload::encode(&seq.get()).unwrap_or(Payload::NULL),
                            })
                            .into_iter()
                            .collect(),
                    },
                    NewEvent::StartChild(n, abandon) => EventKind::ChildWorkflowScheduled {
                        traceparent: None,
                        retry: None,
                        name: "Child".into(),
                        version: 1,
                        workflow_id: wid(*n),
                        input: Payload::encode(&seq.get()).unwrap_or(Payload::NULL),
                        parent_close: if *abandon {
                            ParentClosePolicy::Abandon
                        } else {
                            ParentClosePolicy::RequestCancel
                        },
                        // An abandoned child runs on its own: give it a deadline.
                        timeouts: loom_core::Timeouts {
                            execution_ms: None,
                            run_ms: abandon.then_some(300),
                        },
                    },
                };
                Event { seq, at: now, kind }
            })
            .collect()
    }

    /// What a runtime would report with a decision about `workflow`, as far as the rules for
    /// children read it: its parent, from its first event as this store holds it, and the
    /// children `events` start (each claimed as open, whoever holds its id).
    async fn family(&self, workflow: &WorkflowId, events: &[Event]) -> Progress {
        let parent = match self.store.load_history(workflow, Seq::ZERO).await {
            Ok(h) => h.into_iter().next().and_then(|e| match e.kind {
                EventKind::WorkflowStarted { parent, .. } => parent,
                _ => None,
            }),
            Err(_) => None,
        };
        let pending_children = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::ChildWorkflowScheduled {
                    name,
                    workflow_id,
                    parent_close,
                    ..
                } => Some(PendingChild {
                    id: ChildId(e.seq),
                    workflow_id: workflow_id.clone(),
                    name: name.clone(),
                    parent_close: *parent_close,
                }),
                _ => None,
            })
            .collect();
        Progress {
            run: self.store.describe(workflow).await.map_or(1, |s| s.run),
            current_step: None,
            state: Payload::NULL,
            pending_activities: Vec::new(),
            pending_timers: Vec::new(),
            pending_children,
            parent,
            awaiting_signals: Vec::new(),
            buffered_signals: BTreeMap::new(),
            outcome: None,
        }
    }

    fn claim(&self, max: u8, lease: Span) -> ClaimRequest {
        self.claim_as(0, max, lease)
    }

    fn claim_as(&self, worker: u8, max: u8, lease: Span) -> ClaimRequest {
        ClaimRequest::new(worker_name(worker), usize::from(max), lease.duration())
    }

    async fn step(&mut self, op: &Op) {
        self.line(format!("{op:?}"));
        match op {
            Op::Create(n) | Op::CreateWithTimeout(n, _) => {
                let run_ms = match op {
                    Op::CreateWithTimeout(_, s) => {
                        Some(u64::try_from(s.duration().as_millis()).unwrap_or(0).max(1))
                    }
                    _ => None,
                };
                let started = Event {
                    seq: Seq::FIRST,
                    at: at(&self.clock),
                    kind: EventKind::WorkflowStarted {
                        traceparent: None,
                        // Every workflow starts with a tag the code may replace.
                        tags: [("k0".to_owned(), loom_core::TagValue::Int(i64::from(*n)))]
                            .into_iter()
                            .collect(),
                        reset: None,
                        attempt: 1,
                        retry: None,
                        run: 1,
                        name: "Differential".into(),
                        version: 1,
                        input: Payload::encode(n).unwrap_or(Payload::NULL),
                        format: HISTORY_FORMAT,
                        timeouts: loom_core::Timeouts {
                            execution_ms: None,
                            run_ms,
                        },
                        parent: None,
                    },
                };
                let r = self.store.create_workflow(&wid(*n), started).await;
                self.result(r);
            }
            Op::ClaimWorkflows(max, lease, who) => {
                let r = self
                    .store
                    .claim_workflow_tasks(&self.claim_as(*who, *max, *lease))
                    .await;
                if let Some(tasks) = self.result(r) {
                    self.took_workflows(tasks);
                }
            }
            Op::ClaimActivities(max, lease) => {
                let r = self
                    .store
                    .claim_activity_tasks(&self.claim(*max, *lease))
                    .await;
                if let Some(tasks) = self.result(r) {
                    self.took_activities(tasks);
                }
            }
            Op::Race => {
                let (a, b) = {
                    let (s1, s2) = (self.store.clone(), self.store.clone());
                    let (r1, r2) = (
                        self.claim_as(0, 1, Span::Long),
                        self.claim_as(1, 1, Span::Long),
                    );
                    tokio::join!(
                        async move { s1.claim_workflow_tasks(&r1).await },
                        async move { s2.claim_workflow_tasks(&r2).await }
                    )
                };
                // Who wins is the scheduler's choice: the pair is recorded in task order.
                let mut got = Vec::new();
                for r in [a, b] {
                    if let Some(tasks) = self.result(r) {
                        got.extend(tasks);
                    }
                }
                got.sort_by_key(|t| t.workflow_id.clone());
                let ids: Vec<_> = got.iter().map(|t| t.lease.task).collect();
                let mut unique = ids.clone();
                unique.dedup();
                if unique.len() != ids.len() {
                    self.line("  a task was handed to both claimers");
                }
                self.took_workflows(got);
            }
            Op::CompleteWorkflow(i, new, consume, eager, affinity) => {
                let Some(task) = self.take_workflow(*i) else {
                    return;
                };
                let events = self.events(task.last_seq, new);
                let progress = self.family(&task.workflow_id, &events).await;
                let retried = new.iter().any(|e| matches!(e, NewEvent::FailRetried));
                let next_run = events.iter().find_map(|e| match &e.kind {
                    EventKind::WorkflowFailed { .. } if retried => Some(Event {
                        seq: Seq::FIRST,
                        at: e.at,
                        kind: EventKind::WorkflowStarted {
                            traceparent: None,
                            tags: Default::default(),
                            reset: None,
                            run: task.run + 1,
                            name: "Differential".into(),
                            version: 1,
                            input: Payload::NULL,
                            format: HISTORY_FORMAT,
                            timeouts: loom_core::Timeouts::default(),
                            parent: None,
                            retry: Some(loom_core::RetryPolicy {
                                max_attempts: 0,
                                initial_interval: Span::Short.duration(),
                                backoff_coefficient: 1.0,
                                ..loom_core::RetryPolicy::default()
                            }),
                            attempt: 2,
                        },
                    }),
                    EventKind::WorkflowContinuedAsNew { input, .. } => Some(Event {
                        seq: Seq::FIRST,
                        at: e.at,
                        kind: EventKind::WorkflowStarted {
                            traceparent: None,
                            tags: Default::default(),
                            reset: None,
                            attempt: 1,
                            retry: None,
                            run: task.run + 1,
                            name: "Differential".into(),
                            version: 1,
                            input: input.clone(),
                            format: HISTORY_FORMAT,
                            timeouts: loom_core::Timeouts::default(),
                            parent: None,
                        },
                    }),
                    _ => None,
                });
                let c = WorkflowTaskCompletion {
                    next_run,
                    lease: task.lease,
                    workflow_id: task.workflow_id.clone(),
                    expected_last_seq: task.last_seq,
                    events,
                    consumed: if *consume {
                        task.messages.iter().map(|m| m.id).collect()
                    } else {
                        Vec::new()
                    },
                    progress: Some(progress),
                    logs: vec![LogRecord {
                        seq: task.last_seq,
                        at: at(&self.clock),
                        level: LogLevel::Info,
                        message: format!("commit of {}", task.workflow_id),
                    }],
                    eager: (*eager > 0).then(|| self.claim(*eager, Span::Long)),
                    affinity: affinity_of(affinity),
                };
                let r = self.store.complete_workflow_task(c).await;
                if let Some(claimed) = self.result(r) {
                    self.took_activities(claimed);
                }
            }
            Op::CompleteStale(i) => {
                let Some(task) = self.take_workflow(*i) else {
                    return;
                };
                let stale = Seq::new(task.last_seq.get().saturating_sub(1));
                let c = WorkflowTaskCompletion {
                    next_run: None,
                    lease: task.lease,
                    workflow_id: task.workflow_id.clone(),
                    expected_last_seq: stale,
                    events: self.events(stale, &[NewEvent::Step]),
                    consumed: Vec::new(),
                    progress: None,
                    logs: Vec::new(),
                    eager: None,
                    affinity: None,
                };
                let r = self.store.complete_workflow_task(c).await;
                self.result(r);
                // A failed commit leaves the lease held: keep it.
                self.workflows.push(task);
            }
            Op::CompleteActivity(i, outcome, then) => {
                let Some(task) = self.take_activity(*i) else {
                    return;
                };
                let (result, retry) = match outcome {
                    Outcome::Completed => (
                        EventKind::ActivityCompleted {
                            activity_id: task.activity_id,
                            attempt: task.attempt,
                            result: Payload::encode(&task.attempt).unwrap_or(Payload::NULL),
                        },
                        None,
                    ),
                    Outcome::Failed(retry) => (
                        EventKind::ActivityFailed {
                            activity_id: task.activity_id,
                            attempt: task.attempt,
                            failure: Failure::new("flaky", "it failed"),
                            retry_at: None,
                        },
                        *retry,
                    ),
                    Outcome::TimedOut(retry) => (
                        EventKind::ActivityTimedOut {
                            activity_id: task.activity_id,
                            attempt: task.attempt,
                            retry_at: None,
                        },
                        *retry,
                    ),
                };
                let then = match then {
                    Then::Nothing => AfterActivity::Nothing,
                    Then::Claim(who) => {
                        AfterActivity::ClaimWorkflowTask(self.claim_as(*who, 1, Span::Long))
                    }
                    Then::Decide(new, who, affinity) => {
                        // Decided from what the store says the history is now.
                        let last = self
                            .store
                            .describe(&task.workflow_id)
                            .await
                            .map_or(Seq::FIRST, |s| s.last_seq);
                        let mut events = vec![Event {
                            seq: last.next(),
                            at: at(&self.clock),
                            kind: result.clone(),
                        }];
                        events.extend(self.events(last.next(), new));
                        let progress = self.family(&task.workflow_id, &events).await;
                        AfterActivity::Decide {
                            decided: Box::new(DecidedTask {
                                workflow_id: task.workflow_id.clone(),
                                expected_last_seq: last,
                                events,
                                progress: Some(progress),
                                logs: Vec::new(),
                                affinity: affinity_of(affinity),
                            }),
                            claim: self.claim_as(*who, 1, Span::Long),
                        }
                    }
                };
                let c = ActivityTaskCompletion {
                    lease: task.lease,
                    workflow_id: task.workflow_id.clone(),
                    result,
                    retry_after: retry.map(Span::duration),
                    then,
                };
                let r = self.store.complete_activity_task(c).await;
                match self.result(r) {
                    Some(ActivityCommitted::Nothing) => self.line("  nothing"),
                    Some(ActivityCommitted::WorkflowTask(t)) => self.took_workflows(vec![t]),
                    Some(ActivityCommitted::Decided(acts)) => {
                        self.line("  decided");
                        self.took_activities(acts);
                    }
                    None => {}
                }
            }
            Op::Renew(i, span) => {
                let Some(lease) = self.held_lease(*i) else {
                    return;
                };
                let r = self.store.renew_lease(&lease, span.duration()).await;
                if let Some(renewed) = self.result(r) {
                    let line = self.names.lease(&renewed);
                    self.line(format!("  {line}"));
                    self.update_lease(renewed);
                }
            }
            Op::Forget(w) => {
                let r = self.store.forget_affinity(&worker_name(*w)).await;
                self.result(r);
            }
            Op::Release(i, after, pause) => {
                let Some(lease) = self.held_lease(*i) else {
                    return;
                };
                let release = Release {
                    after: after.duration(),
                    pause: pause.then(|| "paused by the differential test".to_owned()),
                };
                let r = self.store.release_task(&lease, release).await;
                self.result(r);
            }
            Op::Signal(n) => {
                let r = self
                    .store
                    .signal(
                        &wid(*n),
                        "poke",
                        Payload::encode(n).unwrap_or(Payload::NULL),
                    )
                    .await;
                self.result(r);
            }
            Op::RequestCancel(n) => {
                let r = self
                    .store
                    .request_cancel(&wid(*n), Some("asked".into()))
                    .await;
                self.result(r);
            }
            Op::Terminate(n, stale) => {
                let Some(summary) = self.result(self.store.describe(&wid(*n)).await) else {
                    return;
                };
                let last = summary.last_seq.get().saturating_sub(u64::from(*stale));
                let family = self.family(&wid(*n), &[]).await;
                let r = self
                    .store
                    .terminate(crate::Termination {
                        workflow_id: wid(*n),
                        expected_last_seq: Seq::new(last),
                        reason: format!("differential {n}"),
                        at: at(&self.clock),
                        family,
                    })
                    .await;
                self.result(r);
            }
            Op::Pause(n) => {
                let r = self
                    .store
                    .pause(&wid(*n), "paused by the differential test")
                    .await;
                self.result(r);
            }
            Op::Resume(n) => {
                let r = self.store.resume(&wid(*n)).await;
                self.result(r);
            }
            Op::Reset(n, k, signals) => {
                let Some(summary) = self.result(self.store.describe(&wid(*n)).await) else {
                    return;
                };
                let Some(history) = self.result(self.store.load_history(&wid(*n), Seq::ZERO).await)
                else {
                    return;
                };
                let to = u64::from(*k) % (history.len() as u64 + 1) + 1;
                let family = Progress {
                    run: summary.run,
                    ..self.family(&wid(*n), &history).await
                };
                let r = self
                    .store
                    .reset(crate::Reset {
                        workflow_id: wid(*n),
                        history,
                        to: Seq::new(to),
                        reason: format!("differential reset {n}"),
                        reapply_signals: *signals,
                        created_at: summary.created_at,
                        family,
                        at: at(&self.clock),
                    })
                    .await;
                self.result(r);
            }
            Op::Purge(older, completed) => {
                let purge = crate::Purge {
                    older_than: older.duration(),
                    status: completed.then_some(crate::WorkflowStatus::Completed),
                    name: None,
                    except_names: Vec::new(),
                    limit: 2,
                };
                let r = self.store.purge(&purge).await;
                if let Some(ids) = self.result(r) {
                    self.line(format!("  purged {ids:?}"));
                }
            }
            Op::CreateSchedule(n) => {
                let Some(now) = self.result(self.store.now().await) else {
                    return;
                };
                let schedule = crate::schedule::Schedule::new(
                    format!("s{n}"),
                    crate::schedule::ScheduleSpec {
                        intervals: vec![crate::schedule::IntervalSpec {
                            every_ms: 1_000,
                            offset_ms: 0,
                        }],
                        ..Default::default()
                    },
                    crate::schedule::ScheduleAction {
                        workflow: "Scheduled".into(),
                        version: None,
                        input: Payload::NULL,
                        id_pattern: crate::schedule::DEFAULT_ID_PATTERN.into(),
                        tags: Default::default(),
                    },
                    crate::schedule::SchedulePolicy {
                        overlap: crate::schedule::Overlap::ALL[usize::from(*n) % 6],
                        catchup_window_ms: 2_000,
                    },
                    false,
                    now,
                )
                .expect("a valid schedule");
                let r = self
                    .store
                    .write_schedule(crate::ScheduleWrite {
                        id: schedule.id.clone(),
                        expected: None,
                        schedule: Some(schedule),
                        starts: Vec::new(),
                        cancel: Vec::new(),
                        terminate: Vec::new(),
                    })
                    .await;
                self.result(r);
            }
            Op::TickSchedules => {
                let Some(due) = self.result(self.store.due_schedules(2).await) else {
                    return;
                };
                for mut schedule in due.due {
                    let mut ids = std::collections::BTreeMap::new();
                    for id in schedule.candidates(due.now) {
                        let state = match self.store.describe(&id).await {
                            Ok(s) if s.status.is_terminal() => crate::schedule::IdState::Closed,
                            Ok(_) => crate::schedule::IdState::Open,
                            Err(_) => crate::schedule::IdState::Free,
                        };
                        ids.insert(id, state);
                    }
                    let version = schedule.version;
                    let tick = schedule.tick(due.now, &ids);
                    let write = tick.into_write(&schedule, version, |_, fire| Event {
                        seq: Seq::FIRST,
                        at: due.now,
                        kind: EventKind::WorkflowStarted {
                            traceparent: None,
                            tags: schedule.action.tags_for(&schedule.id, fire.nominal),
                            reset: None,
                            attempt: 1,
                            retry: None,
                            run: 1,
                            name: schedule.action.workflow.clone(),
                            version: 1,
                            input: schedule.action.input.clone(),
                            format: HISTORY_FORMAT,
                            timeouts: Default::default(),
                            parent: None,
                        },
                    });
                    let r = self.store.write_schedule(write).await;
                    self.result(r);
                }
            }
            Op::TouchSchedule(n, trigger) => {
                let Some(mut schedule) = self.result(self.store.schedule(&format!("s{n}")).await)
                else {
                    return;
                };
                let Some(now) = self.result(self.store.now().await) else {
                    return;
                };
                let version = schedule.version;
                if *trigger {
                    schedule.trigger(now);
                } else {
                    let paused = !schedule.paused;
                    schedule.set_paused(paused, String::new(), now);
                }
                let r = self
                    .store
                    .write_schedule(crate::ScheduleWrite {
                        id: schedule.id.clone(),
                        expected: Some(version),
                        schedule: Some(schedule),
                        starts: Vec::new(),
                        cancel: Vec::new(),
                        terminate: Vec::new(),
                    })
                    .await;
                self.result(r);
            }
            Op::DeleteSchedule(n) => {
                let Some(schedule) = self.result(self.store.schedule(&format!("s{n}")).await)
                else {
                    return;
                };
                let r = self
                    .store
                    .write_schedule(crate::ScheduleWrite {
                        id: schedule.id,
                        expected: Some(schedule.version),
                        schedule: None,
                        starts: Vec::new(),
                        cancel: Vec::new(),
                        terminate: Vec::new(),
                    })
                    .await;
                self.result(r);
            }
            Op::Advance(ms) => self.clock.advance(Duration::from_millis(u64::from(*ms))),
        }
    }

    fn take_workflow(&mut self, i: u8) -> Option<WorkflowTask> {
        if self.workflows.is_empty() {
            return None;
        }
        let i = usize::from(i) % self.workflows.len();
        Some(self.workflows.remove(i))
    }

    fn take_activity(&mut self, i: u8) -> Option<ActivityTask> {
        if self.activities.is_empty() {
            return None;
        }
        let i = usize::from(i) % self.activities.len();
        Some(self.activities.remove(i))
    }

    /// A held lease, workflow tasks first, then activity tasks.
    fn held_lease(&self, i: u8) -> Option<Lease> {
        let all: Vec<Lease> = self
            .workflows
            .iter()
            .map(|t| t.lease)
            .chain(self.activities.iter().map(|t| t.lease))
            .collect();
        if all.is_empty() {
            return None;
        }
        Some(all[usize::from(i) % all.len()])
    }

    fn update_lease(&mut self, lease: Lease) {
        for t in &mut self.workflows {
            if t.lease.task == lease.task && t.lease.token == lease.token {
                t.lease = lease;
            }
        }
        for t in &mut self.activities {
            if t.lease.task == lease.task && t.lease.token == lease.token {
                t.lease = lease;
            }
        }
    }

    /// Listings by tag: each key by range on both sides of the middle, and each value some
    /// workflow holds by equality.
    async fn tag_listings(&mut self) {
        use crate::{TagCmp, TagFilter};
        let all = ListQuery {
            limit: 1_000,
            ..ListQuery::default()
        };
        let Ok(page) = self.store.list(&all).await else {
            return;
        };
        let mut filters = Vec::new();
        for key in ["k0", "k1", "k2"] {
            for cmp in [TagCmp::Ge, TagCmp::Lt] {
                filters.push(TagFilter {
                    key: key.into(),
                    cmp,
                    value: loom_core::TagValue::Int(128),
                });
            }
        }
        let held: std::collections::BTreeSet<(String, String)> = page
            .items
            .iter()
            .flat_map(|s| s.tags.iter().map(|(k, v)| (k.clone(), v.text())))
            .collect();
        for (key, text) in held {
            filters.push(TagFilter {
                key,
                cmp: TagCmp::Eq,
                value: loom_core::TagValue::Text(text),
            });
        }
        for f in filters {
            let query = ListQuery {
                tags: vec![f.clone()],
                limit: 1_000,
                ..ListQuery::default()
            };
            let ids = match self.store.list(&query).await {
                Ok(page) => page
                    .items
                    .iter()
                    .map(|s| s.id.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                Err(e) => format!("error {}", self.names.error(&e)),
            };
            self.line(format!(
                "tag {}{}{}: {ids}",
                f.key,
                f.cmp.as_str(),
                f.value.text()
            ));
        }
    }

    /// The state every backend must agree on, after the sequence.
    async fn state(&mut self) {
        self.line("== state");
        self.tag_listings().await;
        let query = ListQuery {
            limit: 1_000,
            ..ListQuery::default()
        };
        match self.store.list(&query).await {
            Ok(page) => {
                let mut summaries = page.items;
                summaries.sort_by(|a, b| a.id.cmp(&b.id));
                for s in summaries {
                    let ms = |t: Timestamp| t.as_millis() - START.as_millis();
                    self.line(format!(
                        "{} {} v{} {} run={} created={} updated={} closed={:?} last={} output={:?} failure={:?} pause={:?} parent={:?} tags={:?}",
                        s.id,
                        s.name,
                        s.version,
                        s.status,
                        s.run,
                        ms(s.created_at),
                        ms(s.updated_at),
                        s.closed_at.map(ms),
                        s.last_seq,
                        s.output,
                        s.failure,
                        s.pause_reason,
                        s.parent,
                        s.tags
                    ));
                    match self.store.load_history(&s.id, Seq::ZERO).await {
                        Ok(h) => {
                            for e in h {
                                self.line(format!("  {} @{} {:?}", e.seq, ms(e.at), e.kind));
                            }
                        }
                        Err(e) => self.line(format!("  history: {e}")),
                    }
                    match self.store.runs(&s.id).await {
                        Ok(runs) => {
                            for r in runs {
                                self.line(format!(
                                    "  run {} @{}..@{} {} events",
                                    r.run,
                                    ms(r.started_at),
                                    ms(r.ended_at),
                                    r.events
                                ));
                                match self.store.load_run(&s.id, r.run).await {
                                    Ok(h) => {
                                        for e in h {
                                            self.line(format!(
                                                "    {} @{} {:?}",
                                                e.seq,
                                                ms(e.at),
                                                e.kind
                                            ));
                                        }
                                    }
                                    Err(e) => self.line(format!("    run: {e}")),
                                }
                            }
                        }
                        Err(e) => self.line(format!("  runs: {e}")),
                    }
                    match self.store.logs(&s.id).await {
                        Ok(logs) => {
                            for l in logs {
                                self.line(format!("  log {} {:?} {}", l.seq, l.level, l.message));
                            }
                        }
                        Err(e) => self.line(format!("  logs: {e}")),
                    }
                    match self.store.pending(&s.id).await {
                        Ok(p) => {
                            for t in p.tasks {
                                let id = self.names.task(t.id.0);
                                self.line(format!(
                                    "  task {id} {:?} visible={:?} leased={:?} d={} pref={:?}",
                                    t.activity,
                                    t.visible_at.map(ms),
                                    t.leased_until.map(ms),
                                    t.deliveries,
                                    t.preferred_by.map(|(o, until)| (o, ms(until)))
                                ));
                            }
                            for m in p.messages {
                                let id = self.names.message(m.id.0);
                                self.line(format!(
                                    "  message {id} @{} {:?}",
                                    ms(m.visible_at),
                                    m.kind
                                ));
                            }
                        }
                        Err(e) => self.line(format!("  pending: {e}")),
                    }
                }
            }
            Err(e) => self.line(format!("list: {e}")),
        }
        match self.store.stats().await {
            Ok(mut stats) => {
                stats.at = START;
                let mut line = String::new();
                let _ = write!(line, "stats {stats:?}");
                self.line(line);
            }
            Err(e) => self.line(format!("stats: {e}")),
        }
        match self.store.backlog().await {
            Ok(mut backlog) => {
                backlog.at = START;
                self.line(format!("backlog {backlog:?}"));
            }
            Err(e) => self.line(format!("backlog: {e}")),
        }
        match self.store.schedules(None, 100).await {
            Ok(schedules) => {
                for s in schedules {
                    self.line(format!("schedule {s:?}"));
                }
            }
            Err(e) => self.line(format!("schedules: {e}")),
        }
        match self.store.due_schedules(100).await {
            Ok(due) => {
                let ids: Vec<&str> = due.due.iter().map(|s| s.id.as_str()).collect();
                let next = due.next.map(|t| t.as_millis() - START.as_millis());
                self.line(format!("due schedules {ids:?}, next {next:?}"));
            }
            Err(e) => self.line(format!("due schedules: {e}")),
        }
    }
}

/// Runs `ops` on `store` (whose clock is `clock`, at [`START`]) and returns the transcript.
pub async fn transcript(store: Arc<dyn Storage>, clock: ManualClock, ops: &[Op]) -> String {
    let mut run = Run {
        store,
        clock,
        names: Names::default(),
        out: String::new(),
        workflows: Vec::new(),
        activities: Vec::new(),
    };
    for op in ops {
        run.step(op).await;
    }
    run.state().await;
    run.out
}

/// The manual clock every run starts on.
pub fn clock() -> ManualClock {
    ManualClock::new(START)
}

/// Runs generated sequences on stores from `fresh` (a new store on the given clock, or `None`
/// to skip: a backend whose server is missing says so itself) and on `MemoryStorage`; fails at
/// the first sequence whose transcripts differ, showing both.
pub fn check<F, Fut>(fresh: F)
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = Option<Arc<dyn Storage>>>,
{
    let cases = std::env::var(CASES_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let compare = |ops: Vec<Op>| {
        rt.block_on(async {
            let clock = clock();
            let Some(store) = fresh(clock.clone()).await else {
                return Ok(());
            };
            let theirs = transcript(store, clock, &ops).await;
            let clock = crate::conformance::differential::clock();
            let reference = Arc::new(MemoryStorage::with_clock(Arc::new(clock.clone())));
            let ours = transcript(reference, clock, &ops).await;
            if theirs == ours {
                return Ok(());
            }
            let diff = first_difference(&ours, &theirs);
            Err(TestCaseError::fail(format!(
                "the backend and MemoryStorage disagree.\n{diff}\n--- MemoryStorage\n{ours}\n--- backend\n{theirs}"
            )))
        })
    };
    for ops in seeded() {
        if let Err(e) = compare(ops) {
            panic!("{e}");
        }
    }
    if let Err(e) = runner.run(&sequence(), compare) {
        panic!("{e}");
    }
}

/// Sequences every run compares before the generated ones: situations the generator reaches
/// only rarely.
pub fn seeded() -> Vec<Vec<Op>> {
    let sticky = |owner: u8| {
        [
            Op::Create(0),
            Op::ClaimWorkflows(1, Span::Long, owner),
            Op::Create(1),
            Op::Advance(10),
            Op::CompleteWorkflow(0, vec![NewEvent::Step], true, 0, Some((owner, Span::Long))),
            Op::Signal(0),
        ]
    };
    // wf-0 prefers worker 0 and is older than wf-1: worker 1 passes over it, one task at a
    // time, and never takes it.
    let passed_over = vec![
        Op::Create(0),
        Op::ClaimWorkflows(1, Span::Long, 0),
        Op::CompleteWorkflow(0, vec![NewEvent::Step], true, 0, Some((0, Span::Long))),
        Op::Signal(0),
        Op::Advance(10),
        Op::Create(1),
        Op::ClaimWorkflows(1, Span::Long, 1),
        Op::ClaimWorkflows(1, Span::Long, 1),
    ];
    // wf-0 prefers worker 0 and is newer than wf-1: worker 0 takes it first.
    let own_first = sticky(0)
        .into_iter()
        .chain([Op::Create(2), Op::ClaimWorkflows(1, Span::Long, 0)])
        .collect();
    // Another worker's activity result cannot claim the task the owner prefers until the
    // window has passed.
    let lapsed = vec![
        Op::Create(0),
        Op::ClaimWorkflows(1, Span::Long, 0),
        Op::CompleteWorkflow(0, vec![NewEvent::Schedule], true, 0, Some((0, Span::Short))),
        Op::ClaimActivities(1, Span::Long),
        Op::CompleteActivity(0, Outcome::Completed, Then::Claim(1)),
        Op::ClaimWorkflows(1, Span::Long, 1),
        Op::Advance(400),
        Op::ClaimWorkflows(1, Span::Long, 1),
    ];
    // A worker that gives up its affinities frees its workflow's task at once.
    let forgotten = vec![
        Op::Create(0),
        Op::ClaimWorkflows(1, Span::Long, 0),
        Op::CompleteWorkflow(0, vec![NewEvent::Step], true, 0, Some((0, Span::Long))),
        Op::Signal(0),
        Op::ClaimWorkflows(1, Span::Long, 1),
        Op::Forget(0),
        Op::ClaimWorkflows(1, Span::Long, 1),
    ];
    // wf-0 prefers worker 1 and wf-1, older, prefers no one: racing, worker 1 takes wf-0 and
    // worker 0 takes wf-1. A claim that locked a row it did not take (worker 1's own, and the
    // queue's first) would leave worker 0 with nothing whenever the two claims overlap, so
    // the race runs several times.
    let raced = || sticky(1).into_iter().chain([Op::Race]).collect::<Vec<_>>();
    let mut seeded = vec![passed_over, own_first, lapsed, forgotten];
    seeded.extend(std::iter::repeat_with(raced).take(8));
    seeded
}

fn first_difference(a: &str, b: &str) -> String {
    for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            return format!(
                "line {}:\n  MemoryStorage: {x}\n  backend:       {y}",
                i + 1
            );
        }
    }
    format!(
        "one transcript is longer: {} against {} lines",
        a.lines().count(),
        b.lines().count()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two fresh MemoryStorages agree with each other on generated sequences: the transcript
    /// itself is deterministic.
    #[test]
    fn the_reference_agrees_with_itself() {
        check(|clock| async move {
            Some(Arc::new(MemoryStorage::with_clock(Arc::new(clock))) as Arc<dyn Storage>)
        });
    }

    /// The seeded sequences show what they are there for on the reference: another worker
    /// passes over a preferred task, its owner takes it first, and a lapsed window frees it.
    #[tokio::test]
    async fn the_seeded_sequences_reach_affinity() {
        let mut shown = Vec::new();
        for ops in seeded() {
            let clock = clock();
            let store = Arc::new(MemoryStorage::with_clock(Arc::new(clock.clone())));
            let t = transcript(store, clock, &ops).await;
            let claims: Vec<String> = t
                .split("== state")
                .next()
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("ClaimWorkflows") || l.starts_with("  wft"))
                .map(|l| l.split(" Differential").next().unwrap_or(l).to_owned())
                .collect();
            shown.push(claims);
        }
        assert_eq!(
            shown[0][2..],
            [
                "ClaimWorkflows(1, Long, 1)",
                "  wft T1/k1/3600010 wf-1",
                "ClaimWorkflows(1, Long, 1)",
            ],
            "{shown:?}"
        );
        assert_eq!(
            shown[1][2..],
            ["ClaimWorkflows(1, Long, 0)", "  wft T0/k1/3600010 wf-0"],
            "{shown:?}"
        );
        assert_eq!(
            shown[3][2..],
            [
                "ClaimWorkflows(1, Long, 1)",
                "ClaimWorkflows(1, Long, 1)",
                "  wft T0/k1/3600000 wf-0",
            ],
            "{shown:?}"
        );
        assert_eq!(
            shown[2][2..],
            [
                "ClaimWorkflows(1, Long, 1)",
                "ClaimWorkflows(1, Long, 1)",
                "  wft T0/k2/3600400 wf-0",
            ],
            "{shown:?}"
        );
    }

    /// A transcript names what was claimed, with renamed ids.
    #[tokio::test]
    async fn a_transcript_shows_every_answer() {
        let clock = clock();
        let store = Arc::new(MemoryStorage::with_clock(Arc::new(clock.clone())));
        let ops = vec![
            Op::Create(0),
            Op::Create(0),
            Op::ClaimWorkflows(2, Span::Long, 0),
            Op::CompleteWorkflow(0, vec![NewEvent::Schedule], true, 1, None),
            Op::Advance(10),
            Op::Signal(1),
        ];
        let t = transcript(store, clock, &ops).await;
        assert!(t.contains("error AlreadyExists(running)"), "{t}");
        assert!(
            t.contains("wft T0/k0/3600000 wf-0 Differential last=#1"),
            "{t}"
        );
        assert!(
            t.contains("act T1/k1/3600000 wf-0 activity#2 work #1"),
            "{t}"
        );
        assert!(t.contains("error NotFound(wf-1)"), "{t}");
        assert!(t.contains("== state"), "{t}");
    }
}
