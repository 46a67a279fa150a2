//! The JSON API, version 1, and the OpenAPI document that describes it ([`ApiDoc`]).
//!
//! Times are RFC 3339 strings in UTC with milliseconds. A workflow id is one path segment:
//! an id holding `/` (a child's, say) is sent percent-encoded (`%2F`). Lists page with an
//! opaque `cursor`; a history pages by sequence number (`after`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use loom_core::{Payload, Seq, TagValue, Tags, Timestamp, WorkflowId};
use loom_storage::{ListCursor, ListQuery, TagFilter, WorkflowStatus, WorkflowSummary};
use loom_worker::StartOptions;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::error::ErrorBody;
use crate::{ApiError, Service};

type Shared = State<Arc<Service>>;

/// The most workflows one page of a list holds.
pub const MAX_PAGE: usize = 1_000;
/// The largest version or run number the API takes: the document says they are 32-bit
/// integers, as OpenAPI's `int32` (signed) has them.
const MAX_NUMBER: u32 = i32::MAX as u32;

/// The most events one page of a history holds.
pub const MAX_EVENTS: usize = 1_000;

/// The routes of the API, the OpenAPI document and `/livez`.
pub(crate) fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/livez", get(livez))
        .route("/api/openapi.json", get(openapi))
        .route("/api/v1/workflows", get(list).post(start))
        .route("/api/v1/workflows/{id}", get(describe))
        .route("/api/v1/workflows/{id}/history", get(history))
        .route("/api/v1/workflows/{id}/tasks", get(tasks))
        .route("/api/v1/workflows/{id}/runs", get(runs))
        .route("/api/v1/workflows/{id}/signal", post(signal))
        .route("/api/v1/workflows/{id}/cancel", post(cancel))
        .route("/api/v1/workflows/{id}/terminate", post(terminate))
        .route("/api/v1/workflows/{id}/pause", post(pause))
        .route("/api/v1/workflows/{id}/resume", post(resume))
        .route("/api/v1/workflows/{id}/reset", post(reset))
        .route("/api/v1/purge", post(purge))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/types", get(types))
        .merge(crate::schedules::routes())
        .fallback(|| async { ApiError::not_found("no such route") })
}

/// The OpenAPI document of this API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Loom",
        description = "Start, find, inspect and operate Loom workflows."
    ),
    paths(
        list, start, describe, history, tasks, runs, signal, cancel, terminate, pause, resume,
        reset, purge, stats, types
    ),
    components(schemas(
        Workflow, Status, FailureView, WorkflowPage, StartRequest, Started, HistoryPage,
        HistoryEvent, TasksView, TaskView, RunsView, RunView, SignalRequest, ReasonRequest, RequiredReason, ResetRequest, ResetAnswer, PurgeRequest, Purged, Accepted, StatsView, TypesView, WorkflowType,
        ErrorBody
    )),
    modifiers(&BearerToken),
    security((), ("token" = []))
)]
pub struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn openapi(State(service): Shared) -> Json<Value> {
    // The document is served to anyone; with a token set, it does not name the types.
    let empty = loom_core::Registry::new();
    let registry = if service.token().is_some() {
        &empty
    } else {
        service.registry()
    };
    let mut doc = serde_json::to_value(document(registry)).unwrap_or_default();
    camel_case_links(&mut doc);
    Json(doc)
}

/// Writes the fields of every response's links as OpenAPI names them (`operationId`,
/// `operationRef`, `requestBody`): utoipa 5 writes them in snake case, which tools reading the
/// links (schemathesis's stateful tests among them) refuse.
fn camel_case_links(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    let operations = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|p| p.values_mut());
    let responses = operations
        .filter_map(|op| op.get_mut("responses").and_then(Value::as_object_mut))
        .flat_map(|r| r.values_mut());
    for link in responses
        .filter_map(|r| r.get_mut("links").and_then(Value::as_object_mut))
        .flat_map(|l| l.values_mut())
        .filter_map(Value::as_object_mut)
    {
        for (from, to) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(v) = link.remove(from) {
                link.insert(to.to_owned(), v);
            }
        }
    }
}

/// The OpenAPI document as this service serves it: [`ApiDoc`], with the workflow types the
/// serving binary registers as the values a start's `type` takes.
pub fn document(registry: &loom_core::Registry) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::{RefOr, Schema};
    let mut doc = ApiDoc::openapi();
    doc.merge(<crate::schedules::ScheduleDoc as OpenApi>::openapi());
    let mut names: Vec<&str> = registry.workflow_names().collect();
    names.sort_unstable();
    if !names.is_empty()
        && let Some(components) = doc.components.as_mut()
        && let Some(RefOr::T(Schema::Object(start))) = components.schemas.get_mut("StartRequest")
        && let Some(RefOr::T(Schema::Object(ty))) = start.properties.get_mut("type")
    {
        ty.enum_values = Some(names.into_iter().map(Value::from).collect());
    }
    doc
}

/// A JSON body whose rejections are answered as the API's errors (400 with what is wrong,
/// 415 without a JSON content type).
pub(crate) struct Body<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::unsupported(
                "send the body as JSON, with Content-Type: application/json",
            )),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

// ---- shapes ----

/// A workflow's status.
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Started and not ended.
    Running,
    /// Its last workflow task could not be decided; retried until code that replays runs.
    Paused,
    /// Returned its output.
    Completed,
    /// Failed.
    Failed,
    /// Was cancelled.
    Cancelled,
    /// Was ended from outside.
    Terminated,
    /// Ran past a timeout set at start.
    TimedOut,
}

impl From<WorkflowStatus> for Status {
    fn from(s: WorkflowStatus) -> Self {
        match s {
            WorkflowStatus::Running => Status::Running,
            WorkflowStatus::Paused => Status::Paused,
            WorkflowStatus::Completed => Status::Completed,
            WorkflowStatus::Failed => Status::Failed,
            WorkflowStatus::Cancelled => Status::Cancelled,
            WorkflowStatus::Terminated => Status::Terminated,
            WorkflowStatus::TimedOut => Status::TimedOut,
        }
    }
}

impl From<Status> for WorkflowStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Running => WorkflowStatus::Running,
            Status::Paused => WorkflowStatus::Paused,
            Status::Completed => WorkflowStatus::Completed,
            Status::Failed => WorkflowStatus::Failed,
            Status::Cancelled => WorkflowStatus::Cancelled,
            Status::Terminated => WorkflowStatus::Terminated,
            Status::TimedOut => WorkflowStatus::TimedOut,
        }
    }
}

/// How a workflow failed.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct FailureView {
    /// A stable name for the kind of error.
    pub kind: String,
    /// A sentence for people.
    pub message: String,
    /// Whether retrying could not help.
    pub non_retryable: bool,
    /// Structured details, if any.
    pub details: Option<Value>,
}

/// One workflow.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Workflow {
    /// Its id.
    pub id: String,
    /// Its type's name.
    #[serde(rename = "type")]
    pub workflow_type: String,
    /// Its type's version at start.
    pub version: u32,
    /// Its status.
    pub status: Status,
    /// Its current run: 1, and one more for each continue-as-new or retry.
    pub run: u32,
    /// Its input (of the current run).
    pub input: Value,
    /// Its output, once completed.
    pub output: Option<Value>,
    /// Its error, once failed.
    pub failure: Option<FailureView>,
    /// Why it is paused.
    pub pause_reason: Option<String>,
    /// When it was created (its first run).
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When it last changed.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// When it ended.
    #[schema(format = DateTime)]
    pub closed_at: Option<String>,
    /// The sequence number of the last event in its history.
    pub last_seq: u64,
    /// The workflow that started it as its child.
    pub parent: Option<String>,
    /// Its tags: text, whole numbers, truth values, and times as RFC 3339 strings.
    pub tags: BTreeMap<String, Value>,
    /// Where it stood after its last workflow task: the current step, the state, pending
    /// activities and timers, awaited signals.
    #[schema(value_type = Option<Object>)]
    pub progress: Option<Value>,
}

impl From<WorkflowSummary> for Workflow {
    fn from(s: WorkflowSummary) -> Self {
        Workflow {
            id: s.id.as_str().to_owned(),
            workflow_type: s.name,
            version: s.version,
            status: s.status.into(),
            run: s.run,
            input: s.input.into_json(),
            output: s.output.map(Payload::into_json),
            failure: s.failure.map(|f| FailureView {
                kind: f.kind,
                message: f.message,
                non_retryable: f.non_retryable,
                details: f.details.map(Payload::into_json),
            }),
            pause_reason: s.pause_reason,
            created_at: rfc3339(s.created_at),
            updated_at: rfc3339(s.updated_at),
            closed_at: s.closed_at.map(rfc3339),
            last_seq: s.last_seq.get(),
            parent: s.parent.map(|p| p.as_str().to_owned()),
            tags: tags_json(&s.tags),
            progress: s
                .progress
                .and_then(|p| serde_json::to_value(p).ok())
                .filter(Value::is_object),
        }
    }
}

/// One page of workflows, newest first.
#[derive(Serialize, ToSchema)]
pub struct WorkflowPage {
    /// The workflows.
    pub workflows: Vec<Workflow>,
    /// The cursor of the next page, if there is one.
    pub next: Option<String>,
}

/// A workflow to start.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The workflow type, as registered in the serving binary.
    #[serde(rename = "type")]
    #[schema(min_length = 1)]
    pub workflow_type: String,
    /// Its input, checked against the type.
    #[serde(default)]
    pub input: Value,
    /// Its id; a new one when absent. Starting again with the same id, type and input is
    /// answered with the same id; with others, 409.
    #[schema(pattern = r"^[^\u0000]+$")]
    pub id: Option<String>,
    /// Tags: strings (an RFC 3339 string is a time), whole numbers and truth values.
    #[serde(default)]
    pub tags: BTreeMap<String, Value>,
    /// The version of the type to run; the newest when absent.
    #[schema(minimum = 1, maximum = 2147483647)]
    pub version: Option<u32>,
    /// Seconds each run may take before it ends `timed_out`.
    #[schema(exclusive_minimum = 0.0, maximum = 3.0e9)]
    pub run_timeout_s: Option<f64>,
    /// Seconds the whole workflow, every run, may take.
    #[schema(exclusive_minimum = 0.0, maximum = 3.0e9)]
    pub execution_timeout_s: Option<f64>,
}

/// A started workflow.
#[derive(Serialize, ToSchema)]
pub struct Started {
    /// Its id.
    pub id: String,
}

/// One page of a history.
#[derive(Serialize, ToSchema)]
pub struct HistoryPage {
    /// The events, in order.
    pub events: Vec<HistoryEvent>,
    /// The `after` of the next page, if there is one.
    pub next: Option<u64>,
}

/// One event: its sequence number, time and type, and the fields of its type as the history
/// stores them.
#[derive(Serialize, ToSchema)]
pub struct HistoryEvent {
    /// Its position in the history.
    pub seq: u64,
    /// When it was appended.
    #[schema(format = DateTime)]
    pub at: String,
    /// What happened: `WorkflowStarted`, `ActivityScheduled`, `SignalReceived`, ...
    #[serde(rename = "type")]
    pub event_type: String,
    /// The fields of its type.
    #[schema(value_type = Object)]
    pub fields: Value,
}

/// Where each of a workflow's tasks stands.
#[derive(Serialize, ToSchema)]
pub struct TasksView {
    /// Its workflow task and its activity tasks; none once it has ended.
    pub tasks: Vec<TaskView>,
}

/// Where one task stands.
#[derive(Serialize, ToSchema)]
pub struct TaskView {
    /// `workflow_task`, or the activity's name.
    pub task: String,
    /// The activity's id, for an activity task.
    pub activity_id: Option<u64>,
    /// The activity's current attempt.
    pub attempt: Option<u32>,
    /// `running` (a worker holds it), `ready` (claimable), `waiting` (due later) or `idle`
    /// (a workflow task with nothing due).
    pub state: String,
    /// Running: when the lease lapses; ready: since when; waiting: when it is due.
    #[schema(format = DateTime)]
    pub at: Option<String>,
    /// Ready: how long it has waited for a worker, in milliseconds.
    pub waited_ms: Option<u64>,
    /// Times it was handed out without finishing.
    pub deliveries: u32,
    /// An activity's last failed attempt.
    pub last_failure: Option<String>,
}

/// A workflow's earlier runs (ended by continue-as-new, a retried failure or a reset).
#[derive(Serialize, ToSchema)]
pub struct RunsView {
    /// The earlier runs, the first first; the current run is the workflow's own.
    pub runs: Vec<RunView>,
}

/// One run.
#[derive(Serialize, ToSchema)]
pub struct RunView {
    /// Its number.
    pub run: u32,
    /// When it started.
    #[schema(format = DateTime)]
    pub started_at: String,
    /// When it ended.
    #[schema(format = DateTime)]
    pub ended_at: String,
    /// Its events.
    pub events: u64,
}

/// A signal to send.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// The signal's name.
    #[schema(min_length = 1)]
    pub name: String,
    /// Its payload, checked against what the workflow declares when the serving binary
    /// knows its type.
    #[serde(default)]
    pub payload: Value,
}

/// Why an action is taken, if the caller says.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    /// The reason, recorded with the action: without NUL characters.
    #[schema(pattern = r"^[^\u0000]*$")]
    pub reason: Option<String>,
}

/// Why an action is taken: required to terminate or pause.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequiredReason {
    /// The reason, recorded with the action: not blank, without NUL characters.
    #[schema(pattern = r"^[^\u0000]*\S[^\u0000]*$")]
    pub reason: String,
}

/// Where to rerun a run from.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// A reset point of the current run (the sequence number of a workflow task's completion,
    /// as the dashboard marks them), or `last-task`: the last one before the run's first
    /// failure.
    #[schema(pattern = r"^([1-9][0-9]{0,18}|last-task)$")]
    pub to: String,
    /// Why, recorded with the reset: not blank, without NUL characters.
    #[schema(pattern = r"^[^\u0000]*\S[^\u0000]*$")]
    pub reason: String,
    /// Leave out the signals received after the point (by default they are delivered again).
    #[serde(default)]
    pub no_signals: bool,
}

/// Which closed workflows to delete, whole (summary, every run's history, logs).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// Only those that ended at least this many seconds ago.
    #[schema(minimum = 0.0, maximum = 3.0e9)]
    pub older_than_s: f64,
    /// Only this status (one a workflow ends with).
    pub status: Option<Status>,
    /// Only this workflow type.
    #[serde(rename = "type")]
    pub workflow_type: Option<String>,
    /// The most to delete in this call, oldest ended first (default 500).
    #[schema(minimum = 1, maximum = 10000)]
    pub limit: Option<usize>,
}

/// What a purge deleted.
#[derive(Serialize, ToSchema)]
pub struct Purged {
    /// The ids of the workflows deleted; fewer than the limit when no more match.
    pub purged: Vec<String>,
}

/// A reset began a new run.
#[derive(Serialize, ToSchema)]
pub struct ResetAnswer {
    /// The workflow.
    pub id: String,
    /// The new run.
    pub run: u32,
    /// The last event of the old run that the new run kept.
    pub point: u64,
}

/// An action was recorded.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    /// The workflow it concerns.
    pub id: String,
}

/// Counts across the store.
#[derive(Serialize, ToSchema)]
pub struct StatsView {
    /// Workflows by status.
    pub workflows: BTreeMap<String, u64>,
    /// Events in all histories.
    pub events: u64,
    /// Workflow tasks that can be claimed now.
    pub workflow_tasks_ready: u64,
    /// Workflow tasks held under a live lease.
    pub workflow_tasks_running: u64,
    /// Activity tasks that can be claimed now.
    pub activity_tasks_ready: u64,
    /// Activity tasks held under a live lease.
    pub activity_tasks_running: u64,
    /// Activity tasks waiting for a retry's backoff.
    pub activity_tasks_waiting: u64,
    /// Timers and messages due later.
    pub messages_waiting: u64,
    /// When the oldest task that can be claimed became ready.
    #[schema(format = DateTime)]
    pub oldest_ready_at: Option<String>,
    /// When the next timer or retry is due.
    #[schema(format = DateTime)]
    pub next_due_at: Option<String>,
    /// The store's time of these counts.
    #[schema(format = DateTime)]
    pub at: String,
}

/// The types the serving binary registers.
#[derive(Serialize, ToSchema)]
pub struct TypesView {
    /// Workflow types.
    pub workflows: Vec<WorkflowType>,
    /// Activity names.
    pub activities: Vec<String>,
}

/// One workflow type.
#[derive(Serialize, ToSchema)]
pub struct WorkflowType {
    /// Its name.
    pub name: String,
    /// Its registered versions, oldest first.
    pub versions: Vec<u32>,
}

// ---- handlers ----

/// Lists workflows, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/workflows",
    params(
        ("status" = Option<Status>, Query, description = "Only this status."),
        ("type" = Option<String>, Query, min_length = 1, description = "Only this workflow type."),
        ("tag" = Option<Vec<String>>, Query, explode = true, pattern = r"^[A-Za-z0-9_.-]{1,64}(=[^\u0000]{0,64}|[<>]=?(-?[0-9]{1,18}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z))$",
            description = "Only those whose tags pass: `key=value`, or `key` then `<`, `<=`, `>` or `>=` then a number or time. Repeatable."),
        ("parent" = Option<String>, Query, min_length = 1, description = "Only the children of this workflow."),
        ("created_after" = Option<String>, Query, format = DateTime, description = "Only those created at or after (RFC 3339)."),
        ("created_before" = Option<String>, Query, format = DateTime, description = "Only those created before (RFC 3339)."),
        ("closed_before" = Option<String>, Query, format = DateTime, description = "Only those that ended before (RFC 3339); none that is open."),
        ("version" = Option<u32>, Query, minimum = 1, maximum = 2147483647, description = "Only runs of this version of their type."),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "Page size (default 50)."),
        ("cursor" = Option<String>, Query, pattern = r"^[0-9]+\..*$", description = "The `next` of the page before."),
    ),
    responses(
        (status = 200, body = WorkflowPage),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
    )
)]
async fn list(
    State(service): Shared,
    RawQuery(query): RawQuery,
) -> Result<Json<WorkflowPage>, ApiError> {
    let mut q = ListQuery {
        limit: 50,
        ..ListQuery::default()
    };
    for (key, value) in params(query.as_deref()) {
        match &*key {
            "status" => {
                let status = value
                    .parse::<WorkflowStatus>()
                    .map_err(|e| ApiError::bad_request(format!("status: {e}")))?;
                q.status = Some(status);
            }
            "type" => q.name = Some(non_empty("type", value)?),
            "tag" => q
                .tags
                .push(TagFilter::parse(&value).map_err(ApiError::bad_request)?),
            "parent" => q.parent = Some(WorkflowId::new(non_empty("parent", value)?)),
            "created_after" => q.created_after = Some(time_param("created_after", &value)?),
            "created_before" => q.created_before = Some(time_param("created_before", &value)?),
            "closed_before" => q.closed_before = Some(time_param("closed_before", &value)?),
            "version" => {
                let v = value
                    .parse::<u32>()
                    .ok()
                    .filter(|v| (1..=MAX_NUMBER).contains(v))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "version: {value:?} is not a version (1 or more)"
                        ))
                    })?;
                q.version = Some(v);
            }
            "limit" => q.limit = count_param("limit", &value, MAX_PAGE)?,
            "cursor" => q.after = Some(parse_cursor(&value)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}: say status, type, version, tag, parent, \
                     created_after, created_before, closed_before, limit or cursor"
                )));
            }
        }
    }
    let page = service.client().list(&q).await?;
    Ok(Json(WorkflowPage {
        next: page.next.as_ref().map(cursor_text),
        workflows: page.items.into_iter().map(Workflow::from).collect(),
    }))
}

/// Starts a workflow by type name, checking its input against the type.
#[utoipa::path(
    post,
    path = "/api/v1/workflows",
    request_body = StartRequest,
    responses(
        (status = 201, body = Started, links(
            ("describe" = (operation_id = "describe", parameters(("id" = "$response.body#/id")))),
            ("history" = (operation_id = "history", parameters(("id" = "$response.body#/id")))),
            ("tasks" = (operation_id = "tasks", parameters(("id" = "$response.body#/id")))),
            ("runs" = (operation_id = "runs", parameters(("id" = "$response.body#/id")))),
            ("signal" = (operation_id = "signal", parameters(("id" = "$response.body#/id")))),
            ("cancel" = (operation_id = "cancel", parameters(("id" = "$response.body#/id")))),
            ("terminate" = (operation_id = "terminate", parameters(("id" = "$response.body#/id")))),
            ("pause" = (operation_id = "pause", parameters(("id" = "$response.body#/id")))),
            ("resume" = (operation_id = "resume", parameters(("id" = "$response.body#/id")))),
            ("reset" = (operation_id = "reset", parameters(("id" = "$response.body#/id"))))
        )),
        (status = 400, body = ErrorBody, description = "Unknown type, input that does not fit, bad tags."),
        (status = 409, body = ErrorBody, description = "The id is taken by another workflow."),
        (status = 415, body = ErrorBody, description = "A body not sent as JSON."),
    )
)]
async fn start(
    State(service): Shared,
    Body(req): Body<StartRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let tags = tags_from_json(req.tags)?;
    if let Some(v) = req.version
        && service
            .registry()
            .workflow_version(&req.workflow_type, v)
            .is_none()
        && service.registry().workflow(&req.workflow_type).is_some()
    {
        return Err(ApiError::bad_request(format!(
            "version {v} of {} is not registered here (versions: {:?})",
            req.workflow_type,
            service.registry().workflow_versions(&req.workflow_type)
        )));
    }
    let timeout = |name: &str, s: Option<f64>| -> Result<Option<Duration>, ApiError> {
        s.map(|s| {
            Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero() && s <= 3.0e9)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("{name}: {s} is not a number of seconds above 0"))
                })
        })
        .transpose()
    };
    let options = StartOptions {
        id: req.id.map(WorkflowId::new),
        tags,
        version: req.version,
        run_timeout: timeout("run_timeout_s", req.run_timeout_s)?,
        execution_timeout: timeout("execution_timeout_s", req.execution_timeout_s)?,
        ..StartOptions::default()
    };
    let id = service
        .client()
        .start_by_name(
            service.registry(),
            &req.workflow_type,
            Payload::from_json(req.input),
            options,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Started {
            id: id.as_str().to_owned(),
        }),
    ))
}

/// One workflow.
#[utoipa::path(
    get,
    path = "/api/v1/workflows/{id}",
    params(("id" = String, Path, description = "The workflow's id.")),
    responses(
        (status = 200, body = Workflow),
        (status = 404, body = ErrorBody),
    )
)]
async fn describe(
    State(service): Shared,
    Path(id): Path<String>,
) -> Result<Json<Workflow>, ApiError> {
    let summary = service.client().describe(&WorkflowId::new(id)).await?;
    Ok(Json(summary.into()))
}

/// A page of a workflow's history (its current run's, or `run`'s).
#[utoipa::path(
    get,
    path = "/api/v1/workflows/{id}/history",
    params(
        ("id" = String, Path, description = "The workflow's id."),
        ("after" = Option<u64>, Query, description = "Events after this sequence number (default 0: from the start)."),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "Page size (default 200)."),
        ("run" = Option<u32>, Query, minimum = 1, maximum = 2147483647, description = "An earlier run's history."),
    ),
    responses(
        (status = 200, body = HistoryPage),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
async fn history(
    State(service): Shared,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<HistoryPage>, ApiError> {
    let (mut after, mut limit, mut run) = (0u64, 200usize, None);
    for (key, value) in params(query.as_deref()) {
        match &*key {
            "after" => {
                after = value.parse().map_err(|_| {
                    ApiError::bad_request(format!("after: {value:?} is not a sequence number"))
                })?;
            }
            "limit" => limit = count_param("limit", &value, MAX_EVENTS)?,
            "run" => {
                let r: u32 = value.parse().ok().filter(|r| *r >= 1).ok_or_else(|| {
                    ApiError::bad_request(format!("run: {value:?} is not a run (1 or more)"))
                })?;
                run = Some(r);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}: say after, limit or run"
                )));
            }
        }
    }
    let id = WorkflowId::new(id);
    let events = match run {
        Some(run) => service.client().run_history(&id, run).await?,
        None => service
            .client()
            .storage()
            .load_history(&id, Seq::new(after))
            .await
            .map_err(ApiError::from)?,
    };
    let mut page: Vec<HistoryEvent> = Vec::with_capacity(limit.min(events.len()));
    let mut more = false;
    for e in events.into_iter().filter(|e| e.seq.get() > after) {
        if page.len() == limit {
            more = true;
            break;
        }
        page.push(event_json(&e)?);
    }
    Ok(Json(HistoryPage {
        next: if more {
            page.last().map(|e| e.seq)
        } else {
            None
        },
        events: page,
    }))
}

/// Where each of a workflow's tasks stands: why it is or is not moving.
#[utoipa::path(
    get,
    path = "/api/v1/workflows/{id}/tasks",
    params(("id" = String, Path, description = "The workflow's id.")),
    responses((status = 200, body = TasksView), (status = 404, body = ErrorBody))
)]
async fn tasks(
    State(service): Shared,
    Path(id): Path<String>,
) -> Result<Json<TasksView>, ApiError> {
    let id = WorkflowId::new(id);
    let summary = service.client().describe(&id).await?;
    let tasks = if summary.status.is_terminal() {
        Vec::new()
    } else {
        service.client().task_states(&id).await?
    };
    Ok(Json(TasksView {
        tasks: tasks
            .into_iter()
            .map(|t| TaskView {
                task: t.task,
                activity_id: t.activity_id,
                attempt: t.attempt,
                state: t.state.to_owned(),
                at: t.at.map(rfc3339),
                waited_ms: t.waited_ms,
                deliveries: t.deliveries,
                last_failure: t.last_failure,
            })
            .collect(),
    }))
}

/// A workflow's earlier runs.
#[utoipa::path(
    get,
    path = "/api/v1/workflows/{id}/runs",
    params(("id" = String, Path, description = "The workflow's id.")),
    responses((status = 200, body = RunsView), (status = 404, body = ErrorBody))
)]
async fn runs(State(service): Shared, Path(id): Path<String>) -> Result<Json<RunsView>, ApiError> {
    let runs = service.client().runs(&WorkflowId::new(id)).await?;
    Ok(Json(RunsView {
        runs: runs
            .into_iter()
            .map(|r| RunView {
                run: r.run,
                started_at: rfc3339(r.started_at),
                ended_at: rfc3339(r.ended_at),
                events: r.events,
            })
            .collect(),
    }))
}

/// Sends a signal.
#[utoipa::path(
    post,
    path = "/api/v1/workflows/{id}/signal",
    params(("id" = String, Path, description = "The workflow's id.")),
    request_body = SignalRequest,
    responses(
        (status = 202, body = Accepted),
        (status = 400, body = ErrorBody, description = "A payload the workflow does not take."),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The workflow has ended."),
        (status = 415, body = ErrorBody, description = "A body not sent as JSON."),
    )
)]
async fn signal(
    State(service): Shared,
    Path(id): Path<String>,
    Body(req): Body<SignalRequest>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let id = WorkflowId::new(id);
    if req.name.is_empty() {
        return Err(ApiError::bad_request("a signal needs a name"));
    }
    let payload = Payload::from_json(req.payload);
    service
        .client()
        .signal_checked(service.registry(), &id, &req.name, payload)
        .await?;
    Ok(accepted(id))
}

/// Asks a workflow to cancel: its code sees the request and decides how to end.
#[utoipa::path(
    post,
    path = "/api/v1/workflows/{id}/cancel",
    params(("id" = String, Path, description = "The workflow's id.")),
    request_body = ReasonRequest,
    responses(
        (status = 202, body = Accepted),
        (status = 400, body = ErrorBody, description = "A body that is not the request."),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The workflow has ended."),
        (status = 415, body = ErrorBody, description = "A body not sent as JSON."),
    )
)]
async fn cancel(
    State(service): Shared,
    Path(id): Path<String>,
    Body(req): Body<ReasonRequest>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let id = WorkflowId::new(id);
    service.client().cancel(&id, req.reason).await?;
    Ok(accepted(id))
}

/// Ends a workflow at once, without running its code.
#[utoipa::path(
    post,
    path = "/api/v1/workflows/{id}/terminate",
    params(("id" = String, Path, description = "The workflow's id.")),
    request_body = RequiredReason,
    responses(
        (status = 202, body = Accepted),
        (status = 400, body = ErrorBody, description = "No reason given, or a body that is not the request."),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The workflow has ended."),
        (status = 415, body = ErrorBody, description = "A body not sent as JSON."),
    )
)]
async fn terminate(
    State(service): Shared,
    Path(id): Path<String>,
    Body(req): Body<RequiredReason>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let id = WorkflowId::new(id);
    let reason = required_reason(req, "terminate")?;
    service.client().terminate(&id, &reason).await?;
    Ok(accepted(id))
}

/// Pauses a workflow: no workflow task of it runs until it is resumed.
#[utoipa::path(
    post,
    path = "/api/v1/workflows/{id}/pause",
    params(("id" = String, Path, description = "The workflow's id.")),
    request_body = RequiredReason,
    responses(
        (status = 202, body = Accepted),
        (status = 400, body = ErrorBody, description = "No reason given, or a body that is not the request."),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The workflow has ended."),
        (status = 415, body = ErrorBody, description = "A body not sent as JSON."),
    )
)]
async fn pause(
    State(service): Shared,
    Path(id): Path<String>,
    Body(req): Body<RequiredReason>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let id = WorkflowId::new(id);
    let reason = required_reason(req, "pause")?;
    service.client().pause(&id, &reason).await?;
    Ok(accepted(id))
}

/// Resumes a paused workflow.
#[utoipa::path(
    post,
    path = "/api/v1/workflows/{id}/resume",
    params(("id" = String, Path, description = "The workflow's id.")),
    request_body = ReasonRequest,
    responses(
        (status = 202, body = Accepted),
        (status = 400, body = ErrorBody, description = "The workflow is not paused, or a body that is not the request."),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The workflow has ended."),
        (status = 415, body = ErrorBody, description = "A body not sent as JSON."),
    )
)]
async fn resume(
    State(service): Shared,
    Path(id): Path<String>,
    Body(_): Body<ReasonRequest>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let id = WorkflowId::new(id);
    service.client().resume(&id).await?;
    Ok(accepted(id))
}

/// Reruns the current run, open or ended, from a workflow-task boundary with the serving
/// binary's code: a new run that keeps the history up to the point.
#[utoipa::path(
    post,
    path = "/api/v1/workflows/{id}/reset",
    params(("id" = String, Path, description = "The workflow's id.")),
    request_body = ResetRequest,
    responses(
        (status = 202, body = ResetAnswer),
        (status = 400, body = ErrorBody, description = "Not a reset point, no reason, or a body that is not the request."),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The run moved on meanwhile."),
        (status = 415, body = ErrorBody, description = "A body not sent as JSON."),
    )
)]
async fn reset(
    State(service): Shared,
    Path(id): Path<String>,
    Body(req): Body<ResetRequest>,
) -> Result<(StatusCode, Json<ResetAnswer>), ApiError> {
    let id = WorkflowId::new(id);
    let to = reset_to(&req.to).map_err(ApiError::bad_request)?;
    if req.reason.trim().is_empty() {
        return Err(ApiError::bad_request("to reset a workflow, give a reason"));
    }
    let done = service
        .client()
        .reset(&id, to, &req.reason, !req.no_signals)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ResetAnswer {
            id: id.as_str().to_owned(),
            run: done.run,
            point: done.point.get(),
        }),
    ))
}

/// A reset point as written: a sequence number, or `last-task`.
pub(crate) fn reset_to(text: &str) -> Result<loom_worker::ResetTo, String> {
    match text.trim() {
        "last-task" => Ok(loom_worker::ResetTo::LastTask),
        n => n
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= 1)
            .map(|n| loom_worker::ResetTo::Event(Seq::new(n)))
            .ok_or_else(|| format!("reset to {n:?}: say a sequence number or last-task")),
    }
}

/// Deletes closed workflows that ended long enough ago, a batch per call; never an open one.
#[utoipa::path(
    post,
    path = "/api/v1/purge",
    request_body = PurgeRequest,
    responses(
        (status = 200, body = Purged),
        (status = 400, body = ErrorBody, description = "An open status, a bad age or limit, or a body that is not the request."),
        (status = 415, body = ErrorBody, description = "A body not sent as JSON."),
    )
)]
async fn purge(
    State(service): Shared,
    Body(req): Body<PurgeRequest>,
) -> Result<Json<Purged>, ApiError> {
    let older_than = Duration::try_from_secs_f64(req.older_than_s)
        .ok()
        .filter(|_| req.older_than_s <= 3.0e9)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "older_than_s: {} is not a number of seconds",
                req.older_than_s
            ))
        })?;
    let status = req.status.map(WorkflowStatus::from);
    if let Some(s) = status.filter(|s| !s.is_terminal()) {
        return Err(ApiError::bad_request(format!(
            "a {s} workflow is open and is never purged"
        )));
    }
    let limit = req.limit.unwrap_or(500);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: {limit} is not from 1 to 10000"
        )));
    }
    let ids = service
        .client()
        .purge(&loom_storage::Purge {
            older_than,
            status,
            name: req.workflow_type,
            except_names: Vec::new(),
            limit,
        })
        .await?;
    Ok(Json(Purged {
        purged: ids.iter().map(|id| id.as_str().to_owned()).collect(),
    }))
}

/// Counts across the store.
#[utoipa::path(
    get,
    path = "/api/v1/stats",
    responses((status = 200, body = StatsView), (status = 401, body = ErrorBody))
)]
async fn stats(State(service): Shared) -> Result<Json<StatsView>, ApiError> {
    let s = service.client().storage().stats().await?;
    Ok(Json(StatsView {
        workflows: s
            .workflows
            .iter()
            .map(|(status, n)| (status.to_string(), *n))
            .collect(),
        events: s.events,
        workflow_tasks_ready: s.workflow_tasks_ready,
        workflow_tasks_running: s.workflow_tasks_running,
        activity_tasks_ready: s.activity_tasks_ready,
        activity_tasks_running: s.activity_tasks_running,
        activity_tasks_waiting: s.activity_tasks_waiting,
        messages_waiting: s.messages_waiting,
        oldest_ready_at: s.oldest_ready_at.map(rfc3339),
        next_due_at: s.next_due_at.map(rfc3339),
        at: rfc3339(s.at),
    }))
}

/// The workflow types and activities the serving binary registers.
#[utoipa::path(
    get,
    path = "/api/v1/types",
    responses((status = 200, body = TypesView), (status = 401, body = ErrorBody))
)]
async fn types(State(service): Shared) -> Json<TypesView> {
    let r = service.registry();
    let mut workflows: Vec<WorkflowType> = r
        .workflow_names()
        .map(|name| WorkflowType {
            name: name.to_owned(),
            versions: r.workflow_versions(name),
        })
        .collect();
    workflows.sort_by(|a, b| a.name.cmp(&b.name));
    let mut activities: Vec<String> = r.activity_names().map(str::to_owned).collect();
    activities.sort();
    Json(TypesView {
        workflows,
        activities,
    })
}

// ---- helpers ----

/// The parameters of a query string. An empty value is a value (and refused where it does not
/// fit), not an absent parameter.
fn params(
    query: Option<&str>,
) -> impl Iterator<Item = (std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
}

/// A parameter that must not be empty.
fn non_empty(name: &str, value: std::borrow::Cow<'_, str>) -> Result<String, ApiError> {
    if value.is_empty() {
        return Err(ApiError::bad_request(format!("{name}: give a value")));
    }
    Ok(value.into_owned())
}

fn accepted(id: WorkflowId) -> (StatusCode, Json<Accepted>) {
    (
        StatusCode::ACCEPTED,
        Json(Accepted {
            id: id.as_str().to_owned(),
        }),
    )
}

fn required_reason(req: RequiredReason, action: &str) -> Result<String, ApiError> {
    if req.reason.trim().is_empty() {
        return Err(ApiError::bad_request(format!(
            "to {action} a workflow, give a reason"
        )));
    }
    Ok(req.reason)
}

/// The latest time RFC 3339 writes: 9999-12-31T23:59:59.999Z, in milliseconds.
pub const LATEST_MS: i64 = 253_402_300_799_999;

/// A time as the API writes it: RFC 3339, UTC, milliseconds. Times past the year 9999 (a
/// timer set for ever, say) are written as its last millisecond, and times before 1970 as
/// 1970's first.
pub fn rfc3339(t: Timestamp) -> String {
    let ms = t.as_millis().clamp(0, LATEST_MS) as u64;
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// An RFC 3339 time, with an offset or `Z` (or without either, read as UTC).
pub(crate) fn time_param(name: &str, value: &str) -> Result<Timestamp, ApiError> {
    value
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
        .or_else(|| {
            let t = humantime::parse_rfc3339_weak(value).ok()?;
            i64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()
        })
        .map(Timestamp::from_millis)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{name}: {value:?} is not an RFC 3339 time such as 2026-12-06T10:00:00Z"
            ))
        })
}

fn count_param(name: &str, value: &str, max: usize) -> Result<usize, ApiError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            ApiError::bad_request(format!("{name}: {value:?} is not a number from 1 to {max}"))
        })
}

/// A list cursor as text: the last item's creation time in milliseconds, a dot, its id.
pub(crate) fn cursor_text(c: &ListCursor) -> String {
    format!("{}.{}", c.created_at.as_millis(), c.id.as_str())
}

pub(crate) fn parse_cursor(text: &str) -> Result<ListCursor, ApiError> {
    text.split_once('.')
        .and_then(|(ms, id)| {
            Some(ListCursor {
                created_at: Timestamp::from_millis(ms.parse().ok()?),
                id: WorkflowId::new(id),
            })
        })
        .ok_or_else(|| {
            ApiError::bad_request(format!("cursor: {text:?} is not a cursor this API gave"))
        })
}

/// Tags as a request sends them: strings (an RFC 3339 string is a time), whole numbers and
/// truth values, checked as a store holds them.
pub(crate) fn tags_from_json(json: BTreeMap<String, Value>) -> Result<Tags, ApiError> {
    let mut tags = Tags::new();
    for (key, value) in json {
        let value = match value {
            Value::String(s) => match TagValue::parse(&s) {
                t @ TagValue::Time(_) => t,
                _ => TagValue::Text(s),
            },
            Value::Bool(b) => TagValue::Bool(b),
            Value::Number(n) if n.as_i64().is_some() => {
                TagValue::Int(n.as_i64().unwrap_or_default())
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "tag {key:?}: a tag is a string, a whole number or true/false, not {other}"
                )));
            }
        };
        tags.insert(key, value);
    }
    loom_core::tags::check_tags(&tags).map_err(ApiError::bad_request)?;
    Ok(tags)
}

pub(crate) fn tags_json(tags: &Tags) -> BTreeMap<String, Value> {
    tags.iter().map(|(k, v)| (k.clone(), tag_json(v))).collect()
}

/// A tag's value as the API writes it: text, a whole number, a truth value, or a time as an
/// RFC 3339 string.
pub fn tag_json(v: &TagValue) -> Value {
    match v {
        TagValue::Text(s) => Value::from(s.clone()),
        TagValue::Int(n) => Value::from(*n),
        TagValue::Bool(b) => Value::from(*b),
        TagValue::Time(t) => Value::from(rfc3339(*t)),
    }
}

/// An event as the API writes it: its number, time and type, and the fields of its type.
pub(crate) fn event_json(e: &loom_core::Event) -> Result<HistoryEvent, ApiError> {
    let Ok(Value::Object(mut fields)) = serde_json::to_value(&e.kind) else {
        return Err(ApiError::internal(format!(
            "event {} cannot be written as a JSON object",
            e.seq
        )));
    };
    let event_type = match fields.remove("type") {
        Some(Value::String(t)) => t,
        _ => String::new(),
    };
    Ok(HistoryEvent {
        seq: e.seq.get(),
        at: rfc3339(e.at),
        event_type,
        fields: Value::Object(fields),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_time_is_written_as_rfc_3339() {
        assert_eq!(
            rfc3339(Timestamp::from_millis(0)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(Timestamp::from_millis(1_796_558_796_638)),
            "2026-12-06T12:06:36.638Z"
        );
        assert_eq!(
            rfc3339(Timestamp::MAX),
            "9999-12-31T23:59:59.999Z",
            "a timer set for ever"
        );
        assert_eq!(
            rfc3339(Timestamp::from_millis(-5)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn cursors_read_back_what_they_wrote() {
        let c = ListCursor {
            created_at: Timestamp::from_millis(42),
            id: WorkflowId::new("a.b/c"),
        };
        let back = parse_cursor(&cursor_text(&c)).expect("reads");
        assert_eq!((back.created_at, back.id), (c.created_at, c.id));
        assert!(parse_cursor("nodot").is_err());
        assert!(parse_cursor("x.y").is_err());
    }
}
