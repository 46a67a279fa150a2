//! A second process for loom-redb's tests. Not part of Loom's command line.
//!
//! ```text
//! loom-redb-probe open PATH           # open the store; print "open" and hold it for a while
//! loom-redb-probe write PATH PREFIX   # create workflows and append to them forever; print acks
//! ```

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use loom_core::{Event, EventKind, HISTORY_FORMAT, Payload, Seq, Timestamp, WorkflowId};
use loom_redb::RedbStorage;
use loom_storage::Storage;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loom-redb-probe: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.as_slice() {
        [cmd, path] if cmd == "open" => runtime.block_on(hold(path)),
        [cmd, path, prefix] if cmd == "write" => runtime.block_on(write(path, prefix)),
        _ => Err("usage: loom-redb-probe (open PATH | write PATH PREFIX)".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loom-redb-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn hold(path: &str) -> Result<(), String> {
    let store = RedbStorage::open(path).await.map_err(|e| e.to_string())?;
    println!("open");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(store);
    Ok(())
}

async fn write(path: &str, prefix: &str) -> Result<(), String> {
    let store = Arc::new(RedbStorage::open(path).await.map_err(|e| e.to_string())?);
    let mut handles = Vec::new();
    for writer in 0..8 {
        let store = store.clone();
        let prefix = prefix.to_owned();
        handles.push(tokio::spawn(async move {
            for n in 0u64.. {
                let id = WorkflowId::new(format!("{prefix}-{writer}-{n}"));
                let started = Event {
                    seq: Seq::FIRST,
                    at: Timestamp::from_millis(0),
                    kind: EventKind::WorkflowStarted {
                        name: "Probe".into(),
                        version: 1,
                        input: Payload::NULL,
                        format: HISTORY_FORMAT,
                    },
                };
                store
                    .create_workflow(&id, started)
                    .await
                    .map_err(|e| e.to_string())?;
                let events = (2..=11)
                    .map(|s| Event {
                        seq: Seq::new(s),
                        at: Timestamp::from_millis(0),
                        kind: EventKind::StepStarted {
                            name: format!("s{s}"),
                        },
                    })
                    .collect();
                store
                    .append_events(&id, Seq::FIRST, events)
                    .await
                    .map_err(|e| e.to_string())?;
                println!("ack {id}");
            }
            Ok::<(), String>(())
        }));
    }
    for h in handles {
        h.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}
