//! Why APICv/AVIC may be inhibited: KVM's `enum kvm_apicv_inhibit`
//! (`arch/x86/include/asm/kvm_host.h`), bit for bit, and the subsets that
//! VMX and SVM honour (`VMX_REQUIRED_APICV_INHIBITS` in `vmx/main.c`,
//! `AVIC_REQUIRED_APICV_INHIBITS` in `svm/svm.h`).

use core::fmt;

use hv_enlightenments::accel::CpuVendor;

/// One APICv/AVIC inhibit reason. The discriminant is KVM's bit number.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InhibitReason {
    /// APIC virtualization is off on the host (module parameter, CPU).
    Disabled = 0,
    /// Hyper-V SynIC AutoEOI is in use by some vCPU.
    Hyperv = 1,
    /// No in-kernel local APIC (the VMM emulates it).
    Absent = 2,
    /// Guest debugging with `KVM_GUESTDBG_BLOCKIRQ`.
    BlockIrq = 3,
    /// Two vCPUs share a physical APIC ID.
    PhysicalIdAliased = 4,
    /// The guest changed an xAPIC ID. Sticky here; KVM since Linux 6.3
    /// clears it once every xAPIC ID is back to its vCPU ID.
    ApicIdModified = 5,
    /// The guest relocated the APIC base (sticky).
    ApicBaseModified = 6,
    /// AVIC: a vCPU is running a nested guest.
    Nested = 7,
    /// AVIC: a vCPU waits for an interrupt window (ExtINT).
    IrqWin = 8,
    /// AVIC: the in-kernel PIT re-injects missed ticks.
    PitReinj = 9,
    /// AVIC: the VM is an SEV guest.
    Sev = 10,
    /// AVIC: logical IDs are not 1:1 with vCPUs.
    LogicalIdAliased = 11,
    /// AVIC: an APIC ID is beyond the AVIC/x2AVIC physical ID table.
    PhysicalIdTooBig = 12,
}

impl InhibitReason {
    /// Every reason, in KVM's bit order.
    pub const ALL: [Self; 13] = [
        Self::Disabled,
        Self::Hyperv,
        Self::Absent,
        Self::BlockIrq,
        Self::PhysicalIdAliased,
        Self::ApicIdModified,
        Self::ApicBaseModified,
        Self::Nested,
        Self::IrqWin,
        Self::PitReinj,
        Self::Sev,
        Self::LogicalIdAliased,
        Self::PhysicalIdTooBig,
    ];

    /// KVM's name (`APICV_INHIBIT_REASON_<name>`).
    pub fn kvm_name(self) -> &'static str {
        match self {
            Self::Disabled => "DISABLED",
            Self::Hyperv => "HYPERV",
            Self::Absent => "ABSENT",
            Self::BlockIrq => "BLOCKIRQ",
            Self::PhysicalIdAliased => "PHYSICAL_ID_ALIASED",
            Self::ApicIdModified => "APIC_ID_MODIFIED",
            Self::ApicBaseModified => "APIC_BASE_MODIFIED",
            Self::Nested => "NESTED",
            Self::IrqWin => "IRQWIN",
            Self::PitReinj => "PIT_REINJ",
            Self::Sev => "SEV",
            Self::LogicalIdAliased => "LOGICAL_ID_ALIASED",
            Self::PhysicalIdTooBig => "PHYSICAL_ID_TOO_BIG",
        }
    }

    /// Whether the reason, once set, stays set for the life of the VM.
    pub fn is_sticky(self) -> bool {
        matches!(self, Self::ApicIdModified | Self::ApicBaseModified)
    }

    fn bit(self) -> u32 {
        1 << (self as u8)
    }
}

impl fmt::Display for InhibitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kvm_name())
    }
}

/// A set of [`InhibitReason`]s, as KVM's `apicv_inhibit_reasons` bitmap.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct InhibitSet(u32);

impl InhibitSet {
    /// No reason.
    pub const EMPTY: Self = Self(0);

    /// Reasons VMX (APICv) honours: `VMX_REQUIRED_APICV_INHIBITS`.
    pub const VMX: Self = Self::of(&[
        InhibitReason::Disabled,
        InhibitReason::Absent,
        InhibitReason::Hyperv,
        InhibitReason::BlockIrq,
        InhibitReason::PhysicalIdAliased,
        InhibitReason::ApicIdModified,
        InhibitReason::ApicBaseModified,
    ]);

    /// Reasons SVM (AVIC) honours: `AVIC_REQUIRED_APICV_INHIBITS`, all.
    pub const AVIC: Self = Self::of(&InhibitReason::ALL);

    /// The set of the given reasons.
    pub const fn of(reasons: &[InhibitReason]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < reasons.len() {
            bits |= 1 << (reasons[i] as u8);
            i += 1;
        }
        Self(bits)
    }

    /// Reasons the host's vendor honours; every reason when the vendor is
    /// not known.
    pub fn honoured_by(vendor: CpuVendor) -> Self {
        match vendor {
            CpuVendor::Intel => Self::VMX,
            CpuVendor::Amd | CpuVendor::Other => Self::AVIC,
        }
    }

    /// KVM's bitmap value.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether `reason` is in the set.
    pub fn contains(self, reason: InhibitReason) -> bool {
        self.0 & reason.bit() != 0
    }

    /// Whether the set is empty (APICv/AVIC may be active).
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Adds or removes `reason`.
    pub fn set(&mut self, reason: InhibitReason, on: bool) {
        if on {
            self.0 |= reason.bit();
        } else {
            self.0 &= !reason.bit();
        }
    }

    /// The reasons in both sets.
    pub fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// The reasons in `self` but not in `other`.
    pub fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// The reasons, in KVM's bit order.
    pub fn iter(self) -> impl Iterator<Item = InhibitReason> {
        InhibitReason::ALL
            .into_iter()
            .filter(move |r| self.contains(*r))
    }
}

impl fmt::Debug for InhibitSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl fmt::Display for InhibitSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, reason) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{reason}")?;
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn bits_match_kvm_enum_order() {
        for (i, r) in InhibitReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        assert_eq!(InhibitSet::AVIC.bits(), (1 << 13) - 1);
        assert_eq!(InhibitSet::VMX.bits(), 0b111_1111);
        assert!(!InhibitSet::VMX.contains(InhibitReason::Nested));
    }

    #[test]
    fn set_ops_and_display() {
        let mut s = InhibitSet::EMPTY;
        assert_eq!(s.to_string(), "none");
        s.set(InhibitReason::Hyperv, true);
        s.set(InhibitReason::Nested, true);
        assert_eq!(s.to_string(), "HYPERV,NESTED");
        assert_eq!(
            s.intersection(InhibitSet::VMX).iter().collect::<Vec<_>>(),
            vec![InhibitReason::Hyperv]
        );
        s.set(InhibitReason::Hyperv, false);
        assert_eq!(s, InhibitSet::of(&[InhibitReason::Nested]));
    }
}
