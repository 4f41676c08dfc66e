//! [`ConsoleBackend`] over keel-console's [`ConsoleSet`]: the kernel maps the guest's
//! console page and binds its channel ([`ConsolePages`]); the set serves it from then on.

use keel_console::{AttachError, ConsolePage, ConsoleSet};

use crate::builder::ConsoleBackend;

/// The kernel's part of attaching a console: map the guest's console frame (grant 0, or
/// the console gfn) as a page, bind an interdomain channel to the guest's `port` and route
/// its events to `ConsoleSet::service`; and undo both.
pub trait ConsolePages {
    type Page: ConsolePage;
    type Error: core::fmt::Debug;
    fn map(
        &mut self,
        domid: u16,
        console_gfn: u64,
        console_port: u32,
    ) -> Result<Self::Page, Self::Error>;
    fn unmap(&mut self, domid: u16, page: Self::Page);
    /// Notify the guest's console channel.
    fn notify(&mut self, domid: u16);
}

/// Why a console could not be attached; nothing stays mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleAttachError<E> {
    Map(E),
    Attach(AttachError),
}

/// The console backend as the toolstack drives it, lent for one call.
pub struct Consoles<'a, M: ConsolePages> {
    pub set: &'a mut ConsoleSet<M::Page>,
    pub pages: &'a mut M,
}

impl<M: ConsolePages> ConsoleBackend for Consoles<'_, M> {
    type Error = ConsoleAttachError<M::Error>;

    fn attach(
        &mut self,
        domid: u16,
        console_port: u32,
        console_gfn: u64,
    ) -> Result<(), Self::Error> {
        let page = self
            .pages
            .map(domid, console_gfn, console_port)
            .map_err(ConsoleAttachError::Map)?;
        if let Err((e, page)) = self.set.attach(domid, page) {
            self.pages.unmap(domid, page);
            return Err(ConsoleAttachError::Attach(e));
        }
        // The builder's domain has not run yet, but a console re-attached for a domain
        // that has may hold output already; a corrupt ring shows up in the console state.
        if let Ok(serviced) = self.set.service(domid) {
            if serviced.notify {
                self.pages.notify(domid);
            }
        }
        Ok(())
    }

    fn detach(&mut self, domid: u16) {
        if let Some(page) = self.set.detach(domid) {
            self.pages.unmap(domid, page);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::vec::Vec;
    use keel_console::fake::BytePage;

    #[derive(Default)]
    struct Pages {
        mapped: Vec<u16>,
        unmapped: Vec<u16>,
        notified: Vec<u16>,
        fail: bool,
        /// Output the guest wrote before we attached.
        early: &'static [u8],
    }

    #[derive(Debug, PartialEq, Eq)]
    struct NoSuchGrant;

    impl ConsolePages for Pages {
        type Page = Box<BytePage>;
        type Error = NoSuchGrant;
        fn map(&mut self, domid: u16, gfn: u64, port: u32) -> Result<Box<BytePage>, NoSuchGrant> {
            assert_eq!((gfn, port), (0xfefff, 4));
            if self.fail {
                return Err(NoSuchGrant);
            }
            self.mapped.push(domid);
            let page = Box::new(BytePage::new());
            page.guest_write_output(self.early).unwrap();
            Ok(page)
        }
        fn unmap(&mut self, domid: u16, _: Box<BytePage>) {
            self.unmapped.push(domid);
        }
        fn notify(&mut self, domid: u16) {
            self.notified.push(domid);
        }
    }

    #[test]
    fn attach_serves_early_output_and_detach_unmaps() {
        let mut set = ConsoleSet::new(1024);
        let mut pages = Pages {
            early: b"early",
            ..Pages::default()
        };
        let mut consoles = Consoles {
            set: &mut set,
            pages: &mut pages,
        };
        consoles.attach(5, 4, 0xfefff).unwrap();
        consoles.detach(5);
        consoles.detach(5);
        assert_eq!(pages.mapped, [5]);
        assert_eq!(pages.notified, [5]);
        assert_eq!(pages.unmapped, [5], "unmapped once");
        assert!(!set.is_attached(5));
    }

    #[test]
    fn failures_leave_nothing_mapped() {
        let mut set = ConsoleSet::new(1024);
        let mut pages = Pages {
            fail: true,
            ..Pages::default()
        };
        let mut consoles = Consoles {
            set: &mut set,
            pages: &mut pages,
        };
        assert_eq!(
            consoles.attach(5, 4, 0xfefff),
            Err(ConsoleAttachError::Map(NoSuchGrant))
        );
        pages.fail = false;
        let mut consoles = Consoles {
            set: &mut set,
            pages: &mut pages,
        };
        consoles.attach(5, 4, 0xfefff).unwrap();
        assert_eq!(
            consoles.attach(5, 4, 0xfefff),
            Err(ConsoleAttachError::Attach(AttachError::AlreadyAttached))
        );
        assert_eq!(pages.mapped, [5, 5]);
        assert_eq!(pages.unmapped, [5], "the second page went back");
        assert!(set.is_attached(5));
    }
}
