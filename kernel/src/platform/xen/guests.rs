//! Wiring of the guest toolstack (`keel-toolstack`'s [`XenHost`]): this machine's
//! hypervisor, hole frames and clocks, and the task that serves guests' xenstore rings and
//! consoles when their channels fire and notices domains dying on `VIRQ_DOM_EXC`.
//!
//! The XenAPI owns the host as its guest backend; the task shares it (one CPU, `RefCell`,
//! never borrowed across an `await`). What the toolstack must tell the XenAPI (a guest
//! acknowledged a shutdown, a domain exited) is queued here and handed over by the
//! management task, which owns the XenAPI, through [`GuestService::deliver_reports`].

use alloc::boxed::Box;
use alloc::collections::btree_map::Entry;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::future::poll_fn;
use core::task::Poll;

use keel_console::{ConsoleError, ConsoleSession, ConsoleSet};
use keel_executor::Handle;
use keel_management::ConsoleAccess;
use keel_toolstack::{guests, Clocks, Report, SharedHost, XenHost};
use keel_xen::evtchn::{bind_virq, Virq};
use keel_xenapi::guest::GuestBackend;
use keel_xenapi::{Timestamp, XenApi};

use super::disks::{self, SharedDisks};
use super::events::{EventChannel, EventGroup, Kick};
use super::holes::{ConsoleFrames, KernelHoles, StoreFrames};
use super::hypercall::Xen;
use super::vifs::{self, Vifs};
use crate::{rtc, time};

/// The hypervisor as the toolstack holds it (for the whole run).
static XEN: Xen = Xen;

/// How long the task sleeps with nothing to do: xenstored's unread-event expiry and the
/// toolstack's timers are checked at least this often.
const IDLE_NS: u64 = 100_000_000;

type Host = SharedHost<Xen, KernelHoles, StoreFrames, ConsoleFrames>;

/// The toolstack shared by the XenAPI and the guest task.
#[derive(Clone)]
pub struct GuestService {
    host: Host,
    reports: Rc<RefCell<VecDeque<Report>>>,
    /// Guests' network interfaces (`vifs.rs`); `None` without memory for them.
    pub(crate) vifs: Option<Vifs>,
    /// Guests' disks (`disks.rs`), for the metering's counters.
    pub(crate) disks: SharedDisks,
    /// Wakes the network task, which polls its NIC less often while idle: frames the
    /// guests sent to the uplink or to Keel's stack, reports for the XenAPI it owns.
    host_wake: Kick,
}

fn monotonic_ns() -> u64 {
    time::since_entry_ns()
}

fn unix_ns() -> u64 {
    rtc::now().unix_ms.saturating_mul(1_000_000)
}

impl GuestService {
    /// What the network task waits on besides its timer.
    pub fn host_wake(&self) -> &Kick {
        &self.host_wake
    }

    /// The XenAPI's guest backend over this service's toolstack.
    pub fn backend(&self) -> Box<dyn GuestBackend> {
        Box::new(guests(&self.host))
    }

    /// Hands the toolstack's reports to the XenAPI; true if there were any. Call it from
    /// the task that owns the XenAPI, holding no borrow of the toolstack (the XenAPI may
    /// call back into it: destroy, restart).
    pub fn deliver_reports(&self, api: &mut XenApi, now: Timestamp) -> bool {
        let mut any = false;
        loop {
            let next = self.reports.borrow_mut().pop_front();
            let Some(report) = next else {
                return any;
            };
            any = true;
            if let Err(e) = report.deliver(api, now) {
                log::warn!("guests: the XenAPI refused {report:?}: {e:?}");
            }
        }
    }
}

/// The guests' consoles as the management server serves them (docs/guests.md, "Console"):
/// the toolstack's [`ConsoleSet`], with the guest's console channel notified after input.
struct GuestConsoles(Host);

impl GuestService {
    /// The consoles for the management server's `/console` route.
    pub fn consoles(&self) -> Box<dyn ConsoleAccess> {
        Box::new(GuestConsoles(self.host.clone()))
    }
}

impl ConsoleAccess for GuestConsoles {
    fn open(&mut self, domid: u16) -> Result<ConsoleSession, ConsoleError> {
        self.0.borrow().consoles.open_session(domid)
    }

    fn output(
        &mut self,
        session: &mut ConsoleSession,
        out: &mut [u8],
    ) -> Result<usize, ConsoleError> {
        self.0.borrow().consoles.session_output(session, out)
    }

    fn has_output(&self, session: &ConsoleSession) -> bool {
        self.0.borrow().consoles.session_has_output(session)
    }

    fn input(&mut self, session: &ConsoleSession, bytes: &[u8]) -> Result<usize, ConsoleError> {
        let mut host = self.0.borrow_mut();
        let (accepted, serviced) = host.consoles.session_input(session, bytes)?;
        if serviced.notify {
            if let Some(port) = host.console_pages.console_ports.get(&session.domid()) {
                let _ = keel_xen::evtchn::send(host.hv, *port);
            }
        }
        Ok(accepted)
    }
}

/// Makes the toolstack and spawns its task. `None` (with a log line) if `VIRQ_DOM_EXC`
/// cannot be bound: without it Keel would never notice a guest stopping.
pub fn start(
    handle: &Handle,
    repositories: Option<crate::storage::SharedRepositories>,
) -> Option<GuestService> {
    let dom_exc = match bind_virq(&XEN, Virq::DomExc, 0) {
        Ok(port) => port,
        Err(e) => {
            log::error!("guests: cannot bind VIRQ_DOM_EXC ({e}); guests cannot run");
            return None;
        }
    };
    let dom_exc = match EventChannel::bind(dom_exc) {
        Ok(channel) => channel,
        Err(e) => {
            log::error!("guests: cannot route VIRQ_DOM_EXC: {e:?}; guests cannot run");
            return None;
        }
    };
    let clocks = Clocks {
        monotonic_ns,
        unix_ns,
    };
    let host: Host = Rc::new(RefCell::new(XenHost::new(
        &XEN,
        KernelHoles,
        StoreFrames,
        ConsoleFrames,
        clocks,
    )));
    let (disks, backends) = disks::new(repositories);
    host.borrow_mut().set_disk_backends(backends);
    let service = GuestService {
        host,
        reports: Rc::new(RefCell::new(VecDeque::new())),
        vifs: vifs::new(),
        disks: disks.clone(),
        host_wake: Kick::new(),
    };
    handle.spawn(serve(handle.clone(), service.clone(), disks, dom_exc));
    log::info!("guests: toolstack ready (xenstored, consoles, PVH builder, blkback)");
    Some(service)
}

/// How often the guest task scans Xen's domains without a `VIRQ_DOM_EXC` (a safety net:
/// the scan costs a hypercall per domain).
const DOMAIN_SCAN_NS: u64 = 1_000_000_000;

/// The guest task: on any guest channel event, a kick from the network task,
/// `VIRQ_DOM_EXC` or a timer, serve every guest (xenstore, console, disks, VIFs), scan for
/// dead domains when Xen says one changed (and every [`DOMAIN_SCAN_NS`]), and queue the
/// reports.
async fn serve(handle: Handle, service: GuestService, disks: SharedDisks, dom_exc: EventChannel) {
    let mut console_log = ConsoleLog::default();
    let mut group = EventGroup::new();
    let mut dom_exc_fired = true;
    let mut last_scan = 0;
    loop {
        let (more, deadline) = {
            let mut host = service.host.borrow_mut();
            let now = monotonic_ns();
            if core::mem::take(&mut dom_exc_fired) || now >= last_scan + DOMAIN_SCAN_NS {
                last_scan = now;
                if let Err(e) = host.on_dom_exc() {
                    log::warn!("guests: scanning domains: {e:?}");
                }
            }
            // Disks before the rings (what a device writes reaches its guest's watches in
            // this round) and after them (what the guests wrote reaches the devices).
            let before = disks::serve(&disks, &mut host.xenstored);
            let serviced = host.service();
            let mut disks_serviced = disks::serve(&disks, &mut host.xenstored);
            disks_serviced.more |= before.more;
            for (domid, devid, reason) in before.failures.iter().chain(&disks_serviced.failures) {
                log::warn!("disks: domain {domid} vbd {devid}: {reason}");
            }
            // Route the channels of guests that came or went since the last round.
            let mut wanted = host.ports();
            wanted.extend(disks_serviced.ports.iter().copied());
            let nets = service
                .vifs
                .as_ref()
                .map(|v| vifs::serve(v, &mut host.xenstored));
            wanted.extend(nets.iter().flat_map(|n| n.ports.iter().copied()));
            for port in group.ports().to_vec() {
                // An incomplete list of the disks' channels (no memory) unroutes nothing.
                if !wanted.contains(&port) && !disks_serviced.ports_incomplete {
                    group.unbind(port);
                }
            }
            for port in wanted {
                if let Err(e) = group.bind(port) {
                    log::warn!("guests: cannot route port {}: {e:?}", port.0);
                }
            }
            if log::log_enabled!(log::Level::Debug) {
                console_log.follow(&host.consoles);
            }
            let reports = host.take_reports();
            if !reports.is_empty() {
                service.reports.borrow_mut().extend(reports);
                service.host_wake.kick();
            }
            if service.vifs.as_ref().is_some_and(Vifs::take_host_frames) {
                service.host_wake.kick();
            }
            let more =
                serviced.more || disks_serviced.more || nets.as_ref().is_some_and(|n| n.more);
            let net_wake = nets.and_then(|n| n.wake_at_ns);
            let deadline = match (host.next_deadline(), net_wake) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            (more, deadline)
        };
        if more {
            // Busy (e.g. disk requests in flight): look at VIRQ_DOM_EXC without waiting.
            dom_exc_fired |= poll_fn(|cx| Poll::Ready(dom_exc.poll_event(cx).is_ready())).await;
            keel_executor::yield_now().await;
            continue;
        }
        let now = monotonic_ns();
        let sleep = deadline
            .map_or(IDLE_NS, |d| d.saturating_sub(now))
            .min(IDLE_NS);
        let kicks = service.vifs.as_ref().map(|v| v.kicks().clone());
        let any = poll_fn(|cx| {
            // Poll every source (each remembers the waker), then say whether one fired.
            let exc = dom_exc.poll_event(cx).is_ready();
            let channels = group.poll_event(cx).is_ready();
            let kicked = kicks.as_ref().is_some_and(|k| k.poll_kicked(cx).is_ready());
            dom_exc_fired |= exc;
            if exc || channels || kicked {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let _ = handle.timeout(sleep, any).await;
    }
}

/// Guests' console output copied to Keel's log at debug level (`keel.log=debug`), a line
/// at a time, as `xenconsoled --log=guest` keeps it on a Linux dom0.
#[derive(Default)]
struct ConsoleLog {
    followed: BTreeMap<u16, (ConsoleSession, Vec<u8>)>,
}

/// Longest line logged in one piece.
const LOG_LINE: usize = 200;

impl ConsoleLog {
    fn follow<P: keel_console::ConsolePage>(&mut self, set: &ConsoleSet<P>) {
        self.followed.retain(|domid, _| set.is_attached(*domid));
        for domid in set.domains() {
            let (session, line) = match self.followed.entry(domid) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => match set.open_session(domid) {
                    Ok(session) => e.insert((session, Vec::new())),
                    Err(_) => continue,
                },
            };
            let mut buf = [0u8; 256];
            while let Ok(n @ 1..) = set.session_output(session, &mut buf) {
                for &byte in &buf[..n] {
                    if byte == b'\n' || line.len() >= LOG_LINE {
                        log::debug!(
                            "guest d{domid}: {}",
                            String::from_utf8_lossy(line).trim_end()
                        );
                        line.clear();
                    }
                    if byte != b'\n' && line.try_reserve(1).is_ok() {
                        line.push(byte);
                    }
                }
            }
        }
    }
}
