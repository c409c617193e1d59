//! Uploads (feature `push`, enabled by the server only): the server keeps agent binaries as OCI
//! artifacts in the fleet's registry. The agent only downloads, so none of this is in its binary.
//!
//! Blobs go up monolithically (`POST …/blobs/uploads/`, then one `PUT` of the whole content):
//! agent binaries are a few MB, and a failed upload is simply repeated. Authentication is the
//! read path's [`Session`], asking for `pull,push` tokens.

use fleet_proto::RegistryCredential;
use ureq::http::{Method, Response};
use ureq::Body;

use crate::client::{split_repository, RegistryClient, Session, Target, MAX_ERROR_BYTES};
use crate::error::RegistryError;
use crate::manifest;
use crate::reference::is_tag;

/// A blob (or manifest) as the registry stored it: what a descriptor pointing at it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// `sha256:<hex>` of the content.
    pub digest: String,
    /// Its length in bytes.
    pub size: u64,
}

impl Pushed {
    /// The digest and size of `content`.
    fn of(content: &[u8]) -> Pushed {
        Pushed { digest: manifest::sha256_digest(content), size: content.len() as u64 }
    }
}

impl RegistryClient {
    /// Uploads `data` as a blob of `repository` (`registry/path`, e.g.
    /// `127.0.0.1:5000/fleet/agent`, as [`RegistryClient::download_blob`] takes it), unless the
    /// registry has it already: content-addressed blobs are never sent twice.
    pub fn push_blob(
        &self,
        repository: &str,
        data: &[u8],
        credential: Option<&RegistryCredential>,
    ) -> Result<Pushed, RegistryError> {
        let (registry, path) = split_repository(repository)?;
        let target = Target::new(registry, path);
        let mut session = Session::for_push(self, &target, credential)?;
        let blob = Pushed::of(data);

        let blob_url = session.url(&format!("blobs/{}", blob.digest));
        let mut response = session.send(&Method::HEAD, &blob_url, &[], None)?;
        match response.status().as_u16() {
            200 => {
                tracing::debug!(%repository, digest = %blob.digest, "the registry has the blob already; not uploading it");
                return Ok(blob);
            }
            404 => {}
            _ => return Err(refusal(&session, "HEAD", &blob_url, &mut response)),
        }

        let uploads = session.url("blobs/uploads/");
        let mut response = session.send(&Method::POST, &uploads, &[], Some(&[]))?;
        if response.status().as_u16() != 202 {
            return Err(refusal(&session, "POST", &uploads, &mut response));
        }
        let location = header(&response, "location").ok_or_else(|| {
            session.protocol(format!("POST {uploads} answered 202 without a Location"))
        })?;
        let upload = upload_url(&target.base, &uploads, &location)
            .map_err(|reason| session.protocol(format!("POST {uploads}: {reason}")))?;

        let put = with_digest(&upload, &blob.digest);
        let headers = [("Content-Type", "application/octet-stream")];
        let mut response = session.send(&Method::PUT, &put, &headers, Some(data))?;
        if response.status().as_u16() != 201 {
            return Err(refusal(&session, "PUT", without_query(&upload), &mut response));
        }
        stored_as(&session, "PUT", without_query(&upload), &response, &blob)?;
        tracing::debug!(%repository, digest = %blob.digest, size = blob.size, "blob uploaded");
        Ok(blob)
    }

    /// Stores `body` as the manifest `reference` (a tag, or the body's own digest) of
    /// `repository`, declared as `media_type`. Returns its digest, computed here and checked
    /// against the one the registry reports, so what is recorded is what the registry serves.
    pub fn push_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
        credential: Option<&RegistryCredential>,
    ) -> Result<Pushed, RegistryError> {
        let (registry, path) = split_repository(repository)?;
        let pushed = Pushed::of(body);
        // Checked here because the reference becomes part of the URL: `a/../b` or `x?y` would
        // put the manifest somewhere else.
        if !is_tag(reference) && reference != pushed.digest {
            return Err(RegistryError::Protocol {
                registry: registry.to_owned(),
                reason: format!(
                    "cannot push a manifest to {repository} as {reference:?}: that is neither a tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}) nor the manifest's digest {}",
                    pushed.digest
                ),
            });
        }
        let target = Target::new(registry, path);
        let mut session = Session::for_push(self, &target, credential)?;
        let url = session.url(&format!("manifests/{reference}"));
        let headers = [("Content-Type", media_type)];
        let mut response = session.send(&Method::PUT, &url, &headers, Some(body))?;
        if !matches!(response.status().as_u16(), 200 | 201) {
            return Err(refusal(&session, "PUT", &url, &mut response));
        }
        stored_as(&session, "PUT", &url, &response, &pushed)?;
        tracing::debug!(%repository, %reference, digest = %pushed.digest, "manifest pushed");
        Ok(pushed)
    }
}

/// A response header as text.
fn header(response: &Response<Body>, name: &str) -> Option<String> {
    response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// The error for an answer a push did not expect: a refusal of the login, or a protocol error
/// naming the request, its status and the registry's error codes (from a bounded read).
fn refusal(
    session: &Session<'_>,
    method: &str,
    url: &str,
    response: &mut Response<Body>,
) -> RegistryError {
    let status = response.status().as_u16();
    if matches!(status, 401 | 403) {
        return session.unauthorized(format!("{method} {url} answered {status}"));
    }
    let body =
        response.body_mut().with_config().limit(MAX_ERROR_BYTES).read_to_vec().unwrap_or_default();
    let codes = manifest::error_codes(&body);
    let codes = if codes.is_empty() { String::new() } else { format!(" ({})", codes.join(", ")) };
    session.protocol(format!("{method} {url} answered {status}{codes}"))
}

/// Checks that the registry stored the content under the digest computed here (its
/// `Docker-Content-Digest`, when it sends one in sha256).
fn stored_as(
    session: &Session<'_>,
    method: &str,
    url: &str,
    response: &Response<Body>,
    pushed: &Pushed,
) -> Result<(), RegistryError> {
    let reported = header(response, "docker-content-digest");
    manifest::check_digest(&pushed.digest, reported.as_deref(), None).map_err(|m| {
        session.protocol(format!(
            "{method} {url}: the registry reports the digest {}, the content sent is {}",
            m.expected, pushed.digest
        ))
    })
}

/// Where to `PUT` an upload, from the `Location` the `POST` to `post_url` answered: absolute,
/// absolute-path or relative. An absolute location on another host is refused: the session's
/// credentials would go with it.
fn upload_url(base: &str, post_url: &str, location: &str) -> Result<String, String> {
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let absolute = if location.starts_with("//") {
        format!("{}{location}", &base[..scheme_end.saturating_sub(2)])
    } else if has_scheme(location) {
        location.to_owned()
    } else if location.starts_with('/') {
        return Ok(format!("{base}{location}"));
    } else {
        let dir = post_url.rfind('/').map_or(post_url, |i| &post_url[..=i]);
        return Ok(format!("{dir}{location}"));
    };
    if origin(&absolute) == origin(base) {
        Ok(absolute)
    } else {
        Err(format!(
            "the upload location {} is not on {base}; refusing to send the credentials there",
            without_query(&absolute)
        ))
    }
}

/// Whether `url` starts with `scheme://` (a `://` later, in a query, does not count).
fn has_scheme(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        scheme.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    })
}

/// `scheme://host[:port]` of an absolute URL, lowercase and without the scheme's default port.
fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let scheme = scheme.to_ascii_lowercase();
    let authority = authority.to_ascii_lowercase();
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    format!("{scheme}://{authority}")
}

/// `url` with `digest=<digest>` added to its query (upload locations often carry one already).
fn with_digest(url: &str, digest: &str) -> String {
    let separator = match url.contains('?') {
        false => "?",
        true if url.ends_with('?') || url.ends_with('&') => "",
        true => "&",
    };
    format!("{url}{separator}digest={}", digest.replace(':', "%3A"))
}

/// `url` without its query: upload locations carry long opaque state that only clutters errors.
fn without_query(url: &str) -> &str {
    url.split_once('?').map_or(url, |(path, _)| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "http://127.0.0.1:5000";
    const POST: &str = "http://127.0.0.1:5000/v2/fleet/agent/blobs/uploads/";

    #[test]
    fn upload_locations_are_resolved_absolute_absolute_path_or_relative() {
        let abs = "http://127.0.0.1:5000/v2/fleet/agent/blobs/uploads/u1?_state=x";
        assert_eq!(upload_url(BASE, POST, abs).unwrap(), abs);
        assert_eq!(
            upload_url(BASE, POST, "/v2/fleet/agent/blobs/uploads/u1").unwrap(),
            "http://127.0.0.1:5000/v2/fleet/agent/blobs/uploads/u1"
        );
        assert_eq!(upload_url(BASE, POST, "u1?s=1").unwrap(), format!("{POST}u1?s=1"));
        assert_eq!(
            upload_url(BASE, POST, "u1?next=http://evil.example/").unwrap(),
            format!("{POST}u1?next=http://evil.example/"),
            "a URL inside the query does not make the location absolute"
        );
        assert_eq!(
            upload_url(
                "https://r.example",
                "https://r.example/v2/a/blobs/uploads/",
                "//r.example/up/1"
            )
            .unwrap(),
            "https://r.example/up/1"
        );
        assert_eq!(
            upload_url(
                "https://r.example",
                "https://r.example/v2/a/blobs/uploads/",
                "HTTPS://R.example:443/up/1"
            )
            .unwrap(),
            "HTTPS://R.example:443/up/1",
            "same origin, spelled differently"
        );
    }

    #[test]
    fn an_upload_location_on_another_host_is_refused() {
        for other in ["http://evil.example/up", "https://127.0.0.1:5000/up", "//evil.example/up"] {
            let err = upload_url(BASE, POST, other).unwrap_err();
            assert!(err.contains("refusing to send the credentials"), "{other}: {err}");
        }
    }

    #[test]
    fn the_digest_joins_the_locations_query() {
        let d = "sha256:abc";
        assert_eq!(with_digest("http://r/u", d), "http://r/u?digest=sha256%3Aabc");
        assert_eq!(
            with_digest("http://r/u?_state=x", d),
            "http://r/u?_state=x&digest=sha256%3Aabc"
        );
        assert_eq!(with_digest("http://r/u?", d), "http://r/u?digest=sha256%3Aabc");
        assert_eq!(without_query("http://r/u?_state=x"), "http://r/u");
    }
}
