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
//! | `burn` | keeps its vCPU busy forever (a shell loop): metering tests read one vCPU's worth |
//! | `meter` | with the word `keel_meter=D,N,PORT`: writes then reads D MiB of `xvda` (direct I/O), gets `eth0` a DHCP lease and sends N MiB over TCP to 10.0.2.2:PORT (QEMU's user network: the test's listener on the host's loopback); prints `keel-guest: meter ...` (`tests/tests/metering.rs`) |
//! | `hostile` | runs `/bin/hostile_blkfront` (only in [`hostile_initramfs`], which has no blkfront): a hostile frontend for the first VBD |
//! | `fs` | a filesystem on `xvda` (`tests/tests/guest_disks.rs`): makes one if none mounts, checks and adds files, `sync`s, prints `keel-guest: fs ...`; from its third boot on keeps rewriting a 1 MiB file with fsync; then waits for a hot-plugged `xvdb` and its removal, then frees 16 MiB and runs `fstrim` |
//! | `kbench` | runs `/bin/kbench /dev/xvda` (only in `cargo xtask bench guest-disk`'s initramfs) and prints `keel-guest: kbench done` |
//! | `net` | asks DHCP for `eth0`'s address (busybox `udhcpc`), pings the gateway and prints `keel-guest: net ...` |
//! | `peer` | runs the comma-separated steps of the word `keel_steps=` in order and prints `keel-guest: peer <step> <outcome>` for each (steps below), then `keel-guest: peer done`; `tests/tests/guest_network.rs` and `cargo xtask bench guest-net` |
//!
//! The `peer` steps (`IF` an interface, `eth0`; `/payload` is `seq 1 40000` (228,894 bytes)):
//!
//! | step | what | outcome |
//! |---|---|---|
//! | `dhcp=IF` | `udhcpc` on IF | `lease A.B.C.D/N` (empty if none) |
//! | `ip=IF@A.B.C.D/N` | flushes IF's addresses, sets this one, link up | the address |
//! | `mac=IF@MAC` | link down, new MAC, link up | the MAC IF has now |
//! | `down=IF` | flushes IF's addresses, link down | `ok` |
//! | `serve=PORT` | serves `/payload` on TCP PORT, one client after the other, in the background | `md5 <md5>` |
//! | `sink=PORT` | reads and discards TCP PORT, one client after the other, in the background | `ok` |
//! | `reach=IP` | pings IP once a second until it answers (90 tries) | `ok tries=N` or `failed` |
//! | `ping=IP` | 3 pings, 2 s each | `reached` or `unreachable` |
//! | `tcp=IP:PORT` | reads IP:PORT to its end (20 tries) and compares it with `/payload` | `same bytes=N` or `differs bytes=N` |
//! | `send=MIB@IP:PORT` | sends MIB MiB of zeros to IP:PORT | `uptime <start> <end>` (`/proc/uptime`, the peer closed at the end), then `cpu <cpu line> / <cpu line>` (`/proc/stat` before and after) and `events <before> <after>` (the VIFs' event-channel interrupts, `/proc/interrupts`) |
//! | `udprecv=SECONDS@PORT` | `/bin/udp_pps recv` in the background (only in bench guest-net's initramfs) | `listening`; later a line `udprecv udp_pps received N packets in S s` |
//! | `udpsend=SECONDS@IP:PORT` | `/bin/udp_pps send`, 60-byte frames | `udp_pps sent N packets in S s (R refused)`, then the `cpu` and `events` lines as `send=` |
//! | `waitif=IF` | waits until IF exists (600 s) | `present` or `absent` |
//! | `goneif=IF` | waits until IF is gone (600 s) | `gone` or `still there` |
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
/// `ext4` (which also mounts the ext2 that busybox's `mke2fs` makes) needs `crc32c` through
/// the crypto API, which no module dependency names.
pub const GUEST_MODULES: &[&str] = &["xen-blkfront", "xen-netfront", "crc32c_generic", "ext4"];

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
  burn) while :; do :; done ;;
  hostile) mkdir -p /proc/xen; mount -t xenfs xenfs /proc/xen 2>/dev/null; /bin/hostile_blkfront ;;
  net)
    printf '#!/bin/sh\n[ "$1" = bound ] && ifconfig $interface $ip netmask $subnet && echo "keel-guest: net lease $ip router $router"\n' > /dhcp.sh
    chmod +x /dhcp.sh
    ifconfig eth0 up
    udhcpc -i eth0 -n -q -t 30 -T 2 -s /dhcp.sh 2>/dev/null || echo "keel-guest: net no lease"
    ping -c 3 -W 5 10.0.2.2 >/dev/null 2>&1 && echo "keel-guest: net ping ok" || echo "keel-guest: net ping failed" ;;
  peer)
    seq 1 40000 > /payload
    # busybox nc stops sending at its stdin's end and exits at the peer's: a client or sink
    # reads stdin from this FIFO, held open read-write, so its stdin never ends.
    mkfifo /hold; exec 3<>/hold
    steps=""
    for word in $(cat /proc/cmdline); do
      case "$word" in keel_steps=*) steps="${word#keel_steps=}" ;; esac
    done
    say() { echo "keel-guest: peer $*"; }
    # Interrupts of the VIFs' event channels so far (netfront names them `vif<devid>-q<n>[-tx|-rx]`).
    vif_events() { awk '/ vif[0-9]/ { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i } END { print n + 0 }' /proc/interrupts; }
    for step in $(echo "$steps" | tr ',' ' '); do
      arg="${step#*=}"; dev="${arg%%@*}"; val="${arg#*@}"
      case "$step" in
        dhcp=*)
          printf '#!/bin/sh\n[ "$1" = bound ] && ip addr add $ip/$mask dev $interface\n' > /dhcp.sh
          chmod +x /dhcp.sh; ip link set "$arg" up
          udhcpc -i "$arg" -n -q -t 30 -T 2 -s /dhcp.sh >/dev/null 2>&1
          say "$step lease $(ip -4 -o addr show dev "$arg" | awk '{print $4}')" ;;
        ip=*)
          ip addr flush dev "$dev"; ip addr add "$val" dev "$dev"; ip link set "$dev" up
          say "$step $(ip -4 -o addr show dev "$dev" | awk '{print $4}')" ;;
        mac=*)
          ip link set "$dev" down; ip link set "$dev" address "$val"; ip link set "$dev" up
          say "$step $(cat /sys/class/net/$dev/address)" ;;
        down=*) ip addr flush dev "$arg"; ip link set "$arg" down; say "$step ok" ;;
        serve=*)
          ( while :; do nc -l -p "$arg" < /payload >/dev/null 2>&1; done ) &
          say "$step md5 $(md5sum < /payload | cut -c1-32)" ;;
        sink=*)
          ( while :; do nc -l -p "$arg" <&3 >/dev/null 2>&1; done ) &
          say "$step ok" ;;
        reach=*)
          n=0; until ping -c 1 -W 1 "$arg" >/dev/null 2>&1; do
            n=$((n+1)); [ $n -ge 90 ] && break; sleep 1
          done
          [ $n -lt 90 ] && say "$step ok tries=$n" || say "$step failed" ;;
        ping=*)
          ping -c 3 -W 2 "$arg" >/dev/null 2>&1 && say "$step reached" || say "$step unreachable" ;;
        tcp=*)
          n=0; rm -f /got; while [ $n -lt 20 ]; do
            nc -w 5 "${arg%:*}" "${arg##*:}" <&3 > /got 2>/dev/null
            cmp -s /got /payload && break; n=$((n+1)); sleep 1
          done
          cmp -s /got /payload && say "$step same bytes=$(wc -c < /got)" || say "$step differs bytes=$(wc -c < /got)" ;;
        send=*)
          e0=$(vif_events); c0=$(head -1 /proc/stat); start=$(cut -d' ' -f1 /proc/uptime)
          dd if=/dev/zero bs=65536 count=$((dev * 16)) 2>/dev/null | nc -w 10 "${val%:*}" "${val##*:}" >/dev/null 2>&1
          end=$(cut -d' ' -f1 /proc/uptime); c1=$(head -1 /proc/stat); e1=$(vif_events)
          say "$step uptime $start $end"
          say "$step cpu $c0 / $c1"
          say "$step events $e0 $e1" ;;
        udprecv=*)
          ( /bin/udp_pps recv "$val" "$dev" | sed 's/^/keel-guest: peer udprecv /' ) &
          say "$step listening" ;;
        udpsend=*)
          e0=$(vif_events); c0=$(head -1 /proc/stat)
          sent=$(/bin/udp_pps send "${val%:*}" "${val##*:}" "$dev" 18 2>&1)
          c1=$(head -1 /proc/stat); e1=$(vif_events)
          say "$step $sent"
          say "$step cpu $c0 / $c1"
          say "$step events $e0 $e1" ;;
        waitif=*)
          n=0; while [ ! -e "/sys/class/net/$arg" ] && [ $n -lt 600 ]; do n=$((n+1)); sleep 1; done
          [ -e "/sys/class/net/$arg" ] && say "$step present" || say "$step absent" ;;
        goneif=*)
          n=0; while [ -e "/sys/class/net/$arg" ] && [ $n -lt 600 ]; do n=$((n+1)); sleep 1; done
          [ -e "/sys/class/net/$arg" ] && say "$step still there" || say "$step gone" ;;
        *) say "$step unknown step" ;;
      esac
    done
    say "done" ;;
  fs)
    mkdir -p /mnt
    made=no
    if ! mount -t ext4 /dev/xvda /mnt 2>/dev/null; then
      mkfs.ext4 -q -F /dev/xvda >/dev/null 2>&1; made=yes
      mount -t ext4 /dev/xvda /mnt || made=unmountable
    fi
    mkdir -p /mnt/files; touch /mnt/sums
    before=$(cat /mnt/marker 2>/dev/null)
    files=$(ls /mnt/files | wc -l)
    check=none; [ -s /mnt/sums ] && { check=ok; md5sum -c /mnt/sums >/dev/null 2>&1 || check=bad; }
    marker="keel-fs-$(cut -c1-8 /proc/sys/kernel/random/uuid)"
    dd if=/dev/urandom of=/mnt/files/$marker bs=65536 count=4 2>/dev/null
    md5sum /mnt/files/$marker >> /mnt/sums
    echo "$marker" > /mnt/marker
    dd if=/dev/urandom of=/mnt/trim bs=65536 count=256 2>/dev/null
    sync
    echo "keel-guest: fs made=$made before=$before files=$files check=$check wrote=$marker synced"
    [ "$files" -ge 2 ] && { while :; do dd if=/dev/urandom of=/mnt/churn bs=65536 count=16 conv=fsync 2>/dev/null; done & }
    while [ ! -b /dev/xvdb ]; do sleep 1; done
    echo "keel-guest: fs xvdb $(cat /sys/block/xvdb/size) sectors"
    while [ -e /sys/block/xvdb ]; do sleep 1; done
    echo "keel-guest: fs xvdb gone"
    rm -f /mnt/trim; sync
    echo "keel-guest: fs trimmed $(fstrim -v /mnt 2>&1 | tr -dc 'a-zA-Z0-9 ()')" ;;
  kbench)
    [ -x /bin/kbench ] && /bin/kbench /dev/xvda xvda
    echo "keel-guest: kbench done" ;;
  disk)
    if [ -b /dev/xvda ]; then
      mkdir -p /tmp
      before=$(dd if=/dev/xvda bs=64 count=1 2>/dev/null | tr -dc 'a-z0-9-')
      marker="keel-disk-$(cut -c1-8 /proc/sys/kernel/random/uuid)"
      echo "$marker" | dd of=/dev/xvda bs=512 conv=sync,fsync 2>/dev/null
      dd if=/dev/urandom of=/tmp/big bs=65536 count=64 2>/dev/null
      dd if=/tmp/big of=/dev/xvda bs=65536 seek=16 conv=fsync 2>/dev/null
      echo 3 > /proc/sys/vm/drop_caches
      after=$(dd if=/dev/xvda bs=64 count=1 2>/dev/null | tr -dc 'a-z0-9-')
      big=$(dd if=/dev/xvda bs=65536 skip=16 count=64 2>/dev/null | md5sum | cut -c1-32)
      want=$(md5sum < /tmp/big | cut -c1-32)
      same=differs; [ "$big" = "$want" ] && same=same
      echo "keel-guest: disk xvda $(cat /sys/block/xvda/size) sectors before=$before wrote=$marker read=$after 4MiB=$same"
    else
      echo "keel-guest: disk missing"
    fi ;;
  meter)
    set -- $(tr ' ' '\n' < /proc/cmdline | sed -n 's/^keel_meter=//p' | tr ',' ' ')
    dd if=/dev/zero of=/dev/xvda bs=1048576 count="$1" oflag=direct 2>/dev/null
    dd if=/dev/xvda of=/dev/null bs=1048576 count="$1" iflag=direct 2>/dev/null
    echo "keel-guest: meter disk $1 MiB written and read"
    printf '#!/bin/sh\n[ "$1" = bound ] && ifconfig $interface $ip netmask $subnet\n' > /dhcp.sh
    chmod +x /dhcp.sh; ifconfig eth0 up
    udhcpc -i eth0 -n -q -t 30 -T 2 -s /dhcp.sh >/dev/null 2>&1 || echo "keel-guest: meter no lease"
    dd if=/dev/zero bs=65536 count=$(($2 * 16)) 2>/dev/null | nc 10.0.2.2 "$3" >/dev/null 2>&1
    echo "keel-guest: meter net $2 MiB sent" ;;
esac
while true; do sleep 1; done
"#;

/// Python for SDK scripts (prepend it): `upload_image(x, session_id, port, path, name)` puts a
/// file into a new VDI of the first SR through `PUT /import_raw_vdi` and returns the VDI's
/// uuid; `guest_vm(x, template, name, kernel_uuid, initrd_uuid, cmdline)` clones the template
/// into a 128 MiB guest booting those VDIs, as clients do on XCP (clone, provision, no longer
/// a template), and returns its ref.
pub const GUEST_VM_PY: &str = r#"
import http.client, urllib.parse

def upload_image(x, session_id, port, path, name):
    data = open(path, "rb").read()
    size = (len(data) + (1 << 20) - 1) // (1 << 20) * (1 << 20)
    vdi = x.VDI.create({"SR": x.SR.get_all()[0], "name_label": name, "name_description": "",
                        "virtual_size": str(size), "type": "user", "sharable": False,
                        "read_only": False, "other_config": {}, "xenstore_data": {},
                        "sm_config": {}, "tags": []})
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=600)
    q = urllib.parse.urlencode({"session_id": session_id, "vdi": vdi})
    conn.putrequest("PUT", "/import_raw_vdi?" + q)
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    conn.send(data)
    conn.send(bytes(size - len(data)))
    r = conn.getresponse()
    assert r.status == 200, (r.status, r.read())
    return x.VDI.get_uuid(vdi)

def guest_vm(x, template, name, kernel_uuid, initrd_uuid, cmdline):
    vm = x.VM.clone(template, name)
    x.VM.set_PV_kernel(vm, "vdi:" + kernel_uuid)
    x.VM.set_PV_ramdisk(vm, "vdi:" + initrd_uuid)
    x.VM.set_PV_args(vm, cmdline)
    x.VM.set_memory_limits(vm, str(64 << 20), str(128 << 20), str(128 << 20), str(128 << 20))
    x.VM.provision(vm)
    x.VM.set_is_a_template(vm, False)  # a clone of a template is one until told otherwise
    return vm
"#;

/// Debian's kernel as shipped, the guest's `PV_kernel`.
pub fn kernel() -> Result<PathBuf, HarnessError> {
    linux::kernel()
}

/// The guest initramfs (built once per run of the harness, cached under `target/keel/`).
pub fn initramfs() -> Result<PathBuf, HarnessError> {
    linux::initramfs_with("guest.cpio", GUEST_INIT, GUEST_MODULES, linux::mkfs_ext4()?)
}

/// Modules of the hostile frontend's guest: the user interfaces to grants, event channels and
/// xenstore, and no `xen-blkfront`, so that the guest's VBD is left to the program.
pub const HOSTILE_MODULES: &[&str] = &["xen-gntalloc", "xen-evtchn", "xenfs"];

/// `tests/guest-tools/hostile_blkfront.c` built with `gcc -static -O2` (cached under
/// `target/keel/linux/`, rebuilt when the source is newer).
pub fn hostile_blkfront() -> Result<PathBuf, HarnessError> {
    guest_tool("hostile_blkfront")
}

/// `tests/guest-tools/udp_pps.c` built as [`hostile_blkfront`] is: UDP small-frame senders
/// and counters for the `peer` steps `udpsend=` and `udprecv=` (`cargo xtask bench
/// guest-net` packs it as `/bin/udp_pps`).
pub fn udp_pps() -> Result<PathBuf, HarnessError> {
    guest_tool("udp_pps")
}

/// `tests/guest-tools/<name>.c` built with `gcc -static -O2` (cached under
/// `target/keel/linux/`, rebuilt when the source is newer).
fn guest_tool(name: &str) -> Result<PathBuf, HarnessError> {
    crate::cache_lock::with_cache_lock(|| guest_tool_locked(name))
}

fn guest_tool_locked(name: &str) -> Result<PathBuf, HarnessError> {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("guest-tools")
        .join(format!("{name}.c"));
    let out = linux::artifact(name);
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if out.exists() && modified(&out) >= modified(&source) {
        return Ok(out);
    }
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let built = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&source)
        .output()
        .map_err(|error| HarnessError::Io {
            what: format!("running gcc for {name}"),
            error,
        })?;
    if !built.status.success() {
        return Err(HarnessError::Io {
            what: format!("gcc -static {}", source.display()),
            error: std::io::Error::other(String::from_utf8_lossy(&built.stderr).into_owned()),
        });
    }
    Ok(out)
}

/// The guest initramfs with [`hostile_blkfront`] as `/bin/hostile_blkfront` and
/// [`HOSTILE_MODULES`] instead of the frontends; boot it with `keel_guest=hostile`.
pub fn hostile_initramfs() -> Result<PathBuf, HarnessError> {
    let tool = hostile_blkfront()?;
    let data = std::fs::read(&tool).map_err(|error| HarnessError::Io {
        what: format!("reading {}", tool.display()),
        error,
    })?;
    linux::initramfs_with(
        "guest-hostile.cpio",
        GUEST_INIT,
        HOSTILE_MODULES,
        vec![linux::CpioEntry {
            path: "bin/hostile_blkfront".into(),
            mode: 0o100755,
            data,
        }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_reads_the_action_the_command_line_names() {
        let line = cmdline("crash");
        assert!(line.contains("console=hvc0"));
        assert!(line.split(' ').any(|w| w == "keel_guest=crash"));
        for action in [
            "poweroff", "reboot", "crash", "disk", "fs", "burn", "net", "hostile", "peer", "meter",
            "kbench",
        ] {
            assert!(
                GUEST_INIT.contains(&format!("  {action})")),
                "no case for {action}"
            );
        }
        assert!(GUEST_INIT.contains(GUEST_READY));
    }
}
