//! `rollout status --watch`: one progress bar per wave on a terminal, one line per change
//! otherwise, until the rollout ends (exit 0 completed, 3 paused / rolled back / aborted, 4 timed
//! out).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use fleet_api::{RolloutView, RunState, WavePhase, WaveStatus};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::{Client, Failure};

/// A wave's one-line summary.
pub fn wave_line(w: &WaveStatus) -> String {
    let c = &w.counts;
    let phase = match w.phase {
        WavePhase::Waiting => "waiting",
        WavePhase::Active { stagger_base: None, .. } => "active (window closed)",
        WavePhase::Active { .. } => "active",
        WavePhase::Baking { .. } => "baking",
        WavePhase::Done => "done",
    };
    let mut parts = vec![format!("{} healthy", c.healthy)];
    for (n, what) in [
        (c.updating, "updating"),
        (c.failed, "failed"),
        (c.skipped, "skipped"),
        (c.rolled_back, "rolled back"),
        (c.pending, "pending"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    let devices =
        if w.devices == 1 { "1 device".to_owned() } else { format!("{} devices", w.devices) };
    format!("wave {} ({devices}) {phase}: {}", w.wave, parts.join(", "))
}

/// The rollout's state in words.
pub fn state_line(v: &RolloutView) -> String {
    let s = &v.status;
    let mut line = format!("rollout {} of {}: {}", v.id, s.release, s.state.name());
    match &s.state {
        RunState::Paused { reason, .. } => line.push_str(&format!(" ({reason})")),
        RunState::RolledBack { reason, .. } => line.push_str(&format!(" ({reason})")),
        _ => {}
    }
    if let Some(until) = s.bake_until {
        line.push_str(&format!(
            "; wave {} bakes until {}",
            s.current_wave.unwrap_or(0),
            crate::show::utc(until)
        ));
    }
    line
}

/// How a watch ends for a rollout that stopped moving: `Ok` when it completed, exit 3 when it
/// paused, rolled back or was aborted; `None` while it runs.
pub fn outcome(view: &RolloutView) -> Option<Result<(), Failure>> {
    match &view.status.state {
        RunState::Running => None,
        RunState::Completed { .. } => Some(Ok(())),
        _ => Some(Err(Failure {
            code: 3,
            message: format!(
                "{} (`fleetctl rollout status {}` shows the devices)",
                state_line(view),
                view.id
            ),
        })),
    }
}

/// Follows a rollout until it ends or `timeout` passes.
pub fn watch(client: &Client, id: u64, timeout: Option<Duration>) -> Result<(), Failure> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if tty {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style =
        ProgressStyle::with_template("{prefix:>8} [{bar:30.green/red}] {pos:>5}/{len:<5} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    let header = multi.add(ProgressBar::new_spinner());
    let mut bars: Vec<ProgressBar> = Vec::new();
    let mut last_lines: Vec<String> = Vec::new();
    loop {
        let view: RolloutView = client.get(&format!("/api/v1/rollouts/{id}"))?;
        let s = &view.status;
        while bars.len() < s.waves.len() {
            let w = &s.waves[bars.len()];
            let bar = multi.add(ProgressBar::new(w.devices as u64));
            bar.set_style(style.clone());
            bar.set_prefix(format!("wave {}", w.wave));
            bars.push(bar);
        }
        header.set_message(state_line(&view));
        let mut lines = vec![state_line(&view)];
        for (bar, w) in bars.iter().zip(&s.waves) {
            let c = &w.counts;
            bar.set_position((c.healthy + c.failed + c.skipped + c.rolled_back) as u64);
            let line = wave_line(w);
            bar.set_message(
                line.split_once(": ").map(|(_, rest)| rest.to_owned()).unwrap_or_default(),
            );
            lines.push(line);
        }
        if !tty {
            for line in &lines {
                if !last_lines.contains(line) {
                    eprintln!("{line}");
                }
            }
        }
        last_lines = lines;
        if let Some(result) = outcome(&view) {
            header.finish_with_message(state_line(&view));
            for bar in &bars {
                bar.finish();
            }
            return result;
        }
        if timeout.is_some_and(|t| started.elapsed() > t) {
            return Err(Failure {
                code: 4,
                message: format!("rollout {id} is still {} after the --timeout; it carries on (`fleetctl rollout status {id}`)", s.state.name()),
            });
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
