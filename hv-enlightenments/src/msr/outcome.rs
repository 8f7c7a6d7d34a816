//! What an MSR access asks of the VMM.
//!
//! Every variant says what to do in terms the VMM already has (a value for
//! RDMSR, an exception, an x2APIC register access, bytes in guest memory,
//! a count to track), so it can be applied without Hyper-V knowledge.

use super::values::{VP_ASSIST_APIC_ASSIST_OFFSET, VP_ASSIST_APIC_ASSIST_SIZE};
use crate::HV_PAGE_SIZE;

/// x2APIC MSR of the EOI register.
pub const X2APIC_MSR_EOI: u32 = 0x80B;
/// x2APIC MSR of the ICR.
pub const X2APIC_MSR_ICR: u32 = 0x830;
/// x2APIC MSR of the TPR.
pub const X2APIC_MSR_TPR: u32 = 0x808;

/// An APIC register the synthetic EOI/ICR/TPR MSRs alias.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApicRegister {
    /// HV_X64_MSR_EOI: same effect as an x2APIC EOI write.
    Eoi,
    /// HV_X64_MSR_ICR: one 64-bit access. In x2APIC mode bits 63:32 hold
    /// the 32-bit destination; in xAPIC mode the destination is in bits
    /// 63:56 (the xAPIC ICR_HIGH layout).
    Icr,
    /// HV_X64_MSR_TPR: the task priority (bits 7:0).
    Tpr,
}

impl ApicRegister {
    /// The register synthetic MSR `msr` aliases (HV_X64_MSR_EOI, _ICR,
    /// _TPR), if it is one: the hot synthetic MSRs, which a VMM may send
    /// straight to its APIC once [`allowed`](super::allowed) says the guest
    /// may touch them (no per-VP state is involved).
    ///
    /// ```
    /// use hv_enlightenments::msr::{self, ApicRegister};
    ///
    /// assert_eq!(ApicRegister::aliased_by(msr::HV_X64_MSR_EOI), Some(ApicRegister::Eoi));
    /// assert_eq!(ApicRegister::aliased_by(msr::HV_X64_MSR_VP_INDEX), None);
    /// ```
    pub const fn aliased_by(msr: u32) -> Option<Self> {
        match msr {
            super::HV_X64_MSR_EOI => Some(ApicRegister::Eoi),
            super::HV_X64_MSR_ICR => Some(ApicRegister::Icr),
            super::HV_X64_MSR_TPR => Some(ApicRegister::Tpr),
            _ => None,
        }
    }

    /// The x2APIC MSR with the same register (KVM replays the synthetic
    /// accesses there: `kvm_hv_vapic_msr_write`).
    pub const fn x2apic_msr(self) -> u32 {
        match self {
            ApicRegister::Eoi => X2APIC_MSR_EOI,
            ApicRegister::Icr => X2APIC_MSR_ICR,
            ApicRegister::Tpr => X2APIC_MSR_TPR,
        }
    }
}

/// An access the VMM hands to its local APIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApicAccess {
    /// Read the register; the APIC's answer (value or #GP) is the RDMSR's.
    Read(ApicRegister),
    /// Write the register; the APIC may still refuse it with #GP.
    Write(ApicRegister, u64),
}

/// A write the VMM makes to guest memory on the guest's behalf.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuestMemoryWrite {
    /// Write `len` zero bytes at `gpa`.
    Zero {
        /// Guest physical address.
        gpa: u64,
        /// Number of bytes.
        len: usize,
    },
    /// Write the VMM's hypercall page at `gpa`, the start of a page: the
    /// instruction that traps to the VMM, `ret`, then INT3 filler
    /// ([`crate::hypercall::write_hypercall_page`]).
    HypercallStub {
        /// Guest physical address.
        gpa: u64,
    },
}

/// An accepted write that needs the VMM to act.
///
/// A page this names was reported as guest RAM by the [`super::GuestRam`]
/// check of the write, so the guest-memory write it implies can be made;
/// pages that are not RAM were refused with #GP before the value was
/// committed, as KVM does when writing the hypercall stub or
/// `kvm_clear_guest` fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsrAction {
    /// The hypercall page was enabled: fill it with the stub bytes.
    WriteHypercallPage {
        /// Page address.
        gpa: u64,
    },
    /// The VP assist page moved. `Some`: zero `apic_assist` (the 32-bit
    /// field at offset 0) before the next entry; lazy EOI may use the
    /// page from now on. `None`: disabled, stop using it.
    VpAssistPage {
        /// Page address, when enabled.
        gpa: Option<u64>,
    },
    /// Whether this vCPU has any SINT delivering with AutoEOI changed. An
    /// APICv/AVIC inhibit manager keeps a count of vCPUs with `new ==
    /// true` and inhibits while it is non-zero (KVM `synic_update_vector`).
    AutoEoiChanged {
        /// Usage before the write.
        old: bool,
        /// Usage after the write.
        new: bool,
    },
    /// The SynIC message page moved. `Some`: zero the page (KVM
    /// `synic_set_msr` clears it); `None`: disabled.
    SynicMessagePage {
        /// Page address, when enabled.
        gpa: Option<u64>,
    },
    /// The SynIC event flags page moved; as for the message page.
    SynicEventFlagsPage {
        /// Page address, when enabled.
        gpa: Option<u64>,
    },
    /// The reference TSC page moved. `Some`: write the page
    /// ([`crate::reftime::ReferenceTscPage`]); a page whose 32-bit sequence
    /// (offset 0) is 0 tells the guest to use TIME_REF_COUNT instead.
    /// `None`: disabled.
    ReferenceTscPage {
        /// Page address, when enabled.
        gpa: Option<u64>,
    },
    /// End of message: the guest freed a message slot; pending SynIC
    /// messages may be delivered again
    /// ([`crate::synic::MessageQueue::end_of_message`]), and synthetic
    /// timers whose message waited are due for
    /// [`synic::process_stimers`](crate::synic::process_stimers).
    EndOfMessage,
    /// A synthetic timer's CONFIG or COUNT changed (the timer is
    /// cancelled and, if enabled, waits to be started): run
    /// [`synic::process_stimers`](crate::synic::process_stimers) with the
    /// current reference time before the next entry, then arm the host
    /// timer for [`Vp::stimer_deadline`](super::Vp::stimer_deadline).
    SyntheticTimersChanged,
    /// The guest reported a crash (CRASH_CTL write with CRASH_NOTIFY, bit
    /// 63): P0-P4 as it left them (Linux `hyperv_report_panic`: P0 the
    /// panic code, P1 GUEST_OS_ID, P2 RIP, P3 RAX, P4 RSP). KVM exits with
    /// `KVM_SYSTEM_EVENT_CRASH`.
    GuestCrashed {
        /// CRASH_P0..P4.
        params: [u64; super::index::HV_CRASH_PARAMS],
    },
    /// The guest asked for a system reset (RESET MSR write of 1; KVM:
    /// `KVM_SYSTEM_EVENT_RESET`).
    ResetRequested,
}

impl MsrAction {
    /// The guest-memory write this action implies, if any.
    ///
    /// ```
    /// use hv_enlightenments::msr::{GuestMemoryWrite, MsrAction};
    ///
    /// // Enabling the VP assist page clears its 4-byte apic_assist field.
    /// let action = MsrAction::VpAssistPage { gpa: Some(0x7000) };
    /// let Some(GuestMemoryWrite::Zero { gpa, len }) = action.guest_memory_write() else {
    ///     unreachable!()
    /// };
    /// let zeros = vec![0u8; len]; // written at `gpa` through the VMM's memory
    /// assert_eq!((gpa, zeros.len()), (0x7000, 4));
    /// ```
    pub const fn guest_memory_write(&self) -> Option<GuestMemoryWrite> {
        match *self {
            MsrAction::WriteHypercallPage { gpa } => Some(GuestMemoryWrite::HypercallStub { gpa }),
            MsrAction::VpAssistPage { gpa: Some(gpa) } => Some(GuestMemoryWrite::Zero {
                gpa: gpa + VP_ASSIST_APIC_ASSIST_OFFSET,
                len: VP_ASSIST_APIC_ASSIST_SIZE,
            }),
            MsrAction::SynicMessagePage { gpa: Some(gpa) }
            | MsrAction::SynicEventFlagsPage { gpa: Some(gpa) } => Some(GuestMemoryWrite::Zero {
                gpa,
                len: HV_PAGE_SIZE,
            }),
            _ => None,
        }
    }
}

/// The result of a synthetic MSR read or write.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsrOutcome {
    /// RDMSR returns this value.
    Value(u64),
    /// WRMSR accepted (or ignored, as the TLFS says); nothing else to do.
    Done,
    /// Inject #GP(0).
    InjectGp,
    /// Forward to the local APIC.
    Apic(ApicAccess),
    /// WRMSR accepted; perform this action.
    Action(MsrAction),
}

impl MsrOutcome {
    /// The value, for a read that produced one.
    pub const fn value(self) -> Option<u64> {
        match self {
            MsrOutcome::Value(v) => Some(v),
            _ => None,
        }
    }

    /// Whether the access faults.
    pub const fn is_gp(self) -> bool {
        matches!(self, MsrOutcome::InjectGp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x2apic_aliases() {
        assert_eq!(ApicRegister::Eoi.x2apic_msr(), 0x80B);
        assert_eq!(ApicRegister::Icr.x2apic_msr(), 0x830);
        assert_eq!(ApicRegister::Tpr.x2apic_msr(), 0x808);
    }

    #[test]
    fn guest_memory_writes() {
        assert_eq!(
            MsrAction::VpAssistPage { gpa: Some(0x5000) }.guest_memory_write(),
            Some(GuestMemoryWrite::Zero {
                gpa: 0x5000,
                len: 4
            })
        );
        assert_eq!(
            MsrAction::VpAssistPage { gpa: None }.guest_memory_write(),
            None
        );
        assert_eq!(
            MsrAction::SynicMessagePage { gpa: Some(0x7000) }.guest_memory_write(),
            Some(GuestMemoryWrite::Zero {
                gpa: 0x7000,
                len: 4096
            })
        );
        assert_eq!(
            MsrAction::WriteHypercallPage { gpa: 0x1000 }.guest_memory_write(),
            Some(GuestMemoryWrite::HypercallStub { gpa: 0x1000 })
        );
        assert_eq!(
            MsrAction::AutoEoiChanged {
                old: false,
                new: true
            }
            .guest_memory_write(),
            None
        );
    }
}
