//! The committed store: nodes by path, a global generation counter that stamps every
//! change (transactions compare it to detect conflicts), and per-owner accounting.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::perms::{Access, Perms};

/// Bytes of Xen's stored node header (`struct xs_tdb_record_hdr`: generation, number of
/// permissions, value length, children length).
const NODE_HEADER: usize = 24;
/// Bytes of one stored permission (`struct xs_permissions`).
const PERM_SIZE: usize = 8;

/// One node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub value: Vec<u8>,
    /// Child names in creation order (as `XS_DIRECTORY` returns them).
    pub children: Vec<String>,
    pub perms: Perms,
    /// When the node last changed (the global generation at that moment).
    pub generation: u64,
}

impl Node {
    pub fn new(perms: Perms) -> Self {
        Node {
            value: Vec::new(),
            children: Vec::new(),
            perms,
            generation: 0,
        }
    }

    /// The node's size as Xen's node-size quota counts it.
    pub fn stored_size(&self) -> usize {
        NODE_HEADER
            + PERM_SIZE * self.perms.count()
            + self.value.len()
            + self.children.iter().map(|c| c.len() + 1).sum::<usize>()
    }

    /// Memory charged to the owner: the path and the stored node.
    pub fn memory(&self, path: &str) -> usize {
        path.len() + 1 + self.stored_size()
    }

    /// The children as `XS_DIRECTORY` sends them: each name followed by a NUL.
    pub fn children_wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for c in &self.children {
            out.extend_from_slice(c.as_bytes());
            out.push(0);
        }
        out
    }
}

/// What one owner holds in the committed store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub nodes: usize,
    pub bytes: usize,
}

/// The committed tree.
#[derive(Debug)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
    generation: u64,
    usage: BTreeMap<u16, Usage>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// The tree xenstored starts with: `/`, `/tool`, `/tool/xenstored`, owned by dom0 and
    /// closed to everyone else.
    pub fn new() -> Self {
        let mut tree = Tree {
            nodes: BTreeMap::new(),
            generation: 0,
            usage: BTreeMap::new(),
        };
        let closed = Perms::owned_by(0, Access::None);
        let mut root = Node::new(closed.clone());
        root.children.push(String::from("tool"));
        let mut tool = Node::new(closed.clone());
        tool.children.push(String::from("xenstored"));
        tree.put("/", root);
        tree.put("/tool", tool);
        tree.put("/tool/xenstored", Node::new(closed));
        tree
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Current generation of a node (`None` when absent).
    pub fn generation_of(&self, path: &str) -> Option<u64> {
        self.nodes.get(path).map(|n| n.generation)
    }

    /// A fresh generation number.
    pub fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// Stores `node` at `path` with a fresh generation, keeping accounting right.
    pub fn put(&mut self, path: &str, mut node: Node) {
        node.generation = self.next_generation();
        self.charge(path, &node);
        if let Some(old) = self.nodes.insert(String::from(path), node) {
            self.discharge(path, &old);
        }
    }

    /// Removes the node at `path` (not its children), returning it.
    pub fn remove(&mut self, path: &str) -> Option<Node> {
        let old = self.nodes.remove(path)?;
        self.generation += 1;
        self.discharge(path, &old);
        Some(old)
    }

    fn charge(&mut self, path: &str, node: &Node) {
        let u = self.usage.entry(node.perms.owner()).or_default();
        u.nodes += 1;
        u.bytes += node.memory(path);
    }

    fn discharge(&mut self, path: &str, node: &Node) {
        let owner = node.perms.owner();
        if let Some(u) = self.usage.get_mut(&owner) {
            u.nodes = u.nodes.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(node.memory(path));
            if u.nodes == 0 {
                self.usage.remove(&owner);
            }
        }
    }

    /// What `domid` owns.
    pub fn usage(&self, domid: u16) -> Usage {
        self.usage.get(&domid).copied().unwrap_or_default()
    }

    /// Number of nodes in the tree.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every path with its node, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(p, n)| (p.as_str(), n))
    }
}
