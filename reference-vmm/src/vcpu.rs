//! A vCPU: the state other threads share with it (local APIC, Hyper-V VP
//! state, pending flush, kick target), its posted-interrupt descriptor and
//! run state (ipiv), and its run loop: entry preparation (flush, posted
//! vectors, injection, lazy EOI), exit dispatch and HLT. MSR exits are
//! routed by [`crate::msr`], hypercalls by [`crate::hypercall`], APIC
//! effects by [`crate::irq`].

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hv_enlightenments::msr as hvmsr;
use ipiv::{HaltCheck, Notify, PostedVcpu, RunState};
use kvm_bindings::{kvm_interrupt, kvm_regs};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use lapic::LocalApic;
use vm_memory::{Bytes, GuestAddress};

use crate::error::Error;
use crate::flush::flush_guest_tlb;
use crate::guest::abi;
use crate::irq::{apply_apic_outcome, complete_lazy_eoi, deliver_posted};
use crate::kick::KickTarget;
use crate::metrics::{ExitClass, VcpuMetrics, bump, tsc};
use crate::msr::{msr_read, msr_write};
use crate::vm::{FlushMethod, Machine};

vmm_sys_util::ioctl_iow_nr!(KVM_INTERRUPT, kvm_bindings::KVMIO, 0x86, kvm_interrupt);

/// How long a halted vCPU sleeps before it re-checks for a stop request
/// on its own (a stop also wakes it): long, so that a thousand halted
/// vCPUs cost the host nothing.
const HALT_SLICE: Duration = Duration::from_secs(1);
/// `kvm_run.internal.suberror` of an instruction emulation failure.
const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;
/// How long a flushing vCPU waits for a target to leave guest mode.
pub const FLUSH_WAIT: Duration = Duration::from_secs(10);

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
    pub mp: crate::mp::MpEvents,
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
                mp: crate::mp::MpEvents::default(),
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

    /// After the APIC's IRR changed under the lock (timer, INIT-class
    /// deliveries): kick or wake according to the run state.
    pub(crate) fn notify_apic_locked(&self, s: &mut State) {
        if s.apic.pending().is_none() {
            return;
        }
        match self.run_state() {
            RunState::InGuest => self.kick_locked(s),
            RunState::Halted => self.wake_locked(s),
            RunState::OutsideGuest => {}
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
            crate::mp::MpState::WaitForSipi => "WaitForSipi".to_string(),
            crate::mp::MpState::Runnable => format!("{:?}", self.run_state()),
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

/// Owned facts of one exit, taken before the `kvm_run` borrow ends.
enum Exit {
    Io {
        port: u16,
        value: u32,
        size: usize,
    },
    Hlt,
    Report(u32),
    Handled,
    Intr,
    Fatal(String),
    /// Kernel irqchip: an MSR exit served after the `kvm_run` borrow ends
    /// (the replay needs vCPU ioctls).
    Rdmsr(u32),
    Wrmsr(u32, u64),
}

pub(crate) fn kvm_err(vcpu: u32, op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |err| Error::VcpuKvm { vcpu, op, err }
}

/// The run loop of one vCPU thread.
pub struct Runner<'a> {
    pub(crate) m: &'a Machine,
    pub(crate) me: &'a Vcpu,
    pub(crate) fd: VcpuFd,
    /// Host TSC when the last `KVM_RUN` returned.
    exit_tsc: u64,
}

impl<'a> Runner<'a> {
    /// A runner for vCPU `index` of `m`.
    pub fn new(m: &'a Machine, index: usize, fd: VcpuFd) -> Option<Self> {
        let me = m.vcpus.get(index)?;
        Some(Self {
            m,
            me,
            fd,
            exit_tsc: 0,
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

    fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
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
                    self.halt();
                }
                Exit::Io { port, value, size } => {
                    bump(&self.me.metrics.exit_io);
                    self.port_out(port, value, size)?;
                    self.account(if port == abi::HYPERCALL_PORT {
                        ExitClass::Hypercall
                    } else {
                        ExitClass::Pio
                    });
                }
                // Reports are the measurement's own exits: not counted.
                Exit::Report(code) => {
                    let regs = self.fd.sync_regs().regs;
                    self.m.report(self.me.index, code, regs.rdi, regs.rsi);
                }
                Exit::Fatal(reason) => {
                    return Err(Error::Guest {
                        vcpu: self.me.index,
                        reason,
                        rip: self.rip(),
                    });
                }
                Exit::Rdmsr(index) => {
                    let v = self.kernel_rdmsr(index)?;
                    self.complete_msr_exit(v.is_none(), v.unwrap_or(0));
                    self.account(ExitClass::Msr);
                }
                Exit::Wrmsr(index, data) => {
                    let ok = self.kernel_wrmsr(index, data)?;
                    self.complete_msr_exit(!ok, data);
                    self.account(ExitClass::Msr);
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

    /// Answers the pending KVM_EXIT_X86_RDMSR/WRMSR: `error` injects #GP,
    /// `data` is what a RDMSR returns.
    fn complete_msr_exit(&mut self, error: bool, data: u64) {
        let run = self.fd.get_kvm_run();
        // SAFETY: the last exit was KVM_EXIT_X86_RDMSR or _WRMSR (this is
        // only called for those), so `msr` is the live union member; the
        // mapping belongs to this thread's vCPU fd.
        let msr = unsafe { &mut run.__bindgen_anon_1.msr };
        msr.error = u8::from(error);
        msr.data = data;
    }

    /// Flush, posted vectors, interrupt injection and lazy EOI before an
    /// entry; the run state becomes "in guest" under the vCPU's lock, so a
    /// timer or flush request from now on kicks.
    fn prepare_entry(&mut self) -> Result<(), Error> {
        let idx = self.me.index;
        let mut s = self.me.lock();
        if s.flush_pending {
            if self.m.flush == FlushMethod::MmuReset {
                flush_guest_tlb(&self.fd).map_err(kvm_err(idx, "KVM_SET_SREGS (TLB flush)"))?;
            }
            s.flush_pending = false;
            bump(&self.me.metrics.flushes_done);
            if s.flush_waiters > 0 {
                self.me.cond.notify_all();
            }
        }
        let posted = self
            .me
            .posted
            .run_state()
            .enter_guest(self.me.posted.descriptor());
        if self.m.kernel.is_some() {
            // KVM's LAPIC injects, halts and completes EOIs itself; the run
            // state above still tells flush requests to kick.
            return Ok(());
        }
        deliver_posted(&mut s, posted);
        let run = self.fd.get_kvm_run();
        let can_inject = run.ready_for_interrupt_injection != 0 && run.if_flag != 0;
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
                bump(&self.me.metrics.injections);
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

    fn run_once(&mut self) -> Exit {
        let m = self.m;
        let me = self.me;
        let r = self.fd.run();
        self.exit_tsc = tsc();
        // Out of guest mode before the exit is handled, so that handlers (a
        // self-IPI, a flush of oneself) see it so; then the lazy EOI, before
        // anything else touches the APIC. `r` borrows the vCPU fd; this
        // needs only shared state.
        {
            let posted = me.posted.run_state().leave_guest(me.posted.descriptor());
            let mut s = me.lock();
            complete_lazy_eoi(m, me, &mut s);
            deliver_posted(&mut s, posted);
            if s.flush_waiters > 0 {
                me.cond.notify_all();
            }
        }
        match r {
            Ok(VcpuExit::IoOut(port, data)) => {
                let mut b = [0u8; 4];
                let n = data.len().min(4);
                b[..n].copy_from_slice(&data[..n]);
                Exit::Io {
                    port,
                    value: u32::from_le_bytes(b),
                    size: n,
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                bump(&me.metrics.exit_io);
                if !m.pio.read(u64::from(port), data) {
                    data.fill(0xFF);
                }
                Exit::Handled
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                bump(&me.metrics.exit_mmio);
                let s = me.lock();
                let base = s.apic.mmio_base();
                if s.apic.mode() == lapic::ApicMode::XApic && (base..base + 0x1000).contains(&addr)
                {
                    s.apic.read_mmio(addr - base, data);
                } else if !m.mmio.read(addr, data) {
                    data.fill(0xFF);
                }
                Exit::Handled
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                bump(&me.metrics.exit_mmio);
                if addr == abi::REPORT_MMIO && !m.external {
                    let mut b = [0u8; 4];
                    let n = data.len().min(4);
                    b[..n].copy_from_slice(&data[..n]);
                    return Exit::Report(u32::from_le_bytes(b));
                }
                let out = {
                    let mut s = me.lock();
                    let base = s.apic.mmio_base();
                    (s.apic.mode() == lapic::ApicMode::XApic
                        && (base..base + 0x1000).contains(&addr))
                    .then(|| s.apic.write_mmio(addr - base, data))
                };
                match out {
                    // An MMIO write has no #GP: a refused write is dropped.
                    Some(o) => {
                        let _ = apply_apic_outcome(m, me, o);
                    }
                    None => {
                        m.mmio.write(addr, data);
                    }
                }
                Exit::Handled
            }
            Ok(VcpuExit::X86Rdmsr(exit)) if m.kernel.is_some() => {
                bump(&me.metrics.exit_rdmsr);
                Exit::Rdmsr(exit.index)
            }
            Ok(VcpuExit::X86Wrmsr(exit)) if m.kernel.is_some() => {
                bump(&me.metrics.exit_wrmsr);
                Exit::Wrmsr(exit.index, exit.data)
            }
            Ok(VcpuExit::X86Rdmsr(exit)) => {
                bump(&me.metrics.exit_rdmsr);
                match msr_read(m, me, exit.index) {
                    Some(v) => *exit.data = v,
                    None => *exit.error = 1,
                }
                Exit::Handled
            }
            Ok(VcpuExit::X86Wrmsr(exit)) => {
                bump(&me.metrics.exit_wrmsr);
                if !msr_write(m, me, exit.index, exit.data) {
                    *exit.error = 1;
                }
                Exit::Handled
            }
            Ok(VcpuExit::Hlt) => Exit::Hlt,
            // Split irqchip: KVM's LAPIC completed a level-triggered vector
            // routed from the userspace IOAPIC.
            Ok(VcpuExit::IoapicEoi(vector)) => {
                m.broadcast_eoi(vector);
                Exit::Handled
            }
            Ok(VcpuExit::IrqWindowOpen) => {
                bump(&me.metrics.exit_irq_window);
                Exit::Handled
            }
            Ok(VcpuExit::Intr) => Exit::Intr,
            Ok(VcpuExit::Shutdown) => Exit::Fatal("shutdown (triple fault)".into()),
            Ok(VcpuExit::InternalError) => {
                let run = self.fd.get_kvm_run();
                // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so the
                // kernel filled the `internal` member of the union.
                let internal = unsafe { run.__bindgen_anon_1.internal };
                let what = match internal.suberror {
                    1 => "emulation failure",
                    2 => "simultaneous exceptions",
                    3 => "delivery event failure",
                    _ => "internal error",
                };
                let n = (internal.ndata as usize).min(internal.data.len());
                let data = internal.data[..n].to_vec();
                let insn = if internal.suberror == KVM_INTERNAL_ERROR_EMULATION {
                    crate::fault::describe_instruction(&self.fd, &self.m.mem, &data)
                } else {
                    String::new()
                };
                Exit::Fatal(format!(
                    "KVM_EXIT_INTERNAL_ERROR: {what} (suberror {}, data {data:x?}){insn}",
                    internal.suberror,
                ))
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => Exit::Fatal(format!(
                "KVM_EXIT_FAIL_ENTRY: hardware reason {reason:#x} on host CPU {cpu}"
            )),
            Ok(other) => {
                bump(&me.metrics.exit_other);
                Exit::Fatal(format!("unexpected exit {other:?}"))
            }
            Err(e) if e.errno() == libc::EINTR => Exit::Intr,
            Err(e) if e.errno() == libc::EAGAIN => Exit::Handled,
            Err(e) => Exit::Fatal(format!("KVM_RUN failed: {e}")),
        }
    }

    /// HLT in userspace: block until an interrupt is deliverable or the
    /// machine stops. The "halted" run state is published with ipiv's
    /// protocol, so posters know to wake this thread.
    fn halt(&self) {
        let me = self.me;
        let desc = me.posted.descriptor();
        let mut s = me.lock();
        loop {
            if self.m.stopping() || s.apic.pending().is_some() || s.mp.pending() {
                break;
            }
            s.woken = false;
            if me.posted.run_state().prepare_halt(desc) == HaltCheck::Pending {
                let posted = me.posted.run_state().leave_guest(desc);
                deliver_posted(&mut s, posted);
                continue;
            }
            while !s.woken && !self.m.stopping() && !s.mp.pending() {
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

    fn port_out(&mut self, port: u16, value: u32, size: usize) -> Result<(), Error> {
        match port {
            // External guests: the hypercall port exists only with
            // Hyper-V on; the panic port not at all.
            abi::HYPERCALL_PORT if !self.m.external || self.m.hyperv => self.hypercall(),
            abi::PANIC_PORT if !self.m.external => {
                let regs = self.regs()?;
                Err(Error::Guest {
                    vcpu: self.me.index,
                    reason: format!(
                        "guest exception vector {} (error code {:#x})",
                        regs.rax & 0xFF,
                        regs.rsi
                    ),
                    rip: regs.rdx,
                })
            }
            _ => {
                // Devices see the access size the guest used (a 16-bit
                // fw_cfg selector write is not a 32-bit one).
                let b = value.to_le_bytes();
                self.m.pio.write(u64::from(port), &b[..size.min(b.len())]);
                Ok(())
            }
        }
    }

    fn regs(&self) -> Result<kvm_regs, Error> {
        self.fd
            .get_regs()
            .map_err(kvm_err(self.me.index, "KVM_GET_REGS"))
    }
}
