//! The backend's side of the console rings: drain the guest's `out` ring, fill its `in` ring.
//!
//! The guest owns the page and may write any index at any time. Each operation reads the
//! peer's index once, checks the pair describes at most one ring's worth of bytes, and then
//! uses only that snapshot, masking every slot, so no index value can make us touch memory
//! outside the ring or loop longer than one ring. A pair that claims more than the ring holds
//! is [`RingError::Corrupt`]; the console then disconnects for good (as xenconsoled does).

use crate::page::{ConsolePage, Index, IN_RING_SIZE, OUT_RING_SIZE};

/// Which of the two rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// Backend → guest.
    In,
    /// Guest → backend.
    Out,
}

/// The guest broke the ring protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// `prod - cons` exceeds the ring's size.
    Corrupt { ring: Ring, cons: u32, prod: u32 },
}

fn in_flight(ring: Ring, size: usize, cons: u32, prod: u32) -> Result<usize, RingError> {
    let n = prod.wrapping_sub(cons) as usize;
    if n > size {
        return Err(RingError::Corrupt { ring, cons, prod });
    }
    Ok(n)
}

/// Both rings of one console page.
#[derive(Debug)]
pub struct ConsoleRing<P> {
    page: P,
}

impl<P: ConsolePage> ConsoleRing<P> {
    pub fn new(page: P) -> Self {
        ConsoleRing { page }
    }

    pub fn page(&self) -> &P {
        &self.page
    }

    pub fn into_page(self) -> P {
        self.page
    }

    /// Bytes the guest has written to `out` and we have not read.
    pub fn output_pending(&self) -> Result<usize, RingError> {
        let cons = self.page.load_index(Index::OutCons);
        let prod = self.page.load_index(Index::OutProd);
        in_flight(Ring::Out, OUT_RING_SIZE, cons, prod)
    }

    /// Copies up to `buf.len()` bytes of guest output into `buf` and consumes them; returns
    /// how many. The caller notifies the guest when this returned more than 0 (it may be
    /// waiting for room).
    pub fn read_output(&self, buf: &mut [u8]) -> Result<usize, RingError> {
        let cons = self.page.load_index(Index::OutCons);
        let prod = self.page.load_index(Index::OutProd);
        let n = in_flight(Ring::Out, OUT_RING_SIZE, cons, prod)?.min(buf.len());
        for (i, byte) in buf.iter_mut().take(n).enumerate() {
            let slot = cons.wrapping_add(i as u32) as usize % OUT_RING_SIZE;
            *byte = self.page.out_byte(slot);
        }
        // Release: our reads of the slots happen before the guest may reuse them.
        self.page
            .store_index(Index::OutCons, cons.wrapping_add(n as u32));
        Ok(n)
    }

    /// Room in the `in` ring.
    pub fn input_space(&self) -> Result<usize, RingError> {
        let cons = self.page.load_index(Index::InCons);
        let prod = self.page.load_index(Index::InProd);
        Ok(IN_RING_SIZE - in_flight(Ring::In, IN_RING_SIZE, cons, prod)?)
    }

    /// Copies as much of `data` as fits into the `in` ring and publishes it; returns how
    /// many bytes. The caller notifies the guest when this returned more than 0.
    pub fn write_input(&self, data: &[u8]) -> Result<usize, RingError> {
        let cons = self.page.load_index(Index::InCons);
        let prod = self.page.load_index(Index::InProd);
        let free = IN_RING_SIZE - in_flight(Ring::In, IN_RING_SIZE, cons, prod)?;
        let n = free.min(data.len());
        for (i, byte) in data.iter().take(n).enumerate() {
            let slot = prod.wrapping_add(i as u32) as usize % IN_RING_SIZE;
            self.page.set_in_byte(slot, *byte);
        }
        // Release: the bytes are visible before the index that publishes them.
        self.page
            .store_index(Index::InProd, prod.wrapping_add(n as u32));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::BytePage;

    #[test]
    fn drains_output_across_the_wrap() {
        let page = BytePage::new();
        page.set_index(Index::OutCons, u32::MAX - 2);
        page.set_index(Index::OutProd, u32::MAX - 2);
        page.guest_write_output(b"hello, world").unwrap();
        let ring = ConsoleRing::new(&page);
        assert_eq!(ring.output_pending(), Ok(12));
        let mut buf = [0u8; 5];
        assert_eq!(ring.read_output(&mut buf), Ok(5));
        assert_eq!(&buf, b"hello");
        let mut rest = [0u8; 64];
        assert_eq!(ring.read_output(&mut rest), Ok(7));
        assert_eq!(&rest[..7], b", world");
        assert_eq!(ring.read_output(&mut rest), Ok(0));
        assert_eq!(page.index(Index::OutCons), (u32::MAX - 2).wrapping_add(12));
    }

    #[test]
    fn a_full_output_ring_is_legal() {
        let page = BytePage::new();
        let data: alloc::vec::Vec<u8> = (0..OUT_RING_SIZE).map(|i| i as u8).collect();
        page.guest_write_output(&data).unwrap();
        let ring = ConsoleRing::new(&page);
        let mut buf = alloc::vec![0u8; 4096];
        assert_eq!(ring.read_output(&mut buf), Ok(OUT_RING_SIZE));
        assert_eq!(&buf[..OUT_RING_SIZE], &data[..]);
    }

    #[test]
    fn hostile_output_indices_are_corrupt_and_nothing_is_consumed() {
        let page = BytePage::new();
        for (cons, prod) in [(0, 2049), (10, 9), (0x8000_0000, 0), (5, 5 + 4096)] {
            page.set_index(Index::OutCons, cons);
            page.set_index(Index::OutProd, prod);
            let ring = ConsoleRing::new(&page);
            let mut buf = [0u8; 4096];
            assert_eq!(
                ring.read_output(&mut buf),
                Err(RingError::Corrupt {
                    ring: Ring::Out,
                    cons,
                    prod
                })
            );
            assert_eq!(page.index(Index::OutCons), cons);
        }
    }

    #[test]
    fn input_fills_to_capacity_and_wraps() {
        let page = BytePage::new();
        page.set_index(Index::InCons, u32::MAX - 1);
        page.set_index(Index::InProd, u32::MAX - 1);
        let ring = ConsoleRing::new(&page);
        assert_eq!(ring.input_space(), Ok(IN_RING_SIZE));
        let data = alloc::vec![b'x'; IN_RING_SIZE + 10];
        assert_eq!(ring.write_input(&data), Ok(IN_RING_SIZE));
        assert_eq!(ring.write_input(b"more"), Ok(0));
        assert_eq!(page.guest_read_input(3).unwrap(), b"xxx");
        assert_eq!(ring.write_input(b"abcd"), Ok(3));
        let all = page.guest_read_input(usize::MAX).unwrap();
        assert_eq!(all.len(), IN_RING_SIZE);
        assert_eq!(&all[all.len() - 3..], b"abc");
    }

    #[test]
    fn hostile_input_indices_are_corrupt_and_nothing_is_written() {
        let page = BytePage::new();
        page.set_index(Index::InCons, 100);
        page.set_index(Index::InProd, 100 + 1025);
        let ring = ConsoleRing::new(&page);
        assert!(ring.input_space().is_err());
        assert_eq!(
            ring.write_input(b"x"),
            Err(RingError::Corrupt {
                ring: Ring::In,
                cons: 100,
                prod: 1125
            })
        );
        assert_eq!(page.index(Index::InProd), 1125);
    }
}
