//! The audit log and backups.

use std::path::PathBuf;
use std::sync::Arc;

use fleet_proto::UnixMillis;

use super::{blocking, Error};
use crate::audit::AuditEntry;
use crate::auth::Caller;
use crate::backup::Backup;
use crate::store::Store;

/// Up to `limit` (clamped to 1..=100,000; default 1,000) audit entries from `since` on.
pub fn audit(
    store: &Store,
    since: Option<u64>,
    limit: Option<usize>,
) -> Result<Vec<AuditEntry>, Error> {
    let limit = limit.unwrap_or(1000).clamp(1, 100_000);
    Ok(store.audit(UnixMillis(since.unwrap_or(0)), limit)?)
}

/// A backup of the store and the key files in `data_dir`; the request is audited first.
pub async fn backup(
    store: Arc<Store>,
    data_dir: PathBuf,
    caller: &Caller,
    now: UnixMillis,
) -> Result<Backup, Error> {
    store.update(|tx| {
        tx.audit(AuditEntry::new(now, &caller.name, "server.backup", "store", ""));
        Ok::<_, Error>(())
    })?;
    blocking(move || Backup::take(&store, &data_dir).map_err(Error::internal)).await
}
