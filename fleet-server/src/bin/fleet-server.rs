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
/// Example:
///   fleet-server --data /var/lib/fleet --api-listen 127.0.0.1:9090
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(a)) => a,
        None => cli.serve,
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
