//! Which hypercalls the published CPUID lets the guest make, answered as
//! KVM answers them with `KVM_CAP_HYPERV_ENFORCE_CPUID`
//! (`hv_check_hypercall_access`, `kvm_hv_hypercall`).

use super::control::{CallCode, Control};
use super::status::HvStatus;
use crate::cpuid::{CpuidPlan, FeaturesEdx, Hints, HvCpuid, Privileges, SPINLOCK_RETRIES_NEVER};

/// How a call the guest may not make is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Answer with this status (RAX), as for any failed call.
    Status(HvStatus),
    /// Inject #UD at the hypercall instruction: a fast call with XMM
    /// input while XMM input is not published (KVM queues `UD_VECTOR`).
    InjectUd,
}

/// What the guest was told in CPUID 0x40000003/0x40000004, for the checks
/// KVM makes before it looks at a call's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HypercallAccess {
    /// 0x40000003 EAX:EBX.
    pub privileges: Privileges,
    /// 0x40000003 EDX.
    pub features: FeaturesEdx,
    /// 0x40000004 EAX.
    pub hints: Hints,
    /// 0x40000004 EBX.
    pub spinlock_retries: u32,
}

impl From<&HvCpuid> for HypercallAccess {
    fn from(cpuid: &HvCpuid) -> Self {
        Self {
            privileges: cpuid.privileges,
            features: cpuid.features,
            hints: cpuid.hints,
            spinlock_retries: cpuid.spinlock_retries,
        }
    }
}

impl From<&CpuidPlan> for HypercallAccess {
    fn from(plan: &CpuidPlan) -> Self {
        Self::from(&plan.cpuid)
    }
}

impl HypercallAccess {
    /// Whether the guest may make call `code` at all (KVM
    /// `hv_check_hypercall_access`): NotifyLongSpinWait needs a spinlock
    /// retry count other than 0 and 0xFFFFFFFF; PostMessage and
    /// SignalEvent their privileges; the flush calls REMOTE_TLB_FLUSH, the
    /// IPI calls CLUSTER_IPI, their Ex forms EX_PROCESSOR_MASKS too; the
    /// extended calls 0x8001..=0x8041 EXTENDED_HYPERCALLS. Any other code
    /// is allowed here and refused by the decoder as unknown.
    pub fn allows(&self, code: CallCode) -> bool {
        let hint = |h| self.hints.contains(h);
        let ex = hint(Hints::EX_PROCESSOR_MASKS);
        match code {
            CallCode::NOTIFY_LONG_SPIN_WAIT => {
                self.spinlock_retries != 0 && self.spinlock_retries != SPINLOCK_RETRIES_NEVER
            }
            CallCode::POST_MESSAGE => self.privileges.contains(Privileges::POST_MESSAGES),
            CallCode::SIGNAL_EVENT => self.privileges.contains(Privileges::SIGNAL_EVENTS),
            CallCode::FLUSH_VIRTUAL_ADDRESS_LIST_EX | CallCode::FLUSH_VIRTUAL_ADDRESS_SPACE_EX => {
                ex && hint(Hints::REMOTE_TLB_FLUSH)
            }
            CallCode::FLUSH_VIRTUAL_ADDRESS_LIST | CallCode::FLUSH_VIRTUAL_ADDRESS_SPACE => {
                hint(Hints::REMOTE_TLB_FLUSH)
            }
            CallCode::SEND_SYNTHETIC_CLUSTER_IPI_EX => ex && hint(Hints::CLUSTER_IPI),
            CallCode::SEND_SYNTHETIC_CLUSTER_IPI => hint(Hints::CLUSTER_IPI),
            CallCode(c)
                if (CallCode::EXT_QUERY_CAPABILITIES.0..=CallCode::EXT_LAST.0).contains(&c) =>
            {
                self.privileges.contains(Privileges::EXTENDED_HYPERCALLS)
            }
            _ => true,
        }
    }

    /// The checks `kvm_hv_hypercall` makes, in its order, before it reads
    /// a call's input: a call not allowed ([`allows`](Self::allows)) is
    /// `HV_STATUS_ACCESS_DENIED`; reserved control bits are
    /// `HV_STATUS_INVALID_HYPERCALL_INPUT`; a fast call with XMM input
    /// ([`Control::uses_xmm_input`]) without
    /// [`FeaturesEdx::XMM_HYPERCALL_INPUT`] is #UD. `Ok`: decode it
    /// ([`decode`](super::decode), [`decode_synic`](crate::synic::decode_synic)).
    /// (The CPL 0 check, #UD too, comes before all of these:
    /// [`caller_may_call`](super::caller_may_call).)
    ///
    /// ```
    /// use hv_enlightenments::cpuid::CpuidBuilder;
    /// use hv_enlightenments::hypercall::{Control, HvStatus, HypercallAccess, Refusal};
    ///
    /// let plan = CpuidBuilder::new(8).build()?; // no PostMessages privilege
    /// let access = HypercallAccess::from(&plan);
    /// let post = Control::new().with_code(0x5C);
    /// assert_eq!(access.check(post), Err(Refusal::Status(HvStatus::ACCESS_DENIED)));
    /// let ipi = Control::new().with_code(0x0B).with_fast(true);
    /// assert_eq!(access.check(ipi), Ok(()));
    /// # Ok::<(), hv_enlightenments::cpuid::Error>(())
    /// ```
    pub fn check(&self, control: Control) -> Result<(), Refusal> {
        if !self.allows(control.call_code()) {
            return Err(Refusal::Status(HvStatus::ACCESS_DENIED));
        }
        if control.has_reserved_bits() {
            return Err(Refusal::Status(HvStatus::INVALID_HYPERCALL_INPUT));
        }
        if control.uses_xmm_input() && !self.features.contains(FeaturesEdx::XMM_HYPERCALL_INPUT) {
            return Err(Refusal::InjectUd);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: bool = true;
    const SLOW: bool = false;

    fn access(
        privileges: Privileges,
        features: FeaturesEdx,
        hints: Hints,
        retries: u32,
    ) -> HypercallAccess {
        HypercallAccess {
            privileges,
            features,
            hints,
            spinlock_retries: retries,
        }
    }

    /// KVM selftest `hyperv_features.c` `guest_test_hcalls_access`, as a
    /// table: each call with its feature off, then on.
    #[test]
    fn access_matrix_matches_kvm() {
        let none = access(Privileges::empty(), FeaturesEdx::empty(), Hints::empty(), 0);
        let denied = Err(Refusal::Status(HvStatus::ACCESS_DENIED));
        #[rustfmt::skip]
        let rows: [(u16, bool, HypercallAccess, Result<(), Refusal>); 24] = [
            // PostMessage / SignalEvent: EBX bits 4 / 5.
            (0x5C, SLOW, none, denied),
            (0x5C, SLOW, access(Privileges::POST_MESSAGES, FeaturesEdx::empty(), Hints::empty(), 0), Ok(())),
            (0x5D, FAST, none, denied),
            (0x5D, FAST, access(Privileges::SIGNAL_EVENTS, FeaturesEdx::empty(), Hints::empty(), 0), Ok(())),
            // NotifyLongSpinWait: retries neither 0 nor 0xFFFFFFFF.
            (0x08, FAST, none, denied),
            (0x08, FAST, access(Privileges::empty(), FeaturesEdx::empty(), Hints::empty(), SPINLOCK_RETRIES_NEVER), denied),
            (0x08, FAST, access(Privileges::empty(), FeaturesEdx::empty(), Hints::empty(), 0xFFF), Ok(())),
            // Flush: REMOTE_TLB_FLUSH; Ex also EX_PROCESSOR_MASKS.
            (0x02, SLOW, none, denied),
            (0x02, SLOW, access(Privileges::empty(), FeaturesEdx::empty(), Hints::REMOTE_TLB_FLUSH, 0), Ok(())),
            (0x03, SLOW, access(Privileges::empty(), FeaturesEdx::empty(), Hints::REMOTE_TLB_FLUSH, 0), Ok(())),
            (0x13, SLOW, access(Privileges::empty(), FeaturesEdx::empty(), Hints::REMOTE_TLB_FLUSH, 0), denied),
            (0x14, SLOW, access(Privileges::empty(), FeaturesEdx::empty(), Hints::EX_PROCESSOR_MASKS, 0), denied),
            (0x14, SLOW, access(Privileges::empty(), FeaturesEdx::empty(), Hints::REMOTE_TLB_FLUSH | Hints::EX_PROCESSOR_MASKS, 0), Ok(())),
            // Fast flush with XMM input: #UD without the feature.
            (0x02, FAST, access(Privileges::empty(), FeaturesEdx::empty(), Hints::REMOTE_TLB_FLUSH, 0), Err(Refusal::InjectUd)),
            (0x02, FAST, access(Privileges::empty(), FeaturesEdx::XMM_HYPERCALL_INPUT, Hints::REMOTE_TLB_FLUSH, 0), Ok(())),
            // IPI: CLUSTER_IPI; Ex also EX_PROCESSOR_MASKS.
            (0x0B, FAST, none, denied),
            (0x0B, FAST, access(Privileges::empty(), FeaturesEdx::empty(), Hints::CLUSTER_IPI, 0), Ok(())),
            (0x15, SLOW, access(Privileges::empty(), FeaturesEdx::empty(), Hints::CLUSTER_IPI, 0), denied),
            (0x15, SLOW, access(Privileges::empty(), FeaturesEdx::empty(), Hints::CLUSTER_IPI | Hints::EX_PROCESSOR_MASKS, 0), Ok(())),
            (0x15, FAST, access(Privileges::empty(), FeaturesEdx::empty(), Hints::CLUSTER_IPI | Hints::EX_PROCESSOR_MASKS, 0), Err(Refusal::InjectUd)),
            // Extended calls: EBX bit 20; one past the range is ordinary.
            (0x8001, SLOW, none, denied),
            (0x8041, SLOW, access(Privileges::EXTENDED_HYPERCALLS, FeaturesEdx::empty(), Hints::empty(), 0), Ok(())),
            (0x8042, SLOW, none, Ok(())),
            // Unknown codes are for the decoder to refuse.
            (0x7777, SLOW, none, Ok(())),
        ];
        for (code, fast, a, want) in rows {
            let c = Control::new().with_code(code).with_fast(fast);
            assert_eq!(a.check(c), want, "code {code:#x} fast {fast} {a:?}");
        }
    }

    #[test]
    fn access_is_checked_before_reserved_bits() {
        let none = access(Privileges::empty(), FeaturesEdx::empty(), Hints::empty(), 0);
        let reserved = Control::from_bits(0x5C | 1 << 27);
        assert_eq!(
            none.check(reserved),
            Err(Refusal::Status(HvStatus::ACCESS_DENIED))
        );
        let all = access(Privileges::all(), FeaturesEdx::empty(), Hints::all(), 1);
        assert_eq!(
            all.check(reserved),
            Err(Refusal::Status(HvStatus::INVALID_HYPERCALL_INPUT))
        );
        // Reserved bits before the XMM #UD.
        let xmm = Control::from_bits(0x02 | 1 << 16 | 1 << 60);
        assert_eq!(
            all.check(xmm),
            Err(Refusal::Status(HvStatus::INVALID_HYPERCALL_INPUT))
        );
    }
}
