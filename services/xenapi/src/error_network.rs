//! The failures of the network classes, named and parameterised exactly as xapi's
//! `datamodel_errors.ml` has them. They reach the wire as [`ApiError::Network`].

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::error::ApiError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkError {
    /// `NETWORK_CONTAINS_VIF [vifs...]`: plugged VIFs keep the network.
    NetworkContainsVif { vifs: Vec<String> },
    /// `NETWORK_CONTAINS_PIF [pifs...]`: the network has an interface on a host.
    NetworkContainsPif { pifs: Vec<String> },
    /// `CANNOT_DESTROY_SYSTEM_NETWORK [network]`: the management network.
    CannotDestroySystemNetwork { network: String },
    /// `NETWORK_ALREADY_CONNECTED [network, connected PIF]`: a network has at most one PIF
    /// per host.
    NetworkAlreadyConnected { network: String, pif: String },
    /// `NETWORK_INCOMPATIBLE_PURPOSES [new_purpose, conflicting_purpose]`.
    NetworkIncompatiblePurposes { new: String, conflicting: String },
    /// `BRIDGE_NAME_EXISTS [bridge]`.
    BridgeNameExists { bridge: String },
    /// `INVALID_VALUE [field, value]`.
    InvalidValue { field: String, value: String },
    /// `VLAN_TAG_INVALID [VLAN]`: outside 0..=4094.
    VlanTagInvalid { tag: i64 },
    /// `PIF_IS_VLAN [PIF]`: VLANs are made on physical interfaces only.
    PifIsVlan { pif: String },
    /// `PIF_VLAN_EXISTS [PIF]`: that tag already exists on that interface (xapi names the
    /// device).
    PifVlanExists { device: String },
    /// `PIF_IS_PHYSICAL [PIF]`: only VLAN interfaces can be destroyed.
    PifIsPhysical { pif: String },
    /// `PIF_IS_MANAGEMENT_INTERFACE [PIF]`.
    PifIsManagementInterface { pif: String },
    /// `PIF_DOES_NOT_ALLOW_UNPLUG [PIF]`.
    PifDoesNotAllowUnplug { pif: String },
    /// `VIF_IN_USE [network, VIF]`: a PIF cannot go down under plugged VIFs.
    VifInUse { network: String, vif: String },
    /// `MAC_INVALID [MAC]`.
    MacInvalid { mac: String },
    /// `INVALID_DEVICE [device]`: a VIF device is a small decimal number.
    InvalidDevice { device: String },
    /// `DEVICE_ALREADY_EXISTS [device]`: the VM has a VIF with that device number.
    DeviceAlreadyExists { device: String },
    /// `DEVICE_ALREADY_ATTACHED [device]`.
    DeviceAlreadyAttached { device: String },
    /// `DEVICE_ALREADY_DETACHED [device]`.
    DeviceAlreadyDetached { device: String },
    /// `INVALID_IP_ADDRESS_SPECIFIED [parameter]`.
    InvalidIpAddressSpecified { parameter: String },
}

impl NetworkError {
    pub fn code(&self) -> &'static str {
        match self {
            NetworkError::NetworkContainsVif { .. } => "NETWORK_CONTAINS_VIF",
            NetworkError::NetworkContainsPif { .. } => "NETWORK_CONTAINS_PIF",
            NetworkError::CannotDestroySystemNetwork { .. } => "CANNOT_DESTROY_SYSTEM_NETWORK",
            NetworkError::NetworkAlreadyConnected { .. } => "NETWORK_ALREADY_CONNECTED",
            NetworkError::NetworkIncompatiblePurposes { .. } => "NETWORK_INCOMPATIBLE_PURPOSES",
            NetworkError::BridgeNameExists { .. } => "BRIDGE_NAME_EXISTS",
            NetworkError::InvalidValue { .. } => "INVALID_VALUE",
            NetworkError::VlanTagInvalid { .. } => "VLAN_TAG_INVALID",
            NetworkError::PifIsVlan { .. } => "PIF_IS_VLAN",
            NetworkError::PifVlanExists { .. } => "PIF_VLAN_EXISTS",
            NetworkError::PifIsPhysical { .. } => "PIF_IS_PHYSICAL",
            NetworkError::PifIsManagementInterface { .. } => "PIF_IS_MANAGEMENT_INTERFACE",
            NetworkError::PifDoesNotAllowUnplug { .. } => "PIF_DOES_NOT_ALLOW_UNPLUG",
            NetworkError::VifInUse { .. } => "VIF_IN_USE",
            NetworkError::MacInvalid { .. } => "MAC_INVALID",
            NetworkError::InvalidDevice { .. } => "INVALID_DEVICE",
            NetworkError::DeviceAlreadyExists { .. } => "DEVICE_ALREADY_EXISTS",
            NetworkError::DeviceAlreadyAttached { .. } => "DEVICE_ALREADY_ATTACHED",
            NetworkError::DeviceAlreadyDetached { .. } => "DEVICE_ALREADY_DETACHED",
            NetworkError::InvalidIpAddressSpecified { .. } => "INVALID_IP_ADDRESS_SPECIFIED",
        }
    }

    pub fn params(&self) -> Vec<String> {
        match self {
            NetworkError::NetworkContainsVif { vifs } => vifs.clone(),
            NetworkError::NetworkContainsPif { pifs } => pifs.clone(),
            NetworkError::NetworkAlreadyConnected { network, pif } => {
                vec![network.clone(), pif.clone()]
            }
            NetworkError::NetworkIncompatiblePurposes { new, conflicting } => {
                vec![new.clone(), conflicting.clone()]
            }
            NetworkError::InvalidValue { field, value } => vec![field.clone(), value.clone()],
            NetworkError::VlanTagInvalid { tag } => vec![tag.to_string()],
            NetworkError::VifInUse { network, vif } => vec![network.clone(), vif.clone()],
            NetworkError::CannotDestroySystemNetwork { network: one }
            | NetworkError::BridgeNameExists { bridge: one }
            | NetworkError::PifIsVlan { pif: one }
            | NetworkError::PifVlanExists { device: one }
            | NetworkError::PifIsPhysical { pif: one }
            | NetworkError::PifIsManagementInterface { pif: one }
            | NetworkError::PifDoesNotAllowUnplug { pif: one }
            | NetworkError::MacInvalid { mac: one }
            | NetworkError::InvalidDevice { device: one }
            | NetworkError::DeviceAlreadyExists { device: one }
            | NetworkError::DeviceAlreadyAttached { device: one }
            | NetworkError::DeviceAlreadyDetached { device: one }
            | NetworkError::InvalidIpAddressSpecified { parameter: one } => vec![one.clone()],
        }
    }
}

impl From<NetworkError> for ApiError {
    fn from(e: NetworkError) -> ApiError {
        ApiError::Network(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_xapi() {
        let e: ApiError = NetworkError::NetworkContainsVif {
            vifs: vec!["OpaqueRef:a".into(), "OpaqueRef:b".into()],
        }
        .into();
        assert_eq!(
            e.description(),
            vec!["NETWORK_CONTAINS_VIF", "OpaqueRef:a", "OpaqueRef:b"]
        );
        let e: ApiError = NetworkError::VlanTagInvalid { tag: 4095 }.into();
        assert_eq!(e.description(), vec!["VLAN_TAG_INVALID", "4095"]);
        let e: ApiError = NetworkError::NetworkAlreadyConnected {
            network: "OpaqueRef:n".into(),
            pif: "OpaqueRef:p".into(),
        }
        .into();
        assert_eq!(
            e.description(),
            vec!["NETWORK_ALREADY_CONNECTED", "OpaqueRef:n", "OpaqueRef:p"]
        );
    }
}
