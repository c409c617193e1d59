//! A real browser for the dashboard's tests: the distribution's Chromium, headless, driven
//! through its own chromedriver over WebDriver (fantoccini). `tests/env/up` installs both
//! (`chromium`, `chromium-driver`); nothing is downloaded.
//!
//! Each [`Browser`] is one chromedriver process with one browser session and its own profile
//! directory, so sessions share no cookies. Pages are checked with axe-core, vendored in
//! `tests/fixtures/axe-core/`, and photographed at 1280×800 into a directory the test names.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// The accessibility engine, run in the page under test.
const AXE: &str = include_str!("../fixtures/axe-core/axe.min.js");

/// One headless Chromium session.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser").finish_non_exhaustive()
    }
}

/// An accessibility rule a page breaks, as axe reports it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Violation {
    /// The rule.
    pub id: String,
    /// `serious` or `critical` (the others are not collected).
    pub impact: String,
    /// What the rule asks for.
    pub help: String,
    /// CSS selectors of the offending elements.
    pub nodes: Vec<String>,
}

impl Browser {
    /// Starts chromedriver and a browser with JavaScript on or off; screenshots go to `shots`.
    pub async fn start(javascript: bool, shots: &Path) -> Result<Browser, String> {
        for binary in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            if !Path::new(binary).exists() {
                return Err(format!(
                    "{binary} is missing: run tests/env/up (it installs the distribution's chromium and chromium-driver)"
                ));
            }
        }
        let port = crate::free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting chromedriver: {e}"))?;
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut args = vec![
            "--headless=new".to_owned(),
            // Root in a container has no user namespace for the sandbox; the pages are ours.
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1280,800".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        if !javascript {
            args.push("--blink-settings=scriptEnabled=false".to_owned());
        }
        let mut options = json!({ "binary": "/usr/bin/chromium", "args": args });
        if !javascript {
            options["prefs"] = json!({ "profile.managed_default_content_settings.javascript": 2 });
        }
        let capabilities = json!({ "browserName": "chrome", "goog:chromeOptions": options });
        let Value::Object(capabilities) = capabilities else { unreachable!() };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(format!("no browser session from chromedriver at {url}: {e}"))
                }
            }
        };
        std::fs::create_dir_all(shots).map_err(|e| format!("{}: {e}", shots.display()))?;
        Ok(Browser { client, driver, _profile: profile, shots: shots.to_owned() })
    }

    /// Goes to `url` and waits for the page.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// The page's path and query, as the browser shows them.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// The page's HTML as it is now (after any live updates).
    pub async fn html(&self) -> String {
        self.client.source().await.unwrap()
    }

    /// The visible text of the element `css` names.
    pub async fn text(&self, css: &str) -> String {
        let element = self.client.find(Locator::Css(css)).await;
        element.unwrap_or_else(|e| panic!("no {css} on the page: {e}")).text().await.unwrap()
    }

    /// Types `value` into the field `css` names (clearing it first).
    pub async fn fill(&self, css: &str, value: &str) {
        let field =
            self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    /// Clicks the element `css` names (a control that stays on the page).
    pub async fn click(&self, css: &str) {
        let element =
            self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
        element.click().await.unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }

    /// Clicks the link or button `css` names and waits until the next page has loaded: the
    /// old document carries a mark the new one does not.
    pub async fn follow(&self, css: &str) {
        self.js("window.fleetOldDocument = true; return true").await;
        self.click(css).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = self
                .client
                .execute("return [window.fleetOldDocument === true, document.readyState]", vec![])
                .await;
            if let Ok(Value::Array(v)) = state {
                if v.first() == Some(&Value::Bool(false)) && v.get(1) == Some(&json!("complete")) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "clicking {css} led to no new page");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until `check` finds what it wants in the page's HTML.
    pub async fn wait_for_html(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let html = self.html().await;
            if check(&html) {
                return html;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; the page is:\n{html}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs a script in the page and returns its value.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("running {script}: {e}"))
    }

    /// The serious and critical accessibility violations of the page as it is now.
    pub async fn axe(&self) -> Vec<Violation> {
        self.client.execute(&format!("{AXE}\nreturn true;"), vec![]).await.expect("axe loads");
        let script = r"
            const done = arguments[arguments.length - 1];
            axe.run(document, { resultTypes: ['violations'] }).then(r => done(JSON.stringify(
              r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical').map(v => ({
                id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' ')),
              }))
            )), e => done(JSON.stringify([{ id: 'axe-error', impact: 'critical', help: String(e), nodes: [] }])));
        ";
        let found = self.client.execute_async(script, vec![]).await.expect("axe runs");
        serde_json::from_str(found.as_str().unwrap_or("[]")).unwrap()
    }

    /// Saves a 1280×800 screenshot as `name.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// Ends the session and the driver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
