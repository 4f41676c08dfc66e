//! Where kernel and initrd bytes come from: a VDI read through storage in Keel, a byte
//! slice in tests. Random access, because a bzImage is read from its header, then its
//! payload.

/// A read failed (the source's own error is for the source to log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceError {
    pub offset: u64,
}

/// A kernel or initrd image.
pub trait ImageSource {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` with the bytes at `offset`; reading past the end is an error.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError>;
}

/// An image held in memory.
#[derive(Debug, Clone, Copy)]
pub struct BytesSource<'a>(pub &'a [u8]);

impl ImageSource for BytesSource<'_> {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|start| self.0.get(start..start.checked_add(buf.len())?))
            .ok_or(SourceError { offset })?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// The first bytes of an image of `size` bytes: reads beyond them fail (what the stepped
/// builder probes a kernel's format from).
#[derive(Debug, Clone, Copy)]
pub struct PrefixSource<'a> {
    pub head: &'a [u8],
    pub size: u64,
}

impl ImageSource for PrefixSource<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        BytesSource(self.head).read_at(offset, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inside_and_refuses_past_the_end() {
        let mut s = BytesSource(b"0123456789");
        let mut buf = [0u8; 4];
        s.read_at(6, &mut buf).unwrap();
        assert_eq!(&buf, b"6789");
        assert_eq!(s.read_at(7, &mut buf), Err(SourceError { offset: 7 }));
        assert_eq!(
            s.read_at(u64::MAX, &mut buf),
            Err(SourceError { offset: u64::MAX })
        );
        assert_eq!(s.size(), 10);
    }
}
