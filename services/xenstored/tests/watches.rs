//! Watches: the first event, subtree matching, relative paths, removal events, permission
//! filtering, special watches, duplicates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ev, local_events, store_with_guests, Guest};
use keel_xen::xenstore_wire::{request, XsType};
use keel_xenstored::{Access, Perm, XsError, INTRODUCE_DOMAIN, RELEASE_DOMAIN};

#[test]
fn a_new_watch_fires_once_at_once_after_its_reply() {
    let (mut xs, _) = store_with_guests(1);
    let req = request::watch(7, "data/x", "tok").unwrap();
    xs.handle(1, &req).unwrap();
    let reply = xs.take_message(1).unwrap();
    assert_eq!(
        (reply.kind, reply.req_id, reply.payload.as_slice()),
        (XsType::Watch, 7, b"OK\0".as_slice())
    );
    let event = xs.take_message(1).unwrap();
    assert_eq!(
        (event.kind, event.req_id, event.tx_id),
        (XsType::WatchEvent, 0, 0)
    );
    assert_eq!(event.payload, b"data/x\0tok\0");
    assert!(xs.take_message(1).is_none());
}

#[test]
fn subtree_changes_fire_with_relative_or_absolute_paths() {
    let (mut xs, tool) = store_with_guests(1);
    let mut g = Guest::new(1);
    g.watch(&mut xs, "data", "rel").unwrap();
    g.watch(&mut xs, "/local/domain/1/data", "abs").unwrap();
    g.take_events(&mut xs);
    xs.write(tool, 0, "/local/domain/1/data/a/b", b"1").unwrap();
    assert_eq!(
        g.take_events(&mut xs),
        [ev("data/a/b", "rel"), ev("/local/domain/1/data/a/b", "abs")]
    );
    // Outside the watched subtree: nothing.
    xs.write(tool, 0, "/local/domain/1/datax", b"1").unwrap();
    assert!(g.take_events(&mut xs).is_empty());
}

#[test]
fn rm_fires_for_each_removed_node_and_ancestors_watches() {
    let (mut xs, tool) = store_with_guests(1);
    xs.write(tool, 0, "/t/a/b", b"1").unwrap();
    xs.watch(tool, "/t", "top").unwrap();
    xs.watch(tool, "/t/a/b", "leaf").unwrap();
    xs.watch(tool, "/t/a/b/c", "below").unwrap();
    local_events(&mut xs, tool);
    xs.rm(tool, 0, "/t/a").unwrap();
    let mut got = local_events(&mut xs, tool);
    got.sort();
    assert_eq!(got, [ev("/t/a", "top"), ev("/t/a/b", "leaf")]);
}

#[test]
fn events_respect_read_permission() {
    let (mut xs, tool) = store_with_guests(2);
    let mut g1 = Guest::new(1);
    let mut g2 = Guest::new(2);
    // Guest 2 watches guest 1's data (a path it cannot read).
    g2.watch(&mut xs, "/local/domain/1/data", "spy").unwrap();
    g2.take_events(&mut xs);
    g1.write(&mut xs, "data/secret", b"s").unwrap();
    xs.write(tool, 0, "/local/domain/1/data/other", b"o")
        .unwrap();
    assert!(
        g2.take_events(&mut xs).is_empty(),
        "nothing of another domain is seen"
    );
    // Granted read on one node: its events arrive.
    g1.set_perms(&mut xs, "data/secret", &["n1", "r2"]).unwrap();
    assert_eq!(
        g2.take_events(&mut xs),
        [ev("/local/domain/1/data/secret", "spy")]
    );
    g1.write(&mut xs, "data/secret", b"t").unwrap();
    assert_eq!(
        g2.take_events(&mut xs),
        [ev("/local/domain/1/data/secret", "spy")]
    );
    // Losing access: the change of permissions itself is still reported.
    g1.set_perms(&mut xs, "data/secret", &["n1"]).unwrap();
    assert_eq!(
        g2.take_events(&mut xs),
        [ev("/local/domain/1/data/secret", "spy")]
    );
    g1.write(&mut xs, "data/secret", b"u").unwrap();
    assert!(g2.take_events(&mut xs).is_empty());
}

#[test]
fn special_watches_go_to_privileged_watchers_only() {
    let (mut xs, tool) = store_with_guests(1);
    xs.watch(tool, INTRODUCE_DOMAIN, "intro").unwrap();
    xs.watch(tool, RELEASE_DOMAIN, "rel").unwrap();
    let mut g = Guest::new(1);
    g.watch(&mut xs, INTRODUCE_DOMAIN, "gi").unwrap();
    g.watch(&mut xs, RELEASE_DOMAIN, "gr").unwrap();
    assert_eq!(
        local_events(&mut xs, tool),
        [ev(INTRODUCE_DOMAIN, "intro"), ev(RELEASE_DOMAIN, "rel")]
    );
    // The first event of a new watch is the watch's own path, sent to anyone.
    assert_eq!(
        g.take_events(&mut xs),
        [ev(INTRODUCE_DOMAIN, "gi"), ev(RELEASE_DOMAIN, "gr")]
    );

    common::add_guest(&mut xs, tool, 2);
    assert_eq!(local_events(&mut xs, tool), [ev(INTRODUCE_DOMAIN, "intro")]);
    assert!(
        g.take_events(&mut xs).is_empty(),
        "unprivileged guest hears nothing"
    );
    xs.release_domain(2).unwrap();
    assert_eq!(local_events(&mut xs, tool), [ev(RELEASE_DOMAIN, "rel")]);
    assert!(g.take_events(&mut xs).is_empty());

    // dom0 may grant a guest the special watches.
    xs.set_perms(
        tool,
        0,
        RELEASE_DOMAIN,
        &[Perm::new(0, Access::None), Perm::new(1, Access::Read)],
    )
    .unwrap();
    common::add_guest(&mut xs, tool, 3);
    xs.domain_shutdown(3);
    assert_eq!(g.take_events(&mut xs), [ev(RELEASE_DOMAIN, "gr")]);
    // Once per shutdown until resumed.
    xs.domain_shutdown(3);
    assert!(g.take_events(&mut xs).is_empty());
    xs.resume_domain(3).unwrap();
    xs.domain_shutdown(3);
    assert_eq!(g.take_events(&mut xs), [ev(RELEASE_DOMAIN, "gr")]);
    // A guest cannot grant itself the other one.
    assert_eq!(
        g.set_perms(&mut xs, INTRODUCE_DOMAIN, &["r1"]),
        Err(XsError::EACCES)
    );
    assert_eq!(
        g.set_perms(&mut xs, "@other", &["r1"]),
        Err(XsError::EINVAL)
    );
}

#[test]
fn duplicates_unwatch_and_reset() {
    let (mut xs, tool) = store_with_guests(1);
    let mut g = Guest::new(1);
    g.watch(&mut xs, "data", "t").unwrap();
    assert_eq!(g.watch(&mut xs, "data", "t"), Err(XsError::EEXIST));
    g.watch(&mut xs, "data", "t2").unwrap();
    g.take_events(&mut xs);
    g.unwatch(&mut xs, "data", "t").unwrap();
    assert_eq!(g.unwatch(&mut xs, "data", "t"), Err(XsError::ENOENT));
    xs.write(tool, 0, "/local/domain/1/data/x", b"").unwrap();
    assert_eq!(g.take_events(&mut xs), [ev("data/x", "t2")]);
    g.call(&mut xs, XsType::ResetWatches, 0, &[b""], false)
        .unwrap();
    xs.write(tool, 0, "/local/domain/1/data/y", b"").unwrap();
    assert!(g.take_events(&mut xs).is_empty());
    assert_eq!(xs.usage(1).watches, 0);
}

#[test]
fn identical_pending_events_are_coalesced() {
    let (mut xs, tool) = store_with_guests(1);
    let mut g = Guest::new(1);
    g.watch(&mut xs, "data", "t").unwrap();
    g.take_events(&mut xs);
    for i in 0..50 {
        xs.write(tool, 0, "/local/domain/1/data/x", format!("{i}").as_bytes())
            .unwrap();
    }
    assert_eq!(g.take_events(&mut xs), [ev("data/x", "t")]);
}

#[test]
fn local_client_watches_frontend_state() {
    let (mut xs, tool) = store_with_guests(1);
    let backend = xs.open_local();
    xs.write(tool, 0, "/local/domain/1/device/vbd/51712/state", b"1")
        .unwrap();
    xs.watch(backend, "/local/domain/1/device/vbd/51712/state", "fe")
        .unwrap();
    assert_eq!(
        local_events(&mut xs, backend),
        [ev("/local/domain/1/device/vbd/51712/state", "fe")]
    );
    let mut g = Guest::new(1);
    g.write(&mut xs, "device/vbd/51712/state", b"3").unwrap();
    assert_eq!(
        local_events(&mut xs, backend),
        [ev("/local/domain/1/device/vbd/51712/state", "fe")]
    );
    assert!(
        local_events(&mut xs, tool).is_empty(),
        "clients have separate queues"
    );
    xs.unwatch(backend, "/local/domain/1/device/vbd/51712/state", "fe")
        .unwrap();
    g.write(&mut xs, "device/vbd/51712/state", b"4").unwrap();
    assert!(local_events(&mut xs, backend).is_empty());
    assert_eq!(xs.lost_events(backend), 0);
}
