//! Loom's examples unit-tested with loom-testkit, as a user would test their own workflows:
//! years of monthly billing, a week-long approval wait, a saga whose shipment fails, each in
//! milliseconds on a virtual clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use loom_cli::examples::{
    Approval, ApprovalDecision, ApprovalRequest, BillMonth, OrderSaga, Plan, RecordDecision,
    SagaStep, Shipment, Shipping, Subscription,
};
use loom_core::{Activity, Failure};
use loom_testkit::{START, TestEnv};

const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test]
async fn a_three_year_subscription_bills_every_month_across_its_runs() {
    let bills = Arc::new(AtomicU32::new(0));
    let mut env = TestEnv::new();
    let counted = bills.clone();
    env.workflow::<Subscription>()
        .mock::<BillMonth>(move |(customer, month), _| {
            assert_eq!(customer, "ada");
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(1_000 + u64::from(month))
        });
    let plan = Plan {
        customer: "ada".into(),
        months: 36,
        months_per_run: 12,
        month_ms: 30 * 86_400_000,
        ..Plan::default()
    };
    let sub = env
        .start::<Subscription>("sub-ada", &plan)
        .await
        .expect("start");
    let billed = env.result(&sub).await.expect("result");
    assert_eq!(billed, (0..36).map(|m| 1_000 + m).sum::<u64>());
    assert_eq!(bills.load(Ordering::SeqCst), 36);
    assert!(
        env.now() >= START.saturating_add(36 * 30 * DAY),
        "three virtual years"
    );
    let summary = env.describe(sub.id()).await.expect("describe");
    // Three runs of twelve months, each continuing as new; the fourth finds all 36 billed.
    assert_eq!(summary.run, 4);
}

#[tokio::test]
async fn an_approval_waits_its_week_then_times_out_or_takes_the_signal() {
    let mut env = TestEnv::new();
    env.workflow::<Approval>()
        .mock::<RecordDecision>(|_, _| Ok(()));
    let request = |id: &str| ApprovalRequest {
        request_id: id.into(),
        timeout_secs: 7 * 86_400,
    };
    let late = env
        .start::<Approval>("late", &request("late"))
        .await
        .expect("start");
    let decision = ApprovalDecision {
        approved: true,
        by: "grace".into(),
    };
    env.signal_at(8 * DAY, late.id(), "approve", &decision)
        .expect("schedule");
    assert_eq!(
        env.result(&late).await.expect("result").decision,
        "timed_out"
    );

    let on_time = env
        .start::<Approval>("on-time", &request("on-time"))
        .await
        .expect("start");
    env.signal_at(3 * DAY, on_time.id(), "approve", &decision)
        .expect("schedule");
    let outcome = env.result(&on_time).await.expect("result");
    assert_eq!(outcome.decision, "approved");
    assert_eq!(outcome.by.as_deref(), Some("grace"));
}

#[tokio::test]
async fn a_saga_whose_shipment_fails_refunds_and_releases_in_reverse_order() {
    let steps = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut env = TestEnv::new();
    let seen = steps.clone();
    env.workflow::<OrderSaga>()
        .workflow::<Shipment>()
        .mock::<SagaStep>(move |step, _| {
            seen.lock().expect("lock").push(step.clone());
            if step.starts_with("ship") {
                Err(Failure::non_retryable("no_courier", "no courier today"))
            } else {
                Ok(step)
            }
        });
    let order = Shipping {
        order_id: "o-1".into(),
        warehouse: "north".into(),
        courier_wait_secs: 3 * 86_400,
    };
    let saga = env
        .start::<OrderSaga>("saga-1", &order)
        .await
        .expect("start");
    let out = env.result(&saga).await.expect("result");
    assert!(out.contains("refunded"), "{out}");
    let steps = steps.lock().expect("lock").clone();
    let position = |prefix: &str| {
        steps
            .iter()
            .position(|s| s.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {steps:?}"))
    };
    assert!(position("reserve") < position("charge"));
    assert!(
        position("refund") < position("release"),
        "undone in reverse: {steps:?}"
    );
    assert!(
        env.now() >= START.saturating_add(3 * DAY),
        "the courier wait passed"
    );
    // The saga's activity type is mocked by name: its real options still apply.
    assert_eq!(SagaStep::NAME, "saga_step");
}
