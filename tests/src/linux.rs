//! The Linux baseline that benchmarks compare Keel with: Debian's 6.1 kernel and a busybox
//! initramfs whose `/init` the caller writes, booted by the same QEMU flags.
//!
//! Packages are fetched with `apt-get download` and unpacked under `target/keel/linux/` with
//! `dpkg-deb -x`, so nothing is installed on the host. The initramfs is a `newc` cpio archive
//! written here (no `cpio` tool needed).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache_lock::with_cache_lock;
use crate::error::HarnessError;
use crate::paths;

/// Console line the baseline's `/init` prints when its service is up.
pub const LINUX_READY: &str = "linux-baseline: ready";

fn failure(what: impl Into<String>, message: impl Into<String>) -> HarnessError {
    HarnessError::Io {
        what: what.into(),
        error: std::io::Error::other(message.into()),
    }
}

fn linux_dir() -> PathBuf {
    paths::keel_dir().join("linux")
}

fn run(what: &str, command: &mut Command) -> Result<String, HarnessError> {
    let out = command.output().map_err(|error| HarnessError::Io {
        what: what.into(),
        error,
    })?;
    if !out.status.success() {
        return Err(failure(
            what,
            format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first file in `dir` whose name satisfies `wanted`.
fn find_file(dir: &Path, wanted: impl Fn(&str) -> bool) -> Result<Option<PathBuf>, HarnessError> {
    let entries = fs::read_dir(dir).map_err(|error| HarnessError::Io {
        what: format!("listing {}", dir.display()),
        error,
    })?;
    Ok(entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&wanted)))
}

/// Downloads and unpacks a Debian package (once); returns the unpack directory.
pub fn unpack(package: &str) -> Result<PathBuf, HarnessError> {
    with_cache_lock(|| unpack_locked(package))
}

fn unpack_locked(package: &str) -> Result<PathBuf, HarnessError> {
    let dir = linux_dir().join(package);
    if dir.join(".unpacked").exists() {
        return Ok(dir);
    }
    let download = linux_dir().join("debs");
    fs::create_dir_all(&download).map_err(|error| HarnessError::Io {
        what: format!("creating {}", download.display()),
        error,
    })?;
    let mut attempt = run(
        &format!("apt-get download {package}"),
        Command::new("apt-get")
            .arg("download")
            .arg(package)
            .current_dir(&download),
    );
    if attempt.is_err() {
        // The package lists may be missing on a fresh machine.
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        attempt = run(
            &format!("apt-get download {package}"),
            Command::new("apt-get")
                .arg("download")
                .arg(package)
                .current_dir(&download),
        );
    }
    attempt?;
    let prefix = format!("{package}_");
    let deb = find_file(&download, |n| n.starts_with(&prefix) && n.ends_with(".deb"))?
        .ok_or_else(|| failure(format!("apt-get download {package}"), "no .deb appeared"))?;
    let _ = fs::remove_dir_all(&dir);
    run(
        &format!("dpkg-deb -x {}", deb.display()),
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir),
    )?;
    fs::write(dir.join(".unpacked"), b"").map_err(|error| HarnessError::Io {
        what: "marking unpack".into(),
        error,
    })?;
    Ok(dir)
}

/// The kernel package every guest, baseline and benchmark uses: pinned, so that a new Debian
/// kernel cannot change what the tests boot between two runs.
pub const PINNED_KERNEL_PACKAGE: &str = "linux-image-6.1.0-57-amd64";

/// [`PINNED_KERNEL_PACKAGE`] while Debian's archive still has it; otherwise (Debian drops old
/// kernel ABIs from the archive in time) the one `linux-image-amd64` points at, said once.
fn kernel_package() -> Result<String, HarnessError> {
    if package_known(PINNED_KERNEL_PACKAGE) {
        return Ok(PINNED_KERNEL_PACKAGE.to_string());
    }
    let current = current_kernel_package()?;
    eprintln!(
        "keel-tests: {PINNED_KERNEL_PACKAGE} is no longer in Debian's archive; using {current} (update the pin in tests/src/linux.rs)"
    );
    Ok(current)
}

/// True when apt knows `package` (after one `apt-get update` if the lists look empty).
fn package_known(package: &str) -> bool {
    let known = || {
        Command::new("apt-cache")
            .args(["show", "--no-all-versions", package])
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    };
    if linux_dir().join(package).join(".unpacked").exists() || known() {
        return true;
    }
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    known()
}

/// The versioned kernel package `linux-image-amd64` currently points at.
fn current_kernel_package() -> Result<String, HarnessError> {
    let mut deps = run(
        "apt-cache depends linux-image-amd64",
        Command::new("apt-cache").args(["depends", "linux-image-amd64"]),
    );
    if deps
        .as_ref()
        .map_or(true, |d| !d.contains("Depends: linux-image-"))
    {
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        deps = run(
            "apt-cache depends linux-image-amd64",
            Command::new("apt-cache").args(["depends", "linux-image-amd64"]),
        );
    }
    deps?
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Depends: ")
                .filter(|p| p.starts_with("linux-image-6."))
                .map(str::to_string)
        })
        .ok_or_else(|| {
            failure(
                "finding Debian's kernel package",
                "linux-image-amd64 names no linux-image-6.* package",
            )
        })
}

/// Debian's kernel as a bzImage (QEMU boots it directly).
pub fn kernel() -> Result<PathBuf, HarnessError> {
    let dir = unpack(&kernel_package()?)?;
    let boot = dir.join("boot");
    find_file(&boot, |n| n.starts_with("vmlinuz-"))?
        .ok_or_else(|| failure("Debian kernel", format!("no vmlinuz in {}", boot.display())))
}

/// The uncompressed ELF `vmlinux` inside Debian's bzImage (its payload is xz), for loaders
/// that want an ELF, such as Xen's PVH dom0 builder.
pub fn vmlinux() -> Result<PathBuf, HarnessError> {
    let out = linux_dir().join("vmlinux");
    if out.exists() {
        return Ok(out);
    }
    let bz = fs::read(kernel()?).map_err(|error| HarnessError::Io {
        what: "reading vmlinuz".into(),
        error,
    })?;
    let magic = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
    let start = bz
        .windows(magic.len())
        .position(|w| w == magic)
        .ok_or_else(|| failure("extracting vmlinux", "no xz payload in the bzImage"))?;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|error| HarnessError::Io {
            what: "running xz (package xz-utils)".into(),
            error,
        })?;
    let payload = bz[start..].to_vec();
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| failure("xz", "no stdin"))?;
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        // xz stops reading at the end of the stream; the trailing bytes are not an error.
        let _ = stdin.write_all(&payload);
    });
    let output = child.wait_with_output().map_err(|error| HarnessError::Io {
        what: "xz".into(),
        error,
    })?;
    let _ = writer.join();
    if !output.stdout.starts_with(b"\x7fELF") {
        return Err(failure(
            "extracting vmlinux",
            "the xz payload is not an ELF image",
        ));
    }
    fs::write(&out, &output.stdout).map_err(|error| HarnessError::Io {
        what: format!("writing {}", out.display()),
        error,
    })?;
    Ok(out)
}

/// The statically linked busybox binary.
pub fn busybox() -> Result<PathBuf, HarnessError> {
    let path = unpack("busybox-static")?.join("bin/busybox");
    if path.exists() {
        Ok(path)
    } else {
        Err(failure("busybox-static", format!("no {}", path.display())))
    }
}

/// One file in a cpio archive.
pub struct CpioEntry {
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// A `newc` cpio archive (what the kernel unpacks as an initramfs). Directories are entries
/// with mode `0o040755` and no data; the caller lists parents before children.
pub fn cpio_newc(entries: &[CpioEntry]) -> Vec<u8> {
    fn push_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        push_entry(
            &mut out,
            i as u32 + 1,
            e.path.trim_start_matches('/'),
            e.mode,
            &e.data,
        );
    }
    push_entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

/// Debian builds virtio and NVMe as modules. These are the ones the baselines need; their
/// dependencies are found from each module's `depends=` and loaded first.
pub const NET_MODULES: &[&str] = &["virtio_pci", "virtio_net"];

/// Disk drivers (loaded after [`NET_MODULES`] when both are given).
pub const DISK_MODULES: &[&str] = &["virtio_blk", "nvme"];

/// Every `.ko` under `dir`, by module name (`-` and `_` are the same to the kernel).
pub fn module_index(dir: &Path, index: &mut std::collections::HashMap<String, PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        if path.is_dir() {
            module_index(&path, index);
        } else if let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
        {
            index.insert(name.replace('-', "_"), path);
        }
    }
}

/// The `depends=` list recorded in a module's modinfo section.
fn module_depends(ko: &[u8]) -> Vec<String> {
    ko.split(|&b| b == 0)
        .find_map(|field| field.strip_prefix(b"depends="))
        .map(|deps| {
            String::from_utf8_lossy(deps)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// `wanted` and everything they depend on, dependencies first.
pub fn load_order(
    wanted: &[&str],
    index: &std::collections::HashMap<String, PathBuf>,
) -> Result<Vec<(String, Vec<u8>)>, HarnessError> {
    fn visit(
        name: &str,
        index: &std::collections::HashMap<String, PathBuf>,
        done: &mut Vec<(String, Vec<u8>)>,
        depth: usize,
    ) -> Result<(), HarnessError> {
        if done.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        if depth > 32 {
            return Err(failure(
                "kernel modules",
                format!("dependency loop at {name}"),
            ));
        }
        let path = index
            .get(name)
            .ok_or_else(|| failure("kernel modules", format!("no module {name}")))?;
        let data = fs::read(path).map_err(|error| HarnessError::Io {
            what: format!("reading {}", path.display()),
            error,
        })?;
        for dep in module_depends(&data) {
            visit(&dep, index, done, depth + 1)?;
        }
        done.push((name.to_string(), data));
        Ok(())
    }
    let mut done = Vec::new();
    for w in wanted {
        visit(&w.replace('-', "_"), index, &mut done, 0)?;
    }
    Ok(done)
}

/// Lines for an `/init` that load the modules packed by [`initramfs`], in order.
pub const LOAD_MODULES: &str =
    "for m in $(cat /lib/modules/order); do insmod /lib/modules/$m; done\n";

/// An initramfs with busybox, the given kernel modules (loaded by [`LOAD_MODULES`]) and
/// `init_script` as `/init`, written to `name` under the baseline directory.
pub fn initramfs(name: &str, init_script: &str, modules: &[&str]) -> Result<PathBuf, HarnessError> {
    initramfs_with(name, init_script, modules, Vec::new())
}

/// [`initramfs`] with `extra` files as well (their parent directories among the usual ones:
/// `bin`, `sbin`, `usr/bin`, `etc`, `lib`…).
pub fn initramfs_with(
    name: &str,
    init_script: &str,
    modules: &[&str],
    extra: Vec<CpioEntry>,
) -> Result<PathBuf, HarnessError> {
    with_cache_lock(|| initramfs_locked(name, init_script, modules, extra))
}

fn initramfs_locked(
    name: &str,
    init_script: &str,
    modules: &[&str],
    extra: Vec<CpioEntry>,
) -> Result<PathBuf, HarnessError> {
    let busybox = fs::read(busybox()?).map_err(|error| HarnessError::Io {
        what: "reading busybox".into(),
        error,
    })?;
    let dir = |p: &str| CpioEntry {
        path: p.into(),
        mode: 0o040755,
        data: vec![],
    };
    let mut entries = vec![
        dir("bin"),
        dir("sbin"),
        dir("usr"),
        dir("usr/bin"),
        dir("usr/sbin"),
        dir("dev"),
        dir("proc"),
        dir("sys"),
        dir("etc"),
        dir("www"),
        dir("lib"),
        dir("lib/modules"),
        CpioEntry {
            path: "bin/busybox".into(),
            mode: 0o100755,
            data: busybox,
        },
        CpioEntry {
            path: "init".into(),
            mode: 0o100755,
            data: init_script.as_bytes().to_vec(),
        },
    ];
    entries.extend(extra);
    if !modules.is_empty() {
        let kernel_dir = unpack(&kernel_package()?)?.join("lib/modules");
        let version = fs::read_dir(&kernel_dir)
            .map_err(|error| HarnessError::Io {
                what: format!("listing {}", kernel_dir.display()),
                error,
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .next()
            .ok_or_else(|| {
                failure(
                    "kernel modules",
                    format!("nothing in {}", kernel_dir.display()),
                )
            })?;
        let mut index = std::collections::HashMap::new();
        module_index(&version.join("kernel"), &mut index);
        let mut order = String::new();
        for (name, data) in load_order(modules, &index)? {
            let file = format!("{name}.ko");
            entries.push(CpioEntry {
                path: format!("lib/modules/{file}"),
                mode: 0o100644,
                data,
            });
            order.push_str(&file);
            order.push('\n');
        }
        entries.push(CpioEntry {
            path: "lib/modules/order".into(),
            mode: 0o100644,
            data: order.into_bytes(),
        });
    }
    let out = linux_dir().join(name);
    fs::create_dir_all(linux_dir()).map_err(|error| HarnessError::Io {
        what: "creating the baseline dir".into(),
        error,
    })?;
    fs::write(&out, cpio_newc(&entries)).map_err(|error| HarnessError::Io {
        what: format!("writing {}", out.display()),
        error,
    })?;
    Ok(out)
}

/// Debian's `mke2fs` (package e2fsprogs) as `/sbin/mkfs.ext4`, with the libraries it loads
/// and the dynamic loader, for [`initramfs_with`]: busybox's `mke2fs` makes ext2 only (no
/// journal, no extents), and guests on Keel's disks should get the ext4 that a cloud image
/// has. Without `/etc/mke2fs.conf`, e2fsprogs uses its built-in defaults for ext4
/// (`has_journal`, `extent`, `flex_bg`, `metadata_csum`, `64bit`…).
pub fn mkfs_ext4() -> Result<Vec<CpioEntry>, HarnessError> {
    with_cache_lock(mkfs_ext4_locked)
}

fn mkfs_ext4_locked() -> Result<Vec<CpioEntry>, HarnessError> {
    use crate::reference::{
        library_closure, library_index, readelf_needed, with_parent_dirs, INTERPRETER, LIB_DIR,
    };
    const PACKAGES: &[&str] = &[
        "e2fsprogs",
        "libext2fs2",
        "libcom-err2",
        "libblkid1",
        "libuuid1",
        "libc6",
    ];
    let roots = PACKAGES
        .iter()
        .map(|p| unpack(p))
        .collect::<Result<Vec<_>, _>>()?;
    let binary = roots[0].join("sbin/mke2fs");
    let read = |path: &Path| {
        fs::read(path).map_err(|error| HarnessError::Io {
            what: format!("reading {}", path.display()),
            error,
        })
    };
    let mut files = vec![CpioEntry {
        path: "sbin/mkfs.ext4".into(),
        mode: 0o100755,
        data: read(&binary)?,
    }];
    let index = library_index(&roots);
    for (name, source) in library_closure(
        std::slice::from_ref(&binary),
        &[INTERPRETER],
        &index,
        readelf_needed,
    )? {
        let data = read(&source)?;
        if name == INTERPRETER {
            files.push(CpioEntry {
                path: format!("lib64/{name}"),
                mode: 0o100755,
                data: data.clone(),
            });
        }
        files.push(CpioEntry {
            path: format!("{LIB_DIR}/{name}"),
            mode: 0o100755,
            data,
        });
    }
    Ok(with_parent_dirs(files))
}

/// `/init` for the HTTP baseline: DHCP on eth0, busybox httpd on port 80 serving a small
/// file, then [`LINUX_READY`] on the console.
pub const HTTP_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m; done
ip link set lo up
ip link set eth0 up
cat > /bin/dhcp-script <<'EOS'
#!/bin/sh
[ "$1" = bound ] || exit 0
ip addr add "$ip/${mask:-24}" dev "$interface"
[ -n "$router" ] && ip route add default via "$router"
exit 0
EOS
chmod +x /bin/dhcp-script
udhcpc -q -f -n -i eth0 -s /bin/dhcp-script >/dev/null 2>&1
echo ok > /www/index.html
httpd -p 80 -h /www
echo "linux-baseline: ready"
exec sh -c 'while true; do sleep 3600; done'
"#;

/// Path of a file under the baseline directory (for callers writing their own artifacts).
pub fn artifact(name: &str) -> PathBuf {
    linux_dir().join(name)
}

/// True when `path` looks like an ELF image.
pub fn is_elf(path: &Path) -> bool {
    fs::read(path)
        .map(|b| b.starts_with(b"\x7fELF"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_depends_are_read_and_normalised() {
        let ko = b"\x7fELF...\0license=GPL\0depends=virtio_ring,nvme-core\0vermagic=6.1\0";
        assert_eq!(
            module_depends(ko),
            vec!["virtio_ring".to_string(), "nvme_core".to_string()]
        );
        assert!(module_depends(b"depends=\0").is_empty());
    }

    #[test]
    fn load_order_puts_dependencies_first_and_once() {
        let dir = std::env::temp_dir().join(format!("keel-modules-{}", std::process::id()));
        let _ = fs::create_dir_all(dir.join("a/b"));
        fs::write(dir.join("a/virtio_ring.ko"), b"depends=\0").unwrap();
        fs::write(dir.join("a/b/virtio.ko"), b"depends=virtio_ring\0").unwrap();
        fs::write(dir.join("a/virtio_net.ko"), b"depends=virtio_ring,virtio\0").unwrap();
        let mut index = std::collections::HashMap::new();
        module_index(&dir, &mut index);
        let order: Vec<String> = load_order(&["virtio_net", "virtio"], &index)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(order, vec!["virtio_ring", "virtio", "virtio_net"]);
        assert!(load_order(&["missing"], &index).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn newc_archive_has_aligned_headers_and_a_trailer() {
        let a = cpio_newc(&[
            CpioEntry {
                path: "bin".into(),
                mode: 0o040755,
                data: vec![],
            },
            CpioEntry {
                path: "/init".into(),
                mode: 0o100755,
                data: b"#!/bin/sh\n".to_vec(),
            },
        ]);
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("init\0"), "leading slash is dropped");
        assert!(text.contains("TRAILER!!!"));
        // Second header starts on a 4-byte boundary right after the first entry.
        let second = a
            .windows(6)
            .enumerate()
            .filter(|(_, w)| *w == b"070701")
            .map(|(i, _)| i)
            .nth(1)
            .unwrap();
        assert_eq!(second % 4, 0);
        // filesize field of the init entry: 10 bytes.
        let size_field = &a[second + 6 + 6 * 8..second + 6 + 7 * 8];
        assert_eq!(size_field, b"0000000a");
    }
}
