//! The part of [`FakeXen`] a domain builder talks to: domains created and destroyed, Xen's
//! heap of free pages that their memory, paging pool and bookkeeping come from, foreign
//! mappings of their pages into dom0's frame holes, HVM contexts and memory maps.
//!
//! What it models, as Xen 4.17 does it:
//! - `createdomain` takes a few pages from the heap for the domain itself; memory from
//!   `populate_physmap` counts against `max_mem` and needs enough paging pool (one pool
//!   page per 512 guest pages here); destroying the domain returns everything to the heap.
//! - A domain with a page still mapped by dom0 (foreign map or acquired resource) stays
//!   *dying* after `destroydomain` and keeps its memory until the last mapping goes.
//! - Mapping a foreign page over a dom0 frame that is not a hole would make Xen free dom0's
//!   RAM page; the fake refuses the entry and records it ([`FakeXen::dom0_ram_clobbered`]).
//!
//! Dom0's hole frames are backed by one contiguous buffer ([`FakeXen::with_dom0_holes`]),
//! the fake's "physical memory" for them; a kernel reaches such frames at `gfn << 12`, a
//! test at [`FakeXen::hole_address`]. A mapping is modelled by copying the foreign page in
//! on map and back on unmap, so the same foreign page may not be mapped twice at once
//! (`EBUSY`; real Xen allows it, a builder never needs it).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::ptr::NonNull;

use super::{arg, args, new_page, FakeXen, Page, State};
use crate::domctl::{cdf, dominf, x86_emu, CreateDomain, HvmContextArg, XenDomctl};
use crate::error::XenError;
use crate::hvm_save::{self, HvmHwCpu, MTRR_LEN};
use crate::hypercall::{DOMID_FIRST_RESERVED, DOMID_SELF, PAGE_SIZE};
use crate::memory::{
    E820Entry, MapSpace, XenAddToPhysmapBatch, XenForeignMemoryMap, XenMemAcquireResource,
    XenMemoryReservation, XenRemoveFromPhysmap,
};

/// Heap pages `createdomain` takes for the domain structure, vCPUs and grant table.
pub const DOMAIN_OVERHEAD_PAGES: u64 = 16;
/// Guest pages one paging-pool page covers in the fake.
pub const PAGES_PER_POOL_PAGE: u64 = 512;
/// Free heap pages of a new fake.
pub const INITIAL_FREE_PAGES: u64 = 100_000;
/// Xen's `E820MAX`.
const E820_MAX: usize = 128;
/// Grant-table frames a new domain has.
const INITIAL_GRANT_FRAMES: usize = 1;

/// The HEADER the fake's "running hypervisor" writes and insists on.
fn header_record() -> Vec<u8> {
    let mut w = Vec::new();
    w.extend_from_slice(&hvm_save::TYPE_HEADER.to_le_bytes());
    w.extend_from_slice(&0u16.to_le_bytes());
    w.extend_from_slice(&(hvm_save::HEADER_LEN as u32).to_le_bytes());
    w.extend_from_slice(&hvm_save::HEADER_MAGIC.to_le_bytes());
    w.extend_from_slice(&1u32.to_le_bytes()); // version
    w.extend_from_slice(&0x4_1700u64.to_le_bytes()); // changeset
    w.extend_from_slice(&0x000a_0655u32.to_le_bytes()); // cpuid
    w.extend_from_slice(&2_000_000u32.to_le_bytes()); // gtsc_khz
    w
}

/// One domain as the fake sees it.
pub(super) struct Domain {
    pub(super) flags: u32,
    handle: [u8; 16],
    max_vcpus: u32,
    max_pages: u64,
    /// Pages Xen holds for this domain outside its memory (overhead + paging pool).
    overhead_pages: u64,
    pool_pages: u64,
    /// Populated guest frames; `None` until first written (Xen's pages come scrubbed).
    memory: BTreeMap<u64, Option<Page>>,
    grant_frames: Vec<Page>,
    memory_map: Vec<E820Entry>,
    cpus: Vec<HvmHwCpu>,
    cpu_loaded: Vec<bool>,
    mtrr: Vec<[u8; MTRR_LEN]>,
    /// Pages of a domain made with [`FakeXen::add_domain`], which has no modelled memory.
    legacy_pages: Option<(u64, u64)>,
}

impl Domain {
    pub(super) fn legacy(flags: u32) -> Self {
        Domain {
            flags,
            handle: [0; 16],
            max_vcpus: 1,
            max_pages: 2048,
            overhead_pages: 0,
            pool_pages: 0,
            memory: BTreeMap::new(),
            grant_frames: Vec::new(),
            memory_map: Vec::new(),
            cpus: Vec::new(),
            cpu_loaded: Vec::new(),
            mtrr: Vec::new(),
            legacy_pages: Some((1024, 2048)),
        }
    }

    pub(super) fn tot_pages(&self) -> u64 {
        self.legacy_pages
            .map_or(self.memory.len() as u64, |(tot, _)| tot)
    }

    pub(super) fn max_pages(&self) -> u64 {
        self.legacy_pages.map_or(self.max_pages, |(_, max)| max)
    }

    pub(super) fn handle(&self) -> [u8; 16] {
        self.handle
    }

    pub(super) fn online_vcpus(&self) -> u32 {
        if self.legacy_pages.is_some() {
            1
        } else {
            self.cpu_loaded.iter().filter(|&&l| l).count() as u32
        }
    }

    fn dying(&self) -> bool {
        self.flags & dominf::DYING != 0
    }
}

/// What a dom0 hole frame currently shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MapSource {
    Guest { dom: u16, gfn: u64 },
    GrantFrame { dom: u16, index: usize },
}

impl MapSource {
    fn dom(self) -> u16 {
        match self {
            MapSource::Guest { dom, .. } | MapSource::GrantFrame { dom, .. } => dom,
        }
    }
}

/// Dom0's hole frames `[base, base + frames)`, backed by contiguous zeroed memory that
/// Xen's mappings (the fake) and dom0's windows (the builder, through raw pointers) share.
pub(super) struct HoleRegion {
    base_gfn: u64,
    memory: NonNull<u8>,
    len: usize,
}

// SAFETY: the region owns its allocation; moving it to another thread moves ownership.
unsafe impl Send for HoleRegion {}

impl HoleRegion {
    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len.max(PAGE_SIZE), PAGE_SIZE).unwrap_or_else(|_| {
            panic!("hole region of {len} bytes is not allocatable");
        })
    }

    pub(super) fn new(base_gfn: u64, frames: u64) -> Self {
        let len = frames as usize * PAGE_SIZE;
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let memory = NonNull::new(ptr).unwrap_or_else(|| alloc::alloc::handle_alloc_error(layout));
        HoleRegion {
            base_gfn,
            memory,
            len,
        }
    }

    fn frames(&self) -> u64 {
        (self.len / PAGE_SIZE) as u64
    }

    fn contains(&self, gfn: u64) -> bool {
        gfn >= self.base_gfn && gfn - self.base_gfn < self.frames()
    }

    pub(super) fn address(&self, gfn: u64) -> Option<*mut u8> {
        self.contains(gfn).then(|| {
            let offset = (gfn - self.base_gfn) as usize * PAGE_SIZE;
            // SAFETY: `offset` is inside the allocation (`contains`).
            unsafe { self.memory.as_ptr().add(offset) }
        })
    }

    /// Fills hole frame `gfn` with `page`.
    ///
    /// # Safety
    /// Nothing may refer to the frame: the fake only calls this inside a map hypercall,
    /// when by the hypercall contract the caller holds no reference to it.
    unsafe fn fill(&self, gfn: u64, page: &[u8; PAGE_SIZE]) -> Option<()> {
        let ptr = self.address(gfn)?;
        // SAFETY: the frame is `PAGE_SIZE` bytes of the region; exclusivity is the caller's
        // promise.
        unsafe { core::ptr::copy_nonoverlapping(page.as_ptr(), ptr, PAGE_SIZE) };
        Some(())
    }

    /// Copies hole frame `gfn` out.
    ///
    /// # Safety
    /// As [`HoleRegion::fill`]: only inside an unmap hypercall.
    unsafe fn copy_out(&self, gfn: u64, page: &mut [u8; PAGE_SIZE]) -> Option<()> {
        let ptr = self.address(gfn)?;
        // SAFETY: as in `fill`.
        unsafe { core::ptr::copy_nonoverlapping(ptr, page.as_mut_ptr(), PAGE_SIZE) };
        Some(())
    }
}

impl Drop for HoleRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { alloc::alloc::dealloc(self.memory.as_ptr(), Self::layout(self.len)) };
    }
}

impl FakeXen {
    /// A fake whose dom0 memory map has an unusable range of `frames` frames at `base_gfn`
    /// (where a PVH dom0 maps foreign pages), backed by real memory.
    pub fn with_dom0_holes(base_gfn: u64, frames: u64) -> Self {
        let mut xen = FakeXen::new();
        xen.holes = Some(HoleRegion::new(base_gfn, frames));
        xen.set_memory_map(&[
            E820Entry {
                addr: 0,
                size: 0x9f000,
                kind: 1,
            },
            E820Entry {
                addr: 0x10_0000,
                size: 0x1ff0_0000,
                kind: 1,
            },
            E820Entry {
                addr: base_gfn << 12,
                size: frames << 12,
                kind: 5,
            },
        ]);
        xen
    }

    /// Where the fake's memory for dom0 hole frame `gfn` is (what `gfn << 12` is to a
    /// kernel with an identity map). `None` outside the hole region.
    pub fn hole_address(&self, gfn: u64) -> Option<*mut u8> {
        self.holes.as_ref()?.address(gfn)
    }

    /// Xen's free heap pages (what `XEN_SYSCTL_physinfo` reports).
    pub fn free_pages(&self) -> u64 {
        self.state.borrow().free_pages
    }

    /// Sets Xen's free heap pages, e.g. to make populating memory fail.
    pub fn set_free_pages(&self, pages: u64) {
        self.state.borrow_mut().free_pages = pages;
    }

    /// Makes the `n`-th hypercall from now (0: the next one) fail with `error`.
    pub fn fail_call(&self, n: u32, error: XenError) {
        let mut s = self.state.borrow_mut();
        let at = s.calls + n;
        s.fail_at.push((at, error));
    }

    /// Ids of existing domains (dying ones included).
    pub fn domain_ids(&self) -> Vec<u16> {
        self.state.borrow().domains.keys().copied().collect()
    }

    /// `XEN_DOMINF_*` flags of `dom`.
    pub fn domain_flags(&self, dom: u16) -> Option<u32> {
        self.state.borrow().domains.get(&dom).map(|d| d.flags)
    }

    /// `(max_vcpus, max_pages, paging pool pages)` of a created domain.
    pub fn domain_limits(&self, dom: u16) -> Option<(u32, u64, u64)> {
        let s = self.state.borrow();
        s.domains
            .get(&dom)
            .map(|d| (d.max_vcpus, d.max_pages, d.pool_pages))
    }

    /// Populated guest frames of `dom`, in order.
    pub fn domain_frames(&self, dom: u16) -> Vec<u64> {
        let s = self.state.borrow();
        s.domains
            .get(&dom)
            .map_or_else(Vec::new, |d| d.memory.keys().copied().collect())
    }

    /// Reads `len` bytes of `dom`'s memory at guest-physical `addr`; `None` if a page in
    /// the range is not populated.
    pub fn read_guest(&self, dom: u16, addr: u64, len: usize) -> Option<Vec<u8>> {
        let s = self.state.borrow();
        let d = s.domains.get(&dom)?;
        let mut out = Vec::with_capacity(len);
        let mut at = addr;
        while out.len() < len {
            let offset = (at % PAGE_SIZE as u64) as usize;
            let n = (PAGE_SIZE - offset).min(len - out.len());
            match d.memory.get(&(at / PAGE_SIZE as u64))? {
                Some(page) => out.extend_from_slice(&page[offset..offset + n]),
                None => out.resize(out.len() + n, 0),
            }
            at += n as u64;
        }
        Some(out)
    }

    /// The E820 map set for `dom`.
    pub fn domain_memory_map(&self, dom: u16) -> Vec<E820Entry> {
        let s = self.state.borrow();
        s.domains
            .get(&dom)
            .map_or_else(Vec::new, |d| d.memory_map.clone())
    }

    /// vCPU `vcpu`'s registers, if a CPU record was loaded for it.
    pub fn domain_vcpu(&self, dom: u16, vcpu: u16) -> Option<HvmHwCpu> {
        let s = self.state.borrow();
        let d = s.domains.get(&dom)?;
        let i = usize::from(vcpu);
        (*d.cpu_loaded.get(i)?).then(|| d.cpus[i])
    }

    /// vCPU `vcpu`'s `msr_mtrr_def_type`.
    pub fn domain_mtrr_def_type(&self, dom: u16, vcpu: u16) -> Option<u64> {
        let s = self.state.borrow();
        let m = s.domains.get(&dom)?.mtrr.get(usize::from(vcpu))?;
        let at = hvm_save::MTRR_DEF_TYPE_OFFSET;
        Some(u64::from_le_bytes(m[at..at + 8].try_into().ok()?))
    }

    /// Bytes of `dom`'s grant-table frame `index`.
    pub fn domain_grant_frame(&self, dom: u16, index: usize) -> Option<Vec<u8>> {
        let s = self.state.borrow();
        Some(s.domains.get(&dom)?.grant_frames.get(index)?.to_vec())
    }

    /// Dom0 frames currently showing another domain's page.
    pub fn foreign_mapping_count(&self) -> usize {
        self.state.borrow().foreign_maps.len()
    }

    /// Dom0 frames that were not holes but were named as targets of a foreign mapping
    /// (real Xen would have freed dom0's RAM page there).
    pub fn dom0_ram_clobbered(&self) -> Vec<u64> {
        self.state.borrow().dom0_ram_clobbered.clone()
    }

    // ----- handlers -----

    pub(super) fn create_domain(s: &mut State, op: &mut XenDomctl) -> Result<i64, XenError> {
        // SAFETY: the wrapper wrote a `CreateDomain` into the union.
        let config: CreateDomain = unsafe { op.u.createdomain };
        if config.flags & cdf::HVM == 0 || config.flags & cdf::HAP == 0 {
            // The fake models HAP PVH domains only.
            return Err(XenError::EINVAL);
        }
        if config.max_vcpus == 0 || config.max_vcpus > 128 {
            return Err(XenError::EINVAL);
        }
        if config.arch.emulation_flags != x86_emu::LAPIC {
            return Err(XenError::EINVAL);
        }
        let requested = op.domain;
        let id = if requested > 0 && requested < DOMID_FIRST_RESERVED {
            if s.domains.contains_key(&requested) {
                return Err(XenError::EEXIST);
            }
            requested
        } else {
            (1..DOMID_FIRST_RESERVED)
                .find(|id| !s.domains.contains_key(id))
                .ok_or(XenError::ENOMEM)?
        };
        if s.free_pages < DOMAIN_OVERHEAD_PAGES {
            return Err(XenError::ENOMEM);
        }
        s.free_pages -= DOMAIN_OVERHEAD_PAGES;
        let vcpus = config.max_vcpus as usize;
        let mut mtrr = [0u8; MTRR_LEN];
        // Xen's reset state: MTRRs disabled, default type uncachable.
        mtrr[..8].copy_from_slice(&0x0007_0406_0007_0406u64.to_le_bytes());
        s.domains.insert(
            id,
            Domain {
                flags: dominf::PAUSED | dominf::HVM_GUEST | dominf::HAP,
                handle: config.handle,
                max_vcpus: config.max_vcpus,
                max_pages: 0,
                overhead_pages: DOMAIN_OVERHEAD_PAGES,
                pool_pages: 0,
                memory: BTreeMap::new(),
                grant_frames: (0..INITIAL_GRANT_FRAMES).map(|_| new_page()).collect(),
                memory_map: Vec::new(),
                cpus: alloc::vec![HvmHwCpu::zeroed(); vcpus],
                cpu_loaded: alloc::vec![false; vcpus],
                mtrr: alloc::vec![mtrr; vcpus],
                legacy_pages: None,
            },
        );
        op.domain = id;
        Ok(0)
    }

    fn live_domain(s: &mut State, dom: u16) -> Result<&mut Domain, XenError> {
        match s.domains.get_mut(&dom) {
            Some(d) if !d.dying() => Ok(d),
            _ => Err(XenError::ESRCH),
        }
    }

    pub(super) fn domctl_value(s: &mut State, op: &mut XenDomctl) -> Result<i64, XenError> {
        // SAFETY: these domctls carry one integer at the start of the union.
        let value = unsafe { op.u.value };
        let free = s.free_pages;
        let d = Self::live_domain(s, op.domain)?;
        match op.cmd {
            // max_vcpus: 4.17 only accepts the value given at creation.
            15 if value != u64::from(d.max_vcpus) => Err(XenError::EINVAL),
            15 => Ok(0),
            // max_mem, in KiB.
            11 => {
                let pages = value / 4;
                if pages < d.memory.len() as u64 {
                    return Err(XenError::EINVAL);
                }
                d.max_pages = pages;
                Ok(0)
            }
            // set_paging_mempool_size, in bytes.
            86 => {
                if value % PAGE_SIZE as u64 != 0 {
                    return Err(XenError::EINVAL);
                }
                let pages = value / PAGE_SIZE as u64;
                if pages > d.pool_pages && pages - d.pool_pages > free {
                    return Err(XenError::ENOMEM);
                }
                let old = d.pool_pages;
                d.pool_pages = pages;
                s.free_pages = free + old - pages;
                Ok(0)
            }
            _ => Err(XenError::ENOSYS),
        }
    }

    pub(super) fn get_hvm_context(s: &mut State, op: &mut XenDomctl) -> Result<i64, XenError> {
        let d = Self::live_domain(s, op.domain)?;
        let mut ctx = header_record();
        for (i, cpu) in d.cpus.iter().enumerate() {
            push_record(&mut ctx, hvm_save::TYPE_CPU, i as u16, &cpu.to_bytes());
        }
        for (i, mtrr) in d.mtrr.iter().enumerate() {
            push_record(&mut ctx, hvm_save::TYPE_MTRR, i as u16, mtrr);
        }
        push_record(&mut ctx, hvm_save::TYPE_END, 0, &[]);
        // SAFETY: the wrapper wrote an `HvmContextArg` into the union.
        let arg: &mut HvmContextArg = unsafe { &mut op.u.hvmcontext };
        if arg.buffer == 0 {
            arg.size = ctx.len() as u32;
            return Ok(0);
        }
        if (arg.size as usize) < ctx.len() {
            return Err(XenError::ENOSPC);
        }
        // SAFETY: the wrapper passes a buffer of `size` bytes.
        let buf = unsafe { args::<u8>(arg.buffer, u64::from(arg.size)) }.ok_or(XenError::EFAULT)?;
        buf[..ctx.len()].copy_from_slice(&ctx);
        arg.size = ctx.len() as u32;
        Ok(0)
    }

    pub(super) fn set_hvm_context(s: &mut State, op: &mut XenDomctl) -> Result<i64, XenError> {
        let d = Self::live_domain(s, op.domain)?;
        // SAFETY: the wrapper wrote an `HvmContextArg` into the union.
        let arg: HvmContextArg = unsafe { op.u.hvmcontext };
        // SAFETY: the wrapper passes `size` readable bytes.
        let ctx: &[u8] =
            unsafe { args::<u8>(arg.buffer, u64::from(arg.size)) }.ok_or(XenError::EFAULT)?;
        // Xen's hvm_load: the header must be this hypervisor's, then records up to END.
        let header = header_record();
        if ctx.get(..header.len()) != Some(&header[..]) {
            return Err(XenError::EINVAL);
        }
        let mut cpus = d.cpus.clone();
        let mut loaded = d.cpu_loaded.clone();
        let mut mtrr = d.mtrr.clone();
        let mut ended = false;
        for record in hvm_save::records(&ctx[header.len()..]) {
            let r = record.map_err(|_| XenError::ENODATA)?;
            let i = usize::from(r.instance);
            match r.typecode {
                hvm_save::TYPE_END => ended = true,
                hvm_save::TYPE_CPU => {
                    let cpu = HvmHwCpu::from_bytes(r.data).ok_or(XenError::EINVAL)?;
                    *cpus.get_mut(i).ok_or(XenError::ENOENT)? = cpu;
                    loaded[i] = true;
                }
                hvm_save::TYPE_MTRR => {
                    let m: [u8; MTRR_LEN] = r.data.try_into().map_err(|_| XenError::EINVAL)?;
                    *mtrr.get_mut(i).ok_or(XenError::ENOENT)? = m;
                }
                _ => return Err(XenError::EINVAL),
            }
        }
        if !ended {
            return Err(XenError::ENODATA);
        }
        d.cpus = cpus;
        d.cpu_loaded = loaded;
        d.mtrr = mtrr;
        Ok(0)
    }

    /// `destroydomain`: the domain dies; its memory returns to the heap once dom0 holds no
    /// mapping of it.
    pub(super) fn destroy_domain(s: &mut State, dom: u16) -> Result<i64, XenError> {
        let d = s.domains.get_mut(&dom).ok_or(XenError::ESRCH)?;
        if d.legacy_pages.is_some() {
            s.domains.remove(&dom);
            return Ok(0);
        }
        d.flags |= dominf::DYING;
        Self::reap(s, dom);
        Ok(0)
    }

    /// Frees a dying domain that nothing maps any more.
    fn reap(s: &mut State, dom: u16) {
        let dying = s.domains.get(&dom).is_some_and(Domain::dying);
        if !dying || s.foreign_maps.values().any(|m| m.dom() == dom) {
            return;
        }
        if let Some(d) = s.domains.remove(&dom) {
            s.free_pages += d.memory.len() as u64 + d.pool_pages + d.overhead_pages;
        }
        s.hvm_params.retain(|(d, _), _| *d != dom);
        s.foreign_unbound.retain(|(d, _), _| *d != dom);
    }

    pub(super) fn populate_physmap(s: &mut State, a1: u64) -> Result<i64, XenError> {
        // SAFETY: contract.
        let r = unsafe { arg::<XenMemoryReservation>(a1) }.ok_or(XenError::EFAULT)?;
        if r.domid == DOMID_SELF || r.domid == 0 {
            return Err(XenError::ENOSYS);
        }
        // SAFETY: the wrapper passes `nr_extents` frames.
        let gfns = unsafe { args::<u64>(r.extent_start, r.nr_extents) }.ok_or(XenError::EFAULT)?;
        let n = 1u64 << r.extent_order;
        let mut free = s.free_pages;
        let d = Self::live_domain(s, r.domid)?;
        let mut done = 0i64;
        for &gfn in gfns.iter() {
            let tot = d.memory.len() as u64;
            let fits = gfn % n == 0
                && tot + n <= d.max_pages
                && n <= free
                && (tot + n) <= d.pool_pages * PAGES_PER_POOL_PAGE
                && (gfn..gfn + n).all(|g| !d.memory.contains_key(&g));
            if !fits {
                break;
            }
            for g in gfn..gfn + n {
                d.memory.insert(g, None);
            }
            free -= n;
            done += 1;
        }
        s.free_pages = free;
        Ok(done)
    }

    pub(super) fn set_domain_memory_map(s: &mut State, a1: u64) -> Result<i64, XenError> {
        // SAFETY: contract.
        let m = unsafe { arg::<XenForeignMemoryMap>(a1) }.ok_or(XenError::EFAULT)?;
        let n = m.map.nr_entries as usize;
        if n > E820_MAX {
            return Err(XenError::EINVAL);
        }
        // SAFETY: the wrapper passes `nr_entries` entries.
        let entries = unsafe { args::<E820Entry>(m.map.buffer, n as u64) }
            .map_or_else(Vec::new, |e| e.to_vec());
        Self::live_domain(s, m.domid)?.memory_map = entries;
        Ok(0)
    }

    /// The guest page behind a `Guest` source (`None` if not populated).
    fn source_page(s: &mut State, src: MapSource) -> Option<&mut Option<Page>> {
        match src {
            MapSource::Guest { dom, gfn } => s.domains.get_mut(&dom)?.memory.get_mut(&gfn),
            MapSource::GrantFrame { .. } => None,
        }
    }

    /// Copies the source page into the hole frame and records the mapping.
    fn map_into_hole(&self, s: &mut State, local: u64, src: MapSource) -> Result<(), XenError> {
        let Some(holes) = self.holes.as_ref().filter(|h| h.contains(local)) else {
            s.dom0_ram_clobbered.push(local);
            return Err(XenError::EINVAL);
        };
        if s.foreign_maps.values().any(|m| *m == src) {
            return Err(XenError::EBUSY);
        }
        if s.foreign_maps.contains_key(&local) {
            self.unmap_hole(s, local);
        }
        let zero = [0u8; PAGE_SIZE];
        let page: &[u8; PAGE_SIZE] = match src {
            MapSource::Guest { .. } => match Self::source_page(s, src) {
                Some(Some(page)) => page,
                Some(None) => &zero,
                None => return Err(XenError::EINVAL),
            },
            MapSource::GrantFrame { dom, index } => s
                .domains
                .get(&dom)
                .and_then(|d| d.grant_frames.get(index))
                .ok_or(XenError::EINVAL)?,
        };
        // SAFETY: inside the map hypercall; the caller holds no reference to this frame.
        unsafe { holes.fill(local, page) }.ok_or(XenError::EINVAL)?;
        s.foreign_maps.insert(local, src);
        Ok(())
    }

    /// Writes the hole frame back to its source page and drops the mapping.
    fn unmap_hole(&self, s: &mut State, local: u64) -> Option<MapSource> {
        let src = s.foreign_maps.remove(&local)?;
        let holes = self.holes.as_ref()?;
        let page: Option<&mut Page> = match src {
            MapSource::Guest { .. } => {
                Self::source_page(s, src).map(|slot| slot.get_or_insert_with(new_page))
            }
            MapSource::GrantFrame { dom, index } => s
                .domains
                .get_mut(&dom)
                .and_then(|d| d.grant_frames.get_mut(index)),
        };
        if let Some(page) = page {
            // SAFETY: inside an unmap (or remap) hypercall: the caller gave its view up.
            unsafe { holes.copy_out(local, page) };
        }
        Some(src)
    }

    pub(super) fn add_to_physmap_batch(&self, s: &mut State, a1: u64) -> Result<i64, XenError> {
        // SAFETY: contract.
        let b = unsafe { arg::<XenAddToPhysmapBatch>(a1) }.ok_or(XenError::EFAULT)?;
        if b.domid != DOMID_SELF {
            return Err(XenError::EPERM);
        }
        if b.space != MapSpace::GmfnForeign as u16 {
            return Err(XenError::EOPNOTSUPP);
        }
        let size = u64::from(b.size);
        // SAFETY: the wrapper passes `size` entries in each array.
        let idxs = unsafe { args::<u64>(b.idxs, size) }.ok_or(XenError::EFAULT)?;
        // SAFETY: as above.
        let gpfns = unsafe { args::<u64>(b.gpfns, size) }.ok_or(XenError::EFAULT)?;
        // SAFETY: as above.
        let errs = unsafe { args::<i32>(b.errs, size) }.ok_or(XenError::EFAULT)?;
        if !s
            .domains
            .get(&b.foreign_domid)
            .is_some_and(|d| !d.dying() && d.legacy_pages.is_none())
        {
            return Err(XenError::ESRCH);
        }
        for i in 0..idxs.len() {
            let src = MapSource::Guest {
                dom: b.foreign_domid,
                gfn: idxs[i],
            };
            let populated = Self::source_page(s, src).is_some();
            errs[i] = if !populated {
                -(XenError::EINVAL.errno() as i32)
            } else {
                match self.map_into_hole(s, gpfns[i], src) {
                    Ok(()) => 0,
                    Err(e) => -(e.errno() as i32),
                }
            };
        }
        Ok(0)
    }

    pub(super) fn remove_from_physmap(&self, s: &mut State, a1: u64) -> Result<i64, XenError> {
        // SAFETY: contract.
        let r = unsafe { arg::<XenRemoveFromPhysmap>(a1) }.ok_or(XenError::EFAULT)?;
        if r.domid != DOMID_SELF {
            return Err(XenError::EPERM);
        }
        let src = self.unmap_hole(s, r.gpfn).ok_or(XenError::ENOENT)?;
        Self::reap(s, src.dom());
        Ok(0)
    }

    pub(super) fn acquire_resource(&self, s: &mut State, a1: u64) -> Result<i64, XenError> {
        // SAFETY: contract.
        let r = unsafe { arg::<XenMemAcquireResource>(a1) }.ok_or(XenError::EFAULT)?;
        if r.kind != 1 || r.id != 0 || r.flags != 0 {
            return Err(XenError::EOPNOTSUPP);
        }
        let frames = Self::live_domain(s, r.domid)?.grant_frames.len() as u64;
        let n = u64::from(r.nr_frames);
        if n == 0 || r.frame + n > frames {
            return Err(XenError::EINVAL);
        }
        // SAFETY: the wrapper passes `nr_frames` frames.
        let local = unsafe { args::<u64>(r.frame_list, n) }.ok_or(XenError::EFAULT)?;
        for (i, &gfn) in local.iter().enumerate() {
            let src = MapSource::GrantFrame {
                dom: r.domid,
                index: (r.frame as usize) + i,
            };
            // Like Xen, what did map stays mapped until removed.
            self.map_into_hole(s, gfn, src)?;
        }
        Ok(0)
    }
}

fn push_record(ctx: &mut Vec<u8>, typecode: u16, instance: u16, data: &[u8]) {
    ctx.extend_from_slice(&typecode.to_le_bytes());
    ctx.extend_from_slice(&instance.to_le_bytes());
    ctx.extend_from_slice(&(data.len() as u32).to_le_bytes());
    ctx.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ControlError;
    use crate::domctl::{
        create_domain, destroy_domain, domain_info, get_hvm_context, hvm_context_size,
        set_hvm_context, set_max_mem, set_max_vcpus, set_paging_mempool_size,
    };
    use crate::hvm_save::{header_record as parse_header, ContextWriter};
    use crate::memory::{
        acquire_resource, map_foreign_frames, populate_physmap, remove_from_physmap,
        set_memory_map, ForeignMapError, ResourceType,
    };
    use crate::sysctl::physinfo;

    const HOLES: u64 = 0x20000;

    fn guest(xen: &FakeXen, pages: u64) -> u16 {
        let dom = create_domain(xen, 0, &CreateDomain::pvh([7; 16], 2)).unwrap();
        set_max_vcpus(xen, dom, 2).unwrap();
        set_max_mem(xen, dom, pages * 4 + 1024).unwrap();
        set_paging_mempool_size(xen, dom, 4 << 12).unwrap();
        let gfns: Vec<u64> = (0..pages).collect();
        populate_physmap(xen, dom, 0, &gfns).unwrap();
        dom
    }

    #[test]
    fn memory_comes_from_the_heap_and_returns_on_destroy() {
        let xen = FakeXen::with_dom0_holes(HOLES, 64);
        let before = physinfo(&xen).unwrap().free_pages;
        let dom = guest(&xen, 100);
        assert_eq!(dom, 1);
        assert_eq!(
            physinfo(&xen).unwrap().free_pages,
            before - 100 - 4 - DOMAIN_OVERHEAD_PAGES
        );
        let info = domain_info(&xen, dom).unwrap();
        assert_eq!(info.tot_pages, 100);
        assert!(info.has(dominf::PAUSED));
        assert_eq!(info.handle, [7; 16]);
        destroy_domain(&xen, dom).unwrap();
        assert_eq!(physinfo(&xen).unwrap().free_pages, before);
        assert!(xen.domain_ids().is_empty());
    }

    #[test]
    fn populate_stops_at_max_mem_pool_and_heap() {
        let xen = FakeXen::new();
        let dom = create_domain(&xen, 0, &CreateDomain::pvh([0; 16], 1)).unwrap();
        // No paging pool yet (XSA-409 ordering): nothing can be populated.
        set_max_mem(&xen, dom, 1024).unwrap();
        assert_eq!(populate_physmap(&xen, dom, 0, &[0]), Err(XenError::ENOMEM));
        set_paging_mempool_size(&xen, dom, 4096).unwrap();
        // max_mem 1024 KiB = 256 pages.
        let gfns: Vec<u64> = (0..300).collect();
        assert_eq!(populate_physmap(&xen, dom, 0, &gfns), Err(XenError::ENOMEM));
        assert_eq!(xen.domain_frames(dom).len(), 256);
        // The heap.
        set_max_mem(&xen, dom, 1 << 20).unwrap();
        xen.set_free_pages(10);
        assert_eq!(
            populate_physmap(&xen, dom, 0, &(1000..1020).collect::<Vec<_>>()),
            Err(XenError::ENOMEM)
        );
        assert_eq!(xen.free_pages(), 0);
        // Superpages must be aligned.
        xen.set_free_pages(10_000);
        set_paging_mempool_size(&xen, dom, 4 << 12).unwrap();
        assert_eq!(xen.free_pages(), 10_000 - 3);
        assert_eq!(
            populate_physmap(&xen, dom, 9, &[0x801]),
            Err(XenError::ENOMEM)
        );
        populate_physmap(&xen, dom, 9, &[0x800]).unwrap();
        assert_eq!(xen.domain_frames(dom).len(), 256 + 10 + 512);
    }

    #[test]
    fn foreign_pages_are_read_and_written_through_holes() {
        let xen = FakeXen::with_dom0_holes(HOLES, 64);
        let dom = guest(&xen, 16);
        map_foreign_frames(&xen, dom, &[3, 4], &[HOLES + 1, HOLES + 2]).unwrap();
        let p = xen.hole_address(HOLES + 2).unwrap();
        // SAFETY: the frame is mapped and nothing else refers to it.
        unsafe { p.wrapping_add(5).write(0xab) };
        remove_from_physmap(&xen, HOLES + 1).unwrap();
        remove_from_physmap(&xen, HOLES + 2).unwrap();
        assert_eq!(
            xen.read_guest(dom, 4 * 4096 + 5, 1),
            Some(alloc::vec![0xab])
        );
        // Mapping again shows the page's content.
        map_foreign_frames(&xen, dom, &[4], &[HOLES]).unwrap();
        let p = xen.hole_address(HOLES).unwrap().wrapping_add(5);
        assert_eq!(
            // SAFETY: as above.
            unsafe { p.read() },
            0xab
        );
        remove_from_physmap(&xen, HOLES).unwrap();
        assert_eq!(xen.foreign_mapping_count(), 0);
    }

    #[test]
    fn bad_foreign_entries_are_reported_per_entry() {
        let xen = FakeXen::with_dom0_holes(HOLES, 64);
        let dom = guest(&xen, 16);
        // Frame 99 is not populated; 0x500 is dom0 RAM, not a hole.
        let err =
            map_foreign_frames(&xen, dom, &[1, 99, 2], &[HOLES, HOLES + 1, 0x500]).unwrap_err();
        assert_eq!(
            err,
            ForeignMapError::Entries {
                first_failed: 1,
                error: XenError::EINVAL,
                mapped: alloc::vec![true, false, false]
            }
        );
        assert_eq!(xen.dom0_ram_clobbered(), [0x500]);
        assert_eq!(xen.foreign_mapping_count(), 1);
        assert_eq!(
            map_foreign_frames(&xen, 42, &[1], &[HOLES + 3]),
            Err(ForeignMapError::Call(XenError::ESRCH))
        );
    }

    #[test]
    fn a_mapped_domain_stays_dying_until_unmapped() {
        let xen = FakeXen::with_dom0_holes(HOLES, 64);
        let before = xen.free_pages();
        let dom = guest(&xen, 16);
        map_foreign_frames(&xen, dom, &[0], &[HOLES]).unwrap();
        let mut local = [HOLES + 1];
        acquire_resource(&xen, dom, ResourceType::GrantTable, 0, 0, &mut local).unwrap();
        destroy_domain(&xen, dom).unwrap();
        assert!(xen.domain_flags(dom).unwrap() & dominf::DYING != 0);
        assert!(xen.free_pages() < before);
        remove_from_physmap(&xen, HOLES).unwrap();
        assert!(xen.domain_flags(dom).is_some());
        remove_from_physmap(&xen, HOLES + 1).unwrap();
        assert_eq!(xen.domain_flags(dom), None);
        assert_eq!(xen.free_pages(), before);
    }

    #[test]
    fn grant_frame_is_acquired_and_written_back() {
        let xen = FakeXen::with_dom0_holes(HOLES, 64);
        let dom = guest(&xen, 4);
        let mut local = [HOLES + 7];
        acquire_resource(&xen, dom, ResourceType::GrantTable, 0, 0, &mut local).unwrap();
        // SAFETY: mapped, unaliased.
        unsafe { xen.hole_address(HOLES + 7).unwrap().write(1) };
        remove_from_physmap(&xen, HOLES + 7).unwrap();
        assert_eq!(xen.domain_grant_frame(dom, 0).unwrap()[0], 1);
        assert_eq!(
            acquire_resource(&xen, dom, ResourceType::GrantTable, 0, 1, &mut local),
            Err(XenError::EINVAL)
        );
    }

    #[test]
    fn hvm_context_round_trip() {
        let xen = FakeXen::new();
        let dom = guest(&xen, 1);
        let size = hvm_context_size(&xen, dom).unwrap();
        let mut buf = alloc::vec![0u8; size];
        assert_eq!(
            get_hvm_context(&xen, dom, &mut buf[..size - 1]),
            Err(ControlError::Xen(XenError::ENOSPC))
        );
        assert_eq!(get_hvm_context(&xen, dom, &mut buf).unwrap(), size);
        let header = parse_header(&buf).unwrap();
        let mut cpu = HvmHwCpu::zeroed();
        cpu.rip = 0x1234;
        let mut w = ContextWriter::new(header);
        w.record(hvm_save::TYPE_CPU, 1, &cpu.to_bytes());
        set_hvm_context(&xen, dom, &w.finish()).unwrap();
        assert_eq!(xen.domain_vcpu(dom, 1).unwrap().rip, 0x1234);
        assert_eq!(xen.domain_vcpu(dom, 0), None);
        // No END record, or a made-up header: refused.
        let mut w = ContextWriter::new(header);
        w.record(hvm_save::TYPE_CPU, 0, &cpu.to_bytes());
        let mut no_end = w.finish();
        no_end.truncate(no_end.len() - 8);
        assert_eq!(
            set_hvm_context(&xen, dom, &no_end),
            Err(ControlError::Xen(XenError::ENODATA))
        );
        let mut forged = header.to_vec();
        forged[12] ^= 1;
        assert_eq!(
            set_hvm_context(&xen, dom, &ContextWriter::new(&forged).finish()),
            Err(ControlError::Xen(XenError::EINVAL))
        );
    }

    #[test]
    fn creation_checks_its_configuration() {
        let xen = FakeXen::new();
        let mut config = CreateDomain::pvh([0; 16], 1);
        config.flags = 0;
        assert_eq!(
            create_domain(&xen, 0, &config),
            Err(ControlError::Xen(XenError::EINVAL))
        );
        let config = CreateDomain::pvh([0; 16], 1);
        assert_eq!(create_domain(&xen, 5, &config), Ok(5));
        assert_eq!(
            create_domain(&xen, 5, &config),
            Err(ControlError::Xen(XenError::EEXIST))
        );
        assert_eq!(create_domain(&xen, 0, &config), Ok(1));
        assert_eq!(
            set_max_vcpus(&xen, 1, 2),
            Err(ControlError::Xen(XenError::EINVAL))
        );
        let e820 = [E820Entry {
            addr: 0,
            size: 0x1000,
            kind: 1,
        }];
        set_memory_map(&xen, 1, &e820).unwrap();
        assert_eq!(xen.domain_memory_map(1), e820);
        xen.set_free_pages(3);
        assert_eq!(
            create_domain(&xen, 0, &config),
            Err(ControlError::Xen(XenError::ENOMEM))
        );
    }
}
