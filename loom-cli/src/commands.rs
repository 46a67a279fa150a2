//! One function per command.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use loom_core::{EventKind, Payload, Registry, WorkflowId};
use loom_storage::{Clock, ListQuery, Storage, SystemClock, WorkflowStatus, WorkflowSummary};
use loom_worker::{Client, StartOptions, TaskState, Worker, WorkerConfig};
use serde_json::json;

use crate::db::{self, DbUrl, Missing};
use crate::render;
use crate::{Cli, Command, Fail};

pub(crate) async fn execute(cli: Cli, registry: Registry) -> Result<ExitCode, Fail> {
    let url = DbUrl::parse(&cli.db)?;
    let json = cli.json;
    let remote = cli
        .server
        .as_deref()
        .map(|s| crate::remote::Remote::new(s, std::env::var("LOOM_TOKEN").ok()))
        .transpose()?;
    // Through a server, the commands that act on workflows go over its API; the rest need
    // the database itself.
    let operator = async |missing: Missing| -> Result<Operator, Fail> {
        match &remote {
            Some(r) => Ok(Operator::Remote(r.clone())),
            None => Ok(Operator::Local(Client::new(
                db::open(&url, missing, false).await?,
            ))),
        }
    };
    if url == DbUrl::Memory
        && !matches!(
            cli.command,
            Command::Bench {
                processes: 0 | 1,
                ..
            }
        )
    {
        return Err(Fail::usage(
            "--db memory:// is for `loom bench` in one process only: nothing in it outlives the \
             process, so it measures the engine without a disk",
        ));
    }
    if remote.is_some()
        && !matches!(
            cli.command,
            Command::Start { .. }
                | Command::List { .. }
                | Command::Signal { .. }
                | Command::Cancel { .. }
                | Command::Terminate { .. }
                | Command::Pause { .. }
                | Command::Resume { .. }
                | Command::Reset { .. }
                | Command::Result { .. }
                | Command::Inspect { .. }
                | Command::Stats
                | Command::Purge { .. }
                | Command::Replay { .. }
                | Command::Workflows
                | Command::Schedule { .. }
        )
    {
        return Err(Fail::usage(
            "init, worker, server, demo and bench run here, on the database (--db), not \
             through --server",
        ));
    }
    match cli.command {
        Command::Init => init(&url, json).await,
        Command::Schedule { command } => {
            let open = async |missing: Missing| -> Result<crate::schedule::Place, Fail> {
                Ok(match &remote {
                    Some(r) => crate::schedule::Place::Remote(r.clone()),
                    None => crate::schedule::Place::Local(Client::new(
                        db::open(&url, missing, false).await?,
                    )),
                })
            };
            crate::schedule::run(command, open, &registry, remote.is_some(), json).await
        }
        Command::Workflows => match &remote {
            Some(r) => r.types(json).await,
            None => workflows(&registry, json),
        },
        Command::Worker {
            workers,
            poll_interval,
            exit_when_idle,
            pause_retry,
            bench,
            metrics,
            log_format,
            otlp,
            http,
            token,
        } => {
            let metrics = metrics
                .map(|m| crate::observe::parse_addr(&m))
                .transpose()
                .map_err(Fail::usage)?;
            let http = http
                .map(|h| {
                    let addr = crate::observe::parse_addr(&h)
                        .map_err(|e| Fail::usage(e.replace("--metrics", "--http")))?;
                    loom_server::check_bind(addr, token.as_deref())
                        .map_err(|e| Fail::usage(format!("--http {h}: {e}")))?;
                    Ok::<_, Fail>(addr)
                })
                .transpose()?;
            let mut registry = registry;
            if bench {
                crate::bench::register(&mut registry)?;
            }
            let pause_retry = seconds("--pause-retry", Some(pause_retry))?.unwrap_or_default();
            let store = db::open_for_work(&url, Missing::Create).await?;
            let args = WorkerArgs {
                db: url.display(),
                workers,
                poll_interval,
                pause_retry,
                exit_when_idle,
                metrics,
                log_format,
                otlp,
                http: http.map(|addr| (addr, token)),
                stop_at_end_of_input: bench,
            };
            worker(store, registry, args, json).await
        }
        Command::Server { listen, token } => {
            let addr = crate::observe::parse_addr(&listen)
                .map_err(|e| Fail::usage(e.replace("--metrics", "--listen")))?;
            loom_server::check_bind(addr, token.as_deref())
                .map_err(|e| Fail::usage(format!("--listen {listen}: {e}")))?;
            let store = db::open(&url, Missing::Create, false).await?;
            server(store, registry, addr, token).await
        }
        Command::Start {
            workflow,
            input,
            input_file,
            id,
            run_timeout,
            execution_timeout,
            wait,
            tags,
            version,
        } => {
            let input = json_arg("--input", input, input_file.as_deref())?;
            let tags = tags
                .iter()
                .map(|t| parse_tag(t))
                .collect::<Result<loom_core::Tags, Fail>>()?;
            loom_core::tags::check_tags(&tags).map_err(|e| Fail::usage(format!("--tag: {e}")))?;
            let run_timeout = seconds("--run-timeout", run_timeout)?;
            let execution_timeout = seconds("--execution-timeout", execution_timeout)?;
            // Check name and input before touching the database, so bad input writes nothing;
            // through a server, the server checks them against its own types.
            if remote.is_none() {
                let Some(newest) = registry.workflow(&workflow) else {
                    return Err(unknown_workflow(&registry, &workflow));
                };
                let def = match version {
                    None => newest,
                    Some(v) => registry.workflow_version(&workflow, v).ok_or_else(|| {
                        let known: Vec<String> = registry
                            .workflow_versions(&workflow)
                            .iter()
                            .map(u32::to_string)
                            .collect();
                        Fail::usage(format!(
                            "--version {v}: this loom has versions {} of {workflow}",
                            known.join(", ")
                        ))
                    })?,
                };
                loom_worker::Limits::default()
                    .check_payload("the input", input.encoded_len())
                    .map_err(Fail::usage)?;
                def.check_input(&input).map_err(|e| {
                    Fail::usage(format!("--input does not fit workflow {workflow}: {e}"))
                })?;
            }
            let op = operator(Missing::Create).await?;
            let timeouts = (run_timeout, execution_timeout);
            let options = StartOptions {
                id: id.map(WorkflowId::new),
                run_timeout: timeouts.0,
                execution_timeout: timeouts.1,
                tags,
                version,
                ..StartOptions::default()
            };
            start(op, &registry, &workflow, input, options, wait, json).await
        }
        Command::List {
            limit,
            status,
            name,
            parent,
            closed_before,
            tags,
            version,
        } => {
            let status = status
                .map(|s| s.parse::<WorkflowStatus>())
                .transpose()
                .map_err(Fail::usage)?;
            let tags = tags
                .iter()
                .map(|t| parse_tag_filter(t))
                .collect::<Result<Vec<_>, Fail>>()?;
            let query = ListQuery {
                status,
                name,
                parent: parent.map(WorkflowId::new),
                closed_before: closed_before.map(ago),
                tags,
                version,
                limit,
                ..ListQuery::default()
            };
            list(operator(Missing::Refuse).await?, &query, json).await
        }
        Command::Purge {
            closed_before,
            status,
            name,
            dry_run,
            batch,
        } => {
            let status = status
                .map(|s| s.parse::<WorkflowStatus>())
                .transpose()
                .map_err(Fail::usage)?;
            let purge = loom_storage::Purge {
                older_than: closed_before,
                status,
                name,
                except_names: Vec::new(),
                limit: batch as usize,
            };
            purge_command(operator(Missing::Refuse).await?, &purge, dry_run, json).await
        }
        Command::Inspect { id, events, run } => {
            let op = operator(Missing::Refuse).await?;
            inspect(op, &WorkflowId::new(id), run, events, json).await
        }
        Command::Signal {
            id,
            name,
            payload,
            payload_file,
        } => {
            let payload = json_arg("--payload", payload, payload_file.as_deref())?;
            let op = operator(Missing::Refuse).await?;
            let id = WorkflowId::new(id);
            op.signal(&registry, &id, &name, payload).await?;
            if json {
                render::json(&json!({ "id": id, "signal": name, "sent": true }))?;
            } else {
                println!("Sent signal {name:?} to {id}.");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Terminate { target, reason } => {
            act(
                operator(Missing::Refuse).await?,
                target,
                Action::Terminate(reason),
                json,
            )
            .await
        }
        Command::Reset {
            target,
            to,
            reason,
            no_signals,
        } => {
            let action = Action::Reset {
                to,
                reason,
                signals: !no_signals,
            };
            act(operator(Missing::Refuse).await?, target, action, json).await
        }
        Command::Pause { target, reason } => {
            act(
                operator(Missing::Refuse).await?,
                target,
                Action::Pause(reason),
                json,
            )
            .await
        }
        Command::Resume { target } => {
            act(
                operator(Missing::Refuse).await?,
                target,
                Action::Resume,
                json,
            )
            .await
        }
        Command::Cancel { target, reason } => {
            act(
                operator(Missing::Refuse).await?,
                target,
                Action::Cancel(reason),
                json,
            )
            .await
        }
        Command::Result { id, wait } => {
            let op = operator(Missing::Refuse).await?;
            let id = WorkflowId::new(id);
            let summary = if wait {
                op.wait(&id).await
            } else {
                op.describe(&id).await
            }?;
            if !summary.status.is_terminal() {
                return Err(Fail::failed(format!(
                    "workflow {id} is {} and has no result yet (use --wait to wait for it)",
                    summary.status
                )));
            }
            print_result(&summary, json)
        }
        Command::Stats => stats(operator(Missing::Refuse).await?, json).await,
        Command::Replay {
            id,
            all,
            status,
            name,
            version,
            times,
            parallel,
        } => {
            let op = operator(Missing::Refuse).await?;
            match id.filter(|_| !all) {
                Some(id) => {
                    crate::replay::one(op, &registry, &WorkflowId::new(id), times, json).await
                }
                None => {
                    let parallel = parallel.map_or_else(
                        || std::thread::available_parallelism().map_or(2, usize::from),
                        |p| p as usize,
                    );
                    let filter = crate::replay::Filter {
                        statuses: status,
                        name,
                        version,
                    };
                    crate::replay::all(op, &registry, filter, times, parallel, json).await
                }
            }
        }
        Command::Bench {
            workflows,
            activities,
            workers,
            payload_bytes,
            rate,
            processes,
            idle,
            metrics,
            otlp,
            schedules,
            duration,
        } => {
            if let Some(n) = schedules {
                let duration = humantime::parse_duration(&duration).map_err(|e| {
                    Fail::usage(format!("--duration {duration:?} is not a duration ({e})"))
                })?;
                if n == 0 || duration < Duration::from_secs(2) {
                    return Err(Fail::usage(
                        "--schedules needs at least one schedule and a --duration of 2s or more",
                    ));
                }
                let store = db::open_for_work(&url, Missing::Create).await?;
                return crate::bench::schedules(
                    store,
                    registry,
                    &url.display(),
                    &cli.db,
                    n,
                    duration,
                    processes.max(1),
                    json,
                )
                .await;
            }
            let otel = match otlp.as_deref() {
                Some(url) => {
                    use tracing_subscriber::layer::SubscriberExt;
                    use tracing_subscriber::util::SubscriberInitExt;
                    let otel = crate::otel::Otel::start(Some(url), "bench").map_err(Fail::usage)?;
                    let _ = tracing_subscriber::registry().with(otel.layer()).try_init();
                    Some(otel)
                }
                None => None,
            };
            if rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
                return Err(Fail::usage(
                    "--rate must be a positive number of workflows per second",
                ));
            }
            let store = db::open_for_work(&url, Missing::Create).await?;
            let args = crate::bench::BenchArgs {
                workflows,
                activities,
                workers,
                payload_bytes,
                rate,
                processes: processes.max(1),
                idle,
                metrics,
            };
            let ran =
                crate::bench::bench(store, registry, &url.display(), &cli.db, args, json).await;
            if let Some(otel) = otel {
                otel.shutdown();
            }
            ran
        }
        Command::Demo { orders } => {
            let store = db::open_for_work(&url, Missing::Create).await?;
            demo(store, registry, &url, orders.max(1), json).await
        }
    }
}

/// A duration given in seconds (fractions allowed), which must be positive.
fn seconds(flag: &str, value: Option<f64>) -> Result<Option<Duration>, Fail> {
    value
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    Fail::usage(format!(
                        "{flag} must be a positive number of seconds, not {s}"
                    ))
                })
        })
        .transpose()
}

fn parse_json(flag: &str, text: &str) -> Result<Payload, Fail> {
    Payload::parse(text).map_err(|e| Fail::usage(format!("{flag} is not valid JSON ({e})")))
}

/// A JSON argument given inline (`--input JSON`), from a file (`--input-file PATH`) or from
/// stdin (`--input-file -`); `null` when neither is given.
fn json_arg(
    flag: &str,
    inline: Option<String>,
    file: Option<&std::path::Path>,
) -> Result<Payload, Fail> {
    let Some(path) = file else {
        return parse_json(flag, inline.as_deref().unwrap_or("null"));
    };
    let from = format!("{flag}-file {}", path.display());
    let text = if path == std::path::Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| Fail::usage(format!("{from}: cannot read stdin ({e})")))?;
        text
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Fail::usage(format!("{from}: cannot read the file ({e})")))?
    };
    parse_json(&from, &text)
}

fn unknown_workflow(registry: &Registry, name: &str) -> Fail {
    let known: Vec<&str> = registry.workflow_names().collect();
    Fail::usage(format!(
        "unknown workflow {name:?}; this loom knows: {}",
        known.join(", ")
    ))
}

async fn init(url: &DbUrl, json: bool) -> Result<ExitCode, Fail> {
    let existed = url.file().is_some_and(std::path::Path::exists);
    db::open(url, Missing::Create, true).await?;
    if json {
        render::json(&json!({ "db": url.display(), "created": !existed }))?;
    } else if existed {
        println!("A Loom database already exists at {}.", url.display());
    } else {
        println!("Created a Loom database at {}.", url.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn workflows(registry: &Registry, json: bool) -> Result<ExitCode, Fail> {
    // Each type with the version new runs take and every version registered (each run is
    // executed by the one it started with).
    let workflows: Vec<serde_json::Value> = registry
        .workflow_names()
        .filter_map(|n| registry.workflow(n))
        .map(|w| {
            json!({
                "name": w.name(),
                "version": w.version(),
                "versions": registry.workflow_versions(w.name()),
            })
        })
        .collect();
    let activities: Vec<&str> = registry.activity_names().collect();
    if json {
        render::json(&json!({ "workflows": workflows, "activities": activities }))?;
    } else {
        let mut t = render::table(&["WORKFLOW", "VERSION", "ALL VERSIONS"]);
        for w in &workflows {
            let all: Vec<String> = w["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(ToString::to_string)
                .collect();
            t.add_row(vec![
                w["name"].to_string().trim_matches('"').to_owned(),
                w["version"].to_string(),
                all.join(", "),
            ]);
        }
        println!("{t}");
        println!("activities: {}", activities.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// `loom server`: the HTTP API until Ctrl-C or SIGTERM.
async fn server(
    store: Arc<dyn Storage>,
    registry: Registry,
    addr: std::net::SocketAddr,
    token: Option<String>,
) -> Result<ExitCode, Fail> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Fail::usage(format!("--listen {addr}: cannot listen there: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Fail::usage(format!("--listen {addr}: {e}")))?;
    eprintln!(
        "Loom API on http://{bound}/api/v1 (OpenAPI at /api/openapi.json){}; Ctrl-C stops it.",
        if token.is_some() {
            ", token required"
        } else {
            ""
        }
    );
    loom_server::Service::new(store, Arc::new(registry))
        .with_token(token)
        .serve(listener, loom_worker::shutdown_signal())
        .await
        .map_err(|e| Fail::failed(format!("the server stopped: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

/// `--tag key=value` of `loom start`.
pub(crate) fn parse_tag(text: &str) -> Result<(String, loom_core::TagValue), Fail> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(Fail::usage(format!(
            "--tag {text:?} is not key=value (say --tag customer=42)"
        )));
    };
    let value = loom_core::TagValue::parse(value);
    loom_core::tags::check_tag(key, &value).map_err(|e| Fail::usage(format!("--tag: {e}")))?;
    Ok((key.to_owned(), value))
}

/// A tag filter of `loom list --tag`.
fn parse_tag_filter(text: &str) -> Result<loom_storage::TagFilter, Fail> {
    loom_storage::TagFilter::parse(text).map_err(Fail::usage)
}

async fn start(
    op: Operator,
    registry: &Registry,
    workflow: &str,
    input: Payload,
    options: StartOptions,
    wait: bool,
    json: bool,
) -> Result<ExitCode, Fail> {
    let id = op.start(registry, workflow, input, options).await?;
    if !wait {
        if json {
            render::json(&json!({ "id": id, "workflow": workflow }))?;
        } else {
            println!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !json && std::io::stderr().is_terminal() {
        eprintln!(
            "Started {id}; waiting for a worker to finish it (run `loom worker` elsewhere)..."
        );
    }
    let summary = op.wait(&id).await?;
    print_result(&summary, json)
}

/// Prints a finished workflow's output, or its error with exit code 1.
fn print_result(summary: &WorkflowSummary, json: bool) -> Result<ExitCode, Fail> {
    let ok = summary.status == WorkflowStatus::Completed;
    if json {
        render::json(&json!({
            "id": summary.id,
            "status": summary.status,
            "output": summary.output,
            "failure": summary.failure,
        }))?;
    } else if let Some(output) = summary.output.as_ref().filter(|_| ok) {
        println!("{}", output.as_json());
    } else if summary.status == WorkflowStatus::Failed {
        let why = summary
            .failure
            .as_ref()
            .map_or_else(|| "no error recorded".to_owned(), ToString::to_string);
        eprintln!(
            "{}: workflow {} failed: {why}",
            crate::program(),
            summary.id
        );
    } else if let Some(f) = summary
        .failure
        .as_ref()
        .filter(|_| summary.status == WorkflowStatus::Terminated)
    {
        eprintln!(
            "{}: workflow {} was terminated: {}",
            crate::program(),
            summary.id,
            f.message
        );
    } else if let Some(f) = summary
        .failure
        .as_ref()
        .filter(|_| summary.status == WorkflowStatus::TimedOut)
    {
        eprintln!(
            "{}: workflow {} timed out: {}",
            crate::program(),
            summary.id,
            f.message
        );
    } else {
        eprintln!(
            "{}: workflow {} was {}",
            crate::program(),
            summary.id,
            summary.status
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn list(op: Operator, query: &ListQuery, json: bool) -> Result<ExitCode, Fail> {
    let limit = query.limit;
    let page = op.list(query).await?;
    if json {
        render::json(&json!({ "workflows": page.items, "more": page.next.is_some() }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if page.items.is_empty() {
        println!("No workflows.");
        return Ok(ExitCode::SUCCESS);
    }
    let tagged = page.items.iter().any(|s| !s.tags.is_empty());
    let mut header = vec!["ID", "WORKFLOW", "STATUS", "STEP", "CREATED", "UPDATED"];
    if tagged {
        header.push("TAGS");
    }
    let mut t = render::table(&header);
    for s in &page.items {
        let step = s
            .progress
            .as_ref()
            .and_then(|p| p.current_step.clone())
            .unwrap_or_default();
        let mut row = vec![
            s.id.to_string(),
            s.name.clone(),
            s.status.to_string(),
            step,
            render::time(s.created_at),
            render::time(s.updated_at),
        ];
        if tagged {
            row.push(render::tags(&s.tags));
        }
        t.add_row(row);
    }
    println!("{t}");
    if page.next.is_some() {
        println!("(more than {limit}; use --limit to see more)");
    }
    Ok(ExitCode::SUCCESS)
}

/// The most children `inspect` lists; `list --parent` shows them all.
const CHILDREN_SHOWN: usize = 20;

/// Where a command acts: on the database, or through a server's API (`--server`).
#[derive(Clone)]
pub(crate) enum Operator {
    Local(Client),
    Remote(crate::remote::Remote),
}

impl Operator {
    pub(crate) async fn describe(&self, id: &WorkflowId) -> Result<WorkflowSummary, Fail> {
        match self {
            Operator::Local(c) => c.describe(id).await.map_err(Fail::from_client),
            Operator::Remote(r) => r.describe(id).await,
        }
    }

    /// The workflow once it has ended.
    pub(crate) async fn wait(&self, id: &WorkflowId) -> Result<WorkflowSummary, Fail> {
        match self {
            Operator::Local(c) => c.wait(id, None).await.map_err(Fail::from_client),
            Operator::Remote(r) => r.wait(id, Duration::from_millis(200)).await,
        }
    }

    pub(crate) async fn list(
        &self,
        q: &ListQuery,
    ) -> Result<loom_storage::Page<WorkflowSummary>, Fail> {
        match self {
            Operator::Local(c) => c.list(q).await.map_err(Fail::from_client),
            Operator::Remote(r) => r.list(q).await,
        }
    }

    /// Starts a workflow by name: checked against this binary's registry here, and against
    /// the server's there.
    pub(crate) async fn start(
        &self,
        registry: &Registry,
        workflow: &str,
        input: Payload,
        options: StartOptions,
    ) -> Result<WorkflowId, Fail> {
        match self {
            Operator::Local(c) => c
                .start_by_name(registry, workflow, input, options)
                .await
                .map_err(Fail::from_client),
            Operator::Remote(r) => r.start(workflow, input, &options).await,
        }
    }

    /// Deletes a batch of closed workflows (see [`loom_storage::Purge`]); answers their ids.
    pub(crate) async fn purge(&self, purge: &loom_storage::Purge) -> Result<Vec<WorkflowId>, Fail> {
        match self {
            Operator::Local(c) => c.purge(purge).await.map_err(Fail::from_client),
            Operator::Remote(r) => r.purge(purge).await,
        }
    }

    /// The workflow's earlier runs.
    pub(crate) async fn runs(
        &self,
        id: &WorkflowId,
    ) -> Result<Vec<loom_storage::RunSummary>, Fail> {
        match self {
            Operator::Local(c) => c.runs(id).await.map_err(Fail::from_client),
            Operator::Remote(r) => r.runs(id).await,
        }
    }

    /// A run's history: the current run's without `run`.
    pub(crate) async fn history(
        &self,
        id: &WorkflowId,
        run: Option<u32>,
    ) -> Result<Vec<loom_core::Event>, Fail> {
        match (self, run) {
            (Operator::Local(c), None) => c.history(id).await.map_err(Fail::from_client),
            (Operator::Local(c), Some(run)) => {
                c.run_history(id, run).await.map_err(Fail::from_client)
            }
            (Operator::Remote(r), run) => r.history(id, run).await,
        }
    }

    pub(crate) async fn task_states(&self, id: &WorkflowId) -> Result<Vec<TaskState>, Fail> {
        match self {
            Operator::Local(c) => c.task_states(id).await.map_err(Fail::from_client),
            Operator::Remote(r) => r.task_states(id).await,
        }
    }

    pub(crate) async fn signal(
        &self,
        registry: &Registry,
        id: &WorkflowId,
        name: &str,
        payload: Payload,
    ) -> Result<(), Fail> {
        match self {
            Operator::Local(c) => c
                .signal_checked(registry, id, name, payload)
                .await
                .map_err(Fail::from_client),
            Operator::Remote(r) => r.signal(id, name, payload).await,
        }
    }
}

/// What `cancel`, `terminate`, `pause` and `resume` do to one workflow.
#[derive(Clone, Debug)]
enum Action {
    Cancel(Option<String>),
    Terminate(String),
    Pause(String),
    Resume,
    Reset {
        to: loom_worker::ResetTo,
        reason: String,
        signals: bool,
    },
}

impl Action {
    /// Acts on one workflow; a reset answers what it began.
    async fn apply(
        &self,
        op: &Operator,
        id: &WorkflowId,
    ) -> Result<Option<loom_worker::ResetDone>, Fail> {
        let client = match op {
            Operator::Local(client) => client,
            Operator::Remote(remote) => {
                let (action, body) = match self {
                    Action::Cancel(reason) => ("cancel", json!({ "reason": reason })),
                    Action::Terminate(reason) => ("terminate", json!({ "reason": reason })),
                    Action::Pause(reason) => ("pause", json!({ "reason": reason })),
                    Action::Resume => ("resume", json!({})),
                    Action::Reset {
                        to,
                        reason,
                        signals,
                    } => return remote.reset(id, *to, reason, *signals).await.map(Some),
                };
                return remote.act(id, action, body).await.map(|()| None);
            }
        };
        match self {
            Action::Cancel(reason) => client.cancel(id, reason.clone()).await.map(|()| None),
            Action::Terminate(reason) => client.terminate(id, reason).await.map(|()| None),
            Action::Pause(reason) => client.pause(id, reason).await.map(|()| None),
            Action::Resume => client.resume(id).await.map(|()| None),
            Action::Reset {
                to,
                reason,
                signals,
            } => client.reset(id, *to, reason, *signals).await.map(Some),
        }
        .map_err(Fail::from_client)
    }

    /// The key of the JSON answer for one workflow, and the sentence for people.
    fn done(
        &self,
        id: &WorkflowId,
        reset: Option<loom_worker::ResetDone>,
    ) -> (&'static str, String) {
        match self {
            Action::Reset { .. } => (
                "reset",
                match reset {
                    Some(r) => format!(
                        "Reset {id} to event {}: run {} runs this binary's code from there (a worker must be running).",
                        r.point.get(),
                        r.run
                    ),
                    None => format!("Reset {id}."),
                },
            ),
            Action::Cancel(_) => (
                "cancel_requested",
                format!("Asked {id} to cancel; it will stop at its next wait."),
            ),
            Action::Terminate(_) => ("terminated", format!("Terminated {id}.")),
            Action::Pause(_) => (
                "paused",
                format!("Paused {id}; loom resume {id} lets it run again."),
            ),
            Action::Resume => ("resumed", format!("Resumed {id}.")),
        }
    }
}

/// A query of `--query`: space-separated `key=value` filters.
fn parse_query(text: &str) -> Result<ListQuery, Fail> {
    let mut q = ListQuery {
        limit: 1_000,
        ..ListQuery::default()
    };
    let duration = |key: &str, v: &str| {
        humantime::parse_duration(v)
            .map(ago)
            .map_err(|e| Fail::usage(format!("--query: {key}={v:?} is not a duration ({e})")))
    };
    for part in text.split_whitespace() {
        if let Some(filter) = part.strip_prefix("tag.") {
            q.tags.push(
                parse_tag_filter(filter)
                    .map_err(|e| Fail::usage(format!("--query: {}", e.message)))?,
            );
            continue;
        }
        let Some((key, value)) = part.split_once('=') else {
            return Err(Fail::usage(format!(
                "--query: {part:?} is not key=value (keys: status, name, version, parent, created-after, created-before, closed-before, tag.KEY)"
            )));
        };
        match key {
            "status" => q.status = Some(value.parse().map_err(Fail::usage)?),
            "name" => q.name = Some(value.to_owned()),
            "version" => {
                q.version = Some(value.parse().map_err(|_| {
                    Fail::usage(format!(
                        "--query: version={value:?} is not a version number"
                    ))
                })?);
            }
            "parent" => q.parent = Some(WorkflowId::new(value)),
            "created-after" => q.created_after = Some(duration(key, value)?),
            "created-before" => q.created_before = Some(duration(key, value)?),
            "closed-before" => q.closed_before = Some(duration(key, value)?),
            other => {
                return Err(Fail::usage(format!(
                    "--query: unknown filter {other:?} (keys: status, name, version, parent, created-after, created-before, closed-before, tag.KEY)"
                )));
            }
        }
    }
    if text.trim().is_empty() {
        return Err(Fail::usage(
            "--query is empty: it would match every workflow; name at least one filter",
        ));
    }
    Ok(q)
}

/// The ids of every workflow `query` lists (page after page) that `keep` keeps.
async fn matching(
    op: &Operator,
    mut query: ListQuery,
    keep: impl Fn(&WorkflowSummary) -> bool,
) -> Result<Vec<WorkflowId>, Fail> {
    let mut ids = Vec::new();
    loop {
        let page = op.list(&query).await?;
        ids.extend(page.items.into_iter().filter(|s| keep(s)).map(|s| s.id));
        match page.next {
            Some(next) => query.after = Some(next),
            None => return Ok(ids),
        }
    }
}

/// How many workflows `--query` acts on without `--yes`.
const WITHOUT_YES: usize = 10;

/// Runs `action` on the target: one workflow, or each that the query matches, at most 16 at
/// once, each on its own (one failure does not stop the rest), with a summary.
async fn act(
    op: Operator,
    target: crate::Target,
    action: Action,
    json: bool,
) -> Result<ExitCode, Fail> {
    let Some(query) = target.query else {
        let id = WorkflowId::new(target.id.unwrap_or_default());
        let reset = action.apply(&op, &id).await?;
        let (key, sentence) = action.done(&id, reset);
        if json {
            let mut answer = json!({ "id": id, key: true });
            if let Some(r) = reset {
                answer["run"] = json!(r.run);
                answer["point"] = json!(r.point.get());
            }
            render::json(&answer)?;
        } else {
            println!("{sentence}");
        }
        return Ok(ExitCode::SUCCESS);
    };
    let query = parse_query(&query)?;
    // Without a status, the workflows that have ended are left out: none of these actions
    // applies to them.
    let open_only = query.status.is_none();
    let ids = matching(&op, query, |s| !(open_only && s.status.is_terminal())).await?;
    if target.dry_run {
        if json {
            render::json(&json!({ "dry_run": true, "matched": ids.len(), "ids": ids }))?;
        } else {
            for id in &ids {
                println!("{id}");
            }
            println!("{} workflow(s) match; nothing was done.", ids.len());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if ids.len() > WITHOUT_YES && !target.yes {
        return Err(Fail::usage(format!(
            "{} workflows match; pass --yes to act on all of them (or --dry-run to list them)",
            ids.len()
        )));
    }
    let started = Instant::now();
    let bar =
        (!json && std::io::stderr().is_terminal()).then(|| ProgressBar::new(ids.len() as u64));
    let mut failed: Vec<(WorkflowId, String)> = Vec::new();
    let mut done = 0usize;
    let mut running = tokio::task::JoinSet::new();
    let mut queue = ids.iter().cloned();
    loop {
        while running.len() < 16 {
            let Some(id) = queue.next() else { break };
            let (op, action) = (op.clone(), action.clone());
            running.spawn(async move {
                let r = action.apply(&op, &id).await;
                (id, r)
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (id, r) = joined.map_err(|e| Fail::failed(format!("an action panicked: {e}")))?;
        match r {
            Ok(_) => done += 1,
            Err(e) => failed.push((id, e.message)),
        }
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let elapsed = started.elapsed();
    if json {
        render::json(&json!({
            "matched": ids.len(),
            "done": done,
            "failed": failed.iter().map(|(id, e)| json!({"id": id, "error": e})).collect::<Vec<_>>(),
            "elapsed_ms": elapsed.as_millis() as u64,
        }))?;
    } else {
        println!(
            "{} workflow(s) matched: {done} done, {} failed, in {}.",
            ids.len(),
            failed.len(),
            render::duration(elapsed)
        );
        for (id, e) in failed.iter().take(20) {
            println!("  {id}: {e}");
        }
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The time `d` ago by this machine's clock.
fn ago(d: Duration) -> loom_core::Timestamp {
    loom_core::Timestamp::from_millis(
        SystemClock
            .now()
            .as_millis()
            .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    )
}

/// `loom purge`: batches until one comes back short, or with `--dry-run`, the listing of what
/// would go.
async fn purge_command(
    op: Operator,
    purge: &loom_storage::Purge,
    dry_run: bool,
    json: bool,
) -> Result<ExitCode, Fail> {
    if let Some(status) = purge.status.filter(|s| !s.is_terminal()) {
        return Err(Fail::usage(format!(
            "a {status} workflow is open and is never purged; choose completed, failed, cancelled, terminated or timed_out"
        )));
    }
    let started = Instant::now();
    if dry_run {
        let query = ListQuery {
            status: purge.status,
            name: purge.name.clone(),
            closed_before: Some(ago(purge.older_than)),
            limit: 1_000,
            ..ListQuery::default()
        };
        let ids = matching(&op, query, |_| true).await?;
        if json {
            render::json(&json!({ "dry_run": true, "would_purge": ids.len(), "ids": ids }))?;
        } else {
            for id in ids.iter().take(20) {
                println!("{id}");
            }
            if ids.len() > 20 {
                println!("... and {} more", ids.len() - 20);
            }
            println!(
                "Would purge {} closed workflow(s); nothing was deleted.",
                ids.len()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let live = !json && std::io::stderr().is_terminal();
    let mut purged = 0usize;
    loop {
        let batch = op.purge(purge).await?;
        purged += batch.len();
        if live {
            eprint!("\rpurged {purged}");
        }
        if batch.len() < purge.limit {
            break;
        }
    }
    if live {
        eprintln!();
    }
    let elapsed = started.elapsed();
    if json {
        render::json(&json!({ "purged": purged, "elapsed_ms": elapsed.as_millis() as u64 }))?;
    } else {
        println!(
            "Purged {purged} closed workflow(s) in {}.",
            render::duration(elapsed)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One line for a task's state.
fn task_line(t: &TaskState) -> String {
    let what = match (&t.activity_id, t.attempt) {
        (Some(id), Some(attempt)) => {
            format!("activity {} (activity#{id}), attempt {attempt}", t.task)
        }
        _ => "workflow task".to_owned(),
    };
    let at = t.at.map(render::time).unwrap_or_default();
    let mut line = match t.state {
        "running" => format!("{what}: a worker holds it until {at}"),
        "ready" => format!(
            "{what}: ready for {}, no worker has claimed it",
            render::duration(Duration::from_millis(t.waited_ms.unwrap_or(0)))
        ),
        "waiting" => format!("{what}: due at {at}"),
        _ => format!("{what}: nothing due"),
    };
    if t.deliveries > 1 {
        line.push_str(&format!(", handed out {} times", t.deliveries));
    }
    if let Some(f) = &t.last_failure {
        line.push_str(&format!("; last failure {f}"));
    }
    line
}

/// How many earlier runs `inspect` lists; the rest are counted.
const RUNS_SHOWN: usize = 10;

/// `loom inspect ID --run R` for an earlier run: what its history says.
async fn inspect_past_run(
    op: Operator,
    summary: &loom_storage::WorkflowSummary,
    run: u32,
    events: bool,
    json: bool,
) -> Result<ExitCode, Fail> {
    let history = op.history(&summary.id, Some(run)).await?;
    let input = match history.first().map(|e| &e.kind) {
        Some(loom_core::EventKind::WorkflowStarted { input, .. }) => input.clone(),
        _ => loom_core::Payload::NULL,
    };
    let ended = history.last().map(|e| (e.at, e.kind.to_string()));
    if json {
        let mut doc = json!({
            "id": summary.id,
            "name": summary.name,
            "run": run,
            "current_run": summary.run,
            "input": input,
            "started_at": history.first().map(|e| e.at),
            "ended_at": ended.as_ref().map(|(at, _)| *at),
            "ended": ended.as_ref().map(|(_, how)| how.clone()),
            "events_count": history.len(),
        });
        if events {
            doc["events"] = serde_json::to_value(&history)
                .map_err(|e| Fail::failed(format!("cannot encode the history: {e}")))?;
        }
        render::json(&doc)?;
        return Ok(ExitCode::SUCCESS);
    }
    let line = |label: &str, value: String| println!("{label:<10} {value}");
    line("id", summary.id.to_string());
    line("workflow", summary.name.clone());
    line("run", format!("{run} of {} (ended)", summary.run));
    if let Some(first) = history.first() {
        line("started", render::time(first.at));
        if run > 1 {
            line("began", run_origin(run, Some(first)));
        }
    }
    if let Some((at, how)) = &ended {
        line("ended", format!("{} by {how}", render::time(*at)));
    }
    line("input", render::payload(&input, 200));
    line("events", history.len().to_string());
    if events {
        println!();
        print_events(&history);
    }
    Ok(ExitCode::SUCCESS)
}

/// The numbered events, each workflow-task boundary (a point `loom reset` takes) marked.
fn print_events(history: &[loom_core::Event]) {
    let points = loom_core::history::reset_points(history);
    let mut t = render::table(&["#", "TIME", "EVENT"]);
    for e in history {
        let mark = if points.contains(&e.seq) { "*" } else { "" };
        t.add_row(vec![
            format!("{}{mark}", e.seq.get()),
            render::time(e.at),
            e.kind.to_string(),
        ]);
    }
    println!("{t}");
    if !points.is_empty() {
        println!(
            "* a workflow-task boundary: `loom reset ID --to N` reruns the code from just after it"
        );
    }
}

/// How run `run` began, from its first event: continued as new, retried or reset.
fn run_origin(run: u32, first: Option<&loom_core::Event>) -> String {
    match first.map(|e| &e.kind) {
        Some(loom_core::EventKind::WorkflowStarted {
            reset: Some(origin),
            ..
        }) => format!(
            "reset from run {} at event {}: {}",
            origin.run,
            origin.point.get(),
            origin.reason
        ),
        Some(loom_core::EventKind::WorkflowStarted { attempt, .. }) if *attempt > 1 => {
            format!("attempt {attempt}, retried after run {} failed", run - 1)
        }
        _ => format!("continued as new from run {}", run - 1),
    }
}

async fn inspect(
    op: Operator,
    id: &WorkflowId,
    run: Option<u32>,
    events: bool,
    json: bool,
) -> Result<ExitCode, Fail> {
    let summary = op.describe(id).await?;
    if let Some(run) = run.filter(|r| *r != summary.run) {
        return inspect_past_run(op, &summary, run, events, json).await;
    }
    let runs = if summary.run > 1 {
        op.runs(id).await?
    } else {
        Vec::new()
    };
    let limits = loom_worker::Limits::default();
    let long_history = (summary.last_seq.get() > limits.history_warning_events).then(|| {
        format!(
            "{} events: a long history replays slowly after every cache miss, and a run is ended at {} (Limits::max_history_events); a workflow that goes on for ever should continue as new before then (ctx.continue_as_new)",
            summary.last_seq.get(),
            limits.max_history_events
        )
    });
    let children = op
        .list(&ListQuery {
            parent: Some(id.clone()),
            limit: CHILDREN_SHOWN,
            ..ListQuery::default()
        })
        .await?;
    let history = if events || summary.run > 1 {
        Some(op.history(id, None).await?)
    } else {
        None
    };
    let reset_from = match history.as_ref().and_then(|h| h.first()).map(|e| &e.kind) {
        Some(loom_core::EventKind::WorkflowStarted { reset, .. }) => reset.clone(),
        _ => None,
    };
    let tasks = if summary.status.is_terminal() {
        Vec::new()
    } else {
        op.task_states(id).await?
    };
    if json {
        let mut doc = serde_json::to_value(&summary)
            .map_err(|e| Fail::failed(format!("cannot encode the summary: {e}")))?;
        doc["tasks"] = serde_json::to_value(&tasks)
            .map_err(|e| Fail::failed(format!("cannot encode the tasks: {e}")))?;
        if let Some(h) = history.as_ref().filter(|_| events) {
            doc["events"] = serde_json::to_value(h)
                .map_err(|e| Fail::failed(format!("cannot encode the history: {e}")))?;
            doc["reset_points"] = json!(
                loom_core::history::reset_points(h)
                    .iter()
                    .map(|p| p.get())
                    .collect::<Vec<_>>()
            );
        }
        doc["reset_from"] = json!(reset_from);
        doc["children"] = json!(
            children
                .items
                .iter()
                .map(|c| json!({"id": c.id, "name": c.name, "status": c.status}))
                .collect::<Vec<_>>()
        );
        doc["more_children"] = json!(children.next.is_some());
        doc["earlier_runs"] = serde_json::to_value(&runs)
            .map_err(|e| Fail::failed(format!("cannot encode the runs: {e}")))?;
        doc["warnings"] = json!(long_history.iter().collect::<Vec<_>>());
        render::json(&doc)?;
        return Ok(ExitCode::SUCCESS);
    }
    let line = |label: &str, value: String| println!("{label:<10} {value}");
    line("id", summary.id.to_string());
    line("workflow", format!("{} v{}", summary.name, summary.version));
    line("status", summary.status.to_string());
    if !summary.tags.is_empty() {
        line("tags", render::tags(&summary.tags));
    }
    if summary.run > 1 {
        let first = history.as_ref().and_then(|h| h.first());
        line(
            "run",
            format!(
                "{} ({}; loom inspect {id} --run R shows run R)",
                summary.run,
                run_origin(summary.run, first)
            ),
        );
        let skipped = runs.len().saturating_sub(RUNS_SHOWN);
        if skipped > 0 {
            line("earlier", format!("... {skipped} runs before these"));
        }
        for r in runs.iter().skip(skipped) {
            line(
                "earlier",
                format!(
                    "run {}: {} to {}, {} events",
                    r.run,
                    render::time(r.started_at),
                    render::time(r.ended_at),
                    r.events
                ),
            );
        }
    }
    if let Some(parent) = &summary.parent {
        line("parent", parent.to_string());
    }
    for c in &children.items {
        line("child", format!("{} ({}, {})", c.id, c.name, c.status));
    }
    if children.next.is_some() {
        line(
            "child",
            format!("... more than {CHILDREN_SHOWN}: loom list --parent {id}"),
        );
    }
    if let Some(reason) = &summary.pause_reason {
        line("paused", reason.clone());
    }
    line("created", render::time(summary.created_at));
    line("updated", render::time(summary.updated_at));
    if let Some(t) = summary.closed_at {
        line("ended", render::time(t));
    }
    line("input", render::payload(&summary.input, 200));
    if let Some(p) = &summary.progress {
        line("state", render::payload(&p.state, 200));
        if let Some(step) = &p.current_step {
            line("step", step.clone());
        }
    }
    if let Some(o) = &summary.output {
        line("output", render::payload(o, 200));
    }
    if let Some(f) = &summary.failure {
        line("error", f.to_string());
    }
    line("events", summary.last_seq.get().to_string());
    if let Some(w) = &long_history {
        line("warning", w.clone());
    }
    if let Some(p) = summary
        .progress
        .as_ref()
        .filter(|_| !summary.status.is_terminal())
    {
        for a in &p.pending_activities {
            line(
                "waiting",
                format!(
                    "activity {} ({}), {} attempt(s) so far",
                    a.name, a.id, a.attempts
                ),
            );
        }
        for t in &p.pending_timers {
            line(
                "waiting",
                format!("timer {} until {}", t.id, render::time(t.fire_at)),
            );
        }
        for s in &p.awaiting_signals {
            line("waiting", format!("signal {s:?}"));
        }
        for c in &p.pending_children {
            line(
                "waiting",
                format!(
                    "child {} ({}), parent-close policy {}",
                    c.workflow_id,
                    c.name,
                    c.parent_close.as_str()
                ),
            );
        }
    }
    for t in &tasks {
        line("task", task_line(t));
    }
    if !summary.status.is_terminal() && !tasks.iter().any(|t| t.activity_id.is_none()) {
        line(
            "task",
            format!("no workflow task: it runs again after loom resume {id}"),
        );
    }
    if let Some(h) = history.filter(|_| events) {
        println!();
        print_events(&h);
    }
    Ok(ExitCode::SUCCESS)
}

async fn stats(op: Operator, json: bool) -> Result<ExitCode, Fail> {
    let s = match &op {
        Operator::Local(c) => c.storage().stats().await.map_err(Fail::from_storage)?,
        Operator::Remote(r) => r.stats().await?,
    };
    let oldest_ready_age = s.oldest_ready_at.map(|t| s.at.saturating_duration_since(t));
    let (health, reason) = crate::observe::verdict(&s);
    if json {
        let mut doc = serde_json::to_value(&s).map_err(|e| Fail::failed(e.to_string()))?;
        doc["oldest_ready_age_ms"] = json!(oldest_ready_age.map(|d| d.as_millis() as u64));
        doc["verdict"] = json!({ "health": health, "reason": reason });
        render::json(&doc)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{health}: {reason}");
    let mut t = render::table(&["WORKFLOWS", "COUNT"]);
    for status in WorkflowStatus::ALL {
        t.add_row(vec![
            status.to_string(),
            s.workflows.get(&status).copied().unwrap_or(0).to_string(),
        ]);
    }
    println!("{t}");
    println!("events                  {}", s.events);
    println!(
        "workflow tasks ready    {}  running {}",
        s.workflow_tasks_ready, s.workflow_tasks_running
    );
    println!(
        "activity tasks ready    {}  running {}  waiting to retry {}",
        s.activity_tasks_ready, s.activity_tasks_running, s.activity_tasks_waiting
    );
    println!("timers and messages due later  {}", s.messages_waiting);
    if let Some(age) = oldest_ready_age {
        println!("oldest ready task       waiting {}", render::duration(age));
    }
    if let Some(t) = s.next_due_at {
        println!("next due                {}", render::time(t));
    }
    Ok(ExitCode::SUCCESS)
}

/// The options of `loom worker`.
struct WorkerArgs {
    /// The database, as shown to people.
    db: String,
    workers: usize,
    poll_interval: f64,
    pause_retry: Duration,
    exit_when_idle: bool,
    /// Where to serve metrics and health checks, if anywhere.
    metrics: Option<std::net::SocketAddr>,
    /// How log lines are written.
    log_format: crate::LogFormat,
    /// Where to export traces, if `--otlp` says.
    otlp: Option<String>,
    /// Where to serve the dashboard and the API, and the token they need, if `--http` says.
    http: Option<(std::net::SocketAddr, Option<String>)>,
    /// Stop, as on SIGTERM, when standard input closes (`--bench`).
    stop_at_end_of_input: bool,
}

/// The registered types, for the worker's start-up line: each workflow type with its
/// versions, then the activities.
fn registered(registry: &Registry) -> String {
    let workflows: Vec<String> = registry
        .workflow_names()
        .map(|n| {
            let versions: Vec<String> = registry
                .workflow_versions(n)
                .iter()
                .map(|v| format!("v{v}"))
                .collect();
            format!("{n} {}", versions.join("+"))
        })
        .collect();
    let activities: Vec<&str> = registry.activity_names().collect();
    format!(
        "workflows {}; activities {}",
        workflows.join(", "),
        activities.join(", ")
    )
}

async fn worker(
    store: Arc<dyn Storage>,
    registry: Registry,
    args: WorkerArgs,
    json: bool,
) -> Result<ExitCode, Fail> {
    let WorkerArgs {
        db,
        workers,
        poll_interval,
        pause_retry,
        exit_when_idle,
        metrics: metrics_addr,
        log_format,
        otlp,
        http,
        stop_at_end_of_input,
    } = args;
    if !(poll_interval.is_finite() && poll_interval > 0.0) {
        return Err(Fail::usage(
            "--poll-interval must be a positive number of seconds",
        ));
    }
    let terminal = std::io::stderr().is_terminal();
    let live = !json && terminal && log_format == crate::LogFormat::Text;
    let worker_id = WorkerConfig::default().id;
    let otel = if crate::otel::wanted(otlp.as_deref()) {
        Some(crate::otel::Otel::start(otlp.as_deref(), &worker_id).map_err(Fail::usage)?)
    } else {
        None
    };
    {
        use tracing_subscriber::Layer;
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;
        let mut layers: Vec<Boxed> = Vec::new();
        if !live {
            // Plain logs for files and pipes (colour only on a terminal), or JSON lines
            // carrying the fields of the task they concern; RUST_LOG refines them.
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,loom=info"));
            let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
            layers.push(match log_format {
                crate::LogFormat::Text => logs.with_ansi(terminal).with_filter(filter).boxed(),
                crate::LogFormat::Json => logs
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .event_format(crate::logs::JsonLines)
                    .with_filter(filter)
                    .boxed(),
            });
        }
        if let Some(otel) = &otel {
            layers.push(otel.layer());
        }
        if !layers.is_empty() {
            let _ = tracing_subscriber::registry().with(layers).try_init();
        }
    }
    // The worker's own lines for people: plain, or log lines like every other under JSON.
    let say = |line: String| match log_format {
        crate::LogFormat::Text => eprintln!("{line}"),
        crate::LogFormat::Json => tracing::info!(target: "loom::worker", "{line}"),
    };
    let telemetry = metrics_addr.map(|_| Arc::new(loom_worker::Telemetry::new()));
    let config = WorkerConfig {
        workflow_concurrency: workers.max(1),
        activity_concurrency: workers.max(1) * 4,
        poll_interval: Duration::from_secs_f64(poll_interval),
        pause_retry,
        telemetry: telemetry.clone(),
        id: worker_id,
        ..WorkerConfig::default()
    };
    if let (Some(addr), Some(telemetry)) = (metrics_addr, telemetry) {
        let bound = crate::observe::serve(addr, telemetry, store.clone())
            .await
            .map_err(|e| Fail::usage(format!("--metrics {addr}: cannot listen there: {e}")))?;
        if !json {
            say(format!(
                "Metrics on http://{bound}/metrics; health on /livez and /readyz."
            ));
        }
    }
    if let Some((addr, token)) = http {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Fail::usage(format!("--http {addr}: cannot listen there: {e}")))?;
        let bound = listener
            .local_addr()
            .map_err(|e| Fail::usage(format!("--http {addr}: {e}")))?;
        let service =
            loom_server::Service::new(store.clone(), Arc::new(registry.clone())).with_token(token);
        tokio::spawn(async move {
            if let Err(e) = service.serve(listener, std::future::pending()).await {
                tracing::error!(error = %e, "the dashboard stopped");
            }
        });
        if !json {
            say(format!(
                "Dashboard on http://{bound}/, API on http://{bound}/api/v1."
            ));
        }
    }
    if !json {
        say(format!(
            "Worker on {db}: {}; {} workflow task slots, {} activity slots; polling every {}, a paused workflow retried after {}.",
            registered(&registry),
            config.workflow_concurrency,
            config.activity_concurrency,
            render::duration(config.poll_interval),
            render::duration(pause_retry),
        ));
    }
    let worker = Worker::with_config(store, registry, config);
    let metrics = worker.metrics();
    let started = Instant::now();
    let progress = live.then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let ticker = progress.clone().map(|bar| {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            loop {
                let m = metrics.snapshot();
                bar.set_message(format!(
                    "workflow tasks {} · finished {} · activities {} ok, {} failed · paused {} · running {}",
                    m.workflow_tasks, m.workflows_finished, m.activities_completed, m.activities_failed,
                    m.workflow_tasks_paused, m.running
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    let report = if exit_when_idle {
        worker.run_until_idle(Duration::from_secs(1)).await
    } else {
        worker
            .run(async move {
                if stop_at_end_of_input {
                    tokio::select! {
                        () = loom_worker::shutdown_signal() => {}
                        () = end_of_input() => {}
                    }
                } else {
                    loom_worker::shutdown_signal().await;
                }
            })
            .await
    };
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let elapsed = started.elapsed();
    // The spans buffered go out whatever the run's end.
    if let Some(otel) = otel {
        otel.shutdown();
    }
    let report = report.map_err(|e| Fail::usage(e.to_string()))?;
    if json {
        render::json(&json!({ "elapsed_ms": elapsed.as_millis() as u64, "metrics": report }))?;
    } else {
        say(format!(
            "Worker stopped after {}: {} workflow tasks, {} workflows finished, {} activities completed, {} attempts failed, {} tasks paused.",
            render::duration(elapsed),
            report.workflow_tasks,
            report.workflows_finished,
            report.activities_completed,
            report.activities_failed,
            report.workflow_tasks_paused
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves when standard input reaches its end (or cannot be read), read on a thread of its
/// own.
async fn end_of_input() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = tx.send(());
    });
    let _ = rx.await;
}

async fn demo(
    store: Arc<dyn Storage>,
    registry: Registry,
    url: &DbUrl,
    orders: usize,
    json: bool,
) -> Result<ExitCode, Fail> {
    use crate::examples::{
        Approval, FanOut, FastestQuote, FlakyCharge, Greeting, OrderProcessing, OrderSaga,
        Reminder, Subscription,
    };
    use loom_core::Workflow;

    let config = WorkerConfig {
        poll_interval: Duration::from_millis(100),
        ..WorkerConfig::default()
    };
    let worker = Worker::with_config(store.clone(), registry.clone(), config);
    let client = worker.client();
    let run = format!("demo-{}", SystemClock.now().as_millis());
    let scale = orders.div_ceil(4).max(1);
    let mut ids: Vec<(String, WorkflowId)> = Vec::new();
    let started = Instant::now();
    let start = |name: &'static str, n: usize, input: serde_json::Value| {
        let client = client.clone();
        let registry = registry.clone();
        let id = WorkflowId::new(format!("{run}-{}-{n}", name.to_lowercase()));
        async move {
            client
                .start_by_name(
                    &registry,
                    name,
                    Payload::from_json(input),
                    StartOptions::id(id),
                )
                .await
                .map(|id| (name.to_owned(), id))
                .map_err(Fail::from_client)
        }
    };
    for n in 0..orders {
        let order_id = if n == orders - 1 && orders > 1 {
            format!("declined-{n}")
        } else {
            format!("{n:04}")
        };
        ids.push(
            start(
                OrderProcessing::NAME,
                n,
                json!({"order_id": order_id, "customer_email": format!("customer{n}@example.com")}),
            )
            .await?,
        );
    }
    for n in 0..scale {
        ids.push(start(Greeting::NAME, n, json!({"name": format!("guest {n}")})).await?);
        ids.push(start(FlakyCharge::NAME, n, json!({"fail_times": 2})).await?);
        ids.push(start(FanOut::NAME, n, json!({"n": 10})).await?);
        ids.push(start(Reminder::NAME, n, json!({"seconds": 1})).await?);
    }
    // A saga that ships through its child workflow, and one whose shipment fails and is
    // compensated.
    ids.push(
        start(
            OrderSaga::NAME,
            0,
            json!({"order_id": format!("{run}-a"), "warehouse": "north", "courier_wait_secs": 1}),
        )
        .await?,
    );
    ids.push(
        start(
            OrderSaga::NAME,
            1,
            json!({"order_id": format!("{run}-b"), "warehouse": "empty"}),
        )
        .await?,
    );
    ids.push(start(FastestQuote::NAME, 0, json!({"item": "lamp"})).await?);
    // Eight months of billing, four to a run: the chain of runs ends on its third.
    ids.push(
        start(
            Subscription::NAME,
            0,
            json!({"customer": "ada", "months": 8, "months_per_run": 4, "month_ms": 100}),
        )
        .await?,
    );
    let approved = start(
        Approval::NAME,
        0,
        json!({"request_id": "budget-2027", "timeout_secs": 30}),
    )
    .await?;
    let unanswered = start(
        Approval::NAME,
        1,
        json!({"request_id": "late-request", "timeout_secs": 1}),
    )
    .await?;
    client
        .signal(
            &approved.1,
            "approve",
            Payload::from_json(json!({"approved": true, "by": "ada"})),
        )
        .await
        .map_err(Fail::from_client)?;
    ids.push(approved);
    ids.push(unanswered);

    let total = ids.len() as u64;
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40} {pos}/{len} workflows finished · {elapsed} · {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let running = {
        let worker = worker.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            worker
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        (stop, handle)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut summaries: BTreeMap<WorkflowId, WorkflowSummary> = BTreeMap::new();
    loop {
        let mut done = 0;
        for (_, id) in &ids {
            let s = store.describe(id).await.map_err(Fail::from_storage)?;
            if s.status.is_terminal() {
                done += 1;
            }
            summaries.insert(id.clone(), s);
        }
        if let Some(bar) = &bar {
            let m = worker.metrics().snapshot();
            bar.set_position(done);
            bar.set_message(format!(
                "{} activities, {} retried",
                m.activities_completed, m.activities_failed
            ));
        }
        if done == total {
            break;
        }
        if Instant::now() > deadline {
            return Err(Fail::failed(format!(
                "the demo did not finish within two minutes ({done} of {total} workflows ended)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let _ = running.0.send(());
    let metrics = match running.1.await {
        Ok(Ok(m)) => m,
        _ => worker.metrics().snapshot(),
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    // What happened, read back from the histories.
    let mut timers = 0;
    let mut signals = 0;
    let mut by_type: BTreeMap<String, (usize, Option<String>)> = BTreeMap::new();
    for (name, id) in &ids {
        let history = store
            .load_history(id, loom_core::Seq::ZERO)
            .await
            .map_err(Fail::from_storage)?;
        timers += history
            .iter()
            .filter(|e| matches!(e.kind, EventKind::TimerFired { .. }))
            .count();
        signals += history
            .iter()
            .filter(|e| matches!(e.kind, EventKind::SignalReceived { .. }))
            .count();
        let entry = by_type.entry(name.clone()).or_default();
        entry.0 += 1;
        if let Some(out) = summaries.get(id).and_then(|s| s.output.as_ref()) {
            entry.1.get_or_insert_with(|| render::payload(out, 60));
        }
    }
    let mut children = 0;
    for (name, id) in &ids {
        if name == OrderSaga::NAME {
            let query = ListQuery {
                parent: Some(id.clone()),
                ..ListQuery::default()
            };
            children += store
                .list(&query)
                .await
                .map_err(Fail::from_storage)?
                .items
                .len();
        }
    }
    let continued: u64 = summaries.values().map(|s| u64::from(s.run - 1)).sum();
    let count = |st: WorkflowStatus| summaries.values().filter(|s| s.status == st).count();
    let (completed, failed, cancelled) = (
        count(WorkflowStatus::Completed),
        count(WorkflowStatus::Failed),
        count(WorkflowStatus::Cancelled),
    );
    if json {
        render::json(&json!({
            "db": url.display(),
            "workflows": total,
            "child_workflows": children,
            "runs_continued_as_new": continued,
            "completed": completed,
            "failed": failed,
            "cancelled": cancelled,
            "elapsed_ms": elapsed.as_millis() as u64,
            "activity_attempts_failed_and_retried": metrics.activities_failed,
            "timers_fired": timers,
            "signals_received": signals,
            "ids": ids.iter().map(|(_, id)| id).collect::<Vec<_>>(),
        }))?;
    } else {
        println!(
            "Ran {total} workflows in {} on {}: {completed} completed, {failed} failed, {cancelled} cancelled \
             (and {children} child workflows they started).",
            render::duration(elapsed),
            url.display()
        );
        println!(
            "Along the way: {} activity attempts failed and were retried with backoff, {timers} durable timers fired, {signals} signal(s) received, {continued} run(s) continued as new.",
            metrics.activities_failed
        );
        let mut t = render::table(&["WORKFLOW", "STARTED", "A RESULT"]);
        for (name, (n, example)) in &by_type {
            t.add_row(vec![
                name.clone(),
                n.to_string(),
                example.clone().unwrap_or_default(),
            ]);
        }
        println!("{t}");
        let sample = ids
            .first()
            .map(|(_, id)| id.to_string())
            .unwrap_or_default();
        println!("Look closer: loom list · loom inspect {sample} --events · loom stats");
    }
    Ok(if failed == 0 && cancelled == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_line_says_what_holds_a_task_up() {
        let retry = TaskState {
            task: "charge".into(),
            activity_id: Some(2),
            attempt: Some(3),
            state: "waiting",
            at: Some(loom_core::Timestamp::from_millis(0)),
            waited_ms: None,
            deliveries: 0,
            last_failure: Some("attempt 2: network: reset".into()),
        };
        let line = task_line(&retry);
        assert!(
            line.starts_with("activity charge (activity#2), attempt 3: due at "),
            "{line}"
        );
        assert!(
            line.ends_with("; last failure attempt 2: network: reset"),
            "{line}"
        );
        let stuck = TaskState {
            task: "workflow_task".into(),
            activity_id: None,
            attempt: None,
            state: "ready",
            at: Some(loom_core::Timestamp::from_millis(0)),
            waited_ms: Some(90_000),
            deliveries: 4,
            last_failure: None,
        };
        let line = task_line(&stuck);
        assert!(line.starts_with("workflow task: ready for "), "{line}");
        assert!(line.contains("no worker has claimed it"), "{line}");
        assert!(line.ends_with("handed out 4 times"), "{line}");
    }
}
