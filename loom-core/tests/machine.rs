//! Scenario tests of the replay machine, one behaviour each, on hand-written histories.

mod support;

use std::time::Duration;

use loom_core::future::{join, join_all};
use loom_core::{
    Activity, ActivityContext, ActivityError, ChildError, ChildId, EventKind, Failure, LogLevel,
    Outcome, ParentClosePolicy, ParentRef, Payload, ReplayError, Seq, Timestamp, Workflow,
    WorkflowContext, WorkflowError, workflow_type,
};
use serde::{Deserialize, Serialize};
use support::{Driver, cancel, completed, fired, signal, started_event};

// ---- activities (only their names and types matter to loom-core) ----

struct Charge;
impl Activity for Charge {
    const NAME: &'static str = "charge";
    type Input = u32;
    type Output = bool;
    async fn run(&self, _: ActivityContext, amount: u32) -> Result<bool, Failure> {
        Ok(amount < 100)
    }
}

struct Email;
impl Activity for Email {
    const NAME: &'static str = "email";
    type Input = String;
    type Output = ();
    async fn run(&self, _: ActivityContext, _: String) -> Result<(), Failure> {
        Ok(())
    }
}

struct Refund;
impl Activity for Refund {
    const NAME: &'static str = "refund";
    type Input = u32;
    type Output = ();
    async fn run(&self, _: ActivityContext, _: u32) -> Result<(), Failure> {
        Ok(())
    }
}

// ---- workflows ----

#[derive(Default, Serialize, Deserialize, Clone, Debug, PartialEq)]
struct OrderState {
    paid: bool,
    emailed: bool,
}

/// Charge, then email only if paid.
struct Order;
impl Workflow for Order {
    const NAME: &'static str = "Order";
    type Input = u32;
    type State = OrderState;
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let paid = ctx
            .step("payment", ctx.activity::<Charge>(*ctx.input()))
            .await?;
        ctx.update_state(|s| s.paid = paid)?;
        if !paid {
            ctx.logger().warn("payment declined");
            return Ok("declined".into());
        }
        ctx.activity::<Email>("a@b.c".into()).await?;
        ctx.update_state(|s| s.emailed = true)?;
        ctx.logger().info("order done");
        Ok("done".into())
    }
}

/// The same as Order but emails with a different activity: a code change.
struct OrderRenamed;
impl Workflow for OrderRenamed {
    const NAME: &'static str = "Order";
    type Input = u32;
    type State = OrderState;
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let paid = ctx
            .step("payment", ctx.activity::<Charge>(*ctx.input()))
            .await?;
        ctx.update_state(|s| s.paid = paid)?;
        ctx.activity::<Refund>(1).await?;
        Ok("changed".into())
    }
}

fn order_history() -> Driver {
    let mut d = Driver::start::<Order>(&10);
    d.feed(vec![]);
    let charge = d.activity(0);
    d.feed(vec![completed(charge, true)]);
    let email = d.activity(1);
    d.feed(vec![completed(email, ())]);
    d
}

#[test]
fn a_workflow_runs_to_completion_one_task_at_a_time() {
    let mut d = Driver::start::<Order>(&10);
    let first = d.ok(vec![]);
    let kinds: Vec<_> = first.events.iter().map(|e| e.kind.type_name()).collect();
    assert_eq!(kinds, ["StepStarted", "ActivityScheduled"]);
    assert_eq!(first.events[0].seq, Seq::new(2));
    let charge = d.activity(0);
    d.feed(vec![completed(charge, true)]);
    let email = d.activity(1);
    let last = d.ok(vec![completed(email, ())]);
    assert_eq!(
        d.kinds(),
        [
            "WorkflowStarted",
            "StepStarted",
            "ActivityScheduled",
            "ActivityCompleted",
            "StepCompleted",
            "StateSet",
            "ActivityScheduled",
            "ActivityCompleted",
            "StateSet",
            "WorkflowCompleted"
        ]
    );
    assert_eq!(
        d.machine().outcome(),
        Some(Outcome::Completed {
            output: Payload::encode("done").expect("encode")
        })
    );
    let progress = d.machine().progress();
    assert_eq!(
        progress.state,
        Payload::encode(&OrderState {
            paid: true,
            emailed: true
        })
        .expect("encode")
    );
    assert_eq!(last.logs.len(), 1);
    assert_eq!(last.logs[0].level, LogLevel::Info);
}

#[test]
fn the_branch_not_taken_schedules_nothing() {
    let mut d = Driver::start::<Order>(&500);
    d.feed(vec![]);
    let charge = d.activity(0);
    let last = d.ok(vec![completed(charge, false)]);
    assert!(matches!(
        d.machine().outcome(),
        Some(Outcome::Completed { .. })
    ));
    let scheduled = d
        .kinds()
        .iter()
        .filter(|k| **k == "ActivityScheduled")
        .count();
    assert_eq!(scheduled, 1, "no email after a declined payment");
    assert_eq!(last.logs[0].message, "payment declined");
}

#[test]
fn replaying_a_finished_history_adds_nothing_and_logs_nothing() {
    let d = order_history();
    let mut fresh = Driver::with_history(workflow_type::<Order>(), d.history.clone());
    let decision = fresh.ok(vec![]);
    assert!(decision.events.is_empty(), "{:?}", decision.events);
    assert!(
        decision.logs.is_empty(),
        "replayed lines are not logged again"
    );
    assert_eq!(fresh.machine().outcome(), d.machine().outcome());
    assert_eq!(fresh.machine().progress(), d.machine().progress());
}

#[test]
fn a_changed_activity_is_a_nondeterminism_error_at_its_sequence_number() {
    let d = order_history();
    let mut changed = Driver::with_history(workflow_type::<OrderRenamed>(), d.history.clone());
    let err = changed.step(vec![]).expect_err("the code changed");
    let nd = err.nondeterminism().expect("a non-determinism error");
    // Seq 7 is the email ActivityScheduled; the new code schedules "refund" there.
    assert_eq!(nd.seq, Seq::new(7));
    assert!(
        nd.recorded.as_deref().unwrap_or("").contains("\"email\""),
        "{nd}"
    );
    assert!(
        nd.attempted.as_deref().unwrap_or("").contains("\"refund\""),
        "{nd}"
    );
    assert!(err.to_string().contains("#7"), "{err}");
}

#[test]
fn a_poisoned_machine_keeps_failing_and_appends_nothing() {
    let d = order_history();
    let before = d.history.clone();
    let mut machine = loom_core::WorkflowMachine::new(
        workflow_type::<OrderRenamed>(),
        "wf-1".into(),
        d.history.clone(),
    )
    .expect("well-formed");
    let act = loom_core::Activation::new(Timestamp::from_millis(5_000), 3);
    let first = machine.activate(act.clone()).expect_err("mismatch");
    let second = machine.activate(act).expect_err("still poisoned");
    assert_eq!(first, second);
    assert_eq!(d.history, before);
}

/// Waits for a signal after its first activity: a task that issues no command.
struct ChargeThenWait;
impl Workflow for ChargeThenWait {
    const NAME: &'static str = "ChargeThenWait";
    type Input = ();
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        ctx.activity::<Charge>(1).await?;
        ctx.wait_signal::<String>("go").await
    }
}

/// The same, but a new command where the old code waited.
struct ChargeThenEmail;
impl Workflow for ChargeThenEmail {
    const NAME: &'static str = "ChargeThenWait";
    type Input = ();
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        ctx.activity::<Charge>(1).await?;
        ctx.activity::<Email>("x".into()).await?;
        ctx.wait_signal::<String>("go").await
    }
}

#[test]
fn a_new_command_past_the_end_of_history_is_caught() {
    let mut d = Driver::start::<ChargeThenWait>(&());
    d.feed(vec![]);
    let charge = d.activity(0);
    let decided = d.ok(vec![completed(charge, true)]);
    assert!(
        decided.events.len() == 1,
        "only the completion: the code waits"
    );
    let mut changed = Driver::with_history(workflow_type::<ChargeThenEmail>(), d.history.clone());
    let err = changed.step(vec![]).expect_err("new command during replay");
    let nd = err.nondeterminism().expect("non-determinism");
    assert_eq!(nd.seq, Seq::new(4));
    assert_eq!(nd.recorded, None);
    assert!(nd.attempted.as_deref().unwrap_or("").contains("email"));
}

#[test]
fn a_recorded_command_the_code_no_longer_issues_is_caught() {
    let mut d = Driver::start::<ChargeThenEmail>(&());
    d.feed(vec![]);
    let charge = d.activity(0);
    d.feed(vec![completed(charge, true)]);
    let mut changed = Driver::with_history(workflow_type::<ChargeThenWait>(), d.history.clone());
    let err = changed
        .step(vec![])
        .expect_err("a recorded command was dropped");
    let nd = err.nondeterminism().expect("non-determinism");
    assert_eq!(nd.seq, Seq::new(4));
    assert_eq!(nd.attempted, None);
    assert!(err.to_string().contains("nothing"), "{err}");
}

#[test]
fn a_second_result_for_one_activity_is_dropped() {
    let mut d = Driver::start::<ChargeThenWait>(&());
    d.feed(vec![]);
    let charge = d.activity(0);
    let decided = d.ok(vec![completed(charge, true), completed(charge, false)]);
    assert_eq!(decided.events.len(), 1);
    assert_eq!(decided.dropped.len(), 1);
    assert!(
        decided.dropped[0].1.contains("already ended"),
        "{:?}",
        decided.dropped
    );
    let unknown = d.ok(vec![completed(loom_core::ActivityId(Seq::new(99)), 1)]);
    assert!(unknown.events.is_empty());
    assert!(unknown.dropped[0].1.contains("never scheduled"));
}

/// Retries are recorded; only the final failure reaches the code, which compensates.
struct Compensate;
impl Workflow for Compensate {
    const NAME: &'static str = "Compensate";
    type Input = ();
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        match ctx.activity::<Charge>(5).await {
            Ok(_) => Ok("charged".into()),
            Err(ActivityError::Failed {
                attempts, failure, ..
            }) => {
                ctx.activity::<Refund>(5).await?;
                Ok(format!("refunded after {attempts}: {}", failure.kind))
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[test]
fn retries_are_recorded_and_the_final_failure_reaches_the_code() {
    let mut d = Driver::start::<Compensate>(&());
    d.feed(vec![]);
    let charge = d.activity(0);
    let retry = EventKind::ActivityFailed {
        activity_id: charge,
        attempt: 1,
        failure: Failure::new("network", "reset"),
        retry_at: Some(Timestamp::from_millis(2_000)),
    };
    let decided = d.ok(vec![retry]);
    assert_eq!(decided.events.len(), 1, "a retry resolves nothing");
    assert_eq!(d.machine().progress().pending_activities[0].attempts, 1);
    let last = EventKind::ActivityFailed {
        activity_id: charge,
        attempt: 2,
        failure: Failure::new("network", "reset"),
        retry_at: None,
    };
    d.feed(vec![last]);
    let refund = d.activity(1);
    d.feed(vec![completed(refund, ())]);
    assert_eq!(
        d.machine().outcome(),
        Some(Outcome::Completed {
            output: Payload::encode("refunded after 2: network").expect("encode")
        })
    );
}

/// An unhandled activity failure fails the workflow with the cause.
struct Unhandled;
impl Workflow for Unhandled {
    const NAME: &'static str = "Unhandled";
    type Input = ();
    type State = ();
    type Output = bool;
    async fn run(ctx: WorkflowContext<Self>) -> Result<bool, WorkflowError> {
        Ok(ctx.activity::<Charge>(5).await?)
    }
}

#[test]
fn an_unhandled_activity_failure_fails_the_workflow_with_its_cause() {
    let mut d = Driver::start::<Unhandled>(&());
    d.feed(vec![]);
    let charge = d.activity(0);
    d.feed(vec![EventKind::ActivityTimedOut {
        activity_id: charge,
        attempt: 3,
        retry_at: None,
    }]);
    let Some(Outcome::Failed { failure }) = d.machine().outcome() else {
        panic!("expected failure, got {:?}", d.machine().outcome());
    };
    assert_eq!(failure.kind, "activity_timed_out");
    assert!(failure.message.contains("charge"), "{}", failure.message);
}

/// Sleeps, then races a signal against a timeout.
struct Approval;
impl Workflow for Approval {
    const NAME: &'static str = "Approval";
    type Input = u64;
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        ctx.sleep(Duration::from_secs(1)).await?;
        let answer = ctx
            .wait_signal_timeout::<bool>("approve", Duration::from_secs(*ctx.input()))
            .await?;
        Ok(match answer {
            Some(true) => "approved".into(),
            Some(false) => "rejected".into(),
            None => "timed out".into(),
        })
    }
}

#[test]
fn timers_fire_and_a_signal_sent_early_is_kept() {
    let mut d = Driver::start::<Approval>(&60);
    d.feed(vec![]);
    let nap = d.timer(0);
    // The signal arrives before the code waits for it; it is buffered.
    d.feed(vec![signal("approve", true)]);
    assert_eq!(
        d.machine().progress().buffered_signals.get("approve"),
        Some(&1)
    );
    d.advance(1_000);
    d.feed(vec![fired(nap)]);
    assert_eq!(
        d.machine().outcome(),
        Some(Outcome::Completed {
            output: Payload::encode("approved").expect("encode")
        })
    );
}

#[test]
fn a_signal_wait_times_out_with_a_durable_timer() {
    let mut d = Driver::start::<Approval>(&60);
    d.feed(vec![]);
    let nap = d.timer(0);
    d.advance(1_000);
    d.feed(vec![fired(nap)]);
    let timeout = d.timer(1);
    let EventKind::TimerScheduled {
        fire_at,
        duration_ms,
    } = &d.history[timeout.0.get() as usize - 1].kind
    else {
        panic!("a timer");
    };
    assert_eq!(*duration_ms, Some(60_000));
    assert_eq!(*fire_at, Timestamp::from_millis(62_000));
    assert_eq!(d.machine().progress().awaiting_signals, ["approve"]);
    d.crash();
    d.feed(vec![fired(timeout)]);
    assert_eq!(
        d.machine().outcome(),
        Some(Outcome::Completed {
            output: Payload::encode("timed out").expect("encode")
        })
    );
    // A timer cannot fire twice.
    let again = d.ok(vec![fired(timeout)]);
    assert!(again.events.is_empty());
}

/// Waits for an activity; on cancel, runs a cleanup activity and ends cancelled.
struct Cleanup;
impl Workflow for Cleanup {
    const NAME: &'static str = "Cleanup";
    type Input = ();
    type State = ();
    type Output = ();
    async fn run(ctx: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        match ctx.activity::<Charge>(1).await {
            Err(ActivityError::Cancelled { .. }) => {
                assert!(ctx.is_cancel_requested());
                ctx.activity::<Refund>(1).await?;
                Err(WorkflowError::Cancelled)
            }
            other => other.map(drop).map_err(Into::into),
        }
    }
}

#[test]
fn cancellation_reaches_the_code_which_cleans_up() {
    let mut d = Driver::start::<Cleanup>(&());
    d.feed(vec![]);
    d.feed(vec![cancel()]);
    assert_eq!(
        d.kinds().last(),
        Some(&"ActivityScheduled"),
        "the cleanup activity"
    );
    // A second cancel request is dropped.
    let again = d.ok(vec![cancel()]);
    assert_eq!(again.dropped.len(), 1);
    let refund = d.activity(1);
    d.crash();
    d.feed(vec![completed(refund, ())]);
    assert_eq!(d.machine().outcome(), Some(Outcome::Cancelled));
    assert_eq!(d.kinds().last(), Some(&"WorkflowCancelled"));
}

/// Fans out n activities and sums their results.
struct FanOut;
impl Workflow for FanOut {
    const NAME: &'static str = "FanOut";
    type Input = u32;
    type State = ();
    type Output = u32;
    async fn run(ctx: WorkflowContext<Self>) -> Result<u32, WorkflowError> {
        let calls = (0..*ctx.input()).map(|i| ctx.activity::<Charge>(i));
        let mut sum = 0;
        for paid in join_all(calls).await {
            sum += u32::from(paid?);
        }
        Ok(sum)
    }
}

#[test]
fn fan_out_of_many_activities_completes_whatever_the_completion_order() {
    // 40 is past the size where join_all switches to a waker-driven FuturesOrdered.
    let mut d = Driver::start::<FanOut>(&40);
    let first = d.ok(vec![]);
    assert_eq!(first.events.len(), 40);
    let ids: Vec<_> = (0..40).map(|i| d.activity(i)).collect();
    // Complete them in reverse, a few per task, crashing in between.
    for chunk in ids.iter().rev().collect::<Vec<_>>().chunks(7) {
        d.crash();
        let msgs = chunk.iter().map(|id| completed(**id, true)).collect();
        d.feed(msgs);
    }
    assert_eq!(
        d.machine().outcome(),
        Some(Outcome::Completed {
            output: Payload::encode(&40).expect("encode")
        })
    );
}

/// Races an activity against a timer.
struct Race;
impl Workflow for Race {
    const NAME: &'static str = "Race";
    type Input = ();
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let call = ctx.activity::<Charge>(1);
        let timer = ctx.sleep(Duration::from_secs(5));
        Ok(match loom_core::future::select(call, timer).await {
            loom_core::future::Either::Left(_) => "activity".into(),
            loom_core::future::Either::Right(_) => "timer".into(),
        })
    }
}

#[test]
fn a_race_is_decided_by_the_recorded_order_of_results() {
    for (first_timer, expected) in [(true, "timer"), (false, "activity")] {
        let mut d = Driver::start::<Race>(&());
        d.feed(vec![]);
        let (call, timer) = (d.activity(0), d.timer(0));
        let msgs = if first_timer {
            vec![fired(timer), completed(call, true)]
        } else {
            vec![completed(call, true), fired(timer)]
        };
        d.feed(msgs);
        let want = Some(Outcome::Completed {
            output: Payload::encode(expected).expect("encode"),
        });
        assert_eq!(d.machine().outcome(), want);
        // And a replay of that history agrees.
        d.crash();
        d.feed(vec![]);
        assert_eq!(d.machine().outcome(), want);
    }
}

/// Records time, randomness and a uuid, and writes them to the output.
struct Values;
impl Workflow for Values {
    const NAME: &'static str = "Values";
    type Input = ();
    type State = ();
    type Output = (i64, u64, String);
    async fn run(ctx: WorkflowContext<Self>) -> Result<(i64, u64, String), WorkflowError> {
        let now = ctx.now();
        let r = ctx.random_u64();
        let id = ctx.uuid();
        ctx.sleep(Duration::from_millis(10)).await?;
        Ok((now.as_millis(), r, id.to_string()))
    }
}

#[test]
fn time_and_randomness_are_recorded_and_replayed() {
    let mut d = Driver::start::<Values>(&());
    d.feed(vec![]);
    let timer = d.timer(0);
    // Replay at another time with other entropy: the recorded values come back.
    d.crash();
    d.advance(99_000);
    d.entropy = 12_345;
    d.feed(vec![fired(timer)]);
    let Some(Outcome::Completed { output }) = d.machine().outcome() else {
        panic!("completed");
    };
    let (now, r, id): (i64, u64, String) = output.decode().expect("decode");
    assert_eq!(now, 1_000);
    let recorded: Vec<_> = d
        .history
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ValueRecorded { value } => Some(value.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(recorded.len(), 3);
    assert_eq!(recorded[1], loom_core::RecordedValue::Random(r));
    assert_eq!(
        recorded[2],
        loom_core::RecordedValue::Uuid(id.parse().expect("a uuid"))
    );
}

/// Old code: one activity. New code: a patched branch adds an email first.
struct Patched;
impl Workflow for Patched {
    const NAME: &'static str = "ChargeThenWait";
    type Input = ();
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        if ctx.patched("email-first") {
            ctx.activity::<Email>("first".into()).await?;
        }
        ctx.activity::<Charge>(1).await?;
        ctx.wait_signal::<String>("go").await
    }
}

#[test]
fn patched_keeps_old_runs_on_the_old_branch_and_new_runs_on_the_new() {
    // An old run, written before the patch, replays cleanly and keeps the old branch.
    let mut old = Driver::start::<ChargeThenWait>(&());
    old.feed(vec![]);
    let charge = old.activity(0);
    old.feed(vec![completed(charge, true)]);
    let mut replayed = Driver::with_history(workflow_type::<Patched>(), old.history.clone());
    replayed.feed(vec![signal("go", "went")]);
    assert!(matches!(
        replayed.machine().outcome(),
        Some(Outcome::Completed { .. })
    ));
    assert!(!replayed.kinds().contains(&"PatchMarked"));
    // A new run takes the new branch and records it; its replay agrees.
    let mut new = Driver::with_history(
        workflow_type::<Patched>(),
        vec![started_event("ChargeThenWait", 1, Payload::NULL)],
    );
    new.feed(vec![]);
    assert_eq!(
        new.kinds(),
        ["WorkflowStarted", "PatchMarked", "ActivityScheduled"]
    );
    new.crash();
    assert!(new.ok(vec![]).events.is_empty());
}

/// Panics in its code.
struct Panics;
impl Workflow for Panics {
    const NAME: &'static str = "Panics";
    type Input = ();
    type State = ();
    type Output = ();
    async fn run(_: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        panic!("boom in workflow code")
    }
}

#[test]
fn a_panic_is_reported_not_recorded() {
    let mut d = Driver::start::<Panics>(&());
    let err = d.step(vec![]).expect_err("panicked");
    assert_eq!(
        err,
        ReplayError::Panicked {
            message: "boom in workflow code".into()
        }
    );
    assert_eq!(d.history.len(), 1, "nothing was appended");
}

#[test]
fn input_that_does_not_match_the_type_fails_the_workflow_cleanly() {
    let mut d = Driver::with_history(
        workflow_type::<Order>(),
        vec![started_event(
            "Order",
            1,
            Payload::encode("not a number").expect("encode"),
        )],
    );
    d.feed(vec![]);
    let Some(Outcome::Failed { failure }) = d.machine().outcome() else {
        panic!("failed");
    };
    assert_eq!(failure.kind, "bad_input");
    assert!(failure.message.contains("Order"), "{}", failure.message);
}

#[test]
fn corrupt_and_foreign_histories_are_refused() {
    let d = order_history();
    // A gap in the numbering.
    let mut gap = d.history.clone();
    gap.remove(3);
    let err = loom_core::WorkflowMachine::new(workflow_type::<Order>(), "x".into(), gap)
        .expect_err("gap");
    assert!(
        matches!(err, ReplayError::Corrupt { seq: Some(s), .. } if s == Seq::new(5)),
        "{err}"
    );
    // A result for an activity that was never scheduled.
    let mut bogus = d.history.clone();
    bogus[3].kind = completed(loom_core::ActivityId(Seq::new(77)), true);
    let mut replay = Driver::with_history(workflow_type::<Order>(), bogus);
    let err = replay.step(vec![]).expect_err("bogus");
    assert!(
        matches!(err, ReplayError::Corrupt { seq: Some(s), .. } if s == Seq::new(4)),
        "{err}"
    );
    // Empty history, wrong first event.
    assert!(loom_core::WorkflowMachine::new(workflow_type::<Order>(), "x".into(), vec![]).is_err());
    assert!(
        loom_core::WorkflowMachine::new(
            workflow_type::<Order>(),
            "x".into(),
            d.history[1..].to_vec()
        )
        .is_err()
    );
    // Another workflow's history, another version, a newer format.
    let err = Driver::with_history(workflow_type::<Approval>(), d.history.clone())
        .step(vec![])
        .expect_err("wrong type");
    assert!(matches!(err, ReplayError::WrongWorkflow { .. }), "{err}");
    let mut v2 = d.history.clone();
    if let EventKind::WorkflowStarted { version, .. } = &mut v2[0].kind {
        *version = 2;
    }
    let err = Driver::with_history(workflow_type::<Order>(), v2)
        .step(vec![])
        .expect_err("version");
    assert!(
        matches!(
            err,
            ReplayError::VersionMismatch {
                recorded: 2,
                code: 1,
                ..
            }
        ),
        "{err}"
    );
    let mut future = d.history.clone();
    if let EventKind::WorkflowStarted { format, .. } = &mut future[0].kind {
        *format = loom_core::HISTORY_FORMAT + 1;
    }
    let err = Driver::with_history(workflow_type::<Order>(), future)
        .step(vec![])
        .expect_err("format");
    assert!(
        matches!(err, ReplayError::UnsupportedFormat { .. }),
        "{err}"
    );
}

#[derive(Default, Serialize, Deserialize)]
struct Counters {
    a: u32,
    b: u32,
    c: u32,
}

/// Writes several fields at once, one field, and none.
struct Writes;
impl Workflow for Writes {
    const NAME: &'static str = "Writes";
    type Input = ();
    type State = Counters;
    type Output = u32;
    async fn run(ctx: WorkflowContext<Self>) -> Result<u32, WorkflowError> {
        ctx.update_state(|s| {
            s.a = 1;
            s.b = 2;
        })?;
        ctx.update_state(|s| s.c = 3)?;
        ctx.update_state(|s| s.c = 3)?;
        let (a, b) = join(
            ctx.sleep(Duration::from_secs(1)),
            ctx.sleep(Duration::from_secs(2)),
        )
        .await;
        a?;
        b?;
        Ok(ctx.with_state(|s| s.a + s.b + s.c))
    }
}

#[test]
fn state_writes_are_recorded_as_set_or_batch_and_visible_in_progress() {
    let mut d = Driver::start::<Writes>(&());
    d.feed(vec![]);
    assert_eq!(
        d.kinds(),
        [
            "WorkflowStarted",
            "StateUpdated",
            "StateSet",
            "TimerScheduled",
            "TimerScheduled"
        ]
    );
    let progress = d.machine().progress();
    assert_eq!(
        progress.state.as_json(),
        &serde_json::json!({"a": 1, "b": 2, "c": 3})
    );
    assert_eq!(progress.pending_timers.len(), 2);
    let (t1, t2) = (d.timer(0), d.timer(1));
    d.crash();
    d.feed(vec![fired(t2), fired(t1)]);
    assert_eq!(
        d.machine().outcome(),
        Some(Outcome::Completed {
            output: Payload::encode(&6).expect("encode")
        })
    );
}

#[test]
fn events_after_the_end_are_refused_on_replay_and_dropped_live() {
    let mut d = order_history();
    let after = d.ok(vec![signal("late", 1)]);
    assert!(after.events.is_empty());
    assert!(after.dropped[0].1.contains("ended"));
    let mut tampered = d.history.clone();
    tampered.push(loom_core::Event {
        seq: Seq::new(tampered.len() as u64 + 1),
        at: Timestamp::from_millis(9),
        kind: signal("late", 1),
    });
    let err = Driver::with_history(workflow_type::<Order>(), tampered)
        .step(vec![])
        .expect_err("tampered");
    assert!(matches!(err, ReplayError::Corrupt { .. }), "{err}");
}

/// Logs, then waits: its first task issues no command.
struct LogsThenWaits;
impl Workflow for LogsThenWaits {
    const NAME: &'static str = "LogsThenWaits";
    type Input = ();
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        ctx.logger().info("waiting for go");
        ctx.wait_signal::<String>("go").await
    }
}

#[test]
fn a_first_task_without_commands_is_marked_so_replay_logs_nothing_twice() {
    let mut d = Driver::start::<LogsThenWaits>(&());
    let first = d.ok(vec![]);
    assert_eq!(first.logs.len(), 1);
    assert_eq!(d.kinds(), ["WorkflowStarted", "WorkflowTaskCompleted"]);
    // A fresh machine on that history replays the start: no second log line, no new events.
    d.crash();
    let again = d.ok(vec![]);
    assert!(
        again.logs.is_empty(),
        "the line was logged once: {:?}",
        again.logs
    );
    assert!(again.events.is_empty());
    d.crash();
    d.feed(vec![signal("go", "now")]);
    assert_eq!(
        d.machine().outcome(),
        Some(Outcome::Completed {
            output: Payload::encode("now").expect("encode")
        })
    );
    // The marker is not a message anyone can send.
    assert!(!EventKind::WorkflowTaskCompleted {}.is_message());
}

// ---- child workflows ----

/// The child the parents below start; loom-core never runs it, only records it.
struct Kid;
impl Workflow for Kid {
    const NAME: &'static str = "Kid";
    type Input = u32;
    type State = ();
    type Output = u32;
    async fn run(ctx: WorkflowContext<Self>) -> Result<u32, WorkflowError> {
        Ok(*ctx.input() + 1)
    }
}

/// Starts two children, one with a derived id and one with a chosen id, and adds their
/// outputs; a failed child is handled, a cancelled one is not.
struct Parent;
impl Workflow for Parent {
    const NAME: &'static str = "Parent";
    type Input = ();
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let first = ctx.child::<Kid>(1);
        let second = ctx
            .child::<Kid>(2)
            .with_id("chosen")
            .with_parent_close(ParentClosePolicy::Abandon);
        let (a, b) = join(first, second).await;
        let b = match b {
            Ok(v) => v.to_string(),
            Err(ChildError::Failed { failure, .. }) => format!("failed: {}", failure.kind),
            Err(e) => return Err(e.into()),
        };
        Ok(format!("{} and {b}", a?))
    }
}

fn child_ended(seq: u64, output: u32) -> EventKind {
    EventKind::ChildWorkflowCompleted {
        child: ChildId(Seq::new(seq)),
        output: Payload::encode(&output).expect("encode"),
    }
}

#[test]
fn children_are_started_with_derived_or_chosen_ids_and_their_ends_reach_the_code() {
    let mut d = Driver::start::<Parent>(&());
    let first = d.ok(vec![]);
    let started: Vec<_> = first
        .events
        .iter()
        .map(|e| match &e.kind {
            EventKind::ChildWorkflowScheduled {
                name,
                workflow_id,
                parent_close,
                ..
            } => (name.clone(), workflow_id.to_string(), *parent_close),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        started,
        vec![
            (
                "Kid".to_owned(),
                "wf-1/2".to_owned(),
                ParentClosePolicy::RequestCancel
            ),
            (
                "Kid".to_owned(),
                "chosen".to_owned(),
                ParentClosePolicy::Abandon
            ),
        ]
    );
    let progress = d.machine().progress();
    assert_eq!(progress.pending_children.len(), 2);
    assert_eq!(progress.pending_children[1].workflow_id.as_str(), "chosen");
    // A report for a child never started, and a second report for one, are dropped.
    let d2 = d.ok(vec![
        child_ended(9, 0),
        child_ended(2, 20),
        child_ended(2, 21),
    ]);
    assert_eq!(d2.dropped.len(), 2, "{:?}", d2.dropped);
    assert!(d2.dropped[0].1.contains("never started"));
    assert!(d2.dropped[1].1.contains("already ended"));
    d.crash();
    let failed = EventKind::ChildWorkflowFailed {
        child: ChildId(Seq::new(3)),
        failure: Failure::non_retryable("already_exists", "taken"),
    };
    d.feed(vec![failed]);
    assert_eq!(
        d.machine().outcome(),
        Some(Outcome::Completed {
            output: Payload::encode(&"20 and failed: already_exists").expect("encode")
        })
    );
    assert!(d.machine().progress().pending_children.is_empty());
}

#[test]
fn a_changed_child_is_a_nondeterminism_error() {
    let mut d = Driver::start::<Parent>(&());
    d.feed(vec![]);
    // The recorded child was started with input 1; the code now starts it with another.
    let mut history = d.history.clone();
    if let EventKind::ChildWorkflowScheduled { input, .. } = &mut history[1].kind {
        *input = Payload::encode(&7u32).expect("encode");
    }
    let mut replay = Driver::with_history(workflow_type::<Parent>(), history);
    let err = replay.step(vec![]).expect_err("the input changed");
    let nd = err.nondeterminism().expect("non-determinism");
    assert_eq!(nd.seq, Seq::new(2));
}

/// Waits for a child; a cancel of the parent resolves the wait.
struct Waits;
impl Workflow for Waits {
    const NAME: &'static str = "Waits";
    type Input = ();
    type State = ();
    type Output = ();
    async fn run(ctx: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        match ctx.child::<Kid>(1).await {
            Err(ChildError::ParentCancelled { workflow_id }) => {
                assert_eq!(workflow_id.as_str(), "wf-1/2");
                Err(WorkflowError::Cancelled)
            }
            other => other.map(drop).map_err(Into::into),
        }
    }
}

#[test]
fn cancelling_a_parent_resolves_its_wait_for_a_child_and_the_child_is_left_to_its_policy() {
    let mut d = Driver::start::<Waits>(&());
    d.feed(vec![]);
    let decided = d.ok(vec![cancel()]);
    assert!(matches!(
        decided.events.last().map(|e| &e.kind),
        Some(EventKind::WorkflowCancelled {})
    ));
    // The child is still open: the store applies its parent-close policy on this commit.
    let open = d.machine().progress().pending_children;
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].parent_close, ParentClosePolicy::RequestCancel);
}

#[test]
fn a_child_id_no_store_can_hold_is_an_error_without_a_command() {
    struct BadId;
    impl Workflow for BadId {
        const NAME: &'static str = "BadId";
        type Input = ();
        type State = ();
        type Output = String;
        async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
            match ctx.child::<Kid>(1).with_id("").await {
                Err(ChildError::Failed { failure, .. }) => Ok(failure.kind),
                other => Ok(format!("{other:?}")),
            }
        }
    }
    let mut d = Driver::start::<BadId>(&());
    let decided = d.ok(vec![]);
    assert_eq!(d.kinds(), vec!["WorkflowStarted", "WorkflowCompleted"]);
    assert!(matches!(
        &decided.events[0].kind,
        EventKind::WorkflowCompleted { output } if output.as_json() == "bad_input"
    ));
}

#[test]
fn a_child_knows_its_parent_from_its_first_event() {
    struct WhoIsMyParent;
    impl Workflow for WhoIsMyParent {
        const NAME: &'static str = "WhoIsMyParent";
        type Input = ();
        type State = ();
        type Output = String;
        async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
            Ok(ctx
                .parent()
                .map_or("none".into(), |p| format!("{}/{}", p.workflow_id, p.child)))
        }
    }
    let mut started = started_event("WhoIsMyParent", 1, Payload::NULL);
    if let EventKind::WorkflowStarted { parent, .. } = &mut started.kind {
        *parent = Some(ParentRef {
            run: 1,
            workflow_id: "order-1".into(),
            child: ChildId(Seq::new(6)),
        });
    }
    let mut d = Driver::with_history(workflow_type::<WhoIsMyParent>(), vec![started]);
    d.feed(vec![]);
    assert_eq!(
        d.machine().outcome(),
        Some(Outcome::Completed {
            output: Payload::encode(&"order-1/child#6").expect("encode")
        })
    );
    assert_eq!(
        d.machine().progress().parent.map(|p| p.child),
        Some(ChildId(Seq::new(6)))
    );
}

// ---- cancelling the timers and activities the code stops waiting for ----

#[test]
fn the_timer_of_a_signal_wait_is_cancelled_when_the_signal_wins_and_never_wakes_the_run() {
    let mut d = Driver::start::<Approval>(&60);
    d.feed(vec![]);
    let nap = d.timer(0);
    d.feed(vec![fired(nap)]);
    let timeout = d.timer(1);
    d.feed(vec![signal("approve", true)]);
    let tail: Vec<_> = d.kinds().into_iter().rev().take(3).collect();
    assert_eq!(
        tail,
        ["WorkflowCompleted", "TimerCancelled", "SignalReceived"],
        "{:?}",
        d.kinds()
    );
    assert_eq!(
        d.history[d.history.len() - 2].kind,
        EventKind::TimerCancelled { timer_id: timeout }
    );
    // Replayed on a fresh machine, the same command is issued at the same place.
    d.crash();
    let replayed = d.ok(vec![]);
    assert!(replayed.events.is_empty());
}

/// Waits for a signal or an hour, whichever comes first, then sleeps on.
struct Patient;
impl Workflow for Patient {
    const NAME: &'static str = "Patient";
    type Input = ();
    type State = ();
    type Output = ();
    async fn run(ctx: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        ctx.wait_signal_timeout::<()>("go", Duration::from_secs(3_600))
            .await?;
        ctx.sleep(Duration::from_secs(60)).await
    }
}

#[test]
fn a_cancelled_timer_that_fires_anyway_is_dropped_and_not_pending() {
    let mut d = Driver::start::<Patient>(&());
    d.feed(vec![]);
    let hour = d.timer(0);
    d.feed(vec![signal("go", ())]);
    let pending: Vec<_> = d
        .machine()
        .progress()
        .pending_timers
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(pending, vec![d.timer(1)], "only the minute's timer waits");
    let late = d.ok(vec![fired(hour)]);
    assert!(late.events.is_empty());
    assert!(
        late.dropped[0].1.contains("was cancelled"),
        "{:?}",
        late.dropped
    );
    assert_eq!(d.machine().outcome(), None, "the run sleeps on");
}

#[test]
fn the_loser_of_a_race_is_cancelled_and_its_late_result_dropped() {
    let mut d = Driver::start::<Race>(&());
    d.feed(vec![]);
    let (call, timer) = (d.activity(0), d.timer(0));
    d.feed(vec![fired(timer)]);
    assert!(
        d.history
            .iter()
            .any(|e| e.kind == EventKind::ActivityCancelled { activity_id: call }),
        "{:?}",
        d.kinds()
    );
    let late = d.ok(vec![completed(call, true)]);
    assert!(late.events.is_empty());
    assert_eq!(late.dropped.len(), 1, "the run has ended");
    // The other way round: the activity wins, the timer is cancelled.
    let mut d = Driver::start::<Race>(&());
    d.feed(vec![]);
    let (call, timer) = (d.activity(0), d.timer(0));
    d.feed(vec![completed(call, true)]);
    assert!(
        d.history
            .iter()
            .any(|e| e.kind == EventKind::TimerCancelled { timer_id: timer })
    );
}

#[test]
fn a_cancel_request_cancels_the_timer_it_interrupts() {
    let mut d = Driver::start::<CancelMeLater>(&());
    d.feed(vec![]);
    let timer = d.timer(0);
    d.feed(vec![cancel()]);
    assert_eq!(
        d.kinds()[2..],
        ["CancelRequested", "TimerCancelled", "WorkflowCancelled"]
    );
    assert_eq!(
        d.history[3].kind,
        EventKind::TimerCancelled { timer_id: timer }
    );
}

/// Sleeps a day; a cancel ends it.
struct CancelMeLater;
impl Workflow for CancelMeLater {
    const NAME: &'static str = "CancelMeLater";
    type Input = ();
    type State = ();
    type Output = ();
    async fn run(ctx: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        ctx.sleep(Duration::from_secs(86_400)).await
    }
}

#[test]
fn a_run_of_the_first_history_format_cancels_nothing_so_its_history_replays_as_written() {
    let mut started = started_event("Approval", 1, Payload::encode(&60u64).expect("encode"));
    if let EventKind::WorkflowStarted { format, .. } = &mut started.kind {
        *format = 1;
    }
    let mut d = Driver::with_history(workflow_type::<Approval>(), vec![started]);
    d.feed(vec![]);
    let nap = d.timer(0);
    d.feed(vec![fired(nap)]);
    d.feed(vec![signal("approve", true)]);
    assert!(
        !d.kinds().contains(&"TimerCancelled"),
        "format 1 issues no cancel: {:?}",
        d.kinds()
    );
    assert_eq!(
        d.machine().outcome(),
        Some(Outcome::Completed {
            output: Payload::encode("approved").expect("encode")
        })
    );
}

#[test]
fn a_terminated_history_replays_to_its_end_without_running_the_code_further() {
    let mut d = Driver::start::<CancelMeLater>(&());
    d.feed(vec![]);
    let terminated = loom_core::Event {
        seq: Seq::new(d.history.len() as u64 + 1),
        at: Timestamp::from_millis(5_000),
        kind: EventKind::WorkflowTerminated {
            reason: "ops".into(),
        },
    };
    let mut history = d.history.clone();
    history.push(terminated);
    let mut replay = Driver::with_history(workflow_type::<CancelMeLater>(), history);
    let decided = replay.ok(vec![fired(d.timer(0))]);
    assert!(decided.events.is_empty(), "{:?}", decided.events);
    assert_eq!(decided.dropped.len(), 1, "the run has ended");
    assert_eq!(
        replay.machine().outcome(),
        Some(Outcome::Terminated {
            reason: "ops".into()
        })
    );
}

#[test]
fn termination_is_never_a_message_and_a_request_for_it_is_the_runtimes() {
    let mut d = Driver::start::<CancelMeLater>(&());
    d.feed(vec![]);
    let decided = d.ok(vec![
        EventKind::WorkflowTerminated {
            reason: "forged".into(),
        },
        EventKind::TerminateRequested {
            reason: "parent".into(),
        },
    ]);
    assert!(decided.events.is_empty());
    assert_eq!(decided.dropped.len(), 2, "{:?}", decided.dropped);
    assert!(decided.dropped[1].1.contains("runtime"));
    assert_eq!(d.machine().outcome(), None);
}

// ---- stall detection ----

/// Runs an activity, then waits for something that is not Loom's.
struct WaitsOnNothingOfLooms;
impl Workflow for WaitsOnNothingOfLooms {
    const NAME: &'static str = "WaitsOnNothingOfLooms";
    type Input = ();
    type State = ();
    type Output = ();
    async fn run(ctx: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        ctx.activity::<Charge>(1).await?;
        let timer = ctx.sleep(Duration::from_secs(1));
        // Joined with a Loom timer: not stalled while the timer is outstanding.
        let ((), fired) = join(std::future::pending::<()>(), timer).await;
        fired
    }
}

#[test]
fn code_blocked_on_something_not_looms_is_stalled_once_nothing_of_looms_is_outstanding() {
    let mut d = Driver::start::<WaitsOnNothingOfLooms>(&());
    d.feed(vec![]);
    let charge = d.activity(0);
    // The activity's result arrives; the code now waits on a timer and on nothing of Loom's.
    d.feed(vec![completed(charge, true)]);
    let timer = d.timer(0);
    let err = d.step(vec![fired(timer)]).expect_err("stalled");
    assert!(matches!(err, ReplayError::Stalled { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("not Loom's") && text.contains("ctx.sleep"),
        "{text}"
    );
    // Nothing was appended: the history ends before the timer fired, and a replay stalls
    // at the same place.
    assert_eq!(d.kinds().last(), Some(&"TimerScheduled"));
    let again = d.step(vec![fired(timer)]).expect_err("stalled again");
    assert!(matches!(again, ReplayError::Stalled { .. }));
}

/// Waits for 40 signals at once: more than `join_all` polls one by one.
struct ManySignals;
impl Workflow for ManySignals {
    const NAME: &'static str = "ManySignals";
    type Input = ();
    type State = ();
    type Output = usize;
    async fn run(ctx: WorkflowContext<Self>) -> Result<usize, WorkflowError> {
        let waits = (0..40).map(|i| ctx.wait_signal::<u32>(format!("s{i}")));
        let got = join_all(waits).await;
        Ok(got.into_iter().filter(Result::is_ok).count())
    }
}

#[test]
fn signal_waits_count_as_outstanding_however_they_are_polled() {
    let mut d = Driver::start::<ManySignals>(&());
    d.feed(vec![]);
    for i in 0..39 {
        d.feed(vec![signal(&format!("s{i}"), i)]);
    }
    assert_eq!(d.machine().outcome(), None);
    d.crash();
    d.feed(vec![signal("s39", 39)]);
    assert_eq!(
        d.machine().outcome(),
        Some(Outcome::Completed {
            output: Payload::encode(&40usize).expect("encode")
        })
    );
}

// ---- typed signals ----

struct Approve;
impl loom_core::Signal for Approve {
    const NAME: &'static str = "approve";
    type Payload = bool;
}

/// Takes the first well-formed `approve`, skipping malformed ones.
struct TypedApproval;
impl Workflow for TypedApproval {
    const NAME: &'static str = "TypedApproval";
    type Input = ();
    type State = ();
    type Output = (bool, u32);
    fn signals(signals: &mut loom_core::Signals) {
        signals.add::<Approve>();
    }
    async fn run(ctx: WorkflowContext<Self>) -> Result<(bool, u32), WorkflowError> {
        let mut skipped = 0;
        loop {
            match ctx.signal::<Approve>().await {
                Ok(approved) => return Ok((approved, skipped)),
                Err(loom_core::SignalError::BadPayload { signal, .. }) => {
                    assert_eq!(signal, "approve");
                    skipped += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[test]
fn a_typed_signal_that_does_not_decode_is_a_value_the_code_handles() {
    let mut d = Driver::start::<TypedApproval>(&());
    d.feed(vec![]);
    d.feed(vec![signal("approve", "yes please")]);
    assert_eq!(
        d.machine().outcome(),
        None,
        "a bad payload does not end the run"
    );
    d.crash();
    d.feed(vec![signal("approve", true)]);
    assert_eq!(
        d.machine().outcome(),
        Some(Outcome::Completed {
            output: Payload::encode(&(true, 1)).expect("encode")
        })
    );
    // What a checking client asks of the type.
    let def = workflow_type::<TypedApproval>();
    assert!(
        def.check_signal("approve", &Payload::encode(&true).expect("encode"))
            .is_ok()
    );
    let bad = def
        .check_signal("approve", &Payload::encode(&"yes").expect("encode"))
        .expect_err("wrong type");
    assert!(bad.contains("does not fit"), "{bad}");
    let unknown = def
        .check_signal("reject", &Payload::NULL)
        .expect_err("unknown name");
    assert!(unknown.contains("takes no signal \"reject\""), "{unknown}");
    // A type that declares no signals takes any.
    assert!(
        workflow_type::<CancelMeLater>()
            .check_signal("anything", &Payload::NULL)
            .is_ok()
    );
}

#[test]
fn a_timed_out_history_replays_to_its_end_and_a_timeout_message_is_the_runtimes() {
    let mut d = Driver::start::<CancelMeLater>(&());
    d.feed(vec![]);
    let fired_msg = d.ok(vec![EventKind::TimeoutFired {
        scope: loom_core::TimeoutScope::Run,
    }]);
    assert!(fired_msg.events.is_empty());
    assert!(fired_msg.dropped[0].1.contains("runtime"));
    let mut history = d.history.clone();
    history.push(loom_core::Event {
        seq: Seq::new(history.len() as u64 + 1),
        at: Timestamp::from_millis(9_000),
        kind: EventKind::WorkflowTimedOut {
            scope: loom_core::TimeoutScope::Run,
        },
    });
    let mut replay = Driver::with_history(workflow_type::<CancelMeLater>(), history);
    replay.feed(vec![]);
    assert_eq!(
        replay.machine().outcome(),
        Some(Outcome::TimedOut {
            scope: loom_core::TimeoutScope::Run
        })
    );
}

/// Waits for signal `a`; continues as new with the input plus what it got, until the input
/// reaches 10; in a later run it also starts a child with a derived id.
struct Relay;

impl Workflow for Relay {
    const NAME: &'static str = "Relay";
    type Input = u32;
    type State = ();
    type Output = u32;

    async fn run(ctx: WorkflowContext<Self>) -> Result<u32, WorkflowError> {
        let got: u32 = ctx.wait_signal("a").await?;
        let next = *ctx.input() + got;
        if ctx.run() > 1 {
            ctx.child::<Relay>(100).await.ok();
        }
        if next >= 10 {
            return Ok(next);
        }
        Err(ctx.continue_as_new(next))
    }
}

#[test]
fn continue_as_new_ends_the_run_and_describes_the_next() {
    let mut d = Driver::start::<Relay>(&1);
    d.feed(vec![]);
    // `b` arrives first and is never taken; `a` ends the run; the last `a` comes after the
    // end and is carried after `b`, in order; a cancel request after the end is left for the
    // store to carry.
    let decision = d.ok(vec![
        signal("b", 7),
        signal("a", 2),
        signal("a", 5),
        cancel(),
    ]);
    assert_eq!(
        decision.left_for_next_run,
        vec![3],
        "the cancel request is left"
    );
    assert!(decision.dropped.is_empty(), "{:?}", decision.dropped);
    let last = decision.events.last().expect("events");
    match &last.kind {
        EventKind::WorkflowContinuedAsNew { input, signals } => {
            assert_eq!(input.decode::<u32>().expect("u32"), 3);
            let names: Vec<&str> = signals.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["b", "a"], "the untaken `b`, then the late `a`");
            assert_eq!(signals[1].payload, Payload::encode(&5).expect("encode"));
        }
        other => panic!("the run ended with {other}"),
    }
    let machine = d.machine();
    assert!(matches!(
        machine.outcome(),
        Some(loom_core::Outcome::ContinuedAsNew { .. })
    ));
    let next = machine.next_run().expect("a next run");
    assert_eq!(next.seq, Seq::FIRST);
    assert_eq!(next.at, last.at);
    match &next.kind {
        EventKind::WorkflowStarted {
            name, input, run, ..
        } => {
            assert_eq!(name, "Relay");
            assert_eq!(input.decode::<u32>().expect("u32"), 3);
            assert_eq!(*run, 2);
        }
        other => panic!("the next run starts with {other}"),
    }
    // Replayed from scratch, the ended run ends the same way and adds nothing.
    d.crash();
    let again = d.ok(vec![]);
    assert!(again.events.is_empty());
    assert!(d.machine().next_run().is_some());

    // The next run: its child's derived id names the run.
    let mut d2 = Driver::with_history(workflow_type::<Relay>(), vec![next]);
    assert_eq!(
        d2.ok(vec![signal("a", 1)])
            .events
            .iter()
            .find_map(|e| match &e.kind {
                EventKind::ChildWorkflowScheduled { workflow_id, .. } =>
                    Some(workflow_id.to_string()),
                _ => None,
            }),
        Some("wf-1/run2/3".to_owned())
    );
    assert_eq!(d2.machine().run(), 2);
    assert_eq!(d2.machine().progress().run, 2);
}

/// Fails with the kind its input names.
struct Fragile;

impl Workflow for Fragile {
    const NAME: &'static str = "Fragile";
    type Input = String;
    type State = ();
    type Output = ();

    async fn run(ctx: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        Err(WorkflowError::Failed(Failure::new(
            ctx.input().clone(),
            format!("attempt {} failed", ctx.attempt()),
        )))
    }
}

fn fragile(kind: &str, attempt: u32, policy: Option<loom_core::RetryPolicy>) -> Driver {
    let mut started = started_event("Fragile", 1, Payload::encode(&kind).expect("encode"));
    if let EventKind::WorkflowStarted {
        retry, attempt: a, ..
    } = &mut started.kind
    {
        *retry = policy;
        *a = attempt;
    }
    Driver::with_history(workflow_type::<Fragile>(), vec![started])
}

#[test]
fn a_failed_run_under_a_retry_policy_names_its_next_attempt() {
    let policy = loom_core::RetryPolicy {
        max_attempts: 3,
        non_retryable: vec!["fatal".into()],
        ..loom_core::RetryPolicy::default()
    };
    let mut d = fragile("flaky", 1, Some(policy.clone()));
    let decision = d.ok(vec![]);
    assert!(matches!(
        decision.events.last().map(|e| &e.kind),
        Some(EventKind::WorkflowFailed { failure }) if failure.message == "attempt 1 failed"
    ));
    let next = d.machine().next_run().expect("retried");
    match next.kind {
        EventKind::WorkflowStarted {
            input,
            attempt,
            run,
            retry,
            ..
        } => {
            assert_eq!(
                input.decode::<String>().expect("input"),
                "flaky",
                "the same input"
            );
            assert_eq!((attempt, run), (2, 2));
            assert_eq!(retry, Some(policy.clone()));
        }
        other => panic!("{other}"),
    }
    // The last attempt, a kind never retried, and no policy: the failure is final.
    for mut d in [
        fragile("flaky", 3, Some(policy.clone())),
        fragile("fatal", 1, Some(policy.clone())),
        fragile("flaky", 1, None),
    ] {
        d.feed(vec![]);
        assert!(d.machine().next_run().is_none());
        assert!(matches!(
            d.machine().outcome(),
            Some(Outcome::Failed { .. })
        ));
    }
}

/// Ignores a cancel request and fails.
struct Stubborn;

impl Workflow for Stubborn {
    const NAME: &'static str = "Stubborn";
    type Input = ();
    type State = ();
    type Output = ();

    async fn run(ctx: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        let _ = ctx.wait_signal::<u32>("go").await;
        Err(WorkflowError::failed("flaky", "it broke"))
    }
}

#[test]
fn a_run_asked_to_cancel_is_not_retried() {
    let mut started = started_event("Stubborn", 1, Payload::NULL);
    if let EventKind::WorkflowStarted { retry, .. } = &mut started.kind {
        *retry = Some(loom_core::RetryPolicy::default());
    }
    let mut d = Driver::with_history(workflow_type::<Stubborn>(), vec![started.clone()]);
    d.feed(vec![]);
    d.feed(vec![cancel()]);
    assert!(matches!(
        d.machine().outcome(),
        Some(Outcome::Failed { .. })
    ));
    assert!(
        d.machine().next_run().is_none(),
        "a cancelled run's failure is final"
    );
    // Without the cancel request, the same failure is retried; what comes after it is left.
    let mut d = Driver::with_history(workflow_type::<Stubborn>(), vec![started]);
    d.feed(vec![]);
    let decision = d.ok(vec![signal("go", 1), signal("go", 2)]);
    assert!(d.machine().next_run().is_some());
    assert_eq!(
        decision.left_for_next_run,
        vec![1],
        "the second signal waits for the next run"
    );
}

/// Starts a child, waits for a signal, starts another.
struct TwoKids;
impl Workflow for TwoKids {
    const NAME: &'static str = "TwoKids";
    type Input = ();
    type State = ();
    type Output = u32;
    async fn run(ctx: WorkflowContext<Self>) -> Result<u32, WorkflowError> {
        let a = ctx.child::<Kid>(1).await?;
        ctx.wait_signal::<u32>("go").await?;
        let b = ctx.child::<Kid>(2).await?;
        Ok(a + b)
    }
}

#[test]
fn a_run_begun_by_a_reset_replays_the_child_ids_its_prefix_recorded() {
    let mut d = Driver::start::<TwoKids>(&());
    d.feed(vec![]); // 2: the first child, "wf-1/2"
    d.feed(vec![child_ended(2, 2), signal("go", 0)]); // 3, 4, then 5: the second child
    assert_eq!(
        d.history[4].kind.type_name(),
        "ChildWorkflowScheduled",
        "{:?}",
        d.kinds()
    );
    // A reset to event 3 begins run 2 with the first three events.
    let point = Seq::new(3);
    assert!(loom_core::history::is_reset_point(&d.history, point));
    let mut prefix = d.history[..3].to_vec();
    if let EventKind::WorkflowStarted { run, reset, .. } = &mut prefix[0].kind {
        *run = 2;
        *reset = Some(loom_core::ResetOrigin {
            run: 1,
            point,
            reason: "ops".into(),
        });
    }
    let mut reset = Driver::with_history(workflow_type::<TwoKids>(), prefix);
    let decision = reset.ok(vec![signal("go", 0)]);
    let ids: Vec<String> = decision
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ChildWorkflowScheduled { workflow_id, .. } => Some(workflow_id.to_string()),
            _ => None,
        })
        .collect();
    // The first child keeps the id run 1 gave it; the new one takes run 2's, so it never
    // collides with the child run 1 started at the same position.
    assert_eq!(ids, ["wf-1/run2/5"]);
    assert!(matches!(
        &reset.history[1].kind,
        EventKind::ChildWorkflowScheduled { workflow_id, .. } if workflow_id.as_str() == "wf-1/2"
    ));
    reset.feed(vec![child_ended(5, 3)]);
    assert_eq!(
        reset.machine().outcome(),
        Some(Outcome::Completed {
            output: Payload::encode(&5u32).expect("encode")
        })
    );
}

/// Version 2 of `Kid`: same name, other code.
struct KidV2;
impl Workflow for KidV2 {
    const NAME: &'static str = "Kid";
    const VERSION: u32 = 2;
    type Input = u32;
    type State = ();
    type Output = u32;
    async fn run(ctx: WorkflowContext<Self>) -> Result<u32, WorkflowError> {
        Ok(*ctx.input() + 100)
    }
}

#[test]
fn versions_of_one_type_are_registered_side_by_side() {
    let mut registry = loom_core::Registry::new();
    registry
        .add_workflow::<Kid>()
        .and_then(|r| r.add_workflow::<KidV2>())
        .expect("two versions of one name");
    assert_eq!(registry.workflow_versions("Kid"), [1, 2]);
    assert_eq!(
        registry.workflow("Kid").map(|w| w.version()),
        Some(2),
        "the newest for new runs"
    );
    assert_eq!(
        registry.workflow_version("Kid", 1).map(|w| w.version()),
        Some(1)
    );
    assert!(registry.workflow_version("Kid", 3).is_none());
    assert_eq!(registry.workflow_names().collect::<Vec<_>>(), ["Kid"]);
    let err = registry
        .add_workflow::<KidV2>()
        .expect_err("the same version twice");
    assert!(
        err.to_string().contains("version 2 of workflow \"Kid\""),
        "{err}"
    );
    // A run of version 1 replays on version 1's code, and only there.
    let history = vec![started_event(
        "Kid",
        1,
        Payload::encode(&1u32).expect("encode"),
    )];
    let mut on_v1 = Driver::with_history(
        registry.workflow_version("Kid", 1).expect("v1").clone(),
        history.clone(),
    );
    on_v1.feed(vec![]);
    assert_eq!(
        on_v1.machine().outcome(),
        Some(Outcome::Completed {
            output: Payload::encode(&2u32).expect("encode")
        })
    );
    let mut on_v2 = Driver::with_history(workflow_type::<KidV2>(), history);
    let err = on_v2.step(vec![]).expect_err("another version");
    assert!(
        err.to_string().contains("register version 1 beside it"),
        "{err}"
    );
}
