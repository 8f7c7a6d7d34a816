//! The MSI message format (Intel SDM vol. 3, 11.11.1 and 11.11.2), its
//! decoding (destination ID, destination mode, INIT de-assert) and the
//! sink messages go to. Shared by the IOAPIC, which produces messages, and
//! the VMM paths that consume them; it depends on no device, so the
//! arrows stay one-way (`ioapic` -> `msi`, `lines` -> `ioapic`).

/// Address bits 31:20: the fixed 0xFEE.
pub const MSI_ADDRESS_BASE: u64 = 0xFEE0_0000;
/// Address bits 19:12: destination ID (its low 8 bits).
pub const MSI_ADDR_DEST_SHIFT: u32 = 12;
/// Address bits 11:5: extended destination ID (ID bits 14:8), the encoding
/// of Linux's `X86_FEATURE_MSI_EXT_DEST_ID`.
pub const MSI_ADDR_EXT_DEST_SHIFT: u32 = 5;
/// Address bit 2: logical destination mode.
pub const MSI_ADDR_DEST_MODE_LOGICAL: u64 = 1 << 2;
/// Data bits 10:8: delivery mode.
pub const MSI_DATA_DELIVERY_SHIFT: u32 = 8;
/// Data bits 10:8 once shifted down.
const MSI_DATA_DELIVERY_MASK: u32 = 0x7;
/// Delivery mode INIT (101b).
const MSI_DELIVERY_INIT: u32 = 0b101;
/// Data bit 14: level asserted.
pub const MSI_DATA_LEVEL_ASSERT: u32 = 1 << 14;
/// Data bit 15: level-triggered.
pub const MSI_DATA_TRIGGER_LEVEL: u32 = 1 << 15;

/// The destination ID an MSI address names: bits 19:12, the extended ID
/// in bits 11:5 (bits 14:8 of the ID), or the X2APIC_API high word (bits
/// 31:8 of the ID).
pub const fn msi_destination(address: u64) -> u32 {
    let low = ((address >> MSI_ADDR_DEST_SHIFT) & 0xFF) as u32;
    let ext = ((address >> MSI_ADDR_EXT_DEST_SHIFT) & 0x7F) as u32;
    let hi = ((address >> 32) as u32) & 0xFFFF_FF00;
    low | (ext << 8) | hi
}

/// Whether an MSI address selects logical destination mode.
pub const fn msi_logical(address: u64) -> bool {
    address & MSI_ADDR_DEST_MODE_LOGICAL != 0
}

/// Whether an MSI data word is an INIT level de-assert: a no-op on the
/// P4 and later (SDM 10.6.1), which KVM's `kvm_set_msi_irq` would deliver
/// as an INIT because it asserts every MSI.
pub const fn is_init_deassert(data: u32) -> bool {
    (data >> MSI_DATA_DELIVERY_SHIFT) & MSI_DATA_DELIVERY_MASK == MSI_DELIVERY_INIT
        && data & MSI_DATA_TRIGGER_LEVEL != 0
        && data & MSI_DATA_LEVEL_ASSERT == 0
}

/// Receives MSI-format messages (from the IOAPIC or a device).
pub trait MsiSink: Send + Sync {
    /// Delivers the message `data` written to `address` (Intel SDM vol. 3,
    /// 11.11 "Message Signalled Interrupts").
    fn send_msi(&self, address: u64, data: u32);
}
