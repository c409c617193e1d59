//! Moving a state that an agent from before redb kept in sled into redb, once.
//!
//! The sled files are read by `fleet-agent-sled-export` (crate `agent-sled-export`), a program
//! of its own: the agent then carries one database engine, not two. The steps, each safe to
//! interrupt:
//! 1. no `state.redb` and sled's `conf` + `db` present: run the exporter, which prints the
//!    whole state as one JSON document and changes no record;
//! 2. import it into `state.redb.migrating` in one transaction, fsync, rename to `state.redb`
//!    (the rename is the commit: a crash before it leaves sled's state as the only one);
//! 3. move sled's files into `sled-migrated/` (a crash before this is finished at the next
//!    start, since `state.redb` exists by then).
//!
//! An agent that finds a sled state and no exporter refuses to start: it would otherwise forget
//! the release proven on this device, the replay guard and the commands already run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

use super::{open_db, AgentState, StateError, Store};

/// The exporter's program name.
pub const EXPORTER: &str = "fleet-agent-sled-export";

/// Where the packages install the exporter.
const LIBEXEC: &str = "/usr/libexec/fleet-agent";

/// The document version this agent imports (the exporter's `FORMAT`).
const FORMAT: &str = "fleet-agent-sled-state/1";

/// Where sled's files go once migrated.
pub const MIGRATED_DIR: &str = "sled-migrated";

/// What the exporter prints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Export {
    format: String,
    /// Single records by key, as JSON.
    pub(super) records: BTreeMap<String, Value>,
    /// Images the agent used.
    pub(super) images: Vec<String>,
    /// Journal entries with their sequence numbers.
    pub(super) journal: Vec<(u64, Value)>,
}

/// The exporter: beside this program (or one folder up, for a test binary in `deps/`), else
/// where the packages install it.
pub fn exporter() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let beside = exe.parent().map(|d| d.join(EXPORTER));
    let up = exe.parent().and_then(Path::parent).map(|d| d.join(EXPORTER));
    [beside, up, Some(Path::new(LIBEXEC).join(EXPORTER))]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
}

/// Whether `dir` holds sled's files.
pub fn has_sled_state(dir: &Path) -> bool {
    dir.join("conf").is_file() && dir.join("db").is_file()
}

/// Migrates `dir`'s sled state into `file` if there is one and no `file` yet; finishes an
/// interrupted migration.
pub(super) fn from_sled_if_needed(
    dir: &Path,
    file: &Path,
    exporter: Option<&Path>,
) -> Result<(), StateError> {
    if !has_sled_state(dir) {
        return Ok(());
    }
    let fail = |reason: String| StateError::Migration { path: dir.display().to_string(), reason };
    if !file.exists() {
        let Some(exporter) = exporter else {
            return Err(fail(format!(
                "it is a sled database from an earlier fleet-agent, and {EXPORTER}, which moves \
                 it to redb, is not installed (the package puts it in {LIBEXEC}/; it is also \
                 found beside fleet-agent). Install it and start again; nothing was changed"
            )));
        };
        let export = run_exporter(dir, exporter).and_then(|out| parse(&out)).map_err(|why| {
            fail(format!("moving it from sled to redb failed: {why}; nothing was changed"))
        })?;
        let partial = file.with_extension("redb.migrating");
        import(&partial, &export)?;
        std::fs::rename(&partial, file)
            .and_then(|()| sync_dir(dir))
            .map_err(|e| fail(format!("cannot rename {}: {e}", partial.display())))?;
        tracing::info!(
            records = export.records.len(),
            images = export.images.len(),
            journal = export.journal.len(),
            "agent state moved from sled to redb"
        );
    }
    move_sled_aside(dir).map_err(|e| fail(format!("cannot move sled's files aside: {e}")))
}

fn run_exporter(dir: &Path, exporter: &Path) -> Result<Vec<u8>, String> {
    // The directory as the exporter's working directory and `.` as its argument: any path
    // works, UTF-8 or not.
    let out = Command::new(exporter)
        .arg(".")
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exporter.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {}: {}",
            exporter.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

fn parse(out: &[u8]) -> Result<Export, String> {
    let export: Export =
        serde_json::from_slice(out).map_err(|e| format!("the exporter's output: {e}"))?;
    if export.format != FORMAT {
        return Err(format!(
            "the exporter printed format {:?}, this agent reads {FORMAT:?}",
            export.format
        ));
    }
    Ok(export)
}

/// Writes `export` into a new database at `partial` and makes it durable.
fn import(partial: &Path, export: &Export) -> Result<(), StateError> {
    let err = |message: String| StateError::Db { path: partial.display().to_string(), message };
    match std::fs::remove_file(partial) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(format!("cannot remove a partial migration: {e}"))),
    }
    let db = open_db(partial)?;
    let state = AgentState {
        store: Store::Redb { path: partial.display().to_string(), db: std::sync::Arc::new(db) },
    };
    state.import(export)?;
    drop(state);
    std::fs::File::open(partial).and_then(|f| f.sync_all()).map_err(|e| err(e.to_string()))
}

fn move_sled_aside(dir: &Path) -> std::io::Result<()> {
    let aside = dir.join(MIGRATED_DIR);
    std::fs::create_dir_all(&aside)?;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let is_sled = name
            .to_str()
            .is_some_and(|n| matches!(n, "conf" | "db" | "blobs") || n.starts_with("snap."));
        if is_sled {
            std::fs::rename(dir.join(&name), aside.join(&name))?;
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
