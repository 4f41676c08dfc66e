//! The toolstack against fakes of everything it drives: a xenstore that records nodes,
//! permissions, watches and introductions, a builder that creates paused domains in
//! `FakeXen`, a console backend that records attachments, and the real domctl wrappers
//! over `FakeXen`.

// Helpers outside `#[test]` functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;

mod common;

use common::*;
use keel_toolstack::skeleton::{domain_path, shutdown_path, vm_path};
use keel_toolstack::*;
use keel_xen::control::ControlError;
use keel_xen::domctl::dominf;
use keel_xen::fake::FakeXen;
use keel_xen::hypercall::HypercallOp;
use keel_xen::XenError;

const SEC: u64 = 1_000_000_000;

struct Rig {
    xen: FakeXen,
    store: FakeStore,
    consoles: FakeConsoles,
    toolstack: Toolstack,
    vcpus_at_startup: u32,
    xenstore_data: Vec<(String, String)>,
}

const UUID: [u8; 16] = [0xab; 16];
const VM: &str = "/vm/abababab-abab-abab-abab-abababababab";

impl Rig {
    fn new() -> Self {
        let xen = FakeXen::new();
        xen.add_domain(0, dominf::RUNNING);
        Rig {
            xen,
            store: FakeStore::default(),
            consoles: FakeConsoles::default(),
            toolstack: Toolstack::new(Timeouts::default()),
            vcpus_at_startup: 2,
            xenstore_data: Vec::new(),
        }
    }

    /// Runs `f` with the toolstack and an `Env` over the fakes.
    fn with<R>(
        &mut self,
        f: impl FnOnce(
            &mut Toolstack,
            &mut Env<'_, FakeStore, FakeConsoles, XenControl<'_, FakeXen>>,
        ) -> R,
    ) -> R {
        let control = XenControl(&self.xen);
        let mut env = Env {
            store: &mut self.store,
            consoles: &mut self.consoles,
            control: &control,
            disks: &mut NoDiskBackends as &mut dyn DiskBackends,
        };
        f(&mut self.toolstack, &mut env)
    }

    fn start_with(
        &mut self,
        paused: bool,
        fail_build: bool,
    ) -> Result<u16, StartError<OutOfGuestMemory, ConsoleMapFailed>> {
        // The builder and the env both borrow the one FakeXen immutably.
        let xen = &self.xen;
        let mut builder = FakeBuilder {
            xen,
            next: RefCell::new(5),
            fail: fail_build,
        };
        let spec = Spec { vcpus: 2, mib: 256 };
        let request = StartRequest {
            uuid: UUID,
            name: "web",
            spec: &spec,
            start_paused: paused,
            start_time_unix_ns: 1_700_000_000 * SEC,
            vcpus_at_startup: self.vcpus_at_startup,
            xenstore_data: &self.xenstore_data,
            disks: &[],
        };
        let control = XenControl(xen);
        let mut env = Env {
            store: &mut self.store,
            consoles: &mut self.consoles,
            control: &control,
            disks: &mut NoDiskBackends as &mut dyn DiskBackends,
        };
        self.toolstack.start(&mut env, &mut builder, &request, 0)
    }

    fn start(&mut self) -> u16 {
        self.start_with(false, false).unwrap()
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.toolstack.pop_event()).collect()
    }

    fn flags(&self, domid: u16) -> Option<u32> {
        keel_xen::domctl::domain_info(&self.xen, domid)
            .ok()
            .map(|i| i.flags)
    }

    fn guest_shuts_down(&self, domid: u16, code: u32) {
        self.xen
            .add_domain(domid, dominf::SHUTDOWN | (code << dominf::SHUTDOWN_SHIFT));
    }
}

fn event(domid: u16, kind: EventKind) -> Event {
    Event {
        domid,
        uuid: UUID,
        kind,
    }
}

#[test]
fn start_writes_the_skeleton_introduces_attaches_and_unpauses() {
    let mut rig = Rig::new();
    let d = rig.start();
    assert_eq!(d, 5);
    let s = &rig.store;
    assert_eq!(s.value("/local/domain/5/vm"), Some(VM));
    assert_eq!(s.value("/local/domain/5/name"), Some("web"));
    assert_eq!(s.value("/local/domain/5/domid"), Some("5"));
    assert_eq!(s.value("/local/domain/5/memory/static-max"), Some("262144"));
    assert_eq!(s.value("/local/domain/5/memory/target"), Some("262144"));
    assert_eq!(
        s.value("/local/domain/5/cpu/1/availability"),
        Some("online")
    );
    assert_eq!(s.value("/local/domain/5/store/port"), Some("15"));
    assert_eq!(s.value("/local/domain/5/store/ring-ref"), Some("1044476"));
    assert_eq!(s.value("/local/domain/5/console/port"), Some("25"));
    assert_eq!(s.value("/local/domain/5/console/ring-ref"), Some("1044479"));
    assert_eq!(s.value("/local/domain/5/control/shutdown"), Some(""));
    assert_eq!(s.value(&format!("{VM}/start_time")), Some("1700000000.00"));
    assert_eq!(
        s.perms.get("/local/domain/5").unwrap(),
        &[Perm::new(0, Access::None), Perm::new(5, Access::Read)]
    );
    assert_eq!(
        s.perms.get("/local/domain/5/control/shutdown").unwrap(),
        &[Perm::new(5, Access::None)]
    );
    assert_eq!(s.introduced.get(&5), Some(&(0xfeffc, 15)));
    assert_eq!(rig.consoles.attached.get(&5), Some(&(25, 0xfefff)));
    assert_eq!(rig.flags(5).unwrap() & dominf::PAUSED, 0);
    let dom = rig.toolstack.domain(5).unwrap();
    assert!(!dom.paused());
    assert_eq!(dom.phase(), Phase::Active);
    assert_eq!(dom.name(), "web");
    assert_eq!(rig.toolstack.find_by_uuid(&UUID), Some(5));
    assert_eq!(rig.events(), []);
    assert_eq!(rig.toolstack.next_deadline(), None);
}

#[test]
fn start_paused_then_unpause_and_pause() {
    let mut rig = Rig::new();
    let d = rig.start_with(true, false).unwrap();
    assert_ne!(rig.flags(d).unwrap() & dominf::PAUSED, 0);
    assert!(rig.toolstack.domain(d).unwrap().paused());
    rig.with(|t, env| t.unpause(env, d)).unwrap();
    assert_eq!(rig.flags(d).unwrap() & dominf::PAUSED, 0);
    rig.with(|t, env| t.pause(env, d)).unwrap();
    assert_ne!(rig.flags(d).unwrap() & dominf::PAUSED, 0);
    assert!(rig.toolstack.domain(d).unwrap().paused());
    // A paused guest cannot acknowledge a shutdown request.
    assert_eq!(
        rig.with(|t, env| t.request_shutdown(env, d, ShutdownKind::Poweroff, 0)),
        Err(LifecycleError::State(StateError::Paused))
    );
    assert_eq!(
        rig.with(|t, env| t.pause(env, 99)),
        Err(LifecycleError::NoSuchDomain(99))
    );
}

#[test]
fn a_failed_build_leaves_nothing() {
    let mut rig = Rig::new();
    assert_eq!(
        rig.start_with(false, true),
        Err(StartError::Build(OutOfGuestMemory))
    );
    assert!(rig.store.nodes.is_empty());
    assert_eq!(rig.toolstack.domains().count(), 0);
    assert_eq!(rig.events(), []);
}

#[test]
fn a_failed_console_attach_tears_everything_down() {
    let mut rig = Rig::new();
    rig.consoles.fail = true;
    assert_eq!(
        rig.start_with(false, false),
        Err(StartError::Console {
            domid: 5,
            error: ConsoleMapFailed
        })
    );
    assert!(rig.store.under("/local/domain/5").is_empty());
    assert!(rig.store.under(VM).is_empty());
    assert_eq!(rig.store.released, [5]);
    assert_eq!(rig.flags(5), None, "the domain was destroyed");
    assert_eq!(
        rig.events(),
        [event(5, EventKind::Destroyed { problems: vec![] })]
    );
    assert_eq!(rig.toolstack.domains().count(), 0);
}

#[test]
fn a_failed_skeleton_write_tears_down_without_introduction() {
    let mut rig = Rig::new();
    rig.store.fail.insert("set_perms", StoreError::NoSpace);
    assert_eq!(
        rig.start_with(false, false),
        Err(StartError::Store {
            domid: 5,
            error: StoreError::NoSpace
        })
    );
    // Never introduced, so nothing to release and no problem reported for it.
    assert!(rig.store.released.is_empty());
    assert!(rig
        .store
        .nodes
        .keys()
        .all(|p| !p.starts_with("/local/domain/5")));
    assert_eq!(rig.flags(5), None);
    assert_eq!(
        rig.events(),
        [event(5, EventKind::Destroyed { problems: vec![] })]
    );
}

#[test]
fn clean_poweroff_acknowledged_exited_and_destroyed() {
    let mut rig = Rig::new();
    let d = rig.start();
    rig.with(|t, env| t.request_shutdown(env, d, ShutdownKind::Poweroff, 10 * SEC))
        .unwrap();
    let path = shutdown_path(d);
    assert_eq!(rig.store.value(&path), Some("poweroff"));
    assert!(rig
        .store
        .watches
        .contains(&(path.clone(), WATCH_TOKEN.to_string())));
    assert_eq!(rig.toolstack.next_deadline(), Some(70 * SEC));
    // xenstored fires a new watch at once: not yet acknowledged.
    rig.with(|t, env| t.on_watch(env, &path, 10 * SEC));
    assert_eq!(rig.events(), []);
    // A second request while one is pending is refused.
    assert!(matches!(
        rig.with(|t, env| t.request_shutdown(env, d, ShutdownKind::Reboot, 11 * SEC)),
        Err(LifecycleError::State(StateError::WrongPhase(_)))
    ));

    // Linux acknowledges by writing "" and then shuts down.
    rig.store.nodes.insert(path.clone(), Vec::new());
    rig.with(|t, env| t.on_watch(env, &path, 12 * SEC));
    assert_eq!(
        rig.events(),
        [event(
            d,
            EventKind::ShutdownAcknowledged(ShutdownKind::Poweroff)
        )]
    );
    assert!(rig.store.watches.is_empty());
    rig.guest_shuts_down(d, 0);
    rig.with(|t, env| t.on_dom_exc(env, 13 * SEC)).unwrap();
    assert_eq!(
        rig.events(),
        [event(d, EventKind::Exited(ExitReason::Poweroff))]
    );
    assert_eq!(rig.toolstack.next_deadline(), None);
    // Reported once, however many times VIRQ_DOM_EXC fires.
    rig.with(|t, env| t.on_dom_exc(env, 14 * SEC)).unwrap();
    assert_eq!(rig.events(), []);

    // The caller applies actions_after_shutdown = destroy.
    rig.with(|t, env| t.destroy(env, d, 15 * SEC)).unwrap();
    assert_eq!(
        rig.events(),
        [event(d, EventKind::Destroyed { problems: vec![] })]
    );
    assert_eq!(rig.flags(d), None);
    assert!(rig.store.under(&domain_path(d)).is_empty());
    assert!(rig.store.under(&vm_path(&UUID)).is_empty());
    assert_eq!(rig.consoles.detached, [d]);
    assert_eq!(rig.store.released, [d]);
    assert!(rig.toolstack.domain(d).is_none());
}

#[test]
fn acknowledgement_is_seen_by_poll_without_a_watch_event() {
    let mut rig = Rig::new();
    let d = rig.start();
    rig.with(|t, env| t.request_shutdown(env, d, ShutdownKind::Reboot, 0))
        .unwrap();
    rig.store.nodes.remove(&shutdown_path(d));
    rig.with(|t, env| t.poll(env, SEC));
    assert_eq!(
        rig.events(),
        [event(
            d,
            EventKind::ShutdownAcknowledged(ShutdownKind::Reboot)
        )]
    );
    rig.guest_shuts_down(d, 1);
    rig.with(|t, env| t.on_dom_exc(env, 2 * SEC)).unwrap();
    assert_eq!(
        rig.events(),
        [event(d, EventKind::Exited(ExitReason::Reboot))]
    );
}

#[test]
fn an_unacknowledged_request_is_reported_not_forced() {
    let mut rig = Rig::new();
    let d = rig.start();
    rig.with(|t, env| t.request_shutdown(env, d, ShutdownKind::Poweroff, 0))
        .unwrap();
    rig.with(|t, env| t.poll(env, 59 * SEC));
    assert_eq!(rig.events(), []);
    rig.with(|t, env| t.poll(env, 60 * SEC));
    assert_eq!(
        rig.events(),
        [event(
            d,
            EventKind::ShutdownFailed(ShutdownKind::Poweroff, ShutdownFailure::NotAcknowledged)
        )]
    );
    // No silent hard stop: the domain still runs, and may be asked again or destroyed.
    assert_eq!(
        rig.flags(d).unwrap() & (dominf::SHUTDOWN | dominf::DYING),
        0
    );
    assert_eq!(rig.toolstack.domain(d).unwrap().phase(), Phase::Active);
    assert!(rig.store.watches.is_empty());
    rig.with(|t, env| t.request_shutdown(env, d, ShutdownKind::Poweroff, 61 * SEC))
        .unwrap();
}

#[test]
fn an_acknowledged_shutdown_that_never_completes_is_reported() {
    let mut rig = Rig::new();
    let d = rig.start();
    rig.with(|t, env| t.request_shutdown(env, d, ShutdownKind::Poweroff, 0))
        .unwrap();
    rig.store.nodes.insert(shutdown_path(d), Vec::new());
    rig.with(|t, env| t.poll(env, SEC));
    rig.events();
    let deadline = rig.toolstack.next_deadline().unwrap();
    assert_eq!(deadline, SEC + Timeouts::default().shutdown_complete_ns);
    rig.with(|t, env| t.poll(env, deadline));
    assert_eq!(
        rig.events(),
        [event(
            d,
            EventKind::ShutdownFailed(ShutdownKind::Poweroff, ShutdownFailure::NotCompleted)
        )]
    );
}

#[test]
fn crashes_and_other_exit_reasons_are_reported() {
    let reasons = [
        (2, ExitReason::Suspend),
        (3, ExitReason::Crash),
        (4, ExitReason::Watchdog),
        (5, ExitReason::SoftReset),
        (77, ExitReason::Unknown(77)),
    ];
    for (code, reason) in reasons {
        let mut rig = Rig::new();
        let d = rig.start();
        rig.guest_shuts_down(d, code);
        rig.with(|t, env| t.on_dom_exc(env, 0)).unwrap();
        assert_eq!(rig.events(), [event(d, EventKind::Exited(reason))]);
        assert_eq!(
            rig.toolstack.domain(d).unwrap().phase(),
            Phase::Exited(reason)
        );
    }
}

#[test]
fn a_domain_destroyed_by_someone_else_is_cleaned_up_despite_the_next_domain_quirk() {
    let mut rig = Rig::new();
    let d = rig.start();
    // Another domain right after ours, running; Xen 4.17's getdomaininfo for `d` would
    // answer with it once `d` is gone.
    rig.xen.add_domain(d + 1, dominf::RUNNING);
    keel_xen::domctl::destroy_domain(&rig.xen, d).unwrap();
    rig.with(|t, env| t.on_dom_exc(env, 0)).unwrap();
    assert_eq!(
        rig.events(),
        [event(d, EventKind::Vanished { problems: vec![] })]
    );
    assert!(rig.store.under(&domain_path(d)).is_empty());
    assert_eq!(rig.consoles.detached, [d]);
    assert!(rig.flags(d + 1).is_some(), "the neighbour was not touched");
}

#[test]
fn a_dying_domain_is_followed_until_gone() {
    let mut rig = Rig::new();
    let d = rig.start();
    rig.xen.add_domain(d, dominf::DYING);
    rig.with(|t, env| t.on_dom_exc(env, 0)).unwrap();
    assert_eq!(rig.events(), []);
    assert!(matches!(
        rig.toolstack.domain(d).unwrap().phase(),
        Phase::Destroying {
            requested: false,
            ..
        }
    ));
    // We did not ask, so we do not destroy; we look again later.
    rig.with(|t, env| t.poll(env, SEC));
    assert!(rig.flags(d).is_some());
    keel_xen::domctl::destroy_domain(&rig.xen, d).unwrap();
    rig.with(|t, env| t.poll(env, 2 * SEC));
    assert_eq!(
        rig.events(),
        [event(d, EventKind::Vanished { problems: vec![] })]
    );
}

#[test]
fn destroy_retries_while_xen_asks_for_more_time() {
    let mut rig = Rig::new();
    let d = rig.start();
    rig.xen.fail_next(HypercallOp::Domctl, XenError::EAGAIN);
    rig.with(|t, env| t.destroy(env, d, 0)).unwrap();
    assert_eq!(rig.events(), []);
    assert!(rig.flags(d).is_some());
    let retry = rig.toolstack.next_deadline().unwrap();
    assert_eq!(retry, Timeouts::default().destroy_retry_ns);
    // Destroying twice is harmless.
    rig.with(|t, env| t.destroy(env, d, 1)).unwrap();
    rig.with(|t, env| t.poll(env, retry - 1));
    assert_eq!(rig.events(), []);
    rig.with(|t, env| t.poll(env, retry));
    assert_eq!(
        rig.events(),
        [event(d, EventKind::Destroyed { problems: vec![] })]
    );
    assert_eq!(rig.flags(d), None);
}

#[test]
fn cleanup_problems_are_reported_and_do_not_stop_teardown() {
    let mut rig = Rig::new();
    let d = rig.start();
    rig.store
        .fail
        .insert("release", StoreError::Other("EIO".into()));
    rig.xen.fail_next(HypercallOp::Domctl, XenError::EPERM);
    rig.with(|t, env| t.destroy(env, d, 0)).unwrap();
    assert_eq!(rig.events(), []);
    assert!(rig.store.under(&domain_path(d)).is_empty());
    let retry = rig.toolstack.next_deadline().unwrap();
    rig.with(|t, env| t.poll(env, retry));
    assert_eq!(
        rig.events(),
        [event(
            d,
            EventKind::Destroyed {
                problems: vec![
                    CleanupProblem::Release(StoreError::Other("EIO".into())),
                    CleanupProblem::Destroy(ControlError::Xen(XenError::EPERM)),
                ]
            }
        )]
    );
}

#[test]
fn destroy_during_a_pending_shutdown_request_drops_its_watch() {
    let mut rig = Rig::new();
    let d = rig.start();
    rig.with(|t, env| t.request_shutdown(env, d, ShutdownKind::Poweroff, 0))
        .unwrap();
    rig.with(|t, env| t.destroy(env, d, SEC)).unwrap();
    assert!(rig.store.watches.is_empty());
    assert_eq!(
        rig.events(),
        [event(d, EventKind::Destroyed { problems: vec![] })]
    );
    // Its deadline went with it.
    assert_eq!(rig.toolstack.next_deadline(), None);
    rig.with(|t, env| t.poll(env, 100 * SEC));
    assert_eq!(rig.events(), []);
}

#[test]
fn a_restart_gets_fresh_nodes() {
    let mut rig = Rig::new();
    let first = rig.start();
    rig.guest_shuts_down(first, 1);
    rig.with(|t, env| t.on_dom_exc(env, 0)).unwrap();
    rig.with(|t, env| t.destroy(env, first, 0)).unwrap();
    rig.events();
    // Leftovers under the VM path (from a crashed earlier toolstack) do not survive.
    rig.store.nodes.insert(format!("{VM}/stale"), b"x".to_vec());
    let second = rig.start_with(false, false).unwrap();
    assert_eq!(second, first, "the fake builder reuses ids per rig");
    assert_eq!(rig.store.value(&format!("{VM}/stale")), None);
    assert_eq!(rig.store.value(&format!("{VM}/name")), Some("web"));
}

#[test]
fn xenstore_data_and_vcpus_at_startup_are_written() {
    let mut rig = Rig::new();
    rig.vcpus_at_startup = 1;
    rig.xenstore_data = vec![("vm-data/role".into(), "db".into())];
    let d = rig.start();
    assert_eq!(rig.store.value("/local/domain/5/vm-data/role"), Some("db"));
    assert_eq!(
        rig.store.value("/local/domain/5/cpu/0/availability"),
        Some("online")
    );
    assert_eq!(
        rig.store.value("/local/domain/5/cpu/1/availability"),
        Some("offline")
    );
    rig.with(|t, env| t.set_vcpus_online(env, d, 2)).unwrap();
    assert_eq!(
        rig.store.value("/local/domain/5/cpu/1/availability"),
        Some("online")
    );
    assert_eq!(
        rig.with(|t, env| t.set_vcpus_online(env, d, 3)),
        Err(LifecycleError::VcpusOutOfRange {
            requested: 3,
            max: 2
        })
    );
    assert!(rig.with(|t, env| t.set_vcpus_online(env, d, 0)).is_err());
    rig.with(|t, env| t.set_memory_target(env, d, 131_072))
        .unwrap();
    assert_eq!(
        rig.store.value("/local/domain/5/memory/target"),
        Some("131072")
    );
    assert_eq!(
        rig.with(|t, env| t.set_memory_target(env, d, 262_145)),
        Err(LifecycleError::MemoryTargetTooHigh {
            requested_kib: 262_145,
            static_max_kib: 262_144
        })
    );
}

#[test]
fn bad_requests_are_refused_before_building() {
    let mut rig = Rig::new();
    rig.xenstore_data = vec![("control/shutdown".into(), "poweroff".into())];
    assert!(matches!(
        rig.start_with(false, false),
        Err(StartError::InvalidXenstoreData(_))
    ));
    rig.xenstore_data = vec![("../../0/evil".into(), "x".into())];
    assert!(matches!(
        rig.start_with(false, false),
        Err(StartError::InvalidXenstoreData(_))
    ));
    rig.xenstore_data.clear();
    rig.vcpus_at_startup = 0;
    assert!(matches!(
        rig.start_with(false, false),
        Err(StartError::InvalidVcpusAtStartup { .. })
    ));
    assert!(rig.store.nodes.is_empty());
    assert_eq!(rig.flags(5), None, "nothing was built");
    // More vCPUs online than built is found after building, and torn down.
    rig.vcpus_at_startup = 3;
    assert_eq!(
        rig.start_with(false, false),
        Err(StartError::InvalidVcpusAtStartup {
            requested: 3,
            built: 2
        })
    );
    assert_eq!(rig.flags(5), None);
    assert_eq!(
        rig.events(),
        [event(5, EventKind::Destroyed { problems: vec![] })]
    );
}

#[test]
fn xenstored_hears_about_exits() {
    let mut rig = Rig::new();
    let d = rig.start();
    rig.guest_shuts_down(d, 3);
    rig.with(|t, env| t.on_dom_exc(env, 0)).unwrap();
    rig.with(|t, env| t.on_dom_exc(env, 1)).unwrap();
    assert_eq!(rig.store.exited, [d], "once per exit");
}

#[test]
fn a_vm_runs_at_most_once() {
    let mut rig = Rig::new();
    let d = rig.start();
    assert_eq!(
        rig.start_with(false, false),
        Err(StartError::AlreadyRunning(d))
    );
    assert_eq!(rig.flags(d + 1), None, "nothing was built");
    assert_eq!(rig.store.value(&format!("{VM}/name")), Some("web"));
}

#[test]
fn a_restart_need_not_wait_for_xen_to_finish_the_old_domain() {
    let mut rig = Rig::new();
    let old = rig.start();
    rig.xen.fail_next(HypercallOp::Domctl, XenError::EAGAIN);
    rig.with(|t, env| t.destroy(env, old, 0)).unwrap();
    assert!(rig.flags(old).is_some(), "still being torn down");
    // Xen gives the new domain another id.
    let new = {
        let xen = &rig.xen;
        let mut builder = FakeBuilder {
            xen,
            next: std::cell::RefCell::new(old + 1),
            fail: false,
        };
        let spec = Spec { vcpus: 1, mib: 64 };
        let request = StartRequest {
            uuid: UUID,
            name: "web",
            spec: &spec,
            start_paused: false,
            start_time_unix_ns: 0,
            vcpus_at_startup: 1,
            xenstore_data: &[],
            disks: &[],
        };
        let control = XenControl(xen);
        let mut env = Env {
            store: &mut rig.store,
            consoles: &mut rig.consoles,
            control: &control,
            disks: &mut NoDiskBackends as &mut dyn DiskBackends,
        };
        rig.toolstack
            .start(&mut env, &mut builder, &request, 1)
            .unwrap()
    };
    assert_eq!(rig.toolstack.find_by_uuid(&UUID), Some(new));
    // The old domain finishing does not disturb the new one's nodes.
    let retry = rig.toolstack.next_deadline().unwrap();
    rig.with(|t, env| t.poll(env, retry));
    assert_eq!(
        rig.events(),
        [event(old, EventKind::Destroyed { problems: vec![] })]
    );
    assert_eq!(rig.store.value(&format!("{VM}/name")), Some("web"));
    assert_eq!(
        rig.store.value(&format!("/local/domain/{new}/vm")),
        Some(VM)
    );
}
