//! The store as one request sees it: the committed tree, or a transaction's overlay on it,
//! with the operations of the protocol written once against that view. Every check (path,
//! permission, quota) happens before the first change, so a refused request changes nothing
//! outside a transaction (inside one, Xen's rule applies: the transaction is marked failed).

use alloc::string::String;
use alloc::vec::Vec;

use keel_xen::xenstore_wire::{XsError, XENSTORE_PAYLOAD_MAX};

use crate::path::{basename, child, is_valid_node, parent};
use crate::perms::{Caller, Perms, Rights};
use crate::quota::Quotas;
use crate::transaction::{Accessed, Transaction};
use crate::tree::{Node, Tree};

/// A change watchers may hear about, with the permissions that decide who may.
#[derive(Debug, Clone)]
pub(crate) struct Fire {
    pub path: String,
    /// Match watches on exactly this path only (descendants of a removed subtree).
    pub exact: bool,
    pub node_perms: Option<Perms>,
    pub parent_perms: Option<Perms>,
    /// Permissions before a change of permissions (a watcher losing access still hears).
    pub old_perms: Option<Perms>,
}

impl Fire {
    /// Xen's `watch_permitted`: the caller can read the node, its parent, or could read the
    /// node before its permissions changed.
    pub fn visible_to(&self, caller: &Caller) -> bool {
        let readable = |p: &Option<Perms>| {
            p.as_ref()
                .is_some_and(|p| p.rights_for(caller).contains(Rights::READ))
        };
        readable(&self.old_perms) || readable(&self.node_perms) || readable(&self.parent_perms)
    }
}

/// Bytes charged for one node a transaction touched, besides its path and permissions.
const ACCESS_RECORD: usize = 32;

pub(crate) struct View<'a> {
    pub tree: &'a mut Tree,
    pub tx: Option<&'a mut Transaction>,
    pub caller: Caller,
    pub quotas: &'a Quotas,
    /// Memory the caller's domain holds outside the committed tree and this transaction
    /// (watches, queued output, its other transactions).
    pub other_memory: usize,
    /// Changes outside a transaction, to be delivered once the request succeeded.
    pub fires: Vec<Fire>,
}

impl View<'_> {
    fn limited(&self) -> bool {
        !self.caller.privileged
    }

    /// Notes the first access to `path` in a transaction (Xen's `access_node`). The record
    /// is charged to the caller's memory like the overlay: a guest's open transactions
    /// together stay within its memory quota.
    fn touch(&mut self, path: &str) -> Result<(), XsError> {
        match self.tx.as_deref() {
            None => return Ok(()),
            Some(tx) if tx.accessed.contains_key(path) => return Ok(()),
            Some(_) => {}
        }
        let limited = self.limited();
        let memory = self.caller_memory();
        let committed = self.tree.get(path);
        let cost = ACCESS_RECORD + path.len() + committed.map_or(0, |n| 8 * n.perms.count());
        let seen = Accessed {
            generation: committed.map(|n| n.generation),
            old_perms: committed.map(|n| n.perms.clone()),
        };
        let Some(tx) = self.tx.as_deref_mut() else {
            return Ok(());
        };
        if limited && tx.accessed.len() >= self.quotas.transaction_nodes {
            tx.failed = true;
            return Err(XsError::ENOSPC);
        }
        if limited && memory.saturating_add(cost) >= self.quotas.memory_hard {
            tx.failed = true;
            return Err(XsError::ENOMEM);
        }
        tx.accessed.insert(String::from(path), seen);
        tx.held_bytes += cost;
        Ok(())
    }

    /// The node at `path` as this view sees it.
    pub fn peek(&mut self, path: &str) -> Result<Option<&Node>, XsError> {
        self.touch(path)?;
        Ok(match self.tx.as_deref() {
            Some(tx) => tx.lookup(self.tree, path),
            None => self.tree.get(path),
        })
    }

    /// Memory the caller holds now.
    fn caller_memory(&self) -> usize {
        let tx = self.tx.as_deref().map_or(0, |t| t.held_bytes);
        self.tree.usage(self.caller.domid).bytes + self.other_memory + tx
    }

    /// Refuses growth to the hard memory quota (ENOMEM, as Xen's `domain_memory_add_chk`):
    /// what a domain holds besides queued output stays below it, so reading its replies
    /// always lets it send again.
    fn check_growth(&mut self, growth: usize) -> Result<(), XsError> {
        if self.limited()
            && growth > 0
            && self.caller_memory().saturating_add(growth) >= self.quotas.memory_hard
        {
            if let Some(tx) = self.tx.as_deref_mut() {
                tx.failed = true;
            }
            return Err(XsError::ENOMEM);
        }
        Ok(())
    }

    fn check_size(&self, node: &Node) -> Result<(), XsError> {
        if self.limited() && node.stored_size() >= self.quotas.node_size {
            return Err(XsError::ENOSPC);
        }
        Ok(())
    }

    /// Memory `node` at `path` would add for the caller over what the view holds there now.
    fn growth(&self, path: &str, node: &Node) -> usize {
        let new = node.memory(path);
        let old = match self.tx.as_deref() {
            Some(tx) => match tx.overlay.get(path) {
                Some(Some(n)) => n.memory(path),
                _ => 0,
            },
            None => {
                if node.perms.owner() != self.caller.domid {
                    return 0;
                }
                self.tree
                    .get(path)
                    .filter(|n| n.perms.owner() == self.caller.domid)
                    .map_or(0, |n| n.memory(path))
            }
        };
        new.saturating_sub(old)
    }

    /// Stores a node whose checks were done.
    fn store(&mut self, path: &str, node: Node) {
        let me = self.caller.domid;
        match self.tx.as_deref_mut() {
            None => self.tree.put(path, node),
            Some(tx) => {
                if tx.lookup(self.tree, path).map(|n| n.perms.owner()) == Some(me) {
                    tx.node_delta -= 1;
                }
                if node.perms.owner() == me {
                    tx.node_delta += 1;
                }
                let new_bytes = node.memory(path);
                if let Some(Some(old)) = tx.overlay.insert(String::from(path), Some(node)) {
                    tx.held_bytes = tx.held_bytes.saturating_sub(old.memory(path));
                }
                tx.held_bytes += new_bytes;
            }
        }
    }

    fn delete(&mut self, path: &str) {
        let me = self.caller.domid;
        match self.tx.as_deref_mut() {
            None => {
                self.tree.remove(path);
            }
            Some(tx) => {
                if tx.lookup(self.tree, path).map(|n| n.perms.owner()) == Some(me) {
                    tx.node_delta -= 1;
                }
                if let Some(Some(old)) = tx.overlay.insert(String::from(path), None) {
                    tx.held_bytes = tx.held_bytes.saturating_sub(old.memory(path));
                }
            }
        }
    }

    /// Records that `path` changed (before a removal, while its permissions are known).
    fn fire(&mut self, path: &str, exact: bool, old_perms: Option<Perms>) {
        if let Some(tx) = self.tx.as_deref_mut() {
            tx.queue_fire(path, exact);
            return;
        }
        let node_perms = self.tree.get(path).map(|n| n.perms.clone());
        let parent_perms = if path == "/" {
            None
        } else {
            self.tree.get(parent(path)).map(|n| n.perms.clone())
        };
        self.fires.push(Fire {
            path: String::from(path),
            exact,
            node_perms,
            parent_perms,
            old_perms,
        });
    }

    /// Xen's `errno_from_parents`: a failure is reported as `err` only if the caller has
    /// some of the `wanted` rights on the nearest existing ancestor, otherwise as EACCES, so
    /// that nothing is learnt about nodes one may not see.
    fn mask(&mut self, path: &str, err: XsError, wanted: Rights) -> XsError {
        let caller = self.caller;
        let mut p = path;
        while p != "/" {
            p = parent(p);
            match self.peek(p) {
                Err(e) => return e,
                Ok(Some(n)) => {
                    return if n.perms.rights_for(&caller).intersects(wanted) {
                        err
                    } else {
                        XsError::EACCES
                    };
                }
                Ok(None) => {}
            }
        }
        XsError::EACCES
    }

    /// Xen's `get_node`: the node if it exists and the caller has `wanted` on it.
    fn get_node(&mut self, path: &str, wanted: Rights) -> Result<Node, XsError> {
        if !is_valid_node(path, self.quotas.path_len) {
            return Err(XsError::EINVAL);
        }
        let caller = self.caller;
        let err = match self.peek(path)? {
            Some(n) if n.perms.rights_for(&caller).contains(wanted) => return Ok(n.clone()),
            Some(_) => XsError::EACCES,
            None => XsError::ENOENT,
        };
        Err(self.mask(path, err, wanted))
    }

    /// Creates `path` and its missing ancestors; new nodes inherit their parent's
    /// permissions and are owned by an unprivileged creator.
    fn create(&mut self, path: &str, value: Vec<u8>) -> Result<(), XsError> {
        let mut value = Some(value);
        // Bottom-up list of the nodes to create.
        let mut missing: Vec<String> = alloc::vec![String::from(path)];
        let mut p = parent(path);
        let existing = loop {
            if let Some(n) = self.peek(p)? {
                break n.clone();
            }
            missing.push(String::from(p));
            p = parent(p);
        };
        let existing_path = String::from(p);
        if self.limited() {
            let delta = self.tx.as_deref().map_or(0, |t| t.node_delta);
            let owned = self.tree.usage(self.caller.domid).nodes as i64 + delta;
            if owned.saturating_add(missing.len() as i64) > self.quotas.nodes as i64 {
                return Err(XsError::ENOSPC);
            }
        }
        // Top-down: the existing ancestor gains a child, each new node its one child.
        let mut planned: Vec<(String, Node)> = Vec::with_capacity(missing.len() + 1);
        let mut top = existing;
        if let Some(first) = missing.last() {
            top.children.push(String::from(basename(first)));
        }
        planned.push((existing_path, top));
        for (i, name) in missing.iter().rev().enumerate() {
            let mut perms = planned[i].1.perms.clone();
            if self.limited() {
                perms.set_owner(self.caller.domid);
            }
            let mut node = Node::new(perms);
            if i + 1 < missing.len() {
                let below = &missing[missing.len() - 2 - i];
                node.children.push(String::from(basename(below)));
            } else {
                node.value = value.take().unwrap_or_default();
            }
            planned.push((name.clone(), node));
        }
        let mut growth = 0usize;
        for (p, n) in &planned {
            self.check_size(n)?;
            growth = growth.saturating_add(self.growth(p, n));
        }
        self.check_growth(growth)?;
        if let Some(tx) = self.tx.as_deref_mut() {
            tx.node_created = true;
        }
        for (p, n) in planned {
            self.store(&p, n);
        }
        Ok(())
    }

    /// Updates an existing node (its checks included).
    fn update(&mut self, path: &str, node: Node) -> Result<(), XsError> {
        self.check_size(&node)?;
        let growth = self.growth(path, &node);
        self.check_growth(growth)?;
        self.store(path, node);
        Ok(())
    }

    // ---- the operations ----

    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        Ok(self.get_node(path, Rights::READ)?.value)
    }

    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        match self.get_node(path, Rights::WRITE) {
            Ok(mut node) => {
                node.value = copy(value)?;
                self.update(path, node)?;
            }
            Err(XsError::ENOENT) => self.create(path, copy(value)?)?,
            Err(e) => return Err(e),
        }
        self.fire(path, false, None);
        Ok(())
    }

    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        match self.get_node(path, Rights::WRITE) {
            Ok(_) => Ok(()),
            Err(XsError::ENOENT) => {
                self.create(path, Vec::new())?;
                self.fire(path, false, None);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        match self.get_node(path, Rights::WRITE) {
            Ok(_) => {}
            Err(XsError::ENOENT) => {
                // Not there: fine if its parent is.
                return match self.peek(parent(path))? {
                    Some(_) => Ok(()),
                    None => Err(XsError::ENOENT),
                };
            }
            Err(e) => return Err(e),
        }
        if path == "/" {
            return Err(XsError::EINVAL);
        }
        // Collect the subtree first, children before parents, with an explicit stack: a
        // deep tree cannot exhaust the call stack (CVE-2022-42321).
        let mut order: Vec<String> = Vec::new();
        let mut stack: Vec<(String, bool)> = alloc::vec![(String::from(path), false)];
        while let Some((p, expanded)) = stack.pop() {
            if expanded {
                order.push(p);
                continue;
            }
            let Some(node) = self.peek(&p)? else {
                continue;
            };
            let kids: Vec<String> = node.children.iter().map(|c| child(&p, c)).collect();
            stack.push((p, true));
            stack.extend(kids.into_iter().map(|k| (k, false)));
        }
        let parent_path = parent(path);
        let Some(mut parent_node) = self.peek(parent_path)?.cloned() else {
            return Err(XsError::EINVAL);
        };
        for p in &order {
            self.fire(p, p != path, None);
        }
        for p in &order {
            self.delete(p);
        }
        let name = basename(path);
        parent_node.children.retain(|c| c != name);
        // Shrinking: no size or memory check (Xen's `remove_child_entry`).
        self.store(parent_path, parent_node);
        Ok(())
    }

    pub fn directory(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        let out = self.get_node(path, Rights::READ)?.children_wire();
        if out.len() > XENSTORE_PAYLOAD_MAX {
            return Err(XsError::E2BIG);
        }
        Ok(out)
    }

    /// `XS_DIRECTORY_PART`: the generation, then the children from byte `offset` of the
    /// full list, as many whole names as fit; a final empty string marks the end.
    pub fn directory_part(&mut self, path: &str, offset: usize) -> Result<Vec<u8>, XsError> {
        let node = self.get_node(path, Rights::READ)?;
        let all = node.children_wire();
        let mut out = Vec::new();
        out.extend_from_slice(alloc::format!("{}", node.generation).as_bytes());
        out.push(0);
        if offset >= all.len() {
            out.push(0);
            return Ok(out);
        }
        let room = XENSTORE_PAYLOAD_MAX - out.len() - 1;
        let mut end = offset;
        for (i, &b) in all.iter().enumerate().skip(offset) {
            if b == 0 {
                if i + 1 - offset > room {
                    break;
                }
                end = i + 1;
            }
        }
        out.extend_from_slice(&all[offset..end]);
        if end == all.len() {
            out.push(0);
        }
        Ok(out)
    }

    pub fn get_perms(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        Ok(self.get_node(path, Rights::READ)?.perms.to_wire())
    }

    pub fn set_perms(&mut self, path: &str, perms: Perms) -> Result<(), XsError> {
        let mut node = self.get_node(path, Rights::WRITE.union(Rights::OWNER))?;
        if self.limited() && perms.owner() != node.perms.owner() {
            return Err(XsError::EPERM);
        }
        let old = core::mem::replace(&mut node.perms, perms);
        self.update(path, node)?;
        self.fire(path, false, Some(old));
        Ok(())
    }
}

/// A guest-sized copy, allocated fallibly.
fn copy(bytes: &[u8]) -> Result<Vec<u8>, XsError> {
    let mut v = Vec::new();
    v.try_reserve_exact(bytes.len())
        .map_err(|_| XsError::ENOMEM)?;
    v.extend_from_slice(bytes);
    Ok(v)
}

/// Commits `tx` into `tree`, returning the changes for watchers.
pub(crate) fn commit(
    tree: &mut Tree,
    tx: Transaction,
    caller: &Caller,
    quotas: &Quotas,
) -> Result<Vec<Fire>, XsError> {
    if tx.failed {
        return Err(XsError::ENOMEM);
    }
    if tx.conflicts_with(tree) {
        return Err(XsError::EAGAIN);
    }
    if !caller.privileged && tx.node_created {
        for (domid, delta) in tx.node_deltas(tree) {
            let now = tree.usage(domid).nodes as i64;
            if delta > 0 && now + delta > quotas.nodes as i64 {
                return Err(XsError::ENOSPC);
            }
        }
    }
    let Transaction {
        overlay,
        accessed,
        fires,
        ..
    } = tx;
    for (path, entry) in overlay {
        match entry {
            Some(node) => tree.put(&path, node),
            None => {
                tree.remove(&path);
            }
        }
    }
    let mut out = Vec::with_capacity(fires.len());
    for (path, exact) in fires {
        let node_perms = tree.get(&path).map(|n| n.perms.clone());
        let parent_perms = match &node_perms {
            Some(_) if path != "/" => tree.get(parent(&path)).map(|n| n.perms.clone()),
            _ => None,
        };
        let old_perms = accessed.get(&path).and_then(|a| a.old_perms.clone());
        out.push(Fire {
            path,
            exact,
            node_perms,
            parent_perms,
            old_perms,
        });
    }
    Ok(out)
}
