//! `loom bench`: an end-to-end load test of the whole engine on one backend.
//!
//! It starts N workflows of K sequential activities (all up front, or at a fixed rate), runs a
//! worker in this process (and, with `--processes`, in helper `loom worker` processes on the
//! same database) until every one completes, checks every output, and reports throughput,
//! latencies and peak memory. It refuses to report if any workflow did not complete correctly.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use loom_core::{
    Activity, ActivityContext, EventKind, Failure, Registry, Seq, Timestamp, Workflow,
    WorkflowContext, WorkflowError, WorkflowId,
};
use loom_storage::{ListQuery, Storage, WorkflowStatus};
use loom_worker::{Client, StartOptions, Worker, WorkerConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{Fail, render};

/// The benchmark's parameters.
#[derive(Clone, Debug)]
pub(crate) struct BenchArgs {
    pub(crate) workflows: usize,
    pub(crate) activities: u32,
    pub(crate) workers: usize,
    pub(crate) payload_bytes: usize,
    pub(crate) rate: Option<f64>,
    pub(crate) processes: usize,
    pub(crate) idle: usize,
    /// Record metrics as `loom worker --metrics` does, to measure what they cost.
    pub(crate) metrics: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ChainInput {
    activities: u32,
    payload: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StepInput {
    step: u32,
    payload: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StepOutput {
    value: u64,
    started_us: u64,
    finished_us: u64,
}

/// K sequential activities; the output is the sum of their values, 1 + 2 + ... + K.
struct BenchChain;

impl Workflow for BenchChain {
    const NAME: &'static str = "LoomBenchChain";
    type Input = ChainInput;
    type State = ();
    type Output = u64;

    async fn run(ctx: WorkflowContext<Self>) -> Result<u64, WorkflowError> {
        let mut sum = 0;
        for step in 0..ctx.input().activities {
            let input = StepInput {
                step,
                payload: ctx.input().payload.clone(),
            };
            sum += ctx.activity::<BenchStep>(input).await?.value;
        }
        Ok(sum)
    }
}

/// A workflow that waits a year on a durable timer: the idle population of `--idle`.
struct BenchIdle;

impl Workflow for BenchIdle {
    const NAME: &'static str = "LoomBenchIdle";
    type Input = ();
    type Output = ();
    type State = ();

    async fn run(ctx: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        ctx.sleep(Duration::from_secs(365 * 24 * 3_600)).await
    }
}

struct BenchStep;

impl Activity for BenchStep {
    const NAME: &'static str = "loom_bench_step";
    type Input = StepInput;
    type Output = StepOutput;

    async fn run(&self, _: ActivityContext, input: StepInput) -> Result<StepOutput, Failure> {
        let started_us = micros();
        // The payload only travels: it is what a real activity's input would weigh.
        let value = u64::from(input.step) + 1;
        Ok(StepOutput {
            value,
            started_us,
            finished_us: micros(),
        })
    }
}

fn micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Peak resident memory of this process, from Linux's `/proc/self/status`.
fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summarize(mut values: Vec<f64>) -> serde_json::Value {
    values.sort_by(f64::total_cmp);
    json!({
        "samples": values.len(),
        "p50": percentile(&values, 50.0),
        "p95": percentile(&values, 95.0),
        "p99": percentile(&values, 99.0),
        "max": values.last().copied().unwrap_or(f64::NAN),
    })
}

/// Registers the benchmark's workflow and activity, unless the registry has them.
pub(crate) fn register(registry: &mut Registry) -> Result<(), Fail> {
    if registry.workflow(BenchChain::NAME).is_none() {
        registry
            .add_workflow::<BenchChain>()
            .and_then(|r| r.add_activity(BenchStep))
            .map_err(|e| Fail::usage(e.to_string()))?;
    }
    if registry.workflow(BenchIdle::NAME).is_none() {
        registry
            .add_workflow::<BenchIdle>()
            .map_err(|e| Fail::usage(e.to_string()))?;
    }
    Ok(())
}

/// Starts `n` workflows that wait a year on a timer and runs a worker of their own until
/// every one waits, so that the measured run claims among them. Returns how long it took.
async fn park_idle(
    store: &Arc<dyn Storage>,
    registry: &Registry,
    run: &str,
    n: usize,
    config: &WorkerConfig,
    live: bool,
) -> Result<Duration, Fail> {
    let t = Instant::now();
    let worker = Worker::with_config(store.clone(), registry.clone(), config.clone());
    let client = worker.client();
    let bar = live.then(|| {
        let bar = ProgressBar::new(n as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} idle workflows started · {per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let (stop, running) = spawn_worker(&worker);
    let ids: Vec<WorkflowId> = (0..n)
        .map(|i| WorkflowId::new(format!("{run}-idle-{i}")))
        .collect();
    start_all::<BenchIdle>(&client, &ids, &(), |started| {
        if let Some(bar) = &bar {
            bar.set_position(started as u64);
        }
    })
    .await?;
    // Parked when no workflow task is ready or running: each idle workflow has armed its timer.
    loop {
        let stats = store.stats().await.map_err(Fail::from_storage)?;
        if stats.workflow_tasks_ready == 0 && stats.workflow_tasks_running == 0 {
            break;
        }
        if t.elapsed() > Duration::from_secs(3_600) {
            return Err(Fail::failed(
                "the idle workflows did not park within an hour",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    let _ = running.await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let paused = store
        .stats()
        .await
        .map_err(Fail::from_storage)?
        .workflows
        .get(&WorkflowStatus::Paused)
        .copied()
        .unwrap_or(0);
    if paused > 0 {
        return Err(Fail::failed(format!(
            "refusing to report: {paused} workflows are paused"
        )));
    }
    Ok(t.elapsed())
}

/// Resets this process's peak resident memory to its current size (Linux), so that the peak
/// reported is the measured run's.
fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Helper worker processes; killed when dropped, whatever happened.
struct Helpers(Vec<std::process::Child>);

impl Helpers {
    /// Starts `n` `loom worker` processes of this binary on `db`.
    fn start(n: usize, db: &str, workers: usize) -> Result<Helpers, Fail> {
        let exe = std::env::current_exe()
            .map_err(|e| Fail::failed(format!("cannot find this program to start helpers: {e}")))?;
        let mut helpers = Helpers(Vec::with_capacity(n));
        for _ in 0..n {
            let child = std::process::Command::new(&exe)
                .args([
                    "--db",
                    db,
                    "--json",
                    "worker",
                    "--bench",
                    "--poll-interval",
                    "0.05",
                ])
                .args(["--workers", &workers.to_string()])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| Fail::failed(format!("cannot start a helper worker: {e}")))?;
            helpers.0.push(child);
        }
        Ok(helpers)
    }

    /// Fails if a helper has exited: they run until the benchmark ends.
    fn check(&mut self) -> Result<(), Fail> {
        for child in &mut self.0 {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Fail::failed(format!(
                    "a helper worker process exited early ({status}); run `loom worker` on the same --db to see why"
                )));
            }
        }
        Ok(())
    }

    /// Stops every helper and reads the counters each prints as it stops (`loom worker
    /// --json`): closing a helper's standard input stops it as SIGTERM would (`--bench`),
    /// even one still starting. A helper whose counters cannot be read is killed and answers
    /// `None`.
    fn stop(mut self) -> Vec<Option<loom_worker::MetricsSnapshot>> {
        let mut children = std::mem::take(&mut self.0);
        for child in &mut children {
            drop(child.stdin.take());
        }
        children.into_iter().map(Self::counters_of).collect()
    }

    fn counters_of(mut child: std::process::Child) -> Option<loom_worker::MetricsSnapshot> {
        // Nothing runs by now, so a worker stops at once; past a minute it is hung.
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut()?, &mut out).ok()?;
        let doc: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
        serde_json::from_value(doc.get("metrics")?.clone()).ok()
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether no workflow of this benchmark run is still running or paused, across processes.
async fn all_finished(store: &dyn Storage, since: Timestamp) -> Result<bool, Fail> {
    for status in [WorkflowStatus::Running, WorkflowStatus::Paused] {
        let page = store
            .list(&ListQuery {
                status: Some(status),
                name: Some(BenchChain::NAME.to_owned()),
                created_after: Some(since),
                limit: 1,
                ..ListQuery::default()
            })
            .await
            .map_err(Fail::from_storage)?;
        if !page.items.is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(crate) async fn bench(
    store: Arc<dyn Storage>,
    mut registry: Registry,
    url: &str,
    raw_url: &str,
    args: BenchArgs,
    json: bool,
) -> Result<std::process::ExitCode, Fail> {
    if args.workflows == 0 || args.activities == 0 {
        return Err(Fail::usage(
            "--workflows and --activities must be at least 1",
        ));
    }
    register(&mut registry)?;
    let config = WorkerConfig {
        workflow_concurrency: args.workers.max(1),
        activity_concurrency: args.workers.max(1) * 4,
        poll_interval: Duration::from_millis(50),
        telemetry: args
            .metrics
            .then(|| Arc::new(loom_worker::Telemetry::new())),
        ..WorkerConfig::default()
    };
    let run = format!("bench-{}", micros());
    let live = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut idle_elapsed = None;
    if args.idle > 0 {
        idle_elapsed = Some(park_idle(&store, &registry, &run, args.idle, &config, live).await?);
        reset_peak_memory();
    }
    let worker = Worker::with_config(store.clone(), registry, config);
    let client = worker.client();
    let ids: Vec<WorkflowId> = (0..args.workflows)
        .map(|n| WorkflowId::new(format!("{run}-{n}")))
        .collect();
    let input = ChainInput {
        activities: args.activities,
        payload: "x".repeat(args.payload_bytes),
    };
    // Workflows created from here on are this run's (less a second for clock granularity).
    let since = Timestamp::from_millis(
        i64::try_from(micros() / 1_000)
            .unwrap_or(i64::MAX)
            .saturating_sub(1_000),
    );

    // Up front: start everything, then run. With a rate: start while running. Either way the
    // headline counts from the first start to the last completion.
    let first_start = Instant::now();
    let mut start_elapsed = None;
    if args.rate.is_none() {
        let t = Instant::now();
        start_all::<BenchChain>(&client, &ids, &input, |_| {}).await?;
        start_elapsed = Some(t.elapsed());
    }
    let (stop, running) = spawn_worker(&worker);
    let began = Instant::now();
    let mut helpers = Helpers::start(args.processes - 1, raw_url, args.workers)?;
    let starter = args.rate.map(|rate| {
        let client = client.clone();
        let ids = ids.clone();
        let input = input.clone();
        tokio::spawn(async move {
            // Each start goes out on its tick, without waiting for the ones before it to be
            // durable: awaited one at a time, the starts could go no faster than one commit
            // after another, and a rate past that would not be the rate offered.
            let every = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let mut tick = tokio::time::interval(every);
            let mut starts = tokio::task::JoinSet::new();
            let failed = |e: &dyn std::fmt::Display| {
                Fail::failed(format!("starting a workflow failed: {e}"))
            };
            for id in ids {
                tick.tick().await;
                let (client, input) = (client.clone(), input.clone());
                starts.spawn(async move {
                    client
                        .start::<BenchChain>(&input, StartOptions::id(id))
                        .await
                        .map(drop)
                });
                while let Some(done) = starts.try_join_next() {
                    done.map_err(|e| failed(&e))?.map_err(|e| failed(&e))?;
                }
            }
            while let Some(done) = starts.join_next().await {
                done.map_err(|e| failed(&e))?.map_err(|e| failed(&e))?;
            }
            Ok(())
        })
    });
    let bar = live.then(|| {
        let bar = ProgressBar::new(args.workflows as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} workflows · {per_sec} · {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let metrics = worker.metrics();
    let deadline = Duration::from_secs(3_600);
    loop {
        let finished = metrics.snapshot().workflows_finished;
        if let Some(bar) = &bar {
            bar.set_position(finished);
        }
        if finished >= args.workflows as u64 {
            break;
        }
        // With helpers, this process sees only its own share finish: ask the database once
        // every workflow has been started.
        if args.processes > 1 {
            helpers.check()?;
            let started = starter
                .as_ref()
                .is_none_or(tokio::task::JoinHandle::is_finished);
            if started && all_finished(&*store, since).await? {
                break;
            }
        }
        if began.elapsed() > deadline {
            return Err(Fail::failed("the benchmark did not finish within an hour"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = began.elapsed();
    let total = first_start.elapsed();
    // Waiting on the helpers blocks: off the runtime's threads.
    let helper_reports = tokio::task::spawn_blocking(move || helpers.stop())
        .await
        .map_err(|e| Fail::failed(format!("stopping the helper workers failed: {e}")))?;
    let _ = stop.send(());
    if let Some(starter) = starter {
        match starter.await {
            Ok(result) => result?,
            Err(e) => return Err(Fail::failed(format!("the starter task failed: {e}"))),
        }
    }
    let report = match running.await {
        Ok(Ok(report)) => report,
        _ => metrics.snapshot(),
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let peak_kib = peak_memory_kib();

    // Check every workflow, and read the latencies off the histories.
    let expected = u64::from(args.activities) * (u64::from(args.activities) + 1) / 2;
    let mut end_to_end_ms = Vec::with_capacity(ids.len());
    let mut handoff_us = Vec::new();
    for id in &ids {
        let summary = store.describe(id).await.map_err(Fail::from_storage)?;
        let output = summary.output.as_ref().and_then(|o| o.decode::<u64>().ok());
        if summary.status != WorkflowStatus::Completed || output != Some(expected) {
            return Err(Fail::failed(format!(
                "refusing to report: workflow {id} ended {} with output {:?}, expected {expected}",
                summary.status, summary.output
            )));
        }
        let history = store
            .load_history(id, Seq::ZERO)
            .await
            .map_err(Fail::from_storage)?;
        let (first, last) = (history.first(), history.last());
        if let (Some(first), Some(last)) = (first, last) {
            end_to_end_ms.push((last.at.as_millis() - first.at.as_millis()) as f64);
        }
        let mut previous_finish: Option<u64> = None;
        for e in &history {
            if let EventKind::ActivityCompleted { result, .. } = &e.kind {
                let step: StepOutput = result
                    .decode()
                    .map_err(|e| Fail::failed(format!("a step result did not decode: {e}")))?;
                if let Some(prev) = previous_finish {
                    handoff_us.push(step.started_us.saturating_sub(prev) as f64);
                }
                previous_finish = Some(step.finished_us);
            }
        }
    }
    let secs = elapsed.as_secs_f64();
    let total_secs = total.as_secs_f64();
    // A history is read on each cache miss, in whichever process took the task; known only
    // when every helper told its count.
    let history_loads = helper_reports
        .iter()
        .try_fold(report.cache_misses, |sum, r| {
            r.map(|r| sum + r.cache_misses)
        })
        .map(|misses| misses as f64 / args.workflows as f64);
    let doc = json!({
        "db": url,
        "workflows": args.workflows,
        "activities_per_workflow": args.activities,
        "workers": args.workers,
        "payload_bytes": args.payload_bytes,
        "rate": args.rate,
        "processes": args.processes,
        "idle_workflows": args.idle,
        "idle_park_seconds": idle_elapsed.map(|d| d.as_secs_f64()),
        "start_seconds": start_elapsed.map(|d| d.as_secs_f64()),
        "starts_per_second": start_elapsed.map(|d| args.workflows as f64 / d.as_secs_f64()),
        "seconds": total_secs,
        "workflows_per_second": args.workflows as f64 / total_secs,
        "activities_per_second": (args.workflows as f64 * f64::from(args.activities)) / total_secs,
        "run_seconds": secs,
        "run_only_workflows_per_second": args.workflows as f64 / secs,
        "start_to_completion_ms": summarize(end_to_end_ms),
        "activity_completion_to_next_started_us": summarize(handoff_us),
        "peak_memory_kib": peak_kib,
        "worker": report,
        "helpers": helper_reports,
        "history_loads_per_workflow": history_loads,
    });
    if json {
        render::json(&doc)?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let f = |v: &serde_json::Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.1}"));
    println!(
        "{} workflows x {} activities on {url}, {}{} workflow slots, {} payload bytes{}: all completed correctly.",
        args.workflows,
        args.activities,
        if args.processes > 1 {
            format!("{} processes x ", args.processes)
        } else {
            String::new()
        },
        args.workers,
        args.payload_bytes,
        args.rate
            .map(|r| format!(", started at {r}/s"))
            .unwrap_or_default()
    );
    if let Some(d) = idle_elapsed {
        println!(
            "{} idle workflows waiting on timers in the database (parked in {})",
            args.idle,
            render::duration(d)
        );
    }
    if let Some(d) = start_elapsed {
        println!(
            "started in {} ({:.0} starts/s)",
            render::duration(d),
            args.workflows as f64 / d.as_secs_f64()
        );
    }
    println!(
        "first start to last completion in {}: {:.0} workflows/s, {:.0} activities/s",
        render::duration(total),
        doc["workflows_per_second"].as_f64().unwrap_or(0.0),
        doc["activities_per_second"].as_f64().unwrap_or(0.0)
    );
    if start_elapsed.is_some() {
        println!(
            "run only (after every start): {} at {:.0} workflows/s",
            render::duration(elapsed),
            doc["run_only_workflows_per_second"].as_f64().unwrap_or(0.0)
        );
    }
    let e2e = &doc["start_to_completion_ms"];
    println!(
        "start to completion (ms): p50 {}  p95 {}  p99 {}  max {}",
        f(&e2e["p50"]),
        f(&e2e["p95"]),
        f(&e2e["p99"]),
        f(&e2e["max"])
    );
    let h = &doc["activity_completion_to_next_started_us"];
    println!(
        "activity completed to next activity started (us): p50 {}  p95 {}  p99 {}",
        f(&h["p50"]),
        f(&h["p95"]),
        f(&h["p99"])
    );
    if let Some(loads) = history_loads {
        println!("history loads (cache misses, every process): {loads:.2} per workflow");
    }
    if let Some(kib) = peak_kib {
        let whose = if args.processes > 1 {
            " (this process)"
        } else {
            ""
        };
        println!("peak memory{whose}: {:.1} MiB", kib as f64 / 1024.0);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Starts a workflow of type `W` with `input` under each id, a chunk at a time; `done` hears
/// how many have started after each chunk.
/// `loom bench --schedules N`: N schedules firing every second for `duration`, run by this
/// process's worker (and `processes - 1` helpers); reports each fire's lateness, from its
/// nominal time to its workflow's creation by the store's clock, and refuses to report unless
/// every schedule started one workflow for each second it ran, none twice, none skipped.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn schedules(
    store: Arc<dyn Storage>,
    mut registry: Registry,
    url: &str,
    raw_url: &str,
    n: usize,
    duration: Duration,
    processes: usize,
    json: bool,
) -> Result<std::process::ExitCode, Fail> {
    use loom_storage::schedule::{
        Overlap, ScheduleAction, SchedulePolicy, ScheduleSpec, TAG_SCHEDULE, TAG_SCHEDULED_AT,
    };
    register(&mut registry)?;
    let config = WorkerConfig {
        poll_interval: Duration::from_millis(50),
        ..WorkerConfig::default()
    };
    let run = format!("bench-{}", micros());
    let worker = Worker::with_config(store.clone(), registry.clone(), config);
    let client = worker.client();
    let input = ChainInput {
        activities: 1,
        payload: String::new(),
    };
    let ids: Vec<String> = (0..n).map(|i| format!("{run}-s{i}")).collect();
    for id in &ids {
        let def = loom_worker::ScheduleDefinition {
            spec: ScheduleSpec {
                cron: vec!["* * * * * *".into()],
                ..ScheduleSpec::default()
            },
            action: ScheduleAction {
                workflow: BenchChain::NAME.into(),
                version: None,
                input: loom_core::Payload::encode(&input)
                    .map_err(|e| Fail::failed(format!("cannot encode the input: {e}")))?,
                id_pattern: "{schedule}-{time}".into(),
                tags: loom_core::Tags::new(),
            },
            policy: SchedulePolicy {
                overlap: Overlap::AllowAll,
                catchup_window_ms: 60_000,
            },
        };
        client
            .create_schedule(&registry, id, def, false)
            .await
            .map_err(Fail::from_client)?;
    }
    let (stop, running) = spawn_worker(&worker);
    let mut helpers = Helpers::start(processes - 1, raw_url, 16)?;
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        helpers.check()?;
    }
    // Stop firing, then let the last fires' workflows be created before reading.
    for id in &ids {
        client
            .pause_schedule(id, "bench done")
            .await
            .map_err(Fail::from_client)?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(helpers);
    let _ = stop.send(());
    let _ = running.await;
    let mut late_ms = Vec::new();
    let mut problems = Vec::new();
    for id in &ids {
        let schedule = client.schedule(id).await.map_err(Fail::from_client)?;
        let mut query = ListQuery {
            limit: 100_000,
            ..ListQuery::default()
        };
        query.tags.push(
            loom_storage::TagFilter::parse(&format!("{TAG_SCHEDULE}={id}"))
                .map_err(Fail::failed)?,
        );
        let page = store.list(&query).await.map_err(Fail::from_storage)?;
        let mut nominal = Vec::new();
        for w in &page.items {
            if let Some(loom_core::TagValue::Time(t)) = w.tags.get(TAG_SCHEDULED_AT) {
                nominal.push(t.as_millis());
                late_ms.push((w.created_at.as_millis() - t.as_millis()) as f64);
            }
        }
        nominal.sort_unstable();
        let started = schedule.state.counts.started;
        if nominal.len() as u64 != started
            || nominal.windows(2).any(|w| w[1] - w[0] != 1_000)
            || schedule.state.counts.missed > 0
        {
            problems.push(format!(
                "{id}: {started} counted, {} workflows, {} missed, seconds {:?}",
                nominal.len(),
                schedule.state.counts.missed,
                nominal
            ));
        }
        client
            .delete_schedule(id)
            .await
            .map_err(Fail::from_client)?;
    }
    if !problems.is_empty() {
        return Err(Fail::failed(format!(
            "schedules did not start each fire exactly once: {}",
            problems.join("; ")
        )));
    }
    let fires = late_ms.len();
    let lateness = summarize(late_ms);
    if json {
        render::json(&json!({
            "db": url,
            "schedules": n,
            "seconds": duration.as_secs_f64(),
            "processes": processes,
            "fires": fires,
            "each_fire_started_once": true,
            "lateness_ms": lateness,
        }))?;
    } else {
        println!(
            "{n} schedules firing every second for {} on {url} ({processes} process{}): {fires} fires, each started exactly once",
            render::duration(duration),
            if processes == 1 { "" } else { "es" }
        );
        println!(
            "lateness from nominal time to workflow start: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            lateness["p50"].as_f64().unwrap_or(f64::NAN),
            lateness["p95"].as_f64().unwrap_or(f64::NAN),
            lateness["p99"].as_f64().unwrap_or(f64::NAN),
            lateness["max"].as_f64().unwrap_or(f64::NAN)
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn start_all<W: Workflow>(
    client: &Client,
    ids: &[WorkflowId],
    input: &W::Input,
    mut done: impl FnMut(usize),
) -> Result<(), Fail>
where
    W::Input: Clone + Send + Sync + 'static,
{
    // A batch at a time through `Client::start_many`: each batch reaches the store at once,
    // and its group commit makes it durable in a few commits.
    const AT_ONCE: usize = 4_096;
    let mut started = 0;
    for chunk in ids.chunks(AT_ONCE) {
        let starts = chunk
            .iter()
            .map(|id| (input.clone(), StartOptions::id(id.clone())))
            .collect();
        for r in client.start_many::<W>(starts).await {
            r.map_err(Fail::from_client)?;
        }
        started += chunk.len();
        done(started);
    }
    Ok(())
}

/// Runs `worker` on a task of its own until the returned sender is used or dropped.
fn spawn_worker(
    worker: &Worker,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<loom_worker::MetricsSnapshot, loom_worker::WorkerError>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = worker.clone();
    let running = tokio::spawn(async move {
        worker
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    (stop, running)
}
