//! The Hyper-V services the run loop calls, on hv-enlightenments' state
//! machines: the partition-wide state ([`HyperV`]), synthetic MSR exits
//! ([`msr`]) and the hypercall trap ([`hypercall`]). They know nothing of
//! the irqchip: what is the APIC's (the EOI/ICR/TPR aliases, PV IPIs) is
//! handed back to the caller.

pub mod hypercall;
pub mod msr;

use std::sync::{Arc, Mutex, MutexGuard};

use hv_enlightenments::cpuid::CpuidPlan;
use hv_enlightenments::msr::{Partition, PartitionConfig};

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
}

impl HyperV {
    /// The state for `plan`, served when `enabled`; reference time from
    /// `clock`.
    pub fn new(enabled: bool, plan: CpuidPlan, clock: Arc<HostClock>) -> Self {
        Self {
            enabled,
            partition: Mutex::new(Partition::new(PartitionConfig::from(&plan))),
            plan,
            clock,
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
