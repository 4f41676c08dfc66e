//! Guest disks in the toolstack against the fakes: the vbd nodes and their permissions at
//! start, the disk backend started and stopped, hot-plug, the hot-unplug handshake (and its
//! timeout), CD media changes, and a backend that refuses to start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::rc::Rc;

mod common;

use common::*;
use keel_toolstack::devices::{vbd_backend_path, vbd_frontend_path, DETACH_TIMEOUT_NS};
use keel_toolstack::skeleton::domain_path;
use keel_toolstack::*;
use keel_xen::domctl::dominf;
use keel_xen::fake::FakeXen;

const SEC: u64 = 1_000_000_000;
const UUID: [u8; 16] = [0xcd; 16];

/// What the disk backends were asked to do.
#[derive(Default, Debug)]
struct DiskLog {
    /// `start <domid> <devid> <vdi> ro=<..> cd=<..>`, `stop <domid> <devid>`, `medium ...`.
    calls: Vec<String>,
    /// Refuse the next start.
    refuse: bool,
}

#[derive(Clone, Default)]
struct FakeDisks(Rc<RefCell<DiskLog>>);

impl DiskBackends for FakeDisks {
    fn start(&mut self, disk: &BackendDisk<'_>) -> Result<(), DiskBackendError> {
        let mut log = self.0.borrow_mut();
        if std::mem::take(&mut log.refuse) {
            return Err(DiskBackendError::NoSuchVdi("gone".into()));
        }
        assert_eq!(disk.backend_path, vbd_backend_path(disk.domid, disk.devid));
        assert_eq!(
            disk.frontend_path,
            vbd_frontend_path(disk.domid, disk.devid)
        );
        log.calls.push(format!(
            "start {} {} {} ro={} cd={}",
            disk.domid,
            disk.devid,
            disk.medium.map_or("-", |m| m.vdi_uuid.as_str()),
            disk.read_only,
            disk.cdrom
        ));
        Ok(())
    }
    fn change_medium(
        &mut self,
        domid: u16,
        devid: u32,
        medium: Option<&DiskMedium>,
    ) -> Result<(), DiskBackendError> {
        self.0.borrow_mut().calls.push(format!(
            "medium {domid} {devid} {}",
            medium.map_or("-", |m| m.vdi_uuid.as_str())
        ));
        Ok(())
    }
    fn stop(&mut self, domid: u16, devid: u32) {
        self.0
            .borrow_mut()
            .calls
            .push(format!("stop {domid} {devid}"));
    }
}

impl FakeDisks {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.borrow_mut().calls)
    }
}

struct Rig {
    xen: FakeXen,
    store: FakeStore,
    consoles: FakeConsoles,
    disks: FakeDisks,
    toolstack: Toolstack,
}

fn disk(index: u32, vdi: Option<&str>, read_only: bool, cdrom: bool) -> Vbd {
    Vbd {
        devid: 202 << 8 | index << 4,
        device: format!("xvd{}", char::from(b'a' + index as u8)),
        medium: vdi.map(|v| DiskMedium {
            sr_uuid: "sr".into(),
            vdi_uuid: v.into(),
        }),
        read_only,
        cdrom,
        bootable: index == 0,
    }
}

impl Rig {
    fn new() -> Self {
        let xen = FakeXen::new();
        xen.add_domain(0, dominf::RUNNING);
        Rig {
            xen,
            store: FakeStore::default(),
            consoles: FakeConsoles::default(),
            disks: FakeDisks::default(),
            toolstack: Toolstack::new(Timeouts::default()),
        }
    }

    fn with<R>(
        &mut self,
        f: impl FnOnce(
            &mut Toolstack,
            &mut Env<'_, FakeStore, FakeConsoles, XenControl<'_, FakeXen>>,
        ) -> R,
    ) -> R {
        let control = XenControl(&self.xen);
        let mut disks = self.disks.clone();
        let mut env = Env {
            store: &mut self.store,
            consoles: &mut self.consoles,
            control: &control,
            disks: &mut disks as &mut dyn DiskBackends,
        };
        f(&mut self.toolstack, &mut env)
    }

    fn start(
        &mut self,
        disks: &[Vbd],
    ) -> Result<u16, StartError<OutOfGuestMemory, ConsoleMapFailed>> {
        let xen = &self.xen;
        let mut builder = FakeBuilder {
            xen,
            next: RefCell::new(4),
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
            disks,
        };
        let control = XenControl(xen);
        let mut backends = self.disks.clone();
        let mut env = Env {
            store: &mut self.store,
            consoles: &mut self.consoles,
            control: &control,
            disks: &mut backends as &mut dyn DiskBackends,
        };
        self.toolstack.start(&mut env, &mut builder, &request, 0)
    }

    fn events(&mut self) -> Vec<EventKind> {
        std::iter::from_fn(|| self.toolstack.pop_event())
            .map(|e| e.kind)
            .collect()
    }
}

#[test]
fn start_writes_every_vbd_with_libxls_permissions_and_starts_its_backend() {
    let mut rig = Rig::new();
    let root = disk(0, Some("root-uuid"), false, false);
    let cd = disk(3, None, true, true);
    let d = rig.start(&[root.clone(), cd.clone()]).unwrap();
    assert_eq!(
        rig.disks.take(),
        [
            format!("start {d} 51712 root-uuid ro=false cd=false"),
            format!("start {d} 51760 - ro=true cd=true"),
        ]
    );
    let be = vbd_backend_path(d, 51712);
    let fe = vbd_frontend_path(d, 51712);
    assert_eq!(fe, format!("{}/device/vbd/51712", domain_path(d)));
    assert_eq!(rig.store.value(&format!("{be}/params")), Some("root-uuid"));
    assert_eq!(rig.store.value(&format!("{be}/state")), Some("1"));
    assert_eq!(rig.store.value(&format!("{be}/online")), Some("1"));
    assert_eq!(
        rig.store.value(&format!("{fe}/virtual-device")),
        Some("51712")
    );
    assert_eq!(rig.store.value(&format!("{fe}/backend")), Some(be.as_str()));
    assert_eq!(
        rig.store.perms[&be],
        [Perm::new(0, Access::None), Perm::new(d, Access::Read)]
    );
    assert_eq!(
        rig.store.perms[&fe],
        [Perm::new(d, Access::None), Perm::new(0, Access::Read)]
    );
    let cd_be = vbd_backend_path(d, 51760);
    assert_eq!(
        rig.store.value(&format!("{cd_be}/device-type")),
        Some("cdrom")
    );
    assert_eq!(rig.toolstack.disks(d), [root, cd]);
    // The domain was unpaused after its disks were there.
    let flags = keel_xen::domctl::domain_info(&rig.xen, d).unwrap().flags;
    assert_eq!(flags & dominf::PAUSED, 0);

    // Destroy stops every backend and removes every node, error nodes too.
    let error = format!("/local/domain/0/error/backend/vbd/{d}/51760/error");
    rig.store
        .nodes
        .insert(error.clone(), b"22 bad protocol".to_vec());
    rig.with(|t, env| t.destroy(env, d, 1)).unwrap();
    assert_eq!(rig.store.value(&error), None);
    let mut stopped = rig.disks.take();
    stopped.sort();
    assert_eq!(
        stopped,
        [format!("stop {d} 51712"), format!("stop {d} 51760")]
    );
    assert!(rig
        .store
        .under(&format!("/local/domain/0/backend/vbd/{d}"))
        .is_empty());
    assert!(rig.store.under(&domain_path(d)).is_empty());
}

#[test]
fn a_backend_that_cannot_start_fails_the_start_and_leaves_nothing() {
    let mut rig = Rig::new();
    rig.disks.0.borrow_mut().refuse = true;
    let e = rig
        .start(&[disk(0, Some("gone"), false, false)])
        .unwrap_err();
    assert!(
        matches!(
            e,
            StartError::Disk {
                error: DeviceError::Backend(DiskBackendError::NoSuchVdi(_)),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(rig.store.under("/local/domain/0/backend/vbd/4").is_empty());
    assert!(rig.store.under("/local/domain/4").is_empty());
    // Two disks with one devid are refused before anything is built.
    let twice = [
        disk(1, Some("a"), false, false),
        disk(1, Some("b"), false, false),
    ];
    assert!(matches!(
        rig.start(&twice),
        Err(StartError::DuplicateDisk(51728))
    ));
}

#[test]
fn hot_plug_then_unplug_through_the_closing_handshake() {
    let mut rig = Rig::new();
    let d = rig.start(&[]).unwrap();
    let data = disk(1, Some("data-uuid"), false, false);
    rig.with(|t, env| t.attach_disk(env, d, data.clone()))
        .unwrap();
    assert_eq!(
        rig.disks.take(),
        [format!("start {d} 51728 data-uuid ro=false cd=false")]
    );
    assert_eq!(
        rig.with(|t, env| t.attach_disk(env, d, data.clone())),
        Err(DeviceError::DevidInUse(51728))
    );
    let be = vbd_backend_path(d, 51728);
    rig.with(|t, env| t.detach_disk(env, d, 51728, false, 5 * SEC))
        .unwrap();
    assert_eq!(rig.store.value(&format!("{be}/online")), Some("0"));
    assert_eq!(rig.store.value(&format!("{be}/state")), Some("5"));
    assert!(rig
        .store
        .watches
        .contains(&(format!("{be}/state"), WATCH_TOKEN.to_string())));
    assert_eq!(
        rig.toolstack.next_deadline(),
        Some(5 * SEC + DETACH_TIMEOUT_NS)
    );
    // Still there while the frontend closes; the devid stays taken.
    assert!(rig.disks.take().is_empty());
    assert_eq!(
        rig.with(|t, env| t.attach_disk(env, d, data.clone())),
        Err(DeviceError::DevidInUse(51728))
    );
    // A backend's fatal error node goes with the device.
    let error = keel_toolstack::devices::vbd_error_path(d, 51728);
    rig.store
        .nodes
        .insert(format!("{error}/error"), b"12 mapping".to_vec());
    // The backend reaches Closed: the watch fires.
    rig.store.nodes.insert(format!("{be}/state"), b"6".to_vec());
    rig.with(|t, env| t.on_watch(env, &format!("{be}/state"), 6 * SEC));
    assert_eq!(rig.disks.take(), [format!("stop {d} 51728")]);
    assert!(rig.store.under(&be).is_empty());
    assert!(rig.store.under(&vbd_frontend_path(d, 51728)).is_empty());
    assert!(rig.store.under(&error).is_empty());
    assert!(rig.store.watches.is_empty());
    assert_eq!(
        rig.events(),
        [EventKind::DiskDetached {
            devid: 51728,
            forced: false,
            problems: vec![]
        }]
    );
    assert!(rig.toolstack.disks(d).is_empty());
    // The slot is free again.
    rig.with(|t, env| t.attach_disk(env, d, data.clone()))
        .unwrap();
}

#[test]
fn a_guest_that_never_closes_loses_the_disk_at_the_deadline() {
    let mut rig = Rig::new();
    let d = rig.start(&[disk(1, Some("data"), false, false)]).unwrap();
    rig.disks.take();
    rig.with(|t, env| t.detach_disk(env, d, 51728, false, 0))
        .unwrap();
    rig.with(|t, env| t.poll(env, DETACH_TIMEOUT_NS - 1));
    assert!(rig.disks.take().is_empty(), "not yet");
    rig.with(|t, env| t.poll(env, DETACH_TIMEOUT_NS));
    assert_eq!(rig.disks.take(), [format!("stop {d} 51728")]);
    assert!(rig.store.under(&vbd_backend_path(d, 51728)).is_empty());
    assert_eq!(
        rig.events(),
        [EventKind::DiskDetached {
            devid: 51728,
            forced: true,
            problems: vec![]
        }]
    );
    assert_eq!(rig.toolstack.next_deadline(), None);
    // Forced at once, and unknown devices.
    rig.with(|t, env| t.attach_disk(env, d, disk(2, Some("x"), true, false)))
        .unwrap();
    rig.with(|t, env| t.detach_disk(env, d, 51744, true, 0))
        .unwrap();
    assert_eq!(
        rig.disks.take(),
        [
            format!("start {d} 51744 x ro=true cd=false"),
            format!("stop {d} 51744")
        ]
    );
    assert_eq!(
        rig.with(|t, env| t.detach_disk(env, d, 51744, true, 0)),
        Err(DeviceError::NoSuchDevice(51744))
    );
    assert_eq!(
        rig.with(|t, env| t.detach_disk(env, 99, 51744, true, 0)),
        Err(DeviceError::NoSuchDomain(99))
    );
}

#[test]
fn a_cd_drive_changes_medium_and_a_disk_does_not() {
    let mut rig = Rig::new();
    let d = rig
        .start(&[
            disk(0, Some("root"), false, false),
            disk(3, None, true, true),
        ])
        .unwrap();
    rig.disks.take();
    let medium = DiskMedium {
        sr_uuid: "sr".into(),
        vdi_uuid: "debian.iso".into(),
    };
    rig.with(|t, env| t.change_medium(env, d, 51760, Some(medium.clone())))
        .unwrap();
    let params = format!("{}/params", vbd_backend_path(d, 51760));
    assert_eq!(rig.store.value(&params), Some("debian.iso"));
    rig.with(|t, env| t.change_medium(env, d, 51760, None))
        .unwrap();
    assert_eq!(rig.store.value(&params), Some(""));
    assert_eq!(
        rig.disks.take(),
        [
            format!("medium {d} 51760 debian.iso"),
            format!("medium {d} 51760 -")
        ]
    );
    assert_eq!(
        rig.with(|t, env| t.change_medium(env, d, 51712, Some(medium))),
        Err(DeviceError::NotRemovable(51712))
    );
}

#[test]
fn no_disks_can_be_added_to_a_domain_that_has_exited() {
    let mut rig = Rig::new();
    let d = rig.start(&[]).unwrap();
    rig.xen.add_domain(d, dominf::SHUTDOWN);
    rig.with(|t, env| t.on_dom_exc(env, 1)).unwrap();
    assert_eq!(
        rig.with(|t, env| t.attach_disk(env, d, disk(0, Some("r"), false, false))),
        Err(DeviceError::NotLive(d))
    );
}
