//! The kernel's PCI table lists exactly the devices QEMU was given.

use keel_tests::kernel_lines::{PciLine, READY_PREFIX};
use keel_tests::machine::DEFAULT_DISK_BYTES;
use keel_tests::{HarnessError, Machine, NicModel, Pattern, Vm, BOOT_DEADLINE};

const VIRTIO_VENDOR: u16 = 0x1af4;
const REDHAT_VENDOR: u16 = 0x1b36;
const QEMU_NVME_DEVICE: u16 = 0x0010;

/// Boots `vm` to ready and returns its PCI table.
fn pci_table(vm: &Vm) -> Result<Vec<PciLine>, HarnessError> {
    vm.wait_for(Pattern::starts_with(READY_PREFIX), BOOT_DEADLINE)?;
    Ok(vm
        .serial_lines()
        .iter()
        .filter_map(|line| PciLine::parse(line))
        .collect())
}

fn find<'a>(table: &'a [PciLine], name: &str, vm: &Vm) -> &'a PciLine {
    match table.iter().find(|function| function.name == name) {
        Some(function) => function,
        None => panic!(
            "no {name} in the PCI table {table:#?}\nlog: {}",
            vm.log_path().display()
        ),
    }
}

#[test]
fn pci_table_lists_virtio_net_virtio_blk_and_nvme() -> Result<(), HarnessError> {
    let vm = Machine::new("pci_all_devices")
        .nic(NicModel::VirtioNet)
        .virtio_blk_disk(DEFAULT_DISK_BYTES)
        .nvme_disk(DEFAULT_DISK_BYTES)
        .boot()?;
    let table = pci_table(&vm)?;

    let net = find(&table, "virtio-net", &vm);
    assert_eq!(
        (net.vendor_id, net.class.0),
        (VIRTIO_VENDOR, 0x02),
        "{net:?}"
    );
    let blk = find(&table, "virtio-blk", &vm);
    assert_eq!(
        (blk.vendor_id, blk.class.0),
        (VIRTIO_VENDOR, 0x01),
        "{blk:?}"
    );
    let nvme = find(&table, "nvme", &vm);
    assert_eq!(
        (nvme.vendor_id, nvme.device_id, nvme.class),
        (REDHAT_VENDOR, QEMU_NVME_DEVICE, (0x01, 0x08, 0x02)),
        "{nvme:?}"
    );
    // q35's own functions are there too: the scan walks the whole bus.
    find(&table, "host-bridge", &vm);
    Ok(())
}

#[test]
fn pci_table_has_no_nvme_when_none_was_given() -> Result<(), HarnessError> {
    let vm = Machine::new("pci_without_nvme")
        .nic(NicModel::VirtioNet)
        .virtio_blk_disk(DEFAULT_DISK_BYTES)
        .boot()?;
    let table = pci_table(&vm)?;
    // The table must have been printed at all for its lack of NVMe to mean anything.
    find(&table, "virtio-net", &vm);
    find(&table, "virtio-blk", &vm);
    let nvme: Vec<&PciLine> = table
        .iter()
        .filter(|f| f.name == "nvme" || f.class == (0x01, 0x08, 0x02))
        .collect();
    assert!(nvme.is_empty(), "unexpected NVMe functions {nvme:?}");
    Ok(())
}
