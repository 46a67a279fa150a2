//! Schedules end to end, on MemoryStorage, SQLite, redb and PostgreSQL (the last skipped
//! loudly without a server, failing under `CI=true`), each on a manual clock that the store and
//! the workers share: time is moved, not waited for.

use std::sync::Arc;
use std::time::Duration;

use loom_core::{
    Payload, Registry, Tags, Timestamp, Workflow, WorkflowContext, WorkflowError, WorkflowId,
};
use loom_sqlite::{SqliteOptions, SqliteStorage};
use loom_storage::schedule::{
    IntervalSpec, Overlap, ScheduleAction, SchedulePolicy, ScheduleSpec, TAG_SCHEDULE,
    TAG_SCHEDULED_AT,
};
use loom_storage::{ListQuery, ManualClock, MemoryStorage, Storage, StorageError, TagFilter};
use loom_worker::{Client, ClientError, ScheduleDefinition, Worker, WorkerConfig};

mod support;
use support::Running;

/// Answers its input at once.
struct Tick;
impl Workflow for Tick {
    const NAME: &'static str = "Tick";
    type Input = String;
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        Ok(ctx.input().clone())
    }
}

/// Runs until it is signalled `done` (or cancelled).
struct Hold;
impl Workflow for Hold {
    const NAME: &'static str = "Hold";
    type Input = String;
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        ctx.wait_signal::<()>("done").await?;
        Ok(ctx.input().clone())
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.add_workflow::<Tick>()
        .and_then(|r| r.add_workflow::<Hold>())
        .expect("registry");
    r
}

fn worker(store: &Arc<dyn Storage>, clock: &ManualClock, id: &str) -> (Client, Running) {
    let config = WorkerConfig {
        id: id.into(),
        poll_interval: Duration::from_millis(10),
        lease: Duration::from_secs(30),
        clock: Arc::new(clock.clone()),
        ..WorkerConfig::default()
    };
    support::run(Worker::with_config(store.clone(), registry(), config))
}

fn at(s: &str) -> Timestamp {
    Timestamp::from_millis(
        s.parse::<jiff::Timestamp>()
            .expect("a time")
            .as_millisecond(),
    )
}

fn start() -> Timestamp {
    at("2024-03-09T12:00:00Z")
}

fn action(workflow: &str) -> ScheduleAction {
    ScheduleAction {
        workflow: workflow.into(),
        version: None,
        input: Payload::encode(&"scheduled").expect("json"),
        id_pattern: "{schedule}-{time}".into(),
        tags: Tags::new(),
    }
}

fn definition(
    spec: ScheduleSpec,
    workflow: &str,
    overlap: Overlap,
    window: Duration,
) -> ScheduleDefinition {
    ScheduleDefinition {
        spec,
        action: action(workflow),
        policy: SchedulePolicy {
            overlap,
            catchup_window_ms: u64::try_from(window.as_millis()).expect("ms"),
        },
    }
}

fn every(d: Duration) -> ScheduleSpec {
    ScheduleSpec {
        intervals: vec![IntervalSpec {
            every_ms: u64::try_from(d.as_millis()).expect("ms"),
            offset_ms: 0,
        }],
        ..ScheduleSpec::default()
    }
}

/// Waits until no schedule is due: the workers have dealt with everything up to now.
async fn settled(store: &Arc<dyn Storage>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if store.due_schedules(1).await.expect("due").due.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the workers did not tick the due schedules"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The nominal times of the workflows schedule `id` started, in order.
async fn started_by(store: &Arc<dyn Storage>, id: &str) -> Vec<Timestamp> {
    let mut query = ListQuery {
        limit: 1_000,
        ..ListQuery::default()
    };
    query
        .tags
        .push(TagFilter::parse(&format!("{TAG_SCHEDULE}={id}")).expect("filter"));
    let page = store.list(&query).await.expect("list");
    let mut times: Vec<Timestamp> = page
        .items
        .iter()
        .map(|w| match w.tags.get(TAG_SCHEDULED_AT) {
            Some(loom_core::TagValue::Time(t)) => *t,
            other => panic!("workflow {} has {TAG_SCHEDULED_AT} {other:?}", w.id),
        })
        .collect();
    times.sort();
    times
}

fn rfc(times: &[Timestamp]) -> Vec<String> {
    times
        .iter()
        .map(|t| loom_storage::schedule::rfc3339(*t))
        .collect()
}

/// Advances the clock to `until` in steps of `step`, letting the workers catch up after each.
async fn walk(store: &Arc<dyn Storage>, clock: &ManualClock, until: Timestamp, step: Duration) {
    loop {
        let now = loom_storage::Clock::now(clock);
        if now >= until {
            return;
        }
        clock.set(now.saturating_add(step).min(until));
        settled(store).await;
    }
}

async fn cron_and_interval_fire_across_a_daylight_saving_change(
    store: Arc<dyn Storage>,
    clock: ManualClock,
) {
    let (client, running) = worker(&store, &clock, "dst");
    let nightly = ScheduleSpec {
        cron: vec!["0 30 2 * * *".into()],
        timezone: "America/New_York".into(),
        ..ScheduleSpec::default()
    };
    let hourly = ScheduleSpec {
        cron: vec!["0 30 * * * *".into()],
        timezone: "America/New_York".into(),
        ..ScheduleSpec::default()
    };
    let day = Duration::from_secs(86_400);
    for (id, spec) in [
        ("nightly", nightly),
        ("hourly", hourly),
        ("six-hourly", every(Duration::from_secs(6 * 3_600))),
    ] {
        client
            .create_schedule(
                &registry(),
                id,
                definition(spec, "Tick", Overlap::AllowAll, day),
                false,
            )
            .await
            .expect("create");
    }
    walk(
        &store,
        &clock,
        at("2024-03-11T12:00:00Z"),
        Duration::from_secs(1_800),
    )
    .await;
    assert_eq!(
        rfc(&started_by(&store, "nightly").await),
        [
            "2024-03-10T07:00:00Z", // 02:30 does not exist that night: 03:00 EDT
            "2024-03-11T06:30:00Z"
        ]
    );
    let hourly = started_by(&store, "hourly").await;
    // 02:30 local never happened on the 10th, yet no real hour passed without a fire: 01:30
    // EST (06:30Z) is followed by 03:30 EDT (07:30Z). 48 hours, 48 fires, an hour apart.
    assert_eq!(hourly.len(), 48, "{:?}", rfc(&hourly));
    assert!(
        hourly
            .windows(2)
            .all(|w| w[1].as_millis() - w[0].as_millis() == 3_600_000)
    );
    let six = started_by(&store, "six-hourly").await;
    assert_eq!(six.len(), 8);
    assert!(
        six.windows(2)
            .all(|w| w[1].as_millis() - w[0].as_millis() == 6 * 3_600_000)
    );
    // Every started workflow runs.
    let id = WorkflowId::new("nightly-2024-03-10T07:00:00Z");
    let out = client
        .wait(&id, Some(Duration::from_secs(20)))
        .await
        .expect("ran");
    assert_eq!(out.status, loom_storage::WorkflowStatus::Completed);
    running.stop().await;
}

async fn two_workers_start_each_fire_exactly_once(store: Arc<dyn Storage>, clock: ManualClock) {
    let (client, first) = worker(&store, &clock, "one");
    let (_, second) = worker(&store, &clock, "two");
    client
        .create_schedule(
            &registry(),
            "every-second",
            definition(
                every(Duration::from_secs(1)),
                "Tick",
                Overlap::AllowAll,
                Duration::from_secs(3_600),
            ),
            false,
        )
        .await
        .expect("create");
    let begin = loom_storage::Clock::now(&clock);
    // A hundred fire times, some one by one, some in bursts that both workers race for.
    let mut moved = 0;
    for step in [
        1u64, 1, 1, 3, 1, 7, 1, 1, 20, 1, 2, 2, 9, 1, 1, 30, 5, 1, 1, 1, 1, 9,
    ] {
        clock.advance(Duration::from_secs(step));
        moved += step;
        settled(&store).await;
    }
    assert_eq!(moved, 100);
    let fired = started_by(&store, "every-second").await;
    let expected: Vec<Timestamp> = (1..=100)
        .map(|s| Timestamp::from_millis(begin.as_millis() + s * 1_000))
        .collect();
    assert_eq!(fired, expected, "each fire time started once, none skipped");
    let s = client.schedule("every-second").await.expect("read");
    assert_eq!(s.state.counts.started, 100);
    assert_eq!(
        s.state.counts.already_started + s.state.counts.skipped + s.state.counts.missed,
        0
    );
    first.stop().await;
    second.stop().await;
}

/// One schedule per overlap policy, every minute, with a catch-up window of five minutes,
/// whose workflows run until signalled; no worker runs for ten minutes after the first fire.
async fn downtime_is_caught_up_under_each_overlap_policy(
    store: Arc<dyn Storage>,
    clock: ManualClock,
) {
    let client = Client::new(store.clone());
    let minute = Duration::from_secs(60);
    for overlap in Overlap::ALL {
        client
            .create_schedule(
                &registry(),
                overlap.as_str(),
                definition(every(minute), "Hold", overlap, 5 * minute),
                false,
            )
            .await
            .expect("create");
    }
    // The first fire, with a worker.
    let (client, running) = worker(&store, &clock, "before");
    clock.set(Timestamp::from_millis(start().as_millis() + 60_000));
    settled(&store).await;
    running.stop().await;
    // Ten minutes down: fires at 12:02 .. 12:11 pass.
    clock.set(Timestamp::from_millis(start().as_millis() + 11 * 60_000));
    let (client2, running) = worker(&store, &clock, "after");
    settled(&store).await;
    let _ = client;
    let counts = |id: &str| {
        let client = client2.clone();
        let id = id.to_owned();
        async move { client.schedule(&id).await.expect("read").state }
    };
    // 12:02 .. 12:05 are older than five minutes at 12:11: missed, whatever the policy.
    for overlap in Overlap::ALL {
        let s = counts(overlap.as_str()).await;
        assert_eq!(s.counts.missed, 4, "{overlap}: {s:?}");
        assert_eq!(s.missed.len(), 4, "{overlap}");
    }
    // 12:06 .. 12:11 come while 12:01's workflow still runs.
    let s = counts("skip").await;
    assert_eq!(
        (s.counts.started, s.counts.skipped, s.buffer.len()),
        (1, 6, 0)
    );
    let s = counts("buffer_one").await;
    assert_eq!(
        (s.counts.started, s.counts.skipped, s.buffer.len()),
        (1, 5, 1)
    );
    let s = counts("buffer_all").await;
    assert_eq!(
        (s.counts.started, s.counts.skipped, s.buffer.len()),
        (1, 0, 6)
    );
    let s = counts("allow_all").await;
    assert_eq!((s.counts.started, s.running.len()), (7, 7));
    let s = counts("cancel_other").await;
    assert_eq!(
        (s.counts.started, s.counts.cancelled, s.buffer.len()),
        (1, 1, 1)
    );
    let s = counts("terminate_other").await;
    assert_eq!((s.counts.started, s.counts.terminated), (7, 6));
    assert_eq!(s.running.len(), 1);

    // cancel_other's first workflow was asked to cancel and ends; its buffered fire (the
    // last, 12:11) starts once the schedule sees that.
    let first = WorkflowId::new(format!("cancel_other-{}", "2024-03-09T12:01:00Z"));
    client2
        .wait(&first, Some(Duration::from_secs(20)))
        .await
        .expect("cancelled");
    // terminate_other's earlier workflows were terminated.
    let terminated = client2
        .wait(
            &WorkflowId::new("terminate_other-2024-03-09T12:06:00Z"),
            Some(Duration::from_secs(20)),
        )
        .await
        .expect("ended");
    assert_eq!(terminated.status, loom_storage::WorkflowStatus::Terminated);
    // buffer_all's first workflow ends: the buffered fires start one after another.
    client2
        .signal(
            &WorkflowId::new("buffer_all-2024-03-09T12:01:00Z"),
            "done",
            Payload::NULL,
        )
        .await
        .expect("signal");
    client2
        .wait(
            &WorkflowId::new("buffer_all-2024-03-09T12:01:00Z"),
            Some(Duration::from_secs(20)),
        )
        .await
        .expect("ended");
    clock.advance(Duration::from_secs(2));
    settled(&store).await;
    assert_eq!(
        rfc(&started_by(&store, "buffer_all").await),
        ["2024-03-09T12:01:00Z", "2024-03-09T12:06:00Z"]
    );
    assert_eq!(
        rfc(&started_by(&store, "cancel_other").await),
        ["2024-03-09T12:01:00Z", "2024-03-09T12:11:00Z"]
    );
    let d = client2
        .describe_schedule("buffer_all")
        .await
        .expect("describe");
    assert_eq!(d.running.len(), 1);
    assert_eq!(d.upcoming.len(), 10);
    assert_eq!(d.upcoming[0], at("2024-03-09T12:12:00Z"));
    assert!(
        d.recent
            .iter()
            .any(|r| r.status == Some(loom_storage::WorkflowStatus::Completed))
    );
    running.stop().await;
}

async fn pause_trigger_and_backfill(store: Arc<dyn Storage>, clock: ManualClock) {
    let (client, running) = worker(&store, &clock, "ops");
    let minute = Duration::from_secs(60);
    client
        .create_schedule(
            &registry(),
            "ops",
            definition(every(minute), "Tick", Overlap::AllowAll, 60 * minute),
            false,
        )
        .await
        .expect("create");
    let paused = client
        .pause_schedule("ops", "maintenance")
        .await
        .expect("pause");
    assert!(paused.paused);
    assert_eq!(paused.wake_at, None);
    walk(&store, &clock, at("2024-03-09T12:05:30Z"), minute).await;
    assert!(
        started_by(&store, "ops").await.is_empty(),
        "nothing fires while paused"
    );

    client.trigger_schedule("ops").await.expect("trigger");
    settled(&store).await;
    assert_eq!(
        rfc(&started_by(&store, "ops").await),
        ["2024-03-09T12:05:30Z"]
    );

    client.unpause_schedule("ops", "").await.expect("unpause");
    walk(&store, &clock, at("2024-03-09T12:07:00Z"), minute).await;
    assert_eq!(
        rfc(&started_by(&store, "ops").await),
        [
            "2024-03-09T12:05:30Z",
            "2024-03-09T12:06:00Z",
            "2024-03-09T12:07:00Z"
        ]
    );

    // A backfill of 12:01 .. 12:06: the ones never taken start; 12:06 exists already.
    client
        .backfill_schedule(
            "ops",
            at("2024-03-09T12:01:00Z"),
            at("2024-03-09T12:06:00Z"),
        )
        .await
        .expect("backfill");
    settled(&store).await;
    assert_eq!(
        rfc(&started_by(&store, "ops").await),
        [
            "2024-03-09T12:01:00Z",
            "2024-03-09T12:02:00Z",
            "2024-03-09T12:03:00Z",
            "2024-03-09T12:04:00Z",
            "2024-03-09T12:05:00Z",
            "2024-03-09T12:05:30Z",
            "2024-03-09T12:06:00Z",
            "2024-03-09T12:07:00Z"
        ]
    );
    let s = client.schedule("ops").await.expect("read");
    assert_eq!(s.state.counts.already_started, 1);
    assert!(s.state.backfills.is_empty());

    // Bad requests change nothing.
    assert!(matches!(
        client
            .backfill_schedule(
                "ops",
                at("2024-03-09T12:06:00Z"),
                at("2024-03-09T12:01:00Z")
            )
            .await,
        Err(ClientError::Storage(StorageError::InvalidArgument(_)))
    ));
    assert!(matches!(
        client.trigger_schedule("nope").await,
        Err(ClientError::Storage(StorageError::ScheduleNotFound(_)))
    ));
    assert_eq!(client.schedule("ops").await.expect("read"), s);

    client.delete_schedule("ops").await.expect("delete");
    assert!(client.schedules(None, 10).await.expect("list").is_empty());
    running.stop().await;
}

async fn bad_schedules_are_refused_and_nothing_is_written(
    store: Arc<dyn Storage>,
    _clock: ManualClock,
) {
    let client = Client::new(store.clone());
    let day = Duration::from_secs(86_400);
    let cron = |expr: &str, tz: &str| ScheduleSpec {
        cron: vec![expr.into()],
        timezone: tz.into(),
        ..ScheduleSpec::default()
    };
    for (spec, workflow, expect) in [
        (cron("0 61 * * *", "UTC"), "Tick", "malformed"),
        (
            cron("0 0 * * *", "Mars/Olympus"),
            "Tick",
            "unknown time zone",
        ),
        (cron("0 0 * * *", "UTC"), "Nope", "unknown workflow"),
    ] {
        let r = client
            .create_schedule(
                &registry(),
                "bad",
                definition(spec, workflow, Overlap::Skip, day),
                false,
            )
            .await;
        let e = r.expect_err("refused").to_string();
        assert!(e.contains(expect), "{e}");
    }
    let mut def = definition(cron("0 0 * * *", "UTC"), "Tick", Overlap::Skip, day);
    def.action.input = Payload::encode(&42).expect("json");
    assert!(matches!(
        client.create_schedule(&registry(), "bad", def, false).await,
        Err(ClientError::Payload(_))
    ));
    let good = definition(cron("0 0 * * *", "UTC"), "Tick", Overlap::Skip, day);
    assert!(matches!(
        client
            .create_schedule(&registry(), "a/b", good.clone(), false)
            .await,
        Err(ClientError::Storage(StorageError::InvalidArgument(_)))
    ));
    assert!(client.schedules(None, 10).await.expect("list").is_empty());
    client
        .create_schedule(&registry(), "good", good.clone(), false)
        .await
        .expect("create");
    assert!(matches!(
        client
            .create_schedule(&registry(), "good", good, false)
            .await,
        Err(ClientError::Storage(StorageError::ScheduleExists(_)))
    ));
    let bad_update = definition(cron("nonsense", "UTC"), "Tick", Overlap::Skip, day);
    let before = client.schedule("good").await.expect("read");
    assert!(
        client
            .update_schedule(&registry(), "good", bad_update)
            .await
            .is_err()
    );
    assert_eq!(client.schedule("good").await.expect("read"), before);
}

async fn memory_on(clock: ManualClock) -> Option<Arc<dyn Storage>> {
    Some(Arc::new(MemoryStorage::with_clock(Arc::new(clock))))
}

async fn sqlite_on(clock: ManualClock) -> Option<Arc<dyn Storage>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = SqliteOptions {
        clock: Arc::new(clock),
        ..SqliteOptions::default()
    };
    let store = SqliteStorage::open(dir.path().join("loom.db"), options)
        .await
        .expect("open");
    std::mem::forget(dir);
    Some(Arc::new(store))
}

async fn redb_on(clock: ManualClock) -> Option<Arc<dyn Storage>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        loom_redb::RedbStorage::open_with_clock(dir.path().join("loom.redb"), Arc::new(clock))
            .await
            .expect("open");
    std::mem::forget(dir);
    Some(Arc::new(store))
}

/// PostgreSQL's test clock replaces the schema's time function, one store at a time.
static POSTGRES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

macro_rules! on_every_backend_on_a_clock {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::*;
                async fn run(fresh: impl AsyncFn(ManualClock) -> Option<Arc<dyn Storage>>) {
                    let clock = ManualClock::new(start());
                    let Some(store) = fresh(clock.clone()).await else {
                        return;
                    };
                    super::$name(store, clock).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_memory() {
                    run(memory_on).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_sqlite() {
                    run(sqlite_on).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_redb() {
                    run(redb_on).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_postgres() {
                    let _one = POSTGRES.lock().await;
                    run(loom_postgres::testing::fresh_on).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_mysql() {
                    run(loom_mysql::testing::fresh_on).await;
                }
            }
        )*
    };
}

on_every_backend_on_a_clock!(
    cron_and_interval_fire_across_a_daylight_saving_change,
    two_workers_start_each_fire_exactly_once,
    downtime_is_caught_up_under_each_overlap_policy,
    pause_trigger_and_backfill,
    bad_schedules_are_refused_and_nothing_is_written,
);
