//! Deterministic simulation of the whole system: real workers against one store.
//!
//! Several [`Worker`]s (their claim loops, chains of eager steps, lease renewals, retries and
//! backoff: the production code) run against one in-memory store on a current-thread tokio
//! runtime whose time is paused and virtual. Every choice is drawn from one seed: the
//! workload, the workers' settings and randomness (`WorkerConfig::random_seed`), each store
//! call's fate, when a signal or a cancel arrives, when the clock jumps and when a worker
//! crashes. The runtime's scheduling follows from those (one thread; the workers' `select!`s
//! are biased), so a seed replays the same run exactly, which the test checks by running
//! seeds twice and comparing the trace of every store call.
//!
//! Faults, through [`Faulty`]: a store call that fails before it is applied, a write applied
//! whose answer is lost, slow calls (up to longer than a lease), a worker crash (its tasks
//! dropped at once, its in-memory state lost, a new worker started in its place), a worker
//! shut down and restarted, clock jumps, activity attempts that fail and are retried, and
//! activities that run longer than a lease.
//!
//! Invariants: during the run, no task is handed out while another lease on it is live and no
//! commit is accepted under a lapsed or superseded lease; after the faults stop and the
//! workflows drain, everything [`check_store`] checks. A failing seed is printed;
//! `LOOM_SIM_SEED=N` runs that seed alone, `LOOM_SIM_SYSTEM_SEEDS=N` runs N seeds.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loom_core::{Registry, Timestamp, WorkflowId};
use loom_sim::check::{Counts, all_ended, check_store};
use loom_sim::faulty::{Faulty, World};
use loom_sim::workload::{
    Ledger, Program, Work, lock, program_input, random_program, signals_wanted,
};
use loom_sim::{Rng, SimClock};
use loom_storage::{MemoryStorage, StorageError};
use loom_worker::{Client, StartOptions, Worker, WorkerConfig};
use tokio::task::JoinHandle;

const WORKERS: usize = 3;
const WORKFLOWS: usize = 6;
const STEPS: usize = 120;
const LEASE: Duration = Duration::from_secs(4);

/// One run of the simulation.
struct Sim {
    seed: u64,
    rng: Arc<Mutex<Rng>>,
    store: Arc<MemoryStorage>,
    world: Arc<World>,
    client: Client,
    workers: Vec<(Arc<Faulty>, JoinHandle<()>)>,
    /// Workers started so far, for their names.
    started: usize,
    programs: Vec<(WorkflowId, u64)>,
    signals_sent: Vec<u64>,
}

impl Sim {
    fn below(&self, n: u64) -> u64 {
        lock(&self.rng).below(n)
    }

    /// Starts worker `w` in slot `w` on a fresh store view, with settings drawn from the seed.
    fn spawn_worker(&mut self, w: usize) -> (Arc<Faulty>, JoinHandle<()>) {
        let store = Arc::new(Faulty::new(self.store.clone(), self.world.clone(), w));
        let mut registry = Registry::new();
        registry
            .add_workflow::<Program>()
            .expect("workflow")
            .add_activity(Work {
                ledger: self.world.ledger.clone(),
                rng: self.rng.clone(),
                faults: self.world.faults.clone(),
                longest: LEASE * 2,
            })
            .expect("activity");
        self.started += 1;
        let config = WorkerConfig {
            id: format!("w{w}-{}", self.started),
            workflow_concurrency: 1 + self.below(3) as usize,
            activity_concurrency: 1 + self.below(4) as usize,
            poll_interval: Duration::from_millis(100 + self.below(400)),
            lease: LEASE,
            shutdown_grace: Duration::from_millis(self.below(2_000)),
            cache_capacity: if self.below(4) == 0 { 0 } else { 100 },
            pause_retry: Duration::from_secs(1),
            max_deliveries: 1_000,
            clock: self.world.clock.clone(),
            random_seed: Some(lock(&self.rng).next_u64()),
            ..WorkerConfig::default()
        };
        let worker = Worker::with_config(store.clone(), registry, config);
        let handle = tokio::spawn(async move {
            let _ = worker.run(std::future::pending()).await;
        });
        (store, handle)
    }

    /// Worker `w` crashes: its tasks are dropped where they stand, a new one takes its slot.
    fn crash(&mut self, w: usize) {
        let (store, handle) = &self.workers[w];
        store.kill();
        handle.abort();
        self.world.crashed(w);
        self.world.count("worker crashes");
        self.world.note(format!("w{w} crashes"));
        self.workers[w] = self.spawn_worker(w);
    }

    async fn signal(&mut self, i: usize) {
        let (id, wanted) = self.programs[i].clone();
        let sent = self.signals_sent[i];
        if sent >= wanted {
            return;
        }
        match self
            .client
            .signal(
                &id,
                "go",
                loom_core::Payload::encode(&sent).expect("encode"),
            )
            .await
        {
            Ok(()) => {
                self.signals_sent[i] += 1;
                self.world.note(format!("signal {id} {sent}"));
            }
            Err(loom_worker::ClientError::Storage(StorageError::Closed { .. })) => {}
            Err(e) => panic!("seed {}: signal {id}: {e}", self.seed),
        }
    }

    /// One step of the faulty phase, after a random while.
    async fn step(&mut self) {
        tokio::time::sleep(Duration::from_millis(self.below(400))).await;
        let w = self.below(WORKERS as u64) as usize;
        match self.below(100) {
            0..=49 => {
                let i = self.below(self.programs.len() as u64) as usize;
                self.signal(i).await;
            }
            50..=51 => {
                let i = self.below(self.programs.len() as u64) as usize;
                let id = self.programs[i].0.clone();
                if self.client.cancel(&id, Some("sim".into())).await.is_ok() {
                    lock(&self.world.ledger).cancelled.insert(id.clone());
                    self.world.note(format!("cancel {id}"));
                }
            }
            52..=57 => {
                let by = Duration::from_millis(self.below(LEASE.as_millis() as u64 * 2));
                self.world.jump(by);
            }
            58..=61 => self.crash(w),
            _ => {}
        }
    }

    /// Without faults: every workflow gets its signals and runs to its end, within a virtual
    /// hour.
    async fn drain(&mut self) -> Result<(), String> {
        self.world.faults.store(false, Ordering::SeqCst);
        self.world.note("faults stop".into());
        for _ in 0..3_600 {
            for i in 0..self.programs.len() {
                while self.signals_sent[i] < self.programs[i].1 {
                    let before = self.signals_sent[i];
                    self.signal(i).await;
                    if self.signals_sent[i] == before {
                        break;
                    }
                }
            }
            if all_ended(self.store.as_ref()).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err("the workflows did not all end within an hour of virtual time without faults".into())
    }
}

/// Runs one seed; answers its trace and counts, or the broken invariant and the trace.
fn run_seed(seed: u64) -> Result<(Vec<String>, Counts), (String, Vec<String>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let rng = Arc::new(Mutex::new(Rng::new(seed)));
        let clock = Arc::new(SimClock::new(Timestamp::from_millis(1_800_000_000_000)));
        let store = Arc::new(MemoryStorage::with_clock(clock.clone()));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let world = Arc::new(World::new(
            rng.clone(),
            ledger.clone(),
            clock.clone(),
            LEASE * 2,
        ));
        let client = Client::new(store.clone()).with_clock(clock.clone());
        let mut sim = Sim {
            seed,
            rng,
            store,
            world,
            client,
            workers: Vec::new(),
            started: 0,
            programs: Vec::new(),
            signals_sent: Vec::new(),
        };
        for n in 0..WORKFLOWS {
            let program = random_program(&mut lock(&sim.rng));
            let id = WorkflowId::new(format!("wf-{n}"));
            let options = StartOptions {
                id: Some(id.clone()),
                ..StartOptions::default()
            };
            sim.client
                .start::<Program>(&program_input(&program), options)
                .await
                .map_err(|e| (format!("start: {e}"), Vec::new()))?;
            sim.programs.push((id, signals_wanted(&program)));
            sim.signals_sent.push(0);
        }
        for w in 0..WORKERS {
            let worker = sim.spawn_worker(w);
            sim.workers.push(worker);
        }
        for _ in 0..STEPS {
            sim.step().await;
        }
        let drained = sim.drain().await;
        for (_, handle) in &sim.workers {
            handle.abort();
        }
        let trace = lock(&sim.world.trace).clone();
        let violations = lock(&sim.world.violations).clone();
        if let Some(v) = violations.first() {
            return Err((v.clone(), trace));
        }
        if let Err(e) = drained {
            return Err((e, trace));
        }
        let mut counts = lock(&sim.world.counts).clone();
        let ledger = std::mem::take(&mut *lock(&sim.world.ledger));
        let checked = check_store(sim.store.as_ref(), &ledger, &mut counts).await;
        match checked {
            Ok(()) => Ok((trace, counts)),
            Err(e) => Err((e, trace)),
        }
    })
}

/// Runs `seed`, panicking with how to reproduce it if it breaks an invariant.
fn run_or_fail(seed: u64) -> (Vec<String>, Counts) {
    match run_seed(seed) {
        Ok(run) => run,
        Err((what, trace)) => {
            // The whole trace when one seed was asked for, its end otherwise.
            let shown = if std::env::var_os("LOOM_SIM_SEED").is_some() {
                trace.len()
            } else {
                40
            };
            let tail = &trace[trace.len().saturating_sub(shown)..];
            panic!(
                "seed {seed}: {what}\nreproduce with LOOM_SIM_SEED={seed}\nthe trace's end:\n{}",
                tail.join("\n")
            )
        }
    }
}

#[test]
fn real_workers_under_seeded_faults_keep_every_invariant() {
    if let Some(seed) = std::env::var("LOOM_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        let (trace, counts) = run_or_fail(seed);
        eprintln!("{}", trace.join("\n"));
        eprintln!("seed {seed}: {counts:#?}");
        return;
    }
    let seeds: u64 = std::env::var("LOOM_SIM_SYSTEM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let started = std::time::Instant::now();
    let mut totals = Counts::new();
    for seed in 0..seeds {
        let (_, counts) = run_or_fail(seed);
        for (k, v) in counts {
            *totals.entry(k).or_default() += v;
        }
    }
    eprintln!("{seeds} seeds in {:?}: {totals:#?}", started.elapsed());
    // The faults must have happened for the run to mean anything.
    for what in [
        "calls failed before the store",
        "answers lost after the store applied",
        "slow calls",
        "worker crashes",
        "clock jumps",
        "activity attempts failed by design",
        "runs continued as new",
        "child workflows",
    ] {
        assert!(
            totals.get(what).copied().unwrap_or(0) > 0,
            "no {what} in {seeds} seeds: {totals:?}"
        );
    }
}

#[test]
fn a_seed_replays_the_same_run_exactly() {
    for seed in [3, 17] {
        let (first, _) = run_or_fail(seed);
        let (second, _) = run_or_fail(seed);
        assert!(first.len() > 100, "seed {seed}: only {} calls", first.len());
        if let Some(i) = (0..first.len().min(second.len())).find(|&i| first[i] != second[i]) {
            panic!(
                "seed {seed} diverged at call {i}:\n  {}\n  {}",
                first[i], second[i]
            );
        }
        assert_eq!(
            first.len(),
            second.len(),
            "seed {seed}: the runs differ in length"
        );
    }
}
