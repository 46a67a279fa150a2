//! # loom-sim: deterministic simulation of Loom
//!
//! This crate is the **room of simulation**: a seeded workload ([`workload`]), the invariants
//! every simulated run must keep ([`check`]), and a store that injects faults at every call
//! ([`faulty`]). Its tests drive them two ways, each run in one thread with every choice drawn
//! from one seed, so that a failing seed reproduces the same run exactly:
//!
//! - `tests/protocol.rs` plays simulated workers step by step against the store engine and the
//!   replay machine: it explores the store's rules under faults, one store call at a time.
//! - `tests/system.rs` runs real [`loom_worker::Worker`]s (their claim loops, chains, lease
//!   renewals, retries and backoff) on a current-thread tokio runtime with paused time, so the
//!   scheduling, the clock and the workers' randomness are all under the seed.
//!
//! What it must not touch: anything that runs in production. It is a test harness; no other
//! crate depends on it, and it reaches the engine only through the public APIs of
//! loom-core, loom-storage and loom-worker, on the in-memory store.

pub mod check;
pub mod faulty;
pub mod workload;

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use loom_core::Timestamp;
use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// The simulation's seeded generator.
pub struct Rng(Pcg64Mcg);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(Pcg64Mcg::seed_from_u64(seed))
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n.max(1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A random 64-bit number.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
}

/// A store clock that follows tokio's (paused, virtual) time, and can jump ahead.
#[derive(Debug)]
pub struct SimClock {
    base: Timestamp,
    start: tokio::time::Instant,
    jumped_ms: AtomicI64,
}

impl SimClock {
    /// A clock showing `base` now; call it inside the runtime whose time it follows.
    pub fn new(base: Timestamp) -> Self {
        SimClock {
            base,
            start: tokio::time::Instant::now(),
            jumped_ms: AtomicI64::new(0),
        }
    }

    /// Moves the clock ahead by `by` at once (tokio's time does not move).
    pub fn jump(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.jumped_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl loom_storage::Clock for SimClock {
    fn now(&self) -> Timestamp {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        Timestamp::from_millis(
            self.base.as_millis() + elapsed + self.jumped_ms.load(Ordering::SeqCst),
        )
    }
}
