//! `memory_op` hypercall (`xen/include/public/memory.h`): placing Xen-owned frames
//! (shared_info, grant-table frames) in our physical address space and reading the
//! pseudo-physical and machine memory maps.

use crate::error::XenError;
use crate::hypercall::{call_with, HypercallOp, Hypervisor, DOMID_SELF};

const XENMEM_POPULATE_PHYSMAP: u64 = 6;
const XENMEM_ADD_TO_PHYSMAP: u64 = 7;
const XENMEM_MEMORY_MAP: u64 = 9;
const XENMEM_MACHINE_MEMORY_MAP: u64 = 10;
const XENMEM_SET_MEMORY_MAP: u64 = 13;
const XENMEM_REMOVE_FROM_PHYSMAP: u64 = 15;
const XENMEM_ADD_TO_PHYSMAP_BATCH: u64 = 23;
const XENMEM_ACQUIRE_RESOURCE: u64 = 28;

/// `XENMEM_resource_*`: what [`acquire_resource`] maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ResourceType {
    IoreqServer = 0,
    /// A domain's grant table; `id` 0 = shared frames, 1 = status frames.
    GrantTable = 1,
    VmtraceBuf = 2,
    VmtraceBufs = 3,
}

/// `struct xen_memory_reservation` (32 bytes): the argument of populate_physmap and friends.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XenMemoryReservation {
    /// Guest frames (for a translated domain), one per extent.
    pub extent_start: u64,
    pub nr_extents: u64,
    /// Each extent is `2^extent_order` frames.
    pub extent_order: u32,
    /// `XENMEMF_*`; 0 = any node, any address.
    pub mem_flags: u32,
    pub domid: u16,
}

/// `struct xen_foreign_memory_map` (24 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XenForeignMemoryMap {
    pub domid: u16,
    pub map: XenMemoryMap,
}

/// `struct xen_add_to_physmap_batch` (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XenAddToPhysmapBatch {
    /// The domain whose physmap changes (we: `DOMID_SELF`).
    pub domid: u16,
    pub space: u16,
    pub size: u16,
    /// For `GmfnForeign`: the domain owning the pages in `idxs`.
    pub foreign_domid: u16,
    /// Indexes into the space: the foreign domain's frames.
    pub idxs: u64,
    /// Where each lands in `domid`'s physmap.
    pub gpfns: u64,
    /// Per-entry errno (0 or negative), written by Xen.
    pub errs: u64,
}

/// `struct xen_remove_from_physmap` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XenRemoveFromPhysmap {
    pub domid: u16,
    pub gpfn: u64,
}

/// `struct xen_mem_acquire_resource` (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XenMemAcquireResource {
    pub domid: u16,
    pub kind: u16,
    pub id: u32,
    pub nr_frames: u32,
    pub flags: u32,
    pub frame: u64,
    /// IN for a translated caller (a PVH dom0): our guest frames to map the resource at.
    pub frame_list: u64,
}

/// `XENMAPIDX_grant_table_status`: or'ed into the index to map a v2 status frame.
pub const XENMAPIDX_GRANT_TABLE_STATUS: u64 = 0x8000_0000;

/// `XENMAPSPACE_*`: what `idx` of [`XenAddToPhysmap`] indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MapSpace {
    SharedInfo = 0,
    GrantTable = 1,
    Gmfn = 2,
    GmfnRange = 3,
    GmfnForeign = 4,
    DevMmio = 5,
}

/// `struct xen_add_to_physmap` (24 bytes on x86_64).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XenAddToPhysmap {
    pub domid: u16,
    /// Pages for `GmfnRange`.
    pub size: u16,
    pub space: u32,
    pub idx: u64,
    pub gpfn: u64,
}

/// `XENMEM_add_to_physmap`.
pub fn add_to_physmap<H: Hypervisor + ?Sized>(
    hv: &H,
    space: MapSpace,
    idx: u64,
    gpfn: u64,
) -> Result<(), XenError> {
    let mut arg = XenAddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space: space as u32,
        idx,
        gpfn,
    };
    call_with(hv, HypercallOp::MemoryOp, XENMEM_ADD_TO_PHYSMAP, &mut arg).map(drop)
}

/// Places the shared_info page at guest frame `gpfn`.
pub fn map_shared_info<H: Hypervisor + ?Sized>(hv: &H, gpfn: u64) -> Result<(), XenError> {
    add_to_physmap(hv, MapSpace::SharedInfo, 0, gpfn)
}

/// Places our grant-table frame `frame_index` at guest frame `gpfn`; Xen grows the table
/// to include that frame if needed (up to the `max_nr_frames` of `GNTTABOP_query_size`).
pub fn map_grant_table_frame<H: Hypervisor + ?Sized>(
    hv: &H,
    frame_index: u32,
    gpfn: u64,
) -> Result<(), XenError> {
    add_to_physmap(hv, MapSpace::GrantTable, u64::from(frame_index), gpfn)
}

/// One E820 entry as Xen writes it for `XENMEM_memory_map` (packed, 20 bytes).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// E820 region types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Kind {
    Ram,
    Reserved,
    Acpi,
    Nvs,
    Unusable,
    Other(u32),
}

impl E820Entry {
    pub fn kind(&self) -> E820Kind {
        match self.kind {
            1 => E820Kind::Ram,
            2 => E820Kind::Reserved,
            3 => E820Kind::Acpi,
            4 => E820Kind::Nvs,
            5 => E820Kind::Unusable,
            other => E820Kind::Other(other),
        }
    }
}

/// `struct xen_memory_map` (16 bytes): in, the buffer capacity; out, entries written.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XenMemoryMap {
    pub nr_entries: u32,
    pub buffer: u64,
}

fn read_map<'a, H: Hypervisor + ?Sized>(
    hv: &H,
    cmd: u64,
    buf: &'a mut [E820Entry],
) -> Result<&'a [E820Entry], XenError> {
    let capacity = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    let mut arg = XenMemoryMap {
        nr_entries: capacity,
        buffer: buf.as_mut_ptr() as u64,
    };
    call_with(hv, HypercallOp::MemoryOp, cmd, &mut arg)?;
    // Xen writes at most `capacity` entries; never trust a larger count.
    let written = (arg.nr_entries.min(capacity)) as usize;
    Ok(buf.get(..written).unwrap_or(&[]))
}

/// `XENMEM_memory_map`: our own (pseudo-physical) memory map.
pub fn memory_map<'a, H: Hypervisor + ?Sized>(
    hv: &H,
    buf: &'a mut [E820Entry],
) -> Result<&'a [E820Entry], XenError> {
    read_map(hv, XENMEM_MEMORY_MAP, buf)
}

/// `XENMEM_machine_memory_map`: the host's machine memory map (privileged).
pub fn machine_memory_map<'a, H: Hypervisor + ?Sized>(
    hv: &H,
    buf: &'a mut [E820Entry],
) -> Result<&'a [E820Entry], XenError> {
    read_map(hv, XENMEM_MACHINE_MEMORY_MAP, buf)
}

/// `XENMEM_populate_physmap` for domain `domid`: one extent of `2^order` frames at each
/// guest frame of `gfns`. Xen stops at the first extent it cannot allocate and returns how
/// many it did; this answers `ENOMEM` then (the extents done stay populated: the caller
/// owns them and destroying the domain frees them).
pub fn populate_physmap<H: Hypervisor + ?Sized>(
    hv: &H,
    domid: u16,
    order: u32,
    gfns: &[u64],
) -> Result<(), XenError> {
    let mut arg = XenMemoryReservation {
        extent_start: gfns.as_ptr() as u64,
        nr_extents: gfns.len() as u64,
        extent_order: order,
        mem_flags: 0,
        domid,
    };
    let done = call_with(hv, HypercallOp::MemoryOp, XENMEM_POPULATE_PHYSMAP, &mut arg)?;
    if done != gfns.len() as u64 {
        return Err(XenError::ENOMEM);
    }
    Ok(())
}

/// `XENMEM_set_memory_map`: the E820 map domain `domid` reads with `XENMEM_memory_map`.
pub fn set_memory_map<H: Hypervisor + ?Sized>(
    hv: &H,
    domid: u16,
    entries: &[E820Entry],
) -> Result<(), XenError> {
    let mut arg = XenForeignMemoryMap {
        domid,
        map: XenMemoryMap {
            nr_entries: u32::try_from(entries.len()).map_err(|_| XenError::E2BIG)?,
            // Xen only reads the entries.
            buffer: entries.as_ptr() as u64,
        },
    };
    call_with(hv, HypercallOp::MemoryOp, XENMEM_SET_MEMORY_MAP, &mut arg).map(drop)
}

/// `XENMEM_add_to_physmap_batch` with `XENMAPSPACE_gmfn_foreign`: maps frame `foreign[i]` of
/// domain `foreign_domid` at our guest frame `local[i]`. **Our frames must be holes**: if one
/// holds our RAM, Xen frees that page. On a per-entry failure the entries that did map stay
/// mapped and are reported in the error, so the caller can remove them.
pub fn map_foreign_frames<H: Hypervisor + ?Sized>(
    hv: &H,
    foreign_domid: u16,
    foreign: &[u64],
    local: &[u64],
) -> Result<(), ForeignMapError> {
    if foreign.len() != local.len() {
        return Err(ForeignMapError::Call(XenError::EINVAL));
    }
    let size = u16::try_from(foreign.len()).map_err(|_| ForeignMapError::Call(XenError::E2BIG))?;
    let mut errs = alloc::vec::Vec::new();
    errs.try_reserve_exact(foreign.len())
        .map_err(|_| ForeignMapError::Call(XenError::ENOMEM))?;
    errs.resize(foreign.len(), 0i32);
    let mut arg = XenAddToPhysmapBatch {
        domid: DOMID_SELF,
        space: MapSpace::GmfnForeign as u16,
        size,
        foreign_domid,
        idxs: foreign.as_ptr() as u64,
        gpfns: local.as_ptr() as u64,
        errs: errs.as_mut_ptr() as u64,
    };
    call_with(
        hv,
        HypercallOp::MemoryOp,
        XENMEM_ADD_TO_PHYSMAP_BATCH,
        &mut arg,
    )
    .map_err(ForeignMapError::Call)?;
    match errs.iter().position(|&e| e != 0) {
        None => Ok(()),
        Some(first) => Err(ForeignMapError::Entries {
            first_failed: first,
            error: XenError::from_errno(i64::from(errs[first]).unsigned_abs() as i64),
            mapped: errs.iter().map(|&e| e == 0).collect(),
        }),
    }
}

/// Failure of [`map_foreign_frames`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForeignMapError {
    /// The hypercall failed as a whole: nothing was mapped.
    Call(XenError),
    /// Some entries failed; `mapped[i]` says which local frames now hold a foreign page.
    Entries {
        first_failed: usize,
        error: XenError,
        mapped: alloc::vec::Vec<bool>,
    },
}

/// `XENMEM_remove_from_physmap` on ourselves: drops whatever page is at our frame `gpfn`
/// (a foreign mapping, a grant-table or resource frame).
pub fn remove_from_physmap<H: Hypervisor + ?Sized>(hv: &H, gpfn: u64) -> Result<(), XenError> {
    let mut arg = XenRemoveFromPhysmap {
        domid: DOMID_SELF,
        gpfn,
    };
    call_with(
        hv,
        HypercallOp::MemoryOp,
        XENMEM_REMOVE_FROM_PHYSMAP,
        &mut arg,
    )
    .map(drop)
}

/// `XENMEM_acquire_resource` from a translated caller: maps frames `frame..` of resource
/// `kind`/`id` of domain `domid` at our guest frames `local` (holes, as for foreign maps).
/// Undo with [`remove_from_physmap`].
pub fn acquire_resource<H: Hypervisor + ?Sized>(
    hv: &H,
    domid: u16,
    kind: ResourceType,
    id: u32,
    frame: u64,
    local: &mut [u64],
) -> Result<(), XenError> {
    let mut arg = XenMemAcquireResource {
        domid,
        kind: kind as u16,
        id,
        nr_frames: u32::try_from(local.len()).map_err(|_| XenError::E2BIG)?,
        flags: 0,
        frame,
        frame_list: local.as_mut_ptr() as u64,
    };
    call_with(hv, HypercallOp::MemoryOp, XENMEM_ACQUIRE_RESOURCE, &mut arg).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeXen;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_xen_417() {
        assert_eq!(size_of::<XenAddToPhysmap>(), 24);
        assert_eq!(offset_of!(XenAddToPhysmap, size), 2);
        assert_eq!(offset_of!(XenAddToPhysmap, space), 4);
        assert_eq!(offset_of!(XenAddToPhysmap, idx), 8);
        assert_eq!(offset_of!(XenAddToPhysmap, gpfn), 16);
        assert_eq!(size_of::<XenMemoryMap>(), 16);
        assert_eq!(offset_of!(XenMemoryMap, buffer), 8);
        assert_eq!(size_of::<E820Entry>(), 20);
        assert_eq!(size_of::<XenMemoryReservation>(), 32);
        assert_eq!(offset_of!(XenMemoryReservation, nr_extents), 8);
        assert_eq!(offset_of!(XenMemoryReservation, extent_order), 16);
        assert_eq!(offset_of!(XenMemoryReservation, mem_flags), 20);
        assert_eq!(offset_of!(XenMemoryReservation, domid), 24);
        assert_eq!(size_of::<XenForeignMemoryMap>(), 24);
        assert_eq!(offset_of!(XenForeignMemoryMap, map), 8);
        assert_eq!(size_of::<XenAddToPhysmapBatch>(), 32);
        assert_eq!(offset_of!(XenAddToPhysmapBatch, space), 2);
        assert_eq!(offset_of!(XenAddToPhysmapBatch, size), 4);
        assert_eq!(offset_of!(XenAddToPhysmapBatch, foreign_domid), 6);
        assert_eq!(offset_of!(XenAddToPhysmapBatch, idxs), 8);
        assert_eq!(offset_of!(XenAddToPhysmapBatch, gpfns), 16);
        assert_eq!(offset_of!(XenAddToPhysmapBatch, errs), 24);
        assert_eq!(size_of::<XenRemoveFromPhysmap>(), 16);
        assert_eq!(offset_of!(XenRemoveFromPhysmap, gpfn), 8);
        assert_eq!(size_of::<XenMemAcquireResource>(), 32);
        assert_eq!(offset_of!(XenMemAcquireResource, kind), 2);
        assert_eq!(offset_of!(XenMemAcquireResource, id), 4);
        assert_eq!(offset_of!(XenMemAcquireResource, nr_frames), 8);
        assert_eq!(offset_of!(XenMemAcquireResource, frame), 16);
        assert_eq!(offset_of!(XenMemAcquireResource, frame_list), 24);
    }

    #[test]
    fn add_to_physmap_passes_space_index_and_frame() {
        let xen = FakeXen::new();
        map_shared_info(&xen, 0xfeff0).unwrap();
        map_grant_table_frame(&xen, 3, 0xfeff4).unwrap();
        assert_eq!(
            xen.physmap_calls(),
            [
                (MapSpace::SharedInfo as u32, 0, 0xfeff0),
                (MapSpace::GrantTable as u32, 3, 0xfeff4)
            ]
        );
    }

    #[test]
    fn grant_frame_beyond_maximum_is_an_error() {
        let xen = FakeXen::new();
        assert_eq!(
            map_grant_table_frame(&xen, 64, 0x1000),
            Err(XenError::EINVAL)
        );
    }

    #[test]
    fn memory_maps_are_truncated_to_what_xen_wrote() {
        let xen = FakeXen::new();
        xen.set_memory_map(&[
            E820Entry {
                addr: 0,
                size: 0x9f000,
                kind: 1,
            },
            E820Entry {
                addr: 0xf0000,
                size: 0x10000,
                kind: 2,
            },
            E820Entry {
                addr: 0x10_0000,
                size: 0x1000_0000,
                kind: 1,
            },
        ]);
        let mut buf = [E820Entry::default(); 8];
        let map = memory_map(&xen, &mut buf).unwrap();
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].kind(), E820Kind::Reserved);
        assert_eq!({ map[2].size }, 0x1000_0000);
        let mut small = [E820Entry::default(); 2];
        assert_eq!(machine_memory_map(&xen, &mut small).unwrap().len(), 2);
    }
}
