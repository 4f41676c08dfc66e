//! Boot-time proof, on the real hypervisor, that the two mechanisms every backend builds
//! on work: an event sent to ourselves arrives through the upcall and wakes a task, and a
//! page granted to ourselves can be mapped and copied through. Each prints one line; a
//! failure panics with the step that failed, so a broken Xen layer stops the boot with a
//! reason instead of hanging a backend later.

use keel_executor::{Handle, Signal};
use keel_xen::evtchn::{self, Port};
use keel_xen::grant_access::GrantError;
use keel_xen::grant_table::{
    grant_copy, map_grant, unmap_grant, CopyEnd, GnttabCopy, GrantOpError, GrantRef,
};
use keel_xen::hypercall::{DOMID_SELF, PAGE_SIZE};
use keel_xen::{GntStatus, XenError};

use super::events::{BindPortError, EventChannel};
use super::hypercall::Xen;
use super::{domid, grants, with_frames};
use crate::memory;

/// How long the loopback event may take: generous for TCG on a loaded machine.
const LOOPBACK_TIMEOUT_NS: u64 = 5_000_000_000;

/// Starts the self-tests as a task; the signal is set when both passed.
pub fn start(handle: &Handle) -> Signal {
    let passed = Signal::new();
    let (task_handle, task_passed) = (handle.clone(), passed.clone());
    handle.spawn(async move {
        match event_loopback(&task_handle).await {
            Ok((sender, receiver)) => log::info!(
                "xen: event channel loopback ok (port {} -> port {})",
                sender.0,
                receiver.0
            ),
            Err(e) => panic!("xen: event channel loopback failed: {e}"),
        }
        match grant_self_map_and_copy() {
            Ok(gref) => log::info!(
                "xen: grant self-map and copy ok (ref {}, {PAGE_SIZE} bytes)",
                gref.0
            ),
            Err(e) => panic!("xen: grant self-test failed: {e}"),
        }
        task_passed.set();
    });
    passed
}

/// What went wrong in the loopback, by step.
#[derive(Debug)]
enum LoopbackError {
    AllocUnbound(XenError),
    BindInterdomain(XenError),
    Bind(BindPortError),
    Send(XenError),
    NoUpcall { port: Port },
}

impl core::fmt::Display for LoopbackError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LoopbackError::AllocUnbound(e) => write!(f, "EVTCHNOP_alloc_unbound: {e}"),
            LoopbackError::BindInterdomain(e) => write!(f, "EVTCHNOP_bind_interdomain: {e}"),
            LoopbackError::Bind(e) => write!(f, "binding the port: {e:?}"),
            LoopbackError::Send(e) => write!(f, "EVTCHNOP_send: {e}"),
            LoopbackError::NoUpcall { port } => write!(
                f,
                "no upcall for port {} within {} s",
                port.0,
                LOOPBACK_TIMEOUT_NS / 1_000_000_000
            ),
        }
    }
}

/// An unbound port for ourselves, bound from our own side: sending on one end must raise
/// the upcall for the other and wake the task waiting on it.
async fn event_loopback(handle: &Handle) -> Result<(Port, Port), LoopbackError> {
    let me = domid();
    let receiver =
        evtchn::alloc_unbound(&Xen, DOMID_SELF, me).map_err(LoopbackError::AllocUnbound)?;
    let result = async {
        let sender =
            evtchn::bind_interdomain(&Xen, me, receiver).map_err(LoopbackError::BindInterdomain)?;
        let result = async {
            let channel = EventChannel::bind(receiver).map_err(LoopbackError::Bind)?;
            evtchn::send(&Xen, sender).map_err(LoopbackError::Send)?;
            handle
                .timeout(LOOPBACK_TIMEOUT_NS, channel.wait())
                .await
                .map_err(|_| LoopbackError::NoUpcall { port: receiver })
        }
        .await;
        close(sender);
        result.map(|()| sender)
    }
    .await;
    close(receiver);
    result.map(|sender| (sender, receiver))
}

fn close(port: Port) {
    if let Err(e) = evtchn::close(&Xen, port) {
        log::warn!("xen: closing event channel {}: {e}", port.0);
    }
}

/// What went wrong in the grant self-test, by step.
#[derive(Debug)]
enum GrantTestError {
    NoMemory,
    NoTable,
    Grant(GrantError),
    Frames(keel_xen::frames::FrameSpaceError),
    MapPage(memory::MapError),
    MapGrant(GrantOpError),
    MappedContentDiffers,
    WriteThroughMappingLost,
    UnmapGrant(GrantOpError),
    Copy(XenError),
    CopyStatus(GntStatus),
    CopiedContentDiffers,
}

impl core::fmt::Display for GrantTestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GrantTestError::NoMemory => write!(f, "no free frame"),
            GrantTestError::NoTable => write!(f, "the grant table is not set up"),
            GrantTestError::Grant(e) => write!(f, "granting the page: {e:?}"),
            GrantTestError::Frames(e) => write!(f, "no frame to map the grant at: {e}"),
            GrantTestError::MapPage(e) => write!(f, "mapping the grant's frame: {e}"),
            GrantTestError::MapGrant(e) => write!(f, "GNTTABOP_map_grant_ref: {e:?}"),
            GrantTestError::MappedContentDiffers => {
                write!(f, "the mapped grant does not show the granted page")
            }
            GrantTestError::WriteThroughMappingLost => {
                write!(
                    f,
                    "a write through the mapping did not reach the granted page"
                )
            }
            GrantTestError::UnmapGrant(e) => write!(f, "GNTTABOP_unmap_grant_ref: {e:?}"),
            GrantTestError::Copy(e) => write!(f, "GNTTABOP_copy: {e}"),
            GrantTestError::CopyStatus(e) => write!(f, "GNTTABOP_copy status {e:?}"),
            GrantTestError::CopiedContentDiffers => {
                write!(f, "the copied page differs from the granted page")
            }
        }
    }
}

/// A frame of RAM, returned to the allocator when dropped unless given up.
struct Frame(u64);

impl Frame {
    fn new() -> Result<Self, GrantTestError> {
        memory::allocate_frames(1)
            .map(Frame)
            .ok_or(GrantTestError::NoMemory)
    }
    fn gfn(&self) -> u64 {
        self.0 / PAGE_SIZE as u64
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: a frame we allocated, identity-mapped, used by this test alone.
        unsafe { core::slice::from_raw_parts(self.0 as *const u8, PAGE_SIZE) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed exclusively.
        unsafe { core::slice::from_raw_parts_mut(self.0 as *mut u8, PAGE_SIZE) }
    }
    /// Keeps the frame out of the allocator for good (its guest frame no longer holds it).
    fn give_up(self) {
        log::debug!("xen: frame {:#x} given up by the grant self-test", self.0);
        core::mem::forget(self);
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        memory::free_frames(self.0, 1);
    }
}

/// The test pattern: byte `i` of the page.
fn pattern(i: usize) -> u8 {
    (i * 7 + 3) as u8
}

/// Grants a page to ourselves, copies it out through the grant with `GNTTABOP_copy`, then
/// maps the grant at a free frame and checks the mapping shows the page and takes writes.
///
/// Mapping a grant of a page we own has a cost on Xen 4.17: adding the mapping removes the
/// page from its own guest frame (the p2m keeps one address per page we own), and the
/// unmap does not put it back. So the copy runs first, and the page is given up afterwards
/// (one 4 KiB frame per boot). Backends map other domains' grants, which are unaffected.
fn grant_self_map_and_copy() -> Result<GrantRef, GrantTestError> {
    let me = domid();
    let mut source = Frame::new()?;
    for (i, byte) in source.bytes_mut().iter_mut().enumerate() {
        *byte = pattern(i);
    }
    let gref = grants::with_table(|t| t.grant_access(me, source.gfn(), false))
        .ok_or(GrantTestError::NoTable)?
        .map_err(GrantTestError::Grant)?;
    let copied = copy_through(me, gref, &source);
    let mapped = copied.and_then(|()| {
        let result = map_through(me, gref);
        // Once a map was attempted, the source's guest frame may be empty: never reuse it.
        source.give_up();
        result
    });
    match grants::with_table(|t| t.end_access(gref)) {
        Some(Ok(())) | None => {}
        Some(Err(e)) => log::warn!("xen: ending the self-test grant: {e:?}"),
    }
    mapped.map(|()| gref)
}

fn copy_through(me: u16, gref: GrantRef, source: &Frame) -> Result<(), GrantTestError> {
    let dest = Frame::new()?;
    let mut ops = [GnttabCopy::new(
        CopyEnd::Grant {
            dom: me,
            gref,
            offset: 0,
        },
        CopyEnd::Local {
            gfn: dest.gfn(),
            offset: 0,
        },
        PAGE_SIZE as u16,
    )
    .map_err(GrantTestError::CopyStatus)?];
    grant_copy(&Xen, &mut ops).map_err(GrantTestError::Copy)?;
    ops[0].result().map_err(GrantTestError::CopyStatus)?;
    if dest.bytes() != source.bytes() {
        return Err(GrantTestError::CopiedContentDiffers);
    }
    Ok(())
}

fn map_through(me: u16, gref: GrantRef) -> Result<(), GrantTestError> {
    let host_gfn = with_frames(|f| f.allocate(1)).map_err(GrantTestError::Frames)?;
    let host_addr = host_gfn * PAGE_SIZE as u64;
    let mapped = memory::map_firmware(host_addr, PAGE_SIZE as u64)
        .map_err(GrantTestError::MapPage)
        .and_then(|_| {
            map_grant(&Xen, me, gref, host_addr, false).map_err(GrantTestError::MapGrant)
        });
    let mapping = match mapped {
        Ok(m) => m,
        Err(e) => {
            let _ = with_frames(|f| f.free(host_gfn));
            return Err(e);
        }
    };
    // Xen maps the granted frame at `host_addr`, which our tables map, until the unmap
    // below; volatile, because Xen changed what the address shows. The pointers are safe
    // to compute (`wrapping_add`) and only dereferenced inside the page.
    let byte = |i: usize| (host_addr as *mut u8).wrapping_add(i);
    // SAFETY: `i < PAGE_SIZE`, inside the mapped page (see above).
    let read = |i: usize| unsafe { core::ptr::read_volatile(byte(i)) };
    let last = PAGE_SIZE - 1;
    let checked = if (0..PAGE_SIZE).all(|i| read(i) == pattern(i)) {
        // SAFETY: the page's last byte, inside the mapped page (see above).
        unsafe { core::ptr::write_volatile(byte(last), !pattern(last)) };
        if read(last) == !pattern(last) {
            Ok(())
        } else {
            Err(GrantTestError::WriteThroughMappingLost)
        }
    } else {
        Err(GrantTestError::MappedContentDiffers)
    };
    let unmapped = unmap_grant(&Xen, &mapping).map_err(GrantTestError::UnmapGrant);
    if unmapped.is_ok() {
        // The frame is empty again; reuse it. (After a failed unmap it stays taken.)
        let _ = with_frames(|f| f.free(host_gfn));
    }
    checked.and(unmapped)
}
