//! The XenAPI's [`GuestBackend`] over the toolstack, and the toolstack's events as the
//! reports the XenAPI expects (`shutdown_acknowledged`, `shutdown_failed`, `domain_exited`).
//!
//! The XenAPI owns its backend (`Box<dyn GuestBackend>`), so [`Guests`] owns a
//! [`GuestHost`]: the kernel's object that holds (or shares) the toolstack, xenstored, the
//! consoles, the hypervisor and the builder, and lends them for one call.

use alloc::format;
use alloc::string::ToString;
use alloc::vec::Vec;

use keel_xenapi::guest::{
    BootImage, BootSpec, DiskSpec, DiskVdi, DomId, ExitReason as ApiExit, GuestBackend, GuestError,
    PreparedStart,
};
use keel_xenapi::{ApiError, ShutdownFailure as ApiFailure, ShutdownRequest, Timestamp, XenApi};

use crate::builder::{Builder, ConsoleBackend};
use crate::control::DomainControl;
use crate::devices::{DeviceError, DiskBackendError, DiskBackends, DiskMedium, Vbd};
use crate::domain::{ExitReason, ShutdownFailure, ShutdownKind, StateError};
use crate::store::Store;
use crate::toolstack::{
    Env, Event, EventKind, LifecycleError, StartError, StartRequest, Toolstack,
};

/// The environment a [`GuestHost`] lends the toolstack for one call, its console backend's
/// error `CE`.
pub type HostEnv<'a, CE> = Env<
    'a,
    dyn Store + 'a,
    dyn ConsoleBackend<Error = CE> + 'a,
    dyn DomainControl + 'a,
    dyn DiskBackends,
>;

/// The kernel's side of [`Guests`].
pub trait GuestHost {
    type ConsoleError: core::fmt::Debug;
    type BuildError: core::fmt::Debug;

    /// Runs `f` with the toolstack and, lent for the call, xenstored, the console backend,
    /// domain control and the builder, whose `build` finishes `prepared` (a start from
    /// [`GuestHost::prepare`]; one `f` did not finish is abandoned).
    fn with_prepared<R>(
        &mut self,
        prepared: Option<PreparedStart>,
        f: impl FnOnce(
            &mut Toolstack,
            &mut HostEnv<'_, Self::ConsoleError>,
            &mut (dyn Builder<Spec = BootSpec, Error = Self::BuildError> + '_),
        ) -> R,
    ) -> R;

    /// [`GuestHost::with_prepared`] with no start to finish.
    fn with<R>(
        &mut self,
        f: impl FnOnce(
            &mut Toolstack,
            &mut HostEnv<'_, Self::ConsoleError>,
            &mut (dyn Builder<Spec = BootSpec, Error = Self::BuildError> + '_),
        ) -> R,
    ) -> R {
        self.with_prepared(None, f)
    }

    /// Begins building the domain for `spec` from its kernel's head (the domain exists,
    /// paused, from now on): [`GuestBackend::prepare_start`].
    fn prepare(
        &mut self,
        spec: &BootSpec,
        kernel_head: &[u8],
    ) -> Result<PreparedStart, Self::BuildError>;

    /// The next image bytes of a prepared start: [`GuestBackend::load_image`]. After an
    /// error the start is gone (its domain destroyed).
    fn load(
        &mut self,
        start: PreparedStart,
        image: BootImage,
        bytes: &[u8],
    ) -> Result<(), Self::BuildError>;

    /// Gives a prepared start up (its domain destroyed); unknown ones are ignored.
    fn abandon(&mut self, start: PreparedStart);

    /// Monotonic nanoseconds (the toolstack's timers).
    fn monotonic_ns(&self) -> u64;
    /// Wall-clock nanoseconds since the Unix epoch (`/vm/<uuid>/start_time`).
    fn unix_ns(&self) -> u64;
    /// Bytes of host memory free for new domains (`sysctl physinfo`).
    fn free_memory(&self) -> u64;
    /// The XenAPI's reading of a build failure (out of memory, bad image, ...).
    fn build_error(&self, error: Self::BuildError) -> GuestError;
}

/// The toolstack as the XenAPI's [`GuestBackend`].
pub struct Guests<H>(pub H);

/// Parses a UUID in 8-4-4-4-12 hex form.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    let dashes_ok = text.len() == 36
        && text
            .bytes()
            .enumerate()
            .all(|(i, b)| matches!(i, 8 | 13 | 18 | 23) == (b == b'-'));
    if !dashes_ok || hex.len() != 32 {
        return None;
    }
    // Hex digits only (`from_str_radix` would also take a sign).
    let nibble = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 16];
    for (slot, pair) in out.iter_mut().zip(hex.chunks(2)) {
        let [hi, lo] = pair else { return None };
        *slot = nibble(*hi)? << 4 | nibble(*lo)?;
    }
    Some(out)
}

fn domid(id: DomId) -> Result<u16, GuestError> {
    u16::try_from(id).map_err(|_| GuestError::NoSuchDomain(id))
}

fn medium(vdi: Option<DiskVdi>) -> Option<DiskMedium> {
    vdi.map(|v| DiskMedium {
        sr_uuid: v.sr_uuid,
        vdi_uuid: v.vdi_uuid,
    })
}

/// The toolstack's vbd for a XenAPI disk.
pub fn vbd(disk: DiskSpec) -> Vbd {
    Vbd {
        devid: disk.devid,
        device: disk.device,
        medium: medium(disk.vdi),
        read_only: disk.read_only,
        cdrom: disk.cdrom,
        bootable: disk.bootable,
    }
}

fn device_error(e: DeviceError) -> GuestError {
    match e {
        DeviceError::NoSuchDomain(d) => GuestError::NoSuchDomain(DomId::from(d)),
        DeviceError::Backend(DiskBackendError::Unavailable) => {
            GuestError::Unsupported("disks (this host has no disk backend)".to_string())
        }
        DeviceError::DevidInUse(devid) => GuestError::Failed(format!(
            "the guest's device {devid} is still being removed (its frontend has up to 10 s \
             to close it); try again"
        )),
        other => GuestError::Failed(format!("{other:?}")),
    }
}

fn lifecycle_error(e: LifecycleError) -> GuestError {
    match e {
        LifecycleError::NoSuchDomain(d) => GuestError::NoSuchDomain(DomId::from(d)),
        LifecycleError::State(StateError::Paused) => {
            GuestError::Failed("the domain is paused; unpause it first".to_string())
        }
        other => GuestError::Failed(format!("{other:?}")),
    }
}

impl<H: GuestHost> GuestBackend for Guests<H> {
    fn free_memory(&self) -> u64 {
        self.0.free_memory()
    }

    fn prepare_start(
        &mut self,
        spec: &BootSpec,
        kernel_head: &[u8],
    ) -> Result<PreparedStart, GuestError> {
        self.0
            .prepare(spec, kernel_head)
            .map_err(|e| self.0.build_error(e))
    }

    fn load_image(
        &mut self,
        start: PreparedStart,
        image: BootImage,
        bytes: &[u8],
    ) -> Result<(), GuestError> {
        self.0
            .load(start, image, bytes)
            .map_err(|e| self.0.build_error(e))
    }

    fn abandon_start(&mut self, start: PreparedStart) {
        self.0.abandon(start);
    }

    fn start(&mut self, prepared: PreparedStart, spec: BootSpec) -> Result<DomId, GuestError> {
        let Some(uuid) = parse_uuid(&spec.vm_uuid) else {
            self.0.abandon(prepared);
            return Err(GuestError::Failed(format!(
                "bad VM UUID {:?}",
                spec.vm_uuid
            )));
        };
        let now = self.0.monotonic_ns();
        let unix = self.0.unix_ns();
        let name = spec.name.clone();
        let xenstore_data = spec.xenstore_data.clone();
        let disks: Vec<Vbd> = spec.disks.iter().cloned().map(vbd).collect();
        let request = StartRequest {
            uuid,
            name: &name,
            spec: &spec,
            start_paused: spec.paused,
            start_time_unix_ns: unix,
            vcpus_at_startup: spec.vcpus_at_startup,
            xenstore_data: &xenstore_data,
            disks: &disks,
        };
        let result = self
            .0
            .with_prepared(Some(prepared), |toolstack, env, builder| {
                toolstack.start(env, builder, &request, now)
            });
        match result {
            Ok(d) => Ok(DomId::from(d)),
            Err(StartError::Build(e)) => Err(self.0.build_error(e)),
            Err(StartError::Disk { error, .. }) => Err(device_error(error)),
            Err(e) => Err(GuestError::Failed(format!("{e:?}"))),
        }
    }

    fn request_shutdown(&mut self, id: DomId, request: ShutdownRequest) -> Result<(), GuestError> {
        let d = domid(id)?;
        let kind = match request {
            ShutdownRequest::PowerOff => ShutdownKind::Poweroff,
            ShutdownRequest::Reboot => ShutdownKind::Reboot,
        };
        let now = self.0.monotonic_ns();
        self.0
            .with(|t, env, _| t.request_shutdown(env, d, kind, now))
            .map_err(lifecycle_error)
    }

    fn destroy(&mut self, id: DomId) -> Result<(), GuestError> {
        let d = domid(id)?;
        let now = self.0.monotonic_ns();
        self.0
            .with(|t, env, _| t.destroy(env, d, now))
            .map_err(lifecycle_error)
    }

    fn pause(&mut self, id: DomId) -> Result<(), GuestError> {
        let d = domid(id)?;
        self.0
            .with(|t, env, _| t.pause(env, d))
            .map_err(lifecycle_error)
    }

    fn unpause(&mut self, id: DomId) -> Result<(), GuestError> {
        let d = domid(id)?;
        self.0
            .with(|t, env, _| t.unpause(env, d))
            .map_err(lifecycle_error)
    }

    fn set_memory_target(&mut self, id: DomId, bytes: u64) -> Result<(), GuestError> {
        let d = domid(id)?;
        self.0
            .with(|t, env, _| t.set_memory_target(env, d, bytes / 1024))
            .map_err(lifecycle_error)
    }

    fn set_vcpus_online(&mut self, id: DomId, count: u32) -> Result<(), GuestError> {
        let d = domid(id)?;
        self.0
            .with(|t, env, _| t.set_vcpus_online(env, d, count))
            .map_err(lifecycle_error)
    }

    fn attach_disk(&mut self, id: DomId, disk: DiskSpec) -> Result<(), GuestError> {
        let d = domid(id)?;
        self.0
            .with(|t, env, _| t.attach_disk(env, d, vbd(disk)))
            .map_err(device_error)
    }

    fn detach_disk(&mut self, id: DomId, devid: u32, force: bool) -> Result<(), GuestError> {
        let d = domid(id)?;
        let now = self.0.monotonic_ns();
        self.0
            .with(|t, env, _| t.detach_disk(env, d, devid, force, now))
            .map_err(device_error)
    }

    fn change_medium(
        &mut self,
        id: DomId,
        devid: u32,
        vdi: Option<DiskVdi>,
    ) -> Result<(), GuestError> {
        let d = domid(id)?;
        self.0
            .with(|t, env, _| t.change_medium(env, d, devid, medium(vdi)))
            .map_err(device_error)
    }
}

/// A toolstack event the XenAPI must hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Acknowledged(DomId),
    Failed(DomId, ApiFailure),
    Exited(DomId, ApiExit),
    /// A hot-unplugged disk (its devid) is gone from the guest.
    DiskDetached(DomId, u32),
}

/// What the XenAPI hears of `event` (`Destroyed` completes what the XenAPI asked for and
/// needs no report).
pub fn report(event: &Event) -> Option<Report> {
    let d = DomId::from(event.domid);
    Some(match &event.kind {
        EventKind::ShutdownAcknowledged(_) => Report::Acknowledged(d),
        EventKind::ShutdownFailed(_, failure) => Report::Failed(
            d,
            match failure {
                ShutdownFailure::NotAcknowledged => ApiFailure::NotAcknowledged,
                ShutdownFailure::NotCompleted => ApiFailure::NotCompleted,
            },
        ),
        EventKind::Exited(reason) => Report::Exited(
            d,
            match reason {
                ExitReason::Poweroff => ApiExit::PowerOff,
                ExitReason::Reboot => ApiExit::Reboot,
                ExitReason::Suspend => ApiExit::Suspend,
                ExitReason::Crash | ExitReason::Unknown(_) => ApiExit::Crash,
                ExitReason::Watchdog => ApiExit::Watchdog,
                ExitReason::SoftReset => ApiExit::SoftReset,
            },
        ),
        EventKind::Vanished { .. } => Report::Exited(d, ApiExit::Vanished),
        EventKind::DiskDetached { devid, .. } => Report::DiskDetached(d, *devid),
        EventKind::Destroyed { .. } => return None,
    })
}

impl Report {
    /// Hands the report to the XenAPI. Call it with no borrow of the toolstack held: the
    /// XenAPI may call back into its [`GuestBackend`] (destroy, then start for a restart).
    pub fn deliver(self, api: &mut XenApi, now: Timestamp) -> Result<(), ApiError> {
        match self {
            Report::Acknowledged(d) => {
                api.shutdown_acknowledged(d, now);
                Ok(())
            }
            Report::Failed(d, failure) => {
                api.shutdown_failed(d, failure, now);
                Ok(())
            }
            Report::Exited(d, reason) => api.domain_exited(d, reason, now),
            Report::DiskDetached(d, devid) => {
                api.disk_detached(d, devid, now);
                Ok(())
            }
        }
    }
}

/// Every pending toolstack event as a report, in order (taken out first, so that no
/// borrow of the toolstack is held while they are delivered).
pub fn take_reports(toolstack: &mut Toolstack) -> Vec<Report> {
    core::iter::from_fn(|| toolstack.pop_event())
        .filter_map(|e| report(&e))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_parse() {
        assert_eq!(
            parse_uuid("12345678-9abc-def0-0123-456789ABCDEF"),
            Some([
                0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
                0xcd, 0xef
            ])
        );
        for bad in [
            "",
            "12345678-9abc-def0-0123-456789abcde",
            "12345678-9abc-def0-0123-456789abcdeff",
            "123456789-abc-def0-0123-456789abcdef",
            "12345678-9abc-def0-0123-456789abcdeg",
            "12345678-9abc-def0-0123+456789abcdef",
            "+2345678-9abc-def0-0123-456789abcdef",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
    }
}
