//! Node configuration (X04): a TOML file with every key of the spec's config
//! section, defaults for all of them, environment overrides and validation
//! whose errors name the file, line and key.
//!
//! Lookup order: `--config PATH`, else `$HEARTHNET_CONFIG`, else
//! `<config dir>/config.toml` (a missing default file means "all defaults").
//! Environment variables `HEARTHNET__<SECTION>__<KEY>=value` override single
//! keys (`HEARTHNET__TRANSPORT__PORT=7081`); values are read as TOML when they
//! parse (`true`, `7081`, `["a"]`) and as strings otherwise.
//! `HEARTHNET_DATA_DIR`, `HEARTHNET_CACHE_DIR` and `HEARTHNET_CONFIG_DIR`
//! move the platform directories.

use std::fmt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use hearthnet_sdk::constants as k;

/// Errors loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a value has the wrong type or name.
    #[error("{path}:{line}:{column}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// Dotted key (`transport.port`), or `-` when the error is not at a key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A value breaks a rule (range, cross-field constraint).
    #[error("{origin}: {key}: {message}")]
    Rule {
        /// `file:line` of the key, `env HEARTHNET__…`, or `default`.
        origin: String,
        /// Dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An environment override is malformed.
    #[error("environment {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// No platform directories could be determined (no home directory).
    #[error("cannot determine the data directory; set HEARTHNET_DATA_DIR")]
    NoDirs,
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where data, cache and logs live.
    pub paths: PathsConfig,
    /// This node's name and profile.
    pub node: NodeConfig,
    /// Keys.
    pub identity: IdentityConfig,
    /// The community this node belongs to.
    pub community: CommunityConfig,
    /// Static trust levels until the community log provides membership.
    pub trust: TrustConfig,
    /// The bus server (gRPC and HTTP/JSON on one port).
    pub transport: TransportConfig,
    /// Peer discovery.
    pub discovery: DiscoveryConfig,
    /// Capability bus routing.
    pub bus: BusConfig,
    /// LLM backends.
    pub llm: LlmConfig,
    /// Embedding model.
    pub embedding: EmbeddingConfig,
    /// Local models and their provisioning.
    pub models: ModelsConfig,
    /// Reranking.
    pub rerank: RerankConfig,
    /// Retrieval.
    pub rag: RagConfig,
    /// Blob store.
    pub file: FileConfig,
    /// Marketplace.
    pub market: MarketConfig,
    /// Chat.
    pub chat: ChatConfig,
    /// Emergency detector.
    pub emergency: EmergencyConfig,
    /// Local web UI.
    pub ui: UiConfig,
    /// Logs, metrics and traces.
    pub observability: ObservabilityConfig,
}

/// `[paths]`: base directories; empty means the platform default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PathsConfig {
    /// Durable data (keys, logs of events, blobs). Default: platform data dir.
    pub data_dir: Option<PathBuf>,
    /// Disposable cache (models). Default: platform cache dir.
    pub cache_dir: Option<PathBuf>,
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Human-readable name shown to neighbours.
    pub display_name: String,
    /// Hardware profile: `auto`, `anchor`, `hearth`, `spark` or `bridge` (decision 0054).
    pub profile: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            display_name: "hearthnet-node".into(),
            profile: "auto".into(),
        }
    }
}

/// `[identity]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Directory of the key files. Default `<DATA>/keys`.
    pub keys_dir: Option<PathBuf>,
    /// Create a key on first start when none exists.
    pub auto_generate: bool,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            keys_dir: None,
            auto_generate: true,
        }
    }
}

/// `[community]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CommunityConfig {
    /// Community id (the root's NodeID); unset means no community yet. A
    /// node whose own NodeID is the id founds the community on first start.
    pub community_id: Option<String>,
    /// Display name written into `community.created` when this node founds it.
    pub name: String,
    /// Community state directory (event log, snapshots). Default
    /// `<DATA>/communities/<first 16 hex digits of BLAKE3(id)>`.
    pub state_dir: Option<PathBuf>,
    /// Seconds between sync rounds with each peer (EVT-034: 300).
    pub sync_interval_seconds: u64,
    /// URL of the inviter's node (`http://host:port`): while this node is
    /// not a member, it syncs with it as a pending invitee and joins with
    /// the invite it finds in the log.
    pub join_via: Option<String>,
    /// `fdatasync` every event write (survives power loss); otherwise each
    /// write reaches the OS before it is acknowledged (survives a crash of
    /// the node process).
    pub fsync_every_event: bool,
}

impl Default for CommunityConfig {
    fn default() -> Self {
        Self {
            community_id: None,
            name: "HearthNet community".into(),
            state_dir: None,
            sync_interval_seconds: 300,
            join_via: None,
            fsync_every_event: false,
        }
    }
}

/// `[trust]`: NodeIDs with a trust level, used until the community event log
/// provides membership (decision 0040).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TrustConfig {
    /// Members.
    pub members: Vec<String>,
    /// Trusted members.
    pub trusted: Vec<String>,
    /// Anchors.
    pub anchors: Vec<String>,
}

/// `[transport]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// Listen address.
    pub host: String,
    /// TCP port for gRPC and HTTP/JSON (0 picks a free port).
    pub port: u16,
    /// TLS certificate (PEM). TLS is not served yet; setting it is refused.
    pub tls_cert: Option<PathBuf>,
    /// TLS key (PEM). See `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Accept unsigned HTTP calls from loopback as the operator (decision 0041).
    pub allow_unsigned_loopback: bool,
    /// Most simultaneous connections; further ones wait in the kernel backlog.
    pub max_connections: usize,
    /// A connection that sends nothing for this long after opening is closed.
    pub first_byte_timeout_seconds: u64,
    /// On shutdown, in-flight calls get this long to finish.
    pub shutdown_grace_seconds: u64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: k::BUS_HTTP_PORT as u16,
            tls_cert: None,
            tls_key: None,
            allow_unsigned_loopback: true,
            max_connections: 1024,
            first_byte_timeout_seconds: 10,
            shutdown_grace_seconds: 10,
        }
    }
}

/// `[discovery]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Announce and browse mDNS.
    pub mdns_enabled: bool,
    /// Announce and listen on UDP multicast.
    pub udp_enabled: bool,
    /// UDP multicast group.
    pub udp_multicast_group: String,
    /// UDP multicast port.
    pub udp_port: u16,
    /// Relay URLs (Phase 2).
    pub relay_urls: Vec<String>,
    /// Peers to contact at start, as `http://host:port`.
    pub static_peers: Vec<String>,
    /// How often peers' manifests are fetched, in seconds (decision 0052).
    pub refresh_seconds: u64,
    /// A discovered peer without a verified manifest for this long is
    /// removed (DISC-020: 90).
    pub prune_seconds: u64,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            mdns_enabled: true,
            udp_enabled: true,
            udp_multicast_group: "239.255.42.42".into(),
            udp_port: k::DISCOVERY_UDP_PORT as u16,
            relay_urls: Vec::new(),
            static_peers: Vec::new(),
            refresh_seconds: 10,
            prune_seconds: 90,
        }
    }
}

/// `[bus]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Prefer a local provider while its load is below `local_load_threshold`.
    pub prefer_local: bool,
    /// Load (in flight / max concurrent) below which a local provider is preferred.
    pub local_load_threshold: f64,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            prefer_local: true,
            local_load_threshold: 0.80,
        }
    }
}

/// The protocol an LLM backend speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LlmBackendKind {
    /// OpenAI-compatible chat completions, `POST {url}/chat/completions`:
    /// Ollama, llama.cpp server, LM Studio, vLLM, OpenAI.
    #[default]
    Openai,
    /// Anthropic's Messages API, `POST {url}/v1/messages`.
    Anthropic,
}

/// One HTTP LLM backend (`[[llm.backends]]`): a model on an
/// OpenAI-compatible server or on Anthropic's API, served next to the local
/// model under one `llm.chat`/`llm.complete` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LlmBackend {
    /// `openai` (OpenAI-compatible) or `anthropic`. Default `openai`.
    pub kind: LlmBackendKind,
    /// The model name callers ask for, advertised in `models` and matched
    /// byte for byte (LLM-004): the publisher's identifier
    /// (`meta-llama/Llama-3.2-3B-Instruct`, `claude-sonnet-4-5`). No commas.
    pub name: String,
    /// Base URL. `openai`: up to and including `/v1` (default
    /// `http://127.0.0.1:11434/v1`, a local Ollama); `anthropic`: the API's
    /// root (default `https://api.anthropic.com`).
    pub url: Option<String>,
    /// The model id sent to the server (`llama3.2:3b`). Default: `name`.
    pub model: Option<String>,
    /// Environment variable holding the API key, sent as
    /// `Authorization: Bearer` (`openai`) or `x-api-key` (`anthropic`).
    /// Default: no key.
    pub api_key_env: Option<String>,
    /// Calls sent to this backend at once; more wait in arrival order.
    /// Default 4.
    pub max_concurrent: Option<u32>,
    /// Context window of the model, in tokens, advertised in `ctx`
    /// (LLM-005). Default 8192.
    pub ctx: Option<u32>,
}

/// `[llm]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// HTTP backends, served with the local model; the first one is the
    /// default model (the local model is the default when there is none).
    pub backends: Vec<LlmBackend>,
    /// Name of the local model, as advertised (the publisher's identifier).
    pub model: String,
    /// GGUF file of the local model. Default: the provisioned SmolLM2.
    pub model_path: Option<PathBuf>,
    /// System message for chats that bring none, on every model; empty adds
    /// none (the local model's chat template then uses its own default).
    pub system_prompt: String,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            backends: Vec::new(),
            model: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
            model_path: None,
            system_prompt: "You are a helpful assistant.".into(),
        }
    }
}

/// `[models]`: local models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// Load local models (and provision the defaults on `hearthnet run`).
    pub enabled: bool,
    /// Where provisioned models live. Default `<CACHE>/models`.
    pub dir: Option<PathBuf>,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
        }
    }
}

/// `[embedding]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// Model id, as advertised (the publisher's identifier).
    pub model: String,
    /// Directory with `model.safetensors`, `config.json` and
    /// `tokenizer.json` (any BERT encoder, e.g. bge-small). Default: the
    /// provisioned all-MiniLM-L6-v2.
    pub model_path: Option<PathBuf>,
    /// `cpu`, `cuda` or `auto`.
    pub device: String,
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        Self {
            model: "sentence-transformers/all-MiniLM-L6-v2".into(),
            model_path: None,
            device: "auto".into(),
        }
    }
}

/// `[rerank]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RerankConfig {
    /// Name of the cross-encoder, as advertised (its publisher's identifier).
    pub model: String,
    /// Directory with a cross-encoder (`model.safetensors` in
    /// BertForSequenceClassification layout, `config.json`,
    /// `tokenizer.json`). Unset: the BM25 fallback `hearthnet/bm25`.
    pub model_path: Option<PathBuf>,
}

impl Default for RerankConfig {
    fn default() -> Self {
        Self {
            model: "cross-encoder/ms-marco-MiniLM-L-6-v2".into(),
            model_path: None,
        }
    }
}

/// `[rag]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RagConfig {
    /// Serve retrieval.
    pub enabled: bool,
    /// Vector stores. Default `<DATA>/corpora`.
    pub corpora_dir: Option<PathBuf>,
    /// Corpora this node creates and accepts documents for (names match
    /// `[a-z0-9-]{1,64}`; `personal` is always there, for the operator
    /// only, and `system` cannot be listed).
    pub corpora: Vec<String>,
    /// Embedding model of new corpora (exact name). Default: `embedding.model`.
    pub embedding_model: Option<String>,
    /// Reorder the fused results with `rerank.text` (through the bus).
    pub rerank: bool,
}

impl Default for RagConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            corpora_dir: None,
            corpora: vec!["community".into()],
            embedding_model: None,
            rerank: false,
        }
    }
}

/// `[file]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Blob directory. Default `<DATA>/blobs`.
    pub blobs_dir: Option<PathBuf>,
    /// Disk use fraction above which unpinned blobs are collected.
    pub gc_threshold: f64,
    /// Most bytes of blobs kept (0 = no quota); unpinned blobs are collected,
    /// oldest first, to make room.
    pub quota_bytes: u64,
    /// Free disk a `file.put` must leave, bytes (FILE-004: 1 GiB).
    pub min_free_bytes: u64,
    /// `fsync` every stored blob before reporting it stored (survives power
    /// loss; slower). Off: a process crash loses nothing, a power cut may
    /// lose recent blobs, and a torn one is caught by read verification.
    pub fsync: bool,
    /// Volunteer as a replica holder for other nodes' pinned blobs.
    pub replica: bool,
    /// Copies wanted of every pinned blob, this node included.
    pub desired_copies: u32,
    /// How often replication is checked, seconds.
    pub replication_interval_seconds: u64,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            blobs_dir: None,
            gc_threshold: 0.80,
            quota_bytes: 0,
            min_free_bytes: 1 << 30,
            fsync: false,
            replica: false,
            desired_copies: 3,
            replication_interval_seconds: 30,
        }
    }
}

/// `[market]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MarketConfig {
    /// Serve the marketplace.
    pub enabled: bool,
    /// Default post lifetime, seconds.
    pub default_ttl_seconds: u64,
    /// Longest post lifetime, seconds.
    pub max_ttl_seconds: u64,
}

impl Default for MarketConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            default_ttl_seconds: 604_800,
            max_ttl_seconds: 2_592_000,
        }
    }
}

/// `[chat]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Serve chat.
    pub enabled: bool,
    /// Hold messages for offline peers (anchor nodes).
    pub store_and_forward: bool,
    /// Send read receipts.
    pub read_receipts_enabled: bool,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            store_and_forward: true,
            read_receipts_enabled: true,
        }
    }
}

/// `[emergency]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EmergencyConfig {
    /// Connectivity probes as `dns://<resolver>[:port]/<name>` or
    /// `https://<host>[:port]/<path>` (decision 0053).
    pub probe_targets: Vec<String>,
    /// Run the connectivity detector (probes leave the LAN; turn off where
    /// the node must not contact the targets).
    pub enabled: bool,
    /// Seconds of unbroken failing ticks from DEGRADED to OFFLINE (EMERG-013:
    /// 30); lower only in labs and tests.
    pub transition_debounce_seconds: u64,
    /// Seconds of unbroken good ticks back to ONLINE (EMERG-014: 10).
    pub online_recovery_seconds: u64,
    /// Probe interval while ONLINE (EMERG-008: 10).
    pub probe_interval_online_seconds: u64,
    /// Probe interval otherwise (EMERG-008: 2).
    pub probe_interval_offline_seconds: u64,
}

impl Default for EmergencyConfig {
    fn default() -> Self {
        Self {
            probe_targets: vec![
                "dns://1.1.1.1/cloudflare.com".into(),
                "dns://8.8.8.8/cloudflare.com".into(),
                "https://cloudflare.com/".into(),
                "https://quad9.net/".into(),
            ],
            enabled: true,
            transition_debounce_seconds: 30,
            online_recovery_seconds: 10,
            probe_interval_online_seconds: 10,
            probe_interval_offline_seconds: 2,
        }
    }
}

/// `[ui]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    /// Listen address of the web UI.
    pub host: String,
    /// Port of the web UI.
    pub port: u16,
    /// Open a browser on start.
    pub launch_browser: bool,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: k::UI_HTTP_PORT as u16,
            launch_browser: true,
        }
    }
}

/// `[observability]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// `error`, `warn`, `info`, `debug` or `trace` (or an env-filter directive).
    pub log_level: String,
    /// `human` or `json`.
    pub log_format: String,
    /// Log directory; unset logs to stderr only.
    pub log_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at `/metrics`.
    pub metrics_enabled: bool,
    /// OTLP endpoint (Phase 2; unused).
    pub otlp_endpoint: Option<String>,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            log_format: "human".into(),
            log_dir: None,
            metrics_enabled: true,
            otlp_endpoint: None,
        }
    }
}

/// Where a loaded configuration came from, for error messages.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The file, when one was read.
    pub path: Option<PathBuf>,
    text: String,
    env_keys: Vec<(String, String)>,
}

impl Source {
    /// `file:line` of a dotted key, the env variable that set it, or `default`.
    pub fn origin(&self, key: &str) -> String {
        if let Some((_, var)) = self.env_keys.iter().find(|(k, _)| k == key) {
            return format!("env {var}");
        }
        if let Some(path) = &self.path
            && let Some(line) = key_line(&self.text, key)
        {
            return format!("{}:{line}", path.display());
        }
        "default".into()
    }
}

/// A validated configuration and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Its source.
    pub source: Source,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{}", p.display()),
            None => f.write_str("defaults"),
        }
    }
}

/// Platform directories (overridable by `HEARTHNET_*_DIR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    /// Config directory.
    pub config: PathBuf,
    /// Data directory.
    pub data: PathBuf,
    /// Cache directory.
    pub cache: PathBuf,
}

impl Dirs {
    /// The platform's directories for HearthNet, with env overrides.
    pub fn platform() -> Result<Self, ConfigError> {
        let env = |v: &str| {
            std::env::var_os(v)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        };
        let proj = directories::ProjectDirs::from("org", "HearthNet", "hearthnet");
        let pick = |var: &str, f: fn(&directories::ProjectDirs) -> &Path| {
            env(var)
                .or_else(|| proj.as_ref().map(|p| f(p).to_path_buf()))
                .ok_or(ConfigError::NoDirs)
        };
        Ok(Self {
            config: pick("HEARTHNET_CONFIG_DIR", |p| p.config_dir())?,
            data: pick("HEARTHNET_DATA_DIR", |p| p.data_dir())?,
            cache: pick("HEARTHNET_CACHE_DIR", |p| p.cache_dir())?,
        })
    }
}

impl Config {
    /// Loads `path` (or the default location), applies environment
    /// overrides and validates.
    pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, &vars)
    }

    /// [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Loaded, ConfigError> {
        let explicit = path.map(Path::to_path_buf).or_else(|| {
            env.iter()
                .find(|(k, v)| k == "HEARTHNET_CONFIG" && !v.is_empty())
                .map(|(_, v)| PathBuf::from(v))
        });
        let (path, text) = match explicit {
            Some(p) => {
                let text = std::fs::read_to_string(&p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                (Some(p), text)
            }
            None => {
                let default = Dirs::platform().ok().map(|d| d.config.join("config.toml"));
                match default {
                    Some(p) if p.exists() => {
                        let text =
                            std::fs::read_to_string(&p).map_err(|source| ConfigError::Read {
                                path: p.clone(),
                                source,
                            })?;
                        (Some(p), text)
                    }
                    _ => (None, String::new()),
                }
            }
        };
        let file_label = path.clone().unwrap_or_else(|| PathBuf::from("<defaults>"));
        let mut config = Self::parse(&text, &file_label)?;
        let env_keys = config.apply_env(env)?;
        let source = Source {
            path,
            text,
            env_keys,
        };
        config.validate(&source)?;
        Ok(Loaded { config, source })
    }

    /// Parses TOML text; errors carry `file:line:column` and the key.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, column, key) = match e.span() {
                Some(span) => {
                    let (l, c) = line_col(text, span.start);
                    (l, c, key_at(text, span.start).unwrap_or_else(|| "-".into()))
                }
                None => (1, 1, "-".into()),
            };
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                key,
                message: e.message().trim().to_string(),
            }
        })
    }

    fn apply_env(
        &mut self,
        env: &[(String, String)],
    ) -> Result<Vec<(String, String)>, ConfigError> {
        let overrides: Vec<_> = env
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("HEARTHNET__").map(|rest| (k, rest, v)))
            .collect();
        if overrides.is_empty() {
            return Ok(Vec::new());
        }
        let mut table = toml::Table::try_from(&*self).map_err(|e| ConfigError::Env {
            var: "HEARTHNET__*".into(),
            message: e.to_string(),
        })?;
        let mut applied = Vec::new();
        for (var, rest, value) in overrides {
            let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if parts.len() != 2 || parts.iter().any(String::is_empty) {
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message: "expected HEARTHNET__<SECTION>__<KEY>".into(),
                });
            }
            let parsed = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.clone()));
            let section = table
                .entry(parts[0].clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(section) = section.as_table_mut() else {
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message: format!("`{}` is not a section", parts[0]),
                });
            };
            section.insert(parts[1].clone(), parsed);
            applied.push((format!("{}.{}", parts[0], parts[1]), var.clone()));
        }
        *self = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Env {
                var: applied
                    .iter()
                    .map(|(_, v)| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                message: e.message().trim().to_string(),
            })?;
        Ok(applied)
    }

    /// Checks ranges and cross-field rules.
    pub fn validate(&self, source: &Source) -> Result<(), ConfigError> {
        let rule = |key: &str, message: String| ConfigError::Rule {
            origin: source.origin(key),
            key: key.into(),
            message,
        };
        let node_id = |key: &str, v: &str| {
            v.parse::<hearthnet_sdk::identity::NodeId>()
                .map(|_| ())
                .map_err(|e| rule(key, format!("`{v}` is not a NodeID: {e}")))
        };
        if let Some(id) = &self.community.community_id {
            node_id("community.community_id", id)?;
        }
        if !(5..=86_400).contains(&self.community.sync_interval_seconds) {
            return Err(rule(
                "community.sync_interval_seconds",
                format!(
                    "{} is outside 5..=86400",
                    self.community.sync_interval_seconds
                ),
            ));
        }
        for (key, list) in [
            ("trust.members", &self.trust.members),
            ("trust.trusted", &self.trust.trusted),
            ("trust.anchors", &self.trust.anchors),
        ] {
            for v in list {
                node_id(key, v)?;
            }
        }
        if self.transport.tls_cert.is_some() || self.transport.tls_key.is_some() {
            let key = if self.transport.tls_cert.is_some() {
                "transport.tls_cert"
            } else {
                "transport.tls_key"
            };
            return Err(rule(
                key,
                "TLS is not served by this version; remove the key (calls are signed end to end)"
                    .into(),
            ));
        }
        if self.transport.host.parse::<std::net::IpAddr>().is_err() {
            return Err(rule(
                "transport.host",
                format!("`{}` is not an IP address", self.transport.host),
            ));
        }
        if self.transport.port != 0
            && self.discovery.udp_enabled
            && self.transport.port == self.discovery.udp_port
        {
            return Err(rule(
                "transport.port",
                format!(
                    "{} is also discovery.udp_port; choose another port",
                    self.transport.port
                ),
            ));
        }
        for name in &self.rag.corpora {
            if crate::rag::check_name(name).is_err() || name == "system" || name == "personal" {
                return Err(rule(
                    "rag.corpora",
                    format!(
                        "`{name}` is not a corpus name this node can create ([a-z0-9-]{{1,64}}, not `system` or `personal`)"
                    ),
                ));
            }
        }
        if self.transport.max_connections == 0 {
            return Err(rule(
                "transport.max_connections",
                "must be at least 1".into(),
            ));
        }
        if self.transport.first_byte_timeout_seconds == 0 {
            return Err(rule(
                "transport.first_byte_timeout_seconds",
                "must be at least 1".into(),
            ));
        }
        for (i, peer) in self.discovery.static_peers.iter().enumerate() {
            let ok = peer
                .parse::<http::Uri>()
                .ok()
                .filter(|u| u.scheme_str() == Some("http") && u.authority().is_some());
            if ok.is_none() {
                return Err(rule(
                    "discovery.static_peers",
                    format!("entry {i} `{peer}` is not an http://host:port URL"),
                ));
            }
        }
        if self.discovery.refresh_seconds == 0 {
            return Err(rule(
                "discovery.refresh_seconds",
                "must be at least 1".into(),
            ));
        }
        if self
            .discovery
            .udp_multicast_group
            .parse::<std::net::Ipv4Addr>()
            .map(|a| a.is_multicast())
            != Ok(true)
        {
            return Err(rule(
                "discovery.udp_multicast_group",
                format!(
                    "`{}` is not an IPv4 multicast address",
                    self.discovery.udp_multicast_group
                ),
            ));
        }
        for (i, t) in self.emergency.probe_targets.iter().enumerate() {
            let ok = t
                .parse::<http::Uri>()
                .ok()
                .filter(|u| matches!(u.scheme_str(), Some("dns" | "https")) && u.host().is_some());
            if ok.is_none() {
                return Err(rule(
                    "emergency.probe_targets",
                    format!("entry {i} `{t}` is not a dns://resolver/name or https://host/ URL"),
                ));
            }
        }
        for (key, v) in [
            ("bus.local_load_threshold", self.bus.local_load_threshold),
            ("file.gc_threshold", self.file.gc_threshold),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(rule(key, format!("{v} is outside (0, 1]")));
            }
        }
        if self.market.default_ttl_seconds > self.market.max_ttl_seconds {
            return Err(rule(
                "market.default_ttl_seconds",
                format!(
                    "{} is above market.max_ttl_seconds ({})",
                    self.market.default_ttl_seconds, self.market.max_ttl_seconds
                ),
            ));
        }
        if !["auto", "anchor", "hearth", "spark", "bridge"].contains(&self.node.profile.as_str()) {
            return Err(rule(
                "node.profile",
                format!(
                    "`{}` is not one of auto, anchor, hearth, spark, bridge",
                    self.node.profile
                ),
            ));
        }
        if !["cpu", "cuda", "auto"].contains(&self.embedding.device.as_str()) {
            return Err(rule(
                "embedding.device",
                format!("`{}` is not one of cpu, cuda, auto", self.embedding.device),
            ));
        }
        if !["human", "json"].contains(&self.observability.log_format.as_str()) {
            return Err(rule(
                "observability.log_format",
                format!(
                    "`{}` is not one of human, json",
                    self.observability.log_format
                ),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.observability.log_level).is_err() {
            return Err(rule(
                "observability.log_level",
                format!(
                    "`{}` is not a log level or filter",
                    self.observability.log_level
                ),
            ));
        }
        Ok(())
    }

    /// Data directory: `paths.data_dir` or the platform's.
    pub fn data_dir(&self) -> Result<PathBuf, ConfigError> {
        match &self.paths.data_dir {
            Some(p) => Ok(p.clone()),
            None => Ok(Dirs::platform()?.data),
        }
    }

    /// Cache directory: `paths.cache_dir` or the platform's.
    pub fn cache_dir(&self) -> Result<PathBuf, ConfigError> {
        match &self.paths.cache_dir {
            Some(p) => Ok(p.clone()),
            None => Ok(Dirs::platform()?.cache),
        }
    }

    /// Directory of the key files.
    pub fn keys_dir(&self) -> Result<PathBuf, ConfigError> {
        match &self.identity.keys_dir {
            Some(p) => Ok(p.clone()),
            None => Ok(self.data_dir()?.join("keys")),
        }
    }

    /// The community state directory, when a community is configured.
    pub fn community_dir(&self) -> Result<Option<PathBuf>, ConfigError> {
        let Some(id) = &self.community.community_id else {
            return Ok(None);
        };
        if let Some(p) = &self.community.state_dir {
            return Ok(Some(p.clone()));
        }
        let h = blake3::hash(id.as_bytes()).to_hex();
        Ok(Some(
            self.data_dir()?.join("communities").join(&h.as_str()[..16]),
        ))
    }

    /// The directory of provisioned models.
    pub fn models_dir(&self) -> Result<PathBuf, ConfigError> {
        match &self.models.dir {
            Some(p) => Ok(p.clone()),
            None => Ok(self.cache_dir()?.join("models")),
        }
    }

    /// The blob directory.
    pub fn blobs_dir(&self) -> Result<PathBuf, ConfigError> {
        match &self.file.blobs_dir {
            Some(p) => Ok(p.clone()),
            None => Ok(self.data_dir()?.join("blobs")),
        }
    }

    /// The corpora directory.
    pub fn corpora_dir(&self) -> Result<PathBuf, ConfigError> {
        match &self.rag.corpora_dir {
            Some(p) => Ok(p.clone()),
            None => Ok(self.data_dir()?.join("corpora")),
        }
    }

    /// The node key file.
    pub fn key_file(&self) -> Result<PathBuf, ConfigError> {
        Ok(self.keys_dir()?.join("node.key"))
    }

    /// The configuration as TOML text (every key, defaults included).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// The JSON Schema of the configuration file (published as
/// `docs/config.schema.json`).
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Config);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |i| offset - i - 1) + 1;
    (line, column)
}

/// The dotted key whose entry (key or value) contains `offset`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let doc = text.parse::<toml_edit::Document<String>>().ok()?;
    fn walk(
        table: &toml_edit::Table,
        prefix: &str,
        offset: usize,
        best: &mut Option<(usize, String)>,
    ) {
        for (key, item) in table.iter() {
            let path = if prefix.is_empty() {
                key.to_string()
            } else {
                format!("{prefix}.{key}")
            };
            let key_span = table.key(key).and_then(|k| k.span());
            let value_span = item.span();
            for span in [key_span, value_span].into_iter().flatten() {
                if span.contains(&offset) || span.end == offset {
                    let width = span.end - span.start;
                    if best.as_ref().is_none_or(|(w, _)| width <= *w) {
                        *best = Some((width, path.clone()));
                    }
                }
            }
            if let Some(t) = item.as_table() {
                walk(t, &path, offset, best);
            }
        }
    }
    let mut best = None;
    walk(doc.as_table(), "", offset, &mut best);
    best.map(|(_, k)| k)
}

/// 1-based line of a dotted key in `text`.
fn key_line(text: &str, dotted: &str) -> Option<usize> {
    let doc = text.parse::<toml_edit::Document<String>>().ok()?;
    let mut parts = dotted.split('.');
    let mut table = doc.as_table();
    let mut item = None;
    while let Some(part) = parts.next() {
        let it = table.get(part)?;
        item = Some((table, part, it));
        if let Some(t) = it.as_table() {
            table = t;
        } else if parts.next().is_some() {
            return None;
        }
    }
    let (table, part, it) = item?;
    let span = table
        .key(part)
        .and_then(|k| k.span())
        .or_else(|| it.span())?;
    Some(line_col(text, span.start).0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn defaults_validate_and_round_trip() {
        let c = Config::default();
        c.validate(&Source::default()).expect("defaults are valid");
        let back: Config = toml::from_str(&c.to_toml()).expect("parse own output");
        assert_eq!(back, c);
        assert_eq!(c.transport.port, 7080);
    }

    #[test]
    fn syntax_error_names_file_line_and_column() {
        let (_d, path) = write("[transport]\nport = = 3\n");
        let err = Config::load_with_env(Some(&path), &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("config.toml:2:"), "{text}");
    }

    #[test]
    fn wrong_type_names_the_key_and_line() {
        let (_d, path) = write("[node]\ndisplay_name = \"x\"\n\n[transport]\nport = \"high\"\n");
        let err = Config::load_with_env(Some(&path), &[]).unwrap_err();
        match err {
            ConfigError::Invalid { line, key, .. } => {
                assert_eq!(line, 5);
                assert_eq!(key, "transport.port");
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let (_d, path) = write("[bus]\nprefer_local = true\nprefer_lokal = false\n");
        let err = Config::load_with_env(Some(&path), &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(":3:"), "{text}");
        assert!(text.contains("prefer_lokal"), "{text}");
    }

    #[test]
    fn rule_violation_names_file_line_and_key() {
        let (_d, path) = write("[bus]\n\nlocal_load_threshold = 1.5\n");
        let err = Config::load_with_env(Some(&path), &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.ends_with("1.5 is outside (0, 1]"), "{text}");
        assert!(
            text.contains("config.toml:3: bus.local_load_threshold"),
            "{text}"
        );
    }

    #[test]
    fn cross_field_rule_port_clash() {
        let (_d, path) = write("[transport]\nport = 42424\n");
        let err = Config::load_with_env(Some(&path), &[]).unwrap_err();
        assert!(err.to_string().contains("transport.port"), "{err}");
    }

    #[test]
    fn env_overrides_win_and_are_named_in_errors() {
        let (_d, path) = write("[transport]\nport = 7080\n");
        let loaded =
            Config::load_with_env(Some(&path), &env(&[("HEARTHNET__TRANSPORT__PORT", "7099")]))
                .expect("valid");
        assert_eq!(loaded.config.transport.port, 7099);
        assert_eq!(
            loaded.source.origin("transport.port"),
            "env HEARTHNET__TRANSPORT__PORT"
        );

        let err = Config::load_with_env(
            Some(&path),
            &env(&[("HEARTHNET__BUS__LOCAL_LOAD_THRESHOLD", "2")]),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("env HEARTHNET__BUS__LOCAL_LOAD_THRESHOLD"),
            "{err}"
        );

        let err =
            Config::load_with_env(Some(&path), &env(&[("HEARTHNET__PORT", "1")])).unwrap_err();
        assert!(matches!(err, ConfigError::Env { .. }), "{err}");
    }

    #[test]
    fn bad_node_id_in_trust_list() {
        let (_d, path) = write("[trust]\nmembers = [\"ed25519:nope\"]\n");
        let err = Config::load_with_env(Some(&path), &[]).unwrap_err();
        assert!(err.to_string().contains(":2: trust.members"), "{err}");
    }

    #[test]
    fn published_schema_matches_the_code() {
        let path = std::path::PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("../docs/config.schema.json");
        if std::env::var_os("HEARTHNET_BLESS").is_some() {
            std::fs::write(&path, json_schema()).unwrap();
        }
        let published = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            published == json_schema(),
            "docs/config.schema.json is stale; regenerate with `hearthnet config schema > docs/config.schema.json` or HEARTHNET_BLESS=1"
        );
    }

    #[test]
    fn probe_targets_must_name_their_kind() {
        let (_d, path) = write("[emergency]\nprobe_targets = [\"1.1.1.1\"]\n");
        let err = Config::load_with_env(Some(&path), &[]).unwrap_err();
        assert!(
            err.to_string().contains(":2: emergency.probe_targets"),
            "{err}"
        );
    }

    #[test]
    fn schema_lists_every_section() {
        let schema: serde_json::Value =
            serde_json::from_str(&json_schema()).expect("schema is JSON");
        let props = schema["properties"].as_object().expect("properties");
        for section in ["transport", "bus", "discovery", "observability", "trust"] {
            assert!(props.contains_key(section), "{section}");
        }
    }
}
