//! Xen's permission model (`perm_for_conn` in xenstored_core.c): the first entry of a node's
//! list names its owner and the access everyone else gets by default; later entries grant
//! one domain its own access. The owner, and privileged callers, may do everything.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

use keel_xen::xenstore_wire::XsError;

/// What a permission entry grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `n`: nothing.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

impl Access {
    fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }

    fn rights(self) -> Rights {
        match self {
            Access::None => Rights::NONE,
            Access::Read => Rights::READ,
            Access::Write => Rights::WRITE,
            Access::Both => Rights::READ.union(Rights::WRITE),
        }
    }
}

/// One entry of a permission list, `<letter><domid>` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    pub domid: u16,
    pub access: Access,
}

impl Perm {
    pub const fn new(domid: u16, access: Access) -> Self {
        Perm { domid, access }
    }

    /// Parses `r5`, `n0`, …: one letter and a decimal domain id.
    pub fn parse(s: &[u8]) -> Result<Perm, XsError> {
        let (&letter, digits) = s.split_first().ok_or(XsError::EINVAL)?;
        let access = match letter {
            b'n' => Access::None,
            b'r' => Access::Read,
            b'w' => Access::Write,
            b'b' => Access::Both,
            _ => return Err(XsError::EINVAL),
        };
        let domid = parse_domid(digits).ok_or(XsError::EINVAL)?;
        Ok(Perm { domid, access })
    }

    /// The wire form.
    pub fn to_wire(self) -> String {
        let mut s = String::new();
        s.push(self.access.letter());
        let _ = write!(s, "{}", self.domid);
        s
    }
}

/// A decimal domain id (at most 65535), as sent in payloads.
pub fn parse_domid(digits: &[u8]) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = digits
        .iter()
        .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    u16::try_from(v).ok()
}

/// The rights a caller has on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rights(u8);

impl Rights {
    pub const NONE: Rights = Rights(0);
    pub const READ: Rights = Rights(1);
    pub const WRITE: Rights = Rights(2);
    /// May change the node's permissions.
    pub const OWNER: Rights = Rights(4);
    pub const ALL: Rights = Rights(7);

    pub const fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }
    /// All of `wanted` is granted.
    pub const fn contains(self, wanted: Rights) -> bool {
        self.0 & wanted.0 == wanted.0
    }
    /// Some of `wanted` is granted (Xen's `parent_perm & perm` when masking errors).
    pub const fn intersects(self, wanted: Rights) -> bool {
        self.0 & wanted.0 != 0
    }
}

/// A node's permission list: never empty (the first entry is the owner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Perms(Vec<Perm>);

impl Perms {
    /// A one-entry list: `owner`, and what everyone else gets.
    pub fn owned_by(owner: u16, others: Access) -> Perms {
        Perms(alloc::vec![Perm::new(owner, others)])
    }

    /// A list from entries; `None` when empty.
    pub fn from_entries(entries: Vec<Perm>) -> Option<Perms> {
        (!entries.is_empty()).then_some(Perms(entries))
    }

    pub fn owner(&self) -> u16 {
        self.0[0].domid
    }

    pub fn entries(&self) -> &[Perm] {
        &self.0
    }

    /// Number of entries (at least 1).
    pub fn count(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn set_owner(&mut self, owner: u16) {
        self.0[0].domid = owner;
    }

    /// Whether an ACL entry (not the owner) names `domid`.
    pub(crate) fn grants(&self, domid: u16) -> bool {
        self.0[1..].iter().any(|p| p.domid == domid)
    }

    /// Removes every ACL entry naming `domid` (Xen's `remove_domid_from_perm`), so that a
    /// later domain reusing the id inherits nothing.
    pub(crate) fn forget_domain(&mut self, domid: u16) {
        let owner = self.0[0];
        self.0.retain(|p| p.domid != domid);
        if self.0.first() != Some(&owner) {
            self.0.insert(0, owner);
        }
    }

    /// The rights of `caller` (Xen's `perm_for_conn`).
    pub fn rights_for(&self, caller: &Caller) -> Rights {
        if caller.privileged || self.owner() == caller.domid || caller.target == Some(self.owner())
        {
            return Rights::ALL;
        }
        for p in &self.0[1..] {
            if p.domid == caller.domid || caller.target == Some(p.domid) {
                return p.access.rights();
            }
        }
        self.0[0].access.rights()
    }

    /// The `GET_PERMS` reply: each entry followed by a NUL.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.0 {
            out.extend_from_slice(p.to_wire().as_bytes());
            out.push(0);
        }
        out
    }
}

/// Who is asking: a domain id, whether it is privileged (dom0, and Keel's own services),
/// and the domain it acts for after `SET_TARGET` (a device model for its guest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub domid: u16,
    pub privileged: bool,
    pub target: Option<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(domid: u16) -> Caller {
        Caller {
            domid,
            privileged: false,
            target: None,
        }
    }

    #[test]
    fn parse_and_format() {
        assert_eq!(Perm::parse(b"r5"), Ok(Perm::new(5, Access::Read)));
        assert_eq!(Perm::parse(b"b65535"), Ok(Perm::new(65535, Access::Both)));
        assert_eq!(Perm::parse(b"x5"), Err(XsError::EINVAL));
        assert_eq!(Perm::parse(b"r"), Err(XsError::EINVAL));
        assert_eq!(Perm::parse(b"r65536"), Err(XsError::EINVAL));
        assert_eq!(Perm::parse(b"r-1"), Err(XsError::EINVAL));
        assert_eq!(Perm::parse(b""), Err(XsError::EINVAL));
        assert_eq!(Perm::new(7, Access::Write).to_wire(), "w7");
    }

    #[test]
    fn owner_acl_default_and_privilege() {
        let perms = Perms::from_entries(alloc::vec![
            Perm::new(3, Access::None),
            Perm::new(5, Access::Read),
            Perm::new(6, Access::Write),
        ])
        .unwrap();
        assert_eq!(perms.rights_for(&guest(3)), Rights::ALL);
        assert_eq!(perms.rights_for(&guest(5)), Rights::READ);
        assert_eq!(perms.rights_for(&guest(6)), Rights::WRITE);
        assert_eq!(perms.rights_for(&guest(7)), Rights::NONE);
        let dom0 = Caller {
            domid: 0,
            privileged: true,
            target: None,
        };
        assert_eq!(perms.rights_for(&dom0), Rights::ALL);
        let dm = Caller {
            domid: 9,
            privileged: false,
            target: Some(3),
        };
        assert_eq!(perms.rights_for(&dm), Rights::ALL);
    }

    #[test]
    fn forgetting_a_domain_keeps_the_owner() {
        let mut perms = Perms::from_entries(alloc::vec![
            Perm::new(3, Access::None),
            Perm::new(5, Access::Read),
            Perm::new(3, Access::Read),
        ])
        .unwrap();
        assert!(perms.grants(5));
        perms.forget_domain(5);
        assert_eq!(
            perms.entries(),
            &[Perm::new(3, Access::None), Perm::new(3, Access::Read)]
        );
        perms.forget_domain(3);
        assert_eq!(perms.entries(), &[Perm::new(3, Access::None)]);
    }
}
