//! virtio-blk as a [`BlockDevice`], over `virtio-drivers`' non-blocking request API.
//!
//! Each read or write is queued with `read_blocks_nb`/`write_blocks_nb`; the virtqueue token
//! names the request until the device puts it in the used ring, and the request's buffer,
//! header and status byte live in its slot (heap memory that does not move) until then.
//! Several requests are in flight at once and complete in whatever order the device finishes
//! them.
//!
//! `virtio-drivers` offers flush only as a blocking call that must have the queue to itself,
//! so a flush waits until everything in flight has completed, runs, and completes; reads and
//! writes submitted while a flush waits are refused with `Busy` so the flush cannot starve.
//! The crate does not implement discard. Its virtqueue has 16 entries; with indirect
//! descriptors (QEMU offers them) each request takes one, so up to 16 are outstanding.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;

use crate::Transport;
use keel_block::{
    validate, BlockDevice, BlockError, Completion, DeviceInfo, Rejected, Request, RequestId,
    RequestKind,
};
use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::Hal;

/// Requests outstanding at once: the crate's virtqueue size.
const QUEUE_DEPTH: u16 = 16;
/// Largest single transfer: 1 MiB (one descriptor each for header, data and status).
const MAX_TRANSFER_SECTORS: u32 = 2048;

/// A request the device holds; its pieces must stay put until the device is done.
struct InFlight {
    id: RequestId,
    request: Request,
    header: Box<BlkReq>,
    status: Box<BlkResp>,
}

/// A virtio-blk disk.
pub struct VirtioBlk<H: Hal> {
    device: VirtIOBlk<H, Transport>,
    info: DeviceInfo,
    /// Keyed by virtqueue token.
    in_flight: BTreeMap<u16, InFlight>,
    ready: VecDeque<Completion>,
    /// Flushes waiting for the queue to drain, oldest first.
    flushes: VecDeque<RequestId>,
    next_id: u64,
}

impl<H: Hal> VirtioBlk<H> {
    /// Starts the device. Its identity is `virtio-<serial>` if the device reports a serial,
    /// else `fallback_identity` (the kernel passes something stable such as the PCI address).
    pub fn new(
        transport: Transport,
        fallback_identity: &str,
    ) -> Result<Self, virtio_drivers::Error> {
        let mut device = VirtIOBlk::<H, _>::new(transport)?;
        let mut serial = [0u8; 20];
        // Devices without a serial may refuse GET_ID; that only changes the name.
        let serial_len = device.device_id(&mut serial).unwrap_or(0);
        let identity = identity_from_serial(serial.get(..serial_len).unwrap_or_default())
            .unwrap_or_else(|| String::from(fallback_identity));
        let info = DeviceInfo {
            sector_size: SECTOR_SIZE as u32,
            capacity_sectors: device.capacity(),
            queue_depth: QUEUE_DEPTH.min(device.virt_queue_size()),
            max_transfer_sectors: MAX_TRANSFER_SECTORS,
            read_only: device.readonly(),
            supports_discard: false,
            // QEMU's default cache mode is write-back; treat the cache as volatile unless
            // proven otherwise, so callers flush.
            volatile_write_cache: true,
            identity,
        };
        Ok(VirtioBlk {
            device,
            info,
            in_flight: BTreeMap::new(),
            ready: VecDeque::new(),
            flushes: VecDeque::new(),
            next_id: 0,
        })
    }

    fn next_request_id(&mut self) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        id
    }

    /// Runs the waiting flushes once nothing else is in flight.
    fn run_flushes(&mut self) {
        if !self.in_flight.is_empty() {
            return;
        }
        while let Some(id) = self.flushes.pop_front() {
            let result = self
                .device
                .flush()
                .map_err(|e| device_error(e, RequestKind::Flush, 0));
            self.ready.push_back(Completion {
                id,
                kind: RequestKind::Flush,
                result,
                buffer: None,
            });
        }
    }

    fn reap(&mut self) {
        while let Some(token) = self.device.peek_used() {
            let Some(mut slot) = self.in_flight.remove(&token) else {
                // A token we do not know cannot be completed safely; leave it and stop.
                return;
            };
            let (lba, result) = match &mut slot.request {
                Request::Read { lba, buffer } => {
                    // SAFETY: the same header, buffer and status that `read_blocks_nb` was
                    // given for this token; none was touched meanwhile.
                    let done = unsafe {
                        self.device.complete_read_blocks(
                            token,
                            &slot.header,
                            buffer,
                            &mut slot.status,
                        )
                    };
                    (*lba, done)
                }
                Request::Write { lba, buffer } => {
                    // SAFETY: as above, for `write_blocks_nb`.
                    let done = unsafe {
                        self.device.complete_write_blocks(
                            token,
                            &slot.header,
                            buffer,
                            &mut slot.status,
                        )
                    };
                    (*lba, done)
                }
                // Only reads and writes go through the queue.
                Request::Flush | Request::Discard { .. } => (0, Ok(())),
            };
            let kind = slot.request.kind();
            let result = result.map_err(|e| device_error(e, kind, lba));
            self.ready.push_back(Completion {
                id: slot.id,
                kind,
                result,
                buffer: slot.request.into_buffer(),
            });
        }
    }
}

/// `virtio-<serial>` with the serial reduced to characters a kernel command line carries.
fn identity_from_serial(serial: &[u8]) -> Option<String> {
    let text: String = serial
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' {
                b as char
            } else {
                '_'
            }
        })
        .collect();
    (!text.is_empty()).then(|| alloc::format!("virtio-{text}"))
}

/// A device status or transport failure as a block error.
fn device_error(error: virtio_drivers::Error, kind: RequestKind, lba: u64) -> BlockError {
    match error {
        virtio_drivers::Error::Unsupported => BlockError::Unsupported(kind),
        virtio_drivers::Error::QueueFull => BlockError::Busy,
        _ => BlockError::Io {
            first_failed_lba: lba,
        },
    }
}

impl<H: Hal> BlockDevice for VirtioBlk<H> {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn submit(&mut self, mut request: Request) -> Result<RequestId, Rejected> {
        if let Err(error) = validate(&self.info, &request) {
            return Err(Rejected { error, request });
        }
        let busy = |request| {
            Err(Rejected {
                error: BlockError::Busy,
                request,
            })
        };
        match request {
            Request::Flush => {
                let id = self.next_request_id();
                self.flushes.push_back(id);
                self.run_flushes();
                return Ok(id);
            }
            Request::Discard { .. } => {
                return Err(Rejected {
                    error: BlockError::Unsupported(RequestKind::Discard),
                    request,
                })
            }
            _ if !self.flushes.is_empty() => return busy(request),
            _ if self.in_flight.len() >= usize::from(self.info.queue_depth) => {
                return busy(request)
            }
            _ => {}
        }
        let mut header = Box::new(BlkReq::default());
        let mut status = Box::new(BlkResp::default());
        let queued = match &mut request {
            Request::Read { lba, buffer } => {
                // SAFETY: header, buffer and status stay in the slot, unmoved and untouched,
                // until the device returns the token (`reap`).
                unsafe {
                    self.device
                        .read_blocks_nb(*lba as usize, &mut header, buffer, &mut status)
                }
            }
            Request::Write { lba, buffer } => {
                // SAFETY: as above.
                unsafe {
                    self.device
                        .write_blocks_nb(*lba as usize, &mut header, buffer, &mut status)
                }
            }
            Request::Flush | Request::Discard { .. } => return busy(request),
        };
        let token = match queued {
            Ok(token) => token,
            Err(virtio_drivers::Error::QueueFull) => return busy(request),
            Err(e) => {
                let lba = match &request {
                    Request::Read { lba, .. } | Request::Write { lba, .. } => *lba,
                    _ => 0,
                };
                let kind = request.kind();
                return Err(Rejected {
                    error: device_error(e, kind, lba),
                    request,
                });
            }
        };
        let id = self.next_request_id();
        self.in_flight.insert(
            token,
            InFlight {
                id,
                request,
                header,
                status,
            },
        );
        Ok(id)
    }

    fn poll_completion(&mut self) -> Option<Completion> {
        if self.ready.is_empty() {
            self.reap();
            self.run_flushes();
        }
        self.ready.pop_front()
    }

    fn in_flight(&self) -> usize {
        self.in_flight.len() + self.flushes.len() + self.ready.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_comes_from_the_serial_made_command_line_safe() {
        assert_eq!(
            identity_from_serial(b"disk 7/a\0\0junk").as_deref(),
            Some("virtio-disk_7_a")
        );
        assert_eq!(identity_from_serial(b""), None);
        assert_eq!(identity_from_serial(b"\0abc"), None);
    }

    #[test]
    fn device_errors_keep_their_kind() {
        assert_eq!(
            device_error(virtio_drivers::Error::Unsupported, RequestKind::Flush, 0),
            BlockError::Unsupported(RequestKind::Flush)
        );
        assert_eq!(
            device_error(virtio_drivers::Error::IoError, RequestKind::Read, 9),
            BlockError::Io {
                first_failed_lba: 9
            }
        );
    }
}
