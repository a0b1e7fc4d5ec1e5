//! The generated registry, error codes and schema lookups.

use hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode;
use hearthnet_sdk::registry::{self, Streaming};
use hearthnet_sdk::validate::{self, Direction, ValidationError};

#[test]
fn every_capability_has_messages_schemas_and_a_hash() {
    let caps = registry::registry();
    assert!(caps.len() >= 10);
    for c in caps {
        assert!(
            hearthnet_sdk::json::message_names().contains(&c.request),
            "{}",
            c.request
        );
        assert!(
            validate::schema(c.name, Direction::Request).is_some(),
            "{}",
            c.name
        );
        assert!(
            validate::schema(c.name, Direction::Response).is_some(),
            "{}",
            c.name
        );
        assert!(
            c.schema_hash.starts_with("blake3:") && c.schema_hash.len() == 71,
            "{}",
            c.schema_hash
        );
        assert!(
            registry::parse_version(c.version).is_some(),
            "{}",
            c.version
        );
    }
    for shape in [Streaming::Unary, Streaming::Server, Streaming::Client] {
        assert!(caps.iter().any(|c| c.streaming == shape), "{shape:?}");
    }
}

#[test]
fn version_matching_follows_major_equal_minor_at_least() {
    let chat = registry::capability("llm.chat").expect("llm.chat");
    let (major, minor) = chat.version_numbers();
    assert!(chat.satisfies("llm.chat", (major, 0)));
    assert!(chat.satisfies("llm.chat", (major, minor)));
    assert!(!chat.satisfies("llm.chat", (major, minor + 1)));
    assert!(!chat.satisfies("llm.chat", (2, 0)));
    assert!(!chat.satisfies("llm.complete", (1, 0)));
    for bad in ["1", "1.", ".1", "01.0", "1.0.0", "a.b", ""] {
        assert_eq!(registry::parse_version(bad), None, "{bad}");
    }
}

#[test]
fn error_codes_round_trip_through_wire_names() {
    let all: Vec<_> = registry::error_codes().collect();
    assert!(all.len() >= 70, "{}", all.len());
    for e in &all {
        assert_eq!(ErrorCode::from_wire_name(e.wire_name), Some(e.code));
        assert_eq!(e.code.wire_name(), e.wire_name);
    }
    let nf = registry::error_code("not_found").expect("not_found");
    assert_eq!((nf.http_status, nf.retryable, nf.phase), (404, false, 1));
    assert_eq!(ErrorCode::Unspecified.wire_name(), "internal_error");
    assert_eq!(ErrorCode::from_wire_name("NOT_FOUND"), None);
}

#[test]
fn validate_json_reports_every_violation_with_pointers() {
    let err = validate::validate_json(
        "embed.text",
        Direction::Request,
        r#"{"params":{"model":1},"input":{"texts":["a",2],"normalize":"yes"},"x":0}"#,
    )
    .expect_err("invalid");
    let pointers: Vec<&str> = err
        .violations()
        .iter()
        .map(|v| v.pointer.as_str())
        .collect();
    for p in ["/params/model", "/input/texts/1", "/input/normalize", ""] {
        assert!(pointers.contains(&p), "{p} missing from {pointers:?}");
    }
    assert!(matches!(
        validate::validate_json("embed.text", Direction::Request, "{\n  \"a\":"),
        Err(ValidationError::Syntax { line: 2, .. })
    ));
    assert!(matches!(
        validate::validate_json("no.such", Direction::Request, "{}"),
        Err(ValidationError::UnknownCapability(_))
    ));
}

#[test]
fn typed_json_conversions_round_trip() {
    use hearthnet_sdk::proto::hearthnet::bus::v1::{CallRequest, PayloadEncoding};
    let call = CallRequest {
        capability: "llm.chat".into(),
        min_version: "1.0".into(),
        timestamp: Some(hearthnet_sdk::wkt::Timestamp {
            seconds: 1_764_000_000,
            nanos: 0,
        }),
        encoding: PayloadEncoding::Json as i32,
        payload: b"{}".to_vec(),
        ..Default::default()
    };
    let text = hearthnet_sdk::json::to_json(&call);
    assert_eq!(
        text,
        r#"{"capability":"llm.chat","minVersion":"1.0","timestamp":"2025-11-24T16:00:00Z","encoding":"PAYLOAD_ENCODING_JSON","payload":"e30="}"#
    );
    let back: CallRequest = hearthnet_sdk::json::from_json(&text).expect("decodes");
    assert_eq!(back, call);
    let bytes = hearthnet_sdk::json::json_to_proto_bytes("hearthnet.bus.v1.CallRequest", &text)
        .expect("to proto");
    let again = hearthnet_sdk::json::proto_bytes_to_json("hearthnet.bus.v1.CallRequest", &bytes)
        .expect("to json");
    assert_eq!(again, text);
    assert!(
        hearthnet_sdk::json::proto_bytes_to_json("hearthnet.bus.v1.CallRequest", &[0xff, 0xff])
            .is_err()
    );
}

#[test]
fn the_timestamp_decoder_uses_the_schema_pattern() {
    let schema = validate::message_schema("hearthnet.bus.v1.CallRequest").expect("schema");
    let ts = &schema["properties"]["timestamp"];
    let pattern = ts["else"]["pattern"]
        .as_str()
        .or_else(|| ts["pattern"].as_str())
        .expect("pattern");
    assert_eq!(pattern, hearthnet_sdk::wkt::TIMESTAMP_PATTERN);
}
