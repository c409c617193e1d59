//! `fleet-server`: the control plane daemon. Thin: parse flags, set up logging, run
//! [`fleet_server::serve`], print the error chain once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_server::ServeOptions;
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
///   fleet-server broker-files --name mqtt.example.com --out /etc/mosquitto/fleet
#[derive(Debug, Parser)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
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
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Data directory (store, keys).
    #[arg(long, env = "FLEET_DATA", default_value = "fleet-data")]
    data: PathBuf,
    /// Address of the REST API.
    #[arg(long, env = "FLEET_API_LISTEN", default_value = "127.0.0.1:8080")]
    api_listen: SocketAddr,
    /// Address of the embedded MQTT broker (loopback only).
    #[arg(long, env = "FLEET_MQTT_LISTEN", default_value = "127.0.0.1:1883")]
    mqtt_listen: SocketAddr,
    /// Broker URL written into enrollment bundles (default: the embedded broker), e.g.
    /// mqtts://mqtt.example.com:8883 for a Mosquitto set up with `broker-files`.
    #[arg(long, env = "FLEET_DEVICE_BROKER")]
    device_broker: Option<String>,
    /// Keep the revocation list current in this directory (the one given to `broker-files`);
    /// with --broker, the server's MQTT identity is read from here too.
    #[arg(long, env = "FLEET_BROKER_FILES")]
    broker_files: Option<PathBuf>,
    /// Use this external broker (mqtts://host:port, e.g. Mosquitto with
    /// packaging/mosquitto/) instead of the embedded one.
    #[arg(long, env = "FLEET_BROKER", requires = "broker_files")]
    broker: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(a)) => a,
        None => cli.serve,
        Some(Command::BrokerFiles { data, names, out }) => {
            return broker_files(&data, &names, &out)
        }
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
    let opts = ServeOptions {
        data_dir: args.data,
        api_listen: args.api_listen,
        mqtt_listen: args.mqtt_listen,
        device_broker: args.device_broker,
        broker_files: args.broker_files,
        external_broker: args.broker,
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

/// `fleet-server broker-files`: the TLS files for an external Mosquitto.
fn broker_files(data: &std::path::Path, names: &[String], out: &std::path::Path) -> ExitCode {
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        std::fs::create_dir_all(data)?;
        let keys = fleet_server::open_keys(data)?;
        // The registry's revocations; while the server runs it holds the store, and the list
        // it wrote at its start (and after every revocation) is current anyway.
        match fleet_server::store::SledStore::open(&data.join("store")) {
            Ok(store) => fleet_server::api::write_crl(&store, &keys.pki)?,
            Err(_) if keys.pki.crl_path().exists() => {}
            Err(e) => return Err(e.into()),
        }
        keys.pki.write_broker_files(out, names)?;
        let crl = std::fs::read(keys.pki.crl_path())?;
        fleet_server::pki::write_file(&out.join("crl.pem"), &crl, 0o644)?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            eprintln!(
                "wrote ca.pem, broker.pem, broker.key, crl.pem, server.pem, server.key to {}\n  use them with packaging/mosquitto/fleet.conf, and run the server with --broker-files {} so revocations reach the broker",
                out.display(),
                out.display()
            );
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
    let mut msg = format!("fleet-server: error: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!("\n  caused by: {s}"));
        source = s.source();
    }
    eprintln!("{msg}");
    ExitCode::FAILURE
}
