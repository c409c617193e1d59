//! `fleet-server`: the control plane daemon. Thin: parse flags, set up logging, run
//! [`fleet_server::serve`], print the error chain once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Fleet's control plane: device registry, releases and rollouts.
///
/// With no arguments it runs on embedded defaults: the REST API on 127.0.0.1:8080, an
/// in-process MQTT broker on 127.0.0.1:1883 and its store in ./fleet-data.
///
/// On first start it creates the fleet CA, the desired-state signing key and the admin
/// token in the data directory.
///
/// Examples:
///   fleet-server --data /var/lib/fleet --api-listen 127.0.0.1:9090
///   fleet-server --config /etc/fleet-server/config.toml
///   fleet-server broker-files --name mqtt.example.com --out /etc/mosquitto/fleet
///   fleet-server backup fleet-backup.json
///   fleet-server restore fleet-backup.json --data /var/lib/fleet-new
#[derive(Debug, Parser)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Print the documented default configuration file and exit.
    #[arg(long)]
    print_default_config: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Write the TLS files an external Mosquitto needs (packaging/mosquitto/): the fleet CA,
    /// a broker certificate for the given names, the revocation list and the server's own
    /// MQTT identity (server.pem, server.key).
    ///
    /// Example:
    ///   fleet-server broker-files --name mqtt.example.com --name 10.0.0.5 --out /etc/mosquitto/fleet
    #[command(verbatim_doc_comment)]
    BrokerFiles {
        /// Data directory (where the fleet CA lives).
        #[arg(long, env = "FLEET_DATA", default_value = "fleet-data")]
        data: PathBuf,
        /// Host name or IP address devices use to reach the broker (repeatable).
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
        /// Also issue this server identity (`fleet-server-NAME`, repeatable) as NAME.pem and
        /// NAME.key: one per further server process, which runs with --broker-identity NAME.
        /// The broker takes a certificate's name as the client id, so two processes with one
        /// identity would take over each other's session.
        #[arg(long = "server-identity", value_name = "NAME")]
        identities: Vec<String>,
    },
    /// Write a backup of the whole store and the fleet's keys to FILE (mode 0600: it holds the
    /// CA and signing keys). Works on a stopped server's data directory, or asks the running
    /// server (with the admin token from the data directory) when it holds the store.
    ///
    /// Example:
    ///   fleet-server backup /var/backups/fleet-$(date +%F).json --data /var/lib/fleet-server
    #[command(verbatim_doc_comment)]
    Backup {
        /// Where to write the backup.
        file: PathBuf,
        /// Data directory.
        #[arg(long, env = "FLEET_DATA", default_value = "fleet-data")]
        data: PathBuf,
        /// The running server's API, asked when the store is in use.
        #[arg(long, env = "FLEET_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
    },
    /// Restore a backup into a data directory that has no store yet (then start the server on
    /// it).
    ///
    /// Example:
    ///   fleet-server restore fleet-backup.json --data /var/lib/fleet-server
    #[command(verbatim_doc_comment)]
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Data directory to restore into.
        #[arg(long, env = "FLEET_DATA", default_value = "fleet-data")]
        data: PathBuf,
        /// Write over an existing store (stop the server first).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Configuration file (default: /etc/fleet-server/config.toml if it exists); flags and
    /// environment variables override it.
    #[arg(long, env = "FLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (store, keys) [default: fleet-data].
    #[arg(long, env = "FLEET_DATA")]
    data: Option<PathBuf>,
    /// Address of the REST API [default: 127.0.0.1:8080].
    #[arg(long, env = "FLEET_API_LISTEN")]
    api_listen: Option<SocketAddr>,
    /// Address of the embedded MQTT broker, loopback only [default: 127.0.0.1:1883].
    #[arg(long, env = "FLEET_MQTT_LISTEN")]
    mqtt_listen: Option<SocketAddr>,
    /// Broker URL written into enrollment bundles (default: the embedded broker), e.g.
    /// mqtts://mqtt.example.com:8883 for a Mosquitto set up with `broker-files`.
    #[arg(long, env = "FLEET_DEVICE_BROKER")]
    device_broker: Option<String>,
    /// Keep the revocation list current in this directory (the one given to `broker-files`);
    /// with --broker, the server's MQTT identity is read from here too.
    #[arg(long, env = "FLEET_BROKER_FILES")]
    broker_files: Option<PathBuf>,
    /// Use this external broker (mqtts://host:port, e.g. Mosquitto with
    /// packaging/mosquitto/) instead of the embedded one; needs --broker-files.
    #[arg(long, env = "FLEET_BROKER")]
    broker: Option<String>,
    /// This process's identity on the external broker [default: fleet-server]; a further
    /// server process uses its own, issued with `broker-files --server-identity`.
    #[arg(long, env = "FLEET_BROKER_IDENTITY", value_name = "NAME")]
    broker_identity: Option<String>,
    /// Push agent releases' binaries to this registry repository, e.g.
    /// registry.example.com/fleet/agent (devices download them from there).
    #[arg(long, env = "FLEET_AGENT_REPOSITORY")]
    agent_repository: Option<String>,
    /// Resolve image tags only in this registry (host[:port]; repeat for more). Replaces the
    /// configuration's `allowed_registries`. Without any, registries at public addresses only.
    #[arg(long = "allowed-registry", env = "FLEET_ALLOWED_REGISTRIES", value_delimiter = ',')]
    allowed_registries: Vec<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Usage errors exit 1 like fleetctl's and fleet-agent's (clap's own default is 2).
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(1);
        }
        // --help and --version.
        Err(e) => e.exit(),
    };
    if cli.print_default_config {
        print!("{}", fleet_server::config::DEFAULT_CONFIG);
        return ExitCode::SUCCESS;
    }
    let args = match cli.command {
        Some(Command::Serve(a)) => a,
        None => cli.serve,
        Some(Command::BrokerFiles { data, names, out, identities }) => {
            return broker_files(&data, &names, &out, &identities)
        }
        Some(Command::Backup { file, data, server }) => return backup(&file, &data, &server),
        Some(Command::Restore { file, data, force }) => return restore(&file, &data, force),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FLEET_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,rumqttd=warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal; journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let overrides = fleet_server::config::Overrides {
        data: args.data,
        api_listen: args.api_listen,
        mqtt_listen: args.mqtt_listen,
        broker: args.broker,
        broker_files: args.broker_files,
        broker_identity: args.broker_identity,
        device_broker: args.device_broker,
        agent_repository: args.agent_repository,
        allowed_registries: (!args.allowed_registries.is_empty())
            .then_some(args.allowed_registries),
    };
    let opts = match fleet_server::config::load(args.config.as_deref(), overrides) {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(r) => r,
            Err(e) => return fail(&e),
        };
    let mqtt = opts.mqtt_listen;
    let data = opts.data_dir.display().to_string();
    let result = runtime.block_on(fleet_server::serve(opts, shutdown_signal(), move |api| {
        tracing::info!(api = %format!("http://{api}"), %mqtt, %data, "fleet-server {} ready", env!("CARGO_PKG_VERSION"));
    }));
    match result {
        Ok(()) => {
            tracing::info!("fleet-server stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `fleet-server backup`: from the store directly when it is free, else from the running
/// server.
fn backup(file: &std::path::Path, data: &std::path::Path, server: &str) -> ExitCode {
    let result = (|| -> Result<usize, Box<dyn std::error::Error>> {
        let backup = match fleet_server::store::Store::open(&data.join("store")) {
            Ok(store) => fleet_server::backup::Backup::take(&store, data)?,
            Err(fleet_server::store::StoreError::Busy { .. }) => {
                let token = fleet_server::keyfile::read_secret(&data.join("admin-token"))?;
                let mut answer = ureq::get(&format!("{}/api/v1/backup", server.trim_end_matches('/')))
                    .header("authorization", &format!("Bearer {}", token.trim()))
                    .call()
                    .map_err(|e| format!("the store is in use and the server at {server} did not give a backup: {e} (pass --server)"))?;
                answer.body_mut().with_config().limit(1 << 34).read_json()?
            }
            Err(e) => return Err(e.into()),
        };
        let text = serde_json::to_vec_pretty(&backup)?;
        fleet_server::keyfile::write_file(file, &text, 0o600)?;
        Ok(backup.collections.values().map(Vec::len).sum())
    })();
    match result {
        Ok(n) => {
            eprintln!("wrote {n} records and the fleet's keys to {} (mode 0600; it holds the CA and signing keys: keep it safe)", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&*e),
    }
}

/// `fleet-server restore`.
fn restore(file: &std::path::Path, data: &std::path::Path, force: bool) -> ExitCode {
    let result = (|| -> Result<usize, Box<dyn std::error::Error>> {
        let text =
            std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let backup: fleet_server::backup::Backup = serde_json::from_slice(&text)
            .map_err(|e| format!("{} is not a Fleet backup: {e}", file.display()))?;
        std::fs::create_dir_all(data)?;
        Ok(backup.restore(data, force)?)
    })();
    match result {
        Ok(n) => {
            eprintln!("restored {n} records and the fleet's keys into {}; start the server with --data {}", data.display(), data.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&*e),
    }
}

/// `fleet-server broker-files`: the TLS files for an external Mosquitto.
fn broker_files(
    data: &std::path::Path,
    names: &[String],
    out: &std::path::Path,
    identities: &[String],
) -> ExitCode {
    if let Some(bad) = identities.iter().find(|i| {
        !fleet_server::pki::is_server_identity(i) || *i == fleet_server::pki::SERVER_IDENTITY
    }) {
        eprintln!("fleet-server: error: --server-identity {bad:?}: a further server identity is \"fleet-server-\" and a name, e.g. fleet-server-2");
        return ExitCode::FAILURE;
    }
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        std::fs::create_dir_all(data)?;
        let keys = fleet_server::open_keys(data)?;
        // The registry's revocations; while the server runs it holds the store, and the list
        // it wrote at its start (and after every revocation) is current anyway.
        match fleet_server::store::Store::open(&data.join("store")) {
            Ok(store) => fleet_server::api::write_crl(&store, &keys.pki)?,
            Err(_) if keys.pki.crl_path().exists() => {}
            Err(e) => return Err(e.into()),
        }
        keys.pki.write_broker_files(out, names, identities)?;
        let crl = std::fs::read(keys.pki.crl_path())?;
        fleet_server::keyfile::write_file(&out.join("crl.pem"), &crl, 0o644)?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            eprintln!(
                "wrote ca.pem, broker.pem, broker.key, crl.pem, server.pem, server.key to {}\n  use them with packaging/mosquitto/fleet.conf, and run the server with --broker-files {} so revocations reach the broker",
                out.display(),
                out.display()
            );
            for identity in identities {
                eprintln!(
                    "wrote {identity}.pem, {identity}.key: run that server process with --broker-identity {identity}, and add to the broker's acl:\n  user {identity}\n  topic readwrite fleet/v1/#"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&*e),
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// Prints the error and its causes once, the way every Fleet binary does.
fn fail(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("fleet-server: error: {}", fleet_proto::errors::report(e));
    ExitCode::FAILURE
}
