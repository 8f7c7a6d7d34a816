//! Which state an MSR belongs to and which privilege gates it.

use super::index::*;
use crate::cpuid::Privileges;

/// Where an MSR's state lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsrScope {
    /// Partition-wide ([`Partition`](super::Partition)); KVM takes its
    /// `hv_lock` for these (`kvm_hv_msr_partition_wide`).
    Partition,
    /// Per virtual processor ([`Vp`](super::Vp)).
    Vp,
}

/// Number of the last SynIC register below the SINTs (EOM).
const SYNIC_FIRST: u32 = HV_X64_MSR_SCONTROL;
const SYNIC_LAST: u32 = HV_X64_MSR_EOM;

/// The state `msr` belongs to, or `None` for an MSR this crate does not
/// implement (any access to it is #GP).
///
/// ```
/// use hv_enlightenments::msr::{self, MsrScope};
///
/// assert_eq!(msr::scope(msr::HV_X64_MSR_HYPERCALL), Some(MsrScope::Partition));
/// assert_eq!(msr::scope(msr::HV_X64_MSR_EOI), Some(MsrScope::Vp));
/// assert_eq!(msr::scope(msr::HV_X64_MSR_RESET), None); // not implemented: #GP
/// ```
pub const fn scope(msr: u32) -> Option<MsrScope> {
    match msr {
        HV_X64_MSR_GUEST_OS_ID
        | HV_X64_MSR_HYPERCALL
        | HV_X64_MSR_TIME_REF_COUNT
        | HV_X64_MSR_REFERENCE_TSC
        | HV_X64_MSR_TSC_FREQUENCY
        | HV_X64_MSR_APIC_FREQUENCY
        | HV_X64_MSR_TSC_INVARIANT_CONTROL => Some(MsrScope::Partition),
        HV_X64_MSR_VP_INDEX
        | HV_X64_MSR_EOI
        | HV_X64_MSR_ICR
        | HV_X64_MSR_TPR
        | HV_X64_MSR_VP_ASSIST_PAGE
        | SYNIC_FIRST..=SYNIC_LAST
        | HV_X64_MSR_SINT0..=HV_X64_MSR_SINT15 => Some(MsrScope::Vp),
        _ => None,
    }
}

/// The privilege (0x40000003 EAX) a guest needs to access `msr`, as KVM's
/// `hv_check_msr_access` requires with enforced CPUID. `None` for an MSR
/// this crate does not implement.
pub const fn required_privilege(msr: u32) -> Option<Privileges> {
    Some(match msr {
        HV_X64_MSR_GUEST_OS_ID | HV_X64_MSR_HYPERCALL => Privileges::HYPERCALL,
        HV_X64_MSR_VP_INDEX => Privileges::VP_INDEX,
        HV_X64_MSR_TIME_REF_COUNT => Privileges::TIME_REF_COUNT,
        HV_X64_MSR_REFERENCE_TSC => Privileges::REFERENCE_TSC,
        HV_X64_MSR_TSC_FREQUENCY | HV_X64_MSR_APIC_FREQUENCY => Privileges::FREQUENCY_MSRS,
        HV_X64_MSR_TSC_INVARIANT_CONTROL => Privileges::TSC_INVARIANT,
        HV_X64_MSR_EOI | HV_X64_MSR_ICR | HV_X64_MSR_TPR | HV_X64_MSR_VP_ASSIST_PAGE => {
            Privileges::APIC_ACCESS
        }
        SYNIC_FIRST..=SYNIC_LAST | HV_X64_MSR_SINT0..=HV_X64_MSR_SINT15 => Privileges::SYNIC,
        _ => return None,
    })
}

/// Whether `privileges` let the guest touch `msr` (false for MSRs this
/// crate does not implement).
///
/// ```
/// use hv_enlightenments::cpuid::Privileges;
/// use hv_enlightenments::msr::{self, granted};
///
/// let p = Privileges::HYPERCALL | Privileges::VP_INDEX;
/// assert!(granted(p, msr::HV_X64_MSR_VP_INDEX));
/// assert!(!granted(p, msr::HV_X64_MSR_EOI)); // needs APIC_ACCESS
/// ```
pub const fn granted(privileges: Privileges, msr: u32) -> bool {
    match required_privilege(msr) {
        Some(p) => privileges.contains(p),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_implemented_msr_has_a_scope_and_a_privilege() {
        for msr in HV_X64_MSR_RANGE_START..HV_X64_MSR_RANGE_END {
            assert_eq!(
                scope(msr).is_some(),
                required_privilege(msr).is_some(),
                "{msr:#x}"
            );
        }
    }

    #[test]
    fn unimplemented_msrs_have_no_scope() {
        for msr in [
            HV_X64_MSR_RESET,
            HV_X64_MSR_VP_RUNTIME,
            HV_X64_MSR_STIMER0_CONFIG,
            HV_X64_MSR_STIMER3_COUNT,
            HV_X64_MSR_GUEST_IDLE,
            HV_X64_MSR_CRASH_CTL,
            HV_X64_MSR_REENLIGHTENMENT_CONTROL,
            HV_X64_MSR_EOM + 1,
            HV_X64_MSR_SINT0 - 1,
            HV_X64_MSR_SINT15 + 1,
        ] {
            assert_eq!(scope(msr), None, "{msr:#x}");
        }
    }

    #[test]
    fn partition_wide_set_matches_kvm() {
        for msr in [
            HV_X64_MSR_GUEST_OS_ID,
            HV_X64_MSR_HYPERCALL,
            HV_X64_MSR_REFERENCE_TSC,
            HV_X64_MSR_TIME_REF_COUNT,
            HV_X64_MSR_TSC_INVARIANT_CONTROL,
        ] {
            assert_eq!(scope(msr), Some(MsrScope::Partition));
        }
        assert_eq!(scope(HV_X64_MSR_VP_ASSIST_PAGE), Some(MsrScope::Vp));
        assert_eq!(scope(HV_X64_MSR_SINT15), Some(MsrScope::Vp));
    }

    #[test]
    fn privileges_match_hv_check_msr_access() {
        assert!(granted(Privileges::HYPERCALL, HV_X64_MSR_GUEST_OS_ID));
        assert!(!granted(Privileges::VP_INDEX, HV_X64_MSR_HYPERCALL));
        assert!(granted(Privileges::APIC_ACCESS, HV_X64_MSR_VP_ASSIST_PAGE));
        assert!(granted(Privileges::SYNIC, HV_X64_MSR_EOM));
        assert!(!granted(Privileges::all(), HV_X64_MSR_RESET));
    }
}
