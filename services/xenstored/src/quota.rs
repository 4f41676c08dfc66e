//! Per-domain limits. The defaults are those of Xen 4.17's C xenstored
//! (`tools/xenstore/xenstored_core.c`); they apply to unprivileged domains only, as there.

/// The limits an unprivileged domain is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own (`quota_nb_entry_per_domain`).
    pub nodes: usize,
    /// Bytes of one node as xenstored stores it: a 24-byte header, 8 bytes per permission,
    /// the value and the children's names (`quota_max_entry_size`); a node reaching this
    /// size is refused.
    pub node_size: usize,
    /// Watches per connection (`quota_nb_watch_per_domain`).
    pub watches: usize,
    /// Open transactions per connection (`quota_max_transaction`).
    pub transactions: usize,
    /// Permission entries per node, owner included (`quota_nb_perms_per_node`).
    pub perms: usize,
    /// Longest path below `/local/domain/<id>/` (`quota_max_path_len`).
    pub path_len: usize,
    /// Replies queued but not yet taken by the guest; at this many, xenstored stops
    /// reading the guest's requests (`quota_req_outstanding`).
    pub outstanding: usize,
    /// Distinct nodes one transaction may touch (`quota_trans_nodes`).
    pub transaction_nodes: usize,
    /// Memory a domain may hold (nodes, watches, queued output, transactions) before
    /// xenstored reports it (`quota_memory_per_domain_soft`).
    pub memory_soft: usize,
    /// Memory at which a domain's requests are refused with ENOMEM, its watch events dropped
    /// and its ring no longer read (`quota_memory_per_domain_hard`).
    pub memory_hard: usize,
    /// A watch event the guest has not taken within this many milliseconds is dropped
    /// (`timeout_watch_event_msec`).
    pub watch_event_timeout_ms: u64,
}

impl Quotas {
    /// Xen 4.17's defaults.
    pub const XEN_DEFAULT: Quotas = Quotas {
        nodes: 1000,
        node_size: 2048,
        watches: 128,
        transactions: 10,
        perms: 5,
        path_len: 2048,
        outstanding: 20,
        transaction_nodes: 1024,
        memory_soft: 2 * 1024 * 1024,
        memory_hard: 2 * 1024 * 1024 + 512 * 1024,
        watch_event_timeout_ms: 20_000,
    };
}

impl Default for Quotas {
    fn default() -> Self {
        Self::XEN_DEFAULT
    }
}

/// Watch events queued for one in-process client before further events are dropped (and
/// counted in [`crate::Xenstored::lost_events`]). In-process clients are privileged and not
/// held to the memory quota, but nothing is unbounded.
pub const LOCAL_EVENT_QUEUE_MAX: usize = 16 * 1024;

/// Requests taken from one ring per [`crate::Xenstored::service_ring`] call, so that one
/// busy guest cannot monopolise the caller.
pub const REQUESTS_PER_SERVICE: usize = 32;
