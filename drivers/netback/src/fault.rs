//! Why a frontend was disconnected. Each is written to xenstore (`errno message`) before the
//! backend closes, so the toolstack and an operator can see what the guest did.

use alloc::format;
use alloc::string::String;

use keel_xen::grant_table::GrantOpError;
use keel_xen::ring::RingError;
use keel_xen::XenError;

use crate::env::StoreError;
use crate::wire::ExtraError;
use crate::xenbus::HandshakeError;

/// A frontend error bad enough to disconnect it (Linux: `xenvif_fatal_tx_err` or
/// `xenbus_dev_fatal`), or a failure to set it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The frontend's configuration was refused.
    Handshake(HandshakeError),
    /// A ring page could not be mapped (bad grant, or no dom0 frame to map it into).
    MapRing {
        gref: u32,
        error: Option<GrantOpError>,
    },
    /// An event channel could not be bound.
    Bind {
        port: u32,
        error: XenError,
    },
    /// `req_prod` ran ahead of what the ring can hold ("impossible number of requests").
    TxRingOverflow(RingError),
    RxRingOverflow(RingError),
    /// `extra_info` promised an extra slot that was never published.
    MissingExtra,
    BadExtra(ExtraError),
    /// A packet's slots did not end within the published requests (`more_data` forever).
    IncompletePacket {
        slots: usize,
    },
    /// A packet used more slots than any frontend may ("malicious").
    TooManySlots {
        slots: usize,
    },
    /// A slot's data crosses its page.
    CrossPage {
        offset: u16,
        size: u16,
    },
    /// xenstore failed during the handshake.
    Store(StoreError),
}

impl Fault {
    /// The negative errno and message written to the error node.
    pub fn describe(&self) -> (i32, String) {
        match self {
            Fault::Handshake(e) => e.describe(),
            Fault::MapRing { gref, error } => {
                (-22, format!("mapping ring grant {gref}: {error:?}"))
            }
            Fault::Bind { port, error } => (
                -22,
                format!("binding event channel {port}: {}", error.name()),
            ),
            Fault::TxRingOverflow(e) => (-71, format!("impossible number of tx requests: {e:?}")),
            Fault::RxRingOverflow(e) => (-71, format!("impossible number of rx requests: {e:?}")),
            Fault::MissingExtra => (-71, String::from("missing extra info")),
            Fault::BadExtra(e) => (-71, format!("invalid extra info: {e:?}")),
            Fault::IncompletePacket { slots } => (
                -71,
                format!("packet of {slots}+ slots does not end in the published requests"),
            ),
            Fault::TooManySlots { slots } => {
                (-71, format!("malicious frontend using {slots} slots"))
            }
            Fault::CrossPage { offset, size } => (
                -71,
                format!("cross page boundary, offset {offset}, size {size}"),
            ),
            Fault::Store(_) => (-5, String::from("xenstore access failed")),
        }
    }
}
