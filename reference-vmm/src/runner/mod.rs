//! The run loop of one vCPU thread ([`Runner`]): entry preparation (flush,
//! then the irqchip's injection), `KVM_RUN`, the sync after each exit,
//! exit dispatch to the services ([`exits`]) and HLT. It calls down into
//! the irqchip seam ([`crate::irqchip::Irqchip`]) and the Hyper-V services
//! ([`crate::hyperv`]); they never call back up. Port I/O and MMIO go
//! through the vCPU's own buses ([`io`]). Every exit's service time is
//! counted; about one in sixteen also has its whole turn profiled
//! ([`crate::profile`]).

pub mod exits;
pub mod io;

use std::sync::atomic::Ordering;

use ipiv::inhibit::VcpuGate;
use kvm_ioctls::VcpuExit;

use crate::error::Error;
use crate::irqchip::{VcpuCtx, VcpuLocal};
use crate::kvm::flush::flush_guest_tlb;
use crate::kvm::kick::{self, KickTarget};
use crate::kvm::vcpu::KvmVcpu;
use crate::machine::{FlushMethod, Machine};
use crate::metrics::{ExitClass, bump, tsc};
use crate::profile::{Probe, Sampler};
use crate::vcpu::Vcpu;
use io::VcpuIo;

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

/// The run loop of one vCPU thread.
pub struct Runner<'a> {
    m: &'a Machine,
    me: &'a Vcpu,
    kvm: KvmVcpu,
    /// This vCPU's own devices over the VM's buses.
    io: VcpuIo,
    /// The irqchip backend's state of this vCPU.
    local: VcpuLocal,
    /// This thread's gate to the APICv inhibit model's safe points.
    gate: Option<VcpuGate>,
    /// Host TSC when the last `KVM_RUN` returned.
    exit_tsc: u64,
    /// Chooses the exits whose turn is profiled ([`crate::profile`]).
    sampler: Sampler,
    /// The probe of the exit being profiled, if it is.
    probe: Option<Probe>,
    /// The class the last exit was accounted to (none for a report).
    turn_class: Option<ExitClass>,
    /// The TSC frequency in kHz, for the profiled turns.
    tsc_khz: u64,
    /// An exception (#GP from an MSR exit, #UD from the hypercall trap)
    /// is delivered at the next entry: no interrupt may be injected with
    /// it, its handler runs with IF=0 (SDM 6.9, event priority).
    exception_queued: bool,
}

impl<'a> Runner<'a> {
    /// A runner for vCPU `index` of `m` on its fd `kvm`, dispatching its
    /// I/O through `io`.
    pub fn new(m: &'a Machine, index: usize, kvm: KvmVcpu, io: VcpuIo) -> Option<Self> {
        let me = m.vcpus.get(index)?;
        Some(Self {
            m,
            me,
            kvm,
            io,
            local: VcpuLocal::default(),
            gate: None,
            exit_tsc: 0,
            sampler: Sampler::new(me.index),
            probe: None,
            turn_class: None,
            tsc_khz: m.clock.tsc_khz(),
            exception_queued: false,
        })
    }

    /// What the irqchip backend works on for this vCPU.
    fn cx(&mut self) -> VcpuCtx<'_> {
        VcpuCtx {
            me: self.me,
            vcpus: &self.m.vcpus,
            mem: &self.m.mem,
            kvm: &mut self.kvm,
            local: &mut self.local,
        }
    }

    /// Runs until the machine stops or this vCPU fails.
    pub fn run(mut self) -> Result<(), Error> {
        // On the vCPU's own thread: a gate is per thread.
        self.gate = VcpuGate::for_this_thread().ok();
        kick::block_outside_run(self.kvm.fd())?;
        self.me.go_live(KickTarget::current(self.kvm.run_area()));
        self.kvm.sync_regs_at_exits();
        let r = self.run_loop();
        let m = self.m;
        let snapshot = m.irqchip.exit_snapshot(&mut self.cx());
        self.me.retire(snapshot);
        r
    }

    fn run_loop(&mut self) -> Result<(), Error> {
        let m = self.m;
        let stop = || m.stopping();
        loop {
            if m.stopping() || !m.irqchip.accept_events(&mut self.cx(), &stop)? {
                return Ok(());
            }
            // A safe point: no guest-memory guard is held here.
            if let Some(g) = self.gate.as_mut() {
                m.apicv.apply(self.me.index, g);
            }
            let t_entry = tsc();
            self.prepare_entry()?;
            let metrics = &self.me.metrics;
            let t_run = tsc();
            metrics
                .svc_cycles_entry
                .fetch_add(t_run.wrapping_sub(t_entry), Ordering::Relaxed);
            if self.local.take_injected() {
                if let Some(p) = self.me.inbound.taken(t_run) {
                    bump(&metrics.ipi_paths);
                    metrics
                        .ipi_path_vmm_cycles
                        .fetch_add(p.vmm, Ordering::Relaxed);
                    metrics
                        .ipi_path_notify_cycles
                        .fetch_add(p.notify, Ordering::Relaxed);
                }
            }
            // The profiled turn ends here, just before `KVM_RUN`.
            if let (Some(p), Some(class)) = (self.probe.take(), self.turn_class.take()) {
                self.me.profile.record(class, p.finish(self.tsc_khz));
            }
            let exit = self.run_once();
            self.kvm.set_exit_pending(exit.needs_completion());
            if let Some(vector) = self.sync_after_exit() {
                m.irqchip.broadcast_eoi(vector);
            }
            bump(&self.me.metrics.exits);
            match exit {
                Exit::Handled => {
                    let class = self.exit_class();
                    self.account(class);
                }
                Exit::Intr => {
                    bump(&self.me.metrics.exit_intr);
                    kick::take_kicks(self.kvm.run_area(), true)?;
                    self.account(ExitClass::Other);
                }
                Exit::Hlt => {
                    bump(&self.me.metrics.exit_hlt);
                    // The sleep is not service time.
                    self.account(ExitClass::Hlt);
                    let if_flag = self.kvm.run_area().if_flag != 0;
                    m.irqchip.halt(&mut self.cx(), if_flag, &stop);
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
                    let class = self.msr(write)?;
                    self.account(class);
                }
                // Split irqchip: KVM's LAPIC completed a level-triggered
                // vector routed from the userspace IOAPIC.
                Exit::IoapicEoi(vector) => {
                    m.irqchip.broadcast_eoi(vector);
                    self.account(ExitClass::Other);
                }
                Exit::Fatal(reason) => {
                    return Err(Error::Guest {
                        vcpu: self.me.index,
                        reason,
                        rip: self.kvm.rip(),
                    });
                }
            }
        }
    }

    /// The class of the exit `KVM_RUN` last returned, from `kvm_run`.
    fn exit_class(&mut self) -> ExitClass {
        match self.kvm.run_area().exit_reason {
            kvm_bindings::KVM_EXIT_X86_RDMSR | kvm_bindings::KVM_EXIT_X86_WRMSR => ExitClass::Msr,
            kvm_bindings::KVM_EXIT_IO => ExitClass::Pio,
            kvm_bindings::KVM_EXIT_MMIO => ExitClass::Mmio,
            kvm_bindings::KVM_EXIT_HLT => ExitClass::Hlt,
            _ => ExitClass::Other,
        }
    }

    /// Adds the host TSC cycles since `KVM_RUN` returned to `class` (and
    /// the exit's turn, if profiled).
    fn account(&mut self, class: ExitClass) {
        self.turn_class = Some(class);
        self.me
            .metrics
            .add_service(class, tsc().wrapping_sub(self.exit_tsc));
    }

    /// The flush, then the irqchip's entry work (NMIs, posted vectors,
    /// injection, CR8, lazy EOI); the run state becomes "in guest" under
    /// the vCPU's lock, so a timer or flush request from now on kicks.
    fn prepare_entry(&mut self) -> Result<(), Error> {
        let (m, me) = (self.m, self.me);
        // Kicks sent since the last exit are answered by this entry, which
        // sees every event latched or posted before it: the flag is
        // cleared (and a blocked kick signal discarded) before the vCPU is
        // published as in guest mode, so that later kicks set it again.
        kick::take_kicks(self.kvm.run_area(), false)?;
        let mut s = me.lock();
        // "In guest" is published before the flush request is taken (see
        // `Vcpu::ask_flush`). A requester that sees it kicks under the
        // lock, which is held until the flush is done: no kick races the
        // immediate_exit the flush may use.
        let (posted, flush) = me.enter_guest();
        if flush {
            if m.flush == FlushMethod::MmuReset {
                self.kvm.complete_pending_exit()?;
                flush_guest_tlb(self.kvm.fd()).map_err(self.kvm.err("KVM_SET_MSRS (TLB flush)"))?;
            }
            bump(&me.metrics.flushes_done);
            me.release_flush_waiters(&s);
        }
        let exception = std::mem::take(&mut self.exception_queued);
        m.irqchip
            .prepare_entry(&mut self.cx(), &mut s, posted, exception)
    }

    /// Out of guest mode before the exit is handled, so that handlers (a
    /// self-IPI, a flush of oneself) see it so; then the irqchip's sync.
    /// Returns the vector of a level-triggered EOI for the IOAPIC (sent by
    /// the caller, with no vCPU lock held).
    fn sync_after_exit(&mut self) -> Option<u8> {
        let (m, me) = (self.m, self.me);
        let posted = me.posted.run_state().leave_guest(me.posted.descriptor());
        let mut s = me.lock();
        let eoi = m.irqchip.sync_after_exit(&mut self.cx(), &mut s, posted);
        me.release_flush_waiters(&s);
        eoi
    }

    fn run_once(&mut self) -> Exit {
        let r = self.kvm.run();
        // Before the service time starts, so that it leaves the probe out.
        self.turn_class = None;
        // Any earlier probe is dropped (ending its timing) before the
        // next one starts, not after.
        self.probe = None;
        self.probe = self.sampler.tick().then(Probe::start);
        self.exit_tsc = tsc();
        crate::ipi_path::turn_started(self.exit_tsc);
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
                Exit::Fatal(format!("unexpected exit {other:x?}"))
            }
            Err(e) if e.errno() == libc::EINTR => Exit::Intr,
            Err(e) if e.errno() == libc::EAGAIN => Exit::Handled,
            Err(e) => Exit::Fatal(format!("KVM_RUN failed: {e}")),
        }
    }
}
