//! Two real smoltcp stacks joined by an in-memory wire.

use super::*;
use alloc::vec;
use alloc::vec::Vec;
use keel_netdev::fake::{FakeNic, Wire};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::{icmp, tcp};
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn pair() -> (NetStack<FakeNic>, NetStack<FakeNic>) {
    let (a, b) = Wire::pair([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let st = |ip| Addressing::Static {
        address: ip,
        prefix_len: 24,
        gateway: None,
    };
    (
        NetStack::new(a, st(SERVER), 0, 1),
        NetStack::new(b, st(CLIENT), 0, 2),
    )
}

/// Polls both stacks until neither has anything to do, advancing time a little each round.
fn run(a: &mut NetStack<FakeNic>, b: &mut NetStack<FakeNic>, now: &mut u64, rounds: usize) {
    for _ in 0..rounds {
        a.poll(*now);
        b.poll(*now);
        *now += 1;
    }
}

#[test]
fn static_configuration_is_applied_and_reported_once() {
    let (mut server, _) = pair();
    assert_eq!(
        server.ipv4(),
        Some(Ipv4Config {
            address: SERVER,
            prefix_len: 24,
            gateway: None
        })
    );
    assert!(matches!(server.take_event(), Some(NetEvent::Configured(_))));
    assert_eq!(server.take_event(), None);
}

#[test]
fn tcp_connection_through_listener_pool_carries_data_both_ways() {
    let (mut server, mut client) = pair();
    let mut budget = MemoryBudget::new(usize::MAX);
    let mut listener = TcpListener::new(server.sockets(), config(2, 64, 4096), &mut budget);
    let mut sock = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 4096]),
        tcp::SocketBuffer::new(vec![0; 4096]),
    );
    let cx = client.iface.context();
    sock.connect(cx, (IpAddress::Ipv4(SERVER), 80), 49152)
        .unwrap();
    let ch = client.sockets().add(sock);

    let mut now = 0;
    run(&mut server, &mut client, &mut now, 20);
    let conn = listener
        .accept(server.sockets(), &mut budget)
        .expect("connection accepted");
    assert_eq!(listener.connections(), 1);
    assert!(
        listener.accept(server.sockets(), &mut budget).is_none(),
        "only one client connected"
    );

    client
        .sockets()
        .get_mut::<tcp::Socket>(ch)
        .send_slice(b"hello keel")
        .unwrap();
    run(&mut server, &mut client, &mut now, 20);
    let mut buf = [0u8; 64];
    let n = server
        .sockets()
        .get_mut::<tcp::Socket>(conn)
        .recv_slice(&mut buf)
        .unwrap();
    assert_eq!(&buf[..n], b"hello keel");

    server
        .sockets()
        .get_mut::<tcp::Socket>(conn)
        .send_slice(b"hello client")
        .unwrap();
    server.sockets().get_mut::<tcp::Socket>(conn).close();
    run(&mut server, &mut client, &mut now, 20);
    let n = client
        .sockets()
        .get_mut::<tcp::Socket>(ch)
        .recv_slice(&mut buf)
        .unwrap();
    assert_eq!(&buf[..n], b"hello client");

    listener.release(server.sockets(), conn, &mut budget);
    assert_eq!(listener.connections(), 0);
    assert_eq!(
        budget.used(),
        2 * listener.connection_bytes(),
        "two listening"
    );
}

#[test]
fn listener_pool_never_exceeds_its_connection_limit() {
    let (mut server, mut client) = pair();
    let mut budget = MemoryBudget::new(usize::MAX);
    let mut listener = TcpListener::new(server.sockets(), config(4, 3, 1024), &mut budget);
    let mut handles = vec![];
    for port in 0..5u16 {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 1024]),
            tcp::SocketBuffer::new(vec![0; 1024]),
        );
        let cx = client.iface.context();
        s.connect(cx, (IpAddress::Ipv4(SERVER), 80), 50000 + port)
            .unwrap();
        handles.push(client.sockets().add(s));
    }
    let mut now = 0;
    let mut accepted = vec![];
    for _ in 0..50 {
        run(&mut server, &mut client, &mut now, 1);
        while let Some(h) = listener.accept(server.sockets(), &mut budget) {
            accepted.push(h);
        }
    }
    assert_eq!(accepted.len(), 3);
    assert_eq!(listener.connections(), 3);
    // The two clients beyond the limit were refused (RST), not left hanging.
    let refused = handles
        .iter()
        .filter(|&&h| client.sockets().get::<tcp::Socket>(h).state() == tcp::State::Closed)
        .count();
    assert_eq!(refused, 2);
    // A freed slot takes the next client.
    listener.release(server.sockets(), accepted[0], &mut budget);
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 1024]),
        tcp::SocketBuffer::new(vec![0; 1024]),
    );
    let cx = client.iface.context();
    s.connect(cx, (IpAddress::Ipv4(SERVER), 80), 51000).unwrap();
    client.sockets().add(s);
    run(&mut server, &mut client, &mut now, 20);
    assert!(listener.accept(server.sockets(), &mut budget).is_some());
    assert_eq!(listener.connections(), 3);
}

fn config(backlog: usize, max_connections: usize, buffer: usize) -> ListenerConfig {
    ListenerConfig {
        port: 80,
        backlog,
        max_connections,
        rx_buffer_bytes: buffer,
        tx_buffer_bytes: buffer,
        peer_timeout_ms: 60_000,
    }
}

/// `count` client sockets connecting to the server at once.
fn connect_many(client: &mut NetStack<FakeNic>, count: u16, first_port: u16) -> Vec<SocketHandle> {
    (0..count)
        .map(|i| {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 256]),
                tcp::SocketBuffer::new(vec![0; 256]),
            );
            let cx = client.iface.context();
            s.connect(cx, (IpAddress::Ipv4(SERVER), 80), first_port + i)
                .unwrap();
            client.sockets().add(s)
        })
        .collect()
}

fn state_counts(client: &mut NetStack<FakeNic>, handles: &[SocketHandle]) -> (usize, usize) {
    let established = handles
        .iter()
        .filter(|&&h| client.sockets().get::<tcp::Socket>(h).state() == tcp::State::Established)
        .count();
    let refused = handles
        .iter()
        .filter(|&&h| client.sockets().get::<tcp::Socket>(h).state() == tcp::State::Closed)
        .count();
    (established, refused)
}

#[test]
fn a_burst_of_syns_larger_than_the_backlog_is_accepted_when_refilled_per_frame() {
    let (mut server, mut client) = pair();
    let mut budget = MemoryBudget::new(usize::MAX);
    let mut listener = TcpListener::new(server.sockets(), config(2, 2000, 512), &mut budget);
    // 300 SYNs reach the server in one poll; only 2 sockets listen beforehand.
    let clients = connect_many(&mut client, 300, 20000);
    let mut accepted = Vec::new();
    for now in 0..30 {
        client.poll(now);
        server.poll_with(now, |sockets| {
            while let Some(h) = listener.accept(sockets, &mut budget) {
                accepted.push(h);
            }
        });
    }
    assert_eq!(state_counts(&mut client, &clients), (300, 0));
    assert_eq!(accepted.len(), 300);
    // Memory follows the connections: 300 connected and the backlog listening.
    assert_eq!(budget.used(), 302 * listener.connection_bytes());
}

#[test]
fn without_per_frame_refills_the_backlog_bounds_a_burst() {
    // The failure the per-frame refill fixes: a plain poll resets SYNs beyond the backlog.
    let (mut server, mut client) = pair();
    let mut budget = MemoryBudget::new(usize::MAX);
    let mut listener = TcpListener::new(server.sockets(), config(4, 2000, 512), &mut budget);
    let clients = connect_many(&mut client, 20, 21000);
    for now in 0..30 {
        client.poll(now);
        server.poll(now);
        while listener.accept(server.sockets(), &mut budget).is_some() {}
    }
    // The 4 listening sockets take 4 SYNs; the other 16 of the same poll are reset.
    assert_eq!(state_counts(&mut client, &clients), (4, 16));
}

#[test]
fn an_exhausted_budget_refuses_new_clients_and_keeps_the_connected_ones() {
    let per_socket = {
        let mut b = MemoryBudget::new(usize::MAX);
        let l = TcpListener::new(pair().0.sockets(), config(1, 1, 1024), &mut b);
        l.connection_bytes()
    };
    let (mut server, mut client) = pair();
    // Room for exactly 5 sockets.
    let mut budget = MemoryBudget::new(5 * per_socket);
    let mut listener = TcpListener::new(server.sockets(), config(1, 100, 1024), &mut budget);
    let first = connect_many(&mut client, 8, 22000);
    let mut accepted = Vec::new();
    let mut now = 0;
    let mut drive = |server: &mut NetStack<FakeNic>,
                     client: &mut NetStack<FakeNic>,
                     listener: &mut TcpListener,
                     budget: &mut MemoryBudget,
                     accepted: &mut Vec<SocketHandle>| {
        for _ in 0..30 {
            client.poll(now);
            server.poll_with(now, |sockets| {
                while let Some(h) = listener.accept(sockets, budget) {
                    accepted.push(h);
                }
            });
            now += 1;
        }
    };
    drive(
        &mut server,
        &mut client,
        &mut listener,
        &mut budget,
        &mut accepted,
    );
    assert_eq!(state_counts(&mut client, &first), (5, 3));
    assert_eq!(budget.used(), 5 * per_socket);
    assert_eq!(listener.listening(), 0);
    // The connected ones still carry data.
    client
        .sockets()
        .get_mut::<tcp::Socket>(first[0])
        .send_slice(b"still here")
        .unwrap();
    drive(
        &mut server,
        &mut client,
        &mut listener,
        &mut budget,
        &mut accepted,
    );
    let mut buf = [0u8; 32];
    let n = server
        .sockets()
        .get_mut::<tcp::Socket>(accepted[0])
        .recv_slice(&mut buf)
        .unwrap();
    assert_eq!(&buf[..n], b"still here");
    // Releasing a connection lets the next client in.
    let gone = accepted.remove(1);
    listener.release(server.sockets(), gone, &mut budget);
    let late = connect_many(&mut client, 1, 23000);
    drive(
        &mut server,
        &mut client,
        &mut listener,
        &mut budget,
        &mut accepted,
    );
    assert_eq!(state_counts(&mut client, &late), (1, 0));
}

#[test]
fn icmp_echo_is_answered() {
    let (mut server, mut client) = pair();
    let mut icmp = icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 512]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 512]),
    );
    icmp.bind(icmp::Endpoint::Ident(0x1234)).unwrap();
    let h = client.sockets().add(icmp);
    let repr = Icmpv4Repr::EchoRequest {
        ident: 0x1234,
        seq_no: 1,
        data: b"ping",
    };
    let mut now = 0;
    run(&mut server, &mut client, &mut now, 5); // ARP
    {
        let socket = client.sockets().get_mut::<icmp::Socket>(h);
        let payload = socket
            .send(repr.buffer_len(), IpAddress::Ipv4(SERVER))
            .unwrap();
        let mut packet = Icmpv4Packet::new_unchecked(payload);
        repr.emit(&mut packet, &smoltcp::phy::ChecksumCapabilities::default());
    }
    run(&mut server, &mut client, &mut now, 10);
    let socket = client.sockets().get_mut::<icmp::Socket>(h);
    let (reply, from) = socket.recv().expect("echo reply");
    assert_eq!(from, IpAddress::Ipv4(SERVER));
    let packet = Icmpv4Packet::new_checked(reply).unwrap();
    let repr = Icmpv4Repr::parse(&packet, &smoltcp::phy::ChecksumCapabilities::default()).unwrap();
    assert_eq!(
        repr,
        Icmpv4Repr::EchoReply {
            ident: 0x1234,
            seq_no: 1,
            data: b"ping"
        }
    );
}

#[test]
fn dhcp_starts_with_a_broadcast_discover_and_no_address() {
    let (nic, mut peer) = Wire::pair([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 8]);
    let mut stack = NetStack::new(nic, Addressing::Dhcp, 0, 7);
    assert_eq!(stack.ipv4(), None);
    for now in 0..100 {
        stack.poll(now);
    }
    let mut frame = [0u8; 1514];
    peer.receive(&mut frame)
        .unwrap()
        .expect("DHCP discover sent");
    assert_eq!(&frame[0..6], &[0xff; 6], "Ethernet broadcast");
    assert_eq!(&frame[12..14], &[0x08, 0x00], "IPv4");
    assert_eq!(frame[23], 17, "UDP");
    assert_eq!(
        &frame[36..38],
        &67u16.to_be_bytes(),
        "to the DHCP server port"
    );
    assert_eq!(stack.take_event(), None);
}

#[test]
fn garbage_frames_are_counted_not_fatal() {
    let (mut server, client_nic) = {
        let (a, b) = Wire::pair([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let st = Addressing::Static {
            address: SERVER,
            prefix_len: 24,
            gateway: None,
        };
        (NetStack::new(a, st, 0, 1), b)
    };
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..2000 {
        let len = (i * 7) % 1600;
        let frame: alloc::vec::Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        client_nic.send_unchecked(&frame);
        server.poll(i as u64);
    }
    let c = server.counters();
    assert_eq!(c.rx_frames + c.rx_dropped, 2000);
    assert!(
        c.rx_dropped > 0,
        "frames longer than 1514 bytes are dropped"
    );
}
