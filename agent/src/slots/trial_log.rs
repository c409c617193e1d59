//! What a version on trial logged, kept beside its binary (`bin/<version>/trial.log`), so that
//! when it is reverted the device can report its last lines with the reason: "it did not
//! commit in 3 starts" says that it failed, the log says why.
//!
//! Bounded: at most [`MAX_BYTES`] are written per slot (a crash loop cannot fill the disk),
//! and only the last [`TAIL_LINES`] lines of at most [`TAIL_BYTES`] are read back. The file is
//! the agent's own (0600, in its data directory); what a container logs never reaches it.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The most a trial's log file grows to.
pub const MAX_BYTES: u64 = 256 << 10;
/// Lines reported with a failed trial.
pub const TAIL_LINES: usize = 20;
/// The most of the file's end read back.
const TAIL_BYTES: u64 = 8 << 10;
/// The longest line reported (longer ones are cut).
const MAX_LINE: usize = 300;

fn path(data_dir: &Path, version: &str) -> PathBuf {
    super::slot_binary(data_dir, version).with_file_name("trial.log")
}

/// A writer for the tracing subscriber of a version on trial: appends to its log until the
/// file holds [`MAX_BYTES`], then drops what comes.
#[derive(Debug, Clone)]
pub struct TrialLog {
    file: Arc<Mutex<std::fs::File>>,
    left: Arc<AtomicU64>,
}

impl TrialLog {
    /// Opens `version`'s trial log for appending.
    pub fn open(data_dir: &Path, version: &str) -> io::Result<TrialLog> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path(data_dir, version))?;
        let used = file.metadata()?.len();
        Ok(TrialLog {
            file: Arc::new(Mutex::new(file)),
            left: Arc::new(AtomicU64::new(MAX_BYTES.saturating_sub(used))),
        })
    }
}

impl Write for TrialLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len() as u64;
        let left = self.left.load(Ordering::Relaxed);
        if n <= left {
            self.left.store(left - n, Ordering::Relaxed);
            let mut file = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            file.write_all(buf)?;
        } else {
            // Full: nothing more, not even the end of this line (no stray pieces), and never
            // an error (logging must not fail the agent).
            self.left.store(0, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The last lines `version` logged on trial (oldest first; empty without a log).
pub fn tail(data_dir: &Path, version: &str) -> Vec<String> {
    let Ok(mut file) = std::fs::File::open(path(data_dir, version)) else { return Vec::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_BYTES);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err()
        || file.take(TAIL_BYTES).read_to_end(&mut bytes).is_err()
    {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if start > 0 && !lines.is_empty() {
        // The first line read is most likely cut at its start.
        lines.remove(0);
    }
    let from = lines.len().saturating_sub(TAIL_LINES);
    lines[from..]
        .iter()
        .map(|l| match l.char_indices().nth(MAX_LINE) {
            Some((cut, _)) => format!("{}…", &l[..cut]),
            None => (*l).to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_capped_and_its_tail_is_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin/2.0.0")).unwrap();
        assert!(tail(dir.path(), "2.0.0").is_empty(), "no log, no lines");
        let mut log = TrialLog::open(dir.path(), "2.0.0").unwrap();
        for i in 0..30 {
            writeln!(log, "line {i}").unwrap();
        }
        let lines = tail(dir.path(), "2.0.0");
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!((lines[0].as_str(), lines[19].as_str()), ("line 10", "line 29"));

        // A flood stops at the cap; a long line is cut.
        let long = "x".repeat(1000);
        for _ in 0..400 {
            writeln!(log, "{long}").unwrap();
        }
        let size = std::fs::metadata(dir.path().join("bin/2.0.0/trial.log")).unwrap().len();
        assert!(size <= MAX_BYTES, "{size}");
        let lines = tail(dir.path(), "2.0.0");
        assert!(lines.iter().all(|l| l.chars().count() <= MAX_LINE + 1), "{lines:?}");
        // Reopened (the next start): it does not grow past the cap either.
        let mut again = TrialLog::open(dir.path(), "2.0.0").unwrap();
        writeln!(again, "{long}").unwrap();
        assert_eq!(std::fs::metadata(dir.path().join("bin/2.0.0/trial.log")).unwrap().len(), size);
    }
}
