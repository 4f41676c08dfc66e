//! The build sequence (`libxl__domain_make` → `libxl__build_pre` → `libxl__build_hvm` →
//! `libxl__build_post`, minus xenstore and devices, which are the toolstack's): create the
//! domain, give it memory from Xen's heap, load the kernel and initrd, write the ACPI
//! tables, start info and memory map, set up the xenstore and console pages, event channels
//! and grant entries, and load vCPU 0's registers. The domain is left paused.
//!
//! Any failure after the domain exists destroys it: every window into its memory is
//! unmapped first (windows unmap on drop), so Xen really frees it and its free memory
//! returns to what it was before the attempt.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ops::Range;

use keel_xen::control::ControlError;
use keel_xen::domctl::{destroy_domain, get_hvm_context, hvm_context_size, set_hvm_context};
use keel_xen::evtchn::Port;
use keel_xen::hvm_save::{self, ContextWriter, HvmHwCpu, SaveFormatError};
use keel_xen::memory::populate_physmap;
use keel_xen::{Hypervisor, XenError};

use crate::acpi::{self, AcpiError};
use crate::guest_memory::{HoleFrames, MapError, WRITE_WINDOW_FRAMES};
use crate::kernel_image::{KernelError, CHUNK};
use crate::layout;
use crate::pvh_build::{PvhBuild, PROBE_BYTES};
use crate::source::{ImageSource, SourceError};

/// Longest command line accepted (Linux's x86 `COMMAND_LINE_SIZE`).
pub const MAX_CMDLINE: usize = 2048;
/// Extents per `populate_physmap` call.
const POPULATE_BATCH: usize = 512;
/// Order of a 2 MiB extent.
const ORDER_2M: u32 = 9;
/// `GTF_permit_access`.
pub(crate) const GTF_PERMIT_ACCESS: u16 = 1;
/// Grant references Xen reserves for the toolstack (`GNTTAB_RESERVED_*`).
pub(crate) const GNTTAB_RESERVED_CONSOLE: usize = 0;
pub(crate) const GNTTAB_RESERVED_XENSTORE: usize = 1;
/// How often `destroydomain` is asked again while Xen answers "still tearing down".
const DESTROY_ATTEMPTS: u32 = 1000;

/// What to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainConfig<'a> {
    /// The domain's UUID (Xen's handle).
    pub uuid: [u8; 16],
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The kernel command line, without NUL.
    pub cmdline: &'a [u8],
    /// Domain serving the console and xenstore rings (dom0: 0).
    pub console_domid: u16,
    pub store_domid: u16,
}

/// Tuning that does not change the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildOptions {
    /// Frames mapped at a time while streaming the kernel and initrd into the guest.
    pub window_frames: u64,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            window_frames: WRITE_WINDOW_FRAMES,
        }
    }
}

/// A built, still paused domain: what the toolstack needs to introduce it to xenstored,
/// serve its console and unpause it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltDomain {
    pub domid: u16,
    /// Unbound ports in the guest for `store_domid` / `console_domid` to bind.
    pub store_port: Port,
    pub console_port: Port,
    /// Guest frames of the rings (granted to the backends as grant refs 1 and 0).
    pub store_gfn: u64,
    pub console_gfn: u64,
    /// Where vCPU 0 starts, and the start info it finds in `%ebx`.
    pub entry: u64,
    pub start_info_paddr: u64,
    /// The kernel's loaded range, and the initrd's, if any.
    pub kernel: Range<u64>,
    pub initrd: Option<Range<u64>>,
    /// `memory/static-max` for xenstore, in KiB (`XEN_DOMCTL_max_mem`).
    pub max_memory_kib: u64,
}

/// A configuration the builder refuses before asking Xen for anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    VcpuCount(u32),
    /// Below [`layout::MIN_MEMORY_MIB`], or absurdly large.
    Memory(u64),
    CmdlineTooLong(usize),
    CmdlineHasNul,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::VcpuCount(n) => {
                write!(f, "{n} vCPUs (1 to {} supported)", acpi::MAX_VCPUS)
            }
            ConfigError::Memory(m) => write!(
                f,
                "{m} MiB of memory (at least {} MiB)",
                layout::MIN_MEMORY_MIB
            ),
            ConfigError::CmdlineTooLong(n) => {
                write!(f, "command line of {n} bytes (at most {})", MAX_CMDLINE - 1)
            }
            ConfigError::CmdlineHasNul => write!(f, "command line contains a NUL byte"),
        }
    }
}

/// The step a hypercall failed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    CreateDomain,
    MaxVcpus,
    MaxMem,
    EventChannels,
    HvmParams,
    PagingPool,
    PopulateMemory,
    LoadKernel,
    LoadInitrd,
    Acpi,
    MemoryMap,
    StartInfo,
    SpecialPages,
    GrantTable,
    VcpuContext,
}

/// A [`crate::PvhBuild`] fed against its own announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedError {
    /// `begin` was given less of the kernel's head than [`crate::pvh_build::PROBE_BYTES`].
    ShortHead,
    /// More bytes than the image's announced size.
    PastTheEnd { what: Step },
    /// Initrd bytes, or `finish`, before the whole kernel.
    KernelIncomplete,
    /// `finish` before the whole initrd.
    InitrdIncomplete,
    /// Initrd bytes for a build announced without one.
    NoInitrd,
}

impl core::fmt::Display for FeedError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FeedError::ShortHead => write!(f, "the kernel's head is too short to probe"),
            FeedError::PastTheEnd { what } => write!(f, "{what:?}: more bytes than announced"),
            FeedError::KernelIncomplete => write!(f, "the kernel has not all arrived"),
            FeedError::InitrdIncomplete => write!(f, "the initrd has not all arrived"),
            FeedError::NoInitrd => write!(f, "initrd bytes for a guest without an initrd"),
        }
    }
}

/// Why a domain could not be built. The half-built domain, if any, has been destroyed
/// (except for [`BuildError::DestroyFailed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    Config(ConfigError),
    /// The kernel is not a PVH kernel, is corrupt, or does not fit (`KernelError::Load(
    /// LoadError::TooBig)`: kernel too big).
    Kernel(KernelError),
    /// Reading the initrd failed.
    Initrd(SourceError),
    /// The initrd, then the start info, end beyond the guest's low RAM.
    TooBig {
        what: Step,
        end: u64,
        limit: u64,
    },
    /// Xen had not enough free memory.
    XenOutOfMemory {
        step: Step,
    },
    /// A hypercall failed.
    Xen {
        step: Step,
        error: ControlError,
    },
    /// The guest's memory could not be mapped into dom0.
    Map {
        step: Step,
        error: MapError,
    },
    Acpi(AcpiError),
    /// Xen's HVM context did not parse.
    HvmContext(SaveFormatError),
    /// Dom0 frames could not be unmapped from the guest.
    LeakedMappings(u64),
    /// A stepped build was fed out of order (the caller's mistake, not the image's).
    Feed(FeedError),
    /// The caller gave a stepped build up ([`crate::PvhBuild::abort`] with no other cause).
    Abandoned,
    /// The build failed with `cause` and destroying domain `domid` failed with `error`.
    DestroyFailed {
        domid: u16,
        cause: Box<BuildError>,
        error: ControlError,
    },
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BuildError::Config(e) => write!(f, "bad configuration: {e}"),
            BuildError::Kernel(e) => write!(f, "kernel: {e}"),
            BuildError::Initrd(e) => write!(f, "reading the initrd failed at byte {}", e.offset),
            BuildError::TooBig { what, end, limit } => write!(
                f,
                "{what:?} ends at {end:#x}, beyond the guest's room up to {limit:#x}"
            ),
            BuildError::XenOutOfMemory { step } => {
                write!(f, "Xen is out of memory ({step:?})")
            }
            BuildError::Xen { step, error } => write!(f, "Xen failed {step:?}: {error:?}"),
            BuildError::Map { step, error } => write!(f, "{step:?}: {error}"),
            BuildError::Acpi(e) => write!(f, "ACPI tables: {e}"),
            BuildError::HvmContext(e) => write!(f, "Xen's HVM context does not parse: {e:?}"),
            BuildError::LeakedMappings(n) => {
                write!(f, "{n} dom0 frames could not be unmapped from the guest")
            }
            BuildError::Feed(e) => write!(f, "images fed out of order: {e}"),
            BuildError::Abandoned => write!(f, "the build was given up"),
            BuildError::DestroyFailed {
                domid,
                cause,
                error,
            } => write!(
                f,
                "{cause}; then destroying domain {domid} failed: {error:?}"
            ),
        }
    }
}

pub(crate) fn xen(step: Step) -> impl Fn(XenError) -> BuildError {
    move |error| match error {
        XenError::ENOMEM => BuildError::XenOutOfMemory { step },
        error => BuildError::Xen {
            step,
            error: ControlError::Xen(error),
        },
    }
}

pub(crate) fn domctl(step: Step) -> impl Fn(ControlError) -> BuildError {
    move |error| match error {
        ControlError::Xen(XenError::ENOMEM) => BuildError::XenOutOfMemory { step },
        error => BuildError::Xen { step, error },
    }
}

pub(crate) fn map(step: Step) -> impl Fn(MapError) -> BuildError {
    move |error| BuildError::Map { step, error }
}

impl DomainConfig<'_> {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > acpi::MAX_VCPUS {
            return Err(ConfigError::VcpuCount(self.vcpus));
        }
        // 1 TiB: far beyond anything this builder is meant for, and no overflow below.
        if self.memory_mib < layout::MIN_MEMORY_MIB || self.memory_mib > 1 << 20 {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        if self.cmdline.len() >= MAX_CMDLINE {
            return Err(ConfigError::CmdlineTooLong(self.cmdline.len()));
        }
        if self.cmdline.contains(&0) {
            return Err(ConfigError::CmdlineHasNul);
        }
        Ok(())
    }

    /// `XEN_DOMCTL_max_mem`: the memory plus libxl's 1 MiB of slack (special pages, ACPI).
    pub fn max_memory_kib(&self) -> u64 {
        (self.memory_mib << 10) + 1024
    }

    /// libxl's default paging pool for HAP PVH: 4 × (256 × vCPUs + MiB) KiB.
    pub fn paging_pool_bytes(&self) -> u64 {
        (4 * (256 * u64::from(self.vcpus) + self.memory_mib)) << 10
    }
}

/// Builds a PVH domain from `kernel` (a PVH ELF or an xz bzImage) and `initrd`, mapping its
/// memory through `holes`: [`PvhBuild`] fed from the sources [`CHUNK`] bytes at a time. On
/// success the domain is paused; unpause it with `keel_xen::domctl::unpause_domain` once
/// xenstore and the console are set up.
pub fn build_pvh<H: Hypervisor + ?Sized, F: HoleFrames>(
    hv: &H,
    holes: &mut F,
    config: &DomainConfig<'_>,
    kernel: &mut dyn ImageSource,
    mut initrd: Option<&mut dyn ImageSource>,
    options: &BuildOptions,
) -> Result<BuiltDomain, BuildError> {
    let kernel_size = kernel.size();
    let mut head = alloc::vec![0u8; kernel_size.min(PROBE_BYTES as u64) as usize];
    kernel
        .read_at(0, &mut head)
        .map_err(|e| BuildError::Kernel(e.into()))?;
    let initrd_size = initrd.as_ref().map(|i| i.size());
    let mut build = PvhBuild::begin(hv, holes, config, &head, kernel_size, initrd_size, options)?;
    let mut buf = head;
    buf.resize(CHUNK, 0);
    let mut fed = build.kernel_received();
    let result = (|| {
        while fed < kernel_size {
            let n = (kernel_size - fed).min(CHUNK as u64) as usize;
            kernel
                .read_at(fed, &mut buf[..n])
                .map_err(|e| BuildError::Kernel(e.into()))?;
            build.feed_kernel(hv, holes, &buf[..n])?;
            fed += n as u64;
        }
        if let Some(image) = initrd.as_mut() {
            let size = image.size();
            let mut offset = 0u64;
            // An empty initrd is fed once, so that the kernel is known to be whole.
            loop {
                let n = (size - offset).min(CHUNK as u64) as usize;
                image
                    .read_at(offset, &mut buf[..n])
                    .map_err(BuildError::Initrd)?;
                build.feed_initrd(hv, holes, &buf[..n])?;
                offset += n as u64;
                if offset >= size {
                    break;
                }
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => build.finish(hv, holes),
        Err(cause) => Err(build.abort(hv, holes, cause)),
    }
}

/// Destroys a half-built domain, returning the error to report.
pub(crate) fn destroy_after_failure<H: Hypervisor + ?Sized>(
    hv: &H,
    domid: u16,
    cause: BuildError,
) -> BuildError {
    let mut other_failures = 0;
    for _ in 0..DESTROY_ATTEMPTS {
        match destroy_domain(hv, domid) {
            Ok(()) => return cause,
            // Teardown still in progress (Xen's continuation): ask again.
            Err(ControlError::Xen(XenError::EAGAIN)) => continue,
            Err(error) => {
                other_failures += 1;
                if other_failures > 1 {
                    return BuildError::DestroyFailed {
                        domid,
                        cause: Box::new(cause),
                        error,
                    };
                }
            }
        }
    }
    BuildError::DestroyFailed {
        domid,
        cause: Box::new(cause),
        error: ControlError::Xen(XenError::EAGAIN),
    }
}

/// Populates guest frames `range`, 2 MiB extents where aligned, 4 KiB elsewhere.
pub(crate) fn populate_range<H: Hypervisor + ?Sized>(
    hv: &H,
    domid: u16,
    range: Range<u64>,
) -> Result<(), XenError> {
    let big = 1u64 << ORDER_2M;
    let superpage_at = |gfn: u64| gfn.is_multiple_of(big) && gfn + big <= range.end;
    let mut gfn = range.start;
    let mut batch = Vec::with_capacity(POPULATE_BATCH);
    while gfn < range.end {
        // A run of extents of one order.
        let superpages = superpage_at(gfn);
        let order = if superpages { ORDER_2M } else { 0 };
        batch.clear();
        while gfn < range.end && batch.len() < POPULATE_BATCH && superpage_at(gfn) == superpages {
            batch.push(gfn);
            gfn += 1 << order;
        }
        populate_physmap(hv, domid, order, &batch)?;
    }
    Ok(())
}

/// vCPU 0's registers at the PVH entry (`docs/misc/pvh.pandoc`): 32-bit protected mode,
/// flat segments, paging off, `%ebx` = start info.
pub fn pvh_boot_cpu(entry: u64, start_info_paddr: u64) -> HvmHwCpu {
    let mut cpu = HvmHwCpu::zeroed();
    cpu.cs_limit = u32::MAX;
    cpu.ds_limit = u32::MAX;
    cpu.es_limit = u32::MAX;
    cpu.ss_limit = u32::MAX;
    cpu.tr_limit = 0x67;
    cpu.cs_arbytes = 0xc9b;
    cpu.ds_arbytes = 0xc93;
    cpu.es_arbytes = 0xc93;
    cpu.ss_arbytes = 0xc93;
    cpu.tr_arbytes = 0x8b;
    cpu.cr0 = 0x11; // PE | ET
    cpu.rip = entry;
    cpu.rbx = start_info_paddr;
    cpu.dr6 = 0xffff_0ff0;
    cpu.dr7 = 0x400;
    cpu
}

/// `vcpu_hvm`: MTRRs on (write-back) for every vCPU, then vCPU 0's registers, last,
/// because each load resets the vCPUs.
pub(crate) fn set_vcpu_state<H: Hypervisor + ?Sized>(
    hv: &H,
    domid: u16,
    vcpus: u32,
    entry: u64,
    start_info_paddr: u64,
) -> Result<(), BuildError> {
    let err = domctl(Step::VcpuContext);
    let size = hvm_context_size(hv, domid).map_err(&err)?;
    let mut full = alloc::vec![0u8; size];
    let len = get_hvm_context(hv, domid, &mut full).map_err(&err)?;
    full.truncate(len);
    let header = hvm_save::header_record(&full).map_err(BuildError::HvmContext)?;
    let mut mtrr: [u8; hvm_save::MTRR_LEN] = hvm_save::find_record(&full, hvm_save::TYPE_MTRR, 0)
        .and_then(|r| r.try_into().ok())
        .ok_or(BuildError::HvmContext(SaveFormatError::BadLength {
            typecode: hvm_save::TYPE_MTRR,
            length: 0,
        }))?;
    let at = hvm_save::MTRR_DEF_TYPE_OFFSET;
    mtrr[at..at + 8].copy_from_slice(&hvm_save::MTRR_DEF_TYPE_WB_ENABLED.to_le_bytes());
    for vcpu in 0..vcpus {
        let mut w = ContextWriter::new(header);
        w.record(hvm_save::TYPE_MTRR, vcpu as u16, &mtrr);
        set_hvm_context(hv, domid, &w.finish()).map_err(&err)?;
    }
    let mut w = ContextWriter::new(header);
    w.record(
        hvm_save::TYPE_CPU,
        0,
        &pvh_boot_cpu(entry, start_info_paddr).to_bytes(),
    );
    set_hvm_context(hv, domid, &w.finish()).map_err(&err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf_load::LoadError;

    fn config() -> DomainConfig<'static> {
        DomainConfig {
            uuid: [1; 16],
            vcpus: 2,
            memory_mib: 64,
            cmdline: b"console=hvc0",
            console_domid: 0,
            store_domid: 0,
        }
    }

    #[test]
    fn configs_are_checked() {
        assert_eq!(config().validate(), Ok(()));
        let c = DomainConfig {
            vcpus: 0,
            ..config()
        };
        assert_eq!(c.validate(), Err(ConfigError::VcpuCount(0)));
        let c = DomainConfig {
            memory_mib: 8,
            ..config()
        };
        assert_eq!(c.validate(), Err(ConfigError::Memory(8)));
        let long = [b'a'; MAX_CMDLINE];
        let c = DomainConfig {
            cmdline: &long,
            ..config()
        };
        assert_eq!(c.validate(), Err(ConfigError::CmdlineTooLong(MAX_CMDLINE)));
        let c = DomainConfig {
            cmdline: b"a\0b",
            ..config()
        };
        assert_eq!(c.validate(), Err(ConfigError::CmdlineHasNul));
    }

    #[test]
    fn limits_follow_libxl() {
        assert_eq!(config().max_memory_kib(), 64 * 1024 + 1024);
        // 4 × (256 × 2 + 64) KiB.
        assert_eq!(config().paging_pool_bytes(), 4 * 576 * 1024);
    }

    #[test]
    fn errors_read_as_sentences() {
        use alloc::string::ToString;
        let e = BuildError::Kernel(KernelError::Load(LoadError::TooBig {
            end: 0x500_0000,
            limit: 0x400_0000,
        }));
        assert_eq!(
            e.to_string(),
            "kernel: kernel too big: it ends at 0x5000000, the guest has room up to 0x4000000"
        );
        let e = BuildError::Kernel(KernelError::Load(LoadError::Elf(
            crate::elf_load::ElfError::NoPvhEntry,
        )));
        assert!(e.to_string().contains("not a PVH kernel"));
        let e = BuildError::DestroyFailed {
            domid: 3,
            cause: Box::new(BuildError::XenOutOfMemory {
                step: Step::PopulateMemory,
            }),
            error: ControlError::Xen(XenError::EBUSY),
        };
        assert!(e
            .to_string()
            .starts_with("Xen is out of memory (PopulateMemory); then"));
        assert_eq!(
            BuildError::Config(ConfigError::Memory(8)).to_string(),
            "bad configuration: 8 MiB of memory (at least 16 MiB)"
        );
    }

    #[test]
    fn boot_cpu_matches_the_pvh_abi() {
        let cpu = pvh_boot_cpu(0x100_0000, 0x200_0000);
        let b = cpu.to_bytes();
        assert_eq!(b[640..648], 0x100_0000u64.to_le_bytes());
        assert_eq!(b[520..528], 0x200_0000u64.to_le_bytes());
        assert_eq!(b[656..664], 0x11u64.to_le_bytes());
        assert_eq!(cpu.msr_efer, 0);
        assert_eq!(cpu.cr4, 0);
        assert_eq!(cpu.cs_base, 0);
    }
}
