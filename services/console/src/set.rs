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
    /// Each console with the generation of its attachment.
    consoles: BTreeMap<u16, (Console<P>, u64)>,
    history_bytes: usize,
    next_generation: u64,
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
            next_generation: 0,
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
        self.consoles.insert(domid, (console, self.next_generation));
        self.next_generation += 1;
        Ok(())
    }

    /// Stops serving `domid`'s console and returns its page for unmapping.
    pub fn detach(&mut self, domid: u16) -> Option<P> {
        self.consoles.remove(&domid).map(|(c, _)| c.into_page())
    }

    pub fn get(&self, domid: u16) -> Option<&Console<P>> {
        self.consoles.get(&domid).map(|(c, _)| c)
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
            .0
            .service()
    }

    /// Queues client input and delivers what fits at once; returns the bytes accepted and
    /// what the delivery did (notify the guest when `notify`).
    pub fn write_input(
        &mut self,
        domid: u16,
        bytes: &[u8],
    ) -> Result<(usize, Serviced), ConsoleError> {
        let (console, _) = self
            .consoles
            .get_mut(&domid)
            .ok_or(ConsoleError::NoSuchConsole)?;
        let accepted = console.queue_input(bytes)?;
        Ok((accepted, console.service()?))
    }

    /// A client session on `domid`'s console: its reader starts at the oldest retained
    /// byte. The session is bound to this attachment: if the domain is destroyed and its id
    /// reused, the session sees `NoSuchConsole`, never the new guest's console.
    pub fn open_session(&self, domid: u16) -> Result<ConsoleSession, ConsoleError> {
        let (console, generation) = self
            .consoles
            .get(&domid)
            .ok_or(ConsoleError::NoSuchConsole)?;
        Ok(ConsoleSession {
            domid,
            generation: *generation,
            stream: console.stream_from_oldest(),
        })
    }

    fn session_console(&self, session: &ConsoleSession) -> Result<&Console<P>, ConsoleError> {
        match self.consoles.get(&session.domid) {
            Some((console, generation)) if *generation == session.generation => Ok(console),
            _ => Err(ConsoleError::NoSuchConsole),
        }
    }

    /// The next output for `session` into `out` (see [`ConsoleStream::fill`]); 0 when it is
    /// up to date. `NoSuchConsole` once the console is detached: close the connection.
    pub fn session_output(
        &self,
        session: &mut ConsoleSession,
        out: &mut [u8],
    ) -> Result<usize, ConsoleError> {
        let console = self.session_console(session)?;
        Ok(session.stream.fill(console.history(), out))
    }

    /// Whether `session` has output waiting (or its console is gone, which the next
    /// [`ConsoleSet::session_output`] reports).
    pub fn session_has_output(&self, session: &ConsoleSession) -> bool {
        self.session_console(session)
            .map_or(true, |c| session.stream.has_pending(c.history()))
    }

    /// Input typed by `session`'s client; see [`ConsoleSet::write_input`].
    pub fn session_input(
        &mut self,
        session: &ConsoleSession,
        bytes: &[u8],
    ) -> Result<(usize, Serviced), ConsoleError> {
        self.session_console(session)?;
        self.write_input(session.domid, bytes)
    }
}

/// One client connection to one console attachment (the raw phase after `CONNECT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    domid: u16,
    generation: u64,
    stream: ConsoleStream,
}

impl ConsoleSession {
    pub fn domid(&self) -> u16 {
        self.domid
    }

    /// Sequence number of the next output byte this client gets.
    pub fn position(&self) -> u64 {
        self.stream.position()
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
        let mut session = set.open_session(7).unwrap();
        assert!(set.session_has_output(&session));
        page.guest_write_output(b"late").unwrap();
        set.service(7).unwrap();
        let mut buf = [0u8; 128];
        let n = set.session_output(&mut session, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"early late");
        assert!(!set.session_has_output(&session));
        assert_eq!(session.position(), 10);

        let (accepted, serviced) = set.session_input(&session, b"ls\n").unwrap();
        assert_eq!(accepted, 3);
        assert!(serviced.notify);
        assert_eq!(page.guest_read_input(10).unwrap(), b"ls\n");

        assert_eq!(set.domains().collect::<alloc::vec::Vec<_>>(), [7]);
        assert!(set.detach(7).is_some());
        assert_eq!(
            set.session_output(&mut session, &mut buf),
            Err(ConsoleError::NoSuchConsole)
        );
        assert!(
            set.session_has_output(&session),
            "so that the glue looks and closes"
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

    #[test]
    fn a_session_never_follows_a_reused_domain_id() {
        let old = BytePage::new();
        let new = BytePage::new();
        let mut set = ConsoleSet::new(64);
        set.attach(4, &old).unwrap();
        let mut session = set.open_session(4).unwrap();
        set.detach(4);
        set.attach(4, &new).unwrap();
        new.guest_write_output(b"secret").unwrap();
        set.service(4).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(
            set.session_output(&mut session, &mut buf),
            Err(ConsoleError::NoSuchConsole)
        );
        assert_eq!(
            set.session_input(&session, b"rm -rf /\n"),
            Err(ConsoleError::NoSuchConsole)
        );
        assert_eq!(new.guest_read_input(64).unwrap(), b"");
        // A new session sees the new console.
        let mut fresh = set.open_session(4).unwrap();
        let n = set.session_output(&mut fresh, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"secret");
    }
}
