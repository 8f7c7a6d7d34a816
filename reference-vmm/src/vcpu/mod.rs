//! A vCPU: the state other threads share with it (local APIC, Hyper-V VP
//! state, pending flush, kick target), its posted-interrupt descriptor and
//! run state (ipiv), and its run loop: entry preparation (flush, posted
//! vectors, NMIs, injection, CR8, lazy EOI), exit dispatch and HLT. Exits
//! are served by [`crate::vcpu::exits`], hypercalls by [`crate::hyperv::hypercall`],
//! APIC effects by [`crate::irqchip::user`].

pub mod exits;
pub mod io;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hv_enlightenments::msr as hvmsr;
use ipiv::{HaltCheck, Notify, PostedVcpu, RunState};
use kvm_bindings::kvm_interrupt;
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use lapic::LocalApic;
use vm_memory::{Bytes, GuestAddress};

use crate::error::Error;
use crate::irqchip::user::{complete_lazy_eoi, deliver_posted};
use crate::kvm::exit_data;
use crate::kvm::flush::flush_guest_tlb;
use crate::kvm::kick::KickTarget;
use crate::metrics::{ExitClass, VcpuMetrics, bump, tsc};
use crate::vcpu::io::VcpuIo;
use crate::vm::{FlushMethod, Machine};

vmm_sys_util::ioctl_iow_nr!(KVM_INTERRUPT, kvm_bindings::KVMIO, 0x86, kvm_interrupt);

/// How long a halted vCPU sleeps before it re-checks for a stop request
/// on its own (a stop also wakes it): long, so that a thousand halted
/// vCPUs cost the host nothing.
const HALT_SLICE: Duration = Duration::from_secs(1);
/// How long a flushing vCPU waits for a target to leave guest mode.
pub const FLUSH_WAIT: Duration = Duration::from_secs(10);
/// NMIs latched at most: one pending behind one being delivered.
const MAX_PENDING_NMIS: u8 = 2;

/// State of a vCPU that other threads read and change, behind its lock.
pub struct State {
    /// The local APIC.
    pub apic: LocalApic,
    /// Hyper-V per-VP MSR state (`None` when the enlightenments are off).
    pub vp: Option<hvmsr::Vp>,
    /// Flush the guest TLB before the next entry.
    pub flush_pending: bool,
    /// Threads waiting for this vCPU to flush or leave guest mode.
    pub flush_waiters: u32,
    /// The thread is running and `kick` is valid.
    pub alive: bool,
    /// Kick target (valid while `alive`).
    pub kick: Option<KickTarget>,
    /// A halted vCPU was told to wake up.
    pub woken: bool,
    /// INIT/SIPI state (used where the VMM runs that protocol).
    pub mp: crate::irqchip::mp::MpEvents,
    /// NMIs to hand to KVM (`KVM_NMI`) before the next entry; at most
    /// two, as KVM keeps at most one pending behind the
    /// one being delivered (x86.c `process_nmi`).
    pub nmi_pending: u8,
    /// Kernel irqchip: the NMI pin (LINT1) was raised; the vCPU thread
    /// delivers it as KVM's LAPIC says ([`crate::irqchip::kernel`]).
    pub lint1_pending: bool,
    /// Kernel irqchip: the in-kernel state the thread saw when it
    /// stopped (for timeout reports).
    pub kernel_state: Option<String>,
}

/// A vCPU as seen by every thread.
pub struct Vcpu {
    /// vCPU index (= VP index = APIC ID in this VMM).
    pub index: u32,
    /// Posted-interrupt descriptor and run state.
    pub posted: Arc<PostedVcpu>,
    state: Mutex<State>,
    cond: Condvar,
    /// Counters.
    pub metrics: VcpuMetrics,
}

impl Vcpu {
    /// A vCPU with its APIC, VP state and posted-interrupt entry.
    pub fn new(
        index: u32,
        apic: LocalApic,
        vp: Option<hvmsr::Vp>,
        posted: Arc<PostedVcpu>,
    ) -> Self {
        Self {
            index,
            posted,
            state: Mutex::new(State {
                apic,
                vp,
                flush_pending: false,
                flush_waiters: 0,
                alive: false,
                kick: None,
                woken: false,
                mp: crate::irqchip::mp::MpEvents::default(),
                nmi_pending: 0,
                lint1_pending: false,
                kernel_state: None,
            }),
            cond: Condvar::new(),
            metrics: VcpuMetrics::default(),
        }
    }

    /// Locks the shared state (a poisoned lock is still usable: the state
    /// holds no invariant a panicking thread could break halfway).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run_state(&self) -> RunState {
        self.posted.run_state().get()
    }

    /// Kicks the vCPU out of KVM_RUN (it must be alive).
    fn kick_locked(&self, s: &State) {
        if !s.alive {
            return;
        }
        if let Some(k) = &s.kick {
            bump(&self.metrics.kicks);
            // SAFETY: `alive` is true under the lock the vCPU thread takes
            // to clear it before it exits and drops its VcpuFd.
            if let Err(e) = unsafe { k.kick() } {
                log::warn!("vCPU {}: {e}", self.index);
            }
        }
    }

    fn wake_locked(&self, s: &mut State) {
        s.woken = true;
        bump(&self.metrics.wakeups);
        self.cond.notify_all();
    }

    /// Carries out what ipiv said after a post.
    pub fn notify(&self, n: Notify) {
        match n {
            Notify::None => {}
            Notify::Kick => self.kick_locked(&self.lock()),
            Notify::Wake => self.wake_locked(&mut self.lock()),
        }
    }

    /// After the APIC's IRR changed under the lock (timer, non-posted
    /// deliveries): kick or wake according to the run state. A vCPU in
    /// guest mode with a lazy EOI armed is kicked even when the new vector
    /// is held back by the PPR: the guest may complete the in-service
    /// interrupt without an exit, and only an exit lets the VMM see that
    /// and inject the held vector (KVM kicks on every IRR change,
    /// lapic.c `__apic_accept_irq`).
    pub(crate) fn notify_apic_locked(&self, s: &mut State) {
        let deliverable = s.apic.pending().is_some();
        match self.run_state() {
            RunState::InGuest if deliverable || s.apic.lazy_eoi_armed() => self.kick_locked(s),
            RunState::Halted if deliverable => self.wake_locked(s),
            _ => {}
        }
    }

    /// Latches an NMI for the next entry and makes the thread look: a
    /// halted vCPU wakes whatever its IF (SDM 6.7).
    pub(crate) fn latch_nmi_locked(&self, s: &mut State) {
        s.nmi_pending = (s.nmi_pending + 1).min(MAX_PENDING_NMIS);
        self.latch_event_locked(s);
    }

    /// Kicks the vCPU out of guest mode or wakes it, whatever its IF.
    fn latch_event_locked(&self, s: &mut State) {
        if self.run_state() == RunState::InGuest {
            self.kick_locked(s);
        } else {
            self.wake_locked(s);
        }
    }

    /// Raises this vCPU's NMI pin, LINT1 (QEMU's `nmi` monitor command, a
    /// watchdog): delivered as LVT LINT1 says (masked: dropped; NMI mode:
    /// an NMI; fixed: its vector), or as an NMI while the APIC is
    /// hardware-disabled, when LINT1 is the processor's NMI pin (SDM
    /// 10.4.3). The kernel irqchip's vCPU thread reads KVM's LVT itself
    /// before its next entry.
    pub fn raise_lint1(&self, kernel_irqchip: bool) {
        let mut s = self.lock();
        if kernel_irqchip {
            s.lint1_pending = true;
            self.latch_event_locked(&mut s);
            return;
        }
        if s.apic.mode() == lapic::ApicMode::Disabled {
            self.latch_nmi_locked(&mut s);
            return;
        }
        match s.apic.local_interrupt(lapic::Lvt::Lint1) {
            lapic::Delivery::Nmi => self.latch_nmi_locked(&mut s),
            lapic::Delivery::Accepted => self.notify_apic_locked(&mut s),
            _ => {}
        }
    }

    /// After an INIT or SIPI was latched under the lock: kick the vCPU out
    /// of guest mode, or wake it from HLT or wait-for-SIPI.
    pub(crate) fn notify_mp_locked(&self, s: &mut State) {
        if self.run_state() == RunState::InGuest {
            self.kick_locked(s);
        } else {
            self.wake_locked(s);
        }
    }

    /// Blocks until woken (or for a slice, to re-check a stop request).
    pub(crate) fn wait_event<'g>(&self, mut s: MutexGuard<'g, State>) -> MutexGuard<'g, State> {
        s.woken = false;
        self.cond
            .wait_timeout(s, HALT_SLICE)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    /// Posts a fixed interrupt through the posted-interrupt descriptor.
    pub fn post(&self, vector: u8) {
        self.notify(self.posted.post(vector));
    }

    /// Asks for a guest TLB flush before the next entry. Returns whether
    /// the vCPU is in guest mode now (it was kicked and the caller should
    /// wait with [`Vcpu::wait_flushed`]); otherwise the flush is deferred
    /// to its next entry. The caller counts requests and deferrals (once
    /// per hypercall, not per target).
    pub fn request_flush(&self) -> bool {
        let mut s = self.lock();
        s.flush_pending = true;
        if self.run_state() == RunState::InGuest {
            self.kick_locked(&s);
            true
        } else {
            false
        }
    }

    /// Waits until the vCPU has flushed or is out of guest mode (it then
    /// flushes before it enters again).
    pub fn wait_flushed(&self, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        let mut s = self.lock();
        s.flush_waiters += 1;
        while s.flush_pending && s.alive && self.run_state() == RunState::InGuest {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                s.flush_waiters -= 1;
                return Err(Error::Timeout {
                    waited: timeout,
                    what: format!("vCPU {} to leave guest mode for a TLB flush", self.index),
                });
            }
            s = self
                .cond
                .wait_timeout(s, left.min(HALT_SLICE))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.flush_waiters -= 1;
        Ok(())
    }

    /// Fires the APIC timer if due; returns its next deadline (APIC clock
    /// nanoseconds).
    pub fn timer_fire(&self) -> Option<u64> {
        let mut s = self.lock();
        let poll = s.apic.poll_timer();
        if poll.expired {
            bump(&self.metrics.timer_fires);
            self.notify_apic_locked(&mut s);
        }
        poll.next_deadline
    }

    /// Wakes or kicks the vCPU so it notices a stop request.
    pub fn stop(&self) {
        let mut s = self.lock();
        s.woken = true;
        self.cond.notify_all();
        if self.run_state() == RunState::InGuest {
            self.kick_locked(&s);
        }
    }

    /// A one-line description for timeout reports.
    pub fn describe(&self) -> String {
        let s = self.lock();
        let state = match s.mp.state {
            crate::irqchip::mp::MpState::WaitForSipi => "WaitForSipi".to_string(),
            crate::irqchip::mp::MpState::Runnable => format!("{:?}", self.run_state()),
        };
        let exits = self.metrics.exits.load(Ordering::Relaxed);
        // Kernel irqchip: the userspace APIC is unused; show KVM's.
        if let Some(k) = &s.kernel_state {
            return format!("vCPU {}: {k}, exits {exits}", self.index);
        }
        format!(
            "vCPU {}: {state}, APIC pending {:?}, ISR top {:?}, exits {exits}",
            self.index,
            s.apic.pending(),
            s.apic.isr().highest(),
        )
    }
}

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
        let eoi = complete_lazy_eoi(m, me, &mut s);
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
