//! The registry conversation: requests, authentication, and the two questions Fleet asks.
//!
//! Authentication follows the distribution spec: anonymous first, then on `401` either HTTP
//! Basic or a bearer token from the realm named in `WWW-Authenticate`; what worked is kept for
//! the rest of the conversation about one image. Registries on loopback are spoken to over
//! plain HTTP (as the Docker engine does); every other registry over TLS, verified against the
//! system's CA bundle. Every body is read with a size limit, every request under a timeout.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::{ImageRef, RegistryCredential};
use serde::Deserialize;
use ureq::config::RedirectAuthHeaders;
use ureq::tls::{RootCerts, TlsConfig};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::error::RegistryError;
use crate::guard::{Allowlist, Refusal};
use crate::manifest::{self, IndexEntry, Kind, Manifest, ACCEPT};
use crate::platform::{best_fit, Platform, PlatformImage, ResolvedImage};
use crate::reference::{is_sha256_digest, split_port, Reference, DOCKER_HUB};

/// Manifests are small; anything bigger is not one.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Image configurations are a few KiB; a bigger one is not read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// An error body is read only for its error code.
pub(crate) const MAX_ERROR_BYTES: u64 = 64 << 10;

/// Talks to registries. Blocking: call from a blocking thread. Cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    agent: ureq::Agent,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient").finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client trusting the system's CA bundle; `timeout` bounds each request, `user_agent`
    /// names the caller to registries (e.g. `fleet-agent/0.1.0`).
    pub fn new(user_agent: &str, timeout: Duration) -> RegistryClient {
        RegistryClient { agent: ureq::Agent::new_with_config(config(user_agent, timeout)) }
    }

    /// [`RegistryClient::new`] for the server, which reaches registries that Compose files name:
    /// it connects only to public addresses, unless `allowlist` lists the host, and this holds
    /// for every connection (token services and redirects too), checked on the addresses it
    /// connects to ([`crate::guard`]). A refused connection is [`RegistryError::Refused`].
    ///
    /// Behind a proxy named by `HTTPS_PROXY`/`HTTP_PROXY` the proxy resolves names and
    /// connects, so no address but the proxy's own reaches this check: the proxy must refuse
    /// internal destinations. ([`Allowlist::check_registry`] still refuses listed-out
    /// registries and those written as non-public addresses before anything is sent.)
    pub fn guarded(user_agent: &str, timeout: Duration, allowlist: Allowlist) -> RegistryClient {
        let agent = ureq::Agent::with_parts(
            config(user_agent, timeout),
            DefaultConnector::new(),
            GuardedResolver { allowlist },
        );
        RegistryClient { agent }
    }

    /// Bytes the engine downloads to pull `image` (its config and compressed layers) on
    /// `platform`, read from the manifests before pulling.
    pub fn download_size(
        &self,
        image: &ImageRef,
        platform: &Platform,
        credential: Option<&RegistryCredential>,
    ) -> Result<u64, RegistryError> {
        let target = Target::of(image)?;
        let mut session = Session::new(self, &target, credential)?;
        let manifest = session.manifest(image.digest())?;
        let manifest = match manifest.manifests {
            Some(entries) => {
                let digest =
                    pick_platform(&entries, platform).ok_or_else(|| RegistryError::NoPlatform {
                        image: image.pull_ref(),
                        platform: format!(
                            "linux/{}{}",
                            platform.architecture,
                            platform
                                .variant
                                .as_deref()
                                .map(|v| format!("/{v}"))
                                .unwrap_or_default()
                        ),
                        count: entries.len(),
                    })?;
                session.manifest(&digest)?
            }
            None => manifest,
        };
        match (manifest.config, manifest.layers) {
            (Some(config), Some(layers)) => Ok(manifest::download_bytes(&config, &layers)),
            _ => Err(RegistryError::NotAManifest {
                image: image.pull_ref(),
                reason: "neither an image manifest nor an index".to_owned(),
            }),
        }
    }

    /// Downloads blob `digest` of `repository` (`registry/path`, e.g.
    /// `registry.example:5000/fleet/agent`) into `dest`, resuming what an earlier attempt
    /// left there with an HTTP `Range` request, so a link that drops at 90 % does not start
    /// over. Before returning it checks the size and the sha256; a file that turns out wrong
    /// is deleted, so the next attempt starts afresh. `progress` gets the bytes on disk.
    pub fn download_blob(
        &self,
        repository: &str,
        digest: &str,
        size: u64,
        dest: &std::path::Path,
        credential: Option<&RegistryCredential>,
        progress: &dyn Fn(u64),
    ) -> Result<(), RegistryError> {
        use std::io::{Read, Write};
        let (registry, path) = split_repository(repository)?;
        if !is_sha256_digest(digest) {
            return Err(RegistryError::Protocol {
                registry: registry.to_owned(),
                reason: format!("{digest:?} is not a sha256 digest"),
            });
        }
        let io = |source: std::io::Error| RegistryError::Io { path: dest.to_path_buf(), source };
        let mut file =
            std::fs::OpenOptions::new().create(true).append(true).open(dest).map_err(io)?;
        let mut have = file.metadata().map_err(io)?.len();
        if have > size {
            file.set_len(0).map_err(io)?;
            have = 0;
        }
        if have < size {
            let target = Target::new(registry, path);
            let mut session = Session::new(self, &target, credential)?;
            let range = format!("bytes={have}-");
            let headers: Vec<(&str, &str)> =
                if have > 0 { vec![("Range", range.as_str())] } else { Vec::new() };
            let mut response = session.authorized(&format!("blobs/{digest}"), &headers)?;
            match response.status().as_u16() {
                206 => tracing::debug!(from = have, "registry resumes the download"),
                200 => {
                    // The registry ignored the range: the body is the whole blob.
                    file.set_len(0).map_err(io)?;
                    have = 0;
                }
                401 | 403 => return Err(session.unauthorized("the credentials were refused")),
                404 => {
                    return Err(RegistryError::UnknownDigest {
                        registry: registry.to_owned(),
                        repository: path.to_owned(),
                        digest: digest.to_owned(),
                    })
                }
                status => {
                    if status == 416 {
                        // What is on disk does not fit the blob: start over next time.
                        file.set_len(0).map_err(io)?;
                    }
                    return Err(session.protocol(format!("GET blob {digest} answered {status}")));
                }
            }
            // One byte over the expected size, so a blob that is too long is told apart from
            // one that is complete.
            let mut body = response.body_mut().with_config().limit(size - have + 1).reader();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    // Cut off mid-way: what arrived stays on disk for the next attempt.
                    Err(e) => {
                        file.sync_data().map_err(io)?;
                        return Err(RegistryError::Unreachable {
                            registry: registry.to_owned(),
                            source: Box::new(e),
                        });
                    }
                };
                file.write_all(&buf[..n]).map_err(io)?;
                have += n as u64;
                progress(have);
            }
            file.sync_all().map_err(io)?;
        }
        if have > size {
            let _ = std::fs::remove_file(dest);
            return Err(RegistryError::Protocol {
                registry: registry.to_owned(),
                reason: format!("blob {digest} is longer than the {size} bytes expected"),
            });
        }
        if have != size {
            return Err(RegistryError::Protocol {
                registry: registry.to_owned(),
                reason: format!(
                    "blob {digest} ended after {have} of {size} bytes; resuming next time"
                ),
            });
        }
        let actual = sha256_file(dest).map_err(io)?;
        if actual != digest {
            let _ = std::fs::remove_file(dest);
            return Err(RegistryError::DigestMismatch {
                image: format!("{repository}@{digest}"),
                expected: digest.to_owned(),
                actual,
                expected_by: "the signed desired state",
            });
        }
        Ok(())
    }

    /// Resolves `reference` to the digest of the manifest it names, verified, with the
    /// platforms it offers and what each downloads.
    ///
    /// An index keeps the index's digest (every device then pulls its own platform) and lists
    /// its real platform images, attestations left out; a single image manifest reports the
    /// one platform its configuration declares.
    pub fn resolve(
        &self,
        reference: &Reference,
        credential: Option<&RegistryCredential>,
    ) -> Result<ResolvedImage, RegistryError> {
        let target = Target::new(reference.registry(), reference.repository());
        let mut session = Session::new(self, &target, credential)?;
        let name = reference.to_string();
        let top = session.manifest_bytes(reference.manifest_reference())?;
        let digest = manifest::sha256_digest(&top.body);
        verify(
            &name,
            &digest,
            top.content_digest.as_deref(),
            reference.digest().map(|d| (d, "the reference")),
        )?;
        let parsed = manifest::parse(&top.body, top.content_type.as_deref())
            .map_err(|reason| RegistryError::NotAManifest { image: name.clone(), reason })?;
        let platforms = match parsed.kind {
            Kind::Index(entries) => session.index_platforms(&name, &entries)?,
            Kind::Image { config, layers } => {
                let (os, architecture, variant) = session.config_platform(&name, &config)?;
                let download_bytes = manifest::download_bytes(&config, &layers);
                vec![PlatformImage {
                    os,
                    architecture,
                    variant,
                    digest: digest.clone(),
                    download_bytes,
                }]
            }
        };
        let tag = reference.tag().map(|t| format!(":{t}")).unwrap_or_default();
        let image =
            ImageRef::parse(&format!("{}{tag}@{digest}", reference.familiar_name())).map_err(
                |e| RegistryError::NotAManifest { image: name.clone(), reason: e.to_string() },
            )?;
        tracing::debug!(reference = %name, %digest, media_type = %parsed.media_type, platforms = platforms.len(), "resolved");
        Ok(ResolvedImage { image, media_type: parsed.media_type, platforms })
    }
}

/// What every client is configured with: the system's CA certificates, `timeout` per request,
/// statuses as answers (not errors), and no login on a redirect, even to the same host.
fn config(user_agent: &str, timeout: Duration) -> ureq::config::Config {
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(system_roots())))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build();
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .tls_config(tls)
        .user_agent(user_agent)
        // ureq's default, stated: a registry redirects blob downloads to storage on other
        // hosts, which must never see the registry's password or token.
        .redirect_auth_headers(RedirectAuthHeaders::Never)
        .build()
}

/// The guarded client's resolver: ureq's own, then [`Allowlist::check_connection`] on every
/// address, so the connector only ever gets addresses that passed. ureq asks it again for
/// each new host a redirect names. (ureq's resolver interface is outside its semver promise:
/// an update of ureq may need this adapted.)
#[derive(Debug)]
struct GuardedResolver {
    allowlist: Allowlist,
}

impl Resolver for GuardedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let addresses = DefaultResolver::default().resolve(uri, config, timeout)?;
        // A proxy from the environment is the server's own configuration, not a Compose file's.
        if config.proxy().is_some_and(|p| p.uri() == uri) {
            return Ok(addresses);
        }
        let host = uri.authority().map_or_else(String::new, |a| match a.port() {
            Some(port) => format!("{}:{port}", a.host()),
            None => a.host().to_owned(),
        });
        let ips: Vec<std::net::IpAddr> = addresses.iter().map(std::net::SocketAddr::ip).collect();
        self.allowlist
            .check_connection(&host, &ips)
            .map_err(|refusal| ureq::Error::Other(Box::new(refusal)))?;
        Ok(addresses)
    }
}

/// `registry/path` (e.g. `registry.example:5000/fleet/agent`) split at its first `/`.
pub(crate) fn split_repository(repository: &str) -> Result<(&str, &str), RegistryError> {
    repository.split_once('/').ok_or_else(|| RegistryError::Protocol {
        registry: repository.to_owned(),
        reason: format!("{repository:?} is not registry/repository"),
    })
}

/// Refuses content whose digest is not what the registry or the asker said.
fn verify(
    image: &str,
    actual: &str,
    header: Option<&str>,
    asked: Option<(&str, &'static str)>,
) -> Result<(), RegistryError> {
    manifest::check_digest(actual, header, asked).map_err(|m| RegistryError::DigestMismatch {
        image: image.to_owned(),
        expected: m.expected,
        actual: actual.to_owned(),
        expected_by: m.expected_by,
    })
}

/// The digest of the index entry for `platform`.
fn pick_platform(entries: &[IndexEntry], platform: &Platform) -> Option<String> {
    best_fit(entries, platform, |e| {
        e.platform.as_ref().map_or(("", "", None), |p| {
            (p.os.as_str(), p.architecture.as_str(), p.variant.as_deref())
        })
    })
    .map(|e| e.digest.clone())
}

/// Where an image lives: base URL and repository path on the registry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// Registry host as in the image reference (credentials are keyed by it).
    pub(crate) registry: String,
    /// `http(s)://host`.
    pub(crate) base: String,
    /// Repository path, e.g. `library/busybox`.
    pub(crate) repository: String,
}

impl Target {
    pub(crate) fn new(registry: &str, repository: &str) -> Target {
        let base = if registry == DOCKER_HUB {
            "https://registry-1.docker.io".to_owned()
        } else {
            let (host, _) = split_port(registry);
            let loopback = host == "localhost"
                || host == "[::1]"
                || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback());
            let scheme = if loopback { "http" } else { "https" };
            format!("{scheme}://{registry}")
        };
        Target { registry: registry.to_owned(), base, repository: repository.to_owned() }
    }

    /// Where a release's image is pulled from: its name normalised by [`Reference`], the one
    /// parser of Docker's grammar (`busybox` and `docker.io/busybox` are both
    /// `docker.io/library/busybox`, `index.docker.io` is `docker.io`).
    fn of(image: &ImageRef) -> Result<Target, RegistryError> {
        let reference = Reference::parse(&image.pull_ref())
            .map_err(|source| RegistryError::BadImage { image: image.pull_ref(), source })?;
        Ok(Target::new(reference.registry(), reference.repository()))
    }
}

/// Whether a credential stored for `credential` applies to `registry` (Docker Hub has aliases,
/// and Docker's own config keys it as `https://index.docker.io/v1/`).
fn same_registry(credential: &str, registry: &str) -> bool {
    let normal = |r: &str| {
        let r = r.trim_start_matches("https://").trim_start_matches("http://");
        let host = r.split('/').next().unwrap_or(r).to_ascii_lowercase();
        match host.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => host,
        }
    };
    normal(credential) == normal(registry)
}

/// A challenge from `WWW-Authenticate`. Public only for the fuzz target ([`crate::fuzzing`]).
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic`: send the credential as it is.
    Basic,
    /// `Bearer`: get a token from `realm` for `service` and `scope`.
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
/// Public only for the fuzz target ([`crate::fuzzing`]).
#[doc(hidden)]
pub fn parse_challenge(header: &str) -> Option<Challenge> {
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

/// How requests of a session authenticate, once the registry has said.
#[derive(Debug)]
enum Auth {
    Anonymous,
    Basic,
    Bearer(String),
}

/// A successful answer.
#[derive(Debug)]
struct Fetched {
    body: Vec<u8>,
    content_type: Option<String>,
    /// `Docker-Content-Digest`, if sent.
    content_digest: Option<String>,
}

/// The answer to a GET: the content, or a 404 with the distribution error codes it carried.
#[derive(Debug)]
enum Answer {
    Found(Fetched),
    NotFound(Vec<String>),
}

/// One image's conversation with its registry, keeping what authentication worked.
pub(crate) struct Session<'a> {
    client: &'a RegistryClient,
    target: &'a Target,
    credential: Option<&'a RegistryCredential>,
    auth: Auth,
    /// Whether the session uploads: its tokens are asked for `pull,push` and refusals say
    /// that the login needs push rights.
    push: bool,
}

impl<'a> Session<'a> {
    pub(crate) fn new(
        client: &'a RegistryClient,
        target: &'a Target,
        credential: Option<&'a RegistryCredential>,
    ) -> Result<Session<'a>, RegistryError> {
        if let Some(c) = credential.filter(|c| !same_registry(&c.registry, &target.registry)) {
            return Err(RegistryError::WrongCredential {
                registry: target.registry.clone(),
                credential_registry: c.registry.clone(),
            });
        }
        Ok(Session { client, target, credential, auth: Auth::Anonymous, push: false })
    }

    /// A session that uploads to its repository. Its first token already has push rights, so
    /// an upload is not sent with a pull-only token (taken on the HEAD before it) to be refused.
    #[cfg(feature = "push")]
    pub(crate) fn for_push(
        client: &'a RegistryClient,
        target: &'a Target,
        credential: Option<&'a RegistryCredential>,
    ) -> Result<Session<'a>, RegistryError> {
        Ok(Session { push: true, ..Session::new(client, target, credential)? })
    }

    /// `{base}/v2/{repository}/{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.target.base, self.target.repository)
    }

    pub(crate) fn protocol(&self, reason: impl Into<String>) -> RegistryError {
        RegistryError::Protocol { registry: self.target.registry.clone(), reason: reason.into() }
    }

    /// A transport error: no answer (unreachable), or an answer outside HTTP's rules.
    pub(crate) fn transport(&self, error: ureq::Error, registry: String) -> RegistryError {
        match error {
            ureq::Error::Other(e) if e.is::<Refusal>() => match e.downcast::<Refusal>() {
                Ok(refusal) => RegistryError::Refused { registry, refusal: *refusal },
                Err(e) => RegistryError::Unreachable { registry, source: e },
            },
            ureq::Error::TooManyRedirects
            | ureq::Error::RedirectFailed
            | ureq::Error::BadUri(_)
            | ureq::Error::Http(_)
            | ureq::Error::Protocol(_)
            | ureq::Error::LargeResponseHeader(..) => {
                RegistryError::Protocol { registry, reason: error.to_string() }
            }
            e => RegistryError::Unreachable { registry, source: Box::new(e) },
        }
    }

    pub(crate) fn unauthorized(&self, reason: impl Into<String>) -> RegistryError {
        let reason = reason.into();
        let reason = if self.push {
            format!(
                "{reason} (pushing needs a login with push rights to {})",
                self.target.repository
            )
        } else {
            reason
        };
        RegistryError::Unauthorized {
            registry: self.target.registry.clone(),
            repository: self.target.repository.clone(),
            reason,
        }
    }

    fn basic(&self) -> Option<String> {
        self.credential
            .map(|c| format!("Basic {}", base64(&format!("{}:{}", c.username, c.password))))
    }

    /// `GET {base}/v2/{repository}/{path}` with `headers`, authenticating as the registry asks.
    fn authorized(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        let url = self.url(path);
        self.send(&ureq::http::Method::GET, &url, headers, None)
    }

    /// `method url` with `headers` and `body`, authenticating as the registry asks (anonymous
    /// first, then what its `401` challenge names). Returns the first answer that is not a
    /// challenge. `url` must be on this session's registry: the credentials go with it.
    pub(crate) fn send(
        &mut self,
        method: &ureq::http::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        for attempt in 0..2 {
            let auth = match &self.auth {
                Auth::Anonymous => None,
                Auth::Basic => self.basic(),
                Auth::Bearer(token) => Some(format!("Bearer {token}")),
            };
            let mut request = ureq::http::Request::builder().method(method.clone()).uri(url);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            if let Some(auth) = &auth {
                request = request.header("Authorization", auth);
            }
            let bad_request =
                |e: ureq::http::Error| self.protocol(format!("cannot send {method} {url}: {e}"));
            let sent = match body {
                Some(body) => self.client.agent.run(request.body(body).map_err(bad_request)?),
                None => self.client.agent.run(request.body(()).map_err(bad_request)?),
            };
            let response = sent.map_err(|e| self.transport(e, self.target.registry.clone()))?;
            let status = response.status().as_u16();
            tracing::trace!(%method, %url, status, "registry answered");
            if status != 401 || attempt > 0 {
                return Ok(response);
            }
            let header = response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            match parse_challenge(&header) {
                Some(Challenge::Basic) if self.credential.is_some() => self.auth = Auth::Basic,
                Some(Challenge::Basic) => {
                    return Err(self
                        .unauthorized("it needs a login and none is configured for this registry"))
                }
                Some(Challenge::Bearer { realm, service, scope }) => {
                    self.auth = Auth::Bearer(self.fetch_token(&realm, service, scope)?);
                }
                None => return Err(self.unauthorized(format!("unsupported challenge {header:?}"))),
            }
        }
        Err(self.unauthorized("the credentials were refused"))
    }

    /// `GET {base}/v2/{repository}/{path}`, authenticating as the registry asks; the body is
    /// read up to `limit` bytes (`what` names it in errors).
    fn get(
        &mut self,
        path: &str,
        accept: Option<&str>,
        limit: u64,
        what: &str,
    ) -> Result<Answer, RegistryError> {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
        let mut response = self.authorized(path, &headers)?;
        let url = self.url(path);
        match response.status().as_u16() {
            200 => {
                let header = |name: &str| {
                    response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
                };
                let (content_type, content_digest) =
                    (header("content-type"), header("docker-content-digest"));
                let body = match response.body_mut().with_config().limit(limit).read_to_vec() {
                    Ok(body) => body,
                    Err(ureq::Error::BodyExceedsLimit(_)) => {
                        return Err(self.protocol(format!(
                            "the {what} at {url} is larger than {limit} bytes; refusing it"
                        )))
                    }
                    Err(e) => return Err(self.transport(e, self.target.registry.clone())),
                };
                Ok(Answer::Found(Fetched { body, content_type, content_digest }))
            }
            401 | 403 => Err(self.unauthorized("the credentials were refused")),
            404 => {
                let body = response
                    .body_mut()
                    .with_config()
                    .limit(MAX_ERROR_BYTES)
                    .read_to_vec()
                    .unwrap_or_default();
                Ok(Answer::NotFound(manifest::error_codes(&body)))
            }
            status => Err(self.protocol(format!("GET {url} answered {status}"))),
        }
    }

    /// The manifest `reference` (a tag or a digest) names, as the registry sent it.
    fn manifest_bytes(&mut self, reference: &str) -> Result<Fetched, RegistryError> {
        let path = format!("manifests/{reference}");
        match self.get(&path, Some(ACCEPT), MAX_MANIFEST_BYTES, "manifest")? {
            Answer::Found(fetched) => Ok(fetched),
            Answer::NotFound(codes) => Err(self.not_found(reference, &codes)),
        }
    }

    /// The manifest `reference` names, read for its sizes.
    fn manifest(&mut self, reference: &str) -> Result<Manifest, RegistryError> {
        let fetched = self.manifest_bytes(reference)?;
        serde_json::from_slice(&fetched.body).map_err(|e| RegistryError::NotAManifest {
            image: format!("{}@{reference}", self.target.repository),
            reason: format!("not a manifest: {e}"),
        })
    }

    /// Which of repository, tag or digest is missing. Many registries answer an unknown
    /// repository's manifest with `MANIFEST_UNKNOWN` too, so a missing tag is told apart by
    /// asking for the repository's tag list, which says `NAME_UNKNOWN`.
    fn not_found(&mut self, reference: &str, codes: &[String]) -> RegistryError {
        let registry = self.target.registry.clone();
        let repository = self.target.repository.clone();
        let name_unknown = |codes: &[String]| codes.iter().any(|c| c == "NAME_UNKNOWN");
        let repository_unknown = name_unknown(codes)
            || matches!(
                self.get("tags/list?n=1", None, MAX_ERROR_BYTES, "tag list"),
                Ok(Answer::NotFound(codes)) if name_unknown(&codes)
            );
        if repository_unknown {
            RegistryError::UnknownRepository { registry, repository }
        } else if is_sha256_digest(reference) || reference.contains(':') {
            RegistryError::UnknownDigest { registry, repository, digest: reference.to_owned() }
        } else {
            RegistryError::UnknownTag { registry, repository, tag: reference.to_owned() }
        }
    }

    /// The real platform images an index lists, each with its download size.
    fn index_platforms(
        &mut self,
        image: &str,
        entries: &[IndexEntry],
    ) -> Result<Vec<PlatformImage>, RegistryError> {
        let not_usable =
            |reason: String| RegistryError::NotAManifest { image: image.to_owned(), reason };
        let images: Vec<&IndexEntry> =
            entries.iter().filter(|e| manifest::is_platform_image(e)).collect();
        if images.is_empty() {
            return Err(not_usable(format!(
                "an index of {} entries, none an image for a platform (only attestations or artifacts)",
                entries.len()
            )));
        }
        let mut platforms = Vec::with_capacity(images.len());
        for entry in images {
            let Some(platform) = &entry.platform else { continue };
            if !is_sha256_digest(&entry.digest) {
                return Err(not_usable(format!(
                    "its index lists the digest {:?}, not a sha256 digest",
                    entry.digest
                )));
            }
            let fetched = self.manifest_bytes(&entry.digest)?;
            let entry_name =
                format!("{}/{}@{}", self.target.registry, self.target.repository, entry.digest);
            let actual = manifest::sha256_digest(&fetched.body);
            verify(
                &entry_name,
                &actual,
                fetched.content_digest.as_deref(),
                Some((&entry.digest, "the index")),
            )?;
            let parsed = manifest::parse(&fetched.body, fetched.content_type.as_deref()).map_err(
                |reason| RegistryError::NotAManifest { image: entry_name.clone(), reason },
            )?;
            let Kind::Image { config, layers } = parsed.kind else {
                return Err(RegistryError::NotAManifest {
                    image: entry_name,
                    reason: "an index inside an index, which the engine does not pull".to_owned(),
                });
            };
            platforms.push(PlatformImage {
                os: platform.os.clone(),
                architecture: platform.architecture.clone(),
                variant: platform.variant.clone(),
                digest: entry.digest.clone(),
                download_bytes: manifest::download_bytes(&config, &layers),
            });
        }
        Ok(platforms)
    }

    /// The platform an image's configuration declares, read from its (verified) config blob.
    fn config_platform(
        &mut self,
        image: &str,
        config: &manifest::Descriptor,
    ) -> Result<(String, String, Option<String>), RegistryError> {
        let not_usable =
            |reason: String| RegistryError::NotAManifest { image: image.to_owned(), reason };
        if !is_sha256_digest(&config.digest) {
            return Err(not_usable(format!(
                "its config digest {:?} is not a sha256 digest",
                config.digest
            )));
        }
        if config.size > MAX_CONFIG_BYTES {
            return Err(not_usable(format!(
                "its config is {} bytes, more than the {MAX_CONFIG_BYTES} an image config may have",
                config.size
            )));
        }
        let path = format!("blobs/{}", config.digest);
        let body = match self.get(&path, None, MAX_CONFIG_BYTES, "image config")? {
            Answer::Found(fetched) => fetched.body,
            Answer::NotFound(_) => {
                return Err(not_usable(format!(
                    "its config {} is missing from the registry",
                    config.digest
                )))
            }
        };
        let actual = manifest::sha256_digest(&body);
        verify(
            &format!("the config of {image}"),
            &actual,
            None,
            Some((&config.digest, "the manifest")),
        )?;
        manifest::config_platform(&body).map_err(not_usable)
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
        // A pushing session asks for push rights on its repository whatever the challenge of
        // its first request (a HEAD or GET, which names only `pull`) says.
        let scope = match scope {
            _ if self.push => format!("repository:{}:pull,push", self.target.repository),
            Some(scope) => scope,
            None => format!("repository:{}:pull", self.target.repository),
        };
        let basic = self.basic();
        if basic.is_some() && !realm_may_get_login(realm, &self.target.base) {
            return Err(self.unauthorized(format!(
                "it names the token service {realm:?}, which is not HTTPS: its login is not sent there"
            )));
        }
        let mut request = self.client.agent.get(realm).query("scope", &scope);
        if let Some(service) = &service {
            request = request.query("service", service);
        }
        if let Some(basic) = basic {
            request = request.header("Authorization", &basic);
        }
        let token_service = || format!("{} (its token service {realm})", self.target.registry);
        let mut response = request.call().map_err(|e| self.transport(e, token_service()))?;
        match response.status().as_u16() {
            200 => {}
            401 | 403 => {
                return Err(
                    self.unauthorized(format!("the token service {realm} refused the credentials"))
                )
            }
            status => return Err(self.protocol(format!("token service {realm} answered {status}"))),
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST_BYTES)
            .read_to_vec()
            .map_err(|e| self.transport(e, token_service()))?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| self.protocol(format!("token from {realm}: {e}")))?;
        answer
            .token
            .or(answer.access_token)
            .ok_or_else(|| self.protocol(format!("token service {realm} sent no token")))
    }
}

/// The system's trusted CA certificates, found the way OpenSSL finds them: `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` when set, else the distribution's bundle and directory (rustls-native-certs,
/// which knows more layouts than a list kept here would).
fn system_roots() -> Vec<ureq::tls::Certificate<'static>> {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "part of the system's CA certificates could not be read");
    }
    if found.certs.is_empty() {
        tracing::warn!(
            "no CA certificates found (set SSL_CERT_FILE or SSL_CERT_DIR); TLS registries cannot be verified"
        );
    }
    found.certs.iter().map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned()).collect()
}

/// Standard base64 (RFC 4648, with padding), for HTTP Basic credentials.
fn base64(input: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(input)
}

/// `sha256:<hex>` of a file's content.
fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("sha256:{hex}"))
}

/// Whether a registry's login may go to the token service `realm` its challenge names: over
/// HTTPS always (Docker Hub's is another host, as the protocol allows), over plain HTTP only
/// from a registry on loopback to a token service on loopback (test setups). Anything else
/// would hand the password to whoever the challenge points at, in the clear.
fn realm_may_get_login(realm: &str, registry_base: &str) -> bool {
    if realm.starts_with("https://") {
        return true;
    }
    let Some(rest) = realm.strip_prefix("http://") else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (host, _) = split_port(authority);
    let loopback = host == "localhost"
        || host == "[::1]"
        || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback());
    loopback && registry_base.starts_with("http://")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::AddressKind;
    use crate::manifest::EntryPlatform;

    #[test]
    fn a_login_goes_only_to_a_token_service_over_https_or_between_loopback_ends() {
        assert!(realm_may_get_login(
            "https://auth.docker.io/token",
            "https://registry-1.docker.io"
        ));
        assert!(realm_may_get_login("http://127.0.0.1:5001/auth", "http://127.0.0.1:5000"));
        assert!(!realm_may_get_login(
            "http://auth.example.com/token",
            "https://registry.example.com"
        ));
        assert!(!realm_may_get_login("http://127.0.0.1:5001/auth", "https://registry.example.com"));
        assert!(!realm_may_get_login("ftp://x/token", "http://127.0.0.1:5000"));
        assert!(!realm_may_get_login(
            "http://127.0.0.1.evil.example/auth",
            "http://127.0.0.1:5000"
        ));
    }

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
                .unwrap()
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
        // Spelled out, Docker Hub is still served by registry-1.
        assert_eq!(t("docker.io/library/busybox").base, "https://registry-1.docker.io");
        assert_eq!(Target::new("[::1]", "x").base, "http://[::1]");
        assert_eq!(Target::new("127.8.0.1:80", "x").base, "http://127.8.0.1:80");
    }

    #[test]
    fn references_and_image_refs_reach_the_same_target() {
        for s in ["busybox", "robots/lidar", "127.0.0.1:5000/demo/app", "localhost/x"] {
            let r = Reference::parse(s).unwrap();
            let image =
                ImageRef::parse(&format!("{}@sha256:{}", r.familiar_name(), "a".repeat(64)))
                    .unwrap();
            assert_eq!(
                Target::new(r.registry(), r.repository()),
                Target::of(&image).unwrap(),
                "{s}"
            );
        }
    }

    /// Where the two parsers used to differ, Docker's normalisation (distribution/reference,
    /// as `docker pull` does it) won: the Hub's aliases and its implicit `library/` apply to a
    /// release's images too.
    #[test]
    fn release_images_on_docker_hub_are_normalised_as_docker_does() {
        let t = |s: &str| {
            Target::of(&ImageRef::parse(&format!("{s}@sha256:{}", "a".repeat(64))).unwrap())
                .unwrap()
        };
        let spelled = t("docker.io/busybox");
        assert_eq!(
            (spelled.registry.as_str(), spelled.repository.as_str()),
            (DOCKER_HUB, "library/busybox")
        );
        let alias = t("index.docker.io/robots/lidar");
        assert_eq!(
            (alias.registry.as_str(), alias.base.as_str(), alias.repository.as_str()),
            (DOCKER_HUB, "https://registry-1.docker.io", "robots/lidar")
        );
        assert_eq!(t("localhost:5000/x").repository, "x");
        let bad = ImageRef::parse(&format!("a//b@sha256:{}", "a".repeat(64))).unwrap();
        assert!(matches!(Target::of(&bad), Err(RegistryError::BadImage { .. })));
    }

    #[test]
    fn credentials_apply_only_to_their_own_registry() {
        assert!(same_registry("127.0.0.1:5000", "127.0.0.1:5000"));
        assert!(same_registry("https://index.docker.io/v1/", DOCKER_HUB));
        assert!(same_registry("Registry.Example.com", "registry.example.com"));
        assert!(!same_registry("127.0.0.1:5000", "127.0.0.1:5001"));
        assert!(!same_registry("evil.example.com", "registry.example.com"));
    }

    #[test]
    fn index_entries_are_picked_by_architecture_then_variant() {
        let entry = |digest: &str, arch: &str, variant: Option<&str>| IndexEntry {
            media_type: None,
            digest: digest.into(),
            platform: Some(EntryPlatform {
                os: "linux".into(),
                architecture: arch.into(),
                variant: variant.map(Into::into),
            }),
            annotations: Default::default(),
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

    /// A stand-in on loopback: answers its connections with `answers` in turn (then 500) and
    /// records each request's head, lowercase.
    fn scripted(answers: Vec<String>) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let heads = seen.clone();
        std::thread::spawn(move || {
            let mut answers = answers.into_iter();
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
                heads.lock().unwrap().push(String::from_utf8_lossy(&request).to_lowercase());
                let answer = answers.next().unwrap_or_else(|| answer("500 Scripted", "", ""));
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        (address, seen)
    }

    fn answer(status: &str, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
            body.len()
        )
    }

    /// Downloads `BLOB` from `registry` with `client` into a fresh file.
    fn download(
        client: &RegistryClient,
        registry: &str,
        login: Option<&RegistryCredential>,
    ) -> Result<(), RegistryError> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dest = std::env::temp_dir().join(format!("fleet-oci-{}-{n}", std::process::id()));
        let digest = manifest::sha256_digest(BLOB.as_bytes());
        let size = BLOB.len() as u64;
        let result =
            client.download_blob(&format!("{registry}/x"), &digest, size, &dest, login, &|_| ());
        let _ = std::fs::remove_file(&dest);
        result
    }

    const BLOB: &str = "an agent binary";

    fn guarded(allowed: &[&str]) -> RegistryClient {
        RegistryClient::guarded("fleet-oci-tests", TIMEOUT, Allowlist::new(allowed).unwrap())
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[test]
    fn a_login_goes_along_no_redirect() {
        let (storage, storage_saw) = scripted(vec![answer("200 OK", "", BLOB)]);
        let (registry, registry_saw) = scripted(vec![
            answer("401 Unauthorized", "WWW-Authenticate: Basic realm=\"r\"\r\n", ""),
            answer("307 Temporary Redirect", &format!("Location: http://{storage}/blob\r\n"), ""),
        ]);
        let login = RegistryCredential {
            registry: registry.clone(),
            username: "fleet".into(),
            password: "s3cret".into(),
        };
        let client = RegistryClient::new("fleet-oci-tests", TIMEOUT);
        download(&client, &registry, Some(&login)).unwrap();
        let registry_saw = registry_saw.lock().unwrap();
        assert!(registry_saw[1].contains("authorization: basic"), "{registry_saw:?}");
        let storage_saw = storage_saw.lock().unwrap();
        assert_eq!(storage_saw.len(), 1);
        assert!(!storage_saw[0].contains("authorization"), "{storage_saw:?}");
    }

    #[test]
    fn the_guarded_client_follows_no_redirect_to_an_unlisted_private_host() {
        let (storage, storage_saw) = scripted(vec![answer("200 OK", "", BLOB)]);
        let (registry, _) = scripted(vec![
            answer("200 OK", "", BLOB),
            answer("307 Temporary Redirect", &format!("Location: http://{storage}/blob\r\n"), ""),
        ]);
        let client = guarded(&[&registry]);
        download(&client, &registry, None).expect("a listed registry on loopback is reached");
        let err = download(&client, &registry, None).unwrap_err();
        assert!(
            matches!(
                &err,
                RegistryError::Refused {
                    refusal: Refusal::NonPublic { host, kind: AddressKind::Loopback, .. },
                    ..
                } if *host == storage
            ),
            "{err:?}"
        );
        assert!(storage_saw.lock().unwrap().is_empty(), "nothing was sent to {storage}");
    }

    #[test]
    fn the_guarded_client_asks_no_token_service_on_an_unlisted_private_host() {
        let (auth, auth_saw) = scripted(vec![answer("200 OK", "", r#"{"token":"t"}"#)]);
        let challenge = format!("WWW-Authenticate: Bearer realm=\"http://{auth}/token\"\r\n");
        let (registry, _) = scripted(vec![answer("401 Unauthorized", &challenge, "")]);
        let err = download(&guarded(&[&registry]), &registry, None).unwrap_err();
        assert!(
            matches!(&err, RegistryError::Refused { refusal: Refusal::NonPublic { host, .. }, .. } if *host == auth),
            "{err:?}"
        );
        assert!(auth_saw.lock().unwrap().is_empty());
    }

    /// The check is on what a name resolves to, not on how it is spelled: `127.1` is
    /// 127.0.0.1 to the system's resolver, and no text rule has to know that.
    #[test]
    fn the_guarded_client_judges_a_name_by_the_addresses_it_resolves_to() {
        let (listening, saw) = scripted(vec![answer("200 OK", "", BLOB)]);
        let port = listening.rsplit_once(':').unwrap().1;
        for host in [format!("localhost:{port}"), format!("127.1:{port}")] {
            let err = download(&guarded(&[]), &host, None).unwrap_err();
            assert!(
                matches!(
                    &err,
                    RegistryError::Refused {
                        refusal: Refusal::NonPublic { host: h, kind: AddressKind::Loopback, .. },
                        ..
                    } if *h == host
                ),
                "{host}: {err:?}"
            );
            let chain = fleet_proto::errors::chain(&err);
            assert!(chain.contains(&format!("{host} is a loopback address")), "{chain}");
        }
        assert!(saw.lock().unwrap().is_empty(), "nothing was sent");
        download(&guarded(&[&format!("localhost:{port}")]), &format!("localhost:{port}"), None)
            .expect("listed, the same host is reached");
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
