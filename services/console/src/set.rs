//! The consoles of all running guests, keyed by domain id: what the kernel glue holds and
//! what the management server's console route reads from and writes to.

use alloc::collections::BTreeMap;

use crate::console::{Console, ConsoleError, Serviced};
use crate::history::DEFAULT_HISTORY_BYTES;
use crate::page::ConsolePage;
use crate::stream::ConsoleStream;

/// Why [`ConsoleSet::attach`] refused; the page comes back with the error so the caller can
/// unmap it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachError {
    /// That domain already has a console.
    AlreadyAttached,
    /// The history or input queue could not be allocated.
    OutOfMemory,
}

/// Consoles by domain id.
#[derive(Debug)]
pub struct ConsoleSet<P> {
    consoles: BTreeMap<u16, Console<P>>,
    history_bytes: usize,
}

impl<P: ConsolePage> Default for ConsoleSet<P> {
    fn default() -> Self {
        Self::new(DEFAULT_HISTORY_BYTES)
    }
}

impl<P: ConsolePage> ConsoleSet<P> {
    /// An empty set whose consoles each keep `history_bytes` of output.
    pub fn new(history_bytes: usize) -> Self {
        ConsoleSet {
            consoles: BTreeMap::new(),
            history_bytes,
        }
    }

    /// Starts serving `domid`'s console page (already mapped by the caller). Call
    /// [`ConsoleSet::service`] once afterwards: the guest may have written before we attached.
    pub fn attach(&mut self, domid: u16, page: P) -> Result<(), (AttachError, P)> {
        if self.consoles.contains_key(&domid) {
            return Err((AttachError::AlreadyAttached, page));
        }
        let console = Console::new(page, self.history_bytes)
            .map_err(|(_, page)| (AttachError::OutOfMemory, page))?;
        self.consoles.insert(domid, console);
        Ok(())
    }

    /// Stops serving `domid`'s console and returns its page for unmapping.
    pub fn detach(&mut self, domid: u16) -> Option<P> {
        self.consoles.remove(&domid).map(Console::into_page)
    }

    pub fn get(&self, domid: u16) -> Option<&Console<P>> {
        self.consoles.get(&domid)
    }

    pub fn is_attached(&self, domid: u16) -> bool {
        self.consoles.contains_key(&domid)
    }

    /// Domains with a console.
    pub fn domains(&self) -> impl Iterator<Item = u16> + '_ {
        self.consoles.keys().copied()
    }

    /// See [`Console::service`].
    pub fn service(&mut self, domid: u16) -> Result<Serviced, ConsoleError> {
        self.consoles
            .get_mut(&domid)
            .ok_or(ConsoleError::NoSuchConsole)?
            .service()
    }

    /// Queues client input and delivers what fits at once; returns the bytes accepted and
    /// what the delivery did (notify the guest when `notify`).
    pub fn write_input(
        &mut self,
        domid: u16,
        bytes: &[u8],
    ) -> Result<(usize, Serviced), ConsoleError> {
        let console = self
            .consoles
            .get_mut(&domid)
            .ok_or(ConsoleError::NoSuchConsole)?;
        let accepted = console.queue_input(bytes)?;
        Ok((accepted, console.service()?))
    }

    /// A new reader of `domid`'s console, from the oldest retained byte.
    pub fn open_stream(&self, domid: u16) -> Result<ConsoleStream, ConsoleError> {
        self.get(domid)
            .map(Console::stream_from_oldest)
            .ok_or(ConsoleError::NoSuchConsole)
    }

    /// Advances `stream` over `domid`'s output; see [`ConsoleStream::fill`].
    /// `NoSuchConsole` once the console is detached: the connection should close.
    pub fn fill(
        &self,
        domid: u16,
        stream: &mut ConsoleStream,
        out: &mut [u8],
    ) -> Result<usize, ConsoleError> {
        let console = self.get(domid).ok_or(ConsoleError::NoSuchConsole)?;
        Ok(stream.fill(console.history(), out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::BytePage;
    use crate::page::Index;
    use crate::ring::RingError;

    #[test]
    fn attach_serve_stream_detach() {
        let page = BytePage::new();
        page.guest_write_output(b"early ").unwrap();
        let mut set = ConsoleSet::new(256);
        set.attach(7, &page).unwrap();
        assert!(set.is_attached(7));
        assert_eq!(set.service(7).unwrap().output_bytes, 6);
        let mut reader = set.open_stream(7).unwrap();
        page.guest_write_output(b"late").unwrap();
        set.service(7).unwrap();
        let mut buf = [0u8; 128];
        let n = set.fill(7, &mut reader, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"early late");

        let (accepted, serviced) = set.write_input(7, b"ls\n").unwrap();
        assert_eq!(accepted, 3);
        assert!(serviced.notify);
        assert_eq!(page.guest_read_input(10).unwrap(), b"ls\n");

        assert_eq!(set.domains().collect::<alloc::vec::Vec<_>>(), [7]);
        assert!(set.detach(7).is_some());
        assert_eq!(
            set.fill(7, &mut reader, &mut buf),
            Err(ConsoleError::NoSuchConsole)
        );
        assert_eq!(set.service(7), Err(ConsoleError::NoSuchConsole));
        assert!(set.detach(7).is_none());
    }

    #[test]
    fn a_second_attach_is_refused_and_returns_the_page() {
        let first = BytePage::new();
        let second = BytePage::new();
        let mut set = ConsoleSet::new(64);
        set.attach(3, &first).unwrap();
        let (err, page) = set.attach(3, &second).unwrap_err();
        assert_eq!(err, AttachError::AlreadyAttached);
        assert!(core::ptr::eq(page, &second));
    }

    #[test]
    fn an_allocation_failure_returns_the_page() {
        let page = BytePage::new();
        let mut set = ConsoleSet::new(usize::MAX);
        let (err, back) = set.attach(3, &page).unwrap_err();
        assert_eq!(err, AttachError::OutOfMemory);
        assert!(core::ptr::eq(back, &page));
        assert!(!set.is_attached(3));
    }

    #[test]
    fn one_hostile_guest_does_not_affect_another() {
        let good = BytePage::new();
        let bad = BytePage::new();
        let mut set = ConsoleSet::new(64);
        set.attach(1, &good).unwrap();
        set.attach(2, &bad).unwrap();
        bad.set_index(Index::OutProd, 99_999);
        good.guest_write_output(b"fine").unwrap();
        assert!(matches!(
            set.service(2),
            Err(ConsoleError::Disconnected(RingError::Corrupt { .. }))
        ));
        assert_eq!(set.service(1).unwrap().output_bytes, 4);
        assert!(matches!(
            set.write_input(2, b"x"),
            Err(ConsoleError::Disconnected(_))
        ));
    }
}
