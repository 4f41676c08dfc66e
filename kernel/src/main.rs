//! Keel's kernel: boot entries, memory, interrupts and timers, PCI access, the executor, and
//! the wiring of drivers and services. Protocol and policy logic lives in the host-tested
//! crates (`keel-cmdline`, `keel-memory`, `keel-executor`, `keel-pci`, `keel-acpi`, …); this
//! crate only connects them to the machine.
//!
//! The crate is only meaningful for `x86_64-unknown-none`; on the host it builds to an empty
//! program so that workspace-wide `cargo clippy`/`cargo build` keep working.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("keel-kernel only runs as the Keel image: build it with `cargo xtask build`");
}

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod acpi;
#[cfg(target_os = "none")]
mod api;
#[cfg(target_os = "none")]
mod apic;
#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
mod console;
#[cfg(target_os = "none")]
mod dma;
#[cfg(target_os = "none")]
mod entropy;
#[cfg(target_os = "none")]
mod memory;
#[cfg(target_os = "none")]
mod metering;
#[cfg(target_os = "none")]
mod mmio;
#[cfg(target_os = "none")]
mod net;
#[cfg(target_os = "none")]
mod pci;
#[cfg(target_os = "none")]
mod platform;
#[cfg(target_os = "none")]
mod power;
#[cfg(target_os = "none")]
mod rtc;
#[cfg(target_os = "none")]
mod storage;
#[cfg(target_os = "none")]
mod time;

#[cfg(target_os = "none")]
pub use kernel::kmain;

#[cfg(target_os = "none")]
mod kernel {
    use core::sync::atomic::{AtomicU8, Ordering};

    use alloc::vec::Vec;
    use keel_cmdline::{Config, PanicAction, TestAction};
    use keel_executor::{Executor, Idle, Signal};
    use keel_pci::Function;

    use crate::boot::{self, BootInfo, RangeList};
    use crate::{acpi, api, apic, arch, console, memory, net, pci, platform, power, rtc, time};

    const VERSION: &str = env!("CARGO_PKG_VERSION");

    /// What a panic does after printing, from `keel.panic` (0 = reboot, 1 = halt).
    static PANIC_ACTION: AtomicU8 = AtomicU8::new(0);

    /// Longest idle halt. A wake-up whose interrupt never arrived (QEMU's nested SVM has
    /// lost interrupts, docs/xen.md "Emulator faults") then costs at most this long instead
    /// of the host: under Xen the timer's event comes through the same upcall, whose scan
    /// finds every port still pending. One timer event a second when idle.
    const MAX_IDLE_NS: u64 = 1_000_000_000;

    pub fn kmain(info: BootInfo) -> ! {
        arch::gdt::init();
        arch::idt::init();

        for_each_option_error(&info);
        let config = keel_cmdline::parse(info.cmdline, |_| {});
        console::set_level(config.log);
        PANIC_ACTION.store(
            matches!(config.panic, PanicAction::Halt) as u8,
            Ordering::Relaxed,
        );
        power::set_debug_exit(config.debug_exit);

        // Under Xen the clock is the pvclock, set up with the Xen platform once memory is.
        if !platform::is_xen() {
            match time::calibrate_with_pit() {
                Ok(hz) => log::info!(
                    "keel {VERSION} booting via {}; TSC {} MHz",
                    info.protocol,
                    hz / 1_000_000
                ),
                Err(e) => panic!(
                    "cannot calibrate the TSC: {e}. Keel needs PIT channel 2 on a bare machine"
                ),
            }
        }

        let mut in_use = RangeList::new();
        in_use.push(boot::image_range());
        for r in info.in_use.as_slice() {
            in_use.push(*r);
        }
        // SAFETY: called once, interrupts off, with every range the boot still uses.
        let mem = match unsafe { memory::init(info.ram.as_slice(), in_use.as_slice()) } {
            Ok(mem) => mem,
            Err(e) => panic!("memory: {e}"),
        };
        log::info!(
            "memory: {} MiB RAM, heap {} MiB, {} MiB free for DMA",
            mem.ram_bytes >> 20,
            mem.heap_bytes >> 20,
            mem.free_frame_bytes >> 20
        );
        if platform::is_xen() {
            platform::xen::init(VERSION, info.protocol);
        }
        match rtc::init() {
            Some(t) => log::info!(
                "rtc: {:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                t.year,
                t.month,
                t.day,
                t.hour,
                t.minute,
                t.second
            ),
            None => log::warn!("rtc: no usable real-time clock; wall clock starts at 1970"),
        }

        let platform = match acpi::discover(info.rsdp) {
            Ok(p) => p,
            Err(e) => panic!("ACPI tables unusable: {e}"),
        };
        log::info!(
            "acpi: {} CPU(s), local APIC {:#x}, ECAM {}, power-off {}",
            platform.cpus,
            platform.lapic_base,
            platform.ecam.map_or("none".into(), |e| alloc::format!(
                "{:#x} buses {}-{}",
                e.base,
                e.bus_start,
                e.bus_end
            )),
            if platform.power.can_power_off() {
                "ACPI S5"
            } else {
                "unavailable"
            }
        );
        power::set_control(platform.power);

        match apic::init(platform.lapic_base) {
            Ok(timer) => log::info!("apic: {timer}"),
            Err(e) => panic!("local APIC unusable: {e}"),
        }
        match apic::check_idle_halt_resumes() {
            Ok(ns) => log::debug!(
                "apic: an interrupt taken at the idle hlt ends the halt ({} us)",
                ns / 1_000
            ),
            Err(apic::HaltNotResumed(ns)) => panic!(
                "apic: an interrupt taken at the idle hlt left the CPU halted for {} ms \
                 (the idle loop would sleep through its wake-ups)",
                ns / 1_000_000
            ),
        }

        let pci = pci::init(platform.ecam);
        let functions = keel_pci::enumerate(pci);
        log::info!("pci: {} functions via {}", functions.len(), pci.mechanism());
        for f in &functions {
            console::write_line(format_args!("{f}"));
        }

        let mut machine = api::MachineFacts {
            cpus: platform.cpus as u32,
            tsc_hz: time::tsc_hz(),
            memory_total_bytes: mem.ram_bytes,
            memory_free_bytes: mem.free_frame_bytes,
            xen_version: alloc::string::String::new(),
        };
        // Under Xen the host is the whole machine, not dom0: take Xen's figures.
        if let Some(xen) = platform::host_facts() {
            machine.cpus = xen.cpus;
            machine.memory_total_bytes = xen.total_memory_bytes;
            machine.memory_free_bytes = xen.free_memory_bytes;
            machine.xen_version = xen.xen_version;
        }
        run(config, pci, functions, api::host_facts(&machine))
    }

    /// Reports every bad `keel.*` word, one line each, before anything else is configured.
    fn for_each_option_error(info: &BootInfo) {
        if let Some(at) = info.cmdline_truncated_at {
            console::write_line(format_args!(
                "keel: command line is not UTF-8 at byte {at}; ignoring everything from there"
            ));
        }
        keel_cmdline::parse(info.cmdline, |e| console::write_line(format_args!("{e}")));
    }

    /// Runs the executor forever: services as tasks, the CPU halted when nothing is ready.
    fn run(
        config: Config<'static>,
        pci: &'static pci::PciConfig,
        functions: Vec<Function>,
        facts: keel_xenapi::HostFacts,
    ) -> ! {
        let mut executor = Executor::new(time::KernelClock);
        let handle = executor.handle();
        // Each service that is configured returns the signal it sets once it is up.
        // Under Xen, the toolstack that runs guests (the XenAPI drives it).
        // Storage first: it finishes before the API starts, which is handed the SRs.
        let storage = crate::storage::start(pci, &functions, &config);
        let repositories = storage.as_ref().map(|s| s.repositories.clone());
        let guests = if platform::is_xen() {
            platform::xen::guests::start(&handle, repositories.clone())
        } else {
            None
        };
        let metering = crate::metering::start(&handle, repositories.clone(), guests.as_ref());
        let bench_disks = storage.map(|s| s.disks).unwrap_or_default();
        let services: Vec<Signal> = [
            net::start(
                &handle,
                pci,
                &functions,
                &config,
                facts,
                guests,
                repositories,
                metering,
            ),
            platform::start(&handle),
        ]
        .into_iter()
        .flatten()
        .collect();
        handle.spawn(async move {
            for service in &services {
                service.wait().await;
            }
            let boot_us = time::since_entry_ns() / 1_000;
            console::write_line(format_args!(
                "keel: ready (keel {VERSION}, boot {}.{} ms)",
                boot_us / 1_000,
                boot_us % 1_000 / 100
            ));
            crate::storage::hostdb::host_ready();
            match config.test {
                TestAction::None => {}
                TestAction::Panic => panic!("test panic requested by keel.test=panic"),
                TestAction::Poweroff => {
                    console::write_line(format_args!("keel: powering off"));
                    power::power_off();
                }
                TestAction::Fault => {
                    // SAFETY: deliberately faulting: page 0 is never mapped.
                    let value = unsafe { core::ptr::read_volatile(core::ptr::null::<u64>()) };
                    log::error!("read {value:#x} from address 0: page 0 is mapped");
                }
                TestAction::StackOverflow => {
                    let depth = recurse(0);
                    log::error!("recursed {depth} frames deep without a fault: no stack guard");
                }
                TestAction::BenchStorage => {
                    crate::storage::bench(&bench_disks);
                    console::write_line(format_args!("keel: powering off"));
                    power::power_off();
                }
            }
        });
        loop {
            let idle = match executor.step() {
                Ok(idle) => idle,
                Err(e) => {
                    log::error!("executor: {e:?}; new tasks wait for a free slot");
                    Idle::Forever
                }
            };
            if idle == Idle::Busy {
                continue;
            }
            x86_64::instructions::interrupts::disable();
            if executor.has_ready() {
                x86_64::instructions::interrupts::enable();
                continue;
            }
            let sleep_ns = match idle {
                Idle::Until(deadline) => {
                    let now = time::since_entry_ns();
                    if deadline <= now {
                        x86_64::instructions::interrupts::enable();
                        continue;
                    }
                    (deadline - now).min(MAX_IDLE_NS)
                }
                Idle::Busy | Idle::Forever => MAX_IDLE_NS,
            };
            apic::arm_timer(sleep_ns);
            arch::enable_interrupts_and_halt();
        }
    }

    /// Recurses without bound (each frame keeps 1 KiB live), for `keel.test=stack-overflow`.
    #[inline(never)]
    fn recurse(depth: u64) -> u64 {
        let frame = core::hint::black_box([depth as u8; 1024]);
        if depth > 1 << 20 {
            return depth;
        }
        recurse(depth + 1) + u64::from(core::hint::black_box(frame)[0])
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo) -> ! {
        x86_64::instructions::interrupts::disable();
        match info.location() {
            Some(l) => console::emergency_write(format_args!(
                "keel: PANIC at {}:{}:{}: {}\n",
                l.file(),
                l.line(),
                l.column(),
                info.message()
            )),
            None => console::emergency_write(format_args!("keel: PANIC: {}\n", info.message())),
        }
        let action = if PANIC_ACTION.load(Ordering::Relaxed) == 1 {
            PanicAction::Halt
        } else {
            PanicAction::Reboot
        };
        power::fail(action)
    }
}
