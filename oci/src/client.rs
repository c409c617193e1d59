//! A minimal OCI distribution client: how many bytes an image download takes, read from its
//! manifest before pulling, so an update that would fill the disk is refused up front ("needs
//! 1.2 GB, 300 MB free") instead of failing half-way through with the disk full.
//!
//! Only manifests are fetched (a few KiB). Multi-platform indexes are resolved to this
//! device's platform. Authentication follows the distribution spec: anonymous first, then on
//! `401` either HTTP Basic or a bearer token from the realm named in `WWW-Authenticate`.
//! Registries on loopback are spoken to over plain HTTP (as the Docker engine does); every
//! other registry over TLS, verified against the system's CA bundle.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::{ImageRef, RegistryCredential};
use serde::Deserialize;
use ureq::tls::{RootCerts, TlsConfig};

/// Every manifest kind the engine can pull.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Manifests are small; anything bigger is not one.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Where the system keeps its CA bundle, by distribution family.
const CA_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Yocto, Alpine (ca-certificates)
    "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL
    "/etc/ssl/cert.pem",                  // Alpine, OpenWrt
    "/etc/ssl/ca-bundle.pem",             // openSUSE
];

/// Why a size lookup failed. The update then goes on with the reserve check alone.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached or answered outside the protocol.
    #[error("registry {registry}: {reason}")]
    Request {
        /// Registry host.
        registry: String,
        /// What went wrong.
        reason: String,
    },
    /// The registry refused the credentials (or needs some and none are configured).
    #[error("registry {registry} refused access to {repository}: {reason}")]
    Unauthorized {
        /// Registry host.
        registry: String,
        /// Repository.
        repository: String,
        /// What it said.
        reason: String,
    },
    /// The manifest is not one this client understands, or names no image for this platform.
    #[error("manifest of {image}: {reason}")]
    Manifest {
        /// The image.
        image: String,
        /// What is wrong.
        reason: String,
    },
}

/// The OCI platform of this device, e.g. `linux/arm64`, `linux/arm/v7`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `architecture` as OCI spells it.
    pub architecture: String,
    /// `variant`, for ARM.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary was built for (which is the device's).
    pub fn current() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            other => (other, None),
        };
        Platform { architecture: architecture.to_owned(), variant: variant.map(str::to_owned) }
    }
}

/// Talks to registries. One per agent; cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    agent: ureq::Agent,
    platform: Platform,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient").field("platform", &self.platform).finish()
    }
}

impl RegistryClient {
    /// A client for `platform`, trusting the system's CA bundle; `timeout` bounds each request.
    pub fn new(platform: Platform, timeout: Duration) -> RegistryClient {
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(Arc::new(system_roots())))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .tls_config(tls)
            .user_agent(concat!("fleet-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        RegistryClient { agent, platform }
    }

    /// Bytes the engine downloads to pull `image` (its config and compressed layers), for this
    /// device's platform. Blocking: call from a blocking thread.
    pub fn download_size(
        &self,
        image: &ImageRef,
        credential: Option<&RegistryCredential>,
    ) -> Result<u64, RegistryError> {
        let target = Target::of(image);
        let mut session = Session { client: self, target: &target, credential, token: None };
        let manifest = session.manifest(image.digest())?;
        let manifest = match manifest.manifests {
            Some(entries) => {
                let digest = pick_platform(&entries, &self.platform).ok_or_else(|| {
                    RegistryError::Manifest {
                        image: image.pull_ref(),
                        reason: format!(
                            "no image for linux/{}{} among its {} platforms",
                            self.platform.architecture,
                            self.platform
                                .variant
                                .as_deref()
                                .map(|v| format!("/{v}"))
                                .unwrap_or_default(),
                            entries.len()
                        ),
                    }
                })?;
                session.manifest(&digest)?
            }
            None => manifest,
        };
        match (manifest.config, manifest.layers) {
            (Some(config), Some(layers)) => {
                Ok(config.size + layers.iter().map(|l| l.size).sum::<u64>())
            }
            _ => Err(RegistryError::Manifest {
                image: image.pull_ref(),
                reason: "neither an image manifest nor an index".to_owned(),
            }),
        }
    }
}

/// Where an image lives: base URL and repository path on the registry.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// Registry host as in the image reference (credentials are keyed by it).
    registry: String,
    /// `http(s)://host`.
    base: String,
    /// Repository path, e.g. `library/busybox`.
    repository: String,
}

impl Target {
    fn of(image: &ImageRef) -> Target {
        let repo = image.repository();
        match image.registry() {
            Some(host) => {
                let path = repo[host.len()..].trim_start_matches('/').to_owned();
                let hostname = host.rsplit_once(':').map_or(host, |(h, _)| h);
                let loopback = hostname == "localhost"
                    || hostname == "[::1]"
                    || hostname.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback());
                let scheme = if loopback { "http" } else { "https" };
                Target {
                    registry: host.to_owned(),
                    base: format!("{scheme}://{host}"),
                    repository: path,
                }
            }
            // Docker Hub, with its implicit `library/` for official images.
            None => Target {
                registry: "docker.io".to_owned(),
                base: "https://registry-1.docker.io".to_owned(),
                repository: if repo.contains('/') {
                    repo.to_owned()
                } else {
                    format!("library/{repo}")
                },
            },
        }
    }
}

/// The fields of manifests and indexes this client reads.
#[derive(Debug, Deserialize)]
struct Manifest {
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<IndexEntry>>,
}

#[derive(Debug, Deserialize)]
struct Descriptor {
    size: u64,
}

#[derive(Debug, Deserialize)]
struct IndexEntry {
    digest: String,
    platform: Option<EntryPlatform>,
}

#[derive(Debug, Deserialize)]
struct EntryPlatform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

/// The index entry for `platform`: exact variant first, then any variant of the architecture.
fn pick_platform(entries: &[IndexEntry], platform: &Platform) -> Option<String> {
    let linux = |e: &&IndexEntry| {
        e.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == platform.architecture)
    };
    let exact = entries.iter().filter(linux).find(|e| {
        e.platform.as_ref().and_then(|p| p.variant.as_deref()) == platform.variant.as_deref()
    });
    exact.or_else(|| entries.iter().find(linux)).map(|e| e.digest.clone())
}

/// A challenge from `WWW-Authenticate`.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    let mut scope = None;
    // Values are quoted and may contain commas (scope="repository:a:pull,push").
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], quoted[end + 1..].trim_start().trim_start_matches(','))
        } else {
            after.split_once(',').unwrap_or((after, ""))
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value.to_owned()),
            "service" => service = Some(value.to_owned()),
            "scope" => scope = Some(value.to_owned()),
            _ => {}
        }
        rest = next.trim();
    }
    Some(Challenge::Bearer { realm: realm?, service, scope })
}

/// One image's conversation with its registry, keeping the bearer token once obtained.
struct Session<'a> {
    client: &'a RegistryClient,
    target: &'a Target,
    credential: Option<&'a RegistryCredential>,
    token: Option<String>,
}

impl Session<'_> {
    fn fail(&self, reason: impl std::fmt::Display) -> RegistryError {
        RegistryError::Request {
            registry: self.target.registry.clone(),
            reason: reason.to_string(),
        }
    }

    fn unauthorized(&self, reason: impl Into<String>) -> RegistryError {
        RegistryError::Unauthorized {
            registry: self.target.registry.clone(),
            repository: self.target.repository.clone(),
            reason: reason.into(),
        }
    }

    fn basic(&self) -> Option<String> {
        self.credential
            .map(|c| format!("Basic {}", base64(&format!("{}:{}", c.username, c.password))))
    }

    fn manifest(&mut self, reference: &str) -> Result<Manifest, RegistryError> {
        let url =
            format!("{}/v2/{}/manifests/{reference}", self.target.base, self.target.repository);
        for attempt in 0..2 {
            let auth = match &self.token {
                Some(token) => Some(format!("Bearer {token}")),
                None if attempt > 0 => self.basic(),
                None => None,
            };
            let mut request = self.client.agent.get(&url).header("Accept", ACCEPT);
            if let Some(auth) = &auth {
                request = request.header("Authorization", auth);
            }
            let mut response = request.call().map_err(|e| self.fail(e))?;
            match response.status().as_u16() {
                200 => {
                    let body = response
                        .body_mut()
                        .with_config()
                        .limit(MAX_MANIFEST_BYTES)
                        .read_to_vec()
                        .map_err(|e| self.fail(format!("reading manifest {reference}: {e}")))?;
                    return serde_json::from_slice(&body).map_err(|e| RegistryError::Manifest {
                        image: format!("{}@{reference}", self.target.repository),
                        reason: format!("not a manifest: {e}"),
                    });
                }
                401 if attempt == 0 => {
                    let header = response
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    match parse_challenge(&header) {
                        Some(Challenge::Basic) if self.credential.is_some() => {}
                        Some(Challenge::Basic) => {
                            return Err(self.unauthorized(
                                "it needs a login and none is configured for this registry",
                            ))
                        }
                        Some(Challenge::Bearer { realm, service, scope }) => {
                            self.token = Some(self.fetch_token(&realm, service, scope)?);
                        }
                        None => {
                            return Err(
                                self.unauthorized(format!("unsupported challenge {header:?}"))
                            )
                        }
                    }
                }
                401 | 403 => return Err(self.unauthorized("the credentials were refused")),
                404 => {
                    return Err(RegistryError::Manifest {
                        image: format!("{}@{reference}", self.target.repository),
                        reason: "manifest unknown: no such digest in the registry".to_owned(),
                    })
                }
                status => return Err(self.fail(format!("GET {url} answered {status}"))),
            }
        }
        Err(self.unauthorized("the credentials were refused"))
    }

    fn fetch_token(
        &self,
        realm: &str,
        service: Option<String>,
        scope: Option<String>,
    ) -> Result<String, RegistryError> {
        #[derive(Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.target.repository));
        let mut request = self.client.agent.get(realm).query("scope", &scope);
        if let Some(service) = &service {
            request = request.query("service", service);
        }
        if let Some(basic) = self.basic() {
            request = request.header("Authorization", &basic);
        }
        let mut response =
            request.call().map_err(|e| self.fail(format!("token from {realm}: {e}")))?;
        match response.status().as_u16() {
            200 => {}
            401 | 403 => {
                return Err(
                    self.unauthorized(format!("the token service {realm} refused the credentials"))
                )
            }
            status => return Err(self.fail(format!("token service {realm} answered {status}"))),
        }
        let answer: TokenAnswer = response
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST_BYTES)
            .read_json()
            .map_err(|e| self.fail(format!("token from {realm}: {e}")))?;
        answer
            .token
            .or(answer.access_token)
            .ok_or_else(|| self.fail(format!("token service {realm} sent no token")))
    }
}

/// The system's trusted CA certificates (`SSL_CERT_FILE` first, then the usual bundles).
fn system_roots() -> Vec<ureq::tls::Certificate<'static>> {
    let candidates =
        std::env::var("SSL_CERT_FILE").into_iter().chain(CA_BUNDLES.map(str::to_owned));
    for path in candidates {
        let Ok(pem) = std::fs::read(&path) else { continue };
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c.to_owned()),
                _ => None,
            })
            .collect();
        if !certs.is_empty() {
            return certs;
        }
    }
    tracing::warn!("no CA bundle found (set SSL_CERT_FILE); TLS registries cannot be verified");
    Vec::new()
}

/// Standard base64 (RFC 4648, with padding), for HTTP Basic credentials.
fn base64(input: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic_challenges_are_parsed_with_commas_inside_quotes() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#;
        assert_eq!(
            parse_challenge(h),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(
            parse_challenge(r#"Bearer service="x""#),
            None,
            "a bearer challenge needs a realm"
        );
    }

    #[test]
    fn targets_follow_dockers_rules_for_hosts_hub_and_loopback() {
        let t = |s: &str| {
            Target::of(&ImageRef::parse(&format!("{s}@sha256:{}", "a".repeat(64))).unwrap())
        };
        let local = t("127.0.0.1:5000/demo/app");
        assert_eq!(
            (local.base.as_str(), local.repository.as_str()),
            ("http://127.0.0.1:5000", "demo/app")
        );
        let remote = t("registry.example.com/robots/lidar");
        assert_eq!(remote.base, "https://registry.example.com");
        assert_eq!(remote.registry, "registry.example.com");
        let hub = t("busybox");
        assert_eq!(
            (hub.base.as_str(), hub.repository.as_str()),
            ("https://registry-1.docker.io", "library/busybox")
        );
        assert_eq!(t("localhost:5000/x").base, "http://localhost:5000");
    }

    #[test]
    fn index_entries_are_picked_by_architecture_then_variant() {
        let entry = |digest: &str, arch: &str, variant: Option<&str>| IndexEntry {
            digest: digest.into(),
            platform: Some(EntryPlatform {
                os: "linux".into(),
                architecture: arch.into(),
                variant: variant.map(Into::into),
            }),
        };
        let entries = vec![
            entry("amd", "amd64", None),
            entry("v6", "arm", Some("v6")),
            entry("v7", "arm", Some("v7")),
            entry("arm64", "arm64", Some("v8")),
        ];
        let p = |arch: &str, variant: Option<&str>| Platform {
            architecture: arch.into(),
            variant: variant.map(Into::into),
        };
        assert_eq!(pick_platform(&entries, &p("arm", Some("v7"))).as_deref(), Some("v7"));
        assert_eq!(pick_platform(&entries, &p("arm64", None)).as_deref(), Some("arm64"));
        assert_eq!(pick_platform(&entries, &p("riscv64", None)), None);
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("robot-7:s3cret", "cm9ib3QtNzpzM2NyZXQ="),
        ] {
            assert_eq!(base64(plain), encoded);
        }
    }
}
