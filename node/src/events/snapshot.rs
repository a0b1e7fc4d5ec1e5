//! Snapshots of the views (decision 0050, EVT-055 … EVT-057).
//!
//! A snapshot is a `SignedEnvelope` under the domain `event.snapshot` whose
//! payload is a zstd frame of a `hearthnet.event.v1.Snapshot`. Its views:
//!
//! * `community.membership` — the protocol's `CommunityManifest` at the cut;
//! * `x-hearthnet.membership` — this implementation's full membership state
//!   (invites, used co-signatures; JSON), which the manifest cannot carry;
//! * one entry per registered view that can encode its state.
//!
//! The node keeps its last `SNAPSHOT_KEEP_COUNT` snapshots in the store's
//! meta keyspace (`snap` · cut). On open it restores the newest usable one
//! and folds only the events after the cut; a snapshot is usable when it is
//! signed by this node or the root and every stored event with a Lamport time
//! at or below the cut is covered (EVT-056). Otherwise the views are folded
//! from the start, which gives the same result.

use std::collections::HashMap;

use prost::Message;

use hearthnet_sdk::envelope;
use hearthnet_sdk::identity::NodeId;
use hearthnet_sdk::proto::hearthnet::event::v1::{AuthorHead, Snapshot};
use hearthnet_sdk::proto::hearthnet::identity::v1::SignedEnvelope;
use hearthnet_sdk::signing::Domain;
use hearthnet_sdk::wkt::Timestamp;

use super::store::OrderKey;
use super::{EventError, EventLog, Membership};

const FULL_MEMBERSHIP: &str = "x-hearthnet.membership";

/// Builds a snapshot of the current views, signs it with the node key,
/// stores it and drops the oldest beyond `SNAPSHOT_KEEP_COUNT`. Returns the
/// envelope, or `None` when nothing has been folded yet.
pub fn build(log: &EventLog) -> Result<Option<SignedEnvelope>, EventError> {
    let snap = log.with_fold_covers(|membership, views, watermark, covers| {
        let cut = watermark?;
        let mut map = HashMap::new();
        map.insert(
            "community.membership".to_string(),
            membership.manifest(log.community()).encode_to_vec(),
        );
        map.insert(
            FULL_MEMBERSHIP.to_string(),
            serde_json::to_vec(membership).unwrap_or_default(),
        );
        for v in views {
            let v = v.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(state) = v.encode() {
                map.insert(v.name().to_string(), state);
            }
        }
        let mut covers: Vec<AuthorHead> = covers
            .iter()
            .map(|(author, (seq, id))| AuthorHead {
                author: author.clone(),
                seq: *seq,
                id: id.clone(),
            })
            .collect();
        covers.sort_by(|a, b| a.author.cmp(&b.author));
        Some(Snapshot {
            schema_version: 1,
            community: log.community().to_string(),
            lamport: cut.lamport,
            covers,
            created_at: Some(Timestamp::now()),
            views: map,
        })
    });
    let Some(snap) = snap else { return Ok(None) };
    let packed = zstd::encode_all(snap.encode_to_vec().as_slice(), 3)
        .map_err(|e| EventError::NotAllowed(format!("zstd: {e}")))?;
    let signature =
        hearthnet_sdk::signing::sign_envelope(log.key(), Domain::EventSnapshot, &packed).to_vec();
    let env = SignedEnvelope {
        payload: packed,
        signer: log.node_id().to_string(),
        signature,
        domain: Domain::EventSnapshot.name().to_owned(),
    };
    let mut name = b"snap".to_vec();
    name.extend_from_slice(&snap.lamport.to_be_bytes());
    log.store()
        .meta_put(log.pfx(), &name, &env.encode_to_vec())?;
    let all = log.store().meta_scan(log.pfx(), b"snap")?;
    let keep = hearthnet_sdk::constants::SNAPSHOT_KEEP_COUNT as usize;
    if all.len() > keep {
        for (k, _) in &all[..all.len() - keep] {
            log.store().meta_delete(log.pfx(), k)?;
        }
    }
    Ok(Some(env))
}

/// Opens a snapshot envelope: signature, zstd, protobuf.
pub fn open(env: &SignedEnvelope) -> Option<(NodeId, Snapshot)> {
    let signer = envelope::verify(env, Domain::EventSnapshot).ok()?;
    let limit = 64 * 1024 * 1024;
    let raw = zstd::bulk::decompress(&env.payload, limit).ok()?;
    let snap = Snapshot::decode(raw.as_slice()).ok()?;
    (snap.schema_version == 1).then_some((signer, snap))
}

/// Restores the newest usable snapshot into the log's fold; false when none
/// is usable (the log is then folded from the start).
pub(crate) fn restore_latest(log: &EventLog) -> bool {
    let Ok(all) = log.store().meta_scan(log.pfx(), b"snap") else {
        return false;
    };
    for (_, bytes) in all.iter().rev() {
        let Ok(env) = SignedEnvelope::decode(bytes.as_slice()) else {
            continue;
        };
        let Some((signer, snap)) = open(&env) else {
            continue;
        };
        let signer = signer.to_string();
        if snap.community != log.community()
            || !(signer == log.node_id().to_string() || signer == log.community())
            || !covers_everything(log, &snap)
        {
            continue;
        }
        let Some(full) = snap.views.get(FULL_MEMBERSHIP) else {
            continue;
        };
        let Ok(membership) = serde_json::from_slice::<Membership>(full) else {
            continue;
        };
        let covers = snap
            .covers
            .iter()
            .map(|h| (h.author.clone(), (h.seq, h.id.clone())))
            .collect();
        let watermark = OrderKey {
            lamport: snap.lamport,
            kind: u8::MAX,
            id: [0xff; 32],
        };
        if log.restore_fold(membership, watermark, covers, &snap.views) {
            tracing::info!(cut = snap.lamport, "views restored from snapshot");
            return true;
        }
    }
    false
}

/// EVT-056: every stored event with Lamport ≤ the cut is in `covers`.
fn covers_everything(log: &EventLog, snap: &Snapshot) -> bool {
    let covered: HashMap<&str, u64> = snap
        .covers
        .iter()
        .map(|h| (h.author.as_str(), h.seq))
        .collect();
    for (author, seq, _) in log.heads() {
        let have = covered.get(author.as_str()).copied().unwrap_or(0);
        if seq <= have {
            continue;
        }
        // The first uncovered event must be after the cut.
        match log.chain_lamport(&author, have + 1) {
            Some(l) if l > snap.lamport => {}
            _ => return false,
        }
    }
    true
}
