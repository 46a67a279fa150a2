//! Loom's moving parts driven by hand: the order workflow of Loom's README, run on
//! `MemoryStorage` by a deliberately naive loop, one workflow task at a time.
//!
//! This is not a worker (loom-worker adds concurrency, leases renewal, a sticky cache, retries
//! with backoff and timeouts); it is the shortest honest path of a workflow task through the
//! crates, for people embedding loom-core in a runtime of their own.
//!
//! Run it with `cargo run -p loom-storage --example by_hand`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use loom_core::{
    Activation, Activity, ActivityContext, ActivityInfo, EventKind, Failure, HISTORY_FORMAT,
    Payload, Registry, Seq, Workflow, WorkflowContext, WorkflowError, WorkflowId, WorkflowMachine,
};
use loom_storage::{
    ActivityTaskCompletion, AfterActivity, ClaimRequest, Clock, MemoryStorage, Storage,
    SystemClock, WorkflowTaskCompletion,
};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Order {
    order_id: String,
    customer_email: String,
}

#[derive(Default, Serialize, Deserialize)]
struct OrderState {
    payment_confirmed: bool,
    email_sent: bool,
}

struct ProcessPayment;
impl Activity for ProcessPayment {
    const NAME: &'static str = "process_payment";
    type Input = String;
    type Output = bool;
    async fn run(&self, _: ActivityContext, order_id: String) -> Result<bool, Failure> {
        Ok(!order_id.is_empty())
    }
}

struct SendConfirmation;
impl Activity for SendConfirmation {
    const NAME: &'static str = "send_confirmation";
    type Input = String;
    type Output = ();
    async fn run(&self, _: ActivityContext, _email: String) -> Result<(), Failure> {
        Ok(())
    }
}

struct OrderProcessing;
impl Workflow for OrderProcessing {
    const NAME: &'static str = "OrderProcessing";
    type Input = Order;
    type State = OrderState;
    type Output = String;

    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let paid = ctx
            .step(
                "payment",
                ctx.activity::<ProcessPayment>(ctx.input().order_id.clone()),
            )
            .await?;
        ctx.update_state(|s| s.payment_confirmed = paid)?;
        if !paid {
            return Ok("payment declined".into());
        }
        ctx.activity::<SendConfirmation>(ctx.input().customer_email.clone())
            .await?;
        ctx.update_state(|s| s.email_sent = true)?;
        ctx.logger().info("order processed");
        Ok(format!("order {} complete", ctx.input().order_id))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut registry = Registry::new();
    registry
        .add_workflow::<OrderProcessing>()?
        .add_activity(ProcessPayment)?
        .add_activity(SendConfirmation)?;
    let store = MemoryStorage::new();
    let clock = SystemClock;

    // Start: the client writes the WorkflowStarted event; the store makes a task ready.
    let id = WorkflowId::new("order-42");
    let input = Payload::encode(&Order {
        order_id: "42".into(),
        customer_email: "ada@example.com".into(),
    })?;
    let started = loom_core::Event {
        seq: Seq::FIRST,
        at: clock.now(),
        kind: EventKind::WorkflowStarted {
            traceparent: None,
            tags: Default::default(),
            reset: None,
            attempt: 1,
            retry: None,
            run: 1,
            name: OrderProcessing::NAME.into(),
            version: OrderProcessing::VERSION,
            input,
            format: HISTORY_FORMAT,
            timeouts: Default::default(),
            parent: None,
        },
    };
    store.create_workflow(&id, started).await?;

    let claim = ClaimRequest::new("by-hand", 16, Duration::from_secs(30));
    let mut entropy = 0u64;
    for _round in 0..100 {
        // Workflow tasks: load the history, replay, decide, commit in one step.
        for task in store.claim_workflow_tasks(&claim).await? {
            let Some(def) = registry.workflow(&task.workflow_name) else {
                return Err(format!("unknown workflow {}", task.workflow_name).into());
            };
            let history = store.load_history(&task.workflow_id, Seq::ZERO).await?;
            let mut machine = WorkflowMachine::new(def.clone(), task.workflow_id.clone(), history)?;
            entropy += 1;
            let messages = task.messages.iter().map(|m| m.kind.clone());
            // The task's time is the store's clock at the claim.
            let decision = machine
                .activate(Activation::new(task.claimed_at, entropy).with_messages(messages))?;
            for e in &decision.events {
                println!("  {} {}", e.seq, e.kind);
            }
            store
                .complete_workflow_task(WorkflowTaskCompletion {
                    next_run: None,
                    lease: task.lease,
                    workflow_id: task.workflow_id,
                    expected_last_seq: task.last_seq,
                    events: decision.events,
                    consumed: task.messages.iter().map(|m| m.id).collect(),
                    progress: Some(machine.progress()),
                    logs: decision.logs,
                    eager: None,
                    affinity: None,
                })
                .await?;
        }
        // Activity tasks: run one attempt each and report the result as a message.
        for task in store.claim_activity_tasks(&claim).await? {
            let Some(activity) = registry.activity(&task.name) else {
                return Err(format!("unknown activity {}", task.name).into());
            };
            let ctx = ActivityContext::new(
                ActivityInfo {
                    workflow_id: task.workflow_id.clone(),
                    activity_id: task.activity_id,
                    name: task.name.clone(),
                    attempt: task.attempt,
                },
                None,
            );
            let result = match Arc::clone(activity).run(ctx, task.input.clone()).await {
                Ok(result) => EventKind::ActivityCompleted {
                    activity_id: task.activity_id,
                    attempt: task.attempt,
                    result,
                },
                Err(failure) => EventKind::ActivityFailed {
                    activity_id: task.activity_id,
                    attempt: task.attempt,
                    failure,
                    retry_at: None,
                },
            };
            store
                .complete_activity_task(ActivityTaskCompletion {
                    lease: task.lease,
                    workflow_id: task.workflow_id.clone(),
                    result,
                    retry_after: None,
                    then: AfterActivity::Nothing,
                })
                .await?;
        }
        let summary = store.describe(&id).await?;
        if summary.status.is_terminal() {
            println!(
                "{id}: {} -> {}",
                summary.status,
                summary.output.map(|o| o.to_string()).unwrap_or_default()
            );
            println!(
                "state: {}",
                summary
                    .progress
                    .map(|p| p.state.to_string())
                    .unwrap_or_default()
            );
            for line in store.logs(&id).await? {
                println!("log: {}", line.message);
            }
            return Ok(ExitCode::SUCCESS);
        }
    }
    Err("the workflow did not finish in 100 rounds".into())
}
