//! A toolstack behind the `GuestBackend` trait, in memory: domains with the spec they were
//! built from, a host memory pool they draw on, shutdown requests waiting for the test to
//! play the guest (acknowledge, exit), and planned failures. Handles share one state, so a
//! test can look inside while the service owns the backend.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use keel_xenapi::{
    BootImage, BootSpec, DiskSpec, DiskVdi, DomId, GuestBackend, GuestError, PreparedStart,
    ShutdownRequest, KERNEL_HEAD_BYTES,
};

#[derive(Clone, Debug)]
pub struct FakeDomain {
    pub spec: BootSpec,
    /// The images as the backend received them.
    pub kernel: Vec<u8>,
    pub ramdisk: Option<Vec<u8>>,
    pub paused: bool,
    /// What `control/shutdown` holds, until the test acknowledges for the guest.
    pub shutdown_request: Option<ShutdownRequest>,
    pub memory_target: u64,
    pub vcpus_online: u32,
    /// Attached disks by devid (at start and by hot-plug).
    pub disks: BTreeMap<u32, DiskSpec>,
    /// Disks hot-unplugged, as `(devid, force)`.
    pub unplugged: Vec<(u32, bool)>,
}

#[derive(Debug, Default)]
pub struct State {
    pub free_memory: u64,
    pub domains: BTreeMap<DomId, FakeDomain>,
    pub next_domid: DomId,
    /// Every call, in order (`start 1`, `destroy 1`, ...).
    pub calls: Vec<String>,
    /// The next start fails with this.
    pub fail_next_start: Option<GuestError>,
    /// Destroyed domains' memory goes to `held_memory` instead of `free_memory`.
    pub hold_returned_memory: bool,
    pub held_memory: u64,
    /// Starts between prepare_start and start (their memory is taken).
    pub prepared: BTreeMap<u64, Prepared>,
    pub next_prepared: u64,
    /// Most image bytes one load_image call was given.
    pub largest_piece: usize,
    /// Starts prepared at once before prepare_start answers StartsBusy, if bounded.
    pub max_prepared: Option<usize>,
}

/// A start being prepared.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub spec: BootSpec,
    pub kernel: Vec<u8>,
    pub ramdisk: Vec<u8>,
}

#[derive(Clone)]
pub struct FakeGuests(pub Rc<RefCell<State>>);

impl FakeGuests {
    pub fn with_memory(bytes: u64) -> Self {
        FakeGuests(Rc::new(RefCell::new(State {
            free_memory: bytes,
            next_domid: 1,
            ..State::default()
        })))
    }

    pub fn domain(&self, domid: DomId) -> Option<FakeDomain> {
        self.0.borrow().domains.get(&domid).cloned()
    }

    pub fn domids(&self) -> Vec<DomId> {
        self.0.borrow().domains.keys().copied().collect()
    }

    pub fn calls(&self) -> Vec<String> {
        self.0.borrow().calls.clone()
    }

    pub fn free_memory_now(&self) -> u64 {
        self.0.borrow().free_memory
    }

    fn log(&self, call: String) {
        self.0.borrow_mut().calls.push(call);
    }
}

impl GuestBackend for FakeGuests {
    fn free_memory(&self) -> u64 {
        self.0.borrow().free_memory
    }

    fn prepare_start(
        &mut self,
        spec: &BootSpec,
        kernel_head: &[u8],
    ) -> Result<PreparedStart, GuestError> {
        let mut state = self.0.borrow_mut();
        if state
            .max_prepared
            .is_some_and(|m| state.prepared.len() >= m)
        {
            return Err(GuestError::StartsBusy);
        }
        if spec.max_memory_bytes > state.free_memory {
            return Err(GuestError::NotEnoughMemory {
                needed: spec.max_memory_bytes,
                available: state.free_memory,
            });
        }
        let expected_head = spec.kernel_size.min(KERNEL_HEAD_BYTES as u64) as usize;
        assert_eq!(kernel_head.len(), expected_head, "the kernel's head");
        if !kernel_head.starts_with(b"\x7fELF") {
            return Err(GuestError::InvalidImage {
                reason: "PV_kernel is not an ELF image".into(),
            });
        }
        state.free_memory -= spec.max_memory_bytes;
        let id = state.next_prepared;
        state.next_prepared += 1;
        state.calls.push(format!("prepare_start {id}"));
        let prepared = Prepared {
            spec: spec.clone(),
            kernel: kernel_head.to_vec(),
            ramdisk: Vec::new(),
        };
        state.prepared.insert(id, prepared);
        Ok(PreparedStart(id))
    }

    fn load_image(
        &mut self,
        start: PreparedStart,
        image: BootImage,
        bytes: &[u8],
    ) -> Result<(), GuestError> {
        let mut state = self.0.borrow_mut();
        state.largest_piece = state.largest_piece.max(bytes.len());
        let p = state
            .prepared
            .get_mut(&start.0)
            .ok_or(GuestError::Failed("no such prepared start".into()))?;
        match image {
            BootImage::Kernel => {
                assert!(p.ramdisk.is_empty(), "kernel bytes after the ramdisk's");
                p.kernel.extend_from_slice(bytes);
                assert!(p.kernel.len() as u64 <= p.spec.kernel_size);
            }
            BootImage::Ramdisk => {
                assert_eq!(p.kernel.len() as u64, p.spec.kernel_size, "ramdisk early");
                p.ramdisk.extend_from_slice(bytes);
                assert!(Some(p.ramdisk.len() as u64) <= p.spec.ramdisk_size);
            }
        }
        Ok(())
    }

    fn start(&mut self, start: PreparedStart, spec: BootSpec) -> Result<DomId, GuestError> {
        let mut state = self.0.borrow_mut();
        let prepared = state
            .prepared
            .remove(&start.0)
            .ok_or(GuestError::Failed("no such prepared start".into()))?;
        if let Some(e) = state.fail_next_start.take() {
            state.free_memory += prepared.spec.max_memory_bytes;
            return Err(e);
        }
        assert_eq!(
            prepared.kernel.len() as u64,
            spec.kernel_size,
            "the whole kernel"
        );
        assert_eq!(
            spec.ramdisk_size,
            spec.ramdisk_size.map(|_| prepared.ramdisk.len() as u64),
            "the whole ramdisk"
        );
        let domid = state.next_domid;
        state.next_domid += 1;
        state.calls.push(format!("start {domid}"));
        let domain = FakeDomain {
            paused: spec.paused,
            shutdown_request: None,
            memory_target: spec.target_memory_bytes,
            vcpus_online: spec.vcpus_at_startup,
            disks: spec.disks.iter().map(|d| (d.devid, d.clone())).collect(),
            unplugged: Vec::new(),
            kernel: prepared.kernel,
            ramdisk: spec.ramdisk_size.map(|_| prepared.ramdisk),
            spec,
        };
        state.domains.insert(domid, domain);
        Ok(domid)
    }

    fn abandon_start(&mut self, start: PreparedStart) {
        let mut state = self.0.borrow_mut();
        if let Some(p) = state.prepared.remove(&start.0) {
            state.free_memory += p.spec.max_memory_bytes;
            state.calls.push(format!("abandon_start {}", start.0));
        }
    }

    fn request_shutdown(
        &mut self,
        domid: DomId,
        request: ShutdownRequest,
    ) -> Result<(), GuestError> {
        self.log(format!(
            "request_shutdown {domid} {}",
            request.control_value()
        ));
        let mut state = self.0.borrow_mut();
        let domain = state
            .domains
            .get_mut(&domid)
            .ok_or(GuestError::NoSuchDomain(domid))?;
        domain.shutdown_request = Some(request);
        Ok(())
    }

    fn destroy(&mut self, domid: DomId) -> Result<(), GuestError> {
        self.log(format!("destroy {domid}"));
        let mut state = self.0.borrow_mut();
        let domain = state
            .domains
            .remove(&domid)
            .ok_or(GuestError::NoSuchDomain(domid))?;
        if state.hold_returned_memory {
            state.held_memory += domain.spec.max_memory_bytes;
        } else {
            state.free_memory += domain.spec.max_memory_bytes;
        }
        Ok(())
    }

    fn pause(&mut self, domid: DomId) -> Result<(), GuestError> {
        self.log(format!("pause {domid}"));
        let mut state = self.0.borrow_mut();
        let domain = state
            .domains
            .get_mut(&domid)
            .ok_or(GuestError::NoSuchDomain(domid))?;
        domain.paused = true;
        Ok(())
    }

    fn unpause(&mut self, domid: DomId) -> Result<(), GuestError> {
        self.log(format!("unpause {domid}"));
        let mut state = self.0.borrow_mut();
        let domain = state
            .domains
            .get_mut(&domid)
            .ok_or(GuestError::NoSuchDomain(domid))?;
        domain.paused = false;
        Ok(())
    }

    fn set_memory_target(&mut self, domid: DomId, bytes: u64) -> Result<(), GuestError> {
        self.log(format!("set_memory_target {domid} {bytes}"));
        let mut state = self.0.borrow_mut();
        let domain = state
            .domains
            .get_mut(&domid)
            .ok_or(GuestError::NoSuchDomain(domid))?;
        domain.memory_target = bytes;
        Ok(())
    }

    fn set_vcpus_online(&mut self, domid: DomId, count: u32) -> Result<(), GuestError> {
        self.log(format!("set_vcpus_online {domid} {count}"));
        let mut state = self.0.borrow_mut();
        let domain = state
            .domains
            .get_mut(&domid)
            .ok_or(GuestError::NoSuchDomain(domid))?;
        domain.vcpus_online = count;
        Ok(())
    }

    fn attach_disk(&mut self, domid: DomId, disk: DiskSpec) -> Result<(), GuestError> {
        self.log(format!("attach_disk {domid} {}", disk.device));
        let mut state = self.0.borrow_mut();
        let domain = state
            .domains
            .get_mut(&domid)
            .ok_or(GuestError::NoSuchDomain(domid))?;
        if domain.disks.contains_key(&disk.devid) {
            return Err(GuestError::Failed(format!("devid {} in use", disk.devid)));
        }
        domain.disks.insert(disk.devid, disk);
        Ok(())
    }

    fn detach_disk(&mut self, domid: DomId, devid: u32, force: bool) -> Result<(), GuestError> {
        self.log(format!("detach_disk {domid} {devid} force={force}"));
        let mut state = self.0.borrow_mut();
        let domain = state
            .domains
            .get_mut(&domid)
            .ok_or(GuestError::NoSuchDomain(domid))?;
        domain
            .disks
            .remove(&devid)
            .ok_or_else(|| GuestError::Failed(format!("no devid {devid}")))?;
        domain.unplugged.push((devid, force));
        Ok(())
    }

    fn change_medium(
        &mut self,
        domid: DomId,
        devid: u32,
        vdi: Option<DiskVdi>,
    ) -> Result<(), GuestError> {
        self.log(format!("change_medium {domid} {devid}"));
        let mut state = self.0.borrow_mut();
        let disk = state
            .domains
            .get_mut(&domid)
            .and_then(|d| d.disks.get_mut(&devid))
            .ok_or_else(|| GuestError::Failed(format!("no devid {devid}")))?;
        disk.vdi = vdi;
        Ok(())
    }
}

impl FakeGuests {
    /// Memory of destroyed domains comes back only when the test says so (as Xen returns
    /// it once the domain is finally gone).
    pub fn hold_returned_memory(&self) {
        self.0.borrow_mut().hold_returned_memory = true;
    }

    /// Returns the memory held back since [`FakeGuests::hold_returned_memory`].
    pub fn release_returned_memory(&self) {
        let mut state = self.0.borrow_mut();
        state.free_memory += state.held_memory;
        state.held_memory = 0;
        state.hold_returned_memory = false;
    }
}
