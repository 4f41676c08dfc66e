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
    world_with(ServerConfig::default())
}

fn world_with(config: ServerConfig) -> World {
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
    let server = ManagementServer::new(server_stack.sockets(), api, config);
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
    /// One round as the kernel drives it: frames in (with the listener refilled before each),
    /// the server, frames out.
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

    fn connect(&mut self, port: u16) -> keel_net::smoltcp::iface::SocketHandle {
        self.connect_with_buffers(port, 65536)
    }

    fn connect_with_buffers(
        &mut self,
        port: u16,
        buffer: usize,
    ) -> keel_net::smoltcp::iface::SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buffer]),
            tcp::SocketBuffer::new(vec![0; buffer]),
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
    post("/RPC2", "text/xml", &xml_body(method, params))
}

fn xml_body(method: &str, params: &[&str]) -> String {
    let mut body = format!(
        "<?xml version='1.0'?>\n<methodCall>\n<methodName>{method}</methodName>\n<params>\n"
    );
    for p in params {
        body.push_str(&format!(
            "<param>\n<value><string>{p}</string></value>\n</param>\n"
        ));
    }
    body.push_str("</params>\n</methodCall>\n");
    body
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
fn a_thousand_and_twenty_four_clients_connect_at_once_and_all_get_answers() {
    let mut w = world();
    // Every SYN reaches the server in the same round; the backlog is 4.
    let clients: Vec<_> = (0..1024)
        .map(|i| w.connect_with_buffers(30000 + i, 2048))
        .collect();
    for _ in 0..20 {
        w.step();
    }
    assert_eq!(w.server.connections(), 1024);
    // Idle, they cost what the documentation says (docs/architecture.md, "Memory").
    let idle = w.server.idle_connection_bytes();
    assert!(idle <= 26 * 1024, "{idle} bytes per idle connection");
    // The budget is charged for every socket: 1024 connected and 4 listening.
    assert_eq!(
        w.server.budget().used(),
        (1024 + 4) * (idle - core::mem::size_of::<connection::Conn>())
    );
    assert!(w.server.budget().used() <= (1024 + 4) * idle);
    let request = post("/", "text/xml", &xml_body("system.listMethods", &[]));
    for &c in &clients {
        let s = w.client_stack.sockets().get_mut::<tcp::Socket>(c);
        assert_eq!(s.state(), tcp::State::Established, "no client was reset");
        assert_eq!(s.send_slice(&request).unwrap(), request.len());
    }
    // Step the world and collect answers from every client as they complete.
    let mut replies: Vec<Vec<u8>> = vec![Vec::new(); clients.len()];
    let mut answered = vec![false; clients.len()];
    for _ in 0..2000 {
        if answered.iter().all(|&a| a) {
            break;
        }
        w.step();
        for (i, &c) in clients.iter().enumerate() {
            if answered[i] {
                continue;
            }
            let s = w.client_stack.sockets().get_mut::<tcp::Socket>(c);
            while s.can_recv() {
                s.recv(|b| {
                    replies[i].extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            if let Some((status, body)) = parse_response(&replies[i]) {
                assert_eq!(status, 200);
                assert!(body.contains("session.login_with_password"));
                answered[i] = true;
            }
        }
    }
    assert_eq!(answered.iter().filter(|&&a| a).count(), 1024);
    assert_eq!(w.server.connections(), 1024, "keep-alive: all still open");
}

#[test]
fn a_full_server_refuses_new_clients_and_keeps_serving_its_own() {
    let mut w = world_with(ServerConfig {
        max_connections: 10,
        backlog: 2,
        ..ServerConfig::default()
    });
    let clients: Vec<_> = (0..14)
        .map(|i| w.connect_with_buffers(31000 + i, 4096))
        .collect();
    for _ in 0..30 {
        w.step();
    }
    let state = |w: &mut World, c| w.client_stack.sockets().get::<tcp::Socket>(c).state();
    let established: Vec<_> = clients
        .iter()
        .copied()
        .filter(|&c| state(&mut w, c) == tcp::State::Established)
        .collect();
    let refused = clients
        .iter()
        .filter(|&&c| state(&mut w, c) == tcp::State::Closed)
        .count();
    assert_eq!((established.len(), refused), (10, 4));
    let request = post("/", "text/xml", &xml_body("system.listMethods", &[]));
    for &c in &established {
        w.send(c, &request);
        assert_eq!(w.response(c, 500).expect("served").0, 200);
        assert_eq!(state(&mut w, c), tcp::State::Established);
    }
}

#[test]
fn an_exhausted_budget_answers_503_and_the_server_recovers() {
    let mut w = world_with(ServerConfig {
        // Room for the sockets of a few connections and a little more.
        memory_budget_bytes: 8 * 26 * 1024 + 64 * 1024,
        ..ServerConfig::default()
    });
    let hog = w.connect_with_buffers(32000, 8192);
    let victim = w.connect_with_buffers(32001, 8192);
    for _ in 0..10 {
        w.step();
    }
    // The hog announces a body bigger than what is left and sends it slowly: refused at once.
    let big = 200 * 1024;
    let head = format!(
        "POST / HTTP/1.1\r\nHost: keel\r\nContent-Type: text/xml\r\nContent-Length: {big}\r\n\r\n<?xml"
    );
    w.send(hog, head.as_bytes());
    let (status, body) = w.response(hog, 200).expect("an answer");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no memory"), "{body}");
    assert_eq!(w.server.stats().refused_for_memory, 1);
    // Nothing of it is held, and others are served.
    w.send(
        victim,
        &xml_call("session.login_with_password", &["root", PASSWORD]),
    );
    assert!(w.response(victim, 500).unwrap().1.contains("Success"));
    // Chunked bodies (no declared length) are cut off when they outgrow the budget.
    let hog2 = w.connect_with_buffers(32002, 8192);
    w.send(
        hog2,
        b"POST / HTTP/1.1\r\nHost: keel\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    let chunk = format!("{:x}\r\n{}\r\n", 4000, "x".repeat(4000));
    let mut status = None;
    for _ in 0..100 {
        let s = w.client_stack.sockets().get_mut::<tcp::Socket>(hog2);
        if s.can_send() && s.send_capacity() - s.send_queue() >= chunk.len() {
            s.send_slice(chunk.as_bytes()).unwrap();
        }
        if let Some((code, _)) = w.response(hog2, 5) {
            status = Some(code);
            break;
        }
    }
    assert_eq!(status, Some(503));
    for _ in 0..200 {
        w.step();
    }
    let before = w.server.budget().used();
    assert!(before <= 3 * w.server.idle_connection_bytes() + 4 * 26 * 1024);
    // Load gone: a new request with a body is served.
    w.send(victim, &xml_call("system.listMethods", &[]));
    assert_eq!(w.response(victim, 500).unwrap().0, 200);
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

#[test]
fn a_wrong_password_storm_delays_the_guesser_and_root_still_logs_in() {
    let mut w = world();
    // Twenty connections from the same address and originator guess at once.
    let guessers: Vec<_> = (0..20).map(|i| w.connect(45000 + i)).collect();
    let guess = xml_call(
        "session.login_with_password",
        &["root", "wrong", "1.0", "same-client"],
    );
    for &g in &guessers {
        w.send(g, &guess);
    }
    let started = w.mono_ms;
    // The administrator, same address and originator, right password, in the middle of it.
    let admin = w.connect(45100);
    w.send(
        admin,
        &xml_call(
            "session.login_with_password",
            &["root", PASSWORD, "1.0", "same-client"],
        ),
    );
    let (status, body) = w.response(admin, 200).expect("root is answered at once");
    assert_eq!(status, 200);
    assert!(
        body.contains("<name>Status</name><value>Success</value>"),
        "{body}"
    );
    assert!(w.mono_ms - started < 200, "not held behind the guessers");
    // Every guesser gets SESSION_AUTHENTICATION_FAILED; the later ones only after a delay.
    let mut delayed = 0;
    for &g in &guessers {
        let (status, body) = w.response(g, 20_000).expect("every guess is answered");
        assert_eq!(status, 200);
        assert!(body.contains("SESSION_AUTHENTICATION_FAILED"), "{body}");
        if body.contains("delay") {
            delayed += 1;
        }
    }
    assert!(delayed >= 15, "{delayed} of 20 guesses were delayed");
    assert!(
        w.mono_ms - started >= 4_000,
        "the storm took {} ms",
        w.mono_ms - started
    );
}

#[test]
fn a_body_whose_decoding_the_budget_cannot_pay_for_is_answered_503() {
    // Room for the sockets and the body itself, not for decoding 20 KiB (about 2 MiB).
    let mut w = world_with(ServerConfig {
        memory_budget_bytes: 8 * 26 * 1024 + 256 * 1024,
        ..ServerConfig::default()
    });
    let c = w.connect(46000);
    let padded = format!(
        "<?xml version='1.0'?>{}<methodCall><methodName>system.listMethods</methodName><params/></methodCall>",
        " ".repeat(20 * 1024)
    );
    w.send(c, &post("/", "text/xml", &padded));
    let (status, body) = w.response(c, 500).expect("an answer");
    assert_eq!(status, 503, "{body}");
    assert_eq!(w.server.stats().refused_for_memory, 1);
    // A small call on a new connection is decoded and answered.
    let d = w.connect(46001);
    w.send(d, &xml_call("system.listMethods", &[]));
    assert_eq!(w.response(d, 500).expect("an answer").0, 200);
}

#[test]
fn a_small_budget_sizes_the_connection_table_down() {
    let config = ServerConfig::default();
    let idle = config.idle_connection_bytes();
    assert_eq!(config.clone().fitted_to(usize::MAX).max_connections, 1100);
    let small = config.fitted_to(100 * idle);
    assert_eq!(small.max_connections, 75);
    assert_eq!(small.memory_budget_bytes, 100 * idle);
}

#[test]
fn one_password_verification_per_round_and_root_is_not_starved() {
    let mut w = world();
    let guessers: Vec<_> = (0..30).map(|i| w.connect(47000 + i)).collect();
    let admin = w.connect(47100);
    for _ in 0..20 {
        w.step();
    }
    // Everyone's login arrives before the next round.
    let guess = xml_call("session.login_with_password", &["root", "wrong"]);
    for &g in &guessers {
        let s = w.client_stack.sockets().get_mut::<tcp::Socket>(g);
        s.send_slice(&guess).unwrap();
    }
    let login = xml_call("session.login_with_password", &["root", PASSWORD]);
    let s = w.client_stack.sockets().get_mut::<tcp::Socket>(admin);
    s.send_slice(&login).unwrap();
    let mut rounds = 0;
    let mut most_in_a_round = 0;
    let mut reply = Vec::new();
    while parse_response(&reply).is_none() && rounds < 500 {
        let before = w.server.api().password_verifications();
        w.step();
        let ran = w.server.api().password_verifications() - before;
        most_in_a_round = most_in_a_round.max(ran);
        rounds += 1;
        let s = w.client_stack.sockets().get_mut::<tcp::Socket>(admin);
        while s.can_recv() {
            s.recv(|b| {
                reply.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
    }
    assert_eq!(most_in_a_round, 1);
    let (status, body) = parse_response(&reply).expect("root answered");
    assert_eq!(status, 200);
    assert!(body.contains("Success"), "{body}");
    // Root waited for at most the 30 guesses queued ahead of it, one per round.
    assert!(w.server.api().password_verifications() <= 31);
}

fn event_from_call(session: &str, token: &str, timeout_s: f64) -> Vec<u8> {
    let body = format!(
        "<?xml version='1.0'?>\n<methodCall><methodName>event.from</methodName><params>\
         <param><value><string>{session}</string></value></param>\
         <param><value><array><data><value><string>pool</string></value></data></array></value></param>\
         <param><value><string>{token}</string></value></param>\
         <param><value><double>{timeout_s}</double></value></param></params></methodCall>"
    );
    post("/RPC2", "text/xml", &body)
}

fn token_of(xml: &str) -> String {
    let at = xml.find("<name>token</name>").expect("token field");
    let rest = &xml[at..];
    let start = rest.find("<value>").unwrap() + "<value>".len();
    let text = &rest[start..];
    text[..text.find("</value>").unwrap()]
        .replace("<string>", "")
        .replace("</string>", "")
}

#[test]
fn five_hundred_long_polls_wait_beside_five_hundred_callers() {
    // Xen Orchestra's pattern: each client keeps an event.from open beside its calls.
    let mut w = world();
    let first = w.connect_with_buffers(48000, 8192);
    w.send(
        first,
        &xml_call("session.login_with_password", &["root", PASSWORD]),
    );
    let session = session_of(&w.response(first, 200).unwrap().1);
    w.send(first, &event_from_call(&session, "", 30.0));
    let token = token_of(&w.response(first, 200).unwrap().1);
    let pollers: Vec<_> = (0..500)
        .map(|i| w.connect_with_buffers(48100 + i, 2048))
        .collect();
    let callers: Vec<_> = (0..500)
        .map(|i| w.connect_with_buffers(49100 + i, 2048))
        .collect();
    for _ in 0..20 {
        w.step();
    }
    let wait = event_from_call(&session, &token, 30.0);
    for &p in &pollers {
        let s = w.client_stack.sockets().get_mut::<tcp::Socket>(p);
        assert_eq!(s.send_slice(&wait).unwrap(), wait.len());
    }
    for _ in 0..50 {
        w.step();
    }
    // Every caller is served while the 500 long-polls are parked.
    let call = xml_call("pool.get_all", &[&session]);
    for &c in &callers {
        let s = w.client_stack.sockets().get_mut::<tcp::Socket>(c);
        assert_eq!(s.send_slice(&call).unwrap(), call.len());
    }
    for &c in &callers {
        let (status, body) = w.response(c, 50).expect("a caller is answered");
        assert_eq!(status, 200);
        assert!(body.contains("Success"), "{body}");
    }
    for &p in &pollers {
        let s = w.client_stack.sockets().get_mut::<tcp::Socket>(p);
        assert!(!s.can_recv(), "a long-poll returned without an event");
    }
    // One change wakes them all.
    w.send(first, &call);
    let pool = session_of(&w.response(first, 200).unwrap().1);
    w.send(
        callers[0],
        &xml_call("pool.add_to_other_config", &[&session, &pool, "wake", "1"]),
    );
    assert!(w.response(callers[0], 200).unwrap().1.contains("Success"));
    for &p in &pollers {
        let (status, body) = w.response(p, 50).expect("the long-poll returns");
        assert_eq!(status, 200);
        assert!(
            body.contains("wake") || body.contains("<value>mod</value>"),
            "{body}"
        );
    }
    assert_eq!(w.server.connections(), 1001);
}

#[test]
fn metering_routes_are_served_over_tcp_once_the_kernel_hands_the_meters_over() {
    use keel_xenapi::keel_metering::fakes::MemUsageStore;
    use keel_xenapi::keel_metering::figures::HostFigures;
    use keel_xenapi::keel_metering::{Metering, Usage, UsageConfig};

    let mut w = world();
    let c = w.connect(40100);
    w.send(
        c,
        &xml_call(
            "session.login_with_password",
            &["root", PASSWORD, "1.0", "test"],
        ),
    );
    let session = session_of(&w.response(c, 200).expect("login").1);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: keel\r\n\r\n").into_bytes();
    // No session: refused before anything else; no meters yet: 404.
    w.send(c, &get("/host_rrd"));
    assert_eq!(w.response(c, 200).unwrap().0, 401);
    w.send(c, &get(&format!("/host_rrd?session_id={session}")));
    assert_eq!(w.response(c, 200).unwrap().0, 404);

    let (usage, _) = Usage::open(MemUsageStore::new(), UsageConfig::default()).unwrap();
    let mut metering = Metering::new("c0ffee00-0000-4000-8000-000000000001").unwrap();
    let host = HostFigures {
        cpu_busy_ns: vec![0],
        memory_total_bytes: 1 << 30,
        memory_free_bytes: 1 << 29,
        heap_used_bytes: 0,
        pifs: Vec::new(),
    };
    metering.sample(now(0).unix_ms, &host, &[]);
    let meters = alloc::rc::Rc::new(core::cell::RefCell::new(Some(crate::Meters {
        metering,
        usage,
    })));
    w.server.set_metering(Box::new(meters));
    w.send(c, &get(&format!("/host_rrd?session_id={session}")));
    let (status, body) = w.response(c, 2000).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("<rrd><version>0003</version>"), "{body}");
    // The same connection carries on (keep-alive) after a refusal of nonsense.
    w.send(c, &get(&format!("/rrd_updates?session_id={session}")));
    assert_eq!(w.response(c, 200).unwrap().0, 400);
    w.send(
        c,
        &get(&format!("/usage?session_id={session}&from=0&to=3600")),
    );
    let (status, body) = w.response(c, 200).unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("vm_uuid,"), "{body}");
}
