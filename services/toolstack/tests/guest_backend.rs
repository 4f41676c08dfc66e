//! The toolstack as the XenAPI's `GuestBackend`, over the real xenstored, with the reports
//! that go back to the XenAPI.

// Helpers outside `#[test]` functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::ConsoleMapFailed;
use common::FakeConsoles;
use keel_toolstack::skeleton::shutdown_path;
use keel_toolstack::*;
use keel_xen::domctl::dominf;
use keel_xen::fake::FakeXen;
use keel_xen::xenstore_wire::{XsMessage, XsType};
use keel_xenapi::guest::{BootSpec, ExitReason as ApiExit, GuestBackend, GuestError};
use keel_xenapi::{ShutdownFailure as ApiFailure, ShutdownRequest};
use keel_xenstored::{LocalClient, Xenstored};

#[derive(Default)]
struct Rings(BTreeMap<u16, u64>);

impl StoreRings for Rings {
    fn map(&mut self, domid: u16, gfn: u64, _port: u32) -> Result<(), StoreError> {
        self.0.insert(domid, gfn);
        Ok(())
    }
    fn unmap(&mut self, domid: u16) {
        self.0.remove(&domid);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum BuildFailure {
    NoMemory,
}

struct BootBuilder {
    xen: &'static FakeXen,
    next: u16,
    fail: bool,
}

impl Builder for BootBuilder {
    type Spec = BootSpec;
    type Error = BuildFailure;
    fn build(&mut self, spec: &BootSpec) -> Result<BuiltDomain, BuildFailure> {
        if self.fail {
            return Err(BuildFailure::NoMemory);
        }
        let domid = self.next;
        self.next += 1;
        self.xen
            .add_domain(domid, dominf::PAUSED | dominf::HVM_GUEST);
        Ok(BuiltDomain {
            domid,
            vcpus: spec.max_vcpus,
            memory_static_max_kib: spec.max_memory_bytes / 1024,
            memory_target_kib: spec.target_memory_bytes / 1024,
            store_port: 1,
            store_gfn: 0xfeffc,
            console_port: 2,
            console_gfn: 0xfefff,
        })
    }
}

struct Host {
    xen: &'static FakeXen,
    xs: Xenstored,
    client: LocalClient,
    rings: Rings,
    consoles: FakeConsoles,
    builder: BootBuilder,
    toolstack: Toolstack,
    clock: u64,
}

impl GuestHost for Host {
    type ConsoleError = ConsoleMapFailed;
    type BuildError = BuildFailure;

    fn with<R>(
        &mut self,
        f: impl FnOnce(
            &mut Toolstack,
            &mut Env<
                '_,
                dyn Store + '_,
                dyn ConsoleBackend<Error = ConsoleMapFailed> + '_,
                dyn DomainControl + '_,
            >,
            &mut (dyn Builder<Spec = BootSpec, Error = BuildFailure> + '_),
        ) -> R,
    ) -> R {
        let control = XenControl(self.xen);
        let mut store = LocalStore {
            xenstored: &mut self.xs,
            client: self.client,
            rings: &mut self.rings,
        };
        let mut env: Env<
            '_,
            dyn Store,
            dyn ConsoleBackend<Error = ConsoleMapFailed>,
            dyn DomainControl,
        > = Env {
            store: &mut store,
            consoles: &mut self.consoles,
            control: &control,
            disks: &mut NoDiskBackends as &mut dyn DiskBackends,
        };
        f(&mut self.toolstack, &mut env, &mut self.builder)
    }

    fn monotonic_ns(&self) -> u64 {
        self.clock
    }
    fn unix_ns(&self) -> u64 {
        1_700_000_000_000_000_000 + self.clock
    }
    fn free_memory(&self) -> u64 {
        1 << 30
    }
    fn build_error(&self, error: BuildFailure) -> GuestError {
        match error {
            BuildFailure::NoMemory => GuestError::NotEnoughMemory {
                needed: 1,
                available: 0,
            },
        }
    }
}

fn guests() -> Guests<Host> {
    let xen: &'static FakeXen = Box::leak(Box::new(FakeXen::new()));
    xen.add_domain(0, dominf::RUNNING);
    let mut xs = Xenstored::new();
    let client = xs.open_local();
    Guests(Host {
        xen,
        xs,
        client,
        rings: Rings::default(),
        consoles: FakeConsoles::default(),
        builder: BootBuilder {
            xen,
            next: 8,
            fail: false,
        },
        toolstack: Toolstack::new(Timeouts::default()),
        clock: 0,
    })
}

fn spec() -> BootSpec {
    BootSpec {
        vm_uuid: "0a0b0c0d-0000-4000-8000-000000000001".into(),
        name: "alpine".into(),
        max_memory_bytes: 512 << 20,
        target_memory_bytes: 256 << 20,
        max_vcpus: 2,
        vcpus_at_startup: 1,
        kernel: vec![0x7f, b'E', b'L', b'F'],
        ramdisk: None,
        cmdline: "console=hvc0".into(),
        paused: false,
        platform: vec![],
        xenstore_data: vec![("vm-data/role".into(), "web".into())],
        disks: vec![],
    }
}

fn read(g: &mut Guests<Host>, path: &str) -> Option<String> {
    let h = &mut g.0;
    h.xs.read(h.client, 0, path)
        .ok()
        .map(|v| String::from_utf8(v).unwrap())
}

#[test]
fn a_guest_started_shut_down_and_destroyed_through_the_seam() {
    let mut g = guests();
    let d = g.start(spec()).unwrap();
    assert_eq!(d, 8);
    assert_eq!(g.free_memory(), 1 << 30);
    assert_eq!(
        read(&mut g, "/local/domain/8/name").as_deref(),
        Some("alpine")
    );
    assert_eq!(
        read(&mut g, "/local/domain/8/vm-data/role").as_deref(),
        Some("web")
    );
    assert_eq!(
        read(&mut g, "/local/domain/8/memory/target").as_deref(),
        Some("262144")
    );
    assert_eq!(
        read(&mut g, "/local/domain/8/cpu/1/availability").as_deref(),
        Some("offline")
    );
    assert_eq!(
        read(
            &mut g,
            "/vm/0a0b0c0d-0000-4000-8000-000000000001/start_time"
        )
        .as_deref(),
        Some("1700000000.00")
    );
    assert_eq!(g.0.xen_flags(8) & dominf::PAUSED, 0, "unpaused");

    g.set_vcpus_online(d, 2).unwrap();
    assert_eq!(
        read(&mut g, "/local/domain/8/cpu/1/availability").as_deref(),
        Some("online")
    );
    g.set_memory_target(d, 128 << 20).unwrap();
    assert_eq!(
        read(&mut g, "/local/domain/8/memory/target").as_deref(),
        Some("131072")
    );
    g.pause(d).unwrap();
    assert_ne!(g.0.xen_flags(8) & dominf::PAUSED, 0);
    assert!(matches!(
        g.request_shutdown(d, ShutdownRequest::PowerOff),
        Err(GuestError::Failed(_))
    ));
    g.unpause(d).unwrap();

    g.request_shutdown(d, ShutdownRequest::Reboot).unwrap();
    assert_eq!(
        read(&mut g, "/local/domain/8/control/shutdown").as_deref(),
        Some("reboot")
    );
    // The guest acknowledges over its own connection.
    let ack = XsMessage::build(
        XsType::Write,
        1,
        0,
        &[shutdown_path(8).as_bytes(), b""],
        true,
    )
    .unwrap();
    g.0.xs.handle(8, &ack).unwrap();
    // The kernel glue routes the toolstack's watch events (it knows its LocalStore).
    let h = &mut g.0;
    {
        let control = XenControl(h.xen);
        let mut store = LocalStore {
            xenstored: &mut h.xs,
            client: h.client,
            rings: &mut h.rings,
        };
        let mut env = Env {
            store: &mut store,
            consoles: &mut h.consoles,
            control: &control,
            disks: &mut NoDiskBackends as &mut dyn DiskBackends,
        };
        deliver_watch_events(&mut h.toolstack, &mut env, 1);
    }
    assert_eq!(take_reports(&mut h.toolstack), [Report::Acknowledged(8)]);

    h.xen
        .add_domain(8, dominf::SHUTDOWN | (1 << dominf::SHUTDOWN_SHIFT));
    h.with(|t, env, _| t.on_dom_exc(env, 2)).unwrap();
    assert_eq!(
        take_reports(&mut h.toolstack),
        [Report::Exited(8, ApiExit::Reboot)]
    );
    // The XenAPI applies the VM's actions: destroy (then start again, not shown).
    g.destroy(d).unwrap();
    assert_eq!(take_reports(&mut g.0.toolstack), []);
    assert_eq!(g.0.xen_flags_opt(8), None);
    assert_eq!(read(&mut g, "/local/domain/8"), None);
    assert!(g.0.rings.0.is_empty());
}

#[test]
fn failures_cross_the_seam_as_guest_errors() {
    let mut g = guests();
    assert_eq!(g.destroy(77), Err(GuestError::NoSuchDomain(77)));
    assert_eq!(g.pause(70_000), Err(GuestError::NoSuchDomain(70_000)));
    let mut bad = spec();
    bad.vm_uuid = "not-a-uuid".into();
    assert!(matches!(g.start(bad), Err(GuestError::Failed(_))));
    g.0.builder.fail = true;
    assert_eq!(
        g.start(spec()),
        Err(GuestError::NotEnoughMemory {
            needed: 1,
            available: 0
        })
    );
    g.0.builder.fail = false;
    let d = g.start(spec()).unwrap();
    assert!(
        matches!(g.start(spec()), Err(GuestError::Failed(_))),
        "already running"
    );
    assert!(g.set_vcpus_online(d, 3).is_err());
}

#[test]
fn unacknowledged_requests_and_vanished_domains_are_reported() {
    let mut g = guests();
    let d = g.start(spec()).unwrap();
    g.request_shutdown(d, ShutdownRequest::PowerOff).unwrap();
    let deadline = Timeouts::default().shutdown_ack_ns;
    let h = &mut g.0;
    h.with(|t, env, _| t.poll(env, deadline));
    assert_eq!(
        take_reports(&mut h.toolstack),
        [Report::Failed(8, ApiFailure::NotAcknowledged)]
    );
    keel_xen::domctl::destroy_domain(h.xen, 8).unwrap();
    h.with(|t, env, _| t.on_dom_exc(env, 0)).unwrap();
    assert_eq!(
        take_reports(&mut h.toolstack),
        [Report::Exited(8, ApiExit::Vanished)]
    );
}

impl Host {
    fn xen_flags_opt(&self, domid: u16) -> Option<u32> {
        keel_xen::domctl::domain_info(self.xen, domid)
            .ok()
            .map(|i| i.flags)
    }
    fn xen_flags(&self, domid: u16) -> u32 {
        self.xen_flags_opt(domid).unwrap()
    }
}
