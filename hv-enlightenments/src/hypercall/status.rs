//! Hypercall status codes (TLFS 3.8 "Hypercall Status Codes"; Linux
//! `include/hyperv/hvgdk_mini.h`, `HV_STATUS_*`).

use core::fmt;

/// A hypercall status: the low 16 bits of the result value in RAX.
///
/// A newtype rather than an enum so that any value a hypervisor returns can
/// be carried and printed; the constants name the ones this crate produces.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HvStatus(pub u16);

impl HvStatus {
    /// The call succeeded.
    pub const SUCCESS: Self = Self(0x0);
    /// The call code is not supported (unknown or not advertised).
    pub const INVALID_HYPERCALL_CODE: Self = Self(0x2);
    /// The control word is invalid (reserved bits, rep count/start, variable
    /// header size) or the input block could not be read or is malformed.
    pub const INVALID_HYPERCALL_INPUT: Self = Self(0x3);
    /// An input or output GPA is not 8-byte aligned.
    pub const INVALID_ALIGNMENT: Self = Self(0x4);
    /// A parameter is invalid.
    pub const INVALID_PARAMETER: Self = Self(0x5);
    /// The caller lacks the privilege for the call.
    pub const ACCESS_DENIED: Self = Self(0x6);
    /// The partition is not in a state that allows the call.
    pub const INVALID_PARTITION_STATE: Self = Self(0x7);
    /// The operation was denied.
    pub const OPERATION_DENIED: Self = Self(0x8);
    /// A virtual processor index is invalid.
    pub const INVALID_VP_INDEX: Self = Self(0xE);
    /// The port is not a port of the right kind (a message port for
    /// HvPostMessage, an event port for HvSignalEvent), or is gone.
    pub const INVALID_PORT_ID: Self = Self(0x11);
    /// No connection has this id.
    pub const INVALID_CONNECTION_ID: Self = Self(0x12);
    /// The target has no buffer for the message now; the guest retries.
    pub const INSUFFICIENT_BUFFERS: Self = Self(0x13);
    /// The target SynIC, its page or the SINT is disabled or masked
    /// (not in `hvgdk_mini.h`; TLFS `HvStatus.h`, openvmm `hvdef`).
    pub const INVALID_SYNIC_STATE: Self = Self(0x18);

    /// Whether this is [`HvStatus::SUCCESS`].
    pub const fn is_success(self) -> bool {
        self.0 == Self::SUCCESS.0
    }

    /// The TLFS name of the status, or `None` for a value not named here.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::SUCCESS => "SUCCESS",
            Self::INVALID_HYPERCALL_CODE => "INVALID_HYPERCALL_CODE",
            Self::INVALID_HYPERCALL_INPUT => "INVALID_HYPERCALL_INPUT",
            Self::INVALID_ALIGNMENT => "INVALID_ALIGNMENT",
            Self::INVALID_PARAMETER => "INVALID_PARAMETER",
            Self::ACCESS_DENIED => "ACCESS_DENIED",
            Self::INVALID_PARTITION_STATE => "INVALID_PARTITION_STATE",
            Self::OPERATION_DENIED => "OPERATION_DENIED",
            Self::INVALID_VP_INDEX => "INVALID_VP_INDEX",
            Self::INVALID_PORT_ID => "INVALID_PORT_ID",
            Self::INVALID_CONNECTION_ID => "INVALID_CONNECTION_ID",
            Self::INSUFFICIENT_BUFFERS => "INSUFFICIENT_BUFFERS",
            Self::INVALID_SYNIC_STATE => "INVALID_SYNIC_STATE",
            _ => return None,
        })
    }
}

impl fmt::Debug for HvStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "HvStatus::{name}"),
            None => write!(f, "HvStatus({:#x})", self.0),
        }
    }
}

impl fmt::Display for HvStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "status {:#x}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_match_hvgdk_mini() {
        assert_eq!(HvStatus::SUCCESS.0, 0);
        assert_eq!(HvStatus::INVALID_HYPERCALL_CODE.0, 2);
        assert_eq!(HvStatus::INVALID_HYPERCALL_INPUT.0, 3);
        assert_eq!(HvStatus::INVALID_ALIGNMENT.0, 4);
        assert_eq!(HvStatus::INVALID_PARAMETER.0, 5);
        assert_eq!(HvStatus::ACCESS_DENIED.0, 6);
        assert_eq!(HvStatus::INVALID_VP_INDEX.0, 0xE);
        assert_eq!(HvStatus::INVALID_PORT_ID.0, 0x11);
        assert_eq!(HvStatus::INVALID_CONNECTION_ID.0, 0x12);
        assert_eq!(HvStatus::INSUFFICIENT_BUFFERS.0, 0x13);
        assert_eq!(HvStatus::INVALID_SYNIC_STATE.0, 0x18);
        assert!(HvStatus::SUCCESS.is_success());
        assert!(!HvStatus::INVALID_ALIGNMENT.is_success());
        assert_eq!(HvStatus(0x99).name(), None);
    }
}
