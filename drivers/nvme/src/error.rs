//! Why a controller could not be started, reset or asked something.

use crate::status::Status;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NvmeError {
    /// No DMA memory for queues or buffers.
    NoMemory,
    /// The controller does not implement the NVM command set.
    NoNvmCommandSet,
    /// The controller cannot use 4 KiB memory pages.
    PageSizeUnsupported { min: u64, max: u64 },
    /// The controller did not reach the expected state in time.
    Timeout { waiting_for: Waiting },
    /// The controller reported a fatal status (CSTS.CFS) while starting.
    ControllerFatal,
    /// An admin command failed.
    AdminCommand { opcode: u8, status: Status },
    /// An admin completion named a command that was not outstanding.
    UnexpectedCompletion { cid: u16 },
    /// The controller has no usable namespace (none active, or none with a supported format).
    NoNamespace,
    /// The requested namespace is not active or has an unsupported format.
    NamespaceNotFound(u32),
    /// The driver gave up on the controller after a failed reset.
    Failed,
}

/// What a timeout was waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// CSTS.RDY to clear after CC.EN was cleared.
    Disable,
    /// CSTS.RDY to be set after CC.EN was set.
    Enable,
    /// An admin command's completion.
    AdminCompletion { opcode: u8 },
}

impl core::fmt::Display for NvmeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NvmeError::NoMemory => write!(f, "out of DMA memory"),
            NvmeError::NoNvmCommandSet => write!(f, "controller lacks the NVM command set"),
            NvmeError::PageSizeUnsupported { min, max } => {
                write!(f, "controller page sizes {min}..{max} exclude 4096")
            }
            NvmeError::Timeout { waiting_for } => {
                write!(f, "timed out waiting for {waiting_for:?}")
            }
            NvmeError::ControllerFatal => write!(f, "controller fatal status (CSTS.CFS)"),
            NvmeError::AdminCommand { opcode, status } => {
                write!(f, "admin command {opcode:#04x} failed: {status}")
            }
            NvmeError::UnexpectedCompletion { cid } => {
                write!(f, "completion for unknown admin command {cid}")
            }
            NvmeError::NoNamespace => write!(f, "no usable namespace"),
            NvmeError::NamespaceNotFound(nsid) => write!(f, "namespace {nsid} is not usable"),
            NvmeError::Failed => write!(f, "controller failed and could not be reset"),
        }
    }
}
