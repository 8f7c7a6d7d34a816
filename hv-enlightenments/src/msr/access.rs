//! Which state an MSR belongs to and which privilege gates it.

use super::index::*;
use crate::cpuid::{FeaturesEdx, Privileges};

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
/// assert_eq!(msr::scope(msr::HV_X64_MSR_RESET), Some(MsrScope::Partition));
/// assert_eq!(msr::scope(msr::HV_X64_MSR_GUEST_IDLE), None); // not implemented: #GP
/// ```
pub const fn scope(msr: u32) -> Option<MsrScope> {
    match msr {
        // KVM kvm_hv_msr_partition_wide.
        HV_X64_MSR_GUEST_OS_ID
        | HV_X64_MSR_HYPERCALL
        | HV_X64_MSR_RESET
        | HV_X64_MSR_TIME_REF_COUNT
        | HV_X64_MSR_REFERENCE_TSC
        | HV_X64_MSR_TSC_FREQUENCY
        | HV_X64_MSR_APIC_FREQUENCY
        | HV_X64_MSR_CRASH_P0..=HV_X64_MSR_CRASH_CTL
        | HV_X64_MSR_TSC_INVARIANT_CONTROL => Some(MsrScope::Partition),
        HV_X64_MSR_VP_INDEX
        | HV_X64_MSR_VP_RUNTIME
        | HV_X64_MSR_STIMER0_CONFIG..=HV_X64_MSR_STIMER3_COUNT
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
/// this crate does not implement, and for the crash MSRs, which a
/// feature bit gates instead ([`required_access`]).
pub const fn required_privilege(msr: u32) -> Option<Privileges> {
    Some(match msr {
        HV_X64_MSR_GUEST_OS_ID | HV_X64_MSR_HYPERCALL => Privileges::HYPERCALL,
        HV_X64_MSR_VP_INDEX => Privileges::VP_INDEX,
        HV_X64_MSR_VP_RUNTIME => Privileges::VP_RUNTIME,
        HV_X64_MSR_RESET => Privileges::RESET,
        HV_X64_MSR_STIMER0_CONFIG..=HV_X64_MSR_STIMER3_COUNT => Privileges::SYNTHETIC_TIMERS,
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

/// What a guest needs published in CPUID 0x40000003 to access an MSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Requirement {
    /// A privilege bit (EAX/EBX).
    Privilege(Privileges),
    /// A feature bit (EDX): the crash MSRs need
    /// `HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE` (EDX bit 10).
    Feature(FeaturesEdx),
}

/// What the guest needs to access `msr` (KVM `hv_check_msr_access`), or
/// `None` for an MSR this crate does not implement.
///
/// ```
/// use hv_enlightenments::cpuid::{FeaturesEdx, Privileges};
/// use hv_enlightenments::msr::{self, Requirement};
///
/// assert_eq!(
///     msr::required_access(msr::HV_X64_MSR_CRASH_CTL),
///     Some(Requirement::Feature(FeaturesEdx::GUEST_CRASH_MSRS))
/// );
/// assert_eq!(
///     msr::required_access(msr::HV_X64_MSR_STIMER0_COUNT),
///     Some(Requirement::Privilege(Privileges::SYNTHETIC_TIMERS))
/// );
/// ```
pub const fn required_access(msr: u32) -> Option<Requirement> {
    match msr {
        HV_X64_MSR_CRASH_P0..=HV_X64_MSR_CRASH_CTL => {
            Some(Requirement::Feature(FeaturesEdx::GUEST_CRASH_MSRS))
        }
        _ => match required_privilege(msr) {
            Some(p) => Some(Requirement::Privilege(p)),
            None => None,
        },
    }
}

/// Whether a guest given `privileges` and `features` may access `msr`
/// (false for MSRs this crate does not implement): KVM's
/// `hv_check_msr_access` with `KVM_CAP_HYPERV_ENFORCE_CPUID`.
pub const fn allowed(privileges: Privileges, features: FeaturesEdx, msr: u32) -> bool {
    match required_access(msr) {
        Some(Requirement::Privilege(p)) => privileges.contains(p),
        Some(Requirement::Feature(f)) => features.contains(f),
        None => false,
    }
}

/// Whether `privileges` let the guest touch `msr` (false for MSRs this
/// crate does not implement, and for the crash MSRs: see [`allowed`]).
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
    fn every_implemented_msr_has_a_scope_and_a_requirement() {
        for msr in HV_X64_MSR_RANGE_START..HV_X64_MSR_RANGE_END {
            assert_eq!(
                scope(msr).is_some(),
                required_access(msr).is_some(),
                "{msr:#x}"
            );
        }
    }

    #[test]
    fn unimplemented_msrs_have_no_scope() {
        for msr in [
            HV_X64_MSR_GUEST_IDLE,
            HV_X64_MSR_STIMER0_CONFIG - 1,
            HV_X64_MSR_STIMER3_COUNT + 1,
            HV_X64_MSR_CRASH_P0 - 1,
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
        assert!(granted(Privileges::RESET, HV_X64_MSR_RESET));
        assert!(!granted(Privileges::all(), HV_X64_MSR_CRASH_CTL));
        assert!(allowed(
            Privileges::empty(),
            FeaturesEdx::GUEST_CRASH_MSRS,
            HV_X64_MSR_CRASH_P4
        ));
        assert!(!allowed(
            Privileges::all(),
            FeaturesEdx::all(),
            HV_X64_MSR_GUEST_IDLE
        ));
    }
}
