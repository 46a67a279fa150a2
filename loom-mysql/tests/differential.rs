//! The differential test against the real MySQL or MariaDB server, on a manual clock:
//! generated sequences of operations must give the same answers and state as `MemoryStorage`
//! (see `loom_storage::conformance::differential`). Skipped loudly without a server; a
//! failure under `CI=true`.

use loom_storage::conformance::differential;

#[test]
fn mysql_agrees_with_the_reference() {
    differential::check(loom_mysql::testing::fresh_on);
}
