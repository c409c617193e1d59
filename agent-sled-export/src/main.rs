//! `fleet-agent-sled-export DIR`: prints the agent state that a fleet-agent from before redb kept
//! in sled at `DIR` (`<data_dir>/state`) as one JSON document on standard output. It changes no
//! record (sled itself may tidy its files when it opens them). The agent runs it once, when it finds such a state and no redb state beside it, and
//! imports what it prints (`fleet_agent::state`); it is a program of its own so that the agent
//! no longer links sled.
//!
//! The document (`format` names its version):
//! ```json
//! {"format": "fleet-agent-sled-state/1",
//!  "records": {"desired": {...}, "proven": {...}, ...},
//!  "images": ["registry/app@sha256:..."],
//!  "journal": [[17, {...}], [18, {...}]]}
//! ```
//! Records and journal entries are the JSON values sled held, unchanged.
//!
//! Exit codes: 0 exported, 1 usage, 2 no sled state at `DIR`, 3 the state cannot be read.

use std::path::Path;
use std::process::ExitCode;

use serde_json::{json, Map, Value};

/// The version of the printed document; the importer refuses any other.
const FORMAT: &str = "fleet-agent-sled-state/1";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args == ["--version"] {
        println!("fleet-agent-sled-export {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let [dir] = args.as_slice() else {
        eprintln!("usage: fleet-agent-sled-export DIR   (the agent's <data_dir>/state)");
        return ExitCode::from(1);
    };
    let dir = Path::new(dir);
    // sled would create an empty database where there is none: look before opening.
    if !dir.join("conf").is_file() || !dir.join("db").is_file() {
        eprintln!(
            "fleet-agent-sled-export: no sled state at {} (no conf and db files)",
            dir.display()
        );
        return ExitCode::from(2);
    }
    match export(dir) {
        Ok(doc) => {
            println!("{doc}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fleet-agent-sled-export: agent state at {}: {e}", dir.display());
            ExitCode::from(3)
        }
    }
}

/// The whole state as one document.
fn export(dir: &Path) -> Result<Value, String> {
    let db =
        sled::Config::new().path(dir).cache_capacity(1 << 20).open().map_err(|e| e.to_string())?;
    let value = |key: &[u8], bytes: &[u8]| -> Result<Value, String> {
        serde_json::from_slice(bytes)
            .map_err(|e| format!("record {} is not JSON: {e}", String::from_utf8_lossy(key)))
    };
    let mut records = Map::new();
    for entry in db.iter() {
        let (k, v) = entry.map_err(|e| e.to_string())?;
        let key =
            std::str::from_utf8(&k).map_err(|_| format!("a record key is not text: {k:?}"))?;
        records.insert(key.to_owned(), value(&k, &v)?);
    }
    let mut images = vec![];
    if db.tree_names().iter().any(|n| n.as_ref() == b"images") {
        for key in db.open_tree("images").map_err(|e| e.to_string())?.iter().keys() {
            let key = key.map_err(|e| e.to_string())?;
            images.push(Value::String(String::from_utf8_lossy(&key).into_owned()));
        }
    }
    let mut journal = vec![];
    if db.tree_names().iter().any(|n| n.as_ref() == b"journal") {
        for entry in db.open_tree("journal").map_err(|e| e.to_string())?.iter() {
            let (k, v) = entry.map_err(|e| e.to_string())?;
            let seq = u64::from_be_bytes(
                k.as_ref().try_into().map_err(|_| format!("journal key of {} bytes", k.len()))?,
            );
            journal.push(json!([seq, value(&k, &v)?]));
        }
    }
    Ok(json!({ "format": FORMAT, "records": records, "images": images, "journal": journal }))
}
