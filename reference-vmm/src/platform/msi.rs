//! The MSI message format (Intel SDM vol. 3, 11.11.1 and 11.11.2) and the
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
/// Data bit 14: level asserted.
pub const MSI_DATA_LEVEL_ASSERT: u32 = 1 << 14;
/// Data bit 15: level-triggered.
pub const MSI_DATA_TRIGGER_LEVEL: u32 = 1 << 15;

/// Receives MSI-format messages (from the IOAPIC or a device).
pub trait MsiSink: Send + Sync {
    /// Delivers the message `data` written to `address` (Intel SDM vol. 3,
    /// 11.11 "Message Signalled Interrupts").
    fn send_msi(&self, address: u64, data: u32);
}
