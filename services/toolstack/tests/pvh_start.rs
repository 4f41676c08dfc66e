//! A XenAPI boot spec built by the real PVH domain builder (over `FakeXen` with dom0
//! holes), set up by the toolstack in the real xenstored, started, and destroyed.

// Helpers outside `#[test]` functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::FakeConsoles;
use keel_domain_builder::elf_load::testimage::pvh_elf64;
use keel_domain_builder::fake::FakeHoles;
use keel_domain_builder::{BuildError, BuildOptions, FeedError, KernelError, PROBE_BYTES};
use keel_toolstack::*;
use keel_xen::domctl::dominf;
use keel_xen::fake::FakeXen;
use keel_xenapi::guest::{BootImage, BootSpec};
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

const RAMDISK: &[u8] = &[7; 5000];

fn spec(kernel: &[u8]) -> BootSpec {
    BootSpec {
        name: "tiny".into(),
        ..common::boot_spec(2, kernel.len(), Some(RAMDISK.len()))
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
    let kernel = pvh_elf64(0x100_0000, &[0x90; 4096], 0x1000, Some(0x100_0000));
    let spec = spec(&kernel);
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
            prepared: None,
        };
        builder
            .prepare_whole(&spec, &kernel, Some(RAMDISK))
            .unwrap();
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
fn a_bad_kernel_is_refused_and_leaves_nothing() {
    let xen = FakeXen::with_dom0_holes(HOLES, HOLE_FRAMES);
    let free_before = xen.free_pages();
    let mut holes = FakeHoles::new(&xen);
    let not_a_kernel = b"not a kernel at all";
    let bad = spec(not_a_kernel);
    let mut builder = PvhBuilder {
        hv: &xen,
        holes: &mut holes,
        options: BuildOptions::default(),
        prepared: None,
    };
    assert_eq!(
        builder.prepare_whole(&bad, not_a_kernel, None),
        Err(PvhError::Build(BuildError::Kernel(KernelError::NotAKernel)))
    );
    assert_eq!(xen.domain_ids(), Vec::<u16>::new());
    let mut no_uuid = spec(not_a_kernel);
    no_uuid.vm_uuid = "x".into();
    assert_eq!(
        builder.prepare_whole(&no_uuid, not_a_kernel, None),
        Err(PvhError::Uuid)
    );
    // Nothing prepared: nothing to build.
    assert_eq!(builder.build(&bad), Err(PvhError::NotPrepared));
    // A kernel cut short is found at its end: the domain that existed meanwhile is gone.
    let kernel = pvh_elf64(0x100_0000, &[0x90; 80_000], 0x1000, Some(0x100_0000));
    let short = spec(&kernel);
    let mut build = builder.prepare(&short, &kernel[..PROBE_BYTES]).unwrap();
    assert_eq!(xen.domain_ids().len(), 1);
    let err = builder
        .load(
            &mut build,
            BootImage::Kernel,
            &kernel[PROBE_BYTES..kernel.len() - 10],
        )
        .and_then(|()| builder.load(&mut build, BootImage::Ramdisk, RAMDISK))
        .unwrap_err();
    assert_eq!(err, BuildError::Feed(FeedError::KernelIncomplete));
    assert!(matches!(builder.abort(build, err), PvhError::Build(_)));
    assert_eq!(xen.domain_ids(), Vec::<u16>::new());
    assert_eq!(xen.free_pages(), free_before, "Xen memory back");
}
