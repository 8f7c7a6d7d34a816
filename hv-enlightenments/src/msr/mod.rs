//! Hyper-V synthetic MSRs: indices, typed values, partition-wide and
//! per-VP state, and the outcomes of RDMSR/WRMSR.
//!
//! The VMM routes an MSR exit with [`scope`]: partition-wide MSRs go to the
//! [`Partition`] (behind the VMM's lock), per-VP ones to the vCPU's own
//! [`Vp`]. Both return an [`MsrOutcome`]. Writes take a [`GuestRam`] check:
//! a page-placing MSR is committed only when its page is guest RAM.

mod access;
pub mod index;
mod outcome;
mod partition;
mod ram;
mod sint;
pub mod stimer;
mod values;
mod vp;

pub use access::{
    MsrScope, Requirement, allowed, granted, required_access, required_privilege, scope,
};
pub use index::*;
pub use outcome::{
    ApicAccess, ApicRegister, GuestMemoryWrite, MsrAction, MsrOutcome, X2APIC_MSR_EOI,
    X2APIC_MSR_ICR, X2APIC_MSR_TPR,
};
pub use partition::{Partition, PartitionConfig, ReferenceTime};
pub use ram::GuestRam;
pub use sint::{SintInterrupt, SintInterrupts};
pub use values::*;
pub use vp::{Error, Vp};

/// RDMSR dispatched to the partition or the VP by [`scope`]; for VMMs that
/// hold both (tests, single-vCPU setups). `time` is read only for
/// TIME_REF_COUNT.
///
/// ```
/// use hv_enlightenments::cpuid::CpuidBuilder;
/// use hv_enlightenments::msr::{self, MsrOutcome, Partition, Vp};
///
/// let plan = CpuidBuilder::new(1).build()?;
/// let (partition, vp) = (Partition::new((&plan).into()), Vp::new(0, plan.privileges())?);
/// assert_eq!(msr::read(&partition, &vp, msr::HV_X64_MSR_VP_INDEX, &0), MsrOutcome::Value(0));
/// assert_eq!(msr::read(&partition, &vp, msr::HV_X64_MSR_TIME_REF_COUNT, &99), MsrOutcome::Value(99));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read(partition: &Partition, vp: &Vp, msr: u32, time: &impl ReferenceTime) -> MsrOutcome {
    match scope(msr) {
        Some(MsrScope::Partition) => partition.read(msr, time),
        Some(MsrScope::Vp) => vp.read(msr),
        None => MsrOutcome::InjectGp,
    }
}

/// WRMSR dispatched to the partition or the VP by [`scope`]. `ram` is
/// asked only when the write enables a page.
///
/// ```
/// use hv_enlightenments::cpuid::CpuidBuilder;
/// use hv_enlightenments::msr::{self, MsrOutcome, Partition, Vp};
///
/// let plan = CpuidBuilder::new(1).build()?;
/// let mut partition = Partition::new((&plan).into());
/// let mut vp = Vp::new(0, plan.privileges())?;
/// let ram = |_gpa: u64| true;
/// let out = msr::write(&mut partition, &mut vp, msr::HV_X64_MSR_GUEST_OS_ID, 1, &ram);
/// assert_eq!(out, MsrOutcome::Done);
/// assert_eq!(partition.guest_os_id(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write(
    partition: &mut Partition,
    vp: &mut Vp,
    msr: u32,
    value: u64,
    ram: &impl GuestRam,
) -> MsrOutcome {
    match scope(msr) {
        Some(MsrScope::Partition) => partition.write(msr, value, ram),
        Some(MsrScope::Vp) => vp.write(msr, value, ram),
        None => MsrOutcome::InjectGp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuid::CpuidBuilder;

    /// Every page is RAM.
    const ALL_RAM: fn(u64) -> bool = |_| true;

    #[test]
    fn state_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Partition>();
        send_sync::<Vp>();
        send_sync::<MsrOutcome>();
    }

    #[test]
    fn dispatch_follows_scope_and_published_cpuid() {
        let plan = CpuidBuilder::new(2).build().unwrap();
        let mut p = Partition::new(PartitionConfig::from(&plan));
        let mut v = Vp::new(1, plan.privileges()).unwrap();
        assert_eq!(read(&p, &v, HV_X64_MSR_VP_INDEX, &0), MsrOutcome::Value(1));
        assert_eq!(
            write(&mut p, &mut v, HV_X64_MSR_GUEST_OS_ID, 1, &ALL_RAM),
            MsrOutcome::Done
        );
        assert_eq!(
            read(&p, &v, HV_X64_MSR_GUEST_OS_ID, &0),
            MsrOutcome::Value(1)
        );
        assert!(read(&p, &v, HV_X64_MSR_RESET, &0).is_gp());
        // Unstable TSC by default: the policy did not grant REFERENCE_TSC.
        assert!(write(&mut p, &mut v, HV_X64_MSR_REFERENCE_TSC, 0x1001, &ALL_RAM).is_gp());
        assert_eq!(
            read(&p, &v, HV_X64_MSR_TIME_REF_COUNT, &5),
            MsrOutcome::Value(5)
        );
    }

    /// KVM selftest `hyperv_features.c` `guest_test_msrs_access`, as a
    /// table: each MSR with its privilege or feature bit clear (#GP on
    /// read and write) and set (no #GP on read).
    #[test]
    fn msr_access_matrix_matches_kvm() {
        use crate::cpuid::{FeaturesEdx, Privileges};
        let rows: [(u32, Requirement); 22] = [
            (
                HV_X64_MSR_GUEST_OS_ID,
                Requirement::Privilege(Privileges::HYPERCALL),
            ),
            (
                HV_X64_MSR_HYPERCALL,
                Requirement::Privilege(Privileges::HYPERCALL),
            ),
            (
                HV_X64_MSR_VP_INDEX,
                Requirement::Privilege(Privileges::VP_INDEX),
            ),
            (HV_X64_MSR_RESET, Requirement::Privilege(Privileges::RESET)),
            (
                HV_X64_MSR_VP_RUNTIME,
                Requirement::Privilege(Privileges::VP_RUNTIME),
            ),
            (
                HV_X64_MSR_TIME_REF_COUNT,
                Requirement::Privilege(Privileges::TIME_REF_COUNT),
            ),
            (
                HV_X64_MSR_REFERENCE_TSC,
                Requirement::Privilege(Privileges::REFERENCE_TSC),
            ),
            (
                HV_X64_MSR_TSC_FREQUENCY,
                Requirement::Privilege(Privileges::FREQUENCY_MSRS),
            ),
            (
                HV_X64_MSR_APIC_FREQUENCY,
                Requirement::Privilege(Privileges::FREQUENCY_MSRS),
            ),
            (
                HV_X64_MSR_EOI,
                Requirement::Privilege(Privileges::APIC_ACCESS),
            ),
            (
                HV_X64_MSR_VP_ASSIST_PAGE,
                Requirement::Privilege(Privileges::APIC_ACCESS),
            ),
            (
                HV_X64_MSR_SCONTROL,
                Requirement::Privilege(Privileges::SYNIC),
            ),
            (
                HV_X64_MSR_SVERSION,
                Requirement::Privilege(Privileges::SYNIC),
            ),
            (HV_X64_MSR_EOM, Requirement::Privilege(Privileges::SYNIC)),
            (HV_X64_MSR_SINT15, Requirement::Privilege(Privileges::SYNIC)),
            (
                HV_X64_MSR_STIMER0_CONFIG,
                Requirement::Privilege(Privileges::SYNTHETIC_TIMERS),
            ),
            (
                HV_X64_MSR_STIMER3_COUNT,
                Requirement::Privilege(Privileges::SYNTHETIC_TIMERS),
            ),
            (
                HV_X64_MSR_TSC_INVARIANT_CONTROL,
                Requirement::Privilege(Privileges::TSC_INVARIANT),
            ),
            (
                HV_X64_MSR_CRASH_P0,
                Requirement::Feature(FeaturesEdx::GUEST_CRASH_MSRS),
            ),
            (
                HV_X64_MSR_CRASH_P4,
                Requirement::Feature(FeaturesEdx::GUEST_CRASH_MSRS),
            ),
            (
                HV_X64_MSR_CRASH_CTL,
                Requirement::Feature(FeaturesEdx::GUEST_CRASH_MSRS),
            ),
            (
                HV_X64_MSR_TPR,
                Requirement::Privilege(Privileges::APIC_ACCESS),
            ),
        ];
        let freq = Some(crate::cpuid::Frequencies {
            tsc_hz: 1,
            apic_hz: 1,
        });
        for (msr, req) in rows {
            assert_eq!(required_access(msr), Some(req), "{msr:#x}");
            let (p_off, f_off) = match req {
                Requirement::Privilege(p) => (Privileges::all() - p, FeaturesEdx::all()),
                Requirement::Feature(f) => (Privileges::all(), FeaturesEdx::all() - f),
            };
            for (privileges, features, on) in [
                (p_off, f_off, false),
                (Privileges::all(), FeaturesEdx::all(), true),
            ] {
                let config = PartitionConfig {
                    privileges,
                    frequencies: freq,
                };
                let mut p = Partition::with_features(config, features);
                let mut v = Vp::with_features(0, privileges, features).unwrap();
                let r = read(&p, &v, msr, &0);
                assert_eq!(!r.is_gp(), on, "read {msr:#x} on={on}: {r:?}");
                if !on {
                    assert!(write(&mut p, &mut v, msr, 0, &ALL_RAM).is_gp(), "{msr:#x}");
                }
            }
        }
        // Every implemented MSR is in the table or a sibling of one in it.
        let covered = |m: u32| {
            rows.iter().any(|(r, _)| *r == m)
                || (HV_X64_MSR_SINT0..=HV_X64_MSR_SINT15).contains(&m)
                || (HV_X64_MSR_STIMER0_CONFIG..=HV_X64_MSR_STIMER3_COUNT).contains(&m)
                || (HV_X64_MSR_CRASH_P0..=HV_X64_MSR_CRASH_P4).contains(&m)
                || matches!(m, HV_X64_MSR_ICR | HV_X64_MSR_SIEFP | HV_X64_MSR_SIMP)
        };
        for m in HV_X64_MSR_RANGE_START..HV_X64_MSR_RANGE_END {
            if scope(m).is_some() {
                assert!(covered(m), "{m:#x} missing from the matrix");
            }
        }
    }

    use proptest::prelude::*;

    const STORED: [u32; 8] = [
        HV_X64_MSR_GUEST_OS_ID,
        HV_X64_MSR_REFERENCE_TSC,
        HV_X64_MSR_TSC_INVARIANT_CONTROL,
        HV_X64_MSR_VP_ASSIST_PAGE,
        HV_X64_MSR_SCONTROL,
        HV_X64_MSR_SIMP,
        HV_X64_MSR_SIEFP,
        HV_X64_MSR_SINT0,
    ];

    fn any_msr() -> impl Strategy<Value = u32> {
        prop_oneof![
            HV_X64_MSR_RANGE_START..HV_X64_MSR_RANGE_END,
            proptest::sample::select(STORED.to_vec()),
            HV_X64_MSR_SINT0..=HV_X64_MSR_SINT15,
            Just(HV_X64_MSR_HYPERCALL),
        ]
    }

    fn any_value() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            0u64..0x2_0000,
            (0u64..1 << 20).prop_map(|p| (p << 12) | 1)
        ]
    }

    proptest! {
        #[test]
        fn any_access_sequence_keeps_the_rules(
            ops in proptest::collection::vec((any::<bool>(), any_msr(), any_value()), 1..64)
        ) {
            let privileges = crate::cpuid::Privileges::all();
            let mut p = Partition::new(PartitionConfig { privileges, frequencies: None });
            let mut v = Vp::new(5, privileges).unwrap();
            // RAM below 512 MiB: enabled pages above it are refused.
            let ram = |gpa: u64| gpa < 0x2000_0000;
            for (is_write, msr, value) in ops {
                let before = read(&p, &v, msr, &0);
                let out = if is_write {
                    write(&mut p, &mut v, msr, value, &ram)
                } else {
                    read(&p, &v, msr, &value)
                };
                if scope(msr).is_none() {
                    prop_assert!(out.is_gp());
                }
                let apic = matches!(msr, HV_X64_MSR_EOI | HV_X64_MSR_ICR | HV_X64_MSR_TPR);
                prop_assert_eq!(matches!(out, MsrOutcome::Apic(_)), apic);
                if is_write {
                    prop_assert!(out.value().is_none());
                    let stored = STORED.contains(&msr) || (HV_X64_MSR_SINT0..=HV_X64_MSR_SINT15).contains(&msr);
                    if stored && !out.is_gp() {
                        prop_assert_eq!(read(&p, &v, msr, &0), MsrOutcome::Value(value));
                    }
                    // A refused write commits nothing.
                    if out.is_gp() {
                        prop_assert_eq!(read(&p, &v, msr, &0), before);
                    }
                }
            }
            prop_assert_eq!(read(&p, &v, HV_X64_MSR_VP_INDEX, &0), MsrOutcome::Value(5));
        }
    }
}
