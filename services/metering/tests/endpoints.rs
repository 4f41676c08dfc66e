//! The RRD side end to end: simulated guests are sampled every ~5 s (with timer jitter) and
//! what `/rrd_updates`, `/host_rrd`, `/vm_rrd` and the data source calls return is read back
//! with real XML and JSON parsers, the way xapi's clients read it.

// A panic in a test is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_metering::fakes::MemUsageStore;
use keel_metering::figures::{HostFigures, PifFigures, VbdFigures, VifFigures, VmFigures};
use keel_metering::source::{vm_sources, VmShape};
use keel_metering::{
    ExportError, MeterError, Metering, UpdatesQuery, Usage, UsageConfig, VmIdentity, VmUsageSample,
    ROWS_PER_SOURCE,
};

const HOST: &str = "c0ffee00-0000-4000-8000-000000000000";
const VM: &str = "6f1b7c1e-0000-4000-8000-000000000001";
const OTHER_VM: &str = "6f1b7c1e-0000-4000-8000-000000000002";
/// 2026-12-03T09:00:00Z plus a little, so samples do not fall on step boundaries.
const T0_MS: u64 = 1_796_288_400_000 + 1_234;
const MIB: u64 = 1 << 20;

/// A guest whose counters the test drives.
#[derive(Clone)]
struct Guest {
    figures: VmFigures,
}

impl Guest {
    fn new(uuid: &str) -> Self {
        Guest {
            figures: VmFigures {
                uuid: uuid.to_string(),
                instance: 1,
                vcpu_time_ns: vec![0, 0],
                memory_actual_bytes: 512 * MIB,
                memory_target_bytes: 512 * MIB,
                vbds: vec![VbdFigures {
                    device: "xvda".to_string(),
                    provisioned_bytes: 4096 * MIB,
                    used_bytes: 700 * MIB,
                    ..VbdFigures::default()
                }],
                vifs: vec![VifFigures {
                    index: 0,
                    ..VifFigures::default()
                }],
            },
        }
    }
}

struct Sim {
    now_ms: u64,
    host: HostFigures,
    metering: Metering,
    usage: Usage<MemUsageStore>,
    samples: u64,
}

impl Sim {
    fn new() -> Self {
        let (usage, _) = Usage::open(MemUsageStore::new(), UsageConfig::default()).unwrap();
        Sim {
            now_ms: T0_MS,
            host: HostFigures {
                cpu_busy_ns: vec![0; 4],
                memory_total_bytes: 16384 * MIB,
                memory_free_bytes: 12000 * MIB,
                heap_used_bytes: 37 * MIB,
                pifs: vec![PifFigures {
                    device: "eth0".to_string(),
                    ..PifFigures::default()
                }],
            },
            metering: Metering::new(HOST).unwrap(),
            usage,
            samples: 0,
        }
    }

    /// Advances ~5 s (4.9 or 5.1, as a timer jitters), lets `act` move the guests' counters
    /// over that interval (given its length in ns), then samples.
    fn step(&mut self, guests: &mut [&mut Guest], mut act: impl FnMut(&mut Guest, u64)) {
        let interval_ms = if self.samples.is_multiple_of(2) {
            4_900
        } else {
            5_100
        };
        self.samples += 1;
        self.now_ms += interval_ms;
        let interval_ns = interval_ms * 1_000_000;
        for cpu in &mut self.host.cpu_busy_ns {
            *cpu += interval_ns / 4;
        }
        self.host.pifs[0].rx_bytes += 1000;
        for guest in guests.iter_mut() {
            act(guest, interval_ns);
        }
        let figures: Vec<VmFigures> = guests.iter().map(|g| g.figures.clone()).collect();
        let report = self.metering.sample(self.now_ms, &self.host, &figures);
        assert_eq!(report.host_error, None);
        assert!(report.vm_errors.is_empty(), "{:?}", report.vm_errors);
        let identity = VmIdentity {
            name: "guest".to_string(),
            tags: vec![],
            tenant: None,
        };
        let samples: Vec<VmUsageSample<'_>> = figures
            .iter()
            .map(|f| VmUsageSample {
                identity: &identity,
                figures: f,
            })
            .collect();
        self.usage.record(self.now_ms, &samples).unwrap();
    }

    fn now_s(&self) -> u64 {
        self.now_ms / 1000
    }

    fn updates(&self, params: &[(&str, &str)]) -> Result<String, ExportError> {
        let query = UpdatesQuery::from_params(params.iter().copied())?;
        self.metering.rrd_updates(self.now_s(), &query)
    }
}

/// A parsed xport.
struct Export {
    start: u64,
    step: u64,
    end: u64,
    legend: Vec<String>,
    rows: Vec<(u64, Vec<f64>)>,
}

fn text_of(node: roxmltree::Node<'_, '_>, name: &str) -> String {
    node.children()
        .find(|c| c.has_tag_name(name))
        .unwrap_or_else(|| panic!("no <{name}>"))
        .text()
        .unwrap_or("")
        .to_string()
}

/// Parses rrd_updates XML as xapi's clients do, checking its shape on the way.
fn parse_xport(xml: &str) -> Export {
    let doc = roxmltree::Document::parse(xml).unwrap();
    let root = doc.root_element();
    assert!(root.has_tag_name("xport"));
    let elements: Vec<_> = root.children().filter(|n| n.is_element()).collect();
    assert_eq!(elements.len(), 2);
    let (meta, data) = (elements[0], elements[1]);
    assert!(meta.has_tag_name("meta") && data.has_tag_name("data"));
    let meta_names: Vec<&str> = meta
        .children()
        .filter(|n| n.is_element())
        .map(|n| n.tag_name().name())
        .collect();
    assert_eq!(
        meta_names,
        ["start", "step", "end", "rows", "columns", "legend"]
    );
    let legend: Vec<String> = meta
        .children()
        .find(|n| n.has_tag_name("legend"))
        .unwrap()
        .children()
        .filter(|n| n.has_tag_name("entry"))
        .map(|n| n.text().unwrap().to_string())
        .collect();
    let rows: Vec<(u64, Vec<f64>)> = data
        .children()
        .filter(|n| n.has_tag_name("row"))
        .map(|row| {
            let t = text_of(row, "t").parse().unwrap();
            let values = row
                .children()
                .filter(|n| n.has_tag_name("v"))
                .map(|v| v.text().unwrap().parse::<f64>().unwrap())
                .collect();
            (t, values)
        })
        .collect();
    let export = Export {
        start: text_of(meta, "start").parse().unwrap(),
        step: text_of(meta, "step").parse().unwrap(),
        end: text_of(meta, "end").parse().unwrap(),
        legend,
        rows,
    };
    assert_eq!(
        text_of(meta, "rows").parse::<usize>().unwrap(),
        export.rows.len()
    );
    assert_eq!(
        text_of(meta, "columns").parse::<usize>().unwrap(),
        export.legend.len()
    );
    for (i, (t, values)) in export.rows.iter().enumerate() {
        assert_eq!(values.len(), export.legend.len());
        assert_eq!(*t, export.end - i as u64 * export.step, "rows newest first");
    }
    export
}

fn column<'a>(export: &'a Export, entry: &str) -> impl Iterator<Item = f64> + 'a {
    let index = export
        .legend
        .iter()
        .position(|e| e == entry)
        .unwrap_or_else(|| panic!("no column {entry} in {:?}", export.legend));
    export.rows.iter().map(move |(_, v)| v[index])
}

#[test]
fn burning_guest_shows_one_vcpu_in_rrd_updates_and_usage() {
    let mut sim = Sim::new();
    let mut guest = Guest::new(VM);
    // 12 minutes: vCPU0 burns (Xen gives it 99.5 % of the interval), vCPU1 idles at 2 %.
    for _ in 0..144 {
        sim.step(&mut [&mut guest], |g, ns| {
            g.figures.vcpu_time_ns[0] += ns * 995 / 1000;
            g.figures.vcpu_time_ns[1] += ns * 2 / 100;
        });
    }
    let start = (sim.now_s() - 300).to_string();
    let xml = sim
        .updates(&[("start", &start), ("cf", "AVERAGE")])
        .unwrap();
    let export = parse_xport(&xml);
    assert_eq!(export.step, 5);
    assert!(export.rows.len() >= 59, "{} rows", export.rows.len());
    assert_eq!(export.start, (sim.now_s() - 300) / 5 * 5 + 5);
    let busy: Vec<f64> = column(&export, &format!("AVERAGE:vm:{VM}:cpu0")).collect();
    assert!(
        busy.iter().all(|v| (0.985..=1.0).contains(v)),
        "burning vCPU: {busy:?}"
    );
    let idle: Vec<f64> = column(&export, &format!("AVERAGE:vm:{VM}:cpu1")).collect();
    assert!(idle.iter().all(|v| (0.015..=0.025).contains(v)), "{idle:?}");

    // A coarser interval reads the minute archive.
    let hour_ago = (sim.now_s() - 3000).to_string();
    let minutes = parse_xport(
        &sim.updates(&[("start", &hour_ago), ("interval", "60"), ("cf", "AVERAGE")])
            .unwrap(),
    );
    assert_eq!(minutes.step, 60);
    let known: Vec<f64> = column(&minutes, &format!("AVERAGE:vm:{VM}:cpu0"))
        .filter(|v| !v.is_nan())
        .collect();
    assert!(known.len() >= 10, "{known:?}");
    assert!(known.iter().all(|v| (0.985..=1.0).contains(v)), "{known:?}");

    // The bill: 12 minutes of about one vCPU.
    let usage = sim.usage.totals(VM);
    let elapsed_s = (sim.now_ms - T0_MS) as f64 / 1000.0;
    let vcpu_s = usage.vcpu_ns as f64 / 1e9;
    assert!(
        (vcpu_s / (elapsed_s * 1.015) - 1.0).abs() < 0.01,
        "{vcpu_s} vCPU-s in {elapsed_s} s"
    );
}

#[test]
fn bytes_written_and_sent_add_up_within_a_few_percent() {
    let mut sim = Sim::new();
    let mut guest = Guest::new(VM);
    const WRITE_TOTAL: u64 = 64 * MIB;
    const SENT_TOTAL: u64 = 20 * MIB;
    // Idle a minute, then bursts over ~2 minutes of uneven sizes, then idle again.
    let (mut written, mut sent) = (0, 0);
    for step in 1..=110u64 {
        sim.step(&mut [&mut guest], |g, _| {
            if (12..36).contains(&step) {
                let chunk = if step.is_multiple_of(3) {
                    4 * MIB
                } else {
                    2 * MIB
                };
                let chunk = chunk.min(WRITE_TOTAL - written);
                g.figures.vbds[0].write_bytes += chunk;
                g.figures.vbds[0].write_requests += chunk / 4096;
                g.figures.vbds[0].write_latency_total_us += chunk / 4096 * 150;
                written += chunk;
                let packet = (SENT_TOTAL / 20).min(SENT_TOTAL - sent);
                g.figures.vifs[0].tx_bytes += packet;
                sent += packet;
            }
        });
    }
    assert_eq!((written, sent), (WRITE_TOTAL, SENT_TOTAL));
    let start = (sim.now_s() - 590).to_string();
    let export = parse_xport(&sim.updates(&[("start", &start)]).unwrap());
    let integral = |entry: &str| -> f64 {
        column(&export, entry)
            .filter(|v| !v.is_nan())
            .map(|rate| rate * export.step as f64)
            .sum()
    };
    let disk = integral(&format!("AVERAGE:vm:{VM}:vbd_xvda_write"));
    let net = integral(&format!("AVERAGE:vm:{VM}:vif_0_tx"));
    assert!(
        (disk / WRITE_TOTAL as f64 - 1.0).abs() < 0.02,
        "{disk} of {WRITE_TOTAL}"
    );
    assert!(
        (net / SENT_TOTAL as f64 - 1.0).abs() < 0.02,
        "{net} of {SENT_TOTAL}"
    );
    let latency: Vec<f64> = column(&export, &format!("AVERAGE:vm:{VM}:vbd_xvda_write_latency"))
        .filter(|v| *v > 0.0)
        .collect();
    // Rows inside the burst read the 150 µs per request; the two edge rows blend it with
    // the idle intervals around (no requests: 0).
    let inside = latency
        .iter()
        .filter(|v| (149.0..=151.0).contains(*v))
        .count();
    assert!(inside >= 20 && inside + 2 >= latency.len(), "{latency:?}");
    assert!(latency.iter().all(|v| *v <= 151.0), "{latency:?}");
    // The bill counts bytes exactly.
    let usage = sim.usage.totals(VM);
    assert_eq!(usage.disk_write_bytes, WRITE_TOTAL);
    assert_eq!(usage.net_tx_bytes, SENT_TOTAL);
}

#[test]
fn rrd_updates_with_host_legend_and_json() {
    let mut sim = Sim::new();
    let mut a = Guest::new(VM);
    let mut b = Guest::new(OTHER_VM);
    for _ in 0..30 {
        sim.step(&mut [&mut a, &mut b], |g, ns| {
            g.figures.vcpu_time_ns[0] += ns / 2
        });
    }
    let start = (sim.now_s() - 60).to_string();
    let export = parse_xport(
        &sim.updates(&[("start", &start), ("host", "true"), ("cf", "AVERAGE")])
            .unwrap(),
    );
    assert_eq!(export.legend[0], format!("AVERAGE:host:{HOST}:cpu0"));
    for name in [
        "cpu_avg",
        "memory_total_kib",
        "memory_free_kib",
        "pif_eth0_rx",
    ] {
        assert!(export
            .legend
            .contains(&format!("AVERAGE:host:{HOST}:{name}")));
    }
    let host_cpu: Vec<f64> = column(&export, &format!("AVERAGE:host:{HOST}:cpu_avg")).collect();
    assert!(
        host_cpu.iter().all(|v| (v - 0.25).abs() < 0.01),
        "{host_cpu:?}"
    );
    let free: Vec<f64> = column(&export, &format!("AVERAGE:host:{HOST}:memory_free_kib")).collect();
    assert!(free.iter().all(|v| *v == (12000 * 1024) as f64));
    assert!(export
        .legend
        .contains(&format!("AVERAGE:vm:{OTHER_VM}:memory")));

    // One VM only, every CF.
    let only = parse_xport(
        &sim.updates(&[("start", &start), ("vm_uuid", OTHER_VM)])
            .unwrap(),
    );
    assert!(only.legend.iter().all(|e| e.contains(OTHER_VM)));
    for cf in ["AVERAGE", "MIN", "MAX"] {
        assert!(only.legend.contains(&format!("{cf}:vm:{OTHER_VM}:cpu0")));
    }

    // JSON: the same export with bare numbers and NaN, as Xen Orchestra reads it (JSON5,
    // `meta.step` compared with the number 5). serde_json is strict JSON: NaN (a bare token
    // JSON5 and Python accept) is swapped for null first; no legend holds "NaN".
    let json = sim
        .updates(&[
            ("start", &start),
            ("host", "true"),
            ("json", "true"),
            ("cf", "AVERAGE"),
        ])
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&json.replace("NaN", "null")).unwrap();
    let meta = &value["meta"];
    assert_eq!(meta["step"], 5);
    assert_eq!(meta["start"], export.start);
    assert_eq!(meta["end"], export.end);
    let legend = meta["legend"].as_array().unwrap();
    assert_eq!(legend.len(), export.legend.len());
    assert_eq!(meta["columns"], legend.len());
    let data = value["data"].as_array().unwrap();
    assert_eq!(meta["rows"], data.len());
    assert_eq!(data.len(), export.rows.len());
    for (row, (t, values)) in data.iter().zip(&export.rows) {
        assert_eq!(row["t"], *t);
        let got = row["values"].as_array().unwrap();
        assert_eq!(got.len(), values.len());
        for (g, want) in got.iter().zip(values) {
            match g.as_f64() {
                // serde_json's default float parsing may be one ulp off.
                Some(g) => assert!((g - want).abs() <= want.abs() * 1e-15, "{g} {want}"),
                None => assert!(g.is_null() && want.is_nan()),
            }
        }
    }
    // `vm_uuid=none` leaves the host alone; a bare `json` asks for JSON as in xapi.
    let host_only = sim
        .updates(&[
            ("start", &start),
            ("host", "true"),
            ("vm_uuid", "none"),
            ("json", ""),
        ])
        .unwrap();
    assert!(host_only.starts_with("{\"meta\":{\"start\":"));
    assert!(!host_only.contains(":vm:"));
}

#[test]
fn host_and_vm_rrd_are_rrdtool_dumps() {
    let mut sim = Sim::new();
    let mut guest = Guest::new(VM);
    for _ in 0..20 {
        sim.step(&mut [&mut guest], |g, ns| {
            g.figures.vcpu_time_ns[0] += ns / 4
        });
    }
    for xml in [
        sim.metering.host_rrd_xml().unwrap(),
        sim.metering.vm_rrd_xml(VM).unwrap(),
    ] {
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let rrd = doc.root_element();
        assert!(rrd.has_tag_name("rrd"));
        assert_eq!(text_of(rrd, "version"), "0003");
        assert_eq!(text_of(rrd, "step"), "5");
        assert_eq!(
            text_of(rrd, "lastupdate").parse::<u64>().unwrap(),
            sim.now_s()
        );
        let dss: Vec<_> = rrd.children().filter(|n| n.has_tag_name("ds")).collect();
        for ds in &dss {
            for field in [
                "name",
                "type",
                "minimal_heartbeat",
                "min",
                "max",
                "last_ds",
                "value",
                "unknown_sec",
            ] {
                text_of(*ds, field);
            }
        }
        let rras: Vec<_> = rrd.children().filter(|n| n.has_tag_name("rra")).collect();
        assert_eq!(rras.len(), 12);
        let mut layouts = Vec::new();
        for rra in &rras {
            let cf = text_of(*rra, "cf");
            let pdp: u32 = text_of(*rra, "pdp_per_row").parse().unwrap();
            let params = rra.children().find(|n| n.has_tag_name("params")).unwrap();
            assert_eq!(text_of(params, "xff"), "0.5");
            let prep = rra.children().find(|n| n.has_tag_name("cdp_prep")).unwrap();
            assert_eq!(
                prep.children().filter(|n| n.has_tag_name("ds")).count(),
                dss.len()
            );
            let database = rra.children().find(|n| n.has_tag_name("database")).unwrap();
            let rows: Vec<_> = database
                .children()
                .filter(|n| n.has_tag_name("row"))
                .collect();
            for row in &rows {
                assert_eq!(
                    row.children().filter(|n| n.has_tag_name("v")).count(),
                    dss.len()
                );
            }
            layouts.push((cf, pdp, rows.len()));
        }
        for (pdp, rows) in [(1, 120), (12, 120), (720, 168), (17_280, 366)] {
            for cf in ["AVERAGE", "MIN", "MAX"] {
                assert!(
                    layouts.contains(&(cf.to_string(), pdp, rows)),
                    "{cf} {pdp} {rows} in {layouts:?}"
                );
            }
        }
    }
    // The newest 5 s row of the VM's cpu0 (oldest first in a dump) is a quarter CPU.
    let xml = sim.metering.vm_rrd_xml(VM).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let fine = doc
        .root_element()
        .children()
        .find(|n| n.has_tag_name("rra"))
        .unwrap();
    let database = fine
        .children()
        .find(|n| n.has_tag_name("database"))
        .unwrap();
    let last_row = database
        .children()
        .rfind(|n| n.has_tag_name("row"))
        .unwrap();
    let cpu0: f64 = last_row
        .children()
        .find(|n| n.has_tag_name("v"))
        .unwrap()
        .text()
        .unwrap()
        .parse()
        .unwrap();
    assert!((cpu0 - 0.25).abs() < 0.01, "{cpu0}");
}

#[test]
fn data_sources_and_queries() {
    let mut sim = Sim::new();
    let mut guest = Guest::new(VM);
    for _ in 0..4 {
        sim.step(&mut [&mut guest], |_, _| {});
    }
    let host = sim.metering.host_data_sources();
    let free = host
        .iter()
        .find(|d| d.name_label == "memory_free_kib")
        .unwrap();
    assert_eq!(free.units, "KiB");
    assert!(free.enabled && free.standard);
    assert_eq!(free.value, (12000 * 1024) as f64);
    let vm = sim.metering.vm_data_sources(VM).unwrap();
    let memory = vm.iter().find(|d| d.name_label == "memory").unwrap();
    assert_eq!(memory.value, (512 * MIB) as f64);
    assert_eq!(memory.units, "B");
    assert_eq!(
        sim.metering.query_vm(VM, "memory_target").unwrap(),
        (512 * MIB) as f64
    );
    assert_eq!(
        sim.metering.query_host("memory_total_kib").unwrap(),
        (16384 * 1024) as f64
    );
    let heap = host
        .iter()
        .find(|d| d.name_label == "keel_heap_used_kib")
        .unwrap();
    assert_eq!(heap.units, "KiB");
    assert_eq!(heap.value, (37 * 1024) as f64);
    // The heap is a gauge: a smaller figure reads as itself (once the 5 s step it spans is
    // over), not as a negative rate.
    sim.host.heap_used_bytes = 21 * MIB;
    for _ in 0..3 {
        sim.step(&mut [&mut guest], |_, _| {});
    }
    assert_eq!(
        sim.metering.query_host("keel_heap_used_kib").unwrap(),
        (21 * 1024) as f64
    );
    assert_eq!(
        sim.metering.query_vm(VM, "no_such_source"),
        Err(MeterError::UnknownDataSource("no_such_source".to_string()))
    );
    assert_eq!(
        sim.metering.query_vm(OTHER_VM, "memory"),
        Err(MeterError::UnknownUuid(OTHER_VM.to_string()))
    );
}

#[test]
fn nonsense_requests_get_clear_errors() {
    let mut sim = Sim::new();
    let mut guest = Guest::new(VM);
    for _ in 0..3 {
        sim.step(&mut [&mut guest], |_, _| {});
    }
    let now = sim.now_s();
    let future = (now + 3600).to_string();
    assert!(matches!(
        sim.updates(&[("start", &future)]),
        Err(ExportError::StartInFuture { .. })
    ));
    let two_years_ago = (now - 2 * 366 * 86_400).to_string();
    assert!(matches!(
        sim.updates(&[("start", &two_years_ago)]),
        Err(ExportError::RangeTooLarge { .. })
    ));
    assert!(matches!(
        sim.updates(&[("start", "-100000000")]),
        Err(ExportError::RangeTooLarge { .. })
    ));
    let recent = (now - 60).to_string();
    assert!(matches!(
        sim.updates(&[("start", &recent), ("interval", "99999999999")]),
        Err(ExportError::BadInterval(_))
    ));
    assert_eq!(
        sim.updates(&[("start", &recent), ("vm_uuid", OTHER_VM)]),
        Err(ExportError::UnknownUuid(OTHER_VM.to_string()))
    );
    assert!(matches!(
        sim.updates(&[("start", &recent), ("cf", "LAST")]),
        Err(ExportError::BadParameter { name: "cf", .. })
    ));
    assert!(matches!(
        sim.updates(&[("start", "yesterday")]),
        Err(ExportError::BadParameter { name: "start", .. })
    ));
    assert_eq!(
        sim.updates(&[("cf", "AVERAGE")]),
        Err(ExportError::MissingParameter("start"))
    );
    assert_eq!(
        sim.metering.vm_rrd_xml(OTHER_VM),
        Err(ExportError::UnknownUuid(OTHER_VM.to_string()))
    );
    // A relative start is fine.
    assert!(sim.updates(&[("start", "-60")]).is_ok());
}

#[test]
fn halted_vm_leaves_rrd_updates_but_keeps_its_rrd_until_forgotten() {
    let mut sim = Sim::new();
    let mut a = Guest::new(VM);
    let mut b = Guest::new(OTHER_VM);
    for _ in 0..3 {
        sim.step(&mut [&mut a, &mut b], |_, _| {});
    }
    sim.step(&mut [&mut a], |_, _| {});
    let start = (sim.now_s() - 30).to_string();
    let export = parse_xport(&sim.updates(&[("start", &start)]).unwrap());
    assert!(export.legend.iter().all(|e| !e.contains(OTHER_VM)));
    assert!(sim.metering.vm_rrd_xml(OTHER_VM).is_ok());
    assert!(sim.metering.forget_vm(OTHER_VM));
    assert!(sim.metering.vm_rrd_xml(OTHER_VM).is_err());
}

#[test]
fn hotplugged_devices_join_the_rrd() {
    let mut sim = Sim::new();
    let mut guest = Guest::new(VM);
    for _ in 0..3 {
        sim.step(&mut [&mut guest], |_, _| {});
    }
    guest.figures.vifs.push(VifFigures {
        index: 1,
        ..VifFigures::default()
    });
    for _ in 0..3 {
        sim.step(&mut [&mut guest], |g, _| {
            g.figures.vifs[1].rx_bytes += 5_000
        });
    }
    // 5000 B per 4.9 or 5.1 s interval: about 1000 B/s.
    let rate = sim.metering.query_vm(VM, "vif_1_rx").unwrap();
    assert!((rate - 1000.0).abs() < 30.0, "{rate}");
}

#[test]
fn memory_per_vm_is_bounded_and_as_documented() {
    let mut sim = Sim::new();
    let mut guest = Guest::new(VM);
    for _ in 0..2 {
        sim.step(&mut [&mut guest], |_, _| {});
    }
    // The test guest: 2 vCPUs, 1 VBD, 1 VIF = 2 + 2 + 6 + 4 = 14 data sources.
    let rrd = sim.metering.vm_rrd(VM).unwrap();
    assert_eq!(rrd.specs().count(), 14);
    let rings = 14 * ROWS_PER_SOURCE * 8;
    assert_eq!(
        ROWS_PER_SOURCE * 8,
        18_576,
        "docs/metering.md: 18,576 B per source"
    );
    // A VM's RRD holds the rows it has closed (two samples: a few rows per archive), at
    // most the whole layout.
    assert!(rrd.memory_bytes() < rings / 10, "{}", rrd.memory_bytes());
    assert!(rrd.memory_bytes() < rings + 16 * 1024);
    // The largest shape accepted (128 vCPUs, 16 VBDs, 16 VIFs) stays under 5.5 MB.
    let largest = vm_sources(&VmShape {
        vcpus: 128,
        vbds: (0..16)
            .map(|i| format!("xvd{}", (b'a' + i) as char))
            .collect(),
        vifs: (0..16).collect(),
    })
    .unwrap();
    assert_eq!(largest.len(), 290);
    assert!(largest.len() * ROWS_PER_SOURCE * 8 < 5_500_000);
}

#[test]
fn too_many_vms_are_refused_not_grown() {
    let mut metering = Metering::new(HOST).unwrap().with_max_vms(1);
    let host = HostFigures::default();
    let a = Guest::new(VM).figures;
    let b = Guest::new(OTHER_VM).figures;
    let report = metering.sample(T0_MS, &host, &[a, b]);
    assert_eq!(
        report.vm_errors,
        vec![(OTHER_VM.to_string(), MeterError::TooManyVms)]
    );
    let bad = VmFigures {
        uuid: "not-a-uuid</entry>".to_string(),
        ..VmFigures::default()
    };
    let report = metering.sample(T0_MS + 5000, &host, &[bad]);
    assert!(matches!(report.vm_errors[0].1, MeterError::BadUuid(_)));
}

#[test]
fn a_sample_from_the_past_is_refused_and_sampling_goes_on() {
    let mut sim = Sim::new();
    let mut guest = Guest::new(VM);
    for _ in 0..3 {
        sim.step(&mut [&mut guest], |g, ns| {
            g.figures.vcpu_time_ns[0] += ns / 2
        });
    }
    let late = sim.now_ms - 2_000;
    let report = sim
        .metering
        .sample(late, &sim.host.clone(), &[guest.figures.clone()]);
    assert!(matches!(
        report.host_error,
        Some(MeterError::Rrd(
            keel_metering::RrdError::NotMonotonic { .. }
        ))
    ));
    assert!(matches!(
        report.vm_errors.as_slice(),
        [(uuid, MeterError::Rrd(keel_metering::RrdError::NotMonotonic { .. }))] if uuid == VM
    ));
    for _ in 0..3 {
        sim.step(&mut [&mut guest], |g, ns| {
            g.figures.vcpu_time_ns[0] += ns / 2
        });
    }
    let cpu = sim.metering.query_vm(VM, "cpu0").unwrap();
    assert!((cpu - 0.5).abs() < 0.01, "{cpu}");
}

#[test]
fn an_export_too_large_for_the_heap_is_refused() {
    use keel_metering::{export, Owner, OwnerKind, Rrd, MAX_CELLS};
    let specs = vm_sources(&VmShape {
        vcpus: 128,
        vbds: (0..16)
            .map(|i| format!("xvd{}", (b'a' + i) as char))
            .collect(),
        vifs: (0..16).collect(),
    })
    .unwrap();
    let rrd = Rrd::new(specs, T0_MS).unwrap();
    let uuids: Vec<String> = (0..20)
        .map(|i| format!("6f1b7c1e-0000-4000-8000-{i:012}"))
        .collect();
    let owners: Vec<Owner<'_>> = uuids
        .iter()
        .map(|uuid| Owner {
            kind: OwnerKind::Vm,
            uuid,
            rrd: &rrd,
        })
        .collect();
    let start = (T0_MS / 1000 - 600).to_string();
    let every_cf = UpdatesQuery::from_params([("start", start.as_str())]).unwrap();
    // 20 × 290 sources × 3 CFs × 120 rows.
    assert_eq!(
        export(&owners, &every_cf),
        Err(ExportError::TooLarge {
            cells: 20 * 290 * 3 * 120
        })
    );
    const { assert!(20 * 290 * 3 * 120 > MAX_CELLS) };
    // One CF fits.
    let average =
        UpdatesQuery::from_params([("start", start.as_str()), ("cf", "AVERAGE")]).unwrap();
    assert!(export(&owners, &average).is_ok());
}

#[test]
fn xen_orchestras_four_granularities_get_the_step_they_ask_for() {
    // Xen Orchestra asks `cf=AVERAGE&host=true&json=true&interval=<step>` with
    // `start = now - step × points + step` and refuses any other `meta.step`.
    let mut sim = Sim::new();
    let mut guest = Guest::new(VM);
    for _ in 0..30 {
        sim.step(&mut [&mut guest], |g, ns| {
            g.figures.vcpu_time_ns[0] += ns / 3
        });
    }
    for (step, points) in [(5u64, 120u64), (60, 120), (3600, 168), (86_400, 366)] {
        let start = (sim.now_s() - step * points + step).to_string();
        let interval = step.to_string();
        let json = sim
            .updates(&[
                ("cf", "AVERAGE"),
                ("host", "true"),
                ("interval", &interval),
                ("json", "true"),
                ("start", &start),
            ])
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(&json.replace("NaN", "null")).unwrap();
        assert_eq!(value["meta"]["step"], step, "granularity {step}");
        let legend = value["meta"]["legend"].as_array().unwrap();
        assert!(legend
            .iter()
            .all(|e| e.as_str().unwrap().starts_with("AVERAGE:")));
    }
}

#[test]
fn archives_survive_a_host_reboot_through_save_and_restore() {
    use keel_metering::RestoreError;
    let mut sim = Sim::new();
    let mut guest = Guest::new(VM);
    for _ in 0..40 {
        sim.step(&mut [&mut guest], |g, ns| {
            g.figures.vcpu_time_ns[0] += ns / 2
        });
    }
    let snapshot = sim.metering.save();
    let vm_before = sim.metering.vm_rrd_xml(VM).unwrap();
    let host_before = sim.metering.host_rrd_xml().unwrap();

    // The host reboots: a new Metering restores the snapshot.
    let mut restored = Metering::new(HOST).unwrap();
    restored.restore(&snapshot).unwrap();
    assert_eq!(restored.vm_rrd_xml(VM).unwrap(), vm_before);
    assert_eq!(restored.host_rrd_xml().unwrap(), host_before);
    assert_eq!(
        restored.vm_data_sources(VM).unwrap(),
        sim.metering.vm_data_sources(VM).unwrap()
    );

    // Ten minutes later the VM runs again in a new domain (counters from zero): the outage
    // reads unknown, the history before it is kept, and new samples record.
    sim.metering = restored;
    sim.now_ms += 600_000;
    guest.figures.instance += 1;
    guest.figures.vcpu_time_ns = vec![0, 0];
    for _ in 0..12 {
        sim.step(&mut [&mut guest], |g, ns| {
            g.figures.vcpu_time_ns[0] += ns / 4
        });
    }
    let start = (sim.now_s() - 3000).to_string();
    let minutes = parse_xport(
        &sim.updates(&[("start", &start), ("interval", "60"), ("cf", "AVERAGE")])
            .unwrap(),
    );
    let cpu: Vec<f64> = column(&minutes, &format!("AVERAGE:vm:{VM}:cpu0")).collect();
    assert!(
        cpu.iter().any(|v| (v - 0.5).abs() < 0.01),
        "before: {cpu:?}"
    );
    assert!(cpu.iter().any(|v| v.is_nan()), "the outage: {cpu:?}");
    assert!((sim.metering.query_vm(VM, "cpu0").unwrap() - 0.25).abs() < 0.01);

    // Refusals: another host's snapshot, a torn one, a flipped bit.
    let mut other = Metering::new(OTHER_VM).unwrap();
    assert_eq!(
        other.restore(&snapshot),
        Err(RestoreError::OtherHost(HOST.to_string()))
    );
    let mut fresh = Metering::new(HOST).unwrap();
    assert_eq!(
        fresh.restore(&snapshot[..snapshot.len() - 1]),
        Err(RestoreError::Torn)
    );
    let mut flipped = snapshot.clone();
    flipped[snapshot.len() / 2] ^= 1;
    assert_eq!(fresh.restore(&flipped), Err(RestoreError::Torn));
    assert!(
        fresh.vm_rrd(VM).is_none(),
        "a refused snapshot changes nothing"
    );
}

#[test]
fn any_checksummed_snapshot_restores_or_is_refused_without_panicking() {
    let mut sim = Sim::new();
    let mut guest = Guest::new(VM);
    for _ in 0..5 {
        sim.step(&mut [&mut guest], |g, ns| {
            g.figures.vcpu_time_ns[0] += ns / 2
        });
    }
    let snapshot = sim.metering.save();
    let payload = keel_metering::split_frames(&snapshot).0[0].to_vec();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    };
    for round in 0..400 {
        let mut mutated = payload.clone();
        if round % 2 == 0 {
            // A few bytes anywhere.
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % mutated.len();
                mutated[at] = next() as u8;
            }
        } else {
            // Cut short.
            mutated.truncate((next() as usize) % mutated.len());
        }
        let mut frame = Vec::new();
        keel_metering::push_frame(&mut frame, &mutated);
        let mut metering = Metering::new(HOST).unwrap();
        if metering.restore(&frame).is_ok() {
            // Whatever restored is usable.
            let _ = metering.vm_rrd_xml(VM);
            let _ = metering.host_rrd_xml();
            let host = HostFigures::default();
            let _ = metering.sample(sim.now_ms + 5_000, &host, &[guest.figures.clone()]);
        }
    }
}
