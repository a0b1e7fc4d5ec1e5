//! `hearthnet-codegen lint`: our rules on top of `buf lint`.
//!
//! | rule | checks |
//! |---|---|
//! | `CAPABILITY_NAME` | capability names match `^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$` |
//! | `CAPABILITY_VERSION` | versions are `MAJOR.MINOR` |
//! | `CAPABILITY_REQUIRED` | every rpc outside `hearthnet.bus` carries a capability option |
//! | `CAPABILITY_FIELDS` | stability and minimum trust are set |
//! | `DECLARED_ERRORS` | declared error codes exist in `ErrorCode` |
//! | `DECLARED_EVENTS` | declared event types exist |
//! | `EVENT_NAME` | event types match the capability name pattern |
//! | `CLAUSE_ID` | clause ids look like `LLM-001` and are not reused by two capabilities |
//! | `ERROR_CODE_OPTIONS` | every `ErrorCode` value but 0 has a snake_case wire name, unique |
//! | `DOCUMENTED` | every message, field, enum, value, service and rpc has a leading comment |
//! | `ENUM_VALUE_RUST_KEYWORD` | no enum value ends in `_SELF` (pbjson would generate `Enum::Self`, which does not compile) |

use std::collections::BTreeMap;

use regex::Regex;

use crate::Protocol;

/// One lint finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `file:line:column` or element name.
    pub location: String,
    /// Rule id, e.g. `DOCUMENTED`.
    pub rule: &'static str,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.location, self.rule, self.message)
    }
}

/// The capability name pattern.
pub const CAPABILITY_NAME_PATTERN: &str = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$";

/// Runs every rule; an empty result means the protocol is clean.
pub fn lint(p: &Protocol) -> Vec<Finding> {
    let mut out = Vec::new();
    let name_re = Regex::new(CAPABILITY_NAME_PATTERN).expect("static regex");
    let version_re = Regex::new(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$").expect("static regex");
    let clause_re = Regex::new(r"^[A-Z][A-Z0-9]*-[0-9]{3}$").expect("static regex");
    let snake_re = Regex::new(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$").expect("static regex");
    let codes: Vec<String> = p.error_codes().into_iter().map(|c| c.wire_name).collect();
    let events: Vec<String> = p.events().into_iter().map(|e| e.event_type).collect();
    let mut push = |location: String, rule: &'static str, message: String| {
        out.push(Finding {
            location,
            rule,
            message,
        });
    };

    let caps = p.capabilities();
    let mut clause_owner: BTreeMap<String, String> = BTreeMap::new();
    for c in &caps {
        let loc = c.location.clone();
        if !name_re.is_match(&c.name) {
            push(
                loc.clone(),
                "CAPABILITY_NAME",
                format!("`{}` does not match {CAPABILITY_NAME_PATTERN}", c.name),
            );
        }
        if !version_re.is_match(&c.version) {
            push(
                loc.clone(),
                "CAPABILITY_VERSION",
                format!("{}: version `{}` is not MAJOR.MINOR", c.name, c.version),
            );
        }
        if c.stability.is_empty() || c.stability == "unspecified" {
            push(
                loc.clone(),
                "CAPABILITY_FIELDS",
                format!("{}: stability is not set", c.name),
            );
        }
        if c.min_trust.is_empty() || c.min_trust == "unspecified" {
            push(
                loc.clone(),
                "CAPABILITY_FIELDS",
                format!("{}: min_trust is not set", c.name),
            );
        }
        for e in &c.errors {
            if !codes.contains(e) {
                push(
                    loc.clone(),
                    "DECLARED_ERRORS",
                    format!("{}: unknown error code `{e}`", c.name),
                );
            }
        }
        for e in &c.events {
            if !events.contains(e) {
                push(
                    loc.clone(),
                    "DECLARED_EVENTS",
                    format!("{}: unknown event type `{e}`", c.name),
                );
            }
        }
        for cl in &c.clauses {
            if !clause_re.is_match(cl) {
                push(
                    loc.clone(),
                    "CLAUSE_ID",
                    format!("{}: clause id `{cl}` is not like `LLM-001`", c.name),
                );
            }
            if let Some(owner) = clause_owner.insert(cl.clone(), c.name.clone())
                && owner != c.name
            {
                push(
                    loc.clone(),
                    "CLAUSE_ID",
                    format!("{}: clause `{cl}` is also claimed by {owner}", c.name),
                );
            }
        }
    }
    for s in p
        .pool()
        .services()
        .filter(|s| s.full_name().starts_with(crate::PACKAGE_PREFIX))
    {
        if s.package_name().starts_with("hearthnet.bus.") {
            continue;
        }
        for m in s.methods() {
            if !caps
                .iter()
                .any(|c| c.service == s.full_name() && c.method == m.name())
            {
                push(
                    crate::location(&m.parent_file(), m.path()),
                    "CAPABILITY_REQUIRED",
                    format!("rpc {} has no capability option", m.full_name()),
                );
            }
        }
    }
    for e in p.events() {
        if !name_re.is_match(&e.event_type) {
            push(
                e.payload.clone(),
                "EVENT_NAME",
                format!(
                    "event type `{}` does not match {CAPABILITY_NAME_PATTERN}",
                    e.event_type
                ),
            );
        }
    }
    let mut wire_seen = BTreeMap::new();
    for c in p.error_codes() {
        if !snake_re.is_match(&c.wire_name) {
            push(
                c.enum_name.clone(),
                "ERROR_CODE_OPTIONS",
                format!("wire name `{}` is not snake_case", c.wire_name),
            );
        }
        if wire_seen
            .insert(c.wire_name.clone(), c.enum_name.clone())
            .is_some()
        {
            push(
                c.enum_name.clone(),
                "ERROR_CODE_OPTIONS",
                format!("wire name `{}` used twice", c.wire_name),
            );
        }
    }
    if let Some(e) = p.pool().get_enum_by_name(crate::registry::ERROR_ENUM) {
        let with_opts = p.error_codes().len();
        if with_opts + 1 < e.values().len() {
            push(
                e.full_name().to_owned(),
                "ERROR_CODE_OPTIONS",
                "every ErrorCode value except 0 needs an error_code option".into(),
            );
        }
    }

    // DOCUMENTED (and ENUM_VALUE_RUST_KEYWORD, collected on the way)
    let mut keyword_values = Vec::new();
    for f in p
        .pool()
        .files()
        .filter(|f| f.package_name().starts_with(crate::PACKAGE_PREFIX))
    {
        let mut check = |path: &[i32], what: String| {
            if crate::comment(&f, path).is_empty() {
                push(
                    crate::location(&f, path),
                    "DOCUMENTED",
                    format!("{what} has no doc comment"),
                );
            }
        };
        for m in p.messages().into_iter().filter(|m| m.parent_file() == f) {
            check(m.path(), format!("message {}", m.full_name()));
            for fd in m.fields() {
                check(fd.path(), format!("field {}", fd.full_name()));
            }
            for o in m.oneofs().filter(|o| !o.is_synthetic()) {
                check(o.path(), format!("oneof {}", o.full_name()));
            }
        }
        for e in p.pool().all_enums().filter(|e| e.parent_file() == f) {
            for v in e.values() {
                let prefix = format!(
                    "{}_",
                    heck::ToShoutySnakeCase::to_shouty_snake_case(e.name())
                );
                if v.name().strip_prefix(&prefix).unwrap_or(v.name()) == "SELF" {
                    keyword_values.push((crate::location(&f, v.path()), v.full_name().to_owned()));
                }
            }
            check(e.path(), format!("enum {}", e.full_name()));
            for v in e.values() {
                check(v.path(), format!("enum value {}", v.full_name()));
            }
        }
        for s in f.services() {
            check(s.path(), format!("service {}", s.full_name()));
            for m in s.methods() {
                check(m.path(), format!("rpc {}", m.full_name()));
            }
        }
    }
    for (location, name) in keyword_values {
        out.push(Finding {
            location,
            rule: "ENUM_VALUE_RUST_KEYWORD",
            message: format!(
                "{name}: a value named SELF becomes the Rust keyword `Self`; pick another word"
            ),
        });
    }
    out.sort_by(|a, b| a.location.cmp(&b.location).then(a.message.cmp(&b.message)));
    out
}
