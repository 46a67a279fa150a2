//! `loom replay`: stored histories replayed against this binary's code, the check to run
//! before deploying changed workflow code. One workflow, or every one a filter matches, each
//! as many times as asked (code that is random, such as `tokio::select!`, may disagree only
//! sometimes), several at once.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use loom_core::{DynWorkflow, Event, Registry, ReplayError, WorkflowId, WorkflowMachine};
use loom_storage::{Clock, ListQuery, SystemClock, WorkflowStatus};
use serde_json::json;

use crate::Fail;
use crate::commands::Operator;
use crate::render;

/// What one replay of one history found wrong.
#[derive(Debug)]
struct Problem {
    id: WorkflowId,
    /// Which of the repeated replays (from 1) found it.
    attempt: u32,
    /// The error, for people.
    error: String,
    /// For a non-determinism error: where, what was recorded, what the code did.
    seq: Option<u64>,
    recorded: Option<String>,
    attempted: Option<String>,
}

impl Problem {
    fn json(&self) -> serde_json::Value {
        json!({
            "id": self.id, "attempt": self.attempt, "error": self.error,
            "seq": self.seq, "recorded": self.recorded, "attempted": self.attempted,
        })
    }
}

/// Replays `history` `times` times with the code of `def` (a fresh machine each time, each
/// with other entropy); the first problem, if any.
fn replay_history(
    def: &Arc<dyn DynWorkflow>,
    id: &WorkflowId,
    history: &[Event],
    times: u32,
) -> Option<Problem> {
    for attempt in 1..=times {
        let result = WorkflowMachine::replay_only(
            def.clone(),
            id.clone(),
            history.to_vec(),
            SystemClock.now(),
            u64::from(attempt),
        );
        if let Err(e) = result {
            return Some(problem(id, attempt, &e));
        }
    }
    None
}

fn problem(id: &WorkflowId, attempt: u32, e: &ReplayError) -> Problem {
    let nd = e.nondeterminism();
    Problem {
        id: id.clone(),
        attempt,
        error: e.to_string(),
        seq: nd.map(|n| n.seq.get()),
        recorded: nd.and_then(|n| n.recorded.clone()),
        attempted: nd.and_then(|n| n.attempted.clone()),
    }
}

/// The code that executes a run of version `version` of type `name`, or the problem that this
/// binary has none.
fn code_for(
    registry: &Registry,
    id: &WorkflowId,
    name: &str,
    version: u32,
) -> Result<Arc<dyn DynWorkflow>, Problem> {
    registry
        .workflow_version(name, version)
        .cloned()
        .ok_or_else(|| {
            let versions = registry.workflow_versions(name);
            let error = if versions.is_empty() {
                format!("this binary has no workflow type {name:?}")
            } else {
                let known: Vec<String> = versions.iter().map(u32::to_string).collect();
                format!(
                    "this binary has versions {} of {name:?}, not version {version}: register it beside them",
                    known.join(", ")
                )
            };
            Problem {
                id: id.clone(),
                attempt: 1,
                error,
                seq: None,
                recorded: None,
                attempted: None,
            }
        })
}

/// `loom replay ID [--times N]`.
pub(crate) async fn one(
    op: Operator,
    registry: &Registry,
    id: &WorkflowId,
    times: u32,
    json: bool,
) -> Result<ExitCode, Fail> {
    let summary = op.describe(id).await?;
    let def = code_for(registry, id, &summary.name, summary.version)
        .map_err(|p| Fail::usage(format!("{id}: {}", p.error)))?;
    let history = op.history(id, None).await?;
    let events = history.len();
    let found = replay_history(&def, id, &history, times);
    if json {
        let mut doc = json!({
            "id": id, "deterministic": found.is_none(), "events": events, "times": times,
            "workflow": def.name(), "version": def.version(),
        });
        if let Some(p) = &found {
            doc["error"] = json!(p.error);
            doc["seq"] = json!(p.seq);
            doc["recorded"] = json!(p.recorded);
            doc["attempted"] = json!(p.attempted);
        }
        render::json(&doc)?;
    } else {
        match &found {
            None => println!(
                "{id}: deterministic. {events} events replay cleanly on this binary's {} v{}{}.",
                def.name(),
                def.version(),
                if times > 1 {
                    format!(", {times} times")
                } else {
                    String::new()
                }
            ),
            Some(p) => eprintln!(
                "{}: {id} does not replay on this binary's code{}: {}",
                crate::program(),
                if times > 1 {
                    format!(" (replay {} of {times})", p.attempt)
                } else {
                    String::new()
                },
                p.error
            ),
        }
    }
    Ok(if found.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Which stored histories `loom replay --all` replays.
pub(crate) struct Filter {
    /// These statuses (default: running and paused).
    pub(crate) statuses: Vec<String>,
    /// Only this type.
    pub(crate) name: Option<String>,
    /// Only this version.
    pub(crate) version: Option<u32>,
}

/// `loom replay --all`: every history the filter matches, `parallel` at once, each `times`
/// times; every problem is reported (a mismatch with its position, recorded event and new
/// command), then a count. Exit 1 if any.
pub(crate) async fn all(
    op: Operator,
    registry: &Registry,
    filter: Filter,
    times: u32,
    parallel: usize,
    json: bool,
) -> Result<ExitCode, Fail> {
    let statuses: Vec<WorkflowStatus> = if filter.statuses.is_empty() {
        vec![WorkflowStatus::Running, WorkflowStatus::Paused]
    } else {
        filter
            .statuses
            .iter()
            .map(|s| s.trim().parse().map_err(Fail::usage))
            .collect::<Result<_, _>>()?
    };
    let mut targets: Vec<(WorkflowId, String, u32)> = Vec::new();
    for status in statuses {
        let mut query = ListQuery {
            status: Some(status),
            name: filter.name.clone(),
            version: filter.version,
            limit: 1_000,
            ..ListQuery::default()
        };
        loop {
            let page = op.list(&query).await?;
            targets.extend(page.items.into_iter().map(|s| (s.id, s.name, s.version)));
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
    }
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(targets.len() as u64);
        if let Ok(style) = ProgressStyle::with_template("replaying {pos}/{len} {wide_bar} {eta}") {
            bar.set_style(style);
        }
        bar
    });
    let started = std::time::Instant::now();
    let mut problems: Vec<Problem> = Vec::new();
    let mut running = tokio::task::JoinSet::new();
    let mut queue = targets.iter().cloned();
    let mut events = 0usize;
    loop {
        while running.len() < parallel.max(1) {
            let Some((id, name, version)) = queue.next() else {
                break;
            };
            let def = match code_for(registry, &id, &name, version) {
                Ok(def) => def,
                Err(p) => {
                    report(&p, json, bar.as_ref());
                    problems.push(p);
                    if let Some(bar) = &bar {
                        bar.inc(1);
                    }
                    continue;
                }
            };
            let op = op.clone();
            running.spawn(async move {
                let history = op.history(&id, None).await;
                let history = match history {
                    Ok(h) => h,
                    Err(e) => {
                        let p = Problem {
                            id,
                            attempt: 1,
                            error: format!("its history could not be read: {}", e.message),
                            seq: None,
                            recorded: None,
                            attempted: None,
                        };
                        return (0, Some(p));
                    }
                };
                let n = history.len();
                let found =
                    tokio::task::spawn_blocking(move || replay_history(&def, &id, &history, times))
                        .await
                        .unwrap_or_else(|e| {
                            Some(Problem {
                                id: WorkflowId::new("?"),
                                attempt: 1,
                                error: format!("the replay panicked: {e}"),
                                seq: None,
                                recorded: None,
                                attempted: None,
                            })
                        });
                (n, found)
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (n, found) = joined.map_err(|e| Fail::failed(format!("a replay failed: {e}")))?;
        events += n;
        if let Some(p) = found {
            report(&p, json, bar.as_ref());
            problems.push(p);
        }
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    problems.sort_by(|a, b| a.id.cmp(&b.id));
    let elapsed = started.elapsed();
    if json {
        render::json(&json!({
            "replayed": targets.len(),
            "events": events,
            "times": times,
            "mismatches": problems.len(),
            "problems": problems.iter().map(Problem::json).collect::<Vec<_>>(),
            "elapsed_ms": elapsed.as_millis() as u64,
        }))?;
    } else {
        println!(
            "{} histories ({events} events) replayed {times} time(s) each in {}: {} do not replay on this binary's code.",
            targets.len(),
            render::duration(elapsed),
            problems.len()
        );
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One problem, as it is found, for people (the JSON answer lists them all at the end).
fn report(p: &Problem, json: bool, bar: Option<&ProgressBar>) {
    if json {
        return;
    }
    let line = match (p.seq, &p.recorded, &p.attempted) {
        (Some(seq), recorded, attempted) => format!(
            "{}: at #{seq} the history has {} but the code issued {}",
            p.id,
            recorded.as_deref().unwrap_or("nothing more"),
            attempted.as_deref().unwrap_or("nothing")
        ),
        _ => format!("{}: {}", p.id, p.error),
    };
    match bar {
        Some(bar) => bar.println(line),
        None => println!("{line}"),
    }
}
