//! `hearthnet`: run a HearthNet node and talk to it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use prost::Message;

use hearthnet_node::config::{Config, Dirs, Loaded, json_schema};
use hearthnet_node::error::exit_code;
use hearthnet_node::node::{NodeBuilder, load_or_create_key};
use hearthnet_sdk::client::{CallItem, Client, ClientError};
use hearthnet_sdk::proto::hearthnet::bus::v1::PayloadEncoding;
use hearthnet_sdk::proto::hearthnet::node::v1 as nodepb;

const EXIT_HELP: &str = "\
Exit codes (decision 0041):
  0  success
  1  internal or unexpected error
  2  bad usage, or bad configuration
  3  no running node at the address
  4  authentication or authorisation failed (invalid_signature, unauthorized, revoked, expired, token_*)
  5  capacity (rate_limited, capacity_exceeded)
  6  not_found
  7  bad_request or schema_mismatch
  8  timeout
  9  partition (no reachable provider)";

/// A HearthNet node: a local-first community AI mesh.
#[derive(Parser)]
#[command(name = "hearthnet", version, about, long_about = None, after_help = EXIT_HELP)]
struct Cli {
    /// Configuration file (default: $HEARTHNET_CONFIG, then <config dir>/config.toml).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Create the node key, the data directory and a config file.
    Init {
        /// Display name shown to neighbours.
        #[arg(long)]
        name: Option<String>,
        /// Write the config file even if one exists.
        #[arg(long)]
        force: bool,
    },
    /// Run the node (gRPC and HTTP/JSON on transport.port) until Ctrl-C or SIGTERM.
    Run {
        /// Log as JSON lines instead of human-readable text.
        #[arg(long)]
        json_logs: bool,
        /// Override transport.port.
        #[arg(long)]
        port: Option<u16>,
        /// Do not provision or load local models (no embed.text, llm.chat).
        #[arg(long)]
        no_models: bool,
    },
    /// Call a capability on the running node and print each response frame as JSON.
    #[command(after_help = EXIT_HELP)]
    Call {
        /// Capability name, optionally NAME@MAJOR.MINOR (e.g. diag.echo@1.0).
        capability: String,
        /// Request JSON ({"params":{…},"input":{…}}); `-` reads stdin; default {}.
        json: Option<String>,
        #[command(flatten)]
        target: Target,
        /// Deadline in seconds.
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// List the capabilities the running node serves (and, with --remote, its peers').
    Caps {
        /// Include capabilities known on peers.
        #[arg(long)]
        remote: bool,
        #[command(flatten)]
        target: Target,
    },
    /// List the peers the running node knows.
    Peers {
        #[command(flatten)]
        target: Target,
    },
    /// Show recent call traces of the running node, newest first.
    Trace {
        /// How many (default 50).
        #[arg(default_value_t = 50)]
        n: u32,
        /// Only this capability.
        #[arg(long)]
        capability: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Check configuration, keys, port, storage and models, with fixes.
    Doctor,
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Local model commands.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Blob commands.
    #[command(subcommand, after_help = EXIT_HELP)]
    File(FileCommand),
    /// Retrieval commands.
    #[command(subcommand, after_help = EXIT_HELP)]
    Rag(RagCommand),
    /// List every capability of the protocol this build knows (no node needed).
    Registry,
    /// Print the node, protocol and descriptor versions.
    Version,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Download and unpack the default models (SmolLM2-135M-Instruct,
    /// all-MiniLM-L6-v2) into the model directory, with progress.
    Fetch,
}

#[derive(Subcommand)]
enum FileCommand {
    /// Store a file in the running node's blob store with `file.put`, print its CID.
    Put {
        /// The file.
        path: PathBuf,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum RagCommand {
    /// Store a document (text, Markdown, HTML, PDF) with `file.put` and
    /// index it with `rag.ingest`; prints the ingest result as JSON.
    Add {
        /// The document.
        path: PathBuf,
        /// Corpus (one of `rag.corpora`, or `personal`).
        #[arg(long, default_value = "community")]
        corpus: String,
        /// Title (default: the file name).
        #[arg(long)]
        title: Option<String>,
        /// Language code of the text.
        #[arg(long, default_value = "en")]
        language: String,
        /// Extra filterable metadata, KEY=VALUE (repeatable).
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration; errors name file, line and key.
    Check,
    /// Print the effective configuration (defaults and overrides applied) as TOML.
    Show,
    /// Print the JSON Schema of the configuration file.
    Schema,
}

#[derive(Args, Clone)]
struct Target {
    /// Node to talk to (default http://127.0.0.1:<transport.port>).
    #[arg(long, value_name = "URL")]
    node: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Version);
    match command {
        Command::Version => {
            hearthnet_sdk::say!("hearthnet {}", env!("CARGO_PKG_VERSION"));
            hearthnet_sdk::say!("protocol {}", hearthnet_sdk::PROTOCOL_VERSION);
            hearthnet_sdk::say!("descriptor {}", hearthnet_sdk::registry::DESCRIPTOR_HASH);
            ExitCode::SUCCESS
        }
        Command::Registry => {
            for c in hearthnet_sdk::registry::registry() {
                hearthnet_sdk::say!(
                    "{}@{}\t{}\t{:?}",
                    c.name,
                    c.version,
                    c.stability,
                    c.streaming
                );
            }
            ExitCode::SUCCESS
        }
        Command::Config(ConfigCommand::Schema) => {
            print!("{}", json_schema());
            ExitCode::SUCCESS
        }
        other => {
            let loaded = match Config::load(cli.config.as_deref()) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            rt.block_on(run_command(other, loaded, cli.config))
        }
    }
}

fn node_url(loaded: &Loaded, t: &Target) -> String {
    t.node
        .clone()
        .unwrap_or_else(|| format!("http://127.0.0.1:{}", loaded.config.transport.port))
}

async fn client(loaded: &Loaded, t: &Target) -> Result<Client, ExitCode> {
    let key_file = loaded.config.key_file().map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    let key = hearthnet_sdk::identity::SecretKey::load(&key_file).map_err(|e| {
        eprintln!(
            "error: cannot load the node key {}: {e}\nhint: run `hearthnet init`",
            key_file.display()
        );
        ExitCode::from(4)
    })?;
    let url = node_url(loaded, t);
    let client = Client::connect(&url, key).await.map_err(|e| {
        eprintln!("error: no node at {url}: {e}\nhint: start one with `hearthnet run`");
        ExitCode::from(3)
    })?;
    Ok(client.with_community(
        loaded
            .config
            .community
            .community_id
            .clone()
            .unwrap_or_default(),
    ))
}

fn fail(e: &ClientError) -> ExitCode {
    match e {
        ClientError::Remote(w) => {
            eprintln!("{}", serde_json::to_string(w).unwrap_or_default());
            ExitCode::from(exit_code(&w.code))
        }
        ClientError::Connect(_) => {
            eprintln!("error: {e}");
            ExitCode::from(3)
        }
        ClientError::Status(s) if s.code() == tonic::Code::Unavailable => {
            eprintln!("error: {e}");
            ExitCode::from(3)
        }
        ClientError::Status(s) if s.code() == tonic::Code::DeadlineExceeded => {
            eprintln!("error: {e}");
            ExitCode::from(8)
        }
        _ => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn unary<Req: Message, Resp: Message + Default>(
    loaded: &Loaded,
    t: &Target,
    cap: &str,
    req: &Req,
) -> Result<Resp, ExitCode> {
    let c = client(loaded, t).await?;
    c.unary(cap, "1.0", req).await.map_err(|e| fail(&e))
}

async fn run_command(command: Command, loaded: Loaded, config_path: Option<PathBuf>) -> ExitCode {
    match command {
        Command::Init { name, force } => init(loaded, config_path, name, force),
        Command::Run {
            json_logs,
            port,
            no_models,
        } => run(loaded, json_logs, port, no_models).await,
        Command::Models(ModelsCommand::Fetch) => match provision_models(&loaded.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Call {
            capability,
            json,
            target,
            timeout,
        } => call(&loaded, &target, &capability, json, timeout).await,
        Command::File(FileCommand::Put { path, target }) => {
            match put_file(&loaded, &target, &path).await {
                Ok(cid) => {
                    hearthnet_sdk::say!("{cid}");
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Command::Rag(RagCommand::Add {
            path,
            corpus,
            title,
            language,
            meta,
            target,
        }) => rag_add(&loaded, &target, &path, corpus, title, language, &meta).await,
        Command::Caps { remote, target } => {
            let req = nodepb::CapabilitiesRequest {
                params: None,
                input: Some(nodepb::CapabilitiesInput {
                    include_remote: remote,
                }),
            };
            match unary::<_, nodepb::CapabilitiesResponse>(
                &loaded,
                &target,
                "node.capabilities",
                &req,
            )
            .await
            {
                Ok(r) => {
                    let out = r.output.unwrap_or_default();
                    hearthnet_sdk::say!(
                        "{:<28} {:<7} {:<12} NODE",
                        "CAPABILITY",
                        "VERSION",
                        "STABILITY"
                    );
                    for c in out.local {
                        hearthnet_sdk::say!(
                            "{:<28} {:<7} {:<12} local",
                            c.name,
                            c.version,
                            stability_name(c.stability)
                        );
                    }
                    for rc in out.remote {
                        let s = rc.spec.unwrap_or_default();
                        hearthnet_sdk::say!(
                            "{:<28} {:<7} {:<12} {}",
                            s.name,
                            s.version,
                            "-",
                            rc.node_id
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Command::Peers { target } => {
            match unary::<_, nodepb::TopologyResponse>(
                &loaded,
                &target,
                "node.topology",
                &nodepb::TopologyRequest::default(),
            )
            .await
            {
                Ok(r) => {
                    let out = r.output.unwrap_or_default();
                    if out.peers.is_empty() {
                        hearthnet_sdk::say!("no peers");
                    }
                    for p in out.peers {
                        hearthnet_sdk::say!(
                            "{}\t{}\t{} capabilities",
                            p.node_id,
                            p.endpoints.join(","),
                            p.capabilities.len()
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Command::Trace {
            n,
            capability,
            target,
        } => {
            let req = nodepb::RecentTracesRequest {
                params: None,
                input: Some(nodepb::RecentTracesInput {
                    limit: Some(n),
                    capability: capability.unwrap_or_default(),
                }),
            };
            match unary::<_, nodepb::RecentTracesResponse>(
                &loaded,
                &target,
                "node.trace.recent",
                &req,
            )
            .await
            {
                Ok(r) => {
                    for t in r.output.unwrap_or_default().traces {
                        let at = t
                            .started_at
                            .and_then(|s| s.to_rfc3339())
                            .unwrap_or_default();
                        hearthnet_sdk::say!(
                            "{at}  {}  {}@{}  {}  {} ms  {} frames  {}",
                            t.trace_id,
                            t.capability,
                            t.version,
                            t.code,
                            t.ms,
                            t.frames,
                            t.peer
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Command::Doctor => doctor(&loaded).await,
        Command::Config(ConfigCommand::Check) => {
            hearthnet_sdk::say!("ok: {}", loaded.source);
            ExitCode::SUCCESS
        }
        Command::Config(ConfigCommand::Show) => {
            print!("{}", loaded.config.to_toml());
            ExitCode::SUCCESS
        }
        Command::Config(ConfigCommand::Schema) | Command::Registry | Command::Version => {
            ExitCode::SUCCESS
        }
    }
}

fn stability_name(v: i32) -> String {
    hearthnet_sdk::proto::hearthnet::options::v1::Stability::try_from(v)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("STABILITY_")
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

fn init(
    loaded: Loaded,
    config_path: Option<PathBuf>,
    name: Option<String>,
    force: bool,
) -> ExitCode {
    let mut config = loaded.config;
    if let Some(n) = name {
        config.node.display_name = n;
    }
    let result = (|| -> Result<(PathBuf, PathBuf, String), String> {
        let data = config.data_dir().map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        let key_file = config.key_file().map_err(|e| e.to_string())?;
        let key = load_or_create_key(&key_file, true).map_err(|e| e.to_string())?;
        let path = match config_path.or(loaded.source.path.clone()) {
            Some(p) => p,
            None => Dirs::platform()
                .map_err(|e| e.to_string())?
                .config
                .join("config.toml"),
        };
        if !path.exists() || force {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let tmp = path.with_extension("toml.tmp");
            std::fs::write(&tmp, config.to_toml())
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok((path, key_file, key.node_id().to_string()))
    })();
    match result {
        Ok((config, key, id)) => {
            hearthnet_sdk::say!("node id   {id}");
            hearthnet_sdk::say!("key       {}", key.display());
            hearthnet_sdk::say!("config    {}", config.display());
            hearthnet_sdk::say!("next      hearthnet run");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Provisions the default models the configuration uses (those without an
/// explicit path), showing progress.
fn provision_models(config: &hearthnet_node::config::Config) -> Result<(), String> {
    #[cfg(feature = "models")]
    {
        use hearthnet_node::models::provision::{self, MINILM, SMOLLM2};
        let root = config.models_dir().map_err(|e| e.to_string())?;
        if config.embedding.model_path.is_none() && config.embedding.model == MINILM.name {
            provision::provision(&root, &MINILM, true).map_err(|e| e.to_string())?;
        }
        if config.llm.model_path.is_none() && config.llm.model == SMOLLM2.name {
            provision::provision(&root, &SMOLLM2, true).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
    #[cfg(not(feature = "models"))]
    {
        let _ = config;
        Err("this build has no local models (feature `models` is off)".into())
    }
}

async fn run(loaded: Loaded, json_logs: bool, port: Option<u16>, no_models: bool) -> ExitCode {
    let mut config = loaded.config;
    hearthnet_node::obs::init_logging(
        &config.observability.log_level,
        json_logs || config.observability.log_format == "json",
    );
    if let Err(e) = hearthnet_node::faults::init_from_env() {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    if let Some(p) = port {
        config.transport.port = p;
    }
    if no_models {
        config.models.enabled = false;
    }
    if config.models.enabled {
        // First run: fetch the default small models (progress on stderr).
        let c = config.clone();
        match tokio::task::spawn_blocking(move || provision_models(&c)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: {e}; the node starts without local models"),
            Err(e) => eprintln!("warning: model provisioning failed: {e}"),
        }
    }
    let node = match NodeBuilder::new(config).start().await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    hearthnet_sdk::say!(
        "hearthnet node {} listening on {}",
        node.bus().node_id(),
        node.url()
    );
    let stop = node.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down; finishing in-flight calls");
        stop.cancel();
    });
    node.wait().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Pushes a file to the node with `file.put` (the manifest, then every
/// chunk); returns its CID.
async fn put_file(loaded: &Loaded, t: &Target, path: &std::path::Path) -> Result<String, ExitCode> {
    use hearthnet_node::blobs::{CHUNK_BYTES, cid_text};
    use hearthnet_sdk::proto::hearthnet::file::v1 as filepb;
    let data = std::fs::read(path).map_err(|e| {
        eprintln!("error: {}: {e}", path.display());
        ExitCode::from(2)
    })?;
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&data[..0]]
    } else {
        data.chunks(CHUNK_BYTES as usize).collect()
    };
    let cid = cid_text(&blake3::hash(&data));
    let manifest = filepb::PutManifest {
        cid: cid.clone(),
        size_bytes: data.len() as u64,
        chunk_size_bytes: CHUNK_BYTES as u32,
        chunks: chunks
            .iter()
            .enumerate()
            .map(|(i, c)| filepb::ChunkRef {
                i: i as u32,
                cid: cid_text(&blake3::hash(c)),
            })
            .collect(),
    };
    let c = client(loaded, t).await?;
    let first = filepb::PutRequest {
        frame: Some(filepb::put_request::Frame::Manifest(manifest)),
    };
    let call = c.request(
        "file.put",
        "1.0",
        PayloadEncoding::Proto,
        first.encode_to_vec(),
    );
    let (mut sink, mut stream) = c.open(call, None).await.map_err(|e| fail(&e))?;
    for (i, chunk) in chunks.iter().enumerate() {
        let frame = filepb::PutRequest {
            frame: Some(filepb::put_request::Frame::Chunk(filepb::PutChunk {
                i: i as u32,
                cid: cid_text(&blake3::hash(chunk)),
                data: chunk.to_vec(),
            })),
        };
        match sink.send(frame.encode_to_vec()).await {
            Ok(()) => {}
            // The node refused the put: its error frame, read below, says why.
            Err(ClientError::Ended) => break,
            Err(e) => return Err(fail(&e)),
        }
        if chunks.len() > 8 {
            eprint!("\rfile.put: {}/{} chunks", i + 1, chunks.len());
        }
    }
    if chunks.len() > 8 {
        eprintln!();
    }
    sink.finish();
    let mut stored = None;
    while let Some(item) = stream.next().await.map_err(|e| fail(&e))? {
        if let CallItem::Data(d) = item {
            stored = filepb::PutResponse::decode(d.as_slice()).ok();
        }
    }
    if stored.and_then(|r| r.output).is_none() {
        eprintln!("error: file.put ended without a result");
        return Err(ExitCode::from(1));
    }
    Ok(cid)
}

/// `hearthnet rag add`: `file.put`, then `rag.ingest`.
async fn rag_add(
    loaded: &Loaded,
    t: &Target,
    path: &std::path::Path,
    corpus: String,
    title: Option<String>,
    language: String,
    meta: &[String],
) -> ExitCode {
    use hearthnet_sdk::proto::hearthnet::rag::v1 as ragpb;
    let mut metadata = std::collections::HashMap::new();
    for m in meta {
        let Some((k, v)) = m.split_once('=') else {
            eprintln!("error: --meta `{m}` is not KEY=VALUE");
            return ExitCode::from(2);
        };
        metadata.insert(k.to_string(), v.to_string());
    }
    let cid = match put_file(loaded, t, path).await {
        Ok(cid) => cid,
        Err(code) => return code,
    };
    let title = title.unwrap_or_else(|| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let req = ragpb::IngestRequest {
        params: Some(ragpb::IngestParams { corpus }),
        input: Some(ragpb::IngestInput {
            doc_cid: cid,
            title,
            language,
            metadata,
        }),
    };
    match unary::<_, ragpb::IngestResponse>(loaded, t, "rag.ingest", &req).await {
        Ok(r) => {
            hearthnet_sdk::say!("{}", hearthnet_sdk::json::to_json(&r));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

async fn call(
    loaded: &Loaded,
    target: &Target,
    capability: &str,
    json: Option<String>,
    timeout: Option<f64>,
) -> ExitCode {
    let (name, version) = match capability.split_once('@') {
        Some((n, v)) => (n.to_string(), v.to_string()),
        None => {
            let v = hearthnet_sdk::registry::capability(capability)
                .map(|c| format!("{}.0", c.version_numbers().0))
                .unwrap_or_else(|| "1.0".into());
            (capability.to_string(), v)
        }
    };
    let body = match json.as_deref() {
        None => "{}".to_string(),
        Some("-") => {
            let mut s = String::new();
            if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
                eprintln!("error: stdin: {e}");
                return ExitCode::from(2);
            }
            s
        }
        Some(s) => s.to_string(),
    };
    if serde_json::from_str::<serde_json::Value>(&body).is_err() {
        eprintln!("error: the request is not JSON: {body}");
        return ExitCode::from(2);
    }
    let c = match client(loaded, target).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let req = c.request(&name, &version, PayloadEncoding::Json, body.into_bytes());
    let timeout = timeout.filter(|t| *t > 0.0).map(Duration::from_secs_f64);
    let mut stream = match c.send(req, timeout).await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    loop {
        match stream.next().await {
            Ok(Some(CallItem::Data(d))) => hearthnet_sdk::say!("{}", String::from_utf8_lossy(&d)),
            Ok(Some(CallItem::Progress(p))) => {
                eprintln!("progress {}/{} {}", p.current, p.total, p.stage);
            }
            Ok(Some(CallItem::Done(_))) | Ok(None) => return ExitCode::SUCCESS,
            Err(e) => return fail(&e),
        }
    }
}

async fn doctor(loaded: &Loaded) -> ExitCode {
    let mut failed = 0;
    let mut check = |ok: bool, what: &str, detail: String| {
        if ok {
            hearthnet_sdk::say!("✔ {what}: {detail}");
        } else {
            failed += 1;
            hearthnet_sdk::say!("✘ {what}: {detail}");
        }
    };
    let c = &loaded.config;
    check(true, "config", format!("valid ({})", loaded.source));
    match c.key_file() {
        Ok(path) => match hearthnet_sdk::identity::SecretKey::load(&path) {
            Ok(k) => check(true, "key", format!("{} ({})", k.node_id(), path.display())),
            Err(e) => check(
                false,
                "key",
                format!("{e}; fix: `hearthnet init` creates {}", path.display()),
            ),
        },
        Err(e) => check(false, "key", e.to_string()),
    }
    match c.data_dir() {
        Ok(dir) => {
            let probe = dir.join(".doctor-probe");
            let ok = std::fs::create_dir_all(&dir).is_ok()
                && std::fs::write(&probe, b"ok").is_ok()
                && std::fs::remove_file(&probe).is_ok();
            check(
                ok,
                "storage",
                if ok {
                    format!("{} is writable", dir.display())
                } else {
                    format!("{} is not writable; fix: set paths.data_dir", dir.display())
                },
            );
        }
        Err(e) => check(false, "storage", e.to_string()),
    }
    let addr = format!("127.0.0.1:{}", c.transport.port);
    let running = tokio::net::TcpStream::connect(&addr).await.is_ok();
    if running {
        let t = Target { node: None };
        match unary::<_, hearthnet_sdk::proto::hearthnet::protocol::v1::ListVersionsResponse>(
            loaded,
            &t,
            "protocol.version.list",
            &hearthnet_sdk::proto::hearthnet::protocol::v1::ListVersionsRequest::default(),
        )
        .await
        {
            Ok(r) => check(
                true,
                "port",
                format!(
                    "a node answers on {addr} (protocol {})",
                    r.output.map(|o| o.preferred).unwrap_or_default()
                ),
            ),
            Err(_) => check(
                false,
                "port",
                format!(
                    "{addr} is taken by something that is not this node; fix: set transport.port"
                ),
            ),
        }
    } else {
        match std::net::TcpListener::bind(format!("{}:{}", c.transport.host, c.transport.port)) {
            Ok(_) => check(
                true,
                "port",
                format!("{} is free (no node running)", c.transport.port),
            ),
            Err(e) => check(
                false,
                "port",
                format!("cannot bind {}: {e}", c.transport.port),
            ),
        }
    }
    check(
        true,
        "models",
        "this build serves no model-backed capabilities (nothing to provision)".into(),
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
