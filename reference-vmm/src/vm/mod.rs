//! A VM: KVM VM and vCPU fds, guest memory, the shared machine state the
//! vCPU threads work on, and a bounded run that reports what it waited
//! for.

pub mod external;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use kvm_bindings::{
    KVM_CAP_BINARY_STATS_FD, KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_FILTER,
    KVM_MSR_EXIT_REASON_INVAL, KVM_MSR_EXIT_REASON_UNKNOWN, kvm_enable_cap,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuFd, VmFd};
use vm_device::device_manager::IoManager;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::clock::HostClock;
use crate::error::Error;
use crate::guest::abi::{self, percpu as pc};
use crate::guest::boot;
use crate::guest::kernel;
use crate::guest::layout;
use crate::irqchip::kernel::{self as kirq, KernelIrqchip};
use crate::irqchip::timer::Timers;
use crate::kvm::cpuid::{self, cpuid_plan};
use crate::kvm::kick;
use crate::kvm::stats::{KvmVmCounters, StatsReader};
use crate::metrics::VmMetrics;
use crate::vcpu::io::VcpuIo;
use crate::vcpu::{Runner, Vcpu};
pub use crate::vm::external::{BootReport, ExternalConfig};
use hv_enlightenments::accel::IrqchipMode;
use hv_enlightenments::cpuid::CpuidPlan;
use hv_enlightenments::msr::{Partition, PartitionConfig, Vp};
use lapic::{Clock, LocalApic, Topology};

/// IA32_TSC_DEADLINE: filtered in the userspace-irqchip mode so that a
/// guest access exits to the userspace APIC instead of reaching KVM.
pub const MSR_TSC_DEADLINE: u32 = 0x6E0;
/// IA32_APIC_BASE: filtered likewise (KVM would answer it itself).
pub const MSR_APIC_BASE: u32 = 0x1B;

/// Stack size of a vCPU thread.
const VCPU_STACK: usize = 256 * 1024;

/// How a VM is built.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Number of vCPUs (1..=KVM_CAP_MAX_VCPUS).
    pub vcpus: u32,
    /// Publish and serve the Hyper-V enlightenments.
    pub hyperv: bool,
    /// Bound on the whole run.
    pub timeout: Duration,
    /// How a vCPU's guest TLB is flushed on request.
    pub flush: FlushMethod,
    /// Where the local APICs live: the VMM (`User`) or KVM (`Kernel`, a
    /// split irqchip; see [`crate::irqchip::kernel`]).
    pub irqchip: IrqchipMode,
}

/// How the VMM flushes a vCPU's guest TLB before its next entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMethod {
    /// Reset the vCPU's MMU context: IA32_EFER.NXE toggled and restored
    /// (see [`crate::kvm::flush::flush_guest_tlb`]).
    MmuReset,
    /// Only make the vCPU leave guest mode, without flushing: exists to
    /// show, in tests, what happens without a flush.
    KickOnly,
}

/// A guest program for the built-in kernel: CPL3 code run by every vCPU
/// at [`layout::USER_CODE`] and initial values of shared variables.
#[derive(Debug, Clone, Default)]
pub struct Program {
    /// Machine code assembled for [`layout::USER_CODE`].
    pub user_code: Vec<u8>,
    /// `(address, value)` pairs written before start.
    pub shared: Vec<(u64, u64)>,
}

/// How an external guest stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// It wrote `status` to the isa-debug-exit port (the process exit
    /// code is `status >> 1`, as with QEMU's isa-debug-exit).
    DebugExit(u32),
    /// It powered off (ACPI S5).
    PowerOff,
    /// It reset the machine (port 0xCF9, keyboard controller or triple
    /// fault is reported as an error instead).
    Reset,
    /// The console showed the text the run waited for.
    ConsoleMatched(String),
}

/// The measured phase of a run, between the guest's MARK_START and
/// MARK_END reports.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Operations the guest said it would run.
    pub ops: u64,
    /// Host time between the marks.
    pub elapsed: Duration,
    /// Counters accumulated between the marks.
    pub metrics: VmMetrics,
    /// Guest time between the marks (the guest's own TSC reads,
    /// converted with the TSC frequency).
    pub guest_elapsed: Duration,
    /// TSC frequency in kHz (KVM_GET_TSC_KHZ), for the service-time
    /// counters.
    pub tsc_khz: u64,
    /// KVM's own counters between the marks (kernel irqchip with
    /// KVM_CAP_BINARY_STATS_FD only).
    pub kvm: Option<KvmVmCounters>,
    /// Interrupts the guest's EOI routine completed lazily between the
    /// marks, as the guest counted them (all vCPUs).
    pub guest_lazy_eois: u64,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Detail value of the DONE report.
    pub detail: u64,
    /// The measured phase, if the guest marked one.
    pub measured: Option<Measured>,
    /// Counters of the whole run.
    pub metrics: VmMetrics,
    /// Wall time of the run.
    pub wall: Duration,
    /// `(vcpu, tag, value)` VALUE reports.
    pub values: Vec<(u32, u64, u64)>,
}

#[derive(Debug, Default)]
struct Marks {
    start: Option<(Instant, VmMetrics, u64)>,
    end: Option<(Instant, VmMetrics, u32)>,
    /// Guest TSC at MARK_START and MARK_END.
    guest_tsc: (u64, u64),
    values: Vec<(u32, u64, u64)>,
    /// KVM counters and guest lazy-EOI count at MARK_START / MARK_END.
    kstart: Option<(Option<KvmVmCounters>, u64)>,
    kend: Option<(Option<KvmVmCounters>, u64)>,
}

/// State shared by every vCPU thread of a VM.
pub struct Machine {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The vCPUs.
    pub vcpus: Vec<Vcpu>,
    /// Whether the Hyper-V enlightenments are on.
    pub hyperv: bool,
    /// Whether lazy EOI is offered (APIC_ACCESS_RECOMMENDED published).
    pub lazy_eoi: bool,
    /// The APICs' clock.
    pub clock: Arc<HostClock>,
    /// How TLB flushes are done.
    pub flush: FlushMethod,
    /// The VM's PIO and MMIO buses (the platform devices of an external
    /// guest). Each vCPU looks at its own devices first
    /// ([`crate::vcpu::io::VcpuIo`]).
    pub io: IoManager,
    /// APIC timers.
    pub timers: Timers,
    /// An external guest (a kernel loaded from a file) rather than the
    /// built-in one: no report MMIO address, no panic port, unknown ports
    /// and MMIO read all-ones and ignore writes.
    pub external: bool,
    /// The VMM runs the INIT/SIPI protocol ([`crate::irqchip::mp`]): external guests
    /// in the userspace-irqchip mode.
    pub user_mp: bool,
    /// Where EOIs of level-triggered vectors go (the IOAPIC).
    eoi_hook: Option<EoiHook>,
    /// How an external guest stopped.
    pub(crate) guest_exit: Mutex<Option<GuestExit>>,
    /// Where the local APICs live.
    pub irqchip: IrqchipMode,
    /// The kernel-irqchip state (`None` in the userspace-irqchip mode).
    pub kernel: Option<KernelIrqchip>,
    /// The Hyper-V CPUID plan the vCPUs got (`None`: Hyper-V off).
    plan: Option<CpuidPlan>,
    partition: Mutex<Partition>,
    topology: RwLock<Topology>,
    stop: AtomicBool,
    end: Mutex<Option<Result<u64, Error>>>,
    end_cond: Condvar,
    marks: Mutex<Marks>,
}

/// Receives the vector of every EOI the local APICs broadcast (SDM Vol. 3
/// 10.8.5: level-triggered vectors, unless SVR suppresses it).
pub type EoiHook = Box<dyn Fn(u8) + Send + Sync>;

impl Machine {
    /// Tells the IOAPIC that a level-triggered `vector` was completed.
    pub fn broadcast_eoi(&self, vector: u8) {
        if let Some(h) = &self.eoi_hook {
            h(vector);
        }
    }

    /// Raises the NMI pin (LINT1) of every vCPU, as QEMU's `nmi` monitor
    /// command does: each takes it as its LVT LINT1 says (see
    /// [`Vcpu::raise_lint1`]).
    pub fn external_nmi(&self) {
        for v in &self.vcpus {
            v.raise_lint1(self.kernel.is_some());
        }
    }

    /// Whether the run is ending.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// The Hyper-V CPUID plan published to the guest, with the values the
    /// frequency MSRs serve (`None`: Hyper-V off).
    pub fn cpuid_plan(&self) -> Option<&CpuidPlan> {
        self.plan.as_ref()
    }

    /// The partition-wide Hyper-V state.
    pub fn partition(&self) -> MutexGuard<'_, Partition> {
        self.partition.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The APIC topology (destination resolution).
    pub fn topology(&self) -> RwLockReadGuard<'_, Topology> {
        self.topology.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The APIC topology, for updates.
    pub fn topology_mut(&self) -> RwLockWriteGuard<'_, Topology> {
        self.topology.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The partition reference time (100 ns units since VM creation).
    pub fn reference_time(&self) -> u64 {
        self.clock.now_ns() / 100
    }

    /// Fills the guest's hypercall page with the trapping stub (the MSR
    /// write was refused with #GP if the page is not guest RAM).
    pub fn write_hypercall_page(&self, gpa: u64) {
        let page = abi::HYPERCALL_TRAP.stub().page();
        if self.mem.write_slice(&page, GuestAddress(gpa)).is_err() {
            log::warn!("hypercall page {gpa:#x} is not guest RAM");
        }
    }

    /// Counters of every vCPU now.
    pub fn metrics(&self) -> VmMetrics {
        VmMetrics::from_vcpus(self.vcpus.iter().map(|v| v.metrics.snapshot()).collect())
    }

    /// Ends the run with `r` (the first result wins) and wakes everyone.
    pub fn finish(&self, r: Result<u64, Error>) {
        {
            let mut e = self.end.lock().unwrap_or_else(|e| e.into_inner());
            if e.is_none() {
                *e = Some(r);
            }
        }
        self.stop.store(true, Ordering::Release);
        self.end_cond.notify_all();
        self.timers.wake();
        for v in &self.vcpus {
            v.stop();
        }
    }

    /// KVM's counters (kernel irqchip) and the guest's lazy-EOI count.
    fn extra_counters(&self) -> (Option<KvmVmCounters>, u64) {
        let kvm = self.kernel.as_ref().and_then(KernelIrqchip::counters);
        let lazy = (0..self.vcpus.len() as u64)
            .filter_map(|i| {
                let a = layout::percpu(i) + layout::PERCPU_VARS + pc::LAZY_EOIS;
                self.mem.read_obj::<u64>(GuestAddress(a)).ok()
            })
            .sum();
        (kvm, lazy)
    }

    /// Handles a write to the report address.
    pub fn report(&self, vcpu: u32, code: u32, rdi: u64, rsi: u64) {
        match code {
            abi::REPORT_DONE if rdi == 0 => self.finish(Ok(rsi)),
            abi::REPORT_DONE => {
                let last_value = {
                    let k = self.marks.lock().unwrap_or_else(|e| e.into_inner());
                    k.values
                        .iter()
                        .rev()
                        .find(|v| v.0 == vcpu)
                        .map(|v| (v.1, v.2))
                };
                self.finish(Err(Error::ScenarioFailed {
                    vcpu,
                    code: rdi,
                    detail: rsi,
                    last_value,
                }))
            }
            abi::REPORT_MARK_START => {
                let m = self.metrics();
                let extra = self.extra_counters();
                let mut k = self.marks.lock().unwrap_or_else(|e| e.into_inner());
                k.start = Some((Instant::now(), m, rdi));
                k.guest_tsc.0 = rsi;
                k.kstart = Some(extra);
            }
            abi::REPORT_MARK_END => {
                let m = self.metrics();
                let extra = self.extra_counters();
                let mut k = self.marks.lock().unwrap_or_else(|e| e.into_inner());
                k.end = Some((Instant::now(), m, vcpu));
                k.guest_tsc.1 = rsi;
                k.kend = Some(extra);
            }
            _ => {
                log::debug!("vCPU {vcpu}: value {rdi:#x} = {rsi:#x}");
                let mut k = self.marks.lock().unwrap_or_else(|e| e.into_inner());
                k.values.push((vcpu, rdi, rsi));
            }
        }
    }
}

/// A VM ready to run one program.
pub struct Vm {
    pub(crate) config: VmConfig,
    pub(crate) _kvm: Kvm,
    pub(crate) _fd: Arc<VmFd>,
    pub(crate) vcpu_fds: Vec<VcpuFd>,
    pub(crate) machine: Arc<Machine>,
    pub(crate) entry: u64,
    /// Platform devices and loader facts of an external guest.
    pub(crate) external: Option<Box<crate::vm::external::External>>,
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |err| Error::Kvm { op, err }
}

fn mem_err(e: impl std::fmt::Display) -> Error {
    Error::Memory(e.to_string())
}

impl Vm {
    /// Creates the VM, its memory and vCPUs and loads the guest kernel.
    pub fn new(config: VmConfig) -> Result<Self, Error> {
        let size = layout::memory_size(u64::from(config.vcpus)).max(4 << 20);
        let mut c = Common::open(config.vcpus, config.hyperv, size, config.irqchip)?;
        let mem = &c.mem.clone();
        let k = kernel::build()?;
        mem.write_slice(&k.code, GuestAddress(layout::KERNEL_CODE))
            .map_err(mem_err)?;
        boot::write_page_tables(mem).map_err(mem_err)?;
        boot::write_idt(mem, &k.idt, &[abi::VEC_SYSCALL]).map_err(mem_err)?;
        mem.write_obj(0xA0A0_A0A0_A0A0_A0A0u64, GuestAddress(layout::TLB_PAGE_A))
            .map_err(mem_err)?;
        mem.write_obj(0xB0B0_B0B0_B0B0_B0B0u64, GuestAddress(layout::TLB_PAGE_B))
            .map_err(mem_err)?;
        mem.write_obj(
            u64::from(config.hyperv),
            GuestAddress(abi::shared::HV_ENABLED),
        )
        .map_err(mem_err)?;
        mem.write_obj(u64::from(config.vcpus), GuestAddress(abi::shared::VCPUS))
            .map_err(mem_err)?;
        mem.write_obj(
            u64::from(config.hyperv && c.plan.lazy_eoi()),
            GuestAddress(abi::shared::APIC_ACCESS_HINT),
        )
        .map_err(mem_err)?;

        let io_ports = [abi::HYPERCALL_PORT, abi::NULL_PORT];
        let mut vcpu_fds = Vec::with_capacity(config.vcpus as usize);
        for i in 0..config.vcpus {
            let vi = u64::from(i);
            boot::write_gdt_tss(mem, vi, &io_ports).map_err(mem_err)?;
            let vars = layout::percpu(vi) + layout::PERCPU_VARS;
            for (off, v) in [
                (pc::CPU, vi),
                (pc::SELF, vars),
                (pc::ASSIST, layout::percpu(vi) + layout::PERCPU_ASSIST),
                (pc::USTACK, layout::percpu(vi) + layout::PERCPU_USTACK_TOP),
            ] {
                mem.write_obj(v, GuestAddress(vars + off))
                    .map_err(mem_err)?;
            }
            let vfd = c.create_vcpu(i)?;
            let verr = |op| move |err| Error::VcpuKvm { vcpu: i, op, err };
            let sregs = vfd.get_sregs().map_err(verr("KVM_GET_SREGS"))?;
            vfd.set_sregs(&boot::long_mode_sregs(sregs, vi))
                .map_err(verr("KVM_SET_SREGS"))?;
            vfd.set_regs(&boot::entry_regs(vi, k.entry, u64::from(config.vcpus)))
                .map_err(verr("KVM_SET_REGS"))?;
            if c.irqchip == IrqchipMode::Kernel {
                // Every built-in vCPU starts at the kernel entry, not in
                // KVM's wait-for-SIPI.
                kirq::make_runnable(&vfd, i)?;
            }
            vcpu_fds.push(vfd);
        }
        let machine = c.machine(MachineOptions {
            flush: config.flush,
            io: IoManager::new(),
            external: false,
            user_mp: false,
            eoi_hook: None,
        })?;
        Ok(Self {
            config,
            _kvm: c.kvm,
            _fd: c.fd,
            vcpu_fds,
            machine,
            entry: k.entry,
            external: None,
        })
    }

    /// The shared machine state (for inspection after a run).
    pub fn machine(&self) -> &Arc<Machine> {
        &self.machine
    }

    /// The Hyper-V CPUID plan the vCPUs got (`None`: Hyper-V off); see
    /// [`Machine::cpuid_plan`].
    pub fn cpuid_plan(&self) -> Option<&CpuidPlan> {
        self.machine.cpuid_plan()
    }

    /// The guest kernel's entry point.
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// Loads `program`, runs every vCPU on its own thread until the guest
    /// reports DONE, a vCPU fails, or the timeout expires.
    pub fn run(mut self, program: &Program) -> Result<RunReport, Error> {
        let m = Arc::clone(&self.machine);
        if program.user_code.len() as u64 > layout::USER_CODE_SIZE {
            return Err(Error::Memory(format!(
                "guest program of {} bytes does not fit the {} bytes at {:#x}",
                program.user_code.len(),
                layout::USER_CODE_SIZE,
                layout::USER_CODE
            )));
        }
        m.mem
            .write_slice(&program.user_code, GuestAddress(layout::USER_CODE))
            .map_err(mem_err)?;
        for &(a, v) in &program.shared {
            m.mem.write_obj(v, GuestAddress(a)).map_err(mem_err)?;
        }
        let (result, wall) = self.run_threads("the guest's DONE report");
        let detail = result?;
        let metrics = m.metrics();
        let marks = std::mem::take(&mut *m.marks.lock().unwrap_or_else(|e| e.into_inner()));
        let measured = match (marks.start, marks.end) {
            (Some((t0, m0, ops)), Some((t1, m1, who))) => {
                // The MARK_END exit itself is not part of the measurement.
                let mut d = m1.since(&m0);
                if let Some(v) = d.vcpus.get_mut(who as usize) {
                    v.exits = v.exits.saturating_sub(1);
                    v.exit_mmio = v.exit_mmio.saturating_sub(1);
                }
                let metrics = VmMetrics::from_vcpus(d.vcpus);
                let cycles = marks.guest_tsc.1.saturating_sub(marks.guest_tsc.0);
                let (kvm, guest_lazy_eois) = match (marks.kstart, marks.kend) {
                    (Some((k0, l0)), Some((k1, l1))) => (
                        k0.zip(k1).map(|(k0, k1)| k1.since(&k0)),
                        l1.saturating_sub(l0),
                    ),
                    _ => (None, 0),
                };
                Some(Measured {
                    ops,
                    elapsed: t1.saturating_duration_since(t0),
                    metrics,
                    guest_elapsed: Duration::from_nanos(m.clock.cycles_to_ns(cycles as f64) as u64),
                    tsc_khz: m.clock.tsc_khz(),
                    kvm,
                    guest_lazy_eois,
                })
            }
            _ => None,
        };
        Ok(RunReport {
            detail,
            measured,
            metrics,
            wall,
            values: marks.values,
        })
    }
}

impl Vm {
    /// Runs the APIC timer thread and one thread per vCPU until the run
    /// ends (a `finish`, a vCPU failure or the timeout, which is reported
    /// as waiting for `what`), then stops and joins them all.
    pub(crate) fn run_threads(&mut self, what: &str) -> (Result<u64, Error>, Duration) {
        let m = Arc::clone(&self.machine);
        let start = Instant::now();
        let timer_m = Arc::clone(&m);
        let timer = std::thread::Builder::new()
            .name("apic-timer".into())
            .stack_size(VCPU_STACK)
            .spawn(move || {
                let tm = &timer_m;
                tm.timers.run(
                    || tm.stopping(),
                    || tm.clock.now_ns(),
                    |i| tm.vcpus.get(i).and_then(|v| v.timer_fire()),
                )
            });
        let timer = match timer {
            Ok(t) => Some(t),
            Err(err) => {
                m.finish(Err(Error::Thread {
                    vcpu: u32::MAX,
                    err,
                }));
                None
            }
        };
        let mut threads = Vec::new();
        for (i, fd) in self.vcpu_fds.drain(..).enumerate() {
            if m.stopping() {
                break;
            }
            let vm = Arc::clone(&m);
            let t = std::thread::Builder::new()
                .name(format!("vcpu{i}"))
                .stack_size(VCPU_STACK)
                .spawn(move || {
                    // The vCPU's own bus is built on its thread and lives
                    // in its runner (see `vcpu_io` on ownership).
                    let io = match VcpuIo::new(&vm, i) {
                        Ok(io) => io,
                        Err(e) => {
                            vm.finish(Err(e));
                            return;
                        }
                    };
                    let Some(r) = Runner::new(&vm, i, fd, io) else {
                        return;
                    };
                    if let Err(e) = r.run() {
                        vm.finish(Err(e));
                    }
                });
            match t {
                Ok(t) => threads.push(t),
                Err(err) => {
                    m.finish(Err(Error::Thread {
                        vcpu: i as u32,
                        err,
                    }));
                    break;
                }
            }
        }
        // Bounded wait for the end of the run.
        let mut timed_out = false;
        {
            let mut e = m.end.lock().unwrap_or_else(|e| e.into_inner());
            while e.is_none() {
                let left = self.config.timeout.saturating_sub(start.elapsed());
                if left.is_zero() {
                    let mut what = format!("{what}; vCPU states:");
                    // Kernel irqchip: described once the threads stopped.
                    if m.kernel.is_none() {
                        describe_vcpus(&m, &mut what);
                    }
                    *e = Some(Err(Error::Timeout {
                        waited: self.config.timeout,
                        what,
                    }));
                    timed_out = true;
                    break;
                }
                e = m
                    .end_cond
                    .wait_timeout(e, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        m.finish(Ok(0));
        for t in threads {
            let _ = t.join();
        }
        if let Some(t) = timer {
            let _ = t.join();
        }
        let wall = start.elapsed();
        let mut result = m
            .end
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or(Ok(0));
        // Kernel irqchip: each thread recorded KVM's view of its vCPU on
        // the way out (only it could ask KVM, outside KVM_RUN).
        if timed_out && m.kernel.is_some() {
            if let Err(Error::Timeout { what, .. }) = &mut result {
                describe_vcpus(&m, what);
            }
        }
        (result, wall)
    }
}

/// Appends one line per vCPU (the first 16) for a timeout report.
fn describe_vcpus(m: &Machine, what: &mut String) {
    for v in m.vcpus.iter().take(16) {
        what.push_str("\n  ");
        what.push_str(&v.describe());
    }
}

/// What both kinds of VM (built-in guest, external kernel) share: the KVM
/// VM with its userspace MSR exits and filter, guest RAM at GPA 0, the
/// Hyper-V CPUID plan and the CPUID table every vCPU gets.
pub(crate) struct Common {
    pub(crate) kvm: Kvm,
    pub(crate) fd: Arc<VmFd>,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) plan: CpuidPlan,
    pub(crate) irqchip: IrqchipMode,
    base_cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    /// vCPU 0, created early to read the guest TSC frequency.
    first_vcpu: Option<VcpuFd>,
    /// The guest TSC frequency (KVM_GET_TSC_KHZ), if KVM reported one.
    tsc_khz: Option<u32>,
    vcpus: u32,
    hyperv: bool,
    /// Whether KVM's per-vCPU statistics can be read (kernel irqchip).
    stats_cap: bool,
    stats: Vec<StatsReader>,
}

/// The parts of a [`Machine`] that differ between the kinds of VM.
pub(crate) struct MachineOptions {
    pub(crate) flush: FlushMethod,
    pub(crate) io: IoManager,
    pub(crate) external: bool,
    pub(crate) user_mp: bool,
    pub(crate) eoi_hook: Option<EoiHook>,
}

impl Common {
    /// Opens KVM and creates the VM with `mem_size` bytes of RAM at 0.
    pub(crate) fn open(
        vcpus: u32,
        hyperv: bool,
        mem_size: u64,
        irqchip: IrqchipMode,
    ) -> Result<Self, Error> {
        kick::install_handler()?;
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let max = kvm.get_max_vcpus() as u32;
        if vcpus == 0 || vcpus > max {
            return Err(Error::TooManyVcpus {
                requested: vcpus,
                max,
            });
        }
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(0xFFFB_D000)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        let kernel_irqchip = irqchip == IrqchipMode::Kernel;
        if kernel_irqchip {
            kirq::setup_vm(&fd)?;
        }
        enable_user_msrs(&fd, irqchip)?;

        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_size as usize)])
            .map_err(mem_err)?;
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(mem_err)?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mmap owned by `mem`, which the
            // Machine keeps for as long as the VM fd (and so the slot)
            // exists.
            unsafe { fd.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        // The frequency MSRs need the guest TSC frequency before any vCPU
        // gets its CPUID: read it from vCPU 0, created here (its CPUID is
        // set in `create_vcpu`).
        let first = fd.create_vcpu(0).map_err(|err| Error::VcpuKvm {
            vcpu: 0,
            op: "KVM_CREATE_VCPU",
            err,
        })?;
        let tsc_khz = match first.get_tsc_khz() {
            Ok(k) if k != 0 => Some(k),
            r => {
                log::warn!("KVM_GET_TSC_KHZ: {r:?}: no frequency MSRs");
                None
            }
        };
        let plan = cpuid_plan(vcpus, irqchip, cpuid::frequencies(irqchip, tsc_khz))?;
        let mut base_cpuid = cpuid::base_table(&kvm)?;
        if kernel_irqchip && kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
            cpuid::offer_tsc_deadline(&mut base_cpuid);
        }
        let stats_cap =
            kernel_irqchip && kvm.check_extension_raw(KVM_CAP_BINARY_STATS_FD.into()) > 0;
        if hyperv {
            plan.cpuid.apply_to_kvm_entries(&mut base_cpuid);
        }
        Ok(Self {
            kvm,
            fd: Arc::new(fd),
            mem,
            plan,
            irqchip,
            base_cpuid,
            first_vcpu: Some(first),
            tsc_khz,
            vcpus,
            hyperv,
            stats_cap,
            stats: Vec::new(),
        })
    }

    /// Creates vCPU `i` (vCPU 0 exists already) with its CPUID table.
    pub(crate) fn create_vcpu(&mut self, i: u32) -> Result<VcpuFd, Error> {
        let early = if i == 0 { self.first_vcpu.take() } else { None };
        let vfd = match early {
            Some(v) => v,
            None => self
                .fd
                .create_vcpu(u64::from(i))
                .map_err(|err| Error::VcpuKvm {
                    vcpu: i,
                    op: "KVM_CREATE_VCPU",
                    err,
                })?,
        };
        vfd.set_cpuid2(&cpuid::for_vcpu(&self.base_cpuid, i)?)
            .map_err(|err| Error::VcpuKvm {
                vcpu: i,
                op: "KVM_SET_CPUID2",
                err,
            })?;
        if self.stats_cap {
            match StatsReader::open(&vfd) {
                Ok(r) => self.stats.push(r),
                Err(e) => log::warn!("vCPU {i}: no KVM statistics: {e}"),
            }
        }
        Ok(vfd)
    }

    /// The shared machine state: APICs, VP state, posted-interrupt entries.
    pub(crate) fn machine(&mut self, o: MachineOptions) -> Result<Arc<Machine>, Error> {
        let n = self.vcpus;
        let table =
            ipiv::PidTable::new(n - 1).map_err(|e| Error::Memory(format!("PID table: {e}")))?;
        let tsc_khz = self.tsc_khz.map_or(1_000_000, u64::from);
        let clock = Arc::new(HostClock::new(tsc_khz));
        let mut topology = Topology::new();
        let mut vcpus = Vec::with_capacity(n as usize);
        for i in 0..n {
            // Directed EOI (SVR bit 12 suppresses the EOI broadcast; the
            // userspace IOAPIC has the EOI register): KVM offers it when
            // the guest has x2APIC and no in-kernel IOAPIC
            // (`kvm_apic_set_version`), so both irqchips report the same
            // version register (0x01050014).
            let config = lapic::Config {
                eoi_broadcast_suppression: true,
                ..lapic::Config::new(i)
            };
            let apic = LocalApic::new(config, clock.clone())
                .map_err(|e| Error::Memory(format!("vCPU {i} local APIC: {e}")))?;
            topology
                .add(i as usize, apic.identity())
                .map_err(|e| Error::Memory(format!("vCPU {i} APIC topology: {e}")))?;
            let vp = if self.hyperv {
                Some(
                    Vp::new(i, self.plan.privileges())
                        .map_err(|e| Error::Memory(format!("vCPU {i} VP state: {e}")))?,
                )
            } else {
                None
            };
            let posted = table
                .register(i)
                .map_err(|e| Error::Memory(format!("vCPU {i} PID entry: {e}")))?;
            vcpus.push(Vcpu::new(i, apic, vp, posted));
        }
        let mut stats = std::mem::take(&mut self.stats);
        // Statistics for every vCPU or for none (sums must be comparable).
        if stats.len() != n as usize {
            stats.clear();
        }
        let kernel = (self.irqchip == IrqchipMode::Kernel).then(|| KernelIrqchip {
            vm: Arc::clone(&self.fd),
            stats,
        });
        Ok(Arc::new(Machine {
            mem: self.mem.clone(),
            vcpus,
            hyperv: self.hyperv,
            lazy_eoi: self.hyperv && self.plan.lazy_eoi(),
            clock,
            flush: o.flush,
            io: o.io,
            timers: Timers::default(),
            external: o.external,
            user_mp: o.user_mp,
            eoi_hook: o.eoi_hook,
            guest_exit: Mutex::new(None),
            irqchip: self.irqchip,
            kernel,
            plan: self.hyperv.then_some(self.plan),
            partition: Mutex::new(Partition::new(PartitionConfig::from(&self.plan))),
            topology: RwLock::new(topology),
            stop: AtomicBool::new(false),
            end: Mutex::new(None),
            end_cond: Condvar::new(),
            marks: Mutex::new(Marks::default()),
        }))
    }
}

/// Userspace MSR exits for invalid, unknown and filtered MSRs, and a filter
/// that denies the Hyper-V synthetic range and, with the userspace
/// irqchip, IA32_TSC_DEADLINE and IA32_APIC_BASE so that they exit to the
/// VMM (KVM's in-kernel LAPIC serves those two itself).
fn enable_user_msrs(fd: &VmFd, irqchip: IrqchipMode) -> Result<(), Error> {
    let cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        args: [
            u64::from(
                KVM_MSR_EXIT_REASON_INVAL
                    | KVM_MSR_EXIT_REASON_UNKNOWN
                    | KVM_MSR_EXIT_REASON_FILTER,
            ),
            0,
            0,
            0,
        ],
        ..Default::default()
    };
    fd.enable_cap(&cap)
        .map_err(kvm_err("KVM_ENABLE_CAP(X86_USER_SPACE_MSR)"))?;
    let count = hv_enlightenments::msr::HV_X64_MSR_RANGE_END
        - hv_enlightenments::msr::HV_X64_MSR_RANGE_START;
    // A clear bit denies the access (KVM api.rst, KVM_X86_SET_MSR_FILTER).
    let deny = vec![0u8; count.div_ceil(8) as usize];
    let deny_one = [0u8; 1];
    let rw = MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE;
    // The x2APIC range needs no filter: without an in-kernel APIC KVM
    // answers those MSRs with a userspace exit (reason INVAL).
    let ranges = [
        MsrFilterRange {
            flags: rw,
            base: hv_enlightenments::msr::HV_X64_MSR_RANGE_START,
            msr_count: count,
            bitmap: &deny,
        },
        MsrFilterRange {
            flags: rw,
            base: MSR_TSC_DEADLINE,
            msr_count: 1,
            bitmap: &deny_one,
        },
        MsrFilterRange {
            flags: rw,
            base: MSR_APIC_BASE,
            msr_count: 1,
            bitmap: &deny_one,
        },
    ];
    let n = match irqchip {
        IrqchipMode::User => ranges.len(),
        IrqchipMode::Kernel => 1,
    };
    fd.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges[..n])
        .map_err(kvm_err("KVM_X86_SET_MSR_FILTER"))
}
