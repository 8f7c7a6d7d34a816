//! The Hyper-V services the run loop calls, on hv-enlightenments' state
//! machines: the partition-wide state ([`HyperV`]), synthetic MSR exits
//! ([`msr`]) and the hypercall trap ([`hypercall`]). They know nothing of
//! the irqchip: what is the APIC's (the EOI/ICR/TPR aliases, PV IPIs) is
//! handed back to the caller.

pub mod hypercall;
pub mod msr;
pub mod synic;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hv_enlightenments::cpuid::CpuidPlan;
use hv_enlightenments::hypercall::HypercallAccess;
use hv_enlightenments::msr::{
    HV_X64_MSR_EOI, HV_X64_MSR_ICR, HV_X64_MSR_TPR, Partition, Vp, allowed,
};
use hv_enlightenments::reftime::{ReferenceTscPage, SEQUENCE_INVALID, next_sequence};
use hv_enlightenments::synic::Connections;

use crate::clock::HostClock;

/// The partition-wide Hyper-V state of a VM.
pub struct HyperV {
    /// The enlightenments are published and served.
    enabled: bool,
    /// The CPUID plan (built even when Hyper-V is off: it names what
    /// would be published).
    plan: CpuidPlan,
    partition: Mutex<Partition>,
    clock: Arc<HostClock>,
    /// Where HvPostMessage / HvSignalEvent go.
    connections: Mutex<Connections>,
    /// The hypercalls the published CPUID allows.
    access: HypercallAccess,
    /// The reference TSC page's last sequence number.
    tsc_sequence: AtomicU32,
    /// The published privileges let the guest use the synthetic EOI, ICR
    /// and TPR (one privilege, APIC_ACCESS, for all three): read on every
    /// such exit, so kept apart from the plan it is worked out from.
    apic_aliases: bool,
}

impl HyperV {
    /// The state for `plan`, served when `enabled`; reference time from
    /// `clock`. Every synthetic MSR is checked against the privileges and
    /// features `plan` publishes (KVM_CAP_HYPERV_ENFORCE_CPUID).
    pub fn new(enabled: bool, plan: CpuidPlan, clock: Arc<HostClock>) -> Self {
        Self {
            enabled,
            partition: Mutex::new(Partition::from_plan(&plan)),
            plan,
            clock,
            connections: Mutex::new(Connections::new()),
            access: HypercallAccess::from(&plan),
            tsc_sequence: AtomicU32::new(SEQUENCE_INVALID),
            apic_aliases: enabled
                && [HV_X64_MSR_EOI, HV_X64_MSR_ICR, HV_X64_MSR_TPR]
                    .into_iter()
                    .all(|msr| allowed(plan.privileges(), plan.cpuid.features, msr)),
        }
    }

    /// The VP state of vCPU `index`, checked against the published CPUID
    /// (`None` while Hyper-V is off).
    pub fn new_vp(&self, index: u32) -> Result<Option<Vp>, hv_enlightenments::msr::Error> {
        if !self.enabled {
            return Ok(None);
        }
        Vp::from_plan(index, &self.plan).map(Some)
    }

    /// The hypercalls the published CPUID allows, checked as KVM checks
    /// them.
    pub fn hypercall_access(&self) -> &HypercallAccess {
        &self.access
    }

    fn connections(&self) -> MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The reference TSC page's contents now: the guest's TSC to reference
    /// time conversion under a new sequence number, or the invalid page
    /// (sequence 0: "read TIME_REF_COUNT") when the guest TSC is unknown.
    pub fn reference_tsc_page(&self) -> ReferenceTscPage {
        match self.clock.tsc_conversion() {
            Some(conv) => {
                let seq = next_sequence(self.tsc_sequence.load(Ordering::Relaxed));
                self.tsc_sequence.store(seq, Ordering::Relaxed);
                ReferenceTscPage::new(seq, conv)
            }
            None => ReferenceTscPage::INVALID,
        }
    }

    /// Whether the enlightenments are on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The Hyper-V CPUID plan published to the guest, with the values the
    /// frequency MSRs serve (`None`: Hyper-V off).
    pub fn cpuid_plan(&self) -> Option<&CpuidPlan> {
        self.enabled.then_some(&self.plan)
    }

    /// Whether lazy EOI is offered (APIC_ACCESS_RECOMMENDED published).
    pub fn lazy_eoi(&self) -> bool {
        self.enabled && self.plan.lazy_eoi()
    }

    /// The partition-wide synthetic MSR state.
    pub fn partition(&self) -> MutexGuard<'_, Partition> {
        self.partition.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the guest may make hypercalls now (Hyper-V on and the
    /// hypercall page enabled).
    pub fn hypercalls_enabled(&self) -> bool {
        self.enabled && self.partition().hypercalls_enabled()
    }

    /// The partition reference time (100 ns units since VM creation).
    pub fn reference_time(&self) -> u64 {
        self.clock.reference_time()
    }
}
