//! The network classes across a host reboot (persist.rs keeps `network`, `PIF`, `VLAN` and
//! `VIF`; the metrics describe the running host and are made fresh).
//!
//! The management network and PIF are made at start-up, then continue the saved ones: they
//! take the saved references and UUIDs, and what clients may change on them (names,
//! `other_config`, `tags`, the network's `MTU`, `default_locking_mode` and purposes, the
//! PIF's `disallow_unplug`) comes back. Client networks come back as saved; a VLAN comes back
//! with its interface when the interface it tags is back (sharing its metrics again); a VIF
//! when its VM and network are, detached (keel-hostdb's host boot), with fresh metrics.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use keel_hostdb::{Database, FieldValue, Record};

use super::network::{live_ref, text};
use super::pif::management_pif;
use crate::api::State;
use crate::classes_network::{NETWORK, PIF, VIF, VIF_METRICS, VLAN};
use crate::persist::restorable;
use crate::store::consistent;
use crate::time::Timestamp;
use crate::value::Value;

/// What clients may change on the management network, kept across reboots.
const NETWORK_KEPT: &[&str] = &[
    "name_label",
    "name_description",
    "other_config",
    "tags",
    "MTU",
    "default_locking_mode",
    "purpose",
];
/// What clients may change on the management PIF.
const PIF_KEPT: &[&str] = &["other_config", "disallow_unplug"];

fn text_of<'a>(record: &'a Record, field: &str) -> Option<&'a str> {
    match record.get(field) {
        Some(FieldValue::String(t) | FieldValue::Ref(t)) => Some(t),
        _ => None,
    }
}

fn flag_of(record: &Record, field: &str) -> bool {
    matches!(record.get(field), Some(FieldValue::Bool(true)))
}

/// Puts the saved network objects back (module docs). Runs after the VMs are restored.
pub(crate) fn restore(state: &mut State, saved: &Database, now: Timestamp) {
    let continued = continue_management(state, saved, now);
    for (reference, record) in saved.objects("network") {
        // Two networks on one bridge would share frames: a saved network whose bridge a
        // live one has (the management network not continued) stays out.
        let bridge = text_of(record, "bridge").unwrap_or("");
        let taken = state
            .db
            .refs("network")
            .iter()
            .any(|n| text(&state.db, n, "bridge") == bridge);
        if continued.contains(reference) || taken {
            continue;
        }
        state
            .db
            .restore(&NETWORK, reference, restorable(&NETWORK, record), now);
    }
    for (reference, record) in saved.objects("VLAN") {
        restore_vlan(state, saved, reference, record, now);
    }
    for (reference, record) in saved.objects("VIF") {
        let (Some(vm), Some(network)) = (text_of(record, "VM"), text_of(record, "network")) else {
            continue;
        };
        if !state.db.is_a(vm, "VM") || !state.db.is_a(network, "network") {
            continue;
        }
        if !state
            .db
            .restore(&VIF, reference, restorable(&VIF, record), now)
        {
            continue;
        }
        // Metrics are not kept, but their reference is: a fresh object under the old one.
        let kept_metrics = text_of(record, "metrics")
            .filter(|m| state.db.restore(&VIF_METRICS, m, BTreeMap::new(), now));
        let metrics = match kept_metrics {
            Some(m) => m.to_string(),
            None => state.db.create(&VIF_METRICS, Vec::new(), now),
        };
        let fresh = vec![
            ("metrics", Value::String(metrics)),
            ("currently_attached", Value::Bool(false)),
        ];
        consistent(state.db.set(reference, fresh, now));
        consistent(super::vif::refresh_allowed(&mut state.db, reference, now));
    }
}

/// The live management PIF and network take the saved ones' identities and kept fields.
/// Returns the saved networks so continued.
fn continue_management(state: &mut State, saved: &Database, now: Timestamp) -> Vec<String> {
    let host = state.host.clone();
    let Some(live_pif) = management_pif(&state.db, &host) else {
        return Vec::new();
    };
    let Some((saved_pif, saved_record)) = saved
        .objects("PIF")
        .find(|(_, r)| flag_of(r, "management") && text_of(r, "host") == Some(host.as_str()))
    else {
        return Vec::new();
    };
    let live_network = text(&state.db, &live_pif, "network");
    let live_metrics = text(&state.db, &live_pif, "metrics");
    if let Some(saved_metrics) = text_of(saved_record, "metrics") {
        state.db.rename(&live_metrics, saved_metrics);
    }
    let pif = if state.db.rename(&live_pif, saved_pif) {
        saved_pif.clone()
    } else {
        live_pif
    };
    let mut continued = Vec::new();
    let saved_network = text_of(saved_record, "network")
        .and_then(|n| saved.get("network", n).map(|record| (n, record)));
    if let Some((saved_network, network_record)) = saved_network {
        let network = if state.db.rename(&live_network, saved_network) {
            saved_network.to_string()
        } else {
            live_network
        };
        keep(state, &NETWORK, &network, network_record, NETWORK_KEPT, now);
        continued.push(saved_network.to_string());
    }
    keep(state, &PIF, &pif, saved_record, PIF_KEPT, now);
    continued
}

/// Writes the `kept` fields of `record` (and its UUID) onto the live object `target`.
fn keep(
    state: &mut State,
    class: &'static crate::schema::ClassDecl,
    target: &str,
    record: &Record,
    kept: &[&str],
    now: Timestamp,
) {
    let changes: Vec<(&'static str, Value)> = restorable(class, record)
        .into_iter()
        .filter(|(name, _)| *name == "uuid" || kept.contains(name))
        .collect();
    consistent(state.db.update(target, changes, now));
}

fn restore_vlan(
    state: &mut State,
    saved: &Database,
    reference: &str,
    record: &Record,
    now: Timestamp,
) {
    let tagged = text_of(record, "tagged_PIF").unwrap_or("");
    let untagged = text_of(record, "untagged_PIF").unwrap_or("");
    let Some(untagged_record) = saved.get("PIF", untagged) else {
        return;
    };
    let network_back = text_of(untagged_record, "network")
        .is_some_and(|network| state.db.is_a(network, "network"));
    if !state.db.is_a(tagged, "PIF") || !network_back {
        return;
    }
    if !state
        .db
        .restore(&PIF, untagged, restorable(&PIF, untagged_record), now)
    {
        return;
    }
    if !state
        .db
        .restore(&VLAN, reference, restorable(&VLAN, record), now)
    {
        consistent(state.db.destroy(untagged, now));
        return;
    }
    let metrics = live_ref(&state.db, tagged, "metrics").unwrap_or_default();
    let shared = vec![("metrics", Value::String(metrics))];
    consistent(state.db.set(untagged, shared, now));
}
