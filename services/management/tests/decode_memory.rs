//! How much heap decoding and answering an API call takes, against the bound the server charges
//! to its memory budget for it (`keel_management::DECODE_BYTES_PER_BODY_BYTE`): measured with a
//! counting allocator on bodies built to make the decoders allocate the most per byte.

// A panic in a test is a failed test; this test crate's helpers may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use keel_management::DECODE_BYTES_PER_BODY_BYTE;
use keel_xenapi::{
    hash_password, Config, Endpoint, Entropy, HashCost, HostFacts, Timestamp, XenApi,
};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

struct Fixed(u64);
impl Entropy for Fixed {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1);
            *b = (self.0 >> 33) as u8;
        }
    }
}

/// Peak heap growth while `api` handles `body`.
fn peak_while_handling(api: &mut XenApi, endpoint: Endpoint, body: &[u8]) -> usize {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let handled = api.handle(endpoint, body, Timestamp::from_unix_secs(1_800_000_000));
    drop(handled);
    PEAK.load(Ordering::Relaxed) - before
}

fn repeated(prefix: &str, item: &str, separator: &str, suffix: &str, size: usize) -> Vec<u8> {
    let mut s = String::from(prefix);
    while s.len() + item.len() + separator.len() + suffix.len() < size {
        s.push_str(item);
        s.push_str(separator);
    }
    s.push_str(item);
    s.push_str(suffix);
    s.into_bytes()
}

#[test]
fn decoding_stays_within_the_charged_bound_for_hostile_bodies() {
    let phc = hash_password(b"pw", b"test-salt-16byte", HashCost::TEST_ONLY).unwrap();
    let mut api = XenApi::new(
        Config::new(phc, HostFacts::default()),
        Box::new(Fixed(1)),
        Timestamp::from_unix_secs(1_800_000_000),
    )
    .unwrap();
    // Sizes off the powers of two too: vectors grow by doubling, so the ratio varies.
    for size in [4, 10, 24, 40, 70, 100, 170, 300, 520, 700, 1024].map(|k| k * 1024) {
        check_bodies(&mut api, size);
    }
}

fn check_bodies(api: &mut XenApi, size: usize) {
    let bodies: Vec<(&str, Endpoint, Vec<u8>)> = vec![
        (
            "JSON array of zeros",
            Endpoint::JsonRpc,
            repeated(
                r#"{"jsonrpc":"2.0","id":1,"method":"session.login_with_password","params":[["#,
                "0",
                ",",
                "]]}",
                size,
            ),
        ),
        ("JSON object of one-letter keys", Endpoint::JsonRpc, {
            let mut s = String::from(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":[{"#);
            let mut i = 0u32;
            while s.len() < size {
                s.push_str(&format!("\"{i:x}\":0,"));
                i += 1;
            }
            s.push_str("\"end\":0}]}");
            s.into_bytes()
        }),
        (
            "XML-RPC array of empty values",
            Endpoint::XmlRpc,
            repeated(
                "<methodCall><methodName>x</methodName><params><param><value><array><data>",
                "<value/>",
                "",
                "</data></array></value></param></params></methodCall>",
                size,
            ),
        ),
        (
            "XML-RPC elements without content",
            Endpoint::XmlRpc,
            repeated(
                "<methodCall><methodName>x</methodName><params>",
                "<a/>",
                "",
                "</params></methodCall>",
                size,
            ),
        ),
    ];
    for (name, endpoint, body) in bodies {
        let peak = peak_while_handling(api, endpoint, &body);
        let bound = body.len() * DECODE_BYTES_PER_BODY_BYTE;
        eprintln!(
            "{name}: {} KiB body, peak {} KiB ({:.1} bytes per body byte)",
            body.len() >> 10,
            peak >> 10,
            peak as f64 / body.len() as f64
        );
        assert!(peak <= bound, "{name}: peak {peak} > bound {bound}");
    }
}
