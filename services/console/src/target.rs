//! The console's HTTP address: the `location` the XenAPI publishes for a console, and the
//! parser for the request target a client sends to it (`CONNECT` or `GET`). See
//! docs/guests.md, "Console".

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Path of the console endpoint on the management port.
pub const CONSOLE_PATH: &str = "/console";
/// What the server writes after accepting a `CONNECT`; raw bytes follow.
pub const CONNECT_ACCEPTED: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n";
/// Longest decoded query value accepted (references, UUIDs and session ids are far shorter).
pub const MAX_VALUE_LEN: usize = 256;

/// Which console the client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleSelector {
    /// `ref=OpaqueRef:…` (the form of `location`).
    Ref(String),
    /// `uuid=…`.
    Uuid(String),
}

/// A parsed console request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleTarget {
    pub console: ConsoleSelector,
    /// `session_id=…`, when given in the query (it may also come as a cookie).
    pub session_id: Option<String>,
}

/// Why a request target is not a console request (answer `400`, or `404` for `NotConsole`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    /// The path is not [`CONSOLE_PATH`].
    NotConsole,
    /// Neither `ref` nor `uuid` (or both).
    NoConsoleNamed,
    /// A parameter given twice.
    Repeated,
    /// A bad `%` escape, a value that is not UTF-8, or one longer than [`MAX_VALUE_LEN`].
    BadValue,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes and `+` (a space, in form encoding).
fn decode(raw: &str) -> Result<String, TargetError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len().min(MAX_VALUE_LEN));
    let mut i = 0;
    while i < bytes.len() {
        let b = match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex);
                let lo = bytes.get(i + 2).copied().and_then(hex);
                i += 2;
                match (hi, lo) {
                    (Some(hi), Some(lo)) => hi << 4 | lo,
                    _ => return Err(TargetError::BadValue),
                }
            }
            b'+' => b' ',
            b => b,
        };
        if out.len() == MAX_VALUE_LEN {
            return Err(TargetError::BadValue);
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| TargetError::BadValue)
}

/// Parses `/console?ref=…&session_id=…` (or `uuid=…`). Other parameters are ignored.
pub fn parse_target(target: &str) -> Result<ConsoleTarget, TargetError> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != CONSOLE_PATH {
        return Err(TargetError::NotConsole);
    }
    let (mut by_ref, mut by_uuid, mut session_id) = (None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "ref" => &mut by_ref,
            "uuid" => &mut by_uuid,
            "session_id" => &mut session_id,
            _ => continue,
        };
        if slot.is_some() {
            return Err(TargetError::Repeated);
        }
        *slot = Some(decode(value)?);
    }
    let console = match (by_ref, by_uuid) {
        (Some(r), None) => ConsoleSelector::Ref(r),
        (None, Some(u)) => ConsoleSelector::Uuid(u),
        _ => return Err(TargetError::NoConsoleNamed),
    };
    Ok(ConsoleTarget {
        console,
        session_id,
    })
}

/// Percent-encodes everything but unreserved characters and `:` (kept so that references
/// read as xapi prints them: `ref=OpaqueRef:…`).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `location` of a console: `http://<host>/console?ref=<console ref>`. `host` is the
/// management address as clients reach it (with `:port` when not 80).
pub fn location(host: &str, console_ref: &str) -> String {
    format!("http://{host}{CONSOLE_PATH}?ref={}", encode(console_ref))
}

/// Why a console `location` cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocationError {
    /// Not `http://host[:port]/console?...` (Keel's management port speaks plain HTTP).
    NotHttp,
    /// No host, or a path other than the console's.
    Malformed,
}

/// Splits a console `location` into the address to connect to (`host[:port]`, port 80
/// when absent) and the request target (path and query).
pub fn split_location(location: &str) -> Result<(&str, &str), LocationError> {
    let rest = location
        .strip_prefix("http://")
        .ok_or(LocationError::NotHttp)?;
    let slash = rest.find('/').ok_or(LocationError::Malformed)?;
    let (host, target) = rest.split_at(slash);
    let path = target.split('?').next().unwrap_or(target);
    if host.is_empty() || path != CONSOLE_PATH {
        return Err(LocationError::Malformed);
    }
    Ok((host, target))
}

/// The request a client (e.g. `cargo xtask console`) sends to attach to the console at
/// `location` with XenAPI session `session_id`.
pub fn connect_request(location: &str, session_id: &str) -> Result<String, LocationError> {
    let (host, target) = split_location(location)?;
    let sep = if target.contains('?') { '&' } else { '?' };
    Ok(format!(
        "CONNECT {target}{sep}session_id={} HTTP/1.1\r\nHost: {host}\r\n\r\n",
        encode(session_id)
    ))
}

/// The server's answer to `CONNECT`, as far as it has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectResponse {
    /// The head has not fully arrived; read more.
    Incomplete,
    /// `200`: console bytes follow the first `head_len` bytes.
    Accepted { head_len: usize },
    /// Any other status (`401` bad session, `404` no such console or VM not running, ...).
    Refused { status: u16 },
    /// Not an HTTP response, or a head beyond 8 KiB.
    Malformed,
}

/// Reads the response head at the start of `buf`.
pub fn parse_connect_response(buf: &[u8]) -> ConnectResponse {
    const MAX_HEAD: usize = 8192;
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            ConnectResponse::Malformed
        } else {
            ConnectResponse::Incomplete
        };
    };
    let head_len = end + 4;
    if head_len > MAX_HEAD {
        return ConnectResponse::Malformed;
    }
    let status_line = buf.split(|b| *b == b'\r').next().unwrap_or(&[]);
    let mut parts = status_line.split(|b| *b == b' ');
    let version_ok = parts
        .next()
        .is_some_and(|v| v == b"HTTP/1.1" || v == b"HTTP/1.0");
    let status = parts
        .next()
        .filter(|code| code.len() == 3)
        .and_then(|code| core::str::from_utf8(code).ok())
        .and_then(|code| code.parse::<u16>().ok());
    match (version_ok, status) {
        (true, Some(200)) => ConnectResponse::Accepted { head_len },
        (true, Some(status)) => ConnectResponse::Refused { status },
        _ => ConnectResponse::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_location_parses_back() {
        let loc = location("192.0.2.7", "OpaqueRef:1b2c-3d");
        assert_eq!(loc, "http://192.0.2.7/console?ref=OpaqueRef:1b2c-3d");
        let target = &loc["http://192.0.2.7".len()..];
        let full = format!("{target}&session_id=OpaqueRef%3Aabc");
        assert_eq!(
            parse_target(&full),
            Ok(ConsoleTarget {
                console: ConsoleSelector::Ref("OpaqueRef:1b2c-3d".into()),
                session_id: Some("OpaqueRef:abc".into()),
            })
        );
        assert_eq!(location("h", "a b&c"), "http://h/console?ref=a%20b%26c");
        assert_eq!(
            parse_target("/console?ref=a%20b%26c").unwrap().console,
            ConsoleSelector::Ref("a b&c".into())
        );
    }

    #[test]
    fn uuid_and_unknown_parameters() {
        assert_eq!(
            parse_target("/console?x=1&uuid=5e0f&y"),
            Ok(ConsoleTarget {
                console: ConsoleSelector::Uuid("5e0f".into()),
                session_id: None,
            })
        );
    }

    #[test]
    fn malformed_targets_are_refused() {
        assert_eq!(
            parse_target("/consoles?ref=a"),
            Err(TargetError::NotConsole)
        );
        assert_eq!(parse_target("/"), Err(TargetError::NotConsole));
        assert_eq!(parse_target("/console"), Err(TargetError::NoConsoleNamed));
        assert_eq!(
            parse_target("/console?ref=a&uuid=b"),
            Err(TargetError::NoConsoleNamed)
        );
        assert_eq!(
            parse_target("/console?ref=a&ref=b"),
            Err(TargetError::Repeated)
        );
        for bad in ["%", "%4", "%zz", "%ff", &"a".repeat(MAX_VALUE_LEN + 1)] {
            assert_eq!(
                parse_target(&format!("/console?ref={bad}")),
                Err(TargetError::BadValue),
                "{bad}"
            );
        }
        assert!(parse_target(&format!("/console?ref={}", "a".repeat(MAX_VALUE_LEN))).is_ok());
    }

    #[test]
    fn a_client_attaches_with_what_the_server_parses() {
        let loc = location("192.0.2.7:8080", "OpaqueRef:c0");
        assert_eq!(
            split_location(&loc),
            Ok(("192.0.2.7:8080", "/console?ref=OpaqueRef:c0"))
        );
        let req = connect_request(&loc, "OpaqueRef:s e").unwrap();
        assert_eq!(
            req,
            "CONNECT /console?ref=OpaqueRef:c0&session_id=OpaqueRef:s%20e HTTP/1.1\r\n\
             Host: 192.0.2.7:8080\r\n\r\n"
        );
        let target = req.split(' ').nth(1).unwrap();
        let parsed = parse_target(target).unwrap();
        assert_eq!(parsed.console, ConsoleSelector::Ref("OpaqueRef:c0".into()));
        assert_eq!(parsed.session_id.as_deref(), Some("OpaqueRef:s e"));
        assert_eq!(
            connect_request("http://h/console", "s").unwrap(),
            "CONNECT /console?session_id=s HTTP/1.1\r\nHost: h\r\n\r\n"
        );
        for bad in [
            "https://h/console?ref=x",
            "http:///console",
            "http://h/other?ref=x",
            "http://h",
        ] {
            assert!(split_location(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn connect_responses() {
        let mut ok = CONNECT_ACCEPTED.to_vec();
        ok.extend_from_slice(b"login: ");
        assert_eq!(
            parse_connect_response(&ok),
            ConnectResponse::Accepted {
                head_len: CONNECT_ACCEPTED.len()
            }
        );
        assert_eq!(
            parse_connect_response(b"HTTP/1.1 200 OK\r\n"),
            ConnectResponse::Incomplete
        );
        assert_eq!(
            parse_connect_response(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
            ConnectResponse::Refused { status: 404 }
        );
        assert_eq!(
            parse_connect_response(b"SSH-2.0-OpenSSH\r\n\r\n"),
            ConnectResponse::Malformed
        );
        assert_eq!(
            parse_connect_response(b"HTTP/1.1 20 OK\r\n\r\n"),
            ConnectResponse::Malformed
        );
        assert_eq!(
            parse_connect_response(&[b'x'; 9000]),
            ConnectResponse::Malformed
        );
    }
}
