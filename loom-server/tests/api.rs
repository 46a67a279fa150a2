//! The API over a real service on a loopback port, with a worker running the workflows it
//! starts: every endpoint's success and its error answers (unknown id 404, bad JSON 400 with a
//! message, no token 401, cross-site actions 403), on MemoryStorage and SQLite.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loom_core::{Registry, Workflow, WorkflowContext, WorkflowError};
use loom_server::Service;
use loom_sqlite::{SqliteOptions, SqliteStorage};
use loom_storage::{MemoryStorage, Storage};
use loom_worker::{Worker, WorkerConfig};
use serde_json::{Value, json};

/// Waits for a `name` signal and greets it; a `stop` signal ends it early.
struct Greet;

impl Workflow for Greet {
    const NAME: &'static str = "Greet";
    type Input = u32;
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let name: String = ctx.wait_signal("name").await?;
        Ok(format!("hello, {name} ({})", ctx.input()))
    }
}

struct Running {
    addr: SocketAddr,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

async fn serve(store: Arc<dyn Storage>, token: Option<&str>) -> Running {
    let mut registry = Registry::new();
    registry.add_workflow::<Greet>().expect("register");
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = Service::new(store.clone(), Arc::new(registry)).with_token(token.map(Into::into));
    tokio::spawn(service.serve(listener, async {
        let _ = server_stopped.await;
    }));
    let mut registry = Registry::new();
    registry.add_workflow::<Greet>().expect("register");
    let config = WorkerConfig {
        poll_interval: Duration::from_millis(20),
        ..WorkerConfig::default()
    };
    let worker = Worker::with_config(store, registry, config);
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = worker
            .run(async {
                let _ = worker_stopped.await;
            })
            .await;
    });
    Running {
        addr,
        stop: vec![stop_server, stop_worker],
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for s in self.stop.drain(..) {
            let _ = s.send(());
        }
    }
}

/// One request; answers the status and the body as JSON (`Value::Null` when it is not JSON).
async fn call(
    addr: SocketAddr,
    method: &'static str,
    path: &str,
    body: Option<&str>,
    headers: &[(&'static str, &str)],
) -> (u16, Value) {
    let url = format!("http://{addr}{path}");
    let body = body.map(str::to_owned);
    let headers: Vec<(&'static str, String)> =
        headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = match (method, body) {
            ("GET", _) => {
                let mut r = agent.get(&url);
                for (k, v) in &headers {
                    r = r.header(*k, v);
                }
                r.call()
            }
            ("DELETE", _) => {
                let mut r = agent.delete(&url);
                for (k, v) in &headers {
                    r = r.header(*k, v);
                }
                r.call()
            }
            (_, body) => {
                let mut r = if method == "PUT" {
                    agent.put(&url)
                } else {
                    agent.post(&url)
                };
                for (k, v) in &headers {
                    r = r.header(*k, v);
                }
                match body {
                    Some(b) => r.send(b.as_bytes()),
                    None => r.send_empty(),
                }
            }
        }
        .expect("the service answers");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    })
    .await
    .expect("request")
}

const JSON: (&str, &str) = ("content-type", "application/json");

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    call(addr, "GET", path, None, &[]).await
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    call(addr, "POST", path, Some(&body.to_string()), &[JSON]).await
}

async fn wait_status(addr: SocketAddr, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, w) = get(addr, &format!("/api/v1/workflows/{id}")).await;
        assert_eq!(code, 200, "{w}");
        if w["status"] == status {
            return w;
        }
        assert!(Instant::now() < deadline, "{id} never became {status}: {w}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stores() -> Vec<(&'static str, Arc<dyn Storage>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = SqliteStorage::open(dir.path().join("loom.db"), SqliteOptions::default())
        .await
        .expect("open");
    vec![
        ("memory", Arc::new(MemoryStorage::new()), None),
        ("sqlite", Arc::new(sqlite), Some(dir)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_is_started_found_signalled_and_read_through_the_api() {
    for (backend, store, _dir) in stores().await {
        let s = serve(store, None).await;
        let a = s.addr;

        let (code, started) = post(
            a,
            "/api/v1/workflows",
            json!({"type": "Greet", "input": 7, "id": "greet-1", "tags": {"team": "<b>ops</b>", "n": 3}}),
        )
        .await;
        assert_eq!(code, 201, "{backend}: {started}");
        assert_eq!(started["id"], "greet-1");
        // The same start again is the same workflow; another input under the id is a conflict.
        let (code, again) = post(a, "/api/v1/workflows", json!({"type": "Greet", "input": 7, "id": "greet-1", "tags": {"team": "<b>ops</b>", "n": 3}})).await;
        assert_eq!(
            (code, &again["id"]),
            (201, &json!("greet-1")),
            "{backend}: {again}"
        );
        let (code, taken) = post(
            a,
            "/api/v1/workflows",
            json!({"type": "Greet", "input": 8, "id": "greet-1"}),
        )
        .await;
        assert_eq!(
            (code, &taken["code"]),
            (409, &json!("conflict")),
            "{backend}: {taken}"
        );
        for n in 2..=4 {
            let (code, _) = post(
                a,
                "/api/v1/workflows",
                json!({"type": "Greet", "input": n, "id": format!("greet-{n}")}),
            )
            .await;
            assert_eq!(code, 201);
        }

        let w = wait_status(a, "greet-1", "running").await;
        assert_eq!(w["type"], "Greet");
        assert_eq!(w["input"], 7);
        assert_eq!(w["tags"], json!({"team": "<b>ops</b>", "n": 3}));
        assert!(
            w["created_at"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{w}"
        );

        // Lists: filters and pages.
        let (code, page) = get(a, "/api/v1/workflows?type=Greet&limit=3").await;
        assert_eq!(code, 200, "{page}");
        assert_eq!(
            page["workflows"].as_array().map(Vec::len),
            Some(3),
            "{page}"
        );
        let cursor = page["next"].as_str().expect("a next page").to_owned();
        let (_, rest) = get(
            a,
            &format!(
                "/api/v1/workflows?type=Greet&limit=3&cursor={}",
                enc(&cursor)
            ),
        )
        .await;
        let mut ids: Vec<String> = page["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .chain(rest["workflows"].as_array().unwrap())
            .map(|w| w["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            ["greet-1", "greet-2", "greet-3", "greet-4"],
            "{backend}"
        );
        assert!(rest["next"].is_null(), "{rest}");
        let (_, tagged) = get(a, "/api/v1/workflows?tag=n%3E2").await;
        assert_eq!(
            tagged["workflows"].as_array().map(Vec::len),
            Some(1),
            "{tagged}"
        );
        let (_, none) = get(a, "/api/v1/workflows?status=completed").await;
        assert_eq!(none["workflows"], json!([]));

        // A signal completes it; its history reads in pages.
        let (code, ok) = post(
            a,
            "/api/v1/workflows/greet-1/signal",
            json!({"name": "name", "payload": "ada"}),
        )
        .await;
        assert_eq!(code, 202, "{ok}");
        let done = wait_status(a, "greet-1", "completed").await;
        assert_eq!(done["output"], "hello, ada (7)");
        let (code, first) = get(a, "/api/v1/workflows/greet-1/history?limit=2").await;
        assert_eq!(code, 200, "{first}");
        assert_eq!(first["events"][0]["type"], "WorkflowStarted");
        assert_eq!(first["events"][0]["seq"], 1);
        let next = first["next"].as_u64().expect("more events");
        let (_, second) = get(
            a,
            &format!("/api/v1/workflows/greet-1/history?after={next}&limit=1000"),
        )
        .await;
        let all: Vec<u64> = first["events"]
            .as_array()
            .unwrap()
            .iter()
            .chain(second["events"].as_array().unwrap())
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(
            all,
            (1..=all.len() as u64).collect::<Vec<_>>(),
            "{backend}: every event once, in order"
        );
        assert!(
            first["events"]
                .as_array()
                .unwrap()
                .iter()
                .chain(second["events"].as_array().unwrap())
                .any(|e| e["type"] == "SignalReceived"),
            "the signal is in the history, wherever the worker took it"
        );
        assert_eq!(
            second["events"].as_array().unwrap().last().unwrap()["type"],
            "WorkflowCompleted"
        );

        // A reset reruns it from its first point, here without the signal: it waits again.
        let (code, reset) = post(
            a,
            "/api/v1/workflows/greet-1/reset",
            json!({"to": "1", "reason": "try again", "no_signals": true}),
        )
        .await;
        assert_eq!(code, 202, "{backend}: {reset}");
        assert_eq!(
            (reset["run"].as_u64(), reset["point"].as_u64()),
            (Some(2), Some(1))
        );
        let again = wait_status(a, "greet-1", "running").await;
        assert_eq!(again["run"], 2, "{again}");
        let (code, runs) = get(a, "/api/v1/workflows/greet-1/runs").await;
        assert_eq!(code, 200, "{runs}");
        assert_eq!(
            runs["runs"][0]["run"], 1,
            "the run before the reset: {runs}"
        );
        let (code, tasks) = get(a, "/api/v1/workflows/greet-1/tasks").await;
        assert_eq!(code, 200, "{tasks}");
        assert!(tasks["tasks"].is_array(), "{tasks}");

        // Operator actions.
        let (code, _) = post(
            a,
            "/api/v1/workflows/greet-2/cancel",
            json!({"reason": "not needed"}),
        )
        .await;
        assert_eq!(code, 202);
        wait_status(a, "greet-2", "cancelled").await;
        let (code, _) = post(
            a,
            "/api/v1/workflows/greet-3/pause",
            json!({"reason": "looking into it"}),
        )
        .await;
        assert_eq!(code, 202);
        wait_status(a, "greet-3", "paused").await;
        let (code, _) = post(a, "/api/v1/workflows/greet-3/resume", json!({})).await;
        assert_eq!(code, 202);
        let (code, _) = post(
            a,
            "/api/v1/workflows/greet-4/terminate",
            json!({"reason": "duplicate"}),
        )
        .await;
        assert_eq!(code, 202);
        wait_status(a, "greet-4", "terminated").await;
        let (code, ended) = post(
            a,
            "/api/v1/workflows/greet-4/signal",
            json!({"name": "name", "payload": "late"}),
        )
        .await;
        assert_eq!((code, &ended["code"]), (409, &json!("conflict")), "{ended}");

        let (code, purged) = post(a, "/api/v1/purge", json!({"older_than_s": 0})).await;
        assert_eq!(code, 200, "{purged}");
        let mut gone: Vec<&str> = purged["purged"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        gone.sort();
        assert_eq!(
            gone,
            ["greet-2", "greet-4"],
            "{backend}: the closed ones, and only them"
        );
        let (code, _) = get(a, "/api/v1/workflows/greet-2").await;
        assert_eq!(code, 404);

        let (code, stats) = get(a, "/api/v1/stats").await;
        assert_eq!(code, 200);
        assert_eq!(stats["workflows"]["running"], 2, "{stats}");
        assert!(
            stats["workflows"].get("cancelled").is_none(),
            "purged: {stats}"
        );
        assert!(
            stats["at"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{stats}"
        );
        let (_, types) = get(a, "/api/v1/types").await;
        assert_eq!(
            types["workflows"],
            json!([{"name": "Greet", "versions": [1]}])
        );
        let (code, doc) = get(a, "/api/openapi.json").await;
        assert_eq!(code, 200);
        assert!(
            doc["paths"]["/api/v1/workflows/{id}/history"]["get"].is_object(),
            "{doc}"
        );
    }
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_answered_with_what_is_wrong_and_write_nothing() {
    let store: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let s = serve(store.clone(), None).await;
    let a = s.addr;
    let (code, _) = post(
        a,
        "/api/v1/workflows",
        json!({"type": "Greet", "input": 1, "id": "w"}),
    )
    .await;
    assert_eq!(code, 201);

    let cases: Vec<(&str, &str, Option<&str>, u16, &str)> = vec![
        ("GET", "/api/v1/workflows/nope", None, 404, "nope"),
        ("GET", "/api/v1/workflows/nope/history", None, 404, "nope"),
        ("GET", "/api/v1/workflows/nope/tasks", None, 404, "nope"),
        ("GET", "/api/v1/workflows/nope/runs", None, 404, "nope"),
        (
            "POST",
            "/api/v1/purge",
            Some(r#"{"older_than_s":-1}"#),
            400,
            "older_than_s",
        ),
        (
            "POST",
            "/api/v1/purge",
            Some(r#"{"older_than_s":60,"status":"running"}"#),
            400,
            "never purged",
        ),
        (
            "POST",
            "/api/v1/purge",
            Some(r#"{"older_than_s":60,"limit":0}"#),
            400,
            "limit",
        ),
        (
            "POST",
            "/api/v1/purge",
            Some(r#"{"older_than_s":60,"colour":"red"}"#),
            400,
            "colour",
        ),
        (
            "POST",
            "/api/v1/workflows/nope/signal",
            Some(r#"{"name":"x"}"#),
            404,
            "nope",
        ),
        (
            "POST",
            "/api/v1/workflows/nope/cancel",
            Some("{}"),
            404,
            "nope",
        ),
        ("POST", "/api/v1/workflows", Some("{not json"), 400, "JSON"),
        (
            "POST",
            "/api/v1/workflows",
            Some(r#"{"type":"Nope"}"#),
            400,
            "Nope",
        ),
        (
            "POST",
            "/api/v1/workflows",
            Some(r#"{"type":"Greet","input":"seven"}"#),
            400,
            "input",
        ),
        (
            "POST",
            "/api/v1/workflows",
            Some(r#"{"type":"Greet","input":1,"surprise":1}"#),
            400,
            "surprise",
        ),
        (
            "POST",
            "/api/v1/workflows",
            Some(r#"{"type":"Greet","input":1,"tags":{"k":1.5}}"#),
            400,
            "tag",
        ),
        (
            "POST",
            "/api/v1/workflows",
            Some(r#"{"type":"Greet","input":1,"version":9}"#),
            400,
            "version 9",
        ),
        (
            "POST",
            "/api/v1/workflows/w/signal",
            Some(r#"{"name":""}"#),
            400,
            "name",
        ),
        (
            "POST",
            "/api/v1/workflows/w/terminate",
            Some("{}"),
            400,
            "reason",
        ),
        (
            "POST",
            "/api/v1/workflows/w/pause",
            Some(r#"{"reason":"  "}"#),
            400,
            "reason",
        ),
        (
            "GET",
            "/api/v1/workflows?status=sleeping",
            None,
            400,
            "status",
        ),
        ("GET", "/api/v1/workflows?limit=0", None, 400, "limit"),
        ("GET", "/api/v1/workflows?limit=100000", None, 400, "limit"),
        (
            "GET",
            "/api/v1/workflows?tag=amount",
            None,
            400,
            "comparison",
        ),
        (
            "GET",
            "/api/v1/workflows?cursor=garbage",
            None,
            400,
            "cursor",
        ),
        (
            "GET",
            "/api/v1/workflows?created_after=yesterday",
            None,
            400,
            "RFC 3339",
        ),
        ("GET", "/api/v1/workflows?colour=red", None, 400, "colour"),
        (
            "GET",
            "/api/v1/workflows/w/history?after=-1",
            None,
            400,
            "after",
        ),
        ("GET", "/api/v1/workflows/w/history?run=0", None, 400, "run"),
        ("GET", "/api/v2/workflows", None, 404, "route"),
    ];
    for (method, path, body, status, says) in cases {
        let (code, answer) = call(a, method, path, body, &[JSON]).await;
        assert_eq!(code, status, "{method} {path} {body:?}: {answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(says),
            "{method} {path}: {answer} should say {says:?}"
        );
        assert!(answer["code"].is_string(), "{answer}");
    }
    // A body not declared as JSON.
    let (code, answer) = call(a, "POST", "/api/v1/workflows/w/cancel", Some("{}"), &[]).await;
    assert_eq!(code, 415, "{answer}");
    // Nothing of that was written: one workflow, still running, its history only begun.
    let page = store
        .list(&loom_storage::ListQuery::default())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].status, loom_storage::WorkflowStatus::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_everything_but_liveness_and_the_document() {
    let s = serve(Arc::new(MemoryStorage::new()), Some("s3cret")).await;
    let a = s.addr;
    let (code, answer) = get(a, "/api/v1/workflows").await;
    assert_eq!(
        (code, &answer["code"]),
        (401, &json!("unauthorized")),
        "{answer}"
    );
    let (code, _) = call(
        a,
        "GET",
        "/api/v1/workflows",
        None,
        &[("authorization", "Bearer wrong")],
    )
    .await;
    assert_eq!(code, 401);
    let (code, _) = call(
        a,
        "POST",
        "/api/v1/workflows",
        Some(r#"{"type":"Greet","input":1}"#),
        &[JSON],
    )
    .await;
    assert_eq!(code, 401, "no action without the token");
    let (code, page) = call(
        a,
        "GET",
        "/api/v1/workflows",
        None,
        &[("authorization", "Bearer s3cret")],
    )
    .await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(get(a, "/livez").await.0, 200);
    assert_eq!(get(a, "/api/openapi.json").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_from_other_sites_are_refused() {
    let store: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let s = serve(store.clone(), None).await;
    let a = s.addr;
    let body = r#"{"type":"Greet","input":1,"id":"x"}"#;
    let evil = [JSON, ("origin", "http://evil.example")];
    let (code, answer) = call(a, "POST", "/api/v1/workflows", Some(body), &evil).await;
    assert_eq!(
        (code, &answer["code"]),
        (403, &json!("forbidden")),
        "{answer}"
    );
    let fetch = [JSON, ("sec-fetch-site", "cross-site")];
    assert_eq!(
        call(a, "POST", "/api/v1/workflows", Some(body), &fetch)
            .await
            .0,
        403
    );
    let rebound = [JSON, ("host", "evil.example")];
    assert_eq!(
        call(a, "GET", "/api/v1/workflows", None, &rebound).await.0,
        403
    );
    assert!(
        store
            .list(&loom_storage::ListQuery::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing started"
    );
    let own = format!("http://{a}");
    let same = [
        JSON,
        ("origin", own.as_str()),
        ("sec-fetch-site", "same-origin"),
    ];
    assert_eq!(
        call(a, "POST", "/api/v1/workflows", Some(body), &same)
            .await
            .0,
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_created_read_changed_and_deleted_through_the_api() {
    for (name, store, _dir) in stores().await {
        let running = serve(store, None).await;
        let addr = running.addr;
        let create = json!({
            "id": "greet-every-second",
            "type": "Greet",
            "input": 7,
            "intervals": [{"every_ms": 1000}],
            "overlap": "allow_all",
            "tags": {"team": "ops"}
        });
        let (code, s) = post(addr, "/api/v1/schedules", create.clone()).await;
        assert_eq!(code, 201, "{name}: {s}");
        assert_eq!(s["id"], "greet-every-second");
        assert!(s["version"].as_u64().is_some_and(|v| v >= 1_000), "{s}");
        assert_eq!(s["overlap"], "allow_all");
        assert_eq!(s["tags"]["team"], "ops");
        let (code, e) = post(addr, "/api/v1/schedules", create).await;
        assert_eq!(
            (code, e["code"].as_str()),
            (409, Some("conflict")),
            "{name}: {e}"
        );

        // It fires; the workflows it starts are tagged with it.
        let deadline = Instant::now() + Duration::from_secs(20);
        let described = loop {
            let (code, d) = get(addr, "/api/v1/schedules/greet-every-second").await;
            assert_eq!(code, 200, "{name}: {d}");
            if d["schedule"]["counts"]["started"].as_u64() >= Some(2) {
                break d;
            }
            assert!(Instant::now() < deadline, "{name}: never fired: {d}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(described["upcoming"].as_array().map(Vec::len), Some(10));
        assert!(
            described["running"]
                .as_array()
                .is_some_and(|r| !r.is_empty()),
            "{name}: Greet waits for a signal, so its runs are open: {described}"
        );
        assert_eq!(described["recent"][0]["outcome"], "started");
        assert_eq!(described["recent"][0]["status"], "running");
        let (code, page) = get(
            addr,
            "/api/v1/workflows?tag=loom.schedule%3Dgreet-every-second",
        )
        .await;
        assert_eq!(code, 200);
        assert!(
            page["workflows"].as_array().is_some_and(|w| w.len() >= 2),
            "{page}"
        );

        let (code, p) = post(
            addr,
            "/api/v1/schedules/greet-every-second/pause",
            json!({"note": "deploy"}),
        )
        .await;
        assert_eq!(
            (code, &p["paused"], &p["note"]),
            (200, &json!(true), &json!("deploy"))
        );
        let (code, t) = post(
            addr,
            "/api/v1/schedules/greet-every-second/trigger",
            json!({}),
        )
        .await;
        assert_eq!(code, 200, "{t}");
        let (code, b) = post(
            addr,
            "/api/v1/schedules/greet-every-second/backfill",
            json!({"from": "2024-01-01T00:00:00Z", "to": "2024-01-01T00:00:02Z"}),
        )
        .await;
        assert_eq!(code, 200, "{b}");
        let (code, u) = post(
            addr,
            "/api/v1/schedules/greet-every-second/unpause",
            json!({}),
        )
        .await;
        assert_eq!((code, &u["paused"]), (200, &json!(false)));
        let update = json!({
            "type": "Greet",
            "input": 8,
            "cron": ["0 0 9 * * MON-FRI"],
            "timezone": "Europe/Paris"
        });
        let (code, u) = call(
            addr,
            "PUT",
            "/api/v1/schedules/greet-every-second",
            Some(&update.to_string()),
            &[JSON],
        )
        .await;
        assert_eq!(code, 200, "{name}: {u}");
        assert_eq!(u["timezone"], "Europe/Paris");
        assert_eq!(u["overlap"], "skip", "an update replaces everything");
        let (code, page) = get(addr, "/api/v1/schedules?limit=10").await;
        assert_eq!(
            (code, page["schedules"].as_array().map(Vec::len)),
            (200, Some(1))
        );

        // Bad requests change nothing.
        for (body, says) in [
            (
                json!({"id": "x", "type": "Greet", "input": 1, "cron": ["0 61 * * *"]}),
                "malformed",
            ),
            (
                json!({"id": "x", "type": "Greet", "input": 1, "cron": ["* * * * *"], "timezone": "Mars/Base"}),
                "unknown time zone",
            ),
            (
                json!({"id": "x", "type": "Nope", "cron": ["* * * * *"]}),
                "unknown workflow",
            ),
            (
                json!({"id": "x", "type": "Greet", "input": "seven", "cron": ["* * * * *"]}),
                "does not fit",
            ),
            (
                json!({"type": "Greet", "input": 1, "cron": ["* * * * *"]}),
                "needs an id",
            ),
            (
                json!({"id": "a/b", "type": "Greet", "input": 1, "cron": ["* * * * *"]}),
                "'/'",
            ),
            (
                json!({"id": "x", "type": "Greet", "input": 1, "intervals": [{"every_ms": 10}]}),
                "at least a second",
            ),
            (
                json!({"id": "x", "type": "Greet", "input": 1, "cron": ["* * * * *"], "overlap": "sometimes"}),
                "unknown variant",
            ),
        ] {
            let (code, e) = post(addr, "/api/v1/schedules", body.clone()).await;
            assert_eq!(code, 400, "{name}: {body}: {e}");
            assert!(
                e["error"].as_str().is_some_and(|m| m.contains(says)),
                "{name}: {body}: {e}"
            );
        }
        let (code, e) = post(
            addr,
            "/api/v1/schedules/greet-every-second/backfill",
            json!({"from": "2024-01-02T00:00:00Z", "to": "2024-01-01T00:00:00Z"}),
        )
        .await;
        assert_eq!(code, 400, "{e}");
        for path in ["/api/v1/schedules/nope"] {
            let (code, e) = get(addr, path).await;
            assert_eq!((code, e["code"].as_str()), (404, Some("not_found")), "{e}");
        }
        let (code, e) = post(addr, "/api/v1/schedules/nope/trigger", json!({})).await;
        assert_eq!(code, 404, "{e}");
        let (code, e) = get(addr, "/api/v1/schedules?limit=0").await;
        assert_eq!(code, 400, "{e}");
        let (code, page) = get(addr, "/api/v1/schedules").await;
        assert_eq!(
            (code, page["schedules"].as_array().map(Vec::len)),
            (200, Some(1))
        );

        let (code, d) = call(
            addr,
            "DELETE",
            "/api/v1/schedules/greet-every-second",
            None,
            &[],
        )
        .await;
        assert_eq!((code, &d["id"]), (200, &json!("greet-every-second")));
        let (code, _) = call(
            addr,
            "DELETE",
            "/api/v1/schedules/greet-every-second",
            None,
            &[],
        )
        .await;
        assert_eq!(code, 404);
        drop(running);
    }
}
