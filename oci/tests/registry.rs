//! fleet-oci against the real registry of the test environment (`tests/env/up`: Docker's
//! `docker-registry`, distribution 2.8, holding the busybox test images). Nothing is mocked: the
//! expected sizes are read from the registry's own answers.
//!
//! A missing environment fails the tests with instructions; it is never skipped.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)] // test helpers fail loudly

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use fleet_oci::{Platform, RegistryClient};
use fleet_proto::ImageRef;
use serde::Deserialize;
use serde_json::Value;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The part of `env.json` these tests read.
#[derive(Debug, Deserialize)]
struct TestEnv {
    /// `127.0.0.1:5000`.
    registry: String,
    /// By `name:version`, e.g. `web:1`.
    images: BTreeMap<String, TestImage>,
}

#[derive(Debug, Deserialize)]
struct TestImage {
    /// The registry's `Docker-Content-Digest` for the image's manifest.
    digest: String,
    /// `127.0.0.1:5000/fleet-test/web@sha256:…`.
    #[serde(rename = "ref")]
    reference: String,
}

impl TestEnv {
    /// `$FLEET_TEST_ENV`, else `${FLEET_TEST_ENV_DIR:-/tmp/fleet-test-env}/env.json`.
    fn load() -> TestEnv {
        let path = std::env::var_os("FLEET_TEST_ENV").map(PathBuf::from).unwrap_or_else(|| {
            let dir = std::env::var_os("FLEET_TEST_ENV_DIR")
                .map_or_else(|| PathBuf::from("/tmp/fleet-test-env"), PathBuf::from);
            dir.join("env.json")
        });
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read the test environment {}: {e}\nrun tests/env/up first",
                path.display()
            )
        });
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{} is not a valid env.json ({e}): run tests/env/up", path.display())
        })
    }

    fn image(&self, key: &str) -> &TestImage {
        self.images
            .get(key)
            .unwrap_or_else(|| panic!("env.json has no image {key}: run tests/env/up"))
    }

    fn base(&self, repository: &str) -> String {
        format!("http://{}/v2/{repository}", self.registry)
    }
}

/// What pulling `repository@digest` downloads, measured without fleet-oci: the Content-Length
/// of the manifest's config and layer blobs as the registry serves them.
fn registry_blob_bytes(env: &TestEnv, repository: &str, digest: &str) -> u64 {
    let base = env.base(repository);
    let manifest: Value = ureq::get(&format!("{base}/manifests/{digest}"))
        .header("Accept", format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let mut blobs = vec![manifest["config"]["digest"].as_str().unwrap().to_owned()];
    blobs.extend(
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned()),
    );
    blobs
        .iter()
        .map(|b| {
            let head = ureq::head(&format!("{base}/blobs/{b}")).call().unwrap();
            head.headers()["content-length"].to_str().unwrap().parse::<u64>().unwrap()
        })
        .sum()
}

#[test]
fn the_registry_client_reads_an_images_download_size_from_the_real_registry() {
    let env = TestEnv::load();
    let client = RegistryClient::new(Platform::current(), Duration::from_secs(10));
    for name in ["web:1", "memhog:2"] {
        let image = ImageRef::parse(&env.image(name).reference).unwrap();
        let repository = format!("fleet-test/{}", name.split(':').next().unwrap());
        let size = client.download_size(&image, None).unwrap();
        assert_eq!(size, registry_blob_bytes(&env, &repository, &env.image(name).digest), "{name}");
    }
    // A digest the registry does not have is named as such.
    let missing = format!("{}/fleet-test/web@sha256:{}", env.registry, "0".repeat(64));
    let err = client.download_size(&ImageRef::parse(&missing).unwrap(), None).unwrap_err();
    assert!(err.to_string().contains("manifest unknown"), "{err}");
}
