//! The port I/O parts of QEMU's `pc-testdev` (`hw/misc/pc-testdev.c`) that
//! kvm-unit-tests style guests drive: one byte port per IOAPIC input to
//! raise and lower interrupt lines, and a 4-byte scratch register.
//!
//! | Ports | What |
//! |---|---|
//! | 0x2000 + n, n < 24 | a byte write drives IOAPIC input n: non-zero raises it, 0 lowers it |
//! | 0xE8..0xEC | 32-bit scratch register, accessed byte by byte (QEMU's `ioport_byte`) |
//!
//! Not provided: QEMU's 0xE0 scratch register (port 0xE0 is this VMM's
//! hypercall page trap, see `guest::abi::HYPERCALL_PORT`), the 0xE4 page
//! flush (an `mprotect` of guest RAM) and the 64 KiB buffer at 0xFF000000.
//!
//! QEMU wires line n to ISA IRQ n; here line n is IOAPIC input n (the MADT
//! has no interrupt source overrides). A line shares its input with any
//! device on the same pin: the last write sets the level, as with QEMU's
//! `qemu_set_irq` on a shared ISA IRQ.
//!
//! Bounds: the line index comes from the bus offset, below [`IRQ_LINES`];
//! accesses wider than one byte to the line ports are dropped (QEMU's
//! `valid.max_access_size = 1`); reads of them return 0 (the region has no
//! read callback); scratch accesses past its 4 bytes are dropped (writes)
//! or read as 0.

use std::sync::Mutex;

use vm_device::DevicePio;
use vm_device::bus::{PioAddress, PioAddressOffset};

use super::lines::IrqLine;

/// First port of the IRQ-line block.
pub const IRQ_LINE_PORT: u16 = 0x2000;
/// IRQ lines (one port each), the IOAPIC's inputs.
pub const IRQ_LINES: u16 = 24;
/// The byte-accessed scratch register.
pub const SCRATCH_PORT: u16 = 0xE8;
/// Width of the scratch register.
pub const SCRATCH_LEN: u16 = 4;

/// The IRQ-line ports at [`IRQ_LINE_PORT`]: offset n drives line n.
pub struct IrqLines {
    lines: Vec<IrqLine>,
}

impl IrqLines {
    /// The ports driving `lines` (index n is line n; extra lines past
    /// [`IRQ_LINES`] are never reached by the bus range).
    pub fn new(lines: Vec<IrqLine>) -> Self {
        Self { lines }
    }
}

impl DevicePio for IrqLines {
    /// The ports have no read side: 0.
    fn pio_read(&self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        data.fill(0);
    }

    /// A one-byte write sets line `offset` to `value != 0`.
    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let [value] = data else {
            return;
        };
        let Some(line) = self.lines.get(usize::from(offset)) else {
            return;
        };
        line.set_level(*value != 0);
    }
}

/// QEMU's `pc-testdev-ioport-byte`: a 32-bit little-endian register whose
/// bytes are read and written one at a time.
#[derive(Default)]
pub struct Scratch {
    value: Mutex<u32>,
}

impl Scratch {
    /// The register's value.
    pub fn value(&self) -> u32 {
        *self.value.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DevicePio for Scratch {
    fn pio_read(&self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let bytes = self.value().to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::from(offset)
                .checked_add(i)
                .and_then(|o| bytes.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let mut v = self.value.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = v.to_le_bytes();
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = usize::from(offset)
                .checked_add(i)
                .and_then(|o| bytes.get_mut(o))
            {
                *slot = *b;
            }
        }
        *v = u32::from_le_bytes(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::ioapic::Ioapic;
    use crate::platform::ioapic::tests::{Recorder, wr};
    use crate::platform::lines::LineKind;
    use std::sync::Arc;

    /// IOAPIC redirection table index of pin 0 (82093AA 3.2.4).
    const REDTBL: u32 = 0x10;
    /// Redirection entry: level-triggered.
    const RTE_LEVEL: u32 = 1 << 15;
    /// MSI data of a level-triggered, asserted message.
    const MSI_LEVEL: u32 = (1 << 15) | (1 << 14);

    fn setup() -> (Arc<Recorder>, Arc<Ioapic>, IrqLines) {
        let rec = Arc::new(Recorder::default());
        let io = Arc::new(Ioapic::new(rec.clone()));
        let lines = (0..IRQ_LINES as usize)
            .map(|pin| IrqLine::new(io.clone(), pin, LineKind::Level))
            .collect();
        (rec, io, IrqLines::new(lines))
    }

    fn route(io: &Ioapic, pin: u32, low: u32) {
        wr(io, REDTBL + 2 * pin, low);
    }

    fn write(d: &dyn DevicePio, base: u16, offset: u16, data: &[u8]) {
        d.pio_write(PioAddress(base), offset, data);
    }

    fn read(d: &dyn DevicePio, base: u16, offset: u16, data: &mut [u8]) {
        d.pio_read(PioAddress(base), offset, data);
    }

    #[test]
    fn a_byte_write_raises_and_lowers_the_line() {
        let (rec, io, dev) = setup();
        route(&io, 10, 0x50);
        write(&dev, IRQ_LINE_PORT, 10, &[1]);
        assert_eq!(rec.take(), vec![(0xFEE0_0000, 0x50)], "rising edge");
        write(&dev, IRQ_LINE_PORT, 10, &[0xFF]);
        assert!(rec.take().is_empty(), "still high: no edge");
        write(&dev, IRQ_LINE_PORT, 10, &[0]);
        write(&dev, IRQ_LINE_PORT, 10, &[7]);
        assert_eq!(rec.take().len(), 1, "second rising edge");
    }

    #[test]
    fn level_line_holds_until_lowered() {
        let (rec, io, dev) = setup();
        route(&io, 23, RTE_LEVEL | 0x51);
        write(&dev, IRQ_LINE_PORT, 23, &[1]);
        assert_eq!(rec.take(), vec![(0xFEE0_0000, 0x51 | MSI_LEVEL)]);
        io.end_of_interrupt(0x51);
        assert_eq!(rec.take().len(), 1, "still asserted at EOI");
        write(&dev, IRQ_LINE_PORT, 23, &[0]);
        io.end_of_interrupt(0x51);
        assert!(rec.take().is_empty(), "lowered before EOI");
    }

    #[test]
    fn wide_accesses_and_reads_do_nothing() {
        let (rec, io, dev) = setup();
        route(&io, 3, 0x52);
        write(&dev, IRQ_LINE_PORT, 3, &[1, 0]);
        write(&dev, IRQ_LINE_PORT, 3, &[]);
        write(&dev, IRQ_LINE_PORT, IRQ_LINES, &[1]);
        write(&dev, IRQ_LINE_PORT, u16::MAX, &[1]);
        assert!(rec.take().is_empty());
        let mut b = [0xAAu8; 2];
        read(&dev, IRQ_LINE_PORT, 3, &mut b);
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn scratch_is_a_byte_addressed_u32() {
        let s = Scratch::default();
        write(&s, SCRATCH_PORT, 0, &0x1122_3344u32.to_le_bytes());
        write(&s, SCRATCH_PORT, 2, &[0xAB]);
        assert_eq!(s.value(), 0x11AB_3344);
        let mut b = [0u8; 2];
        read(&s, SCRATCH_PORT, 1, &mut b);
        assert_eq!(b, [0x33, 0xAB]);
        // One past the register: dropped, reads 0.
        write(&s, SCRATCH_PORT, 3, &[0xCD, 0xEF]);
        assert_eq!(s.value(), 0xCDAB_3344);
        let mut b = [0xFFu8; 2];
        read(&s, SCRATCH_PORT, SCRATCH_LEN - 1, &mut b);
        assert_eq!(b, [0xCD, 0]);
        read(&s, SCRATCH_PORT, u16::MAX, &mut b);
        assert_eq!(b, [0, 0]);
    }
}
