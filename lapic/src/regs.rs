//! Register offsets, MSR indices and register bit layouts of the local APIC
//! (SDM vol. 3 chapter 10; Linux `arch/x86/include/asm/apicdef.h`).
//!
//! xAPIC registers are 32 bits wide at 16-byte aligned offsets of a 4 KiB
//! MMIO page. In x2APIC mode register offset `r` is MSR `0x800 + (r >> 4)`
//! (SDM 10.12.1.2).

/// Size of the xAPIC MMIO page.
pub const MMIO_PAGE_SIZE: u64 = 0x1000;
/// Registers sit on 16-byte boundaries (SDM 10.4.1).
pub const REG_ALIGN: u32 = 0x10;
/// Width of one architectural register access in bytes.
pub const REG_WIDTH: usize = 4;
/// The last architectural register offset (SELF IPI).
pub const LAST_REG: u32 = 0x3F0;

/// Local APIC ID.
pub const ID: u32 = 0x20;
/// Version.
pub const LVR: u32 = 0x30;
/// Task priority.
pub const TPR: u32 = 0x80;
/// Arbitration priority (xAPIC only).
pub const APR: u32 = 0x90;
/// Processor priority.
pub const PPR: u32 = 0xA0;
/// End of interrupt.
pub const EOI: u32 = 0xB0;
/// Remote read (not implemented by x2APIC-capable parts).
pub const RRD: u32 = 0xC0;
/// Logical destination.
pub const LDR: u32 = 0xD0;
/// Destination format (xAPIC only).
pub const DFR: u32 = 0xE0;
/// Spurious interrupt vector.
pub const SVR: u32 = 0xF0;
/// In-service register, 8 x 32 bits.
pub const ISR: u32 = 0x100;
/// Trigger mode register, 8 x 32 bits.
pub const TMR: u32 = 0x180;
/// Interrupt request register, 8 x 32 bits.
pub const IRR: u32 = 0x200;
/// Error status.
pub const ESR: u32 = 0x280;
/// LVT corrected machine check interrupt.
pub const LVT_CMCI: u32 = 0x2F0;
/// Interrupt command, low half.
pub const ICR_LOW: u32 = 0x300;
/// Interrupt command, high half (xAPIC only).
pub const ICR_HIGH: u32 = 0x310;
/// LVT timer.
pub const LVT_TIMER: u32 = 0x320;
/// LVT thermal sensor.
pub const LVT_THERMAL: u32 = 0x330;
/// LVT performance monitoring counters.
pub const LVT_PERF: u32 = 0x340;
/// LVT LINT0.
pub const LVT_LINT0: u32 = 0x350;
/// LVT LINT1.
pub const LVT_LINT1: u32 = 0x360;
/// LVT error.
pub const LVT_ERROR: u32 = 0x370;
/// Timer initial count.
pub const TIMER_INITIAL: u32 = 0x380;
/// Timer current count.
pub const TIMER_CURRENT: u32 = 0x390;
/// Timer divide configuration.
pub const TIMER_DIVIDE: u32 = 0x3E0;
/// Self IPI (x2APIC only).
pub const SELF_IPI: u32 = 0x3F0;

/// IA32_APIC_BASE.
pub const MSR_APIC_BASE: u32 = 0x1B;
/// IA32_TSC_DEADLINE.
pub const MSR_TSC_DEADLINE: u32 = 0x6E0;
/// First x2APIC MSR.
pub const MSR_X2APIC_FIRST: u32 = 0x800;
/// Last x2APIC MSR of the range this model owns (SDM: 0x800-0x8FF).
pub const MSR_X2APIC_LAST: u32 = 0x8FF;
/// MSR index to register offset shift.
pub const X2APIC_MSR_SHIFT: u32 = 4;

/// IA32_APIC_BASE bit 8: this is the bootstrap processor.
pub const APIC_BASE_BSP: u64 = 1 << 8;
/// IA32_APIC_BASE bit 10: x2APIC mode (EXTD).
pub const APIC_BASE_EXTD: u64 = 1 << 10;
/// IA32_APIC_BASE bit 11: APIC global enable (EN).
pub const APIC_BASE_ENABLE: u64 = 1 << 11;
/// IA32_APIC_BASE bits 7:0 and 9 are reserved (KVM `kvm_apic_set_base`: 0x2ff).
pub const APIC_BASE_RESERVED_LOW: u64 = 0x2FF;
/// IA32_APIC_BASE bits 11:0 are not part of the page address.
pub const APIC_BASE_ADDR_MASK: u64 = !0xFFF;
/// Reset value of the APIC page address.
pub const APIC_DEFAULT_BASE: u64 = 0xFEE0_0000;

/// Version register: the integrated-APIC version KVM reports
/// (`APIC_VERSION`).
pub const VERSION: u32 = 0x14;
/// Version register: shift of the "max LVT entry" field.
pub const LVR_MAX_LVT_SHIFT: u32 = 16;
/// Version register bit 24: EOI-broadcast suppression supported.
pub const LVR_EOI_BROADCAST_SUPPRESSION: u32 = 1 << 24;

/// xAPIC ID register: the ID lives in bits 31:24.
pub const XAPIC_ID_SHIFT: u32 = 24;
/// Mask of an 8-bit xAPIC ID.
pub const XAPIC_ID_MASK: u32 = 0xFF;

/// Vector field of TPR, SVR, LVTs, ICR and SELF IPI.
pub const VECTOR_MASK: u32 = 0xFF;
/// Priority class bits of a vector or priority (SDM 10.8.3.1).
pub const PRIORITY_CLASS_MASK: u32 = 0xF0;

/// SVR bit 8: APIC software enable.
pub const SVR_ENABLE: u32 = 1 << 8;
/// SVR bit 9: focus processor checking disable.
pub const SVR_FOCUS_DISABLE: u32 = 1 << 9;
/// SVR bit 12: suppress EOI broadcasts to the IOAPIC.
pub const SVR_SUPPRESS_EOI_BROADCAST: u32 = 1 << 12;
/// SVR reset value (SDM 10.4.7.1).
pub const SVR_RESET: u32 = 0xFF;

/// DFR bits 31:28: model (0xF flat, 0x0 cluster).
pub const DFR_MODEL_SHIFT: u32 = 28;
/// DFR model value for the flat model.
pub const DFR_MODEL_FLAT: u32 = 0xF;
/// DFR model value for the cluster model.
pub const DFR_MODEL_CLUSTER: u32 = 0x0;
/// DFR bits 27:0 are reserved and read as ones.
pub const DFR_RESERVED_ONES: u32 = 0x0FFF_FFFF;
/// DFR reset value (flat).
pub const DFR_RESET: u32 = u32::MAX;
/// xAPIC LDR: the logical ID lives in bits 31:24.
pub const LDR_XAPIC_MASK: u32 = 0xFF00_0000;
/// xAPIC LDR logical ID shift.
pub const LDR_XAPIC_SHIFT: u32 = 24;
/// x2APIC LDR: cluster in bits 31:16.
pub const LDR_X2APIC_CLUSTER_SHIFT: u32 = 16;
/// x2APIC: the low 4 ID bits select the bit in the cluster (SDM 10.12.10.2).
pub const X2APIC_ID_IN_CLUSTER_MASK: u32 = 0xF;
/// x2APIC: the ID bits above bit 3 give the cluster.
pub const X2APIC_CLUSTER_ID_SHIFT: u32 = 4;

/// LVT bits 10:8 / ICR bits 10:8: delivery mode.
pub const DELIVERY_MODE_MASK: u32 = 0x700;
/// Delivery mode field shift.
pub const DELIVERY_MODE_SHIFT: u32 = 8;
/// LVT/ICR bit 12: delivery status (read-only; always idle here).
pub const DELIVERY_STATUS: u32 = 1 << 12;
/// LVT bit 13: input pin polarity (LINT0/1).
pub const LVT_POLARITY: u32 = 1 << 13;
/// LVT bit 14: remote IRR (LINT0/1, read-only).
pub const LVT_REMOTE_IRR: u32 = 1 << 14;
/// LVT/ICR bit 15: level-triggered.
pub const TRIGGER_LEVEL: u32 = 1 << 15;
/// LVT bit 16: masked.
pub const LVT_MASKED: u32 = 1 << 16;
/// LVT timer bits 18:17: timer mode.
pub const LVT_TIMER_MODE_MASK: u32 = 0x3 << 17;
/// LVT timer mode shift.
pub const LVT_TIMER_MODE_SHIFT: u32 = 17;
/// LVT reset value: masked (SDM 10.4.7.1).
pub const LVT_RESET: u32 = LVT_MASKED;

/// Writable bits of the LVT timer.
pub const LVT_TIMER_WRITABLE: u32 = VECTOR_MASK | LVT_MASKED | LVT_TIMER_MODE_MASK;
/// Writable bits of the thermal, performance and CMCI LVTs.
pub const LVT_MODE_WRITABLE: u32 = VECTOR_MASK | DELIVERY_MODE_MASK | LVT_MASKED;
/// Writable bits of LINT0 and LINT1.
pub const LVT_LINT_WRITABLE: u32 =
    VECTOR_MASK | DELIVERY_MODE_MASK | LVT_POLARITY | TRIGGER_LEVEL | LVT_MASKED;
/// Writable bits of the error LVT.
pub const LVT_ERROR_WRITABLE: u32 = VECTOR_MASK | LVT_MASKED;

/// ICR bit 11: logical destination mode.
pub const ICR_DEST_LOGICAL: u32 = 1 << 11;
/// ICR bit 14: level assert (0 = de-assert).
pub const ICR_LEVEL_ASSERT: u32 = 1 << 14;
/// ICR bits 19:18: destination shorthand.
pub const ICR_SHORTHAND_MASK: u32 = 0x3 << 18;
/// ICR shorthand shift.
pub const ICR_SHORTHAND_SHIFT: u32 = 18;
/// xAPIC ICR high: destination in bits 31:24 (ICR bits 63:56).
pub const ICR_XAPIC_DEST_SHIFT: u32 = 24;
/// xAPIC ICR high: only bits 31:24 are kept (KVM masks with 0xff000000).
pub const ICR_HIGH_XAPIC_MASK: u32 = 0xFF00_0000;
/// x2APIC ICR reserved bits 31:20, 17:16 and 13 (KVM
/// `X2APIC_ICR_RESERVED_BITS`); bit 12 is ignored.
pub const ICR_X2APIC_RESERVED: u64 = 0xFFF0_0000 | (0x3 << 16) | (1 << 13);
/// Bits of ICR low kept in the register (everything but delivery status).
pub const ICR_LOW_STORED: u32 = !DELIVERY_STATUS;

/// ESR bit 5: send illegal vector.
pub const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
/// ESR bit 6: receive illegal vector.
pub const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;

/// Timer divide configuration: bits 0, 1 and 3 are defined.
pub const TDCR_MASK: u32 = 0xB;

/// Writable bits of the TPR.
pub const TPR_MASK: u32 = 0xFF;

/// Hyper-V synthetic EOI (0x40000070): bits 63:32 are reserved (KVM
/// `kvm_lapic_msr_write`, reached from `kvm_hv_vapic_msr_write`).
pub const HV_EOI_RESERVED: u64 = 0xFFFF_FFFF_0000_0000;
/// Hyper-V synthetic TPR (0x40000072): bits 63:8 are reserved, as in the
/// x2APIC TPR (SDM 10.12.1.3).
pub const HV_TPR_RESERVED: u64 = !(TPR_MASK as u64);

/// Index of each LVT in [`crate::LocalApic`]'s LVT array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lvt {
    /// Timer.
    Timer = 0,
    /// Thermal sensor.
    Thermal = 1,
    /// Performance monitoring counters.
    Perf = 2,
    /// LINT0 pin.
    Lint0 = 3,
    /// LINT1 pin.
    Lint1 = 4,
    /// Internal errors.
    Error = 5,
    /// Corrected machine-check interrupts.
    Cmci = 6,
}

/// Number of LVT entries including CMCI.
pub const LVT_COUNT: usize = 7;

impl Lvt {
    /// All LVTs, in array order.
    pub const ALL: [Lvt; LVT_COUNT] = [
        Lvt::Timer,
        Lvt::Thermal,
        Lvt::Perf,
        Lvt::Lint0,
        Lvt::Lint1,
        Lvt::Error,
        Lvt::Cmci,
    ];

    /// The LVT at register offset `reg`, if any.
    pub fn from_reg(reg: u32) -> Option<Lvt> {
        Some(match reg {
            LVT_TIMER => Lvt::Timer,
            LVT_THERMAL => Lvt::Thermal,
            LVT_PERF => Lvt::Perf,
            LVT_LINT0 => Lvt::Lint0,
            LVT_LINT1 => Lvt::Lint1,
            LVT_ERROR => Lvt::Error,
            LVT_CMCI => Lvt::Cmci,
            _ => return None,
        })
    }

    /// Register offset of this LVT.
    pub fn reg(self) -> u32 {
        match self {
            Lvt::Timer => LVT_TIMER,
            Lvt::Thermal => LVT_THERMAL,
            Lvt::Perf => LVT_PERF,
            Lvt::Lint0 => LVT_LINT0,
            Lvt::Lint1 => LVT_LINT1,
            Lvt::Error => LVT_ERROR,
            Lvt::Cmci => LVT_CMCI,
        }
    }

    /// Bits software may write (KVM `apic_lvt_mask`, with the timer modes
    /// of a TSC-deadline capable APIC).
    pub fn writable(self) -> u32 {
        match self {
            Lvt::Timer => LVT_TIMER_WRITABLE,
            Lvt::Thermal | Lvt::Perf | Lvt::Cmci => LVT_MODE_WRITABLE,
            Lvt::Lint0 | Lvt::Lint1 => LVT_LINT_WRITABLE,
            Lvt::Error => LVT_ERROR_WRITABLE,
        }
    }

    /// Bits an x2APIC WRMSR may set without #GP: the writable bits plus the
    /// read-only status bits a read-modify-write carries back.
    pub fn accepted(self) -> u32 {
        match self {
            Lvt::Lint0 | Lvt::Lint1 => self.writable() | DELIVERY_STATUS | LVT_REMOTE_IRR,
            _ => self.writable() | DELIVERY_STATUS,
        }
    }
}

/// Converts an x2APIC MSR index to its register offset.
pub fn x2apic_msr_to_reg(msr: u32) -> Option<u32> {
    if (MSR_X2APIC_FIRST..=MSR_X2APIC_LAST).contains(&msr) {
        Some((msr - MSR_X2APIC_FIRST) << X2APIC_MSR_SHIFT)
    } else {
        None
    }
}
