//! A transaction: a private overlay of the nodes it changed, the generation of every node it
//! touched when it first touched it, and the watch events its commit will fire.
//!
//! Conflict detection is Xen's: at commit, any touched node whose committed generation
//! differs from the one recorded (changed, created or deleted meanwhile) makes the commit
//! fail with EAGAIN; the client retries.

use alloc::collections::BTreeMap;
use alloc::string::String;

use crate::perms::Perms;
use crate::tree::{Node, Tree};

/// The first sight of a node inside a transaction.
#[derive(Debug, Clone)]
pub(crate) struct Accessed {
    /// Committed generation then (`None`: the node did not exist).
    pub generation: Option<u64>,
    /// Committed permissions then, so that a commit can tell watchers who could read the
    /// node before it changed.
    pub old_perms: Option<Perms>,
}

#[derive(Debug)]
pub(crate) struct Transaction {
    /// Changed nodes: `Some` written, `None` deleted.
    pub overlay: BTreeMap<String, Option<Node>>,
    pub accessed: BTreeMap<String, Accessed>,
    /// Watch events to fire at commit: path → exact match only.
    pub fires: BTreeMap<String, bool>,
    /// Memory the overlay and the access records hold (charged to the caller).
    pub held_bytes: usize,
    /// Change in the number of nodes the transaction's caller owns, so far.
    pub node_delta: i64,
    /// Nodes were created (the node quota is checked again at commit).
    pub node_created: bool,
    /// An operation failed half-way; the commit is refused (Xen answers ENOMEM).
    pub failed: bool,
}

impl Transaction {
    pub fn new() -> Self {
        Transaction {
            overlay: BTreeMap::new(),
            accessed: BTreeMap::new(),
            fires: BTreeMap::new(),
            held_bytes: 0,
            node_delta: 0,
            node_created: false,
            failed: false,
        }
    }

    /// Whether any touched node changed in the committed tree since.
    pub fn conflicts_with(&self, tree: &Tree) -> bool {
        self.accessed
            .iter()
            .any(|(path, a)| tree.generation_of(path) != a.generation)
    }

    /// The node as the transaction sees it.
    pub fn lookup<'a>(&'a self, tree: &'a Tree, path: &str) -> Option<&'a Node> {
        match self.overlay.get(path) {
            Some(entry) => entry.as_ref(),
            None => tree.get(path),
        }
    }

    /// Records a watch event for the commit; a non-exact event replaces an exact one.
    pub fn queue_fire(&mut self, path: &str, exact: bool) {
        match self.fires.get_mut(path) {
            Some(e) => *e = *e && exact,
            None => {
                self.fires.insert(String::from(path), exact);
            }
        }
    }

    /// Node-count change per owner the commit would make to `tree`.
    pub fn node_deltas(&self, tree: &Tree) -> BTreeMap<u16, i64> {
        let mut deltas: BTreeMap<u16, i64> = BTreeMap::new();
        for (path, entry) in &self.overlay {
            if let Some(old) = tree.get(path) {
                *deltas.entry(old.perms.owner()).or_default() -= 1;
            }
            if let Some(new) = entry {
                *deltas.entry(new.perms.owner()).or_default() += 1;
            }
        }
        deltas
    }
}
