//! The guest that tests and benchmarks start on Keel: Debian's pinned Linux kernel
//! ([`crate::linux::PINNED_KERNEL_PACKAGE`]) as shipped (`vmlinuz`, a bzImage with an xz
//! payload) and a lean busybox initramfs whose `/init` does what the kernel command line
//! asks, so one initramfs serves every lifecycle test.
//!
//! `/init` mounts the usual filesystems, loads the Xen frontends packed with it, prints
//! [`GUEST_READY`] followed by the kernel command line on `hvc0`, then acts on the word
//! `keel_guest=ACTION`:
//!
//! | ACTION | what the guest does |
//! |---|---|
//! | `idle` (default) | waits; a toolstack's `control/shutdown` request powers it off or reboots it |
//! | `poweroff` | powers itself off (`SCHEDOP_shutdown` poweroff) |
//! | `reboot` | reboots itself |
//! | `crash` | panics the kernel (`sysrq c`): Xen sees a crash |
//!
//! As PID 1 the shell must turn the signals busybox's `poweroff`/`reboot` send to init (and
//! the kernel's reboot request) into the real thing, or a clean shutdown never completes
//! (`../shared/notes/linux-dom0-xl.md`).

use std::path::PathBuf;

use crate::error::HarnessError;
use crate::linux;

/// The line the guest prints on its console once userspace runs.
pub const GUEST_READY: &str = "keel-guest: ready";

/// Kernel modules the guest loads at boot (Debian builds the Xen frontends as modules).
pub const GUEST_MODULES: &[&str] = &["xen-blkfront", "xen-netfront"];

/// The kernel command line for a guest on `hvc0` that then does `action`.
pub fn cmdline(action: &str) -> String {
    format!("console=hvc0 quiet loglevel=4 keel_guest={action}")
}

/// `/init` of the guest initramfs.
pub const GUEST_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
trap 'poweroff -f' USR1 USR2 TERM
trap 'reboot -f' INT
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m 2>/dev/null; done
action=idle
for word in $(cat /proc/cmdline); do
  case "$word" in keel_guest=*) action="${word#keel_guest=}" ;; esac
done
echo "keel-guest: ready ($(cat /proc/cmdline))"
case "$action" in
  poweroff) poweroff -f ;;
  reboot) reboot -f ;;
  crash) echo c > /proc/sysrq-trigger ;;
esac
while true; do sleep 1; done
"#;

/// Debian's kernel as shipped, the guest's `PV_kernel`.
pub fn kernel() -> Result<PathBuf, HarnessError> {
    linux::kernel()
}

/// The guest initramfs (built once per run of the harness, cached under `target/keel/`).
pub fn initramfs() -> Result<PathBuf, HarnessError> {
    linux::initramfs("guest.cpio", GUEST_INIT, GUEST_MODULES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_reads_the_action_the_command_line_names() {
        let line = cmdline("crash");
        assert!(line.contains("console=hvc0"));
        assert!(line.split(' ').any(|w| w == "keel_guest=crash"));
        for action in ["poweroff", "reboot", "crash"] {
            assert!(
                GUEST_INIT.contains(&format!("  {action})")),
                "no case for {action}"
            );
        }
        assert!(GUEST_INIT.contains(GUEST_READY));
    }
}
