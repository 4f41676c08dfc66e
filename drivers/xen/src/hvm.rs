//! `hvm_op` hypercall (`xen/include/public/hvm/hvm_op.h`, `hvm/params.h`): HVM parameters
//! (event-channel callback, xenstore and console rings) and per-vCPU upcall vectors.

use crate::error::XenError;
use crate::hypercall::{call_with, HypercallOp, Hypervisor, DOMID_SELF};

const HVMOP_SET_PARAM: u64 = 0;
const HVMOP_GET_PARAM: u64 = 1;
const HVMOP_SET_EVTCHN_UPCALL_VECTOR: u64 = 23;

/// `HVM_PARAM_*` indices Keel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum HvmParam {
    /// How vCPU 0's event-channel upcall is delivered, see [`CallbackVia`].
    CallbackIrq = 0,
    /// Guest frame of the xenstore ring page.
    StorePfn = 1,
    /// Event channel of the xenstore ring.
    StoreEvtchn = 2,
    /// `HVM_PARAM_TIMER_MODE`: 1 = no_delay_for_missed_ticks (libxl's default).
    TimerMode = 10,
    /// Byte address of the identity-map page table VMX needs to run a guest in
    /// protected mode without paging (where PVH starts) without unrestricted guest.
    IdentPt = 12,
    /// Guest frame of the PV console ring page.
    ConsolePfn = 17,
    /// Event channel of the PV console ring.
    ConsoleEvtchn = 18,
    /// `HVM_PARAM_ALTP2M`: 0 = disabled.
    Altp2m = 35,
}

/// `struct xen_hvm_param` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XenHvmParam {
    pub domid: u16,
    pub pad: u16,
    pub index: u32,
    pub value: u64,
}

/// `HVMOP_set_param` on domain `domid` (`DOMID_SELF` for ourselves).
pub fn set_param<H: Hypervisor + ?Sized>(
    hv: &H,
    domid: u16,
    param: HvmParam,
    value: u64,
) -> Result<(), XenError> {
    let mut arg = XenHvmParam {
        domid,
        pad: 0,
        index: param as u32,
        value,
    };
    call_with(hv, HypercallOp::HvmOp, HVMOP_SET_PARAM, &mut arg).map(drop)
}

/// `HVMOP_get_param` on domain `domid`.
pub fn get_param<H: Hypervisor + ?Sized>(
    hv: &H,
    domid: u16,
    param: HvmParam,
) -> Result<u64, XenError> {
    let mut arg = XenHvmParam {
        domid,
        pad: 0,
        index: param as u32,
        value: 0,
    };
    call_with(hv, HypercallOp::HvmOp, HVMOP_GET_PARAM, &mut arg)?;
    Ok(arg.value)
}

/// Delivery method for `HVM_PARAM_CALLBACK_IRQ` (type in bits 63:56 of the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackVia {
    /// Notifications disabled (value 0).
    Disabled,
    /// `HVM_PARAM_CALLBACK_TYPE_GSI`: a GSI, never 0.
    Gsi(u32),
    /// `HVM_PARAM_CALLBACK_TYPE_PCI_INTX`.
    PciIntx {
        domain: u16,
        bus: u8,
        devfn: u8,
        intx: u8,
    },
    /// `HVM_PARAM_CALLBACK_TYPE_VECTOR`: a direct IDT vector (needs
    /// `XENFEAT_hvm_callback_vector`); what a PVH dom0 uses.
    Vector(u8),
}

/// A callback setting Xen cannot represent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackViaError {
    /// GSI 0 aliases "disabled".
    GsiZero,
    /// Vectors below 0x10 are reserved exceptions; Xen's callback type would be unusable.
    ReservedVector(u8),
    /// INTx pin above D (3).
    BadIntxPin(u8),
    /// The type byte is not one Xen defines for x86.
    UnknownType(u8),
}

impl CallbackVia {
    const TYPE_SHIFT: u32 = 56;

    /// The `HVM_PARAM_CALLBACK_IRQ` value.
    pub fn encode(self) -> Result<u64, CallbackViaError> {
        Ok(match self {
            CallbackVia::Disabled => 0,
            CallbackVia::Gsi(0) => return Err(CallbackViaError::GsiZero),
            CallbackVia::Gsi(gsi) => u64::from(gsi),
            CallbackVia::PciIntx { intx, .. } if intx > 3 => {
                return Err(CallbackViaError::BadIntxPin(intx))
            }
            CallbackVia::PciIntx {
                domain,
                bus,
                devfn,
                intx,
            } => {
                (1 << Self::TYPE_SHIFT)
                    | (u64::from(domain) << 32)
                    | (u64::from(bus) << 16)
                    | (u64::from(devfn) << 8)
                    | u64::from(intx)
            }
            CallbackVia::Vector(v) if v < 0x10 => return Err(CallbackViaError::ReservedVector(v)),
            CallbackVia::Vector(v) => (2 << Self::TYPE_SHIFT) | u64::from(v),
        })
    }

    /// Decodes a value read back with `HVMOP_get_param`.
    pub fn decode(value: u64) -> Result<Self, CallbackViaError> {
        if value == 0 {
            return Ok(CallbackVia::Disabled);
        }
        match (value >> Self::TYPE_SHIFT) as u8 {
            0 => Ok(CallbackVia::Gsi((value & 0x00ff_ffff_ffff_ffff) as u32)),
            1 => Ok(CallbackVia::PciIntx {
                domain: (value >> 32) as u16,
                bus: (value >> 16) as u8,
                devfn: (value >> 8) as u8,
                intx: (value & 3) as u8,
            }),
            2 => Ok(CallbackVia::Vector(value as u8)),
            other => Err(CallbackViaError::UnknownType(other)),
        }
    }
}

/// Error setting the callback: either the value was unrepresentable or Xen refused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetCallbackError {
    Invalid(CallbackViaError),
    Xen(XenError),
}

/// Sets our own `HVM_PARAM_CALLBACK_IRQ`.
pub fn set_callback_via<H: Hypervisor + ?Sized>(
    hv: &H,
    via: CallbackVia,
) -> Result<(), SetCallbackError> {
    let value = via.encode().map_err(SetCallbackError::Invalid)?;
    set_param(hv, DOMID_SELF, HvmParam::CallbackIrq, value).map_err(SetCallbackError::Xen)
}

/// `struct xen_hvm_evtchn_upcall_vector` (8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XenHvmEvtchnUpcallVector {
    pub vcpu: u32,
    pub vector: u8,
}

/// `HVMOP_set_evtchn_upcall_vector`: per-vCPU upcall vector, preferred over the global
/// callback when `XEN_HVM_CPUID_UPCALL_VECTOR` is set. Unlike the global callback vector,
/// this one is delivered through the local APIC and must be EOI'd.
pub fn set_evtchn_upcall_vector<H: Hypervisor + ?Sized>(
    hv: &H,
    vcpu: u32,
    vector: u8,
) -> Result<(), XenError> {
    let mut arg = XenHvmEvtchnUpcallVector { vcpu, vector };
    call_with(
        hv,
        HypercallOp::HvmOp,
        HVMOP_SET_EVTCHN_UPCALL_VECTOR,
        &mut arg,
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeXen;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_xen_417() {
        assert_eq!(size_of::<XenHvmParam>(), 16);
        assert_eq!(offset_of!(XenHvmParam, index), 4);
        assert_eq!(offset_of!(XenHvmParam, value), 8);
        assert_eq!(size_of::<XenHvmEvtchnUpcallVector>(), 8);
    }

    #[test]
    fn vector_callback_uses_type_2() {
        assert_eq!(
            CallbackVia::Vector(0xf3).encode(),
            Ok(0x0200_0000_0000_00f3)
        );
        assert_eq!(
            CallbackVia::decode(0x0200_0000_0000_00f3),
            Ok(CallbackVia::Vector(0xf3))
        );
    }

    #[test]
    fn callback_values_round_trip() {
        for via in [
            CallbackVia::Disabled,
            CallbackVia::Gsi(28),
            CallbackVia::PciIntx {
                domain: 1,
                bus: 2,
                devfn: 0x18,
                intx: 3,
            },
            CallbackVia::Vector(0x20),
        ] {
            assert_eq!(CallbackVia::decode(via.encode().unwrap()), Ok(via));
        }
    }

    #[test]
    fn unrepresentable_callbacks_are_rejected() {
        assert_eq!(CallbackVia::Gsi(0).encode(), Err(CallbackViaError::GsiZero));
        assert_eq!(
            CallbackVia::Vector(3).encode(),
            Err(CallbackViaError::ReservedVector(3))
        );
        assert_eq!(
            CallbackVia::PciIntx {
                domain: 0,
                bus: 0,
                devfn: 0,
                intx: 4
            }
            .encode(),
            Err(CallbackViaError::BadIntxPin(4))
        );
        assert_eq!(
            CallbackVia::decode(7 << 56 | 1),
            Err(CallbackViaError::UnknownType(7))
        );
    }

    #[test]
    fn params_are_set_and_read_back() {
        let xen = FakeXen::new();
        set_callback_via(&xen, CallbackVia::Vector(0xf3)).unwrap();
        assert_eq!(
            get_param(&xen, DOMID_SELF, HvmParam::CallbackIrq),
            Ok(0x0200_0000_0000_00f3)
        );
        set_param(&xen, 3, HvmParam::StorePfn, 0xfeffc).unwrap();
        assert_eq!(get_param(&xen, 3, HvmParam::StorePfn), Ok(0xfeffc));
        assert_eq!(get_param(&xen, 3, HvmParam::ConsoleEvtchn), Ok(0));
        set_evtchn_upcall_vector(&xen, 1, 0xf3).unwrap();
        assert_eq!(xen.upcall_vectors(), [(1, 0xf3)]);
    }

    #[test]
    fn invalid_callback_never_reaches_xen() {
        let xen = FakeXen::new();
        assert_eq!(
            set_callback_via(&xen, CallbackVia::Gsi(0)),
            Err(SetCallbackError::Invalid(CallbackViaError::GsiZero))
        );
        assert_eq!(xen.hypercall_count(), 0);
    }
}
