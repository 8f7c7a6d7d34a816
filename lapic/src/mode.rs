//! APIC operating modes as selected by IA32_APIC_BASE (SDM 10.12.5).

use crate::regs::{APIC_BASE_ENABLE, APIC_BASE_EXTD};

/// Operating mode of a local APIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApicMode {
    /// Globally disabled (EN = 0): accepts nothing, MMIO and MSRs are off.
    Disabled,
    /// xAPIC: MMIO page, 8-bit IDs.
    XApic,
    /// x2APIC: MSRs 0x800-0x8FF, 32-bit IDs.
    X2Apic,
}

impl ApicMode {
    /// Decodes the EN/EXTD bits; `None` for the invalid EXTD-without-EN.
    ///
    /// ```
    /// use vm_lapic::ApicMode;
    ///
    /// assert_eq!(ApicMode::from_apic_base(0xFEE0_0C00), Some(ApicMode::X2Apic)); // EN | EXTD
    /// assert_eq!(ApicMode::from_apic_base(0xFEE0_0400), None); // EXTD without EN
    /// ```
    pub fn from_apic_base(base: u64) -> Option<Self> {
        match (base & APIC_BASE_ENABLE != 0, base & APIC_BASE_EXTD != 0) {
            (false, false) => Some(Self::Disabled),
            (true, false) => Some(Self::XApic),
            (true, true) => Some(Self::X2Apic),
            (false, true) => None,
        }
    }

    /// Whether a guest (not host-initiated) write may move from `self` to
    /// `to` (SDM 10.12.5.1, KVM `kvm_apic_set_base`): x2APIC cannot go
    /// straight back to xAPIC, and a disabled APIC must pass through xAPIC
    /// before x2APIC.
    pub fn guest_may_switch_to(self, to: Self) -> bool {
        !matches!(
            (self, to),
            (Self::X2Apic, Self::XApic) | (Self::Disabled, Self::X2Apic)
        )
    }
}
