//! The KVM side of one vCPU as its own thread holds it: the vCPU fd, the
//! index errors name, and whether the last exit still waits for KVM to
//! complete it (see [`crate::kvm::exit_data`]). The run loop owns it and
//! lends it to the services (the irqchip backends, the hypercall trap),
//! which need nothing else of the loop.

use kvm_bindings::{kvm_regs, kvm_run};
use kvm_ioctls::VcpuFd;

use crate::kvm::{exit_data, msr};

/// A vCPU ioctl failed (the VMM's error type takes it as its `VcpuKvm`).
#[derive(Debug, thiserror::Error)]
#[error("vCPU {vcpu}: KVM {op}: {err}")]
pub struct Error {
    /// vCPU index.
    pub vcpu: u32,
    /// The ioctl.
    pub op: &'static str,
    /// KVM's error.
    pub err: kvm_ioctls::Error,
}

/// Maps a vCPU ioctl's error, naming the vCPU and the ioctl.
pub fn kvm_err(vcpu: u32, op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |err| Error { vcpu, op, err }
}

/// One vCPU's fd and exit-completion state.
pub struct KvmVcpu {
    fd: VcpuFd,
    index: u32,
    /// The last exit is completed only by the next `KVM_RUN`.
    pending_completion: bool,
}

impl KvmVcpu {
    /// vCPU `index`'s fd.
    pub fn new(fd: VcpuFd, index: u32) -> Self {
        Self {
            fd,
            index,
            pending_completion: false,
        }
    }

    /// The vCPU's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The fd, for ioctls that change no state a pending exit depends on.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The fd, mutably (the `kvm_run` mapping, `KVM_RUN`).
    pub fn fd_mut(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }

    /// The `kvm_run` mapping.
    pub fn run_area(&mut self) -> &mut kvm_run {
        self.fd.get_kvm_run()
    }

    /// The error of `op` on this vCPU.
    pub fn err(&self, op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error + use<> {
        kvm_err(self.index, op)
    }

    /// Records whether the exit `KVM_RUN` just returned is completed only by
    /// the next `KVM_RUN` (I/O, MMIO, MSR exits).
    pub fn set_exit_pending(&mut self, pending: bool) {
        self.pending_completion = pending;
    }

    /// Completes the last exit if KVM has not yet (see [`exit_data`]); call
    /// before any ioctl that changes the vCPU's state.
    pub fn complete_pending_exit(&mut self) -> Result<(), Error> {
        if !std::mem::take(&mut self.pending_completion) {
            return Ok(());
        }
        exit_data::complete_pending(&mut self.fd)
            .map_err(kvm_err(self.index, "KVM_RUN (completing an exit)"))
    }

    /// MSR `index`, read as the host (`None`: KVM does not return it).
    pub fn get_msr(&self, index: u32) -> Result<Option<u64>, Error> {
        msr::get(&self.fd, index).map_err(kvm_err(self.index, "KVM_GET_MSRS"))
    }

    /// A host-initiated write of MSR `index`. `false`: KVM refused it.
    pub fn set_msr(&self, index: u32, data: u64) -> Result<bool, Error> {
        msr::set(&self.fd, index, data).map_err(kvm_err(self.index, "KVM_SET_MSRS"))
    }

    /// The general registers (`KVM_GET_REGS`).
    pub fn regs(&self) -> Result<kvm_regs, Error> {
        self.fd
            .get_regs()
            .map_err(kvm_err(self.index, "KVM_GET_REGS"))
    }

    /// RIP, for error reports (0 if it cannot be read).
    pub fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    /// After `KVM_SET_REGS`/`KVM_SET_SREGS`: the synced copies in
    /// `kvm_run` are stale, and must not be written back at the next
    /// entry.
    pub fn drop_synced_regs(&mut self) {
        self.fd.get_kvm_run().kvm_dirty_regs = 0;
    }
}
