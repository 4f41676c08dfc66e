//! A `CONNECT` accepted as a tunnel: raw bytes both ways after the `2xx` head, bounded
//! buffers, and both ways of ending it.

// A panic in a test is a failed test (see streaming.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use keel_http::{CloseKind, Connection, Limits, Method, ResponseError};

const CONNECT: &[u8] = b"CONNECT /console?ref=OpaqueRef:c HTTP/1.1\r\nHost: h\r\n\r\n";

/// A connection that has delivered the `CONNECT` head and its (empty) body.
fn connected(limits: Limits, extra: &[u8]) -> Connection {
    let mut conn = Connection::new(limits);
    let mut wire = CONNECT.to_vec();
    wire.extend_from_slice(extra);
    feed(&mut conn, 0, &wire);
    let seen = events(&mut conn);
    match seen.as_slice() {
        [Seen::Head(request), Seen::End] => {
            assert_eq!(request.method, Method::Other("CONNECT".into()));
            assert_eq!(request.path, "/console");
            assert_eq!(request.query.as_deref(), Some("ref=OpaqueRef:c"));
        }
        other => panic!("{other:?}"),
    }
    conn
}

#[test]
fn bytes_flow_both_ways_after_the_head() {
    // The client's first keystrokes arrive in the same segment as its request.
    let mut conn = connected(Limits::default(), b"root\r");
    assert!(!conn.is_tunnel());
    assert!(conn.tunnel_input().is_empty(), "no tunnel yet");
    conn.start_tunnel(200, &[]).unwrap();
    assert!(conn.is_tunnel());
    assert_eq!(drain(&mut conn), b"HTTP/1.1 200 OK\r\n\r\n");

    assert_eq!(conn.tunnel_input(), b"root\r");
    conn.consume_tunnel_input(2);
    assert_eq!(conn.tunnel_input(), b"ot\r");
    conn.consume_tunnel_input(100);
    assert!(conn.tunnel_input().is_empty());

    // Anything, even what looks like HTTP, is data now.
    feed(&mut conn, 1, b"GET / HTTP/1.1\r\n\r\n");
    assert!(events(&mut conn).is_empty());
    assert_eq!(conn.tunnel_input(), b"GET / HTTP/1.1\r\n\r\n");

    assert_eq!(conn.write_tunnel(b"login: ").unwrap(), 7);
    assert_eq!(conn.write_tunnel(b"\r\n0\r\n\r\n").unwrap(), 7);
    assert_eq!(drain(&mut conn), b"login: \r\n0\r\n\r\n", "unframed");
    assert_eq!(conn.should_close(), None);
}

#[test]
fn the_head_is_a_bare_status_line_with_the_handlers_fields() {
    let mut conn = connected(Limits::default(), b"");
    assert_eq!(
        conn.start_tunnel(200, &[("Connection", "x")]),
        Err(ResponseError::ReservedHeader)
    );
    assert_eq!(
        conn.start_tunnel(404, &[]),
        Err(ResponseError::InvalidStatus)
    );
    assert_eq!(
        conn.start_tunnel(200, &[("Bad\r\nName", "x")]),
        Err(ResponseError::InvalidHeaderName)
    );
    conn.start_tunnel(200, &[("X-Console", "vt100")]).unwrap();
    assert_eq!(
        drain(&mut conn),
        b"HTTP/1.1 200 OK\r\nX-Console: vt100\r\n\r\n"
    );
    // Nothing HTTP can be done on it any more.
    assert_eq!(
        conn.start_tunnel(200, &[]),
        Err(ResponseError::AlreadyStarted)
    );
    assert_eq!(
        conn.start_response(200, &[], keel_http::ResponseBody::Empty),
        Err(ResponseError::AlreadyStarted)
    );
    assert_eq!(conn.write_body(b"x"), Err(ResponseError::AlreadyFinished));
}

#[test]
fn a_tunnel_needs_a_request_read_to_its_end() {
    let mut conn = Connection::new(Limits::default());
    assert_eq!(
        conn.start_tunnel(200, &[]),
        Err(ResponseError::NoActiveRequest)
    );
    assert_eq!(conn.write_tunnel(b"x"), Err(ResponseError::NotStarted));
    feed(
        &mut conn,
        0,
        b"CONNECT /console?ref=r HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
    );
    let seen = events_until_head(&mut conn);
    assert!(matches!(seen, Some(Seen::Head(_))), "{seen:?}");
    // The 5 body bytes have not come: they would be mistaken for tunnel input.
    assert_eq!(conn.start_tunnel(200, &[]), Err(ResponseError::NotStarted));
    // An ordinary response still works.
    conn.send_response(405, &[], Vec::new()).unwrap();
}

/// Polls until a request head (leaving the body unread).
fn events_until_head(conn: &mut Connection) -> Option<Seen> {
    match conn.poll_event()? {
        keel_http::Event::RequestHead(request) => Some(Seen::Head(request)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn buffers_stay_bounded_in_both_directions() {
    let limits = Limits::default();
    let mut conn = connected(limits, b"");
    conn.start_tunnel(200, &[]).unwrap();
    drain(&mut conn);
    // A handler that writes without the peer reading fills the window, then gets 0.
    let big = vec![b'x'; 100_000];
    let mut queued = 0;
    loop {
        let n = conn.write_tunnel(&big).unwrap();
        if n == 0 {
            break;
        }
        queued += n;
    }
    assert_eq!(queued, limits.output_buffer_bytes);
    assert_eq!(conn.tunnel_output_room(), 0);
    // A peer that sends without the handler consuming is refused past the input buffer.
    let taken = conn.receive(1, &big);
    assert_eq!(taken, limits.input_buffer_bytes);
    assert_eq!(conn.receive(1, b"more"), 0);
    assert!(
        conn.buffered_capacity()
            <= limits.input_buffer_bytes
                + limits.output_buffer_bytes
                + limits.max_response_head_bytes
                + 256
    );
    // Draining makes room again.
    conn.consume_output(1000);
    assert_eq!(conn.tunnel_output_room(), 1000);
    conn.consume_tunnel_input(10);
    assert_eq!(conn.receive(2, b"more"), 4);
}

#[test]
fn deadlines_other_than_sending_do_not_apply() {
    let limits = Limits::default();
    let mut conn = connected(limits, b"");
    conn.start_tunnel(200, &[]).unwrap();
    drain(&mut conn);
    // An idle console is fine for as long as anyone likes.
    let later = limits.idle_timeout_ms + limits.head_timeout_ms + limits.body_timeout_ms;
    assert_eq!(conn.poll_timeout(later), None);
    assert_eq!(conn.should_close(), None);
    // A peer that takes no output for the send deadline is dropped.
    conn.write_tunnel(b"output nobody reads").unwrap();
    assert_eq!(
        conn.poll_timeout(later + 1),
        Some(later + 1 + limits.send_timeout_ms)
    );
    conn.poll_timeout(later + 1 + limits.send_timeout_ms);
    assert_eq!(conn.should_close(), Some(CloseKind::Abort));
    assert_eq!(
        conn.write_tunnel(b"x"),
        Err(ResponseError::ConnectionClosed)
    );
}

#[test]
fn the_peer_closing_ends_the_tunnel_once_its_input_is_delivered() {
    let mut conn = connected(Limits::default(), b"");
    conn.start_tunnel(200, &[]).unwrap();
    drain(&mut conn);
    feed(&mut conn, 1, b"exit\r");
    conn.receive_eof(1);
    assert!(conn.peer_closed());
    assert_eq!(conn.should_close(), None, "input still to deliver");
    assert_eq!(conn.tunnel_input(), b"exit\r");
    conn.consume_tunnel_input(5);
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));
}

#[test]
fn the_handler_ending_the_tunnel_sends_what_is_queued_then_closes() {
    let mut conn = connected(Limits::default(), b"");
    conn.start_tunnel(200, &[]).unwrap();
    conn.write_tunnel(b"bye\r\n").unwrap();
    feed(&mut conn, 1, b"typed too late");
    conn.end_tunnel();
    assert!(conn.tunnel_input().is_empty(), "unread input is dropped");
    assert_eq!(conn.tunnel_output_room(), 0);
    assert_eq!(conn.should_close(), None, "output still queued");
    assert_eq!(drain(&mut conn), b"HTTP/1.1 200 OK\r\n\r\nbye\r\n");
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));
    // Later input is taken and dropped.
    assert_eq!(conn.receive(2, b"xyz"), 3);
    assert!(conn.tunnel_input().is_empty());
}
