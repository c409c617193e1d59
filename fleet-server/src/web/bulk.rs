//! `/bulk/devices` (not under `/devices/`, where every name is a device id): one change (pin, unpin, label) to every device a filter matches, previewed
//! device by device before it is made ([`crate::ops::bulk`]).

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use fleet_api::units::{parse_time, FromNow};
use fleet_api::{DeviceChange, PinRequest};
use fleet_proto::{DeviceId, UnixMillis};
use maud::{html, Markup};

use super::devices::matcher_for;
use super::layout::{self, Section};
use super::{query_pairs, Form, Refusal, Session};
use crate::api::Api;
use crate::ops;
use crate::ops::bulk::{preview, BulkAction, BulkPreview};
use crate::ops::device_query::DeviceQuery;

/// Devices listed by id in a preview (the rest are counted).
const LISTED: usize = 1000;
/// The filter's parameters, carried from the list to the preview to the change.
const FILTER_PARAMS: [&str; 6] = ["q", "selector", "group", "release", "agent", "state"];
/// The action's parameters.
const ACTION_PARAMS: [&str; 6] = ["action", "pin_release", "reason", "until", "key", "value"];

/// The form under the devices list that starts a bulk change (operators).
pub fn form(query: &DeviceQuery, matched: usize) -> Markup {
    let filter = query.to_query();
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(filter.as_bytes()).into_owned().collect();
    html! {
        details.bulk {
            summary { "Change all " (matched) " matching devices…" }
            form.stacked method="get" action="/bulk/devices" {
                @for (k, v) in &pairs {
                    @if FILTER_PARAMS.contains(&k.as_str()) { input type="hidden" name=(k) value=(v); }
                }
                fieldset {
                    legend { "Action" }
                    label { input type="radio" name="action" value="pin" checked; " Pin to a release" }
                    label { input type="radio" name="action" value="unpin"; " Unpin" }
                    label { input type="radio" name="action" value="label"; " Set a label" }
                    label { input type="radio" name="action" value="unlabel"; " Remove a label" }
                }
                div { label for="b-release" { "Release (pin)" } input #b-release name="pin_release" type="text"; }
                div { label for="b-reason" { "Reason (pin)" } input #b-reason name="reason" type="text" maxlength="500"; }
                div { label for="b-until" { "Until (pin, optional)" } input #b-until name="until" type="text" placeholder="8h, 3d or 2026-12-24T18:00:00Z"; }
                div { label for="b-key" { "Label key" } input #b-key name="key" type="text"; }
                div { label for="b-value" { "Label value (set)" } input #b-value name="value" type="text"; }
                div.actions { button type="submit" { "Preview the change" } }
                p.help { "Nothing changes yet: the next page lists exactly which devices would change." }
            }
        }
    }
}

/// The action a request names, with the field at fault when it names none or a bad one.
fn action_of(get: impl Fn(&str) -> String, now: UnixMillis) -> Result<BulkAction, Refusal> {
    let bad = |detail: String| Refusal::new(StatusCode::BAD_REQUEST, "Not a bulk change", detail);
    match get("action").as_str() {
        "pin" => {
            let release = get("pin_release");
            let reason = get("reason");
            if release.is_empty() || reason.is_empty() {
                return Err(bad("pin_release and reason: a pin needs a release and a reason (the next engineer must know why the robot is held)".into()));
            }
            let until = match get("until").as_str() {
                "" => None,
                text => Some(parse_time("until", text, now, FromNow::Ahead).map_err(bad)?),
            };
            Ok(BulkAction::Pin { release, reason, until })
        }
        "unpin" => Ok(BulkAction::Unpin),
        "label" | "unlabel" => {
            let key = get("key");
            if let Err(why) = crate::groups::check_label_key(&key) {
                return Err(bad(format!("key: {why}")));
            }
            let value = (get("action") == "label").then(|| get("value"));
            if let Some(Err(why)) = value.as_deref().map(crate::groups::check_label_value) {
                return Err(bad(format!("value: {why}")));
            }
            Ok(BulkAction::Label { key, value })
        }
        other => Err(bad(format!("action: {other:?} is not pin, unpin, label or unlabel"))),
    }
}

/// The filter's matches and the preview, read from the store now.
fn compute(
    api: &Api,
    pairs: &[(String, String)],
    now: UnixMillis,
) -> Result<(DeviceQuery, BulkAction, BulkPreview), Refusal> {
    let get = |name: &str| {
        pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim().to_owned()).unwrap_or_default()
    };
    let filter = pairs.iter().filter(|(k, _)| FILTER_PARAMS.contains(&k.as_str()));
    let query = DeviceQuery::from_pairs(filter.map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "Bad filter", e.to_string()))?;
    let action = action_of(get, now)?;
    let groups = api.store.groups().map_err(ops::Error::from)?;
    let matcher = matcher_for(&query, &groups, now)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "Bad filter", e))?;
    let devices = api.store.device_summaries().map_err(ops::Error::from)?;
    let matching: Vec<_> = devices.into_iter().filter(|d| matcher.matches(d)).collect();
    let previewed = preview(&matching, &action, now);
    Ok((query, action, previewed))
}

fn operator(session: &Session) -> Result<(), Refusal> {
    if session.operates() {
        Ok(())
    } else {
        Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "Not allowed",
            "Changing devices needs the operator role.",
        ))
    }
}

/// `GET /devices/bulk`: the preview.
pub async fn show(State(api): State<Api>, session: Session, RawQuery(raw): RawQuery) -> Response {
    let pairs = query_pairs(raw.as_deref());
    let now = UnixMillis::now();
    let (query, action, previewed) =
        match operator(&session).and_then(|()| compute(&api, &pairs, now)) {
            Ok(c) => c,
            Err(refusal) => return refusal.page(Some(&session)),
        };
    let carried: Vec<&(String, String)> = pairs
        .iter()
        .filter(|(k, _)| FILTER_PARAMS.contains(&k.as_str()) || ACTION_PARAMS.contains(&k.as_str()))
        .collect();
    let body = html! {
        p { strong { (action.describe()) } " on the devices matching " a href={ "/devices?" (query.to_query()) } { "this filter" } "." }
        h2 { (previewed.change.len()) " devices change" }
        (ids(&previewed.change))
        @if !previewed.unchanged.is_empty() {
            h2 { (previewed.unchanged.len()) " matching devices stay as they are" }
            ul { @for (id, why) in previewed.unchanged.iter().take(LISTED) { li { a href={ "/devices/" (id) } { (id) } ": " (why) } } }
        }
        @if previewed.change.is_empty() {
            p { "Nothing to do." }
        } @else {
            form.actions method="post" action="/bulk/devices" {
                (session.csrf_field())
                @for (k, v) in &carried { input type="hidden" name=(k) value=(v); }
                input type="hidden" name="fingerprint" value=(previewed.fingerprint);
                button type="submit" { "Apply to " (previewed.change.len()) " devices" }
                a href={ "/devices?" (query.to_query()) } { "Cancel" }
            }
        }
    };
    layout::page(&session, Section::Devices, "Preview a change to many devices", body)
}

fn ids(ids: &[DeviceId]) -> Markup {
    html! {
        @if !ids.is_empty() {
            ul.ids {
                @for id in ids.iter().take(LISTED) { li { a href={ "/devices/" (id) } { (id) } } }
            }
            @if ids.len() > LISTED { p { "… and " (ids.len() - LISTED) " more." } }
        }
    }
}

/// `POST /devices/bulk`: the change, if the devices are still the ones previewed.
pub async fn apply(
    State(api): State<Api>,
    session: Session,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match Form::checked(&api, &session, &headers, &body) {
        Ok(f) => f,
        Err(refusal) => return refusal.page(Some(&session)),
    };
    let pairs: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let now = UnixMillis::now();
    let (query, action, previewed) = match compute(&api, &pairs, now) {
        Ok(c) => c,
        Err(refusal) => return refusal.page(Some(&session)),
    };
    if previewed.fingerprint != form.get("fingerprint") {
        let again = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs.iter().filter(|(k, _)| k != "_csrf" && k != "fingerprint"))
            .finish();
        return Refusal::new(
            StatusCode::CONFLICT,
            "The devices changed",
            format!("Nothing was changed: since the preview, devices joined or left the filter, or changed so that the action would do something else to them. Review the preview again: /bulk/devices?{again}"),
        )
        .page(Some(&session));
    }
    let fleet = api.fleet();
    let mut refused: Vec<(DeviceId, String)> = Vec::new();
    for id in &previewed.change {
        let result = match &action {
            BulkAction::Pin { release, reason, until } => {
                let request = PinRequest {
                    release: release.clone(),
                    reason: reason.clone(),
                    until: until.map(|u| u.0),
                    force: false,
                };
                ops::devices::pin(&fleet, &session.caller, id.clone(), request, now).await.map(drop)
            }
            BulkAction::Unpin => {
                ops::devices::unpin(&fleet, &session.caller, id.clone(), false, now).await.map(drop)
            }
            BulkAction::Label { key, value } => {
                let change = DeviceChange {
                    labels: [(key.clone(), value.clone())].into_iter().collect(),
                    notes: None,
                };
                ops::devices::change(&fleet, &session.caller, id.clone(), change, now)
                    .await
                    .map(drop)
            }
        };
        if let Err(e) = result {
            refused.push((id.clone(), e.to_string()));
        }
    }
    let changed = previewed.change.len() - refused.len();
    let body = html! {
        p.notice role="status" { (action.describe()) ": " (changed) " devices changed" @if !refused.is_empty() { ", " (refused.len()) " refused" } "." }
        @if !refused.is_empty() {
            table {
                caption { "Refused, each unchanged" }
                thead { tr { th scope="col" { "Device" } th scope="col" { "Why" } } }
                tbody { @for (id, why) in &refused { tr { td { a href={ "/devices/" (id) } { (id) } } td { (why) } } } }
            }
        }
        p { a href={ "/devices?" (query.to_query()) } { "Back to the devices" } }
    };
    layout::page(&session, Section::Devices, "Changed many devices", body)
}
