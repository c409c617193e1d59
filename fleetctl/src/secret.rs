//! `fleetctl secret`: secret values for the fleet, a group or a device. A value is read from
//! stdin or a file, never from an argument (arguments end up in shell history and `ps`), and
//! sent as is: binary-safe, nothing stripped.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use fleet_api::client::encode_component;
use fleet_api::secrets::MAX_VALUE_BYTES;
use fleet_api::{ScopeKind, SecretChange, SecretList};

use crate::client::{print_json, Client, Failure};
use crate::show::{ago, table};

/// Where a secret's value is set: the fleet (no flag), a group or a device.
#[derive(Debug, Clone, Args)]
pub struct SecretScopeArgs {
    /// For the devices of this group (default: the whole fleet).
    #[arg(long, conflicts_with = "device")]
    group: Option<String>,
    /// For this device.
    #[arg(long)]
    device: Option<String>,
}

impl SecretScopeArgs {
    fn query(&self) -> String {
        match (&self.group, &self.device) {
            (Some(g), _) => format!("?group={}", encode_component(g)),
            (None, Some(d)) => format!("?device={}", encode_component(d)),
            (None, None) => String::new(),
        }
    }

    fn describe(&self) -> String {
        match (&self.group, &self.device) {
            (Some(g), _) => format!("group {g}"),
            (None, Some(d)) => format!("device {d}"),
            (None, None) => "the fleet".to_owned(),
        }
    }
}

/// Secrets: values (passwords, keys, certificates) that services mount as files, declared in
/// the release's Compose file (`secrets: {db_password: {}}`, then `secrets: [db_password]` in
/// a service: the file /run/secrets/db_password). Stored encrypted on the server and sent to
/// each device sealed to its own key; the most specific value wins (device > group > fleet).
/// Setting or removing one restarts only the services that mount it, on the devices it
/// changes for.
#[derive(Debug, Subcommand)]
pub enum SecretVerb {
    /// Set a secret's value, read from stdin (or --from-file) exactly as given.
    ///
    /// Examples:
    ///   fleetctl secret set db_password < db_password.txt
    ///   printf %s "$TOKEN" | fleetctl secret set cloud_token --group depot
    ///   fleetctl secret set tls.key --device robot-7 --from-file ./robot-7.key
    #[command(verbatim_doc_comment)]
    Set {
        /// Name: letters, digits, _, . and -, starting with a letter or digit (as in Compose).
        name: String,
        /// Read the value from this file instead of stdin.
        #[arg(long)]
        from_file: Option<PathBuf>,
        #[command(flatten)]
        scope: SecretScopeArgs,
    },
    /// List stored secrets: name, scope, size, digest, who set it when (never a value).
    ///
    /// Example: fleetctl secret ls --json
    Ls,
    /// Remove a secret's value in one scope; refused while a device whose release mounts it
    /// would be left without one.
    ///
    /// Example: fleetctl secret rm db_password --group depot
    Rm {
        /// Name.
        name: String,
        #[command(flatten)]
        scope: SecretScopeArgs,
    },
}

/// Runs a `secret` command.
pub fn secret(json: bool, client: &Client, verb: &SecretVerb) -> Result<(), Failure> {
    match verb {
        SecretVerb::Set { name, from_file, scope } => {
            let value = read_value(name, from_file.as_ref())?;
            let change: SecretChange = client.put_bytes(
                &format!("/api/v1/secrets/{}{}", encode_component(name), scope.query()),
                &value,
            )?;
            report(json, &change, &format!("set {name} for {}", scope.describe()));
        }
        SecretVerb::Rm { name, scope } => {
            let change: SecretChange = client.send::<(), _>(
                "DELETE",
                &format!("/api/v1/secrets/{}{}", encode_component(name), scope.query()),
                None,
            )?;
            report(json, &change, &format!("removed {name} from {}", scope.describe()));
        }
        SecretVerb::Ls => {
            let list: SecretList = client.get("/api/v1/secrets")?;
            if json {
                print_json(&list);
                return Ok(());
            }
            if list.secrets.is_empty() {
                eprintln!("no secrets: `fleetctl secret set NAME < file`");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .secrets
                .iter()
                .map(|s| {
                    let scope = match s.scope {
                        ScopeKind::Fleet => "fleet".to_owned(),
                        ScopeKind::Group => format!("group {}", s.group.as_deref().unwrap_or("")),
                        ScopeKind::Device => {
                            format!("device {}", s.device.as_deref().unwrap_or(""))
                        }
                    };
                    vec![
                        s.name.clone(),
                        scope,
                        s.bytes.to_string(),
                        s.digest.clone(),
                        ago(s.set_at),
                        s.set_by.clone(),
                    ]
                })
                .collect();
            table(&["NAME", "SCOPE", "BYTES", "DIGEST", "SET-AT", "SET-BY"], &rows);
        }
    }
    Ok(())
}

/// The value, from the file or stdin, byte for byte.
fn read_value(name: &str, file: Option<&PathBuf>) -> Result<Vec<u8>, Failure> {
    let mut value = Vec::new();
    match file {
        Some(path) => {
            value = std::fs::read(path).map_err(|e| {
                Failure::usage(format!("cannot read {} for {name}: {e}", path.display()))
            })?;
        }
        None => {
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() {
                return Err(Failure::usage(format!(
                    "pipe the value in: fleetctl secret set {name} < file (or give --from-file PATH); a value is never typed or passed as an argument"
                )));
            }
            // One byte more than allowed, so an oversized value is refused without reading
            // all of it.
            stdin.by_ref().take(MAX_VALUE_BYTES as u64 + 1).read_to_end(&mut value).map_err(
                |e| Failure::usage(format!("cannot read the value of {name} from stdin: {e}")),
            )?;
        }
    }
    if value.is_empty() {
        return Err(Failure::usage(format!(
            "the value of {name} is empty; pipe the value in: fleetctl secret set {name} < file"
        )));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(Failure::usage(format!(
            "the value of {name} is more than {MAX_VALUE_BYTES} bytes (64 KiB); large files belong in the image or a volume"
        )));
    }
    Ok(value)
}

fn report(json: bool, change: &SecretChange, what: &str) {
    if json {
        print_json(change);
        return;
    }
    let n = change.retargeted.len();
    let digest =
        change.secret.as_ref().map_or(String::new(), |s| format!(" (digest {})", s.digest));
    println!(
        "{what}{digest}: {n} device(s) re-targeted, {} unchanged{}",
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
