//! Deterministic simulation of the store protocol: several simulated workers, the real replay
//! machine and the real store engine (`MemoryStorage`) on one virtual clock, every choice
//! (which worker acts, what it does, which store call fails and how, when the clock jumps,
//! when a worker crashes) drawn from one seeded generator, in one thread. A failing seed is
//! printed and reproduces the same run exactly (`LOOM_SIM_SEED=N`); `LOOM_SIM_SEEDS=N` runs N
//! seeds (a bounded number by default).
//!
//! The simulated workers follow the worker's protocol (claim, replay or reuse a cached
//! machine, decide, commit; claim an activity, run it, report), not its tokio code: this
//! explores the store's rules and the machine under faults, not the worker's scheduling.
//!
//! Faults: a store call that fails before it is applied, one applied whose answer is lost,
//! a worker crash (its cache and held tasks dropped), leases lapsing (the clock jumps past
//! them while tasks are held), clock jumps, activity attempts that fail and are retried.
//! The workload: programs of activities, sleeps, signal waits, child workflows and
//! continue-as-new, some of them asked to cancel.
//!
//! Invariants, checked during the run and after a fault-free drain: no task is handed to a
//! second claimer while another's lease on it is live; no commit succeeds under a lapsed
//! lease; every workflow ends exactly once, with the output its program and signals imply
//! (or cancelled, only if a cancel was asked); every earlier run ended by continuing as new,
//! once; histories are numbered without gaps; the
//! summary agrees with the history; every activity result came from an execution, and
//! executions beyond the results are explained by failed attempts and failed commits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use loom_core::{
    Activation, Event, EventKind, Failure, Payload, Registry, Seq, Timestamp, Workflow,
    WorkflowContext, WorkflowError, WorkflowId, WorkflowMachine,
};
use loom_storage::{
    ActivityTask, ActivityTaskCompletion, AfterActivity, ClaimRequest, Clock, ManualClock,
    MemoryStorage, Storage, StorageError, WorkflowStatus, WorkflowTask, WorkflowTaskCompletion,
};
use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

const LEASE: Duration = Duration::from_secs(5);
const WORKERS: usize = 3;
const WORKFLOWS: usize = 6;
const STEPS: usize = 200;

/// One step of a generated program.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Op {
    /// Run activity `work` on this argument.
    Act(u32),
    /// Sleep this many milliseconds.
    Sleep(u32),
    /// Wait for the next `go` signal and add its payload.
    Wait,
    /// Start a child `Program` on [`child_program`] of this argument and add its output.
    Child(u32),
    /// Continue as new with the rest of the program and the sum so far.
    Continue,
}

/// The program a child started by `Op::Child(arg)` runs: activities and a sleep, no signals.
fn child_program(arg: u32) -> Vec<Op> {
    vec![Op::Act(arg), Op::Sleep(arg * 10), Op::Act(arg + 1)]
}

/// Runs its program: the output folds the activities' results and the signals' payloads.
struct Program;
impl Workflow for Program {
    const NAME: &'static str = "Program";
    /// The sum so far (carried from run to run) and the program.
    type Input = (u64, Vec<Op>);
    type State = ();
    type Output = u64;
    async fn run(ctx: WorkflowContext<Self>) -> Result<u64, WorkflowError> {
        let (mut acc, program) = ctx.input().clone();
        for (i, op) in program.iter().enumerate() {
            match op {
                Op::Act(arg) => {
                    let out = ctx.activity::<Work>(*arg).await?;
                    acc = (acc * 31 + out) % 1_000_003;
                }
                Op::Sleep(ms) => ctx.sleep(Duration::from_millis(u64::from(*ms))).await?,
                Op::Wait => {
                    let n: u64 = ctx.wait_signal("go").await?;
                    acc = (acc * 17 + n) % 1_000_003;
                }
                Op::Child(arg) => {
                    let out = ctx.child::<Program>((1, child_program(*arg))).await?;
                    acc = (acc * 13 + out) % 1_000_003;
                }
                Op::Continue => {
                    return Err(ctx.continue_as_new((acc, program[i + 1..].to_vec())));
                }
            }
        }
        Ok(acc)
    }
}

/// Activity `work`: the simulation runs it itself (see [`work`]), counting executions.
struct Work;
impl loom_core::Activity for Work {
    const NAME: &'static str = "work";
    type Input = u32;
    type Output = u64;
    async fn run(&self, _: loom_core::ActivityContext, arg: u32) -> Result<u64, Failure> {
        Ok(work(arg))
    }
}

/// What activity `work` answers for `arg`.
fn work(arg: u32) -> u64 {
    u64::from(arg) * 7 + 3
}

/// The output of `program` started with `acc`, its signals' payloads being 0, 1, 2... in
/// order (across its runs).
fn expected(acc: u64, program: &[Op]) -> u64 {
    let mut acc = acc;
    let mut signal = 0u64;
    for op in program {
        match op {
            Op::Act(arg) => acc = (acc * 31 + work(*arg)) % 1_000_003,
            Op::Sleep(_) | Op::Continue => {}
            Op::Wait => {
                acc = (acc * 17 + signal) % 1_000_003;
                signal += 1;
            }
            Op::Child(arg) => acc = (acc * 13 + expected(1, &child_program(*arg))) % 1_000_003,
        }
    }
    acc
}

struct Rng(Pcg64Mcg);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A simulated worker: its cache of machines and the tasks it holds.
#[derive(Default)]
struct SimWorker {
    cache: BTreeMap<WorkflowId, WorkflowMachine>,
    workflows: Vec<WorkflowTask>,
    activities: Vec<ActivityTask>,
}

/// One run of the simulation.
struct Sim {
    seed: u64,
    rng: Rng,
    clock: Arc<ManualClock>,
    store: Arc<MemoryStorage>,
    registry: Registry,
    workers: Vec<SimWorker>,
    programs: BTreeMap<WorkflowId, Vec<Op>>,
    signals_sent: BTreeMap<WorkflowId, u64>,
    cancelled: BTreeMap<WorkflowId, bool>,
    /// Executions of each activity, by workflow and activity.
    executions: BTreeMap<(WorkflowId, u32, u64), u64>,
    /// Executions of each activity that explain another: a failure by design, or a report
    /// that failed or was fenced.
    explained: BTreeMap<(WorkflowId, u32, u64), u64>,
    /// Attempts that failed by design, and commits that failed (before or after applying).
    failed_attempts: u64,
    failed_commits: u64,
    faults: bool,
    trace: Vec<String>,
    /// What happened, for the summary: commits, refused or failed commits, crashes, lapses.
    counts: BTreeMap<&'static str, u64>,
}

/// The error a store call gets when the simulation makes it fail.
fn injected() -> StorageError {
    StorageError::Unavailable {
        message: "injected by the simulation".into(),
        source: None,
    }
}

impl Sim {
    fn new(seed: u64) -> Self {
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_800_000_000_000)));
        let store = Arc::new(MemoryStorage::with_clock(clock.clone()));
        let mut registry = Registry::new();
        registry.add_workflow::<Program>().expect("registry");
        Sim {
            seed,
            rng: Rng(Pcg64Mcg::seed_from_u64(seed)),
            clock,
            store,
            registry,
            workers: (0..WORKERS).map(|_| SimWorker::default()).collect(),
            programs: BTreeMap::new(),
            signals_sent: BTreeMap::new(),
            cancelled: BTreeMap::new(),
            executions: BTreeMap::new(),
            explained: BTreeMap::new(),
            failed_attempts: 0,
            failed_commits: 0,
            faults: true,
            trace: Vec::new(),
            counts: BTreeMap::new(),
        }
    }

    fn fail(&self, what: String) -> ! {
        let tail: Vec<&String> = self.trace.iter().rev().take(30).rev().collect();
        panic!(
            "seed {}: {what}\nreproduce with LOOM_SIM_SEED={}\nlast steps:\n{}",
            self.seed,
            self.seed,
            tail.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// Whether the next write fails, and how: `Some(false)` before it is applied,
    /// `Some(true)` after (the answer is lost).
    fn fault(&mut self) -> Option<bool> {
        (self.faults && self.rng.chance(8)).then(|| self.rng.chance(50))
    }

    fn program(&mut self) -> Vec<Op> {
        let len = 2 + self.rng.below(6);
        (0..len)
            .map(|_| match self.rng.below(8) {
                0..=2 => Op::Act(self.rng.below(50) as u32),
                3 => Op::Sleep(self.rng.below(2_000) as u32),
                4 | 5 => Op::Wait,
                6 => Op::Child(self.rng.below(20) as u32),
                _ => Op::Continue,
            })
            .collect()
    }

    async fn start(&mut self, n: usize) {
        let id = WorkflowId::new(format!("wf-{n}"));
        let program = self.program();
        let started = Event {
            seq: Seq::FIRST,
            at: self.clock.now(),
            kind: EventKind::workflow_started(
                Program::NAME,
                1,
                Payload::encode(&(1u64, &program)).expect("encode"),
            ),
        };
        self.store
            .create_workflow(&id, started)
            .await
            .expect("create");
        self.programs.insert(id, program);
    }

    /// Claims one workflow task for worker `w`, checking that no live lease of another
    /// worker holds it.
    async fn claim_workflow(&mut self, w: usize) {
        let req = ClaimRequest::new(format!("sim-{w}"), 1, LEASE);
        let fault = self.fault();
        if fault == Some(false) {
            return;
        }
        let Ok(mut tasks) = self.store.claim_workflow_tasks(&req).await else {
            return;
        };
        if fault == Some(true) {
            return; // the claim happened; its answer is lost, the lease lapses
        }
        let now = self.clock.now();
        for t in &tasks {
            for (other, worker) in self.workers.iter().enumerate() {
                if let Some(held) = worker
                    .workflows
                    .iter()
                    .find(|h| h.lease.task == t.lease.task && h.lease.expires_at > now)
                {
                    self.fail(format!(
                        "worker {w} was handed {} while worker {other} held it until {}",
                        t.lease.task, held.lease.expires_at
                    ));
                }
            }
        }
        self.trace.push(format!(
            "w{w} claims {:?}",
            tasks
                .iter()
                .map(|t| t.workflow_id.as_str())
                .collect::<Vec<_>>()
        ));
        self.workers[w].workflows.append(&mut tasks);
    }

    async fn claim_activity(&mut self, w: usize) {
        let req = ClaimRequest::new(format!("sim-{w}"), 1, LEASE);
        let fault = self.fault();
        if fault == Some(false) {
            return;
        }
        let Ok(mut tasks) = self.store.claim_activity_tasks(&req).await else {
            return;
        };
        if fault == Some(true) {
            return;
        }
        let now = self.clock.now();
        for t in &tasks {
            for (other, worker) in self.workers.iter().enumerate() {
                if worker
                    .activities
                    .iter()
                    .any(|h| h.lease.task == t.lease.task && h.lease.expires_at > now)
                {
                    self.fail(format!(
                        "worker {w} was handed activity {} while worker {other} held it",
                        t.lease.task
                    ));
                }
            }
        }
        self.workers[w].activities.append(&mut tasks);
    }

    /// Runs one held workflow task of worker `w`: replays or reuses its machine, decides,
    /// commits.
    async fn run_workflow(&mut self, w: usize) {
        if self.workers[w].workflows.is_empty() {
            return;
        }
        let i = self.rng.below(self.workers[w].workflows.len() as u64) as usize;
        let task = self.workers[w].workflows.remove(i);
        let id = task.workflow_id.clone();
        let cached = self.workers[w]
            .cache
            .remove(&id)
            .filter(|m| m.last_seq() == task.last_seq && m.run() == task.run);
        let mut machine = match cached {
            Some(m) => m,
            None => {
                let history = self
                    .store
                    .load_history(&id, Seq::ZERO)
                    .await
                    .expect("history");
                if history.last().map(|e| e.seq) != Some(task.last_seq) {
                    // As the worker does: a history that moved on since the claim (another
                    // worker committed after this lease lapsed) is not decided on.
                    *self.counts.entry("stale claims given up").or_default() += 1;
                    return;
                }
                let def = self.registry.workflow(Program::NAME).expect("def").clone();
                match WorkflowMachine::new(def, id.clone(), history) {
                    Ok(m) => m,
                    Err(e) => self.fail(format!("{id} does not replay: {e}")),
                }
            }
        };
        let activation = Activation {
            now: task.claimed_at,
            entropy: self.rng.0.next_u64(),
            messages: task.messages.iter().map(|m| m.kind.clone()).collect(),
        };
        let decision = match machine.activate(activation) {
            Ok(d) => d,
            Err(e) => self.fail(format!("{id} cannot decide: {e}")),
        };
        let completion = WorkflowTaskCompletion {
            lease: task.lease,
            workflow_id: id.clone(),
            expected_last_seq: task.last_seq,
            events: decision.events,
            consumed: task
                .messages
                .iter()
                .enumerate()
                .filter(|(i, _)| !decision.left_for_next_run.contains(i))
                .map(|(_, m)| m.id)
                .collect(),
            progress: Some(machine.progress()),
            logs: Vec::new(),
            next_run: machine.next_run(),
            eager: None,
        };
        let lapsed = self.clock.now() >= task.lease.expires_at;
        let fault = self.fault();
        let result = if fault == Some(false) {
            Err(injected())
        } else {
            let r = self.store.complete_workflow_task(completion).await;
            if fault == Some(true) && r.is_ok() {
                Err(injected())
            } else {
                r.map(drop)
            }
        };
        match result {
            Ok(()) => {
                if lapsed {
                    self.fail(format!(
                        "worker {w} committed {id} under a lease that lapsed at {}",
                        task.lease.expires_at
                    ));
                }
                *self.counts.entry("workflow commits").or_default() += 1;
                self.trace
                    .push(format!("w{w} commits {id} at {}", machine.last_seq()));
                self.workers[w].cache.insert(id, machine);
            }
            Err(e) => {
                // The machine applied what was not committed: it must not be reused.
                let kind = match e {
                    StorageError::LeaseLost(_) => "workflow commits fenced (lease lost)",
                    StorageError::Conflict { .. } => "workflow commits refused (history moved)",
                    StorageError::Unavailable { .. } => "workflow commits failed (injected)",
                    ref other => self.fail(format!("{id}: a commit refused: {other}")),
                };
                *self.counts.entry(kind).or_default() += 1;
                self.trace.push(format!("w{w} commit of {id} failed: {e}"));
            }
        }
    }

    /// Runs one held activity attempt of worker `w` and reports it.
    async fn run_activity(&mut self, w: usize) {
        if self.workers[w].activities.is_empty() {
            return;
        }
        let i = self.rng.below(self.workers[w].activities.len() as u64) as usize;
        let task = self.workers[w].activities.remove(i);
        let arg: u32 = task.input.decode().expect("an argument");
        // Activity ids start again in each run: the key names the run the workflow is on (a
        // task of a run that has just ended is fenced, and explained, when it reports).
        let run = self
            .store
            .describe(&task.workflow_id)
            .await
            .map_or(0, |s| s.run);
        let key = (task.workflow_id.clone(), run, task.activity_id.0.get());
        *self.executions.entry(key.clone()).or_default() += 1;
        let fails = self.faults && task.attempt < 3 && self.rng.chance(20);
        let (result, retry_after) = if fails {
            self.failed_attempts += 1;
            *self.explained.entry(key.clone()).or_default() += 1;
            (
                EventKind::ActivityFailed {
                    activity_id: task.activity_id,
                    attempt: task.attempt,
                    failure: Failure::new("flaky", "a simulated failure"),
                    retry_at: None,
                },
                Some(Duration::from_millis(self.rng.below(1_000))),
            )
        } else {
            (
                EventKind::ActivityCompleted {
                    activity_id: task.activity_id,
                    attempt: task.attempt,
                    result: Payload::encode(&work(arg)).expect("encode"),
                },
                None,
            )
        };
        let completion = ActivityTaskCompletion {
            lease: task.lease,
            workflow_id: task.workflow_id.clone(),
            result,
            retry_after,
            then: AfterActivity::Nothing,
        };
        let lapsed = self.clock.now() >= task.lease.expires_at;
        let fault = self.fault();
        let result = if fault == Some(false) {
            Err(injected())
        } else {
            let r = self.store.complete_activity_task(completion).await;
            if fault == Some(true) && r.is_ok() {
                Err(injected())
            } else {
                r.map(drop)
            }
        };
        match result {
            Ok(()) if lapsed => self.fail(format!(
                "worker {w} reported {} of {} under a lapsed lease",
                task.activity_id, task.workflow_id
            )),
            Ok(()) => *self.counts.entry("activity reports").or_default() += 1,
            Err(e) => {
                self.failed_commits += 1;
                if !fails {
                    *self.explained.entry(key).or_default() += 1;
                }
                let kind = match e {
                    StorageError::LeaseLost(_) => "activity reports fenced (lease lost)",
                    _ => "activity reports failed (injected or refused)",
                };
                *self.counts.entry(kind).or_default() += 1;
            }
        }
    }

    async fn signal(&mut self) {
        let ids: Vec<WorkflowId> = self.programs.keys().cloned().collect();
        let id = ids[self.rng.below(ids.len() as u64) as usize].clone();
        let wanted = self.programs[&id]
            .iter()
            .filter(|op| matches!(op, Op::Wait))
            .count() as u64;
        let sent = self.signals_sent.get(&id).copied().unwrap_or(0);
        if sent >= wanted {
            return;
        }
        let fault = self.fault();
        if fault == Some(false) {
            return;
        }
        match self
            .store
            .signal(&id, "go", Payload::encode(&sent).expect("encode"))
            .await
        {
            Ok(()) => {
                self.signals_sent.insert(id, sent + 1);
            }
            Err(StorageError::Closed { .. }) => {}
            Err(e) => self.fail(format!("signal: {e}")),
        }
    }

    async fn cancel(&mut self) {
        let ids: Vec<WorkflowId> = self.programs.keys().cloned().collect();
        let id = ids[self.rng.below(ids.len() as u64) as usize].clone();
        if self
            .store
            .request_cancel(&id, Some("sim".into()))
            .await
            .is_ok()
        {
            self.cancelled.insert(id, true);
        }
    }

    /// One step of the faulty phase.
    async fn step(&mut self) {
        let w = self.rng.below(WORKERS as u64) as usize;
        match self.rng.below(100) {
            0..=19 => self.claim_workflow(w).await,
            20..=39 => self.run_workflow(w).await,
            40..=54 => self.claim_activity(w).await,
            55..=69 => self.run_activity(w).await,
            70..=77 => self.signal().await,
            78 => self.cancel().await,
            79..=90 => {
                let ms = self.rng.below(700);
                self.clock.advance(Duration::from_millis(ms));
            }
            91..=94 => {
                *self.counts.entry("worker crashes").or_default() += 1;
                self.trace.push(format!("w{w} crashes"));
                self.workers[w] = SimWorker::default();
            }
            _ => {
                // Leases lapse while tasks are held.
                *self.counts.entry("leases lapsed").or_default() += 1;
                self.trace.push("leases lapse".into());
                self.clock.advance(LEASE + Duration::from_millis(1));
            }
        }
    }

    /// Without faults: every workflow gets its signals and runs to its end.
    async fn drain(&mut self) {
        self.faults = false;
        self.workers = (0..WORKERS).map(|_| SimWorker::default()).collect();
        for _ in 0..5_000 {
            let ids: Vec<WorkflowId> = self.programs.keys().cloned().collect();
            for id in &ids {
                while self.signals_sent.get(id).copied().unwrap_or(0)
                    < self.programs[id]
                        .iter()
                        .filter(|op| matches!(op, Op::Wait))
                        .count() as u64
                {
                    let sent = self.signals_sent.get(id).copied().unwrap_or(0);
                    match self
                        .store
                        .signal(id, "go", Payload::encode(&sent).expect("encode"))
                        .await
                    {
                        Ok(()) => {
                            self.signals_sent.insert(id.clone(), sent + 1);
                        }
                        Err(_) => break,
                    }
                }
            }
            let all = loom_storage::ListQuery {
                limit: 10_000,
                ..loom_storage::ListQuery::default()
            };
            let open = self
                .store
                .list(&all)
                .await
                .expect("list")
                .items
                .iter()
                .filter(|w| !w.status.is_terminal())
                .count();
            if open == 0 {
                return;
            }
            self.claim_workflow(0).await;
            while !self.workers[0].workflows.is_empty() {
                self.run_workflow(0).await;
            }
            self.claim_activity(0).await;
            while !self.workers[0].activities.is_empty() {
                self.run_activity(0).await;
            }
            let stats = self.store.stats().await.expect("stats");
            if stats.workflow_tasks_ready == 0 && stats.activity_tasks_ready == 0 {
                match stats.next_due_at {
                    Some(t) => self.clock.set(t.max(self.clock.now())),
                    None => self.clock.advance(LEASE + Duration::from_millis(1)),
                }
            }
        }
        self.fail("the drain did not finish every workflow".into());
    }

    async fn check(&mut self) {
        let mut results = 0u64;
        let all = loom_storage::ListQuery {
            limit: 10_000,
            ..loom_storage::ListQuery::default()
        };
        let summaries = self.store.list(&all).await.expect("list").items;
        *self.counts.entry("child workflows").or_default() +=
            summaries.iter().filter(|s| s.parent.is_some()).count() as u64;
        for summary in summaries {
            let id = summary.id.clone();
            // The whole program, from the first run's input, and each earlier run's history.
            let runs = self.store.runs(&id).await.expect("runs");
            let first = match runs.first() {
                Some(r) => self.store.load_run(&id, r.run).await.expect("run"),
                None => self
                    .store
                    .load_history(&id, Seq::ZERO)
                    .await
                    .expect("history"),
            };
            let Some(EventKind::WorkflowStarted { input, .. }) = first.first().map(|e| &e.kind)
            else {
                self.fail(format!("{id}: no WorkflowStarted"));
            };
            let (acc, program): (u64, Vec<Op>) = input.decode().expect("a program");
            let mut run_histories: Vec<(u32, Vec<Event>)> = Vec::new();
            for r in &runs {
                let earlier = self.store.load_run(&id, r.run).await.expect("run");
                let continued = earlier
                    .iter()
                    .filter(|e| matches!(e.kind, EventKind::WorkflowContinuedAsNew { .. }))
                    .count();
                let last_continues = earlier
                    .last()
                    .is_some_and(|e| matches!(e.kind, EventKind::WorkflowContinuedAsNew { .. }));
                if continued != 1 || !last_continues {
                    self.fail(format!(
                        "{id}: run {} did not end by continuing as new once",
                        r.run
                    ));
                }
                *self.counts.entry("runs continued as new").or_default() += 1;
                run_histories.push((r.run, earlier));
            }
            let history = self
                .store
                .load_history(&id, Seq::ZERO)
                .await
                .expect("history");
            for (i, e) in history.iter().enumerate() {
                if e.seq != Seq::new(i as u64 + 1) {
                    self.fail(format!("{id}: event {i} is numbered {}", e.seq));
                }
            }
            if summary.last_seq != history.last().map_or(Seq::ZERO, |e| e.seq) {
                self.fail(format!(
                    "{id}: the summary's last event is not the history's"
                ));
            }
            let ends = history.iter().filter(|e| e.kind.is_terminal()).count();
            if ends != 1 || !history.last().is_some_and(|e| e.kind.is_terminal()) {
                self.fail(format!("{id}: {ends} endings"));
            }
            // A child's parent may be cancelled: the child is then asked to cancel too, and a
            // parent whose child was cancelled fails with it.
            let cancel_asked = self.cancelled.contains_key(&id)
                || summary
                    .parent
                    .as_ref()
                    .is_some_and(|p| self.cancelled.contains_key(p));
            match summary.status {
                WorkflowStatus::Completed => {
                    let out: u64 = summary
                        .output
                        .clone()
                        .expect("output")
                        .decode()
                        .expect("u64");
                    if out != expected(acc, &program) {
                        self.fail(format!(
                            "{id}: output {out}, the program implies {}",
                            expected(acc, &program)
                        ));
                    }
                }
                WorkflowStatus::Cancelled | WorkflowStatus::Failed if cancel_asked => {}
                other => self.fail(format!("{id} ended {other}: {:?}", summary.failure)),
            }
            run_histories.push((summary.run, history));
            for (run, events) in run_histories {
                for e in &events {
                    if let EventKind::ActivityCompleted { activity_id, .. } = &e.kind {
                        results += 1;
                        let ran = self
                            .executions
                            .get(&(id.clone(), run, activity_id.0.get()))
                            .copied()
                            .unwrap_or(0);
                        if ran == 0 {
                            self.fail(format!(
                                "{id}: run {run}'s {activity_id} has a result but never ran"
                            ));
                        }
                    }
                }
            }
        }
        // An activity ran more than once only when a fault explains it: a failure by design,
        // or a report that failed or was fenced.
        for (key, ran) in self.executions.clone() {
            let explained = self.explained.get(&key).copied().unwrap_or(0);
            if ran > 1 + explained {
                self.fail(format!(
                    "{} run {} activity #{} ran {ran} times; only {explained} failed attempts or reports explain re-running it",
                    key.0, key.1, key.2
                ));
            }
        }
        *self.counts.entry("activity results").or_default() += results;
    }
}

async fn run_seed(seed: u64, totals: &mut BTreeMap<&'static str, u64>) {
    let mut sim = Sim::new(seed);
    for n in 0..WORKFLOWS {
        sim.start(n).await;
    }
    for _ in 0..STEPS {
        sim.step().await;
    }
    sim.drain().await;
    sim.check().await;
    for (k, v) in &sim.counts {
        *totals.entry(k).or_default() += v;
    }
    *totals.entry("activity executions").or_default() += sim.executions.values().sum::<u64>();
    *totals
        .entry("activity attempts failed by design")
        .or_default() += sim.failed_attempts;
    *totals.entry("workflows").or_default() += sim.programs.len() as u64;
    *totals.entry("cancel requests").or_default() += sim.cancelled.len() as u64;
}

#[tokio::test(flavor = "current_thread")]
async fn seeded_runs_with_faults_keep_every_invariant() {
    let mut totals = BTreeMap::new();
    if let Some(seed) = std::env::var("LOOM_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run_seed(seed, &mut totals).await;
        eprintln!("seed {seed}: {totals:?}");
        return;
    }
    let seeds: u64 = std::env::var("LOOM_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let started = std::time::Instant::now();
    for seed in 0..seeds {
        run_seed(seed, &mut totals).await;
    }
    eprintln!("{seeds} seeds in {:?}: {totals:#?}", started.elapsed());
    // The faults must have happened for the run to mean anything.
    for what in [
        "workflow commits",
        "workflow commits fenced (lease lost)",
        "workflow commits failed (injected)",
        "activity reports fenced (lease lost)",
        "worker crashes",
        "leases lapsed",
    ] {
        assert!(
            totals.get(what).copied().unwrap_or(0) > 0,
            "no {what} in {seeds} seeds: {totals:?}"
        );
    }
}
