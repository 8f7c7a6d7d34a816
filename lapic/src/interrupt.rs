//! What arrives at a local APIC: an interrupt message and how it was taken.

use crate::regs::{DELIVERY_MODE_MASK, DELIVERY_MODE_SHIFT};

/// Delivery mode (ICR / LVT / MSI bits 10:8, SDM 10.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryMode {
    /// Deliver `vector` to every target.
    Fixed,
    /// Deliver `vector` to one target chosen among the destinations.
    LowestPriority,
    /// System management interrupt.
    Smi,
    /// Encoding 0b011, reserved: never accepted.
    Reserved,
    /// Non-maskable interrupt.
    Nmi,
    /// INIT.
    Init,
    /// Start-up IPI with the vector as the start page.
    StartUp,
    /// External interrupt: the vector comes from the 8259 PIC.
    ExtInt,
}

impl DeliveryMode {
    /// Decodes bits 10:8 of an ICR low word or LVT.
    pub fn from_reg(reg: u32) -> Self {
        match (reg & DELIVERY_MODE_MASK) >> DELIVERY_MODE_SHIFT {
            0 => Self::Fixed,
            1 => Self::LowestPriority,
            2 => Self::Smi,
            3 => Self::Reserved,
            4 => Self::Nmi,
            5 => Self::Init,
            6 => Self::StartUp,
            _ => Self::ExtInt,
        }
    }

    /// Encodes the mode into bits 10:8.
    pub fn to_reg(self) -> u32 {
        let code = match self {
            Self::Fixed => 0,
            Self::LowestPriority => 1,
            Self::Smi => 2,
            Self::Reserved => 3,
            Self::Nmi => 4,
            Self::Init => 5,
            Self::StartUp => 6,
            Self::ExtInt => 7,
        };
        code << DELIVERY_MODE_SHIFT
    }
}

/// Trigger mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TriggerMode {
    /// Edge-triggered.
    #[default]
    Edge,
    /// Level-triggered: the EOI is reported so the IOAPIC clears remote IRR.
    Level,
}

/// One interrupt message as a target APIC receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Interrupt {
    /// Vector (start page for start-up IPIs; ignored for NMI, SMI, INIT).
    pub vector: u8,
    /// Delivery mode.
    pub delivery_mode: DeliveryMode,
    /// Trigger mode.
    pub trigger_mode: TriggerMode,
    /// Level: false only for an INIT level de-assert.
    pub level_assert: bool,
}

impl Interrupt {
    /// An edge-triggered fixed interrupt, the common case.
    ///
    /// ```
    /// use vm_lapic::{DeliveryMode, Interrupt, TriggerMode};
    ///
    /// let irq = Interrupt::fixed(0x40);
    /// assert_eq!((irq.delivery_mode, irq.trigger_mode), (DeliveryMode::Fixed, TriggerMode::Edge));
    /// ```
    pub const fn fixed(vector: u8) -> Self {
        Self {
            vector,
            delivery_mode: DeliveryMode::Fixed,
            trigger_mode: TriggerMode::Edge,
            level_assert: true,
        }
    }

    /// A level-triggered fixed interrupt (an IOAPIC level pin).
    pub const fn fixed_level(vector: u8) -> Self {
        Self {
            vector,
            delivery_mode: DeliveryMode::Fixed,
            trigger_mode: TriggerMode::Level,
            level_assert: true,
        }
    }

    /// A level-triggered message with the level de-asserted. Only the INIT
    /// level de-assert is architectural, and it is a no-op since the
    /// Pentium 4 (SDM 10.6.1); KVM's `__apic_accept_irq` drops fixed and
    /// lowest-priority ones too. [`crate::LocalApic::deliver`] ignores all
    /// of them; a VMM that forwards messages as MSIs, which always assert
    /// (KVM `kvm_set_msi_irq`), must drop them itself.
    pub const fn is_level_deassert(&self) -> bool {
        matches!(self.trigger_mode, TriggerMode::Level) && !self.level_assert
    }

    /// An interrupt of `delivery_mode` that carries no vector semantics
    /// (NMI, SMI, INIT) or a start-up vector.
    pub const fn with_mode(delivery_mode: DeliveryMode, vector: u8) -> Self {
        Self {
            vector,
            delivery_mode,
            trigger_mode: TriggerMode::Edge,
            level_assert: true,
        }
    }
}

/// What a target APIC did with an [`Interrupt`]; the VMM acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub enum Delivery {
    /// The vector was set in the IRR: kick or wake the vCPU if
    /// [`crate::LocalApic::pending`] now returns a vector.
    Accepted,
    /// The vector was already pending in the IRR (the interrupts merged).
    Coalesced,
    /// Inject an NMI.
    Nmi,
    /// Inject an SMI.
    Smi,
    /// Put the vCPU into wait-for-SIPI and call
    /// [`crate::LocalApic::init_reset`].
    Init,
    /// Start the vCPU at `vector << 12` if it waits for SIPI.
    StartUp(u8),
    /// Acknowledge the PIC and inject its vector.
    ExtInt,
    /// Not accepted: APIC disabled, illegal vector, level de-assert or a
    /// reserved delivery mode.
    Ignored,
}
