//! The page shell every dashboard page shares, and the small pieces pages are built from:
//! times with their age, links to filtered lists, notices. maud escapes every value it
//! renders; nothing here builds markup from strings.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fleet_proto::UnixMillis;
use maud::{html, Markup, DOCTYPE};

use super::Session;
use crate::auth::Role;

/// The dashboard's sections, for the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `/`.
    Overview,
    /// `/devices`.
    Devices,
    /// `/releases`.
    Releases,
    /// `/rollouts`.
    Rollouts,
    /// `/groups`.
    Groups,
    /// `/config` (variables and secrets).
    Config,
    /// `/audit`.
    Audit,
    /// `/tokens` (admins).
    Tokens,
    /// A page of no section (errors).
    Other,
}

const SECTIONS: [(Section, &str, &str); 8] = [
    (Section::Overview, "/", "Overview"),
    (Section::Devices, "/devices", "Devices"),
    (Section::Releases, "/releases", "Releases"),
    (Section::Rollouts, "/rollouts", "Rollouts"),
    (Section::Groups, "/groups", "Groups"),
    (Section::Config, "/config", "Variables and secrets"),
    (Section::Audit, "/audit", "Audit log"),
    (Section::Tokens, "/tokens", "Tokens"),
];

/// Content-Security-Policy of every page: our own script and style only, no inline script,
/// nothing from elsewhere, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Versioned asset URLs, so a new server's CSS and script are never mixed with an old cache.
const CSS: &str = concat!("/static/fleet.css?v=", env!("CARGO_PKG_VERSION"));
const JS: &str = concat!("/static/fleet.js?v=", env!("CARGO_PKG_VERSION"));

/// A whole page: the shell around `body`, with the headers every page carries.
pub fn page(session: &Session, section: Section, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Fleet" }
                link rel="stylesheet" href=(CSS);
                script src=(JS) defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "Fleet" }
                    nav aria-label="Main" {
                        ul {
                            @for (s, href, label) in SECTIONS {
                                @if s != Section::Tokens || session.caller.role >= Role::Admin {
                                    li {
                                        @if s == section {
                                            a href=(href) aria-current="page" { (label) }
                                        } @else {
                                            a href=(href) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    div.who {
                        span { "Signed in as " strong { (session.caller.name) } " (" (session.caller.role) ")" }
                        form method="post" action="/logout" {
                            (session.csrf_field())
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
                div #announce .visually-hidden role="status" aria-live="polite" {}
            }
        }
    };
    respond(StatusCode::OK, markup)
}

/// A page outside a session (login, errors before login).
pub fn bare(status: StatusCode, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Fleet" }
                link rel="stylesheet" href=(CSS);
            }
            body.bare {
                main #main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    respond(status, markup)
}

/// `markup` with the security headers every dashboard answer carries.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Same-origin, not no-referrer: with no-referrer browsers send `Origin: null` on form
    // posts, and the posts are checked by their origin. Other sites still get no referrer.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// A time as its age (`3 min ago`), with the exact time in the markup for tools and tooltips.
pub fn ago(t: UnixMillis, now: UnixMillis) -> Markup {
    let exact = exact(t);
    html! { time datetime=(exact) title=(exact) { (age(t, now)) } }
}

/// `3 min ago`, `in 2 h`, `just now`.
pub fn age(t: UnixMillis, now: UnixMillis) -> String {
    let (secs, future) =
        if t.0 > now.0 { ((t.0 - now.0) / 1000, true) } else { ((now.0 - t.0) / 1000, false) };
    let span = match secs {
        0..=9 => return "just now".to_owned(),
        10..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        3600..=86_399 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86_400),
    };
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// RFC 3339, UTC, to the second.
pub fn exact(t: UnixMillis) -> String {
    jiff::Timestamp::from_millisecond(i64::try_from(t.0).unwrap_or(i64::MAX))
        .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| t.0.to_string())
}

/// A status word with a shape as well as a colour (never colour alone).
pub fn badge(kind: &str, text: &str) -> Markup {
    let mark = match kind {
        "ok" => "✓",
        "bad" => "✗",
        "warn" => "!",
        "busy" => "↻",
        _ => "•",
    };
    html! { span class={ "badge " (kind) } { span aria-hidden="true" { (mark) } " " (text) } }
}

/// The equivalent command line of an action, shown beside it.
pub fn cli(command: &str) -> Markup {
    html! { p.cli { "Same from the command line: " code { (command) } } }
}

/// A message after an action (`?done=`): only fixed texts, never text from the URL.
pub fn notice(done: Option<&str>) -> Markup {
    let text = match done {
        Some("pinned") => "Pinned.",
        Some("unpinned") => "Unpinned.",
        Some("paused") => "The rollout is paused.",
        Some("resumed") => "The rollout is running again.",
        Some("aborted") => "The rollout was aborted; devices keep what they run.",
        Some("rolled-back") => "The rollout is rolling its devices back.",
        Some("promoted") => "The next wave started.",
        Some("retried") => "The failed devices were given another try.",
        Some("created") => "Created.",
        Some("saved") => "Saved.",
        _ => return html! {},
    };
    html! { p.notice role="status" { (text) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_people_say_them() {
        let now = UnixMillis(10_000_000);
        assert_eq!(age(now, now), "just now");
        assert_eq!(age(UnixMillis(now.0 - 42_000), now), "42 s ago");
        assert_eq!(age(UnixMillis(now.0 - 3 * 60_000), now), "3 min ago");
        assert_eq!(age(UnixMillis(now.0 + 2 * 3_600_000), now), "in 2 h");
        assert_eq!(exact(UnixMillis(0)), "1970-01-01T00:00:00Z");
    }
}
