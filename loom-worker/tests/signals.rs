//! Typed signals end to end on every backend: a checked send refuses an unknown name or a
//! payload that does not fit, writing nothing; a typed send arrives; a malformed payload sent
//! unchecked reaches the workflow as an error value it handles, and the run goes on.

use std::sync::Arc;
use std::time::Duration;

use loom_core::{
    Payload, Registry, Signal, SignalError, Signals, Workflow, WorkflowContext, WorkflowError,
};
use loom_storage::Storage;
use loom_worker::{Client, ClientError, StartOptions, Worker, WorkerConfig};

mod support;
use support::{memory, mysql, postgres, redb, sqlite};

const WAIT: Duration = Duration::from_secs(20);

struct Deposit;
impl Signal for Deposit {
    const NAME: &'static str = "deposit";
    type Payload = u64;
}

/// Sums three deposits, counting the malformed ones it skipped.
struct PiggyBank;
impl Workflow for PiggyBank {
    const NAME: &'static str = "PiggyBank";
    type Input = ();
    type State = ();
    type Output = (u64, u32);
    fn signals(signals: &mut Signals) {
        signals.add::<Deposit>();
    }
    async fn run(ctx: WorkflowContext<Self>) -> Result<(u64, u32), WorkflowError> {
        let (mut sum, mut skipped, mut got) = (0, 0, 0);
        while got < 3 {
            match ctx.signal::<Deposit>().await {
                Ok(n) => {
                    sum += n;
                    got += 1;
                }
                Err(SignalError::BadPayload { .. }) => skipped += 1,
                Err(e) => return Err(e.into()),
            }
        }
        Ok((sum, skipped))
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.add_workflow::<PiggyBank>().expect("register");
    r
}

async fn checked_and_typed_sends(store: Arc<dyn Storage>) {
    let config = WorkerConfig {
        id: "signals".into(),
        poll_interval: Duration::from_millis(20),
        ..WorkerConfig::default()
    };
    let (client, running): (Client, _) =
        support::run(Worker::with_config(store, registry(), config));
    let handle = client
        .start::<PiggyBank>(&(), StartOptions::id("piggy"))
        .await
        .expect("start");
    let id = handle.id().clone();
    let registry = registry();
    for (name, payload) in [
        ("deposit", Payload::encode(&"ten").expect("encode")),
        ("withdraw", Payload::encode(&5).expect("encode")),
    ] {
        let err = client
            .signal_checked(&registry, &id, name, payload)
            .await
            .expect_err("refused");
        assert!(matches!(err, ClientError::Payload(_)), "{err}");
    }
    let pending = client.storage().pending(&id).await.expect("pending");
    assert!(pending.messages.is_empty(), "nothing was written");
    client.send::<Deposit>(&id, &10).await.expect("typed");
    client
        .signal_checked(
            &registry,
            &id,
            "deposit",
            Payload::encode(&20).expect("encode"),
        )
        .await
        .expect("checked");
    // Unchecked and malformed: the workflow skips it.
    client
        .signal(&id, "deposit", Payload::encode(&"lots").expect("encode"))
        .await
        .expect("unchecked");
    client.send::<Deposit>(&id, &30).await.expect("typed");
    assert_eq!(handle.result_within(WAIT).await.expect("result"), (60, 1));
    running.stop().await;
}

on_every_backend!(checked_and_typed_sends);
