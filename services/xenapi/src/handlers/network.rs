//! `network`: bridges on the virtual switch. `network.create/destroy`, the checked `set_MTU`,
//! `set_default_locking_mode`, purposes; the pool-wide network of the management interface
//! that exists from the first boot (`Pool-wide network associated with eth0`, bridge
//! `xenbr0`, as on XCP); and the switch state the rest of the network handlers share.
//!
//! A network's bridge is created on the switch when the network is (and at every host boot
//! for the kept ones), so VIFs can be plugged at once; its uplink is its PIF on this host
//! while that PIF is attached: the physical interface untagged, or a VLAN's tagged one.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use super::value;
use crate::api::State;
use crate::classes_network::NETWORK;
use crate::dispatch::{check_refs_exist, coerce, Args, CallContext, Outcome};
use crate::error::ApiError;
use crate::error_network::NetworkError;
use crate::network_backend::{BridgeConfig, ByteCounters, NetworkBackend, Uplink};
use crate::store::Db;
use crate::time::Timestamp;
use crate::value::{Value, NULL_REF};

/// The management interface's device on a fresh host.
pub const MANAGEMENT_DEVICE: &str = "eth0";
/// The management network's bridge, as XCP names the first NIC's.
pub const MANAGEMENT_BRIDGE: &str = "xenbr0";
/// Ethernet's MTU, every network's default.
pub const DEFAULT_MTU: i64 = 1500;
/// Smallest MTU IPv4 allows and the largest jumbo frame the switch passes.
pub const MTU_RANGE: core::ops::RangeInclusive<i64> = 68..=9216;
/// Longest bridge name (Linux's `IFNAMSIZ` less the NUL, as xapi checks).
const MAX_BRIDGE_NAME: usize = 15;
/// Names clients may not give bridges (xapi's `bridge_blacklist`): Keel and xapi make those.
const RESERVED_BRIDGE_PREFIXES: &[&str] = &["xen", "xapi", "vif", "tap", "eth"];

/// The name of the management network.
pub fn management_network_name(device: &str) -> String {
    format!("Pool-wide network associated with {device}")
}

/// The switch and what the counters need between two samples.
#[derive(Default)]
pub(crate) struct NetworkState {
    pub(crate) backend: Option<Box<dyn NetworkBackend>>,
    /// Last counters seen per metrics object, to turn totals into rates.
    pub(crate) samples: BTreeMap<String, (Timestamp, ByteCounters)>,
}

impl NetworkState {
    pub(crate) fn new(backend: Option<Box<dyn NetworkBackend>>) -> Self {
        NetworkState {
            backend,
            samples: BTreeMap::new(),
        }
    }
}

// ---- reading fields ----

pub(crate) fn text(db: &Db, r: &str, field: &str) -> String {
    db.get(r, field)
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

pub(crate) fn int(db: &Db, r: &str, field: &str) -> i64 {
    db.get(r, field).and_then(|v| v.as_int()).unwrap_or(0)
}

pub(crate) fn flag(db: &Db, r: &str, field: &str) -> bool {
    db.get(r, field).and_then(|v| v.as_bool()).unwrap_or(false)
}

pub(crate) fn refs(db: &Db, r: &str, field: &str) -> Vec<String> {
    match db.get(r, field) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

pub(crate) fn strings(db: &Db, r: &str, field: &str) -> Vec<String> {
    refs(db, r, field)
}

/// A reference field naming an existing object, or `None`.
pub(crate) fn live_ref(db: &Db, r: &str, field: &str) -> Option<String> {
    let target = text(db, r, field);
    (target != NULL_REF && db.object(&target).is_some()).then_some(target)
}

// ---- the switch ----

/// The bridge of `network` as the switch must have it.
pub(crate) fn bridge_config(db: &Db, host: &str, network: &str) -> BridgeConfig {
    let uplink = refs(db, network, "PIFs")
        .into_iter()
        .find(|pif| text(db, pif, "host") == host && flag(db, pif, "currently_attached"))
        .and_then(|pif| uplink_of(db, &pif));
    BridgeConfig {
        bridge: text(db, network, "bridge"),
        mtu: u32::try_from(int(db, network, "MTU")).unwrap_or(1500),
        uplink,
    }
}

/// Where a PIF's traffic leaves: its own device, or for a VLAN's PIF the tagged interface's
/// device with the tag.
fn uplink_of(db: &Db, pif: &str) -> Option<Uplink> {
    match live_ref(db, pif, "VLAN_master_of") {
        Some(vlan) => {
            let tagged = live_ref(db, &vlan, "tagged_PIF")?;
            Some(Uplink {
                device: text(db, &tagged, "device"),
                vlan: u16::try_from(int(db, &vlan, "tag")).ok(),
            })
        }
        None => Some(Uplink {
            device: text(db, pif, "device"),
            vlan: None,
        }),
    }
}

/// Brings `network`'s bridge on the switch to what the model says (nothing without a
/// switch, or for a network xapi would not manage).
pub(crate) fn configure_bridge(state: &mut State, network: &str) -> Result<(), ApiError> {
    if !flag(&state.db, network, "managed") {
        return Ok(());
    }
    let config = bridge_config(&state.db, &state.host, network);
    match state.network.backend.as_deref_mut() {
        Some(backend) => backend
            .configure_bridge(&config)
            .map_err(|e| e.to_api_error()),
        None => Ok(()),
    }
}

/// At host boot: every managed network's bridge on the switch. A bridge the switch refuses
/// is left out (its VIFs then fail to plug with the switch's reason); the rest come up.
pub(crate) fn bring_up_bridges(state: &mut State) {
    for network in state.db.refs("network") {
        let _ = configure_bridge(state, &network);
    }
}

// ---- creation ----

/// The management interface's network, as a fresh host has it.
pub(crate) fn create_management_network(db: &mut Db, now: Timestamp) -> String {
    db.create(
        &NETWORK,
        vec![
            (
                "name_label",
                Value::String(management_network_name(MANAGEMENT_DEVICE)),
            ),
            ("MTU", Value::Int(DEFAULT_MTU)),
            ("bridge", Value::str(MANAGEMENT_BRIDGE)),
            ("managed", Value::Bool(true)),
            ("default_locking_mode", Value::str("unlocked")),
        ],
        now,
    )
}

fn check_mtu(mtu: i64) -> Result<(), ApiError> {
    if MTU_RANGE.contains(&mtu) {
        Ok(())
    } else {
        Err(NetworkError::InvalidValue {
            field: "MTU".to_string(),
            value: mtu.to_string(),
        }
        .into())
    }
}

/// The bridge for a new network: the client's, checked, or the first free `xapi<N>`.
fn choose_bridge(db: &Db, wanted: &str) -> Result<String, ApiError> {
    let taken: Vec<String> = db
        .refs("network")
        .iter()
        .map(|n| text(db, n, "bridge"))
        .collect();
    if wanted.is_empty() {
        let free = (0u32..)
            .map(|n| format!("xapi{n}"))
            .find(|name| !taken.contains(name));
        return free.ok_or_else(|| ApiError::InternalError {
            message: "no free bridge name".to_string(),
        });
    }
    let reserved = RESERVED_BRIDGE_PREFIXES
        .iter()
        .any(|prefix| wanted.starts_with(prefix));
    let valid = wanted.len() <= MAX_BRIDGE_NAME
        && wanted
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if reserved || !valid {
        return Err(NetworkError::InvalidValue {
            field: "bridge".to_string(),
            value: crate::codec::truncate(wanted.to_string(), 64),
        }
        .into());
    }
    if taken.iter().any(|b| b == wanted) {
        return Err(NetworkError::BridgeNameExists {
            bridge: wanted.to_string(),
        }
        .into());
    }
    Ok(wanted.to_string())
}

/// Fields of a network record `network.create` takes (xapi's constructor fields).
const CREATE_FIELDS: &[&str] = &[
    "name_label",
    "name_description",
    "MTU",
    "other_config",
    "bridge",
    "managed",
    "tags",
];

/// `network.create(args)`: `args` is a network record; missing fields get xapi's defaults
/// (MTU 1500, a fresh `xapi<N>` bridge, managed).
pub fn create(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let record = args
        .value(0)
        .as_struct()
        .ok_or_else(|| ApiError::field_type("args"))?;
    let mut fields: Vec<(&'static str, Value)> = Vec::new();
    for name in CREATE_FIELDS {
        let Some(decl) = NETWORK.field(name) else {
            continue;
        };
        match record.get(decl.name) {
            None | Some(Value::Nil) => {}
            Some(v) => {
                let v = coerce(&decl.ty, v.clone(), decl.name)?;
                check_refs_exist(&ctx.state.db, &decl.ty, &v)?;
                fields.push((decl.name, v));
            }
        }
    }
    let get = |name: &str| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| v);
    let mtu = match get("MTU").and_then(Value::as_int) {
        Some(mtu) if mtu > 0 => mtu,
        _ => DEFAULT_MTU,
    };
    check_mtu(mtu)?;
    let wanted = get("bridge").and_then(Value::as_str).unwrap_or("");
    let bridge = choose_bridge(&ctx.state.db, wanted)?;
    let managed = get("managed").and_then(Value::as_bool).unwrap_or(true);
    fields.retain(|(k, _)| !matches!(*k, "MTU" | "bridge" | "managed"));
    fields.push(("MTU", Value::Int(mtu)));
    fields.push(("bridge", Value::String(bridge)));
    fields.push(("managed", Value::Bool(managed)));
    fields.push(("default_locking_mode", Value::str("unlocked")));
    let now = ctx.now;
    let network = ctx.state.db.create(&NETWORK, fields, now);
    if let Err(e) = configure_bridge(ctx.state, &network) {
        ctx.state.db.destroy(&network, now)?;
        return Err(e);
    }
    value(Value::String(network))
}

/// `network.destroy(self)`: refused while VIFs are plugged into it
/// (`NETWORK_CONTAINS_VIF`) or it has an interface on a host (`NETWORK_CONTAINS_PIF`: the
/// management network, a VLAN's); its unplugged VIFs go with it, as in xapi.
pub fn destroy(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let network = args.str(0)?.to_string();
    let db = &ctx.state.db;
    let vifs = refs(db, &network, "VIFs");
    let plugged: Vec<String> = vifs
        .iter()
        .filter(|vif| flag(db, vif, "currently_attached"))
        .cloned()
        .collect();
    if !plugged.is_empty() {
        return Err(NetworkError::NetworkContainsVif { vifs: plugged }.into());
    }
    let pifs = refs(db, &network, "PIFs");
    if !pifs.is_empty() {
        return Err(NetworkError::NetworkContainsPif { pifs }.into());
    }
    // The bridge first: if the switch refuses, nothing has changed.
    let bridge = text(db, &network, "bridge");
    let managed = flag(db, &network, "managed");
    if let (true, Some(backend)) = (managed, ctx.state.network.backend.as_deref_mut()) {
        match backend.remove_bridge(&bridge) {
            Ok(()) | Err(crate::network_backend::NetworkBackendError::NoSuchBridge(_)) => {}
            Err(e) => return Err(e.to_api_error()),
        }
    }
    let now = ctx.now;
    for vif in vifs {
        super::vif::destroy_record(&mut ctx.state.db, &vif, now)?;
    }
    ctx.state.db.destroy(&network, now)?;
    value(Value::void())
}

/// `network.set_MTU(self, value)`: 68 to 9216 octets; the bridge follows.
pub fn set_mtu(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let network = args.str(0)?.to_string();
    let mtu = args.int(1)?;
    check_mtu(mtu)?;
    let now = ctx.now;
    ctx.state
        .db
        .update(&network, vec![("MTU", Value::Int(mtu))], now)?;
    configure_bridge(ctx.state, &network)?;
    value(Value::void())
}

/// `network.set_default_locking_mode(network, value)`: what VIFs with
/// `locking_mode = network_default` do; plugged ones change at once.
pub fn set_default_locking_mode(
    ctx: &mut CallContext<'_>,
    args: &Args,
) -> Result<Outcome, ApiError> {
    let network = args.str(0)?.to_string();
    let mode = args.value(1).clone();
    let now = ctx.now;
    ctx.state
        .db
        .update(&network, vec![("default_locking_mode", mode)], now)?;
    for vif in refs(&ctx.state.db, &network, "VIFs") {
        super::vif::push_port(ctx.state, &vif)?;
    }
    value(Value::void())
}

/// Purposes that cannot be on the same host at once: NBD with and without TLS.
fn conflicting_purpose(purpose: &str) -> Option<&'static str> {
    match purpose {
        "nbd" => Some("insecure_nbd"),
        "insecure_nbd" => Some("nbd"),
        _ => None,
    }
}

/// `network.add_purpose(self, value)`: `nbd` and `insecure_nbd` exclude each other across
/// all networks (`NETWORK_INCOMPATIBLE_PURPOSES`).
pub fn add_purpose(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let network = args.str(0)?.to_string();
    let purpose = args.str(1)?.to_string();
    let db = &ctx.state.db;
    if let Some(conflict) = conflicting_purpose(&purpose) {
        let clash = db
            .refs("network")
            .iter()
            .any(|n| strings(db, n, "purpose").iter().any(|p| p == conflict));
        if clash {
            return Err(NetworkError::NetworkIncompatiblePurposes {
                new: purpose,
                conflicting: conflict.to_string(),
            }
            .into());
        }
    }
    let mut purposes = strings(db, &network, "purpose");
    if !purposes.contains(&purpose) {
        purposes.push(purpose);
        let now = ctx.now;
        ctx.state.db.set(
            &network,
            vec![(
                "purpose",
                Value::string_array(purposes.iter().map(String::as_str)),
            )],
            now,
        )?;
    }
    value(Value::void())
}

/// `network.remove_purpose(self, value)`: removing an absent purpose changes nothing.
pub fn remove_purpose(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let network = args.str(0)?.to_string();
    let purpose = args.str(1)?;
    let mut purposes = strings(&ctx.state.db, &network, "purpose");
    let before = purposes.len();
    purposes.retain(|p| p != purpose);
    if purposes.len() != before {
        let now = ctx.now;
        ctx.state.db.set(
            &network,
            vec![(
                "purpose",
                Value::string_array(purposes.iter().map(String::as_str)),
            )],
            now,
        )?;
    }
    value(Value::void())
}

// ---- counters ----

/// Turns a metrics object's byte totals into `io_read_kbs` / `io_write_kbs` since the last
/// sample and writes them (one event when they changed). The first sample, and one whose
/// totals went down (the port was recreated), only starts the count.
pub(crate) fn record_rates(
    state: &mut State,
    metrics: &str,
    counters: ByteCounters,
    now: Timestamp,
) -> Result<(), ApiError> {
    if state.db.object(metrics).is_none() {
        return Ok(());
    }
    let previous = state
        .network
        .samples
        .insert(metrics.to_string(), (now, counters));
    let Some((then, before)) = previous else {
        return Ok(());
    };
    let elapsed_ms = now.ms_since(then);
    if elapsed_ms == 0 {
        return Ok(());
    }
    let rate = |after: u64, before: u64| -> Option<f64> {
        let bytes = after.checked_sub(before)?;
        Some(bytes as f64 / 1024.0 / (elapsed_ms as f64 / 1000.0))
    };
    let (Some(read), Some(write)) = (
        rate(counters.rx_bytes, before.rx_bytes),
        rate(counters.tx_bytes, before.tx_bytes),
    ) else {
        return Ok(());
    };
    let rates = vec![
        ("io_read_kbs", Value::Float(read)),
        ("io_write_kbs", Value::Float(write)),
    ];
    update_metrics(&mut state.db, metrics, rates, now)
}

/// Writes the fields of `changes` that differ into a metrics object together with
/// `last_updated`: one event, or none when nothing changed.
pub(crate) fn update_metrics(
    db: &mut Db,
    metrics: &str,
    changes: Vec<(&'static str, Value)>,
    now: Timestamp,
) -> Result<(), ApiError> {
    let mut changed: Vec<(&'static str, Value)> = changes
        .into_iter()
        .filter(|(k, v)| db.get(metrics, k).as_ref() != Some(v))
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    changed.push(("last_updated", Value::DateTime(now.to_xapi_datetime())));
    db.set(metrics, changed, now)
}

/// Forgets the samples of metrics objects that no longer exist.
pub(crate) fn prune_samples(state: &mut State) {
    let db = &state.db;
    state
        .network
        .samples
        .retain(|metrics, _| db.object(metrics).is_some());
}
