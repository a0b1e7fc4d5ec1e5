//! Token and invite texts from the network: parsing and verification never panic.
#![no_main]

use hearthnet_sdk::{records, token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let revoked = token::RevocationList::new();
    if let Ok(t) = token::verify(text, 1_764_000_000, "ed25519:x", &revoked) {
        let _ = t.covers("rag.query", (1, 0), &Default::default());
    }
    let _ = records::verify_invite(text, 1_764_000_000);
    // Also as a token text with the right scheme.
    let _ = token::verify(&format!("{}{text}", token::TOKEN_SCHEME), 0, "", &revoked);
});
