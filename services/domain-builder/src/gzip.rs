//! gzip payloads (RFC 1952; Linux's default `CONFIG_KERNEL_GZIP`): the header, raw deflate
//! through `miniz_oxide`'s streaming inflater, and the CRC-32 and size trailer.
//!
//! Deflate looks back at most 32 KiB, so the inflater's window is a 64 KiB wrapping buffer in
//! dom0's heap; what comes out goes, as for xz, through [`ElfStream`] into guest memory.

use alloc::boxed::Box;
use alloc::vec::Vec;
use miniz_oxide::inflate::core::{decompress, inflate_flags, DecompressorOxide};
use miniz_oxide::inflate::TINFLStatus;

use crate::elf_load::ElfStream;
use crate::guest_memory::GuestWrite;
use crate::kernel_image::{KernelError, CHUNK};
use crate::kernel_stream::take_input;

/// gzip's magic and the deflate method.
pub const MAGIC: [u8; 3] = [0x1f, 0x8b, 8];
/// Inflater output ring: a power of two of at least deflate's 32 KiB window.
const WINDOW: usize = 64 << 10;

const FHCRC: u8 = 1 << 1;
const FEXTRA: u8 = 1 << 2;
const FNAME: u8 = 1 << 3;
const FCOMMENT: u8 = 1 << 4;
const RESERVED: u8 = 0xe0;

/// What is wrong with a gzip payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GzipError {
    /// Not gzip/deflate, reserved flags set, or the header runs past its first 64 KiB.
    BadHeader,
    /// The deflate data is corrupt.
    Corrupt,
    /// The data ended before the deflate stream and trailer did.
    Truncated,
    /// The CRC-32 or size in the trailer does not match what was decompressed.
    Checksum,
}

impl core::fmt::Display for GzipError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GzipError::BadHeader => write!(f, "corrupt gzip header"),
            GzipError::Corrupt => write!(f, "corrupt deflate data"),
            GzipError::Truncated => write!(f, "gzip data cut short"),
            GzipError::Checksum => write!(f, "gzip CRC-32 or size mismatch"),
        }
    }
}

/// Length of the gzip header at the start of `data`.
fn header_len(data: &[u8]) -> Result<usize, GzipError> {
    let bad = GzipError::BadHeader;
    if data.get(..3) != Some(&MAGIC[..]) {
        return Err(bad);
    }
    let flags = *data.get(3).ok_or(bad)?;
    if flags & RESERVED != 0 {
        return Err(bad);
    }
    let mut at = 10usize;
    if flags & FEXTRA != 0 {
        let xlen = data.get(at..at + 2).ok_or(bad)?;
        at += 2 + usize::from(u16::from_le_bytes([xlen[0], xlen[1]]));
    }
    for field in [FNAME, FCOMMENT] {
        if flags & field != 0 {
            let nul = data
                .get(at..)
                .ok_or(bad)?
                .iter()
                .position(|&b| b == 0)
                .ok_or(bad)?;
            at += nul + 1;
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    if at > data.len() {
        return Err(bad);
    }
    Ok(at)
}

/// CRC-32 (IEEE, reflected), as gzip's trailer.
struct Crc32(u32);

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

impl Crc32 {
    fn new() -> Self {
        Crc32(!0)
    }
    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = CRC_TABLE[((self.0 ^ u32::from(b)) & 0xff) as usize] ^ (self.0 >> 8);
        }
    }
    fn value(&self) -> u32 {
        !self.0
    }
}

/// A gzip payload inflated as it arrives.
pub struct GzipPayload {
    /// Received input not yet taken: the header until it is whole, deflate data the
    /// inflater left, then the trailer.
    input: Vec<u8>,
    ring: Vec<u8>,
    out_pos: usize,
    inflater: Box<DecompressorOxide>,
    phase: Phase,
    crc: Crc32,
    size: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Header,
    Deflate,
    /// The deflate stream ended; the 8-byte trailer is arriving.
    Trailer,
    Checked,
}

impl Default for GzipPayload {
    fn default() -> Self {
        Self::new()
    }
}

impl GzipPayload {
    pub fn new() -> Self {
        GzipPayload {
            input: Vec::new(),
            ring: alloc::vec![0u8; WINDOW],
            out_pos: 0,
            inflater: Box::<DecompressorOxide>::default(),
            phase: Phase::Header,
            crc: Crc32::new(),
            size: 0,
        }
    }

    /// The next payload bytes (`last`: the payload ends with them); what inflates goes to
    /// `elf` until it is complete.
    pub fn push(
        &mut self,
        mut bytes: &[u8],
        last: bool,
        elf: &mut ElfStream,
        out: &mut impl GuestWrite,
    ) -> Result<(), KernelError> {
        let gz = KernelError::Gzip;
        loop {
            take_input(&mut self.input, &mut bytes);
            let no_more = last && bytes.is_empty();
            match self.phase {
                Phase::Header => match header_len(&self.input) {
                    Ok(n) => {
                        self.input.drain(..n);
                        self.phase = Phase::Deflate;
                        continue;
                    }
                    // The header may be whole only with more input (64 KiB at most).
                    Err(_) if !no_more && self.input.len() < CHUNK => {}
                    Err(e) => return Err(gz(e)),
                },
                Phase::Deflate => {
                    self.inflate(no_more, elf, out)?;
                    if self.phase == Phase::Trailer {
                        continue;
                    }
                }
                Phase::Trailer => {
                    if self.input.len() >= 8 {
                        let t = &self.input[..8];
                        let crc = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
                        let size = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
                        if crc != self.crc.value() || size != self.size {
                            return Err(gz(GzipError::Checksum));
                        }
                        self.phase = Phase::Checked;
                    }
                }
                Phase::Checked => self.input.clear(),
            }
            if bytes.is_empty() {
                return Ok(());
            }
        }
    }

    /// Inflates what the input allows (`no_more`: the payload has all arrived).
    fn inflate(
        &mut self,
        no_more: bool,
        elf: &mut ElfStream,
        out: &mut impl GuestWrite,
    ) -> Result<(), KernelError> {
        let gz = KernelError::Gzip;
        let flags = if no_more {
            0
        } else {
            inflate_flags::TINFL_FLAG_HAS_MORE_INPUT
        };
        loop {
            let (status, consumed, written) = decompress(
                &mut self.inflater,
                &self.input,
                &mut self.ring,
                self.out_pos,
                flags,
            );
            let produced = &self.ring[self.out_pos..self.out_pos + written];
            self.crc.update(produced);
            self.size = self.size.wrapping_add(written as u32);
            if !elf.complete() {
                elf.push(produced, out)?;
            }
            self.out_pos = (self.out_pos + written) & (WINDOW - 1);
            self.input.drain(..consumed.min(self.input.len()));
            match status {
                TINFLStatus::Done => {
                    self.phase = Phase::Trailer;
                    return Ok(());
                }
                TINFLStatus::HasMoreOutput => {}
                TINFLStatus::NeedsMoreInput if !no_more => return Ok(()),
                TINFLStatus::NeedsMoreInput | TINFLStatus::FailedCannotMakeProgress => {
                    return Err(gz(GzipError::Truncated))
                }
                _ => return Err(gz(GzipError::Corrupt)),
            }
        }
    }

    /// The payload has all arrived: the stream and its trailer must have.
    pub fn check_ended(&self) -> Result<(), KernelError> {
        match self.phase {
            Phase::Checked => Ok(()),
            Phase::Header => Err(KernelError::Gzip(GzipError::BadHeader)),
            _ => Err(KernelError::Gzip(GzipError::Truncated)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_known_strings() {
        let mut c = Crc32::new();
        c.update(b"123456789");
        assert_eq!(c.value(), 0xcbf4_3926);
        let mut c = Crc32::new();
        c.update(b"");
        assert_eq!(c.value(), 0);
    }

    #[test]
    fn header_lengths() {
        let plain = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        assert_eq!(header_len(&plain), Ok(10));
        let mut named = plain.to_vec();
        named[3] = FNAME;
        named.extend_from_slice(b"vmlinux\0");
        assert_eq!(header_len(&named), Ok(18));
        let mut extra = plain.to_vec();
        extra[3] = FEXTRA | FHCRC;
        extra.extend_from_slice(&[3, 0, 1, 2, 3, 0xaa, 0xbb]);
        assert_eq!(header_len(&extra), Ok(17));
        let mut unterminated = plain.to_vec();
        unterminated[3] = FCOMMENT;
        unterminated.extend_from_slice(b"no end");
        assert_eq!(header_len(&unterminated), Err(GzipError::BadHeader));
        let mut reserved = plain.to_vec();
        reserved[3] = 0x20;
        assert_eq!(header_len(&reserved), Err(GzipError::BadHeader));
        assert_eq!(header_len(&[0x1f, 0x8b, 7]), Err(GzipError::BadHeader));
    }
}
