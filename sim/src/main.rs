//! `fleet-sim`: a whole fleet in one process. A thin binary over the `fleet_sim` library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A whole Fleet in one process: fleet-server on embedded defaults and real agents on a
/// simulated container engine.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enrolls simulated devices, rolls a good release out in waves, then a bad one that the
    /// canary stops.
    ///
    /// Example: fleet-sim demo --devices 24 --keep
    Demo(fleet_sim::demo::DemoArgs),
    /// Runs N real agents in this process and measures them (memory, threads, descriptors per
    /// device), optionally through a staged rollout.
    ///
    /// Example: fleet-sim run --devices 10000 --rollout
    Run(fleet_sim::run::RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => fleet_sim::demo::main(args).await,
            Command::Run(args) => fleet_sim::run::main(args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
