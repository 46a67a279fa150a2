//! `--db` URLs and opening the backend they name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use loom_storage::Storage;

use crate::Fail;

/// The database used when neither `--db` nor `LOOM_DB` is given.
pub(crate) const DEFAULT_URL: &str = "sqlite://.loom/loom.db";

/// A parsed `--db` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DbUrl {
    /// `sqlite://PATH`.
    Sqlite(PathBuf),
    /// `postgres://...` or `postgresql://...`.
    Postgres(String),
    /// `redb://PATH`.
    Redb(PathBuf),
    /// `mysql://...` or `mariadb://...`: MySQL 8 or MariaDB 10.6+.
    Mysql(String),
    /// `memory://`: the in-process reference store, for `loom bench` only: nothing in it
    /// outlives the process, so it measures the engine without a disk.
    Memory,
}

impl DbUrl {
    pub(crate) fn parse(url: &str) -> Result<Self, Fail> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            Fail::usage(format!(
                "--db {url:?} is not a database URL; use sqlite://PATH (for example {DEFAULT_URL})"
            ))
        })?;
        if scheme == "memory" {
            return Ok(DbUrl::Memory);
        }
        if rest.is_empty() {
            return Err(Fail::usage(format!("--db {url:?} names no database")));
        }
        match scheme {
            "sqlite" => Ok(DbUrl::Sqlite(PathBuf::from(rest))),
            "postgres" | "postgresql" => Ok(DbUrl::Postgres(url.to_owned())),
            "redb" => Ok(DbUrl::Redb(PathBuf::from(rest))),
            "mysql" => Ok(DbUrl::Mysql(url.to_owned())),
            "mariadb" => Ok(DbUrl::Mysql(format!("mysql://{rest}"))),
            other => Err(Fail::usage(format!(
                "--db {url:?}: unknown scheme {other:?}; use sqlite://PATH, postgres://..., mysql://... or redb://PATH"
            ))),
        }
    }

    /// The URL as people should see it.
    pub(crate) fn display(&self) -> String {
        match self {
            DbUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
            // Never a password on a terminal or in a log.
            DbUrl::Postgres(u) | DbUrl::Mysql(u) => loom_storage::redact_url(u),
            DbUrl::Redb(p) => format!("redb://{}", p.display()),
            DbUrl::Memory => "memory://".to_owned(),
        }
    }

    /// The file, for the embedded backends.
    pub(crate) fn file(&self) -> Option<&Path> {
        match self {
            DbUrl::Sqlite(p) | DbUrl::Redb(p) => Some(p),
            DbUrl::Postgres(_) | DbUrl::Mysql(_) | DbUrl::Memory => None,
        }
    }
}

/// How a command treats a database that does not exist yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Missing {
    /// Create it (and its directory, for `init` and the default location).
    Create,
    /// Refuse: a command that only reads or changes existing workflows.
    Refuse,
}

/// Opens the database for a one-shot command (`start`, `inspect`, `signal`...): on PostgreSQL
/// one connection, a cheap schema check, and no listening for work.
pub(crate) async fn open(
    url: &DbUrl,
    missing: Missing,
    make_dirs: bool,
) -> Result<Arc<dyn Storage>, Fail> {
    open_as(url, missing, make_dirs, false).await
}

/// Opens the database for a command that runs workflows (`worker`, `bench`, `demo`): on
/// PostgreSQL a pool, and a connection that listens for work from other processes.
pub(crate) async fn open_for_work(url: &DbUrl, missing: Missing) -> Result<Arc<dyn Storage>, Fail> {
    open_as(url, missing, false, true).await
}

#[cfg_attr(
    not(any(feature = "postgres", feature = "mysql")),
    expect(
        unused_variables,
        reason = "only PostgreSQL and MySQL open differently for work"
    )
)]
async fn open_as(
    url: &DbUrl,
    missing: Missing,
    make_dirs: bool,
    work: bool,
) -> Result<Arc<dyn Storage>, Fail> {
    if let Some(file) = url.file() {
        if !file.exists() {
            if missing == Missing::Refuse {
                return Err(Fail::usage(format!(
                    "there is no Loom database at {}; run `loom init` (or `loom start`) first, or pass --db",
                    url.display()
                )));
            }
            let default_dir = Path::new(".loom");
            let parent = file.parent().filter(|p| !p.as_os_str().is_empty());
            if let Some(dir) = parent.filter(|d| !d.exists()) {
                if !(make_dirs || dir == default_dir) {
                    return Err(Fail::usage(format!(
                        "cannot create {}: the directory {} does not exist (`loom init` creates it)",
                        url.display(),
                        dir.display()
                    )));
                }
                std::fs::create_dir_all(dir).map_err(|e| {
                    Fail::usage(format!(
                        "cannot create the directory {}: {e}",
                        dir.display()
                    ))
                })?;
            }
        }
    }
    match url {
        DbUrl::Memory => Ok(Arc::new(loom_storage::MemoryStorage::new())),
        #[cfg(feature = "sqlite")]
        DbUrl::Sqlite(path) => {
            let store =
                loom_sqlite::SqliteStorage::open(path, loom_sqlite::SqliteOptions::default())
                    .await
                    .map_err(Fail::from_storage)?;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "sqlite"))]
        DbUrl::Sqlite(_) => Err(Fail::usage(
            "this loom was built without the sqlite backend (Cargo feature `sqlite`)".to_owned(),
        )),
        #[cfg(feature = "postgres")]
        DbUrl::Postgres(url) => {
            let defaults = loom_postgres::PostgresOptions::default();
            let options = loom_postgres::PostgresOptions {
                schema: std::env::var("LOOM_PG_SCHEMA").unwrap_or_else(|_| "loom".to_owned()),
                listen: work,
                max_connections: if work { defaults.max_connections } else { 1 },
                commit_concurrency: if work { defaults.commit_concurrency } else { 1 },
                ..defaults
            };
            let store = loom_postgres::PostgresStorage::connect(url, options)
                .await
                .map_err(Fail::from_storage)?;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "postgres"))]
        DbUrl::Postgres(_) => Err(Fail::usage(
            "this loom was built without the PostgreSQL backend (Cargo feature `postgres`)"
                .to_owned(),
        )),
        #[cfg(feature = "mysql")]
        DbUrl::Mysql(url) => {
            let server_apply = match std::env::var("LOOM_MYSQL_APPLY").as_deref() {
                Err(_) | Ok("server") => true,
                Ok("client") => false,
                Ok(other) => {
                    return Err(Fail::usage(format!(
                        "LOOM_MYSQL_APPLY is {other:?}; it is `server` (the default: each \
                         batch of writes in one call of the server's loom_apply) or `client` \
                         (each write applied from this process, for a server on this machine)"
                    )));
                }
            };
            let defaults = loom_mysql::MysqlOptions::default();
            let options = loom_mysql::MysqlOptions {
                readers: if work { defaults.readers } else { 1 },
                server_apply,
                ..defaults
            };
            let store = loom_mysql::MysqlStorage::connect(url, options)
                .await
                .map_err(Fail::from_storage)?;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "mysql"))]
        DbUrl::Mysql(_) => Err(Fail::usage(
            "this loom was built without the MySQL backend (Cargo feature `mysql`)".to_owned(),
        )),
        #[cfg(feature = "redb")]
        DbUrl::Redb(path) => {
            let store = loom_redb::RedbStorage::open(path)
                .await
                .map_err(Fail::from_storage)?;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "redb"))]
        DbUrl::Redb(_) => Err(Fail::usage(
            "this loom was built without the redb backend (Cargo feature `redb`)".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_by_scheme() {
        assert_eq!(
            DbUrl::parse("sqlite://.loom/loom.db").expect("ok"),
            DbUrl::Sqlite(PathBuf::from(".loom/loom.db"))
        );
        assert_eq!(
            DbUrl::parse("sqlite:///tmp/x.db").expect("ok"),
            DbUrl::Sqlite(PathBuf::from("/tmp/x.db"))
        );
        assert!(matches!(
            DbUrl::parse("postgres://u@h/db"),
            Ok(DbUrl::Postgres(_))
        ));
        assert!(matches!(DbUrl::parse("redb://a.redb"), Ok(DbUrl::Redb(_))));
        assert_eq!(
            DbUrl::parse("mariadb://root@h/loom").expect("ok"),
            DbUrl::Mysql("mysql://root@h/loom".to_owned())
        );
        for bad in ["loom.db", "mysql://", "oracle://x", "sqlite://"] {
            let err = DbUrl::parse(bad).expect_err(bad);
            assert_eq!(err.code, 2, "{bad}");
        }
    }

    #[test]
    fn a_password_is_never_shown() {
        let shown = DbUrl::parse("postgres://ada:s3cret@db.example:5432/loom")
            .expect("ok")
            .display();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("ada:***@db.example"), "{shown}");
    }
}
