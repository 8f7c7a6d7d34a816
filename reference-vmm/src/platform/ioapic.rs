//! An 82093AA-style I/O APIC (version 0x20, with the EOI register) that
//! turns pin events into MSI messages.
//!
//! Behaviour follows KVM's `arch/x86/kvm/ioapic.c`: level-triggered pins set
//! Remote IRR on delivery and are delivered again at EOI while still
//! asserted; rising edges on edge-triggered pins are delivered once; a
//! masked pin delivers nothing (an edge that arrives while masked is lost).
//! The extended destination ID (redirection entry bits 55:49, Linux's
//! `virt_destid_8_14`) goes into MSI address bits 11:5 as KVM's
//! "extended destination ID" feature defines.

use std::sync::{Arc, Mutex, MutexGuard};

use vm_device::DeviceMmio;
use vm_device::bus::{MmioAddress, MmioAddressOffset};

use super::msi::{
    MSI_ADDR_DEST_MODE_LOGICAL, MSI_ADDR_DEST_SHIFT, MSI_ADDR_EXT_DEST_SHIFT, MSI_ADDRESS_BASE,
    MSI_DATA_DELIVERY_SHIFT, MSI_DATA_LEVEL_ASSERT, MSI_DATA_TRIGGER_LEVEL, MsiSink,
};

/// Guest-physical base of the IOAPIC MMIO window.
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// Length of the IOAPIC MMIO window.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Number of input pins (and redirection entries).
pub const NUM_PINS: usize = 24;
/// Version register value: 0x20 has the EOI register.
pub const IOAPIC_VERSION: u32 = 0x20;

// MMIO offsets (82093AA datasheet 3.0; EOI register of version 0x20).
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const IOEOI: u64 = 0x40;

// Register indexes behind IOWIN.
const REG_ID: u32 = 0x00;
const REG_VER: u32 = 0x01;
const REG_ARB: u32 = 0x02;
const REG_REDTBL: u32 = 0x10;
const REG_REDTBL_END: u32 = REG_REDTBL + 2 * NUM_PINS as u32;

// Redirection entry bits (82093AA 3.2.4).
const RTE_VECTOR: u64 = 0xFF;
const RTE_DELIVERY_MODE_SHIFT: u32 = 8;
const RTE_DEST_MODE_LOGICAL: u64 = 1 << 11;
const RTE_DELIVERY_STATUS: u64 = 1 << 12;
const RTE_REMOTE_IRR: u64 = 1 << 14;
const RTE_TRIGGER_LEVEL: u64 = 1 << 15;
const RTE_MASKED: u64 = 1 << 16;
const RTE_EXT_DEST_SHIFT: u32 = 49;
const RTE_DEST_SHIFT: u32 = 56;
/// Bits the guest cannot write: delivery status and Remote IRR.
const RTE_READ_ONLY: u64 = RTE_DELIVERY_STATUS | RTE_REMOTE_IRR;

// Delivery modes that carry a vector (SDM vol. 3, 11.6.1).
const DM_FIXED: u32 = 0;
const DM_LOWEST_PRIORITY: u32 = 1;
/// Vectors 0-15 are reserved: a fixed or lowest-priority entry with one is
/// not delivered.
const MIN_VECTOR: u8 = 16;

/// Called with `(pin, Some((address, data)))` when a pin's route becomes or
/// changes to that MSI, `(pin, None)` when it is masked or unusable. It runs
/// with the IOAPIC locked: it must not call back into the IOAPIC.
pub type RouteListener = Box<dyn Fn(usize, Option<(u64, u32)>) + Send + Sync>;

struct State {
    /// IOREGSEL (register index, 8 bits).
    select: u32,
    /// IOAPIC ID (4 bits).
    id: u32,
    redirection: [u64; NUM_PINS],
    /// Current input level of each pin.
    lines: u32,
    /// Last route reported to the listener per pin.
    routes: [Option<(u64, u32)>; NUM_PINS],
}

/// A 24-pin I/O APIC on the MMIO bus at [`IOAPIC_BASE`].
pub struct Ioapic {
    state: Mutex<State>,
    msi: Arc<dyn MsiSink>,
    listener: Mutex<Option<RouteListener>>,
}

/// Converts a redirection entry to the MSI message it sends, or `None` when
/// the entry cannot deliver (masked, or a reserved vector).
pub fn entry_to_msi(entry: u64) -> Option<(u64, u32)> {
    if entry & RTE_MASKED != 0 {
        return None;
    }
    let vector = (entry & RTE_VECTOR) as u8;
    let mode = ((entry >> RTE_DELIVERY_MODE_SHIFT) & 0x7) as u32;
    if matches!(mode, DM_FIXED | DM_LOWEST_PRIORITY) && vector < MIN_VECTOR {
        return None;
    }
    let dest = (entry >> RTE_DEST_SHIFT) & 0xFF;
    let ext_dest = (entry >> RTE_EXT_DEST_SHIFT) & 0x7F;
    let mut address =
        MSI_ADDRESS_BASE | dest << MSI_ADDR_DEST_SHIFT | ext_dest << MSI_ADDR_EXT_DEST_SHIFT;
    if entry & RTE_DEST_MODE_LOGICAL != 0 {
        address |= MSI_ADDR_DEST_MODE_LOGICAL;
    }
    let mut data = u32::from(vector) | mode << MSI_DATA_DELIVERY_SHIFT;
    if entry & RTE_TRIGGER_LEVEL != 0 {
        data |= MSI_DATA_LEVEL_ASSERT | MSI_DATA_TRIGGER_LEVEL;
    }
    Some((address, data))
}

impl State {
    /// Delivers `pin` if its entry allows it; sets Remote IRR for level pins.
    fn service(&mut self, pin: usize, out: &mut Vec<(u64, u32)>) {
        let Some(entry) = self.redirection.get_mut(pin) else {
            return;
        };
        let level = *entry & RTE_TRIGGER_LEVEL != 0;
        if level && *entry & RTE_REMOTE_IRR != 0 {
            return;
        }
        if let Some(msg) = entry_to_msi(*entry) {
            if level {
                *entry |= RTE_REMOTE_IRR;
            }
            out.push(msg);
        }
    }

    fn line(&self, pin: usize) -> bool {
        self.lines & (1 << pin) != 0
    }

    fn read_register(&self) -> u32 {
        match self.select {
            REG_ID | REG_ARB => self.id << 24,
            REG_VER => IOAPIC_VERSION | ((NUM_PINS as u32 - 1) << 16),
            r @ REG_REDTBL..REG_REDTBL_END => {
                let i = ((r - REG_REDTBL) / 2) as usize;
                let e = self.redirection.get(i).copied().unwrap_or(0);
                if r % 2 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }
}

impl Ioapic {
    /// An IOAPIC in its reset state (all entries masked) sending to `msi`.
    pub fn new(msi: Arc<dyn MsiSink>) -> Self {
        Self {
            state: Mutex::new(State {
                select: 0,
                id: 0,
                redirection: [RTE_MASKED; NUM_PINS],
                lines: 0,
                routes: [None; NUM_PINS],
            }),
            msi,
            listener: Mutex::new(None),
        }
    }

    /// Installs the listener told about every route change (for mirroring
    /// the redirection table into KVM's GSI routing).
    pub fn set_route_listener(&self, listener: RouteListener) {
        *self.listener.lock().unwrap_or_else(|e| e.into_inner()) = Some(listener);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, msgs: Vec<(u64, u32)>) {
        for (address, data) in msgs {
            self.msi.send_msi(address, data);
        }
    }

    /// Drives input `pin` to `level` (asserted = `true`). Pins past the last
    /// are ignored.
    pub fn set_irq(&self, pin: usize, level: bool) {
        if pin >= NUM_PINS {
            return;
        }
        let mut out = Vec::new();
        {
            let mut s = self.lock();
            let old = s.line(pin);
            if level {
                s.lines |= 1 << pin;
            } else {
                s.lines &= !(1 << pin);
            }
            let level_triggered = s.redirection[pin] & RTE_TRIGGER_LEVEL != 0;
            if level && (level_triggered || !old) {
                s.service(pin, &mut out);
            }
        }
        self.send(out);
    }

    /// A rising then falling edge on `pin`.
    pub fn pulse(&self, pin: usize) {
        self.set_irq(pin, true);
        self.set_irq(pin, false);
    }

    /// An EOI for `vector` (from the local APIC's EOI broadcast or the EOI
    /// register): clears Remote IRR of the level-triggered entries with that
    /// vector and delivers again those still asserted.
    pub fn end_of_interrupt(&self, vector: u8) {
        let mut out = Vec::new();
        {
            let mut s = self.lock();
            for pin in 0..NUM_PINS {
                let e = s.redirection[pin];
                if (e & RTE_VECTOR) as u8 != vector
                    || e & RTE_TRIGGER_LEVEL == 0
                    || e & RTE_REMOTE_IRR == 0
                {
                    continue;
                }
                s.redirection[pin] &= !RTE_REMOTE_IRR;
                if s.line(pin) {
                    s.service(pin, &mut out);
                }
            }
        }
        self.send(out);
    }

    /// The redirection entry of `pin` (`None` past the last pin).
    pub fn redirection_entry(&self, pin: usize) -> Option<u64> {
        self.lock().redirection.get(pin).copied()
    }

    fn write_register(&self, s: &mut State, value: u32, out: &mut Vec<(u64, u32)>) {
        match s.select {
            REG_ID => s.id = (value >> 24) & 0xF,
            r @ REG_REDTBL..REG_REDTBL_END => {
                let pin = ((r - REG_REDTBL) / 2) as usize;
                let Some(&old) = s.redirection.get(pin) else {
                    return;
                };
                let mut new = if r % 2 == 0 {
                    (old & !0xFFFF_FFFF) | u64::from(value)
                } else {
                    (old & 0xFFFF_FFFF) | u64::from(value) << 32
                };
                new = (new & !RTE_READ_ONLY) | (old & RTE_READ_ONLY);
                // KVM ioapic_write_indirect: an edge entry has no Remote IRR.
                if new & RTE_TRIGGER_LEVEL == 0 {
                    new &= !RTE_REMOTE_IRR;
                }
                s.redirection[pin] = new;
                let route = entry_to_msi(new);
                if s.routes[pin] != route {
                    s.routes[pin] = route;
                    if let Some(l) = self
                        .listener
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_ref()
                    {
                        l(pin, route);
                    }
                }
                // An unmasked level entry whose pin is asserted delivers now.
                if new & RTE_TRIGGER_LEVEL != 0 && s.line(pin) {
                    s.service(pin, out);
                }
            }
            // VER and ARB are read-only; other indexes do not exist.
            _ => {}
        }
    }
}

fn dword(data: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(data.try_into().ok()?))
}

impl DeviceMmio for Ioapic {
    /// Only aligned 32-bit reads of IOREGSEL and IOWIN return data; others
    /// read as 0.
    fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 4 {
            return;
        }
        let s = self.lock();
        let v = match offset {
            IOREGSEL => s.select,
            IOWIN => s.read_register(),
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// Only aligned 32-bit writes of IOREGSEL, IOWIN and EOI do anything.
    fn mmio_write(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        let Some(value) = dword(data) else {
            return;
        };
        match offset {
            IOREGSEL => self.lock().select = value & 0xFF,
            IOWIN => {
                let mut out = Vec::new();
                {
                    let mut s = self.lock();
                    self.write_register(&mut s, value, &mut out);
                }
                self.send(out);
            }
            IOEOI => self.end_of_interrupt(value as u8),
            _ => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Records every MSI.
    #[derive(Default)]
    pub(crate) struct Recorder(pub Mutex<Vec<(u64, u32)>>);

    impl MsiSink for Recorder {
        fn send_msi(&self, address: u64, data: u32) {
            self.0.lock().unwrap().push((address, data));
        }
    }

    impl Recorder {
        pub(crate) fn take(&self) -> Vec<(u64, u32)> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    fn setup() -> (Arc<Recorder>, Ioapic) {
        let rec = Arc::new(Recorder::default());
        let io = Ioapic::new(rec.clone());
        (rec, io)
    }

    /// An MMIO write at `offset` of the window.
    fn write(io: &Ioapic, offset: u64, data: &[u8]) {
        io.mmio_write(MmioAddress(IOAPIC_BASE), offset, data);
    }

    /// An MMIO read at `offset` of the window.
    fn read(io: &Ioapic, offset: u64, data: &mut [u8]) {
        io.mmio_read(MmioAddress(IOAPIC_BASE), offset, data);
    }

    /// Writes register `reg` through IOREGSEL and IOWIN.
    pub(crate) fn wr(io: &Ioapic, reg: u32, v: u32) {
        write(io, IOREGSEL, &reg.to_le_bytes());
        write(io, IOWIN, &v.to_le_bytes());
    }

    fn rd(io: &Ioapic, reg: u32) -> u32 {
        write(io, IOREGSEL, &reg.to_le_bytes());
        let mut b = [0u8; 4];
        read(io, IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    fn set_entry(io: &Ioapic, pin: usize, e: u64) {
        let r = REG_REDTBL + 2 * pin as u32;
        wr(io, r + 1, (e >> 32) as u32);
        wr(io, r, e as u32);
    }

    #[test]
    fn id_version_and_reset_state() {
        let (_, io) = setup();
        assert_eq!(rd(&io, REG_VER), 0x0017_0020);
        wr(&io, REG_ID, 0x0F00_0000 | 0xFF);
        assert_eq!(rd(&io, REG_ID), 0x0F00_0000);
        assert_eq!(rd(&io, REG_ARB), 0x0F00_0000);
        wr(&io, REG_VER, 0);
        assert_eq!(rd(&io, REG_VER), 0x0017_0020, "VER is read-only");
        for pin in 0..NUM_PINS {
            assert_eq!(io.redirection_entry(pin), Some(RTE_MASKED));
        }
        assert_eq!(io.redirection_entry(NUM_PINS), None);
        assert_eq!(rd(&io, REG_REDTBL_END), 0, "one past the table");
    }

    #[test]
    fn redirection_entry_round_trip_keeps_read_only_bits() {
        let (_, io) = setup();
        let e = 0xAB00_0000_0001_A931_u64 | RTE_REMOTE_IRR | RTE_DELIVERY_STATUS;
        set_entry(&io, 5, e);
        let got = u64::from(rd(&io, REG_REDTBL + 10)) | u64::from(rd(&io, REG_REDTBL + 11)) << 32;
        assert_eq!(got, e & !RTE_READ_ONLY);
        assert_eq!(io.redirection_entry(5), Some(got));
    }

    #[test]
    fn masked_pin_is_not_delivered_and_edge_is_once() {
        let (rec, io) = setup();
        io.pulse(3);
        assert!(rec.take().is_empty(), "masked at reset");
        set_entry(&io, 3, 0x30);
        io.set_irq(3, true);
        io.set_irq(3, true);
        assert_eq!(rec.take(), vec![(0xFEE0_0000, 0x30)], "one rising edge");
        io.set_irq(3, false);
        io.pulse(3);
        assert_eq!(rec.take().len(), 1);
        set_entry(&io, 3, 0x0F);
        io.pulse(3);
        assert!(rec.take().is_empty(), "vector 15 is reserved");
        set_entry(&io, 3, 0x10);
        io.pulse(3);
        assert_eq!(
            rec.take(),
            vec![(0xFEE0_0000, 0x10)],
            "vector 16 is the first"
        );
        io.pulse(NUM_PINS);
        assert!(rec.take().is_empty());
    }

    #[test]
    fn level_remote_irr_eoi_and_redelivery() {
        let (rec, io) = setup();
        set_entry(&io, 9, RTE_TRIGGER_LEVEL | 0x41);
        io.set_irq(9, true);
        let msg = (
            0xFEE0_0000,
            0x41 | MSI_DATA_LEVEL_ASSERT | MSI_DATA_TRIGGER_LEVEL,
        );
        assert_eq!(rec.take(), vec![msg]);
        assert_ne!(io.redirection_entry(9).unwrap() & RTE_REMOTE_IRR, 0);
        io.set_irq(9, true);
        assert!(rec.take().is_empty(), "Remote IRR holds it");
        io.end_of_interrupt(0x42);
        assert!(rec.take().is_empty(), "another vector");
        io.end_of_interrupt(0x41);
        assert_eq!(rec.take(), vec![msg], "still asserted: delivered again");
        io.set_irq(9, false);
        // EOI through the register.
        write(&io, IOEOI, &0x41u32.to_le_bytes());
        assert!(rec.take().is_empty(), "deasserted: nothing");
        assert_eq!(io.redirection_entry(9).unwrap() & RTE_REMOTE_IRR, 0);
        // Asserted while masked, delivered on unmask.
        set_entry(&io, 9, RTE_MASKED | RTE_TRIGGER_LEVEL | 0x41);
        io.set_irq(9, true);
        assert!(rec.take().is_empty());
        set_entry(&io, 9, RTE_TRIGGER_LEVEL | 0x41);
        assert_eq!(rec.take(), vec![msg]);
    }

    #[test]
    fn msi_encoding_with_extended_destination() {
        // Physical, dest 0x12, fixed.
        assert_eq!(
            entry_to_msi(0x12u64 << 56 | 0x40),
            Some((0xFEE1_2000, 0x40))
        );
        // Logical, lowest priority, level.
        let e = 0x03u64 << 56 | RTE_DEST_MODE_LOGICAL | 1 << 8 | RTE_TRIGGER_LEVEL | 0x50;
        assert_eq!(entry_to_msi(e), Some((0xFEE0_3004, 0xC150)));
        // APIC ID 300 = 0x12C: low byte 0x2C, bits 14:8 = 1.
        let e = 0x2Cu64 << 56 | 1u64 << RTE_EXT_DEST_SHIFT | 0x60;
        assert_eq!(entry_to_msi(e), Some((0xFEE2_C020, 0x60)));
        // Largest extended ID 0x7FFF.
        let e = 0xFFu64 << 56 | 0x7Fu64 << RTE_EXT_DEST_SHIFT | 0x60;
        assert_eq!(entry_to_msi(e), Some((0xFEEF_F000 | 0x7F << 5, 0x60)));
        // NMI carries no vector: delivered with vector 0.
        assert_eq!(entry_to_msi(4 << 8), Some((0xFEE0_0000, 0x400)));
        assert_eq!(entry_to_msi(RTE_MASKED | 0x40), None);
    }

    #[test]
    fn route_listener_sees_changes() {
        let (_, io) = setup();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        io.set_route_listener(Box::new(move |pin, r| s2.lock().unwrap().push((pin, r))));
        set_entry(&io, 2, 0x31);
        set_entry(&io, 2, 0x31);
        set_entry(&io, 2, RTE_MASKED | 0x31);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(2, Some((0xFEE0_0000, 0x31))), (2, None)]
        );
    }

    #[test]
    fn odd_sizes_and_offsets_are_ignored() {
        let (_, io) = setup();
        write(&io, IOREGSEL, &[1, 0]);
        write(&io, IOREGSEL + 1, &1u32.to_le_bytes());
        write(&io, IOREGSEL, &0x110u32.to_le_bytes());
        let mut b = [0xFFu8; 4];
        read(&io, IOREGSEL, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x10, "IOREGSEL keeps 8 bits");
        let mut b8 = [0xFFu8; 8];
        read(&io, IOWIN, &mut b8);
        assert_eq!(b8, [0; 8]);
        let mut b = [0xFFu8; 4];
        read(&io, 0x20, &mut b);
        assert_eq!(b, [0; 4]);
    }

    proptest! {
        #[test]
        fn arbitrary_accesses_never_panic(
            ops in prop::collection::vec((0u64..0x1000, 0usize..9, any::<u64>(), any::<bool>(), 0usize..30), 0..200)
        ) {
            let (_, io) = setup();
            for (off, size, val, is_write, pin) in ops {
                if is_write {
                    write(&io, off, &val.to_le_bytes()[..size.min(8)]);
                } else {
                    let mut b = vec![0u8; size];
                    read(&io, off, &mut b);
                }
                io.set_irq(pin, val & 1 != 0);
                io.end_of_interrupt(val as u8);
            }
        }
    }
}
