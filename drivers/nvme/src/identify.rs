//! The Identify data structures (4096 bytes each): what the controller and each namespace
//! say about themselves. Only the fields Keel uses are decoded.

use alloc::string::String;
use alloc::vec::Vec;

/// Length of every Identify structure.
pub const IDENTIFY_LEN: usize = 4096;

fn le16(data: &[u8], at: usize) -> u16 {
    match data.get(at..at + 2) {
        Some(b) => u16::from_le_bytes([b[0], b[1]]),
        None => 0,
    }
}

fn le32(data: &[u8], at: usize) -> u32 {
    match data.get(at..at + 4) {
        Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

fn le64(data: &[u8], at: usize) -> u64 {
    u64::from(le32(data, at)) | (u64::from(le32(data, at + 4)) << 32)
}

/// An ASCII field padded with spaces, trimmed; anything that is not printable ASCII becomes
/// `?` so the text is safe to log and to compare.
fn ascii(data: &[u8], at: usize, len: usize) -> String {
    let bytes = data.get(at..at + len).unwrap_or_default();
    let text: String = bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect();
    String::from(text.trim_matches(|c| c == ' ' || c == '?'))
}

/// Identify Controller (CNS 01h).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerIdentity {
    pub vendor_id: u16,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// Maximum data transfer size as a power of two of the minimum page size; 0 = no limit.
    pub mdts: u8,
    /// Highest namespace id.
    pub namespace_count: u32,
    /// Optional NVM commands: bit 2 = Dataset Management (deallocate).
    pub oncs: u16,
    /// A volatile write cache is present (Flush matters).
    pub volatile_write_cache: bool,
    /// Largest number of outstanding commands the controller supports (0 = not reported).
    pub max_commands: u16,
}

impl ControllerIdentity {
    pub fn parse(data: &[u8]) -> Self {
        ControllerIdentity {
            vendor_id: le16(data, 0),
            serial: ascii(data, 4, 20),
            model: ascii(data, 24, 40),
            firmware: ascii(data, 64, 8),
            mdts: data.get(77).copied().unwrap_or(0),
            max_commands: le16(data, 514),
            namespace_count: le32(data, 516),
            oncs: le16(data, 520),
            volatile_write_cache: data.get(525).is_some_and(|v| v & 1 == 1),
        }
    }

    pub fn supports_deallocate(&self) -> bool {
        self.oncs & (1 << 2) != 0
    }

    /// The largest transfer in bytes, given the minimum page size; `None` = no limit.
    pub fn max_transfer_bytes(&self, min_page_size: u64) -> Option<u64> {
        if self.mdts == 0 {
            return None;
        }
        min_page_size.checked_shl(u32::from(self.mdts))
    }
}

/// Identify Namespace (CNS 00h) for one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceIdentity {
    pub nsid: u32,
    /// Size in logical blocks.
    pub size_blocks: u64,
    /// Bytes per logical block of the format in use.
    pub block_size: u32,
    /// Metadata bytes per block of the format in use (Keel only uses formats without).
    pub metadata_size: u16,
}

impl NamespaceIdentity {
    /// `None` for an inactive namespace (all zero) or one whose block size is not a power of
    /// two between 512 bytes and 64 KiB.
    pub fn parse(nsid: u32, data: &[u8]) -> Option<Self> {
        let size_blocks = le64(data, 0);
        if size_blocks == 0 {
            return None;
        }
        let flbas = data.get(26).copied().unwrap_or(0);
        // Bits 3:0 index the format; bits 6:5 extend it beyond 16 formats.
        let index = usize::from(flbas & 0x0f) | (usize::from((flbas >> 5) & 0x3) << 4);
        let format = le32(data, 128 + 4 * index);
        let lbads = (format >> 16) & 0xff;
        if !(9..=16).contains(&lbads) {
            return None;
        }
        Some(NamespaceIdentity {
            nsid,
            size_blocks,
            block_size: 1 << lbads,
            metadata_size: format as u16,
        })
    }
}

/// The active namespace list (CNS 02h): non-zero ids in increasing order.
pub fn active_namespaces(data: &[u8]) -> Vec<u32> {
    data.chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .take_while(|&id| id != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn parses_controller_fields() {
        let mut d = vec![0u8; IDENTIFY_LEN];
        d[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        d[4..24].copy_from_slice(b"keel0               ");
        d[24..30].copy_from_slice(b"QEMU N");
        d[30..64].fill(b' ');
        d[77] = 7;
        d[516..520].copy_from_slice(&3u32.to_le_bytes());
        d[520..522].copy_from_slice(&0x0004u16.to_le_bytes());
        d[525] = 1;
        let c = ControllerIdentity::parse(&d);
        assert_eq!(c.vendor_id, 0x1b36);
        assert_eq!(c.serial, "keel0");
        assert_eq!(c.model, "QEMU N");
        assert_eq!(c.namespace_count, 3);
        assert!(c.supports_deallocate());
        assert!(c.volatile_write_cache);
        assert_eq!(c.max_transfer_bytes(4096), Some(512 * 1024));
    }

    #[test]
    fn no_mdts_means_no_limit_and_junk_serials_are_sanitised() {
        let mut d = vec![0u8; IDENTIFY_LEN];
        d[4..9].copy_from_slice(b"a\x01b\xffc");
        let c = ControllerIdentity::parse(&d);
        assert_eq!(c.max_transfer_bytes(4096), None);
        assert_eq!(c.serial, "a?b?c");
        // A short buffer decodes as zeros instead of panicking.
        assert_eq!(ControllerIdentity::parse(&[1, 2, 3]).namespace_count, 0);
    }

    #[test]
    fn parses_namespace_format_in_use() {
        let mut d = vec![0u8; IDENTIFY_LEN];
        d[0..8].copy_from_slice(&1000u64.to_le_bytes());
        d[25] = 1; // two formats
        d[26] = 1; // using format 1
        d[128..132].copy_from_slice(&(9u32 << 16).to_le_bytes());
        d[132..136].copy_from_slice(&(12u32 << 16).to_le_bytes());
        let ns = NamespaceIdentity::parse(1, &d).unwrap();
        assert_eq!((ns.size_blocks, ns.block_size), (1000, 4096));
        // Inactive (zero size) and absurd block sizes are refused.
        assert_eq!(NamespaceIdentity::parse(2, &[0; IDENTIFY_LEN]), None);
        d[134] = 30;
        assert_eq!(NamespaceIdentity::parse(1, &d), None);
    }

    #[test]
    fn active_list_stops_at_zero() {
        let mut d = vec![0u8; IDENTIFY_LEN];
        d[0..4].copy_from_slice(&1u32.to_le_bytes());
        d[4..8].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(active_namespaces(&d), vec![1, 4]);
    }
}
