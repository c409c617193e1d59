//! The dashboard in a real browser: the distribution's Chromium, headless, over WebDriver
//! (`fleet_e2e::browser`), against fleet-server on embedded defaults with real agents on the
//! simulated engine (`fleet_e2e::simfleet`). A fleet manager's day: log in, filter devices,
//! pin every match with a reason, create a rollout from its preview and watch its waves move
//! live, see a failing canary pause the next one without reloading, retry the failed device;
//! a viewer sees no control; and the same flow once more with JavaScript off. axe-core checks
//! every page; screenshots of every page land in `target/tmp/dashboard-screenshots/`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use fleet_agent::runtime::sim::ImageBehavior;
use fleet_e2e::browser::Browser;
use fleet_e2e::eventually;
use fleet_e2e::simfleet::SimFleet;
use fleet_proto::{ImageRef, ReleaseSpec};
use serde_json::json;

const DEVICES: usize = 6;

fn image(n: u8) -> ImageRef {
    fleet_e2e::simfleet::app_image(n)
}

fn release(version: &str, image: ImageRef) -> ReleaseSpec {
    fleet_e2e::simfleet::app_release(version, image, Duration::from_secs(5))
}

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots")
}

/// Six agents (robot-0..3 at site a, robot-4..5 at site b), group `demo`, releases app@1
/// (healthy) and app@2 (crashes at start), and an operator and a viewer token.
async fn fleet() -> (SimFleet, String, String) {
    let mut fleet = SimFleet::start().await;
    let images = [(image(1), ImageBehavior::Healthy), (image(2), ImageBehavior::CrashAtStart)];
    for i in 0..DEVICES {
        let site = if i < 4 { "a" } else { "b" };
        fleet.enroll(&format!("robot-{i}"), &[("fleet", "demo"), ("site", site)]).await;
        fleet.start_agent(&format!("robot-{i}"), &images);
    }
    let fleet_ref = &fleet;
    eventually("every agent online", Duration::from_secs(60), || async move {
        let (_, page) = fleet_ref.api("GET", "/api/v1/devices", None).await;
        let online =
            page["items"].as_array().unwrap().iter().filter(|d| d["online"] == true).count();
        (online == DEVICES).then_some(())
    })
    .await;
    let (code, body) = fleet
        .api("POST", "/api/v1/groups", Some(json!({ "name": "demo", "selector": "fleet=demo" })))
        .await;
    assert_eq!(code, 201, "{body}");
    for (v, n) in [("1", 1), ("2", 2)] {
        let body = json!({ "app": "app", "version": v, "spec": release(v, image(n)) });
        let (code, body) = fleet.api("POST", "/api/v1/releases", Some(body)).await;
        assert_eq!(code, 201, "{body}");
    }
    let mut tokens = Vec::new();
    for (name, role) in [("ops", "operator"), ("watcher", "viewer")] {
        let (code, body) =
            fleet.api("POST", "/api/v1/tokens", Some(json!({ "name": name, "role": role }))).await;
        assert_eq!(code, 201, "{body}");
        tokens.push(body["token"].as_str().unwrap().to_owned());
    }
    let viewer = tokens.pop().unwrap();
    let operator = tokens.pop().unwrap();
    (fleet, operator, viewer)
}

async fn log_in(browser: &Browser, base: &str, token: &str) {
    browser.goto(&format!("{base}/devices")).await;
    assert_eq!(
        browser.path().await,
        "/login?next=%2Fdevices",
        "a page without a session asks to log in"
    );
    browser.fill("#token", token).await;
    browser.follow("form.login button[type=submit]").await;
    let path = browser.path().await;
    assert_eq!(path, "/devices", "back where the visitor wanted to go: {}", browser.html().await);
}

/// Creates a rollout of `release` to the demo group through the form and its preview; the
/// rollout page's path.
async fn rollout_from_form(browser: &Browser, base: &str, release: &str) -> String {
    browser.goto(&format!("{base}/rollouts/new")).await;
    browser.click(&format!("#r-release option[value='{release}']")).await;
    browser.fill("#r-target", "group:demo").await;
    browser.fill("#r-waves", "1,100%").await;
    browser.fill("#r-bake", "1s").await;
    browser.follow("form[action='/rollouts/new'] button[type=submit]").await;
    browser.follow("form[action='/rollouts'] button[type=submit]").await;
    let path = browser.path().await;
    assert!(path.ends_with("?done=created"), "{path}: {}", browser.html().await);
    path.trim_end_matches("?done=created").to_owned()
}

/// Reloads `url` until its HTML holds `mark` (how a page without JavaScript follows a rollout).
async fn reload_until(browser: &Browser, url: &str, mark: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        browser.goto(url).await;
        if browser.html().await.contains(mark) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{url} shows no {mark:?} after 60 s of reloads"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// No serious or critical accessibility violation on the page as it is now.
async fn accessible(browser: &Browser, page: &str) {
    let violations = browser.axe().await;
    assert!(violations.is_empty(), "{page}: {violations:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_manager_runs_rollouts_from_the_dashboard() {
    let (fleet, operator, viewer) = fleet().await;
    let base = fleet.api.clone();
    let browser = Browser::start(true, &shots()).await.unwrap_or_else(|e| panic!("{e}"));
    log_in(&browser, &base, &operator).await;
    assert_eq!(browser.js("return document.documentElement.className").await, "js");

    // Filter, select all matching, pin with a reason; the device page says so.
    browser.goto(&format!("{base}/devices?selector=site%3Db")).await;
    assert_eq!(browser.text("#count").await, "2 devices match.");
    browser.screenshot("devices").await;
    accessible(&browser, "devices").await;
    browser.click("details.bulk summary").await;
    browser.fill("#b-release", "app@1").await;
    browser.fill("#b-reason", "site b waits for new lidars").await;
    browser.follow("details.bulk button[type=submit]").await;
    let html = browser.html().await;
    assert!(html.contains("2 devices change"), "{html}");
    browser.screenshot("bulk-preview").await;
    accessible(&browser, "bulk preview").await;
    browser.follow("form[action='/bulk/devices'] button[type=submit]").await;
    assert!(browser.html().await.contains("2 devices changed"));
    browser.goto(&format!("{base}/devices/robot-5")).await;
    let html = browser.html().await;
    assert!(html.contains("Held on <strong>app@1</strong> by ops"), "{html}");
    assert!(html.contains("site b waits for new lidars"), "{html}");
    browser.screenshot("device").await;
    accessible(&browser, "device").await;

    // A rollout from its previewed plan; its waves move on the page without a reload.
    browser.goto(&format!("{base}/rollouts/new")).await;
    browser.click("#r-release option[value='app@1']").await;
    browser.fill("#r-target", "group:demo").await;
    browser.fill("#r-waves", "1,100%").await;
    browser.fill("#r-bake", "2s").await;
    browser.follow("form[action='/rollouts/new'] button[type=submit]").await;
    let html = browser.html().await;
    assert!(html.contains("4 devices in 2 waves") && html.contains("Left out, pinned"), "{html}");
    browser.screenshot("rollout-plan").await;
    accessible(&browser, "new rollout").await;
    browser.follow("form[action='/rollouts'] button[type=submit]").await;
    assert!(browser.path().await.ends_with("?done=created"));
    browser.js("window.fleetTestMarker = 'same page'; return true").await;
    browser
        .wait_for_html("the rollout to complete on the page", Duration::from_secs(60), |h| {
            h.contains("✓</span> completed")
        })
        .await;
    let html = browser.html().await;
    assert!(html.contains("1 healthy") && html.contains("3 healthy"), "{html}");
    assert_eq!(browser.js("return window.fleetTestMarker").await, "same page", "no reload");
    browser.screenshot("rollout-completed").await;
    accessible(&browser, "rollout").await;

    // A failing canary: the next rollout pauses itself and the open page says so.
    let (code, created) = fleet
        .api(
            "POST",
            "/api/v1/rollouts",
            Some(json!({ "release": "app@2", "target": "demo", "waves": "1,100%", "bake": "2s", "update_deadline": "30s" })),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_u64().unwrap();
    browser.goto(&format!("{base}/rollouts/{id}")).await;
    browser.js("window.fleetTestMarker = 'same page'; return true").await;
    let html = browser
        .wait_for_html("the canary's failure to pause the rollout", Duration::from_secs(60), |h| {
            h.contains("!</span> paused")
        })
        .await;
    assert!(html.contains("1 of 0 failures allowed used"), "{html}");
    assert!(html.contains("rolled back on the device") || html.contains("update failed"), "{html}");
    assert_eq!(browser.js("return window.fleetTestMarker").await, "same page", "no reload");
    let said = format!("Rollout {id} is now paused.");
    browser
        .wait_for_html("the live region to say so", Duration::from_secs(5), |h| h.contains(&said))
        .await;
    assert_eq!(browser.text("#announce").await, said, "said in the polite live region");
    browser.screenshot("rollout-paused").await;
    accessible(&browser, "paused rollout").await;

    // Retry the failed device, after a page that says what that does.
    browser.follow(&format!("a[href='/rollouts/{id}/confirm/retry']")).await;
    assert!(browser.html().await.contains("fresh deadlines"));
    browser.screenshot("rollout-retry-confirm").await;
    accessible(&browser, "retry confirmation").await;
    browser.follow(&format!("form[action='/rollouts/{id}/retry'] button[type=submit]")).await;
    assert!(browser.html().await.contains("The failed devices were given another try."));
    let (_, audit) = fleet.api("GET", "/api/v1/audit", None).await;
    let retried = audit
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "rollout.retry" && e["actor"] == "ops");
    assert!(retried, "the retry is audited with the token's name");
    // The image still crashes: the retried canary fails again and the gate pauses again.
    browser
        .wait_for_html("the retried canary to fail again", Duration::from_secs(60), |h| {
            h.contains("!</span> paused")
        })
        .await;

    // The other pages, photographed and checked.
    for (page, name) in [
        ("/", "overview"),
        ("/rollouts", "rollouts"),
        ("/releases", "releases"),
        ("/releases/app@2", "release"),
        ("/releases/new", "release-new"),
        ("/groups", "groups"),
        ("/config", "variables-and-secrets"),
        ("/devices/robot-0?range=1h", "device-telemetry"),
        ("/audit?since=1h", "audit"),
    ] {
        browser.goto(&format!("{base}{page}")).await;
        browser.screenshot(name).await;
        accessible(&browser, page).await;
    }
    let html = browser.html().await;
    assert!(html.contains("rollout.retry"), "the audit page lists it: {html}");
    // Every number on the overview is a link to the list behind it.
    browser.goto(&format!("{base}/")).await;
    browser.follow("a[href='/devices?state=online']").await;
    assert_eq!(browser.text("#count").await, "6 devices match.");
    browser.goto(&format!("{base}/groups")).await;
    browser.follow("a[href='/devices?group=demo']").await;
    assert_eq!(browser.text("#count").await, "6 devices match.");
    browser.close().await;

    // An admin sees the tokens; a viewer sees no control anywhere.
    let admin = Browser::start(true, &shots()).await.unwrap();
    log_in(&admin, &base, &fleet.token).await;
    admin.goto(&format!("{base}/tokens")).await;
    let html = admin.html().await;
    assert!(
        html.contains("ops") && html.contains("watcher") && !html.contains(&operator),
        "{html}"
    );
    admin.screenshot("tokens").await;
    accessible(&admin, "tokens").await;
    admin.close().await;
    let watcher = Browser::start(true, &shots()).await.unwrap();
    log_in(&watcher, &base, &viewer).await;
    for page in
        ["/", "/devices", "/devices/robot-5", "/rollouts", &format!("/rollouts/{id}"), "/groups"]
    {
        watcher.goto(&format!("{base}{page}")).await;
        let html = watcher.html().await;
        assert_eq!(html.matches("method=\"post\"").count(), 1, "{page}: only logging out posts");
        assert!(!html.contains("Retry failed devices") && !html.contains("Unpin"), "{page}");
        assert!(!html.contains("Change all"), "{page}: no bulk change");
    }
    watcher.close().await;

    // The whole flow once more with JavaScript off: every form posts and redirects, and a
    // reload shows what the live view would have.
    let plain = Browser::start(false, &shots()).await.unwrap();
    log_in(&plain, &base, &operator).await;
    assert_eq!(plain.js("return document.documentElement.className").await, "", "no script ran");
    plain.goto(&format!("{base}/rollouts/{id}")).await;
    assert!(!plain.html().await.contains("class=\"js\""));
    plain.follow(&format!("a[href='/rollouts/{id}/confirm/abort']")).await;
    plain.follow(&format!("form[action='/rollouts/{id}/abort'] button[type=submit]")).await;
    assert_eq!(plain.path().await, format!("/rollouts/{id}?done=aborted"));
    plain.screenshot("rollout-aborted-without-javascript").await;

    // Filter, select all matching, unpin them with a preview.
    plain.goto(&format!("{base}/devices?selector=site%3Db")).await;
    plain.click("details.bulk summary").await;
    plain.click("details.bulk input[value=unpin]").await;
    plain.follow("details.bulk button[type=submit]").await;
    assert!(plain.html().await.contains("2 devices change"));
    plain.follow("form[action='/bulk/devices'] button[type=submit]").await;
    assert!(plain.html().await.contains("2 devices changed"));
    plain.goto(&format!("{base}/devices/robot-5")).await;
    assert!(plain.html().await.contains("Not pinned: rollouts move it."));

    // A rollout from its preview; reloads show it complete.
    let page = rollout_from_form(&plain, &base, "app@1").await;
    reload_until(&plain, &format!("{base}{page}"), "✓</span> completed").await;
    // A failing canary pauses the next one; retry its failed device from the page.
    let page = rollout_from_form(&plain, &base, "app@2").await;
    reload_until(&plain, &format!("{base}{page}"), "!</span> paused").await;
    let retry = format!("{page}/confirm/retry");
    plain.follow(&format!("a[href='{retry}']")).await;
    plain.follow(&format!("form[action='{page}/retry'] button[type=submit]")).await;
    assert!(plain.html().await.contains("The failed devices were given another try."));
    plain.screenshot("rollout-retried-without-javascript").await;
    plain.close().await;
    fleet.stop().await;
}
