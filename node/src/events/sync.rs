//! Sync on the bus (decision 0046): the `event.*` capabilities a node serves
//! and the round a node runs with a peer (EVT-027 … EVT-043).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use hearthnet_sdk::client::{CallItem, Client, ClientError};
use hearthnet_sdk::constants as k;
use hearthnet_sdk::identity::NodeId;
use hearthnet_sdk::proto::hearthnet::bus::v1::PayloadEncoding;
use hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode;
use hearthnet_sdk::proto::hearthnet::event::v1::{
    self as ev, AuthorHead, EventRejection, FetchDoneFrame, SeqRange, SignedEvent, SyncFetchInput,
    SyncFetchRequest, SyncFetchResponse, SyncHeadsOutput, SyncHeadsRequest, SyncHeadsResponse,
    SyncPushInput, SyncPushOutput, SyncPushRequest, SyncPushResponse,
};
use hearthnet_sdk::wkt::Timestamp;

use super::{EventError, EventLog, Outcome};
use crate::bus::{Bus, Offer, Request, Service, Sink, Trust};
use crate::error::CallError;

/// Most bytes of events in one frame or push batch, leaving room for framing.
const BATCH_BYTES: usize = k::BUS_MAX_PAYLOAD_BYTES as usize - 64 * 1024;

/// Errors of a sync round.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The peer could not be called or broke the protocol.
    #[error("peer call failed: {0}")]
    Client(#[from] ClientError),
    /// The bus refused to build the call.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The local log failed.
    #[error(transparent)]
    Event(#[from] EventError),
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundStats {
    /// Events received from the peer and stored here.
    pub fetched: u64,
    /// Events the peer stored from our pushes.
    pub pushed: u64,
    /// Events refused on either side.
    pub refused: u64,
    /// Proofs received and kept.
    pub proofs: u64,
}

/// The `event.*` capabilities of one community log.
pub struct EventService {
    log: EventLog,
}

impl EventService {
    /// The service over a log.
    pub fn new(log: EventLog) -> Arc<Self> {
        Arc::new(Self { log })
    }
}

enum Caller {
    Member,
    Invitee,
}

/// EVT-031: members and pending invitees; revoked callers get `revoked`.
fn admit(log: &EventLog, req: &Request) -> Result<Caller, CallError> {
    if req.trust == Trust::Operator {
        return Ok(Caller::Member);
    }
    let who = req.caller.to_string();
    let now = Timestamp::now().seconds;
    let verdict = log.catch_up(|m| {
        if m.is_revoked(&who) {
            Some(Err(CallError::new(ErrorCode::Revoked, "caller is revoked")))
        } else if m.is_member(&who) {
            Some(Ok(Caller::Member))
        } else if m.is_pending_invitee(&who, now) {
            Some(Ok(Caller::Invitee))
        } else {
            None
        }
    });
    if let Some(v) = verdict {
        return v;
    }
    Err(CallError::new(
        ErrorCode::Unauthorized,
        "caller is neither a member nor a pending invitee of the community",
    ))
}

impl Service for EventService {
    fn name(&self) -> &str {
        "event"
    }

    fn offers(&self) -> Vec<Offer> {
        Offer::all(&[
            "event.sync.heads",
            "event.sync.fetch",
            "event.sync.push",
            "event.subscribe",
        ])
    }

    fn call(&self, req: Request, out: Sink) -> BoxFuture<'static, Result<(), CallError>> {
        let log = self.log.clone();
        async move {
            let started = Instant::now();
            let caller = admit(&log, &req)?;
            match req.capability.name {
                "event.sync.heads" => {
                    let _: SyncHeadsRequest = req.decode()?;
                    out.send(&SyncHeadsResponse {
                        output: Some(heads_output(&log)),
                        meta: Some(ev::SyncHeadsMeta {
                            ms: started.elapsed().as_millis() as u64,
                        }),
                    })
                    .await
                }
                "event.sync.fetch" => {
                    let r: SyncFetchRequest = req.decode()?;
                    serve_fetch(&log, r.input.unwrap_or_default(), &out, started).await
                }
                "event.sync.push" => {
                    let r: SyncPushRequest = req.decode()?;
                    let events = r.input.unwrap_or_default().events;
                    if events.len() > k::EVENT_SYNC_BATCH_MAX_EVENTS as usize {
                        return Err(CallError::bad_request(format!(
                            "a push carries at most {} events, not {}",
                            k::EVENT_SYNC_BATCH_MAX_EVENTS,
                            events.len()
                        )));
                    }
                    if matches!(caller, Caller::Invitee) {
                        invitee_push_ok(&req.caller, &events)?;
                    }
                    let raws: Vec<Vec<u8>> = events.iter().map(Message::encode_to_vec).collect();
                    let log2 = log.clone();
                    let report = tokio::task::spawn_blocking(move || log2.ingest(raws))
                        .await
                        .map_err(|e| CallError::internal(e.to_string()))??;
                    let output = push_output(&report);
                    out.send(&SyncPushResponse {
                        output: Some(output),
                        meta: Some(ev::SyncPushMeta {
                            ms: started.elapsed().as_millis() as u64,
                        }),
                    })
                    .await
                }
                "event.subscribe" => {
                    let r: ev::SubscribeRequest = req.decode()?;
                    let operator = req.trust == Trust::Operator;
                    let topics = r.input.unwrap_or_default().topics;
                    serve_subscribe(&log, topics, operator, &out, req.cancel).await
                }
                other => Err(CallError::new(
                    ErrorCode::NotFound,
                    format!("event service does not serve {other}"),
                )),
            }
        }
        .boxed()
    }
}

/// A pending invitee may push only its own join at seq 1 (EVT-031).
fn invitee_push_ok(caller: &NodeId, events: &[SignedEvent]) -> Result<(), CallError> {
    let me = caller.to_string();
    for se in events {
        let ok = ev::Event::decode(se.event.as_slice())
            .is_ok_and(|e| e.author == me && e.seq == 1 && e.r#type == "community.member.joined");
        if !ok {
            return Err(CallError::new(
                ErrorCode::Unauthorized,
                "a pending invitee may push only its own community.member.joined",
            ));
        }
    }
    Ok(())
}

fn heads_output(log: &EventLog) -> SyncHeadsOutput {
    SyncHeadsOutput {
        heads: log
            .heads()
            .into_iter()
            .map(|(author, seq, id)| AuthorHead { author, seq, id })
            .collect(),
        lamport: log.lamport(),
        snapshot: String::new(),
        proofs: log.proofs(),
    }
}

fn push_output(report: &super::IngestReport) -> SyncPushOutput {
    let mut out = SyncPushOutput::default();
    for (id, o) in &report.outcomes {
        match o {
            Outcome::Accepted => out.accepted += 1,
            Outcome::Duplicate => out.duplicates += 1,
            Outcome::Rejected(r) => out.rejected.push(EventRejection {
                id: id.clone(),
                reason: *r as i32,
            }),
        }
    }
    out.missing = report
        .missing
        .iter()
        .map(|(author, from, to)| SeqRange {
            author: author.clone(),
            from_seq: *from,
            to_seq: *to,
        })
        .collect();
    out
}

async fn serve_fetch(
    log: &EventLog,
    input: SyncFetchInput,
    out: &Sink,
    started: Instant,
) -> Result<(), CallError> {
    let room = k::EVENT_SYNC_BATCH_MAX_EVENTS as usize;
    let mut total = 0u64;
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut bytes = 0usize;
    for range in input.ranges {
        let author = range
            .author
            .parse::<NodeId>()
            .map_err(|e| CallError::bad_request(format!("range author `{}`: {e}", range.author)))?;
        if range.from_seq == 0 {
            return Err(CallError::bad_request("from_seq starts at 1"));
        }
        let mut from = range.from_seq;
        let to = if range.to_seq == 0 {
            u64::MAX
        } else {
            range.to_seq
        };
        while from <= to {
            // Read one frame's worth at a time from the store.
            let mut chunk: Vec<Vec<u8>> = Vec::new();
            log.range_raw(&author, from, to, |raw| {
                chunk.push(raw);
                chunk.len() < room
            })?;
            if chunk.is_empty() {
                break;
            }
            for raw in chunk {
                if batch.len() >= room || bytes + raw.len() > BATCH_BYTES {
                    total += batch.len() as u64;
                    out.send_bytes(frame_bytes(&batch)).await?;
                    batch.clear();
                    bytes = 0;
                }
                bytes += raw.len();
                batch.push(raw);
                from += 1;
            }
        }
    }
    if crate::faults::on(crate::faults::Fault::DropSyncedEvent) {
        batch.pop();
    }
    if !batch.is_empty() {
        total += batch.len() as u64;
        out.send_bytes(frame_bytes(&batch)).await?;
    }
    out.send(&SyncFetchResponse {
        frame: Some(ev::sync_fetch_response::Frame::Done(FetchDoneFrame {
            events: total,
            ms: started.elapsed().as_millis() as u64,
        })),
    })
    .await
}

/// A `SyncFetchResponse` whose `batch` holds the stored `SignedEvent` bytes
/// as they are (field 1 of each message), without decoding them.
fn frame_bytes(events: &[Vec<u8>]) -> Vec<u8> {
    use prost::encoding::{encode_varint, encoded_len_varint};
    let inner: usize = events
        .iter()
        .map(|r| 1 + encoded_len_varint(r.len() as u64) + r.len())
        .sum();
    let mut out = Vec::with_capacity(inner + 11);
    out.push(0x0a);
    encode_varint(inner as u64, &mut out);
    for r in events {
        out.push(0x0a);
        encode_varint(r.len() as u64, &mut out);
        out.extend_from_slice(r);
    }
    out
}

/// The events of a fetch frame as raw `SignedEvent` bytes; `None` for the
/// `done` frame. Other layouts fall back to a full decode.
fn frame_events(data: &[u8]) -> Result<Option<Vec<Vec<u8>>>, ClientError> {
    fn field(buf: &mut &[u8]) -> Option<(u8, Vec<u8>)> {
        let (&tag, rest) = buf.split_first()?;
        let mut rest = rest;
        let len = prost::encoding::decode_varint(&mut rest).ok()? as usize;
        let body = rest.get(..len)?.to_vec();
        *buf = &rest[len..];
        Some((tag, body))
    }
    let mut buf = data;
    if let Some((0x0a, inner)) = field(&mut buf)
        && buf.is_empty()
    {
        let mut events = Vec::new();
        let mut rest = inner.as_slice();
        while !rest.is_empty() {
            match field(&mut rest) {
                Some((0x0a, raw)) => events.push(raw),
                _ => return decode_frame(data),
            }
        }
        return Ok(Some(events));
    }
    decode_frame(data)
}

fn decode_frame(data: &[u8]) -> Result<Option<Vec<Vec<u8>>>, ClientError> {
    let frame = SyncFetchResponse::decode(data)?;
    Ok(match frame.frame {
        Some(ev::sync_fetch_response::Frame::Batch(b)) => {
            Some(b.events.iter().map(Message::encode_to_vec).collect())
        }
        _ => None,
    })
}

async fn serve_subscribe(
    log: &EventLog,
    topics: Vec<String>,
    operator: bool,
    out: &Sink,
    cancel: CancellationToken,
) -> Result<(), CallError> {
    if topics.is_empty() || topics.len() > k::EVENT_SUBSCRIBE_MAX_TOPICS as usize {
        return Err(CallError::bad_request(format!(
            "between 1 and {} topic filters, not {}",
            k::EVENT_SUBSCRIBE_MAX_TOPICS,
            topics.len()
        )));
    }
    if let Some(bad) = topics.iter().find(|t| !super::filter_valid(t)) {
        return Err(CallError::bad_request(format!(
            "topic filter `{bad}` is not an exact topic, a prefix ending in `.*` or `*`"
        )));
    }
    let (mut rx, overflow) = log.subscribe(topics, operator);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            msg = rx.recv() => match msg {
                Some(m) => {
                    out.send(&ev::SubscribeResponse {
                        frame: Some(ev::subscribe_response::Frame::Message(m)),
                    })
                    .await?;
                }
                None => {
                    if overflow.load(Ordering::SeqCst) {
                        return Err(CallError::new(
                            ErrorCode::CapacityExceeded,
                            "subscriber fell more than 256 messages behind",
                        ));
                    }
                    return Ok(());
                }
            }
        }
    }
}

/// A client for a peer, signing as this node, naming the log's community.
fn client_for(log: &EventLog, endpoint: &str) -> Result<Client, SyncError> {
    let client = match log.bus() {
        Some(bus) => bus.peer_client(endpoint)?,
        None => {
            let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
                .map_err(|e| CallError::new(ErrorCode::Partition, e.to_string()))?
                .tcp_nodelay(true)
                .connect_lazy();
            Client::with_channel(channel, log.key().clone())
        }
    };
    Ok(client.with_community(log.community().to_string()))
}

/// Pushes raw events to a peer in one call.
pub async fn push_raw(
    log: &EventLog,
    endpoint: &str,
    raws: Vec<Vec<u8>>,
) -> Result<SyncPushOutput, SyncError> {
    let client = client_for(log, endpoint)?;
    push_with(&client, raws).await
}

async fn push_with(client: &Client, raws: Vec<Vec<u8>>) -> Result<SyncPushOutput, SyncError> {
    let events = raws
        .iter()
        .filter_map(|r| SignedEvent::decode(r.as_slice()).ok())
        .collect();
    let resp: SyncPushResponse = client
        .unary(
            "event.sync.push",
            "1.0",
            &SyncPushRequest {
                params: Some(Default::default()),
                input: Some(SyncPushInput { events }),
            },
        )
        .await?;
    Ok(resp.output.unwrap_or_default())
}

/// Runs one sync round with the peer at `endpoint` (EVT-032).
pub async fn round(log: &EventLog, endpoint: &str) -> Result<RoundStats, SyncError> {
    let client = client_for(log, endpoint)?;
    round_with(log, &client).await
}

/// Runs one sync round over an existing client.
pub async fn round_with(log: &EventLog, client: &Client) -> Result<RoundStats, SyncError> {
    let mut stats = RoundStats::default();
    let theirs: SyncHeadsResponse = client
        .unary(
            "event.sync.heads",
            "1.0",
            &SyncHeadsRequest {
                params: Some(Default::default()),
                input: Some(Default::default()),
            },
        )
        .await?;
    let theirs = theirs.output.unwrap_or_default();
    for p in &theirs.proofs {
        if log.add_proof(p) {
            stats.proofs += 1;
        }
    }
    let mine: BTreeMap<String, (u64, String)> = log
        .heads()
        .into_iter()
        .map(|(a, s, i)| (a, (s, i)))
        .collect();
    let mut fetch: Vec<SeqRange> = Vec::new();
    let mut push: Vec<(NodeId, u64)> = Vec::new();
    let mut diverged: HashSet<String> = HashSet::new();
    let mut seen = HashSet::new();
    for h in &theirs.heads {
        seen.insert(h.author.clone());
        let (my_seq, my_id) = mine.get(&h.author).cloned().unwrap_or((0, String::new()));
        if h.seq > my_seq {
            fetch.push(SeqRange {
                author: h.author.clone(),
                from_seq: my_seq + 1,
                to_seq: h.seq,
            });
        } else if h.seq == my_seq && h.id != my_id {
            diverged.insert(h.author.clone());
        } else if h.seq < my_seq {
            let same = log
                .inner_chain_id(&h.author, h.seq)
                .is_some_and(|id| id == h.id);
            if h.seq > 0 && !same {
                diverged.insert(h.author.clone());
            } else if let Ok(a) = h.author.parse::<NodeId>() {
                push.push((a, h.seq + 1));
            }
        }
    }
    for author in mine.keys() {
        if !seen.contains(author)
            && let Ok(a) = author.parse::<NodeId>()
        {
            push.push((a, 1));
        }
    }
    let fetched = fetch_ranges(log, client, fetch).await?;
    stats.fetched += fetched.0;
    stats.refused += fetched.1.len() as u64;
    diverged.extend(fetched.1);
    if !diverged.is_empty() {
        // Fetch the diverging chains from the start: ingest finds the lowest
        // seq where they differ and keeps that pair as proof (EVT-021).
        let ranges = diverged
            .into_iter()
            .map(|author| SeqRange {
                author,
                from_seq: 1,
                to_seq: 0,
            })
            .collect();
        let before = log.proofs().len();
        let more = fetch_ranges(log, client, ranges).await?;
        stats.fetched += more.0;
        stats.proofs += (log.proofs().len() - before) as u64;
    }
    let mut missing: Vec<(NodeId, u64, u64)> = Vec::new();
    for (author, from) in push {
        let out = push_range(log, client, &author, from, 0).await?;
        stats.pushed += out.0;
        stats.refused += out.1;
        missing.extend(out.2);
    }
    // Whatever the peer still lacks (EVT-035).
    for (author, from, to) in missing {
        let out = push_range(log, client, &author, from, to).await?;
        stats.pushed += out.0;
        stats.refused += out.1;
    }
    // Views fold lazily (on read, and in the node's background folder).
    Ok(stats)
}

/// Fetches ranges and ingests them frame by frame, overlapping the next
/// frame's receipt with the previous frame's ingest. Returns the number
/// stored and the authors whose events were refused as equivocation.
async fn fetch_ranges(
    log: &EventLog,
    client: &Client,
    ranges: Vec<SeqRange>,
) -> Result<(u64, HashSet<String>), SyncError> {
    if ranges.is_empty() {
        return Ok((0, HashSet::new()));
    }
    let req = SyncFetchRequest {
        params: Some(Default::default()),
        input: Some(SyncFetchInput { ranges }),
    };
    let call = client.request(
        "event.sync.fetch",
        "1.0",
        PayloadEncoding::Proto,
        req.encode_to_vec(),
    );
    let mut stream = client.send(call, Some(Duration::from_secs(300))).await?;
    let mut stored = 0u64;
    let mut diverged = HashSet::new();
    // A three-stage pipeline: receive frame n+2 while frame n+1 is verified
    // and frame n is checked and written (in frame order).
    type Job<T> = tokio::task::JoinHandle<T>;
    let mut verifying: Option<Job<super::Verified>> = None;
    let mut applying: Option<Job<Result<super::IngestReport, EventError>>> = None;
    let join = |e: tokio::task::JoinError| CallError::internal(e.to_string());
    let mut collect = |report: super::IngestReport, diverged: &mut HashSet<String>| {
        stored += report.stored;
        diverged.extend(report.equivocating.iter().cloned());
    };
    loop {
        let next = match stream.next().await? {
            None => None,
            Some(CallItem::Data(data)) => match frame_events(&data)? {
                Some(raws) => Some(raws),
                None => continue,
            },
            Some(_) => continue,
        };
        if let Some(v) = verifying.take() {
            let verified = v.await.map_err(join)?;
            if let Some(a) = applying.take() {
                collect(a.await.map_err(join)??, &mut diverged);
            }
            let log2 = log.clone();
            applying = Some(tokio::task::spawn_blocking(move || log2.apply(verified)));
        }
        let Some(raws) = next else { break };
        let log2 = log.clone();
        verifying = Some(tokio::task::spawn_blocking(move || log2.verify(raws)));
    }
    if let Some(a) = applying.take() {
        collect(a.await.map_err(join)??, &mut diverged);
    }
    Ok((stored, diverged))
}

/// Pushes one author's events from `from` to `to` (0 = head) in batches;
/// returns (stored by the peer, refused, missing ranges it reported).
async fn push_range(
    log: &EventLog,
    client: &Client,
    author: &NodeId,
    from: u64,
    to: u64,
) -> Result<(u64, u64, Vec<(NodeId, u64, u64)>), SyncError> {
    let mut next = from.max(1);
    let last = if to == 0 { u64::MAX } else { to };
    let (mut stored, mut refused) = (0u64, 0u64);
    let mut missing = Vec::new();
    while next <= last {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        log.range_raw(author, next, last, |raw| {
            bytes += raw.len();
            batch.push(raw);
            batch.len() < k::EVENT_SYNC_BATCH_MAX_EVENTS as usize && bytes < BATCH_BYTES
        })?;
        if batch.is_empty() {
            break;
        }
        next += batch.len() as u64;
        let out = push_with(client, batch).await?;
        stored += u64::from(out.accepted);
        refused += out.rejected.len() as u64;
        for m in out.missing {
            if let Ok(a) = m.author.parse::<NodeId>() {
                missing.push((a, m.from_seq, m.to_seq));
            }
        }
    }
    Ok((stored, refused, missing))
}

/// Folds newly stored events into the views in the background, shortly
/// after they arrive, until `stop` is cancelled.
pub fn spawn_folder(log: EventLog, tasks: &TaskTracker, stop: CancellationToken) {
    tasks.spawn(async move {
        let mut changed = log.watch();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = settled(&mut changed) => if !r { return },
            }
            let l = log.clone();
            let _ = tokio::task::spawn_blocking(move || l.catch_up(|_| ())).await;
        }
    });
}

/// Waits for stored events, then lets a burst (a sync round) settle: returns
/// after 100 ms without new events, or 5 s after the first one. False when
/// the log is gone.
pub async fn settled(changed: &mut tokio::sync::watch::Receiver<u64>) -> bool {
    if changed.changed().await.is_err() {
        return false;
    }
    let first = Instant::now();
    while first.elapsed() < Duration::from_secs(5) {
        match tokio::time::timeout(Duration::from_millis(100), changed.changed()).await {
            Err(_) => break,
            Ok(Err(_)) => return false,
            Ok(Ok(())) => {}
        }
    }
    true
}

/// Runs sync rounds in the background: with every peer every `interval`
/// (±10 % jitter, EVT-034) and at once with a peer that just appeared
/// (EVT-035), until `stop` is cancelled.
pub fn spawn_loop(
    log: EventLog,
    bus: Bus,
    interval: Duration,
    tasks: &TaskTracker,
    stop: CancellationToken,
) {
    tasks.spawn(async move {
        let mut known: HashSet<String> = HashSet::new();
        let mut next_full = Instant::now() + jitter(interval);
        let me = log.node_id().to_string();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            let peers: Vec<(String, String)> =
                bus.peers().into_iter().filter(|(n, _)| *n != me).collect();
            // Offline (emergency) mode syncs every 30 s (EVT-034).
            let emergency = Duration::from_secs(k::EVENT_SYNC_EMERGENCY_INTERVAL_SECONDS as u64);
            let interval = if log.offline() {
                interval.min(emergency)
            } else {
                interval
            };
            next_full = next_full.min(Instant::now() + jitter(interval));
            let full = Instant::now() >= next_full;
            for (node, endpoint) in &peers {
                let new = known.insert(node.clone());
                if !(new || full) {
                    continue;
                }
                match round(&log, endpoint).await {
                    Ok(s) => tracing::debug!(peer = %node, ?s, "sync round"),
                    Err(e) => {
                        tracing::debug!(peer = %node, error = %e, "sync round failed");
                        // Try again on the next tick.
                        known.remove(node);
                    }
                }
            }
            known.retain(|n| peers.iter().any(|(p, _)| p == n));
            if full {
                next_full = Instant::now() + jitter(interval);
            }
        }
    });
}

fn jitter(d: Duration) -> Duration {
    let f: f64 = 0.9 + rand::random::<f64>() * 0.2;
    d.mul_f64(f)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fetch_frames_round_trip_without_decoding() {
        let events = vec![vec![0x0a, 1, 7, 0x12, 0], vec![0x0a, 0, 0x12, 0]];
        let bytes = frame_bytes(&events);
        // The hand-built frame is a valid `SyncFetchResponse`.
        let decoded = SyncFetchResponse::decode(bytes.as_slice()).unwrap();
        let Some(ev::sync_fetch_response::Frame::Batch(b)) = decoded.frame else {
            panic!("not a batch")
        };
        assert_eq!(b.events.len(), 2);
        assert_eq!(frame_events(&bytes).unwrap(), Some(events));
        // The done frame carries no events.
        let done = SyncFetchResponse {
            frame: Some(ev::sync_fetch_response::Frame::Done(FetchDoneFrame {
                events: 2,
                ms: 1,
            })),
        };
        assert_eq!(frame_events(&done.encode_to_vec()).unwrap(), None);
    }

    #[test]
    fn garbage_frames_from_a_peer_are_typed_errors() {
        for garbage in [
            vec![
                0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
            vec![0x0a, 0x05, 0x0a],
            vec![0xff; 7],
        ] {
            let err = frame_events(&garbage).unwrap_err();
            assert!(matches!(err, ClientError::Decode(_)), "{err}");
        }
    }
}
