//! Boot images and plans: `PV_kernel` / `PV_ramdisk` as `vdi:<VDI uuid>`, everything a start
//! needs checked before it begins, and the images read from the storage manager a few MiB
//! per job step into memory reserved fallibly (docs/guests.md, "Boot images").
//!
//! A VM whose `PV_bootloader` is `pygrub` (what XCP clients set; `pvgrub` and `grub` too)
//! boots GRUB built for Xen PVH as its kernel instead, which reads `/boot/grub/grub.cfg` from
//! the VM's own disks. Keel has no filesystem to keep GRUB in, so the host's
//! `other_config:keel_pvgrub` names the VDI holding it, as `vdi:<VDI uuid>` (docs/guests.md,
//! "Booting from the guest's own disk (pygrub)").

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::storage_mirror::{locate, VdiLocation};
use super::vm_domain::guests;
use super::vm_rules::{check_memory, int_field, text, MAX_VCPUS};
use crate::api::State;
use crate::error::ApiError;
use crate::guest::{BootImage, BootSpec, GuestError, PreparedStart, KERNEL_HEAD_BYTES};
use crate::store::Db;
use crate::value::Value;

/// Largest kernel image loaded.
pub const MAX_KERNEL_BYTES: u64 = 64 << 20;
/// Largest initial ramdisk loaded.
pub const MAX_RAMDISK_BYTES: u64 = 512 << 20;
/// Image bytes read from the storage manager and handed to the backend per job step: the
/// backend loads (and decompresses) them within the step, so this bounds how long a step
/// holds the host (an xz kernel's 256 KiB decode to about 2 MiB).
const LOAD_PER_STEP: u64 = 256 << 10;
/// Prefix of `PV_kernel` / `PV_ramdisk` values naming a VDI.
pub const VDI_PREFIX: &str = "vdi:";

/// The host `other_config` key naming the VDI that holds GRUB for Xen PVH.
pub const PVGRUB_HOST_KEY: &str = "keel_pvgrub";
/// What the errors call the GRUB image's source.
const PVGRUB_FIELD: &str = "the host's other_config:keel_pvgrub";

/// How a VM's kernel is found, from `PV_bootloader`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bootloader {
    /// Empty: `PV_kernel` / `PV_ramdisk` are the images.
    Direct,
    /// GRUB for Xen PVH, which boots what the guest's own `/boot/grub/grub.cfg` names.
    Pvgrub,
}

fn bootloader(db: &Db, vm: &str) -> Result<Bootloader, ApiError> {
    let named = text(db, vm, "PV_bootloader");
    match named.as_str() {
        "" => Ok(Bootloader::Direct),
        // xapi's name for its bootloader; Keel's is GRUB itself, in the guest.
        "pygrub" | "pvgrub" | "grub" => Ok(Bootloader::Pvgrub),
        _ => Err(boot_failed(
            vm,
            format!(
                "PV_bootloader is {:?}: Keel knows \"pygrub\" (GRUB from the guest's disk) and \"\" (PV_kernel)",
                crate::codec::truncate(named.clone(), 64)
            ),
        )),
    }
}

/// Where one boot image comes from.
#[derive(Clone, Debug)]
struct ImageSource {
    /// `PV_kernel` or `PV_ramdisk`.
    field: &'static str,
    at: VdiLocation,
    size: u64,
}

/// A checked start: the spec without its images, and where the images are.
#[derive(Clone, Debug)]
pub(crate) struct BootPlan {
    spec: BootSpec,
    kernel: ImageSource,
    ramdisk: Option<ImageSource>,
}

fn boot_failed(vm: &str, reason: String) -> ApiError {
    ApiError::BootloaderFailed {
        vm: vm.to_string(),
        reason,
    }
}

/// Resolves `PV_kernel` / `PV_ramdisk` (`vdi:<uuid>`); `None` when the field is empty.
fn image_source(
    db: &Db,
    vm: &str,
    field: &'static str,
    max: u64,
) -> Result<Option<ImageSource>, ApiError> {
    named_image(db, vm, field, text(db, vm, field), max)
}

/// Resolves `named` (`vdi:<uuid>`, from `field`); `None` when it is empty.
fn named_image(
    db: &Db,
    vm: &str,
    field: &'static str,
    named: String,
    max: u64,
) -> Result<Option<ImageSource>, ApiError> {
    if named.is_empty() {
        return Ok(None);
    }
    let Some(uuid) = named.strip_prefix(VDI_PREFIX) else {
        return Err(boot_failed(
            vm,
            format!(
                "{field} is {:?}: Keel boots images from VDIs, named {VDI_PREFIX}<VDI uuid>",
                crate::codec::truncate(named.clone(), 64)
            ),
        ));
    };
    let Some(vdi) = db.find_by_uuid("VDI", uuid) else {
        return Err(boot_failed(
            vm,
            format!("{field} names VDI {uuid}, which does not exist"),
        ));
    };
    let at = locate(db, &vdi)?;
    let size = u64::try_from(int_field(db, &vdi, "virtual_size")).unwrap_or(0);
    if size == 0 || size > max {
        return Err(boot_failed(
            vm,
            format!("{field} names VDI {uuid} of {size} bytes; images are 1 to {max} bytes"),
        ));
    }
    Ok(Some(ImageSource { field, at, size }))
}

/// GRUB for Xen PVH, from the VDI the host's `other_config:keel_pvgrub` names.
fn pvgrub_image(state: &State, vm: &str) -> Result<ImageSource, ApiError> {
    let named = string_pairs(&state.db, &state.host, "other_config")
        .into_iter()
        .find(|(k, _)| k == PVGRUB_HOST_KEY)
        .map(|(_, v)| v)
        .unwrap_or_default();
    named_image(&state.db, vm, PVGRUB_FIELD, named, MAX_KERNEL_BYTES)?.ok_or_else(|| {
        boot_failed(
            vm,
            format!(
                "PV_bootloader is pygrub but this host has no GRUB for Xen PVH: upload \
                 grub-i386-xen_pvh.bin (Debian's grub-xen-host) into a VDI and set the host's \
                 other_config:{PVGRUB_HOST_KEY} to {VDI_PREFIX}<its uuid>"
            ),
        )
    })
}

fn string_pairs(db: &Db, r: &str, field: &str) -> Vec<(String, String)> {
    match db.get(r, field) {
        Some(Value::Struct(m)) => m
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string())))
            .collect(),
        _ => Vec::new(),
    }
}

/// Checks everything a start needs except the image data, and plans it.
pub(crate) fn plan_boot(state: &mut State, vm: &str, paused: bool) -> Result<BootPlan, ApiError> {
    let db = &state.db;
    let domain_type = text(db, vm, "domain_type");
    if domain_type != "pvh" {
        return Err(ApiError::ValueNotSupported {
            field: "domain_type".to_string(),
            value: domain_type,
            reason: "Keel runs PVH guests only".to_string(),
        });
    }
    let mem = |f| int_field(db, vm, f);
    let static_max = mem("memory_static_max");
    let dynamic_max = mem("memory_dynamic_max");
    check_memory(
        mem("memory_static_min"),
        mem("memory_dynamic_min"),
        dynamic_max,
        static_max,
    )?;
    if dynamic_max <= 0 {
        return Err(ApiError::MemoryConstraintViolation {
            constraint: "memory_dynamic_max must be positive to start".to_string(),
        });
    }
    let vcpus_max = int_field(db, vm, "VCPUs_max");
    let vcpus_at_startup = int_field(db, vm, "VCPUs_at_startup");
    if !(1..=MAX_VCPUS).contains(&vcpus_max) || !(1..=vcpus_max).contains(&vcpus_at_startup) {
        return Err(ApiError::ValueNotSupported {
            field: "VCPUs_at_startup".to_string(),
            value: vcpus_at_startup.to_string(),
            reason: "need 1 <= VCPUs_at_startup <= VCPUs_max <= 128".to_string(),
        });
    }
    let disks = super::vbd::plan_disks(db, vm)?;
    // With pygrub, PV_kernel / PV_ramdisk are not read: GRUB loads what grub.cfg names, and
    // PV_args become GRUB's own command line.
    let (kernel, ramdisk) = match bootloader(db, vm)? {
        Bootloader::Direct => {
            let kernel = image_source(db, vm, "PV_kernel", MAX_KERNEL_BYTES)?.ok_or_else(|| {
                boot_failed(
                    vm,
                    format!(
                        "PV_kernel is empty: set it to {VDI_PREFIX}<uuid> of a VDI holding the kernel"
                    ),
                )
            })?;
            (
                kernel,
                image_source(db, vm, "PV_ramdisk", MAX_RAMDISK_BYTES)?,
            )
        }
        Bootloader::Pvgrub => {
            if !disks.iter().any(|d| d.vdi.is_some()) {
                return Err(boot_failed(
                    vm,
                    "PV_bootloader is pygrub, which boots from the VM's own disk, and the VM has \
                     no VBD with a VDI"
                        .to_string(),
                ));
            }
            (pvgrub_image(state, vm)?, None)
        }
    };
    let spec = BootSpec {
        vm_uuid: text(db, vm, "uuid"),
        name: text(db, vm, "name_label"),
        max_memory_bytes: static_max as u64,
        target_memory_bytes: dynamic_max as u64,
        max_vcpus: vcpus_max as u32,
        vcpus_at_startup: vcpus_at_startup as u32,
        kernel_size: kernel.size,
        ramdisk_size: ramdisk.as_ref().map(|r| r.size),
        cmdline: text(db, vm, "PV_args"),
        paused,
        platform: string_pairs(db, vm, "platform"),
        xenstore_data: string_pairs(db, vm, "xenstore_data"),
        disks,
    };
    let needed = spec.max_memory_bytes;
    let available = guests(state)?.free_memory();
    if needed > available {
        return Err(ApiError::HostNotEnoughFreeMemory { needed, available });
    }
    Ok(BootPlan {
        spec,
        kernel,
        ramdisk,
    })
}

/// Image data being read and handed to the backend, a piece per job step.
pub(crate) struct Loading {
    plan: BootPlan,
    /// The backend's start, once the kernel's head went to it.
    prepared: Option<PreparedStart>,
    kernel_loaded: u64,
    ramdisk_loaded: u64,
    /// One step's piece, reserved once.
    piece: Vec<u8>,
}

impl Loading {
    pub(crate) fn new(vm: &str, plan: BootPlan) -> Result<Loading, ApiError> {
        let mut piece = Vec::new();
        piece
            .try_reserve_exact(LOAD_PER_STEP.max(KERNEL_HEAD_BYTES as u64) as usize)
            .map_err(|_| {
                boot_failed(
                    vm,
                    "not enough memory in the control domain to read the boot images".to_string(),
                )
            })?;
        Ok(Loading {
            plan,
            prepared: None,
            kernel_loaded: 0,
            ramdisk_loaded: 0,
            piece,
        })
    }

    pub(crate) fn total(&self) -> u64 {
        self.plan.kernel.size + self.plan.ramdisk.as_ref().map_or(0, |r| r.size)
    }

    pub(crate) fn loaded(&self) -> u64 {
        self.kernel_loaded + self.ramdisk_loaded
    }

    /// Reads `len` bytes of `source` at `offset` into the piece buffer.
    fn read(
        piece: &mut Vec<u8>,
        state: &mut State,
        vm: &str,
        source: &ImageSource,
        offset: u64,
        len: usize,
    ) -> Result<(), ApiError> {
        piece.clear();
        piece.resize(len, 0);
        let storage = state.storage.as_deref_mut().ok_or_else(|| {
            boot_failed(
                vm,
                format!("{}: this host has no storage to read it from", source.field),
            )
        })?;
        storage
            .read(&source.at.sr_uuid, &source.at.vdi_uuid, offset, piece)
            .map_err(|e| {
                boot_failed(
                    vm,
                    format!(
                        "{}: reading VDI {} failed: {e:?}",
                        source.field, source.at.vdi_uuid
                    ),
                )
            })
    }

    /// One step: the kernel's head to `GuestBackend::prepare_start`, or up to
    /// [`LOAD_PER_STEP`] more image bytes to `GuestBackend::load_image`. True once both
    /// images are in. After an error nothing is left to abandon.
    pub(crate) fn load_some(&mut self, state: &mut State, vm: &str) -> Result<bool, ApiError> {
        let kernel = &self.plan.kernel;
        let Some(prepared) = self.prepared else {
            let n = kernel.size.min(KERNEL_HEAD_BYTES as u64);
            if self.piece.len() as u64 != n {
                Self::read(&mut self.piece, state, vm, kernel, 0, n as usize)?;
            }
            let prepared = match guests(state)?.prepare_start(&self.plan.spec, &self.piece) {
                Ok(prepared) => prepared,
                // Other starts are building: wait for a turn, one step at a time.
                Err(GuestError::StartsBusy) => return Ok(false),
                Err(e) => return Err(e.to_api_error(vm)),
            };
            self.prepared = Some(prepared);
            self.kernel_loaded = n;
            return Ok(false);
        };
        let (source, image, loaded) = if self.kernel_loaded < kernel.size {
            (kernel, BootImage::Kernel, &mut self.kernel_loaded)
        } else if let Some(r) = self
            .plan
            .ramdisk
            .as_ref()
            .filter(|r| self.ramdisk_loaded < r.size)
        {
            (r, BootImage::Ramdisk, &mut self.ramdisk_loaded)
        } else {
            return Ok(true);
        };
        let n = (source.size - *loaded).min(LOAD_PER_STEP);
        let read = Self::read(&mut self.piece, state, vm, source, *loaded, n as usize);
        let fed = read.and_then(|()| {
            guests(state)?
                .load_image(prepared, image, &self.piece)
                .map_err(|e| e.to_api_error(vm))
        });
        match fed {
            Ok(()) => {
                *loaded += n;
                Ok(false)
            }
            Err(e) => {
                // A failed load_image drops the start itself; a failed read does not.
                self.abandon(state);
                Err(e)
            }
        }
    }

    /// Gives the backend's start up, if there is one.
    pub(crate) fn abandon(&mut self, state: &mut State) {
        if let Some(prepared) = self.prepared.take() {
            if let Ok(backend) = guests(state) {
                backend.abandon_start(prepared);
            }
        }
    }

    /// The prepared start and the spec to finish it with, its disks checked again now
    /// (another VM may have attached one of them while the images were read). On error the
    /// start is abandoned.
    pub(crate) fn into_start(
        mut self,
        state: &mut State,
        vm: &str,
    ) -> Result<(PreparedStart, BootSpec), ApiError> {
        let prepared = self.prepared.ok_or_else(|| ApiError::InternalError {
            message: "VM.start: the images were not loaded".to_string(),
        })?;
        match super::vbd::plan_disks(&state.db, vm) {
            Ok(disks) => {
                self.prepared = None;
                let mut spec = self.plan.spec;
                spec.disks = disks;
                Ok((prepared, spec))
            }
            Err(e) => {
                self.abandon(state);
                Err(e)
            }
        }
    }
}
