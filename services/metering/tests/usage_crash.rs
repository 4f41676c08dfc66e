//! Usage records across power cuts: a workload of samples, a VM destroyed, an export and an
//! acknowledgement, and compactions, is run with the power cut at every write (append or
//! compaction) in turn, under several tears of that write. After each cut the journal is
//! reopened and must hold exactly the state after the last acknowledged operation, or that
//! plus the one in flight (never a mix, never less, never counted twice). The workload then
//! resumes, retrying the failed operation as a caller would: CPU time and bytes must end
//! up exactly as in a run without faults, and time-integrated amounts (memory, disk sizes)
//! short by at most two sampling intervals.

// A panic in a test is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_metering::fakes::{MemUsageStore, StoreError, Tear};
use keel_metering::figures::{VbdFigures, VifFigures, VmFigures};
use keel_metering::{
    Ledger, Usage, UsageConfig, UsageError, UsageFormat, VmIdentity, VmUsageSample,
};

const A: &str = "0a0a0a0a-0000-4000-8000-00000000000a";
const B: &str = "0b0b0b0b-0000-4000-8000-00000000000b";
const STEP_MS: u64 = 5_000;
/// Hour H0 starts at this many seconds since the epoch (2026-12-03T09:00:00Z).
const H0: u64 = 1_796_288_400;
const SAMPLES_IN_H0: u64 = 20;
const SAMPLES: u64 = 50;
/// B is destroyed after this sample.
const B_DESTROYED_AFTER: u64 = 35;
const MEMORY_A: u64 = 1 << 30;
const MEMORY_B: u64 = 512 << 20;
const DISK_PROVISIONED: u64 = 8 << 30;
const DISK_USED: u64 = 3 << 30;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Sample(u64),
    Destroy,
    Export,
    Ack,
}

fn ops() -> Vec<Op> {
    let mut ops = Vec::new();
    for i in 1..=SAMPLES {
        ops.push(Op::Sample(i));
        if i == SAMPLES_IN_H0 {
            ops.push(Op::Export);
            ops.push(Op::Ack);
        }
        if i == B_DESTROYED_AFTER {
            ops.push(Op::Destroy);
        }
    }
    ops
}

fn time_ms(i: u64) -> u64 {
    // Samples 1..=20 fall in H0, the rest in the hour after.
    (H0 + 3600) * 1000 + i * STEP_MS - (SAMPLES_IN_H0 + 1) * STEP_MS
}

fn figures(uuid: &str, i: u64, memory: u64) -> VmFigures {
    VmFigures {
        uuid: uuid.to_string(),
        instance: 7,
        vcpu_time_ns: vec![i * 4_900_000_000, i * 1_000_000],
        memory_actual_bytes: memory,
        memory_target_bytes: memory,
        vbds: vec![VbdFigures {
            device: "xvda".to_string(),
            read_bytes: i * (1 << 20),
            write_bytes: i * 3 * (1 << 20),
            read_requests: i * 8,
            write_requests: i * 24,
            provisioned_bytes: DISK_PROVISIONED,
            used_bytes: DISK_USED,
            ..VbdFigures::default()
        }],
        vifs: vec![VifFigures {
            index: 0,
            rx_bytes: i * 150_000,
            tx_bytes: i * 90_000,
            ..VifFigures::default()
        }],
    }
}

fn identity(name: &str) -> VmIdentity {
    VmIdentity {
        name: name.to_string(),
        tags: vec!["tenant=acme".to_string()],
        tenant: Some("acme".to_string()),
    }
}

fn config() -> UsageConfig {
    UsageConfig {
        // Small enough that the workload compacts several times.
        compact_after_bytes: 3000,
        max_rows: 1000,
    }
}

fn run_op(usage: &mut Usage<MemUsageStore>, op: Op) -> Result<(), UsageError<StoreError>> {
    match op {
        Op::Sample(i) => {
            let a = figures(A, i, MEMORY_A);
            let b = figures(B, i, MEMORY_B);
            let (ia, ib) = (identity("web"), identity("db"));
            let mut vms = vec![VmUsageSample {
                identity: &ia,
                figures: &a,
            }];
            if i <= B_DESTROYED_AFTER {
                vms.push(VmUsageSample {
                    identity: &ib,
                    figures: &b,
                });
            }
            usage.record(time_ms(i), &vms)
        }
        Op::Destroy => usage.vm_destroyed(B),
        Op::Export => usage.export(H0, H0 + 3600, UsageFormat::Csv).map(|_| ()),
        Op::Ack => usage.ack(H0, H0 + 3600).map(|_| ()),
    }
}

/// The ledger after each operation of a run without faults (index 0 = before any), and the
/// number of writes that run makes.
fn reference() -> (Vec<Ledger>, u64) {
    let store = MemUsageStore::new();
    let (mut usage, _) = Usage::open(store.clone(), config()).unwrap();
    let mut ledgers = vec![usage.ledger().clone()];
    for op in ops() {
        run_op(&mut usage, op).unwrap();
        ledgers.push(usage.ledger().clone());
    }
    (ledgers, store.stats().writes)
}

fn rows_of(usage: &Usage<MemUsageStore>) -> Vec<keel_metering::UsageRow> {
    usage.rows(H0 - 3600, H0 + 7200).unwrap()
}

/// The final state after a faulty run against the reference's: same rows, same identities,
/// exact counters, time integrals short by at most two intervals.
fn check_final(usage: &Usage<MemUsageStore>, reference: &Usage<MemUsageStore>, what: &str) {
    let got = rows_of(usage);
    let want = rows_of(reference);
    assert_eq!(got.len(), want.len(), "{what}: rows");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            (&g.vm_uuid, g.hour_start, &g.identity, g.destroyed),
            (&w.vm_uuid, w.hour_start, &w.identity, w.destroyed),
            "{what}"
        );
        let (gc, wc) = (g.counters, w.counters);
        assert_eq!(gc.vcpu_ns, wc.vcpu_ns, "{what}: vCPU time of {}", g.vm_uuid);
        assert_eq!(
            (gc.disk_read_bytes, gc.disk_write_bytes),
            (wc.disk_read_bytes, wc.disk_write_bytes),
            "{what}: disk bytes"
        );
        assert_eq!(
            (gc.net_rx_bytes, gc.net_tx_bytes),
            (wc.net_rx_bytes, wc.net_tx_bytes),
            "{what}: network bytes"
        );
        let memory = if g.vm_uuid == A { MEMORY_A } else { MEMORY_B };
        let slack = 2 * u128::from(STEP_MS);
        for (got, want, size) in [
            (gc.memory_byte_ms, wc.memory_byte_ms, memory),
            (
                gc.disk_provisioned_byte_ms,
                wc.disk_provisioned_byte_ms,
                DISK_PROVISIONED,
            ),
            (gc.disk_used_byte_ms, wc.disk_used_byte_ms, DISK_USED),
        ] {
            assert!(got <= want, "{what}: counted twice ({got} > {want})");
            assert!(
                want - got <= slack * u128::from(size),
                "{what}: lost more than two intervals ({got} < {want})"
            );
        }
    }
}

fn reference_usage() -> Usage<MemUsageStore> {
    let (mut usage, _) = Usage::open(MemUsageStore::new(), config()).unwrap();
    for op in ops() {
        run_op(&mut usage, op).unwrap();
    }
    usage
}

const TEARS: [Tear; 6] = [
    Tear::Nothing,
    Tear::Prefix(1),
    Tear::Prefix(8),
    Tear::Prefix(29),
    Tear::Prefix(usize::MAX),
    Tear::Everything,
];

#[test]
fn power_cut_at_every_write() {
    let (ledgers, writes) = reference();
    let reference = reference_usage();
    assert!(writes > ops().len() as u64 / 2, "the workload writes");
    let mut compactions_cut = 0;
    let mut torn_tails_seen = 0;
    for k in 0..writes {
        for tear in TEARS {
            let what = format!("cut at write {k}, {tear:?}");
            let store = MemUsageStore::new();
            let (mut usage, _) = Usage::open(store.clone(), config()).unwrap();
            let ops = ops();
            store.cut_power_at(k, tear);
            let compactions_before = store.stats().compactions;
            let mut failed = None;
            for (index, op) in ops.iter().enumerate() {
                let before = store.stats().compactions;
                match run_op(&mut usage, *op) {
                    Ok(()) => {}
                    Err(UsageError::Store(StoreError::PowerCut)) => {
                        if store.stats().compactions > before {
                            compactions_cut += 1;
                        }
                        failed = Some(index);
                        break;
                    }
                    Err(e) => panic!("{what}: {e:?}"),
                }
            }
            let _ = compactions_before;
            let failed = failed.unwrap_or_else(|| panic!("{what}: the power was never cut"));
            assert!(!store.is_powered());
            drop(usage);

            store.power_cycle();
            let (mut usage, report) = Usage::open(store.clone(), config()).unwrap();
            if report.torn_tail_bytes > 0 {
                torn_tails_seen += 1;
            }
            // The acknowledged state (after op `failed - 1`) or that plus the op in flight.
            let recovered = usage.ledger();
            assert!(
                *recovered == ledgers[failed] || *recovered == ledgers[failed + 1],
                "{what}: recovered state is neither before nor after op {failed} ({:?})",
                ops[failed]
            );
            // Resume, retrying the failed operation, with the VMs still running.
            for op in &ops[failed..] {
                run_op(&mut usage, *op).unwrap_or_else(|e| panic!("{what}: {e:?}"));
            }
            check_final(&usage, &reference, &what);
            // And the journal written after the reboot replays to the same state.
            let (reopened, _) = Usage::open(store.clone(), config()).unwrap();
            assert_eq!(reopened.ledger(), usage.ledger(), "{what}: replay");
        }
    }
    assert!(compactions_cut > 0, "some cuts hit a compaction");
    assert!(torn_tails_seen > 0, "some cuts tore an append");
}

#[test]
fn failed_writes_with_the_power_on_are_retried_without_double_counting() {
    let (_, writes) = reference();
    let reference = reference_usage();
    for k in 0..writes {
        for tear in TEARS {
            let what = format!("write {k} fails, {tear:?}");
            let store = MemUsageStore::new();
            let (mut usage, _) = Usage::open(store.clone(), config()).unwrap();
            store.fail_write_at(k, tear);
            for op in ops() {
                if let Err(e) = run_op(&mut usage, op) {
                    assert_eq!(e, UsageError::Store(StoreError::Io), "{what}");
                    run_op(&mut usage, op).unwrap_or_else(|e| panic!("{what}: retry {e:?}"));
                }
            }
            check_final(&usage, &reference, &what);
            let (reopened, report) = Usage::open(store.clone(), config()).unwrap();
            assert_eq!(report.torn_tail_bytes, 0, "{what}: a compaction followed");
            assert_eq!(reopened.ledger(), usage.ledger(), "{what}: replay");
        }
    }
}

#[test]
fn destroyed_vm_rows_remain_until_exported_and_acknowledged() {
    let (mut usage, _) = Usage::open(MemUsageStore::new(), config()).unwrap();
    for op in ops() {
        run_op(&mut usage, op).unwrap();
    }
    let next = H0 + 3600;
    let rows = usage.rows(next, next + 3600).unwrap();
    let b_row = rows.iter().find(|r| r.vm_uuid == B).expect("B billed");
    assert!(b_row.destroyed);
    // Not exported yet: refused.
    assert!(matches!(
        usage.ack(next, next + 3600),
        Err(UsageError::NothingExported { .. })
    ));
    let csv = usage.export(next, next + 3600, UsageFormat::Csv).unwrap();
    assert!(csv.contains(B) && csv.contains(",true\r\n"));
    let report = usage.ack(next, next + 3600).unwrap();
    assert_eq!(report.acknowledged_rows, 2);
    assert!(usage.rows(next, next + 3600).unwrap().is_empty());
    // Acknowledging again is answered, not refused.
    assert_eq!(usage.ack(next, next + 3600).unwrap().acknowledged_rows, 0);
}

#[test]
fn periods_are_whole_hours() {
    let (mut usage, _) = Usage::open(MemUsageStore::new(), config()).unwrap();
    for (from, to) in [
        (H0 + 1, H0 + 3600),
        (H0, H0),
        (H0 + 3600, H0),
        (0, 401 * 86_400),
    ] {
        assert!(matches!(
            usage.export(from, to, UsageFormat::Json),
            Err(UsageError::BadPeriod { .. })
        ));
    }
}

#[test]
fn a_corrupt_record_ends_the_journal_and_the_next_write_compacts() {
    let store = MemUsageStore::new();
    let (mut usage, _) = Usage::open(store.clone(), UsageConfig::default()).unwrap();
    for op in ops().into_iter().take(5) {
        run_op(&mut usage, op).unwrap();
    }
    let len = store.medium().len();
    store.corrupt(len - 3);
    let (mut usage, report) = Usage::open(store.clone(), UsageConfig::default()).unwrap();
    assert!(report.torn_tail_bytes > 0);
    let compactions = store.stats().compactions;
    run_op(&mut usage, Op::Sample(6)).unwrap();
    assert_eq!(store.stats().compactions, compactions + 1);
    let (reopened, report) = Usage::open(store.clone(), UsageConfig::default()).unwrap();
    assert_eq!(report.torn_tail_bytes, 0);
    assert_eq!(reopened.ledger(), usage.ledger());
}

/// xorshift64*: deterministic noise without a dependency.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Opens `journal` and, when it opens, uses it: never a panic, whatever the bytes.
fn open_and_use(journal: &[u8]) {
    let store = MemUsageStore::new();
    let mut writer = store.clone();
    keel_metering::UsageStore::append(&mut writer, journal).unwrap();
    if let Ok((mut usage, _)) = Usage::open(store, config()) {
        let _ = run_op(&mut usage, Op::Sample(1));
        let _ = usage.export(H0, H0 + 3600, UsageFormat::Json);
    }
}

#[test]
fn any_journal_opens_or_is_refused_without_panicking() {
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    // A real journal, to mutate.
    let store = MemUsageStore::new();
    let (mut usage, _) = Usage::open(store.clone(), UsageConfig::default()).unwrap();
    for op in ops().into_iter().take(30) {
        run_op(&mut usage, op).unwrap();
    }
    let real = store.medium();
    let frames = keel_metering::split_frames(&real).0;
    assert!(frames.len() > 10);
    for round in 0..3000 {
        let mut journal = Vec::new();
        match round % 3 {
            // Checksummed frames of pure noise behind a valid frame tag.
            0 => {
                let len = noise.below(300);
                let mut payload: Vec<u8> = (0..len).map(|_| noise.next() as u8).collect();
                if let Some(tag) = payload.first_mut() {
                    *tag = 1 + (noise.next() % 2) as u8;
                }
                keel_metering::push_frame(&mut journal, &payload);
            }
            // A real frame with a few bytes changed, checksum recomputed.
            1 => {
                let mut payload = frames[noise.below(frames.len())].to_vec();
                for _ in 0..1 + noise.below(4) {
                    let at = noise.below(payload.len());
                    payload[at] = noise.next() as u8;
                }
                keel_metering::push_frame(&mut journal, &payload);
            }
            // A real journal cut short and with a flipped byte (checksums catch it).
            _ => {
                journal = real[..noise.below(real.len())].to_vec();
                if !journal.is_empty() {
                    let at = noise.below(journal.len());
                    journal[at] ^= 0x41;
                }
            }
        }
        open_and_use(&journal);
    }
}

#[test]
fn a_large_ledger_is_not_rewritten_at_every_sample() {
    // 40 VMs over 30 hours: ~1200 rows, a checkpoint far above the 3000-byte threshold.
    let store = MemUsageStore::new();
    let config = UsageConfig {
        max_rows: 10_000,
        ..config()
    };
    let (mut usage, _) = Usage::open(store.clone(), config).unwrap();
    let uuids: Vec<String> = (0..40)
        .map(|i| format!("0c0c0c0c-0000-4000-8000-{i:012}"))
        .collect();
    let identity = identity("vm");
    for hour in 0..30u64 {
        let figures: Vec<VmFigures> = uuids
            .iter()
            .map(|u| figures(u, hour + 1, MEMORY_B))
            .collect();
        let samples: Vec<VmUsageSample<'_>> = figures
            .iter()
            .map(|f| VmUsageSample {
                identity: &identity,
                figures: f,
            })
            .collect();
        usage.record((H0 + hour * 3600) * 1000, &samples).unwrap();
    }
    assert_eq!(usage.ledger().row_count(), 1200);
    let before = store.stats();
    let identity_only = figures(&uuids[0], 31, MEMORY_B);
    for i in 0..20u64 {
        let f = VmFigures {
            vcpu_time_ns: vec![(31 + i) * 4_900_000_000, 0],
            ..identity_only.clone()
        };
        usage
            .record(
                (H0 + 30 * 3600) * 1000 + i * STEP_MS,
                &[VmUsageSample {
                    identity: &identity,
                    figures: &f,
                }],
            )
            .unwrap();
    }
    let after = store.stats();
    assert_eq!(after.writes - before.writes, 20);
    assert!(
        after.compactions - before.compactions <= 1,
        "{} checkpoints for 20 small samples",
        after.compactions - before.compactions
    );
    let (reopened, _) = Usage::open(store.clone(), config).unwrap();
    assert_eq!(reopened.ledger(), usage.ledger());
}
