//! Kernel image formats: a PVH ELF as is, or a Linux bzImage (`vmlinuz` as distributions
//! ship it) whose compressed payload is that ELF (`xg_dom_bzimageloader.c`).
//!
//! A bzImage (boot protocol ≥ 2.08) says where its payload is: `payload_length` bytes at
//! `payload_offset` after the setup code's `(setup_sects + 1) × 512` bytes. Debian's is xz with the x86 BCJ filter and a
//! 32 MiB dictionary. `xz4rust` has no single-call mode (decoding with the output buffer as
//! the dictionary): its dictionary is a separate buffer of at least the stream's dictionary
//! size. So the dictionary is lent by the caller — in the builder, a scratch window of
//! *guest* memory above where the kernel loads — and the output goes, a small chunk at a
//! time, through [`ElfStream`] to the segments' addresses: neither the kernel nor the
//! dictionary is ever in dom0's heap.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ops::Range;
use xz4rust::{XzDecoder, XzError, XzNextBlockResult};

use crate::elf_load::{ElfError, ElfStream, LoadError, LoadedKernel};
use crate::guest_memory::GuestWrite;
use crate::gzip::{self, GzipError};
use crate::kernel_stream::{take_input, KernelStream};
use crate::source::{ImageSource, SourceError};

/// Bytes read from a source at a time, and decompressed output handled at a time.
pub const CHUNK: usize = 64 << 10;
/// The xz dictionary the builder accepts at most (Debian: 32 MiB; `xz -9`: 64 MiB).
pub const MAX_XZ_DICT: u64 = 64 << 20;

const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0];

/// What the kernel image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF, loaded as it is.
    Elf,
    /// A bzImage with an xz payload at `payload` needing a `dict_size` dictionary.
    BzImageXz { payload: Range<u64>, dict_size: u64 },
    /// A bzImage with a gzip payload at `payload`.
    BzImageGzip { payload: Range<u64> },
}

/// Why a kernel image was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// Neither an ELF nor a bzImage.
    NotAKernel,
    /// A bzImage of a boot protocol older than 2.08 (no payload fields).
    OldBootProtocol(u16),
    /// The bzImage's payload lies outside the file.
    PayloadOutOfBounds,
    /// The payload is compressed with something other than xz or gzip (first bytes given).
    UnsupportedCompression([u8; 4]),
    /// The xz headers are corrupt or use a filter chain without LZMA2.
    BadXzHeader,
    /// The xz dictionary is larger than [`MAX_XZ_DICT`].
    XzDictionaryTooLarge(u64),
    /// The xz payload is corrupt or truncated.
    Decompress(XzError),
    /// The gzip payload is corrupt or truncated.
    Gzip(GzipError),
    /// The (decompressed) ELF is refused or does not fit.
    Load(LoadError),
    /// Reading the image failed.
    Source(SourceError),
}

impl core::fmt::Display for KernelError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            KernelError::NotAKernel => write!(f, "not a kernel (neither an ELF nor a bzImage)"),
            KernelError::OldBootProtocol(v) => {
                write!(f, "bzImage boot protocol {v:#x} is older than 2.08")
            }
            KernelError::PayloadOutOfBounds => write!(f, "bzImage payload lies outside the file"),
            KernelError::UnsupportedCompression(m) => {
                write!(
                    f,
                    "bzImage payload is neither xz nor gzip (starts {m:02x?})"
                )
            }
            KernelError::BadXzHeader => write!(f, "corrupt xz header in the bzImage payload"),
            KernelError::XzDictionaryTooLarge(n) => {
                write!(f, "xz dictionary of {n} bytes is larger than 64 MiB")
            }
            KernelError::Decompress(e) => write!(f, "corrupt compressed kernel: {e}"),
            KernelError::Gzip(e) => write!(f, "corrupt compressed kernel: {e}"),
            KernelError::Load(e) => e.fmt(f),
            KernelError::Source(e) => write!(f, "reading the kernel failed at byte {}", e.offset),
        }
    }
}

impl From<LoadError> for KernelError {
    fn from(e: LoadError) -> Self {
        KernelError::Load(e)
    }
}

impl From<SourceError> for KernelError {
    fn from(e: SourceError) -> Self {
        KernelError::Source(e)
    }
}

fn read_vec(source: &mut dyn ImageSource, offset: u64, len: usize) -> Result<Vec<u8>, KernelError> {
    let mut buf = alloc::vec![0u8; len];
    source.read_at(offset, &mut buf)?;
    Ok(buf)
}

/// Recognises the image.
pub fn probe(source: &mut dyn ImageSource) -> Result<KernelFormat, KernelError> {
    let size = source.size();
    if size >= 4 && read_vec(source, 0, 4)? == b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    // The setup header ends by 0x250 in boot protocol 2.08 and later.
    if size < 0x250 {
        return Err(KernelError::NotAKernel);
    }
    let h = read_vec(source, 0, 0x250)?;
    let u16_at = |at: usize| u16::from_le_bytes([h[at], h[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    if u16_at(0x1fe) != 0xaa55 || &h[0x202..0x206] != b"HdrS" {
        return Err(KernelError::NotAKernel);
    }
    let version = u16_at(0x206);
    if version < 0x208 {
        return Err(KernelError::OldBootProtocol(version));
    }
    let setup_sects = match h[0x1f1] {
        0 => 4,
        n => u64::from(n),
    };
    let start = (setup_sects + 1) * 512 + u64::from(u32_at(0x248));
    let end = start + u64::from(u32_at(0x24c));
    if end > size || end - start < XZ_MAGIC.len() as u64 + 12 {
        return Err(KernelError::PayloadOutOfBounds);
    }
    let head = read_vec(source, start, 64.min((end - start) as usize))?;
    if head[..3] == gzip::MAGIC {
        return Ok(KernelFormat::BzImageGzip {
            payload: start..end,
        });
    }
    if head[..6] != XZ_MAGIC {
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&head[..4]);
        return Err(KernelError::UnsupportedCompression(magic));
    }
    let dict_size = xz_dict_size(&head).ok_or(KernelError::BadXzHeader)?;
    if dict_size > MAX_XZ_DICT {
        return Err(KernelError::XzDictionaryTooLarge(dict_size));
    }
    Ok(KernelFormat::BzImageXz {
        payload: start..end,
        dict_size,
    })
}

/// A multibyte integer of the xz format; returns `(value, bytes)`.
fn xz_vli(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().enumerate().take(9) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The LZMA2 dictionary size of the first block (`xz-file-format.txt` §3.1, §5.3.1).
fn xz_dict_size(head: &[u8]) -> Option<u64> {
    const LZMA2: u64 = 0x21;
    // Stream header: magic (6), flags (2), CRC32 (4). Then the block header.
    let block = head.get(12..)?;
    let header_len = (usize::from(*block.first()?) + 1) * 4;
    let header = block.get(..header_len)?;
    let flags = *header.get(1)?;
    let filters = usize::from(flags & 3) + 1;
    let mut at = 2;
    for present in [flags & 0x40 != 0, flags & 0x80 != 0] {
        if present {
            at += xz_vli(header.get(at..)?)?.1;
        }
    }
    for _ in 0..filters {
        let (id, n) = xz_vli(header.get(at..)?)?;
        at += n;
        let (props_len, n) = xz_vli(header.get(at..)?)?;
        at += n;
        let props = header.get(at..at + usize::try_from(props_len).ok()?)?;
        at += props.len();
        if id == LZMA2 {
            let bits = u32::from(*props.first()? & 0x3f);
            return match bits {
                0..=39 => Some((2 | u64::from(bits & 1)) << (bits / 2 + 11)),
                40 => Some(u64::from(u32::MAX)),
                _ => None,
            };
        }
    }
    None
}

/// Loads the kernel in `source` (of `format`, from [`probe`]) through a [`KernelStream`],
/// reading [`CHUNK`] bytes at a time; `dictionary` as for [`KernelStream::new`].
pub fn load(
    source: &mut dyn ImageSource,
    format: &KernelFormat,
    dictionary: Option<&mut [u8]>,
    limit: u64,
    out: &mut impl GuestWrite,
) -> Result<LoadedKernel, KernelError> {
    let size = source.size();
    let mut stream = KernelStream::new(format, size, limit, dictionary)?;
    let mut buf = alloc::vec![0u8; CHUNK];
    while stream.received() < size {
        let n = (size - stream.received()).min(CHUNK as u64) as usize;
        source.read_at(stream.received(), &mut buf[..n])?;
        stream.push(&buf[..n], out)?;
    }
    stream.finish(out)
}

/// An xz payload decoded as it arrives, with a lent dictionary.
pub struct XzPayload<'d> {
    decoder: Box<XzDecoder<'d>>,
    /// Received input the decoder has not taken yet (it wants whole headers at once).
    input: Vec<u8>,
    output: Vec<u8>,
    ended: bool,
}

impl<'d> XzPayload<'d> {
    pub fn new(dictionary: &'d mut [u8]) -> Self {
        XzPayload {
            decoder: Box::new(XzDecoder::with_fixed_size_dict(dictionary)),
            input: Vec::new(),
            output: alloc::vec![0u8; CHUNK],
            ended: false,
        }
    }

    /// The next payload bytes (`last`: the payload ends with them); what decodes goes to
    /// `elf` until it is complete.
    pub fn push(
        &mut self,
        mut bytes: &[u8],
        last: bool,
        elf: &mut ElfStream,
        out: &mut impl GuestWrite,
    ) -> Result<(), KernelError> {
        while !bytes.is_empty() && !self.ended {
            take_input(&mut self.input, &mut bytes);
            self.decode(elf, out)?;
        }
        if last && !self.ended {
            self.decode(elf, out)?;
        }
        Ok(())
    }

    /// Decodes what the input allows.
    fn decode(
        &mut self,
        elf: &mut ElfStream,
        out: &mut impl GuestWrite,
    ) -> Result<(), KernelError> {
        while !self.ended {
            let (consumed, produced, ended) =
                match self.decoder.decode(&self.input, &mut self.output) {
                    Ok(XzNextBlockResult::NeedMoreData(c, p)) => (c, p, false),
                    Ok(XzNextBlockResult::EndOfStream(c, p)) => (c, p, true),
                    Err(XzError::NeedsLargerInputBuffer) => (0, 0, false),
                    Err(e) => return Err(KernelError::Decompress(e)),
                };
            self.input.drain(..consumed.min(self.input.len()));
            if !elf.complete() {
                elf.push(&self.output[..produced], out)?;
            }
            self.ended = ended;
            if consumed == 0 && produced == 0 {
                // Needs more input than there is.
                break;
            }
        }
        Ok(())
    }

    /// The payload has all arrived: the stream must have ended.
    pub fn check_ended(&self) -> Result<(), KernelError> {
        if self.ended {
            Ok(())
        } else {
            Err(LoadError::Elf(ElfError::Truncated).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::BytesSource;

    #[test]
    fn xz_vli_decodes_multibyte_integers() {
        assert_eq!(xz_vli(&[0x05]), Some((5, 1)));
        assert_eq!(xz_vli(&[0x80 | 0x01, 0x02]), Some((0x101, 2)));
        assert_eq!(xz_vli(&[0x80]), None);
    }

    #[test]
    fn dictionary_size_from_the_lzma2_filter() {
        // Stream header, then a block header: size byte 2 → 12 bytes, flags = 2 filters,
        // BCJ x86 (0x04, no props), LZMA2 (0x21, 1 prop byte = 0x16 → 8 MiB... bits 22).
        let mut h = XZ_MAGIC.to_vec();
        h.extend_from_slice(&[0, 4, 0, 0, 0, 0]);
        h.extend_from_slice(&[2, 0x01, 0x04, 0x00, 0x21, 0x01, 22, 0, 0, 0, 0, 0]);
        assert_eq!(xz_dict_size(&h), Some(8 << 20));
        h[12 + 6] = 24; // 16 MiB
        assert_eq!(xz_dict_size(&h), Some(16 << 20));
        h[12 + 6] = 26; // 32 MiB, Debian's
        assert_eq!(xz_dict_size(&h), Some(32 << 20));
        h[12 + 6] = 41;
        assert_eq!(xz_dict_size(&h), None);
        assert_eq!(xz_dict_size(&h[..14]), None);
    }

    /// A bzImage header of boot protocol `version` with a payload of `payload`.
    pub(crate) fn bzimage(version: u16, payload: &[u8]) -> Vec<u8> {
        let setup_sects = 4u8;
        let mut f = alloc::vec![0u8; (usize::from(setup_sects) + 1) * 512];
        f[0x1f1] = setup_sects;
        f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        f[0x202..0x206].copy_from_slice(b"HdrS");
        f[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        // The payload starts 0x100 bytes into the protected-mode part, as Linux's does.
        f[0x248..0x24c].copy_from_slice(&0x100u32.to_le_bytes());
        f[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        f.resize(f.len() + 0x100, 0xcc);
        f.extend_from_slice(payload);
        f.extend_from_slice(&[0xcc; 64]);
        f
    }

    #[test]
    fn probes_formats() {
        let elf = crate::elf_load::testimage::pvh_elf64(0x100_0000, &[1], 0, Some(0x100_0000));
        assert_eq!(probe(&mut BytesSource(&elf)), Ok(KernelFormat::Elf));
        assert_eq!(
            probe(&mut BytesSource(b"not a kernel at all")),
            Err(KernelError::NotAKernel)
        );
        assert_eq!(
            probe(&mut BytesSource(&[0u8; 4096])),
            Err(KernelError::NotAKernel)
        );
        let gz = bzimage(
            0x20f,
            &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        );
        assert_eq!(
            probe(&mut BytesSource(&gz)),
            Ok(KernelFormat::BzImageGzip {
                payload: 0xb00..0xb12
            })
        );
        let zstd = bzimage(
            0x20f,
            &[
                0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        );
        assert_eq!(
            probe(&mut BytesSource(&zstd)),
            Err(KernelError::UnsupportedCompression([
                0x28, 0xb5, 0x2f, 0xfd
            ]))
        );
        assert_eq!(
            probe(&mut BytesSource(&bzimage(0x207, &[0; 32]))),
            Err(KernelError::OldBootProtocol(0x207))
        );
        let mut out_of_bounds = bzimage(0x20f, &[0; 32]);
        out_of_bounds[0x24c..0x250].copy_from_slice(&0x10_0000u32.to_le_bytes());
        assert_eq!(
            probe(&mut BytesSource(&out_of_bounds)),
            Err(KernelError::PayloadOutOfBounds)
        );
    }
}
