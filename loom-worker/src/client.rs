//! The client API: start workflows, follow them, signal and cancel them, from any process.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use loom_core::{
    Event, EventKind, Failure, HISTORY_FORMAT, Payload, Progress, Registry, Seq, Signal, TagValue,
    Tags, Timeouts, Workflow, WorkflowId,
};
use loom_storage::{
    Clock, ListQuery, Page, RunSummary, Storage, StorageError, SystemClock, Termination,
    WorkflowStatus, WorkflowSummary,
};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::Limits;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The storage call failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A workflow with this id exists, with another type or input, so this start is not a
    /// repeat of that one.
    #[error("a different workflow already has id {0}")]
    IdInUse(WorkflowId),
    /// The input or output does not match the workflow's types.
    #[error("{0}")]
    Payload(String),
    /// No workflow type of this name is registered.
    #[error("unknown workflow {name:?}; registered: {known}")]
    UnknownWorkflow {
        /// The name asked for.
        name: String,
        /// The names that are registered, comma-separated.
        known: String,
    },
    /// The workflow failed.
    #[error("workflow {id} failed: {failure}")]
    Failed {
        /// The workflow.
        id: WorkflowId,
        /// Its error.
        failure: Failure,
    },
    /// The workflow was cancelled.
    #[error("workflow {0} was cancelled")]
    Cancelled(WorkflowId),
    /// The workflow was terminated.
    #[error("workflow {id} was terminated: {reason}")]
    Terminated {
        /// The workflow.
        id: WorkflowId,
        /// Who ended it and why.
        reason: String,
    },
    /// Waiting for the result took longer than asked.
    #[error("workflow {0} did not finish in time")]
    Timeout(WorkflowId),
}

/// Options for starting a workflow.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// The workflow's id; a random UUID when `None`. Starting again with the same id, type and
    /// input returns the existing workflow instead of starting a second one.
    pub id: Option<WorkflowId>,
    /// The longest this run may take: past it, it ends `timed_out` (its code is not run
    /// again, its children get their parent-close policies). Timed by the store's clock; a
    /// worker (of any types) carries it out.
    pub run_timeout: Option<Duration>,
    /// The longest the workflow may take across the runs that continue it. With a single
    /// run it is the run timeout; the first to pass applies.
    pub execution_timeout: Option<Duration>,
    /// The workflow's tags (see [`loom_core::tags`]): `loom list --tag key=value` finds it by
    /// them; its code may set more with `ctx.set_tag`.
    pub tags: Tags,
    /// For [`Client::start_by_name`]: the version of the workflow type to start, instead of
    /// the newest registered. (A typed start uses its type's `VERSION`.)
    pub version: Option<u32>,
    /// The trace the run joins, as a W3C `traceparent` (say, from an incoming request's
    /// header). `None`: the trace of the `StartWorkflow` span `start` opens (a child of the
    /// caller's current span) when an OpenTelemetry layer is installed, else a new trace.
    pub traceparent: Option<String>,
}

impl StartOptions {
    /// With this tag.
    pub fn with_tag(mut self, key: impl Into<String>, value: impl Into<TagValue>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Start with this id.
    pub fn id(id: impl Into<WorkflowId>) -> Self {
        StartOptions {
            id: Some(id.into()),
            ..StartOptions::default()
        }
    }

    /// With this run timeout.
    pub fn with_run_timeout(mut self, timeout: Duration) -> Self {
        self.run_timeout = Some(timeout);
        self
    }

    /// With this execution timeout.
    pub fn with_execution_timeout(mut self, timeout: Duration) -> Self {
        self.execution_timeout = Some(timeout);
        self
    }
}

/// Whole milliseconds of a timeout, at least one.
fn timeout_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A started workflow of type `W`.
#[derive(Clone)]
pub struct WorkflowHandle<W> {
    client: Client,
    id: WorkflowId,
    _type: PhantomData<fn() -> W>,
}

impl<W: Workflow> WorkflowHandle<W> {
    /// The workflow's id.
    pub fn id(&self) -> &WorkflowId {
        &self.id
    }

    /// Waits for the workflow to end and returns its typed output.
    pub async fn result(&self) -> Result<W::Output, ClientError> {
        let summary = self.client.wait(&self.id, None).await?;
        typed_output::<W>(summary)
    }

    /// Like [`result`](Self::result), giving up after `timeout`.
    pub async fn result_within(&self, timeout: Duration) -> Result<W::Output, ClientError> {
        let summary = self.client.wait(&self.id, Some(timeout)).await?;
        typed_output::<W>(summary)
    }
}

fn typed_output<W: Workflow>(summary: WorkflowSummary) -> Result<W::Output, ClientError> {
    match summary.status {
        WorkflowStatus::Completed => summary
            .output
            .unwrap_or(Payload::NULL)
            .decode()
            .map_err(|e| ClientError::Payload(format!("the output of {:?}: {e}", summary.id))),
        WorkflowStatus::Failed => Err(ClientError::Failed {
            id: summary.id,
            failure: summary
                .failure
                .unwrap_or_else(|| Failure::new("unknown", "no error was recorded")),
        }),
        WorkflowStatus::TimedOut => Err(ClientError::Failed {
            id: summary.id,
            failure: summary
                .failure
                .unwrap_or_else(|| Failure::new("timed_out", "a timeout passed")),
        }),
        WorkflowStatus::Terminated => Err(ClientError::Terminated {
            id: summary.id,
            reason: summary.failure.map(|f| f.message).unwrap_or_default(),
        }),
        _ => Err(ClientError::Cancelled(summary.id)),
    }
}

/// What ending `summary`'s run from outside needs to know: its parent (from its progress, or
/// its first event if it never ran a task) and its open children.
pub(crate) async fn family_of(
    storage: &dyn Storage,
    summary: &WorkflowSummary,
) -> Result<Progress, StorageError> {
    let mut family = summary.progress.clone().unwrap_or_default();
    family.run = summary.run;
    if family.parent.is_none() && summary.parent.is_some() {
        let history = storage.load_history(&summary.id, Seq::ZERO).await?;
        if let Some(EventKind::WorkflowStarted { parent, .. }) = history.first().map(|e| &e.kind) {
            family.parent.clone_from(parent);
        }
    }
    Ok(family)
}

/// Where [`Client::reset`] takes a run back to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTo {
    /// Just after this event of the current run: one of
    /// [`reset_points`](loom_core::history::reset_points).
    Event(Seq),
    /// The last workflow-task boundary before the run's first failure (see
    /// [`last_task`](loom_core::history::last_task)).
    LastTask,
}

/// What [`Client::reset`] began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetDone {
    /// The new run.
    pub run: u32,
    /// The last event of the old run that the new run kept.
    pub point: Seq,
}

/// How many times [`Client::terminate`] and [`Client::reset`] read the run again when it
/// moved on meanwhile.
const TERMINATE_TRIES: usize = 20;

/// Starts, follows, signals and cancels workflows on a [`Storage`]. Cheap to clone.
///
/// A client needs no worker in its process: a workflow started here runs on any worker that
/// shares the storage. A client made by [`Worker::client`](crate::Worker::client) also wakes
/// that worker at once when it starts or signals a workflow.
#[derive(Clone)]
pub struct Client {
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    wake: Option<Arc<Notify>>,
    finished: Option<Arc<Notify>>,
    limits: Limits,
}

impl Client {
    /// The limits inputs are checked against.
    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// A client on `storage`, with the default [`Limits`].
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Client {
            storage,
            clock: Arc::new(SystemClock),
            wake: None,
            finished: None,
            limits: Limits::default(),
        }
    }

    /// This client, refusing inputs and signals past `limits` (its workers' limits).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Now, by this client's clock.
    pub(crate) fn now(&self) -> loom_core::Timestamp {
        self.clock.now()
    }

    /// This client, stamping the events it writes (a start, a termination) by `clock`
    /// rather than the system clock: for tests on a manual or simulated clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub(crate) fn with_notifiers(mut self, wake: Arc<Notify>, finished: Arc<Notify>) -> Self {
        self.wake = Some(wake);
        self.finished = Some(finished);
        self
    }

    /// The storage this client uses.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Starts workflow `W` with `input`. Idempotent on the id: starting the same type with the
    /// same input under an existing id returns the existing workflow; anything else under that
    /// id is [`ClientError::IdInUse`].
    pub async fn start<W: Workflow>(
        &self,
        input: &W::Input,
        options: StartOptions,
    ) -> Result<WorkflowHandle<W>, ClientError> {
        let input = Payload::encode(input).map_err(|e| ClientError::Payload(e.to_string()))?;
        let id = self
            .start_erased(W::NAME, W::VERSION, input, options)
            .await?;
        Ok(WorkflowHandle {
            client: self.clone(),
            id,
            _type: PhantomData,
        })
    }

    /// Starts many workflows of type `W` at once, each as [`start`](Self::start) would (its
    /// own answer, idempotent on its id): their writes reach the store together, so a backend
    /// with group commit makes them durable in as few commits as its batches allow, rather
    /// than one after another. Answers in the order given.
    pub async fn start_many<W: Workflow>(
        &self,
        starts: Vec<(W::Input, StartOptions)>,
    ) -> Vec<Result<WorkflowHandle<W>, ClientError>> {
        let each = starts.into_iter().map(|(input, options)| async move {
            let input = Payload::encode(&input).map_err(|e| ClientError::Payload(e.to_string()))?;
            let id = self
                .start_erased(W::NAME, W::VERSION, input, options)
                .await?;
            Ok(WorkflowHandle {
                client: self.clone(),
                id,
                _type: PhantomData,
            })
        });
        futures::future::join_all(each).await
    }

    /// Starts a workflow by name with a JSON input, checking both against `registry`: the way
    /// a command line or another language starts workflows.
    pub async fn start_by_name(
        &self,
        registry: &Registry,
        name: &str,
        input: Payload,
        options: StartOptions,
    ) -> Result<WorkflowId, ClientError> {
        let Some(newest) = registry.workflow(name) else {
            return Err(ClientError::UnknownWorkflow {
                name: name.to_owned(),
                known: registry.workflow_names().collect::<Vec<_>>().join(", "),
            });
        };
        let def = match options.version {
            None => newest,
            Some(v) => registry.workflow_version(name, v).ok_or_else(|| {
                let known: Vec<String> = registry
                    .workflow_versions(name)
                    .iter()
                    .map(u32::to_string)
                    .collect();
                ClientError::UnknownWorkflow {
                    name: format!("{name} version {v}"),
                    known: format!("versions {} of {name}", known.join(", ")),
                }
            })?,
        };
        // The size first: a huge input of the wrong type is refused for its size, not with an
        // error that quotes it.
        self.limits
            .check_payload("the input", input.encoded_len())
            .map_err(ClientError::Payload)?;
        def.check_input(&input).map_err(|e| {
            ClientError::Payload(format!("the input does not fit workflow {name}: {e}"))
        })?;
        self.start_erased(def.name(), def.version(), input, options)
            .await
    }

    async fn start_erased(
        &self,
        name: &str,
        version: u32,
        input: Payload,
        options: StartOptions,
    ) -> Result<WorkflowId, ClientError> {
        self.limits
            .check_payload("the input", input.encoded_len())
            .map_err(ClientError::Payload)?;
        let id = options
            .id
            .unwrap_or_else(|| WorkflowId::new(uuid::Uuid::new_v4().to_string()));
        loom_core::tags::check_tags(&options.tags)
            .map_err(|e| ClientError::Storage(StorageError::InvalidArgument(e)))?;
        if let Some(tp) = options
            .traceparent
            .as_deref()
            .filter(|tp| !crate::trace::is_valid(tp))
        {
            return Err(ClientError::Storage(StorageError::InvalidArgument(
                format!(
                    "the traceparent {tp:?} is not a W3C trace context (00-<32 hex>-<16 hex>-<2 hex>)"
                ),
            )));
        }
        let span = tracing::info_span!(
            target: crate::trace::TARGET,
            "StartWorkflow",
            otel.name = tracing::field::Empty,
            otel.kind = "producer",
            workflow_id = id.as_str(),
        );
        if !span.is_disabled() {
            span.record("otel.name", format!("StartWorkflow:{name}"));
        }
        crate::trace::join(&span, options.traceparent.as_deref());
        let traceparent = crate::trace::traceparent_of(&span, options.traceparent);
        let started = Event {
            seq: Seq::FIRST,
            at: self.clock.now(),
            kind: EventKind::WorkflowStarted {
                traceparent: Some(traceparent),
                tags: options.tags,
                reset: None,
                attempt: 1,
                retry: None,
                name: name.to_owned(),
                version,
                input: input.clone(),
                format: HISTORY_FORMAT,
                timeouts: Timeouts {
                    execution_ms: options.execution_timeout.map(timeout_ms),
                    run_ms: options.run_timeout.map(timeout_ms),
                },
                parent: None,
                run: 1,
            },
        };
        match self
            .storage
            .create_workflow(&id, started)
            .instrument(span)
            .await
        {
            Ok(()) => {
                if let Some(wake) = &self.wake {
                    wake.notify_one();
                }
                Ok(id)
            }
            Err(StorageError::AlreadyExists { .. }) => {
                let existing = self.storage.describe(&id).await?;
                if existing.name == name && existing.input == input {
                    Ok(id)
                } else {
                    Err(ClientError::IdInUse(id))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A handle on an existing workflow of type `W`.
    pub fn handle<W: Workflow>(&self, id: impl Into<WorkflowId>) -> WorkflowHandle<W> {
        WorkflowHandle {
            client: self.clone(),
            id: id.into(),
            _type: PhantomData,
        }
    }

    /// The workflow's summary.
    pub async fn describe(&self, id: &WorkflowId) -> Result<WorkflowSummary, ClientError> {
        Ok(self.storage.describe(id).await?)
    }

    /// The workflow's status.
    pub async fn status(&self, id: &WorkflowId) -> Result<WorkflowStatus, ClientError> {
        Ok(self.storage.describe(id).await?.status)
    }

    /// The workflow's history.
    pub async fn history(&self, id: &WorkflowId) -> Result<Vec<Event>, ClientError> {
        Ok(self.storage.load_history(id, Seq::ZERO).await?)
    }

    /// The history of one run of the workflow: its current run's or an earlier one's, kept
    /// when it continued as new.
    pub async fn run_history(&self, id: &WorkflowId, run: u32) -> Result<Vec<Event>, ClientError> {
        Ok(self.storage.load_run(id, run).await?)
    }

    /// The workflow's earlier runs, oldest first (its current run is its summary's `run`).
    pub async fn runs(&self, id: &WorkflowId) -> Result<Vec<RunSummary>, ClientError> {
        Ok(self.storage.runs(id).await?)
    }

    /// Waits until the workflow ends (or `timeout` passes) and returns its summary, whatever
    /// the ending.
    pub async fn wait(
        &self,
        id: &WorkflowId,
        timeout: Option<Duration>,
    ) -> Result<WorkflowSummary, ClientError> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut pause = Duration::from_millis(2);
        loop {
            // Register interest before looking, so an ending between the look and the wait
            // still wakes us.
            let finished = self.finished.clone();
            let notified = finished.as_ref().map(|n| n.notified());
            let summary = self.storage.describe(id).await?;
            if summary.status.is_terminal() {
                return Ok(summary);
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Err(ClientError::Timeout(id.clone()));
            }
            let sleep = tokio::time::sleep(pause);
            match notified {
                Some(n) => {
                    tokio::select! {
                        biased;
                        () = n => {}
                        () = sleep => {}
                    }
                }
                None => sleep.await,
            }
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// Sends a signal; it waits in storage until the workflow consumes it.
    pub async fn signal(
        &self,
        id: &WorkflowId,
        name: &str,
        payload: Payload,
    ) -> Result<(), ClientError> {
        self.limits
            .check_payload("the signal's payload", payload.encoded_len())
            .map_err(ClientError::Payload)?;
        self.storage.signal(id, name, payload).await?;
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
        Ok(())
    }

    /// Sends signal `S` with its typed payload.
    pub async fn send<S: Signal>(
        &self,
        id: &WorkflowId,
        payload: &S::Payload,
    ) -> Result<(), ClientError> {
        let payload = Payload::encode(payload).map_err(|e| ClientError::Payload(e.to_string()))?;
        self.signal(id, S::NAME, payload).await
    }

    /// Sends a signal by name with a JSON payload, checked first against the signals the
    /// workflow's type declares in `registry` ([`Workflow::signals`]): another name, or a
    /// payload that does not decode as the signal's type, is refused and nothing is written.
    /// A workflow type `registry` does not know is not checked. The way a command line sends
    /// signals.
    pub async fn signal_checked(
        &self,
        registry: &Registry,
        id: &WorkflowId,
        name: &str,
        payload: Payload,
    ) -> Result<(), ClientError> {
        let summary = self.storage.describe(id).await?;
        if summary.status.is_terminal() {
            return Err(StorageError::Closed {
                id: id.clone(),
                status: summary.status,
            }
            .into());
        }
        if let Some(def) = registry
            .workflow_version(&summary.name, summary.version)
            .or_else(|| registry.workflow(&summary.name))
        {
            def.check_signal(name, &payload)
                .map_err(ClientError::Payload)?;
        }
        self.signal(id, name, payload).await
    }

    /// Asks a workflow to cancel; its code sees the request as a cancellation error.
    pub async fn cancel(&self, id: &WorkflowId, reason: Option<String>) -> Result<(), ClientError> {
        self.storage.request_cancel(id, reason).await?;
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
        Ok(())
    }

    /// Ends a run at once, without running its code: `WorkflowTerminated` with `reason` is
    /// recorded, the run ends `terminated`, a worker holding its task can no longer commit,
    /// the results of its running activities are refused, its parent is told, and its
    /// children get their parent-close policies. Works with no worker running. `Closed` if
    /// the run has ended.
    pub async fn terminate(&self, id: &WorkflowId, reason: &str) -> Result<(), ClientError> {
        for _ in 0..TERMINATE_TRIES {
            let summary = self.storage.describe(id).await?;
            if summary.status.is_terminal() {
                return Err(StorageError::Closed {
                    id: id.clone(),
                    status: summary.status,
                }
                .into());
            }
            let termination = Termination {
                workflow_id: id.clone(),
                expected_last_seq: summary.last_seq,
                reason: reason.to_owned(),
                at: self.clock.now().max(summary.updated_at),
                family: family_of(self.storage.as_ref(), &summary).await?,
            };
            match self.storage.terminate(termination).await {
                // A workflow task committed meanwhile, or the run continued as new: read the
                // workflow again.
                Err(StorageError::Conflict { .. } | StorageError::RunMoved { .. }) => continue,
                other => {
                    other?;
                    if let Some(wake) = &self.wake {
                        wake.notify_one();
                    }
                    return Ok(());
                }
            }
        }
        Err(StorageError::Unavailable {
            message: format!(
                "workflow {id} kept moving on while it was being terminated ({TERMINATE_TRIES} tries)"
            ),
            source: None,
        }
        .into())
    }

    /// Resets a workflow's current run, open or ended, to a workflow-task boundary of its
    /// history (see [`ResetTo`]), and runs the current code from there: a new run begins
    /// whose history is the old one's up to the point, its open activities run again, its
    /// timers are armed again, and the signals received after the point are delivered again
    /// when `reapply_signals`. The old run is kept as an earlier run; an open one ends with
    /// `WorkflowReset`, and a worker holding its task or an attempt of its activities can no
    /// longer commit. The use: a bug fixed in code, rerun from before the step that broke.
    /// Answers the new run and the point. `InvalidArgument` for a point that is not a
    /// boundary; `RunMoved` if a point named by number was in a run that has since ended by
    /// continuing as new.
    pub async fn reset(
        &self,
        id: &WorkflowId,
        to: ResetTo,
        reason: &str,
        reapply_signals: bool,
    ) -> Result<ResetDone, ClientError> {
        let mut run = None;
        for _ in 0..TERMINATE_TRIES {
            let summary = self.storage.describe(id).await?;
            if let (ResetTo::Event(_), Some(run)) = (to, run)
                && summary.run != run
            {
                return Err(StorageError::RunMoved {
                    id: id.clone(),
                    expected: run,
                    actual: summary.run,
                }
                .into());
            }
            run = Some(summary.run);
            let history = self.storage.load_history(id, Seq::ZERO).await?;
            let point = match to {
                ResetTo::Event(seq) => seq,
                ResetTo::LastTask => loom_core::history::last_task(&history).ok_or_else(|| {
                    StorageError::InvalidArgument(format!("\"{id}\" has no history to reset"))
                })?,
            };
            let reset = loom_storage::Reset {
                workflow_id: id.clone(),
                history,
                to: point,
                reason: reason.to_owned(),
                reapply_signals,
                created_at: summary.created_at,
                family: family_of(self.storage.as_ref(), &summary).await?,
                at: self.clock.now().max(summary.updated_at),
            };
            match self.storage.reset(reset).await {
                // A workflow task committed meanwhile: read the run again.
                Err(StorageError::Conflict { .. } | StorageError::RunMoved { .. }) => continue,
                other => {
                    other?;
                    if let Some(wake) = &self.wake {
                        wake.notify_one();
                    }
                    return Ok(ResetDone {
                        run: summary.run + 1,
                        point,
                    });
                }
            }
        }
        Err(StorageError::Unavailable {
            message: format!(
                "workflow {id} kept moving on while it was being reset ({TERMINATE_TRIES} tries)"
            ),
            source: None,
        }
        .into())
    }

    /// Pauses a workflow: it is `paused` with `reason` (say who and why: `loom inspect` shows
    /// it), and no worker runs its code until [`resume`](Self::resume); a worker holding its
    /// task can no longer commit. Activities already running finish; their results, timers,
    /// signals and cancel requests wait, in order. Works with no worker running. `Closed` if
    /// the workflow has ended.
    pub async fn pause(&self, id: &WorkflowId, reason: &str) -> Result<(), ClientError> {
        Ok(self.storage.pause(id, reason).await?)
    }

    /// Resumes a paused workflow, whether an operator paused it or a task that could not be
    /// decided did: it runs at once, with everything that waited. `InvalidArgument` if it is
    /// not paused.
    pub async fn resume(&self, id: &WorkflowId) -> Result<(), ClientError> {
        self.storage.resume(id).await?;
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
        Ok(())
    }

    /// Deletes one batch of closed workflows for retention (see [`loom_storage::Purge`]):
    /// their ids, those that ended first first. Call again while it answers a full batch.
    /// Open workflows are never purged.
    pub async fn purge(&self, purge: &loom_storage::Purge) -> Result<Vec<WorkflowId>, ClientError> {
        Ok(self.storage.purge(purge).await?)
    }

    /// Lists workflows, newest first.
    pub async fn list(&self, query: &ListQuery) -> Result<Page<WorkflowSummary>, ClientError> {
        Ok(self.storage.list(query).await?)
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}
