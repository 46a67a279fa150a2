//! A worker process for loom-worker's crash and multi-process tests: it runs a worker with the
//! `Chain` workflow (with `Family`, a parent of three `Chain` children, and `Looper`, which
//! continues as new every few steps and starts a `Chain` child in each run) until it is
//! killed or sent SIGTERM (`run`; on SIGTERM it prints its counters as JSON) or until no work
//! is left (`drain`). Not part of Loom's command line;
//! `cargo test -p loom-worker` builds and drives it.
//!
//! ```text
//! loom-worker-probe run TARGET     # work until killed or SIGTERM
//! loom-worker-probe drain TARGET   # work until idle, then exit 0
//! ```
//!
//! TARGET is a SQLite file, a `postgres://` URL with the schema in `LOOM_PROBE_SCHEMA`, or a
//! `mysql://` URL.
//! `LOOM_PROBE_WORKER_ID` names the worker in its leases.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use loom_core::{
    Activity, ActivityContext, Failure, Registry, Workflow, WorkflowContext, WorkflowError,
};
use loom_sqlite::{SqliteOptions, SqliteStorage};
use loom_worker::{Worker, WorkerConfig};
use serde::{Deserialize, Serialize};

/// The input of a `Chain` run.
#[derive(Serialize, Deserialize)]
struct ChainInput {
    steps: u32,
    salt: u64,
}

/// `steps` activities in sequence, a short durable sleep after every third, and a state write
/// after each.
struct Chain;

#[derive(Default, Serialize, Deserialize)]
struct ChainState {
    done: u32,
}

impl Workflow for Chain {
    const NAME: &'static str = "Chain";
    type Input = ChainInput;
    type State = ChainState;
    type Output = u64;

    async fn run(ctx: WorkflowContext<Self>) -> Result<u64, WorkflowError> {
        let mut acc = ctx.input().salt;
        for i in 0..ctx.input().steps {
            acc = ctx.activity::<Step>((acc, i)).await?;
            ctx.update_state(|s| s.done = i + 1)?;
            if i % 3 == 1 {
                ctx.sleep(Duration::from_millis(5)).await?;
            }
        }
        Ok(acc)
    }
}

/// Runs two `Chain` children at once and then a third, and returns the sum of their outputs:
/// a parent whose children are started by its commits and reported by theirs.
struct Family;

impl Workflow for Family {
    const NAME: &'static str = "Family";
    type Input = ChainInput;
    type State = ();
    type Output = u64;

    async fn run(ctx: WorkflowContext<Self>) -> Result<u64, WorkflowError> {
        let child = |salt: u64| {
            ctx.child::<Chain>(ChainInput {
                steps: ctx.input().steps,
                salt,
            })
        };
        let salt = ctx.input().salt;
        let (a, b) = loom_core::future::join(child(salt), child(salt + 1)).await;
        let c = child(salt + 2).await?;
        Ok(a? + b? + c)
    }
}

/// The input of a `Looper` run: where the chain of runs stands.
#[derive(Serialize, Deserialize)]
struct LoopInput {
    steps: u32,
    per_run: u32,
    done: u32,
    acc: u64,
}

/// Each run starts a two-step `Chain` child and adds its output, then runs up to `per_run`
/// steps, and continues as new until `steps` are done.
struct Looper;

impl Workflow for Looper {
    const NAME: &'static str = "Looper";
    type Input = LoopInput;
    type State = ();
    type Output = u64;

    async fn run(ctx: WorkflowContext<Self>) -> Result<u64, WorkflowError> {
        let input = ctx.input();
        let child = ctx
            .child::<Chain>(ChainInput {
                steps: 2,
                salt: input.acc,
            })
            .await?;
        let mut acc = (input.acc + child) % 1_000_003;
        let mut done = input.done;
        for _ in 0..input.per_run {
            if done == input.steps {
                return Ok(acc);
            }
            acc = ctx.activity::<Step>((acc, done)).await?;
            done += 1;
        }
        if done == input.steps {
            return Ok(acc);
        }
        Err(ctx.continue_as_new(LoopInput {
            steps: input.steps,
            per_run: input.per_run,
            done,
            acc,
        }))
    }
}

/// One step: a little work, then `(acc * 31 + i) mod 1,000,003`.
struct Step;

impl Activity for Step {
    const NAME: &'static str = "step";
    type Input = (u64, u32);
    type Output = u64;

    async fn run(&self, ctx: ActivityContext, (acc, i): (u64, u32)) -> Result<u64, Failure> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        // With LOOM_PROBE_EXECUTIONS, each execution that gets this far appends a line
        // `workflow activity`: the crash test counts executions against recorded results.
        if let Some(path) = std::env::var_os("LOOM_PROBE_EXECUTIONS") {
            use std::io::Write;
            let line = format!(
                "{} {}\n",
                ctx.info().workflow_id,
                ctx.info().activity_id.0.get()
            );
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .map_err(|e| Failure::new("probe", format!("cannot record the execution: {e}")))?;
        }
        Ok((acc * 31 + u64::from(i)) % 1_000_003)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, path) = match args.as_slice() {
        [mode, path] if mode == "run" || mode == "drain" => (mode.clone(), path.clone()),
        _ => {
            eprintln!("usage: loom-worker-probe (run | drain) PATH");
            return ExitCode::from(2);
        }
    };
    // Tests that want to see what a worker did set RUST_LOG; the log goes to stderr.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loom-worker-probe: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let store: Arc<dyn loom_storage::Storage> = if path.starts_with("postgres://") {
            let options = loom_postgres::PostgresOptions {
                schema: std::env::var("LOOM_PROBE_SCHEMA").unwrap_or_else(|_| "loom".into()),
                max_connections: 8,
                ..loom_postgres::PostgresOptions::default()
            };
            Arc::new(
                loom_postgres::PostgresStorage::connect(&path, options)
                    .await
                    .map_err(|e| e.to_string())?,
            )
        } else if path.starts_with("mysql://") {
            Arc::new(
                loom_mysql::MysqlStorage::connect(&path, loom_mysql::MysqlOptions::default())
                    .await
                    .map_err(|e| e.to_string())?,
            )
        } else {
            Arc::new(
                SqliteStorage::open(&path, SqliteOptions::default())
                    .await
                    .map_err(|e| e.to_string())?,
            )
        };
        let mut registry = Registry::new();
        registry
            .add_workflow::<Chain>()
            .and_then(|r| r.add_workflow::<Family>())
            .and_then(|r| r.add_workflow::<Looper>())
            .and_then(|r| r.add_activity(Step))
            .map_err(|e| e.to_string())?;
        let mut config = WorkerConfig {
            lease: Duration::from_millis(600),
            poll_interval: Duration::from_millis(20),
            workflow_concurrency: 4,
            activity_concurrency: 8,
            ..WorkerConfig::default()
        };
        if let Ok(id) = std::env::var("LOOM_PROBE_WORKER_ID") {
            config.id = id;
        }
        let worker = Worker::with_config(store, registry, config);
        if mode == "run" {
            let report = worker
                .run(loom_worker::shutdown_signal())
                .await
                .map_err(|e| e.to_string())?;
            let json = serde_json::to_string(&report).map_err(|e| e.to_string())?;
            println!("{json}");
            Ok(())
        } else {
            worker
                .run_until_idle(Duration::from_secs(2))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loom-worker-probe: {e}");
            ExitCode::FAILURE
        }
    }
}
