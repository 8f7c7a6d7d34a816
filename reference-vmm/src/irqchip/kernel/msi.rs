//! MSI messages for `KVM_SIGNAL_MSI` with `KVM_CAP_X2APIC_API`: 32-bit
//! destination IDs split between the address and `address_hi`, Linux's
//! extended destination ID re-encoded (the format itself is
//! [`crate::platform::msi`]'s).

use kvm_bindings::kvm_msi;
use lapic::DeliveryMode;

use crate::platform::msi::{
    MSI_ADDR_DEST_MODE_LOGICAL, MSI_ADDR_DEST_SHIFT, MSI_ADDRESS_BASE, msi_destination, msi_logical,
};

/// The MSI address that names x2APIC ID `apic_id` (physical mode) in the
/// `KVM_CAP_X2APIC_API` format: ID bits 7:0 in address bits 19:12, ID bits
/// 31:8 in `address_hi` bits 31:8 (KVM api.rst, KVM_SIGNAL_MSI).
pub const fn msi_address(apic_id: u32) -> u64 {
    ((apic_id & 0xFFFF_FF00) as u64) << 32
        | MSI_ADDRESS_BASE
        | (((apic_id & 0xFF) as u64) << MSI_ADDR_DEST_SHIFT)
}

/// The `kvm_msi` for an MSI message, the destination re-encoded in the
/// X2APIC_API format (an extended-ID message becomes the same 32-bit ID).
pub fn kvm_msi_for(address: u64, data: u32) -> kvm_msi {
    let id = msi_destination(address);
    let logical = if msi_logical(address) {
        MSI_ADDR_DEST_MODE_LOGICAL
    } else {
        0
    };
    let a = msi_address(id) | logical | (address & 0xF & !MSI_ADDR_DEST_MODE_LOGICAL);
    kvm_msi {
        address_lo: a as u32,
        address_hi: (a >> 32) as u32,
        data,
        ..Default::default()
    }
}

/// The MSI data word of an edge-triggered interrupt: the delivery mode
/// sits in bits 10:8 as in the ICR (`DeliveryMode::to_reg`).
pub fn msi_data(vector: u8, mode: DeliveryMode) -> u32 {
    u32::from(vector) | mode.to_reg()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msi_encoding_of_x2apic_ids() {
        assert_eq!(msi_address(0), 0xFEE0_0000);
        assert_eq!(msi_address(5), 0xFEE0_5000);
        assert_eq!(msi_address(0xFF), 0xFEEF_F000);
        // ID 300 = 0x12C: low byte 0x2C in bits 19:12, 0x100 in address_hi.
        let a = msi_address(300);
        assert_eq!(a as u32, 0xFEE2_C000);
        assert_eq!((a >> 32) as u32, 0x100);
        let k = kvm_msi_for(a, 0x40);
        assert_eq!(
            (k.address_lo, k.address_hi, k.data),
            (0xFEE2_C000, 0x100, 0x40)
        );
        assert_eq!(k.address_hi & 0xFF, 0, "KVM rejects low address_hi bits");
        for id in [0u32, 1, 254, 255, 256, 300, 4095, 0x00AB_CDEF] {
            assert_eq!(msi_destination(msi_address(id)), id);
        }
    }

    #[test]
    fn extended_destination_ids_are_re_encoded() {
        // Linux's extended ID: bits 14:8 of the ID in address bits 11:5.
        let id = 0x1_23u32;
        let ext = MSI_ADDRESS_BASE | (0x23 << 12) | (0x1 << 5);
        assert_eq!(msi_destination(ext), id);
        let k = kvm_msi_for(ext | MSI_ADDR_DEST_MODE_LOGICAL, 0x31);
        assert_eq!(
            k.address_lo,
            0xFEE2_3000 | MSI_ADDR_DEST_MODE_LOGICAL as u32
        );
        assert_eq!(k.address_hi, 0x100);
    }

    #[test]
    fn msi_data_modes() {
        assert_eq!(msi_data(0xF0, DeliveryMode::Fixed), 0xF0);
        assert_eq!(msi_data(0x20, DeliveryMode::Nmi), 0x420);
        assert_eq!(msi_data(0x20, DeliveryMode::LowestPriority), 0x120);
    }
}
