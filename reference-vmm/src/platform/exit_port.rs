//! Ports through which the guest stops the VM: QEMU's isa-debug-exit, the
//! ACPI PM1a event/control blocks with the PM timer, and the reset register,
//! laid out as the FADT ([`super::acpi`]) describes them.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use vm_device::DevicePio;
use vm_device::bus::{PioAddress, PioAddressOffset};

use super::lines::{StopReason, VmStop};

/// isa-debug-exit port.
pub const DEBUG_EXIT_PORT: u16 = 0xF4;
/// isa-debug-exit width.
pub const DEBUG_EXIT_LEN: u16 = 4;
/// PM1a_EVT_BLK: PM1 status (2 bytes) then PM1 enable (2 bytes).
pub const PM1A_EVT_PORT: u16 = 0x600;
/// PM1a_EVT_BLK length.
pub const PM1A_EVT_LEN: u8 = 4;
/// PM1a_CNT_BLK.
pub const PM1A_CNT_PORT: u16 = 0x604;
/// PM1a_CNT_BLK length.
pub const PM1A_CNT_LEN: u8 = 2;
/// PM timer block (24-bit counter).
pub const PM_TMR_PORT: u16 = 0x608;
/// PM timer block length.
pub const PM_TMR_LEN: u8 = 4;
/// Ports of the whole PM block (event, control, timer).
pub const PM_BLOCK_LEN: u16 = PM_TMR_PORT + PM_TMR_LEN as u16 - PM1A_EVT_PORT;
/// Reset register.
pub const RESET_PORT: u16 = 0xCF9;
/// Value the FADT tells the OS to write to [`RESET_PORT`].
pub const RESET_VALUE: u8 = 0x06;
/// SLP_TYP of \_S5 in the DSDT: PM1a_CNT.SLP_TYP with SLP_EN powers off.
pub const S5_SLP_TYP: u16 = 5;
/// PM timer frequency in Hz (ACPI 6.5, 4.8.3.3).
pub const PM_TIMER_HZ: u64 = 3_579_545;

// PM1 control bits (ACPI 6.5, 4.8.3.2.1).
const PM1_CNT_SCI_EN: u16 = 1 << 0;
const PM1_CNT_SLP_TYP_SHIFT: u32 = 10;
const PM1_CNT_SLP_TYP_MASK: u16 = 0x7 << PM1_CNT_SLP_TYP_SHIFT;
const PM1_CNT_SLP_EN: u16 = 1 << 13;
// Reset control register bit 2 (Intel ICH "RST_CPU") starts the reset.
const RESET_CPU: u8 = 1 << 2;
// Mask of the 24-bit PM timer.
const PM_TMR_MASK: u64 = 0xFF_FFFF;

/// QEMU's isa-debug-exit: a write of `v` stops with `(v << 1) | 1`.
pub struct DebugExit {
    stop: Arc<dyn VmStop>,
}

impl DebugExit {
    /// The device stopping through `stop`.
    pub fn new(stop: Arc<dyn VmStop>) -> Self {
        Self { stop }
    }

    /// The exit status a written value gives, as QEMU computes it.
    pub fn status(value: u32) -> u32 {
        (value << 1) | 1
    }
}

impl DevicePio for DebugExit {
    /// Reads 0.
    fn pio_read(&self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        data.fill(0);
    }

    /// Any write of 1 to 4 bytes stops; the value is zero-extended.
    fn pio_write(&self, _base: PioAddress, _offset: PioAddressOffset, data: &[u8]) {
        if data.is_empty() || data.len() > 4 {
            return;
        }
        let mut b = [0u8; 4];
        b[..data.len()].copy_from_slice(data);
        self.stop
            .stop(StopReason::DebugExit(Self::status(u32::from_le_bytes(b))));
    }
}

#[derive(Default)]
struct PmRegs {
    status: u16,
    enable: u16,
    control: u16,
}

/// The ACPI PM1a event and control blocks and the PM timer, on ports
/// [`PM1A_EVT_PORT`]..+[`PM_BLOCK_LEN`]. No SCI is raised: no event
/// source exists.
pub struct AcpiPm {
    regs: Mutex<PmRegs>,
    start: Instant,
    stop: Arc<dyn VmStop>,
}

impl AcpiPm {
    /// The block, in ACPI mode (SCI_EN set: there is no SMI command port).
    pub fn new(stop: Arc<dyn VmStop>) -> Self {
        Self {
            regs: Mutex::new(PmRegs {
                control: PM1_CNT_SCI_EN,
                ..PmRegs::default()
            }),
            start: Instant::now(),
            stop,
        }
    }

    fn lock(&self) -> MutexGuard<'_, PmRegs> {
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The 24-bit PM timer now.
    pub fn timer(&self) -> u32 {
        let ns = self.start.elapsed().as_nanos();
        let ticks = ns * u128::from(PM_TIMER_HZ) / 1_000_000_000;
        (ticks as u64 & PM_TMR_MASK) as u32
    }

    fn read_byte(&self, regs: &PmRegs, timer: u32, offset: u64) -> u8 {
        let (reg, shift) = match offset {
            0 | 1 => (u32::from(regs.status), offset * 8),
            2 | 3 => (u32::from(regs.enable), (offset - 2) * 8),
            // SLP_EN is write-only.
            4 | 5 => (u32::from(regs.control & !PM1_CNT_SLP_EN), (offset - 4) * 8),
            6 | 7 => return 0,
            8..=11 => (timer, (offset - 8) * 8),
            _ => return 0,
        };
        (reg >> shift) as u8
    }

    /// Writes one byte; returns `true` when it starts S5.
    fn write_byte(regs: &mut PmRegs, offset: u64, value: u8) -> bool {
        let (reg, shift) = match offset {
            0 | 1 => (&mut regs.status, offset * 8),
            2 | 3 => (&mut regs.enable, (offset - 2) * 8),
            4 | 5 => (&mut regs.control, (offset - 4) * 8),
            _ => return false,
        };
        let v = u16::from(value) << shift;
        let m = 0xFFu16 << shift;
        if offset < 2 {
            // PM1 status bits are write-one-to-clear.
            *reg &= !v;
            return false;
        }
        *reg = (*reg & !m) | v;
        if offset >= 4 && regs.control & PM1_CNT_SLP_EN != 0 {
            let typ = (regs.control & PM1_CNT_SLP_TYP_MASK) >> PM1_CNT_SLP_TYP_SHIFT;
            regs.control &= !PM1_CNT_SLP_EN;
            return typ == S5_SLP_TYP;
        }
        false
    }
}

impl DevicePio for AcpiPm {
    /// Byte-granular reads of any size within the block.
    fn pio_read(&self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let timer = self.timer();
        let regs = self.lock();
        for (i, b) in data.iter_mut().enumerate() {
            *b = u64::from(offset)
                .checked_add(i as u64)
                .map_or(0, |o| self.read_byte(&regs, timer, o));
        }
    }

    /// Byte-granular writes; SLP_EN with the \_S5 type powers off, other
    /// sleep types are ignored (no sleep states are offered).
    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let mut power_off = false;
        {
            let mut regs = self.lock();
            for (i, &b) in data.iter().enumerate() {
                if let Some(o) = u64::from(offset).checked_add(i as u64) {
                    power_off |= Self::write_byte(&mut regs, o, b);
                }
            }
        }
        if power_off {
            self.stop.stop(StopReason::PowerOff);
        }
    }
}

/// The reset control register at 0xCF9.
pub struct ResetPort {
    stop: Arc<dyn VmStop>,
}

impl ResetPort {
    /// The register resetting through `stop`.
    pub fn new(stop: Arc<dyn VmStop>) -> Self {
        Self { stop }
    }
}

impl DevicePio for ResetPort {
    /// Reads 0.
    fn pio_read(&self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        data.fill(0);
    }

    /// A byte write with bit 2 set resets.
    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        if offset == 0 && data.len() == 1 && data[0] & RESET_CPU != 0 {
            self.stop.stop(StopReason::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Default)]
    struct Stops(Mutex<Vec<StopReason>>);

    impl VmStop for Stops {
        fn stop(&self, reason: StopReason) {
            self.0.lock().unwrap().push(reason);
        }
    }

    impl Stops {
        fn take(&self) -> Vec<StopReason> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    // The devices ignore their base: offsets are what they decode.
    fn write(d: &dyn DevicePio, offset: u16, data: &[u8]) {
        d.pio_write(PioAddress(0), offset, data);
    }

    fn read(d: &dyn DevicePio, offset: u16, data: &mut [u8]) {
        d.pio_read(PioAddress(0), offset, data);
    }

    #[test]
    fn debug_exit_status_formula() {
        let s = Arc::new(Stops::default());
        let d = DebugExit::new(s.clone());
        write(&d, 0, &[0x10]);
        write(&d, 0, &0x1234u16.to_le_bytes());
        write(&d, 0, &0x8000_0001u32.to_le_bytes());
        write(&d, 0, &[0; 8]);
        write(&d, 0, &[]);
        assert_eq!(
            s.take(),
            vec![
                StopReason::DebugExit(0x21),
                StopReason::DebugExit(0x2469),
                StopReason::DebugExit(0x3),
            ]
        );
    }

    #[test]
    fn pm1_control_powers_off_on_s5_only() {
        let s = Arc::new(Stops::default());
        let pm = AcpiPm::new(s.clone());
        let mut b = [0u8; 2];
        read(&pm, 4, &mut b);
        assert_eq!(u16::from_le_bytes(b), PM1_CNT_SCI_EN);
        // SLP_TYP 3 with SLP_EN: not a state offered.
        write(&pm, 4, &(PM1_CNT_SLP_EN | 3 << 10 | 1).to_le_bytes());
        assert!(s.take().is_empty());
        write(
            &pm,
            4,
            &(PM1_CNT_SLP_EN | S5_SLP_TYP << 10 | 1).to_le_bytes(),
        );
        assert_eq!(s.take(), vec![StopReason::PowerOff]);
        read(&pm, 4, &mut b);
        assert_eq!(u16::from_le_bytes(b) & PM1_CNT_SLP_EN, 0, "write-only");
        // Enable is read/write; status is write-one-to-clear.
        write(&pm, 2, &0x0120u16.to_le_bytes());
        read(&pm, 2, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x0120);
        pm.lock().status = 0x8001;
        write(&pm, 0, &0x0001u16.to_le_bytes());
        read(&pm, 0, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x8000);
    }

    #[test]
    fn pm_timer_counts_at_3_58_mhz() {
        let pm = AcpiPm::new(Arc::new(Stops::default()));
        let mut b = [0u8; 4];
        read(&pm, 8, &mut b);
        let t0 = u32::from_le_bytes(b);
        std::thread::sleep(std::time::Duration::from_millis(20));
        read(&pm, 8, &mut b);
        let t1 = u32::from_le_bytes(b);
        assert!(t1 <= 0xFF_FFFF);
        let d = t1.wrapping_sub(t0) & 0xFF_FFFF;
        // 20 ms is 71591 ticks; allow for a slow scheduler.
        assert!((71_000..3_579_545).contains(&d), "{d}");
    }

    #[test]
    fn reset_needs_bit_2() {
        let s = Arc::new(Stops::default());
        let r = ResetPort::new(s.clone());
        write(&r, 0, &[0x02]);
        assert!(s.take().is_empty());
        write(&r, 0, &[RESET_VALUE]);
        assert_eq!(s.take(), vec![StopReason::Reset]);
    }

    proptest! {
        #[test]
        fn arbitrary_accesses_never_panic(
            ops in prop::collection::vec((0u16..16, 0usize..9, any::<u64>(), any::<bool>()), 0..200)
        ) {
            let s = Arc::new(Stops::default());
            let devs: [Box<dyn DevicePio>; 3] = [
                Box::new(DebugExit::new(s.clone())),
                Box::new(AcpiPm::new(s.clone())),
                Box::new(ResetPort::new(s.clone())),
            ];
            for (off, size, val, is_write) in ops {
                for d in &devs {
                    if is_write {
                        write(d.as_ref(), off, &val.to_le_bytes()[..size]);
                    } else {
                        let mut b = vec![0u8; size];
                        read(d.as_ref(), off, &mut b);
                    }
                }
            }
            prop_assert!(s.take().len() <= 600);
        }
    }
}
