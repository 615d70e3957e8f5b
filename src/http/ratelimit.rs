//! Rate limiting: token buckets, one set per core, no lock shared between
//! cores on the hot path.
//!
//! * **Global** (`RATE_LIMIT_GLOBAL`, requests/s): each of the N cores gets
//!   1/N of the rate and of the burst. The kernel spreads connections over
//!   cores, so under load the sum holds; a single connection can use only
//!   its core's share.
//! * **Per client IP** (`RATE_LIMIT_PER_IP`, requests/s): each core keeps its
//!   own bucket per IP with the full rate, so one client is held to the limit
//!   on every core and to at most N× the limit overall. This errs towards
//!   serving a legitimate sender whose connections land on several cores.
//!
//! Buckets hold one second of tokens (the burst), and never less than one
//! token: a global limit below the number of cores would otherwise give
//! each core a bucket that can never pay for a request. The per-IP table is
//! bounded: past [`MAX_TRACKED_IPS`] entries, idle clients (full buckets) are
//! dropped, at most one sweep per second; if every tracked client is active,
//! a new client is not tracked and only the global limit applies to it.
//! Clients are keyed by [`client_key`]: an IPv6 client by its /64.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use super::proxy::client_key;

/// Most client IPs a core tracks before forgetting idle ones.
pub const MAX_TRACKED_IPS: usize = 100_000;

/// What the limiter decided, with what the `x-ratelimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// `x-ratelimit-limit`: the tightest bucket's capacity.
    pub limit: u64,
    /// `x-ratelimit-remaining`: whole tokens left in it.
    pub remaining: u64,
    /// `x-ratelimit-reset` (and `Retry-After` when refused): seconds until it
    /// has a token again (refused) or is full again (allowed), at least 1.
    pub reset_secs: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(capacity: f64, now: Instant) -> Self {
        Self { tokens: capacity, at: now }
    }

    fn refill(&mut self, rate: f64, capacity: f64, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(capacity);
        self.at = now;
    }
}

/// One core's limiter.
#[derive(Debug)]
pub struct RateLimiter {
    global: Option<(f64, Bucket)>,
    per_ip_rate: Option<f64>,
    per_ip: HashMap<IpAddr, Bucket>,
    next_sweep: Instant,
}

impl RateLimiter {
    /// `global` and `per_ip` in requests/s (0 = off), for one of `cores` cores.
    pub fn new(global: u64, per_ip: u64, cores: usize) -> Self {
        let now = Instant::now();
        let global = (global > 0).then(|| {
            let rate = global as f64 / cores.max(1) as f64;
            (rate, Bucket::full(rate.max(1.0), now))
        });
        let per_ip_rate = (per_ip > 0).then_some(per_ip as f64);
        Self { global, per_ip_rate, per_ip: HashMap::new(), next_sweep: now }
    }

    /// Takes a token for `ip` if both buckets have one.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Decision {
        let ip = client_key(ip);
        let mut decision = Decision { allowed: true, limit: u64::MAX, remaining: u64::MAX, reset_secs: 1 };
        let mut take: [Option<&mut Bucket>; 2] = [None, None];
        let mut rates = [0.0f64; 2];
        if let Some((rate, bucket)) = &mut self.global {
            bucket.refill(*rate, rate.max(1.0), now);
            rates[0] = *rate;
            take[0] = Some(bucket);
        }
        if let Some(rate) = self.per_ip_rate {
            let full = self.per_ip.len() >= MAX_TRACKED_IPS && !self.per_ip.contains_key(&ip);
            if full && now >= self.next_sweep {
                // Forget clients whose bucket has refilled: they were idle.
                self.next_sweep = now + std::time::Duration::from_secs(1);
                self.per_ip.retain(|_, b| {
                    let mut b = *b;
                    b.refill(rate, rate, now);
                    b.tokens < rate
                });
            }
            if self.per_ip.len() < MAX_TRACKED_IPS || self.per_ip.contains_key(&ip) {
                let bucket = self.per_ip.entry(ip).or_insert_with(|| Bucket::full(rate, now));
                bucket.refill(rate, rate, now);
                rates[1] = rate;
                take[1] = Some(bucket);
            }
        }
        for (bucket, rate) in take.iter().zip(rates) {
            let Some(bucket) = bucket else { continue };
            let capacity = rate.max(1.0);
            let remaining = bucket.tokens.floor().max(0.0) as u64;
            if (capacity as u64) < decision.limit || remaining < decision.remaining {
                decision.limit = decision.limit.min(capacity as u64);
                decision.remaining = decision.remaining.min(remaining);
            }
            if bucket.tokens < 1.0 {
                decision.allowed = false;
                let wait = ((1.0 - bucket.tokens) / rate).ceil() as u64;
                decision.reset_secs = decision.reset_secs.max(wait.max(1));
            }
        }
        if decision.allowed {
            for (bucket, rate) in take.into_iter().zip(rates) {
                if let Some(bucket) = bucket {
                    bucket.tokens -= 1.0;
                    let refill = ((rate.max(1.0) - bucket.tokens) / rate).ceil() as u64;
                    decision.reset_secs = decision.reset_secs.max(refill.max(1));
                }
            }
            decision.remaining = decision.remaining.saturating_sub(1);
        }
        decision
    }

    /// Whether any limit is on.
    pub fn enabled(&self) -> bool {
        self.global.is_some() || self.per_ip_rate.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_client_gets_its_burst_then_waits_for_refill() {
        let mut rl = RateLimiter::new(0, 5, 1);
        let t0 = Instant::now();
        let decisions: Vec<Decision> = (0..6).map(|_| rl.check(ip(1), t0)).collect();
        assert!(decisions[..5].iter().all(|d| d.allowed));
        assert_eq!(decisions[0].limit, 5);
        assert_eq!(decisions[0].remaining, 4);
        assert_eq!(decisions[4].remaining, 0);
        assert!(!decisions[5].allowed);
        assert_eq!(decisions[5].reset_secs, 1);
        assert!(rl.check(ip(2), t0).allowed, "another client has its own bucket");
        assert!(rl.check(ip(1), t0 + Duration::from_millis(250)).allowed, "a token refilled after 1/5 s");
    }

    #[test]
    fn the_global_limit_is_split_across_cores() {
        let mut rl = RateLimiter::new(10, 0, 2);
        let t0 = Instant::now();
        let allowed = (0..10).filter(|i| rl.check(ip(*i as u8), t0).allowed).count();
        assert_eq!(allowed, 5, "this core's share of the burst");
    }

    #[test]
    fn a_global_limit_below_the_core_count_still_serves() {
        // 1 request/s over 4 cores: each core may serve one now and one
        // every 4 s, not refuse forever.
        let mut rl = RateLimiter::new(1, 0, 4);
        let t0 = Instant::now();
        assert!(rl.check(ip(1), t0).allowed);
        assert!(!rl.check(ip(1), t0 + Duration::from_secs(1)).allowed);
        assert!(rl.check(ip(1), t0 + Duration::from_secs(4)).allowed);
    }

    #[test]
    fn an_ipv6_client_rotating_addresses_in_its_64_is_one_client() {
        let mut rl = RateLimiter::new(0, 3, 1);
        let t0 = Instant::now();
        let allowed = (0..6u16)
            .filter(|i| rl.check(IpAddr::from([0x2001, 0xdb8, 0, 1, *i, 0, 0, 1]), t0).allowed)
            .count();
        assert_eq!(allowed, 3);
        assert!(rl.check(IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]), t0).allowed, "another /64");
    }

    #[test]
    fn off_means_off() {
        let mut rl = RateLimiter::new(0, 0, 1);
        assert!(!rl.enabled());
        assert!((0..10_000).all(|_| rl.check(ip(1), Instant::now()).allowed));
    }

    #[test]
    fn the_ip_table_stays_bounded_and_forgets_idle_clients() {
        let mut rl = RateLimiter::new(0, 10, 1);
        let t0 = Instant::now() + Duration::from_secs(2);
        for i in 0..(MAX_TRACKED_IPS as u32 + 10) {
            assert!(rl.check(IpAddr::from(i.to_be_bytes()), t0).allowed);
        }
        assert_eq!(rl.per_ip.len(), MAX_TRACKED_IPS, "all active: new clients are not tracked");
        // A second later every bucket has refilled: the next new client sweeps them out.
        let later = t0 + Duration::from_secs(2);
        assert!(rl.check(ip(250), later).allowed);
        assert_eq!(rl.per_ip.len(), 1);
    }
}
