//! Deterministic random garbage from a guest, at the byte level (its ring) and at the
//! message level (well-framed requests with random types, ids and payloads): xenstored
//! never panics, its accounting stays exact, and other guests and Keel are unaffected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use common::{store_with_guests, Guest};
use keel_xen::xenstore_ring::XenstoreDomainInterface;
use keel_xen::xenstore_wire::{XsMessage, XsType};
use keel_xenstored::{prepare, HandleError, Xenstored};

/// xorshift64*: reproducible without a dependency.
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

fn assert_accounting_exact(xs: &Xenstored) {
    let mut counts: BTreeMap<u16, (usize, usize)> = BTreeMap::new();
    for (path, node) in xs.tree().iter() {
        let e = counts.entry(node.perms.owner()).or_default();
        e.0 += 1;
        e.1 += node.memory(path);
    }
    for (owner, (n, bytes)) in counts {
        let u = xs.tree().usage(owner);
        assert_eq!((u.nodes, u.bytes), (n, bytes), "owner {owner}");
    }
}

fn guest2_and_dom0_fine(xs: &mut Xenstored, tool: keel_xenstored::LocalClient) {
    let mut g2 = Guest::new(2);
    assert_eq!(g2.read(xs, "name").unwrap(), b"guest2");
    g2.write(xs, "data/alive", b"1").unwrap();
    assert_eq!(
        xs.read(tool, 0, "/local/domain/2/data/alive").unwrap(),
        b"1"
    );
}

#[test]
fn random_ring_bytes() {
    let (mut cuts, mut survivors, mut bytes_back) = (0, 0, 0usize);
    for seed in 1..=40u64 {
        let (mut xs, tool) = store_with_guests(2);
        let page = Box::new(XenstoreDomainInterface::zeroed());
        prepare(&*page);
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut cut = false;
        for _ in 0..200 {
            // Mostly plausible headers with random fields, sometimes pure noise.
            let mut chunk = Vec::new();
            if rng.below(400) > 0 {
                let kind = rng.below(25) as u32;
                let len = if rng.below(150) == 0 {
                    rng.below(10_000)
                } else {
                    rng.below(64)
                } as u32;
                for w in [kind, rng.next() as u32, rng.below(4) as u32, len] {
                    chunk.extend_from_slice(&w.to_ne_bytes());
                }
                for _ in 0..len.min(64) {
                    chunk.push(b"/ab0\0@-_xyz"[rng.below(11) as usize]);
                }
            } else {
                for _ in 0..rng.below(100) {
                    chunk.push(rng.next() as u8);
                }
            }
            if rng.below(1000) == 0 {
                page.req_prod.store(rng.next() as u32, Ordering::SeqCst);
            }
            // Whole chunks only, so that framing breaks only where the garbage says so.
            let in_flight =
                page.req_prod
                    .load(Ordering::SeqCst)
                    .wrapping_sub(page.req_cons.load(Ordering::SeqCst)) as usize;
            if in_flight <= 1024 && 1024 - in_flight >= chunk.len() {
                let _ = page.client_write(&chunk);
            }
            // The guest reads some replies now and then.
            if rng.below(2) == 0 {
                let mut sink = [0u8; 512];
                bytes_back += page.client_read(&mut sink).unwrap_or(0);
            }
            match xs.service_ring(1, &*page) {
                Ok(_) => {}
                Err(HandleError::CutOff(_)) => {
                    cut = true;
                    break;
                }
                Err(e) => panic!("{e:?}"),
            }
            if rng.below(20) == 0 {
                xs.tick(rng.below(100_000));
            }
        }
        assert!(xs.usage(1).memory <= xs.quotas().memory_hard + 8 * 1024);
        assert_accounting_exact(&xs);
        guest2_and_dom0_fine(&mut xs, tool);
        if cut {
            cuts += 1;
        } else {
            survivors += 1;
        }
        xs.domain_destroyed(1);
        assert_accounting_exact(&xs);
    }
    eprintln!("garbage: {cuts} cut off, {survivors} survived, {bytes_back} bytes back");
    // The garbage exercised both outcomes, and real replies came back.
    assert!(
        cuts > 0 && survivors > 0,
        "{cuts} cut off, {survivors} survived"
    );
    assert!(bytes_back > 1000, "{bytes_back}");
}

#[test]
fn random_requests() {
    let words: [&[u8]; 14] = [
        b"data",
        b"/local/domain/2/data",
        b"/local/domain/1/data/x",
        b"x",
        b"@releaseDomain",
        b"n1",
        b"r2",
        b"b0",
        b"T",
        b"F",
        b"5",
        b"",
        b"data/a/b",
        b"/",
    ];
    for seed in 1..=30u64 {
        let (mut xs, tool) = store_with_guests(2);
        let mut rng = Rng(seed.wrapping_mul(0x1234_5678_9abc_def1) | 1);
        let mut tx_ids = vec![0u32];
        for i in 0..400u32 {
            let kind = XsType::from_raw(rng.below(23) as u32).unwrap_or(XsType::Read);
            let mut payload = Vec::new();
            for _ in 0..rng.below(4) {
                payload.extend_from_slice(words[rng.below(words.len() as u64) as usize]);
                if rng.below(8) > 0 {
                    payload.push(0);
                }
            }
            let tx_id = tx_ids[rng.below(tx_ids.len() as u64) as usize];
            let msg = XsMessage {
                kind,
                req_id: i,
                tx_id,
                payload,
            };
            match xs.handle(1, &msg) {
                Ok(()) | Err(HandleError::Busy) => {}
                Err(e) => panic!("{e:?}"),
            }
            while let Some(r) = xs.take_message(1) {
                if r.kind == XsType::TransactionStart {
                    let id = std::str::from_utf8(r.payload.strip_suffix(b"\0").unwrap())
                        .unwrap()
                        .parse()
                        .unwrap();
                    tx_ids.push(id);
                }
                assert!(r.payload.len() <= 4096);
            }
        }
        assert_accounting_exact(&xs);
        // Nothing of guest 2 was changed by guest 1.
        assert_eq!(
            xs.directory(tool, 0, "/local/domain/2/data").unwrap(),
            Vec::<String>::new()
        );
        guest2_and_dom0_fine(&mut xs, tool);
        xs.release_domain(1).unwrap();
        assert_eq!(xs.usage(1).nodes, 0);
        assert_accounting_exact(&xs);
    }
}
