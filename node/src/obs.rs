//! Observability (X03): `tracing` logs (human or JSON), Prometheus metrics and
//! the ring buffer of recent call traces.

use std::collections::VecDeque;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use hearthnet_sdk::proto::hearthnet::node::v1::TraceEntry;

/// Installs the global `tracing` subscriber (once; later calls are ignored).
pub fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HEARTHNET_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Labels of per-call metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// Capability name.
    pub capability: String,
    /// `ok` or the error wire name.
    pub code: String,
    /// `local`, `remote` or `inbound`.
    pub route: String,
}

/// Labels carrying only a capability.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CapLabels {
    /// Capability name.
    pub capability: String,
}

/// The node's Prometheus metrics.
pub struct Metrics {
    registry: Registry,
    /// `hearthnet_calls_total{capability,code,route}`.
    pub calls: Family<CallLabels, Counter>,
    /// `hearthnet_call_duration_seconds{capability}`.
    pub latency: Family<CapLabels, Histogram>,
    /// `hearthnet_quarantines_total`.
    pub quarantines: Counter,
    /// `hearthnet_peers`.
    pub peers: Gauge,
    /// `hearthnet_calls_in_flight`.
    pub in_flight: Gauge,
    /// `hearthnet_rate_soft_exceeded_total{capability}`.
    pub soft_exceeded: Family<CapLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hearthnet");
        let calls = Family::<CallLabels, Counter>::default();
        let latency = Family::<CapLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let quarantines = Counter::default();
        let peers = Gauge::default();
        let in_flight = Gauge::default();
        let soft_exceeded = Family::<CapLabels, Counter>::default();
        registry.register(
            "calls",
            "Bus calls by capability, result code and route",
            calls.clone(),
        );
        registry.register(
            "call_duration_seconds",
            "Bus call latency by capability",
            latency.clone(),
        );
        registry.register(
            "quarantines",
            "Providers put in quarantine",
            quarantines.clone(),
        );
        registry.register("peers", "Peers with a fresh manifest", peers.clone());
        registry.register(
            "calls_in_flight",
            "Calls being served or forwarded",
            in_flight.clone(),
        );
        registry.register(
            "rate_soft_exceeded",
            "Calls above the soft per-capability rate",
            soft_exceeded.clone(),
        );
        Self {
            registry,
            calls,
            latency,
            quarantines,
            peers,
            in_flight,
            soft_exceeded,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The ring buffer of recent call traces (`TRACE_RING_BUFFER` entries).
#[derive(Debug)]
pub struct TraceRing {
    cap: usize,
    inner: Mutex<VecDeque<TraceEntry>>,
}

impl TraceRing {
    /// A ring keeping `cap` entries.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            inner: Mutex::new(VecDeque::new()),
        }
    }

    /// Appends one trace, dropping the oldest when full.
    pub fn push(&self, entry: TraceEntry) {
        let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == self.cap {
            q.pop_front();
        }
        q.push_back(entry);
    }

    /// The newest `limit` traces (newest first), optionally for one capability.
    pub fn recent(&self, limit: usize, capability: &str) -> Vec<TraceEntry> {
        let q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        q.iter()
            .rev()
            .filter(|t| capability.is_empty() || t.capability == capability)
            .take(limit)
            .cloned()
            .collect()
    }
}
