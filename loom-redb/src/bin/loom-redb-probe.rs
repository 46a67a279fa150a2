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

use loom_redb::RedbStorage;
use loom_storage::conformance::crash;

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

/// The shared crash writer (`loom_storage::conformance::crash`) on this file.
async fn write(path: &str, prefix: &str) -> Result<(), String> {
    let store = Arc::new(RedbStorage::open(path).await.map_err(|e| e.to_string())?);
    crash::write_acknowledged(store, prefix).await
}
