//! `/`: the fleet at a glance. Devices by condition, rollouts that run or need attention,
//! releases in use per group, recent events. Every number links to the list behind it.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use fleet_proto::UnixMillis;
use maud::{html, Markup};

use super::layout::{self, ago, Section};
use super::rollouts::{run_state_badge, wave_bars};
use super::{problem_page, Session};
use crate::api::Api;
use crate::devices::DeviceSummary;
use crate::groups::Group;
use crate::ops;
use crate::ops::device_query::{census, DeviceQuery};
use crate::records::rollout::RolloutRecord;
use crate::rollout::RunState;

/// How many audit entries the overview shows.
const RECENT_EVENTS: usize = 15;
/// How many active rollouts the overview draws (paused ones first); the rest are a link away.
const ROLLOUTS_DRAWN: usize = 10;

/// `GET /`.
pub async fn show(State(api): State<Api>, session: Session) -> Response {
    let now = UnixMillis::now();
    let read = (|| -> Result<_, ops::Error> {
        let devices = api.store.device_summaries()?;
        let rollouts = ops::rollouts::list(&api.store)?;
        let groups = api.store.groups()?;
        let events = api.store.audit(UnixMillis(0), RECENT_EVENTS)?;
        Ok((devices, rollouts, groups, events))
    })();
    let (devices, rollouts, groups, events) = match read {
        Ok(read) => read,
        Err(e) => return problem_page(&session, e),
    };
    let body = render(&devices, &rollouts, &groups, &events, now);
    layout::page(&session, Section::Overview, "Overview", body)
}

/// The page's body (pure: the bench and the tests render it without a server).
pub fn render(
    devices: &[DeviceSummary],
    rollouts: &[RolloutRecord],
    groups: &[Group],
    events: &[crate::audit::AuditEntry],
    now: UnixMillis,
) -> Markup {
    let counts = census(devices, now);
    let active: Vec<&RolloutRecord> =
        rollouts.iter().filter(|r| r.rollout.state().is_active()).collect();
    let attention: Vec<&RolloutRecord> = active
        .iter()
        .copied()
        .filter(|r| matches!(r.rollout.state(), RunState::Paused { .. }))
        .collect();
    let running = active.iter().filter(|r| matches!(r.rollout.state(), RunState::Running));
    let drawn: Vec<&RolloutRecord> =
        attention.iter().chain(running).copied().take(ROLLOUTS_DRAWN).collect();
    html! {
        @if !attention.is_empty() {
            section.attention aria-labelledby="attention" {
                h2 #attention { "Needs attention" }
                ul {
                    @for r in &attention {
                        li {
                            a href={ "/rollouts/" (r.id()) } { "Rollout " (r.id()) " of " (r.rollout.spec().release) }
                            " — " (run_state_badge(r.rollout.state()))
                        }
                    }
                }
            }
        }
        section aria-labelledby="devices" {
            h2 #devices { "Devices" }
            ul.cards {
                li {
                    a href="/devices" {
                        span.count { (devices.len()) }
                        "All devices"
                    }
                }
                @for (condition, n) in &counts {
                    li {
                        a href={ "/devices?" (DeviceQuery { condition: Some(*condition), ..DeviceQuery::default() }.to_query()) } {
                            span.count { (n) }
                            (condition.label())
                        }
                    }
                }
            }
        }
        section aria-labelledby="rollouts" {
            h2 #rollouts { "Active rollouts" }
            @if active.is_empty() {
                p { "No rollout is running. " a href="/rollouts" { "All rollouts" } }
            }
            @if active.len() > ROLLOUTS_DRAWN {
                p { (active.len()) " active; " (ROLLOUTS_DRAWN) " drawn here, paused ones first. " a href="/rollouts" { "All rollouts" } }
            }
            @for r in &drawn {
                article.rollout {
                    h3 {
                        a href={ "/rollouts/" (r.id()) } { "Rollout " (r.id()) }
                        " → " (r.rollout.spec().release) " " (run_state_badge(r.rollout.state()))
                    }
                    (wave_bars(&r.rollout.status()))
                }
            }
        }
        section aria-labelledby="in-use" {
            h2 #in-use { "Releases in use per group" }
            (releases_per_group(devices, groups))
        }
        section aria-labelledby="events" {
            h2 #events { "Recent events" }
            table {
                thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "What" } th scope="col" { "Target" } th scope="col" { "Detail" } } }
                tbody {
                    @for e in events.iter().rev() {
                        tr {
                            td { (ago(e.at, now)) }
                            td { (e.actor) }
                            td { code { (e.action) } }
                            td { (e.target) }
                            td { (e.detail) }
                        }
                    }
                }
            }
            p { a href="/audit" { "The whole audit log" } }
        }
    }
}

fn releases_per_group(devices: &[DeviceSummary], groups: &[Group]) -> Markup {
    html! {
        @if groups.is_empty() {
            p { "No groups yet (" code { "fleetctl group create NAME --selector k=v" } ")." }
        } @else {
            table {
                thead { tr { th scope="col" { "Group" } th scope="col" { "Release in force" } th scope="col" .num { "Devices" } } }
                tbody {
                    @for g in groups {
                        @let by_release = in_force(devices, g);
                        @if by_release.is_empty() {
                            tr { th scope="row" { (g.name) } td { "—" } td.num { "0" } }
                        }
                        @for (release, n) in &by_release {
                            tr {
                                th scope="row" { (g.name) }
                                td { (release.as_deref().unwrap_or("none")) }
                                td.num {
                                    @let q = DeviceQuery {
                                        group: g.name.clone(),
                                        release: release.clone().unwrap_or_default(),
                                        ..DeviceQuery::default()
                                    };
                                    a href={ "/devices?" (q.to_query()) } { (n) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn in_force(devices: &[DeviceSummary], group: &Group) -> BTreeMap<Option<String>, usize> {
    let mut counts = BTreeMap::new();
    for d in devices.iter().filter(|d| group.selector.matches(&d.labels)) {
        *counts.entry(d.release.as_ref().map(ToString::to_string)).or_insert(0) += 1;
    }
    counts
}
