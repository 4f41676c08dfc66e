//! The hypercall boundary: hypercall numbers and the [`Hypervisor`] trait.
//!
//! The kernel implements [`Hypervisor`] with the actual instruction (`vmcall` on Intel,
//! `vmmcall` on AMD, or a call into the hypercall page); host tests implement it with a fake.
//! On x86_64 the hypercall number goes in `rax`, the arguments in `rdi, rsi, rdx, r10, r8`,
//! and the result comes back in `rax` (`xen/include/public/arch-x86/xen-x86_64.h`).
//!
//! For an HVM/PVH guest, argument pointers are guest *virtual* addresses: Xen walks the
//! guest's page tables, so passing the address of a Rust value is correct.

use crate::error::XenError;

/// Hypercall numbers (`__HYPERVISOR_*` in `xen/include/public/xen.h`) that Keel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum HypercallOp {
    MemoryOp = 12,
    XenVersion = 17,
    ConsoleIo = 18,
    GrantTableOp = 20,
    VcpuOp = 24,
    SchedOp = 29,
    EventChannelOp = 32,
    PhysdevOp = 33,
    HvmOp = 34,
    Sysctl = 35,
    Domctl = 36,
}

/// The hypercall instruction, supplied by the kernel (or a fake in tests).
pub trait Hypervisor {
    /// Issues hypercall `op` with up to five register arguments and returns `rax`.
    ///
    /// # Safety
    /// Arguments that are addresses must point to memory that is valid for reads and
    /// writes of the structure the `op`/sub-command implies, for the duration of the call.
    /// The typed wrappers in this crate uphold this; callers of the raw form must too.
    unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64;
}

impl<H: Hypervisor + ?Sized> Hypervisor for &H {
    unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
        // SAFETY: forwarded unchanged; the caller upholds the contract.
        unsafe { (**self).hypercall(op, args) }
    }
}

/// Issues `op(cmd, &mut arg)`, the shape of almost every Xen hypercall.
pub(crate) fn call_with<H: Hypervisor + ?Sized, T>(
    hv: &H,
    op: HypercallOp,
    cmd: u64,
    arg: &mut T,
) -> Result<u64, XenError> {
    let ptr = arg as *mut T as u64;
    // SAFETY: `arg` is a live, exclusively borrowed `T`, which is the structure the typed
    // wrappers pair with `cmd`.
    let ret = unsafe { hv.hypercall(op as u32, [cmd, ptr, 0, 0, 0]) };
    XenError::check(ret)
}

/// Issues `op(cmd, NULL)` for sub-commands that take no argument structure.
pub(crate) fn call_no_arg<H: Hypervisor + ?Sized>(
    hv: &H,
    op: HypercallOp,
    cmd: u64,
) -> Result<u64, XenError> {
    // SAFETY: no pointer is passed.
    let ret = unsafe { hv.hypercall(op as u32, [cmd, 0, 0, 0, 0]) };
    XenError::check(ret)
}

/// `DOMID_SELF`: "the calling domain" in domain-id arguments (`xen.h`).
pub const DOMID_SELF: u16 = 0x7FF0;
/// Domain ids at or above this are reserved for special meanings (`xen.h`).
pub const DOMID_FIRST_RESERVED: u16 = 0x7FF0;
/// `DOMID_INVALID` (`xen.h`).
pub const DOMID_INVALID: u16 = 0x7FF4;

/// Size of a Xen page on x86.
pub const PAGE_SIZE: usize = 4096;

/// Issues `op(&mut arg)` for hypercalls whose only argument is a structure (sysctl, domctl).
pub(crate) fn call_single<H: Hypervisor + ?Sized, T>(
    hv: &H,
    op: HypercallOp,
    arg: &mut T,
) -> Result<u64, XenError> {
    let ptr = arg as *mut T as u64;
    // SAFETY: `arg` is a live, exclusively borrowed `T`, the structure `op` takes.
    let ret = unsafe { hv.hypercall(op as u32, [ptr, 0, 0, 0, 0]) };
    XenError::check(ret)
}
