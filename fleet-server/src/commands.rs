//! Commands to devices (`fleetctl device restart|logs|reboot`): signed like desired state,
//! published on the device's `cmd` topic, answered once on `cmd-result`. An API request waits
//! here for its answer; the ingest loop delivers it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fleet_proto::CommandResult;
use tokio::sync::oneshot;

/// Requests waiting for their command's result, by command id.
#[derive(Debug, Clone, Default)]
pub struct Waiters(Arc<Mutex<HashMap<u64, oneshot::Sender<CommandResult>>>>);

impl Waiters {
    /// Registers interest in command `id`'s result.
    pub fn wait_for(&self, id: u64) -> oneshot::Receiver<CommandResult> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        rx
    }

    /// Forgets command `id` (its requester gave up).
    pub fn forget(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Hands a result to its waiter; a result nobody waits for (the request timed out, or the
    /// server restarted) is logged and dropped.
    pub fn deliver(&self, result: CommandResult) {
        match self.lock().remove(&result.id) {
            Some(tx) => {
                let _ = tx.send(result);
            }
            None => {
                tracing::info!(device = %result.device, command = result.id, outcome = ?result.outcome, "command result arrived after its request gave up")
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<CommandResult>>> {
        // A panic while holding this lock cannot leave the map inconsistent: keep going.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use fleet_proto::{CommandOutcome, DeviceId, UnixMillis};

    use super::*;

    fn result(id: u64) -> CommandResult {
        CommandResult {
            id,
            device: DeviceId::new("robot-7").expect("id"),
            finished_at: UnixMillis(1),
            outcome: CommandOutcome::Done { output: vec![] },
        }
    }

    #[tokio::test]
    async fn a_result_reaches_only_its_waiter_once() {
        let waiters = Waiters::default();
        let mine = waiters.wait_for(7);
        let other = waiters.wait_for(8);
        waiters.deliver(result(7));
        waiters.deliver(result(7)); // a duplicate is dropped
        assert_eq!(mine.await.expect("delivered").id, 7);
        waiters.forget(8);
        assert!(other.await.is_err(), "forgotten waiters get nothing");
    }
}
