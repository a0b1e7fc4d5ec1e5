//! Running the suite: the pre-flight (CONF-005), case selection by what the
//! target advertises (CONF-006), each case's call and the checks on what
//! came back.

use std::collections::BTreeMap;

use hearthnet_sdk::identity::{NodeId, SecretKey};
use hearthnet_sdk::proto::hearthnet::auth::v1::{CapabilityToken, TokenScope};
use hearthnet_sdk::proto::hearthnet::bus::v1::{CallRequest, Frame, PayloadEncoding, frame};
use hearthnet_sdk::proto::hearthnet::common::v1::Error as WireError;
use hearthnet_sdk::proto::hearthnet::protocol::v1 as protocol;
use hearthnet_sdk::signing::{Transcript, sign_call};
use hearthnet_sdk::token;
use hearthnet_sdk::wkt::Timestamp;
use prost::Message;
use serde_json::Value;

use crate::cases::{Case, Encoding, Mutation, Payload, TokenCase};
use crate::target::{Observed, Target};

/// The keys the runner calls with, derived from the seed (CONF-008).
#[derive(Debug)]
pub struct Keys {
    /// The caller of every case (the one a launched target may trust).
    pub caller: SecretKey,
    /// A second key the target never heard of.
    pub stranger: SecretKey,
}

impl Keys {
    /// The keys of a run with `seed`.
    pub fn from_seed(seed: u64) -> Self {
        let derive = |label: &str| {
            let mut h = blake3::Hasher::new_derive_key("hearthnet-conformance 1 keys");
            h.update(label.as_bytes());
            h.update(&seed.to_be_bytes());
            SecretKey::from_seed(*h.finalize().as_bytes())
        };
        Self {
            caller: derive("caller"),
            stranger: derive("stranger"),
        }
    }
}

/// What the pre-flight learned.
#[derive(Debug, Clone)]
pub struct Preflight {
    /// `protocol.describe`'s output.
    pub describe: protocol::DescribeOutput,
    /// `protocol.version.list`'s versions.
    pub versions: Vec<String>,
    /// Advertised capabilities: name → `MAJOR.MINOR`.
    pub advertised: BTreeMap<String, String>,
    /// The target's NodeID.
    pub node: NodeId,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// CONF-005: no common protocol major.
    #[error(
        "protocol_version_unsupported: the target speaks {versions:?}, the suite tests major {major}"
    )]
    VersionUnsupported {
        /// What the target listed.
        versions: Vec<String>,
        /// The suite's major.
        major: u32,
    },
    /// A pre-flight call failed.
    #[error("pre-flight {capability}: {message}")]
    Call {
        /// The capability.
        capability: &'static str,
        /// What happened.
        message: String,
    },
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every check held.
    Pass,
    /// A check failed.
    Fail(Failure),
    /// Not run, with the reason.
    Skip(String),
}

/// What failed, for the report (CONF-003).
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// What came back.
    pub observed: String,
    /// What the case expected.
    pub expected: String,
    /// Clauses broken beyond the case's own (framing rules).
    pub also_broken: Vec<String>,
}

impl Failure {
    fn new(observed: impl Into<String>, expected: impl Into<String>) -> Self {
        Self {
            observed: observed.into(),
            expected: expected.into(),
            also_broken: Vec::new(),
        }
    }
}

/// One case's result with its reproduction.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case.
    pub case: Case,
    /// The outcome.
    pub outcome: Outcome,
    /// The request as proto3 JSON (the reproduction).
    pub payload_json: String,
}

/// Runs the pre-flight against `target`.
pub async fn preflight(target: &Target, keys: &Keys) -> Result<Preflight, PreflightError> {
    let versions: protocol::ListVersionsResponse = unary_with(
        target,
        &keys.caller,
        "protocol.version.list",
        &protocol::ListVersionsRequest::default(),
        true,
    )
    .await
    .map_err(|message| PreflightError::Call {
        capability: "protocol.version.list",
        message,
    })?;
    let versions = versions.output.map(|o| o.versions).unwrap_or_default();
    let major = suite_major();
    if !versions
        .iter()
        .any(|v| v.split('.').next().and_then(|m| m.parse::<u32>().ok()) == Some(major))
    {
        return Err(PreflightError::VersionUnsupported { versions, major });
    }
    let describe: protocol::DescribeResponse = unary_with(
        target,
        &keys.caller,
        "protocol.describe",
        &protocol::DescribeRequest::default(),
        true,
    )
    .await
    .map_err(|message| PreflightError::Call {
        capability: "protocol.describe",
        message,
    })?;
    let describe = describe.output.unwrap_or_default();
    let node: NodeId = describe.node.parse().map_err(|e| PreflightError::Call {
        capability: "protocol.describe",
        message: format!(
            "output.node {:?} is not a NodeID (IDENT-001): {e}",
            describe.node
        ),
    })?;
    let advertised = describe
        .capabilities
        .iter()
        .map(|c| (c.name.clone(), c.version.clone()))
        .collect();
    Ok(Preflight {
        describe,
        versions,
        advertised,
        node,
    })
}

/// The protocol major the suite tests.
pub fn suite_major() -> u32 {
    hearthnet_sdk::PROTOCOL_VERSION
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// A signed call of `capability` with a protobuf payload.
pub fn signed_call(
    key: &SecretKey,
    capability: &str,
    version: &str,
    encoding: PayloadEncoding,
    payload: Vec<u8>,
) -> CallRequest {
    let mut call = CallRequest {
        capability: capability.to_string(),
        min_version: version.to_string(),
        request_id: ulid::Ulid::new().to_string(),
        caller: String::new(),
        community: String::new(),
        timestamp: Some(Timestamp::now()),
        encoding: encoding as i32,
        payload,
        schema_hash: String::new(),
        token: String::new(),
        signature: Vec::new(),
    };
    sign_call(key, &mut call);
    call
}

/// The capability token of a [`TokenCase`] (see there).
fn token_text(
    kind: TokenCase,
    keys: &Keys,
    capability: &str,
    version: &str,
) -> Result<String, token::TokenError> {
    if kind == TokenCase::Malformed {
        return Ok(format!("{}not-a-token", token::TOKEN_SCHEME));
    }
    let now = Timestamp::now().seconds;
    let (iat, exp) = match kind {
        TokenCase::Expired => (now - 7200, now - 3600),
        _ => (now - 60, now + 600),
    };
    let claims = CapabilityToken {
        iss: String::new(),
        sub: match kind {
            TokenCase::OtherSubject => keys.caller.node_id().to_string(),
            _ => keys.stranger.node_id().to_string(),
        },
        aud: match kind {
            // A community id nobody founded: the stranger's NodeID.
            TokenCase::WrongAudience => keys.stranger.node_id().to_string(),
            _ => String::new(),
        },
        iat,
        exp,
        nbf: 0,
        jti: ulid::Ulid::new().to_string(),
        scope: Some(TokenScope {
            capabilities: vec![match kind {
                TokenCase::OtherScope => "conformance.other@1.0".to_string(),
                _ => format!("{capability}@{version}"),
            }],
            ..Default::default()
        }),
        issued_via: 0,
    };
    let issuer = match kind {
        TokenCase::UntrustedIssuer => &keys.stranger,
        _ => &keys.caller,
    };
    let text = token::issue(issuer, claims)?;
    Ok(match kind {
        TokenCase::BadSignature => {
            // The last 86 characters are the signature; change one of them.
            let mut chars: Vec<char> = text.chars().collect();
            let i = chars.len().saturating_sub(40);
            if let Some(c) = chars.get_mut(i) {
                *c = if *c == 'A' { 'B' } else { 'A' };
            }
            chars.into_iter().collect()
        }
        _ => text,
    })
}

/// The readiness probe: `protocol.version.list` as the runner's caller.
pub fn probe(keys: &Keys) -> CallRequest {
    signed_call(
        &keys.caller,
        "protocol.version.list",
        "1.0",
        PayloadEncoding::Proto,
        Vec::new(),
    )
}

/// Adds the Ed25519 group order L to the S half of a 64-byte signature
/// (little-endian), giving a non-canonical S that is equal mod L.
fn add_group_order(sig: &mut [u8]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let Some(s) = sig.get_mut(32..64) else {
        return;
    };
    let mut carry = 0u16;
    for (b, l) in s.iter_mut().zip(L) {
        let sum = u16::from(*b) + u16::from(l) + carry;
        *b = sum as u8;
        carry = sum >> 8;
    }
}

/// A unary call whose response must be well framed; the decoded response
/// or a description of what went wrong.
pub async fn unary<Req: Message, Resp: Message + Default>(
    target: &Target,
    key: &SecretKey,
    capability: &str,
    req: &Req,
) -> Result<Resp, String> {
    unary_with(target, key, capability, req, false).await
}

/// [`unary`]; when `lenient`, a framing fault around exactly one data frame
/// is only warned about, so that the pre-flight goes on and the cases report
/// the fault with its clause.
async fn unary_with<Req: Message, Resp: Message + Default>(
    target: &Target,
    key: &SecretKey,
    capability: &str,
    req: &Req,
    lenient: bool,
) -> Result<Resp, String> {
    let version = hearthnet_sdk::registry::capability(capability).map_or_else(
        || "1.0".to_string(),
        |c| format!("{}.0", c.version_numbers().0),
    );
    let call = signed_call(
        key,
        capability,
        &version,
        PayloadEncoding::Proto,
        req.encode_to_vec(),
    );
    let rid = call.request_id.clone();
    let obs = target.call(call).await;
    let decode = |d: &[u8]| Resp::decode(d).map_err(|e| format!("cannot decode the response: {e}"));
    match check_frames(&obs, &rid, None) {
        Ok(Terminal::Done(data)) if data.len() == 1 => decode(&data[0]),
        Ok(Terminal::Done(data)) => Err(format!("{} data frames where 1 was expected", data.len())),
        Ok(Terminal::Error(e)) => Err(format!("error {}: {}", e.code, e.message)),
        Err(f) if !lenient => Err(f.observed),
        Err(f) => {
            let mut data = obs.frames.iter().filter_map(|f| match &f.kind {
                Some(frame::Kind::Data(d)) => Some(d),
                _ => None,
            });
            match (data.next(), data.next(), obs.transport_error.is_none()) {
                (Some(d), None, true) => {
                    eprintln!(
                        "warning: {capability}: {} (expected {}); going on",
                        f.observed, f.expected
                    );
                    decode(d)
                }
                _ => Err(f.observed),
            }
        }
    }
}

/// How a well-framed stream ended.
#[derive(Debug)]
pub enum Terminal {
    /// `done`, after these data frames.
    Done(Vec<Vec<u8>>),
    /// `error`.
    Error(WireError),
}

/// Checks the framing rules every stream must keep: `seq` from 0 (BUS-005),
/// exactly one terminal frame and nothing after it (BUS-003), and a `done`
/// that counts the data frames, carries their transcript hash and the
/// provider's verifying signature (BUS-014) — by `signer` when given.
pub fn check_frames(
    obs: &Observed,
    request_id: &str,
    signer: Option<&NodeId>,
) -> Result<Terminal, Failure> {
    let broken = |clause: &str, observed: String, expected: &str| Failure {
        observed,
        expected: expected.to_string(),
        also_broken: vec![clause.to_string()],
    };
    let mut transcript = Transcript::new();
    let mut data = Vec::new();
    let mut terminal: Option<(usize, &Frame)> = None;
    for (i, f) in obs.frames.iter().enumerate() {
        if f.seq != i as u64 {
            return Err(broken(
                "BUS-005",
                format!("frame {i} has seq {}", f.seq),
                "seq numbered from 0 without gaps",
            ));
        }
        if let Some((t, _)) = terminal {
            return Err(broken(
                "BUS-003",
                format!("frame {i} follows the terminal frame {t}"),
                "nothing after the terminal frame",
            ));
        }
        match &f.kind {
            Some(frame::Kind::Data(d)) => {
                transcript.push(f.seq, d);
                data.push(d.clone());
            }
            Some(frame::Kind::Progress(_)) => {}
            Some(frame::Kind::Done(_)) | Some(frame::Kind::Error(_)) => terminal = Some((i, f)),
            Some(frame::Kind::Ack(_)) => {
                return Err(broken(
                    "BUS-003",
                    format!("an ack frame (seq {i}) on a Call stream"),
                    "data, progress, then one done or error",
                ));
            }
            None => {
                return Err(broken(
                    "BUS-003",
                    format!("frame {i} has no kind"),
                    "every frame sets one kind",
                ));
            }
        }
    }
    let Some((_, last)) = terminal else {
        let how = obs
            .transport_error
            .clone()
            .unwrap_or_else(|| "the stream ended".into());
        return Err(broken(
            "BUS-003",
            format!(
                "no terminal frame after {} frames ({how})",
                obs.frames.len()
            ),
            "exactly one done or error frame",
        ));
    };
    match &last.kind {
        Some(frame::Kind::Error(e)) => Ok(Terminal::Error(e.clone())),
        Some(frame::Kind::Done(done)) => {
            if done.frames != transcript.frames() {
                return Err(broken(
                    "BUS-014",
                    format!(
                        "done counts {} data frames, {} were sent",
                        done.frames,
                        transcript.frames()
                    ),
                    "done.frames = the number of data frames",
                ));
            }
            if done.transcript_hash != transcript.hash() {
                return Err(broken(
                    "BUS-014",
                    "done.transcript_hash differs from the frames' transcript".into(),
                    "the transcript hash of the data frames",
                ));
            }
            let who: NodeId = done.signer.parse().map_err(|e| {
                broken(
                    "BUS-014",
                    format!("done.signer {:?}: {e}", done.signer),
                    "the provider's full NodeID",
                )
            })?;
            if let Some(s) = signer
                && *s != who
            {
                return Err(broken(
                    "BUS-014",
                    format!("done signed by {who}"),
                    "signed by the target node",
                ));
            }
            if let Err(e) = transcript.verify_done(&who, request_id, &done.signature) {
                return Err(broken(
                    "BUS-014",
                    format!("done signature does not verify: {e}"),
                    "an Ed25519 signature over the bus.done fields",
                ));
            }
            Ok(Terminal::Done(data))
        }
        _ => unreachable_terminal(),
    }
}

fn unreachable_terminal() -> Result<Terminal, Failure> {
    Err(Failure::new(
        "internal: terminal frame of no kind",
        "done or error",
    ))
}

/// Substitutes `${caller}`, `${stranger}` and `${target}` in every string.
fn substitute(v: &Value, vars: &[(&str, String)]) -> Value {
    match v {
        Value::String(s) => {
            let mut s = s.clone();
            for (k, val) in vars {
                s = s.replace(k, val);
            }
            Value::String(s)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, vars)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), substitute(x, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Runs one data case.
pub async fn run_case(target: &Target, keys: &Keys, pre: &Preflight, case: &Case) -> CaseResult {
    let vars = [
        ("${caller}", keys.caller.node_id().to_string()),
        ("${stranger}", keys.stranger.node_id().to_string()),
        ("${target}", pre.node.to_string()),
    ];
    let mut result = CaseResult {
        case: case.clone(),
        outcome: Outcome::Pass,
        payload_json: String::new(),
    };
    for r in &case.requires {
        let advertised = match r.strip_prefix("feature:") {
            Some(f) => pre.describe.features.iter().any(|x| x == f),
            None => pre.advertised.contains_key(r),
        };
        if !advertised {
            result.outcome = Outcome::Skip(format!("not_advertised: {r}"));
            return result;
        }
    }
    let request_message = hearthnet_sdk::registry::capability(&case.capability).map(|c| c.request);
    let (payload, json) = match &case.payload {
        Payload::Json(v) => {
            let v = substitute(v, &vars);
            let text = v.to_string();
            match (case.encoding, request_message) {
                (Encoding::Json, _) => (text.clone().into_bytes(), text),
                (_, Some(m)) => match hearthnet_sdk::json::json_to_proto_bytes(m, &text) {
                    Ok(b) => (b, text),
                    Err(e) => {
                        result.outcome = Outcome::Fail(Failure::new(
                            format!("suite error: the request is not a {m}: {e}"),
                            "a valid request",
                        ));
                        return result;
                    }
                },
                (_, None) => (Vec::new(), text),
            }
        }
        Payload::RawJson(t) => (t.clone().into_bytes(), t.clone()),
        Payload::RawBytes(b) => (b.clone(), format!("(raw bytes, {} long)", b.len())),
    };
    result.payload_json = json;
    let encoding = match case.encoding {
        Encoding::Proto => PayloadEncoding::Proto,
        Encoding::Json => PayloadEncoding::Json,
        Encoding::Unspecified => PayloadEncoding::Unspecified,
    };
    let signer = match case.mutate {
        _ if case.token.is_some() => &keys.stranger,
        Some(Mutation::Stranger) => &keys.stranger,
        _ => &keys.caller,
    };
    let mut call = signed_call(signer, &case.capability, &case.version, encoding, payload);
    let resign = |call: &mut CallRequest| sign_call(signer, call);
    if let Some(kind) = case.token {
        call.token = match token_text(kind, keys, &case.capability, &case.version) {
            Ok(t) => t,
            Err(e) => {
                result.outcome = Outcome::Fail(Failure::new(
                    format!("suite error: cannot issue the token: {e}"),
                    "a token",
                ));
                return result;
            }
        };
        resign(&mut call);
        result.payload_json = format!("{} with token {}", result.payload_json, call.token);
    }
    match case.mutate {
        None | Some(Mutation::Stranger) | Some(Mutation::Replay) => {}
        Some(Mutation::BadSignature) => {
            if let Some(b) = call.signature.get_mut(10) {
                *b ^= 1;
            }
        }
        Some(Mutation::Unsigned) => call.signature.clear(),
        Some(Mutation::NonCanonicalS) => add_group_order(&mut call.signature),
        Some(Mutation::TruncatedSignature) => call.signature.truncate(63),
        Some(Mutation::WeakKeyCaller) => {
            // The identity point (encoded y = 1), as a NodeID and as R.
            let mut identity = [0u8; 32];
            identity[0] = 1;
            call.caller = "ed25519:AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into();
            call.signature = [identity, [0u8; 32]].concat();
        }
        Some(Mutation::WrongCaller) => call.caller = keys.stranger.node_id().to_string(),
        Some(Mutation::StaleTimestamp) | Some(Mutation::FutureTimestamp) => {
            let shift = if case.mutate == Some(Mutation::StaleTimestamp) {
                -3600
            } else {
                3600
            };
            call.timestamp = Some(Timestamp {
                seconds: Timestamp::now().seconds + shift,
                nanos: 0,
            });
            resign(&mut call);
        }
        Some(Mutation::NotUlid) => {
            call.request_id = "1".into();
            resign(&mut call);
        }
        Some(Mutation::WrongSchemaHash) => {
            call.schema_hash = format!("blake3:{}", blake3::hash(b"not this schema").to_hex());
            resign(&mut call);
        }
        Some(Mutation::RightSchemaHash) => {
            call.schema_hash = hearthnet_sdk::registry::capability(&case.capability)
                .map(|c| c.schema_hash.to_string())
                .unwrap_or_default();
            resign(&mut call);
        }
        Some(Mutation::ForeignCommunity) => {
            call.community = keys.stranger.node_id().to_string();
            resign(&mut call);
        }
        Some(Mutation::OversizedPayload) => {
            // The case's own request, padded with an unknown field 999 to
            // `BUS_MAX_PAYLOAD_BYTES + 1` bytes: it decodes, so only the size
            // rule (BUS-041) refuses it.
            let want = hearthnet_sdk::constants::BUS_MAX_PAYLOAD_BYTES as usize + 1;
            let tag = (999 << 3) | 2;
            let head = prost::encoding::encoded_len_varint(tag);
            let mut n = want - call.payload.len() - head;
            while call.payload.len() + head + prost::encoding::encoded_len_varint(n as u64) + n
                > want
            {
                n -= 1;
            }
            prost::encoding::encode_varint(tag, &mut call.payload);
            prost::encoding::encode_varint(n as u64, &mut call.payload);
            call.payload.resize(call.payload.len() + n, b'a');
            resign(&mut call);
            result.payload_json = format!(
                "(a payload of BUS_MAX_PAYLOAD_BYTES + 1 = {} bytes)",
                call.payload.len()
            );
        }
        Some(Mutation::UnknownProtoField) => {
            // Field 999, varint 1: tag (999 << 3) | 0.
            prost::encoding::encode_varint(999 << 3, &mut call.payload);
            call.payload.push(1);
            resign(&mut call);
        }
    }
    let rid = call.request_id.clone();
    let vars: Vec<(&str, String)> = vars.to_vec();
    if case.mutate == Some(Mutation::Replay) {
        let first = target.call(call.clone()).await;
        if let Err(f) = check_frames(&first, &rid, Some(&pre.node)) {
            result.outcome = Outcome::Fail(f);
            return result;
        }
    }
    let obs = target.call(call).await;
    result.outcome = evaluate(case, &obs, &rid, pre, &vars);
    result
}

/// Checks what came back against the case.
fn evaluate(
    case: &Case,
    obs: &Observed,
    request_id: &str,
    pre: &Preflight,
    vars: &[(&str, String)],
) -> Outcome {
    let terminal = match check_frames(obs, request_id, Some(&pre.node)) {
        Ok(t) => t,
        Err(f) => return Outcome::Fail(f),
    };
    let expect = &case.expect;
    // `unauthorized` on a capability above `unknown` trust means the target
    // does not trust the runner's caller (a skip) — unless the call was made
    // by the stranger on purpose, with or without a token (then it counts).
    let by_caller = case.token.is_none() && case.mutate != Some(Mutation::Stranger);
    let untrusted = |code: &str| {
        let min_trust = hearthnet_sdk::registry::capability(&case.capability)
            .map_or("unknown", |c| c.min_trust);
        (by_caller && code == "unauthorized" && min_trust != "unknown").then_some(min_trust)
    };
    if !expect.not_errors.is_empty() {
        return match terminal {
            Terminal::Error(e) if expect.not_errors.contains(&e.code) => {
                Outcome::Fail(Failure::new(
                    format!("error code {} ({})", e.code, e.message),
                    format!(
                        "a success or a typed refusal other than {}",
                        expect.not_errors.join(", ")
                    ),
                ))
            }
            _ => Outcome::Pass,
        };
    }
    if !expect.error_in.is_empty() {
        return match terminal {
            Terminal::Error(e) if expect.error_in.contains(&e.code) => Outcome::Pass,
            Terminal::Error(e) => Outcome::Fail(Failure::new(
                format!("error code {} ({})", e.code, e.message),
                format!("an error: {}", expect.error_in.join(" or ")),
            )),
            Terminal::Done(d) => Outcome::Fail(Failure::new(
                format!("success with {} data frames", d.len()),
                format!("an error: {}", expect.error_in.join(" or ")),
            )),
        };
    }
    match (terminal, &expect.error) {
        (Terminal::Error(e), Some(code)) => {
            if code != "unauthorized"
                && let Some(min_trust) = untrusted(&e.code)
            {
                return Outcome::Skip(format!(
                    "caller_not_trusted: {} needs {min_trust}",
                    case.capability
                ));
            }
            if e.code != *code {
                return Outcome::Fail(Failure::new(
                    format!("error code {} ({})", e.code, e.message),
                    format!("error code {code}"),
                ));
            }
            if let Some(p) = &expect.error_pointer
                && !e.pointers.contains(p)
            {
                return Outcome::Fail(Failure::new(
                    format!("error pointers {:?}", e.pointers),
                    format!("pointers containing {p}"),
                ));
            }
            if expect.retry_after && e.retry_after_ms == 0 {
                return Outcome::Fail(Failure::new(
                    "retry_after_ms 0",
                    "a non-zero retry_after_ms",
                ));
            }
            Outcome::Pass
        }
        (Terminal::Done(data), Some(code)) => Outcome::Fail(Failure::new(
            format!("success with {} data frames", data.len()),
            format!("error code {code}"),
        )),
        (Terminal::Error(e), None) => {
            if let Some(min_trust) = untrusted(&e.code) {
                return Outcome::Skip(format!(
                    "caller_not_trusted: {} needs {min_trust}; grant it to the runner's caller",
                    case.capability
                ));
            }
            Outcome::Fail(Failure::new(
                format!("error code {} ({})", e.code, e.message),
                "success",
            ))
        }
        (Terminal::Done(data), None) => check_data(case, &data, vars),
    }
}

fn check_data(case: &Case, data: &[Vec<u8>], vars: &[(&str, String)]) -> Outcome {
    let expect = &case.expect;
    let unary = hearthnet_sdk::registry::capability(&case.capability)
        .is_some_and(|c| matches!(c.streaming, hearthnet_sdk::registry::Streaming::Unary));
    let n = data.len() as u64;
    let want = expect
        .data_frames
        .or(if unary && expect.min_data_frames.is_none() {
            Some(1)
        } else {
            None
        });
    if let Some(w) = want
        && n != w
    {
        let mut f = Failure::new(format!("{n} data frames"), format!("{w} data frames"));
        if unary {
            f.also_broken.push("BUS-002".into());
        }
        return Outcome::Fail(f);
    }
    if let Some(m) = expect.min_data_frames
        && n < m
    {
        return Outcome::Fail(Failure::new(
            format!("{n} data frames"),
            format!("at least {m} data frames"),
        ));
    }
    if expect.json.is_empty() {
        return Outcome::Pass;
    }
    let Some(response) = hearthnet_sdk::registry::capability(&case.capability).map(|c| c.response)
    else {
        return Outcome::Fail(Failure::new("an unknown capability answered", "not_found"));
    };
    let mut frames = Vec::with_capacity(data.len());
    for (i, d) in data.iter().enumerate() {
        // A JSON call is answered in JSON (BUS-007), a protobuf call in protobuf.
        let text = if case.encoding == Encoding::Json {
            String::from_utf8(d.clone()).ok()
        } else {
            hearthnet_sdk::json::proto_bytes_to_json(response, d).ok()
        };
        match text.and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
            Some(v) => frames.push(v),
            None => {
                return Outcome::Fail(Failure::new(
                    format!("data frame {i} does not decode as {response}"),
                    format!("a {response}"),
                ));
            }
        }
    }
    for a in &expect.json {
        let targets: Vec<(usize, &Value)> = if a.every_frame {
            frames.iter().enumerate().collect()
        } else {
            match frames.get(a.frame) {
                Some(v) => vec![(a.frame, v)],
                None => {
                    return Outcome::Fail(Failure::new(
                        format!("{} data frames", frames.len()),
                        format!("a data frame {} for {}", a.frame, a.pointer),
                    ));
                }
            }
        };
        for (i, v) in targets {
            if let Err(f) = assert_one(a, v.pointer(&a.pointer), vars) {
                return Outcome::Fail(Failure::new(
                    format!("frame {i} {}: {}", a.pointer, f.observed),
                    f.expected,
                ));
            }
        }
    }
    Outcome::Pass
}

fn assert_one(
    a: &crate::cases::Assertion,
    got: Option<&Value>,
    vars: &[(&str, String)],
) -> Result<(), Failure> {
    let shown = || got.map_or_else(|| "absent".to_string(), |v| v.to_string());
    if let Some(e) = a.exists
        && e != got.is_some()
    {
        return Err(Failure::new(shown(), if e { "present" } else { "absent" }));
    }
    if let Some(want) = &a.equals {
        let want = substitute(want, vars);
        if got != Some(&want) {
            return Err(Failure::new(shown(), want.to_string()));
        }
    }
    if let Some(re) = &a.matches {
        let ok = got
            .and_then(Value::as_str)
            .is_some_and(|s| regex::Regex::new(re).is_ok_and(|r| r.is_match(s)));
        if !ok {
            return Err(Failure::new(shown(), format!("a string matching {re}")));
        }
    }
    if a.node_id {
        let ok = got
            .and_then(Value::as_str)
            .is_some_and(|s| s.parse::<NodeId>().is_ok());
        if !ok {
            return Err(Failure::new(shown(), "a full NodeID (IDENT-001)"));
        }
    }
    if let Some(m) = a.min_items {
        let n = got.and_then(Value::as_array).map_or(0, Vec::len);
        if n < m {
            return Err(Failure::new(
                format!("{n} items"),
                format!("at least {m} items"),
            ));
        }
    }
    if let Some(m) = a.max_items {
        let n = got.and_then(Value::as_array).map_or(0, Vec::len);
        if n > m {
            return Err(Failure::new(
                format!("{n} items"),
                format!("at most {m} items"),
            ));
        }
    }
    if let Some(want) = &a.contains {
        let want = &substitute(want, vars);
        let ok = got.and_then(Value::as_array).is_some_and(|items| {
            items.iter().any(|item| match (item, want) {
                (Value::Object(o), Value::Object(w)) => w.iter().all(|(k, v)| o.get(k) == Some(v)),
                _ => item == want,
            })
        });
        if !ok {
            return Err(Failure::new(shown(), format!("an item like {want}")));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The mutation reproduces the protocol's `negative/non-canonical-s` vector.
    #[test]
    fn adding_the_group_order_matches_the_vector() {
        let vectors: Value = serde_json::from_str(include_str!(
            "../../protocol/vectors/signing/signatures.json"
        ))
        .unwrap();
        let sig = |name: &str| -> Vec<u8> {
            let v = vectors["vectors"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == name)
                .unwrap();
            let hex = v["signature_hex"].as_str().unwrap();
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect()
        };
        let mut s = sig("envelope/node.manifest");
        add_group_order(&mut s);
        assert_eq!(s, sig("negative/non-canonical-s"));
    }
}
