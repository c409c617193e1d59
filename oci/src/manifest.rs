//! The manifest formats, read without any I/O: which kind a body is, which index entries are
//! real platform images (attestations and other artifacts are not), how many bytes an image
//! downloads, and whether content matches its digest.
//!
//! Everything here is a pure function of bytes, so it is unit-tested without a registry.

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// OCI image configuration.
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image configuration.
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker schema 1 (`…manifest.v1+json` and `…v1+prettyjws`): long deprecated.
const DOCKER_SCHEMA1_PREFIX: &str = "application/vnd.docker.distribution.manifest.v1+";

/// Every manifest kind the engine can pull.
pub(crate) const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// The annotation BuildKit puts on attestation entries of an index.
const REFERENCE_TYPE_ANNOTATION: &str = "vnd.docker.reference.type";

/// The fields of manifests and indexes this crate reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub(crate) media_type: Option<String>,
    pub(crate) config: Option<Descriptor>,
    pub(crate) layers: Option<Vec<Descriptor>>,
    pub(crate) manifests: Option<Vec<IndexEntry>>,
}

/// A blob a manifest points at.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub(crate) media_type: Option<String>,
    #[serde(default)]
    pub(crate) digest: String,
    pub(crate) size: u64,
}

/// One manifest an index lists.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexEntry {
    #[serde(default)]
    pub(crate) media_type: Option<String>,
    pub(crate) digest: String,
    pub(crate) platform: Option<EntryPlatform>,
    #[serde(default)]
    pub(crate) annotations: BTreeMap<String, String>,
}

/// The platform of an index entry.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct EntryPlatform {
    pub(crate) os: String,
    pub(crate) architecture: String,
    pub(crate) variant: Option<String>,
}

/// What a manifest body is.
#[derive(Debug)]
pub(crate) enum Kind {
    /// An index or manifest list: one manifest per platform (and maybe attestations).
    Index(Vec<IndexEntry>),
    /// One image: its configuration and compressed layers.
    Image { config: Descriptor, layers: Vec<Descriptor> },
}

/// A manifest body, classified.
#[derive(Debug)]
pub(crate) struct Parsed {
    /// Its media type: as the body says, else as the response said, else inferred.
    pub(crate) media_type: String,
    pub(crate) kind: Kind,
}

/// Reads a manifest body. `content_type` is the response's `Content-Type`, used when the body
/// does not name its media type (it is optional in OCI manifests). Errors say what it is not.
pub(crate) fn parse(body: &[u8], content_type: Option<&str>) -> Result<Parsed, String> {
    let manifest: Manifest =
        serde_json::from_slice(body).map_err(|e| format!("not a manifest: {e}"))?;
    let header = content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_owned());
    let declared =
        manifest.media_type.clone().or(header.filter(|h| h.starts_with("application/vnd.")));
    if let Some(schema1) = declared.as_deref().filter(|m| m.starts_with(DOCKER_SCHEMA1_PREFIX)) {
        return Err(format!(
            "a Docker schema 1 manifest ({schema1}), which is deprecated and not supported: push the image again with a current Docker or BuildKit"
        ));
    }
    let is_index = matches!(declared.as_deref(), Some(OCI_INDEX | DOCKER_MANIFEST_LIST));
    match manifest {
        Manifest { manifests: Some(entries), .. } => Ok(Parsed {
            media_type: declared.unwrap_or_else(|| OCI_INDEX.to_owned()),
            kind: Kind::Index(entries),
        }),
        _ if is_index => Err("an index without a manifests list".to_owned()),
        Manifest { config: Some(config), layers: Some(layers), .. } => {
            if let Some(other) =
                config.media_type.as_deref().filter(|m| *m != OCI_CONFIG && *m != DOCKER_CONFIG)
            {
                return Err(format!("an artifact, not a container image (its config is {other})"));
            }
            Ok(Parsed {
                media_type: declared.unwrap_or_else(|| OCI_MANIFEST.to_owned()),
                kind: Kind::Image { config, layers },
            })
        }
        _ => Err("neither an image manifest nor an index".to_owned()),
    }
}

/// Bytes the engine downloads for one image: its configuration and compressed layers.
pub(crate) fn download_bytes(config: &Descriptor, layers: &[Descriptor]) -> u64 {
    layers.iter().fold(config.size, |sum, l| sum.saturating_add(l.size))
}

/// Whether an index entry is an image for a real platform. Not: entries without a platform,
/// BuildKit attestations (`unknown/unknown`, or annotated with `vnd.docker.reference.type`),
/// nested indexes and other artifacts.
pub(crate) fn is_platform_image(entry: &IndexEntry) -> bool {
    let Some(p) = &entry.platform else { return false };
    let image_type =
        entry.media_type.as_deref().is_none_or(|m| m == OCI_MANIFEST || m == DOCKER_MANIFEST);
    image_type
        && p.os != "unknown"
        && p.architecture != "unknown"
        && !entry.annotations.contains_key(REFERENCE_TYPE_ANNOTATION)
}

/// The platform an image configuration declares: `(os, architecture, variant)`.
pub(crate) fn config_platform(body: &[u8]) -> Result<(String, String, Option<String>), String> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        os: String,
        #[serde(default)]
        architecture: String,
        variant: Option<String>,
    }
    let config: Config =
        serde_json::from_slice(body).map_err(|e| format!("its config is not JSON: {e}"))?;
    if config.os.is_empty() || config.architecture.is_empty() {
        return Err("its config names no os or architecture".to_owned());
    }
    Ok((config.os, config.architecture, config.variant.filter(|v| !v.is_empty())))
}

/// `sha256:<hex>` of exactly these bytes.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Content whose digest is not what something else says it is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Mismatch {
    /// The digest the content should have.
    pub(crate) expected: String,
    /// Who said so: the reference, the registry's header, the manifest.
    pub(crate) expected_by: &'static str,
}

/// Checks the digest of received content (`actual`) against the registry's
/// `Docker-Content-Digest` header, if sent, and the digest asked for, if any, with who asked
/// (the reference, an index, a manifest). A header in another algorithm than sha256 cannot be
/// compared and is ignored.
pub(crate) fn check_digest(
    actual: &str,
    header: Option<&str>,
    asked: Option<(&str, &'static str)>,
) -> Result<(), Mismatch> {
    if let Some(header) = header.map(str::trim).filter(|h| h.starts_with("sha256:")) {
        if header != actual {
            return Err(Mismatch {
                expected: header.to_owned(),
                expected_by: "the registry's Docker-Content-Digest header",
            });
        }
    }
    match asked {
        Some((asked, by)) if asked != actual => {
            Err(Mismatch { expected: asked.to_owned(), expected_by: by })
        }
        _ => Ok(()),
    }
}

/// The media type of the OCI empty descriptor: the config of an artifact that has none.
#[cfg(feature = "push")]
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// The content of the OCI empty descriptor, `{}`: push it as a blob before an
/// [`artifact_manifest`], whose config points at it.
#[cfg(feature = "push")]
pub const EMPTY_CONFIG: &[u8] = b"{}";

/// The sha256 of [`EMPTY_CONFIG`], as the OCI image spec gives it.
#[cfg(feature = "push")]
const EMPTY_CONFIG_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// A descriptor as written into a manifest or index.
#[cfg(feature = "push")]
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct OutDescriptor<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<OutPlatform<'a>>,
}

/// The platform of an index entry, as written.
#[cfg(feature = "push")]
#[derive(serde::Serialize)]
struct OutPlatform<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
}

/// An OCI image manifest or index, as written: `config`, `layers` and `artifactType` for a
/// manifest, `manifests` for an index.
#[cfg(feature = "push")]
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct OutManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<OutDescriptor<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    layers: Option<Vec<OutDescriptor<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    manifests: Option<Vec<OutDescriptor<'a>>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'a str, &'a str>,
}

#[cfg(feature = "push")]
impl OutManifest<'_> {
    /// Compact JSON, its keys in a fixed order: the same arguments always give the same bytes,
    /// so pushing the same content again gives the same digest.
    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("strings, numbers and string maps always serialise to JSON")
    }
}

/// An OCI image manifest for an artifact of type `artifact_type` (e.g.
/// `application/vnd.fleet.agent.v1`) whose one layer is `layer`, of `layer_media_type`, with
/// the OCI empty config ([`EMPTY_CONFIG`], which must be pushed too) and `annotations`.
///
/// The config is not an image configuration, so the engine cannot run it and
/// [`RegistryClient::resolve`](crate::RegistryClient::resolve) refuses it as a release image.
#[cfg(feature = "push")]
pub fn artifact_manifest(
    artifact_type: &str,
    layer_media_type: &str,
    layer: &crate::Pushed,
    annotations: &BTreeMap<String, String>,
) -> Vec<u8> {
    OutManifest {
        schema_version: 2,
        media_type: OCI_MANIFEST,
        artifact_type: Some(artifact_type),
        config: Some(OutDescriptor {
            media_type: OCI_EMPTY,
            digest: EMPTY_CONFIG_DIGEST,
            size: EMPTY_CONFIG.len() as u64,
            platform: None,
        }),
        layers: Some(vec![OutDescriptor {
            media_type: layer_media_type,
            digest: &layer.digest,
            size: layer.size,
            platform: None,
        }]),
        manifests: None,
        annotations: annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
    }
    .to_bytes()
}

/// An OCI image index of one image manifest per Linux platform, e.g. an
/// [`artifact_manifest`] per architecture, so each device picks its own by platform.
#[cfg(feature = "push")]
pub fn platform_index(
    entries: &[(crate::Pushed, crate::Platform)],
    annotations: &BTreeMap<String, String>,
) -> Vec<u8> {
    let manifests = entries
        .iter()
        .map(|(manifest, platform)| OutDescriptor {
            media_type: OCI_MANIFEST,
            digest: &manifest.digest,
            size: manifest.size,
            platform: Some(OutPlatform {
                architecture: &platform.architecture,
                os: "linux",
                variant: platform.variant.as_deref(),
            }),
        })
        .collect();
    OutManifest {
        schema_version: 2,
        media_type: OCI_INDEX,
        artifact_type: None,
        config: None,
        layers: None,
        manifests: Some(manifests),
        annotations: annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
    }
    .to_bytes()
}

/// Lists the `code`s of a distribution error body (`{"errors":[{"code":"NAME_UNKNOWN"}]}`).
pub(crate) fn error_codes(body: &[u8]) -> Vec<String> {
    #[derive(Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<Code>,
    }
    #[derive(Deserialize)]
    struct Code {
        #[serde(default)]
        code: String,
    }
    serde_json::from_slice::<Errors>(body)
        .map(|e| e.errors.into_iter().map(|c| c.code).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The manifest of the test registry's `fleet-test/web:1`, as the registry serves it.
    const DOCKER_V2: &str = r#"{
   "schemaVersion": 2,
   "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
   "config": {
      "mediaType": "application/vnd.docker.container.image.v1+json",
      "size": 3343,
      "digest": "sha256:389dad3e2526775cd7f6d781ce877a239aaf56a12182f125c582ea110fc6f4d1"
   },
   "layers": [
      {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 1068764, "digest": "sha256:fa97113936ba73ddf2807a8bceff512e6a09537e776b4c1d276369884e94eb2a"},
      {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 110, "digest": "sha256:cf6fb432f547f97e030e3e614c447f8d0c0f2a88949acf7d31197d201f5dceae"}
   ]
}"#;

    /// An index as BuildKit pushes it: two platforms, each with an attestation manifest.
    const BUILDKIT_INDEX: &str = r#"{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.index.v1+json",
  "manifests": [
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:aaaa", "size": 1,
     "platform": {"architecture": "amd64", "os": "linux"}},
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:bbbb", "size": 1,
     "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:cccc", "size": 1,
     "annotations": {"vnd.docker.reference.digest": "sha256:aaaa", "vnd.docker.reference.type": "attestation-manifest"},
     "platform": {"architecture": "unknown", "os": "unknown"}},
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:dddd", "size": 1,
     "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
     "platform": {"architecture": "arm64", "os": "linux"}},
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:eeee", "size": 1,
     "platform": {"architecture": "unknown", "os": "unknown"}},
    {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "sha256:ffff", "size": 1,
     "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}},
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:0000", "size": 1}
  ]
}"#;

    #[test]
    fn an_image_manifest_is_read_with_its_config_and_layers() {
        let parsed = parse(DOCKER_V2.as_bytes(), Some("application/json")).unwrap();
        assert_eq!(parsed.media_type, DOCKER_MANIFEST);
        let Kind::Image { config, layers } = parsed.kind else { panic!("not an image") };
        assert_eq!(
            config.digest,
            "sha256:389dad3e2526775cd7f6d781ce877a239aaf56a12182f125c582ea110fc6f4d1"
        );
        assert_eq!(download_bytes(&config, &layers), 3343 + 1_068_764 + 110);
    }

    #[test]
    fn only_real_platform_images_of_an_index_are_kept() {
        let parsed = parse(BUILDKIT_INDEX.as_bytes(), None).unwrap();
        assert_eq!(parsed.media_type, OCI_INDEX);
        let Kind::Index(entries) = parsed.kind else { panic!("not an index") };
        assert_eq!(entries.len(), 7);
        let kept: Vec<&str> =
            entries.iter().filter(|e| is_platform_image(e)).map(|e| e.digest.as_str()).collect();
        assert_eq!(kept, ["sha256:aaaa", "sha256:bbbb"], "attestations, nested index, no platform");
    }

    #[test]
    fn the_media_type_comes_from_the_body_then_the_header_then_the_shape() {
        let no_type = r#"{"schemaVersion":2,"config":{"size":1,"digest":"sha256:x"},"layers":[]}"#;
        assert_eq!(parse(no_type.as_bytes(), None).unwrap().media_type, OCI_MANIFEST);
        assert_eq!(
            parse(
                no_type.as_bytes(),
                Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8")
            )
            .unwrap()
            .media_type,
            DOCKER_MANIFEST
        );
        let list = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            parse(list.as_bytes(), Some(DOCKER_MANIFEST_LIST)).unwrap().media_type,
            DOCKER_MANIFEST_LIST
        );
        assert_eq!(parse(list.as_bytes(), Some("text/plain")).unwrap().media_type, OCI_INDEX);
    }

    #[test]
    fn what_is_not_an_image_says_what_it_is() {
        let cases = [
            ("not json", None, "not a manifest"),
            (r#"{"schemaVersion":1,"fsLayers":[]}"#, Some("application/vnd.docker.distribution.manifest.v1+prettyjws"), "schema 1"),
            (r#"{"schemaVersion":2}"#, None, "neither an image manifest nor an index"),
            (r#"{"mediaType":"application/vnd.oci.image.index.v1+json"}"#, None, "without a manifests list"),
            (
                r#"{"config":{"mediaType":"application/vnd.cncf.helm.config.v1+json","size":1,"digest":"sha256:x"},"layers":[]}"#,
                None,
                "an artifact, not a container image (its config is application/vnd.cncf.helm.config.v1+json)",
            ),
        ];
        for (body, content_type, words) in cases {
            let err = parse(body.as_bytes(), content_type).unwrap_err();
            assert!(err.contains(words), "{body}: {err}");
        }
    }

    #[test]
    fn image_configs_name_their_platform() {
        let amd =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        assert_eq!(config_platform(amd).unwrap(), ("linux".into(), "amd64".into(), None));
        let arm = br#"{"architecture":"arm","os":"linux","variant":"v7"}"#;
        assert_eq!(
            config_platform(arm).unwrap(),
            ("linux".into(), "arm".into(), Some("v7".into()))
        );
        let empty_variant = br#"{"architecture":"arm64","os":"linux","variant":""}"#;
        assert_eq!(config_platform(empty_variant).unwrap().2, None);
        assert!(config_platform(br#"{"os":"linux"}"#)
            .unwrap_err()
            .contains("no os or architecture"));
        assert!(config_platform(b"[").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn digests_are_sha256_of_the_exact_bytes() {
        // printf 'hello' | sha256sum
        assert_eq!(
            sha256_digest(b"hello"),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_ne!(sha256_digest(b"hello "), sha256_digest(b"hello"), "whitespace counts");
    }

    #[test]
    fn content_must_match_the_header_and_the_digest_asked_for() {
        let actual = sha256_digest(b"m");
        let other = sha256_digest(b"n");
        assert_eq!(check_digest(&actual, None, None), Ok(()));
        assert_eq!(check_digest(&actual, Some(&actual), Some((&actual, "the reference"))), Ok(()));
        assert_eq!(
            check_digest(&actual, Some(&other), None),
            Err(Mismatch {
                expected: other.clone(),
                expected_by: "the registry's Docker-Content-Digest header"
            })
        );
        assert_eq!(
            check_digest(&actual, None, Some((&other, "the index"))),
            Err(Mismatch { expected: other.clone(), expected_by: "the index" })
        );
        assert_eq!(check_digest(&actual, Some("sha512:abcd"), None), Ok(()), "not comparable");
    }

    #[cfg(feature = "push")]
    fn pushed(content: &[u8]) -> crate::Pushed {
        crate::Pushed { digest: sha256_digest(content), size: content.len() as u64 }
    }

    #[cfg(feature = "push")]
    #[test]
    fn the_empty_config_is_the_oci_empty_descriptor() {
        assert_eq!(sha256_digest(EMPTY_CONFIG), EMPTY_CONFIG_DIGEST);
    }

    #[cfg(feature = "push")]
    #[test]
    fn an_artifact_manifest_is_canonical_json_with_the_empty_config() {
        let layer = pushed(b"binary");
        let annotations =
            BTreeMap::from([("org.opencontainers.image.version".to_owned(), "1.2.3".to_owned())]);
        let body = artifact_manifest(
            "application/vnd.fleet.agent.v1",
            "application/octet-stream",
            &layer,
            &annotations,
        );
        let expected = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.fleet.agent.v1","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{EMPTY_CONFIG_DIGEST}","size":2}},"layers":[{{"mediaType":"application/octet-stream","digest":"{}","size":6}}],"annotations":{{"org.opencontainers.image.version":"1.2.3"}}}}"#,
            layer.digest
        );
        assert_eq!(String::from_utf8(body.clone()).unwrap(), expected);
        assert_eq!(
            artifact_manifest(
                "application/vnd.fleet.agent.v1",
                "application/octet-stream",
                &layer,
                &annotations
            ),
            body,
            "the same arguments give the same bytes, so the same digest"
        );
        let bare = artifact_manifest("a/b", "c/d", &layer, &BTreeMap::new());
        assert!(!String::from_utf8(bare).unwrap().contains("annotations"), "none, not empty");

        // The download size path reads it; resolve, which vets release images, refuses it.
        let read: Manifest = serde_json::from_slice(&body).unwrap();
        let (config, layers) = (read.config.unwrap(), read.layers.unwrap());
        assert_eq!(download_bytes(&config, &layers), 2 + 6);
        let err = parse(&body, Some(OCI_MANIFEST)).unwrap_err();
        assert!(err.contains("an artifact, not a container image"), "{err}");
    }

    #[cfg(feature = "push")]
    #[test]
    fn a_platform_index_reads_back_with_each_platform() {
        let amd64 = pushed(b"amd64 manifest");
        let arm64 = pushed(b"arm64 manifest");
        let arm = |v: &str| crate::Platform { architecture: "arm".into(), variant: Some(v.into()) };
        let armv7 = pushed(b"armv7 manifest");
        let entries = [
            (amd64.clone(), crate::Platform::for_rust_arch("x86_64")),
            (arm64.clone(), crate::Platform::for_rust_arch("aarch64")),
            (armv7.clone(), arm("v7")),
        ];
        let annotations =
            BTreeMap::from([("org.opencontainers.image.version".to_owned(), "1.2.3".to_owned())]);
        let body = platform_index(&entries, &annotations);
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:"#),
            "{text}"
        );
        assert!(text.contains(r#""platform":{"architecture":"amd64","os":"linux"}}"#), "{text}");
        assert!(
            text.contains(r#""platform":{"architecture":"arm","os":"linux","variant":"v7"}}"#),
            "{text}"
        );

        // As resolve reads an index: every entry a platform image, in order, with its digest.
        let parsed = parse(&body, Some(OCI_INDEX)).unwrap();
        assert_eq!(parsed.media_type, OCI_INDEX);
        let Kind::Index(read) = parsed.kind else { panic!("not an index") };
        assert!(read.iter().all(is_platform_image));
        let seen: Vec<(&str, &str, Option<&str>)> = read
            .iter()
            .map(|e| {
                let p = e.platform.as_ref().unwrap();
                (e.digest.as_str(), p.architecture.as_str(), p.variant.as_deref())
            })
            .collect();
        assert_eq!(
            seen,
            [
                (amd64.digest.as_str(), "amd64", None),
                (arm64.digest.as_str(), "arm64", None),
                (armv7.digest.as_str(), "arm", Some("v7")),
            ]
        );
        assert!(read.iter().all(|e| e.platform.as_ref().unwrap().os == "linux"));
        assert!(platform_index(&[], &BTreeMap::new()).ends_with(br#""manifests":[]}"#));
    }

    #[test]
    fn distribution_error_codes_are_read_from_error_bodies() {
        let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry","detail":{"name":"x"}}]}"#;
        assert_eq!(error_codes(body), ["NAME_UNKNOWN"]);
        assert!(error_codes(b"<html>404</html>").is_empty());
    }
}
