//! Writing output files reproducibly: whole or not at all, with a fixed modification time.
//!
//! Reproducible builds take their timestamps from `SOURCE_DATE_EPOCH`
//! (reproducible-builds.org); without it Keel's media use [`DEFAULT_EPOCH`], so that the
//! same inputs give the same bytes on any day.

use std::fs::{File, FileTimes};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{ConfigError, ImageError};

/// 2000-01-01T00:00:00Z: the media's timestamp when `SOURCE_DATE_EPOCH` is not set.
pub const DEFAULT_EPOCH: u64 = 946_684_800;
/// 1980-01-01T00:00:00Z: FAT (the UEFI boot image) cannot store anything earlier.
pub const EARLIEST_EPOCH: u64 = 315_532_800;

/// The media's timestamp: `SOURCE_DATE_EPOCH` when set, else [`DEFAULT_EPOCH`].
pub fn source_date_epoch() -> Result<u64, ImageError> {
    epoch_from(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref())
}

/// [`source_date_epoch`] without the environment, for tests.
pub fn epoch_from(value: Option<&str>) -> Result<u64, ImageError> {
    let Some(text) = value else {
        return Ok(DEFAULT_EPOCH);
    };
    match text.parse::<u64>() {
        Ok(epoch) if (EARLIEST_EPOCH..=253_402_300_799).contains(&epoch) => Ok(epoch),
        _ => Err(ImageError::Config {
            path: None,
            error: ConfigError::InvalidValue {
                key: "SOURCE_DATE_EPOCH".into(),
                value: text.to_string(),
                expected: "seconds since 1970 between 1980 and 9999",
            },
        }),
    }
}

/// The UTC calendar time of `epoch`: (year, month, day, hour, minute, second).
pub fn utc(epoch: u64) -> (u64, u64, u64, u64, u64, u64) {
    let t = keel_calendar::DateTime::from_unix_seconds(epoch);
    (
        t.date.year,
        t.date.month,
        t.date.day,
        t.hour,
        t.minute,
        t.second,
    )
}

/// Sets a file's or directory's modification and access times to `epoch`.
pub fn set_times(path: &Path, epoch: u64) -> Result<(), ImageError> {
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(epoch);
    File::open(path)
        .and_then(|f| f.set_times(FileTimes::new().set_modified(time).set_accessed(time)))
        .map_err(|error| ImageError::Write {
            path: path.to_path_buf(),
            error,
        })
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// that a reader (a TFTP server, a person) never sees half a file.
pub fn write_file(path: &Path, bytes: &[u8], epoch: u64) -> Result<(), ImageError> {
    let error = |error| ImageError::Write {
        path: path.to_path_buf(),
        error,
    };
    let temporary = temporary_path(path);
    let written = File::create(&temporary)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(error(e));
    }
    set_times(&temporary, epoch)?;
    std::fs::rename(&temporary, path).map_err(error)
}

/// `DIR/.NAME.tmp` next to `path`.
pub fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_dates_of_known_epochs() {
        assert_eq!(utc(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(utc(DEFAULT_EPOCH), (2000, 1, 1, 0, 0, 0));
        assert_eq!(utc(EARLIEST_EPOCH), (1980, 1, 1, 0, 0, 0));
        assert_eq!(utc(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(utc(1_700_000_000), (2023, 11, 14, 22, 13, 20));
    }

    #[test]
    fn epoch_defaults_and_rejects_what_fat_cannot_hold() {
        assert_eq!(epoch_from(None).ok(), Some(DEFAULT_EPOCH));
        assert_eq!(epoch_from(Some("1700000000")).ok(), Some(1_700_000_000));
        for bad in ["0", "315532799", "soon", "-1", ""] {
            assert!(epoch_from(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn write_file_replaces_whole_and_sets_the_time() {
        let dir = std::env::temp_dir().join(format!("keel-output-test-{}", std::process::id()));
        assert!(std::fs::create_dir_all(&dir).is_ok());
        let path = dir.join("boot.ipxe");
        assert!(write_file(&path, b"first", DEFAULT_EPOCH).is_ok());
        assert!(write_file(&path, b"second", DEFAULT_EPOCH).is_ok());
        assert_eq!(std::fs::read(&path).ok().as_deref(), Some(&b"second"[..]));
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        assert_eq!(
            modified,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(DEFAULT_EPOCH))
        );
        assert!(!temporary_path(&path).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
