//! Fuzzes the platform devices with guest-controlled port I/O and MMIO
//! accesses through the buses, plus pin events on the IOAPIC.
//!
//! Input: a sequence of 12-byte records
//! `{kind: u8, address selector: u8, offset: u8, size: u8, value: u64 LE}`
//! where `kind` picks PIO read/write, MMIO read/write, a pin event or an EOI.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use reference_vmm::platform::console::Console;
use reference_vmm::platform::lines::{StopReason, VmStop};
use reference_vmm::platform::msi::MsiSink;
use reference_vmm::platform::{Platform, PlatformConfig};
use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};

struct Nothing;

impl MsiSink for Nothing {
    fn send_msi(&self, _address: u64, _data: u32) {}
}

impl VmStop for Nothing {
    fn stop(&self, _reason: StopReason) {}
}

/// Port bases the selector picks from (each access adds `offset % 16`).
/// 0x2000 and 0x2010: pc-testdev's IRQ lines; 0xE8: its scratch register.
const PIO_BASES: [u16; 9] = [
    0x3F8, 0x510, 0xF4, 0x600, 0xCF9, 0x500, 0x2000, 0x2010, 0xE8,
];
const MMIO_BASE: u64 = 0xFEC0_0000;
const RECORD: usize = 12;

fuzz_target!(|data: &[u8]| {
    let sink = Arc::new(Nothing);
    let platform = Platform::new(PlatformConfig {
        vcpus: 2,
        ram_size: 64 << 20,
        msi: sink.clone(),
        stop: sink,
        console: Console::default(),
    });
    let _ = platform.fw_cfg().add_file("etc/fuzz", vec![1, 2, 3]);
    let mut io = IoManager::new();
    if platform.register(&mut io).is_err() {
        return;
    }
    for r in data.chunks_exact(RECORD) {
        let (kind, sel, offset, size) = (r[0], r[1], r[2], usize::from(r[3] % 9));
        let mut v = [0u8; 8];
        v.copy_from_slice(&r[4..12]);
        let value = u64::from_le_bytes(v);
        let port =
            PioAddress(PIO_BASES[usize::from(sel) % PIO_BASES.len()] + u16::from(offset % 16));
        let mmio_addr = MmioAddress(MMIO_BASE + u64::from(sel) * 4 + u64::from(offset % 4));
        let mut buf = [0u8; 8];
        match kind % 6 {
            // A miss (nothing there, an access past a device's end, size
            // 0) is the VMM's all-ones or dropped write: nothing to check.
            0 => {
                let _ = io.pio_read(port, &mut buf[..size]);
            }
            1 => {
                let _ = io.pio_write(port, &value.to_le_bytes()[..size]);
            }
            2 => {
                let _ = io.mmio_read(mmio_addr, &mut buf[..size]);
            }
            3 => {
                let _ = io.mmio_write(mmio_addr, &value.to_le_bytes()[..size]);
            }
            4 => platform.ioapic().set_irq(usize::from(sel), value & 1 != 0),
            _ => platform.ioapic().end_of_interrupt(value as u8),
        }
    }
});
