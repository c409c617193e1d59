//! `fleet-sim run`: N real agents in one process, measured.
//!
//! Each simulated device is the product's agent (`fleet_agent::daemon::run_with_options`) on
//! the simulated container engine, with its own identity (enrolled through the API) and its own
//! MQTT session to the server's embedded broker. What makes ten thousand of them fit is what a
//! simulated agent leaves out (see [`fleet_agent::daemon::RunOptions`]): its state and
//! telemetry buffer live in memory instead of a sled database and a redb file each, it has no
//! hot-plug watch thread and no admin or lock socket. `--device-storage` puts all of that back,
//! to measure what it costs.
//!
//! Scenario knobs, each as far as the simulated engine and the agent support it honestly:
//! * `--fail-rate P`: that fraction of devices (chosen by a seeded draw) has an engine on which
//!   the rolled-out release's image never passes its health check;
//! * `--offline F`: that fraction is enrolled but never started;
//! * `--churn PER_MIN`: that many agent restarts a minute across the fleet (stop, then start
//!   again with the same state, like a device reboot);
//! * `--telemetry-secs S`: host metrics every S seconds per device (0: telemetry off);
//! * `--hardware PROFILE`: the hardware inventory read from one of the scanner's fixture trees
//!   (`agent/tests/fixtures/hardware`), or `mixed` for all four in turn, or `host`.
//!
//! Memory is the process's (server, broker and agents together): `per device` is
//! (RSS with the agents up - RSS with the server up and every device enrolled) / agents started.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fleet_agent::config::Config;
use fleet_agent::runtime::sim::{ImageBehavior, SimRuntime};
use fleet_agent::state::AgentState;
use fleet_api::agent_config::{AgentHardware, AgentTelemetry};
use fleet_proto::{ImageRef, ReleaseId, ReleaseSpec, ServiceName, ServiceSpec};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::fleet::{SimFleet, Topology};

/// Hardware the simulated devices report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Hardware {
    /// A bare VM: no serial, GPIO, camera or GPU (the scanner's `bare-vm` fixture).
    BareVm,
    /// Raspberry Pi 5 with two USB serial adapters, GPIO, I2C and SPI (`rpi5`).
    Rpi5,
    /// Jetson AGX Orin with a CSI camera and CAN (`jetson-orin`).
    JetsonOrin,
    /// x86 with an NVIDIA card, a webcam, an Intel render node and a Hailo (`x86-nvidia`).
    X86Nvidia,
    /// The four profiles above, device by device in turn.
    Mixed,
    /// This machine's own hardware (every agent reads /dev, /sys and /proc at start).
    Host,
}

const PROFILES: [&str; 4] = ["bare-vm", "rpi5", "jetson-orin", "x86-nvidia"];

impl Hardware {
    /// The root the agent of device number `i` reads its hardware under.
    fn root(self, i: usize) -> PathBuf {
        let fixtures =
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../agent/tests/fixtures/hardware"));
        match self {
            Hardware::BareVm => fixtures.join(PROFILES[0]),
            Hardware::Rpi5 => fixtures.join(PROFILES[1]),
            Hardware::JetsonOrin => fixtures.join(PROFILES[2]),
            Hardware::X86Nvidia => fixtures.join(PROFILES[3]),
            Hardware::Mixed => fixtures.join(PROFILES[i % PROFILES.len()]),
            Hardware::Host => PathBuf::from("/"),
        }
    }
}

/// `fleet-sim run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// How many simulated devices.
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Where the server and its broker run: `process` and `mosquitto` give the server (and
    /// Mosquitto) their own processes, measured apart from the agents.
    #[arg(long, value_enum, default_value = "in-process")]
    pub topology: Topology,
    /// Devices are labelled `group=g0..g{K-1}` in turn (`--target group=g1` rolls out to one).
    #[arg(long, default_value_t = 1)]
    pub groups: usize,
    /// Fraction of devices on which the rolled-out release never becomes healthy.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Fraction of devices enrolled but never started.
    #[arg(long, default_value_t = 0.0)]
    pub offline: f64,
    /// Agent restarts per minute across the fleet.
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// Host metrics period per device in seconds; 0: telemetry off.
    #[arg(long, default_value_t = 0)]
    pub telemetry_secs: u64,
    /// Hardware the devices report.
    #[arg(long, value_enum, default_value = "bare-vm")]
    pub hardware: Hardware,
    /// Run a staged rollout of a release and time it.
    #[arg(long)]
    pub rollout: bool,
    /// The rollout's target: a label selector (every simulated device has `fleet=sim` and
    /// `group=gN`).
    #[arg(long, default_value = "fleet=sim")]
    pub target: String,
    /// How long a targeted device has to report the release healthy before it counts as
    /// failed (the rollout's `device_timeout` and `update_deadline`).
    #[arg(long, default_value = "60s")]
    pub device_timeout: String,
    /// Seconds to measure idle CPU over once every agent is up.
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
    /// The rollout's cumulative waves.
    #[arg(long, default_value = "1,10%,100%")]
    pub waves: String,
    /// The rollout's failure threshold (`3` or `5%`).
    #[arg(long, default_value = "0")]
    pub failure_threshold: String,
    /// Each agent keeps sled state, a redb telemetry buffer, a hot-plug watch and its admin and
    /// lock sockets, as on a device (to measure what the simulator leaves out).
    #[arg(long)]
    pub device_storage: bool,
    /// Seed of the draws (which devices fail, are offline, restart).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Give up waiting for agents or the rollout after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

/// One process's memory and CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// RSS (KiB) before the agents start (server up, every device enrolled).
    pub rss_before_kib: u64,
    /// RSS with every agent up and idle.
    pub rss_kib: u64,
    /// The largest RSS sampled during the rollout (every 100 ms).
    pub rss_peak_kib: u64,
    /// CPU while idle, percent of one core.
    pub idle_cpu_pct: f64,
    /// CPU seconds the rollout cost it.
    pub rollout_cpu_secs: f64,
}

impl Usage {
    /// (RSS after - RSS before) per device, KiB.
    pub fn per_device_kib(&self, devices: usize) -> f64 {
        self.rss_kib.saturating_sub(self.rss_before_kib) as f64 / devices.max(1) as f64
    }
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Agents started (devices minus offline ones).
    pub started: usize,
    /// Seconds from the first agent start to every started device online and reported.
    pub up_secs: f64,
    /// This process: the agents, and with `--topology in-process` the server and broker too.
    pub agents: Usage,
    /// The server's process (`--topology process|mosquitto`).
    pub server: Option<Usage>,
    /// Mosquitto's process (`--topology mosquitto`).
    pub broker: Option<Usage>,
    /// This process's threads before and after.
    pub threads: (u64, u64),
    /// This process's open descriptors before and after.
    pub fds: (usize, usize),
    /// The rollout, if one ran.
    pub rollout: Option<RolloutOutcome>,
}

/// How a rollout ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutOutcome {
    /// Its final state (`Completed`, `Paused`, ...).
    pub state: String,
    /// Seconds from creating it to its final state.
    pub secs: f64,
    /// Devices whose record shows the release in force.
    pub on_release: usize,
    /// Devices targeted.
    pub targeted: usize,
    /// Failed devices the server counted.
    pub failed: u64,
    /// Per wave: devices and seconds from its start to all of them healthy.
    pub waves: Vec<(u64, f64)>,
}

impl Outcome {
    /// Each process measured, by name: the agents' (this one), the server's, Mosquitto's.
    pub fn measured(&self) -> impl Iterator<Item = (&'static str, Usage)> {
        [("agents", Some(self.agents)), ("server", self.server), ("mosquitto", self.broker)]
            .into_iter()
            .filter_map(|(name, u)| Some((name, u?)))
    }

    /// (RSS after - RSS before) of this process per started agent, KiB.
    pub fn per_device_kib(&self) -> f64 {
        self.agents.per_device_kib(self.started)
    }
}

/// The processes measured: this one (`None`), the server's, Mosquitto's.
#[derive(Debug, Clone, Copy)]
struct Pids {
    server: Option<u32>,
    broker: Option<u32>,
}

impl Pids {
    fn each(self) -> [Option<Option<u32>>; 3] {
        [Some(None), self.server.map(Some), self.broker.map(Some)]
    }
}

/// (RSS KiB, CPU ticks) of `pid` (`None`: this process).
fn sample(pid: Option<u32>) -> (u64, u64) {
    let dir = pid.map_or_else(|| "/proc/self".to_owned(), |p| format!("/proc/{p}"));
    let rss = status_field(&dir, "VmRSS:");
    // utime + stime: fields 14 and 15, counted after the parenthesised command name.
    let ticks = std::fs::read_to_string(format!("{dir}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    (rss, ticks)
}

/// Clock ticks per second of /proc's CPU figures.
const TICKS: f64 = 100.0;

struct Slot {
    id: String,
    runtime: Arc<SimRuntime>,
    state: AgentState,
    config: PathBuf,
    running: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

/// A number from `/proc/<dir>/status` (`Threads:`, `VmRSS:` in KiB); 0 if unreadable.
fn status_field(dir: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("{dir}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn proc_status(key: &str) -> u64 {
    status_field("/proc/self", key)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Descriptors per agent: its MQTT connection (and in process, the server's end too), plus, with
/// device storage, its databases, sockets and inotify.
fn raise_fd_limit(devices: usize, device_storage: bool, topology: Topology) -> anyhow::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // Measured: 6 with device storage, 2 in process (both ends of its connection), 1 with the
    // server in its own process.
    let per = match (device_storage, topology) {
        (true, _) => 8,
        (false, Topology::InProcess) => 2,
        (false, _) => 1,
    };
    let want = (devices * per + 1024) as u64;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= want {
        return Ok(());
    }
    // Raising the hard limit needs CAP_SYS_RESOURCE; without it, up to the hard limit.
    if setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard)).is_err() {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        if hard < want {
            eprintln!(
                "warning: {devices} agents need about {want} descriptors, the limit is {hard} (raise it with `ulimit -Hn {want}` as root)"
            );
        }
    }
    Ok(())
}

fn image(n: u8) -> anyhow::Result<ImageRef> {
    ImageRef::parse(&format!("registry.sim/app@sha256:{}", format!("{n:x}").repeat(64)))
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn start(slot: &mut Slot, args: &RunArgs) -> anyhow::Result<()> {
    let config =
        Config::load(&slot.config, true).map_err(|e| anyhow::anyhow!("agent {}: {e}", slot.id))?;
    let options = if args.device_storage {
        fleet_agent::daemon::RunOptions {
            host: Some(crate::fleet::simulated_host()),
            proxy_in_process: true,
            ..Default::default()
        }
    } else {
        fleet_agent::daemon::RunOptions {
            state: Some(slot.state.clone()),
            telemetry_store: Some(Box::new(fleet_agent::telemetry::store::MemStore::new(
                config.telemetry.budget_bytes,
            ))),
            fixed_hardware: true,
            no_local_sockets: true,
            host: Some(crate::fleet::simulated_host()),
            proxy_in_process: true,
        }
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let (runtime, device) = (slot.runtime.clone(), slot.id.clone());
    let task = tokio::spawn(async move {
        let ran = fleet_agent::daemon::run_with_options(config, runtime, options, async {
            let _ = stopped.await;
        })
        .await;
        if let Err(e) = ran {
            eprintln!("agent {device} stopped: {e}");
        }
    });
    slot.running = Some((stop, task));
    Ok(())
}

async fn stop(slot: &mut Slot) {
    if let Some((stop, mut task)) = slot.running.take() {
        let _ = stop.send(());
        if tokio::time::timeout(Duration::from_secs(10), &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Every device record (`expected` of them).
async fn devices(fleet: &SimFleet, expected: usize) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        // Everything is in: save the round trip for the empty page after it.
        if out.len() >= expected {
            return Ok(out);
        }
        let path = match &after {
            Some(a) => format!("/api/v1/devices?limit=1000&after={a}"),
            None => "/api/v1/devices?limit=1000".to_owned(),
        };
        let page = fleet.try_api("GET", &path, None, 200).await?;
        out.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return Ok(out),
        }
    }
}

fn rollout_state(view: &Value) -> Option<String> {
    let state = &view["status"]["state"];
    state
        .as_object()
        .and_then(|o| o.keys().next().cloned())
        .or_else(|| state.as_str().map(str::to_owned))
}

/// Runs the scenario and prints what it measured.
pub async fn run(args: &RunArgs) -> anyhow::Result<Outcome> {
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    for (name, v) in [("--fail-rate", args.fail_rate), ("--offline", args.offline)] {
        if !(0.0..=1.0).contains(&v) {
            bail!("{name} is a fraction between 0 and 1, not {v}");
        }
    }
    raise_fd_limit(args.devices, args.device_storage, args.topology)?;
    let fleet = SimFleet::try_start_as(args.topology).await?;
    let pids = Pids { server: fleet.server_pid(), broker: fleet.mosquitto_pid() };
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let good = image(1)?;
    let mut slots = Vec::with_capacity(args.devices);
    let t = Instant::now();
    for i in 0..args.devices {
        let id = format!("sim-{i:05}");
        let labels = [
            ("fleet".to_owned(), "sim".to_owned()),
            ("group".to_owned(), format!("g{}", i % args.groups.max(1))),
        ];
        let server_key = fleet.try_enroll_device(&id, &labels).await?;
        let runtime = Arc::new(SimRuntime::new());
        let fails = rng.f64() < args.fail_rate;
        let behavior = if fails { ImageBehavior::NeverHealthy } else { ImageBehavior::Healthy };
        runtime.publish_image(&good, behavior, 1 << 20);
        let data = fleet.agent_dir(&id);
        let mut config = crate::fleet::test_agent_config(&id, &fleet.broker, &server_key, &data);
        // The agent's own link timings, as on a device (see test_agent_config).
        if let Some(link) = &mut config.link {
            link.keep_alive_secs = None;
            link.backoff_initial_ms = None;
            link.backoff_max_secs = None;
        }
        config.telemetry = Some(AgentTelemetry {
            enabled: args.telemetry_secs > 0,
            host_interval_secs: args.telemetry_secs,
            container_interval_secs: 0,
            budget_mb: 1,
            socket_dir: PathBuf::new(),
        });
        config.hardware = Some(AgentHardware { root: args.hardware.root(i) });
        let config = crate::fleet::write_config_file(&data, &config)?;
        slots.push(Slot { id, runtime, state: AgentState::in_memory(), config, running: None });
    }
    let offline: Vec<bool> = (0..args.devices).map(|_| rng.f64() < args.offline).collect();
    let started = offline.iter().filter(|o| !**o).count();
    println!(
        "enrolled {} devices in {:.1} s; starting {started} agents ({} offline)",
        args.devices,
        t.elapsed().as_secs_f64(),
        args.devices - started
    );
    // The server's own growth settles before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = pids.each().map(|p| p.map(|pid| sample(pid).0));
    let (threads0, fds0) = (proc_status("Threads:"), open_fds());

    let t = Instant::now();
    for (slot, off) in slots.iter_mut().zip(&offline) {
        if !off {
            start(slot, args)?;
            // Lets the runtime connect agents as they come instead of 10k at once.
            tokio::task::yield_now().await;
        }
    }
    let deadline = Duration::from_secs(args.timeout_secs);
    loop {
        let all = devices(&fleet, args.devices).await?;
        let up = all.iter().filter(|d| d["online"] == true && !d["last_report"].is_null()).count();
        if up >= started {
            break;
        }
        if t.elapsed() > deadline {
            bail!(
                "only {up} of {started} agents online and reported after {} s",
                deadline.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let up_secs = t.elapsed().as_secs_f64();
    // Let the first reports and subscriptions drain before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle0 = pids.each().map(|p| p.map(|pid| sample(pid).1));
    let window = Duration::from_secs(args.idle_secs.max(1));
    tokio::time::sleep(window).await;
    let usage: Vec<Option<Usage>> = pids
        .each()
        .iter()
        .zip(before.iter().zip(&idle0))
        .map(|(pid, (rss0, ticks0))| {
            let pid = (*pid)?;
            let (rss, ticks) = sample(pid);
            Some(Usage {
                rss_before_kib: rss0.unwrap_or(0),
                rss_kib: rss,
                idle_cpu_pct: ticks.saturating_sub(ticks0.unwrap_or(0)) as f64 / TICKS * 100.0
                    / window.as_secs_f64(),
                ..Usage::default()
            })
        })
        .collect();
    let mut outcome = Outcome {
        started,
        up_secs,
        agents: usage[0].unwrap_or_default(),
        server: usage[1],
        broker: usage[2],
        threads: (threads0, proc_status("Threads:")),
        fds: (fds0, open_fds()),
        rollout: None,
    };
    let whole =
        if args.topology == Topology::InProcess { " (server and broker in it)" } else { "" };
    println!(
        "{started} agents up in {up_secs:.1} s; threads {} -> {}, fds {} -> {}",
        outcome.threads.0, outcome.threads.1, outcome.fds.0, outcome.fds.1
    );
    for (name, u) in outcome.measured() {
        println!(
            "  {name}{}: RSS {:.1} MiB (before the agents {:.1} MiB), {:.1} KiB per device; idle CPU {:.2} % of a core",
            if name == "agents" { whole } else { "" },
            u.rss_kib as f64 / 1024.0,
            u.rss_before_kib as f64 / 1024.0,
            u.per_device_kib(started),
            u.idle_cpu_pct,
        );
    }

    let slots = Arc::new(tokio::sync::Mutex::new(slots));
    let churn = (args.churn > 0.0).then(|| {
        let (slots, args, offline) = (slots.clone(), args.clone(), offline.clone());
        let every = Duration::from_secs_f64(60.0 / args.churn);
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(args.seed ^ 0x5eed);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let i = rng.usize(..offline.len());
                if offline[i] {
                    continue;
                }
                let mut slots = slots.lock().await;
                stop(&mut slots[i]).await;
                if let Err(e) = start(&mut slots[i], &args) {
                    eprintln!("churn: {e:#}");
                }
            }
        })
    });

    if args.rollout {
        let ticks0 = pids.each().map(|p| p.map(|pid| sample(pid).1));
        let mut peaks = [0u64; 3];
        let done = rollout(&fleet, args, &good, || {
            for (peak, pid) in peaks.iter_mut().zip(pids.each()) {
                if let Some(pid) = pid {
                    *peak = (*peak).max(sample(pid).0);
                }
            }
        })
        .await?;
        let each = pids.each();
        for (i, usage) in
            [Some(&mut outcome.agents), outcome.server.as_mut(), outcome.broker.as_mut()]
                .into_iter()
                .enumerate()
        {
            let (Some(usage), Some(pid)) = (usage, each[i]) else { continue };
            usage.rss_peak_kib = peaks[i];
            usage.rollout_cpu_secs =
                sample(pid).1.saturating_sub(ticks0[i].unwrap_or(0)) as f64 / TICKS;
        }
        for (name, u) in outcome.measured() {
            println!(
                "  {name}: {:.1} CPU seconds, RSS peak {:.1} MiB during the rollout",
                u.rollout_cpu_secs,
                u.rss_peak_kib as f64 / 1024.0
            );
        }
        outcome.rollout = Some(done);
    }
    if let Some(churn) = churn {
        churn.abort();
    }
    let mut slots = slots.lock().await;
    for slot in slots.iter_mut() {
        stop(slot).await;
    }
    fleet.stop().await;
    Ok(outcome)
}

/// Rolls `sim@1` out to `--target` and follows it to its end; `tick` runs at every poll (the
/// caller samples memory there).
async fn rollout(
    fleet: &SimFleet,
    args: &RunArgs,
    image: &ImageRef,
    mut tick: impl FnMut(),
) -> anyhow::Result<RolloutOutcome> {
    let spec = ReleaseSpec {
        id: ReleaseId::new("sim@1")?,
        app: "sim".into(),
        version: "1".into(),
        services: vec![ServiceSpec {
            health_deadline: Duration::from_secs(10),
            ..ServiceSpec::new(ServiceName::new("web")?, image.clone())
        }],
    };
    fleet
        .try_api(
            "POST",
            "/api/v1/releases",
            Some(json!({ "app": "sim", "version": "1", "spec": spec })),
            201,
        )
        .await?;
    let t = Instant::now();
    let created = fleet
        .try_api(
            "POST",
            "/api/v1/rollouts",
            Some(json!({
                "release": "sim@1", "target": args.target, "waves": args.waves, "bake": "1s",
                "failure_threshold": args.failure_threshold,
                "device_timeout": args.device_timeout, "update_deadline": args.device_timeout,
            })),
            201,
        )
        .await?;
    let id = created["id"].as_u64().context("the rollout answer has no id")?;
    let sizes: Vec<u64> = created["status"]["waves"]
        .as_array()
        .map(|w| w.iter().filter_map(|w| w["devices"].as_u64()).collect())
        .unwrap_or_default();
    let targeted = sizes.iter().sum::<u64>() as usize;
    let mut started_at: Vec<Option<f64>> = vec![None; sizes.len()];
    let mut healthy_at: Vec<Option<f64>> = vec![None; sizes.len()];
    let deadline = Duration::from_secs(args.timeout_secs);
    let (state, view) = loop {
        tick();
        let view = fleet.try_api("GET", &format!("/api/v1/rollouts/{id}"), None, 200).await?;
        let now = t.elapsed().as_secs_f64();
        // A wave starts when it becomes the current one (the server targets its devices then).
        if let Some(w) = view["status"]["current_wave"].as_u64().map(|w| w as usize) {
            if let Some(at) = started_at.get_mut(w.wrapping_sub(1)) {
                at.get_or_insert(now);
            }
        }
        for (w, wave) in view["status"]["waves"].as_array().into_iter().flatten().enumerate() {
            let healthy = wave["counts"]["healthy"].as_u64();
            if let (Some(at), Some(n)) = (healthy_at.get_mut(w), sizes.get(w)) {
                if at.is_none() && healthy == Some(*n) {
                    *at = Some(now);
                }
            }
        }
        let state = rollout_state(&view).unwrap_or_default();
        if ["Completed", "Paused", "Aborted", "RolledBack"].contains(&state.as_str()) {
            break (state, view);
        }
        if t.elapsed() > deadline {
            bail!("rollout {id} still {state} after {} s: {}", deadline.as_secs(), view["status"]);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let secs = t.elapsed().as_secs_f64();
    let on_release =
        devices(fleet, args.devices).await?.iter().filter(|d| d["release"] == "sim@1").count();
    let waves: Vec<(u64, f64)> = sizes
        .iter()
        .enumerate()
        .map(|(w, n)| {
            let took = match (started_at[w], healthy_at[w]) {
                (Some(a), Some(b)) => b - a,
                _ => f64::NAN,
            };
            (*n, took)
        })
        .collect();
    let failed = view["status"]["failed"].as_u64().unwrap_or(0);
    println!("rollout {id} {state} in {secs:.1} s: {on_release} of {targeted} devices on sim@1, {failed} failed");
    for (w, (n, took)) in waves.iter().enumerate() {
        if took.is_finite() && *took > 0.0 {
            println!(
                "  wave {}: {n} devices healthy {took:.1} s after it started ({:.0} devices/minute)",
                w + 1,
                *n as f64 * 60.0 / took
            );
        } else {
            println!("  wave {}: {n} devices", w + 1);
        }
    }
    Ok(RolloutOutcome { state, secs, on_release, targeted, failed, waves })
}

/// `fleet-sim run`: exit 0 when every started agent came up (and the rollout, if asked for,
/// completed), 3 otherwise.
pub async fn main(args: RunArgs) -> anyhow::Result<std::process::ExitCode> {
    let outcome = run(&args).await?;
    let ok = outcome.rollout.as_ref().is_none_or(|r| r.state == "Completed");
    Ok(if ok { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(3) })
}
