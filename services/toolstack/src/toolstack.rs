//! The set of guests and the operations on them: start (build, xenstore skeleton,
//! introduce, console, unpause), pause/unpause, clean shutdown, destroy, and what happens
//! when Xen reports a domain shut down or dead.
//!
//! Driven from outside: by calls, by [`Toolstack::on_dom_exc`] when `VIRQ_DOM_EXC` fires,
//! by [`Toolstack::on_watch`] when a watch the toolstack registered fires, and by
//! [`Toolstack::poll`] at [`Toolstack::next_deadline`]. Asynchronous outcomes come out as
//! [`Event`]s from [`Toolstack::pop_event`]. Every domain `start` built ends with exactly one
//! `Destroyed` or `Vanished` event.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use keel_xen::control::ControlError;

use crate::builder::{Builder, BuiltDomain, ConsoleBackend};
use crate::control::{DestroyProgress, DomainControl};
use crate::devices::{plug, unplug_all, AttachedDisk, DeviceError, DiskBackends, Vbd};
use crate::domain::{
    Domain, ExitReason, Observation, Phase, ShutdownFailure, ShutdownKind, StateError, Timeouts,
};
use crate::skeleton::{
    check_xenstore_data_key, cpu_availability, domain_path, shutdown_path, skeleton, vm_path,
    Identity, XenstoreDataError,
};
use crate::store::{Store, StoreError};

/// Token of every watch the toolstack registers; the glue routes watch events carrying it
/// to [`Toolstack::on_watch`].
pub const WATCH_TOKEN: &str = "keel-toolstack";

/// What the toolstack acts through, lent for the duration of one call.
pub struct Env<'a, S: ?Sized, C: ?Sized, D: ?Sized, K: ?Sized = dyn DiskBackends> {
    pub store: &'a mut S,
    pub consoles: &'a mut C,
    pub control: &'a D,
    /// The disk backends (blkback) serving guests' vbds.
    pub disks: &'a mut K,
}

/// A guest to start.
#[derive(Debug, Clone, Copy)]
pub struct StartRequest<'a, Spec> {
    pub uuid: [u8; 16],
    pub name: &'a str,
    /// Handed to the builder as it is.
    pub spec: &'a Spec,
    /// Leave the domain paused after setting it up (XenAPI `VM.start(paused=true)`).
    pub start_paused: bool,
    /// Wall-clock time for `/vm/<uuid>/start_time`, nanoseconds since the Unix epoch.
    pub start_time_unix_ns: u64,
    /// vCPUs online at boot (XenAPI `VCPUs_at_startup`), 1 up to the built count.
    pub vcpus_at_startup: u32,
    /// Extra nodes under `/local/domain/<id>` (XenAPI `VM.xenstore_data`): relative keys,
    /// not under the toolstack's own nodes (see `skeleton::check_xenstore_data_key`).
    pub xenstore_data: &'a [(String, String)],
    /// Disks attached before the domain is unpaused (devids distinct).
    pub disks: &'a [Vbd],
}

/// Why `start` failed. After a `Build` failure no domain exists; after the others the
/// domain is being torn down and a `Destroyed` event follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError<BE, CE> {
    /// Refused before building: the VM (by UUID) already has domain `0`, whose
    /// `/vm/<uuid>` a second domain would take over.
    AlreadyRunning(u16),
    /// Refused before building: an `xenstore_data` key.
    InvalidXenstoreData(XenstoreDataError),
    /// `vcpus_at_startup` is 0 (refused before building) or above the vCPUs built.
    InvalidVcpusAtStartup {
        requested: u32,
        built: u32,
    },
    Build(BE),
    /// The builder returned a domain id the toolstack already manages (a builder bug);
    /// nothing was done to either domain.
    DomidInUse(u16),
    Store {
        domid: u16,
        error: StoreError,
    },
    Introduce {
        domid: u16,
        error: StoreError,
    },
    Console {
        domid: u16,
        error: CE,
    },
    Unpause {
        domid: u16,
        error: ControlError,
    },
    /// Refused before building: two disks with one devid.
    DuplicateDisk(u32),
    /// A disk could not be attached (its nodes or its backend).
    Disk {
        domid: u16,
        error: DeviceError,
    },
}

/// Why a lifecycle call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleError {
    NoSuchDomain(u16),
    /// A memory target above `memory/static-max` (KiB).
    MemoryTargetTooHigh {
        requested_kib: u64,
        static_max_kib: u64,
    },
    /// A vCPU count of 0 or above the vCPUs the domain was built with.
    VcpusOutOfRange {
        requested: u32,
        max: u32,
    },
    State(StateError),
    Store(StoreError),
    Control(ControlError),
}

impl From<StateError> for LifecycleError {
    fn from(e: StateError) -> Self {
        LifecycleError::State(e)
    }
}

/// A step of tearing a domain down that went wrong. Teardown goes on past each of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CleanupProblem {
    /// `XS_RELEASE` failed.
    Release(StoreError),
    /// Removing `/local/domain/<id>` failed.
    RemoveDomainPath(StoreError),
    /// Removing `/vm/<uuid>` failed.
    RemoveVmPath(StoreError),
    /// `destroydomain` failed with something other than `EAGAIN` (it is retried).
    Destroy(ControlError),
    /// Removing a device's backend or frontend directory failed.
    RemoveDevice(StoreError),
}

/// An asynchronous outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub domid: u16,
    pub uuid: [u8; 16],
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The guest cleared `control/shutdown`: it is shutting down.
    ShutdownAcknowledged(ShutdownKind),
    /// A clean shutdown failed; the domain was left as it is.
    ShutdownFailed(ShutdownKind, ShutdownFailure),
    /// Xen reports the domain shut down. The caller applies `actions_after_*` (destroy,
    /// and start again for a restart); until then it stays, shut down.
    Exited(ExitReason),
    /// A domain we destroyed is gone from Xen; its store nodes and console are gone too.
    Destroyed { problems: Vec<CleanupProblem> },
    /// A domain died without us destroying it (someone else did); we cleaned up after it.
    Vanished { problems: Vec<CleanupProblem> },
    /// A hot-unplugged disk is gone: its backend stopped, its nodes removed; `forced` when
    /// the guest did not close it in time (or `force` was asked).
    DiskDetached {
        devid: u32,
        forced: bool,
        problems: Vec<CleanupProblem>,
    },
}

#[derive(Debug)]
pub(crate) struct Managed {
    pub(crate) domain: Domain,
    built: BuiltDomain,
    problems: Vec<CleanupProblem>,
    /// A `destroydomain` error was already recorded (recorded once, retried always).
    destroy_error_seen: bool,
    /// Its vbds by devid (`devices`).
    pub(crate) disks: BTreeMap<u32, AttachedDisk>,
}

/// The guests of this host.
#[derive(Debug, Default)]
pub struct Toolstack {
    pub(crate) domains: BTreeMap<u16, Managed>,
    pub(crate) events: VecDeque<Event>,
    timeouts: Timeouts,
}

impl Toolstack {
    pub fn new(timeouts: Timeouts) -> Self {
        Toolstack {
            domains: BTreeMap::new(),
            events: VecDeque::new(),
            timeouts,
        }
    }

    pub fn domain(&self, domid: u16) -> Option<&Domain> {
        self.domains.get(&domid).map(|m| &m.domain)
    }

    pub fn domains(&self) -> impl Iterator<Item = &Domain> {
        self.domains.values().map(|m| &m.domain)
    }

    /// The domain of the VM with this UUID, if any, not counting one being torn down
    /// (its store nodes are already gone; a new domain may start for the VM meanwhile).
    pub fn find_by_uuid(&self, uuid: &[u8; 16]) -> Option<u16> {
        self.domains
            .values()
            .find(|m| {
                m.domain.uuid() == uuid && !matches!(m.domain.phase(), Phase::Destroying { .. })
            })
            .map(|m| m.domain.domid())
    }

    pub fn pop_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Toolstack::poll`] next has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.domains
            .values()
            .filter_map(|m| m.domain.deadline())
            .chain(self.next_disk_deadline())
            .min()
    }

    fn managed(&mut self, domid: u16) -> Result<&mut Managed, LifecycleError> {
        self.domains
            .get_mut(&domid)
            .ok_or(LifecycleError::NoSuchDomain(domid))
    }

    fn emit(&mut self, domain: &Domain, kind: EventKind) {
        self.events.push_back(Event {
            domid: domain.domid(),
            uuid: *domain.uuid(),
            kind,
        });
    }

    /// Builds and starts a guest; returns its domain id.
    pub fn start<S, C, D, B>(
        &mut self,
        env: &mut Env<'_, S, C, D>,
        builder: &mut B,
        request: &StartRequest<'_, B::Spec>,
        now: u64,
    ) -> Result<u16, StartError<B::Error, C::Error>>
    where
        S: Store + ?Sized,
        C: ConsoleBackend + ?Sized,
        D: DomainControl + ?Sized,
        B: Builder + ?Sized,
    {
        if let Some(domid) = self.find_by_uuid(&request.uuid) {
            return Err(StartError::AlreadyRunning(domid));
        }
        for (key, _) in request.xenstore_data {
            check_xenstore_data_key(key).map_err(StartError::InvalidXenstoreData)?;
        }
        if request.vcpus_at_startup == 0 {
            return Err(StartError::InvalidVcpusAtStartup {
                requested: 0,
                built: 0,
            });
        }
        for (i, disk) in request.disks.iter().enumerate() {
            if request.disks[..i].iter().any(|d| d.devid == disk.devid) {
                return Err(StartError::DuplicateDisk(disk.devid));
            }
        }
        let built = builder.build(request.spec).map_err(StartError::Build)?;
        let domid = built.domid;
        if self.domains.contains_key(&domid) {
            return Err(StartError::DomidInUse(domid));
        }
        self.domains.insert(
            domid,
            Managed {
                domain: Domain::new(domid, request.uuid, String::from(request.name)),
                built,
                problems: Vec::new(),
                destroy_error_seen: false,
                disks: BTreeMap::new(),
            },
        );
        let result = Self::bring_up(env, &built, request)
            .and_then(|()| self.attach_start_disks(env, domid, request.disks))
            .and_then(|()| {
                if request.start_paused {
                    return Ok(());
                }
                env.control
                    .unpause(domid)
                    .map_err(|error| StartError::Unpause { domid, error })
            });
        match result {
            Ok(()) => {
                if let Ok(m) = self.managed(domid) {
                    m.domain.set_paused(request.start_paused);
                }
                Ok(domid)
            }
            Err(e) => {
                self.tear_down(env, domid, true, now);
                Err(e)
            }
        }
    }

    fn bring_up<S, C, D, Spec, BE>(
        env: &mut Env<'_, S, C, D>,
        built: &BuiltDomain,
        request: &StartRequest<'_, Spec>,
    ) -> Result<(), StartError<BE, C::Error>>
    where
        S: Store + ?Sized,
        C: ConsoleBackend + ?Sized,
        D: DomainControl + ?Sized,
    {
        let domid = built.domid;
        if request.vcpus_at_startup > built.vcpus {
            return Err(StartError::InvalidVcpusAtStartup {
                requested: request.vcpus_at_startup,
                built: built.vcpus,
            });
        }
        let store_error = |error| StartError::Store { domid, error };
        let identity = Identity {
            uuid: &request.uuid,
            name: request.name,
            start_time_unix_ns: request.start_time_unix_ns,
            vcpus_online: request.vcpus_at_startup,
            xenstore_data: request.xenstore_data,
        };
        // Leftovers of an earlier domain with this id or this VM must not leak into this one.
        env.store.rm(&domain_path(domid)).map_err(store_error)?;
        env.store.rm(&vm_path(&request.uuid)).map_err(store_error)?;
        for node in skeleton(built, &identity) {
            match &node.value {
                Some(v) => env.store.write(&node.path, v.as_bytes()),
                None => env.store.mkdir(&node.path),
            }
            .map_err(store_error)?;
            if let Some(perms) = &node.perms {
                env.store
                    .set_perms(&node.path, perms)
                    .map_err(store_error)?;
            }
        }
        env.store
            .introduce(domid, built.store_gfn, built.store_port)
            .map_err(|error| StartError::Introduce { domid, error })?;
        env.consoles
            .attach(domid, built.console_port, built.console_gfn)
            .map_err(|error| StartError::Console { domid, error })
    }

    /// Attaches a new domain's disks (recorded one by one, so a failure's teardown stops
    /// the backends already started).
    fn attach_start_disks<S, C, D, BE, CE>(
        &mut self,
        env: &mut Env<'_, S, C, D>,
        domid: u16,
        disks: &[Vbd],
    ) -> Result<(), StartError<BE, CE>>
    where
        S: Store + ?Sized,
        C: ?Sized,
        D: ?Sized,
    {
        for vbd in disks {
            plug(env, domid, vbd).map_err(|error| StartError::Disk { domid, error })?;
            if let Some(m) = self.domains.get_mut(&domid) {
                m.disks.insert(
                    vbd.devid,
                    AttachedDisk {
                        vbd: vbd.clone(),
                        detach_deadline: None,
                    },
                );
            }
        }
        Ok(())
    }

    /// `XEN_DOMCTL_pausedomain`.
    pub fn pause<S: ?Sized, C: ?Sized, D: DomainControl + ?Sized>(
        &mut self,
        env: &mut Env<'_, S, C, D>,
        domid: u16,
    ) -> Result<(), LifecycleError> {
        let m = self.managed(domid)?;
        m.domain.check_can_pause()?;
        env.control.pause(domid).map_err(LifecycleError::Control)?;
        m.domain.set_paused(true);
        Ok(())
    }

    /// `XEN_DOMCTL_unpausedomain`.
    pub fn unpause<S: ?Sized, C: ?Sized, D: DomainControl + ?Sized>(
        &mut self,
        env: &mut Env<'_, S, C, D>,
        domid: u16,
    ) -> Result<(), LifecycleError> {
        let m = self.managed(domid)?;
        m.domain.check_can_pause()?;
        env.control
            .unpause(domid)
            .map_err(LifecycleError::Control)?;
        m.domain.set_paused(false);
        Ok(())
    }

    /// Sets the balloon target (`memory/target`, KiB) of a live domain.
    pub fn set_memory_target<S: Store + ?Sized, C: ?Sized, D: ?Sized>(
        &mut self,
        env: &mut Env<'_, S, C, D>,
        domid: u16,
        target_kib: u64,
    ) -> Result<(), LifecycleError> {
        let m = self.managed(domid)?;
        m.domain.check_can_pause()?;
        let static_max_kib = m.built.memory_static_max_kib;
        if target_kib > static_max_kib {
            return Err(LifecycleError::MemoryTargetTooHigh {
                requested_kib: target_kib,
                static_max_kib,
            });
        }
        env.store
            .write(
                &alloc::format!("{}/memory/target", domain_path(domid)),
                alloc::format!("{target_kib}").as_bytes(),
            )
            .map_err(LifecycleError::Store)
    }

    /// Brings vCPUs `0..count` online and the rest offline (`cpu/<n>/availability`; the
    /// guest's vCPU hotplug driver acts on it).
    pub fn set_vcpus_online<S: Store + ?Sized, C: ?Sized, D: ?Sized>(
        &mut self,
        env: &mut Env<'_, S, C, D>,
        domid: u16,
        count: u32,
    ) -> Result<(), LifecycleError> {
        let m = self.managed(domid)?;
        m.domain.check_can_pause()?;
        let max = m.built.vcpus;
        if count == 0 || count > max {
            return Err(LifecycleError::VcpusOutOfRange {
                requested: count,
                max,
            });
        }
        for cpu in 0..max {
            env.store
                .write(
                    &alloc::format!("{}/cpu/{cpu}/availability", domain_path(domid)),
                    cpu_availability(cpu < count).as_bytes(),
                )
                .map_err(LifecycleError::Store)?;
        }
        Ok(())
    }

    /// Clean shutdown: asks the guest through `control/shutdown`. The outcome comes later:
    /// `ShutdownAcknowledged` then `Exited`, or `ShutdownFailed`.
    pub fn request_shutdown<S: Store + ?Sized, C: ?Sized, D: ?Sized>(
        &mut self,
        env: &mut Env<'_, S, C, D>,
        domid: u16,
        kind: ShutdownKind,
        now: u64,
    ) -> Result<(), LifecycleError> {
        let timeouts = self.timeouts;
        let m = self.managed(domid)?;
        m.domain.check_can_request_shutdown()?;
        let path = shutdown_path(domid);
        env.store
            .write(&path, kind.request().as_bytes())
            .map_err(LifecycleError::Store)?;
        m.domain.shutdown_requested(kind, now, &timeouts);
        // Without the watch the acknowledgement is still seen, by `poll`.
        let _ = env.store.watch(&path, WATCH_TOKEN);
        Ok(())
    }

    /// Hard shutdown: tears the domain down now. `Destroyed` follows once Xen has let go
    /// of it. Destroying a domain already being destroyed does nothing.
    pub fn destroy<S: Store + ?Sized, C: ConsoleBackend + ?Sized, D: DomainControl + ?Sized>(
        &mut self,
        env: &mut Env<'_, S, C, D>,
        domid: u16,
        now: u64,
    ) -> Result<(), LifecycleError> {
        let m = self.managed(domid)?;
        if matches!(m.domain.phase(), Phase::Destroying { .. }) {
            return Ok(());
        }
        self.tear_down(env, domid, true, now);
        Ok(())
    }

    /// Removes everything of `domid` but the Xen domain, asks Xen to destroy it when
    /// `requested`, and finishes at once if it is already gone.
    fn tear_down<S: Store + ?Sized, C: ConsoleBackend + ?Sized, D: DomainControl + ?Sized>(
        &mut self,
        env: &mut Env<'_, S, C, D>,
        domid: u16,
        requested: bool,
        now: u64,
    ) {
        let timeouts = self.timeouts;
        let Some(m) = self.domains.get_mut(&domid) else {
            return;
        };
        if matches!(m.domain.phase(), Phase::ShutdownRequested { .. }) {
            let _ = env.store.unwatch(&shutdown_path(domid), WATCH_TOKEN);
        }
        // The console mapping and channel go first, with the disk backends' grant mappings:
        // Xen cannot finish a domain dom0 still maps.
        env.consoles.detach(domid);
        let device_problems = unplug_all(env, domid, &mut m.disks);
        m.problems.extend(device_problems);
        if let Err(e) = env.store.release(domid) {
            // Never introduced (a start that failed early) is not a problem.
            if e != StoreError::NotFound {
                m.problems.push(CleanupProblem::Release(e));
            }
        }
        if let Err(e) = env.store.rm(&domain_path(domid)) {
            m.problems.push(CleanupProblem::RemoveDomainPath(e));
        }
        if let Err(e) = env.store.rm(&vm_path(m.domain.uuid())) {
            m.problems.push(CleanupProblem::RemoveVmPath(e));
        }
        // Due at once: the first attempt happens right here.
        m.domain.destroying(
            requested,
            now,
            &Timeouts {
                destroy_retry_ns: 0,
                ..timeouts
            },
        );
        self.advance_destroy(env, domid, now);
    }

    /// One `destroydomain` attempt (if ours) and a check whether the domain is gone.
    fn advance_destroy<S: ?Sized, C: ?Sized, D: DomainControl + ?Sized>(
        &mut self,
        env: &mut Env<'_, S, C, D>,
        domid: u16,
        now: u64,
    ) {
        let timeouts = self.timeouts;
        let Some(m) = self.domains.get_mut(&domid) else {
            return;
        };
        let Phase::Destroying { requested, .. } = m.domain.phase() else {
            return;
        };
        if requested {
            match env.control.destroy(domid) {
                Ok(DestroyProgress::Done | DestroyProgress::Again) => {}
                // Already gone: the check below finds out.
                Err(ControlError::Xen(keel_xen::XenError::ESRCH)) => {}
                Err(e) => {
                    if !m.destroy_error_seen {
                        m.destroy_error_seen = true;
                        m.problems.push(CleanupProblem::Destroy(e));
                    }
                }
            }
        }
        let info = match env.control.info(domid) {
            Ok(info) => info,
            // Cannot tell: try again later.
            Err(_) => {
                m.domain.destroying(requested, now, &timeouts);
                return;
            }
        };
        match m.domain.observe(info.as_ref()) {
            Observation::Gone => self.finish(domid),
            _ => m.domain.destroying(requested, now, &timeouts),
        }
    }

    fn finish(&mut self, domid: u16) {
        let Some(m) = self.domains.remove(&domid) else {
            return;
        };
        let requested = matches!(
            m.domain.phase(),
            Phase::Destroying {
                requested: true,
                ..
            }
        );
        let kind = if requested {
            EventKind::Destroyed {
                problems: m.problems,
            }
        } else {
            EventKind::Vanished {
                problems: m.problems,
            }
        };
        self.emit(&m.domain, kind);
    }

    /// `VIRQ_DOM_EXC` fired: looks at every domain. Returns the first `getdomaininfo`
    /// failure (the other domains are still looked at; the failed ones on the next event).
    pub fn on_dom_exc<S: Store + ?Sized, C: ConsoleBackend + ?Sized, D: DomainControl + ?Sized>(
        &mut self,
        env: &mut Env<'_, S, C, D>,
        now: u64,
    ) -> Result<(), ControlError> {
        let mut first_error = None;
        let ids: Vec<u16> = self.domains.keys().copied().collect();
        for domid in ids {
            let Some(m) = self.domains.get_mut(&domid) else {
                continue;
            };
            if matches!(m.domain.phase(), Phase::Destroying { .. }) {
                self.advance_destroy(env, domid, now);
                continue;
            }
            let info = match env.control.info(domid) {
                Ok(info) => info,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            let was_requested = matches!(m.domain.phase(), Phase::ShutdownRequested { .. });
            match m.domain.observe(info.as_ref()) {
                Observation::Exited(reason) => {
                    env.store.domain_exited(domid);
                    if was_requested {
                        let _ = env.store.unwatch(&shutdown_path(domid), WATCH_TOKEN);
                    }
                    let domain = m.domain.clone();
                    self.emit(&domain, EventKind::Exited(reason));
                }
                Observation::Vanishing => self.tear_down(env, domid, false, now),
                Observation::Gone | Observation::Unchanged => {}
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// A watch with [`WATCH_TOKEN`] fired on `path`.
    pub fn on_watch<S: Store + ?Sized, C: ?Sized, D: ?Sized>(
        &mut self,
        env: &mut Env<'_, S, C, D>,
        path: &str,
        now: u64,
    ) {
        let target = self
            .domains
            .values()
            .find(|m| {
                matches!(m.domain.phase(), Phase::ShutdownRequested { .. })
                    && shutdown_path(m.domain.domid()) == path
            })
            .map(|m| m.domain.domid());
        if let Some(domid) = target {
            self.check_acknowledgement(env, domid, now);
        }
        self.on_disk_watch(env, path);
    }

    fn check_acknowledgement<S: Store + ?Sized, C: ?Sized, D: ?Sized>(
        &mut self,
        env: &mut Env<'_, S, C, D>,
        domid: u16,
        now: u64,
    ) {
        let timeouts = self.timeouts;
        let path = shutdown_path(domid);
        // A failed read is no acknowledgement; the deadline still applies.
        let Ok(value) = env.store.read(&path) else {
            return;
        };
        let Some(m) = self.domains.get_mut(&domid) else {
            return;
        };
        if let Some(kind) = m
            .domain
            .shutdown_node_read(value.as_deref(), now, &timeouts)
        {
            let _ = env.store.unwatch(&path, WATCH_TOKEN);
            let domain = m.domain.clone();
            self.emit(&domain, EventKind::ShutdownAcknowledged(kind));
        }
    }

    /// Timers: pending acknowledgements are re-read, shutdown deadlines reported, dying
    /// domains retried. Call at [`Toolstack::next_deadline`] (earlier calls are harmless).
    pub fn poll<S: Store + ?Sized, C: ConsoleBackend + ?Sized, D: DomainControl + ?Sized>(
        &mut self,
        env: &mut Env<'_, S, C, D>,
        now: u64,
    ) {
        self.poll_disks(env, now);
        let ids: Vec<u16> = self.domains.keys().copied().collect();
        for domid in ids {
            let Some(phase) = self.domain(domid).map(Domain::phase) else {
                continue;
            };
            match phase {
                Phase::ShutdownRequested { .. } => {
                    self.check_acknowledgement(env, domid, now);
                }
                Phase::Destroying { .. } => {
                    if self.domain(domid).is_some_and(|d| d.destroy_due(now)) {
                        self.advance_destroy(env, domid, now);
                    }
                    continue;
                }
                _ => {}
            }
            let Some(m) = self.domains.get_mut(&domid) else {
                continue;
            };
            let was_requested = matches!(m.domain.phase(), Phase::ShutdownRequested { .. });
            if let Some((kind, failure)) = m.domain.on_timer(now) {
                if was_requested {
                    let _ = env.store.unwatch(&shutdown_path(domid), WATCH_TOKEN);
                }
                let domain = m.domain.clone();
                self.emit(&domain, EventKind::ShutdownFailed(kind, failure));
            }
        }
    }
}
