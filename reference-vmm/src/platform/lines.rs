//! How platform devices reach the rest of the VMM: MSI messages, VM stop
//! requests and interrupt lines into the IOAPIC.

use std::sync::Arc;

use super::ioapic::Ioapic;

// The MSI message format (Intel SDM vol. 3, 11.11.1 and 11.11.2), shared by
// the IOAPIC that produces messages and the VMM paths that consume them.
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

/// Why the guest asked the VM to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// isa-debug-exit: `(value << 1) | 1`, as QEMU's exit status.
    DebugExit(u32),
    /// ACPI S5 through PM1a_CNT.SLP_EN.
    PowerOff,
    /// Reset through the reset register at 0xCF9.
    Reset,
}

/// Stops the VM on the guest's request.
pub trait VmStop: Send + Sync {
    /// Requests the stop; the VMM decides how and when its vCPUs leave.
    fn stop(&self, reason: StopReason);
}

/// How a device drives its IOAPIC pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// Every interrupt is a rising edge (the pin is pulsed).
    Edge,
    /// The device holds the pin at a level ([`IrqLine::set_level`]).
    Level,
}

/// One device interrupt output wired to an IOAPIC pin.
#[derive(Clone)]
pub struct IrqLine {
    ioapic: Arc<Ioapic>,
    pin: usize,
    kind: LineKind,
}

impl IrqLine {
    /// Wires an output to `pin` of `ioapic` (pins past the last are ignored
    /// by the IOAPIC).
    pub fn new(ioapic: Arc<Ioapic>, pin: usize, kind: LineKind) -> Self {
        Self { ioapic, pin, kind }
    }

    /// The IOAPIC pin.
    pub fn pin(&self) -> usize {
        self.pin
    }

    /// Signals one interrupt: a pulse on an edge line, an assertion on a
    /// level line.
    pub fn signal(&self) {
        match self.kind {
            LineKind::Edge => self.ioapic.pulse(self.pin),
            LineKind::Level => self.ioapic.set_irq(self.pin, true),
        }
    }

    /// Drives a level line (on an edge line, `true` pulses).
    pub fn set_level(&self, level: bool) {
        match self.kind {
            LineKind::Edge if level => self.ioapic.pulse(self.pin),
            LineKind::Edge => {}
            LineKind::Level => self.ioapic.set_irq(self.pin, level),
        }
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.signal();
        Ok(())
    }
}
