//! What is MySQL's own: the schema applied once, refused databases, ids compared byte by byte,
//! and connections killed under a store. Against the real server in `LOOM_TEST_MYSQL_URL`
//! (skipped loudly without one, failing under `CI=true`).

use std::str::FromStr;

use loom_core::{Event, EventKind, Payload, Seq, Timestamp, WorkflowId};
use loom_mysql::{MysqlOptions, MysqlStorage, testing};
use loom_storage::{ListQuery, Storage, StorageError};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};

fn started() -> Event {
    Event {
        seq: Seq::FIRST,
        at: Timestamp::from_millis(0),
        kind: EventKind::workflow_started("Greeting", 1, Payload::encode("Ada").expect("json")),
    }
}

async fn admin(url: &str) -> MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(1)
        .connect_with(MySqlConnectOptions::from_str(url).expect("url"))
        .await
        .expect("admin connection")
}

/// A store on a fresh database of its own, and that database's URL; `None` (a loud skip, a
/// failure under `CI=true`) without a server.
async fn fresh_store() -> Option<(String, MysqlStorage)> {
    if !testing::server_available().await {
        return None;
    }
    let url = testing::fresh_database().await;
    let store = MysqlStorage::connect(&url, MysqlOptions::default())
        .await
        .expect("connect");
    Some((url, store))
}

#[tokio::test]
async fn connecting_again_finds_the_schema_in_place() {
    let Some((url, first)) = fresh_store().await else {
        return;
    };
    first
        .create_workflow(&WorkflowId::new("kept"), started())
        .await
        .expect("create");
    let again = MysqlStorage::connect(&url, MysqlOptions::default())
        .await
        .expect("connect again");
    assert_eq!(
        again
            .list(&ListQuery::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    let versions: Vec<i32> = sqlx::query_scalar("SELECT version FROM loom_migrations")
        .fetch_all(&admin(&url).await)
        .await
        .expect("versions");
    assert_eq!(versions, [1, 2]);
}

/// Write sets go to the server-side applier; a batch it refuses (here: the procedure is gone)
/// is applied from the client's side, and its caller never hears of it.
#[tokio::test]
async fn batches_go_to_loom_apply_and_one_it_refuses_is_applied_from_here() {
    let Some((url, store)) = fresh_store().await else {
        return;
    };
    store
        .create_workflow(&WorkflowId::new("served"), started())
        .await
        .expect("create");
    assert_eq!(
        store.applier_counts(),
        (1, 0),
        "one write set, by loom_apply"
    );
    let again = store
        .create_workflow(&WorkflowId::new("served"), started())
        .await
        .expect_err("a second create of one id");
    assert!(
        matches!(again, StorageError::AlreadyExists { .. }),
        "{again:?}"
    );
    assert_eq!(
        store.applier_counts(),
        (2, 0),
        "a failed check is answered by loom_apply too"
    );
    sqlx::query("DROP PROCEDURE loom_apply")
        .execute(&admin(&url).await)
        .await
        .expect("drop the applier");
    store
        .create_workflow(&WorkflowId::new("from-here"), started())
        .await
        .expect("a create without the applier");
    let again = store
        .create_workflow(&WorkflowId::new("from-here"), started())
        .await
        .expect_err("a second create of one id, without the applier");
    assert!(
        matches!(again, StorageError::AlreadyExists { .. }),
        "{again:?}"
    );
    assert_eq!(store.applier_counts(), (2, 2), "two batches refused");
    let listed = store.list(&ListQuery::default()).await.expect("list");
    assert_eq!(listed.items.len(), 2);
}

/// An activity's commit whose eager claim returns a message this build cannot read (written
/// by a newer release, or damaged) fails alone with `Corrupt`, and writes nothing: not even
/// through the server-side applier, which had applied it before its answer was read.
#[tokio::test]
async fn an_answer_that_cannot_be_read_leaves_nothing_written() {
    use loom_core::{ActivityId, ActivityOptions};
    use loom_storage::{
        ActivityCommitted, ActivityTaskCompletion, AfterActivity, ClaimRequest,
        WorkflowTaskCompletion,
    };
    let Some((url, store)) = fresh_store().await else {
        return;
    };
    let claim = || ClaimRequest::new("reader", 1, std::time::Duration::from_secs(30));
    let id = WorkflowId::new("unreadable");
    store.create_workflow(&id, started()).await.expect("create");
    let wft = store
        .claim_workflow_tasks(&claim())
        .await
        .expect("claim")
        .remove(0);
    let scheduled = Event {
        seq: Seq::new(2),
        at: Timestamp::from_millis(0),
        kind: EventKind::ActivityScheduled {
            name: "charge".into(),
            input: Payload::encode(&5).expect("json"),
            options: ActivityOptions::default(),
        },
    };
    store
        .complete_workflow_task(WorkflowTaskCompletion {
            next_run: None,
            lease: wft.lease,
            workflow_id: id.clone(),
            expected_last_seq: wft.last_seq,
            events: vec![scheduled],
            consumed: Vec::new(),
            progress: None,
            logs: Vec::new(),
            eager: None,
            affinity: None,
        })
        .await
        .expect("schedule an activity");
    let act = store
        .claim_activity_tasks(&claim())
        .await
        .expect("claim the activity")
        .remove(0);
    // A message no build can read, due now: the eager claim below returns it.
    sqlx::query("INSERT INTO messages (workflow_id, visible_at, kind) VALUES (?, 0, ?)")
        .bind(id.as_str().as_bytes())
        .bind(b"{\"type\": \"FromTheFuture\"}".as_slice())
        .execute(&admin(&url).await)
        .await
        .expect("insert the message");
    let done = ActivityTaskCompletion {
        lease: act.lease,
        workflow_id: id.clone(),
        result: EventKind::ActivityCompleted {
            activity_id: ActivityId(Seq::new(2)),
            attempt: act.attempt,
            result: Payload::encode(&7).expect("json"),
        },
        retry_after: None,
        then: AfterActivity::ClaimWorkflowTask(claim()),
    };
    let refused = store
        .complete_activity_task(done.clone())
        .await
        .expect_err("the claimed message cannot be read");
    assert!(
        matches!(refused, StorageError::Corrupt { .. }),
        "{refused:?}"
    );
    assert_eq!(
        store.applier_counts().1,
        1,
        "the batch went to the applier, then was applied from this side"
    );
    // Nothing was written: the attempt is still leased to its worker, who may commit it.
    sqlx::query("DELETE FROM messages WHERE kind LIKE '%FromTheFuture%'")
        .execute(&admin(&url).await)
        .await
        .expect("remove the message");
    let answer = store
        .complete_activity_task(done)
        .await
        .expect("the same commit, now readable");
    assert!(
        matches!(answer, ActivityCommitted::WorkflowTask(_)),
        "{answer:?}"
    );
}

/// A write set too large for one packet is refused before anything is sent: `Rejected`,
/// nothing written, and the store goes on.
#[tokio::test]
async fn a_write_past_max_allowed_packet_is_refused_and_nothing_is_lost() {
    if !testing::server_available().await {
        return;
    }
    let url = testing::fresh_database().await;
    let packet: i64 = sqlx::query_scalar("SELECT CAST(@@max_allowed_packet AS SIGNED)")
        .fetch_one(&admin(&url).await)
        .await
        .expect("max_allowed_packet");
    let store = MysqlStorage::connect(&url, MysqlOptions::default())
        .await
        .expect("connect");
    // Written as hexadecimal, half the packet in bytes is the whole packet in SQL.
    let big = "x".repeat(usize::try_from(packet / 2).expect("size"));
    let too_big = Event {
        seq: Seq::FIRST,
        at: Timestamp::from_millis(0),
        kind: EventKind::workflow_started("Greeting", 1, Payload::encode(&big).expect("json")),
    };
    let refused = store
        .create_workflow(&WorkflowId::new("too-big"), too_big)
        .await
        .expect_err("a start larger than a packet");
    assert!(
        matches!(&refused, StorageError::Rejected { message, .. } if message.contains("max_allowed_packet")),
        "{refused:?}"
    );
    store
        .create_workflow(&WorkflowId::new("small"), started())
        .await
        .expect("the store goes on");
    let listed = store.list(&ListQuery::default()).await.expect("list");
    let ids: Vec<&str> = listed.items.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(ids, ["small"], "nothing of the refused start was written");
}

#[tokio::test]
async fn a_newer_schema_and_a_foreign_table_are_refused() {
    if !testing::server_available().await {
        return;
    }
    let url = testing::fresh_database().await;
    drop(
        MysqlStorage::connect(&url, MysqlOptions::default())
            .await
            .expect("connect"),
    );
    sqlx::query("INSERT INTO loom_migrations VALUES (99, 0)")
        .execute(&admin(&url).await)
        .await
        .expect("a newer version");
    let err = MysqlStorage::connect(&url, MysqlOptions::default())
        .await
        .expect_err("a newer schema");
    assert!(
        matches!(&err, StorageError::Incompatible(m) if m.contains("newer Loom")),
        "{err}"
    );

    let url = testing::fresh_database().await;
    sqlx::query("CREATE TABLE workflows (id INT PRIMARY KEY, total INT)")
        .execute(&admin(&url).await)
        .await
        .expect("someone else's table");
    let err = MysqlStorage::connect(&url, MysqlOptions::default())
        .await
        .expect_err("a foreign table");
    assert!(
        matches!(&err, StorageError::Incompatible(m) if m.contains("did not make")),
        "{err}"
    );
}

#[tokio::test]
async fn a_url_without_a_database_or_a_server_is_a_clear_error() {
    let err = MysqlStorage::connect("mysql://root@127.0.0.1:3306", MysqlOptions::default())
        .await
        .expect_err("no database");
    assert!(matches!(err, StorageError::InvalidArgument(_)), "{err}");
    let err = MysqlStorage::connect(
        "mysql://root:s3cret@127.0.0.1:1/loom",
        MysqlOptions::default(),
    )
    .await
    .expect_err("no server");
    assert!(err.is_retryable(), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[tokio::test]
async fn ids_are_compared_byte_by_byte() {
    let Some(store) = testing::fresh().await else {
        return;
    };
    // No collation folds case, ignores trailing spaces or equates accents.
    let ids = ["order", "Order", "order ", "ordér", "order\u{301}"];
    for id in ids {
        store
            .create_workflow(&WorkflowId::new(id), started())
            .await
            .unwrap_or_else(|e| panic!("create {id:?}: {e}"));
    }
    for id in ids {
        let summary = store
            .describe(&WorkflowId::new(id))
            .await
            .expect("describe");
        assert_eq!(summary.id.as_str(), id);
    }
    let err = store
        .create_workflow(&WorkflowId::new("order "), started())
        .await
        .expect_err("taken");
    assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err}");
}

#[tokio::test]
async fn killed_connections_are_opened_again() {
    let Some((url, store)) = fresh_store().await else {
        return;
    };
    store
        .create_workflow(&WorkflowId::new("before"), started())
        .await
        .expect("create");
    let admin = admin(&url).await;
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()",
    )
    .fetch_all(&admin)
    .await
    .expect("connections");
    assert!(!ids.is_empty());
    for id in ids {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL {id}")))
            .execute(&admin)
            .await
            .expect("kill");
    }
    // Each write goes to the next writer; a writer whose connection was killed answers the
    // retryable Unavailable once, then connects again. Nothing is written twice.
    let mut created = 0;
    for n in 0..40 {
        match store
            .create_workflow(&WorkflowId::new(format!("after-{n}")), started())
            .await
        {
            Ok(()) => created += 1,
            Err(e) => assert!(e.is_retryable(), "{e}"),
        }
    }
    assert!(created >= 30, "only {created} of 40 writes went through");
    let listed = store
        .list(&ListQuery {
            limit: 100,
            ..ListQuery::default()
        })
        .await;
    let listed = match listed {
        Ok(page) => page,
        // The read connection was killed too: the next read opens another.
        Err(e) => {
            assert!(e.is_retryable(), "{e}");
            store
                .list(&ListQuery {
                    limit: 100,
                    ..ListQuery::default()
                })
                .await
                .expect("list")
        }
    };
    assert_eq!(listed.items.len(), created + 1);
}
