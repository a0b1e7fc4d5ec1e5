//! Finding peers on the LAN (`protocol/spec/discovery.md`, decisions 0051
//! and 0052): signed-manifest checks for every hint, UDP multicast
//! announces, and pruning of peers that go silent.
//!
//! Announces are hints only: an announce of our community makes the node
//! fetch `node.manifest` at the datagram's source address; the peer is added
//! when that manifest verifies, its signer's short id is the announced one
//! and it names our community (DISC-011 … DISC-013). A followed peer's
//! manifest is fetched every refresh interval; a peer without a verified
//! manifest for `discovery.prune_seconds` is removed (DISC-020).

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use hearthnet_sdk::constants as k;
use hearthnet_sdk::identity::NodeId;
use hearthnet_sdk::proto::hearthnet::discovery::v1::{self as dpb, PeerSource};
use hearthnet_sdk::proto::hearthnet::identity::v1::{NodeManifest, SignedEnvelope};
use hearthnet_sdk::proto::hearthnet::node::v1 as nodepb;

use crate::bus::Bus;

/// Discovery errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The peer could not be reached or answered badly.
    #[error("peer {url}: {reason}")]
    Peer {
        /// Where.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A socket could not be opened.
    #[error("udp discovery: {0}")]
    Io(#[from] std::io::Error),
    /// The mDNS responder could not start.
    #[error("mdns: {0}")]
    Mdns(String),
}

/// A UDP announce (DISC-009), one JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// Always 1.
    pub v: u32,
    /// The sender's short id.
    pub node: String,
    /// The short community id.
    pub community: String,
    /// The sender's port.
    pub port: u16,
    /// `http` or `https`.
    pub transport: String,
    /// Capability names, shortened until the announce fits.
    pub caps: Vec<String>,
}

impl Announce {
    /// The datagram: JSON of at most `DISCOVERY_UDP_ANNOUNCE_MAX_BYTES`,
    /// dropping capability names from the end until it fits.
    pub fn encode(&self) -> Vec<u8> {
        let mut a = self.clone();
        loop {
            let bytes = serde_json::to_vec(&a).unwrap_or_default();
            if bytes.len() <= k::DISCOVERY_UDP_ANNOUNCE_MAX_BYTES as usize || a.caps.is_empty() {
                return bytes;
            }
            a.caps.pop();
        }
    }

    /// Parses a datagram (DISC-011): size, JSON shape and `v`.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > k::DISCOVERY_UDP_ANNOUNCE_MAX_BYTES as usize {
            return None;
        }
        let a: Self = serde_json::from_slice(bytes).ok()?;
        (a.v == 1).then_some(a)
    }
}

/// The short community id (DISC-003): the short id of the root key.
pub fn short_community(community: &str) -> Option<String> {
    community.parse::<NodeId>().ok().map(|n| n.short())
}

/// Fetches and verifies a peer's manifest at `url` and feeds it to the bus.
/// With `expect`, the signer's short id must be it and the manifest must
/// name `community` (DISC-013). Returns the peer's NodeID.
pub async fn fetch_manifest(
    bus: &Bus,
    url: &str,
    expect: Option<(&str, &str)>,
) -> Result<NodeId, DiscoveryError> {
    let (node, manifest) = fetch_verified(bus, url, expect).await?;
    register(bus, &node, url, &manifest);
    Ok(node)
}

/// Feeds a verified manifest to the bus's routing.
fn register(bus: &Bus, node: &NodeId, url: &str, manifest: &NodeManifest) {
    bus.update_peer(node, url, &manifest.capabilities);
    bus.metrics()
        .peers
        .set(i64::try_from(bus.peers().len()).unwrap_or(0));
}

/// Fetches and verifies a manifest without registering the peer.
pub async fn fetch_verified(
    bus: &Bus,
    url: &str,
    expect: Option<(&str, &str)>,
) -> Result<(NodeId, NodeManifest), DiscoveryError> {
    let err = |reason: String| DiscoveryError::Peer {
        url: url.to_string(),
        reason,
    };
    let client = bus.peer_client(url).map_err(|e| err(e.to_string()))?;
    // A peer whose link went away never answers: bound the wait.
    let resp: nodepb::ManifestResponse = tokio::time::timeout(
        Duration::from_secs(3),
        client.unary("node.manifest", "1.0", &nodepb::ManifestRequest::default()),
    )
    .await
    .map_err(|_| err("no answer within 3 s".into()))?
    .map_err(|e| err(e.to_string()))?;
    let bytes = resp.output.map(|o| o.signed_manifest).unwrap_or_default();
    let env = SignedEnvelope::decode(bytes.as_slice()).map_err(|e| err(e.to_string()))?;
    let now = hearthnet_sdk::wkt::Timestamp::now().seconds;
    let (node, manifest) =
        hearthnet_sdk::records::verify_node_manifest(&env, now).map_err(|e| err(e.to_string()))?;
    if let Some((short, community)) = expect {
        if node.short() != short {
            return Err(err(format!(
                "manifest signed by {}, announce named {short}",
                node.short()
            )));
        }
        if manifest.community_id != community {
            return Err(err("manifest names another community".into()));
        }
    }
    Ok((node, manifest))
}

/// What the registry knows of one peer.
#[derive(Debug, Clone)]
struct PeerRecord {
    manifest: NodeManifest,
    source: PeerSource,
    last_seen: i64,
}

/// Follows peers: one refresh loop per URL, pruning silent ones.
#[derive(Clone)]
pub struct Follower {
    bus: Bus,
    every: Duration,
    prune: Duration,
    community: Option<String>,
    tasks: TaskTracker,
    stop: CancellationToken,
    followed: Arc<Mutex<HashSet<String>>>,
    /// Known peers by NodeID text (DISC-002).
    table: Arc<Mutex<BTreeMap<String, PeerRecord>>>,
}

impl Follower {
    /// A follower feeding `bus`.
    pub fn new(
        bus: Bus,
        every: Duration,
        prune: Duration,
        community: Option<String>,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        Self {
            bus,
            every,
            prune,
            community,
            tasks,
            stop,
            followed: Arc::default(),
            table: Arc::default(),
        }
    }

    /// Records a verified manifest (keeping how the peer was first found).
    fn record(&self, node: &NodeId, manifest: NodeManifest, source: PeerSource) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let source = t.get(&node.to_string()).map_or(source, |r| r.source);
        t.insert(
            node.to_string(),
            PeerRecord {
                manifest,
                source,
                last_seen: hearthnet_sdk::wkt::Timestamp::now().seconds,
            },
        );
    }

    /// Follows `url`, checking the manifest against the `announced` short id
    /// when given. With `retry` the URL is tried for ever (static peers, and
    /// mDNS peers, whose records are not re-sent); otherwise following ends
    /// once the peer is pruned (UDP peers announce again). Following a URL
    /// already followed does nothing. Returns whether `url` is new.
    pub fn follow(
        &self,
        url: String,
        announced: Option<String>,
        retry: bool,
        source: PeerSource,
    ) -> bool {
        if !self
            .followed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(url.clone())
        {
            return false;
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            let mut last_ok = Instant::now();
            let mut node: Option<NodeId> = None;
            loop {
                let expect = match (&announced, &this.community) {
                    (Some(s), Some(c)) => Some((s.as_str(), c.as_str())),
                    _ => None,
                };
                match fetch_verified(&this.bus, &url, expect).await {
                    Ok((n, manifest)) => {
                        register(&this.bus, &n, &url, &manifest);
                        node = Some(n);
                        last_ok = Instant::now();
                        this.record(&n, manifest, source);
                    }
                    Err(e) => {
                        tracing::debug!(peer = %url, error = %e, "peer manifest refresh failed");
                        if last_ok.elapsed() >= this.prune {
                            if let Some(n) = node.take() {
                                tracing::info!(peer = %url, node = %n, "peer went silent; pruned");
                                this.bus.remove_peer(&n);
                                this.table
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .remove(&n.to_string());
                                this.bus
                                    .metrics()
                                    .peers
                                    .set(i64::try_from(this.bus.peers().len()).unwrap_or(0));
                            }
                            if !retry {
                                break;
                            }
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(this.every) => {}
                    _ = this.stop.cancelled() => break,
                }
            }
            this.followed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&url);
        });
        true
    }
}

/// `discovery.peers` and `discovery.peer.add` (DISC-001, DISC-002).
pub struct DiscoveryService {
    follower: Follower,
    members: Option<crate::events::EventLog>,
}

impl DiscoveryService {
    /// The service over the node's follower.
    pub fn new(follower: Follower, members: Option<crate::events::EventLog>) -> Arc<Self> {
        Arc::new(Self { follower, members })
    }
}

impl crate::bus::Service for DiscoveryService {
    fn name(&self) -> &str {
        "discovery"
    }

    fn offers(&self) -> Vec<crate::bus::Offer> {
        crate::bus::Offer::all(&["discovery.peers", "discovery.peer.add"])
    }

    fn call(
        &self,
        req: crate::bus::Request,
        out: crate::bus::Sink,
    ) -> futures::future::BoxFuture<'static, Result<(), crate::error::CallError>> {
        use crate::error::CallError;
        use futures::FutureExt;
        use hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode;
        let follower = self.follower.clone();
        let members = self.members.clone();
        async move {
            let started = Instant::now();
            if req.trust != crate::bus::Trust::Operator {
                return Err(CallError::new(
                    ErrorCode::Unauthorized,
                    "only this node's operator may manage its peers",
                ));
            }
            match req.capability.name {
                "discovery.peers" => {
                    let r: dpb::PeersRequest = req.decode()?;
                    let stale = r.input.unwrap_or_default().include_stale;
                    let now = hearthnet_sdk::wkt::Timestamp::now().seconds;
                    let peers = follower
                        .table
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .filter(|(_, r)| {
                            stale || r.manifest.expires_at.is_some_and(|t| t.seconds > now)
                        })
                        .map(|(id, r)| {
                            let m = &r.manifest;
                            dpb::Peer {
                                node_id: id.clone(),
                                display_name: m.display_name.clone(),
                                community_id: m.community_id.clone(),
                                profile: match m.profile {
                                    1 => "anchor",
                                    3 => "spark",
                                    4 => "bridge",
                                    _ => "hearth",
                                }
                                .into(),
                                endpoints: m.endpoints.clone(),
                                source: r.source as i32,
                                last_seen: Some(hearthnet_sdk::wkt::Timestamp {
                                    seconds: r.last_seen,
                                    nanos: 0,
                                }),
                                manifest_expires_at: m.expires_at,
                            }
                        })
                        .collect();
                    out.send(&dpb::PeersResponse {
                        output: Some(dpb::PeersOutput { peers }),
                        meta: Some(dpb::PeersMeta {
                            ms: started.elapsed().as_millis() as u64,
                        }),
                    })
                    .await
                }
                "discovery.peer.add" => {
                    let r: dpb::PeerAddRequest = req.decode()?;
                    let input = r.input.unwrap_or_default();
                    if input.persist {
                        return Err(CallError::bad_request(
                            "persist is not supported by this build; add the peer to discovery.static_peers",
                        ));
                    }
                    let host: std::net::IpAddr = input.host.parse().map_err(|_| {
                        CallError::bad_request(format!("host `{}` is not an IP address", input.host))
                    })?;
                    let port = if input.port == 0 { 7080 } else { input.port };
                    let port = u16::try_from(port)
                        .map_err(|_| CallError::bad_request("port is above 65535"))?;
                    let url = format!("http://{}", SocketAddr::new(host, port));
                    let (node, manifest) = fetch_verified(&follower.bus, &url, None)
                        .await
                        .map_err(|e| {
                            let text = e.to_string();
                            let code = if text.contains("expired") {
                                ErrorCode::Expired
                            } else if text.contains("signature") {
                                ErrorCode::InvalidSignature
                            } else {
                                ErrorCode::Partition
                            };
                            CallError::new(code, text)
                        })?;
                    if !input.node_id.is_empty() && node.to_string() != input.node_id {
                        return Err(CallError::bad_request(format!(
                            "the node at {url} is {node}, not {}",
                            input.node_id
                        )));
                    }
                    register(&follower.bus, &node, &url, &manifest);
                    follower.record(&node, manifest, PeerSource::Manual);
                    follower.follow(url, None, true, PeerSource::Manual);
                    let member = members
                        .as_ref()
                        .is_some_and(|l| l.catch_up(|m| m.is_member(&node.to_string())));
                    out.send(&dpb::PeerAddResponse {
                        output: Some(dpb::PeerAddOutput {
                            node_id: node.to_string(),
                            member,
                        }),
                        meta: Some(dpb::PeerAddMeta {
                            ms: started.elapsed().as_millis() as u64,
                        }),
                    })
                    .await
                }
                other => Err(CallError::new(
                    ErrorCode::NotFound,
                    format!("discovery does not serve {other}"),
                )),
            }
        }
        .boxed()
    }
}

/// What a node announces about itself.
#[derive(Debug, Clone)]
pub struct Me {
    /// Short id.
    pub short: String,
    /// Short community id.
    pub community: String,
    /// Port peers reach us on.
    pub port: u16,
}

/// Starts UDP multicast announces and the listener (DISC-009 … DISC-013).
/// Returns an error when the socket cannot be opened; the node keeps
/// running without UDP discovery then (DISC-023).
pub fn spawn_udp(
    bus: Bus,
    me: Me,
    group: Ipv4Addr,
    port: u16,
    follower: Follower,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<(), DiscoveryError> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
    socket.join_multicast_v4(&group, &Ipv4Addr::UNSPECIFIED)?;
    socket.set_multicast_loop_v4(true)?;
    let socket = Arc::new(UdpSocket::from_std(socket.into())?);
    let target = SocketAddr::V4(SocketAddrV4::new(group, port));
    let send = socket.clone();
    let sender_bus = bus.clone();
    let sender_me = me.clone();
    let sender_stop = stop.clone();
    // Hearing a node we do not follow yet makes us announce at once (at
    // most once a second), so a newcomer learns of us without waiting for
    // our next tick.
    let heard = Arc::new(tokio::sync::Notify::new());
    let wake = heard.clone();
    tasks.spawn(async move {
        loop {
            let caps: Vec<String> = sender_bus
                .local_offers()
                .into_iter()
                .map(|o| o.name)
                .collect();
            let a = Announce {
                v: 1,
                node: sender_me.short.clone(),
                community: sender_me.community.clone(),
                port: sender_me.port,
                transport: "http".into(),
                caps,
            };
            if let Err(e) = send.send_to(&a.encode(), target).await {
                tracing::debug!(error = %e, "udp announce failed");
            }
            // DISC-010: fast while looking for peers, slow when settled.
            let secs = if sender_bus.peers().len() < 2 {
                k::DISCOVERY_UDP_INTERVAL_ACTIVE_SECONDS
            } else {
                k::DISCOVERY_UDP_INTERVAL_STABLE_SECONDS
            };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(secs as u64)) => {}
                _ = wake.notified() => tokio::time::sleep(Duration::from_secs(1)).await,
                _ = sender_stop.cancelled() => return,
            }
        }
    });
    tasks.spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, from) = tokio::select! {
                r = socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "udp receive failed");
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            let Some(a) = Announce::parse(&buf[..n]) else {
                continue;
            };
            if a.node == me.short || a.community != me.community {
                continue;
            }
            let url = format!("http://{}:{}", from.ip(), a.port);
            if follower.follow(url, Some(a.node), false, PeerSource::Udp) {
                heard.notify_one();
            }
        }
    });
    Ok(())
}

/// The TXT `caps` value: names joined by commas, cut at a comma to at most
/// `MDNS_CAPS_TXT_MAX_BYTES` (DISC-006).
pub fn caps_txt(names: &[String]) -> String {
    let mut out = String::new();
    for n in names {
        let extra = if out.is_empty() { n.len() } else { n.len() + 1 };
        if out.len() + extra > k::MDNS_CAPS_TXT_MAX_BYTES as usize {
            break;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(n);
    }
    out
}

/// Registers this node with mDNS and browses for others (DISC-004 …
/// DISC-008); unregisters (goodbye) when `stop` is cancelled. `ip` is the
/// address peers reach us on (`None`: every interface's).
#[allow(clippy::too_many_arguments)]
pub fn spawn_mdns(
    bus: Bus,
    me: Me,
    profile: &str,
    ip: Option<std::net::IpAddr>,
    follower: Follower,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<(), DiscoveryError> {
    let mdns_err = |e: mdns_sd::Error| DiscoveryError::Mdns(e.to_string());
    let daemon = mdns_sd::ServiceDaemon::new().map_err(mdns_err)?;
    let caps: Vec<String> = bus.local_offers().into_iter().map(|o| o.name).collect();
    let (major, minor) = hearthnet_sdk::registry::parse_version(hearthnet_sdk::PROTOCOL_VERSION)
        .unwrap_or_else(|| {
            let mut parts = hearthnet_sdk::PROTOCOL_VERSION.split('.');
            let p = |x: Option<&str>| x.and_then(|v| v.parse().ok()).unwrap_or(0);
            (p(parts.next()), p(parts.next()))
        });
    let props = [
        ("v", "1".to_string()),
        ("node", me.short.clone()),
        ("community", me.community.clone()),
        ("profile", profile.to_string()),
        ("transport", "http".to_string()),
        ("contract_version", format!("{major}.{minor}")),
        ("caps", caps_txt(&caps)),
    ];
    let props: Vec<(&str, &str)> = props.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let host = format!(
        "hn-{}.local.",
        blake3::hash(me.short.as_bytes())
            .to_hex()
            .as_str()
            .get(..16)
            .unwrap_or("node")
    );
    let info = match ip {
        Some(ip) => mdns_sd::ServiceInfo::new(
            k::MDNS_SERVICE_TYPE,
            &me.short,
            &host,
            ip,
            me.port,
            &props[..],
        ),
        None => mdns_sd::ServiceInfo::new(
            k::MDNS_SERVICE_TYPE,
            &me.short,
            &host,
            "",
            me.port,
            &props[..],
        )
        .map(mdns_sd::ServiceInfo::enable_addr_auto),
    }
    .map_err(mdns_err)?;
    let fullname = info.get_fullname().to_string();
    daemon.register(info).map_err(mdns_err)?;
    let events = daemon.browse(k::MDNS_SERVICE_TYPE).map_err(mdns_err)?;
    tasks.spawn_blocking(move || {
        while !stop.is_cancelled() {
            let Ok(event) = events.recv_timeout(Duration::from_millis(300)) else {
                continue;
            };
            let mdns_sd::ServiceEvent::ServiceResolved(r) = event else {
                continue;
            };
            let txt = |key: &str| {
                r.txt_properties
                    .get_property_val_str(key)
                    .map(str::to_string)
            };
            // DISC-007, DISC-012.
            if txt("v").as_deref() != Some("1")
                || txt("community").as_deref() != Some(me.community.as_str())
            {
                continue;
            }
            let Some(node) = txt("node") else { continue };
            if node == me.short {
                continue;
            }
            let Some(addr) = r
                .addresses
                .iter()
                .map(|a| a.to_ip_addr())
                .find(std::net::IpAddr::is_ipv4)
            else {
                continue;
            };
            follower.follow(
                format!("http://{addr}:{}", r.port),
                Some(node),
                true,
                PeerSource::Mdns,
            );
        }
        // Goodbye (TTL 0) so peers forget us at once.
        if let Ok(done) = daemon.unregister(&fullname) {
            let _ = done.recv_timeout(Duration::from_secs(1));
        }
        if let Ok(done) = daemon.shutdown() {
            let _ = done.recv_timeout(Duration::from_secs(1));
        }
    });
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn announces_fit_and_bad_ones_are_ignored() {
        let a = Announce {
            v: 1,
            node: "ed25519:AAAA-BBBB-CCCC-DDDD".into(),
            community: "ed25519:EEEE-FFFF-GGGG-HHHH".into(),
            port: 7080,
            transport: "http".into(),
            caps: (0..200).map(|i| format!("cap.number.{i}")).collect(),
        };
        let bytes = a.encode();
        assert!(bytes.len() <= 1024);
        let back = Announce::parse(&bytes).unwrap();
        assert!(back.caps.len() < 200 && !back.caps.is_empty());
        assert_eq!(back.node, a.node);
        for bad in [
            &b"{\"v\":2,\"node\":\"x\",\"community\":\"y\",\"port\":1,\"transport\":\"http\",\"caps\":[]}"[..],
            b"not json",
            b"{\"v\":1}",
            &[b' '; 1025],
        ] {
            assert!(Announce::parse(bad).is_none());
        }
    }

    #[test]
    fn caps_txt_is_cut_at_a_comma() {
        let names: Vec<String> = (0..40).map(|i| format!("capability.{i}")).collect();
        let txt = caps_txt(&names);
        assert!(txt.len() <= 200);
        assert!(txt.split(',').all(|n| names.contains(&n.to_string())));
        assert_eq!(caps_txt(&names[..2]), "capability.0,capability.1");
    }
}
