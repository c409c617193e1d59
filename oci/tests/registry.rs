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

/// Uploads (feature `push`, which this crate's dev-dependency on itself turns on for tests).
#[cfg(feature = "push")]
mod push {
    use std::sync::Mutex;

    use fleet_oci::{artifact_manifest, platform_index, Pushed, EMPTY_CONFIG, OCI_EMPTY};

    use super::*;

    /// What the agent's binary artifact is called here; the server picks its own.
    const ARTIFACT_TYPE: &str = "application/vnd.fleet.agent.v1";

    /// `len` bytes no registry has seen: an xorshift stream seeded by the clock.
    fn random_bytes(len: usize) -> Vec<u8> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let mut x = (nanos as u64) ^ 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// The messages of the `tracing` events emitted while `f` runs on this thread: how a test
    /// sees which requests a push made, with nothing between client and registry.
    ///
    /// The recorder is the global default, set once: a scoped one (`with_default`) misses events
    /// whose call sites another test's thread saw first, because their interest is then cached
    /// from that thread's (absent) subscriber.
    fn events<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
        use std::thread::ThreadId;

        use tracing::field::{Field, Visit};
        use tracing::span::{Attributes, Id, Record};

        /// The threads listening, each with the messages of its events so far.
        static LISTENING: Mutex<Vec<(ThreadId, Vec<String>)>> = Mutex::new(Vec::new());
        static INSTALL: std::sync::Once = std::sync::Once::new();

        struct Recorder;
        struct Message(String);
        impl Visit for Message {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        impl tracing::Subscriber for Recorder {
            fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &Attributes<'_>) -> Id {
                Id::from_u64(1)
            }
            fn record(&self, _: &Id, _: &Record<'_>) {}
            fn record_follows_from(&self, _: &Id, _: &Id) {}
            fn event(&self, event: &tracing::Event<'_>) {
                let me = std::thread::current().id();
                let mut listening = LISTENING.lock().unwrap();
                if let Some((_, seen)) = listening.iter_mut().find(|(id, _)| *id == me) {
                    let mut message = Message(String::new());
                    event.record(&mut message);
                    seen.push(message.0);
                }
            }
            fn enter(&self, _: &Id) {}
            fn exit(&self, _: &Id) {}
        }

        INSTALL.call_once(|| tracing::subscriber::set_global_default(Recorder).unwrap());
        // Call sites registered while the recorder was being installed may have cached "never".
        tracing::callsite::rebuild_interest_cache();
        let me = std::thread::current().id();
        LISTENING.lock().unwrap().push((me, Vec::new()));
        let result = f();
        let mut listening = LISTENING.lock().unwrap();
        let at = listening.iter().position(|(id, _)| *id == me).unwrap();
        (result, listening.remove(at).1)
    }

    #[test]
    fn a_pushed_blob_downloads_back_and_is_not_uploaded_twice() {
        let env = TestEnv::load();
        let repository = format!("{}/{}", env.registry, fresh_repository("blob"));
        let data = random_bytes((1 << 20) + 17);
        let client = client();

        let (first, log) = events(|| client.push_blob(&repository, &data, None).unwrap());
        assert_eq!(first, Pushed { digest: sha256(&data), size: data.len() as u64 });
        assert!(log.iter().any(|m| m == "blob uploaded"), "{log:?}");

        let dest = std::env::temp_dir().join(format!("fleet-oci-push-{}", std::process::id()));
        let _ = std::fs::remove_file(&dest);
        client.download_blob(&repository, &first.digest, first.size, &dest, None, &|_| {}).unwrap();
        let back = std::fs::read(&dest).unwrap();
        assert!(back == data, "the blob downloads back byte for byte");
        // Resumed from half-way (a Range request, answered 206), it is the same.
        std::fs::write(&dest, &data[..data.len() / 2]).unwrap();
        let (resumed, log) = events(|| {
            client.download_blob(&repository, &first.digest, first.size, &dest, None, &|_| {})
        });
        resumed.unwrap();
        assert!(log.iter().any(|m| m == "registry resumes the download"), "{log:?}");
        assert!(std::fs::read(&dest).unwrap() == data, "the resumed blob is whole");
        std::fs::remove_file(&dest).unwrap();

        let (again, log) = events(|| client.push_blob(&repository, &data, None).unwrap());
        assert_eq!(again, first);
        assert!(
            log.iter().any(|m| m == "the registry has the blob already; not uploading it"),
            "{log:?}"
        );
        assert!(!log.iter().any(|m| m == "blob uploaded"), "sent again: {log:?}");
    }

    /// The digest the registry serves for `repository:reference` as an OCI index, by HEAD.
    fn index_digest(env: &TestEnv, repository: &str, reference: &str) -> String {
        let head = ureq::head(&format!("{}/manifests/{reference}", env.base(repository)))
            .header("Accept", OCI_INDEX)
            .call()
            .unwrap();
        head.headers()["docker-content-digest"].to_str().unwrap().to_owned()
    }

    /// The layout the server uses for agent binaries: the empty config, one artifact manifest
    /// per platform over its binary, and a platform index under the version's tag.
    #[test]
    fn an_artifact_per_platform_under_a_tagged_index_reads_back_by_platform() {
        let env = TestEnv::load();
        let path = fresh_repository("agent");
        let repository = format!("{}/{path}", env.registry);
        let client = client();
        let version =
            BTreeMap::from([("org.opencontainers.image.version".to_owned(), "1.2.3".to_owned())]);

        assert_eq!(
            client.push_blob(&repository, EMPTY_CONFIG, None).unwrap(),
            Pushed { digest: sha256(b"{}"), size: 2 }
        );
        let mut binaries = Vec::new();
        let mut entries = Vec::new();
        for (arch, len) in [("x86_64", 70_000), ("aarch64", 60_000)] {
            let binary = client.push_blob(&repository, &random_bytes(len), None).unwrap();
            let body =
                artifact_manifest(ARTIFACT_TYPE, "application/octet-stream", &binary, &version);
            let digest = sha256(&body);
            let manifest =
                client.push_manifest(&repository, &digest, OCI_MANIFEST, &body, None).unwrap();
            assert_eq!(manifest, Pushed { digest, size: body.len() as u64 });
            binaries.push(binary);
            entries.push((manifest, Platform::for_rust_arch(arch)));
        }
        let index = platform_index(&entries, &version);
        let pushed = client.push_manifest(&repository, "1.2.3", OCI_INDEX, &index, None).unwrap();
        assert_eq!(pushed, Pushed { digest: sha256(&index), size: index.len() as u64 });
        assert_eq!(index_digest(&env, &path, "1.2.3"), pushed.digest, "the tag names the index");

        // The crate's read path picks each platform's manifest from the index, by digest.
        let image = ImageRef::parse(&format!("{repository}@{}", pushed.digest)).unwrap();
        let size = |arch: &str| client.download_size(&image, &Platform::for_rust_arch(arch), None);
        assert_eq!(size("x86_64").unwrap(), 2 + binaries[0].size);
        assert_eq!(size("aarch64").unwrap(), 2 + binaries[1].size);
        assert!(matches!(size("arm"), Err(RegistryError::NoPlatform { count: 2, .. })));

        // resolve vets release images: an artifact is not one, so the index is refused, naming
        // the first platform's manifest. (A release naming the agent's binaries must fail.)
        let err = resolve(&format!("{repository}:1.2.3")).unwrap_err();
        assert!(
            matches!(&err, RegistryError::NotAManifest { image, reason }
                if *image == format!("{repository}@{}", entries[0].0.digest)
                && reason.contains("an artifact, not a container image (its config is application/vnd.oci.empty.v1+json)")),
            "{err:?}"
        );

        // The same index over image manifests is what resolve reads: the index's digest and
        // both platforms with their manifests' digests.
        let (mut images, mut config_sizes) = (Vec::new(), Vec::new());
        for (binary, (_, platform)) in binaries.iter().zip(&entries) {
            let config = serde_json::to_vec(&json!({
                "architecture": platform.architecture, "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": []},
            }))
            .unwrap();
            let config = client.push_blob(&repository, &config, None).unwrap();
            let body = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": config.size},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": binary.digest, "size": binary.size}],
            }))
            .unwrap();
            let digest = sha256(&body);
            let manifest =
                client.push_manifest(&repository, &digest, OCI_MANIFEST, &body, None).unwrap();
            images.push((manifest, platform.clone()));
            config_sizes.push(config.size);
        }
        let index = platform_index(&images, &version);
        let pushed =
            client.push_manifest(&repository, "1.2.3-image", OCI_INDEX, &index, None).unwrap();
        let resolved = resolve(&format!("{repository}:1.2.3-image")).unwrap();
        assert_eq!(resolved.image.digest(), pushed.digest);
        assert_eq!(resolved.media_type, OCI_INDEX);
        let platforms: Vec<(&str, Option<&str>, &str, u64)> = resolved
            .platforms
            .iter()
            .map(|p| {
                (p.architecture.as_str(), p.variant.as_deref(), p.digest.as_str(), p.download_bytes)
            })
            .collect();
        assert_eq!(
            platforms,
            [
                ("amd64", None, images[0].0.digest.as_str(), config_sizes[0] + binaries[0].size),
                ("arm64", None, images[1].0.digest.as_str(), config_sizes[1] + binaries[1].size),
            ]
        );
    }

    #[test]
    fn a_manifest_the_registry_rejects_is_a_protocol_error_naming_the_status() {
        let env = TestEnv::load();
        let path = fresh_repository("rejected");
        let repository = format!("{}/{path}", env.registry);
        let client = client();
        let empty = client.push_blob(&repository, EMPTY_CONFIG, None).unwrap();
        let body = artifact_manifest(ARTIFACT_TYPE, OCI_EMPTY, &empty, &BTreeMap::new());
        let url = format!("{}/manifests", env.base(&path));

        // A media type distribution does not know.
        let err = client
            .push_manifest(&repository, "t1", "application/x-not-a-manifest", &body, None)
            .unwrap_err();
        assert!(matches!(err, RegistryError::Protocol { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("registry {}: PUT {url}/t1 answered 400 (MANIFEST_INVALID)", env.registry)
        );

        // A manifest whose layer was never pushed.
        let missing = Pushed { digest: sha256(b"never pushed"), size: 12 };
        let dangling = artifact_manifest(ARTIFACT_TYPE, OCI_EMPTY, &missing, &BTreeMap::new());
        let err =
            client.push_manifest(&repository, "t2", OCI_MANIFEST, &dangling, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("registry {}: PUT {url}/t2 answered 400 (MANIFEST_BLOB_UNKNOWN)", env.registry)
        );

        // Malformed references never reach the registry (they would change the URL).
        for reference in ["-bad", "a/../b", "x?y", &format!("sha256:{}", "0".repeat(64))] {
            let err = client
                .push_manifest(&repository, reference, OCI_MANIFEST, &body, None)
                .unwrap_err();
            assert!(
                matches!(&err, RegistryError::Protocol { reason, .. } if reason.contains("neither a tag")),
                "{reference}: {err:?}"
            );
        }

        // A login for another registry is not sent.
        let other = fleet_proto::RegistryCredential {
            registry: "registry.example.com".into(),
            username: "u".into(),
            password: "p".into(),
        };
        let err = client.push_blob(&repository, b"x", Some(&other)).unwrap_err();
        assert!(matches!(err, RegistryError::WrongCredential { .. }), "{err:?}");
    }
}
