//! The hypercall instruction: a call into the hypercall page Xen fills for us.
//!
//! Writing the page's physical address to the MSR that CPUID leaf `base+2` names makes Xen
//! write one 32-byte stub per hypercall into it (`mov $op, %eax; vmcall/vmmcall; ret`),
//! with the instruction that suits this CPU, so Keel needs no vendor check. The page is a
//! page-aligned static of the image: RAM Keel owns from the first instruction, mapped
//! executable by both the boot and the final page tables, and available before the frame
//! allocator exists (the console uses hypercalls from the start).

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

use keel_xen::cpuid::{hypercall_page_msr_value, XenCpuid};
use keel_xen::hypercall::PAGE_SIZE;
use keel_xen::{Hypervisor, XenError};
use x86_64::registers::model_specific::Msr;

/// Size of one stub in the page.
const STUB_SIZE: u64 = 32;
/// Stubs in one page.
const STUBS: u32 = (PAGE_SIZE as u64 / STUB_SIZE) as u32;

#[repr(C, align(4096))]
struct HypercallPage([u8; PAGE_SIZE]);

/// Filled by Xen; never written by Keel.
static mut HYPERCALL_PAGE: HypercallPage = HypercallPage([0; PAGE_SIZE]);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Why the page could not be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallError {
    /// The static is not page aligned (a linker-script mistake).
    Misaligned(u64),
    /// Xen left the page empty after the MSR write.
    NotFilled,
}

/// Asks Xen to fill the hypercall page. Identity mapping: the static's address is its
/// physical address.
pub fn install(cpuid: &XenCpuid) -> Result<(), InstallError> {
    let page = (&raw const HYPERCALL_PAGE) as u64;
    let value = hypercall_page_msr_value(page, 0).ok_or(InstallError::Misaligned(page))?;
    // SAFETY: Xen's hypercall MSR, with the address of a page only Xen writes.
    unsafe { Msr::new(cpuid.hypercall_msr).write(value) };
    // SAFETY: reading our own static; Xen wrote it synchronously during the MSR write.
    let first = unsafe { core::ptr::read_volatile(page as *const u8) };
    if first == 0 {
        return Err(InstallError::NotFilled);
    }
    INSTALLED.store(true, Ordering::Release);
    Ok(())
}

/// The hypervisor Keel runs on: hypercalls through the installed page.
#[derive(Debug, Clone, Copy, Default)]
pub struct Xen;

impl Hypervisor for Xen {
    unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
        if op >= STUBS || !INSTALLED.load(Ordering::Acquire) {
            return XenError::ENOSYS.as_ret();
        }
        let stub = (&raw const HYPERCALL_PAGE) as u64 + u64::from(op) * STUB_SIZE;
        let ret: i64;
        // SAFETY: `stub` is Xen's stub for `op`; the caller vouches for the arguments.
        // Xen preserves every register but rax; the C-ABI clobber list is conservative.
        unsafe {
            asm!(
                "call {stub}",
                stub = in(reg) stub,
                in("rdi") args[0],
                in("rsi") args[1],
                in("rdx") args[2],
                in("r10") args[3],
                in("r8") args[4],
                lateout("rax") ret,
                clobber_abi("C"),
            );
        }
        ret
    }
}
