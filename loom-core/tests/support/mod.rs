//! A hand-cranked runtime for loom-core's tests: keeps a history, feeds activations, and can
//! "crash" (drop the machine so the next activation replays from the history).

#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by several test crates, each of which uses part of it"
)]

use std::sync::Arc;

use loom_core::{
    Activation, ActivityId, Decision, DynWorkflow, Event, EventKind, HISTORY_FORMAT, Payload,
    ReplayError, Seq, TimerId, Timestamp, Workflow, WorkflowId, WorkflowMachine, workflow_type,
};
use serde::Serialize;

pub struct Driver {
    pub def: Arc<dyn DynWorkflow>,
    pub id: WorkflowId,
    pub history: Vec<Event>,
    pub machine: Option<WorkflowMachine>,
    pub now: Timestamp,
    pub entropy: u64,
}

pub fn started_event(name: &str, version: u32, input: Payload) -> Event {
    Event {
        seq: Seq::FIRST,
        at: Timestamp::from_millis(1_000),
        kind: EventKind::WorkflowStarted {
            traceparent: None,
            tags: Default::default(),
            reset: None,
            attempt: 1,
            retry: None,
            run: 1,
            name: name.into(),
            version,
            input,
            format: HISTORY_FORMAT,
            timeouts: Default::default(),
            parent: None,
        },
    }
}

impl Driver {
    pub fn start<W: Workflow>(input: &W::Input) -> Self {
        let input = Payload::encode(input).expect("encode input");
        Self::with_history(
            workflow_type::<W>(),
            vec![started_event(W::NAME, W::VERSION, input)],
        )
    }

    pub fn with_history(def: Arc<dyn DynWorkflow>, history: Vec<Event>) -> Self {
        Driver {
            def,
            id: WorkflowId::new("wf-1"),
            history,
            machine: None,
            now: Timestamp::from_millis(1_000),
            entropy: 1,
        }
    }

    /// One workflow task with these messages; the new events are appended to the history.
    pub fn step(&mut self, messages: Vec<EventKind>) -> Result<Decision, ReplayError> {
        if self.machine.is_none() {
            self.machine = Some(WorkflowMachine::new(
                self.def.clone(),
                self.id.clone(),
                self.history.clone(),
            )?);
        }
        let machine = self.machine.as_mut().expect("machine");
        self.entropy += 1;
        let result = machine.activate(Activation {
            now: self.now,
            entropy: self.entropy,
            messages,
        });
        match &result {
            Ok(d) => self.history.extend(d.events.iter().cloned()),
            Err(_) => self.machine = None,
        }
        result
    }

    pub fn ok(&mut self, messages: Vec<EventKind>) -> Decision {
        self.step(messages).expect("the task decides")
    }

    /// One task whose decision the test does not look at (the history has it).
    pub fn feed(&mut self, messages: Vec<EventKind>) {
        self.ok(messages).events.len();
    }

    pub fn crash(&mut self) {
        self.machine = None;
    }

    pub fn advance(&mut self, ms: i64) {
        self.now = Timestamp::from_millis(self.now.as_millis() + ms);
    }

    pub fn machine(&self) -> &WorkflowMachine {
        self.machine.as_ref().expect("machine")
    }

    /// The id of the `n`th (0-based) scheduled activity in the history.
    pub fn activity(&self, n: usize) -> ActivityId {
        self.history
            .iter()
            .filter(|e| matches!(e.kind, EventKind::ActivityScheduled { .. }))
            .nth(n)
            .map(|e| ActivityId(e.seq))
            .expect("that many activities")
    }

    /// The id of the `n`th (0-based) timer in the history.
    pub fn timer(&self, n: usize) -> TimerId {
        self.history
            .iter()
            .filter(|e| matches!(e.kind, EventKind::TimerScheduled { .. }))
            .nth(n)
            .map(|e| TimerId(e.seq))
            .expect("that many timers")
    }

    pub fn kinds(&self) -> Vec<&'static str> {
        self.history.iter().map(|e| e.kind.type_name()).collect()
    }
}

pub fn completed(id: ActivityId, result: impl Serialize) -> EventKind {
    EventKind::ActivityCompleted {
        activity_id: id,
        attempt: 1,
        result: Payload::encode(&result).expect("encode"),
    }
}

pub fn fired(id: TimerId) -> EventKind {
    EventKind::TimerFired { timer_id: id }
}

pub fn signal(name: &str, payload: impl Serialize) -> EventKind {
    EventKind::SignalReceived {
        name: name.into(),
        payload: Payload::encode(&payload).expect("encode"),
    }
}

pub fn cancel() -> EventKind {
    EventKind::CancelRequested {
        reason: Some("test".into()),
    }
}
