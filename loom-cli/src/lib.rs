//! # loom-cli: the `loom` command, as a library
//!
//! This crate is the **room of people and scripts**: it parses the command line, opens the
//! backend a `--db` URL names, and drives loom-worker's `Worker` and `Client`, printing tables
//! and progress for people and one JSON document per command for scripts (`--json`).
//!
//! What it must not touch: SQL or a backend's internals (it opens backends through their
//! crates), and workflow semantics (loom-core's).
//!
//! Build your own `loom` with your workflow types registered, and every command works on them:
//!
//! ```no_run
//! use std::process::ExitCode;
//!
//! fn main() -> ExitCode {
//!     let mut registry = loom_cli::examples::registry(); // or Registry::new()
//!     // registry.add_workflow::<MyWorkflow>().unwrap().add_activity(MyActivity).unwrap();
//!     loom_cli::run(registry)
//! }
//! ```
//!
//! Exit codes: 0 success; 1 the operation failed (a workflow failed under `--wait`, a replay
//! found a mismatch, the database is unavailable); 2 bad usage or bad input (malformed JSON, an
//! unknown workflow or id, a file that is not a Loom database).

mod bench;
mod commands;
mod db;
pub mod examples;
mod logs;
mod observe;
mod otel;
mod remote;
mod render;
mod replay;
mod schedule;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use loom_core::Registry;
use loom_storage::StorageError;
use loom_worker::ClientError;

/// The name the program was run by (`loom`, or a user's own binary's), for help and errors.
static PROGRAM: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The program's name, as errors start with it.
pub(crate) fn program() -> &'static str {
    PROGRAM.get().map_or("loom", String::as_str)
}

/// The command line of a program named `name`: its own name in help and usage, and `demo`
/// hidden unless it registers Loom's examples.
fn cli_command(name: &str, examples: bool) -> clap::Command {
    let mut command = <Cli as clap::CommandFactory>::command()
        .name(name.to_owned())
        .bin_name(name.to_owned());
    if name != "loom" {
        command = command.about(format!(
            "{name}: durable workflows on Loom. Start them, run them, inspect them."
        ));
    }
    if !examples {
        command = command.mut_subcommand("demo", |demo| demo.hide(true));
    }
    command
}

/// Runs the `loom` command line with the workflow and activity types in `registry`, reading
/// the process's arguments, and returns the exit code.
///
/// In a binary of your own, help and errors use that binary's name, and `demo`, which runs
/// Loom's example workflows, is hidden unless the registry holds them
/// ([`examples::add_to`]).
pub fn run(registry: Registry) -> ExitCode {
    let name = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "loom".to_owned());
    let _ = PROGRAM.set(name.clone());
    let examples = examples::registered_in(&registry);
    let parsed = cli_command(&name, examples)
        .try_get_matches()
        .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if matches!(cli.command, Command::Demo { .. }) && !examples {
        eprintln!(
            "{name}: demo runs Loom's example workflows, which this binary does not register (loom_cli::examples::add_to adds them)"
        );
        return ExitCode::from(2);
    }
    quiet_on_closed_stdout();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::execute(cli, registry)) {
        Ok(code) => code,
        Err(fail) => {
            eprintln!("{name}: {}", fail.message);
            ExitCode::from(fail.code)
        }
    }
}

/// How `loom worker` writes its log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Lines for people (colour on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// Makes a closed stdout (`loom list | head`) end the program quietly, as it ends `cat`:
/// `println!` panics when the reader has gone, and that panic is not a bug to report. Every
/// other panic goes to the default hook.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            // 128 + SIGPIPE, what a shell reports for a program its pipe's reader outlived.
            std::process::exit(141);
        }
        default(info);
    }));
}

/// Loom: durable workflows. Start them, run them, inspect them.
#[derive(Debug, Parser)]
#[command(name = "loom", version, about, max_term_width = 100)]
pub(crate) struct Cli {
    /// The database: sqlite://PATH (postgres://, mysql:// and redb:// when built in).
    #[arg(long, global = true, env = "LOOM_DB", default_value = db::DEFAULT_URL)]
    pub(crate) db: String,
    /// Print one JSON document on stdout instead of text for people.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Act through a running `loom server` (or `loom worker --http`) at this URL instead of
    /// opening the database: every command that reads or acts on workflows (the token, if
    /// it wants one, in LOOM_TOKEN).
    #[arg(long, global = true, env = "LOOM_SERVER", value_name = "URL")]
    pub(crate) server: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The workflow an action is for: one id, or every workflow a query matches.
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// The workflow's id.
    #[arg(required_unless_present = "query")]
    pub(crate) id: Option<String>,
    /// Instead of one id, every workflow that matches these space-separated filters:
    /// `status=S name=N version=V parent=ID created-after=D created-before=D closed-before=D
    /// tag.KEY=VALUE tag.KEY>N`, times as durations ago (`2h`, `30days`); without a status,
    /// only workflows that have not ended. Each workflow is handled on its own; a summary
    /// follows.
    #[arg(long, conflicts_with = "id")]
    pub(crate) query: Option<String>,
    /// With `--query`: list the workflows it matches, and act on none.
    #[arg(long, requires = "query")]
    pub(crate) dry_run: bool,
    /// With `--query`: act on more than ten workflows.
    #[arg(long, requires = "query")]
    pub(crate) yes: bool,
}

/// `--to` of `loom reset`: an event number, or `last-task`.
fn parse_reset_to(text: &str) -> Result<loom_worker::ResetTo, String> {
    if text == "last-task" {
        return Ok(loom_worker::ResetTo::LastTask);
    }
    match text.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(loom_worker::ResetTo::Event(loom_core::Seq::new(n))),
        _ => Err(format!(
            "{text:?} is neither an event number (from 1) nor `last-task`"
        )),
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create the database and its schema.
    Init,
    /// Run a worker for the registered workflows until Ctrl-C (or until idle).
    Worker {
        /// Workflow tasks run at once (activities run four times as many). A workflow task
        /// mostly waits for its commit, so throughput grows with this well past the core count:
        /// PostgreSQL wants hundreds.
        #[arg(long, default_value_t = 64)]
        workers: usize,
        /// Seconds between polls for work from other processes when idle (on a store without
        /// notifications, an eighth of it after finding work, doubling back up to it).
        #[arg(long, default_value_t = 0.5)]
        poll_interval: f64,
        /// Exit once no task is runnable or due within a second.
        #[arg(long)]
        exit_when_idle: bool,
        /// Seconds a paused workflow (its code could not replay, panicked, or its type or
        /// version is not registered here) waits before this worker tries it again; `loom
        /// resume` retries it at once.
        #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
        pause_retry: f64,
        /// Also run `loom bench`'s workflow (for `loom bench --processes`), and stop, as on
        /// SIGTERM, when standard input closes: the benchmark stops its helpers so, with no
        /// race against the signal handler being installed.
        #[arg(long, hide = true)]
        bench: bool,
        /// Serve Prometheus metrics (`/metrics`) and health checks (`/livez`, `/readyz`) over
        /// HTTP at ADDR: a PORT (on 127.0.0.1), or HOST:PORT to listen elsewhere.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        /// How log lines are written to stderr: `text` for people, `json` (one object per
        /// line, with the workflow id, run, task and attempt of the task it concerns) for log
        /// pipelines.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Export traces over OTLP/HTTP to this collector URL (such as
        /// http://127.0.0.1:4318); OTEL_EXPORTER_OTLP_ENDPOINT does the same.
        #[arg(long, value_name = "URL")]
        otlp: Option<String>,
        /// Also serve the dashboard and the HTTP API, as `loom server` does, at ADDR: a PORT
        /// (on 127.0.0.1), or HOST:PORT. An address other machines reach needs a token.
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
        /// The token callers of `--http` must present.
        #[arg(long, env = "LOOM_TOKEN", hide_env_values = true, requires = "http")]
        token: Option<String>,
    },
    /// Serve the web dashboard and the HTTP JSON API over this database until Ctrl-C; the
    /// API is described by the OpenAPI document at /api/openapi.json.
    Server {
        /// Where to listen: a PORT (on 127.0.0.1), or HOST:PORT. An address other machines
        /// reach needs a token.
        #[arg(long, default_value = "127.0.0.1:8237", value_name = "ADDR")]
        listen: String,
        /// The token callers must send as `Authorization: Bearer TOKEN`.
        #[arg(long, env = "LOOM_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Start a workflow and print its id.
    Start {
        /// The workflow type's name (see `loom workflows`).
        workflow: String,
        /// The input, as JSON (default: null).
        #[arg(long, conflicts_with = "input_file")]
        input: Option<String>,
        /// Read the input from this file, or from stdin with `-`: for inputs longer than a
        /// command line holds (the OS caps one argument at 128 KiB).
        #[arg(long, value_name = "PATH")]
        input_file: Option<std::path::PathBuf>,
        /// The workflow's id (default: a new UUID). Starting again with the same id and input
        /// returns the existing workflow.
        #[arg(long)]
        id: Option<String>,
        /// End the run `timed_out` if it is still running this many seconds after it starts.
        #[arg(long, value_name = "SECONDS")]
        run_timeout: Option<f64>,
        /// End the workflow `timed_out` if it is still running this many seconds after it
        /// starts, across the runs that continue it.
        #[arg(long, value_name = "SECONDS")]
        execution_timeout: Option<f64>,
        /// Wait for the result and print it (a worker must be running).
        #[arg(long)]
        wait: bool,
        /// A tag to find it by, `key=value` (repeat for more): `true`/`false` is a truth
        /// value, a whole number an int, an RFC 3339 time a time, anything else text.
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Start this version of the workflow type (default: the newest this loom has; see
        /// `loom workflows`).
        #[arg(long)]
        version: Option<u32>,
    },
    /// List workflows, newest first.
    List {
        /// The most workflows to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only this status: running, paused, completed, failed, cancelled, terminated or
        /// timed_out.
        #[arg(long)]
        status: Option<String>,
        /// Only this workflow type.
        #[arg(long)]
        name: Option<String>,
        /// Only the child workflows this workflow started.
        #[arg(long)]
        parent: Option<String>,
        /// Only workflows that ended at least this long ago (`30days`, `12h`, `90s`).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        closed_before: Option<std::time::Duration>,
        /// Only workflows with this tag (repeat: all of them): `key=value` compares as text
        /// (`customer=42` finds the number and the text), `key>N`, `key>=N`, `key<N`,
        /// `key<=N` compare int and time tags (a time in RFC 3339).
        #[arg(long = "tag", value_name = "KEY=VALUE|KEY<N")]
        tags: Vec<String>,
        /// Only runs of this version of their workflow type.
        #[arg(long)]
        version: Option<u32>,
    },
    /// Delete closed workflows that ended at least DURATION ago, with everything of theirs
    /// (summary, every run's history, logs), a batch at a time. Open workflows are never
    /// purged.
    Purge {
        /// How long ago they must have ended (`30days`, `12h`, `90s`).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        closed_before: std::time::Duration,
        /// Only this status: completed, failed, cancelled, terminated or timed_out.
        #[arg(long)]
        status: Option<String>,
        /// Only this workflow type.
        #[arg(long)]
        name: Option<String>,
        /// List what would be purged, and delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Workflows deleted per write.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
        batch: u32,
    },
    /// Show one workflow: status, input, state, output or error, what it waits for.
    Inspect {
        /// The workflow's id.
        id: String,
        /// Also show the numbered event history.
        #[arg(long)]
        events: bool,
        /// Show this run of a workflow that continued as new (default: its current run).
        #[arg(long, value_name = "R", value_parser = clap::value_parser!(u32).range(1..))]
        run: Option<u32>,
    },
    /// Send a signal to a workflow.
    Signal {
        /// The workflow's id.
        id: String,
        /// The signal's name.
        name: String,
        /// The payload, as JSON (default: null).
        #[arg(long, conflicts_with = "payload_file")]
        payload: Option<String>,
        /// Read the payload from this file, or from stdin with `-`.
        #[arg(long, value_name = "PATH")]
        payload_file: Option<std::path::PathBuf>,
    },
    /// Ask a workflow to cancel.
    Cancel {
        #[command(flatten)]
        target: Target,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// End a workflow at once, without running its code (no worker needed): recorded as
    /// `WorkflowTerminated` with the reason; its children get their parent-close policies.
    Terminate {
        #[command(flatten)]
        target: Target,
        /// Who ends it and why (recorded in its history).
        #[arg(long)]
        reason: String,
    },
    /// Pause a workflow: no worker runs its code until `loom resume`; signals, activity
    /// results and timers wait, in order.
    Pause {
        #[command(flatten)]
        target: Target,
        /// Who pauses it and why (shown by `loom inspect`).
        #[arg(long)]
        reason: String,
    },
    /// Resume a paused workflow (paused by `loom pause`, or by code that could not replay):
    /// it runs at once, with everything that waited.
    Resume {
        #[command(flatten)]
        target: Target,
    },
    /// Reset a workflow's current run, open or ended, to a workflow-task boundary and run
    /// this binary's code from there (a worker must run it): the use is a bug fixed in code,
    /// rerun from before the step that broke. The new run keeps the history up to the point;
    /// the activities and timers open there start again; signals received after it are
    /// delivered again. The old run is kept (`loom inspect ID --run R`).
    Reset {
        #[command(flatten)]
        target: Target,
        /// Where to: an event number of the current run that is a workflow-task boundary
        /// (`loom inspect ID --events` marks them), or `last-task`, the last boundary before
        /// the run's first failure.
        #[arg(long, value_name = "SEQ|last-task", value_parser = parse_reset_to)]
        to: loom_worker::ResetTo,
        /// Who resets it and why (recorded in both runs).
        #[arg(long)]
        reason: String,
        /// Do not deliver again the signals received after the point (nor those waiting).
        #[arg(long)]
        no_signals: bool,
    },
    /// Print a workflow's result (exit 1 if it failed or was cancelled).
    Result {
        /// The workflow's id.
        id: String,
        /// Wait until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// Counts: workflows by status, events, tasks ready and running.
    Stats,
    /// Replay stored histories against this binary's code: the check to run before deploying
    /// changed workflow code (exit 1 on a mismatch). One workflow, or with `--all` every one
    /// that matches the filters, each mismatch reported with its position, the recorded event
    /// and the command the code issued instead.
    Replay {
        /// The workflow's id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every stored history that matches the filters (by default the running and paused
        /// workflows: the ones the new code will run).
        #[arg(long)]
        all: bool,
        /// With `--all`: only these statuses, comma-separated (running, paused, completed,
        /// failed, ...).
        #[arg(long, requires = "all", value_delimiter = ',')]
        status: Vec<String>,
        /// With `--all`: only this workflow type.
        #[arg(long, requires = "all")]
        name: Option<String>,
        /// With `--all`: only runs of this version of their type.
        #[arg(long, requires = "all")]
        version: Option<u32>,
        /// Replay each history this many times: code that is not deterministic because it is
        /// random (`tokio::select!`, a `HashMap`'s order) may disagree only sometimes.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        times: u32,
        /// With `--all`: histories replayed at once (default: the machine's cores).
        #[arg(long, requires = "all", value_parser = clap::value_parser!(u32).range(1..))]
        parallel: Option<u32>,
    },
    /// List the workflow and activity types this binary has registered.
    Workflows,
    /// Load-test the engine: start N workflows of K sequential activities, run them with an
    /// in-process worker, check every output, and report throughput, latency and memory.
    Bench {
        /// How many workflows.
        #[arg(long, default_value_t = 1_000)]
        workflows: usize,
        /// Sequential activities in each.
        #[arg(long, default_value_t = 2)]
        activities: u32,
        /// Workflow tasks run at once (activities run four times as many).
        #[arg(long, default_value_t = 64)]
        workers: usize,
        /// Bytes of payload carried by each activity's input.
        #[arg(long, default_value_t = 16)]
        payload_bytes: usize,
        /// Start workflows at this many per second while the worker runs, instead of all up
        /// front (measures latency under a steady load).
        #[arg(long)]
        rate: Option<f64>,
        /// Worker processes sharing the work: this one and PROCESSES - 1 `loom worker`
        /// processes it starts on the same database (SQLite or PostgreSQL).
        #[arg(long, default_value_t = 1)]
        processes: usize,
        /// Before the run, start this many workflows that wait a year on a timer and let them
        /// park: the run then claims its work among them.
        #[arg(long, default_value_t = 0)]
        idle: usize,
        /// Record metrics as `loom worker --metrics` does (without serving them), to measure
        /// what recording costs.
        #[arg(long)]
        metrics: bool,
        /// Export traces to this OTLP/HTTP collector as `loom worker --otlp` does, to measure
        /// what tracing costs.
        #[arg(long, value_name = "URL")]
        otlp: Option<String>,
        /// Measure schedules instead: this many schedules firing every second for
        /// `--duration`, each fire's lateness from its nominal time to its workflow's start,
        /// and that every fire started exactly once.
        #[arg(long, value_name = "N")]
        schedules: Option<usize>,
        /// How long the schedules run (with `--schedules`).
        #[arg(long, default_value = "20s", requires = "schedules")]
        duration: String,
    },
    /// Schedules: start workflows on cron expressions and intervals, each fire time once.
    Schedule {
        #[command(subcommand)]
        command: schedule::ScheduleCommand,
    },
    /// Start a batch of the example workflows, run them with an in-process worker, and
    /// report what happened.
    Demo {
        /// How many OrderProcessing workflows to start (the other examples scale with it).
        #[arg(long, default_value_t = 8)]
        orders: usize,
    },
}

/// A command's failure: a sentence for stderr and an exit code.
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Fail {
    /// Bad usage or bad input: exit code 2.
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Fail {
            code: 2,
            message: message.into(),
        }
    }

    /// The operation failed: exit code 1.
    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Fail {
            code: 1,
            message: message.into(),
        }
    }

    pub(crate) fn from_storage(e: StorageError) -> Self {
        let message = sentence(&e);
        match e {
            StorageError::NotFound(_)
            | StorageError::ScheduleNotFound(_)
            | StorageError::ScheduleExists(_)
            | StorageError::AlreadyExists { .. }
            | StorageError::InvalidArgument(_)
            | StorageError::Incompatible(_)
            | StorageError::Corrupt { .. } => Fail::usage(message),
            _ => Fail::failed(message),
        }
    }

    pub(crate) fn from_client(e: ClientError) -> Self {
        match e {
            ClientError::Storage(e) => Fail::from_storage(e),
            ClientError::IdInUse(_)
            | ClientError::Payload(_)
            | ClientError::UnknownWorkflow { .. } => Fail::usage(e.to_string()),
            other => Fail::failed(other.to_string()),
        }
    }
}

/// An error and its causes as one sentence.
fn sentence(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_binary_has_its_own_name_and_no_demo_without_the_examples() {
        let help = cli_command("tripctl", false).render_long_help().to_string();
        assert!(help.contains("Usage: tripctl"), "{help}");
        assert!(
            help.contains("tripctl: durable workflows on Loom"),
            "{help}"
        );
        assert!(!help.contains("demo"), "{help}");
        assert!(
            help.contains("bench"),
            "bench registers its own types: {help}"
        );
        let with_examples = cli_command("loom", true).render_long_help().to_string();
        assert!(with_examples.contains("demo"), "{with_examples}");
        assert!(with_examples.contains("Usage: loom"), "{with_examples}");
    }
}
