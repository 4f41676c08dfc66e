//! Configurable bounds on what one connection may hold and how long it may wait for its peer.

/// Bounds for one connection. Every buffer a [`crate::Connection`] allocates is sized from
/// these, so the memory of a connection is bounded by them; an idle keep-alive connection
/// releases its buffers entirely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest request head (request line and header fields, with their line ends) accepted;
    /// longer heads are answered with 431.
    pub max_head_bytes: usize,
    /// Most header fields in one request head; more are answered with 431.
    pub max_headers: usize,
    /// Default limit on the decoded body of one request; larger bodies are answered with 413.
    /// A handler raises it per request for streaming routes with
    /// [`crate::Connection::set_body_limit`].
    pub max_body_bytes: u64,
    /// Longest chunk-size line (size and extensions) of a chunked body; longer lines get 400.
    pub max_chunk_line_bytes: usize,
    /// Most bytes of trailer fields after a chunked body; more are answered with 431.
    pub max_trailer_bytes: usize,
    /// Size of the input buffer. Body bytes pass through it, so it also bounds how much of a
    /// body one [`crate::Event::BodyChunk`] carries. Never less than `max_head_bytes`.
    pub input_buffer_bytes: usize,
    /// Size of the output window for response bodies: [`crate::Connection::write_body`] accepts
    /// only what fits, which is the backpressure towards the handler.
    pub output_buffer_bytes: usize,
    /// Longest response head (status line and header fields) a handler may write.
    pub max_response_head_bytes: usize,
    /// Longest time from the first byte of a request head to its end (slow-loris bound);
    /// expiry is answered with 408 and a close.
    pub head_timeout_ms: u64,
    /// Longest time a keep-alive connection may sit between requests; expiry closes it
    /// without a response.
    pub idle_timeout_ms: u64,
    /// Longest time without a single body byte while the handler waits for more body; expiry
    /// is answered with 408 and a close.
    pub body_timeout_ms: u64,
    /// Longest time queued output may wait without the peer taking any of it; expiry aborts
    /// the connection.
    pub send_timeout_ms: u64,
}

impl Limits {
    /// The smallest input buffer accepted, whatever the configuration says.
    pub(crate) const MIN_BUFFER_BYTES: usize = 64;

    /// The input buffer size actually used: a head must always fit.
    pub(crate) fn input_capacity(&self) -> usize {
        self.input_buffer_bytes
            .max(self.max_head_bytes)
            .max(Self::MIN_BUFFER_BYTES)
    }

    /// The output window actually used: chunk framing must always fit beside some payload.
    pub(crate) fn output_window(&self) -> usize {
        self.output_buffer_bytes.max(Self::MIN_BUFFER_BYTES)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 8 * 1024,
            max_headers: 64,
            max_body_bytes: 8 * 1024 * 1024,
            max_chunk_line_bytes: 1024,
            max_trailer_bytes: 8 * 1024,
            input_buffer_bytes: 16 * 1024,
            output_buffer_bytes: 16 * 1024,
            max_response_head_bytes: 8 * 1024,
            head_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            body_timeout_ms: 60_000,
            send_timeout_ms: 60_000,
        }
    }
}
