//! Direct messages (`protocol/spec/chat.md`: CHAT-001, CHAT-002, CHAT-012,
//! CHAT-013, CHAT-015, CHAT-018).
//!
//! A message is a `chat.message.sent` event in the community log, authored
//! by the sending node; the recipient answers with `chat.message.delivered`
//! and `chat.message.read` receipts. Every node folds them into a
//! [`ChatView`]. A recipient that is offline gets the message through the
//! log itself: any node that synced the event holds it until the recipient
//! syncs. Threads, end-to-end encryption and `chat.forward.*` are not
//! served yet.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use prost::Message;
use serde::{Deserialize, Serialize};

use hearthnet_sdk::constants as k;
use hearthnet_sdk::identity::NodeId;
use hearthnet_sdk::proto::hearthnet::chat::v1::{self as pb, DeliveryStatus};
use hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode;
use hearthnet_sdk::wkt::Timestamp;

use crate::bus::{Offer, Request, Service, Sink, Trust};
use crate::error::CallError;
use crate::events::{Appended, EventLog, LogEvent, Membership, View};

/// Snapshot name of the direct-message view.
const VIEW_NAME: &str = "x-hearthnet.chat.direct";
const HISTORY_DEFAULT: u32 = k::CHAT_HISTORY_DEFAULT_LIMIT as u32;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ts((seconds, nanos): (i64, i32)) -> Timestamp {
    Timestamp { seconds, nanos }
}

/// A valid receipt (CHAT-015).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Receipt {
    id: String,
    lamport: u64,
    /// The time it reports: (seconds, nanos).
    at: (i64, i32),
}

/// One direct message as folded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Msg {
    id: String,
    lamport: u64,
    from: String,
    to: String,
    body: String,
    /// (cid, name) pairs.
    attachments: Vec<(String, String)>,
    /// The event's wall clock.
    created_at: i64,
    /// Whether the body is end-to-end encrypted (not readable here yet).
    encrypted: bool,
    delivered: Option<Receipt>,
    read: Option<Receipt>,
}

impl Msg {
    fn to_pb(&self) -> pb::ChatMessage {
        pb::ChatMessage {
            event_id: self.id.clone(),
            lamport: self.lamport,
            from: self.from.clone(),
            to: self.to.clone(),
            body: self.body.clone(),
            attachments: self
                .attachments
                .iter()
                .map(|(cid, name)| pb::Attachment {
                    cid: cid.clone(),
                    name: name.clone(),
                })
                .collect(),
            created_at: Some(ts((self.created_at, 0))),
            delivered_at: self.delivered.as_ref().map(|r| ts(r.at)),
            read_at: self.read.as_ref().map(|r| ts(r.at)),
        }
    }
}

/// The direct-message view: messages keyed by event id, receipts taken only
/// from the message's recipient with the earliest (lowest Lamport time,
/// then id) winning (CHAT-015), and (author, client id) retry keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatView {
    messages: BTreeMap<String, Msg>,
    /// author → client id → (event id, Lamport time).
    retry: BTreeMap<String, BTreeMap<String, (String, u64)>>,
}

impl ChatView {
    /// Every message, ordered by Lamport time then event id, with
    /// `delivered_at` and `read_at` from valid receipts.
    pub fn messages(&self) -> Vec<pb::ChatMessage> {
        let mut v: Vec<&Msg> = self.messages.values().collect();
        v.sort_by(|a, b| (a.lamport, &a.id).cmp(&(b.lamport, &b.id)));
        v.into_iter().map(Msg::to_pb).collect()
    }

    /// One message by event id.
    pub fn message(&self, event_id: &str) -> Option<pb::ChatMessage> {
        self.messages.get(event_id).map(Msg::to_pb)
    }

    /// The event an (author, client id) retry key names.
    pub fn retry(&self, author: &str, client_id: &str) -> Option<Appended> {
        self.retry
            .get(author)
            .and_then(|m| m.get(client_id))
            .map(|(id, lamport)| Appended {
                id: id.clone(),
                lamport: *lamport,
            })
    }

    /// Ids of the messages to `me` without a delivery receipt yet, in log
    /// order. Encrypted messages are left out: this node cannot tell a
    /// sender-key distribution, which must not be acknowledged (CHAT-018).
    pub fn unacknowledged(&self, me: &str) -> Vec<String> {
        let mut v: Vec<&Msg> = self
            .messages
            .values()
            .filter(|m| m.to == me && m.delivered.is_none() && !m.encrypted)
            .collect();
        v.sort_by(|a, b| (a.lamport, &a.id).cmp(&(b.lamport, &b.id)));
        v.into_iter().map(|m| m.id.clone()).collect()
    }

    fn fold_sent(&mut self, ev: &LogEvent, m: pb::MessageSentEvent) {
        if m.recipient.is_empty() || m.recipient == ev.author || self.messages.contains_key(&ev.id)
        {
            return;
        }
        if !m.client_id.is_empty() {
            let named = self
                .retry
                .entry(ev.author.clone())
                .or_default()
                .entry(m.client_id.clone())
                .or_insert_with(|| (ev.id.clone(), ev.lamport));
            if named.0 != ev.id {
                return; // a second event under one retry key is a duplicate
            }
        }
        self.messages.insert(
            ev.id.clone(),
            Msg {
                id: ev.id.clone(),
                lamport: ev.lamport,
                from: ev.author.clone(),
                to: m.recipient,
                body: m.body,
                attachments: m.attachments.into_iter().map(|a| (a.cid, a.name)).collect(),
                created_at: ev.wall_clock,
                encrypted: m.encrypted.is_some(),
                delivered: None,
                read: None,
            },
        );
    }

    /// CHAT-015: only the recipient's receipts count; the earliest wins.
    fn fold_receipt(&mut self, ev: &LogEvent, target: &str, at: Option<Timestamp>, read: bool) {
        let Some(m) = self.messages.get_mut(target) else {
            return;
        };
        if ev.author != m.to {
            return;
        }
        let r = Receipt {
            id: ev.id.clone(),
            lamport: ev.lamport,
            at: at.map_or((ev.wall_clock, 0), |t| (t.seconds, t.nanos)),
        };
        let slot = if read { &mut m.read } else { &mut m.delivered };
        if slot
            .as_ref()
            .is_none_or(|cur| (r.lamport, &r.id) < (cur.lamport, &cur.id))
        {
            *slot = Some(r);
        }
    }
}

impl View for ChatView {
    fn name(&self) -> &'static str {
        VIEW_NAME
    }

    fn reset(&mut self) {
        *self = Self::default();
    }

    fn apply(&mut self, ev: &LogEvent, _members: &Membership) {
        let bytes = ev.payload.as_slice();
        match ev.event_type.as_str() {
            "chat.message.sent" => {
                if let Ok(m) = pb::MessageSentEvent::decode(bytes) {
                    self.fold_sent(ev, m);
                }
            }
            "chat.message.delivered" => {
                if let Ok(r) = pb::MessageDeliveredEvent::decode(bytes) {
                    self.fold_receipt(ev, &r.target_event_id, r.delivered_at, false);
                }
            }
            "chat.message.read" => {
                if let Ok(r) = pb::MessageReadEvent::decode(bytes) {
                    self.fold_receipt(ev, &r.target_event_id, r.read_at, true);
                }
            }
            _ => {}
        }
    }

    fn encode(&self) -> Option<Vec<u8>> {
        serde_json::to_vec(self).ok()
    }

    fn restore(&mut self, state: &[u8]) -> bool {
        match serde_json::from_slice(state) {
            Ok(v) => {
                *self = v;
                true
            }
            Err(_) => false,
        }
    }
}

struct Inner {
    log: EventLog,
    me: String,
    view: Arc<Mutex<ChatView>>,
    /// Serialises check-then-append of idempotent writes and receipts.
    writes: Mutex<()>,
}

/// The direct-message service: `chat.send` and `chat.history`, plus the
/// recipient's receipts (CHAT-018).
pub struct ChatService {
    inner: Arc<Inner>,
}

impl ChatService {
    /// The service over a community log; creates and registers its view.
    pub fn new(log: EventLog) -> Arc<Self> {
        let view = Arc::new(Mutex::new(ChatView::default()));
        log.register_view(view.clone());
        Arc::new(Self {
            inner: Arc::new(Inner {
                me: log.node_id().to_string(),
                log,
                view,
                writes: Mutex::new(()),
            }),
        })
    }

    /// The direct-message view (call [`EventLog::catch_up`] first for a
    /// current state).
    pub fn view(&self) -> Arc<Mutex<ChatView>> {
        self.inner.view.clone()
    }

    /// CHAT-018: appends one `chat.message.delivered` for every message to
    /// this node that has no delivery receipt from it yet. Returns how many.
    pub fn acknowledge_new(&self) -> Result<u32, CallError> {
        let inner = &*self.inner;
        let _w = lock(&inner.writes);
        let due = inner.read(|v| v.unacknowledged(&inner.me));
        let mut n = 0;
        for target_event_id in due {
            let r = pb::MessageDeliveredEvent {
                target_event_id,
                delivered_at: Some(Timestamp::now()),
            };
            inner
                .log
                .append("chat.message.delivered", r.encode_to_vec())?;
            n += 1;
        }
        Ok(n)
    }

    /// Appends a `chat.message.read` receipt for a message to this node
    /// (CHAT-018); a message already read answers with its first receipt.
    /// `not_found` for an unknown message, `bad_request` for one addressed
    /// to another node.
    pub fn mark_read(&self, event_id: &str) -> Result<Appended, CallError> {
        let inner = &*self.inner;
        let _w = lock(&inner.writes);
        let state = inner.read(|v| {
            v.messages.get(event_id).map(|m| {
                let first = m.read.as_ref().map(|r| Appended {
                    id: r.id.clone(),
                    lamport: r.lamport,
                });
                (m.to == inner.me, first)
            })
        });
        match state {
            None => Err(CallError::new(
                ErrorCode::NotFound,
                format!("no message {event_id}"),
            )),
            Some((false, _)) => Err(CallError::bad_request(format!(
                "message {event_id} is not addressed to this node"
            ))),
            Some((true, Some(first))) => Ok(first),
            Some((true, None)) => {
                let r = pb::MessageReadEvent {
                    target_event_id: event_id.to_string(),
                    read_at: Some(Timestamp::now()),
                };
                inner
                    .log
                    .append("chat.message.read", r.encode_to_vec())
                    .map_err(CallError::from)
            }
        }
    }
}

impl Inner {
    /// Folds the log, then runs `f` with the view.
    fn read<R>(&self, f: impl FnOnce(&ChatView) -> R) -> R {
        self.log.catch_up(|_| f(&lock(&self.view)))
    }

    /// CHAT-001, CHAT-013.
    async fn send(&self, input: pb::SendInput) -> Result<pb::SendOutput, CallError> {
        if input.client_id.is_empty() {
            return Err(CallError::bad_request("client_id is required"));
        }
        let recipient = input
            .recipient
            .parse::<NodeId>()
            .map_err(|e| CallError::bad_request(format!("recipient `{}`: {e}", input.recipient)))?;
        let to = recipient.to_string();
        if to == self.me {
            return Err(CallError::bad_request(
                "cannot send a message to this node itself",
            ));
        }
        if input.body.is_empty() && input.attachments.is_empty() {
            return Err(CallError::bad_request(
                "a message needs a body or attachments",
            ));
        }
        let appended = self.append_message(input, &to)?;
        let delivered = if self.log.deliver(&appended.id, &recipient).await {
            DeliveryStatus::Direct
        } else {
            DeliveryStatus::Queued
        };
        Ok(pb::SendOutput {
            event_id: appended.id,
            lamport: appended.lamport,
            delivered: delivered as i32,
        })
    }

    /// The event for a send: the one its retry key names, or a new one.
    fn append_message(&self, input: pb::SendInput, to: &str) -> Result<Appended, CallError> {
        let _w = lock(&self.writes);
        let prior = self
            .log
            .catch_up(|m| -> Result<Option<Appended>, CallError> {
                if let Some(a) = lock(&self.view).retry(&self.me, &input.client_id) {
                    return Ok(Some(a));
                }
                if !m.is_member(to) {
                    return Err(CallError::new(
                        ErrorCode::NotFound,
                        format!("{to} is not a member of the community"),
                    ));
                }
                Ok(None)
            })?;
        if let Some(a) = prior {
            return Ok(a);
        }
        let ev = pb::MessageSentEvent {
            client_id: input.client_id,
            recipient: to.to_string(),
            body: input.body,
            attachments: input.attachments,
            encrypted: None,
        };
        self.log
            .append("chat.message.sent", ev.encode_to_vec())
            .map_err(CallError::from)
    }

    /// CHAT-002: this node's messages, oldest first.
    fn history(&self, input: pb::HistoryInput) -> pb::HistoryOutput {
        let peer = (!input.peer.is_empty()).then(|| {
            input
                .peer
                .parse::<NodeId>()
                .map_or_else(|_| input.peer.clone(), |n| n.to_string())
        });
        let limit = input.limit.unwrap_or(HISTORY_DEFAULT) as usize;
        let me = self.me.as_str();
        let messages = self
            .read(ChatView::messages)
            .into_iter()
            .filter(|m| {
                let other = if m.from == me {
                    &m.to
                } else if m.to == me {
                    &m.from
                } else {
                    return false;
                };
                m.lamport > input.since_lamport && peer.as_ref().is_none_or(|p| p == other)
            })
            .take(limit)
            .collect();
        pb::HistoryOutput { messages }
    }

    async fn serve(&self, req: Request, out: Sink) -> Result<(), CallError> {
        let started = Instant::now();
        let ms = || started.elapsed().as_millis() as u64;
        // CHAT-002, CHAT-012: the node sends and reads only for its operator.
        if req.trust != Trust::Operator {
            return Err(CallError::new(
                ErrorCode::Unauthorized,
                format!(
                    "{} speaks for this node; only its own operator may call it",
                    req.capability.name
                ),
            ));
        }
        match req.capability.name {
            "chat.send" => {
                let r: pb::SendRequest = req.decode()?;
                let output = self.send(r.input.unwrap_or_default()).await?;
                out.send(&pb::SendResponse {
                    output: Some(output),
                    meta: Some(pb::SendMeta { ms: ms() }),
                })
                .await
            }
            "chat.history" => {
                let r: pb::HistoryRequest = req.decode()?;
                let output = self.history(r.input.unwrap_or_default());
                out.send(&pb::HistoryResponse {
                    output: Some(output),
                    meta: Some(pb::HistoryMeta { ms: ms() }),
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

impl Service for ChatService {
    fn name(&self) -> &str {
        "chat"
    }

    fn offers(&self) -> Vec<Offer> {
        Offer::all(&["chat.send", "chat.history"])
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
    const CCC: &str = "ed25519:CCC";

    fn members() -> Membership {
        Membership::for_tests(&[(AAA, 1), (BBB, 1), (CCC, 2)])
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

    fn sent(id: &str, from: &str, to: &str, lamport: u64, client_id: &str) -> LogEvent {
        ev(
            id,
            from,
            lamport,
            100,
            "chat.message.sent",
            pb::MessageSentEvent {
                client_id: client_id.to_string(),
                recipient: to.to_string(),
                body: format!("hello from {id}"),
                ..Default::default()
            },
        )
    }

    fn delivered(id: &str, author: &str, lamport: u64, at: i64) -> LogEvent {
        ev(
            id,
            author,
            lamport,
            at,
            "chat.message.delivered",
            pb::MessageDeliveredEvent {
                target_event_id: "m1".into(),
                delivered_at: Some(Timestamp {
                    seconds: at,
                    nanos: 0,
                }),
            },
        )
    }

    #[test]
    fn receipts_count_only_from_the_recipient() {
        let m = members();
        let mut v = ChatView::default();
        v.apply(&sent("m1", AAA, BBB, 1, "c1"), &m);
        assert_eq!(v.unacknowledged(BBB), vec!["m1".to_string()]);
        v.apply(&delivered("r0", CCC, 2, 150), &m);
        v.apply(&delivered("r1", AAA, 3, 160), &m);
        assert_eq!(v.messages()[0].delivered_at, None, "not from the recipient");
        assert_eq!(v.unacknowledged(BBB), vec!["m1".to_string()]);
        v.apply(&delivered("r2", BBB, 4, 300), &m);
        assert_eq!(v.messages()[0].delivered_at.unwrap().seconds, 300);
        assert!(v.unacknowledged(BBB).is_empty());
        let read = pb::MessageReadEvent {
            target_event_id: "m1".into(),
            read_at: None,
        };
        v.apply(&ev("r3", BBB, 5, 400, "chat.message.read", read), &m);
        assert_eq!(v.message("m1").unwrap().read_at.unwrap().seconds, 400);
    }

    #[test]
    fn the_earliest_receipt_wins_in_any_order() {
        let m = members();
        let evs = [delivered("r5", BBB, 5, 300), delivered("r7", BBB, 7, 200)];
        for order in [[0, 1], [1, 0]] {
            let mut v = ChatView::default();
            v.apply(&sent("m1", AAA, BBB, 1, "c1"), &m);
            for i in order {
                v.apply(&evs[i], &m);
            }
            assert_eq!(v.messages()[0].delivered_at.unwrap().seconds, 300);
        }
    }

    #[test]
    fn retry_key_names_the_first_message() {
        let m = members();
        let mut v = ChatView::default();
        v.apply(&sent("m1", AAA, BBB, 1, "c1"), &m);
        v.apply(&sent("m2", AAA, BBB, 2, "c1"), &m);
        v.apply(&sent("m3", BBB, AAA, 3, "c1"), &m);
        v.apply(&sent("m4", AAA, AAA, 4, "c4"), &m);
        assert_eq!(
            v.retry(AAA, "c1"),
            Some(Appended {
                id: "m1".into(),
                lamport: 1
            })
        );
        assert_eq!(v.retry(BBB, "c1").unwrap().id, "m3");
        let ids: Vec<String> = v.messages().into_iter().map(|m| m.event_id).collect();
        assert_eq!(
            ids,
            ["m1", "m3"],
            "duplicates and self-messages are dropped"
        );
        let mut r = ChatView::default();
        assert!(r.restore(&v.encode().unwrap()));
        assert_eq!(r, v);
        v.reset();
        assert!(v.retry(AAA, "c1").is_none());
    }
}
