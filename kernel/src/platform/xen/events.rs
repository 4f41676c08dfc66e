//! Event channels: the upcall interrupt and tasks waiting for ports.
//!
//! Xen delivers events as IDT vector [`UPCALL_VECTOR`] (`HVM_PARAM_CALLBACK_IRQ` of type
//! "vector"). Xen injects that vector directly, not through the local APIC, so it takes no
//! EOI, and re-injects it whenever vCPU 0's `evtchn_upcall_pending` is set and interrupts
//! are on. The handler runs `keel_xen`'s 2-level scan and, through the
//! [`EventDispatcher`], marks each port's [`PortEvent`] fired and wakes the task waiting
//! on it; nothing else happens in interrupt context.
//!
//! Locking on one CPU: the dispatcher and each port's waker slot are taken by the handler
//! (interrupts off) and by tasks only with interrupts disabled, so neither side can be
//! interrupted while holding them. The handler wakes by reference and never drops a waker,
//! so it never enters the heap allocator. Even so the handler only *tries* the dispatcher's
//! lock: a dom0 under QEMU's nested SVM was once seen spinning for good in this handler on
//! a held dispatcher (every probe: RIP in the lock's loop, interrupts off, no other CPU), so
//! the upcall can arrive while a task holds it with interrupts off. Then the handler leaves
//! the events pending and counts it ([`DEFERRED_UPCALLS`]); Xen injects the vector again
//! once interrupts are on, and the holder, on its one CPU, has let go by then.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::future::poll_fn;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::task::{Context, Poll, Waker};

use keel_xen::evtchn::{self, scan_pending, Port};
use keel_xen::evtchn_dispatch::{BindError, EventDispatcher};
use keel_xen::hvm::{self, CallbackVia, SetCallbackError};
use keel_xen::shared_info::SharedInfo;
use keel_xen::XenError;
use spin::{Mutex, Once};
use x86_64::instructions::interrupts::without_interrupts;

use super::hypercall::Xen;
use crate::arch::idt;

/// The IDT vector Xen raises for events (Linux uses the same number).
pub const UPCALL_VECTOR: u8 = 0xf3;

static SHARED: Once<&'static SharedInfo> = Once::new();
static DISPATCHER: Mutex<Option<EventDispatcher<Arc<PortEvent>>>> = Mutex::new(None);

/// Upcalls that found the dispatcher held and left their events pending for the next one.
static DEFERRED_UPCALLS: AtomicU64 = AtomicU64::new(0);
/// How many of those a task has logged.
static DEFERRED_LOGGED: AtomicU64 = AtomicU64::new(0);

/// One bound port's state, shared by the handler and the waiting task.
#[derive(Default)]
pub struct PortEvent {
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl PortEvent {
    /// Interrupt context: record the event and wake the waiter, if any.
    fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        // Held only by a task inside `poll_event`, which checks `fired` again after it lets
        // go: that task sees this event without a wake, so never spin here (see the module's
        // documentation for why the handler can find it held).
        if let Some(slot) = self.waker.try_lock() {
            if let Some(waker) = slot.as_ref() {
                waker.wake_by_ref();
            }
        }
    }
}

impl PortEvent {
    /// Ready if an event arrived since the last ready poll; otherwise remembers the waker.
    fn poll_event(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.fired.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        without_interrupts(|| {
            let mut slot = self.waker.lock();
            if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
        });
        // An event between the first check and storing the waker is caught here.
        if self.fired.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Completes at the next event (at once if one arrived since the last wait).
    async fn wait(&self) {
        poll_fn(|cx| self.poll_event(cx)).await
    }
}

/// A wake-up one task gives another, with no Xen port behind it (e.g. the network task
/// telling the guest task that frames wait for a guest). Cheap to clone.
#[derive(Clone, Default)]
pub struct Kick(Arc<PortEvent>);

impl Kick {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes the waiting task (or makes its next wait complete at once).
    pub fn kick(&self) {
        // Interrupts off: the waker slot's lock is also taken in interrupt context for
        // ports (never for a kick, but the lock discipline is the same everywhere).
        without_interrupts(|| self.0.fire());
    }

    /// Ready if kicked since the last ready poll.
    pub fn poll_kicked(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll_event(cx)
    }
}

/// Masks every port, installs the upcall handler and tells Xen to use its vector. Ports
/// are unmasked one by one as tasks bind them.
pub fn init(shared: &'static SharedInfo) -> Result<(), SetCallbackError> {
    for word in &shared.evtchn_mask {
        word.store(u64::MAX, Ordering::SeqCst);
    }
    SHARED.call_once(|| shared);
    with_dispatcher(|d| *d = Some(EventDispatcher::new()));
    idt::set_handler(UPCALL_VECTOR, upcall);
    hvm::set_callback_via(&Xen, CallbackVia::Vector(UPCALL_VECTOR))
}

fn upcall(_vector: u8) {
    let Some(shared) = SHARED.get() else {
        return;
    };
    let Some(vcpu) = shared.vcpu(0) else {
        return;
    };
    // Never spin here: whoever holds the lock was interrupted by this handler and cannot
    // let go until it returns. The selector bits and `evtchn_upcall_pending` stay set, so
    // the scan happens at the next injection.
    let Some(mut guard) = DISPATCHER.try_lock() else {
        DEFERRED_UPCALLS.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if let Some(dispatcher) = guard.as_mut() {
        dispatcher.dispatch(scan_pending(shared, vcpu), |_, event| event.fire());
    }
}

/// Runs `f` on the dispatcher with interrupts off (the handler takes it too), then reports
/// upcalls that came while a task held it: the emulator delivered the vector with
/// interrupts off (see the module's documentation).
fn with_dispatcher<R>(f: impl FnOnce(&mut Option<EventDispatcher<Arc<PortEvent>>>) -> R) -> R {
    let result = without_interrupts(|| f(&mut DISPATCHER.lock()));
    let deferred = DEFERRED_UPCALLS.load(Ordering::Relaxed);
    if deferred > DEFERRED_LOGGED.swap(deferred, Ordering::Relaxed) {
        log::warn!(
            "events: {deferred} upcall(s) so far arrived while a task held the dispatcher with \
             interrupts off; their events were taken at the next upcall"
        );
    }
    result
}

/// Why a port could not be bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindPortError {
    /// [`init`] has not run (not on Xen, or too early in the boot).
    NotInitialised,
    Dispatcher(BindError),
    /// No memory to remember the port.
    OutOfMemory,
    /// `EVTCHNOP_unmask` failed.
    Unmask(XenError),
}

/// A port a task waits on. Unbinding (on drop) does not close the port: its owner does.
pub struct EventChannel {
    port: Port,
    event: Arc<PortEvent>,
}

impl EventChannel {
    /// Routes `port`'s events to the returned channel and unmasks the port.
    pub fn bind(port: Port) -> Result<Self, BindPortError> {
        let event = Arc::new(PortEvent::default());
        with_dispatcher(|d| match d.as_mut() {
            Some(d) => d
                .bind(port, Arc::clone(&event))
                .map_err(BindPortError::Dispatcher),
            None => Err(BindPortError::NotInitialised),
        })?;
        let channel = EventChannel { port, event };
        evtchn::unmask(&Xen, port).map_err(BindPortError::Unmask)?;
        Ok(channel)
    }

    /// Completes at the next event on the port (at once if one arrived since the last).
    pub async fn wait(&self) {
        self.event.wait().await
    }

    /// Ready if an event arrived since the last ready poll (for waiting on several
    /// sources at once).
    pub fn poll_event(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.event.poll_event(cx)
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        release(self.port);
    }
}

/// Ports that all wake one task: a backend serving many guests waits on the group and then
/// serves every guest (cheaper than a task per channel, and the set changes as guests come
/// and go). Unbinding does not close a port: its owner does.
pub struct EventGroup {
    event: Arc<PortEvent>,
    ports: Vec<Port>,
}

impl EventGroup {
    pub fn new() -> Self {
        EventGroup {
            event: Arc::new(PortEvent::default()),
            ports: Vec::new(),
        }
    }

    /// Routes `port`'s events to the group and unmasks it.
    pub fn bind(&mut self, port: Port) -> Result<(), BindPortError> {
        if self.ports.contains(&port) {
            return Ok(());
        }
        self.ports
            .try_reserve(1)
            .map_err(|_| BindPortError::OutOfMemory)?;
        with_dispatcher(|d| match d.as_mut() {
            Some(d) => d
                .bind(port, Arc::clone(&self.event))
                .map_err(BindPortError::Dispatcher),
            None => Err(BindPortError::NotInitialised),
        })?;
        self.ports.push(port);
        evtchn::unmask(&Xen, port).map_err(BindPortError::Unmask)
    }

    /// Stops routing `port` to the group.
    pub fn unbind(&mut self, port: Port) {
        if let Some(i) = self.ports.iter().position(|p| *p == port) {
            self.ports.swap_remove(i);
            release(port);
        }
    }

    /// The ports bound now.
    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    /// Ready if an event arrived on any port since the last ready poll.
    pub fn poll_event(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.event.poll_event(cx)
    }
}

impl Default for EventGroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for EventGroup {
    fn drop(&mut self) {
        for port in core::mem::take(&mut self.ports) {
            release(port);
        }
    }
}

/// Masks `port` and removes its route (the waker goes with it, outside interrupt context).
fn release(port: Port) {
    if let Some(shared) = SHARED.get() {
        // In range: the dispatcher accepted the port.
        let _ = evtchn::mask(shared, port);
    }
    let removed = with_dispatcher(|d| d.as_mut()?.unbind(port));
    drop(removed);
}
