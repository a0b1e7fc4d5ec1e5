//! The event log on its own: ingest checks (EVT-018), membership and
//! revocation folds, equivocation, restarts, snapshots and a crash-safety
//! run that kills a writer process with SIGKILL.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use prost::Message;

use hearthnet_node::events::{Durability, EventLog, Outcome};
use hearthnet_sdk::identity::{NodeId, SecretKey};
use hearthnet_sdk::proto::hearthnet::community::v1 as cm;
use hearthnet_sdk::proto::hearthnet::event::v1::{Event, SignedEvent, SyncRejectReason};
use hearthnet_sdk::proto::hearthnet::identity::v1::{CommunityPolicy, MemberLevel, NodeManifest};
use hearthnet_sdk::proto::hearthnet::market::v1 as market;
use hearthnet_sdk::signing::{self, Domain};
use hearthnet_sdk::wkt::Timestamp;

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

/// A hand-made signed event.
struct Author {
    key: SecretKey,
    community: String,
    seq: u64,
    prev: String,
    lamport: u64,
}

impl Author {
    fn new(n: u8, community: &str) -> Self {
        Self {
            key: key(n),
            community: community.to_string(),
            seq: 0,
            prev: String::new(),
            lamport: 0,
        }
    }

    fn id(&self) -> String {
        self.key.node_id().to_string()
    }

    /// Signs the next event of this author at Lamport time `lamport`
    /// (0 = previous + 1).
    fn next(&mut self, ty: &str, payload: Vec<u8>, lamport: u64) -> Vec<u8> {
        self.seq += 1;
        self.lamport = if lamport == 0 {
            self.lamport + 1
        } else {
            lamport
        };
        let raw = sign_event(
            &self.key,
            &Event {
                schema_version: 1,
                community: self.community.clone(),
                author: self.id(),
                seq: self.seq,
                prev: self.prev.clone(),
                lamport: self.lamport,
                wall_clock: Some(Timestamp::now()),
                r#type: ty.to_string(),
                payload,
            },
        );
        self.prev = cid(&raw);
        raw
    }
}

fn sign_event(key: &SecretKey, ev: &Event) -> Vec<u8> {
    let event = ev.encode_to_vec();
    let signature = signing::sign_envelope(key, Domain::Event, &event).to_vec();
    SignedEvent { event, signature }.encode_to_vec()
}

fn cid(raw: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(raw).to_hex())
}

fn post(title: &str) -> Vec<u8> {
    market::PostCreatedEvent {
        client_id: title.to_string(),
        category: market::PostCategory::Offer as i32,
        title: title.to_string(),
        body: String::new(),
        location: None,
        tags: vec![],
        ttl_seconds: 3600,
    }
    .encode_to_vec()
}

fn created(policy: CommunityPolicy) -> Vec<u8> {
    cm::CommunityCreatedEvent {
        name: "test".into(),
        founder_node_id: String::new(),
        policy: Some(policy),
    }
    .encode_to_vec()
}

fn invited(who: &str) -> Vec<u8> {
    cm::MemberInvitedEvent {
        invitee_node_id: who.to_string(),
        display_name: String::new(),
        initial_level: MemberLevel::Member as i32,
        expires_at: Some(Timestamp {
            seconds: Timestamp::now().seconds + 3600,
            nanos: 0,
        }),
    }
    .encode_to_vec()
}

fn joined(key: &SecretKey, invite_id: &str) -> Vec<u8> {
    let manifest =
        hearthnet_sdk::records::seal_node_manifest(key, NodeManifest::default(), Timestamp::now());
    cm::MemberJoinedEvent {
        invite_event_id: invite_id.to_string(),
        node_manifest: Some(manifest),
    }
    .encode_to_vec()
}

/// A log held by key 9 (an observer that is neither root nor member).
fn observer(dir: &std::path::Path, community: &str) -> EventLog {
    let log = EventLog::open(dir, Durability::Process, Arc::new(key(9)), community, "x").unwrap();
    log.start();
    log
}

fn outcome(log: &EventLog, raw: Vec<u8>) -> Outcome {
    log.ingest(vec![raw]).unwrap().outcomes[0].1
}

/// Root (1) founds, invites 2, and 2 joins: returns the authors and events.
fn founded(policy: CommunityPolicy) -> (Author, Author, Vec<Vec<u8>>) {
    let community = key(1).node_id().to_string();
    let mut root = Author::new(1, &community);
    let mut member = Author::new(2, &community);
    let c = root.next("community.created", created(policy), 0);
    let i = root.next("community.member.invited", invited(&member.id()), 0);
    let j = member.next("community.member.joined", joined(&key(2), &cid(&i)), 3);
    (root, member, vec![c, i, j])
}

#[test]
fn out_of_order_and_duplicates_converge_to_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let (mut root, mut member, mut evs) = founded(CommunityPolicy::default());
    for n in 0..5 {
        evs.push(root.next("market.post.created", post(&format!("r{n}")), 0));
        evs.push(member.next("market.post.created", post(&format!("m{n}")), 0));
    }
    let log = observer(dir.path(), &root.id());
    // Deliver in reverse, with duplicates: everything held aside is stored
    // once the gap closes.
    let mut reversed = evs.clone();
    reversed.reverse();
    let report = log.ingest(reversed).unwrap();
    assert_eq!(report.stored as usize, evs.len());
    let report = log.ingest(evs.clone()).unwrap();
    assert!(
        report
            .outcomes
            .iter()
            .all(|(_, o)| *o == Outcome::Duplicate)
    );
    assert_eq!(log.len().unwrap() as usize, evs.len());
    assert_eq!(log.verify_stored().unwrap() as usize, evs.len());
    // Same set and same log order as in-order delivery.
    let dir2 = tempfile::tempdir().unwrap();
    let log2 = observer(dir2.path(), &root.id());
    for e in &evs {
        assert_eq!(outcome(&log2, e.clone()), Outcome::Accepted);
    }
    assert_eq!(log.ids().unwrap(), log2.ids().unwrap());
    assert_eq!(log.membership(), log2.membership());
    assert!(log.membership().is_member(&member.id()));
}

#[test]
fn a_gap_is_reported_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut root, _, evs) = founded(CommunityPolicy::default());
    let log = observer(dir.path(), &root.id());
    log.ingest(evs[..1].to_vec()).unwrap();
    let _skipped = root.next("market.post.created", post("a"), 0);
    let _skipped2 = root.next("market.post.created", post("b"), 0);
    let late = root.next("market.post.created", post("c"), 0);
    let report = log.ingest(vec![late]).unwrap();
    assert_eq!(
        report.outcomes[0].1,
        Outcome::Rejected(SyncRejectReason::OutOfOrder)
    );
    assert_eq!(report.missing, vec![(root.id(), 2, 4)]);
}

#[test]
fn forged_malformed_and_foreign_events_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (root, mut member, evs) = founded(CommunityPolicy::default());
    let log = observer(dir.path(), &root.id());
    log.ingest(evs).unwrap();
    let before = log.ids().unwrap();

    // A flipped signature bit.
    let good = member.next("market.post.created", post("x"), 0);
    let mut se = SignedEvent::decode(good.as_slice()).unwrap();
    se.signature[3] ^= 1;
    assert_eq!(
        outcome(&log, se.encode_to_vec()),
        Outcome::Rejected(SyncRejectReason::InvalidSignature)
    );
    // The author forged by another key.
    let mut ev = Event::decode(
        SignedEvent::decode(good.as_slice())
            .unwrap()
            .event
            .as_slice(),
    )
    .unwrap();
    ev.payload = post("forged");
    assert_eq!(
        outcome(&log, sign_event(&key(7), &ev)),
        Outcome::Rejected(SyncRejectReason::InvalidSignature)
    );
    // Garbage, a non-canonical layout, and a huge event.
    for garbage in [
        vec![0xff, 0x00, 0x13],
        [good.clone(), vec![0x18, 0x01]].concat(),
        vec![0x0a; 70_000],
    ] {
        assert_eq!(
            outcome(&log, garbage),
            Outcome::Rejected(SyncRejectReason::Malformed)
        );
    }
    // Another community.
    let mut stranger = Author::new(5, &key(5).node_id().to_string());
    let foreign = stranger.next("community.created", created(CommunityPolicy::default()), 0);
    assert_eq!(
        outcome(&log, foreign),
        Outcome::Rejected(SyncRejectReason::WrongCommunity)
    );
    // An author nobody invited.
    let mut intruder = Author::new(6, &root.id());
    let first = intruder.next("market.post.created", post("spam"), 10);
    assert_eq!(
        outcome(&log, first),
        Outcome::Rejected(SyncRejectReason::UnknownAuthor)
    );
    assert_eq!(log.ids().unwrap(), before);
    assert_eq!(log.verify_stored().unwrap() as usize, before.len());
    // The good event is still accepted afterwards.
    let good_id = cid(&good);
    assert_eq!(outcome(&log, good), Outcome::Accepted);
    // A payload that is not its type's message.
    let bad_payload = member.next("market.post.created", vec![0xff, 0xff, 0xff], 0);
    assert_eq!(
        outcome(&log, bad_payload),
        Outcome::Rejected(SyncRejectReason::Malformed)
    );
    // A wall clock far ahead (EVT-024).
    let mut ahead = Event::decode(
        SignedEvent::decode(member.next("market.post.created", post("t"), 0).as_slice())
            .unwrap()
            .event
            .as_slice(),
    )
    .unwrap();
    ahead.seq = 3;
    ahead.prev = good_id;
    ahead.wall_clock = Some(Timestamp {
        seconds: Timestamp::now().seconds + 3600,
        nanos: 0,
    });
    assert_eq!(
        outcome(&log, sign_event(&key(2), &ahead)),
        Outcome::Rejected(SyncRejectReason::Future)
    );
    assert_eq!(log.ids().unwrap().len(), before.len() + 1);
}

#[test]
fn equivocation_is_detected_kept_as_proof_and_voids_the_suffix() {
    let dir = tempfile::tempdir().unwrap();
    let (root, mut member, evs) = founded(CommunityPolicy::default());
    let log = observer(dir.path(), &root.id());
    log.ingest(evs).unwrap();
    let fork = Author {
        key: key(2),
        community: member.community.clone(),
        seq: member.seq,
        prev: member.prev.clone(),
        lamport: member.lamport,
    };
    let a = member.next("market.post.created", post("honest"), 0);
    let mut fork = fork;
    let b = fork.next("market.post.created", post("twin"), 0);
    assert_eq!(outcome(&log, a), Outcome::Accepted);
    assert_eq!(
        outcome(&log, b),
        Outcome::Rejected(SyncRejectReason::Equivocation)
    );
    let proofs = log.proofs();
    assert_eq!(proofs.len(), 1);
    // A second log accepts the proof after verifying it, and refuses a fake.
    let dir2 = tempfile::tempdir().unwrap();
    let other = observer(dir2.path(), &root.id());
    assert!(other.add_proof(&proofs[0]));
    let mut fake = proofs[0].clone();
    fake.second = fake.first.clone();
    let dir3 = tempfile::tempdir().unwrap();
    assert!(!observer(dir3.path(), &root.id()).add_proof(&fake));
    // Proofs survive a restart.
    drop(log);
    let log = observer(dir.path(), &root.id());
    assert_eq!(log.proofs().len(), 1);
}

#[test]
fn a_revoked_members_later_events_are_void_but_stored() {
    let dir = tempfile::tempdir().unwrap();
    let policy = CommunityPolicy {
        min_signatures_to_revoke: 1,
        ..Default::default()
    };
    let (mut root, mut member, mut evs) = founded(policy);
    evs.push(member.next("market.post.created", post("before"), 0));
    let signed = cm::RevokeInput {
        target_node_id: member.id(),
        reason: cm::RevokeReason::Compromised as i32,
        ..Default::default()
    }
    .encode_to_vec();
    let sig = signing::sign_envelope(&key(1), Domain::CommunityCosign, &signed).to_vec();
    let revoke = cm::MemberRevokedEvent {
        target_node_id: member.id(),
        reason: cm::RevokeReason::Compromised as i32,
        co_signers: vec![cm::CoSignature {
            node_id: root.id(),
            signature: sig,
        }],
    };
    evs.push(root.next("community.member.revoked", revoke.encode_to_vec(), 10));
    // Same Lamport time as the revocation: revoke wins the tie (EVT-053).
    evs.push(member.next("market.post.created", post("tie"), 10));
    evs.push(member.next("market.post.created", post("after"), 0));
    let log = observer(dir.path(), &root.id());
    let report = log.ingest(evs.clone()).unwrap();
    assert_eq!(
        report.stored as usize,
        evs.len(),
        "void events are still stored"
    );
    let m = log.membership();
    assert!(m.is_revoked(&member.id()));
    assert!(!m.is_member(&member.id()));
    assert_eq!(m.revoked_at_lamport(&member.id()), Some(10));
    // The bus trust source refuses the revoked node.
    use hearthnet_node::bus::TrustSource;
    let id: NodeId = member.id().parse().unwrap();
    assert!(log.is_revoked(&id));
    assert!(log.trust(&id).is_none());
}

#[test]
fn lamport_never_goes_backwards_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (root, mut member, evs) = founded(CommunityPolicy::default());
    let log = observer(dir.path(), &root.id());
    log.ingest(evs).unwrap();
    log.ingest(vec![member.next("market.post.created", post("far"), 500)])
        .unwrap();
    assert_eq!(log.lamport(), 500);
    drop(log);
    let log = observer(dir.path(), &root.id());
    assert_eq!(log.lamport(), 500);
}

#[test]
fn a_snapshot_restores_the_same_views_as_a_full_fold() {
    let dir = tempfile::tempdir().unwrap();
    let (mut root, mut member, evs) = founded(CommunityPolicy::default());
    let log = observer(dir.path(), &root.id());
    log.ingest(evs).unwrap();
    for n in 0..50 {
        log.ingest(vec![member.next(
            "market.post.created",
            post(&format!("p{n}")),
            0,
        )])
        .unwrap();
    }
    assert!(log.snapshot_now().unwrap());
    // More events after the cut.
    for n in 0..5 {
        log.ingest(vec![root.next(
            "market.post.created",
            post(&format!("q{n}")),
            0,
        )])
        .unwrap();
    }
    let full = log.membership();
    drop(log);
    let restored = observer(dir.path(), &root.id());
    assert_eq!(restored.membership(), full);
    assert_eq!(restored.verify_stored().unwrap(), 3 + 50 + 5);
}

/// The writer run by `crash_safety_under_sigkill`: appends events forever
/// and prints `ACK <id>` after each append returns.
#[test]
#[ignore = "child process of crash_safety_under_sigkill"]
fn crash_child() {
    let Ok(dir) = std::env::var("HN_CRASH_DIR") else {
        return;
    };
    let k = key(1);
    let community = k.node_id().to_string();
    let log = EventLog::open(
        std::path::Path::new(&dir),
        Durability::Process,
        Arc::new(k),
        &community,
        "crash",
    )
    .unwrap();
    log.start();
    let mut n = 0u64;
    loop {
        n += 1;
        let a = log
            .append("market.post.created", post(&format!("crash-{n}")))
            .unwrap();
        println!("ACK {}", a.id);
    }
}

#[test]
fn crash_safety_under_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: Vec<String> = Vec::new();
    let kills = 20;
    for round in 0..kills {
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("HN_CRASH_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // Kill after a pseudo-random number of acknowledged appends.
        let target = 1 + (round * 37 + 11) % 120;
        let mut seen = 0;
        while seen < target {
            let line = lines.next().expect("child ended").unwrap();
            if let Some(id) = line.strip_prefix("ACK ") {
                acked.push(id.to_string());
                seen += 1;
            }
        }
        // SIGKILL, mid-append most of the time.
        child.kill().unwrap();
        // Lines already written before the kill are acknowledged too.
        for line in lines.map_while(Result::ok) {
            if let Some(id) = line.strip_prefix("ACK ") {
                acked.push(id.to_string());
            }
        }
        let _ = child.wait();
        let k = key(1);
        let community = k.node_id().to_string();
        let log = EventLog::open(
            dir.path(),
            Durability::Process,
            Arc::new(k),
            &community,
            "crash",
        )
        .unwrap();
        log.start();
        for id in &acked {
            assert!(
                log.get(id).is_some(),
                "round {round}: acknowledged {id} lost"
            );
        }
        let n = log.verify_stored().unwrap();
        assert!(
            n as usize > acked.len(),
            "round {round}: {n} stored, {} acked",
            acked.len()
        );
    }
    assert!(acked.len() >= kills as usize);
}
