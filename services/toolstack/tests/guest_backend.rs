//! The toolstack as the XenAPI's `GuestBackend`, over the real xenstored, with the reports
//! that go back to the XenAPI.

// Helpers outside `#[test]` functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::ConsoleMapFailed;
use common::FakeConsoles;
use keel_toolstack::skeleton::shutdown_path;
use keel_toolstack::xenapi::HostEnv;
use keel_toolstack::*;
use keel_xen::domctl::dominf;
use keel_xen::fake::FakeXen;
use keel_xen::xenstore_wire::{XsMessage, XsType};
use keel_xenapi::guest::{
    BootImage, BootSpec, DiskSpec, DiskVdi, DomId, ExitReason as ApiExit, GuestBackend, GuestError,
    PreparedStart,
};
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

/// Disk backends that record what they were asked.
#[derive(Default)]
struct Disks(Vec<String>);

impl DiskBackends for Disks {
    fn start(&mut self, disk: &BackendDisk<'_>) -> Result<(), DiskBackendError> {
        let vdi = disk.medium.map_or("-", |m| m.vdi_uuid.as_str());
        self.0
            .push(format!("start {} {} {vdi}", disk.domid, disk.devid));
        Ok(())
    }
    fn change_medium(
        &mut self,
        domid: u16,
        devid: u32,
        _medium: Option<&DiskMedium>,
    ) -> Result<(), DiskBackendError> {
        self.0.push(format!("medium {domid} {devid}"));
        Ok(())
    }
    fn stop(&mut self, domid: u16, devid: u32) {
        self.0.push(format!("stop {domid} {devid}"));
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
    disks: Disks,
    /// Starts prepared and not yet finished or abandoned.
    prepared: BTreeSet<u64>,
}

impl GuestHost for Host {
    type ConsoleError = ConsoleMapFailed;
    type BuildError = BuildFailure;

    fn with_prepared<R>(
        &mut self,
        prepared: Option<PreparedStart>,
        f: impl FnOnce(
            &mut Toolstack,
            &mut HostEnv<'_, ConsoleMapFailed>,
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
            disks: &mut self.disks as &mut dyn DiskBackends,
        };
        if let Some(p) = prepared {
            // The fake builder builds any spec; a prepared start is used up either way.
            self.prepared.remove(&p.0);
        }
        f(&mut self.toolstack, &mut env, &mut self.builder)
    }

    fn prepare(
        &mut self,
        _spec: &BootSpec,
        kernel_head: &[u8],
    ) -> Result<PreparedStart, BuildFailure> {
        assert_eq!(kernel_head, KERNEL);
        let id = self.prepared.last().map_or(0, |l| l + 1);
        self.prepared.insert(id);
        Ok(PreparedStart(id))
    }

    fn load(
        &mut self,
        start: PreparedStart,
        _image: BootImage,
        _bytes: &[u8],
    ) -> Result<(), BuildFailure> {
        assert!(self.prepared.contains(&start.0));
        Ok(())
    }

    fn abandon(&mut self, start: PreparedStart) {
        self.prepared.remove(&start.0);
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
        disks: Disks::default(),
        prepared: BTreeSet::new(),
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
        kernel_size: KERNEL.len() as u64,
        ramdisk_size: None,
        cmdline: "console=hvc0".into(),
        paused: false,
        platform: vec![],
        xenstore_data: vec![("vm-data/role".into(), "web".into())],
        disks: vec![],
    }
}

/// The tests' kernel: its head is all of it.
const KERNEL: &[u8] = b"\x7fELF";

/// `prepare_start`, then `start`, as the XenAPI drives them.
fn start(g: &mut Guests<Host>, spec: BootSpec) -> Result<DomId, GuestError> {
    let prepared = g.prepare_start(&spec, KERNEL)?;
    let result = g.start(prepared, spec);
    assert!(g.0.prepared.is_empty(), "the prepared start was used up");
    result
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
    let d = start(&mut g, spec()).unwrap();
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
            disks: &mut h.disks as &mut dyn DiskBackends,
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
    assert!(matches!(start(&mut g, bad), Err(GuestError::Failed(_))));
    g.0.builder.fail = true;
    assert_eq!(
        start(&mut g, spec()),
        Err(GuestError::NotEnoughMemory {
            needed: 1,
            available: 0
        })
    );
    g.0.builder.fail = false;
    let d = start(&mut g, spec()).unwrap();
    assert!(
        matches!(start(&mut g, spec()), Err(GuestError::Failed(_))),
        "already running"
    );
    assert!(g.set_vcpus_online(d, 3).is_err());
}

#[test]
fn unacknowledged_requests_and_vanished_domains_are_reported() {
    let mut g = guests();
    let d = start(&mut g, spec()).unwrap();
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

impl Host {
    /// Routes the toolstack's watch events, as the kernel glue does.
    fn deliver_watches(&mut self, now: u64) {
        let control = XenControl(self.xen);
        let mut store = LocalStore {
            xenstored: &mut self.xs,
            client: self.client,
            rings: &mut self.rings,
        };
        let mut env = Env {
            store: &mut store,
            consoles: &mut self.consoles,
            control: &control,
            disks: &mut self.disks as &mut dyn DiskBackends,
        };
        deliver_watch_events(&mut self.toolstack, &mut env, now);
    }

    /// A request of the guest `domid` over its own connection: true if xenstored took it.
    fn guest_writes(&mut self, domid: u16, path: &str, value: &[u8]) -> bool {
        let write = XsMessage::build(XsType::Write, 7, 0, &[path.as_bytes(), value], true).unwrap();
        self.xs.handle(domid, &write).unwrap();
        let reply = self.xs.take_message(domid).unwrap();
        reply.kind != XsType::Error
    }
}

fn xvd(index: u32, vdi: Option<&str>) -> DiskSpec {
    DiskSpec {
        devid: 202 << 8 | index << 4,
        device: format!("xvd{}", char::from(b'a' + index as u8)),
        vdi: vdi.map(|v| DiskVdi {
            sr_uuid: "sr".into(),
            vdi_uuid: v.into(),
        }),
        read_only: false,
        cdrom: false,
        bootable: index == 0,
    }
}

#[test]
fn disks_cross_the_seam_and_unplug_through_xenstored_watches() {
    let mut g = guests();
    let mut s = spec();
    s.disks = vec![xvd(0, Some("root-vdi"))];
    let d = start(&mut g, s).unwrap();
    assert_eq!(g.0.disks.0, ["start 8 51712 root-vdi"]);
    let be = "/local/domain/0/backend/vbd/8/51712";
    let fe = "/local/domain/8/device/vbd/51712";
    assert_eq!(
        read(&mut g, &format!("{be}/params")).as_deref(),
        Some("root-vdi")
    );
    assert_eq!(read(&mut g, &format!("{be}/dev")).as_deref(), Some("xvda"));
    assert_eq!(read(&mut g, &format!("{fe}/backend")).as_deref(), Some(be));
    // The permissions hold in xenstored: the frontend is the guest's, the backend is not.
    assert!(g.0.guest_writes(8, &format!("{fe}/ring-ref"), b"8"));
    assert!(!g.0.guest_writes(8, &format!("{be}/state"), b"4"));
    assert!(!g
        .0
        .guest_writes(8, "/local/domain/0/backend/vbd/8/51712/params", b"x"));

    // Hot-plug a second disk, unplug it: the backend closes, the watch fires.
    g.attach_disk(d, xvd(1, Some("data-vdi"))).unwrap();
    let data_be = "/local/domain/0/backend/vbd/8/51728";
    assert_eq!(
        read(&mut g, &format!("{data_be}/state")).as_deref(),
        Some("1")
    );
    assert!(matches!(
        g.attach_disk(d, xvd(1, Some("again"))),
        Err(GuestError::Failed(_))
    ));
    g.detach_disk(d, 51728, false).unwrap();
    assert_eq!(
        read(&mut g, &format!("{data_be}/online")).as_deref(),
        Some("0")
    );
    assert_eq!(
        read(&mut g, &format!("{data_be}/state")).as_deref(),
        Some("5")
    );
    g.0.deliver_watches(1);
    assert_eq!(
        read(&mut g, &format!("{data_be}/state")).as_deref(),
        Some("5")
    );
    // blkback, as dom0, reports Closed.
    let h = &mut g.0;
    h.xs.write(h.client, 0, &format!("{data_be}/state"), b"6")
        .unwrap();
    h.deliver_watches(2);
    assert_eq!(read(&mut g, data_be), None);
    assert_eq!(read(&mut g, "/local/domain/8/device/vbd/51728"), None);
    assert_eq!(
        g.0.disks.0,
        [
            "start 8 51712 root-vdi",
            "start 8 51728 data-vdi",
            "stop 8 51728"
        ]
    );
    // The XenAPI hears of it (its VBD.unplug is waiting).
    assert_eq!(
        take_reports(&mut g.0.toolstack),
        [Report::DiskDetached(8, 51728)]
    );
    assert!(matches!(
        g.change_medium(d, 51712, None),
        Err(GuestError::Failed(_))
    ));
    assert_eq!(
        g.detach_disk(d, 51728, true),
        Err(GuestError::Failed("NoSuchDevice(51728)".into()))
    );

    g.destroy(d).unwrap();
    assert_eq!(g.0.disks.0.last().map(String::as_str), Some("stop 8 51712"));
    assert_eq!(read(&mut g, "/local/domain/0/backend/vbd/8"), None);
}
