//! `VLAN`: an 802.1Q tag on a physical interface, carried by a network. `VLAN.create` makes
//! the VLAN object and its untagged interface (a PIF on the network, sharing the tagged
//! interface's metrics, as xapi does) and plugs it, so the network's bridge sends tagged
//! frames out of the physical interface; `VLAN.destroy` undoes both.
//!
//! Checks, in xapi's order: the network has no interface on this host yet
//! (`NETWORK_ALREADY_CONNECTED`), the tagged interface is not itself a VLAN's
//! (`PIF_IS_VLAN`), the tag is 0 to 4094 (`VLAN_TAG_INVALID`), the interface has no VLAN
//! with that tag (`PIF_VLAN_EXISTS`).

use alloc::string::{String, ToString};
use alloc::vec;

use super::network::{flag, int, live_ref, refs, text};
use super::pif::set_attached;
use super::value;
use crate::classes_network::{PIF, VLAN};
use crate::dispatch::{Args, CallContext, Outcome};
use crate::error::ApiError;
use crate::error_network::NetworkError;
use crate::store::Db;
use crate::value::Value;

/// The MAC xapi gives VLAN interfaces (they send with the physical interface's).
pub const VLAN_PIF_MAC: &str = "fe:ff:ff:ff:ff:ff";
/// Highest 802.1Q tag a VLAN may have (4095 is reserved).
pub const MAX_TAG: i64 = 4094;

/// `VLAN.create(tagged_PIF, tag, network)`.
pub fn create(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let tagged = args.str(0)?.to_string();
    let tag = args.int(1)?;
    let network = args.str(2)?.to_string();
    let (vlan, _) = create_vlan(ctx, &tagged, tag, &network)?;
    value(Value::String(vlan))
}

/// Makes a VLAN and its untagged interface and plugs it; returns (VLAN, untagged PIF).
pub(crate) fn create_vlan(
    ctx: &mut CallContext<'_>,
    tagged: &str,
    tag: i64,
    network: &str,
) -> Result<(String, String), ApiError> {
    let db = &ctx.state.db;
    let host = text(db, tagged, "host");
    if let Some(pif) = refs(db, network, "PIFs")
        .into_iter()
        .find(|pif| text(db, pif, "host") == host)
    {
        return Err(NetworkError::NetworkAlreadyConnected {
            network: network.to_string(),
            pif,
        }
        .into());
    }
    if live_ref(db, tagged, "VLAN_master_of").is_some() || int(db, tagged, "VLAN") >= 0 {
        return Err(NetworkError::PifIsVlan {
            pif: tagged.to_string(),
        }
        .into());
    }
    if !(0..=MAX_TAG).contains(&tag) {
        return Err(NetworkError::VlanTagInvalid { tag }.into());
    }
    let device = text(db, tagged, "device");
    let exists = refs(db, tagged, "VLAN_slave_of")
        .iter()
        .any(|vlan| int(db, vlan, "tag") == tag);
    if exists {
        return Err(NetworkError::PifVlanExists { device }.into());
    }
    let now = ctx.now;
    let fields = vec![
        ("device", Value::String(device)),
        ("network", Value::str(network)),
        ("host", Value::String(host)),
        ("MAC", Value::str(VLAN_PIF_MAC)),
        ("MTU", Value::Int(int(db, tagged, "MTU"))),
        ("VLAN", Value::Int(tag)),
        ("metrics", Value::String(text(db, tagged, "metrics"))),
        ("physical", Value::Bool(false)),
        ("currently_attached", Value::Bool(false)),
        ("ip_configuration_mode", Value::str("None")),
        ("ipv6_configuration_mode", Value::str("None")),
        (
            "primary_address_type",
            Value::String(text(db, tagged, "primary_address_type")),
        ),
        ("managed", Value::Bool(true)),
        ("igmp_snooping_status", Value::str("unknown")),
    ];
    let db = &mut ctx.state.db;
    let untagged = db.create(&PIF, fields, now);
    let vlan = db.create(
        &VLAN,
        vec![
            ("tagged_PIF", Value::str(tagged)),
            ("untagged_PIF", Value::String(untagged.clone())),
            ("tag", Value::Int(tag)),
        ],
        now,
    );
    db.set(
        &untagged,
        vec![("VLAN_master_of", Value::String(vlan.clone()))],
        now,
    )?;
    if let Err(e) = set_attached(ctx.state, &untagged, true, now) {
        ctx.state.db.destroy(&vlan, now)?;
        ctx.state.db.destroy(&untagged, now)?;
        return Err(e);
    }
    Ok((vlan, untagged))
}

/// `pool.create_VLAN_from_PIF(pif, network, VLAN)`: the VLAN on every host's interface
/// like `pif` — on Keel's one-host pool, `pif` itself. Returns the new interfaces.
pub fn pool_create_vlan_from_pif(
    ctx: &mut CallContext<'_>,
    args: &Args,
) -> Result<Outcome, ApiError> {
    let tagged = args.str(0)?.to_string();
    let network = args.str(1)?.to_string();
    let tag = args.int(2)?;
    let (_, untagged) = create_vlan(ctx, &tagged, tag, &network)?;
    value(Value::Array(vec![Value::String(untagged)]))
}

/// `pool.create_VLAN(device, network, VLAN)` (deprecated): the VLAN on this host's physical
/// interface named `device`. Returns the new interfaces.
pub fn pool_create_vlan(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let device = args.str(0)?.to_string();
    let network = args.str(1)?.to_string();
    let tag = args.int(2)?;
    let host = ctx.host_ref().to_string();
    let tagged = physical_pif(&ctx.state.db, &host, &device)?;
    let (_, untagged) = create_vlan(ctx, &tagged, tag, &network)?;
    value(Value::Array(vec![Value::String(untagged)]))
}

/// The physical (not VLAN) interface of `host` named `device`, or `INVALID_VALUE`.
pub(crate) fn physical_pif(db: &Db, host: &str, device: &str) -> Result<String, ApiError> {
    db.refs("PIF")
        .into_iter()
        .find(|pif| {
            text(db, pif, "device") == device
                && text(db, pif, "host") == host
                && live_ref(db, pif, "VLAN_master_of").is_none()
                && int(db, pif, "VLAN") < 0
        })
        .ok_or_else(|| {
            NetworkError::InvalidValue {
                field: "device".to_string(),
                value: crate::codec::truncate(device.to_string(), 64),
            }
            .into()
        })
}

/// `VLAN.destroy(self)`.
pub fn destroy(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vlan = args.str(0)?.to_string();
    destroy_vlan(ctx, &vlan)?;
    value(Value::void())
}

/// Unplugs and destroys a VLAN's interface, then the VLAN. The shared metrics stay with
/// the tagged interface.
pub(crate) fn destroy_vlan(ctx: &mut CallContext<'_>, vlan: &str) -> Result<(), ApiError> {
    let now = ctx.now;
    let Some(untagged) = live_ref(&ctx.state.db, vlan, "untagged_PIF") else {
        // An orphaned record: nothing on the switch to undo.
        ctx.state.db.destroy(vlan, now)?;
        return Ok(());
    };
    if flag(&ctx.state.db, &untagged, "management") {
        return Err(NetworkError::PifIsManagementInterface { pif: untagged }.into());
    }
    if int(&ctx.state.db, &untagged, "VLAN") < 0 {
        return Err(NetworkError::PifIsPhysical { pif: untagged }.into());
    }
    set_attached(ctx.state, &untagged, false, now)?;
    ctx.state.db.destroy(&untagged, now)?;
    ctx.state.db.destroy(vlan, now)?;
    Ok(())
}
