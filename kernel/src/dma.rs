//! DMA for device drivers: `virtio-drivers`' `Hal` over Keel's frame allocator.
//!
//! Memory is identity-mapped, so a buffer's address is its physical (and, under Xen with the
//! IOMMU set up for dom0, its bus) address: sharing a buffer with a device needs no copy.

use core::ptr::NonNull;

use keel_virtio::{BufferDirection, Hal, PhysAddr};

use crate::memory;

pub struct KeelHal;

// SAFETY: allocations are contiguous, zeroed, identity-mapped and owned by the caller until
// `dma_dealloc`; MMIO is mapped uncached before use.
unsafe impl Hal for KeelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // `virtio-drivers` has no failure path here; drivers allocate their queues once at
        // start-up, so running out means the machine is far too small to run Keel.
        let Some(phys) = memory::allocate_frames(pages as u64) else {
            panic!("out of memory for {pages} DMA pages");
        };
        match NonNull::new(phys as *mut u8) {
            Some(ptr) => (phys, ptr),
            None => panic!("frame allocator returned address 0"),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        memory::free_frames(paddr, pages as u64);
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        match memory::map_mmio(paddr, size as u64) {
            Ok(ptr) => ptr,
            Err(e) => panic!("cannot map device registers at {paddr:#x}: {e}"),
        }
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr().cast::<u8>() as usize as u64
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
