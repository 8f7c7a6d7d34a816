//! Typed values of the synthetic MSRs, with their reserved bits (TLFS
//! "Synthetic MSRs"; Linux `hvgdk_mini.h`; openvmm `hvdef`).
//!
//! The TLFS marks most reserved bits "preserve on write"; a guest that
//! reads, modifies and writes back never sets them because the values
//! read here never have them set. A write that sets one is refused (#GP).

use bitfield_struct::bitfield;

use crate::HV_PAGE_SHIFT;

/// Lowest SINT vector; 0..15 are refused unless the SINT is masked
/// (`HV_SYNIC_FIRST_VALID_VECTOR`, KVM `synic_set_sint`).
pub const SYNIC_FIRST_VALID_VECTOR: u8 = 16;
/// SVERSION value (`HV_SYNIC_VERSION_1`).
pub const SYNIC_VERSION: u64 = 1;

/// HV_X64_MSR_HYPERCALL: bit 0 enable, bit 1 locked, bits 63:12 GPA page.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct HypercallMsr {
    /// The hypercall page is enabled.
    pub enable: bool,
    /// The MSR is locked until the partition is reset.
    pub locked: bool,
    #[bits(10)]
    __: u16,
    /// Guest page number of the hypercall page.
    #[bits(52)]
    pub gpn: u64,
}

impl HypercallMsr {
    /// Reserved bits 11:2.
    pub const RESERVED: u64 = 0xFFC;

    /// The value, or `None` when a reserved bit is set.
    pub const fn from_guest(value: u64) -> Option<Self> {
        if value & Self::RESERVED != 0 {
            None
        } else {
            Some(Self::from_bits(value))
        }
    }

    /// Guest physical address of the page.
    pub const fn gpa(&self) -> u64 {
        self.gpn() << HV_PAGE_SHIFT
    }
}

/// An MSR that places a page: bit 0 enable, bits 11:1 reserved, bits 63:12
/// GPA page. The VP assist page, reference TSC page, SIMP and SIEFP share
/// this layout (`hv_vp_assist_msr_contents`, `hv_reference_tsc_msr`).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct PageMsr {
    /// The page is enabled.
    pub enable: bool,
    #[bits(11)]
    __: u16,
    /// Guest page number.
    #[bits(52)]
    pub gpn: u64,
}

impl PageMsr {
    /// Reserved bits 11:1.
    pub const RESERVED: u64 = 0xFFE;

    /// The value, or `None` when a reserved bit is set.
    pub const fn from_guest(value: u64) -> Option<Self> {
        if value & Self::RESERVED != 0 {
            None
        } else {
            Some(Self::from_bits(value))
        }
    }

    /// Guest physical address of the page.
    pub const fn gpa(&self) -> u64 {
        self.gpn() << HV_PAGE_SHIFT
    }

    /// The page's GPA when enabled.
    pub const fn enabled_gpa(&self) -> Option<u64> {
        if self.enable() {
            Some(self.gpa())
        } else {
            None
        }
    }
}

/// HV_X64_MSR_VP_ASSIST_PAGE.
pub type VpAssistPageMsr = PageMsr;
/// HV_X64_MSR_REFERENCE_TSC.
pub type ReferenceTscMsr = PageMsr;
/// HV_X64_MSR_SIMP (SynIC message page).
pub type SimpMsr = PageMsr;
/// HV_X64_MSR_SIEFP (SynIC event flags page).
pub type SiefpMsr = PageMsr;

/// HV_X64_MSR_SINTx: bits 7:0 vector, bit 16 masked, bit 17 AutoEOI,
/// bit 18 polling.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct SintMsr {
    /// Interrupt vector (16..=255 unless masked).
    pub vector: u8,
    #[bits(8)]
    __: u8,
    /// The source is masked.
    pub masked: bool,
    /// The vector is acknowledged without setting ISR (no EOI needed).
    pub auto_eoi: bool,
    /// Polling mode. Refused: SINT polling (0x40000003 EDX bit 17) is not
    /// published.
    pub polling: bool,
    #[bits(45)]
    __: u64,
}

impl SintMsr {
    /// Reset value: masked, vector 0 (`synic_init` in KVM).
    pub const RESET: Self = Self::new().with_masked(true);
    /// Bits a guest may set: vector, masked, AutoEOI.
    pub const WRITABLE: u64 = 0xFF | (1 << 16) | (1 << 17);

    /// The value, or `None` when a reserved (or polling) bit is set or an
    /// unmasked SINT names a vector below 16 (KVM `synic_set_sint`).
    pub const fn from_guest(value: u64) -> Option<Self> {
        let sint = Self::from_bits(value);
        if value & !Self::WRITABLE != 0
            || (!sint.masked() && sint.vector() < SYNIC_FIRST_VALID_VECTOR)
        {
            None
        } else {
            Some(sint)
        }
    }

    /// Whether this SINT delivers with AutoEOI: unmasked, AutoEOI set
    /// (KVM `synic_has_vector_auto_eoi` skips masked SINTs).
    pub const fn delivers_auto_eoi(&self) -> bool {
        !self.masked() && self.auto_eoi() && self.vector() >= SYNIC_FIRST_VALID_VECTOR
    }
}

/// HV_X64_MSR_SCONTROL: bit 0 enable.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct ScontrolMsr {
    /// The SynIC is enabled.
    pub enable: bool,
    #[bits(63)]
    __: u64,
}

impl ScontrolMsr {
    /// Reserved bits 63:1.
    pub const RESERVED: u64 = !1;

    /// The value, or `None` when a reserved bit is set.
    pub const fn from_guest(value: u64) -> Option<Self> {
        if value & Self::RESERVED != 0 {
            None
        } else {
            Some(Self::from_bits(value))
        }
    }
}

/// HV_X64_MSR_TSC_INVARIANT_CONTROL: bit 0 exposes the invariant TSC
/// (`HV_EXPOSE_INVARIANT_TSC`).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct TscInvariantControlMsr {
    /// The TSC is exposed as invariant.
    pub expose: bool,
    #[bits(63)]
    __: u64,
}

impl TscInvariantControlMsr {
    /// Reserved bits 63:1 ("Only bit 0 is supported", KVM).
    pub const RESERVED: u64 = !1;

    /// The value, or `None` when a reserved bit is set.
    pub const fn from_guest(value: u64) -> Option<Self> {
        if value & Self::RESERVED != 0 {
            None
        } else {
            Some(Self::from_bits(value))
        }
    }
}

/// Offset of the 32-bit `apic_assist` field in the VP assist page; bit 0
/// set by the hypervisor means "no EOI required" (lazy EOI).
pub const VP_ASSIST_APIC_ASSIST_OFFSET: u64 = 0;
/// Size of the `apic_assist` field in bytes.
pub const VP_ASSIST_APIC_ASSIST_SIZE: usize = 4;
/// `apic_assist` bit 0: the in-service interrupt may be completed lazily.
pub const APIC_ASSIST_NO_EOI_REQUIRED: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layouts_match_the_headers() {
        let h = HypercallMsr::from_bits(0x1234_5003);
        assert!(h.enable() && h.locked());
        assert_eq!(h.gpa(), 0x1234_5000);
        let p = PageMsr::from_bits(0xABC_D001);
        assert_eq!(p.enabled_gpa(), Some(0xABC_D000));
        assert_eq!(PageMsr::from_bits(0xABC_D000).enabled_gpa(), None);
        // HV_SYNIC_SINT_MASKED BIT(16), HV_SYNIC_SINT_AUTO_EOI BIT(17).
        assert_eq!(SintMsr::RESET.into_bits(), 0x1_0000);
        assert!(SintMsr::from_bits(1 << 17).auto_eoi());
        assert!(SintMsr::from_bits(1 << 18).polling());
    }

    #[test]
    fn sint_vector_rules() {
        // Masked with vector 0 is the reset value a guest may write back.
        assert!(SintMsr::from_guest(0x1_0000).is_some());
        assert!(SintMsr::from_guest(15).is_none());
        assert!(SintMsr::from_guest(16).is_some());
        assert!(SintMsr::from_guest(0xFF | (1 << 17)).is_some());
        assert!(SintMsr::from_guest(1 << 18 | 0x30).is_none());
        assert!(SintMsr::from_guest(0x30 | (1 << 8)).is_none());
    }

    #[test]
    fn auto_eoi_counts_only_unmasked_valid_sints() {
        let on = SintMsr::new().with_vector(0x40).with_auto_eoi(true);
        assert!(on.delivers_auto_eoi());
        assert!(!on.with_masked(true).delivers_auto_eoi());
        assert!(!on.with_auto_eoi(false).delivers_auto_eoi());
    }

    proptest! {
        #[test]
        fn reserved_bits_are_refused(v in any::<u64>()) {
            prop_assert_eq!(HypercallMsr::from_guest(v).is_some(), v & HypercallMsr::RESERVED == 0);
            prop_assert_eq!(PageMsr::from_guest(v).is_some(), v & PageMsr::RESERVED == 0);
            prop_assert_eq!(ScontrolMsr::from_guest(v).is_some(), v & ScontrolMsr::RESERVED == 0);
            prop_assert_eq!(
                TscInvariantControlMsr::from_guest(v).is_some(),
                v & TscInvariantControlMsr::RESERVED == 0
            );
            if v & !SintMsr::WRITABLE != 0 {
                prop_assert!(SintMsr::from_guest(v).is_none());
            }
        }

        #[test]
        fn accepted_values_round_trip(v in any::<u64>()) {
            if let Some(h) = HypercallMsr::from_guest(v) {
                prop_assert_eq!(h.into_bits(), v);
            }
            if let Some(p) = PageMsr::from_guest(v) {
                prop_assert_eq!(p.into_bits(), v);
            }
            if let Some(s) = SintMsr::from_guest(v) {
                prop_assert_eq!(s.into_bits(), v);
            }
        }
    }
}
