//! Keel as Xen's PVH dom0: the glue between `keel-xen` (the ABI, host-tested) and this
//! machine. [`detect`] runs first of all (CPUID, then the hypercall page, so the console
//! can use `console_io`); [`init`] runs once the frame allocator and page tables exist and
//! sets up, in order: the requirement check, the memory map from Xen, shared_info in a
//! frame of the [`FrameSpace`], the pvclock, the host figures, the grant table and the
//! event-channel upcall. Any failure stops the boot with a line saying what is missing.

pub mod disks;
pub mod events;
pub mod grants;
pub mod guests;
pub mod holes;
pub mod hypercall;
pub mod selftest;
pub mod timer;
pub mod vifs;

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use keel_xen::cpuid::{CpuidResult, XenCpuid};
use keel_xen::frames::FrameSpace;
use keel_xen::host::read_host_figures;
use keel_xen::hypercall::PAGE_SIZE;
use keel_xen::memory::{memory_map, E820Entry, E820Kind};
use keel_xen::shared_info::SharedInfo;
use spin::{Mutex, Once};

use self::hypercall::Xen;
use crate::{memory, time};

/// Most entries read from `XENMEM_memory_map`.
const MAX_E820_ENTRIES: usize = 128;

static CPUID: Once<XenCpuid> = Once::new();
static SHARED: Once<&'static SharedInfo> = Once::new();
static FRAMES: Mutex<Option<FrameSpace>> = Mutex::new(None);

fn raw_cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    // SAFETY: CPUID exists on every x86_64 CPU and has no side effects.
    #[allow(unused_unsafe)]
    let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, subleaf) };
    CpuidResult {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// Finds Xen's CPUID leaves and installs the hypercall page. `None` when not on Xen (or,
/// in theory, when Xen would not fill the page: then Keel carries on as on a bare machine).
pub fn detect() -> Option<&'static XenCpuid> {
    let cpuid = keel_xen::cpuid::detect(raw_cpuid).ok()?;
    hypercall::install(&cpuid).ok()?;
    Some(CPUID.call_once(|| cpuid))
}

/// Our domain id: from CPUID when Xen says it, else 0 (the hardware domain's).
pub fn domid() -> u16 {
    CPUID
        .get()
        .and_then(|c| c.hvm)
        .and_then(|h| h.domid)
        .unwrap_or(0)
}

/// Calls `push` for every RAM range of Xen's memory map for us; false if there is none.
pub fn ram_ranges(mut push: impl FnMut(keel_memory::Range)) -> bool {
    let mut buffer = [E820Entry::default(); MAX_E820_ENTRIES];
    let map = match memory_map(&Xen, &mut buffer) {
        Ok(map) => map,
        Err(e) => {
            log::error!("xen: XENMEM_memory_map failed: {e}");
            return false;
        }
    };
    let mut any = false;
    for entry in map.iter().filter(|e| e.kind() == E820Kind::Ram) {
        let (addr, size) = (entry.addr, entry.size);
        push(keel_memory::Range::new(addr, addr.saturating_add(size)));
        any = true;
    }
    any
}

/// Runs `f` on the space for Xen-provided frames (set up by [`init`]).
pub fn with_frames<R>(
    f: impl FnOnce(&mut FrameSpace) -> Result<R, keel_xen::frames::FrameSpaceError>,
) -> Result<R, keel_xen::frames::FrameSpaceError> {
    match FRAMES.lock().as_mut() {
        Some(space) => f(space),
        None => Err(keel_xen::frames::FrameSpaceError::NoUnusableRange),
    }
}

/// Brings up the Xen platform after memory is set up. Panics, naming what failed, when Xen
/// lacks something Keel needs: a dom0 without events or grants would only hang later.
pub fn init(version: &str, protocol: &str) {
    let Some(cpuid) = CPUID.get() else {
        panic!("xen: init called without Xen");
    };
    let features = keel_xen::version::features(&Xen)
        .unwrap_or_else(|e| panic!("xen: XENVER_get_features failed: {e}"));
    if let Err(unmet) = keel_xen::requirements::check_pvh_dom0(cpuid, features) {
        panic!("xen: {unmet}");
    }

    let mut buffer = [E820Entry::default(); MAX_E820_ENTRIES];
    let map = memory_map(&Xen, &mut buffer)
        .unwrap_or_else(|e| panic!("xen: XENMEM_memory_map failed: {e}"));
    for entry in map {
        let (addr, size) = (entry.addr, entry.size);
        log::debug!(
            "xen: memory {:#012x}-{:#012x} {:?}",
            addr,
            addr.saturating_add(size),
            entry.kind()
        );
    }
    let unusable_bytes: u64 = map
        .iter()
        .filter(|e| e.kind() == E820Kind::Unusable)
        .map(|e| e.size)
        .sum();
    let space = FrameSpace::from_e820(map).unwrap_or_else(|e| panic!("xen: {e}"));
    *FRAMES.lock() = Some(space);

    let shared = map_shared_info();
    let tsc_hz = time::use_pvclock(&shared.vcpu_info[0].time)
        .unwrap_or_else(|e| panic!("xen: pvclock unusable: {e}"));
    log::info!(
        "keel {version} booting via {protocol} as Xen's PVH dom0 (domain {}); pvclock, TSC {} MHz",
        domid(),
        tsc_hz / 1_000_000
    );

    let host = read_host_figures(&Xen).unwrap_or_else(|e| panic!("xen: {e}"));
    log::info!(
        "xen: Xen {}, capabilities {}",
        host.version_string(),
        host.capabilities().collect::<Vec<_>>().join(" ")
    );
    log::info!(
        "xen: physinfo: {} CPUs at {} MHz, {} MiB total, {} MiB free",
        host.cpus(),
        host.cpu_mhz(),
        host.total_memory_bytes() >> 20,
        host.free_memory_bytes() >> 20
    );

    match grants::init() {
        Ok(entries) => log::info!(
            "xen: grant table v1, {entries} entries; {} MiB of unusable memory for Xen's frames",
            unusable_bytes >> 20
        ),
        Err(e) => panic!("xen: grant table: {e}"),
    }
    if let Err(e) = events::init(shared) {
        panic!(
            "xen: cannot route events to vector {:#x}: {e:?}",
            events::UPCALL_VECTOR
        );
    }
}

/// Places shared_info in a free frame of the space and maps it.
fn map_shared_info() -> &'static SharedInfo {
    let gfn = with_frames(|f| f.allocate(1))
        .unwrap_or_else(|e| panic!("xen: no frame for shared_info: {e}"));
    keel_xen::memory::map_shared_info(&Xen, gfn)
        .unwrap_or_else(|e| panic!("xen: XENMEM_add_to_physmap(shared_info) failed: {e}"));
    let page = memory::map_firmware(gfn * PAGE_SIZE as u64, PAGE_SIZE as u64)
        .unwrap_or_else(|e| panic!("xen: cannot map shared_info: {e}"));
    // SAFETY: Xen placed shared_info at this frame, now mapped write-back for good.
    let shared = unsafe { SharedInfo::from_ptr(page.as_ptr().cast::<SharedInfo>()) };
    SHARED.call_once(|| shared)
}

/// What the management API reports about the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// `4.17.7`.
    pub xen_version: String,
    /// Guest types Xen runs: `xen-3.0-x86_64`, `hvm-3.0-x86_64`, ...
    pub capabilities: Vec<String>,
    pub cpus: u32,
    pub cpu_mhz: u32,
    pub total_memory_bytes: u64,
    pub free_memory_bytes: u64,
    /// Xen's system time: nanoseconds since the hypervisor booted (pvclock).
    pub uptime_ns: u64,
}

/// Asks Xen to power off or reboot the machine (dom0's shutdown ends the host). Returns
/// only if it did not happen: with Xen's error, or `Ok` if the call came back anyway.
pub fn shutdown(reason: keel_xen::sched::ShutdownReason) -> Result<(), keel_xen::error::XenError> {
    keel_xen::sched::shutdown(&Xen, reason)
}

/// Reads the figures afresh (free memory changes as domains come and go).
pub fn host_facts() -> Option<HostFacts> {
    let host = match read_host_figures(&Xen) {
        Ok(h) => h,
        Err(e) => {
            log::warn!("xen: host figures unavailable: {e}");
            return None;
        }
    };
    Some(HostFacts {
        xen_version: host.version_string(),
        capabilities: host.capabilities().map(ToString::to_string).collect(),
        cpus: host.cpus(),
        cpu_mhz: host.cpu_mhz(),
        total_memory_bytes: host.total_memory_bytes(),
        free_memory_bytes: host.free_memory_bytes(),
        uptime_ns: time::xen_system_time_ns()?,
    })
}
