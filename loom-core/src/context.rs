//! [`WorkflowContext`]: everything workflow code may do besides pure computation.
//!
//! Every method here either issues a command (recorded in history and checked on replay) or
//! reads something the history decides. The futures it returns are inert until polled: an
//! activity is scheduled, a timer started, a signal waited for, when the future is first polled,
//! so `join(a, b)` schedules `a` before `b`, every time.

use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{Either, select};
use serde::de::DeserializeOwned;

use crate::event::{EventKind, LogLevel, ParentRef, RecordedValue};
use crate::failure::{ActivityError, ChildError, Failure, SignalError, WorkflowError};
use crate::machine::{Inner, Shared};
use crate::options::{ActivityOptions, ChildOptions, ParentClosePolicy};
use crate::tags::TagValue;
use crate::types::{ActivityId, ChildId, Payload, Seq, TimerId, Timestamp, WorkflowId};
use crate::workflow::{Activity, Signal, Workflow};

/// The id a child gets unless the code chooses one: `"{parent}/{seq}"` in the first run,
/// `"{parent}/run{run}/{seq}"` in a later one (a continued run numbers its history from 1
/// again, and its children must not take the ids of an earlier run's children).
fn default_child_id(parent: &WorkflowId, run: u32, seq: Seq) -> WorkflowId {
    if run <= 1 {
        WorkflowId::new(format!("{parent}/{}", seq.get()))
    } else {
        WorkflowId::new(format!("{parent}/run{run}/{}", seq.get()))
    }
}

/// The derived id a child recorded at `seq` took, when the recorded event there starts a
/// child with the id derived for an earlier run (or this one): a run begun by a reset keeps
/// the history of the run it reset, whose children took that run's ids, and replays them.
fn recorded_child_id(shared: &Inner, parent: &WorkflowId, seq: Seq) -> Option<WorkflowId> {
    let recorded = shared.history.get(shared.cursor)?;
    let EventKind::ChildWorkflowScheduled { workflow_id, .. } = &recorded.kind else {
        return None;
    };
    (1..=shared.run)
        .any(|run| default_child_id(parent, run, seq) == *workflow_id)
        .then(|| workflow_id.clone())
}

/// The state key that stands for the whole state when it is not a JSON object.
pub const WHOLE_STATE_KEY: &str = "$";

/// The handle workflow code receives: input, state, activities, timers, signals, steps, time,
/// randomness and logging, all deterministic on replay. Cheap to clone.
pub struct WorkflowContext<W: Workflow> {
    inner: Arc<ContextInner<W>>,
}

struct ContextInner<W: Workflow> {
    id: WorkflowId,
    input: W::Input,
    shared: Shared,
    state: Mutex<StateCell<W::State>>,
}

struct StateCell<S> {
    value: S,
    json: serde_json::Value,
}

impl<W: Workflow> Clone for WorkflowContext<W> {
    fn clone(&self) -> Self {
        WorkflowContext {
            inner: self.inner.clone(),
        }
    }
}

impl<W: Workflow> WorkflowContext<W> {
    pub(crate) fn new(id: WorkflowId, input: W::Input, shared: Shared) -> Self {
        let value = W::State::default();
        let json = serde_json::to_value(&value).unwrap_or(serde_json::Value::Null);
        shared.lock().state = Payload::from_json(json.clone());
        WorkflowContext {
            inner: Arc::new(ContextInner {
                id,
                input,
                shared,
                state: Mutex::new(StateCell { value, json }),
            }),
        }
    }

    /// This workflow's id.
    pub fn workflow_id(&self) -> &WorkflowId {
        &self.inner.id
    }

    /// The input the workflow was started with.
    pub fn input(&self) -> &W::Input {
        &self.inner.input
    }

    /// A copy of the current state.
    pub fn state(&self) -> W::State
    where
        W::State: Clone,
    {
        self.with_state(Clone::clone)
    }

    /// Reads the current state.
    pub fn with_state<R>(&self, f: impl FnOnce(&W::State) -> R) -> R {
        let cell = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&cell.value)
    }

    /// Changes the state and records the change: one `StateSet` event when one top-level field
    /// changed, one `StateUpdated` event when several did, nothing when none did.
    ///
    /// Fails only if the state cannot be serialized.
    pub fn update_state<R>(&self, f: impl FnOnce(&mut W::State) -> R) -> Result<R, WorkflowError> {
        let mut cell = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let result = f(&mut cell.value);
        let json = serde_json::to_value(&cell.value)
            .map_err(|e| WorkflowError::Failed(Failure::non_retryable("state", e.to_string())))?;
        let mut changes = state_changes(&cell.json, &json);
        cell.json = json;
        drop(cell);
        let command = match changes.len() {
            0 => return Ok(result),
            1 => {
                let (key, value) = changes.pop_first().expect("one change");
                EventKind::StateSet { key, value }
            }
            _ => EventKind::StateUpdated { values: changes },
        };
        self.inner.shared.lock().command(command);
        Ok(result)
    }

    /// Sets one of the workflow's tags (see [`crate::tags`]): recorded as `TagSet`, indexed by
    /// the store when the task commits, so that `loom list --tag key=value` finds the
    /// workflow. A key or value no store can hold (see [`check_tag`](crate::tags::check_tag))
    /// is an error and nothing is recorded.
    ///
    /// ```ignore
    /// ctx.set_tag("customer", 42)?;
    /// ctx.set_tag("stage", "shipped")?;
    /// ```
    pub fn set_tag(&self, key: &str, value: impl Into<TagValue>) -> Result<(), WorkflowError> {
        let value = value.into();
        crate::tags::check_tag(key, &value)
            .map_err(|e| WorkflowError::Failed(Failure::non_retryable("bad_tag", e)))?;
        self.inner.shared.lock().command(EventKind::TagSet {
            key: key.to_owned(),
            value,
        });
        Ok(())
    }

    /// Schedules activity `A` with its default options; await the result.
    pub fn activity<A: Activity>(&self, input: A::Input) -> ActivityCall<A::Output> {
        ActivityCall::new(
            self.inner.shared.clone(),
            A::NAME.to_owned(),
            Payload::encode(&input),
            A::options(),
        )
    }

    /// Schedules an activity by name with an already-encoded input, for activities whose
    /// types this crate cannot see (implemented elsewhere, or chosen at run time).
    pub fn activity_by_name<O: DeserializeOwned>(
        &self,
        name: impl Into<String>,
        input: Payload,
        options: ActivityOptions,
    ) -> ActivityCall<O> {
        ActivityCall::new(self.inner.shared.clone(), name.into(), Ok(input), options)
    }

    /// Starts child workflow `C` with `input` and default [`ChildOptions`]; await its output.
    ///
    /// The child is created in the same commit as this workflow task, and its end reaches
    /// this workflow as a message. Its id is derived from this workflow's id and the command's
    /// position (`"{parent}/{seq}"`) unless [`ChildCall::with_id`] chooses one, so a replay or
    /// a retried task never starts a second child. Like every command, it is issued when the
    /// future is first polled.
    pub fn child<C: Workflow>(&self, input: C::Input) -> ChildCall<C::Output> {
        ChildCall {
            shared: self.inner.shared.clone(),
            parent: self.inner.id.clone(),
            name: C::NAME,
            version: C::VERSION,
            input: Some(Payload::encode(&input)),
            options: ChildOptions::default(),
            wait: Wait::New,
            _output: PhantomData,
        }
    }

    /// The workflow that started this one as its child, if one did.
    pub fn parent(&self) -> Option<ParentRef> {
        self.inner.shared.lock().parent.clone()
    }

    /// Which run of the workflow this is: 1 for the run `start` began, one more for each
    /// continue-as-new or retry since.
    pub fn run(&self) -> u32 {
        self.inner.shared.lock().run
    }

    /// Which attempt this run is, from 1, when the workflow is retried on failure (a child
    /// started `with_retry`); 1 otherwise.
    pub fn attempt(&self) -> u32 {
        self.inner.shared.lock().attempt
    }

    /// Ends this run and continues the workflow as a new run with `input`: return the value
    /// this gives (`return Err(ctx.continue_as_new(next))`). The new run starts atomically
    /// with this run's end, under the same workflow id, with an empty history, so a workflow
    /// that loops for years (a subscription, a poller) keeps its history bounded.
    ///
    /// What the new run inherits: the workflow's parent (which hears of the chain's end
    /// only), its execution timeout (which spans the runs; the run timeout starts again), the
    /// signals that arrived and that this run did not take (delivered first, in order), and a
    /// cancel request still waiting. What it does not: timers, activities and children of
    /// this run (its children get their parent-close policies, as when a run ends).
    /// `ctx.input()` of the new run is `input`; its state starts from the default.
    pub fn continue_as_new(&self, input: W::Input) -> WorkflowError {
        match Payload::encode(&input) {
            Ok(input) => WorkflowError::ContinueAsNew(crate::failure::ContinueAsNew { input }),
            Err(e) => WorkflowError::Failed(Failure::non_retryable(
                "payload",
                format!("the input of the next run cannot be encoded: {e}"),
            )),
        }
    }

    /// A durable timer: resolves `duration` after the current task's time, across restarts.
    /// Resolves to `Err(Cancelled)` if the workflow is cancelled while it waits.
    pub fn sleep(&self, duration: Duration) -> Sleep {
        Sleep::new(self.inner.shared.clone(), TimerSpec::After(duration))
    }

    /// A durable timer that resolves at `deadline`.
    pub fn sleep_until(&self, deadline: Timestamp) -> Sleep {
        Sleep::new(self.inner.shared.clone(), TimerSpec::Until(deadline))
    }

    /// Waits for the next signal named `name` not yet consumed (signals sent before the wait
    /// began are kept, in order) and decodes its payload.
    pub fn wait_signal<T: DeserializeOwned>(&self, name: impl Into<String>) -> SignalWait<T> {
        SignalWait {
            shared: self.inner.shared.clone(),
            name: name.into(),
            epoch: None,
            waiting: false,
            _payload: PhantomData,
        }
    }

    /// Waits for the next signal `S` not yet consumed (see [`wait_signal`](Self::wait_signal)),
    /// typed: a payload that does not decode is an error value the code may handle
    /// ([`SignalError::BadPayload`]), never a failure of the run unless the code makes it one.
    pub async fn signal<S: Signal>(&self) -> Result<S::Payload, SignalError> {
        match self.wait_signal::<Payload>(S::NAME).await {
            Ok(payload) => payload
                .decode::<S::Payload>()
                .map_err(|e| SignalError::BadPayload {
                    signal: S::NAME.to_owned(),
                    error: e.to_string(),
                    payload,
                }),
            Err(_) => Err(SignalError::Cancelled),
        }
    }

    /// Waits for signal `S` at most `timeout` (a durable timer, cancelled if the signal
    /// wins); `Ok(None)` on timeout.
    pub async fn signal_timeout<S: Signal>(
        &self,
        timeout: Duration,
    ) -> Result<Option<S::Payload>, SignalError> {
        let signal = Box::pin(self.signal::<S>());
        let timer = self.sleep(timeout);
        match select(signal, timer).await {
            Either::Left((payload, _)) => payload.map(Some),
            Either::Right((fired, _)) => fired.map(|()| None).map_err(|_| SignalError::Cancelled),
        }
    }

    /// Waits for signal `name` at most `timeout` (a durable timer); `Ok(None)` on timeout.
    pub async fn wait_signal_timeout<T: DeserializeOwned>(
        &self,
        name: impl Into<String>,
        timeout: Duration,
    ) -> Result<Option<T>, WorkflowError> {
        let signal = self.wait_signal::<T>(name);
        let timer = self.sleep(timeout);
        match select(signal, timer).await {
            Either::Left((payload, _)) => payload.map(Some),
            Either::Right((fired, _)) => fired.map(|()| None),
        }
    }

    /// Runs `body` as a named step: `StepStarted` before, `StepCompleted` after, so people can
    /// see where the workflow is.
    pub async fn step<T>(&self, name: &str, body: impl Future<Output = T>) -> T {
        self.command(EventKind::StepStarted { name: name.into() });
        let value = body.await;
        self.command(EventKind::StepCompleted { name: name.into() });
        value
    }

    /// The current time, recorded: on replay it returns what it returned the first time.
    pub fn now(&self) -> Timestamp {
        let mut shared = self.inner.shared.lock();
        let now = shared.now;
        let recorded = shared.command(EventKind::ValueRecorded {
            value: RecordedValue::Now(now),
        });
        match recorded.map(|i| &shared.history[i].kind) {
            Some(EventKind::ValueRecorded {
                value: RecordedValue::Now(t),
            }) => *t,
            _ => now,
        }
    }

    /// A random number, recorded.
    pub fn random_u64(&self) -> u64 {
        let mut shared = self.inner.shared.lock();
        let fresh = shared.next_random();
        let recorded = shared.command(EventKind::ValueRecorded {
            value: RecordedValue::Random(fresh),
        });
        match recorded.map(|i| &shared.history[i].kind) {
            Some(EventKind::ValueRecorded {
                value: RecordedValue::Random(n),
            }) => *n,
            _ => fresh,
        }
    }

    /// A random (version 4) UUID, recorded.
    pub fn uuid(&self) -> uuid::Uuid {
        let mut shared = self.inner.shared.lock();
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&shared.next_random().to_le_bytes());
        bytes[8..].copy_from_slice(&shared.next_random().to_le_bytes());
        let fresh = uuid::Builder::from_random_bytes(bytes).into_uuid();
        let recorded = shared.command(EventKind::ValueRecorded {
            value: RecordedValue::Uuid(fresh),
        });
        match recorded.map(|i| &shared.history[i].kind) {
            Some(EventKind::ValueRecorded {
                value: RecordedValue::Uuid(u),
            }) => *u,
            _ => fresh,
        }
    }

    /// Versions a change of workflow code in place. Returns `true` in runs that reach this
    /// point with the new code (and records that), `false` in runs whose history was written
    /// before the change, so they keep taking the old branch:
    ///
    /// ```text
    /// if ctx.patched("send-sms") {
    ///     ctx.activity::<SendSms>(msg).await?;
    /// } else {
    ///     ctx.activity::<SendEmail>(msg).await?;
    /// }
    /// ```
    pub fn patched(&self, patch: &str) -> bool {
        let mut shared = self.inner.shared.lock();
        let index = shared.cursor;
        match shared.history.get(index).map(|e| &e.kind) {
            Some(EventKind::PatchMarked { patch: recorded }) if recorded == patch => {
                shared.command(EventKind::PatchMarked {
                    patch: patch.to_owned(),
                });
                true
            }
            // Recorded history without the marker: this point was reached by old code.
            Some(_) => false,
            None if shared.replaying => false,
            None => shared
                .command(EventKind::PatchMarked {
                    patch: patch.to_owned(),
                })
                .is_some(),
        }
    }

    /// Whether a cancel has been requested. Waits that were pending when it arrived have
    /// already resolved as cancelled; the code may still run cleanup activities.
    pub fn is_cancel_requested(&self) -> bool {
        self.inner.shared.lock().cancel_requested
    }

    /// The replay-safe logger: each line is written once, not again on replay.
    pub fn logger(&self) -> Logger {
        Logger {
            shared: self.inner.shared.clone(),
        }
    }

    fn command(&self, kind: EventKind) {
        self.inner.shared.lock().command(kind);
    }
}

/// The top-level fields that differ between two serialized states. A removed field is set to
/// null; a state that is not a JSON object is one field named [`WHOLE_STATE_KEY`].
fn state_changes(old: &serde_json::Value, new: &serde_json::Value) -> BTreeMap<String, Payload> {
    let mut changes = BTreeMap::new();
    match (old, new) {
        (serde_json::Value::Object(old), serde_json::Value::Object(new)) => {
            for (key, value) in new {
                if old.get(key) != Some(value) {
                    changes.insert(key.clone(), Payload::from_json(value.clone()));
                }
            }
            for key in old.keys().filter(|k| !new.contains_key(*k)) {
                changes.insert(key.clone(), Payload::NULL);
            }
        }
        _ if old != new => {
            changes.insert(WHOLE_STATE_KEY.to_owned(), Payload::from_json(new.clone()));
        }
        _ => {}
    }
    changes
}

/// A log line writer that writes each line once, whatever the replays.
#[derive(Clone, Debug)]
pub struct Logger {
    shared: Shared,
}

impl Logger {
    /// Writes a line at `level`.
    pub fn log(&self, level: LogLevel, message: impl Into<String>) {
        self.shared.lock().log(level, message.into());
    }

    /// Writes a debug line.
    pub fn debug(&self, message: impl Into<String>) {
        self.log(LogLevel::Debug, message);
    }

    /// Writes an info line.
    pub fn info(&self, message: impl Into<String>) {
        self.log(LogLevel::Info, message);
    }

    /// Writes a warning.
    pub fn warn(&self, message: impl Into<String>) {
        self.log(LogLevel::Warn, message);
    }

    /// Writes an error line.
    pub fn error(&self, message: impl Into<String>) {
        self.log(LogLevel::Error, message);
    }
}

enum Wait<Id> {
    New,
    Waiting { id: Id, epoch: u32 },
    Done,
}

/// The future of one activity's result. Scheduled when first polled.
#[must_use = "an activity is scheduled only when its future is awaited"]
pub struct ActivityCall<O> {
    shared: Shared,
    name: String,
    input: Option<Result<Payload, crate::types::PayloadError>>,
    options: ActivityOptions,
    wait: Wait<ActivityId>,
    _output: PhantomData<fn() -> O>,
}

impl<O> ActivityCall<O> {
    fn new(
        shared: Shared,
        name: String,
        input: Result<Payload, crate::types::PayloadError>,
        options: ActivityOptions,
    ) -> Self {
        ActivityCall {
            shared,
            name,
            input: Some(input),
            options,
            wait: Wait::New,
            _output: PhantomData,
        }
    }

    /// Overrides the activity's options for this call.
    pub fn with_options(mut self, options: ActivityOptions) -> Self {
        self.options = options;
        self
    }

    /// Overrides only the retry policy for this call.
    pub fn with_retry(mut self, retry: crate::options::RetryPolicy) -> Self {
        self.options.retry = retry;
        self
    }
}

impl<O: DeserializeOwned> Future for ActivityCall<O> {
    type Output = Result<O, ActivityError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut shared = this.shared.lock();
        if let Wait::New = this.wait {
            let input = match this.input.take() {
                Some(Ok(input)) => input,
                Some(Err(e)) => {
                    this.wait = Wait::Done;
                    return Poll::Ready(Err(ActivityError::Failed {
                        activity: this.name.clone(),
                        failure: Failure::non_retryable("bad_input", e.to_string()),
                        attempts: 0,
                    }));
                }
                None => return Poll::Pending,
            };
            let command = EventKind::ActivityScheduled {
                name: this.name.clone(),
                input,
                options: ActivityOptions {
                    traceparent: shared.traceparent.clone(),
                    ..this.options.clone()
                },
            };
            let Some(index) = shared.command(command) else {
                return Poll::Pending;
            };
            let id = ActivityId(shared.history[index].seq);
            this.wait = Wait::Waiting {
                id,
                epoch: shared.cancel_epoch,
            };
        }
        let Wait::Waiting { id, epoch } = this.wait else {
            return Poll::Pending;
        };
        let outcome = shared
            .activities
            .get(&id)
            .and_then(|slot| slot.outcome.clone());
        if let Some(outcome) = outcome {
            this.wait = Wait::Done;
            return Poll::Ready(outcome.and_then(|payload| {
                payload.decode::<O>().map_err(|e| ActivityError::Failed {
                    activity: this.name.clone(),
                    failure: Failure::non_retryable("bad_output", e.to_string()),
                    attempts: shared.activities.get(&id).map_or(0, |s| s.attempts),
                })
            }));
        }
        if shared.cancel_epoch > epoch {
            this.wait = Wait::Done;
            shared.cancel_activity(id);
            return Poll::Ready(Err(ActivityError::Cancelled {
                activity: this.name.clone(),
            }));
        }
        shared.wakers.push(cx.waker().clone());
        Poll::Pending
    }
}

/// The future of a child workflow's output. The child is started when this is first polled.
#[must_use = "a child workflow is started only when its future is awaited"]
pub struct ChildCall<O> {
    shared: Shared,
    parent: WorkflowId,
    name: &'static str,
    version: u32,
    input: Option<Result<Payload, crate::types::PayloadError>>,
    options: ChildOptions,
    wait: Wait<(ChildId, WorkflowId)>,
    _output: PhantomData<fn() -> O>,
}

impl<O> ChildCall<O> {
    /// Sets all of the child's options.
    pub fn with_options(mut self, options: ChildOptions) -> Self {
        self.options = options;
        self
    }

    /// Chooses the child's workflow id instead of the derived one. If a workflow with that id
    /// exists, the call resolves to [`ChildError::Failed`] of kind `already_exists`.
    pub fn with_id(mut self, id: impl Into<WorkflowId>) -> Self {
        self.options.id = Some(id.into());
        self
    }

    /// Sets what happens to the child if this workflow ends first.
    pub fn with_parent_close(mut self, policy: ParentClosePolicy) -> Self {
        self.options.parent_close = policy;
        self
    }

    /// Retries the child under `policy` when a run of it fails: a new run under the same id,
    /// with the same input, after the policy's backoff; the parent hears only of the last
    /// attempt's end. A failure of a kind the policy does not retry, or marked non-retryable,
    /// is final.
    pub fn with_retry(mut self, policy: crate::options::RetryPolicy) -> Self {
        self.options.retry = Some(policy);
        self
    }

    /// Ends the child `timed_out` if it is still running `timeout` after it starts.
    pub fn with_run_timeout(mut self, timeout: Duration) -> Self {
        self.options.timeouts.run_ms = Some(
            u64::try_from(timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        );
        self
    }
}

impl<O: DeserializeOwned> Future for ChildCall<O> {
    type Output = Result<O, ChildError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut shared = this.shared.lock();
        if let Wait::New = this.wait {
            // The position this command takes, recorded or new: the cursor.
            let seq = Seq::new(shared.cursor as u64 + 1);
            let workflow_id = this
                .options
                .id
                .clone()
                .or_else(|| recorded_child_id(&shared, &this.parent, seq))
                .unwrap_or_else(|| default_child_id(&this.parent, shared.run, seq));
            let input = match this.input.take() {
                Some(Ok(input)) => input,
                Some(Err(e)) => {
                    this.wait = Wait::Done;
                    return Poll::Ready(Err(ChildError::Failed {
                        workflow_id,
                        failure: Failure::non_retryable("bad_input", e.to_string()),
                    }));
                }
                None => return Poll::Pending,
            };
            if let Err(reason) = workflow_id.check() {
                this.wait = Wait::Done;
                return Poll::Ready(Err(ChildError::Failed {
                    workflow_id,
                    failure: Failure::non_retryable("bad_input", reason),
                }));
            }
            let command = EventKind::ChildWorkflowScheduled {
                name: this.name.to_owned(),
                version: this.version,
                workflow_id: workflow_id.clone(),
                input,
                parent_close: this.options.parent_close,
                timeouts: this.options.timeouts,
                retry: this.options.retry.clone(),
                traceparent: shared.traceparent.clone(),
            };
            let Some(index) = shared.command(command) else {
                return Poll::Pending;
            };
            let id = ChildId(shared.history[index].seq);
            this.wait = Wait::Waiting {
                id: (id, workflow_id),
                epoch: shared.cancel_epoch,
            };
        }
        let Wait::Waiting {
            id: (id, ref workflow_id),
            epoch,
        } = this.wait
        else {
            return Poll::Pending;
        };
        let outcome = shared.children.get(&id).and_then(|c| c.outcome.clone());
        if let Some(outcome) = outcome {
            let workflow_id = workflow_id.clone();
            this.wait = Wait::Done;
            return Poll::Ready(outcome.and_then(|payload| {
                payload.decode::<O>().map_err(|e| ChildError::Failed {
                    workflow_id,
                    failure: Failure::non_retryable("bad_output", e.to_string()),
                })
            }));
        }
        if shared.cancel_epoch > epoch {
            let workflow_id = workflow_id.clone();
            this.wait = Wait::Done;
            return Poll::Ready(Err(ChildError::ParentCancelled { workflow_id }));
        }
        shared.wakers.push(cx.waker().clone());
        Poll::Pending
    }
}

impl<O> Drop for ActivityCall<O> {
    /// A call dropped while it waits (the loser of a `select`) cancels its activity.
    fn drop(&mut self) {
        if let Wait::Waiting { id, .. } = self.wait {
            self.shared.lock().cancel_activity(id);
        }
    }
}

enum TimerSpec {
    After(Duration),
    Until(Timestamp),
}

/// The future of a durable timer. Started when first polled.
#[must_use = "a timer is started only when its future is awaited"]
pub struct Sleep {
    shared: Shared,
    spec: TimerSpec,
    wait: Wait<TimerId>,
}

impl Sleep {
    fn new(shared: Shared, spec: TimerSpec) -> Self {
        Sleep {
            shared,
            spec,
            wait: Wait::New,
        }
    }
}

impl Future for Sleep {
    type Output = Result<(), WorkflowError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut shared = this.shared.lock();
        if let Wait::New = this.wait {
            let command = match this.spec {
                TimerSpec::After(d) => EventKind::TimerScheduled {
                    fire_at: shared.now.saturating_add(d),
                    duration_ms: Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                },
                TimerSpec::Until(t) => EventKind::TimerScheduled {
                    fire_at: t,
                    duration_ms: None,
                },
            };
            let Some(index) = shared.command(command) else {
                return Poll::Pending;
            };
            let id = TimerId(shared.history[index].seq);
            this.wait = Wait::Waiting {
                id,
                epoch: shared.cancel_epoch,
            };
        }
        let Wait::Waiting { id, epoch } = this.wait else {
            return Poll::Pending;
        };
        if shared.timers.get(&id).is_some_and(|t| t.fired) {
            this.wait = Wait::Done;
            return Poll::Ready(Ok(()));
        }
        if shared.cancel_epoch > epoch {
            this.wait = Wait::Done;
            shared.cancel_timer(id);
            return Poll::Ready(Err(WorkflowError::Cancelled));
        }
        shared.wakers.push(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Sleep {
    /// A timer dropped while it waits (the loser of a `select`, the timer of
    /// `wait_signal_timeout`) is cancelled: it never wakes the workflow.
    fn drop(&mut self) {
        if let Wait::Waiting { id, .. } = self.wait {
            self.shared.lock().cancel_timer(id);
        }
    }
}

/// The future of the next signal of one name.
#[must_use = "a signal is consumed only when its future is awaited"]
pub struct SignalWait<T> {
    shared: Shared,
    name: String,
    epoch: Option<u32>,
    /// Counted among the machine's outstanding signal waits.
    waiting: bool,
    _payload: PhantomData<fn() -> T>,
}

/// A signal wait that resolved or was dropped no longer counts as outstanding.
fn stop_waiting(waiting: &mut bool, shared: &mut crate::machine::Inner) {
    if std::mem::take(waiting) {
        shared.signal_waits = shared.signal_waits.saturating_sub(1);
    }
}

impl<T> Drop for SignalWait<T> {
    fn drop(&mut self) {
        if self.waiting {
            stop_waiting(&mut self.waiting, &mut self.shared.lock());
        }
    }
}

impl<T: DeserializeOwned> Future for SignalWait<T> {
    type Output = Result<T, WorkflowError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut shared = this.shared.lock();
        if shared.error.is_some() || shared.finished.is_some() {
            return Poll::Pending;
        }
        let epoch = *this.epoch.get_or_insert(shared.cancel_epoch);
        if let Some((_, payload)) = shared
            .signals
            .get_mut(&this.name)
            .and_then(|q| q.pop_front())
        {
            stop_waiting(&mut this.waiting, &mut shared);
            return Poll::Ready(payload.decode::<T>().map_err(WorkflowError::from));
        }
        if shared.cancel_epoch > epoch {
            stop_waiting(&mut this.waiting, &mut shared);
            return Poll::Ready(Err(WorkflowError::Cancelled));
        }
        if !this.waiting {
            this.waiting = true;
            shared.signal_waits += 1;
        }
        shared.awaiting_signals.insert(this.name.clone());
        shared.wakers.push(cx.waker().clone());
        Poll::Pending
    }
}
