//! Invites and manifests: built, signed as envelopes, verified (M01, M13;
//! decisions 0007 and 0037); conformance reports and registry announcements
//! signed and verified (CONF-002, PROTO-005).

use crate::envelope::{self, EnvelopeError};
use crate::identity::{NodeId, SecretKey};
use crate::proto::hearthnet::common::v1::ErrorCode;
use crate::proto::hearthnet::conformance::v1::{ConformanceReport, RunnerSignature};
use crate::proto::hearthnet::identity::v1::{
    CommunityManifest, Invite, MemberLevel, NodeManifest, SignedEnvelope,
};
use crate::proto::hearthnet::protocol::v1::AnnounceRegistryInput;
use crate::signing::{self, Domain};
use crate::wkt::Timestamp;
use prost::Message;

/// URI scheme of invites.
pub const INVITE_SCHEME: &str = "hearthnet://v1/";
/// Longest accepted invite text (QR at ECC level M).
pub const INVITE_MAX_BYTES: usize = crate::constants::INVITE_MAX_BYTES as usize;
/// Default invite lifetime, seconds.
pub const INVITE_TTL_SECONDS: i64 = crate::constants::INVITE_DEFAULT_TTL_SECONDS;
/// Node manifest lifetime, seconds (`MANIFEST_TTL_SECONDS`).
pub const MANIFEST_TTL_SECONDS: i64 = crate::constants::MANIFEST_TTL_SECONDS;
/// How often a node re-issues its manifest, seconds.
pub const MANIFEST_REPUBLISH_INTERVAL_SECONDS: i64 =
    crate::constants::MANIFEST_REPUBLISH_INTERVAL_SECONDS;
/// Accepted clock skew for `issued_at` in the future, seconds.
pub const CLOCK_SKEW_SECONDS: i64 = crate::constants::REPLAY_WINDOW_SECONDS;

/// Why an invite or manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Text, envelope or payload malformed.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// Signature, signer or domain wrong.
    #[error("signature: {0}")]
    Signature(String),
    /// Past its expiry.
    #[error("expired at {expires_at} (now {now})")]
    Expired {
        /// Expiry, Unix seconds.
        expires_at: i64,
        /// Now.
        now: i64,
    },
    /// Times are inconsistent (issued in the future, lifetime too long).
    #[error("bad validity window: {0}")]
    BadTimes(String),
    /// The invite is for another device.
    #[error("invite is for {invitee}, not {us}")]
    InviteeMismatch {
        /// The invite's invitee.
        invitee: String,
        /// Our NodeID.
        us: String,
    },
    /// The signer may not sign this record (e.g. a community manifest not from the root or an anchor).
    #[error("{0} may not sign this record")]
    NotAuthorised(String),
}

impl RecordError {
    /// The protocol error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            RecordError::Malformed(_) | RecordError::BadTimes(_) => ErrorCode::BadRequest,
            RecordError::Signature(_) => ErrorCode::InvalidSignature,
            RecordError::Expired { .. } => ErrorCode::Expired,
            RecordError::InviteeMismatch { .. } | RecordError::NotAuthorised(_) => {
                ErrorCode::Unauthorized
            }
        }
    }
}

fn env_err(e: EnvelopeError) -> RecordError {
    match e {
        EnvelopeError::Decode(m) | EnvelopeError::Malformed(m) => RecordError::Malformed(m),
        EnvelopeError::TooLong { len, max } => {
            RecordError::Malformed(format!("{len} bytes, more than {max}"))
        }
        other => RecordError::Signature(other.to_string()),
    }
}

fn secs(t: &Option<Timestamp>) -> i64 {
    t.map_or(0, |t| t.seconds)
}

/// Signs an invite as its inviter and returns its text form.
pub fn issue_invite(inviter: &SecretKey, mut invite: Invite) -> Result<String, RecordError> {
    invite.inviter_node_id = inviter.node_id().to_string();
    if invite.version == 0 {
        invite.version = 1;
    }
    let payload = prost::Message::encode_to_vec(&invite);
    envelope::sign_text(
        inviter,
        Domain::Invite,
        INVITE_SCHEME,
        &payload,
        INVITE_MAX_BYTES,
    )
    .map_err(|e| RecordError::Malformed(e.to_string()))
}

/// Verifies an invite's signature (against `inviter_node_id`) and expiry.
pub fn verify_invite(text: &str, now: i64) -> Result<(NodeId, Invite), RecordError> {
    let (payload, sig) =
        envelope::from_text(INVITE_SCHEME, text, INVITE_MAX_BYTES).map_err(env_err)?;
    let invite: Invite = prost::Message::decode(payload.as_slice())
        .map_err(|e| RecordError::Malformed(e.to_string()))?;
    let inviter: NodeId = invite
        .inviter_node_id
        .parse()
        .map_err(|e| RecordError::Malformed(format!("inviter: {e}")))?;
    signing::verify_envelope(&inviter, Domain::Invite, &payload, &sig)
        .map_err(|e| RecordError::Signature(e.to_string()))?;
    let exp = secs(&invite.expires_at);
    if now >= exp {
        return Err(RecordError::Expired {
            expires_at: exp,
            now,
        });
    }
    Ok((inviter, invite))
}

/// Verifies an invite and that it is for `us`.
pub fn redeem_invite(text: &str, now: i64, us: &NodeId) -> Result<(NodeId, Invite), RecordError> {
    let (inviter, invite) = verify_invite(text, now)?;
    if invite.invitee_node_id != us.to_string() {
        return Err(RecordError::InviteeMismatch {
            invitee: invite.invitee_node_id,
            us: us.to_string(),
        });
    }
    Ok((inviter, invite))
}

/// Stamps a node manifest (`node_id`, `issued_at` = now, `expires_at` = now +
/// 30 s) and seals it.
pub fn seal_node_manifest(
    key: &SecretKey,
    mut manifest: NodeManifest,
    now: Timestamp,
) -> SignedEnvelope {
    manifest.node_id = key.node_id().to_string();
    if manifest.version == 0 {
        manifest.version = 1;
    }
    manifest.issued_at = Some(now);
    manifest.expires_at = Some(Timestamp {
        seconds: now.seconds + MANIFEST_TTL_SECONDS,
        nanos: now.nanos,
    });
    envelope::seal(key, Domain::NodeManifest, &manifest)
}

/// Verifies a node manifest envelope at `now`: domain and signature, signer =
/// `node_id`, `issued_at` not beyond the clock skew, lifetime at most 30 s, not expired.
pub fn verify_node_manifest(
    env: &SignedEnvelope,
    now: i64,
) -> Result<(NodeId, NodeManifest), RecordError> {
    let (signer, m): (NodeId, NodeManifest) =
        envelope::open(env, Domain::NodeManifest).map_err(env_err)?;
    if m.node_id != signer.to_string() {
        return Err(RecordError::Signature(format!(
            "signed by {signer} but names {}",
            m.node_id
        )));
    }
    let (iat, exp) = (secs(&m.issued_at), secs(&m.expires_at));
    if iat > now + CLOCK_SKEW_SECONDS {
        return Err(RecordError::BadTimes(format!(
            "issued {} s in the future",
            iat - now
        )));
    }
    if exp <= iat || exp - iat > MANIFEST_TTL_SECONDS {
        return Err(RecordError::BadTimes(format!(
            "lifetime {} s (must be 1..={MANIFEST_TTL_SECONDS})",
            exp - iat
        )));
    }
    if now >= exp {
        return Err(RecordError::Expired {
            expires_at: exp,
            now,
        });
    }
    Ok((signer, m))
}

/// Seals a community manifest as the root or an anchor.
pub fn seal_community_manifest(key: &SecretKey, manifest: &CommunityManifest) -> SignedEnvelope {
    envelope::seal(key, Domain::CommunityManifest, manifest)
}

/// Verifies a community manifest: signature, and the signer is the root
/// (`community_id`) or an anchor listed in the manifest.
pub fn verify_community_manifest(
    env: &SignedEnvelope,
) -> Result<(NodeId, CommunityManifest), RecordError> {
    let (signer, m): (NodeId, CommunityManifest) =
        envelope::open(env, Domain::CommunityManifest).map_err(env_err)?;
    let s = signer.to_string();
    let is_root = m.community_id == s;
    let is_anchor = m
        .members
        .iter()
        .any(|x| x.node_id == s && x.level == MemberLevel::Anchor as i32);
    let is_revoked = m.revoked.iter().any(|r| r.node_id == s);
    if !(is_root || is_anchor) || is_revoked {
        return Err(RecordError::NotAuthorised(s));
    }
    Ok((signer, m))
}

/// Signs a conformance report in place as `key` (CONF-002): `signature` names
/// the signer, and `signature.signature` is the `conformance.report` envelope
/// signature over the report's protobuf encoding with that field empty.
/// Returns the signed protobuf bytes and their `blake3:` CID (`report_cid`).
pub fn sign_conformance_report(
    key: &SecretKey,
    report: &mut ConformanceReport,
) -> (Vec<u8>, String) {
    report.signature = Some(RunnerSignature {
        signer: key.node_id().to_string(),
        algorithm: "ed25519".into(),
        signed_at: Some(Timestamp::now()),
        signature: Vec::new(),
    });
    let sig = signing::sign_envelope(key, Domain::ConformanceReport, &report.encode_to_vec());
    if let Some(s) = &mut report.signature {
        s.signature = sig.to_vec();
    }
    let bytes = report.encode_to_vec();
    let cid = format!("blake3:{}", blake3::hash(&bytes).to_hex());
    (bytes, cid)
}

/// Checks a conformance report's signature (CONF-002); returns its CID and
/// signer. The verdict rules are the suite's to check.
pub fn verify_conformance_report(
    report: &ConformanceReport,
) -> Result<(String, NodeId), RecordError> {
    let sig = report
        .signature
        .as_ref()
        .ok_or_else(|| RecordError::Malformed("report has no signature".into()))?;
    let signer: NodeId = sig
        .signer
        .parse()
        .map_err(|e| RecordError::Malformed(format!("signature.signer: {e}")))?;
    let mut unsigned = report.clone();
    if let Some(s) = &mut unsigned.signature {
        s.signature.clear();
    }
    signing::verify_envelope(
        &signer,
        Domain::ConformanceReport,
        &unsigned.encode_to_vec(),
        &sig.signature,
    )
    .map_err(|e| RecordError::Signature(e.to_string()))?;
    let cid = format!("blake3:{}", blake3::hash(&report.encode_to_vec()).to_hex());
    Ok((cid, signer))
}

/// Signs a `protocol.registry.announce` input in place as `key` (PROTO-005:
/// the `protocol.registry.entry` envelope over its protobuf encoding with
/// `signature` empty).
pub fn sign_registry_announce(key: &SecretKey, input: &mut AnnounceRegistryInput) {
    input.signature.clear();
    let sig = signing::sign_envelope(key, Domain::RegistryEntry, &input.encode_to_vec());
    input.signature = sig.to_vec();
}

/// Checks a `protocol.registry.announce` input's signature by `signer` (PROTO-005).
pub fn verify_registry_announce(
    signer: &NodeId,
    input: &AnnounceRegistryInput,
) -> Result<(), RecordError> {
    let mut unsigned = input.clone();
    unsigned.signature.clear();
    signing::verify_envelope(
        signer,
        Domain::RegistryEntry,
        &unsigned.encode_to_vec(),
        &input.signature,
    )
    .map_err(|e| RecordError::Signature(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::hearthnet::common::v1::Endpoint;
    use crate::proto::hearthnet::identity::v1::Member;

    #[test]
    fn invites_verify_redeem_and_refuse() {
        let inviter = SecretKey::from_seed([1; 32]);
        let invitee = SecretKey::from_seed([2; 32]).node_id();
        let now = 1_764_000_000;
        let invite = Invite {
            community_id: SecretKey::from_seed([3; 32]).node_id().to_string(),
            community_name: "Niederrhein Demo".into(),
            invitee_node_id: invitee.to_string(),
            initial_level: MemberLevel::Member as i32,
            bootstrap_endpoints: vec![Endpoint {
                transport: "grpc".into(),
                host: "192.0.2.10".into(),
                port: 7080,
            }],
            expires_at: Some(Timestamp {
                seconds: now + INVITE_TTL_SECONDS,
                nanos: 0,
            }),
            ..Default::default()
        };
        let text = issue_invite(&inviter, invite).expect("fits a QR code");
        assert!(text.len() < INVITE_MAX_BYTES, "{}", text.len());
        let (by, inv) = redeem_invite(&text, now, &invitee).expect("redeems");
        assert_eq!(by, inviter.node_id());
        assert_eq!(inv.community_name, "Niederrhein Demo");
        let other = SecretKey::from_seed([9; 32]).node_id();
        assert_eq!(
            redeem_invite(&text, now, &other)
                .map(|_| ())
                .map_err(|e| e.code()),
            Err(ErrorCode::Unauthorized)
        );
        assert_eq!(
            verify_invite(&text, now + INVITE_TTL_SECONDS)
                .map(|_| ())
                .map_err(|e| e.code()),
            Err(ErrorCode::Expired)
        );
        assert!(matches!(
            verify_invite("hearthnet://v1/AAAA", now),
            Err(RecordError::Malformed(_))
        ));
    }

    #[test]
    fn node_manifests_expire_and_bind_their_signer() {
        let key = SecretKey::from_seed([4; 32]);
        let now = Timestamp {
            seconds: 1_764_000_000,
            nanos: 0,
        };
        let env = seal_node_manifest(
            &key,
            NodeManifest {
                display_name: "garage-pc".into(),
                ..Default::default()
            },
            now,
        );
        let (id, m) = verify_node_manifest(&env, now.seconds + 5).expect("fresh");
        assert_eq!((id, m.display_name.as_str()), (key.node_id(), "garage-pc"));
        assert_eq!(
            verify_node_manifest(&env, now.seconds + 30)
                .map(|_| ())
                .map_err(|e| e.code()),
            Err(ErrorCode::Expired)
        );
        // A manifest naming another node, signed by this key.
        let other = NodeManifest {
            node_id: SecretKey::from_seed([5; 32]).node_id().to_string(),
            issued_at: Some(now),
            expires_at: Some(Timestamp {
                seconds: now.seconds + 30,
                nanos: 0,
            }),
            ..Default::default()
        };
        let forged = envelope::seal(&key, Domain::NodeManifest, &other);
        assert!(matches!(
            verify_node_manifest(&forged, now.seconds),
            Err(RecordError::Signature(_))
        ));
        let long = NodeManifest {
            node_id: key.node_id().to_string(),
            issued_at: Some(now),
            expires_at: Some(Timestamp {
                seconds: now.seconds + 3600,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert!(matches!(
            verify_node_manifest(
                &envelope::seal(&key, Domain::NodeManifest, &long),
                now.seconds
            ),
            Err(RecordError::BadTimes(_))
        ));
    }

    #[test]
    fn community_manifests_need_the_root_or_an_anchor() {
        let root = SecretKey::from_seed([6; 32]);
        let anchor = SecretKey::from_seed([7; 32]);
        let member = SecretKey::from_seed([8; 32]);
        let m = CommunityManifest {
            version: 1,
            community_id: root.node_id().to_string(),
            name: "Nachbarn".into(),
            members: vec![
                Member {
                    node_id: anchor.node_id().to_string(),
                    level: MemberLevel::Anchor as i32,
                    ..Default::default()
                },
                Member {
                    node_id: member.node_id().to_string(),
                    level: MemberLevel::Member as i32,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert!(verify_community_manifest(&seal_community_manifest(&root, &m)).is_ok());
        assert!(verify_community_manifest(&seal_community_manifest(&anchor, &m)).is_ok());
        assert_eq!(
            verify_community_manifest(&seal_community_manifest(&member, &m))
                .map(|_| ())
                .map_err(|e| e.code()),
            Err(ErrorCode::Unauthorized)
        );
    }

    #[test]
    fn reports_and_announcements_sign_and_verify() {
        use crate::proto::hearthnet::protocol::v1::ImplementationDescriptor;
        let key = SecretKey::from_seed([9; 32]);
        let mut report = ConformanceReport {
            schema_version: 1,
            suite_version: "0.2.0".into(),
            passed: 3,
            ..Default::default()
        };
        let (bytes, cid) = sign_conformance_report(&key, &mut report);
        assert_eq!(bytes, report.encode_to_vec());
        assert_eq!(verify_conformance_report(&report), Ok((cid, key.node_id())));
        let mut changed = report.clone();
        changed.passed = 4;
        assert!(matches!(
            verify_conformance_report(&changed),
            Err(RecordError::Signature(_))
        ));
        changed.signature = None;
        assert!(matches!(
            verify_conformance_report(&changed),
            Err(RecordError::Malformed(_))
        ));

        let mut input = AnnounceRegistryInput {
            descriptor: Some(ImplementationDescriptor {
                name: "hearthnet-py".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        sign_registry_announce(&key, &mut input);
        assert_eq!(input.signature.len(), 64);
        assert_eq!(verify_registry_announce(&key.node_id(), &input), Ok(()));
        let other = SecretKey::from_seed([10; 32]).node_id();
        assert!(verify_registry_announce(&other, &input).is_err());
        input.reports.push(Default::default());
        assert!(verify_registry_announce(&key.node_id(), &input).is_err());
    }
}
