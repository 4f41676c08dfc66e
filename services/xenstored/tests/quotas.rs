//! Each per-domain quota at its limit, with Xen 4.17's default values.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{store_with_guests, Guest};
use keel_xen::xenstore_wire::{request, XsType};
use keel_xenstored::{HandleError, Quotas, Xenstored, XsError};

#[test]
fn defaults_are_xens() {
    let q = Quotas::default();
    assert_eq!(q.nodes, 1000);
    assert_eq!(q.node_size, 2048);
    assert_eq!(q.watches, 128);
    assert_eq!(q.transactions, 10);
    assert_eq!(q.perms, 5);
    assert_eq!(q.path_len, 2048);
    assert_eq!(q.outstanding, 20);
    assert_eq!(q.transaction_nodes, 1024);
    assert_eq!(q.memory_soft, 2 * 1024 * 1024);
    assert_eq!(q.memory_hard, 2 * 1024 * 1024 + 512 * 1024);
    assert_eq!(q.watch_event_timeout_ms, 20_000);
}

/// `data/gNN/nNN`: spreads nodes over directories so no children list nears the node size.
fn spread(i: usize) -> String {
    format!("data/g{:02}/n{:02}", i / 40, i % 40)
}

#[test]
fn node_count_limit() {
    let (mut xs, _) = store_with_guests(1);
    let mut g = Guest::new(1);
    let mut i = 0;
    // 3 nodes owned already (data, device, control).
    while xs.usage(1).nodes < 1000 {
        match g.write(&mut xs, &spread(i), b"") {
            Ok(()) => i += 1,
            Err(e) => panic!(
                "write {i} failed early: {e:?} at {} nodes",
                xs.usage(1).nodes
            ),
        }
    }
    assert_eq!(xs.usage(1).nodes, 1000);
    assert_eq!(g.write(&mut xs, "data/one-more", b""), Err(XsError::ENOSPC));
    assert_eq!(g.mkdir(&mut xs, "data/one-more"), Err(XsError::ENOSPC));
    // Existing nodes can still be rewritten, and removing makes room.
    g.write(&mut xs, &spread(0), b"again").unwrap();
    g.rm(&mut xs, &spread(0)).unwrap();
    g.write(&mut xs, "data/one-more", b"").unwrap();
    // A multi-level create that does not fit creates nothing.
    assert_eq!(g.write(&mut xs, "data/x/y/z", b""), Err(XsError::ENOSPC));
    assert_eq!(g.read(&mut xs, "data/x"), Err(XsError::ENOENT));
    // dom0 is not limited.
    let tool = xs.open_local();
    for j in 0..1100 {
        xs.write(tool, 0, &format!("/many/g{}/n{}", j / 50, j % 50), b"")
            .unwrap();
    }
}

#[test]
fn node_size_limit() {
    let (mut xs, tool) = store_with_guests(1);
    let mut g = Guest::new(1);
    // 24-byte header + 8 per permission + value: reaching 2048 is refused.
    g.write(&mut xs, "data/v", &[b'x'; 2048 - 24 - 8 - 1])
        .unwrap();
    assert_eq!(
        g.write(&mut xs, "data/v", &[b'x'; 2048 - 24 - 8]),
        Err(XsError::ENOSPC)
    );
    assert_eq!(
        g.read(&mut xs, "data/v").unwrap().len(),
        2015,
        "old value kept"
    );
    // More permissions leave less room.
    g.write(&mut xs, "data/w", &[b'x'; 2000]).unwrap();
    assert_eq!(
        g.set_perms(&mut xs, "data/w", &["n1", "r2", "r3"]),
        Err(XsError::ENOSPC)
    );
    // dom0 may store what the wire carries.
    xs.write(tool, 0, "/big", &[b'y'; 4000]).unwrap();
}

#[test]
fn watch_limit() {
    let (mut xs, _) = store_with_guests(1);
    let mut g = Guest::new(1);
    for i in 0..128 {
        g.watch(&mut xs, "data", &format!("t{i}")).unwrap();
    }
    assert_eq!(g.watch(&mut xs, "data", "t128"), Err(XsError::E2BIG));
    g.unwatch(&mut xs, "data", "t0").unwrap();
    g.watch(&mut xs, "data", "t128").unwrap();
    assert_eq!(xs.usage(1).watches, 128);
}

#[test]
fn transaction_limit() {
    let (mut xs, _) = store_with_guests(1);
    let mut g = Guest::new(1);
    let ids: Vec<u32> = (0..10).map(|_| g.tx_start(&mut xs).unwrap()).collect();
    assert_eq!(g.tx_start(&mut xs), Err(XsError::ENOSPC));
    g.tx_end(&mut xs, ids[3], false).unwrap();
    g.tx_start(&mut xs).unwrap();
    // dom0 has no limit.
    let tool = xs.open_local();
    for _ in 0..20 {
        xs.transaction_start(tool).unwrap();
    }
}

#[test]
fn outstanding_request_limit() {
    let (mut xs, tool) = store_with_guests(1);
    for i in 0..20 {
        xs.handle(1, &request::read(i, 0, "name").unwrap()).unwrap();
    }
    assert_eq!(
        xs.handle(1, &request::read(20, 0, "name").unwrap()),
        Err(HandleError::Busy)
    );
    assert_eq!(xs.usage(1).outstanding, 20);
    let first = xs.take_message(1).unwrap();
    assert_eq!((first.kind, first.req_id), (XsType::Read, 0));
    xs.handle(1, &request::read(20, 0, "name").unwrap())
        .unwrap();
    // Other guests are not affected.
    common::add_guest(&mut xs, tool, 2);
    let mut g2 = Guest::new(2);
    assert_eq!(g2.read(&mut xs, "name").unwrap(), b"guest2");
    assert_eq!(xs.read(tool, 0, "/local/domain/1/name").unwrap(), b"guest1");
}

#[test]
fn nodes_per_transaction_limit() {
    let (mut xs, _) = store_with_guests(1);
    let mut g = Guest::new(1);
    let tx = g.tx_start(&mut xs).unwrap();
    let mut failed_at = None;
    for i in 0..1100 {
        match g.read_tx(&mut xs, tx, &format!("data/n{i}")) {
            Err(XsError::ENOENT) => {}
            Err(XsError::ENOSPC) => {
                failed_at = Some(i);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    // "data" plus 1023 distinct children reach 1024 touched nodes.
    assert_eq!(failed_at, Some(1023));
    // The transaction is spoilt: its commit is refused.
    assert_eq!(g.tx_end(&mut xs, tx, true), Err(XsError::ENOMEM));
    // Outside it, all is well.
    g.write(&mut xs, "data/ok", b"").unwrap();
}

#[test]
fn hard_memory_limit_refuses_growth_and_stops_reading() {
    let quotas = Quotas {
        memory_hard: 16 * 1024,
        ..Quotas::XEN_DEFAULT
    };
    let mut xs = Xenstored::with_quotas(quotas);
    let tool = xs.open_local();
    common::add_guest(&mut xs, tool, 1);
    let mut g = Guest::new(1);
    let mut stored = 0;
    let err = loop {
        match g.write(&mut xs, &spread(stored), &[b'v'; 1000]) {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err, XsError::ENOMEM);
    assert!((10..16).contains(&stored), "{stored}");
    assert!(xs.usage(1).memory <= 16 * 1024);
    // Watches and transactions count too.
    assert_eq!(
        g.watch(&mut xs, "data", &"t".repeat(2000)),
        Err(XsError::ENOMEM)
    );
    // Replies still count: reading big values takes it to the quota, and then its
    // requests are not taken until it reads (before its 20 outstanding are reached).
    let mut sent = 0;
    let refused = loop {
        match xs.handle(1, &request::read(sent, 0, &spread(0)).unwrap()) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(refused, HandleError::Busy);
    assert!(sent < 20, "{sent}");
    assert!(xs.usage(1).memory >= 16 * 1024);
    while xs.take_message(1).is_some() {}
    // Shrinking is always allowed.
    g.rm(&mut xs, &spread(0)).unwrap();
    g.write(&mut xs, &spread(0), b"small").unwrap();
}
