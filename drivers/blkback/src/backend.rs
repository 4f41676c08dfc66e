//! [`Blkback`]: one virtual block device, from the toolstack's backend directory to a
//! connected ring set, and the API the kernel drives.
//!
//! The xenbus state machine follows Linux's `xen-blkback/xenbus.c`:
//!
//! ```text
//! start            publish features and disk properties, watch, -> InitWait (2)
//! fe Initialised/  read protocol, queues, ring-page-order, ring-ref(s), event-channel(s);
//!    Connected     map rings, bind channels -> Connected (4)      (failure: fatal)
//! fe Closing       disconnect -> Closing (5)
//! fe Closed/gone   disconnect -> Closed (6)
//! fe Initialising  while Closed (GRUB's blkfront hands over to the kernel's): -> InitWait
//!                  (fe Initialised while Closed: the same, coalesced: connect at once)
//! online = 0       (toolstack unplug) disconnect -> Closing, Closed once the fe is closed
//! fatal            "<errno> <reason>" at /local/domain/0/error/<backend path>/error and
//!                  <backend>/error, disconnect -> Closing
//! ```
//!
//! The backend re-reads every node it depends on at each watch event, so spurious or
//! coalesced events are harmless.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::ops::Deref;

use keel_xen::evtchn::{bind_interdomain, close, send, Port};
use keel_xen::grant_table::GrantRef;
use keel_xen::hypercall::DOMID_FIRST_RESERVED;
use keel_xen::{Hypervisor, XenError};

use crate::grant_io::GrantIo;
use crate::io::{Io, Limits, Offer, Progress, Queue, Services, Stats, Violation};
use crate::persistent::{PersistentGrants, PersistentIo};
use crate::ring::{BlkRing, PageWords, RingError, RingFrames, RingPages, MAX_RING_PAGE_ORDER};
use crate::store::{read_state, read_u64, ReadError, StoreError, XenbusState, Xenstore};
use crate::target::{BlockTarget, Geometry};
use crate::wire::{vdisk, Abi, SECTOR_SIZE};

/// How the toolstack set the device up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The frontend's domain.
    pub domid: u16,
    /// The virtual device number (`xvda` = 51712).
    pub devid: u32,
    /// `/local/domain/0/backend/vbd/<domid>/<devid>`.
    pub backend_path: String,
    /// `/local/domain/<domid>/device/vbd/<devid>`.
    pub frontend_path: String,
    /// Token of the watches this device registers (the glue routes their events here).
    pub watch_token: String,
    pub limits: Limits,
    /// `multi-queue-max-queues`.
    pub max_queues: u32,
    /// `max-ring-page-order` (at most [`MAX_RING_PAGE_ORDER`]).
    pub max_ring_page_order: u32,
    /// Grants kept mapped for a frontend using `feature-persistent` (0: not offered).
    /// Each takes a dom0 frame from [`RingFrames`] while the device is connected.
    pub max_persistent_grants: usize,
}

impl Config {
    /// The standard paths for a vbd of `domid` served by dom0.
    pub fn vbd(domid: u16, devid: u32) -> Self {
        Config {
            domid,
            devid,
            backend_path: format!("/local/domain/0/backend/vbd/{domid}/{devid}"),
            frontend_path: format!("/local/domain/{domid}/device/vbd/{devid}"),
            watch_token: format!("blkback/{domid}/{devid}"),
            limits: Limits::default(),
            max_queues: 4,
            max_ring_page_order: MAX_RING_PAGE_ORDER,
            // Linux blkback's default: a one-page ring's 32 requests of 32 indirect
            // segments and their indirect page each, the whole pool blkfront reuses. With
            // 256, a guest at queue depth 32 had 3/4 of its pages copied by the hypervisor.
            max_persistent_grants: 1056,
        }
    }
}

/// The configuration cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// dom0 or a reserved id: grant copies would name ourselves.
    Domain(u16),
    MaxRingPageOrder(u32),
    MaxQueues(u32),
    /// Paths must be absolute, without a trailing slash.
    Path(String),
}

/// Why a connection could not be made (written to xenstore, then the device closes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// `protocol` other than `x86_64-abi` or `x86_32-abi`.
    Protocol(String),
    /// `multi-queue-num-queues` is 0 or above the maximum.
    Queues(u64),
    /// `ring-page-order` above the maximum.
    RingPageOrder(u64),
    /// A required node is missing.
    Missing(String),
    /// A node's value is not a number in range.
    Malformed(String),
    /// The store failed.
    Store(String),
    /// A ring could not be mapped.
    Ring { queue: usize, error: RingError },
    /// An event channel could not be bound.
    Bind { queue: usize, error: XenError },
}

/// Why the device was shut down by the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Connect(ConnectError),
    /// The frontend broke the ring protocol.
    Ring(Violation),
}

impl Failure {
    /// Linux's errno for it, as `xenbus_dev_fatal` writes it.
    pub fn errno(&self) -> i64 {
        match self {
            Failure::Connect(ConnectError::Ring {
                error: RingError::NoFrames,
                ..
            }) => 12,
            Failure::Connect(ConnectError::Ring { .. }) => 14,
            Failure::Connect(ConnectError::Bind { error, .. }) => error.errno(),
            Failure::Connect(ConnectError::Missing(_)) => 2,
            Failure::Connect(ConnectError::Store(_)) => 5,
            Failure::Connect(_) => 22,
            Failure::Ring(_) => 71, // EPROTO
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(e) => match e {
                ConnectError::Protocol(p) => write!(f, "unknown fe protocol {p}"),
                ConnectError::Queues(n) => write!(f, "invalid number of queues {n}"),
                ConnectError::RingPageOrder(o) => write!(f, "invalid ring-page-order {o}"),
                ConnectError::Missing(p) => write!(f, "reading {p}"),
                ConnectError::Malformed(p) => write!(f, "malformed {p}"),
                ConnectError::Store(e) => write!(f, "xenstore: {e}"),
                ConnectError::Ring { queue, error } => {
                    write!(f, "mapping ring of queue {queue}: {error:?}")
                }
                ConnectError::Bind { queue, error } => {
                    write!(f, "binding event channel of queue {queue}: {error}")
                }
            },
            Failure::Ring(Violation { queue, error }) => {
                write!(f, "ring protocol violation on queue {queue}: {error:?}")
            }
        }
    }
}

/// What a call needs, lent for its duration.
pub struct Env<'a, H: ?Sized, F> {
    pub hv: &'a H,
    /// Dom0 frames for the rings.
    pub frames: &'a mut F,
    pub store: &'a mut dyn Xenstore,
    pub grants: &'a mut dyn GrantIo,
    /// The disk (a VDI through the storage service).
    pub target: &'a mut dyn BlockTarget,
    /// Monotonic time of the call in microseconds: requests' latencies ([`Stats`]).
    pub now_us: u64,
}

/// One virtual block device.
pub struct Blkback<P> {
    config: Config,
    state: XenbusState,
    started: bool,
    /// The frontend's state node has existed (its absence now means it went away).
    seen_frontend: bool,
    io: Io,
    queues: Vec<Queue<P>>,
    /// The frontend asked for persistent grants (and they are offered).
    persistent: bool,
    grants: PersistentGrants<P>,
    failure: Option<Failure>,
    leaked_frames: usize,
}

fn store_err(e: StoreError) -> ConnectError {
    ConnectError::Store(format!("{e:?}"))
}

fn read_num<S: Xenstore + ?Sized>(
    store: &mut S,
    path: String,
    max: u64,
) -> Result<Option<u64>, ConnectError> {
    match read_u64(store, &path) {
        Ok(Some(n)) if n > max => Err(ConnectError::Malformed(path)),
        Ok(v) => Ok(v),
        Err(ReadError::Malformed) => Err(ConnectError::Malformed(path)),
        Err(ReadError::Store(e)) => Err(store_err(e)),
    }
}

fn required<S: Xenstore + ?Sized>(
    store: &mut S,
    path: String,
    max: u64,
) -> Result<u64, ConnectError> {
    let missing = ConnectError::Missing(path.clone());
    read_num(store, path, max)?.ok_or(missing)
}

impl<P: Deref<Target = PageWords>> Blkback<P> {
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        if config.domid == 0 || config.domid >= DOMID_FIRST_RESERVED {
            return Err(ConfigError::Domain(config.domid));
        }
        if config.max_ring_page_order > MAX_RING_PAGE_ORDER {
            return Err(ConfigError::MaxRingPageOrder(config.max_ring_page_order));
        }
        if config.max_queues == 0 || config.max_queues > 64 {
            return Err(ConfigError::MaxQueues(config.max_queues));
        }
        for p in [&config.backend_path, &config.frontend_path] {
            if !p.starts_with('/') || p.ends_with('/') {
                return Err(ConfigError::Path(p.clone()));
            }
        }
        let offer = Offer {
            sectors: 0,
            read_only: true,
            flush: false,
            discard: false,
            discard_secure: false,
        };
        Ok(Blkback {
            io: Io::new(config.domid, config.limits, offer),
            state: XenbusState::Initialising,
            started: false,
            seen_frontend: false,
            queues: Vec::new(),
            persistent: false,
            grants: PersistentGrants::new(config.max_persistent_grants),
            failure: None,
            leaked_frames: 0,
            config,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The state this backend last published.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    /// Why the backend shut the device down, if it did.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// The event channels of the connected rings: an event on any of them means
    /// [`Blkback::poll`].
    pub fn ports(&self) -> Vec<Port> {
        self.each_port().collect()
    }

    /// [`Blkback::ports`] without a list: for callers that gather them with fallible
    /// allocation ([`Blkback::port_count`] of them).
    pub fn each_port(&self) -> impl Iterator<Item = Port> + '_ {
        self.queues.iter().map(|q| q.port)
    }

    /// How many event channels [`Blkback::each_port`] yields.
    pub fn port_count(&self) -> usize {
        self.queues.len()
    }

    /// Requests in the target (including ones orphaned by a disconnect).
    pub fn in_flight(&self) -> usize {
        self.io.in_flight()
    }

    /// Ring frames that would not unmap (never reused).
    pub fn leaked_frames(&self) -> usize {
        self.leaked_frames
    }

    /// Requests served since the device was created (across reconnections).
    pub fn stats(&self) -> Stats {
        self.io.stats()
    }

    /// Whether the connected frontend uses persistent grants, and how many are mapped.
    pub fn persistent_grants(&self) -> Option<usize> {
        self.persistent.then(|| self.grants.len())
    }

    /// What is offered to the frontend.
    pub fn offer(&self) -> Offer {
        self.io.offer()
    }

    fn backend(&self, key: &str) -> String {
        format!("{}/{key}", self.config.backend_path)
    }

    fn write(&self, store: &mut dyn Xenstore, key: &str, value: &str) -> Result<(), StoreError> {
        store.write(&self.backend(key), value.as_bytes())
    }

    fn switch<H: ?Sized, F>(&mut self, env: &mut Env<'_, H, F>, state: XenbusState) {
        // A store that cannot take the write leaves the frontend waiting; nothing better
        // can be done from here, and the state is kept so the next event retries nothing.
        let _ = self.write(env.store, "state", &state.code().to_string());
        self.state = state;
    }

    /// The offer from the disk and the toolstack's `mode` (`r` forces read-only).
    fn current_offer(&self, store: &mut dyn Xenstore, geometry: &Geometry) -> Offer {
        let mode = store.read(&self.backend("mode")).ok().flatten();
        let force_ro = mode.is_some_and(|m| !m.contains(&b'w'));
        Offer::new(geometry, force_ro)
    }

    fn is_cdrom(&self, store: &mut dyn Xenstore, geometry: &Geometry) -> bool {
        geometry.cdrom
            || store
                .read(&self.backend("device-type"))
                .ok()
                .flatten()
                .is_some_and(|t| t.strip_suffix(&[0]).unwrap_or(&t) == b"cdrom")
    }

    /// Writes the backend's feature and disk nodes (`xen-blkback` writes them around
    /// InitWait and at connect; GRUB reads `sectors` early, so all are written up front).
    fn publish<H: ?Sized, F>(&mut self, env: &mut Env<'_, H, F>) -> Result<(), StoreError> {
        let geometry = env.target.geometry();
        let offer = self.current_offer(env.store, &geometry);
        self.io.set_offer(offer);
        let cdrom = self.is_cdrom(env.store, &geometry);
        let mut info = 0;
        if offer.read_only {
            info |= vdisk::READONLY;
        }
        if cdrom {
            info |= vdisk::CDROM | vdisk::REMOVABLE;
        }
        let flag = |b: bool| if b { "1" } else { "0" };
        let limits = self.config.limits;
        let mut nodes: Vec<(&str, String)> = Vec::new();
        if limits.max_indirect_segments > 0 {
            nodes.push((
                "feature-max-indirect-segments",
                limits.max_indirect_segments.to_string(),
            ));
        }
        nodes.push((
            "max-ring-page-order",
            self.config.max_ring_page_order.to_string(),
        ));
        nodes.push(("multi-queue-max-queues", self.config.max_queues.to_string()));
        nodes.push(("feature-flush-cache", flag(offer.flush).into()));
        nodes.push(("feature-barrier", flag(offer.flush).into()));
        nodes.push(("feature-discard", flag(offer.discard).into()));
        if let (true, Some(d)) = (offer.discard, geometry.discard) {
            nodes.push(("discard-granularity", d.granularity.to_string()));
            nodes.push(("discard-alignment", d.alignment.to_string()));
            nodes.push(("discard-secure", flag(offer.discard_secure).into()));
        }
        nodes.push((
            "feature-persistent",
            flag(self.config.max_persistent_grants > 0).into(),
        ));
        nodes.push(("sectors", offer.sectors.to_string()));
        nodes.push(("info", info.to_string()));
        nodes.push(("sector-size", SECTOR_SIZE.to_string()));
        nodes.push((
            "physical-sector-size",
            geometry.physical_sector_size.to_string(),
        ));
        for (key, value) in nodes {
            self.write(env.store, key, &value)?;
        }
        Ok(())
    }

    /// Publishes the device and waits for the frontend (`InitWait`). Call once, after the
    /// toolstack wrote the backend directory.
    pub fn start<H: Hypervisor + ?Sized, F: RingFrames<Page = P>>(
        &mut self,
        env: &mut Env<'_, H, F>,
    ) -> Result<Progress, StoreError> {
        self.publish(env)?;
        let token = self.config.watch_token.clone();
        env.store
            .watch(&format!("{}/state", self.config.frontend_path), &token)?;
        env.store.watch(&self.backend("online"), &token)?;
        self.started = true;
        self.switch(env, XenbusState::InitWait);
        // The frontend may already be waiting (GRUB does not wait for InitWait).
        Ok(self.on_watch(env))
    }

    /// A watch of this device fired: re-reads the frontend's state and `online`.
    pub fn on_watch<H: Hypervisor + ?Sized, F: RingFrames<Page = P>>(
        &mut self,
        env: &mut Env<'_, H, F>,
    ) -> Progress {
        if !self.started {
            return Progress::default();
        }
        let online = !matches!(read_u64(env.store, &self.backend("online")), Ok(Some(0)));
        let frontend = read_state(env.store, &self.config.frontend_path);
        self.seen_frontend |= frontend != XenbusState::Unknown;
        match frontend {
            XenbusState::Initialising => {
                if self.state == XenbusState::Closed && online {
                    // Reconnection (GRUB's frontend closed, the kernel's starts).
                    self.failure = None;
                    if self.publish(env).is_ok() {
                        self.switch(env, XenbusState::InitWait);
                    }
                }
            }
            XenbusState::Initialised | XenbusState::Connected => {
                // From Closed too: two quick changes of the frontend (Closed, Initialising,
                // Initialised) may reach us as one event, as Linux's blkback notes.
                let from_closed = self.state == XenbusState::Closed;
                if online && (self.state == XenbusState::InitWait || from_closed) {
                    if from_closed {
                        self.failure = None;
                        let _ = self.publish(env);
                    }
                    match self.connect(env) {
                        Ok(()) => self.switch(env, XenbusState::Connected),
                        Err(e) => self.fail(env, Failure::Connect(e)),
                    }
                }
            }
            XenbusState::Closing => {
                if self.state < XenbusState::Closing {
                    self.disconnect(env);
                    self.switch(env, XenbusState::Closing);
                }
            }
            // Unknown before the frontend ever showed up: the toolstack has not written its
            // directory yet.
            XenbusState::Unknown if !self.seen_frontend => {}
            XenbusState::Closed | XenbusState::Unknown => {
                if self.state != XenbusState::Closed {
                    self.disconnect(env);
                    self.switch(env, XenbusState::Closed);
                }
            }
            XenbusState::InitWait | XenbusState::Reconfiguring | XenbusState::Reconfigured => {}
        }
        if !online && self.state < XenbusState::Closing {
            // Unplug: ask the frontend to let go; Closed follows its Closed.
            self.disconnect(env);
            self.switch(env, XenbusState::Closing);
        }
        self.poll(env)
    }

    /// Serves the rings: completions from the target, new requests, responses. Call on an
    /// event on any of [`Blkback::ports`], when the target has completions, and again
    /// while [`Progress::more`] is set.
    pub fn poll<H: Hypervisor + ?Sized, F: RingFrames<Page = P>>(
        &mut self,
        env: &mut Env<'_, H, F>,
    ) -> Progress {
        let hv = env.hv;
        let mut persistent = PersistentIo {
            hv,
            frames: &mut *env.frames,
            table: &mut self.grants,
            fallback: &mut *env.grants,
        };
        let grants: &mut dyn GrantIo = if self.persistent {
            &mut persistent
        } else {
            &mut *persistent.fallback
        };
        let mut svc = Services {
            grants,
            target: &mut *env.target,
            now_us: env.now_us,
        };
        let mut notify = |port: Port| {
            // A failed send is a channel the frontend closed; it sees the responses
            // when it looks.
            let _ = send(hv, port);
        };
        let result = self.io.poll(&mut self.queues, &mut svc, &mut notify);
        match result {
            Ok(progress) => progress,
            Err(violation) => {
                self.fail(env, Failure::Ring(violation));
                Progress::default()
            }
        }
    }

    /// An event arrived on `port`: polls if it is one of this device's channels.
    pub fn on_event<H: Hypervisor + ?Sized, F: RingFrames<Page = P>>(
        &mut self,
        env: &mut Env<'_, H, F>,
        port: Port,
    ) -> Progress {
        if self.owns_port(port) {
            self.poll(env)
        } else {
            Progress::default()
        }
    }

    /// Whether `port` is one of this device's event channels.
    pub fn owns_port(&self, port: Port) -> bool {
        self.queues.iter().any(|q| q.port == port)
    }

    /// The toolstack destroys the device (domain gone or forced unplug): disconnects,
    /// publishes Closed and drops the watches. Requests still in the target are orphaned;
    /// keep polling while [`Blkback::in_flight`] is non-zero before dropping the device.
    pub fn close<H: Hypervisor + ?Sized, F: RingFrames<Page = P>>(
        &mut self,
        env: &mut Env<'_, H, F>,
    ) {
        self.disconnect(env);
        if self.started {
            self.switch(env, XenbusState::Closed);
            let token = self.config.watch_token.clone();
            let _ = env
                .store
                .unwatch(&format!("{}/state", self.config.frontend_path), &token);
            let _ = env.store.unwatch(&self.backend("online"), &token);
        }
        self.started = false;
    }

    fn fail<H: Hypervisor + ?Sized, F: RingFrames<Page = P>>(
        &mut self,
        env: &mut Env<'_, H, F>,
        failure: Failure,
    ) {
        let message = format!("{} {failure}", failure.errno());
        if let Some(path) = error_path(&self.config.backend_path) {
            let _ = env.store.write(&path, message.as_bytes());
        }
        let _ = self.write(env.store, "error", &message);
        self.disconnect(env);
        self.failure = Some(failure);
        if self.state < XenbusState::Closing {
            self.switch(env, XenbusState::Closing);
        }
    }

    fn disconnect<H: Hypervisor + ?Sized, F: RingFrames<Page = P>>(
        &mut self,
        env: &mut Env<'_, H, F>,
    ) {
        self.io.orphan_all();
        for q in core::mem::take(&mut self.queues) {
            let _ = close(env.hv, q.port);
            self.leaked_frames += q.ring.into_pages().unmap(env.hv, env.frames);
        }
        self.leaked_frames += self.grants.unmap_all(env.hv, env.frames);
        self.persistent = false;
    }

    fn connect<H: Hypervisor + ?Sized, F: RingFrames<Page = P>>(
        &mut self,
        env: &mut Env<'_, H, F>,
    ) -> Result<(), ConnectError> {
        let result = self.try_connect(env);
        if result.is_err() {
            self.disconnect(env);
        }
        result
    }

    fn try_connect<H: Hypervisor + ?Sized, F: RingFrames<Page = P>>(
        &mut self,
        env: &mut Env<'_, H, F>,
    ) -> Result<(), ConnectError> {
        let fe = self.config.frontend_path.clone();
        // No `protocol` node: the backend's own ABI (xenbus's default).
        let mut abi = Abi::X86_64;
        if let Some(p) = env
            .store
            .read(&format!("{fe}/protocol"))
            .map_err(store_err)?
        {
            let p = p.strip_suffix(&[0]).unwrap_or(&p);
            abi = Abi::from_protocol(p).ok_or_else(|| {
                ConnectError::Protocol(String::from_utf8_lossy(&p[..p.len().min(32)]).into_owned())
            })?;
        }
        let queues = match read_num(env.store, format!("{fe}/multi-queue-num-queues"), 1 << 16)? {
            None => 1,
            Some(n) if n == 0 || n > u64::from(self.config.max_queues) => {
                return Err(ConnectError::Queues(n))
            }
            Some(n) => n as usize,
        };
        let order = match read_num(env.store, format!("{fe}/ring-page-order"), 1 << 16)? {
            Some(o) if o > u64::from(self.config.max_ring_page_order) => {
                return Err(ConnectError::RingPageOrder(o))
            }
            o => o,
        };
        self.persistent = self.config.max_persistent_grants > 0
            && matches!(
                read_u64(env.store, &format!("{fe}/feature-persistent")),
                Ok(Some(1))
            );
        // The disk may have changed since InitWait (a CD inserted); offer what it is now.
        let geometry = env.target.geometry();
        let offer = self.current_offer(env.store, &geometry);
        self.io.set_offer(offer);
        let _ = self.write(env.store, "sectors", &offer.sectors.to_string());
        for queue in 0..queues {
            let dir = if queues == 1 {
                fe.clone()
            } else {
                format!("{fe}/queue-{queue}")
            };
            let mut refs = Vec::new();
            match order {
                None => refs.push(GrantRef(required(
                    env.store,
                    format!("{dir}/ring-ref"),
                    u64::from(u32::MAX),
                )? as u32)),
                Some(o) => {
                    for i in 0..(1u64 << o) {
                        let r =
                            required(env.store, format!("{dir}/ring-ref{i}"), u64::from(u32::MAX))?;
                        refs.push(GrantRef(r as u32));
                    }
                }
            }
            let remote = required(
                env.store,
                format!("{dir}/event-channel"),
                u64::from(u32::MAX),
            )? as u32;
            let pages = RingPages::map(env.hv, env.frames, self.config.domid, &refs)
                .map_err(|error| ConnectError::Ring { queue, error })?;
            let port = match bind_interdomain(env.hv, self.config.domid, Port(remote)) {
                Ok(p) => p,
                Err(error) => {
                    self.leaked_frames += pages.unmap(env.hv, env.frames);
                    return Err(ConnectError::Bind { queue, error });
                }
            };
            self.queues
                .push(Queue::new(BlkRing::with_abi(pages, abi), port));
        }
        Ok(())
    }
}

/// `xenbus_dev_fatal`'s node: `error/<nodename>/error` under the backend domain's home.
pub fn error_path(backend_path: &str) -> Option<String> {
    let rest = backend_path.strip_prefix("/local/domain/")?;
    let (domid, node) = rest.split_once('/')?;
    Some(format!("/local/domain/{domid}/error/{node}/error"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_path_follows_xenbus_dev_fatal() {
        assert_eq!(
            error_path("/local/domain/0/backend/vbd/5/51712").as_deref(),
            Some("/local/domain/0/error/backend/vbd/5/51712/error")
        );
        assert_eq!(error_path("/backend/vbd/5/51712"), None);
    }

    #[test]
    fn config_is_checked() {
        type B = Blkback<&'static PageWords>;
        assert!(B::new(Config::vbd(5, 51712)).is_ok());
        assert_eq!(
            B::new(Config::vbd(0, 51712)).err(),
            Some(ConfigError::Domain(0))
        );
        assert_eq!(
            B::new(Config::vbd(0x7FF0, 51712)).err(),
            Some(ConfigError::Domain(0x7FF0))
        );
        let mut c = Config::vbd(5, 1);
        c.max_ring_page_order = 5;
        assert_eq!(B::new(c).err(), Some(ConfigError::MaxRingPageOrder(5)));
        let mut c = Config::vbd(5, 1);
        c.backend_path.push('/');
        assert!(matches!(B::new(c).err(), Some(ConfigError::Path(_))));
    }
}
