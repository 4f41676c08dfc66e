//! A guest that writes anything, anywhere, at any time, against one console and its
//! readers: the backend never panics, never moves more than a ring per service call,
//! never loses or invents output while the ring is sane, and once it finds the ring
//! corrupt it stays disconnected without touching it again.

// Helpers outside `#[test]` functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_console::fake::BytePage;
use keel_console::{ConsoleError, ConsoleSet, ConsoleState, Index, OUT_RING_SIZE};

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_guests_cannot_break_the_backend() {
    let (mut disconnects, mut exact_checks) = (0, 0);
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // Odd seeds are hostile and keep a small history (readers fall behind and skip);
        // even ones behave and keep everything, so their output can be compared exactly.
        let hostile = seed % 2 == 1;
        let page = BytePage::new();
        let mut set = ConsoleSet::new(if hostile { 512 } else { 1 << 20 });
        set.attach(1, &page).unwrap();
        let mut session = set.open_session(1).unwrap();
        // What a well-behaved guest wrote, to compare with what readers saw.
        let mut written = Vec::new();
        let mut read = Vec::new();
        let mut skipped_any = false;
        let mut corrupted = false;
        for _ in 0..300 {
            match rng.below(10) {
                0..=4 => {
                    let len = rng.below(3000) as usize;
                    let data: Vec<u8> = (0..len).map(|_| (rng.next() % 95 + 32) as u8).collect();
                    if let Ok(n) = page.guest_write_output(&data) {
                        written.extend_from_slice(&data[..n]);
                    }
                }
                5 => {
                    let _ = page.guest_read_input(rng.below(2000) as usize);
                }
                6 if hostile && rng.below(8) == 0 => {
                    // Hostile: any value in any index.
                    let index = [Index::InCons, Index::InProd, Index::OutCons, Index::OutProd]
                        [rng.below(4) as usize];
                    page.set_index(index, rng.next() as u32);
                    corrupted = true;
                }
                _ => {
                    let input: Vec<u8> = (0..rng.below(100)).map(|_| b'i').collect();
                    let _ = set.write_input(1, &input);
                }
            }
            let before = set.get(1).unwrap().history().end_seq();
            match set.service(1) {
                Ok(s) => {
                    assert!(s.output_bytes <= OUT_RING_SIZE);
                    assert_eq!(
                        set.get(1).unwrap().history().end_seq() - before,
                        s.output_bytes as u64
                    );
                }
                Err(ConsoleError::Disconnected(_)) => {
                    assert!(corrupted, "seed {seed}: disconnected a sane ring");
                    // Disconnected for good: the page is not touched any more.
                    let snapshot: Vec<u32> =
                        [Index::InCons, Index::InProd, Index::OutCons, Index::OutProd]
                            .iter()
                            .map(|i| page.index(*i))
                            .collect();
                    assert!(set.service(1).is_err());
                    assert!(matches!(
                        set.get(1).unwrap().state(),
                        ConsoleState::Disconnected(_)
                    ));
                    let after: Vec<u32> =
                        [Index::InCons, Index::InProd, Index::OutCons, Index::OutProd]
                            .iter()
                            .map(|i| page.index(*i))
                            .collect();
                    assert_eq!(snapshot, after);
                    disconnects += 1;
                    break;
                }
                Err(e) => panic!("seed {seed}: {e:?}"),
            }
            let mut buf = [0u8; 700];
            let n = set.session_output(&mut session, &mut buf).unwrap();
            if buf[..n].starts_with(b"\r\n[keel: ") {
                skipped_any = true;
            }
            read.extend_from_slice(&buf[..n]);
        }
        // With a sane ring and a reader that never fell behind, output is exact.
        if !corrupted && !skipped_any {
            let mut buf = vec![0u8; 4096];
            loop {
                let n = set.session_output(&mut session, &mut buf).unwrap();
                if n == 0 {
                    break;
                }
                read.extend_from_slice(&buf[..n]);
            }
            let retained = set.get(1).unwrap().history().end_seq();
            assert_eq!(retained, written.len() as u64, "seed {seed}");
            assert_eq!(read, written, "seed {seed}");
            exact_checks += 1;
        }
    }
    // Both halves of the property were exercised.
    assert!(
        disconnects > 20 && exact_checks > 20,
        "{disconnects} {exact_checks}"
    );
}
