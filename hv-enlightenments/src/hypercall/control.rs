//! The hypercall input value (control word, RCX), the result value (RAX) and
//! the call codes this crate knows (TLFS 3.7 "Hypercall Inputs"; Linux
//! `include/hyperv/hvgdk_mini.h`, `HV_HYPERCALL_*` and `HVCALL_*`).

use bitfield_struct::bitfield;
use core::fmt;

use super::status::HvStatus;

/// The hypercall input value passed in RCX.
///
/// Layout (`HV_HYPERCALL_*` in `hvgdk_mini.h`): bits 15:0 call code, 16 fast,
/// 26:17 variable header size in 8-byte units, 43:32 rep count, 59:48 rep
/// start index. Bits 31:27, 47:44 and 63:60 are reserved; KVM's
/// `kvm_hv_hypercall` answers a call with any of them set with
/// `INVALID_HYPERCALL_INPUT` (`HV_HYPERCALL_RSVD_MASK`). Bit 31 is the
/// root partition's "nested" flag, which a guest may not use.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct Control {
    /// Call code (bits 15:0).
    pub code: u16,
    /// Register ("fast") calling convention (bit 16).
    pub fast: bool,
    /// Variable header size in 8-byte units (bits 26:17).
    #[bits(10)]
    pub variable_header_size: u16,
    /// Reserved, bits 31:27.
    #[bits(5)]
    __: u8,
    /// Rep count (bits 43:32).
    #[bits(12)]
    pub rep_count: u16,
    /// Reserved, bits 47:44.
    #[bits(4)]
    __: u8,
    /// Rep start index (bits 59:48).
    #[bits(12)]
    pub rep_start: u16,
    /// Reserved, bits 63:60.
    #[bits(4)]
    __: u8,
}

impl Control {
    /// The reserved bits: 31:27, 47:44 and 63:60 (`HV_HYPERCALL_RSVD_MASK`).
    pub const RESERVED_MASK: u64 = (0x1F << 27) | (0xF << 44) | (0xF << 60);

    /// Whether any reserved bit is set.
    pub const fn has_reserved_bits(self) -> bool {
        self.into_bits() & Self::RESERVED_MASK != 0
    }

    /// Whether the call is a rep call as KVM counts it: rep count or rep
    /// start non-zero (`hc.rep` in `kvm_hv_hypercall`).
    pub const fn is_rep(self) -> bool {
        self.rep_count() != 0 || self.rep_start() != 0
    }

    /// The call code as a [`CallCode`].
    pub const fn call_code(self) -> CallCode {
        CallCode(self.code())
    }

    /// Whether this is a fast call whose input continues in XMM0-XMM5, so
    /// the VMM must fill [`HypercallRegs::xmm`](super::HypercallRegs::xmm)
    /// (KVM's `is_xmm_fast_hypercall`: the flush calls and
    /// SendSyntheticClusterIpiEx). The guest may only do this when CPUID
    /// 0x40000003 EDX bit 4 (XMM hypercall input) is published.
    pub const fn uses_xmm_input(self) -> bool {
        self.fast()
            && matches!(
                self.call_code(),
                CallCode::FLUSH_VIRTUAL_ADDRESS_SPACE
                    | CallCode::FLUSH_VIRTUAL_ADDRESS_LIST
                    | CallCode::FLUSH_VIRTUAL_ADDRESS_SPACE_EX
                    | CallCode::FLUSH_VIRTUAL_ADDRESS_LIST_EX
                    | CallCode::SEND_SYNTHETIC_CLUSTER_IPI_EX
            )
    }
}

/// A hypercall code (bits 15:0 of the control word).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallCode(pub u16);

impl CallCode {
    /// HvCallFlushVirtualAddressSpace (`HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE`).
    pub const FLUSH_VIRTUAL_ADDRESS_SPACE: Self = Self(0x0002);
    /// HvCallFlushVirtualAddressList, a rep call.
    pub const FLUSH_VIRTUAL_ADDRESS_LIST: Self = Self(0x0003);
    /// HvCallNotifyLongSpinWait.
    pub const NOTIFY_LONG_SPIN_WAIT: Self = Self(0x0008);
    /// HvCallSendSyntheticClusterIpi (`HVCALL_SEND_IPI`).
    pub const SEND_SYNTHETIC_CLUSTER_IPI: Self = Self(0x000B);
    /// HvCallFlushVirtualAddressSpaceEx.
    pub const FLUSH_VIRTUAL_ADDRESS_SPACE_EX: Self = Self(0x0013);
    /// HvCallFlushVirtualAddressListEx, a rep call.
    pub const FLUSH_VIRTUAL_ADDRESS_LIST_EX: Self = Self(0x0014);
    /// HvCallSendSyntheticClusterIpiEx (`HVCALL_SEND_IPI_EX`).
    pub const SEND_SYNTHETIC_CLUSTER_IPI_EX: Self = Self(0x0015);
    /// HvCallPostMessage (`HVCALL_POST_MESSAGE`).
    pub const POST_MESSAGE: Self = Self(0x005C);
    /// HvCallSignalEvent (`HVCALL_SIGNAL_EVENT`).
    pub const SIGNAL_EVENT: Self = Self(0x005D);
    /// HvExtCallQueryCapabilities, the first extended hypercall
    /// (`HV_EXT_CALL_QUERY_CAPABILITIES`).
    pub const EXT_QUERY_CAPABILITIES: Self = Self(0x8001);
    /// The last extended hypercall KVM knows (`HV_EXT_CALL_MAX`: 0x8001 +
    /// 64).
    pub const EXT_LAST: Self = Self(0x8041);

    /// The TLFS name of the call, or `None` for a code not decoded here.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::FLUSH_VIRTUAL_ADDRESS_SPACE => "FlushVirtualAddressSpace",
            Self::FLUSH_VIRTUAL_ADDRESS_LIST => "FlushVirtualAddressList",
            Self::NOTIFY_LONG_SPIN_WAIT => "NotifyLongSpinWait",
            Self::SEND_SYNTHETIC_CLUSTER_IPI => "SendSyntheticClusterIpi",
            Self::FLUSH_VIRTUAL_ADDRESS_SPACE_EX => "FlushVirtualAddressSpaceEx",
            Self::FLUSH_VIRTUAL_ADDRESS_LIST_EX => "FlushVirtualAddressListEx",
            Self::SEND_SYNTHETIC_CLUSTER_IPI_EX => "SendSyntheticClusterIpiEx",
            Self::POST_MESSAGE => "PostMessage",
            Self::SIGNAL_EVENT => "SignalEvent",
            _ => return None,
        })
    }
}

impl fmt::Debug for CallCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "CallCode::{name}"),
            None => write!(f, "CallCode({:#06x})", self.0),
        }
    }
}

/// The hypercall result value returned in RAX: status in bits 15:0, reps
/// completed in bits 43:32 (TLFS 3.7 "Hypercall Result Value").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HypercallResult {
    /// The call status.
    pub status: HvStatus,
    /// Reps completed, 0..=4095; 0 for non-rep calls.
    pub reps_completed: u16,
}

impl HypercallResult {
    /// Bit offset of "reps completed" (`HV_HYPERCALL_REP_COMP_OFFSET`).
    const REP_COMP_OFFSET: u32 = 32;
    /// Width mask of "reps completed" (12 bits).
    const REP_COMP_MASK: u64 = 0xFFF;

    /// A result with `status` and no reps completed.
    pub const fn new(status: HvStatus) -> Self {
        Self {
            status,
            reps_completed: 0,
        }
    }

    /// A successful result with `reps_completed` reps done.
    pub const fn success(reps_completed: u16) -> Self {
        Self {
            status: HvStatus::SUCCESS,
            reps_completed,
        }
    }

    /// The RAX value. Reps completed is truncated to its 12-bit field.
    ///
    /// ```
    /// use hv_enlightenments::hypercall::{HvStatus, HypercallResult};
    ///
    /// assert_eq!(HypercallResult::success(3).encode(), 3 << 32);
    /// let refused = HypercallResult::from(HvStatus::INVALID_HYPERCALL_INPUT);
    /// assert_eq!(HypercallResult::decode(refused.encode()), refused);
    /// ```
    pub const fn encode(self) -> u64 {
        self.status.0 as u64
            | ((self.reps_completed as u64 & Self::REP_COMP_MASK) << Self::REP_COMP_OFFSET)
    }

    /// Parses a RAX value (the guest-side view).
    pub const fn decode(rax: u64) -> Self {
        Self {
            status: HvStatus(rax as u16),
            reps_completed: ((rax >> Self::REP_COMP_OFFSET) & Self::REP_COMP_MASK) as u16,
        }
    }
}

impl From<HvStatus> for HypercallResult {
    fn from(status: HvStatus) -> Self {
        Self::new(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_layout_matches_hvgdk_mini() {
        let c = Control::new()
            .with_code(0x14)
            .with_fast(true)
            .with_variable_header_size(0x3FF)
            .with_rep_count(0xFFF)
            .with_rep_start(0xFFF);
        assert_eq!(
            c.into_bits(),
            0x14 | (1 << 16) | (0x3FF << 17) | (0xFFF << 32) | (0xFFF << 48)
        );
        assert!(!c.has_reserved_bits());
        for bit in [27, 31, 44, 47, 60, 63] {
            assert!(
                Control::from_bits(1 << bit).has_reserved_bits(),
                "bit {bit}"
            );
        }
        // Every bit is either a field or reserved.
        let fields = Control::from_bits(u64::MAX).into_bits() & !Control::RESERVED_MASK;
        assert_eq!(fields, c.into_bits() | 0xFFFF);
    }

    #[test]
    fn result_encoding() {
        let r = HypercallResult::success(509);
        assert_eq!(r.encode(), 509 << 32);
        assert_eq!(HypercallResult::decode(r.encode()), r);
        assert_eq!(
            HypercallResult::new(HvStatus::INVALID_ALIGNMENT).encode(),
            4
        );
        assert_eq!(HypercallResult::success(0x1FFF).encode(), 0xFFF << 32);
    }

    #[test]
    fn xmm_input_calls() {
        let fast_flush = Control::new()
            .with_code(CallCode::FLUSH_VIRTUAL_ADDRESS_SPACE.0)
            .with_fast(true);
        assert!(fast_flush.uses_xmm_input());
        let fast_ipi = Control::new()
            .with_code(CallCode::SEND_SYNTHETIC_CLUSTER_IPI.0)
            .with_fast(true);
        assert!(!fast_ipi.uses_xmm_input());
        assert!(!fast_flush.with_fast(false).uses_xmm_input());
    }
}
