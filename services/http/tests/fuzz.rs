//! Deterministic garbage: 10,000 inputs built from a fixed-seed xorshift out of HTTP fragments,
//! random bytes and mutations, delivered in random splits at random times to a randomly
//! behaving handler. Nothing may panic, memory stays within its bound, and every connection
//! settles (answers, or closes) within a bounded number of steps.

// A panic in a test is a failed test. clippy.toml lets `#[test]` functions unwrap; this also
// covers the helpers of this test crate (tests/common), which that setting does not reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::XorShift;
use keel_http::{Connection, Event, Limits, ResponseBody};

const REQUEST_LINES: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\n",
    b"POST /RPC2 HTTP/1.1\r\n",
    b"POST /jsonrpc HTTP/1.1\r\n",
    b"PUT /import_raw_vdi?vdi=a%20b&x HTTP/1.1\r\n",
    b"HEAD /x HTTP/1.0\r\n",
    b"GET http://h/p?q HTTP/1.1\r\n",
    b"OPTIONS * HTTP/1.1\r\n",
    b"\r\nGET /after-empty-line HTTP/1.1\r\n",
];

const HEADERS: &[&[u8]] = &[
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: 18446744073709551616\r\n",
    b"Content-Length: 99999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Expect: 100-continue\r\n",
    b"Expect: other\r\n",
    b"Connection: close\r\n",
    b"Content-Type: text/xml\r\n",
    b"X-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
];

const BODIES: &[&[u8]] = &[
    b"hello",
    b"5\r\nhello\r\n",
    b"0\r\n\r\n",
    b"0\r\nX-T: 1\r\n\r\n",
    b"ffffffffffffffffff\r\n",
    b"3;x=y\r\nabc\r\n",
    b"40\r\n",
    b"zz\r\n",
];

fn pick<'a>(rng: &mut XorShift, list: &[&'a [u8]]) -> &'a [u8] {
    list[rng.below(list.len() as u64) as usize]
}

/// One to three requests made of plausible pieces, then sometimes damaged.
fn make_input(rng: &mut XorShift) -> Vec<u8> {
    let mut input = Vec::new();
    for _ in 0..1 + rng.below(3) {
        input.extend_from_slice(pick(rng, REQUEST_LINES));
        if rng.below(10) != 0 {
            input.extend_from_slice(b"Host: h\r\n");
        }
        for _ in 0..rng.below(5) {
            input.extend_from_slice(pick(rng, HEADERS));
        }
        input.extend_from_slice(b"\r\n");
        for _ in 0..rng.below(4) {
            input.extend_from_slice(pick(rng, BODIES));
        }
    }
    if rng.below(3) == 0 {
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(input.len() as u64 + 1) as usize;
            match rng.below(3) {
                0 if at < input.len() => input[at] = rng.next() as u8,
                1 => {
                    let garbage: Vec<u8> =
                        (0..1 + rng.below(40)).map(|_| rng.next() as u8).collect();
                    input.splice(at..at, garbage);
                }
                _ => input.truncate(at),
            }
        }
    }
    input
}

fn limits() -> Limits {
    Limits {
        max_head_bytes: 256,
        max_headers: 8,
        max_body_bytes: 64,
        max_chunk_line_bytes: 32,
        max_trailer_bytes: 64,
        input_buffer_bytes: 512,
        output_buffer_bytes: 128,
        max_response_head_bytes: 256,
        head_timeout_ms: 200,
        idle_timeout_ms: 300,
        body_timeout_ms: 100,
        send_timeout_ms: 200,
    }
}

/// The handler's state for the request in progress.
#[derive(Default)]
struct Handler {
    have_request: bool,
    body_done: bool,
    /// Body bytes still to write of a response started with `start_response`.
    streaming: Option<usize>,
}

/// What one run saw, so the test can check the inputs reach deep states and not just 400s.
#[derive(Default)]
struct Coverage {
    heads: usize,
    chunks: usize,
    ends: usize,
    errors: std::collections::BTreeSet<u16>,
    closed: usize,
}

fn run(seed: u64, coverage: &mut Coverage) {
    let mut rng = XorShift(seed);
    let input = make_input(&mut rng);
    let limits = limits();
    let bound = limits.input_buffer_bytes
        + limits.output_buffer_bytes
        + limits.max_response_head_bytes
        + 512;
    let mut conn = Connection::new(limits);
    let mut handler = Handler::default();
    let mut position = 0;
    let mut now = rng.below(1000);
    let send_eof = rng.below(3) == 0;
    let mut eof_sent = false;
    for _ in 0..400 {
        if position < input.len() {
            let piece = 1 + rng.below(64) as usize;
            let end = (position + piece).min(input.len());
            position += conn.receive(now, &input[position..end]);
        } else if send_eof && !eof_sent {
            conn.receive_eof(now);
            eof_sent = true;
        }

        let mut polled = 0;
        loop {
            let limit = 1 + rng.below(100) as usize;
            let Some(event) = conn.poll_event_limited(limit) else {
                break;
            };
            polled += 1;
            assert!(polled < 10_000, "poll_event never ran dry");
            match event {
                Event::RequestHead(_) => {
                    coverage.heads += 1;
                    handler = Handler {
                        have_request: true,
                        ..Handler::default()
                    };
                    if rng.below(8) == 0 {
                        conn.set_body_limit(rng.below(200));
                    }
                    if rng.below(10) == 0
                        && conn.start_response(200, &[], ResponseBody::Chunked).is_ok()
                    {
                        handler.streaming = Some(rng.below(300) as usize);
                    }
                }
                Event::BodyChunk(data) => {
                    coverage.chunks += 1;
                    assert!(!data.is_empty() && data.len() <= limit);
                }
                Event::BodyEnd => {
                    coverage.ends += 1;
                    handler.body_done = true;
                }
                Event::Error(error) => {
                    coverage.errors.insert(error.status());
                    handler = Handler::default();
                }
            }
        }

        if handler.have_request && handler.body_done && handler.streaming.is_none() {
            handler.have_request = false;
            let length = rng.below(300) as usize;
            match rng.below(3) {
                0 => {
                    let _ = conn.send_response(
                        200,
                        &[("Content-Type", "text/xml")],
                        vec![b'r'; length],
                    );
                }
                1 => {
                    if conn
                        .start_response(200, &[], ResponseBody::Length(length as u64))
                        .is_ok()
                    {
                        handler.streaming = Some(length);
                    }
                }
                _ => {
                    if conn.start_response(200, &[], ResponseBody::Chunked).is_ok() {
                        handler.streaming = Some(length);
                    }
                }
            }
        }
        if let Some(remaining) = handler.streaming {
            if remaining == 0 {
                let _ = conn.finish_response();
                handler.streaming = None;
            } else {
                let piece = vec![b'w'; remaining.min(1 + rng.below(100) as usize)];
                match conn.write_body(&piece) {
                    Ok(written) => handler.streaming = Some(remaining - written),
                    Err(_) => handler.streaming = None,
                }
            }
        }
        if rng.below(20) == 0 {
            // Misuse must be refused, never panic.
            let _ = conn.write_body(b"stray");
            let _ = conn.finish_response();
        }

        assert!(
            conn.output().len() <= bound,
            "output {}",
            conn.output().len()
        );
        assert!(
            conn.buffered_capacity() <= 2 * bound,
            "memory {}",
            conn.buffered_capacity()
        );
        let mut socket = vec![0u8; rng.below(96) as usize];
        conn.take_output(&mut socket);
        now += rng.below(40);
        conn.poll_timeout(now);
        if conn.should_close().is_some() {
            coverage.closed += 1;
            return;
        }
    }
    // A connection that did not close must at least be in a quiet, bounded state.
    assert!(conn.buffered_capacity() <= 2 * bound);
}

#[test]
fn ten_thousand_garbage_inputs_never_panic_and_stay_bounded() {
    let mut coverage = Coverage::default();
    for seed in 1..=10_000u64 {
        run(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), &mut coverage);
    }
    eprintln!(
        "heads {} chunks {} ends {} closed {} statuses {:?}",
        coverage.heads, coverage.chunks, coverage.ends, coverage.closed, coverage.errors
    );
    assert!(coverage.heads > 1_000 && coverage.chunks > 100 && coverage.ends > 500);
    for status in [400, 408, 413, 417, 431, 501] {
        assert!(
            coverage.errors.contains(&status),
            "no input reached {status}"
        );
    }
}

#[test]
fn random_bytes_at_every_split_never_panic() {
    let mut rng = XorShift(0x1234_5678);
    for _ in 0..2_000 {
        let len = rng.below(600) as usize;
        let input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let mut conn = Connection::new(limits());
        let mut position = 0;
        for _ in 0..len + 2 {
            let step = 1 + rng.below(32) as usize;
            let end = (position + step).min(input.len());
            position += conn.receive(0, &input[position..end]);
            while let Some(event) = conn.poll_event() {
                if event == Event::BodyEnd {
                    let _ = conn.send_response(200, &[], Vec::new());
                }
            }
            conn.take_output(&mut [0u8; 64]);
            assert!(conn.buffered_capacity() <= 2048);
        }
    }
}
