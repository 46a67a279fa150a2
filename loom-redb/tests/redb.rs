//! redb-specific behaviour: reopening, the format version, bad files, one process per file,
//! and a writer killed mid-transaction.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use loom_core::{Event, EventKind, HISTORY_FORMAT, Payload, Seq, Timestamp, WorkflowId};
use loom_redb::RedbStorage;
use loom_storage::conformance::crash;
use loom_storage::{Storage, StorageError};

fn started() -> Event {
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
            name: "Kept".into(),
            version: 1,
            input: Payload::NULL,
            format: HISTORY_FORMAT,
            timeouts: Default::default(),
            parent: None,
        },
    }
}

fn probe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loom-redb-probe"))
}

/// Waits until the writer thread of a dropped store has let go of the file.
async fn reopen(path: &Path) -> RedbStorage {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match RedbStorage::open(path).await {
            Ok(store) => return store,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot reopen {}: {e}", path.display()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_reopens_with_its_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("loom.redb");
    let store = RedbStorage::open(&path).await.expect("create");
    store
        .create_workflow(&WorkflowId::new("kept"), started())
        .await
        .expect("create");
    drop(store);
    let store = reopen(&path).await;
    assert_eq!(
        store
            .describe(&WorkflowId::new("kept"))
            .await
            .expect("describe")
            .name,
        "Kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_from_a_newer_loom_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("future.redb");
    drop(RedbStorage::open(&path).await.expect("create"));
    // Pretend a newer Loom wrote it.
    set_format(&path, 99);
    let err = RedbStorage::open(&path).await.expect_err("refused");
    assert!(matches!(err, StorageError::Incompatible(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("future.redb") && msg.contains("99") && msg.contains("newer"),
        "{msg}"
    );
}

/// The file at `path` opened with redb itself, once the store's writer thread has let go of
/// it (shortly after the store is dropped).
fn open_raw(path: &std::path::Path) -> redb::Database {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match redb::Database::open(path) {
            Ok(db) => return db,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{e}"),
        }
    }
}

/// Sets the format recorded in the file at `path`, as another build would have written it.
fn set_format(path: &std::path::Path, format: u64) {
    let db = open_raw(path);
    let tx = db.begin_write().expect("write");
    {
        let mut meta = tx
            .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
            .expect("meta");
        meta.insert("format", format).expect("insert");
    }
    tx.commit().expect("commit");
}

fn format_of(path: &std::path::Path) -> Option<u64> {
    use redb::ReadableDatabase;
    let db = open_raw(path);
    let tx = db.begin_read().expect("read");
    let meta = tx
        .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
        .expect("meta");
    meta.get("format").expect("get").map(|v| v.value())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_earlier_formats_open_upgraded_with_their_data() {
    for format in [1, 2] {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("old.redb");
        {
            let store = RedbStorage::open(&path).await.expect("create");
            store
                .create_workflow(&WorkflowId::new("kept"), started())
                .await
                .expect("create a workflow");
        }
        set_format(&path, format);
        let store = RedbStorage::open(&path).await.expect("an older file opens");
        let summary = store
            .describe(&WorkflowId::new("kept"))
            .await
            .expect("its workflow is there");
        assert_eq!(summary.run, 1, "on its first run");
        assert!(
            store
                .runs(&WorkflowId::new("kept"))
                .await
                .expect("runs")
                .is_empty()
        );
        let claimed = store
            .claim_workflow_tasks(&loom_storage::ClaimRequest::new(
                "w",
                10,
                std::time::Duration::from_secs(30),
            ))
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1, "its task is claimable, by anyone");
        drop(store);
        assert_eq!(
            format_of(&path),
            Some(3),
            "format {format} is recorded as the format this build writes"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_redb_is_refused_by_name_and_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notes.txt");
    let text = "not a redb database\n".repeat(500);
    std::fs::write(&path, &text).expect("write");
    let err = RedbStorage::open(&path).await.expect_err("refused");
    assert!(err.to_string().contains("notes.txt"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        text,
        "the file is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_gets_a_clear_error_not_a_hang() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("held.redb");
    let store = RedbStorage::open(&path).await.expect("open");
    store
        .create_workflow(&WorkflowId::new("mine"), started())
        .await
        .expect("create");
    let started_at = Instant::now();
    let out = probe()
        .args(["open", path.to_str().expect("utf-8 path")])
        .output()
        .expect("run a second process");
    assert!(started_at.elapsed() < Duration::from_secs(10), "no hang");
    assert!(
        !out.status.success(),
        "the second process must not open the file"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already open in another process")
            && stderr.contains("one process per file")
            && stderr.contains("SQLite"),
        "{stderr}"
    );
    // The first process is unaffected.
    assert_eq!(
        store
            .describe(&WorkflowId::new("mine"))
            .await
            .expect("describe")
            .name,
        "Kept"
    );

    // And the other way round: while a child holds the file, this process is refused.
    drop(store);
    let other = dir.path().join("child.redb");
    let mut child = probe()
        .args(["open", other.to_str().expect("utf-8 path")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().expect("a line").expect("utf-8"), "open");
    let err = RedbStorage::open(&other)
        .await
        .expect_err("held by the child");
    assert!(
        err.to_string().contains("already open in another process"),
        "{err}"
    );
    child.wait().expect("reap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_mid_transaction_leaves_a_consistent_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("crash.redb");
    let file = path.to_str().expect("utf-8 path").to_owned();
    let acked = crash::kill_repeatedly(
        |round| {
            let mut cmd = probe();
            cmd.args(["write", &file, &format!("r{round}")]);
            cmd
        },
        4,
    );
    let store = RedbStorage::open(&path)
        .await
        .expect("reopen after the crashes");
    crash::check_survivors(&store, &acked).await;
}
