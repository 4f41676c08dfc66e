//! A small cooperative async executor with timers, for a single CPU.
//!
//! Drivers and services run as tasks (`Future<Output = ()>`). The executor polls tasks whose
//! wakers fired, fires expired timers, and otherwise tells the platform how long it may
//! sleep. It knows nothing about hardware: time comes from a [`Clock`], and the platform's idle
//! routine (halt until an interrupt or the next deadline) is called by the kernel's loop.
//!
//! Wakers may be called from interrupt handlers: waking only sets a bit in an atomic bitmap,
//! so it never takes a lock an interrupted task could hold. Everything else (the task table,
//! the timer queue, newly spawned tasks) is touched only from task context on the one CPU,
//! so it lives in `Rc`/`RefCell` and the handle tasks get is deliberately not `Send`.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::BinaryHeap;
use alloc::rc::Rc;
use alloc::sync::Arc;
use alloc::task::Wake;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::cmp::Reverse;
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicU64, Ordering};
use core::task::{Context, Poll, Waker};

/// Monotonic time in nanoseconds since an arbitrary origin (boot).
pub trait Clock {
    fn now_ns(&self) -> u64;
}

/// Most tasks that can exist at once: enough for every service plus one task per connection.
pub const MAX_TASKS: usize = 1024;
const WORDS: usize = MAX_TASKS / 64;

type TaskFuture = Pin<Box<dyn Future<Output = ()>>>;

/// Why a task could not be spawned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnError {
    /// [`MAX_TASKS`] tasks already exist.
    TooManyTasks,
}

/// Bitmap of task slots whose wakers fired.
struct ReadySet {
    words: [AtomicU64; WORDS],
}

impl ReadySet {
    fn mark(&self, slot: usize) {
        if let Some(word) = self.words.get(slot / 64) {
            word.fetch_or(1 << (slot % 64), Ordering::Release);
        }
    }
    fn any(&self) -> bool {
        self.words.iter().any(|w| w.load(Ordering::Acquire) != 0)
    }
}

struct SlotWaker {
    ready: Arc<ReadySet>,
    slot: usize,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.ready.mark(self.slot);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.mark(self.slot);
    }
}

struct TimerEntry {
    deadline: u64,
    seq: u64,
    waker: Waker,
}

impl PartialEq for TimerEntry {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerEntry {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

#[derive(Default)]
struct TimerQueue {
    heap: BinaryHeap<Reverse<TimerEntry>>,
    seq: u64,
}

/// State shared between the executor and the handles given to tasks.
struct Shared {
    ready: Arc<ReadySet>,
    timers: RefCell<TimerQueue>,
    spawned: RefCell<Vec<TaskFuture>>,
    clock: Box<dyn Clock>,
}

/// A cheap handle tasks use to read the time, sleep and spawn more tasks.
#[derive(Clone)]
pub struct Handle {
    shared: Rc<Shared>,
}

impl Handle {
    /// Nanoseconds since boot.
    pub fn now_ns(&self) -> u64 {
        self.shared.clock.now_ns()
    }

    /// Queues a task; it starts on the executor's next step.
    pub fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        self.shared.spawned.borrow_mut().push(Box::pin(task));
    }

    /// A future that completes at `deadline_ns` (clock time).
    pub fn sleep_until(&self, deadline_ns: u64) -> Sleep {
        Sleep {
            handle: self.clone(),
            deadline_ns,
        }
    }

    /// A future that completes `ns` nanoseconds from now.
    pub fn sleep(&self, ns: u64) -> Sleep {
        self.sleep_until(self.now_ns().saturating_add(ns))
    }

    /// Runs `future` until it completes or `ns` nanoseconds pass.
    pub async fn timeout<F: Future>(&self, ns: u64, future: F) -> Result<F::Output, TimedOut> {
        let mut future = core::pin::pin!(future);
        let mut sleep = self.sleep(ns);
        core::future::poll_fn(|cx| {
            if let Poll::Ready(v) = future.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            match Pin::new(&mut sleep).poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(TimedOut)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    fn add_timer(&self, deadline: u64, waker: Waker) {
        let mut q = self.shared.timers.borrow_mut();
        q.seq += 1;
        let seq = q.seq;
        q.heap.push(Reverse(TimerEntry {
            deadline,
            seq,
            waker,
        }));
    }
}

/// Gives other ready tasks a turn, then continues.
pub async fn yield_now() {
    let mut yielded = false;
    core::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// A flag that is set once; tasks can wait for it. Services use it to say "I am up", and
/// the boot waits for all of them before printing `keel: ready`.
#[derive(Clone, Default)]
pub struct Signal {
    state: Rc<RefCell<(bool, Vec<Waker>)>>,
}

impl Signal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag and wakes every waiter. Setting it again does nothing.
    pub fn set(&self) {
        let waiters = {
            let mut state = self.state.borrow_mut();
            if state.0 {
                return;
            }
            state.0 = true;
            core::mem::take(&mut state.1)
        };
        for w in waiters {
            w.wake();
        }
    }

    pub fn is_set(&self) -> bool {
        self.state.borrow().0
    }

    /// Completes once the flag is set.
    pub async fn wait(&self) {
        core::future::poll_fn(|cx| {
            let mut state = self.state.borrow_mut();
            if state.0 {
                return Poll::Ready(());
            }
            if !state.1.iter().any(|w| w.will_wake(cx.waker())) {
                state.1.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

/// The error of [`Handle::timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

/// See [`Handle::sleep_until`].
pub struct Sleep {
    handle: Handle,
    deadline_ns: u64,
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.handle.now_ns() >= self.deadline_ns {
            return Poll::Ready(());
        }
        // A task polled again before its deadline registers again; the stale entry only
        // causes one spurious wake-up, which futures must tolerate anyway.
        self.handle.add_timer(self.deadline_ns, cx.waker().clone());
        Poll::Pending
    }
}

struct Task {
    future: TaskFuture,
    waker: Waker,
}

/// What the platform should do after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Work is pending: step again at once.
    Busy,
    /// Nothing to do until an interrupt or this clock time.
    Until(u64),
    /// Nothing to do until an interrupt.
    Forever,
}

/// The executor.
pub struct Executor {
    shared: Rc<Shared>,
    tasks: Vec<Option<Task>>,
    live: usize,
}

impl Executor {
    pub fn new(clock: impl Clock + 'static) -> Self {
        let ready = Arc::new(ReadySet {
            words: core::array::from_fn(|_| AtomicU64::new(0)),
        });
        Executor {
            shared: Rc::new(Shared {
                ready,
                timers: RefCell::new(TimerQueue::default()),
                spawned: RefCell::new(Vec::new()),
                clock: Box::new(clock),
            }),
            tasks: Vec::new(),
            live: 0,
        }
    }

    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// Tasks that have not finished.
    pub fn live_tasks(&self) -> usize {
        self.live
    }

    /// True when a waker fired since the last step. The platform checks this with interrupts
    /// disabled right before halting, so a wake-up from an interrupt is never slept through.
    pub fn has_ready(&self) -> bool {
        self.shared.ready.any() || !self.shared.spawned.borrow().is_empty()
    }

    /// Admits spawned tasks, fires expired timers, polls every ready task once, and says how
    /// long the platform may idle.
    pub fn step(&mut self) -> Result<Idle, SpawnError> {
        self.admit()?;
        self.fire_timers();
        for w in 0..WORDS {
            let mut bits = self.shared.ready.words[w].swap(0, Ordering::AcqRel);
            while bits != 0 {
                let slot = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                self.poll_slot(slot);
            }
        }
        if self.has_ready() {
            return Ok(Idle::Busy);
        }
        let next = self
            .shared
            .timers
            .borrow()
            .heap
            .peek()
            .map(|Reverse(t)| t.deadline);
        Ok(match next {
            Some(d) if d <= self.shared.clock.now_ns() => Idle::Busy,
            Some(d) => Idle::Until(d),
            None => Idle::Forever,
        })
    }

    fn admit(&mut self) -> Result<(), SpawnError> {
        let new: Vec<TaskFuture> = core::mem::take(&mut *self.shared.spawned.borrow_mut());
        let mut new = new.into_iter();
        while let Some(future) = new.next() {
            let slot = match self.tasks.iter().position(Option::is_none) {
                Some(s) => s,
                None if self.tasks.len() < MAX_TASKS => {
                    self.tasks.push(None);
                    self.tasks.len() - 1
                }
                None => {
                    // Put the rest back so nothing is silently dropped.
                    let mut spawned = self.shared.spawned.borrow_mut();
                    spawned.push(future);
                    spawned.extend(new);
                    return Err(SpawnError::TooManyTasks);
                }
            };
            let waker = Waker::from(Arc::new(SlotWaker {
                ready: self.shared.ready.clone(),
                slot,
            }));
            self.tasks[slot] = Some(Task { future, waker });
            self.live += 1;
            self.shared.ready.mark(slot);
        }
        Ok(())
    }

    fn fire_timers(&mut self) {
        let now = self.shared.clock.now_ns();
        loop {
            let entry = {
                let mut q = self.shared.timers.borrow_mut();
                match q.heap.peek() {
                    Some(Reverse(t)) if t.deadline <= now => q.heap.pop(),
                    _ => None,
                }
            };
            match entry {
                Some(Reverse(t)) => t.waker.wake(),
                None => break,
            }
        }
    }

    fn poll_slot(&mut self, slot: usize) {
        let Some(Some(task)) = self.tasks.get_mut(slot) else {
            return;
        };
        let waker = task.waker.clone();
        let mut cx = Context::from_waker(&waker);
        if task.future.as_mut().poll(&mut cx).is_ready() {
            self.tasks[slot] = None;
            self.live -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicBool;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[derive(Clone, Default)]
    struct FakeClock(Arc<AtomicU64>);
    impl Clock for FakeClock {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }
    impl FakeClock {
        fn set(&self, t: u64) {
            self.0.store(t, Ordering::SeqCst)
        }
    }

    /// Steps until the executor would idle, returning that answer.
    fn settle(ex: &mut Executor) -> Idle {
        for _ in 0..1000 {
            match ex.step().unwrap() {
                Idle::Busy => continue,
                other => return other,
            }
        }
        panic!("executor never settled");
    }

    #[test]
    fn tasks_run_to_completion_and_free_their_slot() {
        let mut ex = Executor::new(FakeClock::default());
        let log = Rc::new(RefCell::new(Vec::new()));
        for i in 0..3 {
            let log = log.clone();
            ex.handle().spawn(async move { log.borrow_mut().push(i) });
        }
        assert_eq!(settle(&mut ex), Idle::Forever);
        assert_eq!(*log.borrow(), vec![0, 1, 2]);
        assert_eq!(ex.live_tasks(), 0);
    }

    #[test]
    fn sleep_wakes_at_the_deadline_not_before() {
        let clock = FakeClock::default();
        let mut ex = Executor::new(clock.clone());
        let h = ex.handle();
        let done = Rc::new(AtomicBool::new(false));
        let d = done.clone();
        ex.handle().spawn(async move {
            h.sleep(1_000).await;
            d.store(true, Ordering::SeqCst);
        });
        assert_eq!(settle(&mut ex), Idle::Until(1_000));
        clock.set(999);
        assert_eq!(settle(&mut ex), Idle::Until(1_000));
        assert!(!done.load(Ordering::SeqCst));
        clock.set(1_000);
        assert_eq!(settle(&mut ex), Idle::Forever);
        assert!(done.load(Ordering::SeqCst));
    }

    #[test]
    fn earliest_of_several_timers_is_reported() {
        let clock = FakeClock::default();
        let mut ex = Executor::new(clock.clone());
        for t in [500u64, 200, 900] {
            let h = ex.handle();
            ex.handle().spawn(async move { h.sleep(t).await });
        }
        assert_eq!(settle(&mut ex), Idle::Until(200));
        clock.set(600);
        assert_eq!(settle(&mut ex), Idle::Until(900));
        assert_eq!(ex.live_tasks(), 1);
    }

    #[test]
    fn timeout_returns_err_when_future_is_slower() {
        let clock = FakeClock::default();
        let mut ex = Executor::new(clock.clone());
        let h = ex.handle();
        let out = Rc::new(RefCell::new(None));
        let o = out.clone();
        ex.handle().spawn(async move {
            let slow = h.sleep(10_000);
            *o.borrow_mut() = Some(h.timeout(100, slow).await);
        });
        settle(&mut ex);
        clock.set(100);
        settle(&mut ex);
        assert_eq!(*out.borrow(), Some(Err(TimedOut)));
    }

    #[test]
    fn external_wake_marks_ready_and_is_seen_by_has_ready() {
        let mut ex = Executor::new(FakeClock::default());
        let slot: Rc<RefCell<Option<Waker>>> = Rc::default();
        let polls = Rc::new(RefCell::new(0));
        let (s, p) = (slot.clone(), polls.clone());
        ex.handle().spawn(core::future::poll_fn(move |cx| {
            *p.borrow_mut() += 1;
            *s.borrow_mut() = Some(cx.waker().clone());
            if *p.borrow() == 2 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }));
        assert_eq!(settle(&mut ex), Idle::Forever);
        assert!(!ex.has_ready());
        // As an interrupt handler would.
        slot.borrow().as_ref().unwrap().wake_by_ref();
        assert!(ex.has_ready());
        assert_eq!(settle(&mut ex), Idle::Forever);
        assert_eq!(*polls.borrow(), 2);
        assert_eq!(ex.live_tasks(), 0);
    }

    #[test]
    fn signal_wakes_every_waiter_once_set() {
        let mut ex = Executor::new(FakeClock::default());
        let signal = Signal::new();
        let woke = Rc::new(RefCell::new(0));
        for _ in 0..3 {
            let (s, w) = (signal.clone(), woke.clone());
            ex.handle().spawn(async move {
                s.wait().await;
                *w.borrow_mut() += 1;
            });
        }
        assert_eq!(settle(&mut ex), Idle::Forever);
        assert_eq!(*woke.borrow(), 0);
        signal.set();
        signal.set();
        settle(&mut ex);
        assert_eq!(*woke.borrow(), 3);
        assert_eq!(ex.live_tasks(), 0);
        // Waiting on a set signal completes at once.
        let w = woke.clone();
        let s = signal.clone();
        ex.handle().spawn(async move {
            s.wait().await;
            *w.borrow_mut() += 1;
        });
        settle(&mut ex);
        assert_eq!(*woke.borrow(), 4);
    }

    #[test]
    fn yield_now_lets_another_task_run_in_between() {
        let mut ex = Executor::new(FakeClock::default());
        let log = Rc::new(RefCell::new(Vec::new()));
        let (a, b) = (log.clone(), log.clone());
        ex.handle().spawn(async move {
            a.borrow_mut().push("a1");
            yield_now().await;
            a.borrow_mut().push("a2");
        });
        ex.handle().spawn(async move {
            b.borrow_mut().push("b1");
        });
        settle(&mut ex);
        assert_eq!(*log.borrow(), vec!["a1", "b1", "a2"]);
    }

    #[test]
    fn tasks_spawned_by_tasks_run() {
        let mut ex = Executor::new(FakeClock::default());
        let h = ex.handle();
        let hit = Rc::new(AtomicBool::new(false));
        let hh = hit.clone();
        ex.handle().spawn(async move {
            h.spawn(async move { hh.store(true, Ordering::SeqCst) });
        });
        settle(&mut ex);
        assert!(hit.load(Ordering::SeqCst));
    }

    #[test]
    fn spawning_past_the_limit_is_an_error_and_keeps_the_rest() {
        let mut ex = Executor::new(FakeClock::default());
        let h = ex.handle();
        for _ in 0..MAX_TASKS + 2 {
            let h2 = h.clone();
            h.spawn(async move { h2.sleep(1).await });
        }
        assert_eq!(ex.step(), Err(SpawnError::TooManyTasks));
        assert_eq!(ex.live_tasks(), MAX_TASKS);
        assert!(ex.has_ready(), "the two extra tasks stay queued");
    }
}
