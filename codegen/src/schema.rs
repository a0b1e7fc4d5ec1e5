//! JSON Schemas (draft 2020-12) derived from message descriptors.
//!
//! The schemas describe exactly the canonical proto3 JSON mapping that the
//! SDK's decoder (pbjson) accepts, so that a schema verdict and a decoder
//! verdict agree (see `docs/differential.md` for the measured agreement):
//!
//! * field keys: the `json_name` (lowerCamelCase) or the proto name, never both;
//! * unknown keys are rejected (`additionalProperties: false`);
//! * 32-bit integers: JSON integers in range, or decimal strings in range;
//!   64-bit integers the same (strings keep full precision in JavaScript);
//! * `float`/`double`: numbers, or strings such as `"NaN"`, `"Infinity"`, `"1.5"`;
//! * `bytes`: standard or URL-safe base64, padding optional (one `=` after two
//!   symbols is accepted too, as the decoder does);
//! * enums: value names, or the numbers of known values;
//! * `null` only where the field has presence (messages, `optional`, oneof members);
//! * at most one member of a `oneof`;
//! * `google.protobuf.Timestamp`: RFC 3339 with `T` and `Z` or an offset.
//!
//! proto3 has no required fields, so no property is required.

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

/// `$schema` of every generated schema.
pub const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// Base64 (standard alphabet or URL-safe alphabet, canonical trailing bits;
/// padding optional, and the decoder also takes one `=` after two symbols).
pub const BASE64_PATTERN: &str = concat!(
    "^(?:(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw](?:==?)?|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=?)?",
    "|(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-][AQgw](?:==?)?|[A-Za-z0-9_-]{2}[AEIMQUYcgkosw048]=?)?)$"
);

/// A float written as a string.
pub const FLOAT_STRING_PATTERN: &str = "^[+-]?(?:[iI][nN][fF](?:[iI][nN][iI][tT][yY])?|[nN][aA][nN]|(?:[0-9]+(?:\\.[0-9]*)?|\\.[0-9]+)(?:[eE][+-]?[0-9]+)?)$";

/// RFC 3339 timestamp as used by proto3 JSON: years 0001-9999, days valid
/// for their month (29 February only in leap years), `T`, and `Z` or an offset.
pub const TIMESTAMP_PATTERN: &str = "^(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))T(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\\.[0-9]{1,9})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$|^(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[2468][048]|[13579][26]|0[48])00)-02-29T(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\\.[0-9]{1,9})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$";

/// Duration as used by proto3 JSON.
pub const DURATION_PATTERN: &str = "^-?[0-9]+(?:\\.[0-9]{1,9})?s$";

/// The standalone schema of a message: its own object schema plus `$defs` for
/// every message it reaches.
pub fn root_schema(msg: &MessageDescriptor, with_docs: bool) -> Value {
    let mut defs = Map::new();
    let mut g = Gen {
        defs: &mut defs,
        with_docs,
    };
    let body = g.message(msg);
    let mut out = Map::new();
    out.insert("$schema".into(), json!(DIALECT));
    out.insert(
        "$id".into(),
        json!(format!("urn:hearthnet:schema:{}", msg.full_name())),
    );
    if with_docs {
        out.insert("title".into(), json!(msg.full_name()));
    }
    if let Value::Object(b) = body {
        out.extend(b);
    }
    if !defs.is_empty() {
        out.insert("$defs".into(), Value::Object(defs));
    }
    Value::Object(out)
}

struct Gen<'a> {
    defs: &'a mut Map<String, Value>,
    with_docs: bool,
}

impl Gen<'_> {
    fn message(&mut self, msg: &MessageDescriptor) -> Value {
        if let Some(wkt) = well_known(msg.full_name()) {
            return wkt;
        }
        let mut props = Map::new();
        let mut exclusive: Vec<Value> = Vec::new();
        for f in msg.fields() {
            let mut s = self.field(&f);
            if self.with_docs {
                let doc = crate::comment(&f.parent_file(), f.path());
                if !doc.is_empty()
                    && let Value::Object(o) = &mut s
                {
                    o.insert("description".into(), json!(doc));
                }
            }
            props.insert(f.json_name().to_owned(), s.clone());
            if f.name() != f.json_name() {
                props.insert(f.name().to_owned(), s);
                exclusive.push(json!({"required": [f.json_name(), f.name()]}));
            }
        }
        for o in msg.oneofs().filter(|o| !o.is_synthetic()) {
            let names: Vec<String> = o.fields().flat_map(|f| names_of(&f)).collect();
            let members: Vec<FieldDescriptor> = o.fields().collect();
            for (i, a) in members.iter().enumerate() {
                for b in &members[i + 1..] {
                    for x in names_of(a) {
                        for y in names_of(b) {
                            exclusive.push(json!({"required": [x, y]}));
                        }
                    }
                }
            }
            let _ = names;
        }
        let mut s = Map::new();
        s.insert("type".into(), json!("object"));
        if self.with_docs {
            let doc = crate::comment(&msg.parent_file(), msg.path());
            if !doc.is_empty() {
                s.insert("description".into(), json!(doc));
            }
        }
        s.insert("properties".into(), Value::Object(props));
        s.insert("additionalProperties".into(), json!(false));
        if !exclusive.is_empty() {
            s.insert("not".into(), json!({"anyOf": exclusive}));
        }
        Value::Object(s)
    }

    fn field(&mut self, f: &FieldDescriptor) -> Value {
        if f.is_map() {
            let kind = f.kind();
            let Some(entry) = kind.as_message() else {
                return json!({});
            };
            let key = entry.map_entry_key_field();
            let value = self.kind(&entry.map_entry_value_field().kind());
            let mut s = json!({"type": "object", "additionalProperties": value});
            if let Some(p) = map_key_pattern(&key.kind()) {
                s["propertyNames"] = json!({"pattern": p});
            }
            return s;
        }
        let base = self.kind(&f.kind());
        if f.is_list() {
            json!({"type": "array", "items": base})
        } else if f.supports_presence() {
            // `null` clears a field with presence. Written as if/else rather
            // than anyOf so that violations inside the value keep their own
            // JSON pointers.
            json!({"if": {"type": "null"}, "else": base})
        } else {
            base
        }
    }

    fn kind(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => {
                json!({"type": "string", "contentEncoding": "base64", "pattern": BASE64_PATTERN})
            }
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                int_schema(i32::MIN as i128, i32::MAX as i128)
            }
            Kind::Uint32 | Kind::Fixed32 => int_schema(0, u32::MAX as i128),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                int_schema(i64::MIN as i128, i64::MAX as i128)
            }
            Kind::Uint64 | Kind::Fixed64 => int_schema(0, u64::MAX as i128),
            Kind::Float | Kind::Double => json!({"anyOf": [
                {"type": "number"},
                {"type": "string", "pattern": FLOAT_STRING_PATTERN}
            ]}),
            Kind::Enum(e) => {
                let mut vals: Vec<Value> = e.values().map(|v| json!(v.name())).collect();
                vals.extend(e.values().map(|v| json!(v.number())));
                json!({"enum": vals})
            }
            Kind::Message(m) => {
                if let Some(wkt) = well_known(m.full_name()) {
                    return wkt;
                }
                let key = m.full_name().to_owned();
                if !self.defs.contains_key(&key) {
                    self.defs.insert(key.clone(), Value::Bool(true)); // breaks recursion
                    let s = self.message(m);
                    self.defs.insert(key.clone(), s);
                }
                json!({"$ref": format!("#/$defs/{key}")})
            }
        }
    }
}

fn names_of(f: &FieldDescriptor) -> Vec<String> {
    if f.name() == f.json_name() {
        vec![f.name().to_owned()]
    } else {
        vec![f.json_name().to_owned(), f.name().to_owned()]
    }
}

fn well_known(name: &str) -> Option<Value> {
    Some(match name {
        "google.protobuf.Timestamp" => json!({"type": "string", "pattern": TIMESTAMP_PATTERN}),
        "google.protobuf.Duration" => json!({"type": "string", "pattern": DURATION_PATTERN}),
        "google.protobuf.Struct" => json!({"type": "object"}),
        "google.protobuf.Value" => json!(true),
        "google.protobuf.ListValue" => json!({"type": "array"}),
        "google.protobuf.Empty" => json!({"type": "object", "additionalProperties": false}),
        _ => return None,
    })
}

fn map_key_pattern(kind: &Kind) -> Option<String> {
    match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Some(int_string_pattern(i32::MIN as i128, i32::MAX as i128))
        }
        Kind::Uint32 | Kind::Fixed32 => Some(int_string_pattern(0, u32::MAX as i128)),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Some(int_string_pattern(i64::MIN as i128, i64::MAX as i128))
        }
        Kind::Uint64 | Kind::Fixed64 => Some(int_string_pattern(0, u64::MAX as i128)),
        Kind::Bool => Some("^(?:true|false)$".into()),
        _ => None,
    }
}

fn int_schema(min: i128, max: i128) -> Value {
    json!({"anyOf": [
        {"type": "integer", "minimum": num(min), "maximum": num(max)},
        {"type": "string", "pattern": int_string_pattern(min, max)}
    ]})
}

fn num(v: i128) -> Value {
    if v < 0 {
        json!(v as i64)
    } else {
        json!(v as u64)
    }
}

/// Regex for decimal strings (optional `+`, leading zeros allowed, as Rust's
/// `FromStr` accepts them) whose value lies in `min..=max`, `min <= 0 < max`.
pub fn int_string_pattern(min: i128, max: i128) -> String {
    let pos = le_regex(max as u128);
    if min < 0 {
        let neg = le_regex(min.unsigned_abs());
        format!("^(?:\\+?0*(?:{pos})|-0*(?:{neg}))$")
    } else {
        format!("^\\+?0*(?:{pos})$")
    }
}

/// Regex alternatives for decimal numbers without leading zeros that are `<= n`.
fn le_regex(n: u128) -> String {
    let d: Vec<u8> = n.to_string().bytes().map(|b| b - b'0').collect();
    let k = d.len();
    let mut alts = vec!["0".to_owned()];
    if k >= 2 {
        alts.push(if k == 2 {
            "[1-9]".to_owned()
        } else {
            format!("[1-9][0-9]{{0,{}}}", k - 2)
        });
    }
    let mut prefix = String::new();
    for (i, &c) in d.iter().enumerate() {
        let lower = if i == 0 { 1 } else { 0 };
        if c > lower {
            let class = if c - 1 == lower {
                format!("{lower}")
            } else {
                format!("[{lower}-{}]", c - 1)
            };
            let rest = k - i - 1;
            let tail = match rest {
                0 => String::new(),
                1 => "[0-9]".to_owned(),
                r => format!("[0-9]{{{r}}}"),
            };
            alts.push(format!("{prefix}{class}{tail}"));
        }
        prefix.push((b'0' + c) as char);
    }
    if n > 0 {
        alts.push(prefix);
    }
    alts.join("|")
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    fn check(min: i128, max: i128) {
        let re = Regex::new(&int_string_pattern(min, max)).expect("regex");
        let probes: Vec<i128> = vec![
            min - 1,
            min,
            min + 1,
            -1,
            0,
            1,
            9,
            10,
            99,
            100,
            max / 10,
            max / 2,
            max - 1,
            max,
            max + 1,
            max * 10,
            12345,
            4_000_000_000,
        ];
        for p in probes {
            let s = p.to_string();
            let inside = p >= min && p <= max;
            assert_eq!(re.is_match(&s), inside, "{s} in {min}..={max}");
        }
        assert!(re.is_match("+7") && re.is_match("007"));
        assert!(!re.is_match("1.0") && !re.is_match("") && !re.is_match(" 1"));
        assert_eq!(re.is_match("-0"), min < 0);
    }

    #[test]
    fn int_patterns_match_exact_ranges() {
        check(i32::MIN as i128, i32::MAX as i128);
        check(0, u32::MAX as i128);
        check(i64::MIN as i128, i64::MAX as i128);
        check(0, u64::MAX as i128);
        check(0, 200);
    }

    #[test]
    fn base64_pattern_accepts_canonical_only() {
        let re = Regex::new(BASE64_PATTERN).expect("regex");
        for ok in [
            "", "QQ", "QQ=", "QQ==", "QUI", "QUI=", "QUJD", "-_-_", "+/+/",
        ] {
            assert!(re.is_match(ok), "{ok}");
        }
        for bad in ["Q", "QR", "QUJ", "QQ===", "QUI==", "+_+_", "QUJD=", "a b"] {
            assert!(!re.is_match(bad), "{bad}");
        }
    }
}
