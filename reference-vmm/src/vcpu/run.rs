//! The run loop of one vCPU thread ([`Runner`]): entry preparation
//! (flush, NMIs, posted vectors, injection, CR8, lazy EOI), `KVM_RUN`, the
//! sync after each exit, exit dispatch and HLT in userspace.

use std::sync::atomic::Ordering;

use ipiv::{HaltCheck, RunState};
use kvm_bindings::kvm_interrupt;
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use super::io::VcpuIo;
use super::{HALT_SLICE, State, Vcpu};
use crate::error::Error;
use crate::irqchip::user::{LazyEoiExit, clear_lazy_eoi_bit, complete_lazy_eoi, deliver_posted};
use crate::kvm::exit_data;
use crate::kvm::flush::flush_guest_tlb;
use crate::kvm::kick::KickTarget;
use crate::metrics::{ExitClass, bump, tsc};
use crate::vm::{FlushMethod, Machine};

vmm_sys_util::ioctl_iow_nr!(KVM_INTERRUPT, kvm_bindings::KVMIO, 0x86, kvm_interrupt);

/// Owned facts of one exit, taken before the `kvm_run` borrow ends; the
/// data of I/O, MMIO and MSR exits is read from `kvm_run` afterwards
/// ([`crate::kvm::exit_data`]).
enum Exit {
    /// `KVM_EXIT_IO`.
    Pio,
    /// `KVM_EXIT_MMIO`.
    Mmio,
    /// `KVM_EXIT_X86_RDMSR` / `KVM_EXIT_X86_WRMSR`.
    Msr {
        write: bool,
    },
    Hlt,
    Handled,
    Intr,
    IoapicEoi(u8),
    Fatal(String),
}

impl Exit {
    /// Whether KVM completes this exit only at the next `KVM_RUN`.
    fn needs_completion(&self) -> bool {
        matches!(self, Exit::Pio | Exit::Mmio | Exit::Msr { .. })
    }
}

pub(crate) fn kvm_err(vcpu: u32, op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |err| Error::VcpuKvm { vcpu, op, err }
}

/// The run loop of one vCPU thread.
pub struct Runner<'a> {
    pub(crate) m: &'a Machine,
    pub(crate) me: &'a Vcpu,
    pub(crate) fd: VcpuFd,
    /// This vCPU's own devices over the VM's buses.
    pub(crate) io: VcpuIo,
    /// Host TSC when the last `KVM_RUN` returned.
    exit_tsc: u64,
    /// The last exit is completed only by the next `KVM_RUN`.
    pending_completion: bool,
    /// A lazy EOI was kept armed at the last exit
    /// ([`LazyEoiExit::Held`]).
    lazy_held: bool,
    /// An exception (#GP from an MSR exit, #UD from the hypercall trap)
    /// is delivered at the next entry: no interrupt may be injected with
    /// it, its handler runs with IF=0 (SDM 6.9, event priority).
    exception_queued: bool,
}

impl<'a> Runner<'a> {
    /// A runner for vCPU `index` of `m`, dispatching its I/O through `io`.
    pub fn new(m: &'a Machine, index: usize, fd: VcpuFd, io: VcpuIo) -> Option<Self> {
        let me = m.vcpus.get(index)?;
        Some(Self {
            m,
            me,
            fd,
            io,
            exit_tsc: 0,
            pending_completion: false,
            exception_queued: false,
            lazy_held: false,
        })
    }

    /// Runs until the machine stops or this vCPU fails.
    pub fn run(mut self) -> Result<(), Error> {
        {
            let mut s = self.me.lock();
            s.kick = Some(KickTarget::current(
                &mut self.fd.get_kvm_run().immediate_exit,
            ));
            s.alive = true;
        }
        // KVM copies the registers into kvm_run at every exit: the
        // hypercall and report paths read them there instead of paying
        // for KVM_GET_REGS/KVM_GET_SREGS.
        self.fd.set_sync_valid_reg(SyncReg::Register);
        self.fd.set_sync_valid_reg(SyncReg::SystemRegister);
        let r = self.run_loop();
        let snapshot = self.m.kernel.is_some().then(|| self.kernel_snapshot());
        let mut s = self.me.lock();
        s.kernel_state = snapshot;
        s.alive = false;
        s.kick = None;
        self.me.posted.run_state().set(RunState::OutsideGuest);
        self.me.cond.notify_all();
        r
    }

    pub(crate) fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    /// Completes the last exit if KVM has not yet (see [`exit_data`]); call
    /// before any ioctl that changes the vCPU's state.
    pub(crate) fn complete_pending_exit(&mut self) -> Result<(), Error> {
        if !std::mem::take(&mut self.pending_completion) {
            return Ok(());
        }
        exit_data::complete_pending(&mut self.fd)
            .map_err(kvm_err(self.me.index, "KVM_RUN (completing an exit)"))
    }

    /// Queues an exception for the next entry (no interrupt is injected
    /// with it).
    pub(crate) fn note_exception(&mut self) {
        self.exception_queued = true;
    }

    fn run_loop(&mut self) -> Result<(), Error> {
        loop {
            if self.m.stopping() {
                return Ok(());
            }
            if self.m.user_mp && !self.accept_mp_events()? {
                return Ok(());
            }
            let t_entry = tsc();
            self.prepare_entry()?;
            let metrics = &self.me.metrics;
            metrics
                .svc_cycles_entry
                .fetch_add(tsc().wrapping_sub(t_entry), Ordering::Relaxed);
            let exit = self.run_once();
            self.pending_completion = exit.needs_completion();
            let eoi = self.sync_after_exit();
            if let Some(vector) = eoi {
                self.m.broadcast_eoi(vector);
            }
            bump(&self.me.metrics.exits);
            match exit {
                Exit::Handled => {
                    let class = self.exit_class();
                    self.account(class);
                }
                Exit::Intr => {
                    bump(&self.me.metrics.exit_intr);
                    if let Some(k) = &self.me.lock().kick {
                        k.clear();
                    }
                    self.account(ExitClass::Other);
                }
                Exit::Hlt => {
                    bump(&self.me.metrics.exit_hlt);
                    // The sleep is not service time.
                    self.account(ExitClass::Hlt);
                    let if_flag = self.fd.get_kvm_run().if_flag != 0;
                    self.halt(if_flag);
                }
                Exit::Pio => {
                    bump(&self.me.metrics.exit_io);
                    let class = self.pio()?;
                    self.account(class);
                }
                Exit::Mmio => {
                    bump(&self.me.metrics.exit_mmio);
                    // Reports are the measurement's own exits: not counted.
                    if self.mmio() {
                        self.account(ExitClass::Mmio);
                    }
                }
                Exit::Msr { write } => {
                    if write {
                        bump(&self.me.metrics.exit_wrmsr);
                    } else {
                        bump(&self.me.metrics.exit_rdmsr);
                    }
                    self.msr(write)?;
                    self.account(ExitClass::Msr);
                }
                // Split irqchip: KVM's LAPIC completed a level-triggered
                // vector routed from the userspace IOAPIC.
                Exit::IoapicEoi(vector) => {
                    self.m.broadcast_eoi(vector);
                    self.account(ExitClass::Other);
                }
                Exit::Fatal(reason) => {
                    return Err(Error::Guest {
                        vcpu: self.me.index,
                        reason,
                        rip: self.rip(),
                    });
                }
            }
        }
    }

    /// The class of the exit `KVM_RUN` last returned, from `kvm_run`.
    fn exit_class(&mut self) -> ExitClass {
        match self.fd.get_kvm_run().exit_reason {
            kvm_bindings::KVM_EXIT_X86_RDMSR | kvm_bindings::KVM_EXIT_X86_WRMSR => ExitClass::Msr,
            kvm_bindings::KVM_EXIT_IO => ExitClass::Pio,
            kvm_bindings::KVM_EXIT_MMIO => ExitClass::Mmio,
            kvm_bindings::KVM_EXIT_HLT => ExitClass::Hlt,
            _ => ExitClass::Other,
        }
    }

    /// Adds the host TSC cycles since `KVM_RUN` returned to `class`.
    fn account(&self, class: ExitClass) {
        self.me
            .metrics
            .add_service(class, tsc().wrapping_sub(self.exit_tsc));
    }

    /// Flush, NMIs, posted vectors, interrupt injection, CR8 and lazy EOI
    /// before an entry; the run state becomes "in guest" under the vCPU's
    /// lock, so a timer or flush request from now on kicks.
    fn prepare_entry(&mut self) -> Result<(), Error> {
        let idx = self.me.index;
        let me = self.me;
        let mut s = me.lock();
        if s.flush_pending {
            if self.m.flush == FlushMethod::MmuReset {
                // Under the lock: no kick can race the immediate_exit
                // this uses.
                self.complete_pending_exit()?;
                flush_guest_tlb(&self.fd).map_err(kvm_err(idx, "KVM_SET_MSRS (TLB flush)"))?;
            }
            s.flush_pending = false;
            bump(&me.metrics.flushes_done);
            if s.flush_waiters > 0 {
                me.cond.notify_all();
            }
        }
        // KVM queues NMIs itself and injects each when NMIs are unblocked
        // (x86.c `process_nmi`, at most one pending behind one in service).
        for _ in 0..std::mem::take(&mut s.nmi_pending) {
            self.fd.nmi().map_err(kvm_err(idx, "KVM_NMI"))?;
            bump(&me.metrics.nmis);
        }
        if std::mem::take(&mut s.lint1_pending) {
            self.kernel_lint1()?;
        }
        let exception = std::mem::take(&mut self.exception_queued);
        let posted = me.posted.run_state().enter_guest(me.posted.descriptor());
        if self.m.kernel.is_some() {
            // KVM's LAPIC injects, halts and completes EOIs itself; the run
            // state above still tells flush requests to kick.
            return Ok(());
        }
        deliver_posted(&mut s, posted);
        let run = self.fd.get_kvm_run();
        // KVM loads CR8 from kvm_run at every entry without an in-kernel
        // APIC (x86.c `kvm_arch_vcpu_ioctl_run`): TPR[7:4] = CR8[3:0].
        run.cr8 = s.apic.cr8();
        let can_inject = run.ready_for_interrupt_injection != 0 && run.if_flag != 0 && !exception;
        match s.apic.pending() {
            Some(v) if can_inject => {
                let irq = kvm_interrupt { irq: u32::from(v) };
                // SAFETY: KVM_INTERRUPT reads one kvm_interrupt from the
                // reference, which outlives the call; the fd is a vCPU fd.
                let r =
                    unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.fd, KVM_INTERRUPT(), &irq) };
                if r < 0 {
                    return Err(Error::VcpuKvm {
                        vcpu: idx,
                        op: "KVM_INTERRUPT",
                        err: kvm_ioctls::Error::last(),
                    });
                }
                s.apic.acknowledge(v);
                bump(&me.metrics.injections);
                self.fd.get_kvm_run().request_interrupt_window =
                    u8::from(s.apic.pending().is_some());
            }
            Some(_) => self.fd.get_kvm_run().request_interrupt_window = 1,
            None => self.fd.get_kvm_run().request_interrupt_window = 0,
        }
        if std::mem::take(&mut self.lazy_held) {
            if s.apic.lazy_eoi_armed() {
                // Exit as soon as the guest can take the waiting interrupt.
                self.fd.get_kvm_run().request_interrupt_window = 1;
                return Ok(());
            }
            clear_lazy_eoi_bit(self.m, &s);
        }
        self.arm_lazy_eoi(&mut s);
        Ok(())
    }

    /// Sets `apic_assist` bit 0 when lapic says the in-service interrupt
    /// may be completed without an EOI write (DESIGN.md "Lazy EOI").
    fn arm_lazy_eoi(&self, s: &mut State) {
        if !self.m.lazy_eoi {
            return;
        }
        let Some(page) = s.vp.as_ref().and_then(|vp| vp.vp_assist_page()) else {
            return;
        };
        if s.apic.arm_lazy_eoi() && self.m.mem.write_obj(1u32, GuestAddress(page)).is_err() {
            // Not guest RAM: the guest cannot see the bit, so do not arm.
            let _ = s.apic.complete_lazy_eoi(false);
        }
    }

    /// Out of guest mode before the exit is handled, so that handlers (a
    /// self-IPI, a flush of oneself) see it so; then the lazy EOI and the
    /// guest's CR8, before anything else touches the APIC. Returns the
    /// vector of a level-triggered EOI for the IOAPIC (sent by the caller,
    /// with no vCPU lock held).
    fn sync_after_exit(&mut self) -> Option<u8> {
        let (m, me) = (self.m, self.me);
        let posted = me.posted.run_state().leave_guest(me.posted.descriptor());
        let mut s = me.lock();
        // KVM's `ready_for_interrupt_injection` is 0 while an interrupt
        // queued with KVM_INTERRUPT has not been delivered yet (x86.c
        // `kvm_cpu_accept_dm_intr`).
        let run = self.fd.get_kvm_run();
        let can_take = run.if_flag != 0 && run.ready_for_interrupt_injection != 0;
        let eoi = match complete_lazy_eoi(m, me, &mut s, can_take) {
            LazyEoiExit::Completed(ioapic) => ioapic,
            LazyEoiExit::Held => {
                self.lazy_held = true;
                None
            }
            LazyEoiExit::None => None,
        };
        deliver_posted(&mut s, posted);
        if m.kernel.is_none() {
            // KVM stores CR8 in kvm_run at every exit; a `mov cr8` that
            // lowers it exits with KVM_EXIT_SET_TPR, one that raises it is
            // seen here at the next exit. Unchanged: TPR[3:0] stay.
            let cr8 = self.fd.get_kvm_run().cr8;
            if cr8 != s.apic.cr8() {
                s.apic.set_cr8(cr8);
            }
        }
        if s.flush_waiters > 0 {
            me.cond.notify_all();
        }
        eoi
    }

    fn run_once(&mut self) -> Exit {
        let r = self.fd.run();
        self.exit_tsc = tsc();
        match r {
            Ok(VcpuExit::IoOut(..) | VcpuExit::IoIn(..)) => Exit::Pio,
            Ok(VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..)) => Exit::Mmio,
            Ok(VcpuExit::X86Rdmsr(_)) => Exit::Msr { write: false },
            Ok(VcpuExit::X86Wrmsr(_)) => Exit::Msr { write: true },
            Ok(VcpuExit::Hlt) => Exit::Hlt,
            Ok(VcpuExit::IoapicEoi(vector)) => Exit::IoapicEoi(vector),
            // The CR8 write is picked up by `sync_after_exit`.
            Ok(VcpuExit::SetTpr) => Exit::Handled,
            Ok(VcpuExit::IrqWindowOpen) => {
                bump(&self.me.metrics.exit_irq_window);
                Exit::Handled
            }
            Ok(VcpuExit::Intr) => Exit::Intr,
            Ok(VcpuExit::Shutdown) => Exit::Fatal("shutdown (triple fault)".into()),
            Ok(VcpuExit::InternalError) => Exit::Fatal(self.internal_error()),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Exit::Fatal(format!(
                "KVM_EXIT_FAIL_ENTRY: hardware reason {reason:#x} on host CPU {cpu}"
            )),
            Ok(other) => {
                bump(&self.me.metrics.exit_other);
                Exit::Fatal(format!("unexpected exit {other:?}"))
            }
            Err(e) if e.errno() == libc::EINTR => Exit::Intr,
            Err(e) if e.errno() == libc::EAGAIN => Exit::Handled,
            Err(e) => Exit::Fatal(format!("KVM_RUN failed: {e}")),
        }
    }

    /// HLT in userspace: block until an interrupt can be taken (one is
    /// pending and the guest halted with IF=1), an NMI or INIT/SIPI
    /// arrives, or the machine stops. `cli; hlt` with a maskable interrupt
    /// pending stays halted, as KVM's `kvm_vcpu_has_events` decides. The
    /// "halted" run state is published with ipiv's protocol, so posters
    /// know to wake this thread.
    fn halt(&self, if_flag: bool) {
        let me = self.me;
        let desc = me.posted.descriptor();
        let mut s = me.lock();
        let wakes = |s: &State| {
            (if_flag && s.apic.pending().is_some()) || s.nmi_pending > 0 || s.mp.pending()
        };
        loop {
            if self.m.stopping() || wakes(&s) {
                break;
            }
            s.woken = false;
            if me.posted.run_state().prepare_halt(desc) == HaltCheck::Pending {
                let posted = me.posted.run_state().leave_guest(desc);
                deliver_posted(&mut s, posted);
                continue;
            }
            while !s.woken && !self.m.stopping() && !wakes(&s) {
                s = me
                    .cond
                    .wait_timeout(s, HALT_SLICE)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let posted = me.posted.run_state().leave_guest(desc);
            deliver_posted(&mut s, posted);
        }
    }
}
