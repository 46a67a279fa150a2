//! The conformance suite: one set of behaviours every backend must show, by topic.
//!
//! Each case is a public async function that takes a fresh, empty store. A backend's tests run
//! them all with one macro call, which makes one named test per case:
//!
//! ```text
//! loom_storage::conformance_tests!(|| async { std::sync::Arc::new(MyStorage::open_temp().await) });
//! ```
//!
//! Cases that need time to pass use leases of 400 ms and real sleeps of 700 ms, so the suite
//! stays fast on any backend, including those that judge time by the database's clock, and
//! holds on a loaded machine. Timers "not yet due" are an hour away; "due" ones an hour ago.
//! The [`differential`] test holds every backend to `MemoryStorage` on generated sequences of
//! operations; [`crash`] is the kill test every file backend runs.

#![allow(clippy::missing_panics_doc)]

mod activities;
mod affinity;
mod children;
pub mod crash;

pub mod differential;
mod eager;
mod messages;
mod operations;
mod reads;
mod reset;
mod runs;
mod schedules;
mod tags;
mod tasks;
mod workflows;

use std::sync::Arc;
use std::time::Duration;

use loom_core::{
    ActivityId, ActivityOptions, Event, EventKind, HISTORY_FORMAT, Payload, Seq, Timestamp,
    WorkflowId,
};

pub use activities::*;
pub use affinity::*;
pub use children::*;
pub use eager::*;
pub use messages::*;
pub use operations::*;
pub use reads::*;
pub use reset::*;
pub use runs::*;
pub use schedules::*;
pub use tags::*;
pub use tasks::*;
pub use workflows::*;

use crate::{
    ActivityTask, ActivityTaskCompletion, AfterActivity, ClaimRequest, Storage, WorkflowTask,
    WorkflowTaskCompletion,
};

/// A fresh store for one case.
pub type Store = Arc<dyn Storage>;

const LEASE: Duration = Duration::from_secs(30);
// Long enough that a claim and an immediate renewal finish inside it on a loaded machine with
// a database server on the same two cores (60 ms was not); short enough to keep the suite fast.
const SHORT_LEASE: Duration = Duration::from_millis(400);
const PAST_SHORT_LEASE: Duration = Duration::from_millis(700);
const HOUR: Duration = Duration::from_secs(3_600);
const HOUR_MS: i64 = 3_600_000;

fn wid(s: &str) -> WorkflowId {
    WorkflowId::new(s)
}

fn json(v: impl serde::Serialize) -> Payload {
    Payload::encode(&v).expect("encodable")
}

fn wall_now() -> Timestamp {
    crate::clock::Clock::now(&crate::clock::SystemClock)
}

fn started(name: &str, input: impl serde::Serialize) -> Event {
    Event {
        seq: Seq::FIRST,
        at: wall_now(),
        kind: EventKind::WorkflowStarted {
            traceparent: None,
            tags: Default::default(),
            reset: None,
            attempt: 1,
            retry: None,
            run: 1,
            name: name.into(),
            version: 1,
            input: json(input),
            format: HISTORY_FORMAT,
            timeouts: Default::default(),
            parent: None,
        },
    }
}

fn event(seq: u64, kind: EventKind) -> Event {
    Event {
        seq: Seq::new(seq),
        at: wall_now(),
        kind,
    }
}

/// `ActivityScheduled` of activity type `name` with `input` and default options.
pub fn schedule(name: &str, input: impl serde::Serialize) -> EventKind {
    EventKind::ActivityScheduled {
        name: name.into(),
        input: json(input),
        options: ActivityOptions::default(),
    }
}

fn step(name: &str) -> EventKind {
    EventKind::StepStarted { name: name.into() }
}

fn timer_at(fire_at: Timestamp) -> EventKind {
    EventKind::TimerScheduled {
        fire_at,
        duration_ms: None,
    }
}

fn timer_after(d: Duration) -> EventKind {
    EventKind::TimerScheduled {
        fire_at: wall_now().saturating_add(d),
        duration_ms: Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// A claim of up to `n` tasks by the owner `conformance`, leased for 30 s.
pub fn claim(n: usize) -> ClaimRequest {
    ClaimRequest::new("conformance", n, LEASE)
}

/// Creates workflow `id` of the type `Conformance`, its input the id.
pub async fn create(store: &Store, id: &str) {
    store
        .create_workflow(&wid(id), started("Conformance", id))
        .await
        .expect("create");
}

/// Claims the one ready workflow task (failing unless there is exactly one).
pub async fn claim_workflow(store: &Store) -> WorkflowTask {
    let mut tasks = store.claim_workflow_tasks(&claim(1)).await.expect("claim");
    assert_eq!(tasks.len(), 1, "expected exactly one ready workflow task");
    tasks.remove(0)
}

async fn claim_activity(store: &Store) -> ActivityTask {
    let mut tasks = store.claim_activity_tasks(&claim(1)).await.expect("claim");
    assert_eq!(tasks.len(), 1, "expected exactly one ready activity task");
    tasks.remove(0)
}

/// Commits `kinds` as the task's new events, consuming all its messages.
pub fn completion(task: &WorkflowTask, kinds: Vec<EventKind>) -> WorkflowTaskCompletion {
    let first = task.last_seq.get() + 1;
    WorkflowTaskCompletion {
        next_run: None,
        lease: task.lease,
        workflow_id: task.workflow_id.clone(),
        expected_last_seq: task.last_seq,
        events: kinds
            .into_iter()
            .enumerate()
            .map(|(i, k)| event(first + i as u64, k))
            .collect(),
        consumed: task.messages.iter().map(|m| m.id).collect(),
        progress: None,
        logs: Vec::new(),
        eager: None,
        affinity: None,
    }
}

/// Claims the one ready workflow task and commits `kinds` with it.
async fn advance(store: &Store, kinds: Vec<EventKind>) -> WorkflowTask {
    let task = claim_workflow(store).await;
    store
        .complete_workflow_task(completion(&task, kinds))
        .await
        .expect("complete");
    task
}

/// The task's attempt completed with `value`.
pub fn completed(task: &ActivityTask, value: impl serde::Serialize) -> ActivityTaskCompletion {
    ActivityTaskCompletion {
        lease: task.lease,
        workflow_id: task.workflow_id.clone(),
        result: EventKind::ActivityCompleted {
            activity_id: task.activity_id,
            attempt: task.attempt,
            result: json(value),
        },
        retry_after: None,
        then: AfterActivity::Nothing,
    }
}

/// Creates workflow `id` and runs its first task, which schedules one activity.
async fn with_scheduled_activity(store: &Store, id: &str) -> ActivityId {
    create(store, id).await;
    advance(store, vec![schedule("charge", 5)]).await;
    ActivityId(Seq::new(2))
}

async fn no_ready_workflow_task(store: &Store) {
    let tasks = store.claim_workflow_tasks(&claim(10)).await.expect("claim");
    assert!(
        tasks.is_empty(),
        "expected no ready workflow task, got {tasks:?}"
    );
}

async fn no_ready_activity_task(store: &Store) {
    let tasks = store.claim_activity_tasks(&claim(10)).await.expect("claim");
    assert!(
        tasks.is_empty(),
        "expected no ready activity task, got {tasks:?}"
    );
}

async fn history_len(store: &Store, id: &str) -> usize {
    store
        .load_history(&wid(id), Seq::ZERO)
        .await
        .expect("history")
        .len()
}

/// Runs every case, each on a fresh store, from one test; for backends that prefer one
/// test over many. The macro [`conformance_tests!`](crate::conformance_tests) makes one
/// test per case instead.
pub async fn run_all<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Store>,
{
    macro_rules! each {
        (() $($case:ident),* $(,)?) => { $( $case(fresh().await).await; )* };
    }
    crate::for_each_conformance_case!(each, ());
}

/// Calls `$m!(($extra) case, case, ...)` with the names of every conformance case. Used by
/// [`conformance_tests!`](crate::conformance_tests) and [`run_all`], so that adding a case here
/// adds it everywhere.
#[doc(hidden)]
#[macro_export]
macro_rules! for_each_conformance_case {
    ($m:path, ($($extra:tt)*)) => {
        $m! {
            ($($extra)*)
            create_then_describe,
            create_twice_is_already_exists,
            create_rejects_anything_but_a_started_event,
            create_refuses_ids_a_database_cannot_hold,
            unknown_workflows_are_not_found,
            load_history_after_a_sequence_number,
            events_round_trip_exactly,
            a_commit_naming_the_wrong_last_event_conflicts,
            a_commit_rejects_gaps_and_restarts,
            a_new_workflow_is_claimed_once,
            claims_respect_max_and_age,
            concurrent_claimers_never_share_a_task,
            completion_appends_and_releases,
            an_expired_lease_cannot_commit,
            a_reclaimed_task_fences_out_the_old_holder,
            renewal_extends_a_live_lease_only,
            a_lease_commits_only_its_own_task,
            release_and_pause,
            release_is_timed_by_the_store,
            scheduled_activities_become_tasks,
            an_attempt_says_since_when_it_was_ready,
            a_workflow_task_says_since_when_it_was_ready,
            an_activity_result_wakes_the_workflow,
            a_failed_attempt_schedules_the_next,
            an_activity_result_must_match_its_task,
            an_expired_activity_lease_cannot_report,
            an_eager_commit_claims_only_its_own_activities,
            an_eager_claim_takes_the_oldest_first,
            an_eager_activity_commit_claims_the_woken_task,
            eager_claims_are_made,
            a_decision_ahead_is_applied,
            a_decision_ahead_is_applied_whole_or_not_at_all,
            a_decision_ahead_must_be_well_formed,
            an_affinity_keeps_a_task_for_its_owner,
            an_owner_takes_its_own_tasks_first,
            an_affinity_ends_with_a_release_or_a_commit_without_one,
            an_activity_commit_claims_only_a_task_it_may_take,
            an_affinity_must_name_an_owner,
            forgetting_an_owner_frees_its_tasks,
            timers_not_due_are_not_handed_out,
            timers_are_timed_by_the_store,
            due_timers_are_delivered,
            only_due_messages_are_delivered,
            signals_before_the_workflow_waits_are_kept_in_order,
            a_signal_during_a_task_is_delivered_next,
            a_cancel_request_is_delivered,
            ending_a_workflow_closes_it,
            failed_and_cancelled_are_recorded,
            a_late_activity_result_after_the_end_is_refused,
            list_is_newest_first_and_pages,
            list_filters,
            stats_count_what_is_there,
            the_backlog_counts_open_tasks_by_kind,
            logs_are_kept_with_their_task,
            pending_shows_tasks_and_messages,
            a_child_is_started_with_its_parents_commit,
            a_child_whose_id_is_taken_is_refused_to_its_parent,
            a_childs_end_is_reported_to_its_parent,
            a_child_outliving_its_parent_reports_to_nobody,
            a_closing_parent_applies_each_childs_policy,
            a_child_start_is_checked,
            a_cancelled_timer_never_wakes_the_workflow,
            a_cancelled_activity_is_not_run_and_a_running_one_loses_its_lease,
            terminate_ends_a_run_at_once,
            terminate_is_checked,
            termination_reaches_parents_and_children,
            a_timeout_set_at_start_fires_when_it_passes,
            continue_as_new_starts_the_next_run,
            the_next_run_keeps_what_came_from_outside,
            continue_as_new_is_checked,
            a_childs_end_reaches_only_the_run_that_started_it,
            a_failed_run_under_a_retry_policy_is_retried_as_a_new_run,
            a_child_started_as_the_run_ends_is_created_and_told,
            a_paused_workflow_waits_until_resumed,
            resume_retries_a_workflow_paused_by_its_code,
            pause_and_resume_are_checked,
            a_paused_workflow_can_be_terminated,
            purge_deletes_only_closed_workflows,
            a_failed_run_is_reset_to_before_its_failure,
            an_open_run_is_reset_and_fenced,
            a_reset_without_signals_drops_them,
            reset_is_checked,
            tags_are_kept_and_listed,
            schedules_are_created_read_listed_and_deleted,
            creates_of_one_schedule_at_once_write_one,
            a_schedule_write_names_the_version_it_read,
            due_schedules_are_those_whose_time_has_come,
            a_ticks_starts_are_written_with_it_or_not_at_all,
            a_ticks_cancels_and_terminations_reach_only_open_workflows
        }
    };
}

/// Makes one test function per case; the body of [`conformance_tests!`](crate::conformance_tests).
#[doc(hidden)]
#[macro_export]
macro_rules! __loom_conformance_fns {
    (($fresh:expr) $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fresh = $fresh;
                $crate::conformance::$case(fresh().await).await;
            }
        )*
    };
}

/// Makes one test function per case on a store that may be missing; the body of
/// `conformance_tests!(optional: ...)`.
#[doc(hidden)]
#[macro_export]
macro_rules! __loom_conformance_optional_fns {
    (($fresh:expr) $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fresh = $fresh;
                let Some(store) = fresh().await else {
                    return;
                };
                $crate::conformance::$case(store).await;
            }
        )*
    };
}

/// Makes one `#[tokio::test]` per conformance case, each on a store from `$fresh`, an
/// expression of type `Fn() -> impl Future<Output = Arc<dyn Storage>>`. The calling crate
/// needs tokio (with `macros` and `rt-multi-thread`) among its dev-dependencies.
///
/// For a backend that needs a server, `conformance_tests!(optional: fresh)` takes a factory
/// returning `Option<Arc<dyn Storage>>`: `None` skips the case (the factory says so loudly).
#[macro_export]
macro_rules! conformance_tests {
    (optional: $fresh:expr) => {
        $crate::for_each_conformance_case!($crate::__loom_conformance_optional_fns, ($fresh));
    };
    ($fresh:expr) => {
        $crate::for_each_conformance_case!($crate::__loom_conformance_fns, ($fresh));
    };
}
