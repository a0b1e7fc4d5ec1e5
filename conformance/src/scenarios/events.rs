//! Community-log scenarios: the log a target serves must match the heads it
//! announces, every event must verify, and `event.sync.push` must sort what
//! it is offered into duplicates and refusals (EVT-027, EVT-028, decision 0045).

use hearthnet_sdk::identity::{NodeId, SecretKey};
use hearthnet_sdk::proto::hearthnet::bus::v1::PayloadEncoding;
use hearthnet_sdk::proto::hearthnet::community::v1 as cm;
use hearthnet_sdk::proto::hearthnet::event::v1 as ev;
use hearthnet_sdk::proto::hearthnet::identity::v1::NodeManifest;
use hearthnet_sdk::records::seal_node_manifest;
use hearthnet_sdk::signing::{Domain, sign_envelope, verify_envelope};
use hearthnet_sdk::wkt::Timestamp;
use prost::Message;

use super::fail;
use crate::run::{self, Keys, Outcome, Preflight, Terminal};
use crate::target::Target;

/// One author's fetched log with its head.
struct Fetched {
    head: ev::AuthorHead,
    events: Vec<ev::SignedEvent>,
}

fn cid(raw: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(raw).to_hex())
}

async fn heads(target: &Target, keys: &Keys) -> Result<ev::SyncHeadsOutput, Outcome> {
    let resp: ev::SyncHeadsResponse = run::unary(
        target,
        &keys.caller,
        "event.sync.heads",
        &ev::SyncHeadsRequest::default(),
    )
    .await
    .map_err(|e| fail(e, "an event.sync.heads response"))?;
    Ok(resp.output.unwrap_or_default())
}

/// Fetches every author's whole log; the events of one `SeqRange` each.
async fn fetch_all(target: &Target, keys: &Keys, pre: &Preflight) -> Result<Vec<Fetched>, Outcome> {
    let heads = heads(target, keys).await?.heads;
    if heads.is_empty() {
        return Err(fail(
            "event.sync.heads lists no author",
            "at least the founder's community.created (EVT-027)",
        ));
    }
    let mut out = Vec::new();
    for head in heads {
        let req = ev::SyncFetchRequest {
            params: None,
            input: Some(ev::SyncFetchInput {
                ranges: vec![ev::SeqRange {
                    author: head.author.clone(),
                    from_seq: 1,
                    to_seq: 0,
                }],
            }),
        };
        let call = run::signed_call(
            &keys.caller,
            "event.sync.fetch",
            "1.0",
            PayloadEncoding::Proto,
            req.encode_to_vec(),
        );
        let rid = call.request_id.clone();
        let obs = target.call(call).await;
        let frames = match run::check_frames(&obs, &rid, Some(&pre.node)) {
            Ok(Terminal::Done(frames)) => frames,
            Ok(Terminal::Error(e)) => {
                return Err(fail(
                    format!("error {}: {}", e.code, e.message),
                    "the author's events",
                ));
            }
            Err(f) => return Err(Outcome::Fail(f)),
        };
        let mut events = Vec::new();
        for f in frames {
            match ev::SyncFetchResponse::decode(f.as_slice()).map(|r| r.frame) {
                Ok(Some(ev::sync_fetch_response::Frame::Batch(b))) => events.extend(b.events),
                Ok(_) => {}
                Err(e) => {
                    return Err(fail(
                        format!("a data frame that does not decode: {e}"),
                        "SyncFetchResponse",
                    ));
                }
            }
        }
        out.push(Fetched { head, events });
    }
    Ok(out)
}

/// Every author's fetched log runs from seq 1 to the announced head, chained
/// by `prev`, signed by its author, and ends at the head's id.
pub async fn log_matches_heads(target: &Target, keys: &Keys, pre: &Preflight) -> Outcome {
    let logs = match fetch_all(target, keys, pre).await {
        Ok(l) => l,
        Err(o) => return o,
    };
    for Fetched { head, events } in &logs {
        let Ok(author) = head.author.parse::<NodeId>() else {
            return fail(
                format!("head author {:?}", head.author),
                "a full NodeID (IDENT-001)",
            );
        };
        if events.len() as u64 != head.seq {
            return fail(
                format!(
                    "{} events fetched for {} whose head seq is {}",
                    events.len(),
                    head.author,
                    head.seq
                ),
                "every event from seq 1 through the head (EVT-028)",
            );
        }
        let mut prev = String::new();
        for (i, signed) in events.iter().enumerate() {
            let Ok(event) = ev::Event::decode(signed.event.as_slice()) else {
                return fail(format!("event {} does not decode", i + 1), "an Event");
            };
            if event.seq != i as u64 + 1 || event.author != head.author || event.prev != prev {
                return fail(
                    format!(
                        "event {} has author {}, seq {}, prev {:?}",
                        i + 1,
                        event.author,
                        event.seq,
                        event.prev
                    ),
                    format!("author {}, seq {}, prev {prev:?}", head.author, i + 1),
                );
            }
            if verify_envelope(&author, Domain::Event, &signed.event, &signed.signature).is_err() {
                return fail(
                    format!(
                        "the signature of {}'s seq {} does not verify",
                        head.author, event.seq
                    ),
                    "the author's signature in domain `event`",
                );
            }
            prev = cid(&signed.encode_to_vec());
        }
        if prev != head.id {
            return fail(
                format!("the last fetched event of {} has id {prev}", head.author),
                format!("the head's id {}", head.id),
            );
        }
    }
    Outcome::Pass
}

/// The caller's `community.member.joined` redeeming the invite the log holds
/// for it (EVT-046), or `None` when the log holds none.
fn join_event(keys: &Keys, logs: &[Fetched], community: &str) -> Option<ev::SignedEvent> {
    let me = keys.caller.node_id().to_string();
    let mut lamport = 0;
    let mut invite = None;
    for signed in logs.iter().flat_map(|l| &l.events) {
        let Ok(event) = ev::Event::decode(signed.event.as_slice()) else {
            continue;
        };
        lamport = lamport.max(event.lamport);
        if event.r#type == "community.member.invited"
            && cm::MemberInvitedEvent::decode(event.payload.as_slice())
                .is_ok_and(|i| i.invitee_node_id == me)
        {
            invite = Some(cid(&signed.encode_to_vec()));
        }
    }
    let joined = cm::MemberJoinedEvent {
        invite_event_id: invite?,
        node_manifest: Some(seal_node_manifest(
            &keys.caller,
            NodeManifest::default(),
            Timestamp::now(),
        )),
    };
    Some(signed_event_by(
        &keys.caller,
        community,
        "community.member.joined",
        lamport + 1,
        joined.encode_to_vec(),
    ))
}

fn signed_event_by(
    key: &SecretKey,
    community: &str,
    kind: &str,
    lamport: u64,
    payload: Vec<u8>,
) -> ev::SignedEvent {
    let event = ev::Event {
        schema_version: 1,
        community: community.to_string(),
        author: key.node_id().to_string(),
        seq: 1,
        prev: String::new(),
        lamport,
        wall_clock: Some(Timestamp::now()),
        r#type: kind.to_string(),
        payload,
    }
    .encode_to_vec();
    ev::SignedEvent {
        signature: sign_envelope(key, Domain::Event, &event).to_vec(),
        event,
    }
}

async fn push(
    target: &Target,
    keys: &Keys,
    events: Vec<ev::SignedEvent>,
) -> Result<ev::SyncPushOutput, Outcome> {
    let req = ev::SyncPushRequest {
        params: None,
        input: Some(ev::SyncPushInput { events }),
    };
    run::unary::<_, ev::SyncPushResponse>(target, &keys.caller, "event.sync.push", &req)
        .await
        .map(|r| r.output.unwrap_or_default())
        .map_err(|e| fail(e, "an event.sync.push response"))
}

/// The caller, invited by the target's operator, redeems its invite by
/// pushing its own `community.member.joined`, which is stored. Then pushing
/// the target's own log back yields only duplicates; a copy with a broken
/// signature is refused `invalid_signature`; an event of an author the
/// community never admitted is refused `unknown_author`.
pub async fn push_sorts_offers(target: &Target, keys: &Keys, pre: &Preflight) -> Outcome {
    let logs = match fetch_all(target, keys, pre).await {
        Ok(l) => l,
        Err(o) => return o,
    };
    let mine: Vec<ev::SignedEvent> = logs.iter().flat_map(|l| l.events.clone()).collect();
    let Some(first) = mine.first() else {
        return fail("an empty log", "at least one event");
    };
    let community = ev::Event::decode(first.event.as_slice())
        .map(|e| e.community)
        .unwrap_or_default();
    let me = keys.caller.node_id().to_string();
    if !logs.iter().any(|l| l.head.author == me) {
        let Some(join) = join_event(keys, &logs, &community) else {
            return Outcome::Skip(
                "caller_not_invited: the log holds no invite for the runner's caller".into(),
            );
        };
        match push(target, keys, vec![join]).await {
            Ok(out) if out.accepted == 1 && out.rejected.is_empty() => {}
            Ok(out) => {
                return fail(
                    format!(
                        "the join: accepted {}, rejected {:?}",
                        out.accepted, out.rejected
                    ),
                    "the invitee's own community.member.joined stored (EVT-031, EVT-046)",
                );
            }
            Err(o) => return o,
        }
    }
    let mut tampered = first.clone();
    if let Some(b) = tampered.signature.first_mut() {
        *b ^= 1;
    }
    let stranger = signed_event_by(
        &keys.stranger,
        &community,
        "market.post.created",
        1,
        Vec::new(),
    );
    let out = match push(target, keys, mine.clone()).await {
        Ok(out) => out,
        Err(o) => return o,
    };
    if out.accepted != 0 || out.duplicates as usize != mine.len() || !out.rejected.is_empty() {
        return fail(
            format!(
                "accepted {}, duplicates {}, {} rejected",
                out.accepted,
                out.duplicates,
                out.rejected.len()
            ),
            format!(
                "accepted 0, duplicates {}, none rejected (duplicates are no-ops)",
                mine.len()
            ),
        );
    }
    for (offer, reason) in [
        (tampered, ev::SyncRejectReason::InvalidSignature),
        (stranger, ev::SyncRejectReason::UnknownAuthor),
    ] {
        let id = cid(&offer.encode_to_vec());
        let out = match push(target, keys, vec![offer]).await {
            Ok(out) => out,
            Err(o) => return o,
        };
        let got: Vec<String> = out
            .rejected
            .iter()
            .map(|r| {
                format!(
                    "{} {:?}",
                    r.id,
                    ev::SyncRejectReason::try_from(r.reason).unwrap_or_default()
                )
            })
            .collect();
        if out.accepted != 0
            || out.rejected.len() != 1
            || out.rejected[0].id != id
            || out.rejected[0].reason != reason as i32
        {
            return fail(
                format!("accepted {}, rejected [{}]", out.accepted, got.join(", ")),
                format!("accepted 0, rejected [{id} {reason:?}]"),
            );
        }
    }
    Outcome::Pass
}
