//! The telemetry buffer in redb: the same [`TelemetryStore`] contract as [`SledStore`], built
//! only to measure sled against it (feature `redb-store`, BENCHMARKS.md). Appends commit with
//! eventual durability (as sled's appends are durable within its flush interval);
//! [`TelemetryStore::flush`] commits with immediate durability.
//!
//! [`SledStore`]: super::store::SledStore

use std::path::{Path, PathBuf};

use fleet_proto::telemetry::Point;
use redb::{Database, Durability, ReadableTable, TableDefinition};

use super::store::{encode_chunk, read_run, Ledger, Run, Stats, StoreError, TelemetryStore};

const CHUNKS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("chunks");
const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");

/// The buffer in one redb file.
pub struct RedbStore {
    path: PathBuf,
    db: Database,
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

impl RedbStore {
    /// Opens or creates `file`.
    pub fn open(file: &Path, budget: u64) -> Result<RedbStore, StoreError> {
        let e = err(file);
        // The same small cache as sled's (redb's default is 1 GiB).
        let db = redb::Builder::new().set_cache_size(1 << 20).create(file).map_err(|x| e(&x))?;
        let tx = db.begin_write().map_err(|x| e(&x))?;
        let ledger = {
            let meta = tx.open_table(META).map_err(|x| e(&x))?;
            let chunks = tx.open_table(CHUNKS).map_err(|x| e(&x))?;
            let get = |k: &str| meta.get(k).ok().flatten().map(|v| v.value());
            let mut held = vec![];
            for entry in chunks.iter().map_err(|x| e(&x))? {
                let (k, v) = entry.map_err(|x| e(&x))?;
                let v = v.value();
                let count =
                    v.get(..4).map_or(0, |c| u32::from_be_bytes(c.try_into().unwrap_or_default()));
                held.push((k.value(), v.len(), count));
            }
            let next = get("next_seq").unwrap_or(0);
            Ledger::restore(
                budget,
                next,
                get("acked_through"),
                get("dropped_total").unwrap_or(0),
                held,
            )
        };
        tx.commit().map_err(|x| e(&x))?;
        Ok(RedbStore { path: file.to_path_buf(), db, ledger })
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
        // An empty commit with immediate durability makes every earlier commit durable.
        self.write(Durability::Immediate, |_, _| Ok(()))
    }
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
        let mut store = RedbStore::open(&file, budget).unwrap();
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
                store = RedbStore::open(&file, budget).unwrap();
            }
            assert_eq!(model.stats(), store.stats(), "round {round}");
            assert_eq!(model.read(0, 1000).unwrap(), store.read(0, 1000).unwrap(), "round {round}");
        }
        assert!(model.stats().dropped_total > 0, "the budget was exercised");
    }
}
