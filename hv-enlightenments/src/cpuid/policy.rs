//! The hint policy: from what the VMM wants and what the host does, the
//! CPUID leaves to publish and a reason for every choice.

use bitflags::bitflags;

use super::decision::{Decisions, Item};
use super::leaves::{
    FeaturesEdx, HardwareFeatures, Hints, HvCpuid, HvVersion, INTERFACE_HV1, LEAF_MAX, Limits,
    NestedFeatures, Privileges, SPINLOCK_RETRIES_NEVER, VENDOR_MICROSOFT_HV,
};
use crate::accel::{HostApicAccel, IrqchipMode};

/// Largest VP index a VP set can name: 64 banks of 64 VPs
/// (`HV_MAX_SPARSE_VCPU_BANKS` * `HV_VCPUS_PER_SPARSE_BANK`, hvgdk_mini.h).
pub const MAX_VP_INDEX: u32 = 64 * 64 - 1;
/// Largest vCPU count the builder accepts (every vCPU needs a VP index).
pub const MAX_VCPUS: u32 = MAX_VP_INDEX + 1;
/// The non-Ex flush/IPI hypercalls carry a 64-bit processor mask: VP
/// indices from here on need the Ex forms.
pub const FIRST_VP_INDEX_NEEDING_EX: u32 = 64;
/// Above this many vCPUs the guest gets x2APIC: xAPIC IDs stop at 254
/// (255 is broadcast) and some IDs are lost to topology gaps.
pub const X2APIC_VCPU_THRESHOLD: u32 = 240;

bitflags! {
    /// The enlightenments a VMM wants published. The policy may still turn
    /// one off (and says why); it never turns on one that is not wanted.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Enlightenments: u32 {
        /// Partition reference counter MSR.
        const TIME_REF_COUNT = 1 << 0;
        /// Reference TSC page MSR (only published with a stable TSC).
        const REFERENCE_TSC = 1 << 1;
        /// TSC/APIC frequency MSRs (only with frequencies configured).
        const FREQUENCY_MSRS = 1 << 2;
        /// Synthetic EOI/ICR/TPR MSRs and the VP assist page.
        const APIC_ACCESS = 1 << 3;
        /// SynIC MSRs.
        const SYNIC = 1 << 4;
        /// The relaxed timing hint.
        const RELAXED_TIMING = 1 << 5;
        /// PV TLB flush hypercalls.
        const PV_TLB_FLUSH = 1 << 6;
        /// PV IPI hypercalls.
        const PV_IPI = 1 << 7;
        /// Fast hypercall input in XMM registers.
        const XMM_HYPERCALL_INPUT = 1 << 8;
        /// TSC invariant control (only published with a stable TSC).
        const TSC_INVARIANT = 1 << 9;
    }
}

impl Default for Enlightenments {
    fn default() -> Self {
        Self::all()
    }
}

bitflags! {
    /// Enlightenments only a VMM that serves them may publish: each needs
    /// the VMM to act (run timers, route messages, handle a crash or
    /// reset). None is published unless named here
    /// ([`CpuidBuilder::serves`]); the default is empty, so a VMM that does
    /// not call it publishes exactly what it did before.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Served: u32 {
        /// Synthetic timers (privilege EAX bit 3): the VMM runs
        /// [`synic::process_stimers`](crate::synic::process_stimers) at
        /// [`Vp::stimer_deadline`](crate::msr::Vp::stimer_deadline).
        /// Published only with the SynIC.
        const SYNTHETIC_TIMERS = 1 << 0;
        /// Synthetic timer direct mode (EDX bit 19,
        /// `HV_STIMER_DIRECT_MODE_AVAILABLE`): the VMM raises a direct
        /// timer's vector. Published only with synthetic timers.
        const STIMER_DIRECT_MODE = 1 << 1;
        /// Crash MSRs (EDX bit 10): the VMM handles
        /// [`MsrAction::GuestCrashed`](crate::msr::MsrAction::GuestCrashed).
        const CRASH_MSRS = 1 << 2;
        /// RESET MSR (privilege EAX bit 7): the VMM handles
        /// [`MsrAction::ResetRequested`](crate::msr::MsrAction::ResetRequested).
        const RESET = 1 << 3;
        /// VP_RUNTIME (privilege EAX bit 0): the VMM supplies the runtime.
        const VP_RUNTIME = 1 << 4;
        /// HvPostMessage (privilege EBX bit 4): the VMM routes it through
        /// [`Connections`](crate::synic::Connections). Only with the SynIC.
        const POST_MESSAGES = 1 << 5;
        /// HvSignalEvent (privilege EBX bit 5). Only with the SynIC.
        const SIGNAL_EVENTS = 1 << 6;
    }
}

/// Fixed frequencies served by the frequency MSRs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frequencies {
    /// Guest TSC frequency in Hz.
    pub tsc_hz: u64,
    /// Guest APIC timer frequency in Hz.
    pub apic_hz: u64,
}

/// Why the builder refused its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A VM needs at least one vCPU.
    #[error("a VM needs at least one vCPU")]
    NoVcpus,
    /// More vCPUs than VP indices a VP set can name.
    #[error("{0} vCPUs exceed the limit of {MAX_VCPUS}")]
    TooManyVcpus(u32),
    /// The highest VP index is beyond what a VP set can name.
    #[error("VP index {0} exceeds the largest VP index {MAX_VP_INDEX}")]
    VpIndexTooLarge(u32),
    /// The highest VP index leaves some vCPU without an index.
    #[error("highest VP index {max_vp_index} cannot number {vcpus} vCPUs")]
    VpIndexBelowVcpuCount {
        /// vCPU count given.
        vcpus: u32,
        /// Highest VP index given.
        max_vp_index: u32,
    },
    /// A configured frequency is 0 (Linux would calibrate its clocks to 0).
    #[error("configured frequencies must be non-zero (TSC {tsc_hz} Hz, APIC {apic_hz} Hz)")]
    ZeroFrequency {
        /// TSC frequency given.
        tsc_hz: u64,
        /// APIC frequency given.
        apic_hz: u64,
    },
}

/// Builds the Hyper-V CPUID leaves with the hint policy.
///
/// ```
/// use hv_enlightenments::accel::{HostApicAccel, IrqchipMode};
/// use hv_enlightenments::cpuid::{CpuidBuilder, Item};
///
/// let plan = CpuidBuilder::new(8)
///     .irqchip(IrqchipMode::User)
///     .host(HostApicAccel::NONE)
///     .build()
///     .unwrap();
/// assert!(plan.decisions.is_on(Item::ApicAccessRecommended));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidBuilder {
    wanted: Enlightenments,
    vcpus: u32,
    max_vp_index: Option<u32>,
    host: HostApicAccel,
    irqchip: IrqchipMode,
    tsc_stable: bool,
    force_x2apic: bool,
    frequencies: Option<Frequencies>,
    served: Served,
}

impl CpuidBuilder {
    /// A builder for `vcpus` vCPUs numbered 0..vcpus, every enlightenment
    /// wanted, a userspace irqchip, no host APIC virtualization, an
    /// unstable TSC and no configured frequencies.
    pub fn new(vcpus: u32) -> Self {
        Self {
            wanted: Enlightenments::all(),
            vcpus,
            max_vp_index: None,
            host: HostApicAccel::NONE,
            irqchip: IrqchipMode::User,
            tsc_stable: false,
            force_x2apic: false,
            frequencies: None,
            served: Served::empty(),
        }
    }

    /// The enlightenments the VMM serves beyond the defaults (default:
    /// none).
    ///
    /// ```
    /// use hv_enlightenments::cpuid::{CpuidBuilder, FeaturesEdx, Item, Privileges, Served};
    ///
    /// let plain = CpuidBuilder::new(2).build()?;
    /// assert!(!plain.cpuid.privileges.contains(Privileges::SYNTHETIC_TIMERS));
    /// let timers = CpuidBuilder::new(2)
    ///     .serves(Served::SYNTHETIC_TIMERS | Served::STIMER_DIRECT_MODE)
    ///     .build()?;
    /// assert!(timers.cpuid.privileges.contains(Privileges::SYNTHETIC_TIMERS));
    /// assert!(timers.cpuid.features.contains(FeaturesEdx::STIMER_DIRECT_MODE));
    /// assert!(timers.decisions.is_on(Item::StimerDirectMode));
    /// # Ok::<(), hv_enlightenments::cpuid::Error>(())
    /// ```
    pub fn serves(mut self, served: Served) -> Self {
        self.served = served;
        self
    }

    /// The enlightenments wanted.
    pub fn enlightenments(mut self, wanted: Enlightenments) -> Self {
        self.wanted = wanted;
        self
    }

    /// The highest VP index any vCPU will have (default: vCPUs - 1).
    pub fn max_vp_index(mut self, max_vp_index: u32) -> Self {
        self.max_vp_index = Some(max_vp_index);
        self
    }

    /// The host's APIC virtualization, as probed.
    pub fn host(mut self, host: HostApicAccel) -> Self {
        self.host = host;
        self
    }

    /// Where the guest's local APIC is emulated.
    pub fn irqchip(mut self, irqchip: IrqchipMode) -> Self {
        self.irqchip = irqchip;
        self
    }

    /// Whether the host TSC is stable (constant, synchronized across CPUs).
    pub fn tsc_stable(mut self, stable: bool) -> Self {
        self.tsc_stable = stable;
        self
    }

    /// Give the guest x2APIC even at 240 vCPUs or fewer.
    pub fn force_x2apic(mut self, force: bool) -> Self {
        self.force_x2apic = force;
        self
    }

    /// Frequencies for the TSC/APIC frequency MSRs.
    pub fn frequencies(mut self, frequencies: Frequencies) -> Self {
        self.frequencies = Some(frequencies);
        self
    }

    /// Applies the policy.
    ///
    /// ```
    /// use hv_enlightenments::cpuid::{CpuidBuilder, Error, Item};
    ///
    /// // 300 vCPUs: VP indices >= 64 need the Ex hypercalls, IDs > 254 x2APIC.
    /// let plan = CpuidBuilder::new(300).build()?;
    /// assert!(plan.decisions.is_on(Item::ExProcessorMasks));
    /// assert!(plan.x2apic());
    /// assert_eq!(CpuidBuilder::new(0).build(), Err(Error::NoVcpus));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn build(&self) -> Result<CpuidPlan, Error> {
        if self.vcpus == 0 {
            return Err(Error::NoVcpus);
        }
        if self.vcpus > MAX_VCPUS {
            return Err(Error::TooManyVcpus(self.vcpus));
        }
        let max_vp_index = self.max_vp_index.unwrap_or(self.vcpus - 1);
        if max_vp_index > MAX_VP_INDEX {
            return Err(Error::VpIndexTooLarge(max_vp_index));
        }
        if max_vp_index < self.vcpus - 1 {
            return Err(Error::VpIndexBelowVcpuCount {
                vcpus: self.vcpus,
                max_vp_index,
            });
        }

        if let Some(f) = self.frequencies {
            if f.tsc_hz == 0 || f.apic_hz == 0 {
                return Err(Error::ZeroFrequency {
                    tsc_hz: f.tsc_hz,
                    apic_hz: f.apic_hz,
                });
            }
        }

        let decisions = Decisions::new(|item| self.decide(item, max_vp_index));
        let on = |item| decisions.is_on(item);

        // Linux's ms_hyperv_platform() rejects Hyper-V without these two.
        let mut privileges = Privileges::HYPERCALL | Privileges::VP_INDEX;
        let mut features = FeaturesEdx::empty();
        let mut hints = Hints::empty();
        for (item, privilege) in [
            (Item::TimeRefCount, Privileges::TIME_REF_COUNT),
            (Item::ReferenceTsc, Privileges::REFERENCE_TSC),
            (Item::FrequencyMsrs, Privileges::FREQUENCY_MSRS),
            (Item::ApicAccessMsrs, Privileges::APIC_ACCESS),
            (Item::Synic, Privileges::SYNIC),
            (Item::SyntheticTimers, Privileges::SYNTHETIC_TIMERS),
            (Item::TscInvariant, Privileges::TSC_INVARIANT),
            (Item::AccessPartitionId, Privileges::ACCESS_PARTITION_ID),
            (Item::ResetMsr, Privileges::RESET),
            (Item::VpRuntime, Privileges::VP_RUNTIME),
            (Item::PostMessages, Privileges::POST_MESSAGES),
            (Item::SignalEvents, Privileges::SIGNAL_EVENTS),
        ] {
            privileges.set(privilege, on(item));
        }
        features.set(FeaturesEdx::FREQUENCY_MSRS, on(Item::FrequencyMsrs));
        features.set(FeaturesEdx::STIMER_DIRECT_MODE, on(Item::StimerDirectMode));
        features.set(FeaturesEdx::GUEST_CRASH_MSRS, on(Item::CrashMsrs));
        features.set(
            FeaturesEdx::XMM_HYPERCALL_INPUT,
            on(Item::XmmHypercallInput),
        );
        for (item, hint) in [
            (Item::RelaxedTiming, Hints::RELAXED_TIMING),
            (Item::ApicAccessRecommended, Hints::APIC_ACCESS),
            (Item::DeprecatingAeoi, Hints::DEPRECATING_AEOI),
            (Item::RemoteTlbFlush, Hints::REMOTE_TLB_FLUSH),
            (Item::ClusterIpi, Hints::CLUSTER_IPI),
            (Item::ExProcessorMasks, Hints::EX_PROCESSOR_MASKS),
            (Item::X2apic, Hints::X2APIC_MSRS),
        ] {
            hints.set(hint, on(item));
        }

        // Room for every VP index in use, and at least the vCPU count.
        let max_vps = max_vp_index.saturating_add(1).max(self.vcpus);
        let cpuid = HvCpuid {
            max_leaf: LEAF_MAX,
            vendor: VENDOR_MICROSOFT_HV,
            interface: INTERFACE_HV1,
            version: HvVersion::KVM,
            privileges,
            power_management: 0,
            features,
            hints,
            spinlock_retries: SPINLOCK_RETRIES_NEVER,
            physical_address_bits: 0,
            limits: Limits {
                max_vps,
                max_lps: max_vps,
                max_interrupt_vectors: 0,
            },
            hardware: HardwareFeatures::empty(),
            nested: NestedFeatures::empty(),
        };
        Ok(CpuidPlan {
            cpuid,
            decisions,
            frequencies: if on(Item::FrequencyMsrs) {
                self.frequencies
            } else {
                None
            },
        })
    }

    fn decide(&self, item: Item, max_vp_index: u32) -> (bool, &'static str) {
        const NOT_WANTED: (bool, &str) = (false, "not requested");
        let wants = |e| self.wanted.contains(e);
        let serves = |s| self.served.contains(s);
        let synic = self.wanted.contains(Enlightenments::SYNIC);
        let user_apic = self.irqchip == IrqchipMode::User;
        let hw_apic_virt = self.host.apic_virtualization_active(self.irqchip);
        match item {
            Item::Vendor => (
                true,
                "Linux takes the Hyper-V path only for \"Microsoft Hv\" with max leaf >= 0x40000005",
            ),
            Item::Interface => (true, "TLFS interface signature the guest checks"),
            Item::HypercallAndVpIndex => (
                true,
                "always: Linux ignores Hyper-V unless both are granted (ms_hyperv_platform)",
            ),
            Item::AccessPartitionId => (
                false,
                "never: Linux BUG()s when HvCallGetPartitionId then fails",
            ),
            Item::TimeRefCount if wants(Enlightenments::TIME_REF_COUNT) => {
                (true, "100 ns partition counter from the VMM's clock")
            }
            Item::ReferenceTsc | Item::TscInvariant => {
                let e = if item == Item::ReferenceTsc {
                    Enlightenments::REFERENCE_TSC
                } else {
                    Enlightenments::TSC_INVARIANT
                };
                match (wants(e), self.tsc_stable, item) {
                    (false, _, _) => NOT_WANTED,
                    (true, true, Item::ReferenceTsc) => {
                        (true, "TSC stable: the page's scale/offset stay valid")
                    }
                    (true, true, _) => (
                        true,
                        "TSC stable: the guest may treat it as invariant (Linux: TSC_RELIABLE)",
                    ),
                    (true, false, Item::ReferenceTsc) => (
                        false,
                        "TSC not stable: the page's scale/offset could not stay valid",
                    ),
                    (true, false, _) => (
                        false,
                        "TSC not stable: the guest must not treat it as invariant",
                    ),
                }
            }
            Item::FrequencyMsrs => {
                match (wants(Enlightenments::FREQUENCY_MSRS), self.frequencies) {
                    (false, _) => NOT_WANTED,
                    (true, Some(_)) => {
                        (true, "frequencies configured: the guest skips calibration")
                    }
                    (true, None) => (false, "no frequencies configured"),
                }
            }
            Item::ApicAccessMsrs if wants(Enlightenments::APIC_ACCESS) => (
                true,
                "synthetic EOI/ICR/TPR and VP assist page served by the VMM",
            ),
            Item::Synic if wants(Enlightenments::SYNIC) => (
                true,
                "SynIC MSRs kept; AutoEOI use is reported for the APICv inhibit",
            ),
            Item::SyntheticTimers => {
                if !serves(Served::SYNTHETIC_TIMERS) {
                    (false, "not served (CpuidBuilder::serves)")
                } else if !synic {
                    (
                        false,
                        "needs the SynIC: expiries are SynIC messages (KVM: #GP without it)",
                    )
                } else {
                    (
                        true,
                        "served: the VMM runs the timers on reference time (synic::process_stimers)",
                    )
                }
            }
            Item::StimerDirectMode => {
                if !serves(Served::STIMER_DIRECT_MODE) {
                    (false, "not served (CpuidBuilder::serves)")
                } else if !self.decide(Item::SyntheticTimers, max_vp_index).0 {
                    (false, "synthetic timers not published")
                } else {
                    (
                        true,
                        "expiry raises the timer's own vector: no message page round trip",
                    )
                }
            }
            Item::CrashMsrs if serves(Served::CRASH_MSRS) => (
                true,
                "guest panics reported through CRASH_P0-P4 and CRASH_CTL (Linux hyperv_report_panic)",
            ),
            Item::ResetMsr if serves(Served::RESET) => {
                (true, "a RESET write of 1 asks the VMM for a system reset")
            }
            Item::VpRuntime if serves(Served::VP_RUNTIME) => {
                (true, "VP run time in 100 ns units from the VMM")
            }
            Item::PostMessages | Item::SignalEvents => {
                let flag = if item == Item::PostMessages {
                    Served::POST_MESSAGES
                } else {
                    Served::SIGNAL_EVENTS
                };
                if !serves(flag) {
                    (false, "not served (CpuidBuilder::serves)")
                } else if !synic {
                    (false, "needs the SynIC (KVM refuses the call without it)")
                } else {
                    (true, "routed through the VMM's connection table")
                }
            }
            Item::CrashMsrs | Item::ResetMsr | Item::VpRuntime => {
                (false, "not served (CpuidBuilder::serves)")
            }
            Item::XmmHypercallInput if wants(Enlightenments::XMM_HYPERCALL_INPUT) => (
                true,
                "fast hypercalls may carry input in XMM0-5 (the decoder reads them)",
            ),
            Item::RelaxedTiming if wants(Enlightenments::RELAXED_TIMING) => (
                true,
                "vCPUs are host threads and may be descheduled: no interrupt watchdogs",
            ),
            Item::ApicAccessRecommended => {
                if !wants(Enlightenments::APIC_ACCESS) {
                    (false, "APIC access MSRs not published")
                } else if user_apic {
                    (
                        true,
                        "APIC accesses exit to userspace: synthetic EOI + lazy EOI saves an exit per interrupt",
                    )
                } else if hw_apic_virt == Some(true) {
                    (
                        false,
                        "APICv/AVIC serves architectural APIC accesses without an exit; the synthetic EOI/TPR MSRs work only in x2APIC mode (xAPIC: #GP)",
                    )
                } else {
                    (
                        false,
                        "in-kernel LAPIC serves APIC accesses without a userspace exit; the synthetic EOI/TPR MSRs work only in x2APIC mode (xAPIC: #GP, no lossless way to change an xAPIC-mode in-kernel APIC from userspace)",
                    )
                }
            }
            Item::DeprecatingAeoi => match (user_apic, hw_apic_virt) {
                (true, _) => (
                    false,
                    "userspace APIC: no APICv/AVIC that AutoEOI could inhibit",
                ),
                (false, Some(true)) => (
                    true,
                    "APICv/AVIC active: AutoEOI would inhibit it for the whole VM",
                ),
                (false, None) => (
                    true,
                    "host APIC virtualization unknown: assume active so AutoEOI cannot inhibit it",
                ),
                // KVM's LAPIC acknowledges a SINT vector without ISR only
                // with KVM's own Hyper-V (`auto_eoi_bitmap`), which a
                // userspace SynIC does not have.
                (false, Some(false)) => (
                    true,
                    "KVM's LAPIC cannot skip the ISR for a userspace SynIC: the guest must EOI SINT vectors",
                ),
            },
            Item::RemoteTlbFlush if wants(Enlightenments::PV_TLB_FLUSH) => (
                true,
                if user_apic {
                    "flush hypercall: running targets kicked, halted ones flushed at next entry"
                } else {
                    "flush hypercall: targets kicked, halted ones too (they halt inside the kernel)"
                },
            ),
            Item::ClusterIpi if wants(Enlightenments::PV_IPI) => (
                true,
                "IPI hypercall: one exit per multicast IPI instead of one per target",
            ),
            Item::ExProcessorMasks => {
                if !wants(Enlightenments::PV_TLB_FLUSH) && !wants(Enlightenments::PV_IPI) {
                    (false, "no flush/IPI hypercalls published")
                } else if max_vp_index >= FIRST_VP_INDEX_NEEDING_EX {
                    (
                        true,
                        "a VP index is >= 64: the 64-bit masks of the non-Ex forms cannot name it",
                    )
                } else {
                    // KVM refuses the Ex forms without the hint
                    // (`hv_check_hypercall_access`); Linux still picks the
                    // non-Ex forms while every VP index fits their masks.
                    (
                        true,
                        "every VP index < 64: guests use the non-Ex forms, the Ex forms stay allowed (as QEMU's hv-ipi/hv-tlbflush publish them)",
                    )
                }
            }
            Item::X2apic => {
                if self.vcpus > X2APIC_VCPU_THRESHOLD {
                    (
                        true,
                        "more than 240 vCPUs: APIC IDs above 254 need x2APIC (and x2APIC MADT entries)",
                    )
                } else if self.force_x2apic {
                    (true, "requested")
                } else {
                    (false, "240 vCPUs or fewer: xAPIC IDs suffice")
                }
            }
            Item::SpinlockRetries => (
                true,
                "0xFFFFFFFF: never notify, no NotifyLongSpinWait exits",
            ),
            Item::MaxVps => (true, "highest VP index + 1, at least the vCPU count"),
            Item::TimeRefCount
            | Item::ApicAccessMsrs
            | Item::Synic
            | Item::XmmHypercallInput
            | Item::RelaxedTiming
            | Item::RemoteTlbFlush
            | Item::ClusterIpi => NOT_WANTED,
        }
    }
}

/// What the policy produced: the leaves, the reasons, and the values the
/// synthetic MSRs need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidPlan {
    /// The leaves to publish.
    pub cpuid: HvCpuid,
    /// Every decision with its reason.
    pub decisions: Decisions,
    /// Frequencies for the frequency MSRs, when published.
    pub frequencies: Option<Frequencies>,
}

impl CpuidPlan {
    /// The privilege mask the MSR handlers enforce.
    pub fn privileges(&self) -> Privileges {
        self.cpuid.privilege_mask()
    }

    /// Whether the guest should get x2APIC (architectural CPUID.1:ECX bit
    /// 21 and x2APIC MADT entries are the VMM's to publish).
    pub fn x2apic(&self) -> bool {
        self.decisions.is_on(Item::X2apic)
    }

    /// Whether the guest is told to use synthetic EOI, so the VMM should
    /// offer lazy EOI through the VP assist page.
    pub fn lazy_eoi(&self) -> bool {
        self.decisions.is_on(Item::ApicAccessRecommended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accel::CpuVendor;

    fn apicv_host() -> HostApicAccel {
        HostApicAccel {
            vendor: CpuVendor::Intel,
            apicv: Some(true),
            ..HostApicAccel::NONE
        }
    }

    fn build(b: CpuidBuilder) -> CpuidPlan {
        match b.build() {
            Ok(p) => p,
            Err(e) => panic!("policy refused valid input: {e}"),
        }
    }

    #[test]
    fn always_microsoft_hv_hv1_and_privileges_5_6() {
        for b in [
            CpuidBuilder::new(1),
            CpuidBuilder::new(300).irqchip(IrqchipMode::Kernel),
            CpuidBuilder::new(4).enlightenments(Enlightenments::empty()),
        ] {
            let p = build(b);
            let e = p.cpuid.entries();
            assert_eq!(p.cpuid.vendor, *b"Microsoft Hv");
            assert_eq!(e[1].eax, 0x3123_7648);
            assert_ne!(e[3].eax & (1 << 5), 0);
            assert_ne!(e[3].eax & (1 << 6), 0);
            assert!(e[0].eax >= 0x4000_0005);
        }
    }

    #[test]
    fn never_access_partition_id() {
        let p = build(CpuidBuilder::new(8));
        assert_eq!(p.cpuid.entries()[3].ebx & (1 << 1), 0);
        assert!(!p.decisions.is_on(Item::AccessPartitionId));
    }

    #[test]
    fn apic_access_recommended_only_with_user_irqchip() {
        let user = build(CpuidBuilder::new(8).irqchip(IrqchipMode::User));
        assert!(user.cpuid.hints.contains(Hints::APIC_ACCESS));
        assert!(user.lazy_eoi());
        for host in [HostApicAccel::NONE, apicv_host()] {
            let kernel = build(CpuidBuilder::new(8).irqchip(IrqchipMode::Kernel).host(host));
            assert!(!kernel.cpuid.hints.contains(Hints::APIC_ACCESS));
            // The MSRs stay available; only the recommendation goes.
            assert!(kernel.cpuid.privileges.contains(Privileges::APIC_ACCESS));
        }
        let no_msrs = build(
            CpuidBuilder::new(8)
                .enlightenments(Enlightenments::all() - Enlightenments::APIC_ACCESS),
        );
        assert!(!no_msrs.cpuid.hints.contains(Hints::APIC_ACCESS));
    }

    #[test]
    fn deprecating_aeoi_with_any_in_kernel_lapic() {
        let k = |host| build(CpuidBuilder::new(8).irqchip(IrqchipMode::Kernel).host(host));
        assert!(
            k(apicv_host())
                .cpuid
                .hints
                .contains(Hints::DEPRECATING_AEOI)
        );
        // Without APICv too: KVM's LAPIC cannot auto-EOI for a userspace
        // SynIC.
        assert!(
            k(HostApicAccel::NONE)
                .cpuid
                .hints
                .contains(Hints::DEPRECATING_AEOI)
        );
        let unknown = HostApicAccel {
            apicv: None,
            ..apicv_host()
        };
        assert!(k(unknown).cpuid.hints.contains(Hints::DEPRECATING_AEOI));
        // APICv needs an in-kernel LAPIC: with a userspace one it is inhibited.
        let user = build(CpuidBuilder::new(8).host(apicv_host()));
        assert!(!user.cpuid.hints.contains(Hints::DEPRECATING_AEOI));
    }

    #[test]
    fn x2apic_above_240_vcpus_or_on_request() {
        assert!(!build(CpuidBuilder::new(X2APIC_VCPU_THRESHOLD)).x2apic());
        let above = build(CpuidBuilder::new(X2APIC_VCPU_THRESHOLD + 1));
        assert!(above.x2apic());
        assert!(above.cpuid.hints.contains(Hints::X2APIC_MSRS));
        assert!(build(CpuidBuilder::new(2).force_x2apic(true)).x2apic());
    }

    #[test]
    fn ex_processor_masks_with_the_pv_calls() {
        // At any size: KVM refuses the Ex forms without the hint.
        assert!(
            build(CpuidBuilder::new(2))
                .cpuid
                .hints
                .contains(Hints::EX_PROCESSOR_MASKS)
        );
        let no_pv = CpuidBuilder::new(2).enlightenments(
            Enlightenments::all() - Enlightenments::PV_TLB_FLUSH - Enlightenments::PV_IPI,
        );
        assert!(!build(no_pv).cpuid.hints.contains(Hints::EX_PROCESSOR_MASKS));
        assert!(
            build(CpuidBuilder::new(65))
                .cpuid
                .hints
                .contains(Hints::EX_PROCESSOR_MASKS)
        );
        let sparse = build(CpuidBuilder::new(2).max_vp_index(64));
        assert!(sparse.cpuid.hints.contains(Hints::EX_PROCESSOR_MASKS));
        assert_eq!(sparse.cpuid.limits.max_vps, 65);
    }

    #[test]
    fn flush_and_ipi_hints_follow_wanted() {
        let all = build(CpuidBuilder::new(4));
        assert!(
            all.cpuid
                .hints
                .contains(Hints::REMOTE_TLB_FLUSH | Hints::CLUSTER_IPI)
        );
        let none = build(CpuidBuilder::new(100).enlightenments(
            Enlightenments::all() - Enlightenments::PV_IPI - Enlightenments::PV_TLB_FLUSH,
        ));
        assert!(
            !none.cpuid.hints.intersects(
                Hints::REMOTE_TLB_FLUSH | Hints::CLUSTER_IPI | Hints::EX_PROCESSOR_MASKS
            )
        );
    }

    #[test]
    fn tsc_invariant_and_reference_tsc_need_a_stable_tsc() {
        let unstable = build(CpuidBuilder::new(4));
        assert!(
            !unstable
                .cpuid
                .privileges
                .intersects(Privileges::TSC_INVARIANT | Privileges::REFERENCE_TSC)
        );
        let stable = build(CpuidBuilder::new(4).tsc_stable(true));
        assert!(
            stable
                .cpuid
                .privileges
                .contains(Privileges::TSC_INVARIANT | Privileges::REFERENCE_TSC)
        );
    }

    #[test]
    fn frequency_msrs_need_configured_values() {
        let none = build(CpuidBuilder::new(1));
        assert!(!none.cpuid.features.contains(FeaturesEdx::FREQUENCY_MSRS));
        assert!(none.frequencies.is_none());
        let f = Frequencies {
            tsc_hz: 2_000_000_000,
            apic_hz: 1_000_000_000,
        };
        let some = build(CpuidBuilder::new(1).frequencies(f));
        assert!(some.cpuid.features.contains(FeaturesEdx::FREQUENCY_MSRS));
        assert!(some.privileges().contains(Privileges::FREQUENCY_MSRS));
        assert_eq!(some.frequencies, Some(f));
        let zero = Frequencies { tsc_hz: 0, ..f };
        assert_eq!(
            CpuidBuilder::new(1).frequencies(zero).build().err(),
            Some(Error::ZeroFrequency {
                tsc_hz: 0,
                apic_hz: f.apic_hz
            })
        );
        let zero_apic = Frequencies { apic_hz: 0, ..f };
        assert!(CpuidBuilder::new(1).frequencies(zero_apic).build().is_err());
    }

    #[test]
    fn spinlock_retries_never_and_max_vps() {
        let p = build(CpuidBuilder::new(300));
        let e = p.cpuid.entries();
        assert_eq!(e[4].ebx, 0xFFFF_FFFF);
        assert_eq!(e[5].eax, 300);
    }

    #[test]
    fn every_item_has_one_decision_with_a_reason() {
        let p = build(CpuidBuilder::new(8));
        assert_eq!(p.decisions.iter().count(), Item::ALL.len());
        for (d, item) in p.decisions.iter().zip(Item::ALL) {
            assert_eq!(d.item, item);
            assert!(!d.reason.is_empty());
        }
    }

    #[test]
    fn bounds_are_enforced_one_past_each() {
        assert_eq!(CpuidBuilder::new(0).build().err(), Some(Error::NoVcpus));
        assert!(CpuidBuilder::new(MAX_VCPUS).build().is_ok());
        assert_eq!(
            CpuidBuilder::new(MAX_VCPUS + 1).build().err(),
            Some(Error::TooManyVcpus(MAX_VCPUS + 1))
        );
        assert!(
            CpuidBuilder::new(1)
                .max_vp_index(MAX_VP_INDEX)
                .build()
                .is_ok()
        );
        assert_eq!(
            CpuidBuilder::new(1)
                .max_vp_index(MAX_VP_INDEX + 1)
                .build()
                .err(),
            Some(Error::VpIndexTooLarge(MAX_VP_INDEX + 1))
        );
        assert_eq!(
            CpuidBuilder::new(8).max_vp_index(6).build().err(),
            Some(Error::VpIndexBelowVcpuCount {
                vcpus: 8,
                max_vp_index: 6
            })
        );
    }
}
