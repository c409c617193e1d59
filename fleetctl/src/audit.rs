//! `fleetctl audit`: who changed what.

use fleet_api::units::FromNow;
use fleet_api::AuditEntry;

use crate::client::{print_json, Client, Failure};
use crate::show::{self, table, utc};

/// Entries since `since` (a duration back from now, or a UTC time), at most `limit`.
pub fn audit(json: bool, client: &Client, since: &str, limit: usize) -> Result<(), Failure> {
    let since = show::parse_time("--since", since, FromNow::Back).map_err(Failure::usage)?;
    let entries: Vec<AuditEntry> =
        client.get(&format!("/api/v1/audit?since={}&limit={limit}", since.0))?;
    if json {
        print_json(&entries);
    } else if entries.is_empty() {
        eprintln!("nothing changed since {}", utc(since));
    } else {
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|e| {
                vec![
                    utc(e.at),
                    e.actor.clone(),
                    e.action.clone(),
                    e.target.clone(),
                    e.detail.clone(),
                ]
            })
            .collect();
        table(&["TIME", "WHO", "ACTION", "TARGET", "DETAIL"], &rows);
    }
    Ok(())
}
