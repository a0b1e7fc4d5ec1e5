//! The community marketplace (`protocol/spec/market.md`).
//!
//! Posts are events in the community log (`market.post.created`,
//! `.updated`, `.expired`). Every node folds them into a [`MarketView`] that
//! answers `market.list` and `market.search`; `market.post` and
//! `market.expire` append events authored by this node, so only its own
//! operator may call them (MARKET-013).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use base64::Engine as _;
use futures::FutureExt;
use futures::future::BoxFuture;
use prost::Message;
use serde::{Deserialize, Serialize};

use hearthnet_sdk::constants as k;
use hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode;
use hearthnet_sdk::proto::hearthnet::embed::v1 as embed;
use hearthnet_sdk::proto::hearthnet::market::v1::{self as mk, ExpireReason, Post, PostCategory};
use hearthnet_sdk::wkt::Timestamp;

use crate::bus::{Bus, Offer, Request, Service, Sink, Trust, WeakBus};
use crate::error::CallError;
use crate::events::{Appended, EventLog, LogEvent, Membership, View};

/// Snapshot name of the marketplace view.
const VIEW_NAME: &str = "x-hearthnet.market.posts";
const DEFAULT_TTL: u32 = k::MARKET_DEFAULT_TTL_SECONDS as u32;
const MAX_TTL: u32 = k::MARKET_MAX_TTL_SECONDS as u32;
const LIST_DEFAULT: u32 = k::MARKET_LIST_DEFAULT_LIMIT as u32;
const LIST_MAX: u32 = k::MARKET_LIST_MAX_LIMIT as u32;
const SEARCH_DEFAULT: u32 = k::MARKET_SEARCH_DEFAULT_K as u32;
const SEARCH_MAX: u32 = k::MARKET_SEARCH_MAX_K as u32;
const CACHE_MAX: usize = k::MARKET_SEARCH_EMBEDDING_CACHE_ENTRIES as usize;
/// Most texts per `embed.text` call (EMBED-001).
const EMBED_BATCH: usize = 256;
/// Longest text `embed.text` accepts, in characters (EMBED-001).
const EMBED_TEXT_MAX_CHARS: usize = 8192;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_secs() -> i64 {
    Timestamp::now().seconds
}

fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

/// The client id the sweeper uses for its stale expiry of a post, so that
/// it never authors two for one post (MARKET-011, MARKET-012).
fn sweep_client_id(post_id: &str) -> String {
    format!("sweep-{post_id}")
}

/// The recorded expiry of a post (MARKET-007).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expiry {
    /// Id of the `market.post.expired` event.
    pub event_id: String,
    /// Its Lamport time.
    pub lamport: u64,
    /// Its author's NodeID text.
    pub author: String,
    /// Its `ExpireReason` number.
    pub reason: i32,
}

#[derive(Debug, Clone)]
struct Entry {
    post: Post,
    /// Unix seconds from which the post counts as expired (MARKET-006).
    expires_at: i64,
    /// The valid expiry with the lowest (Lamport, id).
    expiry: Option<Expiry>,
    /// (Lamport, id) of the last change of title, body and location.
    versions: [(u64, String); 3],
}

impl Entry {
    /// MARKET-009: expired from `expires_at` on, or once a valid expiry is recorded.
    fn expired(&self, now: i64) -> bool {
        self.expiry.is_some() || now >= self.expires_at
    }
}

/// The marketplace view: posts keyed by the id of their
/// `market.post.created` event, with expiries (MARKET-004, MARKET-007),
/// updates (MARKET-008) and retry keys (MARKET-012). A deterministic fold of
/// the log; expiry by time is evaluated at query time.
#[derive(Debug, Default)]
pub struct MarketView {
    posts: HashMap<String, Entry>,
    retry: HashMap<(String, String), Appended>,
}

impl MarketView {
    /// The posts not expired at `now` (unix seconds), in ascending Lamport
    /// order, ties by event id.
    pub fn active_posts(&self, now: i64) -> Vec<Post> {
        let mut posts: Vec<Post> = self
            .posts
            .values()
            .filter(|e| !e.expired(now))
            .map(|e| e.post.clone())
            .collect();
        posts.sort_by(|a, b| (a.lamport, &a.event_id).cmp(&(b.lamport, &b.event_id)));
        posts
    }

    /// A post, expired or not (title, body and location are empty after a
    /// `user_request` expiry, MARKET-010).
    pub fn post(&self, event_id: &str) -> Option<Post> {
        self.posts.get(event_id).map(|e| e.post.clone())
    }

    /// The recorded expiry of a post, if any.
    pub fn expiry(&self, event_id: &str) -> Option<&Expiry> {
        self.posts.get(event_id).and_then(|e| e.expiry.as_ref())
    }

    /// Whether a known post is expired at `now`; `None` for an unknown post.
    pub fn is_expired(&self, event_id: &str, now: i64) -> Option<bool> {
        self.posts.get(event_id).map(|e| e.expired(now))
    }

    /// The event an (author, client id) retry key names (MARKET-012).
    pub fn retry(&self, author: &str, client_id: &str) -> Option<Appended> {
        self.retry
            .get(&(author.to_string(), client_id.to_string()))
            .cloned()
    }

    /// Ids of the posts past `expires_at` at `now` without a valid expiry
    /// (candidates for the sweeper, MARKET-011), sorted.
    pub fn stale_candidates(&self, now: i64) -> Vec<String> {
        let mut ids: Vec<String> = self
            .posts
            .iter()
            .filter(|(_, e)| e.expiry.is_none() && now >= e.expires_at)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Records the retry key of `ev`; false when the key already names
    /// another event (the event is then a duplicate and ignored).
    fn remember(&mut self, ev: &LogEvent, client_id: &str) -> bool {
        if client_id.is_empty() {
            return true;
        }
        let named = self
            .retry
            .entry((ev.author.clone(), client_id.to_string()))
            .or_insert_with(|| Appended {
                id: ev.id.clone(),
                lamport: ev.lamport,
            });
        named.id == ev.id
    }

    fn fold_created(&mut self, ev: &LogEvent, p: mk::PostCreatedEvent) {
        if !self.remember(ev, &p.client_id) || self.posts.contains_key(&ev.id) {
            return;
        }
        let expires_at = ev.wall_clock.saturating_add(i64::from(p.ttl_seconds));
        let post = Post {
            event_id: ev.id.clone(),
            lamport: ev.lamport,
            author: ev.author.clone(),
            category: p.category,
            title: p.title,
            body: p.body,
            location: p.location,
            tags: p.tags,
            created_at: at(ev.wall_clock),
            expires_at: at(expires_at),
            score: None,
        };
        let version = (ev.lamport, ev.id.clone());
        self.posts.insert(
            ev.id.clone(),
            Entry {
                post,
                expires_at,
                expiry: None,
                versions: [version.clone(), version.clone(), version],
            },
        );
    }

    /// MARKET-008: only the author, only while the post is not expired; per
    /// field the higher (Lamport, id) wins.
    fn fold_updated(&mut self, ev: &LogEvent, u: mk::PostUpdatedEvent) {
        if !self.remember(ev, &u.client_id) {
            return;
        }
        let Some(e) = self.posts.get_mut(&u.target_event_id) else {
            return;
        };
        if e.post.author != ev.author || e.expired(ev.wall_clock) {
            return;
        }
        let Some(fields) = u.fields else {
            return;
        };
        let version = (ev.lamport, ev.id.clone());
        if let Some(title) = fields.title
            && version > e.versions[0]
        {
            e.post.title = title;
            e.versions[0] = version.clone();
        }
        if let Some(body) = fields.body
            && version > e.versions[1]
        {
            e.post.body = body;
            e.versions[1] = version.clone();
        }
        if let Some(location) = fields.location
            && version > e.versions[2]
        {
            e.post.location = Some(location);
            e.versions[2] = version;
        }
    }

    /// MARKET-004, MARKET-007, MARKET-010.
    fn fold_expired(&mut self, ev: &LogEvent, x: mk::PostExpiredEvent, members: &Membership) {
        if !self.remember(ev, &x.client_id) {
            return;
        }
        let Some(e) = self.posts.get_mut(&x.target_event_id) else {
            return;
        };
        let valid = ev.author == e.post.author
            || (x.reason == ExpireReason::Stale as i32 && members.is_trusted(&ev.author));
        if !valid {
            return;
        }
        if x.reason == ExpireReason::UserRequest as i32 {
            e.post.title.clear();
            e.post.body.clear();
            e.post.location = None;
        }
        let earlier = e
            .expiry
            .as_ref()
            .is_none_or(|cur| (ev.lamport, ev.id.as_str()) < (cur.lamport, cur.event_id.as_str()));
        if earlier {
            e.expiry = Some(Expiry {
                event_id: ev.id.clone(),
                lamport: ev.lamport,
                author: ev.author.clone(),
                reason: x.reason,
            });
        }
    }
}

impl View for MarketView {
    fn name(&self) -> &'static str {
        VIEW_NAME
    }

    fn reset(&mut self) {
        *self = Self::default();
    }

    fn apply(&mut self, ev: &LogEvent, members: &Membership) {
        let bytes = ev.payload.as_slice();
        match ev.event_type.as_str() {
            "market.post.created" => {
                if let Ok(p) = mk::PostCreatedEvent::decode(bytes) {
                    self.fold_created(ev, p);
                }
            }
            "market.post.updated" => {
                if let Ok(u) = mk::PostUpdatedEvent::decode(bytes) {
                    self.fold_updated(ev, u);
                }
            }
            "market.post.expired" => {
                if let Ok(x) = mk::PostExpiredEvent::decode(bytes) {
                    self.fold_expired(ev, x, members);
                }
            }
            _ => {}
        }
    }

    fn encode(&self) -> Option<Vec<u8>> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut entries: Vec<&Entry> = self.posts.values().collect();
        entries.sort_by(|a, b| {
            (a.post.lamport, &a.post.event_id).cmp(&(b.post.lamport, &b.post.event_id))
        });
        let posts = entries
            .into_iter()
            .map(|e| SnapPost {
                post: b64.encode(e.post.encode_to_vec()),
                expires_at: e.expires_at,
                expiry: e.expiry.clone(),
                versions: e.versions.clone(),
            })
            .collect();
        let mut retry: Vec<(String, String, String, u64)> = self
            .retry
            .iter()
            .map(|((a, c), x)| (a.clone(), c.clone(), x.id.clone(), x.lamport))
            .collect();
        retry.sort();
        serde_json::to_vec(&Snapshot { posts, retry }).ok()
    }

    fn restore(&mut self, state: &[u8]) -> bool {
        let b64 = base64::engine::general_purpose::STANDARD;
        let Ok(snap) = serde_json::from_slice::<Snapshot>(state) else {
            return false;
        };
        let mut view = Self::default();
        for p in snap.posts {
            let Some(post) = b64
                .decode(&p.post)
                .ok()
                .and_then(|b| Post::decode(b.as_slice()).ok())
            else {
                return false;
            };
            let entry = Entry {
                post,
                expires_at: p.expires_at,
                expiry: p.expiry,
                versions: p.versions,
            };
            view.posts.insert(entry.post.event_id.clone(), entry);
        }
        for (author, client_id, id, lamport) in snap.retry {
            view.retry
                .insert((author, client_id), Appended { id, lamport });
        }
        *self = view;
        true
    }
}

/// The view's state in snapshots; posts as protobuf (base64), so floats
/// survive exactly.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    posts: Vec<SnapPost>,
    /// (author, client id, event id, Lamport time).
    retry: Vec<(String, String, String, u64)>,
}

#[derive(Serialize, Deserialize)]
struct SnapPost {
    post: String,
    expires_at: i64,
    expiry: Option<Expiry>,
    versions: [(u64, String); 3],
}

/// MARKET-001 over active posts already in ascending Lamport order.
fn list_posts(
    posts: Vec<Post>,
    input: &mk::ListPostsInput,
) -> Result<mk::ListPostsOutput, CallError> {
    let limit = input.limit.unwrap_or(LIST_DEFAULT);
    if limit > LIST_MAX {
        return Err(CallError::bad_request(format!(
            "limit {limit} is above {LIST_MAX}"
        )));
    }
    let any = input.category == PostCategory::Unspecified as i32;
    let posts: Vec<Post> = posts
        .into_iter()
        .filter(|p| {
            (any || p.category == input.category)
                && p.lamport > input.since_lamport
                && input.tags.iter().all(|t| p.tags.contains(t))
        })
        .take(limit as usize)
        .collect();
    let max_lamport = posts.last().map_or(input.since_lamport, |p| p.lamport);
    Ok(mk::ListPostsOutput { posts, max_lamport })
}

/// The fallback of MARKET-005: case-insensitive substring match over title
/// and body, score 1.0, newest first.
fn substring_search(posts: Vec<Post>, query: &str, k: usize) -> Vec<Post> {
    let q = query.to_lowercase();
    let mut hits: Vec<Post> = posts
        .into_iter()
        .filter(|p| p.title.to_lowercase().contains(&q) || p.body.to_lowercase().contains(&q))
        .map(|p| Post {
            score: Some(1.0),
            ..p
        })
        .collect();
    hits.sort_by(|a, b| (b.lamport, &b.event_id).cmp(&(a.lamport, &a.event_id)));
    hits.truncate(k);
    hits
}

/// Posts ranked by their scores, best first (ties newest first).
fn rank(posts: Vec<Post>, scores: Vec<f32>, k: usize) -> Vec<Post> {
    let mut scored: Vec<Post> = posts
        .into_iter()
        .zip(scores)
        .map(|(p, s)| Post {
            score: Some(s),
            ..p
        })
        .collect();
    scored.sort_by(|a, b| {
        b.score
            .unwrap_or(0.0)
            .total_cmp(&a.score.unwrap_or(0.0))
            .then_with(|| (b.lamport, &b.event_id).cmp(&(a.lamport, &a.event_id)))
    });
    scored.truncate(k);
    scored
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na <= f32::EPSILON || nb <= f32::EPSILON {
        0.0
    } else {
        dot / (na * nb)
    }
}

fn clip(text: &str) -> String {
    text.chars().take(EMBED_TEXT_MAX_CHARS).collect()
}

fn post_text(p: &Post) -> String {
    clip(&format!("{}\n{}", p.title, p.body))
}

fn operator_only(req: &Request) -> Result<(), CallError> {
    if req.trust == Trust::Operator {
        Ok(())
    } else {
        Err(CallError::new(
            ErrorCode::Unauthorized,
            format!(
                "{} appends events authored by this node; only its own operator may call it",
                req.capability.name
            ),
        ))
    }
}

fn reason_name(r: ExpireReason) -> String {
    r.as_str_name()
        .trim_start_matches("EXPIRE_REASON_")
        .to_ascii_lowercase()
}

/// Post embeddings by post id, with the text they were made from.
#[derive(Default)]
struct EmbedCache {
    model: String,
    vectors: HashMap<String, (String, Vec<f32>)>,
}

struct Inner {
    log: EventLog,
    /// Weak: the bus holds this service.
    bus: WeakBus,
    me: String,
    view: Arc<Mutex<MarketView>>,
    /// Serialises check-then-append of idempotent writes.
    writes: Mutex<()>,
    cache: Mutex<EmbedCache>,
}

/// The marketplace service: `market.post`, `market.list`, `market.expire`
/// and `market.search`, plus the expiry sweeper (MARKET-011).
pub struct MarketService {
    inner: Arc<Inner>,
}

impl MarketService {
    /// The service over a community log; creates and registers its view.
    pub fn new(log: EventLog, bus: Bus) -> Arc<Self> {
        let view = Arc::new(Mutex::new(MarketView::default()));
        log.register_view(view.clone());
        Arc::new(Self {
            inner: Arc::new(Inner {
                me: log.node_id().to_string(),
                log,
                bus: bus.downgrade(),
                view,
                writes: Mutex::new(()),
                cache: Mutex::new(EmbedCache::default()),
            }),
        })
    }

    /// The marketplace view (call [`EventLog::catch_up`] first for a
    /// current state).
    pub fn view(&self) -> Arc<Mutex<MarketView>> {
        self.inner.view.clone()
    }

    /// One sweep (MARKET-011): when this node is trusted or anchor, appends
    /// one `stale` expiry for every post past `expires_at` at `now` without
    /// a valid expiry, never two for one post. Returns how many it appended.
    pub fn sweep_stale(&self, now: i64) -> Result<u32, CallError> {
        let inner = &*self.inner;
        let _w = lock(&inner.writes);
        let targets: Vec<String> = inner.catch_up(|m, v| {
            if !m.is_trusted(&inner.me) {
                return Vec::new();
            }
            v.stale_candidates(now)
                .into_iter()
                .filter(|id| v.retry(&inner.me, &sweep_client_id(id)).is_none())
                .collect()
        });
        let mut n = 0;
        for id in targets {
            let ev = mk::PostExpiredEvent {
                client_id: sweep_client_id(&id),
                target_event_id: id,
                reason: ExpireReason::Stale as i32,
            };
            inner
                .log
                .append("market.post.expired", ev.encode_to_vec())?;
            n += 1;
        }
        Ok(n)
    }
}

impl Inner {
    /// Folds the log, then runs `f` with the membership and the view.
    fn catch_up<R>(&self, f: impl FnOnce(&Membership, &MarketView) -> R) -> R {
        self.log.catch_up(|m| f(m, &lock(&self.view)))
    }

    fn active(&self, now: i64) -> Vec<Post> {
        self.catch_up(|_, v| v.active_posts(now))
    }

    /// MARKET-002.
    fn create(&self, input: mk::CreatePostInput) -> Result<Appended, CallError> {
        if input.client_id.is_empty() {
            return Err(CallError::bad_request("client_id is required"));
        }
        if !matches!(PostCategory::try_from(input.category), Ok(c) if c != PostCategory::Unspecified)
        {
            return Err(CallError::bad_request(
                "category must be a known post category",
            ));
        }
        if input.title.is_empty() {
            return Err(CallError::bad_request("title is required"));
        }
        let ttl = input.ttl_seconds.unwrap_or(DEFAULT_TTL);
        if !(1..=MAX_TTL).contains(&ttl) {
            return Err(CallError::bad_request(format!(
                "ttl_seconds must be between 1 and {MAX_TTL}"
            )));
        }
        let _w = lock(&self.writes);
        if let Some(a) = self.catch_up(|_, v| v.retry(&self.me, &input.client_id)) {
            return Ok(a);
        }
        let ev = mk::PostCreatedEvent {
            client_id: input.client_id,
            category: input.category,
            title: input.title,
            body: input.body,
            location: input.location,
            tags: input.tags,
            ttl_seconds: ttl,
        };
        self.log
            .append("market.post.created", ev.encode_to_vec())
            .map_err(CallError::from)
    }

    /// MARKET-003.
    fn expire(&self, input: mk::ExpirePostInput) -> Result<Appended, CallError> {
        if input.client_id.is_empty() {
            return Err(CallError::bad_request("client_id is required"));
        }
        let reason = match ExpireReason::try_from(input.reason) {
            Ok(r) if r != ExpireReason::Unspecified => r,
            _ => {
                return Err(CallError::bad_request(
                    "reason must be a known expire reason",
                ));
            }
        };
        let _w = lock(&self.writes);
        let prior = self.catch_up(|m, v| -> Result<Option<Appended>, CallError> {
            if let Some(a) = v.retry(&self.me, &input.client_id) {
                return Ok(Some(a));
            }
            let entry = v.posts.get(&input.event_id).ok_or_else(|| {
                CallError::new(ErrorCode::NotFound, format!("no post {}", input.event_id))
            })?;
            if entry.post.author == self.me {
                return Ok(None);
            }
            if reason != ExpireReason::Stale {
                return Err(CallError::new(
                    ErrorCode::Unauthorized,
                    format!(
                        "only the author may expire a post as {}",
                        reason_name(reason)
                    ),
                ));
            }
            if !m.is_trusted(&self.me) {
                return Err(CallError::new(
                    ErrorCode::Unauthorized,
                    "only the author or a trusted member may expire a post as stale",
                ));
            }
            Ok(None)
        })?;
        if let Some(a) = prior {
            return Ok(a);
        }
        let ev = mk::PostExpiredEvent {
            client_id: input.client_id,
            target_event_id: input.event_id,
            reason: reason as i32,
        };
        self.log
            .append("market.post.expired", ev.encode_to_vec())
            .map_err(CallError::from)
    }

    /// MARKET-005.
    async fn search(
        &self,
        input: mk::SearchPostsInput,
    ) -> Result<mk::SearchPostsOutput, CallError> {
        let k = input.k.unwrap_or(SEARCH_DEFAULT);
        if k > SEARCH_MAX {
            return Err(CallError::bad_request(format!(
                "k {k} is above {SEARCH_MAX}"
            )));
        }
        let k = k as usize;
        let posts = self.active(now_secs());
        let posts = match self.similarities(&input.query, &posts).await {
            Ok(scores) => rank(posts, scores, k),
            Err(e) => {
                tracing::debug!(error = %e, "market.search without embeddings: substring match");
                substring_search(posts, &input.query, k)
            }
        };
        let max_lamport = posts.iter().map(|p| p.lamport).max().unwrap_or(0);
        Ok(mk::SearchPostsOutput { posts, max_lamport })
    }

    /// The model of a local `embed.text` provider (its `model` param).
    fn embed_model(&self) -> Option<String> {
        self.bus
            .upgrade()?
            .local_capabilities()
            .into_iter()
            .find(|(c, _, _)| c.name == "embed.text")
            .and_then(|(_, params, _)| params.get("model").cloned())
    }

    /// Cosine similarity of `query` to every post, in order, using cached
    /// post embeddings where the text is unchanged.
    async fn similarities(&self, query: &str, posts: &[Post]) -> Result<Vec<f32>, CallError> {
        if posts.is_empty() {
            return Ok(Vec::new());
        }
        let model = self
            .embed_model()
            .ok_or_else(|| CallError::new(ErrorCode::Partition, "no embed.text model here"))?;
        let texts: Vec<String> = posts.iter().map(post_text).collect();
        let missing: Vec<usize> = {
            let mut cache = lock(&self.cache);
            if cache.model != model {
                cache.model.clone_from(&model);
                cache.vectors.clear();
            }
            (0..posts.len())
                .filter(|&i| {
                    cache
                        .vectors
                        .get(&posts[i].event_id)
                        .is_none_or(|(t, _)| *t != texts[i])
                })
                .collect()
        };
        let mut batch = Vec::with_capacity(missing.len() + 1);
        batch.push(clip(query));
        batch.extend(missing.iter().map(|&i| texts[i].clone()));
        let vectors = self.embed(&model, batch).await?;
        let Some((q, fresh)) = vectors.split_first() else {
            return Err(CallError::internal("embed.text returned no query vector"));
        };
        let mut cache = lock(&self.cache);
        for (&i, v) in missing.iter().zip(fresh) {
            cache
                .vectors
                .insert(posts[i].event_id.clone(), (texts[i].clone(), v.clone()));
        }
        let scores = posts
            .iter()
            .map(|p| {
                cache
                    .vectors
                    .get(&p.event_id)
                    .map_or(0.0, |(_, v)| cosine(q, v))
            })
            .collect();
        if cache.vectors.len() > CACHE_MAX {
            let keep: HashSet<&str> = posts.iter().map(|p| p.event_id.as_str()).collect();
            cache.vectors.retain(|id, _| keep.contains(id.as_str()));
        }
        Ok(scores)
    }

    /// Embeds texts through `embed.text` in batches; all vectors share one
    /// non-zero dimension.
    async fn embed(&self, model: &str, texts: Vec<String>) -> Result<Vec<Vec<f32>>, CallError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(EMBED_BATCH) {
            let req = embed::EmbedTextRequest {
                params: Some(embed::EmbedTextParams {
                    model: model.to_string(),
                }),
                input: Some(embed::EmbedTextInput {
                    texts: chunk.to_vec(),
                    normalize: Some(true),
                }),
            };
            let resp: embed::EmbedTextResponse = self
                .bus
                .upgrade()
                .ok_or_else(|| CallError::internal("the node is shutting down"))?
                .unary("embed.text", "1.0", &req)
                .await?;
            let got = resp.output.map(|o| o.embeddings).unwrap_or_default();
            if got.len() != chunk.len() {
                return Err(CallError::internal(format!(
                    "embed.text returned {} vectors for {} texts",
                    got.len(),
                    chunk.len()
                )));
            }
            out.extend(got.into_iter().map(|e| e.values));
        }
        let dim = out.first().map_or(0, Vec::len);
        if dim == 0 || out.iter().any(|v| v.len() != dim) {
            return Err(CallError::internal(
                "embed.text returned vectors of zero or mixed dimension",
            ));
        }
        Ok(out)
    }

    async fn serve(&self, req: Request, out: Sink) -> Result<(), CallError> {
        let started = Instant::now();
        let ms = || started.elapsed().as_millis() as u64;
        match req.capability.name {
            "market.post" => {
                operator_only(&req)?;
                let r: mk::CreatePostRequest = req.decode()?;
                let a = self.create(r.input.unwrap_or_default())?;
                out.send(&mk::CreatePostResponse {
                    output: Some(mk::CreatePostOutput {
                        event_id: a.id,
                        lamport: a.lamport,
                    }),
                    meta: Some(mk::CreatePostMeta { ms: ms() }),
                })
                .await
            }
            "market.expire" => {
                operator_only(&req)?;
                let r: mk::ExpirePostRequest = req.decode()?;
                let a = self.expire(r.input.unwrap_or_default())?;
                out.send(&mk::ExpirePostResponse {
                    output: Some(mk::ExpirePostOutput {
                        event_id: a.id,
                        lamport: a.lamport,
                    }),
                    meta: Some(mk::ExpirePostMeta { ms: ms() }),
                })
                .await
            }
            "market.list" => {
                let r: mk::ListPostsRequest = req.decode()?;
                let input = r.input.unwrap_or_default();
                let output = list_posts(self.active(now_secs()), &input)?;
                out.send(&mk::ListPostsResponse {
                    output: Some(output),
                    meta: Some(mk::ListPostsMeta { ms: ms() }),
                })
                .await
            }
            "market.search" => {
                let r: mk::SearchPostsRequest = req.decode()?;
                let output = self.search(r.input.unwrap_or_default()).await?;
                out.send(&mk::SearchPostsResponse {
                    output: Some(output),
                    meta: Some(mk::SearchPostsMeta { ms: ms() }),
                })
                .await
            }
            other => Err(CallError::new(
                ErrorCode::NotFound,
                format!("no capability {other}"),
            )),
        }
    }
}

impl Service for MarketService {
    fn name(&self) -> &str {
        "market"
    }

    fn offers(&self) -> Vec<Offer> {
        Offer::all(&[
            "market.post",
            "market.list",
            "market.expire",
            "market.search",
        ])
    }

    fn call(&self, req: Request, out: Sink) -> BoxFuture<'static, Result<(), CallError>> {
        let inner = self.inner.clone();
        async move { inner.serve(req, out).await }.boxed()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const AAA: &str = "ed25519:AAA";
    const BBB: &str = "ed25519:BBB";
    const TTT: &str = "ed25519:TTT";

    fn members() -> Membership {
        Membership::for_tests(&[(AAA, 1), (BBB, 1), (TTT, 2)])
    }

    fn ev(
        id: &str,
        author: &str,
        lamport: u64,
        wall: i64,
        ty: &str,
        msg: impl Message,
    ) -> LogEvent {
        LogEvent::for_tests(id, author, lamport, wall, ty, msg.encode_to_vec())
    }

    fn created(id: &str, author: &str, lamport: u64, client_id: &str) -> LogEvent {
        ev(
            id,
            author,
            lamport,
            1_000,
            "market.post.created",
            mk::PostCreatedEvent {
                client_id: client_id.to_string(),
                category: PostCategory::Offer as i32,
                title: "Generator".into(),
                body: "2 kW, petrol".into(),
                location: Some(mk::Location {
                    lat: 51.66,
                    lng: 6.16,
                    label: "Kevelaer".into(),
                }),
                tags: vec!["power".into()],
                ttl_seconds: 100,
            },
        )
    }

    fn expired(
        id: &str,
        author: &str,
        lamport: u64,
        target: &str,
        reason: ExpireReason,
    ) -> LogEvent {
        ev(
            id,
            author,
            lamport,
            1_010,
            "market.post.expired",
            mk::PostExpiredEvent {
                client_id: format!("x-{id}"),
                target_event_id: target.to_string(),
                reason: reason as i32,
            },
        )
    }

    fn view_with_post() -> (MarketView, Membership) {
        let m = members();
        let mut v = MarketView::default();
        v.apply(&created("p1", AAA, 1, "c1"), &m);
        (v, m)
    }

    #[test]
    fn created_post_is_active_until_expires_at() {
        let (v, _) = view_with_post();
        let p = v.post("p1").unwrap();
        assert_eq!(p.author, AAA);
        assert_eq!(p.created_at.unwrap().seconds, 1_000);
        assert_eq!(p.expires_at.unwrap().seconds, 1_100);
        assert_eq!(v.active_posts(1_099).len(), 1);
        assert!(v.active_posts(1_100).is_empty());
        assert_eq!(v.stale_candidates(1_100), vec!["p1".to_string()]);
    }

    #[test]
    fn author_may_expire_with_any_reason() {
        let (mut v, m) = view_with_post();
        v.apply(&expired("x1", AAA, 2, "p1", ExpireReason::Fulfilled), &m);
        assert!(v.active_posts(1_050).is_empty());
        assert_eq!(v.expiry("p1").unwrap().event_id, "x1");
        assert!(v.stale_candidates(2_000).is_empty());
    }

    #[test]
    fn stale_expiry_counts_only_from_trusted() {
        let (mut v, m) = view_with_post();
        v.apply(&expired("x1", BBB, 2, "p1", ExpireReason::Stale), &m);
        assert!(
            v.expiry("p1").is_none(),
            "plain member's stale expiry ignored"
        );
        v.apply(&expired("x2", TTT, 3, "p1", ExpireReason::Fulfilled), &m);
        assert!(v.expiry("p1").is_none(), "trusted may only use stale");
        v.apply(&expired("x3", TTT, 4, "p1", ExpireReason::Stale), &m);
        assert_eq!(v.expiry("p1").unwrap().event_id, "x3");
        assert!(v.active_posts(1_050).is_empty());
    }

    #[test]
    fn lowest_lamport_expiry_wins_in_any_order() {
        for order in [[0, 1], [1, 0]] {
            let (mut v, m) = view_with_post();
            let evs = [
                expired("x5", AAA, 5, "p1", ExpireReason::Withdrawn),
                expired("x7", TTT, 7, "p1", ExpireReason::Stale),
            ];
            for i in order {
                v.apply(&evs[i], &m);
            }
            let e = v.expiry("p1").unwrap();
            assert_eq!((e.event_id.as_str(), e.lamport), ("x5", 5));
        }
    }

    #[test]
    fn user_request_expiry_hides_content() {
        let (mut v, m) = view_with_post();
        v.apply(&expired("x1", AAA, 2, "p1", ExpireReason::UserRequest), &m);
        let p = v.post("p1").unwrap();
        assert!(p.title.is_empty() && p.body.is_empty() && p.location.is_none());
    }

    fn updated(id: &str, author: &str, lamport: u64, wall: i64, title: &str) -> LogEvent {
        ev(
            id,
            author,
            lamport,
            wall,
            "market.post.updated",
            mk::PostUpdatedEvent {
                client_id: format!("u-{id}"),
                target_event_id: "p1".into(),
                fields: Some(mk::PostUpdateFields {
                    title: Some(title.to_string()),
                    body: None,
                    location: None,
                }),
            },
        )
    }

    #[test]
    fn update_only_by_author_while_not_expired() {
        let (mut v, m) = view_with_post();
        v.apply(&updated("u1", BBB, 2, 1_010, "hijacked"), &m);
        assert_eq!(v.post("p1").unwrap().title, "Generator");
        v.apply(&updated("u2", AAA, 3, 1_010, "Generator (2 kW)"), &m);
        let p = v.post("p1").unwrap();
        assert_eq!(p.title, "Generator (2 kW)");
        assert_eq!(p.body, "2 kW, petrol", "absent fields keep their value");
        v.apply(&updated("u3", AAA, 4, 1_200, "too late"), &m);
        assert_eq!(v.post("p1").unwrap().title, "Generator (2 kW)");
        v.apply(&expired("x1", AAA, 5, "p1", ExpireReason::Withdrawn), &m);
        v.apply(&updated("u4", AAA, 6, 1_020, "after expiry"), &m);
        assert_eq!(v.post("p1").unwrap().title, "Generator (2 kW)");
    }

    #[test]
    fn retry_key_names_the_first_event() {
        let (mut v, m) = view_with_post();
        assert_eq!(
            v.retry(AAA, "c1"),
            Some(Appended {
                id: "p1".into(),
                lamport: 1
            })
        );
        v.apply(&created("p2", AAA, 2, "c1"), &m);
        assert!(
            v.post("p2").is_none(),
            "same (author, client_id) is a duplicate"
        );
        v.apply(&created("p3", BBB, 3, "c1"), &m);
        assert!(v.post("p3").is_some(), "keys are per author");
        assert_eq!(v.retry(BBB, "c1").unwrap().id, "p3");
        assert_eq!(v.active_posts(1_050).len(), 2);
        v.reset();
        assert!(v.retry(AAA, "c1").is_none());
    }

    #[test]
    fn list_filters_and_limits() {
        let m = members();
        let mut v = MarketView::default();
        for (i, id) in ["p1", "p2", "p3"].iter().enumerate() {
            v.apply(&created(id, AAA, i as u64 + 1, id), &m);
        }
        let posts = v.active_posts(1_050);
        let input = mk::ListPostsInput {
            since_lamport: 1,
            limit: Some(1),
            ..Default::default()
        };
        let out = list_posts(posts.clone(), &input).unwrap();
        assert_eq!(out.posts.len(), 1);
        assert_eq!((out.posts[0].event_id.as_str(), out.max_lamport), ("p2", 2));
        let none = mk::ListPostsInput {
            tags: vec!["other".into()],
            since_lamport: 7,
            ..Default::default()
        };
        assert_eq!(list_posts(posts.clone(), &none).unwrap().max_lamport, 7);
        let big = mk::ListPostsInput {
            limit: Some(501),
            ..Default::default()
        };
        assert_eq!(
            list_posts(posts, &big).unwrap_err().code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn substring_fallback_is_case_insensitive_newest_first() {
        let m = members();
        let mut v = MarketView::default();
        v.apply(&created("p1", AAA, 1, "a"), &m);
        v.apply(&created("p2", AAA, 2, "b"), &m);
        let hits = substring_search(v.active_posts(1_050), "PETROL", 10);
        assert_eq!(
            hits.iter().map(|p| p.event_id.as_str()).collect::<Vec<_>>(),
            ["p2", "p1"]
        );
        assert!(hits.iter().all(|p| p.score == Some(1.0)));
        assert!(substring_search(v.active_posts(1_050), "diesel", 10).is_empty());
    }

    #[test]
    fn snapshot_round_trips() {
        let (mut v, m) = view_with_post();
        v.apply(&created("p2", BBB, 2, "c2"), &m);
        v.apply(&expired("x1", AAA, 3, "p1", ExpireReason::Fulfilled), &m);
        let mut r = MarketView::default();
        assert!(r.restore(&v.encode().unwrap()));
        assert_eq!(r.active_posts(1_050), v.active_posts(1_050));
        assert_eq!(r.post("p1"), v.post("p1"));
        assert_eq!(r.expiry("p1"), v.expiry("p1"));
        assert_eq!(r.retry(BBB, "c2"), v.retry(BBB, "c2"));
        assert_eq!(r.encode(), v.encode());
        assert!(!r.restore(b"not json"));
    }

    #[test]
    fn cosine_ranks_best_first() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), 0.0);
        let m = members();
        let mut v = MarketView::default();
        v.apply(&created("p1", AAA, 1, "a"), &m);
        v.apply(&created("p2", AAA, 2, "b"), &m);
        let ranked = rank(v.active_posts(1_050), vec![0.2, 0.9], 1);
        assert_eq!(ranked[0].event_id, "p2");
        assert_eq!(ranked.len(), 1);
    }
}
