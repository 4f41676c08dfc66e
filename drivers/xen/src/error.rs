//! Typed errors returned by the hypervisor.
//!
//! Xen hypercalls return a `long`: non-negative on success, `-errno` on failure, with the
//! errno values of `xen/include/public/errno.h` (they match Linux's numbering). Grant-table
//! operations additionally report a per-operation `int16_t status` (`GNTST_*`), which is
//! modelled separately by [`GntStatus`] because a batched hypercall can succeed as a whole
//! while single operations inside it fail.

/// An errno returned by a hypercall (`xen/include/public/errno.h`).
///
/// Variant names are the Xen errno names so log lines match Xen's own documentation.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XenError {
    EPERM,
    ENOENT,
    ESRCH,
    EINTR,
    EIO,
    ENXIO,
    E2BIG,
    ENOEXEC,
    EBADF,
    ECHILD,
    /// Also `EWOULDBLOCK`.
    EAGAIN,
    ENOMEM,
    EACCES,
    EFAULT,
    EBUSY,
    EEXIST,
    EXDEV,
    ENODEV,
    ENOTDIR,
    EISDIR,
    EINVAL,
    ENFILE,
    EMFILE,
    ENOSPC,
    EROFS,
    EMLINK,
    EDOM,
    ERANGE,
    /// Also `EDEADLOCK`.
    EDEADLK,
    ENAMETOOLONG,
    ENOLCK,
    ENOSYS,
    ENOTEMPTY,
    ENODATA,
    ETIME,
    EBADMSG,
    EOVERFLOW,
    EILSEQ,
    ERESTART,
    ENOTSOCK,
    EMSGSIZE,
    EOPNOTSUPP,
    EADDRINUSE,
    EADDRNOTAVAIL,
    ENOBUFS,
    EISCONN,
    ENOTCONN,
    ETIMEDOUT,
    ECONNREFUSED,
    /// A negative return value that `errno.h` does not name; the positive errno is kept.
    Unknown(i64),
}

/// `(errno, variant, name)` for every named Xen errno; one table drives both directions.
const ERRNO_TABLE: &[(i64, XenError, &str)] = &[
    (1, XenError::EPERM, "EPERM"),
    (2, XenError::ENOENT, "ENOENT"),
    (3, XenError::ESRCH, "ESRCH"),
    (4, XenError::EINTR, "EINTR"),
    (5, XenError::EIO, "EIO"),
    (6, XenError::ENXIO, "ENXIO"),
    (7, XenError::E2BIG, "E2BIG"),
    (8, XenError::ENOEXEC, "ENOEXEC"),
    (9, XenError::EBADF, "EBADF"),
    (10, XenError::ECHILD, "ECHILD"),
    (11, XenError::EAGAIN, "EAGAIN"),
    (12, XenError::ENOMEM, "ENOMEM"),
    (13, XenError::EACCES, "EACCES"),
    (14, XenError::EFAULT, "EFAULT"),
    (16, XenError::EBUSY, "EBUSY"),
    (17, XenError::EEXIST, "EEXIST"),
    (18, XenError::EXDEV, "EXDEV"),
    (19, XenError::ENODEV, "ENODEV"),
    (20, XenError::ENOTDIR, "ENOTDIR"),
    (21, XenError::EISDIR, "EISDIR"),
    (22, XenError::EINVAL, "EINVAL"),
    (23, XenError::ENFILE, "ENFILE"),
    (24, XenError::EMFILE, "EMFILE"),
    (28, XenError::ENOSPC, "ENOSPC"),
    (30, XenError::EROFS, "EROFS"),
    (31, XenError::EMLINK, "EMLINK"),
    (33, XenError::EDOM, "EDOM"),
    (34, XenError::ERANGE, "ERANGE"),
    (35, XenError::EDEADLK, "EDEADLK"),
    (36, XenError::ENAMETOOLONG, "ENAMETOOLONG"),
    (37, XenError::ENOLCK, "ENOLCK"),
    (38, XenError::ENOSYS, "ENOSYS"),
    (39, XenError::ENOTEMPTY, "ENOTEMPTY"),
    (61, XenError::ENODATA, "ENODATA"),
    (62, XenError::ETIME, "ETIME"),
    (74, XenError::EBADMSG, "EBADMSG"),
    (75, XenError::EOVERFLOW, "EOVERFLOW"),
    (84, XenError::EILSEQ, "EILSEQ"),
    (85, XenError::ERESTART, "ERESTART"),
    (88, XenError::ENOTSOCK, "ENOTSOCK"),
    (90, XenError::EMSGSIZE, "EMSGSIZE"),
    (95, XenError::EOPNOTSUPP, "EOPNOTSUPP"),
    (98, XenError::EADDRINUSE, "EADDRINUSE"),
    (99, XenError::EADDRNOTAVAIL, "EADDRNOTAVAIL"),
    (105, XenError::ENOBUFS, "ENOBUFS"),
    (106, XenError::EISCONN, "EISCONN"),
    (107, XenError::ENOTCONN, "ENOTCONN"),
    (110, XenError::ETIMEDOUT, "ETIMEDOUT"),
    (111, XenError::ECONNREFUSED, "ECONNREFUSED"),
];

impl XenError {
    /// The error for a positive errno value.
    pub fn from_errno(errno: i64) -> Self {
        ERRNO_TABLE
            .iter()
            .find(|(n, _, _)| *n == errno)
            .map_or(XenError::Unknown(errno), |(_, e, _)| *e)
    }

    /// The positive errno value.
    pub fn errno(self) -> i64 {
        match self {
            XenError::Unknown(n) => n,
            known => ERRNO_TABLE
                .iter()
                .find(|(_, e, _)| *e == known)
                .map_or(0, |(n, _, _)| *n),
        }
    }

    /// The errno name (`"EINVAL"`), or `"unknown"` for values `errno.h` does not name.
    pub fn name(self) -> &'static str {
        ERRNO_TABLE
            .iter()
            .find(|(_, e, _)| *e == self)
            .map_or("unknown", |(_, _, name)| name)
    }

    /// Interprets a raw hypercall return value: non-negative is success, negative is `-errno`.
    pub fn check(ret: i64) -> Result<u64, XenError> {
        if ret < 0 {
            Err(XenError::from_errno(ret.unsigned_abs() as i64))
        } else {
            Ok(ret as u64)
        }
    }

    /// The value a hypercall returns to report this error (used by the fake hypervisor).
    pub fn as_ret(self) -> i64 {
        -self.errno()
    }
}

impl core::fmt::Display for XenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            XenError::Unknown(n) => write!(f, "unknown Xen errno {n}"),
            known => write!(f, "{} ({})", known.name(), known.errno()),
        }
    }
}

/// A failed per-operation grant-table status (`GNTST_*` in `grant_table.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GntStatus {
    /// `GNTST_general_error` (-1).
    GeneralError,
    /// `GNTST_bad_domain` (-2): unrecognised domain id.
    BadDomain,
    /// `GNTST_bad_gntref` (-3): unrecognised or inappropriate grant reference.
    BadGntref,
    /// `GNTST_bad_handle` (-4): unrecognised or inappropriate map handle.
    BadHandle,
    /// `GNTST_bad_virt_addr` (-5): inappropriate address to map.
    BadVirtAddr,
    /// `GNTST_bad_dev_addr` (-6): inappropriate device address to unmap.
    BadDevAddr,
    /// `GNTST_no_device_space` (-7): out of space in the I/O MMU.
    NoDeviceSpace,
    /// `GNTST_permission_denied` (-8).
    PermissionDenied,
    /// `GNTST_bad_page` (-9): the page was invalid for the operation.
    BadPage,
    /// `GNTST_bad_copy_arg` (-10): copy arguments cross a page boundary.
    BadCopyArg,
    /// `GNTST_address_too_big` (-11).
    AddressTooBig,
    /// `GNTST_eagain` (-12): not done, try again (the granting page is paged out).
    Eagain,
    /// `GNTST_no_space` (-13): out of space (handles etc.).
    NoSpace,
    /// A negative status `grant_table.h` does not name.
    Unknown(i16),
}

impl GntStatus {
    /// Interprets a per-operation status: `GNTST_okay` (0) is success.
    pub fn check(status: i16) -> Result<(), GntStatus> {
        match status {
            0 => Ok(()),
            -1 => Err(GntStatus::GeneralError),
            -2 => Err(GntStatus::BadDomain),
            -3 => Err(GntStatus::BadGntref),
            -4 => Err(GntStatus::BadHandle),
            -5 => Err(GntStatus::BadVirtAddr),
            -6 => Err(GntStatus::BadDevAddr),
            -7 => Err(GntStatus::NoDeviceSpace),
            -8 => Err(GntStatus::PermissionDenied),
            -9 => Err(GntStatus::BadPage),
            -10 => Err(GntStatus::BadCopyArg),
            -11 => Err(GntStatus::AddressTooBig),
            -12 => Err(GntStatus::Eagain),
            -13 => Err(GntStatus::NoSpace),
            other => Err(GntStatus::Unknown(other)),
        }
    }

    /// The raw `GNTST_*` value (used by the fake hypervisor to report failures).
    pub fn code(self) -> i16 {
        match self {
            GntStatus::GeneralError => -1,
            GntStatus::BadDomain => -2,
            GntStatus::BadGntref => -3,
            GntStatus::BadHandle => -4,
            GntStatus::BadVirtAddr => -5,
            GntStatus::BadDevAddr => -6,
            GntStatus::NoDeviceSpace => -7,
            GntStatus::PermissionDenied => -8,
            GntStatus::BadPage => -9,
            GntStatus::BadCopyArg => -10,
            GntStatus::AddressTooBig => -11,
            GntStatus::Eagain => -12,
            GntStatus::NoSpace => -13,
            GntStatus::Unknown(code) => code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_returns_map_to_named_errnos() {
        assert_eq!(XenError::check(-1), Err(XenError::EPERM));
        assert_eq!(XenError::check(-2), Err(XenError::ENOENT));
        assert_eq!(XenError::check(-3), Err(XenError::ESRCH));
        assert_eq!(XenError::check(-12), Err(XenError::ENOMEM));
        assert_eq!(XenError::check(-13), Err(XenError::EACCES));
        assert_eq!(XenError::check(-14), Err(XenError::EFAULT));
        assert_eq!(XenError::check(-16), Err(XenError::EBUSY));
        assert_eq!(XenError::check(-17), Err(XenError::EEXIST));
        assert_eq!(XenError::check(-11), Err(XenError::EAGAIN));
        assert_eq!(XenError::check(-22), Err(XenError::EINVAL));
        assert_eq!(XenError::check(-38), Err(XenError::ENOSYS));
        assert_eq!(XenError::check(-95), Err(XenError::EOPNOTSUPP));
    }

    #[test]
    fn non_negative_returns_are_values() {
        assert_eq!(XenError::check(0), Ok(0));
        assert_eq!(XenError::check(0x0004_0011), Ok(0x0004_0011));
    }

    #[test]
    fn unnamed_errno_is_kept_not_lost() {
        assert_eq!(XenError::check(-15), Err(XenError::Unknown(15)));
        assert_eq!(XenError::Unknown(15).errno(), 15);
        assert_eq!(
            XenError::check(i64::MIN),
            Err(XenError::Unknown(i64::MIN.unsigned_abs() as i64))
        );
    }

    #[test]
    fn errno_round_trips_for_every_named_value() {
        for (n, e, name) in ERRNO_TABLE {
            assert_eq!(XenError::from_errno(*n), *e);
            assert_eq!(e.errno(), *n);
            assert_eq!(e.name(), *name);
            assert_eq!(XenError::check(e.as_ret()), Err(*e));
        }
    }

    #[test]
    fn gnt_status_round_trips() {
        assert_eq!(GntStatus::check(0), Ok(()));
        for code in -13..=-1 {
            let status = GntStatus::check(code).unwrap_err();
            assert!(!matches!(status, GntStatus::Unknown(_)));
            assert_eq!(status.code(), code);
        }
        assert_eq!(GntStatus::check(-2), Err(GntStatus::BadDomain));
        assert_eq!(GntStatus::check(-3), Err(GntStatus::BadGntref));
        assert_eq!(GntStatus::check(-8), Err(GntStatus::PermissionDenied));
        assert_eq!(GntStatus::check(-40), Err(GntStatus::Unknown(-40)));
    }
}
