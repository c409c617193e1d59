//! `/releases`: the list, a release's page (services, images by digest, hardware it asks
//! for, the devices that run it, its Compose file), and creating one from a Compose file
//! upload with the same refusals as `fleetctl release create`.

use axum::extract::{Multipart, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use fleet_api::ReleaseRequest;
use fleet_proto::UnixMillis;
use maud::html;

use super::layout::{self, ago, cli, notice, Section};
use super::{problem_page, query_pairs, Refusal, Session};
use crate::api::Api;
use crate::compose::MAX_COMPOSE_BYTES;
use crate::ops;
use crate::ops::device_query::DeviceQuery;

/// `GET /releases` (`?after=` pages on).
pub async fn list(State(api): State<Api>, session: Session, RawQuery(raw): RawQuery) -> Response {
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
                            th scope="row" { a href={ "/releases/" (r.id()) } { (r.id()) } }
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
        @if session.operates() { p { a.button href="/releases/new" { "New release from a Compose file…" } } }
        (cli("fleetctl release create APP VERSION -f compose.yaml [--profile NAME]"))
    };
    layout::page(&session, Section::Releases, "Releases", body)
}

/// `GET /releases/{id}`.
pub async fn show(
    State(api): State<Api>,
    session: Session,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let record = match ops::releases::show(&api.store, &id) {
        Ok(r) => r,
        Err(e) => return problem_page(&session, e),
    };
    let running = match api.store.device_summaries() {
        Ok(all) => {
            all.iter().filter(|d| d.release.as_ref().is_some_and(|r| r.as_str() == id)).count()
        }
        Err(e) => return problem_page(&session, e.into()),
    };
    let done = query_pairs(raw.as_deref()).into_iter().find(|(k, _)| k == "done").map(|(_, v)| v);
    let now = UnixMillis::now();
    let query = DeviceQuery { release: id.clone(), ..DeviceQuery::default() };
    let body = html! {
        (notice(done.as_deref()))
        p {
            "Created " (ago(record.created_at, now)) " by " (record.created_by) ". "
            a href={ "/devices?" (query.to_query()) } { (running) " devices run it" } "."
            @if session.operates() { " " a href={ "/rollouts/new?" (form_urlencoded::Serializer::new(String::new()).append_pair("release", &id).finish()) } { "Roll it out…" } }
        }
        table {
            caption { "Services" }
            thead { tr { th scope="col" { "Service" } th scope="col" { "Image" } th scope="col" { "Ports" } th scope="col" { "Hardware" } th scope="col" { "Secrets" } } }
            tbody {
                @for s in &record.spec.services {
                    tr {
                        th scope="row" { (s.name) }
                        td { code { (s.image.to_string()) } }
                        td { @for p in &s.ports { (p.host_port) "→" (p.container_port) " " } }
                        td { @for h in s.hardware.iter().chain(&s.optional_hardware) { code { (format!("{h:?}")) } " " } }
                        td { @for m in &s.secrets { code { (m.source) } " " } }
                    }
                }
            }
        }
        @if !record.images.is_empty() {
            table {
                caption { "Images as resolved at creation (what devices pull)" }
                thead { tr { th scope="col" { "Service" } th scope="col" { "As written" } th scope="col" { "By digest" } } }
                tbody { @for i in &record.images { tr { th scope="row" { (i.service) } td { code { (i.reference) } } td { code { (i.resolved.image.to_string()) } } } } }
            }
        }
        @if let Some(compose) = &record.compose {
            details { summary { "The Compose file it was made from" } pre.output { (compose) } }
        }
        (cli(&format!("fleetctl release show {id}")))
    };
    layout::page(&session, Section::Releases, &format!("Release {id}"), body)
}

/// `GET /releases/new`: the upload form.
pub async fn new(session: Session) -> Response {
    if !session.operates() {
        return Refusal::new(
            StatusCode::FORBIDDEN,
            "Not allowed",
            "Creating releases needs the operator role.",
        )
        .page(Some(&session));
    }
    layout::page(&session, Section::Releases, "New release", upload_form(&session, "", "", None))
}

fn upload_form(
    session: &Session,
    app: &str,
    version: &str,
    refusal: Option<&Refusal>,
) -> maud::Markup {
    html! {
        @if let Some(r) = refusal { (r.markup()) }
        form.stacked method="post" action="/releases" enctype="multipart/form-data" {
            (session.csrf_field())
            div { label for="rel-app" { "Application" } input #rel-app name="app" type="text" required value=(app) placeholder="robot-stack"; }
            div { label for="rel-version" { "Version" } input #rel-version name="version" type="text" required value=(version) placeholder="1.4.2"; }
            div {
                label for="rel-compose" { "Compose file" }
                input #rel-compose name="compose" type="file" required accept=".yaml,.yml,application/yaml,text/yaml" aria-describedby="rel-compose-help";
                p #rel-compose-help .help { "Image tags are resolved to digests now; the release is signed and never changes. At most " (MAX_COMPOSE_BYTES / 1024) " KiB." }
            }
            div { label for="rel-profiles" { "Profiles to run (optional)" } input #rel-profiles name="profiles" type="text" placeholder="lidar, debug" aria-describedby="rel-profiles-help";
                p #rel-profiles-help .help { "Services with a profiles key run only if one of theirs is listed here; services without one always run." } }
            div.actions { button type="submit" { "Create the release" } }
        }
        (cli("fleetctl release create APP VERSION -f compose.yaml [--profile NAME]"))
    }
}

/// `POST /releases` (multipart): creates the release from the uploaded Compose file.
pub async fn create(
    State(api): State<Api>,
    session: Session,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Response {
    let mut fields = std::collections::HashMap::new();
    loop {
        match multipart.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_owned();
                match field.bytes().await {
                    Ok(bytes) if bytes.len() <= MAX_COMPOSE_BYTES => {
                        let text = String::from_utf8_lossy(&bytes).into_owned();
                        fields.entry(name).or_insert(text);
                    }
                    Ok(bytes) => {
                        let detail = format!(
                            "{name}: {} bytes; at most {MAX_COMPOSE_BYTES} are accepted",
                            bytes.len()
                        );
                        return Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "Too large", detail)
                            .page(Some(&session));
                    }
                    Err(e) => {
                        return Refusal::new(StatusCode::BAD_REQUEST, "Not read", e.body_text())
                            .page(Some(&session))
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Refusal::new(StatusCode::BAD_REQUEST, "Not read", e.body_text())
                    .page(Some(&session))
            }
        }
    }
    let get = |name: &str| fields.get(name).map(|v| v.trim().to_owned()).unwrap_or_default();
    if let Err(refusal) =
        super::check_change(&api, &session, &headers, &get(super::session::CSRF_FIELD))
    {
        return refusal.page(Some(&session));
    }
    let request = ReleaseRequest {
        app: get("app"),
        version: get("version"),
        compose: Some(fields.get("compose").cloned().unwrap_or_default()),
        spec: None,
        profiles: get("profiles")
            .split([',', ' '])
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    let (app, version) = (request.app.clone(), request.version.clone());
    match ops::releases::create(
        &api.fleet(),
        &api.resolver,
        &session.caller,
        request,
        UnixMillis::now(),
    )
    .await
    {
        Ok(record) => {
            Redirect::to(&format!("/releases/{}?done=created", record.id())).into_response()
        }
        Err(e) => {
            let refusal = Refusal::from(e);
            let status = refusal.status();
            let mut response = layout::page(
                &session,
                Section::Releases,
                "New release",
                upload_form(&session, &app, &version, Some(&refusal)),
            );
            *response.status_mut() = status;
            response
        }
    }
}
