//! Differential test: thousands of generated and mutated JSON instances, each
//! judged by the JSON Schema validator and by the pbjson decoder the node uses.
//! The agreement rate is printed; every disagreement must belong to a class
//! documented in `docs/differential.md`, otherwise the test fails and lists it.
//!
//! With `HEARTHNET_CORPUS_OUT=FILE` the instances and the Rust schema verdicts
//! are written to FILE, for the cross-check with Python's `jsonschema`
//! (`scripts/check_schemas.py`).

mod common;

use rand::{Rng, rngs::StdRng, seq::IndexedRandom};
use serde_json::{Value, json};

const INSTANCES: usize = 6000;

/// Replacement values a mutation may put anywhere.
fn replacement(rng: &mut StdRng) -> Value {
    let choices = [
        json!(null),
        json!(true),
        json!(false),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(1.0),
        json!(-0.0),
        json!(4294967296u64),
        json!(2147483648u64),
        json!(-2147483649i64),
        json!(9223372036854775807i64),
        json!(9223372036854775808u64),
        json!(18446744073709551615u64),
        json!(-9223372036854775808i64),
        json!(1e20),
        json!("x"),
        json!(""),
        json!("123"),
        json!("+7"),
        json!("-0"),
        json!("007"),
        json!("1.0"),
        json!("1e3"),
        json!("4294967296"),
        json!("-1"),
        json!("NaN"),
        json!("Infinity"),
        json!("-inf"),
        json!("QQ"),
        json!("QR"),
        json!("QUI="),
        json!("-_-_"),
        json!("a b"),
        json!("QQ="),
        json!("ROLE_USER"),
        json!("STOP_REASON_END"),
        json!("ERROR_CODE_NOT_FOUND"),
        json!("2026-11-24T03:06:58Z"),
        json!("2026-11-24T03:06:58.123+01:00"),
        json!("2026-02-30T00:00:00Z"),
        json!("2026-11-24t03:06:58z"),
        json!("2026-11-24 03:06:58Z"),
        json!([]),
        json!([1, 2]),
        json!(["a"]),
        json!({}),
        json!({"bogus": 1}),
        json!(1),
        json!(3),
        json!(99),
    ];
    choices.choose(rng).expect("non-empty").clone()
}

fn snake(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Collects JSON pointers to every value.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                pointers(
                    x,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn mutate(v: &mut Value, rng: &mut StdRng, desc: &prost_reflect::MessageDescriptor) {
    let mut ptrs = Vec::new();
    pointers(v, String::new(), &mut ptrs);
    let at = ptrs.choose(rng).expect("root").clone();
    let Some(target) = v.pointer_mut(&at) else {
        return;
    };
    match rng.random_range(0..10) {
        0..=4 => *target = replacement(rng),
        5 => {
            if let Value::Object(m) = target {
                m.insert("bogusField".into(), replacement(rng));
            } else {
                *target = replacement(rng);
            }
        }
        6 => {
            // Duplicate a key under its proto (snake_case) name.
            if let Value::Object(m) = target
                && let Some(k) = m.keys().find(|k| snake(k) != **k).cloned()
            {
                let val = m[&k].clone();
                if rng.random_bool(0.5) {
                    m.remove(&k);
                }
                m.insert(snake(&k), val);
            }
        }
        7 => {
            // Set a second member of a oneof at the root.
            if let Value::Object(m) = target {
                if at.is_empty() {
                    for o in desc.oneofs().filter(|o| !o.is_synthetic()) {
                        for f in o.fields() {
                            m.entry(f.json_name().to_owned())
                                .or_insert_with(|| replacement(rng));
                        }
                    }
                } else if let Some(k) = m.keys().next().cloned() {
                    m.remove(&k);
                }
            }
        }
        8 => *target = json!([target.clone()]),
        _ => {
            if let Value::Object(m) = target
                && let Some(k) = m.keys().next().cloned()
            {
                m.remove(&k);
            }
        }
    }
}

fn schema_verdict(name: &str, v: &Value) -> bool {
    hearthnet_sdk::validate::validator(name)
        .expect("validator")
        .is_valid(v)
}

fn decoder_verdict(name: &str, v: &Value) -> bool {
    hearthnet_sdk::json::json_to_proto_bytes(name, &v.to_string()).is_ok()
}

/// Replaces integral floats (`1.0`) by integers.
fn without_integral_floats(v: &Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => json!(f as i64),
            _ => v.clone(),
        },
        Value::Array(a) => Value::Array(a.iter().map(without_integral_floats).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), without_integral_floats(x)))
                .collect(),
        ),
        _ => v.clone(),
    }
}

/// Drops members whose value is `null`.
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, x)| !x.is_null())
                .map(|(k, x)| (k.clone(), without_nulls(x)))
                .collect(),
        ),
        _ => v.clone(),
    }
}

fn has_impossible_date(v: &Value) -> bool {
    match v {
        Value::String(s) => {
            s.len() >= 20
                && s.as_bytes().get(4) == Some(&b'-')
                && s.as_bytes().get(10) == Some(&b'T')
                && hearthnet_sdk::wkt::Timestamp::parse(s).is_err()
        }
        Value::Array(a) => a.iter().any(has_impossible_date),
        Value::Object(m) => m.values().any(has_impossible_date),
        _ => false,
    }
}

/// The documented class of a disagreement, if any.
fn classify(name: &str, v: &Value, schema: bool) -> Option<&'static str> {
    let agrees = |x: &Value| schema_verdict(name, x) == decoder_verdict(name, x);
    if schema && agrees(&without_integral_floats(v)) {
        return Some("integral-float");
    }
    if agrees(&without_nulls(v)) {
        return Some("null-member-order");
    }
    if schema && has_impossible_date(v) {
        return Some("impossible-calendar-date");
    }
    None
}

#[test]
fn schema_and_decoder_agree() {
    let messages = common::messages();
    let mut rng = common::rng(0x4845_4152_5448);
    let mut corpus = Vec::new();
    let mut agree = 0usize;
    let mut classes: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut unexplained = Vec::new();
    let (mut valid_count, mut invalid_count) = (0usize, 0usize);
    for i in 0..INSTANCES {
        let desc = &messages[i % messages.len()];
        let name = desc.full_name();
        let mut v = common::random_json(desc, &mut rng);
        let mutations = rng.random_range(0..=3);
        for _ in 0..mutations {
            mutate(&mut v, &mut rng, desc);
        }
        let s = schema_verdict(name, &v);
        let d = decoder_verdict(name, &v);
        if s {
            valid_count += 1
        } else {
            invalid_count += 1
        }
        if s == d {
            agree += 1;
        } else {
            match classify(name, &v, s) {
                Some(c) => *classes.entry(c).or_default() += 1,
                None => unexplained.push(format!("{name}: schema={s} decoder={d}: {v}")),
            }
        }
        corpus.push(json!({"message": name, "instance": v, "schema_valid": s, "decoder_valid": d}));
    }
    let rate = agree as f64 / INSTANCES as f64 * 100.0;
    println!(
        "differential: {INSTANCES} instances ({valid_count} schema-valid, {invalid_count} schema-invalid), agreement {agree}/{INSTANCES} = {rate:.2}%, documented disagreements {classes:?}"
    );
    if let Ok(path) = std::env::var("HEARTHNET_CORPUS_OUT") {
        std::fs::write(&path, serde_json::to_string(&corpus).expect("json")).expect("write corpus");
    }
    assert!(
        valid_count > INSTANCES / 5 && invalid_count > INSTANCES / 5,
        "corpus must mix valid and invalid instances"
    );
    assert!(
        unexplained.is_empty(),
        "{} unexplained disagreements:\n{}",
        unexplained.len(),
        unexplained
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
