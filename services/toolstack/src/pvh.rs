//! keel-domain-builder's [`build_pvh`] as the toolstack's [`Builder`] for XenAPI boot
//! specs: the images come from the [`BootSpec`] bytes, the domain is created with the VM's
//! UUID, memory and vCPUs, and serves its console and xenstore to dom0.

use alloc::format;

use keel_domain_builder::{
    build_pvh, BuildError, BuildOptions, BytesSource, DomainConfig, HoleFrames, ImageSource,
};
use keel_xen::Hypervisor;
use keel_xenapi::guest::{BootSpec, GuestError};

use crate::builder::{Builder, BuiltDomain};
use crate::xenapi::parse_uuid;

/// Why a boot spec could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PvhError {
    /// `vm_uuid` is not a UUID.
    Uuid,
    Build(BuildError),
}

/// The PVH builder over the kernel's hypervisor and dom0 hole frames.
pub struct PvhBuilder<'a, H: ?Sized, F> {
    pub hv: &'a H,
    pub holes: &'a mut F,
    pub options: BuildOptions,
}

/// Guest memory for `spec`: its target, in whole MiB (rounded up).
pub fn memory_mib(spec: &BootSpec) -> u64 {
    spec.target_memory_bytes.div_ceil(1 << 20)
}

impl<H: Hypervisor + ?Sized, F: HoleFrames> Builder for PvhBuilder<'_, H, F> {
    type Spec = BootSpec;
    type Error = PvhError;

    fn build(&mut self, spec: &BootSpec) -> Result<BuiltDomain, PvhError> {
        let uuid = parse_uuid(&spec.vm_uuid).ok_or(PvhError::Uuid)?;
        let config = DomainConfig {
            uuid,
            vcpus: spec.max_vcpus,
            memory_mib: memory_mib(spec),
            cmdline: spec.cmdline.as_bytes(),
            console_domid: 0,
            store_domid: 0,
        };
        let mut kernel = BytesSource(&spec.kernel);
        let mut initrd = spec.ramdisk.as_deref().map(BytesSource);
        let built = build_pvh(
            self.hv,
            self.holes,
            &config,
            &mut kernel,
            initrd.as_mut().map(|s| s as &mut dyn ImageSource),
            &self.options,
        )
        .map_err(PvhError::Build)?;
        // Xen's limit is the populated memory (plus the builder's slack), so that is also
        // the most the guest may balloon up to.
        let memory_kib = config.memory_mib << 10;
        Ok(BuiltDomain {
            domid: built.domid,
            vcpus: config.vcpus,
            memory_static_max_kib: memory_kib,
            memory_target_kib: memory_kib,
            store_port: built.store_port.0,
            store_gfn: built.store_gfn,
            console_port: built.console_port.0,
            console_gfn: built.console_gfn,
        })
    }
}

/// The XenAPI's reading of a build failure; `free_memory` is the host's free memory now
/// (bytes), for `HOST_NOT_ENOUGH_FREE_MEMORY`.
pub fn guest_error(error: &PvhError, spec: &BootSpec, free_memory: u64) -> GuestError {
    match error {
        PvhError::Uuid => GuestError::Failed(format!("bad VM UUID {:?}", spec.vm_uuid)),
        PvhError::Build(BuildError::XenOutOfMemory { .. }) => GuestError::NotEnoughMemory {
            needed: memory_mib(spec) << 20,
            available: free_memory,
        },
        PvhError::Build(
            e @ (BuildError::Kernel(_) | BuildError::Initrd(_) | BuildError::TooBig { .. }),
        ) => GuestError::InvalidImage {
            reason: format!("{e:?}"),
        },
        PvhError::Build(e) => GuestError::Failed(format!("domain builder: {e:?}")),
    }
}
