//! The dashboard in a real headless Chromium, driven over WebDriver (chromedriver): the list
//! and its filters, a workflow's page and timeline, a signal sent from the page completing the
//! workflow, a cancel, and markup in a payload shown as text. Screenshots of the list and of a
//! workflow page, and of a schedule's, are saved under `target/screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them): without them the
//! test is skipped loudly, and under `CI=true` it fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use loom_core::{Registry, Workflow, WorkflowContext, WorkflowError};
use loom_server::Service;
use loom_sqlite::{SqliteOptions, SqliteStorage};
use loom_storage::Storage;
use loom_worker::{StartOptions, Worker, WorkerConfig};
use serde_json::json;

/// Waits for a `name` signal and greets it.
struct Greet;

impl Workflow for Greet {
    const NAME: &'static str = "Greet";
    type Input = u32;
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let name: String = ctx.wait_signal("name").await?;
        Ok(format!("hello, {name}"))
    }
}

/// Returns its input.
struct Echo;

impl Workflow for Echo {
    const NAME: &'static str = "Echo";
    type Input = String;
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        Ok(ctx.input().clone())
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.add_workflow::<Greet>().expect("register");
    r.add_workflow::<Echo>().expect("register");
    r
}

/// A program on PATH or at one of Debian's paths.
fn program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .chain([PathBuf::from("/usr/bin").join(n)])
            .find(|p| p.is_file())
    })
}

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_lists_shows_signals_cancels_and_escapes() {
    let (Some(chromium), Some(chromedriver)) = (
        program(&["chromium", "chromium-browser", "google-chrome"]),
        program(&["chromedriver"]),
    ) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium and chromedriver are needed under CI (apt-get install chromium chromium-driver)"
        );
        eprintln!("SKIPPED: the browser test needs chromium and chromedriver");
        return;
    };

    // The service over SQLite, with a worker, and workflows to look at.
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Storage> = Arc::new(
        SqliteStorage::open(dir.path().join("loom.db"), SqliteOptions::default())
            .await
            .expect("open"),
    );
    let client = loom_worker::Client::new(store.clone());
    let start = |ty: &'static str, input: serde_json::Value, id: &str| {
        let client = client.clone();
        let id = id.to_owned();
        async move {
            client
                .start_by_name(
                    &registry(),
                    ty,
                    loom_core::Payload::from_json(input),
                    StartOptions {
                        id: Some(id.into()),
                        ..StartOptions::default()
                    },
                )
                .await
                .expect("start")
        }
    };
    start("Greet", json!(1), "greet-ada").await;
    start("Greet", json!(2), "greet-cancel").await;
    let markup =
        r#"<img src=x onerror="window.pwned=1"><script>window.pwned=2</script><b>bold</b>"#;
    start("Echo", json!(markup), "echo-<b>markup</b>").await;
    let worker = Worker::with_config(
        store.clone(),
        registry(),
        WorkerConfig {
            poll_interval: Duration::from_millis(20),
            ..WorkerConfig::default()
        },
    );
    let (stop_worker, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = worker
            .run(async {
                let _ = stopped.await;
            })
            .await;
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        Service::new(store.clone(), Arc::new(registry())).serve(listener, async {
            let _ = server_stopped.await;
        }),
    );
    let base = format!("http://{addr}");

    // The browser.
    let port = free_port();
    let _driver = Driver(
        Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,860", "--hide-scrollbars"]
        }),
    );
    let driver_url = format!("http://127.0.0.1:{port}");
    let c = eventually("chromedriver answers", || {
        let caps = caps.clone();
        let url = driver_url.clone();
        async move {
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&url)
                .await
                .ok()
        }
    })
    .await;

    // The list, then filtered to running workflows.
    c.goto(&format!("{base}/workflows")).await.expect("list");
    eventually("the echo completed", || async {
        let page = c.source().await.ok()?;
        page.contains("completed").then_some(())
    })
    .await;
    c.goto(&format!("{base}/workflows")).await.expect("list");
    let rows = c.find_all(Locator::Css("#rows tr")).await.expect("rows");
    assert_eq!(rows.len(), 3, "three workflows listed");
    std::fs::write(
        screenshots().join("dashboard-list.png"),
        c.screenshot().await.expect("screenshot"),
    )
    .expect("save");
    c.find(Locator::Css("select[name=status]"))
        .await
        .expect("status filter")
        .select_by_value("running")
        .await
        .expect("choose running");
    c.find(Locator::Css(".filters button"))
        .await
        .expect("filter button")
        .click()
        .await
        .expect("filter");
    eventually("the filter applied", || async {
        let url = c.current_url().await.ok()?;
        url.as_str().contains("status=running").then_some(())
    })
    .await;
    let running = text_of(&c, "#rows").await;
    assert!(
        running.contains("greet-ada") && running.contains("greet-cancel"),
        "{running}"
    );
    assert!(
        !running.contains("echo"),
        "the completed one is filtered out: {running}"
    );

    // A workflow's page and its timeline.
    c.find(Locator::LinkText("greet-ada"))
        .await
        .expect("link")
        .click()
        .await
        .expect("open");
    eventually("the workflow page", || async {
        text_of(&c, "h1").await.contains("greet-ada").then_some(())
    })
    .await;
    let timeline = text_of(&c, "table.history").await;
    assert!(timeline.contains("WorkflowStarted"), "{timeline}");
    assert!(
        text_of(&c, ".facts").await.contains("name"),
        "it shows the awaited signal"
    );

    // A signal sent from the page completes it.
    let payload = c
        .find(Locator::Css("textarea[name=payload]"))
        .await
        .expect("payload field");
    payload.send_keys("\"ada\"").await.expect("type");
    c.find(Locator::Css("form[hx-post$='/signal'] button"))
        .await
        .expect("signal button")
        .click()
        .await
        .expect("send");
    eventually("the confirmation", || async { c.accept_alert().await.ok() }).await;
    eventually("the workflow completed", || async {
        let h1 = text_of(&c, "h1").await;
        h1.contains("completed").then_some(())
    })
    .await;
    assert!(text_of(&c, "#output").await.contains("hello, ada"));
    std::fs::write(
        screenshots().join("dashboard-workflow.png"),
        c.screenshot().await.expect("screenshot"),
    )
    .expect("save");

    // A cancel, confirmed.
    c.goto(&format!("{base}/workflows/greet-cancel"))
        .await
        .expect("page");
    c.find(Locator::Css("form[hx-post$='/cancel'] button"))
        .await
        .expect("cancel button")
        .click()
        .await
        .expect("cancel");
    eventually("the confirmation", || async { c.accept_alert().await.ok() }).await;
    eventually("the workflow cancelled", || async {
        let h1 = text_of(&c, "h1").await;
        h1.contains("cancelled").then_some(())
    })
    .await;

    // Markup in an id and an input shows as text, and runs nothing.
    c.goto(&format!("{base}/workflows")).await.expect("list");
    c.find(Locator::LinkText("echo-<b>markup</b>"))
        .await
        .expect("the id shows as text")
        .click()
        .await
        .expect("open");
    eventually("the echo page", || async {
        text_of(&c, "h1")
            .await
            .contains("echo-<b>markup</b>")
            .then_some(())
    })
    .await;
    let input = text_of(&c, ".payloads pre").await;
    assert!(
        input.contains("<b>bold</b>") && input.contains("<script>"),
        "{input}"
    );
    let injected = c
        .execute(
            "return [document.querySelectorAll('main b, main img, main script').length, \
             typeof window.pwned];",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(
        injected,
        json!([0, "undefined"]),
        "nothing the payload held ran or rendered"
    );

    // A schedule: its page fills in as it fires, and a trigger is confirmed.
    let every_second = loom_worker::ScheduleDefinition {
        spec: loom_storage::schedule::ScheduleSpec {
            intervals: vec![loom_storage::schedule::IntervalSpec {
                every_ms: 1_000,
                offset_ms: 0,
            }],
            ..Default::default()
        },
        action: loom_storage::schedule::ScheduleAction {
            workflow: "Echo".into(),
            version: None,
            input: loom_core::Payload::from_json(json!("tick")),
            id_pattern: "{schedule}-{time}".into(),
            tags: Default::default(),
        },
        policy: loom_storage::schedule::SchedulePolicy::default(),
    };
    client
        .create_schedule(&registry(), "echo-every-second", every_second, false)
        .await
        .expect("schedule");
    c.goto(&format!("{base}/schedules"))
        .await
        .expect("schedules");
    c.find(Locator::LinkText("echo-every-second"))
        .await
        .expect("the schedule is listed")
        .click()
        .await
        .expect("open");
    eventually("fires on its page", || async {
        let body = text_of(&c, "#body").await;
        (body.matches("completed").count() >= 2).then_some(())
    })
    .await;
    c.find(Locator::Css("form[hx-post$='/trigger'] button"))
        .await
        .expect("trigger button")
        .click()
        .await
        .expect("trigger");
    eventually("the confirmation", || async { c.accept_alert().await.ok() }).await;
    eventually("a triggered fire", || async {
        text_of(&c, "#body")
            .await
            .contains("triggered")
            .then_some(())
    })
    .await;
    std::fs::write(
        screenshots().join("dashboard-schedule.png"),
        c.screenshot().await.expect("screenshot"),
    )
    .expect("save");

    c.close().await.expect("close the browser");
    let _ = stop_server.send(());
    let _ = stop_worker.send(());
}
