//! The record of each CPUID policy choice: what, on or off, and why.

use core::fmt;

/// An item the CPUID policy decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Item {
    /// "Microsoft Hv" vendor signature and the highest leaf.
    Vendor,
    /// "Hv#1" interface signature.
    Interface,
    /// Privileges HYPERCALL (bit 5) and VP_INDEX (bit 6).
    HypercallAndVpIndex,
    /// Privilege AccessPartitionId (EBX bit 1).
    AccessPartitionId,
    /// Privilege TIME_REF_COUNT.
    TimeRefCount,
    /// Privilege REFERENCE_TSC.
    ReferenceTsc,
    /// Privilege and feature bits for the frequency MSRs.
    FrequencyMsrs,
    /// Privilege APIC_ACCESS (EOI/ICR/TPR MSRs, VP assist page).
    ApicAccessMsrs,
    /// Privilege SYNIC.
    Synic,
    /// Privilege SYNTHETIC_TIMERS.
    SyntheticTimers,
    /// Privilege TSC_INVARIANT (TSC invariant control).
    TscInvariant,
    /// Feature XMM hypercall input.
    XmmHypercallInput,
    /// Hint RELAXED_TIMING.
    RelaxedTiming,
    /// Hint APIC_ACCESS_RECOMMENDED.
    ApicAccessRecommended,
    /// Hint DEPRECATING_AEOI.
    DeprecatingAeoi,
    /// Hint REMOTE_TLB_FLUSH.
    RemoteTlbFlush,
    /// Hint CLUSTER_IPI.
    ClusterIpi,
    /// Hint EX_PROCESSOR_MASKS.
    ExProcessorMasks,
    /// x2APIC for the guest (architectural CPUID and MADT, and the
    /// X2APIC_MSRS hint).
    X2apic,
    /// Spinlock retry count (0x40000004 EBX).
    SpinlockRetries,
    /// Implementation limits leaf (0x40000005).
    MaxVps,
    /// Feature synthetic timer direct mode (0x40000003 EDX bit 19).
    StimerDirectMode,
    /// Feature guest crash MSRs (0x40000003 EDX bit 10).
    CrashMsrs,
    /// Privilege RESET.
    ResetMsr,
    /// Privilege VP_RUNTIME.
    VpRuntime,
    /// Privilege PostMessages (EBX bit 4).
    PostMessages,
    /// Privilege SignalEvents (EBX bit 5).
    SignalEvents,
}

impl Item {
    /// Every item, in the order decisions are listed.
    pub const ALL: [Item; 27] = [
        Item::Vendor,
        Item::Interface,
        Item::HypercallAndVpIndex,
        Item::AccessPartitionId,
        Item::TimeRefCount,
        Item::ReferenceTsc,
        Item::FrequencyMsrs,
        Item::ApicAccessMsrs,
        Item::Synic,
        Item::SyntheticTimers,
        Item::StimerDirectMode,
        Item::TscInvariant,
        Item::XmmHypercallInput,
        Item::RelaxedTiming,
        Item::ApicAccessRecommended,
        Item::DeprecatingAeoi,
        Item::RemoteTlbFlush,
        Item::ClusterIpi,
        Item::ExProcessorMasks,
        Item::X2apic,
        Item::SpinlockRetries,
        Item::MaxVps,
        Item::CrashMsrs,
        Item::ResetMsr,
        Item::VpRuntime,
        Item::PostMessages,
        Item::SignalEvents,
    ];

    /// Short name as printed.
    pub const fn name(self) -> &'static str {
        match self {
            Item::Vendor => "vendor \"Microsoft Hv\"",
            Item::Interface => "interface \"Hv#1\"",
            Item::HypercallAndVpIndex => "HYPERCALL + VP_INDEX",
            Item::AccessPartitionId => "AccessPartitionId",
            Item::TimeRefCount => "TIME_REF_COUNT",
            Item::ReferenceTsc => "REFERENCE_TSC",
            Item::FrequencyMsrs => "frequency MSRs",
            Item::ApicAccessMsrs => "APIC access MSRs",
            Item::Synic => "SynIC",
            Item::SyntheticTimers => "synthetic timers",
            Item::TscInvariant => "TSC invariant control",
            Item::XmmHypercallInput => "XMM hypercall input",
            Item::RelaxedTiming => "RELAXED_TIMING",
            Item::ApicAccessRecommended => "APIC_ACCESS_RECOMMENDED",
            Item::DeprecatingAeoi => "DEPRECATING_AEOI",
            Item::RemoteTlbFlush => "REMOTE_TLB_FLUSH",
            Item::ClusterIpi => "CLUSTER_IPI",
            Item::ExProcessorMasks => "EX_PROCESSOR_MASKS",
            Item::X2apic => "x2APIC",
            Item::SpinlockRetries => "spinlock retries",
            Item::MaxVps => "max VPs leaf",
            Item::StimerDirectMode => "stimer direct mode",
            Item::CrashMsrs => "crash MSRs",
            Item::ResetMsr => "RESET MSR",
            Item::VpRuntime => "VP_RUNTIME",
            Item::PostMessages => "PostMessages",
            Item::SignalEvents => "SignalEvents",
        }
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// One policy decision: the item, whether it is on, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    /// What was decided.
    pub item: Item,
    /// Whether it is published (set) or not.
    pub on: bool,
    /// Why.
    pub reason: &'static str,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.on { "on" } else { "off" };
        write!(f, "{:<24} {:<3}  {}", self.item, state, self.reason)
    }
}

/// Every decision the policy made, one per [`Item`], in [`Item::ALL`]
/// order. Fixed size: no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decisions {
    list: [Decision; Item::ALL.len()],
}

impl Decisions {
    pub(crate) fn new(mut decide: impl FnMut(Item) -> (bool, &'static str)) -> Self {
        let list = Item::ALL.map(|item| {
            let (on, reason) = decide(item);
            Decision { item, on, reason }
        });
        Self { list }
    }

    /// Iterates over the decisions.
    pub fn iter(&self) -> core::slice::Iter<'_, Decision> {
        self.list.iter()
    }

    /// The decisions as a slice.
    pub fn as_slice(&self) -> &[Decision] {
        &self.list
    }

    /// The decision about `item`.
    ///
    /// ```
    /// use hv_enlightenments::cpuid::{CpuidBuilder, Item};
    ///
    /// let plan = CpuidBuilder::new(8).build()?;
    /// let d = plan.decisions.get(Item::X2apic).expect("one decision per item");
    /// assert!(!d.on);
    /// println!("{d}"); // "x2APIC   off  240 vCPUs or fewer: xAPIC IDs suffice"
    /// # Ok::<(), hv_enlightenments::cpuid::Error>(())
    /// ```
    pub fn get(&self, item: Item) -> Option<&Decision> {
        self.list.iter().find(|d| d.item == item)
    }

    /// Whether `item` was turned on.
    pub fn is_on(&self, item: Item) -> bool {
        self.get(item).is_some_and(|d| d.on)
    }
}

impl<'a> IntoIterator for &'a Decisions {
    type Item = &'a Decision;
    type IntoIter = core::slice::Iter<'a, Decision>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl fmt::Display for Decisions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.list {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;

    #[test]
    fn display_has_one_line_per_item_with_state_and_reason() {
        let decisions = Decisions::new(|item| (item == Item::ClusterIpi, item.name()));
        let text = decisions.to_string();
        assert_eq!(text.lines().count(), Item::ALL.len());
        for (line, d) in text.lines().zip(decisions.iter()) {
            assert!(line.starts_with(d.item.name()), "{line}");
            let state = if d.on { " on " } else { " off " };
            assert!(line.contains(state), "{line}");
            assert!(line.ends_with(d.reason), "{line}");
        }
        assert!(decisions.is_on(Item::ClusterIpi));
        assert!(!decisions.is_on(Item::Vendor));
        assert_eq!(format!("{}", Item::X2apic), "x2APIC");
    }
}
