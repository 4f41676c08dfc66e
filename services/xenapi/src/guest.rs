//! The guest seam: what the XenAPI needs from the toolstack that builds and runs domains, as
//! a trait the service owning the domain builder, xenstored and the consoles implements (so
//! this crate stays independent of hypercalls), and what that service reports back.
//!
//! # Division of labour
//! The XenAPI owns the model and its rules: power states, `allowed_operations`, error codes,
//! events, tasks, what `actions_after_*` mean. The toolstack owns domains: it builds one from
//! a [`BootSpec`], asks a guest to shut down through `control/shutdown`, pauses, destroys,
//! balloons. Domains are named by their domid; VMs never cross the seam.
//!
//! # The calls, and the reports that answer them
//! Every [`GuestBackend`] method returns promptly (bounded work, no waiting on the guest).
//! What happens later in the guest comes back through the [`crate::XenApi`] entry points,
//! which the service calls from its event loop:
//!
//! | the toolstack sees | it calls |
//! |---|---|
//! | the guest cleared `control/shutdown` (it acknowledged a request) | [`crate::XenApi::shutdown_acknowledged`] |
//! | `VIRQ_DOM_EXC` and the domain is shut down (`XEN_DOMINF_shutdown`, with its reason) or gone | [`crate::XenApi::domain_exited`] |
//!
//! `domain_exited` applies the VM's `actions_after_shutdown`, `actions_after_reboot`,
//! `actions_after_crash` or `actions_after_softreboot`, calling back into the backend
//! ([`GuestBackend::destroy`], then [`GuestBackend::start`] for a restart), unless a client's
//! `clean_shutdown` / `clean_reboot` is waiting for exactly this exit. The toolstack must not
//! destroy a shut-down domain itself: the VM's actions decide (`preserve` keeps it).
//!
//! # Boot images, a piece per step
//! `VM.PV_kernel` and `VM.PV_ramdisk` name VDIs (`vdi:<VDI uuid>`, see docs/guests.md). A
//! start is prepared, fed and finished: [`GuestBackend::prepare_start`] with the kernel's
//! first [`KERNEL_HEAD_BYTES`] (the backend refuses what is not a kernel, then creates the
//! domain paused), [`GuestBackend::load_image`] with the rest of the kernel and then the
//! ramdisk, in file order, a bounded piece per XenAPI job step (the backend loads each
//! piece into the guest as it arrives, decompressing on the way), and
//! [`GuestBackend::start`]. So the toolstack never needs the storage manager, no whole
//! image is ever in the control domain's memory, and no step holds the host for longer than
//! its piece takes.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::error::ApiError;

/// A Xen domain id.
pub type DomId = u32;

/// Everything needed to build and boot one PVH guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootSpec {
    /// The VM's UUID (for `/vm/<uuid>` in xenstore and the domain handle).
    pub vm_uuid: String,
    /// The VM's `name_label` (for xenstore's `name`).
    pub name: String,
    /// Most memory the domain may ever have (`memory_static_max`), bytes.
    pub max_memory_bytes: u64,
    /// Memory to populate at boot and the balloon target (`memory_dynamic_max`), bytes.
    pub target_memory_bytes: u64,
    /// vCPUs the domain is created with (`VCPUs_max`).
    pub max_vcpus: u32,
    /// vCPUs online at boot (`VCPUs_at_startup`); the rest are offline (`cpu/<n>/availability`).
    pub vcpus_at_startup: u32,
    /// Size in bytes of the kernel image (a PVH ELF, or a bzImage whose payload is one);
    /// its bytes arrive through [`GuestBackend::prepare_start`] and
    /// [`GuestBackend::load_image`].
    pub kernel_size: u64,
    /// Size in bytes of the initial ramdisk (module 0), if any; its bytes arrive after the
    /// kernel's.
    pub ramdisk_size: Option<u64>,
    /// The kernel command line (`PV_args`).
    pub cmdline: String,
    /// Leave the domain paused after building it (`VM.start(start_paused=true)`).
    pub paused: bool,
    /// `VM.platform` entries, for the builder's options.
    pub platform: Vec<(String, String)>,
    /// `VM.xenstore_data` entries, written under `/local/domain/<domid>/` (keys relative,
    /// e.g. `vm-data/role`).
    pub xenstore_data: Vec<(String, String)>,
    /// The VM's VBDs, attached before the domain is unpaused (in `userdevice` order).
    pub disks: Vec<DiskSpec>,
}

/// One virtual block device of a guest (a VBD), as the toolstack attaches it: the xenstore
/// nodes of a `vbd` device and a disk backend serving the VDI (docs/guests.md, "Disks").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// Xen's virtual-device number: `202 << 8 | index << 4` for `xvd<a + index>`.
    pub devid: u32,
    /// The guest's device name (`xvda`, ..., `xvdp`).
    pub device: String,
    /// The served VDI, by the storage manager's names; `None` for an empty CD drive.
    pub vdi: Option<DiskVdi>,
    /// Attach read-only (`mode = RO`): the backend refuses writes.
    pub read_only: bool,
    /// A CD drive (`type = CD`): removable media, `device-type = cdrom`.
    pub cdrom: bool,
    /// The VBD's `bootable` flag (written to the backend's `bootable` for bootloaders).
    pub bootable: bool,
}

/// A VDI as the disk backend finds it in the storage manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskVdi {
    pub sr_uuid: String,
    pub vdi_uuid: String,
}

/// The first `devid` of Xen's `xvd` major (202).
pub const XVD_DEVID_BASE: u32 = 202 << 8;
/// Most `xvd` devices a guest gets (`xvda` to `xvdp`: the minor numbers of major 202 with
/// 16 partitions each).
pub const MAX_DISKS: u32 = 16;

impl DiskSpec {
    /// The devid and name of disk `index` (0 = `xvda`); `None` past [`MAX_DISKS`].
    pub fn name_for(index: u32) -> Option<(u32, String)> {
        if index >= MAX_DISKS {
            return None;
        }
        let letter = char::from(b'a' + index as u8);
        Some((XVD_DEVID_BASE | index << 4, alloc::format!("xvd{letter}")))
    }
}

/// What a guest is asked to do through `control/shutdown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownRequest {
    /// `poweroff`
    PowerOff,
    /// `reboot`
    Reboot,
}

impl ShutdownRequest {
    /// The value written to `control/shutdown`.
    pub fn control_value(self) -> &'static str {
        match self {
            ShutdownRequest::PowerOff => "poweroff",
            ShutdownRequest::Reboot => "reboot",
        }
    }
}

/// Why a domain stopped running: Xen's `SHUTDOWN_*` reason, or that it is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// `SHUTDOWN_poweroff` (0): the guest halted or powered off.
    PowerOff,
    /// `SHUTDOWN_reboot` (1).
    Reboot,
    /// `SHUTDOWN_suspend` (2). Keel does not suspend VMs; an unrequested suspend is handled
    /// as a power-off.
    Suspend,
    /// `SHUTDOWN_crash` (3).
    Crash,
    /// `SHUTDOWN_watchdog` (4): handled as a crash.
    Watchdog,
    /// `SHUTDOWN_soft_reset` (5).
    SoftReset,
    /// The domain no longer exists (destroyed by someone else, or died before it shut down).
    Vanished,
}

impl ExitReason {
    /// The reason for Xen's shutdown code (`XEN_DOMINF_shutdown_shift` bits of
    /// `getdomaininfo`'s flags); unknown codes are crashes.
    pub fn from_code(code: u32) -> ExitReason {
        match code {
            0 => ExitReason::PowerOff,
            1 => ExitReason::Reboot,
            2 => ExitReason::Suspend,
            4 => ExitReason::Watchdog,
            5 => ExitReason::SoftReset,
            _ => ExitReason::Crash,
        }
    }
}

/// Why a toolstack operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestError {
    /// Not enough free memory to build the domain (bytes).
    NotEnoughMemory { needed: u64, available: u64 },
    /// The kernel or ramdisk cannot be loaded (not an ELF, no PVH entry, too big, ...).
    InvalidImage { reason: String },
    /// The domain does not exist (any more).
    NoSuchDomain(DomId),
    /// The guest has not advertised the feature a request needs (e.g.
    /// `control/feature-poweroff` absent and the request therefore pointless).
    Unsupported(String),
    /// As many starts as the backend builds at once are being prepared: try again once one
    /// of them has finished (the XenAPI's start task waits and does).
    StartsBusy,
    /// Anything else; the message says what.
    Failed(String),
}

impl GuestError {
    /// The XenAPI error for this failure of an operation on `vm` (a reference).
    pub fn to_api_error(&self, vm: &str) -> ApiError {
        match self {
            GuestError::NotEnoughMemory { needed, available } => {
                ApiError::HostNotEnoughFreeMemory {
                    needed: *needed,
                    available: *available,
                }
            }
            GuestError::InvalidImage { reason } => ApiError::BootloaderFailed {
                vm: vm.to_string(),
                reason: reason.clone(),
            },
            GuestError::NoSuchDomain(domid) => ApiError::InternalError {
                message: alloc::format!("domain {domid} of VM {vm} no longer exists"),
            },
            GuestError::Unsupported(what) => ApiError::OperationNotAllowed {
                reason: alloc::format!("the guest does not support {what}"),
            },
            GuestError::StartsBusy => ApiError::OperationNotAllowed {
                reason: "the host is already building as many guests as it builds at once"
                    .to_string(),
            },
            GuestError::Failed(message) => ApiError::InternalError {
                message: alloc::format!("toolstack: {message}"),
            },
        }
    }
}

/// The kernel bytes [`GuestBackend::prepare_start`] is given: enough for a bzImage's setup
/// header and the first bytes of its payload (keel-domain-builder's `PROBE_BYTES`).
pub const KERNEL_HEAD_BYTES: usize = 64 << 10;

/// A start between [`GuestBackend::prepare_start`] and [`GuestBackend::start`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PreparedStart(pub u64);

/// Which boot image [`GuestBackend::load_image`] is given bytes of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootImage {
    Kernel,
    Ramdisk,
}

/// The toolstack, as the XenAPI uses it. See the module documentation for the reports that
/// must come back through [`crate::XenApi`].
pub trait GuestBackend {
    /// Bytes of host memory free for new domains now.
    fn free_memory(&self) -> u64;

    /// Begins a start: checks `spec`, refuses a kernel whose head (`kernel_head`: its first
    /// `min(kernel_size, KERNEL_HEAD_BYTES)` bytes, which also count as its first bytes
    /// loaded) is not one, and creates the domain, paused, with its memory. A backend that
    /// builds a bounded number of domains at once answers [`GuestError::StartsBusy`] beyond
    /// it (nothing created).
    fn prepare_start(
        &mut self,
        spec: &BootSpec,
        kernel_head: &[u8],
    ) -> Result<PreparedStart, GuestError>;

    /// The next bytes of `image`, in file order: the whole kernel first, then the ramdisk.
    /// Work is proportional to `bytes`. After an error the prepared start is gone.
    fn load_image(
        &mut self,
        start: PreparedStart,
        image: BootImage,
        bytes: &[u8],
    ) -> Result<(), GuestError>;

    /// Finishes the prepared start once both images are in: the domain's last pieces, its
    /// xenstore entries, console and disks; unpauses it unless `spec.paused`. Returns its
    /// domid. On failure nothing of the domain is left behind.
    fn start(&mut self, start: PreparedStart, spec: BootSpec) -> Result<DomId, GuestError>;

    /// Gives up a prepared start: its domain is destroyed. An unknown or finished one is
    /// ignored.
    fn abandon_start(&mut self, start: PreparedStart);

    /// Asks the guest to power off or reboot by writing `control/shutdown`. Returns once
    /// the request is written; report the guest's acknowledgement (it clears the key) with
    /// [`crate::XenApi::shutdown_acknowledged`] and the shutdown itself with
    /// [`crate::XenApi::domain_exited`]. The XenAPI keeps the timeouts.
    fn request_shutdown(
        &mut self,
        domid: DomId,
        request: ShutdownRequest,
    ) -> Result<(), GuestError>;

    /// Destroys the domain at once (running or shut down), releasing its memory, event
    /// channels, grants, backends and console. A domain already gone is `NoSuchDomain`.
    fn destroy(&mut self, domid: DomId) -> Result<(), GuestError>;

    /// Pauses every vCPU of the domain.
    fn pause(&mut self, domid: DomId) -> Result<(), GuestError>;

    /// Resumes a paused domain.
    fn unpause(&mut self, domid: DomId) -> Result<(), GuestError>;

    /// Sets the balloon target (`memory/target`) of a running domain, bytes.
    fn set_memory_target(&mut self, domid: DomId, bytes: u64) -> Result<(), GuestError>;

    /// Brings vCPUs `0..count` online and the rest offline (`cpu/<n>/availability`).
    fn set_vcpus_online(&mut self, domid: DomId, count: u32) -> Result<(), GuestError>;

    /// Hot-plugs a disk into a running domain: writes its `vbd` nodes and starts its
    /// backend. The guest's frontend connects by itself. A `devid` in use is `Failed`.
    fn attach_disk(&mut self, domid: DomId, disk: DiskSpec) -> Result<(), GuestError>;

    /// Hot-unplugs a disk: asks the frontend to close (`online = 0`, backend `state = 5`)
    /// and returns; the toolstack removes the device once the backend is closed, or by force
    /// after its timeout. `force` removes it at once (`VBD.unplug_force`). An unknown
    /// `devid` is `Failed`.
    fn detach_disk(&mut self, domid: DomId, devid: u32, force: bool) -> Result<(), GuestError>;

    /// Changes the medium of a CD drive (`VBD.insert` / `VBD.eject` on a running guest):
    /// `None` empties it.
    fn change_medium(
        &mut self,
        domid: DomId,
        devid: u32,
        vdi: Option<DiskVdi>,
    ) -> Result<(), GuestError>;
}
