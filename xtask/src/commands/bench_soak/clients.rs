//! The soak's clients: each thread plays one role until the deadline and counts what it did.
//!
//! - calls: a keep-alive connection cycling through read calls over every class,
//! - event watchers: `event.from` long-polls on the classes the transfers change,
//! - transfers: create a VDI, `PUT /import_raw_vdi` a pattern, `GET /export_raw_vdi` it
//!   back and compare, destroy the VDI (each on new connections, as the SDK's users do).
//!
//! Every failure counts: a transport error, an HTTP status other than 200, an XML-RPC
//! `Failure`, or exported bytes that differ from the imported ones.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::load::{self, member_string, succeeded, xmlrpc_call, xmlrpc_request, Param};

/// What a client does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Calls,
    EventWatch,
    Transfer,
}

impl Role {
    /// One client in eight watches events and one in eight transfers VDIs; at least one of
    /// each once there are three clients.
    pub fn of(client: usize, clients: usize) -> Role {
        let slot = if clients < 8 { client % 3 } else { client % 8 };
        match slot {
            0 => Role::EventWatch,
            1 if clients >= 2 => Role::Transfer,
            _ => Role::Calls,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Calls => "mixed API calls",
            Role::EventWatch => "`event.from` long-polls",
            Role::Transfer => "VDI create, import, export, destroy",
        }
    }
}

/// What one role measured, over all its clients.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub clients: usize,
    pub operations: usize,
    pub errors: usize,
    /// Latencies of successful operations in milliseconds.
    pub latencies_ms: Vec<f64>,
    /// The first few errors, for the report.
    pub first_errors: Vec<String>,
    /// Events delivered (watchers only).
    pub events: usize,
}

/// At most this many error texts are kept per role.
const KEPT_ERRORS: usize = 5;

impl Tally {
    fn ok(&mut self, started: Instant) {
        self.operations += 1;
        self.latencies_ms
            .push(started.elapsed().as_secs_f64() * 1000.0);
    }

    fn error(&mut self, what: String) {
        self.operations += 1;
        self.errors += 1;
        if self.first_errors.len() < KEPT_ERRORS {
            self.first_errors.push(what);
        }
    }

    /// Adds another client's tally of the same role.
    pub fn merge(&mut self, other: Tally) {
        self.clients += other.clients;
        self.operations += other.operations;
        self.errors += other.errors;
        self.latencies_ms.extend(other.latencies_ms);
        self.events += other.events;
        for e in other.first_errors {
            if self.first_errors.len() < KEPT_ERRORS {
                self.first_errors.push(e);
            }
        }
    }

    /// Nearest-rank percentile of the latencies.
    pub fn percentile(&mut self, p: f64) -> f64 {
        self.latencies_ms.sort_by(f64::total_cmp);
        load::percentile(&self.latencies_ms, p)
    }
}

/// What every client knows: where Keel is and what to call.
#[derive(Debug, Clone)]
pub struct Target {
    pub port: u16,
    pub session: String,
    pub host: String,
    pub metrics: String,
    pub sr: String,
    /// Size of each transferred VDI.
    pub transfer_bytes: usize,
    /// Longest `event.from` wait asked for.
    pub event_wait: Duration,
    /// When the soak started: errors say when they happened.
    pub started: Instant,
}

impl Target {
    fn when(&self, error: String) -> String {
        format!("{:.1} s: {error}", self.started.elapsed().as_secs_f64())
    }
}

/// A keep-alive connection that reconnects after an error.
struct Connection {
    port: u16,
    read_timeout: Duration,
    stream: Option<TcpStream>,
}

impl Connection {
    fn new(port: u16, read_timeout: Duration) -> Self {
        Connection {
            port,
            read_timeout,
            stream: None,
        }
    }

    /// Sends one request and reads the answer; `Err` describes the failure. A kept-alive
    /// connection the server closed while it sat idle is replaced and the request sent once
    /// more, as Python's `xmlrpc.client` does; a new connection that fails is an error.
    fn call(&mut self, request: &[u8]) -> Result<Vec<u8>, String> {
        let reused = self.stream.is_some();
        match self.exchange(request) {
            Err(error) if reused && closed_while_idle(&error) => self
                .exchange(request)
                .map_err(|error| format!("{error} (on a new connection)")),
            result => result.map_err(|error| error.to_string()),
        }
        .and_then(|(status, body)| match status {
            200 => Ok(body),
            _ => Err(format!("HTTP {status}")),
        })
    }

    fn exchange(&mut self, request: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        let result = (|| {
            if self.stream.is_none() {
                let s = TcpStream::connect(("127.0.0.1", self.port))?;
                s.set_read_timeout(Some(self.read_timeout))?;
                s.set_nodelay(true)?;
                self.stream = Some(s);
            }
            let s = self
                .stream
                .as_mut()
                .ok_or_else(|| std::io::Error::other("no stream"))?;
            s.write_all(request)?;
            load::read_response_closing(s)
        })();
        match result {
            // The server said it closes: the next request goes on a new connection.
            Ok((status, body, closes)) => {
                if closes || status != 200 {
                    self.stream = None;
                }
                Ok((status, body))
            }
            Err(error) => {
                self.stream = None;
                Err(error)
            }
        }
    }

    /// An XML-RPC call that must succeed.
    fn rpc(&mut self, request: &[u8], what: &str) -> Result<Vec<u8>, String> {
        let body = self.call(request).map_err(|e| format!("{what}: {e}"))?;
        if succeeded(&body) {
            Ok(body)
        } else {
            let text = String::from_utf8_lossy(&body);
            Err(format!(
                "{what}: {}",
                text.chars().take(300).collect::<String>()
            ))
        }
    }
}

/// Whether an error on a kept-alive connection means the server had closed it (its idle
/// timeout) before the request arrived.
fn closed_while_idle(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
    )
}

/// The read calls the `Calls` clients cycle through.
fn mixed_calls(t: &Target) -> Vec<(String, Vec<u8>)> {
    let s = t.session.as_str();
    [
        ("host.get_record", vec![s, &t.host]),
        ("pool.get_all_records", vec![s]),
        ("SR.get_all_records", vec![s]),
        ("VDI.get_all_records", vec![s]),
        ("PBD.get_all_records", vec![s]),
        ("host_metrics.get_record", vec![s, &t.metrics]),
        ("session.get_this_host", vec![s, s]),
        ("task.get_all_records", vec![s]),
    ]
    .into_iter()
    .map(|(method, params)| (method.to_string(), xmlrpc_request(method, &params)))
    .collect()
}

/// Runs one client of `role` until `deadline`.
pub fn run_client(role: Role, index: usize, target: &Target, deadline: Instant) -> Tally {
    let mut tally = Tally {
        clients: 1,
        ..Tally::default()
    };
    match role {
        Role::Calls => {
            let calls = mixed_calls(target);
            let mut conn = Connection::new(target.port, Duration::from_secs(60));
            let mut next = index;
            while Instant::now() < deadline {
                let (method, request) = &calls[next % calls.len()];
                next += 1;
                let started = Instant::now();
                match conn.rpc(request, method) {
                    Ok(_) => tally.ok(started),
                    Err(e) => tally.error(target.when(e)),
                }
            }
        }
        Role::EventWatch => watch_events(target, deadline, &mut tally),
        Role::Transfer => {
            let mut round = 0u64;
            while Instant::now() < deadline {
                let started = Instant::now();
                match transfer_once(target, index as u64, round) {
                    Ok(()) => tally.ok(started),
                    Err(e) => {
                        tally.error(target.when(e));
                        // One error is enough to fail the soak; hammering adds nothing.
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
                round += 1;
            }
        }
    }
    tally
}

fn watch_events(target: &Target, deadline: Instant, tally: &mut Tally) {
    let classes: &[&str] = &["VDI", "SR", "task"];
    let mut conn = Connection::new(target.port, target.event_wait + Duration::from_secs(60));
    let mut token = String::new();
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = left.min(target.event_wait).as_secs_f64().max(0.1);
        let request = xmlrpc_call(
            "event.from",
            &[
                Param::Str(&target.session),
                Param::Strings(classes),
                Param::Str(&token),
                Param::Double(wait),
            ],
        );
        let started = Instant::now();
        match conn.rpc(&request, "event.from") {
            Ok(body) => match member_string(&body, "token") {
                Some(next) => {
                    // Each event is a struct with an `operation` member.
                    tally.events += String::from_utf8_lossy(&body)
                        .matches("<name>operation</name>")
                        .count();
                    token = next;
                    tally.ok(started);
                }
                None => tally.error(target.when("event.from: an answer without a token".into())),
            },
            Err(e) => {
                tally.error(target.when(e));
                // A lost token (EVENTS_LOST) starts over from a snapshot.
                token.clear();
            }
        }
    }
}

/// A pattern that differs per client and round, so a mixed-up export cannot pass.
pub fn pattern(bytes: usize, client: u64, round: u64) -> Vec<u8> {
    let mut state = (client << 32 | round) ^ 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(bytes);
    while out.len() < bytes {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(bytes);
    out
}

/// One VDI round trip: create, import a pattern, export and compare, destroy.
pub fn transfer_once(t: &Target, client: u64, round: u64) -> Result<(), String> {
    let mut conn = Connection::new(t.port, Duration::from_secs(120));
    let size = t.transfer_bytes.to_string();
    let name = format!("soak-{client}-{round}");
    let create = xmlrpc_call(
        "VDI.create",
        &[
            Param::Str(&t.session),
            Param::Struct(&[
                ("SR", Param::Str(&t.sr)),
                ("name_label", Param::Str(&name)),
                ("name_description", Param::Str("")),
                ("virtual_size", Param::Str(&size)),
                ("type", Param::Str("user")),
                ("sharable", Param::Bool(false)),
                ("read_only", Param::Bool(false)),
                ("other_config", Param::Struct(&[])),
                ("xenstore_data", Param::Struct(&[])),
                ("sm_config", Param::Struct(&[])),
                ("tags", Param::Strings(&[])),
            ]),
        ],
    );
    let body = conn.rpc(&create, "VDI.create")?;
    let vdi = load::first_ref(&body).ok_or("VDI.create: no reference in the answer")?;
    let data = pattern(t.transfer_bytes, client, round);
    let query = format!("session_id={}&vdi={vdi}", t.session);
    let moved = (|| {
        let mut put = format!(
            "PUT /import_raw_vdi?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
            data.len()
        )
        .into_bytes();
        put.extend_from_slice(&data);
        let (status, _) = load::one_shot(t.port, &put, Duration::from_secs(120))
            .map_err(|e| format!("import: {e}"))?;
        if status != 200 {
            return Err(format!("import: HTTP {status}"));
        }
        let get = format!("GET /export_raw_vdi?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        let (status, back) = load::one_shot(t.port, get.as_bytes(), Duration::from_secs(120))
            .map_err(|e| format!("export: {e}"))?;
        if status != 200 {
            return Err(format!("export: HTTP {status}"));
        }
        if back != data {
            return Err(format!(
                "export: {} bytes that differ from the {} imported",
                back.len(),
                data.len()
            ));
        }
        Ok(())
    })();
    // The VDI goes whatever happened, so that failures do not fill the SR.
    let destroyed = conn
        .rpc(
            &xmlrpc_request("VDI.destroy", &[&t.session, &vdi]),
            "VDI.destroy",
        )
        .map(|_| ());
    moved.and(destroyed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_split_one_in_eight_and_small_runs_get_each_role() {
        let roles: Vec<Role> = (0..64).map(|i| Role::of(i, 64)).collect();
        let count = |r: Role| roles.iter().filter(|&&x| x == r).count();
        assert_eq!(
            (
                count(Role::EventWatch),
                count(Role::Transfer),
                count(Role::Calls)
            ),
            (8, 8, 48)
        );
        let small: Vec<Role> = (0..3).map(|i| Role::of(i, 3)).collect();
        assert_eq!(small, [Role::EventWatch, Role::Transfer, Role::Calls]);
        assert_eq!(Role::of(0, 1), Role::EventWatch);
    }

    #[test]
    fn patterns_differ_by_client_and_round_and_have_the_size() {
        let a = pattern(4099, 1, 0);
        assert_eq!(a.len(), 4099);
        assert_eq!(a, pattern(4099, 1, 0));
        assert_ne!(a, pattern(4099, 2, 0));
        assert_ne!(a, pattern(4099, 1, 1));
    }

    #[test]
    fn tallies_merge_and_keep_a_few_errors() {
        let mut all = Tally::default();
        for i in 0..4 {
            let mut t = Tally {
                clients: 1,
                ..Tally::default()
            };
            t.ok(Instant::now());
            t.error(format!("e{i}a"));
            t.error(format!("e{i}b"));
            all.merge(t);
        }
        assert_eq!((all.clients, all.operations, all.errors), (4, 12, 8));
        assert_eq!(all.first_errors.len(), KEPT_ERRORS);
        assert_eq!(all.latencies_ms.len(), 4);
    }

    #[test]
    fn a_call_client_against_a_local_server_counts_faults_as_errors() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::Read;
            for stream in listener.incoming() {
                let mut s = stream.unwrap();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    // Every connection closes after its third answer, saying so.
                    for answered in 1.. {
                        let n = s.read(&mut buf).unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]);
                        let body = if text.contains("pool.get_all_records") {
                            "<value>Failure</value>"
                        } else {
                            "<value>Success</value>"
                        };
                        let close = if answered == 3 {
                            "Connection: close\r\n"
                        } else {
                            ""
                        };
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\n{close}Content-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = s.write_all(answer.as_bytes());
                        if answered == 3 {
                            break;
                        }
                    }
                });
            }
        });
        let target = Target {
            port,
            session: "OpaqueRef:s".into(),
            host: "OpaqueRef:h".into(),
            metrics: "OpaqueRef:m".into(),
            sr: "OpaqueRef:sr".into(),
            transfer_bytes: 16,
            event_wait: Duration::from_secs(1),
            started: Instant::now(),
        };
        let tally = run_client(
            Role::Calls,
            0,
            &target,
            Instant::now() + Duration::from_millis(300),
        );
        assert!(tally.operations >= 8, "{tally:?}");
        // One call in eight is the failing one.
        assert!(
            tally.errors >= tally.operations / 8 - 1 && tally.errors <= tally.operations / 8 + 1,
            "{tally:?}"
        );
        // Connections the server closed (saying so) were replaced without an error.
        assert!(
            tally
                .first_errors
                .iter()
                .all(|e| e.contains(" s: pool.get_all_records: ")),
            "{tally:?}"
        );
    }

    #[test]
    fn a_connection_closed_while_idle_is_replaced_but_a_new_one_failing_is_an_error() {
        use std::io::Read;
        // Answers one request per connection, then closes without saying so (an idle timeout).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut s = stream.unwrap();
                let mut buf = [0u8; 4096];
                if s.read(&mut buf).unwrap_or(0) > 0 {
                    let body = "<value>Success</value>";
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(answer.as_bytes());
                }
            }
        });
        let mut conn = Connection::new(port, Duration::from_secs(5));
        for _ in 0..5 {
            assert_eq!(
                conn.rpc(b"POST / HTTP/1.1\r\n\r\n", "call").map(|_| ()),
                Ok(())
            );
        }

        // Nothing listens: the first attempt fails and is not retried.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_port = closed.local_addr().unwrap().port();
        drop(closed);
        let mut conn = Connection::new(dead_port, Duration::from_secs(5));
        assert!(conn.rpc(b"POST / HTTP/1.1\r\n\r\n", "call").is_err());
    }
}
