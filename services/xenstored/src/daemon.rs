//! The façade: connections by domain (and in-process clients), request dispatch with Xen's
//! order of checks (type, privilege, transaction), watch delivery, and domain lifecycle.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use keel_xen::xenstore_wire::{XsError, XsMessage, XsType, XENSTORE_PAYLOAD_MAX};

use crate::args::{count_strings, number, onearg, strings, text};
use crate::connection::{
    Channel, Connection, CutOff, LocalChannel, Outgoing, RawRequest, Watch, WatchEvent,
};
use crate::path::{canonicalize, domain_path, is_child, is_valid_node};
use crate::perms::{Access, Caller, Perm, Perms, Rights};
use crate::quota::{Quotas, LOCAL_EVENT_QUEUE_MAX};
use crate::transaction::Transaction;
use crate::tree::Tree;
use crate::view::{commit, Fire, View};

/// `DOMID_FIRST_RESERVED`: ids from here on are not domains.
pub const DOMID_FIRST_RESERVED: u16 = 0x7ff0;
/// `DOMID_SELF`.
pub const DOMID_SELF: u16 = 0x7ff0;

/// The special watch fired when a domain is introduced.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// The special watch fired when a domain shuts down, is released or destroyed.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// An in-process client of the store (one of Keel's services). Privileged, as dom0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalClient(u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ConnKey {
    Domain(u16),
    Local(u32),
}

/// Why a guest request was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleError {
    /// No such domain was introduced.
    NotIntroduced,
    /// The connection was cut off earlier.
    CutOff(CutOff),
    /// The domain has as many replies waiting as its quota allows, or holds its hard memory
    /// quota: it must read before it may send more.
    Busy,
}

/// What a domain holds, for the toolstack and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DomainUsage {
    pub nodes: usize,
    /// Bytes charged to the domain: its nodes, watches, queued output, transactions.
    pub memory: usize,
    pub watches: usize,
    pub transactions: usize,
    /// Replies queued and not yet taken.
    pub outstanding: usize,
    /// Messages (replies and events) queued.
    pub queued_messages: usize,
    /// Watch events dropped for this domain (memory quota, timeout).
    pub lost_events: u64,
}

/// xenstored.
pub struct Xenstored {
    pub(crate) tree: Tree,
    pub(crate) quotas: Quotas,
    pub(crate) conns: BTreeMap<ConnKey, Connection>,
    next_local: u32,
    introduce_perms: Perms,
    release_perms: Perms,
    pub(crate) now_ms: u64,
    /// First watch events of newly set watches, queued after the `WATCH` reply.
    deferred: Vec<(ConnKey, String, String)>,
}

impl Default for Xenstored {
    fn default() -> Self {
        Self::new()
    }
}

impl Xenstored {
    /// A store with Xen's initial tree and default quotas.
    pub fn new() -> Self {
        Self::with_quotas(Quotas::XEN_DEFAULT)
    }

    pub fn with_quotas(quotas: Quotas) -> Self {
        Xenstored {
            tree: Tree::new(),
            quotas,
            conns: BTreeMap::new(),
            next_local: 0,
            introduce_perms: Perms::owned_by(0, Access::None),
            release_perms: Perms::owned_by(0, Access::None),
            now_ms: 0,
            deferred: Vec::new(),
        }
    }

    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// The committed tree (read-only: for inspection and tests).
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    // ---------------------------------------------------------------- dispatch

    /// Processes one request of `key` and returns the reply payload (Xen's
    /// `process_message`: unknown type → ENOSYS, privileged-only type → EACCES, unknown
    /// transaction → ENOENT, then the operation).
    pub(crate) fn dispatch(
        &mut self,
        key: ConnKey,
        raw_kind: u32,
        tx_id: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, XsError> {
        let conn = self.conns.get(&key).ok_or(XsError::EINVAL)?;
        let caller = conn.caller;
        let kind = match XsType::from_raw(raw_kind) {
            Some(XsType::WatchEvent | XsType::Error) | None => return Err(XsError::ENOSYS),
            Some(k) => k,
        };
        let privileged_only = matches!(
            kind,
            XsType::Control
                | XsType::Introduce
                | XsType::Release
                | XsType::IsDomainIntroduced
                | XsType::Resume
                | XsType::SetTarget
        );
        if privileged_only && !caller.privileged {
            return Err(XsError::EACCES);
        }
        let tx = if matches!(kind, XsType::Watch | XsType::Unwatch) || tx_id == 0 {
            None
        } else if conn.transactions.contains_key(&tx_id) {
            Some(tx_id)
        } else {
            return Err(XsError::ENOENT);
        };
        let path = |p: &str| canonicalize(caller.domid, p);
        match kind {
            XsType::Read => {
                let p = path(onearg(payload)?);
                self.with_view(key, tx, |v| v.read(&p))
            }
            XsType::Write => {
                let nul = payload
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(XsError::EINVAL)?;
                let p = path(text(&payload[..nul])?);
                let value = &payload[nul + 1..];
                self.with_view(key, tx, |v| v.write(&p, value)).map(ok)
            }
            XsType::Mkdir => {
                let p = path(onearg(payload)?);
                self.with_view(key, tx, |v| v.mkdir(&p)).map(ok)
            }
            XsType::Rm => {
                let p = path(onearg(payload)?);
                self.with_view(key, tx, |v| v.rm(&p)).map(ok)
            }
            XsType::Directory => {
                let p = path(onearg(payload)?);
                self.with_view(key, tx, |v| v.directory(&p))
            }
            XsType::DirectoryPart => {
                let args = strings(payload);
                if count_strings(payload) != 2 {
                    return Err(XsError::EINVAL);
                }
                let p = path(text(args[0])?);
                let offset = usize::try_from(number(args[1])?).map_err(|_| XsError::EINVAL)?;
                self.with_view(key, tx, |v| v.directory_part(&p, offset))
            }
            XsType::GetPerms => {
                let p = path(onearg(payload)?);
                self.with_view(key, tx, |v| v.get_perms(&p))
            }
            XsType::SetPerms => self.op_set_perms(key, tx, payload).map(ok),
            XsType::Watch => self.op_watch(key, payload).map(ok),
            XsType::Unwatch => self.op_unwatch(key, payload).map(ok),
            XsType::TransactionStart => self.op_transaction_start(key, tx),
            XsType::TransactionEnd => self.op_transaction_end(key, tx, payload).map(ok),
            XsType::GetDomainPath => {
                let domid = domid_arg(onearg(payload)?)?;
                Ok(nul_terminated(&domain_path(domid)))
            }
            XsType::IsDomainIntroduced => {
                let domid = domid_arg(onearg(payload)?)?;
                let yes = self.is_domain_introduced(domid);
                Ok(nul_terminated(if yes { "T" } else { "F" }))
            }
            XsType::Introduce => {
                let args = strings(payload);
                if args.len() < 3 {
                    return Err(XsError::EINVAL);
                }
                let domid = domid_arg(text(args[0])?)?;
                let port = u32::try_from(number(args[2])?).map_err(|_| XsError::EINVAL)?;
                self.introduce_domain(domid, port).map(ok)
            }
            XsType::Release => {
                let domid = domid_arg(onearg(payload)?)?;
                self.release_domain(domid).map(ok)
            }
            XsType::Resume => {
                let domid = domid_arg(onearg(payload)?)?;
                self.resume_domain(domid).map(ok)
            }
            XsType::SetTarget => {
                let args = strings(payload);
                if args.len() < 2 {
                    return Err(XsError::EINVAL);
                }
                let domid = domid_arg(text(args[0])?)?;
                let target = domid_arg(text(args[1])?)?;
                self.set_target(domid, target).map(ok)
            }
            XsType::ResetWatches => {
                if let Some(c) = self.conns.get_mut(&key) {
                    c.reset();
                }
                Ok(ok(()))
            }
            // Keel's xenstored has no control commands (live update, logging, quotas at
            // run time); the request is understood and refused.
            XsType::Control => Err(XsError::EINVAL),
            XsType::WatchEvent | XsType::Error => Err(XsError::ENOSYS),
        }
    }

    /// Runs `f` on the store as seen by `key` (inside transaction `tx` if given), then
    /// delivers the watch events of a successful non-transactional change.
    fn with_view<R>(
        &mut self,
        key: ConnKey,
        tx: Option<u32>,
        f: impl FnOnce(&mut View<'_>) -> Result<R, XsError>,
    ) -> Result<R, XsError> {
        let conn = self.conns.get_mut(&key).ok_or(XsError::EINVAL)?;
        let mut taken: Option<Transaction> = match tx {
            Some(id) => Some(conn.transactions.remove(&id).ok_or(XsError::ENOENT)?),
            None => None,
        };
        let caller = conn.caller;
        let other_memory = conn.memory();
        let mut view = View {
            tree: &mut self.tree,
            tx: taken.as_mut(),
            caller,
            quotas: &self.quotas,
            other_memory,
            fires: Vec::new(),
        };
        let result = f(&mut view);
        let fires = core::mem::take(&mut view.fires);
        if let (Some(id), Some(t)) = (tx, taken) {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.transactions.insert(id, t);
            }
        }
        if result.is_ok() {
            self.deliver(&fires);
        }
        result
    }

    fn op_set_perms(
        &mut self,
        key: ConnKey,
        tx: Option<u32>,
        payload: &[u8],
    ) -> Result<(), XsError> {
        let caller = self.caller(key)?;
        let n = count_strings(payload);
        if n < 2 {
            return Err(XsError::EINVAL);
        }
        if !caller.privileged && n - 1 > self.quotas.perms {
            return Err(XsError::ENOSPC);
        }
        let args = strings(payload);
        let mut entries = Vec::with_capacity(n - 1);
        for s in &args[1..] {
            entries.push(Perm::parse(s)?);
        }
        let perms = Perms::from_entries(entries).ok_or(XsError::EINVAL)?;
        let raw_path = text(args[0])?;
        if raw_path.starts_with('@') {
            let special = match raw_path {
                INTRODUCE_DOMAIN => &mut self.introduce_perms,
                RELEASE_DOMAIN => &mut self.release_perms,
                _ => return Err(XsError::EINVAL),
            };
            if !special
                .rights_for(&caller)
                .contains(Rights::WRITE.union(Rights::OWNER))
            {
                return Err(XsError::EACCES);
            }
            *special = perms;
            return Ok(());
        }
        let p = canonicalize(caller.domid, raw_path);
        self.with_view(key, tx, |v| v.set_perms(&p, perms))
    }

    fn op_watch(&mut self, key: ConnKey, payload: &[u8]) -> Result<(), XsError> {
        let args = strings(payload);
        if args.len() != 2 {
            return Err(XsError::EINVAL);
        }
        let raw_path = text(args[0])?;
        let token = String::from(text(args[1])?);
        let quotas = self.quotas;
        let tree_bytes = self.tree.usage(self.caller(key)?.domid).bytes;
        let conn = self.conns.get_mut(&key).ok_or(XsError::EINVAL)?;
        let caller = conn.caller;
        let (path, relative) = if raw_path.starts_with('@') {
            if raw_path.len() > quotas.path_len {
                return Err(XsError::EINVAL);
            }
            (String::from(raw_path), false)
        } else {
            let p = canonicalize(caller.domid, raw_path);
            if !is_valid_node(&p, quotas.path_len) {
                return Err(XsError::EINVAL);
            }
            (p, !raw_path.starts_with('/'))
        };
        if conn
            .watches
            .iter()
            .any(|w| w.path == path && w.token == token)
        {
            return Err(XsError::EEXIST);
        }
        if !caller.privileged && conn.watches.len() >= quotas.watches {
            return Err(XsError::E2BIG);
        }
        let watch = Watch {
            path,
            token,
            relative,
        };
        if !caller.privileged && tree_bytes + conn.memory() + watch.memory() >= quotas.memory_hard {
            return Err(XsError::ENOMEM);
        }
        conn.watch_bytes += watch.memory();
        let first = (watch.path.clone(), watch.token.clone());
        conn.watches.push(watch);
        // "A new watch fires once at once", after the reply.
        self.deferred.push((key, first.0, first.1));
        Ok(())
    }

    fn op_unwatch(&mut self, key: ConnKey, payload: &[u8]) -> Result<(), XsError> {
        let args = strings(payload);
        if args.len() != 2 {
            return Err(XsError::EINVAL);
        }
        let conn = self.conns.get_mut(&key).ok_or(XsError::EINVAL)?;
        let path = canonicalize(conn.caller.domid, text(args[0])?);
        let token = text(args[1])?;
        let i = conn
            .watches
            .iter()
            .position(|w| w.path == path && w.token == token)
            .ok_or(XsError::ENOENT)?;
        let w = conn.watches.remove(i);
        conn.watch_bytes = conn.watch_bytes.saturating_sub(w.memory());
        Ok(())
    }

    fn op_transaction_start(&mut self, key: ConnKey, tx: Option<u32>) -> Result<Vec<u8>, XsError> {
        if tx.is_some() {
            // No nesting.
            return Err(XsError::EBUSY);
        }
        let quotas = self.quotas;
        let conn = self.conns.get_mut(&key).ok_or(XsError::EINVAL)?;
        if !conn.caller.privileged && conn.transactions.len() >= quotas.transactions {
            return Err(XsError::ENOSPC);
        }
        let id = conn.allocate_tx_id();
        conn.transactions.insert(id, Transaction::new());
        Ok(nul_terminated(&format!("{id}")))
    }

    fn op_transaction_end(
        &mut self,
        key: ConnKey,
        tx: Option<u32>,
        payload: &[u8],
    ) -> Result<(), XsError> {
        let arg = onearg(payload)?;
        let do_commit = match arg {
            "T" => true,
            "F" => false,
            _ => return Err(XsError::EINVAL),
        };
        let id = tx.ok_or(XsError::ENOENT)?;
        let conn = self.conns.get_mut(&key).ok_or(XsError::EINVAL)?;
        let caller = conn.caller;
        let t = conn.transactions.remove(&id).ok_or(XsError::ENOENT)?;
        if !do_commit {
            return Ok(());
        }
        let fires = commit(&mut self.tree, t, &caller, &self.quotas)?;
        self.deliver(&fires);
        Ok(())
    }

    fn caller(&self, key: ConnKey) -> Result<Caller, XsError> {
        self.conns
            .get(&key)
            .map(|c| c.caller)
            .ok_or(XsError::EINVAL)
    }

    // ---------------------------------------------------------------- watch delivery

    fn deliver(&mut self, fires: &[Fire]) {
        for fire in fires {
            self.deliver_event(&fire.path, fire.exact, |c| fire.visible_to(c));
        }
    }

    fn fire_special(&mut self, name: &str) {
        let perms = if name == INTRODUCE_DOMAIN {
            self.introduce_perms.clone()
        } else {
            self.release_perms.clone()
        };
        self.deliver_event(name, true, |c| perms.rights_for(c).contains(Rights::READ));
    }

    /// Queues an event for every watch matching `path` on every connection that may see it.
    fn deliver_event(&mut self, path: &str, exact: bool, visible: impl Fn(&Caller) -> bool) {
        let special = path.starts_with('@');
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            let Some(conn) = self.conns.get(&key) else {
                continue;
            };
            if conn.cut_off().is_some() || !visible(&conn.caller) {
                continue;
            }
            let matching: Vec<(String, String)> = conn
                .watches
                .iter()
                .filter(|w| {
                    if exact {
                        w.path == path
                    } else {
                        is_child(path, &w.path)
                    }
                })
                .map(|w| (event_path(w, conn.caller.domid, path), w.token.clone()))
                .collect();
            for (p, token) in matching {
                self.queue_event(key, &p, &token, special);
            }
        }
    }

    /// Queues one watch event, within bounds: events identical to one still queued are
    /// dropped (as Xen does for non-special events), and an unprivileged domain's events
    /// are dropped when they would take it past its hard memory quota.
    pub(crate) fn queue_event(&mut self, key: ConnKey, path: &str, token: &str, special: bool) {
        let len = path.len() + token.len() + 2;
        if len > XENSTORE_PAYLOAD_MAX {
            return;
        }
        let hard = self.quotas.memory_hard;
        let now = self.now_ms;
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let tree_bytes = self.tree.usage(conn.caller.domid).bytes;
        let memory = tree_bytes + conn.memory();
        let privileged = conn.caller.privileged;
        match &mut conn.channel {
            Channel::Ring(r) => {
                if r.cut_off.is_some() {
                    return;
                }
                let mut payload = Vec::new();
                if payload.try_reserve_exact(len).is_err() {
                    r.lost_events += 1;
                    return;
                }
                payload.extend_from_slice(path.as_bytes());
                payload.push(0);
                payload.extend_from_slice(token.as_bytes());
                payload.push(0);
                if !special
                    && r.out
                        .iter()
                        .any(|o| o.is_event && o.written == 0 && o.payload == payload)
                {
                    return;
                }
                if !privileged && memory + len + 16 >= hard {
                    r.lost_events += 1;
                    return;
                }
                let msg = XsMessage {
                    kind: XsType::WatchEvent,
                    req_id: 0,
                    tx_id: 0,
                    payload,
                };
                let o = Outgoing::new(msg, true, now);
                r.out_bytes += o.len();
                r.out.push_back(o);
            }
            Channel::Local(l) => {
                if !special && l.events.iter().any(|e| e.path == path && e.token == token) {
                    return;
                }
                if l.events.len() >= LOCAL_EVENT_QUEUE_MAX {
                    l.lost_events += 1;
                    return;
                }
                l.events.push_back(WatchEvent {
                    path: String::from(path),
                    token: String::from(token),
                });
            }
        }
    }

    /// Sends the first events of watches set by the request just answered.
    pub(crate) fn flush_deferred(&mut self) {
        for (key, path, token) in core::mem::take(&mut self.deferred) {
            let domid = self.conns.get(&key).map_or(0, |c| c.caller.domid);
            let shown = match self.conns.get(&key).and_then(|c| {
                c.watches
                    .iter()
                    .find(|w| w.path == path && w.token == token)
                    .cloned()
            }) {
                Some(w) => event_path(&w, domid, &path),
                None => continue,
            };
            self.queue_event(key, &shown, &token, path.starts_with('@'));
        }
    }

    // ---------------------------------------------------------------- guests

    /// Processes one request from guest `domid` (already decoded), queuing its reply and
    /// any watch events. Refused with [`HandleError::Busy`] while the guest has its quota of
    /// replies waiting or holds its hard memory quota.
    pub fn handle(&mut self, domid: u16, request: &XsMessage) -> Result<(), HandleError> {
        let raw = RawRequest {
            kind: request.kind as u32,
            req_id: request.req_id,
            tx_id: request.tx_id,
            payload: request.payload.clone(),
        };
        self.handle_raw(domid, raw)
    }

    /// Whether guest `domid` may send another request now.
    pub(crate) fn check_accepts(&self, domid: u16) -> Result<(), HandleError> {
        let conn = self
            .conns
            .get(&ConnKey::Domain(domid))
            .ok_or(HandleError::NotIntroduced)?;
        let Channel::Ring(r) = &conn.channel else {
            return Err(HandleError::NotIntroduced);
        };
        if let Some(c) = r.cut_off {
            return Err(HandleError::CutOff(c));
        }
        if !conn.caller.privileged {
            let memory = self.tree.usage(domid).bytes + conn.memory();
            if r.replies_queued >= self.quotas.outstanding || memory >= self.quotas.memory_hard {
                return Err(HandleError::Busy);
            }
        }
        Ok(())
    }

    pub(crate) fn handle_raw(&mut self, domid: u16, req: RawRequest) -> Result<(), HandleError> {
        self.check_accepts(domid)?;
        let key = ConnKey::Domain(domid);
        let result = self.dispatch(key, req.kind, req.tx_id, &req.payload);
        let reply_kind = XsType::from_raw(req.kind).unwrap_or(XsType::Error);
        let msg = reply(reply_kind, req.req_id, req.tx_id, result);
        let now = self.now_ms;
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.queue_reply(msg, now);
        }
        self.flush_deferred();
        Ok(())
    }

    /// Takes the next queued message for guest `domid` (replies and watch events in order),
    /// for message-level transports and tests; ring transports use
    /// [`Xenstored::service_ring`].
    pub fn take_message(&mut self, domid: u16) -> Option<XsMessage> {
        self.conns.get_mut(&ConnKey::Domain(domid))?.pop_message()
    }

    /// Guests with messages waiting to be written to their rings.
    pub fn domains_with_output(&self) -> Vec<u16> {
        self.conns
            .iter()
            .filter_map(|(k, c)| match (k, &c.channel) {
                (ConnKey::Domain(d), Channel::Ring(r))
                    if r.cut_off.is_none() && !r.out.is_empty() =>
                {
                    Some(*d)
                }
                _ => None,
            })
            .collect()
    }

    /// Advances the clock and drops watch events a guest left unread for longer than
    /// [`Quotas::watch_event_timeout_ms`] (Xen's `check_event_timeout`).
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        let timeout = self.quotas.watch_event_timeout_ms;
        for conn in self.conns.values_mut() {
            if conn.caller.privileged {
                continue;
            }
            let Channel::Ring(r) = &mut conn.channel else {
                continue;
            };
            let before = r.out.len();
            let mut freed = 0usize;
            r.out.retain(|o| {
                let expired = o.is_event
                    && o.written == 0
                    && now_ms.saturating_sub(o.queued_at_ms) >= timeout;
                if expired {
                    freed += o.len();
                }
                !expired
            });
            r.lost_events += (before - r.out.len()) as u64;
            r.out_bytes = r.out_bytes.saturating_sub(freed);
        }
    }

    /// Cuts a guest's connection off: its watches, transactions and queued output are
    /// freed and nothing more is read or written. The domain stays introduced until it is
    /// released (as in Xen's `ignore_connection`).
    pub(crate) fn cut_off(&mut self, domid: u16, why: CutOff) {
        if let Some(conn) = self.conns.get_mut(&ConnKey::Domain(domid)) {
            conn.reset();
            if let Channel::Ring(r) = &mut conn.channel {
                r.cut_off = Some(why);
                r.out.clear();
                r.out_bytes = 0;
                r.replies_queued = 0;
            }
        }
    }

    /// Why guest `domid` was cut off, if it was.
    pub fn cut_off_reason(&self, domid: u16) -> Option<CutOff> {
        self.conns.get(&ConnKey::Domain(domid))?.cut_off()
    }

    /// The event channel port given at introduction.
    pub fn event_port(&self, domid: u16) -> Option<u32> {
        match &self.conns.get(&ConnKey::Domain(domid))?.channel {
            Channel::Ring(r) => Some(r.port),
            Channel::Local(_) => None,
        }
    }

    /// What `domid` holds.
    pub fn usage(&self, domid: u16) -> DomainUsage {
        let owned = self.tree.usage(domid);
        let mut u = DomainUsage {
            nodes: owned.nodes,
            memory: owned.bytes,
            ..DomainUsage::default()
        };
        if let Some(conn) = self.conns.get(&ConnKey::Domain(domid)) {
            u.memory += conn.memory();
            u.watches = conn.watches.len();
            u.transactions = conn.transactions.len();
            if let Channel::Ring(r) = &conn.channel {
                u.outstanding = r.replies_queued;
                u.queued_messages = r.out.len();
                u.lost_events = r.lost_events;
            }
        }
        u
    }

    // ---------------------------------------------------------------- domain lifecycle

    /// `XS_INTRODUCE`: starts serving `domid` on event channel `port`. A new domain fires
    /// `@introduceDomain`; introducing a known domain again gives it a fresh connection
    /// (watches, transactions and queued output dropped) on the new port. The glue maps the
    /// ring page and resets it with [`crate::ring::prepare`].
    pub fn introduce_domain(&mut self, domid: u16, port: u32) -> Result<(), XsError> {
        if domid == 0 || domid >= DOMID_FIRST_RESERVED || port == 0 {
            return Err(XsError::EINVAL);
        }
        let key = ConnKey::Domain(domid);
        let known = self.conns.contains_key(&key);
        let target = self.conns.get(&key).and_then(|c| c.caller.target);
        let mut conn = Connection::ring(domid, port);
        conn.caller.target = target;
        self.conns.insert(key, conn);
        if !known {
            self.fire_special(INTRODUCE_DOMAIN);
        }
        Ok(())
    }

    /// `XS_RELEASE`: stops serving `domid` and forgets it (see [`Self::domain_destroyed`]).
    pub fn release_domain(&mut self, domid: u16) -> Result<(), XsError> {
        if domid == 0 || domid >= DOMID_FIRST_RESERVED {
            return Err(XsError::EINVAL);
        }
        if !self.conns.contains_key(&ConnKey::Domain(domid)) {
            return Err(XsError::ENOENT);
        }
        self.domain_destroyed(domid);
        Ok(())
    }

    /// The domain is gone: its connection is dropped, every node it owns is removed with
    /// its subtree (XSA-419), its id is struck from every permission list (so a later
    /// domain with the same id inherits nothing), other domains' `SET_TARGET` to it end,
    /// and `@releaseDomain` fires if it had been introduced. Safe to call for a domain that
    /// was never introduced, and more than once.
    pub fn domain_destroyed(&mut self, domid: u16) {
        if domid == 0 {
            return;
        }
        let was_introduced = self.conns.remove(&ConnKey::Domain(domid)).is_some();
        for conn in self.conns.values_mut() {
            if conn.caller.target == Some(domid) {
                conn.caller.target = None;
            }
        }
        // Nodes it owns: remove each topmost one with its subtree.
        let owned: Vec<String> = self
            .tree
            .iter()
            .filter(|(p, n)| *p != "/" && n.perms.owner() == domid)
            .map(|(p, _)| String::from(p))
            .collect();
        let dom0 = Caller {
            domid: 0,
            privileged: true,
            target: None,
        };
        let mut fires = Vec::new();
        for p in owned {
            if self.tree.get(&p).is_none() {
                continue;
            }
            let mut view = View {
                tree: &mut self.tree,
                tx: None,
                caller: dom0,
                quotas: &self.quotas,
                other_memory: 0,
                fires: Vec::new(),
            };
            if view.rm(&p).is_ok() {
                fires.append(&mut view.fires);
            }
        }
        // Its id in ACLs.
        let granted: Vec<String> = self
            .tree
            .iter()
            .filter(|(_, n)| n.perms.grants(domid))
            .map(|(p, _)| String::from(p))
            .collect();
        for p in granted {
            if let Some(mut node) = self.tree.get(&p).cloned() {
                node.perms.forget_domain(domid);
                self.tree.put(&p, node);
            }
        }
        self.introduce_perms.forget_domain(domid);
        self.release_perms.forget_domain(domid);
        if self.introduce_perms.owner() == domid {
            self.introduce_perms.set_owner(0);
        }
        if self.release_perms.owner() == domid {
            self.release_perms.set_owner(0);
        }
        self.deliver(&fires);
        if was_introduced {
            self.fire_special(RELEASE_DOMAIN);
        }
    }

    /// The domain shut down or crashed: `@releaseDomain` fires, once until
    /// [`Self::resume_domain`].
    pub fn domain_shutdown(&mut self, domid: u16) {
        let Some(conn) = self.conns.get_mut(&ConnKey::Domain(domid)) else {
            return;
        };
        if let Channel::Ring(r) = &mut conn.channel {
            if r.shutdown {
                return;
            }
            r.shutdown = true;
        }
        self.fire_special(RELEASE_DOMAIN);
    }

    /// `XS_RESUME`.
    pub fn resume_domain(&mut self, domid: u16) -> Result<(), XsError> {
        if domid == 0 {
            return Err(XsError::EINVAL);
        }
        let conn = self
            .conns
            .get_mut(&ConnKey::Domain(domid))
            .ok_or(XsError::ENOENT)?;
        if let Channel::Ring(r) = &mut conn.channel {
            r.shutdown = false;
        }
        Ok(())
    }

    /// `XS_SET_TARGET`: `domid` gets full access to what `target` owns and inherits the
    /// access `target` is granted (a device-model domain serving its guest).
    pub fn set_target(&mut self, domid: u16, target: u16) -> Result<(), XsError> {
        if !self.conns.contains_key(&ConnKey::Domain(target)) {
            return Err(XsError::ENOENT);
        }
        let conn = self
            .conns
            .get_mut(&ConnKey::Domain(domid))
            .ok_or(XsError::ENOENT)?;
        conn.caller.target = Some(target);
        Ok(())
    }

    /// `XS_IS_DOMAIN_INTRODUCED` (dom0 and `DOMID_SELF` always are).
    pub fn is_domain_introduced(&self, domid: u16) -> bool {
        domid == 0 || domid == DOMID_SELF || self.conns.contains_key(&ConnKey::Domain(domid))
    }

    // ---------------------------------------------------------------- in-process clients

    /// A new in-process client (privileged, relative paths under `/local/domain/0`).
    pub fn open_local(&mut self) -> LocalClient {
        let id = self.next_local;
        self.next_local = self.next_local.wrapping_add(1);
        let caller = Caller {
            domid: 0,
            privileged: true,
            target: None,
        };
        self.conns.insert(
            ConnKey::Local(id),
            Connection::new(caller, Channel::Local(LocalChannel::default())),
        );
        LocalClient(id)
    }

    /// Drops an in-process client with its watches and transactions.
    pub fn close_local(&mut self, client: LocalClient) {
        self.conns.remove(&ConnKey::Local(client.0));
    }

    pub(crate) fn local_call(
        &mut self,
        client: LocalClient,
        kind: XsType,
        tx_id: u32,
        parts: &[&[u8]],
        last_raw: bool,
    ) -> Result<Vec<u8>, XsError> {
        let key = ConnKey::Local(client.0);
        if !self.conns.contains_key(&key) {
            return Err(XsError::EINVAL);
        }
        if parts
            .iter()
            .enumerate()
            .any(|(i, p)| (!last_raw || i + 1 < parts.len()) && p.contains(&0))
        {
            return Err(XsError::EINVAL);
        }
        let msg = XsMessage::build(kind, 0, tx_id, parts, last_raw).map_err(|_| XsError::E2BIG)?;
        let result = self.dispatch(key, kind as u32, tx_id, &msg.payload);
        self.flush_deferred();
        let payload = result?;
        if payload.len() > XENSTORE_PAYLOAD_MAX {
            return Err(XsError::E2BIG);
        }
        Ok(payload)
    }

    /// Next watch event for an in-process client.
    pub fn poll_event(&mut self, client: LocalClient) -> Option<WatchEvent> {
        match &mut self.conns.get_mut(&ConnKey::Local(client.0))?.channel {
            Channel::Local(l) => l.events.pop_front(),
            Channel::Ring(_) => None,
        }
    }

    /// Events dropped for an in-process client because its queue was full.
    pub fn lost_events(&self, client: LocalClient) -> u64 {
        match self
            .conns
            .get(&ConnKey::Local(client.0))
            .map(|c| &c.channel)
        {
            Some(Channel::Local(l)) => l.lost_events,
            _ => 0,
        }
    }
}

/// The path a watch reports for `changed`: relative watches see paths relative to their
/// domain's home.
fn event_path(w: &Watch, domid: u16, changed: &str) -> String {
    if w.relative {
        let home = domain_path(domid);
        if let Some(rest) = changed.strip_prefix(home.as_str()) {
            return String::from(rest.strip_prefix('/').unwrap_or(rest));
        }
    }
    String::from(changed)
}

fn ok<T>(_: T) -> Vec<u8> {
    nul_terminated("OK")
}

fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

fn domid_arg(s: &str) -> Result<u16, XsError> {
    crate::perms::parse_domid(s.as_bytes()).ok_or(XsError::EINVAL)
}

/// The reply to a request: its own type with the result, or `XS_ERROR` with the errno name.
/// A result too large for the wire becomes E2BIG (Xen's `send_reply`).
pub(crate) fn reply(
    kind: XsType,
    req_id: u32,
    tx_id: u32,
    result: Result<Vec<u8>, XsError>,
) -> XsMessage {
    let (kind, payload) = match result {
        Ok(p) if p.len() <= XENSTORE_PAYLOAD_MAX => (kind, p),
        Ok(_) => (XsType::Error, nul_terminated(XsError::E2BIG.as_str())),
        Err(e) => (XsType::Error, nul_terminated(e.as_str())),
    };
    XsMessage {
        kind,
        req_id,
        tx_id,
        payload,
    }
}
