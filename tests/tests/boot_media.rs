//! Boot media (`cargo xtask image`) boot for real, and every loader hands Keel the same
//! command line and modules.
//!
//! - The PXE bundle network-boots through QEMU's iPXE ROM and user-net TFTP: Keel alone to
//!   `keel: ready`, and Xen, which must start Keel as its PVH dom0.
//! - The GRUB ISO boots from the CD-ROM drive: Keel alone to `keel: ready` (BIOS), and Xen
//!   with Keel (BIOS and UEFI).
//! - `qemu -kernel keel.elf` takes the multiboot path; the same image without its multiboot
//!   header takes the PVH path; both report the same command line and module.
//! - The host's settings arrive intact on Keel's command line through iPXE and GRUB, argon2
//!   hash (`$…`) included.
//! - Rebuilding media from the same inputs gives the same bytes.
//!
//! The Xen tests first assert what Xen itself shows (it loaded Keel and started it as its PVH
//! dom0), then wait for Keel's own boot line and ready line (with the PXE bundle's NIC behind
//! the IOMMU, that ready includes a DHCP lease through Xen).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_image_builder::output::DEFAULT_EPOCH;
use keel_image_builder::scripts::IPXE_SCRIPT;
use keel_image_builder::{load_xen, write_iso, write_pxe, IsoTools, KernelImage, Media, Settings};
use keel_tests::kernel_lines::{ReadyLine, READY_PREFIX};
use keel_tests::prereq::{self, Tool};
use keel_tests::{image, paths, HarnessError, Machine, Pattern, Vm, BOOT_DEADLINE};

/// Network boot adds about 2 s of iPXE prompt and 3 s of DHCP to a boot; Xen under TCG
/// another few seconds. Generous, as for every boot on a loaded 2-core machine.
const MEDIA_DEADLINE: Duration = Duration::from_secs(120);

/// Xen's options for the tests: serial console, every message (so that the dom0 build is
/// visible), no scrubbing of free memory (it halves QEMU's memory use), and the credit
/// scheduler every QEMU run of Xen uses (credit2 can leave dom0 queued with both CPUs idle
/// under QEMU's TCG: docs/xen.md, "Scheduler"; seen here once, Keel silent from 0.3 s).
const TEST_XEN_ARGS: &str = "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all \
     dom0_max_vcpus=1 bootscrub=0 sched=credit";

/// Memory for a VM running Xen with a 256 MiB dom0.
const XEN_VM_MIB: u32 = 512;

/// A fresh directory for one test's media under `target/keel/test-media/`.
fn media_dir(name: &str) -> PathBuf {
    let dir = paths::keel_dir().join("test-media").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(error) = std::fs::create_dir_all(&dir) {
        panic!("creating {}: {error}", dir.display());
    }
    dir
}

/// Media from a configuration text and the test image.
fn media(config_text: &str) -> Media {
    let config = Settings::parse(config_text).and_then(Settings::resolve);
    let config = match config {
        Ok(config) => config,
        Err(error) => panic!("test configuration: {error}"),
    };
    if config.xen {
        if let Err(error) = prereq::check(&[Tool::Xen]) {
            panic!("{error}");
        }
    }
    let kernel = image::for_tests()
        .map_err(|e| e.to_string())
        .and_then(|path| KernelImage::load(&path).map_err(|e| e.to_string()));
    let kernel = match kernel {
        Ok(kernel) => kernel,
        Err(error) => panic!("{error}"),
    };
    let xen = match load_xen(&config) {
        Ok(xen) => xen,
        Err(error) => panic!("{error}"),
    };
    Media {
        config,
        kernel,
        xen,
        epoch: DEFAULT_EPOCH,
    }
}

fn pxe_bundle(name: &str, config_text: &str) -> PathBuf {
    let dir = media_dir(name);
    if let Err(error) = write_pxe(&media(config_text), &dir) {
        panic!("writing the PXE bundle: {error}");
    }
    dir
}

fn iso_tools() -> IsoTools {
    let tools = prereq::check(Tool::ISO)
        .map_err(|e| e.to_string())
        .and_then(|()| IsoTools::find().map_err(|e| e.to_string()));
    match tools {
        Ok(tools) => tools,
        Err(error) => panic!("{error}"),
    }
}

fn iso(name: &str, config_text: &str) -> PathBuf {
    let path = media_dir(name).join("keel.iso");
    if let Err(error) = write_iso(&media(config_text), &iso_tools(), &path) {
        panic!("writing the ISO: {error}");
    }
    path
}

/// A root password hash for the tests: its `$` signs must reach Keel unexpanded.
const ROOT_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzYWx0$8hK0y0n5W9aCZb8m1yJk2o3J0y4YQe0b3xJv0Qd7zYk";

/// The settings of the Keel-alone media tests, and the command line Keel must report.
fn keel_config() -> String {
    format!("keel.debug_exit = 0xf4\nkeel.log = info\nroot_password_hash = {ROOT_HASH}\n")
}
const KEEL_CMDLINE_SHOWN: &str = "keel.debug_exit=0xf4 keel.log=info keel.root_hash=(hidden)";

/// Fails when the kernel reported a bad or unknown option (a hash mangled on the way would be
/// one).
fn no_option_errors(vm: &Vm) {
    let lines = vm.serial_lines();
    let bad = lines
        .iter()
        .find(|l| l.starts_with("keel: bad option") || l.starts_with("keel: unknown option"));
    assert_eq!(bad, None, "log: {}", vm.log_path().display());
}

/// `boot: PROTOCOL[ from LOADER]; command line "…"; N module(s)`, as the kernel logs it.
#[derive(Debug, PartialEq, Eq)]
struct BootLine {
    protocol: String,
    loader: Option<String>,
    cmdline: String,
    modules: usize,
}

impl BootLine {
    fn parse(line: &str) -> Option<BootLine> {
        let rest = &line[line.find("boot: ")? + "boot: ".len()..];
        let (head, rest) = rest.split_once("; command line \"")?;
        let (cmdline, rest) = rest.rsplit_once("\"; ")?;
        let modules = rest.strip_suffix(" module(s)")?.parse().ok()?;
        let (protocol, loader) = match head.split_once(" from ") {
            Some((protocol, loader)) => (protocol, Some(loader.to_string())),
            None => (head, None),
        };
        Some(BootLine {
            protocol: protocol.to_string(),
            loader,
            cmdline: cmdline.to_string(),
            modules,
        })
    }
}

/// Waits for the kernel's boot line and parses it.
fn boot_line(vm: &Vm, deadline: Duration) -> Result<BootLine, HarnessError> {
    let line = vm.wait_for(Pattern::contains("INFO  boot: "), deadline)?;
    match BootLine::parse(&line) {
        Some(parsed) => Ok(parsed),
        None => panic!("boot line not in the documented form: {line:?}"),
    }
}

/// Waits for `keel: ready` and checks its form.
fn ready(vm: &Vm, deadline: Duration) -> Result<(), HarnessError> {
    let line = vm.wait_for(Pattern::starts_with(READY_PREFIX), deadline)?;
    assert!(
        ReadyLine::parse(&line).is_some(),
        "malformed ready line {line:?}\nlog: {}",
        vm.log_path().display()
    );
    Ok(())
}

/// Xen's lines that show it loaded Keel and started it as its PVH dom0: the loader, the
/// command line the media gave it, the dom0 build, and the hand-over (init memory freed
/// only after dom0 was built from the Keel image).
fn xen_started_keel_as_pvh_dom0(vm: &Vm, loader: &str) -> Result<(), HarnessError> {
    let bootloader = vm.wait_for(Pattern::starts_with("(XEN) Bootloader: "), MEDIA_DEADLINE)?;
    assert!(
        bootloader.contains(loader),
        "{bootloader:?} is not {loader}"
    );
    let cmdline = vm.wait_for(Pattern::starts_with("(XEN) Command line: "), MEDIA_DEADLINE)?;
    assert!(
        cmdline.ends_with(&format!("{TEST_XEN_ARGS} dom0=pvh dom0_mem=256M,max:256M")),
        "{cmdline:?}"
    );
    vm.wait_for(
        Pattern::contains("*** Building a PVH Dom0 ***"),
        MEDIA_DEADLINE,
    )?;
    vm.wait_for(Pattern::contains("Freed "), MEDIA_DEADLINE)?;
    let lines = vm.serial_lines();
    let failure = lines.iter().find(|l| {
        l.contains("Panic on CPU")
            || l.contains("Could not set up DOM0")
            || l.contains("Error creating d0")
    });
    assert_eq!(failure, None, "log: {}", vm.log_path().display());
    Ok(())
}

/// Keel, started by Xen, reports the PVH protocol and the media's command line, then ready.
fn keel_under_xen_is_ready(vm: &Vm) -> Result<(), HarnessError> {
    let boot = boot_line(vm, MEDIA_DEADLINE)?;
    assert_eq!(
        (boot.protocol.as_str(), boot.cmdline.as_str()),
        ("PVH", "keel.debug_exit=0xf4")
    );
    ready(vm, MEDIA_DEADLINE)
}

/// The settings of the Xen media tests.
fn xen_config() -> String {
    format!("xen = true\nxen_args = \"{TEST_XEN_ARGS}\"\ndom0_mem = 256M\nkeel.debug_exit = 0xf4\n")
}

#[test]
fn pxe_bundle_boots_keel_through_ipxe() -> Result<(), HarnessError> {
    let dir = pxe_bundle("pxe_keel", &keel_config());
    let vm = Machine::new("media_pxe_keel")
        .boot_network(&dir, IPXE_SCRIPT)
        .boot()?;
    let boot = boot_line(&vm, MEDIA_DEADLINE)?;
    assert_eq!(boot.protocol, "multiboot");
    assert!(
        boot.loader
            .as_deref()
            .is_some_and(|l| l.starts_with("iPXE")),
        "{boot:?}"
    );
    assert_eq!(boot.cmdline, KEEL_CMDLINE_SHOWN);
    assert_eq!(boot.modules, 0);
    ready(&vm, BOOT_DEADLINE)?;
    no_option_errors(&vm);
    Ok(())
}

/// A minimal HTTP/1.0 server for one directory on 127.0.0.1, which QEMU's user network shows
/// the guest as 10.0.2.2: "a plain HTTP server" as the README describes. It records every
/// path requested and stops when dropped.
struct FileServer {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl FileServer {
    fn start(root: &Path) -> FileServer {
        let listener = match TcpListener::bind(("127.0.0.1", 0)) {
            Ok(listener) => listener,
            Err(error) => panic!("binding the test HTTP server: {error}"),
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let (requests, stop) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let (root, seen, stopping) = (root.to_path_buf(), Arc::clone(&requests), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(stream) = stream {
                    serve(stream, &root, &seen);
                }
            }
        });
        FileServer {
            port,
            requests,
            stop,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Answers one request: the file for `GET /NAME` (no subdirectories), else 404.
fn serve(stream: TcpStream, root: &Path, seen: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(&stream);
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    // Skip the headers.
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    if let Ok(mut seen) = seen.lock() {
        seen.push(path.clone());
    }
    let name = path.trim_start_matches('/');
    let body = (!name.contains('/') && !name.is_empty())
        .then(|| std::fs::read(root.join(name)).ok())
        .flatten();
    let mut stream = &stream;
    let _ = match body {
        Some(body) => write!(
            stream,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .and_then(|()| stream.write_all(&body)),
        None => write!(
            stream,
            "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    };
}

#[test]
fn pxe_bundle_boots_keel_over_http() -> Result<(), HarnessError> {
    let dir = pxe_bundle("pxe_http", &keel_config());
    let server = FileServer::start(&dir);
    // DHCP names the script by URL; the script's relative names then resolve to HTTP too.
    let url = format!("http://10.0.2.2:{}/{IPXE_SCRIPT}", server.port);
    let empty = media_dir("pxe_http_tftp_root");
    let vm = Machine::new("media_pxe_http")
        .boot_network(&empty, &url)
        .boot()?;
    let boot = boot_line(&vm, MEDIA_DEADLINE)?;
    assert_eq!(boot.cmdline, KEEL_CMDLINE_SHOWN);
    ready(&vm, BOOT_DEADLINE)?;
    assert_eq!(server.requests(), ["/boot.ipxe", "/keel.elf"]);
    Ok(())
}

#[test]
fn pxe_bundle_boots_xen_with_keel_as_its_pvh_dom0() -> Result<(), HarnessError> {
    let dir = pxe_bundle("pxe_xen", &xen_config());
    let vm = Machine::new("media_pxe_xen")
        .xen_host()
        .memory_mib(XEN_VM_MIB)
        .boot_network(&dir, IPXE_SCRIPT)
        .boot()?;
    xen_started_keel_as_pvh_dom0(&vm, "iPXE")
}

#[test]
fn pxe_bundle_with_xen_reaches_keel_ready() -> Result<(), HarnessError> {
    let dir = pxe_bundle("pxe_xen_ready", &xen_config());
    let vm = Machine::new("media_pxe_xen_ready")
        .xen_host()
        .memory_mib(XEN_VM_MIB)
        .boot_network(&dir, IPXE_SCRIPT)
        .boot()?;
    xen_started_keel_as_pvh_dom0(&vm, "iPXE")?;
    keel_under_xen_is_ready(&vm)
}

#[test]
fn iso_boots_keel_from_bios() -> Result<(), HarnessError> {
    let iso = iso("iso_keel", &keel_config());
    let vm = Machine::new("media_iso_keel").boot_cdrom(&iso).boot()?;
    let boot = boot_line(&vm, MEDIA_DEADLINE)?;
    assert_eq!(boot.protocol, "multiboot");
    assert!(
        boot.loader
            .as_deref()
            .is_some_and(|l| l.starts_with("GRUB 2")),
        "{boot:?}"
    );
    assert_eq!(boot.cmdline, KEEL_CMDLINE_SHOWN);
    assert_eq!(boot.modules, 0);
    ready(&vm, BOOT_DEADLINE)?;
    no_option_errors(&vm);
    Ok(())
}

#[test]
fn iso_boots_xen_with_keel_from_bios() -> Result<(), HarnessError> {
    let iso = iso("iso_xen", &xen_config());
    let vm = Machine::new("media_iso_xen")
        .xen_host()
        .memory_mib(XEN_VM_MIB)
        .boot_cdrom(&iso)
        .boot()?;
    xen_started_keel_as_pvh_dom0(&vm, "GRUB 2")
}

#[test]
fn iso_boots_xen_with_keel_from_uefi() -> Result<(), HarnessError> {
    prereq::check(&[Tool::Ovmf])?;
    let iso = iso("iso_xen_uefi", &xen_config());
    let firmware = format!(
        "if=pflash,format=raw,readonly=on,file={}",
        Tool::Ovmf.probe()
    );
    let vm = Machine::new("media_iso_xen_uefi")
        .xen_host()
        .memory_mib(XEN_VM_MIB)
        .boot_cdrom(&iso)
        .arg("-drive")
        .arg(firmware)
        .boot()?;
    // Only an EFI boot makes Xen print the firmware's memory map.
    vm.wait_for(Pattern::starts_with("(XEN) EFI RAM map:"), MEDIA_DEADLINE)?;
    xen_started_keel_as_pvh_dom0(&vm, "GRUB 2")
}

#[test]
fn iso_with_xen_reaches_keel_ready() -> Result<(), HarnessError> {
    let iso = iso("iso_xen_ready", &xen_config());
    let vm = Machine::new("media_iso_xen_ready")
        .xen_host()
        .memory_mib(XEN_VM_MIB)
        .boot_cdrom(&iso)
        .boot()?;
    xen_started_keel_as_pvh_dom0(&vm, "GRUB 2")?;
    keel_under_xen_is_ready(&vm)
}

#[test]
fn kernel_boots_via_multiboot_and_via_pvh_with_the_same_command_line() -> Result<(), HarnessError> {
    let dir = media_dir("protocols");
    let kernel = media("").kernel;
    // A module for `-initrd`: both protocols must hand it over.
    let module = dir.join("module.bin");
    let written = std::fs::write(&module, [0x5a; 3000])
        .and_then(|()| std::fs::write(dir.join("keel.elf"), kernel.boot_bytes()))
        // With both headers QEMU prefers multiboot; without the multiboot header it falls
        // back to PVH, which is how Xen starts the image.
        .and_then(|()| std::fs::write(dir.join("keel-pvh-only.elf"), kernel.pvh_only_bytes()));
    if let Err(error) = written {
        panic!("{error}");
    }
    let (multiboot_image, pvh_only) = (dir.join("keel.elf"), dir.join("keel-pvh-only.elf"));
    let mut lines = Vec::new();
    for (name, image, protocol) in [
        ("media_protocol_multiboot", &multiboot_image, "multiboot"),
        ("media_protocol_pvh", &pvh_only, "PVH"),
    ] {
        let vm = Machine::new(name)
            .image(image)
            .append("keel.log=info")
            .arg("-initrd")
            .arg(&module)
            .boot()?;
        let boot = boot_line(&vm, BOOT_DEADLINE)?;
        assert_eq!(boot.protocol, protocol, "log: {}", vm.log_path().display());
        // QEMU's multiboot names the module by its path; its PVH start info gives no name.
        let name = if protocol == "multiboot" {
            "module.bin"
        } else {
            ""
        };
        vm.wait_for(
            Pattern::contains(format!("boot: module 0 '{name}' 3000 bytes at ")),
            BOOT_DEADLINE,
        )?;
        vm.wait_for(
            Pattern::contains(format!(
                "keel {} booting via {protocol}",
                env!("CARGO_PKG_VERSION")
            )),
            BOOT_DEADLINE,
        )?;
        ready(&vm, BOOT_DEADLINE)?;
        lines.push(boot);
    }
    // The same command line (QEMU's multiboot adds the image path first; Keel drops it) and
    // the same number of modules, whichever protocol.
    assert_eq!(lines[0].cmdline, "keel.debug_exit=0xf4 keel.log=info");
    assert_eq!(lines[0].cmdline, lines[1].cmdline);
    assert_eq!((lines[0].modules, lines[1].modules), (1, 1));
    assert_eq!(lines[0].loader.as_deref(), Some("qemu"));
    assert_eq!(lines[1].loader, None);
    Ok(())
}

/// Every file of a directory, by name.
fn directory_contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path()).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn rebuilding_media_from_the_same_inputs_gives_the_same_bytes() {
    let config = format!("{}ip = 192.0.2.10/24\ngw = 192.0.2.1\n", xen_config());
    let media = media(&config);
    let tools = iso_tools();
    let dir = media_dir("reproducible");
    let (first, second) = (dir.join("first.iso"), dir.join("second.iso"));
    for path in [&first, &second] {
        if let Err(error) = write_iso(&media, &tools, path) {
            panic!("{error}");
        }
        // Seconds pass between builds on purpose: no wall-clock time may leak in.
        std::thread::sleep(Duration::from_millis(1100));
    }
    let (a, b) = (std::fs::read(&first), std::fs::read(&second));
    assert!(a.as_ref().is_ok_and(|a| !a.is_empty()));
    assert!(
        a.as_ref().ok() == b.as_ref().ok(),
        "two ISOs from the same inputs differ"
    );

    // Another epoch is another image: the timestamps really come from the epoch.
    let other_epoch = Media {
        epoch: DEFAULT_EPOCH + 86_400,
        ..media.clone()
    };
    let third = dir.join("third.iso");
    if let Err(error) = write_iso(&other_epoch, &tools, &third) {
        panic!("{error}");
    }
    assert!(std::fs::read(&third).ok() != a.ok());

    let (pxe_a, pxe_b) = (dir.join("pxe-a"), dir.join("pxe-b"));
    for pxe in [&pxe_a, &pxe_b] {
        if let Err(error) = write_pxe(&media, pxe) {
            panic!("{error}");
        }
    }
    let contents = directory_contents(&pxe_a);
    assert_eq!(
        contents.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["boot.ipxe", "keel.elf", "xen"]
    );
    assert!(
        contents == directory_contents(&pxe_b),
        "two PXE bundles differ"
    );
}
