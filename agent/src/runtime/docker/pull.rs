//! Images: pulls by digest with one progress figure over all layers ([`PullTally`], pure and
//! unit-tested), the images present locally, and a pull's download size read from the
//! registry before pulling (for the disk check).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine as _;
use fleet_oci::{Platform, RegistryClient};
use fleet_proto::{ImageRef, RegistryCredential};

use super::engine::{encode, encode_name, EngineError, Request};
use super::model::{CreateImageInfo, ImageSummary};
use super::DockerRuntime;
use crate::lock::error_chain;
use crate::runtime::{ProgressFn, RuntimeError};

/// How long one registry request for a manifest may take.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(15);

/// How the agent names itself to registries.
const USER_AGENT: &str = concat!("fleet-agent/", env!("CARGO_PKG_VERSION"));

impl DockerRuntime {
    pub(super) async fn image_present(&self, image: &ImageRef) -> Result<bool, RuntimeError> {
        let reference = image.pull_ref();
        let request = Request::get(format!("/images/{}/json", encode_name(&reference)));
        match self
            .call::<serde::de::IgnoredAny>(request, "inspect", &format!("image {reference}"))
            .await
        {
            Ok(_) => Ok(true),
            Err(RuntimeError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn pull_image(
        &self,
        image: &ImageRef,
        credential: Option<&RegistryCredential>,
        progress: ProgressFn<'_>,
    ) -> Result<(), RuntimeError> {
        let reference = image.pull_ref();
        let credentials = match credential {
            // The engine sends X-Registry-Auth to whichever registry the image names: refuse to
            // hand one registry's password to another.
            Some(c) if image.registry().is_some_and(|r| r != c.registry) => {
                return Err(RuntimeError::Pull {
                    image: reference,
                    reason: format!(
                        "the credential is for registry {}, the image is from {}",
                        c.registry,
                        image.registry().unwrap_or_default()
                    ),
                });
            }
            Some(c) => Some(registry_auth(c)),
            None => None,
        };
        let mut request = Request::post(format!("/images/create?fromImage={}", encode(&reference)));
        if let Some(auth) = &credentials {
            request = request.registry_auth(auth);
        }
        let answer =
            self.engine.stream(request).await.map_err(|e| self.pull_failed(&reference, e))?;
        let mut stream = answer.body.json_values::<CreateImageInfo>();
        let mut tally = PullTally::default();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| self.pull_failed(&reference, e))?;
            // A pull that fails part-way says so in the stream, with a 200 status.
            if let Some(reason) = info
                .error_detail
                .as_ref()
                .and_then(|d| d.message.clone())
                .or_else(|| info.error.clone())
            {
                return Err(RuntimeError::Pull { image: reference, reason });
            }
            if let Some((done, total)) = tally.update(&info) {
                progress(done, total);
            }
        }
        let total = tally.finish();
        progress(total, Some(total));
        tracing::debug!(image = %reference, bytes = total, "pulled");
        Ok(())
    }

    pub(super) async fn remove_local_image(&self, image: &str) -> Result<(), RuntimeError> {
        let request = Request::delete(format!("/images/{}", encode_name(image)));
        match self.call::<serde::de::IgnoredAny>(request, "remove", &format!("image {image}")).await
        {
            Ok(_) | Err(RuntimeError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn pulled_images(&self) -> Result<Vec<String>, RuntimeError> {
        let images: Vec<ImageSummary> =
            self.call(Request::get("/images/json"), "list", "images").await?;
        let digests: BTreeSet<String> = images
            .into_iter()
            .flat_map(|i| i.repo_digests.unwrap_or_default())
            // Docker 20.10 lists `<none>@<none>` for images it lost the registry name of.
            .filter(|d| !d.starts_with("<none>"))
            .collect();
        Ok(digests.into_iter().collect())
    }

    pub(super) async fn image_download_size(
        &self,
        image: &ImageRef,
        credential: Option<&RegistryCredential>,
    ) -> Option<u64> {
        let (image_owned, credential) = (image.clone(), credential.cloned());
        // A client per lookup: updates are rare, and an idle agent should not keep the
        // system's CA bundle in memory.
        let size = tokio::task::spawn_blocking(move || {
            let client = RegistryClient::new(USER_AGENT, REGISTRY_TIMEOUT);
            client.download_size(&image_owned, &Platform::current(), credential.as_ref())
        })
        .await;
        match size {
            Ok(Ok(bytes)) => Some(bytes),
            Ok(Err(e)) => {
                // The pull itself reports a real problem with its own reason; the disk check
                // then falls back to the reserve alone.
                tracing::warn!(image = %image, error = %error_chain(&e), "download size unknown");
                None
            }
            Err(e) => {
                tracing::warn!(image = %image, error = %e, "download size lookup failed");
                None
            }
        }
    }

    /// Maps an error of a pull: everything the engine or registry says is a [`RuntimeError::Pull`]
    /// (a 404 here is the registry's "manifest unknown", not a missing local object).
    fn pull_failed(&self, image: &str, err: EngineError) -> RuntimeError {
        match err {
            e if e.is_connection() => {
                RuntimeError::Unreachable { endpoint: self.endpoint.clone(), source: Box::new(e) }
            }
            EngineError::Status { message, .. } => {
                RuntimeError::Pull { image: image.to_owned(), reason: message }
            }
            e => RuntimeError::Pull { image: image.to_owned(), reason: e.to_string() },
        }
    }
}

/// The `X-Registry-Auth` header for a credential: its JSON, base64url-encoded.
fn registry_auth(c: &RegistryCredential) -> String {
    let json = serde_json::json!({
        "username": c.username,
        "password": c.password,
        "serveraddress": c.registry,
    });
    base64::engine::general_purpose::URL_SAFE.encode(json.to_string())
}

/// Aggregates the per-layer pull progress the engine streams into one byte count.
///
/// Layers that already exist locally are not counted (nothing is downloaded for them). The total
/// is reported only while every announced layer's size is known: layers wait in a queue (three
/// download at a time) before the engine tells their size, and a total that grows as they start
/// would make a progress bar run backwards.
#[derive(Debug, Default)]
struct PullTally {
    layers: BTreeMap<String, LayerProgress>,
    last: Option<(u64, Option<u64>)>,
}

#[derive(Debug, Default)]
struct LayerProgress {
    done: u64,
    total: Option<u64>,
    complete: bool,
}

impl PullTally {
    /// Folds in one stream item; returns the new `(done, total)` when it changed.
    fn update(&mut self, info: &CreateImageInfo) -> Option<(u64, Option<u64>)> {
        let (Some(id), Some(status)) = (info.id.as_deref(), info.status.as_deref()) else {
            return None;
        };
        match status {
            "Pulling fs layer" | "Waiting" => {
                self.layers.entry(id.to_owned()).or_default();
            }
            "Downloading" => {
                let layer = self.layers.entry(id.to_owned()).or_default();
                let detail = info.progress_detail.as_ref();
                let total = detail.and_then(|d| d.total).and_then(|t| u64::try_from(t).ok());
                let current = detail.and_then(|d| d.current).and_then(|c| u64::try_from(c).ok());
                if let Some(total) = total.filter(|t| *t > 0) {
                    layer.total = Some(total);
                    layer.done = current.unwrap_or(0).min(total);
                }
            }
            "Verifying Checksum" | "Download complete" | "Extracting" | "Pull complete" => {
                let layer = self.layers.entry(id.to_owned()).or_default();
                layer.complete = true;
                if let Some(total) = layer.total {
                    layer.done = total;
                }
            }
            "Already exists" => {
                self.layers.remove(id);
            }
            // "Pulling from …", "Digest: …", "Status: …": about the image, not a layer.
            _ => return None,
        }
        // Layers that already exist say nothing until one needs downloading ("0 of 0" first,
        // then "0 of unknown", would be noise); `pull` always makes a final call.
        if self.layers.is_empty() {
            return None;
        }
        let now = self.current();
        (self.last != Some(now)).then(|| {
            self.last = Some(now);
            now
        })
    }

    fn current(&self) -> (u64, Option<u64>) {
        let done = self.layers.values().map(|l| l.done).sum();
        let known = self.layers.values().all(|l| l.total.is_some() || l.complete);
        let total = self.layers.values().map(|l| l.total.unwrap_or(l.done)).sum();
        (done, known.then_some(total))
    }

    /// Bytes downloaded in all, once the stream ended without error.
    fn finish(&self) -> u64 {
        self.layers.values().map(|l| l.total.unwrap_or(l.done)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::ProgressDetail;
    use super::*;

    fn info(id: &str, status: &str, progress: Option<(i64, i64)>) -> CreateImageInfo {
        CreateImageInfo {
            id: Some(id.to_owned()),
            status: Some(status.to_owned()),
            progress_detail: progress.map(|(current, total)| ProgressDetail {
                current: Some(current),
                total: Some(total),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_registry_credential_travels_as_base64url_json() {
        let c = RegistryCredential {
            registry: "reg.example:5000".to_owned(),
            username: "robot".to_owned(),
            password: "p?>s".to_owned(),
        };
        let decoded = base64::engine::general_purpose::URL_SAFE.decode(registry_auth(&c)).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(
            json,
            serde_json::json!({ "username": "robot", "password": "p?>s", "serveraddress": "reg.example:5000" })
        );
    }

    #[test]
    fn pull_progress_sums_layers_and_reports_a_total_only_once_all_sizes_are_known() {
        let mut t = PullTally::default();
        assert_eq!(t.update(&info("sha256:img", "Pulling from fleet-test/web", None)), None);
        assert_eq!(t.update(&info("base", "Already exists", None)), None);
        assert_eq!(t.update(&info("a", "Pulling fs layer", None)), Some((0, None)));
        t.update(&info("b", "Waiting", None));
        assert_eq!(t.update(&info("a", "Downloading", Some((100, 1000)))), Some((100, None)));
        assert_eq!(t.update(&info("b", "Downloading", Some((50, 500)))), Some((150, Some(1500))));
        assert_eq!(t.update(&info("b", "Download complete", None)), Some((600, Some(1500))));
        assert_eq!(t.update(&info("b", "Extracting", Some((10, 500)))), None, "unchanged");
        assert_eq!(t.update(&info("a", "Pull complete", None)), Some((1500, Some(1500))));
        assert_eq!(t.finish(), 1500);
    }
}
