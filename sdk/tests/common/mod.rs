//! Shared test helpers: random instances of any protocol message, built from
//! the descriptors with a seeded RNG.
#![allow(dead_code)]

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

/// A seeded RNG.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Every HearthNet message descriptor.
pub fn messages() -> Vec<MessageDescriptor> {
    hearthnet_sdk::json::message_names()
        .iter()
        .map(|n| {
            hearthnet_sdk::descriptor_pool()
                .get_message_by_name(n)
                .expect("message in pool")
        })
        .collect()
}

const STRINGS: &[&str] = &[
    "",
    "a",
    "hello world",
    "llm.chat",
    "Grüße, 世界",
    "ed25519:AAAA",
    "line\nbreak",
    "\"quoted\"",
    "🙂",
];

fn random_string(rng: &mut StdRng) -> String {
    if rng.random_bool(0.5) {
        (*STRINGS.choose(rng).expect("non-empty")).to_owned()
    } else {
        let n = rng.random_range(0..12);
        (0..n)
            .map(|_| rng.random_range(0x20u8..0x7f) as char)
            .collect()
    }
}

fn pick_i64(rng: &mut StdRng, min: i64, max: i64) -> i64 {
    match rng.random_range(0..5) {
        0 => min,
        1 => max,
        2 => 0,
        _ => rng.random_range(min..=max),
    }
}

fn pick_u64(rng: &mut StdRng, max: u64) -> u64 {
    match rng.random_range(0..5) {
        0 => 0,
        1 => max,
        2 => 1,
        _ => rng.random_range(0..=max),
    }
}

fn scalar(kind: &Kind, rng: &mut StdRng, depth: usize) -> Value {
    match kind {
        Kind::Bool => Value::Bool(rng.random()),
        Kind::String => Value::String(random_string(rng)),
        Kind::Bytes => {
            let n = rng.random_range(0..10);
            Value::Bytes(
                (0..n)
                    .map(|_| rng.random::<u8>())
                    .collect::<Vec<u8>>()
                    .into(),
            )
        }
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(pick_i64(rng, i32::MIN as i64, i32::MAX as i64) as i32)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(pick_u64(rng, u32::MAX as u64) as u32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(pick_i64(rng, i64::MIN, i64::MAX))
        }
        Kind::Uint64 | Kind::Fixed64 => Value::U64(pick_u64(rng, u64::MAX)),
        Kind::Float => Value::F32(
            *[
                0.0f32,
                1.5,
                -2.25,
                1e30,
                f32::MIN_POSITIVE,
                rng.random::<f32>(),
            ]
            .choose(rng)
            .expect("non-empty"),
        ),
        Kind::Double => Value::F64(
            *[0.0f64, 0.1, -7.5, 1e300, rng.random::<f64>() * 1e6]
                .choose(rng)
                .expect("non-empty"),
        ),
        Kind::Enum(e) => {
            let vals: Vec<i32> = e.values().map(|v| v.number()).collect();
            Value::EnumNumber(*vals.choose(rng).expect("enum has values"))
        }
        Kind::Message(m) => Value::Message(random_message(m, rng, depth + 1)),
    }
}

fn map_key(kind: &Kind, rng: &mut StdRng) -> MapKey {
    match kind {
        Kind::String => MapKey::String(random_string(rng)),
        Kind::Bool => MapKey::Bool(rng.random()),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => MapKey::I32(rng.random()),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => MapKey::I64(rng.random()),
        Kind::Uint32 | Kind::Fixed32 => MapKey::U32(rng.random()),
        _ => MapKey::U64(rng.random()),
    }
}

fn field_value(f: &FieldDescriptor, rng: &mut StdRng, depth: usize) -> Value {
    if f.is_map() {
        let kind = f.kind();
        let entry = kind.as_message().expect("map entry");
        let n = rng.random_range(0..3);
        let mut map = std::collections::HashMap::new();
        for _ in 0..n {
            map.insert(
                map_key(&entry.map_entry_key_field().kind(), rng),
                scalar(&entry.map_entry_value_field().kind(), rng, depth),
            );
        }
        Value::Map(map)
    } else if f.is_list() {
        let n = rng.random_range(0..4);
        Value::List((0..n).map(|_| scalar(&f.kind(), rng, depth)).collect())
    } else {
        scalar(&f.kind(), rng, depth)
    }
}

/// A random instance: each field set with probability 1/2 (none below depth 4),
/// at most one member per oneof, timestamps inside the RFC 3339 range.
pub fn random_message(desc: &MessageDescriptor, rng: &mut StdRng, depth: usize) -> DynamicMessage {
    let mut msg = DynamicMessage::new(desc.clone());
    match desc.full_name() {
        "google.protobuf.Timestamp" => {
            msg.set_field_by_name(
                "seconds",
                Value::I64(rng.random_range(-62_135_596_800i64..253_402_300_799)),
            );
            msg.set_field_by_name(
                "nanos",
                Value::I32(
                    *[0, 1_000_000, 500, rng.random_range(0..1_000_000_000)]
                        .choose(rng)
                        .expect("non-empty"),
                ),
            );
            return msg;
        }
        "google.protobuf.Value" => {
            // A Value must hold exactly one kind (an unset kind has no JSON form).
            // JSON null is left out: pbjson_types reads it as a Value with no kind,
            // prost-reflect as `null_value` (see docs/differential.md).
            match rng.random_range(1..4) {
                1 => msg.set_field_by_name(
                    "number_value",
                    Value::F64(*[0.5, -3.0, 1e10].choose(rng).expect("non-empty")),
                ),
                2 => msg.set_field_by_name("string_value", Value::String(random_string(rng))),
                _ => msg.set_field_by_name("bool_value", Value::Bool(rng.random())),
            }
            return msg;
        }
        "google.protobuf.Duration" => {
            msg.set_field_by_name(
                "seconds",
                Value::I64(rng.random_range(-1_000_000i64..1_000_000)),
            );
            return msg;
        }
        _ => {}
    }
    if depth > 3 {
        return msg;
    }
    let mut done_oneofs = std::collections::HashSet::new();
    for f in desc.fields() {
        if !rng.random_bool(0.5) {
            continue;
        }
        if let Some(o) = f.containing_oneof().filter(|o| !o.is_synthetic())
            && !done_oneofs.insert(o.name().to_owned())
        {
            continue;
        }
        msg.set_field(&f, field_value(&f, rng, depth));
    }
    msg
}

/// Canonical JSON of a random instance, produced by the SDK's pbjson code.
pub fn random_json(desc: &MessageDescriptor, rng: &mut StdRng) -> serde_json::Value {
    use prost::Message;
    let msg = random_message(desc, rng, 0);
    let text = hearthnet_sdk::json::proto_bytes_to_json(desc.full_name(), &msg.encode_to_vec())
        .expect("pbjson encodes");
    serde_json::from_str(&text).expect("pbjson output is JSON")
}
