//! The plain lists: releases, groups, the audit log and (for admins) tokens. Each reads
//! through the same operation as its API route.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use fleet_proto::UnixMillis;
use maud::html;

use super::layout::{self, ago, cli, Section};
use super::{error_page, problem_page, query_pairs, Session};
use crate::api::Api;
use crate::auth::Role;
use crate::ops;
use crate::ops::device_query::DeviceQuery;

/// Rows of the audit page.
const AUDIT_ROWS: usize = 200;

/// `GET /releases` (`?after=` pages on).
pub async fn releases(
    State(api): State<Api>,
    session: Session,
    RawQuery(raw): RawQuery,
) -> Response {
    let after = query_pairs(raw.as_deref()).into_iter().find(|(k, _)| k == "after").map(|(_, v)| v);
    let filter = ops::releases::ReleaseFilter { app: None, limit: Some(100), after };
    let page = match ops::releases::list(&api.store, &filter) {
        Ok(p) => p,
        Err(e) => return problem_page(&session, e),
    };
    let now = UnixMillis::now();
    let body = html! {
        @if page.items.is_empty() { p { "No releases yet." } }
        @else {
            table {
                thead { tr { th scope="col" { "Release" } th scope="col" { "Services" } th scope="col" { "Images" } th scope="col" { "Created" } th scope="col" { "Devices" } } }
                tbody {
                    @for r in &page.items {
                        tr {
                            th scope="row" { (r.id()) }
                            td { (r.spec.services.iter().map(|s| s.name.to_string()).collect::<Vec<_>>().join(", ")) }
                            td { @for i in &r.images { (i.service) ": " code { (i.resolved.image.to_string()) } br; } }
                            td { (ago(r.created_at, now)) " by " (r.created_by) }
                            td { a href={ "/devices?" (DeviceQuery { release: r.id().to_string(), ..DeviceQuery::default() }.to_query()) } { "running it" } }
                        }
                    }
                }
            }
            @if let Some(next) = &page.next {
                nav.pages aria-label="Pages" { a rel="next" href={ "/releases?" (form_urlencoded::Serializer::new(String::new()).append_pair("after", next).finish()) } { "Next →" } }
            }
        }
        (cli("fleetctl release create APP compose.yaml"))
    };
    layout::page(&session, Section::Releases, "Releases", body)
}

/// `GET /groups`.
pub async fn groups(State(api): State<Api>, session: Session) -> Response {
    let groups = match ops::groups::list(&api.store) {
        Ok(g) => g,
        Err(e) => return problem_page(&session, e),
    };
    let body = html! {
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
        (cli("fleetctl group create NAME --selector k=v"))
    };
    layout::page(&session, Section::Groups, "Groups", body)
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
    let entries = match ops::admin::audit(&api.store, None, Some(100_000)) {
        Ok(e) => e,
        Err(e) => return problem_page(&session, e),
    };
    let now = UnixMillis::now();
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
            div { button type="submit" { "Filter" } }
        }
        table {
            caption { "Newest first, at most " (AUDIT_ROWS) }
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
