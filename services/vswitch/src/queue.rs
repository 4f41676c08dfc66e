//! A bounded FIFO of frames for a port's output, with its buffers allocated up front: a
//! push copies the frame (with its [`FrameEdit`]) into a recycled buffer, so a full queue
//! drops the newest frame (drop-tail) and nothing is allocated per frame.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::forward::{EditError, FrameEdit};

/// Why a frame was not queued, or a queue not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// All buffers hold frames not taken yet.
    Full,
    /// The (edited) frame is longer than the queue's frames may be.
    TooLarge { len: usize },
    /// The edit does not apply to the frame.
    Edit(EditError),
    /// The buffers could not be allocated.
    OutOfMemory,
}

#[derive(Debug)]
pub struct FrameQueue {
    queued: VecDeque<Vec<u8>>,
    free: Vec<Vec<u8>>,
    depth: usize,
    max_frame: usize,
}

impl FrameQueue {
    /// A queue of `depth` frames of at most `max_frame` bytes each.
    pub fn new(depth: usize, max_frame: usize) -> Result<FrameQueue, QueueError> {
        let mut queued = VecDeque::new();
        queued
            .try_reserve_exact(depth)
            .map_err(|_| QueueError::OutOfMemory)?;
        let mut free = Vec::new();
        free.try_reserve_exact(depth)
            .map_err(|_| QueueError::OutOfMemory)?;
        for _ in 0..depth {
            let mut buffer = Vec::new();
            buffer
                .try_reserve_exact(max_frame)
                .map_err(|_| QueueError::OutOfMemory)?;
            free.push(buffer);
        }
        Ok(FrameQueue {
            queued,
            free,
            depth,
            max_frame,
        })
    }

    /// Queues `frame` as `edit` turns it. On error nothing is queued.
    pub fn push(&mut self, frame: &[u8], edit: FrameEdit) -> Result<(), QueueError> {
        let len = edit.output_len(frame.len());
        if len > self.max_frame {
            return Err(QueueError::TooLarge { len });
        }
        let mut buffer = self.free.pop().ok_or(QueueError::Full)?;
        buffer.resize(len, 0);
        match edit.write(frame, &mut buffer) {
            Ok(_) => {
                self.queued.push_back(buffer);
                Ok(())
            }
            Err(e) => {
                buffer.clear();
                self.free.push(buffer);
                Err(QueueError::Edit(e))
            }
        }
    }

    /// Takes the oldest frame out; give the buffer back with [`FrameQueue::recycle`].
    pub fn pop(&mut self) -> Option<Vec<u8>> {
        self.queued.pop_front()
    }

    /// Returns a buffer taken with [`FrameQueue::pop`]. A buffer not from this queue (or
    /// one too many) is simply dropped.
    pub fn recycle(&mut self, mut buffer: Vec<u8>) {
        if self.free.len() + self.queued.len() < self.depth && buffer.capacity() >= self.max_frame {
            buffer.clear();
            self.free.push(buffer);
        }
    }

    /// Copies the oldest frame into `buf` and removes it; a frame longer than `buf` is
    /// removed and reported as `Err(its length)`.
    pub fn pop_into(&mut self, buf: &mut [u8]) -> Option<Result<usize, usize>> {
        let frame = self.pop()?;
        let result = match buf.get_mut(..frame.len()) {
            Some(dst) => {
                dst.copy_from_slice(&frame);
                Ok(frame.len())
            }
            None => Err(frame.len()),
        };
        self.recycle(frame);
        Some(result)
    }

    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8) -> Vec<u8> {
        let mut f = Vec::from([0xff; 12]);
        f.extend_from_slice(&[0x08, 0x00, n]);
        f
    }

    #[test]
    fn fifo_bounded_drop_tail() {
        let mut q = FrameQueue::new(2, 64).unwrap();
        q.push(&frame(1), FrameEdit::AsIs).unwrap();
        q.push(&frame(2), FrameEdit::PushTag(7)).unwrap();
        assert!(q.is_full());
        assert_eq!(q.push(&frame(3), FrameEdit::AsIs), Err(QueueError::Full));
        let mut buf = [0u8; 64];
        assert_eq!(q.pop_into(&mut buf), Some(Ok(15)));
        assert_eq!(buf[14], 1);
        assert_eq!(q.pop_into(&mut buf), Some(Ok(19)));
        assert_eq!((&buf[12..16], buf[18]), (&[0x81, 0, 0, 7][..], 2));
        assert_eq!(q.pop_into(&mut buf), None);
        // Buffers came back: two more fit, and no more.
        q.push(&frame(4), FrameEdit::AsIs).unwrap();
        q.push(&frame(5), FrameEdit::AsIs).unwrap();
        assert_eq!(q.push(&frame(6), FrameEdit::AsIs), Err(QueueError::Full));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn too_large_and_bad_edits_queue_nothing() {
        let mut q = FrameQueue::new(1, 16).unwrap();
        assert_eq!(
            q.push(&frame(1), FrameEdit::PushTag(1)),
            Err(QueueError::TooLarge { len: 19 })
        );
        assert_eq!(
            q.push(&frame(1), FrameEdit::PopTag),
            Err(QueueError::Edit(EditError::NotApplicable))
        );
        assert!(q.is_empty() && !q.is_full());
        q.push(&frame(1), FrameEdit::AsIs).unwrap();
        let mut small = [0u8; 4];
        assert_eq!(q.pop_into(&mut small), Some(Err(15)));
        assert!(!q.is_full());
        // A foreign buffer does not grow the queue past its depth.
        q.recycle(Vec::with_capacity(64));
        q.push(&frame(1), FrameEdit::AsIs).unwrap();
        assert_eq!(q.push(&frame(2), FrameEdit::AsIs), Err(QueueError::Full));
    }
}
