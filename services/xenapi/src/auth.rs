//! Root credentials: the salted slow hash, the one verification slot, and the failed-login
//! throttle.
//!
//! The root password exists only as an Argon2id PHC string
//! (`$argon2id$v=19$m=...,t=...,p=...$<salt>$<hash>`). Verification re-derives with the
//! parameters recorded in the string and compares in constant time.
//!
//! ## Memory
//! Argon2 needs `m` KiB of working memory for each verification. Allocating it per login
//! made a login at 32 MiB of RAM abort Keel (the heap could not give 19 MiB), and several
//! logins at once would need several arenas. Instead [`LoginThrottle::reserve_verifier`]
//! reserves one arena for the configured hash at start-up, with `try_reserve` so that a hash
//! too costly for the heap is reported (see [`VerifierState`]) rather than fatal, and every
//! verification reuses it, one after another: Keel's executor runs one call at a time, so
//! verifications are queued behind the slot and never run side by side.
//!
//! ## Throttle
//! Every login is verified: a correct password is never refused because of failures, neither
//! another client's nor ones from the same address (behind NAT, or through QEMU's user
//! network, every client shares one address). Failures slow down whoever guesses: a wrong
//! password is answered `SESSION_AUTHENTICATION_FAILED` only after a delay. That is xapi's
//! behaviour too: it verifies every login, one at a time (a mutex, `serialize_auth`, around
//! PAM in `ocaml/xapi/xapi_session.ml`), and PAM's `pam_unix` waits out its failure delay
//! before a wrong password is reported; it has no lockout. The delay grows with the
//! failures counted per originator (the 4th `login_with_password` argument; truncated, and the
//! table is bounded) and globally (so rotating originators does not help): after
//! `free_failures` it is `base_delay_ms * 2^(excess)`, capped at `max_delay_ms`; the global
//! count has its own, gentler, numbers and the larger delay applies. The server holds the
//! failure's answer for that long ([`LoginThrottle::take_hold`]); the connection carries no
//! other request meanwhile, so each connection of a guesser makes at most one guess per delay,
//! and the verifications themselves are serial. Counts are forgotten after `forget_after_ms`
//! without failures; a success clears its originator's count.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};

use alloc::vec::Vec;

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

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
    /// Production cost: of the Argon2id configurations OWASP's password storage guidance lists
    /// as equally strong (19 MiB × 2 passes, 12 MiB × 3, 9 MiB × 4, 7 MiB × 5, ...), the one
    /// that trades memory for passes furthest: Keel reserves `memory_kib` for the lifetime of
    /// the system (the verification slot), and must fit machines of 32 MiB.
    pub const PRODUCTION: HashCost = HashCost {
        memory_kib: 7 * 1024,
        iterations: 5,
        parallelism: 1,
    };

    /// The previous production cost (OWASP's first-listed baseline). Hashes made with it
    /// still verify wherever the heap can hold its 19 MiB slot.
    pub const OWASP_19_MIB: HashCost = HashCost {
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

/// Constant-time check of `password` against the stored PHC string, allocating Argon2's
/// memory for the call. For tools and tests; the service verifies through its reserved slot
/// ([`LoginThrottle::verify`]).
pub fn verify_password(phc: &str, password: &[u8]) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// The verification slot, as start-up left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifierState {
    /// No root password configured: every login fails, nothing is reserved.
    NoPassword,
    /// `bytes` of Argon2 memory are reserved for hashes of cost `cost`.
    Ready { bytes: usize, cost: HashCost },
    /// The heap could not give the `bytes` the configured hash needs: logins fail with an
    /// `INTERNAL_ERROR` naming the shortfall until Keel has more memory or a cheaper hash.
    NoMemory { bytes: usize, cost: HashCost },
    /// The stored PHC string does not parse.
    BadHash,
}

/// Why a login could not be verified at all (as opposed to a wrong password).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// No verification slot: the hash needs `bytes` the heap could not give at start-up.
    NoMemory { bytes: usize },
    /// The stored hash does not parse or its parameters are outside Argon2's limits.
    BadHash,
}

impl core::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VerifyError::NoMemory { bytes } => write!(
                f,
                "root's password hash needs {} KiB of memory to verify, which Keel could not \
                 reserve at start-up: boot with more memory or remake the hash with a smaller m",
                bytes / 1024
            ),
            VerifyError::BadHash => write!(f, "root's stored password hash is unusable"),
        }
    }
}

/// The stored hash's parameters, parsed.
struct StoredHash<'a> {
    parsed: PasswordHash<'a>,
    algorithm: Algorithm,
    version: Version,
    params: Params,
}

impl<'a> StoredHash<'a> {
    fn parse(phc: &'a str) -> Result<Self, VerifyError> {
        let parsed = PasswordHash::new(phc).map_err(|_| VerifyError::BadHash)?;
        let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|_| VerifyError::BadHash)?;
        let version = match parsed.version {
            Some(v) => Version::try_from(v).map_err(|_| VerifyError::BadHash)?,
            None => Version::default(),
        };
        let params = Params::try_from(&parsed).map_err(|_| VerifyError::BadHash)?;
        Ok(StoredHash {
            parsed,
            algorithm,
            version,
            params,
        })
    }

    fn cost(&self) -> HashCost {
        HashCost {
            memory_kib: self.params.m_cost(),
            iterations: self.params.t_cost(),
            parallelism: self.params.p_cost(),
        }
    }

    /// Argon2's working memory for this hash, in blocks of 1 KiB.
    fn blocks(&self) -> usize {
        self.params.block_count()
    }
}

/// Bytes of Argon2 working memory the PHC string `phc` needs to be verified, or `None` when it
/// does not parse. The kernel checks this against its heap before trusting a configuration.
pub fn verification_bytes(phc: &str) -> Option<usize> {
    StoredHash::parse(phc)
        .ok()
        .map(|h| h.blocks() * core::mem::size_of::<Block>())
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
            base_delay_ms: 500,
            max_delay_ms: 8_000,
            global_free_failures: 10,
            global_base_delay_ms: 250,
            global_max_delay_ms: 4_000,
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
    /// The delay after the latest failure: none for the first `free`, then `base` doubling.
    fn wait_ms(&self, free: u32, base: u64, max: u64) -> u64 {
        if self.failures <= free {
            return 0;
        }
        let excess = self.failures - free - 1; // 0 for the first delayed failure
        let factor = 1u64.checked_shl(excess.min(32)).unwrap_or(u64::MAX);
        base.saturating_mul(factor).min(max)
    }
}

/// The login gate: the verification slot and the failed-login bookkeeping, driven by the
/// caller's clock.
pub struct LoginThrottle {
    policy: LoginPolicy,
    per_originator: BTreeMap<String, Backoff>,
    global: Backoff,
    /// Argon2's working memory, reserved once (empty until [`LoginThrottle::reserve_verifier`]).
    arena: Vec<Block>,
    verifier: VerifierState,
    /// When the answer to the call just made may go out (a failed login's delay).
    hold_until: Option<Timestamp>,
    /// Verifications run since start (a server paces itself by it).
    verifications: u64,
}

impl core::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LoginThrottle")
            .field("policy", &self.policy)
            .field("originators", &self.per_originator.len())
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

impl LoginThrottle {
    pub fn new(policy: LoginPolicy) -> Self {
        LoginThrottle {
            policy,
            per_originator: BTreeMap::new(),
            global: Backoff::default(),
            arena: Vec::new(),
            verifier: VerifierState::NoPassword,
            hold_until: None,
            verifications: 0,
        }
    }

    /// Reserves the verification slot for root's hash `phc` (once, at start-up). The heap's
    /// refusal is not an error here: it is recorded and reported by
    /// [`LoginThrottle::verifier_state`], and logins then fail with a clear error.
    pub fn reserve_verifier(&mut self, phc: &str) -> VerifierState {
        self.arena = Vec::new();
        self.verifier = match StoredHash::parse(phc) {
            Err(_) => VerifierState::BadHash,
            Ok(hash) => {
                let blocks = hash.blocks();
                let bytes = blocks * core::mem::size_of::<Block>();
                let mut arena = Vec::new();
                if arena.try_reserve_exact(blocks).is_ok() {
                    arena.resize(blocks, Block::default());
                    self.arena = arena;
                    VerifierState::Ready {
                        bytes,
                        cost: hash.cost(),
                    }
                } else {
                    VerifierState::NoMemory {
                        bytes,
                        cost: hash.cost(),
                    }
                }
            }
        };
        self.verifier
    }

    pub fn verifier_state(&self) -> VerifierState {
        self.verifier
    }

    /// How many passwords were verified since start. Each verification holds the CPU for
    /// the hash's cost; a server runs at most one per round so that the rest of the system
    /// (and other clients) get their turn in between.
    pub fn verifications(&self) -> u64 {
        self.verifications
    }

    /// Constant-time check of `password` against `phc` in the reserved slot.
    pub fn verify(&mut self, phc: &str, password: &[u8]) -> Result<bool, VerifyError> {
        let hash = StoredHash::parse(phc)?;
        let blocks = hash.blocks();
        if blocks > self.arena.len() {
            return Err(VerifyError::NoMemory {
                bytes: blocks * core::mem::size_of::<Block>(),
            });
        }
        let (Some(salt), Some(expected)) = (&hash.parsed.salt, &hash.parsed.hash) else {
            return Err(VerifyError::BadHash);
        };
        let mut salt_buf = [0u8; 64];
        let salt = salt
            .decode_b64(&mut salt_buf)
            .map_err(|_| VerifyError::BadHash)?;
        self.verifications += 1;
        let argon2 = Argon2::new(hash.algorithm, hash.version, hash.params.clone());
        let arena = &mut self.arena[..blocks];
        let computed = Output::init_with(expected.len(), |out| {
            argon2
                .hash_password_into_with_memory(password, salt, out, &mut *arena)
                .map_err(|_| argon2::password_hash::Error::Password)
        });
        match computed {
            // `Output`'s equality is constant-time.
            Ok(computed) => Ok(computed == *expected),
            // Argon2 refuses only over-long passwords here (the hash's own inputs parsed).
            Err(_) => Ok(false),
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

    /// Counts a failed login from `originator` and returns how long its answer is held back
    /// (also kept for [`LoginThrottle::take_hold`]).
    pub fn record_failure(&mut self, originator: &str, now: Timestamp) -> u64 {
        self.forget_stale(now);
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
        let p = self.policy;
        let delay = entry
            .wait_ms(p.free_failures, p.base_delay_ms, p.max_delay_ms)
            .max(self.global.wait_ms(
                p.global_free_failures,
                p.global_base_delay_ms,
                p.global_max_delay_ms,
            ));
        self.hold_until = (delay > 0).then(|| now.plus_ms(delay));
        delay
    }

    /// A correct login: its originator's failures are forgiven. The global count is not, so
    /// a guesser gains nothing from the administrator logging in.
    pub fn record_success(&mut self, originator: &str) {
        self.per_originator.remove(&Self::key(originator));
        self.hold_until = None;
    }

    /// When the answer to the last call may be sent, if it must wait (a failed login's
    /// delay); cleared by reading.
    pub fn take_hold(&mut self) -> Option<Timestamp> {
        self.hold_until.take()
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

    fn ready(phc: &str) -> LoginThrottle {
        let mut t = LoginThrottle::new(LoginPolicy::default());
        assert!(matches!(
            t.reserve_verifier(phc),
            VerifierState::Ready { .. }
        ));
        t
    }

    #[test]
    fn the_slot_verifies_again_and_again_in_the_same_memory() {
        let phc = hash_password(b"secret", SALT, HashCost::TEST_ONLY).unwrap();
        let mut t = ready(&phc);
        assert_eq!(
            t.verifier_state(),
            VerifierState::Ready {
                bytes: 8 * 1024,
                cost: HashCost::TEST_ONLY
            }
        );
        let arena = t.arena.as_ptr();
        for _ in 0..3 {
            assert_eq!(t.verify(&phc, b"secret"), Ok(true));
            assert_eq!(t.verify(&phc, b"Secret"), Ok(false));
            assert_eq!(t.verify(&phc, b""), Ok(false));
        }
        assert_eq!(t.arena.as_ptr(), arena, "no new arena per verification");
        assert_eq!(t.verifications(), 9);
        // Same answers as the allocating verifier.
        assert!(verify_password(&phc, b"secret"));
        assert_eq!(verification_bytes(&phc), Some(8 * 1024));
    }

    #[test]
    fn a_hash_the_heap_cannot_hold_is_reported_and_fails_logins_cleanly() {
        // 4 TiB of Argon2 memory: try_reserve refuses, nothing aborts.
        let huge = "$argon2id$v=19$m=4294967295,t=1,p=1$MDEyMzQ1Njc4OWFiY2RlZg$\
                    c29tZWhhc2hzb21laGFzaHNvbWVoYXNoc29tZWhhc2g";
        let mut t = LoginThrottle::new(LoginPolicy::default());
        let state = t.reserve_verifier(huge);
        assert!(
            matches!(state, VerifierState::NoMemory { bytes, cost }
                if bytes == 4_294_967_292 * 1024 && cost.memory_kib == u32::MAX),
            "{state:?}"
        );
        assert!(matches!(
            t.verify(huge, b"pw"),
            Err(VerifyError::NoMemory { .. })
        ));
        // A slot made for a cheap hash does not verify a costlier one.
        let cheap = hash_password(b"pw", SALT, HashCost::TEST_ONLY).unwrap();
        let costly = hash_password(
            b"pw",
            SALT,
            HashCost {
                memory_kib: 64,
                ..HashCost::TEST_ONLY
            },
        )
        .unwrap();
        let mut t = ready(&cheap);
        assert_eq!(
            t.verify(&costly, b"pw"),
            Err(VerifyError::NoMemory { bytes: 64 * 1024 })
        );
        assert_eq!(
            LoginThrottle::new(LoginPolicy::default()).reserve_verifier("plaintext"),
            VerifierState::BadHash
        );
    }

    #[test]
    fn failure_delays_grow_exponentially_and_cap() {
        let policy = LoginPolicy {
            free_failures: 2,
            base_delay_ms: 100,
            max_delay_ms: 1_000,
            global_free_failures: 1_000,
            ..LoginPolicy::default()
        };
        let mut t = LoginThrottle::new(policy);
        let now = Timestamp::from_unix_secs(1_000);
        assert_eq!(t.record_failure("a", now), 0);
        assert_eq!(t.take_hold(), None);
        assert_eq!(t.record_failure("a", now), 0);
        assert_eq!(t.record_failure("a", now), 100);
        assert_eq!(t.take_hold(), Some(now.plus_ms(100)));
        assert_eq!(t.take_hold(), None, "read once");
        assert_eq!(t.record_failure("a", now), 200);
        let delays: Vec<u64> = (0..40).map(|_| t.record_failure("a", now)).collect();
        assert_eq!(delays.last(), Some(&1_000));
        // Another originator is not slowed by a's failures.
        assert_eq!(t.record_failure("b", now), 0);
        t.record_success("a");
        assert_eq!(t.record_failure("a", now), 0);
    }

    #[test]
    fn a_correct_password_verifies_whatever_failed_before() {
        let phc = hash_password(b"root-pw", SALT, HashCost::TEST_ONLY).unwrap();
        let mut t = ready(&phc);
        let now = Timestamp::from_unix_secs(1_000);
        // A storm from the administrator's own originator (same NAT address, same client).
        for _ in 0..50 {
            assert_eq!(t.verify(&phc, b"guess"), Ok(false));
            t.record_failure("xe", now);
        }
        // There is no refusal path: the next login is verified and succeeds.
        assert_eq!(t.verify(&phc, b"root-pw"), Ok(true));
        t.record_success("xe");
        assert_eq!(t.take_hold(), None, "a success is never held");
    }

    #[test]
    fn rotating_originators_hits_the_global_delay() {
        let policy = LoginPolicy {
            global_free_failures: 3,
            global_base_delay_ms: 50,
            ..LoginPolicy::default()
        };
        let mut t = LoginThrottle::new(policy);
        let now = Timestamp::from_unix_secs(1_000);
        for i in 0..3 {
            assert_eq!(t.record_failure(&alloc::format!("o{i}"), now), 0);
        }
        assert_eq!(t.record_failure("fresh", now), 50);
        // An administrator's success elsewhere does not reset the guessers' global count.
        t.record_success("admin");
        assert_eq!(t.record_failure("fresh2", now), 100);
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
        assert!(t.record_failure("x", now) > 0);
        assert_eq!(t.record_failure("x", now.plus_ms(10_000)), 0);
    }
}
