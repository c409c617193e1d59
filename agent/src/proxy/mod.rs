//! The data plane of start-first services: their host ports are held by a small process of
//! their own, `fleet-agent proxy`, not by the agent's daemon, so they keep accepting and
//! serving connections while the agent is stopped, killed, restarting or replaced by another
//! version. The daemon only tells it where each port goes, over a root-only control socket.
//!
//! Why a process and not kernel forwarding (nftables/iptables DNAT to the container):
//! * Docker's own FORWARD rules drop new connections to a container port it did not publish,
//!   and a verdict in Docker's chains cannot be overruled from another table; forwarding
//!   outside clients would mean editing Docker's chains (`DOCKER-USER`), which Docker, Podman
//!   and firewalld each own differently, and which change between engine versions.
//! * Loopback clients (the common case on a robot: a local UI or bridge) need
//!   `route_localnet=1` and masquerading to be DNATed, which turns off a kernel protection for
//!   the whole host.
//! * Draining needs to know which connections still run on the old container; the process
//!   counts them exactly ([`ports::PortProxy::drain`]), conntrack would need netlink code.
//! * It works the same for every engine (Podman too) and for IPv6 listeners.
//!
//! The price is a copy through user space, measured against a direct connection in
//! BENCHMARKS.md ("Data plane"), and one more small process.
//!
//! Lifecycle:
//! * Under systemd the proxy is its own unit (`fleet-agent-proxy.service`), so stopping or
//!   restarting `fleet-agent.service` never touches it. Without systemd the daemon starts it
//!   when it first needs it, in a process group of its own, and it outlives the daemon.
//! * At most one proxy serves a data directory (`proxy.lock`, flock). It writes its table to
//!   `proxy-routes.json` after every change and restores it when it starts, so a proxy that
//!   crashes and is restarted serves again without the daemon.
//! * A restarted daemon reads the table from the proxy and plans against it: routes in force
//!   are adopted, never bound twice; routes of services no longer wanted are closed.
//! * The proxy exits when its socket is removed or replaced (data directory deleted, another
//!   proxy took over), so nothing lingers after an uninstall or a test.
//!
//! Files: `ports` the listeners and forwarding; `control` the control protocol, its server and
//! the daemon's client; `process` the `fleet-agent proxy` process.

pub mod control;
pub mod ports;
pub mod process;

pub use control::{ProxyClient, ProxyError, ProxyStatus, StartWith};
pub use ports::{PortProxy, SwitchError};
