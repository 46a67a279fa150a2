//! A crash test every file backend runs the same way: a second process writes and prints
//! `ack ID` after each acknowledged write, is killed with SIGKILL mid-stream, again and again,
//! and then every acknowledged write must be there whole, and nothing half-written.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loom_core::{Event, EventKind, HISTORY_FORMAT, Payload, Seq, Timestamp, WorkflowId};

use crate::{ClaimRequest, ListQuery, Storage, WorkflowTaskCompletion};

/// Events each written workflow ends with: its start plus one workflow task's ten.
pub const EVENTS_PER_WORKFLOW: usize = 11;

/// The writer process's work: eight concurrent writers, each creating a workflow and then
/// committing a workflow task of ten events (claiming whichever new workflows are ready,
/// its own or another writer's), forever; prints `ack ID` once such a commit is acknowledged.
pub async fn write_acknowledged(store: Arc<dyn Storage>, prefix: &str) -> Result<(), String> {
    let mut handles = Vec::new();
    for writer in 0..8 {
        let store = store.clone();
        let prefix = prefix.to_owned();
        handles.push(tokio::spawn(async move {
            let claim = ClaimRequest::new(format!("writer-{writer}"), 4, Duration::from_secs(60));
            for n in 0u64.. {
                let id = WorkflowId::new(format!("{prefix}-{writer}-{n}"));
                let started = Event {
                    seq: Seq::FIRST,
                    at: Timestamp::from_millis(0),
                    kind: EventKind::WorkflowStarted {
                        traceparent: None,
                        tags: Default::default(),
                        reset: None,
                        attempt: 1,
                        retry: None,
                        run: 1,
                        name: "Probe".into(),
                        version: 1,
                        input: Payload::NULL,
                        format: HISTORY_FORMAT,
                        timeouts: Default::default(),
                        parent: None,
                    },
                };
                store
                    .create_workflow(&id, started)
                    .await
                    .map_err(|e| e.to_string())?;
                let tasks = store
                    .claim_workflow_tasks(&claim)
                    .await
                    .map_err(|e| e.to_string())?;
                for task in tasks {
                    let events = (2..=EVENTS_PER_WORKFLOW as u64)
                        .map(|s| Event {
                            seq: Seq::new(s),
                            at: Timestamp::from_millis(0),
                            kind: EventKind::StepStarted {
                                name: format!("s{s}"),
                            },
                        })
                        .collect();
                    let commit = WorkflowTaskCompletion {
                        next_run: None,
                        lease: task.lease,
                        workflow_id: task.workflow_id.clone(),
                        expected_last_seq: Seq::FIRST,
                        events,
                        consumed: Vec::new(),
                        progress: None,
                        logs: Vec::new(),
                        eager: None,
                        affinity: None,
                    };
                    store
                        .complete_workflow_task(commit)
                        .await
                        .map_err(|e| e.to_string())?;
                    println!("ack {}", task.workflow_id);
                }
            }
            Ok::<(), String>(())
        }));
    }
    for h in handles {
        h.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Runs `rounds` writer processes one after another (`spawn(round)` builds the command;
/// its prefix should be `r{round}`), killing each with SIGKILL after a varying number of
/// acknowledgements. Returns every acknowledged id.
pub fn kill_repeatedly(mut spawn: impl FnMut(usize) -> Command, rounds: usize) -> BTreeSet<String> {
    let mut acked = BTreeSet::new();
    for round in 0..rounds {
        let mut child = spawn(round)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the writer");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let target = 15 + round * 31;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut mine = 0;
        while mine < target {
            assert!(Instant::now() < deadline, "the writer made no progress");
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(id) = line.strip_prefix("ack ") {
                        acked.insert(id.to_owned());
                        mine += 1;
                    }
                }
                _ => break,
            }
        }
        child.kill().expect("SIGKILL");
        // Lines printed before the kill landed are acknowledgements too.
        for line in lines.map_while(Result::ok) {
            if let Some(id) = line.strip_prefix("ack ") {
                acked.insert(id.to_owned());
            }
        }
        child.wait().expect("reap");
    }
    acked
}

/// Every acknowledged workflow has all its events; every workflow present is whole (its
/// start alone, or start and append), and its summary agrees with its history.
pub async fn check_survivors(store: &dyn Storage, acked: &BTreeSet<String>) {
    for id in acked {
        let history = store
            .load_history(&WorkflowId::new(id.clone()), Seq::ZERO)
            .await
            .expect("an acknowledged workflow survives");
        assert_eq!(
            history.len(),
            EVENTS_PER_WORKFLOW,
            "{id}: every acknowledged event survives"
        );
    }
    let all = store
        .list(&ListQuery {
            limit: 100_000,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert!(all.items.len() >= acked.len());
    for s in &all.items {
        let history = store.load_history(&s.id, Seq::ZERO).await.expect("history");
        assert!(
            history.len() == 1 || history.len() == EVENTS_PER_WORKFLOW,
            "{}: a half-written append ({} events)",
            s.id,
            history.len()
        );
        assert_eq!(
            s.last_seq.get() as usize,
            history.len(),
            "{}: summary and history agree",
            s.id
        );
    }
}
