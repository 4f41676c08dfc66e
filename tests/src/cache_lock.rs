//! One lock for everything the harness builds once and keeps under `target/keel/` (Debian
//! packages unpacked, the guest initramfs images, guest tools, the Python venv).
//!
//! Test binaries run in parallel processes (`cargo xtask test` runs two queues), and tests in
//! parallel threads: two of them building the same cache entry at once would remove each
//! other's half-written files. The lock is an exclusive `flock` on
//! `target/keel/.harness-cache.lock` (another open of the file conflicts, in this process or
//! another), taken once per thread: a builder that calls another builder holding it does not
//! wait for itself.

use std::cell::Cell;
use std::fs::{File, OpenOptions};

use crate::error::HarnessError;
use crate::paths;

thread_local! {
    /// How deep this thread is inside [`with_cache_lock`].
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Runs `build` holding the harness cache lock.
pub fn with_cache_lock<T>(
    build: impl FnOnce() -> Result<T, HarnessError>,
) -> Result<T, HarnessError> {
    let _held = Held::take()?;
    build()
}

/// The lock while this thread holds it (the file only at the outermost level).
struct Held {
    file: Option<File>,
}

impl Held {
    fn take() -> Result<Held, HarnessError> {
        let depth = DEPTH.with(Cell::get);
        let file = if depth == 0 {
            let dir = paths::keel_dir();
            std::fs::create_dir_all(&dir).map_err(|error| HarnessError::Io {
                what: format!("creating {}", dir.display()),
                error,
            })?;
            let path = dir.join(".harness-cache.lock");
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .and_then(|file| file.lock().map(|()| file))
                .map_err(|error| HarnessError::Io {
                    what: format!("locking {}", path.display()),
                    error,
                })?;
            Some(file)
        } else {
            None
        };
        DEPTH.with(|d| d.set(depth + 1));
        Ok(Held { file })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        if let Some(file) = self.file.take() {
            let _ = file.unlock();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn builders_nest_in_one_thread_and_exclude_each_other_across_threads() {
        // Nested: does not deadlock.
        let nested = with_cache_lock(|| with_cache_lock(|| Ok(7)));
        assert_eq!(nested.ok(), Some(7));
        // Across threads: never two inside at once.
        let inside = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (inside, most) = (Arc::clone(&inside), Arc::clone(&most));
                std::thread::spawn(move || {
                    with_cache_lock(|| {
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        inside.fetch_sub(1, Ordering::SeqCst);
                        Ok(())
                    })
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().is_ok_and(|r| r.is_ok()));
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
    }
}
