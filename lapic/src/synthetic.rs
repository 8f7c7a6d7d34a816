//! The Hyper-V synthetic EOI, ICR and TPR MSRs (0x40000070-72): their
//! indices, and when they fault.
//!
//! One rule for [`crate::LocalApic`] and for a VMM that replays these
//! writes on another APIC (KVM's in-kernel one, whose x2APIC MSRs are
//! looser: `kvm_lapic_reg_write` masks the TPR and ignores the EOI value),
//! so that both irqchips refuse the same accesses.

/// The lazy EOI flag ([`crate::LocalApic::arm_lazy_eoi`]): bit 0 of the
/// 32-bit `apic_assist` field at this offset of the VP assist page.
pub use hv_enlightenments::msr::{APIC_ASSIST_NO_EOI_REQUIRED, VP_ASSIST_APIC_ASSIST_OFFSET};
/// The Hyper-V synthetic APIC MSRs [`crate::LocalApic::read_msr`] and
/// [`crate::LocalApic::write_msr`] serve (EOI, ICR, TPR) and the VP assist
/// page MSR whose page carries the lazy EOI flag, from hv-enlightenments,
/// so that a VMM using this crate alone can name them.
pub use hv_enlightenments::msr::{
    HV_X64_MSR_EOI, HV_X64_MSR_ICR, HV_X64_MSR_TPR, HV_X64_MSR_VP_ASSIST_PAGE,
};

use crate::mode::ApicMode;
use crate::regs::{HV_EOI_RESERVED, HV_TPR_RESERVED, ICR_X2APIC_RESERVED};

/// Whether a guest WRMSR of `value` to synthetic MSR `msr` is #GP for an
/// APIC in `mode`: always while the APIC is globally disabled; EOI with
/// bits 63:32 set, or in x2APIC mode with any bit set (like the x2APIC
/// EOI, SDM table 10-6); ICR with a bit of KVM's `X2APIC_ICR_RESERVED_BITS`
/// (31:20, 17:16, 13) set, in either mode as `kvm_x2apic_icr_write`
/// checks; TPR with bits 63:8 set (like the x2APIC TPR). Any other MSR is
/// #GP.
///
/// ```
/// use vm_lapic::{synthetic_write_faults, ApicMode, HV_X64_MSR_EOI, HV_X64_MSR_TPR};
///
/// assert!(!synthetic_write_faults(HV_X64_MSR_EOI, 0, ApicMode::X2Apic));
/// assert!(synthetic_write_faults(HV_X64_MSR_EOI, 1, ApicMode::X2Apic)); // non-zero EOI
/// assert!(synthetic_write_faults(HV_X64_MSR_TPR, 0x20, ApicMode::Disabled));
/// ```
pub fn synthetic_write_faults(msr: u32, value: u64, mode: ApicMode) -> bool {
    if mode == ApicMode::Disabled {
        return true;
    }
    match msr {
        HV_X64_MSR_EOI => value & HV_EOI_RESERVED != 0 || (mode == ApicMode::X2Apic && value != 0),
        HV_X64_MSR_ICR => value & ICR_X2APIC_RESERVED != 0,
        HV_X64_MSR_TPR => value & HV_TPR_RESERVED != 0,
        _ => true,
    }
}

/// Whether a guest RDMSR of synthetic MSR `msr` is #GP for an APIC in
/// `mode`: always while the APIC is globally disabled, and for the
/// write-only EOI (KVM: APIC_EOI is not readable). Any other MSR is #GP.
///
/// ```
/// use vm_lapic::{synthetic_read_faults, ApicMode, HV_X64_MSR_EOI, HV_X64_MSR_ICR};
///
/// assert!(!synthetic_read_faults(HV_X64_MSR_ICR, ApicMode::XApic));
/// assert!(synthetic_read_faults(HV_X64_MSR_EOI, ApicMode::XApic)); // write-only
/// ```
pub fn synthetic_read_faults(msr: u32, mode: ApicMode) -> bool {
    mode == ApicMode::Disabled || !matches!(msr, HV_X64_MSR_ICR | HV_X64_MSR_TPR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_one_past_each_field() {
        use ApicMode::{Disabled, X2Apic, XApic};
        for mode in [XApic, X2Apic] {
            assert!(!synthetic_write_faults(HV_X64_MSR_TPR, 0xFF, mode));
            assert!(synthetic_write_faults(HV_X64_MSR_TPR, 0x100, mode));
            assert!(!synthetic_write_faults(HV_X64_MSR_EOI, 0, mode));
            assert!(synthetic_write_faults(HV_X64_MSR_EOI, 1 << 32, mode));
            assert!(!synthetic_write_faults(
                HV_X64_MSR_ICR,
                0xFFFF_FFFF_000C_DFFF,
                mode
            ));
            assert!(synthetic_write_faults(HV_X64_MSR_ICR, 1 << 20, mode));
            assert!(synthetic_read_faults(HV_X64_MSR_EOI, mode));
            assert!(!synthetic_read_faults(HV_X64_MSR_TPR, mode));
            assert!(synthetic_write_faults(HV_X64_MSR_TPR + 1, 0, mode));
        }
        assert!(!synthetic_write_faults(HV_X64_MSR_EOI, 0xFFFF_FFFF, XApic));
        assert!(synthetic_write_faults(HV_X64_MSR_EOI, 1, X2Apic));
        for msr in [HV_X64_MSR_EOI, HV_X64_MSR_ICR, HV_X64_MSR_TPR] {
            assert!(synthetic_write_faults(msr, 0, Disabled));
            assert!(synthetic_read_faults(msr, Disabled));
        }
    }
}
