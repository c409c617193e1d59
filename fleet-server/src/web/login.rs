//! Logging in with an API token, and out.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use fleet_proto::UnixMillis;
use maud::html;

use super::{layout, over_tls, query_pairs, same_origin, session, Form, Session};
use crate::api::{caller_of, token_record, Api};

/// `GET /login`: the form.
pub async fn form(RawQuery(query): RawQuery) -> Response {
    let next = query_pairs(query.as_deref())
        .into_iter()
        .find(|(k, _)| k == "next")
        .map(|(_, v)| v)
        .unwrap_or_default();
    login_page(StatusCode::OK, session::local_path(&next), None)
}

fn login_page(status: StatusCode, next: &str, problem: Option<&str>) -> Response {
    layout::bare(
        status,
        "Log in to Fleet",
        html! {
            @if let Some(problem) = problem {
                div.problems role="alert" { p { (problem) } }
            }
            form.login method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                label for="token" { "API token" }
                input #token type="password" name="token" required autocomplete="current-password"
                    aria-describedby="token-help" autofocus;
                p #token-help .help {
                    "A token from " code { "fleetctl token create NAME --role viewer" }
                    " (or the admin token in the server's " code { "admin-token" } " file). "
                    "It is checked once; the browser keeps a session cookie, never the token."
                }
                button type="submit" { "Log in" }
            }
        },
    )
}

/// `POST /login`: checks the token and starts a session.
pub async fn submit(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let next = session::local_path(form.get("next")).to_owned();
    if !same_origin(&headers) {
        return login_page(
            StatusCode::FORBIDDEN,
            &next,
            Some("The form did not come from this site."),
        );
    }
    let presented = form.get("token");
    let caller = match caller_of(&api, presented) {
        Ok(caller) => caller,
        Err(e) => {
            tracing::info!(reason = %e, "dashboard login refused");
            return login_page(StatusCode::UNAUTHORIZED, &next, Some(&e.to_string()));
        }
    };
    let Some(record) = token_record(&api, &caller.name) else {
        return login_page(StatusCode::UNAUTHORIZED, &next, Some("unknown token"));
    };
    let cookie = api.sessions.issue(&record, UnixMillis::now());
    tracing::info!(token = %caller.name, "dashboard login");
    let mut response = Redirect::to(&next).into_response();
    if let Ok(value) = session::set_cookie(&cookie, over_tls(&headers)).parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /logout`: ends the session (the cookie; the token itself stays valid).
pub async fn logout(
    State(api): State<Api>,
    session: Session,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    if !same_origin(&headers)
        || !api.sessions.csrf_ok(&session.cookie, form.get(session::CSRF_FIELD))
    {
        return super::error_page(
            Some(&session),
            StatusCode::FORBIDDEN,
            "Refused",
            "The form did not come from this dashboard's page; reload it and try again.",
        );
    }
    let mut response = Redirect::to("/login").into_response();
    if let Ok(value) = session::clear_cookie(over_tls(&headers)).parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}
