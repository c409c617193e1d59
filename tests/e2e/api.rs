//! The server's API as clients meet it: roles, refusals with their reasons, the OpenAPI
//! document, releases from Compose files resolved through the real registry, pins, rollouts
//! that overlap, backups. The server runs in-process on embedded defaults
//! (`fleet_e2e::simfleet`); the registry is the one `tests/env/up` started.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fleet_e2e::simfleet::{api_call, SimFleet};
use fleet_e2e::TestEnv;
use fleet_server::api::ROUTES;
use serde_json::{json, Value};

async fn token(fleet: &SimFleet, name: &str, role: &str, expires_at: Option<u64>) -> String {
    let (code, body) = fleet
        .api(
            "POST",
            "/api/v1/tokens",
            Some(json!({ "name": name, "role": role, "expires_at": expires_at })),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

fn detail(body: &Value) -> &str {
    body["detail"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_role_may_do_what_it_should_and_is_told_why_not_otherwise() {
    let fleet = SimFleet::start().await;
    let viewer = token(&fleet, "dash", "viewer", None).await;
    let operator = token(&fleet, "ci", "operator", None).await;
    let call = |t: &str, m: &str, p: &str, b: Option<Value>| {
        let (api, t, m, p) = (fleet.api.clone(), t.to_owned(), m.to_owned(), p.to_owned());
        async move { api_call(&api, &t, &m, &p, b).await }
    };
    let group = json!({ "name": "depot", "selector": "site=depot" });

    // Viewer: reads, never writes.
    let (code, _) = call(&viewer, "GET", "/api/v1/devices", None).await;
    assert_eq!(code, 200);
    let (code, body) = call(&viewer, "POST", "/api/v1/groups", Some(group.clone())).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        detail(&body).contains("token \"dash\" is a viewer")
            && detail(&body).contains("operator role"),
        "{body}"
    );
    // Operator: changes the fleet, but neither tokens, identities nor backups.
    let (code, body) = call(&operator, "POST", "/api/v1/groups", Some(group)).await;
    assert_eq!(code, 201, "{body}");
    let (code, _) =
        call(&operator, "POST", "/api/v1/tokens", Some(json!({ "name": "x", "role": "admin" })))
            .await;
    assert_eq!(code, 403, "an operator cannot mint an admin");
    let (code, _) = call(&operator, "GET", "/api/v1/backup", None).await;
    assert_eq!(code, 403);
    let (code, _) = call(&operator, "POST", "/api/v1/devices/r1/revoke", None).await;
    assert_eq!(code, 403);
    // Who did what is audited under the token's name.
    let (_, audit) = fleet.api("GET", "/api/v1/audit", None).await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "ci" && e["action"] == "group.create"),
        "{audit}"
    );

    // Missing, wrong, expired and revoked tokens: 401 with a reason that never echoes a secret.
    let (code, body) = call("", "GET", "/api/v1/devices", None).await;
    assert_eq!(code, 401);
    assert!(detail(&body).contains("FLEET_TOKEN"), "{body}");
    let (code, _) = call("ci.0000", "GET", "/api/v1/devices", None).await;
    assert_eq!(code, 401);
    let soon = fleet_proto::UnixMillis::now().0 + 1500;
    let expiring = token(&fleet, "temp", "viewer", Some(soon)).await;
    assert_eq!(call(&expiring, "GET", "/api/v1/whoami", None).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (code, body) = call(&expiring, "GET", "/api/v1/whoami", None).await;
    assert_eq!(code, 401);
    assert!(detail(&body).contains("expired"), "{body}");
    assert!(
        !body.to_string().contains(expiring.split('.').nth(1).unwrap()),
        "no secret in answers"
    );
    let (code, _) = fleet.api("DELETE", "/api/v1/tokens/ci", None).await;
    assert_eq!(code, 200);
    let (code, body) = call(&operator, "GET", "/api/v1/devices", None).await;
    assert_eq!(code, 401);
    assert!(detail(&body).contains("revoked"), "{body}");
    let (_, tokens) = fleet.api("GET", "/api/v1/tokens", None).await;
    assert!(
        !tokens.to_string().contains(operator.split('.').nth(1).unwrap()),
        "tokens are kept hashed"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_in_the_table_is_served_and_documented() {
    let fleet = SimFleet::start().await;
    for route in ROUTES {
        let path = route.path.replace("{id}", "robot-1").replace("{name}", "depot");
        let (code, body) = api_call(&fleet.api, "", route.method, &path, Some(json!({}))).await;
        match route.role {
            Some(_) => {
                assert_eq!(code, 401, "{} {path} must ask for a token: {body}", route.method)
            }
            None => assert_eq!(code, 200, "{} {path} is open: {body}", route.method),
        }
    }
    let (code, body) = fleet.api("GET", "/api/v1/nothing-here", None).await;
    assert_eq!(code, 404);
    assert!(detail(&body).contains("openapi.json"), "{body}");
    let (_, doc) = fleet.api("GET", "/api/openapi.json", None).await;
    assert_eq!(doc["openapi"], "3.1.0");
    for route in ROUTES {
        let op = &doc["paths"][route.path][route.method.to_ascii_lowercase()];
        assert!(
            op["summary"].is_string(),
            "{} {} missing from the OpenAPI document",
            route.method,
            route.path
        );
        assert_eq!(op["x-fleet-role"].as_str(), route.role.map(|r| r.as_str()));
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn releases_from_compose_resolve_through_the_real_registry_and_bad_ones_store_nothing() {
    let env = TestEnv::load();
    let fleet = SimFleet::start().await;
    let web = env.image("web:1");
    let compose = format!(
        "services:\n  web:\n    image: {tag}\n    ports: [\"8080:80\"]\n    deploy:\n      resources:\n        limits: {{ memory: 64M, cpus: \"0.5\" }}\n",
        tag = web.tag
    );
    let (code, body) = fleet
        .api(
            "POST",
            "/api/v1/releases",
            Some(json!({ "app": "site", "version": "1", "compose": compose })),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let service = &body["spec"]["services"][0];
    assert_eq!(
        service["image"]["digest"],
        web.digest.as_str(),
        "the tag became the registry's digest"
    );
    assert_eq!(service["resources"]["memory_bytes"], 64 << 20);
    assert_eq!(body["images"][0]["resolved"]["platforms"][0]["architecture"], "amd64");
    assert!(body["images"][0]["resolved"]["platforms"][0]["download_bytes"].as_u64().unwrap() > 0);
    assert_eq!(body["compose"], compose.as_str(), "the source is kept");

    // Immutable: the same id again is a conflict.
    let (code, body) = fleet
        .api(
            "POST",
            "/api/v1/releases",
            Some(json!({ "app": "site", "version": "1", "compose": compose })),
        )
        .await;
    assert_eq!(code, 409, "{body}");

    // A tag the registry does not have, an unknown key, a build section: every problem with
    // its path, nothing stored.
    let bad = format!(
        "services:\n  web:\n    image: {}/fleet-test/web:no-such-tag\n  api:\n    image: {}\n    build: .\n    flavour: x\n",
        env.registry, web.tag
    );
    let (code, body) = fleet
        .api(
            "POST",
            "/api/v1/releases",
            Some(json!({ "app": "site", "version": "2", "compose": bad })),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    let paths: Vec<&str> =
        body["errors"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(paths.iter().any(|p| p.starts_with("services.api.build")), "{body}");
    assert!(paths.iter().any(|p| p.starts_with("services.api.flavour")), "{body}");
    let unresolved = fleet
        .api(
            "POST",
            "/api/v1/releases",
            Some(json!({ "app": "site", "version": "3", "compose": format!("services:\n  web:\n    image: {}/fleet-test/web:no-such-tag\n", env.registry) })),
        )
        .await;
    assert_eq!(unresolved.0, 422, "{}", unresolved.1);
    assert_eq!(unresolved.1["errors"][0]["path"], "services.web.image", "{}", unresolved.1);
    assert!(
        unresolved.1["errors"][0]["reason"].as_str().unwrap().contains("no-such-tag"),
        "{}",
        unresolved.1
    );
    let (_, list) = fleet.api("GET", "/api/v1/releases", None).await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        1,
        "only the good release is stored: {list}"
    );

    // A hostile file: an alias bomb is refused, not expanded.
    let bomb = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nservices: {}\n";
    let (code, body) = fleet
        .api(
            "POST",
            "/api/v1/releases",
            Some(json!({ "app": "bomb", "version": "1", "compose": bomb })),
        )
        .await;
    assert!(code == 422 || code == 400, "{code} {body}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pins_and_rollouts_refuse_what_makes_no_sense_and_change_nothing() {
    let mut fleet = SimFleet::start().await;
    for id in ["r1", "r2", "r3"] {
        fleet.enroll(id, &[("site", "depot")]).await;
    }
    let spec = |v: &str| {
        json!({
            "id": format!("app@{v}"), "app": "app", "version": v,
            "services": [serde_json::to_value(fleet_proto::ServiceSpec::new(
                fleet_proto::ServiceName::new("web").unwrap(),
                fleet_proto::ImageRef::parse(&format!("r.example/app@sha256:{}", "a".repeat(64))).unwrap(),
            )).unwrap()]
        })
    };
    for v in ["1", "2"] {
        let (code, body) = fleet
            .api(
                "POST",
                "/api/v1/releases",
                Some(json!({ "app": "app", "version": v, "spec": spec(v) })),
            )
            .await;
        assert_eq!(code, 201, "{body}");
    }
    // Pins need a known release and a reason.
    let (code, body) = fleet
        .api("PUT", "/api/v1/devices/r1/pin", Some(json!({ "release": "app@9", "reason": "x" })))
        .await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = fleet
        .api("PUT", "/api/v1/devices/r1/pin", Some(json!({ "release": "app@1", "reason": " " })))
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(detail(&body).contains("reason"), "{body}");
    let (code, body) = fleet
        .api("PUT", "/api/v1/devices/ghost/pin", Some(json!({ "release": "app@1", "reason": "x" })))
        .await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = fleet
        .api(
            "PUT",
            "/api/v1/devices/r1/pin",
            Some(json!({ "release": "app@1", "reason": "bench" })),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["pin"]["pinned_by"], "admin");

    // Targets that match nothing, unknown groups and devices, bad fields.
    for (request, status, says) in [
        (
            json!({ "release": "app@2", "target": "site=nowhere" }),
            409,
            "matches no enrolled device",
        ),
        (
            json!({ "release": "app@2", "target": "group:ghosts" }),
            404,
            "group ghosts does not exist",
        ),
        (json!({ "release": "app@2", "target": "devices:r1,zz" }), 404, "zz"),
        (json!({ "release": "app@7", "target": "site=depot" }), 404, "release app@7"),
        (
            json!({ "release": "app@2", "target": "site=depot", "waves": "10%,5%" }),
            422,
            "must grow",
        ),
        (json!({ "release": "app@2", "target": "devices:r1" }), 422, "pinned"),
    ] {
        let (code, body) = fleet.api("POST", "/api/v1/rollouts", Some(request.clone())).await;
        assert_eq!(code, status, "{request}: {body}");
        assert!(body.to_string().contains(says), "{request}: {body}");
    }
    let (_, list) = fleet.api("GET", "/api/v1/rollouts", None).await;
    assert_eq!(list.as_array().unwrap().len(), 0, "no refused rollout was stored");

    // One active rollout per device: the agents are offline, so this one stays active.
    let (code, first) = fleet
        .api(
            "POST",
            "/api/v1/rollouts",
            Some(json!({ "release": "app@2", "target": "site=depot", "waves": "100%" })),
        )
        .await;
    assert_eq!(code, 201, "{first}");
    assert_eq!(first["status"]["skipped_pinned"][0], "r1");
    let (code, body) = fleet
        .api(
            "POST",
            "/api/v1/rollouts",
            Some(json!({ "release": "app@1", "target": "devices:r2" })),
        )
        .await;
    assert_eq!(code, 409, "{body}");
    assert!(detail(&body).contains("already in active rollouts"), "{body}");
    // Commands that do not fit the state are refused with it.
    let id = first["id"].as_u64().unwrap();
    let (code, _) = fleet.api("POST", &format!("/api/v1/rollouts/{id}/resume"), None).await;
    assert_eq!(code, 409);
    let (code, body) = fleet
        .api(
            "POST",
            &format!("/api/v1/rollouts/{id}/pause"),
            Some(json!({ "reason": "site network work" })),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = fleet.api("POST", &format!("/api/v1/rollouts/{id}/abort"), None).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = fleet
        .api(
            "POST",
            "/api/v1/rollouts",
            Some(json!({ "release": "app@1", "target": "devices:r2" })),
        )
        .await;
    assert_eq!(code, 201, "an aborted rollout frees its devices: {body}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_through_the_api_restores_into_a_new_server() {
    let mut fleet = SimFleet::start().await;
    fleet.enroll("r1", &[("site", "depot")]).await;
    let (code, backup) = fleet.api("GET", "/api/v1/backup", None).await;
    assert_eq!(code, 200);
    let restored = tempfile::tempdir().unwrap();
    let file = restored.path().join("backup.json");
    std::fs::write(&file, backup.to_string()).unwrap();
    let out = std::process::Command::new(fleet_e2e::bin("fleet-server"))
        .args([
            "restore",
            file.to_str().unwrap(),
            "--data",
            restored.path().join("data").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let store = fleet_server::store::Store::open(&restored.path().join("data/store")).unwrap();
    assert_eq!(store.devices().unwrap()[0].id.as_str(), "r1");
    assert_eq!(
        std::fs::read(restored.path().join("data/pki/ca.key")).unwrap(),
        std::fs::read(fleet.server_data().join("pki/ca.key")).unwrap(),
        "the fleet CA comes along, so enrolled devices stay trusted"
    );
    drop(store);
    let again = std::process::Command::new(fleet_e2e::bin("fleet-server"))
        .args([
            "restore",
            file.to_str().unwrap(),
            "--data",
            restored.path().join("data").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a store"));
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn variables_resolve_by_precedence_retarget_only_changed_devices_and_bad_ones_change_nothing()
{
    let env = TestEnv::load();
    let mut fleet = SimFleet::start().await;
    fleet.enroll("r1", &[("site", "depot")]).await;
    fleet.enroll("r2", &[("site", "lab")]).await;
    let (code, body) = fleet
        .api("POST", "/api/v1/groups", Some(json!({ "name": "depot", "selector": "site=depot" })))
        .await;
    assert_eq!(code, 201, "{body}");
    let compose = |default: &str| {
        format!(
            "services:\n  web:\n    image: {tag}\n    ports: [\"${{PORT:-8080}}:80\"]\n    environment:\n      GREETING: ${{GREETING{default}}}\n  worker:\n    image: {tag}\n",
            tag = env.image("web:1").tag
        )
    };

    // An undefined variable without a default: refused with its name and the fix.
    let (code, body) = fleet
        .api(
            "POST",
            "/api/v1/releases",
            Some(json!({ "app": "v", "version": "1", "compose": compose("") })),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["errors"][0]["path"], "services.web.environment.GREETING", "{body}");
    let reason = body["errors"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("fleetctl var set GREETING VALUE"), "{body}");

    // A fleet-wide value makes it resolve; the release stores the fleet's render.
    let (code, body) =
        fleet.api("PUT", "/api/v1/variables/GREETING", Some(json!({ "value": "hello" }))).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["retargeted"], json!([]), "no device runs anything yet: {body}");
    let (code, release) = fleet
        .api(
            "POST",
            "/api/v1/releases",
            Some(json!({ "app": "v", "version": "1", "compose": compose("") })),
        )
        .await;
    assert_eq!(code, 201, "{release}");
    assert_eq!(release["spec"]["services"][0]["env"]["GREETING"], "hello");
    let generation = |fleet: &SimFleet, id: &'static str| {
        let api = fleet.api.clone();
        let token = fleet.token.clone();
        async move {
            let (_, d) =
                api_call(&api, &token, "GET", &format!("/api/v1/devices/{id}"), None).await;
            d["device"]["desired_generation"].as_u64().or(d["desired_generation"].as_u64()).unwrap()
        }
    };
    for id in ["r1", "r2"] {
        let (code, body) = fleet
            .api(
                "PUT",
                &format!("/api/v1/devices/{id}/desired"),
                Some(json!({ "release": release["spec"] })),
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }
    let (g1, g2) = (generation(&fleet, "r1").await, generation(&fleet, "r2").await);

    // A group value that breaks the port on the group's device: 422 naming the device and
    // the Compose path; nothing stored, nobody re-targeted.
    let (code, body) = fleet
        .api("PUT", "/api/v1/variables/PORT", Some(json!({ "value": "99999", "group": "depot" })))
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(detail(&body).contains("r1") && !detail(&body).contains("r2"), "{body}");
    assert!(
        body["errors"][0]["path"].as_str().unwrap().starts_with("services.web.ports"),
        "{body}"
    );
    let (_, list) = fleet.api("GET", "/api/v1/variables", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "only GREETING: {list}");
    assert_eq!((generation(&fleet, "r1").await, generation(&fleet, "r2").await), (g1, g2));

    // A group+service value: exactly the group's device gets a new generation.
    let (code, body) = fleet
        .api(
            "PUT",
            "/api/v1/variables/GREETING",
            Some(json!({ "value": "moin", "group": "depot", "service": "web" })),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["retargeted"], json!(["r1"]), "{body}");
    assert_eq!(body["unchanged"], 0, "{body}");
    assert!(generation(&fleet, "r1").await > g1);
    assert_eq!(generation(&fleet, "r2").await, g2);
    // Where each value comes from: the service's own row where it differs.
    let (code, resolved) = fleet.api("GET", "/api/v1/variables?device=r1", None).await;
    assert_eq!(code, 200, "{resolved}");
    let rows = resolved["items"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{resolved}");
    assert_eq!(
        (&rows[0]["service"], &rows[0]["value"], &rows[0]["origin"]),
        (&Value::Null, &json!("hello"), &json!({})),
        "{resolved}"
    );
    assert_eq!(
        (&rows[1]["service"], &rows[1]["value"]),
        (&json!("web"), &json!("moin")),
        "{resolved}"
    );
    let (_, on_r2) = fleet.api("GET", "/api/v1/variables?device=r2", None).await;
    assert_eq!(on_r2["items"].as_array().unwrap().len(), 1, "r2 is not in depot: {on_r2}");
    // A device value beats the group's, even the group's service-scoped one.
    let (code, body) = fleet
        .api(
            "PUT",
            "/api/v1/variables/GREETING",
            Some(json!({ "value": "servus", "device": "r1" })),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["retargeted"], json!(["r1"]), "{body}");
    let (_, for_web) = fleet.api("GET", "/api/v1/variables?device=r1&service=web", None).await;
    assert_eq!(for_web["items"][0]["value"], "servus", "{for_web}");
    assert_eq!(for_web["items"][0]["origin"], json!({ "device": "r1" }), "{for_web}");
    assert_eq!(
        for_web["items"][0]["overridden"],
        json!([{}, { "group": "depot", "service": "web" }]),
        "{for_web}"
    );

    // Refusals name the field and change nothing.
    for (name, body, code) in [
        ("FLEET_X", json!({ "value": "1" }), 422),
        ("9X", json!({ "value": "1" }), 422),
        ("BIG", json!({ "value": "x".repeat(32 * 1024 + 1) }), 422),
        ("NUL", json!({ "value": "a\u{0}b" }), 422),
        ("G", json!({ "value": "1", "group": "nope" }), 404),
        ("D", json!({ "value": "1", "device": "nope" }), 404),
        ("B", json!({ "value": "1", "group": "depot", "device": "r1" }), 422),
    ] {
        let (got, answer) =
            fleet.api("PUT", &format!("/api/v1/variables/{name}"), Some(body)).await;
        assert_eq!(got, code, "{name}: {answer}");
    }
    let (code, body) = fleet.api("DELETE", "/api/v1/variables/NOPE", None).await;
    assert_eq!(code, 404, "{body}");

    // Unset: the device falls back, and only it is re-targeted.
    let (code, body) = fleet.api("DELETE", "/api/v1/variables/GREETING?device=r1", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["retargeted"], json!(["r1"]), "{body}");
    // The audit says who set what where, never the value.
    let (_, audit) = fleet.api("GET", "/api/v1/audit?limit=50", None).await;
    let lines: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("var."))
        .collect();
    assert_eq!(lines.len(), 4, "GREETING fleet, group+web, device, unset: {audit}");
    assert!(
        lines.iter().all(|e| !e.to_string().contains("servus") && !e.to_string().contains("moin")),
        "{audit}"
    );
    fleet.stop().await;
}

/// PUT of raw bytes (a secret's value): (status, JSON body).
async fn put_bytes(fleet: &SimFleet, path: &str, bytes: Vec<u8>) -> (u16, Value) {
    let (url, token) = (format!("{}{path}", fleet.api), fleet.token.clone());
    tokio::task::spawn_blocking(move || {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
        let mut response = agent
            .put(&url)
            .header("authorization", &format!("Bearer {token}"))
            .header("content-type", "application/octet-stream")
            .send(&bytes[..])
            .unwrap();
        (response.status().as_u16(), response.body_mut().read_json().unwrap_or_default())
    })
    .await
    .unwrap()
}

/// `fleetctl` against `fleet` with the admin token, `stdin` piped in (or none at all).
fn fleetctl(fleet: &SimFleet, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(fleet_e2e::bin("fleetctl"))
        .args(["--server", &fleet.api])
        .args(args)
        .env("FLEET_TOKEN", &fleet.token)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn desired_generation(device: &Value) -> u64 {
    device["desired_generation"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_refused_with_their_field_listed_without_values_and_rotate_only_where_they_change(
) {
    let env = TestEnv::load();
    let mut fleet = SimFleet::start().await;
    fleet.enroll("r1", &[("site", "depot")]).await;
    fleet.enroll("r2", &[("site", "lab")]).await;
    let (code, body) = fleet
        .api("POST", "/api/v1/groups", Some(json!({ "name": "depot", "selector": "site=depot" })))
        .await;
    assert_eq!(code, 201, "{body}");

    // Refusals name the field; nothing is stored.
    let (code, body) = put_bytes(&fleet, "/api/v1/secrets/bad%20name", b"v".to_vec()).await;
    assert_eq!((code, body["errors"][0]["path"].as_str()), (422, Some("name")), "{body}");
    let (code, body) = put_bytes(&fleet, "/api/v1/secrets/db", Vec::new()).await;
    assert_eq!((code, body["errors"][0]["path"].as_str()), (422, Some("value")), "{body}");
    assert!(body["errors"][0]["reason"].as_str().unwrap().contains("empty"), "{body}");
    let (code, body) = put_bytes(&fleet, "/api/v1/secrets/db", vec![b'x'; 64 * 1024 + 1]).await;
    assert_eq!((code, body["errors"][0]["path"].as_str()), (422, Some("value")), "{body}");
    assert!(body["errors"][0]["reason"].as_str().unwrap().contains("65537 bytes"), "{body}");
    let (code, body) =
        put_bytes(&fleet, "/api/v1/secrets/db?group=depot&device=r1", b"v".to_vec()).await;
    assert_eq!(code, 400, "{body}");
    assert!(detail(&body).contains("group or device, not both"), "{body}");
    let (code, _) = put_bytes(&fleet, "/api/v1/secrets/db?group=nope", b"v".to_vec()).await;
    assert_eq!(code, 404);
    let (_, list) = fleet.api("GET", "/api/v1/secrets", None).await;
    assert_eq!(list, json!({ "secrets": [] }));

    // A release mounting a secret nobody set: refused with the service's path and the fix.
    let compose = format!(
        "services:\n  web:\n    image: {tag}\n    secrets:\n      - db\n      - source: tls\n        target: /etc/tls/key.pem\n        mode: 0400\n  worker:\n    image: {tag}\nsecrets:\n  db: {{}}\n  tls: {{name: tls.key}}\n",
        tag = env.image("web:1").tag
    );
    let create = json!({ "app": "s", "version": "1", "compose": compose });
    let (code, body) = fleet.api("POST", "/api/v1/releases", Some(create.clone())).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["errors"][0]["path"], "services.web.secrets[0]", "{body}");
    assert!(
        body["errors"][0]["reason"].as_str().unwrap().contains("fleetctl secret set db < file"),
        "{body}"
    );
    let (code, _) = fleet.api("GET", "/api/v1/releases/s@1", None).await;
    assert_eq!(code, 404, "nothing stored");

    // fleetctl: from a pipe byte for byte (binary, trailing newline kept), from a file.
    let fleet_value = b"fleet-db-pass\x00\xff\n".to_vec();
    let out = fleetctl(&fleet, &["secret", "set", "db"], Some(&fleet_value));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = fleetctl(&fleet, &["secret", "set", "db"], None);
    assert_eq!(out.status.code(), Some(1), "an empty stdin is refused");
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key.pem");
    std::fs::write(&key_file, b"-----BEGIN PRIVATE KEY-----tls-secret").unwrap();
    let out = fleetctl(
        &fleet,
        &["secret", "set", "tls.key", "--from-file", key_file.to_str().unwrap(), "--json"],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let change: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(change["secret"]["scope"], "fleet", "{change}");
    assert_eq!(change["secret"]["bytes"], 37, "{change}");

    let (code, release) = fleet.api("POST", "/api/v1/releases", Some(create)).await;
    assert_eq!(code, 201, "{release}");
    let mounts = &release["spec"]["services"][0]["secrets"];
    assert_eq!(mounts[1]["source"], "tls.key", "{release}");
    assert_eq!(mounts[1]["mode"], 0o400, "{release}");
    for id in ["r1", "r2"] {
        let (code, body) = fleet
            .api(
                "PUT",
                &format!("/api/v1/devices/{id}/desired"),
                Some(json!({ "release": release["spec"] })),
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }
    let generations = || async {
        let mut out = Vec::new();
        for id in ["r1", "r2"] {
            let (_, d) = fleet.api("GET", &format!("/api/v1/devices/{id}"), None).await;
            out.push(desired_generation(&d));
        }
        out
    };
    let g0 = generations().await;

    // A group value reaches only the group's device; the same value again reaches nobody.
    let group_value = b"depot-db-pass".to_vec();
    let (code, body) =
        put_bytes(&fleet, "/api/v1/secrets/db?group=depot", group_value.clone()).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["retargeted"], json!(["r1"]), "{body}");
    let g1 = generations().await;
    assert_eq!((g1[0] > g0[0], g1[1]), (true, g0[1]), "{g0:?} {g1:?}");
    let (_, body) = put_bytes(&fleet, "/api/v1/secrets/db?group=depot", group_value.clone()).await;
    assert_eq!(body["retargeted"], json!([]), "same value, same digest: {body}");
    assert_eq!(generations().await, g1);
    // A device value on r2.
    let device_value = b"r2-db-pass".to_vec();
    let (_, body) = put_bytes(&fleet, "/api/v1/secrets/db?device=r2", device_value.clone()).await;
    assert_eq!(body["retargeted"], json!(["r2"]), "{body}");

    // The list: every scope, digests and sizes, never a value.
    let out = fleetctl(&fleet, &["secret", "ls", "--json"], None);
    assert!(out.status.success());
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = list["secrets"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{list}");
    let group_row = rows.iter().find(|r| r["scope"] == "group").unwrap();
    assert_eq!(group_row["group"], "depot");
    assert_eq!(group_row["bytes"], group_value.len());
    assert_eq!(group_row["set_by"], "admin");
    assert_eq!(group_row["digest"].as_str().unwrap().len(), 32);
    assert!(group_row.get("value").is_none() && group_row.get("ciphertext").is_none());
    let device_row = rows.iter().find(|r| r["scope"] == "device").unwrap();
    assert_eq!(device_row["device"], "r2");
    let fleet_row = rows.iter().find(|r| r["scope"] == "fleet" && r["name"] == "db").unwrap();
    assert_ne!(fleet_row["digest"], group_row["digest"]);
    let table = fleetctl(&fleet, &["secret", "ls"], None);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains("NAME") && table.contains("SET-BY") && table.contains("group depot"));

    // Removing the group value: r1 falls back to the fleet's (re-targeted), r2 keeps its own.
    let (code, body) = fleet.api("DELETE", "/api/v1/secrets/db?group=depot", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["retargeted"], json!(["r1"]), "{body}");
    // Removing the fleet value would leave r1 without one: refused naming it; nothing changes.
    let before = generations().await;
    let (code, body) = fleet.api("DELETE", "/api/v1/secrets/db", None).await;
    assert_eq!(code, 409, "{body}");
    assert!(detail(&body).contains("r1") && !detail(&body).contains("r2"), "{body}");
    assert_eq!(body["errors"][0]["path"], "secrets.db", "{body}");
    let out = fleetctl(&fleet, &["secret", "rm", "db"], None);
    assert_eq!(out.status.code(), Some(2), "refused by the server");
    let (_, list) = fleet.api("GET", "/api/v1/secrets", None).await;
    assert_eq!(list["secrets"].as_array().unwrap().len(), 3, "{list}");
    assert_eq!(generations().await, before);

    // No value anywhere the API shows: the list, devices, releases, the audit log.
    let mut shown = String::new();
    for path in ["/api/v1/secrets", "/api/v1/devices/r1", "/api/v1/devices/r2", "/api/v1/audit"] {
        shown.push_str(&fleet.api("GET", path, None).await.1.to_string());
    }
    assert!(shown.contains("secret.set") && shown.contains("secret.rm"), "audited");
    for value in [&b"fleet-db-pass"[..], &group_value, &device_value, b"tls-secret"] {
        assert!(!shown.contains(std::str::from_utf8(value).unwrap()), "{shown}");
    }
    fleet.stop().await;
}

/// The retained desired state of `id` as the embedded broker holds it (the encoded, signed
/// state), read by a fresh subscriber.
async fn retained_desired(fleet: &SimFleet, id: &str) -> Vec<u8> {
    use fleet_proto::{topic, DeviceId, TopicKind};
    static READERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = READERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut opts = rumqttc::MqttOptions::new(
        format!("fleet-server-desired-reader-{}-{n}", std::process::id()),
        fleet.mqtt.ip().to_string(),
        fleet.mqtt.port(),
    );
    let (user, password) = fleet.server_login();
    opts.set_credentials(user, password);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, events) = rumqttc::AsyncClient::new(opts, 10);
    let mut seen = fleet_e2e::fleet::watch(events);
    fleet_e2e::fleet::connected(&mut seen, "the desired-state reader").await;
    let t = topic(&DeviceId::new(id).unwrap(), TopicKind::Desired);
    client.subscribe(&t, rumqttc::QoS::AtLeastOnce).await.unwrap();
    let payload = fleet_e2e::fleet::receive(&mut seen, &t).await;
    let _ = client.disconnect().await;
    payload
}

#[tokio::test(flavor = "multi_thread")]
async fn relabelling_and_group_changes_retarget_exactly_the_devices_whose_render_changes() {
    let env = TestEnv::load();
    let mut fleet = SimFleet::start().await;
    fleet.enroll("r1", &[("site", "lab")]).await;
    fleet.enroll("r2", &[("site", "yard")]).await;
    let generation = |fleet: &SimFleet, id: &'static str| {
        let (api, token) = (fleet.api.clone(), fleet.token.clone());
        async move {
            let (_, d) =
                api_call(&api, &token, "GET", &format!("/api/v1/devices/{id}"), None).await;
            d["desired_generation"].as_u64().unwrap()
        }
    };
    let holds =
        |payload: &[u8], value: &str| payload.windows(value.len()).any(|w| w == value.as_bytes());
    let group = |name: &str, selector: &str| json!({ "name": name, "selector": selector });
    let set = |value: &str, group: &str| json!({ "value": value, "group": group });

    // Groups and their values: depot now; yard's value is stored while the group is away
    // (a removed group's values apply to nobody), and bad's port would break the release.
    for (name, selector, var, value) in [
        ("depot", "site=depot", "GREETING", "from-depot"),
        ("yard", "site=yard", "GREETING", "from-yard"),
        ("bad", "broken", "PORT", "99999"),
    ] {
        let (code, body) = fleet.api("POST", "/api/v1/groups", Some(group(name, selector))).await;
        assert_eq!(code, 201, "{body}");
        assert_eq!(body["retargeted"], json!([]), "nothing runs yet: {body}");
        let (code, body) =
            fleet.api("PUT", &format!("/api/v1/variables/{var}"), Some(set(value, name))).await;
        assert_eq!(code, 200, "{body}");
    }
    let (code, body) = fleet.api("DELETE", "/api/v1/groups/yard", None).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = fleet
        .api("PUT", "/api/v1/variables/GREETING", Some(json!({ "value": "from-fleet" })))
        .await;
    assert_eq!(code, 200, "{body}");
    let compose = format!(
        "services:\n  web:\n    image: {tag}\n    ports: [\"${{PORT:-8080}}:80\"]\n    environment:\n      GREETING: ${{GREETING}}\n",
        tag = env.image("web:1").tag
    );
    let (code, release) = fleet
        .api(
            "POST",
            "/api/v1/releases",
            Some(json!({ "app": "g", "version": "1", "compose": compose })),
        )
        .await;
    assert_eq!(code, 201, "{release}");
    for id in ["r1", "r2"] {
        let (code, body) = fleet
            .api(
                "PUT",
                &format!("/api/v1/devices/{id}/desired"),
                Some(json!({ "release": release["spec"] })),
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }
    let (g1, g2) = (generation(&fleet, "r1").await, generation(&fleet, "r2").await);
    assert!(holds(&retained_desired(&fleet, "r1").await, "from-fleet"));

    // Relabel r1 into depot: only r1 gets a new generation, rendered with depot's value.
    let (code, body) = fleet
        .api("PATCH", "/api/v1/devices/r1", Some(json!({ "labels": { "site": "depot" } })))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["retargeted"], json!(["r1"]), "{body}");
    assert_eq!(body["labels"]["site"], "depot", "the record's fields stay: {body}");
    let r1 = generation(&fleet, "r1").await;
    assert!(r1 > g1);
    assert_eq!(body["desired_generation"], r1, "{body}");
    assert_eq!(generation(&fleet, "r2").await, g2);
    let state = retained_desired(&fleet, "r1").await;
    assert!(holds(&state, "from-depot") && !holds(&state, "from-fleet"), "depot's value is sent");
    // A label no group selects: same render, no new generation.
    let (code, body) =
        fleet.api("PATCH", "/api/v1/devices/r1", Some(json!({ "labels": { "room": "2" } }))).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["retargeted"], json!([]), "{body}");
    assert_eq!(generation(&fleet, "r1").await, r1);

    // A relabel into a group whose value breaks the release: 422 naming r1, nothing stored.
    let (code, body) =
        fleet.api("PATCH", "/api/v1/devices/r1", Some(json!({ "labels": { "broken": "" } }))).await;
    assert_eq!(code, 422, "{body}");
    assert!(detail(&body).contains("r1"), "{body}");
    assert!(
        body["errors"][0]["path"].as_str().unwrap().starts_with("services.web.ports"),
        "{body}"
    );
    let (_, shown) = fleet.api("GET", "/api/v1/devices/r1", None).await;
    assert!(shown["labels"].get("broken").is_none(), "labels unchanged: {shown}");
    assert_eq!(generation(&fleet, "r1").await, r1);

    // Yard again: its stored value now applies to r2, and only r2 is re-targeted.
    let (code, body) = fleet.api("POST", "/api/v1/groups", Some(group("yard", "site=yard"))).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["retargeted"], json!(["r2"]), "{body}");
    assert_eq!(body["name"], "yard", "the group's fields stay: {body}");
    let r2 = generation(&fleet, "r2").await;
    assert!(r2 > g2);
    assert_eq!(generation(&fleet, "r1").await, r1);
    assert!(holds(&retained_desired(&fleet, "r2").await, "from-yard"));

    // Removing it sends r2 back to the fleet's value; r1 is untouched.
    let (code, body) = fleet.api("DELETE", "/api/v1/groups/yard", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["retargeted"], json!(["r2"]), "{body}");
    assert!(generation(&fleet, "r2").await > r2);
    assert_eq!(generation(&fleet, "r1").await, r1);
    let state = retained_desired(&fleet, "r2").await;
    assert!(holds(&state, "from-fleet") && !holds(&state, "from-yard"), "back to the fleet's");
    fleet.stop().await;
}

/// Schemathesis generates requests from the server's own OpenAPI document (the schema's
/// positive and negative values for every parameter and body, then random ones) and checks
/// each answer: no 5xx, statuses, content types and bodies as documented, schema-valid requests
/// accepted (except the rules tests/api/schemathesis.toml lists), schema-violating ones refused,
/// 405 with `Allow` for undeclared methods. The seed is fixed so a run is repeatable; a failure
/// prints the curl command that reproduces it.
#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_holds_under_property_based_requests() {
    let env = TestEnv::load();
    assert!(
        std::path::Path::new(&env.schemathesis).is_file(),
        "no schemathesis in the test environment ({:?}): re-run tests/env/up",
        env.schemathesis
    );
    let mut fleet = SimFleet::start().await;
    // Some devices and a group, so device and group routes answer more than 404.
    fleet.enroll("robot-1", &[("site", "depot")]).await;
    fleet.enroll("robot-2", &[("site", "lab")]).await;
    let (code, body) = fleet
        .api("POST", "/api/v1/groups", Some(json!({ "name": "depot", "selector": "site=depot" })))
        .await;
    assert_eq!(code, 201, "{body}");
    let config = fleet_e2e::fleet::repo().join("tests/api/schemathesis.toml");
    let report = fleet.dir.path().join("schemathesis.txt");
    let mut command = std::process::Command::new(&env.schemathesis);
    command
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/api/openapi.json", fleet.api))
        .args(["-H", &format!("Authorization: Bearer {}", fleet.token)])
        // The coverage phase: for every parameter and body field, the schema's boundary values,
        // positive and negative (deterministic, seconds). The random fuzzing phase is left to
        // hand runs: on this document its generator can run for many minutes (tests/api/README).
        .args(["--phases", "examples,coverage"])
        .args(["--seed", "20261207", "--workers", "2", "--request-timeout", "5"])
        .args(["--max-failures", "50", "--no-color"])
        .stdout(std::fs::File::create(&report).unwrap())
        .stderr(std::process::Stdio::inherit());
    let status = tokio::task::spawn_blocking(move || command.status()).await.unwrap().unwrap();
    let output = std::fs::read_to_string(&report).unwrap();
    assert!(status.success(), "schemathesis found the document and the server apart:\n{output}");
    // Schemathesis leaves out the URL it loaded the document from; the configuration turns off
    // one more (creating a release, which reaches registries over the network): every other
    // route.
    let total = ROUTES.len() - 1;
    let all = format!("{} selected / {total} total", total - 1);
    assert!(output.contains(&all), "every operation was tested:\n{output}");
    fleet.stop().await;
}

/// The answers a client meets before any handler runs are problem details too: a method a
/// known path does not take (405 with `Allow`), a body that is not JSON, an unknown query
/// parameter.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_before_the_handler_are_problem_details() {
    let fleet = SimFleet::start().await;
    let client = raw_client(&fleet);
    for (method, path, allow) in [
        ("PUT", "/api/v1/devices", "GET"),
        ("POST", "/healthz", "GET"),
        ("GET", "/api/v1/rollouts/7/pause", "POST"),
        ("DELETE", "/api/v1/devices/robot-1", "GET, PATCH"),
    ] {
        let answer = client(method, path, None);
        assert_eq!(answer.status, 405, "{method} {path}: {}", answer.body);
        assert_eq!(answer.allow.as_deref(), Some(allow), "{method} {path}");
        assert_eq!(answer.content_type, "application/problem+json", "{method} {path}");
    }
    let answer = client("POST", "/api/v1/groups", Some("{not json"));
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(answer.content_type, "application/problem+json");
    let answer = client("POST", "/api/v1/rollouts/1/pause", Some("[null, null]"));
    assert_eq!(answer.content_type, "application/problem+json", "{}", answer.body);
    assert!(answer.status == 400 || answer.status == 422, "{}", answer.body);
    let answer = client("GET", "/api/v1/devices?grup=depot", None);
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.contains("grup"), "names the parameter: {}", answer.body);
    fleet.stop().await;
}

struct Answer {
    status: u16,
    content_type: String,
    allow: Option<String>,
    body: String,
}

/// A raw HTTP client with the fleet's admin token (ureq, blocking: these are single calls).
fn raw_client(fleet: &SimFleet) -> impl Fn(&str, &str, Option<&str>) -> Answer {
    let (api, token) = (fleet.api.clone(), fleet.token.clone());
    move |method, path, body| {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{api}{path}"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(body.unwrap_or_default().to_owned())
            .unwrap();
        let mut response = agent.run(request).unwrap();
        let header = |name: &str| {
            response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        let (content_type, allow) = (header("content-type").unwrap_or_default(), header("allow"));
        Answer {
            status: response.status().as_u16(),
            content_type,
            allow,
            body: response.body_mut().read_to_string().unwrap_or_default(),
        }
    }
}
