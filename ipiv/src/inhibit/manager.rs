//! The per-VM inhibit state: per-vCPU events in, a set of active reasons
//! out, with KVM's rules for when each reason is set and cleared.

use std::collections::BTreeMap;

use hv_enlightenments::accel::{CpuVendor, HostApicAccel, IrqchipMode};

use super::deferred::{InhibitRequests, Queued, RequestTicket, SafePoint};
use super::event::InhibitEvent;
use super::reason::{InhibitReason, InhibitSet};

/// Number of SynIC SINTs (TLFS: SINT0..SINT15, MSRs 0x40000090..0x4000009F).
pub const SINT_COUNT: u8 = 16;
/// SINTx bits 7:0: the vector.
pub const SINT_VECTOR_MASK: u64 = 0xff;
/// SINTx bit 16: masked.
pub const SINT_MASKED: u64 = 1 << 16;
/// SINTx bit 17: AutoEOI.
pub const SINT_AUTO_EOI: u64 = 1 << 17;
/// Lowest vector a SINT may use (KVM's `HV_SYNIC_FIRST_VALID_VECTOR`).
pub const SINT_FIRST_VALID_VECTOR: u64 = 16;

/// Highest APIC ID AVIC can address: its physical ID table index limit
/// (KVM `AVIC_MAX_PHYSICAL_ID`, 0xFE: 0xFF is the xAPIC broadcast).
pub const AVIC_MAX_PHYSICAL_ID: u32 = 0xfe;
/// Highest APIC ID x2AVIC can address (KVM `X2AVIC_MAX_PHYSICAL_ID`).
pub const X2AVIC_MAX_PHYSICAL_ID: u32 = 0x1ff;

/// VM-wide configuration the inhibit state starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InhibitConfig {
    /// What the host offers (the probe's result).
    pub host: HostApicAccel,
    /// Where the local APIC is emulated.
    pub irqchip: IrqchipMode,
    /// The in-kernel PIT re-injects missed ticks (`KVM_PIT_SPEC_REINJECT`).
    pub pit_reinject: bool,
    /// The VM is an SEV guest.
    pub sev: bool,
}

impl Default for InhibitConfig {
    /// A host with no APIC virtualization and a userspace irqchip: the
    /// reference VMM's default on a host like the development machine.
    fn default() -> Self {
        Self {
            host: HostApicAccel::NONE,
            irqchip: IrqchipMode::User,
            pit_reinject: false,
            sev: false,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct VcpuInhibits {
    apic_id: Option<u32>,
    /// Bit n: SINTn is unmasked with AutoEOI and a valid vector.
    auto_eoi_sints: u16,
    x2apic: bool,
    nested: bool,
    irq_window: bool,
    block_irq: bool,
}

/// What one [`InhibitManager::apply_pending`] changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InhibitUpdate {
    /// Effective reasons before.
    pub before: InhibitSet,
    /// Effective reasons after.
    pub after: InhibitSet,
    /// Requests applied by this call.
    pub applied: usize,
    /// Last ticket applied so far.
    pub through: Option<RequestTicket>,
}

impl InhibitUpdate {
    /// Whether the effective reasons changed.
    pub fn changed(&self) -> bool {
        self.before != self.after
    }

    /// Whether APICv/AVIC went from inhibited to allowed or back.
    pub fn activation_changed(&self) -> bool {
        self.before.is_empty() != self.after.is_empty()
    }
}

/// Per-VM APICv/AVIC inhibit state.
#[derive(Debug)]
pub struct InhibitManager {
    config: InhibitConfig,
    vcpus: BTreeMap<u32, VcpuInhibits>,
    raw: InhibitSet,
    applied_through: Option<RequestTicket>,
    scratch: Vec<Queued>,
    counts: Counts,
}

/// Number of vCPUs with each count-based input set.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    auto_eoi: isize,
    nested: isize,
    irq_window: isize,
    block_irq: isize,
    too_big: isize,
}

/// +1 when a flag goes up, -1 when it goes down.
fn delta(old: bool, new: bool) -> isize {
    isize::from(new) - isize::from(old)
}

impl InhibitManager {
    /// The state of a VM with no vCPU yet: the configuration's reasons
    /// (DISABLED, ABSENT, PIT_REINJ, SEV) only.
    ///
    /// ```
    /// use ipiv::{InhibitConfig, InhibitManager, InhibitReason};
    ///
    /// // No APIC virtualization on the host, userspace irqchip.
    /// let manager = InhibitManager::new(InhibitConfig::default());
    /// assert!(!manager.apicv_allowed());
    /// assert!(manager.active().contains(InhibitReason::Absent));
    /// ```
    pub fn new(config: InhibitConfig) -> Self {
        let mut raw = InhibitSet::EMPTY;
        raw.set(
            InhibitReason::Disabled,
            config.host.hardware_apic_virtualization() != Some(true),
        );
        raw.set(InhibitReason::Absent, config.irqchip == IrqchipMode::User);
        raw.set(InhibitReason::PitReinj, config.pit_reinject);
        raw.set(InhibitReason::Sev, config.sev);
        Self {
            config,
            vcpus: BTreeMap::new(),
            raw,
            applied_through: None,
            scratch: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &InhibitConfig {
        &self.config
    }

    /// Every reason currently set, whether the host's vendor honours it
    /// or not.
    pub fn raw(&self) -> InhibitSet {
        self.raw
    }

    /// The reasons that inhibit APICv/AVIC on this host: [`raw`](Self::raw)
    /// restricted to the ones the vendor honours.
    pub fn active(&self) -> InhibitSet {
        self.raw
            .intersection(InhibitSet::honoured_by(self.config.host.vendor))
    }

    /// Whether APICv/AVIC may be active (no effective reason).
    pub fn apicv_allowed(&self) -> bool {
        self.active().is_empty()
    }

    /// Number of vCPUs with at least one AutoEOI SINT.
    pub fn auto_eoi_vcpus(&self) -> usize {
        usize::try_from(self.counts.auto_eoi).unwrap_or(0)
    }

    /// The last request ticket applied, if any.
    pub fn applied_through(&self) -> Option<RequestTicket> {
        self.applied_through
    }

    /// Whether the request with `ticket` has been applied.
    pub fn is_applied(&self, ticket: RequestTicket) -> bool {
        self.applied_through.is_some_and(|t| t >= ticket)
    }

    /// The highest APIC ID AVIC can address on this host.
    pub fn physical_id_limit(&self) -> u32 {
        if self.config.host.x2avic() == Some(true) {
            X2AVIC_MAX_PHYSICAL_ID
        } else {
            AVIC_MAX_PHYSICAL_ID
        }
    }

    /// Applies every queued request in order. Needs a [`SafePoint`]: the
    /// caller holds no guest-memory read-side guard (see
    /// [`deferred`](super::deferred)).
    pub fn apply_pending(
        &mut self,
        requests: &InhibitRequests,
        _at: &SafePoint<'_>,
    ) -> InhibitUpdate {
        let before = self.active();
        let mut batch = std::mem::take(&mut self.scratch);
        requests.drain_into(&mut batch);
        for queued in &batch {
            self.apply_event(queued.vcpu, queued.event);
            self.applied_through = Some(queued.ticket);
        }
        let applied = batch.len();
        batch.clear();
        self.scratch = batch;
        InhibitUpdate {
            before,
            after: self.active(),
            applied,
            through: self.applied_through,
        }
    }

    fn apply_event(&mut self, vcpu: u32, event: InhibitEvent) {
        // VM-wide and sticky reasons first: they need no per-vCPU state.
        match event {
            InhibitEvent::ApicIdModified => {
                return self.raw.set(InhibitReason::ApicIdModified, true);
            }
            InhibitEvent::ApicBaseModified => {
                return self.raw.set(InhibitReason::ApicBaseModified, true);
            }
            InhibitEvent::PhysicalIdAliased(on) => {
                return self.raw.set(InhibitReason::PhysicalIdAliased, on);
            }
            InhibitEvent::LogicalIdAliased(on) => {
                return self.raw.set(InhibitReason::LogicalIdAliased, on);
            }
            _ => {}
        }
        let limit = self.physical_id_limit();
        let state = self.vcpus.entry(vcpu).or_default();
        let old = *state;
        match event {
            InhibitEvent::ApicId(id) => state.apic_id = Some(id),
            // SINT indices above 15 do not exist; `request` callers map
            // MSRs 0x40000090..=0x4000009F to 0..=15.
            InhibitEvent::SintWrite { sint, value } if sint < SINT_COUNT => {
                // KVM `synic_update_vector`: a masked SINT has no vector;
                // vectors below 16 are ignored.
                let uses = value & SINT_MASKED == 0
                    && value & SINT_AUTO_EOI != 0
                    && value & SINT_VECTOR_MASK >= SINT_FIRST_VALID_VECTOR;
                let bit = 1u16 << sint;
                if uses {
                    state.auto_eoi_sints |= bit;
                } else {
                    state.auto_eoi_sints &= !bit;
                }
            }
            InhibitEvent::X2apic(on) => state.x2apic = on,
            InhibitEvent::NestedGuest(on) => state.nested = on,
            InhibitEvent::ExtIntWindow(on) => state.irq_window = on,
            InhibitEvent::GuestDebugBlockIrq(on) => state.block_irq = on,
            _ => {}
        }
        let new = *state;
        let too_big = |v: &VcpuInhibits| v.apic_id.is_some_and(|id| id > limit);
        // Per-vCPU flags feed VM-wide counts; a reason follows its count's
        // 0 <-> non-0 transitions (KVM: `synic_auto_eoi_used`,
        // `kvm_inc_or_dec_irq_window_inhibit`).
        self.counts.auto_eoi += delta(old.auto_eoi_sints != 0, new.auto_eoi_sints != 0);
        self.counts.nested += delta(old.nested, new.nested);
        self.counts.irq_window += delta(old.irq_window, new.irq_window);
        self.counts.block_irq += delta(old.block_irq, new.block_irq);
        self.counts.too_big += delta(too_big(&old), too_big(&new));
        self.raw
            .set(InhibitReason::Hyperv, self.counts.auto_eoi != 0);
        self.raw.set(InhibitReason::Nested, self.counts.nested != 0);
        self.raw
            .set(InhibitReason::IrqWin, self.counts.irq_window != 0);
        self.raw
            .set(InhibitReason::BlockIrq, self.counts.block_irq != 0);
        self.raw
            .set(InhibitReason::PhysicalIdTooBig, self.counts.too_big != 0);
    }

    pub(crate) fn count(&self, f: impl Fn(&VcpuInhibitsView) -> bool) -> usize {
        self.vcpus
            .values()
            .filter(|v| f(&VcpuInhibitsView::from(**v)))
            .count()
    }

    pub(crate) fn max_apic_id(&self) -> Option<u32> {
        self.vcpus.values().filter_map(|v| v.apic_id).max()
    }

    pub(crate) fn vendor(&self) -> CpuVendor {
        self.config.host.vendor
    }
}

/// Read-only view of one vCPU's inhibit inputs, for the explanations.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VcpuInhibitsView {
    pub(crate) x2apic: bool,
    pub(crate) nested: bool,
    pub(crate) irq_window: bool,
    pub(crate) block_irq: bool,
}

impl From<VcpuInhibits> for VcpuInhibitsView {
    fn from(v: VcpuInhibits) -> Self {
        Self {
            x2apic: v.x2apic,
            nested: v.nested,
            irq_window: v.irq_window,
            block_irq: v.block_irq,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::inhibit::deferred::VcpuGate;
    use InhibitEvent as E;
    use InhibitReason as R;

    fn amd_avic(x2avic: bool) -> HostApicAccel {
        HostApicAccel {
            vendor: CpuVendor::Amd,
            apicv: Some(false),
            ipiv: Some(false),
            avic: Some(true),
            force_avic: Some(false),
            cpu_avic: Some(true),
            cpu_x2avic: Some(x2avic),
        }
    }

    fn kernel(host: HostApicAccel) -> InhibitConfig {
        InhibitConfig {
            host,
            irqchip: IrqchipMode::Kernel,
            pit_reinject: false,
            sev: false,
        }
    }

    /// Applies `events` one at a time and returns the active set after each.
    fn run(config: InhibitConfig, events: &[(u32, InhibitEvent)]) -> Vec<InhibitSet> {
        let mut gate = VcpuGate::for_this_thread().unwrap();
        let q = InhibitRequests::new();
        let mut m = InhibitManager::new(config);
        events
            .iter()
            .map(|&(vcpu, event)| {
                q.request(vcpu, event);
                m.apply_pending(&q, &gate.safe_point());
                m.active()
            })
            .collect()
    }

    /// (configuration, events in order, active set after each event)
    type Case = (InhibitConfig, Vec<(u32, InhibitEvent)>, Vec<InhibitSet>);

    const AUTO_EOI_40: u64 = SINT_AUTO_EOI | 0x40;

    #[test]
    fn rule_table() {
        let none = InhibitSet::EMPTY;
        let only = |r: R| InhibitSet::of(&[r]);
        // (config, events, expected active set after each event)
        let cases: Vec<Case> = vec![
            // AutoEOI: the count of vCPUs with an AutoEOI SINT, 0 <-> non-0.
            (
                kernel(amd_avic(true)),
                vec![
                    (
                        0,
                        E::SintWrite {
                            sint: 2,
                            value: 0x40,
                        },
                    ),
                    (
                        0,
                        E::SintWrite {
                            sint: 2,
                            value: AUTO_EOI_40,
                        },
                    ),
                    (
                        1,
                        E::SintWrite {
                            sint: 5,
                            value: AUTO_EOI_40,
                        },
                    ),
                    (
                        0,
                        E::SintWrite {
                            sint: 3,
                            value: AUTO_EOI_40,
                        },
                    ),
                    (
                        0,
                        E::SintWrite {
                            sint: 2,
                            value: SINT_MASKED | AUTO_EOI_40,
                        },
                    ),
                    (
                        0,
                        E::SintWrite {
                            sint: 3,
                            value: 0x41,
                        },
                    ),
                    (
                        1,
                        E::SintWrite {
                            sint: 5,
                            value: SINT_AUTO_EOI | 0x0f,
                        },
                    ),
                ],
                vec![
                    none,
                    only(R::Hyperv),
                    only(R::Hyperv),
                    only(R::Hyperv),
                    only(R::Hyperv),
                    only(R::Hyperv),
                    none,
                ],
            ),
            // x2APIC inhibits nothing; IDs: > 254 without x2AVIC, > 511 with.
            (
                kernel(amd_avic(false)),
                vec![
                    (0, E::X2apic(true)),
                    (1, E::ApicId(254)),
                    (2, E::ApicId(255)),
                    (2, E::ApicId(3)),
                ],
                vec![none, none, only(R::PhysicalIdTooBig), none],
            ),
            (
                kernel(amd_avic(true)),
                vec![(1, E::ApicId(511)), (2, E::ApicId(512))],
                vec![none, only(R::PhysicalIdTooBig)],
            ),
            // NESTED and IRQWIN while any vCPU is in that state.
            (
                kernel(amd_avic(true)),
                vec![
                    (0, E::NestedGuest(true)),
                    (1, E::NestedGuest(true)),
                    (0, E::NestedGuest(false)),
                    (1, E::ExtIntWindow(true)),
                    (1, E::NestedGuest(false)),
                    (1, E::ExtIntWindow(false)),
                ],
                vec![
                    only(R::Nested),
                    only(R::Nested),
                    only(R::Nested),
                    InhibitSet::of(&[R::Nested, R::IrqWin]),
                    only(R::IrqWin),
                    none,
                ],
            ),
            // Sticky reasons stay; aliasing and BLOCKIRQ follow their events.
            (
                kernel(amd_avic(true)),
                vec![
                    (0, E::ApicIdModified),
                    (1, E::ApicBaseModified),
                    (0, E::PhysicalIdAliased(true)),
                    (0, E::PhysicalIdAliased(false)),
                    (0, E::GuestDebugBlockIrq(true)),
                    (0, E::GuestDebugBlockIrq(false)),
                ],
                vec![
                    only(R::ApicIdModified),
                    InhibitSet::of(&[R::ApicIdModified, R::ApicBaseModified]),
                    InhibitSet::of(&[R::ApicIdModified, R::ApicBaseModified, R::PhysicalIdAliased]),
                    InhibitSet::of(&[R::ApicIdModified, R::ApicBaseModified]),
                    InhibitSet::of(&[R::ApicIdModified, R::ApicBaseModified, R::BlockIrq]),
                    InhibitSet::of(&[R::ApicIdModified, R::ApicBaseModified]),
                ],
            ),
        ];
        for (i, (config, events, expected)) in cases.into_iter().enumerate() {
            assert_eq!(run(config, &events), expected, "case {i}");
        }
    }

    #[test]
    fn disabled_explanation_follows_the_probe() {
        let lift = |host: HostApicAccel| {
            let report = InhibitManager::new(kernel(host)).explain();
            assert_eq!(report.reasons.len(), 1);
            assert_eq!(report.reasons[0].reason, R::Disabled);
            report.reasons[0].lift.clone()
        };
        assert!(lift(HostApicAccel::NONE).contains("kvm_intel (APICv) or kvm_amd (AVIC)"));
        let mut no_cpu = amd_avic(false);
        no_cpu.avic = Some(false);
        no_cpu.cpu_avic = Some(false);
        assert!(lift(no_cpu).contains("CPU has AVIC"));
        let mut off = amd_avic(false);
        off.avic = Some(false);
        assert!(lift(off).contains("avic=1"));
        let mut intel = HostApicAccel::NONE;
        intel.vendor = CpuVendor::Intel;
        assert!(lift(intel).contains("enable_apicv=1"));
        intel.apicv = None;
        assert!(lift(intel).contains("check kvm_intel.enable_apicv"));
    }

    #[test]
    fn sint_index_past_15_is_ignored() {
        let got = run(
            kernel(amd_avic(true)),
            &[
                (
                    0,
                    E::SintWrite {
                        sint: SINT_COUNT,
                        value: AUTO_EOI_40,
                    },
                ),
                (
                    0,
                    E::SintWrite {
                        sint: SINT_COUNT - 1,
                        value: AUTO_EOI_40,
                    },
                ),
            ],
        );
        assert_eq!(got, vec![InhibitSet::EMPTY, InhibitSet::of(&[R::Hyperv])]);
    }

    #[test]
    fn vmx_ignores_avic_only_reasons() {
        let mut host = HostApicAccel::NONE;
        host.vendor = CpuVendor::Intel;
        host.apicv = Some(true);
        let got = run(
            kernel(host),
            &[
                (0, E::NestedGuest(true)),
                (0, E::ApicId(4000)),
                (
                    0,
                    E::SintWrite {
                        sint: 0,
                        value: AUTO_EOI_40,
                    },
                ),
            ],
        );
        assert_eq!(
            got,
            vec![
                InhibitSet::EMPTY,
                InhibitSet::EMPTY,
                InhibitSet::of(&[R::Hyperv])
            ]
        );
    }

    #[test]
    fn configuration_reasons() {
        let m = InhibitManager::new(InhibitConfig::default());
        assert_eq!(m.active(), InhibitSet::of(&[R::Disabled, R::Absent]));
        let m = InhibitManager::new(InhibitConfig {
            pit_reinject: true,
            sev: true,
            ..kernel(amd_avic(true))
        });
        assert_eq!(m.active(), InhibitSet::of(&[R::PitReinj, R::Sev]));
        let mut unknown = amd_avic(true);
        unknown.avic = None;
        assert!(
            InhibitManager::new(kernel(unknown))
                .active()
                .contains(R::Disabled)
        );
    }

    #[test]
    fn update_reports_transitions_and_tickets() {
        let mut gate = VcpuGate::for_this_thread().unwrap();
        let q = InhibitRequests::new();
        let mut m = InhibitManager::new(kernel(amd_avic(true)));
        let t1 = q.request(
            0,
            E::SintWrite {
                sint: 1,
                value: AUTO_EOI_40,
            },
        );
        let t2 = q.request(
            1,
            E::SintWrite {
                sint: 1,
                value: AUTO_EOI_40,
            },
        );
        assert!(!m.is_applied(t1));
        let u = m.apply_pending(&q, &gate.safe_point());
        assert!(u.changed() && u.activation_changed());
        assert_eq!((u.applied, u.through), (2, Some(t2)));
        assert!(m.is_applied(t1) && m.is_applied(t2));
        assert_eq!(m.auto_eoi_vcpus(), 2);
        let u = m.apply_pending(&q, &gate.safe_point());
        assert!(!u.changed());
        assert_eq!(u.applied, 0);
    }

    #[test]
    fn explain_names_the_lift() {
        let mut gate = VcpuGate::for_this_thread().unwrap();
        let q = InhibitRequests::new();
        let mut m = InhibitManager::new(kernel(amd_avic(false)));
        q.request(
            0,
            E::SintWrite {
                sint: 0,
                value: AUTO_EOI_40,
            },
        );
        q.request(1, E::NestedGuest(true));
        q.request(2, E::ApicId(300));
        q.request(2, E::X2apic(true));
        m.apply_pending(&q, &gate.safe_point());
        let report = m.explain();
        let text = report.to_string();
        assert_eq!(report.reasons.len(), 3);
        assert!(text.contains("DEPRECATING_AEOI"), "{text}");
        assert!(text.contains("APIC_ACCESS_RECOMMENDED"), "{text}");
        assert!(text.contains("turn nesting off"), "{text}");
        assert!(text.contains("x2AVIC"), "{text}");
        assert!(text.contains("APIC ID 300"), "{text}");
        assert_eq!(report.notes.len(), 1, "{text}");
        assert!(
            InhibitManager::new(kernel(amd_avic(true)))
                .explain()
                .to_string()
                .contains("none")
        );
    }
}
