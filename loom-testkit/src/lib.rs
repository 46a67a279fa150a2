//! # loom-testkit: unit tests for Loom workflows, in milliseconds
//!
//! This crate is the **room of users' tests**: a [`TestEnv`] runs workflows on an in-memory
//! store and a virtual clock, with a real [`Worker`] in the test's process. Whenever every
//! workflow is blocked (on a timer, a retry's backoff, a signal), the clock jumps to the next
//! thing due, so a workflow that sleeps thirty days and waits for two signals finishes at
//! once. Activities run for real or are mocked by type ([`TestEnv::mock`]); signals are sent
//! now or at a virtual time ([`TestEnv::signal_at`]); the history, state and result are there
//! to assert on. [`replay_exported`] replays histories exported with `loom inspect ID --events
//! --json` against the current code, so a project can keep golden histories of its own
//! workflows and check them in CI.
//!
//! What it must not touch: a database or the wall clock. It drives the same `Worker`,
//! `Client` and store engine as production; only the store (memory) and the clock (virtual)
//! are the test's.
//!
//! ```no_run
//! # use loom_core::{Workflow, WorkflowContext, WorkflowError};
//! # use std::time::Duration;
//! # struct Trial;
//! # impl Workflow for Trial {
//! #     const NAME: &'static str = "Trial";
//! #     type Input = (); type State = (); type Output = String;
//! #     async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
//! #         ctx.sleep(Duration::from_secs(30 * 86_400)).await?;
//! #         Ok("ended".into())
//! #     }
//! # }
//! # async fn test() {
//! let mut env = loom_testkit::TestEnv::new();
//! env.workflow::<Trial>();
//! let trial = env.start::<Trial>("trial-1", &()).await.unwrap();
//! assert_eq!(env.result(&trial).await.unwrap(), "ended"); // thirty virtual days, at once
//! # }
//! ```

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use loom_core::{
    Activity, ActivityContext, Event, EventKind, Failure, Outcome, Payload, Registry, ReplayError,
    Seq, Timestamp, Workflow, WorkflowId, WorkflowMachine,
};
use loom_storage::{Clock, ManualClock, MemoryStorage, Storage, WorkflowStatus, WorkflowSummary};
use loom_worker::{Client, ClientError, StartOptions, Worker, WorkerConfig};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

/// Where the virtual clock starts: 2026-01-01T00:00:00Z.
pub const START: Timestamp = Timestamp::from_millis(1_767_225_600_000);

/// How long the environment waits, in real time, for the worker to settle before it looks
/// again; and the most real time one [`TestEnv::result`] may take.
const SETTLE: Duration = Duration::from_millis(2);
const REAL_TIME_LIMIT: Duration = Duration::from_secs(30);

/// What went wrong in a test environment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestError {
    /// The client or the store refused.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The workflow can never go on: nothing is due and no signal is scheduled.
    #[error("workflow {id} is blocked for ever at {at}: {waits}")]
    Blocked {
        /// The workflow.
        id: WorkflowId,
        /// The virtual time.
        at: Timestamp,
        /// What it waits for.
        waits: String,
    },
    /// The workflow was paused: its code did not replay, panicked, or its type is missing.
    #[error("workflow {id} was paused: {reason}")]
    Paused {
        /// The workflow.
        id: WorkflowId,
        /// Why.
        reason: String,
    },
    /// The workflow did not end within the real-time limit (its activities take real time).
    #[error("workflow {0} did not end within {REAL_TIME_LIMIT:?} of real time")]
    TooSlow(WorkflowId),
    /// A file of an exported history could not be read.
    #[error("{0}")]
    Export(String),
}

/// A started workflow of type `W`, for [`TestEnv::result`] and the assertions.
#[derive(Clone, Debug)]
pub struct TestRun<W> {
    id: WorkflowId,
    _type: PhantomData<fn() -> W>,
}

impl<W> TestRun<W> {
    /// The workflow's id.
    pub fn id(&self) -> &WorkflowId {
        &self.id
    }
}

/// A signal to send when the virtual clock reaches its time.
struct Scheduled {
    at: Timestamp,
    workflow: WorkflowId,
    name: String,
    payload: Payload,
}

/// Runs workflows on an in-memory store and a virtual clock that skips ahead whenever every
/// workflow is blocked. Register types with [`workflow`](Self::workflow),
/// [`activity`](Self::activity) and [`mock`](Self::mock) before the first
/// [`start`](Self::start); the worker starts then.
pub struct TestEnv {
    clock: Arc<ManualClock>,
    store: Arc<MemoryStorage>,
    registry: Registry,
    running: Option<(Client, oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    scheduled: Vec<Scheduled>,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    /// An empty environment whose clock reads [`START`].
    pub fn new() -> Self {
        let clock = Arc::new(ManualClock::new(START));
        let store = Arc::new(MemoryStorage::with_clock(clock.clone()));
        TestEnv {
            clock,
            store,
            registry: Registry::new(),
            running: None,
            scheduled: Vec::new(),
        }
    }

    /// Registers workflow type `W` (several versions of one type may be registered).
    ///
    /// # Panics
    /// If `W`'s name and version are registered already, or the worker has started.
    pub fn workflow<W: Workflow>(&mut self) -> &mut Self {
        self.not_started();
        self.registry
            .add_workflow::<W>()
            .unwrap_or_else(|e| panic!("{e}"));
        self
    }

    /// Registers an activity implementation, run for real.
    ///
    /// # Panics
    /// If an activity of its name is registered already, or the worker has started.
    pub fn activity<A: Activity>(&mut self, activity: A) -> &mut Self {
        self.not_started();
        self.registry
            .add_activity(activity)
            .unwrap_or_else(|e| panic!("{e}"));
        self
    }

    /// Registers `answer` in place of activity type `A`: each attempt calls it with the input
    /// and its attempt number, and its result is the attempt's (an `Err` is retried under
    /// `A`'s policy like a real failure).
    ///
    /// # Panics
    /// If an activity of `A`'s name is registered already, or the worker has started.
    pub fn mock<A>(
        &mut self,
        answer: impl Fn(A::Input, u32) -> Result<A::Output, Failure> + Send + Sync + 'static,
    ) -> &mut Self
    where
        A: Activity,
    {
        self.not_started();
        self.registry
            .add_activity(Mock::<A, _> {
                answer,
                _type: PhantomData,
            })
            .unwrap_or_else(|e| panic!("{e}"));
        self
    }

    fn not_started(&self) {
        assert!(
            self.running.is_none(),
            "register every type before the first start: the worker has started"
        );
    }

    /// The virtual time now.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The store, for reads the environment does not wrap.
    pub fn storage(&self) -> Arc<dyn Storage> {
        self.store.clone()
    }

    /// The client of the environment's worker (started if it was not).
    pub fn client(&mut self) -> Client {
        self.ensure_running().clone()
    }

    fn ensure_running(&mut self) -> &Client {
        if self.running.is_none() {
            let config = WorkerConfig {
                id: "loom-testkit".into(),
                poll_interval: Duration::from_millis(1),
                clock: self.clock.clone(),
                pause_retry: Duration::from_secs(3_600 * 24 * 365 * 100),
                ..WorkerConfig::default()
            };
            let worker = Worker::with_config(self.store.clone(), self.registry.clone(), config);
            let client = worker.client();
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                let _ = worker
                    .run(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
            self.running = Some((client, stop, task));
        }
        &self.running.as_ref().expect("running").0
    }

    /// Starts workflow `W` with id `id` at the virtual now.
    pub async fn start<W: Workflow>(
        &mut self,
        id: &str,
        input: &W::Input,
    ) -> Result<TestRun<W>, TestError> {
        self.start_with::<W>(input, StartOptions::id(id)).await
    }

    /// Starts workflow `W` with options (tags, timeouts).
    pub async fn start_with<W: Workflow>(
        &mut self,
        input: &W::Input,
        options: StartOptions,
    ) -> Result<TestRun<W>, TestError> {
        let handle = self.ensure_running().start::<W>(input, options).await?;
        Ok(TestRun {
            id: handle.id().clone(),
            _type: PhantomData,
        })
    }

    /// Sends a signal now.
    pub async fn signal(
        &mut self,
        id: &WorkflowId,
        name: &str,
        payload: impl serde::Serialize,
    ) -> Result<(), TestError> {
        let payload = Payload::encode(&payload).map_err(|e| ClientError::Payload(e.to_string()))?;
        self.ensure_running().signal(id, name, payload).await?;
        Ok(())
    }

    /// Sends a signal when the virtual clock has moved `after` past now: the environment
    /// stops the clock there, delivers it, and goes on.
    pub fn signal_at(
        &mut self,
        after: Duration,
        id: &WorkflowId,
        name: &str,
        payload: impl serde::Serialize,
    ) -> Result<(), TestError> {
        let payload = Payload::encode(&payload).map_err(|e| ClientError::Payload(e.to_string()))?;
        self.scheduled.push(Scheduled {
            at: self.now().saturating_add(after),
            workflow: id.clone(),
            name: name.to_owned(),
            payload,
        });
        self.scheduled.sort_by_key(|s| s.at);
        Ok(())
    }

    /// Creates a schedule of the registered types (see
    /// [`Client::create_schedule`](loom_worker::Client::create_schedule)); the worker fires it
    /// as [`advance`](Self::advance) moves the clock past its fire times.
    pub async fn schedule(
        &mut self,
        id: &str,
        def: loom_worker::ScheduleDefinition,
    ) -> Result<loom_storage::Schedule, TestError> {
        let client = self.ensure_running().clone();
        Ok(client
            .create_schedule(&self.registry, id, def, false)
            .await?)
    }

    /// Moves the virtual clock `by` forward, running everything that becomes due on the way
    /// (timers, retries, scheduled signals, schedules' fires), in time order.
    pub async fn advance(&mut self, by: Duration) -> Result<(), TestError> {
        let until = self.now().saturating_add(by);
        loop {
            self.settle().await;
            self.send_due().await?;
            let next = self.next_due().await?;
            match next {
                Some(at) if at <= until => self.clock.set(at.max(self.now())),
                _ => {
                    self.clock.set(until.max(self.now()));
                    self.send_due().await?;
                    self.settle().await;
                    return Ok(());
                }
            }
        }
    }

    /// Runs the workflow to its end, skipping the virtual clock to whatever is due next each
    /// time every workflow is blocked, and answers its output. A workflow that fails or is
    /// cancelled answers its error; one that can never go on (nothing due, no signal
    /// scheduled) answers [`TestError::Blocked`], saying what it waits for.
    pub async fn result<W: Workflow>(&mut self, run: &TestRun<W>) -> Result<W::Output, TestError> {
        let deadline = tokio::time::Instant::now() + REAL_TIME_LIMIT;
        loop {
            self.settle().await;
            let summary = self.describe(&run.id).await?;
            if summary.status.is_terminal() {
                let client = self.ensure_running().clone();
                return Ok(client.handle::<W>(run.id.clone()).result().await?);
            }
            if summary.status == WorkflowStatus::Paused {
                return Err(TestError::Paused {
                    id: run.id.clone(),
                    reason: summary.pause_reason.unwrap_or_default(),
                });
            }
            if tokio::time::Instant::now() > deadline {
                return Err(TestError::TooSlow(run.id.clone()));
            }
            if self.send_due().await? {
                continue;
            }
            match self.next_due().await? {
                Some(at) => self.clock.set(at.max(self.now())),
                None => {
                    let waits = summary
                        .progress
                        .map(|p| {
                            if p.awaiting_signals.is_empty() {
                                "nothing it can be given".to_owned()
                            } else {
                                format!("signal(s) {}", p.awaiting_signals.join(", "))
                            }
                        })
                        .unwrap_or_else(|| "its first task".to_owned());
                    return Err(TestError::Blocked {
                        id: run.id.clone(),
                        at: self.now(),
                        waits,
                    });
                }
            }
        }
    }

    /// The workflow's summary (status, output, failure, tags, progress).
    pub async fn describe(&mut self, id: &WorkflowId) -> Result<WorkflowSummary, TestError> {
        Ok(self.ensure_running().describe(id).await?)
    }

    /// The workflow's current run's history.
    pub async fn history(&mut self, id: &WorkflowId) -> Result<Vec<Event>, TestError> {
        Ok(self.ensure_running().history(id).await?)
    }

    /// The kinds of the history's events, by name (`"ActivityScheduled"`, ...), in order: a
    /// short form to assert on.
    pub async fn event_names(&mut self, id: &WorkflowId) -> Result<Vec<&'static str>, TestError> {
        Ok(self
            .history(id)
            .await?
            .iter()
            .map(|e| e.kind.type_name())
            .collect())
    }

    /// The workflow's state as its last task left it.
    pub async fn state<W: Workflow>(&mut self, run: &TestRun<W>) -> Result<W::State, TestError>
    where
        W::State: DeserializeOwned,
    {
        let summary = self.describe(&run.id).await?;
        let state = summary.progress.map(|p| p.state).unwrap_or_default();
        state
            .decode()
            .map_err(|e| TestError::Client(ClientError::Payload(e.to_string())))
    }

    /// Stops the worker (also done when the environment is dropped).
    pub async fn shutdown(&mut self) {
        if let Some((_, stop, task)) = self.running.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// Waits until the worker has nothing it can run now: no task ready or running.
    async fn settle(&mut self) {
        self.ensure_running();
        let mut quiet = 0;
        while quiet < 2 {
            tokio::time::sleep(SETTLE).await;
            let idle = self.store.stats().await.is_ok_and(|s| {
                s.workflow_tasks_ready == 0
                    && s.workflow_tasks_running == 0
                    && s.activity_tasks_ready == 0
                    && s.activity_tasks_running == 0
            }) && self
                .store
                .due_schedules(1)
                .await
                .is_ok_and(|d| d.due.is_empty());
            quiet = if idle { quiet + 1 } else { 0 };
        }
    }

    /// The next time something is due: a task or message of the store, a schedule's fire,
    /// or a scheduled signal.
    async fn next_due(&mut self) -> Result<Option<Timestamp>, TestError> {
        let stats = self.store.stats().await.map_err(ClientError::from)?;
        let schedule = self
            .store
            .due_schedules(1)
            .await
            .map_err(ClientError::from)?
            .next;
        let signal = self.scheduled.first().map(|s| s.at);
        Ok([stats.next_due_at, schedule, signal]
            .into_iter()
            .flatten()
            .min())
    }

    /// Sends the scheduled signals whose time has come (one for a workflow that has ended is
    /// dropped); whether it sent any.
    async fn send_due(&mut self) -> Result<bool, TestError> {
        let now = self.now();
        let due: Vec<Scheduled> = {
            let split = self.scheduled.partition_point(|s| s.at <= now);
            self.scheduled.drain(..split).collect()
        };
        let sent = !due.is_empty();
        let client = self.ensure_running().clone();
        for s in due {
            match client.signal(&s.workflow, &s.name, s.payload).await {
                // It ended before its time came: as in production, the signal finds nobody.
                Err(ClientError::Storage(loom_storage::StorageError::Closed { .. })) => {}
                other => other?,
            }
        }
        Ok(sent)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some((_, stop, task)) = self.running.take() {
            let _ = stop.send(());
            task.abort();
        }
    }
}

/// An activity type answered by a closure ([`TestEnv::mock`]).
struct Mock<A, F> {
    answer: F,
    _type: PhantomData<fn() -> A>,
}

impl<A, F> Activity for Mock<A, F>
where
    A: Activity,
    F: Fn(A::Input, u32) -> Result<A::Output, Failure> + Send + Sync + 'static,
{
    const NAME: &'static str = A::NAME;
    type Input = A::Input;
    type Output = A::Output;

    fn options() -> loom_core::ActivityOptions {
        A::options()
    }

    async fn run(&self, ctx: ActivityContext, input: A::Input) -> Result<A::Output, Failure> {
        (self.answer)(input, ctx.info().attempt)
    }
}

/// A history as `loom inspect ID --events --json` prints it (or as a golden file keeps it):
/// the workflow's id and its events.
#[derive(serde::Deserialize)]
struct Exported {
    #[serde(alias = "workflow_id")]
    id: String,
    events: Vec<Event>,
}

/// Replays a history exported with `loom inspect ID --events --json` against the code in
/// `registry` (the version its run started with), as a workflow task after a crash would, and
/// answers how it ended (`None` for a run still going). A mismatch with the code is the
/// replay's error: run it in CI over a directory of histories to catch a change that would
/// strand running workflows.
pub fn replay_exported(registry: &Registry, path: &Path) -> Result<Option<Outcome>, TestError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TestError::Export(format!("cannot read {}: {e}", path.display())))?;
    let exported: Exported = serde_json::from_str(&text).map_err(|e| {
        TestError::Export(format!(
            "{} is not a history exported by `loom inspect ID --events --json`: {e}",
            path.display()
        ))
    })?;
    replay(registry, &WorkflowId::new(exported.id), exported.events)
        .map_err(|e| TestError::Export(format!("{}: {e}", path.display())))
}

/// Replays `history` against the code in `registry` and answers how it ended (`None` for a
/// run still going); see [`replay_exported`].
pub fn replay(
    registry: &Registry,
    id: &WorkflowId,
    history: Vec<Event>,
) -> Result<Option<Outcome>, ReplayError> {
    let Some(EventKind::WorkflowStarted { name, .. }) = history.first().map(|e| &e.kind) else {
        return Err(ReplayError::Corrupt {
            seq: Some(Seq::FIRST),
            reason: "the first event is not WorkflowStarted".into(),
        });
    };
    let def = registry
        .workflow_for(&history)
        .or_else(|| registry.workflow(name))
        .cloned()
        .ok_or_else(|| ReplayError::WrongWorkflow {
            recorded: name.clone(),
            code: registry.workflow_names().collect::<Vec<_>>().join(", "),
        })?;
    WorkflowMachine::replay_only(def, id.clone(), history, Timestamp::EPOCH, 0)
}

/// The outcomes of a directory of exported histories (`*.json`), by file name: every one must
/// replay. A convenience for a project's golden-history test.
pub fn replay_dir(
    registry: &Registry,
    dir: &Path,
) -> Result<BTreeMap<String, Option<Outcome>>, TestError> {
    let mut out = BTreeMap::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| TestError::Export(format!("cannot read {}: {e}", dir.display())))?;
    for entry in entries {
        let path = entry
            .map_err(|e| TestError::Export(format!("cannot read {}: {e}", dir.display())))?
            .path();
        if path.extension().is_some_and(|x| x == "json") {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.insert(name, replay_exported(registry, &path)?);
        }
    }
    Ok(out)
}
