//! The `fleet-agent` command line: the daemon, local mode for the bench, status, inventory.
//!
//! Exit codes (shared with fleetctl): 0 ok, 1 usage or input error, 3 the update ended
//! unhealthy (rolled back or failed), 4 the update is deferred by an update lock (not done
//! yet), 5 the container engine is unreachable.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fleet_proto::errors::report;
use fleet_proto::inventory::{Disk, EngineInfo};
use fleet_proto::report::{StateReport, UpdateResult};
use fleet_proto::ReleaseSpec;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::accept::check_local_release;
use crate::admin;
use crate::config::{self, Config, DEFAULT_CONFIG, DEFAULT_PATH};
use crate::daemon;
use crate::hardware;
use crate::hardware::render::render_inventory;
use crate::lock::UpdateLocks;
use crate::plan;
use crate::proxy::{ProxyClient, ProxyStatus, StartWith};
use crate::reconcile::{Reconciler, StepError};
use crate::report;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::{ContainerRuntime, RuntimeError};
use crate::state::Origin;

/// The Fleet device agent: keeps this device's containers equal to the release the fleet
/// server wants, with health-gated rollback.
///
/// Examples:
///   fleet-agent                                   run the daemon (what systemd starts)
///   fleet-agent apply release.json                try a release on this device, no server
///   fleet-agent status --json                     what runs, its health, the last update
///   fleet-agent inventory                         this device's hardware, and how to ask for it
///   fleet-agent --print-default-config > /etc/fleet-agent/config.toml
#[derive(Debug, Parser)]
#[command(name = "fleet-agent", version = crate::AGENT_VERSION, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// Configuration file; `config.d/*.toml` next to it is merged on top.
    #[arg(long, global = true, env = "FLEET_AGENT_CONFIG", default_value = DEFAULT_PATH)]
    config: PathBuf,
    /// Print the documented default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent daemon (the default).
    Run,
    /// Apply a release on this device without a server (local mode): same planner, health
    /// gates and rollback. Example: fleet-agent apply release.json
    Apply {
        /// The release in its canonical JSON form.
        file: PathBuf,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        /// Switch even while an application holds an update lock.
        #[arg(long)]
        force: bool,
    },
    /// Update locks from a shell (applications use the lock directory or socket).
    /// Example: fleet-agent lock acquire mission --ttl 600
    #[command(subcommand)]
    Lock(LockCommand),
    /// Show what runs, its health, the release in force and the last update's outcome.
    /// Example: fleet-agent status --json
    Status {
        /// Print the complete state report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Install another fleet-agent version on this device and switch to it on trial: it must
    /// start, converge without restarting any container and (with a link) connect within the
    /// deadline, or the previous version comes back by itself. The binary the package
    /// installed is never replaced. Example: fleet-agent self-update ./fleet-agent --version 0.2.0
    SelfUpdate {
        /// The new fleet-agent binary (an executable for this device).
        file: PathBuf,
        /// Its version (newer than the running one).
        #[arg(long)]
        version: String,
        /// Seconds the new version has to commit before it is reverted.
        #[arg(long, value_name = "SECONDS", default_value_t = crate::slots::DEFAULT_TRIAL.as_secs())]
        deadline: u64,
        /// Install it although it is not newer than the running version.
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// Hold the host ports of start-first services (the port proxy): what
    /// fleet-agent-proxy.service runs; the daemon starts it itself when not under systemd. It
    /// keeps serving while the daemon is stopped or being updated.
    Proxy {
        /// Serve this data directory instead of the configuration's (the configuration is
        /// then not read).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Show this device's hardware (OS, CPUs, memory, serial ports, GPIO, I2C, SPI, cameras,
    /// CAN, GPUs, accelerators), with the x-fleet item that asks for each port and camera.
    /// Example: fleet-agent inventory --json
    Inventory {
        /// Print the inventory as the agent reports it, as JSON.
        #[arg(long)]
        json: bool,
        /// Read /dev, /sys, /proc and /etc under this directory (default: `[hardware] root`
        /// of the configuration, which is `/`).
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum LockCommand {
    /// Take or renew a lease. Prints its token on standard output: renewing or releasing the
    /// lease while it is in force needs it.
    Acquire {
        /// Who holds it, e.g. the service name.
        holder: String,
        /// Lease length in seconds (default: the configured default).
        #[arg(long)]
        ttl: Option<u64>,
        /// The token of the lease in force, to renew it.
        #[arg(long)]
        token: Option<String>,
        /// Print the lease and its token as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Release a lease.
    Release {
        /// The holder (`APP/HOLDER` for a lease in an application's directory, with --force).
        holder: String,
        /// The token the lease was taken with.
        #[arg(long)]
        token: Option<String>,
        /// Delete the lock file whoever holds it (root only).
        #[arg(long, conflicts_with = "token")]
        force: bool,
    },
    /// List leases in force.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn input(message: impl Into<String>) -> Failure {
        Failure { code: 1, message: message.into() }
    }
}

impl From<RuntimeError> for Failure {
    fn from(e: RuntimeError) -> Failure {
        let code = if matches!(e, RuntimeError::Unreachable { .. }) { 5 } else { 1 };
        Failure { code, message: report(&e) }
    }
}

/// Entry point of the `fleet-agent` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Usage errors exit 1, as the module documents (clap's own default is 2).
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(1);
        }
        // --help and --version.
        Err(e) => e.exit(),
    };
    if cli.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return ExitCode::SUCCESS;
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("fleet-agent: error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn load_config(path: &Path, explicit: bool) -> Result<Config, Failure> {
    Config::load(path, explicit).map_err(|e| Failure::input(report(&e)))
}

fn init_logging(config: Option<&Config>, daemon: bool) {
    // One-shot commands print their own results; their logs only matter when something is off.
    let default = match config {
        Some(config) if daemon => config.log_level.as_str(),
        None if daemon => "info",
        _ => "warn",
    };
    // `FLEET_LOG` takes `level` or `target=level,...` (tracing's `Targets` syntax, without the
    // span and field filters of `EnvFilter`, whose regex engine the agent does not carry).
    let from_env = std::env::var("FLEET_LOG").ok().and_then(|v| match config::log_filter(&v) {
        Ok(filter) => Some(filter),
        Err(e) => {
            eprintln!("fleet-agent: FLEET_LOG ignored: {e}");
            None
        }
    });
    let filter = from_env
        .or_else(|| config::log_filter(default).ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    // A version on trial also logs into its slot, so that if it is reverted the device can
    // report why (slots::trial_log); a panic is logged first, so it lands there too.
    let trial = config
        .filter(|_| daemon)
        .and_then(|c| crate::slots::this_trial(&c.data_dir).map(|(v, _)| (c, v)))
        .and_then(|(c, version)| {
            crate::slots::trial_log::TrialLog::open(&c.data_dir, &version).ok()
        });
    if trial.is_some() {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            tracing::error!("panic: {info}");
            previous(info);
        }));
    }
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    if config.is_some_and(|c| c.log_json) {
        builder.json().finish().with(trial_layer(trial.as_ref())).with(filter).init();
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        builder.with_ansi(ansi).finish().with(trial_layer(trial.as_ref())).with(filter).init();
    }
}

/// The log layer writing into a trial's slot, for a subscriber `S`.
fn trial_layer<S>(
    log: Option<&crate::slots::trial_log::TrialLog>,
) -> Option<impl tracing_subscriber::Layer<S>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let log = log?.clone();
    Some(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(move || log.clone()))
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    // One thread: the agent waits on sockets almost all the time, and every worker thread
    // costs a device memory. Blocking work (file locks) goes to tokio's blocking pool.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::input(format!("cannot start the async runtime: {e}")))
}

fn run(cli: Cli) -> Result<u8, Failure> {
    let explicit =
        std::env::var_os("FLEET_AGENT_CONFIG").is_some() || cli.config != Path::new(DEFAULT_PATH);
    let command = cli.command.unwrap_or(Command::Run);
    if let Command::Inventory { json, root } = command {
        // Wanted on a robot not configured yet, too: without a readable configuration the
        // defaults do.
        let config = match Config::load(&cli.config, explicit) {
            Ok(config) => Some(config),
            Err(e) => {
                eprintln!("note: {}\n  using the defaults", report(&e));
                None
            }
        };
        if let Some(config) = &config {
            init_logging(Some(config), false);
        }
        return runtime()?.block_on(inventory(config.as_ref(), root, json));
    }
    if let Command::Proxy { data_dir: Some(dir) } = &command {
        // Started by the daemon, which names its data directory: a configuration edited since
        // must not keep the ports from being served.
        init_logging(None, true);
        return runtime()?.block_on(proxy(dir));
    }
    let config = load_config(&cli.config, explicit)?;
    init_logging(Some(&config), matches!(command, Command::Run | Command::Proxy { .. }));
    match command {
        Command::Run => {
            if config.device_id.as_str() == "CHANGE-ME" {
                return Err(Failure::input(format!(
                    "set device_id in {} (see --print-default-config)",
                    cli.config.display()
                )));
            }
            // Another version of the agent may be the one to run (see `slots`); this returns
            // when it is this binary.
            crate::slots::launch(&config.data_dir);
            let data_dir = config.data_dir.clone();
            // `shutdown_signal()` runs inside the runtime (it needs one) and before the daemon
            // starts, so the handlers exist before READY=1.
            let rt = runtime()?;
            let stopped = rt
                .block_on(async { daemon::run(config, shutdown_signal()).await })
                .map_err(|e| match e {
                    daemon::DaemonError::Runtime(r) => Failure::from(r),
                    other => Failure::input(report(&other)),
                })?;
            if stopped == daemon::Stopped::Relaunch {
                // Sockets, the state database and the link are closed with the runtime.
                drop(rt);
                crate::slots::relaunch(&data_dir);
                return Err(Failure::input("cannot relaunch into the new agent version"));
            }
            Ok(0)
        }
        Command::Apply { file, json, force } => {
            runtime()?.block_on(apply(&config, &file, json, force))
        }
        Command::Lock(cmd) => lock(&config, cmd),
        Command::SelfUpdate { file, version, deadline, allow_downgrade } => {
            runtime()?.block_on(self_update(&config, file, version, deadline, allow_downgrade))
        }
        Command::Proxy { .. } => runtime()?.block_on(proxy(&config.data_dir)),
        Command::Status { json } => runtime()?.block_on(status(&config, json)),
        // Handled above, before a configuration that fails to load ends the command.
        Command::Inventory { json, root } => {
            runtime()?.block_on(inventory(Some(&config), root, json))
        }
    }
}

async fn self_update(
    config: &Config,
    file: PathBuf,
    version: String,
    deadline_secs: u64,
    allow_downgrade: bool,
) -> Result<u8, Failure> {
    // The daemon reads the file as root: hand it an absolute path.
    let file = std::fs::canonicalize(&file)
        .map_err(|e| Failure::input(format!("cannot read {}: {e}", file.display())))?;
    let socket = admin::socket_path(&config.data_dir);
    let request = admin::Request::SelfUpdate {
        file: file.clone(),
        version: version.clone(),
        deadline_secs,
        allow_downgrade,
    };
    let answer = match admin::call(&socket, &request).await {
        Ok(answer) => answer,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            // No daemon: install now; the next `fleet-agent run` starts it on trial.
            let trial = Duration::from_secs(deadline_secs);
            crate::slots::install(&config.data_dir, &file, &version, trial, allow_downgrade)
                .map_err(|e| Failure::input(report(&e)))?;
            eprintln!("installed agent {version}; the next `fleet-agent run` starts it on trial");
            return Ok(0);
        }
        Err(e) => {
            return Err(Failure::input(format!(
                "cannot reach the fleet-agent daemon on {}: {e}",
                socket.display()
            )))
        }
    };
    match answer {
        admin::Answer::Relaunching { version } => {
            eprintln!(
                "agent {version} installed; the daemon restarts into it on trial ({deadline_secs} s to commit; `fleet-agent status` shows the outcome)"
            );
            Ok(0)
        }
        admin::Answer::Refused { problems } => Err(Failure::input(problems.join("\n  "))),
        admin::Answer::Error { message } => Err(Failure::input(message)),
        other => Err(Failure::input(format!("unexpected answer from the daemon: {other:?}"))),
    }
}

async fn proxy(data_dir: &Path) -> Result<u8, Failure> {
    let ended = crate::proxy::process::run(data_dir, shutdown_signal())
        .await
        .map_err(|e| Failure::input(report(&e)))?;
    tracing::debug!(?ended, "port proxy ended");
    Ok(0)
}

fn lock(config: &Config, cmd: LockCommand) -> Result<u8, Failure> {
    let locks = UpdateLocks::new(&config.locks_dir, config.locks_default_ttl);
    let now = fleet_proto::UnixMillis::now();
    let fail = |e: crate::lock::LockError| Failure::input(report(&e));
    match cmd {
        LockCommand::Acquire { holder, ttl, token, json } => {
            let token = token.map(|t| t.parse()).transpose().map_err(fail)?;
            let taken = locks
                .acquire(&holder, ttl.map(Duration::from_secs), token.as_ref(), now)
                .map_err(fail)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&taken).unwrap_or_default());
            } else {
                // The token alone on stdout, so `TOKEN=$(fleet-agent lock acquire ...)` works.
                println!("{}", taken.token.as_str());
                eprintln!(
                    "locked by {} for {} s; renew or release it with --token",
                    taken.lease.holder,
                    (taken.lease.until.0.saturating_sub(now.0)) / 1000
                );
            }
        }
        LockCommand::Release { holder, force: true, .. } => {
            // Acts on the files directly, which only root may write; the socket has no such mode.
            if !nix::unistd::geteuid().is_root() {
                return Err(Failure::input(
                    "lock release --force deletes the lock file and needs root",
                ));
            }
            locks.release_forced(&holder).map_err(fail)?;
        }
        LockCommand::Release { holder, token, force: false } => {
            if holder.contains('/') {
                return Err(Failure::input(format!(
                    "{holder} is in an application's lock directory: its application releases \
                     it, or root with --force"
                )));
            }
            let token = token.map(|t| t.parse()).transpose().map_err(fail)?;
            locks.release(&holder, token.as_ref(), now).map_err(fail)?;
        }
        LockCommand::Ls { json } => {
            let leases = locks.active(now).map_err(fail)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&leases).unwrap_or_default());
            } else {
                for l in leases {
                    println!("{:<24} {} s left", l.holder, l.until.0.saturating_sub(now.0) / 1000);
                }
            }
        }
    }
    Ok(0)
}

async fn apply(config: &Config, file: &Path, json: bool, force: bool) -> Result<u8, Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::input(format!("cannot read {}: {e}", file.display())))?;
    let mut de = serde_json::Deserializer::from_str(&text);
    let release: ReleaseSpec = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        Failure::input(format!("{}: field `{}`: {}", file.display(), e.path(), e.inner()))
    })?;
    check_local_release(&release, &config.hardware.policy.allowed_host_paths)
        .map_err(|r| Failure::input(format!("{}: {}", file.display(), r.problems.join("\n  "))))?;
    eprintln!(
        "applying {} ({} services) on {}…",
        release.id,
        release.services.len(),
        config.device_id
    );
    // A running daemon owns the state and the port proxy: hand the release over to it.
    let socket = admin::socket_path(&config.data_dir);
    let request = admin::Request::Apply { release: release.clone(), force };
    let mut via_daemon = true;
    let status_file = config.data_dir.join("status.json");
    let from_daemon = || {
        let text = std::fs::read(&status_file).ok()?;
        serde_json::from_slice::<StateReport>(&text).ok().map(|r| r.update)
    };
    let answer = match with_progress(admin::call(&socket, &request), from_daemon).await {
        Ok(answer) => answer,
        Err(e)
            if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
        {
            via_daemon = false;
            apply_here(config, &release, force).await?
        }
        Err(e) => {
            return Err(Failure::input(format!(
                "cannot reach the fleet-agent daemon on {}: {e}\n  hint: apply needs root while the daemon runs",
                socket.display()
            )))
        }
    };
    let outcome = match answer {
        admin::Answer::Outcome(outcome) => outcome,
        admin::Answer::Deferred { holder, until } => {
            let next = if via_daemon {
                "the daemon switches when the lock is released; --force switches now"
            } else {
                "run again when the lock is released, or add --force"
            };
            eprintln!("{}\n  images are downloaded; {next}", StepError::Deferred { holder, until });
            return Ok(4);
        }
        admin::Answer::Refused { problems } => {
            return Err(Failure::input(format!("{}: {}", file.display(), problems.join("\n  "))))
        }
        admin::Answer::Error { message } => return Err(Failure { code: 3, message }),
        admin::Answer::Relaunching { .. } => {
            return Err(Failure::input("the daemon answered an apply with a relaunch"))
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome).unwrap_or_default());
    }
    match &outcome.result {
        UpdateResult::Applied => {
            eprintln!("applied: {} is running and healthy", release.id);
            Ok(0)
        }
        UpdateResult::RolledBack { reason, service, log_tail } => {
            eprintln!("rolled back: {reason}");
            if let Some(s) = service {
                eprintln!("last log lines of {s}:");
                for line in log_tail {
                    eprintln!("  | {line}");
                }
            }
            Ok(3)
        }
        UpdateResult::Failed { reason } | UpdateResult::Rejected { reason } => {
            eprintln!("failed, nothing changed: {reason}");
            Ok(3)
        }
    }
}

/// Applies in this process when no daemon runs. There is no port proxy then, so start-first
/// services with host ports update stop-first (two containers cannot share a host port).
async fn apply_here(
    config: &Config,
    release: &ReleaseSpec,
    force: bool,
) -> Result<admin::Answer, Failure> {
    let state = daemon::open_state(config).map_err(|e| Failure::input(report(&e)))?;
    let rt = Arc::new(DockerRuntime::connect(&config.engine_socket, config.engine_timeout).await?);
    let seq = state.next_local_seq().map_err(|e| Failure::input(report(&e)))?;
    let hardware = daemon::scan_hardware(config, &*rt).await;
    let mut reconciler =
        Reconciler::new(rt, config.device_id.clone(), state, daemon::exec_options(config))
            .with_locks(UpdateLocks::new(&config.locks_dir, config.locks_default_ttl))
            .with_hardware(hardware, config.hardware.clone());
    reconciler.set_credentials(config.registries.clone());
    // The port proxy outlives the daemon: while it runs it holds the host ports, so this
    // update goes through it too (publishing those ports directly would clash with it).
    let proxy = ProxyClient::new(&config.data_dir, StartWith::Nothing);
    let proxy_runs = proxy.status_if_running().await.is_some();
    if proxy_runs {
        reconciler = reconciler.with_proxy(proxy);
    }
    let proxied_ports = release
        .services
        .iter()
        .any(|s| plan::effective_strategy(s, false) != plan::effective_strategy(s, true));
    if proxied_ports && !proxy_runs {
        eprintln!("note: no fleet-agent daemon runs, so services publishing host ports update stop-first (the daemon switches them blue/green)");
    }
    let apply = reconciler.apply_forced(Origin::Local { seq }, Some(release.clone()), force);
    match with_progress(apply, || Some(reconciler.status())).await {
        Ok(outcome) => Ok(admin::Answer::Outcome(outcome)),
        Err(StepError::Deferred { holder, until }) => Ok(admin::Answer::Deferred { holder, until }),
        Err(e) => Err(Failure { code: 3, message: report(&e) }),
    }
}

/// Runs `work` (an update) and, on a terminal, keeps one line on stderr up to date with what
/// the update is doing (`status` tells the phase and download progress).
async fn with_progress<T>(
    work: impl std::future::Future<Output = T>,
    status: impl Fn() -> Option<fleet_proto::report::UpdateStatus>,
) -> T {
    use std::io::Write;
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return work.await;
    }
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut shown = false;
    loop {
        tokio::select! {
            done = &mut work => {
                if shown {
                    eprint!("\r\x1b[K");
                }
                return done;
            }
            _ = tick.tick() => {
                if let Some(line) = status().and_then(|s| progress_line(&s)) {
                    eprint!("\r\x1b[K{line}");
                    let _ = std::io::stderr().flush();
                    shown = true;
                }
            }
        }
    }
}

/// One line for a progress display: the phase, with a bar while downloading.
fn progress_line(s: &fleet_proto::report::UpdateStatus) -> Option<String> {
    use fleet_proto::report::UpdatePhase;
    let mb = |b: u64| b as f64 / 1e6;
    let line = match s.phase {
        UpdatePhase::Idle => return None,
        UpdatePhase::Pulling => match s.pull {
            Some(p) => match p.bytes_total.filter(|t| *t > 0) {
                Some(total) => {
                    let filled =
                        usize::try_from(p.bytes_done.min(total) * 30 / total).unwrap_or(30);
                    format!(
                        "downloading [{}{}] {:.1}/{:.1} MB",
                        "#".repeat(filled),
                        ".".repeat(30 - filled),
                        mb(p.bytes_done),
                        mb(total)
                    )
                }
                None => format!("downloading {:.1} MB", mb(p.bytes_done)),
            },
            None => "downloading".to_owned(),
        },
        UpdatePhase::Starting => "starting new containers".to_owned(),
        UpdatePhase::WaitingHealthy => "waiting for the new containers to be healthy".to_owned(),
        UpdatePhase::Switching => "switching over and stopping the old containers".to_owned(),
        UpdatePhase::RollingBack => "rolling back to the previous release".to_owned(),
        UpdatePhase::Deferred => "deferred by an update lock".to_owned(),
    };
    Some(line)
}

async fn status(config: &Config, json: bool) -> Result<u8, Failure> {
    // While the daemon runs, it owns the state and keeps status.json current (live during
    // updates); reading the database here would also block the daemon for a moment.
    let daemon_runs =
        std::os::unix::net::UnixStream::connect(admin::socket_path(&config.data_dir)).is_ok();
    let opened = if daemon_runs { None } else { Some(daemon::open_state(config)) };
    let report: StateReport = match opened {
        Some(Ok(state)) => {
            let rt = DockerRuntime::connect(&config.engine_socket, config.engine_timeout).await?;
            let observed = rt.list(&config.device_id).await?;
            report::build(&config.device_id, &state, &observed, Default::default(), None)
                .map_err(|e| Failure::input(report(&e)))?
        }
        unopened => {
            // The daemon holds the database: read the status it last wrote.
            let path = config.data_dir.join("status.json");
            let text = std::fs::read_to_string(&path).map_err(|e| match &unopened {
                Some(Err(why)) => Failure::input(format!(
                    "cannot read the agent's state ({}) nor {}: {e}",
                    report(why),
                    path.display()
                )),
                _ => Failure::input(format!("cannot read {}: {e}", path.display())),
            })?;
            serde_json::from_str(&text).map_err(|e| {
                Failure::input(format!("{} is not a status report: {e}", path.display()))
            })?
        }
    };
    // The proxy answers for itself: its table is what the host ports serve right now, even
    // while the daemon is stopped.
    let proxy = ProxyClient::new(&config.data_dir, StartWith::Nothing).status_if_running().await;
    // The slots as they are now (the daemon's last report may predate a commit).
    let running =
        report.agent.as_ref().map_or(crate::AGENT_VERSION.to_owned(), |a| a.running.clone());
    let mut report = report;
    report.agent = Some(crate::slots::versions(&config.data_dir, running));
    if json {
        let mut value = serde_json::to_value(&report).unwrap_or_default();
        if let (Some(object), Some(proxy)) = (value.as_object_mut(), &proxy) {
            object.insert("proxy".to_owned(), serde_json::to_value(proxy).unwrap_or_default());
        }
        println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
        return Ok(0);
    }
    println!("device       {}", report.device);
    match &report.in_force {
        Some(f) => println!("release      {} ({:?})", f.release, f.source),
        None => println!("release      none"),
    }
    let u = &report.update;
    if u.phase != fleet_proto::report::UpdatePhase::Idle {
        let mut line = format!("{:?}", u.phase).to_lowercase();
        if let Some(p) = u.pull {
            let mb = |b: u64| b as f64 / 1e6;
            match p.bytes_total {
                Some(t) => line += &format!(", pulled {:.1} of {:.1} MB", mb(p.bytes_done), mb(t)),
                None => line += &format!(", pulled {:.1} MB", mb(p.bytes_done)),
            }
        }
        if let Some(d) = &u.deferred {
            let left = d.until.0.saturating_sub(fleet_proto::UnixMillis::now().0) / 1000;
            line += &format!(": locked by {} for {left} s more", d.holder);
        }
        println!("updating     {line}");
    }
    if let Some(o) = &u.last_outcome {
        println!("last update  {:?}", o.result);
    }
    println!(
        "\n{:<16} {:<28} {:<10} {:<10} {:>8}  PROBLEM",
        "SERVICE", "RELEASE", "STATE", "HEALTH", "RESTARTS"
    );
    for s in &report.services {
        println!(
            "{:<16} {:<28} {:<10} {:<10} {:>8}  {}",
            s.name.as_str(),
            s.release.as_str(),
            format!("{:?}", s.state).to_lowercase(),
            format!("{:?}", s.health).to_lowercase(),
            s.restarts,
            s.last_error.as_deref().unwrap_or("")
        );
    }
    print_proxy(proxy.as_ref());
    if let Some(agent) = &report.agent {
        print_agent(agent);
    }
    Ok(0)
}

fn print_agent(a: &fleet_proto::report::AgentVersions) {
    let committed = a.committed.as_deref().unwrap_or("the installed binary");
    println!("\nagent        {} running; committed: {committed}", a.running);
    if let Some(t) = &a.trial {
        println!("agent trial  {t}");
    }
    if let Some(f) = &a.failed {
        println!("agent update failed: {} ({})", f.version, f.reason);
    }
}

fn print_proxy(proxy: Option<&ProxyStatus>) {
    let Some(p) = proxy else {
        println!("\nport proxy   not running");
        return;
    };
    let age = fleet_proto::UnixMillis::now().0.saturating_sub(p.since.0) / 1000;
    println!("\nport proxy   pid {}, fleet-agent {}, up {age} s", p.pid, p.version);
    if p.routes.is_empty() {
        return;
    }
    println!(
        "{:<22} {:<16} {:<40} {:<22} {:>5}",
        "LISTEN", "SERVICE", "CONTAINER", "BACKEND", "OPEN"
    );
    for r in &p.routes {
        println!(
            "{:<22} {:<16} {:<40} {:<22} {:>5}",
            r.listen.to_string(),
            r.service,
            r.container,
            r.backend.to_string(),
            r.open
        );
    }
}

/// How long `inventory` waits for the container engine: it answers at once if it runs.
const ENGINE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The engine socket when no configuration could be read (the configuration's default).
const DEFAULT_ENGINE_SOCKET: &str = "/var/run/docker.sock";

async fn inventory(
    config: Option<&Config>,
    root: Option<PathBuf>,
    json: bool,
) -> Result<u8, Failure> {
    let root = root
        .or_else(|| config.map(|c| c.hardware.root.clone()))
        .unwrap_or_else(|| PathBuf::from("/"));
    if !root.is_dir() {
        return Err(Failure::input(format!("--root {}: not a directory", root.display())));
    }
    let mut inv = hardware::scan::scan(&root).inventory;
    // The root filesystem as seen through `root` (the host's, when the host is mounted there),
    // named by its host path like everything in the inventory.
    inv.disks = hardware::disks(&[root.as_path()])
        .into_iter()
        .map(|d| Disk { mount: "/".to_owned(), ..d })
        .collect();
    // What the server's pre-flight judges releases by (the JSON form; the text is hardware).
    inv.policy = config.map(|c| c.hardware.policy.clone());
    let socket = config.map_or(DEFAULT_ENGINE_SOCKET, |c| c.engine_socket.as_str());
    let engine_note = match engine_info(socket).await {
        Ok(engine) => {
            inv.engine = Some(engine);
            None
        }
        Err(reason) => Some(format!("note: no container engine answered on {socket}: {reason}")),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&inv).unwrap_or_default());
        if let Some(note) = engine_note {
            eprintln!("{note}");
        }
    } else {
        print!("{}", render_inventory(&inv));
        if let Some(note) = engine_note {
            println!("\n{note}");
        }
    }
    Ok(0)
}

/// The engine's name and versions, or why it did not answer within [`ENGINE_PROBE_TIMEOUT`].
async fn engine_info(socket: &str) -> Result<EngineInfo, String> {
    let ask = async {
        let rt = DockerRuntime::connect(socket, ENGINE_PROBE_TIMEOUT).await?;
        rt.engine_info().await
    };
    match tokio::time::timeout(ENGINE_PROBE_TIMEOUT, ask).await {
        Ok(Ok((version, api_version))) => {
            Ok(EngineInfo { name: "docker".to_owned(), version, api_version })
        }
        // The innermost cause says it best (`Connection refused`, `No such file or directory`).
        Ok(Err(e)) => {
            Err(fleet_proto::errors::causes(&e).last().map_or_else(String::new, |c| c.to_string()))
        }
        Err(_) => Err(format!("no answer within {} s", ENGINE_PROBE_TIMEOUT.as_secs())),
    }
}

/// Completes on SIGINT or SIGTERM.
/// Resolves on SIGTERM or SIGINT. The handlers are registered when this is called, not when it
/// is first polled: `systemctl restart` may send SIGTERM the moment READY=1 is out, and a
/// signal arriving before registration would kill the process with its default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (term, int) => {
                let e = term.err().or(int.err()).map(|e| e.to_string()).unwrap_or_default();
                tracing::error!(error = %e, "cannot watch SIGTERM/SIGINT; the daemon cannot stop gracefully");
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use fleet_proto::report::{PullProgress, UpdatePhase, UpdateStatus};

    use super::*;

    #[test]
    fn the_progress_line_draws_a_bar_once_the_total_is_known() {
        let mut s = UpdateStatus { phase: UpdatePhase::Pulling, ..UpdateStatus::default() };
        s.pull = Some(PullProgress { bytes_done: 5_000_000, bytes_total: Some(20_000_000) });
        assert_eq!(
            progress_line(&s).unwrap(),
            format!("downloading [{}{}] 5.0/20.0 MB", "#".repeat(7), ".".repeat(23))
        );
        s.pull = Some(PullProgress { bytes_done: 1_500_000, bytes_total: None });
        assert_eq!(progress_line(&s).unwrap(), "downloading 1.5 MB");
        s.phase = UpdatePhase::Idle;
        assert_eq!(progress_line(&s), None);
    }
}
