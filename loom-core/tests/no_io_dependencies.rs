//! loom-core must stay pure: no runtime, no database, no OS randomness among its dependencies.

use std::process::Command;

#[test]
#[expect(
    clippy::disallowed_methods,
    reason = "this test inspects the build, not the core: it may read the environment"
)]
fn loom_core_depends_on_no_runtime_database_or_os_randomness() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "loom-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).expect("utf-8");
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"loom-core"),
        "unexpected cargo tree output: {tree}"
    );
    let banned = [
        "tokio",
        "async-std",
        "smol",
        "mio",
        "rusqlite",
        "libsqlite3-sys",
        "sqlx",
        "redb",
        "getrandom",
        "rand",
        "chrono",
        "time",
    ];
    for name in banned {
        assert!(
            !crates.contains(&name),
            "loom-core must not depend on {name}; its dependency tree is:\n{tree}"
        );
    }
}
