//! The vocabulary of the data-model declaration: classes, fields, field types, messages.
//!
//! A class is one `static ClassDecl` (see `classes.rs`). From it alone the dispatcher derives
//! every generated message (`get_record`, `get_all`, `get_all_records`, `get_by_uuid`,
//! `get_by_name_label`, `get_<f>`, `set_<f>` for read-write fields, `add_to_<m>` /
//! `remove_from_<m>` for read-write maps, `add_<s>` / `remove_<s>` for read-write sets), record
//! serialisation, type checking of parameters and field values, event snapshots, and
//! `system.listMethods`. Custom messages are entries in the class's `messages` table, each
//! with a handler function; a custom message named like a generated one replaces it (as
//! `VDI.set_name_label` does, to keep the storage manager's copy of the name in step).

use crate::dispatch::Handler;

/// A field's or parameter's XenAPI type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FieldType {
    String,
    Bool,
    /// 64-bit signed integer (a decimal string over XML-RPC).
    Int,
    Float,
    DateTime,
    /// One of the listed names, carried as a string.
    Enum(&'static [&'static str]),
    /// A reference to an object of the named class (`OpaqueRef:NULL` allowed).
    Ref(&'static str),
    /// A set of references to objects of the named class.
    RefSet(&'static str),
    Set(&'static FieldType),
    Map(&'static FieldType, &'static FieldType),
    /// Any value, unchecked: for parameters whose meaning depends on another parameter.
    Any,
}

/// Whether clients may write a field through the generated setters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// Where a field's value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Kept in the object.
    Stored,
    /// Computed on read: every object of the `RefSet` class whose field `field` points here.
    /// This is how references go both ways (`VM.VBDs` from `VBD.VM`) without two copies that
    /// could disagree.
    Inverse { field: &'static str },
}

#[derive(Clone, Copy, Debug)]
pub struct FieldDecl {
    pub name: &'static str,
    pub ty: FieldType,
    pub access: Access,
    pub source: Source,
}

/// A read-only stored field.
pub const fn ro(name: &'static str, ty: FieldType) -> FieldDecl {
    FieldDecl {
        name,
        ty,
        access: Access::ReadOnly,
        source: Source::Stored,
    }
}

/// A read-write stored field (gets `set_<name>`, and `add_to_`/`remove_from_` or
/// `add_`/`remove_` when it is a map or set).
pub const fn rw(name: &'static str, ty: FieldType) -> FieldDecl {
    FieldDecl {
        name,
        ty,
        access: Access::ReadWrite,
        source: Source::Stored,
    }
}

/// A computed set of refs: the objects of `class` whose `field` refers to this object.
pub const fn inverse(name: &'static str, class: &'static str, field: &'static str) -> FieldDecl {
    FieldDecl {
        name,
        ty: FieldType::RefSet(class),
        access: Access::ReadOnly,
        source: Source::Inverse { field },
    }
}

#[derive(Clone, Copy, Debug)]
pub struct ParamDecl {
    pub name: &'static str,
    pub ty: FieldType,
}

pub const fn param(name: &'static str, ty: FieldType) -> ParamDecl {
    ParamDecl { name, ty }
}

/// A custom message of a class.
#[derive(Clone, Copy)]
pub struct MessageDecl {
    pub name: &'static str,
    /// Parameters after the session argument.
    pub params: &'static [ParamDecl],
    /// How many trailing parameters may be omitted (xapi's versioned parameters, e.g.
    /// `login_with_password` accepts 2 to 4 arguments); omitted ones reach the handler as
    /// `Value::Nil`.
    pub optional_tail: usize,
    /// Whether the first wire argument is a session reference that must be valid.
    pub session: bool,
    /// Whether `Async.<class>.<name>` exists.
    pub asyncable: bool,
    pub handler: Handler,
}

impl core::fmt::Debug for MessageDecl {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MessageDecl")
            .field("name", &self.name)
            .finish()
    }
}

/// A message needing a session, not asyncable, all parameters required.
pub const fn msg(
    name: &'static str,
    params: &'static [ParamDecl],
    handler: Handler,
) -> MessageDecl {
    MessageDecl {
        name,
        params,
        optional_tail: 0,
        session: true,
        asyncable: false,
        handler,
    }
}

impl MessageDecl {
    /// Also reachable as `Async.<class>.<name>`.
    pub const fn asyncable(mut self) -> Self {
        self.asyncable = true;
        self
    }

    /// Callable without a session (only `session.login_with_password` and friends).
    pub const fn sessionless(mut self) -> Self {
        self.session = false;
        self
    }

    /// The last `n` parameters may be omitted.
    pub const fn optional_tail(mut self, n: usize) -> Self {
        self.optional_tail = n;
        self
    }
}

/// Which generated messages and behaviours a class gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassFlags {
    /// Objects of this class exist (so `get_record`, `get_by_uuid`, field getters, ...).
    pub objects: bool,
    /// `get_all` and `get_all_records` exist. Off for `session`: listing sessions would hand
    /// out other clients' credentials.
    pub list_all: bool,
    /// Changes are published as events (off for `session`, for the same reason).
    pub events: bool,
}

pub const OBJECTS: ClassFlags = ClassFlags {
    objects: true,
    list_all: true,
    events: true,
};

#[derive(Debug)]
pub struct ClassDecl {
    /// Case as xapi spells it (`VM`, `host_metrics`); method names use it verbatim.
    pub name: &'static str,
    pub flags: ClassFlags,
    pub fields: &'static [FieldDecl],
    pub messages: &'static [MessageDecl],
}

impl ClassDecl {
    pub fn field(&self, name: &str) -> Option<&'static FieldDecl> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn message(&self, name: &str) -> Option<&'static MessageDecl> {
        self.messages.iter().find(|m| m.name == name)
    }

    pub fn has_field(&self, name: &str) -> bool {
        self.field(name).is_some()
    }
}

/// The whole model: every declared class.
pub type Schema = &'static [&'static ClassDecl];

/// Look a class up by its exact name.
pub fn find_class(schema: Schema, name: &str) -> Option<&'static ClassDecl> {
    schema.iter().copied().find(|c| c.name == name)
}

/// Look a class up ignoring case, as event subscriptions and event classes do (`vm`, `VM`).
pub fn find_class_ignore_case(schema: Schema, name: &str) -> Option<&'static ClassDecl> {
    schema
        .iter()
        .copied()
        .find(|c| c.name.eq_ignore_ascii_case(name))
}
