//! A test frontend: what the toolstack and a guest's blkfront write to xenstore, the
//! guest's ring pages and granted data pages, all against `FakeXen`.

#![allow(dead_code)]

use keel_blkback::fake::{
    FakeFrames, FakeGrantCopy, FrontPages, FrontRing, MemStore, MemTarget, Order,
};
use keel_blkback::wire::{encode, op, Segment};
use keel_blkback::{Blkback, Config, Env, PageWords};
use keel_xen::evtchn::Port;
use keel_xen::fake::{FakeXen, FOREIGN_FRAME_BASE};
use keel_xen::grant_table::{gtf, GrantRef};
use std::rc::Rc;

pub const DOMID: u16 = 5;
pub const DEVID: u32 = 51712;
pub const BE: &str = "/local/domain/0/backend/vbd/5/51712";
pub const FE: &str = "/local/domain/5/device/vbd/51712";

/// Everything a device is served with.
pub struct World {
    pub xen: FakeXen,
    pub front: FrontPages,
    pub store: MemStore,
    pub target: MemTarget,
    pub frames: FakeFrames,
    /// The monotonic clock calls are made at (µs).
    pub now_us: u64,
}

impl World {
    pub fn new(sectors: u64) -> Self {
        let front = FrontPages::default();
        World {
            xen: FakeXen::new(),
            frames: FakeFrames::new(&front),
            front,
            store: MemStore::default(),
            target: MemTarget::disk(sectors),
            now_us: 0,
        }
    }

    /// What the toolstack writes before starting the backend.
    pub fn toolstack(&mut self, mode: &str) {
        let s = &mut self.store;
        s.set(&format!("{BE}/frontend"), FE);
        s.set(&format!("{BE}/frontend-id"), "5");
        s.set(&format!("{BE}/online"), "1");
        s.set(&format!("{BE}/state"), "1");
        s.set(&format!("{BE}/mode"), mode);
        s.set(&format!("{BE}/type"), "phy");
        s.set(&format!("{BE}/params"), "vdi");
        s.set(&format!("{FE}/backend"), BE);
        s.set(&format!("{FE}/backend-id"), "0");
        s.set(&format!("{FE}/state"), "1");
        s.set(&format!("{FE}/virtual-device"), "51712");
    }

    /// A granted data page of the guest (`gref` -> frame 0x20_0000 + gref).
    pub fn data_page(&self, gref: u32, readonly: bool) -> u64 {
        let frame = FOREIGN_FRAME_BASE + 0x10_0000 + u64::from(gref);
        let flags = gtf::PERMIT_ACCESS | if readonly { gtf::READONLY } else { 0 };
        self.xen
            .add_foreign_grant(DOMID, GrantRef(gref), 0, flags, frame);
        frame
    }

    pub fn fill(&self, gref: u32, offset: usize, bytes: &[u8]) {
        let frame = FOREIGN_FRAME_BASE + 0x10_0000 + u64::from(gref);
        self.xen.write_foreign_frame(frame, offset, bytes);
    }

    pub fn page(&self, gref: u32) -> Vec<u8> {
        let frame = FOREIGN_FRAME_BASE + 0x10_0000 + u64::from(gref);
        self.xen.read_foreign_frame(frame, 0, 4096)
    }

    /// A blkfront connecting with `queues` rings of `2^order` pages (`order` None: the
    /// single-page `ring-ref` form). Returns each queue's ring and remote port.
    pub fn blkfront(&mut self, queues: u32, order: Option<u32>) -> Vec<(FrontRing, Port)> {
        let mut out = Vec::new();
        let pages = 1u32 << order.unwrap_or(0);
        for q in 0..queues {
            let dir = if queues == 1 {
                FE.to_string()
            } else {
                format!("{FE}/queue-{q}")
            };
            let mut refs = Vec::new();
            for i in 0..pages {
                let gref = GrantRef(100 + q * 16 + i);
                self.xen.add_foreign_grant(
                    DOMID,
                    gref,
                    0,
                    gtf::PERMIT_ACCESS,
                    FOREIGN_FRAME_BASE + u64::from(gref.0),
                );
                self.front.add(DOMID, gref);
                match order {
                    None => self
                        .store
                        .set(&format!("{dir}/ring-ref"), &gref.0.to_string()),
                    Some(_) => self
                        .store
                        .set(&format!("{dir}/ring-ref{i}"), &gref.0.to_string()),
                }
                refs.push(gref);
            }
            let port = self.xen.foreign_unbound_port(DOMID, 0);
            self.store
                .set(&format!("{dir}/event-channel"), &port.0.to_string());
            out.push((self.front.ring(DOMID, &refs), port));
        }
        if let Some(o) = order {
            self.store
                .set(&format!("{FE}/ring-page-order"), &o.to_string());
        }
        if queues > 1 {
            self.store
                .set(&format!("{FE}/multi-queue-num-queues"), &queues.to_string());
        }
        self.store.set(&format!("{FE}/protocol"), "x86_64-abi");
        self.store.set(&format!("{FE}/state"), "3");
        out
    }

    pub fn be(&self, key: &str) -> Option<String> {
        self.store.get(&format!("{BE}/{key}"))
    }
}

pub type Device = Blkback<Rc<PageWords>>;

pub fn device() -> Device {
    Blkback::new(Config::vbd(DOMID, DEVID)).unwrap()
}

pub fn device_with(f: impl FnOnce(&mut Config)) -> Device {
    let mut c = Config::vbd(DOMID, DEVID);
    f(&mut c);
    Blkback::new(c).unwrap()
}

/// Lends the world to one call.
pub fn with_env<R>(w: &mut World, f: impl FnOnce(&mut Env<'_, FakeXen, FakeFrames>) -> R) -> R {
    let mut grants = FakeGrantCopy::new(&w.xen);
    let mut env = Env {
        hv: &w.xen,
        frames: &mut w.frames,
        store: &mut w.store,
        grants: &mut grants,
        target: &mut w.target,
        now_us: w.now_us,
    };
    f(&mut env)
}

pub fn seg(gref: u32, first: u8, last: u8) -> Segment {
    Segment {
        gref: GrantRef(gref),
        first_sect: first,
        last_sect: last,
    }
}

pub fn read(id: u64, sector: u64, segs: &[Segment]) -> [u8; 112] {
    encode::direct(op::READ, id, sector, 0, segs)
}

pub fn write(id: u64, sector: u64, segs: &[Segment]) -> [u8; 112] {
    encode::direct(op::WRITE, id, sector, 0, segs)
}

pub fn flush(id: u64) -> [u8; 112] {
    encode::direct(op::FLUSH_DISKCACHE, id, 0, 0, &[])
}

impl World {
    pub fn start(&mut self, dev: &mut Device) -> keel_blkback::Progress {
        with_env(self, |env| dev.start(env)).unwrap()
    }

    pub fn watch(&mut self, dev: &mut Device) -> keel_blkback::Progress {
        with_env(self, |env| dev.on_watch(env))
    }

    pub fn poll(&mut self, dev: &mut Device) -> keel_blkback::Progress {
        with_env(self, |env| dev.poll(env))
    }

    /// Polls until the device reports no more work and the target has nothing it could
    /// complete (bounded, so a livelock fails). Returns the rounds taken.
    pub fn settle(&mut self, dev: &mut Device) -> usize {
        for round in 1..=1000 {
            let more = self.poll(dev).more;
            let target_busy = self.target.pending() > 0 && self.target.order != Order::Stalled;
            if !more && !target_busy {
                return round;
            }
        }
        panic!("the device never settled");
    }

    /// Toolstack + handshake up to Connected with one single-page ring.
    pub fn connected(&mut self, dev: &mut Device) -> FrontRing {
        self.toolstack("w");
        self.start(dev);
        let mut rings = self.blkfront(1, None);
        self.watch(dev);
        assert_eq!(dev.state(), keel_blkback::XenbusState::Connected);
        rings.remove(0).0
    }

    pub fn set_fe_state(&mut self, state: u32) {
        self.store.set(&format!("{FE}/state"), &state.to_string());
    }
}
