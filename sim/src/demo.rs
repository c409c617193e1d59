//! `fleet-sim demo`: the story of a fleet update told to a human, on the product's own code.
//!
//! The server runs on embedded defaults in a temporary directory; a few dozen real agents on
//! the simulated container engine enroll through the API in three sites and connect over MQTT.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fleet_agent::runtime::sim::ImageBehavior;
use fleet_proto::ImageRef;
use fleet_server::devices::DeviceRecord;
use serde::Serialize;
use serde_json::json;

use crate::fleet::{Error, SimFleet};

/// `fleet-sim demo`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How many simulated devices (at least 4: two canaries in the lab, the rest in the field).
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u16).range(4..=1000))]
    pub devices: u16,
    /// Leave the server running at the end, with its URL and token, for `fleetctl`; Ctrl-C
    /// stops it and removes everything.
    #[arg(long)]
    pub keep: bool,
    /// Print a machine-readable summary on stdout instead of the story.
    #[arg(long)]
    pub json: bool,
}

/// How to run the demo.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many simulated devices.
    pub devices: usize,
    /// Bake time after each wave.
    pub bake: Duration,
    /// Draw progress bars on stderr (only on a terminal).
    pub progress: bool,
}

/// The three sites and their groups: (group, label value, share of the devices).
const SITES: [&str; 3] = ["lab", "depot", "field"];

fn device_id(i: usize) -> String {
    format!("robot-{i:03}")
}

/// The site of device `i` of `n`: two in the lab, the rest half depot, half field.
fn site(i: usize, n: usize) -> &'static str {
    if i < 2 {
        "lab"
    } else if i < 2 + (n - 2) / 2 {
        "depot"
    } else {
        "field"
    }
}

/// Every device record, by id.
pub async fn devices(fleet: &SimFleet) -> Result<BTreeMap<String, DeviceRecord>, Error> {
    let page = fleet.try_api("GET", "/api/v1/devices?limit=100000", None, 200).await?;
    let items: Vec<DeviceRecord> =
        serde_json::from_value(page["items"].clone()).map_err(|e| Error::Refused {
            call: "GET /api/v1/devices".into(),
            status: 200,
            body: format!("unexpected device list: {e}"),
        })?;
    Ok(items.into_iter().map(|d| (d.id.to_string(), d)).collect())
}

/// Polls `check` every 100 ms until it answers `Some`, or fails with `what` after `timeout`.
async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, Error>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {} s waiting for {what}", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the demo saw, as `--json` prints it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// Devices enrolled.
    pub devices: usize,
    /// Devices per group.
    pub groups: BTreeMap<String, usize>,
    /// Devices whose agent came online.
    pub online: usize,
    /// Where the outcome differs from what the demo expects; empty when it went as told.
    pub problems: Vec<String>,
}

/// Runs the story on a fresh fleet, telling each step through `say`; answers the outcome and
/// the fleet, still running (stop it with [`SimFleet::stop`]: that removes its directory).
pub async fn run(
    opts: &Options,
    mut say: impl FnMut(String),
) -> anyhow::Result<(Outcome, SimFleet)> {
    let mut fleet = SimFleet::try_start().await?;
    match story(&mut fleet, opts, &mut say).await {
        Ok(outcome) => Ok((outcome, fleet)),
        Err(e) => {
            fleet.stop().await;
            Err(e)
        }
    }
}

async fn story(
    fleet: &mut SimFleet,
    opts: &Options,
    say: &mut impl FnMut(String),
) -> anyhow::Result<Outcome> {
    let n = opts.devices;
    let started = Instant::now();
    let mut outcome = Outcome { devices: n, ..Outcome::default() };
    say(format!(
        "fleet-server started on embedded defaults: {} (data in {})",
        fleet.api,
        fleet.dir.path().display()
    ));
    for s in SITES {
        fleet
            .try_api(
                "POST",
                "/api/v1/groups",
                Some(json!({ "name": s, "selector": format!("site={s}") })),
                201,
            )
            .await?;
    }
    let images = [(image(1), ImageBehavior::Healthy), (image(2), ImageBehavior::CrashAtStart)];
    for i in 0..n {
        fleet.try_enroll(&device_id(i), &[("fleet", "demo"), ("site", site(i, n))]).await?;
    }
    for i in 0..n {
        fleet.try_start_agent(&device_id(i), &images)?;
    }
    let fleet_ref = &*fleet;
    let online = until("every agent to come online", Duration::from_secs(60), || async move {
        let all = devices(fleet_ref).await?;
        let online = all.values().filter(|d| d.online).count();
        Ok((online == n).then_some(online))
    })
    .await?;
    outcome.online = online;
    for s in SITES {
        outcome.groups.insert(s.to_owned(), (0..n).filter(|&i| site(i, n) == s).count());
    }
    let groups: Vec<String> = outcome.groups.iter().map(|(g, c)| format!("{g} {c}")).collect();
    say(format!(
        "{n} devices enrolled in {} groups ({}), every agent online over MQTT ({:.1} s)",
        outcome.groups.len(),
        groups.join(", "),
        started.elapsed().as_secs_f64()
    ));
    let _ = opts.progress;
    Ok(outcome)
}

/// The demo image `n`: a digest in the simulated engine (no registry involved).
fn image(n: u8) -> ImageRef {
    #[allow(clippy::unwrap_used)] // a constant, well-formed reference
    ImageRef::parse(&format!("127.0.0.1:5000/demo/app@sha256:{}", format!("{n:x}").repeat(64)))
        .unwrap()
}

/// `fleet-sim demo`.
pub async fn main(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let opts = Options {
        devices: usize::from(args.devices),
        bake: Duration::from_secs(1),
        progress: !args.json && std::io::stderr().is_terminal(),
    };
    let json = args.json;
    let (outcome, fleet) = run(&opts, |line| {
        if !json {
            println!("{line}");
        }
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    }
    if args.keep {
        eprintln!(
            "\nThe server keeps running; in another terminal:\n  \
             export FLEET_SERVER={} FLEET_TOKEN={}\n  \
             fleetctl device ls\n  fleetctl group ls\n\
             Ctrl-C stops it and removes {}.",
            fleet.api,
            fleet.token,
            fleet.dir.path().display()
        );
        tokio::signal::ctrl_c().await?;
    }
    fleet.stop().await;
    if outcome.problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &outcome.problems {
            eprintln!("unexpected: {p}");
        }
        Ok(ExitCode::from(3))
    }
}
