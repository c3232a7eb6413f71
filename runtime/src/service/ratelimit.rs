//! Per-identity rate limits: a token bucket per authenticated identity.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

pub use crate::policy::service::RateLimit;

/// The buckets of every identity seen.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    /// Its `limiter` label in `airlock_rate_limited_total`.
    label: &'static str,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Most identities tracked; beyond it, the stalest buckets are dropped (a
/// dropped bucket refills to full, which only ever favours the caller).
const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    /// A limiter whose refusals are counted under `label`.
    pub fn new(limit: RateLimit, label: &'static str) -> RateLimiter {
        RateLimiter {
            limit,
            label,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one token for `identity`; `Err(seconds)` to wait when empty.
    pub fn take(&self, identity: &str) -> Result<(), f64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(identity) {
            let horizon = self.limit.burst / self.limit.per_second.max(f64::MIN_POSITIVE);
            buckets.retain(|_, (_, at)| now.duration_since(*at).as_secs_f64() < horizon);
        }
        let (tokens, at) = buckets.entry(identity.to_string()).or_insert((self.limit.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.limit.per_second).min(self.limit.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            crate::metrics::rate_limited(self.label);
            Err((1.0 - *tokens) / self.limit.per_second.max(f64::MIN_POSITIVE))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_per_identity_and_refill() {
        let limiter = RateLimiter::new(
            RateLimit {
                per_second: 1000.0,
                burst: 2.0,
            },
            "test",
        );
        assert!(limiter.take("a").is_ok());
        assert!(limiter.take("a").is_ok());
        assert!(limiter.take("a").is_err());
        assert!(limiter.take("b").is_ok());
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(limiter.take("a").is_ok());
    }
}
