//! The physical NIC as the virtual switch's uplink (`keel-hostnet`'s [`Fabric`]): frames the
//! NIC receives are switched (to the management stack's port, to guests' VIFs), frames
//! switched to the uplink are transmitted. The management stack itself is the switch's
//! local port (`keel_vswitch::local_link`), so it no longer owns the NIC.

use keel_hostnet::{Fabric, FabricError, SharedFabric};
use keel_netdev::{NetDevice, MAX_FRAME};
use keel_vswitch::{
    local_link, LocalDevice, MacAddr, NetworkConfig, NetworkId, NetworkLockingMode, PortId,
};

/// Frames moved each way per [`Uplink::poll`] at most, so one busy direction cannot hold
/// the task.
const BUDGET: usize = 64;
/// Frames the management stack's link queues each way.
const LOCAL_LINK_DEPTH: usize = 64;
/// The management network's MTU (the stack's frames are at most `MAX_FRAME`).
const MANAGEMENT_MTU: u16 = 1500;
/// Largest frame read from the NIC: an MTU frame with an 802.1Q tag.
const RX_FRAME: usize = MAX_FRAME + 4;

/// The NIC as the fabric's uplink port.
pub struct Uplink<D> {
    nic: D,
    port: PortId,
    fabric: SharedFabric,
    rx: [u8; RX_FRAME],
}

/// What [`attach`] made: the uplink, the management network on it (untagged), and the
/// device the management stack runs on.
pub struct Attached<D> {
    pub uplink: Uplink<D>,
    pub uplink_port: PortId,
    pub management: NetworkId,
    pub local: LocalDevice,
}

/// Puts `nic` on `fabric` as an uplink carrying an untagged management network, with Keel's
/// own stack as that network's local port under the NIC's MAC (so DHCP and the API see
/// the same host as before).
pub fn attach<D: NetDevice>(
    fabric: &SharedFabric,
    nic: D,
    now_ms: u64,
) -> Result<Attached<D>, FabricError> {
    let mac = MacAddr(nic.mac_address());
    let (local, end) = local_link(mac, LOCAL_LINK_DEPTH).map_err(|_| FabricError::OutOfMemory)?;
    let mut f = fabric.borrow_mut();
    let port = f.add_uplink(MAX_FRAME, now_ms)?;
    let management = f.add_network(NetworkConfig {
        vlan: None,
        mtu: MANAGEMENT_MTU,
        uplink: Some(port),
        default_locking_mode: NetworkLockingMode::Unlocked,
    })?;
    f.add_local(management, end, mac, now_ms)?;
    drop(f);
    Ok(Attached {
        uplink: Uplink {
            nic,
            port,
            fabric: fabric.clone(),
            rx: [0; RX_FRAME],
        },
        uplink_port: port,
        management,
        local,
    })
}

impl<D: NetDevice> Uplink<D> {
    /// Moves frames: NIC → switch, management stack → switch, switch → NIC; ages the MAC
    /// table. True if anything moved (poll again soon).
    pub fn poll(&mut self, now_ms: u64) -> bool {
        let mut fabric = self.fabric.borrow_mut();
        let mut moved = false;
        for _ in 0..BUDGET {
            match self.nic.receive(&mut self.rx) {
                Ok(Some(len)) => {
                    fabric.ingress(now_ms, self.port, &self.rx[..len]);
                    moved = true;
                }
                Ok(None) => break,
                Err(e) => {
                    log::debug!("net: uplink receive: {e}");
                    break;
                }
            }
        }
        moved |= fabric.pump_local(now_ms) > 0;
        for _ in 0..BUDGET {
            if fabric.pending(self.port) == 0 || !self.nic.can_transmit() {
                break;
            }
            let nic = &mut self.nic;
            fabric.send_next(self.port, |frame| nic.transmit(frame).is_ok());
            moved = true;
        }
        fabric.maintain(now_ms);
        moved
    }

    /// Frames still waiting for the NIC.
    pub fn pending(&self) -> usize {
        self.fabric.borrow().pending(self.port)
    }
}

/// A fabric for one host.
pub fn new_fabric() -> SharedFabric {
    Fabric::shared(keel_vswitch::SwitchConfig::default())
}
