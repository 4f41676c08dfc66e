//! The console route over a real smoltcp connection: a XenAPI with a running guest (the
//! XenAPI's own guest and storage fakes), a `ConsoleSet` over fake console pages playing the
//! guest, and smoltcp clients.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::net::Ipv4Addr;

use keel_console::fake::BytePage;
use keel_console::ConsoleSet;
use keel_net::smoltcp::iface::SocketHandle;
use keel_net::smoltcp::socket::tcp;
use keel_net::smoltcp::wire::IpAddress;
use keel_net::{Addressing, NetStack};
use keel_netdev::fake::{FakeNic, Wire};
use keel_xenapi::handlers::vm_builtin::PVH_TEMPLATE_NAME;
use keel_xenapi::{CallOutcome, StorageBackend, Timestamp, Value};

use crate::{ManagementServer, ServerConfig};

#[path = "../../../../xenapi/tests/common/mod.rs"]
mod common;
#[path = "../../../../xenapi/tests/guest_fake/mod.rs"]
mod guest_fake;
#[path = "../../../../xenapi/tests/storage_fake/mod.rs"]
mod storage_fake;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const MIB: u64 = 1 << 20;

type Consoles = Rc<RefCell<ConsoleSet<&'static BytePage>>>;

fn now(mono_ms: u64) -> Timestamp {
    // The XenAPI fixtures' clock starts at T0.
    Timestamp::from_unix_ms(1_700_000_000_000 + mono_ms)
}

struct World {
    server_stack: NetStack<FakeNic>,
    client_stack: NetStack<FakeNic>,
    server: ManagementServer,
    consoles: Consoles,
    storage: storage_fake::FakeStorage,
    session: String,
    mono_ms: u64,
}

/// A running guest: its VM, its console reference and UUID, its domid and console page.
struct Guest {
    vm: String,
    console: String,
    console_uuid: String,
    domid: u16,
    page: &'static BytePage,
}

fn world() -> World {
    let (a, b) = Wire::pair([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let st = |ip| Addressing::Static {
        address: ip,
        prefix_len: 24,
        gateway: None,
    };
    let mut server_stack = NetStack::new(a, st(SERVER), 0, 1);
    let client_stack = NetStack::new(b, st(CLIENT), 0, 2);
    let storage = storage_fake::FakeStorage::two_srs(256 * MIB);
    let guests = guest_fake::FakeGuests::with_memory(4096 * MIB);
    let mut config = common::config();
    config.storage = Some(Box::new(storage.clone()));
    config.guests = Some(Box::new(guests));
    let mut api = common::api_with(config);
    let session = common::login(&mut api);
    let mut server = ManagementServer::new(server_stack.sockets(), api, ServerConfig::default());
    let consoles: Consoles = Rc::new(RefCell::new(ConsoleSet::default()));
    server.set_consoles(Box::new(consoles.clone()));
    World {
        server_stack,
        client_stack,
        server,
        consoles,
        storage,
        session,
        mono_ms: 0,
    }
}

fn s(text: &str) -> Value {
    Value::str(text)
}

fn text(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v:?}"))
        .to_string()
}

impl World {
    /// A XenAPI call with the test's session, run to its end.
    fn call(&mut self, method: &str, args: Vec<Value>) -> Value {
        let mut params = vec![s(&self.session)];
        params.extend(args);
        let at = now(self.mono_ms);
        let api = self.server.api();
        let mut wait = match api.call(method, params, at) {
            CallOutcome::Done(r) => return r.unwrap_or_else(|e| panic!("{method}: {e:?}")),
            CallOutcome::Pending(w) => w,
        };
        for _ in 0..1000 {
            api.run_tasks(at);
            match api.resume(wait, at) {
                CallOutcome::Done(r) => return r.unwrap_or_else(|e| panic!("{method}: {e:?}")),
                CallOutcome::Pending(w) => wait = w,
            }
        }
        panic!("{method} never finished");
    }

    fn image_vdi(&mut self, name: &str, bytes: &[u8]) -> String {
        let size = (bytes.len() as u64).div_ceil(512) * 512;
        let sr = text(&self.call("SR.get_by_uuid", vec![s("sr-a")]));
        let record = Value::Struct(
            [
                ("SR".to_string(), s(&sr)),
                ("name_label".to_string(), s(name)),
                ("virtual_size".to_string(), Value::Int(size as i64)),
            ]
            .into_iter()
            .collect(),
        );
        let vdi = text(&self.call("VDI.create", vec![record]));
        let uuid = text(&self.call("VDI.get_uuid", vec![s(&vdi)]));
        let mut data = bytes.to_vec();
        data.resize(size as usize, 0);
        self.storage.write("sr-a", &uuid, 0, &data).unwrap();
        uuid
    }

    /// Creates and starts a guest, and attaches its console page as the toolstack would.
    fn running_guest(&mut self, name: &str) -> Guest {
        let template = self.call("VM.get_by_name_label", vec![s(PVH_TEMPLATE_NAME)]);
        let template = text(&template.as_array().unwrap()[0]);
        let vm = text(&self.call("VM.clone", vec![s(&template), s(name)]));
        self.call("VM.provision", vec![s(&vm)]);
        self.call("VM.set_is_a_template", vec![s(&vm), Value::Bool(false)]);
        let kernel = self.image_vdi("vmlinuz", b"\x7fELF kernel image for tests");
        self.call(
            "VM.set_PV_kernel",
            vec![s(&vm), s(&format!("vdi:{kernel}"))],
        );
        self.call(
            "VM.start",
            vec![s(&vm), Value::Bool(false), Value::Bool(false)],
        );
        let domid = self.call("VM.get_domid", vec![s(&vm)]).as_int().unwrap();
        let consoles = self.call("VM.get_consoles", vec![s(&vm)]);
        let console = text(&consoles.as_array().unwrap()[0]);
        let console_uuid = text(&self.call("console.get_uuid", vec![s(&console)]));
        let page: &'static BytePage = Box::leak(Box::new(BytePage::new()));
        let domid = u16::try_from(domid).unwrap();
        self.consoles.borrow_mut().attach(domid, page).unwrap();
        Guest {
            vm,
            console,
            console_uuid,
            domid,
            page,
        }
    }

    /// The guest writes `bytes` to its console, the backend serving the ring as it fills.
    fn guest_writes(&mut self, guest: &Guest, bytes: &[u8]) {
        let mut at = 0;
        while at < bytes.len() {
            at += guest.page.guest_write_output(&bytes[at..]).unwrap();
            self.consoles.borrow_mut().service(guest.domid).unwrap();
        }
    }

    fn step(&mut self) {
        self.mono_ms += 1;
        let server = &mut self.server;
        self.server_stack.poll_with(self.mono_ms, |sockets| {
            server.accept(sockets);
        });
        self.server
            .poll(self.server_stack.sockets(), self.mono_ms, now(self.mono_ms));
        self.server_stack.poll(self.mono_ms);
        self.client_stack.poll(self.mono_ms);
    }

    fn connect(&mut self, port: u16, buffer: usize) -> SocketHandle {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buffer]),
            tcp::SocketBuffer::new(vec![0; 65536]),
        );
        socket
            .connect(
                self.client_stack.iface_context(),
                (IpAddress::Ipv4(SERVER), 80),
                port,
            )
            .unwrap();
        self.client_stack.sockets().add(socket)
    }

    fn send(&mut self, h: SocketHandle, data: &[u8]) {
        let mut sent = 0;
        for _ in 0..10_000 {
            if sent == data.len() {
                return;
            }
            let socket = self.client_stack.sockets().get_mut::<tcp::Socket>(h);
            if socket.can_send() {
                sent += socket.send_slice(&data[sent..]).unwrap();
            }
            self.step();
        }
        panic!("could not send");
    }

    /// Steps `steps` times, collecting what the client receives.
    fn receive(&mut self, h: SocketHandle, steps: usize) -> Vec<u8> {
        let mut got = Vec::new();
        for _ in 0..steps {
            self.step();
            let socket = self.client_stack.sockets().get_mut::<tcp::Socket>(h);
            while socket.can_recv() {
                socket
                    .recv(|b| {
                        got.extend_from_slice(b);
                        (b.len(), ())
                    })
                    .unwrap();
            }
        }
        got
    }

    /// Steps until the client has received at least `expected`'s length and returns it all.
    fn receive_until(&mut self, h: SocketHandle, expected: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        for _ in 0..2000 {
            got.extend(self.receive(h, 1));
            if got.windows(expected.len()).any(|w| w == expected) {
                return got;
            }
        }
        panic!(
            "never received {:?}; got {:?}",
            String::from_utf8_lossy(expected),
            String::from_utf8_lossy(&got)
        );
    }

    fn peer_closed(&mut self, h: SocketHandle) -> bool {
        let socket = self.client_stack.sockets().get_mut::<tcp::Socket>(h);
        !socket.may_recv()
    }

    /// The full answer to a request that the server answers and closes.
    fn exchange(&mut self, port: u16, request: &str) -> (u16, Vec<u8>) {
        let c = self.connect(port, 65536);
        self.send(c, request.as_bytes());
        let mut got = Vec::new();
        for _ in 0..2000 {
            got.extend(self.receive(c, 1));
            if self.peer_closed(c) {
                break;
            }
        }
        assert!(self.peer_closed(c), "the server closes after answering");
        let text = String::from_utf8_lossy(&got).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status in {text:?}"));
        let body_at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = &text[..body_at];
        let body = if head.contains("Transfer-Encoding: chunked") {
            dechunk(&got[body_at..])
        } else {
            got[body_at..].to_vec()
        };
        (status, body)
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(core::str::from_utf8(&raw[..line_end]).unwrap(), 16).unwrap();
        raw = &raw[line_end + 2..];
        if size == 0 {
            assert_eq!(raw, b"\r\n");
            return body;
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

fn connect_request(target: &str) -> String {
    format!("CONNECT {target} HTTP/1.1\r\nHost: keel\r\n\r\n")
}

#[test]
fn connect_streams_the_history_then_live_output_and_takes_input() {
    let mut w = world();
    let guest = w.running_guest("vm1");
    w.guest_writes(&guest, b"Linux version 6.1\r\nlogin: ");
    let location = keel_console::location("keel", &guest.console);
    let request = keel_console::connect_request(&location, &w.session).unwrap();
    let c = w.connect(41000, 65536);
    // The client's first keystrokes may share a segment with its request.
    w.send(c, format!("{request}ro").as_bytes());
    let got = w.receive_until(c, b"login: ");
    assert_eq!(
        keel_console::parse_connect_response(&got),
        keel_console::ConnectResponse::Accepted {
            head_len: keel_console::CONNECT_ACCEPTED.len()
        }
    );
    assert_eq!(
        &got[keel_console::CONNECT_ACCEPTED.len()..],
        b"Linux version 6.1\r\nlogin: "
    );

    w.send(c, b"ot\r");
    w.receive(c, 5);
    assert_eq!(guest.page.guest_read_input(100).unwrap(), b"root\r");

    w.guest_writes(&guest, b"root\r\n# ");
    assert_eq!(w.receive_until(c, b"# "), b"root\r\n# ");
    assert!(!w.peer_closed(c));

    // The domain goes away: the connection closes.
    w.consoles.borrow_mut().detach(guest.domid);
    w.receive(c, 20);
    assert!(w.peer_closed(c));
}

#[test]
fn get_answers_the_history_and_closes() {
    let mut w = world();
    let guest = w.running_guest("vm1");
    let log: Vec<u8> = (0..10_000)
        .flat_map(|i| format!("line {i}\r\n").into_bytes())
        .collect();
    w.guest_writes(&guest, &log);
    let target = format!("/console?ref={}&session_id={}", guest.console, w.session);
    let (status, body) = w.exchange(
        41001,
        &format!("GET {target} HTTP/1.1\r\nHost: keel\r\n\r\n"),
    );
    assert_eq!(status, 200);
    // More than the 64 KiB history was written: the answer is its last 64 KiB.
    assert!(log.len() > keel_console::DEFAULT_HISTORY_BYTES);
    assert_eq!(body.len(), keel_console::DEFAULT_HISTORY_BYTES);
    assert!(log.ends_with(&body));

    // By UUID, with the session as a cookie, works the same.
    let (status, body) = w.exchange(
        41002,
        &format!(
            "GET /console?uuid={} HTTP/1.1\r\nHost: keel\r\nCookie: a=b; session_id={}\r\n\r\n",
            guest.console_uuid, w.session
        ),
    );
    assert_eq!(status, 200);
    assert!(body.ends_with(b"line 9999\r\n"));
}

#[test]
fn refusals_are_http_answers_and_close() {
    let mut w = world();
    let guest = w.running_guest("vm1");
    let session = w.session.clone();
    let by_ref = |s: &str| format!("/console?ref={}&session_id={s}", guest.console);
    let cases: Vec<(String, u16)> = vec![
        (connect_request(&by_ref("OpaqueRef:not-a-session")), 401),
        (
            connect_request(&format!("/console?ref={}", guest.console)),
            401,
        ),
        (
            connect_request(&format!(
                "/console?ref=OpaqueRef:nothing&session_id={session}"
            )),
            404,
        ),
        (
            connect_request(&format!("/console?uuid=nothing&session_id={session}")),
            404,
        ),
        (
            connect_request(&format!("/console?session_id={session}")),
            400,
        ),
        (
            connect_request(&format!("{}&ref=again", by_ref(&session))),
            400,
        ),
        (
            connect_request(&format!("/console?ref=%zz&session_id={session}")),
            400,
        ),
        (
            format!(
                "POST {} HTTP/1.1\r\nHost: keel\r\nContent-Length: 2\r\n\r\nhi",
                by_ref(&session)
            ),
            405,
        ),
        (
            format!("PUT {} HTTP/1.1\r\nHost: keel\r\n\r\n", by_ref(&session)),
            405,
        ),
    ];
    for (i, (request, status)) in cases.iter().enumerate() {
        let (got, _) = w.exchange(41100 + i as u16, request);
        assert_eq!(got, *status, "{request}");
    }

    // A console whose page the toolstack has not attached (or has detached): 404.
    w.consoles.borrow_mut().detach(guest.domid);
    let (got, body) = w.exchange(41200, &connect_request(&by_ref(&session)));
    assert_eq!(got, 404);
    assert_eq!(body, b"the console's VM has no console attached\n");

    // A halted VM has no console object any more.
    w.call("VM.hard_shutdown", vec![s(&guest.vm)]);
    let (got, _) = w.exchange(41201, &connect_request(&by_ref(&session)));
    assert_eq!(got, 404);
}

#[test]
fn a_client_that_never_reads_holds_bounded_memory_and_never_blocks_the_guest() {
    let mut w = world();
    let guest = w.running_guest("vm1");
    let target = format!("/console?ref={}&session_id={}", guest.console, w.session);
    // A client with a 4 KiB receive window that reads nothing after the answer.
    let c = w.connect(41300, 4096);
    w.send(c, connect_request(&target).as_bytes());
    w.receive(c, 20);
    let budget_before = w.server.budget().used();
    // The guest writes 1 MiB; every ring's worth is taken at once.
    for i in 0..512 {
        let piece = [b'a' + (i % 26) as u8; 2048];
        assert_eq!(guest.page.guest_write_output(&piece).unwrap(), 2048);
        w.consoles.borrow_mut().service(guest.domid).unwrap();
        w.step();
    }
    assert_eq!(w.server.budget().used(), budget_before);
    let conn = &w.server.conns[0];
    let limits = ServerConfig::default().http;
    assert!(
        conn.http.buffered_capacity()
            <= limits.input_buffer_bytes
                + limits.output_buffer_bytes
                + limits.max_response_head_bytes
                + 256
    );
    // When the client reads at last it gets what was sent, the skip marker and the tail.
    let got = w.receive_until(c, b"skipped]\r\n");
    let got = [got, w.receive(c, 200)].concat();
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("bytes of console output skipped]"));
    assert!(got.ends_with(&[b'a' + (511 % 26) as u8; 2048]));
}

#[test]
fn the_client_closing_leaves_the_guest_alone() {
    let mut w = world();
    let guest = w.running_guest("vm1");
    let target = format!("/console?ref={}&session_id={}", guest.console, w.session);
    let c = w.connect(41400, 65536);
    w.send(c, format!("{}exit\r", connect_request(&target)).as_bytes());
    w.receive(c, 5);
    w.client_stack.sockets().get_mut::<tcp::Socket>(c).close();
    w.receive(c, 50);
    assert_eq!(w.server.connections(), 0, "the connection is released");
    assert_eq!(guest.page.guest_read_input(100).unwrap(), b"exit\r");
    assert!(w.consoles.borrow().is_attached(guest.domid));
    // Another client attaches and sees the history.
    w.guest_writes(&guest, b"logout\r\n");
    let (status, body) = w.exchange(
        41401,
        &format!("GET {target} HTTP/1.1\r\nHost: keel\r\n\r\n"),
    );
    assert_eq!(status, 200);
    assert_eq!(body, b"logout\r\n");
}

#[test]
fn without_a_toolstack_the_console_path_is_404() {
    let mut w = world();
    let guest = w.running_guest("vm1");
    w.server.consoles = None;
    let target = format!("/console?ref={}&session_id={}", guest.console, w.session);
    let (status, _) = w.exchange(41500, &connect_request(&target));
    assert_eq!(status, 404);
}

#[test]
fn a_typist_faster_than_the_guest_is_held_back_by_tcp() {
    let mut w = world();
    let guest = w.running_guest("vm1");
    let target = format!("/console?ref={}&session_id={}", guest.console, w.session);
    let c = w.connect(41600, 65536);
    w.send(c, connect_request(&target).as_bytes());
    w.receive(c, 10);
    // The client offers 256 KiB of input; the guest reads none of it.
    let input: Vec<u8> = (0..256 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let mut offered = 0;
    for _ in 0..400 {
        let socket = w.client_stack.sockets().get_mut::<tcp::Socket>(c);
        if socket.can_send() {
            offered += socket.send_slice(&input[offered..]).unwrap();
        }
        w.step();
    }
    assert!(offered < input.len(), "the client was held back");
    let limits = ServerConfig::default().http;
    let conn = &w.server.conns[0];
    // Its input buffer and output window (with room for a response head), no more.
    let bound = limits.input_buffer_bytes
        + limits.output_buffer_bytes
        + limits.max_response_head_bytes
        + 256;
    assert!(
        conn.http.buffered_capacity() <= bound,
        "{} > {bound}",
        conn.http.buffered_capacity()
    );
    // The guest reads: everything arrives, in order, none lost.
    let mut read = Vec::new();
    for _ in 0..20_000 {
        read.extend(guest.page.guest_read_input(1024).unwrap());
        // Its notification: the backend moves queued input into the ring.
        w.consoles.borrow_mut().service(guest.domid).unwrap();
        let socket = w.client_stack.sockets().get_mut::<tcp::Socket>(c);
        if socket.can_send() && offered < input.len() {
            offered += socket.send_slice(&input[offered..]).unwrap();
        }
        w.step();
        if read.len() == input.len() {
            break;
        }
    }
    assert_eq!(read.len(), input.len());
    assert!(read == input);
}

#[test]
fn a_flooding_guest_does_not_hold_up_other_clients() {
    let mut w = world();
    let guest = w.running_guest("vm1");
    let target = format!("/console?ref={}&session_id={}", guest.console, w.session);
    let c = w.connect(41700, 65536);
    w.send(c, connect_request(&target).as_bytes());
    w.receive(c, 10);
    let other = w.connect(41701, 65536);
    w.send(other, b"GET / HTTP/1.1\r\nHost: keel\r\n\r\n");
    let mut answer = Vec::new();
    let mut streamed = 0;
    for step in 0..200 {
        // The guest fills its ring every round; the console client reads everything.
        let piece = [b'x'; 2048];
        guest.page.guest_write_output(&piece).unwrap();
        w.consoles.borrow_mut().service(guest.domid).unwrap();
        streamed += w.receive(c, 1).len();
        let socket = w.client_stack.sockets().get_mut::<tcp::Socket>(other);
        while socket.can_recv() {
            socket
                .recv(|b| {
                    answer.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
        }
        if answer.starts_with(b"HTTP/1.1 200") {
            assert!(step < 20, "answered only after {step} rounds");
            break;
        }
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    assert!(streamed > 0);
}
