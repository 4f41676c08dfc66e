//! Controller bring-up and the admin queue: disable, program the admin queue, enable,
//! identify the controller and its namespaces, negotiate and create I/O queues, and reset.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::command::{admin, cns, Command, FEATURE_NUMBER_OF_QUEUES};
use crate::error::{NvmeError, Waiting};
use crate::hal::{Hal, Registers, PAGE_SIZE};
use crate::identify::{active_namespaces, ControllerIdentity, NamespaceIdentity, IDENTIFY_LEN};
use crate::mem::Shared;
use crate::queue::QueuePair;
use crate::regs::{self, Capabilities};

/// Admin queue size: admin commands are issued one at a time, so a small ring suffices.
const ADMIN_ENTRIES: u16 = 16;
/// How long an admin command may take.
const ADMIN_TIMEOUT_MS: u32 = 5_000;
/// Poll step while waiting for the controller.
const POLL_US: u32 = 10;
/// At most this many namespaces are identified.
const MAX_NAMESPACES: usize = 64;
/// The admin command id; only one admin command is ever outstanding.
const ADMIN_CID: u16 = 0;

/// A started controller with its admin queue.
pub struct Controller<R: Registers, H: Hal> {
    pub(crate) regs: R,
    pub(crate) hal: H,
    cap: Capabilities,
    admin: QueuePair,
    /// One page for Identify data and other admin payloads.
    scratch: Shared,
    identity: ControllerIdentity,
    namespaces: Vec<NamespaceIdentity>,
    version: u32,
}

impl<R: Registers, H: Hal> Controller<R, H> {
    /// Resets and enables the controller, identifies it and its active namespaces.
    pub fn start(regs: R, mut hal: H) -> Result<Self, NvmeError> {
        let cap = Capabilities::decode(regs.read64(regs::CAP));
        if !cap.nvm_command_set {
            return Err(NvmeError::NoNvmCommandSet);
        }
        if !(cap.min_page_size..=cap.max_page_size).contains(&(PAGE_SIZE as u64)) {
            return Err(NvmeError::PageSizeUnsupported {
                min: cap.min_page_size,
                max: cap.max_page_size,
            });
        }
        let entries = ADMIN_ENTRIES.min(cap.max_queue_entries.min(4096) as u16);
        let admin = QueuePair::new(&mut hal, 0, entries)?;
        let scratch = match hal.allocate(1) {
            Some(region) => Shared::new(region),
            None => {
                admin.free(&mut hal);
                return Err(NvmeError::NoMemory);
            }
        };
        let version = regs.read32(regs::VS);
        let mut controller = Controller {
            regs,
            hal,
            cap,
            admin,
            scratch,
            identity: ControllerIdentity::parse(&[]),
            namespaces: Vec::new(),
            version,
        };
        controller.enable()?;
        controller.identify()?;
        Ok(controller)
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.cap
    }

    pub fn identity(&self) -> &ControllerIdentity {
        &self.identity
    }

    /// The specification version the controller implements, as (major, minor).
    pub fn version(&self) -> (u16, u8) {
        ((self.version >> 16) as u16, (self.version >> 8) as u8)
    }

    /// Active namespaces with a supported format, in id order.
    pub fn namespaces(&self) -> &[NamespaceIdentity] {
        &self.namespaces
    }

    /// A stable name for namespace `nsid`: `nvme-<serial>-n<nsid>`, the serial reduced to
    /// characters that survive a kernel command line. `None` if the serial is empty.
    pub fn default_identity(&self, nsid: u32) -> Option<String> {
        let serial: String = self
            .identity
            .serial
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        (!serial.is_empty()).then(|| format!("nvme-{serial}-n{nsid}"))
    }

    pub fn fatal_status(&self) -> bool {
        self.regs.read32(regs::CSTS) & regs::CSTS_CFS != 0
    }

    /// Clears CC.EN and waits for CSTS.RDY to follow; this also clears a fatal status and
    /// deletes every I/O queue.
    fn disable(&mut self) -> Result<(), NvmeError> {
        let cc = self.regs.read32(regs::CC);
        let csts = self.regs.read32(regs::CSTS);
        if cc & regs::CC_EN == 0 && csts & regs::CSTS_RDY == 0 {
            return Ok(());
        }
        self.regs.write32(regs::CC, cc & !regs::CC_EN);
        self.wait_ready(false)
    }

    fn wait_ready(&mut self, ready: bool) -> Result<(), NvmeError> {
        let waiting_for = if ready {
            Waiting::Enable
        } else {
            Waiting::Disable
        };
        let steps = u64::from(self.cap.ready_timeout_ms) * 1000 / u64::from(POLL_US);
        for _ in 0..=steps {
            let csts = self.regs.read32(regs::CSTS);
            if ready && csts & regs::CSTS_CFS != 0 {
                return Err(NvmeError::ControllerFatal);
            }
            if (csts & regs::CSTS_RDY != 0) == ready {
                return Ok(());
            }
            self.hal.delay_us(POLL_US);
        }
        Err(NvmeError::Timeout { waiting_for })
    }

    /// Disables the controller, programs a fresh admin queue and enables it again.
    pub(crate) fn enable(&mut self) -> Result<(), NvmeError> {
        self.disable()?;
        self.admin.reset();
        let size = u32::from(self.admin.entries() - 1);
        self.regs.write32(regs::AQA, size | (size << 16));
        self.regs.write64(regs::ASQ, self.admin.sq_bus());
        self.regs.write64(regs::ACQ, self.admin.cq_bus());
        // CSS 0 (NVM), MPS 0 (4 KiB), round robin, 64-byte SQ and 16-byte CQ entries.
        self.regs.write32(
            regs::CC,
            regs::CC_IOSQES_64 | regs::CC_IOCQES_16 | regs::CC_EN,
        );
        self.wait_ready(true)?;
        // Keel polls; keep the pin interrupt quiet.
        self.regs.write32(regs::INTMS, u32::MAX);
        Ok(())
    }

    /// Runs one admin command to completion and returns its result dword.
    pub(crate) fn admin_command(&mut self, mut command: Command) -> Result<u32, NvmeError> {
        let opcode = command.opcode;
        command.cid = ADMIN_CID;
        let tail = self.admin.push(&command).ok_or(NvmeError::Timeout {
            waiting_for: Waiting::AdminCompletion { opcode },
        })?;
        self.regs.write32(self.cap.sq_doorbell(0), u32::from(tail));
        let steps = ADMIN_TIMEOUT_MS * 1000 / POLL_US;
        for _ in 0..=steps {
            if let Some(entry) = self.admin.pop() {
                self.regs
                    .write32(self.cap.cq_doorbell(0), u32::from(self.admin.cq_head()));
                if entry.cid != ADMIN_CID {
                    return Err(NvmeError::UnexpectedCompletion { cid: entry.cid });
                }
                if !entry.status.is_success() {
                    return Err(NvmeError::AdminCommand {
                        opcode,
                        status: entry.status,
                    });
                }
                return Ok(entry.result);
            }
            if self.fatal_status() {
                return Err(NvmeError::ControllerFatal);
            }
            self.hal.delay_us(POLL_US);
        }
        Err(NvmeError::Timeout {
            waiting_for: Waiting::AdminCompletion { opcode },
        })
    }

    /// Identify with the scratch page as the data buffer; returns a copy of the data.
    fn identify_page(&mut self, cns_value: u32, nsid: u32) -> Result<Vec<u8>, NvmeError> {
        self.scratch.zero();
        let mut command = Command::new(admin::IDENTIFY);
        command.nsid = nsid;
        command.prp1 = self.scratch.bus();
        command.cdw[0] = cns_value;
        self.admin_command(command)?;
        let mut data = vec![0u8; IDENTIFY_LEN];
        self.scratch.read(0, &mut data);
        Ok(data)
    }

    fn identify(&mut self) -> Result<(), NvmeError> {
        let data = self.identify_page(cns::CONTROLLER, 0)?;
        self.identity = ControllerIdentity::parse(&data);
        // The active list exists since NVMe 1.1; older controllers list 1..=NN.
        let ids = match self.identify_page(cns::ACTIVE_NAMESPACES, 0) {
            Ok(list) => active_namespaces(&list),
            Err(NvmeError::AdminCommand { .. }) => (1..=self.identity.namespace_count).collect(),
            Err(e) => return Err(e),
        };
        self.namespaces.clear();
        for nsid in ids.into_iter().take(MAX_NAMESPACES) {
            let data = self.identify_page(cns::NAMESPACE, nsid)?;
            if let Some(ns) = NamespaceIdentity::parse(nsid, &data) {
                if ns.metadata_size == 0 {
                    self.namespaces.push(ns);
                }
            }
        }
        Ok(())
    }

    /// Asks for one I/O queue pair (Set Features, Number of Queues).
    pub(crate) fn request_io_queues(&mut self) -> Result<(), NvmeError> {
        let mut command = Command::new(admin::SET_FEATURES);
        command.cdw[0] = FEATURE_NUMBER_OF_QUEUES;
        command.cdw[1] = 0; // one submission and one completion queue (zero-based)
                            // Success means at least one of each was granted (the counts in the result are
                            // zero-based); Keel uses exactly one pair.
        self.admin_command(command).map(|_| ())
    }

    /// Creates `queue` on the controller: the completion queue first, then the submission
    /// queue that posts to it. Interrupts stay off: Keel polls.
    pub(crate) fn create_io_queue(&mut self, queue: &QueuePair) -> Result<(), NvmeError> {
        let size_and_id = (u32::from(queue.entries() - 1) << 16) | u32::from(queue.id);
        let mut cq = Command::new(admin::CREATE_IO_CQ);
        cq.prp1 = queue.cq_bus();
        cq.cdw[0] = size_and_id;
        cq.cdw[1] = 1; // physically contiguous, interrupts disabled
        self.admin_command(cq)?;
        let mut sq = Command::new(admin::CREATE_IO_SQ);
        sq.prp1 = queue.sq_bus();
        sq.cdw[0] = size_and_id;
        sq.cdw[1] = (u32::from(queue.id) << 16) | 1; // completion queue id, contiguous
        self.admin_command(sq)?;
        Ok(())
    }

    pub(crate) fn sq_doorbell(&self, qid: u16) -> usize {
        self.cap.sq_doorbell(qid)
    }

    pub(crate) fn cq_doorbell(&self, qid: u16) -> usize {
        self.cap.cq_doorbell(qid)
    }

    /// Gives the controller's memory back (the controller is disabled first so it stops
    /// using it). Returns the register window and the HAL.
    pub fn stop(mut self) -> (R, H) {
        let _ = self.disable();
        self.admin.free(&mut self.hal);
        self.hal.free(self.scratch.into_region());
        (self.regs, self.hal)
    }
}
