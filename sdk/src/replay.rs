//! Replay protection: a timestamp window and a bounded cache of request ids
//! (DESIGN.md §6: ±120 s; a repeated request id inside the window is refused).

use std::collections::{HashSet, VecDeque};

/// The accepted clock skew, in seconds, either way.
pub const REPLAY_WINDOW_SECONDS: i64 = crate::constants::REPLAY_WINDOW_SECONDS;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The request's timestamp is outside the window.
    #[error("timestamp is {skew_seconds} s away from our clock (window ±{window} s)")]
    OutsideWindow {
        /// Request time minus our time.
        skew_seconds: i64,
        /// The window.
        window: i64,
    },
    /// The request id was already seen inside the window.
    #[error("request id `{0}` was already used")]
    Replayed(String),
    /// The cache is full of unexpired ids: too many requests in one window.
    #[error("replay cache full ({0} ids in the window)")]
    CacheFull(usize),
}

impl ReplayError {
    /// The protocol error code for this refusal.
    pub fn code(&self) -> crate::proto::hearthnet::common::v1::ErrorCode {
        use crate::proto::hearthnet::common::v1::ErrorCode;
        match self {
            ReplayError::OutsideWindow { .. } => ErrorCode::Expired,
            ReplayError::Replayed(_) => ErrorCode::InvalidSignature,
            ReplayError::CacheFull(_) => ErrorCode::RateLimited,
        }
    }
}

/// Remembers request ids until they could no longer pass the window check.
/// Each id is kept as a 128-bit BLAKE3 digest (about 50 bytes per id with
/// the expiry queue), so a million ids fit in about 50 MB.
#[derive(Debug)]
pub struct ReplayGuard {
    window: i64,
    capacity: usize,
    seen: HashSet<u128>,
    order: VecDeque<(i64, u128)>,
}

fn digest(request_id: &str) -> u128 {
    let h = blake3::hash(request_id.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.as_bytes()[..16]);
    u128::from_le_bytes(b)
}

impl ReplayGuard {
    /// A guard with the protocol window and room for `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        Self::with_window(REPLAY_WINDOW_SECONDS, capacity)
    }

    /// A guard with a custom window (seconds).
    pub fn with_window(window: i64, capacity: usize) -> Self {
        ReplayGuard {
            window,
            capacity: capacity.max(1),
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Checks a request (its id and its Unix timestamp in seconds) at time `now`
    /// and remembers it when accepted.
    pub fn check(&mut self, request_id: &str, timestamp: i64, now: i64) -> Result<(), ReplayError> {
        let skew = timestamp.saturating_sub(now);
        if skew.abs() > self.window {
            return Err(ReplayError::OutsideWindow {
                skew_seconds: skew,
                window: self.window,
            });
        }
        while let Some((expiry, _)) = self.order.front() {
            if *expiry >= now {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.seen.remove(&id);
            }
        }
        let key = digest(request_id);
        if self.seen.contains(&key) {
            return Err(ReplayError::Replayed(request_id.to_owned()));
        }
        if self.seen.len() >= self.capacity {
            return Err(ReplayError::CacheFull(self.seen.len()));
        }
        // The id stays valid for the window after its timestamp.
        let expiry = timestamp.saturating_add(self.window);
        let pos = self.order.partition_point(|(e, _)| *e <= expiry);
        self.order.insert(pos, (expiry, key));
        self.seen.insert(key);
        Ok(())
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_and_replays() {
        let mut g = ReplayGuard::new(10);
        assert_eq!(g.check("a", 1000, 1000), Ok(()));
        assert_eq!(
            g.check("a", 1000, 1001),
            Err(ReplayError::Replayed("a".into()))
        );
        assert_eq!(
            g.check("b", 1121, 1000),
            Err(ReplayError::OutsideWindow {
                skew_seconds: 121,
                window: 120
            })
        );
        assert_eq!(g.check("b", 880, 1000), Ok(()));
        assert_eq!(
            g.check("c", 879, 1000).map_err(|e| e.code()),
            Err(crate::proto::hearthnet::common::v1::ErrorCode::Expired)
        );
        // After the window, "a" is forgotten; a replay of it would fail the window check anyway.
        assert_eq!(g.check("d", 1200, 1200), Ok(()));
        assert!(!g.seen.contains(&digest("a")) && !g.seen.contains(&digest("b")));
        assert!(
            matches!(
                g.check("a", 1000, 1200),
                Err(ReplayError::OutsideWindow { .. })
            ),
            "a forgotten id can only come back outside the window"
        );
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut g = ReplayGuard::new(3);
        for id in ["1", "2", "3"] {
            g.check(id, 0, 0).expect("fits");
        }
        assert_eq!(g.check("4", 0, 0), Err(ReplayError::CacheFull(3)));
        assert_eq!(g.len(), 3);
        assert_eq!(g.check("4", 200, 200), Ok(()), "expired ids make room");
    }
}
