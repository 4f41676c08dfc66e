//! The console route of a connection: `CONNECT /console?ref=…&session_id=…` turns the
//! connection into a raw byte stream to and from a guest's console; `GET` on the same target
//! answers the retained history as `text/plain` and closes (docs/guests.md, "Console").
//!
//! Memory per console connection is the HTTP connection's bounded buffers (input buffer,
//! output window) and one small carry buffer for `GET`; a client that reads slowly only
//! falls behind in the console's history (keel-console's skip marker), never holds the
//! guest up, and one that stops reading is dropped by the send deadline.

use alloc::string::String;
use alloc::vec::Vec;

use keel_console::{parse_target, ConsoleSelector, ConsoleSession, TargetError, CONSOLE_PATH};
use keel_console::{DEFAULT_HISTORY_BYTES, SKIP_MARKER_MAX};
use keel_http::{BodyKind, Method, Request, ResponseBody};
use keel_xenapi::{ApiError, XenApi};

use super::{Conn, State};
use crate::console::ConsoleAccess;

/// Bytes moved between the console and the connection per step.
const STEP_BYTES: usize = 1024;

/// A console connection after its request head was accepted.
pub(crate) struct ConsoleConn {
    session: ConsoleSession,
    phase: Phase,
}

enum Phase {
    /// Accepted, waiting for the end of the (empty) request to answer it.
    Accepted { tunnel: bool },
    /// `CONNECT` answered: raw bytes both ways.
    Tunnel,
    /// `GET` answered: the history goes out as the body until the reader catches up or
    /// `left` bytes were sent (a guest writing without pause cannot make it endless).
    /// `carry` holds output read from the console that the window had no room for yet.
    Snapshot {
        left: usize,
        carry: Vec<u8>,
        carried: usize,
    },
}

/// Whether a request is for the console route.
pub(crate) fn is_console_path(path: &str) -> bool {
    path == CONSOLE_PATH
}

/// The HTTP answer to a console request that cannot be served.
struct Refusal {
    status: u16,
    text: &'static str,
}

const NOT_ENABLED: Refusal = Refusal {
    status: 404,
    text: "no guest consoles on this host\n",
};

fn refusal_for_target(error: TargetError) -> Refusal {
    match error {
        TargetError::NotConsole => Refusal {
            status: 404,
            text: "not found\n",
        },
        TargetError::NoConsoleNamed => Refusal {
            status: 400,
            text: "name the console with ref= or uuid=\n",
        },
        TargetError::Repeated => Refusal {
            status: 400,
            text: "a parameter is given twice\n",
        },
        TargetError::BadValue => Refusal {
            status: 400,
            text: "a parameter is badly encoded or too long\n",
        },
    }
}

fn refusal_for_api(error: &ApiError) -> Refusal {
    match error {
        ApiError::SessionInvalid { .. } => Refusal {
            status: 401,
            text: "SESSION_INVALID: log in and pass session_id\n",
        },
        ApiError::VmBadPowerState { .. } => Refusal {
            status: 404,
            text: "the console's VM is not running\n",
        },
        _ => Refusal {
            status: 404,
            text: "no such console\n",
        },
    }
}

/// `session_id` from a `Cookie` header (`a=b; session_id=OpaqueRef:…`), as xapi accepts it.
fn session_cookie(request: &Request) -> Option<String> {
    let cookies = request.header_str("cookie")?;
    cookies.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == "session_id").then(|| String::from(value))
    })
}

/// Checks a console request: method, target, session, console, running domain. Returns the
/// session on the console and whether it is a `CONNECT`.
fn accept(
    request: &Request,
    api: &XenApi,
    consoles: Option<&mut (dyn ConsoleAccess + 'static)>,
) -> Result<ConsoleConn, Refusal> {
    let tunnel = match &request.method {
        Method::Other(m) if m == "CONNECT" => true,
        Method::Get | Method::Head => false,
        _ => {
            return Err(Refusal {
                status: 405,
                text: "use CONNECT (a raw stream) or GET (the history)\n",
            })
        }
    };
    let target = match &request.query {
        Some(query) => alloc::format!("{}?{query}", request.path),
        None => request.path.clone(),
    };
    let parsed = parse_target(&target).map_err(refusal_for_target)?;
    let session_id = parsed
        .session_id
        .or_else(|| session_cookie(request))
        .unwrap_or_default();
    let console = match &parsed.console {
        ConsoleSelector::Ref(r) => r,
        ConsoleSelector::Uuid(u) => u,
    };
    let domid = api
        .console_domain(&session_id, console)
        .map_err(|e| refusal_for_api(&e))?;
    let consoles = consoles.ok_or(NOT_ENABLED)?;
    let session = u16::try_from(domid)
        .ok()
        .and_then(|domid| consoles.open(domid).ok())
        .ok_or(Refusal {
            status: 404,
            text: "the console's VM has no console attached\n",
        })?;
    if !matches!(request.body, BodyKind::None | BodyKind::Length(0)) {
        return Err(Refusal {
            status: 400,
            text: "a console request has no body\n",
        });
    }
    Ok(ConsoleConn {
        session,
        phase: Phase::Accepted { tunnel },
    })
}

impl Conn {
    /// A request head on the console path: accept it (answered at the request's end) or
    /// refuse it (the connection closes after the refusal).
    pub(super) fn on_console_head(
        &mut self,
        request: &Request,
        api: &XenApi,
        consoles: Option<&mut (dyn ConsoleAccess + 'static)>,
    ) {
        match accept(request, api, consoles) {
            Ok(console) => self.state = State::Console(console),
            Err(refusal) => {
                self.http.close_after_response();
                let allow: &'static [(&'static str, &'static str)] = if refusal.status == 405 {
                    &[("Allow", "CONNECT, GET"), ("Content-Type", "text/plain")]
                } else {
                    &[("Content-Type", "text/plain")]
                };
                self.answer_ignoring_body(
                    request,
                    refusal.status,
                    allow,
                    refusal.text.as_bytes().to_vec(),
                );
            }
        }
    }

    /// The console request's end: answer `200` and start streaming.
    pub(super) fn on_console_end(&mut self, mut console: ConsoleConn) {
        let Phase::Accepted { tunnel } = console.phase else {
            return;
        };
        let started = if tunnel {
            console.phase = Phase::Tunnel;
            self.http.start_tunnel(200, &[])
        } else {
            self.http.close_after_response();
            console.phase = Phase::Snapshot {
                left: DEFAULT_HISTORY_BYTES + SKIP_MARKER_MAX,
                carry: Vec::new(),
                carried: 0,
            };
            self.http.start_response(
                200,
                &[("Content-Type", "text/plain; charset=utf-8")],
                ResponseBody::Chunked,
            )
        };
        match started {
            Ok(()) => self.state = State::Console(console),
            Err(e) => {
                log::warn!("management: cannot answer a console request: {e:?}");
                self.http.close_after_response();
            }
        }
    }

    /// Moves console bytes: client input to the guest, guest output to the client. Returns
    /// true on progress.
    pub(super) fn pump_console(
        &mut self,
        consoles: Option<&mut (dyn ConsoleAccess + 'static)>,
    ) -> bool {
        let State::Console(console) = &mut self.state else {
            return false;
        };
        let Some(consoles) = consoles else {
            return false;
        };
        match &mut console.phase {
            Phase::Accepted { .. } => false,
            Phase::Tunnel => {
                let (progressed, ended) = pump_tunnel(&mut self.http, consoles, console);
                if ended {
                    self.http.end_tunnel();
                    self.state = State::Answered;
                }
                progressed || ended
            }
            Phase::Snapshot {
                left,
                carry,
                carried,
            } => {
                let (progressed, done) = pump_snapshot(
                    &mut self.http,
                    consoles,
                    &mut console.session,
                    left,
                    carry,
                    carried,
                );
                if done {
                    if let Err(e) = self.http.finish_response() {
                        log::warn!("management: console history cut short: {e:?}");
                    }
                    self.state = State::Answered;
                }
                progressed || done
            }
        }
    }
}

/// One round of a tunnel. Returns (progress, the tunnel must end).
fn pump_tunnel(
    http: &mut keel_http::Connection,
    consoles: &mut dyn ConsoleAccess,
    console: &mut ConsoleConn,
) -> (bool, bool) {
    let mut progressed = false;
    // Input: what the console's queue takes; the rest waits in the connection's input
    // buffer, and past that in the socket (TCP backpressure on the typist).
    let pending = http.tunnel_input();
    if !pending.is_empty() {
        match consoles.input(&console.session, pending) {
            Ok(0) if http.peer_closed() => return (progressed, true),
            Ok(n) => {
                http.consume_tunnel_input(n);
                progressed |= n > 0;
            }
            Err(_) => return (progressed, true),
        }
    }
    // Output: only as much as the window has room for, so nothing read is lost.
    let mut buf = [0u8; STEP_BYTES];
    loop {
        let room = http.tunnel_output_room().min(STEP_BYTES);
        if room == 0 || !consoles.has_output(&console.session) {
            return (progressed, false);
        }
        let Some(window) = buf.get_mut(..room) else {
            return (progressed, false);
        };
        match consoles.output(&mut console.session, window) {
            Ok(0) => return (progressed, false),
            Ok(n) => {
                let bytes = window.get(..n).unwrap_or_default();
                if !matches!(http.write_tunnel(bytes), Ok(written) if written == n) {
                    return (progressed, true);
                }
                progressed = true;
            }
            // The domain was destroyed: what is queued goes out, then the close.
            Err(_) => return (progressed, true),
        }
    }
}

/// One round of a `GET` snapshot. Returns (progress, the body is complete).
fn pump_snapshot(
    http: &mut keel_http::Connection,
    consoles: &mut dyn ConsoleAccess,
    session: &mut ConsoleSession,
    left: &mut usize,
    carry: &mut Vec<u8>,
    carried: &mut usize,
) -> (bool, bool) {
    let mut progressed = false;
    loop {
        // First what was read and not yet taken.
        if *carried < carry.len() {
            match http.write_body(carry.get(*carried..).unwrap_or_default()) {
                Ok(0) => return (progressed, false),
                Ok(n) => {
                    *carried += n;
                    progressed = true;
                    continue;
                }
                Err(_) => return (progressed, true),
            }
        }
        if *left == 0 || !consoles.has_output(session) {
            return (progressed, true);
        }
        if carry.capacity() == 0 && carry.try_reserve_exact(STEP_BYTES).is_err() {
            return (progressed, true);
        }
        carry.resize(STEP_BYTES.min(*left), 0);
        *carried = 0;
        match consoles.output(session, carry) {
            Ok(0) | Err(_) => {
                carry.clear();
                return (progressed, true);
            }
            Ok(n) => {
                carry.truncate(n);
                *left = left.saturating_sub(n);
                progressed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests;
