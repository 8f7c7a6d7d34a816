//! A vCPU: the state other threads share with it (local APIC, halted and
//! in-guest flags, pending flush, kick target) and its run loop.

use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_interrupt, kvm_regs};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use crate::apic::{self, Apic, Effect, Shorthand};
use crate::error::Error;
use crate::guest::abi;
use crate::hyperv::{self, Call, MsrEffect, Targets};
use crate::kick::KickTarget;
use crate::metrics::{VcpuMetrics, bump};
use crate::vm::Machine;

vmm_sys_util::ioctl_iow_nr!(KVM_INTERRUPT, kvm_bindings::KVMIO, 0x86, kvm_interrupt);

/// How long a halted vCPU sleeps before it re-checks for a stop request.
const HALT_SLICE: Duration = Duration::from_millis(50);
/// How long a flushing vCPU waits for a target to leave guest mode.
pub const FLUSH_WAIT: Duration = Duration::from_secs(10);
/// #UD vector.
const UD_VECTOR: u8 = 6;

/// State of a vCPU that other threads read and change.
#[derive(Debug)]
pub struct State {
    /// The local APIC.
    pub apic: Apic,
    /// Hyper-V per-VP MSR state.
    pub vp: hyperv::Vp,
    /// Blocked in a HLT exit, waiting for an interrupt.
    pub halted: bool,
    /// Inside (or about to enter) KVM_RUN.
    pub in_guest: bool,
    /// A kick was sent and the vCPU has not left KVM_RUN since.
    pub kick_pending: bool,
    /// Flush the guest TLB before the next entry.
    pub flush_pending: bool,
    /// Threads waiting for this vCPU to flush or leave guest mode.
    pub flush_waiters: u32,
    /// The thread is running and `kick` is valid.
    pub alive: bool,
    /// Kick target (valid while `alive`).
    pub kick: Option<KickTarget>,
    /// The VMM set `apic_assist` bit 0 before the last entry.
    pub lazy_armed: bool,
}

/// A vCPU as seen by every thread.
#[derive(Debug)]
pub struct Vcpu {
    /// vCPU index (= VP index = APIC ID in this VMM).
    pub index: u32,
    state: Mutex<State>,
    cond: Condvar,
    /// Counters.
    pub metrics: VcpuMetrics,
}

impl Vcpu {
    /// A vCPU with APIC ID `index`.
    pub fn new(index: u32) -> Self {
        Self {
            index,
            state: Mutex::new(State {
                apic: Apic::new(index),
                vp: hyperv::Vp { index, assist: 0 },
                halted: false,
                in_guest: false,
                kick_pending: false,
                flush_pending: false,
                flush_waiters: 0,
                alive: false,
                kick: None,
                lazy_armed: false,
            }),
            cond: Condvar::new(),
            metrics: VcpuMetrics::default(),
        }
    }

    /// Locks the shared state (a poisoned lock is still usable: the
    /// state holds no invariants a panicking thread could break halfway).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gets this vCPU's attention after its state changed: wakes it when
    /// halted, kicks it when in guest mode (unless a kick is outstanding).
    fn notify(&self, s: &mut State) {
        if s.halted {
            s.halted = false;
            bump(&self.metrics.wakeups);
            self.cond.notify_all();
        } else if s.in_guest && !s.kick_pending && s.alive {
            if let Some(k) = &s.kick {
                s.kick_pending = true;
                bump(&self.metrics.kicks);
                // SAFETY: `alive` is true under the lock the vCPU thread
                // takes to clear it before it exits and drops its VcpuFd.
                if let Err(e) = unsafe { k.kick() } {
                    log::warn!("vCPU {}: {e}", self.index);
                }
            }
        }
    }

    /// Posts a fixed interrupt and notifies the vCPU.
    pub fn post(&self, vector: u8) -> bool {
        let mut s = self.lock();
        if !s.apic.accept(vector) {
            return false;
        }
        self.notify(&mut s);
        true
    }

    /// Asks for a guest TLB flush before the next entry. Returns whether
    /// the vCPU is in guest mode now (it was kicked and the caller should
    /// wait with [`Vcpu::wait_flushed`]).
    pub fn request_flush(&self, from: &VcpuMetrics) -> bool {
        let mut s = self.lock();
        s.flush_pending = true;
        bump(&from.flush_requested);
        if s.in_guest {
            self.notify(&mut s);
            true
        } else {
            bump(&from.flush_deferred);
            false
        }
    }

    /// Waits until the vCPU has flushed or is out of guest mode (it then
    /// flushes before it enters again).
    pub fn wait_flushed(&self, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        let mut s = self.lock();
        s.flush_waiters += 1;
        while s.flush_pending && s.in_guest && s.alive {
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
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.flush_waiters -= 1;
        Ok(())
    }

    /// Fires the APIC timer if due; returns its next deadline.
    pub fn timer_fire(&self, now: Instant) -> Option<Instant> {
        let mut s = self.lock();
        if s.apic.timer_tick(now) {
            bump(&self.metrics.timer_fires);
            self.notify(&mut s);
        }
        s.apic.timer_deadline()
    }

    /// Wakes the vCPU so it notices a stop request.
    pub fn stop(&self) {
        let mut s = self.lock();
        s.halted = false;
        self.cond.notify_all();
        if s.in_guest && s.alive {
            if let Some(k) = &s.kick {
                // SAFETY: as in `notify`.
                let _ = unsafe { k.kick() };
            }
        }
    }

    /// A one-line description for timeout reports.
    pub fn describe(&self) -> String {
        let s = self.lock();
        format!(
            "vCPU {}: halted={} in_guest={} irr_top={:?} exits={}",
            self.index,
            s.halted,
            s.in_guest,
            s.apic.deliverable(),
            self.metrics.exits.load(Ordering::Relaxed)
        )
    }
}

/// Owned facts of one exit, taken before the `kvm_run` borrow ends.
enum Exit {
    Io { port: u16, out: bool, value: u32 },
    Hlt,
    Report(u32),
    Handled,
    Intr,
    Fatal(String),
}

fn kvm_err(vcpu: u32, op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |err| Error::VcpuKvm { vcpu, op, err }
}

/// The run loop of one vCPU thread.
pub struct Runner<'a> {
    m: &'a Machine,
    me: &'a Vcpu,
    fd: VcpuFd,
}

impl<'a> Runner<'a> {
    /// A runner for vCPU `index` of `m`.
    pub fn new(m: &'a Machine, index: usize, fd: VcpuFd) -> Option<Self> {
        let me = m.vcpus.get(index)?;
        Some(Self { m, me, fd })
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
        let r = self.run_loop();
        let mut s = self.me.lock();
        s.alive = false;
        s.in_guest = false;
        s.kick = None;
        self.me.cond.notify_all();
        r
    }

    fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    fn fatal(&self, reason: String) -> Error {
        Error::Guest {
            vcpu: self.me.index,
            reason,
            rip: self.rip(),
        }
    }

    fn run_loop(&mut self) -> Result<(), Error> {
        let idx = self.me.index;
        loop {
            if self.m.stopping() {
                return Ok(());
            }
            self.prepare_entry()?;
            let exit = self.run_once();
            bump(&self.me.metrics.exits);
            match exit {
                Exit::Handled => {}
                Exit::Intr => {
                    bump(&self.me.metrics.exit_intr);
                    self.fd.set_kvm_immediate_exit(0);
                }
                Exit::Hlt => {
                    bump(&self.me.metrics.exit_hlt);
                    self.halt();
                }
                Exit::Io { port, out, value } => {
                    bump(&self.me.metrics.exit_io);
                    if out {
                        self.port_out(port, value)?;
                    }
                }
                Exit::Report(code) => {
                    let regs = self.regs()?;
                    self.m.report(self.me.index, code, regs.rdi, regs.rsi);
                }
                Exit::Fatal(reason) => return Err(self.fatal(reason)),
            }
            let _ = idx;
        }
    }

    /// Flush, lazy EOI and interrupt injection before an entry.
    fn prepare_entry(&mut self) -> Result<(), Error> {
        let idx = self.me.index;
        let mut s = self.me.lock();
        if s.flush_pending {
            if self.m.flush == crate::vm::FlushMethod::Sregs {
                flush_guest_tlb(&self.fd).map_err(kvm_err(idx, "KVM_SET_SREGS (TLB flush)"))?;
            }
            s.flush_pending = false;
            bump(&self.me.metrics.flushes_done);
            if s.flush_waiters > 0 {
                self.me.cond.notify_all();
            }
        }
        let run = self.fd.get_kvm_run();
        let can_inject = run.ready_for_interrupt_injection != 0 && run.if_flag != 0;
        match s.apic.deliverable() {
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
                    u8::from(s.apic.deliverable().is_some());
            }
            Some(_) => self.fd.get_kvm_run().request_interrupt_window = 1,
            None => self.fd.get_kvm_run().request_interrupt_window = 0,
        }
        self.arm_lazy_eoi(&mut s);
        s.in_guest = true;
        Ok(())
    }

    /// Sets `apic_assist` bit 0 when the in-service interrupt may be
    /// completed without an EOI write (DESIGN.md "Lazy EOI").
    fn arm_lazy_eoi(&self, s: &mut State) {
        let Some(page) = s.vp.assist_page() else {
            return;
        };
        if !self.m.hyperv || !s.apic.lazy_eoi_allowed() || s.lazy_armed {
            return;
        }
        if self.m.mem.write_obj(1u32, GuestAddress(page)).is_ok() {
            s.lazy_armed = true;
        }
    }

    fn run_once(&mut self) -> Exit {
        let m = self.m;
        let me = self.me;
        let r = self.fd.run();
        // Out of guest mode before the exit is handled, so that handlers
        // (a self-IPI, a flush of oneself) see it so. `r` borrows the vCPU
        // fd; this bookkeeping needs only shared state.
        {
            let mut s = me.lock();
            s.in_guest = false;
            s.kick_pending = false;
            if s.flush_waiters > 0 {
                me.cond.notify_all();
            }
            sync_lazy_eoi(m, me, &mut s);
        }
        match r {
            Ok(VcpuExit::IoOut(port, data)) => {
                let mut b = [0u8; 4];
                let n = data.len().min(4);
                b[..n].copy_from_slice(&data[..n]);
                Exit::Io {
                    port,
                    out: true,
                    value: u32::from_le_bytes(b),
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                if !m.pio.read(u64::from(port), data) {
                    data.fill(0xFF);
                }
                Exit::Io {
                    port,
                    out: false,
                    value: 0,
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                bump(&me.metrics.exit_mmio);
                if (apic::XAPIC_BASE..apic::XAPIC_BASE + 0x1000).contains(&addr) {
                    let reg = apic::X2APIC_MSR_FIRST + ((addr - apic::XAPIC_BASE) >> 4) as u32;
                    let v = me.lock().apic.read(reg, Instant::now()).unwrap_or(0);
                    let n = data.len().min(4);
                    data[..n].copy_from_slice(&(v as u32).to_le_bytes()[..n]);
                } else if !m.mmio.read(addr, data) {
                    data.fill(0xFF);
                }
                Exit::Handled
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                bump(&me.metrics.exit_mmio);
                if (apic::XAPIC_BASE..apic::XAPIC_BASE + 0x1000).contains(&addr) {
                    let mut b = [0u8; 4];
                    let n = data.len().min(4);
                    b[..n].copy_from_slice(&data[..n]);
                    let reg = apic::X2APIC_MSR_FIRST + ((addr - apic::XAPIC_BASE) >> 4) as u32;
                    // xAPIC ICR is written low half last; the destination
                    // lives in ICR2 (offset 0x310) bits 31:24. This model
                    // serves the x2APIC layout only, so ICR2 is ignored.
                    let _ = apic_write(m, me, reg, u64::from(u32::from_le_bytes(b)));
                } else if addr == abi::REPORT_MMIO {
                    let mut b = [0u8; 4];
                    let n = data.len().min(4);
                    b[..n].copy_from_slice(&data[..n]);
                    return Exit::Report(u32::from_le_bytes(b));
                } else {
                    m.mmio.write(addr, data);
                }
                Exit::Handled
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
                if msr_write(m, me, exit.index, exit.data).is_none() {
                    *exit.error = 1;
                }
                Exit::Handled
            }
            Ok(VcpuExit::Hlt) => Exit::Hlt,
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
                Exit::Fatal(format!(
                    "KVM_EXIT_INTERNAL_ERROR: {what} (suberror {}, data {:x?})",
                    internal.suberror,
                    &internal.data[..(internal.ndata as usize).min(4)]
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
    /// machine stops.
    fn halt(&self) {
        let mut s = self.me.lock();
        while !self.m.stopping() && s.apic.deliverable().is_none() {
            s.halted = true;
            s = self
                .me
                .cond
                .wait_timeout(s, HALT_SLICE)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.halted = false;
    }

    fn port_out(&mut self, port: u16, value: u32) -> Result<(), Error> {
        match port {
            abi::HYPERCALL_PORT => self.hypercall(),
            abi::PANIC_PORT => {
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
                self.m.pio.write(u64::from(port), &value.to_le_bytes());
                Ok(())
            }
        }
    }

    fn regs(&self) -> Result<kvm_regs, Error> {
        self.fd
            .get_regs()
            .map_err(kvm_err(self.me.index, "KVM_GET_REGS"))
    }

    /// The hypercall trap: CPL check, decode, execute, RAX.
    fn hypercall(&mut self) -> Result<(), Error> {
        let idx = self.me.index;
        let metrics = &self.me.metrics;
        bump(&metrics.hypercalls);
        let mut regs = self.regs()?;
        let sregs = self.fd.get_sregs().map_err(kvm_err(idx, "KVM_GET_SREGS"))?;
        let enabled = self.m.hyperv && {
            let p = self.m.partition();
            p.guest_os_id != 0 && p.hypercall & 1 != 0
        };
        // KVM kvm_emulate_hypercall: a Hyper-V hypercall at CPL != 0, or
        // while the hypercall page is off, raises #UD.
        if sregs.ss.dpl != 0 || !enabled {
            bump(&metrics.hypercalls_ud);
            let mut ev = self
                .fd
                .get_vcpu_events()
                .map_err(kvm_err(idx, "KVM_GET_VCPU_EVENTS"))?;
            ev.exception.injected = 1;
            ev.exception.nr = UD_VECTOR;
            ev.exception.has_error_code = 0;
            return self
                .fd
                .set_vcpu_events(&ev)
                .map_err(kvm_err(idx, "KVM_SET_VCPU_EVENTS"));
        }
        let mut xmm = [0u128; 6];
        if regs.rcx & (1 << 16) != 0 {
            let fpu = self.fd.get_fpu().map_err(kvm_err(idx, "KVM_GET_FPU"))?;
            for (d, s) in xmm.iter_mut().zip(fpu.xmm.iter()) {
                *d = u128::from_le_bytes(*s);
            }
        }
        let input = hyperv::Input {
            control: regs.rcx,
            rdx: regs.rdx,
            r8: regs.r8,
            xmm: &xmm,
        };
        let result = match hyperv::decode(&input, &self.m.mem) {
            Err(status) => hyperv::result(status, 0),
            Ok(call) => self.execute(call)?,
        };
        if result & 0xFFFF == 0 {
            bump(&metrics.hypercalls_ok);
        } else {
            bump(&metrics.hypercalls_failed);
        }
        regs.rax = result;
        self.fd
            .set_regs(&regs)
            .map_err(kvm_err(idx, "KVM_SET_REGS"))
    }

    fn targets(&self, t: &Targets) -> Vec<&'a Vcpu> {
        match t {
            Targets::All => self.m.vcpus.iter().collect(),
            Targets::List(l) => l
                .iter()
                .filter_map(|&vp| self.m.vcpus.get(vp as usize))
                .collect(),
        }
    }

    fn execute(&self, call: Call) -> Result<u64, Error> {
        let metrics = &self.me.metrics;
        match call {
            Call::SendIpi { vector, targets } => {
                bump(&metrics.hc_send_ipi);
                for t in self.targets(&targets) {
                    if t.post(vector) {
                        bump(&metrics.ipis_posted);
                    }
                }
                Ok(hyperv::result(hyperv::status::SUCCESS, 0))
            }
            Call::Flush { targets, reps } => {
                bump(&metrics.hc_flush);
                let mut wait = Vec::new();
                for t in self.targets(&targets) {
                    if t.request_flush(metrics) {
                        wait.push(t);
                    }
                }
                for t in wait {
                    t.wait_flushed(FLUSH_WAIT)?;
                }
                Ok(hyperv::result(hyperv::status::SUCCESS, reps))
            }
        }
    }
}

/// After an exit: if the guest cleared `apic_assist` bit 0, it skipped its
/// EOI and the VMM performs it; otherwise the bit is withdrawn (it is
/// re-evaluated before the next entry).
fn sync_lazy_eoi(m: &Machine, me: &Vcpu, s: &mut State) {
    if !s.lazy_armed {
        return;
    }
    s.lazy_armed = false;
    let Some(page) = s.vp.assist_page() else {
        return;
    };
    let Ok(v) = m.mem.read_obj::<u32>(GuestAddress(page)) else {
        return;
    };
    if v & 1 == 0 {
        if s.apic.eoi().is_some() {
            bump(&me.metrics.eoi_lazy);
        }
    } else {
        let _ = m.mem.write_obj(v & !1, GuestAddress(page));
    }
}

/// Flushes the vCPU's guest TLB: KVM_SET_SREGS with CR4.PGE toggled and
/// then restored. Each CR4 change makes KVM reset the vCPU's MMU context
/// and request a guest TLB flush (x86.c `__set_sregs_common`:
/// `mmu_reset_needed` -> `kvm_mmu_reset_context`), which also drops shadow
/// translations on shadow-paging hosts. Must run on the vCPU's own thread
/// while it is outside KVM_RUN.
pub fn flush_guest_tlb(fd: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let sregs = fd.get_sregs()?;
    let mut toggled = sregs;
    toggled.cr4 ^= crate::boot::CR4_PGE;
    fd.set_sregs(&toggled)?;
    fd.set_sregs(&sregs)
}

fn msr_class(index: u32) -> u8 {
    if (hv_enlightenments::msr::HV_X64_MSR_RANGE_START
        ..hv_enlightenments::msr::HV_X64_MSR_RANGE_END)
        .contains(&index)
    {
        0
    } else if (apic::X2APIC_MSR_FIRST..=apic::X2APIC_MSR_LAST).contains(&index) {
        1
    } else {
        2
    }
}

fn msr_read(m: &Machine, me: &Vcpu, index: u32) -> Option<u64> {
    match msr_class(index) {
        0 => {
            bump(&me.metrics.msr_synthetic);
            if !m.hyperv {
                return None;
            }
            let p = m.partition();
            if let Some(v) = me.lock().vp.read(&p, index) {
                return Some(v);
            }
            match index {
                hv_enlightenments::msr::HV_X64_MSR_TPR => {
                    me.lock().apic.read(0x808, Instant::now()).ok()
                }
                _ => None,
            }
        }
        1 => {
            bump(&me.metrics.msr_x2apic);
            me.lock().apic.read(index, Instant::now()).ok()
        }
        _ => {
            bump(&me.metrics.msr_other);
            log::debug!("vCPU {}: rdmsr {index:#x} -> #GP", me.index);
            None
        }
    }
}

fn msr_write(m: &Machine, me: &Vcpu, index: u32, value: u64) -> Option<()> {
    match msr_class(index) {
        0 => {
            bump(&me.metrics.msr_synthetic);
            if !m.hyperv {
                return None;
            }
            let effect = {
                let mut p = m.partition();
                me.lock().vp.write(&mut p, index, value)?
            };
            match effect {
                MsrEffect::None | MsrEffect::AssistPage => Some(()),
                MsrEffect::WriteHypercallPage(gpa) => {
                    m.write_hypercall_page(gpa);
                    Some(())
                }
                MsrEffect::Apic(reg, v) => apic_write(m, me, reg, v),
            }
        }
        1 => {
            bump(&me.metrics.msr_x2apic);
            apic_write(m, me, index, value)
        }
        _ => {
            bump(&me.metrics.msr_other);
            log::debug!("vCPU {}: wrmsr {index:#x} <- {value:#x} -> #GP", me.index);
            None
        }
    }
}

/// Applies an x2APIC register write and its effect. `None`: #GP.
fn apic_write(m: &Machine, me: &Vcpu, reg: u32, value: u64) -> Option<()> {
    let now = Instant::now();
    let effect = me.lock().apic.write(reg, value, now).ok()?;
    match effect {
        Effect::None => {}
        Effect::Eoi(_) => bump(&me.metrics.eoi_msr),
        Effect::TimerChanged => {
            if let Some(d) = me.lock().apic.timer_deadline() {
                m.timers.arm(me.index as usize, d);
            }
        }
        Effect::Ipi {
            vector,
            dest,
            shorthand,
        } => {
            // Fixed delivery, physical destination (delivery mode bits are
            // not modelled: INIT/SIPI/NMI are not used by the built-in
            // guests).
            let mut send = |t: &Vcpu| {
                if t.post(vector) {
                    bump(&me.metrics.ipis_posted);
                }
            };
            match shorthand {
                Shorthand::None => {
                    if dest == u32::MAX {
                        m.vcpus.iter().for_each(&mut send);
                    } else if let Some(t) = m.vcpus.get(dest as usize) {
                        send(t);
                    }
                }
                Shorthand::SelfOnly => send(me),
                Shorthand::All => m.vcpus.iter().for_each(&mut send),
                Shorthand::AllButSelf => m
                    .vcpus
                    .iter()
                    .filter(|t| t.index != me.index)
                    .for_each(&mut send),
            }
        }
    }
    Some(())
}
