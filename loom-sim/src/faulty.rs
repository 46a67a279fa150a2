//! A store that injects faults at every call of one simulated worker, and watches the leases
//! the real store hands out.
//!
//! Each [`Faulty`] wraps the one shared store for one worker. Under [`World::faults`], a call
//! may fail before it reaches the store, be slow (a random while of virtual time before or
//! after it), or, for a write, be applied with its answer lost. A crashed worker's store
//! answers nothing ever again. The wrapper sees each answer before the worker does, so it
//! keeps the truth about leases whatever the worker is told: it flags a task handed out while
//! another lease on it is live, and a commit accepted under a lapsed or superseded lease.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use loom_core::{Event, LogRecord, Payload, Seq, Timestamp, WorkflowId};
use loom_storage::{
    ActivityCommitted, ActivityTask, ActivityTaskCompletion, ClaimRequest, Clock, Lease, ListQuery,
    MemoryStorage, Page, Pending, Purge, Release, Reset, Result, RunSummary, Stats, Storage,
    StorageError, TaskId, Termination, WorkflowSummary, WorkflowTask, WorkflowTaskCompletion,
};

use crate::check::Counts;
use crate::workload::{ActivityKey, SharedLedger, lock};
use crate::{Rng, SimClock};

/// A lease the store handed out and has not seen end.
#[derive(Clone, Debug)]
struct Held {
    worker: usize,
    lease: Lease,
}

/// What every simulated worker's store shares: the generator, the fault switch, the ledger,
/// the clock, and the leases as the store handed them out.
pub struct World {
    /// The simulation's generator.
    pub rng: Arc<Mutex<Rng>>,
    /// Whether faults are injected now.
    pub faults: Arc<AtomicBool>,
    /// Activity executions and what explains running one again.
    pub ledger: SharedLedger,
    /// The store's clock.
    pub clock: Arc<SimClock>,
    /// The longest a slow call waits.
    pub slowest: Duration,
    /// What happened, by name.
    pub counts: Mutex<Counts>,
    /// Broken invariants seen during the run.
    pub violations: Mutex<Vec<String>>,
    /// Every store call and its outcome, in order: two runs of one seed must agree on it.
    pub trace: Mutex<Vec<String>>,
    leases: Mutex<BTreeMap<TaskId, Held>>,
    /// The activity of every activity task ever handed out.
    activities: Mutex<BTreeMap<TaskId, ActivityKey>>,
    /// Activity attempts handed to a worker and not yet reported or released by it (worker,
    /// task, token), each with whether a fault hit its worker (or the clock jumped) since: only
    /// that lets its lease lapse while the worker lives.
    in_flight: Mutex<BTreeMap<(usize, TaskId, u64), bool>>,
}

impl World {
    /// A world with faults on.
    pub fn new(
        rng: Arc<Mutex<Rng>>,
        ledger: SharedLedger,
        clock: Arc<SimClock>,
        slowest: Duration,
    ) -> Self {
        World {
            rng,
            faults: Arc::new(AtomicBool::new(true)),
            ledger,
            clock,
            slowest,
            counts: Mutex::new(Counts::new()),
            violations: Mutex::new(Vec::new()),
            trace: Mutex::new(Vec::new()),
            leases: Mutex::new(BTreeMap::new()),
            activities: Mutex::new(BTreeMap::new()),
            in_flight: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts one `what`.
    pub fn count(&self, what: &'static str) {
        *lock(&self.counts).entry(what).or_default() += 1;
    }

    /// Records a line of the trace, stamped with the store's clock.
    pub fn note(&self, line: String) {
        let now = self.clock.now().as_millis();
        lock(&self.trace).push(format!("{now} {line}"));
    }

    fn violation(&self, what: String) {
        self.note(format!("VIOLATION {what}"));
        lock(&self.violations).push(what);
    }

    /// Worker `w` crashed: every activity attempt it held may run again.
    pub fn crashed(&self, w: usize) {
        let held: Vec<(usize, TaskId, u64)> = lock(&self.in_flight)
            .keys()
            .filter(|(worker, _, _)| *worker == w)
            .copied()
            .collect();
        for (worker, task, token) in held {
            self.settled(worker, task, token);
            self.explain(task);
        }
    }

    /// Worker `w` is done with the attempt under `task` and `token`, one way or another.
    fn settled(&self, w: usize, task: TaskId, token: u64) {
        lock(&self.in_flight).remove(&(w, task, token));
    }

    /// A fault hit worker `w`: the leases of its attempts in flight may lapse.
    fn disturb(&self, w: usize) {
        for (key, disturbed) in lock(&self.in_flight).iter_mut() {
            if key.0 == w {
                *disturbed = true;
            }
        }
    }

    /// Moves the store's clock ahead at once: every lease held may lapse.
    pub fn jump(&self, by: Duration) {
        self.clock.jump(by);
        for disturbed in lock(&self.in_flight).values_mut() {
            *disturbed = true;
        }
        self.count("clock jumps");
        self.note(format!("clock jumps {by:?}"));
    }

    /// Counts a fault that explains running the activity of `task` again.
    fn explain(&self, task: TaskId) {
        let key = lock(&self.activities).get(&task).cloned();
        if let Some(key) = key {
            lock(&self.ledger).explain(key);
        }
    }

    /// The store handed `lease` to worker `w`: no other lease on the task may be live.
    fn handed(&self, w: usize, lease: Lease, activity: Option<ActivityKey>) {
        if let Some(key) = &activity {
            lock(&self.activities).insert(lease.task, key.clone());
            // An attempt of this task still in flight elsewhere lost its lease: the activity
            // runs again, which only a fault that hit that attempt's worker explains.
            let earlier: Vec<((usize, TaskId, u64), bool)> = lock(&self.in_flight)
                .iter()
                .filter(|(k, _)| k.1 == lease.task)
                .map(|(k, d)| (*k, *d))
                .collect();
            for ((worker, task, token), disturbed) in earlier {
                if !disturbed {
                    self.violation(format!(
                        "{task} handed to worker {w} while worker {worker}'s attempt under token {token} runs, and no fault let its lease lapse"
                    ));
                }
                self.settled(worker, task, token);
                self.explain(task);
            }
            lock(&self.in_flight).insert((w, lease.task, lease.token), false);
        }
        let now = self.clock.now();
        let mut leases = lock(&self.leases);
        if let Some(prev) = leases.get(&lease.task)
            && prev.lease.expires_at > now
        {
            let what = format!(
                "{} handed to worker {w} while worker {}'s lease on it is live until {}",
                lease.task, prev.worker, prev.lease.expires_at
            );
            drop(leases);
            self.violation(what);
            leases = lock(&self.leases);
        }
        drop(leases);
        self.note(format!(
            "w{w} holds {} (token {}, until {}){}",
            lease.task,
            lease.token,
            lease.expires_at.as_millis(),
            activity
                .as_ref()
                .map(|k| format!(" activity {} gen {} #{}", k.0, k.1, k.2))
                .unwrap_or_default()
        ));
        let mut leases = lock(&self.leases);
        leases.insert(lease.task, Held { worker: w, lease });
    }

    fn renewed(&self, lease: Lease) {
        if let Some(h) = lock(&self.leases).get_mut(&lease.task)
            && h.lease.token == lease.token
        {
            h.lease = lease;
        }
    }

    /// The store accepted a commit under `lease`, asked for at `asked` by the store's clock.
    fn committed(&self, lease: &Lease, asked: Timestamp) {
        let held = lock(&self.leases).remove(&lease.task);
        match held {
            Some(h) if h.lease.token != lease.token => self.violation(format!(
                "a commit of {} accepted under token {} while token {} is current",
                lease.task, lease.token, h.lease.token
            )),
            Some(h) if h.lease.expires_at <= asked => self.violation(format!(
                "a commit of {} accepted under a lease that lapsed at {}",
                lease.task, h.lease.expires_at
            )),
            Some(_) => {}
            None => self.violation(format!(
                "a commit of {} accepted under a lease the store never handed out",
                lease.task
            )),
        }
    }

    /// Worker `w` released `lease`: a released activity runs again.
    fn released(&self, w: usize, lease: &Lease) {
        let mut leases = lock(&self.leases);
        if leases
            .get(&lease.task)
            .is_some_and(|h| h.lease.token == lease.token)
        {
            leases.remove(&lease.task);
        }
        drop(leases);
        self.settled(w, lease.task, lease.token);
        self.explain(lease.task);
    }

    fn draw(&self, percent: u64) -> bool {
        self.faults.load(Ordering::SeqCst) && lock(&self.rng).chance(percent)
    }

    fn slow(&self) -> Option<Duration> {
        self.draw(4)
            .then(|| Duration::from_millis(lock(&self.rng).below(self.slowest.as_millis() as u64)))
    }
}

/// The key of an activity task, from its input (argument, generation).
fn activity_key(task: &ActivityTask) -> Option<ActivityKey> {
    let (_, generation): (u32, u32) = task.input.decode().ok()?;
    Some((
        task.workflow_id.clone(),
        generation,
        task.activity_id.0.get(),
    ))
}

/// One worker's view of the shared store, with faults.
pub struct Faulty {
    inner: Arc<MemoryStorage>,
    world: Arc<World>,
    worker: usize,
    dead: AtomicBool,
}

fn injected() -> StorageError {
    StorageError::Unavailable {
        message: "injected by the simulation".into(),
        source: None,
    }
}

impl Faulty {
    /// Worker `worker`'s store.
    pub fn new(inner: Arc<MemoryStorage>, world: Arc<World>, worker: usize) -> Self {
        Faulty {
            inner,
            world,
            worker,
            dead: AtomicBool::new(false),
        }
    }

    /// The worker crashed: no call answers again.
    pub fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
    }

    async fn hang_if_dead(&self) {
        if self.dead.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    /// Before a call: maybe slow, maybe failed.
    async fn before(&self, call: &str) -> Result<()> {
        self.hang_if_dead().await;
        if let Some(d) = self.world.slow() {
            self.world.count("slow calls");
            self.world.disturb(self.worker);
            tokio::time::sleep(d).await;
            self.hang_if_dead().await;
        }
        if self.world.draw(5) {
            self.world.count("calls failed before the store");
            self.world.disturb(self.worker);
            self.world
                .note(format!("w{} {call}: failed before the store", self.worker));
            return Err(injected());
        }
        Ok(())
    }

    /// After a call: maybe slow; a write applied may have its answer lost.
    async fn after<T>(&self, call: &str, write: bool, answer: Result<T>) -> Result<T> {
        let outcome = match &answer {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("{e}"),
        };
        self.world
            .note(format!("w{} {call}: {outcome}", self.worker));
        self.hang_if_dead().await;
        if let Some(d) = self.world.slow() {
            self.world.count("slow calls");
            self.world.disturb(self.worker);
            tokio::time::sleep(d).await;
            self.hang_if_dead().await;
        }
        if write && answer.is_ok() && self.world.draw(4) {
            self.world.count("answers lost after the store applied");
            self.world.disturb(self.worker);
            self.world
                .note(format!("w{} {call}: answer lost", self.worker));
            return Err(injected());
        }
        answer
    }

    fn hand_workflows(&self, tasks: &[WorkflowTask]) {
        for t in tasks {
            self.world.handed(self.worker, t.lease, None);
        }
    }

    fn hand_activities(&self, tasks: &[ActivityTask]) {
        for t in tasks {
            self.world.handed(self.worker, t.lease, activity_key(t));
        }
    }
}

#[async_trait]
impl Storage for Faulty {
    async fn create_workflow(&self, id: &WorkflowId, started: Event) -> Result<()> {
        self.before("create").await?;
        let r = self.inner.create_workflow(id, started).await;
        self.after("create", true, r).await
    }
    async fn load_history(&self, id: &WorkflowId, after: Seq) -> Result<Vec<Event>> {
        self.before("load_history").await?;
        let r = self.inner.load_history(id, after).await;
        self.after("load_history", false, r).await
    }
    async fn claim_workflow_tasks(&self, req: &ClaimRequest) -> Result<Vec<WorkflowTask>> {
        self.before("claim_workflow_tasks").await?;
        let r = self.inner.claim_workflow_tasks(req).await;
        if let Ok(tasks) = &r {
            self.hand_workflows(tasks);
        }
        self.after("claim_workflow_tasks", true, r).await
    }
    async fn complete_workflow_task(
        &self,
        completion: WorkflowTaskCompletion,
    ) -> Result<Vec<ActivityTask>> {
        self.before("complete_workflow_task").await?;
        let lease = completion.lease;
        let asked = self.world.clock.now();
        let r = self.inner.complete_workflow_task(completion).await;
        if let Ok(claimed) = &r {
            self.world.committed(&lease, asked);
            self.hand_activities(claimed);
        }
        self.after("complete_workflow_task", true, r).await
    }
    async fn claim_activity_tasks(&self, req: &ClaimRequest) -> Result<Vec<ActivityTask>> {
        self.before("claim_activity_tasks").await?;
        let r = self.inner.claim_activity_tasks(req).await;
        if let Ok(tasks) = &r {
            self.hand_activities(tasks);
        }
        self.after("claim_activity_tasks", true, r).await
    }
    async fn complete_activity_task(
        &self,
        completion: ActivityTaskCompletion,
    ) -> Result<ActivityCommitted> {
        let lease = completion.lease;
        self.world.note(format!(
            "w{} reports {} (token {}): {}{}",
            self.worker,
            lease.task,
            lease.token,
            completion.result.type_name(),
            match &completion.then {
                loom_storage::AfterActivity::Nothing => "",
                loom_storage::AfterActivity::ClaimWorkflowTask(_) => ", claiming the workflow task",
                loom_storage::AfterActivity::Decide { .. } => ", with the next decision",
            }
        ));
        if let Err(e) = self.before("complete_activity_task").await {
            self.world.settled(self.worker, lease.task, lease.token);
            self.world.explain(lease.task);
            return Err(e);
        }
        let asked = self.world.clock.now();
        let r = self.inner.complete_activity_task(completion).await;
        match &r {
            Ok(committed) => {
                self.world.committed(&lease, asked);
                match committed {
                    ActivityCommitted::WorkflowTask(task) => {
                        self.hand_workflows(std::slice::from_ref(task));
                    }
                    ActivityCommitted::Decided(claimed) => self.hand_activities(claimed),
                    ActivityCommitted::Nothing => {}
                }
            }
            Err(_) => self.world.explain(lease.task),
        }
        self.world.settled(self.worker, lease.task, lease.token);
        self.after("complete_activity_task", true, r).await
    }
    async fn renew_lease(&self, lease: &Lease, extend: Duration) -> Result<Lease> {
        self.before("renew_lease").await?;
        let r = self.inner.renew_lease(lease, extend).await;
        match &r {
            Ok(renewed) => self.world.renewed(*renewed),
            Err(StorageError::LeaseLost(_)) => {
                self.world.settled(self.worker, lease.task, lease.token);
                self.world.explain(lease.task);
            }
            Err(_) => {}
        }
        self.after("renew_lease", true, r).await
    }
    async fn release_task(&self, lease: &Lease, release: Release) -> Result<()> {
        self.before("release_task").await?;
        let r = self.inner.release_task(lease, release).await;
        if r.is_ok() {
            self.world.released(self.worker, lease);
        }
        self.after("release_task", true, r).await
    }
    async fn forget_affinity(&self, owner: &str) -> Result<()> {
        self.before("forget_affinity").await?;
        let r = self.inner.forget_affinity(owner).await;
        self.after("forget_affinity", true, r).await
    }
    async fn signal(&self, id: &WorkflowId, name: &str, payload: Payload) -> Result<()> {
        self.before("signal").await?;
        let r = self.inner.signal(id, name, payload).await;
        self.after("signal", true, r).await
    }
    async fn request_cancel(&self, id: &WorkflowId, reason: Option<String>) -> Result<()> {
        self.before("request_cancel").await?;
        let r = self.inner.request_cancel(id, reason).await;
        self.after("request_cancel", true, r).await
    }
    async fn terminate(&self, termination: Termination) -> Result<()> {
        self.before("terminate").await?;
        let r = self.inner.terminate(termination).await;
        self.after("terminate", true, r).await
    }
    async fn reset(&self, reset: Reset) -> Result<()> {
        self.before("reset").await?;
        let r = self.inner.reset(reset).await;
        self.after("reset", true, r).await
    }
    async fn load_run(&self, id: &WorkflowId, run: u32) -> Result<Vec<Event>> {
        self.before("load_run").await?;
        let r = self.inner.load_run(id, run).await;
        self.after("load_run", false, r).await
    }
    async fn runs(&self, id: &WorkflowId) -> Result<Vec<RunSummary>> {
        self.before("runs").await?;
        let r = self.inner.runs(id).await;
        self.after("runs", false, r).await
    }
    async fn pause(&self, id: &WorkflowId, reason: &str) -> Result<()> {
        self.before("pause").await?;
        let r = self.inner.pause(id, reason).await;
        self.after("pause", true, r).await
    }
    async fn resume(&self, id: &WorkflowId) -> Result<()> {
        self.before("resume").await?;
        let r = self.inner.resume(id).await;
        self.after("resume", true, r).await
    }
    async fn purge(&self, purge: &Purge) -> Result<Vec<WorkflowId>> {
        self.before("purge").await?;
        let r = self.inner.purge(purge).await;
        self.after("purge", true, r).await
    }
    async fn describe(&self, id: &WorkflowId) -> Result<WorkflowSummary> {
        self.before("describe").await?;
        let r = self.inner.describe(id).await;
        self.after("describe", false, r).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Page<WorkflowSummary>> {
        self.before("list").await?;
        let r = self.inner.list(query).await;
        self.after("list", false, r).await
    }
    async fn stats(&self) -> Result<Stats> {
        self.before("stats").await?;
        let r = self.inner.stats().await;
        self.after("stats", false, r).await
    }
    async fn backlog(&self) -> Result<loom_storage::Backlog> {
        self.before("backlog").await?;
        let r = self.inner.backlog().await;
        self.after("backlog", false, r).await
    }
    async fn logs(&self, id: &WorkflowId) -> Result<Vec<LogRecord>> {
        self.before("logs").await?;
        let r = self.inner.logs(id).await;
        self.after("logs", false, r).await
    }
    async fn pending(&self, id: &WorkflowId) -> Result<Pending> {
        self.before("pending").await?;
        let r = self.inner.pending(id).await;
        self.after("pending", false, r).await
    }
    async fn now(&self) -> Result<loom_core::Timestamp> {
        self.before("now").await?;
        let r = self.inner.now().await;
        self.after("now", false, r).await
    }
    async fn schedule(&self, id: &str) -> Result<loom_storage::Schedule> {
        self.before("schedule").await?;
        let r = self.inner.schedule(id).await;
        self.after("schedule", false, r).await
    }
    async fn schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<loom_storage::Schedule>> {
        self.before("schedules").await?;
        let r = self.inner.schedules(after, limit).await;
        self.after("schedules", false, r).await
    }
    async fn due_schedules(&self, limit: usize) -> Result<loom_storage::DueSchedules> {
        self.before("due_schedules").await?;
        let r = self.inner.due_schedules(limit).await;
        self.after("due_schedules", false, r).await
    }
    async fn write_schedule(&self, write: loom_storage::ScheduleWrite) -> Result<()> {
        self.before("write_schedule").await?;
        let r = self.inner.write_schedule(write).await;
        self.after("write_schedule", true, r).await
    }
    fn work_signal(&self) -> loom_storage::WorkSignal<'_> {
        let signal = self.inner.work_signal();
        Box::pin(async move {
            self.hang_if_dead().await;
            signal.await;
        })
    }
    fn signals_work(&self) -> bool {
        self.inner.signals_work()
    }
}
