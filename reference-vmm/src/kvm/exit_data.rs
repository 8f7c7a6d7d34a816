//! The exit data in a vCPU's `kvm_run` mapping, read and answered after
//! the `KVM_RUN` borrow has ended, and completing a pending exit.
//!
//! KVM's rule (api.rst, `KVM_RUN`): an I/O, MMIO or MSR exit is complete,
//! and the guest state consistent, only once userspace has re-entered
//! `KVM_RUN`. A state-changing ioctl in between (`KVM_SET_SREGS`,
//! `KVM_SET_REGS`, `KVM_SET_VCPU_EVENTS`, `KVM_SET_MSRS`) may make KVM
//! run the instruction again or apply the result to the wrong state, so
//! [`complete_pending`] first re-enters with `immediate_exit` set: KVM
//! finishes the instruction and returns `EINTR` without running the guest.

use kvm_bindings::{KVM_EXIT_IO_IN, kvm_run};
use kvm_ioctls::VcpuFd;

/// Offset of the port I/O data page in the `kvm_run` mapping
/// (`KVM_PIO_PAGE_OFFSET` = 1 page on x86).
const PIO_PAGE: usize = 4096;
/// Size of that page: KVM never puts more string-I/O data in it.
const PIO_PAGE_SIZE: usize = 4096;

/// A `KVM_EXIT_IO`: `count` elements of `size` bytes each (string I/O,
/// `rep ins*`/`rep outs*`, has `count > 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PioExit {
    /// The port.
    pub port: u16,
    /// Bytes per element: 1, 2 or 4.
    pub size: usize,
    /// Elements.
    pub count: usize,
    /// `IN` (the data goes to the guest) rather than `OUT`.
    pub input: bool,
}

/// The port I/O exit `KVM_RUN` last returned and its data (`size * count`
/// bytes). `None` if KVM's offsets are not what x86 KVM uses.
pub fn pio(fd: &mut VcpuFd) -> Option<(PioExit, &mut [u8])> {
    let run: &mut kvm_run = fd.get_kvm_run();
    // SAFETY: the caller saw KVM_EXIT_IO, so `io` is the live member of
    // the exit union.
    let io = unsafe { run.__bindgen_anon_1.io };
    let exit = PioExit {
        port: io.port,
        size: usize::from(io.size),
        count: io.count as usize,
        input: u32::from(io.direction) == KVM_EXIT_IO_IN,
    };
    let offset = usize::try_from(io.data_offset).ok()?;
    let len = exit.size.checked_mul(exit.count)?;
    if offset != PIO_PAGE || len > PIO_PAGE_SIZE || !matches!(exit.size, 1 | 2 | 4) {
        return None;
    }
    let base = (run as *mut kvm_run).cast::<u8>();
    // SAFETY: KVM maps the PIO data page right after `kvm_run` in the
    // vCPU's mapping (checked above: offset one page, at most one page
    // long), which the VcpuFd keeps mapped for its lifetime; the slice
    // borrows `fd` mutably, so nothing else touches the mapping meanwhile.
    let data = unsafe { std::slice::from_raw_parts_mut(base.add(offset), len) };
    Some((exit, data))
}

/// A `KVM_EXIT_MMIO`: address, access size, and the 8-byte data buffer
/// KVM reads a write from and copies a read's result out of.
pub fn mmio(fd: &mut VcpuFd) -> (u64, bool, &mut [u8]) {
    let run = fd.get_kvm_run();
    // SAFETY: the caller saw KVM_EXIT_MMIO, so `mmio` is the live member
    // of the exit union.
    let m = unsafe { &mut run.__bindgen_anon_1.mmio };
    let len = (m.len as usize).min(m.data.len());
    (m.phys_addr, m.is_write != 0, &mut m.data[..len])
}

/// Answers the pending `KVM_EXIT_X86_RDMSR`/`WRMSR`: `error` makes KVM
/// inject #GP, `data` is what a RDMSR returns.
pub fn complete_msr(fd: &mut VcpuFd, error: bool, data: u64) {
    let run = fd.get_kvm_run();
    // SAFETY: the caller saw KVM_EXIT_X86_RDMSR or _WRMSR, so `msr` is the
    // live member of the exit union.
    let msr = unsafe { &mut run.__bindgen_anon_1.msr };
    msr.error = u8::from(error);
    msr.data = data;
}

/// The MSR index and (for WRMSR) value of the pending MSR exit.
pub fn msr(fd: &mut VcpuFd) -> (u32, u64) {
    let run = fd.get_kvm_run();
    // SAFETY: the caller saw KVM_EXIT_X86_RDMSR or _WRMSR, so `msr` is the
    // live member of the exit union.
    let msr = unsafe { run.__bindgen_anon_1.msr };
    (msr.index, msr.data)
}

/// Completes a pending I/O, MMIO or MSR exit without running the guest:
/// `KVM_RUN` with `immediate_exit` set (KVM runs the completion, then
/// returns `EINTR`). The synced registers marked dirty are applied too.
pub fn complete_pending(fd: &mut VcpuFd) -> Result<(), kvm_ioctls::Error> {
    super::kick::set_immediate_exit(fd.get_kvm_run(), true);
    let r = fd.run().map(|_| ());
    super::kick::set_immediate_exit(fd.get_kvm_run(), false);
    match r {
        Err(e) if e.errno() == libc::EINTR => Ok(()),
        Err(e) => Err(e),
        // KVM never runs the guest with immediate_exit set.
        Ok(()) => Ok(()),
    }
}
