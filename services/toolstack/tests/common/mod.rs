//! Fakes shared by the integration tests: a console backend that records attachments and
//! a builder that creates paused PVH domains in `FakeXen`.

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;

use keel_toolstack::{Builder, BuiltDomain, ConsoleBackend};
use keel_xen::domctl::dominf;
use keel_xen::fake::FakeXen;

#[derive(Default)]
pub struct FakeConsoles {
    pub attached: BTreeMap<u16, (u32, u64)>,
    pub detached: Vec<u16>,
    pub fail: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ConsoleMapFailed;

impl ConsoleBackend for FakeConsoles {
    type Error = ConsoleMapFailed;
    fn attach(&mut self, domid: u16, port: u32, gfn: u64) -> Result<(), ConsoleMapFailed> {
        if self.fail {
            return Err(ConsoleMapFailed);
        }
        self.attached.insert(domid, (port, gfn));
        Ok(())
    }
    fn detach(&mut self, domid: u16) {
        if self.attached.remove(&domid).is_some() {
            self.detached.push(domid);
        }
    }
}

/// Creates paused PVH domains in `FakeXen`, with ids counting up from `next`.
pub struct FakeBuilder<'x> {
    pub xen: &'x FakeXen,
    pub next: RefCell<u16>,
    pub fail: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct OutOfGuestMemory;

pub struct Spec {
    pub vcpus: u32,
    pub mib: u64,
}

impl Builder for FakeBuilder<'_> {
    type Spec = Spec;
    type Error = OutOfGuestMemory;
    fn build(&mut self, spec: &Spec) -> Result<BuiltDomain, OutOfGuestMemory> {
        if self.fail {
            return Err(OutOfGuestMemory);
        }
        let domid = *self.next.borrow();
        *self.next.borrow_mut() += 1;
        self.xen
            .add_domain(domid, dominf::PAUSED | dominf::HVM_GUEST | dominf::HAP);
        Ok(BuiltDomain {
            domid,
            vcpus: spec.vcpus,
            memory_static_max_kib: spec.mib * 1024,
            memory_target_kib: spec.mib * 1024,
            store_port: 10 + u32::from(domid),
            store_gfn: 0xfeffc,
            console_port: 20 + u32::from(domid),
            console_gfn: 0xfefff,
        })
    }
}
