//! A small HTTP load generator for `bench api` and `bench soak`: N client threads, each
//! sending M requests over one keep-alive connection (or a new connection per request, for
//! servers that close after every answer), recording each request's latency; and the
//! XML-RPC framing the clients send.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How a phase's clients talk to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    KeepAlive,
    PerRequest,
}

/// What one phase measured.
#[derive(Debug, Clone)]
pub struct PhaseResult {
    pub clients: usize,
    pub requests: usize,
    pub failures: usize,
    pub seconds: f64,
    /// Every successful request's latency, in milliseconds, sorted.
    pub latencies_ms: Vec<f64>,
}

impl PhaseResult {
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            (self.requests - self.failures) as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The `p`-th percentile (0–100) latency, nearest-rank.
    pub fn percentile(&self, p: f64) -> f64 {
        percentile(&self.latencies_ms, p)
    }
}

/// Nearest-rank percentile of sorted samples (0 when there are none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Reads one response (head and Content-Length body); returns the status code.
pub fn read_response(stream: &mut TcpStream) -> std::io::Result<(u16, Vec<u8>)> {
    read_response_closing(stream).map(|(status, body, _)| (status, body))
}

/// Reads one response; returns the status code, the body, and whether the server closes
/// the connection after it (`Connection: close`).
pub fn read_response_closing(stream: &mut TcpStream) -> std::io::Result<(u16, Vec<u8>, bool)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before a response head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed inside a body",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let closes = head.lines().any(|l| {
        l.strip_prefix("connection:")
            .is_some_and(|v| v.split(',').any(|token| token.trim() == "close"))
    });
    Ok((status, buf[head_end..head_end + length].to_vec(), closes))
}

/// Sends `request` and reads the answer on a fresh connection.
pub fn one_shot(port: u16, request: &[u8], timeout: Duration) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    stream.write_all(request)?;
    read_response(&mut stream)
}

/// Runs `clients` threads sending `per_client` copies of `request` each.
pub fn run_phase(
    port: u16,
    clients: usize,
    per_client: usize,
    request: &[u8],
    mode: Connections,
) -> PhaseResult {
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let request = request.to_vec();
            std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(per_client);
                let mut failures = 0;
                let mut stream: Option<TcpStream> = None;
                for _ in 0..per_client {
                    let t = Instant::now();
                    let result = (|| {
                        if stream.is_none() || mode == Connections::PerRequest {
                            let s = TcpStream::connect(("127.0.0.1", port))?;
                            s.set_read_timeout(Some(Duration::from_secs(30)))?;
                            s.set_nodelay(true)?;
                            stream = Some(s);
                        }
                        let s = stream
                            .as_mut()
                            .ok_or_else(|| std::io::Error::other("no stream"))?;
                        s.write_all(&request)?;
                        read_response(s)
                    })();
                    match result {
                        Ok((200, _)) => latencies.push(t.elapsed().as_secs_f64() * 1000.0),
                        _ => {
                            failures += 1;
                            stream = None;
                        }
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut latencies_ms = Vec::new();
    let mut failures = 0;
    for t in threads {
        if let Ok((l, f)) = t.join() {
            latencies_ms.extend(l);
            failures += f;
        } else {
            failures += per_client;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies_ms.sort_by(f64::total_cmp);
    PhaseResult {
        clients,
        requests: clients * per_client,
        failures,
        seconds,
        latencies_ms,
    }
}

/// One XML-RPC parameter.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    Str(&'a str),
    Bool(bool),
    Double(f64),
    Strings(&'a [&'a str]),
    Struct(&'a [(&'a str, Param<'a>)]),
}

/// `text` with XML's special characters escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn push_value(out: &mut String, param: &Param<'_>) {
    match param {
        Param::Str(text) => {
            out.push_str(&format!("<value><string>{}</string></value>", escape(text)))
        }
        Param::Bool(b) => out.push_str(&format!(
            "<value><boolean>{}</boolean></value>",
            u8::from(*b)
        )),
        Param::Double(d) => out.push_str(&format!("<value><double>{d}</double></value>")),
        Param::Strings(items) => {
            out.push_str("<value><array><data>\n");
            for item in *items {
                push_value(out, &Param::Str(item));
                out.push('\n');
            }
            out.push_str("</data></array></value>");
        }
        Param::Struct(members) => {
            out.push_str("<value><struct>\n");
            for (name, value) in *members {
                out.push_str(&format!("<member>\n<name>{}</name>\n", escape(name)));
                push_value(out, value);
                out.push_str("\n</member>\n");
            }
            out.push_str("</struct></value>");
        }
    }
}

/// An XML-RPC call as Python's `xmlrpc.client` frames it.
pub fn xmlrpc_call(method: &str, params: &[Param<'_>]) -> Vec<u8> {
    let mut body = format!(
        "<?xml version='1.0'?>\n<methodCall>\n<methodName>{method}</methodName>\n<params>\n"
    );
    for p in params {
        body.push_str("<param>\n");
        push_value(&mut body, p);
        body.push_str("\n</param>\n");
    }
    body.push_str("</params>\n</methodCall>\n");
    format!(
        "POST /RPC2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\nUser-Agent: keel-bench\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// An XML-RPC call with string parameters only.
pub fn xmlrpc_request(method: &str, params: &[&str]) -> Vec<u8> {
    let params: Vec<Param<'_>> = params.iter().map(|p| Param::Str(p)).collect();
    xmlrpc_call(method, &params)
}

/// Whether an XML-RPC answer's `Status` is `Success` (xapi's envelope).
pub fn succeeded(body: &[u8]) -> bool {
    String::from_utf8_lossy(body).contains(">Success<")
}

/// The string value of struct member `name` in an XML-RPC answer, with or without a
/// `<string>` element around it.
pub fn member_string(body: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let after_name = text.split_once(&format!("<name>{name}</name>"))?.1;
    let value = after_name.trim_start().strip_prefix("<value>")?;
    let value = value.strip_prefix("<string>").unwrap_or(value);
    let end = value.find('<')?;
    Some(value[..end].to_string())
}

/// The first `OpaqueRef:…` in an XML-RPC answer.
pub fn first_ref(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let start = text.find("OpaqueRef:")?;
    let rest = &text[start..];
    let end = rest.find('<').unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), 50.0);
        assert_eq!(percentile(&s, 99.0), 99.0);
        assert_eq!(percentile(&s, 100.0), 100.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
    }

    #[test]
    fn xmlrpc_request_has_exact_content_length() {
        let r = xmlrpc_request("host.get_record", &["OpaqueRef:a", "OpaqueRef:b"]);
        let text = String::from_utf8(r).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(body.contains("<methodName>host.get_record</methodName>"));
        assert!(body.contains("<param>\n<value><string>OpaqueRef:a</string></value>\n</param>"));
    }

    #[test]
    fn xmlrpc_call_encodes_every_parameter_kind_and_escapes_text() {
        let r = xmlrpc_call(
            "event.from",
            &[
                Param::Str("a<&>b"),
                Param::Strings(&["VDI", "SR"]),
                Param::Double(2.5),
                Param::Struct(&[
                    ("sharable", Param::Bool(false)),
                    ("tags", Param::Strings(&[])),
                ]),
            ],
        );
        let text = String::from_utf8(r).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        for expected in [
            "<value><string>a&lt;&amp;&gt;b</string></value>",
            "<value><array><data>\n<value><string>VDI</string></value>\n<value><string>SR</string></value>\n</data></array></value>",
            "<value><double>2.5</double></value>",
            "<member>\n<name>sharable</name>\n<value><boolean>0</boolean></value>\n</member>",
            "<name>tags</name>\n<value><array><data>\n</data></array></value>",
        ] {
            assert!(body.contains(expected), "missing {expected:?} in {body}");
        }
    }

    #[test]
    fn answers_are_read_for_status_and_members() {
        let ok = b"<struct><member><name>Status</name><value>Success</value></member><member><name>Value</name><value><struct><member><name>token</name><value><string>42</string></value></member></struct></value></member></struct>";
        assert!(succeeded(ok));
        assert_eq!(member_string(ok, "token").as_deref(), Some("42"));
        assert_eq!(
            member_string(b"<name>token</name><value>7</value>", "token").as_deref(),
            Some("7")
        );
        assert_eq!(member_string(ok, "events"), None);
        let fault = b"<member><name>Status</name><value><string>Failure</string></value></member>";
        assert!(!succeeded(fault));
    }

    #[test]
    fn first_ref_finds_the_session() {
        let body = b"<value><struct><member><name>Value</name><value>OpaqueRef:1234-ab</value></member></struct></value>";
        assert_eq!(first_ref(body).as_deref(), Some("OpaqueRef:1234-ab"));
        assert_eq!(first_ref(b"<fault/>"), None);
    }

    #[test]
    fn a_phase_against_a_local_server_counts_requests() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(4) {
                let mut s = stream.unwrap();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                    }
                });
            }
        });
        let r = run_phase(
            port,
            2,
            10,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            Connections::KeepAlive,
        );
        assert_eq!((r.requests, r.failures, r.latencies_ms.len()), (20, 0, 20));
        assert!(r.per_second() > 0.0);
    }
}
