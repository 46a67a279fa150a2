//! Property tests of replay.
//!
//! A generated program (activities, parallel activities, races, timers, signals with and
//! without timeouts, state writes, nested steps, recorded values, logs, child workflows with
//! derived and chosen ids, versioned branches, handled and unhandled failures, continue-as-new
//! into a run that does the rest) runs as a workflow in a simulated environment (activity attempts that fail and retry, children that
//! complete, fail or are cancelled, time that advances, signals sent before and after the code
//! waits, duplicate deliveries, cancellation, timers and activities cancelled by the code whose
//! messages are withdrawn or still delivered, runs that switch with signals in flight, which
//! the next run receives), seeded so that every run of the same case sees the same world.
//!
//! - **Crash equivalence:** the run is repeated crashing before every task, and crashing before
//!   a random subset of tasks; each crash drops the machine and the next task replays from the
//!   stored history. Histories, states, outcomes and logs equal those of the run that never
//!   stopped.
//! - **Mutation detection:** a mutated program replayed on the original history fails with a
//!   non-determinism error at exactly the first position where the mutated program's own
//!   history diverges, and replays cleanly when it does not diverge. (Programs here have no
//!   versioned branches: `patched` exists to make a missing marker *not* a divergence.)
//! - **Versioned branches:** a history written by the code before a change (each `patched`
//!   branch replaced by its old branch) replays on the changed code, which takes the old
//!   branches and ends the same way.

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use loom_core::future::{Either, join_all, select};
use loom_core::{
    Activation, ActivityError, ActivityOptions, ChildError, ChildId, Event, EventKind, Failure,
    LogRecord, Outcome, Payload, ReplayError, Role, Seq, Timestamp, Workflow, WorkflowContext,
    WorkflowError, WorkflowMachine, workflow_type,
};
use proptest::prelude::*;
use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};
use support::started_event;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Op {
    /// Call an activity; `handle` catches a final failure (and cancellation) and compensates.
    Activity {
        name: u8,
        arg: u32,
        handle: bool,
    },
    /// Call several activities at once and sum their results.
    Parallel(Vec<(u8, u32)>),
    /// Race an activity against a timer.
    Race {
        name: u8,
        arg: u32,
        timeout_ms: u32,
    },
    Sleep(u32),
    Signal(u8),
    SignalTimeout(u8, u32),
    State(u8, u32),
    /// Set tag `t{k}` to the sum so far plus the value.
    Tag(u8, u32),
    Step(u8, Vec<Op>),
    Now,
    Random,
    Log(u8),
    /// Start a child workflow and await it; `handle` catches its failure or cancellation;
    /// `named` chooses its id instead of deriving it; `retried` gives it a retry policy.
    Child {
        arg: u32,
        handle: bool,
        named: bool,
        retried: bool,
    },
    /// A versioned change: the new branch runs `body`, the old one adds 5.
    Patched(u8, Vec<Op>),
    /// Adds to the result, issuing nothing: the old branch of a `Patched`.
    Add(u32),
    /// At the top level: ends the run, continuing as new with the rest of the program (after
    /// an `Add` of what it has summed so far). Inside a step it does nothing.
    ContinueAsNew,
}

/// The child type the programs start; the simulated world decides how each child ends.
struct Leaf;

impl Workflow for Leaf {
    const NAME: &'static str = "Leaf";
    type Input = u32;
    type State = ();
    type Output = u64;

    async fn run(ctx: WorkflowContext<Self>) -> Result<u64, WorkflowError> {
        Ok(u64::from(*ctx.input()) * 3)
    }
}

struct Script;

type Acc = BTreeMap<String, u64>;

impl Workflow for Script {
    const NAME: &'static str = "Script";
    type Input = Vec<Op>;
    type State = Acc;
    type Output = u64;

    async fn run(ctx: WorkflowContext<Self>) -> Result<u64, WorkflowError> {
        let mut acc = 0u64;
        let ops = ctx.input().clone();
        for (i, op) in ops.iter().enumerate() {
            if *op == Op::ContinueAsNew {
                // The sum so far fits in a u32 add only modulo: what matters is that the
                // next run's input is a function of this run's history.
                let carried = u32::try_from(acc % 1_000_000).unwrap_or(0);
                let rest = std::iter::once(Op::Add(carried))
                    .chain(ops[i + 1..].iter().cloned())
                    .collect();
                return Err(ctx.continue_as_new(rest));
            }
            exec(&ctx, std::slice::from_ref(op), &mut acc).await?;
        }
        Ok(acc)
    }
}

fn call(ctx: &WorkflowContext<Script>, name: u8, arg: u32) -> loom_core::ActivityCall<u64> {
    ctx.activity_by_name(
        format!("act{name}"),
        Payload::encode(&arg).expect("encode"),
        ActivityOptions::default(),
    )
}

fn exec<'a>(
    ctx: &'a WorkflowContext<Script>,
    ops: &'a [Op],
    acc: &'a mut u64,
) -> Pin<Box<dyn Future<Output = Result<(), WorkflowError>> + Send + 'a>> {
    Box::pin(async move {
        for op in ops {
            match op {
                Op::Activity { name, arg, handle } => match call(ctx, *name, *arg).await {
                    Ok(v) => *acc = acc.wrapping_add(v),
                    Err(e) if *handle => {
                        let cancelled = matches!(e, ActivityError::Cancelled { .. });
                        let undo: u64 = call(ctx, 99, *arg).await?;
                        *acc = acc.wrapping_add(1_000 + undo);
                        if cancelled {
                            return Err(WorkflowError::Cancelled);
                        }
                    }
                    Err(e) => return Err(e.into()),
                },
                Op::Parallel(calls) => {
                    let results = join_all(calls.iter().map(|(n, a)| call(ctx, *n, *a))).await;
                    for r in results {
                        *acc = acc.wrapping_add(r?);
                    }
                }
                Op::Race {
                    name,
                    arg,
                    timeout_ms,
                } => {
                    let timer = ctx.sleep(Duration::from_millis(u64::from(*timeout_ms)));
                    match select(call(ctx, *name, *arg), timer).await {
                        Either::Left((r, _)) => *acc = acc.wrapping_add(r? + 7),
                        Either::Right((r, _)) => {
                            r?;
                            *acc = acc.wrapping_add(3);
                        }
                    }
                }
                Op::Sleep(ms) => ctx.sleep(Duration::from_millis(u64::from(*ms))).await?,
                Op::Signal(n) => {
                    let v: u32 = ctx.wait_signal(format!("sig{n}")).await?;
                    *acc = acc.wrapping_add(u64::from(v));
                }
                Op::SignalTimeout(n, ms) => {
                    let got: Option<u32> = ctx
                        .wait_signal_timeout(
                            format!("sig{n}"),
                            Duration::from_millis(u64::from(*ms)),
                        )
                        .await?;
                    *acc = acc.wrapping_add(got.map_or(11, u64::from));
                }
                Op::State(k, v) => {
                    let value = u64::from(*v).wrapping_add(*acc);
                    ctx.update_state(|s| s.insert(format!("k{k}"), value))?;
                }
                Op::Tag(k, v) => {
                    let value =
                        i64::try_from(acc.wrapping_add(u64::from(*v)) % 1_000_000).unwrap_or(0);
                    ctx.set_tag(&format!("t{k}"), value)?;
                }
                Op::Step(n, body) => {
                    ctx.step(&format!("step{n}"), exec(ctx, body, acc)).await?;
                }
                Op::Now => *acc = acc.wrapping_add(ctx.now().as_millis().unsigned_abs() % 997),
                Op::Random => *acc = acc.wrapping_add(ctx.random_u64() % 1_009),
                Op::Log(n) => ctx.logger().info(format!("log {n} at {acc}")),
                Op::Child {
                    arg,
                    handle,
                    named,
                    retried,
                } => {
                    let mut call = ctx.child::<Leaf>(*arg);
                    if *named {
                        call = call.with_id(format!("kid-{arg}"));
                    }
                    if *retried {
                        call = call.with_retry(loom_core::RetryPolicy::default());
                    }
                    match call.await {
                        Ok(v) => *acc = acc.wrapping_add(v),
                        Err(ChildError::ParentCancelled { .. }) => {
                            return Err(WorkflowError::Cancelled);
                        }
                        Err(e) if *handle => {
                            let cancelled = matches!(e, ChildError::Cancelled { .. });
                            *acc = acc.wrapping_add(500 + u64::from(cancelled));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Op::Patched(n, body) => {
                    if ctx.patched(&format!("p{n}")) {
                        exec(ctx, body, acc).await?;
                    } else {
                        *acc = acc.wrapping_add(5);
                    }
                }
                Op::Add(n) => *acc = acc.wrapping_add(u64::from(*n)),
                Op::ContinueAsNew => {}
            }
        }
        Ok(())
    })
}

// ---- the simulated world ----

#[derive(Clone, Copy, Debug)]
enum Crashes {
    Never,
    Always,
    Mask(u64),
}

impl Crashes {
    fn before(self, task: usize) -> bool {
        match self {
            Crashes::Never => false,
            Crashes::Always => true,
            Crashes::Mask(m) => m >> (task % 64) & 1 == 1,
        }
    }
}

#[derive(Debug, PartialEq)]
struct Run {
    /// The first run's history.
    history: Vec<Event>,
    /// The histories of the runs that continued it, in order.
    later: Vec<Vec<Event>>,
    outcome: Option<Outcome>,
    state: Payload,
    logs: Vec<LogRecord>,
    tasks: usize,
}

struct World {
    rng: Pcg64Mcg,
    now: i64,
    /// (due, order, message)
    pending: Vec<(i64, u64, EventKind)>,
    order: u64,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut w = World {
            rng: Pcg64Mcg::seed_from_u64(seed),
            now: 1_000,
            pending: Vec::new(),
            order: 0,
        };
        // Signals sent at random times, some before the code waits, some never awaited.
        for name in 0..3u8 {
            for _ in 0..w.below(3) {
                let at = 1_000 + w.below(3_000) as i64;
                let payload = Payload::encode(&(w.below(50) as u32)).expect("encode");
                w.post(
                    at,
                    EventKind::SignalReceived {
                        name: format!("sig{name}"),
                        payload,
                    },
                );
            }
        }
        if w.below(6) == 0 {
            let at = 1_000 + w.below(4_000) as i64;
            w.post(at, EventKind::CancelRequested { reason: None });
        }
        w
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    fn post(&mut self, at: i64, kind: EventKind) {
        self.order += 1;
        self.pending.push((at, self.order, kind));
    }

    /// Reacts to new events: runs activities (with retries) and arms timers.
    fn observe(&mut self, events: &[Event]) {
        for e in events {
            match &e.kind {
                EventKind::ActivityScheduled { input, .. } => {
                    let id = loom_core::ActivityId(e.seq);
                    let arg: u32 = input.decode().expect("u32 input");
                    let mut at = self.now;
                    let failures = match self.below(8) {
                        0..=4 => 0,
                        5 => 1,
                        _ => 3,
                    };
                    let attempts = failures.min(2) + 1;
                    for attempt in 1..=attempts {
                        at += 5 + self.below(200) as i64;
                        let last = attempt == attempts;
                        let kind = if attempt <= failures {
                            let retry_at = (!last).then(|| Timestamp::from_millis(at + 50));
                            if self.below(4) == 0 {
                                EventKind::ActivityTimedOut {
                                    activity_id: id,
                                    attempt,
                                    retry_at,
                                }
                            } else {
                                EventKind::ActivityFailed {
                                    activity_id: id,
                                    attempt,
                                    failure: Failure::new("flaky", format!("attempt {attempt}")),
                                    retry_at,
                                }
                            }
                        } else {
                            EventKind::ActivityCompleted {
                                activity_id: id,
                                attempt,
                                result: Payload::encode(&(u64::from(arg) * 2 + 1)).expect("encode"),
                            }
                        };
                        self.post(at, kind.clone());
                        // At-least-once delivery: now and then a result arrives twice.
                        if last && self.below(10) == 0 {
                            self.post(at + 1, kind);
                        }
                    }
                }
                EventKind::TimerScheduled { fire_at, .. } => {
                    let kind = EventKind::TimerFired {
                        timer_id: loom_core::TimerId(e.seq),
                    };
                    self.post(fire_at.as_millis(), kind);
                }
                // The store deletes what a cancelled timer or activity would deliver, unless a
                // claim already holds it: then it is delivered and dropped by the machine.
                EventKind::TimerCancelled { timer_id } if self.below(2) == 0 => {
                    self.pending.retain(
                        |p| !matches!(&p.2, EventKind::TimerFired { timer_id: t } if t == timer_id),
                    );
                }
                EventKind::ActivityCancelled { activity_id } if self.below(2) == 0 => {
                    self.pending.retain(|p| match &p.2 {
                        EventKind::ActivityCompleted { activity_id: a, .. }
                        | EventKind::ActivityFailed { activity_id: a, .. }
                        | EventKind::ActivityTimedOut { activity_id: a, .. } => a != activity_id,
                        _ => true,
                    });
                }
                EventKind::ChildWorkflowScheduled { input, .. } => {
                    let child = ChildId(e.seq);
                    let arg: u32 = input.decode().expect("u32 input");
                    let at = self.now + 10 + self.below(500) as i64;
                    let kind = match self.below(10) {
                        0 => EventKind::ChildWorkflowFailed {
                            child,
                            failure: Failure::non_retryable("already_exists", "the id is taken"),
                        },
                        1 => EventKind::ChildWorkflowFailed {
                            child,
                            failure: Failure::new("boom", "the child failed"),
                        },
                        2 => EventKind::ChildWorkflowCancelled { child },
                        _ => EventKind::ChildWorkflowCompleted {
                            child,
                            output: Payload::encode(&(u64::from(arg) * 3)).expect("encode"),
                        },
                    };
                    self.post(at, kind.clone());
                    if self.below(10) == 0 {
                        self.post(at + 1, kind);
                    }
                }
                _ => {}
            }
        }
    }

    /// The run continued as new: what answered the ended run goes (the store deletes it);
    /// what came from outside stays, and the signals the run carried and the messages it left
    /// untouched are due at once, in order.
    fn switch(&mut self, carried: &[loom_core::CarriedSignal], left: Vec<EventKind>) {
        self.pending.retain(|p| p.2.carries_over());
        let first = self.now - 1;
        let carried = carried.iter().map(|s| EventKind::SignalReceived {
            name: s.name.clone(),
            payload: s.payload.clone(),
        });
        let front: Vec<EventKind> = carried
            .chain(left.into_iter().filter(EventKind::carries_over))
            .collect();
        for kind in front {
            self.post(first, kind);
        }
    }

    /// The next batch of due messages, advancing time if none is due. `None` when nothing
    /// will ever arrive.
    fn next_batch(&mut self) -> Option<Vec<EventKind>> {
        let earliest = self.pending.iter().map(|p| p.0).min()?;
        self.now = self.now.max(earliest);
        self.pending.sort_by_key(|p| (p.0, p.1));
        let due = self.pending.iter().take_while(|p| p.0 <= self.now).count();
        // Deliver a random prefix of what is due, so tasks see batches of every size.
        let take = 1 + self.below(due as u64) as usize;
        Some(self.pending.drain(..take).map(|p| p.2).collect())
    }
}

fn run(program: &[Op], seed: u64, crashes: Crashes) -> Run {
    let input = Payload::encode(program).expect("encode program");
    let mut history = vec![started_event("Script", 1, input)];
    let mut runs: Vec<Vec<Event>> = Vec::new();
    let mut world = World::new(seed);
    let mut machine: Option<WorkflowMachine> = None;
    let mut logs = Vec::new();
    let mut messages: Vec<EventKind> = Vec::new();
    let mut tasks = 0;
    let mut last = None;
    for task in 0..2_000 {
        if crashes.before(task) {
            machine = None;
        }
        let m = machine.get_or_insert_with(|| {
            WorkflowMachine::new(workflow_type::<Script>(), "wf".into(), history.clone())
                .expect("well-formed history")
        });
        let delivered = std::mem::take(&mut messages);
        let activation = Activation {
            now: Timestamp::from_millis(world.now),
            entropy: world.rng.next_u64(),
            messages: delivered.clone(),
        };
        let decision = m
            .activate(activation)
            .expect("the program replays deterministically");
        tasks += 1;
        world.observe(&decision.events);
        let left: Vec<EventKind> = decision
            .left_for_next_run
            .iter()
            .map(|i| delivered[*i].clone())
            .collect();
        history.extend(decision.events);
        logs.extend(decision.logs);
        last = Some((m.outcome(), m.progress().state));
        if let Some(next) = m.next_run() {
            let Some(EventKind::WorkflowContinuedAsNew { signals, .. }) =
                history.last().map(|e| &e.kind)
            else {
                panic!("a next run without WorkflowContinuedAsNew");
            };
            world.switch(signals, left);
            runs.push(std::mem::replace(&mut history, vec![next]));
            machine = None;
            continue;
        }
        if m.outcome().is_some() {
            break;
        }
        match world.next_batch() {
            Some(batch) => messages = batch,
            None => break,
        }
    }
    let (outcome, state) = last.expect("at least one task");
    runs.push(history);
    let history = runs.remove(0);
    Run {
        history,
        later: runs,
        outcome,
        state,
        logs,
        tasks,
    }
}

fn op(patches: bool) -> impl Strategy<Value = Op> {
    let leaf = prop_oneof![
        4 => (0..4u8, 0..100u32, any::<bool>()).prop_map(|(name, arg, handle)| Op::Activity { name, arg, handle }),
        2 => prop::collection::vec((0..4u8, 0..100u32), 1..5).prop_map(Op::Parallel),
        1 => (0..4u8, 0..100u32, 1..400u32).prop_map(|(name, arg, timeout_ms)| Op::Race { name, arg, timeout_ms }),
        2 => (1..500u32).prop_map(Op::Sleep),
        1 => (0..3u8).prop_map(Op::Signal),
        2 => (0..3u8, 1..2_000u32).prop_map(|(n, ms)| Op::SignalTimeout(n, ms)),
        2 => (0..4u8, 0..100u32).prop_map(|(k, v)| Op::State(k, v)),
        1 => (0..3u8, 0..100u32).prop_map(|(k, v)| Op::Tag(k, v)),
        1 => Just(Op::Now),
        1 => Just(Op::Random),
        1 => (0..9u8).prop_map(Op::Log),
        2 => (0..100u32, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(arg, handle, named, retried)| Op::Child { arg, handle, named, retried }),
    ];
    leaf.prop_recursive(2, 24, 4, move |inner| {
        let step = (0..3u8, prop::collection::vec(inner.clone(), 1..4))
            .prop_map(|(n, body)| Op::Step(n, body));
        let patched =
            (0..3u8, prop::collection::vec(inner, 1..4)).prop_map(|(n, body)| Op::Patched(n, body));
        if patches {
            prop_oneof![step, patched].boxed()
        } else {
            step.boxed()
        }
    })
}

/// A program; with `continues`, some of its top-level ops continue it as a new run.
fn program(patches: bool, continues: bool) -> impl Strategy<Value = Vec<Op>> {
    let top = if continues {
        prop_oneof![8 => op(patches), 1 => Just(Op::ContinueAsNew)].boxed()
    } else {
        op(patches).boxed()
    };
    prop::collection::vec(top, 1..10)
}

/// The program as it was before its versioned changes: each `Patched` is its old branch.
fn before_patches(program: &[Op]) -> Vec<Op> {
    program
        .iter()
        .map(|op| match op {
            Op::Patched(..) => Op::Add(5),
            Op::Step(n, body) => Op::Step(*n, before_patches(body)),
            other => other.clone(),
        })
        .collect()
}

#[derive(Clone, Debug)]
enum Mutation {
    /// Change the input of the nth activity-like op.
    Input(usize),
    /// Rename the nth activity-like op.
    Rename(usize),
    /// Remove the op at a position.
    Drop(usize),
    /// Swap two neighbouring ops.
    Swap(usize),
    /// Change a sleep's duration.
    Duration(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0..12usize).prop_map(Mutation::Input),
        (0..12usize).prop_map(Mutation::Rename),
        (0..12usize).prop_map(Mutation::Drop),
        (0..12usize).prop_map(Mutation::Swap),
        (0..12usize).prop_map(Mutation::Duration),
    ]
}

fn mutate(program: &[Op], m: &Mutation) -> Vec<Op> {
    let mut p = program.to_vec();
    let len = p.len();
    match *m {
        Mutation::Input(i) | Mutation::Rename(i) => {
            let rename = matches!(m, Mutation::Rename(_));
            let slot = i % len;
            match &mut p[slot] {
                Op::Activity { name, arg, .. } | Op::Race { name, arg, .. } => {
                    if rename {
                        *name = (*name + 1) % 4;
                    } else {
                        *arg += 1;
                    }
                }
                Op::Parallel(calls) => {
                    if rename {
                        calls[0].0 = (calls[0].0 + 1) % 4;
                    } else {
                        calls[0].1 += 1;
                    }
                }
                Op::Child { arg, named, .. } => {
                    if rename {
                        *named = !*named;
                    } else {
                        *arg += 1;
                    }
                }
                other => {
                    *other = Op::Activity {
                        name: 3,
                        arg: 7,
                        handle: false,
                    }
                }
            }
        }
        Mutation::Drop(i) => {
            p.remove(i % len);
        }
        Mutation::Swap(i) => {
            if len > 1 {
                let i = i % (len - 1);
                p.swap(i, i + 1);
            }
        }
        Mutation::Duration(i) => match &mut p[i % len] {
            Op::Sleep(ms) | Op::SignalTimeout(_, ms) => *ms += 1,
            other => *other = Op::Sleep(123),
        },
    }
    p
}

/// The first position at which two histories disagree: inputs must be equal, commands the
/// same command. `None` when they agree entirely.
fn divergence(a: &[Event], b: &[Event]) -> Option<Seq> {
    for (x, y) in a.iter().zip(b) {
        let same = match (x.kind.role(), y.kind.role()) {
            (Role::Input, Role::Input) => x.kind == y.kind,
            (Role::Command, Role::Command) => x.kind.same_command(&y.kind),
            _ => false,
        };
        if !same {
            return Some(x.seq);
        }
    }
    (a.len() != b.len()).then(|| Seq::new(a.len().min(b.len()) as u64 + 1))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn crashing_anywhere_changes_nothing(program in program(true, true), seed in any::<u64>(), mask in any::<u64>()) {
        let straight = run(&program, seed, Crashes::Never);
        let always = run(&program, seed, Crashes::Always);
        prop_assert_eq!(&straight, &always);
        let some = run(&program, seed, Crashes::Mask(mask));
        prop_assert_eq!(&straight, &some);
        // A fresh machine on the final history agrees and adds nothing.
        let last = straight.later.last().unwrap_or(&straight.history).clone();
        let mut fresh = WorkflowMachine::new(workflow_type::<Script>(), "wf".into(), last)
            .expect("well-formed");
        let d = fresh.activate(Activation::new(Timestamp::from_millis(999_999), 5)).expect("replays");
        prop_assert!(d.events.is_empty());
        prop_assert!(d.logs.is_empty());
        prop_assert_eq!(fresh.outcome(), straight.outcome);
        prop_assert_eq!(fresh.progress().state, straight.state);
    }

    #[test]
    fn a_changed_program_is_caught_at_the_first_divergence(program in program(false, true), seed in any::<u64>(), m in mutation()) {
        let original = run(&program, seed, Crashes::Never);
        let changed_program = mutate(&program, &m);
        let changed = run(&changed_program, seed, Crashes::Never);
        // Replay the original history on the changed code. The history's started event
        // carries the original program as input, so swap in the changed one: the code is
        // what changed, not the input.
        let mut history = original.history.clone();
        history[0] = started_event("Script", 1, Payload::encode(&changed_program).expect("encode"));
        let mut machine = WorkflowMachine::new(workflow_type::<Script>(), "wf".into(), history)
            .expect("well-formed");
        let result = machine.activate(Activation::new(Timestamp::from_millis(999_999), 5));
        let mut changed_history = changed.history.clone();
        changed_history[0] = original.history[0].clone();
        match divergence(&original.history, &changed_history) {
            None => {
                let d = result.expect("no divergence: replays cleanly");
                prop_assert!(d.events.is_empty());
            }
            Some(seq) => {
                let err = result.expect_err("a divergence must be caught");
                match err {
                    ReplayError::NonDeterminism(nd) => prop_assert_eq!(nd.seq, seq, "{}", nd),
                    other => prop_assert!(false, "expected non-determinism at {seq}, got {other}"),
                }
            }
        }
    }

    #[test]
    fn a_history_from_before_a_patch_replays_on_the_patched_code(program in program(true, false), seed in any::<u64>()) {
        let old_program = before_patches(&program);
        let old = run(&old_program, seed, Crashes::Never);
        let mut history = old.history.clone();
        history[0] = started_event("Script", 1, Payload::encode(&program).expect("encode"));
        let mut machine = WorkflowMachine::new(workflow_type::<Script>(), "wf".into(), history)
            .expect("well-formed");
        let d = machine
            .activate(Activation::new(Timestamp::from_millis(999_999), 5))
            .expect("the old history replays on the patched code");
        prop_assert!(d.events.is_empty(), "{:?}", d.events);
        prop_assert_eq!(machine.outcome(), old.outcome);
        prop_assert_eq!(machine.progress().state, old.state);
    }
}
