//! Retention: purging closed workflows past their period, in the background.

use super::*;

impl Shared {
    /// Every `retention.every`, runs each pass of the policy until it purges less than a
    /// batch, until `stop`. A store error is logged and the pass tried again next time.
    pub(super) async fn retention_loop(
        self: Arc<Self>,
        retention: crate::Retention,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            for purge in retention.passes() {
                loop {
                    if *stop.borrow() {
                        return;
                    }
                    match self.storage.purge(&purge).await {
                        Ok(ids) => {
                            if !ids.is_empty() {
                                debug!(purged = ids.len(), name = ?purge.name, "purged closed workflows");
                                self.metrics
                                    .workflows_purged
                                    .fetch_add(ids.len() as u64, Ordering::Relaxed);
                            }
                            if ids.len() < purge.limit {
                                break;
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, "purging closed workflows failed; trying again later");
                            break;
                        }
                    }
                }
            }
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                () = tokio::time::sleep(retention.every) => {}
            }
        }
    }
}
