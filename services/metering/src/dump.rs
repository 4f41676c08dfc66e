//! `GET /host_rrd` and `GET /vm_rrd?uuid=`: a whole RRD in rrdtool's `dump` XML, as xapi
//! writes it (`<rrd><version>0003</version><step>5</step><lastupdate>…`, one `<ds>` per data
//! source, one `<rra>` per archive with its `<cdp_prep>` and `<database>`, rows oldest first).

use alloc::string::String;
use core::fmt::Write;

use crate::rrd::{Rrd, STEP_MS};
use crate::text::{push_element, push_float};
use crate::updates::ExportError;

/// The dump XML of `rrd`.
pub fn dump_xml(rrd: &Rrd) -> Result<String, ExportError> {
    let sources = rrd.source_states();
    let rows: usize = rrd.archives().iter().map(|a| a.rows() as usize).sum();
    let mut out = String::new();
    out.try_reserve(1024 + sources.len() * (400 + rows * 24))?;
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?><rrd><version>0003</version>");
    let _ = write!(
        out,
        "<step>{}</step><lastupdate>{}</lastupdate>",
        STEP_MS / 1000,
        rrd.last_update_ms() / 1000
    );
    for ds in sources {
        out.push_str("<ds>");
        push_element(&mut out, "name", &ds.spec.name);
        push_element(&mut out, "type", ds.spec.ds_type.as_str());
        out.push_str("<minimal_heartbeat>");
        push_float(&mut out, crate::rrd::HEARTBEAT_MS as f64 / 1000.0);
        out.push_str("</minimal_heartbeat><min>");
        push_float(&mut out, ds.spec.min);
        out.push_str("</min><max>");
        push_float(&mut out, ds.spec.max);
        out.push_str("</max><last_ds>");
        match ds.last_raw {
            Some(v) => push_float(&mut out, v),
            None => out.push('U'),
        }
        out.push_str("</last_ds><value>");
        push_float(&mut out, ds.acc / 1000.0);
        let _ = write!(
            out,
            "</value><unknown_sec>{}</unknown_sec></ds>",
            ds.unknown_ms / 1000
        );
    }
    for archive in rrd.archives() {
        out.push_str("<rra>");
        push_element(&mut out, "cf", archive.cf().as_str());
        let _ = write!(out, "<pdp_per_row>{}</pdp_per_row>", archive.pdp_per_row());
        out.push_str("<params><xff>");
        push_float(&mut out, archive.xff());
        out.push_str("</xff></params><cdp_prep>");
        for index in 0..sources.len() {
            let (value, unknown) = archive
                .prep(index)
                .map_or((f64::NAN, 0), |p| (p.partial(archive.cf()), p.unknown));
            out.push_str("<ds><primary_value>0.0</primary_value><secondary_value>0.0</secondary_value><value>");
            push_float(&mut out, value);
            let _ = write!(
                out,
                "</value><unknown_datapoints>{unknown}</unknown_datapoints></ds>"
            );
        }
        out.push_str("</cdp_prep><database>");
        let rows = archive.rows() as usize;
        for age in (0..rows).rev() {
            out.push_str("<row>");
            for index in 0..sources.len() {
                out.push_str("<v>");
                push_float(&mut out, rrd.values_of(archive).value(index, age));
                out.push_str("</v>");
            }
            out.push_str("</row>");
        }
        out.push_str("</database></rra>");
    }
    out.push_str("</rrd>");
    Ok(out)
}
