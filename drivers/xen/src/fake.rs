//! `FakeXen`: an in-memory model of the hypervisor for host tests (this crate's and, with
//! the `fake` feature, backends' in other crates).
//!
//! It decodes the same argument structures Xen does, through the pointers the typed
//! wrappers pass, and keeps just enough state to answer like Xen 4.17: version and
//! features, console, HVM params, event channels delivered through a real [`SharedInfo`]
//! image, other domains' grant tables and frames for map/unmap/copy, and domctl/sysctl
//! with interface-version checking. We are domain 0 with 2 vCPUs.

mod domains;

pub use domains::{DOMAIN_OVERHEAD_PAGES, INITIAL_FREE_PAGES, PAGES_PER_POOL_PAGE};

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::control::{DOMCTL_INTERFACE_VERSION, SYSCTL_INTERFACE_VERSION};
use crate::domctl::{dominf, XenDomctl};
use crate::error::{GntStatus, XenError};
use crate::evtchn::{
    raise_2l, EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindIpi, EvtchnBindVcpu,
    EvtchnBindVirq, EvtchnPortArg, Port, Virq,
};
use crate::grant_table::{
    gntcopy, gntmap, gtf, GnttabCopy, GnttabCopyPtr, GnttabMapGrantRef, GnttabQuerySize,
    GnttabSetVersion, GnttabUnmapGrantRef, GrantRef,
};
use crate::hvm::{XenHvmEvtchnUpcallVector, XenHvmParam};
use crate::hypercall::{HypercallOp, Hypervisor, DOMID_FIRST_RESERVED, DOMID_SELF, PAGE_SIZE};
use crate::memory::{E820Entry, XenAddToPhysmap, XenMemoryMap, XENMAPIDX_GRANT_TABLE_STATUS};
use crate::physdev::{PhysdevPciDevice, PhysdevPciDeviceAdd};
use crate::sched::{SchedRemoteShutdown, SchedShutdown, ShutdownReason};
use crate::shared_info::SharedInfo;
use crate::sysctl::{physcap, Physinfo, XenSysctl};
use crate::vcpu::{VcpuRegisterVcpuInfo, VcpuSetSingleshotTimer, VCPU_SSHOTTMR_FUTURE};
use crate::version::XenFeatureInfo;

/// Frame numbers of other domains' pages start here (any value works; it keeps them
/// visibly apart from our own guest frames in tests).
pub const FOREIGN_FRAME_BASE: u64 = 0x10_0000;
/// vCPUs of the fake dom0.
pub const FAKE_VCPUS: u32 = 2;
/// `max_grant_frames` the fake reports (Xen's default).
pub const FAKE_MAX_GRANT_FRAMES: u32 = 64;

type Page = Box<[u8; PAGE_SIZE]>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    Unbound { remote_dom: u16 },
    Interdomain { remote_dom: u16, remote_port: Port },
    Virq { virq: u32, vcpu: u32 },
    Ipi { vcpu: u32 },
}

#[derive(Debug, Clone, Copy)]
struct ForeignGrant {
    granted_to: u16,
    flags: u16,
    frame: u64,
}

#[derive(Debug, Clone, Copy)]
struct Mapping {
    dom: u16,
    gref: u32,
    host_gfn: u64,
}

struct State {
    calls: u32,
    fail_next: Vec<(u32, XenError)>,
    /// `(call index, error)`: fail the hypercall with that index.
    fail_at: Vec<(u32, XenError)>,
    /// `(op, first argument)` of every hypercall: the sub-command for most ops.
    call_log: Vec<(u32, u64)>,
    version: (u16, u16),
    control_version: Option<u32>,
    console: Vec<u8>,
    console_sizes: Vec<usize>,
    console_input: VecDeque<u8>,
    shutdown: Option<ShutdownReason>,
    remote_shutdowns: Vec<(u16, ShutdownReason)>,
    yields: u32,
    blocks: u32,
    physmap: Vec<(u32, u64, u64)>,
    memory_map: Vec<E820Entry>,
    hvm_params: BTreeMap<(u16, u32), u64>,
    upcall_vectors: Vec<(u32, u8)>,
    vcpu_info_regs: Vec<(u32, u64, u32)>,
    system_time: u64,
    singleshot: BTreeMap<u32, u64>,
    periodic_stopped: BTreeSet<u32>,
    pci: Vec<(u16, u8, u8)>,
    domains: BTreeMap<u16, domains::Domain>,
    free_pages: u64,
    /// `XEN_SYSCTL_getcpuinfo`: each physical CPU's idle time (ns).
    cpu_idle_ns: Vec<u64>,
    /// `XEN_DOMCTL_getvcpuinfo`: `(domain, vcpu)` running time (ns).
    vcpu_time_ns: BTreeMap<(u16, u32), u64>,
    /// Dom0 hole frames showing another domain's page.
    foreign_maps: BTreeMap<u64, domains::MapSource>,
    dom0_ram_clobbered: Vec<u64>,
    ports: BTreeMap<u32, (Channel, u32)>,
    foreign_unbound: BTreeMap<(u16, u32), u16>,
    next_foreign_port: u32,
    sent: Vec<(u16, Port)>,
    grant_version: u32,
    grant_frames: u32,
    foreign_grants: BTreeMap<(u16, u32), ForeignGrant>,
    foreign_frames: BTreeMap<u64, Page>,
    local_pages: BTreeMap<u64, Page>,
    mappings: BTreeMap<u32, Mapping>,
    next_handle: u32,
}

/// The fake hypervisor. Not `Sync`: tests drive it from one thread.
pub struct FakeXen {
    state: RefCell<State>,
    shared: Box<SharedInfo>,
    /// Memory behind dom0's hole frames, see [`FakeXen::with_dom0_holes`].
    holes: Option<domains::HoleRegion>,
}

impl Default for FakeXen {
    fn default() -> Self {
        Self::new()
    }
}

fn new_page() -> Page {
    Box::new([0u8; PAGE_SIZE])
}

impl FakeXen {
    pub fn new() -> Self {
        FakeXen {
            state: RefCell::new(State {
                calls: 0,
                fail_next: Vec::new(),
                fail_at: Vec::new(),
                call_log: Vec::new(),
                version: (4, 17),
                control_version: None,
                console: Vec::new(),
                console_sizes: Vec::new(),
                console_input: VecDeque::new(),
                shutdown: None,
                remote_shutdowns: Vec::new(),
                yields: 0,
                blocks: 0,
                physmap: Vec::new(),
                memory_map: Vec::new(),
                hvm_params: BTreeMap::new(),
                upcall_vectors: Vec::new(),
                vcpu_info_regs: Vec::new(),
                system_time: 0,
                singleshot: BTreeMap::new(),
                periodic_stopped: BTreeSet::new(),
                pci: Vec::new(),
                domains: BTreeMap::new(),
                free_pages: domains::INITIAL_FREE_PAGES,
                cpu_idle_ns: alloc::vec![0; 2],
                vcpu_time_ns: BTreeMap::new(),
                foreign_maps: BTreeMap::new(),
                dom0_ram_clobbered: Vec::new(),
                ports: BTreeMap::new(),
                foreign_unbound: BTreeMap::new(),
                next_foreign_port: 1,
                sent: Vec::new(),
                grant_version: 1,
                grant_frames: 1,
                foreign_grants: BTreeMap::new(),
                foreign_frames: BTreeMap::new(),
                local_pages: BTreeMap::new(),
                mappings: BTreeMap::new(),
                next_handle: 1,
            }),
            shared: Box::new(SharedInfo::zeroed()),
            holes: None,
        }
    }

    // ----- configuration and inspection for tests -----

    /// Hypercalls issued so far.
    pub fn hypercall_count(&self) -> u32 {
        self.state.borrow().calls
    }

    /// `(op, first argument)` of every hypercall so far (for most ops, the sub-command).
    pub fn call_log(&self) -> Vec<(u32, u64)> {
        self.state.borrow().call_log.clone()
    }

    /// Makes the next hypercall `op` fail with `error`.
    pub fn fail_next(&self, op: HypercallOp, error: XenError) {
        self.state.borrow_mut().fail_next.push((op as u32, error));
    }

    pub fn set_version(&self, major: u16, minor: u16) {
        self.state.borrow_mut().version = (major, minor);
    }

    /// Pretends to be a Xen whose sysctl/domctl interface version is `version`.
    pub fn set_control_interface_version(&self, version: u32) {
        self.state.borrow_mut().control_version = Some(version);
    }

    pub fn console_output(&self) -> Vec<u8> {
        self.state.borrow().console.clone()
    }

    pub fn console_write_sizes(&self) -> Vec<usize> {
        self.state.borrow().console_sizes.clone()
    }

    pub fn push_console_input(&self, bytes: &[u8]) {
        self.state
            .borrow_mut()
            .console_input
            .extend(bytes.iter().copied());
    }

    pub fn shutdown_reason(&self) -> Option<ShutdownReason> {
        self.state.borrow().shutdown
    }

    pub fn remote_shutdowns(&self) -> Vec<(u16, ShutdownReason)> {
        self.state.borrow().remote_shutdowns.clone()
    }

    /// `(yields, blocks)`.
    pub fn sched_counts(&self) -> (u32, u32) {
        let s = self.state.borrow();
        (s.yields, s.blocks)
    }

    /// `(space, idx, gpfn)` of each successful `XENMEM_add_to_physmap`.
    pub fn physmap_calls(&self) -> Vec<(u32, u64, u64)> {
        self.state.borrow().physmap.clone()
    }

    pub fn set_memory_map(&self, entries: &[E820Entry]) {
        self.state.borrow_mut().memory_map = entries.to_vec();
    }

    pub fn upcall_vectors(&self) -> Vec<(u32, u8)> {
        self.state.borrow().upcall_vectors.clone()
    }

    pub fn vcpu_info_registrations(&self) -> Vec<(u32, u64, u32)> {
        self.state.borrow().vcpu_info_regs.clone()
    }

    pub fn set_system_time_ns(&self, ns: u64) {
        self.state.borrow_mut().system_time = ns;
    }

    pub fn singleshot_deadline(&self, vcpu: u32) -> Option<u64> {
        self.state.borrow().singleshot.get(&vcpu).copied()
    }

    pub fn periodic_stopped(&self, vcpu: u32) -> bool {
        self.state.borrow().periodic_stopped.contains(&vcpu)
    }

    pub fn pci_devices(&self) -> Vec<(u16, u8, u8)> {
        self.state.borrow().pci.clone()
    }

    /// Sets physical CPU `cpu`'s idle time (`XEN_SYSCTL_getcpuinfo`; the fake has 2 CPUs).
    pub fn set_cpu_idle_ns(&self, cpu: usize, ns: u64) {
        if let Some(slot) = self.state.borrow_mut().cpu_idle_ns.get_mut(cpu) {
            *slot = ns;
        }
    }

    /// Sets the running time of `domid`'s vCPU `vcpu` (`XEN_DOMCTL_getvcpuinfo`).
    pub fn set_vcpu_time_ns(&self, domid: u16, vcpu: u32, ns: u64) {
        self.state
            .borrow_mut()
            .vcpu_time_ns
            .insert((domid, vcpu), ns);
    }

    /// Adds a domain for domctl with `XEN_DOMINF_*` flags.
    pub fn add_domain(&self, domid: u16, flags: u32) {
        self.state
            .borrow_mut()
            .domains
            .insert(domid, domains::Domain::legacy(flags));
    }

    /// Domain `dom` allocates an unbound port that `remote_dom` may bind to.
    pub fn foreign_unbound_port(&self, dom: u16, remote_dom: u16) -> Port {
        let mut s = self.state.borrow_mut();
        let port = s.next_foreign_port;
        s.next_foreign_port += 1;
        s.foreign_unbound.insert((dom, port), remote_dom);
        Port(port)
    }

    /// `(remote domain, remote port)` of each `EVTCHNOP_send` on an interdomain channel.
    pub fn sent_notifications(&self) -> Vec<(u16, Port)> {
        self.state.borrow().sent.clone()
    }

    /// Our shared_info page, where the fake delivers events.
    pub fn shared_info(&self) -> &SharedInfo {
        &self.shared
    }

    /// Xen raises `virq` on the port bound to it (if any).
    pub fn fire_virq(&self, virq: Virq) {
        let bound = self
            .state
            .borrow()
            .ports
            .iter()
            .find_map(|(p, (c, vcpu))| match c {
                Channel::Virq { virq: v, .. } if *v == virq as u32 => Some((*p, *vcpu)),
                _ => None,
            });
        if let Some((port, vcpu)) = bound {
            self.deliver(Port(port), vcpu);
        }
    }

    /// The remote end of interdomain channel `local` notifies us.
    pub fn remote_notify(&self, local: Port) {
        let vcpu = self.state.borrow().ports.get(&local.0).map(|(_, v)| *v);
        if let Some(vcpu) = vcpu {
            self.deliver(local, vcpu);
        }
    }

    fn deliver(&self, port: Port, vcpu: u32) {
        if let Some(v) = self.shared.vcpu(vcpu as usize) {
            let _ = raise_2l(&self.shared, v, port);
        }
    }

    pub fn grant_version(&self) -> u32 {
        self.state.borrow().grant_version
    }

    /// Domain `dom` grants `granted_to` access to its frame `frame` under `gref`.
    pub fn add_foreign_grant(
        &self,
        dom: u16,
        gref: GrantRef,
        granted_to: u16,
        flags: u16,
        frame: u64,
    ) {
        let mut s = self.state.borrow_mut();
        s.foreign_grants.insert(
            (dom, gref.0),
            ForeignGrant {
                granted_to,
                flags,
                frame,
            },
        );
        s.foreign_frames.entry(frame).or_insert_with(new_page);
    }

    pub fn foreign_grant_flags(&self, dom: u16, gref: GrantRef) -> u16 {
        self.state
            .borrow()
            .foreign_grants
            .get(&(dom, gref.0))
            .map_or(0, |g| g.flags)
    }

    pub fn write_foreign_frame(&self, frame: u64, offset: usize, bytes: &[u8]) {
        let mut s = self.state.borrow_mut();
        let page = s.foreign_frames.entry(frame).or_insert_with(new_page);
        page[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    pub fn read_foreign_frame(&self, frame: u64, offset: usize, len: usize) -> Vec<u8> {
        let s = self.state.borrow();
        s.foreign_frames
            .get(&frame)
            .map_or_else(|| alloc::vec![0; len], |p| p[offset..offset + len].to_vec())
    }

    /// Writes into our own guest frame `gfn`.
    pub fn write_local(&self, gfn: u64, offset: usize, bytes: &[u8]) {
        let mut s = self.state.borrow_mut();
        let page = s.local_pages.entry(gfn).or_insert_with(new_page);
        page[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// Reads our guest frame `gfn`, seeing through grant mappings placed there.
    pub fn read_local(&self, gfn: u64, offset: usize, len: usize) -> Vec<u8> {
        let s = self.state.borrow();
        let mapped = s
            .mappings
            .values()
            .find(|m| m.host_gfn == gfn)
            .and_then(|m| {
                s.foreign_grants
                    .get(&(m.dom, m.gref))
                    .and_then(|g| s.foreign_frames.get(&g.frame))
            });
        mapped
            .or_else(|| s.local_pages.get(&gfn))
            .map_or_else(|| alloc::vec![0; len], |p| p[offset..offset + len].to_vec())
    }
}

/// Reads the argument structure Xen would read.
///
/// # Safety
/// `addr` must be the address of a live, exclusively borrowed `T`.
unsafe fn arg<'a, T>(addr: u64) -> Option<&'a mut T> {
    // SAFETY: guaranteed by the caller (the `Hypervisor::hypercall` contract).
    unsafe { (addr as *mut T).as_mut() }
}

/// Array of `count` argument structures.
///
/// # Safety
/// As [`arg`], for `count` consecutive structures.
unsafe fn args<'a, T>(addr: u64, count: u64) -> Option<&'a mut [T]> {
    if addr == 0 {
        return None;
    }
    // SAFETY: guaranteed by the caller.
    Some(unsafe { core::slice::from_raw_parts_mut(addr as *mut T, count as usize) })
}

fn ret(result: Result<i64, XenError>) -> i64 {
    result.unwrap_or_else(XenError::as_ret)
}

impl Hypervisor for FakeXen {
    unsafe fn hypercall(&self, op: u32, a: [u64; 5]) -> i64 {
        {
            let mut s = self.state.borrow_mut();
            let index = s.calls;
            s.calls += 1;
            s.call_log.push((op, a[0]));
            if let Some(i) = s.fail_at.iter().position(|(at, _)| *at == index) {
                return s.fail_at.remove(i).1.as_ret();
            }
            if let Some(i) = s.fail_next.iter().position(|(o, _)| *o == op) {
                return s.fail_next.remove(i).1.as_ret();
            }
        }
        type Handler = unsafe fn(&FakeXen, [u64; 5]) -> Result<i64, XenError>;
        let handler: Handler = match op {
            x if x == HypercallOp::XenVersion as u32 => Self::xen_version,
            x if x == HypercallOp::ConsoleIo as u32 => Self::console_io,
            x if x == HypercallOp::SchedOp as u32 => Self::sched_op,
            x if x == HypercallOp::MemoryOp as u32 => Self::memory_op,
            x if x == HypercallOp::HvmOp as u32 => Self::hvm_op,
            x if x == HypercallOp::VcpuOp as u32 => Self::vcpu_op,
            x if x == HypercallOp::PhysdevOp as u32 => Self::physdev_op,
            x if x == HypercallOp::Sysctl as u32 => Self::sysctl,
            x if x == HypercallOp::Domctl as u32 => Self::domctl,
            x if x == HypercallOp::EventChannelOp as u32 => Self::event_channel_op,
            x if x == HypercallOp::GrantTableOp as u32 => Self::grant_table_op,
            _ => return XenError::ENOSYS.as_ret(),
        };
        // SAFETY: the caller upholds the hypercall contract for every pointer the handler
        // decodes.
        ret(unsafe { handler(self, a) })
    }
}

impl FakeXen {
    unsafe fn xen_version(&self, a: [u64; 5]) -> Result<i64, XenError> {
        let s = self.state.borrow();
        let copy_str = |dst: u64, len: usize, text: &[u8]| -> Result<i64, XenError> {
            // SAFETY: the wrapper passed a buffer of `len` bytes.
            let buf = unsafe { args::<u8>(dst, len as u64) }.ok_or(XenError::EFAULT)?;
            buf.fill(0);
            buf[..text.len()].copy_from_slice(text);
            Ok(0)
        };
        match a[0] {
            0 => Ok((i64::from(s.version.0) << 16) | i64::from(s.version.1)),
            1 => copy_str(a[1], 16, b".7"),
            3 => copy_str(
                a[1],
                1024,
                b"xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64",
            ),
            6 => {
                // SAFETY: see above.
                let info = unsafe { arg::<XenFeatureInfo>(a[1]) }.ok_or(XenError::EFAULT)?;
                if info.submap_idx != 0 {
                    return Err(XenError::EINVAL);
                }
                info.submap = (1 << 2) | (1 << 3) | (1 << 8) | (1 << 9) | (1 << 11);
                Ok(0)
            }
            _ => Err(XenError::ENOSYS),
        }
    }

    unsafe fn console_io(&self, a: [u64; 5]) -> Result<i64, XenError> {
        let mut s = self.state.borrow_mut();
        match a[0] {
            0 => {
                // SAFETY: the wrapper passes `count` readable bytes.
                let bytes = unsafe { args::<u8>(a[2], a[1]) }.ok_or(XenError::EFAULT)?;
                s.console.extend_from_slice(bytes);
                s.console_sizes.push(bytes.len());
                Ok(0)
            }
            1 => {
                // SAFETY: the wrapper passes `count` writable bytes.
                let buf = unsafe { args::<u8>(a[2], a[1]) }.ok_or(XenError::EFAULT)?;
                let mut n = 0;
                while n < buf.len() {
                    let Some(b) = s.console_input.pop_front() else {
                        break;
                    };
                    buf[n] = b;
                    n += 1;
                }
                Ok(n as i64)
            }
            _ => Err(XenError::ENOSYS),
        }
    }

    unsafe fn sched_op(&self, a: [u64; 5]) -> Result<i64, XenError> {
        let mut s = self.state.borrow_mut();
        match a[0] {
            0 => s.yields += 1,
            1 => s.blocks += 1,
            2 => {
                // SAFETY: contract.
                let arg = unsafe { arg::<SchedShutdown>(a[1]) }.ok_or(XenError::EFAULT)?;
                s.shutdown = Some(ShutdownReason::from_raw(arg.reason).ok_or(XenError::EINVAL)?);
            }
            4 => {
                // SAFETY: contract.
                let arg = unsafe { arg::<SchedRemoteShutdown>(a[1]) }.ok_or(XenError::EFAULT)?;
                let reason = ShutdownReason::from_raw(arg.reason).ok_or(XenError::EINVAL)?;
                s.remote_shutdowns.push((arg.domain_id, reason));
            }
            _ => return Err(XenError::ENOSYS),
        }
        Ok(0)
    }

    unsafe fn memory_op(&self, a: [u64; 5]) -> Result<i64, XenError> {
        let mut s = self.state.borrow_mut();
        match a[0] {
            7 => {
                // SAFETY: contract.
                let arg = unsafe { arg::<XenAddToPhysmap>(a[1]) }.ok_or(XenError::EFAULT)?;
                if arg.domid != DOMID_SELF {
                    return Err(XenError::EPERM);
                }
                match arg.space {
                    0 if arg.idx == 0 => {}
                    1 => {
                        if arg.idx & XENMAPIDX_GRANT_TABLE_STATUS != 0
                            || arg.idx >= u64::from(FAKE_MAX_GRANT_FRAMES)
                        {
                            return Err(XenError::EINVAL);
                        }
                        s.grant_frames = s.grant_frames.max(arg.idx as u32 + 1);
                    }
                    _ => return Err(XenError::EINVAL),
                }
                s.physmap.push((arg.space, arg.idx, arg.gpfn));
                Ok(0)
            }
            6 => Self::populate_physmap(&mut s, a[1]),
            13 => Self::set_domain_memory_map(&mut s, a[1]),
            15 => self.remove_from_physmap(&mut s, a[1]),
            23 => self.add_to_physmap_batch(&mut s, a[1]),
            28 => self.acquire_resource(&mut s, a[1]),
            9 | 10 => {
                // SAFETY: contract.
                let map = unsafe { arg::<XenMemoryMap>(a[1]) }.ok_or(XenError::EFAULT)?;
                let n = s.memory_map.len().min(map.nr_entries as usize);
                // SAFETY: the wrapper passes `nr_entries` entries.
                let buf = unsafe { args::<E820Entry>(map.buffer, u64::from(map.nr_entries)) }
                    .ok_or(XenError::EFAULT)?;
                buf[..n].copy_from_slice(&s.memory_map[..n]);
                map.nr_entries = n as u32;
                Ok(0)
            }
            _ => Err(XenError::ENOSYS),
        }
    }

    unsafe fn hvm_op(&self, a: [u64; 5]) -> Result<i64, XenError> {
        let mut s = self.state.borrow_mut();
        match a[0] {
            0 | 1 => {
                // SAFETY: contract.
                let p = unsafe { arg::<XenHvmParam>(a[1]) }.ok_or(XenError::EFAULT)?;
                if p.index >= 39 {
                    return Err(XenError::EINVAL);
                }
                let dom = if p.domid == DOMID_SELF { 0 } else { p.domid };
                let dying = s
                    .domains
                    .get(&dom)
                    .is_some_and(|d| d.flags & dominf::DYING != 0);
                if dying {
                    return Err(XenError::ESRCH);
                }
                if a[0] == 0 {
                    s.hvm_params.insert((dom, p.index), p.value);
                } else {
                    p.value = s.hvm_params.get(&(dom, p.index)).copied().unwrap_or(0);
                }
                Ok(0)
            }
            23 => {
                // SAFETY: contract.
                let v = unsafe { arg::<XenHvmEvtchnUpcallVector>(a[1]) }.ok_or(XenError::EFAULT)?;
                if v.vcpu >= FAKE_VCPUS {
                    return Err(XenError::ENOENT);
                }
                s.upcall_vectors.push((v.vcpu, v.vector));
                Ok(0)
            }
            _ => Err(XenError::ENOSYS),
        }
    }

    unsafe fn vcpu_op(&self, a: [u64; 5]) -> Result<i64, XenError> {
        let mut s = self.state.borrow_mut();
        let vcpu = a[1] as u32;
        if vcpu >= FAKE_VCPUS {
            return Err(XenError::ENOENT);
        }
        match a[0] {
            7 => {
                s.periodic_stopped.insert(vcpu);
            }
            8 => {
                // SAFETY: contract.
                let t = unsafe { arg::<VcpuSetSingleshotTimer>(a[2]) }.ok_or(XenError::EFAULT)?;
                if t.flags & VCPU_SSHOTTMR_FUTURE != 0 && t.timeout_abs_ns < s.system_time {
                    return Err(XenError::ETIME);
                }
                s.singleshot.insert(vcpu, t.timeout_abs_ns);
            }
            9 => {
                s.singleshot.remove(&vcpu);
            }
            10 => {
                // SAFETY: contract.
                let r = unsafe { arg::<VcpuRegisterVcpuInfo>(a[2]) }.ok_or(XenError::EFAULT)?;
                s.vcpu_info_regs.push((vcpu, r.mfn, r.offset));
            }
            _ => return Err(XenError::ENOSYS),
        }
        Ok(0)
    }

    unsafe fn physdev_op(&self, a: [u64; 5]) -> Result<i64, XenError> {
        let mut s = self.state.borrow_mut();
        match a[0] {
            25 => {
                // SAFETY: contract.
                let d = unsafe { arg::<PhysdevPciDeviceAdd>(a[1]) }.ok_or(XenError::EFAULT)?;
                let key = (d.seg, d.bus, d.devfn);
                if s.pci.contains(&key) {
                    return Err(XenError::EEXIST);
                }
                s.pci.push(key);
                Ok(0)
            }
            26 => {
                // SAFETY: contract.
                let d = unsafe { arg::<PhysdevPciDevice>(a[1]) }.ok_or(XenError::EFAULT)?;
                let key = (d.seg, d.bus, d.devfn);
                let i = s
                    .pci
                    .iter()
                    .position(|k| *k == key)
                    .ok_or(XenError::ENODEV)?;
                s.pci.remove(i);
                Ok(0)
            }
            _ => Err(XenError::ENOSYS),
        }
    }

    unsafe fn sysctl(&self, a: [u64; 5]) -> Result<i64, XenError> {
        let s = self.state.borrow();
        // SAFETY: contract.
        let op = unsafe { arg::<XenSysctl>(a[0]) }.ok_or(XenError::EFAULT)?;
        if op.interface_version != s.control_version.unwrap_or(SYSCTL_INTERFACE_VERSION) {
            return Err(XenError::EACCES);
        }
        match op.cmd {
            3 => {
                op.u.physinfo = Physinfo {
                    threads_per_core: 1,
                    cores_per_socket: 2,
                    nr_cpus: 2,
                    max_cpu_id: 1,
                    nr_nodes: 1,
                    cpu_khz: 2_000_000,
                    capabilities: physcap::HVM | physcap::PV | physcap::HAP | physcap::GNTTAB_V1,
                    total_pages: 262_144,
                    free_pages: s.free_pages,
                    max_mfn: 0x4_0000,
                    ..Physinfo::default()
                };
                Ok(0)
            }
            8 => {
                // SAFETY: the wrapper wrote a `GetCpuInfo` into the union.
                let arg = unsafe { &mut op.u.getcpuinfo };
                let n = s.cpu_idle_ns.len().min(arg.max_cpus as usize);
                // SAFETY: the wrapper passes `max_cpus` u64s.
                let out = unsafe { args::<u64>(arg.info, u64::from(arg.max_cpus)) }
                    .ok_or(XenError::EFAULT)?;
                out[..n].copy_from_slice(&s.cpu_idle_ns[..n]);
                arg.nr_cpus = n as u32;
                Ok(0)
            }
            _ => Err(XenError::ENOSYS),
        }
    }

    unsafe fn domctl(&self, a: [u64; 5]) -> Result<i64, XenError> {
        let mut s = self.state.borrow_mut();
        // SAFETY: contract.
        let op = unsafe { arg::<XenDomctl>(a[0]) }.ok_or(XenError::EFAULT)?;
        if op.interface_version != s.control_version.unwrap_or(DOMCTL_INTERFACE_VERSION) {
            return Err(XenError::EACCES);
        }
        let dom = op.domain;
        match op.cmd {
            5 => {
                if dom >= DOMID_FIRST_RESERVED {
                    return Err(XenError::EINVAL);
                }
                // Like Xen 4.17: the first domain with an id >= the one asked for.
                let (&id, d) = s.domains.range(dom..).next().ok_or(XenError::ESRCH)?;
                op.domain = id;
                op.u.getdomaininfo = crate::domctl::DomainInfo {
                    domain: id,
                    flags: d.flags,
                    tot_pages: d.tot_pages(),
                    max_pages: d.max_pages(),
                    nr_online_vcpus: d.online_vcpus(),
                    handle: d.handle(),
                    ..Default::default()
                };
                Ok(0)
            }
            1 => Self::create_domain(&mut s, op),
            2 => Self::destroy_domain(&mut s, dom),
            3 | 4 => {
                let d = s.domains.get_mut(&dom).ok_or(XenError::ESRCH)?;
                if d.flags & dominf::DYING != 0 {
                    return Err(XenError::EINVAL);
                }
                match op.cmd {
                    3 => d.flags |= dominf::PAUSED,
                    _ => d.flags &= !dominf::PAUSED,
                }
                Ok(0)
            }
            14 => {
                let d = s.domains.get(&dom).ok_or(XenError::ESRCH)?;
                // SAFETY: the wrapper wrote a `VcpuInfo` into the union.
                let arg = unsafe { &mut op.u.getvcpuinfo };
                if arg.vcpu >= d.online_vcpus() {
                    return Err(XenError::EINVAL);
                }
                arg.online = 1;
                arg.running = u8::from(d.flags & dominf::RUNNING != 0);
                arg.cpu_time = s.vcpu_time_ns.get(&(dom, arg.vcpu)).copied().unwrap_or(0);
                Ok(0)
            }
            11 | 15 | 86 => Self::domctl_value(&mut s, op),
            33 => Self::get_hvm_context(&mut s, op),
            34 => Self::set_hvm_context(&mut s, op),
            _ => Err(XenError::ENOSYS),
        }
    }

    fn alloc_port(s: &mut State, channel: Channel, vcpu: u32) -> u32 {
        // Port 0 is reserved by Xen.
        let port = (1..).find(|p| !s.ports.contains_key(p)).unwrap_or(u32::MAX);
        s.ports.insert(port, (channel, vcpu));
        port
    }

    unsafe fn event_channel_op(&self, a: [u64; 5]) -> Result<i64, XenError> {
        let mut s = self.state.borrow_mut();
        match a[0] {
            6 => {
                // SAFETY: contract.
                let op = unsafe { arg::<EvtchnAllocUnbound>(a[1]) }.ok_or(XenError::EFAULT)?;
                if op.dom == DOMID_SELF || op.dom == 0 {
                    op.port = Self::alloc_port(
                        &mut s,
                        Channel::Unbound {
                            remote_dom: op.remote_dom,
                        },
                        0,
                    );
                } else {
                    let port = s.next_foreign_port;
                    s.next_foreign_port += 1;
                    s.foreign_unbound.insert((op.dom, port), op.remote_dom);
                    op.port = port;
                }
                Ok(0)
            }
            0 => {
                // SAFETY: contract.
                let op = unsafe { arg::<EvtchnBindInterdomain>(a[1]) }.ok_or(XenError::EFAULT)?;
                match s.foreign_unbound.get(&(op.remote_dom, op.remote_port)) {
                    Some(0) => {}
                    _ => return Err(XenError::EINVAL),
                }
                s.foreign_unbound.remove(&(op.remote_dom, op.remote_port));
                let channel = Channel::Interdomain {
                    remote_dom: op.remote_dom,
                    remote_port: Port(op.remote_port),
                };
                op.local_port = Self::alloc_port(&mut s, channel, 0);
                Ok(0)
            }
            1 => {
                // SAFETY: contract.
                let op = unsafe { arg::<EvtchnBindVirq>(a[1]) }.ok_or(XenError::EFAULT)?;
                if op.virq >= 24 {
                    return Err(XenError::EINVAL);
                }
                if op.vcpu >= FAKE_VCPUS {
                    return Err(XenError::ENOENT);
                }
                let dup = s.ports.values().any(|(c, _)| {
                    *c == Channel::Virq {
                        virq: op.virq,
                        vcpu: op.vcpu,
                    }
                });
                if dup {
                    return Err(XenError::EEXIST);
                }
                op.port = Self::alloc_port(
                    &mut s,
                    Channel::Virq {
                        virq: op.virq,
                        vcpu: op.vcpu,
                    },
                    op.vcpu,
                );
                Ok(0)
            }
            7 => {
                // SAFETY: contract.
                let op = unsafe { arg::<EvtchnBindIpi>(a[1]) }.ok_or(XenError::EFAULT)?;
                if op.vcpu >= FAKE_VCPUS {
                    return Err(XenError::ENOENT);
                }
                op.port = Self::alloc_port(&mut s, Channel::Ipi { vcpu: op.vcpu }, op.vcpu);
                Ok(0)
            }
            8 => {
                // SAFETY: contract.
                let op = unsafe { arg::<EvtchnBindVcpu>(a[1]) }.ok_or(XenError::EFAULT)?;
                if op.vcpu >= FAKE_VCPUS {
                    return Err(XenError::ENOENT);
                }
                let entry = s.ports.get_mut(&op.port).ok_or(XenError::EINVAL)?;
                entry.1 = op.vcpu;
                Ok(0)
            }
            3 | 4 | 9 => {
                // SAFETY: contract.
                let op_port = unsafe { arg::<EvtchnPortArg>(a[1]) }
                    .ok_or(XenError::EFAULT)?
                    .port;
                let (channel, vcpu) = *s.ports.get(&op_port).ok_or(XenError::EINVAL)?;
                match a[0] {
                    3 => {
                        s.ports.remove(&op_port);
                    }
                    4 => match channel {
                        Channel::Interdomain {
                            remote_dom,
                            remote_port,
                        } => s.sent.push((remote_dom, remote_port)),
                        Channel::Ipi { .. } => {
                            drop(s);
                            self.deliver(Port(op_port), vcpu);
                        }
                        Channel::Unbound { .. } => {}
                        Channel::Virq { .. } => return Err(XenError::EINVAL),
                    },
                    _ => {
                        drop(s);
                        self.unmask_port(Port(op_port), vcpu);
                    }
                }
                Ok(0)
            }
            _ => Err(XenError::ENOSYS),
        }
    }

    /// Xen's `evtchn_2l_unmask`: clear the mask and re-deliver a pending event.
    fn unmask_port(&self, port: Port, vcpu: u32) {
        use core::sync::atomic::Ordering;
        let word = port.0 as usize / 64;
        let bit = 1u64 << (port.0 % 64);
        let (Some(mask), Some(pending), Some(v)) = (
            self.shared.evtchn_mask.get(word),
            self.shared.evtchn_pending.get(word),
            self.shared.vcpu(vcpu as usize),
        ) else {
            return;
        };
        let was_masked = mask.fetch_and(!bit, Ordering::SeqCst) & bit != 0;
        if was_masked && pending.load(Ordering::SeqCst) & bit != 0 {
            v.evtchn_pending_sel.fetch_or(1 << word, Ordering::SeqCst);
            v.evtchn_upcall_pending.store(1, Ordering::SeqCst);
        }
    }

    unsafe fn grant_table_op(&self, a: [u64; 5]) -> Result<i64, XenError> {
        let mut s = self.state.borrow_mut();
        match a[0] {
            6 => {
                // SAFETY: contract.
                let q = unsafe { arg::<GnttabQuerySize>(a[1]) }.ok_or(XenError::EFAULT)?;
                if q.dom != DOMID_SELF {
                    q.status = GntStatus::BadDomain.code();
                    return Ok(0);
                }
                q.nr_frames = s.grant_frames;
                q.max_nr_frames = FAKE_MAX_GRANT_FRAMES;
                q.status = 0;
                Ok(0)
            }
            8 => {
                // SAFETY: contract.
                let v = unsafe { arg::<GnttabSetVersion>(a[1]) }.ok_or(XenError::EFAULT)?;
                match v.version {
                    1 | 2 => s.grant_version = v.version,
                    _ => return Err(XenError::EINVAL),
                }
                Ok(0)
            }
            0 => {
                // SAFETY: contract.
                let ops =
                    unsafe { args::<GnttabMapGrantRef>(a[1], a[2]) }.ok_or(XenError::EFAULT)?;
                for op in ops {
                    match Self::map_one(&mut s, op) {
                        Ok(handle) => {
                            op.handle = handle;
                            op.status = 0;
                        }
                        Err(status) => op.status = status.code(),
                    }
                }
                Ok(0)
            }
            1 => {
                // SAFETY: contract.
                let ops =
                    unsafe { args::<GnttabUnmapGrantRef>(a[1], a[2]) }.ok_or(XenError::EFAULT)?;
                for op in ops {
                    op.status = match s.mappings.get(&op.handle).copied() {
                        None => GntStatus::BadHandle.code(),
                        Some(m) if m.host_gfn << 12 != op.host_addr => {
                            GntStatus::BadVirtAddr.code()
                        }
                        Some(m) => {
                            s.mappings.remove(&op.handle);
                            if let Some(g) = s.foreign_grants.get_mut(&(m.dom, m.gref)) {
                                g.flags &= !(gtf::READING | gtf::WRITING);
                            }
                            0
                        }
                    };
                }
                Ok(0)
            }
            5 => {
                // SAFETY: contract.
                let ops = unsafe { args::<GnttabCopy>(a[1], a[2]) }.ok_or(XenError::EFAULT)?;
                for op in ops {
                    op.status = match Self::copy_one(&mut s, op) {
                        Ok(()) => 0,
                        Err(status) => status.code(),
                    };
                }
                Ok(0)
            }
            _ => Err(XenError::ENOSYS),
        }
    }

    fn check_grant(s: &State, dom: u16, gref: u32, write: bool) -> Result<ForeignGrant, GntStatus> {
        if !s.foreign_grants.keys().any(|(d, _)| *d == dom) {
            return Err(GntStatus::BadDomain);
        }
        let g = *s
            .foreign_grants
            .get(&(dom, gref))
            .ok_or(GntStatus::BadGntref)?;
        if g.flags & gtf::TYPE_MASK != gtf::PERMIT_ACCESS || g.granted_to != 0 {
            return Err(GntStatus::PermissionDenied);
        }
        if write && g.flags & gtf::READONLY != 0 {
            return Err(GntStatus::PermissionDenied);
        }
        Ok(g)
    }

    fn map_one(s: &mut State, op: &GnttabMapGrantRef) -> Result<u32, GntStatus> {
        if op.flags & gntmap::HOST_MAP == 0 || !op.host_addr.is_multiple_of(PAGE_SIZE as u64) {
            return Err(GntStatus::BadVirtAddr);
        }
        let readonly = op.flags & gntmap::READONLY != 0;
        Self::check_grant(s, op.dom, op.ref_, !readonly)?;
        if let Some(g) = s.foreign_grants.get_mut(&(op.dom, op.ref_)) {
            g.flags |= gtf::READING | if readonly { 0 } else { gtf::WRITING };
        }
        let handle = s.next_handle;
        s.next_handle += 1;
        s.mappings.insert(
            handle,
            Mapping {
                dom: op.dom,
                gref: op.ref_,
                host_gfn: op.host_addr >> 12,
            },
        );
        Ok(handle)
    }

    fn resolve(
        s: &State,
        end: &GnttabCopyPtr,
        is_gref: bool,
        write: bool,
    ) -> Result<(bool, u64), GntStatus> {
        if is_gref {
            let g = Self::check_grant(s, end.domid, end.ref_or_gmfn as u32, write)?;
            Ok((true, g.frame))
        } else if end.domid == DOMID_SELF {
            Ok((false, end.ref_or_gmfn))
        } else {
            // Only privileged gmfn copies from other domains exist; the fake refuses them.
            Err(GntStatus::PermissionDenied)
        }
    }

    fn copy_one(s: &mut State, op: &GnttabCopy) -> Result<(), GntStatus> {
        let len = usize::from(op.len);
        let (so, doff) = (usize::from(op.source.offset), usize::from(op.dest.offset));
        if so + len > PAGE_SIZE || doff + len > PAGE_SIZE {
            return Err(GntStatus::BadCopyArg);
        }
        let src = Self::resolve(s, &op.source, op.flags & gntcopy::SOURCE_GREF != 0, false)?;
        let dst = Self::resolve(s, &op.dest, op.flags & gntcopy::DEST_GREF != 0, true)?;
        let data = {
            let (foreign, frame) = src;
            let map = if foreign {
                &s.foreign_frames
            } else {
                &s.local_pages
            };
            map.get(&frame)
                .map_or_else(|| alloc::vec![0; len], |p| p[so..so + len].to_vec())
        };
        let (foreign, frame) = dst;
        let map = if foreign {
            &mut s.foreign_frames
        } else {
            &mut s.local_pages
        };
        map.entry(frame).or_insert_with(new_page)[doff..doff + len].copy_from_slice(&data);
        Ok(())
    }
}
