//! Deterministic simulation of the store protocol: several simulated workers, the real replay
//! machine and the real store engine (`MemoryStorage`) on one virtual clock, every choice
//! (which worker acts, what it does, which store call fails and how, when the clock jumps,
//! when a worker crashes) drawn from one seeded generator, in one thread. A failing seed is
//! printed and reproduces the same run exactly (`LOOM_SIM_SEED=N`); `LOOM_SIM_SEEDS=N` runs N
//! seeds (a bounded number by default).
//!
//! `tests/system.rs` runs the real workers the same way; this one reaches corners of the
//! store's rules that the workers' timing rarely hits.
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
    Activation, Event, EventKind, Failure, Payload, Registry, Seq, Timestamp, Workflow, WorkflowId,
    WorkflowMachine,
};
use loom_sim::Rng;
use loom_sim::check::{Counts, check_store};
use loom_sim::workload::{
    Ledger, Op, Program, program_input, random_program, signals_wanted, work,
};
use loom_storage::{
    ActivityTask, ActivityTaskCompletion, Affinity, AfterActivity, ClaimRequest, Clock,
    ManualClock, MemoryStorage, Storage, StorageError, WorkflowTask, WorkflowTaskCompletion,
};

const LEASE: Duration = Duration::from_secs(5);
/// The window of the affinities the simulated workers ask for.
const AFFINITY: Duration = Duration::from_secs(2);
const WORKERS: usize = 3;
const WORKFLOWS: usize = 6;
const STEPS: usize = 200;

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
    /// Executions, what explains re-running them, and cancel requests.
    ledger: Ledger,
    faults: bool,
    trace: Vec<String>,
    /// What happened, for the summary: commits, refused or failed commits, crashes, lapses.
    counts: Counts,
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
            rng: Rng::new(seed),
            clock,
            store,
            registry,
            workers: (0..WORKERS).map(|_| SimWorker::default()).collect(),
            programs: BTreeMap::new(),
            signals_sent: BTreeMap::new(),
            ledger: Ledger::default(),
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

    async fn start(&mut self, n: usize) {
        let id = WorkflowId::new(format!("wf-{n}"));
        let program = random_program(&mut self.rng);
        let started = Event {
            seq: Seq::FIRST,
            at: self.clock.now(),
            kind: EventKind::workflow_started(
                Program::NAME,
                1,
                Payload::encode(&program_input(&program)).expect("encode"),
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
            entropy: self.rng.next_u64(),
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
            // Half the commits ask for the workflow's next task first.
            affinity: self
                .rng
                .chance(50)
                .then(|| Affinity::new(format!("sim-{w}"), AFFINITY)),
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
        let (arg, generation): (u32, u32) = task.input.decode().expect("an argument");
        let key = (
            task.workflow_id.clone(),
            generation,
            task.activity_id.0.get(),
        );
        *self.ledger.executions.entry(key.clone()).or_default() += 1;
        let fails = self.faults && task.attempt < 3 && self.rng.chance(20);
        let (result, retry_after) = if fails {
            self.ledger.failed_attempts += 1;
            self.ledger.explain(key.clone());
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
                if !fails {
                    self.ledger.explain(key);
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
        let wanted = signals_wanted(&self.programs[&id]);
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
            self.ledger.cancelled.insert(id);
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
                // Half the time a graceful stop: the worker gives up its affinities first.
                if self.rng.chance(50) {
                    *self.counts.entry("worker stops").or_default() += 1;
                    self.trace.push(format!("w{w} stops"));
                    let r = self.store.forget_affinity(&format!("sim-{w}")).await;
                    if let Err(e) = r {
                        self.fail(format!("forgetting w{w}'s affinities failed: {e}"));
                    }
                } else {
                    *self.counts.entry("worker crashes").or_default() += 1;
                    self.trace.push(format!("w{w} crashes"));
                }
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
                    < signals_wanted(&self.programs[id])
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
            } else if stats.workflow_tasks_ready > 0 {
                // Ready tasks the drain's worker may not claim yet prefer another worker:
                // their affinity lapses with time.
                self.clock.advance(AFFINITY);
            }
        }
        self.fail("the drain did not finish every workflow".into());
    }

    async fn check(&mut self) {
        if let Err(what) = check_store(self.store.as_ref(), &self.ledger, &mut self.counts).await {
            self.fail(what);
        }
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
