//! The toolstack against the real in-process xenstored (`keel-xenstored`): the skeleton as
//! a guest sees it through xenstore's permission model, the shutdown acknowledgement
//! written by the guest over its own connection, and cleanup on destroy.

// Helpers outside `#[test]` functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;

use common::*;
use keel_toolstack::skeleton::shutdown_path;
use keel_toolstack::*;
use keel_xen::domctl::dominf;
use keel_xen::fake::FakeXen;
use keel_xen::xenstore_wire::{XsMessage, XsType};
use keel_xenstored::{Caller, LocalClient, Rights, Xenstored, RELEASE_DOMAIN};

#[derive(Default)]
struct FakeRings {
    mapped: BTreeMap<u16, (u64, u32)>,
}

impl StoreRings for FakeRings {
    fn map(&mut self, domid: u16, gfn: u64, port: u32) -> Result<(), StoreError> {
        self.mapped.insert(domid, (gfn, port));
        Ok(())
    }
    fn unmap(&mut self, domid: u16) {
        self.mapped.remove(&domid);
    }
}

struct Host {
    xen: FakeXen,
    xs: Xenstored,
    client: LocalClient,
    rings: FakeRings,
    consoles: FakeConsoles,
    toolstack: Toolstack,
}

const UUID: [u8; 16] = [0x11; 16];

impl Host {
    fn new() -> Self {
        let xen = FakeXen::new();
        xen.add_domain(0, dominf::RUNNING);
        let mut xs = Xenstored::new();
        let client = xs.open_local();
        Host {
            xen,
            xs,
            client,
            rings: FakeRings::default(),
            consoles: FakeConsoles::default(),
            toolstack: Toolstack::new(Timeouts::default()),
        }
    }

    fn with<R>(
        &mut self,
        f: impl FnOnce(
            &mut Toolstack,
            &mut Env<'_, LocalStore<'_, FakeRings>, FakeConsoles, XenControl<'_, FakeXen>>,
        ) -> R,
    ) -> R {
        let control = XenControl(&self.xen);
        let mut store = LocalStore {
            xenstored: &mut self.xs,
            client: self.client,
            rings: &mut self.rings,
        };
        let mut env = Env {
            store: &mut store,
            consoles: &mut self.consoles,
            control: &control,
            disks: &mut NoDiskBackends as &mut dyn DiskBackends,
        };
        f(&mut self.toolstack, &mut env)
    }

    fn start(&mut self) -> u16 {
        let xen = &self.xen;
        let mut builder = FakeBuilder {
            xen,
            next: RefCell::new(3),
            fail: false,
        };
        let spec = Spec { vcpus: 1, mib: 128 };
        let request = StartRequest {
            uuid: UUID,
            name: "db",
            spec: &spec,
            start_paused: false,
            start_time_unix_ns: 0,
            vcpus_at_startup: 1,
            xenstore_data: &[],
            disks: &[],
        };
        let control = XenControl(xen);
        let mut store = LocalStore {
            xenstored: &mut self.xs,
            client: self.client,
            rings: &mut self.rings,
        };
        let mut env = Env {
            store: &mut store,
            consoles: &mut self.consoles,
            control: &control,
            disks: &mut NoDiskBackends as &mut dyn DiskBackends,
        };
        self.toolstack
            .start(&mut env, &mut builder, &request, 0)
            .unwrap()
    }

    fn rights(&self, domid: u16, path: &str) -> Rights {
        let guest = Caller {
            domid,
            privileged: false,
            target: None,
        };
        self.xs
            .tree()
            .get(path)
            .unwrap_or_else(|| panic!("no node {path}"))
            .perms
            .rights_for(&guest)
    }

    /// Delivers the toolstack's watch events; returns how many.
    fn deliver_watches(&mut self, now: u64) -> usize {
        self.with(|t, env| deliver_watch_events(t, env, now))
    }

    /// Other watch events of the local client `client` (paths).
    fn events_of(&mut self, client: LocalClient) -> Vec<String> {
        std::iter::from_fn(|| self.xs.poll_event(client).map(|e| e.path)).collect()
    }
}

#[test]
fn the_guest_sees_the_skeleton_with_libxl_permissions() {
    let mut host = Host::new();
    let d = host.start();
    assert_eq!(host.rings.mapped.get(&d), Some(&(0xfeffc, 13)));
    assert!(host.xs.is_domain_introduced(d));
    let read = |p: &str| host.xs.tree().get(p).map(|n| n.value.clone());
    assert_eq!(read("/local/domain/3/name"), Some(b"db".to_vec()));
    assert_eq!(
        read("/local/domain/3/store/ring-ref"),
        Some(b"1044476".to_vec())
    );

    // The guest reads its own tree and the VM path, but writes only its own nodes.
    for p in [
        "/local/domain/3",
        "/local/domain/3/name",
        "/local/domain/3/console/port",
    ] {
        let r = host.rights(d, p);
        assert!(
            r.contains(Rights::READ) && !r.contains(Rights::WRITE),
            "{p}"
        );
    }
    let vm = "/vm/11111111-1111-1111-1111-111111111111/name";
    assert!(host.rights(d, vm).contains(Rights::READ));
    for p in [
        "control/shutdown",
        "control/feature-poweroff",
        "data",
        "device",
    ] {
        let path = format!("/local/domain/3/{p}");
        let r = host.rights(d, &path);
        let writable = p != "device";
        assert_eq!(r.contains(Rights::WRITE), writable, "{p}");
    }
    // Another guest sees nothing of it.
    for p in ["/local/domain/3", "/local/domain/3/name", vm] {
        assert_eq!(host.rights(9, p), Rights::NONE, "{p}");
    }
}

#[test]
fn the_guest_acknowledges_over_its_own_connection_and_destroy_cleans_up() {
    let mut host = Host::new();
    let d = host.start();
    host.with(|t, env| t.request_shutdown(env, d, ShutdownKind::Poweroff, 0))
        .unwrap();
    // The watch fires once at registration: still "poweroff", no acknowledgement.
    assert_eq!(host.deliver_watches(1), 1);
    assert_eq!(host.toolstack.pop_event(), None);

    // Linux reads the request and writes "" back, as the guest, through xenstored.
    let msg = XsMessage::build(
        XsType::Write,
        7,
        0,
        &[shutdown_path(d).as_bytes(), b""],
        true,
    )
    .unwrap();
    host.xs.handle(d, &msg).unwrap();
    let reply = host.xs.take_message(d).unwrap();
    assert_eq!(reply.kind, XsType::Write, "{reply:?}");
    host.deliver_watches(2);
    assert_eq!(
        host.toolstack.pop_event().map(|e| e.kind),
        Some(EventKind::ShutdownAcknowledged(ShutdownKind::Poweroff))
    );

    // Xen reports it off; xenstored fires @releaseDomain for watchers (another service).
    let other = host.xs.open_local();
    host.xs.watch(other, RELEASE_DOMAIN, "release").unwrap();
    assert_eq!(
        host.events_of(other),
        [RELEASE_DOMAIN],
        "fires once at registration"
    );
    host.xen
        .add_domain(d, dominf::SHUTDOWN | (0 << dominf::SHUTDOWN_SHIFT));
    host.with(|t, env| t.on_dom_exc(env, 4)).unwrap();
    assert_eq!(
        host.toolstack.pop_event().map(|e| e.kind),
        Some(EventKind::Exited(ExitReason::Poweroff))
    );
    assert_eq!(host.events_of(other), [RELEASE_DOMAIN]);
    assert_eq!(host.deliver_watches(5), 0);

    host.with(|t, env| t.destroy(env, d, 6)).unwrap();
    assert_eq!(
        host.toolstack.pop_event().map(|e| e.kind),
        Some(EventKind::Destroyed { problems: vec![] })
    );
    assert!(!host.xs.is_domain_introduced(d));
    assert!(host.rings.mapped.is_empty());
    let leftovers: Vec<&str> = host
        .xs
        .tree()
        .iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with("/local/domain/3") || p.starts_with("/vm/"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
