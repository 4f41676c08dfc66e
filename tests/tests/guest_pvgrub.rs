//! Booting a Linux guest from its own disk, as XCP clients ask for it: the VM has
//! `PV_bootloader = "pygrub"` and no `PV_kernel`; Keel starts GRUB built for Xen PVH (Debian's
//! `grub-xen-host`, uploaded once as a VDI the host's `other_config:keel_pvgrub` names), which
//! finds the guest disk through its own Xen block frontend talking to Keel's blkback, reads
//! `/boot/grub/grub.cfg` there and boots the kernel and initramfs that file names
//! (docs/guests.md, "Booting from the guest's own disk (pygrub)").
//!
//! The guest disk is a whole-disk ext4 made by `mke2fs -d` from a directory (nothing is
//! mounted): Debian's pinned kernel, the guest initramfs (`keel_tests::guest`) and a
//! `grub.cfg` whose kernel command line only this file carries. GRUB's own filesystem code
//! (`grub-fstest`, the same GRUB release) reads the image on the host first, so a disk GRUB
//! cannot read fails here and not as a silent guest. Under nested TCG GRUB and the guest take
//! a minute or two: run it on purpose, `cargo test -p keel-tests --test guest_pvgrub`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keel_tests::emulator::retry_after_emulator_fault;
use keel_tests::guest::{self, GUEST_READY, GUEST_VM_PY};
use keel_tests::guest_host::{boot_host, path};
use keel_tests::prereq::{self, Tool, GRUB_XEN_PVH_IMAGE};
use keel_tests::python::run_script;
use keel_tests::{HarnessError, Pattern};

/// From `VM.start` to the guest's ready line: GRUB reads ~10 MiB through blkback one page
/// at a time, then Linux decompresses and boots, all inside an emulated SVM guest of an
/// emulated machine (measured: 160 s; docs/guests.md).
const GUEST_BOOT_DEADLINE: Duration = Duration::from_secs(420);
/// The guest disk: room for the kernel (~8 MiB), the initramfs and ext4's own metadata.
const GUEST_DISK_MIB: u64 = 48;
/// Words of the kernel command line that only the disk's `grub.cfg` holds.
const GRUB_CFG_WORDS: &str = "keel_guest=pvgrub keel_boot=own-disk";

/// The disk's `/boot/grub/grub.cfg`: one entry, booted at once.
fn grub_cfg() -> String {
    format!(
        "set timeout=0\n\
         set default=0\n\
         menuentry 'Keel test guest' {{\n\
         \techo 'Loading /boot/vmlinuz from the guest disk'\n\
         \tlinux /boot/vmlinuz console=hvc0 loglevel=4 {GRUB_CFG_WORDS}\n\
         \tinitrd /boot/initrd\n\
         }}\n"
    )
}

/// Uploads GRUB and the guest disk, names GRUB in the host's `other_config:keel_pvgrub`,
/// makes a VM from the template with `PV_bootloader = "pygrub"`, nothing in `PV_kernel`, and
/// the disk as its bootable `xvda`, and starts it. Prints `vm <ref>` and `domid <id>`.
const PYGRUB_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(600)
url, password, port, grub, disk = sys.argv[1:6]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-pvgrub")
x = s.xenapi
host = x.host.get_all()[0]
template = [ref for ref, rec in x.VM.get_all_records().items()
            if rec["is_a_template"] and rec["name_label"] == "Keel Linux PVH (direct boot)"]
assert len(template) == 1, template
vm = x.VM.clone(template[0], "pygrub guest")
x.VM.set_memory_limits(vm, str(64 << 20), str(128 << 20), str(128 << 20), str(128 << 20))
x.VM.provision(vm)
x.VM.set_is_a_template(vm, False)
x.VM.set_PV_bootloader(vm, "pygrub")
x.VM.set_PV_kernel(vm, "")
x.VM.set_PV_ramdisk(vm, "")
disk_uuid = upload_image(x, s._session, port, disk, "guest disk")
vbd = x.VBD.create({"VM": vm, "VDI": x.VDI.get_by_uuid(disk_uuid), "userdevice": "0",
                    "bootable": True, "mode": "RW", "type": "Disk", "unpluggable": False,
                    "empty": False, "other_config": {}, "qos_algorithm_type": "",
                    "qos_algorithm_params": {}})
# Without GRUB on the host the start is refused, naming what to set.
try:
    x.VM.start(vm, False, False)
    raise AssertionError("VM.start without the host's GRUB succeeded")
except XenAPI.Failure as f:
    assert f.details[0] == "BOOTLOADER_FAILED", f.details
    assert "keel_pvgrub" in f.details[2], f.details
    print("refused", f.details[0], flush=True)
grub_uuid = upload_image(x, s._session, port, grub, "grub-i386-xen_pvh.bin")
x.host.remove_from_other_config(host, "keel_pvgrub")
x.host.add_to_other_config(host, "keel_pvgrub", "vdi:" + grub_uuid)
x.VM.start(vm, False, False)
print("vm", vm)
print("attached", x.VBD.get_currently_attached(vbd))
print("domid", x.VM.get_domid(vm), flush=True)
"#;

/// A directory holding the guest's `/boot` (kernel, initramfs, `grub.cfg`) made into a
/// whole-disk ext4 image of [`GUEST_DISK_MIB`], without mounting anything.
fn guest_disk(dir: &Path) -> Result<PathBuf, HarnessError> {
    let root = dir.join("root");
    let grub_dir = root.join("boot").join("grub");
    std::fs::create_dir_all(&grub_dir).map_err(|e| io("making the guest's /boot", e))?;
    std::fs::copy(guest::kernel()?, root.join("boot/vmlinuz"))
        .map_err(|e| io("copying the guest kernel", e))?;
    std::fs::copy(guest::initramfs()?, root.join("boot/initrd"))
        .map_err(|e| io("copying the guest initramfs", e))?;
    std::fs::write(grub_dir.join("grub.cfg"), grub_cfg()).map_err(|e| io("writing grub.cfg", e))?;
    let image = dir.join("guest-disk.img");
    let _ = std::fs::remove_file(&image);
    // e2fsprogs' defaults, as a distribution's image has them (1.47: metadata_csum_seed,
    // orphan_file; upstream GRUB 2.06 refused the first, Debian's reads it).
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "keel-guest", "-d"])
        .arg(&root)
        .arg(&image)
        .arg(format!("{GUEST_DISK_MIB}M")))?;
    Ok(image)
}

/// Runs GRUB's own filesystem code (`grub-fstest`, the same GRUB release as the guest's) on
/// `image`: `cat PATH`, or `cmp PATH LOCAL` (fails unless the file equals the host's).
fn grub_fstest(image: &Path, args: &[&str]) -> Result<String, HarnessError> {
    run(Command::new("grub-fstest").arg(image).args(args))
}

fn run(command: &mut Command) -> Result<String, HarnessError> {
    let what = format!("{command:?}");
    let out = command.output().map_err(|e| io(&what, e))?;
    if !out.status.success() {
        return Err(io(
            &what,
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn io(what: &str, error: std::io::Error) -> HarnessError {
    HarnessError::Io {
        what: what.to_string(),
        error,
    }
}

/// A VM with only `PV_bootloader = "pygrub"` boots the kernel and initramfs its own disk's
/// `grub.cfg` names: the guest's ready line shows the command line from that file, with the
/// `BOOT_IMAGE` GRUB adds.
#[test]
fn a_pygrub_vm_boots_the_kernel_its_own_disk_names() {
    prereq::check(&[Tool::GrubXenPvh, Tool::Mke2fs, Tool::GrubMkimage])
        .unwrap_or_else(|e| panic!("{e}"));
    // Beside the host's own directory, which boot_host empties.
    let dir = keel_tests::paths::keel_dir()
        .join("test-disks")
        .join("guest_pvgrub_image");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("disk directory");

    let disk = guest_disk(&dir).unwrap_or_else(|e| panic!("{e}"));
    let cfg = grub_fstest(&disk, &["cat", "/boot/grub/grub.cfg"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg, grub_cfg(), "GRUB reads grub.cfg from the guest disk");
    for (file, local) in [
        ("/boot/vmlinuz", guest::kernel()),
        ("/boot/initrd", guest::initramfs()),
    ] {
        let local = local.unwrap_or_else(|e| panic!("{e}"));
        grub_fstest(&disk, &["cmp", file, path(&local)])
            .unwrap_or_else(|e| panic!("GRUB reads {file} as it was written: {e}"));
    }

    retry_after_emulator_fault("guest_pvgrub", |name| {
        boots_its_own_kernel(name, &disk);
        Ok::<(), HarnessError>(())
    });
}

/// A host named `name` imports `disk`, makes the pygrub VM and boots it.
fn boots_its_own_kernel(name: &str, disk: &Path) {
    let host = boot_host(name).unwrap_or_else(|e| panic!("{e}"));
    let port = host.url.rsplit(':').next().unwrap_or_default().to_string();

    let out = run_script(
        &format!("{GUEST_VM_PY}\n{PYGRUB_SCRIPT}"),
        &[
            &host.url,
            &host.password,
            &port,
            GRUB_XEN_PVH_IMAGE,
            path(disk),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("guest_pvgrub: {}", out.trim().replace('\n', "; "));
    assert!(out.contains("refused BOOTLOADER_FAILED"), "{out}");
    assert!(out.contains("attached True"), "xvda is attached: {out}");
    let domid = out
        .lines()
        .find_map(|l| l.strip_prefix("domid "))
        .expect("the script prints the domid")
        .trim()
        .to_string();

    // Keel's log of the domain's console: GRUB's words, then the kernel's init.
    let line = host
        .machine
        .wait_for(
            Pattern::contains(format!("guest d{domid}: {GUEST_READY}")),
            GUEST_BOOT_DEADLINE,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("guest_pvgrub: {line}");
    assert!(
        line.contains(GRUB_CFG_WORDS),
        "grub.cfg's command line: {line}"
    );
    assert!(
        line.contains("BOOT_IMAGE=/boot/vmlinuz"),
        "GRUB loaded the disk's kernel: {line}"
    );
}
