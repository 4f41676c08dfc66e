//! The per-connection state machine: bytes in, events out, responses in, bytes out.
//!
//! Reading and writing are two phases that move in step. The read side delivers one request
//! (head, body chunks, end) and then waits; the write side takes that request's response and,
//! when it is complete, lets the read side go on to the next request already buffered
//! (pipelining) or closes. Deadlines apply only while the connection waits for its peer, never
//! while it waits for the handler.

use alloc::vec::Vec;

use crate::buffer::ByteQueue;
use crate::chunked::ChunkedDecoder;
use crate::error::{HttpError, ResponseError};
use crate::head::{parse_head, HeadParse};
use crate::limits::Limits;
use crate::request::{BodyKind, Method, Request, Version};
use crate::response::{
    build_head, build_tunnel_head, error_response, hex_len, push_hex, HeadContext, OutFraming,
    ResponseBody, CONTINUE, LAST_CHUNK,
};

/// Something the handler must act on, from [`Connection::poll_event`].
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A new request. Its body follows as `BodyChunk`s and always ends with `BodyEnd` (also
    /// for requests without a body). Before asking for the body the handler may raise the
    /// body limit with [`Connection::set_body_limit`].
    RequestHead(Request),
    /// The next piece of the decoded body. It borrows the connection's input buffer: copy or
    /// process it before calling the connection again.
    BodyChunk(&'a [u8]),
    /// The body is complete; the request now awaits its response.
    BodyEnd,
    /// The request failed (or a request head could not be read). The connection has already
    /// queued the error response when no response had been started, and closes after its
    /// output drains; the handler drops whatever it kept for the request.
    Error(HttpError),
}

/// How the glue should end the TCP connection, from [`Connection::should_close`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseKind {
    /// All output was sent: close normally (FIN).
    Graceful,
    /// The peer stopped reading: drop the connection without waiting (RST).
    Abort,
}

#[derive(Debug)]
enum BodyDecoder {
    Length { remaining: u64 },
    Chunked(ChunkedDecoder),
}

#[derive(Debug)]
enum ReadPhase {
    /// Waiting for, or parsing, the next request head.
    Head,
    /// The head was delivered and the body is being read. `started` turns true when the
    /// handler first asks for the body, which is when limits are checked and 100-continue sent.
    Body { decoder: BodyDecoder, started: bool },
    /// The whole request was delivered.
    Done,
    /// The request failed; nothing more is read.
    Failed,
    /// A tunnel was accepted: the input is raw bytes for the handler
    /// ([`Connection::tunnel_input`]), no longer HTTP.
    Tunnel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WritePhase {
    /// No request awaits a response.
    NoRequest,
    /// A request was delivered; its response has not started.
    Pending,
    /// The head was written; body bytes come through `write_body`. `discard` drops them
    /// (responses to HEAD).
    Body { framing: OutFraming, discard: bool },
    /// The body is the owned buffer, being moved into the output window as it drains.
    Owned,
    /// The response is complete (or was cut short by an error).
    Complete,
    /// A tunnel was accepted: the output is raw bytes from [`Connection::write_tunnel`].
    Tunnel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WaitKind {
    /// Between requests.
    Idle,
    /// Inside a request head.
    Head,
    /// For body bytes the handler asked for.
    Body,
}

/// A deadline being tracked: `since` is when the wait of `kind` began, in the phase numbered
/// `epoch` (a new phase restarts the clock even when the kind is the same).
#[derive(Clone, Copy, Debug)]
struct Wait {
    kind: WaitKind,
    epoch: u64,
    since: u64,
}

/// The state of one HTTP/1.1 connection, independent of any socket.
#[derive(Debug)]
pub struct Connection {
    limits: Limits,
    input: ByteQueue,
    output: ByteQueue,
    owned_body: Vec<u8>,
    owned_sent: usize,
    read: ReadPhase,
    write: WritePhase,
    /// Buffered head bytes already searched for a line end.
    head_scanned: usize,
    pending_error: Option<HttpError>,
    /// No more requests will be read; close once the output drains.
    closing: bool,
    /// Output was dropped; close at once.
    aborted: bool,
    /// The peer closed its sending side.
    peer_eof: bool,
    /// The body decoder consumed everything buffered and waits for the peer.
    needs_input: bool,
    // Facts about the current request.
    keep_alive: bool,
    head_request: bool,
    peer_is_http10: bool,
    expect_continue: bool,
    body_limit: u64,
    close_requested: bool,
    response_closes: bool,
    // Deadlines.
    epoch: u64,
    wait: Option<Wait>,
    send_since: Option<u64>,
}

/// Extra output room beyond the body window: response heads, chunk framing, interim and
/// error responses are always accepted whole.
const OUTPUT_SLACK: usize = 256;

impl Connection {
    /// A connection that has not received anything yet; it holds no buffers until it does.
    pub fn new(limits: Limits) -> Self {
        Connection {
            body_limit: limits.max_body_bytes,
            limits,
            input: ByteQueue::default(),
            output: ByteQueue::default(),
            owned_body: Vec::new(),
            owned_sent: 0,
            read: ReadPhase::Head,
            write: WritePhase::NoRequest,
            head_scanned: 0,
            pending_error: None,
            closing: false,
            aborted: false,
            peer_eof: false,
            needs_input: false,
            keep_alive: false,
            head_request: false,
            peer_is_http10: false,
            expect_continue: false,
            close_requested: false,
            response_closes: false,
            epoch: 0,
            wait: None,
            send_since: None,
        }
    }

    /// The limits this connection was made with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    // ----- input -----

    /// Takes bytes read from the socket at time `now_ms`; returns how many it took. It takes
    /// fewer (possibly none) when its input buffer is full: the rest stays in the socket until
    /// the handler has consumed what is buffered. Once the connection is closing it takes and
    /// drops everything.
    pub fn receive(&mut self, now_ms: u64, bytes: &[u8]) -> usize {
        if self.closing || self.aborted {
            return bytes.len();
        }
        let taken = self
            .input
            .append_bounded(bytes, self.limits.input_capacity());
        if taken > 0 {
            self.needs_input = false;
            if matches!(self.read, ReadPhase::Body { .. }) {
                // Body progress restarts the body deadline.
                self.epoch += 1;
            }
        }
        self.refresh_waits(now_ms);
        taken
    }

    /// The peer closed its sending side. Requests already buffered are still served; a
    /// request cut short gets no more bytes.
    pub fn receive_eof(&mut self, now_ms: u64) {
        self.peer_eof = true;
        if matches!(self.read, ReadPhase::Body { .. }) && self.needs_input {
            self.fail(HttpError::IncompleteBody);
        }
        self.refresh_waits(now_ms);
    }

    /// The next event for the handler, if any. Call it until it returns `None` after every
    /// `receive`, `receive_eof`, `poll_timeout`, `consume_output` and response completion:
    /// the next pipelined request is only looked at once the previous response is complete
    /// and the output window is not full.
    pub fn poll_event(&mut self) -> Option<Event<'_>> {
        self.poll_event_limited(usize::MAX)
    }

    /// Like [`Connection::poll_event`], with body chunks no longer than `max_chunk` bytes
    /// (for a handler that can take only so much at a time).
    pub fn poll_event_limited(&mut self, max_chunk: usize) -> Option<Event<'_>> {
        if let Some(error) = self.pending_error.take() {
            return Some(Event::Error(error));
        }
        if self.closing || self.aborted {
            return None;
        }
        match self.read {
            // A pipelined request waits while earlier output fills the window, or a peer that
            // sends requests but never reads answers could grow the output without bound.
            ReadPhase::Head if self.output.len() >= self.limits.output_window() => None,
            ReadPhase::Head if self.write == WritePhase::NoRequest => self.poll_head(),
            ReadPhase::Body { .. } => self.poll_body(max_chunk.max(1)),
            _ => None,
        }
    }

    fn poll_head(&mut self) -> Option<Event<'_>> {
        let buffered = self.input.data();
        if buffered.is_empty() {
            if self.peer_eof {
                self.closing = true;
            }
            return None;
        }
        // Parsing again is only worth it once a line has ended (or the head hit its limit,
        // or no more bytes will come): this keeps byte-at-a-time delivery linear.
        let new_bytes = buffered.get(self.head_scanned..).unwrap_or(&[]);
        let worth_parsing = new_bytes.contains(&b'\n')
            || buffered.len() >= self.limits.max_head_bytes
            || self.peer_eof;
        self.head_scanned = buffered.len();
        if !worth_parsing {
            return None;
        }
        match parse_head(buffered, &self.limits) {
            HeadParse::Complete { request, len } => {
                self.input.consume(len);
                self.begin_request(&request);
                Some(Event::RequestHead(request))
            }
            HeadParse::Partial => {
                if self.peer_eof {
                    // The peer went away inside a head: nobody is left to answer.
                    self.closing = true;
                    self.input.clear();
                }
                None
            }
            HeadParse::Invalid(error) => {
                self.fail(error);
                self.pending_error.take().map(Event::Error)
            }
        }
    }

    fn begin_request(&mut self, request: &Request) {
        self.head_scanned = 0;
        self.keep_alive = request.keep_alive;
        self.head_request = request.method == Method::Head;
        self.peer_is_http10 = request.version == Version::Http10;
        self.expect_continue = request.expect_continue;
        self.body_limit = self.limits.max_body_bytes;
        self.close_requested = false;
        self.response_closes = false;
        self.needs_input = false;
        let decoder = match request.body {
            BodyKind::None => BodyDecoder::Length { remaining: 0 },
            BodyKind::Length(length) => BodyDecoder::Length { remaining: length },
            BodyKind::Chunked => BodyDecoder::Chunked(ChunkedDecoder::new()),
        };
        self.read = ReadPhase::Body {
            decoder,
            started: false,
        };
        self.write = WritePhase::Pending;
        self.epoch += 1;
    }

    fn poll_body(&mut self, max_chunk: usize) -> Option<Event<'_>> {
        let ReadPhase::Body { decoder, started } = &mut self.read else {
            return None;
        };
        if !*started {
            *started = true;
            let (too_large, has_body) = match decoder {
                BodyDecoder::Length { remaining } => (*remaining > self.body_limit, *remaining > 0),
                BodyDecoder::Chunked(_) => (false, true),
            };
            if too_large {
                return self.fail_event(HttpError::PayloadTooLarge);
            }
            if self.expect_continue && has_body && self.write == WritePhase::Pending {
                self.output.append(CONTINUE, self.output_reserve());
            }
            self.expect_continue = false;
        }

        let ReadPhase::Body { decoder, .. } = &mut self.read else {
            return None;
        };
        let (framing, data, finished) = match decoder {
            BodyDecoder::Length { remaining } => {
                let data = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(self.input.len())
                    .min(max_chunk);
                *remaining -= data as u64;
                (0, data, *remaining == 0)
            }
            BodyDecoder::Chunked(chunked) => {
                match chunked.advance(self.input.data(), &self.limits, self.body_limit, max_chunk) {
                    Ok(progress) => (progress.framing, progress.data, progress.finished),
                    Err(error) => return self.fail_event(error),
                }
            }
        };
        if data > 0 {
            // The end of the body is reported on the next poll, after this chunk.
            self.input.consume(framing);
            self.needs_input = false;
            return Some(Event::BodyChunk(self.input.take(data)));
        }
        self.input.consume(framing);
        if finished {
            self.read = ReadPhase::Done;
            self.needs_input = false;
            self.epoch += 1;
            return Some(Event::BodyEnd);
        }
        self.needs_input = true;
        if self.peer_eof {
            return self.fail_event(HttpError::IncompleteBody);
        }
        None
    }

    /// Raises (or lowers) the body limit of the current request, for routes that stream large
    /// bodies. Takes effect for a Content-Length body if called before the first body poll
    /// after `RequestHead`, and for the rest of a chunked body whenever it is called.
    pub fn set_body_limit(&mut self, max_body_bytes: u64) {
        self.body_limit = max_body_bytes;
    }

    // ----- response -----

    /// Starts the response to the current request: writes the status line, `headers`, and
    /// the framing header fields that `body` implies. Content-Length, Transfer-Encoding and
    /// Connection are the connection's to write. Every started response must end with
    /// [`Connection::finish_response`].
    pub fn start_response(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: ResponseBody,
    ) -> Result<(), ResponseError> {
        match self.write {
            _ if self.aborted => return Err(ResponseError::ConnectionClosed),
            WritePhase::Pending => {}
            WritePhase::NoRequest if self.closing => return Err(ResponseError::ConnectionClosed),
            WritePhase::NoRequest => return Err(ResponseError::NoActiveRequest),
            WritePhase::Complete if self.closing => return Err(ResponseError::ConnectionClosed),
            WritePhase::Body { .. }
            | WritePhase::Owned
            | WritePhase::Complete
            | WritePhase::Tunnel => return Err(ResponseError::AlreadyStarted),
        }
        // A request whose body was not read to its end leaves the stream position unknown.
        let close = !self.keep_alive
            || self.close_requested
            || self.peer_eof
            || !matches!(self.read, ReadPhase::Done);
        let context = HeadContext {
            close,
            peer_is_http10: self.peer_is_http10,
            max_head_bytes: self.limits.max_response_head_bytes,
        };
        let (head, framing) = build_head(status, headers, body, &context)?;
        self.output.append(&head, self.output_reserve());
        self.response_closes = close || framing == OutFraming::UntilClose;
        self.write = WritePhase::Body {
            framing,
            discard: self.head_request,
        };
        Ok(())
    }

    /// Sends a whole response whose body the handler already holds: the connection keeps
    /// `body` and moves it into the output window as the peer takes it. The response is
    /// complete when this returns (no `finish_response`).
    pub fn send_response(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(), ResponseError> {
        let framing = if body.is_empty() {
            ResponseBody::Empty
        } else {
            ResponseBody::Length(body.len() as u64)
        };
        self.start_response(status, headers, framing)?;
        if body.is_empty() || self.head_request {
            return self.finish_response();
        }
        self.owned_body = body;
        self.owned_sent = 0;
        self.write = WritePhase::Owned;
        self.refill_output();
        Ok(())
    }

    /// Writes as much of `data` as the output window has room for and returns how much that
    /// was; 0 means the window is full until the glue drains [`Connection::output`].
    pub fn write_body(&mut self, data: &[u8]) -> Result<usize, ResponseError> {
        let (framing, discard) = self.writable()?;
        if data.is_empty() {
            return Ok(0);
        }
        if let OutFraming::Length { remaining } = framing {
            if data.len() as u64 > remaining {
                return Err(ResponseError::BodyOverrun);
            }
        }
        let free = self
            .limits
            .output_window()
            .saturating_sub(self.output.len());
        let accepted = match framing {
            _ if discard => data.len(),
            OutFraming::Length { .. } | OutFraming::UntilClose => {
                let accepted = data.len().min(free);
                let bytes = data.get(..accepted).unwrap_or(&[]);
                self.output.append(bytes, self.output_reserve());
                accepted
            }
            OutFraming::Chunked => {
                // Each write is one chunk: hex size, CRLF, data, CRLF.
                let room = free.saturating_sub(4 + hex_len(free));
                let accepted = data.len().min(room);
                if accepted > 0 {
                    let bytes = data.get(..accepted).unwrap_or(&[]);
                    let framed = accepted + 4 + hex_len(accepted);
                    let reserve = self.output_reserve();
                    self.output.append_with(framed, reserve, |out| {
                        push_hex(out, accepted);
                        out.extend_from_slice(b"\r\n");
                        out.extend_from_slice(bytes);
                        out.extend_from_slice(b"\r\n");
                    });
                }
                accepted
            }
        };
        if let OutFraming::Length { remaining } = framing {
            self.write = WritePhase::Body {
                framing: OutFraming::Length {
                    remaining: remaining - accepted as u64,
                },
                discard,
            };
        }
        Ok(accepted)
    }

    /// Ends the response. A Content-Length response finished short is an error and closes the
    /// connection after what was written (the peer cannot find the end of the message).
    pub fn finish_response(&mut self) -> Result<(), ResponseError> {
        let (framing, discard) = self.writable()?;
        let mut result = Ok(());
        match framing {
            _ if discard => {}
            OutFraming::Length { remaining } if remaining > 0 => {
                self.response_closes = true;
                result = Err(ResponseError::BodyIncomplete);
            }
            OutFraming::Length { .. } => {}
            OutFraming::Chunked => self.output.append(LAST_CHUNK, self.output_reserve()),
            OutFraming::UntilClose => self.response_closes = true,
        }
        self.write = WritePhase::Complete;
        self.response_complete();
        result
    }

    /// Closes the connection after the current response instead of keeping it alive (sends
    /// `Connection: close` if the response has not started yet).
    pub fn close_after_response(&mut self) {
        self.close_requested = true;
        if self.write == WritePhase::NoRequest {
            self.closing = true;
        }
    }

    fn writable(&self) -> Result<(OutFraming, bool), ResponseError> {
        match self.write {
            _ if self.aborted => Err(ResponseError::ConnectionClosed),
            WritePhase::Body { framing, discard } => Ok((framing, discard)),
            _ if self.closing => Err(ResponseError::ConnectionClosed),
            WritePhase::NoRequest => Err(ResponseError::NoActiveRequest),
            WritePhase::Pending => Err(ResponseError::NotStarted),
            WritePhase::Owned | WritePhase::Complete | WritePhase::Tunnel => {
                Err(ResponseError::AlreadyFinished)
            }
        }
    }

    fn output_reserve(&self) -> usize {
        self.limits.output_window() + self.limits.max_response_head_bytes + OUTPUT_SLACK
    }

    /// Moves as much of an owned response body into the output window as fits.
    fn refill_output(&mut self) {
        if self.write != WritePhase::Owned {
            return;
        }
        let free = self
            .limits
            .output_window()
            .saturating_sub(self.output.len());
        let rest = self.owned_body.get(self.owned_sent..).unwrap_or(&[]);
        let count = rest.len().min(free);
        if count > 0 {
            let reserve = self.output_reserve();
            self.output
                .append(rest.get(..count).unwrap_or(&[]), reserve);
            self.owned_sent += count;
        }
        if self.owned_sent >= self.owned_body.len() {
            self.owned_body = Vec::new();
            self.owned_sent = 0;
            self.write = WritePhase::Complete;
            self.response_complete();
        }
    }

    /// The current response is done: go on to the next request, or close.
    fn response_complete(&mut self) {
        self.epoch += 1;
        let reusable = !self.response_closes
            && !self.close_requested
            && !self.closing
            && !self.aborted
            && matches!(self.read, ReadPhase::Done);
        if reusable {
            self.read = ReadPhase::Head;
            self.write = WritePhase::NoRequest;
            self.head_scanned = 0;
        } else {
            self.start_closing();
        }
        self.release_idle_buffers();
    }

    // ----- tunnel -----

    /// Accepts the current request (typically `CONNECT`) as a tunnel: writes a `2xx` head
    /// with `headers` and no framing fields, after which the connection carries raw bytes in
    /// both directions until either side ends it. Input already buffered behind the request
    /// head is the tunnel's first input. The request must have been read to its end
    /// (`BodyEnd`). From then on no events are produced; the handler moves bytes with
    /// [`Connection::tunnel_input`], [`Connection::consume_tunnel_input`] and
    /// [`Connection::write_tunnel`], and ends the tunnel with [`Connection::end_tunnel`]. The
    /// buffers stay bounded by [`Limits`]; idle, head and body deadlines no longer apply,
    /// the send deadline (a peer that stops taking output) still does.
    pub fn start_tunnel(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
    ) -> Result<(), ResponseError> {
        match self.write {
            _ if self.aborted || self.closing => return Err(ResponseError::ConnectionClosed),
            WritePhase::Pending => {}
            WritePhase::NoRequest => return Err(ResponseError::NoActiveRequest),
            WritePhase::Body { .. }
            | WritePhase::Owned
            | WritePhase::Complete
            | WritePhase::Tunnel => return Err(ResponseError::AlreadyStarted),
        }
        if !matches!(self.read, ReadPhase::Done) {
            // The request's own body would run into the tunnel's bytes.
            return Err(ResponseError::NotStarted);
        }
        let head = build_tunnel_head(status, headers, self.limits.max_response_head_bytes)?;
        self.output.append(&head, self.output_reserve());
        self.read = ReadPhase::Tunnel;
        self.write = WritePhase::Tunnel;
        self.epoch += 1;
        Ok(())
    }

    /// Whether the connection is a tunnel ([`Connection::start_tunnel`]).
    pub fn is_tunnel(&self) -> bool {
        self.write == WritePhase::Tunnel
    }

    /// Raw bytes received from the peer and not yet consumed (empty unless a tunnel).
    pub fn tunnel_input(&self) -> &[u8] {
        if matches!(self.read, ReadPhase::Tunnel) && !self.closing {
            self.input.data()
        } else {
            &[]
        }
    }

    /// Marks the first `count` bytes of [`Connection::tunnel_input`] as delivered; the
    /// connection then takes as many more from the socket.
    pub fn consume_tunnel_input(&mut self, count: usize) {
        if matches!(self.read, ReadPhase::Tunnel) {
            self.input.consume(count.min(self.input.len()));
        }
    }

    /// Whether the peer closed its sending side (the tunnel input ends with what is
    /// buffered).
    pub fn peer_closed(&self) -> bool {
        self.peer_eof
    }

    /// Room in the output window for tunnel bytes now.
    pub fn tunnel_output_room(&self) -> usize {
        if self.write != WritePhase::Tunnel || self.closing || self.aborted {
            return 0;
        }
        self.limits
            .output_window()
            .saturating_sub(self.output.len())
    }

    /// Queues as much of `data` as the output window has room for, unframed, and returns
    /// how much that was; 0 means the window is full until the glue drains
    /// [`Connection::output`].
    pub fn write_tunnel(&mut self, data: &[u8]) -> Result<usize, ResponseError> {
        if self.aborted || self.closing {
            return Err(ResponseError::ConnectionClosed);
        }
        if self.write != WritePhase::Tunnel {
            return Err(ResponseError::NotStarted);
        }
        let accepted = data.len().min(self.tunnel_output_room());
        if accepted > 0 {
            let reserve = self.output_reserve();
            self.output
                .append(data.get(..accepted).unwrap_or(&[]), reserve);
        }
        Ok(accepted)
    }

    /// Ends the tunnel: what is queued is still sent, unread input is dropped, then
    /// [`Connection::should_close`] says `Graceful`.
    pub fn end_tunnel(&mut self) {
        if self.write == WritePhase::Tunnel {
            self.start_closing();
        }
    }

    // ----- output -----

    /// The bytes waiting to be sent, oldest first.
    pub fn output(&self) -> &[u8] {
        self.output.data()
    }

    /// Marks the first `count` bytes of [`Connection::output`] as sent.
    pub fn consume_output(&mut self, count: usize) {
        if count == 0 {
            return;
        }
        self.output.consume(count);
        self.send_since = None;
        self.refill_output();
        self.release_idle_buffers();
    }

    /// Copies pending output into `destination`, marks it sent, and returns how much.
    pub fn take_output(&mut self, destination: &mut [u8]) -> usize {
        let count = destination.len().min(self.output.len());
        if let (Some(target), Some(source)) = (
            destination.get_mut(..count),
            self.output.data().get(..count),
        ) {
            target.copy_from_slice(source);
        }
        self.consume_output(count);
        count
    }

    /// Whether output is waiting (or an owned body still has to be moved into the window).
    pub fn has_output(&self) -> bool {
        !self.output.is_empty() || self.write == WritePhase::Owned
    }

    /// `Some` once the glue should close the socket: `Graceful` when everything was sent and
    /// nothing more will be read, `Abort` when the peer stopped taking output.
    pub fn should_close(&self) -> Option<CloseKind> {
        if self.aborted {
            return Some(CloseKind::Abort);
        }
        if self.has_output() || matches!(self.write, WritePhase::Body { .. }) {
            return None;
        }
        if self.write == WritePhase::Tunnel {
            // The peer's last bytes are delivered before its close is passed on.
            let peer_done = self.peer_eof && self.input.is_empty();
            return (self.closing || peer_done).then_some(CloseKind::Graceful);
        }
        let peer_gone_between_requests = self.peer_eof
            && matches!(self.read, ReadPhase::Head)
            && self.write == WritePhase::NoRequest
            && self.input.is_empty();
        (self.closing || peer_gone_between_requests).then_some(CloseKind::Graceful)
    }

    /// Bytes of buffer memory this connection holds now (input and output buffers; an owned
    /// response body is the handler's memory and not counted). Zero when idle.
    pub fn buffered_capacity(&self) -> usize {
        self.input.capacity() + self.output.capacity()
    }

    fn release_idle_buffers(&mut self) {
        let between_requests =
            matches!(self.read, ReadPhase::Head) && self.write == WritePhase::NoRequest;
        if between_requests || self.closing {
            self.input.release_if_empty();
            self.output.release_if_empty();
        }
    }

    // ----- errors and closing -----

    fn fail_event(&mut self, error: HttpError) -> Option<Event<'_>> {
        self.fail(error);
        self.pending_error.take().map(Event::Error)
    }

    /// Ends the current request with `error`: answers it if no response has started, cuts
    /// the response short otherwise, and closes.
    fn fail(&mut self, error: HttpError) {
        if self.pending_error.is_none() {
            self.pending_error = Some(error);
        }
        self.read = ReadPhase::Failed;
        match self.write {
            WritePhase::NoRequest | WritePhase::Pending => {
                let head_only = self.write == WritePhase::Pending && self.head_request;
                let response = error_response(error.status(), head_only);
                self.output.append(&response, self.output_reserve());
            }
            WritePhase::Body { .. }
            | WritePhase::Owned
            | WritePhase::Complete
            | WritePhase::Tunnel => {}
        }
        self.owned_body = Vec::new();
        self.owned_sent = 0;
        self.write = WritePhase::Complete;
        self.epoch += 1;
        self.start_closing();
    }

    fn start_closing(&mut self) {
        self.closing = true;
        self.input.clear();
    }

    fn abort(&mut self) {
        self.aborted = true;
        self.closing = true;
        self.input.clear();
        self.output.clear();
        self.owned_body = Vec::new();
        self.owned_sent = 0;
        self.write = WritePhase::Complete;
    }

    // ----- time -----

    /// Handles deadlines that passed by `now_ms` (408 and close for a slow head or body, a
    /// silent close for an idle keep-alive connection, an abort for a peer that stopped
    /// reading) and returns the next deadline, if the connection waits for its peer at all.
    pub fn poll_timeout(&mut self, now_ms: u64) -> Option<u64> {
        self.refresh_waits(now_ms);
        if let Some(since) = self.send_since {
            if now_ms >= since.saturating_add(self.limits.send_timeout_ms) {
                self.abort();
            }
        }
        if let Some(wait) = self.wait {
            if now_ms >= wait.since.saturating_add(self.timeout_of(wait.kind)) {
                match wait.kind {
                    WaitKind::Idle => {
                        self.epoch += 1;
                        self.start_closing();
                        self.release_idle_buffers();
                    }
                    WaitKind::Head => self.fail(HttpError::HeadTimeout),
                    WaitKind::Body => self.fail(HttpError::BodyTimeout),
                }
            }
        }
        self.refresh_waits(now_ms);
        let wait_deadline = self
            .wait
            .map(|wait| wait.since.saturating_add(self.timeout_of(wait.kind)));
        let send_deadline = self
            .send_since
            .map(|since| since.saturating_add(self.limits.send_timeout_ms));
        match (wait_deadline, send_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn timeout_of(&self, kind: WaitKind) -> u64 {
        match kind {
            WaitKind::Idle => self.limits.idle_timeout_ms,
            WaitKind::Head => self.limits.head_timeout_ms,
            WaitKind::Body => self.limits.body_timeout_ms,
        }
    }

    /// What the connection is waiting for from its peer right now, if anything.
    fn current_wait(&self) -> Option<WaitKind> {
        if self.closing || self.aborted {
            return None;
        }
        match (&self.read, self.write) {
            (ReadPhase::Head, WritePhase::NoRequest) if self.input.is_empty() => {
                Some(WaitKind::Idle)
            }
            // A pipelined head held back by a full output window waits on the server; the
            // send deadline covers a peer that stopped reading.
            (ReadPhase::Head, WritePhase::NoRequest)
                if self.output.len() >= self.limits.output_window() =>
            {
                None
            }
            (ReadPhase::Head, WritePhase::NoRequest) => Some(WaitKind::Head),
            (ReadPhase::Body { .. }, _) if self.needs_input => Some(WaitKind::Body),
            _ => None,
        }
    }

    /// Starts the clock of a wait that began since the last look, at `now_ms`.
    fn refresh_waits(&mut self, now_ms: u64) {
        self.wait = match (self.current_wait(), self.wait) {
            (Some(kind), Some(wait)) if wait.kind == kind && wait.epoch == self.epoch => Some(wait),
            (Some(kind), _) => Some(Wait {
                kind,
                epoch: self.epoch,
                since: now_ms,
            }),
            (None, _) => None,
        };
        if !self.has_output() || self.aborted {
            self.send_since = None;
        } else if self.send_since.is_none() {
            self.send_since = Some(now_ms);
        }
    }
}
