//! gzip payloads (RFC 1952; Linux's default `CONFIG_KERNEL_GZIP`): the header, raw deflate
//! through `miniz_oxide`'s streaming inflater, and the CRC-32 and size trailer.
//!
//! Deflate looks back at most 32 KiB, so the inflater's window is a 64 KiB wrapping buffer in
//! dom0's heap; what comes out goes, as for xz, through [`ElfStream`] into guest memory.

use alloc::boxed::Box;
use core::ops::Range;
use miniz_oxide::inflate::core::{decompress, inflate_flags, DecompressorOxide};
use miniz_oxide::inflate::TINFLStatus;

use crate::elf_load::{ElfStream, LoadedKernel};
use crate::guest_memory::GuestWrite;
use crate::kernel_image::{KernelError, CHUNK};
use crate::source::ImageSource;

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

/// Inflates the gzip `payload` of `source` and loads the ELF that comes out.
pub fn load_gzip(
    source: &mut dyn ImageSource,
    payload: Range<u64>,
    limit: u64,
    out: &mut impl GuestWrite,
) -> Result<LoadedKernel, KernelError> {
    let gz = |e| KernelError::Gzip(e);
    let mut input = alloc::vec![0u8; CHUNK];
    let mut ring = alloc::vec![0u8; WINDOW];
    let mut inflater = Box::<DecompressorOxide>::default();
    let mut stream = ElfStream::new(limit);
    let mut crc = Crc32::new();
    let mut size = 0u32;
    let (mut in_start, mut in_end) = (0usize, 0usize);
    let mut offset = payload.start;
    // Keeps at least CHUNK/4 unread bytes in `input` while the source has more.
    let mut refill = |input: &mut [u8],
                      in_start: &mut usize,
                      in_end: &mut usize,
                      offset: &mut u64|
     -> Result<(), KernelError> {
        input.copy_within(*in_start..*in_end, 0);
        *in_end -= *in_start;
        *in_start = 0;
        let n = (payload.end - *offset).min((CHUNK - *in_end) as u64) as usize;
        source.read_at(*offset, &mut input[*in_end..*in_end + n])?;
        *offset += n as u64;
        *in_end += n;
        Ok(())
    };
    refill(&mut input, &mut in_start, &mut in_end, &mut offset)?;
    in_start = header_len(&input[..in_end]).map_err(gz)?;
    let mut out_pos = 0usize;
    loop {
        if in_end - in_start < CHUNK / 4 && offset < payload.end {
            refill(&mut input, &mut in_start, &mut in_end, &mut offset)?;
        }
        let more = if offset < payload.end {
            inflate_flags::TINFL_FLAG_HAS_MORE_INPUT
        } else {
            0
        };
        let (status, consumed, written) = decompress(
            &mut inflater,
            &input[in_start..in_end],
            &mut ring,
            out_pos,
            more,
        );
        let produced = &ring[out_pos..out_pos + written];
        crc.update(produced);
        size = size.wrapping_add(written as u32);
        if !stream.complete() {
            stream.push(produced, out)?;
        }
        out_pos = (out_pos + written) & (WINDOW - 1);
        in_start += consumed;
        match status {
            TINFLStatus::Done => break,
            TINFLStatus::HasMoreOutput => {}
            TINFLStatus::NeedsMoreInput if offset < payload.end => {}
            TINFLStatus::NeedsMoreInput | TINFLStatus::FailedCannotMakeProgress => {
                return Err(gz(GzipError::Truncated))
            }
            _ => return Err(gz(GzipError::Corrupt)),
        }
    }
    // The trailer: CRC-32 and size of the uncompressed data.
    if in_end - in_start < 8 && offset < payload.end {
        refill(&mut input, &mut in_start, &mut in_end, &mut offset)?;
    }
    let trailer = input
        .get(in_start..in_start + 8)
        .ok_or(gz(GzipError::Truncated))?;
    let expected_crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let expected_size = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
    if expected_crc != crc.value() || expected_size != size {
        return Err(gz(GzipError::Checksum));
    }
    Ok(stream.finish(out)?)
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
