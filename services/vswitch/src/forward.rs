//! What [`crate::Switch::ingress`] decides: the ports a frame goes to and how each copy
//! differs from the frame that came in (an 802.1Q tag pushed or popped), so the caller
//! copies the frame once per destination straight into that port's buffer.

use crate::config::PortId;
use crate::counters::DropReason;
use crate::wire::{ETHERTYPE_VLAN, VLAN_TAG};

/// How to turn the received frame into the frame a destination gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameEdit {
    /// The bytes as received.
    AsIs,
    /// Insert an 802.1Q tag with this VLAN ID (priority 0) after the source MAC.
    PushTag(u16),
    /// Remove the 802.1Q tag after the source MAC.
    PopTag,
}

/// Why [`FrameEdit::write`] could not produce the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditError {
    /// `out` is shorter than [`FrameEdit::output_len`].
    BufferTooSmall { needed: usize },
    /// The frame does not have the header the edit needs (`PopTag` on an untagged frame,
    /// or anything shorter than an Ethernet header). Never the case for a frame and the
    /// edit the switch returned for it.
    NotApplicable,
}

impl FrameEdit {
    /// The length of the edited frame.
    pub fn output_len(self, input_len: usize) -> usize {
        match self {
            FrameEdit::AsIs => input_len,
            FrameEdit::PushTag(_) => input_len + VLAN_TAG,
            FrameEdit::PopTag => input_len.saturating_sub(VLAN_TAG),
        }
    }

    /// Writes the edited `frame` into `out` and returns its length.
    pub fn write(self, frame: &[u8], out: &mut [u8]) -> Result<usize, EditError> {
        if frame.len() < 14 {
            return Err(EditError::NotApplicable);
        }
        let needed = self.output_len(frame.len());
        let out = out
            .get_mut(..needed)
            .ok_or(EditError::BufferTooSmall { needed })?;
        match self {
            FrameEdit::AsIs => out.copy_from_slice(frame),
            FrameEdit::PushTag(vid) => {
                out[..12].copy_from_slice(&frame[..12]);
                out[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
                out[14..16].copy_from_slice(&(vid & 0x0fff).to_be_bytes());
                out[16..].copy_from_slice(&frame[12..]);
            }
            FrameEdit::PopTag => {
                if frame.len() < 18 || frame[12..14] != ETHERTYPE_VLAN.to_be_bytes() {
                    return Err(EditError::NotApplicable);
                }
                out[..12].copy_from_slice(&frame[..12]);
                out[12..].copy_from_slice(&frame[16..]);
            }
        }
        Ok(needed)
    }
}

/// One copy of the frame to hand to one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub port: PortId,
    pub edit: FrameEdit,
}

/// The outcome of one received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Sent to one known port.
    Unicast,
    /// Sent to every other port of the network (broadcast, multicast or unknown unicast);
    /// the list may be empty when the port is alone on its network.
    Flooded,
    /// Thrown away and counted (see [`DropReason`] for on which port).
    Dropped(DropReason),
    /// The port id is not (or no longer) on the switch: nothing was counted.
    NoSuchPort,
}

/// The decision for one frame: borrowed from the switch until its next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward<'a> {
    pub verdict: Verdict,
    pub deliveries: &'a [Delivery],
}

impl Forward<'_> {
    /// The edit for `port`, if the frame goes there.
    pub fn edit_for(&self, port: PortId) -> Option<FrameEdit> {
        self.deliveries
            .iter()
            .find(|d| d.port == port)
            .map(|d| d.edit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> alloc::vec::Vec<u8> {
        let mut f = alloc::vec::Vec::from([0xffu8; 6]);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x00, 0xaa, 0xbb]);
        f
    }

    #[test]
    fn push_then_pop_restores_the_frame() {
        let f = frame();
        let mut tagged = [0u8; 64];
        let n = FrameEdit::PushTag(0x123).write(&f, &mut tagged).unwrap();
        assert_eq!(n, f.len() + 4);
        assert_eq!(&tagged[12..18], &[0x81, 0x00, 0x01, 0x23, 0x08, 0x00]);
        let mut back = [0u8; 64];
        let m = FrameEdit::PopTag.write(&tagged[..n], &mut back).unwrap();
        assert_eq!(&back[..m], &f[..]);
        let mut same = [0u8; 64];
        let k = FrameEdit::AsIs.write(&f, &mut same).unwrap();
        assert_eq!(&same[..k], &f[..]);
    }

    #[test]
    fn edits_refuse_what_they_cannot_do() {
        let f = frame();
        let mut small = [0u8; 8];
        assert_eq!(
            FrameEdit::PushTag(1).write(&f, &mut small),
            Err(EditError::BufferTooSmall {
                needed: f.len() + 4
            })
        );
        let mut out = [0u8; 64];
        assert_eq!(
            FrameEdit::PopTag.write(&f, &mut out),
            Err(EditError::NotApplicable)
        );
        assert_eq!(
            FrameEdit::AsIs.write(&f[..10], &mut out),
            Err(EditError::NotApplicable)
        );
    }
}
