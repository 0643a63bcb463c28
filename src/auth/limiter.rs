//! Login limits: failed logins are rate limited per source address and per identity (the user name the client
//! logs in with), by token buckets; and, when configured, logins per tenant per second.
//!
//! Only failures take from the per-address and per-identity buckets, so a deploy storm of valid logins is never
//! slowed, while a brute force gets its burst and then a few attempts per second. A limited client is refused
//! before its token is even asked for. Buckets exist only for keys that failed; the maps are bounded by
//! [`LoginLimits::max_buckets`] with two generations: a bucket untouched for a whole generation is dropped
//! (an idle bucket refills to full, so forgetting it changes nothing but memory).

use serde::Deserialize;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The `[login]` section of the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginLimits {
    /// Failed logins a source address may make at once (default 20); 0: no limit per address.
    pub failures_burst_per_address: u32,
    /// Failed logins per second an address gets back (default 2).
    pub failures_per_sec_per_address: f64,
    /// Failed logins one identity (startup user name) may have at once, from any address (default 20); 0: no limit.
    pub failures_burst_per_identity: u32,
    /// Failed logins per second an identity gets back (default 1).
    pub failures_per_sec_per_identity: f64,
    /// Logins per second per tenant (successful ones); 0 (default): no limit.
    pub tenant_logins_per_sec: f64,
    /// Logins a tenant may make at once when `tenant_logins_per_sec` is set; 0 (default): one second's worth.
    pub tenant_logins_burst: u32,
    /// Buckets remembered per kind (addresses, identities, tenants) at most (default 100000).
    pub max_buckets: usize,
    /// Refused logins kept for `SHOW LOGINS` (default 200).
    pub recent_refusals: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            failures_burst_per_address: 20,
            failures_per_sec_per_address: 2.0,
            failures_burst_per_identity: 20,
            failures_per_sec_per_identity: 1.0,
            tenant_logins_per_sec: 0.0,
            tenant_logins_burst: 0,
            max_buckets: 100_000,
            recent_refusals: 200,
        }
    }
}

impl LoginLimits {
    /// The settings that make no sense, as a message.
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            (
                "login.failures_per_sec_per_address",
                self.failures_per_sec_per_address,
            ),
            (
                "login.failures_per_sec_per_identity",
                self.failures_per_sec_per_identity,
            ),
            ("login.tenant_logins_per_sec", self.tenant_logins_per_sec),
        ];
        for (name, rate) in rates {
            if !rate.is_finite() || rate < 0.0 {
                return Err(format!("{name} must be a number >= 0"));
            }
        }
        if self.failures_burst_per_address > 0 && self.failures_per_sec_per_address <= 0.0 {
            return Err(
                "login.failures_per_sec_per_address must be > 0 when the burst is set".into(),
            );
        }
        if self.failures_burst_per_identity > 0 && self.failures_per_sec_per_identity <= 0.0 {
            return Err(
                "login.failures_per_sec_per_identity must be > 0 when the burst is set".into(),
            );
        }
        if self.max_buckets < 2 {
            return Err("login.max_buckets must be at least 2".into());
        }
        Ok(())
    }

    fn tenant_rate(&self) -> Option<Rate> {
        (self.tenant_logins_per_sec > 0.0).then(|| Rate {
            burst: if self.tenant_logins_burst > 0 {
                f64::from(self.tenant_logins_burst)
            } else {
                self.tenant_logins_per_sec.ceil().max(1.0)
            },
            per_sec: self.tenant_logins_per_sec,
        })
    }
}

/// A bucket's size and refill rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub burst: f64,
    pub per_sec: f64,
}

impl Rate {
    /// `None` (no limit) when `burst` is 0.
    fn new(burst: u32, per_sec: f64) -> Option<Rate> {
        (burst > 0 && per_sec > 0.0).then_some(Rate {
            burst: f64::from(burst),
            per_sec,
        })
    }
}

/// A token bucket: `burst` tokens at most, `per_sec` back every second, one taken per event.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(rate: Rate, now: Instant) -> Self {
        TokenBucket {
            tokens: rate.burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        self.last = now;
    }

    /// Whether a token is there, without taking it; else how long until one is.
    pub fn check(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            Ok(())
        } else {
            // A rate so small that the wait overflows a Duration: as good as never.
            Err(
                Duration::try_from_secs_f64((1.0 - self.tokens) / rate.per_sec)
                    .unwrap_or(Duration::MAX),
            )
        }
    }

    /// Takes a token if there is one; else how long until one is.
    pub fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.check(rate, now)?;
        self.tokens -= 1.0;
        Ok(())
    }

    /// Takes a token even when there is none (the bucket goes below zero, down to `-burst`): a failure that
    /// happened is always counted.
    pub fn take_anyway(&mut self, rate: Rate, now: Instant) {
        self.refill(rate, now);
        self.tokens = (self.tokens - 1.0).max(-rate.burst);
    }
}

/// Buckets by key, bounded: two generations of at most `max / 2` each.
struct Buckets<K> {
    current: HashMap<K, TokenBucket>,
    previous: HashMap<K, TokenBucket>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    fn new() -> Self {
        Buckets {
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// The key's bucket if it has one (moved to the current generation).
    fn get(&mut self, key: &K, max: usize) -> Option<&mut TokenBucket> {
        if !self.current.contains_key(key) {
            let bucket = self.previous.remove(key)?;
            self.insert(key.clone(), bucket, max);
        }
        self.current.get_mut(key)
    }

    /// The key's bucket, a full one if it had none.
    fn get_or_full(&mut self, key: &K, rate: Rate, now: Instant, max: usize) -> &mut TokenBucket {
        if self.get(key, max).is_none() {
            self.insert(key.clone(), TokenBucket::full(rate, now), max);
        }
        self.current
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::full(rate, now))
    }

    fn insert(&mut self, key: K, bucket: TokenBucket, max: usize) {
        if self.current.len() >= (max / 2).max(1) {
            // The previous generation was not touched for a whole generation: forget it.
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, bucket);
    }
}

/// Which limit refused a login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    Address,
    Identity,
    Tenant,
}

/// A login refused by a limit, with the time until it may try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    pub kind: LimitKind,
    pub retry_after: Duration,
}

/// The limiter of one pgtenant process.
pub struct LoginLimiter {
    addresses: Mutex<Buckets<IpAddr>>,
    identities: Mutex<Buckets<u64>>,
    tenants: Mutex<Buckets<Uuid>>,
    /// Identities are kept as keyed hashes (a user name may be long; the key is random per process).
    hasher: std::collections::hash_map::RandomState,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter {
            addresses: Mutex::new(Buckets::new()),
            identities: Mutex::new(Buckets::new()),
            tenants: Mutex::new(Buckets::new()),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

/// An address as a limit key: IPv4 as it is, IPv6 by its /64 (one host has a whole /64 to rotate through).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl LoginLimiter {
    fn identity_key(&self, identity: &str) -> u64 {
        self.hasher.hash_one(identity.to_lowercase())
    }

    /// Whether a login from `ip` as `identity` may try: refused while either has used up its failures.
    pub fn check(
        &self,
        limits: &LoginLimits,
        ip: IpAddr,
        identity: &str,
        now: Instant,
    ) -> Result<(), Limited> {
        let max = limits.max_buckets;
        if let Some(rate) = Rate::new(
            limits.failures_burst_per_address,
            limits.failures_per_sec_per_address,
        ) {
            let mut buckets = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(bucket) = buckets.get(&address_key(ip), max) {
                bucket.check(rate, now).map_err(|retry_after| Limited {
                    kind: LimitKind::Address,
                    retry_after,
                })?;
            }
        }
        if let Some(rate) = Rate::new(
            limits.failures_burst_per_identity,
            limits.failures_per_sec_per_identity,
        ) {
            let key = self.identity_key(identity);
            let mut buckets = self.identities.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(bucket) = buckets.get(&key, max) {
                bucket.check(rate, now).map_err(|retry_after| Limited {
                    kind: LimitKind::Identity,
                    retry_after,
                })?;
            }
        }
        Ok(())
    }

    /// Counts a failed login against its address and identity.
    pub fn failed(&self, limits: &LoginLimits, ip: IpAddr, identity: &str, now: Instant) {
        let max = limits.max_buckets;
        if let Some(rate) = Rate::new(
            limits.failures_burst_per_address,
            limits.failures_per_sec_per_address,
        ) {
            let mut buckets = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
            buckets
                .get_or_full(&address_key(ip), rate, now, max)
                .take_anyway(rate, now);
        }
        if let Some(rate) = Rate::new(
            limits.failures_burst_per_identity,
            limits.failures_per_sec_per_identity,
        ) {
            let key = self.identity_key(identity);
            let mut buckets = self.identities.lock().unwrap_or_else(|p| p.into_inner());
            buckets
                .get_or_full(&key, rate, now, max)
                .take_anyway(rate, now);
        }
    }

    /// Takes one login of the tenant's per-second allowance, when one is configured.
    pub fn tenant_login(
        &self,
        limits: &LoginLimits,
        tenant: Uuid,
        now: Instant,
    ) -> Result<(), Limited> {
        let Some(rate) = limits.tenant_rate() else {
            return Ok(());
        };
        let mut buckets = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .get_or_full(&tenant, rate, now, limits.max_buckets)
            .take(rate, now)
            .map_err(|retry_after| Limited {
                kind: LimitKind::Tenant,
                retry_after,
            })
    }

    /// Buckets held (addresses, identities, tenants).
    pub fn sizes(&self) -> (usize, usize, usize) {
        fn len<K: Hash + Eq + Clone>(buckets: &Mutex<Buckets<K>>) -> usize {
            buckets.lock().map(|b| b.len()).unwrap_or(0)
        }
        (
            len(&self.addresses),
            len(&self.identities),
            len(&self.tenants),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(burst: f64, per_sec: f64) -> Rate {
        Rate { burst, per_sec }
    }

    #[test]
    fn bucket_gives_its_burst_then_refills_at_its_rate() {
        let start = Instant::now();
        let r = rate(3.0, 2.0);
        let mut b = TokenBucket::full(r, start);
        for _ in 0..3 {
            b.take(r, start).expect("burst");
        }
        let wait = b.take(r, start).expect_err("empty");
        assert_eq!(wait, Duration::from_millis(500));
        // Half a second later one token is back, and only one.
        let later = start + Duration::from_millis(500);
        b.take(r, later).expect("refilled");
        assert!(b.take(r, later).is_err());
        // Never more than the burst, however long it rested.
        let much_later = later + Duration::from_secs(3600);
        for _ in 0..3 {
            b.take(r, much_later).expect("burst again");
        }
        assert!(b.take(r, much_later).is_err());
    }

    #[test]
    fn failures_beyond_the_burst_push_the_bucket_below_zero_but_not_forever() {
        let start = Instant::now();
        let r = rate(2.0, 1.0);
        let mut b = TokenBucket::full(r, start);
        for _ in 0..10 {
            b.take_anyway(r, start);
        }
        // Floor at -burst: three seconds to get one token back, not eight.
        assert_eq!(b.check(r, start), Err(Duration::from_secs(3)));
        assert!(b.check(r, start + Duration::from_secs(3)).is_ok());
    }

    fn limits(burst: u32, per_sec: f64) -> LoginLimits {
        LoginLimits {
            failures_burst_per_address: burst,
            failures_per_sec_per_address: per_sec,
            failures_burst_per_identity: burst * 2,
            failures_per_sec_per_identity: per_sec,
            ..LoginLimits::default()
        }
    }

    #[test]
    fn an_address_is_limited_after_its_failures_and_others_are_not() {
        let limiter = LoginLimiter::default();
        let l = limits(3, 1.0);
        let now = Instant::now();
        let attacker: IpAddr = "10.0.0.1".parse().expect("ip");
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        for i in 0..3 {
            limiter
                .check(&l, attacker, &format!("user{i}"), now)
                .expect("still allowed");
            limiter.failed(&l, attacker, &format!("user{i}"), now);
        }
        let limited = limiter
            .check(&l, attacker, "someone-else", now)
            .expect_err("limited");
        assert_eq!(limited.kind, LimitKind::Address);
        assert!(limited.retry_after <= Duration::from_secs(1));
        limiter
            .check(&l, other, "user0", now)
            .expect("another address");
        // One second later the address may try once more.
        limiter
            .check(&l, attacker, "x", now + Duration::from_secs(1))
            .expect("refilled");
    }

    #[test]
    fn an_identity_is_limited_across_addresses() {
        let limiter = LoginLimiter::default();
        let l = limits(3, 1.0); // identity burst 6
        let now = Instant::now();
        for i in 0..6u8 {
            let ip = IpAddr::from([10, 1, 0, i]);
            limiter.failed(&l, ip, "Victim@Example.com", now);
        }
        let limited = limiter
            .check(
                &l,
                "10.2.0.1".parse().expect("ip"),
                "victim@example.com",
                now,
            )
            .expect_err("limited");
        assert_eq!(limited.kind, LimitKind::Identity);
        limiter
            .check(
                &l,
                "10.2.0.1".parse().expect("ip"),
                "other@example.com",
                now,
            )
            .expect("another identity");
    }

    #[test]
    fn ipv6_hosts_share_their_64() {
        let limiter = LoginLimiter::default();
        let l = limits(2, 1.0);
        let now = Instant::now();
        limiter.failed(&l, "2001:db8::1".parse().expect("ip"), "a", now);
        limiter.failed(&l, "2001:db8::ffff:2".parse().expect("ip"), "b", now);
        assert!(limiter
            .check(&l, "2001:db8::3".parse().expect("ip"), "c", now)
            .is_err());
        assert!(limiter
            .check(&l, "2001:db8:0:1::3".parse().expect("ip"), "c", now)
            .is_ok());
    }

    #[test]
    fn buckets_are_bounded_and_idle_ones_go_first() {
        let limiter = LoginLimiter::default();
        let mut l = limits(2, 0.001);
        l.max_buckets = 100;
        let now = Instant::now();
        let busy: IpAddr = "192.0.2.1".parse().expect("ip");
        for n in 0..10_000u32 {
            let ip = IpAddr::from(n.to_be_bytes());
            limiter.failed(&l, ip, "spray", now);
            if n % 10 == 0 {
                // The busy address is touched within every generation: it stays remembered.
                limiter.failed(&l, busy, "spray", now);
            }
        }
        let (addresses, identities, _) = limiter.sizes();
        assert!(addresses <= 100, "{addresses} buckets");
        assert_eq!(identities, 1);
        assert!(limiter.check(&l, busy, "x", now).is_err());
    }

    #[test]
    fn tenant_logins_are_capped_only_when_configured() {
        let limiter = LoginLimiter::default();
        let tenant = Uuid::new_v4();
        let now = Instant::now();
        let off = LoginLimits::default();
        for _ in 0..1000 {
            limiter.tenant_login(&off, tenant, now).expect("no cap");
        }
        let on = LoginLimits {
            tenant_logins_per_sec: 5.0,
            ..LoginLimits::default()
        };
        for _ in 0..5 {
            limiter
                .tenant_login(&on, tenant, now)
                .expect("within the cap");
        }
        let limited = limiter.tenant_login(&on, tenant, now).expect_err("capped");
        assert_eq!(limited.kind, LimitKind::Tenant);
        limiter
            .tenant_login(&on, Uuid::new_v4(), now)
            .expect("another tenant");
    }

    #[test]
    fn defaults_validate_and_nonsense_does_not() {
        LoginLimits::default().validate().expect("defaults");
        let bad = LoginLimits {
            failures_per_sec_per_address: f64::NAN,
            ..LoginLimits::default()
        };
        assert!(bad.validate().is_err());
        let bad = LoginLimits {
            failures_per_sec_per_identity: 0.0,
            ..LoginLimits::default()
        };
        assert!(bad.validate().is_err());
    }
}
