//! `fleet-agent`: thin shell over the `fleet_agent` library (see `cli.rs`).

fn main() -> std::process::ExitCode {
    fleet_agent::cli::main()
}
