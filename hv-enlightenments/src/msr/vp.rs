//! Per-virtual-processor synthetic MSR state: VP_INDEX, VP_RUNTIME,
//! VP_ASSIST_PAGE, the SynIC registers, the synthetic timers and the
//! EOI/ICR/TPR aliases.
//!
//! One [`Vp`] per vCPU, owned by that vCPU's thread: no locking.

use super::access::{MsrScope, allowed, scope};
use super::index::*;
use super::outcome::{ApicAccess, ApicRegister, MsrAction, MsrOutcome};
use super::partition::ReferenceTime;
use super::ram::GuestRam;
use super::stimer::{HV_STIMER_COUNT, Stimer, Stimers};
use super::values::{SYNIC_VERSION, ScontrolMsr, SiefpMsr, SimpMsr, SintMsr, VpAssistPageMsr};
use crate::cpuid::{CpuidPlan, FeaturesEdx, MAX_VP_INDEX, Privileges};

/// Why the VMM's request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// VP indices go up to [`MAX_VP_INDEX`] (what a VP set can name).
    #[error("VP index {0} exceeds the largest VP index {MAX_VP_INDEX}")]
    VpIndexTooLarge(u32),
}

/// Per-VP synthetic MSR state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vp {
    privileges: Privileges,
    features: FeaturesEdx,
    vp_index: u32,
    vp_runtime: u64,
    stimers: Stimers,
    vp_assist: VpAssistPageMsr,
    scontrol: ScontrolMsr,
    siefp: SiefpMsr,
    simp: SimpMsr,
    sints: [SintMsr; HV_SINT_COUNT],
}

impl Vp {
    /// State at reset for the VP numbered `vp_index`, enforcing the
    /// privilege mask published in CPUID.
    ///
    /// ```
    /// use hv_enlightenments::cpuid::{CpuidBuilder, MAX_VP_INDEX};
    /// use hv_enlightenments::msr::{Error, Vp};
    ///
    /// let plan = CpuidBuilder::new(2).build()?;
    /// let vp = Vp::new(1, plan.privileges())?;
    /// assert_eq!(vp.vp_index(), 1);
    /// let too_large = MAX_VP_INDEX + 1;
    /// assert_eq!(Vp::new(too_large, plan.privileges()), Err(Error::VpIndexTooLarge(too_large)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(vp_index: u32, privileges: Privileges) -> Result<Self, Error> {
        Self::with_features(vp_index, privileges, FeaturesEdx::empty())
    }

    /// As [`Vp::new`], also enforcing the features published in CPUID
    /// 0x40000003 EDX: synthetic timer direct mode needs
    /// [`FeaturesEdx::STIMER_DIRECT_MODE`] (KVM `stimer_set_config`).
    pub fn with_features(
        vp_index: u32,
        privileges: Privileges,
        features: FeaturesEdx,
    ) -> Result<Self, Error> {
        if vp_index > MAX_VP_INDEX {
            return Err(Error::VpIndexTooLarge(vp_index));
        }
        Ok(Self::at_reset(vp_index, privileges, features))
    }

    /// The VP numbered `vp_index` for what `plan` publishes.
    pub fn from_plan(vp_index: u32, plan: &CpuidPlan) -> Result<Self, Error> {
        Self::with_features(vp_index, plan.privileges(), plan.cpuid.features)
    }

    fn at_reset(vp_index: u32, privileges: Privileges, features: FeaturesEdx) -> Self {
        Self {
            privileges,
            features,
            vp_index,
            vp_runtime: 0,
            stimers: Stimers::default(),
            vp_assist: VpAssistPageMsr::new(),
            scontrol: ScontrolMsr::new(),
            siefp: SiefpMsr::new(),
            simp: SimpMsr::new(),
            sints: [SintMsr::RESET; HV_SINT_COUNT],
        }
    }

    /// Back to the reset state (the VP index is kept).
    pub fn reset(&mut self) {
        *self = Self::at_reset(self.vp_index, self.privileges, self.features);
    }

    /// This VP's index.
    pub fn vp_index(&self) -> u32 {
        self.vp_index
    }

    /// Sets the VP index (the VMM's write; the guest's is #GP).
    ///
    /// ```
    /// use hv_enlightenments::cpuid::Privileges;
    /// use hv_enlightenments::msr::Vp;
    ///
    /// let mut vp = Vp::new(0, Privileges::all())?;
    /// vp.set_vp_index(7)?;
    /// assert_eq!(vp.vp_index(), 7);
    /// # Ok::<(), hv_enlightenments::msr::Error>(())
    /// ```
    pub fn set_vp_index(&mut self, vp_index: u32) -> Result<(), Error> {
        if vp_index > MAX_VP_INDEX {
            return Err(Error::VpIndexTooLarge(vp_index));
        }
        self.vp_index = vp_index;
        Ok(())
    }

    /// The VP assist page, when enabled.
    pub fn vp_assist_page(&self) -> Option<u64> {
        self.vp_assist.enabled_gpa()
    }

    /// Whether SCONTROL enables the SynIC.
    pub fn synic_enabled(&self) -> bool {
        self.scontrol.enable()
    }

    /// The SynIC message page, when enabled.
    pub fn message_page(&self) -> Option<u64> {
        self.simp.enabled_gpa()
    }

    /// The SynIC event flags page, when enabled.
    pub fn event_flags_page(&self) -> Option<u64> {
        self.siefp.enabled_gpa()
    }

    /// SINT `n`, or `None` past the last one.
    pub fn sint(&self, n: usize) -> Option<SintMsr> {
        self.sints.get(n).copied()
    }

    /// Whether any SINT delivers with AutoEOI (what KVM counts per vCPU for
    /// the APICv inhibit).
    pub fn auto_eoi_in_use(&self) -> bool {
        self.sints.iter().any(SintMsr::delivers_auto_eoi)
    }

    /// Whether an interrupt on `vector` is acknowledged without setting
    /// ISR: some unmasked SINT with AutoEOI uses it.
    pub fn is_auto_eoi_vector(&self, vector: u8) -> bool {
        self.sints
            .iter()
            .any(|s| s.delivers_auto_eoi() && s.vector() == vector)
    }

    /// Sets what VP_RUNTIME reads: the time this VP has run, in 100 ns
    /// units (KVM: the vCPU thread's user + system time). The VMM updates
    /// it, or answers VP_RUNTIME with [`Vp::read_with_runtime`].
    pub fn set_vp_runtime(&mut self, runtime: u64) {
        self.vp_runtime = runtime;
    }

    /// RDMSR, with VP_RUNTIME read from `runtime` (100 ns units) at the
    /// time of the read; every other MSR as [`Vp::read`].
    pub fn read_with_runtime(&self, msr: u32, runtime: &impl ReferenceTime) -> MsrOutcome {
        if msr == HV_X64_MSR_VP_RUNTIME && self.allowed(msr) {
            return MsrOutcome::Value(runtime.time_ref_count());
        }
        self.read(msr)
    }

    /// Synthetic timer `n` (0..=3).
    pub fn stimer(&self, n: usize) -> Option<&Stimer> {
        self.stimers.get(n)
    }

    /// The earliest synthetic timer expiry, in reference time (100 ns):
    /// arm the host timer for it and call
    /// [`synic::process_stimers`](crate::synic::process_stimers) then.
    pub fn stimer_deadline(&self) -> Option<u64> {
        self.stimers.next_deadline()
    }

    /// Whether [`synic::process_stimers`](crate::synic::process_stimers)
    /// has work at reference time `now`.
    pub fn stimers_need_processing(&self, now: u64) -> bool {
        self.stimers.needs_processing(now)
    }

    /// The VP's synthetic timers, for
    /// [`synic::process_stimers`](crate::synic::process_stimers).
    pub(crate) fn stimers_state(&self) -> Stimers {
        self.stimers
    }

    /// Puts back what [`Vp::stimers_state`] gave, processed.
    pub(crate) fn set_stimers_state(&mut self, stimers: Stimers) {
        self.stimers = stimers;
    }

    /// The guest EOI'd `vector`: SINTs using it are acknowledged, so
    /// synthetic timers waiting on them are due again (KVM
    /// `kvm_hv_synic_send_eoi`). Returns whether any unmasked SINT uses
    /// `vector` (then also retry the VMM's queued messages for it:
    /// [`crate::synic::MessageQueue::retry`]).
    pub fn sint_eoi(&mut self, vector: u8) -> bool {
        let mut any = false;
        for (n, s) in self.sints.iter().enumerate() {
            if !s.masked() && s.vector() == vector {
                // n < 16.
                self.stimers.sint_acked(n as u8);
                any = true;
            }
        }
        any
    }

    fn allowed(&self, msr: u32) -> bool {
        scope(msr) == Some(MsrScope::Vp) && allowed(self.privileges, self.features, msr)
    }

    /// Timer number and whether `msr` is its COUNT.
    fn stimer_slot(msr: u32) -> Option<(usize, bool)> {
        let off = msr.checked_sub(HV_X64_MSR_STIMER0_CONFIG)? as usize;
        (off < 2 * HV_STIMER_COUNT).then_some((off / 2, off % 2 == 1))
    }

    fn sint_slot(msr: u32) -> Option<usize> {
        let n = msr.checked_sub(HV_X64_MSR_SINT0)? as usize;
        (n < HV_SINT_COUNT).then_some(n)
    }

    /// RDMSR of a per-VP MSR.
    ///
    /// ```
    /// use hv_enlightenments::cpuid::Privileges;
    /// use hv_enlightenments::msr::{self, ApicAccess, ApicRegister, MsrOutcome, Vp};
    ///
    /// let vp = Vp::new(3, Privileges::all())?;
    /// assert_eq!(vp.read(msr::HV_X64_MSR_VP_INDEX), MsrOutcome::Value(3));
    /// // The synthetic TPR is the local APIC's to answer.
    /// assert_eq!(
    ///     vp.read(msr::HV_X64_MSR_TPR),
    ///     MsrOutcome::Apic(ApicAccess::Read(ApicRegister::Tpr))
    /// );
    /// # Ok::<(), hv_enlightenments::msr::Error>(())
    /// ```
    pub fn read(&self, msr: u32) -> MsrOutcome {
        if !self.allowed(msr) {
            return MsrOutcome::InjectGp;
        }
        let value = match msr {
            HV_X64_MSR_VP_INDEX => u64::from(self.vp_index),
            HV_X64_MSR_VP_RUNTIME => self.vp_runtime,
            HV_X64_MSR_STIMER0_CONFIG..=HV_X64_MSR_STIMER3_COUNT => {
                match Self::stimer_slot(msr).and_then(|(n, c)| Some((self.stimers.get(n)?, c))) {
                    Some((t, true)) => t.count(),
                    Some((t, false)) => t.config().into_bits(),
                    None => return MsrOutcome::InjectGp,
                }
            }
            HV_X64_MSR_EOI => return MsrOutcome::Apic(ApicAccess::Read(ApicRegister::Eoi)),
            HV_X64_MSR_ICR => return MsrOutcome::Apic(ApicAccess::Read(ApicRegister::Icr)),
            HV_X64_MSR_TPR => return MsrOutcome::Apic(ApicAccess::Read(ApicRegister::Tpr)),
            HV_X64_MSR_VP_ASSIST_PAGE => self.vp_assist.into_bits(),
            HV_X64_MSR_SCONTROL => self.scontrol.into_bits(),
            HV_X64_MSR_SVERSION => SYNIC_VERSION,
            HV_X64_MSR_SIEFP => self.siefp.into_bits(),
            HV_X64_MSR_SIMP => self.simp.into_bits(),
            // KVM synic_get_msr: EOM reads as 0.
            HV_X64_MSR_EOM => 0,
            _ => match Self::sint_slot(msr).and_then(|n| self.sints.get(n)) {
                Some(s) => s.into_bits(),
                None => return MsrOutcome::InjectGp,
            },
        };
        MsrOutcome::Value(value)
    }

    /// WRMSR of a per-VP MSR. `ram` is asked only when VP_ASSIST_PAGE,
    /// SIMP or SIEFP enables a page: a page that is not guest RAM is #GP
    /// and the MSR keeps its value (KVM `kvm_hv_set_msr`, `synic_set_msr`).
    ///
    /// ```
    /// use hv_enlightenments::cpuid::Privileges;
    /// use hv_enlightenments::msr::{self, MsrAction, MsrOutcome, Vp};
    ///
    /// let mut vp = Vp::new(0, Privileges::all())?;
    /// let ram = |gpa: u64| gpa < 0x10_0000;
    /// assert_eq!(
    ///     vp.write(msr::HV_X64_MSR_VP_ASSIST_PAGE, 0x7001, &ram),
    ///     MsrOutcome::Action(MsrAction::VpAssistPage { gpa: Some(0x7000) })
    /// );
    /// // VP_INDEX is read-only to the guest.
    /// assert!(vp.write(msr::HV_X64_MSR_VP_INDEX, 5, &ram).is_gp());
    /// # Ok::<(), hv_enlightenments::msr::Error>(())
    /// ```
    pub fn write(&mut self, msr: u32, value: u64, ram: &impl GuestRam) -> MsrOutcome {
        if !self.allowed(msr) {
            return MsrOutcome::InjectGp;
        }
        match msr {
            // Read-only to the guest (KVM: only host-initiated writes).
            HV_X64_MSR_VP_INDEX | HV_X64_MSR_SVERSION | HV_X64_MSR_VP_RUNTIME => {
                MsrOutcome::InjectGp
            }
            HV_X64_MSR_STIMER0_CONFIG..=HV_X64_MSR_STIMER3_COUNT => {
                let direct = self.features.contains(FeaturesEdx::STIMER_DIRECT_MODE);
                let done = match Self::stimer_slot(msr) {
                    Some((n, true)) => self.stimers.write_count(n, value),
                    Some((n, false)) => self.stimers.write_config(n, value, direct),
                    None => None,
                };
                match done {
                    Some(()) => MsrOutcome::Action(MsrAction::SyntheticTimersChanged),
                    None => MsrOutcome::InjectGp,
                }
            }
            HV_X64_MSR_EOI => MsrOutcome::Apic(ApicAccess::Write(ApicRegister::Eoi, value)),
            HV_X64_MSR_ICR => MsrOutcome::Apic(ApicAccess::Write(ApicRegister::Icr, value)),
            HV_X64_MSR_TPR => MsrOutcome::Apic(ApicAccess::Write(ApicRegister::Tpr, value)),
            HV_X64_MSR_VP_ASSIST_PAGE => match VpAssistPageMsr::from_guest(value) {
                // KVM kvm_hv_set_msr: #GP when the page has no host mapping
                // (kvm_vcpu_gfn_to_hva) or apic_assist cannot be cleared.
                Some(v) if !page_usable(v.enabled_gpa(), ram) => MsrOutcome::InjectGp,
                Some(v) => {
                    self.vp_assist = v;
                    MsrOutcome::Action(MsrAction::VpAssistPage {
                        gpa: v.enabled_gpa(),
                    })
                }
                None => MsrOutcome::InjectGp,
            },
            HV_X64_MSR_SCONTROL => match ScontrolMsr::from_guest(value) {
                Some(v) => {
                    self.scontrol = v;
                    MsrOutcome::Done
                }
                None => MsrOutcome::InjectGp,
            },
            // KVM synic_set_msr: #GP when kvm_clear_guest of the page fails.
            HV_X64_MSR_SIEFP => match SiefpMsr::from_guest(value) {
                Some(v) if !page_usable(v.enabled_gpa(), ram) => MsrOutcome::InjectGp,
                Some(v) => {
                    self.siefp = v;
                    MsrOutcome::Action(MsrAction::SynicEventFlagsPage {
                        gpa: v.enabled_gpa(),
                    })
                }
                None => MsrOutcome::InjectGp,
            },
            HV_X64_MSR_SIMP => match SimpMsr::from_guest(value) {
                Some(v) if !page_usable(v.enabled_gpa(), ram) => MsrOutcome::InjectGp,
                Some(v) => {
                    self.simp = v;
                    MsrOutcome::Action(MsrAction::SynicMessagePage {
                        gpa: v.enabled_gpa(),
                    })
                }
                None => MsrOutcome::InjectGp,
            },
            // Any value signals end of message and acknowledges every
            // SINT (KVM synic_set_msr -> kvm_hv_notify_acked_sint).
            HV_X64_MSR_EOM => {
                for sint in 0..HV_SINT_COUNT as u8 {
                    self.stimers.sint_acked(sint);
                }
                MsrOutcome::Action(MsrAction::EndOfMessage)
            }
            _ => self.write_sint(msr, value),
        }
    }

    fn write_sint(&mut self, msr: u32, value: u64) -> MsrOutcome {
        let Some(new) = SintMsr::from_guest(value) else {
            return MsrOutcome::InjectGp;
        };
        let old_usage = self.auto_eoi_in_use();
        let Some(slot) = Self::sint_slot(msr).and_then(|n| self.sints.get_mut(n)) else {
            return MsrOutcome::InjectGp;
        };
        *slot = new;
        let new_usage = self.auto_eoi_in_use();
        if old_usage == new_usage {
            MsrOutcome::Done
        } else {
            MsrOutcome::Action(MsrAction::AutoEoiChanged {
                old: old_usage,
                new: new_usage,
            })
        }
    }
}

/// A disabled page needs nothing; an enabled one must be guest RAM.
fn page_usable(gpa: Option<u64>, ram: &impl GuestRam) -> bool {
    gpa.is_none_or(|gpa| ram.is_ram_page(gpa))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msr::PageMsr;
    use proptest::prelude::*;

    fn vp() -> Vp {
        Vp::new(3, Privileges::all()).unwrap()
    }

    /// Guest RAM: the first 1 MiB.
    const RAM_END: u64 = 0x10_0000;
    const RAM: fn(u64) -> bool = |gpa| gpa < RAM_END;
    const AUTO_EOI: u64 = 1 << 17;
    const MASKED: u64 = 1 << 16;

    #[test]
    fn vp_index_is_read_only_to_the_guest() {
        let mut v = vp();
        assert_eq!(v.read(HV_X64_MSR_VP_INDEX), MsrOutcome::Value(3));
        assert!(v.write(HV_X64_MSR_VP_INDEX, 7, &RAM).is_gp());
        assert_eq!(v.read(HV_X64_MSR_VP_INDEX), MsrOutcome::Value(3));
        v.set_vp_index(7).unwrap();
        assert_eq!(v.read(HV_X64_MSR_VP_INDEX), MsrOutcome::Value(7));
    }

    #[test]
    fn vp_index_bound_one_past() {
        assert!(Vp::new(MAX_VP_INDEX, Privileges::all()).is_ok());
        assert_eq!(
            Vp::new(MAX_VP_INDEX + 1, Privileges::all()).err(),
            Some(Error::VpIndexTooLarge(MAX_VP_INDEX + 1))
        );
        let mut v = vp();
        assert!(v.set_vp_index(MAX_VP_INDEX + 1).is_err());
        assert_eq!(v.vp_index(), 3);
    }

    #[test]
    fn vp_assist_page_enable_asks_to_zero_apic_assist() {
        let mut v = vp();
        assert_eq!(
            v.write(HV_X64_MSR_VP_ASSIST_PAGE, 0x8_1001, &RAM),
            MsrOutcome::Action(MsrAction::VpAssistPage {
                gpa: Some(0x8_1000)
            })
        );
        assert_eq!(v.vp_assist_page(), Some(0x8_1000));
        assert_eq!(
            v.read(HV_X64_MSR_VP_ASSIST_PAGE),
            MsrOutcome::Value(0x8_1001)
        );
        assert_eq!(
            v.write(HV_X64_MSR_VP_ASSIST_PAGE, 0, &RAM),
            MsrOutcome::Action(MsrAction::VpAssistPage { gpa: None })
        );
        assert!(v.write(HV_X64_MSR_VP_ASSIST_PAGE, 0x8_1003, &RAM).is_gp());
        assert_eq!(v.vp_assist_page(), None);
    }

    #[test]
    fn pages_outside_ram_are_gp_and_not_committed() {
        let last = RAM_END - crate::HV_PAGE_SIZE as u64;
        for (msr, action) in [
            (
                HV_X64_MSR_VP_ASSIST_PAGE,
                (|gpa| MsrAction::VpAssistPage { gpa }) as fn(Option<u64>) -> MsrAction,
            ),
            (HV_X64_MSR_SIMP, |gpa| MsrAction::SynicMessagePage { gpa }),
            (HV_X64_MSR_SIEFP, |gpa| MsrAction::SynicEventFlagsPage {
                gpa,
            }),
        ] {
            let mut v = vp();
            // The last RAM page is accepted; one page past it is not.
            assert_eq!(
                v.write(msr, last | 1, &RAM),
                MsrOutcome::Action(action(Some(last))),
                "{msr:#x}"
            );
            assert!(v.write(msr, RAM_END | 1, &RAM).is_gp(), "{msr:#x}");
            assert_eq!(v.read(msr), MsrOutcome::Value(last | 1), "{msr:#x}");
            // Disabling, whatever the address, needs no page.
            assert_eq!(
                v.write(msr, RAM_END, &RAM),
                MsrOutcome::Action(action(None)),
                "{msr:#x}"
            );
            assert_eq!(v.read(msr), MsrOutcome::Value(RAM_END), "{msr:#x}");
        }
        // The highest page the MSR can name.
        let mut v = vp();
        assert!(
            v.write(HV_X64_MSR_VP_ASSIST_PAGE, !PageMsr::RESERVED, &RAM)
                .is_gp()
        );
        assert_eq!(v.vp_assist_page(), None);
    }

    #[test]
    fn apic_aliases_go_to_the_apic() {
        let mut v = vp();
        assert_eq!(
            v.write(HV_X64_MSR_EOI, 0, &RAM),
            MsrOutcome::Apic(ApicAccess::Write(ApicRegister::Eoi, 0))
        );
        assert_eq!(
            v.write(HV_X64_MSR_ICR, 0x0000_0005_0000_00F0, &RAM),
            MsrOutcome::Apic(ApicAccess::Write(ApicRegister::Icr, 0x0000_0005_0000_00F0))
        );
        assert_eq!(
            v.read(HV_X64_MSR_TPR),
            MsrOutcome::Apic(ApicAccess::Read(ApicRegister::Tpr))
        );
        assert_eq!(
            v.read(HV_X64_MSR_ICR),
            MsrOutcome::Apic(ApicAccess::Read(ApicRegister::Icr))
        );
    }

    #[test]
    fn synic_registers() {
        let mut v = vp();
        assert_eq!(v.read(HV_X64_MSR_SVERSION), MsrOutcome::Value(1));
        assert!(v.write(HV_X64_MSR_SVERSION, 1, &RAM).is_gp());
        assert_eq!(v.write(HV_X64_MSR_SCONTROL, 1, &RAM), MsrOutcome::Done);
        assert!(v.synic_enabled());
        assert!(v.write(HV_X64_MSR_SCONTROL, 3, &RAM).is_gp());
        assert_eq!(
            v.write(HV_X64_MSR_SIMP, 0x2001, &RAM),
            MsrOutcome::Action(MsrAction::SynicMessagePage { gpa: Some(0x2000) })
        );
        assert_eq!(
            v.write(HV_X64_MSR_SIEFP, 0x3001, &RAM),
            MsrOutcome::Action(MsrAction::SynicEventFlagsPage { gpa: Some(0x3000) })
        );
        assert_eq!(v.message_page(), Some(0x2000));
        assert_eq!(v.event_flags_page(), Some(0x3000));
        assert!(v.write(HV_X64_MSR_SIMP, 0x2801, &RAM).is_gp());
        assert_eq!(v.read(HV_X64_MSR_SIMP), MsrOutcome::Value(0x2001));
        assert_eq!(
            v.write(HV_X64_MSR_EOM, 0, &RAM),
            MsrOutcome::Action(MsrAction::EndOfMessage)
        );
        assert_eq!(v.read(HV_X64_MSR_EOM), MsrOutcome::Value(0));
    }

    #[test]
    fn sints_reset_masked_and_check_vectors() {
        let mut v = vp();
        for n in 0..HV_SINT_COUNT as u32 {
            assert_eq!(v.read(HV_X64_MSR_SINT0 + n), MsrOutcome::Value(MASKED));
        }
        assert!(v.write(HV_X64_MSR_SINT0, 15, &RAM).is_gp());
        assert_eq!(
            v.write(HV_X64_MSR_SINT0, MASKED | 15, &RAM),
            MsrOutcome::Done
        );
        assert_eq!(v.write(HV_X64_MSR_SINT15, 0x30, &RAM), MsrOutcome::Done);
        assert_eq!(v.read(HV_X64_MSR_SINT15), MsrOutcome::Value(0x30));
        assert!(v.write(HV_X64_MSR_SINT2, 0x30 | (1 << 18), &RAM).is_gp());
        assert!(v.sint(HV_SINT_COUNT).is_none());
    }

    #[test]
    fn auto_eoi_transitions_are_reported_once() {
        let mut v = vp();
        assert_eq!(
            v.write(HV_X64_MSR_SINT1, 0x40 | AUTO_EOI, &RAM),
            MsrOutcome::Action(MsrAction::AutoEoiChanged {
                old: false,
                new: true
            })
        );
        assert!(v.is_auto_eoi_vector(0x40));
        // A second AutoEOI SINT changes nothing for the VP as a whole.
        assert_eq!(
            v.write(HV_X64_MSR_SINT2, 0x41 | AUTO_EOI, &RAM),
            MsrOutcome::Done
        );
        assert_eq!(v.write(HV_X64_MSR_SINT1, 0x40, &RAM), MsrOutcome::Done);
        assert!(!v.is_auto_eoi_vector(0x40));
        // Masking the last one ends the usage (masked SINTs do not count).
        assert_eq!(
            v.write(HV_X64_MSR_SINT2, 0x41 | AUTO_EOI | MASKED, &RAM),
            MsrOutcome::Action(MsrAction::AutoEoiChanged {
                old: true,
                new: false
            })
        );
        assert!(!v.auto_eoi_in_use());
    }

    #[test]
    fn reset_restores_masked_sints_and_keeps_the_index() {
        let mut v = vp();
        let _ = v.write(HV_X64_MSR_SINT0, 0x40 | AUTO_EOI, &RAM);
        let _ = v.write(HV_X64_MSR_VP_ASSIST_PAGE, 0x1001, &RAM);
        v.reset();
        assert_eq!(v, vp());
    }

    #[test]
    fn privileges_gate_each_group() {
        let mut none = Vp::new(0, Privileges::HYPERCALL).unwrap();
        for msr in [
            HV_X64_MSR_VP_INDEX,
            HV_X64_MSR_EOI,
            HV_X64_MSR_ICR,
            HV_X64_MSR_TPR,
            HV_X64_MSR_VP_ASSIST_PAGE,
            HV_X64_MSR_SCONTROL,
            HV_X64_MSR_SVERSION,
            HV_X64_MSR_SIEFP,
            HV_X64_MSR_SIMP,
            HV_X64_MSR_EOM,
            HV_X64_MSR_SINT0,
            HV_X64_MSR_SINT15,
        ] {
            assert!(none.read(msr).is_gp(), "{msr:#x}");
            assert!(none.write(msr, 0x1_0000, &RAM).is_gp(), "{msr:#x}");
        }
        let apic_only = Vp::new(0, Privileges::APIC_ACCESS).unwrap();
        assert!(!apic_only.read(HV_X64_MSR_EOI).is_gp());
        assert!(apic_only.read(HV_X64_MSR_SCONTROL).is_gp());
        assert!(apic_only.read(HV_X64_MSR_VP_INDEX).is_gp());
    }

    #[test]
    fn partition_and_unknown_msrs_are_not_handled_here() {
        let mut v = vp();
        for msr in [
            HV_X64_MSR_HYPERCALL,
            HV_X64_MSR_GUEST_OS_ID,
            HV_X64_MSR_RESET,
            HV_X64_MSR_CRASH_CTL,
            HV_X64_MSR_SINT15 + 1,
            HV_X64_MSR_EOM + 1,
        ] {
            assert!(v.read(msr).is_gp(), "{msr:#x}");
            assert!(v.write(msr, 0, &RAM).is_gp(), "{msr:#x}");
        }
    }

    #[test]
    fn vp_runtime_is_read_only_and_from_the_vmm() {
        let mut v = vp();
        v.set_vp_runtime(42);
        assert_eq!(v.read(HV_X64_MSR_VP_RUNTIME), MsrOutcome::Value(42));
        assert_eq!(
            v.read_with_runtime(HV_X64_MSR_VP_RUNTIME, &|| 77u64),
            MsrOutcome::Value(77)
        );
        assert_eq!(
            v.read_with_runtime(HV_X64_MSR_VP_INDEX, &0),
            MsrOutcome::Value(3)
        );
        assert!(v.write(HV_X64_MSR_VP_RUNTIME, 1, &RAM).is_gp());
        let no = Vp::new(0, Privileges::all() - Privileges::VP_RUNTIME).unwrap();
        assert!(no.read_with_runtime(HV_X64_MSR_VP_RUNTIME, &0).is_gp());
    }

    fn synic_vp(features: FeaturesEdx) -> Vp {
        let mut v = Vp::with_features(0, Privileges::all(), features).unwrap();
        for (m, val) in [
            (HV_X64_MSR_SCONTROL, 1),
            (HV_X64_MSR_SIMP, 0x1001),
            (HV_X64_MSR_SINT2, 0x52),
        ] {
            assert!(!v.write(m, val, &RAM).is_gp());
        }
        v
    }

    #[test]
    fn stimer_msrs_round_trip_and_gate_direct_mode() {
        let mut v = synic_vp(FeaturesEdx::empty());
        let cfg = 1 | (1 << 3) | (2 << 16);
        assert_eq!(
            v.write(HV_X64_MSR_STIMER1_CONFIG, cfg, &RAM),
            MsrOutcome::Action(MsrAction::SyntheticTimersChanged)
        );
        assert_eq!(v.read(HV_X64_MSR_STIMER1_CONFIG), MsrOutcome::Value(cfg));
        assert_eq!(
            v.write(HV_X64_MSR_STIMER3_COUNT, 99, &RAM),
            MsrOutcome::Action(MsrAction::SyntheticTimersChanged)
        );
        assert_eq!(v.read(HV_X64_MSR_STIMER3_COUNT), MsrOutcome::Value(99));
        // Reserved bits, direct mode without EDX bit 19.
        assert!(v.write(HV_X64_MSR_STIMER0_CONFIG, 1 << 20, &RAM).is_gp());
        assert!(v.write(HV_X64_MSR_STIMER0_CONFIG, 1 << 12, &RAM).is_gp());
        let mut d = synic_vp(FeaturesEdx::STIMER_DIRECT_MODE);
        assert!(!d.write(HV_X64_MSR_STIMER0_CONFIG, 1 << 12, &RAM).is_gp());
        // One past the last timer MSR is not a timer.
        assert!(v.read(HV_X64_MSR_STIMER3_COUNT + 1).is_gp());
        assert!(v.stimer(4).is_none());
    }

    proptest! {
        #[test]
        fn reserved_bits_give_gp_and_leave_state(v in any::<u64>(), bit in 1u32..12, sbit in 19u32..64) {
            let mut vp = vp();
            let before = vp.clone();
            // Every page is RAM: the reserved bit alone faults.
            let ram = |_| true;
            prop_assert!(vp.write(HV_X64_MSR_VP_ASSIST_PAGE, v | (1 << bit), &ram).is_gp());
            prop_assert!(vp.write(HV_X64_MSR_SIMP, v | (1 << bit), &ram).is_gp());
            prop_assert!(vp.write(HV_X64_MSR_SIEFP, v | (1 << bit), &ram).is_gp());
            prop_assert!(vp.write(HV_X64_MSR_SCONTROL, v | (1 << bit), &ram).is_gp());
            prop_assert!(vp.write(HV_X64_MSR_SINT3, v | (1u64 << sbit), &ram).is_gp());
            prop_assert_eq!(vp, before);
        }

        #[test]
        fn auto_eoi_usage_matches_the_sints(writes in proptest::collection::vec((0u32..16, any::<u64>()), 0..40)) {
            let mut vp = vp();
            for (n, value) in writes {
                let before = vp.auto_eoi_in_use();
                let out = vp.write(HV_X64_MSR_SINT0 + n, value & (SintMsr::WRITABLE), &RAM);
                let after = vp.auto_eoi_in_use();
                match out {
                    MsrOutcome::Action(MsrAction::AutoEoiChanged { old, new }) => {
                        prop_assert_eq!((old, new), (before, after));
                        prop_assert_ne!(old, new);
                    }
                    MsrOutcome::Done | MsrOutcome::InjectGp => prop_assert_eq!(before, after),
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }
    }
}
