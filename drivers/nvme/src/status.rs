//! Completion status codes, decoded into types, and their meaning for a block-device caller.

use keel_block::{BlockError, RequestKind};

/// The status field of a completion entry (DW3 bits 31:17), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub code: StatusCode,
    /// "Do not retry": the same command would fail again.
    pub do_not_retry: bool,
    /// More status is in the Error Information log page.
    pub more: bool,
}

/// What went wrong, by status code type and code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCode {
    Success,
    // Generic command status (type 0).
    InvalidOpcode,
    InvalidField,
    CommandIdConflict,
    DataTransferError,
    AbortedPowerLoss,
    InternalError,
    AbortRequested,
    AbortedSqDeleted,
    InvalidNamespaceOrFormat,
    CommandSequenceError,
    PrpOffsetInvalid,
    NamespaceWriteProtected,
    CommandInterrupted,
    TransientTransportError,
    LbaOutOfRange,
    CapacityExceeded,
    NamespaceNotReady,
    ReservationConflict,
    FormatInProgress,
    // Command-specific status (type 1).
    InvalidQueueIdentifier,
    InvalidQueueSize,
    CompletionQueueInvalid,
    AttemptedWriteToReadOnlyRange,
    // Media and data integrity errors (type 2).
    WriteFault,
    UnrecoveredReadError,
    EndToEndCheckError,
    CompareFailure,
    AccessDenied,
    DeallocatedOrUnwritten,
    /// A code Keel has no name for: status code type and status code.
    Other {
        sct: u8,
        sc: u8,
    },
}

impl Status {
    /// Decodes DW3 of a completion entry (the phase bit and command id are ignored).
    pub fn from_dw3(dw3: u32) -> Self {
        let field = dw3 >> 17;
        let sc = (field & 0xff) as u8;
        let sct = ((field >> 8) & 0x7) as u8;
        Status {
            code: StatusCode::decode(sct, sc),
            more: field & (1 << 13) != 0,
            do_not_retry: field & (1 << 14) != 0,
        }
    }

    pub fn is_success(&self) -> bool {
        self.code == StatusCode::Success
    }

    /// Whether resubmitting the same command may succeed: the controller did not say "do not
    /// retry" and the failure is one that passes (an abort, a not-yet-ready namespace, a
    /// transport hiccup).
    pub fn is_transient(&self) -> bool {
        !self.do_not_retry
            && matches!(
                self.code,
                StatusCode::AbortRequested
                    | StatusCode::AbortedSqDeleted
                    | StatusCode::NamespaceNotReady
                    | StatusCode::CommandInterrupted
                    | StatusCode::TransientTransportError
            )
    }
}

impl StatusCode {
    pub fn decode(sct: u8, sc: u8) -> Self {
        use StatusCode::*;
        match (sct, sc) {
            (0, 0x00) => Success,
            (0, 0x01) => InvalidOpcode,
            (0, 0x02) => InvalidField,
            (0, 0x03) => CommandIdConflict,
            (0, 0x04) => DataTransferError,
            (0, 0x05) => AbortedPowerLoss,
            (0, 0x06) => InternalError,
            (0, 0x07) => AbortRequested,
            (0, 0x08) => AbortedSqDeleted,
            (0, 0x0b) => InvalidNamespaceOrFormat,
            (0, 0x0c) => CommandSequenceError,
            (0, 0x13) => PrpOffsetInvalid,
            (0, 0x20) => NamespaceWriteProtected,
            (0, 0x21) => CommandInterrupted,
            (0, 0x22) => TransientTransportError,
            (0, 0x80) => LbaOutOfRange,
            (0, 0x81) => CapacityExceeded,
            (0, 0x82) => NamespaceNotReady,
            (0, 0x83) => ReservationConflict,
            (0, 0x84) => FormatInProgress,
            (1, 0x00) => CompletionQueueInvalid,
            (1, 0x01) => InvalidQueueIdentifier,
            (1, 0x02) => InvalidQueueSize,
            (1, 0x82) => AttemptedWriteToReadOnlyRange,
            (2, 0x80) => WriteFault,
            (2, 0x81) => UnrecoveredReadError,
            (2, 0x82..=0x84) => EndToEndCheckError,
            (2, 0x85) => CompareFailure,
            (2, 0x86) => AccessDenied,
            (2, 0x87) => DeallocatedOrUnwritten,
            (sct, sc) => Other { sct, sc },
        }
    }

    /// What a block-device caller learns from a failed command on sectors `lba..lba+sectors`.
    ///
    /// NVMe does not say how far a failed command got, so a failed write is reported from its
    /// first sector: any sector of it may or may not have been written.
    pub fn block_error(
        &self,
        kind: RequestKind,
        lba: u64,
        sectors: u64,
        capacity_sectors: u64,
    ) -> BlockError {
        use StatusCode::*;
        match self {
            LbaOutOfRange => BlockError::OutOfRange {
                lba,
                sectors,
                capacity_sectors,
            },
            CapacityExceeded => BlockError::NoSpace,
            NamespaceWriteProtected | AttemptedWriteToReadOnlyRange => BlockError::ReadOnly,
            InvalidOpcode if matches!(kind, RequestKind::Flush | RequestKind::Discard) => {
                BlockError::Unsupported(kind)
            }
            AbortedPowerLoss | AbortedSqDeleted => BlockError::DeviceGone,
            _ => BlockError::Io {
                first_failed_lba: lba,
            },
        }
    }
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.code {
            StatusCode::Other { sct, sc } => write!(f, "status type {sct:#x} code {sc:#04x}")?,
            code => write!(f, "{code:?}")?,
        }
        if self.do_not_retry {
            write!(f, " (do not retry)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dw3(sct: u32, sc: u32, dnr: bool) -> u32 {
        ((sc | (sct << 8) | (u32::from(dnr) << 14)) << 17) | (1 << 16) | 0x1234
    }

    #[test]
    fn decodes_type_code_and_flags() {
        let s = Status::from_dw3(dw3(2, 0x81, true));
        assert_eq!(s.code, StatusCode::UnrecoveredReadError);
        assert!(s.do_not_retry);
        assert!(!s.is_transient());
        assert!(Status::from_dw3(1 << 16).is_success());
        assert_eq!(
            Status::from_dw3(dw3(7, 0xc0, false)).code,
            StatusCode::Other { sct: 7, sc: 0xc0 }
        );
    }

    #[test]
    fn transient_only_without_do_not_retry() {
        assert!(Status::from_dw3(dw3(0, 0x82, false)).is_transient());
        assert!(!Status::from_dw3(dw3(0, 0x82, true)).is_transient());
        assert!(!Status::from_dw3(dw3(0, 0x06, false)).is_transient());
    }

    #[test]
    fn maps_to_block_errors() {
        let w = RequestKind::Write;
        assert_eq!(
            StatusCode::LbaOutOfRange.block_error(w, 10, 2, 8),
            BlockError::OutOfRange {
                lba: 10,
                sectors: 2,
                capacity_sectors: 8
            }
        );
        assert_eq!(
            StatusCode::CapacityExceeded.block_error(w, 0, 1, 8),
            BlockError::NoSpace
        );
        assert_eq!(
            StatusCode::NamespaceWriteProtected.block_error(w, 0, 1, 8),
            BlockError::ReadOnly
        );
        assert_eq!(
            StatusCode::InvalidOpcode.block_error(RequestKind::Discard, 0, 1, 8),
            BlockError::Unsupported(RequestKind::Discard)
        );
        assert_eq!(
            StatusCode::WriteFault.block_error(w, 5, 1, 8),
            BlockError::Io {
                first_failed_lba: 5
            }
        );
        assert_eq!(
            StatusCode::AbortedPowerLoss.block_error(w, 5, 1, 8),
            BlockError::DeviceGone
        );
    }

    #[test]
    fn displays_unknown_codes_numerically() {
        let s = Status::from_dw3(dw3(3, 0x60, true));
        assert_eq!(
            alloc::format!("{s}"),
            "status type 0x3 code 0x60 (do not retry)"
        );
    }
}
