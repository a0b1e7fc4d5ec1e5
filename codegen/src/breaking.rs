//! `hearthnet-codegen breaking --against OLD`: wire, JSON and capability-level
//! breaking changes between an old descriptor set and the current protocol.
//!
//! Within a major version only additions are allowed (DESIGN.md §3). Checked:
//! removed message/enum/field/enum value, renumbered field, changed field type
//! or cardinality, changed `json_name`, renamed enum value (enum names are the
//! JSON form), moved field into or out of a oneof, removed capability, changed
//! streaming shape, changed request/response type, lowered minor version.

use std::collections::BTreeMap;

use prost_reflect::{FieldDescriptor, Kind};

use crate::Protocol;

/// One breaking change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Rule id, e.g. `FIELD_REMOVED`.
    pub rule: &'static str,
    /// Element affected.
    pub element: String,
    /// What changed.
    pub message: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.element, self.rule, self.message)
    }
}

fn kind_id(k: &Kind) -> String {
    match k {
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => e.full_name().to_owned(),
        other => format!("{other:?}").to_ascii_lowercase(),
    }
}

fn cardinality(f: &FieldDescriptor) -> &'static str {
    if f.is_map() {
        "map"
    } else if f.is_list() {
        "repeated"
    } else {
        "singular"
    }
}

fn oneof_of(f: &FieldDescriptor) -> Option<String> {
    f.containing_oneof()
        .filter(|o| !o.is_synthetic())
        .map(|o| o.name().to_owned())
}

/// Lists every breaking change from `old` to `new`; empty means compatible.
pub fn breaking(old: &Protocol, new: &Protocol) -> Vec<Change> {
    let mut out = Vec::new();
    let mut push = |rule: &'static str, element: String, message: String| {
        out.push(Change {
            rule,
            element,
            message,
        });
    };
    for om in old.messages() {
        let Some(nm) = new.pool().get_message_by_name(om.full_name()) else {
            push(
                "MESSAGE_REMOVED",
                om.full_name().to_owned(),
                "message removed".into(),
            );
            continue;
        };
        for of in om.fields() {
            let el = of.full_name().to_owned();
            match nm.get_field(of.number()) {
                None => {
                    if let Some(moved) = nm.get_field_by_name(of.name()) {
                        push(
                            "FIELD_RENUMBERED",
                            el,
                            format!("field number {} -> {}", of.number(), moved.number()),
                        );
                    } else {
                        push(
                            "FIELD_REMOVED",
                            el,
                            format!("field {} removed", of.number()),
                        );
                    }
                }
                Some(nf) => {
                    if kind_id(&of.kind()) != kind_id(&nf.kind()) {
                        push(
                            "FIELD_TYPE_CHANGED",
                            el.clone(),
                            format!("type {} -> {}", kind_id(&of.kind()), kind_id(&nf.kind())),
                        );
                    }
                    if cardinality(&of) != cardinality(&nf) {
                        push(
                            "FIELD_CARDINALITY_CHANGED",
                            el.clone(),
                            format!("{} -> {}", cardinality(&of), cardinality(&nf)),
                        );
                    }
                    if of.json_name() != nf.json_name() {
                        push(
                            "FIELD_JSON_NAME_CHANGED",
                            el.clone(),
                            format!("json name `{}` -> `{}`", of.json_name(), nf.json_name()),
                        );
                    } else if of.name() != nf.name() {
                        push(
                            "FIELD_NAME_CHANGED",
                            el.clone(),
                            format!(
                                "name `{}` -> `{}` (proto field names are accepted in JSON)",
                                of.name(),
                                nf.name()
                            ),
                        );
                    }
                    if oneof_of(&of) != oneof_of(&nf) {
                        push(
                            "FIELD_ONEOF_CHANGED",
                            el,
                            format!("oneof {:?} -> {:?}", oneof_of(&of), oneof_of(&nf)),
                        );
                    }
                }
            }
        }
    }
    for oe in old
        .pool()
        .all_enums()
        .filter(|e| e.full_name().starts_with(crate::PACKAGE_PREFIX))
    {
        let Some(ne) = new.pool().get_enum_by_name(oe.full_name()) else {
            push(
                "ENUM_REMOVED",
                oe.full_name().to_owned(),
                "enum removed".into(),
            );
            continue;
        };
        for ov in oe.values() {
            match ne.get_value(ov.number()) {
                None => push(
                    "ENUM_VALUE_REMOVED",
                    ov.full_name().to_owned(),
                    format!("value {} removed", ov.number()),
                ),
                Some(nv) if nv.name() != ov.name() => push(
                    "ENUM_VALUE_RENAMED",
                    ov.full_name().to_owned(),
                    format!(
                        "`{}` -> `{}` (enum names are the JSON form)",
                        ov.name(),
                        nv.name()
                    ),
                ),
                Some(_) => {}
            }
        }
    }
    let new_caps: BTreeMap<(String, String), crate::Capability> = new
        .capabilities()
        .into_iter()
        .map(|c| ((c.name.clone(), major(&c.version)), c))
        .collect();
    for oc in old.capabilities() {
        let key = (oc.name.clone(), major(&oc.version));
        let el = format!("{}@{}", oc.name, oc.version);
        let Some(nc) = new_caps.get(&key) else {
            push("CAPABILITY_REMOVED", el, "capability removed".into());
            continue;
        };
        if oc.streaming != nc.streaming {
            push(
                "CAPABILITY_STREAMING_CHANGED",
                el.clone(),
                format!("{} -> {}", oc.streaming, nc.streaming),
            );
        }
        if oc.request != nc.request || oc.response != nc.response {
            push(
                "CAPABILITY_TYPES_CHANGED",
                el.clone(),
                format!(
                    "{} / {} -> {} / {}",
                    oc.request, oc.response, nc.request, nc.response
                ),
            );
        }
        if minor(&nc.version) < minor(&oc.version) {
            push(
                "CAPABILITY_VERSION_LOWERED",
                el,
                format!("version -> {}", nc.version),
            );
        }
    }
    out
}

fn major(v: &str) -> String {
    v.split('.').next().unwrap_or_default().to_owned()
}

fn minor(v: &str) -> u32 {
    v.split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}
