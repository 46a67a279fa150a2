//! A second process for loom-sqlite's multi-process tests: it opens the same file as the test
//! and claims or writes, printing one line per acknowledged operation. Not part of Loom's
//! command line; `cargo test -p loom-sqlite` builds and drives it.
//!
//! ```text
//! loom-sqlite-probe claim PATH OWNER   # claim workflow tasks until none are left; print each id
//! loom-sqlite-probe write PATH PREFIX  # create workflows and append to them forever; print acks
//! ```

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use loom_sqlite::{SqliteOptions, SqliteStorage};
use loom_storage::conformance::crash;
use loom_storage::{ClaimRequest, Storage};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loom-sqlite-probe: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.as_slice() {
        [cmd, path, owner] if cmd == "claim" => runtime.block_on(claim(path, owner)),
        [cmd, path, prefix] if cmd == "write" => runtime.block_on(write(path, prefix)),
        _ => Err("usage: loom-sqlite-probe (claim PATH OWNER | write PATH PREFIX)".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loom-sqlite-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn open(path: &str) -> Result<SqliteStorage, String> {
    SqliteStorage::open(path, SqliteOptions::default())
        .await
        .map_err(|e| e.to_string())
}

/// Prints `ready` once the file is open, then claims one task at a time with a long lease
/// until three rounds in a row find nothing; prints every workflow id it was handed.
async fn claim(path: &str, owner: &str) -> Result<(), String> {
    let store = open(path).await?;
    let req = ClaimRequest::new(owner, 1, Duration::from_secs(600));
    let mut empty = 0;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    while empty < 3 {
        let tasks = store
            .claim_workflow_tasks(&req)
            .await
            .map_err(|e| e.to_string())?;
        if tasks.is_empty() {
            empty += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        } else {
            empty = 0;
        }
        for t in tasks {
            writeln!(out, "{}", t.workflow_id).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The shared crash writer (`loom_storage::conformance::crash`) on this file.
async fn write(path: &str, prefix: &str) -> Result<(), String> {
    let store = Arc::new(open(path).await?);
    crash::write_acknowledged(store, prefix).await
}
