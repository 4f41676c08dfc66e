//! A [`UsageStore`] on a block volume (a reserved VDI): what the kernel keeps the usage
//! journal and the RRD snapshot in (docs/metering.md, "Durability").
//!
//! Layout, in 4 KiB blocks: blocks 0 and 1 are two header copies, the rest two equal data
//! slots. A header names the slot holding the journal and the journal's length, with a
//! sequence number and a CRC-32C; the valid header with the highest sequence number wins.
//! Headers are written alternately, so a torn header write leaves the other, one change
//! older, intact.
//!
//! - `append` writes the new bytes behind the journal in its slot (rewriting the last
//!   partial block with the same bytes it held, so a tear can only damage new bytes),
//!   flushes, then writes the next header with the longer length and flushes: `Ok` means
//!   durable, and a cut before the header leaves the old length (the bytes are ignored).
//! - `compact` writes the new journal into the other slot, flushes, then the next header
//!   naming that slot: old or new journal after a cut, never a mix.

use alloc::vec;
use alloc::vec::Vec;

use crate::store::UsageStore;

/// The usage journal's VDI.
pub const USAGE_VOLUME_NAME: &str = "keel-usage-journal";
/// The RRD snapshot's VDI.
pub const RRD_VOLUME_NAME: &str = "keel-rrd-archive";

/// Whether a VDI named `name` is one of the metering's volumes. The kernel finds them by
/// name, so they are reserved as the host database's is: the storage backend lists none,
/// answers `VdiNotFound` for them and refuses the names for clients' VDIs (a client's VDI
/// of that name would be taken for the journal, or make it ambiguous).
pub fn is_metering_volume(name: &str) -> bool {
    name == USAGE_VOLUME_NAME || name == RRD_VOLUME_NAME
}

/// Block size of the volume.
pub const VOLUME_BLOCK: usize = 4096;
const MAGIC: [u8; 8] = *b"KEELJRN\0";
const VERSION: u32 = 1;
/// Header bytes covered by the CRC (magic, version, slot, sequence, length).
const HEADER_FIELDS: usize = 8 + 4 + 4 + 8 + 8;

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// A block volume: reads and writes whole blocks at block-aligned offsets.
pub trait JournalVolume {
    type Error: core::fmt::Debug;
    /// Usable bytes (a multiple of [`VOLUME_BLOCK`]).
    fn capacity(&self) -> u64;
    fn read(&mut self, offset: u64, out: &mut [u8]) -> Result<(), Self::Error>;
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Self::Error>;
    /// Makes every completed write durable.
    fn flush(&mut self) -> Result<(), Self::Error>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeStoreError<E> {
    Volume(E),
    /// The volume has fewer than 4 blocks.
    TooSmall {
        capacity: u64,
    },
    /// The journal would outgrow its slot; a checkpoint (`compact`) is needed, or a larger
    /// volume.
    SlotFull {
        needed: u64,
        slot_bytes: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    slot: u32,
    sequence: u64,
    len: u64,
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut block = vec![0u8; VOLUME_BLOCK];
        block[0..8].copy_from_slice(&MAGIC);
        block[8..12].copy_from_slice(&VERSION.to_le_bytes());
        block[12..16].copy_from_slice(&self.slot.to_le_bytes());
        block[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        block[24..32].copy_from_slice(&self.len.to_le_bytes());
        let crc = CASTAGNOLI.checksum(&block[..HEADER_FIELDS]);
        block[HEADER_FIELDS..HEADER_FIELDS + 4].copy_from_slice(&crc.to_le_bytes());
        block
    }

    fn decode(block: &[u8], slot_bytes: u64) -> Option<Header> {
        let field = |range: core::ops::Range<usize>| block.get(range);
        if field(0..8)? != MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(field(HEADER_FIELDS..HEADER_FIELDS + 4)?.try_into().ok()?);
        if CASTAGNOLI.checksum(field(0..HEADER_FIELDS)?) != crc {
            return None;
        }
        let version = u32::from_le_bytes(field(8..12)?.try_into().ok()?);
        let header = Header {
            slot: u32::from_le_bytes(field(12..16)?.try_into().ok()?),
            sequence: u64::from_le_bytes(field(16..24)?.try_into().ok()?),
            len: u64::from_le_bytes(field(24..32)?.try_into().ok()?),
        };
        (version == VERSION && header.slot < 2 && header.len <= slot_bytes).then_some(header)
    }
}

/// The journal on a [`JournalVolume`].
pub struct VolumeStore<V: JournalVolume> {
    volume: V,
    slot_bytes: u64,
    current: Header,
    /// The journal's last partial block as on the medium (appends complete it).
    tail: Vec<u8>,
}

impl<V: JournalVolume> VolumeStore<V> {
    /// Reads the headers of `volume`; a volume with no valid header holds an empty journal.
    pub fn open(mut volume: V) -> Result<Self, VolumeStoreError<V::Error>> {
        let capacity = volume.capacity() / VOLUME_BLOCK as u64 * VOLUME_BLOCK as u64;
        if capacity < 4 * VOLUME_BLOCK as u64 {
            return Err(VolumeStoreError::TooSmall { capacity });
        }
        let slot_blocks = (capacity / VOLUME_BLOCK as u64 - 2) / 2;
        let slot_bytes = slot_blocks * VOLUME_BLOCK as u64;
        let mut best: Option<Header> = None;
        let mut block = vec![0u8; VOLUME_BLOCK];
        for copy in 0..2u64 {
            volume
                .read(copy * VOLUME_BLOCK as u64, &mut block)
                .map_err(VolumeStoreError::Volume)?;
            if let Some(header) = Header::decode(&block, slot_bytes) {
                if best.is_none_or(|b| header.sequence > b.sequence) {
                    best = Some(header);
                }
            }
        }
        let current = best.unwrap_or(Header {
            slot: 0,
            sequence: 0,
            len: 0,
        });
        let mut store = VolumeStore {
            volume,
            slot_bytes,
            current,
            tail: Vec::new(),
        };
        store.tail = store.read_tail()?;
        Ok(store)
    }

    /// The most bytes one journal may hold.
    pub fn slot_bytes(&self) -> u64 {
        self.slot_bytes
    }

    /// The journal's length now.
    pub fn len(&self) -> u64 {
        self.current.len
    }

    pub fn is_empty(&self) -> bool {
        self.current.len == 0
    }

    pub fn volume(&self) -> &V {
        &self.volume
    }

    fn slot_offset(&self, slot: u32) -> u64 {
        (2 + u64::from(slot) * (self.slot_bytes / VOLUME_BLOCK as u64)) * VOLUME_BLOCK as u64
    }

    fn read_tail(&mut self) -> Result<Vec<u8>, VolumeStoreError<V::Error>> {
        let partial = (self.current.len % VOLUME_BLOCK as u64) as usize;
        if partial == 0 {
            return Ok(Vec::new());
        }
        let mut block = vec![0u8; VOLUME_BLOCK];
        let at = self.slot_offset(self.current.slot) + self.current.len - partial as u64;
        self.volume
            .read(at, &mut block)
            .map_err(VolumeStoreError::Volume)?;
        block.truncate(partial);
        Ok(block)
    }

    /// Writes the next header (the copy the current one is not in) and flushes.
    fn commit(&mut self, next: Header) -> Result<(), VolumeStoreError<V::Error>> {
        let copy = next.sequence % 2;
        self.volume
            .write(copy * VOLUME_BLOCK as u64, &next.encode())
            .map_err(VolumeStoreError::Volume)?;
        self.volume.flush().map_err(VolumeStoreError::Volume)?;
        self.current = next;
        Ok(())
    }

    /// Writes `bytes` at `start` of `slot`, which begins with `head` (the bytes of the
    /// block `start` falls in, before `start`), padded to whole blocks.
    fn write_blocks(
        &mut self,
        slot: u32,
        start: u64,
        head: &[u8],
        bytes: &[u8],
    ) -> Result<(), VolumeStoreError<V::Error>> {
        let mut data =
            Vec::with_capacity((head.len() + bytes.len()).div_ceil(VOLUME_BLOCK) * VOLUME_BLOCK);
        data.extend_from_slice(head);
        data.extend_from_slice(bytes);
        data.resize(data.len().div_ceil(VOLUME_BLOCK) * VOLUME_BLOCK, 0);
        let at = self.slot_offset(slot) + start - head.len() as u64;
        self.volume
            .write(at, &data)
            .map_err(VolumeStoreError::Volume)?;
        self.volume.flush().map_err(VolumeStoreError::Volume)
    }
}

impl<V: JournalVolume> UsageStore for VolumeStore<V> {
    type Error = VolumeStoreError<V::Error>;

    fn append(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        if bytes.is_empty() {
            return Ok(());
        }
        let needed = self.current.len + bytes.len() as u64;
        if needed > self.slot_bytes {
            return Err(VolumeStoreError::SlotFull {
                needed,
                slot_bytes: self.slot_bytes,
            });
        }
        let head = core::mem::take(&mut self.tail);
        let written = self.write_blocks(self.current.slot, self.current.len, &head, bytes);
        self.tail = head;
        written?;
        self.commit(Header {
            slot: self.current.slot,
            sequence: self.current.sequence + 1,
            len: needed,
        })?;
        let partial = (needed % VOLUME_BLOCK as u64) as usize;
        let mut tail = core::mem::take(&mut self.tail);
        tail.extend_from_slice(bytes);
        let keep = tail.len() - partial.min(tail.len());
        self.tail = tail.split_off(keep);
        Ok(())
    }

    fn read_all(&mut self) -> Result<Vec<u8>, Self::Error> {
        let len = self.current.len as usize;
        let mut out = vec![0u8; len.div_ceil(VOLUME_BLOCK) * VOLUME_BLOCK];
        if !out.is_empty() {
            let at = self.slot_offset(self.current.slot);
            self.volume
                .read(at, &mut out)
                .map_err(VolumeStoreError::Volume)?;
        }
        out.truncate(len);
        Ok(out)
    }

    fn compact(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        if bytes.len() as u64 > self.slot_bytes {
            return Err(VolumeStoreError::SlotFull {
                needed: bytes.len() as u64,
                slot_bytes: self.slot_bytes,
            });
        }
        let slot = 1 - self.current.slot;
        if !bytes.is_empty() {
            self.write_blocks(slot, 0, &[], bytes)?;
        }
        self.commit(Header {
            slot,
            sequence: self.current.sequence + 1,
            len: bytes.len() as u64,
        })?;
        let partial = bytes.len() % VOLUME_BLOCK;
        self.tail = bytes[bytes.len() - partial..].to_vec();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{push_frame, split_frames};
    use alloc::rc::Rc;
    use core::cell::RefCell;

    /// A volume whose power can be cut at the k-th write: that write lands torn (its
    /// first `keep` bytes), and nothing after it; writes are durable only once flushed.
    #[derive(Clone)]
    struct CutVolume {
        inner: Rc<RefCell<CutState>>,
    }

    struct CutState {
        durable: Vec<u8>,
        pending: Vec<(u64, Vec<u8>)>,
        writes: u64,
        cut_at: Option<(u64, usize)>,
        powered: bool,
    }

    #[derive(Debug)]
    struct PowerCut;

    impl CutVolume {
        fn new(bytes: usize) -> Self {
            CutVolume {
                inner: Rc::new(RefCell::new(CutState {
                    durable: vec![0; bytes],
                    pending: Vec::new(),
                    writes: 0,
                    cut_at: None,
                    powered: true,
                })),
            }
        }

        fn cut_at(&self, write: u64, keep: usize) {
            let mut s = self.inner.borrow_mut();
            s.cut_at = Some((s.writes + write, keep));
        }

        /// Power back: unflushed writes are lost (an arbitrary choice of the worst case).
        fn power_cycle(&self) {
            let mut s = self.inner.borrow_mut();
            s.pending.clear();
            s.cut_at = None;
            s.powered = true;
        }
    }

    impl JournalVolume for CutVolume {
        type Error = PowerCut;

        fn capacity(&self) -> u64 {
            self.inner.borrow().durable.len() as u64
        }

        fn read(&mut self, offset: u64, out: &mut [u8]) -> Result<(), PowerCut> {
            let s = self.inner.borrow();
            if !s.powered {
                return Err(PowerCut);
            }
            let at = offset as usize;
            out.copy_from_slice(&s.durable[at..at + out.len()]);
            for (o, data) in &s.pending {
                for (i, b) in data.iter().enumerate() {
                    let p = *o as usize + i;
                    if (at..at + out.len()).contains(&p) {
                        out[p - at] = *b;
                    }
                }
            }
            Ok(())
        }

        fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), PowerCut> {
            let mut s = self.inner.borrow_mut();
            if !s.powered {
                return Err(PowerCut);
            }
            assert_eq!(offset % VOLUME_BLOCK as u64, 0);
            assert_eq!(data.len() % VOLUME_BLOCK, 0);
            s.writes += 1;
            if let Some((k, keep)) = s.cut_at {
                if s.writes == k {
                    // The torn write reaches the medium partly; everything pending does too.
                    let pending = core::mem::take(&mut s.pending);
                    for (o, d) in pending {
                        s.durable[o as usize..o as usize + d.len()].copy_from_slice(&d);
                    }
                    let keep = keep.min(data.len());
                    let at = offset as usize;
                    s.durable[at..at + keep].copy_from_slice(&data[..keep]);
                    s.powered = false;
                    return Err(PowerCut);
                }
            }
            s.pending.push((offset, data.to_vec()));
            Ok(())
        }

        fn flush(&mut self) -> Result<(), PowerCut> {
            let mut s = self.inner.borrow_mut();
            if !s.powered {
                return Err(PowerCut);
            }
            let pending = core::mem::take(&mut s.pending);
            for (o, d) in pending {
                s.durable[o as usize..o as usize + d.len()].copy_from_slice(&d);
            }
            Ok(())
        }
    }

    fn frame(n: u8, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        push_frame(&mut out, &vec![n; len]);
        out
    }

    #[test]
    fn appends_and_compactions_read_back() {
        let volume = CutVolume::new(64 * VOLUME_BLOCK);
        let mut store = VolumeStore::open(volume.clone()).unwrap();
        assert_eq!(store.slot_bytes(), 31 * VOLUME_BLOCK as u64);
        assert_eq!(store.read_all().unwrap(), b"");
        let mut expect = Vec::new();
        for (n, len) in [(1u8, 10usize), (2, 5000), (3, 4086), (4, 1)] {
            let f = frame(n, len);
            store.append(&f).unwrap();
            expect.extend_from_slice(&f);
            assert_eq!(store.read_all().unwrap(), expect);
        }
        let mut reopened = VolumeStore::open(volume.clone()).unwrap();
        assert_eq!(reopened.read_all().unwrap(), expect);
        let checkpoint = frame(9, 7000);
        reopened.compact(&checkpoint).unwrap();
        reopened.append(&frame(10, 3)).unwrap();
        let mut want = checkpoint.clone();
        want.extend_from_slice(&frame(10, 3));
        assert_eq!(
            VolumeStore::open(volume.clone())
                .unwrap()
                .read_all()
                .unwrap(),
            want
        );
        // Too much for a slot: refused, nothing changes.
        let huge = vec![0u8; 32 * VOLUME_BLOCK];
        assert!(matches!(
            reopened.append(&huge),
            Err(VolumeStoreError::SlotFull { .. })
        ));
        assert!(matches!(
            reopened.compact(&huge),
            Err(VolumeStoreError::SlotFull { .. })
        ));
        assert_eq!(VolumeStore::open(volume).unwrap().read_all().unwrap(), want);
        assert!(matches!(
            VolumeStore::open(CutVolume::new(3 * VOLUME_BLOCK)),
            Err(VolumeStoreError::TooSmall { .. })
        ));
    }

    /// Every write of a workload cut at several tear points: the journal read back is the
    /// one before the interrupted operation or the one after it, and its frames all valid.
    #[test]
    fn a_power_cut_at_any_write_leaves_the_old_or_the_new_journal() {
        let ops: Vec<(bool, Vec<u8>)> = vec![
            (false, frame(1, 100)),
            (false, frame(2, 5000)),
            (true, frame(3, 9000)),
            (false, frame(4, 50)),
            (false, frame(5, 4000)),
            (true, frame(6, 10)),
            (false, frame(7, 8200)),
        ];
        // The writes the whole workload makes (for the cut points).
        let total_writes = {
            let volume = CutVolume::new(64 * VOLUME_BLOCK);
            let mut store = VolumeStore::open(volume.clone()).unwrap();
            for (compact, bytes) in &ops {
                if *compact {
                    store.compact(bytes).unwrap();
                } else {
                    store.append(bytes).unwrap();
                }
            }
            let writes = volume.inner.borrow().writes;
            writes
        };
        for cut in 1..=total_writes {
            for keep in [0, 1, 512, VOLUME_BLOCK - 1, VOLUME_BLOCK, 3 * VOLUME_BLOCK] {
                let volume = CutVolume::new(64 * VOLUME_BLOCK);
                let mut store = VolumeStore::open(volume.clone()).unwrap();
                volume.cut_at(cut, keep);
                let mut before = Vec::new();
                let mut after = Vec::new();
                for (compact, bytes) in &ops {
                    before = after.clone();
                    if *compact {
                        after = bytes.clone();
                    } else {
                        after.extend_from_slice(bytes);
                    }
                    let done = if *compact {
                        store.compact(bytes)
                    } else {
                        store.append(bytes)
                    };
                    if done.is_err() {
                        break;
                    }
                    before = after.clone();
                }
                volume.power_cycle();
                let read = VolumeStore::open(volume.clone())
                    .unwrap()
                    .read_all()
                    .unwrap();
                assert!(
                    read == before || read == after,
                    "cut {cut} keep {keep}: {} bytes, want {} or {}",
                    read.len(),
                    before.len(),
                    after.len()
                );
                assert_eq!(
                    split_frames(&read).1,
                    0,
                    "cut {cut} keep {keep}: torn frame"
                );
                // And it goes on from there.
                let mut resumed = VolumeStore::open(volume.clone()).unwrap();
                resumed.append(&frame(99, 20)).unwrap();
                let mut want = read.clone();
                want.extend_from_slice(&frame(99, 20));
                assert_eq!(VolumeStore::open(volume).unwrap().read_all().unwrap(), want);
            }
        }
    }
}
