//! What the toolstack needs from the domain builder and the console backend.

/// A domain the builder made: paused, memory populated, kernel loaded, vCPU state set, the
/// store and console event channels allocated for dom0 and their pages granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltDomain {
    pub domid: u16,
    pub vcpus: u32,
    /// `memory/static-max`, KiB.
    pub memory_static_max_kib: u64,
    /// `memory/target`, KiB.
    pub memory_target_kib: u64,
    /// The guest's end of the xenstore event channel (unbound, remote dom0).
    pub store_port: u32,
    /// Guest frame of the xenstore page (`store/ring-ref`; 0xfeffc for PVH).
    pub store_gfn: u64,
    /// The guest's end of the console event channel (unbound, remote dom0).
    pub console_port: u32,
    /// Guest frame of the console page (`console/ring-ref`; 0xfefff for PVH).
    pub console_gfn: u64,
}

/// The domain builder. `build` leaves nothing behind when it fails (it destroys the
/// partial domain itself); on success the domain is the toolstack's.
pub trait Builder {
    /// What to build: kernel, command line, memory, vCPUs, UUID (the builder's own type).
    type Spec;
    type Error: core::fmt::Debug;
    fn build(&mut self, spec: &Self::Spec) -> Result<BuiltDomain, Self::Error>;
}

/// The console backend as the toolstack drives it. The kernel's implementation maps the
/// console page (grant 0, or the console gfn), binds an interdomain channel to the guest's
/// `port`, and attaches a `keel_console::ConsoleSet` entry; `detach` undoes all three.
pub trait ConsoleBackend {
    type Error: core::fmt::Debug;
    fn attach(
        &mut self,
        domid: u16,
        console_port: u32,
        console_gfn: u64,
    ) -> Result<(), Self::Error>;
    /// Idempotent: detaching a domain without a console does nothing.
    fn detach(&mut self, domid: u16);
}
