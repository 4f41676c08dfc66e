//! Where usage records live: an append-only journal of checksummed frames behind a small
//! storage trait, so the kernel can put it on a VDI (or the host database's volume) and
//! tests can cut the power at every write.
//!
//! Frame: `len: u32 LE | crc32c(payload): u32 LE | payload (len bytes)`. Reading stops at the
//! first frame that is incomplete or fails its checksum: that is the tail torn by a power cut
//! during an append, and everything after it is ignored. A writer whose append failed never
//! appends again before a [`UsageStore::compact`] (the next write would otherwise sit behind
//! the torn tail and be ignored).

use alloc::vec::Vec;

/// Storage for the usage journal.
///
/// Contract (what [`crate::fakes::MemUsageStore`] models and the kernel's implementation
/// must give):
/// - `append` adds bytes at the end; when it returns `Ok` they are durable. If it fails or
///   the power is cut during it, any prefix of the bytes may have reached the medium.
/// - `compact` replaces the whole journal with `bytes`, atomically: after a power cut the
///   journal is either the old one or exactly `bytes` (two alternating slots, as the host
///   database does).
/// - `read_all` returns the journal as it is on the medium.
pub trait UsageStore {
    type Error: core::fmt::Debug;

    fn append(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
    fn read_all(&mut self) -> Result<Vec<u8>, Self::Error>;
    fn compact(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
}

/// Frame header bytes.
pub const FRAME_HEADER: usize = 8;
/// The largest frame accepted (a checkpoint of 200 000 rows is ~25 MiB).
pub const MAX_FRAME: usize = 256 << 20;

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Appends `payload` as one frame to `out`.
pub fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&CASTAGNOLI.checksum(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The frames of a journal, and how many bytes at its end were not a whole valid frame.
pub fn split_frames(journal: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut frames = Vec::new();
    let mut rest = journal;
    loop {
        if rest.is_empty() {
            return (frames, 0);
        }
        let valid = (|| {
            let len = u32::from_le_bytes(rest.get(0..4)?.try_into().ok()?) as usize;
            let crc = u32::from_le_bytes(rest.get(4..8)?.try_into().ok()?);
            if len > MAX_FRAME {
                return None;
            }
            let payload = rest.get(FRAME_HEADER..FRAME_HEADER + len)?;
            (CASTAGNOLI.checksum(payload) == crc).then_some((payload, FRAME_HEADER + len))
        })();
        match valid {
            Some((payload, used)) => {
                frames.push(payload);
                rest = rest.get(used..).unwrap_or(&[]);
            }
            None => return (frames, rest.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_torn_tails() {
        let mut journal = Vec::new();
        push_frame(&mut journal, b"one");
        push_frame(&mut journal, b"");
        push_frame(&mut journal, b"three");
        let whole = journal.len();
        let (frames, torn) = split_frames(&journal);
        assert_eq!(frames, [&b"one"[..], b"", b"three"]);
        assert_eq!(torn, 0);
        for cut in 0..whole {
            let (frames, torn) = split_frames(&journal[..cut]);
            let expect = match cut {
                0..=10 => 0,
                11..=18 => 1,
                _ => 2,
            };
            assert_eq!(frames.len(), expect, "cut at {cut}");
            assert_eq!(
                torn + frames.iter().map(|f| f.len() + 8).sum::<usize>(),
                cut
            );
        }
        // A flipped bit ends the journal there.
        journal[12] ^= 1;
        assert_eq!(split_frames(&journal).0.len(), 1);
    }
}
