//! `fleetctl device`: the registry, labels and notes, pins, commands to one device, its events
//! and metrics, revocation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Subcommand;
use fleet_api::client::encode_component;
use fleet_api::units::FromNow;
use fleet_api::{CommandRequest, Device, DeviceChange, DeviceView, PinRequest};
use fleet_proto::{CommandAction, CommandOutcome, CommandResult, UnixMillis};

use crate::client::{all_pages, print_json, retargeted, Client, Failure};
use crate::show::{self, ago, table, utc};

#[derive(Debug, Subcommand)]
pub enum DeviceVerb {
    /// List devices (example: fleetctl device ls --group depot).
    Ls {
        /// Only devices whose labels match, e.g. site=depot,model!=r1.
        #[arg(long)]
        selector: Option<String>,
        /// Only devices of this group.
        #[arg(long)]
        group: Option<String>,
    },
    /// Show one device: state, pin, release, services, inventory (example: fleetctl device show robot-7).
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
        #[arg(long, default_value_t = fleet_api::enroll::DEFAULT_DEVICE_VALIDITY_DAYS)]
        valid_days: u32,
        /// The agent's data directory, written into the bundle's config.toml.
        #[arg(long, default_value = "/var/lib/fleet-agent")]
        agent_data_dir: String,
    },
    /// Set labels (k=v) or remove them (k-) (example: fleetctl device label robot-7 site=lab bench-).
    Label {
        /// Device id.
        id: String,
        /// k=v to set, k- to remove.
        #[arg(required = true, value_name = "K=V|K-")]
        changes: Vec<String>,
    },
    /// Replace a device's notes (example: fleetctl device note robot-7 "left arm recalibrated 12/01").
    Note {
        /// Device id.
        id: String,
        /// The notes ("" clears them).
        text: String,
    },
    /// Hold a device on a release; rollouts never move it (example: fleetctl device pin robot-7 robot-stack@1.4.1 --reason "bench: lidar driver" --until 2d).
    Pin {
        /// Device id.
        id: String,
        /// Release id (app@version).
        release: String,
        /// Why (shown wherever the device is shown).
        #[arg(long)]
        reason: String,
        /// When the pin lapses: a duration (2d) or a UTC time (2026-12-24T18:00Z).
        #[arg(long)]
        until: Option<String>,
        /// Pin even if pre-flight says the device cannot run the release.
        #[arg(long)]
        force: bool,
    },
    /// Release a pin; the device returns to its assigned release (example: fleetctl device unpin robot-7).
    /// A pin to an agent release (fleet-agent@VERSION) holds the agent apart: lift it with --agent.
    Unpin {
        /// Device id.
        id: String,
        /// Lift the agent pin instead of the application's.
        #[arg(long)]
        agent: bool,
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
    /// Delete the named volumes, and their data, of apps a device no longer runs; the volumes of
    /// the release in force (and of one being rolled out) are never touched
    /// (example: fleetctl device purge robot-7).
    Purge {
        /// Device id.
        id: String,
    },
    /// Events a device reported, oldest first (example: fleetctl device events robot-7).
    Events {
        /// Device id.
        id: String,
    },
    /// A device's telemetry: the latest value of every series, or with --metric the stored
    /// history of one (example: fleetctl device metrics robot-7 --metric host.cpu.percent).
    Metrics {
        /// Device id.
        id: String,
        /// Show this metric's history (oldest first) instead of the latest values.
        #[arg(long)]
        metric: Option<String>,
        /// Most points of history to show (the newest are on the last page).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Revoke a device: the server drops its messages and its certificate joins the revocation
    /// list the broker checks (example: fleetctl device revoke robot-7).
    Revoke {
        /// Device id.
        id: String,
    },
}

pub fn device(json: bool, client: &Client, verb: &DeviceVerb) -> Result<(), Failure> {
    match verb {
        DeviceVerb::Ls { selector, group } => {
            let mut query = Vec::new();
            if let Some(s) = selector {
                query.push(format!("selector={}", encode_component(s)));
            }
            if let Some(g) = group {
                query.push(format!("group={}", encode_component(g)));
            }
            let devices: Vec<Device> = all_pages(client, "/api/v1/devices", &query)?;
            if json {
                print_json(&devices);
            } else if devices.is_empty() {
                eprintln!("no devices yet: enroll one with `fleetctl device enroll ID --out DIR`");
            } else {
                let now = UnixMillis::now();
                let rows: Vec<Vec<String>> = devices
                    .iter()
                    .map(|d| {
                        vec![
                            d.id.to_string(),
                            if d.online { "yes" } else { "no" }.to_owned(),
                            d.release.clone().unwrap_or_else(|| "-".into()),
                            agent_column(d),
                            health(d),
                            d.pin_at(now).map_or_else(
                                || "-".into(),
                                |p| format!("{} ({})", p.release, p.reason),
                            ),
                            ago(d.last_seen),
                        ]
                    })
                    .collect();
                table(
                    &["DEVICE", "ONLINE", "RELEASE", "AGENT", "HEALTH", "PIN", "LAST SEEN"],
                    &rows,
                );
            }
        }
        DeviceVerb::Show { id } => {
            let view: DeviceView = client.get(&format!("/api/v1/devices/{id}"))?;
            if json {
                print_json(&view);
            } else {
                print_device(&view);
            }
        }
        DeviceVerb::Enroll { id, labels, out, valid_days, agent_data_dir } => {
            crate::enroll::enroll(json, client, id, labels, out, *valid_days, agent_data_dir)?;
        }
        DeviceVerb::Label { id, changes } => {
            let mut labels = BTreeMap::new();
            for c in changes {
                if let Some(k) = c.strip_suffix('-') {
                    labels.insert(k.to_owned(), None);
                } else if let Some((k, v)) = c.split_once('=') {
                    labels.insert(k.to_owned(), Some(v.to_owned()));
                } else {
                    return Err(Failure::usage(format!(
                        "{c}: expected k=v to set or k- to remove"
                    )));
                }
            }
            let change = DeviceChange { labels, notes: None };
            let answer: serde_json::Value =
                client.send("PATCH", &format!("/api/v1/devices/{id}"), Some(&change))?;
            if json {
                print_json(&answer);
            } else {
                let d: Device = serde_json::from_value(answer.clone()).map_err(|e| Failure {
                    code: 2,
                    message: format!("the server answered something unexpected: {e}"),
                })?;
                let labels: Vec<String> =
                    d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "{id}: {}",
                    if labels.is_empty() { "no labels".into() } else { labels.join(" ") }
                );
                if retargeted(&answer) > 0 {
                    println!("re-targeted: its groups' variables or secrets changed what it runs");
                }
            }
        }
        DeviceVerb::Note { id, text } => {
            let change = DeviceChange { labels: BTreeMap::new(), notes: Some(text.clone()) };
            let d: Device =
                client.send("PATCH", &format!("/api/v1/devices/{id}"), Some(&change))?;
            if json {
                print_json(&d);
            } else {
                println!("{id}: notes saved");
            }
        }
        DeviceVerb::Pin { id, release, reason, until, force } => {
            let until = until
                .as_deref()
                .map(|u| show::parse_time("--until", u, FromNow::Ahead))
                .transpose()
                .map_err(Failure::usage)?;
            let request = PinRequest {
                release: release.clone(),
                reason: reason.clone(),
                until: until.map(|u| u.0),
                force: *force,
            };
            let d: Device =
                client.send("PUT", &format!("/api/v1/devices/{id}/pin"), Some(&request))?;
            if json {
                print_json(&d);
            } else {
                let until = until
                    .map_or_else(|| "until unpinned".to_owned(), |u| format!("until {}", utc(u)));
                println!("pinned {id} to {release} {until}");
                eprintln!("rollouts leave it alone; `fleetctl device unpin {id}` returns it to its assigned release");
            }
        }
        DeviceVerb::Unpin { id, agent } => {
            let query = if *agent { "?agent=true" } else { "" };
            let d: Device = client.send::<(), _>(
                "DELETE",
                &format!("/api/v1/devices/{id}/pin{query}"),
                None,
            )?;
            if json {
                print_json(&d);
            } else if *agent {
                println!(
                    "unpinned {id}'s agent; it runs {} next",
                    d.assigned_agent
                        .as_deref()
                        .map_or("the version it has".to_owned(), |v| format!("fleet-agent {v}"))
                );
            } else {
                println!(
                    "unpinned {id}; it runs {} next",
                    d.assigned_release.as_deref().unwrap_or("no release")
                );
            }
        }
        DeviceVerb::Restart { id, service } => {
            let service = service_name(service)?;
            command(json, client, id, CommandAction::RestartService { service })?;
        }
        DeviceVerb::Logs { id, service, tail } => {
            let service = service_name(service)?;
            command(json, client, id, CommandAction::FetchLogs { service, tail: *tail })?;
        }
        DeviceVerb::Reboot { id } => command(json, client, id, CommandAction::Reboot)?,
        DeviceVerb::Purge { id } => command(json, client, id, CommandAction::PurgeVolumes)?,
        DeviceVerb::Events { id } => {
            let events: Vec<fleet_proto::Event> =
                client.get(&format!("/api/v1/devices/{id}/events"))?;
            if json {
                print_json(&events);
            } else if events.is_empty() {
                eprintln!("no events from {id} yet");
            } else {
                let rows: Vec<Vec<String>> = events
                    .iter()
                    .map(|e| {
                        let fields: Vec<String> =
                            e.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        vec![
                            utc(e.at),
                            format!("{:?}", e.severity),
                            format!("{:?}", e.kind),
                            format!("{} {}", e.message, fields.join(" ")),
                        ]
                    })
                    .collect();
                table(&["TIME", "SEVERITY", "KIND", "MESSAGE"], &rows);
            }
        }
        DeviceVerb::Metrics { id, metric, limit } => {
            device_metrics(json, client, id, metric.as_deref(), *limit)?
        }
        DeviceVerb::Revoke { id } => {
            let device: Device =
                client.send::<(), _>("POST", &format!("/api/v1/devices/{id}/revoke"), None)?;
            if json {
                print_json(&device);
            } else {
                println!("revoked {id}");
                eprintln!("its messages are dropped now; an external broker refuses it after `systemctl reload mosquitto` (the server keeps crl.pem current with --broker-files)");
            }
        }
    }
    Ok(())
}

/// `fleetctl device metrics`: latest values, or one metric's newest `limit` points.
fn device_metrics(
    json: bool,
    client: &Client,
    id: &str,
    metric: Option<&str>,
    limit: usize,
) -> Result<(), Failure> {
    let view: serde_json::Value = client.get(&format!("/api/v1/devices/{id}/metrics"))?;
    let value = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let labels = |v: &serde_json::Value| -> String {
        v.as_object()
            .map(|m| {
                m.iter().map(|(k, v)| format!("{k}={}", value(v))).collect::<Vec<_>>().join(",")
            })
            .unwrap_or_default()
    };
    let at = |v: &serde_json::Value| v.as_u64().map_or_else(String::new, |t| utc(UnixMillis(t)));
    let Some(metric) = metric else {
        if json {
            print_json(&view);
            return Ok(());
        }
        let latest = view["latest"].as_array().cloned().unwrap_or_default();
        println!(
            "{id}: {} points stored, {} duplicates removed, {} dropped on the device{}",
            view["stored_total"],
            view["duplicates_total"],
            view["dropped_total"],
            view["last_batch_at"]
                .as_u64()
                .map_or(String::new(), |t| format!(", last batch {}", ago(UnixMillis(t)))),
        );
        if latest.is_empty() {
            eprintln!("no telemetry from {id} yet (is [telemetry] enabled in its agent config?)");
            return Ok(());
        }
        let rows: Vec<Vec<String>> = latest
            .iter()
            .map(|p| {
                vec![value(&p["metric"]), labels(&p["labels"]), value(&p["value"]), at(&p["at"])]
            })
            .collect();
        table(&["METRIC", "LABELS", "VALUE", "MEASURED"], &rows);
        return Ok(());
    };
    // Walk the history to its end, keeping the newest `limit` points of the metric.
    let mut newest = std::collections::VecDeque::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!(
            "/api/v1/devices/{id}/metrics/history?metric={}&limit=1000",
            encode_component(metric)
        );
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let page: serde_json::Value = client.get(&path)?;
        for p in page["items"].as_array().cloned().unwrap_or_default() {
            newest.push_back(p);
            if newest.len() > limit {
                newest.pop_front();
            }
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    if json {
        print_json(&newest);
    } else if newest.is_empty() {
        eprintln!("no {metric} points from {id} in the server's history (`fleetctl device metrics {id}` lists the series)");
    } else {
        let rows: Vec<Vec<String>> = newest
            .iter()
            .map(|p| vec![at(&p["at"]), labels(&p["labels"]), value(&p["value"]), value(&p["seq"])])
            .collect();
        table(&["MEASURED", "LABELS", "VALUE", "SEQ"], &rows);
    }
    Ok(())
}

/// A device's health in one word, from its last report.
fn health(d: &Device) -> String {
    use fleet_proto::report::{Health, UpdatePhase, UpdateResult};
    let Some(report) = &d.last_report else { return "-".into() };
    if report.update.phase != UpdatePhase::Idle {
        return format!("{:?}", report.update.phase).to_lowercase();
    }
    if let Some(o) = &report.update.last_outcome {
        match &o.result {
            UpdateResult::RolledBack { .. } => return "rolled back".into(),
            UpdateResult::Failed { .. } => return "update failed".into(),
            UpdateResult::Rejected { .. } => return "rejected".into(),
            UpdateResult::Applied => {}
        }
    }
    if report.services.iter().any(|s| s.health == Health::Unhealthy) {
        "unhealthy".into()
    } else {
        "healthy".into()
    }
}

fn print_device(view: &DeviceView) {
    let d = &view.device;
    let now = UnixMillis::now();
    let field = |k: &str, v: String| println!("{k:<12}{v}");
    field("device", d.id.to_string());
    field(
        "online",
        format!("{} (last seen {})", if d.online { "yes" } else { "no" }, ago(d.last_seen)),
    );
    field("agent", d.agent_version.clone().unwrap_or_else(|| "-".into()));
    if let Some(a) = d.last_report.as_ref().and_then(|r| r.agent.as_ref()) {
        let mut slots = format!(
            "running {}, committed {}",
            a.running,
            a.committed.as_deref().unwrap_or("the packaged binary")
        );
        if let Some(t) = &a.trial {
            slots += &format!(", {t} on trial");
        }
        field("agent slots", slots);
        if let Some(f) = &a.failed {
            field("agent update", format!("failed: {} ({}, {})", f.version, f.reason, ago(f.at)));
            if !a.failed_log.is_empty() {
                println!("{:<12}its last log lines:", "");
                for line in &a.failed_log {
                    println!("{:<14}{line}", "");
                }
            }
        }
    }
    if let Some(v) = &d.desired_agent {
        let how = match &d.agent_pin {
            Some(p) => format!("pinned by {}: {}", p.pinned_by, p.reason),
            None => "assigned by a rollout".to_owned(),
        };
        field("agent want", format!("{v} ({how})"));
    }
    field("release", d.release.clone().unwrap_or_else(|| "-".into()));
    field("assigned", d.assigned_release.clone().unwrap_or_else(|| "-".into()));
    field(
        "desired",
        format!(
            "{} (generation {}, accepted {})",
            d.desired_release.as_deref().unwrap_or("-"),
            d.desired_generation,
            d.accepted_generation
        ),
    );
    field("health", health(d));
    match d.pin_at(now) {
        Some(p) => field(
            "pin",
            format!(
                "{} by {}: {}{}",
                p.release,
                p.pinned_by,
                p.reason,
                p.until.map_or(String::new(), |u| format!(" (until {})", utc(u)))
            ),
        ),
        None => field("pin", "-".into()),
    }
    let labels: Vec<String> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    field("labels", if labels.is_empty() { "-".into() } else { labels.join(" ") });
    field("groups", if view.groups.is_empty() { "-".into() } else { view.groups.join(", ") });
    field(
        "seal key",
        d.seal_key.clone().unwrap_or_else(|| "- (agent predates sealed secrets)".into()),
    );
    field("rollout", view.rollout.map_or_else(|| "-".into(), |r| r.to_string()));
    if !d.notes.is_empty() {
        field("notes", d.notes.clone());
    }
    if let Some(report) = &d.last_report {
        if let Some(o) = &report.update.last_outcome {
            field("last update", format!("generation {}: {:?}", o.generation, o.result));
        }
        for s in &report.services {
            field(
                "service",
                format!("{} {:?} {:?} restarts {}", s.name, s.state, s.health, s.restarts),
            );
        }
    }
    if let Some(inv) = &view.inventory {
        field(
            "hardware",
            format!(
                "{} {} {}, {} CPUs, {} memory",
                inv.arch,
                inv.os.pretty_name,
                inv.kernel,
                inv.cpus.count,
                fleet_api::units::bytes(inv.memory_bytes)
            ),
        );
    }
}

fn service_name(s: &str) -> Result<fleet_proto::ServiceName, Failure> {
    fleet_proto::ServiceName::new(s).map_err(|e| Failure::usage(format!("service name: {e}")))
}

/// Sends a command and prints its one result; a refused or failed command exits 2.
fn command(json: bool, client: &Client, id: &str, action: CommandAction) -> Result<(), Failure> {
    let request = CommandRequest { action, timeout_secs: None };
    let result: CommandResult = client.post(&format!("/api/v1/devices/{id}/commands"), &request)?;
    if json {
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

/// The agent column of `device ls`: the version running, with a trial or a failed update.
fn agent_column(d: &Device) -> String {
    let versions = d.last_report.as_ref().and_then(|r| r.agent.as_ref());
    let Some(v) = versions else {
        return d.agent_version.clone().unwrap_or_else(|| "-".into());
    };
    match (&v.trial, &v.failed) {
        (Some(trial), _) if *trial != v.running => format!("{} (trying {trial})", v.running),
        (Some(_), _) => format!("{} (trial)", v.running),
        (None, Some(f)) if d.desired_agent.as_deref() == Some(f.version.as_str()) => {
            format!("{} ({} failed)", v.running, f.version)
        }
        _ => v.running.clone(),
    }
}
