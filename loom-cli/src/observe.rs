//! The worker's HTTP endpoint for operators: Prometheus metrics and health checks.
//!
//! `loom worker --metrics ADDR` serves, on loopback unless told otherwise:
//! - `GET /metrics`: every metric the worker records (see `loom_worker::telemetry`), in
//!   Prometheus' text format, with the store's backlog read at most once per
//!   [`BACKLOG_EVERY`] however often it is scraped;
//! - `GET /livez`: 200 while the process serves (liveness);
//! - `GET /readyz`: 200 when the store answers a backlog read within [`READY_WITHIN`], 503
//!   with the reason otherwise (readiness). The schema was checked, and migrated if it was
//!   older, when the worker opened the store.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use loom_storage::Storage;
use loom_worker::Telemetry;

/// The least time between two reads of the store's backlog for metrics.
pub(crate) const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// How long the store has to answer a readiness check.
pub(crate) const READY_WITHIN: Duration = Duration::from_secs(2);

struct Observed {
    telemetry: Arc<Telemetry>,
    store: Arc<dyn Storage>,
    last_backlog: Mutex<Option<Instant>>,
}

/// Parses `--metrics`: `PORT` (on loopback), `HOST:PORT` or `[V6]:PORT`.
pub(crate) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let s = s
        .strip_prefix("localhost:")
        .map_or_else(|| s.to_owned(), |port| format!("127.0.0.1:{port}"));
    s.parse().map_err(|_| {
        format!("--metrics takes PORT, HOST:PORT or [IPV6]:PORT with HOST an IP address, not {s:?}")
    })
}

/// Binds `addr` and serves the endpoint in the background; answers the address bound (the
/// port chosen when `addr`'s is 0).
pub(crate) async fn serve(
    addr: SocketAddr,
    telemetry: Arc<Telemetry>,
    store: Arc<dyn Storage>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let state = Arc::new(Observed {
        telemetry,
        store,
        last_backlog: Mutex::new(None),
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "live\n" }))
        .route("/readyz", get(ready))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(bound)
}

async fn metrics(State(s): State<Arc<Observed>>) -> Response {
    let due = {
        let mut last = s
            .last_backlog
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let due = last.is_none_or(|at| at.elapsed() >= BACKLOG_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    };
    s.telemetry.set_store_counters(&s.store.counters());
    if due {
        let backlog = tokio::time::timeout(READY_WITHIN, s.store.backlog()).await;
        match backlog {
            Ok(answer) => s.telemetry.set_backlog(answer.as_ref()),
            Err(_) => s
                .telemetry
                .set_backlog(Err(&loom_storage::StorageError::Unavailable {
                    message: "the backlog read timed out".into(),
                    source: None,
                })),
        }
    }
    (
        [(header::CONTENT_TYPE, Telemetry::CONTENT_TYPE)],
        s.telemetry.encode(),
    )
        .into_response()
}

async fn ready(State(s): State<Arc<Observed>>) -> Response {
    match tokio::time::timeout(READY_WITHIN, s.store.backlog()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the store answered: {e}\n"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the store did not answer within {} s\n",
                READY_WITHIN.as_secs()
            ),
        )
            .into_response(),
    }
}

/// How the store's work looks, for `loom stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Health {
    /// Nothing ready has waited long, and no workflow is paused.
    Healthy,
    /// Ready tasks wait longer than [`BEHIND`]: the workers are too few or too slow, or none
    /// runs yet.
    Behind,
    /// Ready tasks have waited [`STUCK`] with none running, or workflows are paused: nothing
    /// moves them until someone acts.
    Stuck,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Healthy => "healthy",
            Health::Behind => "behind",
            Health::Stuck => "stuck",
        })
    }
}

/// A ready task older than this means the workers are behind.
pub(crate) const BEHIND: Duration = Duration::from_secs(30);

/// A ready task older than this, with nothing running, means no worker is working.
pub(crate) const STUCK: Duration = Duration::from_secs(300);

/// The verdict on the store's counts, and its reason in a sentence.
pub(crate) fn verdict(s: &loom_storage::Stats) -> (Health, String) {
    let paused = s
        .workflows
        .get(&loom_storage::WorkflowStatus::Paused)
        .copied()
        .unwrap_or(0);
    if paused > 0 {
        return (
            Health::Stuck,
            format!(
                "{paused} workflow{} paused: {} until someone acts (`loom list --status paused`, then `loom resume ID`)",
                if paused == 1 { " is" } else { "s are" },
                if paused == 1 { "it waits" } else { "they wait" },
            ),
        );
    }
    let ready = s.workflow_tasks_ready + s.activity_tasks_ready;
    let running = s.workflow_tasks_running + s.activity_tasks_running;
    let age = s
        .oldest_ready_at
        .map(|t| s.at.saturating_duration_since(t))
        .filter(|_| ready > 0);
    let waited = |age: Duration| humantime::format_duration(Duration::from_secs(age.as_secs()));
    match age {
        None => (Health::Healthy, "no task waits to be claimed".into()),
        Some(age) if age < BEHIND => (
            Health::Healthy,
            format!("{ready} ready, the oldest for {}", waited(age)),
        ),
        Some(age) if running == 0 && age >= STUCK => (
            Health::Stuck,
            format!(
                "{ready} ready, the oldest for {}, and none running: is a worker running? (`loom worker`)",
                waited(age)
            ),
        ),
        Some(age) if running == 0 => (
            Health::Behind,
            format!(
                "{ready} ready, the oldest for {}, and none running: no worker has claimed them yet",
                waited(age)
            ),
        ),
        Some(age) => (
            Health::Behind,
            format!(
                "{ready} ready, the oldest for {}, with {running} running: more workers or `--workers` would catch up",
                waited(age)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use loom_core::Timestamp;
    use loom_storage::{Stats, WorkflowStatus};

    use super::{Health, parse_addr, verdict};

    fn stats(ready: u64, running: u64, waited: Duration) -> Stats {
        let at = Timestamp::from_millis(1_800_000_000_000);
        Stats {
            activity_tasks_ready: ready,
            activity_tasks_running: running,
            oldest_ready_at: (ready > 0)
                .then(|| Timestamp::from_millis(at.as_millis() - waited.as_millis() as i64)),
            at,
            ..Stats::default()
        }
    }

    #[test]
    fn the_verdict_follows_the_oldest_ready_task_and_what_runs() {
        let min = |m: u64| Duration::from_secs(60 * m);
        let cases = [
            (stats(0, 0, min(0)), Health::Healthy, "no task waits"),
            (stats(0, 9, min(0)), Health::Healthy, "no task waits"),
            (
                stats(3, 1, Duration::from_secs(5)),
                Health::Healthy,
                "the oldest for 5s",
            ),
            (stats(3, 2, min(2)), Health::Behind, "with 2 running"),
            (stats(3, 0, min(2)), Health::Behind, "none running"),
            (stats(3, 0, min(6)), Health::Stuck, "is a worker running?"),
            (stats(3, 4, min(60)), Health::Behind, "with 4 running"),
        ];
        for (s, health, reason) in cases {
            let (h, r) = verdict(&s);
            assert_eq!(h, health, "{s:?}: {r}");
            assert!(r.contains(reason), "{s:?}: {r}");
        }
    }

    #[test]
    fn paused_workflows_are_stuck() {
        let mut s = stats(0, 0, Duration::ZERO);
        s.workflows.insert(WorkflowStatus::Paused, 2);
        let (h, r) = verdict(&s);
        assert_eq!(h, Health::Stuck);
        assert!(r.starts_with("2 workflows are paused"), "{r}");
    }

    #[test]
    fn a_bare_port_is_on_loopback() {
        assert_eq!(parse_addr("9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(
            parse_addr("localhost:9464").unwrap().to_string(),
            "127.0.0.1:9464"
        );
        assert_eq!(parse_addr("0.0.0.0:80").unwrap().to_string(), "0.0.0.0:80");
        assert_eq!(parse_addr("[::1]:9464").unwrap().to_string(), "[::1]:9464");
    }

    #[test]
    fn bad_addresses_say_what_is_wanted() {
        for bad in ["", "host", "example.com:80", "1.2.3.4:99999", "-1"] {
            let e = parse_addr(bad).unwrap_err();
            assert!(e.contains("--metrics takes"), "{bad}: {e}");
        }
    }
}
