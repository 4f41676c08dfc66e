//! `memory_op` hypercall (`xen/include/public/memory.h`): placing Xen-owned frames
//! (shared_info, grant-table frames) in our physical address space and reading the
//! pseudo-physical and machine memory maps.

use crate::error::XenError;
use crate::hypercall::{call_with, HypercallOp, Hypervisor, DOMID_SELF};

const XENMEM_ADD_TO_PHYSMAP: u64 = 7;
const XENMEM_MEMORY_MAP: u64 = 9;
const XENMEM_MACHINE_MEMORY_MAP: u64 = 10;

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
