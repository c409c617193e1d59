//! `fleetctl var`: variables for the fleet, a group or a device, optionally one service.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use fleet_api::client::encode_component;
use fleet_api::{VariableChange, VariableList, VariableRequest};

use crate::client::{print_json, Client, Failure};
use crate::show::table;

/// Where a variable is set: the fleet (no flag), a group or a device; optionally one service.
#[derive(Debug, Clone, Args)]
pub struct ScopeArgs {
    /// Set for the devices of this group (default: the whole fleet).
    #[arg(long, conflicts_with = "device")]
    group: Option<String>,
    /// Set for this device.
    #[arg(long)]
    device: Option<String>,
    /// Only this service of the release gets it.
    #[arg(long)]
    service: Option<String>,
}

impl ScopeArgs {
    fn query(&self) -> String {
        let parts: Vec<String> =
            [("group", &self.group), ("device", &self.device), ("service", &self.service)]
                .into_iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode_component(v))))
                .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }

    fn describe(&self) -> String {
        let mut out = match (&self.group, &self.device) {
            (_, Some(d)) => format!("device {d}"),
            (Some(g), None) => format!("group {g}"),
            (None, None) => "the fleet".to_owned(),
        };
        if let Some(s) = &self.service {
            out.push_str(&format!(", service {s}"));
        }
        out
    }
}

/// Variables: environment values per fleet, group or device, resolved per device (most
/// specific wins: device+service > device > group+service > group > fleet+service > fleet).
/// They enter every service's environment and `${NAME}` in the release's Compose file.
#[derive(Debug, Subcommand)]
pub enum VarVerb {
    /// Set a variable; devices whose release changes get it through the normal update path.
    ///
    /// Examples:
    ///   fleetctl var set LOG_LEVEL info
    ///   fleetctl var set SITE berlin --group depot
    ///   fleetctl var set LIDAR_PORT /dev/ttyUSB1 --device robot-7 --service lidar
    ///   fleetctl var set CONFIG_JSON --from-file ./site.json --group depot
    #[command(verbatim_doc_comment)]
    Set {
        /// Name: letters, digits and _, not starting with a digit; FLEET_* is reserved.
        name: String,
        /// The value (UTF-8, at most 32 KiB); or give --from-file.
        #[arg(value_parser = clap::value_parser!(OsString), required_unless_present = "from_file")]
        value: Option<OsString>,
        /// Read the value from this file (as is, trailing newline included).
        #[arg(long, conflicts_with = "value")]
        from_file: Option<PathBuf>,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Unset a variable in one scope; devices fall back to the next less specific value.
    ///
    /// Example: fleetctl var unset SITE --group depot
    Unset {
        /// Name.
        name: String,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// List variables: all, or a group's; with --device, the values in force on that device
    /// and where each comes from.
    ///
    /// Examples:
    ///   fleetctl var ls
    ///   fleetctl var ls --group depot
    ///   fleetctl var ls --device robot-7 --service web
    #[command(verbatim_doc_comment)]
    Ls {
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

/// Runs a `var` command.
pub fn var(json: bool, client: &Client, verb: &VarVerb) -> Result<(), Failure> {
    match verb {
        VarVerb::Set { name, value, from_file, scope } => {
            let value = match (value, from_file) {
                (_, Some(file)) => {
                    let bytes = std::fs::read(file).map_err(|e| {
                        Failure::usage(format!("cannot read {} for {name}: {e}", file.display()))
                    })?;
                    String::from_utf8(bytes).map_err(|_| {
                        Failure::usage(format!(
                            "the value of {name} in {} is not valid UTF-8; variables are text (base64-encode binary data)",
                            file.display()
                        ))
                    })?
                }
                (Some(v), None) => v.clone().into_string().map_err(|_| {
                    Failure::usage(format!(
                        "the value of {name} is not valid UTF-8; variables are text (base64-encode binary data)"
                    ))
                })?,
                (None, None) => {
                    return Err(Failure::usage(format!("give a value for {name}, or --from-file PATH")))
                }
            };
            let request = VariableRequest {
                value,
                group: scope.group.clone(),
                device: scope.device.clone(),
                service: scope.service.clone(),
            };
            let change: VariableChange = client.send(
                "PUT",
                &format!("/api/v1/variables/{}", encode_component(name)),
                Some(&request),
            )?;
            report(json, &change, &format!("set {name} for {}", scope.describe()));
        }
        VarVerb::Unset { name, scope } => {
            let change: VariableChange = client.send::<(), _>(
                "DELETE",
                &format!("/api/v1/variables/{}{}", encode_component(name), scope.query()),
                None,
            )?;
            report(json, &change, &format!("unset {name} for {}", scope.describe()));
        }
        VarVerb::Ls { scope } => {
            let list: VariableList = client.get(&format!("/api/v1/variables{}", scope.query()))?;
            if json {
                print_json(&list);
                return Ok(());
            }
            match list {
                VariableList::Stored(page) if page.items.is_empty() => {
                    eprintln!(
                        "no variables for {}: `fleetctl var set NAME VALUE`",
                        scope.describe()
                    );
                }
                VariableList::Stored(page) => {
                    let rows: Vec<Vec<String>> = page
                        .items
                        .iter()
                        .map(|v| {
                            vec![
                                v.name.clone(),
                                short(&v.value),
                                v.scope.to_string(),
                                v.updated_by.clone(),
                            ]
                        })
                        .collect();
                    table(&["NAME", "VALUE", "SCOPE", "SET BY"], &rows);
                    if page.next.is_some() {
                        eprintln!("(more: use --json with the API's paging for the full list)");
                    }
                }
                VariableList::Resolved(page) if page.items.is_empty() => {
                    eprintln!("no variables apply to {}", scope.describe());
                }
                VariableList::Resolved(page) => {
                    let rows: Vec<Vec<String>> = page
                        .items
                        .iter()
                        .map(|r| {
                            let overridden: Vec<String> = r
                                .resolved
                                .overridden
                                .iter()
                                .rev()
                                .map(ToString::to_string)
                                .collect();
                            vec![
                                r.resolved.name.clone(),
                                r.service.clone().unwrap_or_else(|| "*".into()),
                                short(&r.resolved.value),
                                r.resolved.origin.to_string(),
                                overridden.join("; "),
                            ]
                        })
                        .collect();
                    table(&["NAME", "SERVICE", "VALUE", "FROM", "OVERRIDES"], &rows);
                }
            }
        }
    }
    Ok(())
}

fn report(json: bool, change: &VariableChange, what: &str) {
    for w in &change.warnings {
        eprintln!("fleetctl: warning: {w}");
    }
    if json {
        print_json(change);
        return;
    }
    let n = change.retargeted.len();
    println!(
        "{what}: {n} device(s) re-targeted, {} unchanged{}",
        change.unchanged,
        if n == 0 {
            String::new()
        } else {
            let ids: Vec<String> =
                change.retargeted.iter().take(10).map(ToString::to_string).collect();
            format!(" ({}{})", ids.join(", "), if n > 10 { ", ..." } else { "" })
        }
    );
}

/// A value on one table line.
fn short(value: &str) -> String {
    let one_line = value.replace('\n', "\\n");
    if one_line.chars().count() > 60 {
        format!("{}...", one_line.chars().take(57).collect::<String>())
    } else {
        one_line
    }
}
