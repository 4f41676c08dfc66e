//! The reference stack Keel is measured against: Debian's Linux 6.1 (the pinned kernel of
//! [`crate::linux`]) as PVH dom0 of the same Xen 4.17, with Xen's own toolstack (`xl`,
//! `xenstored`, `xenconsoled`), Linux's blkback/netback and a bridge to the uplink — what a
//! provider runs instead of Keel (the heart of XCP-ng).
//!
//! dom0's initramfs is assembled from Debian packages fetched with `apt-get download` and
//! unpacked with `dpkg-deb -x` ([`crate::linux::unpack`]; nothing is installed on the host):
//! the Xen tools, their shared-library closure (followed through `readelf -d`'s `NEEDED`
//! entries, plus `libgcc_s.so.1`, which glibc `dlopen`s), busybox, bash and `flock` for the
//! hotplug scripts, the backend and bridge modules of the same kernel (loaded in the order
//! their `.modinfo` `depends=` give), and the guest kernel and initramfs of
//! [`crate::guest`]. It is built once and cached under `target/keel/linux/`.
//!
//! [`boot`] starts it under QEMU with the same flags as Keel's Xen runs ([`Machine::under_xen`]
//! with a virtio-net NIC whose host port is forwarded) and returns a [`ReferenceHost`]: its
//! console can be waited on, and commands (`xl …`) run in dom0 through a tiny command server
//! — busybox `nc -ll -e` on dom0's port 80, reached through QEMU's forwarded port. One
//! connection carries one command line; the server answers its output and then
//! `keel-cmd: rc=N`.
//!
//! The recipe's facts and pitfalls are in `../shared/notes/linux-dom0-xl.md`.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::HarnessError;
use crate::guest;
use crate::linux::{self, CpioEntry};
use crate::{Machine, NicModel, Pattern, Vm};

/// The console line dom0's `/init` prints once `xl` can be used and the command server
/// answers.
pub const DOM0_READY: &str = "linux-dom0: ready";

/// Debian packages whose files dom0 needs (the Xen 4.17 tools, their libraries, the shells
/// and `flock` that Xen's hotplug scripts run under).
pub const PACKAGES: &[&str] = &[
    "xen-utils-4.17",
    "xen-utils-common",
    "xenstore-utils",
    "libxenmisc4.17",
    "libxencall1",
    "libxendevicemodel1",
    "libxenevtchn1",
    "libxenforeignmemory1",
    "libxengnttab1",
    "libxenhypfs1",
    "libxenstore4",
    "libxentoolcore1",
    "libxentoollog1",
    "libyajl2",
    "libc6",
    "libgcc-s1",
    "liblzma5",
    "libzstd1",
    "zlib1g",
    "libuuid1",
    "libtinfo6",
    "libncurses6",
    "bash",
    "util-linux",
];

/// The Xen tools dom0 runs, from `xen-utils-4.17` (Debian's `/usr/sbin/xl` is a wrapper
/// script; the real binaries live here).
pub const XEN_BIN_DIR: &str = "usr/lib/xen-4.17/bin";
pub const XEN_TOOLS: &[&str] = &[
    "xl",
    "xenstored",
    "xenconsoled",
    "xen-init-dom0",
    "libxl-save-helper",
];

/// Libraries no `NEEDED` entry names but that are loaded at run time: glibc `dlopen`s
/// `libgcc_s.so.1` to unwind (without it `xl` aborts with status 134 after building the
/// domain).
pub const DLOPENED: &[&str] = &["libgcc_s.so.1"];

/// Where the libraries go in dom0 (`LD_LIBRARY_PATH` names it; no `ld.so.cache` is made).
pub const LIB_DIR: &str = "lib/x86_64-linux-gnu";
/// The program interpreter every dynamic binary names.
pub const INTERPRETER: &str = "ld-linux-x86-64.so.2";

/// Kernel modules dom0 loads, in this order after their dependencies: the user interfaces
/// to Xen that the toolstack opens, the backends, the bridge, RAM and loop disks for guest
/// disks, the uplink's virtio-net and virtio-blk for a disk of files (Debian builds them all
/// as modules).
pub const DOM0_MODULES: &[&str] = &[
    "xen-evtchn",
    "xen-privcmd",
    "xenfs",
    "xen-gntdev",
    "xen-gntalloc",
    "xen-blkback",
    "xen-netback",
    "bridge",
    "loop",
    "brd",
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
];

/// dom0's address on the bridge: the one QEMU's user network forwards host ports to.
pub const DOM0_ADDRESS: &str = "10.0.2.15";

/// Where the guest's kernel and initramfs sit in dom0.
pub const GUEST_KERNEL: &str = "/guest/vmlinuz";
pub const GUEST_INITRD: &str = "/guest/initrd.cpio";

/// The command server: one command line in, its output and `keel-cmd: rc=N` out.
const COMMAND_SERVER: &str =
    "#!/bin/busybox sh\nread -r line\nsh -c \"$line\" </dev/null 2>&1\necho \"keel-cmd: rc=$?\"\n";

/// dom0's `/init`. `/dev/std*` links matter: Xen's `locking.sh` loops on `stat -L
/// /dev/stdin` forever without them. `xenconsoled --log=guest` keeps each guest's console
/// (a PVH guest's `hvc0`) in `/var/log/xen/console/guest-NAME.log`. Busybox `brctl` has no
/// `stp`/`setfd`: the bridge's knobs are set through sysfs.
pub const DOM0_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/lib/xen-4.17/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm /run /tmp /var/run /var/lock /var/log/xen/console /var/lib/xen /var/lib/xenstored /var/run/xen /var/run/xenstored
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m || echo "linux-dom0: insmod $m failed"; done
mkdir -p /proc/xen
mount -t xenfs xenfs /proc/xen
xenstored --pid-file /var/run/xenstored.pid
xen-init-dom0 || echo "linux-dom0: xen-init-dom0 failed"
xenconsoled --log=guest --log-dir=/var/log/xen/console
ip link set lo up
brctl addbr xenbr0
echo 0 > /sys/class/net/xenbr0/bridge/stp_state
echo 0 > /sys/class/net/xenbr0/bridge/forward_delay
ip link set eth0 up
brctl addif xenbr0 eth0
ip link set xenbr0 up
ip addr add 10.0.2.15/24 dev xenbr0
ip route add default via 10.0.2.2
nc -ll -p 80 -e /bin/keel-cmd &
echo "linux-dom0: ready"
exec sh -c 'while true; do sleep 3600; done'
"#;

fn failure(what: impl Into<String>, message: impl Into<String>) -> HarnessError {
    HarnessError::Io {
        what: what.into(),
        error: std::io::Error::other(message.into()),
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |error| HarnessError::Io { what, error }
}

/// The libraries `readelf -d` lists as `NEEDED`, in order.
pub fn needed_libraries(readelf_dynamic: &str) -> Vec<String> {
    readelf_dynamic
        .lines()
        .filter(|line| line.contains("(NEEDED)"))
        .filter_map(|line| {
            let start = line.find('[')? + 1;
            let end = start + line.get(start..)?.find(']')?;
            line.get(start..end).map(str::to_string)
        })
        .collect()
}

pub fn readelf_needed(binary: &Path) -> Result<Vec<String>, HarnessError> {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(binary)
        .output()
        .map_err(io("running readelf (package binutils)"))?;
    if !out.status.success() {
        return Err(failure(
            format!("readelf -d {}", binary.display()),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(needed_libraries(&String::from_utf8_lossy(&out.stdout)))
}

/// Every shared library file (by file name) in the unpacked packages; symlinks count when
/// they resolve inside the package, so `libfoo.so.1 -> libfoo.so.1.2` is found by soname.
pub fn library_index(roots: &[PathBuf]) -> HashMap<String, PathBuf> {
    fn walk(dir: &Path, index: &mut HashMap<String, PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for path in entries.filter_map(Result::ok).map(|e| e.path()) {
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                walk(&path, index);
                continue;
            }
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            // A symlink whose absolute target is outside the package does not resolve here.
            if name.contains(".so") && fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                index.entry(name.to_string()).or_insert(path);
            }
        }
    }
    let mut index = HashMap::new();
    for root in roots {
        walk(root, &mut index);
    }
    index
}

/// The libraries `binaries` need, directly or through each other, plus `extra`: each name
/// resolved through `needed` (a binary's `NEEDED` list) and `index`. Sorted by name.
pub fn library_closure(
    binaries: &[PathBuf],
    extra: &[&str],
    index: &HashMap<String, PathBuf>,
    needed: impl Fn(&Path) -> Result<Vec<String>, HarnessError>,
) -> Result<Vec<(String, PathBuf)>, HarnessError> {
    let mut found: BTreeSet<String> = BTreeSet::new();
    let mut queue: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    for binary in binaries {
        queue.extend(needed(binary)?);
    }
    while let Some(name) = queue.pop() {
        if found.contains(&name) {
            continue;
        }
        let path = index.get(&name).ok_or_else(|| {
            failure(
                "dom0's library closure",
                format!("no package provides {name}"),
            )
        })?;
        queue.extend(needed(path)?);
        found.insert(name);
    }
    found
        .into_iter()
        .map(|name| {
            let path = index.get(&name).cloned().unwrap_or_default();
            Ok((name, path))
        })
        .collect()
}

/// The directories above `path` (relative, `/`-separated), outermost first.
fn parents(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('/').collect();
    (1..parts.len()).map(|n| parts[..n].join("/")).collect()
}

/// What the base initramfs of [`linux::initramfs_with`] already has.
const BASE_DIRS: &[&str] = &[
    "bin",
    "sbin",
    "usr",
    "usr/bin",
    "usr/sbin",
    "dev",
    "proc",
    "sys",
    "etc",
    "www",
    "lib",
    "lib/modules",
];

/// Files for the archive with the directories they need listed before them (once each, none
/// of [`BASE_DIRS`]).
pub fn with_parent_dirs(files: Vec<CpioEntry>) -> Vec<CpioEntry> {
    let mut made: BTreeSet<String> = BASE_DIRS.iter().map(|d| d.to_string()).collect();
    let mut out = Vec::new();
    for file in files {
        for dir in parents(file.path.trim_start_matches('/')) {
            if made.insert(dir.clone()) {
                out.push(CpioEntry {
                    path: dir,
                    mode: 0o040755,
                    data: vec![],
                });
            }
        }
        out.push(file);
    }
    out
}

fn file_entry(path: &str, source: &Path, mode: u32) -> Result<CpioEntry, HarnessError> {
    Ok(CpioEntry {
        path: path.to_string(),
        mode,
        data: fs::read(source).map_err(io(format!("reading {}", source.display())))?,
    })
}

/// Every regular file under `dir`, as paths relative to `root`.
fn files_under(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        if path.is_dir() {
            files_under(root, &path, out);
        } else if path.is_file() {
            if let Ok(relative) = path.strip_prefix(root) {
                out.push(relative.to_path_buf());
            }
        }
    }
}

/// The pieces [`boot`] hands to QEMU.
#[derive(Debug, Clone)]
pub struct ReferenceImage {
    /// The ELF `vmlinux` inside Debian's bzImage (Xen's PVH dom0 builder wants an ELF).
    pub vmlinux: PathBuf,
    /// dom0's initramfs.
    pub initramfs: PathBuf,
}

/// What dom0's archive is made from, as a fingerprint: `/init`, the command server, the
/// package and module lists, and the guest's kernel and initramfs (which other tests' changes
/// to `crate::guest` alter).
fn fingerprint(guest_kernel: &Path, guest_initrd: &Path) -> Result<String, HarnessError> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (DOM0_INIT, COMMAND_SERVER, PACKAGES, DOM0_MODULES, XEN_TOOLS).hash(&mut hasher);
    for file in [guest_kernel, guest_initrd] {
        file.hash(&mut hasher);
        fs::read(file)
            .map_err(io(format!("reading {}", file.display())))?
            .hash(&mut hasher);
    }
    Ok(format!("{:016x}", hasher.finish()))
}

/// Builds dom0's kernel and initramfs: packages are downloaded and unpacked once; the archive
/// is rebuilt only when what it is made from changed ([`fingerprint`]).
pub fn build() -> Result<ReferenceImage, HarnessError> {
    let vmlinux = linux::vmlinux()?;
    let out = linux::artifact("reference-dom0.cpio");
    let (guest_kernel, guest_initrd) = (guest::kernel()?, guest::initramfs()?);
    let key = fingerprint(&guest_kernel, &guest_initrd)?;
    let key_file = linux::artifact("reference-dom0.cpio.key");
    if out.exists() && fs::read_to_string(&key_file).is_ok_and(|k| k == key) {
        return Ok(ReferenceImage {
            vmlinux,
            initramfs: out,
        });
    }
    let mut roots = HashMap::new();
    for package in PACKAGES {
        roots.insert(*package, linux::unpack(package)?);
    }
    let root = |package: &str| roots.get(package).cloned().unwrap_or_default();
    let mut files = Vec::new();
    let mut binaries = Vec::new();
    for tool in XEN_TOOLS {
        let source = root("xen-utils-4.17").join(XEN_BIN_DIR).join(tool);
        files.push(file_entry(
            &format!("{XEN_BIN_DIR}/{tool}"),
            &source,
            0o100755,
        )?);
        binaries.push(source);
    }
    let xenstore_bin = root("xenstore-utils").join("usr/bin");
    let mut tools = Vec::new();
    files_under(&xenstore_bin, &xenstore_bin, &mut tools);
    for tool in tools {
        let source = xenstore_bin.join(&tool);
        files.push(file_entry(
            &format!("usr/bin/{}", tool.display()),
            &source,
            0o100755,
        )?);
        binaries.push(source);
    }
    for (path, package, source) in [
        ("bin/bash", "bash", "bin/bash"),
        ("usr/bin/flock", "util-linux", "usr/bin/flock"),
    ] {
        let source = root(package).join(source);
        files.push(file_entry(path, &source, 0o100755)?);
        binaries.push(source);
    }
    // Xen's configuration and hotplug scripts.
    let common = root("xen-utils-common");
    let mut etc = Vec::new();
    files_under(&common, &common.join("etc/xen"), &mut etc);
    for relative in etc {
        let mode = if relative.starts_with("etc/xen/scripts") {
            0o100755
        } else {
            0o100644
        };
        files.push(file_entry(
            &relative.to_string_lossy(),
            &common.join(&relative),
            mode,
        )?);
    }
    let index = library_index(&roots.values().cloned().collect::<Vec<_>>());
    let mut extra: Vec<&str> = DLOPENED.to_vec();
    extra.push(INTERPRETER);
    for (name, source) in library_closure(&binaries, &extra, &index, readelf_needed)? {
        files.push(file_entry(&format!("{LIB_DIR}/{name}"), &source, 0o100755)?);
        if name == INTERPRETER {
            files.push(file_entry(&format!("lib64/{name}"), &source, 0o100755)?);
        }
    }
    files.push(file_entry(
        GUEST_KERNEL.trim_start_matches('/'),
        &guest_kernel,
        0o100644,
    )?);
    files.push(file_entry(
        GUEST_INITRD.trim_start_matches('/'),
        &guest_initrd,
        0o100644,
    )?);
    files.push(CpioEntry {
        path: "bin/keel-cmd".into(),
        mode: 0o100755,
        data: COMMAND_SERVER.as_bytes().to_vec(),
    });
    let partial = linux::initramfs_with(
        "reference-dom0.cpio.partial",
        DOM0_INIT,
        DOM0_MODULES,
        with_parent_dirs(files),
    )?;
    fs::rename(&partial, &out).map_err(io(format!("writing {}", out.display())))?;
    fs::write(&key_file, key).map_err(io(format!("writing {}", key_file.display())))?;
    Ok(ReferenceImage {
        vmlinux,
        initramfs: out,
    })
}

/// The guest kernel as an ELF (the `vmlinux` inside its bzImage), padded to whole MiB as a
/// raw disk image for [`boot_with_disk`] (busybox's `unxz` cannot undo the x86 BCJ filter of
/// Debian's payload, so dom0 gets it whole); returns the image and its MiB count.
pub fn vmlinux_disk() -> Result<(PathBuf, u64), HarnessError> {
    let elf = linux::vmlinux()?;
    let bytes = fs::metadata(&elf)
        .map_err(io(format!("reading {}", elf.display())))?
        .len();
    let mib = bytes.div_ceil(1 << 20);
    let out = linux::artifact("vmlinux-disk.img");
    if fs::metadata(&out).is_ok_and(|m| m.len() == mib << 20) {
        return Ok((out, mib));
    }
    fs::copy(&elf, &out).map_err(io(format!("writing {}", out.display())))?;
    fs::OpenOptions::new()
        .write(true)
        .open(&out)
        .and_then(|f| f.set_len(mib << 20))
        .map_err(io(format!("padding {}", out.display())))?;
    Ok((out, mib))
}

/// Where [`ReferenceHost::copy_vmlinux`] puts the ELF guest kernel in dom0.
pub const GUEST_VMLINUX: &str = "/tmp/vmlinux";

/// dom0's first command line word after Xen's: its console on Xen's.
pub const DOM0_CMDLINE: &str = "console=hvc0";

/// QEMU start → [`DOM0_READY`] under TCG (measured 18.6–30.2 s; a loaded machine is slower).
pub const DOM0_BOOT_DEADLINE: Duration = Duration::from_secs(300);

/// A running reference host.
pub struct ReferenceHost {
    /// The QEMU machine; dropping it ends the host.
    pub machine: Vm,
    port: u16,
    /// QEMU start → [`DOM0_READY`].
    pub ready_after: Duration,
}

/// What one command printed and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandReply {
    pub output: String,
    pub status: i32,
}

/// The server's answer: the output, then `keel-cmd: rc=N` as its last line; `None` when the
/// answer is cut short (the connection reached QEMU before the server listened, or dom0
/// died).
pub fn parse_reply(text: &str) -> Option<CommandReply> {
    let trimmed = text.trim_end_matches('\n');
    let (output, last) = match trimmed.rfind('\n') {
        Some(at) => (&trimmed[..at + 1], &trimmed[at + 1..]),
        None => ("", trimmed),
    };
    let status = last.strip_prefix("keel-cmd: rc=")?.trim().parse().ok()?;
    Some(CommandReply {
        output: output.to_string(),
        status,
    })
}

/// An `xl` guest configuration for the guest of [`crate::guest`] doing `action`.
pub fn guest_config(name: &str, action: &str, memory_mib: u64) -> String {
    format!(
        "name = \"{name}\"\ntype = \"pvh\"\nkernel = \"{GUEST_KERNEL}\"\nramdisk = \"{GUEST_INITRD}\"\nextra = \"{}\"\nmemory = {memory_mib}\nvcpus = 1\non_crash = \"destroy\"\n",
        guest::cmdline(action)
    )
}

/// [`guest_config`] booting `kernel` (a path in dom0) instead of [`GUEST_KERNEL`].
pub fn guest_config_with_kernel(name: &str, action: &str, memory_mib: u64, kernel: &str) -> String {
    guest_config(name, action, memory_mib).replace(
        &format!("kernel = \"{GUEST_KERNEL}\""),
        &format!("kernel = \"{kernel}\""),
    )
}

/// Where `xenconsoled --log=guest` keeps guest `name`'s console.
pub fn console_log(name: &str) -> String {
    format!("/var/log/xen/console/guest-{name}.log")
}

impl ReferenceHost {
    /// Runs `command` (one line of `sh`) in dom0 and returns its output and status.
    pub fn run(&self, command: &str, timeout: Duration) -> Result<CommandReply, HarnessError> {
        if command.contains('\n') {
            return Err(failure("dom0 command", "one line only"));
        }
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(io(format!(
            "connecting to dom0's command server: {command}"
        )))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(io("setting a read timeout"))?;
        stream
            .write_all(format!("{command}\n").as_bytes())
            .map_err(io(format!("sending {command}")))?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .map_err(io(format!("waiting for the answer to {command}")))?;
        let text = String::from_utf8_lossy(&answer);
        parse_reply(&text).ok_or_else(|| {
            failure(
                format!("dom0 command {command}"),
                format!("answer cut short: {text:?}"),
            )
        })
    }

    /// Runs `command` and fails unless it exits with 0; returns its output.
    pub fn run_ok(&self, command: &str, timeout: Duration) -> Result<String, HarnessError> {
        let reply = self.run(command, timeout)?;
        if reply.status != 0 {
            return Err(failure(
                format!("dom0 command {command}"),
                format!("exit status {}: {}", reply.status, reply.output.trim()),
            ));
        }
        Ok(reply.output)
    }

    /// Writes guest `name`'s configuration to `/etc/xen/NAME.cfg` in dom0.
    pub fn write_guest_config(
        &self,
        name: &str,
        action: &str,
        memory_mib: u64,
    ) -> Result<String, HarnessError> {
        self.write_config(name, &guest_config(name, action, memory_mib))
    }

    /// Writes `config` (an `xl` configuration without `'` or `%`) to `/etc/xen/NAME.cfg`.
    pub fn write_config(&self, name: &str, config: &str) -> Result<String, HarnessError> {
        if config.contains('\'') || config.contains('%') {
            return Err(failure("xl configuration", "no ' or % allowed"));
        }
        let path = format!("/etc/xen/{name}.cfg");
        let body = config.replace('\n', "\\n");
        self.run_ok(
            &format!("printf '{body}' > {path}"),
            Duration::from_secs(30),
        )?;
        Ok(path)
    }

    /// Copies the first `mib` MiB of `/dev/vda` (a [`vmlinux_disk`]) to [`GUEST_VMLINUX`] and
    /// checks it is an ELF.
    pub fn copy_vmlinux(&self, mib: u64) -> Result<String, HarnessError> {
        self.run_ok(
            &format!(
                "dd if=/dev/vda of={GUEST_VMLINUX} bs=1M count={mib} 2>/dev/null && head -c 4 {GUEST_VMLINUX} | grep -q ELF"
            ),
            Duration::from_secs(300),
        )?;
        Ok(GUEST_VMLINUX.to_string())
    }

    /// dom0's virtio-blk disk (`/dev/vdX`) of `sectors` 512-byte sectors.
    pub fn disk_by_sectors(&self, sectors: u64) -> Result<String, HarnessError> {
        let listing = self.run_ok(
            "for d in /sys/block/vd*; do echo \"${d##*/} $(cat $d/size)\"; done",
            Duration::from_secs(30),
        )?;
        disk_with_sectors(&listing, sectors)
            .map(|name| format!("/dev/{name}"))
            .ok_or_else(|| {
                failure(
                    "dom0's disks",
                    format!("none of {sectors} sectors: {}", listing.trim()),
                )
            })
    }

    /// The `count` dom0 processes with the largest resident sets, as `KiB name` lines.
    pub fn top_resident(&self, count: usize) -> Result<Vec<String>, HarnessError> {
        let out = self.run_ok(
            &format!(
                "for d in /proc/[0-9]*; do r=$(sed -n 's/^VmRSS:[^0-9]*\\([0-9]*\\).*/\\1/p' $d/status 2>/dev/null); [ -n \"$r\" ] && echo \"$r $(cat $d/comm)\"; done | sort -rn | head -n {count}"
            ),
            Duration::from_secs(60),
        )?;
        Ok(out.lines().map(str::to_string).collect())
    }

    /// Waits until guest `name`'s console log shows `text` (polled in dom0 every 0.1 s).
    pub fn wait_console(
        &self,
        name: &str,
        text: &str,
        timeout: Duration,
    ) -> Result<(), HarnessError> {
        let tenths = timeout.as_millis() / 100;
        let log = console_log(name);
        let reply = self.run(
            &format!(
                "i=0; while ! grep -q '{text}' {log} 2>/dev/null; do i=$((i+1)); [ $i -gt {tenths} ] && exit 1; usleep 100000; done"
            ),
            timeout + Duration::from_secs(30),
        )?;
        if reply.status != 0 {
            let seen = self
                .run(&format!("tail -c 2000 {log}"), Duration::from_secs(30))
                .map(|r| r.output)
                .unwrap_or_default();
            return Err(failure(
                format!("guest {name}'s console"),
                format!(
                    "no {text:?} within {} s; console: {seen}",
                    timeout.as_secs()
                ),
            ));
        }
        Ok(())
    }

    /// dom0's memory in use, KiB: `MemTotal - MemFree - Buffers - Cached - SReclaimable`
    /// (what `free` calls used; the initramfs lives in `Cached`, so it is not counted).
    pub fn dom0_used_kib(&self) -> Result<u64, HarnessError> {
        let meminfo = self.run_ok("cat /proc/meminfo", Duration::from_secs(30))?;
        meminfo_used_kib(&meminfo)
            .ok_or_else(|| failure("dom0's /proc/meminfo", meminfo.trim().to_string()))
    }

    /// Xen's free memory, KiB (`xl info`'s `free_memory`, in MiB).
    pub fn xen_free_kib(&self) -> Result<u64, HarnessError> {
        let info = self.run_ok("xl info", Duration::from_secs(60))?;
        info.lines()
            .find_map(|l| {
                let (key, value) = l.split_once(':')?;
                (key.trim() == "free_memory").then(|| value.trim().parse::<u64>().ok())?
            })
            .map(|mib| mib * 1024)
            .ok_or_else(|| failure("xl info", "no free_memory"))
    }
}

/// The disk of `sectors` in `NAME SECTORS` lines (`/sys/block/*/size`); `None` if none or
/// more than one has that size.
pub fn disk_with_sectors(listing: &str, sectors: u64) -> Option<String> {
    let mut found = listing.lines().filter_map(|line| {
        let (name, size) = line.trim().split_once(' ')?;
        (size.trim().parse::<u64>().ok()? == sectors).then(|| name.to_string())
    });
    let name = found.next()?;
    found.next().is_none().then_some(name)
}

/// `free`'s "used" from `/proc/meminfo`, KiB.
pub fn meminfo_used_kib(meminfo: &str) -> Option<u64> {
    let field = |name: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    let total = field("MemTotal")?;
    let unused = field("MemFree")? + field("Buffers")? + field("Cached")? + field("SReclaimable")?;
    Some(total.saturating_sub(unused))
}

/// Boots the reference stack as `name` (its console log's name) in a QEMU of `memory_mib`
/// (half to dom0, as for Keel), with the same flags as Keel's Xen runs, and waits until dom0
/// is ready and its command server answers.
pub fn boot(name: &str, memory_mib: u32) -> Result<ReferenceHost, HarnessError> {
    boot_with_disk(name, memory_mib, None)
}

/// [`boot`] with `disk` (a raw image) on virtio-blk behind the IOMMU, dom0's `/dev/vda`.
pub fn boot_with_disk(
    name: &str,
    memory_mib: u32,
    disk: Option<&Path>,
) -> Result<ReferenceHost, HarnessError> {
    boot_with_disks(name, memory_mib, disk.as_slice())
}

/// [`boot`] with `disks` (raw images) on virtio-blk behind the IOMMU (the flags of Keel's SR
/// disk), dom0's `/dev/vda`, `/dev/vdb`, … in this order ([`ReferenceHost::disk_by_sectors`]
/// finds one by its size).
pub fn boot_with_disks(
    name: &str,
    memory_mib: u32,
    disks: &[&Path],
) -> Result<ReferenceHost, HarnessError> {
    let image = build()?;
    let mut machine = Machine::new(name)
        .image(&image.vmlinux)
        .xen_module(&image.initramfs)
        .memory_mib(memory_mib)
        .nic_with_api(NicModel::VirtioNet)
        .without_debug_exit()
        .append(DOM0_CMDLINE);
    for disk in disks {
        machine = machine.disk_file(disk, crate::DiskBus::VirtioBlk);
    }
    let machine = machine.boot()?;
    let ready = machine.wait_for_line(Pattern::contains(DOM0_READY), DOM0_BOOT_DEADLINE)?;
    let port = machine
        .api_port()
        .ok_or_else(|| failure("reference host", "no forwarded port"))?;
    let host = ReferenceHost {
        machine,
        port,
        ready_after: ready.since_start,
    };
    // The server starts listening a moment after the line (QEMU accepts and drops
    // connections until then).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match host.run("true", Duration::from_secs(30)) {
            Ok(_) => return Ok(host),
            Err(error) if Instant::now() > deadline => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_entries_are_read_from_readelf_output() {
        let out = "Dynamic section at offset 0x3dd0 contains 28 entries:\n  Tag        Type                         Name/Value\n 0x0000000000000001 (NEEDED)             Shared library: [libxlutil.so.4.17]\n 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]\n 0x000000000000000e (SONAME)             Library soname: [libxenlight.so.4.17]\n 0x000000000000001d (RUNPATH)            Library runpath: [/x]\n";
        assert_eq!(
            needed_libraries(out),
            vec!["libxlutil.so.4.17".to_string(), "libc.so.6".to_string()]
        );
        assert!(needed_libraries("not an ELF").is_empty());
    }

    #[test]
    fn the_closure_follows_libraries_of_libraries_once_and_adds_the_dlopened() {
        let index: HashMap<String, PathBuf> = [
            "libxenlight.so.4.17",
            "libxenctrl.so.4.17",
            "libc.so.6",
            "libgcc_s.so.1",
        ]
        .iter()
        .map(|n| (n.to_string(), PathBuf::from(format!("/pkg/{n}"))))
        .collect();
        let needed = |path: &Path| -> Result<Vec<String>, HarnessError> {
            Ok(match path.to_str().unwrap_or_default() {
                "/bin/xl" => vec!["libxenlight.so.4.17".into(), "libc.so.6".into()],
                "/pkg/libxenlight.so.4.17" => {
                    vec!["libxenctrl.so.4.17".into(), "libc.so.6".into()]
                }
                "/pkg/libxenctrl.so.4.17" => vec!["libc.so.6".into()],
                _ => vec![],
            })
        };
        let closure =
            library_closure(&[PathBuf::from("/bin/xl")], DLOPENED, &index, needed).unwrap();
        let names: Vec<&str> = closure.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "libc.so.6",
                "libgcc_s.so.1",
                "libxenctrl.so.4.17",
                "libxenlight.so.4.17"
            ]
        );
        let missing = library_closure(&[PathBuf::from("/bin/xl")], &["libnope.so"], &index, needed);
        assert!(missing.is_err());
    }

    #[test]
    fn dom0_modules_load_after_their_dependencies() {
        // The dependencies Debian's 6.1 modules record in `.modinfo`.
        let dir = std::env::temp_dir().join(format!("keel-reference-mods-{}", std::process::id()));
        let _ = fs::create_dir_all(dir.join("net/bridge"));
        let depends: &[(&str, &str)] = &[
            ("xen-evtchn", ""),
            ("xen-privcmd", ""),
            ("xenfs", "xen-privcmd"),
            ("xen-gntdev", ""),
            ("xen-gntalloc", ""),
            ("xen-blkback", ""),
            ("xen-netback", ""),
            ("llc", ""),
            ("stp", "llc"),
            ("net/bridge/bridge", "stp,llc"),
            ("loop", ""),
            ("brd", ""),
            ("virtio_pci", "virtio_pci_modern_dev,virtio_pci_legacy_dev"),
            ("virtio_pci_modern_dev", ""),
            ("virtio_pci_legacy_dev", ""),
            ("virtio_net", "net_failover"),
            ("net_failover", "failover"),
            ("failover", ""),
            ("virtio_blk", ""),
        ];
        for (path, deps) in depends {
            fs::write(
                dir.join(format!("{path}.ko")),
                format!("license=GPL\0depends={deps}\0"),
            )
            .unwrap();
        }
        let mut index = HashMap::new();
        linux::module_index(&dir, &mut index);
        let order: Vec<String> = linux::load_order(DOM0_MODULES, &index)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let at = |name: &str| order.iter().position(|n| n == name).unwrap();
        assert!(at("xen_privcmd") < at("xenfs"));
        assert!(at("llc") < at("stp") && at("stp") < at("bridge"));
        assert!(at("failover") < at("net_failover") && at("net_failover") < at("virtio_net"));
        assert!(at("virtio_pci_modern_dev") < at("virtio_pci"));
        // The toolstack's devices before the backends that use them.
        assert!(at("xen_evtchn") < at("xen_blkback") && at("xen_gntdev") < at("xen_netback"));
        assert_eq!(order.len(), depends.len());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_get_their_directories_first_and_once() {
        let file = |p: &str| CpioEntry {
            path: p.into(),
            mode: 0o100644,
            data: vec![],
        };
        let entries = with_parent_dirs(vec![
            file("usr/lib/xen-4.17/bin/xl"),
            file("usr/lib/xen-4.17/bin/xenstored"),
            file("bin/bash"),
            file("etc/xen/scripts/block"),
        ]);
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "usr/lib",
                "usr/lib/xen-4.17",
                "usr/lib/xen-4.17/bin",
                "usr/lib/xen-4.17/bin/xl",
                "usr/lib/xen-4.17/bin/xenstored",
                "bin/bash",
                "etc/xen",
                "etc/xen/scripts",
                "etc/xen/scripts/block",
            ]
        );
        assert_eq!(entries[0].mode, 0o040755);
    }

    #[test]
    fn replies_end_with_the_status_line() {
        assert_eq!(
            parse_reply("hi\nthere\nkeel-cmd: rc=3\n"),
            Some(CommandReply {
                output: "hi\nthere\n".into(),
                status: 3
            })
        );
        assert_eq!(
            parse_reply("keel-cmd: rc=0\n"),
            Some(CommandReply {
                output: String::new(),
                status: 0
            })
        );
        assert_eq!(parse_reply(""), None);
        assert_eq!(parse_reply("half an answ"), None);
        assert_eq!(parse_reply("keel-cmd: rc=x\n"), None);
    }

    #[test]
    fn guest_configs_name_the_guest_its_kernel_and_action() {
        let config = guest_config("g1", "idle", 112);
        for line in [
            "name = \"g1\"",
            "type = \"pvh\"",
            "kernel = \"/guest/vmlinuz\"",
            "ramdisk = \"/guest/initrd.cpio\"",
            "memory = 112",
        ] {
            assert!(config.lines().any(|l| l == line), "{line}: {config}");
        }
        assert!(config.contains("keel_guest=idle"));
        // Written with printf in single quotes: neither may appear.
        assert!(!config.contains('\'') && !config.contains('%'));
        assert_eq!(console_log("g1"), "/var/log/xen/console/guest-g1.log");
        let elf = guest_config_with_kernel("g2", "idle", 112, "/tmp/vmlinux");
        assert!(
            elf.lines().any(|l| l == "kernel = \"/tmp/vmlinux\""),
            "{elf}"
        );
        assert!(elf.contains("name = \"g2\""));
    }

    #[test]
    fn a_disk_is_found_by_its_size_only_when_one_has_it() {
        let listing = "vda 131072\nvdb 524288\nvdc 40960\n";
        assert_eq!(disk_with_sectors(listing, 524288), Some("vdb".into()));
        assert_eq!(disk_with_sectors(listing, 1), None);
        assert_eq!(disk_with_sectors("vda 8\nvdb 8\n", 8), None);
        assert_eq!(disk_with_sectors("vd* \n", 0), None);
    }

    #[test]
    fn used_memory_is_what_free_calls_used() {
        let meminfo = "MemTotal:         500000 kB\nMemFree:          300000 kB\nMemAvailable:     400000 kB\nBuffers:            1000 kB\nCached:           150000 kB\nSReclaimable:       4000 kB\n";
        assert_eq!(meminfo_used_kib(meminfo), Some(45_000));
        assert_eq!(meminfo_used_kib("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn the_init_starts_the_toolstack_and_the_command_server_before_ready() {
        let at = |s: &str| DOM0_INIT.find(s).unwrap_or_else(|| panic!("no {s}"));
        let xenstored = at("xenstored --pid-file");
        assert!(at("ln -sf /proc/self/fd/0 /dev/stdin") < xenstored);
        assert!(at("mount -t xenfs") < xenstored);
        assert!(xenstored < at("xen-init-dom0 ||"));
        assert!(at("xenconsoled --log=guest") < at(DOM0_READY));
        assert!(at("nc -ll -p 80 -e /bin/keel-cmd") < at(DOM0_READY));
        assert!(DOM0_INIT.contains(DOM0_ADDRESS));
    }
}
