//! The toolstack on a real Xen, assembled: xenstored, the console set, the grant-mapped
//! guest pages, the PVH builder and domain control around one [`Toolstack`], generic over
//! the hypervisor and dom0's frames so that the kernel supplies only those and the clocks.
//!
//! [`XenHost`] is shared (`Rc<RefCell<…>>`, one CPU) between the XenAPI, which owns it as
//! its [`GuestBackend`](keel_xenapi::guest::GuestBackend) through [`Guests`], and the
//! kernel's event task, which calls [`XenHost::service`] when a guest's store or console
//! channel fires, [`XenHost::on_dom_exc`] on `VIRQ_DOM_EXC`, and hands
//! [`XenHost::take_reports`] to the XenAPI with no borrow held.

use crate::start_times::StartTimes;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::ops::Deref;

use keel_console::{ConsolePage, ConsoleSet};
use keel_domain_builder::{BuildError, BuildOptions, HoleFrames, PvhBuild};
use keel_xen::evtchn::{send, Port};
use keel_xen::Hypervisor;
use keel_xenapi::guest::{BootImage, BootSpec, GuestError, PreparedStart};
use keel_xenstored::{LocalClient, RingPage, Xenstored};

use crate::builder::{Builder, ConsoleBackend};
use crate::console::{ConsoleAttachError, Consoles};
use crate::control::{DomainControl, XenControl};
use crate::devices::{DiskBackends, NoDiskBackends};
use crate::guest_page::{GrantMapper, GuestPage, GuestPageError, MapFrames, MappedPages};
use crate::pvh::{memory_mib, PvhBuilder, PvhError};
use crate::store::Store;
use crate::toolstack::{Env, Toolstack};
use crate::xenapi::{take_reports, GuestHost, Guests, HostEnv, Report};
use crate::xenstored::{deliver_watch_events, LocalStore};
use crate::Timeouts;

/// Rounds of ring service per call before the caller is told to come back (a guest that
/// keeps its ring full cannot hold the CPU).
const SERVICE_ROUNDS: usize = 8;

/// Runs `round` (one bounded service of one ring: `Some(more)`, or `None` when the ring is
/// done for) until it has no more or [`SERVICE_ROUNDS`] are spent; true if work was left.
fn serve_rounds(mut round: impl FnMut() -> Option<bool>) -> bool {
    for _ in 0..SERVICE_ROUNDS {
        match round() {
            Some(true) => {}
            Some(false) | None => return false,
        }
    }
    true
}

/// Builds under way at once. Each maps its xz dictionary (up to 64 MiB of hole frames) and
/// holds its decoder's buffers (a few hundred KiB of heap) while its images arrive; more
/// starts wait their turn in the XenAPI.
pub const MAX_PREPARED_STARTS: usize = 4;

/// The kernel's clocks.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    /// Monotonic nanoseconds (the toolstack's timers).
    pub monotonic_ns: fn() -> u64,
    /// Wall-clock nanoseconds since the Unix epoch.
    pub unix_ns: fn() -> u64,
}

/// Everything the toolstack acts through on a real Xen.
///
/// `B` gives the builder its windows into guest memory; `SF` and `CF` give dom0 frames for
/// guests' store and console pages and view them as a xenstore ring and a console page.
pub struct XenHost<H: ?Sized + 'static, B, SF: MapFrames, CF: MapFrames> {
    pub hv: &'static H,
    pub holes: B,
    pub store_frames: SF,
    pub console_frames: CF,
    pub toolstack: Toolstack,
    pub xenstored: Xenstored,
    /// The toolstack's own privileged connection to xenstored (its watches live on it).
    pub client: LocalClient,
    pub store_pages: MappedPages<SF::View>,
    pub console_pages: MappedPages<CF::View>,
    pub consoles: ConsoleSet<GuestPage<CF::View>>,
    pub options: BuildOptions,
    pub clocks: Clocks,
    /// The disk backends (blkback) serving guests' vbds; [`NoDiskBackends`] until the
    /// kernel hands its own to [`XenHost::set_disk_backends`].
    pub disks: alloc::boxed::Box<dyn DiskBackends>,
    /// Starts being built, their images arriving a piece per XenAPI step.
    pub prepared: BTreeMap<u64, PvhBuild>,
    /// Where each prepared start's time went so far (logged when it finishes).
    start_times: BTreeMap<u64, StartTimes>,
    next_prepared: u64,
}

/// What one [`XenHost::service`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Serviced {
    /// Work remains (a ring still held requests or output): call again soon.
    pub more: bool,
}

impl<H, B, SF, CF> XenHost<H, B, SF, CF>
where
    H: Hypervisor + ?Sized + 'static,
    B: HoleFrames,
    SF: MapFrames,
    SF::View: Deref,
    <SF::View as Deref>::Target: RingPage,
    CF: MapFrames,
    CF::View: ConsolePage,
{
    /// A host with no guests yet.
    pub fn new(
        hv: &'static H,
        holes: B,
        store_frames: SF,
        console_frames: CF,
        clocks: Clocks,
    ) -> Self {
        let mut xenstored = Xenstored::new();
        let client = xenstored.open_local();
        XenHost {
            hv,
            holes,
            store_frames,
            console_frames,
            toolstack: Toolstack::new(Timeouts::default()),
            xenstored,
            client,
            store_pages: MappedPages::default(),
            console_pages: MappedPages::default(),
            consoles: ConsoleSet::default(),
            options: BuildOptions::default(),
            clocks,
            disks: alloc::boxed::Box::new(NoDiskBackends),
            prepared: BTreeMap::new(),
            start_times: BTreeMap::new(),
            next_prepared: 0,
        }
    }

    /// Serves guests' disks with `disks` from now on (start it before any guest has one).
    pub fn set_disk_backends(&mut self, disks: alloc::boxed::Box<dyn DiskBackends>) {
        self.disks = disks;
    }

    /// Runs `f` with the toolstack, the environment it acts through and the builder; the
    /// builder finishes `prepared` if `f` builds, and abandons it otherwise.
    #[allow(clippy::type_complexity)]
    fn lend<R>(
        &mut self,
        prepared: Option<PvhBuild>,
        f: impl FnOnce(
            &mut Toolstack,
            &mut Env<
                '_,
                LocalStore<'_, GrantMapper<'_, H, SF>>,
                Consoles<'_, GrantMapper<'_, H, CF>>,
                XenControl<'_, H>,
            >,
            &mut PvhBuilder<'_, H, B>,
        ) -> R,
    ) -> R {
        let hv = self.hv;
        let control = XenControl(hv);
        let mut store_mapper = GrantMapper {
            hv,
            frames: &mut self.store_frames,
            pages: &mut self.store_pages,
        };
        let mut store = LocalStore {
            xenstored: &mut self.xenstored,
            client: self.client,
            rings: &mut store_mapper,
        };
        let mut console_mapper = GrantMapper {
            hv,
            frames: &mut self.console_frames,
            pages: &mut self.console_pages,
        };
        let mut consoles = Consoles {
            set: &mut self.consoles,
            pages: &mut console_mapper,
        };
        let mut env = Env {
            store: &mut store,
            consoles: &mut consoles,
            control: &control,
            disks: &mut *self.disks,
        };
        let mut builder = PvhBuilder {
            hv,
            holes: &mut self.holes,
            options: self.options,
            prepared,
        };
        let result = f(&mut self.toolstack, &mut env, &mut builder);
        if let Some(build) = builder.prepared.take() {
            // The start was refused before it built (the toolstack's own checks): the
            // domain goes; the refusal is what the caller reports.
            let _refused_first = builder.abort(build, BuildError::Abandoned);
        }
        result
    }

    /// A builder over this host's hypervisor and holes, for one call.
    fn builder(&mut self) -> PvhBuilder<'_, H, B> {
        PvhBuilder {
            hv: self.hv,
            holes: &mut self.holes,
            options: self.options,
            prepared: None,
        }
    }

    /// Our ends of every guest channel (store and console), for the kernel to route their
    /// events to [`XenHost::service`].
    pub fn ports(&self) -> Vec<Port> {
        self.store_pages
            .store_rings
            .values()
            .map(GuestPage::local_port)
            .chain(self.console_pages.console_ports.values().copied())
            .collect()
    }

    /// Serves every guest's xenstore ring and console, hands xenstore changes to the
    /// toolstack's watches, and runs the toolstack's due timers.
    pub fn service(&mut self) -> Serviced {
        let now = (self.clocks.monotonic_ns)();
        let mut more = false;
        let hv = self.hv;
        self.xenstored.tick(now / 1_000_000);
        let xenstored = &mut self.xenstored;
        for (&domid, page) in &self.store_pages.store_rings {
            // Cut off (hostile or broken guest) or gone: xenstored keeps the reason.
            more |= serve_rounds(|| {
                let activity = xenstored.service_ring(domid, page).ok()?;
                if activity.notify {
                    // A failed send is a channel the dying guest closed.
                    let _ = send(hv, page.local_port());
                }
                Some(activity.more)
            });
        }
        let consoles: Vec<u16> = self.consoles.domains().collect();
        for domid in consoles {
            // A corrupt ring disconnects the console for good (kept in its state).
            let (set, ports) = (&mut self.consoles, &self.console_pages.console_ports);
            more |= serve_rounds(|| {
                let serviced = set.service(domid).ok()?;
                if serviced.notify {
                    if let Some(port) = ports.get(&domid) {
                        let _ = send(hv, *port);
                    }
                }
                Some(serviced.more_output)
            });
        }
        self.lend(None, |toolstack, env, _| {
            deliver_watch_events(toolstack, env, now);
            if toolstack.next_deadline().is_some_and(|d| d <= now) {
                toolstack.poll(env, now);
            }
        });
        Serviced { more }
    }

    /// `VIRQ_DOM_EXC` fired: find which domains shut down or died. An error is Xen's
    /// answer to the domain scan; the next event scans again.
    pub fn on_dom_exc(&mut self) -> Result<(), keel_xen::control::ControlError> {
        let now = (self.clocks.monotonic_ns)();
        self.lend(None, |toolstack, env, _| {
            let scanned = toolstack.on_dom_exc(env, now);
            deliver_watch_events(toolstack, env, now);
            scanned
        })
    }

    /// The toolstack's next timer, monotonic nanoseconds.
    pub fn next_deadline(&self) -> Option<u64> {
        self.toolstack.next_deadline()
    }

    /// What the XenAPI must hear; deliver them with no borrow of the host held.
    pub fn take_reports(&mut self) -> Vec<Report> {
        take_reports(&mut self.toolstack)
    }

    /// Bytes of host memory free for new domains (`sysctl physinfo`).
    pub fn free_memory(&self) -> u64 {
        keel_xen::sysctl::physinfo(self.hv)
            .map(|p| p.free_memory_bytes())
            .unwrap_or(0)
    }
}

/// The host as the XenAPI's guest backend, shared with the kernel's event task.
pub type SharedHost<H, B, SF, CF> = Rc<RefCell<XenHost<H, B, SF, CF>>>;

impl<H, B, SF, CF> GuestHost for SharedHost<H, B, SF, CF>
where
    H: Hypervisor + ?Sized + 'static,
    B: HoleFrames,
    SF: MapFrames,
    SF::View: Deref,
    <SF::View as Deref>::Target: RingPage,
    CF: MapFrames,
    CF::View: ConsolePage,
{
    type ConsoleError = ConsoleAttachError<GuestPageError>;
    type BuildError = BuildFailure;

    fn with_prepared<R>(
        &mut self,
        prepared: Option<PreparedStart>,
        f: impl FnOnce(
            &mut Toolstack,
            &mut HostEnv<'_, Self::ConsoleError>,
            &mut (dyn Builder<Spec = BootSpec, Error = Self::BuildError> + '_),
        ) -> R,
    ) -> R {
        let mut host = self.borrow_mut();
        let build = prepared.and_then(|p| host.prepared.remove(&p.0));
        let times = prepared.and_then(|p| Some((p.0, host.start_times.remove(&p.0)?)));
        let finish_from = (host.clocks.monotonic_ns)();
        let result = host.lend(build, |toolstack, env, builder| {
            let mut env: Env<
                '_,
                dyn Store + '_,
                dyn ConsoleBackend<Error = ConsoleAttachError<GuestPageError>> + '_,
                dyn DomainControl + '_,
                dyn DiskBackends,
            > = Env {
                store: env.store,
                consoles: env.consoles,
                control: env.control,
                disks: env.disks,
            };
            let mut builder = KeepSpec(builder);
            f(toolstack, &mut env, &mut builder)
        });
        if let Some((id, times)) = times {
            let end = (host.clocks.monotonic_ns)();
            log::info!(
                "guests: start {id}: {}",
                times.summary(end.saturating_sub(finish_from), end)
            );
        }
        result
    }

    fn prepare(
        &mut self,
        spec: &BootSpec,
        kernel_head: &[u8],
    ) -> Result<PreparedStart, BuildFailure> {
        let mut host = self.borrow_mut();
        let began = (host.clocks.monotonic_ns)();
        if host.prepared.len() >= MAX_PREPARED_STARTS {
            return Err(BuildFailure {
                error: PvhError::StartsBusy,
                memory_bytes: 0,
            });
        }
        let build = host
            .builder()
            .prepare(spec, kernel_head)
            .map_err(|error| BuildFailure {
                error,
                memory_bytes: memory_mib(spec) << 20,
            })?;
        let id = host.next_prepared;
        host.next_prepared += 1;
        host.prepared.insert(id, build);
        let prepared_ns = (host.clocks.monotonic_ns)().saturating_sub(began);
        host.start_times
            .insert(id, StartTimes::new(began, prepared_ns, kernel_head.len()));
        Ok(PreparedStart(id))
    }

    fn load(
        &mut self,
        start: PreparedStart,
        image: BootImage,
        bytes: &[u8],
    ) -> Result<(), BuildFailure> {
        let mut host = self.borrow_mut();
        let failure = |error| BuildFailure {
            error,
            memory_bytes: 0,
        };
        let mut build = host
            .prepared
            .remove(&start.0)
            .ok_or(failure(PvhError::NotPrepared))?;
        let began = (host.clocks.monotonic_ns)();
        let mut builder = host.builder();
        match builder.load(&mut build, image, bytes) {
            Ok(()) => {
                host.prepared.insert(start.0, build);
                let ns = (host.clocks.monotonic_ns)().saturating_sub(began);
                if let Some(times) = host.start_times.get_mut(&start.0) {
                    times.loaded(image, bytes.len(), ns);
                }
                Ok(())
            }
            Err(e) => {
                let failure = failure(builder.abort(build, e));
                host.start_times.remove(&start.0);
                Err(failure)
            }
        }
    }

    fn abandon(&mut self, start: PreparedStart) {
        let mut host = self.borrow_mut();
        host.start_times.remove(&start.0);
        if let Some(build) = host.prepared.remove(&start.0) {
            // Nobody waits for this build's outcome.
            let _abandoned = host.builder().abort(build, BuildError::Abandoned);
        }
    }

    fn monotonic_ns(&self) -> u64 {
        (self.borrow().clocks.monotonic_ns)()
    }

    fn unix_ns(&self) -> u64 {
        (self.borrow().clocks.unix_ns)()
    }

    fn free_memory(&self) -> u64 {
        self.borrow().free_memory()
    }

    fn build_error(&self, failure: BuildFailure) -> GuestError {
        match failure.error {
            PvhError::Uuid => GuestError::Failed("bad VM UUID for the domain builder".into()),
            PvhError::StartsBusy => GuestError::StartsBusy,
            PvhError::NotPrepared => {
                GuestError::Failed("no such start being prepared (abandoned?)".into())
            }
            PvhError::Build(BuildError::XenOutOfMemory { .. }) => GuestError::NotEnoughMemory {
                needed: failure.memory_bytes,
                available: self.borrow().free_memory(),
            },
            PvhError::Build(
                e @ (BuildError::Kernel(_) | BuildError::Initrd(_) | BuildError::TooBig { .. }),
            ) => GuestError::InvalidImage {
                reason: format!("{e}"),
            },
            PvhError::Build(e) => GuestError::Failed(format!("domain builder: {e}")),
        }
    }
}

/// A failed build and the memory it asked for (for `HOST_NOT_ENOUGH_FREE_MEMORY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFailure {
    pub error: PvhError,
    pub memory_bytes: u64,
}

/// The PVH builder, keeping the memory asked for beside a failure.
struct KeepSpec<'b, 'a, H: ?Sized, B>(&'b mut PvhBuilder<'a, H, B>);

impl<H: Hypervisor + ?Sized, B: HoleFrames> Builder for KeepSpec<'_, '_, H, B> {
    type Spec = BootSpec;
    type Error = BuildFailure;

    fn build(&mut self, spec: &BootSpec) -> Result<crate::BuiltDomain, BuildFailure> {
        self.0.build(spec).map_err(|error| BuildFailure {
            error,
            memory_bytes: memory_mib(spec) << 20,
        })
    }
}

/// The XenAPI's guest backend over a shared host.
pub fn guests<H, B, SF, CF>(host: &SharedHost<H, B, SF, CF>) -> Guests<SharedHost<H, B, SF, CF>>
where
    H: Hypervisor + ?Sized + 'static,
    B: HoleFrames,
    SF: MapFrames,
    SF::View: Deref,
    <SF::View as Deref>::Target: RingPage,
    CF: MapFrames,
    CF::View: ConsolePage,
{
    Guests(Rc::clone(host))
}
