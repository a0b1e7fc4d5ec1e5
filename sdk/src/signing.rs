//! Domain-separated signing inputs (DESIGN.md §6, decision 0007).
//!
//! HearthNet signs bytes, never re-encoded structures. A signing input is
//!
//! ```text
//! "HEARTHNET-SIG-V1" 0x00                      17 bytes, fixed
//! u8 len(domain) || domain                     ASCII, e.g. "bus.call"
//! u32be n || n × (u32be len(field) || field)   the domain's fields, in order
//! ```
//!
//! and the Ed25519 signature (RFC 8032, verified with `verify_strict`) covers
//! exactly those bytes. Payloads enter as the BLAKE3 hash of the exact bytes
//! sent, so protobuf and JSON payloads verify alike in every language.
//! `protocol/vectors/signing/` fixes the layout with test vectors.

use crate::identity::{NodeId, SecretKey};

/// The fixed prefix of every signing input.
pub const MAGIC: &[u8; 17] = b"HEARTHNET-SIG-V1\0";

/// What a signature is for. Each domain has a fixed list of fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Domain {
    /// A bus call (`CallRequest`): see [`call_fields`].
    BusCall,
    /// The final `done` frame of a stream: request id, signer, frame count, transcript hash.
    StreamDone,
    /// A node manifest envelope.
    NodeManifest,
    /// A community manifest envelope.
    CommunityManifest,
    /// An invite.
    Invite,
    /// A capability token (M16).
    CapabilityToken,
    /// A community log event.
    Event,
    /// A federation manifest.
    FederationManifest,
    /// An evidence claim.
    Claim,
    /// An attestation of a claim.
    Attestation,
    /// A signed batch of audit records.
    AuditBatch,
    /// A conformance report.
    ConformanceReport,
    /// A co-signature on a community change (`RevokeInput` with `co_signers` empty; decision 0039).
    CommunityCosign,
    /// A federation proposal (`FederationProposal`, `proposer_signature` unset; decision 0036).
    FederationProposal,
    /// A co-signature on a federation change (decision 0036).
    FederationCosign,
    /// A federated-learning round manifest (decision 0036).
    FedlearnRound,
    /// A federated-learning diff: two fields, the round id and BLAKE3 of the `DiffFrame` (decision 0036).
    FedlearnDiff,
    /// A dispute of a claim (decision 0036).
    EvidenceDispute,
    /// A civil-defence role certificate (decision 0036).
    CivdefRoleCertificate,
    /// A civil-defence role revocation (decision 0036).
    CivdefRoleRevoke,
    /// A civil-defence alert (decision 0036).
    CivdefAlert,
    /// An acknowledgement of an alert (decision 0036).
    CivdefAck,
    /// One civil-defence audit record (decision 0036).
    CivdefAuditRecord,
    /// A DHT record (decision 0036).
    DhtValue,
    /// A protocol registry announcement (decision 0036).
    RegistryEntry,
    /// A relay's endorsement of its next key (decision 0036).
    RelayKeyEndorsement,
    /// A snapshot of the community log's views (decision 0050).
    EventSnapshot,
    /// An E2E signed prekey (decision 0065).
    E2eSignedPrekey,
    /// An E2E group message: two fields, the AAD and BLAKE3 of the ciphertext (decision 0066).
    E2eGroupMessage,
}

impl Domain {
    /// Every domain.
    pub const ALL: [Domain; 29] = [
        Domain::BusCall,
        Domain::StreamDone,
        Domain::NodeManifest,
        Domain::CommunityManifest,
        Domain::Invite,
        Domain::CapabilityToken,
        Domain::Event,
        Domain::FederationManifest,
        Domain::Claim,
        Domain::Attestation,
        Domain::AuditBatch,
        Domain::ConformanceReport,
        Domain::CommunityCosign,
        Domain::FederationProposal,
        Domain::FederationCosign,
        Domain::FedlearnRound,
        Domain::FedlearnDiff,
        Domain::EvidenceDispute,
        Domain::CivdefRoleCertificate,
        Domain::CivdefRoleRevoke,
        Domain::CivdefAlert,
        Domain::CivdefAck,
        Domain::CivdefAuditRecord,
        Domain::DhtValue,
        Domain::RegistryEntry,
        Domain::RelayKeyEndorsement,
        Domain::EventSnapshot,
        Domain::E2eSignedPrekey,
        Domain::E2eGroupMessage,
    ];

    /// The ASCII name written into the signing input.
    pub fn name(self) -> &'static str {
        match self {
            Domain::BusCall => "bus.call",
            Domain::StreamDone => "bus.stream.done",
            Domain::NodeManifest => "node.manifest",
            Domain::CommunityManifest => "community.manifest",
            Domain::Invite => "community.invite",
            Domain::CapabilityToken => "auth.token",
            Domain::Event => "event",
            Domain::FederationManifest => "federation.manifest",
            Domain::Claim => "evidence.claim",
            Domain::Attestation => "evidence.attestation",
            Domain::AuditBatch => "civdef.audit.batch",
            Domain::ConformanceReport => "conformance.report",
            Domain::CommunityCosign => "community.cosign",
            Domain::FederationProposal => "federation.proposal",
            Domain::FederationCosign => "federation.cosign",
            Domain::FedlearnRound => "fedlearn.round",
            Domain::FedlearnDiff => "fedlearn.diff",
            Domain::EvidenceDispute => "evidence.dispute",
            Domain::CivdefRoleCertificate => "civdef.role.certificate",
            Domain::CivdefRoleRevoke => "civdef.role.revoke",
            Domain::CivdefAlert => "civdef.alert",
            Domain::CivdefAck => "civdef.ack",
            Domain::CivdefAuditRecord => "civdef.audit.record",
            Domain::DhtValue => "dht.value",
            Domain::RegistryEntry => "protocol.registry.entry",
            Domain::RelayKeyEndorsement => "relay.key.endorsement",
            Domain::EventSnapshot => "event.snapshot",
            Domain::E2eSignedPrekey => "e2e.signed_prekey",
            Domain::E2eGroupMessage => "e2e.group.message",
        }
    }

    /// Looks a domain up by name.
    pub fn from_name(name: &str) -> Option<Domain> {
        Domain::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// Builds the signing input for a domain and its fields.
pub fn signing_input(domain: Domain, fields: &[&[u8]]) -> Vec<u8> {
    let name = domain.name().as_bytes();
    let mut out = Vec::with_capacity(
        MAGIC.len() + 1 + name.len() + 4 + fields.iter().map(|f| 4 + f.len()).sum::<usize>(),
    );
    out.extend_from_slice(MAGIC);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&(fields.len() as u32).to_be_bytes());
    for f in fields {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// The signing input of an envelope: one field, the BLAKE3 hash of the payload bytes.
pub fn envelope_input(domain: Domain, payload: &[u8]) -> Vec<u8> {
    signing_input(domain, &[blake3::hash(payload).as_bytes()])
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The signature is not 64 bytes.
    #[error("a signature is 64 bytes, got {0}")]
    BadLength(usize),
    /// The signature does not verify for this key, domain and input (also:
    /// non-canonical S, small-order R).
    #[error("signature does not verify")]
    BadSignature,
}

/// Signs a signing input.
pub fn sign(key: &SecretKey, domain: Domain, fields: &[&[u8]]) -> [u8; 64] {
    key.sign_raw(&signing_input(domain, fields))
}

/// Verifies a signature over a domain's fields with `verify_strict`.
pub fn verify(
    signer: &NodeId,
    domain: Domain,
    fields: &[&[u8]],
    signature: &[u8],
) -> Result<(), VerifyError> {
    verify_input(signer, &signing_input(domain, fields), signature)
}

/// Verifies a signature over a ready signing input.
pub fn verify_input(signer: &NodeId, input: &[u8], signature: &[u8]) -> Result<(), VerifyError> {
    let bytes: [u8; 64] = signature
        .try_into()
        .map_err(|_| VerifyError::BadLength(signature.len()))?;
    let sig = ed25519_dalek::Signature::from_bytes(&bytes);
    signer
        .verifying_key()
        .verify_strict(input, &sig)
        .map_err(|_| VerifyError::BadSignature)
}

/// Verifies many envelopes at once (Ed25519 batch verification: one
/// multiscalar multiplication; all-or-nothing). On failure, verify one by one
/// to find the culprit. Weak keys are refused by [`NodeId`] already.
pub fn verify_envelopes_batch(items: &[(NodeId, Domain, &[u8], &[u8])]) -> Result<(), VerifyError> {
    let inputs: Vec<Vec<u8>> = items
        .iter()
        .map(|(_, d, p, _)| envelope_input(*d, p))
        .collect();
    let mut sigs = Vec::with_capacity(items.len());
    for (_, _, _, s) in items {
        let bytes: [u8; 64] = (*s)
            .try_into()
            .map_err(|_| VerifyError::BadLength(s.len()))?;
        sigs.push(ed25519_dalek::Signature::from_bytes(&bytes));
    }
    let keys: Vec<ed25519_dalek::VerifyingKey> =
        items.iter().map(|(k, ..)| k.verifying_key()).collect();
    let msgs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    ed25519_dalek::verify_batch(&msgs, &sigs, &keys).map_err(|_| VerifyError::BadSignature)
}

/// Signs an envelope payload (the exact bytes that travel).
pub fn sign_envelope(key: &SecretKey, domain: Domain, payload: &[u8]) -> [u8; 64] {
    key.sign_raw(&envelope_input(domain, payload))
}

/// Verifies an envelope payload's signature.
pub fn verify_envelope(
    signer: &NodeId,
    domain: Domain,
    payload: &[u8],
    signature: &[u8],
) -> Result<(), VerifyError> {
    verify_input(signer, &envelope_input(domain, payload), signature)
}

/// The fields of a bus call's signing input, in order: capability, minimum
/// version, request id, caller, community (UTF-8), timestamp (i64be seconds ||
/// u32be nanos), encoding (u32be enum number), schema hash, token (UTF-8),
/// BLAKE3 of the payload bytes.
pub fn call_fields(call: &crate::proto::hearthnet::bus::v1::CallRequest) -> Vec<Vec<u8>> {
    let ts = call.timestamp.unwrap_or_default();
    let mut time = Vec::with_capacity(12);
    time.extend_from_slice(&ts.seconds.to_be_bytes());
    time.extend_from_slice(&(ts.nanos as u32).to_be_bytes());
    vec![
        call.capability.as_bytes().to_vec(),
        call.min_version.as_bytes().to_vec(),
        call.request_id.as_bytes().to_vec(),
        call.caller.as_bytes().to_vec(),
        call.community.as_bytes().to_vec(),
        time,
        (call.encoding as u32).to_be_bytes().to_vec(),
        call.schema_hash.as_bytes().to_vec(),
        call.token.as_bytes().to_vec(),
        blake3::hash(&call.payload).as_bytes().to_vec(),
    ]
}

fn refs(v: &[Vec<u8>]) -> Vec<&[u8]> {
    v.iter().map(Vec::as_slice).collect()
}

/// Signs a call in place (sets `caller` to the key's NodeID and `signature`).
pub fn sign_call(key: &SecretKey, call: &mut crate::proto::hearthnet::bus::v1::CallRequest) {
    call.caller = key.node_id().to_string();
    let fields = call_fields(call);
    call.signature = sign(key, Domain::BusCall, &refs(&fields)).to_vec();
}

/// Errors checking a signed call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallAuthError {
    /// `caller` is not a valid full NodeID.
    #[error("bad caller: {0}")]
    BadCaller(#[from] crate::identity::IdError),
    /// The signature does not verify.
    #[error(transparent)]
    Signature(#[from] VerifyError),
}

impl CallAuthError {
    /// The protocol error code for this failure.
    pub fn code(&self) -> crate::proto::hearthnet::common::v1::ErrorCode {
        use crate::proto::hearthnet::common::v1::ErrorCode;
        match self {
            CallAuthError::BadCaller(_) => ErrorCode::BadRequest,
            CallAuthError::Signature(_) => ErrorCode::InvalidSignature,
        }
    }
}

/// Verifies a call's signature against its `caller`; returns the caller.
pub fn verify_call(
    call: &crate::proto::hearthnet::bus::v1::CallRequest,
) -> Result<NodeId, CallAuthError> {
    let caller: NodeId = call.caller.parse()?;
    verify(
        &caller,
        Domain::BusCall,
        &refs(&call_fields(call)),
        &call.signature,
    )?;
    Ok(caller)
}

/// Verifies many calls' signatures at once (Ed25519 batch verification, about
/// twice the throughput of one-by-one checks under load). When the batch
/// fails, each call is checked alone so that only the bad ones fail.
pub fn verify_calls_batch(
    calls: &[&crate::proto::hearthnet::bus::v1::CallRequest],
) -> Vec<Result<NodeId, CallAuthError>> {
    let mut out: Vec<Result<NodeId, CallAuthError>> = Vec::with_capacity(calls.len());
    let mut inputs = Vec::with_capacity(calls.len());
    let mut sigs = Vec::with_capacity(calls.len());
    let mut keys = Vec::with_capacity(calls.len());
    let mut in_batch = Vec::with_capacity(calls.len());
    for (i, call) in calls.iter().enumerate() {
        let caller: Result<NodeId, CallAuthError> =
            call.caller.parse().map_err(CallAuthError::from);
        let sig: Option<[u8; 64]> = call.signature.as_slice().try_into().ok();
        match (caller, sig) {
            (Ok(c), Some(sig)) => {
                keys.push(c.verifying_key());
                sigs.push(ed25519_dalek::Signature::from_bytes(&sig));
                inputs.push(signing_input(Domain::BusCall, &refs(&call_fields(call))));
                in_batch.push(i);
                out.push(Ok(c));
            }
            (Err(e), _) => out.push(Err(e)),
            (Ok(_), None) => out.push(Err(CallAuthError::Signature(VerifyError::BadLength(
                call.signature.len(),
            )))),
        }
    }
    if in_batch.is_empty() {
        return out;
    }
    let msgs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    if ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_err() {
        for i in in_batch {
            out[i] = verify_call(calls[i]);
        }
    }
    out
}

/// Running hash of a stream's transcript: for each `data` frame in order,
/// `u64be(seq) || BLAKE3(data)`. The server signs it in the `done` frame.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    hasher: blake3::Hasher,
    frames: u64,
}

impl Transcript {
    /// An empty transcript.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one data frame (its sequence number and exact payload bytes).
    pub fn push(&mut self, seq: u64, data: &[u8]) {
        self.hasher.update(&seq.to_be_bytes());
        self.hasher.update(blake3::hash(data).as_bytes());
        self.frames += 1;
    }

    /// Number of data frames so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The transcript hash.
    pub fn hash(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }

    /// The `done` frame's signing fields: request id, signer NodeID, u64be frame count, transcript hash.
    pub fn done_fields(&self, request_id: &str, signer: &NodeId) -> Vec<Vec<u8>> {
        vec![
            request_id.as_bytes().to_vec(),
            signer.to_string().into_bytes(),
            self.frames.to_be_bytes().to_vec(),
            self.hash().to_vec(),
        ]
    }

    /// Signs the transcript as the server.
    pub fn sign_done(&self, key: &SecretKey, request_id: &str) -> [u8; 64] {
        sign(
            key,
            Domain::StreamDone,
            &refs(&self.done_fields(request_id, &key.node_id())),
        )
    }

    /// Verifies a server's `done` signature over this transcript.
    pub fn verify_done(
        &self,
        signer: &NodeId,
        request_id: &str,
        signature: &[u8],
    ) -> Result<(), VerifyError> {
        verify(
            signer,
            Domain::StreamDone,
            &refs(&self.done_fields(request_id, signer)),
            signature,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::hearthnet::bus::v1::CallRequest;

    #[test]
    fn domains_separate_signatures() {
        let key = SecretKey::from_seed([3; 32]);
        let sig = sign_envelope(&key, Domain::NodeManifest, b"payload");
        assert_eq!(
            verify_envelope(&key.node_id(), Domain::NodeManifest, b"payload", &sig),
            Ok(())
        );
        assert_eq!(
            verify_envelope(&key.node_id(), Domain::Invite, b"payload", &sig),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify_envelope(&key.node_id(), Domain::NodeManifest, b"payloaD", &sig),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify_envelope(&key.node_id(), Domain::NodeManifest, b"payload", &sig[..63]),
            Err(VerifyError::BadLength(63))
        );
        for d in Domain::ALL {
            assert_eq!(Domain::from_name(d.name()), Some(d));
        }
    }

    #[test]
    fn batch_verification_accepts_good_and_refuses_one_bad() {
        let keys: Vec<SecretKey> = (0..8u8).map(|i| SecretKey::from_seed([i; 32])).collect();
        let payloads: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 100]).collect();
        let sigs: Vec<[u8; 64]> = keys
            .iter()
            .zip(&payloads)
            .map(|(k, p)| sign_envelope(k, Domain::Event, p))
            .collect();
        let mut items: Vec<(NodeId, Domain, &[u8], &[u8])> = keys
            .iter()
            .zip(&payloads)
            .zip(&sigs)
            .map(|((k, p), s)| (k.node_id(), Domain::Event, p.as_slice(), s.as_slice()))
            .collect();
        assert_eq!(verify_envelopes_batch(&items), Ok(()));
        items[5].1 = Domain::Claim;
        assert_eq!(
            verify_envelopes_batch(&items),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn calls_sign_and_any_field_change_breaks_them() {
        let key = SecretKey::from_seed([4; 32]);
        let mut call = CallRequest {
            capability: "llm.chat".into(),
            min_version: "1.0".into(),
            request_id: "01J".into(),
            payload: b"{}".to_vec(),
            ..Default::default()
        };
        sign_call(&key, &mut call);
        assert_eq!(verify_call(&call), Ok(key.node_id()));
        let mut tampered = call.clone();
        tampered.min_version = "1.1".into();
        assert!(matches!(
            verify_call(&tampered),
            Err(CallAuthError::Signature(_))
        ));
        let mut tampered = call.clone();
        tampered.payload.push(b' ');
        assert!(matches!(
            verify_call(&tampered),
            Err(CallAuthError::Signature(_))
        ));
        let mut bad = call.clone();
        bad.caller = "nobody".into();
        assert_eq!(
            verify_call(&bad).map_err(|e| e.code()),
            Err(crate::proto::hearthnet::common::v1::ErrorCode::BadRequest)
        );
    }

    #[test]
    fn transcripts_bind_order_and_content() {
        let key = SecretKey::from_seed([5; 32]);
        let mut t = Transcript::new();
        t.push(0, b"a");
        t.push(1, b"b");
        let sig = t.sign_done(&key, "req");
        assert_eq!(t.verify_done(&key.node_id(), "req", &sig), Ok(()));
        assert!(t.verify_done(&key.node_id(), "other", &sig).is_err());
        let mut swapped = Transcript::new();
        swapped.push(0, b"b");
        swapped.push(1, b"a");
        assert!(swapped.verify_done(&key.node_id(), "req", &sig).is_err());
    }

    #[test]
    fn batch_call_verification_finds_the_bad_call() {
        use crate::proto::hearthnet::bus::v1::CallRequest;
        let key = SecretKey::from_seed([3; 32]);
        let mut calls: Vec<CallRequest> = (0..8)
            .map(|i| {
                let mut c = CallRequest {
                    capability: "diag.echo".into(),
                    min_version: "1.0".into(),
                    request_id: format!("{i}"),
                    payload: vec![i as u8; 10],
                    ..Default::default()
                };
                sign_call(&key, &mut c);
                c
            })
            .collect();
        let refs: Vec<&CallRequest> = calls.iter().collect();
        assert!(verify_calls_batch(&refs).iter().all(Result::is_ok));
        calls[5].payload[0] ^= 1;
        calls[2].caller = "ed25519:nope".into();
        calls[6].signature.truncate(10);
        let refs: Vec<&CallRequest> = calls.iter().collect();
        let res = verify_calls_batch(&refs);
        let bad: Vec<usize> = (0..8).filter(|i| res[*i].is_err()).collect();
        assert_eq!(bad, vec![2, 5, 6]);
        assert_eq!(
            res[5].as_ref().expect_err("flipped payload").code(),
            crate::proto::hearthnet::common::v1::ErrorCode::InvalidSignature
        );
    }
}
