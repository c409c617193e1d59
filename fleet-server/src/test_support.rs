//! What the server's in-process tests share: a whole `Api` on a temporary store with an MQTT
//! client that is never polled (what operations publish waits in its queue), an image resolver
//! that needs no registry, and helpers to log in and post forms as a browser does.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use fleet_api::Role;
use fleet_proto::{DeviceId, UnixMillis};
use tower::ServiceExt;

use crate::api::{self, Api};
use crate::auth;
use crate::devices::DeviceRecord;
use crate::releases::ReleaseRecord;
use crate::web::SessionKey;

pub(crate) struct Harness {
    pub(crate) api: Api,
    pub(crate) admin_token: String,
    _events: rumqttc::EventLoop,
    _dir: tempfile::TempDir,
}

/// Resolves every reference to itself, one amd64 image: the unit tests have no registry.
struct Offline;

impl crate::releases::ImageResolver for Offline {
    fn resolve(&self, reference: &str) -> Result<fleet_oci::platform::ResolvedImage, String> {
        let image = fleet_proto::ImageRef::parse(reference).map_err(|e| e.to_string())?;
        Ok(fleet_oci::platform::ResolvedImage {
            image,
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            platforms: vec![fleet_oci::platform::PlatformImage {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None,
                digest: format!("sha256:{}", "b".repeat(64)),
                download_bytes: 1,
            }],
        })
    }
}

pub(crate) fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::Store::open(&dir.path().join("store")).unwrap());
    let keys = crate::open_keys(dir.path()).unwrap();
    let pki = Arc::new(keys.pki);
    // Never polled: what the operations publish waits in the client's queue.
    let (mqtt, events) =
        rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("web-test", "127.0.0.1", 1), 1024);
    let publisher = crate::desired::Publisher::new(mqtt.clone(), pki.clone(), vec![]);
    let driver = crate::rollout::driver::Driver::new(store.clone(), pki.clone(), publisher.clone());
    let registry = Arc::new(crate::registry::RegistryResolver::new(
        vec![],
        None,
        fleet_oci::guard::Allowlist::default(),
    ));
    let api = Api {
        store,
        pki,
        bootstrap: Arc::new(auth::bootstrap(&keys.admin_token)),
        device_broker: "mqtt://127.0.0.1:1883".into(),
        broker_logins: None,
        crl_changed: Arc::new(|| {}),
        mqtt,
        publisher,
        waiters: crate::commands::Waiters::default(),
        driver,
        resolver: Arc::new(Offline),
        agent_pusher: registry,
        sessions: Arc::new(SessionKey::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &[9; 32],
        ))),
        live: crate::web::LiveHub::default(),
        data_dir: dir.path().to_owned(),
    };
    Harness { api, admin_token: keys.admin_token, _events: events, _dir: dir }
}

impl Harness {
    pub(crate) fn router(&self) -> Router {
        api::router(self.api.clone())
    }

    /// A token of `role`, as `fleetctl token create` makes it.
    pub(crate) fn token(&self, name: &str, role: Role) -> String {
        let (record, presented) =
            auth::issue(name, role, "admin", UnixMillis::now(), None, &[name.len() as u8; 32]);
        self.api
            .store
            .update(|tx| -> Result<(), crate::store::StoreError> {
                tx.put_token(&record);
                Ok(())
            })
            .unwrap();
        presented
    }

    /// Logs in with `token` through the form; the session cookie.
    pub(crate) async fn login(&self, token: &str) -> String {
        let body = form(&[("token", token), ("next", "/devices")]);
        let response = self.router().oneshot(post("/login", None, body)).await.unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(response.headers()[header::LOCATION], "/devices");
        let set = response.headers()[header::SET_COOKIE].to_str().unwrap().to_owned();
        set.split(';').next().unwrap().to_owned()
    }

    pub(crate) async fn get(
        &self,
        path: &str,
        cookie: Option<&str>,
    ) -> (StatusCode, String, axum::http::HeaderMap) {
        let mut request = Request::get(path);
        if let Some(c) = cookie {
            request = request.header(header::COOKIE, c);
        }
        let response = self.router().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let body = axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap(), headers)
    }

    pub(crate) async fn post(
        &self,
        path: &str,
        cookie: &str,
        body: String,
    ) -> (StatusCode, String, axum::http::HeaderMap) {
        let response = self.router().oneshot(post(path, Some(cookie), body)).await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let body = axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap(), headers)
    }

    /// The CSRF token of the forms on `path` for `cookie`.
    pub(crate) async fn csrf(&self, path: &str, cookie: &str) -> String {
        let (_, html, _) = self.get(path, Some(cookie)).await;
        let at = html.find("name=\"_csrf\" value=\"").expect("a form with a CSRF field");
        let rest = &html[at + "name=\"_csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }

    pub(crate) fn put_device(&self, id: &str, labels: &[(&str, &str)]) {
        let mut d = DeviceRecord::bare(DeviceId::new(id).unwrap(), UnixMillis::now());
        d.labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        d.online = true;
        d.enrolled_at = Some(UnixMillis(0));
        d.release = Some(fleet_proto::samples::release_id());
        self.api
            .store
            .update(|tx| -> Result<(), crate::store::StoreError> {
                tx.put_device(&d);
                Ok(())
            })
            .unwrap();
    }

    pub(crate) fn put_release(&self) {
        // The sample without its secret mount: a pin needs every secret to have a value.
        let mut spec = fleet_proto::samples::release();
        for service in &mut spec.services {
            service.secrets.clear();
        }
        let record = ReleaseRecord::new(
            spec,
            self.api.pki.signing_key(),
            None,
            vec![],
            UnixMillis::now(),
            "admin",
        );
        self.api
            .store
            .update(|tx| -> Result<(), crate::store::StoreError> {
                tx.put_release(&record);
                Ok(())
            })
            .unwrap();
    }

    pub(crate) fn device(&self, id: &str) -> DeviceRecord {
        self.api.store.device(&DeviceId::new(id).unwrap()).unwrap().unwrap()
    }
}

pub(crate) fn post(path: &str, cookie: Option<&str>, body: String) -> Request<Body> {
    let mut request = Request::post(path)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::HOST, "fleet.example:8080")
        .header(header::ORIGIN, "http://fleet.example:8080");
    if let Some(c) = cookie {
        request = request.header(header::COOKIE, c);
    }
    request.body(Body::from(body)).unwrap()
}

pub(crate) fn form(fields: &[(&str, &str)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        out.append_pair(k, v);
    }
    out.finish()
}

/// A rollout request of the sample release to `target` in `waves`, the rest defaults.
pub(crate) fn rollout_request(target: &str, waves: &str) -> fleet_api::RolloutRequest {
    serde_json::from_value(serde_json::json!({
        "release": fleet_proto::samples::release_id().to_string(),
        "target": target,
        "waves": waves,
    }))
    .unwrap()
}
