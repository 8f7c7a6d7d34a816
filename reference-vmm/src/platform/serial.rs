//! COM1: a 16550A UART (vm-superio's `Serial`) at port 0x3F8 whose
//! interrupt is IOAPIC pin 4 and whose output goes to a [`Console`].

use std::sync::{Mutex, MutexGuard};

use vm_device::DevicePio;
use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_superio::serial::NoEvents;

use super::console::Console;
use super::lines::IrqLine;

/// COM1 base port.
pub const COM1_PORT: u16 = 0x3F8;
/// Ports of a 16550.
pub const COM1_LEN: u16 = 8;
/// IOAPIC pin of COM1 (ISA IRQ 4, identity-mapped).
pub const COM1_PIN: usize = 4;

/// A 16550A UART on the port I/O bus.
pub struct Serial {
    uart: Mutex<vm_superio::Serial<IrqLine, NoEvents, Console>>,
}

impl Serial {
    /// A UART interrupting through `irq`, writing to `console`.
    pub fn new(irq: IrqLine, console: Console) -> Self {
        Self {
            uart: Mutex::new(vm_superio::Serial::new(irq, console)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, vm_superio::Serial<IrqLine, NoEvents, Console>> {
        self.uart.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues input for the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&self, input: &[u8]) -> usize {
        let mut uart = self.lock();
        let room = uart.fifo_capacity().min(input.len());
        match uart.enqueue_raw_bytes(input.get(..room).unwrap_or_default()) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial input dropped: {e:?}");
                0
            }
        }
    }
}

impl DevicePio for Serial {
    /// Byte reads of the 8 registers; wider reads return the register at
    /// `offset` in the first byte and 0 in the rest.
    fn pio_read(&self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        data.fill(0);
        if offset >= COM1_LEN {
            return;
        }
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.lock().read(off);
        }
    }

    /// Byte writes; only the first byte of a wider write is used.
    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        if offset >= COM1_LEN {
            return;
        }
        if let (Some(&value), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.lock().write(off, value) {
                log::debug!("serial write: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ioapic::Ioapic;
    use super::super::ioapic::tests::{Recorder, wr};
    use super::super::lines::LineKind;
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    const IER: u16 = 1;
    const IER_THR_EMPTY: u8 = 0x02;

    fn setup() -> (Arc<Recorder>, Arc<Ioapic>, Console, Serial) {
        let rec = Arc::new(Recorder::default());
        let io = Arc::new(Ioapic::new(rec.clone()));
        let console = Console::default();
        let s = Serial::new(
            IrqLine::new(io.clone(), COM1_PIN, LineKind::Edge),
            console.clone(),
        );
        (rec, io, console, s)
    }

    fn write(s: &Serial, offset: u16, data: &[u8]) {
        s.pio_write(PioAddress(COM1_PORT), offset, data);
    }

    fn read(s: &Serial, offset: u16, data: &mut [u8]) {
        s.pio_read(PioAddress(COM1_PORT), offset, data);
    }

    #[test]
    fn output_reaches_console_and_thr_empty_raises_pin_4() {
        let (rec, io, console, s) = setup();
        // Unmask pin 4, vector 0x24, edge.
        wr(&io, 0x10 + 2 * COM1_PIN as u32, 0x24);
        for b in b"hi\n" {
            write(&s, 0, &[*b]);
        }
        assert_eq!(console.contents(), "hi\n");
        assert!(rec.take().is_empty(), "IER is 0");
        write(&s, IER, &[IER_THR_EMPTY]);
        assert_eq!(rec.take(), vec![(0xFEE0_0000, 0x24)]);
        // Reading IIR acknowledges THR empty; the next byte raises it again.
        let mut iir = [0u8];
        read(&s, 2, &mut iir);
        assert_eq!(iir[0] & 0x0F, 0x02);
        write(&s, 0, b"x");
        assert_eq!(rec.take().len(), 1);
    }

    #[test]
    fn input_is_readable() {
        let (_, _, _, s) = setup();
        assert_eq!(s.enqueue_input(b"ok"), 2);
        // The FIFO holds 64 bytes: one past it is refused.
        assert_eq!(s.enqueue_input(&[b'z'; 63]), 62);
        let mut b = [0u8];
        read(&s, 0, &mut b);
        assert_eq!(b[0], b'o');
        let mut wide = [0xFFu8; 4];
        read(&s, COM1_LEN, &mut wide);
        assert_eq!(wide, [0; 4], "past the last port");
    }

    proptest! {
        #[test]
        fn arbitrary_accesses_never_panic(
            ops in prop::collection::vec((0u16..16, 0usize..5, any::<u32>(), any::<bool>()), 0..300)
        ) {
            let (_, _, _, s) = setup();
            for (off, size, val, is_write) in ops {
                if is_write {
                    write(&s, off, &val.to_le_bytes()[..size.min(4)]);
                } else {
                    let mut b = vec![0u8; size];
                    read(&s, off, &mut b);
                }
            }
        }
    }
}
