//! The dashboard's pages over HTTP (the browser test drives them in Chromium): each renders,
//! a long history comes a page at a time, unknown ids and bad filters answer with what is
//! wrong, actions come only from the dashboard, and a token is asked for by a sign-in form
//! whose cookie then opens the pages.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use loom_core::{Payload, Registry, Workflow, WorkflowContext, WorkflowError};
use loom_server::Service;
use loom_storage::{MemoryStorage, Storage};
use loom_worker::{StartOptions, Worker, WorkerConfig};

/// Takes `n` signals named `tick`, then ends: a long history on demand.
struct Ticks;

impl Workflow for Ticks {
    const NAME: &'static str = "Ticks";
    type Input = u32;
    type State = ();
    type Output = u32;
    async fn run(ctx: WorkflowContext<Self>) -> Result<u32, WorkflowError> {
        for _ in 0..*ctx.input() {
            let _: u32 = ctx.wait_signal("tick").await?;
        }
        Ok(*ctx.input())
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.add_workflow::<Ticks>().expect("register");
    r
}

async fn serve(store: Arc<dyn Storage>, token: Option<&str>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = Service::new(store, Arc::new(registry())).with_token(token.map(Into::into));
    tokio::spawn(service.serve(listener, std::future::pending()));
    addr
}

struct Answer {
    status: u16,
    body: String,
    location: Option<String>,
    cookie: Option<String>,
}

async fn call(
    addr: SocketAddr,
    method: &'static str,
    path: &str,
    body: Option<&str>,
    headers: &[(&'static str, &str)],
) -> Answer {
    let url = format!("http://{addr}{path}");
    let body = body.map(str::to_owned);
    let headers: Vec<(&'static str, String)> =
        headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        let mut response = if method == "GET" {
            let mut r = agent.get(&url);
            for (k, v) in &headers {
                r = r.header(*k, v);
            }
            r.call()
        } else {
            let mut r = agent.post(&url);
            for (k, v) in &headers {
                r = r.header(*k, v);
            }
            r.send(body.unwrap_or_default().as_bytes())
        }
        .expect("the service answers");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (location, cookie) = (header("location"), header("set-cookie"));
        Answer {
            status: response.status().as_u16(),
            location,
            cookie,
            body: response.body_mut().read_to_string().unwrap_or_default(),
        }
    })
    .await
    .expect("request")
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    call(addr, "GET", path, None, &[]).await
}

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");
const HTMX: (&str, &str) = ("hx-request", "true");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_render_and_a_long_history_comes_a_page_at_a_time() {
    let store: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let client = loom_worker::Client::new(store.clone());
    let start = |id: &str, n: u32| {
        let (client, id) = (client.clone(), id.to_owned());
        async move {
            client
                .start_by_name(
                    &registry(),
                    "Ticks",
                    Payload::from_json(n.into()),
                    StartOptions {
                        id: Some(id.into()),
                        ..StartOptions::default()
                    },
                )
                .await
                .expect("start")
        }
    };
    start("long", 150).await;
    start("short", 1).await;
    for i in 0..150u32 {
        client
            .signal(&"long".into(), "tick", Payload::from_json(i.into()))
            .await
            .expect("signal");
    }
    let worker = Worker::with_config(
        store.clone(),
        registry(),
        WorkerConfig {
            poll_interval: Duration::from_millis(20),
            ..WorkerConfig::default()
        },
    );
    tokio::spawn(async move { worker.run(std::future::pending()).await });
    let a = serve(store.clone(), None).await;
    client
        .handle::<Ticks>("long")
        .result_within(Duration::from_secs(20))
        .await
        .expect("the long one completes");

    let list = get(a, "/workflows").await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(
        list.body.contains("href=\"/workflows/long\""),
        "{}",
        list.body
    );
    assert!(list.body.contains("href=\"/workflows/short\""));
    let live = get(a, "/workflows?status=running&live=1").await;
    assert!(
        live.body.contains("hx-trigger=\"every 3s\""),
        "live refresh is on"
    );
    assert!(
        !live.body.contains("/workflows/long\""),
        "filtered: {}",
        live.body
    );
    let found = get(a, "/workflows?id=long").await;
    assert_eq!(
        (found.status, found.location.as_deref()),
        (303, Some("/workflows/long"))
    );

    // The first page holds a hundred events and a way to the rest.
    let page = get(a, "/workflows/long").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.body.matches("<tr class=\"event").count(), 100);
    assert!(
        page.body.contains("/workflows/long/events?after=100"),
        "a button for more"
    );
    let more = get(a, "/workflows/long/events?after=100").await;
    assert_eq!(more.status, 200);
    let rows = more.body.matches("<tr class=\"event").count();
    assert!(rows > 50 && rows <= 100, "{rows} events on the second page");
    assert!(more.body.contains("WorkflowCompleted"));
    assert!(get(a, "/workflows/long/events?after=nope").await.status == 400);

    for path in [
        "/stats",
        "/types",
        "/assets/htmx.min.js",
        "/assets/loom.css",
    ] {
        let answer = get(a, path).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    }
    assert!(get(a, "/stats").await.body.contains("<svg"), "a chart");
    let missing = get(a, "/workflows/nope").await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("nope"), "{}", missing.body);
    let bad = get(a, "/workflows?tag=amount").await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("comparison"), "{}", bad.body);
    let unknown = get(a, "/workflows?id=nope").await;
    assert!(
        unknown.body.contains("No workflow has the id"),
        "{}",
        unknown.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_come_from_the_dashboard_and_say_what_went_wrong() {
    let store: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let client = loom_worker::Client::new(store.clone());
    client
        .start_by_name(
            &registry(),
            "Ticks",
            Payload::from_json(1.into()),
            StartOptions {
                id: Some("w".into()),
                ..StartOptions::default()
            },
        )
        .await
        .expect("start");
    let a = serve(store.clone(), None).await;
    let plain = call(a, "POST", "/workflows/w/cancel", Some(""), &[FORM]).await;
    assert_eq!(plain.status, 400, "a plain form post is refused");
    let evil = call(
        a,
        "POST",
        "/workflows/w/cancel",
        Some(""),
        &[FORM, HTMX, ("origin", "http://evil.example")],
    )
    .await;
    assert_eq!(evil.status, 403);
    let no_reason = call(
        a,
        "POST",
        "/workflows/w/terminate",
        Some("reason="),
        &[FORM, HTMX],
    )
    .await;
    assert_eq!(no_reason.status, 400);
    assert!(
        no_reason.body.contains("give a reason"),
        "{}",
        no_reason.body
    );
    let bad_json = call(
        a,
        "POST",
        "/workflows/w/signal",
        Some("name=tick&payload=%7Bnope"),
        &[FORM, HTMX],
    )
    .await;
    assert_eq!(bad_json.status, 400);
    assert!(bad_json.body.contains("not JSON"), "{}", bad_json.body);
    let html = call(
        a,
        "POST",
        "/workflows/w/signal",
        Some("name=%3Cscript%3Ex%3C%2Fscript%3E&payload=1"),
        &[FORM, HTMX],
    )
    .await;
    assert!(
        !html.body.contains("<script>"),
        "an error quoting a name escapes it: {}",
        html.body
    );
    let ok = call(
        a,
        "POST",
        "/workflows/w/signal",
        Some("name=tick&payload=1"),
        &[FORM, HTMX],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let waiting = store.pending(&"w".into()).await.expect("pending");
    assert!(
        waiting.messages.iter().any(
            |m| matches!(&m.kind, loom_core::EventKind::SignalReceived { name, .. } if name == "tick")
        ),
        "the signal waits for the workflow: {waiting:?}"
    );
    let bad_point = call(
        a,
        "POST",
        "/workflows/w/reset",
        Some("to=zero&reason=x"),
        &[FORM, HTMX],
    )
    .await;
    assert_eq!(bad_point.status, 400, "{}", bad_point.body);
    let reset = call(
        a,
        "POST",
        "/workflows/w/reset",
        Some("to=1&reason=again"),
        &[FORM, HTMX],
    )
    .await;
    assert_eq!(reset.status, 200, "{}", reset.body);
    assert!(reset.body.contains("run 2"), "{}", reset.body);
    let terminated = call(
        a,
        "POST",
        "/workflows/w/terminate",
        Some("reason=done"),
        &[FORM, HTMX],
    )
    .await;
    assert_eq!(terminated.status, 200);
    let again = call(a, "POST", "/workflows/w/cancel", Some(""), &[FORM, HTMX]).await;
    assert_eq!(again.status, 409, "{}", again.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_asked_for_by_a_sign_in_form() {
    let a = serve(Arc::new(MemoryStorage::new()), Some("s3 cret;")).await;
    let page = get(a, "/workflows?status=running").await;
    assert_eq!(page.status, 303);
    assert_eq!(
        page.location.as_deref(),
        Some("/login?next=%2Fworkflows%3Fstatus%3Drunning")
    );
    let form = get(a, "/login?next=%2Fworkflows%3Fstatus%3Drunning").await;
    assert_eq!(form.status, 200);
    assert!(
        form.body.contains("value=\"/workflows?status=running\""),
        "{}",
        form.body
    );
    let wrong = call(
        a,
        "POST",
        "/login",
        Some("token=nope&next=%2Fstats"),
        &[FORM],
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.cookie.is_none());
    let elsewhere = call(
        a,
        "POST",
        "/login",
        Some("token=s3+cret%3B&next=https%3A%2F%2Fevil.example"),
        &[FORM],
    )
    .await;
    assert_eq!(
        elsewhere.location.as_deref(),
        Some("/workflows"),
        "never sent to another site"
    );
    let signed = call(
        a,
        "POST",
        "/login",
        Some("token=s3+cret%3B&next=%2Fstats"),
        &[FORM],
    )
    .await;
    assert_eq!(
        (signed.status, signed.location.as_deref()),
        (303, Some("/stats"))
    );
    let cookie = signed.cookie.expect("a cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("name=value").to_owned();
    let stats = call(a, "GET", "/stats", None, &[("cookie", &pair)]).await;
    assert_eq!(stats.status, 200, "{}", stats.body);
    let api = call(a, "GET", "/api/v1/stats", None, &[("cookie", &pair)]).await;
    assert_eq!(api.status, 200, "the cookie opens the API's reads too");
    assert_eq!(
        get(a, "/api/v1/stats").await.status,
        401,
        "the API is not redirected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_has_its_pages_and_its_actions() {
    use loom_storage::schedule::{ScheduleAction, SchedulePolicy, ScheduleSpec};
    let store: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let client = loom_worker::Client::new(store.clone());
    let def = loom_worker::ScheduleDefinition {
        spec: ScheduleSpec {
            cron: vec!["0 30 2 * * *".into()],
            timezone: "America/New_York".into(),
            ..ScheduleSpec::default()
        },
        action: ScheduleAction {
            workflow: "Ticks".into(),
            version: None,
            input: Payload::from_json(1.into()),
            id_pattern: "{schedule}-{time}".into(),
            tags: Default::default(),
        },
        policy: SchedulePolicy::default(),
    };
    client
        .create_schedule(&registry(), "<b>nightly", def, false)
        .await
        .expect("create");
    let a = serve(store.clone(), None).await;
    let list = get(a, "/schedules").await;
    assert_eq!(list.status, 200);
    assert!(list.body.contains("&#60;b&#62;nightly"), "{}", list.body);
    assert!(
        !list.body.contains("<b>nightly"),
        "an id is text, not markup"
    );
    assert!(
        list.body
            .contains("cron &#34;0 30 2 * * *&#34; America/New_York"),
        "{}",
        list.body
    );
    let page = get(a, "/schedules/%3Cb%3Enightly").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Next fire times"), "{}", page.body);
    assert!(
        page.body.contains(":30:00</li>"),
        "the next fire times are listed: {}",
        page.body
    );
    assert_eq!(get(a, "/schedules/nope").await.status, 404);

    let path = "/schedules/%3Cb%3Enightly";
    let plain = call(a, "POST", &format!("{path}/trigger"), Some(""), &[FORM]).await;
    assert_eq!(plain.status, 400, "a plain form post is refused");
    let evil = call(
        a,
        "POST",
        &format!("{path}/pause"),
        Some(""),
        &[FORM, HTMX, ("origin", "http://evil.example")],
    )
    .await;
    assert_eq!(evil.status, 403);
    assert!(!client.schedule("<b>nightly").await.expect("read").paused);
    let paused = call(
        a,
        "POST",
        &format!("{path}/pause"),
        Some("note=deploy"),
        &[FORM, HTMX],
    )
    .await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    let s = client.schedule("<b>nightly").await.expect("read");
    assert!(s.paused);
    assert_eq!(s.note, "deploy");
    let bad = call(
        a,
        "POST",
        &format!("{path}/backfill"),
        Some("from=yesterday&to=today"),
        &[FORM, HTMX],
    )
    .await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("RFC 3339"), "{}", bad.body);
    let filled = call(
        a,
        "POST",
        &format!("{path}/backfill"),
        Some("from=2024-03-01T00%3A00%3A00Z&to=2024-03-03T00%3A00%3A00Z"),
        &[FORM, HTMX],
    )
    .await;
    assert_eq!(filled.status, 200, "{}", filled.body);
    assert_eq!(
        client
            .schedule("<b>nightly")
            .await
            .expect("read")
            .state
            .backfills
            .len(),
        1
    );
    let triggered = call(
        a,
        "POST",
        &format!("{path}/trigger"),
        Some(""),
        &[FORM, HTMX],
    )
    .await;
    assert_eq!(triggered.status, 200);
    assert_eq!(
        client
            .schedule("<b>nightly")
            .await
            .expect("read")
            .state
            .triggers
            .len(),
        1
    );
    let unpaused = call(
        a,
        "POST",
        &format!("{path}/unpause"),
        Some(""),
        &[FORM, HTMX],
    )
    .await;
    assert_eq!(unpaused.status, 200);
    assert!(!client.schedule("<b>nightly").await.expect("read").paused);
    let missing = call(
        a,
        "POST",
        "/schedules/nope/trigger",
        Some(""),
        &[FORM, HTMX],
    )
    .await;
    assert_eq!(missing.status, 404);
    let deleted = call(
        a,
        "POST",
        &format!("{path}/delete"),
        Some(""),
        &[FORM, HTMX],
    )
    .await;
    assert_eq!(deleted.status, 200);
    assert!(client.schedules(None, 10).await.expect("list").is_empty());
}
