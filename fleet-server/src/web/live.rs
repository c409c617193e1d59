//! One reader per rollout for every page that follows it live: the first page to follow a
//! rollout starts a task that reads it from the store every [`EVERY`] and publishes it when
//! it changed; every other page shares that task's copy; the task ends with its last page.
//! So fifty open pages cost one store read per interval, not fifty, and an idle rollout costs
//! a comparison.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::records::rollout::RolloutRecord;
use crate::store::Store;

/// How often a followed rollout is read, and so the most updates a page gets per second.
pub const EVERY: Duration = Duration::from_millis(500);

/// What a follower sees: the rollout as last read (`None` once it is gone from the store).
pub type Followed = watch::Receiver<Option<Arc<RolloutRecord>>>;

/// The readers, by rollout id.
#[derive(Debug, Default, Clone)]
pub struct LiveHub {
    readers: Arc<Mutex<HashMap<u64, Followed>>>,
}

impl LiveHub {
    /// Follows rollout `id`, starting its reader if no page follows it yet.
    pub fn follow(&self, store: &Arc<Store>, id: u64) -> Followed {
        let mut readers = self.readers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(rx) = readers.get(&id) {
            if rx.has_changed().is_ok() {
                return rx.clone();
            }
        }
        let first = store.rollout(id).ok().flatten().map(Arc::new);
        let (tx, rx) = watch::channel(first);
        readers.insert(id, rx.clone());
        let (store, hub) = (store.clone(), self.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(EVERY).await;
                if tx.receiver_count() <= 1 {
                    // Only the hub's own copy is left: no page follows any more.
                    break;
                }
                let now = store.rollout(id).ok().flatten();
                tx.send_if_modified(|last| {
                    let changed = last.as_deref() != now.as_ref();
                    if changed {
                        *last = now.map(Arc::new);
                    }
                    changed
                });
            }
            let mut readers = hub.readers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // A new page may have started a reader of its own meanwhile; leave that one.
            if readers.get(&id).is_some_and(|rx| rx.same_channel(&tx.subscribe())) {
                readers.remove(&id);
            }
        });
        rx
    }

    /// How many rollouts are being read (for tests and the bench).
    pub fn readers(&self) -> usize {
        self.readers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }
}
