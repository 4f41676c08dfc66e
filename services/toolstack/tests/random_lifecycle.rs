//! Random sequences of calls, guest behaviour, Xen answers and injected failures against
//! many domains. Whatever happens: nothing panics, every domain `start` built ends with
//! exactly one `Destroyed` or `Vanished` event, and once everything is torn down nothing is
//! left in Xen, xenstore, the watch list or the console backend.

// Helpers outside `#[test]` functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;

use common::*;
use keel_toolstack::skeleton::shutdown_path;
use keel_toolstack::*;
use keel_xen::domctl::dominf;
use keel_xen::fake::FakeXen;
use keel_xen::hypercall::HypercallOp;
use keel_xen::XenError;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Counts `event` if it ends a domain, noting a refused release.
fn record_end(event: &Event, built: &mut BTreeMap<u16, u32>, release_failed: &mut Vec<u16>) {
    let (EventKind::Destroyed { problems } | EventKind::Vanished { problems }) = &event.kind else {
        return;
    };
    *built
        .get_mut(&event.domid)
        .expect("an end for a domain never built") += 1;
    if problems
        .iter()
        .any(|p| matches!(p, CleanupProblem::Release(_)))
    {
        release_failed.push(event.domid);
        release_failed.sort_unstable();
    }
}

const STORE_OPS: [&str; 6] = ["write", "mkdir", "set_perms", "introduce", "release", "rm"];

#[test]
fn random_lives_end_cleanly() {
    let mut starts_total = 0;
    for seed in 1..=150u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let xen = FakeXen::new();
        xen.add_domain(0, dominf::RUNNING);
        let mut store = FakeStore::default();
        let mut consoles = FakeConsoles::default();
        let mut toolstack = Toolstack::new(Timeouts::default());
        let next_domid = RefCell::new(1u16);
        let mut now = 0u64;
        // Domains built (start got past the builder) → how many end events they got.
        let mut built: BTreeMap<u16, u32> = BTreeMap::new();
        let mut next_uuid = 0u8;
        // Domains whose end reported that xenstored refused XS_RELEASE (injected).
        let mut release_failed: Vec<u16> = Vec::new();

        for _ in 0..120 {
            now += rng.below(20_000_000_000);
            let live: Vec<u16> = toolstack.domains().map(Domain::domid).collect();
            let pick = |rng: &mut Rng| {
                if live.is_empty() || rng.below(10) == 0 {
                    rng.below(40) as u16
                } else {
                    live[rng.below(live.len() as u64) as usize]
                }
            };
            match rng.below(14) {
                0 | 1 => {
                    if rng.below(4) == 0 {
                        store
                            .fail
                            .insert(STORE_OPS[rng.below(6) as usize], StoreError::NoSpace);
                    }
                    consoles.fail = rng.below(6) == 0;
                    let mut builder = FakeBuilder {
                        xen: &xen,
                        next: RefCell::new(*next_domid.borrow()),
                        fail: rng.below(6) == 0,
                    };
                    next_uuid = next_uuid.wrapping_add(1);
                    let spec = Spec { vcpus: 2, mib: 64 };
                    let request = StartRequest {
                        uuid: [next_uuid; 16],
                        name: "g",
                        spec: &spec,
                        start_paused: rng.below(2) == 0,
                        start_time_unix_ns: now,
                        vcpus_at_startup: 1 + rng.below(2) as u32,
                        xenstore_data: &[],
                        disks: &[],
                    };
                    let control = XenControl(&xen);
                    let mut env = Env {
                        store: &mut store,
                        consoles: &mut consoles,
                        control: &control,
                        disks: &mut NoDiskBackends as &mut dyn DiskBackends,
                    };
                    let _ = toolstack.start(&mut env, &mut builder, &request, now);
                    let after = *builder.next.borrow();
                    if after != *next_domid.borrow() {
                        built.insert(*next_domid.borrow(), 0);
                        *next_domid.borrow_mut() = after;
                    }
                    store.fail.clear();
                    consoles.fail = false;
                }
                2 => {
                    let d = pick(&mut rng);
                    let kind = if rng.below(2) == 0 {
                        ShutdownKind::Poweroff
                    } else {
                        ShutdownKind::Reboot
                    };
                    let control = XenControl(&xen);
                    let mut env = Env {
                        store: &mut store,
                        consoles: &mut consoles,
                        control: &control,
                        disks: &mut NoDiskBackends as &mut dyn DiskBackends,
                    };
                    let _ = toolstack.request_shutdown(&mut env, d, kind, now);
                }
                3 => {
                    // A guest acknowledges (whether or not it was asked).
                    let d = pick(&mut rng);
                    if let Some(value) = store.nodes.get_mut(&shutdown_path(d)) {
                        value.clear();
                        let control = XenControl(&xen);
                        let mut env = Env {
                            store: &mut store,
                            consoles: &mut consoles,
                            control: &control,
                            disks: &mut NoDiskBackends as &mut dyn DiskBackends,
                        };
                        toolstack.on_watch(&mut env, &shutdown_path(d), now);
                    }
                }
                4 => {
                    // A guest shuts down with any reason code.
                    let d = pick(&mut rng);
                    if keel_xen::domctl::domain_info(&xen, d).is_ok() && d != 0 {
                        let code = rng.below(8) as u32;
                        xen.add_domain(d, dominf::SHUTDOWN | (code << dominf::SHUTDOWN_SHIFT));
                    }
                }
                5 => {
                    // Someone else destroys or starts destroying a domain.
                    let d = pick(&mut rng);
                    if d != 0 && keel_xen::domctl::domain_info(&xen, d).is_ok() {
                        if rng.below(2) == 0 {
                            keel_xen::domctl::destroy_domain(&xen, d).unwrap();
                        } else {
                            xen.add_domain(d, dominf::DYING);
                        }
                    }
                }
                6 | 7 => {
                    if rng.below(3) == 0 {
                        xen.fail_next(HypercallOp::Domctl, XenError::EAGAIN);
                    }
                    let d = pick(&mut rng);
                    let control = XenControl(&xen);
                    let mut env = Env {
                        store: &mut store,
                        consoles: &mut consoles,
                        control: &control,
                        disks: &mut NoDiskBackends as &mut dyn DiskBackends,
                    };
                    let _ = toolstack.destroy(&mut env, d, now);
                }
                8 => {
                    let d = pick(&mut rng);
                    let control = XenControl(&xen);
                    let mut env = Env {
                        store: &mut store,
                        consoles: &mut consoles,
                        control: &control,
                        disks: &mut NoDiskBackends as &mut dyn DiskBackends,
                    };
                    let _ = if rng.below(2) == 0 {
                        toolstack.pause(&mut env, d)
                    } else {
                        toolstack.unpause(&mut env, d)
                    };
                }
                9 | 10 => {
                    let control = XenControl(&xen);
                    let mut env = Env {
                        store: &mut store,
                        consoles: &mut consoles,
                        control: &control,
                        disks: &mut NoDiskBackends as &mut dyn DiskBackends,
                    };
                    let _ = toolstack.on_dom_exc(&mut env, now);
                }
                _ => {
                    let control = XenControl(&xen);
                    let mut env = Env {
                        store: &mut store,
                        consoles: &mut consoles,
                        control: &control,
                        disks: &mut NoDiskBackends as &mut dyn DiskBackends,
                    };
                    toolstack.poll(&mut env, now);
                }
            }
            while let Some(event) = toolstack.pop_event() {
                record_end(&event, &mut built, &mut release_failed);
            }
        }

        // Tear everything down and let Xen finish.
        for _ in 0..50 {
            let live: Vec<u16> = toolstack.domains().map(Domain::domid).collect();
            if live.is_empty() {
                break;
            }
            now += 1_000_000_000;
            let control = XenControl(&xen);
            let mut env = Env {
                store: &mut store,
                consoles: &mut consoles,
                control: &control,
                disks: &mut NoDiskBackends as &mut dyn DiskBackends,
            };
            for d in live {
                toolstack.destroy(&mut env, d, now).unwrap();
            }
            toolstack.poll(&mut env, now);
            while let Some(event) = toolstack.pop_event() {
                record_end(&event, &mut built, &mut release_failed);
            }
        }
        // A domain marked dying by "someone else" is never finished by Xen in this model
        // unless destroyed: finish those the way Xen would.
        for d in xen.domain_ids() {
            if d != 0 {
                keel_xen::domctl::destroy_domain(&xen, d).unwrap();
            }
        }
        let control = XenControl(&xen);
        let mut env = Env {
            store: &mut store,
            consoles: &mut consoles,
            control: &control,
            disks: &mut NoDiskBackends as &mut dyn DiskBackends,
        };
        toolstack.poll(&mut env, now + 10_000_000_000);
        while let Some(event) = toolstack.pop_event() {
            record_end(&event, &mut built, &mut release_failed);
        }

        assert_eq!(toolstack.domains().count(), 0, "seed {seed}");
        for (d, ends) in &built {
            assert_eq!(*ends, 1, "seed {seed}: domain {d} ended {ends} times");
        }
        assert_eq!(xen.domain_ids(), [0], "seed {seed}");
        let leftovers: Vec<&String> = store
            .nodes
            .keys()
            .filter(|p| p.starts_with("/local/domain/") || p.starts_with("/vm/"))
            .filter(|p| p.matches('/').count() > 2)
            .collect();
        assert!(leftovers.is_empty(), "seed {seed}: {leftovers:?}");
        assert!(store.watches.is_empty(), "seed {seed}: {:?}", store.watches);
        let introduced: Vec<u16> = store.introduced.keys().copied().collect();
        assert_eq!(introduced, release_failed, "seed {seed}");
        assert!(consoles.attached.is_empty(), "seed {seed}");
        starts_total += built.len();
    }
    assert!(starts_total > 500, "{starts_total}");
}
