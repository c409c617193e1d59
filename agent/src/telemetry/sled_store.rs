//! The telemetry buffer in sled (`[telemetry] store = "sled"`), only in agents built with the
//! `sled` feature: the same [`TelemetryStore`] contract and invariants as the default
//! [`RedbStore`](super::redb_store::RedbStore), measured against it in
//! `agent/examples/telemetry_stores.rs`. The shipped agent carries redb alone.
//!
//! Layout on disk (one tree, so every change is one atomic batch): key `c` + first sequence
//! number (u64 big-endian, so key order is sequence order), value = point count (u32
//! big-endian) + postcard `Vec<Point>`; one chunk per append. Keys `m` + `next_seq`,
//! `acked_through`, `dropped_total`: u64 big-endian counters.

use std::path::{Path, PathBuf};

use fleet_proto::telemetry::Point;

use super::store::{
    encode_chunk, open_or_move_aside, read_run, Failure, Flusher, Ledger, Opened, Run, Stats,
    StoreError, TelemetryStore, CACHE_BYTES, FLUSH_EVERY_MS,
};

/// The buffer on disk, in sled.
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    ledger: Ledger,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .field("stats", &self.ledger.stats())
            .finish()
    }
}

const CHUNK: &[u8] = b"c";
const NEXT_SEQ: &[u8] = b"mnext_seq";
const ACKED: &[u8] = b"macked_through";
const DROPPED: &[u8] = b"mdropped_total";

fn chunk_key(first: u64) -> [u8; 9] {
    let mut k = [b'c'; 9];
    k[1..].copy_from_slice(&first.to_be_bytes());
    k
}

impl SledStore {
    /// Opens (or creates) the buffer in `dir`. A database that cannot be opened, or whose
    /// chunks cannot be read, is moved aside (`<dir>.damaged-<unix seconds>`) and replaced by an
    /// empty one: telemetry must never keep the agent from running its release.
    pub fn open(dir: &Path, budget: u64) -> Result<(SledStore, Opened), StoreError> {
        open_or_move_aside(dir, || Self::open_intact(dir, budget))
    }

    fn open_intact(dir: &Path, budget: u64) -> Result<SledStore, Failure> {
        let damaged = |e: sled::Error| match e {
            sled::Error::Io(io) => Failure::Io(io),
            other => Failure::Damaged(StoreError::Db {
                path: dir.display().to_string(),
                message: other.to_string(),
            }),
        };
        // sled can panic on some damaged files instead of returning an error.
        let db = std::panic::catch_unwind(|| {
            sled::Config::new()
                .path(dir)
                .cache_capacity(CACHE_BYTES)
                .mode(sled::Mode::LowSpace)
                .flush_every_ms(Some(FLUSH_EVERY_MS))
                .open()
        })
        .map_err(|_| {
            Failure::Damaged(StoreError::Db {
                path: dir.display().to_string(),
                message: "sled panicked while opening it".into(),
            })
        })?
        .map_err(damaged)?;
        let err = damaged;
        let read_u64 = |k: &[u8]| -> Result<Option<u64>, Failure> {
            Ok(db
                .get(k)
                .map_err(err)?
                .and_then(|v| v.as_ref().try_into().ok())
                .map(u64::from_be_bytes))
        };
        let acked_through = read_u64(ACKED)?;
        let dropped_total = read_u64(DROPPED)?.unwrap_or(0);
        let next_seq = read_u64(NEXT_SEQ)?.unwrap_or(0);
        let damaged = |first_seq: u64, message: &str| {
            Failure::Damaged(StoreError::Damaged {
                path: dir.display().to_string(),
                first_seq,
                message: message.into(),
            })
        };
        let mut chunks = vec![];
        for entry in db.scan_prefix(CHUNK) {
            let (k, v) = entry.map_err(err)?;
            let first = u64::from_be_bytes(
                k[1..].try_into().map_err(|_| damaged(0, "key is not 8 bytes"))?,
            );
            let count = v
                .get(..4)
                .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")))
                .ok_or_else(|| damaged(first, "value shorter than its count"))?;
            chunks.push((first, v.len(), count));
        }
        let ledger = Ledger::restore(budget, next_seq, acked_through, dropped_total, chunks);
        let s = SledStore { path: dir.to_path_buf(), db, ledger };
        // Decode the newest chunk now: a torn write shows here, not in the middle of a drain.
        if let Some(first) = s.ledger.newest() {
            s.read_chunk(first).map_err(Failure::Damaged)?;
        }
        Ok(s)
    }

    fn damaged(&self, first_seq: u64, message: &str) -> StoreError {
        StoreError::Damaged {
            path: self.path.display().to_string(),
            first_seq,
            message: message.into(),
        }
    }

    fn db_err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db { path: self.path.display().to_string(), message: e.to_string() }
    }

    fn read_chunk(&self, first: u64) -> Result<Vec<Point>, StoreError> {
        let v = self
            .db
            .get(chunk_key(first))
            .map_err(|e| self.db_err(e))?
            .ok_or_else(|| self.damaged(first, "indexed chunk is missing"))?;
        postcard::from_bytes(&v[4..]).map_err(|e| self.damaged(first, &e.to_string()))
    }

    /// The database directory's size on disk (for the budget's slack, tests and benchmarks).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

impl TelemetryStore for SledStore {
    fn append(&mut self, points: &[Point]) -> Result<u64, StoreError> {
        let value = encode_chunk(points);
        let Some(plan) = self.ledger.plan_append(points.len(), value.len())? else {
            return Ok(self.ledger.stats().next_seq);
        };
        // One atomic batch: the chunk, the drops and the counters together.
        let mut batch = sled::Batch::default();
        for k in &plan.drop {
            batch.remove(&chunk_key(*k));
        }
        batch.insert(&chunk_key(plan.first), value);
        batch.insert(NEXT_SEQ, &plan.next_seq.to_be_bytes());
        if !plan.drop.is_empty() {
            batch.insert(DROPPED, &plan.dropped_total.to_be_bytes());
        }
        self.db.apply_batch(batch).map_err(|e| self.db_err(e))?;
        self.ledger.apply_append(&plan);
        Ok(plan.first)
    }

    fn read(&self, from: u64, max_points: usize) -> Result<Run, StoreError> {
        read_run(&self.ledger, from, max_points, |first| self.read_chunk(first))
    }

    fn ack_through(&mut self, seq: u64) -> Result<(), StoreError> {
        let Some(plan) = self.ledger.plan_ack(seq) else { return Ok(()) };
        let mut batch = sled::Batch::default();
        for k in &plan.remove {
            batch.remove(&chunk_key(*k));
        }
        batch.insert(ACKED, &plan.seq.to_be_bytes());
        self.db.apply_batch(batch).map_err(|e| self.db_err(e))?;
        self.ledger.apply_ack(&plan);
        Ok(())
    }

    fn stats(&self) -> Stats {
        self.ledger.stats()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.db_err(e))
    }

    fn flusher(&self) -> Option<Flusher> {
        let db = self.db.clone();
        Some(Flusher::new(move || db.flush().map(|_| ()).map_err(|e| e.to_string())))
    }
}
