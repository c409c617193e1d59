//! `/devices`: the list (server-side filter, sort and paging, all in the URL) and the device
//! page (desired against running and why they differ, pin, services, update, inventory,
//! events), with pin and unpin.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use fleet_api::units::{parse_time, FromNow};
use fleet_api::PinRequest;
use fleet_proto::command::{CommandAction, CommandOutcome};
use fleet_proto::inventory::Inventory;
use fleet_proto::report::{ContainerState, Health, UpdatePhase};
use fleet_proto::{DeviceId, ServiceName, UnixMillis};
use maud::{html, Markup};

use super::chart;
use super::layout::{self, ago, badge, cli, notice, Section};
use super::{error_page, problem_page, query_pairs, Form, Refusal, Session};
use crate::api::Api;
use crate::devices::{DeviceRecord, DeviceSummary};
use crate::ops;
use crate::ops::device_query::{self, Condition, DeviceQuery, Matcher, SortKey};
use crate::telemetry::TELEMETRY_KEPT;

/// How many of a device's events its page shows.
const EVENTS_SHOWN: usize = 20;

/// `GET /devices`.
pub async fn list(State(api): State<Api>, session: Session, RawQuery(raw): RawQuery) -> Response {
    let pairs = query_pairs(raw.as_deref());
    let query = match DeviceQuery::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        Ok(q) => q,
        Err(e) => {
            return error_page(
                Some(&session),
                StatusCode::BAD_REQUEST,
                "Bad filter",
                &e.to_string(),
            )
        }
    };
    let now = UnixMillis::now();
    let read = (|| -> Result<_, ops::Error> {
        let groups = api.store.groups()?;
        let devices = api.store.device_summaries()?;
        Ok((groups, devices))
    })();
    let (groups, devices) = match read {
        Ok(r) => r,
        Err(e) => return problem_page(&session, e),
    };
    let body = render_list(&query, &groups, devices, session.operates(), now);
    layout::page(&session, Section::Devices, "Devices", body)
}

/// The list page's body (pure: tests and the bench render it without a server).
pub fn render_list(
    query: &DeviceQuery,
    groups: &[crate::groups::Group],
    devices: Vec<DeviceSummary>,
    operates: bool,
    now: UnixMillis,
) -> Markup {
    let matcher = matcher_for(query, groups, now);
    html! {
        (filters(query, groups))
        @match matcher {
            Err(problem) => { div.problems role="alert" { p { (problem) } } },
            Ok(matcher) => {
                @let page = device_query::page(devices, &matcher);
                (table(query, &page, now))
                @if operates && page.matched > 0 { (super::bulk::form(query, page.matched)) }
            },
        }
    }
}

/// The query made ready to run; a group it names must exist.
pub fn matcher_for<'q>(
    query: &'q DeviceQuery,
    groups: &[crate::groups::Group],
    now: UnixMillis,
) -> Result<Matcher<'q>, String> {
    let group_selector = if query.group.is_empty() {
        None
    } else {
        let group = groups.iter().find(|g| g.name == query.group).ok_or_else(|| {
            format!("group: no group {:?} (the groups are at /groups)", query.group)
        })?;
        Some(group.selector.clone())
    };
    Matcher::new(query, group_selector, now).map_err(|e| e.to_string())
}

fn filters(q: &DeviceQuery, groups: &[crate::groups::Group]) -> Markup {
    html! {
        form.filters method="get" action="/devices" role="search" aria-label="Filter devices" {
            div { label for="f-q" { "Search" } input #f-q type="search" name="q" value=(q.text) placeholder="id, label or note"; }
            div { label for="f-selector" { "Label selector" } input #f-selector type="text" name="selector" value=(q.selector) placeholder="site=lab,!retired"; }
            div {
                label for="f-group" { "Group" }
                select #f-group name="group" {
                    option value="" { "any" }
                    @for g in groups { option value=(g.name) selected[g.name == q.group] { (g.name) } }
                }
            }
            div {
                label for="f-state" { "State" }
                select #f-state name="state" {
                    option value="" { "any" }
                    @for c in Condition::ALL { option value=(c.name()) selected[q.condition == Some(c)] { (c.label()) } }
                }
            }
            div { label for="f-release" { "Release" } input #f-release type="text" name="release" value=(q.release); }
            div { label for="f-agent" { "Agent version" } input #f-agent type="text" name="agent" value=(q.agent); }
            div { button type="submit" { "Filter" } }
            @if q.filters() { div { a href="/devices" { "Clear filters" } } }
        }
    }
}

fn table(q: &DeviceQuery, page: &device_query::DevicePage, now: UnixMillis) -> Markup {
    let current = q.page.min(page.pages);
    html! {
        p #count { (page.matched) " devices match" @if page.pages > 1 { "; page " (current) " of " (page.pages) } "." }
        @if page.matched > 0 {
            table aria-describedby="count" {
                thead { tr {
                    (sortable(q, SortKey::Id, "Device"))
                    th scope="col" { "State" }
                    (sortable(q, SortKey::Release, "Release in force"))
                    th scope="col" { "Desired" }
                    (sortable(q, SortKey::Agent, "Agent"))
                    (sortable(q, SortKey::LastSeen, "Last seen"))
                    th scope="col" { "Labels" }
                } }
                tbody {
                    @for d in &page.rows {
                        tr {
                            th scope="row" { a href={ "/devices/" (d.id) } { (d.id) } }
                            td { (conditions(d, now)) }
                            td { (d.release.as_ref().map_or("none", |r| r.as_str())) }
                            td { (d.wanted_release(now).map_or("—", |r| r.as_str())) }
                            td { (d.agent_version.as_deref().unwrap_or("—")) }
                            td { (ago(d.last_seen, now)) }
                            td { (labels(&d.labels)) }
                        }
                    }
                }
            }
        }
        @if page.pages > 1 {
            nav.pages aria-label="Pages" {
                @if current > 1 { a href={ "/devices?" (q.with_page(current - 1).to_query()) } rel="prev" { "← Previous" } }
                span { "Page " (current) " of " (page.pages) }
                @if current < page.pages { a href={ "/devices?" (q.with_page(current + 1).to_query()) } rel="next" { "Next →" } }
            }
        }
    }
}

fn sortable(q: &DeviceQuery, key: SortKey, label: &str) -> Markup {
    let sort = (q.sort == key).then_some(if q.descending { "descending" } else { "ascending" });
    html! {
        th scope="col" aria-sort=[sort] {
            a href={ "/devices?" (q.sorted_by(key).to_query()) } {
                (label)
                @if let Some(dir) = sort { span.visually-hidden { ", sorted " (dir) } span aria-hidden="true" { @if q.descending { " ↓" } @else { " ↑" } } }
            }
        }
    }
}

/// A device's conditions as badges, each in words.
pub fn conditions(d: &DeviceSummary, now: UnixMillis) -> Markup {
    html! {
        @if d.online { (badge("ok", "online")) } @else { (badge("none", "offline")) }
        @for c in [Condition::Updating, Condition::Failed, Condition::Pinned, Condition::Stale] {
            @if c.holds(d, now) {
                " "
                (badge(match c { Condition::Failed => "bad", Condition::Updating => "busy", _ => "warn" }, c.label()))
            }
        }
    }
}

fn labels(labels: &std::collections::BTreeMap<String, String>) -> Markup {
    html! { @for (k, v) in labels { code { (k) "=" (v) } " " } }
}

/// The device id in a path, or the page that says it is none.
fn device_id(text: &str) -> Result<DeviceId, Refusal> {
    DeviceId::new(text).map_err(|_| {
        Refusal::new(StatusCode::NOT_FOUND, "No such device", "That is not a device id.")
    })
}

/// `GET /devices/{id}`.
pub async fn show(
    State(api): State<Api>,
    session: Session,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let id = match device_id(&id) {
        Ok(id) => id,
        Err(refusal) => return refusal.page(Some(&session)),
    };
    let now = UnixMillis::now();
    let read = (|| -> Result<_, ops::Error> {
        let record =
            api.store.device(&id)?.ok_or_else(|| ops::Error::UnknownDevice { id: id.clone() })?;
        let inventory = api.store.inventory(&id)?;
        let events = api.store.events(&id, EVENTS_SHOWN)?;
        let points = api.store.telemetry_points(&id, None, TELEMETRY_KEPT as usize)?;
        Ok((record, inventory, events, points))
    })();
    let (record, inventory, events, points) = match read {
        Ok(r) => r,
        Err(e) => return problem_page(&session, e),
    };
    let pairs = query_pairs(raw.as_deref());
    let param = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let range = chart::range(&param("range").unwrap_or_default());
    let points: Vec<_> = points.into_iter().map(|(_, p)| p).collect();
    let body = html! {
        (notice(param("done").as_deref()))
        (render_device(&record, inventory.as_ref(), &events, &session, now))
        (telemetry(&record.id, &points, range, now))
    };
    layout::page(&session, Section::Devices, &format!("Device {id}"), body)
}

fn render_device(
    d: &DeviceRecord,
    inventory: Option<&Inventory>,
    events: &[fleet_proto::event::Event],
    session: &Session,
    now: UnixMillis,
) -> Markup {
    let report = d.last_report.as_ref();
    let summary = DeviceSummary::from(d);
    html! {
        p { (conditions(&summary, now)) " — last heard from " (ago(d.last_seen, now)) }
        h2 { "Release" }
        dl.facts {
            dt { "Running" } dd { (d.release.as_ref().map_or("none", |r| r.as_str())) }
            dt { "Desired" } dd { (d.wanted_release(now).map_or("none", |r| r.as_str())) }
            @if let Some(why) = why_different(&summary, now) { dt { "Why they differ" } dd { (why) } }
            dt { "Agent" } dd {
                (d.agent_version.as_deref().unwrap_or("unknown"))
                @if let Some(want) = &d.desired_agent { @if Some(want) != d.agent_version.as_ref() { " (desired " (want) ")" } }
            }
            @if !d.labels.is_empty() { dt { "Labels" } dd { (labels(&d.labels)) } }
            @if !d.notes.is_empty() { dt { "Notes" } dd { (d.notes) } }
        }
        h2 { "Pin" }
        @match d.pin_at(now) {
            Some(pin) => {
                p {
                    "Held on " strong { (pin.release) } " by " (pin.pinned_by) " " (ago(pin.pinned_at, now))
                    @if let Some(until) = pin.until { ", until " (ago(UnixMillis(until.0), now)) }
                    ". Why: " (pin.reason)
                }
                @if session.operates() {
                    form.actions method="post" action={ "/devices/" (d.id) "/unpin" } {
                        (session.csrf_field())
                        button type="submit" { "Unpin" }
                        (cli(&format!("fleetctl device unpin {}", d.id)))
                    }
                }
            },
            None => {
                p { "Not pinned: rollouts move it." }
                @if session.operates() {
                    form.stacked method="post" action={ "/devices/" (d.id) "/pin" } {
                        (session.csrf_field())
                        div { label for="pin-release" { "Release" } input #pin-release name="release" type="text" required value=[d.release.as_ref().map(|r| r.as_str())]; }
                        div { label for="pin-reason" { "Reason" } input #pin-reason name="reason" type="text" required maxlength="500" aria-describedby="pin-reason-help";
                            p #pin-reason-help .help { "Required: the next engineer must know why the robot is held." } }
                        div { label for="pin-until" { "Until (optional)" } input #pin-until name="until" type="text" placeholder="8h, 3d or 2026-12-24T18:00:00Z"; }
                        div.actions { button type="submit" { "Pin" } }
                        (cli(&format!("fleetctl device pin {} RELEASE --reason \"…\"", d.id)))
                    }
                }
            },
        }
        @if let Some(r) = report {
            h2 { "Update" }
            p {
                @if r.update.phase == UpdatePhase::Idle { "No update in progress." }
                @else {
                    (badge("busy", &format!("{:?}", r.update.phase).to_lowercase()))
                    @if let Some(g) = r.update.target_generation { " generation " (g) }
                    @if let Some(pull) = r.update.pull {
                        " — downloaded " (mib(pull.bytes_done))
                        @if let Some(total) = pull.bytes_total.filter(|t| *t > 0) { " of " (mib(total)) " (" (pull.bytes_done * 100 / total) " %)" }
                    }
                }
                @if let Some(reason) = device_query::failure_reason(&summary) { " Last update failed: " (reason) }
            }
            h2 { "Services" }
            @if r.services.is_empty() { p { "No services run." } } @else {
                table {
                    caption { "As reported " (ago(r.reported_at, now)) }
                    thead { tr { th scope="col" { "Service" } th scope="col" { "State" } th scope="col" { "Health" } th scope="col" .num { "Restarts" } th scope="col" { "Last error" } } }
                    tbody {
                        @for s in &r.services {
                            tr {
                                th scope="row" { (s.name) }
                                td { (container_state(&s.state)) }
                                td { (health(&s.health)) }
                                td.num { (s.restarts) }
                                td { (s.last_error.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
        @if session.operates() && d.refusal().is_none() { (commands(d, session)) }
        @if let Some(inv) = inventory { (render_inventory(inv)) }
        h2 { "Events" }
        @if events.is_empty() { p { "None recorded." } } @else {
            table {
                thead { tr { th scope="col" { "When" } th scope="col" { "Severity" } th scope="col" { "What" } } }
                tbody {
                    @for e in events.iter().rev() {
                        tr { td { (ago(e.at, now)) } td { (format!("{:?}", e.severity).to_lowercase()) } td { (e.message) } }
                    }
                }
            }
        }
    }
}

/// The commands an operator can send the device; each waits for the device's answer.
fn commands(d: &DeviceRecord, session: &Session) -> Markup {
    let services: Vec<String> =
        d.last_report.iter().flat_map(|r| r.services.iter().map(|s| s.name.to_string())).collect();
    let action = format!("/devices/{}/command", d.id);
    html! {
        h2 { "Commands" }
        p.help { "Each waits up to 30 s for the device's answer; an offline device does not answer." }
        @if !services.is_empty() {
            form.actions method="post" action=(action) {
                (session.csrf_field())
                label for="cmd-service" { "Service" }
                select #cmd-service name="service" { @for s in &services { option value=(s) { (s) } } }
                button type="submit" name="action" value="restart" { "Restart service" }
                button.secondary type="submit" name="action" value="logs" { "Show its last log lines" }
            }
        }
        div.actions {
            form method="post" action=(action) {
                (session.csrf_field())
                button.secondary type="submit" name="action" value="refresh-inventory" { "Refresh inventory" }
            }
            form method="post" action=(action) {
                (session.csrf_field())
                button.danger type="submit" name="action" value="reboot" { "Reboot…" }
            }
        }
        (cli(&format!("fleetctl device restart {} SERVICE · fleetctl device logs {} SERVICE · fleetctl device reboot {}", d.id, d.id, d.id)))
    }
}

/// The device's telemetry over `range`: one chart per numeric series, numbers alongside.
fn telemetry(
    id: &DeviceId,
    points: &[fleet_proto::telemetry::Point],
    range: chart::Range,
    now: UnixMillis,
) -> Markup {
    let series = chart::bucket(points, range, now);
    html! {
        h2 #telemetry { "Telemetry" }
        nav.ranges aria-label="Time range" {
            @for r in chart::RANGES {
                @if r == range {
                    a href={ "/devices/" (id) "?range=" (r.name) "#telemetry" } aria-current="true" { strong { (r.name) } }
                } @else {
                    a href={ "/devices/" (id) "?range=" (r.name) "#telemetry" } { (r.name) }
                }
                " "
            }
        }
        @if series.is_empty() {
            p { "No numbers reported in the last " (range.name) "." }
        } @else {
            div.charts { @for s in &series { (chart::chart(s, range, now)) } }
        }
        (cli(&format!("fleetctl device metrics {id} --metric host.cpu.percent")))
    }
}

/// Why the running release is not the desired one, in words, if it is not.
fn why_different(d: &DeviceSummary, now: UnixMillis) -> Option<String> {
    let want = d.wanted_release(now)?;
    if d.release.as_ref() == Some(want) {
        return None;
    }
    Some(if let Some(reason) = device_query::failure_reason(d) {
        format!("its update failed: {reason}")
    } else if !d.online {
        "it is offline; it takes the desired state when it reconnects".to_owned()
    } else if d.desired_generation > d.accepted_generation {
        "the desired state was sent and not accepted yet".to_owned()
    } else if Condition::Updating.holds(d, now) {
        "it is updating".to_owned()
    } else {
        "the desired state has not been published to it yet".to_owned()
    })
}

fn container_state(state: &ContainerState) -> Markup {
    let word = format!("{state:?}").to_lowercase();
    let kind = match state {
        ContainerState::Running => "ok",
        ContainerState::Exited | ContainerState::Dead => "bad",
        _ => "none",
    };
    badge(kind, &word)
}

fn health(h: &Health) -> Markup {
    let word = format!("{h:?}").to_lowercase();
    let kind = match h {
        Health::Healthy => "ok",
        Health::Unhealthy => "bad",
        Health::Starting => "busy",
        _ => "none",
    };
    badge(kind, &word)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

fn render_inventory(inv: &Inventory) -> Markup {
    html! {
        h2 { "Inventory" }
        dl.facts {
            dt { "System" } dd { (inv.os.pretty_name) ", kernel " (inv.kernel) ", " (inv.arch) }
            dt { "CPU" } dd { (inv.cpus.count) " × " (inv.cpus.model) }
            dt { "Memory" } dd { (mib(inv.memory_bytes)) }
            @if let Some(e) = &inv.engine { dt { "Engine" } dd { (e.name) " " (e.version) } }
            @for disk in &inv.disks { dt { "Disk " (disk.mount) } dd { (mib(disk.available_bytes)) " free of " (mib(disk.total_bytes)) } }
        }
        @let hardware = hardware_rows(inv);
        @if !hardware.is_empty() {
            table {
                caption { "Hardware, by the stable names releases ask for" }
                thead { tr { th scope="col" { "Kind" } th scope="col" { "Node" } th scope="col" { "Stable id" } } }
                tbody { @for (kind, node, stable) in &hardware { tr { td { (kind) } td { code { (node) } } td { code { (stable) } } } } }
            }
        }
    }
}

fn hardware_rows(inv: &Inventory) -> Vec<(&'static str, String, String)> {
    let first = |v: &[String]| v.first().cloned().unwrap_or_default();
    let mut rows = Vec::new();
    rows.extend(inv.serial.iter().map(|s| ("serial", s.dev_path.clone(), first(&s.by_id))));
    rows.extend(inv.video.iter().map(|v| ("video", v.dev_path.clone(), first(&v.by_id))));
    rows.extend(inv.gpio.iter().map(|g| ("gpio", g.name.clone(), g.label.clone())));
    rows.extend(inv.i2c.iter().map(|b| ("i2c", format!("i2c-{}", b.bus), b.name.clone())));
    rows.extend(
        inv.spi
            .iter()
            .map(|s| ("spi", format!("spidev{}.{}", s.bus, s.chip_select), String::new())),
    );
    rows.extend(inv.can.iter().map(|c| ("can", c.clone(), String::new())));
    rows.extend(
        inv.gpus
            .iter()
            .map(|g| ("gpu", g.dev_paths.first().cloned().unwrap_or_default(), g.id.clone())),
    );
    rows.extend(
        inv.accelerators.iter().map(|a| ("accelerator", a.dev_path.clone(), a.kind.clone())),
    );
    rows
}

/// `POST /devices/{id}/command`: sends one command and shows the device's answer. A reboot
/// asks for confirmation first (`confirm=yes` in the form).
pub async fn command(
    State(api): State<Api>,
    session: Session,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match Form::checked(&api, &session, &headers, &body) {
        Ok(f) => f,
        Err(refusal) => return refusal.page(Some(&session)),
    };
    let id = match device_id(&id) {
        Ok(id) => id,
        Err(refusal) => return refusal.page(Some(&session)),
    };
    let service = || ServiceName::new(form.get("service")).map_err(|e| format!("service: {e}"));
    let action = match form.get("action") {
        "restart" => service().map(|service| CommandAction::RestartService { service }),
        "logs" => service().map(|service| CommandAction::FetchLogs { service, tail: 50 }),
        "refresh-inventory" => Ok(CommandAction::RefreshInventory),
        "reboot" if form.get("confirm") == "yes" => Ok(CommandAction::Reboot),
        "reboot" => {
            let body = html! {
                p { strong { "What happens: " } "the device restarts through its init system, if its agent's configuration allows reboots. Its services stop and start again with it; a robot in motion stops." }
                form.actions method="post" action={ "/devices/" (id) "/command" } {
                    (session.csrf_field())
                    input type="hidden" name="action" value="reboot";
                    input type="hidden" name="confirm" value="yes";
                    button.danger type="submit" { "Reboot " (id) }
                    a href={ "/devices/" (id) } { "Cancel" }
                }
                (cli(&format!("fleetctl device reboot {id}")))
            };
            return layout::page(&session, Section::Devices, &format!("Reboot {id}?"), body);
        }
        other => {
            Err(format!("action: {other:?} is not restart, logs, refresh-inventory or reboot"))
        }
    };
    let action = match action {
        Ok(a) => a,
        Err(e) => return error_page(Some(&session), StatusCode::BAD_REQUEST, "Not sent", &e),
    };
    let what = format!("{action:?}");
    let messaging = ops::devices::Messaging { mqtt: &api.mqtt, waiters: &api.waiters };
    let request = fleet_api::CommandRequest { action, timeout_secs: Some(30) };
    let result = ops::devices::command(
        &api.fleet(),
        messaging,
        &session.caller,
        id.clone(),
        request,
        UnixMillis::now(),
    )
    .await;
    let result = match result {
        Ok(r) => r,
        Err(e) => return problem_page(&session, e),
    };
    let body = html! {
        @match &result.outcome {
            CommandOutcome::Done { output } => {
                p.notice role="status" { "Done." }
                @if !output.is_empty() { pre.output { @for line in output { (line) "\n" } } }
            },
            CommandOutcome::Failed { reason } => { div.problems role="alert" { p { "It ran and failed: " (reason) } } },
            CommandOutcome::Refused { reason } => { div.problems role="alert" { p { "The device refused it: " (reason) } } },
        }
        p { a href={ "/devices/" (id) } { "Back to " (id) } }
    };
    layout::page(&session, Section::Devices, &format!("{what} on {id}"), body)
}

/// `POST /devices/{id}/pin`.
pub async fn pin(
    State(api): State<Api>,
    session: Session,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match Form::checked(&api, &session, &headers, &body) {
        Ok(f) => f,
        Err(refusal) => return refusal.page(Some(&session)),
    };
    let id = match device_id(&id) {
        Ok(id) => id,
        Err(refusal) => return refusal.page(Some(&session)),
    };
    let now = UnixMillis::now();
    let until = match form.get("until") {
        "" => None,
        text => match parse_time("until", text, now, FromNow::Ahead) {
            Ok(t) => Some(t.0),
            Err(e) => return error_page(Some(&session), StatusCode::BAD_REQUEST, "Not pinned", &e),
        },
    };
    let request = PinRequest {
        release: form.get("release").to_owned(),
        reason: form.get("reason").to_owned(),
        until,
        force: false,
    };
    match ops::devices::pin(&api.fleet(), &session.caller, id.clone(), request, now).await {
        Ok(_) => Redirect::to(&format!("/devices/{id}?done=pinned")).into_response(),
        Err(e) => problem_page(&session, e),
    }
}

/// `POST /devices/{id}/unpin`.
pub async fn unpin(
    State(api): State<Api>,
    session: Session,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refusal) = Form::checked(&api, &session, &headers, &body) {
        return refusal.page(Some(&session));
    }
    let id = match device_id(&id) {
        Ok(id) => id,
        Err(refusal) => return refusal.page(Some(&session)),
    };
    match ops::devices::unpin(&api.fleet(), &session.caller, id.clone(), false, UnixMillis::now())
        .await
    {
        Ok(_) => Redirect::to(&format!("/devices/{id}?done=unpinned")).into_response(),
        Err(e) => problem_page(&session, e),
    }
}
