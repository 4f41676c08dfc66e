//! The operations of the protocol as a guest and dom0 see them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{store_with_guests, Guest};
use keel_xen::xenstore_wire::{XsMessage, XsType};
use keel_xenstored::{Xenstored, XsError};

#[test]
fn initial_tree_is_xens() {
    let mut xs = Xenstored::new();
    let c = xs.open_local();
    assert_eq!(xs.directory(c, 0, "/").unwrap(), ["tool"]);
    assert_eq!(xs.directory(c, 0, "/tool").unwrap(), ["xenstored"]);
    assert_eq!(xs.read(c, 0, "/").unwrap(), b"");
    assert_eq!(xs.get_perms(c, 0, "/").unwrap()[0].to_wire(), "n0");
}

#[test]
fn write_read_mkdir_directory_rm() {
    let (mut xs, _) = store_with_guests(1);
    let mut g = Guest::new(1);
    g.write(&mut xs, "/local/domain/1/data/a/b/c", b"v1")
        .unwrap();
    assert_eq!(
        g.read(&mut xs, "/local/domain/1/data/a/b/c").unwrap(),
        b"v1"
    );
    // Parents were created empty.
    assert_eq!(g.read(&mut xs, "/local/domain/1/data/a").unwrap(), b"");
    assert_eq!(
        g.directory(&mut xs, "/local/domain/1/data/a").unwrap(),
        ["b"]
    );
    // Binary values with NULs survive.
    g.write(&mut xs, "data/bin", b"x\0y\0").unwrap();
    assert_eq!(g.read(&mut xs, "data/bin").unwrap(), b"x\0y\0");
    // Empty value.
    g.write(&mut xs, "data/empty", b"").unwrap();
    assert_eq!(g.read(&mut xs, "data/empty").unwrap(), b"");
    // mkdir keeps an existing value.
    g.mkdir(&mut xs, "data/bin").unwrap();
    assert_eq!(g.read(&mut xs, "data/bin").unwrap(), b"x\0y\0");
    g.mkdir(&mut xs, "data/d1/d2").unwrap();
    assert_eq!(
        g.directory(&mut xs, "data").unwrap(),
        ["a", "bin", "empty", "d1"]
    );
    // rm takes the subtree.
    g.rm(&mut xs, "data/a").unwrap();
    assert_eq!(g.read(&mut xs, "data/a/b/c"), Err(XsError::ENOENT));
    assert_eq!(g.read(&mut xs, "data/a"), Err(XsError::ENOENT));
    assert_eq!(
        g.directory(&mut xs, "data").unwrap(),
        ["bin", "empty", "d1"]
    );
    // Absent node with a parent: fine; without: ENOENT.
    g.rm(&mut xs, "data/a").unwrap();
    assert_eq!(g.rm(&mut xs, "data/a/b"), Err(XsError::ENOENT));
    assert_eq!(
        xs.usage(1).nodes,
        3 + 4,
        "data, device, control + bin, empty, d1, d2"
    );
}

#[test]
fn relative_paths_resolve_under_the_domains_home() {
    let (mut xs, tool) = store_with_guests(2);
    let mut g = Guest::new(2);
    g.write(&mut xs, "data/x", b"1").unwrap();
    assert_eq!(xs.read(tool, 0, "/local/domain/2/data/x").unwrap(), b"1");
    assert_eq!(g.read(&mut xs, "name").unwrap(), b"guest2");
    // dom0's relative paths resolve under /local/domain/0.
    xs.write(tool, 0, "zero", b"z").unwrap();
    assert_eq!(xs.read(tool, 0, "/local/domain/0/zero").unwrap(), b"z");
}

#[test]
fn rm_of_root_is_refused() {
    let mut xs = Xenstored::new();
    let c = xs.open_local();
    assert_eq!(xs.rm(c, 0, "/"), Err(XsError::EINVAL));
}

#[test]
fn invalid_paths_are_einval() {
    let (mut xs, _) = store_with_guests(1);
    let mut g = Guest::new(1);
    for bad in ["/a/", "/a//b", "/a b", "/a.b", "data/", "data//x", ""] {
        assert_eq!(g.write(&mut xs, bad, b"v"), Err(XsError::EINVAL), "{bad:?}");
        assert_eq!(g.read(&mut xs, bad), Err(XsError::EINVAL), "{bad:?}");
    }
    // A guest's relative path may not be longer than 2048.
    // (Built of short components: one long name would make its parent's node too big.)
    let mut fits = String::from("data");
    while fits.len() + 100 <= 2048 {
        fits.push('/');
        fits.push_str(&"x".repeat(99));
    }
    fits.push('/');
    fits.push_str(&"y".repeat(2048 - fits.len()));
    assert_eq!(fits.len(), 2048);
    g.write(&mut xs, &fits, b"v").unwrap();
    let long = format!("{fits}z");
    assert_eq!(g.write(&mut xs, &long, b"v"), Err(XsError::EINVAL));
}

#[test]
fn malformed_payloads_are_einval() {
    let (mut xs, _) = store_with_guests(1);
    let mut g = Guest::new(1);
    // Unterminated strings.
    assert_eq!(
        g.raw(&mut xs, XsType::Read as u32, 0, b"data"),
        Err(XsError::EINVAL)
    );
    assert_eq!(
        g.raw(&mut xs, XsType::Write as u32, 0, b"data"),
        Err(XsError::EINVAL)
    );
    assert_eq!(
        g.raw(&mut xs, XsType::Mkdir as u32, 0, b""),
        Err(XsError::EINVAL)
    );
    assert_eq!(
        g.raw(&mut xs, XsType::Rm as u32, 0, b"data\0x\0"),
        Err(XsError::EINVAL)
    );
    assert_eq!(
        g.raw(&mut xs, XsType::Watch as u32, 0, b"data\0"),
        Err(XsError::EINVAL)
    );
    assert_eq!(
        g.raw(&mut xs, XsType::Watch as u32, 0, b"data\0tok"),
        Err(XsError::EINVAL)
    );
    assert_eq!(
        g.raw(&mut xs, XsType::SetPerms as u32, 0, b"data\0"),
        Err(XsError::EINVAL)
    );
    assert_eq!(
        g.raw(&mut xs, XsType::SetPerms as u32, 0, b"data\0q1\0"),
        Err(XsError::EINVAL)
    );
    assert_eq!(
        g.raw(&mut xs, XsType::TransactionEnd as u32, 0, b"X\0"),
        Err(XsError::EINVAL)
    );
    assert_eq!(
        g.raw(&mut xs, XsType::GetDomainPath as u32, 0, b"abc\0"),
        Err(XsError::EINVAL)
    );
    assert_eq!(
        g.raw(&mut xs, XsType::DirectoryPart as u32, 0, b"data\0"),
        Err(XsError::EINVAL)
    );
    // Not UTF-8.
    assert_eq!(
        g.raw(&mut xs, XsType::Read as u32, 0, b"\xff\xfe\0"),
        Err(XsError::EINVAL)
    );
    // Nothing broke.
    g.write(&mut xs, "data/ok", b"1").unwrap();
}

#[test]
fn unknown_and_reply_only_types_get_enosys() {
    let (mut xs, _) = store_with_guests(1);
    let mut g = Guest::new(1);
    assert_eq!(
        g.raw(&mut xs, XsType::WatchEvent as u32, 0, b""),
        Err(XsError::ENOSYS)
    );
    assert_eq!(
        g.raw(&mut xs, XsType::Error as u32, 0, b""),
        Err(XsError::ENOSYS)
    );
}

#[test]
fn privileged_operations_are_eacces_for_guests() {
    let (mut xs, _) = store_with_guests(2);
    let mut g = Guest::new(1);
    assert_eq!(
        g.call(&mut xs, XsType::Introduce, 0, &[b"5", b"1", b"3"], false),
        Err(XsError::EACCES)
    );
    assert_eq!(
        g.call(&mut xs, XsType::Release, 0, &[b"2"], false),
        Err(XsError::EACCES)
    );
    assert_eq!(
        g.call(&mut xs, XsType::IsDomainIntroduced, 0, &[b"2"], false),
        Err(XsError::EACCES)
    );
    assert_eq!(
        g.call(&mut xs, XsType::Resume, 0, &[b"2"], false),
        Err(XsError::EACCES)
    );
    assert_eq!(
        g.call(&mut xs, XsType::SetTarget, 0, &[b"1", b"2"], false),
        Err(XsError::EACCES)
    );
    assert_eq!(
        g.call(&mut xs, XsType::Control, 0, &[b"check"], false),
        Err(XsError::EACCES)
    );
    assert!(xs.is_domain_introduced(2));
}

#[test]
fn get_domain_path_and_introduced() {
    let (mut xs, _) = store_with_guests(1);
    let mut g = Guest::new(1);
    assert_eq!(
        g.call(&mut xs, XsType::GetDomainPath, 0, &[b"7"], false)
            .unwrap(),
        b"/local/domain/7\0"
    );
    assert_eq!(xs.get_domain_path(3), "/local/domain/3");
    assert!(xs.is_domain_introduced(0));
    assert!(xs.is_domain_introduced(1));
    assert!(!xs.is_domain_introduced(2));
    assert!(xs.is_domain_introduced(keel_xenstored::DOMID_SELF));
}

#[test]
fn directory_too_large_is_e2big_and_directory_part_pages_it() {
    let mut xs = Xenstored::new();
    let c = xs.open_local();
    let mut names = Vec::new();
    for i in 0..300 {
        let n = format!("child-with-a-long-name-{i:04}");
        xs.mkdir(c, 0, &format!("/big/{n}")).unwrap();
        names.push(n);
    }
    assert_eq!(xs.directory(c, 0, "/big"), Err(XsError::E2BIG));
    // Page through with XS_DIRECTORY_PART (over the wire, as dom0 sees it: use a guest
    // granted read).
    xs.set_perms(
        c,
        0,
        "/big",
        &[keel_xenstored::Perm::new(0, keel_xenstored::Access::Read)],
    )
    .unwrap();
    xs.introduce_domain(4, 9).unwrap();
    let mut g = Guest::new(4);
    let mut got: Vec<String> = Vec::new();
    let mut offset = 0usize;
    let mut generation = None;
    loop {
        let off = offset.to_string();
        let p = g
            .call(
                &mut xs,
                XsType::DirectoryPart,
                0,
                &[b"/big", off.as_bytes()],
                false,
            )
            .unwrap();
        assert!(p.len() <= 4096);
        let parts: Vec<&[u8]> = p.split(|&b| b == 0).collect();
        let gen = std::str::from_utf8(parts[0]).unwrap().to_string();
        assert_eq!(
            *generation.get_or_insert(gen.clone()),
            gen,
            "stable generation"
        );
        let body = &p[parts[0].len() + 1..];
        let done = body.ends_with(b"\0\0") || body == b"\0";
        for n in body.split(|&b| b == 0).filter(|s| !s.is_empty()) {
            offset += n.len() + 1;
            got.push(String::from_utf8(n.to_vec()).unwrap());
        }
        if done {
            break;
        }
    }
    assert_eq!(got, names);
}

#[test]
fn control_is_refused() {
    let mut xs = Xenstored::new();
    xs.introduce_domain(3, 5).unwrap();
    // Keel's xenstored has no control commands; a guest is refused as unprivileged.
    let mut g = Guest::new(3);
    assert_eq!(
        g.call(&mut xs, XsType::Control, 0, &[b"check"], false),
        Err(XsError::EACCES)
    );
}

#[test]
fn replies_echo_request_ids() {
    let (mut xs, _) = store_with_guests(1);
    let msg = XsMessage {
        kind: XsType::Read,
        req_id: 0xdead_beef,
        tx_id: 0,
        payload: b"name\0".to_vec(),
    };
    xs.handle(1, &msg).unwrap();
    let r = xs.take_message(1).unwrap();
    assert_eq!((r.kind, r.req_id, r.tx_id), (XsType::Read, 0xdead_beef, 0));
    assert_eq!(r.payload, b"guest1");
}

#[test]
fn local_api_round_trip() {
    let mut xs = Xenstored::new();
    let c = xs.open_local();
    xs.write(c, 0, "/vm/abc/name", b"x").unwrap();
    assert_eq!(xs.read(c, 0, "/vm/abc/name").unwrap(), b"x");
    assert_eq!(xs.directory(c, 0, "/vm").unwrap(), ["abc"]);
    assert_eq!(xs.read(c, 0, "/vm/nope"), Err(XsError::ENOENT));
    assert_eq!(xs.write(c, 0, "/bad\0path", b"x"), Err(XsError::EINVAL));
    xs.rm(c, 0, "/vm").unwrap();
    assert_eq!(xs.directory(c, 0, "/").unwrap(), ["tool"]);
    xs.close_local(c);
    assert_eq!(xs.read(c, 0, "/"), Err(XsError::EINVAL));
}
