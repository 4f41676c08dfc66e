//! A fake netfront for netback's host tests: its ring pages (plain test memory viewed as
//! rings, the one unsafe step), its granted data pages and event channels in `FakeXen`,
//! its xenstore nodes in a map. It can be driven correctly or hostilely.

// Test support: a panic here is a failed test. Each test binary uses part of it.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_arguments
)]

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use keel_netback::wire::{
    txf, ExtraInfo, RxRequest, RxResponse, RxSlot, TxRequest, TxResponse, TxRspSlot, TxSlot,
};
use keel_netback::{
    Config, CopyBuffer, Env, FramePort, Full, NetStore, Netback, RateLimit, RingFrames, StoreError,
    XenbusState,
};
use keel_xen::evtchn::Port;
use keel_xen::fake::{FakeXen, FOREIGN_FRAME_BASE};
use keel_xen::grant_table::{gtf, GrantRef};
use keel_xen::ring::{FrontRing, SharedRing, SringHeader};

pub const FE: u16 = 5;
/// Another guest, whose pages must never be touched.
pub const OTHER: u16 = 9;
pub const PAGE: usize = 4096;
/// Our copy buffer's frames.
pub const BUFFER_GFN: u64 = 0x5000;

#[derive(Default)]
pub struct MapStore(pub BTreeMap<String, Vec<u8>>);

impl NetStore for MapStore {
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.get(path).cloned())
    }
    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), StoreError> {
        self.0.insert(path.into(), value.to_vec());
        Ok(())
    }
}

impl MapStore {
    pub fn put(&mut self, path: &str, value: &str) {
        self.0.insert(path.into(), value.as_bytes().to_vec());
    }
    pub fn get(&self, path: &str) -> Option<String> {
        self.0
            .get(path)
            .map(|v| String::from_utf8(v.clone()).unwrap())
    }
}

#[repr(C, align(4096))]
pub struct Page(pub [u8; PAGE]);

/// Leaks a zeroed, page-aligned page (tests are short-lived).
fn leak_page() -> *mut u8 {
    Box::leak(Box::new(Page([0; PAGE]))).0.as_mut_ptr()
}

/// Ring frames: hands out dom0 frame numbers and views the frontend's ring pages.
#[derive(Default)]
pub struct FakeRings {
    next: u64,
    pub in_use: BTreeSet<u64>,
    pages: BTreeMap<(u16, u32), usize>,
}

impl FakeRings {
    fn register(&mut self, dom: u16, gref: u32, page: *mut u8) {
        self.pages.insert((dom, gref), page as usize);
    }
    fn page(&self, dom: u16, gref: GrantRef) -> Option<*mut u8> {
        self.pages.get(&(dom, gref.0)).map(|p| *p as *mut u8)
    }
}

impl RingFrames for FakeRings {
    fn allocate(&mut self) -> Option<u64> {
        let gfn = 0x9_0000 + self.next;
        self.next += 1;
        self.in_use.insert(gfn);
        Some(gfn)
    }
    fn free(&mut self, gfn: u64) {
        assert!(self.in_use.remove(&gfn), "freeing frame {gfn:#x} twice");
    }
    fn tx_ring(
        &mut self,
        _gfn: u64,
        domid: u16,
        gref: GrantRef,
    ) -> Option<SharedRing<'static, TxSlot, TxRspSlot>> {
        let page = self.page(domid, gref)?;
        // SAFETY: the page is leaked (lives forever) and is only touched through rings.
        unsafe { SharedRing::from_raw(page, PAGE) }.ok()
    }
    fn rx_ring(
        &mut self,
        _gfn: u64,
        domid: u16,
        gref: GrantRef,
    ) -> Option<SharedRing<'static, RxSlot, RxSlot>> {
        let page = self.page(domid, gref)?;
        // SAFETY: as above.
        unsafe { SharedRing::from_raw(page, PAGE) }.ok()
    }
}

/// The copy buffer: our local frames in FakeXen.
pub struct FakeBuffer(pub Rc<FakeXen>);

impl CopyBuffer for FakeBuffer {
    fn gfn(&self, page: usize) -> u64 {
        // The kernel's buffer has exactly this many pages.
        assert!(
            page < keel_netback::BUFFER_PAGES,
            "page {page} beyond the buffer"
        );
        BUFFER_GFN + page as u64
    }
    fn read(&self, page: usize, offset: usize, out: &mut [u8]) {
        assert!(offset + out.len() <= PAGE, "read crosses page {page}");
        out.copy_from_slice(&self.0.read_local(self.gfn(page), offset, out.len()));
    }
    fn write(&mut self, page: usize, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= PAGE, "write crosses page {page}");
        self.0.write_local(self.gfn(page), offset, data);
    }
}

/// The switch side: collects frames, refuses beyond `capacity`.
#[derive(Default)]
pub struct Switch {
    pub frames: Vec<Vec<u8>>,
    pub capacity: Option<usize>,
}

impl FramePort for Switch {
    fn deliver(&mut self, frame: &[u8]) -> Result<(), Full> {
        if self.capacity.is_some_and(|c| self.frames.len() >= c) {
            return Err(Full);
        }
        self.frames.push(frame.to_vec());
        Ok(())
    }
}

pub struct World {
    pub fx: Rc<FakeXen>,
    pub store: MapStore,
    pub rings: FakeRings,
    pub buffer: FakeBuffer,
}

impl World {
    pub fn new() -> Self {
        let fx = Rc::new(FakeXen::new());
        // Another guest grants dom0 a page: a hostile frontend naming its grant must not
        // reach it.
        fx.add_foreign_grant(OTHER, GrantRef(50), 0, gtf::PERMIT_ACCESS, OTHER_FRAME);
        fx.write_foreign_frame(OTHER_FRAME, 0, &[0xAB; PAGE]);
        World {
            buffer: FakeBuffer(fx.clone()),
            fx,
            store: MapStore::default(),
            rings: FakeRings::default(),
        }
    }

    pub fn env(&mut self) -> Env<'_, FakeXen, MapStore, FakeRings, FakeBuffer> {
        Env {
            hv: &*self.fx,
            store: &mut self.store,
            rings: &mut self.rings,
            buffer: &mut self.buffer,
        }
    }

    /// The other guest's page is exactly as it granted it.
    pub fn other_guest_untouched(&self) -> bool {
        self.fx.read_foreign_frame(OTHER_FRAME, 0, PAGE) == vec![0xAB; PAGE]
    }
}

pub const OTHER_FRAME: u64 = FOREIGN_FRAME_BASE + 0xF000;

/// One queue of the fake netfront.
pub struct FrontQueue {
    pub tx: FrontRing<'static, TxSlot, TxRspSlot>,
    pub rx: FrontRing<'static, RxSlot, RxSlot>,
    pub tx_header: &'static SringHeader,
    pub rx_header: &'static SringHeader,
    pub tx_ref: u32,
    pub rx_ref: u32,
    /// Our (the frontend's) ends of the channels: (tx, rx); equal when not split.
    pub ports: (Port, Port),
}

pub struct Frontend {
    pub queues: Vec<FrontQueue>,
    next_gref: u32,
    next_frame: u64,
    next_id: u16,
    /// Posted rx buffers: id → (gref, frame).
    pub rx_buffers: BTreeMap<u16, (u32, u64)>,
}

pub struct Options {
    pub queues: u32,
    pub split: bool,
    pub sg: bool,
    pub gso: bool,
    pub max_queues: u16,
    pub rate: Option<RateLimit>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            queues: 1,
            split: false,
            sg: true,
            gso: true,
            max_queues: 4,
            rate: None,
        }
    }
}

impl Frontend {
    /// Grants a fresh frame of ours to dom0 and returns `(gref, frame)`.
    pub fn grant_frame(&mut self, w: &World, flags: u16) -> (u32, u64) {
        let gref = self.next_gref;
        self.next_gref += 1;
        let frame = FOREIGN_FRAME_BASE + self.next_frame;
        self.next_frame += 1;
        w.fx.add_foreign_grant(FE, GrantRef(gref), 0, flags, frame);
        (gref, frame)
    }

    pub fn next_id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// Grants ring pages and channels, and writes the frontend's nodes (not its state).
    pub fn setup(w: &mut World, config: &Config, o: &Options) -> Self {
        let mut fe = Frontend {
            queues: Vec::new(),
            next_gref: 8,
            next_frame: 0,
            next_id: 0,
            rx_buffers: BTreeMap::new(),
        };
        let dir = config.frontend_path.clone();
        for n in 0..o.queues {
            let qdir = if o.queues == 1 {
                dir.clone()
            } else {
                format!("{dir}/queue-{n}")
            };
            let (tx_ref, _) = fe.grant_frame(w, gtf::PERMIT_ACCESS);
            let (rx_ref, _) = fe.grant_frame(w, gtf::PERMIT_ACCESS);
            let tx_page = leak_page();
            let rx_page = leak_page();
            w.rings.register(FE, tx_ref, tx_page);
            w.rings.register(FE, rx_ref, rx_page);
            // SAFETY: leaked pages, touched only through rings.
            let tx_shared = unsafe { SharedRing::from_raw(tx_page, PAGE) }.unwrap();
            // SAFETY: as above.
            let rx_shared = unsafe { SharedRing::from_raw(rx_page, PAGE) }.unwrap();
            let tx_header = tx_shared.header();
            let rx_header = rx_shared.header();
            let tx = FrontRing::new(tx_shared);
            let rx = FrontRing::new(rx_shared);
            w.store
                .put(&format!("{qdir}/tx-ring-ref"), &tx_ref.to_string());
            w.store
                .put(&format!("{qdir}/rx-ring-ref"), &rx_ref.to_string());
            let ports = if o.split {
                let t = w.fx.foreign_unbound_port(FE, 0);
                let r = w.fx.foreign_unbound_port(FE, 0);
                w.store
                    .put(&format!("{qdir}/event-channel-tx"), &t.0.to_string());
                w.store
                    .put(&format!("{qdir}/event-channel-rx"), &r.0.to_string());
                (t, r)
            } else {
                let p = w.fx.foreign_unbound_port(FE, 0);
                w.store
                    .put(&format!("{qdir}/event-channel"), &p.0.to_string());
                (p, p)
            };
            fe.queues.push(FrontQueue {
                tx,
                rx,
                tx_header,
                rx_header,
                tx_ref,
                rx_ref,
                ports,
            });
        }
        if o.queues != 1 {
            w.store.put(
                &format!("{dir}/multi-queue-num-queues"),
                &o.queues.to_string(),
            );
        }
        w.store.put(&format!("{dir}/request-rx-copy"), "1");
        w.store.put(&format!("{dir}/feature-rx-notify"), "1");
        w.store
            .put(&format!("{dir}/feature-sg"), if o.sg { "1" } else { "0" });
        for key in ["feature-gso-tcpv4", "feature-gso-tcpv6"] {
            w.store
                .put(&format!("{dir}/{key}"), if o.gso { "1" } else { "0" });
        }
        fe
    }

    /// Sets the frontend's state and tells netback, as the watch would.
    pub fn set_state(w: &mut World, nb: &mut Netback, state: XenbusState) {
        let path = nb.config().frontend_state_path();
        w.store.put(&path, &state.code().to_string());
        nb.on_watch(&mut w.env(), &path, 0);
    }

    /// Puts a packet on queue `q`'s tx ring: `data` in slots of at most `slot` bytes (the
    /// first at `first_offset` in its page), extras after the first. Returns the ids used.
    pub fn send(
        &mut self,
        w: &World,
        q: usize,
        data: &[u8],
        flags: u16,
        extras: &[ExtraInfo],
        slot: usize,
        first_offset: usize,
    ) -> Vec<u16> {
        let mut chunks: Vec<&[u8]> = Vec::new();
        let first_len = data.len().min(slot).min(PAGE - first_offset);
        chunks.push(&data[..first_len]);
        chunks.extend(data[first_len..].chunks(slot));
        let mut ids = Vec::new();
        let mut reqs = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let (gref, frame) = self.grant_frame(w, gtf::PERMIT_ACCESS | gtf::READONLY);
            let offset = if i == 0 { first_offset } else { 0 };
            w.fx.write_foreign_frame(frame, offset, chunk);
            let mut f = if i + 1 < chunks.len() {
                txf::MORE_DATA
            } else {
                0
            };
            if i == 0 {
                f |= flags;
                if !extras.is_empty() {
                    f |= txf::EXTRA_INFO;
                }
            }
            let id = self.next_id();
            ids.push(id);
            reqs.push(TxRequest {
                gref,
                offset: offset as u16,
                flags: f,
                id,
                size: if i == 0 {
                    data.len() as u16
                } else {
                    chunk.len() as u16
                },
            });
        }
        let fq = &mut self.queues[q];
        fq.tx.queue_request(reqs[0].encode()).unwrap();
        for e in extras {
            fq.tx.queue_request(e.encode_tx_slot()).unwrap();
        }
        for r in &reqs[1..] {
            fq.tx.queue_request(r.encode()).unwrap();
        }
        fq.tx.push_requests();
        ids
    }

    /// Queues raw tx requests (hostile shapes) and publishes them.
    pub fn send_raw(&mut self, q: usize, slots: &[TxSlot]) {
        for s in slots {
            self.queues[q].tx.queue_request(*s).unwrap();
        }
        self.queues[q].tx.push_requests();
    }

    pub fn tx_responses(&mut self, q: usize) -> Vec<TxResponse> {
        let mut out = Vec::new();
        while let Some(r) = self.queues[q].tx.take_response().unwrap() {
            out.push(TxResponse::parse(&r));
        }
        out
    }

    /// Posts `n` receive buffers on queue `q` (write-granted pages).
    pub fn post_rx(&mut self, w: &World, q: usize, n: usize) {
        for _ in 0..n {
            let (gref, frame) = self.grant_frame(w, gtf::PERMIT_ACCESS);
            let id = self.next_id();
            self.rx_buffers.insert(id, (gref, frame));
            self.queues[q]
                .rx
                .queue_request(RxRequest { id, gref }.encode())
                .unwrap();
        }
        self.queues[q].rx.push_requests();
    }

    pub fn rx_responses(&mut self, q: usize) -> Vec<RxResponse> {
        let mut out = Vec::new();
        while let Some(r) = self.queues[q].rx.take_response().unwrap() {
            out.push(RxResponse::parse(&r));
        }
        out
    }

    /// Reassembles received packets from responses (data read from the posted pages).
    pub fn received(&self, w: &World, rsps: &[RxResponse]) -> Vec<Vec<u8>> {
        let mut packets = Vec::new();
        let mut cur = Vec::new();
        for r in rsps {
            assert!(r.status > 0, "rx error {r:?}");
            let (_, frame) = self.rx_buffers[&r.id];
            cur.extend(w.fx.read_foreign_frame(frame, usize::from(r.offset), r.status as usize));
            if r.flags & keel_netback::wire::rxf::MORE_DATA == 0 {
                packets.push(std::mem::take(&mut cur));
            }
        }
        packets
    }
}

/// A started and connected netback with its frontend.
pub fn connected(o: Options) -> (World, Netback, Frontend) {
    let mut w = World::new();
    let config = Config {
        rate: o.rate,
        ..Config::new(FE, 0, o.max_queues)
    };
    let mut nb = Netback::new(config.clone());
    nb.start(&mut w.env()).unwrap();
    assert_eq!(nb.state(), XenbusState::InitWait);
    let fe = Frontend::setup(&mut w, &config, &o);
    Frontend::set_state(&mut w, &mut nb, XenbusState::Connected);
    assert_eq!(
        nb.state(),
        XenbusState::Connected,
        "fault: {:?}",
        nb.fault()
    );
    (w, nb, fe)
}

pub fn poll(w: &mut World, nb: &mut Netback, now: u64, sw: &mut Switch) -> keel_netback::Progress {
    nb.poll(&mut w.env(), now, sw)
}

/// Ethernet + IPv4 + TCP carrying `payload`, with a correct IPv4 header checksum and the
/// TCP checksum left as `tcp_csum`.
pub fn tcp4(payload: &[u8], tcp_csum: u16) -> Vec<u8> {
    let mut f = vec![0u8; 54];
    f[0..6].copy_from_slice(&[0x00, 0x16, 0x3e, 0, 0, 2]);
    f[6..12].copy_from_slice(&[0x00, 0x16, 0x3e, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
    f[18..20].copy_from_slice(&0x77u16.to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    let c = keel_netback::packet::internet_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&80u16.to_be_bytes());
    f[38..42].copy_from_slice(&1u32.to_be_bytes());
    f[46] = 5 << 4;
    f[47] = 0x18;
    f[50..52].copy_from_slice(&tcp_csum.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Ethernet + IPv6 + TCP carrying `payload`.
pub fn tcp6(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 74];
    f[12..14].copy_from_slice(&0x86DDu16.to_be_bytes());
    f[14] = 0x60;
    f[18..20].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    f[20] = 6;
    f[21] = 64;
    f[22] = 0xfe;
    f[23] = 0x80;
    f[37] = 1;
    f[38] = 0xfe;
    f[39] = 0x80;
    f[53] = 2;
    f[54..56].copy_from_slice(&40000u16.to_be_bytes());
    f[56..58].copy_from_slice(&22u16.to_be_bytes());
    f[66] = 5 << 4;
    f[67] = 0x10;
    f.extend_from_slice(payload);
    f
}

/// Whether the frame's TCP/UDP checksum is right (recomputing it changes nothing).
pub fn l4_checksum_ok(frame: &[u8]) -> bool {
    let mut copy = frame.to_vec();
    keel_netback::packet::fill_l4_checksum(&mut copy).unwrap();
    copy == frame
}

pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 13 + 7) as u8).collect()
}
