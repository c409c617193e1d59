//! The dashboard against its router in-process: sessions, roles, CSRF, escaping, the headers,
//! and forms that post and redirect without JavaScript. (The browser tests are in the e2e
//! suite.)

use std::collections::BTreeMap;

use axum::http::{header, StatusCode};
use fleet_api::Role;
use fleet_proto::{DeviceId, UnixMillis};
use tower::ServiceExt;

use crate::auth::Caller;
use crate::groups::{Group, Selector};
use crate::test_support::{form, harness, post};

#[tokio::test]
async fn pages_need_a_session_and_a_token_starts_one() {
    let h = harness();
    let (status, _, headers) = h.get("/devices?state=failed", None).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/login?next=%2Fdevices%3Fstate%3Dfailed");

    let (status, html, _) = h.get("/login?next=/devices", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("type=\"password\" name=\"token\""), "{html}");

    // A wrong token: refused with the API's words, no cookie.
    let response =
        h.router().oneshot(post("/login", None, form(&[("token", "nobody.0000")]))).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().get(header::SET_COOKIE).is_none());

    // The admin token: a strict cookie that holds no secret, and it opens the pages.
    let response = h
        .router()
        .oneshot(post(
            "/login",
            None,
            form(&[("token", &h.admin_token), ("next", "//evil.example")]),
        ))
        .await
        .unwrap();
    assert_eq!(response.headers()[header::LOCATION], "/", "never off-site after login");
    let set = response.headers()[header::SET_COOKIE].to_str().unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains(&h.admin_token), "the token itself is not in the cookie");
    let cookie = set.split(';').next().unwrap();
    for page in ["/", "/devices", "/rollouts", "/releases", "/groups", "/audit", "/tokens"] {
        let (status, html, headers) = h.get(page, Some(cookie)).await;
        assert_eq!(status, StatusCode::OK, "{page}: {html}");
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
        // Scripts only from our own file: no inline script at all.
        assert_eq!(
            html.matches("<script").count(),
            html.matches("<script src=\"/static/").count(),
            "{page}"
        );
        assert!(html.contains("Signed in as <strong>admin</strong>"), "{page}");
    }
}

#[tokio::test]
async fn a_revoked_token_ends_its_sessions() {
    let h = harness();
    let token = h.token("ops", Role::Operator);
    let cookie = h.login(&token).await;
    assert_eq!(h.get("/", Some(&cookie)).await.0, StatusCode::OK);
    let mut record = h.api.store.token("ops").unwrap().unwrap();
    record.revoked_at = Some(UnixMillis::now());
    h.api
        .store
        .update(|tx| -> Result<(), crate::store::StoreError> {
            tx.put_token(&record);
            Ok(())
        })
        .unwrap();
    assert_eq!(h.get("/", Some(&cookie)).await.0, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn every_value_is_escaped() {
    let h = harness();
    h.put_device("r1", &[("note", "<script>alert(1)</script>")]);
    let cookie = h.login(&h.admin_token).await;
    for page in ["/devices", "/devices/r1", "/devices?q=%3Cscript%3E"] {
        let (_, html, _) = h.get(page, Some(&cookie)).await;
        assert!(!html.contains("<script>alert"), "{page}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
    }
}

#[tokio::test]
async fn pinning_from_the_device_page_needs_the_csrf_token_and_is_audited() {
    let h = harness();
    h.put_release();
    h.put_device("r1", &[]);
    let token = h.token("alice", Role::Operator);
    let cookie = h.login(&token).await;
    let release = fleet_proto::samples::release_id().to_string();
    let fields = |csrf: &str| {
        form(&[("_csrf", csrf), ("release", &release), ("reason", "bench <debugging>")])
    };

    // No token, another session's token, a cross-site origin: refused, nothing changes.
    let other = h.login(&h.admin_token).await;
    let other_csrf = h.csrf("/devices/r1", &other).await;
    for body in [fields(""), fields(&other_csrf)] {
        let (status, html, _) = h.post("/devices/r1/pin", &cookie, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{html}");
        assert!(h.device("r1").pin.is_none());
    }
    let csrf = h.csrf("/devices/r1", &cookie).await;
    let mut cross = post("/devices/r1/pin", Some(&cookie), fields(&csrf));
    cross.headers_mut().insert(header::ORIGIN, "https://evil.example".parse().unwrap());
    assert_eq!(h.router().oneshot(cross).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert!(h.device("r1").pin.is_none());

    // The page's own form: pinned, redirected to the device page that says so.
    let (status, html, headers) = h.post("/devices/r1/pin", &cookie, fields(&csrf)).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    assert_eq!(headers[header::LOCATION], "/devices/r1?done=pinned");
    let pin = h.device("r1").pin.unwrap();
    assert_eq!((pin.pinned_by.as_str(), pin.reason.as_str()), ("alice", "bench <debugging>"));
    let (_, html, _) = h.get("/devices/r1?done=pinned", Some(&cookie)).await;
    assert!(html.contains("Pinned.") && html.contains("bench &lt;debugging&gt;"), "{html}");
    assert!(html.contains("fleetctl device unpin r1"), "the equivalent command is shown");
    let audit = h.api.store.audit(UnixMillis(0), 10).unwrap();
    assert!(audit.iter().any(|e| e.actor == "alice" && e.action == "device.pin"), "{audit:?}");

    // A pin without a reason is refused with the API's words.
    let (_, html, _) = h.get("/devices/r1", Some(&cookie)).await;
    assert!(html.contains("Unpin"));
    let (status, _, _) = h.post("/devices/r1/unpin", &cookie, form(&[("_csrf", &csrf)])).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let body = form(&[("_csrf", &csrf), ("release", &release), ("reason", " ")]);
    let (status, html, _) = h.post("/devices/r1/pin", &cookie, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("a pin needs a reason"), "{html}");
    assert!(h.device("r1").pin.is_none());
}

#[tokio::test]
async fn a_viewer_sees_no_controls_and_cannot_post() {
    let h = harness();
    h.put_release();
    h.put_device("r1", &[]);
    let token = h.token("watcher", Role::Viewer);
    let cookie = h.login(&token).await;
    for page in ["/", "/devices", "/devices/r1", "/rollouts", "/groups", "/releases", "/config"] {
        let (_, html, _) = h.get(page, Some(&cookie)).await;
        // The only form that posts is logging out.
        assert_eq!(html.matches("method=\"post\"").count(), 1, "{page}: {html}");
        assert!(!html.contains("href=\"/tokens\""), "{page}: admins only");
    }
    assert_eq!(h.get("/tokens", Some(&cookie)).await.0, StatusCode::FORBIDDEN);
    let csrf = h.csrf("/", &cookie).await;
    let body = form(&[("_csrf", &csrf), ("release", "x@1"), ("reason", "r")]);
    let (status, html, _) = h.post("/devices/r1/pin", &cookie, body).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("needs the operator role"), "{html}");
    assert!(h.device("r1").pin.is_none());
}

#[tokio::test]
async fn the_devices_list_filters_sorts_and_pages_in_the_url() {
    let h = harness();
    for i in 0..30 {
        let site = if i % 3 == 0 { "lab" } else { "depot" };
        h.put_device(&format!("r{i:02}"), &[("site", site)]);
    }
    h.api
        .store
        .update(|tx| -> Result<(), crate::store::StoreError> {
            tx.put_group(&Group {
                name: "lab".into(),
                selector: Selector::parse("site=lab").unwrap(),
                description: String::new(),
                created_at: UnixMillis(0),
                created_by: "admin".into(),
            });
            Ok(())
        })
        .unwrap();
    let cookie = h.login(&h.admin_token).await;
    let rows = |html: &str| html.matches("<th scope=\"row\"><a href=\"/devices/").count();

    let (_, html, _) = h.get("/devices?group=lab", Some(&cookie)).await;
    assert!(html.contains("10 devices match"), "{html}");
    assert_eq!(rows(&html), 10);
    let (_, html, _) = h.get("/devices?per=4&sort=id&dir=desc", Some(&cookie)).await;
    assert!(html.contains("30 devices match; page 1 of 8"), "{html}");
    assert_eq!(rows(&html), 4, "the page holds its page size, not the fleet");
    assert!(html.find("/devices/r29").unwrap() < html.find("/devices/r28").unwrap());
    assert!(html.contains("href=\"/devices?dir=desc&amp;per=4&amp;page=2\""), "{html}");
    assert!(html.contains("aria-sort=\"descending\""));
    let (status, html, _) = h.get("/devices?state=sleepy", Some(&cookie)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("state: &quot;sleepy&quot; is not one of"), "{html}");
    let (_, html, _) = h.get("/devices?group=nope", Some(&cookie)).await;
    assert!(html.contains("no group &quot;nope&quot;"), "{html}");
}

#[tokio::test]
async fn a_rollout_page_shows_its_waves_and_pauses_after_confirmation() {
    let h = harness();
    h.put_release();
    for i in 0..4 {
        h.put_device(&format!("r{i}"), &[("site", "lab")]);
    }
    let admin = Caller { name: "admin".into(), role: Role::Admin };
    let request = crate::test_support::rollout_request("selector:site=lab", "1,100%");
    let record = crate::ops::rollouts::create(&h.api.fleet(), &admin, request, UnixMillis::now())
        .await
        .unwrap();
    let id = record.id();
    let cookie = h.login(&h.admin_token).await;
    let (_, html, _) = h.get(&format!("/rollouts/{id}"), Some(&cookie)).await;
    assert!(html.contains("Wave 1") && html.contains("Wave 2"), "{html}");
    assert!(html.contains("1 updating") && html.contains("3 pending"), "counts in words: {html}");
    assert!(html.contains("0 of 0 failures allowed used"), "{html}");
    assert!(html.contains(&format!("data-live=\"/rollouts/{id}/live\"")), "{html}");
    assert!(html.contains(&format!("href=\"/rollouts/{id}/confirm/pause\"")), "{html}");

    let (_, html, _) = h.get(&format!("/rollouts/{id}/confirm/abort"), Some(&cookie)).await;
    assert!(html.contains("nothing is sent back"), "the consequence is stated: {html}");
    let csrf = h.csrf(&format!("/rollouts/{id}/confirm/pause"), &cookie).await;
    let body = form(&[("_csrf", &csrf), ("reason", "canary looks odd")]);
    let (status, _, headers) = h.post(&format!("/rollouts/{id}/pause"), &cookie, body).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], format!("/rollouts/{id}?done=paused"));
    let (_, html, _) = h.get(&format!("/rollouts/{id}?done=paused"), Some(&cookie)).await;
    assert!(html.contains("canary looks odd") && html.contains("paused"), "{html}");
    let (_, html, _) = h.get("/", Some(&cookie)).await;
    assert!(html.contains("Needs attention"), "a paused rollout needs attention: {html}");
    // Pausing twice is refused with the engine's words.
    let body = form(&[("_csrf", &csrf)]);
    let (status, html, _) = h.post(&format!("/rollouts/{id}/pause"), &cookie, body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{html}");
}

#[tokio::test]
async fn a_bulk_pin_previews_exactly_which_devices_change_and_applies_only_that() {
    let h = harness();
    h.put_release();
    for i in 0..6 {
        let site = if i < 4 { "lab" } else { "depot" };
        h.put_device(&format!("r{i}"), &[("site", site)]);
    }
    let release = fleet_proto::samples::release_id().to_string();
    let token = h.token("alice", Role::Operator);
    let cookie = h.login(&token).await;
    let (_, html, _) = h.get("/devices?selector=site%3Dlab", Some(&cookie)).await;
    assert!(html.contains("Change all 4 matching devices"), "{html}");

    let query = form(&[
        ("selector", "site=lab"),
        ("action", "pin"),
        ("pin_release", &release),
        ("reason", "freeze for the demo"),
    ]);
    let (status, html, _) = h.get(&format!("/bulk/devices?{query}"), Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("4 devices change"), "{html}");
    for i in 0..4 {
        assert!(html.contains(&format!("href=\"/devices/r{i}\"")), "r{i} is listed: {html}");
    }
    assert!(!html.contains("href=\"/devices/r4\""), "a device outside the filter is not");
    let marker = "name=\"fingerprint\" value=\"";
    let at = html.find(marker).unwrap() + marker.len();
    let fingerprint = html[at..at + 32].to_owned();
    let csrf = h.csrf(&format!("/bulk/devices?{query}"), &cookie).await;
    let apply = format!("{query}&{}", form(&[("_csrf", &csrf), ("fingerprint", &fingerprint)]));

    // Another device joins the filter after the preview: nothing is applied.
    h.put_device("r9", &[("site", "lab")]);
    let (status, html, _) = h.post("/bulk/devices", &cookie, apply.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{html}");
    assert!((0..4).all(|i| h.device(&format!("r{i}")).pin.is_none()));

    // Reviewed again, applied: exactly the previewed devices, each audited as alice.
    h.put_device("r9", &[("site", "depot")]);
    let (status, html, _) = h.post("/bulk/devices", &cookie, apply).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("4 devices changed"), "{html}");
    assert!((0..4).all(|i| h.device(&format!("r{i}")).pin.is_some()));
    assert!((4..6).all(|i| h.device(&format!("r{i}")).pin.is_none()));
    let audit = h.api.store.audit(UnixMillis(0), 100).unwrap();
    assert_eq!(audit.iter().filter(|e| e.actor == "alice" && e.action == "device.pin").count(), 4);

    // A bad action names its field.
    let (status, html, _) = h
        .get("/bulk/devices?selector=site%3Dlab&action=pin&pin_release=x%401", Some(&cookie))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("pin_release and reason"), "{html}");
}

#[tokio::test]
async fn a_rollout_is_created_from_its_previewed_plan() {
    let h = harness();
    h.put_release();
    for i in 0..5 {
        h.put_device(&format!("r{i}"), &[("site", "lab")]);
    }
    let cookie = h.login(&h.admin_token).await;
    let release = fleet_proto::samples::release_id().to_string();
    let query = form(&[
        ("preview", "1"),
        ("release", &release),
        ("target", "selector:site=lab"),
        ("waves", "1,100%"),
        ("bake", "1m"),
    ]);
    let (status, html, _) = h.get(&format!("/rollouts/new?{query}"), Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("5 devices in 2 waves"), "{html}");
    assert!(h.api.store.rollouts().unwrap().is_empty(), "a preview sends nothing");
    let marker = "name=\"seed\" value=\"";
    let at = html.find(marker).unwrap() + marker.len();
    let seed: String = html[at..].chars().take_while(char::is_ascii_digit).collect();

    let csrf = h.csrf("/rollouts", &cookie).await;
    let body = form(&[
        ("_csrf", &csrf),
        ("release", &release),
        ("target", "selector:site=lab"),
        ("waves", "1,100%"),
        ("bake", "1m"),
        ("seed", &seed),
    ]);
    let (status, html, headers) = h.post("/rollouts", &cookie, body).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    let rollouts = h.api.store.rollouts().unwrap();
    assert_eq!(rollouts.len(), 1);
    assert_eq!(rollouts[0].rollout.seed().to_string(), seed, "the previewed waves");
    assert_eq!(headers[header::LOCATION], format!("/rollouts/{}?done=created", rollouts[0].id()));

    // A bad request comes back with the API's words next to the form.
    let query = form(&[("preview", "1"), ("release", "nope@1"), ("target", "selector:site=lab")]);
    let (_, html, _) = h.get(&format!("/rollouts/new?{query}"), Some(&cookie)).await;
    assert!(html.contains("class=\"problems\"") && html.contains("nope@1"), "{html}");
}

#[tokio::test]
async fn a_reboot_asks_first() {
    let h = harness();
    h.put_device("r1", &[]);
    let cookie = h.login(&h.admin_token).await;
    let csrf = h.csrf("/devices/r1", &cookie).await;
    let (_, html, _) = h.get("/devices/r1", Some(&cookie)).await;
    assert!(html.contains("Refresh inventory") && html.contains("Reboot"), "{html}");
    let body = form(&[("_csrf", &csrf), ("action", "reboot")]);
    let (status, html, _) = h.post("/devices/r1/command", &cookie, body).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("Reboot r1?") && html.contains("name=\"confirm\" value=\"yes\""),
        "{html}"
    );
}

#[tokio::test]
async fn the_device_page_charts_its_telemetry_over_the_chosen_range() {
    use fleet_proto::telemetry::{Point, TelemetryBatch, Value};
    let h = harness();
    h.put_device("r1", &[]);
    let now = UnixMillis::now();
    let points = (0..60u64)
        .map(|i| Point {
            at: UnixMillis(now.0 - 3_000_000 + i * 50_000),
            metric: "host.cpu.percent".into(),
            value: Value::F64(i as f64),
            labels: BTreeMap::new(),
        })
        .collect();
    let batch = TelemetryBatch {
        device: DeviceId::new("r1").unwrap(),
        first_seq: 1,
        dropped_total: 0,
        points,
    };
    h.api.store.update(|tx| crate::telemetry::ingest(tx, &batch, now).map(drop)).unwrap();
    let cookie = h.login(&h.admin_token).await;
    let (_, html, _) = h.get("/devices/r1?range=1h", Some(&cookie)).await;
    assert!(html.contains("<figure class=\"chart\">"), "{html}");
    assert!(html.contains("host.cpu.percent: from 0.00 to 59.00 over 1h, last 59.00"), "{html}");
    assert!(html.contains("<summary>The numbers</summary>"), "a table alternative: {html}");
    assert!(html.contains("aria-current=\"true\"><strong>1h</strong>"), "{html}");
    let (_, html, _) = h.get("/devices/r1", Some(&cookie)).await;
    assert!(html.contains("over 24h"), "24 h by default: {html}");
}

#[tokio::test]
async fn secrets_and_variables_show_their_digest_never_their_value() {
    let h = harness();
    let admin = Caller { name: "admin".into(), role: Role::Admin };
    let request: fleet_api::VariableRequest =
        serde_json::from_value(serde_json::json!({ "value": "https://inventory.internal/api" }))
            .unwrap();
    crate::ops::variables::set(
        &h.api.fleet(),
        &admin,
        "INVENTORY_URL".into(),
        request,
        UnixMillis::now(),
    )
    .await
    .unwrap();
    let at = crate::ops::secrets::SecretScope::default();
    let value = b"hunter2-very-secret".to_vec();
    crate::ops::secrets::set(
        &h.api.fleet(),
        &admin,
        "tls-key".into(),
        &at,
        value,
        UnixMillis::now(),
    )
    .await
    .unwrap();
    let cookie = h.login(&h.admin_token).await;
    let (status, html, _) = h.get("/config", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("<code>tls-key</code>") && html.contains("19</td>"), "{html}");
    assert!(!html.contains("hunter2"), "the value is never on the page");
    assert!(html.contains("<code>INVENTORY_URL</code>") && html.contains("sha256:"), "{html}");
    assert!(!html.contains("inventory.internal"), "nor a variable's");
}

/// A multipart form as a browser sends it.
fn multipart(fields: &[(&str, &str)]) -> (String, String) {
    let boundary = "----fleet-test-boundary";
    let mut body = String::new();
    for (name, value) in fields {
        let file = if *name == "compose" { "; filename=\"compose.yaml\"" } else { "" };
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n{value}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn a_release_is_uploaded_as_a_compose_file_and_refusals_name_the_key() {
    let h = harness();
    let token = h.token("alice", Role::Operator);
    let cookie = h.login(&token).await;
    let csrf = h.csrf("/releases/new", &cookie).await;
    let upload = |fields: &[(&str, &str)]| {
        let (kind, body) = multipart(fields);
        let mut request = post("/releases", Some(&cookie), body);
        request.headers_mut().insert(header::CONTENT_TYPE, kind.parse().unwrap());
        request
    };

    let compose = "services:\n  web:\n    build: .\n";
    let request =
        upload(&[("_csrf", &csrf), ("app", "shop"), ("version", "1"), ("compose", compose)]);
    let response = h.router().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = String::from_utf8(
        axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap().to_vec(),
    )
    .unwrap();
    assert!(html.contains("services.web.build"), "the refusal names the key: {html}");
    assert!(html.contains("value=\"shop\""), "the form keeps what was typed: {html}");

    let digest = format!("127.0.0.1:5000/demo/web@sha256:{}", "a".repeat(64));
    let compose = format!("services:\n  web:\n    image: {digest}\n");
    let request =
        upload(&[("_csrf", "forged"), ("app", "shop"), ("version", "1"), ("compose", &compose)]);
    assert_eq!(h.router().oneshot(request).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert!(h.api.store.release("shop@1").unwrap().is_none());
    let request =
        upload(&[("_csrf", &csrf), ("app", "shop"), ("version", "1"), ("compose", &compose)]);
    let response = h.router().oneshot(request).await.unwrap();
    let status = response.status();
    let location = response.headers().get(header::LOCATION).cloned();
    let html = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    assert_eq!(status, StatusCode::SEE_OTHER, "{}", String::from_utf8_lossy(&html));
    assert_eq!(location.unwrap(), "/releases/shop@1?done=created");
    let (_, html, _) = h.get("/releases/shop@1", Some(&cookie)).await;
    assert!(html.contains(&digest) && html.contains("The Compose file it was made from"), "{html}");
}

#[tokio::test]
async fn pages_following_a_rollout_share_one_reader_that_ends_with_the_last() {
    let h = harness();
    h.put_release();
    for i in 0..3 {
        h.put_device(&format!("r{i}"), &[("site", "lab")]);
    }
    let admin = Caller { name: "admin".into(), role: Role::Admin };
    let waves = fleet_api::rollouts::DEFAULT_WAVES;
    let request = crate::test_support::rollout_request("selector:site=lab", waves);
    let id = crate::ops::rollouts::create(&h.api.fleet(), &admin, request, UnixMillis::now())
        .await
        .unwrap()
        .id();
    let mut a = h.api.live.follow(&h.api.store, id);
    let b = h.api.live.follow(&h.api.store, id);
    assert_eq!(h.api.live.readers(), 1, "one reader for both pages");
    assert!(a.borrow().is_some());
    crate::ops::rollouts::command(
        &h.api.fleet(),
        &admin,
        id,
        crate::rollout::driver::RolloutCommand::Pause,
        None,
    )
    .await
    .unwrap();
    tokio::time::timeout(crate::web::live::EVERY * 3, a.changed()).await.unwrap().unwrap();
    assert!(matches!(
        a.borrow().as_ref().unwrap().rollout.state(),
        crate::rollout::RunState::Paused { .. }
    ));
    drop((a, b));
    tokio::time::sleep(crate::web::live::EVERY * 3).await;
    assert_eq!(h.api.live.readers(), 0, "the reader ends with its last page");
}

#[tokio::test]
async fn an_operator_creates_a_group_and_a_bad_selector_is_refused_by_field() {
    let h = harness();
    h.put_device("r1", &[("site", "lab")]);
    let token = h.token("alice", Role::Operator);
    let cookie = h.login(&token).await;
    let csrf = h.csrf("/groups", &cookie).await;
    let body = form(&[("_csrf", &csrf), ("name", "lab"), ("selector", "site=lab")]);
    let (status, _, headers) = h.post("/groups", &cookie, body).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/groups?done=saved");
    assert!(h.api.store.group("lab").unwrap().is_some());
    let (_, html, _) = h.get("/groups?done=saved", Some(&cookie)).await;
    assert!(html.contains("Saved.") && html.contains("/devices?group=lab\">1</a>"), "{html}");
    let body = form(&[("_csrf", &csrf), ("name", "depot"), ("selector", "Bad Key=1")]);
    let (status, html, _) = h.post("/groups", &cookie, body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{html}");
    assert!(h.api.store.group("depot").unwrap().is_none());
    let audit = h.api.store.audit(UnixMillis(0), 10).unwrap();
    assert!(audit.iter().any(|e| e.actor == "alice" && e.target == "lab"), "{audit:?}");
}
