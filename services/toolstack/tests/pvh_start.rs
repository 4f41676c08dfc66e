//! A XenAPI boot spec built by the real PVH domain builder (over `FakeXen` with dom0
//! holes), set up by the toolstack in the real xenstored, started, and destroyed.

// Helpers outside `#[test]` functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::FakeConsoles;
use keel_domain_builder::elf_load::testimage::pvh_elf64;
use keel_domain_builder::fake::FakeHoles;
use keel_domain_builder::{BuildError, BuildOptions, KernelError};
use keel_toolstack::pvh::guest_error;
use keel_toolstack::*;
use keel_xen::domctl::dominf;
use keel_xen::fake::FakeXen;
use keel_xenapi::guest::{BootSpec, GuestError};
use keel_xenstored::Xenstored;

const HOLES: u64 = 0x20000;
const HOLE_FRAMES: u64 = 2048;

#[derive(Default)]
struct Rings(BTreeMap<u16, (u64, u32)>);

impl StoreRings for Rings {
    fn map(&mut self, domid: u16, gfn: u64, port: u32) -> Result<(), StoreError> {
        self.0.insert(domid, (gfn, port));
        Ok(())
    }
    fn unmap(&mut self, domid: u16) {
        self.0.remove(&domid);
    }
}

fn spec(kernel: Vec<u8>) -> BootSpec {
    BootSpec {
        vm_uuid: "0a0b0c0d-0000-4000-8000-000000000002".into(),
        name: "tiny".into(),
        max_memory_bytes: 32 << 20,
        target_memory_bytes: 32 << 20,
        max_vcpus: 1,
        vcpus_at_startup: 1,
        kernel,
        ramdisk: Some(vec![7; 5000]),
        cmdline: "console=hvc0".into(),
        paused: false,
        platform: vec![],
        xenstore_data: vec![],
        disks: vec![],
    }
}

#[test]
fn a_boot_spec_is_built_introduced_attached_started_and_destroyed() {
    let xen = FakeXen::with_dom0_holes(HOLES, HOLE_FRAMES);
    let free_before = xen.free_pages();
    let mut holes = FakeHoles::new(&xen);
    let mut xs = Xenstored::new();
    let client = xs.open_local();
    let mut rings = Rings::default();
    let mut consoles = FakeConsoles::default();
    let mut toolstack = Toolstack::new(Timeouts::default());
    let control = XenControl(&xen);
    let spec = spec(pvh_elf64(
        0x100_0000,
        &[0x90; 4096],
        0x1000,
        Some(0x100_0000),
    ));
    let request = StartRequest {
        uuid: keel_toolstack::xenapi::parse_uuid(&spec.vm_uuid).unwrap(),
        name: &spec.name,
        spec: &spec,
        start_paused: false,
        start_time_unix_ns: 0,
        vcpus_at_startup: 1,
        xenstore_data: &[],
        disks: &[],
    };

    let d = {
        let mut builder = PvhBuilder {
            hv: &xen,
            holes: &mut holes,
            options: BuildOptions::default(),
        };
        let mut store = LocalStore {
            xenstored: &mut xs,
            client,
            rings: &mut rings,
        };
        let mut env = Env {
            store: &mut store,
            consoles: &mut consoles,
            control: &control,
            disks: &mut NoDiskBackends as &mut dyn DiskBackends,
        };
        toolstack
            .start(&mut env, &mut builder, &request, 0)
            .unwrap()
    };
    // The builder's ports and frames reached xenstore, xenstored and the console backend.
    let (store_gfn, store_port) = rings.0[&d];
    let (console_port, console_gfn) = consoles.attached[&d];
    assert_eq!((store_gfn, console_gfn), (0xfeffc, 0xfefff));
    let read =
        |xs: &mut Xenstored, p: &str| String::from_utf8(xs.read(client, 0, p).unwrap()).unwrap();
    assert_eq!(
        read(&mut xs, &format!("/local/domain/{d}/store/port")),
        store_port.to_string()
    );
    assert_eq!(
        read(&mut xs, &format!("/local/domain/{d}/console/port")),
        console_port.to_string()
    );
    assert_eq!(
        read(&mut xs, &format!("/local/domain/{d}/memory/target")),
        "32768"
    );
    assert!(xs.is_domain_introduced(d));
    assert_eq!(xen.domain_flags(d).unwrap() & dominf::PAUSED, 0, "running");

    let mut store = LocalStore {
        xenstored: &mut xs,
        client,
        rings: &mut rings,
    };
    let mut env = Env {
        store: &mut store,
        consoles: &mut consoles,
        control: &control,
        disks: &mut NoDiskBackends as &mut dyn DiskBackends,
    };
    toolstack.destroy(&mut env, d, 1).unwrap();
    assert!(matches!(
        toolstack.pop_event().map(|e| e.kind),
        Some(EventKind::Destroyed { problems }) if problems.is_empty()
    ));
    assert_eq!(xen.domain_ids(), Vec::<u16>::new());
    assert_eq!(xen.free_pages(), free_before, "Xen memory back");
    assert!(rings.0.is_empty() && consoles.attached.is_empty());
}

#[test]
fn a_bad_kernel_is_an_invalid_image_and_leaves_nothing() {
    let xen = FakeXen::with_dom0_holes(HOLES, HOLE_FRAMES);
    let mut holes = FakeHoles::new(&xen);
    let bad = spec(b"not a kernel at all".to_vec());
    let mut builder = PvhBuilder {
        hv: &xen,
        holes: &mut holes,
        options: BuildOptions::default(),
    };
    let err = builder.build(&bad).unwrap_err();
    assert_eq!(
        err,
        PvhError::Build(BuildError::Kernel(KernelError::NotAKernel))
    );
    assert!(matches!(
        guest_error(&err, &bad, 1 << 30),
        GuestError::InvalidImage { .. }
    ));
    assert_eq!(xen.domain_ids(), Vec::<u16>::new());
    let mut no_uuid = spec(vec![]);
    no_uuid.vm_uuid = "x".into();
    assert_eq!(builder.build(&no_uuid), Err(PvhError::Uuid));
}
