//! The host database's wiring (docs/hostdb.md, "The kernel side"): at boot, find or make the
//! database VDI on the attached SRs and load it; afterwards save into it whenever the XenAPI
//! asks (it does so after every change to a kept object, before answering the call).
//!
//! The VDI is named by SR and VDI UUID; the sink holds a handle on the SRs (the kernel hands
//! it over at boot) and borrows them for each save.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, Ordering};

use keel_storage::Uuid;
use keel_xenapi::keel_hostdb::{
    find_database_vdi, find_or_create_database_vdi, Database, HostDb, HostDbError, LocateError,
    Located, NoDatabase, SrVolume, DEFAULT_VOLUME_BYTES,
};
use keel_xenapi::{DatabaseSink, SaveFailed, XenApi};

use super::SharedRepositories;

/// What the XenAPI is built with: the records to restore and where to save.
#[derive(Default)]
pub struct Opened {
    pub restore: Option<Database>,
    pub sink: Option<Box<dyn DatabaseSink>>,
}

/// Finds the database (the first SR holding one, else a new one on the first SR) and loads
/// it. Without an SR, or when the database cannot be opened, Keel runs from memory and says
/// once that nothing will persist.
pub fn open(storage: Option<&SharedRepositories>) -> Opened {
    let Some(storage) = storage else {
        log::warn!("hostdb: no SR: nothing clients create will persist across a reboot");
        return Opened::default();
    };
    match locate(storage) {
        Ok(Some((sr, vdi, how))) => open_at(storage, sr, vdi, how),
        Ok(None) => {
            log::warn!("hostdb: no SR: nothing clients create will persist across a reboot");
            Opened::default()
        }
        Err(why) => {
            log::error!("hostdb: {why}: nothing clients create will persist across a reboot");
            Opened::default()
        }
    }
}

/// The SR and VDI of the database, made on the first SR if no SR has one.
fn locate(
    storage: &SharedRepositories,
) -> Result<Option<(Uuid, Uuid, Located)>, alloc::string::String> {
    let mut storage = storage.borrow_mut();
    let srs = &mut storage.srs;
    for repository in srs.iter() {
        match find_database_vdi(&repository.sr) {
            Ok(Some(vdi)) => return Ok(Some((repository.sr.uuid(), vdi, Located::Found(vdi)))),
            Ok(None) => {}
            Err(LocateError::Ambiguous { candidates }) => {
                return Err(alloc::format!(
                    "SR {} holds {} VDIs that could be the host database; using none",
                    repository.sr.uuid(),
                    candidates.len()
                ))
            }
            Err(LocateError::Sr(e)) => {
                return Err(alloc::format!("SR {}: {e}", repository.sr.uuid()))
            }
        }
    }
    let Some(first) = srs.first_mut() else {
        return Ok(None);
    };
    let sr = first.sr.uuid();
    match find_or_create_database_vdi(&mut first.sr, DEFAULT_VOLUME_BYTES) {
        Ok(how) => Ok(Some((sr, how.uuid(), how))),
        Err(e) => Err(alloc::format!(
            "cannot create the database VDI on SR {sr}: {e:?}"
        )),
    }
}

fn open_at(storage: &SharedRepositories, sr: Uuid, vdi: Uuid, how: Located) -> Opened {
    let opened = {
        let mut repositories = storage.borrow_mut();
        let Some(on) = repositories.sr_mut(sr) else {
            return Opened::default();
        };
        SrVolume::new(on, vdi)
            .map_err(HostDbError::Volume)
            .and_then(|mut volume| HostDb::open(&mut volume))
    };
    let opened = match opened {
        Ok(opened) => opened,
        Err(e) => {
            log::error!(
                "hostdb: cannot read the database VDI {vdi} on SR {sr}: {e:?}: nothing clients \
                 create will persist across a reboot"
            );
            return Opened::default();
        }
    };
    let restore = match opened.loaded {
        Ok(loaded) => {
            log::info!(
                "hostdb: loaded {} objects (generation {}) from VDI {vdi} on SR {sr}",
                loaded.database.object_count(),
                loaded.generation
            );
            log::debug!("hostdb: the other slot: {:?}", loaded.other_slot);
            Some(loaded.database)
        }
        Err(NoDatabase::Blank) => {
            let made = if matches!(how, Located::Created(_)) {
                "created"
            } else {
                "found empty"
            };
            log::info!("hostdb: database VDI {vdi} on SR {sr} {made}; starting afresh");
            None
        }
        Err(NoDatabase::NoValidDatabase { slots }) => {
            log::error!(
                "hostdb: no valid database in VDI {vdi} on SR {sr} (slots {slots:?}); starting \
                 with no VMs"
            );
            None
        }
        Err(NoDatabase::UnsupportedVersion(version)) => {
            log::error!(
                "hostdb: VDI {vdi} on SR {sr} holds a database of format {version}, written by \
                 a newer Keel; starting with no VMs and saving nothing, to keep it"
            );
            None
        }
    };
    Opened {
        restore,
        sink: Some(Box::new(VdiSink {
            storage: storage.clone(),
            sr,
            vdi,
            store: opened.store,
            failing: false,
            saves: 0,
        })),
    }
}

/// Set once the host has finished booting (every service up, the hypervisor's self-tests
/// passed): only then may `auto_poweron` VMs start. A guest built while the boot is still
/// under way competes with it for the only CPU (under Xen, building a guest can hold it for
/// seconds under TCG).
static HOST_READY: AtomicBool = AtomicBool::new(false);
/// The `auto_poweron` VMs were started (once per boot).
static AUTO_STARTED: AtomicBool = AtomicBool::new(false);

/// The host has finished booting (main.rs, with the `keel: ready` line).
pub fn host_ready() {
    HOST_READY.store(true, Ordering::Release);
}

/// Starts the `auto_poweron` VMs the first time it is called after [`host_ready`]; cheap on
/// every other call (the management server's loop calls it each round). Returns whether it
/// started anything.
pub fn start_auto_poweron_when_ready(api: &mut XenApi) -> bool {
    if !HOST_READY.load(Ordering::Acquire) || AUTO_STARTED.swap(true, Ordering::AcqRel) {
        return false;
    }
    let started = api.start_auto_poweron_vms(crate::rtc::now());
    let any = !started.is_empty();
    for start in started {
        match start.task {
            Ok(task) => log::info!(
                "hostdb: starting VM {} ({}): auto_poweron (task {task})",
                start.name_label,
                start.vm
            ),
            Err(e) => log::error!(
                "hostdb: VM {} ({}) has auto_poweron but cannot start: {e:?}",
                start.name_label,
                start.vm
            ),
        }
    }
    any
}

/// After the XenAPI is built: what the host boot did to the restored VMs. The
/// `auto_poweron` ones start once the host is ready ([`start_auto_poweron_when_ready`]).
pub fn after_start(api: &mut XenApi) {
    if let Some(plan) = api.host_boot() {
        if !plan.halted.is_empty() {
            log::info!(
                "hostdb: {} VMs that were running when the host went down are halted",
                plan.halted.len()
            );
        }
        if plan.auto_start_disabled_by_pool {
            log::info!("hostdb: the pool's other_config:auto_poweron=false starts no VM");
        }
    }
    if let Some(plan) = api.host_boot() {
        if !plan.auto_start.is_empty() {
            log::info!(
                "hostdb: {} VMs with auto_poweron start when the host is ready",
                plan.auto_start.len()
            );
        }
    }
}

/// The database VDI as the XenAPI's sink.
struct VdiSink {
    storage: SharedRepositories,
    sr: Uuid,
    vdi: Uuid,
    store: HostDb,
    /// The last save failed (logged once until one succeeds).
    failing: bool,
    /// Successful saves so far (the first, at boot, is logged with its cost).
    saves: u64,
}

impl DatabaseSink for VdiSink {
    fn save(&mut self, database: &Database) -> Result<(), SaveFailed> {
        let started = crate::time::since_entry_ns();
        let saved = {
            let mut repositories = self.storage.borrow_mut();
            match repositories.sr_mut(self.sr) {
                Some(sr) => SrVolume::new(sr, self.vdi)
                    .map_err(HostDbError::Volume)
                    .and_then(|mut volume| self.store.save(&mut volume, database)),
                None => return Err(SaveFailed),
            }
        };
        let micros = crate::time::since_entry_ns().saturating_sub(started) / 1000;
        match saved {
            Ok(report) => {
                if self.failing {
                    log::info!("hostdb: saving works again");
                    self.failing = false;
                }
                self.saves += 1;
                let line = format_args!(
                    "hostdb: saved generation {} ({} bytes, {} objects) in {micros} us",
                    report.generation,
                    report.payload_bytes,
                    database.object_count()
                );
                if self.saves == 1 {
                    log::info!("{line}");
                } else {
                    log::debug!("{line}");
                }
                Ok(())
            }
            Err(e) => {
                if !self.failing {
                    log::error!(
                        "hostdb: cannot save to VDI {} on SR {}: {e:?}; changes are kept in \
                         memory and saved again at the next change",
                        self.vdi,
                        self.sr
                    );
                    self.failing = true;
                }
                Err(SaveFailed)
            }
        }
    }
}
