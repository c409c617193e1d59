//! The telemetry buffer in redb: the same [`TelemetryStore`] contract as [`SledStore`], built
//! only to measure sled against it (feature `redb-store`, BENCHMARKS.md). Appends commit with
//! eventual durability (as sled's appends are durable within its flush interval);
//! [`TelemetryStore::flush`] commits with immediate durability.
//!
//! [`SledStore`]: super::store::SledStore

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fleet_proto::telemetry::Point;
use redb::{Database, Durability, ReadableTable, TableDefinition};

use super::store::{
    chunk_cost, chunks_to_drop, encode_chunk, Run, Stats, StoreError, TelemetryStore,
};

const CHUNKS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("chunks");
const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");

/// The buffer in one redb file.
pub struct RedbStore {
    path: PathBuf,
    db: Database,
    budget: u64,
    index: BTreeMap<u64, (u64, u32)>,
    acked_through: Option<u64>,
    stats: Stats,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("path", &self.path).field("stats", &self.stats).finish()
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
        let mut s = RedbStore {
            path: file.to_path_buf(),
            db,
            budget,
            index: BTreeMap::new(),
            acked_through: None,
            stats: Stats::default(),
        };
        let tx = s.db.begin_write().map_err(|x| e(&x))?;
        {
            let meta = tx.open_table(META).map_err(|x| e(&x))?;
            let chunks = tx.open_table(CHUNKS).map_err(|x| e(&x))?;
            let get = |k: &str| meta.get(k).ok().flatten().map(|v| v.value());
            s.acked_through = get("acked_through");
            s.stats.dropped_total = get("dropped_total").unwrap_or(0);
            let mut next = get("next_seq").unwrap_or(0);
            for entry in chunks.iter().map_err(|x| e(&x))? {
                let (k, v) = entry.map_err(|x| e(&x))?;
                let (first, v) = (k.value(), v.value());
                let count = u32::from_be_bytes(v[..4].try_into().unwrap_or_default());
                s.index.insert(first, (chunk_cost(v.len()), count));
                s.stats.bytes += chunk_cost(v.len());
                next = next.max(first + u64::from(count));
            }
            s.stats.next_seq = next;
        }
        tx.commit().map_err(|x| e(&x))?;
        s.refresh();
        Ok(s)
    }

    fn refresh(&mut self) {
        let first = self.index.keys().next().copied().unwrap_or(self.stats.next_seq);
        self.stats.oldest = match self.acked_through {
            Some(a) => first.max(a + 1).min(self.stats.next_seq),
            None => first,
        };
        self.stats.points = self.stats.next_seq - self.stats.oldest;
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
        let cost = chunk_cost(value.len());
        if cost > self.budget {
            return Err(StoreError::TooLarge {
                points: points.len(),
                bytes: cost,
                budget: self.budget,
            });
        }
        let first = self.stats.next_seq;
        if points.is_empty() {
            return Ok(first);
        }
        let drop =
            chunks_to_drop(self.index.values().map(|c| c.0), self.stats.bytes, cost, self.budget);
        let dropped: Vec<(u64, (u64, u32))> =
            self.index.iter().take(drop).map(|(k, v)| (*k, *v)).collect();
        let oldest = self.stats.oldest;
        let lost: u64 = dropped
            .iter()
            .map(|(k, (_, n))| (k + u64::from(*n)).saturating_sub((*k).max(oldest)))
            .sum();
        let next = first + points.len() as u64;
        let dropped_total = self.stats.dropped_total + lost;
        self.write(Durability::Eventual, |chunks, meta| {
            for (k, _) in &dropped {
                chunks.remove(k)?;
            }
            chunks.insert(first, value.as_slice())?;
            meta.insert("next_seq", next)?;
            meta.insert("dropped_total", dropped_total)?;
            Ok(())
        })?;
        for (k, (c, _)) in &dropped {
            self.index.remove(k);
            self.stats.bytes -= c;
        }
        self.stats.dropped_total = dropped_total;
        self.index.insert(first, (cost, points.len() as u32));
        self.stats.bytes += cost;
        self.stats.next_seq = next;
        self.refresh();
        Ok(first)
    }

    fn read(&self, from: u64, max_points: usize) -> Result<Run, StoreError> {
        let e = err(&self.path);
        let from = from.max(self.stats.oldest);
        let mut run = Run { first_seq: from, points: vec![] };
        let tx = self.db.begin_read().map_err(|x| e(&x))?;
        let chunks = tx.open_table(CHUNKS).map_err(|x| e(&x))?;
        let start = self.index.range(..=from).next_back().map_or(from, |(k, _)| *k);
        for (&first, _) in self.index.range(start..) {
            if run.points.len() >= max_points {
                break;
            }
            let v =
                chunks.get(first).map_err(|x| e(&x))?.ok_or_else(|| e(&"indexed chunk missing"))?;
            let points: Vec<Point> = postcard::from_bytes(&v.value()[4..]).map_err(|x| e(&x))?;
            let skip = from.saturating_sub(first) as usize;
            let room = max_points - run.points.len();
            run.points.extend(points.into_iter().skip(skip).take(room));
        }
        Ok(run)
    }

    fn ack_through(&mut self, seq: u64) -> Result<(), StoreError> {
        if self.stats.next_seq == 0 {
            return Ok(());
        }
        let seq = seq.min(self.stats.next_seq - 1);
        if self.acked_through.is_some_and(|a| a >= seq) {
            return Ok(());
        }
        let gone: Vec<(u64, u64)> = self
            .index
            .iter()
            .take_while(|(first, (_, n))| *first + u64::from(*n) - 1 <= seq)
            .map(|(k, (c, _))| (*k, *c))
            .collect();
        self.write(Durability::Eventual, |chunks, meta| {
            for (k, _) in &gone {
                chunks.remove(k)?;
            }
            meta.insert("acked_through", seq)?;
            Ok(())
        })?;
        for (k, c) in gone {
            self.index.remove(&k);
            self.stats.bytes -= c;
        }
        self.acked_through = Some(seq);
        self.refresh();
        Ok(())
    }

    fn stats(&self) -> Stats {
        self.stats
    }

    fn flush(&self) -> Result<(), StoreError> {
        // An empty commit with immediate durability makes every earlier commit durable.
        self.write(Durability::Immediate, |_, _| Ok(()))
    }
}
