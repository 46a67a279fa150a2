//! The generated workload: programs of activities, sleeps, signal waits, child workflows and
//! continue-as-new, run by one workflow type, and what each program must output.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use loom_core::{ActivityContext, Failure, Workflow, WorkflowContext, WorkflowError, WorkflowId};
use serde::{Deserialize, Serialize};

use crate::Rng;

/// One step of a generated program.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Op {
    /// Run activity `work` on this argument.
    Act(u32),
    /// Sleep this many milliseconds.
    Sleep(u32),
    /// Wait for the next `go` signal and add its payload.
    Wait,
    /// Start a child `Program` on [`child_program`] of this argument and add its output.
    Child(u32),
    /// Continue as new with the rest of the program and the sum so far.
    Continue,
}

/// A random program of 2 to 7 steps.
pub fn random_program(rng: &mut Rng) -> Vec<Op> {
    let len = 2 + rng.below(6);
    (0..len)
        .map(|_| match rng.below(8) {
            0..=2 => Op::Act(rng.below(50) as u32),
            3 => Op::Sleep(rng.below(2_000) as u32),
            4 | 5 => Op::Wait,
            6 => Op::Child(rng.below(20) as u32),
            _ => Op::Continue,
        })
        .collect()
}

/// How many signals a program waits for, across its runs.
pub fn signals_wanted(program: &[Op]) -> u64 {
    program.iter().filter(|op| matches!(op, Op::Wait)).count() as u64
}

/// The program a child started by `Op::Child(arg)` runs: activities and a sleep, no signals.
pub fn child_program(arg: u32) -> Vec<Op> {
    vec![Op::Act(arg), Op::Sleep(arg * 10), Op::Act(arg + 1)]
}

/// The input of a [`Program`] run: the sum so far, the run's generation (0 for the first run,
/// one more at each continue-as-new) and the rest of the program.
pub type ProgramInput = (u64, u32, Vec<Op>);

/// The input of a fresh program.
pub fn program_input(program: &[Op]) -> ProgramInput {
    (1, 0, program.to_vec())
}

/// Runs its program: the output folds the activities' results and the signals' payloads.
pub struct Program;

impl Workflow for Program {
    const NAME: &'static str = "Program";
    type Input = ProgramInput;
    type State = ();
    type Output = u64;
    async fn run(ctx: WorkflowContext<Self>) -> Result<u64, WorkflowError> {
        let (mut acc, generation, program) = ctx.input().clone();
        for (i, op) in program.iter().enumerate() {
            match op {
                Op::Act(arg) => {
                    let out = ctx.activity::<Work>((*arg, generation)).await?;
                    acc = (acc * 31 + out) % 1_000_003;
                }
                Op::Sleep(ms) => ctx.sleep(Duration::from_millis(u64::from(*ms))).await?,
                Op::Wait => {
                    let n: u64 = ctx.wait_signal("go").await?;
                    acc = (acc * 17 + n) % 1_000_003;
                }
                Op::Child(arg) => {
                    let out = ctx
                        .child::<Program>(program_input(&child_program(*arg)))
                        .await?;
                    acc = (acc * 13 + out) % 1_000_003;
                }
                Op::Continue => {
                    return Err(ctx.continue_as_new((
                        acc,
                        generation + 1,
                        program[i + 1..].to_vec(),
                    )));
                }
            }
        }
        Ok(acc)
    }
}

/// What activity `work` answers for `arg`.
pub fn work(arg: u32) -> u64 {
    u64::from(arg) * 7 + 3
}

/// The output of a fresh `program`, its signals' payloads being 0, 1, 2... in order (across its
/// runs).
pub fn expected(program: &[Op]) -> u64 {
    let mut acc = 1;
    let mut signal = 0u64;
    for op in program {
        match op {
            Op::Act(arg) => acc = (acc * 31 + work(*arg)) % 1_000_003,
            Op::Sleep(_) | Op::Continue => {}
            Op::Wait => {
                acc = (acc * 17 + signal) % 1_000_003;
                signal += 1;
            }
            Op::Child(arg) => acc = (acc * 13 + expected(&child_program(*arg))) % 1_000_003,
        }
    }
    acc
}

/// An activity of one run, as the ledger counts it: workflow, generation, activity id.
/// (Activity ids start again in each run; the generation tells the runs apart.)
pub type ActivityKey = (WorkflowId, u32, u64);

/// What a simulation records as it runs, for the checks at the end.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Executions of each activity.
    pub executions: BTreeMap<ActivityKey, u64>,
    /// Faults that explain running an activity again: an attempt failed by design, a report
    /// that failed or was fenced, a lease lost or a worker crashed while it ran.
    pub explained: BTreeMap<ActivityKey, u64>,
    /// Workflows asked to cancel.
    pub cancelled: BTreeSet<WorkflowId>,
    /// Attempts that failed by design.
    pub failed_attempts: u64,
}

impl Ledger {
    /// Counts a fault that explains running `key` again.
    pub fn explain(&mut self, key: ActivityKey) {
        *self.explained.entry(key).or_default() += 1;
    }
}

/// A ledger shared by the simulation and the activities it runs.
pub type SharedLedger = Arc<Mutex<Ledger>>;

/// Locks a shared value, whether or not a panic poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Activity `work`, as real workers run it: counts each execution in the ledger, takes a
/// random while of (virtual) time, and, while faults are on, fails some early attempts.
pub struct Work {
    /// Where executions and failures by design are counted.
    pub ledger: SharedLedger,
    /// The simulation's generator.
    pub rng: Arc<Mutex<Rng>>,
    /// Whether faults are on.
    pub faults: Arc<AtomicBool>,
    /// The longest an execution takes.
    pub longest: Duration,
}

impl loom_core::Activity for Work {
    const NAME: &'static str = "work";
    /// The argument and the generation of the run that scheduled it.
    type Input = (u32, u32);
    type Output = u64;
    async fn run(
        &self,
        ctx: ActivityContext,
        (arg, generation): (u32, u32),
    ) -> Result<u64, Failure> {
        let info = ctx.info();
        let key = (
            info.workflow_id.clone(),
            generation,
            info.activity_id.0.get(),
        );
        *lock(&self.ledger)
            .executions
            .entry(key.clone())
            .or_default() += 1;
        let (fails, takes) = {
            let mut rng = lock(&self.rng);
            let fails = self.faults.load(Ordering::SeqCst) && info.attempt < 3 && rng.chance(20);
            let takes = rng.below(self.longest.as_millis() as u64 + 1);
            (fails, Duration::from_millis(takes))
        };
        tokio::time::sleep(takes).await;
        if fails {
            let mut ledger = lock(&self.ledger);
            ledger.failed_attempts += 1;
            ledger.explain(key);
            return Err(Failure::new("flaky", "a simulated failure"));
        }
        Ok(work(arg))
    }
}
