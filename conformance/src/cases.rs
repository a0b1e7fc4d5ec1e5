//! Data-driven cases: TOML files under `conformance/cases/`, one section a
//! file, embedded in the binary at build time. The shape is checked when the
//! suite loads (unknown keys, unknown clauses, unknown capabilities and
//! duplicate ids are errors), so a typo never silently drops a case.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::Value;

use crate::catalogue::{CASE_FILES, CLAUSES};

/// A problem in a case file.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// The file is not valid TOML of the case shape.
    #[error("cases/{file}: {message}")]
    Parse {
        /// File under `cases/`.
        file: String,
        /// What is wrong (with line and column from the TOML parser).
        message: String,
    },
    /// A case breaks a rule of the suite.
    #[error("cases/{file}: case {id}: {message}")]
    Invalid {
        /// File under `cases/`.
        file: String,
        /// Case id.
        id: String,
        /// What is wrong.
        message: String,
    },
}

/// How the payload travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// `PAYLOAD_ENCODING_PROTO` (the request JSON is converted to protobuf).
    #[default]
    Proto,
    /// `PAYLOAD_ENCODING_JSON`, the JSON text as written.
    Json,
    /// `PAYLOAD_ENCODING_UNSPECIFIED` with a protobuf payload (BUS-006).
    Unspecified,
}

/// A change made to an otherwise well-formed, signed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mutation {
    /// One byte of the signature flipped.
    BadSignature,
    /// No signature at all.
    Unsigned,
    /// `caller` names another key than the one that signed.
    WrongCaller,
    /// Signed by a second key the target has never heard of.
    Stranger,
    /// The timestamp an hour in the past, signed.
    StaleTimestamp,
    /// The timestamp an hour in the future, signed.
    FutureTimestamp,
    /// A request id that is not a ULID, signed.
    NotUlid,
    /// The same signed call sent twice; the expectation is the second's.
    Replay,
    /// A `schema_hash` that is not the capability's.
    WrongSchemaHash,
    /// The registry's `schema_hash` of the capability.
    RightSchemaHash,
    /// `community` names a community the target is not part of.
    ForeignCommunity,
    /// The request padded with an unknown field to `BUS_MAX_PAYLOAD_BYTES + 1` bytes.
    OversizedPayload,
    /// An unknown field (number 999) appended to the protobuf payload.
    UnknownProtoField,
    /// The signature's S with the group order L added: the same value mod L,
    /// so only a strict verifier refuses it (vector `negative/non-canonical-s`).
    NonCanonicalS,
    /// The signature cut to 63 bytes (vector `negative/truncated-signature`).
    TruncatedSignature,
    /// `caller` is the small-order identity point, with the signature
    /// R = identity, S = 0 that verifies any message under a lax verifier
    /// (vector `negative/small-order-public-key`).
    WeakKeyCaller,
}

/// The capability token a case's call carries (BUS-048). Every such call is
/// made by the runner's stranger key, which has no trust of its own; the
/// token is issued by the runner's caller (trusted by the target) for the
/// stranger and the case's `capability@version`, valid for ten minutes,
/// except for what the variant changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenCase {
    /// As described: the call is served with `member` trust.
    Valid,
    /// Expired an hour ago.
    Expired,
    /// `aud` names a community the target is not part of.
    WrongAudience,
    /// One bit of the token's signature flipped.
    BadSignature,
    /// The scope names another capability.
    OtherScope,
    /// Issued for the runner's caller, presented by the stranger.
    OtherSubject,
    /// Issued by the stranger to itself (an issuer without trust).
    UntrustedIssuer,
    /// Text that is not a token.
    Malformed,
}

/// One JSON-pointer assertion on a data frame's JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assertion {
    /// RFC 6901 pointer into the response message's proto3 JSON.
    pub pointer: String,
    /// Index of the data frame (default 0).
    #[serde(default)]
    pub frame: usize,
    /// Apply to every data frame instead of one.
    #[serde(default)]
    pub every_frame: bool,
    /// The value must equal this (after `${…}` substitution of strings).
    #[serde(default)]
    pub equals: Option<Value>,
    /// The value must be a string matching this regular expression.
    #[serde(default)]
    pub matches: Option<String>,
    /// The value must be present (true) or absent (false).
    #[serde(default)]
    pub exists: Option<bool>,
    /// The value must be a full NodeID (IDENT-001, CONF-011).
    #[serde(default)]
    pub node_id: bool,
    /// The value must be an array with at least this many items.
    #[serde(default)]
    pub min_items: Option<usize>,
    /// The value must be absent or an array with at most this many items.
    #[serde(default)]
    pub max_items: Option<usize>,
    /// The value must be an array containing an object whose `key` equals `value`.
    #[serde(default)]
    pub contains: Option<Value>,
}

/// What the call must produce.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The wire error code of the terminal `error` frame; absent = success.
    #[serde(default)]
    pub error: Option<String>,
    /// Exact number of data frames (default 1 for a unary success, BUS-002).
    #[serde(default)]
    pub data_frames: Option<u64>,
    /// At least this many data frames.
    #[serde(default)]
    pub min_data_frames: Option<u64>,
    /// The error frame's `pointers` must contain this JSON pointer.
    #[serde(default)]
    pub error_pointer: Option<String>,
    /// An error with one of these codes (where the spec names none).
    #[serde(default)]
    pub error_in: Vec<String>,
    /// Success, or an error other than these codes (a typed refusal such as
    /// `bad_request` or `unauthorized` is an answer; `not_found` for an
    /// advertised capability is false advertising).
    #[serde(default)]
    pub not_errors: Vec<String>,
    /// The error frame must carry a non-zero `retry_after_ms`.
    #[serde(default)]
    pub retry_after: bool,
    /// Assertions on the data frames.
    #[serde(default)]
    pub json: Vec<Assertion>,
}

/// A case as written in a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseDef {
    id: String,
    clauses: Vec<String>,
    #[serde(default)]
    summary: String,
    capability: String,
    #[serde(default)]
    requires: Option<Vec<String>>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    request: Option<toml::Value>,
    #[serde(default)]
    raw_json: Option<String>,
    #[serde(default)]
    raw_hex: Option<String>,
    #[serde(default)]
    encoding: Encoding,
    #[serde(default)]
    mutate: Option<Mutation>,
    #[serde(default)]
    token: Option<TokenCase>,
    #[serde(default)]
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    section: String,
    spec: String,
    #[serde(rename = "case", default)]
    cases: Vec<CaseDef>,
}

/// What a case sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A JSON request converted to the capability's request message.
    Json(Value),
    /// JSON text sent as it is (with `encoding = "json"`).
    RawJson(String),
    /// Bytes sent as they are.
    RawBytes(Vec<u8>),
}

/// One case, ready to run.
#[derive(Debug, Clone)]
pub struct Case {
    /// `section/id`, unique in the suite.
    pub test_id: String,
    /// The section, e.g. `core/bus`.
    pub section: String,
    /// The spec file the section follows, e.g. `protocol/spec/bus.md`.
    pub spec_ref: String,
    /// Clause ids checked.
    pub clauses: Vec<String>,
    /// One line on what it checks.
    pub summary: String,
    /// Capability called.
    pub capability: String,
    /// Capabilities that must be advertised for the case to run.
    pub requires: Vec<String>,
    /// `min_version` sent (default: the registry's `MAJOR.0`).
    pub version: String,
    /// Payload.
    pub payload: Payload,
    /// Encoding.
    pub encoding: Encoding,
    /// Change made to the call.
    pub mutate: Option<Mutation>,
    /// Capability token the call carries (made by the stranger).
    pub token: Option<TokenCase>,
    /// Expectation.
    pub expect: Expect,
}

/// Every case of the suite (files and generated), sorted by test id.
pub fn load() -> Result<Vec<Case>, CaseError> {
    let mut all = Vec::new();
    for (file, text) in CASE_FILES {
        all.extend(parse(file, text)?);
    }
    all.extend(generated());
    all.extend(crate::scenarios::cases());
    let mut seen = BTreeSet::new();
    for c in &all {
        if !seen.insert(c.test_id.clone()) {
            return Err(CaseError::Invalid {
                file: c.section.clone(),
                id: c.test_id.clone(),
                message: "duplicate test id".into(),
            });
        }
    }
    all.sort_by(|a, b| a.test_id.cmp(&b.test_id));
    Ok(all)
}

/// Parses one case file.
pub fn parse(file: &str, text: &str) -> Result<Vec<Case>, CaseError> {
    let parsed: CaseFile = toml::from_str(text).map_err(|e| CaseError::Parse {
        file: file.to_string(),
        message: e.to_string(),
    })?;
    let bad = |id: &str, message: String| CaseError::Invalid {
        file: file.to_string(),
        id: id.to_string(),
        message,
    };
    if crate::report::group_of(&parsed.section).is_none() {
        return Err(CaseError::Parse {
            file: file.to_string(),
            message: format!(
                "section {:?} is not <group>/<name> of a known group (CONF-009)",
                parsed.section
            ),
        });
    }
    let mut out = Vec::new();
    for d in parsed.cases {
        if d.id.is_empty()
            || !d
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(bad(&d.id, "ids are [a-z0-9_]+".into()));
        }
        if d.clauses.is_empty() {
            return Err(bad(&d.id, "cites no clause (CONF-007)".into()));
        }
        for c in &d.clauses {
            if !CLAUSES.iter().any(|(id, _)| id == c) {
                return Err(bad(
                    &d.id,
                    format!("clause {c} is not defined in protocol/spec/"),
                ));
            }
        }
        let requires = d.requires.unwrap_or_else(|| vec![d.capability.clone()]);
        for r in &requires {
            if let Some(f) = r.strip_prefix("feature:") {
                if f.is_empty() {
                    return Err(bad(&d.id, "requires an unnamed feature".into()));
                }
            } else if hearthnet_sdk::registry::capability(r).is_none() {
                return Err(bad(&d.id, format!("requires unknown capability {r}")));
            }
        }
        let version = match (
            d.version,
            hearthnet_sdk::registry::capability(&d.capability),
        ) {
            (Some(v), _) => v,
            (None, Some(c)) => format!("{}.0", c.version_numbers().0),
            (None, None) => "1.0".to_string(),
        };
        let sources = [
            d.request.is_some(),
            d.raw_json.is_some(),
            d.raw_hex.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if sources > 1 {
            return Err(bad(&d.id, "give one of request, raw_json, raw_hex".into()));
        }
        let payload = if let Some(t) = d.raw_json {
            Payload::RawJson(t)
        } else if let Some(h) = d.raw_hex {
            Payload::RawBytes(
                hex(&h).ok_or_else(|| bad(&d.id, "raw_hex is not hexadecimal".into()))?,
            )
        } else {
            let v = match d.request {
                Some(t) => {
                    serde_json::to_value(t).map_err(|e| bad(&d.id, format!("request: {e}")))?
                }
                None => Value::Object(Default::default()),
            };
            Payload::Json(v)
        };
        if matches!(payload, Payload::RawJson(_)) && d.encoding != Encoding::Json {
            return Err(bad(&d.id, "raw_json needs encoding = \"json\"".into()));
        }
        for code in d
            .expect
            .error
            .iter()
            .chain(&d.expect.error_in)
            .chain(&d.expect.not_errors)
        {
            if hearthnet_sdk::registry::error_code(code).is_none() {
                return Err(bad(&d.id, format!("unknown error code {code}")));
            }
        }
        for a in &d.expect.json {
            if let Some(r) = &a.matches {
                regex::Regex::new(r).map_err(|e| bad(&d.id, format!("matches: {e}")))?;
            }
        }
        out.push(Case {
            test_id: format!("{}/{}", parsed.section, d.id),
            section: parsed.section.clone(),
            spec_ref: parsed.spec.clone(),
            clauses: d.clauses,
            summary: d.summary,
            capability: d.capability,
            requires,
            version,
            payload,
            encoding: d.encoding,
            mutate: d.mutate,
            token: d.token,
            expect: d.expect,
        });
    }
    Ok(out)
}

/// The section a capability's cases belong to (CONF-009).
pub fn section_of(capability: &str) -> String {
    let stability =
        hearthnet_sdk::registry::capability(capability).map_or("stable", |c| c.stability);
    let mut parts = capability.split('.');
    let mut area = parts.next().unwrap_or(capability);
    if area == "experimental" {
        area = parts.next().unwrap_or(area);
    }
    let core = match area {
        "diag" | "protocol" => Some("bus"),
        "node" | "identity" => Some("identity"),
        "event" => Some("events"),
        "token" | "auth" => Some("tokens"),
        "file" => Some("files"),
        "kb" | "rag" => Some("kb"),
        "llm" => Some("llm"),
        _ => None,
    };
    match core {
        Some(name) => format!("core/{name}"),
        None if area == "federation" => "federation".into(),
        None if stability == "experimental" => format!("experimental/{area}"),
        None => format!("services/{area}"),
    }
}

/// One generated case per unary capability of the registry: when the target
/// advertises it, a call with an empty request must come back well framed,
/// as a success or a typed refusal, never `not_found`, `internal_error` or
/// `schema_mismatch` (false advertising, CONF-006; BUS-012, BUS-034).
fn generated() -> Vec<Case> {
    hearthnet_sdk::registry::registry()
        .iter()
        .filter(|c| matches!(c.streaming, hearthnet_sdk::registry::Streaming::Unary))
        .map(|c| {
            let section = section_of(c.name);
            let mut clauses = vec!["CONF-006".to_string(), "BUS-012".to_string()];
            clauses.extend(
                c.clauses
                    .iter()
                    .filter(|id| CLAUSES.iter().any(|(x, _)| x == *id))
                    .take(1)
                    .map(|s| s.to_string()),
            );
            Case {
                test_id: format!("{section}/advertised_{}_answers", c.name.replace('.', "_")),
                spec_ref: format!(
                    "protocol/spec/{}.md",
                    CLAUSES
                        .iter()
                        .find(|(id, _)| Some(id) == c.clauses.first())
                        .map_or("bus", |(_, f)| f.trim_end_matches(".md"))
                ),
                section,
                clauses,
                summary: format!("{} answers when advertised", c.name),
                capability: c.name.to_string(),
                requires: vec![c.name.to_string()],
                version: format!("{}.0", c.version_numbers().0),
                payload: Payload::RawBytes(Vec::new()),
                encoding: Encoding::Proto,
                mutate: None,
                token: None,
                expect: Expect {
                    not_errors: vec![
                        "not_found".into(),
                        "internal_error".into(),
                        "schema_mismatch".into(),
                    ],
                    ..Expect::default()
                },
            }
        })
        .collect()
}

fn hex(s: &str) -> Option<Vec<u8>> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_suite_loads() {
        let cases = load().unwrap();
        assert!(!cases.is_empty());
        assert!(cases.iter().all(|c| !c.clauses.is_empty()));
    }

    #[test]
    fn typos_and_unknown_clauses_are_errors() {
        let ok = "section = \"core/bus\"\nspec = \"x\"\n[[case]]\nid = \"a\"\nclauses = [\"BUS-012\"]\ncapability = \"diag.echo\"\n";
        assert_eq!(parse("t.toml", ok).unwrap().len(), 1);
        let typo = ok.replace("capability =", "capabilty =");
        let e = parse("t.toml", &typo).unwrap_err().to_string();
        assert!(e.contains("capabilty"), "{e}");
        let clause = ok.replace("BUS-012", "BUS-999");
        let e = parse("t.toml", &clause).unwrap_err().to_string();
        assert!(e.contains("BUS-999"), "{e}");
        let section = ok.replace("core/bus", "bus");
        assert!(parse("t.toml", &section).is_err());
        let code = format!("{ok}expect.error = \"no_such_code\"\n");
        assert!(
            parse("t.toml", &code)
                .unwrap_err()
                .to_string()
                .contains("no_such_code")
        );
    }
}
