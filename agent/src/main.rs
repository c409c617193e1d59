//! `fleet-agent`: thin shell over the `fleet_agent` library.

use clap::Parser;

/// The Fleet device agent: keeps this device's containers equal to the release the fleet
/// server wants.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!(
        "{}: the daemon is not part of this build yet; see `fleet-agent --help`",
        fleet_agent::version_line()
    );
    std::process::exit(1);
}
