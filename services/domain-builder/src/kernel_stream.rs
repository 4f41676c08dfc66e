//! A kernel image received in file order, a piece at a time, and loaded as it arrives: the
//! stepped builder ([`crate::PvhBuild`]) is fed whatever the caller read from storage in one
//! step, so no whole image ever sits in dom0's heap and no step decompresses more than its
//! input's worth.
//!
//! An ELF goes straight to [`ElfStream`]; a bzImage's bytes outside its payload are skipped
//! and the payload goes through its decompressor ([`XzPayload`], [`GzipPayload`]) into the
//! ELF stream. Which one is decided by [`crate::kernel_image::probe`] on the image's head.

use crate::elf_load::{ElfError, ElfStream, LoadError, LoadedKernel};
use crate::guest_memory::GuestWrite;
use crate::gzip::GzipPayload;
use crate::kernel_image::{KernelError, KernelFormat, XzPayload, CHUNK};
use alloc::vec::Vec;
use core::ops::Range;

/// Moves the next of `bytes` into a decoder's pending `input`, up to [`CHUNK`] pending
/// (at least one byte, so that a decoder that needs a longer run than it holds still
/// advances): decoders are handed bounded input however large a piece the caller feeds.
pub(crate) fn take_input(input: &mut Vec<u8>, bytes: &mut &[u8]) {
    let room = CHUNK.saturating_sub(input.len()).max(1);
    let (now, rest) = bytes.split_at(bytes.len().min(room));
    input.extend_from_slice(now);
    *bytes = rest;
}

/// How the payload is decoded.
enum Decoder<'d> {
    /// The file is the ELF.
    Elf,
    Xz(XzPayload<'d>),
    Gzip(GzipPayload),
}

/// A kernel image being received. `'d` is the xz dictionary's lifetime (guest memory the
/// builder maps for the whole decode).
pub struct KernelStream<'d> {
    decoder: Decoder<'d>,
    /// Where the ELF is in the file (all of it for an ELF).
    payload: Range<u64>,
    /// File bytes received so far.
    received: u64,
    size: u64,
    elf: ElfStream,
}

impl<'d> KernelStream<'d> {
    /// A stream for an image of `size` bytes in `format` whose segments must end at or
    /// below `limit`; an xz payload is decoded with `dictionary` (at least its dictionary
    /// size: [`KernelFormat::BzImageXz`]'s `dict_size`).
    pub fn new(
        format: &KernelFormat,
        size: u64,
        limit: u64,
        dictionary: Option<&'d mut [u8]>,
    ) -> Result<Self, KernelError> {
        let (decoder, payload) = match format {
            KernelFormat::Elf => (Decoder::Elf, 0..size),
            KernelFormat::BzImageXz { payload, dict_size } => {
                let dictionary = dictionary
                    .filter(|d| d.len() as u64 >= *dict_size)
                    .ok_or(KernelError::XzDictionaryTooLarge(*dict_size))?;
                (Decoder::Xz(XzPayload::new(dictionary)), payload.clone())
            }
            KernelFormat::BzImageGzip { payload } => {
                (Decoder::Gzip(GzipPayload::new()), payload.clone())
            }
        };
        Ok(KernelStream {
            decoder,
            payload,
            received: 0,
            size,
            elf: ElfStream::new(limit),
        })
    }

    /// File bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The image's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The next bytes of the file; more than the file's size is an error.
    pub fn push(&mut self, bytes: &[u8], out: &mut impl GuestWrite) -> Result<(), KernelError> {
        let start = self.received;
        let end = start
            .checked_add(bytes.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or(KernelError::Load(LoadError::Elf(ElfError::Truncated)))?;
        self.received = end;
        // The part of `bytes` inside the payload.
        let from = self.payload.start.clamp(start, end);
        let to = self.payload.end.clamp(start, end);
        if from >= to {
            return Ok(());
        }
        let piece = &bytes[(from - start) as usize..(to - start) as usize];
        let last = to == self.payload.end;
        match &mut self.decoder {
            Decoder::Elf => {
                if !self.elf.complete() {
                    self.elf.push(piece, out)?;
                }
                Ok(())
            }
            Decoder::Xz(xz) => xz.push(piece, last, &mut self.elf, out),
            Decoder::Gzip(gz) => gz.push(piece, last, &mut self.elf, out),
        }
    }

    /// The whole file has been received: the loaded kernel.
    pub fn finish(self, out: &mut impl GuestWrite) -> Result<LoadedKernel, KernelError> {
        if self.received < self.size {
            return Err(KernelError::Load(LoadError::Elf(ElfError::Truncated)));
        }
        match &self.decoder {
            Decoder::Elf => {}
            Decoder::Xz(xz) => xz.check_ended()?,
            Decoder::Gzip(gz) => gz.check_ended()?,
        }
        Ok(self.elf.finish(out)?)
    }
}
