//! Per-provider health: a ring buffer of recent outcomes, latency
//! percentiles and quarantine with a minimum sample count (decision 0040).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hearthnet_sdk::constants as k;

/// Health of one provider entry.
#[derive(Debug, Clone)]
pub struct Health {
    window: VecDeque<(bool, u32)>,
    cap: usize,
    min_samples: usize,
    threshold: f64,
    quarantine: Duration,
    quarantined_until: Option<Instant>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(
            k::HEALTH_WINDOW_CALLS as usize,
            k::HEALTH_MIN_SAMPLES as usize,
            k::HEALTH_QUARANTINE_THRESHOLD,
            Duration::from_secs(k::HEALTH_QUARANTINE_SECONDS as u64),
        )
    }
}

impl Health {
    /// A tracker with explicit parameters.
    pub fn new(cap: usize, min_samples: usize, threshold: f64, quarantine: Duration) -> Self {
        Self {
            window: VecDeque::with_capacity(cap),
            cap: cap.max(1),
            min_samples,
            threshold,
            quarantine,
            quarantined_until: None,
        }
    }

    /// Records one outcome; returns `true` when it put the provider in quarantine.
    pub fn record(&mut self, ok: bool, latency_ms: u32, now: Instant) -> bool {
        self.expire(now);
        if self.window.len() == self.cap {
            self.window.pop_front();
        }
        self.window.push_back((ok, latency_ms));
        if self.quarantined_until.is_none()
            && self.window.len() >= self.min_samples
            && self.success_rate() < self.threshold
        {
            self.quarantined_until = Some(now + self.quarantine);
            return true;
        }
        false
    }

    fn expire(&mut self, now: Instant) {
        if self.quarantined_until.is_some_and(|t| t <= now) {
            self.quarantined_until = None;
            self.window.clear();
        }
    }

    /// Whether the provider is in quarantine at `now`.
    pub fn is_quarantined(&mut self, now: Instant) -> bool {
        self.expire(now);
        self.quarantined_until.is_some()
    }

    /// Fraction of successes in the window (1.0 when empty).
    pub fn success_rate(&self) -> f64 {
        if self.window.is_empty() {
            return 1.0;
        }
        let ok = self.window.iter().filter(|(ok, _)| *ok).count();
        ok as f64 / self.window.len() as f64
    }

    /// Median latency of successful calls, if any.
    pub fn p50_ms(&self) -> Option<u32> {
        let mut v: Vec<u32> = self
            .window
            .iter()
            .filter(|(ok, _)| *ok)
            .map(|(_, ms)| *ms)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        Some(v[v.len() / 2])
    }

    /// Number of outcomes in the window.
    pub fn samples(&self) -> usize {
        self.window.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failure_does_not_quarantine() {
        let mut h = Health::default();
        let now = Instant::now();
        assert!(!h.record(false, 5, now));
        assert!(!h.is_quarantined(now));
    }

    #[test]
    fn quarantine_needs_min_samples_and_low_rate() {
        let mut h = Health::new(100, 10, 0.5, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..9 {
            assert!(!h.record(false, 1, now), "sample {i}");
        }
        assert!(h.record(false, 1, now), "10th failure quarantines");
        assert!(h.is_quarantined(now));
        assert!(!h.is_quarantined(now + Duration::from_secs(61)));
        assert_eq!(h.samples(), 0, "window cleared after quarantine");
    }

    #[test]
    fn healthy_rate_never_quarantines() {
        let mut h = Health::new(100, 10, 0.5, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..200 {
            assert!(!h.record(i % 3 != 0, 3, now));
        }
        assert!((h.success_rate() - 0.67).abs() < 0.02);
        assert_eq!(h.p50_ms(), Some(3));
    }
}
