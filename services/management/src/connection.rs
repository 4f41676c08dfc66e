//! One management connection: a TCP socket, its HTTP state machine, and the request in
//! progress.

use alloc::format;
use alloc::vec::Vec;

use keel_http::{BodyKind, CloseKind, Connection, Event, Limits, Method, Request};
use keel_net::smoltcp::iface::{SocketHandle, SocketSet};
use keel_net::smoltcp::socket::tcp;
use keel_xenapi::{ApiError, Direction, Endpoint, Handled, PendingCall, Timestamp, XenApi};

use crate::{ServerConfig, Shared};

mod console;
mod metering;
mod transfer;

/// The request a connection is working on.
enum State {
    /// Between requests.
    Idle,
    /// Collecting an XML-RPC or JSON-RPC body; its capacity is charged to the budget.
    ApiBody { endpoint: Endpoint, body: Vec<u8> },
    /// A call waiting for an event or a deadline; `seen_event` is the event id it last saw.
    Parked { call: PendingCall, seen_event: u64 },
    /// An answer that may not go out before `until`: a failed login's delay (the XenAPI's
    /// throttle). The connection takes no further request meanwhile.
    Held {
        response: keel_xenapi::Response,
        until: Timestamp,
    },
    /// Answered at the head (an error for a request with a body, which is not read; the
    /// connection closes after the answer).
    Answered,
    /// A disk-data transfer (see `transfer.rs`): an import reading its body, or an export
    /// writing its response. `error` is the first failure of an import.
    Transfer {
        transfer: keel_xenapi::Transfer,
        error: Option<ApiError>,
    },
    /// A guest console request (see `console.rs`): accepted, then a `CONNECT` tunnel or a
    /// `GET` of the history.
    Console(console::ConsoleConn),
    /// A bodiless request whose answer goes out at its end, keeping the connection alive.
    Reply {
        status: u16,
        headers: &'static [(&'static str, &'static str)],
        body: Vec<u8>,
    },
}

const UNAVAILABLE_HEADERS: &[(&str, &str)] =
    &[("Content-Type", "text/plain"), ("Retry-After", "1")];
const UNAVAILABLE_BODY: &[u8] =
    b"Keel has no memory for this request now (too many requests in flight); retry later\n";

/// What an HTTP event asks of the connection, detached from the event's borrow.
enum Action {
    Head(Request),
    End,
    Error,
}

/// True once the peer has sent its FIN (not merely "cannot receive yet", as in SYN-RECEIVED).
fn peer_finished(state: tcp::State) -> bool {
    matches!(
        state,
        tcp::State::CloseWait
            | tcp::State::LastAck
            | tcp::State::Closing
            | tcp::State::TimeWait
            | tcp::State::Closed
    )
}

pub(crate) struct Conn {
    socket: SocketHandle,
    http: Connection,
    state: State,
    eof_delivered: bool,
    close_requested: bool,
}

impl Conn {
    pub(crate) fn new(socket: SocketHandle, limits: Limits) -> Self {
        Conn {
            socket,
            http: Connection::new(limits),
            state: State::Idle,
            eof_delivered: false,
            close_requested: false,
        }
    }

    pub(crate) fn socket(&self) -> SocketHandle {
        self.socket
    }

    /// True once the socket is closed (by either side) and nothing is left to do.
    pub(crate) fn is_finished(&self, sockets: &SocketSet<'static>) -> bool {
        matches!(
            sockets.get::<tcp::Socket>(self.socket).state(),
            tcp::State::Closed | tcp::State::TimeWait
        )
    }

    pub(crate) fn http_deadline(&mut self, mono_ms: u64) -> Option<u64> {
        self.http.poll_timeout(mono_ms)
    }

    /// Milliseconds until a parked call's deadline.
    pub(crate) fn wall_wake(&self, now: Timestamp) -> Option<u64> {
        match &self.state {
            State::Parked { call, .. } => call.wake_at().map(|t| t.ms_since(now)),
            State::Held { until, .. } => Some(until.ms_since(now)),
            _ => None,
        }
    }

    /// Services the connection until it makes no more progress. Returns true on progress.
    pub(crate) fn service(
        &mut self,
        sockets: &mut SocketSet<'static>,
        api: &mut XenApi,
        config: &ServerConfig,
        shared: &mut Shared<'_>,
        mono_ms: u64,
        now: Timestamp,
    ) -> bool {
        let socket = sockets.get_mut::<tcp::Socket>(self.socket);
        let mut activity = false;
        loop {
            let mut progressed = false;

            // Input.
            if socket.can_recv() {
                let http = &mut self.http;
                let taken = socket
                    .recv(|buf| {
                        let n = http.receive(mono_ms, buf);
                        (n, n)
                    })
                    .unwrap_or(0);
                progressed |= taken > 0;
            } else if peer_finished(socket.state()) && !self.eof_delivered {
                self.http.receive_eof(mono_ms);
                self.eof_delivered = true;
                progressed = true;
            }

            // Requests (none while an answer is held back).
            progressed |= self.release_held(now);
            while let Some(action) = self.next_action_unless_held(api, shared, now) {
                progressed = true;
                match action {
                    Action::Head(request) => self.on_head(&request, config, shared, api, now),
                    Action::End => self.on_end(api, shared, now),
                    // A transfer cut off by a bad or incomplete body fails its task.
                    Action::Error => self.abandon(api, now),
                }
            }

            // A parked call wakes when the event id moves or its deadline passes.
            progressed |= self.poll_parked(api, now);

            // Output (an export or a console first fills the window; a console also takes
            // its client's input).
            progressed |= self.pump_export(api, now);
            progressed |= self.pump_console(shared.consoles.as_deref_mut());
            while self.http.has_output() && socket.can_send() {
                match socket.send_slice(self.http.output()) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        self.http.consume_output(n);
                        progressed = true;
                    }
                }
            }

            if !progressed {
                break;
            }
            activity = true;
        }

        self.http.poll_timeout(mono_ms);
        if !self.close_requested && !self.http.has_output() {
            match self.http.should_close() {
                Some(CloseKind::Graceful) => {
                    socket.close();
                    self.close_requested = true;
                    activity = true;
                }
                Some(CloseKind::Abort) => {
                    socket.abort();
                    self.close_requested = true;
                    activity = true;
                }
                None => {}
            }
        }
        activity
    }

    fn next_action_unless_held(
        &mut self,
        api: &mut XenApi,
        shared: &mut Shared<'_>,
        now: Timestamp,
    ) -> Option<Action> {
        if matches!(self.state, State::Held { .. }) {
            return None;
        }
        self.next_action(api, shared, now)
    }

    /// Sends a held answer once its time has come.
    fn release_held(&mut self, now: Timestamp) -> bool {
        match &self.state {
            State::Held { until, .. } if *until <= now => {}
            _ => return false,
        }
        let State::Held { response, .. } = core::mem::replace(&mut self.state, State::Idle) else {
            return false;
        };
        self.respond(
            200,
            &[("Content-Type", response.content_type)],
            response.body,
        );
        true
    }

    /// The next HTTP event as an owned action; body chunks are consumed here.
    fn next_action(
        &mut self,
        api: &mut XenApi,
        shared: &mut Shared<'_>,
        now: Timestamp,
    ) -> Option<Action> {
        loop {
            match self.http.poll_event()? {
                Event::RequestHead(request) => return Some(Action::Head(request)),
                Event::BodyChunk(bytes) => match &mut self.state {
                    State::ApiBody { body, .. } => {
                        if shared.budget.grow(body, bytes.len()).is_ok() {
                            body.extend_from_slice(bytes);
                        } else {
                            // Out of memory for this body: answer 503 and close; the body's
                            // memory goes back at once and Keel carries on.
                            shared.budget.release(body.capacity());
                            shared.stats.refused_for_memory += 1;
                            self.state = State::Answered;
                            self.respond_unavailable();
                        }
                    }
                    state @ State::Transfer { .. } => {
                        Self::on_transfer_chunk(state, bytes, api, now)
                    }
                    _ => {}
                },
                Event::BodyEnd => return Some(Action::End),
                Event::Error(_) => return Some(Action::Error),
            }
        }
    }

    fn on_head(
        &mut self,
        request: &Request,
        config: &ServerConfig,
        shared: &mut Shared<'_>,
        api: &mut XenApi,
        now: Timestamp,
    ) {
        shared.stats.requests += 1;
        if console::is_console_path(&request.path) {
            self.on_console_head(request, api, shared.consoles.as_deref_mut());
            return;
        }
        if metering::is_metering_path(&request.path) {
            self.on_metering_head(request, api, shared.metering.as_deref_mut(), now);
            return;
        }
        if let Some(direction) = Direction::from_path(&request.path) {
            self.on_transfer_head(direction, request, api, now);
            return;
        }
        let endpoint = Endpoint::from_path(&request.path);
        let (status, headers, body): (u16, &'static [(&'static str, &'static str)], Vec<u8>) =
            match (&request.method, endpoint) {
                (Method::Post, Some(endpoint)) => {
                    // A declared length is reserved up front, so a body that cannot fit is
                    // refused before any of it is read.
                    let mut body = Vec::new();
                    let declared = match request.body {
                        BodyKind::Length(n) => usize::try_from(n).unwrap_or(usize::MAX),
                        _ => 0,
                    };
                    if declared as u64 <= config.max_api_body_bytes
                        && shared.budget.grow(&mut body, declared).is_err()
                    {
                        shared.stats.refused_for_memory += 1;
                        self.answer_ignoring_body(
                            request,
                            503,
                            UNAVAILABLE_HEADERS,
                            UNAVAILABLE_BODY.to_vec(),
                        );
                        return;
                    }
                    self.http.set_body_limit(config.max_api_body_bytes);
                    self.state = State::ApiBody { endpoint, body };
                    return;
                }
                (Method::Get | Method::Head, Some(Endpoint::XmlRpc)) if request.path == "/" => {
                    let page = format!(
                        "Keel {}: XenAPI over XML-RPC at POST / and POST /RPC2, JSON-RPC at POST /jsonrpc\n",
                        env!("CARGO_PKG_VERSION")
                    );
                    (
                        200,
                        &[("Content-Type", "text/plain; charset=utf-8")],
                        page.into_bytes(),
                    )
                }
                (_, Some(_)) => (
                    405,
                    &[("Allow", "POST"), ("Content-Type", "text/plain")],
                    b"use POST\n".to_vec(),
                ),
                (_, None) => (
                    404,
                    &[("Content-Type", "text/plain")],
                    b"not found\n".to_vec(),
                ),
            };
        self.answer_ignoring_body(request, status, headers, body);
    }

    /// Answers a request whose body is not wanted: at once when it has a body (the
    /// connection then closes), else at its end.
    fn answer_ignoring_body(
        &mut self,
        request: &Request,
        status: u16,
        headers: &'static [(&'static str, &'static str)],
        body: Vec<u8>,
    ) {
        if matches!(request.body, BodyKind::None | BodyKind::Length(0)) {
            self.state = State::Reply {
                status,
                headers,
                body,
            };
        } else {
            self.respond(status, headers, body);
            self.state = State::Answered;
        }
    }

    fn on_end(&mut self, api: &mut XenApi, shared: &mut Shared<'_>, now: Timestamp) {
        match core::mem::replace(&mut self.state, State::Idle) {
            State::ApiBody { endpoint, body } => {
                // Decoding takes heap in proportion to the body: charge it while the call runs,
                // so that no body the budget cannot pay for reaches the decoders.
                let decode = body.len().saturating_mul(crate::DECODE_BYTES_PER_BODY_BYTE);
                if shared.budget.reserve(decode).is_err() {
                    shared.budget.release(body.capacity());
                    shared.stats.refused_for_memory += 1;
                    self.state = State::Answered;
                    self.respond_unavailable();
                    return;
                }
                shared.stats.api_calls += 1;
                let handled = api.handle(endpoint, &body, now);
                shared.budget.release(decode + body.capacity());
                drop(body);
                self.deliver(handled, api, now);
            }
            State::Reply {
                status,
                headers,
                body,
            } => self.respond(status, headers, body),
            State::Transfer { transfer, error } => self.on_transfer_end(transfer, error, api, now),
            State::Console(console) => self.on_console_end(console),
            // Bodies of answered requests are dropped; Idle/Parked/Held cannot see a body end.
            other @ (State::Idle | State::Parked { .. } | State::Held { .. }) => self.state = other,
            State::Answered => {}
        }
    }

    fn poll_parked(&mut self, api: &mut XenApi, now: Timestamp) -> bool {
        let State::Parked { call, seen_event } = &self.state else {
            return false;
        };
        let due = call.wake_at().is_some_and(|t| t <= now);
        if !due && api.last_event_id() == *seen_event && !api.has_running_tasks() {
            return false;
        }
        let State::Parked { call, seen_event } = core::mem::replace(&mut self.state, State::Idle)
        else {
            return false;
        };
        let handled = api.poll(call, now);
        let progressed = matches!(handled, Handled::Ready(_)) || api.last_event_id() != seen_event;
        self.deliver(handled, api, now);
        progressed
    }

    fn deliver(&mut self, handled: Handled, api: &mut XenApi, now: Timestamp) {
        match handled {
            Handled::Ready(response) => match api.take_reply_hold() {
                Some(until) if until > now => self.state = State::Held { response, until },
                _ => {
                    self.respond(
                        200,
                        &[("Content-Type", response.content_type)],
                        response.body,
                    );
                    self.state = State::Idle;
                }
            },
            Handled::Pending(call) => {
                self.state = State::Parked {
                    call,
                    seen_event: api.last_event_id(),
                };
            }
        }
    }

    /// Gives back what this connection holds of the budget (a body being received).
    pub(crate) fn release_memory(&mut self, budget: &mut keel_net::MemoryBudget) {
        if let State::ApiBody { body, .. } = &mut self.state {
            budget.release(body.capacity());
            *body = Vec::new();
        }
    }

    /// `503` for a request the memory budget cannot hold; the connection closes after it.
    fn respond_unavailable(&mut self) {
        self.respond(503, UNAVAILABLE_HEADERS, UNAVAILABLE_BODY.to_vec());
        self.http.close_after_response();
    }

    fn respond(&mut self, status: u16, headers: &[(&str, &str)], body: Vec<u8>) {
        if let Err(e) = self.http.send_response(status, headers, body) {
            log::warn!("management: cannot send a {status} response: {e:?}");
            self.http.close_after_response();
        }
    }
}
