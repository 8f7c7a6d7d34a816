//! The KVM side of one vCPU as its own thread holds it: the vCPU fd, the
//! index errors name, and whether the last exit still waits for KVM to
//! complete it (see [`crate::kvm::exit_data`]). The run loop owns it and
//! lends it to the services (the irqchip backends, the hypercall trap),
//! which need nothing else of the loop.

use kvm_bindings::{KVM_SYNC_X86_EVENTS, kvm_interrupt, kvm_regs, kvm_run};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};

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

vmm_sys_util::ioctl_iow_nr!(KVM_INTERRUPT, kvm_bindings::KVMIO, 0x86, kvm_interrupt);

/// Which state KVM can keep in `kvm_run` for userspace (`KVM_CAP_SYNC_REGS`'s
/// answer, a mask of `KVM_SYNC_X86_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncRegs(pub u32);

impl SyncRegs {
    /// Whether the vCPU events (`KVM_SYNC_X86_EVENTS`) are among them.
    pub fn events(self) -> bool {
        self.0 & KVM_SYNC_X86_EVENTS != 0
    }
}

/// One vCPU's fd and exit-completion state.
pub struct KvmVcpu {
    fd: VcpuFd,
    index: u32,
    /// The last exit is completed only by the next `KVM_RUN`.
    pending_completion: bool,
    /// What KVM can keep in `kvm_run`.
    sync: SyncRegs,
    /// The vCPU events in `kvm_run` are KVM's as of the last `KVM_RUN`
    /// (no ioctl has changed them since).
    events_synced: bool,
}

impl KvmVcpu {
    /// vCPU `index`'s fd; `sync`: what KVM can keep in `kvm_run`.
    pub fn new(fd: VcpuFd, index: u32, sync: SyncRegs) -> Self {
        Self {
            fd,
            index,
            pending_completion: false,
            sync,
            events_synced: false,
        }
    }

    /// Asks KVM to copy the general and system registers, and the vCPU
    /// events where it can, into `kvm_run` at every exit: the hypercall
    /// and report paths read the registers there instead of paying for
    /// `KVM_GET_REGS`/`KVM_GET_SREGS`, and [`KvmVcpu::queue_interrupt`]
    /// injects through the events.
    pub fn sync_regs_at_exits(&mut self) {
        self.fd.set_sync_valid_reg(SyncReg::Register);
        self.fd.set_sync_valid_reg(SyncReg::SystemRegister);
        if self.sync.events() {
            self.fd.set_sync_valid_reg(SyncReg::VcpuEvents);
        }
    }

    /// `KVM_RUN`.
    pub fn run(&mut self) -> Result<VcpuExit<'_>, kvm_ioctls::Error> {
        // KVM stores the synced state on its way out of every KVM_RUN that
        // got past its argument checks, EINTR included.
        self.events_synced = self.sync.events();
        self.fd.run()
    }

    /// Queues external interrupt `vector` for the next entry, which KVM
    /// delivers through the guest's IDT (the caller has checked
    /// `ready_for_interrupt_injection` and IF).
    ///
    /// `KVM_INTERRUPT` is a vCPU ioctl of its own: on a host where each
    /// one costs microseconds (it loads and puts the vCPU), the same
    /// request rides on the next `KVM_RUN` instead, through the vCPU
    /// events KVM stored in `kvm_run` at the exit (`KVM_SYNC_X86_EVENTS`).
    /// Written back with no flags, they set the exception, interrupt and
    /// NMI-injection state and the NMI mask, and leave pending NMIs, the
    /// interrupt shadow, SMM and triple faults alone (x86.c
    /// `kvm_vcpu_ioctl_x86_set_vcpu_events`). So only while the stored
    /// copy is KVM's state as it is, with no exception, interrupt or NMI
    /// in flight; otherwise, as before, the ioctl. Returns whether the
    /// interrupt went through `kvm_run`.
    pub fn queue_interrupt(&mut self, vector: u8) -> Result<bool, Error> {
        if self.events_synced {
            let ev = &mut self.fd.sync_regs_mut().events;
            let idle = ev.exception.injected == 0
                && ev.exception.pending == 0
                && ev.interrupt.injected == 0
                && ev.nmi.injected == 0;
            if idle {
                ev.flags = 0;
                ev.interrupt.injected = 1;
                ev.interrupt.nr = vector;
                ev.interrupt.soft = 0;
                self.fd.set_sync_dirty_reg(SyncReg::VcpuEvents);
                return Ok(true);
            }
        }
        let irq = kvm_interrupt {
            irq: u32::from(vector),
        };
        // SAFETY: KVM_INTERRUPT reads one kvm_interrupt from the
        // reference, which outlives the call; the fd is a vCPU fd.
        let r = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.fd, KVM_INTERRUPT(), &irq) };
        if r < 0 {
            return Err(kvm_err(self.index, "KVM_INTERRUPT")(
                kvm_ioctls::Error::last(),
            ));
        }
        Ok(false)
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

    /// After `KVM_SET_REGS`/`KVM_SET_SREGS`/`KVM_SET_VCPU_EVENTS`: the
    /// synced copies in `kvm_run` are stale, and must not be written back
    /// at the next entry.
    pub fn drop_synced_regs(&mut self) {
        self.fd.get_kvm_run().kvm_dirty_regs = 0;
        self.events_synced = false;
    }
}
