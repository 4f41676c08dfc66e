//! The XenAPI's heap per guest: VMs made as `cargo xtask bench guests` makes them (clone of
//! the PVH template, kernel and ramdisk VDIs, args, memory limits, provision, not a
//! template) and started, against the in-memory toolstack and storage, with a counting
//! allocator. What the service holds is what the heap gives back when it is dropped (the
//! fakes are shared with the test and stay); the event history's part is the difference
//! with a history of one event.
//!
//! `cargo test -p keel-xenapi --test guest_memory -- --nocapture` prints the figures
//! (docs/benchmarks.md, "dom0 heap per running guest").

// Test helpers outside #[test] functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod guest_fake;
mod storage_fake;

use common::*;
use guest_fake::FakeGuests;
use keel_heap_count::{held_bytes, CountingAlloc};
use keel_xenapi::handlers::vm_builtin::PVH_TEMPLATE_NAME;
use keel_xenapi::{ApiError, Limits, StorageBackend, Value, XenApi};
use storage_fake::FakeStorage;

/// Counts the bytes each thread holds (other tests of the binary run on other threads).
#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc;

const MIB: u64 = 1 << 20;

struct Host {
    api: XenApi,
    storage: FakeStorage,
    session: String,
    kernel: String,
    ramdisk: String,
}

impl Host {
    fn new(event_history: usize) -> (Host, FakeGuests) {
        let storage = FakeStorage::two_srs(256 * MIB);
        let guests = FakeGuests::with_memory(64 << 30);
        let mut config = config();
        config.storage = Some(Box::new(storage.clone()));
        config.guests = Some(Box::new(guests.clone()));
        config.limits.event_history = event_history;
        let mut api = api_with(config);
        let session = login(&mut api);
        let mut host = Host {
            api,
            storage,
            session,
            kernel: String::new(),
            ramdisk: String::new(),
        };
        host.kernel = host.image_vdi("vmlinuz", b"\x7fELF kernel image for tests");
        host.ramdisk = host.image_vdi("initrd", b"070701 initramfs for tests");
        (host, guests)
    }

    fn call(&mut self, method: &str, args: Vec<Value>) -> Result<Value, ApiError> {
        call_driven(&mut self.api, &self.session, T0, method, args)
    }

    fn ok(&mut self, method: &str, args: Vec<Value>) -> Value {
        self.call(method, args)
            .unwrap_or_else(|e| panic!("{method}: {e:?}"))
    }

    fn image_vdi(&mut self, name: &str, bytes: &[u8]) -> String {
        let size = (bytes.len() as u64).div_ceil(512) * 512;
        let sr = text(&self.ok("SR.get_by_uuid", vec![s("sr-a")])).to_string();
        let record = Value::Struct(
            [
                ("SR".to_string(), s(&sr)),
                ("name_label".to_string(), s(name)),
                ("virtual_size".to_string(), Value::Int(size as i64)),
            ]
            .into_iter()
            .collect(),
        );
        let vdi = text(&self.ok("VDI.create", vec![record])).to_string();
        let uuid = text(&self.ok("VDI.get_uuid", vec![s(&vdi)])).to_string();
        let mut data = bytes.to_vec();
        data.resize(size as usize, 0);
        self.storage.write("sr-a", &uuid, 0, &data).unwrap();
        uuid
    }

    /// `xtask`'s `create_guest`, then `VM.start`.
    fn start_guest(&mut self, name: &str) {
        let found = self.ok("VM.get_by_name_label", vec![s(PVH_TEMPLATE_NAME)]);
        let template = strings(&found)[0].clone();
        let vm = text(&self.ok("VM.clone", vec![s(&template), s(name)])).to_string();
        let (kernel, ramdisk) = (self.kernel.clone(), self.ramdisk.clone());
        self.ok(
            "VM.set_PV_kernel",
            vec![s(&vm), s(&format!("vdi:{kernel}"))],
        );
        self.ok(
            "VM.set_PV_ramdisk",
            vec![s(&vm), s(&format!("vdi:{ramdisk}"))],
        );
        self.ok(
            "VM.set_PV_args",
            vec![s(&vm), s("console=hvc0 quiet loglevel=4 keel_guest=idle")],
        );
        let max = s(&(112 * MIB).to_string());
        self.ok(
            "VM.set_memory_limits",
            vec![
                s(&vm),
                s(&(64 * MIB).to_string()),
                max.clone(),
                max.clone(),
                max,
            ],
        );
        self.ok("VM.provision", vec![s(&vm)]);
        self.ok("VM.set_is_a_template", vec![s(&vm), Value::Bool(false)]);
        self.ok(
            "VM.start",
            vec![s(&vm), Value::Bool(false), Value::Bool(false)],
        );
    }
}

/// Bytes the service holds with `n` guests started (and the fakes kept aside).
fn service_bytes(n: usize, event_history: usize) -> i64 {
    let (mut host, _guests) = Host::new(event_history);
    for i in 0..n {
        host.start_guest(&format!("bench-bg{i}"));
    }
    let storage = host.storage.clone();
    let before = held_bytes();
    drop(host);
    let freed = before - held_bytes();
    drop(storage);
    freed
}

/// (records and the rest, the event history), bytes per guest over `n` guests.
fn per_guest(n: usize) -> (i64, i64) {
    let each = |history| (service_bytes(n, history) - service_bytes(0, history)) / n as i64;
    let without_events = each(1);
    let with_events = each(Limits::default().event_history);
    (without_events, with_events - without_events)
}

/// Making and starting a guest publishes about twenty events, each keeping its object's
/// record; kept encoded (`events::Snapshot`, field names as their index) they cost an
/// eighth of the record trees (135 KB per guest before).
#[test]
fn the_xenapi_keeps_records_and_events_per_guest() {
    let (records, events) = per_guest(8);
    println!("XenAPI heap per guest (8 guests): records {records} B, event history {events} B");
    assert!(records > 0 && events > 0);
    // A record is a vector of its stored fields (11.8 KB per guest as maps keyed by name).
    assert!(records < 9 * 1024, "records: {records} B per guest");
    assert!(events < 20 * 1024, "event history: {events} B per guest");
}
