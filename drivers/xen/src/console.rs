//! `console_io` hypercall and [`XenConsole`], a log sink writing to Xen's console.
//!
//! As the hardware domain, dom0's writes go straight to Xen's serial console (`xen.h`,
//! `CONSOLEIO_write`). Xen copies guest text 127 bytes at a time and preempts long writes
//! with continuations; the ABI limit is the 32-bit count. Keel still splits text into
//! [`CONSOLE_WRITE_CHUNK`]-byte hypercalls so that a single call's latency stays bounded.

use crate::error::XenError;
use crate::hypercall::{HypercallOp, Hypervisor};

const CONSOLEIO_WRITE: u64 = 0;
const CONSOLEIO_READ: u64 = 1;

/// Largest number of bytes passed to one `CONSOLEIO_write`.
pub const CONSOLE_WRITE_CHUNK: usize = 1024;

/// Writes all of `bytes` to the Xen console, in chunks.
pub fn console_write<H: Hypervisor + ?Sized>(hv: &H, bytes: &[u8]) -> Result<(), XenError> {
    for chunk in bytes.chunks(CONSOLE_WRITE_CHUNK) {
        // SAFETY: `chunk` is valid for reads of `chunk.len()` bytes during the call.
        let ret = unsafe {
            hv.hypercall(
                HypercallOp::ConsoleIo as u32,
                [
                    CONSOLEIO_WRITE,
                    chunk.len() as u64,
                    chunk.as_ptr() as u64,
                    0,
                    0,
                ],
            )
        };
        XenError::check(ret)?;
    }
    Ok(())
}

/// Reads pending console input (dom0 only, signalled by `VIRQ_CONSOLE`); returns the
/// number of bytes placed at the start of `buf`.
pub fn console_read<H: Hypervisor + ?Sized>(hv: &H, buf: &mut [u8]) -> Result<usize, XenError> {
    // Xen rejects counts above INT_MAX; never ask for more than that.
    let count = buf.len().min(i32::MAX as usize);
    // SAFETY: `buf` is valid for writes of `count` bytes during the call.
    let ret = unsafe {
        hv.hypercall(
            HypercallOp::ConsoleIo as u32,
            [CONSOLEIO_READ, count as u64, buf.as_mut_ptr() as u64, 0, 0],
        )
    };
    let read = XenError::check(ret)? as usize;
    Ok(read.min(count))
}

/// A `core::fmt::Write` sink over `CONSOLEIO_write`, for the kernel's logger.
///
/// A failed hypercall does not stop later writes; the number of bytes that could not be
/// written is counted in [`XenConsole::lost_bytes`] so the loss is visible.
pub struct XenConsole<H> {
    hv: H,
    lost_bytes: u64,
}

impl<H: Hypervisor> XenConsole<H> {
    pub fn new(hv: H) -> Self {
        XenConsole { hv, lost_bytes: 0 }
    }

    /// Writes raw bytes.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), XenError> {
        let result = console_write(&self.hv, bytes);
        if result.is_err() {
            self.lost_bytes = self.lost_bytes.saturating_add(bytes.len() as u64);
        }
        result
    }

    /// Bytes dropped because Xen refused a write.
    pub fn lost_bytes(&self) -> u64 {
        self.lost_bytes
    }
}

impl<H: Hypervisor> core::fmt::Write for XenConsole<H> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.write_bytes(s.as_bytes()).map_err(|_| core::fmt::Error)
    }
}

/// Formats text into a buffer of `N` bytes and hands it to a [`XenConsole`] when the buffer
/// fills and at [`BufferedConsole::finish`], so that a formatted log line costs one
/// `CONSOLEIO_write` instead of one per formatting fragment (each hypercall is a VM exit).
///
/// Formatting never stops at a refused write: the rest of the text is still offered, the
/// loss is counted by the console, and [`BufferedConsole::finish`] reports the first error.
pub struct BufferedConsole<'c, H, const N: usize> {
    console: &'c mut XenConsole<H>,
    buf: [u8; N],
    len: usize,
    first_error: Option<XenError>,
}

impl<'c, H: Hypervisor, const N: usize> BufferedConsole<'c, H, N> {
    pub fn new(console: &'c mut XenConsole<H>) -> Self {
        BufferedConsole {
            console,
            buf: [0; N],
            len: 0,
            first_error: None,
        }
    }

    fn flush(&mut self) {
        let pending = self.buf.get(..self.len).unwrap_or(&[]);
        if !pending.is_empty() {
            if let Err(e) = self.console.write_bytes(pending) {
                self.first_error.get_or_insert(e);
            }
        }
        self.len = 0;
    }

    /// Writes out what is still buffered; the first error of the whole text, if any.
    pub fn finish(mut self) -> Result<(), XenError> {
        self.flush();
        match self.first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl<H: Hypervisor, const N: usize> core::fmt::Write for BufferedConsole<'_, H, N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let mut rest = s.as_bytes();
        while !rest.is_empty() {
            if self.len == N {
                self.flush();
            }
            let room = N - self.len;
            let (now, later) = rest.split_at(room.min(rest.len()));
            if let Some(dst) = self.buf.get_mut(self.len..self.len + now.len()) {
                dst.copy_from_slice(now);
            }
            self.len += now.len();
            rest = later;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeXen;
    use core::fmt::Write;

    #[test]
    fn formatted_text_reaches_the_console() {
        let xen = FakeXen::new();
        let mut con = XenConsole::new(&xen);
        writeln!(con, "keel: dom{} up", 0).unwrap();
        assert_eq!(xen.console_output(), b"keel: dom0 up\n");
        assert_eq!(xen.console_write_sizes(), [14]);
    }

    #[test]
    fn long_text_is_chunked() {
        let xen = FakeXen::new();
        let text = [b'x'; CONSOLE_WRITE_CHUNK * 2 + 5];
        console_write(&xen, &text).unwrap();
        assert_eq!(xen.console_output().len(), text.len());
        assert_eq!(
            xen.console_write_sizes(),
            [CONSOLE_WRITE_CHUNK, CONSOLE_WRITE_CHUNK, 5]
        );
    }

    #[test]
    fn refused_writes_are_counted() {
        let xen = FakeXen::new();
        xen.fail_next(HypercallOp::ConsoleIo, XenError::EPERM);
        let mut con = XenConsole::new(&xen);
        assert!(write!(con, "lost").is_err());
        write!(con, "kept").unwrap();
        assert_eq!(con.lost_bytes(), 4);
        assert_eq!(xen.console_output(), b"kept");
    }

    #[test]
    fn reads_console_input() {
        let xen = FakeXen::new();
        xen.push_console_input(b"xl list\n");
        let mut buf = [0u8; 4];
        assert_eq!(console_read(&xen, &mut buf).unwrap(), 4);
        assert_eq!(&buf, b"xl l");
    }
    #[test]
    fn buffered_console_sends_a_formatted_line_in_one_write() {
        let xen = FakeXen::new();
        let mut con = XenConsole::new(&xen);
        let mut line = BufferedConsole::<_, 64>::new(&mut con);
        let (level, message) = ("INFO", "pci: 6 functions");
        writeln!(line, "[{:5}.{:06}] {level:<5} {message}", 1, 2).unwrap();
        assert!(
            xen.console_write_sizes().is_empty(),
            "nothing sent before finish"
        );
        line.finish().unwrap();
        assert_eq!(
            xen.console_output(),
            b"[    1.000002] INFO  pci: 6 functions\n"
        );
        assert_eq!(xen.console_write_sizes(), [38]);
    }

    #[test]
    fn buffered_console_flushes_when_full() {
        let xen = FakeXen::new();
        let mut con = XenConsole::new(&xen);
        let mut text = BufferedConsole::<_, 8>::new(&mut con);
        write!(text, "0123456789abcdefXY").unwrap();
        text.finish().unwrap();
        assert_eq!(xen.console_output(), b"0123456789abcdefXY");
        assert_eq!(xen.console_write_sizes(), [8, 8, 2]);
    }

    #[test]
    fn buffered_console_keeps_going_after_a_refused_write_and_reports_it() {
        let xen = FakeXen::new();
        let mut con = XenConsole::new(&xen);
        xen.fail_next(HypercallOp::ConsoleIo, XenError::EFAULT);
        let mut text = BufferedConsole::<_, 4>::new(&mut con);
        write!(text, "lostkept").unwrap();
        assert_eq!(text.finish(), Err(XenError::EFAULT));
        assert_eq!(xen.console_output(), b"kept");
        assert_eq!(con.lost_bytes(), 4);
    }
}
