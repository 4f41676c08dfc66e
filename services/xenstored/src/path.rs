//! Node names: validation, relative-path resolution and the parent/child relations
//! (`is_valid_nodename`, `canonicalize`, `get_parent`, `is_child` in Xen's xenstored).

use alloc::format;
use alloc::string::String;

use keel_xen::xenstore_wire::XENSTORE_ABS_PATH_MAX;

/// `/local/domain/<domid>`, the base of a domain's relative paths.
pub fn domain_path(domid: u16) -> String {
    format!("/local/domain/{domid}")
}

/// Resolves a path as sent by `domid`: absolute paths and `@` special names stay as they
/// are; anything else is relative to the domain's home.
pub fn canonicalize(domid: u16, path: &str) -> String {
    if path.starts_with('/') || path.starts_with('@') {
        String::from(path)
    } else {
        format!("/local/domain/{domid}/{path}")
    }
}

/// Whether `path` names a node: absolute, no empty component, no trailing slash except the
/// root, only `[A-Za-z0-9-/_@]`, and at most `max_rel` bytes beyond `/local/domain/<id>/`
/// (and never more than `XENSTORE_ABS_PATH_MAX`).
pub fn is_valid_node(path: &str, max_rel: usize) -> bool {
    if !path.starts_with('/') {
        return false;
    }
    if path.len() > 1 && path.ends_with('/') {
        return false;
    }
    if path.contains("//") {
        return false;
    }
    if path.len() > XENSTORE_ABS_PATH_MAX {
        return false;
    }
    if path.len() > local_prefix_len(path) + max_rel {
        return false;
    }
    path.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@'))
}

/// Length of a leading `/local/domain/<up to 5 digits>/`, or 0 (Xen's `sscanf` with `%5u/%n`).
fn local_prefix_len(path: &str) -> usize {
    const PREFIX: &str = "/local/domain/";
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return 0;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 5 || rest.as_bytes().get(digits) != Some(&b'/') {
        return 0;
    }
    PREFIX.len() + digits + 1
}

/// The parent of a valid path other than `/`.
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// The last component of a valid path other than `/`.
pub fn basename(path: &str) -> &str {
    path.rfind('/').map_or(path, |i| &path[i + 1..])
}

/// `parent/name`.
pub fn child(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Whether `path` is `ancestor` or lies below it (everything lies below `/`).
pub fn is_child(path: &str, ancestor: &str) -> bool {
    if ancestor == "/" {
        return true;
    }
    match path.strip_prefix(ancestor) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_follows_xenstored() {
        assert!(is_valid_node("/", 2048));
        assert!(is_valid_node("/local/domain/1/device/vbd/51712", 2048));
        assert!(is_valid_node("/a-b_c@d", 2048));
        assert!(!is_valid_node("", 2048));
        assert!(!is_valid_node("a", 2048));
        assert!(!is_valid_node("/a/", 2048));
        assert!(!is_valid_node("/a//b", 2048));
        assert!(!is_valid_node("/a b", 2048));
        assert!(!is_valid_node("/a.b", 2048));
        assert!(!is_valid_node("/a\u{e9}", 2048));
        // Relative length counts from the domain's home.
        let long = alloc::format!("/local/domain/7/{}", "x".repeat(2048));
        assert!(is_valid_node(&long, 2048));
        let longer = alloc::format!("/local/domain/7/{}", "x".repeat(2049));
        assert!(!is_valid_node(&longer, 2048));
        let outside = alloc::format!("/{}", "x".repeat(2048));
        assert!(!is_valid_node(&outside, 2048));
        // Never past the absolute maximum.
        let huge = alloc::format!("/local/domain/7/{}", "x".repeat(3100));
        assert!(!is_valid_node(&huge, 4000));
    }

    #[test]
    fn relations() {
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/a/b/c"), "/a/b");
        assert_eq!(basename("/a/b/c"), "c");
        assert_eq!(child("/", "a"), "/a");
        assert_eq!(child("/a", "b"), "/a/b");
        assert!(is_child("/a/b", "/a"));
        assert!(is_child("/a", "/a"));
        assert!(!is_child("/ab", "/a"));
        assert!(is_child("/x", "/"));
        assert_eq!(canonicalize(3, "x/y"), "/local/domain/3/x/y");
        assert_eq!(canonicalize(3, "/x"), "/x");
        assert_eq!(canonicalize(3, "@releaseDomain"), "@releaseDomain");
    }
}
