//! The plain lists: groups, variables and secrets, the audit log and (for admins) tokens. Each reads
//! through the same operation as its API route.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use fleet_api::units::{parse_time, FromNow};
use fleet_proto::UnixMillis;
use maud::html;

use super::layout::{self, ago, cli, notice, Section};
use super::{error_page, problem_page, query_pairs, Form, Session};
use crate::api::Api;
use crate::auth::Role;
use crate::ops;
use crate::ops::device_query::DeviceQuery;

/// Rows of the audit page.
const AUDIT_ROWS: usize = 200;
/// Entries the audit page filters, newest first (`fleetctl audit` reads further back).
const AUDIT_SCANNED: usize = 20_000;

/// `GET /groups`.
pub async fn groups(State(api): State<Api>, session: Session, RawQuery(raw): RawQuery) -> Response {
    let done = query_pairs(raw.as_deref()).into_iter().find(|(k, _)| k == "done").map(|(_, v)| v);
    let groups = match ops::groups::list(&api.store) {
        Ok(g) => g,
        Err(e) => return problem_page(&session, e),
    };
    let body = html! {
        (notice(done.as_deref()))
        @if groups.is_empty() { p { "No groups yet." } }
        @else {
            table {
                thead { tr { th scope="col" { "Group" } th scope="col" { "Selector" } th scope="col" { "What for" } th scope="col" .num { "Devices" } } }
                tbody {
                    @for (g, n) in &groups {
                        tr {
                            th scope="row" { (g.name) }
                            td { code { (g.selector.to_string()) } }
                            td { (g.description) }
                            td.num { a href={ "/devices?" (DeviceQuery { group: g.name.clone(), ..DeviceQuery::default() }.to_query()) } { (n) } }
                        }
                    }
                }
            }
        }
        @if session.operates() {
            h2 { "Create or change a group" }
            form.stacked method="post" action="/groups" {
                (session.csrf_field())
                div { label for="g-name" { "Name" } input #g-name name="name" type="text" required; }
                div { label for="g-selector" { "Label selector" } input #g-selector name="selector" type="text" required placeholder="site=lab,!retired" aria-describedby="g-selector-help";
                    p #g-selector-help .help { "A group with this name already? Its selector and description change, and devices whose variables or secrets change with it get a new desired state." } }
                div { label for="g-description" { "What it is for (optional)" } input #g-description name="description" type="text"; }
                div.actions { button type="submit" { "Save the group" } }
            }
        }
        (cli("fleetctl group create NAME --selector k=v"))
    };
    layout::page(&session, Section::Groups, "Groups", body)
}

/// `POST /groups`: creates a group or changes one, through the same operation as the API.
pub async fn put_group(
    State(api): State<Api>,
    session: Session,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match Form::checked(&api, &session, &headers, &body) {
        Ok(f) => f,
        Err(refusal) => return refusal.page(Some(&session)),
    };
    let request = fleet_api::GroupRequest {
        name: form.get("name").to_owned(),
        selector: form.get("selector").to_owned(),
        description: form.get("description").to_owned(),
    };
    match ops::groups::put(&api.fleet(), &session.caller, request, UnixMillis::now()).await {
        Ok(_) => Redirect::to("/groups?done=saved").into_response(),
        Err(e) => problem_page(&session, e),
    }
}

/// `GET /audit` (`?actor=`, `?target=`, `?action=`: exact matches).
pub async fn audit(State(api): State<Api>, session: Session, RawQuery(raw): RawQuery) -> Response {
    let pairs = query_pairs(raw.as_deref());
    let want = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let (actor, target, action) = (want("actor"), want("target"), want("action"));
    let now = UnixMillis::now();
    let since = match want("since").map(|t| parse_time("since", &t, now, FromNow::Back)) {
        None => None,
        Some(Ok(t)) => Some(t.0),
        Some(Err(e)) => {
            return error_page(Some(&session), StatusCode::BAD_REQUEST, "Bad filter", &e)
        }
    };
    let entries = match ops::admin::audit(&api.store, since, Some(AUDIT_SCANNED)) {
        Ok(e) => e,
        Err(e) => return problem_page(&session, e),
    };
    let shown: Vec<_> = entries
        .iter()
        .rev()
        .filter(|e| actor.as_ref().is_none_or(|a| &e.actor == a))
        .filter(|e| target.as_ref().is_none_or(|t| &e.target == t))
        .filter(|e| action.as_ref().is_none_or(|a| &e.action == a))
        .take(AUDIT_ROWS)
        .collect();
    let body = html! {
        form.filters method="get" action="/audit" aria-label="Filter the audit log" {
            div { label for="a-actor" { "Who (token)" } input #a-actor name="actor" type="text" value=[actor.as_deref()]; }
            div { label for="a-action" { "What" } input #a-action name="action" type="text" placeholder="device.pin" value=[action.as_deref()]; }
            div { label for="a-target" { "Target" } input #a-target name="target" type="text" value=[target.as_deref()]; }
            div { label for="a-since" { "Since" } input #a-since name="since" type="text" placeholder="1h, 2d or 2026-12-01T00:00:00Z" value=[want("since")]; }
            div { button type="submit" { "Filter" } }
        }
        table {
            caption { "Newest first, at most " (AUDIT_ROWS) ", among the newest " (AUDIT_SCANNED) " entries" }
            thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "What" } th scope="col" { "Target" } th scope="col" { "Detail" } } }
            tbody {
                @for e in &shown {
                    tr { td { (ago(e.at, now)) } td { (e.actor) } td { code { (e.action) } } td { (e.target) } td { (e.detail) } }
                }
            }
        }
        (cli("fleetctl audit --since 1h"))
    };
    layout::page(&session, Section::Audit, "Audit log", body)
}

/// `GET /tokens` (admins): names and roles, never secrets.
pub async fn tokens(State(api): State<Api>, session: Session) -> Response {
    if session.caller.role < Role::Admin {
        return error_page(
            Some(&session),
            StatusCode::FORBIDDEN,
            "Not allowed",
            "The token list is for admins.",
        );
    }
    let tokens = match ops::tokens::list(&api.store, &api.bootstrap) {
        Ok(t) => t,
        Err(e) => return problem_page(&session, e),
    };
    let now = UnixMillis::now();
    let body = html! {
        table {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "Created" } th scope="col" { "Expires" } th scope="col" { "State" } } }
            tbody {
                @for t in &tokens {
                    tr {
                        th scope="row" { (t.name) }
                        td { (t.role) }
                        td { (ago(t.created_at, now)) " by " (t.created_by) }
                        td { @if let Some(at) = t.expires_at { (ago(at, now)) } @else { "never" } }
                        td { @if t.revoked_at.is_some() { "revoked" } @else { "valid" } }
                    }
                }
            }
        }
        (cli("fleetctl token create NAME --role viewer"))
    };
    layout::page(&session, Section::Tokens, "Tokens", body)
}

/// The first 12 hex digits of a value's SHA-256: enough to tell values apart, never the value.
fn short_digest(value: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    format!("sha256:{}…", &fleet_proto::hex::encode(digest.as_ref())[..12])
}

/// `GET /config`: variables (name, scope, value digest) and secrets (name, scope, digest, size; never
/// the value, which the server holds only sealed).
pub async fn config(State(api): State<Api>, session: Session) -> Response {
    let read = (|| -> Result<_, ops::Error> {
        let filter = ops::variables::Filter { limit: Some(1000), ..Default::default() };
        let variables = match ops::variables::list(&api.store, &filter)? {
            ops::variables::Listed::Stored(items, _) => items,
            ops::variables::Listed::Resolved(_) => Vec::new(),
        };
        Ok((variables, ops::secrets::list(&api.store)?))
    })();
    let (variables, secrets) = match read {
        Ok(r) => r,
        Err(e) => return problem_page(&session, e),
    };
    let now = UnixMillis::now();
    let body = html! {
        h2 { "Variables" }
        @if variables.is_empty() { p { "None set." } } @else {
            table {
                caption { "The most specific scope wins: device, then group, then fleet; a service's value over the common one. Values are not shown here (a wall screen is not a terminal): compare digests, read values with fleetctl var ls." }
                thead { tr { th scope="col" { "Name" } th scope="col" { "Scope" } th scope="col" { "Value digest" } th scope="col" .num { "Bytes" } th scope="col" { "Set" } } }
                tbody {
                    @for v in &variables {
                        tr {
                            th scope="row" { code { (v.name) } }
                            td { (v.scope.to_string()) }
                            td { code { (short_digest(&v.value)) } }
                            td.num { (v.value.len()) }
                            td { (ago(v.updated_at, now)) " by " (v.updated_by) }
                        }
                    }
                }
            }
        }
        (cli("fleetctl var ls [--group G | --device ID] · fleetctl var set NAME VALUE [--group G | --device ID] [--service S]"))
        h2 { "Secrets" }
        @if secrets.is_empty() { p { "None set." } } @else {
            table {
                caption { "Values are never shown: the server keeps them sealed and sends each device only its own, sealed to its key." }
                thead { tr { th scope="col" { "Name" } th scope="col" { "Scope" } th scope="col" { "Digest" } th scope="col" .num { "Bytes" } th scope="col" { "Set" } } }
                tbody {
                    @for s in &secrets {
                        tr {
                            th scope="row" { code { (s.name) } }
                            td { (s.scope.to_string()) }
                            td { code { (s.digest.get(..19).unwrap_or(&s.digest)) "…" } }
                            td.num { (s.bytes) }
                            td { (ago(s.set_at, now)) " by " (s.set_by) }
                        }
                    }
                }
            }
        }
        (cli("fleetctl secret set NAME [--group G | --device ID] < file"))
    };
    layout::page(&session, Section::Config, "Variables and secrets", body)
}
