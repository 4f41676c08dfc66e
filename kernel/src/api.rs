//! Wiring of the management API: the XenAPI service with this host's facts, served by the
//! management server on the management network's stack.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use keel_cmdline::Config;
use keel_management::{ManagementServer, ServerConfig};
use keel_net::smoltcp::iface::SocketSet;
use keel_xenapi::{Config as ApiConfig, HostFacts, StorageBackend, VerifierState, XenApi};

use crate::entropy::Entropy;
use crate::platform::xen::guests::GuestService;
use crate::rtc;
use crate::storage::SharedRepositories;

/// What the kernel knows about the machine, for the `host` and `host_metrics` records.
pub struct MachineFacts {
    pub cpus: u32,
    pub tsc_hz: u64,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    /// Hypervisor version when running under one (empty on bare metal).
    pub xen_version: String,
}

/// CPUID's vendor, brand string, family/model/stepping and feature names.
fn cpu_identity(facts: &mut HostFacts) {
    let leaf0 = core::arch::x86_64::__cpuid(0);
    let vendor: Vec<u8> = [leaf0.ebx, leaf0.edx, leaf0.ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    facts.cpu_vendor = String::from_utf8_lossy(&vendor).trim().to_string();
    let max_ext = core::arch::x86_64::__cpuid(0x8000_0000).eax;
    if max_ext >= 0x8000_0004 {
        let brand: Vec<u8> = (0x8000_0002..=0x8000_0004u32)
            .flat_map(|leaf| {
                let r = core::arch::x86_64::__cpuid(leaf);
                [r.eax, r.ebx, r.ecx, r.edx]
                    .into_iter()
                    .flat_map(u32::to_le_bytes)
            })
            .take_while(|&b| b != 0)
            .collect();
        facts.cpu_model_name = String::from_utf8_lossy(&brand).trim().to_string();
    }
    let leaf1 = core::arch::x86_64::__cpuid(1);
    let base_family = (leaf1.eax >> 8) & 0xf;
    let base_model = (leaf1.eax >> 4) & 0xf;
    facts.cpu_family = if base_family == 0xf {
        base_family + ((leaf1.eax >> 20) & 0xff)
    } else {
        base_family
    };
    facts.cpu_model = if base_family >= 0x6 {
        base_model | (((leaf1.eax >> 16) & 0xf) << 4)
    } else {
        base_model
    };
    facts.cpu_stepping = leaf1.eax & 0xf;
    const EDX: [(u32, &str); 12] = [
        (0, "fpu"),
        (4, "tsc"),
        (5, "msr"),
        (6, "pae"),
        (8, "cx8"),
        (9, "apic"),
        (15, "cmov"),
        (19, "clflush"),
        (23, "mmx"),
        (24, "fxsr"),
        (25, "sse"),
        (26, "sse2"),
    ];
    const ECX: [(u32, &str); 8] = [
        (0, "pni"),
        (5, "vmx"),
        (9, "ssse3"),
        (13, "cx16"),
        (19, "sse4_1"),
        (20, "sse4_2"),
        (23, "popcnt"),
        (30, "rdrand"),
    ];
    let flags: Vec<&str> = EDX
        .iter()
        .filter(|(bit, _)| leaf1.edx & (1 << bit) != 0)
        .chain(ECX.iter().filter(|(bit, _)| leaf1.ecx & (1 << bit) != 0))
        .map(|(_, name)| *name)
        .collect();
    facts.cpu_flags = flags.join(" ");
}

/// The host facts as the XenAPI reports them; `address` is filled in when the network is up.
pub fn host_facts(machine: &MachineFacts) -> HostFacts {
    let mut facts = HostFacts {
        hostname: "keel".into(),
        cpu_count: machine.cpus,
        socket_count: 1,
        cpu_speed_mhz: (machine.tsc_hz / 1_000_000) as u32,
        memory_total_bytes: machine.memory_total_bytes,
        memory_free_bytes: machine.memory_free_bytes,
        xen_version: machine.xen_version.clone(),
        product_version: env!("CARGO_PKG_VERSION").into(),
        ..HostFacts::default()
    };
    cpu_identity(&mut facts);
    facts
}

/// Builds the XenAPI service and its server on `sockets` (the management stack's).
pub fn start_server(
    config: &Config<'static>,
    facts: HostFacts,
    guests: Option<&GuestService>,
    storage: Option<&SharedRepositories>,
    sockets: &mut SocketSet<'static>,
) -> Option<ManagementServer> {
    if config.root_hash.is_none() {
        log::warn!("api: no keel.root_hash on the command line: every login will be refused");
    }
    let host_database = crate::storage::hostdb::open(storage);
    let api_config = ApiConfig {
        root_password_phc: config.root_hash.map(String::from),
        storage: storage.map(|s| Box::new(s.clone()) as Box<dyn StorageBackend>),
        guests: guests.map(GuestService::backend),
        network: guests
            .and_then(|g| g.vifs.as_ref())
            .map(|v| v.network_backend()),
        restore: host_database.restore,
        database_sink: host_database.sink,
        ..ApiConfig::new(String::new(), facts)
    };
    let entropy = Entropy::seed(crate::arch::rdtsc() ^ rtc::now().unix_ms);
    match XenApi::new(api_config, Box::new(entropy), rtc::now()) {
        Ok(mut api) => {
            crate::storage::hostdb::after_start(&mut api);
            report_verifier(api.login_verifier());
            let server_config = server_config(largest_allocation());
            log::info!(
                "api: XenAPI on TCP port {} (XML-RPC at / and /RPC2, JSON-RPC at /jsonrpc)",
                server_config.port
            );
            let server = ManagementServer::new(sockets, api, server_config);
            log::info!(
                "api: up to {} connections, {} KiB of client memory ({} bytes per idle connection)",
                server.max_connections(),
                server.budget().limit() >> 10,
                server.idle_connection_bytes()
            );
            Some(server)
        }
        Err(e) => {
            log::error!("api: cannot start: {e:?}");
            None
        }
    }
}

/// One line on whether root's password can be verified in the memory Keel has.
fn report_verifier(state: VerifierState) {
    match state {
        VerifierState::Ready { bytes, cost } => log::info!(
            "api: password verifier ready: {} KiB reserved for argon2 (m={} KiB, t={}, p={}); \
             logins are verified one at a time",
            bytes >> 10,
            cost.memory_kib,
            cost.iterations,
            cost.parallelism
        ),
        VerifierState::NoMemory { bytes, cost } => {
            let free = largest_allocation();
            log::error!(
                "api: root's password hash needs {} MiB to verify (argon2 m={} KiB) but the heap \
                 can give only {} MiB: every login will fail; boot with at least {} MiB more \
                 memory or remake the hash with m <= {} KiB",
                bytes.div_ceil(1 << 20),
                cost.memory_kib,
                free >> 20,
                // The heap is about half of RAM (kernel/src/memory.rs).
                (bytes.saturating_sub(free) * 2).div_ceil(1 << 20),
                // Leave a third of what is free for everything else.
                free / 3 * 2 / 1024
            )
        }
        // XenApi::new refuses an unparsable hash; without one there is nothing to reserve.
        VerifierState::BadHash | VerifierState::NoPassword => {}
    }
}

/// The server's shape for a heap whose largest free block is `free_heap` bytes: a third of it
/// for what clients make the server hold (socket buffers, request bodies), the rest for
/// everything else (the XenAPI's objects, storage, guests). Connections beyond what that third
/// pays for are refused, not allowed to run the heap dry.
fn server_config(free_heap: usize) -> ServerConfig {
    ServerConfig::default().fitted_to(free_heap / 3)
}

/// The largest allocation the heap can make right now (to within 64 KiB), found by trying:
/// `try_reserve` fails cleanly, so probing is harmless, and it measures what is actually left
/// after start-up rather than the arena's size.
fn largest_allocation() -> usize {
    let (mut fits, mut fails) = (0usize, 1usize << 40);
    while fails - fits > 64 * 1024 {
        let mid = fits + (fails - fits) / 2;
        let mut probe: Vec<u8> = Vec::new();
        if probe.try_reserve_exact(mid).is_ok() {
            fits = mid;
        } else {
            fails = mid;
        }
    }
    fits
}
