//! Deadlines with a fake clock: idle keep-alive, slow heads, slow bodies, peers that stop
//! reading, and the handler's own time, which is never limited.

// A panic in a test is a failed test. clippy.toml lets `#[test]` functions unwrap; this also
// covers the helpers of this test crate (tests/common), which that setting does not reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use keel_http::{CloseKind, Connection, Event, HttpError, Limits, ResponseBody};

fn limits() -> Limits {
    Limits {
        head_timeout_ms: 5_000,
        idle_timeout_ms: 20_000,
        body_timeout_ms: 7_000,
        send_timeout_ms: 9_000,
        ..Limits::default()
    }
}

#[test]
fn a_connection_that_never_sends_is_closed_when_idle() {
    let mut conn = Connection::new(limits());
    assert_eq!(conn.poll_timeout(100), Some(20_100));
    assert_eq!(conn.poll_timeout(20_099), Some(20_100));
    assert_eq!(conn.should_close(), None);
    assert_eq!(conn.poll_timeout(20_100), None);
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));
    assert_eq!(conn.output(), b"", "an idle close sends nothing");
}

#[test]
fn idle_keep_alive_connection_is_closed_silently_after_its_timeout() {
    let mut conn = Connection::new(limits());
    feed(&mut conn, 0, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(events(&mut conn).len(), 2);
    conn.send_response(200, &[], b"x".to_vec()).unwrap();
    drain(&mut conn);
    assert_eq!(conn.poll_timeout(1_000), Some(21_000));
    // A new request before the deadline keeps it alive.
    feed(&mut conn, 20_000, b"GET /again HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(events(&mut conn).len(), 2);
    assert_eq!(
        conn.poll_timeout(25_000),
        None,
        "the handler's time is not limited"
    );
    conn.send_response(200, &[], b"y".to_vec()).unwrap();
    drain(&mut conn);
    assert_eq!(conn.poll_timeout(26_000), Some(46_000));
    conn.poll_timeout(46_000);
    assert_eq!(events(&mut conn), vec![]);
    assert_eq!(conn.output(), b"");
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));
}

#[test]
fn slow_loris_head_gets_408_even_while_bytes_trickle_in() {
    let mut conn = Connection::new(limits());
    feed(&mut conn, 0, b"GET / HTTP/1.1\r\n");
    for second in 1..5u64 {
        feed(&mut conn, second * 1_000, b"X-Slow: yes\r\n");
        assert_eq!(events(&mut conn), vec![]);
        assert_eq!(conn.poll_timeout(second * 1_000), Some(5_000));
    }
    conn.poll_timeout(5_000);
    assert_eq!(events(&mut conn), vec![Seen::Error(HttpError::HeadTimeout)]);
    let responses = parse_responses(&drain(&mut conn));
    assert_eq!(responses[0].status, 408);
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));
}

#[test]
fn head_clock_starts_with_the_first_byte_not_with_the_connection() {
    let mut conn = Connection::new(limits());
    assert_eq!(conn.poll_timeout(0), Some(20_000));
    feed(&mut conn, 15_000, b"GET");
    assert_eq!(conn.poll_timeout(15_000), Some(20_000));
    feed(&mut conn, 19_000, b" / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(events(&mut conn).len(), 2);
}

#[test]
fn slow_body_gets_408_and_progress_restarts_its_clock() {
    let mut conn = Connection::new(limits());
    feed(
        &mut conn,
        0,
        b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n",
    );
    assert!(matches!(conn.poll_event(), Some(Event::RequestHead(_))));
    assert_eq!(
        conn.poll_timeout(0),
        None,
        "not waiting until the handler asks for the body"
    );
    assert_eq!(conn.poll_event(), None);
    assert_eq!(conn.poll_timeout(1_000), Some(8_000));
    feed(&mut conn, 6_000, b"12");
    assert_eq!(body_of(&events(&mut conn)), b"12");
    assert_eq!(conn.poll_timeout(6_000), Some(13_000));
    assert_eq!(conn.should_close(), None);
    conn.poll_timeout(13_000);
    assert_eq!(events(&mut conn), vec![Seen::Error(HttpError::BodyTimeout)]);
    assert_eq!(parse_responses(&drain(&mut conn))[0].status, 408);
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));
}

#[test]
fn buffered_body_the_handler_has_not_taken_is_not_the_peers_fault() {
    let mut conn = Connection::new(limits());
    feed(
        &mut conn,
        0,
        b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n12345",
    );
    assert!(matches!(conn.poll_event(), Some(Event::RequestHead(_))));
    let Some(Event::BodyChunk(_)) = conn.poll_event_limited(2) else {
        panic!("no chunk");
    };
    // Three bytes are still buffered: the handler is slow, not the peer.
    assert_eq!(conn.poll_timeout(100_000), None);
    assert_eq!(conn.should_close(), None);
}

#[test]
fn handler_time_after_the_body_is_never_limited() {
    let mut conn = Connection::new(limits());
    feed(
        &mut conn,
        0,
        b"POST /RPC2 HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx",
    );
    assert_eq!(events(&mut conn).last(), Some(&Seen::End));
    assert_eq!(conn.poll_timeout(1_000_000_000), None);
    assert_eq!(conn.should_close(), None);
    conn.send_response(200, &[], b"late but fine".to_vec())
        .unwrap();
    assert_eq!(parse_responses(&drain(&mut conn))[0].body, b"late but fine");
}

#[test]
fn peer_that_stops_reading_is_aborted_and_progress_restarts_the_clock() {
    let mut conn = Connection::new(Limits {
        output_buffer_bytes: 1024,
        ..limits()
    });
    feed(&mut conn, 0, b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n");
    events(&mut conn);
    conn.send_response(200, &[], vec![b'z'; 10_000]).unwrap();
    assert_eq!(conn.poll_timeout(0), Some(9_000));
    conn.consume_output(100);
    assert_eq!(conn.poll_timeout(8_000), Some(17_000));
    assert_eq!(conn.should_close(), None);
    conn.poll_timeout(17_000);
    assert_eq!(conn.should_close(), Some(CloseKind::Abort));
    assert_eq!(conn.output(), b"");
    assert_eq!(conn.buffered_capacity(), 0);
    assert!(conn.write_body(b"x").is_err());
}

#[test]
fn slow_body_after_an_early_response_just_closes() {
    let mut conn = Connection::new(limits());
    feed(
        &mut conn,
        0,
        b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n",
    );
    assert!(matches!(conn.poll_event(), Some(Event::RequestHead(_))));
    conn.start_response(200, &[], ResponseBody::Chunked)
        .unwrap();
    assert_eq!(conn.poll_event(), None);
    drain(&mut conn);
    // Clocks start when the connection is next told the time after a wait begins.
    assert_eq!(conn.poll_timeout(0), Some(7_000));
    conn.poll_timeout(7_000);
    assert_eq!(events(&mut conn), vec![Seen::Error(HttpError::BodyTimeout)]);
    assert_eq!(
        conn.output(),
        b"",
        "no 408 inside a response already under way"
    );
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));
}

#[test]
fn pipelined_head_held_back_by_a_full_window_is_not_timed_as_a_slow_head() {
    let mut conn = Connection::new(Limits {
        output_buffer_bytes: 64,
        ..limits()
    });
    feed(
        &mut conn,
        0,
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    assert_eq!(events(&mut conn).len(), 2);
    conn.send_response(200, &[], vec![b'x'; 64]).unwrap();
    // The whole body is in the window, which is full: the next request waits for the peer
    // to read, and only the send deadline runs.
    assert_eq!(events(&mut conn), vec![]);
    assert_eq!(conn.poll_timeout(0), Some(9_000));
    // Past the head deadline (5 s) without a 408.
    assert_eq!(conn.poll_timeout(8_000), Some(9_000));
    assert_eq!(events(&mut conn), vec![]);
    assert_eq!(conn.should_close(), None);
    drain(&mut conn);
    let seen = events(&mut conn);
    assert!(matches!(&seen[0], Seen::Head(head) if head.path == "/next"));
}
