//! Hyper-V synthetic MSRs: indices, typed values, partition-wide and
//! per-VP state, and the outcomes of RDMSR/WRMSR.
//!
//! The VMM routes an MSR exit with [`scope`]: partition-wide MSRs go to the
//! [`Partition`] (behind the VMM's lock), per-VP ones to the vCPU's own
//! [`Vp`]. Both return an [`MsrOutcome`].

mod access;
pub mod index;
mod outcome;
mod partition;
mod values;
mod vp;

pub use access::{MsrScope, granted, required_privilege, scope};
pub use index::*;
pub use outcome::{
    ApicAccess, ApicRegister, GuestMemoryWrite, MsrAction, MsrOutcome, X2APIC_MSR_EOI,
    X2APIC_MSR_ICR, X2APIC_MSR_TPR,
};
pub use partition::{Partition, PartitionConfig, ReferenceTime};
pub use values::*;
pub use vp::{Error, Vp};

/// RDMSR dispatched to the partition or the VP by [`scope`]; for VMMs that
/// hold both (tests, single-vCPU setups). `time` is read only for
/// TIME_REF_COUNT.
pub fn read(partition: &Partition, vp: &Vp, msr: u32, time: &impl ReferenceTime) -> MsrOutcome {
    match scope(msr) {
        Some(MsrScope::Partition) => partition.read(msr, time),
        Some(MsrScope::Vp) => vp.read(msr),
        None => MsrOutcome::InjectGp,
    }
}

/// WRMSR dispatched to the partition or the VP by [`scope`].
pub fn write(partition: &mut Partition, vp: &mut Vp, msr: u32, value: u64) -> MsrOutcome {
    match scope(msr) {
        Some(MsrScope::Partition) => partition.write(msr, value),
        Some(MsrScope::Vp) => vp.write(msr, value),
        None => MsrOutcome::InjectGp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuid::CpuidBuilder;

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
            write(&mut p, &mut v, HV_X64_MSR_GUEST_OS_ID, 1),
            MsrOutcome::Done
        );
        assert_eq!(
            read(&p, &v, HV_X64_MSR_GUEST_OS_ID, &0),
            MsrOutcome::Value(1)
        );
        assert!(read(&p, &v, HV_X64_MSR_RESET, &0).is_gp());
        // Unstable TSC by default: the policy did not grant REFERENCE_TSC.
        assert!(write(&mut p, &mut v, HV_X64_MSR_REFERENCE_TSC, 0x1001).is_gp());
        assert_eq!(
            read(&p, &v, HV_X64_MSR_TIME_REF_COUNT, &5),
            MsrOutcome::Value(5)
        );
    }
}
