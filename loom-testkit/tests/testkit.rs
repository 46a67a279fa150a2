//! The test kit on workflows written for it: a month of sleeping and two signals in
//! milliseconds, mocks by activity type, retries on the virtual clock, a workflow blocked for
//! ever, a paused one, and replay of exported histories.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use loom_core::{
    Activity, ActivityContext, ActivityError, Failure, Outcome, Registry, Workflow,
    WorkflowContext, WorkflowError,
};
use loom_testkit::{START, TestEnv, TestError};
use serde::{Deserialize, Serialize};

const DAY: Duration = Duration::from_secs(86_400);

/// Charges a card (for real it would call a bank).
struct ChargeCard;
impl Activity for ChargeCard {
    const NAME: &'static str = "charge_card";
    type Input = u32;
    type Output = String;
    async fn run(&self, _: ActivityContext, cents: u32) -> Result<String, Failure> {
        Err(Failure::non_retryable(
            "no_bank_in_tests",
            format!("tried to charge {cents} for real"),
        ))
    }
}

#[derive(Default, Serialize, Deserialize)]
struct TrialState {
    approvals: Vec<String>,
    charged: Option<String>,
}

/// A 30-day trial: waits for two approvals (the second within a week of the first), sleeps
/// out the month, then charges.
struct Trial;
impl Workflow for Trial {
    const NAME: &'static str = "Trial";
    type Input = u32;
    type State = TrialState;
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let started = ctx.now();
        let first: String = ctx.wait_signal("approve").await?;
        ctx.update_state(|s| s.approvals.push(first))?;
        let Some(second) = ctx
            .wait_signal_timeout::<String>("approve", 7 * DAY)
            .await?
        else {
            return Ok("not approved in time".into());
        };
        ctx.update_state(|s| s.approvals.push(second))?;
        let ends = started.saturating_add(30 * DAY);
        ctx.sleep_until(ends).await?;
        let receipt = ctx.activity::<ChargeCard>(*ctx.input()).await?;
        ctx.update_state(|s| s.charged = Some(receipt.clone()))?;
        Ok(format!(
            "charged after {} days: {receipt}",
            (ctx.now().as_millis() - started.as_millis()) / 86_400_000
        ))
    }
}

fn env() -> TestEnv {
    let mut env = TestEnv::new();
    env.workflow::<Trial>()
        .mock::<ChargeCard>(|cents, _| Ok(format!("receipt for {cents}")));
    env
}

#[tokio::test]
async fn a_month_of_sleep_and_two_signals_finish_in_milliseconds() {
    let real = Instant::now();
    let mut env = env();
    let trial = env.start::<Trial>("trial-1", &999).await.expect("start");
    env.signal_at(3 * DAY, trial.id(), "approve", "ada")
        .expect("schedule");
    env.signal_at(21 * DAY, trial.id(), "approve", "grace")
        .expect("schedule");
    // The second approval comes 18 days after the first: too late.
    assert_eq!(
        env.result(&trial).await.expect("result"),
        "not approved in time"
    );
    assert!(env.now() >= START.saturating_add(10 * DAY));

    let again = env.start::<Trial>("trial-2", &999).await.expect("start");
    env.signal_at(DAY, again.id(), "approve", "ada")
        .expect("schedule");
    env.signal_at(5 * DAY, again.id(), "approve", "grace")
        .expect("schedule");
    let out = env.result(&again).await.expect("result");
    assert_eq!(out, "charged after 30 days: receipt for 999");
    let state = env.state(&again).await.expect("state");
    assert_eq!(state.approvals, ["ada", "grace"]);
    assert_eq!(state.charged.as_deref(), Some("receipt for 999"));
    let names = env.event_names(again.id()).await.expect("history");
    assert_eq!(names.first(), Some(&"WorkflowStarted"));
    assert!(names.contains(&"TimerFired") && names.contains(&"ActivityScheduled"));
    assert!(
        real.elapsed() < Duration::from_secs(10),
        "virtual months, real milliseconds: {:?}",
        real.elapsed()
    );
    env.shutdown().await;
}

/// Charges with retries.
struct Pay;
impl Workflow for Pay {
    const NAME: &'static str = "Pay";
    type Input = ();
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        match ctx.activity::<ChargeCard>(100).await {
            Ok(r) => Ok(r),
            Err(ActivityError::Failed {
                failure, attempts, ..
            }) => Ok(format!("gave up after {attempts}: {}", failure.kind)),
            Err(e) => Err(e.into()),
        }
    }
}

#[tokio::test]
async fn mocks_see_each_attempt_and_retries_wait_on_the_virtual_clock() {
    let calls = Arc::new(AtomicU32::new(0));
    let mut env = TestEnv::new();
    let seen = calls.clone();
    env.workflow::<Pay>().mock::<ChargeCard>(move |_, attempt| {
        seen.fetch_add(1, Ordering::SeqCst);
        if attempt < 3 {
            Err(Failure::new("bank_down", format!("attempt {attempt}")))
        } else {
            Ok(format!("paid on attempt {attempt}"))
        }
    });
    let run = env.start::<Pay>("pay-1", &()).await.expect("start");
    assert_eq!(env.result(&run).await.expect("result"), "paid on attempt 3");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // The default policy waits 1 s, then 2 s (with jitter): the clock moved by about that.
    let moved = env.now().as_millis() - START.as_millis();
    assert!((2_000..=4_000).contains(&moved), "{moved} ms");
}

#[tokio::test]
async fn a_workflow_that_can_never_go_on_is_an_error_naming_what_it_waits_for() {
    let mut env = env();
    let trial = env.start::<Trial>("stuck", &1).await.expect("start");
    match env.result(&trial).await {
        Err(TestError::Blocked { waits, .. }) => assert!(waits.contains("approve"), "{waits}"),
        other => panic!("expected blocked, got {other:?}"),
    }
    // Advancing by hand runs what becomes due and stops at the time asked.
    env.signal_at(DAY, trial.id(), "approve", "ada")
        .expect("schedule");
    env.advance(2 * DAY).await.expect("advance");
    assert_eq!(env.now(), START.saturating_add(2 * DAY));
    let state = env.state(&trial).await.expect("state");
    assert_eq!(state.approvals, ["ada"]);
}

/// Panics: its code cannot run.
struct Broken;
impl Workflow for Broken {
    const NAME: &'static str = "Broken";
    type Input = ();
    type State = ();
    type Output = ();
    async fn run(_: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        panic!("a bug");
    }
}

#[tokio::test]
async fn a_paused_workflow_is_an_error_with_its_reason() {
    let mut env = TestEnv::new();
    env.workflow::<Broken>();
    let run = env.start::<Broken>("broken", &()).await.expect("start");
    match env.result(&run).await {
        Err(TestError::Paused { reason, .. }) => assert!(reason.contains("a bug"), "{reason}"),
        other => panic!("expected paused, got {other:?}"),
    }
}

#[tokio::test]
async fn exported_histories_replay_against_the_current_code() {
    let mut env = env();
    let trial = env.start::<Trial>("trial-x", &5).await.expect("start");
    env.signal_at(DAY, trial.id(), "approve", "a")
        .expect("schedule");
    env.signal_at(2 * DAY, trial.id(), "approve", "b")
        .expect("schedule");
    env.result(&trial).await.expect("result");
    let history = env.history(trial.id()).await.expect("history");
    // As `loom inspect ID --events --json` writes it.
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("trial-x.json");
    let doc = serde_json::json!({ "id": "trial-x", "status": "completed", "events": history });
    std::fs::write(&file, serde_json::to_vec(&doc).expect("json")).expect("write");
    let mut registry = Registry::new();
    registry.add_workflow::<Trial>().expect("registry");
    let outcome = loom_testkit::replay_exported(&registry, &file).expect("replays");
    assert!(
        matches!(outcome, Some(Outcome::Completed { .. })),
        "{outcome:?}"
    );
    let all = loom_testkit::replay_dir(&registry, dir.path()).expect("dir");
    assert_eq!(all.len(), 1);
    // Code that changed the order of things no longer replays: the error says where.
    let mut other = Registry::new();
    other.add_workflow::<Pay>().expect("registry");
    let mut changed = doc.clone();
    changed["events"][0]["name"] = serde_json::json!("Pay");
    std::fs::write(&file, serde_json::to_vec(&changed).expect("json")).expect("write");
    let err = loom_testkit::replay_exported(&other, &file).expect_err("another program");
    assert!(err.to_string().contains("trial-x.json"), "{err}");
}

/// Says hello to whoever its schedule names.
struct Hello;
impl Workflow for Hello {
    const NAME: &'static str = "Hello";
    type Input = String;
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        Ok(format!("hello {}", ctx.input()))
    }
}

#[tokio::test]
async fn a_schedule_fires_as_the_clock_is_advanced() {
    use loom_storage::schedule::{ScheduleAction, SchedulePolicy, ScheduleSpec, TAG_SCHEDULE};
    let mut env = TestEnv::new();
    env.workflow::<Hello>();
    let def = loom_worker::ScheduleDefinition {
        spec: ScheduleSpec {
            cron: vec!["0 0 9 * * *".into()],
            timezone: "Europe/Paris".into(),
            ..ScheduleSpec::default()
        },
        action: ScheduleAction {
            workflow: "Hello".into(),
            version: None,
            input: loom_core::Payload::encode(&"team").expect("json"),
            id_pattern: "{schedule}-{time}".into(),
            tags: Default::default(),
        },
        policy: SchedulePolicy::default(),
    };
    env.schedule("morning", def).await.expect("schedule");
    env.advance(3 * DAY).await.expect("advance");
    let mut query = loom_storage::ListQuery {
        limit: 10,
        ..Default::default()
    };
    query
        .tags
        .push(loom_storage::TagFilter::parse(&format!("{TAG_SCHEDULE}=morning")).expect("filter"));
    let page = env.storage().list(&query).await.expect("list");
    let mut ids: Vec<String> = page.items.iter().map(|w| w.id.to_string()).collect();
    ids.sort();
    // 09:00 in Paris in January is 08:00 UTC; the clock starts at midnight UTC on 2026-01-01.
    assert_eq!(
        ids,
        [
            "morning-2026-01-01T08:00:00Z",
            "morning-2026-01-02T08:00:00Z",
            "morning-2026-01-03T08:00:00Z"
        ]
    );
    assert!(
        page.items
            .iter()
            .all(|w| w.status == loom_storage::WorkflowStatus::Completed)
    );
}
