//! The interrupt command register, decoded into a typed [`Ipi`]
//! (SDM 10.6.1 for xAPIC, 10.12.9 for x2APIC).
//!
//! The destination sits in ICR bits 63:56 in xAPIC mode and in bits 63:32
//! in x2APIC mode. The Hyper-V synthetic ICR (0x40000071) follows the mode
//! the APIC is in (KVM `kvm_apic_send_ipi`, `GET_XAPIC_DEST_FIELD`).

use crate::interrupt::{DeliveryMode, Interrupt, TriggerMode};
use crate::regs::{
    ICR_DEST_LOGICAL, ICR_LEVEL_ASSERT, ICR_SHORTHAND_MASK, ICR_SHORTHAND_SHIFT,
    ICR_XAPIC_DEST_SHIFT, TRIGGER_LEVEL, VECTOR_MASK,
};

/// Physical or logical destination addressing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DestinationMode {
    /// The destination is an APIC ID.
    #[default]
    Physical,
    /// The destination is matched against each APIC's LDR (and DFR).
    Logical,
}

/// Destination shorthand (ICR bits 19:18).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Shorthand {
    /// Use the destination field.
    #[default]
    None,
    /// The sender only.
    SelfOnly,
    /// Every APIC including the sender.
    AllIncludingSelf,
    /// Every APIC but the sender.
    AllExcludingSelf,
}

impl Shorthand {
    fn from_icr(low: u32) -> Self {
        match (low & ICR_SHORTHAND_MASK) >> ICR_SHORTHAND_SHIFT {
            0 => Self::None,
            1 => Self::SelfOnly,
            2 => Self::AllIncludingSelf,
            _ => Self::AllExcludingSelf,
        }
    }

    fn to_icr(self) -> u32 {
        let code = match self {
            Self::None => 0,
            Self::SelfOnly => 1,
            Self::AllIncludingSelf => 2,
            Self::AllExcludingSelf => 3,
        };
        code << ICR_SHORTHAND_SHIFT
    }
}

/// A destination to resolve against the VM's topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Destination {
    /// Physical or logical.
    pub mode: DestinationMode,
    /// Shorthand; when not `None` the `id` is ignored.
    pub shorthand: Shorthand,
    /// Destination field: 8 bits from an xAPIC sender, 32 bits from an
    /// x2APIC sender or an x2APIC-format MSI/IOAPIC message.
    pub id: u32,
}

/// A decoded interprocessor interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipi {
    /// Vector field.
    pub vector: u8,
    /// Delivery mode.
    pub delivery_mode: DeliveryMode,
    /// Destination mode.
    pub destination_mode: DestinationMode,
    /// Level assert (false = INIT level de-assert).
    pub level_assert: bool,
    /// Trigger mode.
    pub trigger_mode: TriggerMode,
    /// Destination shorthand.
    pub shorthand: Shorthand,
    /// Destination as the sender's mode defines it.
    pub destination: u32,
}

fn decode_low(low: u32, destination: u32) -> Ipi {
    Ipi {
        // The mask keeps 8 bits.
        vector: (low & VECTOR_MASK) as u8,
        delivery_mode: DeliveryMode::from_reg(low),
        destination_mode: if low & ICR_DEST_LOGICAL != 0 {
            DestinationMode::Logical
        } else {
            DestinationMode::Physical
        },
        level_assert: low & ICR_LEVEL_ASSERT != 0,
        trigger_mode: if low & TRIGGER_LEVEL != 0 {
            TriggerMode::Level
        } else {
            TriggerMode::Edge
        },
        shorthand: Shorthand::from_icr(low),
        destination,
    }
}

/// Bits of the 64-bit ICR that hold the upper word.
const ICR_HIGH_SHIFT: u32 = 32;

impl Ipi {
    /// Decodes an xAPIC ICR: `low` is offset 0x300, `high` offset 0x310
    /// (destination in bits 31:24).
    ///
    /// ```
    /// use vm_lapic::{DeliveryMode, Ipi};
    ///
    /// let ipi = Ipi::from_xapic(0x0000_4040, 0x0200_0000); // fixed 0x40 to APIC ID 2
    /// assert_eq!((ipi.vector, ipi.delivery_mode, ipi.destination), (0x40, DeliveryMode::Fixed, 2));
    /// ```
    pub fn from_xapic(low: u32, high: u32) -> Self {
        decode_low(low, high >> ICR_XAPIC_DEST_SHIFT)
    }

    /// Decodes a 64-bit ICR written in xAPIC mode through the Hyper-V
    /// synthetic ICR: destination in bits 63:56.
    pub fn from_xapic_u64(icr: u64) -> Self {
        // Truncation splits the 64-bit value into its halves.
        Self::from_xapic(icr as u32, (icr >> ICR_HIGH_SHIFT) as u32)
    }

    /// Decodes a 64-bit x2APIC ICR: destination in bits 63:32.
    ///
    /// ```
    /// use vm_lapic::{DeliveryMode, Ipi};
    ///
    /// let ipi = Ipi::from_x2apic(0x0000_0101_0000_4500); // INIT to x2APIC ID 0x101
    /// assert_eq!((ipi.delivery_mode, ipi.destination), (DeliveryMode::Init, 0x101));
    /// assert_eq!(ipi.to_x2apic(), 0x0000_0101_0000_4500);
    /// ```
    pub fn from_x2apic(icr: u64) -> Self {
        // Truncation splits the 64-bit value into its halves.
        decode_low(icr as u32, (icr >> ICR_HIGH_SHIFT) as u32)
    }

    /// The low 32 bits of the ICR that encode this IPI (delivery status 0).
    pub fn icr_low(&self) -> u32 {
        let mut low =
            u32::from(self.vector) | self.delivery_mode.to_reg() | self.shorthand.to_icr();
        if self.destination_mode == DestinationMode::Logical {
            low |= ICR_DEST_LOGICAL;
        }
        if self.level_assert {
            low |= ICR_LEVEL_ASSERT;
        }
        if self.trigger_mode == TriggerMode::Level {
            low |= TRIGGER_LEVEL;
        }
        low
    }

    /// Encodes for an xAPIC: `(low, high)`; the destination is truncated to
    /// 8 bits.
    pub fn to_xapic(&self) -> (u32, u32) {
        (
            self.icr_low(),
            (self.destination & 0xFF) << ICR_XAPIC_DEST_SHIFT,
        )
    }

    /// Encodes as a 64-bit x2APIC ICR.
    pub fn to_x2apic(&self) -> u64 {
        u64::from(self.icr_low()) | (u64::from(self.destination) << ICR_HIGH_SHIFT)
    }

    /// The message each target receives.
    pub fn interrupt(&self) -> Interrupt {
        Interrupt {
            vector: self.vector,
            delivery_mode: self.delivery_mode,
            trigger_mode: self.trigger_mode,
            level_assert: self.level_assert,
        }
    }

    /// The destination to resolve.
    pub fn destination(&self) -> Destination {
        Destination {
            mode: self.destination_mode,
            shorthand: self.shorthand,
            id: self.destination,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xapic_layout() {
        // Fixed, logical, assert, all-excluding-self, vector 0x40, dest 0x0F.
        let ipi = Ipi::from_xapic(0x000C_4840, 0x0F00_0000);
        assert_eq!(ipi.vector, 0x40);
        assert_eq!(ipi.delivery_mode, DeliveryMode::Fixed);
        assert_eq!(ipi.destination_mode, DestinationMode::Logical);
        assert!(ipi.level_assert);
        assert_eq!(ipi.shorthand, Shorthand::AllExcludingSelf);
        assert_eq!(ipi.destination, 0x0F);
        assert_eq!(ipi.to_xapic(), (0x000C_4840, 0x0F00_0000));
        // The xAPIC 64-bit form takes bits 63:56 only.
        let u = Ipi::from_xapic_u64(0x0F12_3456_0000_4840);
        assert_eq!(u.destination, 0x0F);
    }

    #[test]
    fn x2apic_layout() {
        let ipi = Ipi::from_x2apic(0x0000_1234_0000_0530);
        assert_eq!(ipi.destination, 0x1234);
        assert_eq!(ipi.delivery_mode, DeliveryMode::Init);
        assert_eq!(ipi.vector, 0x30);
        assert!(!ipi.level_assert);
        assert_eq!(ipi.to_x2apic(), 0x0000_1234_0000_0530);
    }

    #[test]
    fn every_delivery_mode_round_trips() {
        for code in 0..8u32 {
            let mode = DeliveryMode::from_reg(code << 8);
            assert_eq!(mode.to_reg(), code << 8);
        }
    }
}
