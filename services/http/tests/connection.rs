//! Request parsing, keep-alive, pipelining, bodies, error answers and the response API of a
//! `Connection`, driven as the glue and a handler would.

// A panic in a test is a failed test. clippy.toml lets `#[test]` functions unwrap; this also
// covers the helpers of this test crate (tests/common), which that setting does not reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use keel_http::{
    BodyKind, CloseKind, Connection, Event, HttpError, Limits, Method, ResponseBody, ResponseError,
    Version,
};

fn connection() -> Connection {
    Connection::new(Limits::default())
}

/// Feeds `request` at once and returns the error the connection reports and what it sent.
fn rejected(request: &[u8]) -> (HttpError, Response) {
    rejected_with(Limits::default(), request)
}

fn rejected_with(limits: Limits, request: &[u8]) -> (HttpError, Response) {
    let mut conn = Connection::new(limits);
    feed(&mut conn, 0, request);
    let mut seen = events(&mut conn);
    // Errors in the body show once the handler asks for it, after the chunks before them.
    seen.retain(|event| !matches!(event, Seen::Head(_) | Seen::Body(_)));
    let error = match seen.as_slice() {
        [Seen::Error(error)] => *error,
        other => panic!("expected one error, got {other:?}"),
    };
    let wire = drain(&mut conn);
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));
    let mut responses = parse_responses(&wire);
    assert_eq!(responses.len(), 1);
    let response = responses.remove(0);
    assert_eq!(response.status, error.status());
    assert_eq!(response.header("connection"), Some("close"));
    (error, response)
}

#[test]
fn python_xmlrpc_post_is_parsed_and_answered() {
    let (request, body) = xmlrpc_request();
    let mut conn = connection();
    feed(&mut conn, 0, &request);
    let seen = events(&mut conn);
    let Some(Seen::Head(head)) = seen.first() else {
        panic!("no head: {seen:?}");
    };
    assert_eq!(head.method, Method::Post);
    assert_eq!(head.path, "/RPC2");
    assert_eq!(head.version, Version::Http11);
    assert_eq!(head.body, BodyKind::Length(body.len() as u64));
    assert_eq!(head.header_str("User-Agent"), Some("Python-xmlrpc/3.11"));
    assert!(head.keep_alive);
    assert_eq!(body_of(&seen), body);
    assert_eq!(seen.last(), Some(&Seen::End));

    let reply = b"<?xml version='1.0'?><methodResponse/>".to_vec();
    conn.send_response(200, &[("Content-Type", "text/xml")], reply.clone())
        .unwrap();
    let wire = drain(&mut conn);
    let mut expected = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
        reply.len()
    )
    .into_bytes();
    expected.extend_from_slice(&reply);
    assert_eq!(wire, expected);
    assert_eq!(
        conn.should_close(),
        None,
        "keep-alive connection stays open"
    );
    assert_eq!(
        conn.buffered_capacity(),
        0,
        "idle connection holds no buffers"
    );
}

#[test]
fn byte_at_a_time_delivery_gives_the_same_request() {
    let (request, body) = xmlrpc_request();
    let mut conn = connection();
    let mut seen = Vec::new();
    for byte in &request {
        feed(&mut conn, 0, std::slice::from_ref(byte));
        seen.extend(events(&mut conn));
    }
    assert!(matches!(seen.first(), Some(Seen::Head(head)) if head.path == "/RPC2"));
    assert_eq!(body_of(&seen), body);
    assert_eq!(seen.last(), Some(&Seen::End));
    assert_eq!(
        seen.iter()
            .filter(|event| matches!(event, Seen::Head(_)))
            .count(),
        1
    );
}

#[test]
fn keep_alive_serves_several_requests_in_turn() {
    let mut conn = connection();
    for index in 0..5 {
        let request =
            format!("POST /jsonrpc HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{index}!");
        let (wire, errors) = serve(&mut conn, request.as_bytes(), 7);
        assert!(errors.is_empty());
        let responses = parse_responses(&wire);
        assert_eq!(responses.len(), 1);
        assert_eq!(
            responses[0].body,
            format!("POST /jsonrpc - 2:{index}!").into_bytes()
        );
        assert_eq!(responses[0].header("connection"), None);
        assert_eq!(conn.should_close(), None);
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let input = b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n\
                  POST /two?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc\
                  \r\nGET /three HTTP/1.1\r\nHost: h\r\n\r\n";
    let mut conn = connection();
    feed(&mut conn, 0, input);
    let first = events(&mut conn);
    assert!(matches!(&first[..], [Seen::Head(head), Seen::End] if head.path == "/one"));
    // The second request waits until the first response is complete.
    assert_eq!(events(&mut conn), vec![]);
    conn.send_response(200, &[], b"1".to_vec()).unwrap();
    let second = events(&mut conn);
    assert!(matches!(&second[0], Seen::Head(head) if head.path == "/two"));
    assert_eq!(body_of(&second), b"abc");
    conn.send_response(200, &[], b"2".to_vec()).unwrap();
    // An empty line between requests is tolerated.
    let third = events(&mut conn);
    assert!(matches!(&third[0], Seen::Head(head) if head.path == "/three"));
    conn.send_response(200, &[], b"3".to_vec()).unwrap();
    let responses = parse_responses(&drain(&mut conn));
    let bodies: Vec<&[u8]> = responses.iter().map(|r| r.body.as_slice()).collect();
    assert_eq!(bodies, [&b"1"[..], b"2", b"3"]);
}

#[test]
fn pipelined_requests_through_the_echo_driver_at_any_split() {
    let mut input = Vec::new();
    for index in 0..4 {
        input.extend_from_slice(
            format!("PUT /p{index} HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\n{index}")
                .as_bytes(),
        );
    }
    for step in [1, 3, 50, input.len()] {
        let mut conn = connection();
        let (wire, errors) = serve(&mut conn, &input, step);
        assert!(errors.is_empty());
        let responses = parse_responses(&wire);
        let bodies: Vec<String> = responses
            .iter()
            .map(|r| String::from_utf8(r.body.clone()).unwrap())
            .collect();
        assert_eq!(
            bodies,
            [
                "PUT /p0 - 1:0",
                "PUT /p1 - 1:1",
                "PUT /p2 - 1:2",
                "PUT /p3 - 1:3"
            ],
            "step {step}"
        );
    }
}

#[test]
fn chunked_body_with_extensions_and_trailers_then_keep_alive() {
    let input = b"POST /RPC2 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
                  4;ext=1\r\nWiki\r\n6 ;x\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n\
                  0\r\nExpires: never\r\n\r\n\
                  GET /after HTTP/1.1\r\nHost: h\r\n\r\n";
    for step in [1, 2, 5, input.len()] {
        let mut conn = connection();
        let (wire, errors) = serve(&mut conn, input, step);
        assert!(errors.is_empty(), "{errors:?}");
        let responses = parse_responses(&wire);
        assert_eq!(responses.len(), 2, "step {step}");
        assert_eq!(
            responses[0].body,
            b"POST /RPC2 - 24:Wikipedia in \r\n\r\nchunks."
        );
        assert_eq!(responses[1].body, b"GET /after - 0:");
    }
}

#[test]
fn chunk_size_overflow_is_400() {
    let (error, _) = rejected(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
    );
    assert_eq!(error, HttpError::ChunkSizeOverflow);
}

#[test]
fn bad_chunk_size_and_framing_are_400() {
    let (error, _) =
        rejected(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    assert_eq!(error, HttpError::BadChunkSize);
    let (error, _) =
        rejected(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX");
    assert_eq!(error, HttpError::BadChunkFraming);
}

#[test]
fn body_errors_show_after_the_chunks_before_them() {
    let mut conn = connection();
    feed(
        &mut conn,
        0,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nq\r\n",
    );
    let seen = events(&mut conn);
    assert!(matches!(seen[0], Seen::Head(_)));
    assert_eq!(seen[1], Seen::Body(b"abc".to_vec()));
    assert_eq!(seen[2], Seen::Error(HttpError::BadChunkSize));
    assert_eq!(seen.len(), 3);
    assert_eq!(
        conn.start_response(200, &[], ResponseBody::Empty),
        Err(ResponseError::ConnectionClosed)
    );
}

#[test]
fn huge_content_length_is_413_and_overflowing_one_is_400() {
    let (error, response) =
        rejected(b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000000000000000\r\n\r\n");
    assert_eq!(error, HttpError::PayloadTooLarge);
    assert_eq!(response.status, 413);
    let (error, _) =
        rejected(b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 184467440737095516160\r\n\r\n");
    assert_eq!(error, HttpError::InvalidContentLength);
}

#[test]
fn chunked_body_over_the_limit_is_413() {
    let limits = Limits {
        max_body_bytes: 4,
        ..Limits::default()
    };
    let (error, _) = rejected_with(
        limits,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\n",
    );
    assert_eq!(error, HttpError::PayloadTooLarge);
}

#[test]
fn handler_can_raise_the_body_limit_for_a_streaming_route() {
    let limits = Limits {
        max_body_bytes: 4,
        ..Limits::default()
    };
    let mut conn = Connection::new(limits);
    feed(
        &mut conn,
        0,
        b"PUT /import_raw_vdi?vdi=x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789",
    );
    let Some(Event::RequestHead(head)) = conn.poll_event() else {
        panic!("no head");
    };
    assert_eq!(head.query_param("vdi").unwrap().as_deref(), Some("x"));
    conn.set_body_limit(1 << 40);
    let seen = events(&mut conn);
    assert_eq!(body_of(&seen), b"0123456789");
    assert_eq!(seen.last(), Some(&Seen::End));
}

#[test]
fn oversized_head_is_431() {
    let limits = Limits {
        max_head_bytes: 256,
        ..Limits::default()
    };
    let mut request = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
    request.resize(400, b'a');
    let (error, response) = rejected_with(limits, &request);
    assert_eq!(error, HttpError::HeadTooLarge);
    assert_eq!(response.status, 431);
}

#[test]
fn oversized_head_without_any_line_end_is_431_and_stops_taking_input() {
    let limits = Limits {
        max_head_bytes: 128,
        input_buffer_bytes: 128,
        ..Limits::default()
    };
    let mut conn = Connection::new(limits);
    let garbage = [b'A'; 1000];
    let taken = conn.receive(0, &garbage);
    assert_eq!(taken, 128, "input is bounded by the buffer");
    assert_eq!(
        events(&mut conn),
        vec![Seen::Error(HttpError::HeadTooLarge)]
    );
    // Once closing, input is dropped rather than refused so the socket never stalls.
    assert_eq!(conn.receive(0, &garbage), garbage.len());
    assert_eq!(parse_responses(&drain(&mut conn))[0].status, 431);
    assert!(conn.buffered_capacity() == 0);
}

#[test]
fn too_many_headers_is_431() {
    let limits = Limits {
        max_headers: 4,
        ..Limits::default()
    };
    let (error, _) = rejected_with(
        limits,
        b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n",
    );
    assert_eq!(error, HttpError::TooManyHeaders);
}

#[test]
fn malformed_and_conflicting_heads_are_400_and_unknown_coding_is_501() {
    let cases: [(&[u8], HttpError); 6] = [
        (b"GET /\r\nHost: h\r\n\r\n", HttpError::MalformedHead),
        (b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", HttpError::MalformedHead),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            HttpError::ConflictingContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            HttpError::ContentLengthWithTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
            HttpError::UnsupportedTransferEncoding,
        ),
        (b"GET / HTTP/1.1\r\n\r\n", HttpError::BadHost),
    ];
    for (request, expected) in cases {
        let (error, response) = rejected(request);
        assert_eq!(error, expected);
        let status = if expected == HttpError::UnsupportedTransferEncoding {
            501
        } else {
            400
        };
        assert_eq!(response.status, status);
    }
}

#[test]
fn bad_request_line_is_detected_before_the_head_ends() {
    let mut conn = connection();
    feed(&mut conn, 0, b"\x16\x03\x01 not http\r\n");
    assert_eq!(
        events(&mut conn),
        vec![Seen::Error(HttpError::MalformedHead)]
    );
}

#[test]
fn error_in_a_pipelined_request_follows_the_good_response() {
    let mut conn = connection();
    let (wire, errors) = serve(
        &mut conn,
        b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\nBROKEN\r\n\r\nGET /never HTTP/1.1\r\nHost: h\r\n\r\n",
        1000,
    );
    assert_eq!(errors, vec![HttpError::MalformedHead]);
    let responses = parse_responses(&wire);
    assert_eq!(responses.len(), 2);
    assert_eq!(responses[0].status, 200);
    assert_eq!(responses[1].status, 400);
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));
}

#[test]
fn expect_100_continue_is_answered_when_the_handler_asks_for_the_body() {
    let mut conn = connection();
    feed(
        &mut conn,
        0,
        b"PUT /import_raw_vdi HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    );
    let Some(Event::RequestHead(head)) = conn.poll_event() else {
        panic!("no head");
    };
    assert!(head.expect_continue);
    assert_eq!(conn.output(), b"", "not before the handler wants the body");
    assert_eq!(conn.poll_event(), None);
    assert_eq!(drain(&mut conn), b"HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(conn.poll_event(), None, "sent only once");
    assert_eq!(conn.output(), b"");
    feed(&mut conn, 0, b"data");
    let seen = events(&mut conn);
    assert_eq!(body_of(&seen), b"data");
    conn.send_response(200, &[], Vec::new()).unwrap();
    let responses = parse_responses(&drain(&mut conn));
    assert_eq!(responses[0].status, 200);
    assert_eq!(conn.should_close(), None);
}

#[test]
fn early_final_response_skips_100_continue_and_closes() {
    let mut conn = connection();
    feed(
        &mut conn,
        0,
        b"PUT /import_raw_vdi HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    );
    assert!(matches!(conn.poll_event(), Some(Event::RequestHead(_))));
    conn.send_response(401, &[], b"no session".to_vec())
        .unwrap();
    let wire = drain(&mut conn);
    assert!(!wire.starts_with(b"HTTP/1.1 100"));
    let responses = parse_responses(&wire);
    assert_eq!(responses[0].status, 401);
    assert_eq!(responses[0].header("connection"), Some("close"));
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));
}

#[test]
fn unsupported_expectation_is_417() {
    let (error, _) = rejected(b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\n\r\n");
    assert_eq!(error, HttpError::UnsupportedExpectation);
}

#[test]
fn http10_request_gets_close_semantics() {
    let mut conn = connection();
    let (wire, errors) = serve(
        &mut conn,
        b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /y HTTP/1.0\r\n\r\n",
        1000,
    );
    assert!(errors.is_empty());
    let responses = parse_responses(&wire);
    assert_eq!(responses.len(), 1, "the second request is never served");
    assert_eq!(responses[0].body, b"GET /x - 0:");
    assert_eq!(responses[0].header("connection"), Some("close"));
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));
}

#[test]
fn chunked_response_to_http10_is_delimited_by_close() {
    let mut conn = connection();
    feed(&mut conn, 0, b"GET /export_raw_vdi HTTP/1.0\r\n\r\n");
    assert_eq!(events(&mut conn).len(), 2);
    conn.start_response(200, &[], ResponseBody::Chunked)
        .unwrap();
    assert_eq!(conn.write_body(b"raw bytes").unwrap(), 9);
    conn.finish_response().unwrap();
    assert_eq!(
        drain(&mut conn),
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nraw bytes"
    );
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));
}

#[test]
fn connection_close_from_client_closes_after_the_response() {
    let mut conn = connection();
    let (wire, _) = serve(
        &mut conn,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        1000,
    );
    assert_eq!(
        parse_responses(&wire)[0].header("connection"),
        Some("close")
    );
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));
}

#[test]
fn handler_can_ask_to_close() {
    let mut conn = connection();
    feed(
        &mut conn,
        0,
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    assert_eq!(events(&mut conn).len(), 2);
    conn.close_after_response();
    conn.send_response(200, &[], b"bye".to_vec()).unwrap();
    let responses = parse_responses(&drain(&mut conn));
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].header("connection"), Some("close"));
    assert_eq!(events(&mut conn), vec![]);
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));
}

#[test]
fn head_request_gets_length_but_no_body() {
    let mut conn = connection();
    feed(&mut conn, 0, b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(events(&mut conn).len(), 2);
    conn.send_response(200, &[], b"12345".to_vec()).unwrap();
    assert_eq!(
        drain(&mut conn),
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    );
    assert_eq!(conn.should_close(), None);
}

#[test]
fn peer_eof_mid_body_is_an_incomplete_body() {
    let mut conn = connection();
    feed(
        &mut conn,
        0,
        b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n12345",
    );
    let seen = events(&mut conn);
    assert_eq!(body_of(&seen), b"12345");
    conn.receive_eof(0);
    assert_eq!(
        events(&mut conn),
        vec![Seen::Error(HttpError::IncompleteBody)]
    );
    assert_eq!(parse_responses(&drain(&mut conn))[0].status, 400);
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));
}

#[test]
fn peer_eof_after_a_whole_request_still_gets_the_response() {
    let mut conn = connection();
    feed(&mut conn, 0, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    conn.receive_eof(0);
    assert_eq!(events(&mut conn).len(), 2);
    assert_eq!(conn.should_close(), None);
    conn.send_response(200, &[], b"late".to_vec()).unwrap();
    let responses = parse_responses(&drain(&mut conn));
    assert_eq!(responses[0].body, b"late");
    assert_eq!(responses[0].header("connection"), Some("close"));
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));
}

#[test]
fn peer_eof_between_requests_or_inside_a_head_closes_silently() {
    let mut conn = connection();
    conn.receive_eof(0);
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));

    let mut conn = connection();
    feed(&mut conn, 0, b"GET / HT");
    assert_eq!(events(&mut conn), vec![]);
    conn.receive_eof(0);
    assert_eq!(events(&mut conn), vec![]);
    assert_eq!(conn.output(), b"");
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));
}

#[test]
fn response_api_misuse_is_reported() {
    let mut conn = connection();
    assert_eq!(
        conn.start_response(200, &[], ResponseBody::Empty),
        Err(ResponseError::NoActiveRequest)
    );
    feed(&mut conn, 0, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    events(&mut conn);
    assert_eq!(conn.write_body(b"x"), Err(ResponseError::NotStarted));
    assert_eq!(conn.finish_response(), Err(ResponseError::NotStarted));
    assert_eq!(
        conn.start_response(200, &[("Connection", "keep-alive")], ResponseBody::Empty),
        Err(ResponseError::ReservedHeader)
    );
    conn.start_response(200, &[], ResponseBody::Length(3))
        .unwrap();
    assert_eq!(
        conn.start_response(200, &[], ResponseBody::Empty),
        Err(ResponseError::AlreadyStarted)
    );
    assert_eq!(conn.write_body(b"abcd"), Err(ResponseError::BodyOverrun));
    assert_eq!(conn.write_body(b"ab"), Ok(2));
    assert_eq!(conn.finish_response(), Err(ResponseError::BodyIncomplete));
    assert_eq!(conn.write_body(b"c"), Err(ResponseError::ConnectionClosed));
    let wire = drain(&mut conn);
    assert!(wire.ends_with(b"\r\n\r\nab"));
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));
}

#[test]
fn writes_after_finish_are_refused_while_the_next_request_is_pending() {
    let mut conn = connection();
    feed(&mut conn, 0, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    events(&mut conn);
    conn.start_response(200, &[], ResponseBody::Length(1))
        .unwrap();
    conn.write_body(b"x").unwrap();
    conn.finish_response().unwrap();
    assert_eq!(conn.write_body(b"y"), Err(ResponseError::NoActiveRequest));
    assert_eq!(conn.finish_response(), Err(ResponseError::NoActiveRequest));
}

#[test]
fn chunked_response_is_framed() {
    let mut conn = connection();
    feed(
        &mut conn,
        0,
        b"GET /export_raw_vdi HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    events(&mut conn);
    conn.start_response(
        200,
        &[("Content-Type", "application/octet-stream")],
        ResponseBody::Chunked,
    )
    .unwrap();
    assert_eq!(conn.write_body(b"hello "), Ok(6));
    assert_eq!(
        conn.write_body(b""),
        Ok(0),
        "an empty write must not end the body"
    );
    assert_eq!(conn.write_body(b"world"), Ok(5));
    conn.finish_response().unwrap();
    let wire = drain(&mut conn);
    assert!(wire.ends_with(b"\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"));
    let responses = parse_responses(&wire);
    assert_eq!(responses[0].body, b"hello world");
    assert_eq!(conn.should_close(), None);
}

#[test]
fn response_may_start_before_the_body_is_read_but_then_closes() {
    let mut conn = connection();
    feed(
        &mut conn,
        0,
        b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert!(matches!(conn.poll_event(), Some(Event::RequestHead(_))));
    conn.start_response(200, &[], ResponseBody::Chunked)
        .unwrap();
    let seen = events(&mut conn);
    assert_eq!(body_of(&seen), b"abc");
    conn.write_body(b"ok").unwrap();
    conn.finish_response().unwrap();
    let responses = parse_responses(&drain(&mut conn));
    assert_eq!(responses[0].header("connection"), Some("close"));
    assert_eq!(conn.should_close(), Some(CloseKind::Graceful));
}

#[test]
fn many_interleaved_connections_are_independent() {
    let mut conns: Vec<Connection> = (0..64).map(|_| connection()).collect();
    let requests: Vec<Vec<u8>> = (0..64)
        .map(|index| {
            format!("POST /c{index} HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n{index:03}")
                .into_bytes()
        })
        .collect();
    let mut heads = vec![None; 64];
    let mut bodies = vec![Vec::new(); 64];
    let longest = requests.iter().map(Vec::len).max().unwrap();
    // One byte to each connection in turn; one connection also gets garbage and fails.
    for position in 0..longest {
        for (index, conn) in conns.iter_mut().enumerate() {
            if let Some(byte) = requests[index].get(position) {
                let byte = if index == 13 && position == 0 {
                    b'\x01'
                } else {
                    *byte
                };
                conn.receive(0, &[byte]);
            }
            for seen in events(conn) {
                match seen {
                    Seen::Head(head) => heads[index] = Some(head.path),
                    Seen::Body(data) => bodies[index].extend(data),
                    Seen::End | Seen::Error(_) => {}
                }
            }
        }
    }
    for (index, conn) in conns.iter_mut().enumerate() {
        if index == 13 {
            assert_eq!(heads[index], None);
            assert_eq!(conn.should_close(), None, "its 400 is still to be sent");
            continue;
        }
        assert_eq!(heads[index].as_deref(), Some(format!("/c{index}").as_str()));
        assert_eq!(bodies[index], format!("{index:03}").into_bytes());
        conn.send_response(200, &[], Vec::new()).unwrap();
        drain(conn);
        assert_eq!(conn.buffered_capacity(), 0);
    }
}
