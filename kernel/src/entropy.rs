//! Randomness for identifiers and secrets (session refs, UUIDs, salts): ChaCha20 seeded at
//! boot from the CPU's RDSEED/RDRAND when it has them, mixed with TSC timing jitter and the
//! RTC. Under QEMU TCG's `qemu64` there is no RDRAND, and the jitter of an emulated TSC is
//! the main source; a production host CPU has RDSEED.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::arch::rdtsc;

/// A seeded CSPRNG.
pub struct Entropy {
    rng: ChaCha20Rng,
}

fn cpu_random() -> Option<u64> {
    let leaf1 = core::arch::x86_64::__cpuid(1);
    if leaf1.ecx & (1 << 30) == 0 {
        return None;
    }
    let mut value = 0u64;
    for _ in 0..10 {
        // SAFETY: RDRAND is present (CPUID.1:ECX.30), checked above.
        if unsafe { core::arch::x86_64::_rdrand64_step(&mut value) } == 1 {
            return Some(value);
        }
    }
    None
}

impl Entropy {
    /// Gathers a seed. Takes well under a millisecond.
    pub fn seed(extra: u64) -> Self {
        let mut seed = [0u8; 32];
        let mut mix = |word: u64, round: usize| {
            for (i, b) in word.to_le_bytes().iter().enumerate() {
                let slot = (round * 8 + i) % 32;
                seed[slot] = seed[slot].rotate_left(3) ^ b;
            }
        };
        mix(extra, 0);
        for round in 0..4 {
            if let Some(r) = cpu_random() {
                mix(r, round);
            }
        }
        // Timing jitter: the low bits of TSC deltas across a memory-touching loop.
        let mut scratch = [0u64; 64];
        let mut last = rdtsc();
        for round in 0..512 {
            for (i, s) in scratch.iter_mut().enumerate() {
                *s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(i as u64 ^ last);
            }
            let now = rdtsc();
            mix(now.wrapping_sub(last) ^ scratch[round % 64], round);
            last = now;
        }
        Entropy {
            rng: ChaCha20Rng::from_seed(seed),
        }
    }
}

impl keel_xenapi::Entropy for Entropy {
    fn fill(&mut self, buf: &mut [u8]) {
        self.rng.fill_bytes(buf);
    }
}
