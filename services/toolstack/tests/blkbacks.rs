//! The host's disk backends over the real xenstored: a disk the toolstack starts is
//! published and connected when the frontend comes, serves a guest's write and read, and a
//! stopped one drains its storage requests before it goes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::rc::Rc;

use keel_blkback::fake::{FakeFrames, FakeGrantCopy, FrontPages, FrontRing, MemTarget, Order};
use keel_blkback::wire::{encode, op, Segment};
use keel_blkback::PageWords;
use keel_toolstack::blkbacks::{Blkbacks, DiskTargets};
use keel_toolstack::devices::{BackendDisk, DiskBackendError, DiskBackends, DiskMedium};
use keel_xen::fake::{FakeXen, FOREIGN_FRAME_BASE};
use keel_xen::grant_table::{gtf, GrantRef};
use keel_xenstored::{LocalClient, Xenstored};

const DOMID: u16 = 7;
const DEVID: u32 = 51712;
const BE: &str = "/local/domain/0/backend/vbd/7/51712";
const FE: &str = "/local/domain/7/device/vbd/51712";
const SECTORS: u64 = 2048;

/// Opens the VDIs the test knows, each an in-memory disk; remembers the users it saw.
#[derive(Default)]
struct Vdis {
    known: BTreeMap<String, ()>,
    users: Vec<u32>,
    stalled: bool,
}

impl DiskTargets for Vdis {
    type Target = MemTarget;
    fn open(&mut self, disk: &BackendDisk<'_>, user: u32) -> Result<MemTarget, DiskBackendError> {
        let Some(medium) = disk.medium else {
            return Err(DiskBackendError::Failed("empty drive".into()));
        };
        if !self.known.contains_key(&medium.vdi_uuid) {
            return Err(DiskBackendError::NoSuchVdi(medium.vdi_uuid.clone()));
        }
        self.users.push(user);
        let mut target = MemTarget::disk(SECTORS);
        if self.stalled {
            target.order = Order::Stalled;
        }
        Ok(target)
    }
}

struct World {
    xen: FakeXen,
    front: FrontPages,
    frames: FakeFrames,
    xenstored: Xenstored,
    toolstack: LocalClient,
    disks: Blkbacks<Rc<PageWords>, Vdis>,
}

impl World {
    fn new(vdis: Vdis) -> Self {
        let front = FrontPages::default();
        let mut xenstored = Xenstored::new();
        let toolstack = xenstored.open_local();
        World {
            xen: FakeXen::new(),
            frames: FakeFrames::new(&front),
            front,
            xenstored,
            toolstack,
            disks: Blkbacks::new(vdis),
        }
    }

    fn set(&mut self, path: &str, value: &str) {
        self.xenstored
            .write(self.toolstack, 0, path, value.as_bytes())
            .unwrap();
    }

    fn get(&mut self, path: &str) -> Option<String> {
        self.xenstored
            .read(self.toolstack, 0, path)
            .ok()
            .map(|v| String::from_utf8(v).unwrap())
    }

    /// The nodes the toolstack writes before it starts the backend.
    fn toolstack_nodes(&mut self) {
        for (k, v) in [
            ("frontend", FE),
            ("frontend-id", "7"),
            ("online", "1"),
            ("state", "1"),
            ("mode", "w"),
            ("device-type", "disk"),
            ("params", "vdi-a"),
        ] {
            self.set(&format!("{BE}/{k}"), v);
        }
        for (k, v) in [
            ("backend", BE),
            ("backend-id", "0"),
            ("state", "1"),
            ("virtual-device", "51712"),
        ] {
            self.set(&format!("{FE}/{k}"), v);
        }
    }

    /// blkfront: one ring page, an event channel, `Initialised`.
    fn blkfront(&mut self) -> FrontRing {
        let ring_ref = GrantRef(100);
        self.xen.add_foreign_grant(
            DOMID,
            ring_ref,
            0,
            gtf::PERMIT_ACCESS,
            FOREIGN_FRAME_BASE + 100,
        );
        self.front.add(DOMID, ring_ref);
        let port = self.xen.foreign_unbound_port(DOMID, 0);
        self.set(&format!("{FE}/ring-ref"), "100");
        self.set(&format!("{FE}/event-channel"), &port.0.to_string());
        self.set(&format!("{FE}/protocol"), "x86_64-abi");
        self.set(&format!("{FE}/state"), "3");
        self.front.ring(DOMID, &[ring_ref])
    }

    fn serve(&mut self) -> keel_toolstack::blkbacks::DisksServiced {
        let mut grants = FakeGrantCopy::new(&self.xen);
        self.disks.serve(
            &self.xen,
            &mut self.xenstored,
            &mut self.frames,
            &mut grants,
            0,
        )
    }
}

fn medium() -> DiskMedium {
    DiskMedium {
        sr_uuid: "sr".into(),
        vdi_uuid: "vdi-a".into(),
    }
}

fn disk(medium: &DiskMedium) -> BackendDisk<'_> {
    BackendDisk {
        domid: DOMID,
        devid: DEVID,
        backend_path: BE,
        frontend_path: FE,
        medium: Some(medium),
        read_only: false,
        cdrom: false,
    }
}

fn vdis() -> Vdis {
    let mut v = Vdis::default();
    v.known.insert("vdi-a".into(), ());
    v
}

#[test]
fn a_started_disk_is_published_connected_and_serves_the_guest() {
    let mut w = World::new(vdis());
    w.toolstack_nodes();
    let m = medium();
    w.disks.start(&disk(&m)).unwrap();
    // The toolstack's call only queued it: nothing is published until served.
    assert_eq!(w.get(&format!("{BE}/state")).as_deref(), Some("1"));
    w.serve();
    assert_eq!(w.get(&format!("{BE}/state")).as_deref(), Some("2"));
    assert_eq!(
        w.get(&format!("{BE}/sectors")),
        Some(SECTORS.to_string()),
        "the VDI's size is published"
    );
    assert_eq!(w.disks.len(), 1);
    assert_eq!(
        w.disks.targets().users,
        vec![(u32::from(DOMID) << 16) | (DEVID & 0xffff)]
    );

    let ring = w.blkfront();
    let served = w.serve();
    assert_eq!(
        w.get(&format!("{BE}/state")).as_deref(),
        Some("4"),
        "the frontend's state change reached the device through its own watch"
    );
    assert_eq!(served.ports.len(), 1, "the device's channel is routed");
    assert!(served.failures.is_empty(), "{:?}", served.failures);

    // A write of one sector from a granted page, then a read of it into another.
    let data = FOREIGN_FRAME_BASE + 0x10_0000 + 200;
    w.xen
        .add_foreign_grant(DOMID, GrantRef(200), 0, gtf::PERMIT_ACCESS, data);
    w.xen.write_foreign_frame(data, 0, &[0xab; 512]);
    let out = FOREIGN_FRAME_BASE + 0x10_0000 + 201;
    w.xen
        .add_foreign_grant(DOMID, GrantRef(201), 0, gtf::PERMIT_ACCESS, out);
    let seg = |gref| Segment {
        gref: GrantRef(gref),
        first_sect: 0,
        last_sect: 0,
    };
    ring.push_request(&encode::direct(op::WRITE, 1, 10, 0, &[seg(200)]));
    for _ in 0..10 {
        if !w.serve().more {
            break;
        }
    }
    ring.push_request(&encode::direct(op::READ, 2, 10, 0, &[seg(201)]));
    for _ in 0..10 {
        if !w.serve().more {
            break;
        }
    }
    let responses = ring.take_responses();
    assert_eq!(responses.len(), 2, "{responses:?}");
    assert!(
        responses.iter().all(|&(_, _, status)| status == 0),
        "{responses:?}"
    );
    assert_eq!(w.xen.read_foreign_frame(out, 0, 512), vec![0xab; 512]);
}

#[test]
fn an_unknown_vdi_or_a_second_start_is_refused_and_nothing_is_served() {
    let mut w = World::new(vdis());
    w.toolstack_nodes();
    let other = DiskMedium {
        sr_uuid: "sr".into(),
        vdi_uuid: "vdi-gone".into(),
    };
    assert_eq!(
        w.disks.start(&disk(&other)),
        Err(DiskBackendError::NoSuchVdi("vdi-gone".into()))
    );
    assert!(w.disks.is_empty());
    let m = medium();
    w.disks.start(&disk(&m)).unwrap();
    assert!(matches!(
        w.disks.start(&disk(&m)),
        Err(DiskBackendError::Failed(_))
    ));
    assert_eq!(w.disks.len(), 1);
}

#[test]
fn a_stopped_disk_drains_its_storage_requests_before_it_goes() {
    let mut vdis = vdis();
    vdis.stalled = true;
    let mut w = World::new(vdis);
    w.toolstack_nodes();
    let m = medium();
    w.disks.start(&disk(&m)).unwrap();
    w.serve();
    let ring = w.blkfront();
    w.serve();
    let data = FOREIGN_FRAME_BASE + 0x10_0000 + 200;
    w.xen
        .add_foreign_grant(DOMID, GrantRef(200), 0, gtf::PERMIT_ACCESS, data);
    let seg = Segment {
        gref: GrantRef(200),
        first_sect: 0,
        last_sect: 7,
    };
    ring.push_request(&encode::direct(op::READ, 1, 0, 0, &[seg]));
    w.serve();
    assert_eq!(w.disks.device(DOMID, DEVID).unwrap().in_flight(), 1);

    w.disks.stop(DOMID, DEVID);
    assert!(w.disks.is_empty());
    w.serve();
    assert_eq!(
        w.disks.draining(),
        1,
        "a device with a request the storage has not answered is kept"
    );
    assert_eq!(w.get(&format!("{BE}/state")).as_deref(), Some("6"));
    for t in w.disks.draining_targets_mut() {
        t.order = Order::Fifo;
    }
    for _ in 0..10 {
        w.serve();
    }
    assert_eq!(w.disks.draining(), 0, "drained once the storage answered");
    assert_eq!(w.frames.in_use(), 0, "the ring's frame went back");
}

#[test]
fn a_device_the_backend_closes_is_reported_once_with_its_typed_reason() {
    let mut w = World::new(vdis());
    w.toolstack_nodes();
    let m = medium();
    w.disks.start(&disk(&m)).unwrap();
    w.serve();
    let _ring = w.blkfront();
    // A protocol the backend does not speak: fatal at connect.
    w.set(&format!("{FE}/protocol"), "sparc-abi");
    w.set(&format!("{FE}/state"), "3");
    let served = w.serve();
    assert_eq!(served.failures_unlisted, 0);
    assert!(!served.ports_incomplete);
    let [(domid, devid, why)] = served.failures.as_slice() else {
        panic!("one failure: {:?}", served.failures);
    };
    assert_eq!((*domid, *devid), (DOMID, DEVID));
    assert!(
        matches!(
            why,
            keel_toolstack::blkbacks::DiskFailure::Backend(keel_blkback::Failure::Connect(
                keel_blkback::ConnectError::Protocol(p)
            )) if p == "sparc-abi"
        ),
        "{why:?}"
    );
    assert!(why.to_string().contains("sparc-abi"), "{why}");
    assert!(served.ports.is_empty(), "no ring, no channel");
    assert!(
        w.serve().failures.is_empty(),
        "a failure is reported when it happens, not again"
    );
}
