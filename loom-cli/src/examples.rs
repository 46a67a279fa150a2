//! The example workflows compiled into `loom`, each a small model for writing your own.
//!
//! | workflow | input | what it shows |
//! |---|---|---|
//! | `OrderProcessing` | `{"order_id", "customer_email"}` | two activities, the second only if the first succeeded; typed state |
//! | `Greeting` | `{"name"}` | the smallest workflow: one activity |
//! | `Approval` | `{"request_id", "timeout_secs"}` | waiting for the typed signal `approve` (`{"approved", "by"}`) with a durable timeout; a malformed one is skipped |
//! | `Reminder` | `{"seconds"}` | a durable sleep, then an activity |
//! | `FlakyCharge` | `{"fail_times"}` | an activity that fails, retried with exponential backoff |
//! | `FanOut` | `{"n"}` | `n` activities in parallel, output their sum |
//! | `OrderSaga` | `{"order_id", "warehouse", "courier_wait_secs"}` | a saga: reserve, charge, ship through a child workflow, and undo in reverse order if shipping fails |
//! | `Shipment` | the same | the child: waits for the courier (a durable sleep), then ships; the warehouse `empty` has nothing to ship |
//! | `FastestQuote` | `{"item"}` | asks two suppliers at once and takes the first answer; the slower request is cancelled and stops |
//! | `Subscription` | `{"customer", "months", "months_per_run", "month_ms"}` | bills every month for as long as it runs, continuing as new every few months so that its history stays short |

use std::time::Duration;

use loom_core::future::{Either, join_all, select};
use loom_core::{
    Activity, ActivityContext, ActivityOptions, ChildError, Failure, Registry, RetryPolicy, Signal,
    SignalError, Signals, Workflow, WorkflowContext, WorkflowError,
};
use serde::{Deserialize, Serialize};

/// A registry with every example workflow and activity.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    add_to(&mut r).expect("the examples have distinct names");
    r
}

/// Whether `registry` holds every example workflow and activity `loom demo` runs.
pub fn registered_in(held: &Registry) -> bool {
    let all = registry();
    all.workflow_names().all(|n| held.workflow(n).is_some())
        && all.activity_names().all(|n| held.activity(n).is_some())
}

/// Adds the examples to `registry`, for binaries that also register their own types.
pub fn add_to(registry: &mut Registry) -> Result<(), loom_core::RegistryError> {
    registry
        .add_workflow::<OrderProcessing>()?
        .add_workflow::<Greeting>()?
        .add_workflow::<Approval>()?
        .add_workflow::<Reminder>()?
        .add_workflow::<FlakyCharge>()?
        .add_workflow::<FanOut>()?
        .add_workflow::<OrderSaga>()?
        .add_workflow::<Shipment>()?
        .add_workflow::<FastestQuote>()?
        .add_workflow::<Subscription>()?
        .add_activity(ProcessPayment)?
        .add_activity(SendConfirmation)?
        .add_activity(Greet)?
        .add_activity(RecordDecision)?
        .add_activity(SendReminder)?
        .add_activity(Charge)?
        .add_activity(Compute)?
        .add_activity(SagaStep)?
        .add_activity(Quote)?
        .add_activity(BillMonth)?;
    Ok(())
}

// ---- OrderProcessing ----

/// An order to process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Order {
    /// The order's id; ids starting with `declined` are declined by the payment activity.
    pub order_id: String,
    /// Where the confirmation goes.
    pub customer_email: String,
}

/// What `OrderProcessing` records as it goes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OrderState {
    /// The payment went through.
    pub payment_confirmed: bool,
    /// The confirmation was sent.
    pub email_sent: bool,
}

/// Charges the order, then sends a confirmation only if the charge went through.
pub struct OrderProcessing;

impl Workflow for OrderProcessing {
    const NAME: &'static str = "OrderProcessing";
    type Input = Order;
    type State = OrderState;
    type Output = String;

    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let order = ctx.input().clone();
        let paid = ctx
            .step(
                "payment",
                ctx.activity::<ProcessPayment>(order.order_id.clone()),
            )
            .await?;
        ctx.update_state(|s| s.payment_confirmed = paid)?;
        // Added after orders were already running: runs started before replay the old
        // branch, which set no tag.
        if ctx.patched("stage-tag") {
            ctx.set_tag("stage", if paid { "paid" } else { "declined" })?;
        }
        if !paid {
            ctx.logger()
                .warn(format!("payment for order {} declined", order.order_id));
            return Ok(format!("order {} declined", order.order_id));
        }
        ctx.step(
            "confirmation",
            ctx.activity::<SendConfirmation>(order.customer_email),
        )
        .await?;
        ctx.update_state(|s| s.email_sent = true)?;
        Ok(format!("order {} complete", order.order_id))
    }
}

/// Charges an order (simulated: ids starting with `declined` are declined).
pub struct ProcessPayment;

impl Activity for ProcessPayment {
    const NAME: &'static str = "process_payment";
    type Input = String;
    type Output = bool;

    async fn run(&self, _: ActivityContext, order_id: String) -> Result<bool, Failure> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(!order_id.starts_with("declined"))
    }
}

/// Sends an order confirmation (simulated).
pub struct SendConfirmation;

impl Activity for SendConfirmation {
    const NAME: &'static str = "send_confirmation";
    type Input = String;
    type Output = ();

    async fn run(&self, _: ActivityContext, email: String) -> Result<(), Failure> {
        tracing::info!(%email, "confirmation sent");
        Ok(())
    }
}

// ---- Greeting ----

/// The input of `Greeting`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GreetingInput {
    /// Who to greet.
    pub name: String,
}

/// Greets someone through one activity.
pub struct Greeting;

impl Workflow for Greeting {
    const NAME: &'static str = "Greeting";
    type Input = GreetingInput;
    type State = ();
    type Output = String;

    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        Ok(ctx.activity::<Greet>(ctx.input().name.clone()).await?)
    }
}

/// Makes a greeting.
pub struct Greet;

impl Activity for Greet {
    const NAME: &'static str = "greet";
    type Input = String;
    type Output = String;

    async fn run(&self, _: ActivityContext, name: String) -> Result<String, Failure> {
        Ok(format!("Hello, {name}!"))
    }
}

// ---- Approval ----

/// The input of `Approval`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// What is being approved.
    pub request_id: String,
    /// How long to wait for the `approve` signal.
    pub timeout_secs: u64,
}

/// The `approve` signal: its name and payload type, shared by senders and `Approval`.
pub struct Approve;

impl Signal for Approve {
    const NAME: &'static str = "approve";
    type Payload = ApprovalDecision;
}

/// The payload of the `approve` signal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApprovalDecision {
    /// Approved or rejected.
    pub approved: bool,
    /// By whom.
    pub by: String,
}

/// What `Approval` returns.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApprovalOutcome {
    /// `approved`, `rejected` or `timed_out`.
    pub decision: String,
    /// Who decided, unless it timed out.
    pub by: Option<String>,
}

/// Waits for an `approve` signal, or times out with a durable timer.
pub struct Approval;

impl Workflow for Approval {
    const NAME: &'static str = "Approval";
    type Input = ApprovalRequest;
    type State = ();
    type Output = ApprovalOutcome;

    fn signals(signals: &mut Signals) {
        signals.add::<Approve>();
    }

    async fn run(ctx: WorkflowContext<Self>) -> Result<ApprovalOutcome, WorkflowError> {
        let timeout = Duration::from_secs(ctx.input().timeout_secs);
        let wait = async {
            loop {
                match ctx.signal_timeout::<Approve>(timeout).await {
                    // Sent unchecked and malformed: say so, and wait for a good one.
                    Err(SignalError::BadPayload { error, .. }) => {
                        ctx.logger().warn(format!(
                            "ignored an approve signal that does not fit: {error}"
                        ));
                    }
                    other => break other,
                }
            }
        };
        let decision = ctx.step("awaiting approval", wait).await?;
        let outcome = match decision {
            Some(d) => ApprovalOutcome {
                decision: if d.approved { "approved" } else { "rejected" }.into(),
                by: Some(d.by),
            },
            None => ApprovalOutcome {
                decision: "timed_out".into(),
                by: None,
            },
        };
        ctx.activity::<RecordDecision>((ctx.input().request_id.clone(), outcome.decision.clone()))
            .await?;
        Ok(outcome)
    }
}

/// Records an approval decision (simulated).
pub struct RecordDecision;

impl Activity for RecordDecision {
    const NAME: &'static str = "record_decision";
    type Input = (String, String);
    type Output = ();

    async fn run(
        &self,
        _: ActivityContext,
        (request, decision): (String, String),
    ) -> Result<(), Failure> {
        tracing::info!(%request, %decision, "decision recorded");
        Ok(())
    }
}

// ---- Reminder ----

/// The input of `Reminder`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReminderInput {
    /// How long to sleep before reminding.
    pub seconds: u64,
}

/// Sleeps durably, then sends a reminder.
pub struct Reminder;

impl Workflow for Reminder {
    const NAME: &'static str = "Reminder";
    type Input = ReminderInput;
    type State = ();
    type Output = String;

    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        ctx.step(
            "sleeping",
            ctx.sleep(Duration::from_secs(ctx.input().seconds)),
        )
        .await?;
        Ok(ctx.activity::<SendReminder>(ctx.input().seconds).await?)
    }
}

/// Sends a reminder (simulated).
pub struct SendReminder;

impl Activity for SendReminder {
    const NAME: &'static str = "send_reminder";
    type Input = u64;
    type Output = String;

    async fn run(&self, _: ActivityContext, seconds: u64) -> Result<String, Failure> {
        Ok(format!("reminded after {seconds}s"))
    }
}

// ---- FlakyCharge ----

/// The input of `FlakyCharge`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlakyInput {
    /// How many attempts fail before one succeeds.
    pub fail_times: u32,
}

/// Charges through a flaky service: retried with exponential backoff until it succeeds.
pub struct FlakyCharge;

impl Workflow for FlakyCharge {
    const NAME: &'static str = "FlakyCharge";
    type Input = FlakyInput;
    type State = ();
    type Output = String;

    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let attempt = ctx.activity::<Charge>(ctx.input().fail_times).await?;
        Ok(format!("charged on attempt {attempt}"))
    }
}

/// Fails its first `fail_times` attempts, then succeeds and returns the attempt number.
pub struct Charge;

impl Activity for Charge {
    const NAME: &'static str = "charge";
    type Input = u32;
    type Output = u32;

    fn options() -> ActivityOptions {
        ActivityOptions {
            retry: RetryPolicy {
                max_attempts: 10,
                initial_interval: Duration::from_millis(100),
                backoff_coefficient: 2.0,
                max_interval: Duration::from_secs(2),
                non_retryable: vec![],
            },
            ..ActivityOptions::default()
        }
    }

    async fn run(&self, ctx: ActivityContext, fail_times: u32) -> Result<u32, Failure> {
        let attempt = ctx.info().attempt;
        if attempt <= fail_times {
            return Err(Failure::new(
                "service_unavailable",
                format!("the payment service did not answer (attempt {attempt})"),
            ));
        }
        Ok(attempt)
    }
}

// ---- FanOut ----

/// The input of `FanOut`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FanOutInput {
    /// How many activities to run in parallel.
    pub n: u32,
}

/// Runs `n` activities in parallel and returns the sum of their results (the sum of
/// squares 1..=n).
pub struct FanOut;

impl Workflow for FanOut {
    const NAME: &'static str = "FanOut";
    type Input = FanOutInput;
    type State = ();
    type Output = u64;

    async fn run(ctx: WorkflowContext<Self>) -> Result<u64, WorkflowError> {
        let calls = (1..=ctx.input().n).map(|i| ctx.activity::<Compute>(i));
        let mut sum = 0;
        for result in join_all(calls).await {
            sum += result?;
        }
        Ok(sum)
    }
}

/// Squares its input.
pub struct Compute;

impl Activity for Compute {
    const NAME: &'static str = "compute";
    type Input = u32;
    type Output = u64;

    async fn run(&self, _: ActivityContext, i: u32) -> Result<u64, Failure> {
        Ok(u64::from(i) * u64::from(i))
    }
}

// ---- OrderSaga and its child, Shipment ----

/// An order to ship.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Shipping {
    /// The order's id.
    pub order_id: String,
    /// Where it ships from; the warehouse `empty` has nothing in stock.
    pub warehouse: String,
    /// How long the shipment waits for the courier before it ships (a durable sleep).
    #[serde(default)]
    pub courier_wait_secs: u64,
}

/// A saga: reserves stock, charges the customer, then ships through a [`Shipment`] child
/// workflow. If the shipment fails or is cancelled, the steps already taken are undone in
/// reverse order (refund, then release the stock) and the saga ends with an output that says
/// so: a handled outcome of the business, like a declined payment. If the saga itself is
/// cancelled while it waits, it ends cancelled and its child is asked to cancel too (the
/// default parent-close policy).
pub struct OrderSaga;

impl Workflow for OrderSaga {
    const NAME: &'static str = "OrderSaga";
    type Input = Shipping;
    type State = ();
    type Output = String;

    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let order = ctx.input().clone();
        let id = order.order_id.clone();
        ctx.activity::<SagaStep>(format!("reserve stock for {id}"))
            .await?;
        ctx.activity::<SagaStep>(format!("charge order {id}"))
            .await?;
        match ctx.child::<Shipment>(order).await {
            Ok(tracking) => Ok(format!("order {id} shipped: {tracking}")),
            Err(ChildError::ParentCancelled { .. }) => Err(WorkflowError::Cancelled),
            Err(shipping) => {
                ctx.logger()
                    .warn(format!("order {id}: {shipping}; compensating"));
                ctx.activity::<SagaStep>(format!("refund order {id}"))
                    .await?;
                ctx.activity::<SagaStep>(format!("release stock for {id}"))
                    .await?;
                Ok(format!("order {id} not shipped, refunded: {shipping}"))
            }
        }
    }
}

/// Ships an order: waits for the courier, then hands the parcel over and returns its
/// tracking number. Fails (not retried) when the warehouse has nothing in stock.
pub struct Shipment;

impl Workflow for Shipment {
    const NAME: &'static str = "Shipment";
    type Input = Shipping;
    type State = ();
    type Output = String;

    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let order = ctx.input().clone();
        if order.courier_wait_secs > 0 {
            ctx.sleep(Duration::from_secs(order.courier_wait_secs))
                .await?;
        }
        if order.warehouse == "empty" {
            return Err(WorkflowError::Failed(Failure::non_retryable(
                "out_of_stock",
                format!("warehouse {} has nothing to ship", order.warehouse),
            )));
        }
        let tracking = ctx
            .activity::<SagaStep>(format!("ship {} from {}", order.order_id, order.warehouse))
            .await?;
        Ok(tracking)
    }
}

/// One step of the saga against an outside system (simulated): answers what it did.
pub struct SagaStep;

impl Activity for SagaStep {
    const NAME: &'static str = "saga_step";
    type Input = String;
    type Output = String;

    async fn run(&self, _: ActivityContext, what: String) -> Result<String, Failure> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(format!("done: {what}"))
    }
}

// ---- FastestQuote ----

/// The input of `FastestQuote`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QuoteRequest {
    /// What to price.
    pub item: String,
}

/// Asks two suppliers for a price at once and takes the first answer (a hedged request).
/// The slower request loses the `select`: dropping its future cancels the activity, and its
/// running attempt is told through its context and stops.
pub struct FastestQuote;

impl Workflow for FastestQuote {
    const NAME: &'static str = "FastestQuote";
    type Input = QuoteRequest;
    type State = ();
    type Output = String;

    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let item = ctx.input().item.clone();
        let north = ctx.activity::<Quote>(("north".into(), item.clone()));
        let south = ctx.activity::<Quote>(("south".into(), item.clone()));
        let (supplier, price) = match select(north, south).await {
            Either::Left((price, _)) => ("north", price?),
            Either::Right((price, _)) => ("south", price?),
        };
        Ok(format!("{supplier} quotes {price} for {item}"))
    }
}

/// A supplier's price (simulated): `north` answers at once, `south` takes ten seconds unless
/// its attempt is cancelled first.
pub struct Quote;

impl Activity for Quote {
    const NAME: &'static str = "quote";
    type Input = (String, String);
    type Output = u64;

    async fn run(
        &self,
        ctx: ActivityContext,
        (supplier, item): (String, String),
    ) -> Result<u64, Failure> {
        let wait = if supplier == "north" {
            Duration::from_millis(5)
        } else {
            Duration::from_secs(10)
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => Ok(40 + item.len() as u64),
            () = ctx.cancelled() => Err(Failure::new("cancelled", "the quote is no longer wanted")),
        }
    }
}

// ---- Subscription ----

/// The input of `Subscription`: who, for how long, and where the chain of runs stands.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// Who is billed.
    pub customer: String,
    /// How many months to bill in all (a real subscription would run until cancelled).
    pub months: u32,
    /// Months billed by one run before it continues as new.
    #[serde(default = "default_months_per_run")]
    pub months_per_run: u32,
    /// How long a month lasts here, in milliseconds (a real one would be a month).
    #[serde(default = "default_month_ms")]
    pub month_ms: u64,
    /// The next month to bill, from 0; carried from run to run.
    #[serde(default)]
    pub month: u32,
    /// What was billed so far; carried from run to run.
    #[serde(default)]
    pub billed_cents: u64,
}

fn default_months_per_run() -> u32 {
    12
}

fn default_month_ms() -> u64 {
    1_000
}

/// Bills a customer every month. A run bills `months_per_run` months and then continues as
/// new with what it has billed so far, so a subscription that runs for years keeps a history
/// of a few dozen events; `loom inspect` shows the current run and the earlier ones.
pub struct Subscription;

impl Workflow for Subscription {
    const NAME: &'static str = "Subscription";
    type Input = Plan;
    type State = Plan;
    type Output = u64;

    async fn run(ctx: WorkflowContext<Self>) -> Result<u64, WorkflowError> {
        let mut plan = ctx.input().clone();
        for _ in 0..plan.months_per_run.max(1) {
            if plan.month >= plan.months {
                return Ok(plan.billed_cents);
            }
            let cents = ctx
                .activity::<BillMonth>((plan.customer.clone(), plan.month))
                .await?;
            plan.billed_cents += cents;
            plan.month += 1;
            ctx.update_state(|s| *s = plan.clone())?;
            ctx.sleep(Duration::from_millis(plan.month_ms)).await?;
        }
        Err(ctx.continue_as_new(plan))
    }
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            customer: String::new(),
            months: 0,
            months_per_run: default_months_per_run(),
            month_ms: default_month_ms(),
            month: 0,
            billed_cents: 0,
        }
    }
}

/// Charges one month of a subscription (simulated): 999 cents.
pub struct BillMonth;

impl Activity for BillMonth {
    const NAME: &'static str = "bill_month";
    type Input = (String, u32);
    type Output = u64;

    async fn run(&self, _: ActivityContext, _: (String, u32)) -> Result<u64, Failure> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(999)
    }
}
