//! [`Netback`]: one VIF's backend — the xenbus state machine, its queues, rate limit and
//! counters. No I/O of its own: every call is handed the [`Env`] it works through.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::vec::Vec;

use keel_xen::evtchn::{bind_interdomain, close, Port};
use keel_xen::grant_table::{map_grant, unmap_grant, GrantRef};
use keel_xen::ring::BackRing;
use keel_xen::Hypervisor;

use crate::env::{read_str, CopyBuffer, Env, FramePort, NetStore, RingFrames, StoreError};
use crate::fault::Fault;
use crate::packet::{parse_headers, IPPROTO_TCP, IPPROTO_UDP};
use crate::queue::{Ctx, Queue, Resources, Scratch};
use crate::ratelimit::{Credit, RateLimit};
use crate::stats::VifCounters;
use crate::wire::{ETH_HLEN, MAX_TX_SIZE};
use crate::xenbus::{
    advertise, Config, FrontendConfig, FrontendFeatures, QueueChannels, QueueConfig, XenbusState,
};

/// How soon to look at an rx ring again when the frontend does not notify.
pub const RX_UNNOTIFIED_POLL_NS: u64 = 30_000_000;

/// What one [`Netback::poll`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Packets taken from the guest's tx rings.
    pub tx_packets: usize,
    /// Frames put on the guest's rx rings.
    pub rx_frames: usize,
    /// Work is left (a budget ran out, or requests arrived meanwhile): poll again soon.
    pub more_work: bool,
    /// Poll again at this time (ns): the rate limit holds a packet back, or frames wait
    /// for a frontend that does not notify when it posts buffers.
    pub wake_at_ns: Option<u64>,
    /// The frontend was found hostile during this poll and disconnected.
    pub disconnected: bool,
}

/// Why [`Netback::push_rx`] did not queue a frame (each is counted as a drop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxDrop {
    NotConnected,
    /// Shorter than an Ethernet header.
    Runt,
    /// Larger than the guest accepts (one page without `feature-sg`, 64 KiB with).
    TooBig,
    /// The queue toward the guest is full (the guest does not post buffers fast enough).
    QueueFull,
    NoMemory,
}

/// One VIF's backend.
pub struct Netback {
    config: Config,
    state: XenbusState,
    features: FrontendFeatures,
    queues: Vec<Queue>,
    credit: Credit,
    counters: VifCounters,
    fault: Option<Fault>,
    mcast: Vec<[u8; 6]>,
    scratch: Scratch,
    /// When a poll last found work (ns): a VIF quiet for [`IDLE_TRIM_NS`] gives back its
    /// scratch.
    busy_at_ns: u64,
}

/// How long a VIF must be quiet before it gives back the scratch a burst grew.
pub const IDLE_TRIM_NS: u64 = 1_000_000_000;

impl Netback {
    /// A backend for `config`. Nothing is written until [`start`](Self::start).
    pub fn new(config: Config) -> Self {
        let rate = config.rate;
        Netback {
            config,
            state: XenbusState::Initialising,
            features: FrontendFeatures::default(),
            queues: Vec::new(),
            credit: Credit::new(rate, 0),
            counters: VifCounters::default(),
            fault: None,
            mcast: Vec::new(),
            scratch: Scratch::default(),
            busy_at_ns: 0,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The state the backend last published.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    /// What the frontend negotiated (meaningful once Connected).
    pub fn features(&self) -> &FrontendFeatures {
        &self.features
    }

    pub fn counters(&self) -> VifCounters {
        self.counters
    }

    /// Why the frontend was last disconnected, if it was.
    pub fn fault(&self) -> Option<&Fault> {
        self.fault.as_ref()
    }

    /// Queues in use (0 unless Connected).
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Multicast addresses the guest subscribed to (`XEN_NETIF_EXTRA_TYPE_MCAST_ADD`).
    pub fn multicast_addresses(&self) -> &[[u8; 6]] {
        &self.mcast
    }

    /// Our ends of the queues' event channels: events on them belong to this VIF.
    pub fn local_ports(&self) -> Vec<Port> {
        self.queues
            .iter()
            .flat_map(|q| q.res.ports.iter().copied())
            .collect()
    }

    /// Nodes to watch: the frontend's `state` and the backend's `rate`; hand each firing to
    /// [`on_watch`](Self::on_watch).
    pub fn watch_paths(&self) -> [alloc::string::String; 2] {
        [self.config.frontend_state_path(), self.config.rate_path()]
    }

    /// Changes the transmit rate limit (the VIF's QoS was edited), from `now_ns`.
    pub fn set_rate(&mut self, rate: Option<RateLimit>, now_ns: u64) {
        self.credit.set_limit(rate, now_ns);
    }

    pub fn rate(&self) -> Option<RateLimit> {
        self.credit.limit()
    }

    fn set_state<S: NetStore + ?Sized>(
        &mut self,
        store: &mut S,
        state: XenbusState,
    ) -> Result<(), StoreError> {
        self.state = state;
        store.write(
            &self.config.backend_state_path(),
            format!("{}", state.code()).as_bytes(),
        )
    }

    /// Advertises the backend's features and moves to InitWait (the probe).
    pub fn start<H, S, R, B>(&mut self, env: &mut Env<'_, H, S, R, B>) -> Result<(), StoreError>
    where
        H: Hypervisor + ?Sized,
        S: NetStore + ?Sized,
        R: RingFrames + ?Sized,
        B: CopyBuffer + ?Sized,
    {
        advertise(env.store, &self.config)?;
        // No hotplug script runs in Keel: the backend itself is the "script".
        env.store.write(
            &format!("{}/hotplug-status", self.config.backend_path),
            b"connected",
        )?;
        if let Some(rate) = read_str(env.store, &self.config.rate_path())? {
            self.credit.set_limit(RateLimit::parse_rate_node(&rate), 0);
        }
        self.set_state(env.store, XenbusState::InitWait)
    }

    /// A watched node changed: follow the frontend's state, or re-read the rate.
    pub fn on_watch<H, S, R, B>(&mut self, env: &mut Env<'_, H, S, R, B>, path: &str, now_ns: u64)
    where
        H: Hypervisor + ?Sized,
        S: NetStore + ?Sized,
        R: RingFrames + ?Sized,
        B: CopyBuffer + ?Sized,
    {
        if path == self.config.rate_path() {
            if let Ok(value) = read_str(env.store, path) {
                let rate = value.as_deref().and_then(RateLimit::parse_rate_node);
                self.credit.set_limit(rate, now_ns);
            }
            return;
        }
        let frontend = match read_str(env.store, &self.config.frontend_state_path()) {
            Ok(v) => XenbusState::parse(v.as_deref()),
            Err(_) => return,
        };
        self.frontend_changed(env, frontend);
    }

    fn frontend_changed<H, S, R, B>(&mut self, env: &mut Env<'_, H, S, R, B>, frontend: XenbusState)
    where
        H: Hypervisor + ?Sized,
        S: NetStore + ?Sized,
        R: RingFrames + ?Sized,
        B: CopyBuffer + ?Sized,
    {
        match frontend {
            XenbusState::Initialising | XenbusState::InitWait => {
                // A frontend starting again after a close (driver reload, kexec).
                if self.state == XenbusState::Closed {
                    let _ = self.start(env);
                }
            }
            XenbusState::Initialised | XenbusState::Connected => {
                // Straight from Closed too (Linux walks Closed → InitWait → Connected); not
                // from Closing, where a disconnected frontend must close first.
                if self.state == XenbusState::Closed {
                    let _ = self.start(env);
                }
                if self.state == XenbusState::InitWait {
                    self.connect(env);
                }
            }
            XenbusState::Closing => {
                self.disconnect(env);
                if self.state != XenbusState::Closed {
                    let _ = self.set_state(env.store, XenbusState::Closing);
                }
            }
            // Before it ever connected, a missing frontend is one not written yet (the
            // watch fires once when set).
            XenbusState::Unknown if self.state <= XenbusState::InitWait => {}
            XenbusState::Closed | XenbusState::Unknown => {
                self.disconnect(env);
                let _ = self.set_state(env.store, XenbusState::Closed);
            }
            XenbusState::Reconfiguring | XenbusState::Reconfigured => {}
        }
    }

    /// The toolstack unplugs the VIF: close, whatever the frontend does.
    pub fn close<H, S, R, B>(&mut self, env: &mut Env<'_, H, S, R, B>)
    where
        H: Hypervisor + ?Sized,
        S: NetStore + ?Sized,
        R: RingFrames + ?Sized,
        B: CopyBuffer + ?Sized,
    {
        self.disconnect(env);
        let _ = self.set_state(env.store, XenbusState::Closing);
    }

    fn connect<H, S, R, B>(&mut self, env: &mut Env<'_, H, S, R, B>)
    where
        H: Hypervisor + ?Sized,
        S: NetStore + ?Sized,
        R: RingFrames + ?Sized,
        B: CopyBuffer + ?Sized,
    {
        let fe = match FrontendConfig::read(env.store, &self.config) {
            Ok(fe) => fe,
            Err(e) => return self.fail(env, Fault::Handshake(e)),
        };
        for qc in &fe.queues {
            match self.connect_queue(env, qc) {
                Ok(q) => self.queues.push(q),
                Err(f) => return self.fail(env, f),
            }
        }
        self.features = fe.features;
        self.fault = None;
        self.mcast.clear();
        if let Err(e) = self.set_state(env.store, XenbusState::Connected) {
            self.fail(env, Fault::Store(e));
        }
    }

    fn connect_queue<H, S, R, B>(
        &mut self,
        env: &mut Env<'_, H, S, R, B>,
        qc: &QueueConfig,
    ) -> Result<Queue, Fault>
    where
        H: Hypervisor + ?Sized,
        S: NetStore + ?Sized,
        R: RingFrames + ?Sized,
        B: CopyBuffer + ?Sized,
    {
        let domid = self.config.frontend_domid;
        let mut res = Resources::default();
        let result = (|| {
            let tx_gfn = map_ring(env, &mut res, domid, qc.tx_ring_ref)?;
            let rx_gfn = map_ring(env, &mut res, domid, qc.rx_ring_ref)?;
            let map_fault = |gref| Fault::MapRing { gref, error: None };
            let tx = env
                .rings
                .tx_ring(tx_gfn, domid, GrantRef(qc.tx_ring_ref))
                .ok_or(map_fault(qc.tx_ring_ref))?;
            let rx = env
                .rings
                .rx_ring(rx_gfn, domid, GrantRef(qc.rx_ring_ref))
                .ok_or(map_fault(qc.rx_ring_ref))?;
            let (tx_port, rx_port) = match qc.channels {
                QueueChannels::Shared(p) => {
                    let port = bind(env, &mut res, domid, p)?;
                    (port, port)
                }
                QueueChannels::Split { tx, rx } => (
                    bind(env, &mut res, domid, tx)?,
                    bind(env, &mut res, domid, rx)?,
                ),
            };
            // The frontend initialised the rings before advertising them.
            Ok((BackRing::new(tx), BackRing::new(rx), tx_port, rx_port))
        })();
        match result {
            Ok((tx, rx, tx_port, rx_port)) => Ok(Queue {
                tx,
                rx,
                tx_port,
                rx_port,
                res,
                held: None,
                rx_pending: VecDeque::new(),
                rx_pending_bytes: 0,
            }),
            Err(f) => {
                release(env, res);
                Err(f)
            }
        }
    }

    /// Drops the rings, unmaps them and closes the channels; pending frames are dropped.
    fn disconnect<H, S, R, B>(&mut self, env: &mut Env<'_, H, S, R, B>)
    where
        H: Hypervisor + ?Sized,
        S: NetStore + ?Sized,
        R: RingFrames + ?Sized,
        B: CopyBuffer + ?Sized,
    {
        for q in self.queues.drain(..) {
            // The ring views go with the rest of the queue, before the mappings behind them.
            let Queue {
                res, rx_pending, ..
            } = q;
            self.counters.to_guest_dropped += rx_pending.len() as u64;
            release(env, res);
        }
    }

    /// Disconnects a misbehaving frontend, saying why (`xenbus_dev_fatal`).
    fn fail<H, S, R, B>(&mut self, env: &mut Env<'_, H, S, R, B>, fault: Fault)
    where
        H: Hypervisor + ?Sized,
        S: NetStore + ?Sized,
        R: RingFrames + ?Sized,
        B: CopyBuffer + ?Sized,
    {
        self.counters.fatal_errors += 1;
        self.disconnect(env);
        let (errno, message) = fault.describe();
        let _ = env.store.write(
            &self.config.error_path(),
            format!("{} {message}", -errno).as_bytes(),
        );
        let _ = self.set_state(env.store, XenbusState::Closing);
        self.fault = Some(fault);
    }

    /// Whether `port` is one of this VIF's channels (the caller then polls it).
    pub fn on_event(&self, port: Port) -> bool {
        self.queues
            .iter()
            .any(|q| q.tx_port == port || q.rx_port == port)
    }

    /// Does a bounded amount of work on every queue: packets from the guest to `port`, then
    /// queued frames into the guest's buffers.
    pub fn poll<H, S, R, B, P>(
        &mut self,
        env: &mut Env<'_, H, S, R, B>,
        now_ns: u64,
        port: &mut P,
    ) -> Progress
    where
        H: Hypervisor + ?Sized,
        S: NetStore + ?Sized,
        R: RingFrames + ?Sized,
        B: CopyBuffer + ?Sized,
        P: FramePort + ?Sized,
    {
        let mut progress = Progress::default();
        if self.state != XenbusState::Connected {
            return progress;
        }
        let mut fault = None;
        {
            let mut ctx = Ctx {
                hv: env.hv,
                buffer: &mut *env.buffer,
                domid: self.config.frontend_domid,
                now_ns,
                credit: &mut self.credit,
                counters: &mut self.counters,
                scratch: &mut self.scratch,
                mcast: &mut self.mcast,
                mtu: self.config.mtu,
            };
            for q in &mut self.queues {
                let tx = match q.process_tx(&mut ctx, port, self.config.tx_budget) {
                    Ok(p) => p,
                    Err(f) => {
                        fault = Some(f);
                        break;
                    }
                };
                let rx = match q.process_rx(&mut ctx, self.config.rx_budget) {
                    Ok(p) => p,
                    Err(f) => {
                        fault = Some(f);
                        break;
                    }
                };
                progress.tx_packets += tx.done;
                progress.rx_frames += rx.done;
                progress.more_work |= tx.more || rx.more;
                // A frontend without `feature-rx-notify` never says it posted buffers:
                // look again soon while frames wait (Linux's 30 ms drain timeout).
                let rx_wake = (rx.starved && !self.features.rx_notify)
                    .then(|| now_ns.saturating_add(RX_UNNOTIFIED_POLL_NS));
                for wake in [tx.wake_at_ns, rx_wake].into_iter().flatten() {
                    progress.wake_at_ns = Some(progress.wake_at_ns.map_or(wake, |w| w.min(wake)));
                }
            }
        }
        if let Some(f) = fault {
            self.fail(env, f);
            progress.disconnected = true;
            progress.more_work = false;
            progress.wake_at_ns = None;
        }
        let quiet = !progress.more_work
            && progress.wake_at_ns.is_none()
            && progress.tx_packets == 0
            && progress.rx_frames == 0
            && self
                .queues
                .iter()
                .all(|q| q.rx_pending.is_empty() && q.held.is_none());
        if !quiet {
            self.busy_at_ns = now_ns;
        } else if now_ns.saturating_sub(self.busy_at_ns) >= IDLE_TRIM_NS {
            // Quiet for a while (not between two packets of a stream): give back what the
            // last burst grew.
            self.scratch.trim_idle();
            for q in &mut self.queues {
                // A drained burst's queue of frames for the guest (up to its bound).
                q.rx_pending = VecDeque::new();
            }
        }
        progress
    }

    /// Queues a frame from the switch for the guest, on the queue its flow hashes to. The
    /// frame is copied; it reaches the guest in a later [`poll`](Self::poll).
    pub fn push_rx(&mut self, frame: &[u8]) -> Result<(), RxDrop> {
        let result = self.queue_rx(frame);
        if result.is_err() {
            self.counters.to_guest_dropped += 1;
        }
        result
    }

    fn queue_rx(&mut self, frame: &[u8]) -> Result<(), RxDrop> {
        if self.state != XenbusState::Connected || self.queues.is_empty() {
            return Err(RxDrop::NotConnected);
        }
        if frame.len() < ETH_HLEN {
            return Err(RxDrop::Runt);
        }
        let max = if self.features.sg {
            MAX_TX_SIZE
        } else {
            keel_xen::hypercall::PAGE_SIZE
        };
        if frame.len() > max {
            return Err(RxDrop::TooBig);
        }
        let index = flow_hash(frame) as usize % self.queues.len();
        let (frames_max, bytes_max) = (self.config.rx_queue_frames, self.config.rx_queue_bytes);
        let q = &mut self.queues[index];
        if q.rx_pending.len() >= frames_max || q.rx_pending_bytes + frame.len() > bytes_max {
            return Err(RxDrop::QueueFull);
        }
        let mut copy = Vec::new();
        copy.try_reserve_exact(frame.len())
            .map_err(|_| RxDrop::NoMemory)?;
        copy.extend_from_slice(frame);
        q.rx_pending_bytes += frame.len();
        q.rx_pending.push_back(copy);
        Ok(())
    }
}

fn map_ring<H, S, R, B>(
    env: &mut Env<'_, H, S, R, B>,
    res: &mut Resources,
    domid: u16,
    gref: u32,
) -> Result<u64, Fault>
where
    H: Hypervisor + ?Sized,
    S: NetStore + ?Sized,
    R: RingFrames + ?Sized,
    B: CopyBuffer + ?Sized,
{
    let gfn = env
        .rings
        .allocate()
        .ok_or(Fault::MapRing { gref, error: None })?;
    match map_grant(env.hv, domid, GrantRef(gref), gfn << 12, false) {
        Ok(m) => {
            res.maps.push((gfn, m));
            Ok(gfn)
        }
        Err(e) => {
            env.rings.free(gfn);
            Err(Fault::MapRing {
                gref,
                error: Some(e),
            })
        }
    }
}

fn bind<H, S, R, B>(
    env: &mut Env<'_, H, S, R, B>,
    res: &mut Resources,
    domid: u16,
    remote: u32,
) -> Result<Port, Fault>
where
    H: Hypervisor + ?Sized,
    S: NetStore + ?Sized,
    R: RingFrames + ?Sized,
    B: CopyBuffer + ?Sized,
{
    let port = bind_interdomain(env.hv, domid, Port(remote)).map_err(|error| Fault::Bind {
        port: remote,
        error,
    })?;
    res.ports.push(port);
    Ok(port)
}

/// Unmaps and closes what a queue held. A frame whose unmap fails is never reused.
fn release<H, S, R, B>(env: &mut Env<'_, H, S, R, B>, res: Resources)
where
    H: Hypervisor + ?Sized,
    S: NetStore + ?Sized,
    R: RingFrames + ?Sized,
    B: CopyBuffer + ?Sized,
{
    for port in res.ports {
        let _ = close(env.hv, port);
    }
    for (gfn, mapping) in res.maps {
        if unmap_grant(env.hv, &mapping).is_ok() {
            env.rings.free(gfn);
        }
    }
}

/// FNV-1a over the flow's addresses and ports (or the MACs for non-IP frames), so one
/// flow always takes one queue and keeps its order.
fn flow_hash(frame: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut mix = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    match parse_headers(frame) {
        Ok(hd) => {
            let addrs = if hd.ipv6 {
                hd.l3 + 8..hd.l3 + 40
            } else {
                hd.l3 + 12..hd.l3 + 20
            };
            mix(&frame[addrs]);
            if hd.proto == IPPROTO_TCP || hd.proto == IPPROTO_UDP {
                if let Some(ports) = frame.get(hd.l4..hd.l4 + 4) {
                    mix(ports);
                }
            }
        }
        Err(_) => mix(&frame[..frame.len().min(12)]),
    }
    h
}
