//! The capability bus (M03): verifies, authorises and routes every call, runs
//! local services, forwards to peers, and frames the response stream
//! (sequence numbers, one terminal frame, the signed `done`).
//!
//! Inbound order of checks (decision 0040): size → version syntax →
//! signature → replay window → community → capability lookup → trust →
//! rate limit → schema hash → payload (JSON schema) → routing → execution
//! under the deadline.

pub mod health;
pub mod service;
pub mod verify;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use hearthnet_sdk::client::{CallItem, Client, ClientError};
use hearthnet_sdk::constants as k;
use hearthnet_sdk::identity::{NodeId, SecretKey};
use hearthnet_sdk::proto::hearthnet::bus::v1::{
    Ack, CallRequest, Done, Frame, PayloadEncoding, frame,
};
use hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode;
use hearthnet_sdk::proto::hearthnet::identity::v1::OfferedCapability;
use hearthnet_sdk::proto::hearthnet::node::v1::{TraceDirection, TraceEntry};
use hearthnet_sdk::registry::{self, Capability, Streaming};
use hearthnet_sdk::replay::ReplayGuard;
use hearthnet_sdk::signing::{Transcript, sign_call};
use hearthnet_sdk::token;
use hearthnet_sdk::wkt::Timestamp;

pub use health::Health;
pub use service::{Input, Item, Offer, Request, Service, Sink};

use crate::error::CallError;
use crate::faults::{self, Fault};
use crate::obs::{CallLabels, CapLabels, Metrics, TraceRing};

/// Trust levels, in order (decision 0040).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Trust {
    /// Anyone with a valid key.
    Unknown,
    /// A community member.
    Member,
    /// A trusted member.
    Trusted,
    /// An anchor.
    Anchor,
    /// The node itself (its own key).
    Operator,
}

impl Trust {
    /// Parses a registry `min_trust` value (unknown values are the strictest).
    pub fn from_registry(s: &str) -> Self {
        match s {
            "unknown" => Trust::Unknown,
            "member" => Trust::Member,
            "trusted" => Trust::Trusted,
            "anchor" => Trust::Anchor,
            _ => Trust::Operator,
        }
    }

    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Trust::Unknown => "unknown",
            Trust::Member => "member",
            Trust::Trusted => "trusted",
            Trust::Anchor => "anchor",
            Trust::Operator => "operator",
        }
    }
}

/// Bus settings from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The node's community id, if any.
    pub community: Option<String>,
    /// Prefer local providers below `local_load_threshold`.
    pub prefer_local: bool,
    /// Load threshold for local preference.
    pub local_load_threshold: f64,
    /// Static trust levels by NodeID text.
    pub trust: HashMap<String, Trust>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            community: None,
            prefer_local: true,
            local_load_threshold: 0.8,
            trust: HashMap::new(),
        }
    }
}

/// Errors registering services.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// Two services offer the same capability major version.
    #[error("capability {0} is offered twice")]
    Duplicate(String),
}

struct LocalEntry {
    offer: Offer,
    service: Arc<dyn Service>,
    in_flight: Arc<AtomicU32>,
}

#[derive(Clone)]
struct RemoteEntry {
    node: NodeId,
    version: (u32, u32),
    version_text: String,
    schema_hash: String,
    max_concurrent: u32,
    params: BTreeMap<String, String>,
    endpoint: String,
    last_seen: Instant,
    in_flight: Arc<AtomicU32>,
}

/// A capability known on a peer.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteCapability {
    /// The peer.
    pub node: String,
    /// Capability name.
    pub name: String,
    /// `MAJOR.MINOR`.
    pub version: String,
    /// Advertised schema hash.
    pub schema_hash: String,
    /// Whether the entry is in quarantine now.
    pub quarantined: bool,
    /// Outcomes in its health window.
    pub samples: usize,
    /// Success rate over the window.
    pub success_rate: f64,
    /// Instance parameters the peer advertises.
    pub params: BTreeMap<String, String>,
    /// The peer's endpoint.
    pub endpoint: String,
}

type HealthKey = (String, String, u32);

struct Inner {
    key: Arc<SecretKey>,
    me: NodeId,
    me_text: String,
    settings: Settings,
    local: RwLock<BTreeMap<(String, u32), LocalEntry>>,
    remote: RwLock<BTreeMap<(String, String, u32), RemoteEntry>>,
    health: Mutex<HashMap<HealthKey, Health>>,
    replay: Mutex<ReplayGuard>,
    per_cap: DefaultKeyedRateLimiter<(String, String)>,
    per_caller: DefaultKeyedRateLimiter<String>,
    soft: DefaultKeyedRateLimiter<(String, String)>,
    clients: Mutex<HashMap<String, Client>>,
    verifier: verify::Verifier,
    metrics: Arc<Metrics>,
    traces: Arc<TraceRing>,
    trust_source: RwLock<Option<Arc<dyn TrustSource>>>,
    /// Trust granted for a while by the node itself ([`Bus::grant`]).
    grants: RwLock<HashMap<String, Trust>>,
    /// Offline (emergency) mode: capabilities needing the internet are
    /// suspended (EMERG-018).
    offline: std::sync::atomic::AtomicBool,
    /// Bumped when what the node offers changes (manifests are re-signed).
    generation: std::sync::atomic::AtomicU64,
}

/// Where trust levels come from besides the static configuration: the
/// community's membership view (decision 0048).
pub trait TrustSource: Send + Sync + 'static {
    /// The level of a member; `None` for a non-member.
    fn trust(&self, node: &NodeId) -> Option<Trust>;
    /// Whether the node was revoked (its calls are refused, EVT-054).
    fn is_revoked(&self, node: &NodeId) -> bool;
}

/// The capability bus. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("node", &self.inner.me_text)
            .finish_non_exhaustive()
    }
}

/// A handle on a bus that does not keep it alive (for services the bus
/// itself holds).
#[derive(Clone)]
pub struct WeakBus(std::sync::Weak<Inner>);

impl WeakBus {
    /// The bus, while it exists.
    pub fn upgrade(&self) -> Option<Bus> {
        self.0.upgrade().map(|inner| Bus { inner })
    }
}

/// A trust level granted by [`Bus::grant`]; withdrawn when dropped.
#[derive(Debug)]
pub struct Grant {
    bus: WeakBus,
    caller: String,
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.inner
                .grants
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.caller);
        }
    }
}

impl std::fmt::Debug for WeakBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeakBus")
    }
}

/// Context of an inbound call from a transport.
#[derive(Debug, Default)]
pub struct Inbound {
    /// The caller's deadline, relative to receipt.
    pub timeout: Option<Duration>,
    /// Client frames `(seq, data)` after the header, when the call came on
    /// an `Open` stream (`None` for `Call`).
    pub input: Option<mpsc::Receiver<(u64, Vec<u8>)>>,
}

fn quota(rps: i64) -> Quota {
    let n = NonZeroU32::new(u32::try_from(rps).unwrap_or(1).max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(n).allow_burst(n)
}

impl Bus {
    /// A bus for the node holding `key`.
    pub fn new(
        key: Arc<SecretKey>,
        settings: Settings,
        metrics: Arc<Metrics>,
        traces: Arc<TraceRing>,
    ) -> Self {
        let me = key.node_id();
        Self {
            inner: Arc::new(Inner {
                me_text: me.to_string(),
                me,
                key,
                settings,
                local: RwLock::new(BTreeMap::new()),
                remote: RwLock::new(BTreeMap::new()),
                health: Mutex::new(HashMap::new()),
                // Room for about 8,000 calls per second over the window.
                replay: Mutex::new(ReplayGuard::new(1_000_000)),
                per_cap: RateLimiter::keyed(quota(k::RATE_LIMIT_HARD_RPS_PER_CAP)),
                per_caller: RateLimiter::keyed(quota(k::RATE_LIMIT_HARD_RPS_TOTAL)),
                soft: RateLimiter::keyed(quota(k::RATE_LIMIT_SOFT_RPS_PER_CAP)),
                clients: Mutex::new(HashMap::new()),
                verifier: verify::Verifier::start(),
                metrics,
                traces,
                trust_source: RwLock::new(None),
                grants: RwLock::new(HashMap::new()),
                offline: std::sync::atomic::AtomicBool::new(false),
                generation: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Takes trust levels from `source` (the membership view) from now on;
    /// the static lists of the configuration still apply where higher.
    pub fn set_trust_source(&self, source: Arc<dyn TrustSource>) {
        *self
            .inner
            .trust_source
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    /// Drops every registered service and the trust source (at shutdown:
    /// services holding the bus would otherwise keep each other alive).
    pub fn close(&self) {
        self.inner
            .local
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.inner
            .trust_source
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// Suspends (offline) or restores every local capability registered as
    /// requiring the internet (EMERG-018).
    pub fn set_offline(&self, on: bool) {
        use std::sync::atomic::Ordering;
        if self.inner.offline.swap(on, Ordering::SeqCst) != on {
            self.inner.generation.fetch_add(1, Ordering::SeqCst);
            tracing::info!(
                offline = on,
                "capabilities needing the internet {}",
                if on { "suspended" } else { "restored" }
            );
        }
    }

    /// Changes whenever what this node offers changes.
    pub fn generation(&self) -> u64 {
        self.inner
            .generation
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Local capabilities registered as needing the internet, with their
    /// params and concurrency limits.
    pub fn internet_capabilities(
        &self,
    ) -> Vec<(&'static Capability, BTreeMap<String, String>, u32)> {
        let local = self.inner.local.read().unwrap_or_else(|e| e.into_inner());
        local
            .values()
            .filter(|e| e.offer.requires_internet)
            .map(|e| {
                (
                    e.offer.capability,
                    advertised(&e.offer.params),
                    e.offer.max_concurrent,
                )
            })
            .collect()
    }

    fn visible(&self, e: &LocalEntry) -> bool {
        !(e.offer.requires_internet && self.inner.offline.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// A handle that does not keep the bus alive.
    pub fn downgrade(&self) -> WeakBus {
        WeakBus(Arc::downgrade(&self.inner))
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.inner.me
    }

    /// The node key (for signing manifests and forwarded calls).
    pub fn key(&self) -> &Arc<SecretKey> {
        &self.inner.key
    }

    /// Metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Recent traces.
    pub fn traces(&self) -> &Arc<TraceRing> {
        &self.inner.traces
    }

    /// Registers every capability of a service.
    pub fn register(&self, service: Arc<dyn Service>) -> Result<(), BusError> {
        let mut local = self.inner.local.write().unwrap_or_else(|e| e.into_inner());
        let offers = service.offers();
        for offer in &offers {
            let key = (
                offer.capability.name.to_string(),
                offer.capability.version_numbers().0,
            );
            if local.contains_key(&key) {
                return Err(BusError::Duplicate(offer.capability.name.to_string()));
            }
        }
        for offer in offers {
            let key = (
                offer.capability.name.to_string(),
                offer.capability.version_numbers().0,
            );
            tracing::debug!(service = service.name(), capability = %key.0, "registered");
            local.insert(
                key,
                LocalEntry {
                    offer,
                    service: service.clone(),
                    in_flight: Arc::new(AtomicU32::new(0)),
                },
            );
        }
        Ok(())
    }

    /// The capabilities served locally, as advertised in the manifest.
    pub fn local_offers(&self) -> Vec<OfferedCapability> {
        let local = self.inner.local.read().unwrap_or_else(|e| e.into_inner());
        local
            .values()
            .filter(|e| self.visible(e))
            .map(|e| OfferedCapability {
                name: e.offer.capability.name.to_string(),
                version: e.offer.capability.version.to_string(),
                schema_hash: e.offer.capability.schema_hash.to_string(),
                params: advertised(&e.offer.params).into_iter().collect(),
                max_concurrent: e.offer.max_concurrent,
            })
            .collect()
    }

    /// Local capability registry entries with their params.
    pub fn local_capabilities(&self) -> Vec<(&'static Capability, BTreeMap<String, String>, u32)> {
        let local = self.inner.local.read().unwrap_or_else(|e| e.into_inner());
        local
            .values()
            .filter(|e| self.visible(e))
            .map(|e| {
                (
                    e.offer.capability,
                    advertised(&e.offer.params),
                    e.offer.max_concurrent,
                )
            })
            .collect()
    }

    /// Replaces the advertised params of a local capability (for example
    /// the corpora a node serves, RAG-006); the next manifest carries them.
    pub fn set_params(&self, name: &str, major: u32, params: BTreeMap<String, String>) {
        let mut local = self.inner.local.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = local.get_mut(&(name.to_string(), major))
            && e.offer.params != params
        {
            e.offer.params = params;
            self.inner
                .generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Replaces what a peer offers (from its verified manifest).
    pub fn update_peer(&self, node: &NodeId, endpoint: &str, caps: &[OfferedCapability]) {
        let node_text = node.to_string();
        if node_text == self.inner.me_text {
            return;
        }
        let now = Instant::now();
        let mut remote = self.inner.remote.write().unwrap_or_else(|e| e.into_inner());
        let old: HashMap<_, _> = remote
            .iter()
            .filter(|((n, _, _), _)| *n == node_text)
            .map(|(key, e)| (key.clone(), e.in_flight.clone()))
            .collect();
        remote.retain(|(n, _, _), _| *n != node_text);
        for cap in caps {
            let Some(version) = registry::parse_version(&cap.version) else {
                continue;
            };
            let key = (node_text.clone(), cap.name.clone(), version.0);
            let in_flight = old.get(&key).cloned().unwrap_or_default();
            remote.insert(
                key,
                RemoteEntry {
                    node: *node,
                    version,
                    version_text: cap.version.clone(),
                    schema_hash: cap.schema_hash.clone(),
                    max_concurrent: cap.max_concurrent,
                    params: cap.params.clone().into_iter().collect(),
                    endpoint: endpoint.to_string(),
                    last_seen: now,
                    in_flight,
                },
            );
        }
    }

    /// Forgets a peer.
    pub fn remove_peer(&self, node: &NodeId) {
        let node_text = node.to_string();
        let mut remote = self.inner.remote.write().unwrap_or_else(|e| e.into_inner());
        remote.retain(|(n, _, _), _| *n != node_text);
    }

    /// Peers with at least one known capability.
    pub fn peers(&self) -> Vec<(String, String)> {
        let remote = self.inner.remote.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, String)> = remote
            .values()
            .map(|e| (e.node.to_string(), e.endpoint.clone()))
            .collect();
        out.dedup();
        out
    }

    /// Capabilities known on peers, with their health.
    pub fn remote_capabilities(&self) -> Vec<RemoteCapability> {
        let now = Instant::now();
        let remote = self.inner.remote.read().unwrap_or_else(|e| e.into_inner());
        let mut health = self.inner.health.lock().unwrap_or_else(|e| e.into_inner());
        remote
            .iter()
            .map(|((node, name, major), e)| {
                let h = health
                    .entry((node.clone(), name.clone(), *major))
                    .or_default();
                RemoteCapability {
                    node: node.clone(),
                    name: name.clone(),
                    version: e.version_text.clone(),
                    schema_hash: e.schema_hash.clone(),
                    quarantined: h.is_quarantined(now),
                    samples: h.samples(),
                    success_rate: h.success_rate(),
                    params: e.params.clone(),
                    endpoint: e.endpoint.clone(),
                }
            })
            .collect()
    }

    fn trust_of(&self, caller: &NodeId, caller_text: &str) -> Trust {
        if *caller == self.inner.me {
            return Trust::Operator;
        }
        let fixed = self
            .inner
            .settings
            .trust
            .get(caller_text)
            .copied()
            .unwrap_or(Trust::Unknown);
        let folded = self
            .trust_source()
            .and_then(|s| s.trust(caller))
            .unwrap_or(Trust::Unknown);
        let granted = self
            .inner
            .grants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(caller_text)
            .copied()
            .unwrap_or(Trust::Unknown);
        fixed.max(folded).max(granted)
    }

    /// Gives `caller` the trust level `trust` until the returned guard is
    /// dropped (the node's own conformance run trusts the suite's caller,
    /// PROTO-003).
    pub fn grant(&self, caller: &NodeId, trust: Trust) -> Grant {
        let caller = caller.to_string();
        self.inner
            .grants
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(caller.clone(), trust);
        Grant {
            bus: self.downgrade(),
            caller,
        }
    }

    fn is_revoked(&self, caller: &NodeId) -> bool {
        self.trust_source().is_some_and(|s| s.is_revoked(caller))
    }

    fn trust_source(&self) -> Option<Arc<dyn TrustSource>> {
        self.inner
            .trust_source
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Signs a call as this node (for the node's own callers: CLI, UI, services).
    pub fn sign(&self, call: &mut CallRequest) {
        sign_call(&self.inner.key, call);
    }

    /// Serves one inbound call: every check, routing and execution. The
    /// returned stream always ends with exactly one `done` or `error` frame.
    pub fn serve(&self, call: CallRequest, ctx: Inbound) -> ReceiverStream<Frame> {
        let (tx, rx) = mpsc::channel(32);
        let bus = self.clone();
        tokio::spawn(async move {
            bus.serve_into(call, ctx, tx).await;
        });
        ReceiverStream::new(rx)
    }

    async fn serve_into(&self, mut call: CallRequest, ctx: Inbound, tx: mpsc::Sender<Frame>) {
        let started = Instant::now();
        let started_at = Timestamp::now();
        let capability = call.capability.clone();
        let request_id = call.request_id.clone();
        let caller_text = call.caller.clone();
        let prepared = match self.precheck(&call) {
            Ok(()) => {
                let (checked, verified) = self.inner.verifier.verify(call).await;
                call = checked;
                let verified = match verified {
                    Err(_) if faults::on(Fault::AcceptBadSignature) => call
                        .caller
                        .parse::<NodeId>()
                        .map_err(|_| CallError::bad_request("caller is not a NodeID")),
                    other => other.map_err(|e| CallError::new(e.code(), e.to_string())),
                };
                verified.and_then(|caller| self.admit(&call, caller))
            }
            Err(e) => Err(e),
        };
        let (cap, caller, trust, route) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.finish_trace(
                    &capability,
                    "",
                    &request_id,
                    &caller_text,
                    started,
                    started_at,
                    e.code.wire_name(),
                    0,
                    "inbound",
                );
                let _ = tx.send(error_frame(0, &e)).await;
                return;
            }
        };
        let timeout = cap_timeout(cap).min(ctx.timeout.unwrap_or(Duration::MAX));
        let deadline = started + timeout;
        let client_streaming = matches!(cap.streaming, Streaming::Client | Streaming::Bidi);
        let outcome = match (route, ctx.input) {
            (_, None) if client_streaming => {
                // Decision 0044: client- and bidi-streaming capabilities are
                // called with `Open`.
                let e = CallError::bad_request(format!(
                    "{} is {}-streaming: call it with Open",
                    cap.name,
                    if cap.streaming == Streaming::Bidi {
                        "bidi"
                    } else {
                        "client"
                    }
                ));
                let _ = tx.send(error_frame(0, &e)).await;
                (e.code.wire_name().into(), 0, String::new(), "local")
            }
            (Route::Local(key), input) => {
                self.run_local(key, call, caller, trust, deadline, input, &tx)
                    .await
            }
            (Route::Remote(_), Some(_)) => {
                let e = CallError::new(
                    ErrorCode::NotImplemented,
                    format!(
                        "{} streams from the client: call a node that serves it",
                        cap.name
                    ),
                );
                let _ = tx.send(error_frame(0, &e)).await;
                (e.code.wire_name().into(), 0, String::new(), "local")
            }
            (Route::Remote(candidates), None) => {
                self.forward(cap, call, candidates, deadline, &tx).await
            }
        };
        let (code, frames, peer, route_label) = outcome;
        // Local calls are traced with their caller, forwarded ones with the provider.
        let peer = if peer.is_empty() { caller_text } else { peer };
        self.finish_trace(
            &capability,
            cap.version,
            &request_id,
            &peer,
            started,
            started_at,
            &code,
            frames,
            route_label,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_trace(
        &self,
        capability: &str,
        version: &str,
        request_id: &str,
        peer: &str,
        started: Instant,
        started_at: Timestamp,
        code: &str,
        frames: u64,
        route: &str,
    ) {
        let ms = started.elapsed();
        let inner = &self.inner;
        // Unknown names are collapsed so that callers cannot grow the label set.
        let label = if registry::capability(capability).is_some() {
            capability.to_string()
        } else {
            "unknown".to_string()
        };
        inner
            .metrics
            .calls
            .get_or_create(&CallLabels {
                capability: label.clone(),
                code: code.to_string(),
                route: route.to_string(),
            })
            .inc();
        inner
            .metrics
            .latency
            .get_or_create(&CapLabels { capability: label })
            .observe(ms.as_secs_f64());
        inner.traces.push(TraceEntry {
            trace_id: request_id.to_string(),
            capability: capability.to_string(),
            version: version.to_string(),
            direction: match route {
                "remote" => TraceDirection::Outbound,
                "local" => TraceDirection::Local,
                _ => TraceDirection::Inbound,
            } as i32,
            peer: peer.to_string(),
            started_at: Some(started_at),
            ms: ms.as_millis() as u64,
            code: code.to_string(),
            frames,
        });
        tracing::debug!(
            capability,
            request_id,
            code,
            ms = ms.as_millis() as u64,
            route,
            "call"
        );
    }

    /// Cheap checks before the signature: sizes, version and request id syntax.
    fn precheck(&self, call: &CallRequest) -> Result<(), CallError> {
        if call.payload.len() > k::BUS_MAX_PAYLOAD_BYTES as usize
            && !faults::on(Fault::NoPayloadLimit)
        {
            return Err(CallError::bad_request(format!(
                "payload of {} bytes exceeds {} bytes",
                call.payload.len(),
                k::BUS_MAX_PAYLOAD_BYTES
            )));
        }
        if registry::parse_version(&call.min_version).is_none() {
            return Err(CallError::bad_request(format!(
                "min_version `{}` is not MAJOR.MINOR",
                call.min_version
            )));
        }
        if ulid::Ulid::from_string(&call.request_id).is_err() {
            return Err(CallError::bad_request("request_id is not a ULID"));
        }
        Ok(())
    }

    /// The checks after the signature; returns the served capability, caller,
    /// trust and route.
    fn admit(
        &self,
        call: &CallRequest,
        caller: NodeId,
    ) -> Result<(&'static Capability, NodeId, Trust, Route), CallError> {
        let min = registry::parse_version(&call.min_version)
            .ok_or_else(|| CallError::bad_request("min_version is not MAJOR.MINOR"))?;
        let ts = call
            .timestamp
            .ok_or_else(|| CallError::bad_request("timestamp is missing"))?;
        if !faults::on(Fault::SkipReplayCheck) {
            let now = if faults::on(Fault::IgnoreTimestamp) {
                ts.seconds
            } else {
                Timestamp::now().seconds
            };
            let mut replay = self.inner.replay.lock().unwrap_or_else(|e| e.into_inner());
            replay
                .check(&call.request_id, ts.seconds, now)
                .map_err(|e| CallError::new(e.code(), e.to_string()))?;
        }
        // A call naming another community is a federated call: its caller
        // counts as `unknown` (decision 0074).
        let foreign = !call.community.is_empty()
            && self.inner.settings.community.as_deref() != Some(call.community.as_str())
            && !faults::on(Fault::AcceptForeignCommunity);
        if self.is_revoked(&caller) {
            return Err(CallError::new(
                ErrorCode::Revoked,
                "caller was revoked from the community",
            ));
        }
        let trust = if foreign {
            Trust::Unknown
        } else {
            self.trust_of(&caller, &call.caller)
        };
        let want = routing_param(call);
        let trust = if call.token.is_empty() || faults::on(Fault::IgnoreTokens) {
            trust
        } else {
            trust.max(self.token_trust(call, min, want.as_ref())?)
        };
        let refusal = |cap: &Capability| self.trust_refusal(cap, trust, foreign, &call.community);
        let route = match self.route(
            &call.capability,
            min,
            caller == self.inner.me,
            want.as_ref(),
        ) {
            Ok(r) => r,
            Err(e) if e.code == ErrorCode::NotFound && faults::on(Fault::WrongErrorCode) => {
                return Err(CallError::bad_request(e.message));
            }
            // A caller that may not call the capability is refused for that,
            // and learns nothing about how busy its providers are (BUS-044).
            Err(e) if matches!(e.code, ErrorCode::CapacityExceeded | ErrorCode::Partition) => {
                return Err(registry::capability(&call.capability)
                    .and_then(refusal)
                    .unwrap_or(e));
            }
            Err(e) => return Err(e),
        };
        let cap = match &route {
            Route::Local((name, major)) => {
                let local = self.inner.local.read().unwrap_or_else(|e| e.into_inner());
                local
                    .get(&(name.clone(), *major))
                    .map(|e| e.offer.capability)
                    .ok_or_else(|| CallError::new(ErrorCode::NotFound, "provider went away"))?
            }
            Route::Remote(_) => registry::capability(&call.capability).ok_or_else(|| {
                CallError::new(
                    ErrorCode::NotFound,
                    format!("no capability {}", call.capability),
                )
            })?,
        };
        if let Some(e) = refusal(cap) {
            return Err(e);
        }
        if caller != self.inner.me {
            self.rate_limit(&call.caller, cap.name)?;
        }
        if let Route::Local(_) = &route
            && !call.schema_hash.is_empty()
            && call.schema_hash != cap.schema_hash
            && !faults::on(Fault::IgnoreSchemaHash)
        {
            let mut e = CallError::new(
                ErrorCode::SchemaMismatch,
                format!("schema hash differs for {}@{}", cap.name, cap.version),
            );
            e.schema_hash_expected = cap.schema_hash.to_string();
            return Err(e);
        }
        if let Route::Local(_) = &route
            && call.encoding == PayloadEncoding::Json as i32
        {
            let text = std::str::from_utf8(&call.payload)
                .map_err(|_| CallError::bad_request("JSON payload is not UTF-8"))?;
            if !faults::on(Fault::SkipJsonValidation) {
                check_json(cap.request, text)?;
            }
        } else if !matches!(
            PayloadEncoding::try_from(call.encoding),
            Ok(PayloadEncoding::Proto | PayloadEncoding::Unspecified | PayloadEncoding::Json)
        ) {
            return Err(CallError::bad_request(format!(
                "unknown payload encoding {}",
                call.encoding
            )));
        }
        Ok((cap, caller, trust, route))
    }

    /// Checks a call's capability token (BUS-048, decision 0098); the trust
    /// it lends: `member` when its issuer has at least `member` trust here.
    fn token_trust(
        &self,
        call: &CallRequest,
        version: (u32, u32),
        want: Option<&Want>,
    ) -> Result<Trust, CallError> {
        let refuse = |e: token::TokenError| CallError::new(e.code(), e.to_string());
        let audience = self.inner.settings.community.as_deref().unwrap_or("");
        // This node issues no tokens yet, so nothing is revoked.
        let t = token::verify(
            &call.token,
            Timestamp::now().seconds,
            audience,
            &token::RevocationList::default(),
        )
        .map_err(refuse)?;
        if t.claims.sub != "*" && t.claims.sub != call.caller {
            return Err(CallError::new(
                ErrorCode::Unauthorized,
                format!("the token is for {}, not for the caller", t.claims.sub),
            ));
        }
        let params: BTreeMap<String, String> = want
            .map(|w| (w.field.to_string(), w.value.clone()))
            .into_iter()
            .collect();
        t.covers(&call.capability, version, &params)
            .map_err(refuse)?;
        let issuer = self.trust_of(&t.issuer, &t.issuer.to_string());
        Ok(if issuer >= Trust::Member {
            Trust::Member
        } else {
            Trust::Unknown
        })
    }

    /// Why a caller of trust `trust` (from another community when
    /// `foreign`) may not call `cap`, if it may not.
    fn trust_refusal(
        &self,
        cap: &Capability,
        trust: Trust,
        foreign: bool,
        community: &str,
    ) -> Option<CallError> {
        let needed = Trust::from_registry(cap.min_trust);
        if foreign && needed > Trust::Unknown {
            // This node keeps no federation manifests yet (decision 0074).
            return Some(CallError::new(
                ErrorCode::NotFederated,
                format!("{community} is not federated with this node's community"),
            ));
        }
        (trust < needed && !faults::on(Fault::SkipTrustCheck)).then(|| {
            CallError::new(
                ErrorCode::Unauthorized,
                format!(
                    "{} needs trust `{}`; caller is `{}`",
                    cap.name,
                    needed.name(),
                    trust.name()
                ),
            )
        })
    }

    fn rate_limit(&self, caller: &str, cap: &str) -> Result<(), CallError> {
        use governor::clock::{Clock, DefaultClock};
        let clock = DefaultClock::default();
        let key = (caller.to_string(), cap.to_string());
        if self.inner.soft.check_key(&key).is_err() {
            self.inner
                .metrics
                .soft_exceeded
                .get_or_create(&CapLabels {
                    capability: cap.to_string(),
                })
                .inc();
        }
        let refuse = |nu: governor::NotUntil<_>| {
            let wait = nu.wait_time_from(clock.now());
            CallError::new(ErrorCode::RateLimited, format!("too many calls to {cap}"))
                .retry_after(wait.as_millis().max(1) as u64)
        };
        self.inner
            .per_caller
            .check_key(&caller.to_string())
            .map_err(refuse)?;
        self.inner.per_cap.check_key(&key).map_err(refuse)?;
        Ok(())
    }

    /// Chooses where a call goes (decision 0040).
    ///
    /// `want` is a routing param of the request (decisions 0061, 0062): only
    /// providers whose advertised params list its value are candidates.
    fn route(
        &self,
        name: &str,
        min: (u32, u32),
        own: bool,
        want: Option<&Want>,
    ) -> Result<Route, CallError> {
        let now = Instant::now();
        let local = self.inner.local.read().unwrap_or_else(|e| e.into_inner());
        let mut served_versions: Vec<String> = local
            .values()
            .filter(|e| e.offer.capability.name == name && self.visible(e))
            .map(|e| e.offer.capability.version.to_string())
            .collect();
        let mut unmatched = false;
        let local_compatible = local
            .get(&(name.to_string(), min.0))
            .is_some_and(|e| self.visible(e) && e.offer.capability.version_numbers().1 >= min.1);
        let local_hit = local
            .get(&(name.to_string(), min.0))
            .filter(|e| self.visible(e))
            .filter(|e| e.offer.capability.version_numbers().1 >= min.1)
            .filter(|e| {
                let ok = want.is_none_or(|w| w.listed_in(&e.offer.params));
                unmatched |= !ok;
                ok
            });
        let local_load = local_hit.map(|e| load(&e.in_flight, e.offer.max_concurrent));
        let local_saturated =
            local_hit.is_some_and(|e| saturated(&e.in_flight, e.offer.max_concurrent));
        drop(local);

        let mut remote: Vec<(f64, String, (String, String, u32))> = Vec::new();
        let mut any_remote_compatible = false;
        let mut all_quarantined = true;
        if own {
            let entries = self.inner.remote.read().unwrap_or_else(|e| e.into_inner());
            let mut health = self.inner.health.lock().unwrap_or_else(|e| e.into_inner());
            for (key, e) in entries.iter().filter(|((_, n, _), _)| n == name) {
                served_versions.push(e.version_text.clone());
                if e.version.0 != min.0 || e.version.1 < min.1 {
                    continue;
                }
                if want.is_some_and(|w| !w.listed_in(&e.params)) {
                    unmatched = true;
                    continue;
                }
                if now.duration_since(e.last_seen)
                    > Duration::from_secs(k::BUS_PEER_FRESHNESS_SECONDS as u64)
                {
                    continue;
                }
                any_remote_compatible = true;
                let h = health.entry(key.clone()).or_default();
                if h.is_quarantined(now) {
                    continue;
                }
                all_quarantined = false;
                if saturated(&e.in_flight, e.max_concurrent) {
                    continue;
                }
                let latency = h
                    .p50_ms()
                    .map(f64::from)
                    .unwrap_or(k::BUS_UNKNOWN_PROVIDER_LATENCY_MILLISECONDS as f64);
                let score = latency * (1.0 + load(&e.in_flight, e.max_concurrent))
                    + (1.0 - h.success_rate()) * k::BUS_RELIABILITY_PENALTY_FACTOR as f64;
                remote.push((score, key.0.clone(), key.clone()));
            }
        }
        if let Some(l) = local_load {
            let prefer = self.inner.settings.prefer_local
                && l < self.inner.settings.local_load_threshold
                && !local_saturated;
            let local_score = k::BUS_UNKNOWN_PROVIDER_LATENCY_MILLISECONDS as f64 * (1.0 + l)
                - k::BUS_LOCALITY_BONUS as f64;
            let best_remote = remote.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
            if !local_saturated && (prefer || remote.is_empty() || local_score <= best_remote) {
                return Ok(Route::Local((name.to_string(), min.0)));
            }
            if remote.is_empty() {
                return Err(CallError::new(
                    ErrorCode::CapacityExceeded,
                    format!("{name} is at its concurrency limit"),
                )
                .retry_after(1000));
            }
        }
        if !remote.is_empty() {
            remote.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
            return Ok(Route::Remote(remote.into_iter().map(|r| r.2).collect()));
        }
        if any_remote_compatible {
            if all_quarantined {
                return Err(CallError::new(
                    ErrorCode::Partition,
                    format!("every provider of {name} is in quarantine"),
                ));
            }
            return Err(CallError::new(
                ErrorCode::CapacityExceeded,
                format!("every provider of {name} is at its concurrency limit"),
            )
            .retry_after(1000));
        }
        if served_versions.is_empty() {
            return Err(CallError::new(
                ErrorCode::NotFound,
                format!("no capability {name}"),
            ));
        }
        if let Some(w) = want
            && unmatched
        {
            // No provider lists the value: the local service, if any, says
            // why (a malformed name is `bad_request`, RAG-004).
            if local_compatible {
                return Ok(Route::Local((name.to_string(), min.0)));
            }
            return Err(CallError::new(
                ErrorCode::NotFound,
                format!("no provider of {name} serves {} `{}`", w.field, w.value),
            ));
        }
        served_versions.sort();
        served_versions.dedup();
        Err(CallError::new(
            ErrorCode::SchemaMismatch,
            format!(
                "{name}@{}.{} is not served; versions offered: {}",
                min.0,
                min.1,
                served_versions.join(", ")
            ),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_local(
        &self,
        key: (String, u32),
        call: CallRequest,
        caller: NodeId,
        trust: Trust,
        deadline: Instant,
        input: Option<mpsc::Receiver<(u64, Vec<u8>)>>,
        tx: &mpsc::Sender<Frame>,
    ) -> (String, u64, String, &'static str) {
        let found = {
            let local = self.inner.local.read().unwrap_or_else(|e| e.into_inner());
            local.get(&key).filter(|e| self.visible(e)).map(|e| {
                (
                    e.offer.capability,
                    e.service.clone(),
                    e.in_flight.clone(),
                    e.offer.max_concurrent,
                )
            })
        };
        let Some((cap, service, in_flight, max)) = found else {
            let e = CallError::new(ErrorCode::NotFound, "provider went away");
            let _ = tx.send(error_frame(0, &e)).await;
            return (e.code.wire_name().into(), 0, String::new(), "local");
        };
        // Claim a slot atomically.
        let slot = match SlotGuard::claim(cap, in_flight, max, &self.inner.metrics) {
            Ok(slot) => slot,
            Err(e) => {
                let _ = tx.send(error_frame(0, &e)).await;
                return (e.code.wire_name().into(), 0, String::new(), "local");
            }
        };

        let json = call.encoding == PayloadEncoding::Json as i32;
        let payload = if json {
            match std::str::from_utf8(&call.payload)
                .map_err(|_| CallError::bad_request("JSON payload is not UTF-8"))
                .and_then(|t| {
                    hearthnet_sdk::json::json_to_proto_bytes(cap.request, t)
                        .map_err(|e| CallError::bad_request(e.to_string()))
                }) {
                Ok(p) => p,
                // The mutant serves a body it cannot decode as an empty request.
                Err(_) if faults::on(Fault::SkipJsonValidation) => Vec::new(),
                Err(e) => {
                    drop(slot);
                    let _ = tx.send(error_frame(0, &e)).await;
                    return (e.code.wire_name().into(), 0, String::new(), "local");
                }
            }
        } else {
            call.payload
        };
        let cancel = CancellationToken::new();
        // Client frames go to the service through a pump that decodes JSON
        // and acknowledges every STREAM_ACK_INTERVAL_FRAMES frames (0044).
        let (mut acks, input) = match input {
            Some(raw) => {
                let (acks, input) = pump_client_frames(cap, json, raw);
                (Some(acks), Some(input))
            }
            None => (None, None),
        };
        let req = Request {
            capability: cap,
            payload,
            caller,
            trust,
            request_id: call.request_id.clone(),
            deadline,
            cancel: cancel.clone(),
            input,
        };
        let (sink, mut items) = Sink::channel(16);
        // The service runs inside this task; leaving the loop drops (and so
        // cancels) its future, and the guard cancels its token.
        let task =
            futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(service.call(req, sink)));
        tokio::pin!(task);
        let _cancel = cancel.drop_guard();

        let mut transcript = Transcript::new();
        let mut seq = 0u64;
        let sleep = tokio::time::sleep_until(deadline.into());
        tokio::pin!(sleep);
        let mut result: Option<Result<(), CallError>> = None;
        let mut items_open = true;
        loop {
            tokio::select! {
                biased;
                item = items.recv(), if items_open => {
                    match item {
                        Some(Item::Data(bytes)) => {
                            let bytes = match wire_data(cap, json, transcript.frames(), bytes) {
                                Ok(b) => b,
                                Err(e) => { result = Some(Err(e)); break; }
                            };
                            transcript.push(seq, &bytes);
                            if tx.send(Frame { seq, kind: Some(frame::Kind::Data(bytes)) }).await.is_err() {
                                return ("timeout".into(), transcript.frames(), String::new(), "local");
                            }
                            seq += 1;
                        }
                        Some(Item::Progress(p)) => {
                            if tx.send(Frame { seq, kind: Some(frame::Kind::Progress(p)) }).await.is_err() {
                                return ("timeout".into(), transcript.frames(), String::new(), "local");
                            }
                            seq += 1;
                        }
                        None => items_open = false,
                    }
                }
                upto = async { acks.as_mut()?.recv().await }, if acks.is_some() => {
                    match upto {
                        Some(upto) => {
                            if tx.send(Frame { seq, kind: Some(frame::Kind::Ack(Ack { upto })) }).await.is_err() {
                                return ("timeout".into(), transcript.frames(), String::new(), "local");
                            }
                            seq += 1;
                        }
                        None => acks = None,
                    }
                }
                joined = &mut task, if result.is_none() => {
                    result = Some(joined.unwrap_or_else(|_| {
                        Err(CallError::internal(format!("{} panicked", cap.name)))
                    }));
                    // Drain what the service sent before finishing.
                    while let Ok(item) = items.try_recv() {
                        if let Item::Data(bytes) = item {
                            let bytes = match wire_data(cap, json, transcript.frames(), bytes) {
                                Ok(b) => b,
                                Err(e) => { result = Some(Err(e)); break; }
                            };
                            transcript.push(seq, &bytes);
                            if tx.send(Frame { seq, kind: Some(frame::Kind::Data(bytes)) }).await.is_err() {
                                return ("timeout".into(), transcript.frames(), String::new(), "local");
                            }
                            seq += 1;
                        }
                    }
                    break;
                }
                _ = &mut sleep => {
                    result = Some(Err(CallError::new(ErrorCode::Timeout, format!("deadline of {} passed", cap.name))));
                    break;
                }
                _ = tx.closed() => {
                    return ("timeout".into(), transcript.frames(), String::new(), "local");
                }
            }
        }
        let result = result.unwrap_or_else(|| Err(CallError::internal("no result")));
        let result = match result {
            Ok(()) if cap.streaming == Streaming::Unary && transcript.frames() != 1 => Err(
                CallError::internal("unary capability finished without a response"),
            ),
            other => other,
        };
        // The work is over: free the slot before the terminal frame, so that
        // a caller's next call (sent on receipt of it) finds the slot free.
        drop(slot);
        match result {
            Ok(()) => {
                let mut done = Done {
                    frames: transcript.frames(),
                    transcript_hash: transcript.hash().to_vec(),
                    signer: self.inner.me_text.clone(),
                    signature: transcript
                        .sign_done(&self.inner.key, &call.request_id)
                        .to_vec(),
                };
                if faults::on(Fault::CorruptDoneSignature)
                    && let Some(b) = done.signature.first_mut()
                {
                    *b ^= 1;
                }
                if !faults::on(Fault::DropFinalDone) {
                    let _ = tx
                        .send(Frame {
                            seq,
                            kind: Some(frame::Kind::Done(done)),
                        })
                        .await;
                }
                ("ok".into(), transcript.frames(), String::new(), "local")
            }
            Err(e) => {
                let _ = tx.send(error_frame(seq, &e)).await;
                (
                    e.code.wire_name().into(),
                    transcript.frames(),
                    String::new(),
                    "local",
                )
            }
        }
    }

    /// The (cached, lazily connected) client for a peer endpoint, signing as
    /// this node.
    pub fn peer_client(&self, endpoint: &str) -> Result<Client, CallError> {
        let mut clients = self.inner.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(endpoint) {
            return Ok(c.clone());
        }
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| {
                CallError::new(
                    ErrorCode::Partition,
                    format!("bad endpoint {endpoint}: {e}"),
                )
            })?
            .tcp_nodelay(true)
            .http2_adaptive_window(true)
            .connect_timeout(Duration::from_secs(3))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .connect_lazy();
        let client = Client::with_channel(channel, self.inner.key.clone());
        clients.insert(endpoint.to_string(), client.clone());
        Ok(client)
    }

    fn record_health(&self, key: &(String, String, u32), ok: bool, ms: u32) {
        let now = Instant::now();
        let mut health = self.inner.health.lock().unwrap_or_else(|e| e.into_inner());
        if health.entry(key.clone()).or_default().record(ok, ms, now) {
            self.inner.metrics.quarantines.inc();
            tracing::warn!(node = %key.0, capability = %key.1, "provider quarantined");
        }
    }

    async fn forward(
        &self,
        cap: &'static Capability,
        call: CallRequest,
        candidates: Vec<(String, String, u32)>,
        deadline: Instant,
        tx: &mpsc::Sender<Frame>,
    ) -> (String, u64, String, &'static str) {
        let attempts = if cap.idempotent {
            1 + k::BUS_IDEMPOTENT_RETRY_COUNT as usize
        } else {
            1
        };
        let mut last = CallError::new(ErrorCode::Partition, "no provider answered");
        let mut last_peer = String::new();
        for key in candidates.into_iter().take(attempts) {
            let entry = {
                let remote = self.inner.remote.read().unwrap_or_else(|e| e.into_inner());
                remote.get(&key).cloned()
            };
            let Some(entry) = entry else { continue };
            last_peer = entry.node.to_string();
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                last = CallError::new(ErrorCode::Timeout, "deadline passed");
                break;
            }
            let mut fwd = call.clone();
            fwd.timestamp = Some(Timestamp::now());
            fwd.min_version = entry.version_text.clone();
            sign_call(&self.inner.key, &mut fwd);
            entry.in_flight.fetch_add(1, Ordering::AcqRel);
            let started = Instant::now();
            let outcome = self.relay(fwd, &entry, remaining, tx).await;
            entry.in_flight.fetch_sub(1, Ordering::AcqRel);
            let ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
            match outcome {
                Relay::Done(frames) => {
                    self.record_health(&key, true, ms);
                    return ("ok".into(), frames, last_peer, "remote");
                }
                Relay::Failed { error, frames_sent } => {
                    let fault = error.is_provider_fault();
                    self.record_health(&key, !fault, ms);
                    if frames_sent > 0 || !fault {
                        let _ = tx.send(error_frame(frames_sent, &error)).await;
                        return (
                            error.code.wire_name().into(),
                            frames_sent,
                            last_peer,
                            "remote",
                        );
                    }
                    last = error;
                }
                Relay::CallerGone(frames) => {
                    return ("timeout".into(), frames, last_peer, "remote");
                }
            }
        }
        let _ = tx.send(error_frame(0, &last)).await;
        (last.code.wire_name().into(), 0, last_peer, "remote")
    }

    async fn relay(
        &self,
        call: CallRequest,
        entry: &RemoteEntry,
        remaining: Duration,
        tx: &mpsc::Sender<Frame>,
    ) -> Relay {
        let client = match self.peer_client(&entry.endpoint) {
            Ok(c) => c,
            Err(error) => {
                return Relay::Failed {
                    error,
                    frames_sent: 0,
                };
            }
        };
        let mut stream = match client.send(call, Some(remaining)).await {
            Ok(s) => s,
            Err(e) => {
                return Relay::Failed {
                    error: client_error(e),
                    frames_sent: 0,
                };
            }
        };
        let mut seq = 0u64;
        let mut data_frames = 0u64;
        let sleep = tokio::time::sleep(remaining);
        tokio::pin!(sleep);
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = &mut sleep => return Relay::Failed {
                    error: CallError::new(ErrorCode::Timeout, "peer did not finish before the deadline"),
                    frames_sent: seq,
                },
                _ = tx.closed() => return Relay::CallerGone(data_frames),
            };
            let frame = match item {
                Ok(Some(CallItem::Data(d))) => {
                    data_frames += 1;
                    frame::Kind::Data(d)
                }
                Ok(Some(CallItem::Progress(p))) => frame::Kind::Progress(p),
                Ok(Some(CallItem::Done(done))) => {
                    if tx
                        .send(Frame {
                            seq,
                            kind: Some(frame::Kind::Done(done)),
                        })
                        .await
                        .is_err()
                    {
                        return Relay::CallerGone(data_frames);
                    }
                    return Relay::Done(data_frames);
                }
                Ok(None) => return Relay::Done(data_frames),
                Err(e) => {
                    return Relay::Failed {
                        error: client_error(e),
                        frames_sent: seq,
                    };
                }
            };
            if tx
                .send(Frame {
                    seq,
                    kind: Some(frame),
                })
                .await
                .is_err()
            {
                return Relay::CallerGone(data_frames);
            }
            seq += 1;
        }
    }

    /// Calls a capability as this node (signing with the node key), the way
    /// the CLI, the UI and services reach the mesh.
    pub fn call_as_self(
        &self,
        capability: &str,
        min_version: &str,
        encoding: PayloadEncoding,
        payload: Vec<u8>,
        timeout: Option<Duration>,
    ) -> ReceiverStream<Frame> {
        let mut call = CallRequest {
            capability: capability.to_string(),
            min_version: min_version.to_string(),
            request_id: ulid::Ulid::new().to_string(),
            caller: String::new(),
            community: self.inner.settings.community.clone().unwrap_or_default(),
            timestamp: Some(Timestamp::now()),
            encoding: encoding as i32,
            payload,
            schema_hash: String::new(),
            token: String::new(),
            signature: Vec::new(),
        };
        self.sign(&mut call);
        self.serve(
            call,
            Inbound {
                timeout,
                input: None,
            },
        )
    }

    /// Calls a unary capability as this node and decodes the response.
    ///
    /// A capability served locally runs in-process without signatures (the
    /// caller is this process); one served by a peer goes through the signed
    /// path and is forwarded.
    pub async fn unary<Req: Message, Resp: Message + Default>(
        &self,
        capability: &str,
        min_version: &str,
        req: &Req,
    ) -> Result<Resp, CallError> {
        let data = self
            .call_in_process(capability, min_version, req.encode_to_vec())
            .await?;
        Resp::decode(data.as_slice()).map_err(|e| CallError::internal(e.to_string()))
    }

    /// Calls a unary capability as this node with an encoded request and
    /// returns the encoded response (see [`Bus::unary`]).
    pub async fn call_in_process(
        &self,
        capability: &str,
        min_version: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, CallError> {
        let min = registry::parse_version(min_version).ok_or_else(|| {
            CallError::bad_request(format!("min_version `{min_version}` is not MAJOR.MINOR"))
        })?;
        let want = routing_param_of(capability, false, &payload);
        let local = {
            let local = self.inner.local.read().unwrap_or_else(|e| e.into_inner());
            local
                .get(&(capability.to_string(), min.0))
                .filter(|e| self.visible(e))
                .filter(|e| e.offer.capability.version_numbers().1 >= min.1)
                .filter(|e| e.offer.capability.streaming == Streaming::Unary)
                .filter(|e| want.as_ref().is_none_or(|w| w.listed_in(&e.offer.params)))
                .map(|e| {
                    (
                        e.offer.capability,
                        e.service.clone(),
                        e.in_flight.clone(),
                        e.offer.max_concurrent,
                    )
                })
        };
        let Some((cap, service, in_flight, max)) = local else {
            return self.unary_signed(capability, min_version, payload).await;
        };
        let _slot = SlotGuard::claim(cap, in_flight, max, &self.inner.metrics)?;
        let timeout = cap_timeout(cap);
        let cancel = CancellationToken::new();
        let req = Request {
            capability: cap,
            payload,
            caller: self.inner.me,
            trust: Trust::Operator,
            request_id: ulid::Ulid::new().to_string(),
            deadline: Instant::now() + timeout,
            cancel: cancel.clone(),
            input: None,
        };
        let (sink, mut items) = Sink::channel(4);
        let result = tokio::time::timeout(timeout, service.call(req, sink)).await;
        cancel.cancel();
        match result {
            Err(_) => Err(CallError::new(
                ErrorCode::Timeout,
                format!("deadline of {} passed", cap.name),
            )),
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => {
                let mut data = None;
                while let Ok(item) = items.try_recv() {
                    if let Item::Data(d) = item
                        && data.replace(d).is_some()
                    {
                        return Err(CallError::internal(
                            "unary capability produced two responses",
                        ));
                    }
                }
                data.ok_or_else(|| {
                    CallError::internal("unary capability finished without a response")
                })
            }
        }
    }

    async fn unary_signed(
        &self,
        capability: &str,
        min_version: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, CallError> {
        use tokio_stream::StreamExt;
        let mut stream = self.call_as_self(
            capability,
            min_version,
            PayloadEncoding::Proto,
            payload,
            None,
        );
        let mut data = None;
        while let Some(frame) = stream.next().await {
            match frame.kind {
                Some(frame::Kind::Data(d)) => data = Some(d),
                Some(frame::Kind::Error(e)) => return Err(CallError::from_wire(&e)),
                Some(frame::Kind::Done(_)) => break,
                _ => {}
            }
        }
        data.ok_or_else(|| CallError::internal("no response"))
    }
}

enum Route {
    Local((String, u32)),
    Remote(Vec<(String, String, u32)>),
}

enum Relay {
    Done(u64),
    Failed { error: CallError, frames_sent: u64 },
    CallerGone(u64),
}

struct SlotGuard(Arc<AtomicU32>, Arc<Metrics>);

impl SlotGuard {
    /// Takes one of a local provider's `max` slots (0 = unlimited), or
    /// refuses with `capacity_exceeded`.
    fn claim(
        cap: &Capability,
        in_flight: Arc<AtomicU32>,
        max: u32,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, CallError> {
        let claimed = in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            if max == 0 || n < max {
                Some(n + 1)
            } else {
                None
            }
        });
        if claimed.is_err() {
            return Err(CallError::new(
                ErrorCode::CapacityExceeded,
                format!("{} is at its concurrency limit ({max})", cap.name),
            )
            .retry_after(1000));
        }
        metrics.in_flight.inc();
        Ok(Self(in_flight, metrics.clone()))
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        self.1.in_flight.dec();
    }
}

/// One data frame as it goes on the wire: at most one for a unary
/// capability, converted to JSON for a JSON caller, within the payload limit.
fn wire_data(
    cap: &Capability,
    json: bool,
    frames_so_far: u64,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, CallError> {
    if cap.streaming == Streaming::Unary && frames_so_far >= 1 {
        return Err(CallError::internal(
            "unary capability produced two responses",
        ));
    }
    let bytes = if json {
        hearthnet_sdk::json::proto_bytes_to_json(cap.response, &bytes)
            .map_err(|e| CallError::internal(e.to_string()))?
            .into_bytes()
    } else {
        bytes
    };
    if bytes.len() > k::BUS_MAX_PAYLOAD_BYTES as usize {
        return Err(CallError::internal(
            "response frame exceeds the payload limit",
        ));
    }
    Ok(bytes)
}

fn load(in_flight: &AtomicU32, max: u32) -> f64 {
    f64::from(in_flight.load(Ordering::Acquire)) / f64::from(max.max(1))
}

fn saturated(in_flight: &AtomicU32, max: u32) -> bool {
    max != 0 && in_flight.load(Ordering::Acquire) >= max
}

fn cap_timeout(cap: &Capability) -> Duration {
    let secs = if cap.timeout_seconds == 0 {
        k::RPC_DEFAULT_TIMEOUT_SECONDS as u64
    } else {
        u64::from(cap.timeout_seconds)
    };
    Duration::from_secs(secs)
}

/// Feeds a service the client frames of an `Open` call: JSON frames are
/// decoded to protobuf, and every `STREAM_ACK_INTERVAL_FRAMES` frames taken
/// the seq of the last one goes out as an `ack`.
fn pump_client_frames(
    cap: &'static Capability,
    json: bool,
    mut raw: mpsc::Receiver<(u64, Vec<u8>)>,
) -> (mpsc::Receiver<u64>, Input) {
    let (ack_tx, ack_rx) = mpsc::channel(64);
    let (in_tx, in_rx) = mpsc::channel(k::STREAM_WINDOW_FRAMES as usize);
    tokio::spawn(async move {
        let mut taken = 0u64;
        while let Some((seq, bytes)) = raw.recv().await {
            let msg = if json {
                std::str::from_utf8(&bytes)
                    .map_err(|_| CallError::bad_request("JSON client frame is not UTF-8"))
                    .and_then(|t| {
                        hearthnet_sdk::json::json_to_proto_bytes(cap.request, t)
                            .map_err(|e| CallError::bad_request(e.to_string()))
                    })
            } else {
                Ok(bytes)
            };
            let failed = msg.is_err();
            if in_tx.send(msg).await.is_err() || failed {
                return;
            }
            taken += 1;
            if taken.is_multiple_of(k::STREAM_ACK_INTERVAL_FRAMES as u64) {
                let _ = ack_tx.send(seq).await;
            }
        }
    });
    (ack_rx, Input::new(in_rx))
}

/// Request params that choose among providers: capability, the field of
/// the request's `params`, and the advertised params that list the values a
/// provider serves (comma-separated, decision 0062; exact names, 0061).
const PARAM_ROUTES: &[(&str, &str, &[&str])] = &[
    ("rag.query", "corpus", &["corpora", LOCAL_CORPORA]),
    (
        "rag.ingest",
        "corpus",
        &["corpora_available", LOCAL_CORPORA],
    ),
    ("llm.chat", "model", &["model", "models"]),
    ("llm.complete", "model", &["model", "models"]),
    ("embed.text", "model", &["model"]),
    ("rerank.text", "model", &["model"]),
];

/// A param naming corpora served to this node's operator only (`personal`,
/// RAG-008); like every param whose key starts with `local.`, it routes
/// local calls and is never advertised.
pub const LOCAL_CORPORA: &str = "local.corpora";

fn advertised(params: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    params
        .iter()
        .filter(|(k, _)| !k.starts_with("local."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A routing param of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Want {
    field: &'static str,
    value: String,
    keys: &'static [&'static str],
}

impl Want {
    fn listed_in(&self, params: &BTreeMap<String, String>) -> bool {
        self.keys.iter().any(|k| {
            params
                .get(*k)
                .is_some_and(|v| v.split(',').any(|x| x == self.value))
        })
    }
}

/// The routing param of a call, when its capability has one and the
/// request sets it (an empty value means "any provider").
fn routing_param(call: &CallRequest) -> Option<Want> {
    routing_param_of(
        &call.capability,
        call.encoding == PayloadEncoding::Json as i32,
        &call.payload,
    )
}

fn routing_param_of(capability: &str, json: bool, payload: &[u8]) -> Option<Want> {
    let &(_, field, keys) = PARAM_ROUTES.iter().find(|r| r.0 == capability)?;
    let value = if json {
        let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
        v.get("params")?.get(field)?.as_str()?.to_string()
    } else {
        let cap = registry::capability(capability)?;
        let desc = hearthnet_sdk::descriptor_pool().get_message_by_name(cap.request)?;
        let msg = prost_reflect::DynamicMessage::decode(desc, payload).ok()?;
        let params = msg.get_field_by_name("params")?;
        let params = params.as_message()?;
        params.get_field_by_name(field)?.as_str()?.to_string()
    };
    (!value.is_empty()).then_some(Want { field, value, keys })
}

/// An `error` frame.
pub fn error_frame(seq: u64, e: &CallError) -> Frame {
    Frame {
        seq,
        kind: Some(frame::Kind::Error(e.to_wire())),
    }
}

fn client_error(e: ClientError) -> CallError {
    match e {
        ClientError::Remote(w) => CallError::from_wire(&w),
        ClientError::Status(s) if s.code() == tonic::Code::DeadlineExceeded => {
            CallError::new(ErrorCode::Timeout, s.message().to_string())
        }
        other => CallError::new(ErrorCode::Partition, format!("peer unreachable: {other}")),
    }
}

/// Validates a JSON payload against the message's published schema.
pub fn check_json(message: &str, text: &str) -> Result<(), CallError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| CallError::bad_request(format!("malformed JSON: {e}")))?;
    hearthnet_sdk::validate::validate_message_value(message, &value).map_err(|e| {
        let mut err = CallError::bad_request(format!("JSON does not match {message}: {e}"));
        err.pointers = e.violations().iter().map(|v| v.pointer.clone()).collect();
        err
    })
}
