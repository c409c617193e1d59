//! The dashboard: server-rendered HTML at `/` on the API's listener, for fleet managers.
//!
//! A thin layer over the same operations the REST API performs ([`crate::ops`]): the rules,
//! validation and audit are theirs, never repeated here. Pages work without JavaScript (every
//! action is a form that posts and redirects); `static/fleet.js` only adds live updates over
//! Server-Sent Events.
//!
//! Invariants:
//! - Every page but `/login` needs a session ([`Session`]); a viewer's pages hold no control
//!   that changes anything, and every change checks the role again on the server.
//! - Every form that changes something carries the session's CSRF token, and its post is
//!   refused without it ([`Form::checked`]); cross-site posts are refused by `Origin` too.
//! - Every value is escaped by the template engine (maud); every answer carries a
//!   Content-Security-Policy without inline script ([`layout::CSP`]).
//! - A page's size is bounded by its page size, not by the fleet.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use fleet_proto::UnixMillis;
use maud::{html, Markup};

use crate::api::token_record;
use crate::api::{Api, Problem};
use crate::auth::{Caller, Role};

mod assets;
mod bulk;
mod chart;
mod devices;
mod layout;
pub(crate) mod live;
mod login;
mod overview;
mod releases;
mod rollouts;
pub mod session;
mod tables;

pub use live::LiveHub;
pub use session::SessionKey;

/// The dashboard's routes (state: the API's).
pub fn router() -> Router<Api> {
    Router::new()
        .route("/", get(overview::show))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/static/{file}", get(assets::serve))
        .route("/devices", get(devices::list))
        .route("/bulk/devices", get(bulk::show).post(bulk::apply))
        .route("/devices/{id}", get(devices::show))
        .route("/devices/{id}/pin", post(devices::pin))
        .route("/devices/{id}/unpin", post(devices::unpin))
        .route("/devices/{id}/command", post(devices::command))
        .route("/rollouts", get(rollouts::list).post(rollouts::create))
        .route("/rollouts/new", get(rollouts::new))
        .route("/rollouts/{id}", get(rollouts::show))
        .route("/rollouts/{id}/live", get(rollouts::live))
        .route("/rollouts/{id}/confirm/{command}", get(rollouts::confirm))
        .route("/rollouts/{id}/{command}", post(rollouts::command))
        .route("/releases", get(releases::list).post(releases::create))
        .route("/releases/new", get(releases::new))
        .route("/releases/{id}", get(releases::show))
        .route("/groups", get(tables::groups).post(tables::put_group))
        .route("/config", get(tables::config))
        .route("/audit", get(tables::audit))
        .route("/tokens", get(tables::tokens))
}

/// A signed-in visitor: who they are, and their session's CSRF token for forms.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token behind the session.
    pub caller: Caller,
    cookie: String,
    csrf: String,
}

impl Session {
    /// The hidden field every changing form carries.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name=(session::CSRF_FIELD) value=(self.csrf); }
    }

    /// Whether the session still holds now (its token not revoked or expired meanwhile).
    pub fn still_valid(&self, api: &Api) -> bool {
        let now = UnixMillis::now();
        api.sessions.verify(&self.cookie, |name| token_record(api, name), now).is_ok()
    }

    /// Whether the session may change the fleet (an operator or admin).
    pub fn operates(&self) -> bool {
        self.caller.role >= Role::Operator
    }
}

impl FromRequestParts<Api> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Session, Response> {
        let cookies = parts.headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
        let Some(cookie) = session::cookie_value(cookies) else {
            return Err(to_login(parts));
        };
        match api.sessions.verify(cookie, |name| token_record(api, name), UnixMillis::now()) {
            Ok(caller) => {
                Ok(Session { caller, csrf: api.sessions.csrf(cookie), cookie: cookie.to_owned() })
            }
            Err(e) => {
                tracing::debug!(error = %e, "dashboard session refused");
                Err(to_login(parts))
            }
        }
    }
}

/// To the login page, coming back here afterwards (GET pages; a post goes back to `/`).
fn to_login(parts: &Parts) -> Response {
    let back = if parts.method == axum::http::Method::GET {
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    } else {
        "/"
    };
    let query = form_urlencoded::Serializer::new(String::new()).append_pair("next", back).finish();
    Redirect::to(&format!("/login?{query}")).into_response()
}

/// A posted form's fields (the first value of each name).
#[derive(Debug, Default)]
pub struct Form(HashMap<String, String>);

impl Form {
    /// Reads an `application/x-www-form-urlencoded` body.
    pub fn parse(body: &[u8]) -> Form {
        let mut fields = HashMap::new();
        for (k, v) in form_urlencoded::parse(body) {
            fields.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        Form(fields)
    }

    /// A field, trimmed; empty when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", |v| v.trim())
    }

    /// The form of a change: refused unless it carries the session's CSRF token, comes from
    /// this site, and the session may change the fleet.
    pub fn checked(
        api: &Api,
        session: &Session,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Form, Refusal> {
        let form = Form::parse(body);
        check_change(api, session, headers, form.get(session::CSRF_FIELD))?;
        Ok(form)
    }
}

/// A change may go ahead: its form carries the session's CSRF token (`csrf`), it comes from
/// this site, and the session may change the fleet.
pub fn check_change(
    api: &Api,
    session: &Session,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<(), Refusal> {
    if !same_origin(headers) || !api.sessions.csrf_ok(&session.cookie, csrf) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "Refused",
            "The form did not come from this dashboard's page (its security token is missing or belongs to another session). Nothing was changed; go back, reload the page and try again.",
        ));
    }
    if !session.operates() {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "Not allowed",
            format!(
                "Token {:?} is a {}; changing the fleet needs the operator role (ask an admin: `fleetctl token create NAME --role operator`).",
                session.caller.name, session.caller.role
            ),
        ));
    }
    Ok(())
}

/// Whether a post comes from this site: its `Origin` (sent by browsers on every post) names
/// the host it was sent to. No `Origin` at all (old clients, curl) is left to the CSRF token.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    origin.split_once("://").is_some_and(|(_, rest)| rest == host)
}

/// Whether the visitor came over TLS (a proxy in front says so), for the cookie's `Secure`.
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// Why a page cannot be shown or a change was not made, shown as a page.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    title: String,
    detail: String,
    fields: Vec<(String, String)>,
}

impl Refusal {
    /// A refusal with `status`, a short `title` and what to do next in `detail`.
    pub fn new(status: StatusCode, title: &str, detail: impl Into<String>) -> Refusal {
        Refusal { status, title: title.to_owned(), detail: detail.into(), fields: Vec::new() }
    }

    /// Its HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The refusal as a block inside another page (a form shown again with its problem).
    pub fn markup(&self) -> Markup {
        html! {
            div.problems role="alert" {
                p { strong { (self.title) ": " } (self.detail) }
                @if !self.fields.is_empty() {
                    ul { @for (path, reason) in &self.fields { li { code { (path) } ": " (reason) } } }
                }
            }
        }
    }

    /// The page: inside the shell when signed in.
    pub fn page(self, session: Option<&Session>) -> Response {
        let body = html! {
            (self.markup())
            p { a href="/" { "Back to the overview" } }
        };
        let mut response = match session {
            Some(s) => layout::page(s, layout::Section::Other, &self.title, body),
            None => layout::bare(self.status, &self.title, body),
        };
        *response.status_mut() = self.status;
        response
    }
}

/// An operation's refusal or failure, in the same words the API answers with.
impl From<crate::ops::Error> for Refusal {
    fn from(e: crate::ops::Error) -> Refusal {
        let p = Problem::from(e);
        Refusal {
            status: StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            title: p.title,
            detail: p.detail,
            fields: p.errors.into_iter().map(|f| (f.path, f.reason)).collect(),
        }
    }
}

/// An error as a page: inside the shell when signed in.
pub fn error_page(
    session: Option<&Session>,
    status: StatusCode,
    title: &str,
    detail: &str,
) -> Response {
    Refusal::new(status, title, detail).page(session)
}

/// An operation's refusal or failure as a page.
pub fn problem_page(session: &Session, e: crate::ops::Error) -> Response {
    Refusal::from(e).page(Some(session))
}

/// The query string of a request as pairs.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query.map_or_else(Vec::new, |q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
}

/// `State` spelled once for handlers.
pub type Shared = State<Api>;

#[cfg(test)]
mod bench;
#[cfg(test)]
mod tests;
