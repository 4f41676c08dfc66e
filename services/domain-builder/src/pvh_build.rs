//! The build as steps, for a caller that must not hold the CPU for a whole kernel: Keel's
//! XenAPI reads a boot image from storage a piece per job step, and everything else the host
//! runs (other guests' rings, clients) goes on between pieces.
//!
//! [`PvhBuild::begin`] refuses what is not a kernel (from the image's head), creates the
//! domain and gives it memory; [`PvhBuild::feed_kernel`] and [`PvhBuild::feed_initrd`] take
//! the images in file order and load them as they arrive (an xz or gzip payload decompressed
//! on the way, straight into guest memory); [`PvhBuild::finish`] writes the ACPI tables,
//! memory map, start info and special pages and sets the vCPUs. [`PvhBuild::abort`] destroys
//! the half-built domain. Between calls the build holds no borrow: the hypervisor and dom0's
//! hole frames are lent to each call.
//!
//! A build must end in `finish` or `abort`: dropped otherwise, its domain and the windows it
//! keeps mapped (the xz dictionary, the current write window) stay until dom0 reboots.

use alloc::vec::Vec;
use core::ops::Range;

use keel_xen::domctl::{
    create_domain, set_max_mem, set_max_vcpus, set_paging_mempool_size, CreateDomain,
};
use keel_xen::evtchn::{alloc_unbound, Port};
use keel_xen::hvm::{set_param, HvmParam};
use keel_xen::hypercall::PAGE_SIZE;
use keel_xen::memory::set_memory_map;
use keel_xen::Hypervisor;

use crate::acpi;
use crate::build::{
    destroy_after_failure, domctl, map, populate_range, set_vcpu_state, xen, BuildError,
    BuildOptions, BuiltDomain, DomainConfig, FeedError, Step, GNTTAB_RESERVED_CONSOLE,
    GNTTAB_RESERVED_XENSTORE, GTF_PERMIT_ACCESS,
};
use crate::elf_load::{LoadError, LoadedKernel};
use crate::guest_memory::{GuestMemory, GuestWriter, HoleFrames, MappedRun};
use crate::kernel_image::{self, KernelError, KernelFormat};
use crate::kernel_stream::KernelStream;
use crate::layout::{self, MemoryLayout};
use crate::source::PrefixSource;
use crate::start_info::{Module, StartInfo};

/// Bytes of a kernel's head [`PvhBuild::begin`] needs to tell its format (a bzImage's setup
/// header and its payload's first bytes lie well inside).
pub const PROBE_BYTES: usize = 64 << 10;

/// The initrd being received.
#[derive(Debug, Clone, Copy)]
struct InitrdLoad {
    size: u64,
    received: u64,
}

/// A domain being built; see the module's documentation.
#[must_use = "a build must end in finish or abort, or its domain stays"]
pub struct PvhBuild {
    domid: u16,
    kernel_size: u64,
    uuid: [u8; 16],
    vcpus: u32,
    memory_mib: u64,
    cmdline: Vec<u8>,
    console_domid: u16,
    store_domid: u16,
    layout: MemoryLayout,
    populated: Vec<Range<u64>>,
    store_port: Port,
    console_port: Port,
    window_frames: u64,
    /// Frames whose unmapping failed in earlier steps.
    leaked: u64,
    /// The write window, kept mapped between steps (streams move forward through it).
    window: Option<MappedRun>,
    /// The kernel while it arrives; it may borrow `dictionary`, so it goes first.
    kernel: Option<KernelStream<'static>>,
    /// The xz dictionary: guest memory above where the kernel loads, mapped throughout.
    dictionary: Option<MappedRun>,
    loaded: Option<LoadedKernel>,
    initrd: Option<InitrdLoad>,
}

impl PvhBuild {
    /// Checks `config` and the kernel's format from `kernel_head` (its first bytes,
    /// [`PROBE_BYTES`] or all of it; they are loaded too: the next `feed_kernel` continues
    /// after them), then creates the domain, paused, with its memory. `initrd_size`: the
    /// initrd to come, if any.
    pub fn begin<H: Hypervisor + ?Sized, F: HoleFrames>(
        hv: &H,
        holes: &mut F,
        config: &DomainConfig<'_>,
        kernel_head: &[u8],
        kernel_size: u64,
        initrd_size: Option<u64>,
        options: &BuildOptions,
    ) -> Result<PvhBuild, BuildError> {
        config.validate().map_err(BuildError::Config)?;
        // Refuse what is not a kernel before creating anything.
        let head_len = kernel_head.len() as u64;
        if head_len > kernel_size || head_len < kernel_size.min(PROBE_BYTES as u64) {
            return Err(BuildError::Feed(FeedError::ShortHead));
        }
        let format = kernel_image::probe(&mut PrefixSource {
            head: kernel_head,
            size: kernel_size,
        })
        .map_err(BuildError::Kernel)?;
        let domid = create_domain(hv, 0, &CreateDomain::pvh(config.uuid, config.vcpus))
            .map_err(domctl(Step::CreateDomain))?;
        let mut build = PvhBuild {
            domid,
            kernel_size,
            uuid: config.uuid,
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            cmdline: config.cmdline.to_vec(),
            console_domid: config.console_domid,
            store_domid: config.store_domid,
            layout: MemoryLayout::new(config.memory_mib),
            populated: Vec::new(),
            store_port: Port(0),
            console_port: Port(0),
            window_frames: options.window_frames.max(1),
            leaked: 0,
            window: None,
            kernel: None,
            dictionary: None,
            loaded: None,
            initrd: initrd_size.map(|size| InitrdLoad { size, received: 0 }),
        };
        match build
            .prepare(hv, holes, &format, kernel_size)
            .and_then(|()| build.feed_kernel(hv, holes, kernel_head))
        {
            Ok(()) => Ok(build),
            Err(cause) => Err(build.abort(hv, holes, cause)),
        }
    }

    /// The domain's id (it exists, paused, from `begin` on).
    pub fn domid(&self) -> u16 {
        self.domid
    }

    /// Kernel bytes received so far (the next `feed_kernel` continues there).
    pub fn kernel_received(&self) -> u64 {
        match &self.kernel {
            Some(stream) => stream.received(),
            None if self.loaded.is_some() => self.kernel_size,
            None => 0,
        }
    }

    /// Initrd bytes received so far.
    pub fn initrd_received(&self) -> u64 {
        self.initrd.map_or(0, |i| i.received)
    }

    /// True once the kernel is loaded and the initrd, if any, has all arrived.
    pub fn images_complete(&self) -> bool {
        self.loaded.is_some() && self.initrd.is_none_or(|i| i.received >= i.size)
    }

    /// `build_pre` (vCPUs, memory limit, event channels, HVM params, paging pool) and the
    /// guest's memory; the kernel stream ready for the image.
    fn prepare<H: Hypervisor + ?Sized, F: HoleFrames>(
        &mut self,
        hv: &H,
        holes: &mut F,
        format: &KernelFormat,
        kernel_size: u64,
    ) -> Result<(), BuildError> {
        let (domid, page) = (self.domid, PAGE_SIZE as u64);
        let config = self.config();
        let (max_memory_kib, paging_pool_bytes) =
            (config.max_memory_kib(), config.paging_pool_bytes());
        set_max_vcpus(hv, domid, self.vcpus).map_err(domctl(Step::MaxVcpus))?;
        set_max_mem(hv, domid, max_memory_kib).map_err(domctl(Step::MaxMem))?;
        self.store_port =
            alloc_unbound(hv, domid, self.store_domid).map_err(xen(Step::EventChannels))?;
        self.console_port =
            alloc_unbound(hv, domid, self.console_domid).map_err(xen(Step::EventChannels))?;
        set_param(hv, domid, HvmParam::TimerMode, 1).map_err(xen(Step::HvmParams))?;
        set_param(hv, domid, HvmParam::Altp2m, 0).map_err(xen(Step::HvmParams))?;
        // Before any memory (XSA-409).
        set_paging_mempool_size(hv, domid, paging_pool_bytes).map_err(domctl(Step::PagingPool))?;

        let layout = self.layout;
        let mut populated: Vec<Range<u64>> = layout.ram_frames().collect();
        populated.push(layout::ACPI_BASE / page..layout::ACPI_BASE / page + layout::ACPI_PAGES);
        populated
            .push(layout::SPECIAL_FIRST_GFN..layout::SPECIAL_FIRST_GFN + layout::SPECIAL_PAGES);
        for range in &populated {
            populate_range(hv, domid, range.clone()).map_err(xen(Step::PopulateMemory))?;
        }
        self.populated = populated;

        let stream = match format {
            KernelFormat::BzImageXz { dict_size, .. } => {
                // The dictionary lives at the top of low RAM; the kernel must load below it.
                let dict_frames = layout::page_align(*dict_size) / page;
                let scratch =
                    (layout.low_end / page)
                        .checked_sub(dict_frames)
                        .ok_or(BuildError::Kernel(KernelError::Load(LoadError::TooBig {
                            end: *dict_size,
                            limit: layout.low_end,
                        })))?;
                let memory = GuestMemory::resume(hv, holes, domid, self.leaked);
                let run = memory.map(scratch, dict_frames);
                self.leaked = memory.leaked_frames();
                let run = run.map_err(map(Step::LoadKernel))?.into_run();
                let len = run.frames() as usize * PAGE_SIZE;
                let address = memory.run_address(&run);
                self.dictionary = Some(run);
                // SAFETY: by the `HoleFrames` contract `address` is valid for the run's
                // frames while guest pages are mapped there and no other window uses those
                // hole frames; the run stays mapped until `release_dictionary`, which drops
                // the kernel stream (the only holder of this slice: it is private to this
                // build) before it unmaps. Dropped without that, the mapping outlives the
                // slice. The lifetime is the build's discipline, not the borrow checker's.
                let dictionary: &'static mut [u8] =
                    unsafe { core::slice::from_raw_parts_mut(address, len) };
                KernelStream::new(format, kernel_size, scratch * page, Some(dictionary))
            }
            _ => KernelStream::new(format, kernel_size, layout.low_end, None),
        };
        self.kernel = Some(stream.map_err(BuildError::Kernel)?);
        Ok(())
    }

    fn config(&self) -> DomainConfig<'_> {
        DomainConfig {
            uuid: self.uuid,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            cmdline: &self.cmdline,
            console_domid: self.console_domid,
            store_domid: self.store_domid,
        }
    }

    /// Runs `f` with a writer whose window carries over from the last step.
    fn with_writer<H: Hypervisor + ?Sized, F: HoleFrames, R>(
        &mut self,
        hv: &H,
        holes: &mut F,
        f: impl FnOnce(&mut GuestWriter<'_, '_, H, F>, &mut Option<KernelStream<'static>>) -> R,
    ) -> R {
        let memory = GuestMemory::resume(hv, holes, self.domid, self.leaked);
        let mut writer = GuestWriter::resume(
            &memory,
            &self.populated,
            self.window_frames,
            self.window.take(),
        );
        let result = f(&mut writer, &mut self.kernel);
        self.window = writer.suspend();
        self.leaked = memory.leaked_frames();
        result
    }

    /// The kernel's next bytes, in file order; loaded as they arrive. After an error, abort.
    pub fn feed_kernel<H: Hypervisor + ?Sized, F: HoleFrames>(
        &mut self,
        hv: &H,
        holes: &mut F,
        bytes: &[u8],
    ) -> Result<(), BuildError> {
        let past_the_end = match &self.kernel {
            Some(stream) => stream.received().saturating_add(bytes.len() as u64) > stream.size(),
            None => !bytes.is_empty(),
        };
        if past_the_end {
            return Err(BuildError::Feed(FeedError::PastTheEnd {
                what: Step::LoadKernel,
            }));
        }
        let loaded = self.with_writer(hv, holes, |writer, kernel| {
            let Some(stream) = kernel.as_mut() else {
                return Ok(None);
            };
            stream.push(bytes, writer)?;
            if stream.received() < stream.size() {
                return Ok(None);
            }
            match kernel.take() {
                Some(stream) => stream.finish(writer).map(Some),
                None => Ok(None),
            }
        });
        match loaded.map_err(BuildError::Kernel)? {
            None => Ok(()),
            Some(kernel) => self.kernel_loaded(hv, holes, kernel),
        }
    }

    /// The kernel is in place: clear and unmap the dictionary, place the initrd after it.
    fn kernel_loaded<H: Hypervisor + ?Sized, F: HoleFrames>(
        &mut self,
        hv: &H,
        holes: &mut F,
        kernel: LoadedKernel,
    ) -> Result<(), BuildError> {
        self.loaded = Some(kernel);
        self.release_dictionary(hv, holes, true);
        if let Some(initrd) = self.initrd {
            let end = layout::page_align(kernel.end).saturating_add(initrd.size);
            if end > self.layout.low_end {
                return Err(BuildError::TooBig {
                    what: Step::LoadInitrd,
                    end,
                    limit: self.layout.low_end,
                });
            }
        }
        Ok(())
    }

    /// Drops the kernel stream, then unmaps the dictionary (zeroed first if `clear`: no
    /// decompressor state is left in the guest's RAM).
    fn release_dictionary<H: Hypervisor + ?Sized, F: HoleFrames>(
        &mut self,
        hv: &H,
        holes: &mut F,
        clear: bool,
    ) {
        // The stream holds the dictionary slice: it must be gone before the unmapping.
        self.kernel = None;
        if let Some(run) = self.dictionary.take() {
            let memory = GuestMemory::resume(hv, holes, self.domid, self.leaked);
            let mut window = memory.adopt(run);
            if clear {
                window.bytes().fill(0);
            }
            drop(window);
            self.leaked = memory.leaked_frames();
        }
    }

    /// The initrd's next bytes, in file order, after the whole kernel. After an error,
    /// abort.
    pub fn feed_initrd<H: Hypervisor + ?Sized, F: HoleFrames>(
        &mut self,
        hv: &H,
        holes: &mut F,
        bytes: &[u8],
    ) -> Result<(), BuildError> {
        let kernel = self
            .loaded
            .ok_or(BuildError::Feed(FeedError::KernelIncomplete))?;
        let mut initrd = self.initrd.ok_or(BuildError::Feed(FeedError::NoInitrd))?;
        let base = layout::page_align(kernel.end);
        let end = initrd.received.saturating_add(bytes.len() as u64);
        if end > initrd.size {
            return Err(BuildError::Feed(FeedError::PastTheEnd {
                what: Step::LoadInitrd,
            }));
        }
        let at = base + initrd.received;
        self.with_writer(hv, holes, |writer, _| writer.write(at, bytes))
            .map_err(map(Step::LoadInitrd))?;
        initrd.received = end;
        self.initrd = Some(initrd);
        Ok(())
    }

    /// Both images are in: ACPI tables, memory map, start info, special pages, grant
    /// entries and vCPU state. The domain stays paused. On failure it is destroyed.
    pub fn finish<H: Hypervisor + ?Sized, F: HoleFrames>(
        mut self,
        hv: &H,
        holes: &mut F,
    ) -> Result<BuiltDomain, BuildError> {
        let result = self.complete(hv, holes);
        // Every window comes down; a frame that would not unmap pins the guest.
        self.unmap_all(hv, holes);
        match result {
            Ok(_) if self.leaked > 0 => {
                let leaked = BuildError::LeakedMappings(self.leaked);
                Err(destroy_after_failure(hv, self.domid, leaked))
            }
            Ok(built) => Ok(built),
            Err(cause) => Err(destroy_after_failure(hv, self.domid, cause)),
        }
    }

    /// Gives up: unmaps what the build keeps mapped and destroys the domain; returns the
    /// error to report for `cause`.
    pub fn abort<H: Hypervisor + ?Sized, F: HoleFrames>(
        mut self,
        hv: &H,
        holes: &mut F,
        cause: BuildError,
    ) -> BuildError {
        self.unmap_all(hv, holes);
        destroy_after_failure(hv, self.domid, cause)
    }

    fn unmap_all<H: Hypervisor + ?Sized, F: HoleFrames>(&mut self, hv: &H, holes: &mut F) {
        self.release_dictionary(hv, holes, false);
        if let Some(run) = self.window.take() {
            let memory = GuestMemory::resume(hv, holes, self.domid, self.leaked);
            drop(memory.adopt(run));
            self.leaked = memory.leaked_frames();
        }
    }

    fn complete<H: Hypervisor + ?Sized, F: HoleFrames>(
        &mut self,
        hv: &H,
        holes: &mut F,
    ) -> Result<BuiltDomain, BuildError> {
        let page = PAGE_SIZE as u64;
        let loaded = self
            .loaded
            .ok_or(BuildError::Feed(FeedError::KernelIncomplete))?;
        if self.initrd.is_some_and(|i| i.received < i.size) {
            return Err(BuildError::Feed(FeedError::InitrdIncomplete));
        }
        let (domid, layout) = (self.domid, self.layout);
        let kernel_end = layout::page_align(loaded.end);
        let initrd_range = self.initrd.map(|i| kernel_end..kernel_end + i.size);
        let next = initrd_range
            .as_ref()
            .map_or(kernel_end, |r| layout::page_align(r.end));

        // ACPI tables and the memory map.
        let tables = acpi::build(layout::ACPI_BASE, self.vcpus).map_err(BuildError::Acpi)?;
        if tables.bytes.len() as u64 > layout::ACPI_PAGES * page {
            return Err(BuildError::TooBig {
                what: Step::Acpi,
                end: layout::ACPI_BASE + tables.bytes.len() as u64,
                limit: layout::ACPI_BASE + layout::ACPI_PAGES * page,
            });
        }
        let e820 = layout.e820();
        let cmdline = core::mem::take(&mut self.cmdline);
        let start_info = StartInfo {
            cmdline: &cmdline,
            initrd: initrd_range.as_ref().map(|r| Module {
                paddr: r.start,
                size: r.end - r.start,
            }),
            rsdp_paddr: tables.rsdp_paddr,
            memmap: &e820,
        };
        let start_info_paddr = next;
        let start_info_end = start_info_paddr + start_info.len() as u64;
        if start_info_end > layout.low_end {
            return Err(BuildError::TooBig {
                what: Step::StartInfo,
                end: start_info_end,
                limit: layout.low_end,
            });
        }
        let encoded = start_info.encode(start_info_paddr);
        self.with_writer(hv, holes, |writer, _| {
            writer
                .write(tables.base, &tables.bytes)
                .map_err(map(Step::Acpi))?;
            set_memory_map(hv, domid, &e820).map_err(xen(Step::MemoryMap))?;
            writer
                .write(start_info_paddr, &encoded)
                .map_err(map(Step::StartInfo))?;
            // Special pages: clean rings, the identity page table, and the params naming
            // them.
            writer
                .zero(
                    layout::SPECIAL_FIRST_GFN * page,
                    layout::SPECIAL_PAGES * page,
                )
                .map_err(map(Step::SpecialPages))?;
            writer
                .write(layout::IDENT_PT_GFN * page, &layout::ident_page_table())
                .map_err(map(Step::SpecialPages))
        })?;
        self.unmap_all(hv, holes);
        for (param, value) in [
            (HvmParam::StorePfn, layout::STORE_GFN),
            (HvmParam::ConsolePfn, layout::CONSOLE_GFN),
            (HvmParam::IdentPt, layout::IDENT_PT_GFN * page),
            (HvmParam::StoreEvtchn, u64::from(self.store_port.0)),
            (HvmParam::ConsoleEvtchn, u64::from(self.console_port.0)),
        ] {
            set_param(hv, domid, param, value).map_err(xen(Step::SpecialPages))?;
        }

        // Grant entries the backends map the rings by (`xc_dom_gnttab_seed`).
        {
            let memory = GuestMemory::resume(hv, holes, domid, self.leaked);
            let frame = memory.map_grant_frame();
            let seeded = frame.map(|mut frame| {
                let bytes = frame.bytes();
                for (gref, backend, gfn) in [
                    (
                        GNTTAB_RESERVED_CONSOLE,
                        self.console_domid,
                        layout::CONSOLE_GFN,
                    ),
                    (
                        GNTTAB_RESERVED_XENSTORE,
                        self.store_domid,
                        layout::STORE_GFN,
                    ),
                ] {
                    let entry = &mut bytes[gref * 8..gref * 8 + 8];
                    entry[..2].copy_from_slice(&GTF_PERMIT_ACCESS.to_le_bytes());
                    entry[2..4].copy_from_slice(&backend.to_le_bytes());
                    entry[4..8].copy_from_slice(&(gfn as u32).to_le_bytes());
                }
            });
            self.leaked = memory.leaked_frames();
            seeded.map_err(map(Step::GrantTable))?;
        }

        set_vcpu_state(hv, domid, self.vcpus, loaded.entry, start_info_paddr)?;

        Ok(BuiltDomain {
            domid,
            store_port: self.store_port,
            console_port: self.console_port,
            store_gfn: layout::STORE_GFN,
            console_gfn: layout::CONSOLE_GFN,
            entry: loaded.entry,
            start_info_paddr,
            kernel: loaded.start..loaded.end,
            initrd: initrd_range,
            max_memory_kib: self.config().max_memory_kib(),
        })
    }
}
