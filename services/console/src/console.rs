//! One guest's console: its ring, its output history and its pending input.
//!
//! [`Console::service`] is what the glue calls when the guest's console event channel fires
//! (and after queueing input): it moves guest output into the history and queued input into
//! the ring, and says whether to notify the guest. Work per call is bounded by one ring's
//! worth of output, so a guest that writes without pause cannot hold the CPU; the glue calls
//! again when [`Serviced::more_output`] is set.

use alloc::collections::{TryReserveError, VecDeque};

use crate::history::History;
use crate::page::{ConsolePage, OUT_RING_SIZE};
use crate::ring::{ConsoleRing, RingError};
use crate::stream::ConsoleStream;

/// Client input held for a guest that is not reading it yet. Beyond this, writes are
/// accepted only partly and the client is expected to wait (TCP backpressure).
pub const INPUT_QUEUE_BYTES: usize = 4096;

/// Whether the console still talks to its guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleState {
    Connected,
    /// The guest corrupted the ring; it is no longer read or written. History stays readable.
    Disconnected(RingError),
}

/// Why a console operation did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleError {
    /// No console is attached for that domain.
    NoSuchConsole,
    /// The ring was found corrupt (now or earlier).
    Disconnected(RingError),
}

/// What one [`Console::service`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Serviced {
    /// Guest output bytes moved into the history.
    pub output_bytes: usize,
    /// Queued input bytes moved into the guest's ring.
    pub input_bytes: usize,
    /// The glue must notify the guest's console event channel.
    pub notify: bool,
    /// Output remains in the ring: call `service` again soon.
    pub more_output: bool,
}

/// A guest console backend.
#[derive(Debug)]
pub struct Console<P> {
    ring: ConsoleRing<P>,
    state: ConsoleState,
    history: History,
    input: VecDeque<u8>,
}

impl<P: ConsolePage> Console<P> {
    /// A console over `page` keeping up to `history_bytes` of output. Its history and input
    /// queue take memory as output and input arrive, fallibly, within their bounds; a
    /// history size that could never be allocated gives the page back with the error.
    pub fn new(page: P, history_bytes: usize) -> Result<Self, (TryReserveError, P)> {
        let history = match History::with_capacity(history_bytes) {
            Ok(h) => h,
            Err(e) => return Err((e, page)),
        };
        let input = VecDeque::new();
        Ok(Console {
            ring: ConsoleRing::new(page),
            state: ConsoleState::Connected,
            history,
            input,
        })
    }

    pub fn state(&self) -> ConsoleState {
        self.state
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// A reader that replays the retained history, then follows live output.
    pub fn stream_from_oldest(&self) -> ConsoleStream {
        ConsoleStream::from_oldest(&self.history)
    }

    /// Input bytes queued and not yet in the guest's ring.
    pub fn input_queued(&self) -> usize {
        self.input.len()
    }

    /// Gives the page back (to be unmapped).
    pub fn into_page(self) -> P {
        self.ring.into_page()
    }

    fn check_connected(&self) -> Result<(), ConsoleError> {
        match self.state {
            ConsoleState::Connected => Ok(()),
            ConsoleState::Disconnected(e) => Err(ConsoleError::Disconnected(e)),
        }
    }

    fn disconnect(&mut self, error: RingError) -> ConsoleError {
        self.state = ConsoleState::Disconnected(error);
        self.input.clear();
        ConsoleError::Disconnected(error)
    }

    /// Queues client input for the guest; returns how many bytes were accepted (fewer than
    /// given when the queue is full). Call [`Console::service`] afterwards to deliver it.
    pub fn queue_input(&mut self, bytes: &[u8]) -> Result<usize, ConsoleError> {
        self.check_connected()?;
        let n = (INPUT_QUEUE_BYTES - self.input.len()).min(bytes.len());
        if self.input.try_reserve(n).is_err() {
            // No memory now: nothing accepted, the client waits as on a full queue.
            return Ok(0);
        }
        self.input.extend(bytes.iter().take(n).copied());
        Ok(n)
    }

    /// Moves guest output into the history and queued input into the guest's ring.
    pub fn service(&mut self) -> Result<Serviced, ConsoleError> {
        self.check_connected()?;
        let mut done = Serviced::default();
        let mut buf = [0u8; 512];
        while done.output_bytes < OUT_RING_SIZE {
            let room = (OUT_RING_SIZE - done.output_bytes).min(buf.len());
            let n = match self.ring.read_output(&mut buf[..room]) {
                Ok(n) => n,
                Err(e) => return Err(self.disconnect(e)),
            };
            if n == 0 {
                break;
            }
            self.history.append(&buf[..n]);
            done.output_bytes += n;
        }
        done.more_output = match self.ring.output_pending() {
            Ok(n) => n > 0,
            Err(e) => return Err(self.disconnect(e)),
        };
        while !self.input.is_empty() {
            let (front, _) = self.input.as_slices();
            let n = match self.ring.write_input(front) {
                Ok(n) => n,
                Err(e) => return Err(self.disconnect(e)),
            };
            if n == 0 {
                break;
            }
            self.input.drain(..n);
            done.input_bytes += n;
        }
        if self.input.is_empty() && self.input.capacity() > 0 {
            // Input is rare (a person typing): hold no queue between keystrokes.
            self.input = VecDeque::new();
        }
        done.notify = done.output_bytes > 0 || done.input_bytes > 0;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::BytePage;
    use crate::page::{Index, IN_RING_SIZE};
    use crate::ring::Ring;

    #[test]
    fn output_reaches_history_and_input_reaches_guest() {
        let page = BytePage::new();
        let mut console = Console::new(&page, 1024).ok().unwrap();
        page.guest_write_output(b"login: ").unwrap();
        assert_eq!(console.queue_input(b"root\n"), Ok(5));
        let s = console.service().unwrap();
        assert_eq!(
            s,
            Serviced {
                output_bytes: 7,
                input_bytes: 5,
                notify: true,
                more_output: false
            }
        );
        assert_eq!(console.history().snapshot().unwrap(), b"login: ");
        assert_eq!(page.guest_read_input(100).unwrap(), b"root\n");
        assert_eq!(console.service().unwrap(), Serviced::default());
    }

    #[test]
    fn input_waits_in_a_bounded_queue_while_the_guest_does_not_read() {
        let page = BytePage::new();
        let mut console = Console::new(&page, 64).ok().unwrap();
        let big = alloc::vec![b'k'; 10_000];
        let accepted = console.queue_input(&big).unwrap();
        assert_eq!(accepted, INPUT_QUEUE_BYTES);
        assert_eq!(console.queue_input(b"x"), Ok(0));
        let s = console.service().unwrap();
        assert_eq!(s.input_bytes, IN_RING_SIZE);
        assert_eq!(console.input_queued(), INPUT_QUEUE_BYTES - IN_RING_SIZE);
        // The guest reads a little; the next service moves exactly that much more.
        page.guest_read_input(100).unwrap();
        assert_eq!(console.service().unwrap().input_bytes, 100);
        assert_eq!(console.queue_input(&big), Ok(IN_RING_SIZE + 100));
    }

    #[test]
    fn work_per_call_is_bounded_by_one_ring() {
        let page = BytePage::new();
        let mut console = Console::new(&page, 8192).ok().unwrap();
        page.guest_write_output(&[b'a'; OUT_RING_SIZE]).unwrap();
        // A hostile guest rewinds its consumer index to make us re-read the ring forever;
        // each call still reads at most one ring.
        for round in 1..=3u32 {
            let s = console.service().unwrap();
            assert_eq!(s.output_bytes, OUT_RING_SIZE);
            assert!(!s.more_output);
            page.set_index(Index::OutCons, 0);
            page.set_index(Index::OutProd, OUT_RING_SIZE as u32);
            assert_eq!(console.history().end_seq(), u64::from(round) * 2048);
        }
    }

    #[test]
    fn corrupt_indices_disconnect_for_good_but_history_stays() {
        let page = BytePage::new();
        let mut console = Console::new(&page, 64).ok().unwrap();
        page.guest_write_output(b"panic").unwrap();
        console.service().unwrap();
        page.set_index(Index::OutProd, 5 + 4000);
        let err = ConsoleError::Disconnected(RingError::Corrupt {
            ring: Ring::Out,
            cons: 5,
            prod: 4005,
        });
        assert_eq!(console.service(), Err(err));
        assert_eq!(
            console.state(),
            ConsoleState::Disconnected(match err {
                ConsoleError::Disconnected(e) => e,
                ConsoleError::NoSuchConsole => unreachable!(),
            })
        );
        // Repaired indices do not reconnect it, and input is refused.
        page.set_index(Index::OutProd, 5);
        assert_eq!(console.service(), Err(err));
        assert_eq!(console.queue_input(b"x"), Err(err));
        assert_eq!(console.history().snapshot().unwrap(), b"panic");
    }

    #[test]
    fn corrupt_input_indices_disconnect() {
        let page = BytePage::new();
        let mut console = Console::new(&page, 64).ok().unwrap();
        page.set_index(Index::InCons, 7);
        page.set_index(Index::InProd, 3);
        console.queue_input(b"x").unwrap();
        assert!(matches!(
            console.service(),
            Err(ConsoleError::Disconnected(RingError::Corrupt {
                ring: Ring::In,
                ..
            }))
        ));
        assert_eq!(console.input_queued(), 0);
    }

    #[test]
    fn the_kernel_page_type_serves_a_guest() {
        use crate::page::XenconsInterface;
        use core::sync::atomic::Ordering;
        let page = XenconsInterface::zeroed();
        // The guest (hvc_xen) writes "ok\r\n" and publishes it.
        for (i, b) in b"ok\r\n".iter().enumerate() {
            page.output[i].store(*b, Ordering::Relaxed);
        }
        page.out_prod.store(4, Ordering::Release);
        let mut console = Console::new(&page, 64).ok().unwrap();
        console.queue_input(b"y").unwrap();
        let s = console.service().unwrap();
        assert_eq!((s.output_bytes, s.input_bytes), (4, 1));
        assert_eq!(console.history().snapshot().unwrap(), b"ok\r\n");
        assert_eq!(page.out_cons.load(Ordering::Acquire), 4);
        assert_eq!(page.in_prod.load(Ordering::Acquire), 1);
        assert_eq!(page.input[0].load(Ordering::Relaxed), b'y');
    }
}
