//! dom0 heap per running guest, by component: guests started through the XenAPI's
//! `GuestBackend` over the real host assembly (`XenHost`: the PVH builder, xenstored, the
//! console set, the grant-mapped pages, the toolstack) on `FakeXen`, each doing what the
//! benchmark's guest does once booted (its xenstore traffic as Linux's xenbus sends it, a
//! quiet boot's console output), with a counting allocator.
//!
//! Each component's share is what the heap gives back when that component is dropped with
//! `n` guests running, less the same with none, divided by `n`. `FakeXen`'s own bookkeeping
//! (the hypervisor's memory in the kernel) is not a component and is not counted.
//!
//! `cargo test -p keel-toolstack --test guest_memory -- --nocapture` prints the table
//! (docs/benchmarks.md, "dom0 heap per running guest").

// Helpers outside `#[test]` functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{page_host, PageHost};
use keel_toolstack::MapFrames;
use std::sync::atomic::{AtomicU64, Ordering};

use keel_console::XenconsInterface;
use keel_domain_builder::elf_load::testimage::pvh_elf64;
use keel_heap_count::{freed_by, CountingAlloc};
use keel_toolstack::{guests, Timeouts, Toolstack};
use keel_xen::fake::FakeXen;
use keel_xen::xenstore_wire::{XsMessage, XsType};
use keel_xenapi::guest::{BootImage, BootSpec, GuestBackend, KERNEL_HEAD_BYTES};
use keel_xenstored::Xenstored;

/// Counts the bytes each thread holds (the test is one thread; others' tests run beside).
#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc;

static NOW_NS: AtomicU64 = AtomicU64::new(1_000_000_000);

fn now_ns() -> u64 {
    NOW_NS.load(Ordering::Relaxed)
}

const HOLES: u64 = 0x20000;
const HOLE_FRAMES: u64 = 4096;
const MAX_GUESTS: usize = 16;

type Host = PageHost;

const RAMDISK: &[u8] = &[7; 5000];

fn spec(i: usize, kernel: &[u8]) -> BootSpec {
    BootSpec {
        name: format!("bench-bg{i}"),
        cmdline: "console=hvc0 quiet loglevel=4 keel_guest=idle".into(),
        ..common::boot_spec(i, kernel.len(), Some(RAMDISK.len()))
    }
}

/// What Linux 6.1's xenbus sends once a PVH guest with no devices has booted (its
/// frontend probe, the balloon, shutdown, sysrq and cpu-hotplug watches, and the features
/// `xen-shutdown` writes), answered as the ring would answer it.
fn guest_xenstore_traffic(xs: &mut Xenstored, domid: u16) {
    let requests: Vec<(XsType, Vec<Vec<u8>>)> = vec![
        (XsType::Directory, vec![b"device".to_vec()]),
        (
            XsType::Watch,
            vec![b"device".to_vec(), b"FFFFFFFF00000001".to_vec()],
        ),
        (
            XsType::Watch,
            vec![b"memory/target".to_vec(), b"FFFFFFFF00000002".to_vec()],
        ),
        (
            XsType::Watch,
            vec![b"control/shutdown".to_vec(), b"FFFFFFFF00000003".to_vec()],
        ),
        (
            XsType::Watch,
            vec![b"control/sysrq".to_vec(), b"FFFFFFFF00000004".to_vec()],
        ),
        (
            XsType::Watch,
            vec![b"cpu".to_vec(), b"FFFFFFFF00000005".to_vec()],
        ),
        (
            XsType::Write,
            vec![b"control/feature-poweroff".to_vec(), b"1".to_vec()],
        ),
        (
            XsType::Write,
            vec![b"control/feature-reboot".to_vec(), b"1".to_vec()],
        ),
        (
            XsType::Write,
            vec![b"control/feature-sysrq".to_vec(), b"1".to_vec()],
        ),
        (XsType::Read, vec![b"memory/static-max".to_vec()]),
        (XsType::Read, vec![b"cpu/0/availability".to_vec()]),
    ];
    for (i, (kind, parts)) in requests.iter().enumerate() {
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let last_raw = *kind == XsType::Write;
        let mut msg = XsMessage::build(*kind, 0, 0, &parts, last_raw).unwrap();
        msg.req_id = i as u32 + 1;
        xs.handle(domid, &msg).unwrap();
        // Linux shrugs off a refused feature write (Keel's skeleton may not offer the node).
        while xs.take_message(domid).is_some() {}
    }
}

/// A quiet boot's console output (`quiet loglevel=4` and the guest's own lines); it fits
/// the 2 KiB output ring, so the guest writes it at once.
const CONSOLE_OUTPUT_BYTES: usize = 1500;

fn guest_console_output(page: &XenconsInterface) {
    for i in 0..CONSOLE_OUTPUT_BYTES {
        let prod = page.out_prod.load(Ordering::Relaxed);
        let slot = prod as usize % page.output.len();
        page.output[slot].store(b"keel-guest: ready\n"[i % 18], Ordering::Relaxed);
        page.out_prod.store(prod.wrapping_add(1), Ordering::Release);
    }
}

/// Bytes each component gives back when dropped, with `n` guests started and running.
#[derive(Debug, Default, Clone, Copy)]
struct Shares {
    xenstored: i64,
    consoles: i64,
    mapped_pages: i64,
    toolstack: i64,
}

fn run(n: usize) -> Shares {
    let xen: &'static FakeXen = Box::leak(Box::new(FakeXen::with_dom0_holes(HOLES, HOLE_FRAMES)));
    let kernel = pvh_elf64(0x100_0000, &[0x90; 4096], 0x1000, Some(0x100_0000));
    let host: Host = page_host(xen, MAX_GUESTS, now_ns);
    let console_pages: Vec<&XenconsInterface> = (0..MAX_GUESTS)
        .map(|i| host.borrow().console_frames.view(0xa_0000 + i as u64))
        .collect();
    let mut backend = guests(&host);
    for (i, console_page) in console_pages.iter().enumerate().take(n) {
        let spec = spec(i, &kernel);
        let head = kernel.len().min(KERNEL_HEAD_BYTES);
        let prepared = backend.prepare_start(&spec, &kernel[..head]).unwrap();
        backend
            .load_image(prepared, BootImage::Kernel, &kernel[head..])
            .unwrap();
        backend
            .load_image(prepared, BootImage::Ramdisk, RAMDISK)
            .unwrap();
        let domid = backend.start(prepared, spec).unwrap();
        NOW_NS.fetch_add(1_000_000_000, Ordering::Relaxed);
        guest_xenstore_traffic(
            &mut host.borrow_mut().xenstored,
            u16::try_from(domid).unwrap(),
        );
        guest_console_output(console_page);
        for _ in 0..8 {
            host.borrow_mut().service();
        }
    }
    let mut h = host.borrow_mut();
    Shares {
        consoles: freed_by(|| drop(std::mem::take(&mut h.consoles))),
        mapped_pages: freed_by(|| {
            drop(std::mem::take(&mut h.store_pages));
            drop(std::mem::take(&mut h.console_pages));
        }),
        toolstack: freed_by(|| {
            drop(std::mem::replace(
                &mut h.toolstack,
                Toolstack::new(Timeouts::default()),
            ))
        }),
        xenstored: freed_by(|| drop(std::mem::replace(&mut h.xenstored, Xenstored::new()))),
    }
}

/// Per guest: (share with `n`) − (share with none), over `n`.
fn per_guest(n: usize) -> Shares {
    let empty = run(0);
    let full = run(n);
    let each = |f: fn(&Shares) -> i64| (f(&full) - f(&empty)) / n as i64;
    Shares {
        xenstored: each(|s| s.xenstored),
        consoles: each(|s| s.consoles),
        mapped_pages: each(|s| s.mapped_pages),
        toolstack: each(|s| s.toolstack),
    }
}

/// The bounds hold what was measured (docs/benchmarks.md, "dom0 heap per running guest"):
/// a console takes what its guest wrote (a quiet boot's 1.5 KB, not the 64 KiB bound it
/// may grow to), xenstored a guest's nodes, watches and connection.
#[test]
fn a_running_guest_costs_the_toolstack_what_it_uses() {
    let each = per_guest(8);
    println!("dom0 heap per running guest (8 guests), bytes: {each:?}");
    assert!(each.xenstored > 0 && each.consoles > 0 && each.toolstack > 0);
    assert!(each.consoles <= 4096, "console: {} bytes", each.consoles);
    assert!(
        each.xenstored <= 16 * 1024,
        "xenstored: {} bytes",
        each.xenstored
    );
    let total = each.xenstored + each.consoles + each.mapped_pages + each.toolstack;
    assert!(total <= 20 * 1024, "{total} bytes per guest");
}
