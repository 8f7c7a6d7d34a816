//! How a scenario sends IPIs, completes interrupts and shoots down TLBs,
//! and the guest-kernel settings each way needs.

use crate::guest::abi::{eoi_mode, shared};

/// How IPIs are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpiMode {
    /// One x2APIC ICR write per target.
    Native,
    /// HvCallSendSyntheticClusterIpi, fast (targets below VP 64).
    PvFast,
    /// HvCallSendSyntheticClusterIpiEx with a sparse VP set in memory.
    PvEx,
    /// One xAPIC ICR write (MMIO, straight from CPL3) per target; the
    /// APIC stays in xAPIC mode (at most 255 vCPUs).
    Xapic,
    /// One HV_X64_MSR_ICR write per target with the APIC in xAPIC mode
    /// (destination in bits 63:56), lazy EOI: what Linux does in xAPIC
    /// mode when APIC_ACCESS_RECOMMENDED is set.
    SyntheticIcr,
}

impl IpiMode {
    /// Whether the mode uses the Hyper-V hypercalls.
    pub fn pv(self) -> bool {
        matches!(self, IpiMode::PvFast | IpiMode::PvEx)
    }

    /// Whether the mode needs the Hyper-V enlightenments.
    pub fn enlightened(self) -> bool {
        matches!(
            self,
            IpiMode::PvFast | IpiMode::PvEx | IpiMode::SyntheticIcr
        )
    }

    /// The guest-kernel settings for this mode: IPI_MODE, EOI_MODE and
    /// XAPIC (interrupt handlers complete lazily when enlightened, as a
    /// Linux guest does with APIC_ACCESS_RECOMMENDED).
    pub(super) fn kernel_settings(self) -> Vec<(u64, u64)> {
        let (ipi, eoi, xapic) = match self {
            IpiMode::Native => (0, eoi_mode::X2APIC, 0),
            IpiMode::PvFast | IpiMode::PvEx => (1, eoi_mode::LAZY, 0),
            IpiMode::Xapic => (2, eoi_mode::XAPIC, 1),
            IpiMode::SyntheticIcr => (3, eoi_mode::LAZY, 1),
        };
        vec![
            (shared::IPI_MODE, ipi),
            (shared::EOI_MODE, eoi),
            (shared::XAPIC, xapic),
        ]
    }
}

/// How interrupts are completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EoiMode {
    /// x2APIC EOI MSR.
    X2apic,
    /// HV_X64_MSR_EOI.
    Synthetic,
    /// Lazy EOI through the VP assist page.
    Lazy,
}

/// How a TLB shootdown is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// `invlpg` locally and a flush IPI to every other vCPU.
    Native,
    /// HvCallFlushVirtualAddressList(Ex) for every other vCPU.
    Pv,
    /// Change the PTE and do not flush at all (to observe staleness).
    None,
}
