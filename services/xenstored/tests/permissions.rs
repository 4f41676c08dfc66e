//! Xen's permission model: owner, ACL, default for others, dom0 privilege, masking of
//! errors about parents, and another domain's tree staying out of reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{store_with_guests, Guest};
use keel_xenstored::{Access, Perm, XsError};

#[test]
fn another_domains_tree_is_unreadable_and_unwritable() {
    let (mut xs, tool) = store_with_guests(2);
    xs.write(tool, 0, "/local/domain/2/data/secret", b"s")
        .unwrap();
    let mut g1 = Guest::new(1);
    for p in [
        "/local/domain/2",
        "/local/domain/2/name",
        "/local/domain/2/data",
        "/local/domain/2/data/secret",
    ] {
        assert_eq!(g1.read(&mut xs, p), Err(XsError::EACCES), "{p}");
        assert_eq!(g1.directory(&mut xs, p), Err(XsError::EACCES), "{p}");
        assert_eq!(g1.get_perms(&mut xs, p), Err(XsError::EACCES), "{p}");
        assert_eq!(g1.write(&mut xs, p, b"x"), Err(XsError::EACCES), "{p}");
        assert_eq!(g1.rm(&mut xs, p), Err(XsError::EACCES), "{p}");
        assert_eq!(
            g1.set_perms(&mut xs, p, &["b1"]),
            Err(XsError::EACCES),
            "{p}"
        );
    }
    // A node that does not exist there looks exactly like one that does: EACCES, not
    // ENOENT (nothing is learnt about the other tree).
    assert_eq!(
        g1.read(&mut xs, "/local/domain/2/data/nothing"),
        Err(XsError::EACCES)
    );
    assert_eq!(
        g1.write(&mut xs, "/local/domain/2/data/new", b"x"),
        Err(XsError::EACCES)
    );
    assert_eq!(
        g1.mkdir(&mut xs, "/local/domain/2/data/new"),
        Err(XsError::EACCES)
    );
    // The rest of the store too.
    assert_eq!(g1.read(&mut xs, "/"), Err(XsError::EACCES));
    assert_eq!(g1.directory(&mut xs, "/local/domain"), Err(XsError::EACCES));
    assert_eq!(g1.read(&mut xs, "/vm"), Err(XsError::EACCES));
    assert_eq!(g1.write(&mut xs, "/evil", b"x"), Err(XsError::EACCES));
    assert_eq!(g1.read(&mut xs, "/tool/xenstored"), Err(XsError::EACCES));
    // And nothing changed.
    assert_eq!(
        xs.read(tool, 0, "/local/domain/2/data/secret").unwrap(),
        b"s"
    );
    assert_eq!(
        xs.read(tool, 0, "/local/domain/2/data/new"),
        Err(XsError::ENOENT)
    );
}

#[test]
fn own_home_readable_not_writable_but_data_is() {
    let (mut xs, _) = store_with_guests(1);
    let mut g = Guest::new(1);
    assert_eq!(g.read(&mut xs, "name").unwrap(), b"guest1");
    assert_eq!(g.write(&mut xs, "name", b"evil"), Err(XsError::EACCES));
    // Writing a new node under a read-only parent is refused; readable parent: EACCES.
    assert_eq!(g.write(&mut xs, "newkey", b"v"), Err(XsError::EACCES));
    // ENOENT only where the parent is readable.
    assert_eq!(g.read(&mut xs, "missing"), Err(XsError::ENOENT));
    g.write(&mut xs, "data/k", b"v").unwrap();
    assert_eq!(g.get_perms(&mut xs, "data/k").unwrap(), ["n1"]);
}

#[test]
fn acl_entries_grant_read_write_both() {
    let (mut xs, tool) = store_with_guests(3);
    xs.write(tool, 0, "/shared/r", b"r").unwrap();
    xs.write(tool, 0, "/shared/w", b"w").unwrap();
    xs.write(tool, 0, "/shared/b", b"b").unwrap();
    xs.set_perms(
        tool,
        0,
        "/shared/r",
        &[Perm::new(0, Access::None), Perm::new(1, Access::Read)],
    )
    .unwrap();
    xs.set_perms(
        tool,
        0,
        "/shared/w",
        &[Perm::new(0, Access::None), Perm::new(1, Access::Write)],
    )
    .unwrap();
    xs.set_perms(
        tool,
        0,
        "/shared/b",
        &[Perm::new(0, Access::Read), Perm::new(1, Access::Both)],
    )
    .unwrap();
    let mut g1 = Guest::new(1);
    let mut g2 = Guest::new(2);
    assert_eq!(g1.read(&mut xs, "/shared/r").unwrap(), b"r");
    assert_eq!(g1.write(&mut xs, "/shared/r", b"x"), Err(XsError::EACCES));
    assert_eq!(g1.read(&mut xs, "/shared/w"), Err(XsError::EACCES));
    g1.write(&mut xs, "/shared/w", b"x").unwrap();
    g1.write(&mut xs, "/shared/b", b"y").unwrap();
    assert_eq!(g1.read(&mut xs, "/shared/b").unwrap(), b"y");
    // Domain 2 has no entry: the default (first entry) applies.
    assert_eq!(g2.read(&mut xs, "/shared/r"), Err(XsError::EACCES));
    assert_eq!(g2.read(&mut xs, "/shared/b").unwrap(), b"y");
    assert_eq!(g2.write(&mut xs, "/shared/b", b"z"), Err(XsError::EACCES));
    // Write-only grant does not give ownership: no set_perms.
    assert_eq!(
        g1.set_perms(&mut xs, "/shared/w", &["n0", "b1"]),
        Err(XsError::EACCES)
    );
}

#[test]
fn new_nodes_inherit_parent_perms_and_an_unprivileged_creator_owns_them() {
    let (mut xs, tool) = store_with_guests(2);
    // Backend-style area: owned by dom0, writable by guest 1, readable by guest 2.
    xs.mkdir(tool, 0, "/area").unwrap();
    xs.set_perms(
        tool,
        0,
        "/area",
        &[
            Perm::new(0, Access::None),
            Perm::new(1, Access::Write),
            Perm::new(2, Access::Read),
        ],
    )
    .unwrap();
    let mut g1 = Guest::new(1);
    g1.write(&mut xs, "/area/x/y", b"v").unwrap();
    assert_eq!(
        g1.get_perms(&mut xs, "/area/x/y").unwrap(),
        ["n1", "w1", "r2"]
    );
    assert_eq!(
        g1.get_perms(&mut xs, "/area/x").unwrap(),
        ["n1", "w1", "r2"]
    );
    // dom0's creations keep the inherited owner.
    xs.write(tool, 0, "/area/z", b"").unwrap();
    assert_eq!(
        xs.get_perms(tool, 0, "/area/z").unwrap()[0],
        Perm::new(0, Access::None)
    );
    // Guest 2 can read guest 1's node through the inherited ACL.
    let mut g2 = Guest::new(2);
    assert_eq!(g2.read(&mut xs, "/area/x/y").unwrap(), b"v");
    assert_eq!(xs.usage(1).nodes, 3 + 2);
}

#[test]
fn owner_changes_acl_but_only_dom0_changes_owner() {
    let (mut xs, tool) = store_with_guests(2);
    let mut g1 = Guest::new(1);
    g1.write(&mut xs, "data/k", b"v").unwrap();
    g1.set_perms(&mut xs, "data/k", &["n1", "r2"]).unwrap();
    let mut g2 = Guest::new(2);
    // data itself is n1, so guest 2 can't reach it... but the node's own perms let it read.
    assert_eq!(g2.read(&mut xs, "/local/domain/1/data/k").unwrap(), b"v");
    assert_eq!(
        g1.set_perms(&mut xs, "data/k", &["n2"]),
        Err(XsError::EPERM)
    );
    assert_eq!(g1.get_perms(&mut xs, "data/k").unwrap(), ["n1", "r2"]);
    xs.set_perms(
        tool,
        0,
        "/local/domain/1/data/k",
        &[Perm::new(2, Access::None)],
    )
    .unwrap();
    assert_eq!(g1.read(&mut xs, "data/k"), Err(XsError::EACCES));
    assert_eq!(g2.read(&mut xs, "/local/domain/1/data/k").unwrap(), b"v");
    assert_eq!(xs.usage(2).nodes, 3 + 1, "ownership moved with accounting");
    assert_eq!(xs.usage(1).nodes, 3);
}

#[test]
fn dom0_is_privileged_everywhere() {
    let (mut xs, tool) = store_with_guests(1);
    let mut g = Guest::new(1);
    g.write(&mut xs, "data/private", b"p").unwrap();
    g.set_perms(&mut xs, "data/private", &["n1"]).unwrap();
    assert_eq!(
        xs.read(tool, 0, "/local/domain/1/data/private").unwrap(),
        b"p"
    );
    xs.write(tool, 0, "/local/domain/1/data/private", b"q")
        .unwrap();
    xs.rm(tool, 0, "/local/domain/1/data/private").unwrap();
}

#[test]
fn set_target_grants_the_targets_rights() {
    let (mut xs, tool) = store_with_guests(2);
    let mut g1 = Guest::new(1);
    g1.write(&mut xs, "data/k", b"v").unwrap();
    let mut dm = Guest::new(2);
    assert_eq!(
        dm.read(&mut xs, "/local/domain/1/data/k"),
        Err(XsError::EACCES)
    );
    assert_eq!(xs.set_target(2, 9), Err(XsError::ENOENT));
    xs.set_target(2, 1).unwrap();
    assert_eq!(dm.read(&mut xs, "/local/domain/1/data/k").unwrap(), b"v");
    dm.write(&mut xs, "/local/domain/1/data/k", b"w").unwrap();
    // Inherits what 1 is granted: /local/domain/1 is r1.
    assert_eq!(dm.read(&mut xs, "/local/domain/1/name").unwrap(), b"guest1");
    let _ = tool;
}

#[test]
fn set_perms_quota_and_parsing() {
    let (mut xs, _) = store_with_guests(1);
    let mut g = Guest::new(1);
    g.write(&mut xs, "data/k", b"v").unwrap();
    g.set_perms(&mut xs, "data/k", &["n1", "r2", "r3", "r4", "r5"])
        .unwrap();
    assert_eq!(
        g.set_perms(&mut xs, "data/k", &["n1", "r2", "r3", "r4", "r5", "r6"]),
        Err(XsError::ENOSPC)
    );
    assert_eq!(
        g.set_perms(&mut xs, "data/k", &["x1"]),
        Err(XsError::EINVAL)
    );
    assert_eq!(g.set_perms(&mut xs, "data/k", &["r"]), Err(XsError::EINVAL));
    assert_eq!(
        g.set_perms(&mut xs, "data/k", &["r99999"]),
        Err(XsError::EINVAL)
    );
    assert_eq!(g.get_perms(&mut xs, "data/k").unwrap().len(), 5);
}
