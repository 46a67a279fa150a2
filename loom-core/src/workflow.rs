//! The authoring API's traits: [`Workflow`] and [`Activity`], their type-erased forms, and the
//! [`Registry`] a runtime looks them up in by name.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::WorkflowContext;
use crate::failure::{Failure, WorkflowError};
use crate::machine::Shared;
use crate::options::ActivityOptions;
use crate::types::{ActivityId, Payload, PayloadError, WorkflowId};

/// A boxed, sendable future, as the erased traits return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A workflow type: deterministic async code with a typed input, state and output.
///
/// `run` must be deterministic: everything that is not pure computation on its input, state and
/// the results the context hands back (time, randomness, IO, other threads) goes through the
/// [`WorkflowContext`]. Race futures with [`crate::future::select`] or `futures::select_biased!`,
/// never with `futures::select!`, which picks at random.
///
/// ```
/// use loom_core::{Workflow, WorkflowContext, WorkflowError};
/// use serde::{Deserialize, Serialize};
///
/// struct Hello;
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Seen { greeted: bool }
///
/// impl Workflow for Hello {
///     const NAME: &'static str = "Hello";
///     type Input = String;
///     type State = Seen;
///     type Output = String;
///
///     async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
///         ctx.update_state(|s| s.greeted = true)?;
///         Ok(format!("hello, {}", ctx.input()))
///     }
/// }
/// ```
pub trait Workflow: Send + Sync + Sized + 'static {
    /// The stable name the workflow is started and registered by.
    const NAME: &'static str;
    /// The version of the code; pinned in the history at start. A run started with another
    /// version does not replay on this code (use `ctx.patched` for compatible changes).
    const VERSION: u32 = 1;
    /// The input given at start.
    type Input: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The state the workflow records as it goes; visible to people while it runs.
    type State: Serialize + DeserializeOwned + Default + Send + 'static;
    /// The output it returns.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// The workflow's code.
    fn run(
        ctx: WorkflowContext<Self>,
    ) -> impl Future<Output = Result<Self::Output, WorkflowError>> + Send;

    /// The signals the workflow takes (`signals.add::<Approve>()`). When it declares any,
    /// clients that check (`Client::signal_checked`, `loom signal`) refuse another name or a
    /// payload that does not decode, and write nothing. Declaring none accepts any signal.
    fn signals(signals: &mut Signals) {
        let _ = signals;
    }
}

/// A signal type: its name and its payload's type in one place, shared by the code that
/// sends it and the workflow that waits for it (`ctx.signal::<S>()`).
pub trait Signal: Send + Sync + 'static {
    /// The signal's name.
    const NAME: &'static str;
    /// Its payload.
    type Payload: Serialize + DeserializeOwned + Send + 'static;
}

/// The signals a workflow type declares (see [`Workflow::signals`]).
#[derive(Default)]
pub struct Signals(BTreeMap<&'static str, DecodeCheck>);

/// Whether a payload decodes as one signal's payload type.
type DecodeCheck = fn(&Payload) -> Result<(), PayloadError>;

impl Signals {
    /// Declares signal `S`.
    pub fn add<S: Signal>(&mut self) -> &mut Self {
        self.0
            .insert(S::NAME, |p| p.decode::<S::Payload>().map(drop));
        self
    }

    /// Whether `name` with `payload` is a signal the workflow takes; the error says why not.
    pub fn check(&self, workflow: &str, name: &str, payload: &Payload) -> Result<(), String> {
        if self.0.is_empty() {
            return Ok(());
        }
        match self.0.get(name) {
            Some(decode) => decode(payload)
                .map_err(|e| format!("the payload of signal {name:?} does not fit: {e}")),
            None => Err(format!(
                "workflow {workflow} takes no signal {name:?}; it takes {}",
                self.0
                    .keys()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// An activity type: a side effect with a typed input and output, run at least once by a
/// worker with the retry policy in its options.
pub trait Activity: Send + Sync + 'static {
    /// The stable name the activity is scheduled and registered by.
    const NAME: &'static str;
    /// The input.
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// The result.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Retry policy and timeouts used when the workflow does not override them.
    fn options() -> ActivityOptions {
        ActivityOptions::default()
    }

    /// Runs one attempt.
    fn run(
        &self,
        ctx: ActivityContext,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, Failure>> + Send;
}

/// What an activity attempt knows about itself, and its line back to the runtime.
#[derive(Clone)]
pub struct ActivityContext {
    info: ActivityInfo,
    heartbeat: Option<Arc<dyn Fn(Option<Payload>) + Send + Sync>>,
    cancel: Arc<CancelFlag>,
}

/// Whether an activity attempt still counts, set by the runtime when it does not: the
/// workflow cancelled the activity (it lost a `select`, the workflow was cancelled), or the
/// attempt's lease was lost. The attempt's result will be refused either way; it should stop.
#[derive(Debug, Default)]
pub struct CancelFlag {
    set: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl CancelFlag {
    /// A flag not set.
    pub fn new() -> Arc<Self> {
        Arc::new(CancelFlag::default())
    }

    /// Sets the flag and wakes whoever awaits it.
    pub fn cancel(&self) {
        self.set.store(true, Ordering::SeqCst);
        let wakers =
            std::mem::take(&mut *self.wakers.lock().unwrap_or_else(PoisonError::into_inner));
        for w in wakers {
            w.wake();
        }
    }

    /// Whether the flag is set.
    pub fn is_cancelled(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }
}

/// The future of [`ActivityContext::cancelled`].
#[derive(Debug)]
#[must_use = "a future does nothing until awaited"]
pub struct Cancelled(Arc<CancelFlag>);

impl Future for Cancelled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.is_cancelled() {
            return Poll::Ready(());
        }
        self.0
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(cx.waker().clone());
        // Set between the check and the push: do not miss it.
        if self.0.is_cancelled() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Identifies one activity attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivityInfo {
    /// The workflow that scheduled it.
    pub workflow_id: WorkflowId,
    /// The activity within that workflow.
    pub activity_id: ActivityId,
    /// The activity type's name.
    pub name: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
}

impl ActivityContext {
    /// A context for one attempt. `heartbeat`, if given, is called on every heartbeat.
    pub fn new(
        info: ActivityInfo,
        heartbeat: Option<Arc<dyn Fn(Option<Payload>) + Send + Sync>>,
    ) -> Self {
        ActivityContext {
            info,
            heartbeat,
            cancel: CancelFlag::new(),
        }
    }

    /// This context, told of cancellation through `flag`.
    pub fn with_cancel(mut self, flag: Arc<CancelFlag>) -> Self {
        self.cancel = flag;
        self
    }

    /// Whether the attempt no longer counts: the workflow cancelled the activity, or the
    /// attempt's lease was lost. The runtime learns it when it renews the lease (every third
    /// of the lease); an activity that runs long checks it, or awaits
    /// [`cancelled`](Self::cancelled), between its steps, and stops.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the attempt no longer counts (see [`is_cancelled`](Self::is_cancelled)).
    pub fn cancelled(&self) -> Cancelled {
        Cancelled(self.cancel.clone())
    }

    /// Which attempt this is.
    pub fn info(&self) -> &ActivityInfo {
        &self.info
    }

    /// Tells the runtime the attempt is alive, with optional progress details.
    pub fn heartbeat(&self, details: Option<Payload>) {
        if let Some(h) = &self.heartbeat {
            h(details);
        }
    }
}

impl fmt::Debug for ActivityContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActivityContext")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// A workflow type with its types erased, as a runtime holds it.
pub trait DynWorkflow: Send + Sync {
    /// [`Workflow::NAME`].
    fn name(&self) -> &'static str;
    /// [`Workflow::VERSION`].
    fn version(&self) -> u32;
    /// Checks that `input` decodes as the workflow's input type.
    fn check_input(&self, input: &Payload) -> Result<(), PayloadError>;
    /// Checks a signal against the ones the workflow declares ([`Workflow::signals`]).
    fn check_signal(&self, name: &str, payload: &Payload) -> Result<(), String>;
    /// Starts the code on `input`; the future resolves to the encoded output.
    fn start(
        &self,
        id: WorkflowId,
        input: &Payload,
        shared: Shared,
    ) -> Result<RunFuture, PayloadError>;
}

/// The running code of one workflow, with its output encoded.
pub type RunFuture = BoxFuture<Result<Payload, WorkflowError>>;

/// An activity type with its types erased, as a runtime holds it.
pub trait DynActivity: Send + Sync {
    /// [`Activity::NAME`].
    fn name(&self) -> &'static str;
    /// [`Activity::options`].
    fn options(&self) -> ActivityOptions;
    /// Runs one attempt on an encoded input; decoding errors are non-retryable failures.
    fn run(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: Payload,
    ) -> BoxFuture<Result<Payload, Failure>>;
}

struct WorkflowType<W>(PhantomData<fn() -> W>);

impl<W: Workflow> DynWorkflow for WorkflowType<W> {
    fn name(&self) -> &'static str {
        W::NAME
    }

    fn version(&self) -> u32 {
        W::VERSION
    }

    fn check_input(&self, input: &Payload) -> Result<(), PayloadError> {
        input.decode::<W::Input>().map(drop)
    }

    fn check_signal(&self, name: &str, payload: &Payload) -> Result<(), String> {
        let mut signals = Signals::default();
        W::signals(&mut signals);
        signals.check(W::NAME, name, payload)
    }

    fn start(
        &self,
        id: WorkflowId,
        input: &Payload,
        shared: Shared,
    ) -> Result<RunFuture, PayloadError> {
        let input: W::Input = input.decode()?;
        let ctx = WorkflowContext::<W>::new(id, input, shared);
        Ok(Box::pin(async move {
            let output = W::run(ctx).await?;
            Ok(Payload::encode(&output)?)
        }))
    }
}

struct ActivityType<A>(A);

impl<A: Activity> DynActivity for ActivityType<A> {
    fn name(&self) -> &'static str {
        A::NAME
    }

    fn options(&self) -> ActivityOptions {
        A::options()
    }

    fn run(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: Payload,
    ) -> BoxFuture<Result<Payload, Failure>> {
        Box::pin(async move {
            let input: A::Input = input
                .decode()
                .map_err(|e| Failure::non_retryable("bad_input", e.to_string()))?;
            let output = self.0.run(ctx, input).await?;
            Payload::encode(&output)
                .map_err(|e| Failure::non_retryable("bad_output", e.to_string()))
        })
    }
}

/// The erased form of workflow type `W`.
pub fn workflow_type<W: Workflow>() -> Arc<dyn DynWorkflow> {
    Arc::new(WorkflowType::<W>(PhantomData))
}

/// The erased form of an activity implementation.
pub fn activity_type<A: Activity>(activity: A) -> Arc<dyn DynActivity> {
    Arc::new(ActivityType(activity))
}

/// Registration failed: two types share a name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// This version of a workflow type is already registered.
    #[error("version {version} of workflow {name:?} is already registered")]
    DuplicateWorkflow {
        /// The type's name.
        name: String,
        /// The version.
        version: u32,
    },
    /// An activity type with this name is already registered.
    #[error("an activity named {0:?} is already registered")]
    DuplicateActivity(String),
}

/// The workflow and activity types a runtime can run, by name.
#[derive(Clone, Default)]
pub struct Registry {
    /// Each workflow type's versions, by number.
    workflows: BTreeMap<&'static str, BTreeMap<u32, Arc<dyn DynWorkflow>>>,
    activities: BTreeMap<&'static str, Arc<dyn DynActivity>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers workflow type `W`. Several versions of one workflow type may be registered
    /// side by side (Rust types with the same [`Workflow::NAME`] and different
    /// [`Workflow::VERSION`]s): each run is executed by the version it started with, and new
    /// runs take the newest unless they name one. The same name and version twice is an error.
    pub fn add_workflow<W: Workflow>(&mut self) -> Result<&mut Self, RegistryError> {
        self.add_dyn_workflow(workflow_type::<W>())
    }

    /// Registers an erased workflow type (see [`add_workflow`](Self::add_workflow)).
    pub fn add_dyn_workflow(
        &mut self,
        w: Arc<dyn DynWorkflow>,
    ) -> Result<&mut Self, RegistryError> {
        let versions = self.workflows.entry(w.name()).or_default();
        if versions.contains_key(&w.version()) {
            return Err(RegistryError::DuplicateWorkflow {
                name: w.name().to_owned(),
                version: w.version(),
            });
        }
        versions.insert(w.version(), w);
        Ok(self)
    }

    /// Registers an activity implementation; a second one with the same name is an error.
    pub fn add_activity<A: Activity>(&mut self, activity: A) -> Result<&mut Self, RegistryError> {
        let a = activity_type(activity);
        if self.activities.contains_key(a.name()) {
            return Err(RegistryError::DuplicateActivity(a.name().to_owned()));
        }
        self.activities.insert(a.name(), a);
        Ok(self)
    }

    /// The newest version of the workflow type named `name`: the one new runs take.
    pub fn workflow(&self, name: &str) -> Option<&Arc<dyn DynWorkflow>> {
        self.workflows.get(name)?.values().next_back()
    }

    /// Version `version` of the workflow type named `name`: the one that executes a run
    /// started with it.
    pub fn workflow_version(&self, name: &str, version: u32) -> Option<&Arc<dyn DynWorkflow>> {
        self.workflows.get(name)?.get(&version)
    }

    /// The code that executes the run whose history is `history`: the type and version its
    /// first event (`WorkflowStarted`) names.
    pub fn workflow_for(&self, history: &[crate::Event]) -> Option<&Arc<dyn DynWorkflow>> {
        match history.first().map(|e| &e.kind) {
            Some(crate::EventKind::WorkflowStarted { name, version, .. }) => {
                self.workflow_version(name, *version)
            }
            _ => None,
        }
    }

    /// The registered versions of the workflow type named `name`, oldest first.
    pub fn workflow_versions(&self, name: &str) -> Vec<u32> {
        self.workflows
            .get(name)
            .map(|v| v.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The activity type named `name`.
    pub fn activity(&self, name: &str) -> Option<&Arc<dyn DynActivity>> {
        self.activities.get(name)
    }

    /// The names of the registered workflow types, sorted.
    pub fn workflow_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.workflows.keys().copied()
    }

    /// The names of the registered activity types, sorted.
    pub fn activity_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.activities.keys().copied()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field(
                "workflows",
                &self
                    .workflows
                    .iter()
                    .map(|(name, versions)| (name, versions.keys().collect::<Vec<_>>()))
                    .collect::<Vec<_>>(),
            )
            .field("activities", &self.activities.keys().collect::<Vec<_>>())
            .finish()
    }
}
