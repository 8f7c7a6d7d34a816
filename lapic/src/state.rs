//! Snapshot to and from KVM's `struct kvm_lapic_state`: the 1 KiB register
//! page (`regs[KVM_APIC_REG_SIZE]`) with each register at its xAPIC offset,
//! so state can move between this model and KVM's in-kernel LAPIC.
//!
//! ID layout caveat (KVM `kvm_apic_state_fixup`): in x2APIC mode KVM
//! stores the 32-bit x2APIC ID unshifted at offset 0x20 only if userspace
//! enabled `KVM_CAP_X2APIC_API` ([`IdFormat::X2ApicApi`]); otherwise it
//! reports `x2apic_id << 24` and ignores the value on restore
//! ([`IdFormat::Legacy`]). In x2APIC mode the 64-bit ICR is split into
//! 0x300 (low) and 0x310 (the full high word), and the LDR is recomputed
//! from the ID on restore. IA32_APIC_BASE and IA32_TSC_DEADLINE are MSRs,
//! not part of the page: restore IA32_APIC_BASE first (host-initiated),
//! then the page, then IA32_TSC_DEADLINE.

use crate::apic::LocalApic;
use crate::mode::ApicMode;
use crate::regs::*;
use crate::topology::ApicIdentity;
use crate::vector::{REGS_PER_BITMAP, VectorBitmap};

/// Size of `kvm_lapic_state` (`KVM_APIC_REG_SIZE`).
pub const LAPIC_STATE_SIZE: usize = 1024;

/// How the APIC ID is laid out at offset 0x20 in x2APIC mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdFormat {
    /// Without `KVM_CAP_X2APIC_API`: `id << 24`; ignored on restore.
    Legacy,
    /// With `KVM_CAP_X2APIC_API`: the 32-bit x2APIC ID; a mismatch is
    /// refused on restore.
    X2ApicApi,
}

/// A snapshot this APIC cannot take.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The x2APIC ID in the page is not this APIC's.
    #[error("x2APIC ID {found:#x} in the snapshot is not this APIC's {expected:#x}")]
    IdMismatch {
        /// This APIC's ID.
        expected: u32,
        /// The ID in the page.
        found: u32,
    },
}

fn get(page: &[u8; LAPIC_STATE_SIZE], reg: u32) -> u32 {
    let at = reg as usize;
    page.get(at..at + REG_WIDTH)
        .and_then(|b| <[u8; REG_WIDTH]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes)
}

fn put(page: &mut [u8; LAPIC_STATE_SIZE], reg: u32, value: u32) {
    let at = reg as usize;
    if let Some(b) = page.get_mut(at..at + REG_WIDTH) {
        b.copy_from_slice(&value.to_le_bytes());
    }
}

fn get_bitmap(page: &[u8; LAPIC_STATE_SIZE], base: u32) -> VectorBitmap {
    let mut b = VectorBitmap::EMPTY;
    for i in 0..REGS_PER_BITMAP {
        b.set_reg32(i, get(page, base + i as u32 * REG_ALIGN));
    }
    b
}

/// Registers copied verbatim from the model's register view.
const PLAIN_REGS: [u32; 14] = [
    LVR,
    TPR,
    PPR,
    LDR,
    DFR,
    SVR,
    ESR,
    ICR_LOW,
    ICR_HIGH,
    TIMER_INITIAL,
    TIMER_CURRENT,
    TIMER_DIVIDE,
    APR,
    LVT_CMCI,
];

impl LocalApic {
    /// The register page KVM's `KVM_GET_LAPIC` would return for this state.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, IdFormat, Interrupt, LocalApic, ManualClock};
    ///
    /// let clock = Arc::new(ManualClock::new(0));
    /// let mut apic = LocalApic::new(Config::new(0), clock.clone())?;
    /// let _ = apic.write_mmio(0xF0, &0x1FFu32.to_le_bytes()); // SVR: software enable
    /// let _ = apic.deliver(&Interrupt::fixed(0x40));
    /// let page = apic.save_state(IdFormat::X2ApicApi); // kvm_lapic_state.regs
    ///
    /// // Migrate: a fresh APIC with the same configuration takes the page.
    /// let mut copy = LocalApic::new(Config::new(0), clock)?;
    /// let identity = copy.restore_state(&page, IdFormat::X2ApicApi)?;
    /// assert!(identity.software_enabled);
    /// assert_eq!(copy.pending(), Some(0x40));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_state(&self, format: IdFormat) -> [u8; LAPIC_STATE_SIZE] {
        let mut page = [0u8; LAPIC_STATE_SIZE];
        let id = match (self.mode(), format) {
            (ApicMode::X2Apic, IdFormat::X2ApicApi) => self.config().apic_id,
            (ApicMode::X2Apic, IdFormat::Legacy) => self.config().apic_id << XAPIC_ID_SHIFT,
            _ => self.raw_reg(ID),
        };
        put(&mut page, ID, id);
        for reg in PLAIN_REGS {
            put(&mut page, reg, self.raw_reg(reg));
        }
        for l in Lvt::ALL {
            put(&mut page, l.reg(), self.raw_reg(l.reg()));
        }
        for i in 0..REGS_PER_BITMAP {
            let off = i as u32 * REG_ALIGN;
            put(&mut page, ISR + off, self.isr().reg32(i));
            put(&mut page, TMR + off, self.tmr().reg32(i));
            put(&mut page, IRR + off, self.irr().reg32(i));
        }
        page
    }

    /// Loads a register page from KVM's `KVM_GET_LAPIC` (or
    /// [`LocalApic::save_state`]) into this APIC, keeping its current mode.
    /// Returns the identity for [`crate::Topology::update`]; re-arm the host
    /// timer from [`LocalApic::next_deadline`]. Reserved bits are dropped,
    /// never trusted.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, IdFormat, LocalApic, ManualClock, LAPIC_STATE_SIZE};
    ///
    /// let mut apic = LocalApic::new(Config::new(0), Arc::new(ManualClock::new(0)))?;
    /// let mut page = [0u8; LAPIC_STATE_SIZE];
    /// page[0x80] = 0x20; // TPR
    /// page[0xF0..0xF4].copy_from_slice(&0x1FFu32.to_le_bytes()); // SVR
    /// apic.restore_state(&page, IdFormat::Legacy)?;
    /// assert_eq!((apic.tpr(), apic.software_enabled()), (0x20, true));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn restore_state(
        &mut self,
        page: &[u8; LAPIC_STATE_SIZE],
        format: IdFormat,
    ) -> Result<ApicIdentity, Error> {
        let raw_id = get(page, ID);
        let xapic_id = if self.mode() == ApicMode::X2Apic {
            if format == IdFormat::X2ApicApi && raw_id != self.config().apic_id {
                return Err(Error::IdMismatch {
                    expected: self.config().apic_id,
                    found: raw_id,
                });
            }
            self.config().apic_id
        } else {
            raw_id >> XAPIC_ID_SHIFT
        };
        let mut lvt = [0u32; LVT_COUNT];
        for l in Lvt::ALL {
            lvt[l as usize] = get(page, l.reg());
        }
        Ok(self.restore_raw(
            xapic_id,
            get(page, TPR),
            get(page, LDR),
            get(page, DFR),
            get(page, SVR),
            get(page, ESR),
            (get(page, ICR_LOW), get(page, ICR_HIGH)),
            lvt,
            (
                get_bitmap(page, ISR),
                get_bitmap(page, TMR),
                get_bitmap(page, IRR),
            ),
            (
                get(page, TIMER_INITIAL),
                get(page, TIMER_CURRENT),
                get(page, TIMER_DIVIDE),
            ),
        ))
    }
}
