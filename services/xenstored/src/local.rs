//! The in-process API for Keel's own services (toolstack, backends): the same operations
//! and semantics as the wire protocol, as dom0 (privileged), without encoding round trips
//! for the caller. `tx` is a transaction id from [`Xenstored::transaction_start`], or 0.

use alloc::string::String;
use alloc::vec::Vec;

use keel_xen::xenstore_wire::{XsError, XsType};

use crate::args::{strings, text};
use crate::daemon::{LocalClient, Xenstored};
use crate::perms::Perm;

impl Xenstored {
    /// `XS_READ`.
    pub fn read(&mut self, c: LocalClient, tx: u32, path: &str) -> Result<Vec<u8>, XsError> {
        self.local_call(c, XsType::Read, tx, &[path.as_bytes()], false)
    }

    /// `XS_WRITE` (creates missing parents).
    pub fn write(
        &mut self,
        c: LocalClient,
        tx: u32,
        path: &str,
        value: &[u8],
    ) -> Result<(), XsError> {
        self.local_call(c, XsType::Write, tx, &[path.as_bytes(), value], true)
            .map(drop)
    }

    /// `XS_MKDIR`.
    pub fn mkdir(&mut self, c: LocalClient, tx: u32, path: &str) -> Result<(), XsError> {
        self.local_call(c, XsType::Mkdir, tx, &[path.as_bytes()], false)
            .map(drop)
    }

    /// `XS_RM` (the whole subtree; not an error if absent while its parent exists).
    pub fn rm(&mut self, c: LocalClient, tx: u32, path: &str) -> Result<(), XsError> {
        self.local_call(c, XsType::Rm, tx, &[path.as_bytes()], false)
            .map(drop)
    }

    /// `XS_DIRECTORY`: child names in creation order.
    pub fn directory(
        &mut self,
        c: LocalClient,
        tx: u32,
        path: &str,
    ) -> Result<Vec<String>, XsError> {
        let raw = self.local_call(c, XsType::Directory, tx, &[path.as_bytes()], false)?;
        strings(&raw)
            .into_iter()
            .map(|s| text(s).map(String::from))
            .collect()
    }

    /// `XS_GET_PERMS`.
    pub fn get_perms(&mut self, c: LocalClient, tx: u32, path: &str) -> Result<Vec<Perm>, XsError> {
        let raw = self.local_call(c, XsType::GetPerms, tx, &[path.as_bytes()], false)?;
        strings(&raw).into_iter().map(Perm::parse).collect()
    }

    /// `XS_SET_PERMS`: `perms[0]` is the owner and everyone else's access.
    pub fn set_perms(
        &mut self,
        c: LocalClient,
        tx: u32,
        path: &str,
        perms: &[Perm],
    ) -> Result<(), XsError> {
        let wire: Vec<String> = perms.iter().map(|p| p.to_wire()).collect();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(perms.len() + 1);
        parts.push(path.as_bytes());
        parts.extend(wire.iter().map(|s| s.as_bytes()));
        self.local_call(c, XsType::SetPerms, tx, &parts, false)
            .map(drop)
    }

    /// `XS_TRANSACTION_START`: the new transaction's id.
    pub fn transaction_start(&mut self, c: LocalClient) -> Result<u32, XsError> {
        let raw = self.local_call(c, XsType::TransactionStart, 0, &[b""], false)?;
        let digits = raw.strip_suffix(b"\0").unwrap_or(&raw);
        crate::args::number(digits).and_then(|n| u32::try_from(n).map_err(|_| XsError::EINVAL))
    }

    /// `XS_TRANSACTION_END`: commit (EAGAIN on conflict: retry the transaction) or abort.
    pub fn transaction_end(
        &mut self,
        c: LocalClient,
        tx: u32,
        commit: bool,
    ) -> Result<(), XsError> {
        let arg: &[u8] = if commit { b"T" } else { b"F" };
        self.local_call(c, XsType::TransactionEnd, tx, &[arg], false)
            .map(drop)
    }

    /// `XS_WATCH`: events arrive through [`Xenstored::poll_event`]; the first one at once.
    pub fn watch(&mut self, c: LocalClient, path: &str, token: &str) -> Result<(), XsError> {
        self.local_call(
            c,
            XsType::Watch,
            0,
            &[path.as_bytes(), token.as_bytes()],
            false,
        )
        .map(drop)
    }

    /// `XS_UNWATCH`.
    pub fn unwatch(&mut self, c: LocalClient, path: &str, token: &str) -> Result<(), XsError> {
        self.local_call(
            c,
            XsType::Unwatch,
            0,
            &[path.as_bytes(), token.as_bytes()],
            false,
        )
        .map(drop)
    }

    /// `XS_RESET_WATCHES`: drops the client's watches and transactions.
    pub fn reset_watches(&mut self, c: LocalClient) -> Result<(), XsError> {
        self.local_call(c, XsType::ResetWatches, 0, &[b""], false)
            .map(drop)
    }

    /// `XS_GET_DOMAIN_PATH`.
    pub fn get_domain_path(&self, domid: u16) -> String {
        crate::path::domain_path(domid)
    }
}
