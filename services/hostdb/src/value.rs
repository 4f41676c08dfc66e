//! The generic records the host database holds: class name → object ref → field name → value.
//!
//! These types mirror the XenAPI's value model without depending on it; the XenAPI layer maps
//! its objects onto them when saving and back when loading.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

/// One field's value. Every XenAPI field type has a shape here.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// No value (XML-RPC `<nil/>`, JSON `null`).
    Nil,
    Bool(bool),
    Int(i64),
    /// Stored as its IEEE 754 bits, so NaN payloads and signed zeros survive.
    Float(f64),
    String(String),
    /// XenAPI `datetime`, as its `YYYYMMDDTHH:MM:SSZ` text.
    DateTime(String),
    /// An object reference (`OpaqueRef:...`).
    Ref(String),
    /// XenAPI `set` (ordered as given; the order is kept).
    Set(Vec<FieldValue>),
    /// XenAPI `map` and nested records; keys travel as text on every XenAPI wire.
    Map(BTreeMap<String, FieldValue>),
}

/// One object: field name → value.
pub type Record = BTreeMap<String, FieldValue>;

/// Every object of every class: class name → object ref → record.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Database {
    pub classes: BTreeMap<String, BTreeMap<String, Record>>,
}

impl Database {
    pub fn new() -> Self {
        Database::default()
    }

    /// Adds or replaces an object.
    pub fn insert(&mut self, class: &str, reference: &str, record: Record) {
        self.classes
            .entry(String::from(class))
            .or_default()
            .insert(String::from(reference), record);
    }

    pub fn get(&self, class: &str, reference: &str) -> Option<&Record> {
        self.classes.get(class)?.get(reference)
    }

    /// The objects of one class (empty if there are none).
    pub fn objects(&self, class: &str) -> impl Iterator<Item = (&String, &Record)> {
        self.classes.get(class).into_iter().flatten()
    }

    /// Number of objects over all classes.
    pub fn object_count(&self) -> usize {
        self.classes.values().map(BTreeMap::len).sum()
    }
}
