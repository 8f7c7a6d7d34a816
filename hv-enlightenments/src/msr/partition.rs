//! Partition-wide synthetic MSR state: GUEST_OS_ID, HYPERCALL, RESET,
//! REFERENCE_TSC, TIME_REF_COUNT, TSC_INVARIANT_CONTROL, the frequency
//! MSRs, the crash MSRs.
//!
//! The VMM keeps one [`Partition`] behind its own lock (KVM holds `hv_lock`
//! for exactly these MSRs); the crate does no locking.

use super::access::{MsrScope, allowed, scope};
use super::index::*;
use super::outcome::{MsrAction, MsrOutcome};
use super::ram::GuestRam;
use super::values::{HypercallMsr, ReferenceTscMsr, TscInvariantControlMsr};
use crate::cpuid::{CpuidPlan, FeaturesEdx, Frequencies, Privileges};

/// The partition reference time, in 100 ns units since partition start.
///
/// Implemented for `u64` (a value the caller already read) and for
/// closures returning it, so the clock is only read for TIME_REF_COUNT.
pub trait ReferenceTime {
    /// Current partition reference count (100 ns units).
    fn time_ref_count(&self) -> u64;
}

impl ReferenceTime for u64 {
    fn time_ref_count(&self) -> u64 {
        *self
    }
}

impl<F: Fn() -> u64> ReferenceTime for F {
    fn time_ref_count(&self) -> u64 {
        self()
    }
}

/// What the partition MSRs are configured with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PartitionConfig {
    /// The privilege mask published in CPUID 0x40000003.
    pub privileges: Privileges,
    /// Values for the frequency MSRs (`None`: they are #GP).
    pub frequencies: Option<Frequencies>,
}

impl From<&CpuidPlan> for PartitionConfig {
    fn from(plan: &CpuidPlan) -> Self {
        Self {
            privileges: plan.privileges(),
            frequencies: plan.frequencies,
        }
    }
}

/// Partition-wide synthetic MSR state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    config: PartitionConfig,
    features: FeaturesEdx,
    crash_params: [u64; HV_CRASH_PARAMS],
    guest_os_id: u64,
    hypercall: HypercallMsr,
    reference_tsc: ReferenceTscMsr,
    tsc_invariant: TscInvariantControlMsr,
}

impl Partition {
    /// State at partition reset.
    ///
    /// ```
    /// use hv_enlightenments::cpuid::CpuidBuilder;
    /// use hv_enlightenments::msr::{Partition, PartitionConfig};
    ///
    /// let plan = CpuidBuilder::new(2).build()?;
    /// let partition = Partition::new(PartitionConfig::from(&plan));
    /// assert!(!partition.hypercalls_enabled());
    /// # Ok::<(), hv_enlightenments::cpuid::Error>(())
    /// ```
    pub fn new(config: PartitionConfig) -> Self {
        Self::with_features(config, FeaturesEdx::empty())
    }

    /// State at partition reset, also enforcing the features published in
    /// CPUID 0x40000003 EDX (the crash MSRs need
    /// [`FeaturesEdx::GUEST_CRASH_MSRS`]). [`Partition::new`] publishes
    /// none.
    pub fn with_features(config: PartitionConfig, features: FeaturesEdx) -> Self {
        Self {
            config,
            features,
            crash_params: [0; HV_CRASH_PARAMS],
            guest_os_id: 0,
            hypercall: HypercallMsr::new(),
            reference_tsc: ReferenceTscMsr::new(),
            tsc_invariant: TscInvariantControlMsr::new(),
        }
    }

    /// State at partition reset for what `plan` publishes: its
    /// privileges, features and frequencies.
    ///
    /// ```
    /// use hv_enlightenments::cpuid::{CpuidBuilder, Served};
    /// use hv_enlightenments::msr::{self, MsrAction, MsrOutcome, Partition};
    ///
    /// let plan = CpuidBuilder::new(1).serves(Served::CRASH_MSRS).build()?;
    /// let mut p = Partition::from_plan(&plan);
    /// let ram = |_gpa: u64| true;
    /// let _ = p.write(msr::HV_X64_MSR_CRASH_P0, 0xDEAD, &ram);
    /// assert_eq!(
    ///     p.write(msr::HV_X64_MSR_CRASH_CTL, 1 << 63, &ram),
    ///     MsrOutcome::Action(MsrAction::GuestCrashed { params: [0xDEAD, 0, 0, 0, 0] })
    /// );
    /// # Ok::<(), hv_enlightenments::cpuid::Error>(())
    /// ```
    pub fn from_plan(plan: &CpuidPlan) -> Self {
        Self::with_features(PartitionConfig::from(plan), plan.cpuid.features)
    }

    /// The configuration.
    pub fn config(&self) -> &PartitionConfig {
        &self.config
    }

    /// The features enforced (CPUID 0x40000003 EDX).
    pub fn features(&self) -> FeaturesEdx {
        self.features
    }

    /// CRASH_P0..P4 as the guest last wrote them.
    pub fn crash_params(&self) -> [u64; HV_CRASH_PARAMS] {
        self.crash_params
    }

    /// Back to the reset state (this is the only way to clear the
    /// HYPERCALL lock bit).
    pub fn reset(&mut self) {
        *self = Self::with_features(self.config, self.features);
    }

    /// GUEST_OS_ID as last written.
    pub fn guest_os_id(&self) -> u64 {
        self.guest_os_id
    }

    /// HYPERCALL as last accepted.
    pub fn hypercall(&self) -> HypercallMsr {
        self.hypercall
    }

    /// Whether the guest may issue hypercalls: it has identified itself
    /// and enabled the hypercall page.
    pub fn hypercalls_enabled(&self) -> bool {
        self.guest_os_id != 0 && self.hypercall.enable()
    }

    /// The reference TSC page, when enabled.
    pub fn reference_tsc_page(&self) -> Option<u64> {
        self.reference_tsc.enabled_gpa()
    }

    /// Whether the guest asked for the invariant TSC.
    pub fn tsc_invariant(&self) -> bool {
        self.tsc_invariant.expose()
    }

    /// RDMSR of a partition-wide MSR. `time` is consulted only for
    /// TIME_REF_COUNT.
    ///
    /// ```
    /// use hv_enlightenments::cpuid::CpuidBuilder;
    /// use hv_enlightenments::msr::{self, MsrOutcome, Partition, PartitionConfig};
    ///
    /// let plan = CpuidBuilder::new(2).build()?;
    /// let partition = Partition::new(PartitionConfig::from(&plan));
    /// // The clock is read only for TIME_REF_COUNT.
    /// let now = || 12_345u64;
    /// let out = partition.read(msr::HV_X64_MSR_TIME_REF_COUNT, &now);
    /// assert_eq!(out, MsrOutcome::Value(12_345));
    /// // A per-VP MSR is not the partition's.
    /// assert!(partition.read(msr::HV_X64_MSR_VP_INDEX, &now).is_gp());
    /// # Ok::<(), hv_enlightenments::cpuid::Error>(())
    /// ```
    pub fn read(&self, msr: u32, time: &impl ReferenceTime) -> MsrOutcome {
        if !self.allowed(msr) {
            return MsrOutcome::InjectGp;
        }
        let value = match msr {
            HV_X64_MSR_GUEST_OS_ID => self.guest_os_id,
            // KVM kvm_hv_get_msr_pw: RESET reads as 0.
            HV_X64_MSR_RESET => 0,
            // What the host supports: KVM returns the host-set value masked
            // to CRASH_NOTIFY (kvm_hv_msr_set_crash_ctl); no crash message
            // buffer (bit 62) is offered, so Linux takes the
            // hyperv_report_panic path.
            HV_X64_MSR_CRASH_CTL => HV_CRASH_CTL_CRASH_NOTIFY,
            HV_X64_MSR_CRASH_P0..=HV_X64_MSR_CRASH_P4 => {
                match self.crash_params.get((msr - HV_X64_MSR_CRASH_P0) as usize) {
                    Some(v) => *v,
                    None => return MsrOutcome::InjectGp,
                }
            }
            HV_X64_MSR_HYPERCALL => self.hypercall.into_bits(),
            HV_X64_MSR_TIME_REF_COUNT => time.time_ref_count(),
            HV_X64_MSR_REFERENCE_TSC => self.reference_tsc.into_bits(),
            HV_X64_MSR_TSC_INVARIANT_CONTROL => self.tsc_invariant.into_bits(),
            HV_X64_MSR_TSC_FREQUENCY | HV_X64_MSR_APIC_FREQUENCY => {
                let Some(f) = self.config.frequencies else {
                    return MsrOutcome::InjectGp;
                };
                if msr == HV_X64_MSR_TSC_FREQUENCY {
                    f.tsc_hz
                } else {
                    f.apic_hz
                }
            }
            _ => return MsrOutcome::InjectGp,
        };
        MsrOutcome::Value(value)
    }

    /// WRMSR of a partition-wide MSR. `ram` is asked only when HYPERCALL
    /// enables the hypercall page: a page that is not guest RAM is #GP and
    /// the MSR keeps its value.
    ///
    /// ```
    /// use hv_enlightenments::cpuid::CpuidBuilder;
    /// use hv_enlightenments::msr::{self, MsrAction, MsrOutcome, Partition, PartitionConfig};
    ///
    /// let plan = CpuidBuilder::new(2).build()?;
    /// let mut partition = Partition::new(PartitionConfig::from(&plan));
    /// let ram = |gpa: u64| gpa < 0x10_0000;
    /// let os_id = 0x8100_0000_0000_0000; // open source, Linux
    /// assert_eq!(partition.write(msr::HV_X64_MSR_GUEST_OS_ID, os_id, &ram), MsrOutcome::Done);
    /// // Enable the hypercall page at 0x6000: the VMM writes the stub there.
    /// assert_eq!(
    ///     partition.write(msr::HV_X64_MSR_HYPERCALL, 0x6001, &ram),
    ///     MsrOutcome::Action(MsrAction::WriteHypercallPage { gpa: 0x6000 })
    /// );
    /// assert!(partition.hypercalls_enabled());
    /// # Ok::<(), hv_enlightenments::cpuid::Error>(())
    /// ```
    pub fn write(&mut self, msr: u32, value: u64, ram: &impl GuestRam) -> MsrOutcome {
        if !self.allowed(msr) {
            return MsrOutcome::InjectGp;
        }
        match msr {
            // KVM kvm_hv_set_msr_pw: only 1 requests a reset; other values
            // are ignored without #GP.
            HV_X64_MSR_RESET if value == 1 => MsrOutcome::Action(MsrAction::ResetRequested),
            HV_X64_MSR_RESET => MsrOutcome::Done,
            HV_X64_MSR_CRASH_P0..=HV_X64_MSR_CRASH_P4 => {
                match self
                    .crash_params
                    .get_mut((msr - HV_X64_MSR_CRASH_P0) as usize)
                {
                    Some(p) => {
                        *p = value;
                        MsrOutcome::Done
                    }
                    None => MsrOutcome::InjectGp,
                }
            }
            // KVM: a guest write does not change the stored CRASH_CTL; with
            // CRASH_NOTIFY it reports the crash (KVM_REQ_HV_CRASH).
            HV_X64_MSR_CRASH_CTL if value & HV_CRASH_CTL_CRASH_NOTIFY != 0 => {
                MsrOutcome::Action(MsrAction::GuestCrashed {
                    params: self.crash_params,
                })
            }
            HV_X64_MSR_CRASH_CTL => MsrOutcome::Done,
            HV_X64_MSR_GUEST_OS_ID => {
                self.guest_os_id = value;
                // KVM kvm_hv_set_msr_pw: "setting guest os id to zero
                // disables hypercall page" (a locked MSR stays as it is).
                if value == 0 && !self.hypercall.locked() {
                    self.hypercall.set_enable(false);
                }
                MsrOutcome::Done
            }
            HV_X64_MSR_HYPERCALL => self.write_hypercall(value, ram),
            HV_X64_MSR_REFERENCE_TSC => match ReferenceTscMsr::from_guest(value) {
                Some(v) => {
                    self.reference_tsc = v;
                    MsrOutcome::Action(MsrAction::ReferenceTscPage {
                        gpa: v.enabled_gpa(),
                    })
                }
                None => MsrOutcome::InjectGp,
            },
            HV_X64_MSR_TSC_INVARIANT_CONTROL => match TscInvariantControlMsr::from_guest(value) {
                // KVM: "The feature can't be disabled from the guest".
                Some(v) if self.tsc_invariant.expose() && !v.expose() => MsrOutcome::InjectGp,
                Some(v) => {
                    self.tsc_invariant = v;
                    MsrOutcome::Done
                }
                None => MsrOutcome::InjectGp,
            },
            // Read-only: TIME_REF_COUNT, TSC_FREQUENCY, APIC_FREQUENCY.
            _ => MsrOutcome::InjectGp,
        }
    }

    fn allowed(&self, msr: u32) -> bool {
        scope(msr) == Some(MsrScope::Partition)
            && allowed(self.config.privileges, self.features, msr)
    }

    fn write_hypercall(&mut self, value: u64, ram: &impl GuestRam) -> MsrOutcome {
        let Some(new) = HypercallMsr::from_guest(value) else {
            return MsrOutcome::InjectGp;
        };
        if self.hypercall.locked() {
            // TLFS: once locked, only a partition reset unlocks it; writing
            // the same value back is harmless.
            return if new == self.hypercall {
                MsrOutcome::Done
            } else {
                MsrOutcome::InjectGp
            };
        }
        // KVM: "if guest os id is not set hypercall should remain disabled";
        // the write is ignored, not faulted.
        if self.guest_os_id == 0 {
            return MsrOutcome::Done;
        }
        if !new.enable() {
            self.hypercall = new;
            return MsrOutcome::Done;
        }
        // KVM kvm_hv_set_msr_pw: the stub is written first; if that fails
        // the WRMSR is #GP and hv_hypercall is not stored.
        if !ram.is_ram_page(new.gpa()) {
            return MsrOutcome::InjectGp;
        }
        self.hypercall = new;
        MsrOutcome::Action(MsrAction::WriteHypercallPage { gpa: new.gpa() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LINUX_OS_ID: u64 = 0x8100 << 48;
    /// Guest RAM: the first 1 MiB.
    const RAM_END: u64 = 0x10_0000;
    const RAM: fn(u64) -> bool = |gpa| gpa < RAM_END;
    const FREQ: Frequencies = Frequencies {
        tsc_hz: 2_500_000_000,
        apic_hz: 1_000_000_000,
    };

    fn all() -> Partition {
        Partition::new(PartitionConfig {
            privileges: Privileges::all(),
            frequencies: Some(FREQ),
        })
    }

    #[test]
    fn hypercall_before_guest_os_id_is_ignored() {
        let mut p = all();
        assert_eq!(
            p.write(HV_X64_MSR_HYPERCALL, 0x5001, &RAM),
            MsrOutcome::Done
        );
        assert_eq!(p.read(HV_X64_MSR_HYPERCALL, &0), MsrOutcome::Value(0));
        assert!(!p.hypercalls_enabled());
        assert_eq!(
            p.write(HV_X64_MSR_GUEST_OS_ID, LINUX_OS_ID, &RAM),
            MsrOutcome::Done
        );
        assert_eq!(
            p.write(HV_X64_MSR_HYPERCALL, 0x5001, &RAM),
            MsrOutcome::Action(MsrAction::WriteHypercallPage { gpa: 0x5000 })
        );
        assert!(p.hypercalls_enabled());
        assert_eq!(p.read(HV_X64_MSR_HYPERCALL, &0), MsrOutcome::Value(0x5001));
    }

    #[test]
    fn guest_os_id_zero_disables_the_hypercall_page() {
        let mut p = all();
        let _ = p.write(HV_X64_MSR_GUEST_OS_ID, LINUX_OS_ID, &RAM);
        let _ = p.write(HV_X64_MSR_HYPERCALL, 0x5001, &RAM);
        assert_eq!(p.write(HV_X64_MSR_GUEST_OS_ID, 0, &RAM), MsrOutcome::Done);
        assert_eq!(p.read(HV_X64_MSR_HYPERCALL, &0), MsrOutcome::Value(0x5000));
        assert!(!p.hypercalls_enabled());
    }

    #[test]
    fn hypercall_disable_is_stored_without_action() {
        let mut p = all();
        let _ = p.write(HV_X64_MSR_GUEST_OS_ID, LINUX_OS_ID, &RAM);
        assert_eq!(
            p.write(HV_X64_MSR_HYPERCALL, 0x5000, &RAM),
            MsrOutcome::Done
        );
        assert_eq!(p.read(HV_X64_MSR_HYPERCALL, &0), MsrOutcome::Value(0x5000));
    }

    #[test]
    fn locked_hypercall_msr_refuses_changes_until_reset() {
        let mut p = all();
        let _ = p.write(HV_X64_MSR_GUEST_OS_ID, LINUX_OS_ID, &RAM);
        assert!(matches!(
            p.write(HV_X64_MSR_HYPERCALL, 0x5003, &RAM),
            MsrOutcome::Action(MsrAction::WriteHypercallPage { gpa: 0x5000 })
        ));
        assert_eq!(
            p.write(HV_X64_MSR_HYPERCALL, 0x5003, &RAM),
            MsrOutcome::Done
        );
        assert!(p.write(HV_X64_MSR_HYPERCALL, 0x6003, &RAM).is_gp());
        assert!(p.write(HV_X64_MSR_HYPERCALL, 0x5001, &RAM).is_gp());
        // GUEST_OS_ID 0 does not unlock or disable a locked page.
        let _ = p.write(HV_X64_MSR_GUEST_OS_ID, 0, &RAM);
        assert_eq!(p.read(HV_X64_MSR_HYPERCALL, &0), MsrOutcome::Value(0x5003));
        p.reset();
        assert_eq!(p.read(HV_X64_MSR_HYPERCALL, &0), MsrOutcome::Value(0));
        assert_eq!(p.read(HV_X64_MSR_GUEST_OS_ID, &0), MsrOutcome::Value(0));
    }

    #[test]
    fn hypercall_page_outside_ram_is_gp_and_not_committed() {
        let mut p = all();
        let _ = p.write(HV_X64_MSR_GUEST_OS_ID, LINUX_OS_ID, &RAM);
        // The last RAM page is accepted; one page past it is not.
        let last = RAM_END - crate::HV_PAGE_SIZE as u64;
        assert_eq!(
            p.write(HV_X64_MSR_HYPERCALL, last | 1, &RAM),
            MsrOutcome::Action(MsrAction::WriteHypercallPage { gpa: last })
        );
        assert!(p.write(HV_X64_MSR_HYPERCALL, RAM_END | 1, &RAM).is_gp());
        assert_eq!(
            p.read(HV_X64_MSR_HYPERCALL, &0),
            MsrOutcome::Value(last | 1)
        );
        // Nor may a locked enable name such a page.
        assert!(p.write(HV_X64_MSR_HYPERCALL, RAM_END | 3, &RAM).is_gp());
        assert!(!p.hypercall().locked());
        // Disabling never needs the page.
        assert_eq!(
            p.write(HV_X64_MSR_HYPERCALL, RAM_END, &RAM),
            MsrOutcome::Done
        );
        assert_eq!(p.read(HV_X64_MSR_HYPERCALL, &0), MsrOutcome::Value(RAM_END));
        assert!(!p.hypercalls_enabled());
        // The check is made only for an enable that would be committed.
        let asked = core::cell::Cell::new(0);
        let counting = |_gpa: u64| {
            asked.set(asked.get() + 1);
            false
        };
        let _ = p.write(HV_X64_MSR_GUEST_OS_ID, 0, &counting);
        assert_eq!(
            p.write(HV_X64_MSR_HYPERCALL, 0x5001, &counting),
            MsrOutcome::Done
        );
        assert_eq!(asked.get(), 0);
    }

    #[test]
    fn time_ref_count_reads_the_callers_time_and_is_read_only() {
        let p = all();
        assert_eq!(
            p.read(HV_X64_MSR_TIME_REF_COUNT, &1234),
            MsrOutcome::Value(1234)
        );
        let clock = || 99u64;
        assert_eq!(
            p.read(HV_X64_MSR_TIME_REF_COUNT, &clock),
            MsrOutcome::Value(99)
        );
        let mut p = p;
        assert!(p.write(HV_X64_MSR_TIME_REF_COUNT, 0, &RAM).is_gp());
    }

    #[test]
    fn frequencies_are_read_only_and_configured() {
        let mut p = all();
        assert_eq!(
            p.read(HV_X64_MSR_TSC_FREQUENCY, &0),
            MsrOutcome::Value(FREQ.tsc_hz)
        );
        assert_eq!(
            p.read(HV_X64_MSR_APIC_FREQUENCY, &0),
            MsrOutcome::Value(FREQ.apic_hz)
        );
        assert!(p.write(HV_X64_MSR_TSC_FREQUENCY, 1, &RAM).is_gp());
        assert!(p.write(HV_X64_MSR_APIC_FREQUENCY, 1, &RAM).is_gp());
        let none = Partition::new(PartitionConfig {
            privileges: Privileges::all(),
            frequencies: None,
        });
        assert!(none.read(HV_X64_MSR_TSC_FREQUENCY, &0).is_gp());
    }

    #[test]
    fn reference_tsc_page_enable_and_disable() {
        let mut p = all();
        assert_eq!(
            p.write(HV_X64_MSR_REFERENCE_TSC, 0x9001, &RAM),
            MsrOutcome::Action(MsrAction::ReferenceTscPage { gpa: Some(0x9000) })
        );
        assert_eq!(p.reference_tsc_page(), Some(0x9000));
        assert_eq!(
            p.write(HV_X64_MSR_REFERENCE_TSC, 0x9000, &RAM),
            MsrOutcome::Action(MsrAction::ReferenceTscPage { gpa: None })
        );
        assert!(p.write(HV_X64_MSR_REFERENCE_TSC, 0x9003, &RAM).is_gp());
        assert_eq!(
            p.read(HV_X64_MSR_REFERENCE_TSC, &0),
            MsrOutcome::Value(0x9000)
        );
    }

    #[test]
    fn tsc_invariant_control_cannot_be_turned_off_by_the_guest() {
        let mut p = all();
        assert_eq!(
            p.write(HV_X64_MSR_TSC_INVARIANT_CONTROL, 0, &RAM),
            MsrOutcome::Done
        );
        assert_eq!(
            p.write(HV_X64_MSR_TSC_INVARIANT_CONTROL, 1, &RAM),
            MsrOutcome::Done
        );
        assert!(p.tsc_invariant());
        assert!(p.write(HV_X64_MSR_TSC_INVARIANT_CONTROL, 0, &RAM).is_gp());
        assert!(p.write(HV_X64_MSR_TSC_INVARIANT_CONTROL, 2, &RAM).is_gp());
        assert_eq!(
            p.read(HV_X64_MSR_TSC_INVARIANT_CONTROL, &0),
            MsrOutcome::Value(1)
        );
    }

    #[test]
    fn privilege_gates_every_partition_msr() {
        let mut p = Partition::new(PartitionConfig {
            privileges: Privileges::empty(),
            frequencies: Some(FREQ),
        });
        for msr in [
            HV_X64_MSR_GUEST_OS_ID,
            HV_X64_MSR_HYPERCALL,
            HV_X64_MSR_TIME_REF_COUNT,
            HV_X64_MSR_REFERENCE_TSC,
            HV_X64_MSR_TSC_FREQUENCY,
            HV_X64_MSR_APIC_FREQUENCY,
            HV_X64_MSR_TSC_INVARIANT_CONTROL,
        ] {
            assert!(p.read(msr, &0).is_gp(), "{msr:#x}");
            assert!(p.write(msr, 0, &RAM).is_gp(), "{msr:#x}");
        }
    }

    #[test]
    fn per_vp_and_unknown_msrs_are_not_handled_here() {
        let mut p = all();
        for msr in [
            HV_X64_MSR_VP_INDEX,
            HV_X64_MSR_EOI,
            HV_X64_MSR_STIMER0_CONFIG,
            HV_X64_MSR_GUEST_IDLE,
            0x4000_0200,
        ] {
            assert!(p.read(msr, &0).is_gp());
            assert!(p.write(msr, 0, &RAM).is_gp());
        }
    }

    fn crash_capable() -> Partition {
        Partition::with_features(
            PartitionConfig {
                privileges: Privileges::all(),
                frequencies: None,
            },
            FeaturesEdx::GUEST_CRASH_MSRS,
        )
    }

    #[test]
    fn crash_msrs_report_as_kvm_does() {
        let mut p = crash_capable();
        for (i, msr) in (HV_X64_MSR_CRASH_P0..=HV_X64_MSR_CRASH_P4).enumerate() {
            assert_eq!(p.write(msr, i as u64 + 10, &RAM), MsrOutcome::Done);
            assert_eq!(p.read(msr, &0), MsrOutcome::Value(i as u64 + 10));
        }
        assert_eq!(
            p.read(HV_X64_MSR_CRASH_CTL, &0),
            MsrOutcome::Value(HV_CRASH_CTL_CRASH_NOTIFY)
        );
        assert_eq!(p.write(HV_X64_MSR_CRASH_CTL, 1, &RAM), MsrOutcome::Done);
        assert_eq!(
            p.write(
                HV_X64_MSR_CRASH_CTL,
                HV_CRASH_CTL_CRASH_NOTIFY | HV_CRASH_CTL_CRASH_NOTIFY_MSG,
                &RAM
            ),
            MsrOutcome::Action(MsrAction::GuestCrashed {
                params: [10, 11, 12, 13, 14]
            })
        );
        // The guest's write does not change what CRASH_CTL reads.
        assert_eq!(
            p.read(HV_X64_MSR_CRASH_CTL, &0),
            MsrOutcome::Value(HV_CRASH_CTL_CRASH_NOTIFY)
        );
        assert_eq!(p.crash_params(), [10, 11, 12, 13, 14]);
        // Without the feature (Partition::new): #GP, even with every privilege.
        let mut plain = all();
        assert!(plain.read(HV_X64_MSR_CRASH_CTL, &0).is_gp());
        assert!(plain.write(HV_X64_MSR_CRASH_P0, 1, &RAM).is_gp());
        p.reset();
        assert_eq!(p.crash_params(), [0; 5]);
        assert_eq!(p.features(), FeaturesEdx::GUEST_CRASH_MSRS);
    }

    #[test]
    fn reset_msr_requests_a_reset_only_for_1() {
        let mut p = all();
        assert_eq!(
            p.write(HV_X64_MSR_RESET, 1, &RAM),
            MsrOutcome::Action(MsrAction::ResetRequested)
        );
        for v in [0, 2, 3, u64::MAX] {
            assert_eq!(p.write(HV_X64_MSR_RESET, v, &RAM), MsrOutcome::Done);
        }
        assert_eq!(p.read(HV_X64_MSR_RESET, &0), MsrOutcome::Value(0));
    }

    proptest! {
        #[test]
        fn hypercall_reserved_bits_give_gp(v in any::<u64>(), bit in 2u32..12) {
            let mut p = all();
            // Every page is RAM: the reserved bit alone faults.
            let ram = |_| true;
            let _ = p.write(HV_X64_MSR_GUEST_OS_ID, LINUX_OS_ID, &ram);
            prop_assert!(p.write(HV_X64_MSR_HYPERCALL, v | (1 << bit), &ram).is_gp());
            prop_assert!(p.write(HV_X64_MSR_REFERENCE_TSC, v | (1 << (bit - 1)), &ram).is_gp());
            prop_assert_eq!(p.read(HV_X64_MSR_HYPERCALL, &0), MsrOutcome::Value(0));
        }

        #[test]
        fn guest_os_id_takes_any_value(v in any::<u64>()) {
            let mut p = all();
            prop_assert_eq!(p.write(HV_X64_MSR_GUEST_OS_ID, v, &RAM), MsrOutcome::Done);
            prop_assert_eq!(p.read(HV_X64_MSR_GUEST_OS_ID, &0), MsrOutcome::Value(v));
        }
    }
}
