//! What Keel does with a disk it finds: attach the SR on it, create one on a blank disk, or
//! leave it alone.
//!
//! The rules: a disk holding a Keel SR is attached. A blank disk (see the format rules in
//! `docs/storage-format.md`) gets a new, empty SR. A disk holding anything else, or a
//! damaged SR, is refused and not written to, unless the operator named that disk's
//! identity in `keel.format=`; then it is formatted whatever it holds.

use keel_block::BlockDevice;
use keel_storage::{FormatOptions, RecoveryReport, Sr, SrError, Uuid};

/// How the SR came to be attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioned {
    /// An existing SR was attached.
    Attached(RecoveryReport),
    /// The disk was blank and now holds a new, empty SR.
    FormattedBlank,
    /// The disk was named by `keel.format=` and now holds a new, empty SR.
    FormattedOnRequest,
}

/// Why a disk was left alone (nothing was written to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The disk holds data that is not a Keel SR.
    ForeignData,
    /// The disk cannot hold an SR at all.
    TooSmall { capacity_bytes: u64 },
    /// The disk holds a Keel SR that cannot be attached (damaged, newer format version, or
    /// the disk failed while reading it).
    Unattachable(SrError),
    /// The disk failed while being examined or formatted.
    Failed(SrError),
}

impl core::fmt::Display for Refusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Refusal::ForeignData => write!(f, "holds data that is not a Keel SR"),
            Refusal::TooSmall { capacity_bytes } => {
                write!(f, "is too small for an SR ({capacity_bytes} bytes)")
            }
            Refusal::Unattachable(e) => write!(f, "holds a Keel SR that cannot be attached: {e}"),
            Refusal::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// Attaches, formats or refuses `dev` by the rules above. `format_request` is the value of
/// `keel.format=` (a device identity), `new_uuid` the UUID a new SR gets, and
/// `extent_size` its allocation unit. `D` is cloned so a failed attach does not lose the
/// device (a handle type; the clones share one disk).
pub fn provision<D: BlockDevice + Clone>(
    dev: D,
    format_request: Option<&str>,
    new_uuid: Uuid,
    extent_size: u64,
) -> Result<(Sr<D>, Provisioned), Refusal> {
    let identity = dev.info().identity.clone();
    let capacity_bytes = dev.info().capacity_bytes();
    let mut options = FormatOptions::new(new_uuid);
    options.extent_size = extent_size;
    let classify = |e: SrError| match e {
        SrError::DeviceTooSmall { .. } => Refusal::TooSmall { capacity_bytes },
        SrError::ForeignData => Refusal::ForeignData,
        other => Refusal::Failed(other),
    };
    if format_request == Some(identity.as_str()) {
        options.force = Some(identity);
        return Sr::format(dev, options)
            .map(|sr| (sr, Provisioned::FormattedOnRequest))
            .map_err(classify);
    }
    match Sr::attach(dev.clone()) {
        Ok(sr) => {
            let report = sr.recovery();
            Ok((sr, Provisioned::Attached(report)))
        }
        // Blank or foreign: format refuses anything that is not blank.
        Err(SrError::NotAnSr) => Sr::format(dev, options)
            .map(|sr| (sr, Provisioned::FormattedBlank))
            .map_err(classify),
        Err(SrError::Device(e)) => Err(Refusal::Failed(SrError::Device(e))),
        Err(e) => Err(Refusal::Unattachable(e)),
    }
}
