//! Where one start's time goes in the toolstack: the domain's preparation, each image's
//! loading (decompression included), the finish (xenstore, devices, unpause), and what is
//! left of the start between the builder's calls (the XenAPI reading the images from
//! storage and stepping its job). A start leaves one log line with them, so a slow
//! `VM.start` says where its time went (docs/guests.md, "Where a start's time goes").

use alloc::format;
use alloc::string::String;

use keel_xenapi::guest::BootImage;

/// One start's times, in nanoseconds of the toolstack's monotonic clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartTimes {
    /// When the preparation began (the start's first call into the builder).
    pub began_ns: u64,
    /// Probing the kernel's head, creating the domain and its memory.
    pub prepare_ns: u64,
    pub kernel_ns: u64,
    pub kernel_bytes: u64,
    pub ramdisk_ns: u64,
    pub ramdisk_bytes: u64,
}

impl StartTimes {
    /// A start whose preparation began at `began_ns`, took `prepare_ns` and was given the
    /// kernel's first `head_bytes`.
    pub fn new(began_ns: u64, prepare_ns: u64, head_bytes: usize) -> Self {
        StartTimes {
            began_ns,
            prepare_ns,
            kernel_bytes: head_bytes as u64,
            ..StartTimes::default()
        }
    }

    /// One piece of `image`, `bytes` long, loaded in `ns`.
    pub fn loaded(&mut self, image: BootImage, bytes: usize, ns: u64) {
        let (time, size) = match image {
            BootImage::Kernel => (&mut self.kernel_ns, &mut self.kernel_bytes),
            BootImage::Ramdisk => (&mut self.ramdisk_ns, &mut self.ramdisk_bytes),
        };
        *time = time.saturating_add(ns);
        *size = size.saturating_add(bytes as u64);
    }

    /// The log line's text for a start whose finish took `finish_ns` and ended at `end_ns`.
    pub fn summary(&self, finish_ns: u64, end_ns: u64) -> String {
        let ms = |ns: u64| ns / 1_000_000;
        let total = end_ns.saturating_sub(self.began_ns);
        let builder = self
            .prepare_ns
            .saturating_add(self.kernel_ns)
            .saturating_add(self.ramdisk_ns)
            .saturating_add(finish_ns);
        format!(
            "{} ms in all: prepare {} ms, kernel {} ms ({} KiB), ramdisk {} ms ({} KiB), \
             finish {} ms, between the builder's calls (reading the images, the XenAPI's steps) \
             {} ms",
            ms(total),
            ms(self.prepare_ns),
            ms(self.kernel_ns),
            self.kernel_bytes / 1024,
            ms(self.ramdisk_ns),
            self.ramdisk_bytes / 1024,
            ms(finish_ns),
            ms(total.saturating_sub(builder)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn each_image_adds_up_and_the_rest_is_between_the_calls() {
        let mut t = StartTimes::new(1000 * MS, 40 * MS, 0);
        t.loaded(BootImage::Kernel, 256 << 10, 100 * MS);
        t.loaded(BootImage::Kernel, 128 << 10, 50 * MS);
        t.loaded(BootImage::Ramdisk, 64 << 10, 10 * MS);
        assert_eq!((t.kernel_bytes, t.ramdisk_bytes), (384 << 10, 64 << 10));
        assert_eq!(
            t.summary(5 * MS, 1300 * MS),
            "300 ms in all: prepare 40 ms, kernel 150 ms (384 KiB), ramdisk 10 ms (64 KiB), \
             finish 5 ms, between the builder's calls (reading the images, the XenAPI's steps) \
             95 ms"
        );
    }

    #[test]
    fn a_clock_that_seems_to_go_back_gives_zero_not_a_wrap() {
        let t = StartTimes::new(1000 * MS, 40 * MS, 4096);
        assert_eq!(t.kernel_bytes, 4096);
        assert!(t.summary(0, 500 * MS).starts_with("0 ms in all"));
    }
}
