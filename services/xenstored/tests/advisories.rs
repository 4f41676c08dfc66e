//! One test per past xenstored security advisory (and the issue's list): what the attack
//! was, and that Keel's xenstored stays up, bounded and consistent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{ev, local_events, store_with_guests, Guest};
use keel_xen::xenstore_wire::{request, XsType};
use keel_xenstored::{Access, HandleError, Perm, Xenstored, XsError, RELEASE_DOMAIN};

/// Per-owner node counts recomputed from the tree agree with the accounting, and every
/// node's parent lists it.
fn assert_consistent(xs: &Xenstored) {
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for (path, node) in xs.tree().iter() {
        *counts.entry(node.perms.owner()).or_default() += 1;
        if path != "/" {
            let parent = keel_xenstored::path::parent(path);
            let name = keel_xenstored::path::basename(path);
            let p = xs
                .tree()
                .get(parent)
                .unwrap_or_else(|| panic!("{path} has no parent"));
            assert!(
                p.children.iter().any(|c| c == name),
                "{parent} does not list {name}"
            );
        }
        for c in &node.children {
            let child = keel_xenstored::path::child(path, c);
            assert!(xs.tree().get(&child).is_some(), "{path} lists missing {c}");
        }
    }
    for (owner, n) in &counts {
        assert_eq!(xs.tree().usage(*owner).nodes, *n, "owner {owner}");
    }
}

/// XSA-233 (CVE-2017-14317): a domain's connection had two parents when a stub domain
/// targeted it, and destroying both at once unlinked it twice. Here a target is a plain
/// reference that dies with either side; destroying a domain and its device-model domain,
/// in either order, repeatedly, with watches, transactions and queued output, is safe.
#[test]
fn xsa_233_domain_and_its_stubdom_destroyed_together() {
    for order in [[1u16, 2], [2, 1]] {
        let (mut xs, tool) = store_with_guests(2);
        xs.set_target(2, 1).unwrap();
        let mut g = Guest::new(1);
        let mut dm = Guest::new(2);
        g.watch(&mut xs, "data", "t").unwrap();
        dm.watch(&mut xs, "/local/domain/1/data", "dm").unwrap();
        let tx = g.tx_start(&mut xs).unwrap();
        g.write_tx(&mut xs, tx, "data/x", b"1").unwrap();
        dm.write(&mut xs, "/local/domain/1/data/from-dm", b"1")
            .unwrap();
        xs.handle(1, &request::read(99, 0, "name").unwrap())
            .unwrap();
        xs.handle(2, &request::read(99, 0, "name").unwrap())
            .unwrap();
        for d in order {
            xs.domain_destroyed(d);
        }
        for d in order {
            xs.domain_destroyed(d);
            assert_eq!(xs.release_domain(d), Err(XsError::ENOENT));
            assert!(xs.take_message(d).is_none());
        }
        assert_consistent(&xs);
        // The ids can be used again, from scratch, without the old target.
        common::add_guest(&mut xs, tool, 1);
        common::add_guest(&mut xs, tool, 2);
        assert_eq!(xs.usage(1).watches, 0);
        assert_eq!(xs.usage(1).transactions, 0);
        let mut g1 = Guest::new(1);
        g1.write(&mut xs, "data/mine", b"").unwrap();
        let mut dm2 = Guest::new(2);
        assert_eq!(
            dm2.read(&mut xs, "/local/domain/1/data/mine"),
            Err(XsError::EACCES)
        );
        assert_consistent(&xs);
    }
}

/// CVE-2022-42311 (XSA-326): a guest sends requests and never reads the replies, making
/// xenstored buffer without limit. Here at most 20 replies wait; then its requests stay
/// in its own ring.
#[test]
fn cve_2022_42311_never_reading_replies_is_bounded() {
    let (mut xs, _) = store_with_guests(1);
    let mut accepted = 0;
    for i in 0..1000 {
        match xs.handle(1, &request::directory(i, 0, "data").unwrap()) {
            Ok(()) => accepted += 1,
            Err(HandleError::Busy) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(accepted, 20);
    assert!(xs.usage(1).memory < 16 * 1024);
}

/// CVE-2022-42312/42313 (XSA-326): watch-event floods against a guest that does not read.
/// Events stop being queued at the hard memory quota (counted as lost), stale events time
/// out after 20 s, identical pending events collapse, and the flooder gains nothing.
#[test]
fn cve_2022_42312_watch_event_flood_is_bounded() {
    let (mut xs, tool) = store_with_guests(1);
    let mut g = Guest::new(1);
    // Many watches with long tokens on a busy area the guest may read.
    xs.mkdir(tool, 0, "/busy").unwrap();
    xs.set_perms(tool, 0, "/busy", &[Perm::new(0, Access::Read)])
        .unwrap();
    for i in 0..128 {
        g.watch(&mut xs, "/busy", &format!("{i:04}{}", "t".repeat(1900)))
            .unwrap();
    }
    g.take_events(&mut xs);
    let hard = xs.quotas().memory_hard;
    for i in 0..200 {
        xs.write(tool, 0, &format!("/busy/n{i}"), b"x").unwrap();
        assert!(xs.usage(1).memory <= hard, "at {i}: {:?}", xs.usage(1));
    }
    let u = xs.usage(1);
    assert!(u.lost_events > 0, "{u:?}");
    // A later request is still answered once the guest reads (memory below the quota).
    while xs.take_message(1).is_some() {}
    assert_eq!(g.read(&mut xs, "name").unwrap(), b"guest1");
    // Events left unread for 20 s are dropped.
    g.unwatch(&mut xs, "/busy", &format!("{:04}{}", 0, "t".repeat(1900)))
        .unwrap();
    xs.tick(1_000);
    xs.write(tool, 0, "/busy/late", b"x").unwrap();
    assert!(xs.usage(1).queued_messages > 0);
    xs.tick(1_000 + 19_999);
    assert!(xs.usage(1).queued_messages > 0);
    xs.tick(1_000 + 20_000);
    assert_eq!(xs.usage(1).queued_messages, 0);
    assert_eq!(
        xs.usage(1).memory,
        xs.tree().usage(1).bytes + xs_watch_bytes(&xs)
    );
}

fn xs_watch_bytes(xs: &Xenstored) -> usize {
    let u = xs.usage(1);
    u.memory - xs.tree().usage(1).bytes
}

/// CVE-2022-42314..42318 (XSA-326): many nodes across many transactions, each within the
/// quota on its own. The node quota is checked again at each commit, and what open
/// transactions hold counts against the memory quota.
#[test]
fn cve_2022_42314_nodes_across_transactions() {
    let (mut xs, _) = store_with_guests(1);
    let mut g = Guest::new(1);
    // Separate areas, so that the transactions do not conflict with one another.
    for k in 0..10 {
        g.mkdir(&mut xs, &format!("data/t{k}")).unwrap();
    }
    let txs: Vec<u32> = (0..10).map(|_| g.tx_start(&mut xs).unwrap()).collect();
    let mut created = vec![0usize; 10];
    for (k, &tx) in txs.iter().enumerate() {
        for i in 0..1000 {
            let p = format!("data/t{k}/g{}/n{}", i / 40, i % 40);
            match g.write_tx(&mut xs, tx, &p, b"") {
                Ok(()) => created[k] += 1,
                Err(XsError::ENOSPC | XsError::ENOMEM) => break,
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    assert!(xs.usage(1).memory <= xs.quotas().memory_hard);
    let mut committed = 0;
    for &tx in &txs {
        match g.tx_end(&mut xs, tx, true) {
            Ok(()) => committed += 1,
            Err(XsError::ENOSPC | XsError::ENOMEM) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(created.iter().all(|&c| c > 900), "{created:?}");
    assert_eq!(
        committed, 1,
        "the first commit fills the quota; the others are refused"
    );
    assert!(xs.usage(1).nodes <= 1000, "{:?}", xs.usage(1));
    assert_eq!(xs.usage(1).transactions, 0);
    assert_consistent(&xs);
}

/// XSA-416 (CVE-2022-42319): memory for a request was held until the guest read the
/// reply. Replies are charged to the guest and bounded; taking them frees the memory.
#[test]
fn xsa_416_reply_memory_is_charged_and_released() {
    let (mut xs, tool) = store_with_guests(1);
    for i in 0..100 {
        xs.write(
            tool,
            0,
            &format!("/local/domain/1/data/name-number-{i:03}"),
            b"",
        )
        .unwrap();
    }
    let base = xs.usage(1).memory;
    for i in 0..20 {
        xs.handle(1, &request::directory(i, 0, "data").unwrap())
            .unwrap();
    }
    let held = xs.usage(1).memory - base;
    assert!(held > 20 * 1500, "{held}");
    assert_eq!(
        xs.handle(1, &request::directory(21, 0, "data").unwrap()),
        Err(HandleError::Busy)
    );
    while xs.take_message(1).is_some() {}
    assert_eq!(xs.usage(1).memory, base);
}

/// CVE-2022-42321 (XSA-418): deleting a deeply nested tree recursed once per level and
/// exhausted the stack. Removal here is iterative: a maximally deep tree goes on a small
/// stack.
#[test]
fn cve_2022_42321_deep_tree_removal_does_not_recurse() {
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            let mut xs = Xenstored::new();
            let c = xs.open_local();
            // 1024 levels: "/a/a/.../a" at the 2048-byte path limit.
            let path = "/a".repeat(1024);
            xs.write(c, 0, &path, b"deep").unwrap();
            assert_eq!(xs.tree().len(), 3 + 1024);
            xs.watch(c, &path, "leaf").unwrap();
            local_events(&mut xs, c);
            xs.rm(c, 0, "/a").unwrap();
            assert_eq!(xs.tree().len(), 3);
            assert_eq!(local_events(&mut xs, c), [ev(&path, "leaf")]);
            // And as cleanup of a dead domain's nodes.
            xs.introduce_domain(5, 1).unwrap();
            let deep5 = format!("/local/domain/5{}", "/b".repeat(1000));
            xs.write(c, 0, &deep5, b"").unwrap();
            xs.set_perms(c, 0, "/local/domain/5/b", &[Perm::new(5, Access::None)])
                .unwrap();
            xs.domain_destroyed(5);
            assert_eq!(xs.read(c, 0, "/local/domain/5/b"), Err(XsError::ENOENT));
        })
        .unwrap();
    handle.join().unwrap();
}

/// XSA-419 (CVE-2022-42322/42323): nodes created by a domain were left behind when it
/// died. Every node it owns goes with it, wherever it is; its id leaves every ACL, so a new
/// domain with the same id finds nothing of the old one.
#[test]
fn xsa_419_a_dead_domains_nodes_are_removed() {
    let (mut xs, tool) = store_with_guests(2);
    xs.mkdir(tool, 0, "/shared").unwrap();
    xs.set_perms(
        tool,
        0,
        "/shared",
        &[Perm::new(0, Access::None), Perm::new(1, Access::Both)],
    )
    .unwrap();
    let mut g = Guest::new(1);
    g.write(&mut xs, "data/a/b", b"1").unwrap();
    g.write(&mut xs, "/shared/left/behind", b"1").unwrap();
    g.write(&mut xs, "data/granted", b"1").unwrap();
    g.set_perms(&mut xs, "data/granted", &["n1", "r2"]).unwrap();
    xs.write(tool, 0, "/local/domain/2/data/for1", b"x")
        .unwrap();
    xs.set_perms(
        tool,
        0,
        "/local/domain/2/data/for1",
        &[Perm::new(2, Access::None), Perm::new(1, Access::Read)],
    )
    .unwrap();
    xs.watch(tool, RELEASE_DOMAIN, "rel").unwrap();
    local_events(&mut xs, tool);

    xs.release_domain(1).unwrap();
    assert_eq!(local_events(&mut xs, tool), [ev(RELEASE_DOMAIN, "rel")]);
    assert_eq!(xs.usage(1).nodes, 0);
    assert_eq!(xs.read(tool, 0, "/shared/left"), Err(XsError::ENOENT));
    assert_eq!(
        xs.directory(tool, 0, "/shared").unwrap(),
        Vec::<String>::new()
    );
    // Its home (owned by dom0) stays for the toolstack to remove; what it owned inside went.
    assert_eq!(xs.read(tool, 0, "/local/domain/1/name").unwrap(), b"guest1");
    assert_eq!(
        xs.read(tool, 0, "/local/domain/1/data"),
        Err(XsError::ENOENT)
    );
    // Grants naming domain 1 are gone.
    let perms = xs.get_perms(tool, 0, "/local/domain/2/data/for1").unwrap();
    assert_eq!(perms, [Perm::new(2, Access::None)]);
    let perms = xs.get_perms(tool, 0, "/shared").unwrap();
    assert_eq!(perms, [Perm::new(0, Access::None)]);
    // A new domain 1 sees nothing of the old one's grants.
    xs.introduce_domain(1, 40).unwrap();
    let mut g_new = Guest::new(1);
    assert_eq!(
        g_new.read(&mut xs, "/local/domain/2/data/for1"),
        Err(XsError::EACCES)
    );
    assert_eq!(g_new.write(&mut xs, "/shared/x", b""), Err(XsError::EACCES));
    assert_consistent(&xs);
}

/// CVE-2022-42326 (XSA-421): nodes created and deleted within one transaction escaped
/// accounting and were left in the database. Accounting stays exact through any mix.
#[test]
fn cve_2022_42326_create_and_delete_in_one_transaction() {
    let (mut xs, _) = store_with_guests(1);
    let mut g = Guest::new(1);
    let before = xs.usage(1);
    for round in 0..50 {
        let tx = g.tx_start(&mut xs).unwrap();
        for i in 0..20 {
            g.write_tx(&mut xs, tx, &format!("data/r/n{i}"), b"v")
                .unwrap();
        }
        g.rm_tx(&mut xs, tx, "data/r").unwrap();
        g.write_tx(&mut xs, tx, "data/keep", format!("{round}").as_bytes())
            .unwrap();
        g.rm_tx(&mut xs, tx, "data/keep").unwrap();
        g.tx_end(&mut xs, tx, round % 2 == 0).unwrap();
    }
    assert_eq!(xs.usage(1), before);
    assert_eq!(g.directory(&mut xs, "data").unwrap(), Vec::<String>::new());
    assert_consistent(&xs);
}

/// CVE-2022-42330 (XSA-425): XS_RELEASE while the domain's connection was busy (during a
/// soft reset) crashed xenstored. Release and re-introduction at any point are safe, and
/// a re-introduced domain starts with a fresh connection.
#[test]
fn cve_2022_42330_release_and_reintroduce_while_busy() {
    let (mut xs, tool) = store_with_guests(1);
    let mut g = Guest::new(1);
    let tx = g.tx_start(&mut xs).unwrap();
    g.watch(&mut xs, "data", "t").unwrap();
    xs.handle(1, &request::read(5, 0, "name").unwrap()).unwrap();
    // Soft reset: introduced again while introduced.
    xs.introduce_domain(1, 77).unwrap();
    assert_eq!(xs.event_port(1), Some(77));
    assert!(xs.take_message(1).is_none(), "old queue dropped");
    assert_eq!(xs.usage(1).watches, 0);
    assert_eq!(g.read_tx(&mut xs, tx, "name"), Err(XsError::ENOENT));
    // Release with requests queued, then requests after release.
    xs.handle(1, &request::read(6, 0, "name").unwrap()).unwrap();
    xs.release_domain(1).unwrap();
    assert_eq!(
        xs.handle(1, &request::read(7, 0, "name").unwrap()),
        Err(HandleError::NotIntroduced)
    );
    assert!(xs.take_message(1).is_none());
    // Release over the wire by a guest is refused.
    common::add_guest(&mut xs, tool, 1);
    common::add_guest(&mut xs, tool, 2);
    assert_eq!(
        g.call(&mut xs, XsType::Release, 0, &[b"2"], false),
        Err(XsError::EACCES)
    );
    assert!(xs.is_domain_introduced(2));
    assert_eq!(xs.release_domain(0), Err(XsError::EINVAL));
    assert_consistent(&xs);
}

/// CVE-2023-34323 (XSA-440): a transaction commit could drive a domain's node count
/// negative and trip an assertion. Commits whose nodes vanished meanwhile fail with
/// EAGAIN, and counts never go below what the tree holds.
#[test]
fn cve_2023_34323_commit_after_nodes_vanished() {
    let (mut xs, tool) = store_with_guests(2);
    let mut g = Guest::new(1);
    for i in 0..10 {
        g.write(&mut xs, &format!("data/n{i}"), b"").unwrap();
    }
    // dom0 deletes guest 1's nodes in a transaction; guest 1 dies before the commit.
    let tx = xs.transaction_start(tool).unwrap();
    xs.rm(tool, tx, "/local/domain/1/data").unwrap();
    xs.domain_destroyed(1);
    assert_eq!(xs.transaction_end(tool, tx, true), Err(XsError::EAGAIN));
    assert_eq!(xs.usage(1).nodes, 0);
    // Guest 2 deletes its own nodes in a transaction while dom0 deletes them directly.
    let mut g2 = Guest::new(2);
    g2.write(&mut xs, "data/x", b"").unwrap();
    let tx2 = g2.tx_start(&mut xs).unwrap();
    g2.rm_tx(&mut xs, tx2, "data/x").unwrap();
    xs.rm(tool, 0, "/local/domain/2/data/x").unwrap();
    assert_eq!(g2.tx_end(&mut xs, tx2, true), Err(XsError::EAGAIN));
    assert_eq!(xs.usage(2).nodes, 3);
    assert_consistent(&xs);
}

/// XSA-484 (CVE-2026-23557): XS_RESET_WATCHES sent inside a transaction freed the
/// transaction in use. Here it ends every transaction of the caller, including that one,
/// and answers OK.
#[test]
fn reset_watches_inside_a_transaction() {
    let (mut xs, _) = store_with_guests(1);
    let mut g = Guest::new(1);
    g.watch(&mut xs, "data", "t").unwrap();
    let tx = g.tx_start(&mut xs).unwrap();
    let other = g.tx_start(&mut xs).unwrap();
    g.write_tx(&mut xs, tx, "data/x", b"1").unwrap();
    g.call(&mut xs, XsType::ResetWatches, tx, &[b""], false)
        .unwrap();
    assert_eq!(xs.usage(1).transactions, 0);
    assert_eq!(xs.usage(1).watches, 0);
    assert_eq!(g.tx_end(&mut xs, tx, true), Err(XsError::ENOENT));
    assert_eq!(g.read_tx(&mut xs, other, "data"), Err(XsError::ENOENT));
    assert_eq!(g.read(&mut xs, "data/x"), Err(XsError::ENOENT));
    g.write(&mut xs, "data/y", b"ok").unwrap();
    assert_consistent(&xs);
}

/// A path outside the guest's own tree: refused, and the other tree is untouched.
#[test]
fn paths_outside_the_guests_tree() {
    let (mut xs, tool) = store_with_guests(2);
    let mut g = Guest::new(1);
    for p in [
        "/local/domain/2/data/x",
        "/local/domain/0/x",
        "/vm/x",
        "/tool/x",
        "../2/data",
    ] {
        assert!(
            matches!(
                g.write(&mut xs, p, b"x"),
                Err(XsError::EACCES | XsError::EINVAL)
            ),
            "{p}"
        );
    }
    assert_eq!(
        xs.directory(tool, 0, "/local/domain/2/data").unwrap(),
        Vec::<String>::new()
    );
}

/// CVE-2022-42314..42318, the read side: transactions remember every node they touch.
/// Ten transactions each touching a thousand long paths would hold ~20 MB; the records are
/// charged to the guest, so they stop at its memory quota.
#[test]
fn cve_2022_42314_transaction_access_records_are_charged() {
    let (mut xs, _) = store_with_guests(1);
    let mut g = Guest::new(1);
    let long = "x".repeat(1900);
    let txs: Vec<u32> = (0..10).map(|_| g.tx_start(&mut xs).unwrap()).collect();
    let mut refused = 0;
    for &tx in &txs {
        for i in 0..1000 {
            match g.read_tx(&mut xs, tx, &format!("data/{long}{i}")) {
                Err(XsError::ENOENT) => {}
                Err(XsError::ENOMEM) => {
                    refused += 1;
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(refused > 0);
    assert!(
        xs.usage(1).memory < xs.quotas().memory_hard,
        "{:?}",
        xs.usage(1)
    );
    for &tx in &txs {
        let _ = g.tx_end(&mut xs, tx, false);
    }
    assert_eq!(xs.usage(1).memory, xs.tree().usage(1).bytes);
}
