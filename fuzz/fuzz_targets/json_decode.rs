//! JSON bodies from the HTTP edge: schema validation and decoding never panic.
#![no_main]

use hearthnet_sdk::validate::{self, Direction};
use libfuzzer_sys::fuzz_target;

const CAPS: &[&str] = &["llm.chat", "embed.text", "file.put", "market.post", "auth.token.issue"];

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let cap = CAPS[first as usize % CAPS.len()];
    let _ = validate::validate_json(cap, Direction::Request, text);
    if let Some(c) = hearthnet_sdk::registry::capability(cap) {
        let _ = hearthnet_sdk::json::json_to_proto_bytes(c.request, text);
    }
});
