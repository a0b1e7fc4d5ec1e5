//! Property test: for every message type, random instances encode to canonical
//! JSON that validates against the published schema and decodes back to an
//! equal message; pbjson's JSON equals prost-reflect's canonical JSON.

mod common;

use proptest::prelude::*;
use prost::Message;
use prost_reflect::DynamicMessage;

fn check_one(seed: u64) -> Result<(), TestCaseError> {
    let mut rng = common::rng(seed);
    for desc in common::messages() {
        let msg = common::random_message(&desc, &mut rng, 0);
        let bytes = msg.encode_to_vec();
        let name = desc.full_name();
        let json = hearthnet_sdk::json::proto_bytes_to_json(name, &bytes)
            .map_err(|e| TestCaseError::fail(format!("{name}: encode: {e}")))?;
        let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        if let Err(e) = hearthnet_sdk::validate::validate_message_value(name, &value) {
            return Err(TestCaseError::fail(format!(
                "{name}: {json} rejected by its schema: {:?}",
                e.violations()
            )));
        }
        let back = hearthnet_sdk::json::json_to_proto_bytes(name, &json)
            .map_err(|e| TestCaseError::fail(format!("{name}: decode {json}: {e}")))?;
        // Normalise through the wire so that explicitly set defaults compare equal.
        let original = DynamicMessage::decode(desc.clone(), bytes.as_slice()).expect("decode");
        let again = DynamicMessage::decode(desc.clone(), back.as_slice()).expect("re-decode");
        prop_assert!(again == original, "{} changed through JSON {}", name, json);
        // prost-reflect (an independent proto3 JSON implementation) reads
        // pbjson's JSON as the same message, and pbjson reads prost-reflect's.
        let mut de = serde_json::Deserializer::from_str(&json);
        let via_reflect = DynamicMessage::deserialize(desc.clone(), &mut de).map_err(|e| {
            TestCaseError::fail(format!("{name}: prost-reflect rejects {json}: {e}"))
        })?;
        prop_assert!(
            via_reflect == original,
            "{}: prost-reflect reads {} differently",
            name,
            json
        );
        let reflect_json = serde_json::to_string(&original).expect("prost-reflect serialises");
        let back2 = hearthnet_sdk::json::json_to_proto_bytes(name, &reflect_json).map_err(|e| {
            TestCaseError::fail(format!(
                "{name}: pbjson rejects prost-reflect's {reflect_json}: {e}"
            ))
        })?;
        let again2 = DynamicMessage::decode(desc.clone(), back2.as_slice()).expect("re-decode");
        prop_assert!(
            again2 == original,
            "{}: pbjson reads {} differently",
            name,
            reflect_json
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn every_message_round_trips_through_canonical_json(seed in any::<u64>()) {
        check_one(seed)?;
    }
}

#[test]
fn there_are_many_message_types() {
    assert!(
        common::messages().len() > 100,
        "{}",
        common::messages().len()
    );
}
