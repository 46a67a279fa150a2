//! Schedules: stored whole, written only at the version read, found when due, and a tick's
//! starts, cancels and terminations written with it or not at all.

use loom_core::{EventKind, Payload, Tags, Timestamp};

use super::*;
use crate::StorageError;
use crate::schedule::{
    Schedule, ScheduleAction, SchedulePolicy, ScheduleSpec, ScheduleWrite, TAG_SCHEDULE,
};

fn record(id: &str, now: Timestamp) -> Schedule {
    Schedule::new(
        id,
        ScheduleSpec {
            cron: vec!["0 0 * * * *".into()],
            timezone: "Europe/Paris".into(),
            ..ScheduleSpec::default()
        },
        ScheduleAction {
            workflow: "Conformance".into(),
            version: None,
            input: json("hourly"),
            id_pattern: "{schedule}/{time}".into(),
            tags: Tags::new(),
        },
        SchedulePolicy::default(),
        false,
        now,
    )
    .expect("a valid schedule")
}

fn put(schedule: &Schedule, expected: Option<u64>) -> ScheduleWrite {
    ScheduleWrite {
        id: schedule.id.clone(),
        expected,
        schedule: Some(schedule.clone()),
        starts: Vec::new(),
        cancel: Vec::new(),
        terminate: Vec::new(),
    }
}

/// Creates of one id at once, as from several workers: one is written and every other is told
/// the schedule exists, whichever transactions they run in.
pub async fn creates_of_one_schedule_at_once_write_one(store: Store) {
    let now = store.now().await.expect("now");
    for round in 0..8 {
        let id = format!("race-{round}");
        let mut handles = Vec::new();
        for writer in 0..4 {
            let store = store.clone();
            let mut schedule = record(&id, now);
            schedule.action.input = json(format!("writer {writer}"));
            handles.push(tokio::spawn(async move {
                (writer, store.write_schedule(put(&schedule, None)).await)
            }));
        }
        let mut won = Vec::new();
        for handle in handles {
            let (writer, result) = handle.await.expect("a writer");
            match result {
                Ok(()) => won.push(writer),
                Err(StorageError::ScheduleExists(got)) => assert_eq!(got, id),
                Err(e) => panic!("writer {writer} of {id}: {e:?}"),
            }
        }
        assert_eq!(won.len(), 1, "{id}: one create is written, not {won:?}");
        let stored = store.schedule(&id).await.expect("read");
        assert_eq!(
            stored.action.input,
            json(format!("writer {}", won[0])),
            "{id}: what stands is the winner's"
        );
    }
}

/// Creates, reads back, lists in pages by id, refuses a second create, and deletes.
pub async fn schedules_are_created_read_listed_and_deleted(store: Store) {
    let now = store.now().await.expect("now");
    for id in ["c-nightly", "a-hourly", "b-weekly"] {
        store
            .write_schedule(put(&record(id, now), None))
            .await
            .expect("create");
    }
    let read = store.schedule("a-hourly").await.expect("read");
    let mut expected = record("a-hourly", now);
    expected.version = expected.first_version();
    let v1 = expected.version;
    assert!(
        v1 >= 1_000,
        "a create's version is its creation time times a thousand"
    );
    assert_eq!(
        read, expected,
        "a schedule reads back as written, at its first version"
    );

    let first = store.schedules(None, 2).await.expect("list");
    let ids: Vec<&str> = first.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["a-hourly", "b-weekly"]);
    let rest = store.schedules(Some("b-weekly"), 2).await.expect("list");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].id, "c-nightly");

    let again = store
        .write_schedule(put(&record("a-hourly", now), None))
        .await;
    assert!(
        matches!(&again, Err(StorageError::ScheduleExists(id)) if id == "a-hourly"),
        "{again:?}"
    );

    let delete = |expected| ScheduleWrite {
        id: "a-hourly".into(),
        expected: Some(expected),
        schedule: None,
        starts: Vec::new(),
        cancel: Vec::new(),
        terminate: Vec::new(),
    };
    assert!(matches!(
        store.write_schedule(delete(7)).await,
        Err(StorageError::ScheduleConflict {
            expected: 7,
            actual,
            ..
        }) if actual == v1
    ));
    store.write_schedule(delete(v1)).await.expect("delete");
    assert!(matches!(
        store.schedule("a-hourly").await,
        Err(StorageError::ScheduleNotFound(id)) if id == "a-hourly"
    ));
    assert!(matches!(
        store.write_schedule(delete(v1)).await,
        Err(StorageError::ScheduleNotFound(_))
    ));
    assert_eq!(store.schedules(None, 10).await.expect("list").len(), 2);
}

/// A write names the version it read; a stale one writes nothing.
pub async fn a_schedule_write_names_the_version_it_read(store: Store) {
    let now = store.now().await.expect("now");
    let s = record("nightly", now);
    store.write_schedule(put(&s, None)).await.expect("create");
    let v1 = s.first_version();
    let mut paused = store.schedule("nightly").await.expect("read");
    paused.set_paused(true, "maintenance".into(), now);
    store
        .write_schedule(put(&paused, Some(v1)))
        .await
        .expect("update");
    let read = store.schedule("nightly").await.expect("read");
    assert_eq!(read.version, v1 + 1);
    assert!(read.paused);
    assert_eq!(read.note, "maintenance");

    let mut stale = s.clone();
    stale.note = "lost update".into();
    let r = store.write_schedule(put(&stale, Some(v1))).await;
    assert!(
        matches!(
            r,
            Err(StorageError::ScheduleConflict {
                expected,
                actual,
                ..
            }) if expected == v1 && actual == v1 + 1
        ),
        "{r:?}"
    );
    assert_eq!(store.schedule("nightly").await.expect("read"), read);

    // Bad writes are refused before the store is touched.
    let mut bad = put(&s, None);
    bad.id = "a/b".into();
    assert!(matches!(
        store.write_schedule(bad).await,
        Err(StorageError::InvalidArgument(_))
    ));
    let mut other = put(&s, Some(v1 + 1));
    other.id = "other".into();
    assert!(matches!(
        store.write_schedule(other).await,
        Err(StorageError::InvalidArgument(_))
    ));
    assert_eq!(store.schedules(None, 10).await.expect("list").len(), 1);
}

/// Due schedules are those whose `wake_at` has come by the store's clock, earliest first;
/// the next one to come is named; one without a `wake_at` is never due.
pub async fn due_schedules_are_those_whose_time_has_come(store: Store) {
    let now = store.now().await.expect("now");
    let at = |offset_ms: i64| Some(Timestamp::from_millis(now.as_millis() + offset_ms));
    for (id, wake) in [
        ("late", at(-HOUR_MS)),
        ("later", at(-2 * HOUR_MS)),
        ("soon", at(HOUR_MS)),
        ("sooner", at(HOUR_MS / 2)),
        ("never", None),
    ] {
        let mut s = record(id, now);
        s.wake_at = wake;
        store.write_schedule(put(&s, None)).await.expect("create");
    }
    let due = store.due_schedules(10).await.expect("due");
    let ids: Vec<&str> = due.due.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["later", "late"]);
    assert_eq!(due.next, at(HOUR_MS / 2));
    assert!(due.now >= now, "the answer carries the store's time");
    let one = store.due_schedules(1).await.expect("due");
    assert_eq!(one.due.len(), 1);
    assert_eq!(one.due[0].id, "later");

    // Moving a schedule's wake moves it in the index.
    let mut late = store.schedule("late").await.expect("read");
    late.wake_at = at(3 * HOUR_MS);
    store
        .write_schedule(put(&late, Some(late.version)))
        .await
        .expect("update");
    let due = store.due_schedules(10).await.expect("due");
    assert_eq!(due.due.len(), 1);
    assert_eq!(due.due[0].id, "later");
}

/// A tick's starts are written with the schedule, or, if one of their ids is taken, nothing
/// is: not the other starts, not the schedule.
pub async fn a_ticks_starts_are_written_with_it_or_not_at_all(store: Store) {
    let now = store.now().await.expect("now");
    let s = record("hourly", now);
    store.write_schedule(put(&s, None)).await.expect("create");
    let t1 = Timestamp::from_millis(now.as_millis() - HOUR_MS);
    let t2 = Timestamp::from_millis(now.as_millis() - 2 * HOUR_MS);
    let start = |t: Timestamp| {
        let mut e = started("Conformance", "hourly");
        if let EventKind::WorkflowStarted { tags, .. } = &mut e.kind {
            *tags = s.action.tags_for(&s.id, t);
        }
        (s.action.workflow_id(&s.id, t), e)
    };
    let mut ticked = store.schedule("hourly").await.expect("read");
    ticked.note = "ticked".into();
    let mut write = put(&ticked, Some(ticked.version));
    write.starts = vec![start(t2), start(t1)];
    store.write_schedule(write).await.expect("tick");
    for t in [t1, t2] {
        let summary = store
            .describe(&s.action.workflow_id(&s.id, t))
            .await
            .expect("started");
        assert_eq!(summary.input, json("hourly"));
        assert_eq!(
            summary.tags.get(TAG_SCHEDULE),
            Some(&loom_core::TagValue::Text("hourly".into()))
        );
    }
    assert_eq!(
        store
            .claim_workflow_tasks(&claim(10))
            .await
            .expect("claim")
            .len(),
        2
    );

    let t3 = Timestamp::from_millis(now.as_millis() - 3 * HOUR_MS);
    let mut again = store.schedule("hourly").await.expect("read");
    again.note = "ticked again".into();
    let mut write = put(&again, Some(again.version));
    write.starts = vec![start(t3), start(t1)];
    let r = store.write_schedule(write).await;
    assert!(
        matches!(r, Err(StorageError::AlreadyExists { .. })),
        "{r:?}"
    );
    let after = store.schedule("hourly").await.expect("read");
    assert_eq!(after.version, s.first_version() + 1);
    assert_eq!(after.note, "ticked");
    assert!(matches!(
        store.describe(&s.action.workflow_id(&s.id, t3)).await,
        Err(StorageError::NotFound(_))
    ));
}

/// A tick's cancels and terminations reach open workflows, as messages due now; a closed one
/// is passed over without failing the write.
pub async fn a_ticks_cancels_and_terminations_reach_only_open_workflows(store: Store) {
    let now = store.now().await.expect("now");
    let s = record("every", now);
    store.write_schedule(put(&s, None)).await.expect("create");
    create(&store, "running-1").await;
    create(&store, "running-2").await;
    create(&store, "ended").await;
    let mut task = store
        .claim_workflow_tasks(&ClaimRequest::new("conformance", 10, LEASE))
        .await
        .expect("claim");
    task.retain(|t| t.workflow_id.as_str() == "ended");
    store
        .complete_workflow_task(completion(
            &task[0],
            vec![EventKind::WorkflowCompleted {
                output: Payload::NULL,
            }],
        ))
        .await
        .expect("end");
    let mut write = put(&s, Some(s.first_version()));
    write.cancel = vec![
        (wid("running-1"), "schedule every: cancel_other".into()),
        (wid("ended"), "too late".into()),
    ];
    write.terminate = vec![(wid("running-2"), "schedule every: terminate_other".into())];
    store.write_schedule(write).await.expect("tick");
    let kinds = |p: crate::Pending| p.messages.into_iter().map(|m| m.kind).collect::<Vec<_>>();
    assert_eq!(
        kinds(store.pending(&wid("running-1")).await.expect("pending")),
        [EventKind::CancelRequested {
            reason: Some("schedule every: cancel_other".into())
        }]
    );
    assert_eq!(
        kinds(store.pending(&wid("running-2")).await.expect("pending")),
        [EventKind::TerminateRequested {
            reason: "schedule every: terminate_other".into()
        }]
    );
    assert!(kinds(store.pending(&wid("ended")).await.expect("pending")).is_empty());
    assert_eq!(
        store.schedule("every").await.expect("read").version,
        s.first_version() + 1
    );
}
