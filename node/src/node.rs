//! The composition root: loads keys, builds the bus, registers services,
//! binds the server and follows static peers.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use hearthnet_sdk::identity::SecretKey;
use hearthnet_sdk::proto::hearthnet::common::v1::Endpoint;
use hearthnet_sdk::proto::hearthnet::identity::v1::SignedEnvelope;

use crate::bus::{Bus, Service, Settings, Trust};
use crate::config::{Config, ConfigError};
use crate::events::sync::EventService;
use crate::events::{Durability, EventLog};
use crate::faults::{self, Fault};
use crate::obs::{Metrics, TraceRing};
use crate::services::builtin::{Diag, Introspection, NodeInfo};
use crate::services::chat::ChatService;
use crate::services::files::{FileService, FileSettings};
use crate::services::market::MarketService;
use crate::transport::{self, Limits, http::HttpState};

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The key file is missing and `identity.auto_generate` is off.
    #[error("no key at {0}; run `hearthnet init`")]
    NoKey(String),
    /// The key file cannot be read or written.
    #[error("key file: {0}")]
    Key(#[from] hearthnet_sdk::identity::KeyFileError),
    /// A directory cannot be created.
    #[error("cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The port cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Two services offer one capability.
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    /// The blob store cannot be opened.
    #[error("blob store: {0}")]
    Blobs(String),
    /// The corpora cannot be opened.
    #[error("corpora: {0}")]
    Rag(String),
    /// The community event log cannot be opened.
    #[error("event log: {0}")]
    Events(#[from] crate::events::EventError),
}

/// Loads the node key, creating it (0600) when allowed.
pub fn load_or_create_key(path: &Path, create: bool) -> Result<SecretKey, StartError> {
    if path.exists() {
        if !faults::on(Fault::NewIdentityOnRestart) {
            return Ok(SecretKey::load(path)?);
        }
        // The mutant forgets its identity (the saved key is replaced).
        let _ = std::fs::remove_file(path);
    }
    if !create {
        return Err(StartError::NoKey(path.display().to_string()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| StartError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let key = SecretKey::generate()?;
    key.save(path)?;
    tracing::info!(path = %path.display(), node = %key.node_id(), "created node key");
    Ok(key)
}

/// Builds a node from a configuration.
pub struct NodeBuilder {
    config: Config,
    key: Option<SecretKey>,
    services: Vec<Arc<dyn Service>>,
    diag: bool,
}

impl NodeBuilder {
    /// A builder for `config`.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            key: None,
            services: Vec::new(),
            diag: true,
        }
    }

    /// Uses this key instead of the key file.
    pub fn key(mut self, key: SecretKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Registers an extra service.
    pub fn service(mut self, service: Arc<dyn Service>) -> Self {
        self.services.push(service);
        self
    }

    /// Whether the built-in `diag.*` capabilities are served (default yes).
    pub fn diag(mut self, on: bool) -> Self {
        self.diag = on;
        self
    }

    /// Starts the node: binds the port and serves until shut down.
    pub async fn start(self) -> Result<RunningNode, StartError> {
        let config = self.config;
        let key = match self.key {
            Some(k) => k,
            None => load_or_create_key(&config.key_file()?, config.identity.auto_generate)?,
        };
        let key = Arc::new(key);
        let mut trust = std::collections::HashMap::new();
        for (list, level) in [
            (&config.trust.members, Trust::Member),
            (&config.trust.trusted, Trust::Trusted),
            (&config.trust.anchors, Trust::Anchor),
        ] {
            for id in list {
                trust.insert(id.clone(), level);
            }
        }
        let metrics = Arc::new(Metrics::new());
        let traces = Arc::new(TraceRing::new(
            hearthnet_sdk::constants::TRACE_RING_BUFFER as usize,
        ));
        let bus = Bus::new(
            key.clone(),
            Settings {
                community: config.community.community_id.clone(),
                prefer_local: config.bus.prefer_local,
                local_load_threshold: config.bus.local_load_threshold,
                trust,
            },
            metrics,
            traces,
        );
        let addr = format!("{}:{}", config.transport.host, config.transport.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| StartError::Bind {
            addr: addr.clone(),
            source,
        })?;
        let info = NodeInfo {
            display_name: config.node.display_name.clone(),
            profile: config.node.profile.clone(),
            community: config.community.community_id.clone(),
            endpoints: vec![Endpoint {
                transport: "grpc".into(),
                host: local.ip().to_string(),
                port: u32::from(local.port()),
            }],
            started: Instant::now(),
        };
        let introspection = Introspection::new(bus.clone(), info);
        bus.register(introspection.clone())?;
        if self.diag {
            bus.register(Diag::new(&bus))?;
        }
        let mut background = Vec::new();
        let events = match config.community_dir()? {
            None => None,
            Some(dir) => {
                let community = config.community.community_id.clone().unwrap_or_default();
                let durability = if config.community.fsync_every_event {
                    Durability::Power
                } else {
                    Durability::Process
                };
                let log = EventLog::open(
                    &dir.join("events"),
                    durability,
                    key.clone(),
                    &community,
                    &config.community.name,
                )?;
                log.attach(&bus);
                bus.register(EventService::new(log.clone()))?;
                bus.register(crate::events::community::CommunityService::new(log.clone()))?;
                if config.market.enabled {
                    let market = MarketService::new(log.clone(), bus.clone());
                    bus.register(market.clone())?;
                    background.push(Background::Market(market));
                }
                if config.chat.enabled {
                    let chat = ChatService::new(log.clone());
                    bus.register(chat.clone())?;
                    background.push(Background::Chat(chat));
                }
                log.start();
                Some(log)
            }
        };
        let store = crate::blobs::BlobStore::open(&config.blobs_dir()?, config.file.quota_bytes)
            .map_err(|e| StartError::Blobs(e.to_string()))?
            .fsync(config.file.fsync);
        let files = FileService::new(
            Arc::new(store),
            &bus,
            events.clone(),
            FileSettings {
                replica: config.file.replica,
                desired_copies: config.file.desired_copies,
                replication_interval: Duration::from_secs(
                    config.file.replication_interval_seconds.max(1),
                ),
                min_free_bytes: config.file.min_free_bytes,
            },
        );
        bus.register(files.clone())?;
        let loopback = if local.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            local.ip()
        };
        bus.register(crate::services::conformance::ConformanceService::new(
            &config.data_dir()?.join("conformance"),
            &bus,
            format!("grpc://{}", SocketAddr::new(loopback, local.port())),
            events.clone(),
        ))?;
        let mut rag = None;
        if config.rag.enabled {
            let store = crate::rag::store::RagStore::open(&config.corpora_dir()?)
                .map_err(|e| StartError::Rag(e.to_string()))?;
            rag = Some(store.clone());
            let service = crate::services::rag::RagService::new(
                store,
                files.store().clone(),
                &bus,
                events.clone(),
                crate::services::rag::RagSettings {
                    corpora: config.rag.corpora.clone(),
                    embedding_model: config
                        .rag
                        .embedding_model
                        .clone()
                        .unwrap_or_else(|| config.embedding.model.clone()),
                    rerank: config.rag.rerank,
                },
            )
            .map_err(|e| StartError::Rag(e.to_string()))?;
            bus.register(Arc::new(crate::services::rag::RagHandle(service)))?;
        }
        #[cfg(feature = "models")]
        for s in crate::services::local_models(&config).await {
            bus.register(s)?;
        }
        if let Some(s) = crate::services::llm_service(&config).await {
            bus.register(s)?;
        }
        for s in self.services {
            bus.register(s)?;
        }
        let state = HttpState {
            bus: bus.clone(),
            allow_unsigned_loopback: config.transport.allow_unsigned_loopback,
            metrics_enabled: config.observability.metrics_enabled,
            blobs: Some(files.store().clone()),
        };
        let app = transport::app(bus.clone(), state);
        let shutdown = CancellationToken::new();
        let limits = Limits {
            max_connections: config.transport.max_connections,
            first_byte_timeout: Duration::from_secs(config.transport.first_byte_timeout_seconds),
            shutdown_grace: Duration::from_secs(config.transport.shutdown_grace_seconds),
        };
        let server = tokio::spawn(transport::serve(listener, app, limits, shutdown.clone()));
        let refresh = Duration::from_secs(config.discovery.refresh_seconds);
        let tasks = TaskTracker::new();
        if config.emergency.enabled {
            let e = &config.emergency;
            let s = Duration::from_secs;
            let detector = crate::emergency::Emergency::new(
                &e.probe_targets,
                crate::emergency::Timings {
                    debounce: s(e.transition_debounce_seconds),
                    recovery: s(e.online_recovery_seconds),
                    interval_online: s(e.probe_interval_online_seconds.max(1)),
                    interval_offline: s(e.probe_interval_offline_seconds.max(1)),
                    ..Default::default()
                },
                events.clone(),
                &bus,
            );
            bus.register(detector.clone())?;
            tasks.spawn(detector.run(shutdown.clone()));
        }
        if let Some(log) = &events {
            for b in background {
                b.spawn(log.clone(), &tasks, shutdown.clone());
            }
            crate::events::sync::spawn_folder(log.clone(), &tasks, shutdown.clone());
            {
                let files = files.clone();
                let stop = shutdown.clone();
                tasks.spawn(async move { files.run_replication(stop).await });
            }
            crate::events::sync::spawn_loop(
                log.clone(),
                bus.clone(),
                Duration::from_secs(config.community.sync_interval_seconds),
                &tasks,
                shutdown.clone(),
            );
        }
        let follower = crate::discovery::Follower::new(
            bus.clone(),
            refresh,
            Duration::from_secs(config.discovery.prune_seconds),
            config.community.community_id.clone(),
            tasks.clone(),
            shutdown.clone(),
        );
        bus.register(crate::discovery::DiscoveryService::new(
            follower.clone(),
            events.clone(),
        ))?;
        if config.discovery.udp_enabled
            && let Some(community) = &config.community.community_id
            && let Some(short_community) = crate::discovery::short_community(community)
        {
            let group = config
                .discovery
                .udp_multicast_group
                .parse()
                .unwrap_or(std::net::Ipv4Addr::new(239, 255, 42, 42));
            let me = crate::discovery::Me {
                short: bus.node_id().short(),
                community: short_community,
                port: local.port(),
            };
            // DISC-023: the node runs on without UDP discovery.
            if let Err(e) = crate::discovery::spawn_udp(
                bus.clone(),
                me,
                group,
                config.discovery.udp_port,
                follower.clone(),
                &tasks,
                shutdown.clone(),
            ) {
                tracing::warn!(error = %e, "UDP discovery is off");
            }
        }
        if config.discovery.mdns_enabled
            && let Some(community) = &config.community.community_id
            && let Some(short_community) = crate::discovery::short_community(community)
        {
            let me = crate::discovery::Me {
                short: bus.node_id().short(),
                community: short_community,
                port: local.port(),
            };
            let ip = Some(local.ip()).filter(|ip| !ip.is_unspecified());
            if let Err(e) = crate::discovery::spawn_mdns(
                bus.clone(),
                me,
                match config.node.profile.as_str() {
                    p @ ("anchor" | "spark" | "bridge") => p,
                    _ => "hearth",
                },
                ip,
                follower.clone(),
                &tasks,
                shutdown.clone(),
            ) {
                tracing::warn!(error = %e, "mDNS discovery is off");
            }
        }
        let node = RunningNode {
            addr: local,
            bus,
            shutdown,
            server,
            follower,
            events,
            files,
            rag,
            introspection,
            tasks,
        };
        for peer in &config.discovery.static_peers {
            if !faults::on(Fault::IgnoreStaticPeers) {
                node.add_peer(peer);
            }
        }
        if let (Some(log), Some(url)) = (&node.events, &config.community.join_via)
            && !log.catch_up(|m| m.is_member(&log.node_id().to_string()))
        {
            node.spawn_join(url.clone());
        }
        tracing::info!(node = %node.bus.node_id(), addr = %local, "node listening (gRPC and HTTP/JSON)");
        Ok(node)
    }
}

/// Periodic work of the log-backed services.
enum Background {
    /// The stale-post sweeper (MARKET-011, every 60 s).
    Market(Arc<MarketService>),
    /// Delivery receipts for messages to this node (CHAT-018).
    Chat(Arc<ChatService>),
}

impl Background {
    fn spawn(self, log: EventLog, tasks: &TaskTracker, stop: CancellationToken) {
        tasks.spawn(async move {
            let mut changed = log.watch();
            loop {
                match &self {
                    Background::Market(m) => {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                        }
                        let m = m.clone();
                        let now = hearthnet_sdk::wkt::Timestamp::now().seconds;
                        let r = tokio::task::spawn_blocking(move || m.sweep_stale(now)).await;
                        if let Ok(Err(e)) = r {
                            tracing::debug!(error = %e, "stale sweep failed");
                        }
                    }
                    Background::Chat(c) => {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            r = crate::events::sync::settled(&mut changed) => if !r { return },
                        }
                        let c = c.clone();
                        let r = tokio::task::spawn_blocking(move || c.acknowledge_new()).await;
                        if let Ok(Err(e)) = r {
                            tracing::debug!(error = %e, "delivery receipts failed");
                        }
                    }
                }
            }
        });
    }
}

/// A started node.
pub struct RunningNode {
    addr: SocketAddr,
    bus: Bus,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
    follower: crate::discovery::Follower,
    events: Option<EventLog>,
    files: Arc<FileService>,
    rag: Option<Arc<crate::rag::store::RagStore>>,
    introspection: Arc<Introspection>,
    tasks: TaskTracker,
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RunningNode {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr` for clients.
    pub fn url(&self) -> String {
        transport::url(self.addr)
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The community event log, when a community is configured.
    pub fn events(&self) -> Option<&EventLog> {
        self.events.as_ref()
    }

    /// The file service (blob store, downloads, replication).
    pub fn files(&self) -> &Arc<FileService> {
        &self.files
    }

    /// The RAG corpora, when `rag.enabled`.
    pub fn rag(&self) -> Option<&Arc<crate::rag::store::RagStore>> {
        self.rag.as_ref()
    }

    /// Joins the configured community: syncs with `inviter_url` as a pending
    /// invitee, authors `community.member.joined` redeeming the invite found
    /// in the log, and pushes it back.
    pub async fn join_community(&self, inviter_url: &str) -> Result<String, String> {
        let log = self.events.as_ref().ok_or("no community configured")?;
        join_via(log, &self.introspection, inviter_url)
            .await?
            .ok_or_else(|| "already a member".to_string())
    }

    /// Tries to join through `url` every 10 s until this node is a member.
    fn spawn_join(&self, url: String) {
        let tasks = self.tasks.clone();
        let (Some(log), bus) = (self.events.clone(), self.bus.clone()) else {
            return;
        };
        let manifest = self.introspection.clone();
        let stop = self.shutdown.clone();
        tasks.spawn(async move {
            loop {
                match join_via(&log, &manifest, &url).await {
                    Ok(_) => {
                        tracing::info!(via = %url, "joined the community");
                        let _ = refresh_peer(&bus, &url).await;
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(via = %url, error = %e, "joining the community failed; retrying")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        });
    }

    /// Follows a peer at `url`: fetches and verifies its signed manifest now
    /// and every refresh interval, feeding its capabilities to the bus.
    pub fn add_peer(&self, url: &str) {
        self.follower.follow(
            url.to_string(),
            None,
            true,
            hearthnet_sdk::proto::hearthnet::discovery::v1::PeerSource::Static,
        );
    }

    /// Fetches one peer's manifest now (tests use this to avoid waiting).
    pub async fn refresh_peer(&self, url: &str) -> Result<String, String> {
        refresh_peer(&self.bus, url).await
    }

    /// Stops accepting connections, lets in-flight calls finish (within the
    /// grace period) and returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// A token that stops the node when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the server loop ends.
    pub async fn wait(self) {
        let RunningNode {
            server,
            events,
            tasks,
            shutdown,
            bus,
            ..
        } = self;
        let _ = server.await;
        // Background work ends with the server.
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
        bus.close();
        if let Some(log) = events {
            if let Err(e) = log.snapshot_now() {
                tracing::warn!(error = %e, "could not write a snapshot of the views");
            }
            log.detach();
        }
    }
}

/// Syncs with `url` as a pending invitee and, unless already a member,
/// authors the join for the invite found and pushes it back. Returns the
/// join's event id, or `None` when this node was a member already.
async fn join_via(
    log: &EventLog,
    introspection: &Introspection,
    url: &str,
) -> Result<Option<String>, String> {
    let round = || async {
        crate::events::sync::round(log, url)
            .await
            .map_err(|e| e.to_string())
    };
    round().await?;
    if log.catch_up(|m| m.is_member(&log.node_id().to_string())) {
        return Ok(None);
    }
    let (bytes, _) = introspection.signed_manifest();
    let env = SignedEnvelope::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
    let joined = log.join(env).map_err(|e| e.to_string())?;
    round().await?;
    Ok(Some(joined.id))
}

async fn refresh_peer(bus: &Bus, url: &str) -> Result<String, String> {
    crate::discovery::fetch_manifest(bus, url, None)
        .await
        .map(|n| n.to_string())
        .map_err(|e| e.to_string())
}
