//! The heap a guest's VIF holds in dom0, with a counting allocator: a connected netback
//! idle, and the same after traffic both ways (a 60 KB TSO send, frames to the guest)
//! once it is idle again. What a VIF holds is what the heap gives back when it is dropped.
//!
//! `cargo test -p keel-netback --test vif_memory -- --nocapture` prints the figures
//! (docs/benchmarks.md, "dom0 heap per running guest").

// Helpers outside `#[test]` functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use keel_heap_count::{freed_by, CountingAlloc};
use keel_netback::wire::{txf, Extra, ExtraInfo, GsoType};
use keel_netback::IDLE_TRIM_NS;

/// Counts the bytes each thread holds (other tests of the binary run on other threads).
#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc;

fn tso(size: u16) -> ExtraInfo {
    ExtraInfo {
        extra: Extra::Gso {
            size,
            kind: GsoType::TcpV4,
            features: 0,
        },
        more: false,
    }
}

/// A TSO burst grows the VIF's scratch to ~128 KB; an idle VIF gives it back (it held
/// 128 KB per VIF before).
#[test]
fn an_idle_vif_holds_little_after_traffic() {
    let (_w, nb, _fe) = connected(Options::default());
    let idle = freed_by(|| drop(nb));

    let (mut w, mut nb, mut fe) = connected(Options::default());
    let mut sw = Switch::default();
    for _ in 0..3 {
        let frame = tcp4(&pattern(60_000), 0);
        fe.send(&w, 0, &frame, txf::CSUM_BLANK, &[tso(1448)], PAGE, 0);
        poll(&mut w, &mut nb, 0, &mut sw);
        fe.tx_responses(0);
    }
    fe.post_rx(&w, 0, 64);
    for _ in 0..32 {
        nb.push_rx(&tcp4(&pattern(1400), 0)).unwrap();
    }
    poll(&mut w, &mut nb, 0, &mut sw);
    assert_eq!(fe.rx_responses(0).len(), 32);
    assert!(sw.frames.len() >= 3 * 41);
    // Between two packets of a stream the scratch stays (no allocation per poll).
    let busy = {
        let (mut w3, mut nb3, mut fe3) = connected(Options::default());
        let frame = tcp4(&pattern(60_000), 0);
        fe3.send(&w3, 0, &frame, txf::CSUM_BLANK, &[tso(1448)], PAGE, 0);
        poll(&mut w3, &mut nb3, 0, &mut Switch::default());
        poll(&mut w3, &mut nb3, IDLE_TRIM_NS / 2, &mut Switch::default());
        freed_by(|| drop(nb3))
    };
    assert!(busy > idle + 32 * 1024, "{busy} B kept within a burst");
    // Quiet for a while, the VIF gives back what the traffic grew.
    poll(&mut w, &mut nb, IDLE_TRIM_NS, &mut sw);
    // And the next burst goes through.
    let (mut w2, mut nb2, mut fe2) = connected(Options::default());
    let mut sw2 = Switch::default();
    for round in 1..=2 {
        let frame = tcp4(&pattern(60_000), 0);
        fe2.send(&w2, 0, &frame, txf::CSUM_BLANK, &[tso(1448)], PAGE, 0);
        poll(&mut w2, &mut nb2, round as u64 * IDLE_TRIM_NS, &mut sw2);
        poll(
            &mut w2,
            &mut nb2,
            (round as u64 + 1) * IDLE_TRIM_NS,
            &mut sw2,
        );
        assert_eq!(sw2.frames.len(), round * 60_000usize.div_ceil(1448));
    }
    drop((w2, nb2, fe2, sw2));
    let after = freed_by(|| drop(nb));
    println!("netback heap per VIF: {idle} B connected, {after} B idle after traffic");
    assert!(idle > 0);
    assert!(
        after < idle + 12 * 1024,
        "{after} B held by an idle VIF after traffic ({idle} B before any)"
    );
}
