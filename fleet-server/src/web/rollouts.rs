//! `/rollouts`: the list, and the rollout page. Waves as stacked bars with their counts in
//! words, the failure gate, the failed devices with their reasons, and the commands, each
//! behind a page that states its consequence. The page follows the rollout live over
//! Server-Sent Events (`/rollouts/{id}/live`), coalesced to a few updates a second.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use fleet_proto::UnixMillis;
use futures_util::StreamExt;
use maud::{html, Markup};

use super::layout::{self, ago, badge, cli, notice, Section};
use super::{error_page, problem_page, query_pairs, Form, Refusal, Session};
use crate::api::Api;
use crate::ops;
use crate::records::rollout::RolloutRecord;
use crate::rollout::driver::RolloutCommand;
use crate::rollout::{DeviceState, RunState, WavePhase, WaveStatus};
use fleet_api::RolloutRequest;

/// The most failed devices listed on a rollout page (the rest are counted).
const MAX_FAILED_LISTED: usize = 200;

/// `GET /rollouts`.
pub async fn list(State(api): State<Api>, session: Session) -> Response {
    let rollouts = match ops::rollouts::list(&api.store) {
        Ok(r) => r,
        Err(e) => return problem_page(&session, e),
    };
    let now = UnixMillis::now();
    let body = html! {
        @if session.operates() { p { a.button href="/rollouts/new" { "New rollout…" } } }
        @if rollouts.is_empty() {
            p { "No rollouts yet." }
            (cli("fleetctl rollout create RELEASE --target group:NAME --waves 1,10%,100%"))
        } @else {
            table {
                caption { (rollouts.len()) " rollouts, newest first" }
                thead { tr {
                    th scope="col" { "Rollout" } th scope="col" { "Release" } th scope="col" { "Target" }
                    th scope="col" { "State" } th scope="col" { "Progress" } th scope="col" { "Created" }
                } }
                tbody {
                    @for r in &rollouts {
                        @let status = r.rollout.status();
                        tr {
                            td { a href={ "/rollouts/" (r.id()) } { (r.id()) } }
                            td { (r.rollout.spec().release) }
                            td { code { (r.target) } }
                            td { (run_state_badge(r.rollout.state())) }
                            td { (progress_words(&status.waves)) }
                            td { (ago(r.rollout.created_at(), now)) " by " (r.created_by) }
                        }
                    }
                }
            }
        }
    };
    layout::page(&session, Section::Rollouts, "Rollouts", body)
}

/// `GET /rollouts/{id}`.
pub async fn show(
    State(api): State<Api>,
    session: Session,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let record = match find(&api, &id) {
        Ok(r) => r,
        Err(refusal) => return refusal.page(Some(&session)),
    };
    let done = query_pairs(query.as_deref()).into_iter().find(|(k, _)| k == "done").map(|(_, v)| v);
    let now = UnixMillis::now();
    let live = record.rollout.state().is_active();
    let body = html! {
        (notice(done.as_deref()))
        dl.facts {
            dt { "Release" } dd { (record.rollout.spec().release) }
            dt { "Target" } dd { code { (record.target) } }
            dt { "Created" } dd { (ago(record.rollout.created_at(), now)) " by " (record.created_by) }
            dt { "Waves" } dd { (record.rollout.spec().waves.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")) }
            dt { "Bake" } dd { (crate::units::human_duration(record.rollout.spec().bake)) }
            dt { "On failure" } dd {
                "more than " (record.rollout.spec().failure_threshold) " failed → " (on_failure_words(record.rollout.spec().on_failure))
            }
        }
        @if !record.excluded.is_empty() {
            details {
                summary { (record.excluded.len()) " devices left out at creation" }
                ul { @for (d, why) in &record.excluded { li { a href={ "/devices/" (d) } { (d) } ": " (why.join("; ")) } } }
            }
        }
        @if live {
            div #rollout-live data-live={ "/rollouts/" (record.id()) "/live" } { (live_region(&record, &session, now)) }
        } @else {
            div #rollout-live { (live_region(&record, &session, now)) }
        }
        (cli(&format!("fleetctl rollout status {}", record.id())))
    };
    layout::page(&session, Section::Rollouts, &format!("Rollout {}", record.id()), body)
}

fn find(api: &Api, id: &str) -> Result<RolloutRecord, Refusal> {
    let Ok(id) = id.parse::<u64>() else {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "No such rollout",
            format!("{id:?} is not a rollout id (a number; the list is at /rollouts)."),
        ));
    };
    Ok(ops::rollouts::show(&api.store, id)?)
}

/// The part of the rollout page that changes while it runs.
fn live_region(record: &RolloutRecord, session: &Session, now: UnixMillis) -> Markup {
    let status = record.rollout.status();
    let failed: Vec<_> = record
        .rollout
        .devices()
        .filter_map(|d| match record.rollout.device_state(d) {
            Some(DeviceState::Failed { at, reason }) => Some((d, *at, reason)),
            _ => None,
        })
        .collect();
    html! {
        p { "State: " (run_state_badge(record.rollout.state())) " " (state_detail(record.rollout.state(), now)) }
        p.gate {
            strong { "Failure gate: " }
            (status.failed) " of " (status.allowed_failures) " failures allowed used"
            @if status.failed > status.allowed_failures { " — threshold crossed" }
            "."
            @if let Some(until) = status.bake_until { " Current wave bakes until " (ago(until, now)) "." }
        }
        @if matches!(record.rollout.state(), RunState::Paused { reason: crate::rollout::PauseReason::Threshold { .. }, .. }) {
            p.attention {
                strong { "What now: " }
                "the failed devices and why are listed below. Fix the cause and retry them, resume to accept the failures so far, or roll back."
            }
        }
        @if session.operates() {
            (actions(record))
        }
        (wave_bars(&status))
        h2 { "Failed devices" }
        @if failed.is_empty() {
            p { "None." }
        } @else {
            table {
                caption { (failed.len()) " failed" @if failed.len() > MAX_FAILED_LISTED { ", the first " (MAX_FAILED_LISTED) " listed" } }
                thead { tr { th scope="col" { "Device" } th scope="col" { "Why" } th scope="col" { "Since" } } }
                tbody {
                    @for (device, at, reason) in failed.iter().take(MAX_FAILED_LISTED) {
                        tr {
                            td { a href={ "/devices/" (device) } { (device) } }
                            td { (reason) }
                            td { (ago(*at, now)) }
                        }
                    }
                }
            }
        }
    }
}

fn actions(record: &RolloutRecord) -> Markup {
    let id = record.id();
    let state = record.rollout.state();
    let status = record.rollout.status();
    let baking = status
        .current_wave
        .and_then(|w| status.waves.get(w - 1))
        .is_some_and(|w| matches!(w.phase, WavePhase::Baking { .. }));
    let retryable = status.waves.iter().any(|w| w.counts.failed > 0)
        && matches!(
            state,
            RunState::Running
                | RunState::Completed { .. }
                | RunState::Paused { reason: crate::rollout::PauseReason::Threshold { .. }, .. }
        );
    let commands: Vec<(&str, &str, bool)> = vec![
        ("promote", "Promote", matches!(state, RunState::Running) && baking),
        ("retry", "Retry failed devices", retryable),
        ("pause", "Pause", matches!(state, RunState::Running)),
        ("resume", "Resume", matches!(state, RunState::Paused { .. })),
        ("abort", "Abort", state.is_active()),
        ("rollback", "Roll back", state.is_active() || matches!(state, RunState::Completed { .. })),
    ];
    html! {
        h2 { "Actions" }
        div.actions {
            @for (command, label, offered) in commands {
                @if offered {
                    a.button href={ "/rollouts/" (id) "/confirm/" (command) } { (label) "…" }
                }
            }
        }
    }
}

fn state_detail(state: &RunState, now: UnixMillis) -> Markup {
    html! {
        @match state {
            RunState::Running => {},
            RunState::Paused { reason, at } => { "since " (ago(*at, now)) ": " (reason.to_string()) },
            RunState::Completed { at } | RunState::Aborted { at } => { (ago(*at, now)) },
            RunState::RolledBack { reason, at } => { (ago(*at, now)) ": " (reason.to_string()) },
        }
    }
}

fn on_failure_words(on_failure: crate::rollout::OnFailure) -> &'static str {
    match on_failure {
        crate::rollout::OnFailure::Pause => "pause",
        crate::rollout::OnFailure::Rollback => "roll back",
    }
}

/// A rollout's state in a word and a mark.
pub fn run_state_badge(state: &RunState) -> Markup {
    let kind = match state {
        RunState::Running => "busy",
        RunState::Paused { .. } => "warn",
        RunState::Completed { .. } => "ok",
        RunState::Aborted { .. } => "none",
        RunState::RolledBack { .. } => "bad",
    };
    badge(kind, state.name())
}

/// `3 of 5 waves done`.
fn progress_words(waves: &[WaveStatus]) -> String {
    let done = waves.iter().filter(|w| w.phase == WavePhase::Done).count();
    format!("{done} of {} waves done", waves.len())
}

/// Every wave as a stacked bar, its counts written out beside it (never colour alone).
pub fn wave_bars(status: &crate::rollout::RolloutStatus) -> Markup {
    html! {
        @for w in &status.waves {
            @let c = w.counts;
            @let parts = [
                ("healthy", c.healthy), ("failed", c.failed), ("updating", c.updating),
                ("rolled_back", c.rolled_back), ("skipped", c.skipped), ("pending", c.pending),
            ];
            @let total = c.total().max(1);
            div.wave {
                strong { "Wave " (w.wave) } " — " (phase_words(&w.phase)) ", " (w.devices) " devices"
                svg role="img" aria-label={ "wave " (w.wave) ": " (counts_words(&parts)) } viewBox="0 0 1000 20" preserveAspectRatio="none" {
                    @for (name, x, width) in segments(&parts, total) {
                        rect class={ "seg-" (name) } x=(x) y="0" width=(width) height="20" {}
                    }
                }
                div.counts { (counts_words(&parts)) }
            }
        }
    }
}

/// `(name, x, width)` of each non-empty part on a 1000-wide bar.
fn segments<'a>(parts: &[(&'a str, usize)], total: usize) -> Vec<(&'a str, usize, usize)> {
    let mut x = 0;
    let mut out = Vec::new();
    for (name, n) in parts.iter().filter(|(_, n)| *n > 0) {
        let width = (n * 1000 / total).max(1);
        out.push((*name, x, width));
        x += width;
    }
    out
}

fn counts_words(parts: &[(&str, usize)]) -> String {
    let words: Vec<String> = parts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{n} {}", name.replace('_', " ")))
        .collect();
    if words.is_empty() {
        "no devices".to_owned()
    } else {
        words.join(", ")
    }
}

fn phase_words(phase: &WavePhase) -> &'static str {
    match phase {
        WavePhase::Waiting => "waiting",
        WavePhase::Active { stagger_base: None, .. } => "waiting for its window",
        WavePhase::Active { .. } => "updating",
        WavePhase::Baking { .. } => "baking",
        WavePhase::Done => "done",
    }
}

/// `GET /rollouts/{id}/live`: the live region again whenever the rollout changes (at most
/// every [`super::live::EVERY`], read once for all pages that follow it); ends when the rollout does.
pub async fn live(State(api): State<Api>, session: Session, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return (StatusCode::NOT_FOUND, "no such rollout").into_response();
    };
    let followed = api.live.follow(&api.store, id);
    let stream = futures_util::stream::unfold(
        (api, session, followed, None::<&'static str>, false),
        move |(api, session, mut followed, shown_state, ended)| async move {
            if ended {
                return None;
            }
            if shown_state.is_some() && followed.changed().await.is_err() {
                // The reader stopped between our follow and now: follow it afresh.
                followed = api.live.follow(&api.store, id);
                followed.changed().await.ok()?;
            }
            let record = followed.borrow_and_update().clone();
            // A revoked or expired token stops seeing updates, like its next page load would.
            let Some(record) = record.filter(|_| session.still_valid(&api)) else {
                let end = vec![Ok::<_, Infallible>(Event::default().event("end").data("gone"))];
                return Some((end, (api, session, followed, shown_state, true)));
            };
            let html = live_region(&record, &session, UnixMillis::now()).into_string();
            let mut events = vec![Ok(Event::default().event("region").data(html))];
            let state = record.rollout.state();
            if shown_state.is_some_and(|shown| shown != state.name()) {
                let said = format!("Rollout {id} is now {}.", state.name());
                events.push(Ok(Event::default().event("status").data(said)));
            }
            let finished = !state.is_active();
            if finished {
                events.push(Ok(Event::default().event("end").data("done")));
            }
            Some((events, (api, session, followed, Some(state.name()), finished)))
        },
    )
    .flat_map(futures_util::stream::iter);
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

fn parse_command(command: &str) -> Option<(RolloutCommand, &'static str, &'static str)> {
    Some(match command {
        "pause" => (RolloutCommand::Pause, "paused", "Pause"),
        "resume" => (RolloutCommand::Resume, "resumed", "Resume"),
        "abort" => (RolloutCommand::Abort, "aborted", "Abort"),
        "rollback" => (RolloutCommand::Rollback, "rolled-back", "Roll back"),
        "promote" => (RolloutCommand::Promote, "promoted", "Promote"),
        "retry" => (RolloutCommand::RetryFailed, "retried", "Retry the failed devices of"),
        _ => return None,
    })
}

fn consequence(command: RolloutCommand) -> &'static str {
    match command {
        RolloutCommand::Pause => "No further device is targeted until the rollout is resumed. Devices already updating finish their update.",
        RolloutCommand::Resume => "The rollout carries on from where it stopped: the current wave targets its remaining devices, and the failure gate applies again.",
        RolloutCommand::Abort => "The rollout ends for good. Devices keep the release they run now, whether the old one or the new; nothing is sent back.",
        RolloutCommand::Rollback => "Every device this rollout targeted is sent back to the release it ran before. The rollout ends.",
        RolloutCommand::Promote => "The current wave's bake ends now. Its healthy devices are checked once more and the failure gate applies; if both hold, the next wave starts.",
        RolloutCommand::RetryFailed => "Every failed device (pinned ones excepted) gets the release again, with fresh deadlines, and counts as failed only if it fails again. A rollout paused by its failure gate runs again; a completed one reopens until the retried devices have their verdicts.",
    }
}

/// `GET /rollouts/{id}/confirm/{command}`: what the command will do, and the button that does it.
pub async fn confirm(
    State(api): State<Api>,
    session: Session,
    Path((id, command)): Path<(String, String)>,
) -> Response {
    let record = match find(&api, &id) {
        Ok(r) => r,
        Err(refusal) => return refusal.page(Some(&session)),
    };
    let Some((parsed, _, label)) = parse_command(&command) else {
        return error_page(
            Some(&session),
            StatusCode::NOT_FOUND,
            "No such command",
            "Rollouts take pause, resume, abort, rollback, promote and retry.",
        );
    };
    if !session.operates() {
        return error_page(
            Some(&session),
            StatusCode::FORBIDDEN,
            "Not allowed",
            "Commands on rollouts need the operator role.",
        );
    }
    let id = record.id();
    let body = html! {
        p { strong { "What happens: " } (consequence(parsed)) }
        p { "Rollout " (id) " of " (record.rollout.spec().release) " is " (run_state_badge(record.rollout.state())) "." }
        form.stacked method="post" action={ "/rollouts/" (id) "/" (command) } {
            (session.csrf_field())
            @if matches!(parsed, RolloutCommand::Pause) {
                label for="reason" { "Reason (kept in the audit log)" }
                input #reason name="reason" type="text" maxlength="500";
            }
            div.actions {
                button type="submit" class=[matches!(parsed, RolloutCommand::Abort | RolloutCommand::Rollback).then_some("danger")] { (label) " rollout " (id) }
                a href={ "/rollouts/" (id) } { "Cancel" }
            }
        }
        (cli(&format!("fleetctl rollout {command} {id}")))
    };
    layout::page(&session, Section::Rollouts, &format!("{label} rollout {id}?"), body)
}

/// `POST /rollouts/{id}/{command}`.
pub async fn command(
    State(api): State<Api>,
    session: Session,
    Path((id, command)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match Form::checked(&api, &session, &headers, &body) {
        Ok(f) => f,
        Err(refusal) => return refusal.page(Some(&session)),
    };
    let Some((parsed, done, _)) = parse_command(&command) else {
        return error_page(
            Some(&session),
            StatusCode::NOT_FOUND,
            "No such command",
            "Rollouts take pause, resume, abort, rollback, promote and retry.",
        );
    };
    let Ok(id) = id.parse::<u64>() else {
        return error_page(
            Some(&session),
            StatusCode::NOT_FOUND,
            "No such rollout",
            "Rollout ids are numbers.",
        );
    };
    let reason = Some(form.get("reason").to_owned()).filter(|r| !r.is_empty());
    match ops::rollouts::command(&api.fleet(), &session.caller, id, parsed, reason).await {
        Ok(_) => Redirect::to(&format!("/rollouts/{id}?done={done}")).into_response(),
        Err(e) => problem_page(&session, e),
    }
}

/// The fields of a rollout request, as the create form names them.
const REQUEST_FIELDS: [&str; 9] = [
    "release",
    "target",
    "waves",
    "bake",
    "failure_threshold",
    "on_failure",
    "update_deadline",
    "device_timeout",
    "max_parallel",
];

fn request_of(get: &dyn Fn(&str) -> String) -> Result<RolloutRequest, Refusal> {
    let opt = |name: &str| Some(get(name)).filter(|v| !v.is_empty());
    let max_parallel = match opt("max_parallel") {
        None => None,
        Some(v) => Some(v.parse::<u32>().map_err(|_| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "Not a rollout",
                format!("max_parallel: {v:?} is not a whole number"),
            )
        })?),
    };
    Ok(RolloutRequest {
        release: get("release"),
        target: get("target"),
        waves: opt("waves"),
        bake: opt("bake"),
        max_parallel,
        failure_threshold: opt("failure_threshold"),
        on_failure: opt("on_failure"),
        window: None,
        device_timeout: opt("device_timeout"),
        update_deadline: opt("update_deadline"),
        stagger: None,
        exclude_unsatisfiable: false,
        seed: opt("seed").and_then(|s| s.parse().ok()),
    })
}

/// `GET /rollouts/new`: the form, and with `preview=1` the plan it would make (sends nothing).
pub async fn new(State(api): State<Api>, session: Session, RawQuery(raw): RawQuery) -> Response {
    if !session.operates() {
        return error_page(
            Some(&session),
            StatusCode::FORBIDDEN,
            "Not allowed",
            "Creating rollouts needs the operator role.",
        );
    }
    let pairs = query_pairs(raw.as_deref());
    let get = |name: &str| {
        pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim().to_owned()).unwrap_or_default()
    };
    let releases = ops::releases::list(
        &api.store,
        &ops::releases::ReleaseFilter { app: None, limit: Some(1000), after: None },
    )
    .map(|p| p.items)
    .unwrap_or_default();
    let groups = api.store.groups().unwrap_or_default();
    let value = |name: &str, default: &str| {
        let v = get(name);
        if v.is_empty() {
            default.to_owned()
        } else {
            v
        }
    };
    let plan = if get("preview") == "1" {
        Some(match request_of(&get) {
            Ok(request) => ops::rollouts::plan(&api.store, request, UnixMillis::now())
                .await
                .map_err(Refusal::from),
            Err(refusal) => Err(refusal),
        })
    } else {
        None
    };
    let body = html! {
        form.stacked method="get" action="/rollouts/new" {
            input type="hidden" name="preview" value="1";
            div {
                label for="r-release" { "Release" }
                select #r-release name="release" required {
                    @for r in releases.iter().rev() {
                        option value=(r.id()) selected[r.id().as_str() == get("release")] { (r.id()) }
                    }
                }
            }
            div {
                label for="r-target" { "Target" }
                input #r-target name="target" type="text" required list="r-groups" value=(get("target")) aria-describedby="r-target-help";
                datalist #r-groups { @for g in &groups { option value={ "group:" (g.name) } {} } }
                p #r-target-help .help { code { "group:NAME" } ", " code { "selector:k=v" } " or " code { "devices:a,b" } }
            }
            div { label for="r-waves" { "Waves (cumulative)" } input #r-waves name="waves" type="text" value=(value("waves", fleet_api::rollouts::DEFAULT_WAVES)); }
            div { label for="r-bake" { "Bake after each wave" } input #r-bake name="bake" type="text" value=(value("bake", fleet_api::rollouts::DEFAULT_BAKE)); }
            div { label for="r-threshold" { "Failures tolerated (count or %)" } input #r-threshold name="failure_threshold" type="text" value=(value("failure_threshold", "0")); }
            div {
                label for="r-onfail" { "When more fail" }
                select #r-onfail name="on_failure" {
                    option value="pause" selected[get("on_failure") != "rollback"] { "pause" }
                    option value="rollback" selected[get("on_failure") == "rollback"] { "roll back" }
                }
            }
            div { label for="r-deadline" { "Update deadline" } input #r-deadline name="update_deadline" type="text" value=(value("update_deadline", fleet_api::rollouts::DEFAULT_UPDATE_DEADLINE)); }
            div { label for="r-timeout" { "Offline timeout" } input #r-timeout name="device_timeout" type="text" value=(value("device_timeout", fleet_api::rollouts::DEFAULT_DEVICE_TIMEOUT)); }
            div { label for="r-parallel" { "At most updating at once (optional)" } input #r-parallel name="max_parallel" type="text" inputmode="numeric" value=(get("max_parallel")); }
            div.actions { button type="submit" { "Preview the plan" } }
        }
        @match &plan {
            None => {},
            Some(Err(refusal)) => { (refusal.markup()) },
            Some(Ok(plan)) => {
                h2 { "Plan" }
                (plan_markup(plan))
                form.actions method="post" action="/rollouts" {
                    (session.csrf_field())
                    @for name in REQUEST_FIELDS { @let v = get(name); @if !v.is_empty() { input type="hidden" name=(name) value=(v); } }
                    input type="hidden" name="seed" value=(plan.seed);
                    button type="submit" { "Create this rollout" }
                }
                (cli(&format!("fleetctl rollout create {} --target {} --waves {} --seed {}", plan.release, get("target"), value("waves", fleet_api::rollouts::DEFAULT_WAVES), plan.seed)))
            },
        }
    };
    layout::page(&session, Section::Rollouts, "New rollout", body)
}

fn plan_markup(plan: &crate::rollout::driver::Plan) -> Markup {
    let total: usize = plan.waves.iter().map(Vec::len).sum();
    html! {
        p { (plan.release) " to " code { (plan.target.to_string()) } ": " (total) " devices in " (plan.waves.len()) " waves." }
        ol {
            @for wave in &plan.waves {
                li { (wave.len()) " devices: " (wave.iter().take(20).map(ToString::to_string).collect::<Vec<_>>().join(", ")) @if wave.len() > 20 { ", …" } }
            }
        }
        @if !plan.pinned.is_empty() {
            p { strong { "Left out, pinned: " } @for (d, release, why) in &plan.pinned { a href={ "/devices/" (d) } { (d) } " (on " (release) ": " (why) ") " } }
        }
        @if !plan.offline.is_empty() { p { strong { "Offline now" } " (they update when they return): " (plan.offline.len()) } }
        @if !plan.busy.is_empty() {
            div.problems role="alert" { p { "In another active rollout: " @for (d, r) in &plan.busy { (d) " (rollout " a href={ "/rollouts/" (r) } { (r) } ") " } } }
        }
        @if !plan.unsatisfiable.is_empty() {
            div.problems role="alert" { p { "Cannot run the release:" } ul { @for (d, why) in &plan.unsatisfiable { li { a href={ "/devices/" (d) } { (d) } ": " (why.join("; ")) } } } }
        }
    }
}

/// `POST /rollouts`: creates the previewed rollout.
pub async fn create(
    State(api): State<Api>,
    session: Session,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match Form::checked(&api, &session, &headers, &body) {
        Ok(f) => f,
        Err(refusal) => return refusal.page(Some(&session)),
    };
    let request = match request_of(&|name| form.get(name).to_owned()) {
        Ok(r) => r,
        Err(refusal) => return refusal.page(Some(&session)),
    };
    match ops::rollouts::create(&api.fleet(), &session.caller, request, UnixMillis::now()).await {
        Ok(record) => {
            Redirect::to(&format!("/rollouts/{}?done=created", record.id())).into_response()
        }
        Err(e) => problem_page(&session, e),
    }
}
