//! The PC platform devices of an external guest: IOAPIC, COM1, fw_cfg,
//! the exit/power ports, QEMU's pc-testdev ports and the ACPI tables
//! describing them.
//!
//! Every device is a plain state machine behind vm-device's
//! [`DevicePio`] or [`DeviceMmio`](vm_device::DeviceMmio)
//! (`&self`: each keeps its state behind its own lock, as other threads
//! reach it too: COM1 input, IOAPIC pins and EOIs); none knows KVM.
//! [`Platform::register`] puts them on an [`IoManager`]. Interrupts leave
//! through [`msi::MsiSink`] and stop requests through [`lines::VmStop`],
//! which the VMM implements.
//!
//! | What | Where |
//! |---|---|
//! | isa-debug-exit | PIO 0xF4, 4 bytes |
//! | COM1 (16550A), IOAPIC pin 4 | PIO 0x3F8, 8 bytes |
//! | fw_cfg selector / data | PIO 0x510 / 0x511 |
//! | ACPI PM1a_EVT / PM1a_CNT / PM_TMR | PIO 0x600 / 0x604 / 0x608 |
//! | reset register | PIO 0xCF9 |
//! | pc-testdev IRQ lines 0..23 (IOAPIC inputs) | PIO 0x2000, 24 bytes |
//! | pc-testdev byte scratch register | PIO 0xE8, 4 bytes |
//! | IOAPIC | MMIO 0xFEC00000, 4 KiB |
//! | ACPI tables (RSDP first) | RAM 0xE0000..0x100000 |

pub mod acpi;
pub mod console;
pub mod exit_port;
pub mod fw_cfg;
pub mod ioapic;
pub mod lines;
pub mod msi;
pub mod serial;
pub mod testdev;

use std::sync::Arc;

use vm_device::DevicePio;
use vm_device::bus::{MmioAddress, MmioRange, PioAddress, PioRange};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_memory::GuestMemoryMmap;

use console::Console;
use exit_port::{AcpiPm, DebugExit, ResetPort};
use fw_cfg::FwCfg;
use ioapic::Ioapic;
use lines::{IrqLine, LineKind, VmStop};
use msi::MsiSink;
use serial::Serial;
use testdev::{IrqLines, Scratch};

/// Errors of the platform.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A device range is taken (or empty) on a bus.
    #[error("registering a platform device: {0}")]
    Bus(#[from] vm_device::bus::Error),
    /// The ACPI tables could not be built or written.
    #[error(transparent)]
    Acpi(#[from] acpi::Error),
    /// A fw_cfg file could not be added.
    #[error(transparent)]
    FwCfg(#[from] fw_cfg::Error),
}

/// What the platform is built for.
#[derive(Clone)]
pub struct PlatformConfig {
    /// vCPUs (APIC IDs 0..vcpus).
    pub vcpus: u32,
    /// Guest RAM size in bytes (reported by fw_cfg).
    pub ram_size: u64,
    /// Where IOAPIC interrupts go.
    pub msi: Arc<dyn MsiSink>,
    /// Where stop requests go.
    pub stop: Arc<dyn VmStop>,
    /// Where COM1 output goes.
    pub console: Console,
}

/// All platform devices of one VM.
pub struct Platform {
    vcpus: u32,
    ioapic: Arc<Ioapic>,
    serial: Arc<Serial>,
    fw_cfg: Arc<FwCfg>,
    debug_exit: Arc<DebugExit>,
    pm: Arc<AcpiPm>,
    reset: Arc<ResetPort>,
    irq_lines: Arc<IrqLines>,
    scratch: Arc<Scratch>,
    console: Console,
}

impl Platform {
    /// Creates the devices (not yet on any bus).
    pub fn new(cfg: PlatformConfig) -> Self {
        let ioapic = Arc::new(Ioapic::new(cfg.msi));
        let irq = IrqLine::new(ioapic.clone(), serial::COM1_PIN, LineKind::Edge);
        let cpus = u16::try_from(cfg.vcpus).unwrap_or(u16::MAX);
        let lines = (0..testdev::IRQ_LINES as usize)
            .map(|pin| IrqLine::new(ioapic.clone(), pin, LineKind::Level))
            .collect();
        Self {
            vcpus: cfg.vcpus,
            serial: Arc::new(Serial::new(irq, cfg.console.clone())),
            fw_cfg: Arc::new(FwCfg::new(cfg.ram_size, cpus)),
            debug_exit: Arc::new(DebugExit::new(cfg.stop.clone())),
            pm: Arc::new(AcpiPm::new(cfg.stop.clone())),
            reset: Arc::new(ResetPort::new(cfg.stop)),
            irq_lines: Arc::new(IrqLines::new(lines)),
            scratch: Arc::new(Scratch::default()),
            ioapic,
            console: cfg.console,
        }
    }

    /// Puts COM1, fw_cfg, the exit/power ports and the pc-testdev ports on
    /// the PIO bus of `io` and the IOAPIC on its MMIO bus.
    pub fn register(&self, io: &mut IoManager) -> Result<(), Error> {
        type Dev = Arc<dyn DevicePio + Send + Sync>;
        let pio_devices: [(u16, u16, Dev); 7] = [
            (serial::COM1_PORT, serial::COM1_LEN, self.serial.clone()),
            (fw_cfg::FW_CFG_PORT, fw_cfg::FW_CFG_LEN, self.fw_cfg.clone()),
            (
                exit_port::DEBUG_EXIT_PORT,
                exit_port::DEBUG_EXIT_LEN,
                self.debug_exit.clone(),
            ),
            (
                exit_port::PM1A_EVT_PORT,
                exit_port::PM_BLOCK_LEN,
                self.pm.clone(),
            ),
            (exit_port::RESET_PORT, 1, self.reset.clone()),
            (
                testdev::IRQ_LINE_PORT,
                testdev::IRQ_LINES,
                self.irq_lines.clone(),
            ),
            (
                testdev::SCRATCH_PORT,
                testdev::SCRATCH_LEN,
                self.scratch.clone(),
            ),
        ];
        for (base, len, dev) in pio_devices {
            io.register_pio(PioRange::new(PioAddress(base), len)?, dev)?;
        }
        io.register_mmio(
            MmioRange::new(MmioAddress(ioapic::IOAPIC_BASE), ioapic::IOAPIC_SIZE)?,
            self.ioapic.clone(),
        )?;
        Ok(())
    }

    /// The IOAPIC (for `end_of_interrupt` and device lines).
    pub fn ioapic(&self) -> &Arc<Ioapic> {
        &self.ioapic
    }

    /// COM1 (for guest input).
    pub fn serial(&self) -> &Arc<Serial> {
        &self.serial
    }

    /// fw_cfg (to add files).
    pub fn fw_cfg(&self) -> &Arc<FwCfg> {
        &self.fw_cfg
    }

    /// The console COM1 writes to.
    pub fn console(&self) -> &Console {
        &self.console
    }

    /// Writes the ACPI tables into `mem`; returns the RSDP's address.
    pub fn write_acpi(&self, mem: &GuestMemoryMmap) -> Result<u64, Error> {
        Ok(acpi::write_tables(
            mem,
            &acpi::AcpiConfig { vcpus: self.vcpus },
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::lines::StopReason;
    use super::*;
    use std::sync::Mutex;
    use vm_memory::{Bytes, GuestAddress};

    #[derive(Default)]
    struct Sink(Mutex<Vec<(u64, u32)>>, Mutex<Vec<StopReason>>);

    impl MsiSink for Sink {
        fn send_msi(&self, address: u64, data: u32) {
            self.0.lock().unwrap().push((address, data));
        }
    }

    impl VmStop for Sink {
        fn stop(&self, reason: StopReason) {
            self.1.lock().unwrap().push(reason);
        }
    }

    #[test]
    fn registers_everything_on_the_buses() {
        let sink = Arc::new(Sink::default());
        let console = Console::default();
        let p = Platform::new(PlatformConfig {
            vcpus: 2,
            ram_size: 64 << 20,
            msi: sink.clone(),
            stop: sink.clone(),
            console: console.clone(),
        });
        let mut io = IoManager::new();
        p.register(&mut io).unwrap();
        let pio_w = |port, data: &[u8]| io.pio_write(PioAddress(port), data).is_ok();
        let mmio_w = |addr, data: &[u8]| io.mmio_write(MmioAddress(addr), data).is_ok();
        assert!(pio_w(0x3F8, b"A"));
        assert_eq!(console.contents(), "A");
        assert!(pio_w(0x510, &5u16.to_le_bytes()));
        let mut b = [0u8];
        assert!(io.pio_read(PioAddress(0x511), &mut b).is_ok());
        assert_eq!(b[0], 2);
        assert!(pio_w(0xF4, &[1]));
        assert!(pio_w(0xCF9, &[6]));
        assert!(pio_w(0x604, &(1u16 << 13 | 5 << 10).to_le_bytes()));
        assert_eq!(
            *sink.1.lock().unwrap(),
            vec![
                StopReason::DebugExit(3),
                StopReason::Reset,
                StopReason::PowerOff
            ]
        );
        // pc-testdev: line 4 through an edge entry with vector 0x44.
        assert!(mmio_w(0xFEC0_0000, &0x18u32.to_le_bytes()));
        assert!(mmio_w(0xFEC0_0010, &0x44u32.to_le_bytes()));
        assert!(pio_w(0x2004, &[1]));
        assert!(pio_w(0x2004, &[0]));
        assert_eq!(*sink.0.lock().unwrap(), vec![(0xFEE0_0000, 0x44)]);
        assert!(pio_w(0xE9, &[0x5A]));
        let mut s = [0u8; 4];
        assert!(io.pio_read(PioAddress(0xE8), &mut s).is_ok());
        assert_eq!(s, [0, 0x5A, 0, 0]);
        let mut v = [0u8; 4];
        assert!(mmio_w(0xFEC0_0000, &1u32.to_le_bytes()));
        assert!(io.mmio_read(MmioAddress(0xFEC0_0010), &mut v).is_ok());
        assert_eq!(u32::from_le_bytes(v), 0x0017_0020);
        // Unclaimed ports and accesses straddling a device's end miss.
        assert!(!pio_w(0x3F7, &[0]), "one below COM1");
        assert!(!pio_w(0x3FF, &[0, 0]), "past COM1's last port");
        assert!(!pio_w(0x2018, &[1]), "one past the last IRQ line");
        assert!(!mmio_w(0xFEC0_1000, &[0; 4]), "one past the IOAPIC");
        assert!(
            matches!(p.register(&mut io), Err(Error::Bus(_))),
            "twice overlaps"
        );

        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let rsdp = p.write_acpi(&mem).unwrap();
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(rsdp)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
    }
}
