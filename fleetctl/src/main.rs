//! `fleetctl`: the command line for fleet managers and robotics engineers.
//!
//! Conventions (shared/CLI.md): `fleetctl NOUN VERB`; human tables on a terminal and `--json`
//! for scripts (complete objects on stdout, nothing else); progress and hints on stderr; exit
//! codes 0 ok, 1 usage or input, 2 refused by the server, 3 the thing watched ended unhealthy,
//! 4 timed out, 5 server unreachable.

mod client;
mod secret;
mod show;
mod var;
mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use fleet_api::enroll;
use fleet_api::{
    AuditEntry, CommandRequest, Device, DeviceChange, DeviceView, EnrollRequest, EnrollResponse,
    Group, GroupRequest, Page, PinRequest, Plan, Release, ReleaseRequest, Role, RolloutRequest,
    RolloutView, Token, TokenRequest, TokenResponse,
};
use fleet_proto::{CommandAction, CommandOutcome, CommandResult, DeviceId, UnixMillis};

use client::{print_json, Client, Failure};
use show::{ago, table, utc};

/// Manage a Fleet: devices, groups, releases, pins and staged rollouts.
///
/// The server and token come from --server/--token, else FLEET_SERVER/FLEET_TOKEN, else
/// ~/.config/fleet/config.toml (written by `fleetctl login`), else ./fleet-data/admin-token
/// when run where the server runs.
///
/// Examples:
///   fleetctl login --server https://fleet.example.com --token ops.4f1c...
///   fleetctl device enroll robot-7 --label site=depot --out ./robot-7
///   fleetctl group create depot --selector site=depot
///   fleetctl release create robot-stack 1.4.2 -f compose.yaml
///   fleetctl rollout plan robot-stack@1.4.2 --target depot
///   fleetctl rollout create robot-stack@1.4.2 --target depot --waves 1,10%,100% --watch
///   fleetctl device pin robot-7 robot-stack@1.4.1 --reason "bench: lidar driver" --until 2d
///   fleetctl var set SITE berlin --group depot
///
/// Exit codes: 0 ok, 1 usage or input error, 2 refused by the server, 3 the rollout or
/// device watched ended unhealthy, 4 timed out, 5 server unreachable.
#[derive(Debug, Parser)]
#[command(name = "fleetctl", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// Fleet server URL [default: the login profile, else http://127.0.0.1:8080].
    #[arg(long, global = true, env = "FLEET_SERVER")]
    server: Option<String>,
    /// API token [default: the login profile, else ./fleet-data/admin-token].
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
    /// Remember a server and token in ~/.config/fleet/config.toml (checked first).
    ///
    /// Example: fleetctl login --server https://fleet.example.com --token ops.4f1c...
    Login,
    /// Devices in the registry.
    #[command(subcommand)]
    Device(DeviceVerb),
    /// Device groups: named label selectors.
    #[command(subcommand)]
    Group(GroupVerb),
    /// Releases: immutable, signed, images by digest.
    #[command(subcommand)]
    Release(ReleaseVerb),
    /// Staged rollouts across devices, with health gates.
    #[command(subcommand)]
    Rollout(RolloutVerb),
    /// Variables per fleet, group or device (and service): environment and ${NAME} in releases.
    #[command(subcommand)]
    Var(var::VarVerb),
    /// Secrets per fleet, group or device: files in containers, sealed to each device.
    #[command(subcommand)]
    Secret(secret::SecretVerb),
    /// API tokens with roles viewer, operator, admin.
    #[command(subcommand)]
    Token(TokenVerb),
    /// The audit log: who changed what (example: fleetctl audit --since 24h).
    Audit {
        /// How far back: a duration (24h, 7d) or a UTC time.
        #[arg(long, default_value = "24h")]
        since: String,
        /// At most this many entries (the newest).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Print a shell completion script (example: fleetctl completions bash > /etc/bash_completion.d/fleetctl).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum DeviceVerb {
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
        #[arg(long, default_value_t = enroll::DEFAULT_DEVICE_VALIDITY_DAYS)]
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
    Unpin {
        /// Device id.
        id: String,
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

#[derive(Debug, Subcommand)]
enum GroupVerb {
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

#[derive(Debug, Subcommand)]
enum ReleaseVerb {
    /// Create a release from a Compose file; every image tag is resolved to a digest.
    ///
    /// Example: fleetctl release create robot-stack 1.4.2 -f compose.yaml
    /// (`-f -` reads standard input; a .json file is taken as the canonical release.)
    Create {
        /// Application name.
        app: String,
        /// Version.
        version: String,
        /// The Compose file (see fleet-server/COMPOSE.md for the supported subset).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List releases (example: fleetctl release ls --app robot-stack).
    Ls {
        /// Only this application's.
        #[arg(long)]
        app: Option<String>,
    },
    /// Show a release (example: fleetctl release show robot-stack@1.4.2 --compose).
    Show {
        /// Release id (app@version).
        id: String,
        /// Print the Compose file it was made from.
        #[arg(long)]
        compose: bool,
    },
}

/// How a rollout goes, shared by `plan` and `create`.
#[derive(Debug, Clone, clap::Args)]
struct RolloutArgs {
    /// Release id (app@version).
    release: String,
    /// group:NAME (or a bare group name), selector:k=v,... (or a bare k=v,...), or devices:ID,ID.
    #[arg(long)]
    target: String,
    /// Cumulative waves: device counts and percentages ending at 100%.
    #[arg(long, default_value = fleet_api::rollouts::DEFAULT_WAVES)]
    waves: String,
    /// How long a wave must stay healthy before the next starts.
    #[arg(long, default_value = fleet_api::rollouts::DEFAULT_BAKE)]
    bake: String,
    /// At most this many devices updating at once.
    #[arg(long)]
    max_parallel: Option<u32>,
    /// Failures tolerated before --on-failure: a count (3) or a percentage (5%).
    #[arg(long, default_value = "0")]
    failure_threshold: String,
    /// pause, or rollback (re-target the rollout's devices to their previous release).
    #[arg(long, default_value = "pause")]
    on_failure: String,
    /// When devices may be targeted, e.g. "Mon-Fri 22:00-05:00 Europe/Berlin" (or a UTC offset like +01:00).
    #[arg(long)]
    window: Option<String>,
    /// An offline or deferred (locked) device counts as failed after this long.
    #[arg(long, default_value = fleet_api::rollouts::DEFAULT_DEVICE_TIMEOUT)]
    device_timeout: String,
    /// An online device counts as failed if not healthy this long after targeting.
    #[arg(long, default_value = fleet_api::rollouts::DEFAULT_UPDATE_DEADLINE)]
    update_deadline: String,
    /// Spread targeting inside a wave over this long, so a site does not pull at once.
    #[arg(long, default_value = "0s")]
    stagger: String,
    /// Leave out devices that cannot run the release instead of refusing.
    #[arg(long)]
    exclude_unsatisfiable: bool,
    /// Seed of the wave plan (the one `rollout plan` printed, to get exactly its waves).
    #[arg(long)]
    seed: Option<u64>,
}

impl RolloutArgs {
    fn request(&self) -> RolloutRequest {
        RolloutRequest {
            release: self.release.clone(),
            target: self.target.clone(),
            waves: Some(self.waves.clone()),
            bake: Some(self.bake.clone()),
            max_parallel: self.max_parallel,
            failure_threshold: Some(self.failure_threshold.clone()),
            on_failure: Some(self.on_failure.clone()),
            window: self.window.clone(),
            device_timeout: Some(self.device_timeout.clone()),
            update_deadline: Some(self.update_deadline.clone()),
            stagger: Some(self.stagger.clone()),
            exclude_unsatisfiable: self.exclude_unsatisfiable,
            seed: self.seed,
        }
    }
}

#[derive(Debug, Subcommand)]
enum RolloutVerb {
    /// Pre-flight: which devices each wave would hold, which are pinned, offline or cannot run
    /// the release. Sends nothing.
    ///
    /// Example: fleetctl rollout plan robot-stack@1.4.2 --target depot --waves 1,10%,100%
    Plan(RolloutArgs),
    /// Create a rollout and start it.
    ///
    /// Example: fleetctl rollout create robot-stack@1.4.2 --target depot --waves 1,10%,50%,100% --bake 10m --failure-threshold 5% --on-failure rollback --watch
    Create {
        #[command(flatten)]
        args: RolloutArgs,
        /// Follow it until it ends (exit 3 if it pauses or rolls back).
        #[arg(long)]
        watch: bool,
        /// With --watch: give up watching after this long (exit 4; the rollout carries on).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// List rollouts, newest first.
    Ls,
    /// A rollout's progress per wave (example: fleetctl rollout status 12 --watch).
    Status {
        /// Rollout id.
        id: u64,
        /// Follow it until it ends (exit 3 if it pauses or rolls back).
        #[arg(long)]
        watch: bool,
        /// With --watch: give up watching after this long (exit 4).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Pause a rollout (example: fleetctl rollout pause 12 --reason "site network work").
    Pause {
        /// Rollout id.
        id: u64,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a paused rollout; failures so far count as accepted (example: fleetctl rollout resume 12).
    Resume {
        /// Rollout id.
        id: u64,
    },
    /// End a rollout where it stands; devices keep what they run (example: fleetctl rollout abort 12).
    Abort {
        /// Rollout id.
        id: u64,
    },
    /// Send every device the rollout moved back to its previous release (example: fleetctl rollout rollback 12).
    Rollback {
        /// Rollout id.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum TokenVerb {
    /// Create a token; its secret is printed once (example: fleetctl token create ci --role operator --expires 90d).
    Create {
        /// Token name (audit entries carry it).
        name: String,
        /// viewer (reads), operator (changes the fleet), admin (also devices' identities, tokens, backups).
        #[arg(long)]
        role: Role,
        /// When it stops working: a duration (90d) or a UTC time.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List tokens (names and roles; never secrets).
    Ls,
    /// Revoke a token (example: fleetctl token revoke ci).
    Revoke {
        /// Token name.
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Usage errors exit 1 (CLI.md): clap's own default, 2, is "refused by the server" here,
        // and a script must tell a typo from a refusal.
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(1);
        }
        // --help and --version.
        Err(e) => e.exit(),
    };
    let client = Client::new(cli.server.clone(), cli.token.clone());
    match run(&cli, &client) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("fleetctl: error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: &Cli, client: &Client) -> Result<(), Failure> {
    match &cli.noun {
        Noun::Login => login(cli, client),
        Noun::Device(verb) => device(cli, client, verb),
        Noun::Group(verb) => group(cli, client, verb),
        Noun::Release(verb) => release(cli, client, verb),
        Noun::Rollout(verb) => rollout(cli, client, verb),
        Noun::Var(verb) => var::var(cli.json, client, verb),
        Noun::Secret(verb) => secret::secret(cli.json, client, verb),
        Noun::Token(verb) => token(cli, client, verb),
        Noun::Audit { since, limit } => {
            let since = show::parse_time(since, true).map_err(Failure::usage)?;
            let entries: Vec<AuditEntry> =
                client.get(&format!("/api/v1/audit?since={}&limit={limit}", since.0))?;
            if cli.json {
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
        Noun::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "fleetctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

fn login(cli: &Cli, client: &Client) -> Result<(), Failure> {
    let me: fleet_api::WhoAmI = client.get("/api/v1/whoami")?;
    let path = client::profile_path()
        .ok_or_else(|| Failure::usage("no home directory to keep the login in (set HOME)"))?;
    let profile = client::Profile {
        server: Some(client.server.clone()),
        token: cli.token.clone().or_else(|| client::read_profile().token),
    };
    let text = toml::to_string(&profile).map_err(|e| Failure::usage(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::usage(format!("{}: {e}", dir.display())))?;
    }
    enroll::write_file(&path, text.as_bytes(), 0o600)
        .map_err(|e| Failure::usage(format!("cannot write {}: {e}", path.display())))?;
    if cli.json {
        print_json(&me);
    } else {
        println!("logged in to {} as {} ({})", client.server, me.name, me.role);
        eprintln!("saved in {} (mode 0600)", path.display());
    }
    Ok(())
}

fn device(cli: &Cli, client: &Client, verb: &DeviceVerb) -> Result<(), Failure> {
    match verb {
        DeviceVerb::Ls { selector, group } => {
            let mut query = Vec::new();
            if let Some(s) = selector {
                query.push(format!("selector={}", encode(s)));
            }
            if let Some(g) = group {
                query.push(format!("group={}", encode(g)));
            }
            let devices: Vec<Device> = all_pages(client, "/api/v1/devices", &query)?;
            if cli.json {
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
                            health(d),
                            d.pin_at(now).map_or_else(
                                || "-".into(),
                                |p| format!("{} ({})", p.release, p.reason),
                            ),
                            ago(d.last_seen),
                        ]
                    })
                    .collect();
                table(&["DEVICE", "ONLINE", "RELEASE", "HEALTH", "PIN", "LAST SEEN"], &rows);
            }
        }
        DeviceVerb::Show { id } => {
            let view: DeviceView = client.get(&format!("/api/v1/devices/{id}"))?;
            if cli.json {
                print_json(&view);
            } else {
                print_device(&view);
            }
        }
        DeviceVerb::Enroll { id, labels, out, valid_days, agent_data_dir } => {
            enroll(cli, client, id, labels, out, *valid_days, agent_data_dir)?;
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
            if cli.json {
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
            if cli.json {
                print_json(&d);
            } else {
                println!("{id}: notes saved");
            }
        }
        DeviceVerb::Pin { id, release, reason, until, force } => {
            let until = until
                .as_deref()
                .map(|u| show::parse_time(u, false))
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
            if cli.json {
                print_json(&d);
            } else {
                let until = until
                    .map_or_else(|| "until unpinned".to_owned(), |u| format!("until {}", utc(u)));
                println!("pinned {id} to {release} {until}");
                eprintln!("rollouts leave it alone; `fleetctl device unpin {id}` returns it to its assigned release");
            }
        }
        DeviceVerb::Unpin { id } => {
            let d: Device =
                client.send::<(), _>("DELETE", &format!("/api/v1/devices/{id}/pin"), None)?;
            if cli.json {
                print_json(&d);
            } else {
                println!(
                    "unpinned {id}; it runs {} next",
                    d.assigned_release.as_deref().unwrap_or("no release")
                );
            }
        }
        DeviceVerb::Restart { id, service } => {
            let service = service_name(service)?;
            command(cli, client, id, CommandAction::RestartService { service })?;
        }
        DeviceVerb::Logs { id, service, tail } => {
            let service = service_name(service)?;
            command(cli, client, id, CommandAction::FetchLogs { service, tail: *tail })?;
        }
        DeviceVerb::Reboot { id } => command(cli, client, id, CommandAction::Reboot)?,
        DeviceVerb::Purge { id } => command(cli, client, id, CommandAction::PurgeVolumes)?,
        DeviceVerb::Events { id } => {
            let events: Vec<fleet_proto::Event> =
                client.get(&format!("/api/v1/devices/{id}/events"))?;
            if cli.json {
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
            device_metrics(cli, client, id, metric.as_deref(), *limit)?
        }
        DeviceVerb::Revoke { id } => {
            let device: Device =
                client.send::<(), _>("POST", &format!("/api/v1/devices/{id}/revoke"), None)?;
            if cli.json {
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
    cli: &Cli,
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
        if cli.json {
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
        let mut path =
            format!("/api/v1/devices/{id}/metrics/history?metric={}&limit=1000", encode(metric));
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
    if cli.json {
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

fn group(cli: &Cli, client: &Client, verb: &GroupVerb) -> Result<(), Failure> {
    match verb {
        GroupVerb::Create { name, selector, description } => {
            let request = GroupRequest {
                name: name.clone(),
                selector: selector.clone(),
                description: description.clone(),
            };
            let answer: serde_json::Value = client.post("/api/v1/groups", &request)?;
            if cli.json {
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
            if cli.json {
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
            let g: serde_json::Value = client.get(&format!("/api/v1/groups/{}", encode(name)))?;
            if cli.json {
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
                &format!("/api/v1/groups/{}", encode(name)),
                None,
            )?;
            if cli.json {
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

/// How many devices a change re-targeted (its answer's `retargeted` list).
fn retargeted(answer: &serde_json::Value) -> usize {
    answer["retargeted"].as_array().map_or(0, Vec::len)
}

fn release(cli: &Cli, client: &Client, verb: &ReleaseVerb) -> Result<(), Failure> {
    match verb {
        ReleaseVerb::Create { app, version, file } => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .map_err(|e| Failure::usage(format!("standard input: {e}")))?;
                s
            } else {
                std::fs::read_to_string(file)
                    .map_err(|e| Failure::usage(format!("cannot read {}: {e}", file.display())))?
            };
            let request = if file.extension().is_some_and(|e| e == "json") {
                let spec = serde_json::from_str(&text).map_err(|e| {
                    Failure::usage(format!("{}: not a release as JSON: {e}", file.display()))
                })?;
                ReleaseRequest {
                    app: app.clone(),
                    version: version.clone(),
                    compose: None,
                    spec: Some(spec),
                }
            } else {
                ReleaseRequest {
                    app: app.clone(),
                    version: version.clone(),
                    compose: Some(text),
                    spec: None,
                }
            };
            eprintln!("resolving image tags to digests...");
            let r: Release = client.post("/api/v1/releases", &request)?;
            if cli.json {
                print_json(&r);
            } else {
                println!("created release {}", r.id());
                for i in &r.images {
                    let platforms: Vec<String> = i
                        .resolved
                        .platforms
                        .iter()
                        .map(|p| {
                            format!("{}/{}", p.os, p.architecture)
                                + &p.variant.as_ref().map(|v| format!("/{v}")).unwrap_or_default()
                        })
                        .collect();
                    println!(
                        "  {:<16} {} -> {} [{}]",
                        i.service,
                        i.reference,
                        i.resolved.image.digest(),
                        platforms.join(", ")
                    );
                }
                eprintln!("next: `fleetctl rollout plan {} --target GROUP`", r.id());
            }
        }
        ReleaseVerb::Ls { app } => {
            let query: Vec<String> = app.iter().map(|a| format!("app={}", encode(a))).collect();
            let releases: Vec<Release> = all_pages(client, "/api/v1/releases", &query)?;
            if cli.json {
                print_json(&releases);
            } else if releases.is_empty() {
                eprintln!("no releases yet: `fleetctl release create APP VERSION -f compose.yaml`");
            } else {
                let rows: Vec<Vec<String>> = releases
                    .iter()
                    .map(|r| {
                        let services: Vec<String> =
                            r.spec.services.iter().map(|s| s.name.to_string()).collect();
                        vec![
                            r.id().to_string(),
                            utc(r.created_at),
                            r.created_by.clone(),
                            services.join(","),
                        ]
                    })
                    .collect();
                table(&["RELEASE", "CREATED", "BY", "SERVICES"], &rows);
            }
        }
        ReleaseVerb::Show { id, compose } => {
            let r: Release = client.get(&format!("/api/v1/releases/{}", encode(id)))?;
            if cli.json {
                print_json(&r);
            } else if *compose {
                print!(
                    "{}",
                    r.compose
                        .as_deref()
                        .unwrap_or("# this release was given as JSON, not as a Compose file\n")
                );
            } else {
                println!(
                    "release  {}  (created {} by {})",
                    r.id(),
                    utc(r.created_at),
                    r.created_by
                );
                for s in &r.spec.services {
                    println!("  {:<16} {}", s.name.to_string(), s.image);
                }
            }
        }
    }
    Ok(())
}

fn rollout(cli: &Cli, client: &Client, verb: &RolloutVerb) -> Result<(), Failure> {
    let duration = |t: &Option<String>| {
        t.as_deref().map(fleet_api::units::parse_duration).transpose().map_err(Failure::usage)
    };
    match verb {
        RolloutVerb::Plan(args) => {
            let plan: Plan = client.post("/api/v1/rollouts/plan", &args.request())?;
            if cli.json {
                print_json(&plan);
            } else {
                print_plan(&plan);
            }
        }
        RolloutVerb::Create { args, watch, timeout } => {
            let timeout = duration(timeout)?;
            let view: RolloutView = client.post("/api/v1/rollouts", &args.request())?;
            if cli.json && !watch {
                print_json(&view);
            } else if !cli.json {
                println!("rollout {} of {} created", view.id, view.status.release);
                for w in &view.status.waves {
                    println!("  {}", watch::wave_line(w));
                }
            }
            if *watch {
                let result = watch::watch(client, view.id, timeout);
                if cli.json {
                    let last: RolloutView = client.get(&format!("/api/v1/rollouts/{}", view.id))?;
                    print_json(&last);
                }
                return result;
            }
            eprintln!("follow it with `fleetctl rollout status {} --watch`", view.id);
        }
        RolloutVerb::Ls => {
            let all: Vec<RolloutView> = client.get("/api/v1/rollouts")?;
            if cli.json {
                print_json(&all);
            } else if all.is_empty() {
                eprintln!("no rollouts yet: `fleetctl rollout create RELEASE --target GROUP`");
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|v| {
                        let s = &v.status;
                        let total: usize = s.waves.iter().map(|w| w.devices).sum();
                        let healthy: usize = s.waves.iter().map(|w| w.counts.healthy).sum();
                        vec![
                            v.id.to_string(),
                            s.release.to_string(),
                            v.target.to_string(),
                            s.state.name().to_owned(),
                            s.current_wave
                                .map_or_else(|| "-".into(), |w| format!("{w}/{}", s.waves.len())),
                            format!("{healthy}/{total} healthy, {} failed", s.failed),
                            utc(v.created_at),
                        ]
                    })
                    .collect();
                table(&["ID", "RELEASE", "TARGET", "STATE", "WAVE", "DEVICES", "CREATED"], &rows);
            }
        }
        RolloutVerb::Status { id, watch, timeout } => {
            let timeout = duration(timeout)?;
            if *watch {
                let result = watch::watch(client, *id, timeout);
                if cli.json {
                    let last: RolloutView = client.get(&format!("/api/v1/rollouts/{id}"))?;
                    print_json(&last);
                }
                return result;
            }
            let view: RolloutView = client.get(&format!("/api/v1/rollouts/{id}"))?;
            if cli.json {
                print_json(&view);
            } else {
                println!("{}", watch::state_line(&view));
                println!(
                    "target {} (seed {}), created {} by {}",
                    view.target,
                    view.seed,
                    utc(view.created_at),
                    view.created_by
                );
                for w in &view.status.waves {
                    println!("  {}", watch::wave_line(w));
                }
                println!(
                    "  failed {} of {} allowed",
                    view.status.failed, view.status.allowed_failures
                );
                if !view.status.skipped_pinned.is_empty() {
                    let ids: Vec<String> =
                        view.status.skipped_pinned.iter().map(ToString::to_string).collect();
                    println!("  pinned, left out: {}", ids.join(" "));
                }
            }
        }
        RolloutVerb::Pause { id, reason } => {
            rollout_command(cli, client, *id, "pause", reason.clone())?
        }
        RolloutVerb::Resume { id } => rollout_command(cli, client, *id, "resume", None)?,
        RolloutVerb::Abort { id } => rollout_command(cli, client, *id, "abort", None)?,
        RolloutVerb::Rollback { id } => rollout_command(cli, client, *id, "rollback", None)?,
    }
    Ok(())
}

fn rollout_command(
    cli: &Cli,
    client: &Client,
    id: u64,
    verb: &str,
    reason: Option<String>,
) -> Result<(), Failure> {
    let body = serde_json::json!({ "reason": reason });
    let view: RolloutView = client.post(&format!("/api/v1/rollouts/{id}/{verb}"), &body)?;
    if cli.json {
        print_json(&view);
    } else {
        println!("{}", watch::state_line(&view));
    }
    Ok(())
}

fn print_plan(plan: &Plan) {
    let total: usize = plan.waves.iter().map(Vec::len).sum();
    println!(
        "rollout plan of {} to {}: {total} devices in {} waves (seed {})",
        plan.release,
        plan.target,
        plan.waves.len(),
        plan.seed
    );
    for (i, wave) in plan.waves.iter().enumerate() {
        let shown: Vec<String> = wave.iter().take(8).map(ToString::to_string).collect();
        let more = wave.len().saturating_sub(8);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        println!("  wave {} ({}): {}{more}", i + 1, count(wave.len(), "device"), shown.join(" "));
    }
    for (d, release, reason) in &plan.pinned {
        println!("  pinned, left out: {d} on {release} ({reason})");
    }
    if !plan.offline.is_empty() {
        let ids: Vec<String> = plan.offline.iter().map(ToString::to_string).collect();
        println!("  offline now (they update when they return): {}", ids.join(" "));
    }
    for (d, rollout) in &plan.busy {
        println!("  busy: {d} is in active rollout {rollout}");
    }
    for (d, why) in &plan.unsatisfiable {
        println!("  CANNOT RUN the release: {d}: {}", why.join("; "));
    }
    for (d, gaps) in &plan.unchecked {
        println!("  not checked: {d}: {}", gaps.join("; "));
    }
    if plan.unsatisfiable.is_empty() && plan.busy.is_empty() {
        eprintln!(
            "create it with the same flags and --seed {} to get exactly these waves",
            plan.seed
        );
    } else {
        eprintln!(
            "fix the devices above, or create with --exclude-unsatisfiable to leave them out"
        );
    }
}

fn token(cli: &Cli, client: &Client, verb: &TokenVerb) -> Result<(), Failure> {
    match verb {
        TokenVerb::Create { name, role, expires } => {
            let expires_at = expires
                .as_deref()
                .map(|e| show::parse_time(e, false))
                .transpose()
                .map_err(Failure::usage)?;
            let request = TokenRequest {
                name: name.clone(),
                role: *role,
                expires_at: expires_at.map(|e| e.0),
            };
            let t: TokenResponse = client.post("/api/v1/tokens", &request)?;
            if cli.json {
                print_json(&t);
            } else {
                println!("{}", t.token);
                eprintln!("token {name} ({role}) created; this is the only time its secret is shown (use it as FLEET_TOKEN or `fleetctl login --token`)");
            }
        }
        TokenVerb::Ls => {
            let all: Vec<Token> = client.get("/api/v1/tokens")?;
            if cli.json {
                print_json(&all);
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|t| {
                        let state = if t.revoked_at.is_some() {
                            "revoked".to_owned()
                        } else {
                            t.expires_at.map_or_else(
                                || "valid".to_owned(),
                                |e| format!("expires {}", utc(e)),
                            )
                        };
                        vec![t.name.clone(), t.role.to_string(), state, t.created_by.clone()]
                    })
                    .collect();
                table(&["TOKEN", "ROLE", "STATE", "CREATED BY"], &rows);
            }
        }
        TokenVerb::Revoke { name } => {
            let t: Token = client.send::<(), _>(
                "DELETE",
                &format!("/api/v1/tokens/{}", encode(name)),
                None,
            )?;
            if cli.json {
                print_json(&t);
            } else {
                println!("revoked token {name}");
            }
        }
    }
    Ok(())
}

/// `1 device`, `3 devices`.
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Every page of a list route.
fn all_pages<T: serde::de::DeserializeOwned>(
    client: &Client,
    path: &str,
    query: &[String],
) -> Result<Vec<T>, Failure> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = query.to_vec();
        q.push("limit=1000".to_owned());
        if let Some(a) = &after {
            q.push(format!("after={}", encode(a)));
        }
        let page: Page<T> = client.get(&format!("{path}?{}", q.join("&")))?;
        items.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(items),
        }
    }
}

/// Percent-encodes a query value or path segment.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'@' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn service_name(s: &str) -> Result<fleet_proto::ServiceName, Failure> {
    fleet_proto::ServiceName::new(s).map_err(|e| Failure::usage(format!("service name: {e}")))
}

/// Sends a command and prints its one result; a refused or failed command exits 2.
fn command(cli: &Cli, client: &Client, id: &str, action: CommandAction) -> Result<(), Failure> {
    let request = CommandRequest { action, timeout_secs: None };
    let result: CommandResult = client.post(&format!("/api/v1/devices/{id}/commands"), &request)?;
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
    enroll::write_file(&out.join("device.key"), key_pem.as_bytes(), 0o600)?;
    enroll::write_file(&out.join("device.pem"), enrolled.certificate_pem.as_bytes(), 0o644)?;
    enroll::write_file(&out.join("ca.pem"), enrolled.ca_pem.as_bytes(), 0o644)?;
    enroll::write_file(&out.join("config.toml"), config.as_bytes(), 0o644)?;
    Ok(())
}
