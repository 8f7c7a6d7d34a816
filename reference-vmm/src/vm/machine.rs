//! The state every vCPU thread of a VM shares ([`Machine`]): guest memory,
//! the vCPUs, buses, timers, the Hyper-V partition state, the APIC
//! topology, the end of the run and the measured phase's marks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use vm_device::device_manager::IoManager;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{FlushMethod, GuestExit};
use crate::clock::HostClock;
use crate::error::Error;
use crate::guest::abi::{self, percpu as pc};
use crate::guest::layout;
use crate::irqchip::kernel::KernelIrqchip;
use crate::irqchip::timer::Timers;
use crate::kvm::stats::KvmVmCounters;
use crate::metrics::VmMetrics;
use crate::vcpu::Vcpu;
use hv_enlightenments::accel::IrqchipMode;
use hv_enlightenments::cpuid::CpuidPlan;
use hv_enlightenments::msr::Partition;
use lapic::{Clock, Topology};

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
pub(crate) struct Marks {
    pub(super) start: Option<(Instant, VmMetrics, u64)>,
    pub(super) end: Option<(Instant, VmMetrics, u32)>,
    /// Guest TSC at MARK_START and MARK_END.
    pub(super) guest_tsc: (u64, u64),
    pub(super) values: Vec<(u32, u64, u64)>,
    /// KVM counters and guest lazy-EOI count at MARK_START / MARK_END.
    pub(super) kstart: Option<(Option<KvmVmCounters>, u64)>,
    pub(super) kend: Option<(Option<KvmVmCounters>, u64)>,
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
    pub(super) eoi_hook: Option<EoiHook>,
    /// How an external guest stopped.
    pub(crate) guest_exit: Mutex<Option<GuestExit>>,
    /// Where the local APICs live.
    pub irqchip: IrqchipMode,
    /// The kernel-irqchip state (`None` in the userspace-irqchip mode).
    pub kernel: Option<KernelIrqchip>,
    /// The Hyper-V CPUID plan the vCPUs got (`None`: Hyper-V off).
    pub(super) plan: Option<CpuidPlan>,
    pub(super) partition: Mutex<Partition>,
    pub(super) topology: RwLock<Topology>,
    pub(super) stop: AtomicBool,
    pub(super) end: Mutex<Option<Result<u64, Error>>>,
    pub(super) end_cond: Condvar,
    pub(super) marks: Mutex<Marks>,
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
