//! The link to the fleet server: one task owning the MQTT client (rumqttc) over mutual TLS.
//!
//! Invariants:
//! * The daemon never waits on the network. It hands state reports over a `watch` (only the
//!   latest matters, so they coalesce) and events and command results over a bounded channel
//!   with `try_send`: when that is full the message is dropped and counted, never queued
//!   without bound. The link task alone awaits the MQTT event loop.
//! * Incoming `desired` and `cmd` payloads are decoded (envelope, topic, kind) but **not**
//!   verified here: signatures, addressee and freshness are the daemon's decision
//!   ([`crate::accept`]). Desired states coalesce too (a newer one supersedes a queued one);
//!   commands queue in a bounded channel. Malformed payloads are dropped with a warning naming
//!   the topic and the decode error, never the bytes.
//! * Presence: the last will is a retained `Offline` status; every ConnAck publishes a
//!   retained `Online` status and re-subscribes (whatever `session_present` says). A clean
//!   shutdown publishes `Offline` itself before disconnecting.
//! * rumqttc does not back off: after a connection error the task sleeps a uniformly random
//!   delay in `[0, min(max, initial·2^attempt)]` ([`Backoff::jittered`], "full jitter"), so a
//!   fleet that lost its broker does not come back in lock-step. The attempt counter resets on
//!   ConnAck.
//! * Keys and certificate contents never appear in logs or errors; paths do.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::telemetry::{TelemetryAck, TelemetryBatch};
use fleet_proto::{
    topic, CommandResult, DeviceId, Event, Message, Presence, Signed, StateReport, Status,
    TopicKind, TrustedKeys, UnixMillis, MAX_MESSAGE_BYTES,
};
use rumqttc::{AsyncClient, ConnectionError, EventLoop, LastWill, MqttOptions, Packet, QoS};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Mutual TLS (`mqtts://`); plain MQTT only to a loopback host.
    pub tls: bool,
}

impl std::fmt::Display for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl Broker {
    /// Parses `mqtts://host[:port]` or `mqtt://host[:port]` (IPv6 hosts in brackets).
    pub fn parse(url: &str) -> Result<Broker, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(format!("{url:?} is not an mqtts:// or mqtt:// URL"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) =
                v6.split_once(']').ok_or_else(|| format!("{url:?}: unclosed [ in the host"))?;
            (host, after.strip_prefix(':'))
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() || host.contains(['/', '@', '?', '#']) {
            return Err(format!("{url:?}: expected scheme://host:port"));
        }
        let port = match port {
            None => default_port,
            Some(p) => p.parse::<u16>().map_err(|_| format!("{url:?}: bad port {p:?}"))?,
        };
        Ok(Broker { host: host.to_owned(), port, tls })
    }

    /// Whether the host is this machine (`localhost`, `127.0.0.0/8`, `::1`).
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// The checked `[link]` table of the agent's configuration ([`crate::config`] checks it; the
/// link owns the type, as each part of the agent owns its settings).
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// This device's id (client id).
    pub device: DeviceId,
    /// The broker.
    pub broker: Broker,
    /// Fleet CA file (absolute).
    pub ca_file: PathBuf,
    /// Client certificate file (absolute).
    pub cert_file: PathBuf,
    /// Client key file (absolute, mode 0600).
    pub key_file: PathBuf,
    /// Keys trusted for desired state and commands.
    pub server_keys: TrustedKeys,
    /// Its password on the server's embedded broker (the login name is the device id).
    pub password: Option<String>,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// First reconnect backoff window.
    pub backoff_initial: Duration,
    /// Largest reconnect backoff window.
    pub backoff_max: Duration,
    /// How telemetry batches are compressed on the wire (`[telemetry] compression`).
    pub telemetry_compression: fleet_proto::Compression,
}

/// Events and command results the daemon may queue while the link is down.
pub const OUTBOX_CAPACITY: usize = 64;
/// Commands queued towards the daemon.
const COMMAND_QUEUE: usize = 16;
/// Room for MQTT framing (topic, headers) around a maximal payload.
const PACKET_SLACK: usize = 1024;

/// Why the link could not be set up. Names files, never their contents.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A PEM file cannot be read or holds nothing usable.
    #[error("link: {what} {path}: {message}")]
    Pem {
        /// `CA file`, `certificate file` or `key file`.
        what: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the certificate/key combination.
    #[error("link: TLS client configuration")]
    Tls(#[source] rustls::Error),
}

/// Something for the server other than the state report.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// On `events`.
    Event(Event),
    /// On `cmd-result`.
    CommandResult(CommandResult),
    /// On `telemetry`.
    Telemetry(TelemetryBatch),
}

/// A message from the server, decoded but not verified.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// A signed desired state from `desired`.
    Desired(Signed),
    /// A signed command from `cmd`.
    Command(Signed),
}

/// Connection state, for logs, status and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkState {
    /// Connected now (ConnAck received and not lost since).
    pub connected: bool,
    /// ConnAcks received since start.
    pub connects: u64,
    /// Connection errors since start.
    pub failures: u64,
    /// When the last ConnAck arrived.
    pub connected_at: Option<std::time::Instant>,
}

/// The daemon's side of the link.
#[derive(Debug)]
pub struct LinkHandle {
    /// The latest state report; the link publishes it when it changes and after each connect.
    pub reports: watch::Sender<Option<StateReport>>,
    outbox: mpsc::Sender<Outgoing>,
    dropped: Arc<AtomicU64>,
    state: watch::Receiver<LinkState>,
    telemetry_acks: Option<mpsc::Receiver<TelemetryAck>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Desired states and commands from the server, for the daemon's loop.
#[derive(Debug)]
pub struct Inbox {
    desired: watch::Receiver<Option<Signed>>,
    commands: mpsc::Receiver<Signed>,
}

impl Inbox {
    /// The next message; `None` once the link task has ended.
    pub async fn recv(&mut self) -> Option<Inbound> {
        tokio::select! {
            biased;
            changed = self.desired.changed() => match changed {
                Ok(()) => self.desired.borrow_and_update().clone().map(Inbound::Desired),
                Err(_) => self.commands.recv().await.map(Inbound::Command),
            },
            cmd = self.commands.recv() => cmd.map(Inbound::Command),
        }
    }
}

impl LinkHandle {
    /// Queues `msg` without waiting. Returns `false` (and counts a drop) if the queue is full
    /// or the link has stopped.
    pub fn send(&self, msg: Outgoing) -> bool {
        match self.outbox.try_send(msg) {
            Ok(()) => true,
            Err(_) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // A long outage fills the queue for good: log 1, 2, 4, 8, ... drops.
                if n.is_power_of_two() {
                    tracing::warn!(dropped_total = n, "link outbox full; message dropped");
                }
                false
            }
        }
    }

    /// Replaces the state report to publish.
    pub fn report(&self, report: StateReport) {
        self.reports.send_replace(Some(report));
    }

    /// Messages dropped because the outbox was full (or the link had stopped).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Connection state, updated on every change.
    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// The server's telemetry acknowledgements (once: the telemetry task takes them).
    pub fn take_telemetry_acks(&mut self) -> Option<mpsc::Receiver<TelemetryAck>> {
        self.telemetry_acks.take()
    }

    /// A sender into the outbox that does not count drops (the telemetry task resends what
    /// did not fit).
    pub fn outbox(&self) -> mpsc::Sender<Outgoing> {
        self.outbox.clone()
    }

    /// Publishes `Offline`, disconnects cleanly (waiting at most `timeout`) and ends the task.
    pub async fn shutdown(mut self, timeout: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(timeout, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for LinkHandle {
    fn drop(&mut self) {
        // Dropped without shutdown (e.g. a test ends): the connection just goes away, which
        // leaves the last will to the broker.
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Builds the rustls client configuration: the fleet CA as the only root, this device's
/// certificate and key for client authentication, ring as the crypto provider.
pub fn tls_config(cfg: &LinkConfig) -> Result<rustls::ClientConfig, LinkError> {
    let pem_err = |what: &'static str, path: &std::path::Path| {
        let path = path.display().to_string();
        move |e: rustls::pki_types::pem::Error| LinkError::Pem {
            what,
            path,
            message: pem_message(&e),
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&cfg.ca_file)
        .map_err(pem_err("CA file", &cfg.ca_file))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err("CA file", &cfg.ca_file))?;
    let (added, _) = roots.add_parsable_certificates(cas);
    if added == 0 {
        return Err(LinkError::Pem {
            what: "CA file",
            path: cfg.ca_file.display().to_string(),
            message: "no usable certificate in it".to_owned(),
        });
    }
    let chain = CertificateDer::pem_file_iter(&cfg.cert_file)
        .map_err(pem_err("certificate file", &cfg.cert_file))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err("certificate file", &cfg.cert_file))?;
    if chain.is_empty() {
        return Err(LinkError::Pem {
            what: "certificate file",
            path: cfg.cert_file.display().to_string(),
            message: "no certificate in it".to_owned(),
        });
    }
    let key =
        PrivateKeyDer::from_pem_file(&cfg.key_file).map_err(pem_err("key file", &cfg.key_file))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(LinkError::Tls)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(LinkError::Tls)
}

/// A PEM error in words, without any of the file's contents.
fn pem_message(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(io) => io.to_string(),
        E::NoItemsFound => "no PEM item of the expected kind in it".to_owned(),
        E::MissingSectionEnd { .. } | E::IllegalSectionStart { .. } => {
            "malformed PEM section".to_owned()
        }
        E::Base64Decode(_) => "PEM body is not valid base64".to_owned(),
        _ => "malformed PEM".to_owned(),
    }
}

/// MQTT options for `cfg`, with TLS from `tls` when the broker URL is `mqtts://`.
fn mqtt_options(
    cfg: &LinkConfig,
    tls: Option<rustls::ClientConfig>,
    since: UnixMillis,
) -> MqttOptions {
    let mut opts = MqttOptions::new(cfg.device.as_str(), cfg.broker.host.clone(), cfg.broker.port);
    opts.set_keep_alive(cfg.keep_alive);
    if let Some(password) = &cfg.password {
        opts.set_credentials(cfg.device.as_str(), password.as_str());
    }
    // Persistent session: QoS 1 commands sent while the device is away are delivered later.
    opts.set_clean_session(false);
    opts.set_max_packet_size(MAX_MESSAGE_BYTES + PACKET_SLACK, MAX_MESSAGE_BYTES + PACKET_SLACK);
    let will = status(&cfg.device, Presence::Offline, since);
    opts.set_last_will(LastWill::new(
        topic(&cfg.device, TopicKind::Status),
        Message::Status(will).encode(),
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(tls) = tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    }
    opts
}

fn status(device: &DeviceId, presence: Presence, since: UnixMillis) -> Status {
    Status {
        device: device.clone(),
        presence,
        agent_version: crate::AGENT_VERSION.to_owned(),
        since,
    }
}

/// The link; see the module documentation.
#[derive(Debug)]
pub struct Link;

impl Link {
    /// Builds the TLS configuration (refusing unreadable files), then starts the link task on
    /// the current tokio runtime. Connecting happens in the background.
    pub fn start(cfg: &LinkConfig) -> Result<(LinkHandle, Inbox), LinkError> {
        let tls = if cfg.broker.tls { Some(tls_config(cfg)?) } else { None };
        let since = UnixMillis::now();
        // The request channel (the `cap` here, not the option of the same name) holds what the
        // task try_publishes: room for a full outbox drained at shutdown, plus status and
        // subscriptions.
        let (client, mut eventloop) =
            AsyncClient::new(mqtt_options(cfg, tls, since), OUTBOX_CAPACITY + 8);
        // Small TLS records (handshake flights, PUBACKs) go out at once instead of waiting for
        // the peer's delayed ACK. The broker needs the same (Mosquitto `set_tcp_nodelay true`):
        // without it an mTLS connect took ~47 ms instead of ~3.4 ms on loopback.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(10);
        eventloop.set_network_options(network);
        let (reports, reports_rx) = watch::channel(None);
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
        let (desired_tx, desired) = watch::channel(None);
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let (acks_tx, acks_rx) = mpsc::channel(COMMAND_QUEUE * 4);
        let (state_tx, state) = watch::channel(LinkState::default());
        let (stop, stopped) = oneshot::channel();
        let dropped = Arc::new(AtomicU64::new(0));
        let task = LinkTask {
            cfg: cfg.clone(),
            client,
            eventloop,
            reports: reports_rx,
            outbox: outbox_rx,
            desired: desired_tx,
            commands: commands_tx,
            telemetry_acks: acks_tx,
            state: state_tx,
            dropped: dropped.clone(),
            since,
            rng: fastrand::Rng::new(),
            last_report: None,
        };
        let task = tokio::spawn(task.run(stopped));
        Ok((
            LinkHandle {
                reports,
                outbox,
                dropped,
                state,
                telemetry_acks: Some(acks_rx),
                stop: Some(stop),
                task: Some(task),
            },
            Inbox { desired, commands },
        ))
    }
}

struct LinkTask {
    cfg: LinkConfig,
    client: AsyncClient,
    eventloop: EventLoop,
    reports: watch::Receiver<Option<StateReport>>,
    outbox: mpsc::Receiver<Outgoing>,
    desired: watch::Sender<Option<Signed>>,
    commands: mpsc::Sender<Signed>,
    telemetry_acks: mpsc::Sender<TelemetryAck>,
    state: watch::Sender<LinkState>,
    dropped: Arc<AtomicU64>,
    since: UnixMillis,
    rng: fastrand::Rng,
    /// The last report published on this connection (in full), to send only news.
    last_report: Option<StateReport>,
}

impl LinkTask {
    async fn run(mut self, stopped: oneshot::Receiver<()>) {
        tokio::pin!(stopped);
        let mut attempt: u32 = 0;
        loop {
            let connected = self.state.borrow().connected;
            tokio::select! {
                _ = &mut stopped => break,
                event = self.eventloop.poll() => match event {
                    Ok(rumqttc::Event::Incoming(Packet::ConnAck(ack))) => {
                        attempt = 0;
                        self.on_connack(ack.session_present);
                    }
                    Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => self.on_publish(&p.topic, &p.payload),
                    Ok(_) => {}
                    Err(e) => {
                        let delay = Backoff::new(self.cfg.backoff_initial, self.cfg.backoff_max).jittered(attempt, &mut self.rng);
                        attempt = attempt.saturating_add(1);
                        let was = self.state.borrow().connected;
                        self.state.send_modify(|s| {
                            s.connected = false;
                            s.failures += 1;
                        });
                        let reason = describe(&e);
                        if was {
                            tracing::info!(broker = %self.cfg.broker, error = %reason, retry_in_ms = delay.as_millis() as u64, "link lost; reconnecting");
                        } else {
                            tracing::warn!(broker = %self.cfg.broker, error = %reason, attempt, retry_in_ms = delay.as_millis() as u64, "link cannot connect");
                        }
                        tokio::select! {
                            _ = &mut stopped => return,
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                },
                Ok(()) = self.reports.changed(), if connected => self.publish_report(),
                Some(msg) = self.outbox.recv(), if connected => self.publish_outgoing(msg),
            }
        }
        self.goodbye().await;
    }

    fn on_connack(&mut self, session_present: bool) {
        self.state.send_modify(|s| {
            s.connected = true;
            s.connects += 1;
            s.connected_at = Some(std::time::Instant::now());
        });
        tracing::info!(broker = %self.cfg.broker, session_present, "link connected");
        // `since` of the online status is this connection; the will (fixed in CONNECT) keeps
        // the link's start.
        self.since = UnixMillis::now();
        let online = status(&self.cfg.device, Presence::Online, self.since);
        let _ = self.try_publish(TopicKind::Status, Message::Status(online));
        // Re-subscribe on every ConnAck: a broker that lost the session (restart without
        // persistence) would otherwise never send us anything again.
        let filters = [TopicKind::Desired, TopicKind::Cmd, TopicKind::TelemetryAck]
            .map(|k| rumqttc::SubscribeFilter::new(topic(&self.cfg.device, k), QoS::AtLeastOnce));
        if let Err(e) = self.client.try_subscribe_many(filters) {
            tracing::warn!(error = %e, "link cannot queue its subscriptions");
        }
        // The server learns the current state right away, whatever changed while offline: all
        // of it, inventory included, on every new connection.
        self.last_report = None;
        self.reports.mark_changed();
    }

    fn on_publish(&mut self, topic_name: &str, payload: &[u8]) {
        let kind = match fleet_proto::Topic::parse(topic_name) {
            Ok(t) if t.device == self.cfg.device => t.kind,
            _ => {
                tracing::warn!(topic = %topic_name, "message on an unexpected topic dropped");
                return;
            }
        };
        let message = match Message::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(topic = %topic_name, len = payload.len(), error = %e, "undecodable message dropped");
                return;
            }
        };
        if let Err(e) = message.check_topic(&fleet_proto::Topic::new(self.cfg.device.clone(), kind))
        {
            tracing::warn!(topic = %topic_name, error = %e, "message on the wrong topic dropped");
            return;
        }
        match message {
            Message::Desired(signed) => {
                self.desired.send_replace(Some(signed));
            }
            Message::Command(signed) => match self.commands.try_send(signed) {
                Ok(()) => {}
                Err(_) => tracing::warn!(
                    topic = %topic_name,
                    "command queue full; command dropped (the server may send it again)"
                ),
            },
            Message::TelemetryAck(ack) => {
                // A lost ack only means a resend (the server removes the duplicate).
                let _ = self.telemetry_acks.try_send(ack);
            }
            _ => {}
        }
    }

    fn publish_report(&mut self) {
        let report = self.reports.borrow_and_update().clone();
        let Some(report) = report else { return };
        let Some(news) = crate::report::to_publish(&report, self.last_report.as_ref()) else {
            return;
        };
        if self.try_publish(TopicKind::Report, Message::Report(news)) {
            self.last_report = Some(report);
        }
    }

    fn publish_outgoing(&mut self, msg: Outgoing) {
        // A message the client did not take is counted in `dropped`, nothing more to do.
        let _ = match msg {
            Outgoing::Event(e) => self.try_publish(TopicKind::Events, Message::Event(e)),
            Outgoing::CommandResult(r) => {
                self.try_publish(TopicKind::CmdResult, Message::CommandResult(r))
            }
            Outgoing::Telemetry(b) => self.try_publish(TopicKind::Telemetry, Message::Telemetry(b)),
        };
    }

    /// Queues `message`; returns whether the client took it.
    fn try_publish(&mut self, kind: TopicKind, message: Message) -> bool {
        let bytes = message.encode_with(self.cfg.telemetry_compression);
        if let Err(e) = self.client.try_publish(
            topic(&self.cfg.device, kind),
            QoS::AtLeastOnce,
            kind.retained(),
            bytes,
        ) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(topic = %kind, error = %e, dropped_total = n, "link request queue full; message dropped");
            return false;
        }
        true
    }

    /// Clean shutdown: a retained `Offline` (a clean disconnect does not fire the will), then
    /// DISCONNECT, driving the event loop until the broker has them.
    async fn goodbye(mut self) {
        if !self.state.borrow().connected {
            return;
        }
        // What the daemon queued last (a command's result, the final report) goes out first.
        while let Ok(msg) = self.outbox.try_recv() {
            self.publish_outgoing(msg);
        }
        if self.reports.has_changed().unwrap_or(false) {
            self.publish_report();
        }
        let offline = status(&self.cfg.device, Presence::Offline, self.since);
        let _ = self.try_publish(TopicKind::Status, Message::Status(offline));
        let _ = self.client.try_disconnect();
        let drain = async {
            loop {
                match self.eventloop.poll().await {
                    Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        self.state.send_modify(|s| s.connected = false);
        tracing::info!("link closed");
    }
}

/// A connection error in words, with the TLS reason where there is one (rumqttc wraps rustls
/// errors in I/O errors; the chain carries e.g. "invalid peer certificate: UnknownIssuer" or
/// "received fatal alert: CertificateExpired").
fn describe(e: &ConnectionError) -> String {
    let mut msg = e.to_string();
    for cause in fleet_proto::errors::causes(e).skip(1) {
        let cause = cause.to_string();
        if !msg.contains(&cause) {
            msg.push_str(": ");
            msg.push_str(&cause);
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn pem_errors_never_show_file_contents() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nc2VjcmV0LXN0dWZm!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let cfg = LinkConfig {
            device: DeviceId::new("d").unwrap(),
            broker: Broker::parse("mqtts://127.0.0.1:1").unwrap(),
            ca_file: ca.clone(),
            cert_file: dir.path().join("missing.pem"),
            key_file: dir.path().join("missing.key"),
            server_keys: TrustedKeys::default(),
            password: None,
            keep_alive: Duration::from_secs(30),
            backoff_initial: 500 * MS,
            backoff_max: Duration::from_secs(60),
            telemetry_compression: fleet_proto::Compression::Deflate,
        };
        let err = tls_config(&cfg).unwrap_err().to_string();
        assert!(err.contains("CA file") && err.contains(&ca.display().to_string()), "{err}");
        assert!(!err.contains("c2VjcmV0"), "{err}");
    }
}
