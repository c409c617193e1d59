//! `fleetctl`: the command line for fleet managers and robotics engineers.
//!
//! Conventions (shared/CLI.md): `fleetctl NOUN VERB`; human tables on a terminal and `--json`
//! for scripts (complete objects on stdout, nothing else); progress and hints on stderr; exit
//! codes 0 ok, 1 usage or input, 2 refused by the server, 3 the thing watched ended unhealthy,
//! 4 timed out, 5 server unreachable.

mod audit;
mod client;
mod device;
mod enroll;
mod group;
mod login;
mod release;
mod rollout;
mod secret;
mod show;
mod token;
mod var;
mod watch;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use client::{Client, Failure};

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
    Device(device::DeviceVerb),
    /// Device groups: named label selectors.
    #[command(subcommand)]
    Group(group::GroupVerb),
    /// Releases: immutable, signed, images by digest.
    #[command(subcommand)]
    Release(release::ReleaseVerb),
    /// Staged rollouts across devices, with health gates.
    #[command(subcommand)]
    Rollout(rollout::RolloutVerb),
    /// Variables per fleet, group or device (and service): environment and ${NAME} in releases.
    #[command(subcommand)]
    Var(var::VarVerb),
    /// Secrets per fleet, group or device: files in containers, sealed to each device.
    #[command(subcommand)]
    Secret(secret::SecretVerb),
    /// API tokens with roles viewer, operator, admin.
    #[command(subcommand)]
    Token(token::TokenVerb),
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
        Noun::Login => login::login(cli.json, cli.token.as_deref(), client),
        Noun::Device(verb) => device::device(cli.json, client, verb),
        Noun::Group(verb) => group::group(cli.json, client, verb),
        Noun::Release(verb) => release::release(cli.json, client, verb),
        Noun::Rollout(verb) => rollout::rollout(cli.json, client, verb),
        Noun::Var(verb) => var::var(cli.json, client, verb),
        Noun::Secret(verb) => secret::secret(cli.json, client, verb),
        Noun::Token(verb) => token::token(cli.json, client, verb),
        Noun::Audit { since, limit } => audit::audit(cli.json, client, since, *limit),
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
