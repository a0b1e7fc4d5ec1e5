//! Signed envelopes and manifests from the network: decoding and verification never panic.
#![no_main]

use hearthnet_sdk::proto::hearthnet::identity::v1::SignedEnvelope;
use hearthnet_sdk::{identity, records};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = SignedEnvelope::decode(data) {
        let _ = records::verify_node_manifest(&env, 1_764_000_000);
        let _ = records::verify_community_manifest(&env);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<identity::NodeId>();
        let _ = text.parse::<identity::Cid>();
        let _ = text.parse::<identity::SignatureBytes>();
    }
});
