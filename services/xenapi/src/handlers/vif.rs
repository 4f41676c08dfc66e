//! `VIF` and `VIF_metrics`: a VM's network interfaces. Creation (device numbers, MACs
//! generated when empty, checked locking and QoS settings), hot-plug and unplug through the
//! switch, the locking and QoS setters that reach a plugged VIF at once, and what a VM's
//! start and stop do to its VIFs.
//!
//! # Rules (xapi's `xapi_vif_helpers.ml`)
//! `plug` and `unplug` need the VM `Running` (`VM_BAD_POWER_STATE`), the VIF detached or
//! attached (`DEVICE_ALREADY_ATTACHED`, `DEVICE_ALREADY_DETACHED`), not the control domain,
//! and no shutdown or pause under way on the VM (`OPERATION_NOT_ALLOWED`);
//! `allowed_operations` lists exactly what these let through (`attach` always).
//! `destroy` refuses a VIF attached to a running VM.
//!
//! # Locking
//! `locking_mode` `network_default` follows the network's `default_locking_mode`
//! (`unlocked` or `disabled`); `locked` lets the guest send only from its MAC and, for IP,
//! from `ipv4_allowed` / `ipv6_allowed` (addresses or prefixes); `disabled` passes nothing.
//!
//! # QoS
//! `qos_algorithm_type = "ratelimit"` with `qos_algorithm_params:kbps = <KiB/s>` limits what
//! the guest sends; any other type than `""` and `ratelimit` is `VALUE_NOT_SUPPORTED`, a
//! `kbps` that is not a positive integer `INVALID_VALUE`.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::network::{flag, int, live_ref, refs, strings, text};
use super::value;
use crate::api::State;
use crate::classes_network::{VIF, VIF_METRICS};
use crate::dispatch::{check_refs_exist, coerce, Args, CallContext, Outcome};
use crate::error::ApiError;
use crate::error_network::NetworkError;
use crate::guest::DomId;
use crate::network_backend::{
    Mac, NetworkBackend, NetworkBackendError, TrafficFilter, VifPort, MAX_ALLOWED_ADDRESSES,
};
use crate::store::Db;
use crate::time::Timestamp;
use crate::value::Value;

/// Highest VIF device number: XCP offers PV guests devices 0 to 6.
pub const MAX_DEVICE: u32 = 6;
/// The QoS algorithm Keel implements.
pub const RATELIMIT: &str = "ratelimit";
/// Tries at a fresh random MAC before giving up (a clash is one in 2^46 per VIF).
const MAC_ATTEMPTS: usize = 16;

fn no_switch() -> ApiError {
    ApiError::OperationNotAllowed {
        reason: "this host has no virtual switch".to_string(),
    }
}

// ---- parsing what clients send ----

/// A VIF device number: an unsigned decimal 0 to [`MAX_DEVICE`].
pub(crate) fn parse_device(device: &str) -> Option<u32> {
    if device.is_empty() || device.len() > 3 || !device.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    device.parse().ok().filter(|n| *n <= MAX_DEVICE)
}

/// An address in `ipv4_allowed` / `ipv6_allowed`: one address, no prefix (xapi refuses
/// CIDR there too).
pub(crate) fn parse_allowed(text: &str, ipv6: bool) -> Option<IpAddr> {
    if ipv6 {
        text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

/// `address/prefix` as `configure_ipv4` / `configure_ipv6` take it.
pub(crate) fn valid_cidr(text: &str, ipv6: bool) -> bool {
    let Some((address, prefix)) = text.split_once('/') else {
        return false;
    };
    let max = if ipv6 { 128 } else { 32 };
    let prefix_ok = !prefix.is_empty()
        && prefix.len() <= 3
        && prefix.bytes().all(|b| b.is_ascii_digit())
        && prefix.parse::<u8>().is_ok_and(|p| p <= max);
    prefix_ok && parse_allowed(address, ipv6).is_some()
}

fn check_addresses(field: &str, values: &[String], ipv6: bool) -> Result<(), ApiError> {
    if values.iter().any(|v| parse_allowed(v, ipv6).is_none()) {
        return Err(NetworkError::InvalidIpAddressSpecified {
            parameter: field.to_string(),
        }
        .into());
    }
    if values.len() > MAX_ALLOWED_ADDRESSES {
        return Err(ApiError::ValueNotSupported {
            field: field.to_string(),
            value: values.len().to_string(),
            reason: alloc::format!("at most {MAX_ALLOWED_ADDRESSES} addresses"),
        });
    }
    Ok(())
}

fn check_qos_type(algorithm: &str) -> Result<(), ApiError> {
    if algorithm.is_empty() || algorithm == RATELIMIT {
        return Ok(());
    }
    Err(ApiError::ValueNotSupported {
        field: "qos_algorithm_type".to_string(),
        value: crate::codec::truncate(algorithm.to_string(), 64),
        reason: "Keel's switch implements ratelimit only".to_string(),
    })
}

/// `kbps`, when present, is a positive whole number of KiB/s.
fn check_qos_params(params: &BTreeMap<String, Value>) -> Result<(), ApiError> {
    if let Some(kbps) = params.get("kbps") {
        let text = kbps.as_str().unwrap_or("");
        if parse_kbps(text).is_none() {
            return Err(NetworkError::InvalidValue {
                field: "qos_algorithm_params:kbps".to_string(),
                value: crate::codec::truncate(text.to_string(), 64),
            }
            .into());
        }
    }
    Ok(())
}

fn parse_kbps(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|kbps| *kbps > 0)
}

// ---- the port the switch gets ----

/// What `vif` may send, with `network_default` resolved against its network.
fn traffic_filter(db: &Db, vif: &str) -> TrafficFilter {
    let mut mode = text(db, vif, "locking_mode");
    if mode == "network_default" {
        mode = live_ref(db, vif, "network")
            .map(|n| text(db, &n, "default_locking_mode"))
            .unwrap_or_default();
    }
    match mode.as_str() {
        "locked" => TrafficFilter::Locked {
            ipv4: strings(db, vif, "ipv4_allowed")
                .iter()
                .filter_map(|a| a.parse::<Ipv4Addr>().ok())
                .collect(),
            ipv6: strings(db, vif, "ipv6_allowed")
                .iter()
                .filter_map(|a| a.parse::<Ipv6Addr>().ok())
                .collect(),
        },
        "disabled" => TrafficFilter::Disabled,
        _ => TrafficFilter::Unlocked,
    }
}

fn rate_limit(db: &Db, vif: &str) -> Option<u64> {
    if text(db, vif, "qos_algorithm_type") != RATELIMIT {
        return None;
    }
    match db.get(vif, "qos_algorithm_params") {
        Some(Value::Struct(params)) => params
            .get("kbps")
            .and_then(Value::as_str)
            .and_then(parse_kbps),
        _ => None,
    }
}

/// The switch port of `vif` for the domain `domid`.
fn port_of(db: &Db, vif: &str, domid: DomId) -> Result<VifPort, ApiError> {
    let network = live_ref(db, vif, "network").ok_or_else(|| ApiError::InternalError {
        message: alloc::format!("VIF {vif} has no network"),
    })?;
    let device = parse_device(&text(db, vif, "device")).unwrap_or(0);
    let mtu = match int(db, vif, "MTU") {
        mtu if mtu > 0 => mtu,
        _ => int(db, &network, "MTU"),
    };
    Ok(VifPort {
        domid,
        device,
        mac: Mac::parse(&text(db, vif, "MAC")).unwrap_or_default(),
        mtu: u32::try_from(mtu).unwrap_or(1500),
        bridge: text(db, &network, "bridge"),
        filter: traffic_filter(db, vif),
        rate_limit_kbps: rate_limit(db, vif),
        vif_uuid: text(db, vif, "uuid"),
    })
}

fn domid_of_vm(db: &Db, vm: &str) -> Option<DomId> {
    DomId::try_from(int(db, vm, "domid")).ok()
}

/// Sends a plugged VIF's current settings to the switch (nothing for an unplugged one: it
/// gets them when it is plugged).
pub(crate) fn push_port(state: &mut State, vif: &str) -> Result<(), ApiError> {
    if !flag(&state.db, vif, "currently_attached") {
        return Ok(());
    }
    let vm = text(&state.db, vif, "VM");
    let Some(domid) = domid_of_vm(&state.db, &vm) else {
        return Ok(());
    };
    let port = port_of(&state.db, vif, domid)?;
    match state.network.backend.as_deref_mut() {
        Some(backend) => backend.update_vif(&port).map_err(|e| e.to_api_error()),
        None => Ok(()),
    }
}

/// The metrics of the VIF the switch knows as (domid, device).
pub(crate) fn metrics_of_port(db: &Db, domid: DomId, device: u32) -> Option<String> {
    let vm = db
        .refs("VM")
        .into_iter()
        .find(|vm| domid_of_vm(db, vm) == Some(domid))?;
    let vif = refs(db, &vm, "VIFs").into_iter().find(|vif| {
        flag(db, vif, "currently_attached")
            && parse_device(&text(db, vif, "device")) == Some(device)
    })?;
    live_ref(db, &vif, "metrics")
}

// ---- operations and their rules ----

/// Why `op` cannot run on `vif` now, if it cannot.
fn refusal(db: &Db, vif: &str, op: &str) -> Option<ApiError> {
    if let Some(Value::Struct(current)) = db.get(vif, "current_operations") {
        if let Some(busy) = current.values().next().and_then(Value::as_str) {
            return Some(ApiError::OtherOperationInProgress {
                class: "VIF".to_string(),
                reference: vif.to_string(),
                operation: busy.to_string(),
            });
        }
    }
    if op == "attach" {
        return None;
    }
    let vm = text(db, vif, "VM");
    if op == "plug" && flag(db, &vm, "is_control_domain") {
        return Some(ApiError::OperationNotAllowed {
            reason: "Control domain does not support hotplug".to_string(),
        });
    }
    let power = text(db, &vm, "power_state");
    let plugged = flag(db, vif, "currently_attached");
    match (power.as_str(), plugged, op) {
        ("Running", true, "plug") => {
            return Some(
                NetworkError::DeviceAlreadyAttached {
                    device: vif.to_string(),
                }
                .into(),
            )
        }
        ("Running", false, "unplug") => {
            return Some(
                NetworkError::DeviceAlreadyDetached {
                    device: vif.to_string(),
                }
                .into(),
            )
        }
        ("Running", _, _) => {}
        (actual, _, _) => {
            return Some(ApiError::VmBadPowerState {
                vm,
                expected: "running".to_string(),
                actual: actual.to_ascii_lowercase(),
            })
        }
    }
    if let Some(Value::Struct(vm_ops)) = db.get(&vm, "current_operations") {
        let stopping = vm_ops.values().filter_map(Value::as_str).find(|op| {
            matches!(
                *op,
                "clean_shutdown" | "hard_shutdown" | "suspend" | "pause"
            )
        });
        if let Some(stopping) = stopping {
            return Some(ApiError::OperationNotAllowed {
                reason: alloc::format!("Current operation on VM:{vm} is {stopping}"),
            });
        }
    }
    None
}

fn allowed_operations(db: &Db, vif: &str) -> Value {
    Value::string_array(
        crate::classes_network::VIF_OPERATIONS
            .iter()
            .copied()
            .filter(|op| refusal(db, vif, op).is_none()),
    )
}

/// Recomputes `allowed_operations` of `vif` (one event if it changed).
pub(crate) fn refresh_allowed(db: &mut Db, vif: &str, now: Timestamp) -> Result<(), ApiError> {
    let ops = allowed_operations(db, vif);
    db.update(vif, vec![("allowed_operations", ops)], now)?;
    Ok(())
}

/// The VM's power state or operations changed: its VIFs' `allowed_operations` follow.
pub(crate) fn refresh_vm_vifs(db: &mut Db, vm: &str, now: Timestamp) -> Result<(), ApiError> {
    for vif in refs(db, vm, "VIFs") {
        refresh_allowed(db, &vif, now)?;
    }
    Ok(())
}

fn check(db: &Db, vif: &str, op: &str) -> Result<(), ApiError> {
    match refusal(db, vif, op) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn backend(state: &mut State) -> Result<&mut dyn NetworkBackend, ApiError> {
    match state.network.backend.as_deref_mut() {
        Some(b) => Ok(b),
        None => Err(no_switch()),
    }
}

fn write_attached(
    db: &mut Db,
    vif: &str,
    attached: bool,
    failure: Option<String>,
    now: Timestamp,
) -> Result<(), ApiError> {
    let (code, detail) = match failure {
        Some(reason) => (1, reason),
        None => (0, String::new()),
    };
    db.update(
        vif,
        vec![
            ("currently_attached", Value::Bool(attached)),
            ("status_code", Value::Int(code)),
            ("status_detail", Value::String(detail)),
        ],
        now,
    )?;
    refresh_allowed(db, vif, now)
}

// ---- a VM's start and stop ----

/// Whether the VM has VIFs (its start keeps the domain paused until they are attached).
pub(crate) fn has_vifs(db: &Db, vm: &str) -> bool {
    !refs(db, vm, "VIFs").is_empty()
}

/// The VM just started as `domid`: every VIF gets its netback device and switch port, in
/// device order. A VIF the switch refuses stays detached with the reason in
/// `status_detail` (`status_code` 1): the VM runs without it rather than not at all.
pub(crate) fn attach_vm_vifs(
    state: &mut State,
    vm: &str,
    domid: DomId,
    now: Timestamp,
) -> Result<(), ApiError> {
    let mut vifs: Vec<(u32, String)> = refs(&state.db, vm, "VIFs")
        .into_iter()
        .map(|vif| {
            (
                parse_device(&text(&state.db, &vif, "device")).unwrap_or(0),
                vif,
            )
        })
        .collect();
    vifs.sort();
    for (_, vif) in vifs {
        let port = port_of(&state.db, &vif, domid)?;
        let outcome = match state.network.backend.as_deref_mut() {
            Some(backend) => backend.attach_vif(&port).map_err(|e| e.to_api_error()),
            None => Err(no_switch()),
        };
        match outcome {
            Ok(()) => write_attached(&mut state.db, &vif, true, None, now)?,
            Err(e) => {
                let reason = e.description().join(" ");
                write_attached(&mut state.db, &vif, false, Some(reason), now)?;
            }
        }
    }
    Ok(())
}

/// The VM's domain is gone, and with it its netback devices and switch ports (the
/// toolstack's `destroy` removes a domain's backends): its VIFs are detached.
pub(crate) fn set_vm_vifs_detached(db: &mut Db, vm: &str, now: Timestamp) -> Result<(), ApiError> {
    for vif in refs(db, vm, "VIFs") {
        db.update(
            vif.as_str(),
            vec![("currently_attached", Value::Bool(false))],
            now,
        )?;
        refresh_allowed(db, &vif, now)?;
    }
    Ok(())
}

/// Destroys a VIF record and its metrics (the VM's or network's destruction, `VIF.destroy`).
pub(crate) fn destroy_record(db: &mut Db, vif: &str, now: Timestamp) -> Result<(), ApiError> {
    if let Some(metrics) = live_ref(db, vif, "metrics") {
        db.destroy(&metrics, now)?;
    }
    db.destroy(vif, now)
}

/// The VM is being destroyed: its VIFs go with it.
pub(crate) fn destroy_vm_vifs(db: &mut Db, vm: &str, now: Timestamp) -> Result<(), ApiError> {
    for vif in refs(db, vm, "VIFs") {
        destroy_record(db, &vif, now)?;
    }
    Ok(())
}

/// A clone or copy of `source` gets the same VIFs (network, device, settings), each with a
/// fresh MAC, as xapi's `VM.clone` and `VM.copy` do (two guests with one MAC on a network
/// would steal each other's frames).
pub(crate) fn copy_vm_vifs(
    db: &mut Db,
    source: &str,
    target: &str,
    now: Timestamp,
) -> Result<(), ApiError> {
    for vif in refs(db, source, "VIFs") {
        let mut fields: Vec<(&'static str, Value)> = Vec::new();
        for name in COPIED_FIELDS {
            if let Some(v) = db.get(&vif, name) {
                fields.push((name, v));
            }
        }
        fields.push(("MAC", Value::String(generate_mac(db)?.to_string())));
        fields.push(("MAC_autogenerated", Value::Bool(true)));
        fields.push(("VM", Value::str(target)));
        create_record(db, fields, now)?;
    }
    Ok(())
}

/// What a VIF copy takes from its source.
const COPIED_FIELDS: &[&str] = &[
    "device",
    "network",
    "MTU",
    "other_config",
    "qos_algorithm_type",
    "qos_algorithm_params",
    "locking_mode",
    "ipv4_allowed",
    "ipv6_allowed",
    "ipv4_configuration_mode",
    "ipv4_addresses",
    "ipv4_gateway",
    "ipv6_configuration_mode",
    "ipv6_addresses",
    "ipv6_gateway",
];

// ---- creation ----

/// A locally administered unicast MAC no VIF has.
fn generate_mac(db: &mut Db) -> Result<Mac, ApiError> {
    let taken: Vec<String> = db
        .refs("VIF")
        .iter()
        .map(|vif| text(db, vif, "MAC").to_ascii_lowercase())
        .collect();
    for _ in 0..MAC_ATTEMPTS {
        // A v4 UUID's first twelve hex digits are random.
        let uuid = db.new_uuid();
        let hex: Vec<u8> = uuid
            .bytes()
            .filter(u8::is_ascii_hexdigit)
            .take(12)
            .collect();
        let mut mac = [0u8; 6];
        for (i, byte) in mac.iter_mut().enumerate() {
            let pair = core::str::from_utf8(&hex[i * 2..i * 2 + 2]).unwrap_or("00");
            *byte = u8::from_str_radix(pair, 16).unwrap_or(0);
        }
        // Locally administered, unicast.
        mac[0] = (mac[0] & 0xfc) | 0x02;
        let mac = Mac(mac);
        if !taken.contains(&mac.to_string()) {
            return Ok(mac);
        }
    }
    Err(ApiError::InternalError {
        message: "could not find a free MAC address".to_string(),
    })
}

fn create_record(
    db: &mut Db,
    mut fields: Vec<(&'static str, Value)>,
    now: Timestamp,
) -> Result<String, ApiError> {
    let metrics = db.create(&VIF_METRICS, Vec::new(), now);
    fields.push(("metrics", Value::String(metrics)));
    fields.push(("qos_supported_algorithms", Value::string_array([RATELIMIT])));
    let vif = db.create(&VIF, fields, now);
    refresh_allowed(db, &vif, now)?;
    Ok(vif)
}

/// Fields of a VIF record `VIF.create` takes (xapi's constructor fields).
const CREATE_FIELDS: &[&str] = &[
    "device",
    "network",
    "VM",
    "MAC",
    "MTU",
    "other_config",
    "qos_algorithm_type",
    "qos_algorithm_params",
    "locking_mode",
    "ipv4_allowed",
    "ipv6_allowed",
];

/// `VIF.create(args)`: `args` is a VIF record. `VM`, `network` and `device` are required;
/// an empty `MAC` gets a generated one; `MTU` 0 or absent means the network's.
pub fn create(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let record = args
        .value(0)
        .as_struct()
        .ok_or_else(|| ApiError::field_type("args"))?;
    let mut given: BTreeMap<&'static str, Value> = BTreeMap::new();
    for name in CREATE_FIELDS {
        let Some(decl) = VIF.field(name) else {
            continue;
        };
        match record.get(decl.name) {
            None | Some(Value::Nil) => {}
            Some(v) => {
                let v = coerce(&decl.ty, v.clone(), decl.name)?;
                check_refs_exist(&ctx.state.db, &decl.ty, &v)?;
                given.insert(decl.name, v);
            }
        }
    }
    let db = &ctx.state.db;
    let text_of = |name: &str| given.get(name).and_then(Value::as_str).unwrap_or("");
    let vm = text_of("VM").to_string();
    db.expect("VM", &vm)?;
    let network = text_of("network").to_string();
    db.expect("network", &network)?;
    let device = text_of("device").to_string();
    let device_number = parse_device(&device).ok_or_else(|| NetworkError::InvalidDevice {
        device: crate::codec::truncate(device.clone(), 64),
    })?;
    let mac_text = text_of("MAC").to_string();
    let explicit = if mac_text.is_empty() {
        None
    } else {
        let mac = Mac::parse(&mac_text)
            .filter(|m| !m.is_multicast())
            .ok_or_else(|| NetworkError::MacInvalid {
                mac: crate::codec::truncate(mac_text.clone(), 64),
            })?;
        Some(mac)
    };
    // After the MAC, as in xapi.
    let clash = refs(db, &vm, "VIFs")
        .iter()
        .any(|vif| parse_device(&text(db, vif, "device")) == Some(device_number));
    if clash {
        return Err(NetworkError::DeviceAlreadyExists { device }.into());
    }
    let mtu = match given.get("MTU").and_then(Value::as_int) {
        Some(mtu) if mtu > 0 => mtu,
        _ => int(db, &network, "MTU"),
    };
    if !super::network::MTU_RANGE.contains(&mtu) {
        return Err(NetworkError::InvalidValue {
            field: "MTU".to_string(),
            value: mtu.to_string(),
        }
        .into());
    }
    check_qos_type(text_of("qos_algorithm_type"))?;
    if let Some(Value::Struct(params)) = given.get("qos_algorithm_params") {
        check_qos_params(params)?;
    }
    for (field, ipv6) in [("ipv4_allowed", false), ("ipv6_allowed", true)] {
        let values = given
            .get(field)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i.as_str().map(String::from))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        check_addresses(field, &values, ipv6)?;
        given.insert(
            field,
            Value::string_array(dedup(values).iter().map(String::as_str)),
        );
    }
    let db = &mut ctx.state.db;
    let (mac, autogenerated) = match explicit {
        Some(mac) => (mac, false),
        None => (generate_mac(db)?, true),
    };
    given.insert("device", Value::String(device_number.to_string()));
    given.insert("MAC", Value::String(mac.to_string()));
    given.insert("MTU", Value::Int(mtu));
    given.insert("MAC_autogenerated", Value::Bool(autogenerated));
    let vif = create_record(db, given.into_iter().collect(), ctx.now)?;
    value(Value::String(vif))
}

fn dedup(values: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// `VM.get_allowed_VIF_devices(vm)`: the device numbers 0 to [`MAX_DEVICE`] the VM's VIFs
/// do not use, in order.
pub fn get_allowed_vif_devices(
    ctx: &mut CallContext<'_>,
    args: &Args,
) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?;
    let db = &ctx.state.db;
    let used: Vec<u32> = refs(db, vm, "VIFs")
        .iter()
        .filter_map(|vif| parse_device(&text(db, vif, "device")))
        .collect();
    let free: Vec<String> = (0..=MAX_DEVICE)
        .filter(|d| !used.contains(d))
        .map(|d| d.to_string())
        .collect();
    value(Value::string_array(free.iter().map(String::as_str)))
}

/// `VIF.destroy(self)`: not while attached to a VM's domain (running or paused: its port
/// would outlive the record).
pub fn destroy(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vif = args.str(0)?.to_string();
    let db = &ctx.state.db;
    let vm = text(db, &vif, "VM");
    if domid_of_vm(db, &vm).is_some() && flag(db, &vif, "currently_attached") {
        return Err(ApiError::OperationNotAllowed {
            reason: "VIF currently attached to a running VM".to_string(),
        });
    }
    destroy_record(&mut ctx.state.db, &vif, ctx.now)?;
    value(Value::void())
}

// ---- hot-plug ----

/// `VIF.plug(self)`: hot-plugs the VIF into the running VM.
pub fn plug(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vif = args.str(0)?.to_string();
    check(&ctx.state.db, &vif, "plug")?;
    let vm = text(&ctx.state.db, &vif, "VM");
    let domid = domid_of_vm(&ctx.state.db, &vm).ok_or_else(|| ApiError::VmBadPowerState {
        vm: vm.clone(),
        expected: "running".to_string(),
        actual: "halted".to_string(),
    })?;
    let port = port_of(&ctx.state.db, &vif, domid)?;
    let now = ctx.now;
    if let Err(e) = backend(ctx.state)?.attach_vif(&port) {
        let e = e.to_api_error();
        let reason = e.description().join(" ");
        write_attached(&mut ctx.state.db, &vif, false, Some(reason), now)?;
        return Err(e);
    }
    write_attached(&mut ctx.state.db, &vif, true, None, now)?;
    value(Value::void())
}

fn unplug_with(ctx: &mut CallContext<'_>, args: &Args, force: bool) -> Result<Outcome, ApiError> {
    let vif = args.str(0)?.to_string();
    check(&ctx.state.db, &vif, "unplug")?;
    let vm = text(&ctx.state.db, &vif, "VM");
    let now = ctx.now;
    if let Some(domid) = domid_of_vm(&ctx.state.db, &vm) {
        let device = parse_device(&text(&ctx.state.db, &vif, "device")).unwrap_or(0);
        match backend(ctx.state)?.detach_vif(domid, device, force) {
            Ok(()) | Err(NetworkBackendError::NoSuchDomain(_)) => {}
            Err(e) => return Err(e.to_api_error()),
        }
    }
    write_attached(&mut ctx.state.db, &vif, false, None, now)?;
    value(Value::void())
}

/// `VIF.unplug(self)`: asks the guest to release the device, then removes it.
pub fn unplug(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    unplug_with(ctx, args, false)
}

/// `VIF.unplug_force(self)`: removes the device without waiting for the guest.
pub fn unplug_force(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    unplug_with(ctx, args, true)
}

/// `VIF.move(self, network)`: a plugged VIF's port moves to the other bridge at once,
/// without the guest noticing.
pub fn move_to(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vif = args.str(0)?.to_string();
    let network = args.str(1)?.to_string();
    let old = text(&ctx.state.db, &vif, "network");
    let now = ctx.now;
    ctx.state
        .db
        .update(&vif, vec![("network", Value::String(network))], now)?;
    if let Err(e) = push_port(ctx.state, &vif) {
        ctx.state
            .db
            .update(&vif, vec![("network", Value::String(old))], now)?;
        return Err(e);
    }
    value(Value::void())
}

// ---- locking and QoS ----

/// Writes `changes` to a VIF and hands a plugged one's new settings to the switch; if the
/// switch refuses, the VIF keeps its old settings.
fn change_settings(
    ctx: &mut CallContext<'_>,
    vif: &str,
    changes: Vec<(&'static str, Value)>,
) -> Result<(), ApiError> {
    let now = ctx.now;
    let before: Vec<(&'static str, Value)> = changes
        .iter()
        .filter_map(|(k, _)| Some((*k, ctx.state.db.get(vif, k)?)))
        .collect();
    ctx.state.db.update(vif, changes, now)?;
    if let Err(e) = push_port(ctx.state, vif) {
        ctx.state.db.update(vif, before, now)?;
        return Err(e);
    }
    Ok(())
}

/// `VIF.set_locking_mode(self, value)`.
pub fn set_locking_mode(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vif = args.str(0)?.to_string();
    let mode = args.value(1).clone();
    change_settings(ctx, &vif, vec![("locking_mode", mode)])?;
    value(Value::void())
}

fn set_allowed(
    ctx: &mut CallContext<'_>,
    args: &Args,
    field: &'static str,
    ipv6: bool,
) -> Result<Outcome, ApiError> {
    let vif = args.str(0)?.to_string();
    let values: Vec<String> = args.strings(1)?.into_iter().map(String::from).collect();
    check_addresses(field, &values, ipv6)?;
    let values = dedup(values);
    let list = Value::string_array(values.iter().map(String::as_str));
    change_settings(ctx, &vif, vec![(field, list)])?;
    value(Value::void())
}

fn add_allowed(
    ctx: &mut CallContext<'_>,
    args: &Args,
    field: &'static str,
    ipv6: bool,
) -> Result<Outcome, ApiError> {
    let vif = args.str(0)?.to_string();
    let address = args.str(1)?.to_string();
    check_addresses(field, core::slice::from_ref(&address), ipv6)?;
    let mut values = strings(&ctx.state.db, &vif, field);
    if !values.contains(&address) {
        values.push(address);
        let list = Value::string_array(values.iter().map(String::as_str));
        change_settings(ctx, &vif, vec![(field, list)])?;
    }
    value(Value::void())
}

fn remove_allowed(
    ctx: &mut CallContext<'_>,
    args: &Args,
    field: &'static str,
) -> Result<Outcome, ApiError> {
    let vif = args.str(0)?.to_string();
    let address = args.str(1)?;
    let mut values = strings(&ctx.state.db, &vif, field);
    let before = values.len();
    values.retain(|v| v != address);
    if values.len() != before {
        let list = Value::string_array(values.iter().map(String::as_str));
        change_settings(ctx, &vif, vec![(field, list)])?;
    }
    value(Value::void())
}

/// `VIF.set_ipv4_allowed(self, value)`.
pub fn set_ipv4_allowed(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    set_allowed(ctx, args, "ipv4_allowed", false)
}

/// `VIF.add_ipv4_allowed(self, value)`.
pub fn add_ipv4_allowed(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    add_allowed(ctx, args, "ipv4_allowed", false)
}

/// `VIF.remove_ipv4_allowed(self, value)`: removing an absent address changes nothing.
pub fn remove_ipv4_allowed(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    remove_allowed(ctx, args, "ipv4_allowed")
}

/// `VIF.set_ipv6_allowed(self, value)`.
pub fn set_ipv6_allowed(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    set_allowed(ctx, args, "ipv6_allowed", true)
}

/// `VIF.add_ipv6_allowed(self, value)`.
pub fn add_ipv6_allowed(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    add_allowed(ctx, args, "ipv6_allowed", true)
}

/// `VIF.remove_ipv6_allowed(self, value)`.
pub fn remove_ipv6_allowed(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    remove_allowed(ctx, args, "ipv6_allowed")
}

/// `configure_ipv4` / `configure_ipv6`: the configuration a guest agent applies inside the
/// guest; Keel records it. `Static` needs an address with its prefix length.
fn configure_ip(ctx: &mut CallContext<'_>, args: &Args, ipv6: bool) -> Result<Outcome, ApiError> {
    let vif = args.str(0)?.to_string();
    let mode = args.str(1)?.to_string();
    let address = args.opt_str(2).unwrap_or("").to_string();
    let gateway = args.opt_str(3).unwrap_or("").to_string();
    let (mode_field, addresses_field, gateway_field) = if ipv6 {
        ("ipv6_configuration_mode", "ipv6_addresses", "ipv6_gateway")
    } else {
        ("ipv4_configuration_mode", "ipv4_addresses", "ipv4_gateway")
    };
    let valid_ip = |text: &str| parse_allowed(text, ipv6).is_some();
    let addresses = if mode == "Static" {
        if !valid_cidr(&address, ipv6) {
            return Err(NetworkError::InvalidIpAddressSpecified {
                parameter: "address".to_string(),
            }
            .into());
        }
        if !gateway.is_empty() && !valid_ip(&gateway) {
            return Err(NetworkError::InvalidIpAddressSpecified {
                parameter: "gateway".to_string(),
            }
            .into());
        }
        vec![address]
    } else {
        Vec::new()
    };
    let gateway = if mode == "Static" {
        gateway
    } else {
        String::new()
    };
    let now = ctx.now;
    ctx.state.db.update(
        &vif,
        vec![
            (mode_field, Value::String(mode)),
            (
                addresses_field,
                Value::string_array(addresses.iter().map(String::as_str)),
            ),
            (gateway_field, Value::String(gateway)),
        ],
        now,
    )?;
    value(Value::void())
}

/// `VIF.configure_ipv4(self, mode, address, gateway)`.
pub fn configure_ipv4(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    configure_ip(ctx, args, false)
}

/// `VIF.configure_ipv6(self, mode, address, gateway)`.
pub fn configure_ipv6(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    configure_ip(ctx, args, true)
}

/// `VIF.set_qos_algorithm_type(self, value)`: `""` or `ratelimit`.
pub fn set_qos_algorithm_type(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vif = args.str(0)?.to_string();
    let algorithm = args.str(1)?.to_string();
    check_qos_type(&algorithm)?;
    change_settings(
        ctx,
        &vif,
        vec![("qos_algorithm_type", Value::String(algorithm))],
    )?;
    value(Value::void())
}

/// `VIF.set_qos_algorithm_params(self, value)`.
pub fn set_qos_algorithm_params(
    ctx: &mut CallContext<'_>,
    args: &Args,
) -> Result<Outcome, ApiError> {
    let vif = args.str(0)?.to_string();
    let params = args
        .value(1)
        .as_struct()
        .ok_or_else(|| ApiError::field_type("value"))?
        .clone();
    check_qos_params(&params)?;
    change_settings(
        ctx,
        &vif,
        vec![("qos_algorithm_params", Value::Struct(params))],
    )?;
    value(Value::void())
}

fn qos_params(db: &Db, vif: &str) -> BTreeMap<String, Value> {
    match db.get(vif, "qos_algorithm_params") {
        Some(Value::Struct(params)) => params,
        _ => BTreeMap::new(),
    }
}

/// `VIF.add_to_qos_algorithm_params(self, key, value)`: `MAP_DUPLICATE_KEY` for a present
/// key, as every map's `add_to_`.
pub fn add_to_qos_algorithm_params(
    ctx: &mut CallContext<'_>,
    args: &Args,
) -> Result<Outcome, ApiError> {
    let vif = args.str(0)?.to_string();
    let key = args.str(1)?.to_string();
    let mut params = qos_params(&ctx.state.db, &vif);
    if params.contains_key(&key) {
        return Err(ApiError::MapDuplicateKey {
            class: "VIF".to_string(),
            field: "qos_algorithm_params".to_string(),
            reference: vif,
            key,
        });
    }
    params.insert(key, args.value(2).clone());
    check_qos_params(&params)?;
    change_settings(
        ctx,
        &vif,
        vec![("qos_algorithm_params", Value::Struct(params))],
    )?;
    value(Value::void())
}

/// `VIF.remove_from_qos_algorithm_params(self, key)`.
pub fn remove_from_qos_algorithm_params(
    ctx: &mut CallContext<'_>,
    args: &Args,
) -> Result<Outcome, ApiError> {
    let vif = args.str(0)?.to_string();
    let mut params = qos_params(&ctx.state.db, &vif);
    if params.remove(args.str(1)?).is_some() {
        change_settings(
            ctx,
            &vif,
            vec![("qos_algorithm_params", Value::Struct(params))],
        )?;
    }
    value(Value::void())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_small_decimals() {
        assert_eq!(parse_device("0"), Some(0));
        assert_eq!(parse_device("6"), Some(6));
        assert_eq!(parse_device("06"), Some(6));
        for bad in ["", "7", "-1", "+1", "a", "1 ", "99999999999999999999"] {
            assert_eq!(parse_device(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn allowed_addresses_are_single_addresses() {
        assert!(parse_allowed("10.0.0.5", false).is_some());
        assert!(parse_allowed("fe80::1", true).is_some());
        for bad in ["10.0.0", "10.0.0.256", "10.0.0.0/24", "fe80::1", ""] {
            assert!(parse_allowed(bad, false).is_none(), "{bad:?}");
        }
        for bad in ["10.0.0.1", "2001:db8::/32", "::g"] {
            assert!(parse_allowed(bad, true).is_none(), "{bad:?}");
        }
        assert!(valid_cidr("10.0.0.5/24", false));
        assert!(valid_cidr("2001:db8::5/64", true));
        for bad in [
            "10.0.0.5",
            "10.0.0.5/33",
            "10.0.0.5/",
            "10.0.0.5/+1",
            "x/24",
        ] {
            assert!(!valid_cidr(bad, false), "{bad:?}");
        }
    }

    #[test]
    fn rate_limits_are_positive_whole_kbps() {
        assert_eq!(parse_kbps("1024"), Some(1024));
        for bad in ["", "0", "-5", "1.5", "fast"] {
            assert_eq!(parse_kbps(bad), None, "{bad:?}");
        }
    }
}
