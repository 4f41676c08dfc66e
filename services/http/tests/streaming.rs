//! Large bodies in both directions pass through with bounded memory, and both directions
//! apply backpressure instead of buffering.

// A panic in a test is a failed test. clippy.toml lets `#[test]` functions unwrap; this also
// covers the helpers of this test crate (tests/common), which that setting does not reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use keel_http::{Connection, Event, Limits, ResponseBody};

const SIXTEEN_MIB: usize = 16 * 1024 * 1024;

/// Test bodies repeat a table of noise whose length (a prime) lines up with no buffer or
/// chunk size, so a dropped, repeated or reordered piece shows. Building and checking bodies
/// are slice copies and compares, which keeps 16 MiB fast in debug builds.
const PERIOD: usize = 65_521;

fn noise_table() -> &'static [u8] {
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut rng = XorShift(0xfeed);
        let once: Vec<u8> = (0..PERIOD).map(|_| rng.next() as u8).collect();
        // Twice over, so any window of up to PERIOD bytes is one slice.
        once.repeat(2)
    })
}

/// The body bytes at `start..start + len` (`len` at most `PERIOD`).
fn pattern(start: usize, len: usize) -> &'static [u8] {
    let offset = start % PERIOD;
    &noise_table()[offset..offset + len]
}

/// Whether `data` is the body at `start`.
fn is_pattern(start: usize, data: &[u8]) -> bool {
    data.chunks(PERIOD)
        .enumerate()
        .all(|(index, piece)| piece == pattern(start + index * PERIOD, piece.len()))
}

/// A memory bound a connection must stay under: its input buffer and its output window with
/// room for one response head and framing.
fn memory_bound(limits: &Limits) -> usize {
    limits.input_buffer_bytes.max(limits.max_head_bytes)
        + limits.output_buffer_bytes
        + limits.max_response_head_bytes
        + 256
}

/// Delivers `wire` in TCP-segment-sized pieces (honouring `receive`'s backpressure) and checks
/// that the body handed to the handler is `pattern` over `body_len` bytes.
fn stream_request(wire_segments: impl Iterator<Item = Vec<u8>>, body_len: usize) {
    let limits = Limits::default();
    let mut conn = Connection::new(limits);
    let mut received = 0usize;
    let mut peak = 0usize;
    let mut ended = false;
    for segment in wire_segments {
        let mut offset = 0;
        while offset < segment.len() {
            offset += conn.receive(0, &segment[offset..]);
            peak = peak.max(conn.buffered_capacity());
            while let Some(event) = conn.poll_event_limited(4096) {
                match event {
                    Event::RequestHead(head) => {
                        assert_eq!(head.path, "/import_raw_vdi");
                        conn.set_body_limit(1 << 40);
                    }
                    Event::BodyChunk(data) => {
                        assert!(data.len() <= 4096);
                        assert!(is_pattern(received, data), "wrong bytes at {received}");
                        received += data.len();
                    }
                    Event::BodyEnd => ended = true,
                    Event::Error(error) => panic!("{error}"),
                }
            }
        }
    }
    assert!(ended);
    assert_eq!(received, body_len);
    assert!(peak <= memory_bound(&limits), "peak {peak}");
    conn.send_response(200, &[], Vec::new()).unwrap();
    assert_eq!(parse_responses(&drain(&mut conn))[0].status, 200);
    assert_eq!(conn.buffered_capacity(), 0);
}

#[test]
fn sixteen_mib_content_length_body_streams_with_bounded_memory() {
    let head = format!(
        "PUT /import_raw_vdi?vdi=OpaqueRef:1&format=raw HTTP/1.1\r\nHost: h\r\nContent-Length: {SIXTEEN_MIB}\r\n\r\n"
    )
    .into_bytes();
    let segments = std::iter::once(head).chain(
        (0..SIXTEEN_MIB)
            .step_by(1460)
            .map(|start| pattern(start, 1460.min(SIXTEEN_MIB - start)).to_vec()),
    );
    stream_request(segments, SIXTEEN_MIB);
}

#[test]
fn sixteen_mib_chunked_body_streams_with_bounded_memory() {
    let head =
        b"PUT /import_raw_vdi HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut rng = XorShift(7);
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < SIXTEEN_MIB {
        let len = (1 + rng.below(PERIOD as u64) as usize).min(SIXTEEN_MIB - start);
        chunks.push((start, len));
        start += len;
    }
    let segments = std::iter::once(head)
        .chain(chunks.into_iter().map(|(start, len)| {
            let mut chunk = format!("{len:x};n=v\r\n").into_bytes();
            chunk.extend_from_slice(pattern(start, len));
            chunk.extend_from_slice(b"\r\n");
            chunk
        }))
        .chain(std::iter::once(b"0\r\nX-Checksum: none\r\n\r\n".to_vec()));
    stream_request(segments, SIXTEEN_MIB);
}

/// Streams a `total`-byte chunked response through a socket taking `socket_room` bytes at a
/// time, checking the output never exceeds its bound, and returns what the client got.
fn stream_response(limits: Limits, total: usize, socket_room: usize) -> Vec<u8> {
    let mut conn = Connection::new(limits);
    feed(
        &mut conn,
        0,
        b"GET /export_raw_vdi?vdi=OpaqueRef:1 HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    assert_eq!(events(&mut conn).len(), 2);
    conn.start_response(
        200,
        &[("Content-Type", "application/octet-stream")],
        ResponseBody::Chunked,
    )
    .unwrap();
    let mut wire = Vec::new();
    let mut written = 0usize;
    let mut socket = vec![0u8; socket_room];
    let mut finished = false;
    while !finished || !conn.output().is_empty() {
        if !finished {
            if written == total {
                conn.finish_response().unwrap();
                finished = true;
            } else {
                let len = 8192.min(total - written);
                written += conn.write_body(pattern(written, len)).unwrap();
            }
        }
        assert!(conn.output().len() <= memory_bound(&limits));
        assert!(conn.buffered_capacity() <= memory_bound(&limits) + limits.input_buffer_bytes);
        let sent = conn.take_output(&mut socket);
        wire.extend_from_slice(&socket[..sent]);
    }
    assert_eq!(conn.should_close(), None);
    let mut responses = parse_responses(&wire);
    assert_eq!(responses.len(), 1);
    responses.remove(0).body
}

#[test]
fn sixteen_mib_chunked_response_streams_through_the_window() {
    let body = stream_response(Limits::default(), SIXTEEN_MIB, 1460);
    assert_eq!(body.len(), SIXTEEN_MIB);
    assert!(is_pattern(0, &body));
}

#[test]
fn tiny_output_window_and_tiny_socket_still_deliver_everything() {
    let limits = Limits {
        output_buffer_bytes: 64,
        ..Limits::default()
    };
    let body = stream_response(limits, 100_000, 7);
    assert_eq!(body.len(), 100_000);
    assert!(is_pattern(0, &body));
}

#[test]
fn write_body_accepts_only_what_the_window_holds() {
    let limits = Limits {
        output_buffer_bytes: 64,
        ..Limits::default()
    };
    let mut conn = Connection::new(limits);
    feed(&mut conn, 0, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    events(&mut conn);
    conn.start_response(200, &[], ResponseBody::Length(1000))
        .unwrap();
    let head_len = conn.output().len();
    drain(&mut conn);
    assert!(head_len > 0);
    assert_eq!(conn.write_body(&[b'a'; 1000]).unwrap(), 64);
    assert_eq!(conn.write_body(&[b'a'; 936]).unwrap(), 0, "window full");
    conn.consume_output(10);
    assert_eq!(conn.write_body(&[b'a'; 936]).unwrap(), 10);
}

#[test]
fn owned_response_body_is_moved_in_window_sized_pieces() {
    let limits = Limits {
        output_buffer_bytes: 100,
        ..Limits::default()
    };
    let mut conn = Connection::new(limits);
    feed(
        &mut conn,
        0,
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    assert_eq!(events(&mut conn).len(), 2);
    let body = pattern(0, 5000).to_vec();
    conn.send_response(200, &[], body.clone()).unwrap();
    let mut wire = Vec::new();
    let mut next_head_at = None;
    while conn.has_output() {
        assert!(conn.output().len() <= 100 + limits.max_response_head_bytes);
        if let Some(Event::RequestHead(head)) = conn.poll_event() {
            assert_eq!(head.path, "/2");
            next_head_at = Some(wire.len() + conn.output().len());
        }
        let mut socket = [0u8; 33];
        let sent = conn.take_output(&mut socket);
        wire.extend_from_slice(&socket[..sent]);
    }
    assert_eq!(parse_responses(&wire)[0].body, body);
    // The next request surfaces only once the whole body is in the window (or sent).
    assert_eq!(next_head_at, Some(wire.len()));
}

#[test]
fn full_input_buffer_refuses_bytes_until_the_handler_takes_some() {
    let limits = Limits {
        input_buffer_bytes: 1024,
        max_head_bytes: 512,
        ..Limits::default()
    };
    let mut conn = Connection::new(limits);
    feed(
        &mut conn,
        0,
        b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n",
    );
    assert!(matches!(conn.poll_event(), Some(Event::RequestHead(_))));
    let data = vec![b'd'; 4000];
    assert_eq!(conn.receive(0, &data), 1024);
    assert_eq!(
        conn.receive(0, &data),
        0,
        "full: the rest stays in the socket"
    );
    let Some(Event::BodyChunk(chunk)) = conn.poll_event_limited(300) else {
        panic!("no chunk");
    };
    assert_eq!(chunk.len(), 300);
    assert_eq!(conn.receive(0, &data), 300);
    assert!(conn.buffered_capacity() <= 1024);
}

#[test]
fn pipelining_peer_that_never_reads_cannot_grow_the_output() {
    let limits = Limits {
        output_buffer_bytes: 256,
        ..Limits::default()
    };
    let mut conn = Connection::new(limits);
    let mut answered = 0;
    for _ in 0..200 {
        conn.receive(0, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        while let Some(event) = conn.poll_event() {
            if event == Event::BodyEnd {
                conn.send_response(200, &[("X-Pad", "padding-padding")], Vec::new())
                    .unwrap();
                answered += 1;
            }
        }
        assert!(conn.output().len() <= 256 + limits.max_response_head_bytes + 256);
    }
    assert!(
        answered < 200,
        "the peer is not reading, so answering stalls"
    );
    assert!(conn.buffered_capacity() <= memory_bound(&limits));
}
