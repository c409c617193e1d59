//! Docker-style image references, `[registry[:port]/]path[:tag][@sha256:<64 hex>]`, parsed and
//! normalised the way the Docker engine does it, so a reference means the same image here as
//! in `docker pull`.
//!
//! Invariants of a parsed [`Reference`]: the registry is lowercase and never empty (Docker Hub
//! is `docker.io`, with `library/` added to single-component names); the repository is
//! lowercase path components in Docker's grammar; a tag, if any, matches
//! `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; a digest, if any, is `sha256:` and 64 lowercase hex
//! digits; at least one of tag and digest is present (`latest` when neither was written).

use std::fmt;
use std::str::FromStr;

/// Docker Hub's registry name, as Docker normalises it.
pub const DOCKER_HUB: &str = "docker.io";

/// The tag Docker uses when a reference has neither tag nor digest.
const DEFAULT_TAG: &str = "latest";

/// Longest name (registry and path) Docker accepts.
const MAX_NAME_LEN: usize = 255;

/// Longest tag the distribution spec allows.
const MAX_TAG_LEN: usize = 128;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// Why a reference was refused. Each message names the part that is wrong and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Nothing before the tag or digest.
    #[error("image reference {reference:?} names no repository")]
    Empty {
        /// The reference as given.
        reference: String,
    },
    /// Whitespace or control characters anywhere.
    #[error("image reference {reference:?} contains whitespace or control characters")]
    Whitespace {
        /// The reference as given.
        reference: String,
    },
    /// `a//b`, a leading or a trailing `/`.
    #[error("image reference {reference:?} has an empty path component (a leading, trailing or doubled '/')")]
    EmptyComponent {
        /// The reference as given.
        reference: String,
    },
    /// Repository paths are lowercase.
    #[error("image reference {reference:?}: repository names must be lowercase, {component:?} has uppercase letters")]
    Uppercase {
        /// The reference as given.
        reference: String,
        /// The offending path component.
        component: String,
    },
    /// A path component outside Docker's grammar.
    #[error("image reference {reference:?}: path component {component:?} is not lowercase letters and digits separated by '.', '_', '__' or '-'")]
    BadComponent {
        /// The reference as given.
        reference: String,
        /// The offending path component.
        component: String,
    },
    /// The registry part is not `host[:port]`.
    #[error("image reference {reference:?}: registry {registry:?} is not a host name or IP address with an optional :port")]
    BadRegistry {
        /// The reference as given.
        reference: String,
        /// The registry part.
        registry: String,
    },
    /// The tag breaks `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error("image reference {reference:?}: tag {tag:?} must be 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'")]
    BadTag {
        /// The reference as given.
        reference: String,
        /// The tag part.
        tag: String,
    },
    /// The digest is not `sha256:` with 64 lowercase hex digits.
    #[error("image reference {reference:?}: digest {digest:?} is not sha256: followed by 64 lowercase hex digits")]
    BadDigest {
        /// The reference as given.
        reference: String,
        /// The digest part.
        digest: String,
    },
    /// Registry and path together are longer than Docker allows.
    #[error(
        "image reference {reference:?}: the name is {len} characters long, at most 255 are allowed"
    )]
    TooLong {
        /// The reference as given.
        reference: String,
        /// Length of the name.
        len: usize,
    },
}

impl Reference {
    /// Parses a Docker-style reference and normalises it (Docker Hub, `library/`, `latest`).
    pub fn parse(reference: &str) -> Result<Reference, ReferenceError> {
        let given = || reference.to_owned();
        if reference.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ReferenceError::Whitespace { reference: given() });
        }
        let (name, digest) = match reference.split_once('@') {
            Some((name, digest)) => {
                if !is_sha256_digest(digest) {
                    return Err(ReferenceError::BadDigest {
                        reference: given(),
                        digest: digest.to_owned(),
                    });
                }
                (name, Some(digest.to_owned()))
            }
            None => (reference, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a registry's port.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].find(':') {
            Some(i) => {
                let tag = &name[last_slash + i + 1..];
                if !is_tag(tag) {
                    return Err(ReferenceError::BadTag { reference: given(), tag: tag.to_owned() });
                }
                (&name[..last_slash + i], Some(tag.to_owned()))
            }
            None => (name, None),
        };
        if name.is_empty() {
            return Err(ReferenceError::Empty { reference: given() });
        }
        if name.len() > MAX_NAME_LEN {
            return Err(ReferenceError::TooLong { reference: given(), len: name.len() });
        }
        let (registry, path) = split_registry(name);
        if let Some(registry) = registry {
            if !is_registry(registry) {
                return Err(ReferenceError::BadRegistry {
                    reference: given(),
                    registry: registry.to_owned(),
                });
            }
        }
        for component in path.split('/') {
            check_component(reference, component)?;
        }
        let registry = match registry.map(str::to_ascii_lowercase) {
            None => DOCKER_HUB.to_owned(),
            Some(r) if r == "index.docker.io" => DOCKER_HUB.to_owned(),
            Some(r) => r,
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (tag, _) => tag,
        };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// The registry host (and port), e.g. `127.0.0.1:5000`; `docker.io` for Docker Hub.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path on the registry, e.g. `demo/app` or `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if the reference has one (`latest` if it had neither tag nor digest).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// What to ask the registry for: the digest if pinned, else the tag.
    pub(crate) fn manifest_reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or(DEFAULT_TAG)
    }

    /// The name as Docker shows it, e.g. `busybox`, `robots/lidar`, `127.0.0.1:5000/demo/app`.
    ///
    /// This is the repository Docker lists in an image's `RepoDigests`, so an image pulled by
    /// `familiar_name@digest` is found again under that name.
    pub fn familiar_name(&self) -> String {
        if self.registry == DOCKER_HUB {
            match self.repository.strip_prefix("library/") {
                Some(official) if !official.contains('/') => official.to_owned(),
                _ => self.repository.clone(),
            }
        } else {
            format!("{}/{}", self.registry, self.repository)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, ReferenceError> {
        Reference::parse(s)
    }
}

/// Docker's rule: the first of several components is a registry when it contains a `.` or a
/// `:`, or is `localhost`.
fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn check_component(reference: &str, component: &str) -> Result<(), ReferenceError> {
    if component.is_empty() {
        return Err(ReferenceError::EmptyComponent { reference: reference.to_owned() });
    }
    if component.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::Uppercase {
            reference: reference.to_owned(),
            component: component.to_owned(),
        });
    }
    if !is_component(component) {
        return Err(ReferenceError::BadComponent {
            reference: reference.to_owned(),
            component: component.to_owned(),
        });
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_component(component: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    // Both ends alphanumeric; splitting on alphanumerics then leaves the separator runs (and
    // empty strings between adjacent alphanumerics).
    let (Some(first), Some(last)) = (component.chars().next(), component.chars().last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    component.split(alnum).all(|sep| {
        sep.is_empty() || sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')
    })
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
pub(crate) fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_TAG_LEN
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// `sha256:` and 64 lowercase hex digits.
pub(crate) fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `host[:port]`, the host a DNS name, an IPv4 address or a bracketed IPv6 address.
fn is_registry(registry: &str) -> bool {
    let (host, port) = split_port(registry);
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.split('.').all(|label| {
                    let b = label.as_bytes();
                    !b.is_empty()
                        && b[0].is_ascii_alphanumeric()
                        && b[b.len() - 1].is_ascii_alphanumeric()
                        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
                })
        }
    };
    port_ok && host_ok
}

/// Splits `host:port`, `[v6]:port`, `host` or `[v6]` into host and optional port.
pub(crate) fn split_port(registry: &str) -> (&str, Option<&str>) {
    if registry.starts_with('[') {
        return match registry.find(']') {
            Some(end) => match registry[end + 1..].strip_prefix(':') {
                Some(port) => (&registry[..=end], Some(port)),
                None => (registry, None),
            },
            None => (registry, None),
        };
    }
    match registry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        (
            r.registry().to_owned(),
            r.repository().to_owned(),
            r.tag().map(str::to_owned),
            r.digest().map(str::to_owned),
        )
    }

    fn ok(
        registry: &str,
        repo: &str,
        tag: Option<&str>,
        digest: Option<&str>,
    ) -> (String, String, Option<String>, Option<String>) {
        (registry.into(), repo.into(), tag.map(Into::into), digest.map(Into::into))
    }

    const D: &str = "sha256:3b7e76d378afc83baae470dc671f3c57f27181ce544d6053f4df6153072cf6ef";

    #[test]
    fn references_are_normalised_like_docker_does() {
        let at = format!("busybox@{D}");
        let tagged_at = format!("127.0.0.1:5000/fleet-test/web:1@{D}");
        let cases = [
            ("busybox", ok("docker.io", "library/busybox", Some("latest"), None)),
            ("busybox:1.36", ok("docker.io", "library/busybox", Some("1.36"), None)),
            (at.as_str(), ok("docker.io", "library/busybox", None, Some(D))),
            ("robots/lidar", ok("docker.io", "robots/lidar", Some("latest"), None)),
            ("docker.io/busybox", ok("docker.io", "library/busybox", Some("latest"), None)),
            ("docker.io/library/busybox:1", ok("docker.io", "library/busybox", Some("1"), None)),
            ("index.docker.io/robots/lidar:2", ok("docker.io", "robots/lidar", Some("2"), None)),
            ("127.0.0.1:5000/demo/app:1.4", ok("127.0.0.1:5000", "demo/app", Some("1.4"), None)),
            (tagged_at.as_str(), ok("127.0.0.1:5000", "fleet-test/web", Some("1"), Some(D))),
            ("localhost/app", ok("localhost", "app", Some("latest"), None)),
            ("localhost:5000/a/b/c:v1", ok("localhost:5000", "a/b/c", Some("v1"), None)),
            (
                "registry.example.com/robots/lidar",
                ok("registry.example.com", "robots/lidar", Some("latest"), None),
            ),
            ("Registry.Example.COM/x", ok("registry.example.com", "x", Some("latest"), None)),
            ("[::1]:5000/app:2", ok("[::1]:5000", "app", Some("2"), None)),
            ("ghcr.io/org/app:1.0.0-rc.1_b", ok("ghcr.io", "org/app", Some("1.0.0-rc.1_b"), None)),
            ("a/b__c/d--e/f.g:_T", ok("docker.io", "a/b__c/d--e/f.g", Some("_T"), None)),
            // Not a registry: no '.', ':' or localhost in the first component.
            ("myhost/app", ok("docker.io", "myhost/app", Some("latest"), None)),
            // A lone name with a colon is a tag, not a port.
            ("localhost:5000", ok("docker.io", "library/localhost", Some("5000"), None)),
        ];
        for (input, expected) in cases {
            assert_eq!(parts(input), expected, "{input}");
        }
    }

    #[test]
    fn bad_references_are_refused_with_what_is_wrong() {
        use ReferenceError as E;
        type IsExpected = fn(&E) -> bool;
        let long_tag = format!("app:{}", "t".repeat(129));
        let long_name = "a/".repeat(128) + "b";
        let cases: Vec<(&str, IsExpected, &str)> = vec![
            ("", |e| matches!(e, E::Empty { .. }), "names no repository"),
            (":1", |e| matches!(e, E::Empty { .. }), "names no repository"),
            (
                "Busybox",
                |e| matches!(e, E::Uppercase { component, .. } if component == "Busybox"),
                "must be lowercase",
            ),
            (
                "127.0.0.1:5000/Demo/app",
                |e| matches!(e, E::Uppercase { .. }),
                "\"Demo\" has uppercase",
            ),
            ("demo//app", |e| matches!(e, E::EmptyComponent { .. }), "empty path component"),
            ("/app", |e| matches!(e, E::EmptyComponent { .. }), "empty path component"),
            ("demo/app/", |e| matches!(e, E::EmptyComponent { .. }), "empty path component"),
            ("127.0.0.1:5000/", |e| matches!(e, E::EmptyComponent { .. }), "empty path component"),
            ("demo/-app", |e| matches!(e, E::BadComponent { .. }), "\"-app\""),
            ("demo/app.", |e| matches!(e, E::BadComponent { .. }), "separated by"),
            ("demo/a..b", |e| matches!(e, E::BadComponent { .. }), "separated by"),
            ("demo/a___b", |e| matches!(e, E::BadComponent { .. }), "separated by"),
            ("demo/a._b", |e| matches!(e, E::BadComponent { .. }), "separated by"),
            ("demo/a+b", |e| matches!(e, E::BadComponent { .. }), "separated by"),
            ("app:", |e| matches!(e, E::BadTag { .. }), "tag \"\""),
            ("app:.1", |e| matches!(e, E::BadTag { .. }), "not starting with"),
            ("app:-1", |e| matches!(e, E::BadTag { .. }), "not starting with"),
            ("app:a+b", |e| matches!(e, E::BadTag { .. }), "tag \"a+b\""),
            (long_tag.as_str(), |e| matches!(e, E::BadTag { .. }), "1 to 128"),
            ("app@sha256:abc", |e| matches!(e, E::BadDigest { .. }), "64 lowercase hex"),
            ("app@sha512:abc", |e| matches!(e, E::BadDigest { .. }), "sha256:"),
            ("app@", |e| matches!(e, E::BadDigest { .. }), "digest \"\""),
            (
                "app@sha256:3B7E76D378AFC83BAAE470DC671F3C57F27181CE544D6053F4DF6153072CF6EF",
                |e| matches!(e, E::BadDigest { .. }),
                "lowercase hex",
            ),
            ("app@@sha256:x", |e| matches!(e, E::BadDigest { .. }), "digest"),
            (
                "bad_host.com:5000/app",
                |e| matches!(e, E::BadRegistry { .. }),
                "registry \"bad_host.com:5000\"",
            ),
            ("host.com:50a/app", |e| matches!(e, E::BadRegistry { .. }), "optional :port"),
            ("host.com:/app", |e| matches!(e, E::BadRegistry { .. }), "registry"),
            ("-host.com/app", |e| matches!(e, E::BadRegistry { .. }), "registry"),
            ("[::g]:5000/app", |e| matches!(e, E::BadRegistry { .. }), "registry"),
            ("demo/my app", |e| matches!(e, E::Whitespace { .. }), "whitespace"),
            ("demo/app\n", |e| matches!(e, E::Whitespace { .. }), "whitespace"),
            (long_name.as_str(), |e| matches!(e, E::TooLong { len: 257, .. }), "at most 255"),
        ];
        for (input, is_expected, words) in cases {
            let err = Reference::parse(input).expect_err(input);
            assert!(is_expected(&err), "{input:?} gave {err:?}");
            assert!(err.to_string().contains(words), "{input:?}: {err} should say {words:?}");
        }
    }

    #[test]
    fn familiar_names_are_what_docker_lists_in_repo_digests() {
        let name = |s: &str| Reference::parse(s).unwrap().familiar_name();
        assert_eq!(name("busybox:1"), "busybox");
        assert_eq!(name("docker.io/library/busybox"), "busybox");
        assert_eq!(name("docker.io/library/a/b"), "library/a/b");
        assert_eq!(name("robots/lidar"), "robots/lidar");
        assert_eq!(name("127.0.0.1:5000/fleet-test/web:1"), "127.0.0.1:5000/fleet-test/web");
    }

    #[test]
    fn display_is_the_fully_qualified_reference_and_parses_back() {
        for s in [
            "busybox",
            "robots/lidar:2",
            "127.0.0.1:5000/demo/app:1.4",
            &format!("x.io/a:b@{D}"),
            &format!("a@{D}"),
        ] {
            let r = Reference::parse(s).unwrap();
            assert_eq!(Reference::parse(&r.to_string()).unwrap(), r, "{s} -> {r}");
        }
        assert_eq!(
            Reference::parse("busybox").unwrap().to_string(),
            "docker.io/library/busybox:latest"
        );
        let pinned: Reference = format!("x.io/a@{D}").parse().unwrap();
        assert_eq!(pinned.manifest_reference(), D, "a digest wins over the tag");
        assert_eq!(Reference::parse("x.io/a:7").unwrap().manifest_reference(), "7");
    }

    #[test]
    fn ports_split_off_hosts_and_bracketed_ipv6_addresses() {
        assert_eq!(split_port("127.0.0.1:5000"), ("127.0.0.1", Some("5000")));
        assert_eq!(split_port("[::1]:5000"), ("[::1]", Some("5000")));
        assert_eq!(split_port("[::1]"), ("[::1]", None));
        assert_eq!(split_port("example.com"), ("example.com", None));
    }
}
