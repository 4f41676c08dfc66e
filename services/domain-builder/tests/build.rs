//! The builder against `FakeXen`: real images in, a paused domain out; and every way it
//! can fail leaves nothing behind (the domain destroyed, Xen's free memory back to its
//! value before the attempt, every dom0 window unmapped and its hole frames returned).

// Test helpers outside `#[test]` functions unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_domain_builder::build::{pvh_boot_cpu, Step};
use keel_domain_builder::elf_load::testimage::pvh_elf64;
use keel_domain_builder::elf_load::{ElfError, LoadError};
use keel_domain_builder::fake::FakeHoles;
use keel_domain_builder::layout::{self, E820_ACPI, E820_RAM, E820_RESERVED};
use keel_domain_builder::{
    build_pvh, BuildError, BuildOptions, BuiltDomain, BytesSource, DomainConfig, FeedError,
    ImageSource, KernelError, PvhBuild, PROBE_BYTES,
};
use keel_xen::control::ControlError;
use keel_xen::domctl::dominf;
use keel_xen::fake::FakeXen;
use keel_xen::hvm::{get_param, HvmParam};
use keel_xen::hvm_save::MTRR_DEF_TYPE_WB_ENABLED;
use keel_xen::XenError;

const HOLES: u64 = 0x20000;
const HOLE_FRAMES: u64 = 2048;

const KERNEL_PADDR: u64 = 0x100_0000;
const KERNEL_ENTRY: u32 = 0x100_0040;
const KERNEL_BSS: u64 = 0x2_3456;

/// 600 KiB of code-like bytes (with 0xe8 call opcodes for the BCJ filter to rewrite).
fn kernel_code() -> Vec<u8> {
    (0..600 * 1024u32)
        .map(|i| match i % 97 {
            0 => 0xe8,
            _ => ((i % 251) as u8) ^ ((i / 4096) as u8),
        })
        .collect()
}

/// The ELF in `tests/fixtures/pvh-kernel.elf.xz`.
fn kernel_elf() -> Vec<u8> {
    pvh_elf64(KERNEL_PADDR, &kernel_code(), KERNEL_BSS, Some(KERNEL_ENTRY))
}

/// The fixture was made with
/// `xz --format=xz --check=crc32 --x86 --lzma2=dict=256KiB -c target/pvh-kernel.elf`
/// (256 KiB dictionary: decoding wraps around it), as Linux compresses vmlinux.
#[test]
#[ignore = "writes target/pvh-kernel.elf, to regenerate the xz fixture"]
fn write_kernel_elf() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/pvh-kernel.elf");
    std::fs::write(path, kernel_elf()).unwrap();
}

/// A bzImage (boot protocol 2.15, like Linux 6.1) around `payload`.
fn bzimage(payload: &[u8]) -> Vec<u8> {
    let setup_sects = 27u8;
    let mut f = vec![0u8; (usize::from(setup_sects) + 1) * 512];
    f[0x1f1] = setup_sects;
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
    f[0x248..0x24c].copy_from_slice(&0x3b4u32.to_le_bytes());
    f[0x24c..0x250].copy_from_slice(&(payload.len() as u32 + 4).to_le_bytes());
    f.resize(f.len() + 0x3b4, 0x90);
    f.extend_from_slice(payload);
    // Linux appends the uncompressed size.
    f.extend_from_slice(&(kernel_elf().len() as u32).to_le_bytes());
    f.extend_from_slice(&[0x90; 4096]);
    f
}

fn xz_bzimage() -> Vec<u8> {
    bzimage(include_bytes!("fixtures/pvh-kernel.elf.xz"))
}

/// `tests/fixtures/pvh-kernel.elf.gz` is `gzip -9 -c target/pvh-kernel.elf` (with its name
/// in the header, as gzip writes it).
fn gzip_bzimage() -> Vec<u8> {
    bzimage(include_bytes!("fixtures/pvh-kernel.elf.gz"))
}

fn config(memory_mib: u64, vcpus: u32) -> DomainConfig<'static> {
    DomainConfig {
        uuid: *b"0123456789abcdef",
        vcpus,
        memory_mib,
        cmdline: b"console=hvc0 root=/dev/xvda1",
        console_domid: 0,
        store_domid: 0,
    }
}

fn initrd() -> Vec<u8> {
    (0..70_000u32).map(|i| (i * 7) as u8).collect()
}

struct Attempt {
    xen: FakeXen,
    free_before: u64,
}

impl Attempt {
    fn new() -> Self {
        let xen = FakeXen::with_dom0_holes(HOLES, HOLE_FRAMES);
        let free_before = xen.free_pages();
        Attempt { xen, free_before }
    }

    fn build(
        &self,
        config: &DomainConfig<'_>,
        kernel: &[u8],
        initrd: Option<&[u8]>,
        options: &BuildOptions,
    ) -> (Result<BuiltDomain, BuildError>, u64) {
        self.build_cut(config, kernel, initrd, options, None)
    }

    /// Builds; `cut` makes the builder's `n`-th hypercall fail.
    fn build_cut(
        &self,
        config: &DomainConfig<'_>,
        kernel: &[u8],
        initrd: Option<&[u8]>,
        options: &BuildOptions,
        cut: Option<(u32, XenError)>,
    ) -> (Result<BuiltDomain, BuildError>, u64) {
        let mut holes = FakeHoles::new(&self.xen);
        if let Some((n, error)) = cut {
            self.xen.fail_call(n, error);
        }
        let mut kernel = BytesSource(kernel);
        let mut initrd = initrd.map(BytesSource);
        let result = build_pvh(
            &self.xen,
            &mut holes,
            config,
            &mut kernel,
            initrd.as_mut().map(|i| i as &mut dyn ImageSource),
            options,
        );
        (result, holes.free_frames())
    }

    /// Nothing of a failed attempt is left.
    fn assert_clean(&self, hole_frames_free: u64) {
        assert_eq!(
            self.xen.domain_ids(),
            Vec::<u16>::new(),
            "domain left behind"
        );
        assert_eq!(self.xen.free_pages(), self.free_before, "Xen memory leaked");
        assert_eq!(self.xen.foreign_mapping_count(), 0, "dom0 mapping left");
        assert_eq!(hole_frames_free, HOLE_FRAMES, "hole frames not returned");
        assert_eq!(self.xen.dom0_ram_clobbered(), Vec::<u64>::new());
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Everything a booting PVH kernel relies on, checked in the fake's copy of guest memory.
fn check_guest(xen: &FakeXen, built: &BuiltDomain, config: &DomainConfig<'_>, initrd: &[u8]) {
    check_guest_with(xen, built, config, &kernel_code(), initrd);
}

/// As [`check_guest`], for a kernel of `pvh_elf64(KERNEL_PADDR, code, KERNEL_BSS, entry)`.
fn check_guest_with(
    xen: &FakeXen,
    built: &BuiltDomain,
    config: &DomainConfig<'_>,
    code: &[u8],
    initrd: &[u8],
) {
    let dom = built.domid;
    // Paused, HVM, all its memory populated.
    let flags = xen.domain_flags(dom).unwrap();
    assert!(flags & dominf::PAUSED != 0);
    let frames = xen.domain_frames(dom);
    let ram = config.memory_mib << 8;
    assert_eq!(
        frames.len() as u64,
        ram + layout::ACPI_PAGES + layout::SPECIAL_PAGES
    );
    let (vcpus, max_pages, pool) = xen.domain_limits(dom).unwrap();
    assert_eq!(vcpus, config.vcpus);
    assert_eq!(max_pages, config.max_memory_kib() / 4);
    assert_eq!(pool << 12, config.paging_pool_bytes());

    // The kernel at its physical address, BSS zeroed.
    assert_eq!(built.entry, u64::from(KERNEL_ENTRY));
    assert_eq!(
        built.kernel,
        KERNEL_PADDR..KERNEL_PADDR + code.len() as u64 + KERNEL_BSS
    );
    assert!(xen.read_guest(dom, KERNEL_PADDR, code.len()).unwrap() == code);
    let bss = xen
        .read_guest(dom, KERNEL_PADDR + code.len() as u64, KERNEL_BSS as usize)
        .unwrap();
    assert!(bss.iter().all(|&b| b == 0));

    // The initrd, page-aligned after the kernel.
    let initrd_range = built.initrd.clone().unwrap();
    assert_eq!(initrd_range.start, layout::page_align(built.kernel.end));
    assert_eq!(
        xen.read_guest(dom, initrd_range.start, initrd.len())
            .unwrap(),
        initrd
    );

    // The start info.
    let si = xen.read_guest(dom, built.start_info_paddr, 56).unwrap();
    assert_eq!(built.start_info_paddr, layout::page_align(initrd_range.end));
    assert_eq!(u32_at(&si, 0), 0x336e_c578);
    assert_eq!(u32_at(&si, 12), 1);
    let module = xen.read_guest(dom, u64_at(&si, 16), 16).unwrap();
    assert_eq!(u64_at(&module, 0), initrd_range.start);
    assert_eq!(u64_at(&module, 8), initrd.len() as u64);
    let cmdline = xen
        .read_guest(dom, u64_at(&si, 24), config.cmdline.len() + 1)
        .unwrap();
    assert_eq!(&cmdline[..config.cmdline.len()], config.cmdline);
    assert_eq!(cmdline[config.cmdline.len()], 0);
    let rsdp = xen.read_guest(dom, u64_at(&si, 32), 36).unwrap();
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    let memmap_entries = u32_at(&si, 48) as usize;
    let memmap = xen
        .read_guest(dom, u64_at(&si, 40), memmap_entries * 24)
        .unwrap();

    // The memory map, the same in Xen and in the start info.
    let e820 = xen.domain_memory_map(dom);
    assert_eq!(e820.len(), memmap_entries);
    for (i, e) in e820.iter().enumerate() {
        assert_eq!(u64_at(&memmap, i * 24), { e.addr });
        assert_eq!(u64_at(&memmap, i * 24 + 8), { e.size });
        assert_eq!(u32_at(&memmap, i * 24 + 16), { e.kind });
    }
    let kinds: Vec<u32> = e820.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [E820_RAM, E820_ACPI, E820_RESERVED]);
    assert_eq!({ e820[0].size }, config.memory_mib << 20);

    // Special pages and the params naming them.
    let param = |p| get_param(xen, dom, p).unwrap();
    assert_eq!(param(HvmParam::StorePfn), 0xfeffc);
    assert_eq!(param(HvmParam::ConsolePfn), 0xfefff);
    assert_eq!(param(HvmParam::IdentPt), 0xfeffe000);
    assert_eq!(param(HvmParam::StoreEvtchn), u64::from(built.store_port.0));
    assert_eq!(
        param(HvmParam::ConsoleEvtchn),
        u64::from(built.console_port.0)
    );
    assert_ne!(built.store_port, built.console_port);
    assert_eq!(param(HvmParam::TimerMode), 1);
    let ident = xen.read_guest(dom, 0xfeffe000, 8).unwrap();
    assert_eq!(u32_at(&ident, 4), 0x0040_00e7);
    assert!(xen
        .read_guest(dom, 0xfeffc000, 4096)
        .unwrap()
        .iter()
        .all(|&b| b == 0));

    // Grant entries 0 (console) and 1 (xenstore).
    let gnt = xen.domain_grant_frame(dom, 0).unwrap();
    assert_eq!(&gnt[..8], &[1, 0, 0, 0, 0xff, 0xef, 0x0f, 0]);
    assert_eq!(&gnt[8..16], &[1, 0, 0, 0, 0xfc, 0xef, 0x0f, 0]);

    // vCPU 0 at the PVH entry, the others waiting for Linux to start them; MTRRs on.
    let cpu = xen.domain_vcpu(dom, 0).unwrap();
    assert_eq!(cpu, pvh_boot_cpu(built.entry, built.start_info_paddr));
    for v in 1..config.vcpus as u16 {
        assert_eq!(xen.domain_vcpu(dom, v), None);
    }
    for v in 0..config.vcpus as u16 {
        assert_eq!(
            xen.domain_mtrr_def_type(dom, v),
            Some(MTRR_DEF_TYPE_WB_ENABLED)
        );
    }
}

#[test]
fn builds_a_guest_from_a_pvh_elf() {
    let a = Attempt::new();
    let cfg = config(64, 2);
    let initrd = initrd();
    let (built, holes_free) = a.build(&cfg, &kernel_elf(), Some(&initrd), &BuildOptions::default());
    let built = built.unwrap();
    check_guest(&a.xen, &built, &cfg, &initrd);
    // Nothing of dom0 stays mapped; Xen's memory went to the guest.
    assert_eq!(a.xen.foreign_mapping_count(), 0);
    assert_eq!(holes_free, HOLE_FRAMES);
    assert_eq!(
        a.xen.free_pages(),
        a.free_before
            - (64 << 8)
            - layout::ACPI_PAGES
            - layout::SPECIAL_PAGES
            - cfg.paging_pool_bytes() / 4096
            - keel_xen::fake::DOMAIN_OVERHEAD_PAGES
    );
    // Destroying it later gives everything back.
    keel_xen::domctl::destroy_domain(&a.xen, built.domid).unwrap();
    a.assert_clean(holes_free);
}

#[test]
fn builds_a_guest_from_an_xz_bzimage() {
    let a = Attempt::new();
    let cfg = config(32, 4);
    let initrd = initrd();
    let (built, holes_free) = a.build(&cfg, &xz_bzimage(), Some(&initrd), &BuildOptions::default());
    let built = built.unwrap();
    check_guest(&a.xen, &built, &cfg, &initrd);
    assert_eq!(holes_free, HOLE_FRAMES);
    // The dictionary (top of RAM) was wiped after use.
    let top = a
        .xen
        .read_guest(built.domid, (32 << 20) - (256 << 10), 256 << 10)
        .unwrap();
    assert!(top.iter().all(|&b| b == 0));
}

#[test]
fn builds_a_guest_from_a_gzip_bzimage() {
    let a = Attempt::new();
    let cfg = config(32, 2);
    let initrd = initrd();
    let (built, holes_free) = a.build(
        &cfg,
        &gzip_bzimage(),
        Some(&initrd),
        &BuildOptions::default(),
    );
    check_guest(&a.xen, &built.unwrap(), &cfg, &initrd);
    assert_eq!(holes_free, HOLE_FRAMES);
}

#[test]
fn a_corrupt_gzip_kernel_destroys_the_domain() {
    let a = Attempt::new();
    let cfg = config(32, 1);
    let payload_at = 28 * 512 + 0x3b4;
    let good = gzip_bzimage();
    // A flipped bit in the deflate data, in the CRC trailer, and a payload cut short.
    let mut flipped = good.clone();
    flipped[payload_at + 20_000] ^= 0x10;
    let mut bad_crc = good.clone();
    let gz_len = include_bytes!("fixtures/pvh-kernel.elf.gz").len();
    bad_crc[payload_at + gz_len - 8] ^= 1;
    let mut cut = good.clone();
    cut[0x24c..0x250].copy_from_slice(&((gz_len / 2) as u32).to_le_bytes());
    for image in [flipped, bad_crc, cut] {
        let (r, holes) = a.build(&cfg, &image, None, &BuildOptions::default());
        assert!(
            matches!(r, Err(BuildError::Kernel(KernelError::Gzip(_)))),
            "{r:?}"
        );
        a.assert_clean(holes);
    }
}

#[test]
fn small_windows_give_the_same_guest() {
    let a = Attempt::new();
    let cfg = config(32, 1);
    let initrd = initrd();
    let options = BuildOptions { window_frames: 3 };
    let (built, _) = a.build(&cfg, &xz_bzimage(), Some(&initrd), &options);
    check_guest(&a.xen, &built.unwrap(), &cfg, &initrd);
}

#[test]
fn a_guest_kernel_that_is_not_a_kernel_is_refused_cleanly() {
    let a = Attempt::new();
    let cfg = config(32, 1);
    for junk in [&b"#!/bin/sh\necho hello\n"[..], &[0u8; 8192][..], &[][..]] {
        let mut holes = FakeHoles::new(&a.xen);
        let calls = a.xen.hypercall_count();
        let r = build_pvh(
            &a.xen,
            &mut holes,
            &cfg,
            &mut BytesSource(junk),
            None,
            &BuildOptions::default(),
        );
        assert_eq!(r, Err(BuildError::Kernel(KernelError::NotAKernel)));
        // Refused before asking Xen for anything.
        assert_eq!(a.xen.hypercall_count(), calls);
        a.assert_clean(holes.free_frames());
    }

    // An ELF that is not a PVH kernel is found out while loading: the domain goes.
    let no_note = pvh_elf64(KERNEL_PADDR, &[0x90; 4096], 0, None);
    let (r, holes) = a.build(&cfg, &no_note, None, &BuildOptions::default());
    assert_eq!(
        r,
        Err(BuildError::Kernel(KernelError::Load(LoadError::Elf(
            ElfError::NoPvhEntry
        ))))
    );
    a.assert_clean(holes);
}

#[test]
fn a_corrupt_kernel_destroys_the_domain() {
    let a = Attempt::new();
    let cfg = config(32, 1);
    // Corrupt compressed data.
    let mut image = xz_bzimage();
    let mid = 28 * 512 + 0x3b4 + 5000;
    image[mid] ^= 0x55;
    let (r, holes) = a.build(&cfg, &image, None, &BuildOptions::default());
    assert!(
        matches!(r, Err(BuildError::Kernel(KernelError::Decompress(_)))),
        "{r:?}"
    );
    a.assert_clean(holes);
    // A truncated ELF.
    let elf = kernel_elf();
    let (r, holes) = a.build(&cfg, &elf[..elf.len() / 2], None, &BuildOptions::default());
    assert_eq!(
        r,
        Err(BuildError::Kernel(KernelError::Load(LoadError::Elf(
            ElfError::Truncated
        ))))
    );
    a.assert_clean(holes);
}

#[test]
fn a_kernel_too_big_for_the_guest_is_refused() {
    let a = Attempt::new();
    // 16 MiB of RAM; the kernel loads at 16 MiB.
    let cfg = config(16, 1);
    let (r, holes) = a.build(&cfg, &kernel_elf(), None, &BuildOptions::default());
    assert!(
        matches!(
            r,
            Err(BuildError::Kernel(KernelError::Load(LoadError::TooBig { limit, .. })))
                if limit == 16 << 20
        ),
        "{r:?}"
    );
    a.assert_clean(holes);
    // Room for the kernel but not for the initrd after it.
    let cfg = config(18, 1);
    let big_initrd = vec![7u8; 2 << 20];
    let (r, holes) = a.build(
        &cfg,
        &kernel_elf(),
        Some(&big_initrd),
        &BuildOptions::default(),
    );
    assert!(
        matches!(
            r,
            Err(BuildError::TooBig {
                what: Step::LoadInitrd,
                ..
            })
        ),
        "{r:?}"
    );
    a.assert_clean(holes);
}

#[test]
fn xen_out_of_memory_is_typed_and_leaks_nothing() {
    let a = Attempt::new();
    a.xen.set_free_pages(5000);
    let a = Attempt {
        free_before: 5000,
        xen: a.xen,
    };
    let (r, holes) = a.build(
        &config(64, 1),
        &kernel_elf(),
        None,
        &BuildOptions::default(),
    );
    assert_eq!(
        r,
        Err(BuildError::XenOutOfMemory {
            step: Step::PopulateMemory
        })
    );
    a.assert_clean(holes);
}

#[test]
fn a_domctl_error_is_typed() {
    let a = Attempt::new();
    // Call 0 is createdomain, 1 max_vcpus.
    let cut = Some((1, XenError::EINVAL));
    let (r, holes) = a.build_cut(
        &config(32, 1),
        &kernel_elf(),
        None,
        &BuildOptions::default(),
        cut,
    );
    assert_eq!(
        r,
        Err(BuildError::Xen {
            step: Step::MaxVcpus,
            error: ControlError::Xen(XenError::EINVAL)
        })
    );
    a.assert_clean(holes);
    let cut = Some((0, XenError::ENOSPC));
    let (r, holes) = a.build_cut(
        &config(32, 1),
        &kernel_elf(),
        None,
        &BuildOptions::default(),
        cut,
    );
    assert_eq!(
        r,
        Err(BuildError::Xen {
            step: Step::CreateDomain,
            error: ControlError::Xen(XenError::ENOSPC)
        })
    );
    a.assert_clean(holes);
}

/// Cuts the build at every hypercall in turn, like storage's crash test cuts every write:
/// each cut yields a typed error and leaves nothing behind, except a cut of an unmap
/// (`XENMEM_remove_from_physmap`), which the builder retries, so the build completes.
fn cut_every_hypercall(kernel: &[u8], code: &[u8], memory_mib: u64, options: &BuildOptions) {
    const MEMORY_OP: u32 = 12;
    const REMOVE_FROM_PHYSMAP: u64 = 15;
    let cfg = config(memory_mib, 2);
    let initrd = initrd();
    let log = {
        let a = Attempt::new();
        let mut holes = FakeHoles::new(&a.xen);
        let before = a.xen.hypercall_count() as usize;
        build_pvh(
            &a.xen,
            &mut holes,
            &cfg,
            &mut BytesSource(kernel),
            Some(&mut BytesSource(&initrd)),
            options,
        )
        .unwrap();
        a.xen.call_log().split_off(before)
    };
    for (cut, &(op, cmd)) in log.iter().enumerate() {
        let a = Attempt::new();
        let cut_call = Some((cut as u32, XenError::EINVAL));
        let (r, holes) = a.build_cut(&cfg, kernel, Some(&initrd), options, cut_call);
        let retried = (op, cmd) == (MEMORY_OP, REMOVE_FROM_PHYSMAP);
        match r {
            Ok(built) => {
                assert!(retried, "cut {cut} ({op}, {cmd}) did not fail the build");
                check_guest_with(&a.xen, &built, &cfg, code, &initrd);
                keel_xen::domctl::destroy_domain(&a.xen, built.domid).unwrap();
            }
            Err(e) => {
                assert!(
                    !retried,
                    "cut {cut}: a retried unmap failed the build: {e:?}"
                );
                assert!(
                    !matches!(e, BuildError::DestroyFailed { .. }),
                    "cut {cut}: {e:?}"
                );
            }
        }
        a.assert_clean(holes);
    }
}

#[test]
fn every_hypercall_failure_destroys_the_half_built_domain() {
    // A smaller kernel than the fixture's: fewer frames, fewer unmaps to cut.
    let code = &kernel_code()[..40_000];
    let kernel = pvh_elf64(KERNEL_PADDR, code, KERNEL_BSS, Some(KERNEL_ENTRY));
    cut_every_hypercall(&kernel, code, 20, &BuildOptions { window_frames: 256 });
}

#[test]
fn every_hypercall_failure_while_decompressing_is_cleaned_up() {
    cut_every_hypercall(
        &xz_bzimage(),
        &kernel_code(),
        20,
        &BuildOptions { window_frames: 256 },
    );
}

/// Debian's own `vmlinuz`, when xtask has downloaded it (`cargo xtask bench dom0` etc.).
/// Slow unoptimised: run with `cargo test -p keel-domain-builder --release -- --ignored`.
#[test]
#[ignore = "needs target/keel/linux/linux-image-*/boot/vmlinuz-*; slow without --release"]
fn loads_debians_vmlinuz() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/keel/linux");
    let vmlinuz = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("linux-image-"))
        .flat_map(|e| {
            std::fs::read_dir(e.path().join("boot"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .find(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"));
    let Some(vmlinuz) = vmlinuz else {
        eprintln!("no Debian vmlinuz under {root}; skipped");
        return;
    };
    let image = std::fs::read(vmlinuz.path()).unwrap();
    let xen = FakeXen::with_dom0_holes(HOLES, 16384);
    let free_before = xen.free_pages();
    xen.set_free_pages(1 << 20);
    let mut holes = FakeHoles::new(&xen);
    let cfg = config(256, 2);
    let built = build_pvh(
        &xen,
        &mut holes,
        &cfg,
        &mut BytesSource(&image),
        None,
        &BuildOptions::default(),
    )
    .unwrap();
    // CONFIG_PHYSICAL_START=0x1000000; the PVH entry (pvh_start_xen) inside the kernel.
    assert_eq!(built.kernel.start, 0x100_0000);
    assert!(built.kernel.contains(&built.entry), "{built:?}");
    eprintln!("Debian kernel: {:#x?}", built);
    let _ = free_before;
}

/// An unmap that fails even when retried leaves a dom0 mapping of the guest behind: the
/// build reports it, and Xen keeps the destroyed domain dying, holding its memory, until
/// dom0 lets go: the builder never reuses that hole frame.
#[test]
fn an_unmap_that_keeps_failing_is_reported() {
    let cfg = config(20, 1);
    let kernel = pvh_elf64(KERNEL_PADDR, &[0x90; 4096], 0, Some(KERNEL_PADDR as u32));
    let log = {
        let a = Attempt::new();
        let mut holes = FakeHoles::new(&a.xen);
        let before = a.xen.hypercall_count() as usize;
        build_pvh(
            &a.xen,
            &mut holes,
            &cfg,
            &mut BytesSource(&kernel),
            None,
            &BuildOptions::default(),
        )
        .unwrap();
        a.xen.call_log().split_off(before)
    };
    // The last unmap: the grant frame's, after which nothing maps the guest.
    let last_unmap = log.iter().rposition(|&c| c == (12, 15)).unwrap() as u32;
    let a = Attempt::new();
    let mut holes = FakeHoles::new(&a.xen);
    a.xen.fail_call(last_unmap, XenError::EBUSY);
    a.xen.fail_call(last_unmap + 1, XenError::EBUSY);
    let r = build_pvh(
        &a.xen,
        &mut holes,
        &cfg,
        &mut BytesSource(&kernel),
        None,
        &BuildOptions::default(),
    );
    assert_eq!(r, Err(BuildError::LeakedMappings(1)));
    let dom = a.xen.domain_ids()[0];
    assert!(a.xen.domain_flags(dom).unwrap() & dominf::DYING != 0);
    assert_eq!(a.xen.foreign_mapping_count(), 1);
    assert_eq!(holes.free_frames(), HOLE_FRAMES - 1);
}

/// Debian's GRUB for Xen PVH guests (`grub-xen-host`, installed by `cargo xtask prereq`), the
/// kernel of a `PV_bootloader = "pygrub"` VM: an ELF32 whose PHYS32_ENTRY note comes after
/// its segments in the file.
#[test]
fn loads_debians_grub_for_xen_pvh() {
    let path = "/usr/lib/grub-xen/grub-i386-xen_pvh.bin";
    let Ok(image) = std::fs::read(path) else {
        eprintln!("no {path} (package grub-xen-host); skipped");
        return;
    };
    let xen = FakeXen::with_dom0_holes(HOLES, 16384);
    xen.set_free_pages(1 << 20);
    let mut holes = FakeHoles::new(&xen);
    let built = build_pvh(
        &xen,
        &mut holes,
        &config(64, 1),
        &mut BytesSource(&image),
        None,
        &BuildOptions::default(),
    )
    .unwrap();
    // Linked at 1 MiB, entered there.
    assert_eq!(built.kernel.start, 0x10_0000);
    assert_eq!(built.entry, 0x10_0000);
    eprintln!("GRUB for Xen PVH: {built:#x?}");
}

// ---------------------------------------------------------------------------------------
// The stepped build (`PvhBuild`): what Keel's XenAPI drives, a storage read per job step.

/// Feeds `image` to a stepped build in pieces cycling through `pieces` bytes; returns the
/// result and the most dom0 frames mapped between two steps.
fn build_stepped(
    a: &Attempt,
    cfg: &DomainConfig<'_>,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    pieces: &[usize],
    options: &BuildOptions,
) -> (Result<BuiltDomain, BuildError>, u64, usize) {
    let mut holes = FakeHoles::new(&a.xen);
    let head = &kernel[..kernel.len().min(PROBE_BYTES)];
    let build = PvhBuild::begin(
        &a.xen,
        &mut holes,
        cfg,
        head,
        kernel.len() as u64,
        initrd.map(|i| i.len() as u64),
        options,
    );
    let mut build = match build {
        Ok(b) => b,
        Err(e) => return (Err(e), holes.free_frames(), 0),
    };
    let mut most_mapped = a.xen.foreign_mapping_count();
    let mut sizes = pieces.iter().cycle();
    let mut fed = head.len();
    let mut result = Ok(());
    while fed < kernel.len() && result.is_ok() {
        let n = (*sizes.next().unwrap()).min(kernel.len() - fed);
        result = build.feed_kernel(&a.xen, &mut holes, &kernel[fed..fed + n]);
        fed += n;
        most_mapped = most_mapped.max(a.xen.foreign_mapping_count());
    }
    let mut fed = 0;
    while let (Some(initrd), true) = (initrd, result.is_ok()) {
        let n = (*sizes.next().unwrap()).min(initrd.len() - fed);
        result = build.feed_initrd(&a.xen, &mut holes, &initrd[fed..fed + n]);
        fed += n;
        most_mapped = most_mapped.max(a.xen.foreign_mapping_count());
        if fed == initrd.len() {
            break;
        }
    }
    let built = match result {
        Ok(()) => build.finish(&a.xen, &mut holes),
        Err(e) => Err(build.abort(&a.xen, &mut holes, e)),
    };
    (built, holes.free_frames(), most_mapped)
}

#[test]
fn a_stepped_build_fed_in_uneven_pieces_gives_the_same_guest() {
    let initrd = initrd();
    let options = BuildOptions { window_frames: 64 };
    for (name, image) in [
        ("elf", kernel_elf()),
        ("xz", xz_bzimage()),
        ("gzip", gzip_bzimage()),
    ] {
        let a = Attempt::new();
        let cfg = config(32, 2);
        let (built, holes_free, most_mapped) = build_stepped(
            &a,
            &cfg,
            &image,
            Some(&initrd),
            &[1, 4093, 65537, 7],
            &options,
        );
        let built = built.unwrap_or_else(|e| panic!("{name}: {e:?}"));
        check_guest(&a.xen, &built, &cfg, &initrd);
        assert_eq!(holes_free, HOLE_FRAMES, "{name}");
        assert_eq!(a.xen.foreign_mapping_count(), 0, "{name}");
        // Between steps at most the write window and the xz dictionary stay mapped.
        let dictionary = if name == "xz" { 64 } else { 0 };
        assert!(
            most_mapped as u64 <= 64 + dictionary,
            "{name}: {most_mapped} frames mapped between steps"
        );
    }
}

#[test]
fn a_stepped_build_abandoned_at_any_step_leaves_nothing() {
    let image = xz_bzimage();
    let initrd = initrd();
    let cfg = config(32, 1);
    let options = BuildOptions { window_frames: 16 };
    // Steps of 20 000 bytes: the kernel and the initrd are fed in ~15 steps together.
    let steps = (image.len() - PROBE_BYTES.min(image.len())).div_ceil(20_000)
        + initrd.len().div_ceil(20_000);
    for abandon_after in 0..=steps {
        let a = Attempt::new();
        let mut holes = FakeHoles::new(&a.xen);
        let mut build = PvhBuild::begin(
            &a.xen,
            &mut holes,
            &cfg,
            &image[..PROBE_BYTES.min(image.len())],
            image.len() as u64,
            Some(initrd.len() as u64),
            &options,
        )
        .unwrap();
        let mut stream = image[PROBE_BYTES.min(image.len())..]
            .chunks(20_000)
            .map(|c| (true, c))
            .chain(initrd.chunks(20_000).map(|c| (false, c)));
        for _ in 0..abandon_after {
            let (kernel, piece) = stream.next().unwrap();
            if kernel {
                build.feed_kernel(&a.xen, &mut holes, piece).unwrap();
            } else {
                build.feed_initrd(&a.xen, &mut holes, piece).unwrap();
            }
        }
        assert_eq!(
            build.abort(&a.xen, &mut holes, BuildError::Abandoned),
            BuildError::Abandoned
        );
        a.assert_clean(holes.free_frames());
    }
}

#[test]
fn a_stepped_build_fed_out_of_order_fails_typed_and_clean() {
    let image = kernel_elf();
    let initrd = initrd();
    let cfg = config(32, 1);
    let options = BuildOptions::default();
    let begin = |a: &Attempt, holes: &mut FakeHoles<'_>, head: &[u8]| {
        PvhBuild::begin(
            &a.xen,
            holes,
            &cfg,
            head,
            image.len() as u64,
            Some(initrd.len() as u64),
            &options,
        )
    };
    // A head shorter than the probe needs: refused before anything exists.
    let a = Attempt::new();
    let mut holes = FakeHoles::new(&a.xen);
    assert_eq!(
        begin(&a, &mut holes, &image[..100]).err(),
        Some(BuildError::Feed(FeedError::ShortHead))
    );
    a.assert_clean(holes.free_frames());
    // The initrd before the whole kernel; finishing early; more kernel than announced.
    let head = &image[..PROBE_BYTES];
    let a = Attempt::new();
    let mut holes = FakeHoles::new(&a.xen);
    let mut build = begin(&a, &mut holes, head).unwrap();
    assert_eq!(
        build.feed_initrd(&a.xen, &mut holes, &initrd[..10]),
        Err(BuildError::Feed(FeedError::KernelIncomplete))
    );
    assert_eq!(
        build.feed_kernel(&a.xen, &mut holes, &vec![0; image.len()]),
        Err(BuildError::Feed(FeedError::PastTheEnd {
            what: Step::LoadKernel
        }))
    );
    assert_eq!(
        build.finish(&a.xen, &mut holes),
        Err(BuildError::Feed(FeedError::KernelIncomplete))
    );
    a.assert_clean(holes.free_frames());
    // The whole kernel, part of the initrd, then finish.
    let a = Attempt::new();
    let mut holes = FakeHoles::new(&a.xen);
    let mut build = begin(&a, &mut holes, head).unwrap();
    build
        .feed_kernel(&a.xen, &mut holes, &image[PROBE_BYTES..])
        .unwrap();
    build
        .feed_initrd(&a.xen, &mut holes, &initrd[..1000])
        .unwrap();
    assert_eq!(
        build.finish(&a.xen, &mut holes),
        Err(BuildError::Feed(FeedError::InitrdIncomplete))
    );
    a.assert_clean(holes.free_frames());
}
