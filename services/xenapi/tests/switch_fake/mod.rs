//! The virtual switch and netback behind the `NetworkBackend` trait, in memory: bridges with
//! their configuration, VIF ports with theirs, every call in order, and planned failures.
//! Handles share one state, so a test can look inside while the service owns the backend.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use keel_xenapi::{BridgeConfig, DomId, NetworkBackend, NetworkBackendError, VifPort};

#[derive(Debug, Default)]
pub struct State {
    pub bridges: BTreeMap<String, BridgeConfig>,
    /// Attached VIFs by (domid, device).
    pub ports: BTreeMap<(DomId, u32), VifPort>,
    /// Every call, in order (`configure xenbr0`, `attach 1/0`, ...).
    pub calls: Vec<String>,
    /// The next call of any kind fails with this.
    pub fail_next: Option<NetworkBackendError>,
}

#[derive(Clone, Default)]
pub struct FakeSwitch(pub Rc<RefCell<State>>);

impl FakeSwitch {
    pub fn bridge(&self, name: &str) -> Option<BridgeConfig> {
        self.0.borrow().bridges.get(name).cloned()
    }

    pub fn port(&self, domid: DomId, device: u32) -> Option<VifPort> {
        self.0.borrow().ports.get(&(domid, device)).cloned()
    }

    pub fn ports(&self) -> Vec<(DomId, u32)> {
        self.0.borrow().ports.keys().copied().collect()
    }

    pub fn calls(&self) -> Vec<String> {
        self.0.borrow().calls.clone()
    }

    pub fn fail_next(&self, e: NetworkBackendError) {
        self.0.borrow_mut().fail_next = Some(e);
    }

    /// What the kernel does when the toolstack destroys a domain: its netback devices, and
    /// so its ports, go with it (network_backend.rs).
    pub fn domain_destroyed(&self, domid: DomId) {
        self.0.borrow_mut().ports.retain(|(d, _), _| *d != domid);
    }

    fn begin(&self, call: String) -> Result<(), NetworkBackendError> {
        let mut state = self.0.borrow_mut();
        state.calls.push(call);
        match state.fail_next.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl NetworkBackend for FakeSwitch {
    fn configure_bridge(&mut self, config: &BridgeConfig) -> Result<(), NetworkBackendError> {
        self.begin(format!("configure {}", config.bridge))?;
        self.0
            .borrow_mut()
            .bridges
            .insert(config.bridge.clone(), config.clone());
        Ok(())
    }

    fn remove_bridge(&mut self, bridge: &str) -> Result<(), NetworkBackendError> {
        self.begin(format!("remove {bridge}"))?;
        let mut state = self.0.borrow_mut();
        if state.ports.values().any(|p| p.bridge == bridge) {
            return Err(NetworkBackendError::Failed(format!("{bridge} has ports")));
        }
        match state.bridges.remove(bridge) {
            Some(_) => Ok(()),
            None => Err(NetworkBackendError::NoSuchBridge(bridge.to_string())),
        }
    }

    fn attach_vif(&mut self, port: &VifPort) -> Result<(), NetworkBackendError> {
        self.begin(format!("attach {}/{}", port.domid, port.device))?;
        let mut state = self.0.borrow_mut();
        if !state.bridges.contains_key(&port.bridge) {
            return Err(NetworkBackendError::NoSuchBridge(port.bridge.clone()));
        }
        state.ports.insert((port.domid, port.device), port.clone());
        Ok(())
    }

    fn detach_vif(
        &mut self,
        domid: DomId,
        device: u32,
        force: bool,
    ) -> Result<(), NetworkBackendError> {
        let how = if force { "force-detach" } else { "detach" };
        self.begin(format!("{how} {domid}/{device}"))?;
        match self.0.borrow_mut().ports.remove(&(domid, device)) {
            Some(_) => Ok(()),
            None => Err(NetworkBackendError::NoSuchDomain(domid)),
        }
    }

    fn update_vif(&mut self, port: &VifPort) -> Result<(), NetworkBackendError> {
        self.begin(format!("update {}/{}", port.domid, port.device))?;
        let mut state = self.0.borrow_mut();
        if !state.bridges.contains_key(&port.bridge) {
            return Err(NetworkBackendError::NoSuchBridge(port.bridge.clone()));
        }
        match state.ports.get_mut(&(port.domid, port.device)) {
            Some(slot) => {
                *slot = port.clone();
                Ok(())
            }
            None => Err(NetworkBackendError::NoSuchDomain(port.domid)),
        }
    }
}
