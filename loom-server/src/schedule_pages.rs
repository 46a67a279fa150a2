//! The dashboard's schedules: the list, a schedule's page (its spec, policies, counts, next
//! fire times, running workflows, last actions and missed fires), and the actions its page
//! sends through htmx (pause, unpause, trigger, backfill, delete), each checked as the
//! workflows' actions are.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, Response};
use axum::routing::{get, post};
use loom_storage::schedule::{FireSource, Outcome, span};
use loom_worker::ClientError;

use crate::Service;
use crate::ui::{PageError, answer, failed, field, from_dashboard, path, pretty, render, time};

type Shared = State<Arc<Service>>;

/// Schedules on the list page.
const LIST_PAGE: usize = 500;

pub(crate) fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/schedules", get(list_page))
        .route("/schedules/{id}", get(schedule_page))
        .route("/schedules/{id}/pause", post(pause_action))
        .route("/schedules/{id}/unpause", post(unpause_action))
        .route("/schedules/{id}/trigger", post(trigger_action))
        .route("/schedules/{id}/backfill", post(backfill_action))
        .route("/schedules/{id}/delete", post(delete_action))
}

struct Row {
    id: String,
    path: String,
    workflow_type: String,
    when: String,
    overlap: String,
    paused: bool,
    next: String,
    started: u64,
    skipped: u64,
    missed: u64,
}

#[derive(Template)]
#[template(path = "schedules.html")]
struct ListPage {
    rows: Vec<Row>,
    more: bool,
}

async fn list_page(State(service): Shared) -> Result<Html<String>, PageError> {
    let list = service.client().schedules(None, LIST_PAGE + 1).await?;
    let more = list.len() > LIST_PAGE;
    let rows = list
        .iter()
        .take(LIST_PAGE)
        .map(|s| Row {
            id: s.id.clone(),
            path: path(&s.id),
            workflow_type: s.action.workflow.clone(),
            when: s.spec.to_string(),
            overlap: s.policy.overlap.to_string(),
            paused: s.paused,
            next: s.wake_at.map_or_else(|| "-".to_owned(), time),
            started: s.state.counts.started,
            skipped: s.state.counts.skipped,
            missed: s.state.counts.missed,
        })
        .collect();
    Ok(render(&ListPage { rows, more }))
}

struct Recent {
    nominal: String,
    source: &'static str,
    outcome: &'static str,
    workflow: Option<(String, String)>,
    status: String,
}

#[derive(Template)]
#[template(path = "schedule.html")]
struct SchedulePage {
    id: String,
    path: String,
    paused: bool,
    note: String,
    workflow_type: String,
    version: String,
    input: String,
    id_pattern: String,
    tags: String,
    when: String,
    start: Option<String>,
    end: Option<String>,
    jitter: Option<String>,
    overlap: String,
    catchup: String,
    created: String,
    updated: String,
    counts: loom_storage::schedule::ScheduleCounts,
    upcoming: Vec<String>,
    running: Vec<(String, String, String)>,
    buffered: Vec<String>,
    recent: Vec<Recent>,
    missed: Vec<String>,
}

async fn schedule_page(
    State(service): Shared,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let d = service.client().describe_schedule(&id).await?;
    let s = &d.schedule;
    let page = SchedulePage {
        id: s.id.clone(),
        path: path(&s.id),
        paused: s.paused,
        note: s.note.clone(),
        workflow_type: s.action.workflow.clone(),
        version: s.action.version.map_or_else(
            || "the newest a worker knows".to_owned(),
            |v| format!("v{v}"),
        ),
        input: pretty(&s.action.input),
        id_pattern: s.action.id_pattern.clone(),
        tags: s
            .action
            .tags
            .iter()
            .map(|(k, v)| format!("{k}={}", v.text()))
            .collect::<Vec<_>>()
            .join(" "),
        when: s.spec.to_string(),
        start: s.spec.start_at.map(time),
        end: s.spec.end_at.map(time),
        jitter: (s.spec.jitter_ms > 0).then(|| span(s.spec.jitter_ms)),
        overlap: s.policy.overlap.to_string(),
        catchup: span(s.policy.catchup_window_ms),
        created: time(s.created_at),
        updated: time(s.updated_at),
        counts: s.state.counts,
        upcoming: d.upcoming.iter().copied().map(time).collect(),
        running: d
            .running
            .iter()
            .map(|w| (w.id.to_string(), path(w.id.as_str()), time(w.created_at)))
            .collect(),
        buffered: s.state.buffer.iter().map(|f| time(f.nominal)).collect(),
        recent: d
            .recent
            .iter()
            .rev()
            .map(|r| {
                let (outcome, workflow) = match &r.action.outcome {
                    Outcome::Started { workflow } => ("started", Some(workflow)),
                    Outcome::AlreadyStarted { workflow } => ("already started", Some(workflow)),
                    Outcome::Skipped => ("skipped", None),
                    Outcome::Missed => ("missed", None),
                };
                Recent {
                    nominal: time(r.action.fire.nominal),
                    source: match r.action.fire.source {
                        FireSource::Scheduled => "scheduled",
                        FireSource::Trigger => "triggered",
                        FireSource::Backfill => "backfilled",
                    },
                    outcome,
                    workflow: workflow.map(|w| (w.to_string(), path(w.as_str()))),
                    status: r.status.map_or_else(String::new, |s| s.to_string()),
                }
            })
            .collect(),
        missed: s.state.missed.iter().rev().copied().map(time).collect(),
    };
    Ok(render(&page))
}

/// An action of a schedule's page: sent from the dashboard, then `op`, answered with `done`
/// or with why it failed. (`op` is a future: nothing of it runs before the check.)
async fn act<T>(
    headers: &HeaderMap,
    op: impl Future<Output = Result<T, ClientError>>,
    done: &str,
) -> Response {
    answer(
        async {
            from_dashboard(headers)?;
            op.await.map_err(failed)?;
            Ok(done.to_owned())
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
    let client = service.client();
    act(
        &headers,
        client.pause_schedule(&id, field(&form, "note")),
        "Paused.",
    )
    .await
}

async fn unpause_action(
    State(service): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let client = service.client();
    act(&headers, client.unpause_schedule(&id, ""), "Unpaused.").await
}

async fn trigger_action(
    State(service): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let client = service.client();
    act(
        &headers,
        client.trigger_schedule(&id),
        "Triggered: a worker starts it at its next look.",
    )
    .await
}

async fn backfill_action(
    State(service): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    answer(
        async {
            from_dashboard(&headers)?;
            let when = |name: &str| {
                crate::api::time_param(name, field(&form, name))
                    .map_err(|e| (StatusCode::BAD_REQUEST, e.message().to_owned()))
            };
            let (from, to) = (when("from")?, when("to")?);
            service
                .client()
                .backfill_schedule(&id, from, to)
                .await
                .map_err(failed)?;
            Ok("Backfill asked.".to_owned())
        }
        .await,
    )
}

async fn delete_action(
    State(service): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let client = service.client();
    let mut response = act(&headers, client.delete_schedule(&id), "Deleted.").await;
    if response.status().is_success() {
        // The page it was sent from is gone: go to the list instead of reloading.
        response.headers_mut().remove("HX-Refresh");
        response.headers_mut().insert(
            "HX-Redirect",
            axum::http::HeaderValue::from_static("/schedules"),
        );
    }
    response
}
