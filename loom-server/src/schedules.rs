//! The schedules of API version 1: list, create, describe, update, pause, unpause, trigger,
//! backfill and delete, each through the `Client`'s schedule operations. A schedule id is one
//! path segment, never holding `/`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use loom_core::{Payload, Timestamp};
use loom_storage::schedule::{
    FireSource, IntervalSpec, Outcome, Overlap, Schedule, ScheduleAction, SchedulePolicy,
    ScheduleSpec,
};
use loom_worker::{ScheduleDefinition, ScheduleDescription};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::api::{Body, Status, Workflow, rfc3339, tags_from_json, tags_json, time_param};
use crate::error::ErrorBody;
use crate::{ApiError, Service};

type Shared = State<Arc<Service>>;

/// The most schedules one page of a list holds.
pub const MAX_SCHEDULES: usize = 1_000;

/// The routes of the schedules.
pub(crate) fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/api/v1/schedules", get(list).post(create))
        .route(
            "/api/v1/schedules/{id}",
            get(describe).put(update).delete(delete),
        )
        .route("/api/v1/schedules/{id}/pause", post(pause))
        .route("/api/v1/schedules/{id}/unpause", post(unpause))
        .route("/api/v1/schedules/{id}/trigger", post(trigger))
        .route("/api/v1/schedules/{id}/backfill", post(backfill))
}

/// What a fire does while a workflow the schedule started still runs.
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Do not start it (counted as skipped).
    Skip,
    /// Start it once the running one ends; while one waits, later fires are skipped.
    BufferOne,
    /// Start each in turn, one after another ends.
    BufferAll,
    /// Start it anyway.
    AllowAll,
    /// Ask the running one to cancel, and start this fire once it has ended.
    CancelOther,
    /// Terminate the running one and start this fire at once.
    TerminateOther,
}

impl From<Overlap> for OverlapPolicy {
    fn from(o: Overlap) -> Self {
        match o {
            Overlap::Skip => OverlapPolicy::Skip,
            Overlap::BufferOne => OverlapPolicy::BufferOne,
            Overlap::BufferAll => OverlapPolicy::BufferAll,
            Overlap::AllowAll => OverlapPolicy::AllowAll,
            Overlap::CancelOther => OverlapPolicy::CancelOther,
            Overlap::TerminateOther => OverlapPolicy::TerminateOther,
        }
    }
}

impl From<OverlapPolicy> for Overlap {
    fn from(o: OverlapPolicy) -> Self {
        match o {
            OverlapPolicy::Skip => Overlap::Skip,
            OverlapPolicy::BufferOne => Overlap::BufferOne,
            OverlapPolicy::BufferAll => Overlap::BufferAll,
            OverlapPolicy::AllowAll => Overlap::AllowAll,
            OverlapPolicy::CancelOther => Overlap::CancelOther,
            OverlapPolicy::TerminateOther => Overlap::TerminateOther,
        }
    }
}

/// An interval from the Unix epoch.
#[derive(Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Interval {
    /// Its period in milliseconds, at least a second.
    #[schema(minimum = 1000, maximum = 9007199254740991_u64)]
    pub every_ms: u64,
    /// Its offset in milliseconds, less than the period.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9007199254740991_u64)]
    pub offset_ms: u64,
}

/// A schedule as a create or an update sends it. An update replaces everything: what it
/// leaves out takes its default.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// Its id (to create; an update names it in its path): not `.` or `..`, without `/` or
    /// NUL, 1 to 200 bytes.
    #[schema(pattern = r"^[^/\u0000]+$", max_length = 200)]
    pub id: Option<String>,
    /// The workflow type it starts, as registered in the serving binary.
    #[serde(rename = "type")]
    #[schema(min_length = 1)]
    pub workflow_type: String,
    /// Its input, checked against the type.
    #[serde(default)]
    pub input: Value,
    /// The version of the type; the newest the firing worker knows when absent.
    #[schema(minimum = 1, maximum = 2147483647)]
    pub version: Option<u32>,
    /// Cron expressions: five fields, or six with seconds first.
    #[serde(default)]
    pub cron: Vec<String>,
    /// The IANA time zone of the cron expressions; UTC when absent.
    pub timezone: Option<String>,
    /// Intervals from the Unix epoch.
    #[serde(default)]
    pub intervals: Vec<Interval>,
    /// No fire before this time.
    #[schema(format = DateTime)]
    pub start_at: Option<String>,
    /// No fire after this time.
    #[schema(format = DateTime)]
    pub end_at: Option<String>,
    /// Each fire is delayed by up to this many milliseconds.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9007199254740991_u64)]
    pub jitter_ms: u64,
    /// What a fire does while a workflow it started runs; `skip` when absent.
    pub overlap: Option<OverlapPolicy>,
    /// How old a missed fire may be and still be taken; a year when absent.
    #[schema(minimum = 0, maximum = 9007199254740991_u64)]
    pub catchup_window_ms: Option<u64>,
    /// The started workflows' ids: `{schedule}` and `{time}` are replaced; `{time}` is
    /// required. `{schedule}-{time}` when absent.
    pub id_pattern: Option<String>,
    /// Tags each started workflow carries: strings (an RFC 3339 string is a time), whole
    /// numbers and truth values.
    #[serde(default)]
    pub tags: BTreeMap<String, Value>,
    /// Create it paused (create only).
    #[serde(default)]
    pub paused: bool,
}

impl ScheduleRequest {
    fn definition(self) -> Result<(Option<String>, bool, ScheduleDefinition), ApiError> {
        let time = |name: &str, v: Option<String>| v.map(|v| time_param(name, &v)).transpose();
        let def = ScheduleDefinition {
            spec: ScheduleSpec {
                cron: self.cron,
                timezone: self.timezone.unwrap_or_else(|| "UTC".into()),
                intervals: self
                    .intervals
                    .into_iter()
                    .map(|i| IntervalSpec {
                        every_ms: i.every_ms,
                        offset_ms: i.offset_ms,
                    })
                    .collect(),
                start_at: time("start_at", self.start_at)?,
                end_at: time("end_at", self.end_at)?,
                jitter_ms: self.jitter_ms,
            },
            action: ScheduleAction {
                workflow: self.workflow_type,
                version: self.version,
                input: Payload::from_json(self.input),
                id_pattern: self
                    .id_pattern
                    .unwrap_or_else(|| loom_storage::schedule::DEFAULT_ID_PATTERN.into()),
                tags: tags_from_json(self.tags)?,
            },
            policy: SchedulePolicy {
                overlap: self.overlap.map_or(Overlap::Skip, Overlap::from),
                catchup_window_ms: self
                    .catchup_window_ms
                    .unwrap_or(SchedulePolicy::default().catchup_window_ms),
            },
        };
        Ok((self.id, self.paused, def))
    }
}

/// What a schedule counted.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Counts {
    /// Workflows started.
    pub started: u64,
    /// Fires skipped by the overlap policy.
    pub skipped: u64,
    /// Fires older than the catch-up window.
    pub missed: u64,
    /// Fires whose workflow existed already.
    pub already_started: u64,
    /// Running workflows asked to cancel.
    pub cancelled: u64,
    /// Running workflows terminated.
    pub terminated: u64,
}

/// A schedule as stored.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ScheduleView {
    /// Its id.
    pub id: String,
    /// Bumped by every write.
    pub version: u64,
    /// The workflow type it starts.
    #[serde(rename = "type")]
    pub workflow_type: String,
    /// The type's version, if pinned.
    pub workflow_version: Option<u32>,
    /// The input of each workflow it starts.
    pub input: Value,
    /// The started workflows' ids.
    pub id_pattern: String,
    /// The tags of each started workflow, besides `loom.schedule` and `loom.scheduled_at`.
    pub tags: BTreeMap<String, Value>,
    /// Its cron expressions.
    pub cron: Vec<String>,
    /// Their time zone.
    pub timezone: String,
    /// Its intervals.
    pub intervals: Vec<Interval>,
    /// No fire before this time.
    #[schema(format = DateTime)]
    pub start_at: Option<String>,
    /// No fire after this time.
    #[schema(format = DateTime)]
    pub end_at: Option<String>,
    /// The most each fire is delayed, in milliseconds.
    pub jitter_ms: u64,
    /// Its overlap policy.
    pub overlap: OverlapPolicy,
    /// Its catch-up window, in milliseconds.
    pub catchup_window_ms: u64,
    /// Whether it is paused.
    pub paused: bool,
    /// Why it was paused, or a note.
    pub note: String,
    /// When it was created.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When it was last written.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// When a worker looks at it next.
    #[schema(format = DateTime)]
    pub wake_at: Option<String>,
    /// Its fire times up to this one are dealt with.
    #[schema(format = DateTime)]
    pub processed: String,
    /// What it counted.
    pub counts: Counts,
    /// The fires waiting for a running workflow to end (their nominal times).
    pub buffered: Vec<String>,
    /// Its last missed fire times.
    pub missed: Vec<String>,
    /// Fires asked for by hand that no worker has dealt with yet.
    pub pending_triggers: usize,
    /// Backfills no worker has finished yet.
    pub pending_backfills: usize,
}

impl From<&Schedule> for ScheduleView {
    fn from(s: &Schedule) -> Self {
        let c = &s.state.counts;
        ScheduleView {
            id: s.id.clone(),
            version: s.version,
            workflow_type: s.action.workflow.clone(),
            workflow_version: s.action.version,
            input: s.action.input.clone().into_json(),
            id_pattern: s.action.id_pattern.clone(),
            tags: tags_json(&s.action.tags),
            cron: s.spec.cron.clone(),
            timezone: s.spec.timezone.clone(),
            intervals: s
                .spec
                .intervals
                .iter()
                .map(|i| Interval {
                    every_ms: i.every_ms,
                    offset_ms: i.offset_ms,
                })
                .collect(),
            start_at: s.spec.start_at.map(rfc3339),
            end_at: s.spec.end_at.map(rfc3339),
            jitter_ms: s.spec.jitter_ms,
            overlap: s.policy.overlap.into(),
            catchup_window_ms: s.policy.catchup_window_ms,
            paused: s.paused,
            note: s.note.clone(),
            created_at: rfc3339(s.created_at),
            updated_at: rfc3339(s.updated_at),
            wake_at: s.wake_at.map(rfc3339),
            processed: rfc3339(s.state.processed),
            counts: Counts {
                started: c.started,
                skipped: c.skipped,
                missed: c.missed,
                already_started: c.already_started,
                cancelled: c.cancelled,
                terminated: c.terminated,
            },
            buffered: s.state.buffer.iter().map(|f| rfc3339(f.nominal)).collect(),
            missed: s.state.missed.iter().copied().map(rfc3339).collect(),
            pending_triggers: s.state.triggers.len(),
            pending_backfills: s.state.backfills.len(),
        }
    }
}

impl ScheduleView {
    /// The definition this view shows: what an update starts from, read as an update's body
    /// is.
    pub fn definition(&self) -> Result<ScheduleDefinition, ApiError> {
        let request = ScheduleRequest {
            id: None,
            workflow_type: self.workflow_type.clone(),
            input: self.input.clone(),
            version: self.workflow_version,
            cron: self.cron.clone(),
            timezone: Some(self.timezone.clone()),
            intervals: self.intervals.clone(),
            start_at: self.start_at.clone(),
            end_at: self.end_at.clone(),
            jitter_ms: self.jitter_ms,
            overlap: Some(self.overlap),
            catchup_window_ms: Some(self.catchup_window_ms),
            id_pattern: Some(self.id_pattern.clone()),
            tags: self.tags.clone(),
            paused: false,
        };
        Ok(request.definition()?.2)
    }
}

/// The body of a create (with `id`) or an update (without) of `def`, as
/// [`ScheduleRequest`] reads it.
pub fn request_json(id: Option<&str>, def: &ScheduleDefinition, paused: bool) -> Value {
    serde_json::json!({
        "id": id,
        "type": def.action.workflow,
        "input": def.action.input.as_json(),
        "version": def.action.version,
        "cron": def.spec.cron,
        "timezone": def.spec.timezone,
        "intervals": def.spec.intervals.iter().map(|i| serde_json::json!({
            "every_ms": i.every_ms, "offset_ms": i.offset_ms,
        })).collect::<Vec<_>>(),
        "start_at": def.spec.start_at.map(rfc3339),
        "end_at": def.spec.end_at.map(rfc3339),
        "jitter_ms": def.spec.jitter_ms,
        "overlap": OverlapPolicy::from(def.policy.overlap),
        "catchup_window_ms": def.policy.catchup_window_ms,
        "id_pattern": def.action.id_pattern,
        "tags": tags_json(&def.action.tags),
        "paused": paused,
    })
}

/// One page of schedules, by id.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SchedulePage {
    /// The schedules.
    pub schedules: Vec<ScheduleView>,
    /// The `after` of the next page, if there may be one.
    pub next: Option<String>,
}

/// One of a schedule's last actions.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ActionView {
    /// The fire's nominal time.
    #[schema(format = DateTime)]
    pub nominal: String,
    /// Where it came from: `scheduled`, `trigger` or `backfill`.
    pub source: String,
    /// When it was dealt with.
    #[schema(format = DateTime)]
    pub at: String,
    /// `started`, `already_started`, `skipped` or `missed`.
    pub outcome: String,
    /// The workflow it started, or found started.
    pub workflow: Option<String>,
    /// That workflow's status now, if it still exists.
    pub status: Option<Status>,
}

/// A schedule, with what it will do and what it did.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ScheduleDescribed {
    /// The schedule.
    pub schedule: ScheduleView,
    /// Its next ten fire times (none while paused).
    pub upcoming: Vec<String>,
    /// The workflows it started that are still open.
    pub running: Vec<Workflow>,
    /// Its last actions, oldest first.
    pub recent: Vec<ActionView>,
}

impl From<ScheduleDescription> for ScheduleDescribed {
    fn from(d: ScheduleDescription) -> Self {
        ScheduleDescribed {
            schedule: (&d.schedule).into(),
            upcoming: d.upcoming.into_iter().map(rfc3339).collect(),
            running: d.running.into_iter().map(Workflow::from).collect(),
            recent: d
                .recent
                .into_iter()
                .map(|r| {
                    let (outcome, workflow) = match r.action.outcome {
                        Outcome::Started { workflow } => ("started", Some(workflow)),
                        Outcome::AlreadyStarted { workflow } => ("already_started", Some(workflow)),
                        Outcome::Skipped => ("skipped", None),
                        Outcome::Missed => ("missed", None),
                    };
                    ActionView {
                        nominal: rfc3339(r.action.fire.nominal),
                        source: match r.action.fire.source {
                            FireSource::Scheduled => "scheduled",
                            FireSource::Trigger => "trigger",
                            FireSource::Backfill => "backfill",
                        }
                        .into(),
                        at: rfc3339(r.action.at),
                        outcome: outcome.into(),
                        workflow: workflow.map(|w| w.as_str().to_owned()),
                        status: r.status.map(Status::from),
                    }
                })
                .collect(),
        }
    }
}

/// A note with a pause or an unpause.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteRequest {
    /// The note, without NUL characters.
    #[schema(pattern = r"^[^\u0000]*$")]
    pub note: Option<String>,
}

/// A range of past fire times to run.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    /// The first time.
    #[schema(format = DateTime)]
    pub from: String,
    /// The last time, not before `from`.
    #[schema(format = DateTime)]
    pub to: String,
}

/// A schedule was deleted.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    /// Its id.
    pub id: String,
}

fn note(body: NoteRequest) -> Result<String, ApiError> {
    let note = body.note.unwrap_or_default();
    if note.contains('\0') {
        return Err(ApiError::bad_request(
            "a note cannot contain a NUL character",
        ));
    }
    Ok(note)
}

/// Lists schedules by id, a page at a time.
#[utoipa::path(
    operation_id = "list_schedules",
    get,
    path = "/api/v1/schedules",
    params(
        ("after" = Option<String>, Query, description = "Schedules after this id (a page's `next`)."),
        ("limit" = Option<usize>, Query, description = "At most this many (1 to 1000; 100 when absent).", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, body = SchedulePage),
        (status = 400, body = ErrorBody, description = "A parameter that is not understood."),
    )
)]
async fn list(
    State(service): Shared,
    RawQuery(query): RawQuery,
) -> Result<Json<SchedulePage>, ApiError> {
    let mut after = None;
    let mut limit = 100;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "after" => after = Some(value.into_owned()),
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_SCHEDULES).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit: {value:?} is not a number from 1 to {MAX_SCHEDULES}"
                        ))
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}: say after or limit"
                )));
            }
        }
    }
    let schedules = service.client().schedules(after.as_deref(), limit).await?;
    let next = (schedules.len() == limit)
        .then(|| schedules.last().map(|s| s.id.clone()))
        .flatten();
    Ok(Json(SchedulePage {
        schedules: schedules.iter().map(ScheduleView::from).collect(),
        next,
    }))
}

/// Creates a schedule, checked against the serving binary's types.
#[utoipa::path(
    operation_id = "create_schedule",
    post,
    path = "/api/v1/schedules",
    request_body = ScheduleRequest,
    responses(
        (status = 201, body = ScheduleView, links(
            ("describe_schedule" = (operation_id = "describe_schedule", parameters(("id" = "$response.body#/id")))),
            ("trigger_schedule" = (operation_id = "trigger_schedule", parameters(("id" = "$response.body#/id")))),
            ("pause_schedule" = (operation_id = "pause_schedule", parameters(("id" = "$response.body#/id"))))
        )),
        (status = 400, body = ErrorBody, description = "A malformed spec, an unknown time zone or type, input that does not fit, no id."),
        (status = 409, body = ErrorBody, description = "A schedule has the id."),
        (status = 415, body = ErrorBody, description = "A body not sent as JSON."),
    )
)]
async fn create(
    State(service): Shared,
    Body(req): Body<ScheduleRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let (id, paused, def) = req.definition()?;
    let Some(id) = id else {
        return Err(ApiError::bad_request("a schedule to create needs an id"));
    };
    let s = service
        .client()
        .create_schedule(service.registry(), &id, def, paused)
        .await?;
    Ok((StatusCode::CREATED, Json(ScheduleView::from(&s))))
}

/// A schedule, its next ten fire times, the workflows it started that still run, and its last
/// actions with their workflows' statuses.
#[utoipa::path(
    operation_id = "describe_schedule",
    get,
    path = "/api/v1/schedules/{id}",
    params(("id" = String, Path, description = "The schedule's id.")),
    responses(
        (status = 200, body = ScheduleDescribed),
        (status = 404, body = ErrorBody),
    )
)]
async fn describe(
    State(service): Shared,
    Path(id): Path<String>,
) -> Result<Json<ScheduleDescribed>, ApiError> {
    Ok(Json(service.client().describe_schedule(&id).await?.into()))
}

/// Replaces a schedule's spec, action and policies; fires of the new spec are taken from now
/// on.
#[utoipa::path(
    operation_id = "update_schedule",
    put,
    path = "/api/v1/schedules/{id}",
    params(("id" = String, Path, description = "The schedule's id.")),
    request_body = ScheduleRequest,
    responses(
        (status = 200, body = ScheduleView),
        (status = 400, body = ErrorBody, description = "A malformed spec, an unknown time zone or type, input that does not fit, another id in the body."),
        (status = 404, body = ErrorBody),
        (status = 415, body = ErrorBody, description = "A body not sent as JSON."),
    )
)]
async fn update(
    State(service): Shared,
    Path(id): Path<String>,
    Body(req): Body<ScheduleRequest>,
) -> Result<Json<ScheduleView>, ApiError> {
    let (body_id, paused, def) = req.definition()?;
    if body_id.as_ref().is_some_and(|b| *b != id) {
        return Err(ApiError::bad_request(
            "the body names another schedule than the path",
        ));
    }
    if paused {
        return Err(ApiError::bad_request(
            "an update does not pause: POST .../pause",
        ));
    }
    let s = service
        .client()
        .update_schedule(service.registry(), &id, def)
        .await?;
    Ok(Json(ScheduleView::from(&s)))
}

/// Pauses a schedule: its fire times pass without starting anything until it is unpaused.
#[utoipa::path(
    operation_id = "pause_schedule",
    post,
    path = "/api/v1/schedules/{id}/pause",
    params(("id" = String, Path, description = "The schedule's id.")),
    request_body = NoteRequest,
    responses(
        (status = 200, body = ScheduleView),
        (status = 400, body = ErrorBody, description = "A body that is not the request."),
        (status = 404, body = ErrorBody),
        (status = 415, body = ErrorBody, description = "A body not sent as JSON."),
    )
)]
async fn pause(
    State(service): Shared,
    Path(id): Path<String>,
    Body(body): Body<NoteRequest>,
) -> Result<Json<ScheduleView>, ApiError> {
    let note = note(body)?;
    let s = service.client().pause_schedule(&id, &note).await?;
    Ok(Json(ScheduleView::from(&s)))
}

/// Lets a paused schedule fire again, from now on.
#[utoipa::path(
    operation_id = "unpause_schedule",
    post,
    path = "/api/v1/schedules/{id}/unpause",
    params(("id" = String, Path, description = "The schedule's id.")),
    request_body = NoteRequest,
    responses(
        (status = 200, body = ScheduleView),
        (status = 400, body = ErrorBody, description = "A body that is not the request."),
        (status = 404, body = ErrorBody),
        (status = 415, body = ErrorBody, description = "A body not sent as JSON."),
    )
)]
async fn unpause(
    State(service): Shared,
    Path(id): Path<String>,
    Body(body): Body<NoteRequest>,
) -> Result<Json<ScheduleView>, ApiError> {
    let note = note(body)?;
    let s = service.client().unpause_schedule(&id, &note).await?;
    Ok(Json(ScheduleView::from(&s)))
}

/// Fires a schedule now, under its overlap policy.
#[utoipa::path(
    operation_id = "trigger_schedule",
    post,
    path = "/api/v1/schedules/{id}/trigger",
    params(("id" = String, Path, description = "The schedule's id.")),
    responses(
        (status = 200, body = ScheduleView),
        (status = 404, body = ErrorBody),
    )
)]
async fn trigger(
    State(service): Shared,
    Path(id): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let s = service.client().trigger_schedule(&id).await?;
    Ok(Json(ScheduleView::from(&s)))
}

/// Runs a schedule's fire times in a past range, under its overlap policy and whatever its
/// catch-up window.
#[utoipa::path(
    operation_id = "backfill_schedule",
    post,
    path = "/api/v1/schedules/{id}/backfill",
    params(("id" = String, Path, description = "The schedule's id.")),
    request_body = BackfillRequest,
    responses(
        (status = 200, body = ScheduleView),
        (status = 400, body = ErrorBody, description = "Times that are not RFC 3339, or `to` before `from`."),
        (status = 404, body = ErrorBody),
        (status = 415, body = ErrorBody, description = "A body not sent as JSON."),
    )
)]
async fn backfill(
    State(service): Shared,
    Path(id): Path<String>,
    Body(req): Body<BackfillRequest>,
) -> Result<Json<ScheduleView>, ApiError> {
    let from: Timestamp = time_param("from", &req.from)?;
    let to: Timestamp = time_param("to", &req.to)?;
    let s = service.client().backfill_schedule(&id, from, to).await?;
    Ok(Json(ScheduleView::from(&s)))
}

/// Deletes a schedule; the workflows it started are left as they are.
#[utoipa::path(
    operation_id = "delete_schedule",
    delete,
    path = "/api/v1/schedules/{id}",
    params(("id" = String, Path, description = "The schedule's id.")),
    responses(
        (status = 200, body = Deleted),
        (status = 404, body = ErrorBody),
    )
)]
async fn delete(State(service): Shared, Path(id): Path<String>) -> Result<Json<Deleted>, ApiError> {
    service.client().delete_schedule(&id).await?;
    Ok(Json(Deleted { id }))
}

/// The paths and schemas of this module, for the API's document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        list, create, describe, update, pause, unpause, trigger, backfill, delete
    ),
    components(schemas(
        OverlapPolicy,
        Interval,
        ScheduleRequest,
        Counts,
        ScheduleView,
        SchedulePage,
        ActionView,
        ScheduleDescribed,
        NoteRequest,
        BackfillRequest,
        Deleted
    ))
)]
pub struct ScheduleDoc;
