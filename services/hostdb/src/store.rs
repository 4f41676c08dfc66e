//! Loading and saving the database in a volume's two slots.
//!
//! A save writes the whole database into the slot that does not hold the newest acknowledged
//! one, under a higher generation, and flushes. Until that flush returns, the other slot still
//! holds the previous database untouched; after it, the new one is durable. A load reads both
//! slots and takes the intact one with the higher generation. So after a power cut at any
//! point the database is exactly the last acknowledged one or the one being saved.

use alloc::vec::Vec;

use crate::codec::{self, EncodeError};
use crate::slot::{Header, SlotLayout, SlotProblem, SlotState, HEADER_LEN};
use crate::value::Database;
use crate::volume::{DbVolume, BLOCK};

/// Failures of [`HostDb::open`] and [`HostDb::save`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostDbError<E> {
    /// The volume failed a read, write or flush.
    Volume(E),
    /// The volume cannot hold two slots of one block each.
    VolumeTooSmall { capacity: u64 },
    /// The encoded database does not fit a slot; nothing was written.
    TooLarge { payload_capacity: usize },
    /// The database nests values deeper than the format allows; nothing was written.
    TooDeep,
    /// The database has more items than the format allows; nothing was written.
    TooManyItems,
    /// A buffer could not be allocated; nothing was written.
    OutOfMemory,
    /// The volume holds a database of a newer format version and no readable one; saving
    /// would destroy it, so this store never writes.
    ReadOnly { version: u32 },
}

/// Why [`Opened::loaded`] holds no database. In every case the caller starts with an empty
/// database (and, except for `Blank`, says so once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoDatabase {
    /// Both slots were never written: a new volume.
    Blank,
    /// No valid database: neither slot holds an intact one.
    NoValidDatabase { slots: [SlotState; 2] },
    /// A newer Keel wrote this volume; the store refuses to save over it.
    UnsupportedVersion(u32),
}

/// The database a load found, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub database: Database,
    pub generation: u64,
    pub slot: usize,
    /// The state of the slot not chosen (an older database, blank, or a torn save).
    pub other_slot: SlotState,
}

/// The outcome of [`HostDb::open`].
#[derive(Debug)]
pub struct Opened {
    /// Saves go through this handle.
    pub store: HostDb,
    pub loaded: Result<Loaded, NoDatabase>,
}

/// What a successful save wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveReport {
    pub generation: u64,
    pub slot: usize,
    pub payload_bytes: usize,
}

/// The handle that saves a database into one volume. It remembers which slot holds the
/// newest acknowledged database so a save never overwrites it.
#[derive(Debug)]
pub struct HostDb {
    layout: SlotLayout,
    /// The slot the next save writes.
    next_slot: usize,
    /// The highest generation seen on the volume or used by a save attempt.
    generation: u64,
    read_only: Option<u32>,
}

impl HostDb {
    /// Reads both slots of `volume` and loads the newest intact database, if any.
    ///
    /// Fails only when the volume cannot be read, is too small, or memory runs out; a volume
    /// without a valid database is a normal outcome ([`NoDatabase`]).
    pub fn open<V: DbVolume>(volume: &mut V) -> Result<Opened, HostDbError<V::Error>> {
        let capacity = volume.capacity();
        let layout =
            SlotLayout::for_capacity(capacity).ok_or(HostDbError::VolumeTooSmall { capacity })?;
        let first = read_slot(volume, &layout, 0)?;
        let second = read_slot(volume, &layout, 1)?;
        let states = [first.state, second.state];
        let generation = first
            .header_generation
            .unwrap_or(0)
            .max(second.header_generation.unwrap_or(0));
        let mut databases = [first.database, second.database];
        // The newer intact slot; slot 0 on a tie, which saves never produce.
        let chosen = match states {
            [SlotState::Valid { generation: a }, SlotState::Valid { generation: b }] => {
                Some(usize::from(b > a))
            }
            [SlotState::Valid { .. }, _] => Some(0),
            [_, SlotState::Valid { .. }] => Some(1),
            _ => None,
        };
        let unsupported = states.iter().find_map(|state| match state {
            SlotState::UnsupportedVersion(version) => Some(*version),
            _ => None,
        });
        let loaded = match chosen {
            Some(slot) => match (databases[slot].take(), states[slot]) {
                (Some(database), SlotState::Valid { generation }) => Ok(Loaded {
                    database,
                    generation,
                    slot,
                    other_slot: states[1 - slot],
                }),
                // `read_slot` returns a database exactly for valid slots.
                _ => Err(NoDatabase::NoValidDatabase { slots: states }),
            },
            None => Err(match unsupported {
                Some(version) => NoDatabase::UnsupportedVersion(version),
                None if states == [SlotState::Blank; 2] => NoDatabase::Blank,
                None => NoDatabase::NoValidDatabase { slots: states },
            }),
        };
        let next_slot = match &loaded {
            Ok(loaded) => 1 - loaded.slot,
            Err(_) => 0,
        };
        let read_only = match loaded {
            Err(NoDatabase::UnsupportedVersion(version)) => Some(version),
            _ => None,
        };
        Ok(Opened {
            store: HostDb {
                layout,
                next_slot,
                generation,
                read_only,
            },
            loaded,
        })
    }

    /// The largest encoded database a save accepts.
    pub fn payload_capacity(&self) -> usize {
        self.layout.payload_capacity()
    }

    pub fn layout(&self) -> SlotLayout {
        self.layout
    }

    /// Writes `database` durably. When this returns `Ok` the database survives any power cut;
    /// when it returns an error the volume holds (after a cut) the previous database or this
    /// one, and the next save still never touches the slot of the last acknowledged one.
    pub fn save<V: DbVolume>(
        &mut self,
        volume: &mut V,
        database: &Database,
    ) -> Result<SaveReport, HostDbError<V::Error>> {
        if let Some(version) = self.read_only {
            return Err(HostDbError::ReadOnly { version });
        }
        let payload_capacity = self.layout.payload_capacity();
        let mut image = Vec::new();
        image
            .try_reserve(HEADER_LEN + BLOCK)
            .map_err(|_| HostDbError::OutOfMemory)?;
        image.resize(HEADER_LEN, 0);
        codec::encode_into(database, &mut image, HEADER_LEN + payload_capacity).map_err(
            |error| match error {
                EncodeError::TooLarge { .. } => HostDbError::TooLarge { payload_capacity },
                EncodeError::TooDeep => HostDbError::TooDeep,
                EncodeError::TooManyItems => HostDbError::TooManyItems,
                EncodeError::OutOfMemory => HostDbError::OutOfMemory,
            },
        )?;
        let payload = image.get(HEADER_LEN..).unwrap_or_default();
        let payload_bytes = payload.len();
        let header = Header {
            generation: self.generation + 1,
            payload_len: payload_bytes as u64,
            payload_crc: keel_storage::crc32c(payload),
        };
        if let Some(target) = image.get_mut(..HEADER_LEN) {
            target.copy_from_slice(&header.encode());
        }
        let padded = image.len().next_multiple_of(BLOCK);
        image
            .try_reserve_exact(padded - image.len())
            .map_err(|_| HostDbError::OutOfMemory)?;
        image.resize(padded, 0);
        // From the first write on, the slot may hold this generation after a cut: never
        // reuse it, even if the save fails.
        self.generation = header.generation;
        let slot = self.next_slot;
        volume
            .write(self.layout.offset(slot), &image)
            .map_err(HostDbError::Volume)?;
        volume.flush().map_err(HostDbError::Volume)?;
        self.next_slot = 1 - slot;
        Ok(SaveReport {
            generation: header.generation,
            slot,
            payload_bytes,
        })
    }
}

struct SlotRead {
    state: SlotState,
    /// The generation of a header whose own CRC held, valid payload or not.
    header_generation: Option<u64>,
    database: Option<Database>,
}

fn read_slot<V: DbVolume>(
    volume: &mut V,
    layout: &SlotLayout,
    slot: usize,
) -> Result<SlotRead, HostDbError<V::Error>> {
    let offset = layout.offset(slot);
    let mut first = alloc::vec![0u8; BLOCK];
    volume
        .read(offset, &mut first)
        .map_err(HostDbError::Volume)?;
    let header = match Header::parse(&first, layout) {
        Ok(header) => header,
        Err(state) => {
            return Ok(SlotRead {
                state,
                header_generation: None,
                database: None,
            })
        }
    };
    let damaged = |problem| SlotRead {
        state: SlotState::Damaged(problem),
        header_generation: Some(header.generation),
        database: None,
    };
    // `Header::parse` bounded the length by the slot, which is at most `MAX_SLOT_BYTES`.
    let Ok(payload_len) = usize::try_from(header.payload_len) else {
        return Ok(damaged(SlotProblem::Length));
    };
    let total = (HEADER_LEN + payload_len).next_multiple_of(BLOCK);
    let mut image = Vec::new();
    image
        .try_reserve_exact(total)
        .map_err(|_| HostDbError::OutOfMemory)?;
    image.extend_from_slice(&first);
    image.resize(total, 0);
    if let Some(rest) = image.get_mut(BLOCK..) {
        if !rest.is_empty() {
            volume
                .read(offset + BLOCK as u64, rest)
                .map_err(HostDbError::Volume)?;
        }
    }
    let payload = image
        .get(HEADER_LEN..HEADER_LEN + payload_len)
        .unwrap_or_default();
    if keel_storage::crc32c(payload) != header.payload_crc {
        return Ok(damaged(SlotProblem::PayloadChecksum));
    }
    match codec::decode(payload) {
        Ok(database) => Ok(SlotRead {
            state: SlotState::Valid {
                generation: header.generation,
            },
            header_generation: Some(header.generation),
            database: Some(database),
        }),
        Err(error) => Ok(damaged(SlotProblem::Decode(error))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::FORMAT_VERSION;
    use crate::value::FieldValue;
    use alloc::string::String;

    /// A volume in memory that can be told to fail its next write or flush.
    struct VecVolume {
        bytes: Vec<u8>,
        fail_write: bool,
        fail_flush: bool,
        writes: Vec<u64>,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Failed;

    impl VecVolume {
        fn new(capacity: usize) -> Self {
            VecVolume {
                bytes: vec![0; capacity],
                fail_write: false,
                fail_flush: false,
                writes: Vec::new(),
            }
        }
    }

    impl DbVolume for VecVolume {
        type Error = Failed;

        fn capacity(&self) -> u64 {
            self.bytes.len() as u64
        }

        fn read(&mut self, offset: u64, out: &mut [u8]) -> Result<(), Failed> {
            let start = offset as usize;
            out.copy_from_slice(&self.bytes[start..start + out.len()]);
            Ok(())
        }

        fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Failed> {
            assert_eq!(offset % BLOCK as u64, 0);
            assert_eq!(data.len() % BLOCK, 0);
            self.writes.push(offset);
            if core::mem::take(&mut self.fail_write) {
                return Err(Failed);
            }
            let start = offset as usize;
            self.bytes[start..start + data.len()].copy_from_slice(data);
            Ok(())
        }

        fn flush(&mut self) -> Result<(), Failed> {
            if core::mem::take(&mut self.fail_flush) {
                return Err(Failed);
            }
            Ok(())
        }
    }

    const CAPACITY: usize = 8 * BLOCK;

    fn db(tag: &str) -> Database {
        let mut database = Database::new();
        database.insert(
            "VM",
            "OpaqueRef:1",
            [(String::from("name_label"), FieldValue::String(tag.into()))].into(),
        );
        database
    }

    fn open(volume: &mut VecVolume) -> Opened {
        HostDb::open(volume).unwrap()
    }

    fn loaded(volume: &mut VecVolume) -> Loaded {
        open(volume).loaded.unwrap()
    }

    #[test]
    fn a_blank_volume_holds_no_database_and_takes_a_first_save() {
        let mut volume = VecVolume::new(CAPACITY);
        let mut opened = open(&mut volume);
        assert_eq!(opened.loaded, Err(NoDatabase::Blank));
        let report = opened.store.save(&mut volume, &db("first")).unwrap();
        assert_eq!((report.generation, report.slot), (1, 0));
        let again = loaded(&mut volume);
        assert_eq!(again.database, db("first"));
        assert_eq!((again.generation, again.slot), (1, 0));
        assert_eq!(again.other_slot, SlotState::Blank);
    }

    #[test]
    fn saves_alternate_slots_and_the_newest_wins() {
        let mut volume = VecVolume::new(CAPACITY);
        let mut store = open(&mut volume).store;
        for (i, tag) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            let report = store.save(&mut volume, &db(tag)).unwrap();
            assert_eq!((report.generation, report.slot), (i as u64 + 1, i % 2));
            let now = loaded(&mut volume);
            assert_eq!(now.database, db(tag));
            assert_eq!(
                now.other_slot,
                if i == 0 {
                    SlotState::Blank
                } else {
                    SlotState::Valid {
                        generation: i as u64,
                    }
                }
            );
        }
        // A store opened later continues the sequence in the other slot.
        let mut store = open(&mut volume).store;
        let report = store.save(&mut volume, &db("f")).unwrap();
        assert_eq!((report.generation, report.slot), (6, 1));
    }

    #[test]
    fn a_torn_newest_slot_falls_back_and_is_the_next_one_written() {
        let mut volume = VecVolume::new(CAPACITY);
        let mut store = open(&mut volume).store;
        store.save(&mut volume, &db("old")).unwrap();
        store.save(&mut volume, &db("new")).unwrap();
        // Slot 1 holds "new"; damage one payload byte.
        let slot1 = 4 * BLOCK;
        volume.bytes[slot1 + HEADER_LEN + 3] ^= 0x40;
        let opened = open(&mut volume);
        let found = opened.loaded.unwrap();
        assert_eq!(found.database, db("old"));
        assert_eq!(
            found.other_slot,
            SlotState::Damaged(SlotProblem::PayloadChecksum)
        );
        let mut store = opened.store;
        volume.writes.clear();
        let report = store.save(&mut volume, &db("newer")).unwrap();
        assert_eq!(volume.writes, [slot1 as u64]);
        // Above the damaged slot's generation too.
        assert_eq!(report.generation, 3);
        assert_eq!(loaded(&mut volume).database, db("newer"));
    }

    #[test]
    fn both_slots_bad_is_no_valid_database() {
        let mut volume = VecVolume::new(CAPACITY);
        let mut store = open(&mut volume).store;
        store.save(&mut volume, &db("a")).unwrap();
        store.save(&mut volume, &db("b")).unwrap();
        volume.bytes[HEADER_LEN] ^= 1;
        volume.bytes[4 * BLOCK + 20] ^= 1;
        let opened = open(&mut volume);
        assert_eq!(
            opened.loaded,
            Err(NoDatabase::NoValidDatabase {
                slots: [
                    SlotState::Damaged(SlotProblem::PayloadChecksum),
                    SlotState::Damaged(SlotProblem::HeaderChecksum),
                ]
            })
        );
        // The caller starts empty; saving works again and wins over the debris.
        let mut store = opened.store;
        store.save(&mut volume, &db("fresh")).unwrap();
        assert_eq!(loaded(&mut volume).database, db("fresh"));
    }

    #[test]
    fn a_failed_save_never_costs_the_acknowledged_database() {
        let mut volume = VecVolume::new(CAPACITY);
        let mut store = open(&mut volume).store;
        store.save(&mut volume, &db("kept")).unwrap();
        volume.fail_write = true;
        assert_eq!(
            store.save(&mut volume, &db("lost")),
            Err(HostDbError::Volume(Failed))
        );
        volume.fail_flush = true;
        assert_eq!(
            store.save(&mut volume, &db("also lost")),
            Err(HostDbError::Volume(Failed))
        );
        // Every attempt went to slot 1: slot 0 still holds "kept".
        assert_eq!(volume.writes, [0, 4 * BLOCK as u64, 4 * BLOCK as u64]);
        let report = store.save(&mut volume, &db("retried")).unwrap();
        assert_eq!((report.slot, report.generation), (1, 4));
        assert_eq!(loaded(&mut volume).database, db("retried"));
    }

    #[test]
    fn a_database_larger_than_a_slot_is_refused_without_writing() {
        let mut volume = VecVolume::new(CAPACITY);
        let mut store = open(&mut volume).store;
        store.save(&mut volume, &db("small")).unwrap();
        let capacity = store.payload_capacity();
        assert_eq!(capacity, 4 * BLOCK - HEADER_LEN);
        let big = db(&"x".repeat(capacity));
        assert_eq!(
            store.save(&mut volume, &big),
            Err(HostDbError::TooLarge {
                payload_capacity: capacity
            })
        );
        assert_eq!(volume.writes, [0]);
        // Exactly full fits.
        let overhead = codec::encode(&db("")).unwrap().len();
        let full = db(&"y".repeat(capacity - overhead - 1));
        assert_eq!(codec::encode(&full).unwrap().len(), capacity);
        store.save(&mut volume, &full).unwrap();
        assert_eq!(loaded(&mut volume).database, full);
    }

    #[test]
    fn a_newer_format_without_a_readable_slot_makes_the_store_read_only() {
        let mut volume = VecVolume::new(CAPACITY);
        let mut store = open(&mut volume).store;
        store.save(&mut volume, &db("v1")).unwrap();
        volume.bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let crc = keel_storage::crc32c(&volume.bytes[..60]);
        volume.bytes[60..64].copy_from_slice(&crc.to_le_bytes());
        let opened = open(&mut volume);
        assert_eq!(
            opened.loaded,
            Err(NoDatabase::UnsupportedVersion(FORMAT_VERSION + 1))
        );
        let mut store = opened.store;
        volume.writes.clear();
        assert_eq!(
            store.save(&mut volume, &db("v1 again")),
            Err(HostDbError::ReadOnly {
                version: FORMAT_VERSION + 1
            })
        );
        assert!(volume.writes.is_empty());
    }

    #[test]
    fn a_volume_too_small_for_two_blocks_is_refused() {
        let mut volume = VecVolume::new(2 * BLOCK - 1);
        assert_eq!(
            HostDb::open(&mut volume).err(),
            Some(HostDbError::VolumeTooSmall {
                capacity: 2 * BLOCK as u64 - 1
            })
        );
    }

    #[test]
    fn garbage_in_both_slots_is_damage_not_a_panic() {
        let mut state = 0x1234_5678_9abc_def1u64;
        for round in 0..200 {
            let mut volume = VecVolume::new(CAPACITY);
            if round % 2 == 0 {
                // A valid save first, then garbage over part of it.
                open(&mut volume)
                    .store
                    .save(&mut volume, &db("victim"))
                    .unwrap();
            }
            for _ in 0..64 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % CAPACITY;
                volume.bytes[at] = (state >> 32) as u8;
            }
            let opened = open(&mut volume);
            if let Ok(found) = opened.loaded {
                assert_eq!(found.database, db("victim"), "round {round}");
            }
        }
    }
}
