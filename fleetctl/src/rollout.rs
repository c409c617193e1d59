//! `fleetctl rollout`: pre-flight plans, creating, following and steering staged rollouts.

use clap::Subcommand;
use fleet_api::{Plan, RolloutRequest, RolloutView};

use crate::client::{print_json, Client, Failure};
use crate::show::{count, table, utc};
use crate::watch;

/// How a rollout goes, shared by `plan` and `create`.
#[derive(Debug, Clone, clap::Args)]
pub struct RolloutArgs {
    /// Release id (app@version).
    release: String,
    /// group:NAME (or a bare group name), selector:k=v,... (or a bare k=v,...), or devices:ID,ID.
    #[arg(long)]
    target: String,
    /// Cumulative waves: device counts and percentages ending at 100%.
    #[arg(long, default_value = fleet_api::rollouts::DEFAULT_WAVES)]
    waves: String,
    /// How long a wave must stay healthy before the next starts.
    #[arg(long, default_value = fleet_api::rollouts::DEFAULT_BAKE)]
    bake: String,
    /// At most this many devices updating at once.
    #[arg(long)]
    max_parallel: Option<u32>,
    /// Failures tolerated before --on-failure: a count (3) or a percentage (5%).
    #[arg(long, default_value = "0")]
    failure_threshold: String,
    /// pause, or rollback (re-target the rollout's devices to their previous release).
    #[arg(long, default_value = "pause")]
    on_failure: String,
    /// When devices may be targeted, e.g. "Mon-Fri 22:00-05:00 Europe/Berlin" (or a UTC offset like +01:00).
    #[arg(long)]
    window: Option<String>,
    /// An offline or deferred (locked) device counts as failed after this long.
    #[arg(long, default_value = fleet_api::rollouts::DEFAULT_DEVICE_TIMEOUT)]
    device_timeout: String,
    /// An online device counts as failed if not healthy this long after targeting.
    #[arg(long, default_value = fleet_api::rollouts::DEFAULT_UPDATE_DEADLINE)]
    update_deadline: String,
    /// Spread targeting inside a wave over this long, so a site does not pull at once.
    #[arg(long, default_value = "0s")]
    stagger: String,
    /// Leave out devices that cannot run the release instead of refusing.
    #[arg(long)]
    exclude_unsatisfiable: bool,
    /// Seed of the wave plan (the one `rollout plan` printed, to get exactly its waves).
    #[arg(long)]
    seed: Option<u64>,
}

impl RolloutArgs {
    fn request(&self) -> RolloutRequest {
        RolloutRequest {
            release: self.release.clone(),
            target: self.target.clone(),
            waves: Some(self.waves.clone()),
            bake: Some(self.bake.clone()),
            max_parallel: self.max_parallel,
            failure_threshold: Some(self.failure_threshold.clone()),
            on_failure: Some(self.on_failure.clone()),
            window: self.window.clone(),
            device_timeout: Some(self.device_timeout.clone()),
            update_deadline: Some(self.update_deadline.clone()),
            stagger: Some(self.stagger.clone()),
            exclude_unsatisfiable: self.exclude_unsatisfiable,
            seed: self.seed,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum RolloutVerb {
    /// Pre-flight: which devices each wave would hold, which are pinned, offline or cannot run
    /// the release. Sends nothing.
    ///
    /// Example: fleetctl rollout plan robot-stack@1.4.2 --target depot --waves 1,10%,100%
    Plan(RolloutArgs),
    /// Create a rollout and start it.
    ///
    /// Example: fleetctl rollout create robot-stack@1.4.2 --target depot --waves 1,10%,50%,100% --bake 10m --failure-threshold 5% --on-failure rollback --watch
    Create {
        #[command(flatten)]
        args: RolloutArgs,
        /// Follow it until it ends (exit 3 if it pauses or rolls back).
        #[arg(long)]
        watch: bool,
        /// With --watch: give up watching after this long (exit 4; the rollout carries on).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// List rollouts, newest first.
    Ls,
    /// A rollout's progress per wave (example: fleetctl rollout status 12 --watch).
    Status {
        /// Rollout id.
        id: u64,
        /// Follow it until it ends (exit 3 if it pauses or rolls back).
        #[arg(long)]
        watch: bool,
        /// With --watch: give up watching after this long (exit 4).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Pause a rollout (example: fleetctl rollout pause 12 --reason "site network work").
    Pause {
        /// Rollout id.
        id: u64,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a paused rollout; failures so far count as accepted (example: fleetctl rollout resume 12).
    Resume {
        /// Rollout id.
        id: u64,
    },
    /// End a rollout where it stands; devices keep what they run (example: fleetctl rollout abort 12).
    Abort {
        /// Rollout id.
        id: u64,
    },
    /// Send every device the rollout moved back to its previous release (example: fleetctl rollout rollback 12).
    Rollback {
        /// Rollout id.
        id: u64,
    },
    /// End the current wave's bake now; the gate still applies before the next wave starts (example: fleetctl rollout promote 12).
    Promote {
        /// Rollout id.
        id: u64,
    },
    /// Target the failed devices again, in place, with fresh deadlines; a rollout paused by its failure gate runs again (example: fleetctl rollout retry 12 --failed).
    Retry {
        /// Rollout id.
        id: u64,
        /// Retry the devices that failed (required: the one kind of retry there is, said out loud).
        #[arg(long, required = true)]
        failed: bool,
    },
}

pub fn rollout(json: bool, client: &Client, verb: &RolloutVerb) -> Result<(), Failure> {
    let duration = |t: &Option<String>| {
        t.as_deref().map(fleet_api::units::parse_duration).transpose().map_err(Failure::usage)
    };
    match verb {
        RolloutVerb::Plan(args) => {
            let plan: Plan = client.post("/api/v1/rollouts/plan", &args.request())?;
            if json {
                print_json(&plan);
            } else {
                print_plan(&plan);
            }
        }
        RolloutVerb::Create { args, watch, timeout } => {
            let timeout = duration(timeout)?;
            let view: RolloutView = client.post("/api/v1/rollouts", &args.request())?;
            if json && !watch {
                print_json(&view);
            } else if !json {
                println!("rollout {} of {} created", view.id, view.status.release);
                for w in &view.status.waves {
                    println!("  {}", watch::wave_line(w));
                }
            }
            if *watch {
                let result = watch::watch(client, view.id, timeout);
                if json {
                    let last: RolloutView = client.get(&format!("/api/v1/rollouts/{}", view.id))?;
                    print_json(&last);
                }
                return result;
            }
            eprintln!("follow it with `fleetctl rollout status {} --watch`", view.id);
        }
        RolloutVerb::Ls => {
            let all: Vec<RolloutView> = client.get("/api/v1/rollouts")?;
            if json {
                print_json(&all);
            } else if all.is_empty() {
                eprintln!("no rollouts yet: `fleetctl rollout create RELEASE --target GROUP`");
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|v| {
                        let s = &v.status;
                        let total: usize = s.waves.iter().map(|w| w.devices).sum();
                        let healthy: usize = s.waves.iter().map(|w| w.counts.healthy).sum();
                        vec![
                            v.id.to_string(),
                            s.release.to_string(),
                            v.target.to_string(),
                            s.state.name().to_owned(),
                            s.current_wave
                                .map_or_else(|| "-".into(), |w| format!("{w}/{}", s.waves.len())),
                            format!("{healthy}/{total} healthy, {} failed", s.failed),
                            utc(v.created_at),
                        ]
                    })
                    .collect();
                table(&["ID", "RELEASE", "TARGET", "STATE", "WAVE", "DEVICES", "CREATED"], &rows);
            }
        }
        RolloutVerb::Status { id, watch, timeout } => {
            let timeout = duration(timeout)?;
            if *watch {
                let result = watch::watch(client, *id, timeout);
                if json {
                    let last: RolloutView = client.get(&format!("/api/v1/rollouts/{id}"))?;
                    print_json(&last);
                }
                return result;
            }
            let view: RolloutView = client.get(&format!("/api/v1/rollouts/{id}"))?;
            if json {
                print_json(&view);
            } else {
                println!("{}", watch::state_line(&view));
                println!(
                    "target {} (seed {}), created {} by {}",
                    view.target,
                    view.seed,
                    utc(view.created_at),
                    view.created_by
                );
                for w in &view.status.waves {
                    println!("  {}", watch::wave_line(w));
                }
                println!(
                    "  failed {} of {} allowed",
                    view.status.failed, view.status.allowed_failures
                );
                if !view.status.skipped_pinned.is_empty() {
                    let ids: Vec<String> =
                        view.status.skipped_pinned.iter().map(ToString::to_string).collect();
                    println!("  pinned, left out: {}", ids.join(" "));
                }
            }
        }
        RolloutVerb::Pause { id, reason } => {
            rollout_command(json, client, *id, "pause", reason.clone())?
        }
        RolloutVerb::Resume { id } => rollout_command(json, client, *id, "resume", None)?,
        RolloutVerb::Abort { id } => rollout_command(json, client, *id, "abort", None)?,
        RolloutVerb::Rollback { id } => rollout_command(json, client, *id, "rollback", None)?,
        RolloutVerb::Promote { id } => rollout_command(json, client, *id, "promote", None)?,
        RolloutVerb::Retry { id, failed: _ } => rollout_command(json, client, *id, "retry", None)?,
    }
    Ok(())
}

fn rollout_command(
    json: bool,
    client: &Client,
    id: u64,
    verb: &str,
    reason: Option<String>,
) -> Result<(), Failure> {
    let body = serde_json::json!({ "reason": reason });
    let view: RolloutView = client.post(&format!("/api/v1/rollouts/{id}/{verb}"), &body)?;
    if json {
        print_json(&view);
    } else {
        println!("{}", watch::state_line(&view));
    }
    Ok(())
}

fn print_plan(plan: &Plan) {
    let total: usize = plan.waves.iter().map(Vec::len).sum();
    println!(
        "rollout plan of {} to {}: {total} devices in {} waves (seed {})",
        plan.release,
        plan.target,
        plan.waves.len(),
        plan.seed
    );
    for (i, wave) in plan.waves.iter().enumerate() {
        let shown: Vec<String> = wave.iter().take(8).map(ToString::to_string).collect();
        let more = wave.len().saturating_sub(8);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        println!("  wave {} ({}): {}{more}", i + 1, count(wave.len(), "device"), shown.join(" "));
    }
    for (d, release, reason) in &plan.pinned {
        println!("  pinned, left out: {d} on {release} ({reason})");
    }
    if !plan.offline.is_empty() {
        let ids: Vec<String> = plan.offline.iter().map(ToString::to_string).collect();
        println!("  offline now (they update when they return): {}", ids.join(" "));
    }
    for (d, rollout) in &plan.busy {
        println!("  busy: {d} is in active rollout {rollout}");
    }
    for (d, why) in &plan.unsatisfiable {
        println!("  CANNOT RUN the release: {d}: {}", why.join("; "));
    }
    for (d, gaps) in &plan.unchecked {
        println!("  not checked: {d}: {}", gaps.join("; "));
    }
    if plan.unsatisfiable.is_empty() && plan.busy.is_empty() {
        eprintln!(
            "create it with the same flags and --seed {} to get exactly these waves",
            plan.seed
        );
    } else {
        eprintln!(
            "fix the devices above, or create with --exclude-unsatisfiable to leave them out"
        );
    }
}
