//! The transfer routes over a real smoltcp connection, against a small in-memory storage
//! backend: streaming both ways, answers for bad requests, and a client that goes away.

use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::net::Ipv4Addr;

use keel_net::smoltcp::iface::SocketHandle;
use keel_net::smoltcp::socket::tcp;
use keel_net::smoltcp::wire::IpAddress;
use keel_net::{Addressing, NetStack};
use keel_netdev::fake::{FakeNic, Wire};
use keel_xenapi::{
    hash_password, CallOutcome, Config, Entropy, HashCost, HostFacts, SrFacts, StorageBackend,
    StorageError, Timestamp, Value, VdiFacts, XenApi,
};

use crate::{ManagementServer, ServerConfig};

const SR: &str = "00000000-0000-4000-8000-000000000001";
const VDI: &str = "00000000-0000-4000-8000-000000000002";
const SIZE: usize = 1 << 20;

/// One SR with one VDI of 1 MiB, data in memory.
#[derive(Clone, Default)]
struct Disk(Rc<RefCell<Vec<u8>>>);

impl StorageBackend for Disk {
    fn srs(&self) -> Vec<SrFacts> {
        vec![SrFacts {
            uuid: SR.into(),
            device: "test".into(),
            bus: "nvme".into(),
            physical_size: SIZE as u64,
            physical_utilisation: 0,
            virtual_allocation: SIZE as u64,
            sector_size: 512,
        }]
    }
    fn vdis(&self, _: &str) -> Result<Vec<VdiFacts>, StorageError> {
        Ok(vec![VdiFacts {
            uuid: VDI.into(),
            name: "disk".into(),
            virtual_size: SIZE as u64,
            physical_utilisation: 0,
            read_only: false,
            is_snapshot: false,
            snapshot_of: None,
            parent: None,
        }])
    }
    fn create_vdi(&mut self, _: &str, _: &str, _: u64) -> Result<VdiFacts, StorageError> {
        Err(StorageError::SrFull)
    }
    fn destroy_vdi(&mut self, _: &str, _: &str) -> Result<(), StorageError> {
        Ok(())
    }
    fn resize_vdi(&mut self, _: &str, v: &str, _: u64) -> Result<VdiFacts, StorageError> {
        Err(StorageError::ReadOnly(v.into()))
    }
    fn set_vdi_name(&mut self, _: &str, _: &str, _: &str) -> Result<(), StorageError> {
        Err(StorageError::Failed(
            "renames are not part of these tests".into(),
        ))
    }
    fn snapshot_vdi(&mut self, _: &str, _: &str) -> Result<VdiFacts, StorageError> {
        Err(StorageError::SrFull)
    }
    fn clone_vdi(&mut self, _: &str, _: &str, _: &str) -> Result<VdiFacts, StorageError> {
        Err(StorageError::SrFull)
    }
    fn copy_vdi(&mut self, _: &str, _: &str, _: &str) -> Result<VdiFacts, StorageError> {
        Err(StorageError::SrFull)
    }
    fn read(&mut self, _: &str, _: &str, at: u64, out: &mut [u8]) -> Result<(), StorageError> {
        let at = at as usize;
        out.copy_from_slice(&self.0.borrow()[at..at + out.len()]);
        Ok(())
    }
    fn write(&mut self, _: &str, _: &str, at: u64, data: &[u8]) -> Result<(), StorageError> {
        let at = at as usize;
        self.0.borrow_mut()[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self, _: &str) -> Result<(), StorageError> {
        Ok(())
    }
}

struct Counter(u64);
impl Entropy for Counter {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1);
            *b = (self.0 >> 56) as u8;
        }
    }
}

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const T0: u64 = 1_795_000_000_000;

struct World {
    server_stack: NetStack<FakeNic>,
    client_stack: NetStack<FakeNic>,
    server: ManagementServer,
    mono_ms: u64,
    disk: Disk,
    session: String,
    vdi: String,
}

fn world() -> World {
    let (a, b) = Wire::pair([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let st = |ip| Addressing::Static {
        address: ip,
        prefix_len: 24,
        gateway: None,
    };
    let mut server_stack = NetStack::new(a, st(SERVER), 0, 1);
    let client_stack = NetStack::new(b, st(Ipv4Addr::new(10, 0, 0, 2)), 0, 2);
    let phc = hash_password(b"pw", b"test-salt-16byte", HashCost::TEST_ONLY).unwrap();
    let disk = Disk(Rc::new(RefCell::new(vec![0u8; SIZE])));
    let mut config = Config::new(phc, HostFacts::default());
    config.storage = Some(Box::new(disk.clone()));
    let mut api = XenApi::new(config, Box::new(Counter(3)), Timestamp::from_unix_ms(T0)).unwrap();
    let call = |api: &mut XenApi, m: &str, p: Vec<Value>| match api.call(
        m,
        p,
        Timestamp::from_unix_ms(T0),
    ) {
        CallOutcome::Done(Ok(v)) => v.as_str().unwrap().to_string(),
        _ => panic!("{m} failed"),
    };
    let session = call(
        &mut api,
        "session.login_with_password",
        vec![Value::str("root"), Value::str("pw")],
    );
    let vdi = call(
        &mut api,
        "VDI.get_by_uuid",
        vec![Value::str(&session), Value::str(VDI)],
    );
    let server = ManagementServer::new(server_stack.sockets(), api, ServerConfig::default());
    World {
        server_stack,
        client_stack,
        server,
        mono_ms: 0,
        disk,
        session,
        vdi,
    }
}

impl World {
    fn step(&mut self) {
        self.mono_ms += 1;
        let now = Timestamp::from_unix_ms(T0 + self.mono_ms);
        self.server_stack.poll(self.mono_ms);
        self.server
            .poll(self.server_stack.sockets(), self.mono_ms, now);
        self.server_stack.poll(self.mono_ms);
        self.client_stack.poll(self.mono_ms);
    }

    fn connect(&mut self, port: u16) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 65536]),
            tcp::SocketBuffer::new(vec![0; 65536]),
        );
        s.connect(
            self.client_stack.iface_context(),
            (IpAddress::Ipv4(SERVER), 80),
            port,
        )
        .unwrap();
        self.client_stack.sockets().add(s)
    }

    /// Sends `data`, reading (and keeping) whatever comes back meanwhile.
    fn exchange(
        &mut self,
        h: SocketHandle,
        data: &[u8],
        steps: usize,
        done: impl Fn(&[u8]) -> bool,
    ) -> Vec<u8> {
        let mut sent = 0;
        let mut got = Vec::new();
        for _ in 0..steps {
            let s = self.client_stack.sockets().get_mut::<tcp::Socket>(h);
            if sent < data.len() && s.can_send() {
                sent += s.send_slice(&data[sent..]).unwrap();
            }
            while s.can_recv() {
                s.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            if sent == data.len() && done(&got) {
                return got;
            }
            self.step();
        }
        panic!(
            "no complete answer: {:?}",
            String::from_utf8_lossy(&got[..got.len().min(300)])
        );
    }

    fn vdi_ops(&mut self) -> Value {
        let session = self.session.clone();
        let vdi = self.vdi.clone();
        match self.server.api().call(
            "VDI.get_current_operations",
            vec![Value::str(&session), Value::str(&vdi)],
            Timestamp::from_unix_ms(T0 + self.mono_ms),
        ) {
            CallOutcome::Done(Ok(v)) => v,
            _ => panic!("get_current_operations failed"),
        }
    }
}

/// Status and body of a complete Content-Length response in `raw`.
fn response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = core::str::from_utf8(&raw[..end]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length: ")
            .and_then(|v| v.trim().parse().ok())
    })?;
    let body = &raw[end + 4..];
    (body.len() >= len).then(|| (status, body[..len].to_vec()))
}

fn pattern() -> Vec<u8> {
    (0..SIZE - 300)
        .map(|i| (i % 249) as u8 ^ (i >> 11) as u8)
        .collect()
}

#[test]
fn import_then_export_round_trips_over_http() {
    let mut w = world();
    let data = pattern();
    let mut request = format!(
        "PUT /import_raw_vdi?session_id={}&vdi={}&format=raw HTTP/1.1\r\nHost: keel\r\nContent-Length: {}\r\n\r\n",
        w.session.replace(':', "%3A"),
        VDI,
        data.len()
    )
    .into_bytes();
    request.extend_from_slice(&data);
    let c = w.connect(41000);
    let raw = w.exchange(c, &request, 200_000, |got| response(got).is_some());
    assert_eq!(response(&raw).map(|r| r.0), Some(200));
    assert_eq!(&w.disk.0.borrow()[..data.len()], &data[..]);
    assert_eq!(w.vdi_ops(), Value::empty_struct(), "the VDI is free again");

    // Same connection: export the whole VDI.
    let request = format!(
        "GET /export_raw_vdi?session_id={}&vdi={} HTTP/1.1\r\nHost: keel\r\n\r\n",
        w.session, w.vdi
    );
    let raw = w.exchange(c, request.as_bytes(), 200_000, |got| {
        response(got).is_some()
    });
    let (status, body) = response(&raw).unwrap();
    assert_eq!(status, 200);
    assert_eq!(body.len(), SIZE);
    assert_eq!(&body[..data.len()], &data[..]);
}

#[test]
fn bad_transfer_requests_get_http_errors() {
    let mut w = world();
    let cases = [
        (format!("GET /export_raw_vdi?session_id=nope&vdi={VDI} HTTP/1.1\r\nHost: k\r\n\r\n"), 401),
        (format!("GET /export_raw_vdi?session_id={}&vdi=missing HTTP/1.1\r\nHost: k\r\n\r\n", w.session), 404),
        (format!("POST /export_raw_vdi?session_id={}&vdi={VDI} HTTP/1.1\r\nHost: k\r\n\r\n", w.session), 405),
        (format!("PUT /import_raw_vdi?session_id={}&vdi={VDI} HTTP/1.1\r\nHost: k\r\nContent-Length: {}\r\n\r\n", w.session, SIZE + 512), 400),
    ];
    for (i, (request, status)) in cases.iter().enumerate() {
        let c = w.connect(42000 + i as u16);
        let raw = w.exchange(c, request.as_bytes(), 20_000, |got| response(got).is_some());
        assert_eq!(response(&raw).map(|r| r.0), Some(*status), "{request}");
    }
    assert_eq!(w.vdi_ops(), Value::empty_struct());
}

#[test]
fn a_client_that_goes_away_mid_import_frees_the_vdi() {
    let mut w = world();
    let request = format!(
        "PUT /import_raw_vdi?session_id={}&vdi={VDI} HTTP/1.1\r\nHost: k\r\nContent-Length: {SIZE}\r\n\r\n",
        w.session
    );
    let c = w.connect(43000);
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(&[5u8; 4096]);
    let _ = w.exchange(c, &bytes, 2_000, |_| true);
    for _ in 0..50 {
        w.step();
    }
    assert_ne!(w.vdi_ops(), Value::empty_struct(), "busy while importing");
    w.client_stack.sockets().get_mut::<tcp::Socket>(c).abort();
    for _ in 0..2_000 {
        w.step();
        if w.vdi_ops() == Value::empty_struct() {
            return;
        }
    }
    panic!("the VDI stayed busy after the client left");
}
