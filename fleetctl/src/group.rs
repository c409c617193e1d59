//! `fleetctl group`: named label selectors.

use clap::Subcommand;
use fleet_api::client::encode_component;
use fleet_api::{Group, GroupRequest};

use crate::client::{print_json, retargeted, Client, Failure};
use crate::show::table;

#[derive(Debug, Subcommand)]
pub enum GroupVerb {
    /// Create or replace a group (example: fleetctl group create depot --selector site=depot).
    Create {
        /// Group name.
        name: String,
        /// Label selector: k=v, k!=v, k (present), !k (absent), joined by commas.
        #[arg(long)]
        selector: String,
        /// What the group is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List groups with their device counts.
    Ls,
    /// Show a group and its devices (example: fleetctl group show depot).
    Show {
        /// Group name.
        name: String,
    },
    /// Remove a group; its devices stay (example: fleetctl group rm depot).
    Rm {
        /// Group name.
        name: String,
    },
}

pub fn group(json: bool, client: &Client, verb: &GroupVerb) -> Result<(), Failure> {
    match verb {
        GroupVerb::Create { name, selector, description } => {
            let request = GroupRequest {
                name: name.clone(),
                selector: selector.clone(),
                description: description.clone(),
            };
            let answer: serde_json::Value = client.post("/api/v1/groups", &request)?;
            if json {
                print_json(&answer);
            } else {
                let g: Group = serde_json::from_value(answer.clone()).map_err(|e| Failure {
                    code: 2,
                    message: format!("the server answered something unexpected: {e}"),
                })?;
                println!(
                    "group {} selects {}; {} device(s) re-targeted",
                    g.name,
                    g.selector,
                    retargeted(&answer)
                );
            }
        }
        GroupVerb::Ls => {
            let groups: Vec<serde_json::Value> = client.get("/api/v1/groups")?;
            if json {
                print_json(&groups);
            } else if groups.is_empty() {
                eprintln!("no groups yet: `fleetctl group create NAME --selector k=v`");
            } else {
                let s = |g: &serde_json::Value, k: &str| {
                    g.get(k)
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                        .unwrap_or_default()
                };
                let rows: Vec<Vec<String>> = groups
                    .iter()
                    .map(|g| {
                        vec![s(g, "name"), s(g, "selector"), s(g, "devices"), s(g, "description")]
                    })
                    .collect();
                table(&["GROUP", "SELECTOR", "DEVICES", "DESCRIPTION"], &rows);
            }
        }
        GroupVerb::Show { name } => {
            let g: serde_json::Value =
                client.get(&format!("/api/v1/groups/{}", encode_component(name)))?;
            if json {
                print_json(&g);
            } else {
                println!("group     {}", g["name"].as_str().unwrap_or(""));
                println!("selector  {}", g["selector"].as_str().unwrap_or(""));
                let devices: Vec<&str> = g["devices"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d["id"].as_str())
                    .collect();
                println!("devices   {} {}", devices.len(), devices.join(" "));
            }
        }
        GroupVerb::Rm { name } => {
            let answer: serde_json::Value = client.send::<(), _>(
                "DELETE",
                &format!("/api/v1/groups/{}", encode_component(name)),
                None,
            )?;
            if json {
                print_json(&answer);
            } else {
                let g: Group = serde_json::from_value(answer.clone()).map_err(|e| Failure {
                    code: 2,
                    message: format!("the server answered something unexpected: {e}"),
                })?;
                println!("removed group {}; {} device(s) re-targeted", g.name, retargeted(&answer));
            }
        }
    }
    Ok(())
}
