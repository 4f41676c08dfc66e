//! The console and store pages mapped through the guest's reserved grants and their
//! channels bound, against `FakeXen`'s grant table and event channels.

// Helpers outside `#[test]` functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use keel_console::page::offset;
use keel_console::{ConsolePage, ConsoleSet, Index, IN_RING_SIZE, OUT_RING_SIZE};
use keel_toolstack::*;
use keel_xen::evtchn::Port;
use keel_xen::fake::FakeXen;
use keel_xen::grant_table::{gtf, GrantRef};
use keel_xen::xenstore_ring::{XsRingError, SERVER_FEATURE_ERROR};
use keel_xenstored::RingPage;

const CONSOLE_FRAME: u64 = 0x10_0100;
const STORE_FRAME: u64 = 0x10_0200;

/// A foreign frame of the fake, seen through its byte accessors.
struct FramePage<'x> {
    xen: &'x FakeXen,
    frame: u64,
}

impl FramePage<'_> {
    fn u32_at(&self, at: usize) -> u32 {
        let b = self.xen.read_foreign_frame(self.frame, at, 4);
        u32::from_le_bytes(b.try_into().unwrap())
    }
    fn set_u32_at(&self, at: usize, v: u32) {
        self.xen
            .write_foreign_frame(self.frame, at, &v.to_le_bytes());
    }
}

impl ConsolePage for FramePage<'_> {
    fn load_index(&self, index: Index) -> u32 {
        self.u32_at(index.offset())
    }
    fn store_index(&self, index: Index, value: u32) {
        self.set_u32_at(index.offset(), value)
    }
    fn out_byte(&self, slot: usize) -> u8 {
        self.xen
            .read_foreign_frame(self.frame, offset::OUT + slot % OUT_RING_SIZE, 1)[0]
    }
    fn set_in_byte(&self, slot: usize, byte: u8) {
        self.xen
            .write_foreign_frame(self.frame, offset::IN + slot % IN_RING_SIZE, &[byte]);
    }
}

/// Enough of a store page to see `prepare` at introduction.
impl RingPage for FramePage<'_> {
    fn read_requests(&self, _: &mut [u8]) -> Result<usize, XsRingError> {
        Ok(0)
    }
    fn write_responses(&self, _: &[u8]) -> Result<usize, XsRingError> {
        Ok(0)
    }
    fn set_error(&self, code: u32) {
        self.set_u32_at(2072, code)
    }
    fn reset(&self, server_features: u32) {
        for at in [2048, 2052, 2056, 2060, 2068, 2072] {
            self.set_u32_at(at, 0);
        }
        self.set_u32_at(2064, server_features);
    }
}

/// Hole frames from 0x9000 up; what each will show is known to the test beforehand.
struct Frames<'x> {
    xen: &'x FakeXen,
    next: u64,
    free: Vec<u64>,
    shows: BTreeMap<u64, u64>,
    allocated: usize,
}

impl<'x> MapFrames for Frames<'x> {
    type View = Box<FramePage<'x>>;
    fn allocate(&mut self) -> Option<u64> {
        self.allocated += 1;
        Some(self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next
        }))
    }
    fn free(&mut self, gfn: u64) {
        self.allocated -= 1;
        self.free.push(gfn);
    }
    fn view(&self, gfn: u64) -> Box<FramePage<'x>> {
        Box::new(FramePage {
            xen: self.xen,
            frame: self.shows[&gfn],
        })
    }
}

fn guest(xen: &FakeXen) -> (Port, Port) {
    xen.add_foreign_grant(5, GrantRef(0), 0, gtf::PERMIT_ACCESS, CONSOLE_FRAME);
    xen.add_foreign_grant(5, GrantRef(1), 0, gtf::PERMIT_ACCESS, STORE_FRAME);
    (
        xen.foreign_unbound_port(5, 0),
        xen.foreign_unbound_port(5, 0),
    )
}

#[test]
fn the_console_page_is_mapped_served_notified_and_unmapped() {
    let xen = FakeXen::new();
    let (console_port, _) = guest(&xen);
    let mut frames = Frames {
        xen: &xen,
        next: 0x9000,
        free: vec![],
        shows: BTreeMap::from([(0x9001, CONSOLE_FRAME)]),
        allocated: 0,
    };
    let mut pages = MappedPages::default();
    let mut set = ConsoleSet::new(1024);
    // The guest wrote before we attached.
    xen.write_foreign_frame(CONSOLE_FRAME, offset::OUT, b"boot\n");
    xen.write_foreign_frame(CONSOLE_FRAME, offset::OUT_PROD, &5u32.to_le_bytes());
    {
        let mut mapper = GrantMapper {
            hv: &xen,
            frames: &mut frames,
            pages: &mut pages,
        };
        let mut consoles = Consoles {
            set: &mut set,
            pages: &mut mapper,
        };
        consoles.attach(5, console_port.0, 0xfefff).unwrap();
    }
    assert_eq!(set.get(5).unwrap().history().snapshot().unwrap(), b"boot\n");
    let flags = xen.foreign_grant_flags(5, GrantRef(0));
    assert_ne!(flags & (gtf::READING | gtf::WRITING), 0, "mapped writable");
    assert_eq!(
        xen.sent_notifications(),
        [(5, console_port)],
        "told the guest"
    );
    let local = pages.console_ports[&5];
    assert_eq!(pages.console_of_port(local), Some(5));

    // Input reaches the guest's frame.
    set.write_input(5, b"ls\n").unwrap();
    assert_eq!(
        xen.read_foreign_frame(CONSOLE_FRAME, offset::IN, 3),
        b"ls\n"
    );

    {
        let mut mapper = GrantMapper {
            hv: &xen,
            frames: &mut frames,
            pages: &mut pages,
        };
        let mut consoles = Consoles {
            set: &mut set,
            pages: &mut mapper,
        };
        consoles.detach(5);
    }
    assert_eq!(
        xen.foreign_grant_flags(5, GrantRef(0)) & (gtf::READING | gtf::WRITING),
        0,
        "unmapped"
    );
    assert_eq!(frames.allocated, 0);
    assert!(pages.console_ports.is_empty());
    assert_eq!(pages.leaks, 0);
}

#[test]
fn the_store_page_is_prepared_at_introduction_and_released() {
    let xen = FakeXen::new();
    let (_, store_port) = guest(&xen);
    xen.write_foreign_frame(STORE_FRAME, 2048, &[0xff; 28]);
    let mut frames = Frames {
        xen: &xen,
        next: 0x9000,
        free: vec![],
        shows: BTreeMap::from([(0x9001, STORE_FRAME)]),
        allocated: 0,
    };
    let mut pages = MappedPages::default();
    let mut mapper = GrantMapper {
        hv: &xen,
        frames: &mut frames,
        pages: &mut pages,
    };
    StoreRings::map(&mut mapper, 5, 0xfeffc, store_port.0).unwrap();
    assert_eq!(
        StoreRings::map(&mut mapper, 5, 0xfeffc, store_port.0),
        Err(StoreError::Exists)
    );
    let page = &mapper.pages.store_rings[&5];
    assert_eq!(page.view().u32_at(2064), SERVER_FEATURE_ERROR);
    assert_eq!(page.view().u32_at(2052), 0, "indices reset");
    let local = page.local_port();
    assert_eq!(mapper.pages.store_of_port(local), Some(5));
    StoreRings::unmap(&mut mapper, 5);
    StoreRings::unmap(&mut mapper, 5);
    assert!(pages.store_rings.is_empty());
    assert_eq!(frames.allocated, 0);
}

#[test]
fn failures_give_the_frame_back() {
    let xen = FakeXen::new();
    let (console_port, _) = guest(&xen);
    let mut frames = Frames {
        xen: &xen,
        next: 0x9000,
        free: vec![],
        shows: BTreeMap::new(),
        allocated: 0,
    };
    let mut pages = MappedPages::<Box<FramePage<'_>>>::default();
    let mut mapper = GrantMapper {
        hv: &xen,
        frames: &mut frames,
        pages: &mut pages,
    };
    // No grant from domain 6.
    assert!(matches!(
        ConsolePages::map(&mut mapper, 6, 0xfefff, console_port.0),
        Err(GuestPageError::Map(_))
    ));
    // A port the guest never offered.
    assert!(matches!(
        ConsolePages::map(&mut mapper, 5, 0xfefff, 999),
        Err(GuestPageError::Bind(_))
    ));
    assert_eq!(
        xen.foreign_grant_flags(5, GrantRef(0)) & (gtf::READING | gtf::WRITING),
        0,
        "the mapping made before the bind failed was undone"
    );
    assert_eq!(frames.allocated, 0);
    assert!(pages.console_ports.is_empty());
}
