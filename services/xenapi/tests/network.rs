//! The network classes: the management network and PIF a host has from its first boot,
//! `network.create/destroy`, VLANs, VIFs with hot-plug, locking and QoS reaching the switch,
//! counters, events, and everything across a host reboot. The switch is `FakeSwitch`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod guest_fake;
mod storage_fake;
mod switch_fake;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::rc::Rc;

use common::*;
use guest_fake::FakeGuests;
use keel_xenapi::handlers::vm_builtin::PVH_TEMPLATE_NAME;
use keel_xenapi::keel_hostdb::Database;
use keel_xenapi::{
    ApiError, ByteCounters, DatabaseSink, IpConfigurationMode, Mac, ManagementInterface,
    NetworkBackendError, NetworkCounters, NicIdentity, SaveFailed, StorageBackend, Timestamp,
    TrafficFilter, Uplink, Value, XenApi,
};
use storage_fake::FakeStorage;
use switch_fake::FakeSwitch;

const MIB: u64 = 1 << 20;
const KERNEL: &[u8] = b"\x7fELF kernel image for tests";

#[derive(Clone, Default)]
struct Disk(Rc<RefCell<Vec<Database>>>);

impl DatabaseSink for Disk {
    fn save(&mut self, database: &Database) -> Result<(), SaveFailed> {
        self.0.borrow_mut().push(database.clone());
        Ok(())
    }
}

impl Disk {
    fn last(&self) -> Database {
        self.0.borrow().last().cloned().expect("a save")
    }
}

struct Host {
    api: XenApi,
    storage: FakeStorage,
    guests: FakeGuests,
    switch: FakeSwitch,
    disk: Disk,
    session: String,
    now: Timestamp,
}

fn host() -> Host {
    boot(&FakeStorage::two_srs(256 * MIB), None, 7)
}

fn boot(storage: &FakeStorage, saved: Option<Database>, seed: u64) -> Host {
    let guests = FakeGuests::with_memory(4096 * MIB);
    let switch = FakeSwitch::default();
    let disk = Disk::default();
    let mut config = config();
    config.storage = Some(Box::new(storage.clone()));
    config.guests = Some(Box::new(guests.clone()));
    config.network = Some(Box::new(switch.clone()));
    config.database_sink = Some(Box::new(disk.clone()));
    config.restore = saved;
    let mut api = XenApi::new(config, Box::new(TestEntropy(seed)), T0).expect("service");
    let session = login(&mut api);
    Host {
        api,
        storage: storage.clone(),
        guests,
        switch,
        disk,
        session,
        now: T0,
    }
}

/// host_metrics describe the running host: made fresh at every boot.
fn without_host_metrics(mut database: Database) -> Database {
    for host in database
        .classes
        .get_mut("host")
        .into_iter()
        .flat_map(|c| c.values_mut())
    {
        host.remove("metrics");
    }
    database
}

impl Client for Host {
    fn call(&mut self, method: &str, args: Vec<Value>) -> Result<Value, ApiError> {
        call_driven(&mut self.api, &self.session, self.now, method, args)
    }
}

impl Host {
    fn text(&mut self, class: &str, r: &str, field: &str) -> String {
        text(&self.get(class, r, field))
    }

    fn management_pif(&mut self) -> String {
        let pifs = sorted_strings(&self.ok("PIF.get_all", vec![]));
        pifs.into_iter()
            .find(|p| self.get("PIF", p, "management") == Value::Bool(true))
            .expect("a management PIF")
    }

    fn network(&mut self, name: &str) -> String {
        text(&self.ok(
            "network.create",
            vec![record(&[
                ("name_label", s(name)),
                ("name_description", s("")),
                ("other_config", Value::empty_struct()),
            ])],
        ))
    }

    fn image_vdi(&mut self, bytes: &[u8]) -> String {
        let size = (bytes.len() as u64).div_ceil(512) * 512;
        let sr = text(&self.ok("SR.get_by_uuid", vec![s("sr-a")]));
        let vdi = text(&self.ok(
            "VDI.create",
            vec![record(&[
                ("SR", s(&sr)),
                ("name_label", s("vmlinuz")),
                ("virtual_size", Value::Int(size as i64)),
            ])],
        ));
        let uuid = self.text("VDI", &vdi, "uuid");
        let mut data = bytes.to_vec();
        data.resize(size as usize, 0);
        let mut storage = self.storage.clone();
        storage.write("sr-a", &uuid, 0, &data).unwrap();
        uuid
    }

    /// A halted guest made as clients make one: a clone of the PVH template.
    fn guest(&mut self, name: &str) -> String {
        let template = sorted_strings(&self.ok("VM.get_by_name_label", vec![s(PVH_TEMPLATE_NAME)]));
        let vm = text(&self.ok("VM.clone", vec![s(&template[0]), s(name)]));
        self.ok("VM.provision", vec![s(&vm)]);
        self.ok("VM.set_is_a_template", vec![s(&vm), Value::Bool(false)]);
        let kernel = self.image_vdi(KERNEL);
        self.ok(
            "VM.set_PV_kernel",
            vec![s(&vm), s(&format!("vdi:{kernel}"))],
        );
        vm
    }

    fn vif(
        &mut self,
        vm: &str,
        network: &str,
        device: &str,
        mac: &str,
    ) -> Result<String, ApiError> {
        self.call(
            "VIF.create",
            vec![record(&[
                ("device", s(device)),
                ("network", s(network)),
                ("VM", s(vm)),
                ("MAC", s(mac)),
                ("MTU", s("1500")),
                ("other_config", Value::empty_struct()),
                ("qos_algorithm_type", s("")),
                ("qos_algorithm_params", Value::empty_struct()),
            ])],
        )
        .map(|v| text(&v))
    }

    fn start(&mut self, vm: &str) -> u32 {
        self.ok(
            "VM.start",
            vec![s(vm), Value::Bool(false), Value::Bool(false)],
        );
        u32::try_from(self.get("VM", vm, "domid").as_int().unwrap()).unwrap()
    }

    fn allowed(&mut self, vif: &str) -> Vec<String> {
        sorted_strings(&self.get("VIF", vif, "allowed_operations"))
    }
}

fn management_interface() -> ManagementInterface {
    ManagementInterface {
        device: "eth0".into(),
        mac: Mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
        mtu: 1500,
        mode: IpConfigurationMode::Dhcp,
        ipv4: Some((Ipv4Addr::new(10, 0, 2, 15), 24)),
        gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
        dns: vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)],
        nic: NicIdentity {
            vendor_id: 0x1af4,
            device_id: 0x1000,
            vendor_name: "Red Hat, Inc.".into(),
            device_name: "Virtio network device".into(),
            pci_bus_path: "0000:00:03.0".into(),
            speed_mbps: 1000,
            full_duplex: true,
            carrier: true,
        },
    }
}

#[test]
fn a_fresh_host_has_its_management_network_and_pif_as_on_xcp() {
    let mut h = host();
    let pif = h.management_pif();
    let host_ref = h.api.host_ref().to_string();
    assert_eq!(
        sorted_strings(&h.get("host", &host_ref, "PIFs")),
        vec![pif.clone()]
    );
    let rec = h.ok("PIF.get_record", vec![s(&pif)]);
    assert_eq!(text(field(&rec, "device")), "eth0");
    assert_eq!(field(&rec, "physical"), &Value::Bool(true));
    assert_eq!(field(&rec, "currently_attached"), &Value::Bool(true));
    assert_eq!(field(&rec, "VLAN"), &Value::Int(-1));
    assert_eq!(text(field(&rec, "host")), host_ref);
    // Every field of xapi's PIF record is there.
    for name in [
        "uuid",
        "device",
        "network",
        "host",
        "MAC",
        "MTU",
        "VLAN",
        "metrics",
        "physical",
        "currently_attached",
        "ip_configuration_mode",
        "IP",
        "netmask",
        "gateway",
        "DNS",
        "bond_slave_of",
        "bond_master_of",
        "VLAN_master_of",
        "VLAN_slave_of",
        "management",
        "other_config",
        "disallow_unplug",
        "tunnel_access_PIF_of",
        "tunnel_transport_PIF_of",
        "ipv6_configuration_mode",
        "IPv6",
        "ipv6_gateway",
        "primary_address_type",
        "managed",
        "properties",
        "capabilities",
        "igmp_snooping_status",
        "sriov_physical_PIF_of",
        "sriov_logical_PIF_of",
        "PCI",
    ] {
        field(&rec, name);
    }
    let network = text(field(&rec, "network"));
    let net = h.ok("network.get_record", vec![s(&network)]);
    assert_eq!(
        text(field(&net, "name_label")),
        "Pool-wide network associated with eth0"
    );
    assert_eq!(text(field(&net, "bridge")), "xenbr0");
    assert_eq!(field(&net, "MTU"), &Value::Int(1500));
    assert_eq!(sorted_strings(field(&net, "PIFs")), vec![pif.clone()]);
    for name in [
        "uuid",
        "name_label",
        "name_description",
        "allowed_operations",
        "current_operations",
        "VIFs",
        "PIFs",
        "MTU",
        "other_config",
        "bridge",
        "managed",
        "blobs",
        "tags",
        "default_locking_mode",
        "assigned_ips",
        "purpose",
    ] {
        field(&net, name);
    }
    assert_eq!(
        h.ok(
            "network.get_by_name_label",
            vec![s("Pool-wide network associated with eth0")]
        ),
        Value::Array(vec![s(&network)])
    );
    // The switch has the bridge with eth0 as its uplink.
    let bridge = h.switch.bridge("xenbr0").expect("xenbr0 on the switch");
    assert_eq!(
        bridge.uplink,
        Some(Uplink {
            device: "eth0".into(),
            vlan: None
        })
    );
    assert_eq!(bridge.mtu, 1500);
    // The management interface cannot go down, nor its network away.
    assert_eq!(
        code(&h.err("PIF.unplug", vec![s(&pif)])),
        "PIF_IS_MANAGEMENT_INTERFACE"
    );
    let e = h.err("network.destroy", vec![s(&network)]);
    assert_eq!(
        e.description(),
        vec!["NETWORK_CONTAINS_PIF".to_string(), pif.clone()]
    );
    let pif = h.management_pif();
    assert_eq!(
        code(&h.err("PIF.destroy", vec![s(&pif)])),
        "PIF_IS_PHYSICAL"
    );
}

#[test]
fn the_kernel_reports_the_management_address_and_nic() {
    let mut h = host();
    let pif = h.management_pif();
    let before = h.api.last_event_id();
    h.api
        .update_management_interface(&management_interface(), h.now);
    assert!(h.api.last_event_id() > before);
    let rec = h.ok("PIF.get_record", vec![s(&pif)]);
    assert_eq!(text(field(&rec, "MAC")), "52:54:00:12:34:56");
    assert_eq!(text(field(&rec, "ip_configuration_mode")), "DHCP");
    assert_eq!(text(field(&rec, "IP")), "10.0.2.15");
    assert_eq!(text(field(&rec, "netmask")), "255.255.255.0");
    assert_eq!(text(field(&rec, "gateway")), "10.0.2.2");
    assert_eq!(text(field(&rec, "DNS")), "10.0.2.3,1.1.1.1");
    let metrics = text(field(&rec, "metrics"));
    let m = h.ok("PIF_metrics.get_record", vec![s(&metrics)]);
    assert_eq!(text(field(&m, "vendor_id")), "1af4");
    assert_eq!(text(field(&m, "device_id")), "1000");
    assert_eq!(text(field(&m, "device_name")), "Virtio network device");
    assert_eq!(text(field(&m, "pci_bus_path")), "0000:00:03.0");
    assert_eq!(field(&m, "speed"), &Value::Int(1000));
    assert_eq!(field(&m, "carrier"), &Value::Bool(true));
    assert_eq!(field(&m, "duplex"), &Value::Bool(true));
    // The same report again changes nothing and publishes nothing.
    let before = h.api.last_event_id();
    h.api
        .update_management_interface(&management_interface(), h.now);
    assert_eq!(h.api.last_event_id(), before);
    // A lost carrier is one change.
    let mut down = management_interface();
    down.nic.carrier = false;
    h.api.update_management_interface(&down, h.now);
    assert_eq!(h.api.last_event_id(), before + 1);
}

#[test]
fn networks_are_created_with_xapi_defaults_and_checked_bridges() {
    let mut h = host();
    let a = h.network("tenant-a");
    assert_eq!(h.text("network", &a, "bridge"), "xapi0");
    assert_eq!(h.get("network", &a, "MTU"), Value::Int(1500));
    assert_eq!(h.get("network", &a, "managed"), Value::Bool(true));
    assert_eq!(h.text("network", &a, "default_locking_mode"), "unlocked");
    let b = h.network("tenant-b");
    assert_eq!(h.text("network", &b, "bridge"), "xapi1");
    // A private network: a bridge with no uplink.
    assert_eq!(h.switch.bridge("xapi0").unwrap().uplink, None);
    assert!(h.switch.bridge("xapi1").is_some());

    let named = |bridge: &str, mtu: i64| {
        record(&[
            ("name_label", s("named")),
            ("bridge", s(bridge)),
            ("MTU", Value::Int(mtu)),
        ])
    };
    let c = text(&h.ok("network.create", vec![named("br-storage", 9000)]));
    assert_eq!(h.switch.bridge("br-storage").unwrap().mtu, 9000);
    assert_eq!(h.get("network", &c, "MTU"), Value::Int(9000));
    for (bridge, mtu, expected) in [
        ("br-storage", 1500, "BRIDGE_NAME_EXISTS"),
        ("xenbr1", 1500, "INVALID_VALUE"),
        ("vif1.0", 1500, "INVALID_VALUE"),
        ("a-very-long-bridge-name", 1500, "INVALID_VALUE"),
        ("br-ok", 20, "INVALID_VALUE"),
        ("br-ok", 70000, "INVALID_VALUE"),
    ] {
        let e = h.err("network.create", vec![named(bridge, mtu)]);
        assert_eq!(code(&e), expected, "{bridge} {mtu}");
    }
    assert!(h.switch.bridge("br-ok").is_none());
    // MTU changes reach the bridge; nonsense does not.
    h.ok("network.set_MTU", vec![s(&c), Value::Int(1400)]);
    assert_eq!(h.switch.bridge("br-storage").unwrap().mtu, 1400);
    assert_eq!(
        code(&h.err("network.set_MTU", vec![s(&c), Value::Int(0)])),
        "INVALID_VALUE"
    );
    // A switch that refuses leaves no network behind.
    let count = sorted_strings(&h.ok("network.get_all", vec![])).len();
    h.switch
        .fail_next(NetworkBackendError::Exhausted("bridges".into()));
    let e = h.err("network.create", vec![record(&[("name_label", s("x"))])]);
    assert_eq!(code(&e), "INTERNAL_ERROR");
    assert_eq!(
        sorted_strings(&h.ok("network.get_all", vec![])).len(),
        count
    );
    // Destroying an empty network removes its bridge; if the switch refuses, it stays.
    h.switch
        .fail_next(NetworkBackendError::Failed("busy".into()));
    assert_eq!(
        code(&h.err("network.destroy", vec![s(&b)])),
        "INTERNAL_ERROR"
    );
    assert_eq!(h.text("network", &b, "bridge"), "xapi1");
    h.ok("network.destroy", vec![s(&b)]);
    assert!(h.switch.bridge("xapi1").is_none());
    assert_eq!(
        code(&h.err("network.get_record", vec![s(&b)])),
        "HANDLE_INVALID"
    );
    // Purposes: NBD with and without TLS exclude each other.
    h.ok("network.add_purpose", vec![s(&a), s("nbd")]);
    h.ok("network.add_purpose", vec![s(&a), s("nbd")]);
    assert_eq!(
        sorted_strings(&h.get("network", &a, "purpose")),
        vec!["nbd"]
    );
    let e = h.err("network.add_purpose", vec![s(&c), s("insecure_nbd")]);
    assert_eq!(
        e.description(),
        vec!["NETWORK_INCOMPATIBLE_PURPOSES", "insecure_nbd", "nbd"]
    );
    h.ok("network.remove_purpose", vec![s(&a), s("nbd")]);
    h.ok("network.add_purpose", vec![s(&c), s("insecure_nbd")]);
}

#[test]
fn vlans_tag_a_network_onto_the_physical_interface() {
    let mut h = host();
    let eth0 = h.management_pif();
    let tenant = h.network("tenant-a");
    for bad in [-1, 4095, 100_000] {
        let e = h.err("VLAN.create", vec![s(&eth0), Value::Int(bad), s(&tenant)]);
        assert_eq!(
            e.description(),
            vec!["VLAN_TAG_INVALID".to_string(), bad.to_string()]
        );
    }
    let vlan = text(&h.ok("VLAN.create", vec![s(&eth0), Value::Int(10), s(&tenant)]));
    let untagged = h.text("VLAN", &vlan, "untagged_PIF");
    assert_eq!(h.text("VLAN", &vlan, "tagged_PIF"), eth0);
    assert_eq!(h.get("VLAN", &vlan, "tag"), Value::Int(10));
    let rec = h.ok("PIF.get_record", vec![s(&untagged)]);
    assert_eq!(field(&rec, "VLAN"), &Value::Int(10));
    assert_eq!(text(field(&rec, "device")), "eth0");
    assert_eq!(text(field(&rec, "MAC")), "fe:ff:ff:ff:ff:ff");
    assert_eq!(field(&rec, "physical"), &Value::Bool(false));
    assert_eq!(field(&rec, "management"), &Value::Bool(false));
    assert_eq!(field(&rec, "currently_attached"), &Value::Bool(true));
    assert_eq!(text(field(&rec, "VLAN_master_of")), vlan);
    assert_eq!(text(field(&rec, "network")), tenant);
    // One PIF_metrics for the wire, shared as xapi shares it.
    assert_eq!(
        text(field(&rec, "metrics")),
        h.text("PIF", &eth0, "metrics")
    );
    assert_eq!(
        sorted_strings(&h.get("PIF", &eth0, "VLAN_slave_of")),
        vec![vlan.clone()]
    );
    assert_eq!(
        sorted_strings(&h.get("network", &tenant, "PIFs")),
        vec![untagged.clone()]
    );
    let host_ref = h.api.host_ref().to_string();
    assert_eq!(sorted_strings(&h.get("host", &host_ref, "PIFs")).len(), 2);
    // The tenant's bridge now leaves through eth0 with tag 10.
    let bridge = h.text("network", &tenant, "bridge");
    assert_eq!(
        h.switch.bridge(&bridge).unwrap().uplink,
        Some(Uplink {
            device: "eth0".into(),
            vlan: Some(10)
        })
    );

    // xapi's refusals, in xapi's order.
    let e = h.err("VLAN.create", vec![s(&eth0), Value::Int(11), s(&tenant)]);
    assert_eq!(
        e.description(),
        vec![
            "NETWORK_ALREADY_CONNECTED".to_string(),
            tenant.clone(),
            untagged.clone()
        ]
    );
    let other = h.network("tenant-b");
    let e = h.err("VLAN.create", vec![s(&eth0), Value::Int(10), s(&other)]);
    assert_eq!(e.description(), vec!["PIF_VLAN_EXISTS", "eth0"]);
    let e = h.err("VLAN.create", vec![s(&untagged), Value::Int(20), s(&other)]);
    assert_eq!(
        e.description(),
        vec!["PIF_IS_VLAN".to_string(), untagged.clone()]
    );
    assert_eq!(
        code(&h.err("network.destroy", vec![s(&tenant)])),
        "NETWORK_CONTAINS_PIF"
    );

    // A VLAN interface can go down and up; the bridge loses and regains its uplink.
    h.ok("PIF.unplug", vec![s(&untagged)]);
    assert_eq!(h.switch.bridge(&bridge).unwrap().uplink, None);
    h.ok(
        "PIF.set_disallow_unplug",
        vec![s(&untagged), Value::Bool(true)],
    );
    h.ok("PIF.plug", vec![s(&untagged)]);
    assert_eq!(
        code(&h.err("PIF.unplug", vec![s(&untagged)])),
        "PIF_DOES_NOT_ALLOW_UNPLUG"
    );
    h.ok(
        "PIF.set_disallow_unplug",
        vec![s(&untagged), Value::Bool(false)],
    );

    // VLAN.destroy takes the interface with it; the network can then go.
    h.ok("VLAN.destroy", vec![s(&vlan)]);
    assert_eq!(
        code(&h.err("PIF.get_record", vec![s(&untagged)])),
        "HANDLE_INVALID"
    );
    assert!(sorted_strings(&h.get("PIF", &eth0, "VLAN_slave_of")).is_empty());
    assert_eq!(h.switch.bridge(&bridge).unwrap().uplink, None);
    h.ok("network.destroy", vec![s(&tenant)]);

    // The deprecated calls old scripts use.
    let untagged = text(&h.ok(
        "PIF.create_VLAN",
        vec![s("eth0"), s(&other), s(&host_ref), Value::Int(30)],
    ));
    assert_eq!(h.get("PIF", &untagged, "VLAN"), Value::Int(30));
    let e = h.err(
        "PIF.create_VLAN",
        vec![s("eth9"), s(&other), s(&host_ref), Value::Int(31)],
    );
    assert_eq!(code(&e), "INVALID_VALUE");
    h.ok("PIF.destroy", vec![s(&untagged)]);
    assert!(h.ok("VLAN.get_all", vec![]).as_array().unwrap().is_empty());
    // The pool-wide forms Xen Orchestra and old scripts use: the new interfaces come back.
    let made = h.ok(
        "pool.create_VLAN_from_PIF",
        vec![s(&eth0), s(&other), Value::Int(40)],
    );
    let untagged = sorted_strings(&made);
    assert_eq!(untagged.len(), 1);
    assert_eq!(h.get("PIF", &untagged[0], "VLAN"), Value::Int(40));
    h.ok("PIF.destroy", vec![s(&untagged[0])]);
    let made = h.ok(
        "pool.create_VLAN",
        vec![s("eth0"), s(&other), Value::Int(41)],
    );
    assert_eq!(
        h.get("PIF", &sorted_strings(&made)[0], "VLAN"),
        Value::Int(41)
    );
    let e = h.err(
        "pool.create_VLAN",
        vec![s("eth9"), s(&other), Value::Int(42)],
    );
    assert_eq!(code(&e), "INVALID_VALUE");
}

#[test]
fn vifs_get_checked_devices_and_generated_unique_macs() {
    let mut h = host();
    let net = h.network("tenant-a");
    let vm = h.guest("web");
    let first = h.vif(&vm, &net, "0", "").unwrap();
    let rec = h.ok("VIF.get_record", vec![s(&first)]);
    for name in [
        "uuid",
        "allowed_operations",
        "current_operations",
        "device",
        "network",
        "VM",
        "MAC",
        "MTU",
        "other_config",
        "currently_attached",
        "status_code",
        "status_detail",
        "runtime_properties",
        "qos_algorithm_type",
        "qos_algorithm_params",
        "qos_supported_algorithms",
        "metrics",
        "MAC_autogenerated",
        "locking_mode",
        "ipv4_allowed",
        "ipv6_allowed",
        "ipv4_configuration_mode",
        "ipv4_addresses",
        "ipv4_gateway",
        "ipv6_configuration_mode",
        "ipv6_addresses",
        "ipv6_gateway",
    ] {
        field(&rec, name);
    }
    let mac = Mac::parse(&text(field(&rec, "MAC"))).expect("a MAC");
    assert!(mac.is_local() && !mac.is_multicast(), "{mac}");
    assert_eq!(field(&rec, "MAC_autogenerated"), &Value::Bool(true));
    assert_eq!(text(field(&rec, "locking_mode")), "network_default");
    assert_eq!(field(&rec, "currently_attached"), &Value::Bool(false));
    assert_eq!(
        sorted_strings(field(&rec, "qos_supported_algorithms")),
        vec!["ratelimit"]
    );
    h.ok(
        "VIF_metrics.get_record",
        vec![s(&text(field(&rec, "metrics")))],
    );
    // A halted VM's VIF can only be attached (at start).
    assert_eq!(h.allowed(&first), vec!["attach"]);
    assert_eq!(
        sorted_strings(&h.get("VM", &vm, "VIFs")),
        vec![first.clone()]
    );
    assert_eq!(
        sorted_strings(&h.get("network", &net, "VIFs")),
        vec![first.clone()]
    );

    let free = h.ok("VM.get_allowed_VIF_devices", vec![s(&vm)]);
    assert_eq!(sorted_strings(&free), vec!["1", "2", "3", "4", "5", "6"]);
    let second = h.vif(&vm, &net, "1", "02:AA:bb:cc:dd:01").unwrap();
    assert_eq!(h.text("VIF", &second, "MAC"), "02:aa:bb:cc:dd:01");
    assert_eq!(
        h.get("VIF", &second, "MAC_autogenerated"),
        Value::Bool(false)
    );
    let mut macs = vec![mac.to_string()];
    for device in 2..=6 {
        let vif = h.vif(&vm, &net, &device.to_string(), "").unwrap();
        let mac = h.text("VIF", &vif, "MAC");
        assert!(!macs.contains(&mac), "MAC {mac} handed out twice");
        macs.push(mac);
    }
    for (device, mac, expected) in [
        ("0", "", "DEVICE_ALREADY_EXISTS"),
        ("7", "", "INVALID_DEVICE"),
        ("eth0", "", "INVALID_DEVICE"),
        ("-1", "", "INVALID_DEVICE"),
        ("6", "02:aa:bb:cc:dd", "MAC_INVALID"),
        ("6", "zz:aa:bb:cc:dd:ee", "MAC_INVALID"),
        ("6", "01:00:5e:00:00:01", "MAC_INVALID"),
    ] {
        let e = h.vif(&vm, &net, device, mac).unwrap_err();
        assert_eq!(code(&e), expected, "{device} {mac}");
    }
    let e = h
        .call(
            "VIF.create",
            vec![record(&[
                ("device", s("5")),
                ("network", s("OpaqueRef:nope")),
                ("VM", s(&vm)),
                ("MAC", s("")),
            ])],
        )
        .unwrap_err();
    assert_eq!(code(&e), "HANDLE_INVALID");
    assert!(h
        .ok("VM.get_allowed_VIF_devices", vec![s(&vm)])
        .as_array()
        .unwrap()
        .is_empty());
    // A VM's VIFs go with it.
    let vifs = sorted_strings(&h.get("VM", &vm, "VIFs"));
    assert_eq!(vifs.len(), 7);
    h.ok("VM.destroy", vec![s(&vm)]);
    assert!(h.ok("VIF.get_all", vec![]).as_array().unwrap().is_empty());
    assert!(h
        .ok("VIF_metrics.get_all", vec![])
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn a_running_vm_gets_its_vifs_and_hot_plugs_more() {
    let mut h = host();
    let net = h.network("tenant-a");
    let bridge = h.text("network", &net, "bridge");
    let vm = h.guest("web");
    let eth0 = h.vif(&vm, &net, "0", "").unwrap();
    let mac = h.text("VIF", &eth0, "MAC");
    assert_eq!(
        code(&h.err("VIF.plug", vec![s(&eth0)])),
        "VM_BAD_POWER_STATE"
    );
    let domid = h.start(&vm);
    // Built paused, its VIF attached, then unpaused: the guest finds its NIC at boot.
    let domain = h.guests.domain(domid).unwrap();
    assert!(domain.spec.paused && !domain.paused);
    let calls = h.guests.calls();
    let start = calls.iter().position(|c| c.starts_with("start")).unwrap();
    assert!(
        calls[start + 1..].contains(&format!("unpause {domid}")),
        "{calls:?}"
    );
    let port = h.switch.port(domid, 0).expect("VIF 0 attached at start");
    assert_eq!(port.mac.to_string(), mac);
    assert_eq!(port.bridge, bridge);
    assert_eq!(port.mtu, 1500);
    assert_eq!(port.filter, TrafficFilter::Unlocked);
    assert_eq!(port.rate_limit_kbps, None);
    assert_eq!(port.vif_uuid, h.text("VIF", &eth0, "uuid"));
    assert_eq!(h.get("VIF", &eth0, "currently_attached"), Value::Bool(true));
    assert_eq!(h.allowed(&eth0), vec!["attach", "unplug"]);
    let e = h.err("VIF.plug", vec![s(&eth0)]);
    assert_eq!(
        e.description(),
        vec!["DEVICE_ALREADY_ATTACHED".to_string(), eth0.clone()]
    );
    assert_eq!(
        h.err("VIF.destroy", vec![s(&eth0)]).description(),
        vec![
            "OPERATION_NOT_ALLOWED",
            "VIF currently attached to a running VM"
        ]
    );
    // Nor while the VM is paused.
    h.ok("VM.pause", vec![s(&vm)]);
    assert_eq!(
        code(&h.err("VIF.destroy", vec![s(&eth0)])),
        "OPERATION_NOT_ALLOWED"
    );
    assert_eq!(
        code(&h.err("VIF.unplug", vec![s(&eth0)])),
        "VM_BAD_POWER_STATE"
    );
    h.ok("VM.unpause", vec![s(&vm)]);
    // A plugged VIF keeps its network.
    let e = h.err("network.destroy", vec![s(&net)]);
    assert_eq!(
        e.description(),
        vec!["NETWORK_CONTAINS_VIF".to_string(), eth0.clone()]
    );

    // Hot-plug a second one, as Async (a task).
    let eth1 = h.vif(&vm, &net, "1", "").unwrap();
    assert_eq!(h.allowed(&eth1), vec!["attach", "plug"]);
    let task = text(&h.ok("Async.VIF.plug", vec![s(&eth1)]));
    for _ in 0..10 {
        h.api.run_tasks(h.now);
    }
    assert_eq!(h.text("task", &task, "status"), "success");
    assert!(h.switch.port(domid, 1).is_some());
    // Unplug: the guest is asked; unplug_force does not wait.
    h.ok("VIF.unplug", vec![s(&eth1)]);
    assert!(h.switch.calls().contains(&format!("detach {domid}/1")));
    assert!(h.switch.port(domid, 1).is_none());
    assert_eq!(
        h.get("VIF", &eth1, "currently_attached"),
        Value::Bool(false)
    );
    let e = h.err("VIF.unplug", vec![s(&eth1)]);
    assert_eq!(
        e.description(),
        vec!["DEVICE_ALREADY_DETACHED".to_string(), eth1.clone()]
    );
    h.ok("VIF.plug", vec![s(&eth1)]);
    h.ok("VIF.unplug_force", vec![s(&eth1)]);
    assert!(h
        .switch
        .calls()
        .contains(&format!("force-detach {domid}/1")));
    h.ok("VIF.destroy", vec![s(&eth1)]);

    // A refused plug says why and leaves the VIF detached.
    let eth2 = h.vif(&vm, &net, "2", "").unwrap();
    h.switch
        .fail_next(NetworkBackendError::Exhausted("ports".into()));
    assert_eq!(code(&h.err("VIF.plug", vec![s(&eth2)])), "INTERNAL_ERROR");
    assert_eq!(
        h.get("VIF", &eth2, "currently_attached"),
        Value::Bool(false)
    );
    assert_eq!(h.get("VIF", &eth2, "status_code"), Value::Int(1));
    assert!(h
        .text("VIF", &eth2, "status_detail")
        .contains("out of ports"));
    h.ok("VIF.plug", vec![s(&eth2)]);
    assert_eq!(h.get("VIF", &eth2, "status_code"), Value::Int(0));

    // Moving a plugged VIF moves its port.
    let other = h.network("tenant-b");
    let other_bridge = h.text("network", &other, "bridge");
    h.ok("VIF.move", vec![s(&eth0), s(&other)]);
    assert_eq!(h.switch.port(domid, 0).unwrap().bridge, other_bridge);
    assert_eq!(h.text("VIF", &eth0, "network"), other);

    // The VM stops: every VIF is detached, and only attach is left.
    h.ok("VM.hard_shutdown", vec![s(&vm)]);
    for vif in [&eth0, &eth2] {
        assert_eq!(h.get("VIF", vif, "currently_attached"), Value::Bool(false));
        assert_eq!(h.allowed(vif), vec!["attach"]);
    }
    h.ok("VIF.destroy", vec![s(&eth2)]);
}

#[test]
fn a_vif_the_switch_refuses_at_start_stays_detached_and_the_vm_runs() {
    let mut h = host();
    let net = h.network("tenant-a");
    let vm = h.guest("web");
    let vif = h.vif(&vm, &net, "0", "").unwrap();
    h.switch.fail_next(NetworkBackendError::Failed(
        "netback is out of grants".into(),
    ));
    let domid = h.start(&vm);
    assert_eq!(h.text("VM", &vm, "power_state"), "Running");
    assert!(h.switch.port(domid, 0).is_none());
    assert_eq!(h.get("VIF", &vif, "currently_attached"), Value::Bool(false));
    assert_eq!(h.get("VIF", &vif, "status_code"), Value::Int(1));
    assert!(h
        .text("VIF", &vif, "status_detail")
        .contains("out of grants"));
    // It can be plugged once the switch agrees.
    assert_eq!(h.allowed(&vif), vec!["attach", "plug"]);
    h.ok("VIF.plug", vec![s(&vif)]);
    assert!(h.switch.port(domid, 0).is_some());
}

#[test]
fn locking_modes_and_allowed_addresses_reach_a_plugged_vif_at_once() {
    let mut h = host();
    let net = h.network("tenant-a");
    let vm = h.guest("web");
    let vif = h.vif(&vm, &net, "0", "").unwrap();
    // Set while halted: recorded, given at start.
    h.ok("VIF.add_ipv4_allowed", vec![s(&vif), s("10.0.0.5")]);
    h.ok("VIF.add_ipv4_allowed", vec![s(&vif), s("10.0.0.5")]);
    assert_eq!(
        sorted_strings(&h.get("VIF", &vif, "ipv4_allowed")),
        vec!["10.0.0.5"]
    );
    h.ok("VIF.set_locking_mode", vec![s(&vif), s("locked")]);
    let domid = h.start(&vm);
    let filter = || TrafficFilter::Locked {
        ipv4: vec![Ipv4Addr::new(10, 0, 0, 5)],
        ipv6: vec![],
    };
    assert_eq!(h.switch.port(domid, 0).unwrap().filter, filter());

    h.ok("VIF.add_ipv6_allowed", vec![s(&vif), s("2001:db8::5")]);
    match h.switch.port(domid, 0).unwrap().filter {
        TrafficFilter::Locked { ipv6, .. } => assert_eq!(ipv6.len(), 1),
        other => panic!("{other:?}"),
    }
    h.ok("VIF.remove_ipv6_allowed", vec![s(&vif), s("2001:db8::5")]);
    h.ok("VIF.remove_ipv6_allowed", vec![s(&vif), s("2001:db8::5")]);
    assert_eq!(h.switch.port(domid, 0).unwrap().filter, filter());
    for (method, address) in [
        ("VIF.add_ipv4_allowed", "10.0.0.256"),
        ("VIF.add_ipv4_allowed", "2001:db8::1"),
        ("VIF.add_ipv6_allowed", "10.0.0.1"),
        ("VIF.add_ipv4_allowed", "10.0.0.0/24"),
    ] {
        let e = h.err(method, vec![s(&vif), s(address)]);
        assert_eq!(
            e.description(),
            vec![
                "INVALID_IP_ADDRESS_SPECIFIED",
                if method.contains("ipv4") {
                    "ipv4_allowed"
                } else {
                    "ipv6_allowed"
                }
            ],
            "{address}"
        );
    }
    h.ok(
        "VIF.set_ipv4_allowed",
        vec![
            s(&vif),
            Value::Array(vec![s("10.0.1.7"), s("10.0.1.7"), s("10.0.2.9")]),
        ],
    );
    assert_eq!(
        sorted_strings(&h.get("VIF", &vif, "ipv4_allowed")),
        vec!["10.0.1.7", "10.0.2.9"]
    );
    let e = h.err(
        "VIF.set_ipv4_allowed",
        vec![s(&vif), Value::Array(vec![s("10.0.1.8"), s("nonsense")])],
    );
    assert_eq!(code(&e), "INVALID_IP_ADDRESS_SPECIFIED");
    assert_eq!(sorted_strings(&h.get("VIF", &vif, "ipv4_allowed")).len(), 2);
    // More than the switch compares per frame is refused up front.
    let many: Vec<Value> = (0..65).map(|i| s(&format!("10.1.0.{i}"))).collect();
    let e = h.err("VIF.set_ipv4_allowed", vec![s(&vif), Value::Array(many)]);
    assert_eq!(code(&e), "VALUE_NOT_SUPPORTED");

    // network_default follows the network's default, which can shut the VIF off.
    h.ok("VIF.set_locking_mode", vec![s(&vif), s("network_default")]);
    assert_eq!(
        h.switch.port(domid, 0).unwrap().filter,
        TrafficFilter::Unlocked
    );
    h.ok(
        "network.set_default_locking_mode",
        vec![s(&net), s("disabled")],
    );
    assert_eq!(
        h.switch.port(domid, 0).unwrap().filter,
        TrafficFilter::Disabled
    );
    h.ok("VIF.set_locking_mode", vec![s(&vif), s("unlocked")]);
    assert_eq!(
        h.switch.port(domid, 0).unwrap().filter,
        TrafficFilter::Unlocked
    );
    let e = h.err("VIF.set_locking_mode", vec![s(&vif), s("sometimes")]);
    assert_eq!(code(&e), "FIELD_TYPE_ERROR");

    // A switch that refuses leaves the old setting.
    h.switch
        .fail_next(NetworkBackendError::Failed("busy".into()));
    assert_eq!(
        code(&h.err("VIF.set_locking_mode", vec![s(&vif), s("disabled")])),
        "INTERNAL_ERROR"
    );
    assert_eq!(h.text("VIF", &vif, "locking_mode"), "unlocked");
    assert_eq!(
        h.switch.port(domid, 0).unwrap().filter,
        TrafficFilter::Unlocked
    );

    // The guest agent's configuration is recorded.
    h.ok(
        "VIF.configure_ipv4",
        vec![s(&vif), s("Static"), s("10.0.0.5/24"), s("10.0.0.1")],
    );
    assert_eq!(
        sorted_strings(&h.get("VIF", &vif, "ipv4_addresses")),
        vec!["10.0.0.5/24"]
    );
    assert_eq!(h.text("VIF", &vif, "ipv4_gateway"), "10.0.0.1");
    let e = h.err(
        "VIF.configure_ipv4",
        vec![s(&vif), s("Static"), s("10.0.0.5")],
    );
    assert_eq!(code(&e), "INVALID_IP_ADDRESS_SPECIFIED");
    h.ok("VIF.configure_ipv4", vec![s(&vif), s("None")]);
    assert!(sorted_strings(&h.get("VIF", &vif, "ipv4_addresses")).is_empty());
    h.ok(
        "VIF.configure_ipv6",
        vec![s(&vif), s("Static"), s("2001:db8::5/64"), s("")],
    );
    assert_eq!(h.text("VIF", &vif, "ipv6_configuration_mode"), "Static");
}

#[test]
fn ratelimit_qos_reaches_a_plugged_vif() {
    let mut h = host();
    let net = h.network("tenant-a");
    let vm = h.guest("web");
    let vif = h.vif(&vm, &net, "0", "").unwrap();
    let domid = h.start(&vm);
    h.ok("VIF.set_qos_algorithm_type", vec![s(&vif), s("ratelimit")]);
    // No kbps yet: no limit.
    assert_eq!(h.switch.port(domid, 0).unwrap().rate_limit_kbps, None);
    h.ok(
        "VIF.add_to_qos_algorithm_params",
        vec![s(&vif), s("kbps"), s("2048")],
    );
    assert_eq!(h.switch.port(domid, 0).unwrap().rate_limit_kbps, Some(2048));
    assert_eq!(
        code(&h.err(
            "VIF.add_to_qos_algorithm_params",
            vec![s(&vif), s("kbps"), s("10")]
        )),
        "MAP_DUPLICATE_KEY"
    );
    for bad in ["0", "-1", "fast", "1.5"] {
        let params = Value::string_map([("kbps", bad)]);
        let e = h.err("VIF.set_qos_algorithm_params", vec![s(&vif), params]);
        assert_eq!(code(&e), "INVALID_VALUE", "{bad}");
    }
    h.ok(
        "VIF.set_qos_algorithm_params",
        vec![s(&vif), Value::string_map([("kbps", "512")])],
    );
    assert_eq!(h.switch.port(domid, 0).unwrap().rate_limit_kbps, Some(512));
    let e = h.err(
        "VIF.set_qos_algorithm_type",
        vec![s(&vif), s("token_bucket")],
    );
    assert_eq!(code(&e), "VALUE_NOT_SUPPORTED");
    h.ok("VIF.set_qos_algorithm_type", vec![s(&vif), s("")]);
    assert_eq!(h.switch.port(domid, 0).unwrap().rate_limit_kbps, None);
    h.ok(
        "VIF.remove_from_qos_algorithm_params",
        vec![s(&vif), s("kbps")],
    );
    assert_eq!(
        h.get("VIF", &vif, "qos_algorithm_params"),
        Value::empty_struct()
    );
    // A VIF created with a limit starts with it.
    let vm2 = h.guest("db");
    let limited = text(&h.ok(
        "VIF.create",
        vec![record(&[
            ("device", s("0")),
            ("network", s(&net)),
            ("VM", s(&vm2)),
            ("MAC", s("")),
            ("qos_algorithm_type", s("ratelimit")),
            ("qos_algorithm_params", Value::string_map([("kbps", "100")])),
            ("locking_mode", s("locked")),
            ("ipv4_allowed", Value::Array(vec![s("192.0.2.7")])),
        ])],
    ));
    let domid2 = h.start(&vm2);
    let port = h.switch.port(domid2, 0).unwrap();
    assert_eq!(port.rate_limit_kbps, Some(100));
    assert!(matches!(port.filter, TrafficFilter::Locked { .. }));
    assert_eq!(h.text("VIF", &limited, "VM"), vm2);
}

#[test]
fn switch_counters_become_rates_in_the_metrics() {
    let mut h = host();
    let net = h.network("tenant-a");
    let vm = h.guest("web");
    let vif = h.vif(&vm, &net, "0", "").unwrap();
    let domid = h.start(&vm);
    let sample = |rx: u64, tx: u64| NetworkCounters {
        pifs: vec![(
            "eth0".into(),
            ByteCounters {
                rx_bytes: rx * 2,
                tx_bytes: tx * 2,
            },
        )],
        vifs: vec![(
            (domid, 0),
            ByteCounters {
                rx_bytes: rx,
                tx_bytes: tx,
            },
        )],
    };
    h.api.record_network_counters(&sample(1_000_000, 0), h.now);
    let vif_metrics = h.text("VIF", &vif, "metrics");
    assert_eq!(
        h.get("VIF_metrics", &vif_metrics, "io_read_kbs"),
        Value::Float(0.0)
    );
    // Two seconds later: 2 MiB more in, 1 MiB out.
    h.now = h.now.plus_ms(2000);
    h.api
        .record_network_counters(&sample(1_000_000 + 2 * MIB, MIB), h.now);
    assert_eq!(
        h.get("VIF_metrics", &vif_metrics, "io_read_kbs"),
        Value::Float(1024.0)
    );
    assert_eq!(
        h.get("VIF_metrics", &vif_metrics, "io_write_kbs"),
        Value::Float(512.0)
    );
    assert_eq!(
        h.get("VIF_metrics", &vif_metrics, "last_updated"),
        Value::DateTime(h.now.to_xapi_datetime())
    );
    let pif = h.management_pif();
    let pif_metrics = h.text("PIF", &pif, "metrics");
    assert_eq!(
        h.get("PIF_metrics", &pif_metrics, "io_read_kbs"),
        Value::Float(2048.0)
    );
    assert_eq!(
        h.get("PIF_metrics", &pif_metrics, "io_write_kbs"),
        Value::Float(1024.0)
    );
    // Unknown interfaces and counters that went backwards (a recreated port) are ignored.
    h.now = h.now.plus_ms(1000);
    let mut odd = sample(0, 0);
    odd.vifs.push(((999, 3), ByteCounters::default()));
    odd.pifs.push(("eth7".into(), ByteCounters::default()));
    h.api.record_network_counters(&odd, h.now);
    assert_eq!(
        h.get("VIF_metrics", &vif_metrics, "io_read_kbs"),
        Value::Float(1024.0)
    );
}

#[test]
fn clones_get_the_vifs_with_fresh_macs() {
    let mut h = host();
    let net = h.network("tenant-a");
    let vm = h.guest("web");
    let vif = h.vif(&vm, &net, "0", "02:00:00:00:00:01").unwrap();
    h.ok("VIF.set_locking_mode", vec![s(&vif), s("locked")]);
    let copy = text(&h.ok("VM.clone", vec![s(&vm), s("web-2")]));
    let copies = sorted_strings(&h.get("VM", &copy, "VIFs"));
    assert_eq!(copies.len(), 1);
    let c = &copies[0];
    assert_eq!(h.text("VIF", c, "network"), net);
    assert_eq!(h.text("VIF", c, "device"), "0");
    assert_eq!(h.text("VIF", c, "locking_mode"), "locked");
    assert_ne!(h.text("VIF", c, "MAC"), "02:00:00:00:00:01");
    assert_ne!(h.text("VIF", c, "metrics"), h.text("VIF", &vif, "metrics"));
}

#[test]
fn network_changes_arrive_as_events() {
    let mut h = host();
    let classes = Value::Array(vec![s("network"), s("VIF")]);
    let start = h.ok(
        "event.from",
        vec![classes.clone(), s(""), Value::Float(0.0)],
    );
    let token = text(field(&start, "token"));
    let net = h.network("tenant-a");
    let got = h.ok("event.from", vec![classes, s(&token), Value::Float(0.0)]);
    let events = field(&got, "events").as_array().unwrap().to_vec();
    assert!(events.iter().any(|e| text(field(e, "class")) == "network"
        && text(field(e, "operation")) == "add"
        && text(field(e, "ref")) == net));
}

#[test]
fn networks_vlans_and_vifs_survive_a_host_reboot() {
    let storage = FakeStorage::two_srs(256 * MIB);
    let mut first = boot(&storage, None, 1);
    let eth0 = first.management_pif();
    let mgmt_net = first.text("PIF", &eth0, "network");
    first.ok(
        "network.set_name_label",
        vec![s(&mgmt_net), s("Management")],
    );
    first.ok("PIF.add_to_other_config", vec![s(&eth0), s("k"), s("v")]);
    let tenant = first.network("tenant-a");
    let vlan = text(&first.ok("VLAN.create", vec![s(&eth0), Value::Int(42), s(&tenant)]));
    let untagged = first.text("VLAN", &vlan, "untagged_PIF");
    let vm = first.guest("web");
    let vif = first.vif(&vm, &tenant, "0", "").unwrap();
    first.ok("VIF.set_locking_mode", vec![s(&vif), s("locked")]);
    first.ok("VIF.add_ipv4_allowed", vec![s(&vif), s("10.0.0.5")]);
    let mac = first.text("VIF", &vif, "MAC");
    first.start(&vm);
    let saved = first.disk.last();
    assert_eq!(saved, first.api.export_database());
    for class in ["network", "PIF", "VLAN", "VIF"] {
        assert!(saved.classes.contains_key(class), "{class} kept");
    }
    assert!(!saved.classes.contains_key("VIF_metrics"));

    let mut second = boot(&storage, Some(saved), 2);
    // Same references, same settings.
    assert_eq!(second.management_pif(), eth0);
    assert_eq!(second.text("PIF", &eth0, "network"), mgmt_net);
    assert_eq!(
        second.text("network", &mgmt_net, "name_label"),
        "Management"
    );
    assert_eq!(
        second.get("PIF", &eth0, "other_config"),
        Value::string_map([("k", "v")])
    );
    assert_eq!(second.get("VLAN", &vlan, "tag"), Value::Int(42));
    assert_eq!(second.text("VLAN", &vlan, "untagged_PIF"), untagged);
    assert_eq!(
        second.text("PIF", &untagged, "metrics"),
        second.text("PIF", &eth0, "metrics")
    );
    assert_eq!(
        sorted_strings(&second.get("VM", &vm, "VIFs")),
        vec![vif.clone()]
    );
    assert_eq!(second.text("VIF", &vif, "MAC"), mac);
    assert_eq!(second.text("VIF", &vif, "locking_mode"), "locked");
    assert_eq!(
        sorted_strings(&second.get("VIF", &vif, "ipv4_allowed")),
        vec!["10.0.0.5"]
    );
    // The VM came back halted; so its VIF is detached, with metrics.
    assert_eq!(
        second.get("VIF", &vif, "currently_attached"),
        Value::Bool(false)
    );
    assert_eq!(second.allowed(&vif), vec!["attach"]);
    let metrics = second.text("VIF", &vif, "metrics");
    second.ok("VIF_metrics.get_record", vec![s(&metrics)]);
    // The switch got every bridge back, the VLAN's with its tag.
    let bridge = second.text("network", &tenant, "bridge");
    assert_eq!(
        second.switch.bridge(&bridge).unwrap().uplink,
        Some(Uplink {
            device: "eth0".into(),
            vlan: Some(42)
        })
    );
    assert!(second.switch.bridge("xenbr0").is_some());
    // Booting the host's own save again changes nothing.
    let again = boot(&storage, Some(second.disk.last()), 3);
    assert_eq!(
        without_host_metrics(again.api.export_database()),
        without_host_metrics(second.disk.last())
    );
    // And the guest gets its VIF when it starts again.
    let domid = second.start(&vm);
    assert!(second.switch.port(domid, 0).is_some());
}

#[test]
fn async_variants_and_list_methods_are_there() {
    let mut h = host();
    let methods = sorted_strings(&h.ok("system.listMethods", vec![]));
    for m in [
        "network.create",
        "Async.network.create",
        "network.destroy",
        "Async.network.destroy",
        "VLAN.create",
        "Async.VLAN.create",
        "VIF.plug",
        "Async.VIF.plug",
        "Async.VIF.unplug",
        "VIF.set_locking_mode",
        "VIF.add_ipv4_allowed",
        "VIF.set_qos_algorithm_params",
        "PIF.get_all_records",
        "PIF_metrics.get_all_records",
        "VIF_metrics.get_all_records",
        "PIF.plug",
        "PIF.create_VLAN",
    ] {
        assert!(methods.contains(&m.to_string()), "{m} missing");
    }
    let task = text(&h.ok(
        "Async.network.create",
        vec![record(&[("name_label", s("async"))])],
    ));
    for _ in 0..10 {
        h.api.run_tasks(h.now);
    }
    assert_eq!(h.text("task", &task, "status"), "success");
    let result = h.text("task", &task, "result");
    assert!(result.contains("OpaqueRef:"), "{result}");
    let all = h.ok("network.get_all_records", vec![]);
    let names: BTreeMap<_, _> = all
        .as_struct()
        .unwrap()
        .values()
        .map(|r| (text(field(r, "name_label")), ()))
        .collect();
    assert!(names.contains_key("async"));
}

#[test]
fn vif_operations_follow_the_vm_and_an_empty_network_takes_its_unplugged_vifs() {
    let mut h = host();
    let net = h.network("tenant-a");
    let vm = h.guest("web");
    let vif = h.vif(&vm, &net, "0", "").unwrap();
    let domid = h.start(&vm);
    assert_eq!(h.allowed(&vif), vec!["attach", "unplug"]);
    // While a clean shutdown waits for the guest, the VIF stays as it is.
    let task = text(&h.ok("Async.VM.clean_shutdown", vec![s(&vm)]));
    for _ in 0..5 {
        h.api.run_tasks(h.now);
    }
    assert_eq!(h.text("task", &task, "status"), "pending");
    assert_eq!(h.allowed(&vif), vec!["attach"]);
    let e = h.err("VIF.unplug", vec![s(&vif)]);
    assert_eq!(code(&e), "OPERATION_NOT_ALLOWED");
    assert!(e.description()[1].contains("clean_shutdown"), "{e:?}");
    // The guest stops; its VIF is detached with the domain.
    h.api.shutdown_acknowledged(domid, h.now);
    h.api
        .domain_exited(domid, keel_xenapi::ExitReason::PowerOff, h.now)
        .unwrap();
    for _ in 0..5 {
        h.api.run_tasks(h.now);
    }
    assert_eq!(h.text("task", &task, "status"), "success");
    assert!(h.guests.domain(domid).is_none());
    h.switch.domain_destroyed(domid);
    assert_eq!(h.get("VIF", &vif, "currently_attached"), Value::Bool(false));
    assert_eq!(h.allowed(&vif), vec!["attach"]);
    // A halted VM's VIF does not keep its network: it goes with it, as in xapi.
    let metrics = h.text("VIF", &vif, "metrics");
    h.ok("network.destroy", vec![s(&net)]);
    assert_eq!(
        code(&h.err("VIF.get_record", vec![s(&vif)])),
        "HANDLE_INVALID"
    );
    assert_eq!(
        code(&h.err("VIF_metrics.get_record", vec![s(&metrics)])),
        "HANDLE_INVALID"
    );
    assert!(sorted_strings(&h.get("VM", &vm, "VIFs")).is_empty());
}

#[test]
fn a_save_whose_management_pif_does_not_match_gives_no_second_xenbr0() {
    let storage = FakeStorage::two_srs(256 * MIB);
    let first = boot(&storage, None, 1);
    let mut saved = first.disk.last();
    for pif in saved.classes.get_mut("PIF").unwrap().values_mut() {
        pif.insert(
            "host".into(),
            keel_xenapi::keel_hostdb::FieldValue::Ref("OpaqueRef:another-host".into()),
        );
    }
    let mut second = boot(&storage, Some(saved), 2);
    let networks = sorted_strings(&second.ok("network.get_all", vec![]));
    let bridges: Vec<String> = networks
        .iter()
        .map(|n| second.text("network", n, "bridge"))
        .collect();
    assert_eq!(bridges, vec!["xenbr0"]);
    assert_eq!(sorted_strings(&second.ok("PIF.get_all", vec![])).len(), 1);
}
