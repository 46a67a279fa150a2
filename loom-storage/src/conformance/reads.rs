//! Listing, stats, logs and pending work.

use loom_core::{EventKind, LogLevel, LogRecord, Payload, Seq};

use super::*;
use crate::{ListQuery, WorkflowStatus};

/// Lists are newest first and page without gaps or repeats.
pub async fn list_is_newest_first_and_pages(store: Store) {
    for i in 0..7 {
        create(&store, &format!("wf-{i}")).await;
    }
    let mut seen = Vec::new();
    let mut query = ListQuery {
        limit: 3,
        ..ListQuery::default()
    };
    let mut pages = 0;
    loop {
        let page = store.list(&query).await.expect("list");
        pages += 1;
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|s| s.id.clone()));
        match page.next {
            Some(cursor) => query.after = Some(cursor),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    let expected: Vec<_> = (0..7).rev().map(|i| wid(&format!("wf-{i}"))).collect();
    assert_eq!(seen, expected);
    assert_eq!(pages, 3);
}

/// Lists filter by status, name, version and creation time.
pub async fn list_filters(store: Store) {
    store
        .create_workflow(&wid("a-1"), started("Alpha", 1))
        .await
        .expect("create");
    store
        .create_workflow(&wid("b-1"), started("Beta", 1))
        .await
        .expect("create");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut beta_v2 = started("Beta", 2);
    if let EventKind::WorkflowStarted { version, .. } = &mut beta_v2.kind {
        *version = 2;
    }
    store
        .create_workflow(&wid("b-2"), beta_v2)
        .await
        .expect("create");
    let task = store
        .claim_workflow_tasks(&claim(10))
        .await
        .expect("claim")
        .into_iter()
        .find(|t| t.workflow_id == wid("b-1"))
        .expect("b-1 ready");
    store
        .complete_workflow_task(completion(
            &task,
            vec![EventKind::WorkflowCompleted {
                output: Payload::NULL,
            }],
        ))
        .await
        .expect("complete");
    let by_name = store
        .list(&ListQuery {
            name: Some("Beta".into()),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    let ids: Vec<_> = by_name.items.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["b-2", "b-1"]);
    for (version, expected) in [(1, vec!["b-1", "a-1"]), (2, vec!["b-2"]), (3, vec![])] {
        let page = store
            .list(&ListQuery {
                version: Some(version),
                ..ListQuery::default()
            })
            .await
            .expect("list");
        let ids: Vec<_> = page.items.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, expected, "version {version}");
    }
    let completed = store
        .list(&ListQuery {
            status: Some(WorkflowStatus::Completed),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(completed.items.len(), 1);
    assert_eq!(completed.items[0].id, wid("b-1"));
    let b2 = store.describe(&wid("b-2")).await.expect("describe");
    let recent = store
        .list(&ListQuery {
            created_after: Some(b2.created_at),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(recent.items.len(), 1);
    assert_eq!(recent.items[0].id, wid("b-2"));
    let older = store
        .list(&ListQuery {
            created_before: Some(b2.created_at),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(older.items.len(), 2);
    assert!(older.next.is_none());
}

/// Stats count workflows by status, events and tasks, as of the store's clock.
pub async fn stats_count_what_is_there(store: Store) {
    let empty = store.stats().await.expect("stats");
    assert!(empty.workflows.is_empty());
    assert_eq!(empty.events, 0);
    let slack = Duration::from_secs(5);
    assert!(
        empty.at.saturating_add(slack) >= wall_now()
            && empty.at <= wall_now().saturating_add(slack),
        "the store's clock {} is far from this machine's",
        empty.at
    );
    with_scheduled_activity(&store, "wf-1").await;
    create(&store, "wf-2").await;
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.workflows.get(&WorkflowStatus::Running), Some(&2));
    assert_eq!(stats.events, 3);
    assert_eq!(stats.workflow_tasks_ready, 1);
    assert_eq!(stats.activity_tasks_ready, 1);
    assert!(stats.oldest_ready_at.is_some());
    let _held = claim_activity(&store).await;
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.activity_tasks_running, 1);
    assert_eq!(stats.activity_tasks_ready, 0);
}

/// The backlog counts the open tasks by kind, ready and running, with the oldest ready one's
/// time, and agrees with the stats.
pub async fn the_backlog_counts_open_tasks_by_kind(store: Store) {
    let empty = store.backlog().await.expect("backlog");
    assert_eq!(empty.workflow_tasks, crate::TaskBacklog::default());
    assert_eq!(empty.activity_tasks, crate::TaskBacklog::default());
    create(&store, "wf-1").await;
    create(&store, "wf-2").await;
    let two = store.backlog().await.expect("backlog");
    assert_eq!(
        (two.workflow_tasks.ready, two.workflow_tasks.running),
        (2, 0)
    );
    let oldest = two.workflow_tasks.oldest_ready_at.expect("an oldest");
    assert!(oldest <= two.at, "ready at {oldest}, counted at {}", two.at);
    assert_eq!(two.activity_tasks.oldest_ready_at, None);
    let task = claim_workflow(&store).await;
    let one = store.backlog().await.expect("backlog");
    assert_eq!(
        (one.workflow_tasks.ready, one.workflow_tasks.running),
        (1, 1)
    );
    store
        .complete_workflow_task(completion(&task, vec![schedule("a", 1)]))
        .await
        .expect("commit");
    let b = store.backlog().await.expect("backlog");
    assert_eq!((b.workflow_tasks.ready, b.workflow_tasks.running), (1, 0));
    assert_eq!((b.activity_tasks.ready, b.activity_tasks.running), (1, 0));
    assert!(b.activity_tasks.oldest_ready_at.is_some());
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.workflow_tasks_ready, b.workflow_tasks.ready);
    assert_eq!(stats.activity_tasks_ready, b.activity_tasks.ready);
    assert_eq!(
        stats.oldest_ready_at,
        [
            b.workflow_tasks.oldest_ready_at,
            b.activity_tasks.oldest_ready_at
        ]
        .into_iter()
        .flatten()
        .min()
    );
}

/// Log lines committed with a task are kept in order; a NUL becomes U+FFFD on every backend.
pub async fn logs_are_kept_with_their_task(store: Store) {
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    let mut c = completion(&task, vec![step("a")]);
    let line = |n: u32| LogRecord {
        seq: Seq::new(2),
        at: wall_now(),
        level: LogLevel::Info,
        message: format!("line {n}"),
    };
    let tricky = "quote \" back\\slash {\"json\": [1]} \u{1F600} tab\t newline\n";
    let mut odd = line(3);
    odd.message = tricky.into();
    let mut nul = line(4);
    nul.message = "before\0after".into();
    let mut warn = line(5);
    warn.level = LogLevel::Warn;
    c.logs = vec![line(1), line(2), odd, nul, warn];
    store.complete_workflow_task(c).await.expect("complete");
    let logs = store.logs(&wid("wf-1")).await.expect("logs");
    assert_eq!(logs.len(), 5);
    assert_eq!(logs[0].message, "line 1");
    assert_eq!(logs[1].message, "line 2");
    assert_eq!(logs[2].message, tricky);
    assert_eq!(logs[3].message, "before\u{FFFD}after");
    assert_eq!(logs[4].level, LogLevel::Warn);
    // A failed commit writes no logs.
    let mut stale = completion(&task, vec![]);
    stale.logs = vec![line(6)];
    assert!(store.complete_workflow_task(stale).await.is_err());
    assert_eq!(store.logs(&wid("wf-1")).await.expect("logs").len(), 5);
}

/// `pending` shows what a workflow waits for: its workflow task, its activity tasks (with
/// attempt and lease), its messages (timers, signals), by id.
pub async fn pending_shows_tasks_and_messages(store: Store) {
    create(&store, "wf-1").await;
    let fresh = store.pending(&wid("wf-1")).await.expect("pending");
    assert_eq!(fresh.tasks.len(), 1, "the first workflow task");
    assert!(fresh.tasks[0].activity.is_none());
    assert!(fresh.tasks[0].visible_at.is_some());
    assert!(fresh.messages.is_empty());
    advance(
        &store,
        vec![schedule("a", 1), schedule("b", 2), timer_after(HOUR)],
    )
    .await;
    store
        .signal(&wid("wf-1"), "go", json(1))
        .await
        .expect("signal");
    let held = claim_activity(&store).await;
    let p = store.pending(&wid("wf-1")).await.expect("pending");
    assert_eq!(p.tasks.len(), 3, "{p:?}");
    let activities: Vec<_> = p
        .tasks
        .iter()
        .filter_map(|t| t.activity.clone().map(|a| (a, t.leased_until.is_some())))
        .collect();
    assert_eq!(
        activities,
        vec![
            (
                (loom_core::ActivityId(Seq::new(2)), "a".to_owned(), 1),
                true
            ),
            (
                (loom_core::ActivityId(Seq::new(3)), "b".to_owned(), 1),
                false
            ),
        ]
    );
    assert!(p.tasks.windows(2).all(|w| w[0].id < w[1].id), "by id");
    assert_eq!(p.messages.len(), 2);
    assert!(matches!(p.messages[0].kind, EventKind::TimerFired { .. }));
    assert!(matches!(
        p.messages[1].kind,
        EventKind::SignalReceived { .. }
    ));
    assert_eq!(held.name, "a");
}
