//! The storage backends, each through the `Storage` trait: appends (one caller, and many at
//! once to show group commit), history loads, workflow starts, and claim+complete cycles.
//!
//! Run with `cargo bench -p loom-benches --bench storage`. SQLite runs in its default, durable
//! mode (WAL, `synchronous = FULL`) and redb with durable commits, in a temporary directory;
//! PostgreSQL runs when the server in `LOOM_TEST_POSTGRES_URL` (default: the local test
//! server) answers, each case in a fresh schema.

#![allow(missing_docs, reason = "criterion_group! generates undocumented items")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_like::join_all;
use loom_core::{Event, EventKind, HISTORY_FORMAT, Payload, Seq, Timestamp, WorkflowId};
use loom_sqlite::{SqliteOptions, SqliteStorage};
use loom_storage::{ClaimRequest, MemoryStorage, Storage, WorkflowTaskCompletion};
use tokio::runtime::Runtime;

/// `join_all` without another dependency: spawn and await every future.
mod futures_like {
    pub(crate) async fn join_all<T: Send + 'static>(
        futures: Vec<impl std::future::Future<Output = T> + Send + 'static>,
    ) -> Vec<T> {
        let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await.expect("task"));
        }
        out
    }
}

const CONCURRENCY: usize = 64;

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
            name: "Bench".into(),
            version: 1,
            input: Payload::encode(&"an input of a few bytes").expect("encode"),
            format: HISTORY_FORMAT,
            timeouts: Default::default(),
            parent: None,
        },
    }
}

fn step(seq: u64) -> Event {
    Event {
        seq: Seq::new(seq),
        at: Timestamp::from_millis(0),
        kind: EventKind::StateSet {
            key: "progress".into(),
            value: Payload::encode(&seq).expect("encode"),
        },
    }
}

/// Opens a fresh, empty store of one backend.
type Open = Box<dyn Fn(&Runtime) -> Arc<dyn Storage>>;

struct Backend {
    name: &'static str,
    open: Open,
}

fn backends(rt: &Runtime) -> Vec<Backend> {
    let mut all = vec![
        Backend {
            name: "memory",
            open: Box::new(|_| Arc::new(MemoryStorage::new())),
        },
        Backend {
            name: "redb",
            open: Box::new(|rt| {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("bench.redb");
                std::mem::forget(dir);
                Arc::new(
                    rt.block_on(loom_redb::RedbStorage::open(path))
                        .expect("open"),
                )
            }),
        },
        Backend {
            name: "sqlite",
            open: Box::new(|rt| {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("bench.db");
                std::mem::forget(dir);
                Arc::new(
                    rt.block_on(SqliteStorage::open(path, SqliteOptions::default()))
                        .expect("open"),
                )
            }),
        },
    ];
    // PostgreSQL when a server answers (LOOM_TEST_POSTGRES_URL; a fresh schema per case).
    if rt.block_on(loom_postgres::testing::server_available()) {
        all.push(Backend {
            name: "postgres",
            open: Box::new(|rt| {
                let store = rt
                    .block_on(loom_postgres::testing::fresh())
                    .expect("a server");
                Arc::new(store)
            }),
        });
    }
    all
}

/// Creates `n` workflows named `{prefix}-{i}`.
async fn create_many(store: &Arc<dyn Storage>, prefix: &str, n: usize) -> Vec<WorkflowId> {
    let ids: Vec<WorkflowId> = (0..n)
        .map(|i| WorkflowId::new(format!("{prefix}-{i}")))
        .collect();
    for chunk in ids.chunks(CONCURRENCY) {
        let futs: Vec<_> = chunk
            .iter()
            .map(|id| {
                let store = store.clone();
                let id = id.clone();
                async move { store.create_workflow(&id, started()).await.expect("create") }
            })
            .collect();
        join_all(futs).await;
    }
    ids
}

/// Claims the one ready workflow task and commits `events` step events and a timer that is
/// already due, so the workflow is ready again at once (`events + 1` events in all).
async fn cycle(store: &Arc<dyn Storage>, events: u64) {
    let req = ClaimRequest::new("bench", 1, Duration::from_secs(60));
    let t = store
        .claim_workflow_tasks(&req)
        .await
        .expect("claim")
        .pop()
        .expect("a ready task");
    let first = t.last_seq.get() + 1;
    let mut new: Vec<Event> = (first..first + events).map(step).collect();
    new.push(Event {
        seq: Seq::new(first + events),
        at: Timestamp::from_millis(0),
        kind: EventKind::TimerScheduled {
            fire_at: Timestamp::from_millis(0),
            duration_ms: None,
        },
    });
    store
        .complete_workflow_task(WorkflowTaskCompletion {
            next_run: None,
            lease: t.lease,
            workflow_id: t.workflow_id,
            expected_last_seq: t.last_seq,
            events: new,
            consumed: t.messages.iter().map(|m| m.id).collect(),
            progress: None,
            logs: Vec::new(),
            eager: None,
            affinity: None,
        })
        .await
        .expect("complete");
}

fn storage(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for backend in backends(&rt) {
        let name = backend.name;
        let mut group = c.benchmark_group(format!("storage/{name}"));
        group
            .sample_size(20)
            .measurement_time(Duration::from_secs(4));

        // One caller: every workflow task's commit waits for its own transaction. Each task
        // also arms a timer that is already due, so the workflow is ready again at once.
        for events in [1u64, 10] {
            let store = (backend.open)(&rt);
            rt.block_on(create_many(&store, "task", 1));
            group.throughput(Throughput::Elements(1));
            group.bench_function(format!("claim_commit_{events}_event(s)"), |b| {
                b.iter(|| rt.block_on(cycle(&store, events)));
            });
        }

        // Starting workflows, many at once.
        {
            let store = (backend.open)(&rt);
            let mut round = 0u64;
            group.throughput(Throughput::Elements(CONCURRENCY as u64));
            group.bench_function(format!("start_x{CONCURRENCY}_concurrent"), |b| {
                b.iter(|| {
                    round += 1;
                    rt.block_on(create_many(&store, &format!("start{round}"), CONCURRENCY));
                });
            });
        }

        // Loading histories of 100 and 10,000 events.
        for len in [100u64, 10_000] {
            let store = (backend.open)(&rt);
            let id = rt.block_on(create_many(&store, "load", 1)).remove(0);
            let mut last = 1;
            while last < len {
                let n = (len - last).min(500);
                rt.block_on(cycle(&store, n - 1));
                last += n;
            }
            group.throughput(Throughput::Elements(len));
            group.bench_function(format!("load_history_{len}"), |b| {
                b.iter(|| {
                    let h = rt
                        .block_on(store.load_history(&id, Seq::ZERO))
                        .expect("load");
                    assert_eq!(h.len() as u64, len);
                });
            });
        }

        // Claim one workflow task and complete it with one event; many workers at once.
        {
            let store = (backend.open)(&rt);
            let mut round = 0u64;
            group.throughput(Throughput::Elements(CONCURRENCY as u64));
            group.bench_function(format!("claim_complete_x{CONCURRENCY}_concurrent"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        round += 1;
                        rt.block_on(create_many(&store, &format!("cycle{round}"), CONCURRENCY));
                        let start = Instant::now();
                        let futs: Vec<_> = (0..CONCURRENCY)
                            .map(|w| {
                                let store = store.clone();
                                async move {
                                    let req = ClaimRequest::new(
                                        format!("w{w}"),
                                        1,
                                        Duration::from_secs(60),
                                    );
                                    let tasks =
                                        store.claim_workflow_tasks(&req).await.expect("claim");
                                    for t in tasks {
                                        store
                                            .complete_workflow_task(WorkflowTaskCompletion {
                                                next_run: None,
                                                lease: t.lease,
                                                workflow_id: t.workflow_id,
                                                expected_last_seq: t.last_seq,
                                                events: vec![step(t.last_seq.get() + 1)],
                                                consumed: t.messages.iter().map(|m| m.id).collect(),
                                                progress: None,
                                                logs: Vec::new(),
                                                eager: None,
                                                affinity: None,
                                            })
                                            .await
                                            .expect("complete");
                                    }
                                }
                            })
                            .collect();
                        rt.block_on(join_all(futs));
                        total += start.elapsed();
                    }
                    total
                });
            });
        }
        group.finish();
    }
}

criterion_group!(benches, storage);
criterion_main!(benches);
