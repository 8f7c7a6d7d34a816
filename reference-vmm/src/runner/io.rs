//! A vCPU's view of the I/O buses: its own devices on a vm-device
//! [`IoManager`] of its own, consulted before the VM's (the platform
//! devices, [`Machine::io`](crate::machine::Machine::io)). Its own devices are its xAPIC page (userspace
//! irqchip) and the VMM's trap ports: the hypercall trap, and the built-in
//! guest's panic port, report address and the bench's probe port.
//!
//! Why a second bus rather than the VM's: every vCPU sees its own local
//! APIC at the same address, and a trap acts on the vCPU that wrote it.
//! KVM looks things up the same way, the local APIC before the VM's bus
//! (x86.c `vcpu_mmio_write`). vm-device's `IoManager` is not `Clone`, so
//! a per-vCPU copy of the VM's bus would have to be rebuilt device by
//! device, and would refuse the APIC page where a guest moves it over a
//! platform device, where the APIC must win.
//!
//! Why traps are latched: a device cannot reach the vCPU's registers or its
//! run loop (the hypercall reads RCX/RDX/R8 and writes RAX; panics and
//! reports carry their arguments in registers), so a trap port only
//! records what was asked and the loop serves it once the bus call returns
//! ([`VcpuIo::take_trap`]). This keeps the buses free of any reference back
//! into the runner.
//!
//! ```
//! use reference_vmm::runner::io::{Trap, TrapPorts};
//! use vm_device::DevicePio;
//! use vm_device::bus::PioAddress;
//!
//! let traps = TrapPorts::default();
//! traps.pio_write(PioAddress(0xE0), 0, &[0]);
//! assert_eq!(traps.take(), Some(Trap::Hypercall));
//! assert_eq!(traps.take(), None);
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lapic::regs::MMIO_PAGE_SIZE;
use vm_device::bus::{
    MmioAddress, MmioAddressOffset, MmioRange, PioAddress, PioAddressOffset, PioRange,
};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_device::{DeviceMmio, DevicePio};

use crate::error::Error;
use crate::guest::abi;
use crate::machine::Machine;
use crate::vcpu::Vcpu;

/// What nothing answers reads as: an unclaimed ISA port or MMIO address
/// floats high.
const UNCLAIMED: u8 = 0xFF;
/// Width of each trap port: the hypercall stub writes AL (`out 0xE0, al`),
/// and so does the built-in kernel's panic path.
const TRAP_PORT_LEN: u16 = 1;
/// Width of the report address: one 32-bit write ([`abi::REPORT_MMIO`]).
const REPORT_LEN: u64 = 4;

/// What a trap port asks the vCPU's run loop to do once the access
/// returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trap {
    /// A write to [`abi::HYPERCALL_PORT`]: serve the hypercall.
    Hypercall,
    /// A write to [`abi::PANIC_PORT`]: the built-in kernel took a fatal
    /// exception.
    Panic,
    /// A write of this code to [`abi::REPORT_MMIO`].
    Report(u32),
    /// A write to [`abi::PROBE_PORT`]: time the probed call.
    Probe,
}

/// The VMM's trap ports of one vCPU, one device on every trap range: the
/// range's base says which trap it is. Reads return all-ones, as from an
/// unclaimed port.
///
/// The latch is one atomic word (the trap's kind and a report's code)
/// rather than a lock: every hypercall passes through it, and a lock and
/// an unlock on each side cost four locked instructions on the exit path.
/// A port access that is no trap reads it once.
#[derive(Debug, Default)]
pub struct TrapPorts {
    latched: AtomicU64,
}

impl Trap {
    /// Where [`Trap::encode`] puts the kind; a report's code is below it.
    const KIND_SHIFT: u32 = u32::BITS;
    /// Kinds of the encoding; 0 is "nothing latched".
    const HYPERCALL: u64 = 1;
    const PANIC: u64 = 2;
    const REPORT: u64 = 3;
    const PROBE: u64 = 4;

    /// The trap as a nonzero word.
    fn encode(self) -> u64 {
        match self {
            Self::Hypercall => Self::HYPERCALL << Self::KIND_SHIFT,
            Self::Panic => Self::PANIC << Self::KIND_SHIFT,
            Self::Report(code) => Self::REPORT << Self::KIND_SHIFT | u64::from(code),
            Self::Probe => Self::PROBE << Self::KIND_SHIFT,
        }
    }

    /// The inverse of [`Trap::encode`]; `None` for 0.
    fn decode(word: u64) -> Option<Self> {
        match word >> Self::KIND_SHIFT {
            Self::HYPERCALL => Some(Self::Hypercall),
            Self::PANIC => Some(Self::Panic),
            Self::REPORT => Some(Self::Report(word as u32)),
            Self::PROBE => Some(Self::Probe),
            _ => None,
        }
    }
}

impl TrapPorts {
    fn latch(&self, trap: Trap) {
        self.latched.store(trap.encode(), Ordering::Release);
    }

    /// The trap the last accesses asked for (a string write latches the
    /// same trap once per element: it is served once).
    pub fn take(&self) -> Option<Trap> {
        if self.latched.load(Ordering::Relaxed) == 0 {
            return None;
        }
        Trap::decode(self.latched.swap(0, Ordering::Acquire))
    }
}

impl DevicePio for TrapPorts {
    fn pio_read(&self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        data.fill(UNCLAIMED);
    }

    fn pio_write(&self, base: PioAddress, _offset: PioAddressOffset, _data: &[u8]) {
        match base.0 {
            abi::HYPERCALL_PORT => self.latch(Trap::Hypercall),
            abi::PANIC_PORT => self.latch(Trap::Panic),
            abi::PROBE_PORT => self.latch(Trap::Probe),
            _ => {}
        }
    }
}

impl DeviceMmio for TrapPorts {
    fn mmio_read(&self, _base: MmioAddress, _offset: MmioAddressOffset, data: &mut [u8]) {
        data.fill(UNCLAIMED);
    }

    /// A write at the report address latches its code (zero-extended from
    /// a narrower write); writes inside it at other offsets are dropped.
    fn mmio_write(&self, base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        if base.0 != abi::REPORT_MMIO || offset != 0 {
            return;
        }
        let mut b = [0u8; 4];
        let n = data.len().min(b.len());
        b[..n].copy_from_slice(&data[..n]);
        self.latch(Trap::Report(u32::from_le_bytes(b)));
    }
}

/// One vCPU's xAPIC page, where the irqchip says the VMM decodes it: MMIO
/// into its local APIC; what a write asks for (an IPI, an EOI, a timer) is
/// applied at once, with the vCPU's lock released. It holds the
/// [`Machine`], which never holds a vCPU's bus (the runner owns it): no
/// reference cycle.
struct ApicPage {
    m: Arc<Machine>,
    index: usize,
}

impl DeviceMmio for ApicPage {
    fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        match self.m.vcpus.get(self.index) {
            Some(me) => self.m.irqchip.apic_mmio_read(me, offset, data),
            None => data.fill(UNCLAIMED),
        }
    }

    fn mmio_write(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        if let Some(me) = self.m.vcpus.get(self.index) {
            self.m
                .irqchip
                .apic_mmio_write(&self.m.vcpus, me, offset, data);
        }
    }
}

/// A vCPU's own bus over the VM's: dispatch for its port I/O and MMIO
/// exits. Owned by the vCPU's run loop.
pub struct VcpuIo {
    local: IoManager,
    traps: Arc<TrapPorts>,
    /// The xAPIC page device.
    apic: Option<Arc<ApicPage>>,
    /// Where the APIC page is on `local` (`None`: off the bus).
    apic_at: Option<u64>,
}

impl VcpuIo {
    /// The bus of vCPU `index` of `m`: the hypercall port when the guest is
    /// built in or Hyper-V is on, the panic port and report address for the
    /// built-in guest, and the APIC page where the irqchip says
    /// ([`crate::irqchip::Irqchip::apic_page_base`]).
    pub fn new(m: &Arc<Machine>, index: usize) -> Result<Self, Error> {
        let vcpu = index as u32;
        let err = |err| Error::VcpuBus { vcpu, err };
        let traps = Arc::new(TrapPorts::default());
        let mut local = IoManager::new();
        let mut ports = Vec::new();
        if !m.external || m.hv.enabled() {
            ports.push(abi::HYPERCALL_PORT);
        }
        if !m.external {
            ports.extend([abi::PANIC_PORT, abi::PROBE_PORT]);
            let report = MmioRange::new(MmioAddress(abi::REPORT_MMIO), REPORT_LEN).map_err(err)?;
            local.register_mmio(report, traps.clone()).map_err(err)?;
        }
        for port in ports {
            let range = PioRange::new(PioAddress(port), TRAP_PORT_LEN).map_err(err)?;
            local.register_pio(range, traps.clone()).map_err(err)?;
        }
        let apic = Some(Arc::new(ApicPage {
            m: Arc::clone(m),
            index,
        }));
        let mut io = Self {
            local,
            traps,
            apic,
            apic_at: None,
        };
        if let Some(me) = m.vcpus.get(index) {
            io.follow_apic_base(m, me);
        }
        Ok(io)
    }

    /// Moves the APIC page of `me` to where the irqchip decodes it, or
    /// takes it off the bus (outside xAPIC mode, or where KVM decodes it).
    /// Call after every IA32_APIC_BASE write: the APIC changes base and
    /// mode only there (INIT keeps both).
    pub fn follow_apic_base(&mut self, m: &Machine, me: &Vcpu) {
        let Some(page) = &self.apic else {
            return;
        };
        let want = m.irqchip.apic_page_base(me);
        if want == self.apic_at {
            return;
        }
        if let Some(old) = self.apic_at.take() {
            self.local.deregister_mmio(MmioAddress(old));
        }
        let Some(base) = want else {
            return;
        };
        let placed = MmioRange::new(MmioAddress(base), MMIO_PAGE_SIZE)
            .and_then(|r| self.local.register_mmio(r, page.clone()));
        match placed {
            Ok(()) => self.apic_at = Some(base),
            // Only over the built-in guest's report address: the trap
            // keeps it, and the page stays off the bus until it moves.
            Err(e) => log::warn!("vCPU {}: APIC page at {base:#x}: {e}", page.index),
        }
    }

    /// A port read: this vCPU's ports, then the VM's; all-ones where
    /// nothing answers.
    pub fn pio_read(&self, vm: &IoManager, port: u16, data: &mut [u8]) {
        let a = PioAddress(port);
        if self.local.pio_read(a, data).is_err() && vm.pio_read(a, data).is_err() {
            data.fill(UNCLAIMED);
        }
    }

    /// A port write: this vCPU's ports, then the VM's; dropped where
    /// nothing answers.
    pub fn pio_write(&self, vm: &IoManager, port: u16, data: &[u8]) {
        let a = PioAddress(port);
        if self.local.pio_write(a, data).is_err() {
            let _ = vm.pio_write(a, data);
        }
    }

    /// An MMIO read: this vCPU's APIC page and report address, then the
    /// VM's devices; all-ones where nothing answers.
    pub fn mmio_read(&self, vm: &IoManager, addr: u64, data: &mut [u8]) {
        let a = MmioAddress(addr);
        if self.local.mmio_read(a, data).is_err() && vm.mmio_read(a, data).is_err() {
            data.fill(UNCLAIMED);
        }
    }

    /// An MMIO write: this vCPU's devices, then the VM's; dropped where
    /// nothing answers.
    pub fn mmio_write(&self, vm: &IoManager, addr: u64, data: &[u8]) {
        let a = MmioAddress(addr);
        if self.local.mmio_write(a, data).is_err() {
            let _ = vm.mmio_write(a, data);
        }
    }

    /// The trap the accesses since the last call asked for.
    pub fn take_trap(&self) -> Option<Trap> {
        self.traps.take()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records the ports it saw written; reads give 0x5A.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<u16>>);

    impl DevicePio for Recorder {
        fn pio_read(&self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
            data.fill(0x5A);
        }

        fn pio_write(&self, base: PioAddress, offset: PioAddressOffset, _data: &[u8]) {
            self.0.lock().unwrap().push(base.0 + offset);
        }
    }

    #[test]
    fn the_vcpu_bus_answers_first_then_the_vms() {
        let traps = Arc::new(TrapPorts::default());
        let mut local = IoManager::new();
        let r = PioRange::new(PioAddress(abi::HYPERCALL_PORT), TRAP_PORT_LEN).unwrap();
        local.register_pio(r, traps.clone()).unwrap();
        let io = VcpuIo {
            local,
            traps,
            apic: None,
            apic_at: None,
        };
        let dev = Arc::new(Recorder::default());
        let mut vm = IoManager::new();
        let r = PioRange::new(PioAddress(abi::HYPERCALL_PORT), 4).unwrap();
        vm.register_pio(r, dev.clone()).unwrap();

        io.pio_write(&vm, abi::HYPERCALL_PORT, &[0]);
        assert_eq!(io.take_trap(), Some(Trap::Hypercall));
        assert!(dev.0.lock().unwrap().is_empty(), "the trap port hides it");
        io.pio_write(&vm, abi::HYPERCALL_PORT, &[0, 0]);
        assert_eq!(io.take_trap(), None, "too wide for the trap port");
        assert_eq!(*dev.0.lock().unwrap(), vec![abi::HYPERCALL_PORT]);
        let mut b = [0u8; 2];
        io.pio_read(&vm, abi::HYPERCALL_PORT + 1, &mut b);
        assert_eq!(b, [0x5A; 2], "the VM's device");
        io.pio_read(&vm, abi::HYPERCALL_PORT + 4, &mut b);
        assert_eq!(b, [UNCLAIMED; 2], "nothing there");
        let mut m = [0u8; 4];
        io.mmio_read(&vm, abi::REPORT_MMIO, &mut m);
        assert_eq!(m, [UNCLAIMED; 4]);
    }

    #[test]
    fn trap_ports_latch_by_base() {
        let t = TrapPorts::default();
        t.pio_write(PioAddress(abi::PANIC_PORT), 0, &[0x0E]);
        assert_eq!(t.take(), Some(Trap::Panic));
        t.pio_write(PioAddress(abi::PROBE_PORT), 0, &[0]);
        assert_eq!(t.take(), Some(Trap::Probe));
        t.pio_write(PioAddress(abi::NULL_PORT), 0, &[0]);
        assert_eq!(t.take(), None, "not a trap port");
        let mut b = [0u8; 2];
        t.pio_read(PioAddress(abi::HYPERCALL_PORT), 0, &mut b);
        assert_eq!(b, [UNCLAIMED; 2]);
        assert_eq!(t.take(), None, "a read traps nothing");
    }

    #[test]
    fn report_takes_the_code_at_offset_0_only() {
        let t = TrapPorts::default();
        let base = MmioAddress(abi::REPORT_MMIO);
        t.mmio_write(base, 0, &abi::REPORT_MARK_END.to_le_bytes());
        assert_eq!(t.take(), Some(Trap::Report(abi::REPORT_MARK_END)));
        t.mmio_write(base, 0, &[3]);
        assert_eq!(t.take(), Some(Trap::Report(3)), "zero-extended");
        t.mmio_write(base, 1, &[1]);
        assert_eq!(t.take(), None, "inside, not at the address");
        t.mmio_write(base, 0, &u32::MAX.to_le_bytes());
        assert_eq!(t.take(), Some(Trap::Report(u32::MAX)));
        t.mmio_write(base, 0, &[0; 4]);
        assert_eq!(t.take(), Some(Trap::Report(0)), "a zero code is a trap");
        t.pio_write(PioAddress(abi::PANIC_PORT), 0, &[0x0E]);
        t.pio_write(PioAddress(abi::HYPERCALL_PORT), 0, &[0]);
        assert_eq!(t.take(), Some(Trap::Hypercall), "the last one counts");
        assert_eq!(t.take(), None);
    }

    #[test]
    fn trap_ranges_fit_the_guest_accesses_only() {
        let traps = Arc::new(TrapPorts::default());
        let mut io = IoManager::new();
        let r = PioRange::new(PioAddress(abi::HYPERCALL_PORT), TRAP_PORT_LEN).unwrap();
        io.register_pio(r, traps.clone()).unwrap();
        let r = MmioRange::new(MmioAddress(abi::REPORT_MMIO), REPORT_LEN).unwrap();
        io.register_mmio(r, traps.clone()).unwrap();
        assert!(io.pio_write(PioAddress(abi::HYPERCALL_PORT), &[0]).is_ok());
        assert_eq!(traps.take(), Some(Trap::Hypercall));
        assert!(
            io.pio_write(PioAddress(abi::HYPERCALL_PORT + 1), &[0])
                .is_err(),
            "one past the port"
        );
        let report = MmioAddress(abi::REPORT_MMIO);
        assert!(io.mmio_write(report, &7u32.to_le_bytes()).is_ok());
        assert_eq!(traps.take(), Some(Trap::Report(7)));
        assert!(
            io.mmio_write(report, &[0; 8]).is_err(),
            "wider than the report address"
        );
    }
}
