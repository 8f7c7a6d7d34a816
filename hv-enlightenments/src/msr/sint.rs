//! The interrupt a SINT raises on its VP when a message, an event or a
//! synthetic timer's expiry lands on it.

use super::index::HV_SINT_COUNT;
use super::values::SintMsr;

/// An interrupt the VMM raises on the VP whose SynIC took a message or an
/// event: fixed delivery, edge, to that VP itself (KVM `synic_set_irq`:
/// shorthand self, `APIC_DM_FIXED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SintInterrupt {
    /// The SINT, 0..=15.
    pub sint: u8,
    /// SINTx.vector, 16..=255.
    pub vector: u8,
    /// SINTx.AutoEOI: the local APIC acknowledges it without setting ISR
    /// (KVM `kvm_apic_ack_interrupt` with `auto_eoi_bitmap`).
    pub auto_eoi: bool,
}

impl SintInterrupt {
    /// The interrupt SINT `sint` raises, or `None` while it is masked.
    pub fn of(sint: u8, value: SintMsr) -> Option<Self> {
        (!value.masked()).then_some(Self {
            sint,
            vector: value.vector(),
            auto_eoi: value.auto_eoi(),
        })
    }
}

/// Up to one interrupt per SINT, from a pass over every SINT. Fixed size:
/// no allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SintInterrupts {
    list: [Option<SintInterrupt>; HV_SINT_COUNT],
}

impl SintInterrupts {
    /// Records `irq` (one per SINT; a later one for the same SINT wins).
    pub fn push(&mut self, irq: SintInterrupt) {
        if let Some(slot) = self.list.get_mut(usize::from(irq.sint)) {
            *slot = Some(irq);
        }
    }

    /// The interrupts, by ascending SINT.
    pub fn iter(&self) -> impl Iterator<Item = SintInterrupt> + '_ {
        self.list.iter().flatten().copied()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.iter().all(Option::is_none)
    }
}
