//! `fleet-sim demo`: the story of a fleet update told to a human, on the product's own code.
//!
//! The server runs on embedded defaults in a temporary directory; a few dozen real agents on
//! the simulated container engine enroll through the API in three sites and connect over MQTT.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use fleet_agent::runtime::sim::ImageBehavior;
use fleet_api::{Device, RolloutView, RunState, WavePhase};
use fleet_proto::report::UpdateResult;
use fleet_proto::ImageRef;
use fleet_proto::{ReleaseId, ReleaseSpec, ServiceName, ServiceSpec};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::json;

use crate::fleet::{Error, SimFleet};

/// `fleet-sim demo`'s flags.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Exit codes: 0 everything happened as told; 3 an outcome differed (each \
    difference is printed); 1 the demo could not run (the error says why).\n\n\
    Examples:\n  fleet-sim demo\n  fleet-sim demo --devices 100 --json\n  \
    fleet-sim demo --keep --docker")]
pub struct DemoArgs {
    /// How many simulated devices (at least 4), in three sites: two in the lab, the rest half
    /// at the depot, half in the field.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u16).range(4..=1000))]
    pub devices: u16,
    /// Leave the server running at the end, with its URL and token, for `fleetctl`; Ctrl-C
    /// stops it and removes everything.
    #[arg(long)]
    pub keep: bool,
    /// Print a machine-readable summary on stdout instead of the story.
    #[arg(long)]
    pub json: bool,
    /// Also run one real agent (device docker-01) on the local Docker engine (DOCKER_HOST, else
    /// /var/run/docker.sock), so `docker ps` shows its containers; the releases then use the
    /// test images of the registry at 127.0.0.1:5000 (tests/env/up starts it).
    #[arg(long)]
    pub docker: bool,
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
    /// The Docker engine of one more, real agent, if any.
    pub docker: Option<String>,
}

/// The three sites; each is a group (`site=NAME`).
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
pub async fn devices(fleet: &SimFleet) -> Result<BTreeMap<String, Device>, Error> {
    let page = fleet.try_api("GET", "/api/v1/devices?limit=100000", None, 200).await?;
    let items: Vec<Device> =
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
    /// The good release's rollout.
    pub good: Option<RolloutOutcome>,
    /// The bad release's rollout.
    pub bad: Option<RolloutOutcome>,
    /// At the end: devices per release in force (`none`: no release).
    pub releases: BTreeMap<String, usize>,
    /// Devices that were sent the bad release and rolled back by themselves, with the agent's
    /// reason.
    pub rolled_back: BTreeMap<String, String>,
    /// Devices that were never sent the bad release (their desired and accepted generations
    /// did not change).
    pub never_saw_bad: usize,
    /// Where the outcome differs from what the demo expects; empty when it went as told.
    pub problems: Vec<String>,
}

/// One rollout as the demo saw it end.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutOutcome {
    /// Its id (`fleetctl rollout status ID`).
    pub id: u64,
    /// The release.
    pub release: String,
    /// Its end state: `completed`, `paused`, ...
    pub state: String,
    /// Why it paused or rolled back, if it did.
    pub reason: Option<String>,
    /// Devices per wave.
    pub waves: Vec<usize>,
    /// Healthy devices per wave at the end.
    pub healthy: Vec<usize>,
    /// Failed devices.
    pub failed: usize,
    /// Seconds from creation to its end.
    pub seconds: f64,
}

/// The good and the bad release.
pub const GOOD: &str = "robot-stack@v1";
/// The bad release: its image exits right after it starts.
pub const BAD: &str = "robot-stack@v2";

fn release_spec(version: &str, image: ImageRef) -> anyhow::Result<ReleaseSpec> {
    Ok(ReleaseSpec {
        id: ReleaseId::new(format!("robot-stack@{version}"))?,
        app: "robot-stack".into(),
        version: version.into(),
        services: vec![ServiceSpec {
            health_deadline: Duration::from_secs(10),
            ..ServiceSpec::new(ServiceName::new("web")?, image)
        }],
    })
}

/// The device whose agent runs on the local Docker engine (`--docker`).
pub const DOCKER_DEVICE: &str = "docker-01";

/// `--docker`: the releases come from Compose files naming the test images of the local
/// registry (tests/env/up); the simulated engines learn the digests the server resolved.
async fn docker_releases(fleet: &SimFleet) -> anyhow::Result<()> {
    for (version, image, behavior) in
        [("v1", "web", ImageBehavior::Healthy), ("v2", "crash", ImageBehavior::CrashAtStart)]
    {
        let compose = format!(
            "x-fleet:\n  health_deadline: 20s\nservices:\n  web:\n    image: 127.0.0.1:5000/fleet-test/{image}:1\n"
        );
        let created = fleet
            .try_api(
                "POST",
                "/api/v1/releases",
                Some(json!({ "app": "robot-stack", "version": version, "compose": compose })),
                201,
            )
            .await
            .with_context(|| format!("creating robot-stack@{version} from 127.0.0.1:5000/fleet-test/{image}:1 (tests/env/up starts that registry with the test images)"))?;
        let record: fleet_api::Release =
            serde_json::from_value(created).context("the server's answer is not a release")?;
        let resolved = record
            .spec
            .services
            .first()
            .map(|s| s.image.clone())
            .context("the release has no service")?;
        for agent in fleet.agents.values() {
            agent.runtime.publish_image(&resolved, behavior, 1 << 20);
        }
    }
    Ok(())
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
    // Every device, the Docker one included.
    let n = opts.devices + usize::from(opts.docker.is_some());
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
    let sims = opts.devices;
    for i in 0..sims {
        fleet.try_enroll(&device_id(i), &[("fleet", "demo"), ("site", site(i, sims))]).await?;
    }
    for i in 0..sims {
        // With Docker the images are the registry's, published once their digests are known.
        fleet.try_start_agent(&device_id(i), if opts.docker.is_some() { &[] } else { &images })?;
    }
    if let Some(endpoint) = &opts.docker {
        fleet.try_enroll(DOCKER_DEVICE, &[("fleet", "demo"), ("site", "lab")]).await?;
        fleet.try_start_docker_agent(DOCKER_DEVICE, endpoint).await?;
    }
    let fleet_ref = &*fleet;
    let online = until("every agent to come online", Duration::from_secs(60), || async move {
        let all = devices(fleet_ref).await?;
        let online = all.values().filter(|d| d.online).count();
        Ok((online == n).then_some(online))
    })
    .await?;
    outcome.online = online;
    for d in devices(fleet).await?.values() {
        if let Some(s) = d.labels.get("site") {
            *outcome.groups.entry(s.clone()).or_default() += 1;
        }
    }
    let groups: Vec<String> = outcome.groups.iter().map(|(g, c)| format!("{g} {c}")).collect();
    say(format!(
        "{n} devices enrolled in {} groups ({}), every agent online over MQTT ({:.1} s)",
        outcome.groups.len(),
        groups.join(", "),
        started.elapsed().as_secs_f64()
    ));

    // Two releases: the same service, a healthy image and one that exits as it starts.
    if opts.docker.is_some() {
        docker_releases(fleet).await?;
        say(format!(
            "releases {GOOD} (fleet-test/web:1) and {BAD} (fleet-test/crash:1) created from Compose files; the server resolved the tags in 127.0.0.1:5000, signed them; {DOCKER_DEVICE} pulls and runs them on this machine's Docker (`docker ps --filter label=io.fleet.device={DOCKER_DEVICE}`)"
        ));
    } else {
        for (version, img) in [("v1", image(1)), ("v2", image(2))] {
            let spec = release_spec(version, img)?;
            fleet
                .try_api(
                    "POST",
                    "/api/v1/releases",
                    Some(json!({ "app": "robot-stack", "version": version, "spec": spec })),
                    201,
                )
                .await?;
        }
        say(format!("releases {GOOD} and {BAD} created and signed by the server"));
    }

    // 1. The good release, in three waves.
    let good = rollout(fleet, opts, GOOD, "Completed").await?;
    let all = devices(fleet).await?;
    let on_good = all.values().filter(|d| d.release.as_deref() == Some(GOOD)).count();
    say(format!(
        "{GOOD} on {on_good}/{n} devices in {} waves of {} devices ({:.1} s): each wave stayed healthy for {} s before the next began",
        good.waves.len(),
        good.waves.iter().map(usize::to_string).collect::<Vec<_>>().join(", "),
        good.seconds,
        opts.bake.as_secs()
    ));
    if good.state != "completed" {
        outcome.problems.push(format!("the {GOOD} rollout ended {}", good.state));
    }
    if on_good != n {
        outcome.problems.push(format!("{GOOD} runs on {on_good} of {n} devices"));
    }
    outcome.good = Some(good);

    // 2. The bad release: same waves; the first failure pauses it (threshold 0).
    let before: BTreeMap<String, (u64, u64)> = all
        .iter()
        .map(|(id, d)| (id.clone(), (d.desired_generation, d.accepted_generation)))
        .collect();
    let bad = rollout(fleet, opts, BAD, "Paused").await?;
    let canaries = bad.waves.first().copied().unwrap_or(0);
    if bad.state != "paused" {
        // Nothing to wait for: the story did not happen; say how it ended instead.
        outcome.problems.push(format!(
            "the {BAD} rollout ended {}, not paused on its canaries{}",
            bad.state,
            bad.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
        ));
        outcome.bad = Some(bad);
        return Ok(outcome);
    }
    // The canaries' agents roll back by themselves when the new container fails its health
    // gate; the rollout pauses on their reports. Wait until every canary runs the good release.
    let fleet_ref = &*fleet;
    let before_ref = &before;
    let sent =
        until("the canaries to report their rollback", Duration::from_secs(60), || async move {
            let all = devices(fleet_ref).await?;
            let sent: Vec<Device> = all
                .into_values()
                .filter(|d| {
                    before_ref.get(d.id.as_str()).map(|b| b.0) != Some(d.desired_generation)
                })
                .collect();
            let settled = sent.len() >= canaries
                && sent
                    .iter()
                    .all(|d| d.release.as_deref() == Some(GOOD) && rolled_back_reason(d).is_some());
            Ok(settled.then_some(sent))
        })
        .await?;
    for d in &sent {
        let reason = rolled_back_reason(d).unwrap_or_default();
        outcome.rolled_back.insert(d.id.to_string(), reason);
    }
    let all = devices(fleet).await?;
    outcome.never_saw_bad = all
        .iter()
        .filter(|(id, d)| {
            before.get(id.as_str()) == Some(&(d.desired_generation, d.accepted_generation))
        })
        .count();
    let site_of = |d: &Device| d.labels.get("site").cloned().unwrap_or_default();
    let mut reasons: Vec<&String> = outcome.rolled_back.values().collect();
    reasons.dedup();
    let failures = if reasons.len() == 1 {
        let where_: Vec<String> =
            sent.iter().map(|d| format!("{} in the {}", d.id, site_of(d))).collect();
        format!("({}): {}", where_.join(", "), reasons[0])
    } else {
        let each: Vec<String> = sent
            .iter()
            .map(|d| {
                let reason = outcome.rolled_back.get(d.id.as_str()).cloned().unwrap_or_default();
                format!("{} in the {}: {reason}", d.id, site_of(d))
            })
            .collect();
        format!("— {}", each.join("; "))
    };
    say(format!(
        "{BAD} failed on {} canary device{} {failures}",
        sent.len(),
        if sent.len() == 1 { "" } else { "s" },
    ));
    // The engine pauses at the first failure past the threshold, and a paused rollout gives no
    // more verdicts: a canary that fails after that is not counted, but its agent rolls back
    // all the same.
    say(format!(
        "rollout {} paused by itself ({}); the canaries' agents rolled back to {GOOD} on their own; {} devices never saw {BAD}",
        bad.id,
        bad.reason.as_deref().unwrap_or("no reason given"),
        outcome.never_saw_bad
    ));
    if sent.len() != canaries || bad.failed == 0 {
        outcome.problems.push(format!(
            "{} devices were sent {BAD} and the rollout counted {} failed; the canary wave has {canaries}",
            sent.len(),
            bad.failed
        ));
    }
    if outcome.never_saw_bad != n - canaries {
        outcome.problems.push(format!(
            "{} devices outside the canary wave were never sent {BAD}; expected {}",
            outcome.never_saw_bad,
            n - canaries
        ));
    }
    for d in all.values() {
        let release = d.release.clone().unwrap_or_else(|| "none".into());
        *outcome.releases.entry(release).or_default() += 1;
    }
    if outcome.releases.get(GOOD) != Some(&n) {
        outcome.problems.push(format!("at the end, releases in force: {:?}", outcome.releases));
    }
    outcome.bad = Some(bad);
    Ok(outcome)
}

/// The agent's reason when its last update rolled back.
fn rolled_back_reason(d: &Device) -> Option<String> {
    let last = d.last_report.as_ref()?.update.last_outcome.as_ref()?;
    match &last.result {
        UpdateResult::RolledBack { reason, service, .. } => Some(match service {
            Some(s) if !reason.contains(s.as_str()) => format!("service {s}: {reason}"),
            _ => reason.clone(),
        }),
        _ => None,
    }
}

/// Creates a rollout of `release` over the whole fleet (canary wave of 2, then 50 %, then
/// 100 %) and follows it until its state is `end` (or any other end state), drawing a bar per
/// wave on a terminal.
async fn rollout(
    fleet: &SimFleet,
    opts: &Options,
    release: &str,
    end: &str,
) -> anyhow::Result<RolloutOutcome> {
    let started = Instant::now();
    let created = fleet
        .try_api(
            "POST",
            "/api/v1/rollouts",
            Some(json!({
                "release": release,
                "target": "fleet=demo",
                "waves": "2,50%,100%",
                "bake": format!("{}s", opts.bake.as_secs()),
                "update_deadline": "60s",
            })),
            201,
        )
        .await?;
    let id = created["id"].as_u64().context("the rollout answer has no id")?;
    let progress = Progress::new(opts.progress);
    let fleet_ref = fleet;
    let progress_ref = &progress;
    let view = until(
        &format!("rollout {id} of {release} to end ({end} expected)"),
        Duration::from_secs(120),
        || async move {
            let body =
                fleet_ref.try_api("GET", &format!("/api/v1/rollouts/{id}"), None, 200).await?;
            let view: RolloutView = serde_json::from_value(body).map_err(|e| Error::Refused {
                call: format!("GET /api/v1/rollouts/{id}"),
                status: 200,
                body: format!("unexpected rollout: {e}"),
            })?;
            progress_ref.show(&view);
            Ok((!matches!(view.status.state, RunState::Running)).then_some(view))
        },
    )
    .await?;
    progress.finish();
    let s = &view.status;
    let reason = match &s.state {
        RunState::Paused { reason, .. } => Some(reason.to_string()),
        RunState::RolledBack { reason, .. } => Some(reason.to_string()),
        _ => None,
    };
    Ok(RolloutOutcome {
        id,
        release: release.to_owned(),
        state: s.state.name().to_owned(),
        reason,
        waves: s.waves.iter().map(|w| w.devices).collect(),
        healthy: s.waves.iter().map(|w| w.counts.healthy).collect(),
        failed: s.failed,
        seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    })
}

/// A bar per wave on stderr, only on a terminal.
struct Progress {
    multi: Option<MultiProgress>,
    bars: std::sync::Mutex<Vec<ProgressBar>>,
}

impl Progress {
    fn new(on: bool) -> Progress {
        Progress {
            multi: on.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            bars: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn show(&self, view: &RolloutView) {
        let Some(multi) = &self.multi else { return };
        let style = ProgressStyle::with_template(
            "  {prefix:>7} [{bar:20.green/red}] {pos:>3}/{len:<3} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let Ok(mut bars) = self.bars.lock() else { return };
        while bars.len() < view.status.waves.len() {
            let w = &view.status.waves[bars.len()];
            let bar = multi.add(ProgressBar::new(w.devices as u64));
            bar.set_style(style.clone());
            bar.set_prefix(format!("wave {}", w.wave));
            bars.push(bar);
        }
        for (bar, w) in bars.iter().zip(&view.status.waves) {
            let c = &w.counts;
            bar.set_position((c.healthy + c.failed + c.skipped + c.rolled_back) as u64);
            let phase = match w.phase {
                WavePhase::Waiting => "waiting",
                WavePhase::Active { .. } => "active",
                WavePhase::Baking { .. } => "baking",
                WavePhase::Done => "done",
            };
            let mut msg = format!("{phase}: {} healthy", c.healthy);
            if c.updating > 0 {
                msg.push_str(&format!(", {} updating", c.updating));
            }
            if c.failed > 0 {
                msg.push_str(&format!(", {} failed", c.failed));
            }
            bar.set_message(msg);
        }
    }

    /// Takes the bars away: the story's next line says how the rollout ended.
    fn finish(&self) {
        if let Some(multi) = &self.multi {
            let _ = multi.clear();
        }
    }
}

/// The demo image `n`: a digest in the simulated engine (no registry involved).
fn image(n: u8) -> ImageRef {
    #[allow(clippy::unwrap_used)] // a constant, well-formed reference
    ImageRef::parse(&format!("127.0.0.1:5000/demo/app@sha256:{}", format!("{n:x}").repeat(64)))
        .unwrap()
}

/// Stops the fleet, removes its directory and what its Docker agent ran; answers what is
/// still there (empty: everything is gone).
pub async fn clean_up(fleet: SimFleet) -> Vec<String> {
    let dir = fleet.dir.path().to_owned();
    let mut left = fleet.stop().await;
    if dir.exists() {
        left.push(dir.display().to_string());
    }
    left
}

/// `fleet-sim demo`: exit 0 when everything happened as told, 3 when an outcome differed (each
/// difference is printed), 1 when the demo could not run.
pub async fn main(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let opts = Options {
        devices: usize::from(args.devices),
        bake: Duration::from_secs(1),
        progress: !args.json && std::io::stderr().is_terminal(),
        docker: args.docker.then(|| {
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "/var/run/docker.sock".to_owned())
        }),
    };
    let json = args.json;
    let (mut outcome, fleet) = run(&opts, |line| {
        if !json {
            println!("{line}");
        }
    })
    .await?;
    let bad = outcome.bad.as_ref().map_or(0, |r| r.id);
    let canary = outcome.rolled_back.keys().next().cloned().unwrap_or_default();
    if args.keep {
        if json {
            println!("{}", serde_json::to_string_pretty(&outcome)?);
        }
        eprintln!(
            "\nThe server keeps running. In another terminal (fleetctl: cargo build --release --bins):\n  \
             export FLEET_SERVER={} FLEET_TOKEN={}\n  \
             target/release/fleetctl device ls\n  \
             target/release/fleetctl rollout status {bad}\n  \
             target/release/fleetctl device show {canary}\n  \
             target/release/fleetctl rollout rollback {bad}     # the server sends the canaries {GOOD} again\n{}\
             Ctrl-C stops it and removes {}.",
            fleet.api,
            fleet.token,
            if fleet.docker_agents.is_empty() {
                String::new()
            } else {
                format!("  docker ps --filter label=io.fleet.device={DOCKER_DEVICE}\n")
            },
            fleet.dir.path().display()
        );
        tokio::signal::ctrl_c().await?;
    }
    let agents = fleet.agents.len() + fleet.docker_agents.len();
    let docker = if fleet.docker_agents.is_empty() { "" } else { " and its Docker containers" };
    let left = clean_up(fleet).await;
    match &left[..] {
        [] if !json => println!(
            "stopped the server and its {agents} agents; removed their temporary directory{docker}{}",
            if args.keep {
                ""
            } else {
                " (--keep leaves them running, to look around with fleetctl)"
            }
        ),
        [] => {}
        left => outcome.problems.push(format!("still there after clean-up: {}", left.join(", "))),
    }
    if json && !args.keep {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    }
    if outcome.problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &outcome.problems {
            eprintln!("unexpected: {p}");
        }
        Ok(ExitCode::from(3))
    }
}
