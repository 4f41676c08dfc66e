//! The switch and its ports' output queues.
//!
//! [`Fabric::ingress`] runs the switch's decision for one frame and copies the frame (with
//! its tag edit) into the output of every port it goes to: the management stack's link for
//! the local port, a bounded [`FrameQueue`] for an uplink or a VIF. A full queue drops the
//! copy and counts it on that port (`EgressQueueFull`), so a slow consumer never holds up
//! the others. The queues' buffers are allocated (fallibly) when the port is added; nothing
//! is allocated per frame.

use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

use keel_vswitch::{
    ConfigError, FrameQueue, LocalPortEnd, NetworkConfig, NetworkId, PortConfig, PortCounters,
    PortId, QueueError, Switch, SwitchConfig, Verdict, VifConfig,
};

/// Frames an uplink's output queue holds (what the NIC has not taken yet).
pub const UPLINK_QUEUE: usize = 256;
/// Frames a VIF's output queue holds (what its netback has not taken yet).
pub const VIF_QUEUE: usize = 64;
/// How often [`Fabric::maintain`] reclaims aged MAC-table entries.
pub const AGE_INTERVAL_MS: u64 = 5_000;
/// 802.1Q tag length: an uplink's frames may carry one.
const VLAN_TAG: usize = 4;
/// Frames the management stack sent that one [`Fabric::pump_local`] switches at most.
const LOCAL_BUDGET: usize = 64;

/// The fabric, shared by the tasks that own its ports (one CPU: never borrowed across an
/// `await`).
pub type SharedFabric = Rc<RefCell<Fabric>>;

/// Why a port or network could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FabricError {
    /// The switch refused the configuration.
    Config(ConfigError),
    /// The port's output queue could not be allocated.
    OutOfMemory,
    /// The switch already has a local port (there is one management stack).
    LocalPortTaken,
}

impl From<ConfigError> for FabricError {
    fn from(e: ConfigError) -> Self {
        FabricError::Config(e)
    }
}

/// Where frames switched to a port wait.
#[derive(Debug)]
enum Output {
    Queue(FrameQueue),
    Local(LocalPortEnd),
}

/// The host's switch and its ports' outputs.
#[derive(Debug)]
pub struct Fabric {
    switch: Switch,
    outputs: BTreeMap<PortId, Output>,
    local: Option<PortId>,
    /// Uplink ports (their owner is the network task, not the guest task).
    uplinks: Vec<PortId>,
    /// A frame was queued for a guest's port since [`Fabric::take_guest_frames`].
    guest_frames: bool,
    /// A frame was queued for an uplink or delivered to the management stack since
    /// [`Fabric::take_host_frames`].
    host_frames: bool,
    next_age_ms: u64,
}

impl Fabric {
    pub fn new(config: SwitchConfig) -> Fabric {
        Fabric {
            switch: Switch::new(config),
            outputs: BTreeMap::new(),
            local: None,
            uplinks: Vec::new(),
            guest_frames: false,
            host_frames: false,
            next_age_ms: AGE_INTERVAL_MS,
        }
    }

    /// A new fabric to share between tasks.
    pub fn shared(config: SwitchConfig) -> SharedFabric {
        Rc::new(RefCell::new(Fabric::new(config)))
    }

    /// The switch, for its counters and configuration.
    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// Networks: added, changed and removed on the switch directly (ports stay).
    pub fn add_network(&mut self, config: NetworkConfig) -> Result<NetworkId, FabricError> {
        Ok(self.switch.add_network(config)?)
    }

    pub fn reconfigure_network(
        &mut self,
        id: NetworkId,
        config: NetworkConfig,
    ) -> Result<(), FabricError> {
        Ok(self.switch.reconfigure_network(id, config)?)
    }

    pub fn remove_network(&mut self, id: NetworkId) -> Result<(), FabricError> {
        Ok(self.switch.remove_network(id)?)
    }

    /// A physical NIC whose frames may be up to `max_frame` bytes untagged (the largest
    /// MTU it carries + 14); its queue takes them tagged.
    pub fn add_uplink(&mut self, max_frame: usize, now_ms: u64) -> Result<PortId, FabricError> {
        let queue = FrameQueue::new(UPLINK_QUEUE, max_frame + VLAN_TAG)
            .map_err(|_| FabricError::OutOfMemory)?;
        self.uplinks
            .try_reserve(1)
            .map_err(|_| FabricError::OutOfMemory)?;
        let port = self.add_port(PortConfig::Uplink, Output::Queue(queue), now_ms)?;
        self.uplinks.push(port);
        Ok(port)
    }

    /// Keel's own stack on `network`: frames for it go straight into its link.
    pub fn add_local(
        &mut self,
        network: NetworkId,
        end: LocalPortEnd,
        mac: keel_vswitch::MacAddr,
        now_ms: u64,
    ) -> Result<PortId, FabricError> {
        if self.local.is_some() {
            return Err(FabricError::LocalPortTaken);
        }
        let port = self.add_port(
            PortConfig::Local { network, mac },
            Output::Local(end),
            now_ms,
        )?;
        self.local = Some(port);
        Ok(port)
    }

    /// A guest's VIF, whose frames are at most `max_frame` bytes.
    pub fn add_vif(
        &mut self,
        config: VifConfig,
        max_frame: usize,
        now_ms: u64,
    ) -> Result<PortId, FabricError> {
        let queue = FrameQueue::new(VIF_QUEUE, max_frame).map_err(|_| FabricError::OutOfMemory)?;
        self.add_port(PortConfig::Vif(config), Output::Queue(queue), now_ms)
    }

    fn add_port(
        &mut self,
        config: PortConfig,
        output: Output,
        now_ms: u64,
    ) -> Result<PortId, FabricError> {
        let port = self.switch.add_port(config, now_ms)?;
        self.outputs.insert(port, output);
        Ok(port)
    }

    /// Changes a VIF's filter or network (the switch forgets what it learned on it).
    pub fn reconfigure_vif(&mut self, port: PortId, config: VifConfig) -> Result<(), FabricError> {
        Ok(self
            .switch
            .reconfigure_port(port, PortConfig::Vif(config))?)
    }

    /// Removes a port and whatever waits in its output; returns its final counters.
    pub fn remove_port(&mut self, port: PortId) -> Result<PortCounters, FabricError> {
        let counters = self.switch.remove_port(port)?;
        self.outputs.remove(&port);
        if self.local == Some(port) {
            self.local = None;
        }
        self.uplinks.retain(|p| *p != port);
        Ok(counters)
    }

    /// Switches one frame that came in on `port` and queues its copies. Returns the
    /// switch's verdict (a drop is already counted by the switch).
    pub fn ingress(&mut self, now_ms: u64, port: PortId, frame: &[u8]) -> Verdict {
        let forward = self.switch.ingress(now_ms, port, frame);
        let verdict = forward.verdict;
        // At most one delivery per port; refused copies are counted after the switch is
        // free again.
        let mut refused: [Option<PortId>; 8] = [None; 8];
        let mut more_refused: Vec<PortId> = Vec::new();
        let mut n_refused = 0;
        for delivery in forward.deliveries {
            let queued = match self.outputs.get_mut(&delivery.port) {
                Some(Output::Queue(queue)) => {
                    let pushed = queue.push(frame, delivery.edit);
                    let to_uplink = self.uplinks.contains(&delivery.port);
                    self.guest_frames |= pushed.is_ok() && !to_uplink;
                    self.host_frames |= pushed.is_ok() && to_uplink;
                    pushed
                }
                Some(Output::Local(end)) => {
                    let delivered = end.deliver(frame, delivery.edit);
                    self.host_frames |= delivered.is_ok();
                    delivered
                }
                None => Err(QueueError::Full),
            };
            if queued.is_err() {
                if let Some(slot) = refused.get_mut(n_refused) {
                    *slot = Some(delivery.port);
                    n_refused += 1;
                } else if more_refused.try_reserve(1).is_ok() {
                    more_refused.push(delivery.port);
                }
            }
        }
        for port in refused.iter().flatten().chain(&more_refused) {
            self.switch.record_egress_drop(*port);
        }
        verdict
    }

    /// Switches what the management stack sent (at most a budget of frames). Returns how
    /// many.
    pub fn pump_local(&mut self, now_ms: u64) -> usize {
        let Some(port) = self.local else {
            return 0;
        };
        let Some(Output::Local(end)) = self.outputs.get(&port) else {
            return 0;
        };
        let end = end.clone();
        let mut n = 0;
        while n < LOCAL_BUDGET {
            if end
                .with_transmitted(|frame| self.ingress(now_ms, port, frame))
                .is_none()
            {
                break;
            }
            n += 1;
        }
        n
    }

    /// Whether a frame was queued for a guest's port (a VIF) since the last call: the task
    /// that switched it wakes the one that serves guests.
    pub fn take_guest_frames(&mut self) -> bool {
        core::mem::take(&mut self.guest_frames)
    }

    /// Whether a frame was queued for an uplink or handed to the management stack since the
    /// last call: the guest task, which switches guests' frames, wakes the network task,
    /// which owns the NIC and the stack (and polls the NIC less often while it is idle).
    pub fn take_host_frames(&mut self) -> bool {
        core::mem::take(&mut self.host_frames)
    }

    /// Frames waiting in `port`'s output queue.
    pub fn pending(&self, port: PortId) -> usize {
        match self.outputs.get(&port) {
            Some(Output::Queue(queue)) => queue.len(),
            Some(Output::Local(end)) => end.pending(),
            None => 0,
        }
    }

    /// Hands the oldest frame switched to `port` to `send` and releases it. `send` says
    /// whether the frame went out; one that did not (the device refused it) is dropped and
    /// counted on the port. Check that the device can take a frame before calling this.
    /// `None` when nothing waits.
    pub fn send_next(&mut self, port: PortId, send: impl FnOnce(&[u8]) -> bool) -> Option<bool> {
        let Some(Output::Queue(queue)) = self.outputs.get_mut(&port) else {
            return None;
        };
        let frame = queue.pop()?;
        let sent = send(&frame);
        queue.recycle(frame);
        if !sent {
            self.switch.record_egress_drop(port);
        }
        Some(sent)
    }

    /// Reclaims aged MAC-table entries every [`AGE_INTERVAL_MS`]; true if it ran.
    pub fn maintain(&mut self, now_ms: u64) -> bool {
        if now_ms < self.next_age_ms {
            return false;
        }
        self.switch.age(now_ms);
        self.next_age_ms = now_ms.saturating_add(AGE_INTERVAL_MS);
        true
    }
}
