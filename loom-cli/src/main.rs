//! The `loom` binary: the command line with Loom's example workflows registered.
//! Build your own with `loom_cli::run(your_registry)`.

use std::process::ExitCode;

fn main() -> ExitCode {
    loom_cli::run(loom_cli::examples::registry())
}
