//! Test drivers shared by the integration tests: an owned copy of events, an echo handler
//! that plays the glue and the handler at once, and a small client-side response parser.
#![allow(dead_code)]

use keel_http::{Connection, Event, HttpError, Request};

/// An owned copy of an [`Event`].
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    Head(Request),
    Body(Vec<u8>),
    End,
    Error(HttpError),
}

/// Polls every event the connection has now.
pub fn events(conn: &mut Connection) -> Vec<Seen> {
    let mut seen = Vec::new();
    while let Some(event) = conn.poll_event() {
        seen.push(match event {
            Event::RequestHead(request) => Seen::Head(request),
            Event::BodyChunk(data) => Seen::Body(data.to_vec()),
            Event::BodyEnd => Seen::End,
            Event::Error(error) => Seen::Error(error),
        });
        assert!(seen.len() < 1_000_000, "poll_event never ran dry");
    }
    seen
}

/// The concatenated body chunks among `seen`.
pub fn body_of(seen: &[Seen]) -> Vec<u8> {
    seen.iter()
        .filter_map(|event| match event {
            Seen::Body(data) => Some(data.as_slice()),
            _ => None,
        })
        .flatten()
        .copied()
        .collect()
}

/// Hands all of `bytes` to the connection, which must take them.
pub fn feed(conn: &mut Connection, now_ms: u64, bytes: &[u8]) {
    assert_eq!(conn.receive(now_ms, bytes), bytes.len(), "input refused");
}

/// Takes all pending output, as a socket with unlimited room would.
pub fn drain(conn: &mut Connection) -> Vec<u8> {
    let mut sent = Vec::new();
    loop {
        let pending = conn.output().to_vec();
        if pending.is_empty() {
            return sent;
        }
        conn.consume_output(pending.len());
        sent.extend_from_slice(&pending);
    }
}

/// What the echo handler answers: method, path, query, body length, then the body.
pub fn echo_body(request: &Request, body: &[u8]) -> Vec<u8> {
    let mut text = format!(
        "{} {} {} {}:",
        request.method.as_str(),
        request.path,
        request.query.as_deref().unwrap_or("-"),
        body.len()
    )
    .into_bytes();
    text.extend_from_slice(body);
    text
}

/// Plays glue and echo handler: delivers `input` in pieces of at most `step` bytes (honouring
/// backpressure), answers each complete request with [`echo_body`], and returns everything the
/// connection sent, plus the errors it reported.
pub fn serve(conn: &mut Connection, input: &[u8], step: usize) -> (Vec<u8>, Vec<HttpError>) {
    let mut position = 0;
    let mut wire = Vec::new();
    let mut errors = Vec::new();
    let mut request: Option<Request> = None;
    let mut body = Vec::new();
    for _ in 0..10_000_000 {
        let mut answer = None;
        while let Some(event) = conn.poll_event() {
            match event {
                Event::RequestHead(head) => {
                    request = Some(head);
                    body.clear();
                }
                Event::BodyChunk(data) => body.extend_from_slice(data),
                Event::BodyEnd => {
                    let head = request.take().expect("BodyEnd without a head");
                    answer = Some(echo_body(&head, &body));
                    break;
                }
                Event::Error(error) => {
                    errors.push(error);
                    request = None;
                }
            }
        }
        if let Some(answer) = answer {
            conn.send_response(200, &[("Content-Type", "text/plain")], answer)
                .expect("send_response");
            continue;
        }
        let sent = drain(conn);
        let progressed = !sent.is_empty();
        wire.extend_from_slice(&sent);
        if conn.should_close().is_some() {
            return (wire, errors);
        }
        if position < input.len() {
            let end = (position + step).min(input.len());
            let taken = conn.receive(0, &input[position..end]);
            position += taken;
            if taken > 0 || progressed {
                continue;
            }
        }
        if !progressed && (position == input.len()) {
            return (wire, errors);
        }
    }
    panic!("serve did not settle");
}

/// A response as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Splits a byte stream into responses (Content-Length, chunked, or to the end of the stream).
pub fn parse_responses(mut wire: &[u8]) -> Vec<Response> {
    let mut responses = Vec::new();
    while !wire.is_empty() {
        let head_end = find(wire, b"\r\n\r\n").expect("response head without end") + 4;
        let head = std::str::from_utf8(&wire[..head_end]).expect("response head is text");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status: u16 = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|line| !line.is_empty())
            .map(|line| {
                let (name, value) = line.split_once(": ").expect("header line");
                (name.to_string(), value.to_string())
            })
            .collect();
        wire = &wire[head_end..];
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(length) = response.header("content-length") {
            let length: usize = length.parse().unwrap();
            if status != 204 && status != 304 {
                response.body = wire[..length].to_vec();
                wire = &wire[length..];
            }
        } else if response.header("transfer-encoding") == Some("chunked") {
            loop {
                let line_end = find(wire, b"\r\n").unwrap();
                let size =
                    usize::from_str_radix(std::str::from_utf8(&wire[..line_end]).unwrap(), 16)
                        .unwrap();
                wire = &wire[line_end + 2..];
                if size == 0 {
                    assert_eq!(&wire[..2], b"\r\n");
                    wire = &wire[2..];
                    break;
                }
                response.body.extend_from_slice(&wire[..size]);
                assert_eq!(&wire[size..size + 2], b"\r\n");
                wire = &wire[size + 2..];
            }
        } else if (100..200).contains(&status) || status == 204 || status == 304 {
            // No body.
        } else {
            response.body = wire.to_vec();
            wire = &[];
        }
        responses.push(response);
    }
    responses
}

/// The request Python's `xmlrpc.client` sends for `session.login_with_password`.
pub fn xmlrpc_request() -> (Vec<u8>, Vec<u8>) {
    let body = b"<?xml version='1.0'?>\n<methodCall>\n<methodName>session.login_with_password</methodName>\n<params>\n<param>\n<value><string>root</string></value>\n</param>\n<param>\n<value><string>secret</string></value>\n</param>\n</params>\n</methodCall>\n".to_vec();
    let mut request = format!(
        "POST /RPC2 HTTP/1.1\r\nHost: 192.0.2.10\r\nAccept-Encoding: gzip\r\nContent-Type: text/xml\r\nUser-Agent: Python-xmlrpc/3.11\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    (request, body)
}

/// A deterministic xorshift64* generator for fuzz and stress inputs.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next() % bound
        }
    }
}
