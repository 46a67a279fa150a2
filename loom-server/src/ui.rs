//! The dashboard: pages rendered on the server from askama templates (checked when the crate
//! compiles, HTML-escaped by default, so a payload or a name holding markup shows as text),
//! with htmx for live refresh, paging of long histories and actions with confirmation. Every
//! page's state is in its URL; the assets are compiled into the binary.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use loom_core::{Payload, Seq, TagValue, Tags, Timestamp, WorkflowId};
use loom_storage::{ListQuery, StorageError, TagFilter, WorkflowStatus};
use loom_worker::ClientError;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde_json::Value;

use crate::Service;
use crate::api::rfc3339;

type Shared = State<Arc<Service>>;

/// Events on one page of a workflow's history.
pub(crate) const EVENTS_PAGE: usize = 100;
/// Workflows on one page of the list.
const LIST_PAGE: usize = 50;
/// What a wrong token at the sign-in form costs.
const WRONG_TOKEN_DELAY: Duration = Duration::from_millis(500);
/// How far back the stats page's throughput chart looks.
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(300);

pub(crate) fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/workflows") }))
        .route("/workflows", get(list_page))
        .route("/workflows/{id}", get(workflow_page))
        .route("/workflows/{id}/events", get(events_fragment))
        .route("/workflows/{id}/signal", post(signal_action))
        .route("/workflows/{id}/cancel", post(cancel_action))
        .route("/workflows/{id}/terminate", post(terminate_action))
        .route("/workflows/{id}/pause", post(pause_action))
        .route("/workflows/{id}/resume", post(resume_action))
        .route("/workflows/{id}/reset", post(reset_action))
        .merge(crate::schedule_pages::routes())
        .route("/stats", get(stats_page))
        .route("/types", get(types_page))
        .route("/login", get(login_page).post(login))
        .route("/assets/htmx.min.js", get(htmx))
        .route("/assets/loom.css", get(css))
        .layer(axum::middleware::map_response(secure_headers))
}

/// What every page and fragment is sent with: a content security policy allowing only the
/// service's own scripts and styles (no inline script, no eval), no sniffing, no framing.
async fn secure_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

async fn htmx() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_bytes!("../assets/htmx.min.js").as_slice(),
    )
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../assets/loom.css"),
    )
}

// ---- errors ----

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    title: String,
    message: String,
}

/// A page that could not be shown: its status and a sentence.
pub(crate) struct PageError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = match self.0 {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::BAD_REQUEST => "Bad request",
            StatusCode::SERVICE_UNAVAILABLE => "The database is unavailable",
            _ => "Something went wrong",
        };
        let page = ErrorPage {
            title: title.to_owned(),
            message: self.1,
        };
        (self.0, render(&page)).into_response()
    }
}

impl From<ClientError> for PageError {
    fn from(e: ClientError) -> Self {
        PageError(crate::error::client_status(&e).0, e.to_string())
    }
}

impl From<StorageError> for PageError {
    fn from(e: StorageError) -> Self {
        ClientError::Storage(e).into()
    }
}

pub(crate) fn render(t: &impl Template) -> Html<String> {
    Html(t.render().unwrap_or_else(|e| {
        tracing::error!(error = %e, "a page failed to render");
        format!("<p>This page could not be rendered: {e}</p>")
    }))
}

// ---- the list ----

#[derive(Template)]
#[template(path = "list.html")]
struct ListPage {
    id: String,
    statuses: Vec<(String, bool)>,
    types: Vec<(String, bool)>,
    tag: String,
    created_after: String,
    created_before: String,
    live: bool,
    error: Option<String>,
    rows: Vec<Row>,
    self_url: String,
    first_url: Option<String>,
    next_url: Option<String>,
}

struct Row {
    id: String,
    path: String,
    workflow_type: String,
    status: String,
    step: String,
    created: String,
    updated: String,
    tags: String,
}

async fn list_page(State(service): Shared, RawQuery(query): RawQuery) -> Response {
    let params: Vec<(String, String)> =
        form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    };
    let (id, status, ty, tag) = (get("id"), get("status"), get("type"), get("tag"));
    let (after, before, cursor) = (get("created_after"), get("created_before"), get("cursor"));
    let live = get("live") == "1";
    let mut errors = Vec::new();
    // The page's status: 404 for an id that names nothing, 400 for a filter that does not
    // read, the store's own for a store that failed.
    let mut code = StatusCode::OK;
    if !id.is_empty() {
        match service
            .client()
            .describe(&WorkflowId::new(id.clone()))
            .await
        {
            Ok(_) => return Redirect::to(&format!("/workflows/{}", path(&id))).into_response(),
            Err(ClientError::Storage(StorageError::NotFound(_))) => {
                code = StatusCode::NOT_FOUND;
                errors.push(format!("No workflow has the id {id:?}."));
            }
            Err(e) => {
                code = crate::error::client_status(&e).0;
                errors.push(e.to_string());
            }
        }
    }
    let found_nothing = !errors.is_empty();
    let mut q = ListQuery {
        limit: LIST_PAGE,
        ..ListQuery::default()
    };
    if !status.is_empty() {
        match status.parse::<WorkflowStatus>() {
            Ok(s) => q.status = Some(s),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !ty.is_empty() {
        q.name = Some(ty.clone());
    }
    if !tag.is_empty() {
        match TagFilter::parse(&tag) {
            Ok(f) => q.tags.push(f),
            Err(e) => errors.push(e),
        }
    }
    for (value, slot, name) in [
        (&after, &mut q.created_after, "Created after"),
        (&before, &mut q.created_before, "Created before"),
    ] {
        if !value.is_empty() {
            match local_time(value) {
                Some(t) => *slot = Some(t),
                None => errors.push(format!("{name}: {value:?} is not a date and time")),
            }
        }
    }
    if !cursor.is_empty() {
        match crate::api::parse_cursor(&cursor) {
            Ok(c) => q.after = Some(c),
            Err(_) => errors.push("That page is not one this server gave.".to_owned()),
        }
    }
    if errors.len() > usize::from(found_nothing) {
        code = StatusCode::BAD_REQUEST;
    }
    let (rows, next) = if code != StatusCode::OK && code != StatusCode::NOT_FOUND {
        (Vec::new(), None)
    } else {
        match service.client().list(&q).await {
            Ok(page) => (
                page.items
                    .into_iter()
                    .map(|s| Row {
                        path: path(s.id.as_str()),
                        id: s.id.as_str().to_owned(),
                        workflow_type: s.name,
                        status: s.status.to_string(),
                        step: s.progress.and_then(|p| p.current_step).unwrap_or_default(),
                        created: time(s.created_at),
                        updated: time(s.updated_at),
                        tags: tags_text(&s.tags),
                    })
                    .collect(),
                page.next.as_ref().map(crate::api::cursor_text),
            ),
            Err(e) => {
                code = crate::error::client_status(&e).0;
                errors.push(e.to_string());
                (Vec::new(), None)
            }
        }
    };
    let filters: Vec<(&'static str, String)> = [
        ("status", status.clone()),
        ("type", ty.clone()),
        ("tag", tag.clone()),
        ("created_after", after.clone()),
        ("created_before", before.clone()),
        ("live", if live { "1".to_owned() } else { String::new() }),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .collect();
    let url = |extra: Option<(&str, &str)>| {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in filters.iter().map(|(k, v)| (*k, v.as_str())).chain(extra) {
            ser.append_pair(k, v);
        }
        let q = ser.finish();
        if q.is_empty() {
            "/workflows".to_owned()
        } else {
            format!("/workflows?{q}")
        }
    };
    let mut names: Vec<&str> = service.registry().workflow_names().collect();
    names.sort_unstable();
    let page = ListPage {
        statuses: WorkflowStatus::ALL
            .iter()
            .map(|s| (s.to_string(), s.to_string() == status))
            .collect(),
        types: names.iter().map(|n| ((*n).to_owned(), *n == ty)).collect(),
        id: if found_nothing { id } else { String::new() },
        tag,
        created_after: after,
        created_before: before,
        live: live && cursor.is_empty(),
        error: (!errors.is_empty()).then(|| errors.join(" ")),
        rows,
        self_url: url(None),
        first_url: (!cursor.is_empty()).then(|| url(None)),
        next_url: next.map(|c| url(Some(("cursor", &c)))),
    };
    (code, render(&page)).into_response()
}

/// A time from a `datetime-local` field (UTC, with or without seconds) or RFC 3339.
fn local_time(text: &str) -> Option<Timestamp> {
    let text = if text.len() == 16 {
        format!("{text}:00")
    } else {
        text.to_owned()
    };
    crate::api::time_param("time", &text).ok()
}

// ---- one workflow ----

#[derive(Template)]
#[template(path = "workflow.html")]
struct WorkflowPage {
    w: WorkflowView,
    open: bool,
    /// The run's reset points, newest first (the last fifty).
    reset_points: Vec<u64>,
    events: Vec<EventRow>,
    more_after: Option<u64>,
    path: String,
    t0: i64,
}

struct WorkflowView {
    id: String,
    path: String,
    workflow_type: String,
    version: u32,
    run: u32,
    status: String,
    step: Option<String>,
    created: String,
    updated: String,
    closed: Option<String>,
    pause_reason: Option<String>,
    parent: Option<(String, String)>,
    tags: String,
    awaiting: String,
    awaited_first: Option<String>,
    input: String,
    state: Option<String>,
    output: Option<String>,
    failure: Option<String>,
    tasks: Vec<TaskRow>,
    timers: Vec<String>,
    children: Vec<(String, String, String)>,
    runs: Vec<String>,
    logs: Vec<String>,
}

struct TaskRow {
    task: String,
    attempt: String,
    state: String,
    at: String,
    last_failure: String,
}

#[derive(Template)]
#[template(path = "events.html")]
struct EventsFragment {
    events: Vec<EventRow>,
    more_after: Option<u64>,
    path: String,
    /// The run's first event's time, in milliseconds: what the offsets count from.
    t0: i64,
}

struct EventRow {
    seq: u64,
    at: String,
    offset: String,
    event_type: String,
    kind: &'static str,
    brief: String,
    json: String,
}

async fn workflow_page(
    State(service): Shared,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let client = service.client();
    let wid = WorkflowId::new(id.clone());
    let s = client.describe(&wid).await?;
    let open = !s.status.is_terminal();
    let tasks = if open {
        client.task_states(&wid).await?
    } else {
        Vec::new()
    };
    let children = client
        .list(&ListQuery {
            parent: Some(wid.clone()),
            limit: 50,
            ..ListQuery::default()
        })
        .await?;
    let runs = client.runs(&wid).await.unwrap_or_default();
    let logs = client.storage().logs(&wid).await.unwrap_or_default();
    let history = client.storage().load_history(&wid, Seq::ZERO).await?;
    let start = history.first().map_or(s.created_at, |e| e.at);
    let (events, more_after) = event_rows(&history, 0, start);
    let progress = s.progress.as_ref();
    let awaiting: Vec<String> = progress
        .map(|p| p.awaiting_signals.clone())
        .unwrap_or_default();
    let w = WorkflowView {
        path: path(&id),
        id,
        workflow_type: s.name.clone(),
        version: s.version,
        run: s.run,
        status: s.status.to_string(),
        step: progress.and_then(|p| p.current_step.clone()),
        created: time(s.created_at),
        updated: time(s.updated_at),
        closed: s.closed_at.map(time),
        pause_reason: s.pause_reason.clone(),
        parent: s
            .parent
            .as_ref()
            .map(|p| (p.as_str().to_owned(), path(p.as_str()))),
        tags: tags_text(&s.tags),
        awaited_first: awaiting.first().cloned(),
        awaiting: awaiting.join(", "),
        input: pretty(&s.input),
        state: progress
            .map(|p| &p.state)
            .filter(|st| !st.as_json().is_null())
            .map(pretty),
        output: s.output.as_ref().map(pretty),
        failure: s.failure.as_ref().map(|f| {
            let mut text = format!("{}: {}", f.kind, f.message);
            if let Some(d) = &f.details {
                text.push('\n');
                text.push_str(&pretty(d));
            }
            text
        }),
        tasks: tasks
            .into_iter()
            .map(|t| TaskRow {
                task: match t.activity_id {
                    Some(a) => format!("{} (activity#{a})", t.task),
                    None => "workflow task".to_owned(),
                },
                attempt: t.attempt.map(|a| a.to_string()).unwrap_or_default(),
                state: match (t.state, t.waited_ms) {
                    ("ready", Some(ms)) => format!("ready for {}", seconds(ms)),
                    ("running", _) => "a worker holds it".to_owned(),
                    ("waiting", _) => "due".to_owned(),
                    (other, _) => other.to_owned(),
                },
                at: t.at.map(time).unwrap_or_default(),
                last_failure: t.last_failure.unwrap_or_default(),
            })
            .collect(),
        timers: progress
            .map(|p| {
                p.pending_timers
                    .iter()
                    .map(|t| format!("timer#{} fires at {}", t.id.0.get(), time(t.fire_at)))
                    .collect()
            })
            .unwrap_or_default(),
        children: children
            .items
            .iter()
            .map(|c| {
                (
                    c.id.as_str().to_owned(),
                    path(c.id.as_str()),
                    format!("{} · {}", c.name, c.status),
                )
            })
            .collect(),
        runs: runs
            .iter()
            .map(|r| {
                format!(
                    "run {}: {} to {}, {} events",
                    r.run,
                    time(r.started_at),
                    time(r.ended_at),
                    r.events
                )
            })
            .collect(),
        logs: logs
            .iter()
            .map(|l| format!("{} {:?} {}", time(l.at), l.level, l.message))
            .collect(),
    };
    let path = w.path.clone();
    let reset_points = loom_core::history::reset_points(&history)
        .iter()
        .rev()
        .take(50)
        .map(|s| s.get())
        .collect();
    Ok(render(&WorkflowPage {
        w,
        open,
        reset_points,
        events,
        more_after,
        path,
        t0: start.as_millis(),
    }))
}

async fn events_fragment(
    State(service): Shared,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Html<String>, PageError> {
    let (mut after, mut t0) = (0u64, 0i64);
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        let bad = || {
            PageError(
                StatusCode::BAD_REQUEST,
                format!("{k}: {v:?} is not a number"),
            )
        };
        match &*k {
            "after" => after = v.parse().map_err(|_| bad())?,
            "t0" => t0 = v.parse().map_err(|_| bad())?,
            _ => {}
        }
    }
    let wid = WorkflowId::new(id.clone());
    let history = service
        .client()
        .storage()
        .load_history(&wid, Seq::new(after))
        .await?;
    let start = Timestamp::from_millis(t0);
    let (events, more_after) = event_rows(&history, after, start);
    Ok(render(&EventsFragment {
        events,
        more_after,
        path: path(&id),
        t0,
    }))
}

/// One page of events after `after`, and the `after` of the next page if there is one.
fn event_rows(
    history: &[loom_core::Event],
    after: u64,
    start: Timestamp,
) -> (Vec<EventRow>, Option<u64>) {
    let mut rows = Vec::with_capacity(EVENTS_PAGE);
    let mut more = None;
    for e in history.iter().filter(|e| e.seq.get() > after) {
        if rows.len() == EVENTS_PAGE {
            more = rows.last().map(|r: &EventRow| r.seq);
            break;
        }
        let Ok(event) = crate::api::event_json(e) else {
            continue;
        };
        let brief = event.fields.to_string();
        let mut whole = serde_json::Map::new();
        whole.insert("seq".into(), event.seq.into());
        whole.insert("at".into(), event.at.into());
        whole.insert("type".into(), event.event_type.clone().into());
        if let Value::Object(fields) = event.fields {
            whole.extend(fields);
        }
        let event_type = event.event_type;
        rows.push(EventRow {
            seq: e.seq.get(),
            at: time(e.at),
            offset: seconds(e.at.as_millis().saturating_sub(start.as_millis()).max(0) as u64),
            kind: kind_of(&event_type),
            event_type,
            brief: truncate(&brief, 160),
            json: serde_json::to_string_pretty(&Value::Object(whole)).unwrap_or_default(),
        });
    }
    (rows, more)
}

fn kind_of(event_type: &str) -> &'static str {
    if event_type.starts_with("Activity") {
        "activity"
    } else if event_type.starts_with("Timer") {
        "timer"
    } else if event_type.starts_with("Signal") {
        "signal"
    } else if event_type.starts_with("Child") {
        "child"
    } else {
        "workflow"
    }
}

// ---- actions ----

#[derive(Template)]
#[template(path = "flash.html")]
struct Flash {
    class: &'static str,
    message: String,
}

/// An action's answer to the page that sent it: on success a reload (`HX-Refresh`), on
/// failure the reason in the page's flash area, with the status.
pub(crate) fn answer(result: Result<String, (StatusCode, String)>) -> Response {
    match result {
        Ok(message) => (
            [("HX-Refresh", "true")],
            render(&Flash {
                class: "ok",
                message,
            }),
        )
            .into_response(),
        Err((status, message)) => (
            status,
            render(&Flash {
                class: "error",
                message,
            }),
        )
            .into_response(),
    }
}

pub(crate) fn failed(e: ClientError) -> (StatusCode, String) {
    (crate::error::client_status(&e).0, e.to_string())
}

/// Actions come from the dashboard's own pages, which send them through htmx: a plain form
/// posted from elsewhere lacks the header (a page on another site cannot add it without the
/// service's consent), on top of the origin checks every action passes.
pub(crate) fn from_dashboard(headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    if headers.get("hx-request").is_some_and(|v| v == "true") {
        Ok(())
    } else {
        Err((
            StatusCode::BAD_REQUEST,
            "send actions from the dashboard's pages, or through the API".to_owned(),
        ))
    }
}

pub(crate) fn field<'a>(form: &'a HashMap<String, String>, name: &str) -> &'a str {
    form.get(name).map_or("", |v| v.trim())
}

async fn signal_action(
    State(service): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    answer(
        async {
            from_dashboard(&headers)?;
            let name = field(&form, "name");
            if name.is_empty() {
                return Err((StatusCode::BAD_REQUEST, "a signal needs a name".to_owned()));
            }
            let raw = field(&form, "payload");
            let payload: Value = if raw.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(raw).map_err(|e| {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("the payload is not JSON: {e}"),
                    )
                })?
            };
            service
                .client()
                .signal_checked(
                    service.registry(),
                    &WorkflowId::new(id),
                    name,
                    Payload::from_json(payload),
                )
                .await
                .map_err(failed)?;
            Ok(format!("Sent {name}."))
        }
        .await,
    )
}

async fn cancel_action(
    State(service): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    answer(
        async {
            from_dashboard(&headers)?;
            let reason = Some(field(&form, "reason").to_owned()).filter(|r| !r.is_empty());
            service
                .client()
                .cancel(&WorkflowId::new(id), reason)
                .await
                .map_err(failed)?;
            Ok("Cancel requested.".to_owned())
        }
        .await,
    )
}

fn reason(form: &HashMap<String, String>, action: &str) -> Result<String, (StatusCode, String)> {
    let r = field(form, "reason");
    if r.is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("to {action} a workflow, give a reason"),
        ));
    }
    Ok(r.to_owned())
}

async fn terminate_action(
    State(service): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    answer(
        async {
            from_dashboard(&headers)?;
            let reason = reason(&form, "terminate")?;
            service
                .client()
                .terminate(&WorkflowId::new(id), &reason)
                .await
                .map_err(failed)?;
            Ok("Terminated.".to_owned())
        }
        .await,
    )
}

async fn pause_action(
    State(service): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    answer(
        async {
            from_dashboard(&headers)?;
            let reason = reason(&form, "pause")?;
            service
                .client()
                .pause(&WorkflowId::new(id), &reason)
                .await
                .map_err(failed)?;
            Ok("Paused.".to_owned())
        }
        .await,
    )
}

async fn resume_action(
    State(service): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    answer(
        async {
            from_dashboard(&headers)?;
            service
                .client()
                .resume(&WorkflowId::new(id))
                .await
                .map_err(failed)?;
            Ok("Resumed.".to_owned())
        }
        .await,
    )
}

async fn reset_action(
    State(service): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    answer(
        async {
            from_dashboard(&headers)?;
            let to = crate::api::reset_to(field(&form, "to"))
                .map_err(|e| (StatusCode::BAD_REQUEST, e))?;
            let reason = reason(&form, "reset")?;
            let done = service
                .client()
                .reset(
                    &WorkflowId::new(id),
                    to,
                    &reason,
                    field(&form, "no_signals").is_empty(),
                )
                .await
                .map_err(failed)?;
            Ok(format!(
                "Reset: run {} continues after event {}.",
                done.run,
                done.point.get()
            ))
        }
        .await,
    )
}

// ---- stats and types ----

#[derive(Template)]
#[template(path = "stats.html")]
struct StatsPage {
    counts: Vec<(String, u64)>,
    chart: Chart,
    backlog: BacklogView,
    events: u64,
    throughput: Chart,
    window: String,
}

struct BacklogView {
    wf_ready: u64,
    wf_running: u64,
    wf_oldest: Option<String>,
    act_ready: u64,
    act_running: u64,
    act_oldest: Option<String>,
}

/// A bar chart drawn as SVG on the server.
struct Chart {
    width: u32,
    height: u32,
    bars: Vec<Bar>,
}

struct Bar {
    label: String,
    value: String,
    x: u32,
    y: u32,
    w: u32,
    h: u32,
    tx: u32,
}

impl Chart {
    /// Bars of `values` scaled to the tallest, labelled, in a 560 x 180 frame (the bottom
    /// 20 for labels).
    fn bars(values: &[(String, f64)]) -> Chart {
        let (width, height, plot) = (560u32, 180u32, 160f64);
        let max = values.iter().map(|v| v.1).fold(0.0, f64::max).max(1e-9);
        let n = values.len().max(1) as u32;
        let slot = width / n;
        let w = (slot * 7 / 10).max(1);
        let bars = values
            .iter()
            .enumerate()
            .map(|(i, (label, v))| {
                let h = ((v / max) * (plot - 10.0)).round() as u32;
                let x = i as u32 * slot + (slot - w) / 2;
                Bar {
                    label: label.clone(),
                    value: if v.fract() == 0.0 {
                        format!("{v}")
                    } else {
                        format!("{v:.1}")
                    },
                    x,
                    y: plot as u32 - h,
                    w,
                    h,
                    tx: x,
                }
            })
            .collect();
        Chart {
            width,
            height,
            bars,
        }
    }
}

/// Samples of how many workflows had ended, for the throughput chart.
#[derive(Default)]
pub(crate) struct Samples(std::sync::Mutex<VecDeque<(Instant, u64)>>);

impl Samples {
    /// Records `ended` now; answers the rates between the samples of the window.
    fn record(&self, ended: u64) -> Vec<(String, f64)> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if s.back()
            .is_none_or(|(t, _)| now.duration_since(*t) >= Duration::from_secs(1))
        {
            s.push_back((now, ended));
        }
        while s
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > THROUGHPUT_WINDOW)
        {
            s.pop_front();
        }
        s.iter()
            .zip(s.iter().skip(1))
            .map(|((t0, n0), (t1, n1))| {
                let secs = t1.duration_since(*t0).as_secs_f64().max(1e-3);
                let ago = now.duration_since(*t1).as_secs();
                (format!("{ago} s ago"), n1.saturating_sub(*n0) as f64 / secs)
            })
            .collect()
    }
}

async fn stats_page(State(service): Shared) -> Result<Html<String>, PageError> {
    let store = service.client().storage();
    let stats = store.stats().await?;
    let backlog = store.backlog().await?;
    let counts: Vec<(String, u64)> = WorkflowStatus::ALL
        .iter()
        .map(|s| (s.to_string(), stats.workflows.get(s).copied().unwrap_or(0)))
        .collect();
    let ended: u64 = stats
        .workflows
        .iter()
        .filter(|(s, _)| s.is_terminal())
        .map(|(_, n)| *n)
        .sum();
    let rates = service.samples().record(ended);
    let age = |t: Option<Timestamp>| {
        t.map(|t| seconds(backlog.at.as_millis().saturating_sub(t.as_millis()).max(0) as u64))
    };
    Ok(render(&StatsPage {
        chart: Chart::bars(
            &counts
                .iter()
                .map(|(s, n)| (s.clone(), *n as f64))
                .collect::<Vec<_>>(),
        ),
        counts,
        backlog: BacklogView {
            wf_ready: backlog.workflow_tasks.ready,
            wf_running: backlog.workflow_tasks.running,
            wf_oldest: age(backlog.workflow_tasks.oldest_ready_at),
            act_ready: backlog.activity_tasks.ready,
            act_running: backlog.activity_tasks.running,
            act_oldest: age(backlog.activity_tasks.oldest_ready_at),
        },
        events: stats.events,
        throughput: Chart::bars(&rates),
        window: format!("{} minutes", THROUGHPUT_WINDOW.as_secs() / 60),
    }))
}

#[derive(Template)]
#[template(path = "types.html")]
struct TypesPage {
    workflows: Vec<(String, String, String)>,
    activities: Vec<String>,
}

async fn types_page(State(service): Shared) -> Html<String> {
    let r = service.registry();
    let mut workflows: Vec<(String, String, String)> = r
        .workflow_names()
        .map(|n| {
            let versions: Vec<String> = r.workflow_versions(n).iter().map(u32::to_string).collect();
            (
                n.to_owned(),
                form_urlencoded::byte_serialize(n.as_bytes()).collect(),
                versions.join(", "),
            )
        })
        .collect();
    workflows.sort();
    let mut activities: Vec<String> = r.activity_names().map(str::to_owned).collect();
    activities.sort();
    render(&TypesPage {
        workflows,
        activities,
    })
}

// ---- signing in ----

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    next: String,
    failed: bool,
}

async fn login_page(RawQuery(query): RawQuery) -> Html<String> {
    let next = form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "next")
        .map(|(_, v)| safe_next(&v))
        .unwrap_or_else(|| "/workflows".to_owned());
    render(&LoginPage {
        next,
        failed: false,
    })
}

async fn login(State(service): Shared, Form(form): Form<HashMap<String, String>>) -> Response {
    let next = safe_next(field(&form, "next"));
    let given = form.get("token").map_or("", String::as_str);
    match service.token() {
        Some(token) if crate::auth::same(given, token) => {
            let cookie = format!(
                "{}={}; Path=/; HttpOnly; SameSite=Strict",
                crate::auth::COOKIE,
                utf8_percent_encode(given, COOKIE_VALUE)
            );
            (
                StatusCode::SEE_OTHER,
                [(header::SET_COOKIE, cookie), (header::LOCATION, next)],
            )
                .into_response()
        }
        Some(_) => {
            // A wrong token costs half a second, one at a time across the whole service:
            // guessing runs at two tries a second, however many connections try.
            let _gate = service.login_gate().lock().await;
            tokio::time::sleep(WRONG_TOKEN_DELAY).await;
            (
                StatusCode::UNAUTHORIZED,
                render(&LoginPage { next, failed: true }),
            )
                .into_response()
        }
        None => Redirect::to(&next).into_response(),
    }
}

/// Where to go after signing in: a path of this service only (never another site). Browsers
/// drop tabs and newlines from URLs (`/\t/evil.example` becomes `//evil.example`), so any
/// control character or space refuses it too.
fn safe_next(next: &str) -> String {
    let plain = !next
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\');
    if plain && next.starts_with('/') && !next.starts_with("//") {
        next.to_owned()
    } else {
        "/workflows".to_owned()
    }
}

// ---- helpers ----

/// What a path segment percent-encodes: everything but unreserved characters.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b'|')
    .add(b'[')
    .add(b']')
    .add(b'+')
    .add(b'&')
    .add(b'=')
    .add(b';')
    .add(b'\'');

/// What a cookie value percent-encodes.
const COOKIE_VALUE: &AsciiSet = &SEGMENT.add(b',').add(b'(').add(b')').add(b'@').add(b':');

/// A workflow id as one path segment.
pub(crate) fn path(id: &str) -> String {
    utf8_percent_encode(id, SEGMENT).to_string()
}

/// A time for people: UTC to the second.
pub(crate) fn time(t: Timestamp) -> String {
    let s = rfc3339(t);
    format!("{} {}", &s[..10], &s[11..19])
}

fn seconds(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
    }
}

pub(crate) fn pretty(p: &Payload) -> String {
    serde_json::to_string_pretty(p.as_json()).unwrap_or_default()
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

fn tags_text(tags: &Tags) -> String {
    tags.iter()
        .map(|(k, v)| match v {
            TagValue::Time(t) => format!("{k}={}", time(*t)),
            other => format!("{k}={}", other.text()),
        })
        .collect::<Vec<_>>()
        .join(" ")
}
