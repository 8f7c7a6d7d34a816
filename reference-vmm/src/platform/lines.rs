//! How platform devices reach the rest of the VMM: VM stop requests and
//! interrupt lines into the IOAPIC (MSI messages: [`super::msi`]).

use std::sync::Arc;

use super::ioapic::Ioapic;

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
