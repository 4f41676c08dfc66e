//! Transactions: isolation, commit, abort, conflict detection (EAGAIN), ids, nesting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ev, store_with_guests, Guest};
use keel_xen::xenstore_wire::XsType;
use keel_xenstored::XsError;

#[test]
fn changes_are_private_until_commit() {
    let (mut xs, tool) = store_with_guests(1);
    let mut g = Guest::new(1);
    let tx = g.tx_start(&mut xs).unwrap();
    assert_ne!(tx, 0);
    g.write_tx(&mut xs, tx, "data/a", b"1").unwrap();
    assert_eq!(g.read_tx(&mut xs, tx, "data/a").unwrap(), b"1");
    assert_eq!(g.read(&mut xs, "data/a"), Err(XsError::ENOENT));
    assert_eq!(
        xs.read(tool, 0, "/local/domain/1/data/a"),
        Err(XsError::ENOENT)
    );
    g.tx_end(&mut xs, tx, true).unwrap();
    assert_eq!(g.read(&mut xs, "data/a").unwrap(), b"1");
    // The id is gone.
    assert_eq!(g.read_tx(&mut xs, tx, "data/a"), Err(XsError::ENOENT));
}

#[test]
fn abort_discards() {
    let (mut xs, _) = store_with_guests(1);
    let mut g = Guest::new(1);
    let tx = g.tx_start(&mut xs).unwrap();
    g.write_tx(&mut xs, tx, "data/a", b"1").unwrap();
    g.tx_end(&mut xs, tx, false).unwrap();
    assert_eq!(g.read(&mut xs, "data/a"), Err(XsError::ENOENT));
    assert_eq!(xs.usage(1).transactions, 0);
    assert_eq!(xs.usage(1).nodes, 3);
}

#[test]
fn conflicting_write_gives_eagain() {
    let (mut xs, tool) = store_with_guests(1);
    let mut g = Guest::new(1);
    g.write(&mut xs, "data/a", b"0").unwrap();
    let tx = g.tx_start(&mut xs).unwrap();
    assert_eq!(g.read_tx(&mut xs, tx, "data/a").unwrap(), b"0");
    g.write_tx(&mut xs, tx, "data/b", b"derived").unwrap();
    xs.write(tool, 0, "/local/domain/1/data/a", b"changed")
        .unwrap();
    assert_eq!(g.tx_end(&mut xs, tx, true), Err(XsError::EAGAIN));
    assert_eq!(g.read(&mut xs, "data/b"), Err(XsError::ENOENT));
    // A retry succeeds.
    let tx = g.tx_start(&mut xs).unwrap();
    assert_eq!(g.read_tx(&mut xs, tx, "data/a").unwrap(), b"changed");
    g.write_tx(&mut xs, tx, "data/b", b"derived").unwrap();
    g.tx_end(&mut xs, tx, true).unwrap();
}

#[test]
fn conflicting_delete_and_create_give_eagain() {
    let (mut xs, tool) = store_with_guests(1);
    let mut g = Guest::new(1);
    g.write(&mut xs, "data/a", b"0").unwrap();
    let tx = g.tx_start(&mut xs).unwrap();
    g.read_tx(&mut xs, tx, "data/a").unwrap();
    xs.rm(tool, 0, "/local/domain/1/data/a").unwrap();
    assert_eq!(g.tx_end(&mut xs, tx, true), Err(XsError::EAGAIN));

    // Read absent, someone creates it.
    let tx = g.tx_start(&mut xs).unwrap();
    assert_eq!(g.read_tx(&mut xs, tx, "data/n"), Err(XsError::ENOENT));
    xs.write(tool, 0, "/local/domain/1/data/n", b"").unwrap();
    assert_eq!(g.tx_end(&mut xs, tx, true), Err(XsError::EAGAIN));
}

#[test]
fn two_interfering_transactions_first_wins() {
    let (mut xs, _) = store_with_guests(1);
    let mut g = Guest::new(1);
    g.write(&mut xs, "data/a", b"a").unwrap();
    g.write(&mut xs, "data/b", b"b").unwrap();
    let t1 = g.tx_start(&mut xs).unwrap();
    let t2 = g.tx_start(&mut xs).unwrap();
    assert_ne!(t1, t2);
    g.read_tx(&mut xs, t1, "data/a").unwrap();
    g.read_tx(&mut xs, t2, "data/b").unwrap();
    g.write_tx(&mut xs, t1, "data/b", b"1").unwrap();
    g.write_tx(&mut xs, t2, "data/a", b"2").unwrap();
    g.tx_end(&mut xs, t1, true).unwrap();
    assert_eq!(g.tx_end(&mut xs, t2, true), Err(XsError::EAGAIN));
    assert_eq!(g.read(&mut xs, "data/a").unwrap(), b"a");
    assert_eq!(g.read(&mut xs, "data/b").unwrap(), b"1");
}

#[test]
fn unrelated_writes_do_not_conflict() {
    let (mut xs, tool) = store_with_guests(1);
    let mut g = Guest::new(1);
    let tx = g.tx_start(&mut xs).unwrap();
    g.write_tx(&mut xs, tx, "data/mine", b"1").unwrap();
    xs.write(tool, 0, "/elsewhere", b"x").unwrap();
    g.tx_end(&mut xs, tx, true).unwrap();
    assert_eq!(g.read(&mut xs, "data/mine").unwrap(), b"1");
}

#[test]
fn rm_inside_a_transaction() {
    let (mut xs, _) = store_with_guests(1);
    let mut g = Guest::new(1);
    g.write(&mut xs, "data/t/a/b", b"1").unwrap();
    let tx = g.tx_start(&mut xs).unwrap();
    g.rm_tx(&mut xs, tx, "data/t").unwrap();
    assert_eq!(g.read_tx(&mut xs, tx, "data/t/a/b"), Err(XsError::ENOENT));
    assert_eq!(g.read(&mut xs, "data/t/a/b").unwrap(), b"1");
    g.tx_end(&mut xs, tx, true).unwrap();
    assert_eq!(g.read(&mut xs, "data/t"), Err(XsError::ENOENT));
    assert_eq!(xs.usage(1).nodes, 3);
}

#[test]
fn watches_fire_only_at_commit() {
    let (mut xs, tool) = store_with_guests(1);
    xs.watch(tool, "/local/domain/1/data", "t").unwrap();
    assert_eq!(
        common::local_events(&mut xs, tool),
        [ev("/local/domain/1/data", "t")]
    );
    let mut g = Guest::new(1);
    let tx = g.tx_start(&mut xs).unwrap();
    g.write_tx(&mut xs, tx, "data/x", b"1").unwrap();
    assert!(common::local_events(&mut xs, tool).is_empty());
    g.tx_end(&mut xs, tx, true).unwrap();
    assert_eq!(
        common::local_events(&mut xs, tool),
        [ev("/local/domain/1/data/x", "t")]
    );
    // Aborted: nothing.
    let tx = g.tx_start(&mut xs).unwrap();
    g.write_tx(&mut xs, tx, "data/y", b"1").unwrap();
    g.tx_end(&mut xs, tx, false).unwrap();
    assert!(common::local_events(&mut xs, tool).is_empty());
}

#[test]
fn ids_nesting_and_unknown() {
    let (mut xs, _) = store_with_guests(1);
    let mut g = Guest::new(1);
    let tx = g.tx_start(&mut xs).unwrap();
    // TRANSACTION_START inside a transaction: EBUSY.
    assert_eq!(
        g.call(&mut xs, XsType::TransactionStart, tx, &[b""], false),
        Err(XsError::EBUSY)
    );
    // Unknown id on any operation: ENOENT.
    assert_eq!(g.read_tx(&mut xs, 4242, "data"), Err(XsError::ENOENT));
    // TRANSACTION_END without a transaction: ENOENT.
    assert_eq!(g.tx_end(&mut xs, 0, true), Err(XsError::ENOENT));
    // Watches ignore the tx id.
    g.call(&mut xs, XsType::Watch, 4242, &[b"data", b"tok"], false)
        .unwrap();
    g.tx_end(&mut xs, tx, true).unwrap();
}

#[test]
fn local_transactions_retry_loop() {
    let (mut xs, tool) = store_with_guests(1);
    let mut g = Guest::new(1);
    g.write(&mut xs, "data/counter", b"0").unwrap();
    let other = xs.open_local();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let tx = xs.transaction_start(tool).unwrap();
        let v: u32 = String::from_utf8(xs.read(tool, tx, "/local/domain/1/data/counter").unwrap())
            .unwrap()
            .parse()
            .unwrap();
        if attempts == 1 {
            // Someone else bumps it in between.
            xs.write(other, 0, "/local/domain/1/data/counter", b"5")
                .unwrap();
        }
        xs.write(
            tool,
            tx,
            "/local/domain/1/data/counter",
            (v + 1).to_string().as_bytes(),
        )
        .unwrap();
        match xs.transaction_end(tool, tx, true) {
            Ok(()) => break,
            Err(XsError::EAGAIN) => continue,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(attempts, 2);
    assert_eq!(g.read(&mut xs, "data/counter").unwrap(), b"6");
}
