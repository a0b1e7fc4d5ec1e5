//! Fault injection for the conformance suite's mutant self-test.
//!
//! `HEARTHNET_TEST_FAULTS=name,name…` makes `hearthnet run` break one or more
//! protocol rules on purpose, so that `conformance/mutants/run.sh` can check
//! that the suite notices each one. Only debug builds honour it; a release
//! build refuses to start when it is set. An unknown name is a start-up error,
//! and every active fault is logged at `error` level.

use std::sync::OnceLock;

/// The environment variable naming the faults to inject.
pub const ENV: &str = "HEARTHNET_TEST_FAULTS";

/// One deliberate protocol violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A call whose signature does not verify is served as if it did.
    AcceptBadSignature,
    /// The replay window is not kept: a request id may be used twice.
    SkipReplayCheck,
    /// A call's timestamp is not compared with the clock.
    IgnoreTimestamp,
    /// An unknown capability ends with `bad_request` instead of `not_found`.
    WrongErrorCode,
    /// Capabilities are served to callers below their `min_trust`.
    SkipTrustCheck,
    /// A call naming another community is treated as this community's.
    AcceptForeignCommunity,
    /// A wrong `schema_hash` is served instead of refused.
    IgnoreSchemaHash,
    /// JSON payloads are not checked against the request schema, and a body
    /// that does not decode is served as an empty request.
    SkipJsonValidation,
    /// Payloads above `BUS_MAX_PAYLOAD_BYTES` are accepted.
    NoPayloadLimit,
    /// Streams end without their final `done` frame.
    DropFinalDone,
    /// The `done` frame's signature has one bit flipped.
    CorruptDoneSignature,
    /// `event.sync.fetch` leaves out the last event it should send.
    DropSyncedEvent,
    /// `event.sync.push` stores events whose signature does not verify.
    AcceptForgedEvents,
    /// The node makes a new key on every start instead of loading its own.
    NewIdentityOnRestart,
    /// A call's capability token is not looked at.
    IgnoreTokens,
    /// `discovery.static_peers` are never contacted.
    IgnoreStaticPeers,
}

/// Every fault with its name in `HEARTHNET_TEST_FAULTS`.
pub const ALL: [(Fault, &str); 16] = [
    (Fault::AcceptBadSignature, "accept_bad_signature"),
    (Fault::SkipReplayCheck, "skip_replay_check"),
    (Fault::IgnoreTimestamp, "ignore_timestamp"),
    (Fault::WrongErrorCode, "wrong_error_code"),
    (Fault::SkipTrustCheck, "skip_trust_check"),
    (Fault::AcceptForeignCommunity, "accept_foreign_community"),
    (Fault::IgnoreSchemaHash, "ignore_schema_hash"),
    (Fault::SkipJsonValidation, "skip_json_validation"),
    (Fault::NoPayloadLimit, "no_payload_limit"),
    (Fault::DropFinalDone, "drop_final_done"),
    (Fault::CorruptDoneSignature, "corrupt_done_signature"),
    (Fault::DropSyncedEvent, "drop_synced_event"),
    (Fault::AcceptForgedEvents, "accept_forged_events"),
    (Fault::NewIdentityOnRestart, "new_identity_on_restart"),
    (Fault::IgnoreTokens, "ignore_tokens"),
    (Fault::IgnoreStaticPeers, "ignore_static_peers"),
];

/// Why `HEARTHNET_TEST_FAULTS` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FaultError {
    /// A name that is not in [`ALL`].
    #[error("{ENV}: unknown fault `{0}` (known: {known})", known = names())]
    Unknown(String),
    /// The variable is set in a release build.
    #[error("{ENV} is set, but fault injection exists only in debug builds")]
    ReleaseBuild,
}

static ACTIVE: OnceLock<Vec<Fault>> = OnceLock::new();

fn names() -> String {
    ALL.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
}

/// Parses a comma-separated list of fault names (blanks ignored).
pub fn parse(list: &str) -> Result<Vec<Fault>, FaultError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            ALL.iter()
                .find(|(_, n)| *n == name)
                .map(|(f, _)| *f)
                .ok_or_else(|| FaultError::Unknown(name.to_string()))
        })
        .collect()
}

/// Reads [`ENV`] once at start-up and activates its faults for this process.
pub fn init_from_env() -> Result<(), FaultError> {
    let Ok(list) = std::env::var(ENV) else {
        return Ok(());
    };
    let faults = parse(&list)?;
    if faults.is_empty() {
        return Ok(());
    }
    if !cfg!(debug_assertions) {
        return Err(FaultError::ReleaseBuild);
    }
    for f in &faults {
        tracing::error!(fault = ?f, "INJECTED FAULT: this node breaks the protocol on purpose");
    }
    let _ = ACTIVE.set(faults);
    Ok(())
}

/// Whether `fault` is active (always false in release builds).
#[inline]
pub fn on(fault: Fault) -> bool {
    cfg!(debug_assertions) && ACTIVE.get().is_some_and(|a| a.contains(&fault))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_unknown_ones_are_refused() {
        assert_eq!(
            parse(" drop_final_done, ,skip_replay_check").unwrap(),
            vec![Fault::DropFinalDone, Fault::SkipReplayCheck]
        );
        assert_eq!(parse("").unwrap(), vec![]);
        let e = parse("drop_final_done,nope").unwrap_err();
        assert_eq!(e, FaultError::Unknown("nope".into()));
        assert!(e.to_string().contains("accept_bad_signature"), "{e}");
        // Every name is distinct and parses back to its fault.
        for (f, n) in ALL {
            assert_eq!(parse(n).unwrap(), vec![f]);
        }
    }

    #[test]
    fn the_mutant_script_injects_every_fault() {
        let list = include_str!("../../conformance/mutants/faults.txt");
        let script: Vec<&str> = list
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let all: Vec<&str> = ALL.iter().map(|(_, n)| *n).collect();
        assert_eq!(script, all);
    }

    #[test]
    fn nothing_is_active_unless_initialised() {
        assert!(ALL.iter().all(|(f, _)| !on(*f)));
    }
}
