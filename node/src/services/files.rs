//! Files (M07, `protocol/spec/file.md`): the `file.*` capabilities over the
//! [`BlobStore`], multi-source verified downloads and replication.
//!
//! - `file.read@1.1` streams a manifest and chunk frames; with `verified`
//!   each chunk is a BLAKE3 verified stream against the blob CID (16 KiB
//!   groups, FILE-024), with `chunks` only the listed chunks (FILE-025).
//! - `file.put` (client-streaming, `Open`) and `file.put.resume` (bidi)
//!   receive blobs chunk by chunk; verified chunks of an interrupted upload
//!   are kept on disk so that a resume sends only the missing ones.
//! - [`FileService::fetch`] downloads a blob from several holders at once
//!   (at most 4 streams, FILE-016), checks every group before writing it,
//!   re-fetches a bad chunk from the next holder, gives up with `partition`
//!   after 3 failures of one chunk, and resumes from the verified chunks of
//!   an earlier attempt (FILE-017).
//! - Replication (FILE-018…020, decision 0095): holders announce blobs with
//!   `file.cid.advertised` / `file.cid.unpinned` events in the community
//!   log; a node holding a pinned blob with fewer live holders than wanted
//!   appends `file.replication.scheduled` naming replica peers (their
//!   `file.read` offer carries `replica = "true"`); a named replica fetches,
//!   verifies, pins and announces it; the scheduler appends
//!   `file.replication.completed` once enough live holders are known. A
//!   holder counts only while its signed manifest is followed, so a node
//!   that leaves triggers re-replication.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use prost::Message;

use hearthnet_sdk::client::CallItem;
use hearthnet_sdk::proto::hearthnet::bus::v1::PayloadEncoding;
use hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode;
use hearthnet_sdk::proto::hearthnet::file::v1 as pb;
use hearthnet_sdk::wkt::Timestamp;

use crate::blobs::{self, BlobError, BlobInfo, BlobStore, CHUNK_BYTES, Partial, chunk_count};
use crate::bus::{Bus, Offer, Request, Service, Sink, WeakBus};
use crate::error::CallError;
use crate::events::{EventLog, LogEvent, Membership, View};

/// Chunk streams at once per download (FILE-016).
const FETCH_STREAMS: usize = 4;
/// Failed attempts on one chunk before a download gives up (FILE-016).
const FETCH_ATTEMPTS: u32 = 3;
/// Fewest and most chunks asked for in one `file.read` of a download (1 MiB
/// and 16 MiB): about four requests per stream, so work spreads over the
/// holders, and few enough calls to stay well under the rate limits.
const FETCH_BATCH: (usize, usize) = (4, 64);

/// Download work: batches of chunk indices with the attempt they are on.
type Queue = Mutex<VecDeque<(Vec<u32>, u32)>>;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Settings of the file service (`[file]`).
#[derive(Debug, Clone)]
pub struct FileSettings {
    /// Volunteer as a replica holder (FILE-020).
    pub replica: bool,
    /// Copies wanted of every pinned blob (FILE-019).
    pub desired_copies: u32,
    /// How often replication is checked.
    pub replication_interval: Duration,
    /// Free disk a put must leave (FILE-004: 1 GiB).
    pub min_free_bytes: u64,
}

impl Default for FileSettings {
    fn default() -> Self {
        Self {
            replica: false,
            desired_copies: 3,
            replication_interval: Duration::from_secs(30),
            min_free_bytes: 1 << 30,
        }
    }
}

fn blob_error(e: BlobError) -> CallError {
    match e {
        BlobError::NotFound(cid) => CallError::new(ErrorCode::NotFound, format!("no blob {cid}")),
        BlobError::Quota { .. } => CallError::new(ErrorCode::CapacityExceeded, e.to_string()),
        BlobError::Range { .. } | BlobError::Name(_) => CallError::bad_request(e.to_string()),
        BlobError::Corrupt { .. } => CallError::bad_request(e.to_string()),
        other => CallError::internal(other.to_string()),
    }
}

/// Checks CID text (IDENT-005/006): `blake3:` and 64 lowercase hex digits.
fn check_cid(cid: &str) -> Result<(), CallError> {
    if crate::blobs::is_cid(cid) {
        Ok(())
    } else {
        Err(CallError::bad_request(format!(
            "`{}` is not a blake3: CID",
            cid.escape_debug()
        )))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(BlobError::Io(std::io::Error::other(e.to_string()))))
}

fn stat_output(cid: &str, info: &BlobInfo) -> pb::StatOutput {
    pb::StatOutput {
        cid: cid.to_string(),
        size_bytes: info.size,
        chunk_size_bytes: CHUNK_BYTES as u32,
        chunk_count: chunk_count(info.size),
        pins: info.pins,
        stored_at: Some(Timestamp {
            seconds: info.stored_at,
            nanos: 0,
        }),
    }
}

fn meta(started: Instant) -> Option<pb::StatMeta> {
    Some(pb::StatMeta {
        ms: started.elapsed().as_millis() as u64,
    })
}

/// A scheduled replication as folded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scheduled {
    lamport: u64,
    scheduler: String,
    desired: u32,
    candidates: Vec<String>,
    completed: bool,
}

/// Holders and replication state from the community log.
#[derive(Debug, Default)]
pub struct FilesView {
    /// CID → holder → size.
    holders: BTreeMap<String, BTreeMap<String, u64>>,
    /// CID → the latest scheduled replication.
    scheduled: BTreeMap<String, Scheduled>,
}

impl FilesView {
    /// NodeIDs that announced holding `cid` (and did not drop it since).
    pub fn holders(&self, cid: &str) -> Vec<String> {
        self.holders
            .get(cid)
            .map(|h| h.keys().cloned().collect())
            .unwrap_or_default()
    }
}

impl View for FilesView {
    fn name(&self) -> &'static str {
        "x-hearthnet.files"
    }

    fn reset(&mut self) {
        *self = Self::default();
    }

    fn apply(&mut self, ev: &LogEvent, _members: &Membership) {
        match ev.event_type.as_str() {
            "file.cid.advertised" => {
                if let Ok(p) = pb::CidAdvertisedEvent::decode(ev.payload.as_slice()) {
                    self.holders
                        .entry(p.cid)
                        .or_default()
                        .insert(ev.author.clone(), p.size_bytes);
                }
            }
            "file.cid.unpinned" => {
                if let Ok(p) = pb::CidUnpinnedEvent::decode(ev.payload.as_slice())
                    && let Some(h) = self.holders.get_mut(&p.cid)
                {
                    h.remove(&ev.author);
                }
            }
            "file.replication.scheduled" => {
                if let Ok(p) = pb::ReplicationScheduledEvent::decode(ev.payload.as_slice()) {
                    let newer = self
                        .scheduled
                        .get(&p.cid)
                        .is_none_or(|s| s.lamport <= ev.lamport);
                    if newer {
                        self.scheduled.insert(
                            p.cid,
                            Scheduled {
                                lamport: ev.lamport,
                                scheduler: ev.author.clone(),
                                desired: p.desired_copies,
                                candidates: p.candidate_holders,
                                completed: false,
                            },
                        );
                    }
                }
            }
            "file.replication.completed" => {
                if let Ok(p) = pb::ReplicationCompletedEvent::decode(ev.payload.as_slice())
                    && let Some(s) = self.scheduled.get_mut(&p.cid)
                    && s.scheduler == ev.author
                    && s.lamport <= ev.lamport
                {
                    s.completed = true;
                }
            }
            _ => {}
        }
    }
}

/// What one download did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// The blob CID.
    pub cid: String,
    /// Chunks received and verified in this attempt.
    pub chunks_fetched: u32,
    /// Chunks already verified from an earlier attempt.
    pub chunks_resumed: u32,
    /// Verified bytes received in this attempt.
    pub bytes_fetched: u64,
    /// Chunks that failed verification (and were fetched again).
    pub corrupt_chunks: u32,
    /// Requests that failed for another reason and were retried.
    pub failed_requests: u32,
    /// Chunks received per holder NodeID.
    pub per_holder: BTreeMap<String, u32>,
}

/// Errors of a download.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// No holder answered.
    #[error("no reachable holder of {0}")]
    NoHolder(String),
    /// One chunk failed on every attempt (FILE-016: `partition`).
    #[error("chunk {chunk} of {cid} failed {attempts} times: {last}")]
    Partition {
        /// The blob.
        cid: String,
        /// The chunk.
        chunk: u32,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] BlobError),
}

impl From<FetchError> for CallError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::NoHolder(_) | FetchError::Partition { .. } => {
                CallError::new(ErrorCode::Partition, e.to_string())
            }
            FetchError::Store(e) => blob_error(e),
        }
    }
}

/// One holder of a blob: its NodeID and endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// NodeID text.
    pub node: String,
    /// Bus endpoint (`http://host:port`).
    pub endpoint: String,
}

/// The state behind [`FileService`].
struct Files {
    store: Arc<BlobStore>,
    bus: WeakBus,
    log: Option<EventLog>,
    view: Arc<Mutex<FilesView>>,
    settings: FileSettings,
    /// CID → callers that advertised it with `file.advertise`.
    sources: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// CIDs this node scheduled, and when.
    scheduled_at: Mutex<BTreeMap<String, Instant>>,
    /// Downloads in progress.
    fetching: Mutex<BTreeSet<String>>,
    /// Progress of downloads: chunks verified so far, per CID.
    progress: tokio::sync::watch::Sender<BTreeMap<String, u32>>,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// The file service (M07): the `file.*` capabilities, downloads and
/// replication.
#[derive(Debug)]
pub struct FileService {
    inner: Arc<Files>,
}

impl FileService {
    /// A file service over `store`; with a community log it announces what
    /// it holds and takes part in replication.
    pub fn new(
        store: Arc<BlobStore>,
        bus: &Bus,
        log: Option<EventLog>,
        settings: FileSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            inner: Files::new(store, bus, log, settings),
        })
    }

    /// The blob store.
    pub fn store(&self) -> &Arc<BlobStore> {
        &self.inner.store
    }

    /// Chunks verified so far of each download in progress.
    pub fn progress(&self) -> tokio::sync::watch::Receiver<BTreeMap<String, u32>> {
        self.inner.progress.subscribe()
    }

    /// Holders of `cid` known from the log (after folding what arrived).
    pub fn holders(&self, cid: &str) -> Vec<String> {
        self.inner.holders(cid)
    }

    /// Live holders of `cid` with their endpoints (see [`FileService::fetch`]).
    pub fn live_holders(&self, cid: &str) -> Vec<Holder> {
        self.inner.live_holders(cid)
    }

    /// Stores a local file, pins it and announces it (FILE-018).
    pub async fn add_file(&self, path: &std::path::Path) -> Result<String, BlobError> {
        self.inner.add_file(path).await
    }

    /// Stores bytes, pins them and announces the blob (FILE-018).
    pub async fn add_bytes(&self, data: Vec<u8>) -> Result<String, BlobError> {
        self.inner.add_bytes(data).await
    }

    /// Downloads `cid` from `holders` (default: the live holders known),
    /// verifying every 16 KiB group before it is written and resuming from
    /// the verified chunks of an earlier attempt; the blob is then stored,
    /// pinned and announced.
    pub async fn fetch(
        &self,
        cid: &str,
        holders: Option<Vec<Holder>>,
    ) -> Result<FetchReport, FetchError> {
        self.inner.fetch(cid, holders).await
    }

    /// One replication round (FILE-019/020).
    pub async fn replicate_once(&self) {
        self.inner.replicate_once().await
    }

    /// Runs replication rounds every `replication_interval` until `stop`.
    pub async fn run_replication(&self, stop: tokio_util::sync::CancellationToken) {
        self.inner.clone().run_replication(stop).await
    }
}

impl Files {
    fn new(
        store: Arc<BlobStore>,
        bus: &Bus,
        log: Option<EventLog>,
        settings: FileSettings,
    ) -> Arc<Self> {
        let view = Arc::new(Mutex::new(FilesView::default()));
        if let Some(log) = &log {
            log.register_view(view.clone());
        }
        Arc::new(Files {
            store,
            bus: bus.downgrade(),
            log,
            view,
            settings,
            sources: Mutex::new(BTreeMap::new()),
            scheduled_at: Mutex::new(BTreeMap::new()),
            fetching: Mutex::new(BTreeSet::new()),
            progress: tokio::sync::watch::channel(BTreeMap::new()).0,
        })
    }

    /// Holders of `cid` known from the log (after folding what arrived).
    pub fn holders(&self, cid: &str) -> Vec<String> {
        if let Some(log) = &self.log {
            log.catch_up(|_| ());
        }
        lock(&self.view).holders(cid)
    }

    /// Stores a local file, pins it and announces it (FILE-018).
    pub async fn add_file(&self, path: &std::path::Path) -> Result<String, BlobError> {
        let store = self.store.clone();
        let path = path.to_path_buf();
        let cid = blocking(move || {
            let cid = store.put_file(&path)?;
            store.pin(&cid)?;
            Ok(cid)
        })
        .await?;
        self.stored(&cid).await;
        Ok(cid)
    }

    /// Stores bytes, pins them and announces the blob (FILE-018).
    pub async fn add_bytes(&self, data: Vec<u8>) -> Result<String, BlobError> {
        let store = self.store.clone();
        let cid = blocking(move || {
            let size = data.len() as u64;
            let cid = store.put_sized(data.as_slice(), size)?;
            store.pin(&cid)?;
            Ok(cid)
        })
        .await?;
        self.stored(&cid).await;
        Ok(cid)
    }

    /// After a blob is stored: chunk CIDs in the background, announcement.
    async fn stored(&self, cid: &str) {
        let store = self.store.clone();
        let c = cid.to_string();
        let size = store.stat(cid).map(|i| i.size).unwrap_or(0);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.chunk_cids(&c) {
                tracing::debug!(cid = %c, error = %e, "chunk CIDs");
            }
        });
        self.announce(
            "file.cid.advertised",
            pb::CidAdvertisedEvent {
                cid: cid.to_string(),
                size_bytes: size,
            }
            .encode_to_vec(),
        );
    }

    fn announce(&self, event_type: &str, payload: Vec<u8>) {
        if let Some(log) = &self.log
            && let Err(e) = log.append(event_type, payload)
        {
            tracing::debug!(event_type, error = %e, "file event not appended");
        }
    }

    /// Live holders of `cid` with their endpoints: holders announced in the
    /// log or through `file.advertise` whose manifests this node follows.
    pub fn live_holders(&self, cid: &str) -> Vec<Holder> {
        let Some(bus) = self.bus.upgrade() else {
            return Vec::new();
        };
        let mut named: BTreeSet<String> = self.holders(cid).into_iter().collect();
        named.extend(lock(&self.sources).get(cid).cloned().unwrap_or_default());
        let mut out: Vec<Holder> = bus
            .peers()
            .into_iter()
            .filter(|(node, _)| named.contains(node))
            .map(|(node, endpoint)| Holder { node, endpoint })
            .collect();
        out.dedup_by(|a, b| a.node == b.node);
        out
    }

    /// Downloads `cid` from `holders` (or the live holders known), verifying
    /// every group before it is written; resumes from verified chunks of an
    /// earlier attempt. The blob is stored, pinned and announced.
    pub async fn fetch(
        &self,
        cid: &str,
        holders: Option<Vec<Holder>>,
    ) -> Result<FetchReport, FetchError> {
        check_cid(cid).map_err(|_| FetchError::Store(BlobError::NotFound(cid.to_string())))?;
        let mut report = FetchReport {
            cid: cid.to_string(),
            ..Default::default()
        };
        if self.store.has(cid) {
            return Ok(report);
        }
        let holders = holders.unwrap_or_else(|| self.live_holders(cid));
        let bus = self
            .bus
            .upgrade()
            .ok_or_else(|| FetchError::NoHolder(cid.to_string()))?;
        // The size, from the first holder that answers.
        let mut size = None;
        for h in &holders {
            let Ok(client) = bus.peer_client(&h.endpoint) else {
                continue;
            };
            let req = pb::StatRequest {
                params: Some(pb::StatParams {}),
                input: Some(pb::CidInput {
                    cid: cid.to_string(),
                }),
            };
            if let Ok(r) = client
                .unary::<_, pb::StatResponse>("file.stat", "1.0", &req)
                .await
                && let Some(o) = r.output
            {
                size = Some(o.size_bytes);
                break;
            }
        }
        let size = size.ok_or_else(|| FetchError::NoHolder(cid.to_string()))?;
        let (store, c) = (self.store.clone(), cid.to_string());
        let partial = blocking(move || store.partial(&c, size, "")).await?;
        let missing = partial.missing();
        let batch = missing
            .len()
            .div_ceil(FETCH_STREAMS * 4)
            .clamp(FETCH_BATCH.0, FETCH_BATCH.1);
        report.chunks_resumed = chunk_count(size) - missing.len() as u32;
        let partial = Arc::new(Mutex::new(partial));
        // Work queue: (chunks, attempt) batches.
        let queue: Arc<Queue> = Arc::new(Mutex::new(
            missing.chunks(batch).map(|b| (b.to_vec(), 0)).collect(),
        ));
        let shared = Arc::new(Mutex::new((report, None::<FetchError>)));
        // Up to four streams, spread over the holders (several to one holder
        // when there are fewer): verification runs on every core.
        let streams = FETCH_STREAMS.min(missing.len().div_ceil(batch).max(1));
        let mut workers = Vec::new();
        for w in 0..streams {
            let (queue, partial, shared, holders, bus) = (
                queue.clone(),
                partial.clone(),
                shared.clone(),
                holders.clone(),
                bus.clone(),
            );
            let cid = cid.to_string();
            let progress = self.progress.clone();
            workers.push(tokio::spawn(async move {
                fetch_worker(
                    w, &cid, &bus, &holders, &queue, &partial, &shared, &progress,
                )
                .await;
            }));
        }
        for w in workers {
            let _ = w.await;
        }
        self.progress.send_modify(|p| {
            p.remove(cid);
        });
        let (report, failure) = {
            let mut g = lock(&shared);
            (g.0.clone(), g.1.take())
        };
        if let Some(e) = failure {
            return Err(e);
        }
        let partial = Arc::try_unwrap(partial)
            .map_err(|_| FetchError::NoHolder(cid.to_string()))?
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        let store = self.store.clone();
        let from: Vec<String> = report.per_holder.keys().cloned().collect();
        blocking(move || {
            let cid = store.finish(partial)?;
            store.pin(&cid)?;
            store.set_origin(&cid, &format!("fetched from {}", from.join(",")))?;
            Ok(())
        })
        .await?;
        self.stored(cid).await;
        Ok(report)
    }

    /// One replication round (FILE-019/020): schedules copies of pinned
    /// blobs with too few live holders, completes schedules that are
    /// satisfied, and (as a replica) fetches blobs it is named for.
    pub async fn replicate_once(self: &Arc<Self>) {
        let (Some(log), Some(bus)) = (&self.log, self.bus.upgrade()) else {
            return;
        };
        log.catch_up(|_| ());
        let me = bus.node_id().to_string();
        let live: BTreeSet<String> = bus
            .peers()
            .into_iter()
            .map(|(n, _)| n)
            .chain(std::iter::once(me.clone()))
            .collect();
        let replicas: Vec<String> = {
            let mut r: Vec<String> = bus
                .remote_capabilities()
                .into_iter()
                .filter(|c| {
                    c.name == "file.read" && c.params.get("replica").is_some_and(|v| v == "true")
                })
                .map(|c| c.node)
                .collect();
            r.sort();
            r.dedup();
            r
        };
        let store = self.store.clone();
        let pinned: Vec<(String, BlobInfo)> = blocking(move || store.list())
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, i)| i.pins > 0)
            .collect();
        let desired = self.settings.desired_copies.max(1);
        let again = self.settings.replication_interval * 4;
        for (cid, _) in &pinned {
            let (holders, schedule) = {
                let v = lock(&self.view);
                (v.holders(cid), v.scheduled.get(cid).cloned())
            };
            let mut live_holders: BTreeSet<String> =
                holders.into_iter().filter(|h| live.contains(h)).collect();
            live_holders.insert(me.clone());
            if (live_holders.len() as u32) < desired {
                let recent = lock(&self.scheduled_at)
                    .get(cid)
                    .is_some_and(|t| t.elapsed() < again);
                // Wait while a schedule's candidates are still live and
                // working on it.
                let pending = schedule.as_ref().is_some_and(|s| {
                    !s.completed
                        && s.candidates
                            .iter()
                            .any(|c| live.contains(c) && !live_holders.contains(c))
                });
                if recent && pending {
                    continue;
                }
                let mut candidates: Vec<String> = replicas
                    .iter()
                    .filter(|r| !live_holders.contains(*r))
                    .cloned()
                    .collect();
                // Spread blobs over replicas: order by hash of CID and node.
                candidates.sort_by_key(|n| {
                    blake3::hash(format!("{cid}{n}").as_bytes())
                        .to_hex()
                        .to_string()
                });
                candidates.truncate((desired as usize).saturating_sub(live_holders.len()));
                if candidates.is_empty() {
                    continue;
                }
                let ev = pb::ReplicationScheduledEvent {
                    cid: cid.clone(),
                    desired_copies: desired,
                    current_copies: live_holders.len() as u32,
                    candidate_holders: candidates,
                };
                tracing::info!(cid = %cid, current = ev.current_copies, candidates = ?ev.candidate_holders, "replication scheduled");
                self.announce("file.replication.scheduled", ev.encode_to_vec());
                lock(&self.scheduled_at).insert(cid.clone(), Instant::now());
            } else if let Some(s) = schedule
                && s.scheduler == me
                && !s.completed
            {
                let ev = pb::ReplicationCompletedEvent {
                    cid: cid.clone(),
                    copies: live_holders.len() as u32,
                    holders: live_holders.iter().cloned().collect(),
                };
                tracing::info!(cid = %cid, copies = ev.copies, "replication completed");
                self.announce("file.replication.completed", ev.encode_to_vec());
            }
        }
        if !self.settings.replica {
            return;
        }
        let wanted: Vec<String> = lock(&self.view)
            .scheduled
            .iter()
            .filter(|(_, s)| !s.completed && s.candidates.contains(&me))
            .map(|(cid, _)| cid.clone())
            .collect();
        for cid in wanted {
            if self.store.has(&cid) || !lock(&self.fetching).insert(cid.clone()) {
                continue;
            }
            let this = self.clone();
            tokio::spawn(async move {
                match this.fetch(&cid, None).await {
                    Ok(r) => {
                        tracing::info!(cid = %cid, chunks = r.chunks_fetched, "replica stored")
                    }
                    Err(e) => tracing::info!(cid = %cid, error = %e, "replica fetch failed"),
                }
                lock(&this.fetching).remove(&cid);
            });
        }
    }

    /// Runs replication rounds until `stop`.
    pub async fn run_replication(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.settings.replication_interval) => {}
            }
            self.replicate_once().await;
        }
    }

    async fn serve(self: Arc<Self>, mut req: Request, out: Sink) -> Result<(), CallError> {
        let started = Instant::now();
        match req.capability.name {
            "file.read" => self.read(req.decode()?, &out, started).await,
            "file.list" => {
                let r: pb::ListRequest = req.decode()?;
                let prefix = r.input.unwrap_or_default().prefix;
                let store = self.store.clone();
                let mut cids: Vec<String> = blocking(move || store.list())
                    .await
                    .map_err(blob_error)?
                    .into_iter()
                    .map(|(c, _)| c)
                    .filter(|c| c.starts_with(&prefix))
                    .collect();
                cids.sort();
                out.send(&pb::ListResponse {
                    output: Some(pb::ListOutput { cids }),
                    meta: Some(pb::ListMeta {
                        ms: started.elapsed().as_millis() as u64,
                    }),
                })
                .await
            }
            "file.advertise" => {
                let r: pb::AdvertiseRequest = req.decode()?;
                let cids = r.input.unwrap_or_default().cids;
                for c in &cids {
                    check_cid(c)?;
                }
                let caller = req.caller.to_string();
                {
                    let mut sources = lock(&self.sources);
                    for c in &cids {
                        sources.entry(c.clone()).or_default().insert(caller.clone());
                    }
                }
                out.send(&pb::AdvertiseResponse {
                    output: Some(pb::AdvertiseOutput {
                        recorded: cids.len() as u32,
                    }),
                    meta: Some(pb::AdvertiseMeta {
                        ms: started.elapsed().as_millis() as u64,
                    }),
                })
                .await
            }
            "file.stat" | "file.pin" | "file.unpin" | "file.delete" => {
                let cid = match req.capability.name {
                    "file.stat" => req.decode::<pb::StatRequest>()?.input,
                    "file.pin" => req.decode::<pb::PinRequest>()?.input,
                    "file.unpin" => req.decode::<pb::UnpinRequest>()?.input,
                    _ => req.decode::<pb::DeleteRequest>()?.input,
                }
                .unwrap_or_default()
                .cid;
                check_cid(&cid)?;
                self.local_op(req.capability.name, &cid, &out, started)
                    .await
            }
            "file.put" => {
                let first: pb::PutRequest = req.decode()?;
                let caller = req.caller.to_string();
                let input = req.input.take();
                self.put(first, input, &caller, &out, started).await
            }
            "file.put.resume" => {
                let first: pb::PutResumeRequest = req.decode()?;
                let caller = req.caller.to_string();
                let input = req.input.take();
                self.put_resume(first, input, &caller, &out, started).await
            }
            other => Err(CallError::new(
                ErrorCode::NotFound,
                format!("{other} is not served here"),
            )),
        }
    }

    async fn local_op(
        &self,
        op: &str,
        cid: &str,
        out: &Sink,
        started: Instant,
    ) -> Result<(), CallError> {
        let store = self.store.clone();
        let c = cid.to_string();
        match op {
            "file.delete" => {
                let freed = blocking(move || store.delete(&c))
                    .await
                    .map_err(blob_error)?;
                if self.holders(cid).contains(&self.me()) {
                    self.announce(
                        "file.cid.unpinned",
                        pb::CidUnpinnedEvent {
                            cid: cid.to_string(),
                        }
                        .encode_to_vec(),
                    );
                }
                out.send(&pb::DeleteResponse {
                    output: Some(pb::DeleteOutput { freed_bytes: freed }),
                    meta: meta(started),
                })
                .await
            }
            _ => {
                let op = op.to_string();
                let info = blocking(move || match op.as_str() {
                    "file.pin" => store.pin(&c),
                    "file.unpin" => store.unpin(&c),
                    _ => store.stat(&c),
                })
                .await
                .map_err(blob_error)?;
                // The three responses share one shape (StatOutput, StatMeta).
                out.send(&pb::StatResponse {
                    output: Some(stat_output(cid, &info)),
                    meta: meta(started),
                })
                .await
            }
        }
    }

    fn me(&self) -> String {
        self.bus
            .upgrade()
            .map(|b| b.node_id().to_string())
            .unwrap_or_default()
    }

    async fn read(
        &self,
        r: pb::ReadRequest,
        out: &Sink,
        started: Instant,
    ) -> Result<(), CallError> {
        let input = r.input.unwrap_or_default();
        let cid = input.cid;
        check_cid(&cid)?;
        let store = self.store.clone();
        let c = cid.clone();
        let held = blocking(move || match store.stat(&c) {
            Ok(info) => Ok(Some(info)),
            Err(BlobError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        })
        .await
        .map_err(blob_error)?;
        let Some(info) = held else {
            // A chunk CID (FILE-001).
            let store = self.store.clone();
            let c = cid.clone();
            let found = blocking(move || {
                let Some((blob, i)) = store.find_chunk(&c)? else {
                    return Ok(None);
                };
                let size = store.stat(&blob)?.size;
                let (s, e) = blobs::chunk_range(size, i);
                Ok(Some(store.read_bytes(&blob, s, e)?))
            })
            .await
            .map_err(blob_error)?;
            let Some(data) = found else {
                return Err(CallError::new(
                    ErrorCode::NotFound,
                    format!("no blob or chunk {cid}"),
                ));
            };
            out.send(&pb::ReadResponse {
                frame: Some(pb::read_response::Frame::Chunk(pb::ChunkFrame {
                    i: 0,
                    cid: cid.clone(),
                    size_bytes: data.len() as u64,
                    data,
                    encoded: Vec::new(),
                })),
            })
            .await?;
            return out
                .send(&pb::ReadResponse {
                    frame: Some(pb::read_response::Frame::Done(pb::ReadDoneFrame {
                        chunks: 1,
                        ms: started.elapsed().as_millis() as u64,
                    })),
                })
                .await;
        };
        let count = chunk_count(info.size);
        let wanted: Vec<u32> = if input.chunks.is_empty() {
            (0..count).collect()
        } else {
            let ok = input.chunks.windows(2).all(|w| w[0] < w[1])
                && input.chunks.iter().all(|&i| i < count);
            if !ok {
                return Err(CallError::bad_request(format!(
                    "chunks must be strictly ascending indices below {count}"
                )));
            }
            input.chunks
        };
        let store = self.store.clone();
        let c = cid.clone();
        let cids = blocking(move || store.chunk_cids(&c))
            .await
            .map_err(blob_error)?;
        out.send(&pb::ReadResponse {
            frame: Some(pb::read_response::Frame::Manifest(pb::ManifestFrame {
                cid: cid.clone(),
                size_bytes: info.size,
                chunk_size_bytes: CHUNK_BYTES as u32,
                chunks: cids
                    .iter()
                    .enumerate()
                    .map(|(i, c)| pb::ChunkRef {
                        i: i as u32,
                        cid: c.clone(),
                    })
                    .collect(),
            })),
        })
        .await?;
        let cids = Arc::new(cids);
        // Read the next chunk while the current one is being sent.
        let mut next = None;
        let load = |i: u32| {
            let (store, cid, cids) = (self.store.clone(), cid.clone(), cids.clone());
            let verified = input.verified;
            tokio::task::spawn_blocking(move || -> Result<pb::ChunkFrame, BlobError> {
                let (s, e) = blobs::chunk_range(info.size, i);
                let (data, encoded) = if verified {
                    (Vec::new(), store.read_chunk(&cid, i)?)
                } else {
                    (store.read_bytes(&cid, s, e)?, Vec::new())
                };
                Ok(pb::ChunkFrame {
                    i,
                    cid: cids.get(i as usize).cloned().unwrap_or_default(),
                    size_bytes: e - s,
                    data,
                    encoded,
                })
            })
        };
        for (k, &i) in wanted.iter().enumerate() {
            let current = match next.take() {
                Some(h) => h,
                None => load(i),
            };
            if let Some(&n) = wanted.get(k + 1) {
                next = Some(load(n));
            }
            let frame = current
                .await
                .map_err(|e| CallError::internal(e.to_string()))?
                .map_err(blob_error)?;
            out.send(&pb::ReadResponse {
                frame: Some(pb::read_response::Frame::Chunk(frame)),
            })
            .await?;
        }
        out.send(&pb::ReadResponse {
            frame: Some(pb::read_response::Frame::Done(pb::ReadDoneFrame {
                chunks: wanted.len() as u32,
                ms: started.elapsed().as_millis() as u64,
            })),
        })
        .await
    }

    /// Refuses a put that would leave less free disk than configured
    /// (FILE-004) or not fit the quota.
    fn check_room(&self, size: u64) -> Result<(), CallError> {
        if let Ok(st) = rustix::fs::statvfs(self.store.dir()) {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            if free < size.saturating_add(self.settings.min_free_bytes) {
                return Err(CallError::new(
                    ErrorCode::CapacityExceeded,
                    format!(
                        "{size} bytes would leave less than {} bytes free",
                        self.settings.min_free_bytes
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn put(
        &self,
        first: pb::PutRequest,
        input: Option<crate::bus::Input>,
        caller: &str,
        out: &Sink,
        started: Instant,
    ) -> Result<(), CallError> {
        let Some(pb::put_request::Frame::Manifest(m)) = first.frame else {
            return Err(CallError::bad_request(
                "the first frame of file.put must be `manifest`",
            ));
        };
        check_cid(&m.cid)?;
        let count = chunk_count(m.size_bytes);
        let ok = m.chunk_size_bytes == CHUNK_BYTES as u32
            && m.chunks.len() == count as usize
            && m.chunks
                .iter()
                .enumerate()
                .all(|(k, c)| c.i == k as u32 && check_cid(&c.cid).is_ok());
        if !ok {
            return Err(CallError::bad_request(format!(
                "manifest must list {count} chunks of {CHUNK_BYTES} bytes in order (FILE-010)"
            )));
        }
        let mut input = input.ok_or_else(|| CallError::bad_request("file.put needs Open"))?;
        if self.store.has(&m.cid) {
            // FILE-015: already held; take the frames and succeed.
            let mut n = 0;
            while input.next::<pb::PutRequest>().await?.is_some() {
                n += 1;
            }
            return out
                .send(&pb::PutResponse {
                    output: Some(pb::PutOutput { received: n }),
                    meta: Some(pb::PutMeta {
                        ms: started.elapsed().as_millis() as u64,
                    }),
                })
                .await;
        }
        self.check_room(m.size_bytes)?;
        let (store, cid, size, owner) = (
            self.store.clone(),
            m.cid.clone(),
            m.size_bytes,
            caller.to_string(),
        );
        let mut partial = blocking(move || store.partial(&cid, size, &owner))
            .await
            .map_err(blob_error)?;
        let mut received = 0;
        while let Some(frame) = input.next::<pb::PutRequest>().await? {
            let Some(pb::put_request::Frame::Chunk(c)) = frame.frame else {
                return Err(CallError::bad_request(
                    "every frame after the manifest must be `chunk`",
                ));
            };
            let expected = m.chunks.get(c.i as usize).map(|r| r.cid.as_str());
            if expected != Some(c.cid.as_str()) {
                return Err(CallError::bad_request(format!(
                    "chunk {} does not carry the manifest's CID (FILE-013)",
                    c.i
                )));
            }
            partial = accept_plain(partial, c).await?;
            received += 1;
        }
        self.complete_upload(partial, received, out, started, false)
            .await
    }

    async fn complete_upload(
        &self,
        partial: Partial,
        received: u32,
        out: &Sink,
        started: Instant,
        resume: bool,
    ) -> Result<(), CallError> {
        if !partial.is_complete() {
            return Err(CallError::bad_request(format!(
                "{} chunks still missing; finish with file.put.resume",
                partial.missing().len()
            )));
        }
        let store = self.store.clone();
        let cid = blocking(move || {
            let cid = store.finish(partial)?;
            store.pin(&cid)?;
            Ok(cid)
        })
        .await
        .map_err(blob_error)?;
        self.stored(&cid).await;
        let ms = started.elapsed().as_millis() as u64;
        if resume {
            out.send(&pb::PutResumeResponse {
                frame: Some(pb::put_resume_response::Frame::Done(pb::ResumeDoneFrame {
                    received,
                    ms,
                })),
            })
            .await
        } else {
            out.send(&pb::PutResponse {
                output: Some(pb::PutOutput { received }),
                meta: Some(pb::PutMeta { ms }),
            })
            .await
        }
    }

    async fn put_resume(
        &self,
        first: pb::PutResumeRequest,
        input: Option<crate::bus::Input>,
        caller: &str,
        out: &Sink,
        started: Instant,
    ) -> Result<(), CallError> {
        let Some(pb::put_resume_request::Frame::Start(start)) = first.frame else {
            return Err(CallError::bad_request(
                "the first frame of file.put.resume must be `start`",
            ));
        };
        let cid = start.input.unwrap_or_default().manifest_cid;
        check_cid(&cid)?;
        let mut input =
            input.ok_or_else(|| CallError::bad_request("file.put.resume needs Open"))?;
        let ready = |missing: Vec<u32>| pb::PutResumeResponse {
            frame: Some(pb::put_resume_response::Frame::Ready(
                pb::ResumeReadyFrame { missing },
            )),
        };
        if self.store.has(&cid) {
            out.send(&ready(Vec::new())).await?;
            return out
                .send(&pb::PutResumeResponse {
                    frame: Some(pb::put_resume_response::Frame::Done(pb::ResumeDoneFrame {
                        received: 0,
                        ms: started.elapsed().as_millis() as u64,
                    })),
                })
                .await;
        }
        let store = self.store.clone();
        let c = cid.clone();
        let partial = blocking(move || store.existing_partial(&c))
            .await
            .map_err(blob_error)?;
        let Some(mut partial) = partial.filter(|p| p.owner() == caller) else {
            return Err(CallError::new(
                ErrorCode::NotFound,
                format!("no interrupted upload of {cid} from this caller"),
            ));
        };
        let missing = partial.missing();
        out.send(&ready(missing.clone())).await?;
        let wanted: BTreeSet<u32> = missing.into_iter().collect();
        let mut received = 0;
        while let Some(frame) = input.next::<pb::PutResumeRequest>().await? {
            let Some(pb::put_resume_request::Frame::Chunk(c)) = frame.frame else {
                return Err(CallError::bad_request(
                    "every frame after `start` must be `chunk`",
                ));
            };
            if !wanted.contains(&c.i) {
                return Err(CallError::bad_request(format!(
                    "chunk {} was not asked for",
                    c.i
                )));
            }
            partial = accept_plain(partial, c).await?;
            received += 1;
        }
        self.complete_upload(partial, received, out, started, true)
            .await
    }
}

async fn accept_plain(mut partial: Partial, c: pb::PutChunk) -> Result<Partial, CallError> {
    let (partial, r) = tokio::task::spawn_blocking(move || {
        let r = partial.accept_plain(c.i, &c.cid, &c.data);
        (partial, r)
    })
    .await
    .map_err(|e| CallError::internal(e.to_string()))?;
    r.map_err(|e| CallError::bad_request(format!("chunk refused: {e}")))?;
    Ok(partial)
}

/// One download stream: takes batches from the queue and fetches them from
/// the holders in turn, starting at its own.
#[allow(clippy::too_many_arguments)]
async fn fetch_worker(
    w: usize,
    cid: &str,
    bus: &Bus,
    holders: &[Holder],
    queue: &Queue,
    partial: &Arc<Mutex<Partial>>,
    shared: &Mutex<(FetchReport, Option<FetchError>)>,
    progress: &tokio::sync::watch::Sender<BTreeMap<String, u32>>,
) {
    loop {
        if lock(shared).1.is_some() {
            return;
        }
        let Some((batch, attempt)) = lock(queue).pop_front() else {
            return;
        };
        if holders.is_empty() {
            lock(shared).1 = Some(FetchError::NoHolder(cid.to_string()));
            return;
        }
        let holder = &holders[(w + attempt as usize) % holders.len()];
        let outcome = fetch_batch(cid, bus, holder, &batch, partial, shared, progress).await;
        let (done, error) = outcome;
        let rest: Vec<u32> = batch
            .iter()
            .copied()
            .filter(|i| !done.contains(i))
            .collect();
        if rest.is_empty() {
            continue;
        }
        let msg = error.unwrap_or_else(|| "stream ended early".into());
        if msg.starts_with("rate_limited") {
            // Not the holder's fault: wait and ask again.
            tokio::time::sleep(Duration::from_millis(500)).await;
            lock(queue).push_back((rest, attempt));
            continue;
        }
        if attempt + 1 >= FETCH_ATTEMPTS {
            lock(shared).1 = Some(FetchError::Partition {
                cid: cid.to_string(),
                chunk: rest[0],
                attempts: attempt + 1,
                last: msg,
            });
            return;
        }
        tracing::debug!(cid, holder = %holder.node, chunks = rest.len(), error = %msg, "fetch retry");
        lock(queue).push_back((rest, attempt + 1));
    }
}

/// Fetches `batch` from one holder; returns the chunks verified and the
/// failure that stopped it, if any.
async fn fetch_batch(
    cid: &str,
    bus: &Bus,
    holder: &Holder,
    batch: &[u32],
    partial: &Arc<Mutex<Partial>>,
    shared: &Mutex<(FetchReport, Option<FetchError>)>,
    progress: &tokio::sync::watch::Sender<BTreeMap<String, u32>>,
) -> (Vec<u32>, Option<String>) {
    let mut done = Vec::new();
    let mut writer: Option<blobs::ChunkWriter> = None;
    let client = match bus.peer_client(&holder.endpoint) {
        Ok(c) => c,
        Err(e) => {
            lock(shared).0.failed_requests += 1;
            return (done, Some(e.to_string()));
        }
    };
    let req = pb::ReadRequest {
        params: Some(pb::ReadParams {}),
        input: Some(pb::ReadInput {
            cid: cid.to_string(),
            verified: true,
            chunks: batch.to_vec(),
        }),
    };
    let call = client.request(
        "file.read",
        "1.1",
        PayloadEncoding::Proto,
        req.encode_to_vec(),
    );
    let mut stream = match client.send(call, Some(Duration::from_secs(300))).await {
        Ok(s) => s,
        Err(e) => {
            lock(shared).0.failed_requests += 1;
            return (done, Some(e.to_string()));
        }
    };
    loop {
        let item = match stream.next().await {
            Ok(Some(item)) => item,
            Ok(None) => return (done, None),
            Err(e) => {
                lock(shared).0.failed_requests += 1;
                return (done, Some(e.to_string()));
            }
        };
        let CallItem::Data(bytes) = item else {
            continue;
        };
        let frame = match pb::ReadResponse::decode(bytes.as_slice()) {
            Ok(f) => f.frame,
            Err(e) => return (done, Some(format!("bad frame: {e}"))),
        };
        match frame {
            Some(pb::read_response::Frame::Chunk(c)) => {
                if !batch.contains(&c.i) || done.contains(&c.i) {
                    return (done, Some(format!("chunk {} was not asked for", c.i)));
                }
                if c.encoded.is_empty() && c.size_bytes > 0 {
                    return (
                        done,
                        Some("the holder does not send verified chunk streams".into()),
                    );
                }
                let n = c.encoded.len() as u64;
                let i = c.i;
                let mut w = match writer.take() {
                    Some(w) => w,
                    None => match lock(partial).writer() {
                        Ok(w) => w,
                        Err(e) => {
                            lock(shared).1 = Some(FetchError::Store(e));
                            return (done, None);
                        }
                    },
                };
                let r = tokio::task::spawn_blocking(move || {
                    let r = w.verify_and_write(i, &c.encoded);
                    (w, r)
                })
                .await;
                let r = match r {
                    Ok((w, r)) => {
                        writer = Some(w);
                        r.and_then(|()| lock(partial).mark_received(i))
                    }
                    Err(e) => Err(BlobError::Io(std::io::Error::other(e.to_string()))),
                };
                match r {
                    Ok(()) => {
                        done.push(i);
                        let mut g = lock(shared);
                        g.0.chunks_fetched += 1;
                        g.0.bytes_fetched += n.min(CHUNK_BYTES);
                        *g.0.per_holder.entry(holder.node.clone()).or_default() += 1;
                        let total = g.0.chunks_fetched + g.0.chunks_resumed;
                        drop(g);
                        progress.send_modify(|m| {
                            m.insert(cid.to_string(), total);
                        });
                    }
                    Err(BlobError::Corrupt { offset, .. }) => {
                        lock(shared).0.corrupt_chunks += 1;
                        return (
                            done,
                            Some(format!("chunk {i} failed verification at byte {offset}")),
                        );
                    }
                    Err(e) => {
                        lock(shared).1 = Some(FetchError::Store(e));
                        return (done, None);
                    }
                }
            }
            Some(pb::read_response::Frame::Manifest(m)) => {
                if m.cid != cid {
                    return (done, Some("manifest names another blob".into()));
                }
            }
            Some(pb::read_response::Frame::Done(_)) | None => {}
        }
    }
}

impl Service for FileService {
    fn name(&self) -> &str {
        "file"
    }

    fn offers(&self) -> Vec<Offer> {
        let mut offers = Offer::all(&[
            "file.read",
            "file.list",
            "file.advertise",
            "file.put",
            "file.put.resume",
            "file.stat",
            "file.pin",
            "file.unpin",
            "file.delete",
        ]);
        if self.inner.settings.replica {
            for o in &mut offers {
                if o.capability.name == "file.read" {
                    o.params.insert("replica".into(), "true".into());
                }
            }
        }
        offers
    }

    fn call(&self, req: Request, out: Sink) -> BoxFuture<'static, Result<(), CallError>> {
        let inner = self.inner.clone();
        async move { inner.serve(req, out).await }.boxed()
    }
}
