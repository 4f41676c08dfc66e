//! The network classes of the data model: `network`, `PIF`, `PIF_metrics`, `VIF`,
//! `VIF_metrics` and `VLAN` (declarations only; the handlers are in `handlers/network.rs`,
//! `pif.rs`, `vlan.rs` and `vif.rs`).
//!
//! Every field of xapi's records is present (xapi's `ocaml/idl/datamodel.ml`), so clients
//! that read them find them; a feature Keel does not have (bonds, tunnels, SR-IOV, blobs,
//! xapi-managed DHCP) keeps the value xapi shows when it is off. `PIF_metrics` and
//! `VIF_metrics` carry the switch's counters as rates (`io_read_kbs`: KiB/s received by the
//! interface, `io_write_kbs`: sent), which xapi moved to RRDs; Keel has no RRDs, so the
//! records still say it.

use crate::handlers::{network, pif, vif, vlan};
use crate::schema::FieldType::{self, *};
use crate::schema::{inverse, msg, param, ro, rw, ClassDecl, FieldDecl, OBJECTS};

const STRING_MAP: FieldType = Map(&String, &String);
const STRING_SET: FieldType = Set(&String);

const fn uuid() -> FieldDecl {
    ro("uuid", String)
}
const fn other_config() -> FieldDecl {
    rw("other_config", STRING_MAP)
}

/// xapi's `network_operations`.
pub const NETWORK_OPERATIONS: &[&str] = &["attaching"];
/// xapi's `network_default_locking_mode`.
pub const NETWORK_DEFAULT_LOCKING_MODES: &[&str] = &["unlocked", "disabled"];
/// xapi's `network_purpose`.
pub const NETWORK_PURPOSES: &[&str] = &["nbd", "insecure_nbd"];
/// xapi's `ip_configuration_mode`.
pub const IP_CONFIGURATION_MODES: &[&str] = &["None", "DHCP", "Static"];
/// xapi's `ipv6_configuration_mode`.
pub const IPV6_CONFIGURATION_MODES: &[&str] = &["None", "DHCP", "Static", "Autoconf"];
/// xapi's `primary_address_type`.
pub const PRIMARY_ADDRESS_TYPES: &[&str] = &["IPv4", "IPv6"];
/// xapi's `pif_igmp_status`.
pub const IGMP_STATUSES: &[&str] = &["enabled", "disabled", "unknown"];
/// xapi's `vif_operations`.
pub const VIF_OPERATIONS: &[&str] = &["attach", "plug", "unplug"];
/// xapi's `vif_locking_mode`.
pub const VIF_LOCKING_MODES: &[&str] = &["network_default", "locked", "unlocked", "disabled"];
/// xapi's `vif_ipv4_configuration_mode` (`DHCP` since 26.16.0).
pub const VIF_IPV4_CONFIGURATION_MODES: &[&str] = &["None", "Static", "DHCP"];
/// xapi's `vif_ipv6_configuration_mode` (`Autoconf` since 26.16.0).
pub const VIF_IPV6_CONFIGURATION_MODES: &[&str] = &["None", "Static", "Autoconf"];

const NETWORK_REF: FieldType = Ref("network");
const PIF_REF: FieldType = Ref("PIF");
const VIF_REF: FieldType = Ref("VIF");
const VLAN_REF: FieldType = Ref("VLAN");

pub static NETWORK: ClassDecl = ClassDecl {
    name: "network",
    flags: OBJECTS,
    fields: &[
        uuid(),
        rw("name_label", String),
        rw("name_description", String),
        ro("allowed_operations", Set(&Enum(NETWORK_OPERATIONS))),
        ro(
            "current_operations",
            Map(&String, &Enum(NETWORK_OPERATIONS)),
        ),
        inverse("VIFs", "VIF", "network"),
        inverse("PIFs", "PIF", "network"),
        // Checked setter (`set_MTU`): the switch is told.
        ro("MTU", Int),
        other_config(),
        ro("bridge", String),
        ro("managed", Bool),
        ro("blobs", Map(&String, &Ref("blob"))),
        rw("tags", STRING_SET),
        ro("default_locking_mode", Enum(NETWORK_DEFAULT_LOCKING_MODES)),
        ro("assigned_ips", Map(&VIF_REF, &String)),
        ro("purpose", Set(&Enum(NETWORK_PURPOSES))),
    ],
    messages: &[
        msg(
            "create",
            &[param("args", Map(&String, &Any))],
            network::create,
        )
        .asyncable(),
        msg("destroy", &[param("self", NETWORK_REF)], network::destroy).asyncable(),
        msg(
            "set_MTU",
            &[param("self", NETWORK_REF), param("value", Int)],
            network::set_mtu,
        ),
        msg(
            "set_default_locking_mode",
            &[
                param("network", NETWORK_REF),
                param("value", Enum(NETWORK_DEFAULT_LOCKING_MODES)),
            ],
            network::set_default_locking_mode,
        )
        .asyncable(),
        msg(
            "add_purpose",
            &[
                param("self", NETWORK_REF),
                param("value", Enum(NETWORK_PURPOSES)),
            ],
            network::add_purpose,
        )
        .asyncable(),
        msg(
            "remove_purpose",
            &[
                param("self", NETWORK_REF),
                param("value", Enum(NETWORK_PURPOSES)),
            ],
            network::remove_purpose,
        )
        .asyncable(),
    ],
};

pub static PIF: ClassDecl = ClassDecl {
    name: "PIF",
    flags: OBJECTS,
    fields: &[
        uuid(),
        ro("device", String),
        ro("network", NETWORK_REF),
        ro("host", Ref("host")),
        ro("MAC", String),
        ro("MTU", Int),
        // -1: no tag.
        ro("VLAN", Int),
        ro("metrics", Ref("PIF_metrics")),
        ro("physical", Bool),
        ro("currently_attached", Bool),
        ro("ip_configuration_mode", Enum(IP_CONFIGURATION_MODES)),
        ro("IP", String),
        ro("netmask", String),
        ro("gateway", String),
        ro("DNS", String),
        ro("bond_slave_of", Ref("Bond")),
        ro("bond_master_of", RefSet("Bond")),
        ro("VLAN_master_of", VLAN_REF),
        inverse("VLAN_slave_of", "VLAN", "tagged_PIF"),
        ro("management", Bool),
        other_config(),
        ro("disallow_unplug", Bool),
        ro("tunnel_access_PIF_of", RefSet("tunnel")),
        ro("tunnel_transport_PIF_of", RefSet("tunnel")),
        ro("ipv6_configuration_mode", Enum(IPV6_CONFIGURATION_MODES)),
        ro("IPv6", STRING_SET),
        ro("ipv6_gateway", String),
        ro("primary_address_type", Enum(PRIMARY_ADDRESS_TYPES)),
        ro("managed", Bool),
        ro("properties", STRING_MAP),
        ro("capabilities", STRING_SET),
        ro("igmp_snooping_status", Enum(IGMP_STATUSES)),
        ro("sriov_physical_PIF_of", RefSet("network_sriov")),
        ro("sriov_logical_PIF_of", RefSet("network_sriov")),
        ro("PCI", Ref("PCI")),
    ],
    messages: &[
        msg("plug", &[param("self", PIF_REF)], pif::plug).asyncable(),
        msg("unplug", &[param("self", PIF_REF)], pif::unplug).asyncable(),
        msg(
            "set_disallow_unplug",
            &[param("self", PIF_REF), param("value", Bool)],
            pif::set_disallow_unplug,
        ),
        // Deprecated in xapi for `VLAN.create` / `VLAN.destroy`, still called by old scripts.
        msg(
            "create_VLAN",
            &[
                param("device", String),
                param("network", NETWORK_REF),
                param("host", Ref("host")),
                param("VLAN", Int),
            ],
            pif::create_vlan,
        )
        .asyncable(),
        msg("destroy", &[param("self", PIF_REF)], pif::destroy).asyncable(),
    ],
};

pub static PIF_METRICS: ClassDecl = ClassDecl {
    name: "PIF_metrics",
    flags: OBJECTS,
    fields: &[
        uuid(),
        ro("io_read_kbs", Float),
        ro("io_write_kbs", Float),
        ro("carrier", Bool),
        ro("vendor_id", String),
        ro("vendor_name", String),
        ro("device_id", String),
        ro("device_name", String),
        ro("speed", Int),
        ro("duplex", Bool),
        ro("pci_bus_path", String),
        ro("last_updated", DateTime),
        other_config(),
    ],
    messages: &[],
};

pub static VIF: ClassDecl = ClassDecl {
    name: "VIF",
    flags: OBJECTS,
    fields: &[
        uuid(),
        ro("allowed_operations", Set(&Enum(VIF_OPERATIONS))),
        ro("current_operations", Map(&String, &Enum(VIF_OPERATIONS))),
        ro("device", String),
        ro("network", NETWORK_REF),
        ro("VM", Ref("VM")),
        ro("MAC", String),
        ro("MTU", Int),
        other_config(),
        ro("currently_attached", Bool),
        ro("status_code", Int),
        ro("status_detail", String),
        ro("runtime_properties", STRING_MAP),
        // Checked setters replace the generated ones: a plugged VIF's limit changes live.
        ro("qos_algorithm_type", String),
        ro("qos_algorithm_params", STRING_MAP),
        ro("qos_supported_algorithms", STRING_SET),
        ro("metrics", Ref("VIF_metrics")),
        ro("MAC_autogenerated", Bool),
        ro("locking_mode", Enum(VIF_LOCKING_MODES)),
        ro("ipv4_allowed", STRING_SET),
        ro("ipv6_allowed", STRING_SET),
        ro(
            "ipv4_configuration_mode",
            Enum(VIF_IPV4_CONFIGURATION_MODES),
        ),
        ro("ipv4_addresses", STRING_SET),
        ro("ipv4_gateway", String),
        ro(
            "ipv6_configuration_mode",
            Enum(VIF_IPV6_CONFIGURATION_MODES),
        ),
        ro("ipv6_addresses", STRING_SET),
        ro("ipv6_gateway", String),
    ],
    messages: &[
        msg("create", &[param("args", Map(&String, &Any))], vif::create).asyncable(),
        msg("destroy", &[param("self", VIF_REF)], vif::destroy).asyncable(),
        msg("plug", &[param("self", VIF_REF)], vif::plug).asyncable(),
        msg("unplug", &[param("self", VIF_REF)], vif::unplug).asyncable(),
        msg("unplug_force", &[param("self", VIF_REF)], vif::unplug_force).asyncable(),
        msg(
            "move",
            &[param("self", VIF_REF), param("network", NETWORK_REF)],
            vif::move_to,
        )
        .asyncable(),
        msg(
            "set_locking_mode",
            &[
                param("self", VIF_REF),
                param("value", Enum(VIF_LOCKING_MODES)),
            ],
            vif::set_locking_mode,
        )
        .asyncable(),
        msg(
            "set_ipv4_allowed",
            &[param("self", VIF_REF), param("value", STRING_SET)],
            vif::set_ipv4_allowed,
        )
        .asyncable(),
        msg(
            "add_ipv4_allowed",
            &[param("self", VIF_REF), param("value", String)],
            vif::add_ipv4_allowed,
        )
        .asyncable(),
        msg(
            "remove_ipv4_allowed",
            &[param("self", VIF_REF), param("value", String)],
            vif::remove_ipv4_allowed,
        )
        .asyncable(),
        msg(
            "set_ipv6_allowed",
            &[param("self", VIF_REF), param("value", STRING_SET)],
            vif::set_ipv6_allowed,
        )
        .asyncable(),
        msg(
            "add_ipv6_allowed",
            &[param("self", VIF_REF), param("value", String)],
            vif::add_ipv6_allowed,
        )
        .asyncable(),
        msg(
            "remove_ipv6_allowed",
            &[param("self", VIF_REF), param("value", String)],
            vif::remove_ipv6_allowed,
        )
        .asyncable(),
        msg(
            "configure_ipv4",
            &[
                param("self", VIF_REF),
                param("mode", Enum(VIF_IPV4_CONFIGURATION_MODES)),
                param("address", String),
                param("gateway", String),
            ],
            vif::configure_ipv4,
        )
        .asyncable()
        .optional_tail(2),
        msg(
            "configure_ipv6",
            &[
                param("self", VIF_REF),
                param("mode", Enum(VIF_IPV6_CONFIGURATION_MODES)),
                param("address", String),
                param("gateway", String),
            ],
            vif::configure_ipv6,
        )
        .asyncable()
        .optional_tail(2),
        msg(
            "set_qos_algorithm_type",
            &[param("self", VIF_REF), param("value", String)],
            vif::set_qos_algorithm_type,
        ),
        msg(
            "set_qos_algorithm_params",
            &[param("self", VIF_REF), param("value", STRING_MAP)],
            vif::set_qos_algorithm_params,
        ),
        msg(
            "add_to_qos_algorithm_params",
            &[
                param("self", VIF_REF),
                param("key", String),
                param("value", String),
            ],
            vif::add_to_qos_algorithm_params,
        ),
        msg(
            "remove_from_qos_algorithm_params",
            &[param("self", VIF_REF), param("key", String)],
            vif::remove_from_qos_algorithm_params,
        ),
    ],
};

pub static VIF_METRICS: ClassDecl = ClassDecl {
    name: "VIF_metrics",
    flags: OBJECTS,
    fields: &[
        uuid(),
        ro("io_read_kbs", Float),
        ro("io_write_kbs", Float),
        ro("last_updated", DateTime),
        other_config(),
    ],
    messages: &[],
};

pub static VLAN: ClassDecl = ClassDecl {
    name: "VLAN",
    flags: OBJECTS,
    fields: &[
        uuid(),
        ro("tagged_PIF", PIF_REF),
        ro("untagged_PIF", PIF_REF),
        ro("tag", Int),
        other_config(),
    ],
    messages: &[
        msg(
            "create",
            &[
                param("tagged_PIF", PIF_REF),
                param("tag", Int),
                param("network", NETWORK_REF),
            ],
            vlan::create,
        )
        .asyncable(),
        msg("destroy", &[param("self", VLAN_REF)], vlan::destroy).asyncable(),
    ],
};
