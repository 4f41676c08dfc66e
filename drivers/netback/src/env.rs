//! What netback is handed to do its work (principle 3: a service is given what it uses):
//! the hypervisor for grant copies, grant maps and event channels (through `keel-xen`), a
//! small xenstore interface, dom0 frames to map the rings into, the dom0 pages grant copies
//! land in, and the switch port frames leave through.

use alloc::string::String;
use alloc::vec::Vec;

use keel_xen::grant_table::GrantRef;
use keel_xen::ring::SharedRing;

use crate::wire::{RxSlot, TxRspSlot, TxSlot};

/// A xenstore operation failed (the daemon's reason does not matter to netback: the
/// handshake fails either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreError;

/// The xenstore operations netback issues as dom0 (privileged, no transactions needed:
/// each node it reads is written once by the frontend before it changes state).
pub trait NetStore {
    /// The node's value, or `None` if it does not exist.
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Creates or replaces the node (and missing parents).
    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), StoreError>;
}

/// Reads a node as trimmed UTF-8.
pub(crate) fn read_str<S: NetStore + ?Sized>(
    store: &mut S,
    path: &str,
) -> Result<Option<String>, StoreError> {
    Ok(store.read(path)?.and_then(|v| {
        core::str::from_utf8(&v)
            .ok()
            .map(|s| String::from(s.trim_end_matches('\0').trim()))
    }))
}

/// Dom0 frames with no RAM behind them, to map a frontend's ring pages into (the
/// toolstack's `MapFrames` does the same for console and store pages), and the typed view
/// of a frame once Xen has mapped the grant there.
///
/// The kernel's views are `'static` because the frame stays mapped until netback unmaps
/// it, after dropping the view. `domid` and `gref` name what was mapped, for fakes that
/// keep the frontend's page themselves; the kernel only needs `gfn`.
pub trait RingFrames {
    fn allocate(&mut self) -> Option<u64>;
    fn free(&mut self, gfn: u64);
    fn tx_ring(
        &mut self,
        gfn: u64,
        domid: u16,
        gref: GrantRef,
    ) -> Option<SharedRing<'static, TxSlot, TxRspSlot>>;
    fn rx_ring(
        &mut self,
        gfn: u64,
        domid: u16,
        gref: GrantRef,
    ) -> Option<SharedRing<'static, RxSlot, RxSlot>>;
}

/// Pages of dom0 RAM that grant copies read and write (the frontend's data never lands
/// anywhere else in dom0). Page `i` covers bytes `i * 4096 ..` of one packet, so
/// [`BUFFER_PAGES`] pages hold the largest packet. Netback polls one VIF at a time, so
/// every VIF may share one buffer.
pub trait CopyBuffer {
    /// Frame number of page `page` (`page < BUFFER_PAGES`).
    fn gfn(&self, page: usize) -> u64;
    fn read(&self, page: usize, offset: usize, out: &mut [u8]);
    fn write(&mut self, page: usize, offset: usize, data: &[u8]);
}

/// Pages a [`CopyBuffer`] must have: 16 × 4 KiB holds a 65535-byte packet.
pub const BUFFER_PAGES: usize = 16;

/// The switch refused a frame (its queue for this port is full).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Where frames from the guest go: the virtual switch's port for this VIF. Frames are plain
/// Ethernet frames (no FCS), checksums filled, at most one MTU each.
pub trait FramePort {
    fn deliver(&mut self, frame: &[u8]) -> Result<(), Full>;
}

/// Everything netback's handshake and data path use, borrowed for one call.
pub struct Env<'a, H: ?Sized, S: ?Sized, R: ?Sized, B: ?Sized> {
    pub hv: &'a H,
    pub store: &'a mut S,
    pub rings: &'a mut R,
    pub buffer: &'a mut B,
}
