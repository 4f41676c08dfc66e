//! Power cuts at every write boundary of host-database saves, through a real SR on the
//! power-cut `MemDisk`: after the "reboot" the database is exactly the last acknowledged one
//! or the one being saved, never anything else, and the SR and its other VDIs are intact.
// A test crate: a panic is a failed test (see docs/architecture.md, "Lint policy").
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_block::fakes::{CacheLoss, MemDisk};
use keel_hostdb::{
    find_database_vdi, find_or_create_database_vdi, Database, FieldValue, HostDb, Located,
    NoDatabase, Record, SlotState, SrVolume, BLOCK, VDI_NAME,
};
use keel_storage::{FormatOptions, Sr, Uuid};

const SR_UUID: Uuid = Uuid([0x5a; 16]);
/// Two slots of 32 KiB.
const VOLUME_BYTES: u64 = 64 * 1024;
const GUEST_BYTES: usize = 16 * 1024;

fn format(extent_size: u64) -> (Sr<MemDisk>, MemDisk) {
    // 2 MiB of 512-byte sectors.
    let disk = MemDisk::with_geometry(512, 4096);
    let mut options = FormatOptions::new(SR_UUID);
    options.extent_size = extent_size;
    options.metadata_blocks = Some(32);
    let sr = Sr::format(disk.clone(), options).unwrap();
    (sr, disk)
}

fn guest_data() -> Vec<u8> {
    (0..GUEST_BYTES).map(|i| (i * 7 + i / 512) as u8).collect()
}

/// A database of `objects` VMs whose contents depend on `seed`; sizes vary with both.
fn database(seed: u8, objects: usize) -> Database {
    let mut database = Database::new();
    for i in 0..objects {
        let mut vm = Record::new();
        vm.insert(
            "name_label".into(),
            FieldValue::String(format!("vm {i} of generation {seed}")),
        );
        vm.insert(
            "power_state".into(),
            FieldValue::String(if i % 2 == 0 { "Running" } else { "Halted" }.into()),
        );
        vm.insert(
            "memory_static_max".into(),
            FieldValue::Int(i64::from(seed) << 30),
        );
        vm.insert(
            "other_config".into(),
            FieldValue::Map(
                (0..8)
                    .map(|k| {
                        (
                            format!("key{k}"),
                            FieldValue::String("v".repeat(seed as usize)),
                        )
                    })
                    .collect(),
            ),
        );
        vm.insert(
            "VBDs".into(),
            FieldValue::Set(
                (0..4)
                    .map(|k| FieldValue::Ref(format!("OpaqueRef:{seed}-{i}-{k}")))
                    .collect(),
            ),
        );
        database.insert("VM", &format!("OpaqueRef:vm-{i:04}"), vm);
    }
    database
}

fn volume(sr: &mut Sr<MemDisk>, vdi: Uuid) -> SrVolume<'_, MemDisk> {
    SrVolume::new(sr, vdi).unwrap()
}

/// What a reboot finds: `None` when there is no database (blank or never-completed VDI).
fn load_after_reboot(disk: &MemDisk, what: &str) -> (Sr<MemDisk>, Option<Database>) {
    let mut sr = Sr::attach(disk.clone()).unwrap_or_else(|e| panic!("{what}: attach: {e:?}"));
    sr.check()
        .unwrap_or_else(|e| panic!("{what}: SR check: {e:?}"));
    let Some(vdi) = find_database_vdi(&sr).unwrap() else {
        return (sr, None);
    };
    let opened =
        HostDb::open(&mut volume(&mut sr, vdi)).unwrap_or_else(|e| panic!("{what}: open: {e:?}"));
    let found = match opened.loaded {
        Ok(loaded) => Some(loaded.database),
        Err(NoDatabase::Blank | NoDatabase::NoValidDatabase { .. }) => None,
        Err(other) => panic!("{what}: {other:?}"),
    };
    (sr, found)
}

/// After recovery: the guest VDI is untouched, and a new save works and survives a reboot.
fn still_works(mut sr: Sr<MemDisk>, disk: &MemDisk, guest: Uuid, what: &str) {
    let mut data = vec![0; GUEST_BYTES];
    sr.read(guest, 0, &mut data).unwrap();
    assert!(data == guest_data(), "{what}: guest VDI changed");
    let vdi = find_or_create_database_vdi(&mut sr, VOLUME_BYTES)
        .unwrap()
        .uuid();
    let mut opened = HostDb::open(&mut volume(&mut sr, vdi)).unwrap();
    let next = database(99, 3);
    opened
        .store
        .save(&mut volume(&mut sr, vdi), &next)
        .unwrap_or_else(|e| panic!("{what}: save after recovery: {e:?}"));
    drop(sr);
    disk.power_cycle(CacheLoss::DropAll);
    let (_, found) = load_after_reboot(disk, what);
    assert!(found == Some(next), "{what}: save after recovery lost");
}

struct Scenario<'a> {
    name: &'a str,
    extent_size: u64,
    /// Saved (uncut) before the cut; `None` leaves even the VDI to the operation.
    history: Option<&'a [Database]>,
    /// Saved one after the other with the power cut pending.
    attempts: &'a [Database],
    /// Snapshot the volume after the history, so every save copies on write.
    snapshot: bool,
}

struct World {
    sr: Sr<MemDisk>,
    disk: MemDisk,
    guest: Uuid,
    /// The database VDI and its store, if made before the cut.
    store: Option<(Uuid, HostDb)>,
}

fn prepare(scenario: &Scenario<'_>) -> World {
    let (mut sr, disk) = format(scenario.extent_size);
    let guest = sr.create_vdi("guest", GUEST_BYTES as u64).unwrap();
    sr.write(guest, 0, &guest_data()).unwrap();
    sr.flush().unwrap();
    let store = scenario.history.map(|history| {
        let vdi = find_or_create_database_vdi(&mut sr, VOLUME_BYTES)
            .unwrap()
            .uuid();
        let mut store = HostDb::open(&mut volume(&mut sr, vdi)).unwrap().store;
        for database in history {
            store.save(&mut volume(&mut sr, vdi), database).unwrap();
        }
        if scenario.snapshot {
            sr.snapshot_vdi(vdi).unwrap();
        }
        (vdi, store)
    });
    World {
        sr,
        disk,
        guest,
        store,
    }
}

/// Runs the attempts; returns how many were acknowledged, and the first error if any.
fn run(world: &mut World, attempts: &[Database]) -> (usize, Result<(), String>) {
    let sr = &mut world.sr;
    let (vdi, mut store) = match world.store.take() {
        Some(made) => made,
        None => {
            let vdi = match find_or_create_database_vdi(sr, VOLUME_BYTES) {
                Ok(Located::Created(vdi)) => vdi,
                Ok(found) => panic!("the VDI existed already: {found:?}"),
                Err(error) => return (0, Err(format!("{error:?}"))),
            };
            match HostDb::open(&mut volume(sr, vdi)) {
                Ok(opened) => (vdi, opened.store),
                Err(error) => return (0, Err(format!("{error:?}"))),
            }
        }
    };
    for (acknowledged, database) in attempts.iter().enumerate() {
        if let Err(error) = store.save(&mut volume(sr, vdi), database) {
            return (acknowledged, Err(format!("{error:?}")));
        }
    }
    (attempts.len(), Ok(()))
}

fn crash_matrix(scenario: &Scenario<'_>, losses: &dyn Fn(u64, &MemDisk) -> Vec<CacheLoss>) {
    let name = scenario.name;
    // Reference run: how many mutations the attempts make.
    let mut world = prepare(scenario);
    let start = world.disk.stats().mutations;
    let (acknowledged, result) = run(&mut world, scenario.attempts);
    assert_eq!(result, Ok(()), "{name}: reference run");
    assert_eq!(acknowledged, scenario.attempts.len());
    let total = world.disk.stats().mutations - start;
    assert!(total > 0, "{name}: the saves wrote nothing");
    let mut runs = 0;
    for k in 0..=total {
        let cut = |world: &mut World| {
            world.disk.cut_power_after(k);
            run(world, scenario.attempts)
        };
        let mut probe = prepare(scenario);
        let (acknowledged, result) = cut(&mut probe);
        if k < total {
            assert!(result.is_err(), "{name}: cut after {k}/{total} not noticed");
        } else {
            assert_eq!(result, Ok(()), "{name}: uncut run");
        }
        let last_acknowledged = match acknowledged {
            0 => scenario.history.and_then(|h| h.last()).cloned(),
            n => Some(scenario.attempts[n - 1].clone()),
        };
        let in_progress = scenario.attempts.get(acknowledged).cloned();
        for loss in losses(k, &probe.disk) {
            // The same cut again, on a fresh world for each way the cache can be lost.
            let mut world = prepare(scenario);
            assert_eq!(cut(&mut world), (acknowledged, result.clone()));
            let World {
                sr, disk, guest, ..
            } = world;
            drop(sr);
            let what = format!("{name}: cut after {k}/{total} mutations, {loss:?}");
            disk.power_cycle(loss);
            let (sr, found) = load_after_reboot(&disk, &what);
            if result.is_ok() {
                assert!(found == last_acknowledged, "{what}: acknowledged save lost");
            } else {
                assert!(
                    found == last_acknowledged || (in_progress.is_some() && found == in_progress),
                    "{what}: neither the acknowledged database nor the one being saved \
                     ({acknowledged} acknowledged)"
                );
            }
            still_works(sr, &disk, guest, &what);
            runs += 1;
        }
    }
    eprintln!("{name}: {total} mutations, {runs} cut-and-reboot runs");
}

fn standard_losses(k: u64, _: &MemDisk) -> Vec<CacheLoss> {
    vec![
        CacheLoss::DropAll,
        CacheLoss::KeepAll,
        CacheLoss::Random { seed: k * 7 + 1 },
        CacheLoss::Random { seed: k * 13 + 5 },
    ]
}

#[test]
fn crash_during_saves_with_small_extents() {
    // 4 KiB extents: each slot spans several extents, written in place or copied on write.
    let history = [database(1, 20)];
    crash_matrix(
        &Scenario {
            name: "small extents",
            extent_size: 4096,
            history: Some(&history),
            attempts: &[database(2, 30), database(3, 10), database(4, 25)],
            snapshot: false,
        },
        &standard_losses,
    );
}

#[test]
fn crash_during_saves_with_both_slots_in_one_extent() {
    // 64 KiB extents: the whole volume is one extent, so a save copies the extent holding
    // the acknowledged slot before the SR's root switch.
    let history = [database(1, 20), database(2, 5)];
    crash_matrix(
        &Scenario {
            name: "one extent",
            extent_size: 64 * 1024,
            history: Some(&history),
            attempts: &[database(3, 30), database(4, 12)],
            snapshot: false,
        },
        &standard_losses,
    );
}

#[test]
fn crash_during_saves_that_copy_on_write() {
    // A snapshot shares every extent of the volume, so the saves copy extents that also hold
    // the acknowledged slot, in both extent sizes.
    let history = [database(1, 20), database(2, 8)];
    for extent_size in [4096, 64 * 1024] {
        crash_matrix(
            &Scenario {
                name: &format!("copy on write, {extent_size}-byte extents"),
                extent_size,
                history: Some(&history),
                attempts: &[database(3, 30), database(4, 12)],
                snapshot: true,
            },
            &standard_losses,
        );
    }
}

#[test]
fn crash_during_the_first_save_and_the_volume_creation() {
    crash_matrix(
        &Scenario {
            name: "first save",
            extent_size: 4096,
            history: None,
            attempts: &[database(1, 15), database(2, 15)],
            snapshot: false,
        },
        &standard_losses,
    );
}

#[test]
fn crash_during_a_save_into_a_blank_volume() {
    crash_matrix(
        &Scenario {
            name: "blank volume",
            extent_size: 4096,
            history: Some(&[]),
            attempts: &[database(1, 25)],
            snapshot: false,
        },
        &standard_losses,
    );
}

#[test]
fn every_torn_prefix_of_the_cache() {
    // At every cut, every prefix of the unflushed sector writes reaching the medium.
    let history = [database(1, 20)];
    crash_matrix(
        &Scenario {
            name: "torn prefixes",
            extent_size: 4096,
            history: Some(&history),
            attempts: &[database(2, 24)],
            snapshot: false,
        },
        &|_, disk| {
            (0..=disk.cached_sector_writes())
                .map(CacheLoss::KeepFirst)
                .collect()
        },
    );
}

#[test]
fn a_torn_newer_slot_falls_back_to_the_older_one() {
    let (mut sr, disk) = format(4096);
    let vdi = find_or_create_database_vdi(&mut sr, VOLUME_BYTES)
        .unwrap()
        .uuid();
    let mut store = HostDb::open(&mut volume(&mut sr, vdi)).unwrap().store;
    store
        .save(&mut volume(&mut sr, vdi), &database(1, 10))
        .unwrap();
    let report = store
        .save(&mut volume(&mut sr, vdi), &database(2, 40))
        .unwrap();
    assert_eq!(report.slot, 1);
    assert!(report.payload_bytes > 2 * BLOCK, "{report:?}");
    // Tear slot 1: its second block is overwritten with what a half-done save would leave.
    let slot1 = VOLUME_BYTES / 2;
    sr.write(vdi, slot1 + BLOCK as u64, &[0xa5; BLOCK]).unwrap();
    sr.flush().unwrap();
    drop(sr);
    disk.power_cycle(CacheLoss::DropAll);
    let mut sr = Sr::attach(disk.clone()).unwrap();
    let opened = HostDb::open(&mut volume(&mut sr, vdi)).unwrap();
    let loaded = opened.loaded.unwrap();
    assert!(loaded.database == database(1, 10));
    assert_eq!((loaded.slot, loaded.generation), (0, 1));
    assert!(matches!(loaded.other_slot, SlotState::Damaged(_)));
}

#[test]
fn both_slots_bad_is_no_valid_database_and_saving_recovers() {
    let (mut sr, disk) = format(4096);
    let vdi = find_or_create_database_vdi(&mut sr, VOLUME_BYTES)
        .unwrap()
        .uuid();
    let mut store = HostDb::open(&mut volume(&mut sr, vdi)).unwrap().store;
    store
        .save(&mut volume(&mut sr, vdi), &database(1, 10))
        .unwrap();
    store
        .save(&mut volume(&mut sr, vdi), &database(2, 10))
        .unwrap();
    for slot in [0, VOLUME_BYTES / 2] {
        sr.write(vdi, slot, &[0x5a; BLOCK]).unwrap();
    }
    sr.flush().unwrap();
    drop(sr);
    disk.power_cycle(CacheLoss::DropAll);
    let mut sr = Sr::attach(disk.clone()).unwrap();
    let mut opened = HostDb::open(&mut volume(&mut sr, vdi)).unwrap();
    assert!(matches!(
        opened.loaded,
        Err(NoDatabase::NoValidDatabase { .. })
    ));
    opened
        .store
        .save(&mut volume(&mut sr, vdi), &database(3, 4))
        .unwrap();
    drop(sr);
    disk.power_cycle(CacheLoss::DropAll);
    let (_, found) = load_after_reboot(&disk, "after recovery");
    assert!(found == Some(database(3, 4)));
}

#[test]
fn the_database_vdi_is_found_by_name_and_not_confused_with_others() {
    let (mut sr, _disk) = format(4096);
    assert_eq!(find_database_vdi(&sr), Ok(None));
    let made = find_or_create_database_vdi(&mut sr, VOLUME_BYTES).unwrap();
    assert!(matches!(made, Located::Created(_)));
    assert_eq!(
        find_or_create_database_vdi(&mut sr, VOLUME_BYTES),
        Ok(Located::Found(made.uuid()))
    );
    // A snapshot keeps the name but is read-only: not a candidate.
    sr.snapshot_vdi(made.uuid()).unwrap();
    assert_eq!(find_database_vdi(&sr), Ok(Some(made.uuid())));
    // A second writable VDI of that name makes the choice unknowable.
    let twin = sr.create_vdi(VDI_NAME, VOLUME_BYTES).unwrap();
    assert!(matches!(
        find_database_vdi(&sr),
        Err(keel_hostdb::LocateError::Ambiguous { candidates }) if candidates.contains(&twin)
    ));
}

#[test]
fn a_realistic_database_survives_a_reboot() {
    // 16 MiB disk, default 1 MiB extents, the default volume size, ~600 KiB of records.
    let disk = MemDisk::with_geometry(512, 32 * 1024);
    let mut options = FormatOptions::new(SR_UUID);
    options.metadata_blocks = Some(64);
    let mut sr = Sr::format(disk.clone(), options).unwrap();
    let vdi = find_or_create_database_vdi(&mut sr, keel_hostdb::DEFAULT_VOLUME_BYTES)
        .unwrap()
        .uuid();
    let mut store = HostDb::open(&mut volume(&mut sr, vdi)).unwrap().store;
    let big = database(40, 1000);
    let report = store.save(&mut volume(&mut sr, vdi), &big).unwrap();
    assert!(report.payload_bytes > 256 * 1024, "{report:?}");
    eprintln!("1000 VMs: {} payload bytes", report.payload_bytes);
    drop(sr);
    disk.power_cycle(CacheLoss::DropAll);
    let (_, found) = load_after_reboot(&disk, "realistic");
    assert!(found == Some(big));
}

#[test]
fn a_save_that_fails_on_a_device_error_is_retried_by_the_same_handle() {
    // Not a power cut: one device write or flush fails, the host keeps running, and the same
    // handle saves again (after re-attaching the SR if the failure poisoned it). The retry
    // must not overwrite the acknowledged slot, and must itself survive a reboot.
    let history = [database(1, 20), database(2, 10)];
    let scenario = Scenario {
        name: "device error",
        extent_size: 4096,
        history: Some(&history),
        attempts: &[],
        snapshot: false,
    };
    let (writes, flushes) = {
        let mut world = prepare(&scenario);
        let (vdi, mut store) = world.store.take().unwrap();
        let before = world.disk.stats();
        store
            .save(&mut volume(&mut world.sr, vdi), &database(3, 30))
            .unwrap();
        let after = world.disk.stats();
        (after.writes - before.writes, after.flushes - before.flushes)
    };
    assert!(writes > 0 && flushes > 0);
    let failures = (0..writes)
        .map(|n| (n, true))
        .chain((0..flushes).map(|n| (n, false)));
    for (n, is_write) in failures {
        let what = format!("failing {} {n}", if is_write { "write" } else { "flush" });
        let mut world = prepare(&scenario);
        let (vdi, mut store) = world.store.take().unwrap();
        if is_write {
            world.disk.fail_write(n, 1);
        } else {
            world.disk.fail_flush(n);
        }
        assert!(
            store
                .save(&mut volume(&mut world.sr, vdi), &database(3, 30))
                .is_err(),
            "{what}: the failure was not reported"
        );
        let retried = database(4, 25);
        let result = store.save(&mut volume(&mut world.sr, vdi), &retried);
        let mut sr = match result {
            Ok(_) => world.sr,
            Err(error) => {
                // The SR refuses work until re-attached; the database handle carries on.
                assert!(
                    format!("{error:?}").contains("NeedsReattach"),
                    "{what}: {error:?}"
                );
                drop(world.sr);
                let mut sr = Sr::attach(world.disk.clone()).unwrap();
                store
                    .save(&mut volume(&mut sr, vdi), &retried)
                    .unwrap_or_else(|e| panic!("{what}: retry after re-attach: {e:?}"));
                sr
            }
        };
        let mut data = vec![0; GUEST_BYTES];
        sr.read(world.guest, 0, &mut data).unwrap();
        assert!(data == guest_data(), "{what}: guest VDI changed");
        drop(sr);
        world.disk.power_cycle(CacheLoss::DropAll);
        let (mut sr, found) = load_after_reboot(&world.disk, &what);
        assert!(found == Some(retried), "{what}: the retried save was lost");
        // The retry went where the failed attempt went: the slot beside it still holds the
        // database acknowledged before (generation 2), and the failed attempt's generation
        // was not reused.
        let loaded = HostDb::open(&mut volume(&mut sr, vdi))
            .unwrap()
            .loaded
            .unwrap();
        assert_eq!(loaded.generation, 4, "{what}");
        assert_eq!(
            loaded.other_slot,
            SlotState::Valid { generation: 2 },
            "{what}"
        );
    }
}
