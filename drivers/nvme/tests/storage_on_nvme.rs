//! The storage manager on an NVMe namespace (through the controller model): format, VDI data,
//! and attach again after the controller was stopped and started.

// A panic in a test is a failed test. clippy.toml lets `#[test]` functions unwrap; this also
// covers the helpers of this test crate, which that setting does not reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake;

use fake::{FakeConfig, FakeNvme};
use keel_nvme::{Controller, DiskOptions, NvmeDisk};
use keel_storage::{FormatOptions, Sr, SrError, Uuid};

#[test]
fn an_sr_formats_fills_and_attaches_again_on_nvme() {
    let fake = FakeNvme::new(FakeConfig {
        namespace_blocks: vec![8 * 2048], // 8 MiB
        ..FakeConfig::default()
    });
    let open = || {
        let (regs, hal) = fake.parts();
        let controller = Controller::start(regs, hal).unwrap();
        NvmeDisk::open(controller, DiskOptions::default()).unwrap()
    };
    let mut options = FormatOptions::new(Uuid([7; 16]));
    options.extent_size = 64 * 1024;
    let mut sr = Sr::format(open(), options.clone()).unwrap();
    let vdi = sr.create_vdi("disk", 1 << 20).unwrap();
    let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 253) as u8).collect();
    sr.write(vdi, 128 * 1024, &data).unwrap();
    sr.flush().unwrap();
    let snapshot = sr.snapshot_vdi(vdi).unwrap();
    let _ = sr.into_device().close();

    let mut sr = Sr::attach(open()).unwrap();
    let mut back = vec![0u8; data.len()];
    sr.read(snapshot, 128 * 1024, &mut back).unwrap();
    assert_eq!(back, data);
    // A second format without force is refused: the disk now holds an SR.
    let dev = sr.into_device();
    assert!(matches!(
        Sr::format(dev, options).err(),
        Some(SrError::ExistingSr(_))
    ));
}
