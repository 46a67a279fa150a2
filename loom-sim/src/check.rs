//! The invariants every simulated run must keep, checked over the store after it drained.

use std::collections::BTreeMap;

use loom_core::{Event, EventKind, Seq};
use loom_storage::{ListQuery, Storage, WorkflowStatus};

use crate::workload::{Ledger, ProgramInput, expected};

/// Counts of what a run did, by name, for the summary of many seeds.
pub type Counts = BTreeMap<&'static str, u64>;

/// Checks the drained store against the ledger: every workflow ended exactly once, with the
/// output its program and signals imply (or cancelled or failed, only if a cancel was asked of
/// it or its parent); every earlier run ended by continuing as new, once; histories are
/// numbered without gaps; the summary agrees with the history; every activity result came
/// from an execution, and executions beyond one are explained by faults. Adds what it saw to
/// `counts`; answers the first broken invariant.
pub async fn check_store(
    store: &dyn Storage,
    ledger: &Ledger,
    counts: &mut Counts,
) -> Result<(), String> {
    let all = ListQuery {
        limit: 10_000,
        ..ListQuery::default()
    };
    let summaries = store.list(&all).await.map_err(|e| e.to_string())?.items;
    *counts.entry("workflows").or_default() += summaries.len() as u64;
    *counts.entry("child workflows").or_default() +=
        summaries.iter().filter(|s| s.parent.is_some()).count() as u64;
    for summary in summaries {
        let id = summary.id.clone();
        let fail = |what: String| Err(format!("{id}: {what}"));
        let runs = store.runs(&id).await.map_err(|e| e.to_string())?;
        let mut histories: Vec<Vec<Event>> = Vec::new();
        for r in &runs {
            let earlier = store
                .load_run(&id, r.run)
                .await
                .map_err(|e| e.to_string())?;
            let continued = earlier
                .iter()
                .filter(|e| matches!(e.kind, EventKind::WorkflowContinuedAsNew { .. }))
                .count();
            let last_continues = earlier
                .last()
                .is_some_and(|e| matches!(e.kind, EventKind::WorkflowContinuedAsNew { .. }));
            if continued != 1 || !last_continues {
                return fail(format!(
                    "run {} did not end by continuing as new once",
                    r.run
                ));
            }
            *counts.entry("runs continued as new").or_default() += 1;
            histories.push(earlier);
        }
        let history = store
            .load_history(&id, Seq::ZERO)
            .await
            .map_err(|e| e.to_string())?;
        for (i, e) in history.iter().enumerate() {
            if e.seq != Seq::new(i as u64 + 1) {
                return fail(format!("event {i} is numbered {}", e.seq));
            }
        }
        if summary.last_seq != history.last().map_or(Seq::ZERO, |e| e.seq) {
            return fail("the summary's last event is not the history's".into());
        }
        let ends = history.iter().filter(|e| e.kind.is_terminal()).count();
        if ends != 1 || !history.last().is_some_and(|e| e.kind.is_terminal()) {
            return fail(format!("{ends} endings"));
        }
        histories.push(history);
        let (_, _, program) = started_input(&histories[0]).ok_or("no WorkflowStarted")?;
        // A child's parent may be cancelled: the child is then asked to cancel too, and a
        // parent whose child was cancelled fails with it.
        let cancel_asked = ledger.cancelled.contains(&id)
            || summary
                .parent
                .as_ref()
                .is_some_and(|p| ledger.cancelled.contains(p));
        match summary.status {
            WorkflowStatus::Completed => {
                let out: u64 = summary
                    .output
                    .as_ref()
                    .ok_or("completed without an output")?
                    .decode()
                    .map_err(|e| e.to_string())?;
                if out != expected(&program) {
                    return fail(format!(
                        "output {out}, the program implies {}",
                        expected(&program)
                    ));
                }
            }
            WorkflowStatus::Cancelled | WorkflowStatus::Failed if cancel_asked => {}
            other => return fail(format!("ended {other}: {:?}", summary.failure)),
        }
        for events in &histories {
            let (_, generation, _) = started_input(events).ok_or("a run without a start")?;
            for e in events {
                if let EventKind::ActivityCompleted { activity_id, .. } = &e.kind {
                    *counts.entry("activity results").or_default() += 1;
                    let key = (id.clone(), generation, activity_id.0.get());
                    if ledger.executions.get(&key).copied().unwrap_or(0) == 0 {
                        return fail(format!(
                            "generation {generation}'s {activity_id} has a result but never ran"
                        ));
                    }
                }
            }
        }
    }
    // An activity ran more than once only when a fault explains it.
    for (key, ran) in &ledger.executions {
        let explained = ledger.explained.get(key).copied().unwrap_or(0);
        if *ran > 1 + explained {
            return Err(format!(
                "{} generation {} activity #{} ran {ran} times; only {explained} faults explain running it again",
                key.0, key.1, key.2
            ));
        }
    }
    *counts.entry("activity executions").or_default() += ledger.executions.values().sum::<u64>();
    *counts
        .entry("activity attempts failed by design")
        .or_default() += ledger.failed_attempts;
    *counts.entry("cancel requests").or_default() += ledger.cancelled.len() as u64;
    Ok(())
}

/// The input of a run, from its `WorkflowStarted`.
fn started_input(events: &[Event]) -> Option<ProgramInput> {
    match &events.first()?.kind {
        EventKind::WorkflowStarted { input, .. } => input.decode().ok(),
        _ => None,
    }
}

/// Whether every workflow in the store has ended.
pub async fn all_ended(store: &dyn Storage) -> bool {
    let all = ListQuery {
        limit: 10_000,
        ..ListQuery::default()
    };
    store
        .list(&all)
        .await
        .is_ok_and(|page| page.items.iter().all(|w| w.status.is_terminal()))
}
