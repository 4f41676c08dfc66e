//! The vif xenbus handshake, as reads and writes of xenstore nodes (Linux
//! `xen-netback/xenbus.c` and `xen-netfront.c` are the reference for key names):
//!
//! 1. The toolstack creates the backend directory (`frontend`, `frontend-id`, `mac`,
//!    `handle`, `online`, `state = 1`) and the frontend's (`backend`, `mac`, `state`).
//! 2. The backend advertises its features ([`BACKEND_FEATURES`], `multi-queue-max-queues`)
//!    and moves to InitWait.
//! 3. netfront reads them, grants its rings and writes `tx-ring-ref`, `rx-ring-ref`,
//!    `event-channel` (or `event-channel-tx`/`-rx`), `request-rx-copy = 1`,
//!    `feature-rx-notify`, `feature-sg`, `feature-gso-tcpv4/6`, ... — under `queue-N/` when
//!    `multi-queue-num-queues` > 1 — then moves to Connected.
//! 4. The backend reads them ([`FrontendConfig::read`]), maps and binds, and moves to
//!    Connected. Closing/Closed follow the frontend; a fatal error writes
//!    `error/<backend node>/error` under dom0's home, as `xenbus_dev_fatal` does, and closes.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::env::{read_str, NetStore, StoreError};
use crate::ratelimit::RateLimit;

pub use keel_xen::xenbus::XenbusState;

/// Feature nodes the backend writes as `1` (or `0`) before InitWait. netfront refuses a
/// backend without `feature-rx-copy`.
pub const BACKEND_FEATURES: &[(&str, &str)] = &[
    ("feature-sg", "1"),
    ("feature-gso-tcpv4", "1"),
    ("feature-gso-tcpv6", "1"),
    ("feature-ipv6-csum-offload", "1"),
    ("feature-rx-copy", "1"),
    ("feature-rx-flip", "0"),
    ("feature-multicast-control", "1"),
    ("feature-dynamic-multicast-control", "1"),
    ("feature-split-event-channels", "1"),
];

/// Where one VIF's nodes live and what it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub frontend_domid: u16,
    pub devid: u32,
    /// `/local/domain/0/backend/vif/<domid>/<devid>`.
    pub backend_path: String,
    /// `/local/domain/<domid>/device/vif/<devid>`.
    pub frontend_path: String,
    /// `multi-queue-max-queues` (at least 1).
    pub max_queues: u16,
    /// The network's MTU: the largest IP packet handed to the switch. TSO super-frames are
    /// cut to fit; other frames whose payload exceeds it are refused.
    pub mtu: usize,
    /// Frames waiting for the guest's receive buffers, per queue.
    pub rx_queue_frames: usize,
    /// Bytes waiting for the guest's receive buffers, per queue.
    pub rx_queue_bytes: usize,
    /// Packets taken from each tx ring per [`poll`](crate::Netback::poll).
    pub tx_budget: usize,
    /// Frames put on each rx ring per poll.
    pub rx_budget: usize,
    /// The transmit rate limit (xapi's `ratelimit` QoS); a backend `rate` node, when
    /// present, replaces it.
    pub rate: Option<RateLimit>,
}

impl Config {
    /// The standard paths for `vif` `devid` of domain `frontend_domid` served by dom0, an
    /// MTU of 1500, and one queue per dom0 vCPU as Linux offers (`max_queues`).
    pub fn new(frontend_domid: u16, devid: u32, max_queues: u16) -> Self {
        Config {
            frontend_domid,
            devid,
            backend_path: format!("/local/domain/0/backend/vif/{frontend_domid}/{devid}"),
            frontend_path: format!("/local/domain/{frontend_domid}/device/vif/{devid}"),
            max_queues: max_queues.max(1),
            mtu: 1500,
            rx_queue_frames: 256,
            rx_queue_bytes: 1 << 20,
            tx_budget: 64,
            rx_budget: 64,
            rate: None,
        }
    }

    /// The frontend's `state` node (watch it).
    pub fn frontend_state_path(&self) -> String {
        format!("{}/state", self.frontend_path)
    }

    /// The backend's `state` node.
    pub fn backend_state_path(&self) -> String {
        format!("{}/state", self.backend_path)
    }

    /// The backend's `rate` node (xenopsd writes the VIF's QoS there; watch it).
    pub fn rate_path(&self) -> String {
        format!("{}/rate", self.backend_path)
    }

    /// Where `xenbus_dev_fatal` puts the reason: `error/<node>/error` under dom0's home.
    pub fn error_path(&self) -> String {
        match self.backend_path.strip_prefix("/local/domain/0/") {
            Some(rel) => format!("/local/domain/0/error/{rel}/error"),
            None => format!("{}/error", self.backend_path),
        }
    }
}

/// The event channel(s) of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueChannels {
    Shared(u32),
    Split { tx: u32, rx: u32 },
}

/// What the frontend wrote for one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    pub tx_ring_ref: u32,
    pub rx_ring_ref: u32,
    pub channels: QueueChannels,
}

/// What the frontend negotiated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FrontendFeatures {
    pub sg: bool,
    pub gso_tcpv4: bool,
    pub gso_tcpv6: bool,
    /// `feature-no-csum-offload`: the frontend will not send IPv4 blank checksums.
    pub no_csum_offload: bool,
    pub ipv6_csum_offload: bool,
    pub multicast_control: bool,
    /// `feature-rx-notify`: the frontend notifies when it posts receive buffers. Without
    /// it (old frontends) netback must look again on a timer while frames wait, as Linux
    /// does with its short drain timeout.
    pub rx_notify: bool,
}

/// Everything read from the frontend at connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendConfig {
    pub features: FrontendFeatures,
    pub queues: Vec<QueueConfig>,
}

/// Why the frontend's configuration is refused (each is a fatal error with a reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    Store(StoreError),
    /// A required node is missing or not a number.
    Missing(String),
    /// `multi-queue-num-queues` is 0 or above what we offered.
    QueueCount {
        requested: u32,
        max: u16,
    },
    /// `request-rx-copy` is not 1: page flipping is not supported.
    NoRxCopy,
}

impl HandshakeError {
    /// The negative errno and message written to the error node.
    pub fn describe(&self) -> (i32, String) {
        match self {
            HandshakeError::Store(_) => (-5, String::from("xenstore access failed")),
            HandshakeError::Missing(node) => (-22, format!("reading {node}")),
            HandshakeError::QueueCount { requested, max } => (
                -22,
                format!("guest requested {requested} queues, but valid range is 1 - {max}"),
            ),
            HandshakeError::NoRxCopy => (-95, String::from("feature-rx-flip not supported")),
        }
    }
}

impl From<StoreError> for HandshakeError {
    fn from(e: StoreError) -> Self {
        HandshakeError::Store(e)
    }
}

fn read_u32<S: NetStore + ?Sized>(store: &mut S, path: &str) -> Result<Option<u32>, StoreError> {
    Ok(read_str(store, path)?.and_then(|v| v.parse().ok()))
}

fn read_flag<S: NetStore + ?Sized>(store: &mut S, path: &str) -> Result<bool, StoreError> {
    Ok(read_u32(store, path)?.unwrap_or(0) != 0)
}

fn required<S: NetStore + ?Sized>(store: &mut S, path: String) -> Result<u32, HandshakeError> {
    read_u32(store, &path)?.ok_or(HandshakeError::Missing(path))
}

/// Writes the backend's feature nodes and `multi-queue-max-queues` (before InitWait).
pub fn advertise<S: NetStore + ?Sized>(store: &mut S, config: &Config) -> Result<(), StoreError> {
    for (key, value) in BACKEND_FEATURES {
        store.write(&format!("{}/{key}", config.backend_path), value.as_bytes())?;
    }
    store.write(
        &format!("{}/multi-queue-max-queues", config.backend_path),
        format!("{}", config.max_queues).as_bytes(),
    )
}

impl FrontendConfig {
    /// Reads the frontend's nodes (when it reports Initialised or Connected).
    pub fn read<S: NetStore + ?Sized>(
        store: &mut S,
        config: &Config,
    ) -> Result<Self, HandshakeError> {
        let fe = &config.frontend_path;
        let requested = read_u32(store, &format!("{fe}/multi-queue-num-queues"))?.unwrap_or(1);
        if requested == 0 || requested > u32::from(config.max_queues) {
            return Err(HandshakeError::QueueCount {
                requested,
                max: config.max_queues,
            });
        }
        if read_u32(store, &format!("{fe}/request-rx-copy"))? != Some(1) {
            return Err(HandshakeError::NoRxCopy);
        }
        let features = FrontendFeatures {
            sg: read_flag(store, &format!("{fe}/feature-sg"))?,
            gso_tcpv4: read_flag(store, &format!("{fe}/feature-gso-tcpv4"))?,
            gso_tcpv6: read_flag(store, &format!("{fe}/feature-gso-tcpv6"))?,
            no_csum_offload: read_flag(store, &format!("{fe}/feature-no-csum-offload"))?,
            ipv6_csum_offload: read_flag(store, &format!("{fe}/feature-ipv6-csum-offload"))?,
            multicast_control: read_flag(store, &format!("{fe}/request-multicast-control"))?,
            rx_notify: read_flag(store, &format!("{fe}/feature-rx-notify"))?,
        };
        let mut queues = Vec::new();
        for n in 0..requested {
            // A single queue keeps its keys at the top level (no `queue-0/`).
            let dir = if requested == 1 {
                fe.clone()
            } else {
                format!("{fe}/queue-{n}")
            };
            let tx_ring_ref = required(store, format!("{dir}/tx-ring-ref"))?;
            let rx_ring_ref = required(store, format!("{dir}/rx-ring-ref"))?;
            let channels = match read_u32(store, &format!("{dir}/event-channel-tx"))? {
                Some(tx) => QueueChannels::Split {
                    tx,
                    rx: required(store, format!("{dir}/event-channel-rx"))?,
                },
                None => QueueChannels::Shared(required(store, format!("{dir}/event-channel"))?),
            };
            queues.push(QueueConfig {
                tx_ring_ref,
                rx_ring_ref,
                channels,
            });
        }
        Ok(FrontendConfig { features, queues })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    #[derive(Default)]
    struct MapStore(BTreeMap<String, Vec<u8>>);
    impl NetStore for MapStore {
        fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.0.get(path).cloned())
        }
        fn write(&mut self, path: &str, value: &[u8]) -> Result<(), StoreError> {
            self.0.insert(path.into(), value.to_vec());
            Ok(())
        }
    }

    fn put(s: &mut MapStore, path: &str, v: &str) {
        s.0.insert(path.into(), v.as_bytes().to_vec());
    }

    fn frontend(s: &mut MapStore, fe: &str) {
        put(s, &format!("{fe}/tx-ring-ref"), "8");
        put(s, &format!("{fe}/rx-ring-ref"), "9");
        put(s, &format!("{fe}/event-channel"), "5");
        put(s, &format!("{fe}/request-rx-copy"), "1");
        put(s, &format!("{fe}/feature-rx-notify"), "1");
        put(s, &format!("{fe}/feature-sg"), "1");
        put(s, &format!("{fe}/feature-gso-tcpv4"), "1");
    }

    #[test]
    fn paths_follow_the_xenbus_layout() {
        let c = Config::new(3, 0, 2);
        assert_eq!(c.backend_path, "/local/domain/0/backend/vif/3/0");
        assert_eq!(c.frontend_path, "/local/domain/3/device/vif/0");
        assert_eq!(
            c.frontend_state_path(),
            "/local/domain/3/device/vif/0/state"
        );
        assert_eq!(
            c.error_path(),
            "/local/domain/0/error/backend/vif/3/0/error"
        );
        assert_eq!(Config::new(3, 0, 0).max_queues, 1);
    }

    #[test]
    fn advertise_writes_rx_copy_and_queue_count() {
        let mut s = MapStore::default();
        let c = Config::new(3, 0, 4);
        advertise(&mut s, &c).unwrap();
        let be = &c.backend_path;
        assert_eq!(s.0[&format!("{be}/feature-rx-copy")], b"1");
        assert_eq!(s.0[&format!("{be}/feature-rx-flip")], b"0");
        assert_eq!(s.0[&format!("{be}/feature-gso-tcpv6")], b"1");
        assert_eq!(s.0[&format!("{be}/multi-queue-max-queues")], b"4");
    }

    #[test]
    fn single_queue_frontend_is_read() {
        let mut s = MapStore::default();
        let c = Config::new(3, 0, 4);
        frontend(&mut s, &c.frontend_path);
        let f = FrontendConfig::read(&mut s, &c).unwrap();
        assert!(f.features.sg && f.features.gso_tcpv4 && !f.features.gso_tcpv6);
        assert_eq!(
            f.queues,
            [QueueConfig {
                tx_ring_ref: 8,
                rx_ring_ref: 9,
                channels: QueueChannels::Shared(5)
            }]
        );
    }

    #[test]
    fn multi_queue_split_channels_are_read() {
        let mut s = MapStore::default();
        let c = Config::new(3, 0, 4);
        let fe = c.frontend_path.clone();
        frontend(&mut s, &fe);
        put(&mut s, &format!("{fe}/multi-queue-num-queues"), "2");
        for n in 0..2 {
            let q = format!("{fe}/queue-{n}");
            put(&mut s, &format!("{q}/tx-ring-ref"), &format!("{}", 10 + n));
            put(&mut s, &format!("{q}/rx-ring-ref"), &format!("{}", 20 + n));
            put(
                &mut s,
                &format!("{q}/event-channel-tx"),
                &format!("{}", 30 + n),
            );
            put(
                &mut s,
                &format!("{q}/event-channel-rx"),
                &format!("{}", 40 + n),
            );
        }
        let f = FrontendConfig::read(&mut s, &c).unwrap();
        assert_eq!(f.queues.len(), 2);
        assert_eq!(
            f.queues[1],
            QueueConfig {
                tx_ring_ref: 11,
                rx_ring_ref: 21,
                channels: QueueChannels::Split { tx: 31, rx: 41 }
            }
        );
    }

    #[test]
    fn bad_frontends_are_refused_with_a_reason() {
        let c = Config::new(3, 0, 2);
        let fe = c.frontend_path.clone();
        let mut s = MapStore::default();
        frontend(&mut s, &fe);
        put(&mut s, &format!("{fe}/multi-queue-num-queues"), "3");
        let e = FrontendConfig::read(&mut s, &c).unwrap_err();
        assert_eq!(
            e,
            HandshakeError::QueueCount {
                requested: 3,
                max: 2
            }
        );
        assert!(e.describe().1.contains("valid range is 1 - 2"));
        put(&mut s, &format!("{fe}/multi-queue-num-queues"), "0");
        assert!(FrontendConfig::read(&mut s, &c).is_err());

        let mut s = MapStore::default();
        frontend(&mut s, &fe);
        put(&mut s, &format!("{fe}/request-rx-copy"), "0");
        assert_eq!(
            FrontendConfig::read(&mut s, &c),
            Err(HandshakeError::NoRxCopy)
        );

        let mut s = MapStore::default();
        frontend(&mut s, &fe);
        s.0.remove(&format!("{fe}/feature-rx-notify"));
        assert!(!FrontendConfig::read(&mut s, &c).unwrap().features.rx_notify);

        let mut s = MapStore::default();
        frontend(&mut s, &fe);
        put(&mut s, &format!("{fe}/tx-ring-ref"), "lots");
        assert_eq!(
            FrontendConfig::read(&mut s, &c),
            Err(HandshakeError::Missing(format!("{fe}/tx-ring-ref")))
        );

        let mut s = MapStore::default();
        frontend(&mut s, &fe);
        put(&mut s, &format!("{fe}/event-channel-tx"), "7");
        assert_eq!(
            FrontendConfig::read(&mut s, &c),
            Err(HandshakeError::Missing(format!("{fe}/event-channel-rx")))
        );
    }
}
