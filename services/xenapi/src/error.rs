//! XenAPI failures, named exactly as xapi names them.
//!
//! Every failure a client can see is one [`ApiError`] variant; [`ApiError::code`] and
//! [`ApiError::params`] render it to the `[code, params...]` list that both codecs put on the
//! wire (XML-RPC `ErrorDescription`, JSON-RPC v1 `error` array, v2 `message` + `data`).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiError {
    /// `MESSAGE_METHOD_UNKNOWN [method]`
    MessageMethodUnknown { method: String },
    /// `MESSAGE_PARAMETER_COUNT_MISMATCH [method, expected, received]`; counts include the
    /// session argument, as in xapi.
    MessageParameterCountMismatch {
        method: String,
        expected: usize,
        received: usize,
    },
    /// `HANDLE_INVALID [class, ref]`
    HandleInvalid { class: String, reference: String },
    /// `UUID_INVALID [class, uuid]`
    UuidInvalid { class: String, uuid: String },
    /// `FIELD_TYPE_ERROR [field]`: a parameter or field value has the wrong type.
    FieldTypeError { field: String },
    /// `SESSION_INVALID [ref]`
    SessionInvalid { reference: String },
    /// `SESSION_AUTHENTICATION_FAILED [user, reason]`: wrong user or password.
    SessionAuthenticationFailed { user: String },
    /// Also `SESSION_AUTHENTICATION_FAILED [user, reason]` on the wire, so unmodified clients
    /// treat it as a failed login: a wrong password whose answer the failed-login throttle
    /// held back for `retry_after_ms` (the delay is its effect; correct passwords are never
    /// refused). The reason text names the delay.
    LoginThrottled { user: String, retry_after_ms: u64 },
    /// `MAP_DUPLICATE_KEY [class, field, ref, key]`
    MapDuplicateKey {
        class: String,
        field: String,
        reference: String,
        key: String,
    },
    /// `EVENTS_LOST []`: the token is older than the kept event history.
    EventsLost,
    /// `EVENT_FROM_TOKEN_PARSE_FAILURE [token]`
    EventFromTokenParseFailure { token: String },
    /// `EVENT_SUBSCRIPTION_PARSE_FAILURE [subscription]`
    EventSubscriptionParseFailure { subscription: String },
    /// `SESSION_NOT_REGISTERED [session]`: `event.next` without `event.register`.
    SessionNotRegistered { session: String },
    /// `TASK_CANCELLED [task]`
    TaskCancelled { task: String },
    /// `TOO_MANY_PENDING_TASKS []`
    TooManyPendingTasks,
    /// `OPERATION_NOT_ALLOWED [reason]`
    OperationNotAllowed { reason: String },
    /// `XMLRPC_UNMARSHAL_FAILURE [expected, received]`: the request body could not be decoded.
    XmlRpcUnmarshalFailure { expected: String, received: String },
    /// `INTERNAL_ERROR [message]`
    InternalError { message: String },
    /// `SR_FULL [requested, maximum]`: not enough free space (bytes) in the SR.
    SrFull { requested: u64, maximum: u64 },
    /// `VDI_IN_USE [vdi, operation]`: the VDI is busy (a transfer is running on it).
    VdiInUse { vdi: String, operation: String },
    /// `VDI_READONLY [vdi]` (xapi's spelling: one word): the VDI (a snapshot) cannot be
    /// written or resized.
    VdiReadOnly { vdi: String },
    /// `VALUE_NOT_SUPPORTED [field, value, reason]`
    ValueNotSupported {
        field: String,
        value: String,
        reason: String,
    },
    /// `SR_BACKEND_FAILURE [code, stdout, stderr]`: the disk or the SR failed.
    SrBackendFailure { code: String, message: String },
    /// `VM_BAD_POWER_STATE [vm, expected, actual]`; states in lower case, as xapi writes them.
    VmBadPowerState {
        vm: String,
        expected: String,
        actual: String,
    },
    /// `VM_IS_TEMPLATE [vm, operation]`: templates are cloned, never started.
    VmIsTemplate { vm: String, operation: String },
    /// `OPERATION_BLOCKED [ref, code]`: the VM's `blocked_operations` names the operation.
    OperationBlocked { reference: String, code: String },
    /// `OTHER_OPERATION_IN_PROGRESS [class, ref, operation]`.
    OtherOperationInProgress {
        class: String,
        reference: String,
        operation: String,
    },
    /// `HOST_NOT_ENOUGH_FREE_MEMORY [needed, available]` (bytes).
    HostNotEnoughFreeMemory { needed: u64, available: u64 },
    /// `MEMORY_CONSTRAINT_VIOLATION [constraint]`: static_min <= dynamic_min <= dynamic_max
    /// <= static_max does not hold (or a size is zero).
    MemoryConstraintViolation { constraint: String },
    /// `VM_FAILED_SHUTDOWN_ACKNOWLEDGMENT [vm]`: the guest did not acknowledge a clean
    /// shutdown or reboot request in time; it is left running.
    VmFailedShutdownAcknowledgment { vm: String },
    /// `VM_SHUTDOWN_TIMEOUT [vm, timeout]`: the guest acknowledged but did not stop in time
    /// (seconds); it is left running.
    VmShutdownTimeout { vm: String, timeout_secs: u64 },
    /// `BOOTLOADER_FAILED [vm, reason]`: xapi's code for a kernel or ramdisk that cannot be
    /// found or loaded; the reason names the field (`PV_kernel`, `PV_ramdisk`) and why.
    BootloaderFailed { vm: String, reason: String },
    /// The network classes' failures (`NETWORK_CONTAINS_VIF`, `VLAN_TAG_INVALID`,
    /// `MAC_INVALID`, ...; error_network.rs).
    Network(crate::error_network::NetworkError),
    /// `VBD_NOT_EMPTY [vbd]`: `VBD.insert` into a drive that holds a medium.
    VbdNotEmpty { vbd: String },
    /// `VBD_IS_EMPTY [vbd]`: `VBD.eject` from an empty drive.
    VbdIsEmpty { vbd: String },
    /// `VBD_NOT_REMOVABLE_MEDIA [vbd]`: insert or eject on a VBD that is not a CD.
    VbdNotRemovableMedia { vbd: String },
    /// `VBD_NOT_UNPLUGGABLE [vbd]`: the VBD's `unpluggable` is false.
    VbdNotUnpluggable { vbd: String },
    /// `VBD_CDS_MUST_BE_READONLY []`
    VbdCdsMustBeReadonly,
    /// `DEVICE_ALREADY_ATTACHED [device]`: plugging an attached VBD (the ref).
    DeviceAlreadyAttached { device: String },
    /// `DEVICE_ALREADY_DETACHED [device]`: unplugging a detached VBD (the ref).
    DeviceAlreadyDetached { device: String },
    /// `DEVICE_ALREADY_EXISTS [device]`: the VM already has a VBD with this `userdevice`.
    DeviceAlreadyExists { device: String },
    /// `INVALID_DEVICE [device]`: a `userdevice` that is not `0`..`15` or `autodetect`.
    InvalidDevice { device: String },
    /// `VDI_INCOMPATIBLE_TYPE [vdi, type]`: a VDI of a type no VBD attaches
    /// (`ha_statefile`, `redo_log`, `cbt_metadata`).
    VdiIncompatibleType { vdi: String, vdi_type: String },
    /// `VDI_IS_NOT_ISO [vdi, reason]`: a disk image put in a CD drive.
    VdiIsNotIso { vdi: String, reason: String },
}

impl ApiError {
    /// The xapi error code (first element of the wire list).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MessageMethodUnknown { .. } => "MESSAGE_METHOD_UNKNOWN",
            ApiError::MessageParameterCountMismatch { .. } => "MESSAGE_PARAMETER_COUNT_MISMATCH",
            ApiError::HandleInvalid { .. } => "HANDLE_INVALID",
            ApiError::UuidInvalid { .. } => "UUID_INVALID",
            ApiError::FieldTypeError { .. } => "FIELD_TYPE_ERROR",
            ApiError::SessionInvalid { .. } => "SESSION_INVALID",
            ApiError::SessionAuthenticationFailed { .. } | ApiError::LoginThrottled { .. } => {
                "SESSION_AUTHENTICATION_FAILED"
            }
            ApiError::MapDuplicateKey { .. } => "MAP_DUPLICATE_KEY",
            ApiError::EventsLost => "EVENTS_LOST",
            ApiError::EventFromTokenParseFailure { .. } => "EVENT_FROM_TOKEN_PARSE_FAILURE",
            ApiError::EventSubscriptionParseFailure { .. } => "EVENT_SUBSCRIPTION_PARSE_FAILURE",
            ApiError::SessionNotRegistered { .. } => "SESSION_NOT_REGISTERED",
            ApiError::TaskCancelled { .. } => "TASK_CANCELLED",
            ApiError::TooManyPendingTasks => "TOO_MANY_PENDING_TASKS",
            ApiError::OperationNotAllowed { .. } => "OPERATION_NOT_ALLOWED",
            ApiError::XmlRpcUnmarshalFailure { .. } => "XMLRPC_UNMARSHAL_FAILURE",
            ApiError::InternalError { .. } => "INTERNAL_ERROR",
            ApiError::SrFull { .. } => "SR_FULL",
            ApiError::VdiInUse { .. } => "VDI_IN_USE",
            ApiError::VdiReadOnly { .. } => "VDI_READONLY",
            ApiError::ValueNotSupported { .. } => "VALUE_NOT_SUPPORTED",
            ApiError::SrBackendFailure { .. } => "SR_BACKEND_FAILURE",
            ApiError::VmBadPowerState { .. } => "VM_BAD_POWER_STATE",
            ApiError::VmIsTemplate { .. } => "VM_IS_TEMPLATE",
            ApiError::OperationBlocked { .. } => "OPERATION_BLOCKED",
            ApiError::OtherOperationInProgress { .. } => "OTHER_OPERATION_IN_PROGRESS",
            ApiError::HostNotEnoughFreeMemory { .. } => "HOST_NOT_ENOUGH_FREE_MEMORY",
            ApiError::MemoryConstraintViolation { .. } => "MEMORY_CONSTRAINT_VIOLATION",
            ApiError::VmFailedShutdownAcknowledgment { .. } => "VM_FAILED_SHUTDOWN_ACKNOWLEDGMENT",
            ApiError::VmShutdownTimeout { .. } => "VM_SHUTDOWN_TIMEOUT",
            ApiError::BootloaderFailed { .. } => "BOOTLOADER_FAILED",
            ApiError::Network(e) => e.code(),
            ApiError::VbdNotEmpty { .. } => "VBD_NOT_EMPTY",
            ApiError::VbdIsEmpty { .. } => "VBD_IS_EMPTY",
            ApiError::VbdNotRemovableMedia { .. } => "VBD_NOT_REMOVABLE_MEDIA",
            ApiError::VbdNotUnpluggable { .. } => "VBD_NOT_UNPLUGGABLE",
            ApiError::VbdCdsMustBeReadonly => "VBD_CDS_MUST_BE_READONLY",
            ApiError::DeviceAlreadyAttached { .. } => "DEVICE_ALREADY_ATTACHED",
            ApiError::DeviceAlreadyDetached { .. } => "DEVICE_ALREADY_DETACHED",
            ApiError::DeviceAlreadyExists { .. } => "DEVICE_ALREADY_EXISTS",
            ApiError::InvalidDevice { .. } => "INVALID_DEVICE",
            ApiError::VdiIncompatibleType { .. } => "VDI_INCOMPATIBLE_TYPE",
            ApiError::VdiIsNotIso { .. } => "VDI_IS_NOT_ISO",
        }
    }

    /// The parameters that follow the code on the wire.
    pub fn params(&self) -> Vec<String> {
        match self {
            ApiError::MessageMethodUnknown { method } => vec![method.clone()],
            ApiError::MessageParameterCountMismatch {
                method,
                expected,
                received,
            } => vec![method.clone(), expected.to_string(), received.to_string()],
            ApiError::HandleInvalid { class, reference } => vec![class.clone(), reference.clone()],
            ApiError::UuidInvalid { class, uuid } => vec![class.clone(), uuid.clone()],
            ApiError::FieldTypeError { field } => vec![field.clone()],
            ApiError::SessionInvalid { reference } => vec![reference.clone()],
            ApiError::SessionAuthenticationFailed { user } => {
                vec![user.clone(), "Authentication failure".to_string()]
            }
            ApiError::LoginThrottled {
                user,
                retry_after_ms,
            } => vec![
                user.clone(),
                format!(
                    "Authentication failure (answered after a {retry_after_ms} ms delay: \
                     repeated failed logins)"
                ),
            ],
            ApiError::MapDuplicateKey {
                class,
                field,
                reference,
                key,
            } => vec![class.clone(), field.clone(), reference.clone(), key.clone()],
            ApiError::EventsLost | ApiError::TooManyPendingTasks => Vec::new(),
            ApiError::EventFromTokenParseFailure { token } => vec![token.clone()],
            ApiError::EventSubscriptionParseFailure { subscription } => vec![subscription.clone()],
            ApiError::SessionNotRegistered { session } => vec![session.clone()],
            ApiError::TaskCancelled { task } => vec![task.clone()],
            ApiError::OperationNotAllowed { reason } => vec![reason.clone()],
            ApiError::XmlRpcUnmarshalFailure { expected, received } => {
                vec![expected.clone(), received.clone()]
            }
            ApiError::InternalError { message } => vec![message.clone()],
            ApiError::SrFull { requested, maximum } => {
                vec![requested.to_string(), maximum.to_string()]
            }
            ApiError::VdiInUse { vdi, operation } => vec![vdi.clone(), operation.clone()],
            ApiError::VdiReadOnly { vdi } => vec![vdi.clone()],
            ApiError::ValueNotSupported {
                field,
                value,
                reason,
            } => vec![field.clone(), value.clone(), reason.clone()],
            ApiError::SrBackendFailure { code, message } => {
                vec![code.clone(), String::new(), message.clone()]
            }
            ApiError::VmBadPowerState {
                vm,
                expected,
                actual,
            } => vec![vm.clone(), expected.clone(), actual.clone()],
            ApiError::VmIsTemplate { vm, operation } => vec![vm.clone(), operation.clone()],
            ApiError::OperationBlocked { reference, code } => {
                vec![reference.clone(), code.clone()]
            }
            ApiError::OtherOperationInProgress {
                class,
                reference,
                operation,
            } => vec![class.clone(), reference.clone(), operation.clone()],
            ApiError::HostNotEnoughFreeMemory { needed, available } => {
                vec![needed.to_string(), available.to_string()]
            }
            ApiError::MemoryConstraintViolation { constraint } => vec![constraint.clone()],
            ApiError::VmFailedShutdownAcknowledgment { vm } => vec![vm.clone()],
            ApiError::VmShutdownTimeout { vm, timeout_secs } => {
                vec![vm.clone(), timeout_secs.to_string()]
            }
            ApiError::BootloaderFailed { vm, reason } => vec![vm.clone(), reason.clone()],
            ApiError::Network(e) => e.params(),
            ApiError::VbdNotEmpty { vbd }
            | ApiError::VbdIsEmpty { vbd }
            | ApiError::VbdNotRemovableMedia { vbd }
            | ApiError::VbdNotUnpluggable { vbd } => vec![vbd.clone()],
            ApiError::VbdCdsMustBeReadonly => Vec::new(),
            ApiError::DeviceAlreadyAttached { device }
            | ApiError::DeviceAlreadyDetached { device }
            | ApiError::DeviceAlreadyExists { device }
            | ApiError::InvalidDevice { device } => vec![device.clone()],
            ApiError::VdiIncompatibleType { vdi, vdi_type } => {
                vec![vdi.clone(), vdi_type.clone()]
            }
            ApiError::VdiIsNotIso { vdi, reason } => vec![vdi.clone(), reason.clone()],
        }
    }

    /// `[code, params...]`, the `ErrorDescription` / JSON-RPC v1 error list.
    pub fn description(&self) -> Vec<String> {
        let mut out = vec![self.code().to_string()];
        out.extend(self.params());
        out
    }

    pub fn handle_invalid(class: &str, reference: &str) -> ApiError {
        ApiError::HandleInvalid {
            class: class.to_string(),
            reference: reference.to_string(),
        }
    }

    pub fn field_type(field: &str) -> ApiError {
        ApiError::FieldTypeError {
            field: field.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_code_and_params_like_xapi() {
        let e = ApiError::MessageParameterCountMismatch {
            method: "pool.get_all".into(),
            expected: 1,
            received: 0,
        };
        assert_eq!(
            e.description(),
            vec!["MESSAGE_PARAMETER_COUNT_MISMATCH", "pool.get_all", "1", "0"]
        );
        let e = ApiError::MapDuplicateKey {
            class: "pool".into(),
            field: "other_config".into(),
            reference: "OpaqueRef:x".into(),
            key: "k".into(),
        };
        assert_eq!(
            e.description(),
            vec![
                "MAP_DUPLICATE_KEY",
                "pool",
                "other_config",
                "OpaqueRef:x",
                "k"
            ]
        );
        assert_eq!(ApiError::EventsLost.description(), vec!["EVENTS_LOST"]);
    }

    #[test]
    fn throttled_login_keeps_the_auth_failure_code_with_a_hint() {
        let e = ApiError::LoginThrottled {
            user: "root".into(),
            retry_after_ms: 2000,
        };
        assert_eq!(e.code(), "SESSION_AUTHENTICATION_FAILED");
        assert!(e.params()[1].contains("2000 ms"));
    }
}
