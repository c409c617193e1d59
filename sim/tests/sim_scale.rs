//! The fleet simulator at small scale: 200 real agents in this process take a staged rollout to
//! the end, and a release that fails on every device stops at its canary.

#![allow(clippy::unwrap_used)]

use clap::{Args, Command, FromArgMatches};
use fleet_sim::run::{run, RunArgs};

fn args(argv: &[&str]) -> RunArgs {
    let cmd = RunArgs::augment_args(Command::new("run"));
    let matches = cmd.try_get_matches_from(std::iter::once("run").chain(argv.iter().copied()));
    RunArgs::from_arg_matches(&matches.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_rollout_over_two_hundred_simulated_agents_completes() {
    let outcome = run(&args(&[
        "--devices",
        "200",
        "--groups",
        "3",
        "--hardware",
        "mixed",
        "--rollout",
        "--timeout-secs",
        "120",
    ]))
    .await
    .unwrap();
    assert_eq!(outcome.started, 200);
    let rollout = outcome.rollout.clone().unwrap();
    assert_eq!(rollout.state, "Completed", "{rollout:?}");
    assert_eq!(rollout.targeted, 200, "{rollout:?}");
    assert_eq!(rollout.on_release, 200, "every device runs the release: {rollout:?}");
    assert_eq!(rollout.failed, 0, "{rollout:?}");
    // What the simulator is for: agents stay cheap (measured about 200 KiB and no thread of
    // their own each; generous bounds, CI machines differ).
    assert!(outcome.per_device_kib() < 1024.0, "{} KiB per device", outcome.per_device_kib());
    assert!(outcome.threads.1 < outcome.threads.0 + 50, "threads {:?}", outcome.threads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_fails_everywhere_stops_at_the_canary() {
    let outcome =
        run(&args(&["--devices", "20", "--fail-rate", "1", "--rollout", "--timeout-secs", "120"]))
            .await
            .unwrap();
    let rollout = outcome.rollout.unwrap();
    assert_ne!(rollout.state, "Completed", "{rollout:?}");
    assert!(rollout.failed >= 1, "{rollout:?}");
    assert_eq!(rollout.on_release, 0, "no device keeps the failing release: {rollout:?}");
}

/// The production shape: the `fleet-server` binary as its own process, Mosquitto with the
/// shipped configuration between it and the agents, every agent on mutual TLS with the
/// certificate its enrollment issued. Each process is measured on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_rollout_runs_through_mosquitto_with_the_server_in_its_own_process() {
    let outcome = run(&args(&[
        "--devices",
        "60",
        "--topology",
        "mosquitto",
        "--groups",
        "2",
        "--target",
        "group=g1",
        "--rollout",
        "--idle-secs",
        "1",
        "--timeout-secs",
        "120",
    ]))
    .await
    .unwrap();
    assert_eq!(outcome.started, 60);
    let rollout = outcome.rollout.clone().unwrap();
    assert_eq!(rollout.state, "Completed", "{rollout:?}");
    // `--target group=g1`: only that group's 30 devices are taken to the release.
    assert_eq!(rollout.targeted, 30, "{rollout:?}");
    assert_eq!(rollout.on_release, 30, "{rollout:?}");
    let (server, broker) = (outcome.server.unwrap(), outcome.broker.unwrap());
    // Each process was found and measured: the server and Mosquitto hold the devices'
    // sessions, so both grew when the agents connected.
    assert!(server.rss_kib > 0 && broker.rss_kib > broker.rss_before_kib, "{outcome:?}");
    assert!(server.rss_peak_kib >= server.rss_kib / 2, "{outcome:?}");
    assert!(outcome.agents.rss_kib > outcome.agents.rss_before_kib, "{outcome:?}");
}
