//! loom-core alone: the cost of replaying a long history, and of one workflow task decision.
//!
//! Run with `cargo bench -p loom-benches --bench core`.

#![allow(missing_docs, reason = "criterion_group! generates undocumented items")]

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use loom_benches::{finished_history, machine, result, started};
use loom_core::{Activation, ActivityId, Seq, Timestamp};

fn replay(c: &mut Criterion) {
    // 4,999 activities: 2 * 4,999 + 2 = 10,000 events.
    let history = finished_history(4_999);
    assert_eq!(history.len(), 10_000);
    c.bench_function("core/replay_10k_events", |b| {
        b.iter_batched(
            || history.clone(),
            |h| {
                let mut m = machine(h);
                let d = m
                    .activate(Activation::new(Timestamp::from_millis(1), 1))
                    .expect("replays");
                assert!(d.events.is_empty());
                m
            },
            BatchSize::LargeInput,
        );
    });
}

fn decision(c: &mut Criterion) {
    // A warm machine waiting on its first activity; one task delivers the result and the code
    // schedules the next activity.
    c.bench_function("core/one_decision", |b| {
        b.iter_batched(
            || {
                let mut m = machine(vec![started(1_000)]);
                let d = m
                    .activate(Activation::new(Timestamp::from_millis(1), 1))
                    .expect("starts");
                assert_eq!(d.events.len(), 1);
                m
            },
            |mut m| {
                let msg = result(ActivityId(Seq::new(2)));
                let d = m
                    .activate(Activation::new(Timestamp::from_millis(2), 2).with_messages([msg]))
                    .expect("decides");
                assert_eq!(d.events.len(), 2);
                m
            },
            BatchSize::SmallInput,
        );
    });
}

criterion_group!(benches, replay, decision);
criterion_main!(benches);
