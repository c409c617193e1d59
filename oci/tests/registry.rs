//! fleet-oci against the real registry of the test environment (`tests/env/up`: Docker's
//! `docker-registry`, distribution 2.8, holding the busybox test images). Nothing is mocked: the
//! expected digests and sizes are read from the registry's own answers, and the multi-platform
//! image is built in the registry through its HTTP API, in a repository unique to this run.
//!
//! A missing environment fails the tests with instructions; it is never skipped.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)] // test helpers fail loudly

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_oci::{
    Platform, PlatformImage, Reference, RegistryClient, RegistryError, DOCKER_MANIFEST, OCI_INDEX,
    OCI_MANIFEST,
};
use fleet_proto::ImageRef;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

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

fn client() -> RegistryClient {
    RegistryClient::new("fleet-oci-tests", Duration::from_secs(10))
}

fn resolve(reference: &str) -> Result<fleet_oci::ResolvedImage, RegistryError> {
    client().resolve(&Reference::parse(reference).unwrap(), None)
}

/// A repository name no earlier run has used.
fn fresh_repository(what: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("fleet-test/oci-{what}-{}-{nanos}", std::process::id())
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// The registry's own `Docker-Content-Digest` for `repository:reference`, by HEAD.
fn registry_digest(env: &TestEnv, repository: &str, reference: &str) -> String {
    let head = ureq::head(&format!("{}/manifests/{reference}", env.base(repository)))
        .header("Accept", DOCKER_MANIFEST)
        .call()
        .unwrap();
    head.headers()["docker-content-digest"].to_str().unwrap().to_owned()
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

/// Uploads `bytes` as a blob of `repository` (POST, then PUT with the digest); its digest.
fn put_blob(env: &TestEnv, repository: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let started =
        ureq::post(&format!("{}/blobs/uploads/", env.base(repository))).send_empty().unwrap();
    let location = started.headers()["location"].to_str().unwrap().to_owned();
    let location = if location.starts_with('/') {
        format!("http://{}{location}", env.registry)
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    ureq::put(&format!("{location}{sep}digest={digest}"))
        .header("Content-Type", "application/octet-stream")
        .send(bytes)
        .unwrap();
    digest
}

/// PUTs a manifest under `reference` (a tag or its digest); checks the registry agrees on its
/// digest and returns it.
fn put_manifest(
    env: &TestEnv,
    repository: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> String {
    let digest = sha256(body);
    let reference = if reference.is_empty() { digest.as_str() } else { reference };
    let put = ureq::put(&format!("{}/manifests/{reference}", env.base(repository)))
        .header("Content-Type", media_type)
        .send(body)
        .unwrap();
    assert_eq!(put.headers()["docker-content-digest"].to_str().unwrap(), digest);
    digest
}

fn get_bytes(url: &str, accept: &str) -> Vec<u8> {
    ureq::get(url).header("Accept", accept).call().unwrap().body_mut().read_to_vec().unwrap()
}

/// Deletes manifests of a repository this run created, best effort.
fn delete_manifests(env: &TestEnv, repository: &str, digests: &[&str]) {
    for digest in digests {
        if let Err(e) = ureq::delete(&format!("{}/manifests/{digest}", env.base(repository))).call()
        {
            println!("could not delete {repository}@{digest}: {e}");
        }
    }
}

#[test]
fn a_tag_resolves_to_the_registrys_digest_with_one_platform_and_its_download_size() {
    let env = TestEnv::load();
    // The test images are built on this machine's engine, so they are for its architecture.
    let here = Platform::current();
    for name in ["web", "unhealthy", "crash", "memhog"] {
        let repository = format!("fleet-test/{name}");
        let resolved = resolve(&format!("{}/{repository}:1", env.registry)).unwrap();
        let digest = registry_digest(&env, &repository, "1");
        assert_eq!(resolved.image.digest(), digest, "{name}: the registry's Docker-Content-Digest");
        assert_eq!(digest, env.image(&format!("{name}:1")).digest, "{name}: env.json agrees");
        assert_eq!(resolved.image.repository(), format!("{}/{repository}", env.registry));
        assert_eq!(resolved.image.tag(), Some("1"), "the tag is kept for display");
        assert_eq!(resolved.media_type, DOCKER_MANIFEST);
        assert_eq!(
            resolved.platforms,
            [PlatformImage {
                os: "linux".into(),
                architecture: here.architecture.clone(),
                variant: resolved.platforms[0].variant.clone(),
                digest: digest.clone(),
                download_bytes: registry_blob_bytes(&env, &repository, &digest),
            }],
            "{name}"
        );
        assert!(resolved.platform_for(std::env::consts::ARCH).is_some());
    }
}

#[test]
fn a_digest_resolves_to_itself_with_or_without_a_tag() {
    let env = TestEnv::load();
    let image = env.image("web:2");
    let by_digest = resolve(&image.reference).unwrap();
    assert_eq!(by_digest.image, ImageRef::parse(&image.reference).unwrap());
    assert_eq!(by_digest.image.tag(), None);
    let both = format!("{}/fleet-test/web:2@{}", env.registry, image.digest);
    let resolved = resolve(&both).unwrap();
    assert_eq!((resolved.image.digest(), resolved.image.tag()), (image.digest.as_str(), Some("2")));
    assert_eq!(resolved.platforms, by_digest.platforms);
}

#[test]
fn unknown_tags_repositories_and_digests_are_told_apart_and_named() {
    let env = TestEnv::load();
    let err = resolve(&format!("{}/fleet-test/web:9.9", env.registry)).unwrap_err();
    assert!(
        matches!(&err, RegistryError::UnknownTag { tag, repository, .. } if tag == "9.9" && repository == "fleet-test/web"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "tag 9.9 not found in {}/fleet-test/web: push it or check the spelling",
            env.registry
        )
    );

    let never = fresh_repository("never-pushed");
    let err = resolve(&format!("{}/{never}:1", env.registry)).unwrap_err();
    assert!(
        matches!(&err, RegistryError::UnknownRepository { repository, .. } if *repository == never),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&format!("repository {never} not found in {}", env.registry)),
        "{err}"
    );

    let missing = format!("sha256:{}", "0".repeat(64));
    let err = resolve(&format!("{}/fleet-test/web@{missing}", env.registry)).unwrap_err();
    assert!(
        matches!(&err, RegistryError::UnknownDigest { digest, .. } if *digest == missing),
        "{err:?}"
    );
    assert!(err.to_string().contains("manifest unknown"), "{err}");
}

#[test]
fn a_closed_port_is_an_unreachable_registry() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = resolve(&format!("127.0.0.1:{port}/demo/app:1")).unwrap_err();
    let registry = format!("127.0.0.1:{port}");
    assert!(
        matches!(&err, RegistryError::Unreachable { registry: r, .. } if *r == registry),
        "{err:?}"
    );
    assert!(err.to_string().contains(&format!("registry {registry} is unreachable")), "{err}");
    let cause = std::error::Error::source(&err).expect("the transport's error is chained");
    println!("unreachable: {err}: {cause}");
}

/// Builds, in a fresh repository, the kind of index `docker buildx` pushes: the amd64 image
/// `web:1` as it is, an arm64 image whose configuration says arm64 over the same layers, and an
/// attestation manifest; then checks resolve and download_size against it.
#[test]
fn a_multi_platform_index_resolves_to_the_index_digest_with_its_real_platforms() {
    let env = TestEnv::load();
    let repository = fresh_repository("multi");
    let source = env.base("fleet-test/web");
    let amd64 =
        get_bytes(&format!("{source}/manifests/{}", env.image("web:1").digest), DOCKER_MANIFEST);
    let amd64_manifest: Value = serde_json::from_slice(&amd64).unwrap();

    // The amd64 image, byte for byte: its blobs, then its manifest under a tag.
    let config_digest = amd64_manifest["config"]["digest"].as_str().unwrap();
    let config = get_bytes(&format!("{source}/blobs/{config_digest}"), "*/*");
    put_blob(&env, &repository, &config);
    let layers: Vec<(String, u64)> = amd64_manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["digest"].as_str().unwrap().to_owned(), l["size"].as_u64().unwrap()))
        .collect();
    for (digest, _) in &layers {
        let blob = get_bytes(&format!("{source}/blobs/{digest}"), "*/*");
        assert_eq!(put_blob(&env, &repository, &blob), *digest);
    }
    let amd64_digest = put_manifest(&env, &repository, "amd64", DOCKER_MANIFEST, &amd64);
    assert_eq!(amd64_digest, env.image("web:1").digest);

    // arm64: a second configuration over the same layers, in an OCI manifest.
    let mut arm_config: Value = serde_json::from_slice(&config).unwrap();
    arm_config["architecture"] = json!("arm64");
    arm_config["variant"] = json!("v8");
    let arm_config = serde_json::to_vec(&arm_config).unwrap();
    let arm_config_digest = put_blob(&env, &repository, &arm_config);
    let oci_layers: Vec<Value> = layers
        .iter()
        .map(|(digest, size)| {
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size})
        })
        .collect();
    let arm64 = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": arm_config_digest, "size": arm_config.len()},
        "layers": oci_layers,
    }))
    .unwrap();
    let arm64_digest = put_manifest(&env, &repository, "", OCI_MANIFEST, &arm64);

    // An attestation manifest, as BuildKit attaches one to each platform image.
    let statement = br#"{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://spdx.dev/Document","subject":[]}"#;
    let statement_digest = put_blob(&env, &repository, statement);
    let att_config = br#"{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let att_config_digest = put_blob(&env, &repository, att_config);
    let attestation = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": att_config_digest, "size": att_config.len()},
        "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": statement_digest, "size": statement.len(),
                    "annotations": {"in-toto.io/predicate-type": "https://spdx.dev/Document"}}],
    }))
    .unwrap();
    let attestation_digest = put_manifest(&env, &repository, "", OCI_MANIFEST, &attestation);

    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": DOCKER_MANIFEST, "digest": amd64_digest, "size": amd64.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": arm64_digest, "size": arm64.len(),
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": OCI_MANIFEST, "digest": attestation_digest, "size": attestation.len(),
             "annotations": {"vnd.docker.reference.digest": amd64_digest, "vnd.docker.reference.type": "attestation-manifest"},
             "platform": {"architecture": "unknown", "os": "unknown"}},
        ],
    }))
    .unwrap();
    let index_digest = put_manifest(&env, &repository, "multi", OCI_INDEX, &index);

    let resolved = resolve(&format!("{}/{repository}:multi", env.registry)).unwrap();
    assert_eq!(resolved.image.digest(), index_digest, "the index's digest, not a platform's");
    assert_eq!(resolved.image.to_string(), format!("{}/{repository}@{index_digest}", env.registry));
    assert_eq!(resolved.media_type, OCI_INDEX);
    let layer_bytes: u64 = layers.iter().map(|(_, size)| size).sum();
    let amd64_bytes = registry_blob_bytes(&env, &repository, &amd64_digest);
    let arm64_bytes = registry_blob_bytes(&env, &repository, &arm64_digest);
    assert_eq!(arm64_bytes, arm_config.len() as u64 + layer_bytes);
    assert_eq!(
        resolved.platforms,
        [
            PlatformImage {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None,
                digest: amd64_digest.clone(),
                download_bytes: amd64_bytes,
            },
            PlatformImage {
                os: "linux".into(),
                architecture: "arm64".into(),
                variant: Some("v8".into()),
                digest: arm64_digest.clone(),
                download_bytes: arm64_bytes,
            },
        ],
        "exactly the two real platforms; the attestation is left out"
    );
    assert_eq!(
        resolved.platform_for("aarch64").map(|p| p.digest.as_str()),
        Some(arm64_digest.as_str())
    );
    assert_eq!(
        resolved.platform_for("x86_64").map(|p| p.digest.as_str()),
        Some(amd64_digest.as_str())
    );
    assert_eq!(
        resolved.platform_for("arm"),
        None,
        "no armv7 image: the server can refuse the device"
    );

    // Pinned by the index digest, as the release will name it, it resolves the same.
    let pinned = resolve(&format!("{}/{repository}@{index_digest}", env.registry)).unwrap();
    assert_eq!(pinned.platforms, resolved.platforms);

    // The agent's question on the same index: each device gets its own platform's size.
    let image = &resolved.image;
    let size = |arch: &str| client().download_size(image, &Platform::for_rust_arch(arch), None);
    assert_eq!(size("aarch64").unwrap(), arm64_bytes);
    assert_eq!(size("x86_64").unwrap(), amd64_bytes);
    let err = size("arm").unwrap_err();
    assert!(matches!(err, RegistryError::NoPlatform { count: 3, .. }), "{err:?}");

    delete_manifests(
        &env,
        &repository,
        &[&index_digest, &attestation_digest, &arm64_digest, &amd64_digest],
    );
}

#[test]
fn the_registry_client_reads_an_images_download_size_from_the_real_registry() {
    let env = TestEnv::load();
    let client = client();
    for name in ["web:1", "memhog:2"] {
        let image = ImageRef::parse(&env.image(name).reference).unwrap();
        let repository = format!("fleet-test/{}", name.split(':').next().unwrap());
        let size = client.download_size(&image, &Platform::current(), None).unwrap();
        assert_eq!(size, registry_blob_bytes(&env, &repository, &env.image(name).digest), "{name}");
    }
    // A digest the registry does not have is named as such.
    let missing = format!("{}/fleet-test/web@sha256:{}", env.registry, "0".repeat(64));
    let err = client
        .download_size(&ImageRef::parse(&missing).unwrap(), &Platform::current(), None)
        .unwrap_err();
    assert!(err.to_string().contains("manifest unknown"), "{err}");
}

/// A registry stand-in on loopback that answers every request with `body` and the headers
/// given: for content no real registry would send.
fn serve_forever(headers: String, body: &'static [u8]) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
        }
    });
    address
}

#[test]
fn content_that_is_not_what_its_digest_says_is_refused() {
    const BODY: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    let other = format!("sha256:{}", "1".repeat(64));
    // The registry's Docker-Content-Digest header disagrees with the bytes it sent.
    let lying = serve_forever(format!("Docker-Content-Digest: {other}\r\n"), BODY);
    let err = resolve(&format!("{lying}/demo/app:1")).unwrap_err();
    assert!(
        matches!(&err, RegistryError::DigestMismatch { expected, actual, .. } if *expected == other && *actual == sha256(BODY)),
        "{err:?}"
    );
    assert!(err.to_string().contains("Docker-Content-Digest"), "{err}");
    // Pinned by a digest, other bytes are refused even without a header.
    let silent = serve_forever(String::new(), BODY);
    let err = resolve(&format!("{silent}/demo/app@{other}")).unwrap_err();
    assert!(
        matches!(&err, RegistryError::DigestMismatch { expected_by: "the reference", .. }),
        "{err:?}"
    );
    println!("{err}");
}
