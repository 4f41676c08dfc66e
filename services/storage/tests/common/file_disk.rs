//! A block device backed by a host file, for tests that want real files and `fsync`.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use keel_block::{
    validate, BlockDevice, BlockError, Completion, DeviceInfo, Rejected, Request, RequestId,
};

pub struct FileDisk {
    file: File,
    info: DeviceInfo,
    queue: VecDeque<(RequestId, Request)>,
    next_id: u64,
}

impl FileDisk {
    /// Opens (creating and sizing if needed) `path` as a disk of `capacity_sectors` sectors.
    pub fn open(path: &Path, sector_size: u32, capacity_sectors: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        file.set_len(u64::from(sector_size) * capacity_sectors)?;
        Ok(FileDisk {
            file,
            info: DeviceInfo {
                sector_size,
                capacity_sectors,
                queue_depth: 8,
                max_transfer_sectors: 256,
                read_only: false,
                supports_discard: false,
                volatile_write_cache: true,
                identity: path.display().to_string(),
            },
            queue: VecDeque::new(),
            next_id: 0,
        })
    }

    fn execute(&mut self, request: Request) -> (Result<(), BlockError>, Option<Vec<u8>>) {
        let offset = |lba: u64| lba * u64::from(self.info.sector_size);
        match request {
            Request::Read { lba, mut buffer } => {
                let result = self
                    .file
                    .read_exact_at(&mut buffer, offset(lba))
                    .map_err(|_| BlockError::Io {
                        first_failed_lba: lba,
                    });
                (result, Some(buffer))
            }
            Request::Write { lba, buffer } => {
                let result =
                    self.file
                        .write_all_at(&buffer, offset(lba))
                        .map_err(|_| BlockError::Io {
                            first_failed_lba: lba,
                        });
                (result, Some(buffer))
            }
            Request::Flush => (
                self.file.sync_data().map_err(|_| BlockError::Io {
                    first_failed_lba: 0,
                }),
                None,
            ),
            Request::Discard { .. } => (
                Err(BlockError::Unsupported(keel_block::RequestKind::Discard)),
                None,
            ),
        }
    }
}

impl BlockDevice for FileDisk {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn submit(&mut self, request: Request) -> Result<RequestId, Rejected> {
        if let Err(error) = validate(&self.info, &request) {
            return Err(Rejected { error, request });
        }
        if self.queue.len() >= usize::from(self.info.queue_depth) {
            return Err(Rejected {
                error: BlockError::Busy,
                request,
            });
        }
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.queue.push_back((id, request));
        Ok(id)
    }

    fn poll_completion(&mut self) -> Option<Completion> {
        let (id, request) = self.queue.pop_front()?;
        let kind = request.kind();
        let (result, buffer) = self.execute(request);
        Some(Completion {
            id,
            kind,
            result,
            buffer,
        })
    }

    fn in_flight(&self) -> usize {
        self.queue.len()
    }
}

/// A temporary file removed on drop.
pub struct TempPath(pub PathBuf);

impl TempPath {
    pub fn new(tag: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("keel-storage-{tag}-{}.img", std::process::id()));
        let _ = std::fs::remove_file(&path);
        TempPath(path)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
