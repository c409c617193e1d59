//! `fleetctl`: the command line for fleet managers and robotics engineers.
//!
//! Conventions (shared/CLI.md): `fleetctl NOUN VERB`, `--json` prints only the complete objects
//! on stdout, exit codes 0 ok / 1 usage or input / 2 refused by the server / 5 unreachable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_proto::DeviceId;
use fleet_proto::{CommandAction, CommandOutcome, CommandResult};
use fleet_server::api::{CommandRequest, EnrollRequest, EnrollResponse};
use fleet_server::devices::DeviceRecord;
use fleet_server::pki;
use serde::de::DeserializeOwned;

/// Manage a Fleet: devices, groups, releases and rollouts.
///
/// Examples:
///   fleetctl device enroll robot-7 --label site=depot --out ./robot-7
///   fleetctl device ls
///   fleetctl device show robot-7 --json
///   fleetctl device revoke robot-7
#[derive(Debug, Parser)]
#[command(name = "fleetctl", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// Fleet server URL.
    #[arg(long, global = true, env = "FLEET_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// API token (default: ./fleet-data/admin-token when it exists, as on the server's host).
    #[arg(long, global = true, env = "FLEET_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print complete objects as JSON (for scripts), nothing else on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    noun: Noun,
}

#[derive(Debug, Subcommand)]
enum Noun {
    /// Devices in the registry.
    #[command(subcommand)]
    Device(DeviceVerb),
}

#[derive(Debug, Subcommand)]
enum DeviceVerb {
    /// List devices (example: fleetctl device ls --json).
    Ls,
    /// Show one device (example: fleetctl device show robot-7).
    Show {
        /// Device id.
        id: String,
    },
    /// Enroll a device and write its bundle: the agent's config.toml, its certificate and key
    /// (generated here; the key never leaves this machine), the fleet CA and the server's
    /// signing key. Copy the directory to the device and run
    /// `fleet-agent --config DIR/config.toml`.
    ///
    /// Example:
    ///   fleetctl device enroll robot-7 --label site=depot --label model=r2 --out ./robot-7
    #[command(verbatim_doc_comment)]
    Enroll {
        /// Device id (1-64 of A-Z a-z 0-9 . _ -): its MQTT client id and certificate name.
        id: String,
        /// A label, k=v (repeatable); groups select devices by label.
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// Directory to write the bundle into (created; must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Certificate validity in days.
        #[arg(long, default_value_t = pki::DEFAULT_DEVICE_VALIDITY_DAYS)]
        valid_days: u32,
        /// The agent's data directory, written into the bundle's config.toml.
        #[arg(long, default_value = "/var/lib/fleet-agent")]
        agent_data_dir: String,
    },
    /// Restart one service's container on a device (example: fleetctl device restart robot-7 lidar).
    Restart {
        /// Device id.
        id: String,
        /// Service name.
        service: String,
    },
    /// Print the last lines of a service's log (example: fleetctl device logs robot-7 lidar --tail 50).
    Logs {
        /// Device id.
        id: String,
        /// Service name.
        service: String,
        /// How many lines (at most 1000).
        #[arg(long, default_value_t = 100)]
        tail: u32,
    },
    /// Reboot a device through its init system; the agent refuses unless its config sets
    /// commands.allow_reboot (example: fleetctl device reboot robot-7).
    Reboot {
        /// Device id.
        id: String,
    },
    /// Events a device reported, oldest first (example: fleetctl device events robot-7).
    Events {
        /// Device id.
        id: String,
    },
    /// Revoke a device: the server drops its messages and its certificate joins the revocation
    /// list the broker checks (example: fleetctl device revoke robot-7).
    Revoke {
        /// Device id.
        id: String,
    },
}

/// A failure with the exit code scripts rely on.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("fleetctl: error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    match &cli.noun {
        Noun::Device(DeviceVerb::Ls) => {
            let devices: Vec<DeviceRecord> = get(cli, "/api/v1/devices")?;
            if cli.json {
                print_json(&devices);
            } else if devices.is_empty() {
                eprintln!("no devices yet: enroll one with `fleetctl device enroll ID --out DIR`");
            } else {
                println!(
                    "{:<24} {:<8} {:<10} {:<10} RELEASE",
                    "DEVICE", "ONLINE", "AGENT", "GENERATION"
                );
                for d in &devices {
                    println!(
                        "{:<24} {:<8} {:<10} {:<10} {}",
                        d.id,
                        if d.online { "yes" } else { "no" },
                        d.agent_version.as_deref().unwrap_or("-"),
                        d.accepted_generation,
                        d.release.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        Noun::Device(DeviceVerb::Enroll { id, labels, out, valid_days, agent_data_dir }) => {
            enroll(cli, id, labels, out, *valid_days, agent_data_dir)?;
        }
        Noun::Device(DeviceVerb::Restart { id, service }) => {
            let service = service_name(service)?;
            command(cli, id, CommandAction::RestartService { service })?;
        }
        Noun::Device(DeviceVerb::Logs { id, service, tail }) => {
            let service = service_name(service)?;
            command(cli, id, CommandAction::FetchLogs { service, tail: *tail })?;
        }
        Noun::Device(DeviceVerb::Reboot { id }) => command(cli, id, CommandAction::Reboot)?,
        Noun::Device(DeviceVerb::Events { id }) => {
            let events: Vec<fleet_proto::Event> =
                get(cli, &format!("/api/v1/devices/{id}/events"))?;
            if cli.json {
                print_json(&events);
            } else if events.is_empty() {
                eprintln!("no events from {id} yet");
            } else {
                for e in &events {
                    let fields: Vec<String> =
                        e.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!(
                        "{:>13}  {:<8} {:<16} {}  {}",
                        e.at.0,
                        format!("{:?}", e.severity),
                        format!("{:?}", e.kind),
                        e.message,
                        fields.join(" ")
                    );
                }
            }
        }
        Noun::Device(DeviceVerb::Revoke { id }) => {
            let device: DeviceRecord =
                send::<(), _>(cli, "POST", &format!("/api/v1/devices/{id}/revoke"), None)?;
            if cli.json {
                print_json(&device);
            } else {
                println!("revoked {id}");
                eprintln!("its messages are dropped now; an external broker refuses it after `systemctl reload mosquitto` (the server keeps crl.pem current with --broker-files)");
            }
        }
        Noun::Device(DeviceVerb::Show { id }) => {
            let device: DeviceRecord = get(cli, &format!("/api/v1/devices/{id}"))?;
            if cli.json {
                print_json(&device);
            } else {
                println!("device      {}", device.id);
                println!("online      {}", if device.online { "yes" } else { "no" });
                println!("agent       {}", device.agent_version.as_deref().unwrap_or("-"));
                println!("generation  {}", device.accepted_generation);
                println!("release     {}", device.release.as_deref().unwrap_or("-"));
                println!("last seen   {} ms since epoch", device.last_seen.0);
            }
        }
    }
    Ok(())
}

fn service_name(s: &str) -> Result<fleet_proto::ServiceName, Failure> {
    fleet_proto::ServiceName::new(s)
        .map_err(|e| Failure { code: 1, message: format!("service name: {e}") })
}

/// Sends a command and prints its one result; a refused or failed command exits 2.
fn command(cli: &Cli, id: &str, action: CommandAction) -> Result<(), Failure> {
    let request = CommandRequest { action, timeout_secs: None };
    let result: CommandResult =
        send(cli, "POST", &format!("/api/v1/devices/{id}/commands"), Some(&request))?;
    if cli.json {
        print_json(&result);
        return match result.outcome {
            CommandOutcome::Done { .. } => Ok(()),
            _ => Err(Failure { code: 2, message: format!("{id} did not carry out the command") }),
        };
    }
    match result.outcome {
        CommandOutcome::Done { output } => {
            for line in output {
                println!("{line}");
            }
            Ok(())
        }
        CommandOutcome::Failed { reason } => {
            Err(Failure { code: 2, message: format!("{id}: the command failed: {reason}") })
        }
        CommandOutcome::Refused { reason } => {
            Err(Failure { code: 2, message: format!("{id} refused the command: {reason}") })
        }
    }
}

/// `fleetctl device enroll`.
fn enroll(
    cli: &Cli,
    id: &str,
    labels: &[String],
    out: &Path,
    valid_days: u32,
    agent_data_dir: &str,
) -> Result<(), Failure> {
    let usage = |message: String| Failure { code: 1, message };
    let device = DeviceId::new(id).map_err(|e| usage(format!("device id: {e}")))?;
    let labels = labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(usage(format!("--label {l}: expected key=value"))),
        })
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    // Never overwrite a bundle: its key may be the only copy of a working device's identity.
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        return Err(usage(format!(
            "{} exists and is not empty; pick a new --out directory",
            out.display()
        )));
    }
    let (key, public_key, proof) =
        pki::new_device_key(&device).map_err(|e| usage(format!("cannot create a key: {e}")))?;
    let request = EnrollRequest { public_key, proof, labels, valid_days: Some(valid_days) };
    let enrolled: EnrollResponse =
        send(cli, "POST", &format!("/api/v1/devices/{device}/enroll"), Some(&request))?;
    write_bundle(out, &device, &enrolled, &key.serialize_pem(), agent_data_dir)
        .map_err(|e| usage(format!("cannot write the bundle to {}: {e}", out.display())))?;
    if cli.json {
        print_json(&enrolled.device);
    } else {
        println!("enrolled {device}; bundle in {}", out.display());
        eprintln!(
            "next: copy {dir} to the device (e.g. /etc/fleet-agent) and run `fleet-agent --config {dir}/config.toml`",
            dir = out.display()
        );
    }
    Ok(())
}

/// The bundle directory: what the agent reads, relative paths resolved against it.
fn write_bundle(
    out: &Path,
    device: &DeviceId,
    enrolled: &EnrollResponse,
    key_pem: &str,
    agent_data_dir: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(out)?;
    let keys =
        enrolled.server_keys.iter().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", ");
    let config = format!(
        r#"# fleet-agent configuration for {device}, written by `fleetctl device enroll`.
# Relative paths are resolved against this file's directory.
version = 1
device_id = "{device}"
data_dir = "{agent_data_dir}"

[link]
broker = "{broker}"
ca_file = "ca.pem"
cert_file = "device.pem"
key_file = "device.key"
# The server's desired-state signing keys; add the new one here before the server rotates.
server_keys = [{keys}]
"#,
        broker = enrolled.broker,
    );
    pki::write_file(&out.join("device.key"), key_pem.as_bytes(), 0o600)?;
    pki::write_file(&out.join("device.pem"), enrolled.certificate_pem.as_bytes(), 0o644)?;
    pki::write_file(&out.join("ca.pem"), enrolled.ca_pem.as_bytes(), 0o644)?;
    pki::write_file(&out.join("config.toml"), config.as_bytes(), 0o644)?;
    Ok(())
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("fleetctl: cannot print JSON: {e}"),
    }
}

fn get<T: DeserializeOwned>(cli: &Cli, path: &str) -> Result<T, Failure> {
    send::<(), T>(cli, "GET", path, None)
}

/// The token: --token / FLEET_TOKEN, else the server's file when run where the server runs.
fn token(cli: &Cli) -> Option<String> {
    cli.token.clone().or_else(|| {
        std::fs::read_to_string("fleet-data/admin-token").ok().map(|t| t.trim().to_owned())
    })
}

fn send<B: serde::Serialize, T: DeserializeOwned>(
    cli: &Cli,
    method: &str,
    path: &str,
    body: Option<&B>,
) -> Result<T, Failure> {
    let url = format!("{}{path}", cli.server.trim_end_matches('/'));
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let auth = token(cli).map(|t| format!("Bearer {t}")).unwrap_or_default();
    let sent = match (method, body) {
        ("GET", _) => agent.get(&url).header("authorization", &auth).call(),
        (_, Some(body)) => agent.post(&url).header("authorization", &auth).send_json(body),
        (_, None) => agent.post(&url).header("authorization", &auth).send_empty(),
    };
    let mut response = sent.map_err(|e| Failure {
        code: 5,
        message: format!("cannot reach the fleet server at {}: {e}\n  is it running? start one with `fleet-server`, or point --server / FLEET_SERVER at yours", cli.server),
    })?;
    let status = response.status();
    if !status.is_success() {
        let body: serde_json::Value = response.body_mut().read_json().unwrap_or_default();
        let reason = body.get("error").and_then(|e| e.as_str()).unwrap_or("no reason given");
        let code = if status.is_client_error() { 2 } else { 5 };
        return Err(Failure {
            code,
            message: format!("server refused {path} ({status}): {reason}"),
        });
    }
    response.body_mut().read_json().map_err(|e| Failure {
        code: 5,
        message: format!(
            "unexpected answer from {url}: {e} (is --server a Fleet server of the same version?)"
        ),
    })
}
