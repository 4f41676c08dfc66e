//! The reference stack (`keel_tests::reference`): Debian's Linux 6.1 as PVH dom0 of the same
//! Xen 4.17 with Xen's own toolstack, booted under QEMU with Keel's flags; `xl create` starts
//! the same guest kernel and initramfs as Keel's guests (`keel_tests::guest`) to its console
//! marker.
//!
//! Ignored: it exists for `cargo xtask bench guests`, which compares Keel with it, and must
//! not add minutes to CI. Run it with
//! `cargo test -p keel-tests --test reference -- --ignored --nocapture` (~1–2 min under TCG).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::{Duration, Instant};

use keel_tests::guest::GUEST_READY;
use keel_tests::reference;

#[test]
#[ignore = "boots the Linux dom0 reference stack under nested TCG (1–2 min); for benchmarks"]
fn linux_dom0_xl_creates_the_keel_guest_to_its_console_marker() {
    let host = reference::boot("reference_xl_create", 2048).unwrap();
    eprintln!(
        "reference: dom0 ready {:.1} s after QEMU started",
        host.ready_after.as_secs_f64()
    );
    let list = host.run_ok("xl list", Duration::from_secs(60)).unwrap();
    assert!(list.contains("Domain-0"), "{list}");
    let config = host.write_guest_config("g1", "idle", 112).unwrap();
    let called = Instant::now();
    host.run_ok(&format!("xl create {config}"), Duration::from_secs(300))
        .unwrap();
    let created = called.elapsed();
    let list = host.run_ok("xl list g1", Duration::from_secs(60)).unwrap();
    assert!(list.contains("g1"), "{list}");
    host.wait_console("g1", GUEST_READY, Duration::from_secs(300))
        .unwrap();
    eprintln!(
        "reference: xl create returned after {:.1} s, guest marker after {:.1} s",
        created.as_secs_f64(),
        called.elapsed().as_secs_f64()
    );
    let used = host.dom0_used_kib().unwrap();
    assert!(used > 1024, "dom0 uses {used} KiB");
    host.run_ok("xl shutdown -w g1", Duration::from_secs(120))
        .unwrap();
    let list = host.run("xl list g1", Duration::from_secs(60)).unwrap();
    assert_ne!(list.status, 0, "g1 still listed: {}", list.output);
}
