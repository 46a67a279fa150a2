//! SQLite-specific behaviour: the file on disk, migrations, bad files, group commit, and two
//! processes on one file.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use loom_core::{Event, EventKind, HISTORY_FORMAT, Payload, Seq, Timestamp, WorkflowId};
use loom_sqlite::{Durability, SqliteOptions, SqliteStorage};
use loom_storage::conformance::{self as kit, crash};
use loom_storage::{
    ActivityCommitted, ActivityTaskCompletion, AfterActivity, ClaimRequest, ListQuery, Storage,
    StorageError, WorkflowTaskCompletion,
};

fn started(name: &str) -> Event {
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
            name: name.into(),
            version: 1,
            input: Payload::encode(&"in").expect("encode"),
            format: HISTORY_FORMAT,
            timeouts: Default::default(),
            parent: None,
        },
    }
}

async fn open(path: &Path) -> Result<SqliteStorage, StorageError> {
    SqliteStorage::open(path, SqliteOptions::default()).await
}

fn schema_versions(path: &Path) -> Vec<i64> {
    let conn = rusqlite::Connection::open(path).expect("open raw");
    let mut stmt = conn
        .prepare("SELECT version FROM loom_migrations ORDER BY version")
        .expect("prepare");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_file_is_migrated_once_and_reopens_with_its_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("loom.db");
    {
        let store = open(&path).await.expect("create");
        store
            .create_workflow(&WorkflowId::new("kept"), started("Keep"))
            .await
            .expect("create workflow");
    }
    assert_eq!(schema_versions(&path), vec![1, 2, 3, 4, 5, 6, 7]);
    let store = open(&path).await.expect("reopen");
    assert_eq!(
        schema_versions(&path),
        vec![1, 2, 3, 4, 5, 6, 7],
        "migrations are not applied twice"
    );
    let s = store
        .describe(&WorkflowId::new("kept"))
        .await
        .expect("still there");
    assert_eq!(s.name, "Keep");
    let mode: String = rusqlite::Connection::open(&path)
        .expect("raw")
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal mode");
    assert_eq!(mode, "wal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_from_a_newer_loom_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("future.db");
    drop(open(&path).await.expect("create"));
    rusqlite::Connection::open(&path)
        .expect("raw")
        .execute(
            "INSERT INTO loom_migrations (version, applied_at) VALUES (99, 0)",
            [],
        )
        .expect("pretend to be newer");
    let err = open(&path).await.expect_err("refused");
    assert!(matches!(err, StorageError::Incompatible(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("future.db") && msg.contains("99") && msg.contains("newer"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_sqlite_is_refused_by_name_and_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notes.txt");
    let text = "these are not the bytes of a database\n".repeat(200);
    std::fs::write(&path, &text).expect("write");
    let err = open(&path).await.expect_err("refused");
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("notes.txt") && msg.contains("not a SQLite database"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        text,
        "the file is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_file_that_is_not_loom_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("other.db");
    rusqlite::Connection::open(&path)
        .expect("raw")
        .execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        .expect("someone else's schema");
    let err = open(&path).await.expect_err("refused");
    assert!(matches!(err, StorageError::Incompatible(_)), "{err}");
    assert!(err.to_string().contains("not a Loom database"), "{err}");
    let tables: i64 = rusqlite::Connection::open(&path)
        .expect("raw")
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(tables, 1, "nothing was added to the foreign database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("no").join("such").join("loom.db");
    let err = open(&path).await.expect_err("no directory");
    let msg = err.to_string();
    assert!(
        msg.contains("does not exist") && msg.contains("such"),
        "{msg}"
    );
    assert!(!dir.path().join("no").exists(), "nothing was created");
    // A parent that is a file, not a directory.
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").expect("write");
    let err = open(&file.join("loom.db"))
        .await
        .expect_err("parent is a file");
    assert!(err.to_string().contains("plain"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_page_is_reported_as_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("damaged.db");
    {
        let store = open(&path).await.expect("create");
        for i in 0..300 {
            store
                .create_workflow(&WorkflowId::new(format!("wf-{i:04}")), started("Big"))
                .await
                .expect("create");
        }
    }
    // Checkpoint the WAL into the main file so the damage lands on real pages.
    rusqlite::Connection::open(&path)
        .expect("raw")
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open file");
    let len = f.seek(SeekFrom::End(0)).expect("len");
    assert!(
        len > 16 * 4096,
        "the database spans many pages ({len} bytes)"
    );
    // Overwrite every page after the first two with garbage.
    let mut page = 2 * 4096;
    while page < len {
        f.seek(SeekFrom::Start(page)).expect("seek");
        f.write_all(&[0xA5; 4096]).expect("scribble");
        page += 4096;
    }
    f.sync_all().expect("sync");
    let mut first = [0u8; 16];
    f.seek(SeekFrom::Start(0)).expect("seek");
    f.read_exact(&mut first).expect("read header");
    assert_eq!(&first, b"SQLite format 3\0", "the header still says SQLite");
    let outcome = async {
        let store = open(&path).await?;
        store.list(&ListQuery::default()).await.map(drop)
    }
    .await;
    let err = outcome.expect_err("damage is detected");
    assert!(
        matches!(
            err,
            StorageError::Corrupt { .. } | StorageError::Incompatible(_)
        ),
        "{err}"
    );
    assert!(err.to_string().contains("damaged.db"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_request_in_a_batch_does_not_undo_the_others() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(open(&dir.path().join("batch.db")).await.expect("open"));
    store
        .create_workflow(&WorkflowId::new("taken"), started("First"))
        .await
        .expect("create");
    // Many writes at once, so that they share transactions, one of them bound to fail.
    let mut handles = Vec::new();
    for i in 0..64 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let id = if i == 31 {
                "taken".to_owned()
            } else {
                format!("wf-{i}")
            };
            store
                .create_workflow(&WorkflowId::new(id), started("Second"))
                .await
        }));
    }
    let mut failures = 0;
    for (i, h) in handles.into_iter().enumerate() {
        match h.await.expect("task") {
            Ok(()) => assert_ne!(i, 31),
            Err(StorageError::AlreadyExists { .. }) => {
                assert_eq!(i, 31);
                failures += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(failures, 1);
    let page = store
        .list(&ListQuery {
            limit: 1_000,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(page.items.len(), 64);
    let taken = store
        .describe(&WorkflowId::new("taken"))
        .await
        .expect("describe");
    assert_eq!(taken.name, "First", "the failed duplicate changed nothing");
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.events, 64);
    assert_eq!(stats.workflow_tasks_ready, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_durability_mode_works_the_same() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = SqliteOptions {
        durability: Durability::Fast,
        ..SqliteOptions::default()
    };
    let store = SqliteStorage::open(dir.path().join("fast.db"), options)
        .await
        .expect("open");
    store
        .create_workflow(&WorkflowId::new("wf"), started("Fast"))
        .await
        .expect("create");
    assert_eq!(
        store
            .claim_workflow_tasks(&ClaimRequest::new("w", 5, Duration::from_secs(5)))
            .await
            .expect("claim")
            .len(),
        1
    );
}

// ---- two processes ----

/// Claims and renewals wait for no fsync of their own, and neither does an activity's result
/// whose woken workflow task is claimed with it (that task's commit carries it to the disk);
/// every other commit does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_durable_writes_wait_for_the_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir.path().join("sync.db")).await.expect("open");
    let id = WorkflowId::new("wf");
    let req = ClaimRequest::new("w", 1, Duration::from_secs(30));
    let syncs = |expected: u64, what: &str| {
        assert_eq!(store.disk_syncs(), expected, "after {what}");
    };
    syncs(0, "opening");
    store
        .create_workflow(&id, started("Sync"))
        .await
        .expect("create");
    syncs(1, "a start");
    let task = store
        .claim_workflow_tasks(&req)
        .await
        .expect("claim")
        .remove(0);
    syncs(1, "a claim");
    let lease = store
        .renew_lease(&task.lease, Duration::from_secs(30))
        .await
        .expect("renew");
    syncs(1, "a renewal");
    let schedule = Event {
        seq: Seq::new(2),
        at: Timestamp::from_millis(0),
        kind: EventKind::ActivityScheduled {
            name: "a".into(),
            input: Payload::NULL,
            options: Default::default(),
        },
    };
    store
        .complete_workflow_task(WorkflowTaskCompletion {
            next_run: None,
            lease,
            workflow_id: id.clone(),
            expected_last_seq: Seq::FIRST,
            events: vec![schedule],
            consumed: Vec::new(),
            progress: None,
            logs: Vec::new(),
            eager: None,
            affinity: None,
        })
        .await
        .expect("commit");
    syncs(2, "a workflow task's commit");
    let activity = store
        .claim_activity_tasks(&req)
        .await
        .expect("claim")
        .remove(0);
    let answer = store
        .complete_activity_task(ActivityTaskCompletion {
            lease: activity.lease,
            workflow_id: id.clone(),
            result: EventKind::ActivityCompleted {
                activity_id: activity.activity_id,
                attempt: 1,
                result: Payload::NULL,
            },
            retry_after: None,
            then: AfterActivity::ClaimWorkflowTask(req.clone()),
        })
        .await
        .expect("complete");
    assert!(matches!(answer, ActivityCommitted::WorkflowTask(_)));
    syncs(2, "a result committed with its woken task's claim");
}

/// A write set that fails after writing is undone alone: the batch is run again with a
/// savepoint around each write set, and the others of the batch commit once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_set_that_fails_after_writing_is_undone_alone() {
    use loom_storage::Transact;
    use loom_storage::engine::{self, Op};
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(open(&dir.path().join("dirty.db")).await.expect("open"));
    store
        .create_workflow(&WorkflowId::new("taken"), started("Dirty"))
        .await
        .expect("create");
    let mut handles = Vec::new();
    for n in 0..40 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let id = WorkflowId::new(format!("wf-{n}"));
            let mut ws = engine::create(&id, started("Dirty")).expect("write set");
            if n % 10 == 7 {
                // Writes its own workflow, then breaks the primary key of another: an error
                // after writing, which no check of the engine's would let through.
                let Op::CreateWorkflow { started, .. } = ws.ops[0].clone() else {
                    unreachable!("create starts with the workflow's row");
                };
                ws.ops.push(Op::CreateWorkflow {
                    id: WorkflowId::new("taken"),
                    name: "Dirty".into(),
                    version: 1,
                    input: Payload::NULL,
                    started,
                    parent: None,
                });
            }
            store.transact(ws).await.map(drop)
        }));
    }
    let mut failed = Vec::new();
    for (n, h) in handles.into_iter().enumerate() {
        match h.await.expect("task") {
            Ok(()) => {}
            Err(StorageError::Rejected { .. }) => failed.push(n),
            Err(e) => panic!("write set {n}: unexpected {e}"),
        }
    }
    assert_eq!(failed, vec![7, 17, 27, 37]);
    for n in 0..40 {
        let found = store.describe(&WorkflowId::new(format!("wf-{n}"))).await;
        assert_eq!(found.is_ok(), n % 10 != 7, "wf-{n}: {found:?}");
    }
    let history = store
        .load_history(&WorkflowId::new("taken"), Seq::ZERO)
        .await
        .expect("history");
    assert_eq!(
        history.len(),
        1,
        "the broken write sets left nothing behind"
    );
}

fn probe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loom-sqlite-probe"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_claiming_from_one_file_never_share_a_task() {
    const N: usize = 400;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shared.db");
    let store = open(&path).await.expect("open");
    for i in 0..N {
        store
            .create_workflow(&WorkflowId::new(format!("wf-{i:03}")), started("Shared"))
            .await
            .expect("create");
    }
    let mut child = probe()
        .args(["claim", path.to_str().expect("utf-8 path"), "child"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the second process");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("utf-8");
    assert_eq!(first, "ready", "the child opened the file");
    let reader = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<String>>());
    // This process claims too, at the same time, one task per claim.
    let mut mine = Vec::new();
    let req = ClaimRequest::new("parent", 1, Duration::from_secs(600));
    let mut empty = 0;
    while empty < 3 {
        let tasks = store.claim_workflow_tasks(&req).await.expect("claim");
        if tasks.is_empty() {
            empty += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        } else {
            empty = 0;
        }
        mine.extend(tasks.into_iter().map(|t| t.workflow_id.to_string()));
        // Leave the other process room: SQLite's busy handler sleeps between tries, so a
        // writer that takes the lock back at once can starve it (fairness, not safety).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let theirs = reader.join().expect("reader");
    let out = child.wait_with_output().expect("child finishes");
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<&String> = mine.iter().chain(theirs.iter()).collect();
    let unique: BTreeSet<&String> = all.iter().copied().collect();
    assert_eq!(
        all.len(),
        unique.len(),
        "a task was claimed by both processes"
    );
    assert_eq!(unique.len(), N, "every task was claimed by one of them");
    assert!(!theirs.is_empty(), "the second process took part");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_mid_batch_loses_only_unacknowledged_work() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("crash.db");
    drop(open(&path).await.expect("create"));
    let file = path.to_str().expect("utf-8 path").to_owned();
    let acked = crash::kill_repeatedly(
        |round| {
            let mut cmd = probe();
            cmd.args(["write", &file, &format!("r{round}")]);
            cmd
        },
        5,
    );
    let raw = rusqlite::Connection::open(&path).expect("raw");
    let check: String = raw
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity check");
    assert_eq!(check, "ok");
    drop(raw);
    let store = open(&path).await.expect("reopen after the crashes");
    crash::check_survivors(&store, &acked).await;
}

/// The activity tasks a commit schedules are written only when something could see them
/// (`apply.rs`, "Activity tasks born claimed"); its eager claim still takes the workflow's
/// claimable tasks in the store's order. On a clock that stands still every task is ready
/// at the same instant, so the order is the tasks' ids: the one already waiting first, then
/// the new ones as scheduled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eager_claim_keeps_the_order_of_ids_when_times_tie() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = loom_storage::ManualClock::new(Timestamp::from_millis(1_000_000));
    let options = SqliteOptions {
        clock: Arc::new(clock),
        ..SqliteOptions::default()
    };
    let store: kit::Store = Arc::new(
        SqliteStorage::open(dir.path().join("tie.db"), options)
            .await
            .expect("open"),
    );
    kit::create(&store, "tie").await;
    let task = kit::claim_workflow(&store).await;
    store
        .complete_workflow_task(kit::completion(&task, vec![kit::schedule("waiting", 0)]))
        .await
        .expect("commit");
    let id = WorkflowId::new("tie");
    store
        .signal(&id, "go", Payload::NULL)
        .await
        .expect("signal");
    let task = kit::claim_workflow(&store).await;
    let kinds = (1..=3)
        .map(|n| kit::schedule(&format!("new-{n}"), n))
        .collect();
    let mut c = kit::completion(&task, kinds);
    c.eager = Some(kit::claim(3));
    let eager = store
        .complete_workflow_task(c)
        .await
        .expect("commit and claim");
    let names: Vec<&str> = eager.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["waiting", "new-1", "new-2"]);
    let ids: Vec<u64> = eager.iter().map(|t| t.lease.task.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in order: {ids:?}");
    assert_eq!(eager[2].input, Payload::encode(&2).expect("encode"));
    let rest = store
        .claim_activity_tasks(&kit::claim(10))
        .await
        .expect("claim");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].name, "new-3");
    assert!(
        rest[0].lease.task.0 > ids[2],
        "written after the ones taken"
    );
    for t in eager.iter().chain(&rest) {
        store
            .complete_activity_task(kit::completed(t, 0))
            .await
            .expect("every lease commits");
    }
}

/// The log is copied back into the database file by a thread of its own, long before the
/// log's length would make the writer do it: after a few hundred commits (far fewer pages
/// than the writer's backstop), the file itself grows within moments, with nothing else
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_checkpointed_off_the_writer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ckpt.db");
    let store = open(&path).await.expect("open");
    let size = || std::fs::metadata(&path).expect("the file").len();
    // Let a checkpoint of the migrations pass first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = size();
    for i in 0..200 {
        store
            .create_workflow(&WorkflowId::new(format!("wf-{i}")), started("Ckpt"))
            .await
            .expect("create");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while size() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the database file stayed at {before} bytes: nothing was checkpointed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        store.stats().await.expect("stats").events,
        200,
        "nothing lost"
    );
}

/// A purge deletes every row of the workflow's, table by table: nothing cascades, since the
/// schema's foreign keys are not enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_leaves_no_row_of_the_workflow_behind() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("purge.db");
    let store: kit::Store = Arc::new(open(&path).await.expect("open"));
    let id = WorkflowId::new("gone");
    kit::create(&store, "gone").await;
    let task = kit::claim_workflow(&store).await;
    let tag = EventKind::TagSet {
        key: "k".into(),
        value: loom_core::TagValue::Text("v".into()),
    };
    let mut first = kit::completion(&task, vec![tag, kit::schedule("a", 0)]);
    first.logs = vec![loom_core::LogRecord {
        seq: Seq::new(3),
        at: Timestamp::from_millis(0),
        level: loom_core::LogLevel::Info,
        message: "hello".into(),
    }];
    store.complete_workflow_task(first).await.expect("commit");
    store.signal(&id, "s", Payload::NULL).await.expect("signal");
    let task = kit::claim_workflow(&store).await;
    let done = EventKind::WorkflowCompleted {
        output: Payload::NULL,
    };
    store
        .complete_workflow_task(kit::completion(&task, vec![done]))
        .await
        .expect("complete");
    kit::create(&store, "kept").await;
    let raw = rusqlite::Connection::open(&path).expect("open raw");
    let rows = |table: &str, column: &str, id: &str| -> i64 {
        raw.query_row(
            &format!("SELECT COUNT(*) FROM {table} WHERE {column} = ?1"),
            [id],
            |r| r.get(0),
        )
        .expect("count")
    };
    // A closed workflow's tasks and messages are gone already; these stay until a purge.
    for table in ["events", "logs", "tags"] {
        assert!(
            rows(table, "workflow_id", "gone") > 0,
            "nothing in {table} to purge"
        );
    }
    // Ended before the purge's now, not at it.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let purged = store
        .purge(&loom_storage::Purge {
            older_than: Duration::ZERO,
            status: None,
            name: None,
            except_names: Vec::new(),
            limit: 10,
        })
        .await
        .expect("purge");
    assert_eq!(purged, vec![id.clone()]);
    for table in ["events", "past_events", "messages", "tasks", "logs", "tags"] {
        assert_eq!(
            rows(table, "workflow_id", "gone"),
            0,
            "rows left in {table}"
        );
    }
    assert_eq!(rows("workflows", "id", "gone"), 0);
    assert_eq!(
        rows("tasks", "workflow_id", "kept"),
        1,
        "another workflow's rows stay"
    );
}

/// A store in `dir` with `readers` read connections, holding one workflow, `id`.
async fn one_workflow_to_read(dir: &Path, readers: usize, id: &WorkflowId) -> SqliteStorage {
    let options = SqliteOptions {
        readers,
        ..SqliteOptions::default()
    };
    let store = SqliteStorage::open(dir.join("reads.db"), options)
        .await
        .expect("open");
    store
        .create_workflow(id, started("Reader"))
        .await
        .expect("create");
    store
}

/// Many reads at once share the store's few read connections, waiting their turn: each extra
/// connection would be opened, parse the schema and prepare its statements afresh, for no
/// gain on a machine with fewer cores than reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_at_once_never_open_more_connections_than_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = WorkflowId::new("read-often");
    let store = Arc::new(one_workflow_to_read(dir.path(), 3, &id).await);
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..48 {
        let store = store.clone();
        let id = id.clone();
        reads.spawn(async move {
            let seen = store.clone();
            loom_storage::Transact::read(
                &*store,
                Box::new(move |db, _| {
                    let history = db.load_history(&id, Seq::ZERO)?;
                    // Held a while, so that the reads overlap.
                    std::thread::sleep(Duration::from_millis(5));
                    let (open, _) = seen.counters().connections.expect("counted");
                    Ok((history.len(), open))
                }),
            )
            .await
        });
    }
    let mut most = 0;
    while let Some(read) = reads.join_next().await {
        let (events, open) = read.expect("joined").expect("read");
        assert_eq!(events, 1);
        most = most.max(open);
    }
    assert!(
        (1..=3).contains(&most),
        "{most} read connections open at once"
    );
    let (open, idle) = store.counters().connections.expect("counted");
    assert_eq!(
        (open, idle),
        (most, most),
        "every read connection is idle again"
    );
}

/// No read connections asked for still means one: reads run one at a time, never wait for
/// ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_readers_means_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = WorkflowId::new("one-reader");
    let store = one_workflow_to_read(dir.path(), 0, &id).await;
    for _ in 0..2 {
        let history =
            tokio::time::timeout(Duration::from_secs(10), store.load_history(&id, Seq::ZERO))
                .await
                .expect("a read does not wait for ever")
                .expect("read");
        assert_eq!(history.len(), 1);
    }
    assert_eq!(store.counters().connections, Some((1, 1)));
}

/// A read that panics is an error to its caller, and its connection is neither reused nor
/// still counted as open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_panics_leaves_no_connection_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStorage::open(dir.path().join("p.db"), SqliteOptions::default())
        .await
        .expect("open");
    let failed = loom_storage::Transact::read(
        &store,
        Box::new(|_, _| -> loom_storage::Result<()> { panic!("a read job panicked") }),
    )
    .await;
    assert!(
        matches!(failed, Err(StorageError::Unavailable { .. })),
        "{failed:?}"
    );
    assert_eq!(store.counters().connections, Some((0, 0)));
    let missing = store
        .load_history(&WorkflowId::new("none"), Seq::ZERO)
        .await;
    assert!(
        matches!(missing, Err(StorageError::NotFound(_))),
        "the next read runs: {missing:?}"
    );
    assert_eq!(store.counters().connections, Some((1, 1)));
}
