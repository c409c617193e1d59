//! `fleetctl device enroll`: a new device key, its certificate from the server, and the bundle
//! directory the agent reads.

use std::collections::BTreeMap;
use std::path::Path;

use fleet_api::agent_config::{AgentConfig, AgentLink};
use fleet_api::enroll;
use fleet_api::{EnrollRequest, EnrollResponse};
use fleet_proto::DeviceId;

use crate::client::{print_json, Client, Failure};

/// `fleetctl device enroll`.
pub fn enroll(
    json: bool,
    client: &Client,
    id: &str,
    labels: &[String],
    out: &Path,
    valid_days: u32,
    agent_data_dir: &str,
) -> Result<(), Failure> {
    let device = DeviceId::new(id).map_err(|e| Failure::usage(format!("device id: {e}")))?;
    let labels = labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(Failure::usage(format!("--label {l}: expected key=value"))),
        })
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    // Never overwrite a bundle: its key may be the only copy of a working device's identity.
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Failure::usage(format!(
            "{} exists and is not empty; pick a new --out directory",
            out.display()
        )));
    }
    let (key, public_key, proof) = enroll::new_device_key(&device).map_err(|e| {
        Failure::usage(format!("cannot create a key: certificate generation failed: {e}"))
    })?;
    let request = EnrollRequest { public_key, proof, labels, valid_days: Some(valid_days) };
    let enrolled: EnrollResponse =
        client.post(&format!("/api/v1/devices/{device}/enroll"), &request)?;
    write_bundle(out, &device, &enrolled, &key.serialize_pem(), agent_data_dir).map_err(|e| {
        Failure::usage(format!("cannot write the bundle to {}: {e}", out.display()))
    })?;
    if json {
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
    let link = AgentLink {
        broker: enrolled.broker.clone(),
        ca_file: Some("ca.pem".into()),
        cert_file: Some("device.pem".into()),
        key_file: Some("device.key".into()),
        password_file: enrolled.broker_password.as_ref().map(|_| "broker-password".into()),
        server_keys: enrolled.server_keys.clone(),
        ..AgentLink::default()
    };
    let mut config = AgentConfig::new(device.as_str(), agent_data_dir);
    config.link = Some(link);
    let config = config.to_toml(&format!(
        "fleet-agent configuration for {device}, written by `fleetctl device enroll`.\n\
         Relative paths are resolved against this file's directory.\n\
         link.server_keys: the server's desired-state signing keys; add the new one there\n\
         before the server rotates."
    ))?;
    enroll::write_file(&out.join("device.key"), key_pem.as_bytes(), 0o600)?;
    enroll::write_file(&out.join("device.pem"), enrolled.certificate_pem.as_bytes(), 0o644)?;
    enroll::write_file(&out.join("ca.pem"), enrolled.ca_pem.as_bytes(), 0o644)?;
    if let Some(password) = &enrolled.broker_password {
        enroll::write_file(&out.join("broker-password"), password.as_bytes(), 0o600)?;
    }
    enroll::write_file(&out.join("config.toml"), config.as_bytes(), 0o644)?;
    Ok(())
}
