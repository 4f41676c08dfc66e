//! The xenstore nodes a new domain gets (what libxl writes in `libxl__domain_make` and
//! `build_post`, and for the primary console), as data: a pure function from the built
//! domain to a list of nodes, applied by the toolstack and checked by tests.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::builder::BuiltDomain;
use crate::store::{Access, Perm};

/// `/local/domain/<domid>`.
pub fn domain_path(domid: u16) -> String {
    format!("/local/domain/{domid}")
}

/// `/vm/<uuid>`.
pub fn vm_path(uuid: &[u8; 16]) -> String {
    format!("/vm/{}", format_uuid(uuid))
}

/// The node the guest acknowledges shutdown requests in.
pub fn shutdown_path(domid: u16) -> String {
    format!("/local/domain/{domid}/control/shutdown")
}

/// Lower-case 8-4-4-4-12 hex, as libxl prints `libxl_uuid`.
pub fn format_uuid(uuid: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in uuid.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `console/limit` libxl writes (bytes xenconsoled buffers); informational for guests.
pub const CONSOLE_LIMIT: u32 = 1_048_576;

/// One node to create: a value (`None` = a directory made with `mkdir`) and optionally an
/// explicit permission list (otherwise inherited from the parent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkeletonNode {
    pub path: String,
    pub value: Option<String>,
    pub perms: Option<Vec<Perm>>,
}

/// What the skeleton needs beyond the built domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity<'a> {
    pub uuid: &'a [u8; 16],
    pub name: &'a str,
    /// Wall-clock start time, nanoseconds since the Unix epoch (`/vm/<uuid>/start_time`).
    pub start_time_unix_ns: u64,
    /// vCPUs `0..vcpus_online` are `online`, the rest up to the built count `offline`.
    pub vcpus_online: u32,
    /// Extra `(relative key, value)` nodes under `/local/domain/<id>` (XenAPI
    /// `VM.xenstore_data`), checked with [`check_xenstore_data_key`].
    pub xenstore_data: &'a [(String, String)],
}

/// First path components the toolstack writes itself; `xenstore_data` may not use them.
pub const RESERVED_COMPONENTS: [&str; 9] = [
    "vm", "name", "domid", "memory", "cpu", "store", "control", "console", "device",
];

/// Why an `xenstore_data` key was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XenstoreDataError {
    /// Empty, absolute, with empty, `.` or `..` components, or characters xenstore refuses
    /// (it allows `A-Za-z0-9-/_@`).
    Malformed(String),
    /// It would replace a node the toolstack writes.
    Reserved(String),
}

/// Checks one `xenstore_data` key (a path relative to `/local/domain/<id>`).
pub fn check_xenstore_data_key(key: &str) -> Result<(), XenstoreDataError> {
    let well_formed = !key.is_empty()
        && key.len() <= 1024
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@'))
        && key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !well_formed {
        return Err(XenstoreDataError::Malformed(key.into()));
    }
    let first = key.split('/').next().unwrap_or(key);
    if RESERVED_COMPONENTS.contains(&first) {
        return Err(XenstoreDataError::Reserved(key.into()));
    }
    Ok(())
}

/// Nodes for `built`, in creation order (parents first).
///
/// Permissions follow libxl: the domain's directory and `cpu`, `memory`, `device`,
/// `control`, `console` are dom0's and readable by the guest (`[n0, r<id>]`); the nodes
/// the guest itself writes — `control/shutdown`, `control/feature-*`, `control/sysrq`,
/// `data`, `drivers`, `feature`, `attr`, `error` — are the guest's (`[n<id>]`).
/// `/vm/<uuid>` is dom0's, readable by the guest.
pub fn skeleton(built: &BuiltDomain, id: &Identity<'_>) -> Vec<SkeletonNode> {
    let d = built.domid;
    let dom = domain_path(d);
    let vm = vm_path(id.uuid);
    let read_only = vec![Perm::new(0, Access::None), Perm::new(d, Access::Read)];
    let guest_owned = vec![Perm::new(d, Access::None)];

    let mut nodes = Vec::new();
    let mut dir = |path: String, perms: &Vec<Perm>| {
        nodes.push(SkeletonNode {
            path,
            value: None,
            perms: Some(perms.clone()),
        })
    };
    dir(dom.clone(), &read_only);
    dir(vm.clone(), &read_only);
    for sub in ["cpu", "memory", "device", "control", "console"] {
        dir(format!("{dom}/{sub}"), &read_only);
    }
    for sub in ["data", "drivers", "feature", "attr", "error"] {
        dir(format!("{dom}/{sub}"), &guest_owned);
    }

    let mut value = |path: String, v: String, perms: Option<&Vec<Perm>>| {
        nodes.push(SkeletonNode {
            path,
            value: Some(v),
            perms: perms.cloned(),
        })
    };
    value(format!("{dom}/vm"), vm.clone(), None);
    value(format!("{dom}/name"), id.name.into(), None);
    value(format!("{dom}/domid"), format!("{d}"), None);
    value(
        format!("{dom}/memory/static-max"),
        format!("{}", built.memory_static_max_kib),
        None,
    );
    value(
        format!("{dom}/memory/target"),
        format!("{}", built.memory_target_kib),
        None,
    );
    for cpu in 0..built.vcpus {
        value(
            format!("{dom}/cpu/{cpu}/availability"),
            cpu_availability(cpu < id.vcpus_online).into(),
            None,
        );
    }
    value(
        format!("{dom}/store/port"),
        format!("{}", built.store_port),
        None,
    );
    value(
        format!("{dom}/store/ring-ref"),
        format!("{}", built.store_gfn),
        None,
    );
    for feature in ["multiprocessor-suspend", "xs_reset_watches"] {
        value(
            format!("{dom}/control/platform-feature-{feature}"),
            "1".into(),
            None,
        );
    }
    for node in [
        "shutdown",
        "feature-poweroff",
        "feature-reboot",
        "feature-suspend",
        "sysrq",
    ] {
        value(
            format!("{dom}/control/{node}"),
            String::new(),
            Some(&guest_owned),
        );
    }
    let console = [
        ("backend", format!("/local/domain/0/backend/console/{d}/0")),
        ("backend-id", "0".into()),
        ("limit", format!("{CONSOLE_LIMIT}")),
        ("type", "xenconsoled".into()),
        ("output", "pty".into()),
        ("tty", String::new()),
        ("port", format!("{}", built.console_port)),
        ("ring-ref", format!("{}", built.console_gfn)),
    ];
    for (key, v) in console {
        value(format!("{dom}/console/{key}"), v, None);
    }
    value(format!("{vm}/uuid"), format_uuid(id.uuid), None);
    value(format!("{vm}/name"), id.name.into(), None);
    let secs = id.start_time_unix_ns / 1_000_000_000;
    let centis = (id.start_time_unix_ns % 1_000_000_000) / 10_000_000;
    value(
        format!("{vm}/start_time"),
        format!("{secs}.{centis:02}"),
        None,
    );
    for (key, v) in id.xenstore_data {
        value(format!("{dom}/{key}"), v.clone(), None);
    }
    nodes
}

/// `cpu/<n>/availability`.
pub fn cpu_availability(online: bool) -> &'static str {
    if online {
        "online"
    } else {
        "offline"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built() -> BuiltDomain {
        BuiltDomain {
            domid: 7,
            vcpus: 2,
            memory_static_max_kib: 262_144,
            memory_target_kib: 262_144,
            store_port: 3,
            store_gfn: 0xfeffc,
            console_port: 4,
            console_gfn: 0xfefff,
        }
    }

    const UUID: [u8; 16] = [
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef,
    ];

    fn find<'a>(nodes: &'a [SkeletonNode], path: &str) -> &'a SkeletonNode {
        nodes
            .iter()
            .find(|n| n.path == path)
            .unwrap_or_else(|| panic!("no node {path}"))
    }

    #[test]
    fn uuid_is_printed_like_libxl() {
        assert_eq!(format_uuid(&UUID), "12345678-9abc-def0-0123-456789abcdef");
    }

    #[test]
    fn values_match_libxl() {
        let data = [("vm-data/role".into(), "db".into())];
        let id = Identity {
            uuid: &UUID,
            name: "web",
            start_time_unix_ns: 1_700_000_000_123_456_789,
            vcpus_online: 1,
            xenstore_data: &data,
        };
        let nodes = skeleton(&built(), &id);
        let v = |p: &str| find(&nodes, p).value.clone().unwrap();
        let vm = "/vm/12345678-9abc-def0-0123-456789abcdef";
        assert_eq!(v("/local/domain/7/vm"), vm);
        assert_eq!(v("/local/domain/7/name"), "web");
        assert_eq!(v("/local/domain/7/domid"), "7");
        assert_eq!(v("/local/domain/7/memory/static-max"), "262144");
        assert_eq!(v("/local/domain/7/memory/target"), "262144");
        assert_eq!(v("/local/domain/7/cpu/0/availability"), "online");
        assert_eq!(v("/local/domain/7/cpu/1/availability"), "offline");
        assert_eq!(v("/local/domain/7/vm-data/role"), "db");
        assert!(nodes.iter().all(|n| !n.path.contains("/cpu/2")));
        assert_eq!(v("/local/domain/7/store/port"), "3");
        assert_eq!(v("/local/domain/7/store/ring-ref"), "1044476");
        assert_eq!(v("/local/domain/7/console/ring-ref"), "1044479");
        assert_eq!(v("/local/domain/7/console/port"), "4");
        assert_eq!(v("/local/domain/7/console/type"), "xenconsoled");
        assert_eq!(
            v("/local/domain/7/control/platform-feature-multiprocessor-suspend"),
            "1"
        );
        assert_eq!(
            v("/local/domain/7/control/platform-feature-xs_reset_watches"),
            "1"
        );
        assert_eq!(
            v(&format!("{vm}/uuid")),
            "12345678-9abc-def0-0123-456789abcdef"
        );
        assert_eq!(v(&format!("{vm}/name")), "web");
        assert_eq!(v(&format!("{vm}/start_time")), "1700000000.12");
    }

    #[test]
    fn permissions_match_libxl_and_parents_come_first() {
        let id = Identity {
            uuid: &UUID,
            name: "web",
            start_time_unix_ns: 0,
            vcpus_online: 2,
            xenstore_data: &[],
        };
        let nodes = skeleton(&built(), &id);
        let ro = Some(vec![Perm::new(0, Access::None), Perm::new(7, Access::Read)]);
        let guest = Some(vec![Perm::new(7, Access::None)]);
        for p in ["", "/cpu", "/memory", "/device", "/control", "/console"] {
            assert_eq!(
                find(&nodes, &format!("/local/domain/7{p}")).perms,
                ro,
                "{p}"
            );
        }
        assert_eq!(
            find(&nodes, "/vm/12345678-9abc-def0-0123-456789abcdef").perms,
            ro
        );
        for p in [
            "control/shutdown",
            "control/feature-poweroff",
            "control/feature-reboot",
            "control/sysrq",
            "data",
            "drivers",
            "feature",
            "attr",
            "error",
        ] {
            assert_eq!(
                find(&nodes, &format!("/local/domain/7/{p}")).perms,
                guest,
                "{p}"
            );
        }
        // Every node with explicit permissions appears after its parent directory.
        for (i, n) in nodes.iter().enumerate() {
            let parent = &n.path[..n.path.rfind('/').unwrap()];
            if let Some(j) = nodes.iter().position(|m| m.path == parent) {
                assert!(j < i, "{} before its parent", n.path);
            }
        }
    }

    #[test]
    fn xenstore_data_keys_are_checked() {
        for ok in ["vm-data/role", "x", "vm-data/a_b/@c-1", "data2"] {
            assert_eq!(check_xenstore_data_key(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "/abs", "a//b", "a/", "a/../b", ".", "sp ace", "nul\0", "é",
        ] {
            assert!(
                matches!(
                    check_xenstore_data_key(bad),
                    Err(XenstoreDataError::Malformed(_))
                ),
                "{bad}"
            );
        }
        assert!(check_xenstore_data_key(&"a".repeat(1025)).is_err());
        for reserved in [
            "name",
            "control/shutdown",
            "console/ring-ref",
            "cpu/0/availability",
        ] {
            assert_eq!(
                check_xenstore_data_key(reserved),
                Err(XenstoreDataError::Reserved(reserved.into()))
            );
        }
    }
}
