//! Waking idle workers in other processes: `NOTIFY` after a commit that made work ready, and a
//! `LISTEN`ing connection that feeds [`Storage::work_signal`](loom_storage::Storage::work_signal).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};

use crate::PostgresStorage;

impl PostgresStorage {
    /// Keeps a `LISTEN`ing connection that wakes idle workers; reconnects when it drops.
    pub(crate) fn listen(&self) {
        let (pool, channel, work) = (
            self.pool.clone(),
            self.channel.clone(),
            Arc::downgrade(&self.work),
        );
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                if work.upgrade().is_none() {
                    return;
                }
                let listener = async {
                    let mut l = PgListener::connect_with(&pool).await?;
                    // `try_recv` answers `Ok(None)` once it has listened again after a drop:
                    // the wake below relies on it.
                    l.eager_reconnect(true);
                    l.listen(&channel).await?;
                    Ok::<_, sqlx::Error>(l)
                };
                match listener.await {
                    Ok(mut l) => {
                        pause = Duration::from_millis(100);
                        // Notifications sent before this `LISTEN` took hold are lost to it
                        // (at start-up, or while reconnecting): workers that went idle
                        // meanwhile claim once more. Within the loop, `Ok(None)` means sqlx
                        // re-established the connection itself, with the same loss.
                        loop {
                            match work.upgrade() {
                                Some(n) => n.notify_waiters(),
                                None => return,
                            }
                            if l.try_recv().await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "LISTEN failed; retrying"),
                }
                if pool.is_closed() {
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        });
    }
}

/// Tells other processes that work is ready, after the commit that made it so.
///
/// Not inside the data transaction: PostgreSQL serialises the commits of transactions that
/// NOTIFY (a global lock held through the commit's WAL flush), which would undo its group
/// commit. A separate, tiny transaction has no WAL to flush; bursts send one notification.
/// Sends one `NOTIFY` on `channel` from a task of its own, unless one is already on its way.
pub(crate) fn notify_later(pool: &PgPool, channel: &str, notifying: &Arc<AtomicBool>) {
    if notifying.swap(true, Ordering::AcqRel) {
        return;
    }
    let (pool, channel, flag) = (pool.clone(), channel.to_owned(), notifying.clone());
    tokio::spawn(async move {
        // Cleared first: work committed while this one is in flight sends another.
        flag.store(false, Ordering::Release);
        notify_now(&pool, &channel).await;
    });
}

/// Sends a `NOTIFY` on `channel` and waits for it: for a store that does not listen (a
/// one-shot command), whose runtime may end as soon as its write is answered, taking a
/// notification still on its way with it.
pub(crate) async fn notify_now(pool: &PgPool, channel: &str) {
    if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
        .bind(channel)
        .execute(pool)
        .await
    {
        tracing::debug!(error = %e, "NOTIFY failed; workers will find the work by polling");
    }
}
