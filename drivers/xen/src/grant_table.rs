//! Grant-table hypercalls and structures (`xen/include/public/grant_table.h`, v1 ABI).
//!
//! `grant_table_op(cmd, uop, count)` takes an array of `count` operations; a batch can
//! succeed as a hypercall while single operations fail, so every operation carries its own
//! `status` ([`GntStatus`]).

use core::sync::atomic::{AtomicU16, AtomicU32};

use crate::error::{GntStatus, XenError};
use crate::hypercall::{HypercallOp, Hypervisor, DOMID_SELF, PAGE_SIZE};
use crate::memory::map_grant_table_frame;

const GNTTABOP_MAP_GRANT_REF: u64 = 0;
const GNTTABOP_UNMAP_GRANT_REF: u64 = 1;
const GNTTABOP_COPY: u64 = 5;
const GNTTABOP_QUERY_SIZE: u64 = 6;
const GNTTABOP_SET_VERSION: u64 = 8;

/// A grant reference: an index into a domain's grant table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantRef(pub u32);

/// A handle for an established mapping of a foreign grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrantHandle(pub u32);

/// `GTF_*` flags of a v1 grant entry.
pub mod gtf {
    pub const INVALID: u16 = 0;
    pub const PERMIT_ACCESS: u16 = 1;
    pub const ACCEPT_TRANSFER: u16 = 2;
    pub const TYPE_MASK: u16 = 3;
    pub const READONLY: u16 = 1 << 2;
    /// Set by Xen while the grantee has the frame mapped or is copying from it.
    pub const READING: u16 = 1 << 3;
    /// Set by Xen while the grantee has the frame mapped writable or is copying to it.
    pub const WRITING: u16 = 1 << 4;
}

/// `GNTMAP_*` flags for map/unmap.
pub mod gntmap {
    pub const DEVICE_MAP: u32 = 1 << 0;
    pub const HOST_MAP: u32 = 1 << 1;
    pub const READONLY: u32 = 1 << 2;
    pub const APPLICATION_MAP: u32 = 1 << 3;
    pub const CONTAINS_PTE: u32 = 1 << 4;
}

/// `GNTCOPY_*` flags: which side of a copy is a grant reference.
pub mod gntcopy {
    pub const SOURCE_GREF: u16 = 1 << 0;
    pub const DEST_GREF: u16 = 1 << 1;
}

/// First references reserved in every table (`GNTTAB_NR_RESERVED_ENTRIES`); 0 is the
/// console ring and 1 the xenstore ring when a toolstack builds a guest.
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;
/// `GNTTAB_RESERVED_CONSOLE`.
pub const GNTTAB_RESERVED_CONSOLE: GrantRef = GrantRef(0);
/// `GNTTAB_RESERVED_XENSTORE`.
pub const GNTTAB_RESERVED_XENSTORE: GrantRef = GrantRef(1);

/// `struct grant_entry_v1` (8 bytes): shared with Xen, hence atomics.
#[repr(C)]
#[derive(Debug, Default)]
pub struct GrantEntryV1 {
    pub flags: AtomicU16,
    pub domid: AtomicU16,
    pub frame: AtomicU32,
}

/// Entries per 4 KiB grant-table frame.
pub const ENTRIES_PER_FRAME: usize = PAGE_SIZE / core::mem::size_of::<GrantEntryV1>();

/// `struct gnttab_map_grant_ref` (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GnttabMapGrantRef {
    /// For a PVH/HVM dom0 with `GNTMAP_host_map`: the guest-physical address where the
    /// foreign frame appears.
    pub host_addr: u64,
    pub flags: u32,
    pub ref_: u32,
    pub dom: u16,
    pub status: i16,
    pub handle: u32,
    pub dev_bus_addr: u64,
}

/// `struct gnttab_unmap_grant_ref` (24 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GnttabUnmapGrantRef {
    pub host_addr: u64,
    pub dev_bus_addr: u64,
    pub handle: u32,
    pub status: i16,
}

/// One side of `struct gnttab_copy` (16 bytes): a grant reference in `domid`, or a frame
/// of ours when `domid` is `DOMID_SELF`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GnttabCopyPtr {
    /// `union { grant_ref_t ref; xen_pfn_t gmfn; }`
    pub ref_or_gmfn: u64,
    pub domid: u16,
    pub offset: u16,
}

/// `struct gnttab_copy` (40 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GnttabCopy {
    pub source: GnttabCopyPtr,
    pub dest: GnttabCopyPtr,
    pub len: u16,
    pub flags: u16,
    pub status: i16,
}

/// `struct gnttab_query_size` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GnttabQuerySize {
    pub dom: u16,
    pub nr_frames: u32,
    pub max_nr_frames: u32,
    pub status: i16,
}

/// `struct gnttab_set_version`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GnttabSetVersion {
    pub version: u32,
}

/// A grant operation failed either as a hypercall or in its own status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantOpError {
    Hypercall(XenError),
    Status(GntStatus),
}

fn gnttab_op<H: Hypervisor + ?Sized, T>(hv: &H, cmd: u64, ops: &mut [T]) -> Result<(), XenError> {
    let count = u32::try_from(ops.len()).map_err(|_| XenError::E2BIG)?;
    // SAFETY: `ops` is a live, exclusively borrowed array of `count` structures of the type
    // `cmd` expects.
    let ret = unsafe {
        hv.hypercall(
            HypercallOp::GrantTableOp as u32,
            [cmd, ops.as_mut_ptr() as u64, u64::from(count), 0, 0],
        )
    };
    XenError::check(ret).map(drop)
}

/// Current and maximum grant-table frames of our domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantTableSize {
    pub nr_frames: u32,
    pub max_nr_frames: u32,
}

/// `GNTTABOP_query_size` for ourselves.
pub fn query_size<H: Hypervisor + ?Sized>(hv: &H) -> Result<GrantTableSize, GrantOpError> {
    let mut op = [GnttabQuerySize {
        dom: DOMID_SELF,
        ..Default::default()
    }];
    gnttab_op(hv, GNTTABOP_QUERY_SIZE, &mut op).map_err(GrantOpError::Hypercall)?;
    GntStatus::check(op[0].status).map_err(GrantOpError::Status)?;
    Ok(GrantTableSize {
        nr_frames: op[0].nr_frames,
        max_nr_frames: op[0].max_nr_frames,
    })
}

/// `GNTTABOP_set_version(1)`; Xen echoes the version in force, which must be 1.
pub fn set_version_1<H: Hypervisor + ?Sized>(hv: &H) -> Result<(), XenError> {
    let mut op = [GnttabSetVersion { version: 1 }];
    gnttab_op(hv, GNTTABOP_SET_VERSION, &mut op)?;
    if op[0].version != 1 {
        return Err(XenError::EOPNOTSUPP);
    }
    Ok(())
}

/// Why our grant table could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantSetupError {
    Op(GrantOpError),
    /// More frames were offered than Xen allows for this domain.
    TooManyFrames {
        requested: usize,
        max_nr_frames: u32,
    },
    /// No frames were offered.
    NoFrames,
}

/// Brings up our v1 grant table: selects v1, checks the size limit, and places table
/// frame `i` at `frame_gfns[i]`. Returns the number of entries now usable. The kernel then
/// maps those frames and builds a [`crate::grant_access::GrantTable`] over them.
pub fn setup_grant_frames<H: Hypervisor + ?Sized>(
    hv: &H,
    frame_gfns: &[u64],
) -> Result<usize, GrantSetupError> {
    if frame_gfns.is_empty() {
        return Err(GrantSetupError::NoFrames);
    }
    set_version_1(hv).map_err(|e| GrantSetupError::Op(GrantOpError::Hypercall(e)))?;
    let size = query_size(hv).map_err(GrantSetupError::Op)?;
    if frame_gfns.len() > size.max_nr_frames as usize {
        return Err(GrantSetupError::TooManyFrames {
            requested: frame_gfns.len(),
            max_nr_frames: size.max_nr_frames,
        });
    }
    for (index, gfn) in frame_gfns.iter().enumerate() {
        map_grant_table_frame(hv, index as u32, *gfn)
            .map_err(|e| GrantSetupError::Op(GrantOpError::Hypercall(e)))?;
    }
    Ok(frame_gfns.len() * ENTRIES_PER_FRAME)
}

/// A foreign grant mapped into our physical address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedGrant {
    pub handle: GrantHandle,
    pub host_addr: u64,
    pub dev_bus_addr: u64,
    pub readonly: bool,
}

/// `GNTTABOP_map_grant_ref` with `GNTMAP_host_map`: map `gref` of domain `dom` at
/// guest-physical address `host_addr` (page aligned; a frame Keel has reserved for
/// foreign mappings, e.g. ballooned out).
pub fn map_grant<H: Hypervisor + ?Sized>(
    hv: &H,
    dom: u16,
    gref: GrantRef,
    host_addr: u64,
    readonly: bool,
) -> Result<MappedGrant, GrantOpError> {
    let flags = gntmap::HOST_MAP | if readonly { gntmap::READONLY } else { 0 };
    let mut op = [GnttabMapGrantRef {
        host_addr,
        flags,
        ref_: gref.0,
        dom,
        ..Default::default()
    }];
    gnttab_op(hv, GNTTABOP_MAP_GRANT_REF, &mut op).map_err(GrantOpError::Hypercall)?;
    GntStatus::check(op[0].status).map_err(GrantOpError::Status)?;
    Ok(MappedGrant {
        handle: GrantHandle(op[0].handle),
        host_addr,
        dev_bus_addr: op[0].dev_bus_addr,
        readonly,
    })
}

/// `GNTTABOP_unmap_grant_ref` of a mapping made by [`map_grant`].
pub fn unmap_grant<H: Hypervisor + ?Sized>(
    hv: &H,
    mapping: &MappedGrant,
) -> Result<(), GrantOpError> {
    let mut op = [GnttabUnmapGrantRef {
        host_addr: mapping.host_addr,
        dev_bus_addr: 0,
        handle: mapping.handle.0,
        status: 0,
    }];
    gnttab_op(hv, GNTTABOP_UNMAP_GRANT_REF, &mut op).map_err(GrantOpError::Hypercall)?;
    GntStatus::check(op[0].status).map_err(GrantOpError::Status)
}

/// One end of a grant copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyEnd {
    /// Bytes at `offset` in the frame `gref` of `dom` grants.
    Grant {
        dom: u16,
        gref: GrantRef,
        offset: u16,
    },
    /// Bytes at `offset` in our own guest frame `gfn`.
    Local { gfn: u64, offset: u16 },
}

impl CopyEnd {
    fn offset(self) -> u16 {
        match self {
            CopyEnd::Grant { offset, .. } | CopyEnd::Local { offset, .. } => offset,
        }
    }

    fn encode(self) -> GnttabCopyPtr {
        match self {
            CopyEnd::Grant { dom, gref, offset } => GnttabCopyPtr {
                ref_or_gmfn: u64::from(gref.0),
                domid: dom,
                offset,
            },
            CopyEnd::Local { gfn, offset } => GnttabCopyPtr {
                ref_or_gmfn: gfn,
                domid: DOMID_SELF,
                offset,
            },
        }
    }
}

impl GnttabCopy {
    /// A copy of `len` bytes; refused locally (as Xen would with `GNTST_bad_copy_arg`) if
    /// either end would cross its page.
    pub fn new(source: CopyEnd, dest: CopyEnd, len: u16) -> Result<Self, GntStatus> {
        for end in [source, dest] {
            if usize::from(end.offset()) + usize::from(len) > PAGE_SIZE {
                return Err(GntStatus::BadCopyArg);
            }
        }
        let mut flags = 0;
        if matches!(source, CopyEnd::Grant { .. }) {
            flags |= gntcopy::SOURCE_GREF;
        }
        if matches!(dest, CopyEnd::Grant { .. }) {
            flags |= gntcopy::DEST_GREF;
        }
        Ok(GnttabCopy {
            source: source.encode(),
            dest: dest.encode(),
            len,
            flags,
            status: 0,
        })
    }

    /// This operation's result after [`grant_copy`].
    pub fn result(&self) -> Result<(), GntStatus> {
        GntStatus::check(self.status)
    }
}

/// `GNTTABOP_copy` of a batch; on `Ok`, inspect each operation's [`GnttabCopy::result`].
pub fn grant_copy<H: Hypervisor + ?Sized>(hv: &H, ops: &mut [GnttabCopy]) -> Result<(), XenError> {
    gnttab_op(hv, GNTTABOP_COPY, ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeXen, FOREIGN_FRAME_BASE};
    use crate::memory::MapSpace;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_xen_417() {
        assert_eq!(size_of::<GrantEntryV1>(), 8);
        assert_eq!(offset_of!(GrantEntryV1, domid), 2);
        assert_eq!(offset_of!(GrantEntryV1, frame), 4);
        assert_eq!(ENTRIES_PER_FRAME, 512);
        assert_eq!(size_of::<GnttabMapGrantRef>(), 32);
        assert_eq!(offset_of!(GnttabMapGrantRef, flags), 8);
        assert_eq!(offset_of!(GnttabMapGrantRef, ref_), 12);
        assert_eq!(offset_of!(GnttabMapGrantRef, dom), 16);
        assert_eq!(offset_of!(GnttabMapGrantRef, status), 18);
        assert_eq!(offset_of!(GnttabMapGrantRef, handle), 20);
        assert_eq!(offset_of!(GnttabMapGrantRef, dev_bus_addr), 24);
        assert_eq!(size_of::<GnttabUnmapGrantRef>(), 24);
        assert_eq!(offset_of!(GnttabUnmapGrantRef, handle), 16);
        assert_eq!(offset_of!(GnttabUnmapGrantRef, status), 20);
        assert_eq!(size_of::<GnttabCopyPtr>(), 16);
        assert_eq!(offset_of!(GnttabCopyPtr, domid), 8);
        assert_eq!(offset_of!(GnttabCopyPtr, offset), 10);
        assert_eq!(size_of::<GnttabCopy>(), 40);
        assert_eq!(offset_of!(GnttabCopy, dest), 16);
        assert_eq!(offset_of!(GnttabCopy, len), 32);
        assert_eq!(offset_of!(GnttabCopy, flags), 34);
        assert_eq!(offset_of!(GnttabCopy, status), 36);
        assert_eq!(size_of::<GnttabQuerySize>(), 16);
        assert_eq!(offset_of!(GnttabQuerySize, nr_frames), 4);
        assert_eq!(offset_of!(GnttabQuerySize, max_nr_frames), 8);
        assert_eq!(offset_of!(GnttabQuerySize, status), 12);
        assert_eq!(size_of::<GnttabSetVersion>(), 4);
    }

    #[test]
    fn setup_maps_every_frame_after_selecting_v1() {
        let xen = FakeXen::new();
        assert_eq!(setup_grant_frames(&xen, &[0x100, 0x101]), Ok(1024));
        assert_eq!(
            xen.physmap_calls(),
            [
                (MapSpace::GrantTable as u32, 0, 0x100),
                (MapSpace::GrantTable as u32, 1, 0x101)
            ]
        );
        assert_eq!(xen.grant_version(), 1);
        assert_eq!(
            setup_grant_frames(&xen, &[]),
            Err(GrantSetupError::NoFrames)
        );
        let too_many = alloc::vec![0u64; 65];
        assert_eq!(
            setup_grant_frames(&xen, &too_many),
            Err(GrantSetupError::TooManyFrames {
                requested: 65,
                max_nr_frames: 64
            })
        );
    }

    #[test]
    fn maps_and_unmaps_a_foreign_grant() {
        let xen = FakeXen::new();
        xen.add_foreign_grant(5, GrantRef(8), 0, gtf::PERMIT_ACCESS, FOREIGN_FRAME_BASE);
        xen.write_foreign_frame(FOREIGN_FRAME_BASE, 0, b"ring");
        let m = map_grant(&xen, 5, GrantRef(8), 0x8000_0000, false).unwrap();
        assert_eq!(xen.read_local(0x8000_0000 >> 12, 0, 4), b"ring");
        // Xen marks the granter's entry busy while we hold the mapping.
        assert_eq!(
            xen.foreign_grant_flags(5, GrantRef(8)) & (gtf::READING | gtf::WRITING),
            gtf::READING | gtf::WRITING
        );
        unmap_grant(&xen, &m).unwrap();
        assert_eq!(xen.foreign_grant_flags(5, GrantRef(8)), gtf::PERMIT_ACCESS);
        assert_eq!(
            unmap_grant(&xen, &m),
            Err(GrantOpError::Status(GntStatus::BadHandle))
        );
    }

    #[test]
    fn map_failures_carry_typed_status() {
        let xen = FakeXen::new();
        xen.add_foreign_grant(
            5,
            GrantRef(8),
            0,
            gtf::PERMIT_ACCESS | gtf::READONLY,
            FOREIGN_FRAME_BASE,
        );
        xen.add_foreign_grant(
            5,
            GrantRef(9),
            3,
            gtf::PERMIT_ACCESS,
            FOREIGN_FRAME_BASE + 1,
        );
        let err = |dom, gref, addr, ro| map_grant(&xen, dom, GrantRef(gref), addr, ro).unwrap_err();
        assert_eq!(
            err(6, 8, 0x1000, true),
            GrantOpError::Status(GntStatus::BadDomain)
        );
        assert_eq!(
            err(5, 100_000, 0x1000, true),
            GrantOpError::Status(GntStatus::BadGntref)
        );
        assert_eq!(
            err(5, 8, 0x1000, false),
            GrantOpError::Status(GntStatus::PermissionDenied)
        );
        assert_eq!(
            err(5, 9, 0x1000, true),
            GrantOpError::Status(GntStatus::PermissionDenied)
        );
        assert_eq!(
            err(5, 8, 0x1001, true),
            GrantOpError::Status(GntStatus::BadVirtAddr)
        );
        assert!(
            map_grant(&xen, 5, GrantRef(8), 0x1000, true)
                .unwrap()
                .readonly
        );
        assert_eq!(xen.foreign_grant_flags(5, GrantRef(8)) & gtf::WRITING, 0);
    }

    #[test]
    fn copies_both_directions_with_per_op_status() {
        let xen = FakeXen::new();
        xen.add_foreign_grant(5, GrantRef(8), 0, gtf::PERMIT_ACCESS, FOREIGN_FRAME_BASE);
        xen.add_foreign_grant(
            5,
            GrantRef(9),
            0,
            gtf::PERMIT_ACCESS | gtf::READONLY,
            FOREIGN_FRAME_BASE + 1,
        );
        xen.write_foreign_frame(FOREIGN_FRAME_BASE, 100, b"from guest");
        xen.write_local(0x42, 0, b"to guest");
        let mut ops = [
            // guest → us
            GnttabCopy::new(
                CopyEnd::Grant {
                    dom: 5,
                    gref: GrantRef(8),
                    offset: 100,
                },
                CopyEnd::Local {
                    gfn: 0x43,
                    offset: 8,
                },
                10,
            )
            .unwrap(),
            // us → guest
            GnttabCopy::new(
                CopyEnd::Local {
                    gfn: 0x42,
                    offset: 0,
                },
                CopyEnd::Grant {
                    dom: 5,
                    gref: GrantRef(8),
                    offset: 2000,
                },
                8,
            )
            .unwrap(),
            // us → read-only grant: refused, the others still happen
            GnttabCopy::new(
                CopyEnd::Local {
                    gfn: 0x42,
                    offset: 0,
                },
                CopyEnd::Grant {
                    dom: 5,
                    gref: GrantRef(9),
                    offset: 0,
                },
                8,
            )
            .unwrap(),
        ];
        assert_eq!(ops[0].flags, gntcopy::SOURCE_GREF);
        assert_eq!(ops[1].flags, gntcopy::DEST_GREF);
        grant_copy(&xen, &mut ops).unwrap();
        assert_eq!(ops[0].result(), Ok(()));
        assert_eq!(ops[1].result(), Ok(()));
        assert_eq!(ops[2].result(), Err(GntStatus::PermissionDenied));
        assert_eq!(xen.read_local(0x43, 8, 10), b"from guest");
        assert_eq!(
            xen.read_foreign_frame(FOREIGN_FRAME_BASE, 2000, 8),
            b"to guest"
        );
        assert_eq!(
            xen.read_foreign_frame(FOREIGN_FRAME_BASE + 1, 0, 8),
            [0u8; 8]
        );
    }

    #[test]
    fn copy_crossing_a_page_is_refused_locally() {
        let end = CopyEnd::Local {
            gfn: 1,
            offset: 4000,
        };
        let other = CopyEnd::Grant {
            dom: 5,
            gref: GrantRef(8),
            offset: 0,
        };
        assert_eq!(GnttabCopy::new(end, other, 97), Err(GntStatus::BadCopyArg));
        assert!(GnttabCopy::new(end, other, 96).is_ok());
        assert_eq!(GnttabCopy::new(other, end, 200), Err(GntStatus::BadCopyArg));
    }
}
