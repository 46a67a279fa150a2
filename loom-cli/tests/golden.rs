//! Golden histories: histories written by earlier builds of Loom, kept in `tests/golden/`,
//! must replay on this build's example workflows forever, to the same output. A failure here
//! means a change broke running workflows: version it (`Workflow::VERSION`, `ctx.patched`,
//! `HISTORY_FORMAT`) instead of editing the fixture.

use loom_core::{Activation, Event, Outcome, Payload, Timestamp, WorkflowMachine};
use serde::Deserialize;

/// A history and how it ended: `output` for a completed run, `outcome` for any other end,
/// neither for a run that was reset while open (its code is not run again, so it has no
/// outcome of its own).
#[derive(Deserialize)]
struct Golden {
    workflow_id: String,
    events: Vec<Event>,
    #[serde(default)]
    output: Option<Payload>,
    #[serde(default)]
    outcome: Option<Outcome>,
}

/// Event kinds that a golden history must hold, so that a change to how one is encoded or
/// replayed is caught. Each kind added to the history format joins this list with a golden
/// history written by a real run.
const COVERED: &[&str] = &[
    "WorkflowStarted",
    "WorkflowCompleted",
    "ActivityScheduled",
    "ActivityCompleted",
    "ActivityFailed",
    "TimerScheduled",
    "SignalReceived",
    "StateSet",
    "StepStarted",
    "StepCompleted",
    "ChildWorkflowScheduled",
    "ChildWorkflowCompleted",
    "ChildWorkflowFailed",
    "ChildWorkflowCancelled",
    "TimerCancelled",
    "ActivityCancelled",
    "WorkflowTerminated",
    "WorkflowTimedOut",
    "WorkflowContinuedAsNew",
    "WorkflowReset",
    "TagSet",
    "PatchMarked",
];

#[test]
fn every_golden_history_replays_to_its_recorded_output() {
    let registry = loom_cli::examples::registry();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut checked = 0;
    let mut seen = std::collections::BTreeSet::new();
    let mut child_started = false;
    let mut continued_run = false;
    let mut reset_run = false;
    let mut traced = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("the golden directory")
        .map(|e| e.expect("an entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).expect("read");
        let golden: Golden = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not a golden history: {e}", path.display()));
        seen.extend(golden.events.iter().map(|e| e.kind.type_name()));
        let Some(loom_core::EventKind::WorkflowStarted {
            name,
            version,
            parent,
            run,
            reset,
            ..
        }) = golden.events.first().map(|e| &e.kind)
        else {
            panic!("{}: the first event is not WorkflowStarted", path.display());
        };
        child_started |= parent.is_some();
        continued_run |= *run > 1;
        reset_run |= reset.is_some();
        // The run's trace, and every activity and child scheduled under it, decode as
        // written.
        if let Some(loom_core::EventKind::WorkflowStarted {
            traceparent: Some(tp),
            ..
        }) = golden.events.first().map(|e| &e.kind)
        {
            traced += 1;
            for e in &golden.events {
                let carried = match &e.kind {
                    loom_core::EventKind::ActivityScheduled { options, .. } => {
                        options.traceparent.as_ref()
                    }
                    loom_core::EventKind::ChildWorkflowScheduled { traceparent, .. } => {
                        traceparent.as_ref()
                    }
                    _ => continue,
                };
                assert_eq!(
                    carried,
                    Some(tp),
                    "{}: {} lost the trace",
                    path.display(),
                    e.seq
                );
            }
        }
        let was_reset = golden
            .events
            .last()
            .is_some_and(|e| matches!(e.kind, loom_core::EventKind::WorkflowReset { .. }));
        let def = registry
            .workflow_version(name, *version)
            .unwrap_or_else(|| {
                panic!(
                    "{}: version {version} of workflow {name} is no longer registered",
                    path.display()
                )
            })
            .clone();
        let mut machine =
            WorkflowMachine::new(def, golden.workflow_id.clone().into(), golden.events)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let decision = machine
            .activate(Activation::new(Timestamp::from_millis(0), 0))
            .unwrap_or_else(|e| panic!("{} no longer replays: {e}", path.display()));
        assert!(
            decision.events.is_empty(),
            "{}: replay added events",
            path.display()
        );
        let expected = match (golden.outcome, golden.output) {
            (Some(outcome), _) => Some(outcome),
            (None, Some(output)) => Some(Outcome::Completed { output }),
            (None, None) if was_reset => None,
            (None, None) => panic!("{}: neither an output nor an outcome", path.display()),
        };
        assert_eq!(
            machine.outcome(),
            expected,
            "{}: a different ending",
            path.display()
        );
        checked += 1;
    }
    assert!(
        checked >= 12,
        "expected the golden histories, found {checked}"
    );
    let missing: Vec<_> = COVERED.iter().filter(|k| !seen.contains(*k)).collect();
    assert!(missing.is_empty(), "no golden history holds {missing:?}");
    assert!(child_started, "no golden history is a child's");
    assert!(traced > 0, "no golden history carries a trace");
    assert!(
        continued_run,
        "no golden history is of a run that continued another"
    );
    assert!(reset_run, "no golden history is of a run begun by a reset");
}
