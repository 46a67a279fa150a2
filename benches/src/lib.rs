//! Workloads shared by Loom's criterion benchmarks (`cargo bench -p loom-benches`).
//!
//! This crate holds no engine code: only fixtures that build workflows and histories for the
//! benchmarks in `benches/`, so that every benchmark measures the same workload.

use loom_core::{
    Activation, ActivityId, ActivityOptions, Event, EventKind, HISTORY_FORMAT, Payload, Seq,
    Timestamp, Workflow, WorkflowContext, WorkflowError, WorkflowMachine, workflow_type,
};

/// A workflow that runs `input` activities one after another and sums their results.
pub struct Sequential;

impl Workflow for Sequential {
    const NAME: &'static str = "Sequential";
    type Input = u32;
    type State = ();
    type Output = u64;

    async fn run(ctx: WorkflowContext<Self>) -> Result<u64, WorkflowError> {
        let mut sum = 0u64;
        for i in 0..*ctx.input() {
            let input = Payload::encode(&i).map_err(WorkflowError::from)?;
            let v: u64 = ctx
                .activity_by_name("step", input, ActivityOptions::default())
                .await?;
            sum += v;
        }
        Ok(sum)
    }
}

/// The started event of a `Sequential` run of `n` activities.
pub fn started(n: u32) -> Event {
    Event {
        seq: Seq::FIRST,
        at: Timestamp::from_millis(0),
        kind: EventKind::WorkflowStarted {
            traceparent: None,
            tags: Default::default(),
            reset: None,
            attempt: 1,
            retry: None,
            run: 1,
            name: Sequential::NAME.into(),
            version: Sequential::VERSION,
            input: Payload::encode(&n).expect("a u32 encodes"),
            format: HISTORY_FORMAT,
            timeouts: Default::default(),
            parent: None,
        },
    }
}

/// A result message for activity `id`.
pub fn result(id: ActivityId) -> EventKind {
    EventKind::ActivityCompleted {
        activity_id: id,
        attempt: 1,
        result: Payload::encode(&1u64).expect("a u64 encodes"),
    }
}

/// A machine for a `Sequential` run of `n` activities with `history` recorded.
pub fn machine(history: Vec<Event>) -> WorkflowMachine {
    WorkflowMachine::new(workflow_type::<Sequential>(), "bench".into(), history)
        .expect("a well-formed history")
}

/// The complete history of a `Sequential` run of `n` activities: `2n + 2` events.
pub fn finished_history(n: u32) -> Vec<Event> {
    let mut history = vec![started(n)];
    let mut m = machine(history.clone());
    let mut messages = Vec::new();
    for t in 0..=n {
        let d = m
            .activate(
                Activation::new(Timestamp::from_millis(i64::from(t)), u64::from(t))
                    .with_messages(messages),
            )
            .expect("the fixture replays");
        messages = d
            .events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::ActivityScheduled { .. }))
            .map(|e| result(ActivityId(e.seq)))
            .collect();
        history.extend(d.events);
    }
    history
}
