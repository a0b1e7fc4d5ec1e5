//! The connectivity detector (M09, `protocol/spec/emergency.md`): probes,
//! the NORMAL/DEGRADED/EMERGENCY state machine (`MODE_ONLINE`,
//! `MODE_DEGRADED`, `MODE_OFFLINE`) with debounce and anti-flap, operator
//! overrides, and the `emergency.*` capabilities. Entering `MODE_OFFLINE`
//! switches the event log to its emergency sync cadence.
//!
//! Probes: `dns://resolver[:port]/name` sends one recursive A query over UDP
//! (EMERG-006); `https://host[:port]/path` sends one `HEAD` request over TLS
//! validated against the system's trusted roots (rustls, EMERG-007).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use prost::Message;

use hearthnet_sdk::constants as k;
use hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode;
use hearthnet_sdk::proto::hearthnet::emergency::v1::{self as pb, Mode, ModeOverride};
use hearthnet_sdk::wkt::Timestamp;

use crate::bus::{Offer, Request, Service, Sink, Trust};
use crate::error::CallError;
use crate::events::EventLog;

/// The timing rules; the protocol's constants unless a lab configures
/// shorter ones.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Unbroken *down* ticks needed from DEGRADED to OFFLINE (EMERG-013).
    pub debounce: Duration,
    /// Unbroken *up* ticks needed back to ONLINE (EMERG-014).
    pub recovery: Duration,
    /// Probe interval while ONLINE.
    pub interval_online: Duration,
    /// Probe interval otherwise.
    pub interval_offline: Duration,
    /// Per-probe timeout.
    pub timeout: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        let s = |v: i64| Duration::from_secs(v as u64);
        Self {
            debounce: s(k::EMERGENCY_TRANSITION_DEBOUNCE_SECONDS),
            recovery: s(k::EMERGENCY_ONLINE_RECOVERY_SECONDS),
            interval_online: s(k::EMERGENCY_PROBE_INTERVAL_ONLINE_SECONDS),
            interval_offline: s(k::EMERGENCY_PROBE_INTERVAL_OFFLINE_SECONDS),
            timeout: s(k::EMERGENCY_PROBE_TIMEOUT_SECONDS),
        }
    }
}

/// How one tick went (EMERG-009).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// No probe failed.
    Up,
    /// Some failed, fewer than the threshold.
    Partial,
    /// At least min(2, n) failed.
    Down,
}

impl Tick {
    /// Classifies `failed` failures out of `n` probes.
    pub fn classify(failed: usize, n: usize) -> Self {
        let threshold = (k::EMERGENCY_OFFLINE_MIN_FAILED_PROBES as usize).min(n);
        if failed == 0 {
            Tick::Up
        } else if failed >= threshold {
            Tick::Down
        } else {
            Tick::Partial
        }
    }
}

fn pessimism(m: Mode) -> u8 {
    match m {
        Mode::Offline => 3,
        Mode::Degraded => 2,
        Mode::Online => 1,
        Mode::Unspecified => 0,
    }
}

/// The detected-mode state machine (EMERG-011 … EMERG-015), driven by ticks
/// with explicit times so it is testable without waiting.
#[derive(Debug, Clone)]
pub struct Machine {
    timings: Timings,
    mode: Mode,
    run: Option<(Tick, Instant)>,
    transitions: VecDeque<Instant>,
}

impl Machine {
    /// A machine before its first tick.
    pub fn new(timings: Timings) -> Self {
        Self {
            timings,
            mode: Mode::Unspecified,
            run: None,
            transitions: VecDeque::new(),
        }
    }

    /// The detected mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Feeds one tick at `now`; returns the new mode when it changed.
    pub fn tick(&mut self, t: Tick, now: Instant) -> Option<Mode> {
        let started = match self.run {
            Some((kind, since)) if kind == t => since,
            _ => now,
        };
        self.run = Some((t, started));
        let lasted = now.saturating_duration_since(started);
        let target = match (self.mode, t) {
            (Mode::Unspecified, Tick::Up) => Mode::Online,
            (Mode::Unspecified, Tick::Partial) => Mode::Degraded,
            (Mode::Unspecified, Tick::Down) => Mode::Offline,
            (Mode::Online, Tick::Up) => Mode::Online,
            (Mode::Online, _) => Mode::Degraded,
            (Mode::Degraded, Tick::Down) if lasted >= self.timings.debounce => Mode::Offline,
            (Mode::Degraded | Mode::Offline, Tick::Up) if lasted >= self.timings.recovery => {
                Mode::Online
            }
            (m, _) => m,
        };
        if target == self.mode {
            return None;
        }
        // EMERG-015: only moves towards a less pessimistic mode wait.
        let window = Duration::from_secs(k::EMERGENCY_ANTI_FLAP_WINDOW_SECONDS as u64);
        while self
            .transitions
            .front()
            .is_some_and(|t0| now.saturating_duration_since(*t0) > window)
        {
            self.transitions.pop_front();
        }
        let calmer = pessimism(target) < pessimism(self.mode);
        if calmer
            && self.mode != Mode::Unspecified
            && self.transitions.len() >= k::EMERGENCY_ANTI_FLAP_MAX_TRANSITIONS as usize
        {
            return None;
        }
        if self.mode != Mode::Unspecified {
            self.transitions.push_back(now);
        }
        self.mode = target;
        Some(target)
    }
}

/// A parsed probe target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `dns://resolver[:port]/name`.
    Dns {
        /// Resolver address.
        resolver: SocketAddr,
        /// Query name.
        name: String,
    },
    /// `https://host[:port]/path`.
    Https {
        /// Host.
        host: String,
        /// Port (443 unless given).
        port: u16,
        /// Path (with its leading `/`).
        path: String,
    },
}

impl Probe {
    /// Parses a configured target (EMERG-005).
    pub fn parse(target: &str) -> Option<Self> {
        if let Some(rest) = target.strip_prefix("dns://") {
            let (addr, name) = rest.split_once('/')?;
            let resolver = addr.parse::<SocketAddr>().ok().or_else(|| {
                addr.parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            })?;
            (!name.is_empty()).then(|| Probe::Dns {
                resolver,
                name: name.trim_end_matches('.').to_string(),
            })
        } else if let Some(rest) = target.strip_prefix("https://") {
            let (hostport, path) = match rest.find('/') {
                Some(i) => (&rest[..i], rest[i..].to_string()),
                None => (rest, "/".to_string()),
            };
            let (host, port) = match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().ok()?),
                None => (hostport.to_string(), 443),
            };
            (!host.is_empty()).then_some(Probe::Https { host, port, path })
        } else {
            None
        }
    }

    /// Runs the probe; true on success within `timeout`. HTTPS probes
    /// validate against `roots`.
    pub async fn run(&self, timeout: Duration, roots: &Arc<rustls::RootCertStore>) -> bool {
        tokio::time::timeout(timeout, self.attempt(roots))
            .await
            .unwrap_or(false)
    }

    async fn attempt(&self, roots: &Arc<rustls::RootCertStore>) -> bool {
        match self {
            Probe::Dns { resolver, name } => dns_query(*resolver, name).await,
            Probe::Https { host, port, path } => https_head(host, *port, path, roots.clone())
                .await
                .unwrap_or(false),
        }
    }
}

/// The system's trusted roots (EMERG-007); empty when none can be read.
pub fn system_roots() -> Arc<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = store.add(cert);
    }
    if store.is_empty() {
        tracing::warn!("no trusted root certificates found; https probes will fail");
    }
    Arc::new(store)
}

/// One `HEAD` request over validated TLS; true when an HTTP response starts.
async fn https_head(
    host: &str,
    port: u16,
    path: &str,
    roots: Arc<rustls::RootCertStore>,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let req = format!(
        "HEAD {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: hearthnet-probe\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await?;
    let mut head = [0u8; 5];
    tls.read_exact(&mut head).await?;
    Ok(&head == b"HTTP/")
}

/// One recursive A query; true on a response with our id and RCODE
/// NOERROR (0) or NXDOMAIN (3) (EMERG-006).
async fn dns_query(resolver: SocketAddr, name: &str) -> bool {
    let bind: SocketAddr = if resolver.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
        return false;
    };
    let id: u16 = rand::random();
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return false;
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    if sock.send_to(&q, resolver).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            return false;
        };
        if from != resolver || n < 12 || buf[..2] != id.to_be_bytes() || buf[2] & 0x80 == 0 {
            continue;
        }
        return matches!(buf[3] & 0x0f, 0 | 3);
    }
}

struct State {
    machine: Machine,
    over: ModeOverride,
    effective: Mode,
    since: Timestamp,
    last_probe: Option<Timestamp>,
    results: BTreeMap<String, bool>,
}

/// The detector and its capabilities.
pub struct Emergency {
    state: Mutex<State>,
    targets: Vec<(String, Probe)>,
    timings: Timings,
    log: Option<EventLog>,
    bus: crate::bus::WeakBus,
    roots: Arc<rustls::RootCertStore>,
}

impl Emergency {
    /// A detector over configured targets (already validated).
    pub fn new(
        targets: &[String],
        timings: Timings,
        log: Option<EventLog>,
        bus: &crate::bus::Bus,
    ) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                machine: Machine::new(timings),
                over: ModeOverride::Auto,
                effective: Mode::Unspecified,
                since: Timestamp::now(),
                last_probe: None,
                results: BTreeMap::new(),
            }),
            targets: targets
                .iter()
                .filter_map(|t| Probe::parse(t).map(|p| (t.clone(), p)))
                .collect(),
            timings,
            log,
            bus: bus.downgrade(),
            roots: system_roots(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The effective mode.
    pub fn mode(&self) -> Mode {
        self.lock().effective
    }

    /// The published state (EMERG-001).
    pub fn status(&self) -> pb::EmergencyState {
        let st = self.lock();
        pb::EmergencyState {
            mode: st.effective as i32,
            since: Some(st.since),
            last_probe: st.last_probe,
            probe_results: st.results.clone().into_iter().collect(),
            r#override: st.over as i32,
        }
    }

    /// Recomputes the effective mode; applies a change (EMERG-002, EMERG-017,
    /// EMERG-020).
    fn settle(&self, st: &mut State) {
        let effective = match st.over {
            ModeOverride::ForceOnline => Mode::Online,
            ModeOverride::ForceOffline => Mode::Offline,
            _ => st.machine.mode(),
        };
        if effective != st.effective {
            tracing::warn!(from = ?st.effective, to = ?effective, "connectivity mode changed");
            let previous = st.effective;
            st.effective = effective;
            st.since = Timestamp::now();
            let offline = effective == Mode::Offline;
            let was_offline = previous == Mode::Offline;
            if let Some(log) = &self.log {
                log.set_offline(offline);
                // EMERG-017: local-only, to the operator's subscriptions.
                log.publish_local(
                    "emergency.mode.changed",
                    pb::ModeChangedEvent {
                        online: !offline,
                        mode: effective as i32,
                        previous: previous as i32,
                        since: Some(st.since),
                    }
                    .encode_to_vec(),
                );
            }
            if let Some(bus) = self.bus.upgrade() {
                bus.set_offline(offline);
                // EMERG-018: the suspended capabilities leave and come back.
                if offline != was_offline
                    && let Some(log) = &self.log
                {
                    for (cap, params, max) in bus.internet_capabilities() {
                        let payload = if offline {
                            hearthnet_sdk::proto::hearthnet::node::v1::CapabilityDeregisteredEvent {
                                name: cap.name.to_string(),
                                version: cap.version.to_string(),
                            }
                            .encode_to_vec()
                        } else {
                            hearthnet_sdk::proto::hearthnet::node::v1::CapabilityRegisteredEvent {
                                spec: Some(crate::services::builtin::spec(cap, &params, max)),
                            }
                            .encode_to_vec()
                        };
                        let ty = if offline {
                            "capability.deregistered"
                        } else {
                            "capability.registered"
                        };
                        log.publish_local(ty, payload);
                    }
                }
            }
        }
    }

    /// Runs one probe tick now.
    pub async fn tick(&self) {
        let probes = self.targets.iter().map(|(name, p)| async move {
            (name.clone(), p.run(self.timings.timeout, &self.roots).await)
        });
        let results = futures::future::join_all(probes).await;
        let failed = results.iter().filter(|(_, ok)| !ok).count();
        let mut st = self.lock();
        st.results = results.into_iter().collect();
        st.last_probe = Some(Timestamp::now());
        st.machine
            .tick(Tick::classify(failed, self.targets.len()), Instant::now());
        self.settle(&mut st);
    }

    /// Probes until `stop` (EMERG-008).
    pub async fn run(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        if self.targets.is_empty() {
            return;
        }
        loop {
            self.tick().await;
            let every = if self.lock().machine.mode() == Mode::Online {
                self.timings.interval_online
            } else {
                self.timings.interval_offline
            };
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

impl Service for Emergency {
    fn name(&self) -> &str {
        "emergency"
    }

    fn offers(&self) -> Vec<Offer> {
        Offer::all(&["emergency.status", "emergency.mode.set"])
    }

    fn call(&self, req: Request, out: Sink) -> BoxFuture<'static, Result<(), CallError>> {
        let result = (|| {
            if req.trust != Trust::Operator {
                return Err(CallError::new(
                    ErrorCode::Unauthorized,
                    "only this node's operator may read or set its connectivity mode",
                ));
            }
            match req.capability.name {
                "emergency.status" => Ok(pb::StatusResponse {
                    output: Some(pb::StatusOutput {
                        state: Some(self.status()),
                    }),
                    meta: Some(Default::default()),
                }
                .encode_to_vec()),
                "emergency.mode.set" => {
                    let r: pb::SetModeRequest = req.decode()?;
                    let o = r.input.unwrap_or_default().r#override;
                    let over = ModeOverride::try_from(o)
                        .ok()
                        .filter(|o| *o != ModeOverride::Unspecified)
                        .ok_or_else(|| CallError::bad_request("override is unspecified"))?;
                    {
                        let mut st = self.lock();
                        st.over = over;
                        self.settle(&mut st);
                    }
                    Ok(pb::SetModeResponse {
                        output: Some(pb::SetModeOutput {
                            state: Some(self.status()),
                        }),
                        meta: Some(Default::default()),
                    }
                    .encode_to_vec())
                }
                other => Err(CallError::new(
                    ErrorCode::NotFound,
                    format!("emergency does not serve {other}"),
                )),
            }
        })();
        async move { out.send_bytes(result?).await }.boxed()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fast() -> Timings {
        Timings {
            debounce: Duration::from_secs(30),
            recovery: Duration::from_secs(10),
            ..Timings::default()
        }
    }

    #[test]
    fn classification() {
        assert_eq!(Tick::classify(0, 4), Tick::Up);
        assert_eq!(Tick::classify(1, 4), Tick::Partial);
        assert_eq!(Tick::classify(2, 4), Tick::Down);
        assert_eq!(Tick::classify(1, 1), Tick::Down);
    }

    #[test]
    fn online_degraded_offline_and_back_with_debounce() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut m = Machine::new(fast());
        assert_eq!(m.tick(Tick::Up, at(0)), Some(Mode::Online));
        assert_eq!(m.tick(Tick::Down, at(10)), Some(Mode::Degraded));
        assert_eq!(m.tick(Tick::Down, at(20)), None);
        assert_eq!(m.tick(Tick::Down, at(39)), None, "29 s of down ticks");
        assert_eq!(m.tick(Tick::Down, at(40)), Some(Mode::Offline));
        // Partial ticks never move OFFLINE.
        assert_eq!(m.tick(Tick::Partial, at(42)), None);
        assert_eq!(m.tick(Tick::Up, at(44)), None);
        assert_eq!(m.tick(Tick::Up, at(53)), None);
        assert_eq!(m.tick(Tick::Up, at(54)), Some(Mode::Online));
    }

    #[test]
    fn a_broken_run_restarts_the_debounce_and_anti_flap_delays_recovery() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut m = Machine::new(fast());
        m.tick(Tick::Partial, at(0));
        assert_eq!(m.mode(), Mode::Degraded);
        m.tick(Tick::Down, at(1));
        m.tick(Tick::Partial, at(20));
        assert_eq!(m.tick(Tick::Down, at(35)), None, "the run restarted at 35");
        // Three transitions inside a minute hold back a calmer one.
        let mut f = Machine::new(fast());
        f.tick(Tick::Up, at(0));
        f.tick(Tick::Down, at(1)); // 1: degraded
        f.tick(Tick::Up, at(2));
        assert_eq!(f.tick(Tick::Up, at(12)), Some(Mode::Online)); // 2
        assert_eq!(f.tick(Tick::Down, at(13)), Some(Mode::Degraded)); // 3
        f.tick(Tick::Up, at(14));
        assert_eq!(f.tick(Tick::Up, at(24)), None, "anti-flap holds it");
        assert_eq!(f.tick(Tick::Up, at(62)), Some(Mode::Online));
    }

    #[test]
    fn probe_targets_parse() {
        assert_eq!(
            Probe::parse("dns://127.0.0.1:5300/example.org"),
            Some(Probe::Dns {
                resolver: "127.0.0.1:5300".parse().unwrap(),
                name: "example.org".into()
            })
        );
        assert_eq!(
            Probe::parse("https://quad9.net:8443/health"),
            Some(Probe::Https {
                host: "quad9.net".into(),
                port: 8443,
                path: "/health".into()
            })
        );
        assert!(matches!(
            Probe::parse("https://quad9.net/"),
            Some(Probe::Https { port: 443, .. })
        ));
        assert_eq!(Probe::parse("1.1.1.1"), None);
        assert_eq!(Probe::parse("dns://1.1.1.1/"), None);
    }

    /// A local HTTPS server with a certificate from a throw-away CA: the
    /// probe succeeds when the CA is trusted and fails when it is not.
    #[tokio::test]
    async fn https_probes_validate_the_certificate() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let ee_key = KeyPair::generate().unwrap();
        let ee = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&ee_key, &issuer)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![ee.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(ee_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let mut buf = [0u8; 512];
                        let _ = tls.read(&mut buf).await;
                        let _ = tls
                            .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                            .await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        let probe = Probe::parse(&format!("https://localhost:{port}/")).unwrap();
        let mut trusted = rustls::RootCertStore::empty();
        trusted.add(ca_cert.der().clone()).unwrap();
        assert!(probe.run(Duration::from_secs(2), &Arc::new(trusted)).await);
        let untrusted = Arc::new(rustls::RootCertStore::empty());
        assert!(!probe.run(Duration::from_secs(2), &untrusted).await);
        // Nothing listening.
        let closed = Probe::parse("https://127.0.0.1:9/").unwrap();
        assert!(!closed.run(Duration::from_secs(2), &untrusted).await);
    }
}
