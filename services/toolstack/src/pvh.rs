//! keel-domain-builder's stepped [`PvhBuild`] as the toolstack's [`Builder`] for XenAPI
//! boot specs: [`PvhBuilder::prepare`] creates the domain with the VM's UUID, memory and
//! vCPUs from the kernel's head, [`PvhBuilder::load`] takes the images a piece at a time,
//! and [`Builder::build`] finishes the prepared build: a domain that serves its console and
//! xenstore to dom0.

use keel_domain_builder::{
    BuildError, BuildOptions, DomainConfig, HoleFrames, PvhBuild, PROBE_BYTES,
};
use keel_xen::Hypervisor;
use keel_xenapi::guest::{BootImage, BootSpec, KERNEL_HEAD_BYTES};

use crate::builder::{Builder, BuiltDomain};
use crate::xenapi::parse_uuid;

// The XenAPI hands the builder exactly the head it probes.
const _: () = assert!(KERNEL_HEAD_BYTES == PROBE_BYTES);

/// Why a boot spec could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PvhError {
    /// `vm_uuid` is not a UUID.
    Uuid,
    /// `build` was called with no prepared build to finish.
    NotPrepared,
    /// As many builds as the host runs at once are under way.
    StartsBusy,
    Build(BuildError),
}

/// The PVH builder over the kernel's hypervisor and dom0 hole frames.
pub struct PvhBuilder<'a, H: ?Sized, F> {
    pub hv: &'a H,
    pub holes: &'a mut F,
    pub options: BuildOptions,
    /// The build [`Builder::build`] finishes (from [`PvhBuilder::prepare`], fed whole).
    pub prepared: Option<PvhBuild>,
}

/// Guest memory for `spec`: its target, in whole MiB (rounded up).
pub fn memory_mib(spec: &BootSpec) -> u64 {
    spec.target_memory_bytes.div_ceil(1 << 20)
}

impl<H: Hypervisor + ?Sized, F: HoleFrames> PvhBuilder<'_, H, F> {
    /// Begins the build of `spec` from its kernel's first bytes: the domain exists, paused,
    /// with its memory, once this returns.
    pub fn prepare(&mut self, spec: &BootSpec, kernel_head: &[u8]) -> Result<PvhBuild, PvhError> {
        let uuid = parse_uuid(&spec.vm_uuid).ok_or(PvhError::Uuid)?;
        let config = DomainConfig {
            uuid,
            vcpus: spec.max_vcpus,
            memory_mib: memory_mib(spec),
            cmdline: spec.cmdline.as_bytes(),
            console_domid: 0,
            store_domid: 0,
        };
        PvhBuild::begin(
            self.hv,
            self.holes,
            &config,
            kernel_head,
            spec.kernel_size,
            spec.ramdisk_size,
            &self.options,
        )
        .map_err(PvhError::Build)
    }

    /// The next bytes of `image`; after an error, [`PvhBuilder::abort`] the build.
    pub fn load(
        &mut self,
        build: &mut PvhBuild,
        image: BootImage,
        bytes: &[u8],
    ) -> Result<(), BuildError> {
        match image {
            BootImage::Kernel => build.feed_kernel(self.hv, self.holes, bytes),
            BootImage::Ramdisk => build.feed_initrd(self.hv, self.holes, bytes),
        }
    }

    /// Destroys a prepared build's domain; the error to report for `cause`.
    pub fn abort(&mut self, build: PvhBuild, cause: BuildError) -> PvhError {
        PvhError::Build(build.abort(self.hv, self.holes, cause))
    }

    /// Prepares `spec` from whole images in memory and keeps the build for `build` (for
    /// callers that hold them whole: tests, tools).
    pub fn prepare_whole(
        &mut self,
        spec: &BootSpec,
        kernel: &[u8],
        ramdisk: Option<&[u8]>,
    ) -> Result<(), PvhError> {
        let head = kernel.len().min(PROBE_BYTES);
        let mut build = self.prepare(spec, &kernel[..head])?;
        let fed = self
            .load(&mut build, BootImage::Kernel, &kernel[head..])
            .and_then(|()| match ramdisk {
                Some(r) => self.load(&mut build, BootImage::Ramdisk, r),
                None => Ok(()),
            });
        match fed {
            Ok(()) => {
                self.prepared = Some(build);
                Ok(())
            }
            Err(e) => Err(self.abort(build, e)),
        }
    }
}

impl<H: Hypervisor + ?Sized, F: HoleFrames> Builder for PvhBuilder<'_, H, F> {
    type Spec = BootSpec;
    type Error = PvhError;

    fn build(&mut self, spec: &BootSpec) -> Result<BuiltDomain, PvhError> {
        let build = self.prepared.take().ok_or(PvhError::NotPrepared)?;
        let built = build.finish(self.hv, self.holes).map_err(PvhError::Build)?;
        // Xen's limit is the populated memory (plus the builder's slack), so that is also
        // the most the guest may balloon up to.
        let memory_kib = memory_mib(spec) << 10;
        Ok(BuiltDomain {
            domid: built.domid,
            vcpus: spec.max_vcpus,
            memory_static_max_kib: memory_kib,
            memory_target_kib: memory_kib,
            store_port: built.store_port.0,
            store_gfn: built.store_gfn,
            console_port: built.console_port.0,
            console_gfn: built.console_gfn,
        })
    }
}
