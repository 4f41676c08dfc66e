//! The platform seam: what differs between a bare machine (QEMU's `-kernel`, hardware) and
//! Xen, where Keel is the PVH control domain, is decided here once and nowhere else.
//!
//! Detection reads CPUID (Xen's `XenVMMXenVMM` leaves from `0x40000000`) at the first
//! step after entry, because it decides where the console goes: COM1 on a bare machine,
//! Xen's `console_io` under Xen (COM1 then belongs to Xen). Everything else that differs:
//!
//! | | bare | Xen |
//! |---|---|---|
//! | console | COM1 | `console_io` hypercalls |
//! | clock | TSC calibrated against PIT channel 2 | pvclock from shared_info |
//! | idle timer | local APIC, calibrated against the TSC | Xen's one-shot timer (`VIRQ_TIMER`) |
//! | memory map | the loader's | `XENMEM_memory_map` (the PVH start info has none) |
//! | events | none | event channels through an upcall vector |
//! | shared pages | none | grant table v1 |
//!
//! Device drivers, PCI access and DMA are the same on both: under Xen the PCI devices are
//! seen through Xen's vPCI and DMA goes through the IOMMU, both invisible to drivers.

pub mod xen;

use keel_executor::{Handle, Signal};
use keel_memory::Range;
use spin::Once;

/// Where Keel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No hypervisor Keel drives (QEMU, KVM, hardware).
    Bare,
    /// Xen, with Keel as its PVH dom0.
    Xen,
}

static KIND: Once<Kind> = Once::new();

/// Detects the platform on the first call (and installs the Xen hypercall page there);
/// later calls return the same answer.
pub fn detect() -> Kind {
    *KIND.call_once(|| {
        if xen::detect().is_some() {
            Kind::Xen
        } else {
            Kind::Bare
        }
    })
}

pub fn is_xen() -> bool {
    detect() == Kind::Xen
}

/// Powers off (`reboot` false) or reboots through the hypervisor when there is one. Returns
/// when there is none, or when it refused (logged), so the caller falls back to firmware.
pub fn shutdown(reboot: bool) {
    if detect() == Kind::Xen {
        let reason = if reboot {
            keel_xen::sched::ShutdownReason::Reboot
        } else {
            keel_xen::sched::ShutdownReason::Poweroff
        };
        match xen::shutdown(reason) {
            Ok(()) => crate::console::emergency_write(format_args!(
                "keel: Xen returned from {reason:?}\n"
            )),
            Err(e) => crate::console::emergency_write(format_args!(
                "keel: Xen refused {reason:?}: {e:?}\n"
            )),
        }
    }
}

/// RAM from the hypervisor, for a loader that passed no memory map (Xen's PVH dom0
/// builder): calls `push` per range and says whether there was any. Always false on a bare
/// machine, where the loader's map is the only source.
pub fn hypervisor_ram(push: impl FnMut(Range)) -> bool {
    match detect() {
        Kind::Xen => xen::ram_ranges(push),
        Kind::Bare => false,
    }
}

/// The platform's own services, started with the others: under Xen, the event-channel and
/// grant self-tests, whose signal is set once both passed. Nothing on a bare machine.
pub fn start(handle: &Handle) -> Option<Signal> {
    match detect() {
        Kind::Xen => Some(xen::selftest::start(handle)),
        Kind::Bare => None,
    }
}

/// The figures the management API reports about the host (Xen version and capabilities,
/// CPUs, memory, uptime); `None` on a bare machine or when Xen refused a query (logged).
pub fn host_facts() -> Option<xen::HostFacts> {
    match detect() {
        Kind::Xen => xen::host_facts(),
        Kind::Bare => None,
    }
}
