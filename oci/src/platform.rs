//! Platforms: which image of an index a device runs, and what a resolved image offers.
//!
//! One matching rule serves both sides, so the server predicts what the agent pulls: the
//! architecture must match (on Linux), an exact variant is preferred, any variant of the
//! architecture is taken otherwise (`arm64` images are often labelled `v8`, or not at all).

use fleet_proto::ImageRef;
use serde::{Deserialize, Serialize};

/// The OCI platform of a device, e.g. `linux/arm64`, `linux/arm/v7`.
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
        Platform::for_rust_arch(std::env::consts::ARCH)
    }

    /// The OCI platform for a Rust architecture name (`std::env::consts::ARCH`, which devices
    /// report): `x86_64` is `amd64`, `aarch64` is `arm64`, `arm` is `arm/v7` (the armv7 build).
    pub fn for_rust_arch(arch: &str) -> Platform {
        let (architecture, variant) = match arch {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            other => (other, None),
        };
        Platform { architecture: architecture.to_owned(), variant: variant.map(str::to_owned) }
    }

    /// How well an image for `os/architecture/variant` fits: `None` not at all, `Some(0)` an
    /// exact match, `Some(1)` the right architecture with another variant.
    pub(crate) fn fit(&self, os: &str, architecture: &str, variant: Option<&str>) -> Option<u8> {
        (os == "linux" && architecture == self.architecture)
            .then(|| u8::from(variant != self.variant.as_deref()))
    }
}

impl std::fmt::Display for Platform {
    /// `linux/arm64`, `linux/arm/v7`: how Docker and OCI tools write a platform.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "linux/{}", self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

impl std::str::FromStr for Platform {
    type Err = String;

    /// `linux/arm64`, `linux/arm/v7`, `linux/amd64` (the `linux/` may be left out).
    fn from_str(text: &str) -> Result<Platform, String> {
        let rest = text.strip_prefix("linux/").unwrap_or(text);
        let mut parts = rest.split('/');
        let architecture = parts.next().filter(|a| !a.is_empty());
        let variant = parts.next();
        let known = matches!(
            (architecture, variant),
            (Some("amd64" | "arm64" | "386"), None)
                | (Some("arm64"), Some("v8"))
                | (Some("arm"), Some("v7"))
        );
        if parts.next().is_some() || !known {
            return Err(format!(
                "platform {text:?}: give linux/amd64, linux/arm64 or linux/arm/v7"
            ));
        }
        let architecture = architecture.unwrap_or_default().to_owned();
        // `arm64/v8` is how some tools write plain arm64.
        let variant = variant.filter(|v| *v != "v8").map(str::to_owned);
        Ok(Platform { architecture, variant })
    }
}

/// An image resolved to a content digest, with what each of its platforms downloads.
///
/// Stored with a release: devices pull `image` (by digest), each its own platform from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedImage {
    /// `repository@digest` as Docker names it (the tag kept for display). For a multi-platform
    /// image this is the index's digest, so every device pulls its own platform.
    pub image: ImageRef,
    /// The media type of the manifest `image` names (an index or an image manifest).
    pub media_type: String,
    /// Its platform images, attestations and other artifacts left out.
    pub platforms: Vec<PlatformImage>,
}

/// One platform's image within a resolved image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformImage {
    /// `linux`, as a rule.
    pub os: String,
    /// OCI architecture: `amd64`, `arm64`, `arm`, ...
    pub architecture: String,
    /// OCI variant (`v7`, `v8`), if the image names one.
    pub variant: Option<String>,
    /// Digest of this platform's image manifest.
    pub digest: String,
    /// Bytes a pull downloads: the configuration and the compressed layers.
    pub download_bytes: u64,
}

impl ResolvedImage {
    /// The image a device of Rust architecture `arch_rust_name` (`x86_64`, `aarch64`, `arm`)
    /// would run, if the image has one for it.
    pub fn platform_for(&self, arch_rust_name: &str) -> Option<&PlatformImage> {
        let wanted = Platform::for_rust_arch(arch_rust_name);
        best_fit(&self.platforms, &wanted, |p| (&p.os, &p.architecture, p.variant.as_deref()))
    }
}

/// The best fitting item for `platform`: an exact match first, else the first of the right
/// architecture.
pub(crate) fn best_fit<'a, T>(
    items: &'a [T],
    platform: &Platform,
    of: impl Fn(&'a T) -> (&'a str, &'a str, Option<&'a str>),
) -> Option<&'a T> {
    items
        .iter()
        .filter_map(|item| {
            let (os, arch, variant) = of(item);
            platform.fit(os, arch, variant).map(|fit| (fit, item))
        })
        // min_by_key keeps the first of equals: the index's order breaks ties.
        .min_by_key(|&(fit, _)| fit)
        .map(|(_, item)| item)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(os: &str, arch: &str, variant: Option<&str>, digest: &str) -> PlatformImage {
        PlatformImage {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
            digest: digest.into(),
            download_bytes: 1,
        }
    }

    fn resolved(platforms: Vec<PlatformImage>) -> ResolvedImage {
        let image = ImageRef::parse(&format!("demo/app:1@sha256:{}", "a".repeat(64))).unwrap();
        ResolvedImage { image, media_type: crate::OCI_INDEX.into(), platforms }
    }

    #[test]
    fn rust_architecture_names_map_to_oci_platforms() {
        let p = |a: &str| {
            let p = Platform::for_rust_arch(a);
            (p.architecture, p.variant)
        };
        assert_eq!(p("x86_64"), ("amd64".into(), None));
        assert_eq!(p("aarch64"), ("arm64".into(), None));
        assert_eq!(p("arm"), ("arm".into(), Some("v7".into())));
        assert_eq!(p("x86"), ("386".into(), None));
        assert_eq!(p("riscv64"), ("riscv64".into(), None));
    }

    #[test]
    fn a_device_gets_its_architecture_preferring_the_exact_variant() {
        let r = resolved(vec![
            image("linux", "amd64", None, "amd"),
            image("windows", "arm64", None, "win"),
            image("linux", "arm", Some("v6"), "v6"),
            image("linux", "arm", Some("v7"), "v7"),
            image("linux", "arm64", Some("v8"), "arm64"),
        ]);
        let digest = |arch: &str| r.platform_for(arch).map(|p| p.digest.as_str());
        assert_eq!(digest("x86_64"), Some("amd"));
        assert_eq!(digest("arm"), Some("v7"));
        assert_eq!(digest("aarch64"), Some("arm64"), "v8 is the only arm64 variant; not windows");
        assert_eq!(digest("riscv64"), None);
        let only_v6 = resolved(vec![image("linux", "arm", Some("v6"), "v6")]);
        assert_eq!(only_v6.platform_for("arm").map(|p| p.digest.as_str()), Some("v6"));
    }

    #[test]
    fn a_resolved_image_round_trips_through_json() {
        let r = resolved(vec![image("linux", "arm", Some("v7"), "sha256:b")]);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<ResolvedImage>(&json).unwrap(), r);
    }
}
