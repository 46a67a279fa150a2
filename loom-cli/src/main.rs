//! The `loom` binary. The command set is not built yet (issue 6); until it is, the binary says
//! so and exits with status 2 rather than pretending to work.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "loom {}: the command line is not built yet; see ARCHITECTURE.md",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
