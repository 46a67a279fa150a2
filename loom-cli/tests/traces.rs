//! Traces exported over OTLP to a receiver in this test's process, from two `loom worker`
//! processes in turn: every workflow task and activity attempt of a run, and its child
//! workflow's, land in one trace, the one stored with the run.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::Value;

fn loom(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loom"));
    cmd.current_dir(dir)
        .env_remove("LOOM_DB")
        .env_remove("RUST_LOG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    cmd
}

/// Runs `loom` with `args`, which must succeed; its stdout.
fn run(cmd: &mut Command, args: &[&str]) -> String {
    let out = cmd.args(args).output().expect("loom runs");
    assert!(
        out.status.success(),
        "loom {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An OTLP/HTTP receiver (JSON encoding) on a free loopback port: every export it got.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    use axum::routing::post;
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                let doc: Value = serde_json::from_slice(&body).expect("an OTLP/JSON export");
                keep.lock().expect("lock").push(doc);
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), got)
}

/// One exported span: its trace, id, parent, name, attributes and the worker that sent it.
#[derive(Debug)]
struct Span {
    trace: String,
    id: String,
    parent: String,
    name: String,
    workflow_id: String,
    instance: String,
}

fn attribute(attrs: &Value, key: &str) -> Option<String> {
    attrs.as_array()?.iter().find_map(|a| {
        (a["key"] == key).then(|| {
            let v = &a["value"];
            v["stringValue"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| v["intValue"].as_str().map(str::to_owned))
                .unwrap_or_default()
        })
    })
}

fn spans(exports: &[Value]) -> Vec<Span> {
    let mut out = Vec::new();
    for export in exports {
        for rs in export["resourceSpans"].as_array().into_iter().flatten() {
            let instance =
                attribute(&rs["resource"]["attributes"], "service.instance.id").unwrap_or_default();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    out.push(Span {
                        trace: s["traceId"].as_str().unwrap_or_default().to_owned(),
                        id: s["spanId"].as_str().unwrap_or_default().to_owned(),
                        parent: s["parentSpanId"].as_str().unwrap_or_default().to_owned(),
                        name: s["name"].as_str().unwrap_or_default().to_owned(),
                        workflow_id: attribute(&s["attributes"], "workflow_id").unwrap_or_default(),
                        instance: instance.clone(),
                    });
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_holds_a_run_across_two_worker_processes() {
    let (url, got) = receiver().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path().to_owned();
    let worker = {
        let (dir, url) = (dir.clone(), url.clone());
        move || {
            let mut cmd = loom(&dir);
            cmd.env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json");
            run(
                &mut cmd,
                &[
                    "worker",
                    "--exit-when-idle",
                    "--poll-interval",
                    "0.05",
                    "--otlp",
                    &url,
                ],
            );
        }
    };
    let approval = run(
        &mut loom(&dir),
        &[
            "start",
            "Approval",
            "--input",
            r#"{"request_id": "r1", "timeout_secs": 3600}"#,
        ],
    )
    .trim()
    .to_owned();
    // The first worker runs the first task and stops: the run waits for a signal.
    tokio::task::spawn_blocking(worker.clone())
        .await
        .expect("worker 1");
    run(
        &mut loom(&dir),
        &[
            "signal",
            &approval,
            "approve",
            "--payload",
            r#"{"approved": true, "by": "ann"}"#,
        ],
    );
    let saga = run(
        &mut loom(&dir),
        &[
            "start",
            "OrderSaga",
            "--input",
            r#"{"order_id": "o1", "warehouse": "north", "courier_wait_secs": 0}"#,
        ],
    )
    .trim()
    .to_owned();
    // The second worker finishes both, the saga's child included.
    tokio::task::spawn_blocking(worker).await.expect("worker 2");
    let inspect = run(&mut loom(&dir), &["inspect", &approval, "--json"]);
    let doc: Value = serde_json::from_str(&inspect).expect("inspect --json");
    assert_eq!(doc["status"], "completed", "{doc}");

    let all = spans(&got.lock().expect("lock"));
    let of = |id: &str| -> Vec<&Span> {
        all.iter()
            .filter(|s| s.workflow_id == id || s.workflow_id.starts_with(&format!("{id}/")))
            .collect()
    };
    let run_spans = of(&approval);
    let names: Vec<&str> = run_spans.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names
            .iter()
            .filter(|n| **n == "RunWorkflow:Approval")
            .count()
            >= 2,
        "{names:?}"
    );
    assert!(names.contains(&"RunActivity:record_decision"), "{names:?}");
    let traces: std::collections::BTreeSet<&str> =
        run_spans.iter().map(|s| s.trace.as_str()).collect();
    assert_eq!(traces.len(), 1, "the run's spans are in {traces:?}");
    let instances: std::collections::BTreeSet<&str> =
        run_spans.iter().map(|s| s.instance.as_str()).collect();
    assert_eq!(instances.len(), 2, "spans from two workers: {instances:?}");
    // The trace is the one stored with the run, and the spans hang from its parent id.
    let history = run(
        &mut loom(&dir),
        &["inspect", &approval, "--events", "--json"],
    );
    let history: Value = serde_json::from_str(&history).expect("events");
    let tp = history["events"][0]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent in {history}"))
        .to_owned();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(traces.iter().next().copied(), Some(parts[1]), "{tp}");
    for s in run_spans
        .iter()
        .filter(|s| s.name.starts_with("RunWorkflow"))
    {
        assert_eq!(s.parent, parts[2], "{s:?} hangs from the stored parent");
    }

    let saga_spans = of(&saga);
    let saga_traces: std::collections::BTreeSet<&str> =
        saga_spans.iter().map(|s| s.trace.as_str()).collect();
    assert_eq!(saga_traces.len(), 1, "{saga_spans:?}");
    assert!(
        saga_spans
            .iter()
            .any(|s| s.name == "RunWorkflow:Shipment" && s.workflow_id != saga),
        "the child's tasks join its parent's trace: {saga_spans:?}"
    );
    assert!(
        saga_spans.iter().all(|s| !s.id.is_empty()),
        "{saga_spans:?}"
    );
}

#[test]
fn bad_otlp_settings_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(&mut loom(dir.path()), &["init"]);
    let out = loom(dir.path())
        .args(["worker", "--exit-when-idle", "--otlp", "127.0.0.1:4318"])
        .output()
        .expect("loom runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--otlp takes"));
    let out = loom(dir.path())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .args([
            "worker",
            "--exit-when-idle",
            "--otlp",
            "http://127.0.0.1:4318",
        ])
        .output()
        .expect("loom runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http/protobuf or http/json"));
}
