//! Root credentials: the salted slow hash and the failed-login throttle.
//!
//! The root password exists only as an Argon2id PHC string
//! (`$argon2id$v=19$m=...,t=...,p=...$<salt>$<hash>`). Verification re-derives with the
//! parameters recorded in the string and compares in constant time (the `argon2` crate's
//! `verify_password` does both).
//!
//! ## Throttle
//! Failed logins are counted per originator (the 4th `login_with_password` argument; clients
//! choose it freely, so it is truncated and the table is bounded) and globally (so rotating
//! originators does not help an attacker). After `free_failures` failures in a row a key must
//! wait `base_delay_ms * 2^(excess-1)`, capped at `max_delay_ms`, after its last failure;
//! the global key uses its own, gentler, numbers. While a key is waiting, logins are refused
//! *without running Argon2* (so the throttle also caps CPU and memory spent on hashing) with
//! [`ApiError::LoginThrottled`] — `SESSION_AUTHENTICATION_FAILED [user, "... retry after N
//! ms"]` on the wire. A success clears that originator's count and the global one. Counts
//! are forgotten after `forget_after_ms` without failures.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::codec::truncate;
use crate::time::Timestamp;

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    pub parallelism: u32,
}

impl HashCost {
    /// Production cost: OWASP's Argon2id baseline (19 MiB, 2 passes, 1 lane). Each login
    /// attempt that reaches verification allocates `memory_kib` on the heap for its duration.
    pub const PRODUCTION: HashCost = HashCost {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    /// Tiny cost for unit tests only: never use for a real password.
    pub const TEST_ONLY: HashCost = HashCost {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    };
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordHashError {
    /// Salt must be 8 to 48 bytes (16 recommended, from a real random source).
    BadSaltLength(usize),
    /// The cost parameters are outside Argon2's limits.
    BadCost,
    /// The stored string is not an Argon2 PHC string.
    BadPhcString,
    Hashing,
}

/// Make the PHC string to store for `password`, salted with `salt` (fresh random bytes).
pub fn hash_password(
    password: &[u8],
    salt: &[u8],
    cost: HashCost,
) -> Result<String, PasswordHashError> {
    if !(8..=48).contains(&salt.len()) {
        return Err(PasswordHashError::BadSaltLength(salt.len()));
    }
    let salt =
        SaltString::encode_b64(salt).map_err(|_| PasswordHashError::BadSaltLength(salt.len()))?;
    let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
        .map_err(|_| PasswordHashError::BadCost)?;
    let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    hasher
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|_| PasswordHashError::Hashing)
}

/// Check that `phc` is a usable Argon2 PHC string (done once at start-up, so a corrupt
/// stored hash is reported instead of silently locking root out).
pub fn check_phc(phc: &str) -> Result<(), PasswordHashError> {
    let parsed = PasswordHash::new(phc).map_err(|_| PasswordHashError::BadPhcString)?;
    if !parsed.algorithm.as_str().starts_with("argon2") || parsed.hash.is_none() {
        return Err(PasswordHashError::BadPhcString);
    }
    Ok(())
}

/// Constant-time check of `password` against the stored PHC string.
pub fn verify_password(phc: &str, password: &[u8]) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Tunables of the failed-login throttle (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginPolicy {
    pub free_failures: u32,
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
    pub global_free_failures: u32,
    pub global_base_delay_ms: u64,
    pub global_max_delay_ms: u64,
    pub forget_after_ms: u64,
    /// Bound on remembered originators; the least recently failed is forgotten first.
    pub max_tracked_originators: usize,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        LoginPolicy {
            free_failures: 3,
            base_delay_ms: 1_000,
            max_delay_ms: 60_000,
            global_free_failures: 10,
            global_base_delay_ms: 250,
            global_max_delay_ms: 10_000,
            forget_after_ms: 15 * 60 * 1000,
            max_tracked_originators: 128,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Backoff {
    failures: u32,
    last_failure: Timestamp,
}

impl Backoff {
    fn wait_ms(&self, free: u32, base: u64, max: u64) -> u64 {
        if self.failures < free || self.failures == 0 {
            return 0;
        }
        let excess = self.failures - free; // 0 for the first throttled attempt
        let factor = 1u64.checked_shl(excess.min(32)).unwrap_or(u64::MAX);
        base.saturating_mul(factor).min(max)
    }

    fn remaining_ms(&self, now: Timestamp, free: u32, base: u64, max: u64) -> u64 {
        let wait = self.wait_ms(free, base, max);
        self.last_failure.plus_ms(wait).ms_since(now)
    }
}

/// Failed-login bookkeeping, driven by the caller's clock.
#[derive(Debug)]
pub struct LoginThrottle {
    policy: LoginPolicy,
    per_originator: BTreeMap<String, Backoff>,
    global: Backoff,
}

impl LoginThrottle {
    pub fn new(policy: LoginPolicy) -> Self {
        LoginThrottle {
            policy,
            per_originator: BTreeMap::new(),
            global: Backoff::default(),
        }
    }

    fn key(originator: &str) -> String {
        truncate(originator.to_string(), 64)
    }

    fn forget_stale(&mut self, now: Timestamp) {
        let forget = self.policy.forget_after_ms;
        self.per_originator
            .retain(|_, b| now.ms_since(b.last_failure) < forget);
        if now.ms_since(self.global.last_failure) >= forget {
            self.global = Backoff::default();
        }
    }

    /// `Err(ms)` if a login from `originator` must wait `ms` more milliseconds.
    pub fn check(&mut self, originator: &str, now: Timestamp) -> Result<(), u64> {
        self.forget_stale(now);
        let p = self.policy;
        let own = self
            .per_originator
            .get(&Self::key(originator))
            .map_or(0, |b| {
                b.remaining_ms(now, p.free_failures, p.base_delay_ms, p.max_delay_ms)
            });
        let global = self.global.remaining_ms(
            now,
            p.global_free_failures,
            p.global_base_delay_ms,
            p.global_max_delay_ms,
        );
        match own.max(global) {
            0 => Ok(()),
            wait => Err(wait),
        }
    }

    pub fn record_failure(&mut self, originator: &str, now: Timestamp) {
        let key = Self::key(originator);
        if !self.per_originator.contains_key(&key)
            && self.per_originator.len() >= self.policy.max_tracked_originators
        {
            let oldest = self
                .per_originator
                .iter()
                .min_by_key(|(_, b)| b.last_failure)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.per_originator.remove(&k);
            }
        }
        let entry = self.per_originator.entry(key).or_default();
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        self.global.failures = self.global.failures.saturating_add(1);
        self.global.last_failure = now;
    }

    pub fn record_success(&mut self, originator: &str) {
        self.per_originator.remove(&Self::key(originator));
        self.global = Backoff::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: &[u8] = b"0123456789abcdef";

    #[test]
    fn hash_then_verify() {
        let phc = hash_password(b"secret", SALT, HashCost::TEST_ONLY).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=8,t=1,p=1$"));
        assert!(check_phc(&phc).is_ok());
        assert!(verify_password(&phc, b"secret"));
        assert!(!verify_password(&phc, b"Secret"));
        assert!(!verify_password(&phc, b""));
    }

    #[test]
    fn salt_changes_the_hash_and_bad_inputs_are_typed_errors() {
        let a = hash_password(b"pw", SALT, HashCost::TEST_ONLY).unwrap();
        let b = hash_password(b"pw", b"fedcba9876543210", HashCost::TEST_ONLY).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            hash_password(b"pw", b"short", HashCost::TEST_ONLY),
            Err(PasswordHashError::BadSaltLength(5))
        );
        let bad_cost = HashCost {
            memory_kib: 0,
            iterations: 0,
            parallelism: 0,
        };
        assert_eq!(
            hash_password(b"pw", SALT, bad_cost),
            Err(PasswordHashError::BadCost)
        );
        assert_eq!(check_phc("plaintext"), Err(PasswordHashError::BadPhcString));
        assert!(!verify_password("$argon2id$garbage", b"pw"));
    }

    #[test]
    fn production_cost_is_valid_for_argon2() {
        let p = HashCost::PRODUCTION;
        assert!(Params::new(p.memory_kib, p.iterations, p.parallelism, None).is_ok());
    }

    #[test]
    fn backoff_grows_exponentially_and_caps() {
        let policy = LoginPolicy {
            free_failures: 2,
            base_delay_ms: 100,
            max_delay_ms: 1_000,
            global_free_failures: 1_000,
            ..LoginPolicy::default()
        };
        let mut t = LoginThrottle::new(policy);
        let now = Timestamp::from_unix_secs(1_000);
        t.record_failure("a", now);
        assert_eq!(t.check("a", now), Ok(()));
        t.record_failure("a", now);
        assert_eq!(t.check("a", now), Err(100));
        t.record_failure("a", now);
        assert_eq!(t.check("a", now), Err(200));
        for _ in 0..40 {
            t.record_failure("a", now);
        }
        assert_eq!(t.check("a", now), Err(1_000));
        assert_eq!(t.check("a", now.plus_ms(400)), Err(600));
        assert_eq!(t.check("a", now.plus_ms(1_000)), Ok(()));
        // Another originator is not affected by a's failures.
        assert_eq!(t.check("b", now), Ok(()));
        t.record_success("a");
        assert_eq!(t.check("a", now), Ok(()));
    }

    #[test]
    fn rotating_originators_hits_the_global_throttle() {
        let policy = LoginPolicy {
            global_free_failures: 3,
            global_base_delay_ms: 50,
            ..LoginPolicy::default()
        };
        let mut t = LoginThrottle::new(policy);
        let now = Timestamp::from_unix_secs(1_000);
        for i in 0..3 {
            t.record_failure(&alloc::format!("o{i}"), now);
        }
        assert_eq!(t.check("fresh", now), Err(50));
    }

    #[test]
    fn originator_table_is_bounded_and_stale_counts_forgotten() {
        let policy = LoginPolicy {
            max_tracked_originators: 4,
            global_free_failures: u32::MAX,
            forget_after_ms: 10_000,
            ..LoginPolicy::default()
        };
        let mut t = LoginThrottle::new(policy);
        let now = Timestamp::from_unix_secs(1_000);
        for i in 0..100u64 {
            t.record_failure(&alloc::format!("o{i}"), now.plus_ms(i));
        }
        assert_eq!(t.per_originator.len(), 4);
        for _ in 0..5 {
            t.record_failure("x", now);
        }
        assert!(t.check("x", now).is_err());
        assert_eq!(t.check("x", now.plus_ms(10_000)), Ok(()));
    }
}
