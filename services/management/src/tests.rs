//! The management server on a real smoltcp stack, with smoltcp clients on a fake wire.

use super::*;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;
use core::net::Ipv4Addr;
use keel_net::smoltcp::socket::tcp;
use keel_net::smoltcp::wire::IpAddress;
use keel_net::{Addressing, NetStack};
use keel_netdev::fake::{FakeNic, Wire};
use keel_xenapi::{hash_password, Config, Entropy, HashCost, HostFacts};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PASSWORD: &str = "correct horse";

struct TestEntropy(u64);
impl Entropy for TestEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

struct World {
    server_stack: NetStack<FakeNic>,
    client_stack: NetStack<FakeNic>,
    server: ManagementServer,
    mono_ms: u64,
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
    let phc = hash_password(
        PASSWORD.as_bytes(),
        b"test-salt-16byte",
        HashCost::TEST_ONLY,
    )
    .unwrap();
    let api = XenApi::new(
        Config::new(phc, HostFacts::default()),
        Box::new(TestEntropy(7)),
        now(0),
    )
    .unwrap();
    let server = ManagementServer::new(server_stack.sockets(), api, ServerConfig::default());
    World {
        server_stack,
        client_stack,
        server,
        mono_ms: 0,
    }
}

fn now(mono_ms: u64) -> Timestamp {
    Timestamp::from_unix_ms(1_795_000_000_000 + mono_ms)
}

impl World {
    fn step(&mut self) {
        self.mono_ms += 1;
        self.server_stack.poll(self.mono_ms);
        self.server
            .poll(self.server_stack.sockets(), self.mono_ms, now(self.mono_ms));
        self.server_stack.poll(self.mono_ms);
        self.client_stack.poll(self.mono_ms);
    }

    fn connect(&mut self, port: u16) -> keel_net::smoltcp::iface::SocketHandle {
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

    fn send(&mut self, h: keel_net::smoltcp::iface::SocketHandle, data: &[u8]) {
        let mut sent = 0;
        for _ in 0..10_000 {
            if sent == data.len() {
                return;
            }
            let s = self.client_stack.sockets().get_mut::<tcp::Socket>(h);
            if s.can_send() {
                sent += s.send_slice(&data[sent..]).unwrap();
            }
            self.step();
        }
        panic!("could not send the request");
    }

    /// Reads one HTTP response (Content-Length framed), stepping the world.
    fn response(
        &mut self,
        h: keel_net::smoltcp::iface::SocketHandle,
        max_steps: usize,
    ) -> Option<(u16, String)> {
        let mut got = Vec::new();
        for _ in 0..max_steps {
            self.step();
            let s = self.client_stack.sockets().get_mut::<tcp::Socket>(h);
            while s.can_recv() {
                s.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            if let Some(r) = parse_response(&got) {
                return Some(r);
            }
        }
        None
    }
}

fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = core::str::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length: ")
            .map(|v| v.trim().parse().ok())
    })??;
    (body.len() >= len).then(|| (status, String::from(&body[..len])))
}

fn xml_call(method: &str, params: &[&str]) -> Vec<u8> {
    let mut body = format!(
        "<?xml version='1.0'?>\n<methodCall>\n<methodName>{method}</methodName>\n<params>\n"
    );
    for p in params {
        body.push_str(&format!(
            "<param>\n<value><string>{p}</string></value>\n</param>\n"
        ));
    }
    body.push_str("</params>\n</methodCall>\n");
    post("/RPC2", "text/xml", &body)
}

fn post(path: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: keel\r\nContent-Type: {content_type}\r\nUser-Agent: Python-xmlrpc/3.11\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn session_of(xml: &str) -> String {
    let start = xml.find("OpaqueRef:").expect("a session ref");
    String::from(&xml[start..start + "OpaqueRef:".len() + 36])
}

#[test]
fn xmlrpc_login_and_call_over_tcp() {
    let mut w = world();
    let c = w.connect(40000);
    w.send(
        c,
        &xml_call(
            "session.login_with_password",
            &["root", PASSWORD, "1.0", "test"],
        ),
    );
    let (status, body) = w.response(c, 200).expect("login response");
    assert_eq!(status, 200);
    assert!(
        body.contains("<name>Status</name><value>Success</value>"),
        "{body}"
    );
    let session = session_of(&body);
    // Same connection (keep-alive): a call that needs the session.
    w.send(c, &xml_call("pool.get_all", &[&session]));
    let (status, body) = w.response(c, 200).expect("pool.get_all response");
    assert_eq!(status, 200);
    assert!(
        body.contains("Success") && body.contains("OpaqueRef:"),
        "{body}"
    );
    assert_eq!(w.server.stats().api_calls, 2);
    assert_eq!(w.server.stats().connections_accepted, 1);
}

#[test]
fn wrong_password_is_a_failure_envelope() {
    let mut w = world();
    let c = w.connect(40001);
    w.send(
        c,
        &xml_call("session.login_with_password", &["root", "nope"]),
    );
    let (status, body) = w.response(c, 200).unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("Failure") && body.contains("SESSION_AUTHENTICATION_FAILED"),
        "{body}"
    );
}

#[test]
fn jsonrpc_endpoint_answers_bare_results() {
    let mut w = world();
    let c = w.connect(40002);
    let body = format!(
        r#"{{"jsonrpc":"2.0","method":"session.login_with_password","params":["root","{PASSWORD}"],"id":1}}"#
    );
    w.send(c, &post("/jsonrpc", "application/json", &body));
    let (status, body) = w.response(c, 200).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains(r#""result":"OpaqueRef:"#), "{body}");
}

#[test]
fn routes_answer_pages_404_and_405() {
    let mut w = world();
    let c = w.connect(40003);
    w.send(c, b"GET / HTTP/1.1\r\nHost: keel\r\n\r\n");
    let (status, body) = w.response(c, 200).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("XenAPI"), "{body}");
    w.send(c, b"GET /nowhere HTTP/1.1\r\nHost: keel\r\n\r\n");
    assert_eq!(w.response(c, 200).unwrap().0, 404);
    w.send(
        c,
        b"PUT /jsonrpc HTTP/1.1\r\nHost: keel\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(w.response(c, 200).unwrap().0, 405);
}

#[test]
fn sixty_four_clients_at_once_all_get_answers() {
    let mut w = world();
    let clients: Vec<_> = (0..64).map(|i| w.connect(41000 + i)).collect();
    let request = xml_call("session.login_with_password", &["root", PASSWORD]);
    for _ in 0..50 {
        w.step();
    }
    for &c in &clients {
        let s = w.client_stack.sockets().get_mut::<tcp::Socket>(c);
        assert!(s.may_send(), "client connected");
        s.send_slice(&request).unwrap();
    }
    let mut answered = 0;
    for &c in &clients {
        let (status, body) = w.response(c, 2000).expect("every client is answered");
        assert_eq!(status, 200);
        assert!(body.contains("Success"));
        answered += 1;
    }
    assert_eq!(answered, 64);
    assert_eq!(w.server.connections(), 64);
}

#[test]
fn event_from_waits_until_another_connection_makes_an_event() {
    let mut w = world();
    let a = w.connect(42000);
    let b = w.connect(42001);
    w.send(
        a,
        &xml_call("session.login_with_password", &["root", PASSWORD]),
    );
    let session = session_of(&w.response(a, 200).unwrap().1);
    // A first event.from with an empty token returns at once with a token.
    let from = |session: &str, token: &str| {
        let body = format!(
            "<?xml version='1.0'?>\n<methodCall><methodName>event.from</methodName><params>\
             <param><value><string>{session}</string></value></param>\
             <param><value><array><data><value><string>pool</string></value></data></array></value></param>\
             <param><value><string>{token}</string></value></param>\
             <param><value><double>30.0</double></value></param></params></methodCall>"
        );
        post("/RPC2", "text/xml", &body)
    };
    w.send(a, &from(&session, ""));
    let (_, first) = w.response(a, 200).unwrap();
    let token_at = first.find("<name>token</name>").expect("token field");
    let token_value = &first[token_at..];
    let start = token_value.find("<value>").unwrap() + "<value>".len();
    let token_text = &token_value[start..];
    let token = token_text[..token_text.find("</value>").unwrap()]
        .replace("<string>", "")
        .replace("</string>", "");

    // Now it must wait: nothing happens for a while.
    w.send(a, &from(&session, &token));
    assert!(
        w.response(a, 300).is_none(),
        "event.from returned without an event"
    );

    // Another connection changes the pool: the parked call completes with that event.
    w.send(
        b,
        &xml_call("session.login_with_password", &["root", PASSWORD]),
    );
    let session_b = session_of(&w.response(b, 200).unwrap().1);
    w.send(b, &xml_call("pool.get_all", &[&session_b]));
    let pool_body = w.response(b, 200).unwrap().1;
    let pool = session_of(&pool_body);
    w.send(
        b,
        &xml_call(
            "pool.add_to_other_config",
            &[&session_b, &pool, "barrier", "1"],
        ),
    );
    assert!(w.response(b, 200).unwrap().1.contains("Success"));
    let (status, events) = w.response(a, 200).expect("the parked event.from returns");
    assert_eq!(status, 200);
    assert!(
        events.contains("barrier") || events.contains("<value>mod</value>"),
        "{events}"
    );
}

#[test]
fn garbage_requests_get_400_and_do_not_disturb_others() {
    let mut w = world();
    let bad = w.connect(43000);
    let good = w.connect(43001);
    w.send(bad, b"\x00\x01GARBAGE / HTTP/9\r\n\r\n");
    let (status, _) = w.response(bad, 200).expect("an answer to garbage");
    assert_eq!(status, 400);
    w.send(
        good,
        &xml_call("session.login_with_password", &["root", PASSWORD]),
    );
    assert!(w.response(good, 200).unwrap().1.contains("Success"));
}

#[test]
fn closed_connections_are_released() {
    let mut w = world();
    let c = w.connect(44000);
    w.send(
        c,
        b"GET / HTTP/1.1\r\nHost: keel\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(w.response(c, 200).unwrap().0, 200);
    w.client_stack.sockets().get_mut::<tcp::Socket>(c).close();
    for _ in 0..500 {
        w.step();
    }
    assert_eq!(w.server.connections(), 0);
}
