//! Which registries the server may reach, and which addresses it may connect to. A Compose file
//! names its registries, so without this an operator token could make the server send requests
//! to addresses inside its own network (SSRF), a cloud's metadata service included.
//!
//! The rules, decided here without I/O and applied by [`RegistryClient::guarded`]:
//! 1. When the configuration lists allowed registries, an image may name only those
//!    ([`Allowlist::check_registry`]). When it lists none, any registry may be named.
//! 2. Every connection, whether to the registry, its token service or wherever a redirect
//!    points, goes to public addresses only ([`non_public`]), unless its host is listed. A
//!    listed host is trusted with whatever it resolves to ([`Allowlist::check_connection`]).
//! 3. A name is resolved once and every address it resolves to is checked. The connection then
//!    goes to those checked addresses (the client's resolver hands the connector only them), so
//!    a name that answers one address to the check and another to the connection (DNS
//!    rebinding) gains nothing.
//!
//! A host is `host[:port]` as an image reference writes it. Hosts are compared exactly, letters
//! in any case: `localhost:5000` does not allow `localhost:5001` or `127.0.0.1:5000`.
//!
//! [`RegistryClient::guarded`]: crate::RegistryClient::guarded

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::reference::{split_port, Reference, DOCKER_HUB};

/// Why an address is not a public one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    /// `0.0.0.0/8`, `::` (Linux connects `0.0.0.0` to this machine).
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918 (`10/8`, `172.16/12`, `192.168/16`) and IPv6 site-local.
    Private,
    /// `100.64.0.0/10`, a carrier's or a cloud's internal network.
    SharedNat,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// `fc00::/7`.
    UniqueLocal,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// A cloud's instance metadata or host service (`169.254.169.254`, `168.63.129.16`, …).
    Metadata,
    /// Documentation, benchmarking and other reserved ranges, broadcast included.
    Reserved,
}

impl fmt::Display for AddressKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressKind::Unspecified => "unspecified",
            AddressKind::Loopback => "loopback",
            AddressKind::Private => "private",
            AddressKind::SharedNat => "shared (carrier-grade NAT)",
            AddressKind::LinkLocal => "link-local",
            AddressKind::UniqueLocal => "unique-local",
            AddressKind::Multicast => "multicast",
            AddressKind::Metadata => "cloud metadata",
            AddressKind::Reserved => "reserved",
        })
    }
}

/// Cloud metadata and host services: AWS, GCP, Azure, OpenStack and Oracle (`169.254.169.254`),
/// AWS ECS (`169.254.170.2`), Alibaba (`100.100.100.200`), Azure's WireServer
/// (`168.63.129.16`, which looks public).
const METADATA_V4: [Ipv4Addr; 4] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(168, 63, 129, 16),
];

/// AWS's IPv6 instance metadata, `fd00:ec2::254`.
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// What kind of non-public address `ip` is; `None` for a public one.
pub fn non_public(ip: IpAddr) -> Option<AddressKind> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<AddressKind> {
    if METADATA_V4.contains(&ip) {
        return Some(AddressKind::Metadata);
    }
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => AddressKind::Unspecified,
        (127, _, _) => AddressKind::Loopback,
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => AddressKind::Private,
        (100, 64..=127, _) => AddressKind::SharedNat,
        (169, 254, _) => AddressKind::LinkLocal,
        // Protocol assignments, documentation (three nets), benchmarking.
        (192, 0, 0 | 2) | (198, 51, 100) | (203, 0, 113) | (198, 18..=19, _) => {
            AddressKind::Reserved
        }
        (224..=239, _, _) => AddressKind::Multicast,
        (240..=255, _, _) => AddressKind::Reserved,
        _ => return None,
    })
}

fn v6_kind(ip: Ipv6Addr) -> Option<AddressKind> {
    if ip == METADATA_V6 {
        return Some(AddressKind::Metadata);
    }
    // An IPv4 address inside IPv6 reaches that IPv4 address: judge it as itself.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_kind(v4);
    }
    let s = ip.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64's well-known prefix: the gateway connects to the IPv4 address in the low bits.
        let [.., a, b, c, d] = ip.octets();
        return v4_kind(Ipv4Addr::new(a, b, c, d));
    }
    Some(match s[0] {
        _ if ip.is_unspecified() => AddressKind::Unspecified,
        _ if ip.is_loopback() => AddressKind::Loopback,
        // The rest of ::/96, IPv4-compatible addresses (deprecated).
        _ if s[..6] == [0; 6] => AddressKind::Reserved,
        x if x & 0xfe00 == 0xfc00 => AddressKind::UniqueLocal,
        x if x & 0xffc0 == 0xfe80 => AddressKind::LinkLocal,
        x if x & 0xffc0 == 0xfec0 => AddressKind::Private,
        x if x & 0xff00 == 0xff00 => AddressKind::Multicast,
        // Documentation, and the discard prefix 100::/64.
        0x2001 if s[1] == 0x0db8 => AddressKind::Reserved,
        0x0100 if s[1..4] == [0, 0, 0] => AddressKind::Reserved,
        _ => return None,
    })
}

/// Why the server does not contact a registry or connect to an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The configuration lists allowed registries, and this one is not among them.
    #[error("registry {registry} is not one of the allowed registries ({})", allowed.join(", "))]
    NotAllowed {
        /// The registry the image names.
        registry: String,
        /// The registries that are allowed.
        allowed: Vec<String>,
    },
    /// The host is, or resolves to, an address that is not public, and it is not listed.
    #[error(
        "{host} is a {kind} address ({address}), which only a registry listed as allowed may have"
    )]
    NonPublic {
        /// The host as the request named it (`host[:port]`).
        host: String,
        /// The address it is or resolved to.
        address: IpAddr,
        /// What kind of address that is.
        kind: AddressKind,
    },
}

/// A configured allowed registry that is not a registry host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} is not a registry host: write host[:port] as an image reference names it, e.g. registry.example.com or localhost:5000 (no scheme, no path; a name without '.' or ':' is a Docker Hub namespace)")]
pub struct BadHost {
    /// The entry as configured.
    pub entry: String,
}

/// The registries a configuration lists, lowercase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    /// Listed as allowed: when any are, images may name only these.
    allowed: Vec<String>,
    /// Named elsewhere in the configuration (the agents' repository): trusted with any address
    /// like a listed host, without confining images to them.
    trusted: Vec<String>,
}

impl Allowlist {
    /// The list `entries` (each `host[:port]`); an empty one allows any registry with a public
    /// address.
    pub fn new<S: AsRef<str>>(entries: &[S]) -> Result<Allowlist, BadHost> {
        let allowed =
            entries.iter().map(|e| registry_host(e.as_ref())).collect::<Result<_, _>>()?;
        Ok(Allowlist { allowed, trusted: Vec::new() })
    }

    /// This list, trusting `host` too: the server reaches it whatever its address, but images
    /// are not confined to it.
    pub fn trusting(mut self, host: &str) -> Allowlist {
        self.trusted.push(host.to_ascii_lowercase());
        self
    }

    /// The registries listed as allowed (empty: any).
    pub fn allowed(&self) -> &[String] {
        &self.allowed
    }

    /// Whether `host` (`host[:port]`) is listed or trusted.
    pub fn lists(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.allowed.iter().chain(&self.trusted).any(|h| *h == host)
    }

    /// Whether an image may name `registry` (as [`Reference::registry`] gives it). A registry
    /// written as a non-public address, or as `localhost`, is refused here already unless it is
    /// listed; a name is judged by its addresses when the client connects.
    pub fn check_registry(&self, registry: &str) -> Result<(), Refusal> {
        if self.lists(registry) {
            return Ok(());
        }
        if !self.allowed.is_empty() {
            return Err(Refusal::NotAllowed {
                registry: registry.to_owned(),
                allowed: self.allowed.clone(),
            });
        }
        let (host, _) = split_port(registry);
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let address = if host == "localhost" || host.ends_with(".localhost") {
            // RFC 6761: these names are this machine.
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        } else {
            host.parse::<IpAddr>().ok()
        };
        match address.and_then(|a| non_public(a).map(|kind| (a, kind))) {
            Some((address, kind)) => {
                Err(Refusal::NonPublic { host: registry.to_owned(), address, kind })
            }
            None => Ok(()),
        }
    }

    /// Whether the client may connect to `host` (`host[:port]`), which resolved to
    /// `addresses`: every one of them must be public, unless the host is listed.
    pub fn check_connection(&self, host: &str, addresses: &[IpAddr]) -> Result<(), Refusal> {
        if self.lists(host) {
            return Ok(());
        }
        for &address in addresses {
            if let Some(kind) = non_public(address) {
                return Err(Refusal::NonPublic { host: host.to_owned(), address, kind });
            }
        }
        Ok(())
    }
}

/// `entry` as an image reference's registry, lowercase: `host[:port]` that Docker reads as a
/// registry (a `.` or `:` in it, or `localhost`). `index.docker.io` is `docker.io`.
fn registry_host(entry: &str) -> Result<String, BadHost> {
    let bad = || BadHost { entry: entry.to_owned() };
    let reference = Reference::parse(&format!("{entry}/x")).map_err(|_| bad())?;
    let lower = entry.to_ascii_lowercase();
    if reference.registry() == lower
        || (reference.registry() == DOCKER_HUB && lower == "index.docker.io")
    {
        Ok(reference.registry().to_owned())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(ip: &str) -> Option<AddressKind> {
        non_public(ip.parse().unwrap())
    }

    #[test]
    fn addresses_inside_networks_and_clouds_are_not_public() {
        use AddressKind::*;
        for (ip, expected) in [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("100.64.0.1", SharedNat),
            ("169.254.1.1", LinkLocal),
            ("169.254.169.254", Metadata),
            ("169.254.170.2", Metadata),
            ("100.100.100.200", Metadata),
            ("168.63.129.16", Metadata),
            ("224.0.0.1", Multicast),
            ("255.255.255.255", Reserved),
            ("192.0.2.7", Reserved),
            ("198.18.0.1", Reserved),
            ("::", Unspecified),
            ("::1", Loopback),
            ("fe80::1", LinkLocal),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("fd00:ec2::254", Metadata),
            ("fec0::1", Private),
            ("ff02::1", Multicast),
            ("2001:db8::1", Reserved),
            ("::127.0.0.1", Reserved),
        ] {
            assert_eq!(kind(ip), Some(expected), "{ip}");
        }
    }

    #[test]
    fn ipv4_inside_ipv6_is_judged_as_the_ipv4_address_it_reaches() {
        assert_eq!(kind("::ffff:127.0.0.1"), Some(AddressKind::Loopback));
        assert_eq!(kind("::ffff:169.254.169.254"), Some(AddressKind::Metadata));
        assert_eq!(kind("64:ff9b::10.0.0.1"), Some(AddressKind::Private));
        assert_eq!(kind("::ffff:93.184.216.34"), None);
        assert_eq!(kind("64:ff9b::93.184.216.34"), None);
    }

    #[test]
    fn public_addresses_are_public() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.0.1",
            "192.0.1.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
        ] {
            assert_eq!(kind(ip), None, "{ip}");
        }
    }

    #[test]
    fn listed_hosts_match_exactly_with_letters_in_any_case() {
        let list =
            Allowlist::new(&["Registry.Example.com", "localhost:5000", "[::1]:5000"]).unwrap();
        assert_eq!(list.allowed(), ["registry.example.com", "localhost:5000", "[::1]:5000"]);
        assert!(list.lists("registry.example.com"));
        assert!(list.lists("REGISTRY.example.COM"));
        assert!(list.lists("localhost:5000"));
        assert!(list.lists("[::1]:5000"));
        assert!(!list.lists("localhost:5001"), "another port is another registry");
        assert!(!list.lists("localhost"));
        assert!(!list.lists("127.0.0.1:5000"), "another name for it is not listed");
        assert!(!list.lists("registry.example.com:443"));
        assert!(!list.lists("evil-registry.example.com"));
        assert!(!list.lists("registry.example.com.evil.example"));
    }

    #[test]
    fn entries_that_are_not_registry_hosts_are_refused() {
        for bad in [
            "https://registry.example.com",
            "registry.example.com/path",
            "myregistry",
            "",
            "host:port",
            "a b.example",
            "docker.io/library",
        ] {
            let err = Allowlist::new(&[bad]).unwrap_err();
            assert_eq!(err.entry, bad);
            assert!(err.to_string().contains("host[:port]"), "{err}");
        }
        let hub = Allowlist::new(&["index.docker.io", "Docker.IO"]).unwrap();
        assert_eq!(hub.allowed(), ["docker.io", "docker.io"], "Docker's own spelling");
    }

    #[test]
    fn a_list_confines_images_to_its_registries() {
        let list = Allowlist::new(&["registry.example.com", "127.0.0.1:5000"]).unwrap();
        assert_eq!(list.check_registry("registry.example.com"), Ok(()));
        assert_eq!(list.check_registry("127.0.0.1:5000"), Ok(()), "listed, so loopback is fine");
        assert_eq!(
            list.check_registry("docker.io"),
            Err(Refusal::NotAllowed {
                registry: "docker.io".into(),
                allowed: vec!["registry.example.com".into(), "127.0.0.1:5000".into()],
            })
        );
        let err = list.check_registry("169.254.169.254").unwrap_err();
        assert!(matches!(err, Refusal::NotAllowed { .. }), "{err:?}");
        assert!(err.to_string().contains("registry.example.com, 127.0.0.1:5000"), "{err}");
    }

    #[test]
    fn without_a_list_any_registry_but_a_non_public_address_may_be_named() {
        let any = Allowlist::default();
        assert_eq!(any.check_registry("docker.io"), Ok(()));
        assert_eq!(any.check_registry("registry.example.com:8443"), Ok(()));
        for (registry, address, kind) in [
            ("127.0.0.1:5000", "127.0.0.1", AddressKind::Loopback),
            ("169.254.169.254", "169.254.169.254", AddressKind::Metadata),
            ("10.0.0.7:80", "10.0.0.7", AddressKind::Private),
            ("[::1]:5000", "::1", AddressKind::Loopback),
            ("[fd00:ec2::254]", "fd00:ec2::254", AddressKind::Metadata),
            ("localhost:5000", "127.0.0.1", AddressKind::Loopback),
            ("registry.localhost", "127.0.0.1", AddressKind::Loopback),
        ] {
            assert_eq!(
                any.check_registry(registry),
                Err(Refusal::NonPublic {
                    host: registry.into(),
                    address: address.parse().unwrap(),
                    kind
                }),
                "{registry}"
            );
        }
    }

    #[test]
    fn connections_go_to_public_addresses_only_unless_the_host_is_listed() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let list = Allowlist::new(&["localhost:5000"]).unwrap().trusting("Agents.Internal:443");
        assert_eq!(list.check_connection("localhost:5000", &[ip("127.0.0.1"), ip("::1")]), Ok(()));
        assert_eq!(list.check_connection("agents.internal:443", &[ip("10.0.0.2")]), Ok(()));
        assert_eq!(list.check_connection("auth.example.com", &[ip("93.184.216.34")]), Ok(()));
        // One private address among public ones is enough: the connector may pick any.
        assert_eq!(
            list.check_connection("rebind.example.com", &[ip("93.184.216.34"), ip("10.1.1.1")]),
            Err(Refusal::NonPublic {
                host: "rebind.example.com".into(),
                address: ip("10.1.1.1"),
                kind: AddressKind::Private
            })
        );
        let err = list.check_connection("localhost:6000", &[ip("127.0.0.1")]).unwrap_err();
        assert!(
            err.to_string().contains("localhost:6000 is a loopback address (127.0.0.1)"),
            "{err}"
        );
    }

    #[test]
    fn a_trusted_host_does_not_confine_images_to_it() {
        let list = Allowlist::default().trusting("127.0.0.1:5000");
        assert_eq!(list.check_registry("127.0.0.1:5000"), Ok(()));
        assert_eq!(list.check_registry("docker.io"), Ok(()), "no list: any public registry");
        assert!(list.check_registry("127.0.0.1:5001").is_err());
    }
}
