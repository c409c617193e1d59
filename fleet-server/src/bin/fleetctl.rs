//! `fleetctl`: the command line for fleet managers and robotics engineers.
//!
//! Conventions (shared/CLI.md): `fleetctl NOUN VERB`, `--json` prints only the complete objects
//! on stdout, exit codes 0 ok / 1 usage or input / 2 refused by the server / 5 unreachable.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_server::devices::DeviceRecord;
use serde::de::DeserializeOwned;

/// Manage a Fleet: devices, groups, releases and rollouts.
///
/// Examples:
///   fleetctl device ls
///   fleetctl device show robot-7 --json
#[derive(Debug, Parser)]
#[command(name = "fleetctl", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// Fleet server URL.
    #[arg(long, global = true, env = "FLEET_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
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

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("fleetctl: cannot print JSON: {e}"),
    }
}

fn get<T: DeserializeOwned>(cli: &Cli, path: &str) -> Result<T, Failure> {
    let url = format!("{}{path}", cli.server.trim_end_matches('/'));
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let mut response = agent.get(&url).call().map_err(|e| Failure {
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
