//! The telemetry buffer in redb, the default and the only one in the shipped agent: the
//! [`TelemetryStore`] contract and invariants of [`super::store`], in one file. Chosen over
//! sled (built only with the `sled` feature, for the comparison) because its memory stays flat
//! however much is buffered (sled's grows by tens of MiB over a day offline and stays there;
//! BENCHMARKS.md).
//!
//! Appends and acknowledgements commit with eventual durability (no fsync); a
//! [`TelemetryStore::flush`] commits with immediate durability, which makes every earlier commit
//! durable too. The telemetry task flushes within [`FLUSH_EVERY_MS`] of an append and before
//! answering a producer that waits for durability: that is invariant 6's window. After a
//! crash redb reopens at its last durable commit: a prefix of what was appended.
//!
//! Layout: table `chunks` (first sequence number → point count u32 big-endian + postcard
//! `Vec<Point>`, the sled store's value layout) and table `meta` (`next_seq`, `acked_through`,
//! `dropped_total`).
//!
//! [`FLUSH_EVERY_MS`]: super::store::FLUSH_EVERY_MS

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_proto::telemetry::Point;
use redb::{Database, Durability, ReadableTable, TableDefinition};

use super::store::{
    encode_chunk, open_or_move_aside, read_run, Failure, Flusher, Ledger, Opened, Run, Stats,
    StoreError, TelemetryStore,
};

const CHUNKS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("chunks");
const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");

/// redb's page cache for the buffer (its default is 1 GiB): reads are sequential and rare.
const CACHE_BYTES: usize = 1 << 20;

/// The buffer in one redb file.
pub struct RedbStore {
    path: PathBuf,
    db: Arc<Database>,
    ledger: Ledger,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .field("stats", &self.ledger.stats())
            .finish()
    }
}

fn err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> StoreError + '_ {
    move |e| StoreError::Db { path: path.display().to_string(), message: e.to_string() }
}

/// I/O failures (locked by another handle, permissions) are left alone; everything else redb
/// reports at open means the file cannot be used as it is.
fn open_failure(path: &Path, e: redb::DatabaseError) -> Failure {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Failure::Io(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "database already open by another handle",
        )),
        // A header that does not parse is reported as invalid or cut-short data: damage.
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if !matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Failure::Io(io)
        }
        other => Failure::Damaged(StoreError::Db {
            path: path.display().to_string(),
            message: other.to_string(),
        }),
    }
}

impl RedbStore {
    /// Opens or creates `file`. A file that cannot be opened, or whose chunks cannot be read, is
    /// moved aside (`<file>.damaged-<unix seconds>`) and replaced by an empty one.
    pub fn open(file: &Path, budget: u64) -> Result<(RedbStore, Opened), StoreError> {
        open_or_move_aside(file, || Self::open_intact(file, budget))
    }

    fn open_intact(file: &Path, budget: u64) -> Result<RedbStore, Failure> {
        let damaged = |x: &dyn std::fmt::Display| Failure::Damaged(err(file)(x));
        let mut db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(file)
            .map_err(|e| open_failure(file, e))?;
        // redb 2 writes its v2 file format; the v3 format is the one the next major version
        // reads. Upgrading once at open (a no-op afterwards) keeps that door open. Files created
        // directly in v3 took 25 % more disk under the budget test's churn, upgraded ones do not.
        db.upgrade().map_err(|x| damaged(&x))?;
        let tx = db.begin_write().map_err(|x| damaged(&x))?;
        let ledger = {
            let meta = tx.open_table(META).map_err(|x| damaged(&x))?;
            let chunks = tx.open_table(CHUNKS).map_err(|x| damaged(&x))?;
            let get = |k: &str| -> Result<Option<u64>, Failure> {
                Ok(meta.get(k).map_err(|x| damaged(&x))?.map(|v| v.value()))
            };
            let mut held = vec![];
            for entry in chunks.iter().map_err(|x| damaged(&x))? {
                let (k, v) = entry.map_err(|x| damaged(&x))?;
                let v = v.value();
                let count = v.get(..4).map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")));
                let Some(count) = count else {
                    return Err(Failure::Damaged(StoreError::Damaged {
                        path: file.display().to_string(),
                        first_seq: k.value(),
                        message: "value shorter than its count".into(),
                    }));
                };
                held.push((k.value(), v.len(), count));
            }
            Ledger::restore(
                budget,
                get("next_seq")?.unwrap_or(0),
                get("acked_through")?,
                get("dropped_total")?.unwrap_or(0),
                held,
            )
        };
        tx.commit().map_err(|x| damaged(&x))?;
        let s = RedbStore { path: file.to_path_buf(), db: Arc::new(db), ledger };
        // Decode the newest chunk now: damage shows here, not in the middle of a drain.
        if let Some(first) = s.ledger.newest() {
            s.read(first, 1).map_err(Failure::Damaged)?;
        }
        Ok(s)
    }

    fn write(
        &self,
        durability: Durability,
        f: impl FnOnce(
            &mut redb::Table<'_, u64, &[u8]>,
            &mut redb::Table<'_, &str, u64>,
        ) -> Result<(), redb::StorageError>,
    ) -> Result<(), StoreError> {
        let e = err(&self.path);
        let mut tx = self.db.begin_write().map_err(|x| e(&x))?;
        tx.set_durability(durability);
        {
            let mut chunks = tx.open_table(CHUNKS).map_err(|x| e(&x))?;
            let mut meta = tx.open_table(META).map_err(|x| e(&x))?;
            f(&mut chunks, &mut meta).map_err(|x| e(&x))?;
        }
        tx.commit().map_err(|x| e(&x))
    }
}

impl TelemetryStore for RedbStore {
    fn append(&mut self, points: &[Point]) -> Result<u64, StoreError> {
        let value = encode_chunk(points);
        let Some(plan) = self.ledger.plan_append(points.len(), value.len())? else {
            return Ok(self.ledger.stats().next_seq);
        };
        self.write(Durability::Eventual, |chunks, meta| {
            for k in &plan.drop {
                chunks.remove(k)?;
            }
            chunks.insert(plan.first, value.as_slice())?;
            meta.insert("next_seq", plan.next_seq)?;
            meta.insert("dropped_total", plan.dropped_total)?;
            Ok(())
        })?;
        self.ledger.apply_append(&plan);
        Ok(plan.first)
    }

    fn read(&self, from: u64, max_points: usize) -> Result<Run, StoreError> {
        let e = err(&self.path);
        let tx = self.db.begin_read().map_err(|x| e(&x))?;
        let chunks = tx.open_table(CHUNKS).map_err(|x| e(&x))?;
        read_run(&self.ledger, from, max_points, |first| {
            let v =
                chunks.get(first).map_err(|x| e(&x))?.ok_or_else(|| e(&"indexed chunk missing"))?;
            postcard::from_bytes(&v.value()[4..]).map_err(|x| e(&x))
        })
    }

    fn ack_through(&mut self, seq: u64) -> Result<(), StoreError> {
        let Some(plan) = self.ledger.plan_ack(seq) else { return Ok(()) };
        self.write(Durability::Eventual, |chunks, meta| {
            for k in &plan.remove {
                chunks.remove(k)?;
            }
            meta.insert("acked_through", plan.seq)?;
            Ok(())
        })?;
        self.ledger.apply_ack(&plan);
        Ok(())
    }

    fn stats(&self) -> Stats {
        self.ledger.stats()
    }

    fn flush(&self) -> Result<(), StoreError> {
        flush(&self.db).map_err(|x| err(&self.path)(&x))
    }

    fn flusher(&self) -> Option<Flusher> {
        let db = self.db.clone();
        Some(Flusher::new(move || flush(&db)))
    }
}

/// An empty commit with immediate durability makes every earlier commit durable.
fn flush(db: &Database) -> Result<(), String> {
    let mut tx = db.begin_write().map_err(|e| e.to_string())?;
    tx.set_durability(Durability::Immediate);
    tx.commit().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::store::MemStore;
    use fleet_proto::telemetry::Value;
    use fleet_proto::UnixMillis;

    #[test]
    fn behaves_like_the_model_across_drops_acks_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.redb");
        let budget = 3_000;
        let mut model = MemStore::new(budget);
        let mut store = RedbStore::open(&file, budget).unwrap().0;
        for round in 0..60u64 {
            let points: Vec<Point> = (0..round % 7)
                .map(|i| Point {
                    at: UnixMillis(round * 10 + i),
                    metric: format!("m{}", "x".repeat((round % 5) as usize * 8)),
                    value: Value::I64(i as i64),
                    labels: Default::default(),
                })
                .collect();
            assert_eq!(model.append(&points).unwrap(), store.append(&points).unwrap());
            if round % 4 == 0 {
                let seq = model.stats().oldest + 2;
                model.ack_through(seq).unwrap();
                store.ack_through(seq).unwrap();
            }
            if round % 9 == 0 {
                store.flush().unwrap();
                drop(store);
                store = RedbStore::open(&file, budget).unwrap().0;
            }
            assert_eq!(model.stats(), store.stats(), "round {round}");
            assert_eq!(model.read(0, 1000).unwrap(), store.read(0, 1000).unwrap(), "round {round}");
        }
        assert!(model.stats().dropped_total > 0, "the budget was exercised");
    }
}
