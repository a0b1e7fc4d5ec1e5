//! The community event log (DESIGN.md §7, `protocol/spec/events.md`).
//!
//! Signed events are stored as received on fjall ([`store`]), checked on
//! ingest in the order of EVT-018, kept in per-author hash chains with a
//! persisted Lamport counter, folded in log order into the membership view
//! and into the views services register ([`View`]), published to topic
//! subscribers, and exchanged with peers by exact anti-entropy sync
//! ([`sync`]). Snapshots of the views are in [`snapshot`].

pub mod community;
pub mod membership;
pub mod snapshot;
pub mod store;
pub mod sync;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use prost::Message;
use prost_reflect::{DynamicMessage, Value};
use tokio::sync::{mpsc, watch};

use hearthnet_sdk::identity::{NodeId, SecretKey};
use hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode;
use hearthnet_sdk::proto::hearthnet::event::v1::{
    EquivocationProof, Event, SignedEvent, SyncRejectReason, TopicMessage,
};
use hearthnet_sdk::signing::{self, Domain};
use hearthnet_sdk::wkt::Timestamp;

use crate::bus::{Bus, Trust, TrustSource};
use crate::error::CallError;
pub use membership::Membership;
pub use store::Durability;
use store::{B32, NewEvent, OrderKey, Store, StoreError};

/// Most events held aside while their predecessors are missing.
const HELD_MAX: usize = 50_000;

/// Batches at least this large are verified on two threads.
const SPLIT_VERIFY_AT: usize = 64;

/// Event log errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node may not author this event.
    #[error("{0}")]
    NotAllowed(String),
    /// An event this node authored was refused by its own checks.
    #[error("own event refused: {0:?}")]
    Refused(SyncRejectReason),
}

impl From<EventError> for CallError {
    fn from(e: EventError) -> Self {
        match e {
            EventError::NotAllowed(m) => CallError::new(ErrorCode::Unauthorized, m),
            other => CallError::internal(other.to_string()),
        }
    }
}

/// One stored event as views see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    /// `blake3:` id.
    pub id: String,
    /// Author NodeID text.
    pub author: String,
    /// Author seq.
    pub seq: u64,
    /// Lamport time.
    pub lamport: u64,
    /// Author's wall clock, unix seconds.
    pub wall_clock: i64,
    /// Event type.
    pub event_type: String,
    /// Encoded payload message.
    pub payload: Vec<u8>,
}

impl LogEvent {
    /// A hand-made event for tests of views (seq = lamport).
    pub fn for_tests(
        id: &str,
        author: &str,
        lamport: u64,
        wall_clock: i64,
        event_type: &str,
        payload: Vec<u8>,
    ) -> Self {
        Self {
            id: id.to_string(),
            author: author.to_string(),
            seq: lamport,
            lamport,
            wall_clock,
            event_type: event_type.to_string(),
            payload,
        }
    }
}

/// A fold over the log, kept by a service (marketplace, chat…).
pub trait View: Send + 'static {
    /// Name of the view's state in snapshots (`x-…` for private ones).
    fn name(&self) -> &'static str;
    /// Forgets everything; the log is folded again.
    fn reset(&mut self);
    /// Folds one non-void event; `members` is the membership at its position.
    fn apply(&mut self, ev: &LogEvent, members: &Membership);
    /// The encoded state, for snapshots; `None` when the view has none.
    fn encode(&self) -> Option<Vec<u8>> {
        None
    }
    /// Restores an encoded state; false when it cannot.
    fn restore(&mut self, _state: &[u8]) -> bool {
        false
    }
}

/// The result of authoring an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Event id text.
    pub id: String,
    /// Its Lamport time.
    pub lamport: u64,
}

/// What happened to one offered event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Newly stored.
    Accepted,
    /// Already stored.
    Duplicate,
    /// Refused (out-of-order events are also held aside).
    Rejected(SyncRejectReason),
}

/// The result of ingesting a batch.
#[derive(Debug, Default)]
pub struct IngestReport {
    /// Per offered event: its id text and outcome.
    pub outcomes: Vec<(String, Outcome)>,
    /// Ranges needed before held-aside events can be stored: (author, from, to).
    pub missing: Vec<(String, u64, u64)>,
    /// Events stored, including held-aside ones that became storable.
    pub stored: u64,
    /// Authors of events refused as equivocation.
    pub equivocating: HashSet<String>,
}

#[derive(Debug, Clone, Copy)]
struct Head {
    seq: u64,
    id: B32,
    lamport: u64,
}

#[derive(Default)]
struct State {
    lamport: u64,
    heads: HashMap<B32, Head>,
    held: BTreeMap<(B32, u64), Vec<u8>>,
    proofs: BTreeMap<B32, (u64, EquivocationProof)>,
    /// Lowest position stored since the last fold.
    min_new: Option<OrderKey>,
    /// A proof arrived: views must be folded from scratch.
    refold: bool,
}

struct Fold {
    membership: Membership,
    views: Vec<Arc<Mutex<dyn View>>>,
    watermark: Option<OrderKey>,
    void_from: HashMap<String, u64>,
    /// Version vector of the folded events (for snapshots).
    covers: HashMap<String, (u64, String)>,
}

struct Subscriber {
    filters: Vec<String>,
    tx: mpsc::Sender<TopicMessage>,
    overflow: Arc<AtomicBool>,
    /// The node's own operator also receives local-only messages (EVT-041).
    operator: bool,
}

struct Inner {
    store: Store,
    key: Arc<SecretKey>,
    me: NodeId,
    me_text: String,
    community: String,
    pfx: [u8; 16],
    state: Mutex<State>,
    fold: Mutex<Fold>,
    members: Arc<RwLock<Membership>>,
    subs: Mutex<Vec<Subscriber>>,
    bus: Mutex<Option<Bus>>,
    changed: watch::Sender<u64>,
    started: AtomicBool,
    offline: AtomicBool,
}

/// A batch whose layout, community and signatures were checked
/// ([`EventLog::verify`]), ready for [`EventLog::apply`].
pub struct Verified {
    report: IngestReport,
    good: Vec<Parsed>,
}

/// A handle on one community's event log (cheap to clone).
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("community", &self.inner.community)
            .finish_non_exhaustive()
    }
}

/// A parsed, not yet verified event.
struct Parsed {
    raw: Vec<u8>,
    body: Vec<u8>,
    id: B32,
    ev: Event,
    author: NodeId,
    sig: Vec<u8>,
}

fn id_text(id: &B32) -> String {
    format!("blake3:{}", blake3::Hash::from_bytes(*id).to_hex())
}

fn parse_id(s: &str) -> Option<B32> {
    s.parse::<hearthnet_sdk::identity::Cid>()
        .ok()
        .map(|c| *c.as_bytes())
}

fn now_secs() -> i64 {
    Timestamp::now().seconds
}

/// Parses an author NodeID, caching the decompressed keys: decompression
/// costs about as much as a batched signature check.
fn author_id(text: &str) -> Option<NodeId> {
    static CACHE: OnceLock<Mutex<HashMap<String, NodeId>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(id) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(text) {
        return Some(*id);
    }
    let id = text.parse::<NodeId>().ok()?;
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    if c.len() >= 4096 {
        c.clear();
    }
    c.insert(text.to_string(), id);
    Some(id)
}

/// Decodes a `SignedEvent` and checks step 1 of EVT-018 (layout, version, size).
fn parse(raw: Vec<u8>) -> Result<Parsed, (B32, SyncRejectReason)> {
    let id = *blake3::hash(&raw).as_bytes();
    let bad = |_| (id, SyncRejectReason::Malformed);
    if raw.len() > hearthnet_sdk::constants::EVENT_MAX_BYTES as usize {
        return Err((id, SyncRejectReason::Malformed));
    }
    let se = SignedEvent::decode(raw.as_slice()).map_err(bad)?;
    // Canonical layout (decision 0045): field 1 then field 2, once each,
    // minimal lengths, nothing else — the re-encoding has the same length
    // and starts with field 1.
    if raw.first() != Some(&0x0a)
        || se.encoded_len() != raw.len()
        || se.event.is_empty()
        || se.signature.len() != 64
    {
        return Err((id, SyncRejectReason::Malformed));
    }
    let ev = Event::decode(se.event.as_slice()).map_err(bad)?;
    if ev.schema_version != 1 || ev.seq == 0 || ev.r#type.is_empty() {
        return Err((id, SyncRejectReason::Malformed));
    }
    let author = author_id(&ev.author).ok_or((id, SyncRejectReason::Malformed))?;
    Ok(Parsed {
        raw,
        body: se.event,
        id,
        ev,
        author,
        sig: se.signature,
    })
}

impl Parsed {
    fn event_bytes(&self) -> Result<&[u8], SyncRejectReason> {
        Ok(&self.body)
    }

    fn order(&self) -> OrderKey {
        OrderKey {
            lamport: self.ev.lamport,
            kind: u8::from(self.ev.r#type != "community.member.revoked"),
            id: self.id,
        }
    }
}

/// Decodes stored bytes into a [`LogEvent`].
fn decode_stored(raw: &[u8]) -> Result<LogEvent, StoreError> {
    let id = *blake3::hash(raw).as_bytes();
    let se = SignedEvent::decode(raw).map_err(|_| StoreError::Corrupt("stored event"))?;
    let ev = Event::decode(se.event.as_slice()).map_err(|_| StoreError::Corrupt("stored event"))?;
    Ok(LogEvent {
        id: id_text(&id),
        author: ev.author,
        seq: ev.seq,
        lamport: ev.lamport,
        wall_clock: ev.wall_clock.as_ref().map_or(0, |t| t.seconds),
        event_type: ev.r#type,
        payload: ev.payload,
    })
}

/// Checks step 9 of EVT-018: local-only types and payloads of known types.
fn payload_ok(ev: &Event) -> bool {
    let Some(t) = hearthnet_sdk::registry::events()
        .iter()
        .find(|t| t.event_type == ev.r#type)
    else {
        return true; // unknown types are stored and relayed (EVT-017)
    };
    if t.local_only || t.ephemeral {
        return false;
    }
    match hearthnet_sdk::descriptor_pool().get_message_by_name(t.payload) {
        Some(desc) => DynamicMessage::decode(desc, ev.payload.as_slice()).is_ok(),
        None => true,
    }
}

/// The topic of an event (EVT-038): the type's topic option with `{field}`
/// and `<field>` replaced by payload values.
pub fn topic_of(event_type: &str, payload: &[u8]) -> String {
    let Some(t) = hearthnet_sdk::registry::events()
        .iter()
        .find(|t| t.event_type == event_type)
    else {
        return event_type.to_string();
    };
    let topic = if t.topic.is_empty() {
        t.event_type
    } else {
        t.topic
    };
    if !topic.contains(['{', '<']) {
        return topic.to_string();
    }
    let msg = hearthnet_sdk::descriptor_pool()
        .get_message_by_name(t.payload)
        .and_then(|d| DynamicMessage::decode(d, payload).ok());
    let mut out = String::new();
    let mut rest = topic;
    while let Some(start) = rest.find(['{', '<']) {
        out.push_str(&rest[..start]);
        let close = if rest.as_bytes()[start] == b'{' {
            '}'
        } else {
            '>'
        };
        let Some(len) = rest[start..].find(close) else {
            out.push_str(&rest[start..]);
            return out;
        };
        let field = &rest[start + 1..start + len];
        let value = msg
            .as_ref()
            .and_then(|m| m.get_field_by_name(field))
            .map(|v| match v.as_ref() {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default();
        out.push_str(&value);
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

/// Whether a topic filter (EVT-039) matches a topic.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if filter == "*" {
        return true;
    }
    match filter.strip_suffix(".*") {
        Some(p) => {
            topic.len() > p.len() && topic.starts_with(p) && topic[p.len()..].starts_with('.')
        }
        None => filter == topic,
    }
}

/// Whether a filter is well formed (EVT-039).
pub fn filter_valid(filter: &str) -> bool {
    if filter == "*" {
        return true;
    }
    let body = filter.strip_suffix(".*").unwrap_or(filter);
    !body.is_empty() && !body.contains('*') && !body.starts_with('.') && !body.ends_with('.')
}

impl EventLog {
    /// Opens the log of `community` in `dir`, restores the Lamport counter
    /// (EVT-012), heads and proofs, and — when this node is the root and the
    /// log is empty — authors `community.created` named `name`.
    pub fn open(
        dir: &Path,
        durability: Durability,
        key: Arc<SecretKey>,
        community: &str,
        name: &str,
    ) -> Result<Self, EventError> {
        let store = Store::open(dir, durability)?;
        Self::with_store(store, key, community, name)
    }

    fn with_store(
        store: Store,
        key: Arc<SecretKey>,
        community: &str,
        name: &str,
    ) -> Result<Self, EventError> {
        let pfx = store::prefix(community);
        let me = key.node_id();
        let mut state = State {
            lamport: store.lamport(&pfx)?.max(store.max_lamport(&pfx)?),
            refold: true,
            ..State::default()
        };
        for (author, seq, entry) in store.heads(&pfx)? {
            state.heads.insert(
                author,
                Head {
                    seq,
                    id: entry.id,
                    lamport: entry.lamport,
                },
            );
        }
        for (_, v) in store.meta_scan(&pfx, b"proof")? {
            if let Ok(p) = EquivocationProof::decode(v.as_slice())
                && let Some((author, seq)) = proof_position(&p)
            {
                state.proofs.insert(author, (seq, p));
            }
        }
        let empty = state.heads.is_empty();
        let log = Self {
            inner: Arc::new(Inner {
                store,
                me_text: me.to_string(),
                me,
                key,
                community: community.to_string(),
                pfx,
                state: Mutex::new(state),
                fold: Mutex::new(Fold {
                    membership: Membership::new(community),
                    views: Vec::new(),
                    watermark: None,
                    void_from: HashMap::new(),
                    covers: HashMap::new(),
                }),
                members: Arc::new(RwLock::new(Membership::new(community))),
                subs: Mutex::new(Vec::new()),
                bus: Mutex::new(None),
                changed: watch::Sender::new(0),
                started: AtomicBool::new(false),
                offline: AtomicBool::new(false),
            }),
        };
        if empty && log.inner.me_text == community {
            let created = hearthnet_sdk::proto::hearthnet::community::v1::CommunityCreatedEvent {
                name: name.to_string(),
                founder_node_id: community.to_string(),
                policy: Some(Default::default()),
            };
            log.append("community.created", created.encode_to_vec())?;
        }
        Ok(log)
    }

    /// Call once the services registered their views: restores the newest
    /// usable snapshot (or folds from the start) and folds the rest.
    pub fn start(&self) {
        self.inner.started.store(true, Ordering::SeqCst);
        if snapshot::restore_latest(self) {
            self.lock_state().refold = false;
        }
        self.catch_up(|_| ());
    }

    /// Connects the log to the bus (pushes to peers, trust for calls).
    pub fn attach(&self, bus: &Bus) {
        *self.inner.bus.lock().unwrap_or_else(|e| e.into_inner()) = Some(bus.clone());
        bus.set_trust_source(Arc::new(MembersTrust(self.inner.members.clone())));
    }

    /// Disconnects the log from the bus (breaks the bus ↔ service ↔ log
    /// cycle at shutdown, so the store closes when the last handle goes).
    pub fn detach(&self) {
        self.inner
            .bus
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// Switches offline (emergency) mode: sync rounds every
    /// `EVENT_SYNC_EMERGENCY_INTERVAL_SECONDS` instead of the configured
    /// interval (EVT-034). The emergency detector calls this.
    pub fn set_offline(&self, on: bool) {
        self.inner.offline.store(on, Ordering::SeqCst);
    }

    /// Whether offline mode is on.
    pub fn offline(&self) -> bool {
        self.inner.offline.load(Ordering::SeqCst)
    }

    /// This node's NodeID.
    pub fn node_id(&self) -> NodeId {
        self.inner.me
    }

    /// The community id.
    pub fn community(&self) -> &str {
        &self.inner.community
    }

    pub(crate) fn key(&self) -> &Arc<SecretKey> {
        &self.inner.key
    }

    pub(crate) fn bus(&self) -> Option<Bus> {
        self.inner
            .bus
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn pfx(&self) -> &[u8; 16] {
        &self.inner.pfx
    }

    /// The membership view after folding everything stored.
    pub fn membership(&self) -> Membership {
        self.catch_up(|m| m.clone())
    }

    fn is_member_cached(&self, node: &str) -> bool {
        self.inner
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_member(node)
    }

    /// The Lamport counter.
    pub fn lamport(&self) -> u64 {
        self.lock_state().lamport
    }

    /// Number of stored events.
    pub fn len(&self) -> Result<u64, EventError> {
        Ok(self.inner.store.count(&self.inner.pfx)?)
    }

    /// Whether the log holds no event.
    pub fn is_empty(&self) -> bool {
        self.lock_state().heads.is_empty()
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The version vector: (author text, seq, id text) sorted by author.
    pub fn heads(&self) -> Vec<(String, u64, String)> {
        let st = self.lock_state();
        let mut v: Vec<_> = st
            .heads
            .iter()
            .filter_map(|(a, h)| {
                NodeId::from_bytes(*a)
                    .ok()
                    .map(|n| (n.to_string(), h.seq, id_text(&h.id)))
            })
            .collect();
        v.sort();
        v
    }

    /// The id of an author's stored event at `seq`.
    pub(crate) fn inner_chain_id(&self, author: &str, seq: u64) -> Option<String> {
        let a = author.parse::<NodeId>().ok()?;
        self.inner
            .store
            .chain_at(&self.inner.pfx, a.as_bytes(), seq)
            .ok()?
            .map(|e| id_text(&e.id))
    }

    /// Every equivocation proof held.
    pub fn proofs(&self) -> Vec<EquivocationProof> {
        self.lock_state()
            .proofs
            .values()
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// The stored event with this id.
    pub fn get(&self, id: &str) -> Option<LogEvent> {
        let id = parse_id(id)?;
        let raw = self.inner.store.get(&self.inner.pfx, &id).ok()??;
        decode_stored(&raw).ok()
    }

    /// The raw `SignedEvent` bytes of an id.
    pub fn get_raw(&self, id: &str) -> Option<Vec<u8>> {
        let id = parse_id(id)?;
        self.inner.store.get(&self.inner.pfx, &id).ok()?
    }

    /// Every stored event id, in log order.
    pub fn ids(&self) -> Result<Vec<String>, EventError> {
        let mut out = Vec::new();
        self.inner.store.scan_order(&self.inner.pfx, None, |k, _| {
            out.push(id_text(&k.id));
            Ok(())
        })?;
        Ok(out)
    }

    /// Raw events of one author from `from` to `to` (inclusive; 0 = head),
    /// at most `limit`.
    pub fn range_raw(
        &self,
        author: &NodeId,
        from: u64,
        to: u64,
        mut f: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<(), EventError> {
        let to = if to == 0 { u64::MAX } else { to };
        self.inner.store.author_range(
            &self.inner.pfx,
            author.as_bytes(),
            from.max(1),
            to,
            |_, raw| f(raw),
        )?;
        Ok(())
    }

    /// Authors an event of `event_type` with an encoded payload.
    pub fn append(&self, event_type: &str, payload: Vec<u8>) -> Result<Appended, EventError> {
        let is_first_kind = matches!(event_type, "community.created" | "community.member.joined");
        if !is_first_kind && !self.is_member_cached(&self.inner.me_text) {
            // Fold what arrived in the meantime before refusing.
            let member = self.catch_up(|m| m.is_member(&self.inner.me_text));
            if !member {
                return Err(EventError::NotAllowed(
                    "this node is not a member of the community".into(),
                ));
            }
        }
        let (raw, id, lamport) = {
            let mut st = self.lock_state();
            let head = st.heads.get(self.inner.me.as_bytes()).copied();
            let lamport = st.lamport.max(head.map_or(0, |h| h.lamport)) + 1;
            let ev = Event {
                schema_version: 1,
                community: self.inner.community.clone(),
                author: self.inner.me_text.clone(),
                seq: head.map_or(1, |h| h.seq + 1),
                prev: head.map(|h| id_text(&h.id)).unwrap_or_default(),
                lamport,
                wall_clock: Some(Timestamp::now()),
                r#type: event_type.to_string(),
                payload,
            };
            let event = ev.encode_to_vec();
            let signature = signing::sign_envelope(&self.inner.key, Domain::Event, &event).to_vec();
            let raw = SignedEvent { event, signature }.encode_to_vec();
            let parsed = parse(raw.clone()).map_err(|(_, r)| EventError::Refused(r))?;
            let id = parsed.id;
            let mut report = IngestReport::default();
            self.ingest_locked(&mut st, vec![parsed], now_secs(), &mut report)?;
            match report.outcomes.first() {
                Some((_, Outcome::Accepted)) => {}
                Some((_, Outcome::Rejected(r))) => return Err(EventError::Refused(*r)),
                _ => return Err(EventError::Refused(SyncRejectReason::Unspecified)),
            }
            (raw, id, lamport)
        };
        self.after_store();
        self.push_own(raw);
        Ok(Appended {
            id: id_text(&id),
            lamport,
        })
    }

    /// Authors this node's `community.member.joined`, redeeming the first
    /// valid invite naming it (the log must hold the invite: sync first).
    pub fn join(
        &self,
        node_manifest: hearthnet_sdk::proto::hearthnet::identity::v1::SignedEnvelope,
    ) -> Result<Appended, EventError> {
        let invite = self.catch_up(|m| {
            if m.is_member(&self.inner.me_text) {
                return Err(EventError::NotAllowed("already a member".into()));
            }
            m.invites_for(&self.inner.me_text)
                .into_iter()
                .next()
                .ok_or_else(|| EventError::NotAllowed("no invite for this node in the log".into()))
        })?;
        let joined = hearthnet_sdk::proto::hearthnet::community::v1::MemberJoinedEvent {
            invite_event_id: invite,
            node_manifest: Some(node_manifest),
        };
        self.append("community.member.joined", joined.encode_to_vec())
    }

    /// Ingests received `SignedEvent`s (EVT-018, EVT-029): verifies the
    /// signatures as a batch (one by one when the batch fails, EVT-037),
    /// stores the acceptable ones in one atomic write and reports each.
    pub fn ingest(&self, raws: Vec<Vec<u8>>) -> Result<IngestReport, EventError> {
        let verified = self.verify(raws);
        self.apply(verified)
    }

    /// Steps 1–3 of EVT-018 (layout, community, signatures) without
    /// touching the store, so a sync can verify one batch while the previous
    /// one is written ([`EventLog::apply`]).
    pub fn verify(&self, raws: Vec<Vec<u8>>) -> Verified {
        let mut report = IngestReport::default();
        let mut parsed = Vec::with_capacity(raws.len());
        for raw in raws {
            match parse(raw) {
                Ok(p) if p.ev.community != self.inner.community => report.outcomes.push((
                    id_text(&p.id),
                    Outcome::Rejected(SyncRejectReason::WrongCommunity),
                )),
                Ok(p) => parsed.push(p),
                Err((id, r)) => report.outcomes.push((id_text(&id), Outcome::Rejected(r))),
            }
        }
        let (good, bad) = verify_all(parsed);
        for id in bad {
            report.outcomes.push((
                id_text(&id),
                Outcome::Rejected(SyncRejectReason::InvalidSignature),
            ));
        }
        Verified { report, good }
    }

    /// Steps 4–9 of EVT-018 and the write, for a verified batch.
    pub fn apply(&self, verified: Verified) -> Result<IngestReport, EventError> {
        let Verified { mut report, good } = verified;
        {
            let mut st = self.lock_state();
            self.ingest_locked(&mut st, good, now_secs(), &mut report)?;
        }
        if report.stored > 0 {
            self.after_store();
        }
        Ok(report)
    }

    /// Steps 4–9 of EVT-018 for verified events, then one write batch per
    /// round; held-aside events that became storable are retried.
    fn ingest_locked(
        &self,
        st: &mut State,
        events: Vec<Parsed>,
        now: i64,
        report: &mut IngestReport,
    ) -> Result<(), EventError> {
        let pfx = self.inner.pfx;
        let mut queue = events;
        let mut first_round = true;
        loop {
            let mut accepted: Vec<Parsed> = Vec::new();
            let mut pending: HashMap<B32, Head> = HashMap::new();
            let mut pending_ids: HashSet<B32> = HashSet::new();
            for p in queue.drain(..) {
                let outcome = self.check(st, &pending, &pending_ids, &p, now, pfx)?;
                if first_round {
                    report.outcomes.push((id_text(&p.id), outcome));
                }
                if outcome == Outcome::Rejected(SyncRejectReason::Equivocation) {
                    report.equivocating.insert(p.ev.author.clone());
                }
                match outcome {
                    Outcome::Accepted => {
                        pending.insert(
                            *p.author.as_bytes(),
                            Head {
                                seq: p.ev.seq,
                                id: p.id,
                                lamport: p.ev.lamport,
                            },
                        );
                        pending_ids.insert(p.id);
                        accepted.push(p);
                    }
                    Outcome::Rejected(SyncRejectReason::OutOfOrder) if st.held.len() < HELD_MAX => {
                        st.held.insert((*p.author.as_bytes(), p.ev.seq), p.raw);
                    }
                    _ => {}
                }
            }
            first_round = false;
            if accepted.is_empty() {
                break;
            }
            self.commit(st, &mut accepted, &mut pending, report)?;
            // Held-aside events that may fit now: each author's next seq,
            // and first events waiting for an invite.
            let keys: Vec<(B32, u64)> = st
                .held
                .keys()
                .filter(|(a, s)| *s == 1 || st.heads.get(a).is_some_and(|h| h.seq + 1 == *s))
                .copied()
                .collect();
            for k in keys {
                if let Some(raw) = st.held.remove(&k)
                    && let Ok(p) = parse(raw)
                {
                    queue.push(p);
                }
            }
            if queue.is_empty() {
                break;
            }
        }
        // Ranges still missing for held events.
        let mut missing: BTreeMap<B32, (u64, u64)> = BTreeMap::new();
        for (author, seq) in st.held.keys() {
            let have = st.heads.get(author).map_or(0, |h| h.seq);
            if *seq > have + 1 {
                let e = missing.entry(*author).or_insert((have + 1, seq - 1));
                e.1 = e.1.min(seq - 1);
            }
        }
        report.missing = missing
            .into_iter()
            .filter_map(|(a, (f, t))| NodeId::from_bytes(a).ok().map(|n| (n.to_string(), f, t)))
            .collect();
        Ok(())
    }

    /// Writes accepted events and updates the in-memory state.
    fn commit(
        &self,
        st: &mut State,
        accepted: &mut Vec<Parsed>,
        pending: &mut HashMap<B32, Head>,
        report: &mut IngestReport,
    ) -> Result<(), EventError> {
        if accepted.is_empty() {
            return Ok(());
        }
        let lamport = accepted
            .iter()
            .map(|p| p.ev.lamport)
            .max()
            .unwrap_or(0)
            .max(st.lamport);
        let rows: Vec<NewEvent<'_>> = accepted
            .iter()
            .map(|p| NewEvent {
                id: p.id,
                author: *p.author.as_bytes(),
                seq: p.ev.seq,
                order: p.order(),
                raw: &p.raw,
            })
            .collect();
        self.inner
            .store
            .put_events(&self.inner.pfx, &rows, lamport)?;
        drop(rows);
        st.lamport = lamport;
        for (a, h) in pending.drain() {
            st.heads.insert(a, h);
        }
        for p in accepted.iter() {
            let o = p.order();
            st.min_new = Some(st.min_new.map_or(o, |m| m.min(o)));
        }
        report.stored += accepted.len() as u64;
        let taken = std::mem::take(accepted);
        self.publish(&taken);
        Ok(())
    }

    /// One event's checks 4–9 against stored and pending state.
    fn check(
        &self,
        st: &mut State,
        pending: &HashMap<B32, Head>,
        pending_ids: &HashSet<B32>,
        p: &Parsed,
        now: i64,
        pfx: [u8; 16],
    ) -> Result<Outcome, EventError> {
        // (4) duplicate: stored chains are gap-free, so an event above the
        // author's head cannot be stored yet.
        if pending_ids.contains(&p.id) {
            return Ok(Outcome::Duplicate);
        }
        let author = *p.author.as_bytes();
        let head = pending
            .get(&author)
            .or_else(|| st.heads.get(&author))
            .copied();
        let have = head.map_or(0, |h| h.seq);
        if p.ev.seq <= have {
            let held = self.inner.store.chain_at(&pfx, &author, p.ev.seq)?;
            if held.is_some_and(|e| e.id == p.id) {
                return Ok(Outcome::Duplicate);
            }
            // (5) another event is held at this seq: keep the pair as proof.
            if let Some(entry) = held
                && let Some(first) = self.inner.store.get(&pfx, &entry.id)?
            {
                self.add_proof_locked(st, &first, &p.raw)?;
            }
            return Ok(Outcome::Rejected(SyncRejectReason::Equivocation));
        }
        // (5) chain position.
        if p.ev.seq > have + 1 {
            return Ok(Outcome::Rejected(SyncRejectReason::OutOfOrder));
        }
        let expected_prev = head.map(|h| id_text(&h.id)).unwrap_or_default();
        if p.ev.prev != expected_prev {
            return Ok(Outcome::Rejected(SyncRejectReason::Equivocation));
        }
        // (6) Lamport.
        if let Some(h) = head
            && p.ev.lamport <= h.lamport
        {
            return Ok(Outcome::Rejected(SyncRejectReason::LamportRegression));
        }
        // (7) admission of a new author.
        if p.ev.seq == 1 {
            let root = p.ev.author == self.inner.community;
            let ok = if root {
                p.ev.r#type == "community.created"
            } else if p.ev.r#type == "community.member.joined" {
                let Ok(j) =
                    hearthnet_sdk::proto::hearthnet::community::v1::MemberJoinedEvent::decode(
                        p.ev.payload.as_slice(),
                    )
                else {
                    return Ok(Outcome::Rejected(SyncRejectReason::Malformed));
                };
                let Some(inv_id) = parse_id(&j.invite_event_id) else {
                    return Ok(Outcome::Rejected(SyncRejectReason::UnknownAuthor));
                };
                match self.inner.store.get(&pfx, &inv_id)? {
                    None => return Ok(Outcome::Rejected(SyncRejectReason::OutOfOrder)),
                    Some(raw) => decode_stored(&raw).is_ok_and(|inv| {
                        inv.event_type == "community.member.invited"
                            && hearthnet_sdk::proto::hearthnet::community::v1::MemberInvitedEvent::decode(
                                inv.payload.as_slice(),
                            )
                            .is_ok_and(|i| i.invitee_node_id == p.ev.author)
                    }),
                }
            } else {
                false
            };
            if !ok {
                return Ok(Outcome::Rejected(SyncRejectReason::UnknownAuthor));
            }
        }
        // (8) clock.
        let wall = p.ev.wall_clock.as_ref().map_or(0, |t| t.seconds);
        if wall > now + hearthnet_sdk::constants::REPLAY_WINDOW_SECONDS {
            return Ok(Outcome::Rejected(SyncRejectReason::Future));
        }
        // (9) type and payload.
        if !payload_ok(&p.ev) {
            return Ok(Outcome::Rejected(SyncRejectReason::Malformed));
        }
        Ok(Outcome::Accepted)
    }

    /// Verifies and keeps an equivocation proof (received from a peer or
    /// found locally). Returns whether it was valid.
    pub fn add_proof(&self, proof: &EquivocationProof) -> bool {
        let (Some(a), Some(b)) = (&proof.first, &proof.second) else {
            return false;
        };
        let mut st = self.lock_state();
        self.add_proof_locked(&mut st, &a.encode_to_vec(), &b.encode_to_vec())
            .unwrap_or(false)
    }

    fn add_proof_locked(
        &self,
        st: &mut State,
        first: &[u8],
        second: &[u8],
    ) -> Result<bool, EventError> {
        let (Ok(a), Ok(b)) = (parse(first.to_vec()), parse(second.to_vec())) else {
            return Ok(false);
        };
        if a.id == b.id
            || a.author != b.author
            || a.ev.seq != b.ev.seq
            || a.ev.community != self.inner.community
            || b.ev.community != self.inner.community
        {
            return Ok(false);
        }
        for p in [&a, &b] {
            let Ok(bytes) = p.event_bytes() else {
                return Ok(false);
            };
            if signing::verify_envelope(&p.author, Domain::Event, bytes, &p.sig).is_err() {
                return Ok(false);
            }
        }
        let author = *a.author.as_bytes();
        if st.proofs.get(&author).is_some_and(|(s, _)| *s <= a.ev.seq) {
            return Ok(true);
        }
        let proof = EquivocationProof {
            first: SignedEvent::decode(first).ok(),
            second: SignedEvent::decode(second).ok(),
        };
        let mut name = b"proof".to_vec();
        name.extend_from_slice(&author);
        self.inner
            .store
            .meta_put(&self.inner.pfx, &name, &proof.encode_to_vec())?;
        tracing::warn!(author = %a.author, seq = a.ev.seq, "equivocation detected; proof kept");
        st.proofs.insert(author, (a.ev.seq, proof));
        st.refold = true;
        Ok(true)
    }

    /// Registers a view; the whole log is folded into it (at once when the
    /// log has started, else by [`EventLog::start`]).
    pub fn register_view(&self, view: Arc<Mutex<dyn View>>) {
        {
            let mut fold = self.inner.fold.lock().unwrap_or_else(|e| e.into_inner());
            fold.views.push(view);
        }
        self.lock_state().refold = true;
        if self.inner.started.load(Ordering::SeqCst) {
            self.catch_up(|_| ());
        }
    }

    /// Folds every stored event not yet folded into the membership view and
    /// the registered views (from scratch when an event arrived that sorts
    /// before folded ones, EVT-015), then runs `f` with the membership.
    pub fn catch_up<R>(&self, f: impl FnOnce(&Membership) -> R) -> R {
        let mut fold = self.inner.fold.lock().unwrap_or_else(|e| e.into_inner());
        let (min_new, refold, proofs) = {
            let mut st = self.lock_state();
            (
                st.min_new.take(),
                std::mem::take(&mut st.refold),
                st.proofs
                    .iter()
                    .filter_map(|(a, (s, _))| {
                        NodeId::from_bytes(*a).ok().map(|n| (n.to_string(), *s))
                    })
                    .collect::<HashMap<String, u64>>(),
            )
        };
        let full = refold
            || match (min_new, fold.watermark) {
                (Some(n), Some(w)) => n < w,
                _ => false,
            };
        if full {
            fold.membership = Membership::new(&self.inner.community);
            fold.watermark = None;
            fold.void_from.clear();
            fold.covers.clear();
            for v in &fold.views {
                v.lock().unwrap_or_else(|e| e.into_inner()).reset();
            }
        }
        if full || min_new.is_some() {
            let after = fold.watermark;
            let fold = &mut *fold;
            let result = self
                .inner
                .store
                .scan_order(&self.inner.pfx, after.as_ref(), |k, raw| {
                    let ev = decode_stored(&raw)?;
                    fold_one(fold, &ev, &proofs);
                    fold.watermark = Some(k);
                    Ok(())
                });
            if let Err(e) = result {
                tracing::error!(error = %e, "folding the event log failed");
            }
            *self
                .inner
                .members
                .write()
                .unwrap_or_else(|e| e.into_inner()) = fold.membership.clone();
        }
        f(&fold.membership)
    }

    pub(crate) fn with_fold_covers<R>(
        &self,
        f: impl FnOnce(
            &Membership,
            &[Arc<Mutex<dyn View>>],
            Option<OrderKey>,
            &HashMap<String, (u64, String)>,
        ) -> R,
    ) -> R {
        self.catch_up(|_| ());
        let fold = self.inner.fold.lock().unwrap_or_else(|e| e.into_inner());
        f(&fold.membership, &fold.views, fold.watermark, &fold.covers)
    }

    pub(crate) fn restore_fold(
        &self,
        membership: Membership,
        watermark: OrderKey,
        covers: HashMap<String, (u64, String)>,
        states: &HashMap<String, Vec<u8>>,
    ) -> bool {
        let mut fold = self.inner.fold.lock().unwrap_or_else(|e| e.into_inner());
        for v in &fold.views {
            let mut v = v.lock().unwrap_or_else(|e| e.into_inner());
            match states.get(v.name()) {
                Some(s) if v.restore(s) => {}
                _ => return false,
            }
        }
        fold.membership = membership;
        fold.watermark = Some(watermark);
        fold.covers = covers;
        *self
            .inner
            .members
            .write()
            .unwrap_or_else(|e| e.into_inner()) = fold.membership.clone();
        true
    }

    /// The Lamport time of an author's stored event at `seq`.
    pub(crate) fn chain_lamport(&self, author: &str, seq: u64) -> Option<u64> {
        let a = author.parse::<NodeId>().ok()?;
        self.inner
            .store
            .chain_at(&self.inner.pfx, a.as_bytes(), seq)
            .ok()?
            .map(|e| e.lamport)
    }

    /// Re-checks the whole stored log: every event's id, signature, chain
    /// link (`prev`, gap-free seq) and strictly increasing Lamport time per
    /// author. Returns the number of events checked.
    pub fn verify_stored(&self) -> Result<u64, String> {
        let mut n = 0u64;
        for (author, head, _) in self.heads() {
            let a: NodeId = author.parse().map_err(|e| format!("{author}: {e}"))?;
            let mut prev = String::new();
            let mut lamport = 0u64;
            let mut seq = 0u64;
            let mut err = None;
            self.range_raw(&a, 1, 0, |raw| {
                let check = (|| {
                    let p = parse(raw).map_err(|(_, r)| format!("{r:?}"))?;
                    let body = p.event_bytes().map_err(|r| format!("{r:?}"))?;
                    signing::verify_envelope(&p.author, Domain::Event, body, &p.sig)
                        .map_err(|e| format!("signature: {e}"))?;
                    if p.ev.seq != seq + 1 || p.ev.prev != prev || p.ev.lamport <= lamport {
                        return Err(format!("chain broken at seq {}", p.ev.seq));
                    }
                    seq = p.ev.seq;
                    prev = id_text(&p.id);
                    lamport = p.ev.lamport;
                    Ok(())
                })();
                match check {
                    Ok(()) => true,
                    Err(e) => {
                        err = Some(e);
                        false
                    }
                }
            })
            .map_err(|e| e.to_string())?;
            if let Some(e) = err {
                return Err(format!("{author}: {e}"));
            }
            if seq != head {
                return Err(format!("{author}: chain ends at {seq}, head says {head}"));
            }
            n += seq;
        }
        Ok(n)
    }

    /// Builds, signs and stores a snapshot of the views (see [`snapshot`]).
    pub fn snapshot_now(&self) -> Result<bool, EventError> {
        Ok(snapshot::build(self)?.is_some())
    }

    fn after_store(&self) {
        self.inner.changed.send_modify(|n| *n += 1);
    }

    /// A receiver that sees a change each time events are stored.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Subscribes to topics (EVT-040): messages of events stored from now on.
    /// The flag turns true when the subscriber fell too far behind (EVT-042).
    pub fn subscribe(
        &self,
        filters: Vec<String>,
        operator: bool,
    ) -> (mpsc::Receiver<TopicMessage>, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel(hearthnet_sdk::constants::EVENT_SUBSCRIBE_QUEUE_MAX as usize);
        let overflow = Arc::new(AtomicBool::new(false));
        self.inner
            .subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Subscriber {
                filters,
                operator,
                tx,
                overflow: overflow.clone(),
            });
        (rx, overflow)
    }

    /// Publishes a local-only message (e.g. `emergency.mode.changed`,
    /// `capability.deregistered`) to the operator's subscriptions; it is
    /// never logged and never leaves the node (EVT-041, EVT-043).
    pub fn publish_local(&self, event_type: &str, payload: Vec<u8>) {
        let topic = topic_of(event_type, &payload);
        self.fan_out(&topic, true, || TopicMessage {
            topic: topic.clone(),
            r#type: event_type.to_string(),
            body: Some(
                hearthnet_sdk::proto::hearthnet::event::v1::topic_message::Body::Payload(
                    payload.clone(),
                ),
            ),
        });
    }

    fn publish(&self, events: &[Parsed]) {
        if self
            .inner
            .subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            return;
        }
        for p in events {
            let topic = topic_of(&p.ev.r#type, &p.ev.payload);
            self.fan_out(&topic, false, || TopicMessage {
                topic: topic.clone(),
                r#type: p.ev.r#type.clone(),
                body: SignedEvent::decode(p.raw.as_slice())
                    .ok()
                    .map(hearthnet_sdk::proto::hearthnet::event::v1::topic_message::Body::Event),
            });
        }
    }

    /// Hands a message to every matching subscriber (`operator_only` for
    /// local-only messages); drops subscribers that are gone or too far
    /// behind (EVT-042).
    fn fan_out(&self, topic: &str, operator_only: bool, make: impl Fn() -> TopicMessage) {
        let mut subs = self.inner.subs.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| {
            if (operator_only && !s.operator) || !s.filters.iter().any(|f| filter_matches(f, topic))
            {
                return !s.tx.is_closed();
            }
            match s.tx.try_send(make()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.overflow.store(true, Ordering::SeqCst);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// Pushes an event this node authored to every known peer, best effort
    /// (EVT-036).
    fn push_own(&self, raw: Vec<u8>) {
        let Some(bus) = self.bus() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let log = self.clone();
        handle.spawn(async move {
            for (node, endpoint) in bus.peers() {
                if node == log.inner.me_text {
                    continue;
                }
                let _ = sync::push_raw(&log, &endpoint, vec![raw.clone()]).await;
            }
        });
    }

    /// Pushes the stored event `id` to the node `to` now; true when that node
    /// holds it afterwards.
    pub async fn deliver(&self, id: &str, to: &NodeId) -> bool {
        let Some(raw) = self.get_raw(id) else {
            return false;
        };
        let Some(bus) = self.bus() else {
            return false;
        };
        let to = to.to_string();
        let Some((_, endpoint)) = bus.peers().into_iter().find(|(n, _)| *n == to) else {
            return false;
        };
        matches!(
            sync::push_raw(self, &endpoint, vec![raw]).await,
            Ok(ref r) if r.accepted + r.duplicates == 1
        )
    }
}

/// Verifies signatures: one batch, or one by one when the batch fails.
fn verify_all(parsed: Vec<Parsed>) -> (Vec<Parsed>, Vec<B32>) {
    if parsed.is_empty() || crate::faults::on(crate::faults::Fault::AcceptForgedEvents) {
        return (parsed, Vec::new());
    }
    let bodies: Vec<Option<&[u8]>> = parsed.iter().map(|p| p.event_bytes().ok()).collect();
    let verify_chunk = |chunk: &[(usize, &Parsed)]| -> bool {
        let items: Vec<(NodeId, Domain, &[u8], &[u8])> = chunk
            .iter()
            .filter_map(|(i, p)| bodies[*i].map(|b| (p.author, Domain::Event, b, p.sig.as_slice())))
            .collect();
        items.len() == chunk.len() && signing::verify_envelopes_batch(&items).is_ok()
    };
    let indexed: Vec<(usize, &Parsed)> = parsed.iter().enumerate().collect();
    // Two halves on two threads for large batches.
    let ok = if indexed.len() >= SPLIT_VERIFY_AT {
        let (a, b) = indexed.split_at(indexed.len() / 2);
        std::thread::scope(|s| {
            let h = s.spawn(|| verify_chunk(a));
            let rb = verify_chunk(b);
            h.join().unwrap_or(false) && rb
        })
    } else {
        verify_chunk(&indexed)
    };
    if ok {
        return (parsed, Vec::new());
    }
    let valid: Vec<bool> = parsed
        .iter()
        .zip(&bodies)
        .map(|(p, b)| {
            b.is_some_and(|b| signing::verify_envelope(&p.author, Domain::Event, b, &p.sig).is_ok())
        })
        .collect();
    drop(bodies);
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (p, v) in parsed.into_iter().zip(valid) {
        if v { good.push(p) } else { bad.push(p.id) }
    }
    (good, bad)
}

fn proof_position(p: &EquivocationProof) -> Option<(B32, u64)> {
    let first = p.first.as_ref()?;
    let ev = Event::decode(first.event.as_slice()).ok()?;
    let author = ev.author.parse::<NodeId>().ok()?;
    Some((*author.as_bytes(), ev.seq))
}

/// Folds one event: void checks (EVT-022, EVT-053, membership), then the
/// membership view, then every registered view.
fn fold_one(fold: &mut Fold, ev: &LogEvent, proofs: &HashMap<String, u64>) {
    fold.covers
        .insert(ev.author.clone(), (ev.seq, ev.id.clone()));
    let void = fold.void_from.get(&ev.author).is_some_and(|s| ev.seq >= *s)
        || proofs.get(&ev.author).is_some_and(|s| ev.seq >= *s)
        || fold
            .membership
            .revoked_at_lamport(&ev.author)
            .is_some_and(|r| ev.lamport >= r);
    if void {
        fold.void_from.entry(ev.author.clone()).or_insert(ev.seq);
        return;
    }
    let first = ev.seq == 1
        && matches!(
            ev.event_type.as_str(),
            "community.created" | "community.member.joined"
        );
    if first {
        if !fold.membership.apply(ev) {
            fold.void_from.insert(ev.author.clone(), ev.seq);
            return;
        }
    } else {
        if !fold.membership.is_member(&ev.author) {
            fold.void_from.insert(ev.author.clone(), ev.seq);
            return;
        }
        fold.membership.apply(ev);
    }
    for v in &fold.views {
        v.lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(ev, &fold.membership);
    }
}

/// Trust levels from the last folded membership view.
struct MembersTrust(Arc<RwLock<Membership>>);

fn level_trust(m: &Membership, node: &NodeId) -> Option<Trust> {
    m.level(&node.to_string()).map(|l| match l {
        3 => Trust::Anchor,
        2 => Trust::Trusted,
        _ => Trust::Member,
    })
}

impl TrustSource for MembersTrust {
    fn trust(&self, node: &NodeId) -> Option<Trust> {
        level_trust(&self.0.read().unwrap_or_else(|e| e.into_inner()), node)
    }

    fn is_revoked(&self, node: &NodeId) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_revoked(&node.to_string())
    }
}

impl TrustSource for EventLog {
    fn trust(&self, node: &NodeId) -> Option<Trust> {
        self.catch_up(|m| level_trust(m, node))
    }

    fn is_revoked(&self, node: &NodeId) -> bool {
        self.catch_up(|m| m.is_revoked(&node.to_string()))
    }
}
