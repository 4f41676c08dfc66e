//! What the console route needs from the guests' console backend, handed to the server by
//! the kernel ([`crate::ManagementServer::set_consoles`]): open a session on a domain's
//! console, read its output, type into it. The route itself is `connection/console.rs`;
//! the protocol is in docs/guests.md, "Console".

use keel_console::{ConsoleError, ConsolePage, ConsoleSession, ConsoleSet};

/// The guests' consoles as the management server uses them. The kernel implements it over
/// its toolstack's [`ConsoleSet`] (notifying the guest after input); tests use a
/// [`ConsoleSet`] over fake pages.
pub trait ConsoleAccess {
    /// A session on `domid`'s console, reading from the oldest retained byte.
    fn open(&mut self, domid: u16) -> Result<ConsoleSession, ConsoleError>;
    /// The next output for `session` into `out`; 0 when it is up to date. An error once
    /// the console is gone (the domain was destroyed): the connection ends.
    fn output(
        &mut self,
        session: &mut ConsoleSession,
        out: &mut [u8],
    ) -> Result<usize, ConsoleError>;
    /// Whether `session` has output waiting (or its console is gone).
    fn has_output(&self, session: &ConsoleSession) -> bool;
    /// Input typed by `session`'s client; returns how much the console took (less than
    /// `bytes` while its input queue is full: the rest is offered again later).
    fn input(&mut self, session: &ConsoleSession, bytes: &[u8]) -> Result<usize, ConsoleError>;
}

/// A bare [`ConsoleSet`] (no guest to notify): what host tests and tools use.
impl<P: ConsolePage> ConsoleAccess for ConsoleSet<P> {
    fn open(&mut self, domid: u16) -> Result<ConsoleSession, ConsoleError> {
        self.open_session(domid)
    }

    fn output(
        &mut self,
        session: &mut ConsoleSession,
        out: &mut [u8],
    ) -> Result<usize, ConsoleError> {
        self.session_output(session, out)
    }

    fn has_output(&self, session: &ConsoleSession) -> bool {
        self.session_has_output(session)
    }

    fn input(&mut self, session: &ConsoleSession, bytes: &[u8]) -> Result<usize, ConsoleError> {
        self.session_input(session, bytes)
            .map(|(accepted, _)| accepted)
    }
}

/// Shared ownership, as the kernel and tests hold the set beside the server.
impl<A: ConsoleAccess> ConsoleAccess for alloc::rc::Rc<core::cell::RefCell<A>> {
    fn open(&mut self, domid: u16) -> Result<ConsoleSession, ConsoleError> {
        self.borrow_mut().open(domid)
    }

    fn output(
        &mut self,
        session: &mut ConsoleSession,
        out: &mut [u8],
    ) -> Result<usize, ConsoleError> {
        self.borrow_mut().output(session, out)
    }

    fn has_output(&self, session: &ConsoleSession) -> bool {
        self.borrow().has_output(session)
    }

    fn input(&mut self, session: &ConsoleSession, bytes: &[u8]) -> Result<usize, ConsoleError> {
        self.borrow_mut().input(session, bytes)
    }
}
