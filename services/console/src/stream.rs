//! A reader's position in a console's output, for one live client connection.
//!
//! The connection handler keeps a [`ConsoleStream`] per client and, whenever its socket can
//! take more bytes, asks [`ConsoleStream::fill`] for the next ones. A client too slow to keep
//! up falls off the back of the [`History`]; it then receives a one-line marker saying how
//! many bytes it missed and continues from the oldest retained byte. Nothing is buffered per
//! client beyond the position.

use core::fmt::Write;

use crate::history::History;

/// Longest skip marker, and the smallest buffer [`ConsoleStream::fill`] writes one into.
pub const SKIP_MARKER_MAX: usize = 64;

/// The position of one reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleStream {
    next: u64,
    /// Bytes lost and not yet announced to the client.
    unannounced_skip: u64,
}

impl ConsoleStream {
    /// Starts at the oldest retained byte: the client first sees the history, then live
    /// output. What `CONNECT` on the console location does.
    pub fn from_oldest(history: &History) -> Self {
        Self::at(history.start_seq())
    }

    /// Starts with the next byte the guest writes.
    pub fn from_now(history: &History) -> Self {
        Self::at(history.end_seq())
    }

    /// Starts at sequence number `seq` (e.g. a client resuming).
    pub fn at(seq: u64) -> Self {
        ConsoleStream {
            next: seq,
            unannounced_skip: 0,
        }
    }

    /// Sequence number of the next byte this reader will get.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Whether [`fill`](Self::fill) has something to give.
    pub fn has_pending(&self, history: &History) -> bool {
        self.unannounced_skip > 0 || self.next < history.end_seq()
    }

    /// Writes the next bytes for this reader into `out` and returns how many (0 when it is
    /// up to date). A gap comes first as the marker
    /// `\r\n[keel: N bytes of console output skipped]\r\n`; with an `out` shorter than
    /// [`SKIP_MARKER_MAX`] the marker waits for a larger one and data flows meanwhile.
    pub fn fill(&mut self, history: &History, out: &mut [u8]) -> usize {
        let start = history.start_seq();
        if self.next < start {
            self.unannounced_skip = self.unannounced_skip.saturating_add(start - self.next);
            self.next = start;
        }
        let mut written = 0;
        if self.unannounced_skip > 0 && out.len() >= SKIP_MARKER_MAX {
            written = write_skip_marker(self.unannounced_skip, out);
            self.unannounced_skip = 0;
        }
        let Some(rest) = out.get_mut(written..) else {
            return written;
        };
        let read = history.read(self.next, rest);
        self.next = read.next();
        written + read.len
    }
}

/// Formats the skip marker into `out` (at least [`SKIP_MARKER_MAX`] bytes); returns its length.
fn write_skip_marker(skipped: u64, out: &mut [u8]) -> usize {
    struct Cursor<'a> {
        out: &'a mut [u8],
        len: usize,
    }
    impl Write for Cursor<'_> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let dst = self
                .out
                .get_mut(self.len..self.len + s.len())
                .ok_or(core::fmt::Error)?;
            dst.copy_from_slice(s.as_bytes());
            self.len += s.len();
            Ok(())
        }
    }
    let mut cursor = Cursor { out, len: 0 };
    // Cannot fail: the longest marker (u64::MAX) is exactly SKIP_MARKER_MAX bytes.
    let _ = write!(
        cursor,
        "\r\n[keel: {skipped} bytes of console output skipped]\r\n"
    );
    cursor.len
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn drain(stream: &mut ConsoleStream, h: &History, chunk: usize) -> Vec<u8> {
        let mut all = Vec::new();
        let mut buf = alloc::vec![0u8; chunk];
        loop {
            let n = stream.fill(h, &mut buf);
            if n == 0 {
                return all;
            }
            all.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn the_longest_marker_fits() {
        let mut buf = [0u8; SKIP_MARKER_MAX];
        let n = write_skip_marker(u64::MAX, &mut buf);
        assert_eq!(n, SKIP_MARKER_MAX);
        assert_eq!(
            &buf[..],
            b"\r\n[keel: 18446744073709551615 bytes of console output skipped]\r\n"
        );
    }

    #[test]
    fn several_readers_follow_one_history_independently() {
        let mut h = History::with_capacity(32).unwrap();
        h.append(b"boot ");
        let mut early = ConsoleStream::from_oldest(&h);
        let mut late = ConsoleStream::from_now(&h);
        h.append(b"login: ");
        assert!(early.has_pending(&h));
        assert_eq!(drain(&mut early, &h, 3), b"boot login: ");
        assert_eq!(drain(&mut late, &h, 100), b"login: ");
        assert!(!early.has_pending(&h));
        h.append(b"root");
        assert_eq!(drain(&mut early, &h, 100), b"root");
        assert_eq!(drain(&mut late, &h, 100), b"root");
        assert_eq!(early.position(), h.end_seq());
    }

    #[test]
    fn a_slow_reader_skips_ahead_with_a_marker() {
        let mut h = History::with_capacity(8).unwrap();
        let mut slow = ConsoleStream::from_oldest(&h);
        h.append(b"0123456789abcdef");
        let out = drain(&mut slow, &h, 128);
        let mut expected = Vec::new();
        expected.extend_from_slice(b"\r\n[keel: 8 bytes of console output skipped]\r\n");
        expected.extend_from_slice(b"89abcdef");
        assert_eq!(out, expected);
        // Skips accumulate until a buffer can take the marker.
        h.append(b"ABCDEFGHIJ");
        let mut small = [0u8; 4];
        assert_eq!(slow.fill(&h, &mut small), 4);
        assert_eq!(&small, b"CDEF");
        let out = drain(&mut slow, &h, 128);
        assert!(out.starts_with(b"\r\n[keel: 2 bytes of console output skipped]\r\n"));
        assert!(out.ends_with(b"GHIJ"));
    }
}
