//! Fakes shared by the integration tests: a xenstore that records nodes, permissions,
//! watches and introductions, a console backend that records attachments, and a builder
//! that creates paused PVH domains in `FakeXen`.

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use keel_toolstack::{Builder, BuiltDomain, ConsoleBackend, Perm, Store, StoreError};
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

#[derive(Default)]
pub struct FakeStore {
    pub nodes: BTreeMap<String, Vec<u8>>,
    pub perms: BTreeMap<String, Vec<Perm>>,
    pub introduced: BTreeMap<u16, (u64, u32)>,
    pub released: Vec<u16>,
    pub exited: Vec<u16>,
    pub watches: BTreeSet<(String, String)>,
    /// Operation name → error for its next call.
    pub fail: BTreeMap<&'static str, StoreError>,
}

impl FakeStore {
    pub fn check(&mut self, op: &'static str) -> Result<(), StoreError> {
        self.fail.remove(op).map_or(Ok(()), Err)
    }

    pub fn value(&self, path: &str) -> Option<&str> {
        self.nodes
            .get(path)
            .map(|v| std::str::from_utf8(v).unwrap())
    }

    pub fn under(&self, prefix: &str) -> Vec<&String> {
        self.nodes
            .keys()
            .filter(|p| *p == prefix || p.starts_with(&format!("{prefix}/")))
            .collect()
    }

    pub fn create_parents(&mut self, path: &str) {
        let mut at = 0;
        while let Some(i) = path[at + 1..].find('/') {
            at += i + 1;
            self.nodes.entry(path[..at].to_string()).or_default();
        }
    }
}

impl Store for FakeStore {
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.check("read")?;
        Ok(self.nodes.get(path).cloned())
    }
    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), StoreError> {
        self.check("write")?;
        self.create_parents(path);
        self.nodes.insert(path.to_string(), value.to_vec());
        Ok(())
    }
    fn mkdir(&mut self, path: &str) -> Result<(), StoreError> {
        self.check("mkdir")?;
        self.create_parents(path);
        self.nodes.entry(path.to_string()).or_default();
        Ok(())
    }
    fn rm(&mut self, path: &str) -> Result<(), StoreError> {
        self.check("rm")?;
        let doomed: Vec<String> = self.under(path).into_iter().cloned().collect();
        for p in doomed {
            self.nodes.remove(&p);
            self.perms.remove(&p);
        }
        Ok(())
    }
    fn set_perms(&mut self, path: &str, perms: &[Perm]) -> Result<(), StoreError> {
        self.check("set_perms")?;
        if !self.nodes.contains_key(path) {
            return Err(StoreError::NotFound);
        }
        self.perms.insert(path.to_string(), perms.to_vec());
        Ok(())
    }
    fn introduce(&mut self, domid: u16, gfn: u64, port: u32) -> Result<(), StoreError> {
        self.check("introduce")?;
        if self.introduced.contains_key(&domid) {
            return Err(StoreError::Exists);
        }
        self.introduced.insert(domid, (gfn, port));
        Ok(())
    }
    fn domain_exited(&mut self, domid: u16) {
        self.exited.push(domid);
    }
    fn release(&mut self, domid: u16) -> Result<(), StoreError> {
        self.check("release")?;
        self.introduced
            .remove(&domid)
            .map(|_| self.released.push(domid))
            .ok_or(StoreError::NotFound)
    }
    fn watch(&mut self, path: &str, token: &str) -> Result<(), StoreError> {
        self.watches.insert((path.to_string(), token.to_string()));
        Ok(())
    }
    fn unwatch(&mut self, path: &str, token: &str) -> Result<(), StoreError> {
        self.watches
            .remove(&(path.to_string(), token.to_string()))
            .then_some(())
            .ok_or(StoreError::NotFound)
    }
}

/// dom0 frames for guests' pages; the pages themselves are mapped guest memory in the
/// kernel (no heap), so they are made before anything is counted and shown by reference.
pub struct Frames<P: 'static> {
    pages: &'static [P],
    base: u64,
    next: u64,
    free: Vec<u64>,
}

impl<P: 'static> Frames<P> {
    pub fn new(pages: &'static [P], base: u64) -> Self {
        Frames {
            pages,
            base,
            next: base,
            free: Vec::with_capacity(pages.len()),
        }
    }
}

impl<P: 'static> keel_toolstack::MapFrames for Frames<P> {
    type View = &'static P;
    fn allocate(&mut self) -> Option<u64> {
        self.free.pop().or_else(|| {
            let gfn = self.next;
            self.next += 1;
            (gfn - self.base < self.pages.len() as u64).then_some(gfn)
        })
    }
    fn free(&mut self, gfn: u64) {
        self.free.push(gfn);
    }
    fn view(&self, gfn: u64) -> &'static P {
        &self.pages[(gfn - self.base) as usize]
    }
}

/// The host assembly (`XenHost`) over `FakeXen`, with `Frames` for the store and console
/// pages.
pub type PageHost = keel_toolstack::SharedHost<
    FakeXen,
    keel_domain_builder::fake::FakeHoles<'static>,
    Frames<keel_xen::xenstore_ring::XenstoreDomainInterface>,
    Frames<keel_console::XenconsInterface>,
>;

/// A `XenHost` over `xen` (made with dom0 holes) with `pages` store and console pages each,
/// its clocks `now_ns`. Xen is told of the grants Linux's `gnttab_init` keeps for the console
/// and store pages of domains 1 to `4 × pages` (the domain builder fills them in a real Xen).
pub fn page_host(xen: &'static FakeXen, pages: usize, now_ns: fn() -> u64) -> PageHost {
    use keel_xen::grant_table::{gtf, GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE};
    fn leak<T>(n: usize, make: impl Fn() -> T) -> &'static [T] {
        Box::leak(
            (0..n)
                .map(|_| make())
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        )
    }
    let store = leak(
        pages,
        keel_xen::xenstore_ring::XenstoreDomainInterface::zeroed,
    );
    let console = leak(pages, keel_console::XenconsInterface::zeroed);
    for domid in 1..=(pages * 4) as u16 {
        let frame = 0x10_0000 + u64::from(domid) * 2;
        xen.add_foreign_grant(domid, GNTTAB_RESERVED_CONSOLE, 0, gtf::PERMIT_ACCESS, frame);
        xen.add_foreign_grant(
            domid,
            GNTTAB_RESERVED_XENSTORE,
            0,
            gtf::PERMIT_ACCESS,
            frame + 1,
        );
    }
    std::rc::Rc::new(RefCell::new(keel_toolstack::XenHost::new(
        xen,
        keel_domain_builder::fake::FakeHoles::new(xen),
        Frames::new(store, 0x9_0000),
        Frames::new(console, 0xa_0000),
        keel_toolstack::Clocks {
            monotonic_ns: now_ns,
            unix_ns: now_ns,
        },
    )))
}

/// A boot spec for guest `i` (its UUID ends in `i`; name `guest-<i>`): 32 MiB, one vCPU,
/// `console=hvc0`, images of the sizes given, no disks. Tests change fields with `..`.
pub fn boot_spec(
    i: usize,
    kernel_size: usize,
    ramdisk_size: Option<usize>,
) -> keel_xenapi::guest::BootSpec {
    keel_xenapi::guest::BootSpec {
        vm_uuid: format!("0a0b0c0d-0000-4000-8000-{i:012}"),
        name: format!("guest-{i}"),
        max_memory_bytes: 32 << 20,
        target_memory_bytes: 32 << 20,
        max_vcpus: 1,
        vcpus_at_startup: 1,
        kernel_size: kernel_size as u64,
        ramdisk_size: ramdisk_size.map(|r| r as u64),
        cmdline: "console=hvc0".into(),
        paused: false,
        platform: vec![],
        xenstore_data: vec![],
        disks: vec![],
    }
}
